/* SPDX-License-Identifier: MIT */
/*
 * backward_queries.c — the query side of the backward pass: dQ and the
 * gates' gradients, per tile of queries of one sequence and KV head, tiled
 * as the forward is: rows = queries x the G heads of the group; the
 * compressed branch runs on the whole tile (its queries see nearly the same
 * compressed tokens, so each is read once for all rows), the selected and
 * window branches on sub-tiles whose union of blocks stays close to each
 * query's own.
 *
 * Per branch, the tile's keys are segments of whole panels (the compressed
 * tokens; each block of the union of the queries' selected blocks; the
 * union of their windows), each with per-row limits as in the forward. A
 * first sweep computes the scores (qk), P = exp(s - lse) from the saved
 * log-sum-exp (exact, no online softmax) and dP = dO V^T (qk against value
 * panels), keeping both for the whole row, and sums P o dP per row: that is
 * <dO, O_branch> = dg, the gate's gradient, with which the score gradient
 * is dS = g P o (dP - dg). The second sweep turns P into dS and adds
 * scale dS K to dq. Keeping P and dP costs 2 x rows x keys floats (a few
 * MiB at most, for the compressed tokens of a long sequence) and saves
 * recomputing them: three products per key instead of five.
 */
#include <string.h>

#include "backward.h"
#include "carve.h"
#include "geometry.h"
#include "tile.h"

/* Keys per pv call of dq += dS K: keeps a slab of K hot in cache while
 * every row block of the tile passes over it. */
enum { DQ_STEP = 256 };

static int64_t round_up(int64_t a, int64_t b)
{
    return (a + b - 1) / b * b;
}

/* A span of whole panels of one branch's keys. */
typedef struct segment {
    int64_t key0;     /* first key of the first panel */
    int64_t np;       /* panels */
    int64_t col;      /* its first column in the tile's s and dp */
    int64_t used_lo, used_hi; /* keys some row takes, from key0; lo > hi if none */
} segment;

typedef struct queries_scratch {
    float *q, *dout;         /* [m][Dk], [m][Dv] packed rows */
    float *s, *dp;           /* [m][lds]: lds set per branch */
    size_t lds;
    float *dq;               /* [m][Dk] */
    float *lse, *gain, *coef, *dot; /* [m] */
    int32_t *lo, *hi;        /* [m] */
    int64_t *row_first, *row_last; /* [m] */
    int32_t *blocks, *union_blocks; /* [queries][n] each */
    segment *segments;       /* [queries * n + 1] */
} queries_scratch;

/* Columns a sub-tile's branch may need: the blocks of the union of its
 * queries' blocks, each starting anywhere in a panel, or the union of their
 * windows. */
static int64_t sub_tile_columns(const backward_run *run)
{
    const nsa_plan *plan = run->call.plan;
    const nsa_config *cfg = &plan->cfg;
    const int64_t sub = nsa_tile_sub_queries(plan);
    int64_t blocks = sub * cfg->sel_count, all_blocks = nsa_num_blocks(cfg, run->call.max_len);
    blocks = blocks < all_blocks ? blocks : all_blocks;
    const int64_t slc = blocks * (round_up(cfg->sel_block + NSA_PANEL - 1, NSA_PANEL) + NSA_PANEL);
    const int64_t swa = round_up(sub + cfg->window + NSA_PANEL, NSA_PANEL) + NSA_PANEL;
    return slc > swa ? slc : swa;
}

static size_t carve(const backward_run *run, float *f, queries_scratch *t)
{
    const nsa_plan *plan = run->call.plan;
    const nsa_config *cfg = &plan->cfg;
    const int64_t queries = run->tile_queries, max_len = run->call.max_len;
    const int64_t sub = nsa_tile_sub_queries(plan);
    const size_t m = (size_t)(queries * plan->group_size);
    const size_t dkd = (size_t)cfg->head_dim_qk, dvd = (size_t)cfg->head_dim_v;
    const int64_t n = cfg->sel_count;
    /* Floats of the widest branch: every compressed token for the tile's
     * rows, or a sub-tile's columns for its rows. */
    const int64_t cmp_cols = round_up(nsa_num_compressed(cfg, max_len), NSA_PANEL);
    const int64_t sub_cols = sub_tile_columns(run);
    const size_t area = m * (size_t)cmp_cols > (size_t)(sub * plan->group_size * sub_cols)
                            ? m * (size_t)cmp_cols
                            : (size_t)(sub * plan->group_size * sub_cols);
    const size_t segments = (size_t)(sub * n + 1);
    nsa_carver c = {.base = (char *)f};
    queries_scratch v = {0};
    v.q = nsa_carve(&c, m * dkd * sizeof(float));
    v.dout = nsa_carve(&c, m * dvd * sizeof(float));
    v.s = nsa_carve(&c, area * sizeof(float));
    v.dp = nsa_carve(&c, area * sizeof(float));
    v.dq = nsa_carve(&c, m * dkd * sizeof(float));
    v.lse = nsa_carve(&c, m * sizeof(float));
    v.gain = nsa_carve(&c, m * sizeof(float));
    v.coef = nsa_carve(&c, m * sizeof(float));
    v.dot = nsa_carve(&c, m * sizeof(float));
    v.lo = nsa_carve(&c, m * sizeof(int32_t));
    v.hi = nsa_carve(&c, m * sizeof(int32_t));
    v.row_first = nsa_carve(&c, m * sizeof(int64_t));
    v.row_last = nsa_carve(&c, m * sizeof(int64_t));
    v.segments = nsa_carve(&c, segments * sizeof(segment));
    v.blocks = nsa_carve(&c, (size_t)(queries * n) * sizeof(int32_t));
    v.union_blocks = nsa_carve(&c, (size_t)(queries * n) * sizeof(int32_t));
    if (t != NULL)
        *t = v;
    return nsa_carved_floats(&c);
}

size_t nsa_backward_queries_scratch(const backward_run *run)
{
    return carve(run, NULL, NULL);
}

/* The tile and where its branch's keys live. */
typedef struct tile_view {
    int64_t seq, head, start, len, first, count;
    size_t m;
    const float *q, *dout; /* packed or in place, rows of stride Dk / Dv */
    float *dq;             /* the rows' dq sums [m][Dk] */
    const float *kp, *vp;  /* the branch's key and value panels */
    const float *k;        /* its key rows, stride ldk */
    size_t ldk;
} tile_view;

/* One segment of a branch: row r takes absolute keys [row_first[r],
 * row_last[r]] (empty when first > last) among [key_first, key_last].
 * Computes the segment's scores, probabilities and dO V^T into the next
 * columns and adds to each row's P . dP. */
static void sweep_segment(const nsa_plan *plan, const tile_view *v, queries_scratch *t,
                          int64_t key_first, int64_t key_last, segment *seg, int64_t *col)
{
    const nsa_ukernels *uk = &plan->kernels;
    const nsa_config *cfg = &plan->cfg;
    seg->key0 = key_first - key_first % NSA_PANEL;
    seg->np = (key_last - seg->key0) / NSA_PANEL + 1;
    seg->col = *col;
    seg->used_lo = INT64_MAX;
    seg->used_hi = -1;
    for (size_t r = 0; r < v->m; r++) {
        int64_t a = t->row_first[r] > key_first ? t->row_first[r] : key_first;
        int64_t b = t->row_last[r] < key_last ? t->row_last[r] : key_last;
        if (a > b) {
            t->lo[r] = 1;
            t->hi[r] = 0;
            continue;
        }
        t->lo[r] = (int32_t)(a - seg->key0);
        t->hi[r] = (int32_t)(b - seg->key0);
        seg->used_lo = a - seg->key0 < seg->used_lo ? a - seg->key0 : seg->used_lo;
        seg->used_hi = b - seg->key0 > seg->used_hi ? b - seg->key0 : seg->used_hi;
    }
    const size_t nk = (size_t)seg->np * NSA_PANEL;
    float *s = t->s + seg->col, *dp = t->dp + seg->col;
    *col += (int64_t)nk;
    if (seg->used_hi < 0) { /* no row takes a key here: zero columns */
        for (size_t r = 0; r < v->m; r++) {
            memset(s + r * t->lds, 0, nk * sizeof *s);
            memset(dp + r * t->lds, 0, nk * sizeof *dp);
        }
        return;
    }
    uk->qk(v->m, (size_t)seg->np, (size_t)cfg->head_dim_qk, cfg->scale, v->q,
           (size_t)cfg->head_dim_qk, v->kp + (size_t)(seg->key0 * cfg->head_dim_qk), s, t->lds, NULL);
    uk->qk(v->m, (size_t)seg->np, (size_t)cfg->head_dim_v, 1.0f, v->dout,
           (size_t)cfg->head_dim_v, v->vp + (size_t)(seg->key0 * cfg->head_dim_v), dp, t->lds, NULL);
    uk->grad_prob(v->m, nk, t->lo, t->hi, t->lse, s, t->lds, dp, t->lds, t->dot);
}

/* Second sweep of a branch: dS over every column, then dq += dS K per
 * segment over the keys some row takes. */
static void finish_branch(const backward_run *run, const tile_view *v, queries_scratch *t,
                          int branch, const segment *segments, int64_t count, int64_t cols)
{
    const nsa_plan *plan = run->call.plan;
    const nsa_config *cfg = &plan->cfg;
    const int64_t g = plan->group_size, hq = cfg->num_q_heads;
    for (size_t r = 0; r < v->m; r++) {
        const int64_t row = (v->start + v->first + (int64_t)r / g) * hq + v->head * g +
                            (int64_t)r % g;
        run->dgates[row * 3 + branch] = t->dot[r];
        t->coef[r] = cfg->scale * t->gain[r];
    }
    if (cols == 0)
        return;
    plan->kernels.grad_score(v->m, (size_t)cols, t->coef, t->dot, t->s, t->lds, t->dp, t->lds);
    for (int64_t i = 0; i < count; i++) {
        const segment *seg = &segments[i];
        for (int64_t key = seg->used_lo; key <= seg->used_hi; key += DQ_STEP) {
            const int64_t keys = seg->used_hi + 1 - key < DQ_STEP ? seg->used_hi + 1 - key
                                                                  : DQ_STEP;
            plan->kernels.pv(v->m, (size_t)keys, (size_t)cfg->head_dim_qk,
                             t->dp + seg->col + key, t->lds,
                             v->k + (size_t)(seg->key0 + key) * v->ldk, v->ldk, v->dq,
                             (size_t)cfg->head_dim_qk, NULL);
        }
    }
}

/* Per-row inputs of one branch, and a fresh dot. */
static void branch_rows(const backward_run *run, const tile_view *v, queries_scratch *t,
                        int branch)
{
    const nsa_config *cfg = &run->call.plan->cfg;
    const int64_t g = run->call.plan->group_size, hq = cfg->num_q_heads;
    const int64_t T = run->call.batch->total_tokens;
    for (size_t r = 0; r < v->m; r++) {
        const int64_t row = (v->start + v->first + (int64_t)r / g) * hq + v->head * g +
                            (int64_t)r % g;
        t->lse[r] = run->lse[branch * T * hq + row];
        t->gain[r] = run->call.gates[row * 3 + branch];
        t->dot[r] = 0.0f;
    }
}

static void compressed_branch(const backward_run *run, tile_view *v, queries_scratch *t)
{
    const nsa_plan *plan = run->call.plan;
    const nsa_config *cfg = &plan->cfg;
    const int64_t g = plan->group_size, B = run->call.batch->num_seqs, dkd = cfg->head_dim_qk;
    int64_t most = 0;
    for (int64_t tq = 0; tq < v->count; tq++) {
        const int64_t nc = nsa_visible_compressed(cfg, v->first + tq, v->len);
        most = nc > most ? nc : most;
        for (int64_t r = tq * g; r < (tq + 1) * g; r++) {
            t->row_first[r] = 0;
            t->row_last[r] = nc - 1;
        }
    }
    v->kp = backward_panels(run, run->kcp, run->cp_offset, v->seq, v->head, dkd);
    v->vp = backward_panels(run, run->vcp, run->cp_offset, v->seq, v->head, cfg->head_dim_v);
    v->k = run->kc + (size_t)((v->head * run->c_offset[B] + run->c_offset[v->seq]) * dkd);
    v->ldk = (size_t)dkd;
    t->lds = (size_t)round_up(most > 0 ? most : 1, NSA_PANEL);
    branch_rows(run, v, t, BRANCH_CMP);
    int64_t cols = 0;
    if (most > 0)
        sweep_segment(plan, v, t, 0, most - 1, &t->segments[0], &cols);
    finish_branch(run, v, t, BRANCH_CMP, t->segments, most > 0, cols);
}

static void raw_keys(const backward_run *run, tile_view *v)
{
    const nsa_config *cfg = &run->call.plan->cfg;
    v->kp = backward_panels(run, run->kp, run->p_offset, v->seq, v->head, cfg->head_dim_qk);
    v->vp = backward_panels(run, run->vp, run->p_offset, v->seq, v->head, cfg->head_dim_v);
    v->ldk = (size_t)cfg->head_dim_qk;
    v->k = backward_key_rows(run, v->seq, v->head);
}

static void selected_branch(const backward_run *run, tile_view *v, queries_scratch *t)
{
    const nsa_plan *plan = run->call.plan;
    const nsa_config *cfg = &plan->cfg;
    const int64_t n = cfg->sel_count, hkv = cfg->num_kv_heads;
    for (int64_t tq = 0; tq < v->count; tq++)
        memcpy(t->blocks + tq * n,
               run->blocks + (size_t)(((v->start + v->first + tq) * hkv + v->head) * n),
               (size_t)n * sizeof *t->blocks);
    const int64_t blocks = nsa_union_blocks(plan, v->count, t->blocks, t->union_blocks);
    raw_keys(run, v);
    branch_rows(run, v, t, BRANCH_SLC);
    int64_t cols = 0;
    for (int64_t i = 0; i < blocks; i++) {
        const int64_t block = t->union_blocks[i];
        const int64_t first_key = block * cfg->sel_block;
        int64_t last_key = first_key + cfg->sel_block - 1;
        last_key = last_key < v->len - 1 ? last_key : v->len - 1;
        nsa_selected_rows(plan, v->first, v->count, v->len, t->blocks, block, t->row_first,
                          t->row_last);
        sweep_segment(plan, v, t, first_key, last_key, &t->segments[i], &cols);
    }
    finish_branch(run, v, t, BRANCH_SLC, t->segments, blocks, cols);
}

static void window_branch(const backward_run *run, tile_view *v, queries_scratch *t)
{
    const nsa_plan *plan = run->call.plan;
    int64_t first_key, last_key, cols = 0;
    nsa_window_rows(plan, v->first, v->count, v->len, t->row_first, t->row_last, &first_key,
                    &last_key);
    raw_keys(run, v);
    branch_rows(run, v, t, BRANCH_SWA);
    sweep_segment(plan, v, t, first_key, last_key, &t->segments[0], &cols);
    finish_branch(run, v, t, BRANCH_SWA, t->segments, 1, cols);
}

void nsa_backward_queries(const backward_run *run, const backward_item *it, float *scratch)
{
    const nsa_plan *plan = run->call.plan;
    const nsa_config *cfg = &plan->cfg;
    const int64_t g = plan->group_size, hq = cfg->num_q_heads;
    const int64_t dkd = cfg->head_dim_qk, dvd = cfg->head_dim_v;
    queries_scratch t;
    carve(run, scratch, &t);
    tile_view v = {.seq = it->seq, .head = it->head, .first = it->first, .count = it->count,
                   .start = run->call.batch->cu_seqlens[it->seq],
                   .m = (size_t)(it->count * g)};
    v.len = run->call.batch->cu_seqlens[it->seq + 1] - v.start;
    const int64_t row0 = (v.start + v.first) * hq + v.head * g; /* first query, head 0 */
    if (cfg->num_kv_heads == 1) { /* the tile's rows are already contiguous */
        v.q = run->call.q + (size_t)(row0 * dkd);
        v.dout = run->dout + (size_t)(row0 * dvd);
    } else {
        for (int64_t tq = 0; tq < v.count; tq++) {
            memcpy(t.q + tq * g * dkd, run->call.q + (size_t)((row0 + tq * hq) * dkd),
                   (size_t)(g * dkd) * sizeof *t.q);
            memcpy(t.dout + tq * g * dvd, run->dout + (size_t)((row0 + tq * hq) * dvd),
                   (size_t)(g * dvd) * sizeof *t.dout);
        }
        v.q = t.q;
        v.dout = t.dout;
    }
    memset(t.dq, 0, v.m * (size_t)dkd * sizeof *t.dq);
    v.dq = t.dq;
    compressed_branch(run, &v, &t);

    const int64_t sub_queries = nsa_tile_sub_queries(plan);
    t.lds = (size_t)sub_tile_columns(run);
    /* All sub-tiles' selected branches, then their windows: consecutive
     * queries share most of their blocks and windows, which then stay in
     * cache from one sub-tile to the next. */
    for (int branch = BRANCH_SLC; branch <= BRANCH_SWA; branch++)
        for (int64_t sub = 0; sub < it->count; sub += sub_queries) {
            tile_view part = v;
            part.first = v.first + sub;
            part.count = it->count - sub < sub_queries ? it->count - sub : sub_queries;
            part.m = (size_t)(part.count * g);
            part.q = v.q + (size_t)(sub * g * dkd);
            part.dout = v.dout + (size_t)(sub * g * dvd);
            part.dq = v.dq + (size_t)(sub * g * dkd);
            if (branch == BRANCH_SLC)
                selected_branch(run, &part, &t);
            else
                window_branch(run, &part, &t);
        }
    for (int64_t tq = 0; tq < v.count; tq++)
        memcpy(run->dq + (size_t)((row0 + tq * hq) * dkd), t.dq + tq * g * dkd,
               (size_t)(g * dkd) * sizeof *t.dq);
}
