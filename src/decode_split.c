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
 * A step is short (tens of microseconds), so it is one eager pool run with
 * no barrier: a fixed list of items is handed out in order, and an item
 * that needs earlier ones waits on the tile's counters. Per tile: the
 * compressed units' scores (the last to finish merges their maxima and
 * sums); the window units; the selection (head sums of one compressed unit
 * each, which also score and rank the blocks inside that unit, then the
 * choice among the units' best); the compressed units' values; slots for
 * the selected blocks; the merges of the compressed accumulators and the
 * gates, one row each. The scores come first because the selection needs
 * them, and a unit's values apart from its scores because nothing needs
 * them before the merges: the window units fill the time between the first
 * and the last unit's scores, and the values the time the choice, the one
 * serial step, leaves the other workers. Items are taken in order and only
 * wait on earlier items, so some worker always makes progress; workers
 * that wake late find the list empty.
 * The buffers live in the context's kept workspace: repeated steps neither
 * allocate nor fault pages.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "carve.h"
#include "decode_split.h"
#include "geometry.h"
#include "select.h"
#include "threads.h"
#include "workspace.h"

enum { CMP, SLC, SWA }; /* branches */

typedef struct split_unit {
    int64_t tile;
    int branch;
    int64_t first, last; /* keys: compressed keys for CMP, raw keys otherwise */
    nsa_softmax_state state;
    nsa_used_keys used; /* CMP: the keys its rows take, from its scores to its values */
} split_unit;

typedef struct split_tile {
    nsa_tile tile;
    size_t m;
    float *q;  /* [m][Dk] packed rows */
    uint16_t *q3; /* the same split (nsa_tile_splits_rows), or NULL */
    float *s;  /* [m][lds] compressed probabilities */
    size_t lds;
    float *factor;         /* [m][ldf]: merge weights, per unit of a branch */
    size_t ldf;            /* the most units of any branch */
    float *p_sum;          /* [count][lds]: Eq. 9's sums over the group */
    float *score;          /* [count][ld_score]: block scores */
    size_t ld_score;
    nsa_ranked *unit_best;    /* [count][compressed units][n]: each unit's best blocks */
    int32_t *unit_best_count; /* [count][compressed units] */
    atomic_int *sum_taken;    /* [compressed units]: a worker does head sum u */
    atomic_int *values_taken; /* [compressed units]: a worker does unit u's values */
    nsa_ranked *best;         /* [count][n]: the choice's candidates */
    int32_t *blocks;       /* [count][n] chosen by each query */
    int32_t *union_blocks; /* [count * n] their union */
    int64_t units[3], unit_count[3]; /* each branch's first unit and count */
    int64_t slots;                   /* selected-block slots: >= unit_count[SLC] */
    nsa_softmax_state merged[3];
    /* Items still to finish before the next step of the tile may start. */
    atomic_int_fast64_t cmp_left;     /* compressed units: the last merges maxima and sums */
    atomic_int_fast64_t merge_left;   /* that merge: then head sums and compressed values */
    atomic_int_fast64_t value_left;   /* compressed values: then accumulator merges */
    atomic_int_fast64_t sum_left;     /* head sums: then choose */
    atomic_int_fast64_t select_left;  /* the choice: then selected blocks */
    atomic_int_fast64_t raw_left;     /* accumulator merges, window units, slots: then gate */
} split_tile;

/* The kinds of item, in the order the list holds them (list_items). */
enum {
    ITEM_SCORES, ITEM_WINDOW, ITEM_SUM, ITEM_CHOOSE, ITEM_VALUES, ITEM_SLOT, ITEM_MERGE,
    ITEM_GATE, ITEM_KINDS
};

typedef struct split_item {
    int kind;
    int64_t tile;
    /* ITEM_SCORES, ITEM_WINDOW: the unit; ITEM_SUM, ITEM_VALUES: the
     * tile's compressed unit it starts its claim from (claim_unit);
     * ITEM_SLOT: the tile's slot; ITEM_MERGE, ITEM_GATE: the tile's row */
    int64_t index;
} split_item;

/* A flag alone on its cache line: claims item i < the number of workers,
 * worker i's first item. */
typedef struct first_claim {
    _Alignas(64) atomic_int taken;
} first_claim;

typedef struct split_run {
    const nsa_plan *plan;
    split_tile *tiles;
    int64_t num_tiles;
    split_unit *units;
    split_item *items;
    int64_t num_items;
    first_claim *first; /* [workers] */
    int32_t workers;
    nsa_work_queue queue; /* the items from `workers` on */
    char *scratch; /* per worker: scratch_bytes each */
    size_t scratch_bytes;
    int64_t max_len;
} split_run;

static int64_t ceil_div(int64_t a, int64_t b)
{
    return (a + b - 1) / b;
}

/* Worker scratch: a chunk of scores, row limits, and the head sum's row
 * weights and run of p_sum. */
typedef struct worker_scratch {
    float *s, *weight, *edge;
    int32_t *lo, *hi;
    int64_t *row_first, *row_last;
    int64_t scored_tile, scored_unit; /* the compressed unit it scored last, or -1 */
} worker_scratch;

/* Lays out one worker's scratch from base (NULL: only sizes it); returns
 * its bytes. */
static size_t worker_scratch_carve(const split_run *run, char *base, worker_scratch *w)
{
    const size_t m = (size_t)(nsa_tile_queries(run->plan, 0) * run->plan->group_size);
    nsa_carver c = {.base = base};
    worker_scratch ws;
    ws.s = nsa_carve(&c, m * NSA_ATTEND_CHUNK * sizeof(float));
    ws.weight = nsa_carve(&c, (size_t)run->plan->group_size * sizeof(float));
    ws.edge = nsa_carve(&c, (size_t)(nsa_block_lead(&run->plan->cfg) + NSA_SPLIT_CMP_KEYS) *
                                sizeof(float));
    ws.lo = nsa_carve(&c, m * sizeof(int32_t));
    ws.hi = nsa_carve(&c, m * sizeof(int32_t));
    ws.row_first = nsa_carve(&c, m * sizeof(int64_t));
    ws.row_last = nsa_carve(&c, m * sizeof(int64_t));
    if (w != NULL)
        *w = ws;
    return c.used;
}

static nsa_rows tile_rows(const split_run *run, const split_tile *t)
{
    const nsa_config *cfg = &run->plan->cfg;
    return (nsa_rows){.m = t->m, .dk = (size_t)cfg->head_dim_qk, .dv = (size_t)cfg->head_dim_v,
                      .scale = cfg->scale, .q = t->q, .q3 = t->q3};
}

/* ---------------------------------------------------- units: attention -- */

/* Row limits of compressed unit u in w->lo, w->hi. */
static void compressed_limits(const split_run *run, const split_unit *u, worker_scratch *w)
{
    const split_tile *t = &run->tiles[u->tile];
    const nsa_plan *plan = run->plan;
    for (int64_t tq = 0; tq < t->tile.count; tq++) {
        const int64_t nc = nsa_visible_compressed(&plan->cfg, t->tile.first + tq, t->tile.len);
        const int64_t last = nc - 1 < u->last ? nc - 1 : u->last;
        for (int64_t r = tq * plan->group_size; r < (tq + 1) * plan->group_size; r++) {
            w->lo[r] = last >= u->first ? 0 : 1;
            w->hi[r] = last >= u->first ? (int32_t)(last - u->first) : 0;
        }
    }
}

/* A compressed unit's scores and softmax: what the selection needs. */
static void compressed_scores(const split_run *run, split_unit *u, worker_scratch *w)
{
    const split_tile *t = &run->tiles[u->tile];
    const nsa_rows rows = tile_rows(run, t);
    compressed_limits(run, u, w);
    nsa_attend_probabilities(&run->plan->kernels, &rows, &t->tile.compressed,
                             u->first / NSA_PANEL, nsa_panels_of(u->last - u->first + 1),
                             w->lo, w->hi, t->s + u->first, t->lds, &u->state, &u->used);
}

/* Its values, which nothing waits for until the accumulator merges. */
static void compressed_values(const split_run *run, const split_unit *u)
{
    const split_tile *t = &run->tiles[u->tile];
    const nsa_rows rows = tile_rows(run, t);
    nsa_attend_values(&run->plan->kernels, &rows, &t->tile.compressed, u->first / NSA_PANEL,
                      &u->used, t->s + u->first, t->lds, &u->state);
}

/* Asks for the value rows of keys [first, last] into L2: a raw unit is
 * short, and its values, needed as soon as its scores are, would otherwise
 * come from L3 one tile at a time (tile loads train no prefetcher). */
static void prefetch_values(const nsa_keys *keys, int64_t first, int64_t last, size_t dv)
{
    const char *rows = keys->v16 != NULL ? (const char *)keys->v16 : (const char *)keys->v;
    const size_t width = keys->v16 != NULL ? sizeof *keys->v16 : sizeof *keys->v;
    if (last >= keys->count)
        last = keys->count - 1;
    if (rows == NULL || last < first)
        return;
    const char *from = rows + (size_t)first * keys->ldv * width;
    const size_t bytes = ((size_t)(last - first) * keys->ldv + dv) * width;
    for (size_t b = 0; b < bytes; b += 64)
        __builtin_prefetch(from + b, 0, 2);
}

static void raw_unit(const split_run *run, const split_unit *u, worker_scratch *w)
{
    const split_tile *t = &run->tiles[u->tile];
    const nsa_rows rows = tile_rows(run, t);
    const nsa_keys keys = t->tile.raw;
    int64_t first_key, last_key;
    if (u->branch == SLC)
        nsa_selected_rows(run->plan, t->tile.first, t->tile.count, t->tile.len, t->blocks,
                          u->first / run->plan->cfg.sel_block, w->row_first, w->row_last);
    else
        nsa_window_rows(run->plan, t->tile.first, t->tile.count, t->tile.len, w->row_first,
                        w->row_last, &first_key, &last_key);
    prefetch_values(&keys, u->first, u->last, rows.dv);
    nsa_attend_keys(&run->plan->kernels, &rows, &keys, u->first, u->last, w->row_first,
                    w->row_last, &u->state, w->s, w->lo, w->hi);
}

static void run_unit(const split_run *run, split_unit *u, worker_scratch *w)
{
    nsa_softmax_state_reset(&u->state, run->tiles[u->tile].m, (size_t)run->plan->cfg.head_dim_v);
    if (u->branch == CMP)
        compressed_scores(run, u, w);
    else
        raw_unit(run, u, w);
}

/* ------------------------------------------------------ tiles: merging -- */

/* Row r of merged = the log-sum-exp merge of the branch's units, in unit
 * order, in two parts: merge_scalars the maximum and the sum, leaving the
 * row's unit weights exp(max_unit - max) in factor[r][unit] (rows apart, so
 * items merge their rows side by side); merge_acc the accumulator. The
 * units' accumulators lie [unit][m][dv], so that is one pool (a weighted
 * sum of rows) over the units. */
static void merge_scalars(const split_run *run, split_tile *t, int branch, size_t r)
{
    const split_unit *units = run->units + t->units[branch];
    float max = -INFINITY, sum = 0.0f, *f = t->factor + r * t->ldf;
    for (int64_t u = 0; u < t->unit_count[branch]; u++)
        max = fmaxf(max, units[u].state.max[r]);
    for (int64_t u = 0; u < t->unit_count[branch]; u++) {
        const float unit_max = units[u].state.max[r];
        f[u] = unit_max == -INFINITY ? 0.0f : expf(unit_max - max);
        sum += f[u] * units[u].state.sum[r];
    }
    t->merged[branch].max[r] = max;
    t->merged[branch].sum[r] = sum;
}

static void merge_acc(const split_run *run, const split_tile *t, int branch, size_t r)
{
    const size_t dv = (size_t)run->plan->cfg.head_dim_v;
    float *acc = t->merged[branch].acc + r * dv;
    if (t->unit_count[branch] == 0)
        memset(acc, 0, dv * sizeof(float));
    else
        run->plan->kernels.pool((size_t)t->unit_count[branch], dv, t->factor + r * t->ldf,
                                run->units[t->units[branch]].state.acc + r * dv, t->m * dv,
                                acc);
}

/* The compressed tokens [*first, *last] whose blocks head sum u of a query
 * with nc visible tokens ranks: the unit's own and, when the unit before
 * holds them, the lead tokens before them, which the blocks straddling the
 * two units read. */
static void sum_tokens(const split_run *run, const split_tile *t, int64_t u, int64_t nc,
                       int64_t *first, int64_t *last)
{
    const split_unit *units = run->units + t->units[CMP];
    const int64_t lead = nsa_block_lead(&run->plan->cfg);
    *first = units[u].first;
    if (u > 0 && units[u].first - lead >= units[u - 1].first)
        *first -= lead;
    *last = units[u].last < nc ? units[u].last : nc - 1;
}

/* p_sum (spec Eq. 9's sum over the group's heads of the normalised
 * compressed probabilities) of query tq over compressed tokens [first,
 * last] of unit u into p: the G rows' probabilities weighted by their
 * merge factor over their total, summed with one pool. */
static void pool_heads(const split_run *run, const split_tile *t, int64_t tq, int64_t u,
                       int64_t first, int64_t last, float *weight, float *p)
{
    const int64_t g = run->plan->group_size;
    for (int64_t r = 0; r < g; r++) {
        const size_t row = (size_t)(tq * g + r);
        const float total = t->merged[CMP].sum[row];
        weight[r] = total > 0.0f ? t->factor[row * t->ldf + (size_t)u] / total : 0.0f;
    }
    run->plan->kernels.pool((size_t)g, (size_t)(last - first + 1), weight,
                            t->s + (size_t)(tq * g) * t->lds + first, t->lds, p);
}

/* Head sum u: every query's p_sum over compressed unit u, then the scores
 * of the blocks that read only its tokens and the lead ones before them
 * (pooled again here from the unit before, so that no block is left to
 * the choice), and the best of them. */
static void head_sum(const split_run *run, split_tile *t, int64_t u, worker_scratch *w)
{
    const nsa_config *cfg = &run->plan->cfg;
    const split_unit *unit = &run->units[t->units[CMP] + u];
    for (int64_t tq = 0; tq < t->tile.count; tq++) {
        const int64_t nc = nsa_visible_compressed(cfg, t->tile.first + tq, t->tile.len);
        if (unit->first >= nc)
            continue;
        int64_t first, last, j0, j1;
        sum_tokens(run, t, u, nc, &first, &last);
        float *p_sum = t->p_sum + (size_t)tq * t->lds, *edge = w->edge;
        pool_heads(run, t, tq, u, unit->first, last, w->weight, p_sum + unit->first);
        if (first < unit->first)
            pool_heads(run, t, tq, u - 1, first, unit->first - 1, w->weight, edge);
        memcpy(edge + (unit->first - first), p_sum + unit->first,
               (size_t)(last - unit->first + 1) * sizeof(float));
        const int64_t candidates = nsa_candidate_blocks(cfg, t->tile.first + tq, t->tile.len);
        nsa_blocks_within(cfg, first, last, nc, candidates, &j0, &j1);
        float *score = t->score + (size_t)tq * t->ld_score;
        nsa_block_scores(cfg, edge, first, nc, score, j0, j1);
        const size_t best = (size_t)(tq * t->unit_count[CMP] + u);
        t->unit_best_count[best] =
            nsa_rank_blocks(cfg, score, j0, j1, (t->tile.first + tq) / cfg->sel_block,
                            cfg->sel_count, t->unit_best + best * (size_t)cfg->sel_count, 0);
    }
}

/* Appends a branch's units for tile t, covering keys [first, last] in runs
 * of `step` (runs start on multiples of step from first). */
static void add_units(split_run *run, split_tile *t, int branch, int64_t first, int64_t last,
                      int64_t step)
{
    for (int64_t a = first; a <= last; a += step) {
        split_unit *u = &run->units[t->units[branch] + t->unit_count[branch]++];
        u->tile = t - run->tiles;
        u->branch = branch;
        u->first = a;
        u->last = a + step - 1 < last ? a + step - 1 : last;
    }
}

/* Query tq's blocks: the forced ones, then the best of the blocks the head
 * sums ranked (each unit's best) and of any they left (blocks reading more
 * than two units' tokens, with units shorter than a block), scored here. */
static void choose_query(const split_run *run, split_tile *t, int64_t tq, int32_t *blocks)
{
    const nsa_config *cfg = &run->plan->cfg;
    const int64_t pos = t->tile.first + tq, query_block = pos / cfg->sel_block;
    const int64_t candidates = nsa_candidate_blocks(cfg, pos, t->tile.len);
    const int64_t nc = nsa_visible_compressed(cfg, pos, t->tile.len);
    const int32_t n = cfg->sel_count;
    const split_unit *units = run->units + t->units[CMP];
    const float *p_sum = t->p_sum + (size_t)tq * t->lds;
    float *score = t->score + (size_t)tq * t->ld_score;
    nsa_ranked *best = t->best + (size_t)tq * (size_t)n;
    const int32_t forced = nsa_forced_blocks(cfg, candidates, query_block, blocks);
    const int32_t want = (candidates < n ? (int32_t)candidates : n) - forced;
    int32_t have = 0;
    int64_t next = 0; /* blocks below are ranked */
    for (int64_t u = 0; u < t->unit_count[CMP] && units[u].first < nc; u++) {
        int64_t first, last, j0, j1;
        sum_tokens(run, t, u, nc, &first, &last);
        nsa_blocks_within(cfg, first, last, nc, candidates, &j0, &j1);
        if (j0 > next) {
            nsa_block_scores(cfg, p_sum, 0, nc, score, next, j0);
            have = nsa_rank_blocks(cfg, score, next, j0, query_block, want, best, have);
        }
        const size_t list = (size_t)(tq * t->unit_count[CMP] + u);
        have = nsa_rank_merge(t->unit_best + list * (size_t)n, t->unit_best_count[list], want,
                              best, have);
        next = j1 > next ? j1 : next;
    }
    nsa_block_scores(cfg, p_sum, 0, nc, score, next, candidates);
    have = nsa_rank_blocks(cfg, score, next, candidates, query_block, want, best, have);
    nsa_finish_selection(cfg, forced, best, have, blocks);
}

/* Chooses every query's blocks and lists the selected units (one per block
 * of their union). */
static void choose_tile(split_run *run, split_tile *t)
{
    const nsa_plan *plan = run->plan;
    const int64_t n = plan->cfg.sel_count, l = plan->cfg.sel_block;
    for (int64_t tq = 0; tq < t->tile.count; tq++) {
        int32_t *blocks = t->blocks + tq * n;
        choose_query(run, t, tq, blocks);
        if (t->tile.indices_out != NULL)
            memcpy(t->tile.indices_out + (size_t)tq * t->tile.index_stride, blocks,
                   (size_t)n * sizeof *blocks);
    }
    const int64_t chosen = nsa_union_blocks(plan, t->tile.count, t->blocks, t->union_blocks);
    for (int64_t b = 0; b < chosen; b++)
        add_units(run, t, SLC, t->union_blocks[b] * l, t->union_blocks[b] * l + l - 1, l);
}

/* Row r of tile t: its selected and window units merged, then the three
 * branches mixed by its gates. */
static void gate_row(const split_run *run, split_tile *t, size_t r)
{
    const nsa_plan *plan = run->plan;
    const size_t g = (size_t)plan->group_size, dv = (size_t)plan->cfg.head_dim_v;
    const size_t tq = r / g, head = r % g;
    for (int b = SLC; b <= SWA; b++) {
        merge_scalars(run, t, b, r);
        merge_acc(run, t, b, r);
    }
    const nsa_softmax_state *s = t->merged;
    plan->kernels.gate_mix(1, dv, t->tile.gates + tq * t->tile.gates_stride + head * 3,
                           s[CMP].acc + r * dv, s[CMP].sum + r, s[SLC].acc + r * dv,
                           s[SLC].sum + r, s[SWA].acc + r * dv, s[SWA].sum + r, dv,
                           t->tile.out + tq * t->tile.out_stride + head * dv);
}

/* The compressed unit a head-sum or values item works on (taken: the
 * tile's flags of that kind of item): the unit this worker scored, whose
 * probabilities are still in its cache, unless another worker has taken
 * it; else the first one left from the item's index on. Each of the tile's
 * items of the kind claims a different one. */
static int64_t claim_unit(const split_tile *t, atomic_int *taken, const split_item *it,
                          const worker_scratch *w)
{
    const int64_t count = t->unit_count[CMP];
    int expected = 0;
    if (w->scored_tile == it->tile &&
        atomic_compare_exchange_strong(&taken[w->scored_unit], &expected, 1))
        return w->scored_unit;
    for (int64_t k = 0;; k++) { /* as many items as units: one is left */
        const int64_t u = (it->index + k) % count;
        expected = 0;
        if (atomic_compare_exchange_strong(&taken[u], &expected, 1))
            return u;
    }
}

/* Runs one item, first waiting for the items it needs. */
static void run_item(split_run *run, const split_item *it, worker_scratch *w)
{
    split_tile *t = &run->tiles[it->tile];
    switch (it->kind) {
    case ITEM_SCORES:
        run_unit(run, &run->units[it->index], w);
        w->scored_tile = it->tile;
        w->scored_unit = it->index - t->units[CMP];
        if (nsa_count_down(&t->cmp_left)) { /* the last one */
            for (size_t r = 0; r < t->m; r++)
                merge_scalars(run, t, CMP, r);
            nsa_count_down(&t->merge_left);
        }
        break;
    case ITEM_WINDOW:
        run_unit(run, &run->units[it->index], w);
        nsa_count_down(&t->raw_left);
        break;
    case ITEM_SUM:
        nsa_wait_zero(&t->merge_left);
        head_sum(run, t, claim_unit(t, t->sum_taken, it, w), w);
        nsa_count_down(&t->sum_left);
        break;
    case ITEM_CHOOSE:
        nsa_wait_zero(&t->sum_left);
        choose_tile(run, t);
        nsa_count_down(&t->select_left);
        break;
    case ITEM_VALUES: {
        nsa_wait_zero(&t->merge_left); /* every unit's scores are in */
        const int64_t u = claim_unit(t, t->values_taken, it, w);
        compressed_values(run, &run->units[t->units[CMP] + u]);
        nsa_count_down(&t->value_left);
        break;
    }
    case ITEM_SLOT:
        nsa_wait_zero(&t->select_left);
        if (it->index < t->unit_count[SLC])
            run_unit(run, &run->units[t->units[SLC] + it->index], w);
        nsa_count_down(&t->raw_left);
        break;
    case ITEM_MERGE:
        nsa_wait_zero(&t->value_left);
        merge_acc(run, t, CMP, (size_t)it->index);
        nsa_count_down(&t->raw_left);
        break;
    default:
        nsa_wait_zero(&t->raw_left);
        gate_row(run, t, (size_t)it->index);
        break;
    }
}

/* Runs item i < run->workers unless another worker has claimed it;
 * returns whether it did. */
static int run_first(split_run *run, int64_t i, worker_scratch *w)
{
    if (i >= run->num_items || atomic_exchange(&run->first[i].taken, 1) != 0)
        return 0;
    run_item(run, &run->items[i], w);
    return 1;
}

/* Worker k starts with item k, claimed on a line of its own: a shared
 * counter taken by all workers at once queued them for ~1-2 us at the
 * start of a step. The caller (worker 0, always there) then runs, in
 * order, the first items of workers that have not come, so every item is
 * taken; a worker that comes after the caller took its item (workers
 * woken from sleep) helps with those above its own. The rest come from
 * the queue in order. An item waits only on earlier ones, and each of
 * those is claimed by a worker that runs it, so some worker always makes
 * progress. */
static void split_worker(void *arg, int32_t worker, int32_t num_workers)
{
    split_run *run = arg;
    worker_scratch w;
    worker_scratch_carve(run, run->scratch + (size_t)worker * run->scratch_bytes, &w);
    w.scored_tile = w.scored_unit = -1;
    (void)num_workers;
    if (!run_first(run, worker, &w) || worker == 0)
        for (int64_t i = worker + 1; i < run->workers; i++)
            run_first(run, i, &w);
    for (int64_t i; (i = nsa_work_queue_take(&run->queue)) >= 0;)
        run_item(run, &run->items[run->workers + i], &w);
}

/* --------------------------------------------------------------- driver -- */

/* Upper bounds of each branch's units for a tile. */
static void unit_bounds(const nsa_plan *plan, const nsa_tile *tile, int64_t bounds[3])
{
    const nsa_config *cfg = &plan->cfg;
    const int64_t blocks = nsa_num_blocks(cfg, tile->len);
    bounds[CMP] = ceil_div(nsa_num_compressed(cfg, tile->len), NSA_SPLIT_CMP_KEYS);
    bounds[SLC] = tile->count * cfg->sel_count < blocks ? tile->count * cfg->sel_count : blocks;
    bounds[SWA] = ceil_div(cfg->window + tile->count + NSA_PANEL, NSA_ATTEND_CHUNK) + 1;
}

/* Lays out every buffer of the run from base (with base NULL, only adds up
 * the bytes, which it returns) and copies the tiles in. */
static size_t layout(split_run *run, const nsa_tile *tiles, char *base, int32_t workers)
{
    const nsa_plan *plan = run->plan;
    const nsa_config *cfg = &plan->cfg;
    const size_t dk = (size_t)cfg->head_dim_qk, dv = (size_t)cfg->head_dim_v;
    nsa_carver c = {.base = base};
    size_t units = 0, items = 0;
    for (int64_t i = 0; i < run->num_tiles; i++) {
        int64_t bounds[3];
        unit_bounds(plan, &tiles[i], bounds);
        units += (size_t)(bounds[CMP] + bounds[SLC] + bounds[SWA]);
        /* units, a merge and a gate per row, a head sum and values per
         * compressed unit, the choice */
        const int64_t rows = tiles[i].count * plan->group_size;
        items += (size_t)(3 * bounds[CMP] + bounds[SLC] + bounds[SWA] + 2 * rows + 1);
    }
    run->tiles = nsa_carve(&c, (size_t)run->num_tiles * sizeof *run->tiles);
    run->units = nsa_carve(&c, units * sizeof *run->units);
    run->items = nsa_carve(&c, items * sizeof *run->items);
    run->scratch_bytes = worker_scratch_carve(run, NULL, NULL);
    run->scratch = nsa_carve(&c, (size_t)workers * run->scratch_bytes);
    run->first = nsa_carve(&c, (size_t)workers * sizeof *run->first);
    int64_t next_unit = 0;
    for (int64_t i = 0; i < run->num_tiles; i++) {
        int64_t bounds[3];
        unit_bounds(plan, &tiles[i], bounds);
        const size_t m = (size_t)(tiles[i].count * plan->group_size);
        const size_t n = (size_t)(tiles[i].count * cfg->sel_count);
        const size_t lds =
            (size_t)nsa_panels_of(nsa_num_compressed(cfg, tiles[i].len) + 1) * NSA_PANEL;
        int64_t most = 0; /* units of the branch with the most */
        for (int b = 0; b < 3; b++)
            most = bounds[b] > most ? bounds[b] : most;
        float *q = nsa_carve(&c, m * dk * sizeof(float));
        uint16_t *q3 = nsa_tile_splits_rows(plan, &tiles[i], (int64_t)m)
                           ? nsa_carve(&c, nsa_x3_query_words(m, dk) * sizeof(uint16_t))
                           : NULL;
        float *s = nsa_carve(&c, m * lds * sizeof(float));
        float *factor = nsa_carve(&c, m * (size_t)most * sizeof(float));
        float *p_sum = nsa_carve(&c, (size_t)tiles[i].count * lds * sizeof(float));
        const size_t ld_score = (size_t)nsa_num_blocks(cfg, tiles[i].len) + 1;
        float *score = nsa_carve(&c, (size_t)tiles[i].count * ld_score * sizeof(float));
        const size_t best_lists = (size_t)(tiles[i].count * bounds[CMP]);
        nsa_ranked *unit_best =
            nsa_carve(&c, best_lists * (size_t)cfg->sel_count * sizeof(nsa_ranked));
        int32_t *unit_best_count = nsa_carve(&c, best_lists * sizeof(int32_t));
        atomic_int *sum_taken = nsa_carve(&c, (size_t)bounds[CMP] * sizeof(atomic_int));
        atomic_int *values_taken = nsa_carve(&c, (size_t)bounds[CMP] * sizeof(atomic_int));
        nsa_ranked *best = nsa_carve(&c, n * sizeof(nsa_ranked));
        int32_t *blocks = nsa_carve(&c, n * sizeof(int32_t));
        int32_t *union_blocks = nsa_carve(&c, n * sizeof(int32_t));
        split_tile *t = base != NULL ? &run->tiles[i] : NULL;
        if (t != NULL)
            *t = (split_tile){.tile = tiles[i], .m = m, .q = q, .q3 = q3, .s = s,
                              .lds = lds, .factor = factor, .ldf = (size_t)most,
                              .p_sum = p_sum, .score = score, .ld_score = ld_score,
                              .unit_best = unit_best, .unit_best_count = unit_best_count,
                              .sum_taken = sum_taken, .values_taken = values_taken,
                              .best = best,
                              .blocks = blocks,
                              .union_blocks = union_blocks, .slots = bounds[SLC]};
        /* Per branch: the merged state, then the units' states with their
         * maxima, sums and accumulators each in one array ([unit][m]...). */
        for (int b = 0; b < 3; b++) {
            const size_t units_b = (size_t)bounds[b] + 1; /* + 1: the merged state */
            float *max = nsa_carve(&c, units_b * m * sizeof(float));
            float *sum = nsa_carve(&c, units_b * m * sizeof(float));
            float *acc = nsa_carve(&c, units_b * m * dv * sizeof(float));
            if (t == NULL)
                continue;
            t->units[b] = next_unit;
            for (size_t u = 0; u < units_b; u++) {
                const nsa_softmax_state state = {.max = max + u * m, .sum = sum + u * m,
                                                 .acc = acc + u * m * dv, .ldacc = dv};
                if (u + 1 == units_b)
                    t->merged[b] = state;
                else
                    run->units[next_unit + (int64_t)u].state = state;
            }
            next_unit += bounds[b];
        }
    }
    return c.used;
}

/* Appends tile i's items of one kind at n; returns the new count. */
static int64_t list_tile_items(split_run *run, int64_t i, int kind, int64_t n)
{
    const split_tile *t = &run->tiles[i];
    int64_t count = (int64_t)t->m, first = 0; /* items index first .. first + count - 1 */
    if (kind == ITEM_SCORES || kind == ITEM_VALUES || kind == ITEM_SUM) {
        count = t->unit_count[CMP];
        first = kind == ITEM_SCORES ? t->units[CMP] : 0;
    } else if (kind == ITEM_WINDOW) {
        count = t->unit_count[SWA];
        first = t->units[SWA];
    } else if (kind == ITEM_CHOOSE) {
        count = 1;
    } else if (kind == ITEM_SLOT) {
        count = t->slots;
    }
    for (int64_t k = 0; k < count; k++)
        run->items[n++] = (split_item){kind, i, first + k};
    return n;
}

/* Packs each tile's queries, lists its compressed and window units, sets
 * its counters, and writes the run's items; returns how many. */
static int64_t list_items(split_run *run)
{
    const nsa_plan *plan = run->plan;
    const nsa_config *cfg = &plan->cfg;
    const size_t row_floats = (size_t)(plan->group_size * cfg->head_dim_qk);
    for (int64_t i = 0; i < run->num_tiles; i++) {
        split_tile *t = &run->tiles[i];
        const nsa_tile *tile = &t->tile;
        for (int64_t tq = 0; tq < tile->count; tq++)
            memcpy(t->q + (size_t)tq * row_floats, tile->q + (size_t)tq * tile->q_stride,
                   row_floats * sizeof(float));
        if (t->q3 != NULL)
            plan->kernels.split_x3(t->m, (size_t)cfg->head_dim_qk, cfg->scale, t->q,
                                   (size_t)cfg->head_dim_qk, t->q3);
        const int64_t visible =
            nsa_visible_compressed(cfg, tile->first + tile->count - 1, tile->len);
        if (visible > 0)
            add_units(run, t, CMP, 0, visible - 1, NSA_SPLIT_CMP_KEYS);
        int64_t first = INT64_MAX, last = -1;
        for (int64_t tq = 0; tq < tile->count; tq++) {
            int64_t a, b;
            nsa_window_range(cfg, tile->first + tq, tile->len, &a, &b);
            first = a < first ? a : first;
            last = b > last ? b : last;
        }
        add_units(run, t, SWA, first - first % NSA_PANEL, last, NSA_ATTEND_CHUNK);
        atomic_init(&t->cmp_left, t->unit_count[CMP]);
        atomic_init(&t->merge_left, t->unit_count[CMP] > 0);
        atomic_init(&t->value_left, t->unit_count[CMP]);
        if (t->unit_count[CMP] == 0) /* no unit will merge them */
            for (size_t r = 0; r < t->m; r++)
                merge_scalars(run, t, CMP, r);
        atomic_init(&t->sum_left, t->unit_count[CMP]);
        for (int64_t u = 0; u < t->unit_count[CMP]; u++) {
            atomic_init(&t->sum_taken[u], 0);
            atomic_init(&t->values_taken[u], 0);
        }
        atomic_init(&t->select_left, 1);
        atomic_init(&t->raw_left, (int64_t)t->m + t->unit_count[SWA] + t->slots);
    }
    /* Each kind of item for every tile, in this order: the compressed
     * units' scores; the window units, which need nothing, for the workers
     * that finish those early; the selection (head sums, then the choice);
     * the compressed units' values, which nothing waits for until the
     * merges, for the workers that the choice leaves idle; the selected
     * slots; the merges; the gates. */
    int64_t n = 0;
    for (int kind = 0; kind < ITEM_KINDS; kind++)
        for (int64_t i = 0; i < run->num_tiles; i++)
            n = list_tile_items(run, i, kind, n);
    return n;
}

nsa_status nsa_decode_split(const nsa_plan *plan, const nsa_tile *tiles, int64_t num_tiles,
                            int64_t max_len)
{
    nsa_context *ctx = plan->ctx;
    const int32_t workers = ctx->num_threads;
    split_run run = {.plan = plan, .num_tiles = num_tiles, .max_len = max_len};
    const size_t bytes = layout(&run, tiles, NULL, workers);
    nsa_workspace ws;
    if (nsa_workspace_acquire(ctx, bytes, &ws) != NSA_SUCCESS)
        return nsa_fail(ctx, NSA_ERROR_OUT_OF_MEMORY,
                        "no memory for the split decode workspace (%zu bytes)", bytes);
    layout(&run, tiles, ws.data, workers);
    run.num_items = list_items(&run);
    run.workers = workers;
    for (int32_t i = 0; i < workers; i++)
        atomic_init(&run.first[i].taken, 0);
    nsa_work_queue_init(&run.queue, run.num_items > workers ? run.num_items - workers : 0);
    nsa_pool_run_eager(ctx->pool, split_worker, &run);
    nsa_workspace_release(ctx, &ws);
    return NSA_SUCCESS;
}
