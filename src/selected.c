/* SPDX-License-Identifier: MIT */
/*
 * selected.c — the selected branch of a chunk of queries, block by block
 * (selected.h). Consecutive queries of one KV head may choose quite
 * different blocks (always so with random inputs, and with small groups
 * most of all), so attending to the union of a tile's blocks would spend
 * most of its work on masked rows. Instead the chunk's selections are
 * inverted with a counting sort into, per block, the queries that chose it
 * (ascending); each block is then loaded once and attended by exactly its
 * rows: gathered into one tile, with their running softmax states gathered
 * and scattered around the call, when groups are small; query by query in
 * place, while the block stays in cache, when a group fills the kernels'
 * row blocks itself. Blocks are taken in ascending order, so
 * every query merges its blocks in the same order whatever the threads.
 * With long sequences most blocks are chosen by one query of a chunk and
 * come from DRAM, so the kernels prefetch the next block's keys and values
 * while they work on the current one. Where the kernels have tile products
 * and NSA_SELECTED_ON_TILES asks for it (context.h; off by default until
 * the host has measured it), groups of 16 or more attend to the forward's
 * split keys with their rows split once per chunk, and the next block's
 * split terms are asked for here (nsa_prefetch_block), since tile loads
 * train no prefetcher.
 */
#include <math.h>
#include <string.h>

#include "carve.h"
#include "geometry.h"
#include "selected.h"

int64_t nsa_selected_chunk_queries(const nsa_plan *plan)
{
    const int64_t queries = NSA_SELECTED_CHUNK_ROWS / plan->group_size;
    return queries > NSA_SELECTED_CHUNK_QUERIES ? NSA_SELECTED_CHUNK_QUERIES
           : queries > 0                        ? queries
                                                : 1;
}

typedef struct chunk_scratch {
    nsa_softmax_state state;    /* the chunk's rows, [rows] */
    nsa_softmax_state gathered; /* one block's rows */
    float *q, *s;
    uint16_t *q3; /* the chunk's rows split, where blocks go on tile products */
    int32_t *lo, *hi, *first_query, *queries; /* first_query [blocks + 1] */
    int64_t *row_first, *row_last;
} chunk_scratch;

/* Whether a plan's selected blocks may run on tile products: its kernels
 * have them, and every query's G rows are whole 16-row blocks of the split
 * layout, attended in place (blocks then take the split keys where the
 * forward packed them). */
static int on_tiles(const nsa_plan *plan)
{
    return plan->kernels.split_selected && plan->group_size % 16 == 0;
}

/* Lays the scratch out in f (NULL: only count); returns the floats it
 * takes. */
static size_t carve(const nsa_plan *plan, int64_t max_len, float *f, chunk_scratch *c)
{
    const nsa_config *cfg = &plan->cfg;
    const int64_t queries = nsa_selected_chunk_queries(plan);
    const size_t rows = (size_t)(queries * plan->group_size);
    const size_t dk = (size_t)cfg->head_dim_qk, dv = (size_t)cfg->head_dim_v;
    const size_t blocks = (size_t)nsa_num_blocks(cfg, max_len) + 1;
    nsa_carver k = {.base = (char *)f};
    chunk_scratch v = {0};
    nsa_softmax_state *states[2] = {&v.state, &v.gathered};
    for (int i = 0; i < 2; i++) {
        states[i]->max = nsa_carve(&k, rows * sizeof(float));
        states[i]->sum = nsa_carve(&k, rows * sizeof(float));
        states[i]->acc = nsa_carve(&k, rows * dv * sizeof(float));
        states[i]->ldacc = dv;
    }
    v.q = nsa_carve(&k, rows * dk * sizeof(float));
    if (on_tiles(plan))
        v.q3 = nsa_carve(&k, nsa_x3_query_words(rows, dk) * sizeof(uint16_t));
    v.s = nsa_carve(&k, rows * NSA_ATTEND_CHUNK * sizeof(float));
    v.lo = nsa_carve(&k, rows * sizeof(int32_t));
    v.hi = nsa_carve(&k, rows * sizeof(int32_t));
    v.first_query = nsa_carve(&k, (blocks + 1) * sizeof(int32_t));
    v.queries = nsa_carve(&k, (size_t)queries * (size_t)cfg->sel_count * sizeof(int32_t));
    v.row_first = nsa_carve(&k, rows * sizeof(int64_t));
    v.row_last = nsa_carve(&k, rows * sizeof(int64_t));
    if (c != NULL)
        *c = v;
    return nsa_carved_floats(&k);
}

size_t nsa_selected_scratch_floats(const nsa_plan *plan, int64_t max_len)
{
    return carve(plan, max_len, NULL, NULL);
}

/* Per block, the chunk's queries that chose it: first_query[J] ..
 * first_query[J + 1] - 1 index queries[], ascending. */
static void invert(const nsa_plan *plan, const nsa_selected_job *job, int64_t blocks,
                   chunk_scratch *c)
{
    const int64_t n = plan->cfg.sel_count;
    memset(c->first_query, 0, (size_t)(blocks + 1) * sizeof *c->first_query);
    for (int64_t i = 0; i < job->count; i++)
        for (int64_t s = 0; s < n; s++) {
            const int32_t block = job->blocks[(size_t)i * job->index_stride + (size_t)s];
            if (block < 0)
                break; /* -1 pads the end */
            c->first_query[block + 1]++;
        }
    for (int64_t b = 0; b < blocks; b++)
        c->first_query[b + 1] += c->first_query[b];
    for (int64_t i = 0; i < job->count; i++)
        for (int64_t s = 0; s < n; s++) {
            const int32_t block = job->blocks[(size_t)i * job->index_stride + (size_t)s];
            if (block < 0)
                break;
            c->queries[c->first_query[block]++] = (int32_t)i;
        }
    for (int64_t b = blocks; b > 0; b--) /* the fill moved every start one block on */
        c->first_query[b] = c->first_query[b - 1];
    c->first_query[0] = 0;
}

/* Copies G state rows between the chunk's state (row `row`) and a gathered
 * block tile (row `at`); to_block chooses the direction. */
static void move_state(const nsa_softmax_state *chunk, const nsa_softmax_state *block,
                       size_t row, size_t at, size_t g, size_t dv, int to_block)
{
    const nsa_softmax_state *from = to_block ? chunk : block, *to = to_block ? block : chunk;
    const size_t src = to_block ? row : at, dst = to_block ? at : row;
    for (size_t i = 0; i < g; i++) { /* a few rows: no calls for 4-byte copies */
        to->max[dst + i] = from->max[src + i];
        to->sum[dst + i] = from->sum[src + i];
    }
    memcpy(to->acc + dst * dv, from->acc + src * dv, g * dv * sizeof(float));
}

/* A group of at least this many heads fills the kernels' row blocks by
 * itself: its queries attend to a block in place, one after another while
 * the block is hot in cache, instead of being gathered into one tile. */
enum { IN_PLACE_GROUP = 8 };

static int in_place(const nsa_plan *plan)
{
    return plan->group_size >= IN_PLACE_GROUP;
}

/* The last key of [first, last] that query i of the job may take: causal
 * queries stop at themselves, so their own block runs no panel past them. */
static int64_t query_last_key(const nsa_plan *plan, const nsa_selected_job *job, int64_t i,
                              int64_t last)
{
    const int64_t limit = plan->cfg.causal ? job->first + i : job->len - 1;
    return last < limit ? last : limit;
}

/* Query i of the job (its G rows, in place) to the keys [first, last]. */
static void attend_in_place(const nsa_plan *plan, const nsa_selected_job *job,
                            const nsa_keys *keys, int64_t i, int64_t first, int64_t last,
                            chunk_scratch *c)
{
    const nsa_config *cfg = &plan->cfg;
    const size_t g = (size_t)plan->group_size, dv = (size_t)cfg->head_dim_v;
    last = query_last_key(plan, job, i, last);
    for (size_t r = 0; r < g; r++) {
        c->row_first[r] = first;
        c->row_last[r] = last;
    }
    const size_t dk = (size_t)cfg->head_dim_qk;
    const nsa_rows rows = {.m = g, .dk = dk, .dv = dv, .scale = cfg->scale,
                           .q = job->q + (size_t)i * job->q_stride,
                           .q3 = keys->kp3 != NULL ? c->q3 + nsa_x3_query_words((size_t)i * g, dk)
                                                   : NULL};
    const size_t row = (size_t)i * g;
    const nsa_softmax_state state = {.max = c->state.max + row, .sum = c->state.sum + row,
                                     .acc = c->state.acc + row * dv, .ldacc = dv};
    nsa_attend_keys(&plan->kernels, &rows, keys, first, last, c->row_first, c->row_last,
                    &state, c->s, c->lo, c->hi);
}

/* Whether a block's queries ask for the next one's rows and accumulators
 * ahead of its turn (an A/B build option: no gain on the 2-vCPU Zen 5
 * development VM, 32K and 64K, 2 alternating rounds; unmeasured on the
 * 16-core host, whose L3 is further away). */
#ifndef NSA_SELECTED_PREFETCH_STATE
#define NSA_SELECTED_PREFETCH_STATE 0
#endif

/* Asks for query i's rows and accumulators into L2 ahead of its turn. */
static void prefetch_query(const nsa_plan *plan, const nsa_selected_job *job, int64_t i,
                           const chunk_scratch *c)
{
    const size_t g = (size_t)plan->group_size;
    const size_t q_bytes = g * (size_t)plan->cfg.head_dim_qk * sizeof(float);
    const size_t acc_bytes = g * (size_t)plan->cfg.head_dim_v * sizeof(float);
    const char *q = (const char *)(job->q + (size_t)i * job->q_stride);
    const char *acc = (const char *)(c->state.acc + (size_t)i * g * c->state.ldacc);
    for (size_t b = 0; b < q_bytes; b += 64)
        __builtin_prefetch(q + b, 0, 2);
    for (size_t b = 0; b < acc_bytes; b += 64)
        __builtin_prefetch(acc + b, 1, 2);
}

/* Attends block's rows (the queries in list[0 .. count)) to its keys. */
static void attend_block(const nsa_plan *plan, const nsa_selected_job *job,
                         const nsa_keys *keys, int64_t block, const int32_t *list,
                         int64_t count, chunk_scratch *c)
{
    const nsa_config *cfg = &plan->cfg;
    const size_t g = (size_t)plan->group_size, dk = (size_t)cfg->head_dim_qk;
    const size_t dv = (size_t)cfg->head_dim_v;
    const int64_t first = block * cfg->sel_block, last = first + cfg->sel_block - 1;
    if (in_place(plan)) {
        for (int64_t k = 0; k < count; k++) {
            if (NSA_SELECTED_PREFETCH_STATE && k + 1 < count)
                prefetch_query(plan, job, list[k + 1], c);
            attend_in_place(plan, job, keys, list[k], first, last, c);
        }
        return;
    }
    int64_t used_last = first; /* the last key any row takes */
    for (int64_t k = 0; k < count; k++) {
        const int64_t i = list[k], row_last = query_last_key(plan, job, i, last);
        used_last = row_last > used_last ? row_last : used_last;
        memcpy(c->q + (size_t)k * g * dk, job->q + (size_t)i * job->q_stride,
               g * dk * sizeof(float));
        move_state(&c->state, &c->gathered, (size_t)i * g, (size_t)k * g, g, dv, 1);
        for (size_t r = (size_t)k * g; r < (size_t)(k + 1) * g; r++) {
            c->row_first[r] = first;
            c->row_last[r] = row_last;
        }
    }
    const size_t m = (size_t)count * g;
    const nsa_rows rows = {.m = m, .dk = dk, .dv = dv, .scale = cfg->scale, .q = c->q};
    nsa_attend_keys(&plan->kernels, &rows, keys, first, used_last, c->row_first, c->row_last,
                    &c->gathered, c->s, c->lo, c->hi);
    for (int64_t k = 0; k < count; k++)
        move_state(&c->state, &c->gathered, (size_t)list[k] * g, (size_t)k * g, g, dv, 0);
}

/* Whether blocks on tile products ask for the next block's split terms
 * (an A/B build option for the host, with NSA_SELECTED_ON_TILES=1). */
#ifndef NSA_SELECTED_TILE_PREFETCH
#define NSA_SELECTED_TILE_PREFETCH 1
#endif

/* Each query's G rows split once for the chunk (on_tiles). */
static void split_rows(const nsa_plan *plan, const nsa_selected_job *job, chunk_scratch *c)
{
    const size_t g = (size_t)plan->group_size, dk = (size_t)plan->cfg.head_dim_qk;
    for (int64_t i = 0; i < job->count; i++)
        plan->kernels.split_x3(g, dk, plan->cfg.scale, job->q + (size_t)i * job->q_stride, dk,
                               c->q3 + nsa_x3_query_words((size_t)i * g, dk));
}

/* out += g_slc o_slc, and the log-sum-exp when training. */
static void finish(const nsa_plan *plan, const nsa_selected_job *job, const chunk_scratch *c)
{
    const size_t g = (size_t)plan->group_size, dv = (size_t)plan->cfg.head_dim_v;
    for (int64_t i = 0; i < job->count; i++)
        for (size_t h = 0; h < g; h++) {
            const size_t r = (size_t)i * g + h;
            const float sum = c->state.sum[r];
            const float weight =
                nsa_gate_over_sum(job->gates[(size_t)i * job->gates_stride + 3 * h + 1], sum);
            float *out = job->out + (size_t)i * job->out_stride + h * dv;
            for (size_t e = 0; e < dv; e++)
                out[e] += weight * c->state.acc[r * dv + e];
            if (job->lse != NULL)
                job->lse[(size_t)i * job->lse_stride + h] =
                    sum > 0.0f ? c->state.max[r] + logf(sum) : -INFINITY;
        }
}

void nsa_selected_attend(const nsa_plan *plan, const nsa_selected_job *job, float *scratch)
{
    chunk_scratch c;
    carve(plan, job->len, scratch, &c);
    const int64_t blocks = nsa_num_blocks(&plan->cfg, job->len);
    nsa_softmax_state_reset(&c.state, (size_t)(job->count * plan->group_size),
                            (size_t)plan->cfg.head_dim_v);
    invert(plan, job, blocks, &c);
    nsa_keys keys = job->raw; /* with the next chosen block as the prefetch hint */
    if (on_tiles(plan) && keys.kp3 != NULL)
        split_rows(plan, job, &c);
    else
        keys = nsa_fp32_keys(&keys);
    const int64_t l = plan->cfg.sel_block;
    const int hinted = l % NSA_PANEL == 0; /* the hint moves whole panels */
    int64_t next = 0;
    for (int64_t b = 0; b < blocks; b++) {
        const int64_t count = c.first_query[b + 1] - c.first_query[b];
        if (count == 0)
            continue;
        for (next = next > b ? next : b + 1;
             next < blocks && c.first_query[next + 1] == c.first_query[next];)
            next++;
        keys.prefetch_ahead = hinted && next < blocks ? (next - b) * l : 0;
        if (NSA_SELECTED_TILE_PREFETCH && keys.kp3 != NULL && next < blocks)
            nsa_prefetch_block(plan, &keys, next);
        attend_block(plan, job, &keys, b, c.queries + c.first_query[b], count, &c);
    }
    finish(plan, job, &c);
}
