/* SPDX-License-Identifier: MIT */
/*
 * tile.c — NSA for one tile of queries (tile.h): attend to the compressed
 * tokens, score and select blocks per query, attend to the union of the
 * selected blocks (rows whose query did not choose a block are masked) and
 * to the union of the windows, then mix the branches with the gates.
 * Consecutive queries share most of their blocks and window, which keeps
 * small groups (G = 1, 2, 4) as efficient as G = 16.
 */
#include <math.h>
#include <string.h>

#include "carve.h"
#include "geometry.h"
#include "select.h"
#include "tile.h"

/* Compressed keys per softmax step of the compressed branch: the step's
 * scores (64 rows x 256) stay in cache between qk, softmax and pv. */
enum { CMP_CHUNK_KEYS = 256 };

/* A worker's scratch, carved out of one block of floats. */
struct nsa_tile_scratch {
    float *q;            /* [m][Dk] the tile's rows, packed */
    uint16_t *q3;        /* the split rows (split keys only) */
    float *s_cmp;        /* [m][lds_cmp] compressed scores, then probabilities */
    size_t lds_cmp;
    float *chunk_max;    /* [m][ld_chunk]: each row's maximum after each chunk */
    size_t ld_chunk;
    float *weight;       /* [G]: one chunk's factors in the head sum */
    float *s;            /* [m][NSA_ATTEND_CHUNK] */
    float *p_sum;        /* [max compressed] */
    float *score;        /* [max blocks] */
    nsa_ranked *ranked;  /* [n]: the selection's candidates */
    int32_t *blocks;     /* [max queries][n] */
    int32_t *union_blocks; /* [max queries * n] */
    int32_t *lo, *hi;    /* [m] */
    int64_t *row_first, *row_last; /* [m] */
    nsa_softmax_state branch[3];   /* cmp, slc, swa */
};

static int64_t ceil_div(int64_t a, int64_t b)
{
    return (a + b - 1) / b;
}

int64_t nsa_tile_sub_queries(const nsa_plan *plan)
{
    return ceil_div(NSA_TILE_ROWS, plan->group_size);
}

int64_t nsa_tile_queries(const nsa_plan *plan, int dense)
{
    const int64_t g = plan->group_size, sub = nsa_tile_sub_queries(plan);
    if (dense)
        return ceil_div(NSA_DENSE_TILE_ROWS, g);
    int64_t queries = ceil_div(NSA_CMP_TILE_ROWS, g) / sub * sub; /* whole sub-tiles */
    return queries > sub ? queries : sub;
}

/* Lays the scratch out in f; returns the floats it takes (f may be NULL
 * to size it). */
static size_t scratch_carve(const nsa_plan *plan, int64_t max_queries, int64_t max_len,
                            float *f, nsa_tile_scratch *t)
{
    const nsa_config *cfg = &plan->cfg;
    const size_t m = (size_t)(max_queries * plan->group_size), dk = (size_t)cfg->head_dim_qk;
    const size_t dv = (size_t)cfg->head_dim_v;
    const size_t max_c = (size_t)nsa_num_compressed(cfg, max_len) + 1;
    const size_t lds_cmp = (size_t)ceil_div((int64_t)max_c, NSA_PANEL) * NSA_PANEL;
    const size_t max_blocks = (size_t)nsa_num_blocks(cfg, max_len) + 1;
    const size_t ld_chunk = (size_t)ceil_div((int64_t)max_c, CMP_CHUNK_KEYS);
    nsa_carver c = {.base = (char *)f};
    nsa_tile_scratch v = {0};
    v.q = nsa_carve(&c, m * dk * sizeof(float));
    if (plan->kernels.split_fp32 || plan->kernels.split_bf16_queries)
        v.q3 = nsa_carve(&c, nsa_x3_query_words(m, dk) * sizeof(uint16_t));
    v.s_cmp = nsa_carve(&c, m * lds_cmp * sizeof(float));
    v.chunk_max = nsa_carve(&c, m * ld_chunk * sizeof(float));
    v.weight = nsa_carve(&c, (size_t)plan->group_size * sizeof(float));
    v.s = nsa_carve(&c, m * NSA_ATTEND_CHUNK * sizeof(float));
    v.p_sum = nsa_carve(&c, max_c * sizeof(float));
    v.score = nsa_carve(&c, max_blocks * sizeof(float));
    v.ranked = nsa_carve(&c, (size_t)cfg->sel_count * sizeof(nsa_ranked));
    for (int b = 0; b < 3; b++) {
        v.branch[b].max = nsa_carve(&c, m * sizeof(float));
        v.branch[b].sum = nsa_carve(&c, m * sizeof(float));
        v.branch[b].acc = nsa_carve(&c, m * dv * sizeof(float));
        v.branch[b].ldacc = dv;
    }
    v.row_first = nsa_carve(&c, m * sizeof(int64_t));
    v.row_last = nsa_carve(&c, m * sizeof(int64_t));
    const size_t chosen = (size_t)max_queries * (size_t)cfg->sel_count;
    v.blocks = nsa_carve(&c, chosen * sizeof(int32_t));
    v.union_blocks = nsa_carve(&c, chosen * sizeof(int32_t));
    v.lo = nsa_carve(&c, m * sizeof(int32_t));
    v.hi = nsa_carve(&c, m * sizeof(int32_t));
    v.lds_cmp = lds_cmp;
    v.ld_chunk = ld_chunk;
    if (t != NULL)
        *t = v;
    return nsa_carved_floats(&c);
}

size_t nsa_tile_scratch_floats(const nsa_plan *plan, int64_t max_queries, int64_t max_len)
{
    return scratch_carve(plan, max_queries, max_len, NULL, NULL);
}

int nsa_tile_splits_rows(const nsa_plan *plan, const nsa_tile *tile, int64_t m)
{
    enum { MIN_ROWS = 8 };
    /* split keys: the forward's, on tile products (the compressed ones for
     * NSA, the raw ones for dense) */
    if (tile->raw.kp3 != NULL || tile->compressed.kp3 != NULL)
        return 1;
    return plan->kernels.split_bf16_queries && tile->raw.kp16 != NULL && m >= MIN_ROWS;
}

/* Copies the tile's query rows together, so the kernels see one matrix,
 * and splits them once where that pays (nsa_tile_splits_rows; t->q3 is
 * NULL otherwise). */
static void pack_queries(const nsa_plan *plan, const nsa_tile *tile, nsa_tile_scratch *t)
{
    const size_t dk = (size_t)plan->cfg.head_dim_qk;
    const size_t row_floats = (size_t)plan->group_size * dk;
    for (int64_t i = 0; i < tile->count; i++)
        memcpy(t->q + (size_t)i * row_floats, tile->q + (size_t)i * tile->q_stride,
               row_floats * sizeof *t->q);
    const int64_t m = tile->count * plan->group_size;
    if (nsa_tile_splits_rows(plan, tile, m))
        plan->kernels.split_x3((size_t)m, dk, plan->cfg.scale, t->q, dk, t->q3);
    else
        t->q3 = NULL;
}

/* Blocks for the query at position pos of a sequence of len keys, from
 * p_sum (spec Eq. 9's normalised compressed probabilities summed over the
 * group's G rows); t's score and ranked are scratch. Writes n blocks,
 * ascending, -1 padded. */
static void choose_from_sum(const nsa_plan *plan, int64_t pos, int64_t len, const float *p_sum,
                            nsa_tile_scratch *t, int32_t *blocks)
{
    const nsa_config *cfg = &plan->cfg;
    const int64_t candidates = nsa_candidate_blocks(cfg, pos, len);
    nsa_block_scores(cfg, p_sum, 0, nsa_visible_compressed(cfg, pos, len), t->score, 0,
                     candidates);
    nsa_select_blocks(cfg, t->score, candidates, pos / cfg->sel_block, t->ranked, blocks);
}

/* p_sum of query tq (spec Eq. 9: the group's normalised compressed
 * probabilities summed over its G rows): chunk by chunk, each row's
 * probabilities brought from the chunk's maximum to the final one and
 * divided by the row's total, with one pool per chunk. */
static void head_sum(const nsa_plan *plan, const nsa_tile *tile, int64_t tq,
                     nsa_tile_scratch *t)
{
    const int64_t g = plan->group_size;
    const int64_t nc = nsa_visible_compressed(&plan->cfg, tile->first + tq, tile->len);
    const nsa_softmax_state *cmp = &t->branch[0];
    for (int64_t first = 0, c = 0; first < nc; first += CMP_CHUNK_KEYS, c++) {
        for (int64_t i = 0; i < g; i++) {
            const size_t r = (size_t)(tq * g + i);
            t->weight[i] = cmp->sum[r] > 0.0f
                               ? expf(t->chunk_max[r * t->ld_chunk + (size_t)c] - cmp->max[r]) /
                                     cmp->sum[r]
                               : 0.0f;
        }
        const int64_t keys = nc - first < CMP_CHUNK_KEYS ? nc - first : CMP_CHUNK_KEYS;
        plan->kernels.pool((size_t)g, (size_t)keys, t->weight,
                           t->s_cmp + (size_t)(tq * g) * t->lds_cmp + first, t->lds_cmp,
                           t->p_sum + first);
    }
}

/* The queries' blocks: the caller's (sorted), or chosen from the
 * compressed-branch probabilities left in t->s_cmp (spec section 3). */
static void choose_blocks(const nsa_plan *plan, const nsa_tile *tile, nsa_tile_scratch *t)
{
    const int64_t n = plan->cfg.sel_count;
    for (int64_t tq = 0; tq < tile->count; tq++) {
        int32_t *blocks = t->blocks + tq * n;
        if (tile->given != NULL) {
            memcpy(blocks, tile->given + (size_t)tq * tile->index_stride,
                   (size_t)n * sizeof *blocks);
            nsa_normalize_blocks(blocks, (int32_t)n);
        } else {
            head_sum(plan, tile, tq, t);
            choose_from_sum(plan, tile->first + tq, tile->len, t->p_sum, t, blocks);
        }
        if (tile->indices_out != NULL)
            memcpy(tile->indices_out + (size_t)tq * tile->index_stride, blocks,
                   (size_t)n * sizeof *blocks);
    }
}

int64_t nsa_union_blocks(const nsa_plan *plan, int64_t count, const int32_t *chosen,
                         int32_t *blocks)
{
    const int64_t n = plan->cfg.sel_count;
    int64_t size = 0;
    for (int64_t i = 0; i < count * n; i++)
        if (chosen[i] >= 0)
            blocks[size++] = chosen[i];
    nsa_sort_blocks(blocks, (int32_t)size);
    int64_t unique = 0;
    for (int64_t i = 0; i < size; i++)
        if (unique == 0 || blocks[unique - 1] != blocks[i])
            blocks[unique++] = blocks[i];
    return unique;
}

void nsa_selected_rows(const nsa_plan *plan, int64_t first, int64_t count, int64_t len,
                       const int32_t *chosen, int64_t block, int64_t *row_first,
                       int64_t *row_last)
{
    const nsa_config *cfg = &plan->cfg;
    const int64_t n = cfg->sel_count, g = plan->group_size;
    const int64_t start = block * cfg->sel_block, end = start + cfg->sel_block - 1;
    for (int64_t tq = 0; tq < count; tq++) {
        const int64_t limit = cfg->causal ? first + tq : len - 1;
        int takes = 0;
        for (int64_t i = 0; i < n && !takes; i++)
            takes = chosen[tq * n + i] == block;
        for (int64_t r = tq * g; r < (tq + 1) * g; r++) {
            row_first[r] = takes ? start : 1;
            row_last[r] = takes ? (end < limit ? end : limit) : 0;
        }
    }
}

void nsa_window_rows(const nsa_plan *plan, int64_t first, int64_t count, int64_t len,
                     int64_t *row_first, int64_t *row_last, int64_t *first_key,
                     int64_t *last_key)
{
    const int64_t g = plan->group_size;
    *first_key = INT64_MAX;
    *last_key = -1;
    for (int64_t tq = 0; tq < count; tq++) {
        int64_t a, b;
        nsa_window_range(&plan->cfg, first + tq, len, &a, &b);
        *first_key = a < *first_key ? a : *first_key;
        *last_key = b > *last_key ? b : *last_key;
        for (int64_t r = tq * g; r < (tq + 1) * g; r++) {
            row_first[r] = a;
            row_last[r] = b;
        }
    }
}

/* [at, at + bytes) into L1, every other cache line (the adjacent-line
 * prefetcher brings its pair), or, for spans larger than L1, every line
 * into L2. */
static void prefetch_lines(const void *at, size_t bytes, int to_l2)
{
    const char *p = at;
    if (to_l2)
        for (size_t b = 0; b < bytes; b += 64)
            __builtin_prefetch(p + b, 0, 2);
    else
        for (size_t b = 0; b < bytes; b += 128)
            __builtin_prefetch(p + b, 0, 3);
}

void nsa_prefetch_block(const nsa_plan *plan, const nsa_keys *keys, int64_t block)
{
    const nsa_config *cfg = &plan->cfg;
    const int64_t first = block * cfg->sel_block;
    const int64_t count = first + cfg->sel_block <= keys->count ? cfg->sel_block
                                                                 : keys->count - first;
    const size_t dk = (size_t)cfg->head_dim_qk;
    if (count <= 0)
        return;
    if (keys->kp3 != NULL) { /* whole panels of the three terms, pair rows of values: 96 KiB */
        const int64_t panel = first / NSA_PANEL, panels = nsa_panels_of(first + count) - panel;
        prefetch_lines(keys->kp3 + (size_t)panel * nsa_x3_panel_words(dk),
                       (size_t)panels * nsa_x3_panel_words(dk) * sizeof(uint16_t), 1);
        const size_t pair = nsa_x3_pair_words(keys->ldv);
        prefetch_lines(keys->v3 + (size_t)(first / 2) * pair,
                       (size_t)((count + 1) / 2) * pair * sizeof(uint16_t), 1);
        return;
    }
    if (keys->kp == NULL)
        return; /* the bf16 cache is left to the hardware prefetcher */
    prefetch_lines(keys->kp + (size_t)(first - first % NSA_PANEL) * dk,
                   (size_t)(count + NSA_PANEL) * dk * sizeof(float), 0);
    for (int64_t j = 0; j < count; j++)
        prefetch_lines(keys->v + (size_t)(first + j) * keys->ldv,
                       (size_t)cfg->head_dim_v * sizeof(float), 0);
}

/* Selected branch over the union of the sub-tile's blocks, ascending; a
 * row takes a block only if its query chose it. */
static void attend_selected(const nsa_plan *plan, const nsa_rows *rows, const nsa_keys *keys,
                            int64_t len, int64_t t0, int64_t count, const int32_t *chosen,
                            const nsa_softmax_state *state, nsa_tile_scratch *t)
{
    const int64_t lsel = plan->cfg.sel_block;
    const int64_t blocks = nsa_union_blocks(plan, count, chosen, t->union_blocks);
    for (int64_t i = 0; i < blocks; i++) {
        const int64_t block = t->union_blocks[i];
        if (i + 1 < blocks)
            nsa_prefetch_block(plan, keys, t->union_blocks[i + 1]);
        nsa_selected_rows(plan, t0, count, len, chosen, block, t->row_first, t->row_last);
        nsa_attend_keys(&plan->kernels, rows, keys, block * lsel, block * lsel + lsel - 1,
                        t->row_first, t->row_last, state, t->s, t->lo, t->hi);
    }
}

static void attend_window(const nsa_plan *plan, const nsa_rows *rows, const nsa_keys *keys,
                          int64_t len, int64_t t0, int64_t count, const nsa_softmax_state *state,
                          nsa_tile_scratch *t)
{
    int64_t first, last;
    nsa_window_rows(plan, t0, count, len, t->row_first, t->row_last, &first, &last);
    nsa_attend_keys(&plan->kernels, rows, keys, first, last, t->row_first, t->row_last, state,
                    t->s, t->lo, t->hi);
}

/* Compressed branch: online softmax over the visible compressed tokens in
 * chunks of CMP_CHUNK_KEYS, leaving each chunk's probabilities in s_cmp and
 * the maximum they are relative to in chunk_max (selection reads both). */
static void attend_compressed(const nsa_plan *plan, const nsa_rows *rows,
                              const nsa_keys *keys, int64_t len, int64_t t0, int64_t count,
                              nsa_tile_scratch *t)
{
    const nsa_config *cfg = &plan->cfg;
    const int64_t g = plan->group_size;
    int64_t most = 0;
    for (int64_t tq = 0; tq < count; tq++) {
        const int64_t nc = nsa_visible_compressed(cfg, t0 + tq, len);
        most = nc > most ? nc : most;
    }
    for (int64_t first = 0, c = 0; first < most; first += CMP_CHUNK_KEYS, c++) {
        const int64_t chunk = most - first < CMP_CHUNK_KEYS ? most - first : CMP_CHUNK_KEYS;
        for (int64_t tq = 0; tq < count; tq++) {
            const int64_t visible = nsa_visible_compressed(cfg, t0 + tq, len) - first;
            for (int64_t r = tq * g; r < (tq + 1) * g; r++) {
                t->lo[r] = visible > 0 ? 0 : 1;
                t->hi[r] = visible > 0 ? (int32_t)((visible < chunk ? visible : chunk) - 1) : 0;
            }
        }
        nsa_attend_span(&plan->kernels, rows, keys, first / NSA_PANEL,
                        ceil_div(chunk, NSA_PANEL), t->lo, t->hi, t->s_cmp + first, t->lds_cmp,
                        &t->branch[0]);
        for (size_t r = 0; r < rows->m; r++)
            t->chunk_max[r * t->ld_chunk + (size_t)c] = t->branch[0].max[r];
    }
}

/* Each branch's log-sum-exp per row, for the backward pass. */
static void record_lse(const nsa_plan *plan, const nsa_tile *tile, const nsa_tile_scratch *t)
{
    const int64_t g = plan->group_size;
    for (int b = 0; b < 3; b++)
        for (int64_t tq = 0; tq < tile->count && !(b == 1 && tile->defer_selected); tq++) {
            float *lse = tile->lse + (size_t)b * tile->lse_branch_stride + (size_t)tq * tile->lse_stride;
            for (int64_t i = 0; i < g; i++) {
                const int64_t r = tq * g + i;
                const float sum = t->branch[b].sum[r];
                lse[i] = sum > 0.0f ? t->branch[b].max[r] + logf(sum) : -INFINITY;
            }
        }
}

enum { CMP, SLC, SWA }; /* branches */

/* Rows from which a window pass takes the split keys, where it has them. */
enum { WINDOW_TILE_MIN_ROWS = 64 };

/* The selected (SLC) or window (SWA) branch for `count` of the tile's
 * queries from query `sub`. */
static void attend_rows(const nsa_plan *plan, const nsa_tile *tile, nsa_tile_scratch *t,
                        int branch, int64_t sub, int64_t count)
{
    const nsa_config *cfg = &plan->cfg;
    const size_t dk = (size_t)cfg->head_dim_qk, dv = (size_t)cfg->head_dim_v;
    const size_t row0 = (size_t)(sub * plan->group_size), m = (size_t)(count * plan->group_size);
    /* the split rows from row0 on, where a block of 16 starts there */
    const int split = t->q3 != NULL && row0 % 16 == 0 &&
                      nsa_tile_splits_rows(plan, tile, (int64_t)m);
    const uint16_t *q3 = split ? t->q3 + nsa_x3_query_words(row0, dk) : NULL;
    const nsa_rows rows = {.m = m, .dk = dk, .dv = dv, .scale = cfg->scale, .q = t->q + row0 * dk,
                           .q3 = q3};
    const nsa_softmax_state part = {.max = t->branch[branch].max + row0,
                                    .sum = t->branch[branch].sum + row0,
                                    .acc = t->branch[branch].acc + row0 * dv,
                                    .ldacc = dv};
    /* split raw keys: a window pass of many rows runs on them (the dense
     * kernel's shape), selected blocks and small passes on the fp32 ones */
    const int on_tiles = branch == SWA && q3 != NULL && m >= WINDOW_TILE_MIN_ROWS;
    const nsa_keys keys = on_tiles ? tile->raw : nsa_fp32_keys(&tile->raw);
    if (branch == SLC)
        attend_selected(plan, &rows, &keys, tile->len, tile->first + sub, count,
                        t->blocks + sub * cfg->sel_count, &part, t);
    else
        attend_window(plan, &rows, &keys, tile->len, tile->first + sub, count, &part, t);
}

void nsa_tile_attend(const nsa_plan *plan, const nsa_tile *tile, int64_t max_queries,
                     int64_t max_len, float *scratch)
{
    const nsa_config *cfg = &plan->cfg;
    const int64_t g = plan->group_size, dk = cfg->head_dim_qk, dv = cfg->head_dim_v;
    const int64_t count = tile->count, sub_queries = nsa_tile_sub_queries(plan);
    const size_t m = (size_t)(count * g);
    nsa_tile_scratch scratch_view, *t = &scratch_view;
    scratch_carve(plan, max_queries, max_len, scratch, t);

    pack_queries(plan, tile, t);
    const nsa_rows rows = {.m = m, .dk = (size_t)dk, .dv = (size_t)dv, .scale = cfg->scale,
                           .q = t->q, .q3 = t->q3};
    for (int i = 0; i < 3; i++)
        nsa_softmax_state_reset(&t->branch[i], m, (size_t)dv);

    attend_compressed(plan, &rows, &tile->compressed, tile->len, tile->first, count, t);
    choose_blocks(plan, tile, t);
    /* Windows of consecutive queries differ by one key each: the whole tile
     * shares one pass unless that would mask off more than a sixteenth of
     * the keys, as with many queries per tile (small G). */
    const int64_t window_queries = count <= cfg->window / 16 + 1 ? count : sub_queries;
    for (int64_t sub = 0; sub < count && !tile->defer_selected; sub += sub_queries)
        attend_rows(plan, tile, t, SLC, sub, count - sub < sub_queries ? count - sub : sub_queries);
    for (int64_t sub = 0; sub < count; sub += window_queries)
        attend_rows(plan, tile, t, SWA, sub,
                    count - sub < window_queries ? count - sub : window_queries);

    if (tile->lse != NULL)
        record_lse(plan, tile, t);
    for (int64_t tq = 0; tq < count; tq++) {
        const size_t row0 = (size_t)(tq * g);
        const nsa_softmax_state *s = t->branch;
        plan->kernels.gate_mix((size_t)g, (size_t)dv, tile->gates + (size_t)tq * tile->gates_stride,
                               s[0].acc + row0 * (size_t)dv, s[0].sum + row0,
                               s[1].acc + row0 * (size_t)dv, s[1].sum + row0,
                               s[2].acc + row0 * (size_t)dv, s[2].sum + row0, (size_t)dv,
                               tile->out + (size_t)tq * tile->out_stride);
    }
}

void nsa_tile_attend_dense(const nsa_plan *plan, const nsa_tile *tile, int64_t max_queries,
                           int64_t max_len, float *scratch)
{
    const nsa_config *cfg = &plan->cfg;
    const int64_t g = plan->group_size, dk = cfg->head_dim_qk, dv = cfg->head_dim_v;
    const int64_t t0 = tile->first, count = tile->count, len = tile->len;
    const size_t m = (size_t)(count * g);
    nsa_tile_scratch scratch_view, *t = &scratch_view;
    scratch_carve(plan, max_queries, max_len, scratch, t);

    pack_queries(plan, tile, t);
    for (int64_t tq = 0; tq < count; tq++)
        for (int64_t r = tq * g; r < (tq + 1) * g; r++) {
            t->row_first[r] = 0;
            t->row_last[r] = cfg->causal ? t0 + tq : len - 1;
        }
    const nsa_rows rows = {.m = m, .dk = (size_t)dk, .dv = (size_t)dv, .scale = cfg->scale,
                           .q = t->q, .q3 = t->q3};
    const nsa_softmax_state *s = &t->branch[2];
    nsa_softmax_state_reset(s, m, (size_t)dv);
    nsa_attend_keys(&plan->kernels, &rows, &tile->raw, 0, cfg->causal ? t0 + count - 1 : len - 1,
                    t->row_first, t->row_last, s, t->s, t->lo, t->hi);
    for (int64_t tq = 0; tq < count; tq++) {
        float *out = tile->out + (size_t)tq * tile->out_stride;
        for (int64_t r = tq * g; r < (tq + 1) * g; r++, out += dv)
            for (int64_t c = 0; c < dv; c++)
                out[c] = s->acc[(size_t)(r * dv + c)] / s->sum[r];
    }
}
