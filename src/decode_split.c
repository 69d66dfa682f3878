/* SPDX-License-Identifier: MIT */
/*
 * decode_split.c — decode of a few tiles over long caches, spread over all
 * workers. One decode step of one sequence is a single tile of G rows; done
 * as in the forward pass it would run on one core. Here each tile's keys are
 * cut into units of fixed size — runs of NSA_SPLIT_CMP_KEYS compressed keys,
 * each selected block, runs of NSA_ATTEND_CHUNK window keys — every unit
 * computes a partial softmax state on whichever worker takes it, and the
 * partial states are merged by their log-sum-exp in unit order. The units
 * do not depend on the number of workers, so neither do the results.
 *
 * Four pool runs, each a barrier: compressed units; merge and select per
 * tile; selected and window units; merge and gate per tile.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "decode_split.h"
#include "geometry.h"
#include "threads.h"

enum { CMP, SLC, SWA }; /* branches */

typedef struct split_unit {
    int64_t tile;
    int branch;
    int64_t first, last; /* keys: compressed keys for CMP, raw keys otherwise */
    nsa_softmax_state state;
} split_unit;

typedef struct split_tile {
    nsa_tile tile;
    nsa_keys raw, compressed; /* without conversion scratch: workers add theirs */
    size_t m;
    float *q;  /* [m][Dk] packed rows */
    float *s;  /* [m][lds] compressed probabilities */
    size_t lds;
    int32_t *blocks; /* [count][n] */
    int64_t units[3], unit_count[3]; /* each branch's first unit and count */
    nsa_softmax_state merged[3];
} split_tile;

typedef struct split_run {
    const nsa_plan *plan;
    split_tile *tiles;
    int64_t num_tiles;
    split_unit *units;
    int64_t *phase;  /* indices into units of the current phase's units */
    int32_t *union_blocks; /* scratch: the union of one tile's blocks */
    nsa_work_queue queue;
    float **scratch; /* per worker */
    int64_t max_len;
} split_run;

static int64_t ceil_div(int64_t a, int64_t b)
{
    return (a + b - 1) / b;
}

static size_t state_floats(size_t m, size_t dv)
{
    return m * (dv + 2);
}

static nsa_softmax_state carve_state(float **f, size_t m, size_t dv)
{
    nsa_softmax_state s = {.max = *f, .sum = *f + m, .acc = *f + 2 * m, .ldacc = dv};
    *f += state_floats(m, dv);
    return s;
}

/* Worker scratch: a chunk of scores, row limits, bf16 conversion, and the
 * selection's per-token and per-block sums. */
typedef struct worker_scratch {
    float *s, *convert, *p_sum, *score;
    int32_t *lo, *hi;
    int64_t *row_first, *row_last;
} worker_scratch;

static size_t worker_scratch_carve(const split_run *run, float *f, worker_scratch *w)
{
    const nsa_config *cfg = &run->plan->cfg;
    const size_t m = (size_t)(nsa_tile_queries(run->plan, 0) * run->plan->group_size);
    const size_t floats[] = {
        m * NSA_ATTEND_CHUNK,
        nsa_attend_convert_floats((size_t)cfg->head_dim_qk, (size_t)cfg->head_dim_v),
        (size_t)nsa_num_compressed(cfg, run->max_len) + 1,
        (size_t)nsa_num_blocks(cfg, run->max_len) + 1,
        m, m, 2 * m, 2 * m, /* int32 x2, int64 x2 (an int64 takes two floats) */
    };
    size_t used = 0;
    void *parts[8];
    for (size_t i = 0; i < 8; i++) {
        used += used % 2;
        parts[i] = f != NULL ? (void *)(f + used) : NULL;
        used += floats[i];
    }
    if (w != NULL)
        *w = (worker_scratch){.s = parts[0], .convert = parts[1], .p_sum = parts[2],
                              .score = parts[3], .lo = parts[4], .hi = parts[5],
                              .row_first = parts[6], .row_last = parts[7]};
    return used;
}

static nsa_rows tile_rows(const split_run *run, const split_tile *t)
{
    const nsa_config *cfg = &run->plan->cfg;
    return (nsa_rows){.m = t->m, .dk = (size_t)cfg->head_dim_qk, .dv = (size_t)cfg->head_dim_v,
                      .scale = cfg->scale, .q = t->q};
}

/* ---------------------------------------------------- units: attention -- */

static void compressed_unit(const split_run *run, const split_unit *u, worker_scratch *w)
{
    const split_tile *t = &run->tiles[u->tile];
    const nsa_plan *plan = run->plan;
    const nsa_rows rows = tile_rows(run, t);
    nsa_keys keys = t->compressed;
    keys.convert = w->convert;
    for (int64_t tq = 0; tq < t->tile.count; tq++) {
        const int64_t nc = nsa_visible_compressed(&plan->cfg, t->tile.first + tq, t->tile.len);
        const int64_t last = nc - 1 < u->last ? nc - 1 : u->last;
        for (int64_t r = tq * plan->group_size; r < (tq + 1) * plan->group_size; r++) {
            w->lo[r] = last >= u->first ? 0 : 1;
            w->hi[r] = last >= u->first ? (int32_t)(last - u->first) : 0;
        }
    }
    nsa_attend_span(&plan->kernels, &rows, &keys, u->first / NSA_PANEL,
                    ceil_div(u->last - u->first + 1, NSA_PANEL), w->lo, w->hi,
                    t->s + u->first, t->lds, &u->state);
}

static void raw_unit(const split_run *run, const split_unit *u, worker_scratch *w)
{
    const split_tile *t = &run->tiles[u->tile];
    const nsa_rows rows = tile_rows(run, t);
    nsa_keys keys = t->raw;
    keys.convert = w->convert;
    int64_t first_key, last_key;
    if (u->branch == SLC)
        nsa_selected_rows(run->plan, t->tile.first, t->tile.count, t->tile.len, t->blocks,
                          u->first / run->plan->cfg.sel_block, w->row_first, w->row_last);
    else
        nsa_window_rows(run->plan, t->tile.first, t->tile.count, t->tile.len, w->row_first,
                        w->row_last, &first_key, &last_key);
    nsa_attend_keys(&run->plan->kernels, &rows, &keys, u->first, u->last, w->row_first,
                    w->row_last, &u->state, w->s, w->lo, w->hi);
}

static void units_worker(void *arg, int32_t worker, int32_t num_workers)
{
    split_run *run = arg;
    worker_scratch w;
    worker_scratch_carve(run, run->scratch[worker], &w);
    (void)num_workers;
    for (int64_t i; (i = nsa_work_queue_take(&run->queue)) >= 0;) {
        const split_unit *u = &run->units[run->phase[i]];
        nsa_softmax_state_reset(&u->state, run->tiles[u->tile].m,
                                (size_t)run->plan->cfg.head_dim_v);
        if (u->branch == CMP)
            compressed_unit(run, u, &w);
        else
            raw_unit(run, u, &w);
    }
}

/* ------------------------------------------------------ tiles: merging -- */

/* merged = the log-sum-exp merge of the branch's units, in unit order.
 * With rescale_s, the compressed probabilities each unit left in the
 * tile's s are brought to the merged maximum too. */
static void merge_units(const split_run *run, split_tile *t, int branch, int rescale_s)
{
    const size_t dv = (size_t)run->plan->cfg.head_dim_v;
    const nsa_softmax_state *out = &t->merged[branch];
    nsa_softmax_state_reset(out, t->m, dv);
    const split_unit *units = run->units + t->units[branch];
    for (int64_t i = 0; i < t->unit_count[branch]; i++)
        for (size_t r = 0; r < t->m; r++)
            out->max[r] = fmaxf(out->max[r], units[i].state.max[r]);
    for (int64_t i = 0; i < t->unit_count[branch]; i++) {
        const split_unit *u = &units[i];
        for (size_t r = 0; r < t->m; r++) {
            const float f = u->state.max[r] == -INFINITY ? 0.0f
                                                         : expf(u->state.max[r] - out->max[r]);
            out->sum[r] += f * u->state.sum[r];
            for (size_t c = 0; c < dv; c++)
                out->acc[r * dv + c] += f * u->state.acc[r * dv + c];
            if (rescale_s)
                for (int64_t j = u->first; j <= u->last; j++)
                    t->s[r * t->lds + (size_t)j] *= f;
        }
    }
}

static void select_worker(void *arg, int32_t worker, int32_t num_workers)
{
    split_run *run = arg;
    const nsa_plan *plan = run->plan;
    const int64_t n = plan->cfg.sel_count, g = plan->group_size;
    worker_scratch w;
    worker_scratch_carve(run, run->scratch[worker], &w);
    (void)num_workers;
    for (int64_t i; (i = nsa_work_queue_take(&run->queue)) >= 0;) {
        split_tile *t = &run->tiles[i];
        merge_units(run, t, CMP, 1);
        for (int64_t tq = 0; tq < t->tile.count; tq++) {
            int32_t *blocks = t->blocks + tq * n;
            nsa_choose_blocks(plan, t->tile.first + tq, t->tile.len,
                              t->s + (size_t)(tq * g) * t->lds, t->lds,
                              t->merged[CMP].sum + tq * g, w.p_sum, w.score, blocks);
            if (t->tile.indices_out != NULL)
                memcpy(t->tile.indices_out + (size_t)tq * t->tile.index_stride, blocks,
                       (size_t)n * sizeof *blocks);
        }
    }
}

static void gate_worker(void *arg, int32_t worker, int32_t num_workers)
{
    split_run *run = arg;
    const nsa_plan *plan = run->plan;
    const size_t g = (size_t)plan->group_size, dv = (size_t)plan->cfg.head_dim_v;
    (void)worker;
    (void)num_workers;
    for (int64_t i; (i = nsa_work_queue_take(&run->queue)) >= 0;) {
        split_tile *t = &run->tiles[i];
        merge_units(run, t, SLC, 0);
        merge_units(run, t, SWA, 0);
        const nsa_softmax_state *s = t->merged;
        for (int64_t tq = 0; tq < t->tile.count; tq++) {
            const size_t r = (size_t)tq * g;
            plan->kernels.gate_mix(g, dv, t->tile.gates + (size_t)tq * t->tile.gates_stride,
                                   s[CMP].acc + r * dv, s[CMP].sum + r, s[SLC].acc + r * dv,
                                   s[SLC].sum + r, s[SWA].acc + r * dv, s[SWA].sum + r, dv,
                                   t->tile.out + (size_t)tq * t->tile.out_stride);
        }
    }
}

/* --------------------------------------------------------------- driver -- */

/* Upper bounds of each branch's units for a tile. */
static void unit_bounds(const nsa_plan *plan, const nsa_tile *tile, int64_t bounds[3])
{
    const nsa_config *cfg = &plan->cfg;
    bounds[CMP] = ceil_div(nsa_num_compressed(cfg, tile->len), NSA_SPLIT_CMP_KEYS);
    bounds[SLC] = tile->count * cfg->sel_count;
    bounds[SWA] = ceil_div(cfg->window + tile->count + NSA_PANEL, NSA_ATTEND_CHUNK) + 1;
}

/* Appends a branch's units for tile i, covering keys [first, last] in runs
 * of `step` (runs start on multiples of step from first). */
static void add_units(split_run *run, int64_t i, int branch, int64_t first, int64_t last,
                      int64_t step)
{
    split_tile *t = &run->tiles[i];
    for (int64_t a = first; a <= last; a += step) {
        split_unit *u = &run->units[t->units[branch] + t->unit_count[branch]++];
        u->tile = i;
        u->branch = branch;
        u->first = a;
        u->last = a + step - 1 < last ? a + step - 1 : last;
    }
}

/* Lists the units of the given branches of every tile in run->phase;
 * returns how many. */
static int64_t list_units(split_run *run, int first_branch, int last_branch)
{
    int64_t n = 0;
    for (int64_t i = 0; i < run->num_tiles; i++)
        for (int b = first_branch; b <= last_branch; b++)
            for (int64_t u = 0; u < run->tiles[i].unit_count[b]; u++)
                run->phase[n++] = run->tiles[i].units[b] + u;
    return n;
}

/* The compressed units of tile i: every compressed key its last query sees. */
static void compressed_units(split_run *run, int64_t i)
{
    const nsa_tile *tile = &run->tiles[i].tile;
    const int64_t visible =
        nsa_visible_compressed(&run->plan->cfg, tile->first + tile->count - 1, tile->len);
    if (visible > 0)
        add_units(run, i, CMP, 0, visible - 1, NSA_SPLIT_CMP_KEYS);
}

/* The selected and window units of tile i, once its blocks are chosen;
 * blocks is scratch for count * n ints. */
static void raw_units(split_run *run, int64_t i, int32_t *blocks)
{
    const nsa_config *cfg = &run->plan->cfg;
    split_tile *t = &run->tiles[i];
    const int64_t chosen = nsa_union_blocks(run->plan, t->tile.count, t->blocks, blocks);
    for (int64_t b = 0; b < chosen; b++)
        add_units(run, i, SLC, blocks[b] * cfg->sel_block,
                  blocks[b] * cfg->sel_block + cfg->sel_block - 1, cfg->sel_block);
    int64_t first = INT64_MAX, last = -1;
    for (int64_t tq = 0; tq < t->tile.count; tq++) {
        int64_t a, b;
        nsa_window_range(cfg, t->tile.first + tq, t->tile.len, &a, &b);
        first = a < first ? a : first;
        last = b > last ? b : last;
    }
    add_units(run, i, SWA, first - first % NSA_PANEL, last, NSA_ATTEND_CHUNK);
}

static void run_free(split_run *run, int32_t workers)
{
    if (run->scratch != NULL)
        for (int32_t w = 0; w < workers; w++)
            free(run->scratch[w]);
    free(run->scratch);
    if (run->tiles != NULL && run->num_tiles > 0)
        free(run->tiles[0].q); /* one block holds every tile's buffers */
    free(run->tiles);
    free(run->units);
    free(run->phase);
    free(run->union_blocks);
}

/* Allocates every buffer of the run before any output is written. */
static nsa_status run_alloc(split_run *run, int32_t workers)
{
    const nsa_config *cfg = &run->plan->cfg;
    const size_t dk = (size_t)cfg->head_dim_qk, dv = (size_t)cfg->head_dim_v;
    const size_t n = (size_t)cfg->sel_count;
    size_t floats = 0, units = 0, most_queries = 0;
    for (int64_t i = 0; i < run->num_tiles; i++) {
        split_tile *t = &run->tiles[i];
        int64_t bounds[3];
        unit_bounds(run->plan, &t->tile, bounds);
        t->m = (size_t)(t->tile.count * run->plan->group_size);
        if ((size_t)t->tile.count > most_queries)
            most_queries = (size_t)t->tile.count;
        t->lds = (size_t)ceil_div(nsa_num_compressed(cfg, t->tile.len) + 1, NSA_PANEL) * NSA_PANEL;
        floats += t->m * dk + t->m * t->lds + (size_t)t->tile.count * n + 3 * state_floats(t->m, dv);
        for (int b = 0; b < 3; b++) {
            t->units[b] = (int64_t)units;
            units += (size_t)bounds[b];
            floats += (size_t)bounds[b] * state_floats(t->m, dv);
        }
    }
    float *block = malloc((floats + 1) * sizeof(float));
    run->units = calloc(units + 1, sizeof *run->units);
    run->phase = malloc((units + 1) * sizeof *run->phase);
    run->union_blocks = malloc((most_queries * n + 1) * sizeof *run->union_blocks);
    run->scratch = calloc((size_t)workers, sizeof *run->scratch);
    if (block == NULL || run->units == NULL || run->phase == NULL ||
        run->union_blocks == NULL || run->scratch == NULL) {
        free(block);
        return NSA_ERROR_OUT_OF_MEMORY;
    }
    float *f = block;
    for (int64_t i = 0; i < run->num_tiles; i++) {
        split_tile *t = &run->tiles[i];
        t->q = f;
        f += t->m * dk;
        t->s = f;
        f += t->m * t->lds;
        t->blocks = (int32_t *)f;
        f += (size_t)t->tile.count * n;
        for (int b = 0; b < 3; b++) {
            t->merged[b] = carve_state(&f, t->m, dv);
            int64_t bounds[3];
            unit_bounds(run->plan, &t->tile, bounds);
            for (int64_t u = 0; u < bounds[b]; u++)
                run->units[t->units[b] + u].state = carve_state(&f, t->m, dv);
        }
    }
    const size_t scratch = worker_scratch_carve(run, NULL, NULL);
    for (int32_t w = 0; w < workers; w++)
        if ((run->scratch[w] = malloc(scratch * sizeof(float))) == NULL)
            return NSA_ERROR_OUT_OF_MEMORY;
    return NSA_SUCCESS;
}

nsa_status nsa_decode_split(const nsa_plan *plan, const nsa_tile *tiles, int64_t num_tiles,
                            int64_t max_len)
{
    nsa_context *ctx = plan->ctx;
    const int32_t workers = ctx->num_threads;
    const size_t row_floats = (size_t)(plan->group_size * plan->cfg.head_dim_qk);
    split_run run = {.plan = plan, .num_tiles = num_tiles, .max_len = max_len};
    run.tiles = calloc((size_t)num_tiles, sizeof *run.tiles);
    nsa_status status = run.tiles != NULL ? NSA_SUCCESS : NSA_ERROR_OUT_OF_MEMORY;
    for (int64_t i = 0; status == NSA_SUCCESS && i < num_tiles; i++)
        run.tiles[i].tile = tiles[i];
    if (status == NSA_SUCCESS)
        status = run_alloc(&run, workers);
    if (status != NSA_SUCCESS) {
        run_free(&run, workers);
        return nsa_fail(ctx, status, "no memory for the split decode workspace");
    }

    for (int64_t i = 0; i < num_tiles; i++) {
        split_tile *t = &run.tiles[i];
        t->raw = t->tile.raw;
        t->compressed = t->tile.compressed;
        for (int64_t tq = 0; tq < t->tile.count; tq++)
            memcpy(t->q + (size_t)tq * row_floats, t->tile.q + (size_t)tq * t->tile.q_stride,
                   row_floats * sizeof(float));
        compressed_units(&run, i);
    }
    nsa_work_queue_init(&run.queue, list_units(&run, CMP, CMP));
    nsa_pool_run(ctx->pool, units_worker, &run);
    nsa_work_queue_init(&run.queue, num_tiles);
    nsa_pool_run(ctx->pool, select_worker, &run);

    for (int64_t i = 0; i < num_tiles; i++)
        raw_units(&run, i, run.union_blocks);
    nsa_work_queue_init(&run.queue, list_units(&run, SLC, SWA));
    nsa_pool_run(ctx->pool, units_worker, &run);
    nsa_work_queue_init(&run.queue, num_tiles);
    nsa_pool_run(ctx->pool, gate_worker, &run);
    run_free(&run, workers);
    return NSA_SUCCESS;
}
