/* SPDX-License-Identifier: MIT */
/*
 * backward_keys.c — the key side of the backward pass: dK and dV.
 *
 * Many queries attend to the same key (every query selects block 0 with
 * n_init = 1; a compressed token is seen by every later query), so a key's
 * gradient is a long sum. Summing it with atomics would make the bits
 * depend on timing; instead each range of keys has one owner, an item, that
 * visits every query attending to it in a fixed order and keeps the sums in
 * its own accumulators:
 *   - a selection block: first the queries that selected it (the forward's
 *     choices inverted by a counting sort, ascending), then those whose
 *     window overlaps it (a contiguous range);
 *   - a run of compressed tokens: every query that sees them (a contiguous
 *     range: t >= i*d + l - 1 when causal).
 * Queries are taken a chunk of rows at a time: scores against the span's
 * key panels (qk), dO V^T against its value panels (qk again), the
 * probabilities and score gradients transposed (grad_score_t), and pv sums
 * them over the rows into dV += P^T dO and dK += scale dS^T Q.
 */
#include <string.h>

#include "backward.h"
#include "carve.h"
#include "geometry.h"

static int64_t min64(int64_t a, int64_t b)
{
    return a < b ? a : b;
}

static int64_t max64(int64_t a, int64_t b)
{
    return a > b ? a : b;
}

static int64_t round_up(int64_t a, int64_t b)
{
    return (a + b - 1) / b * b;
}

size_t nsa_grad_keys_chunk_floats(const nsa_plan *plan, size_t rows, size_t span)
{
    (void)plan;
    return 4 * rows * span; /* scores and dP [rows][span], their transposes [span][rows] */
}

void nsa_grad_keys_chunk(const nsa_plan *plan, const nsa_grad_rows *rows, const float *kp,
                         const float *vp, int64_t np, int64_t own_first, int64_t keys, float *dk,
                         float *dv, float *scratch)
{
    const nsa_ukernels *uk = &plan->kernels;
    const size_t m = rows->m, span = (size_t)np * NSA_PANEL;
    const size_t dkd = (size_t)plan->cfg.head_dim_qk, dvd = (size_t)plan->cfg.head_dim_v;
    const float scale = plan->cfg.scale;
    float *s = scratch, *dp = s + m * span, *pt = dp + m * span, *dst = pt + span * m;
    uk->qk(m, (size_t)np, dkd, scale, rows->q, rows->ldq, kp, s, span, NULL);
    uk->qk(m, (size_t)np, dvd, 1.0f, rows->dout, rows->lddout, vp, dp, span, NULL);
    uk->grad_score_t(m, span, rows->lo, rows->hi, rows->lse, rows->dot, rows->gain, scale, s,
                     span, dp, span, pt, dst, m);
    uk->pv((size_t)keys, m, dvd, pt + (size_t)own_first * m, m, rows->dout, rows->lddout, dv,
           dvd, NULL);
    uk->pv((size_t)keys, m, dkd, dst + (size_t)own_first * m, m, rows->q, rows->ldq, dk, dkd,
           NULL);
}

/* ------------------------------------------------------------- scratch -- */

/* A key-side worker's scratch. */
typedef struct keys_scratch {
    float *chunk;           /* nsa_grad_keys_chunk's */
    float *q, *dout;        /* [rows][Dk], [rows][Dv] gathered rows */
    float *lse, *dot, *gain; /* [rows] */
    float *dk, *dv;         /* [keys][Dk], [keys][Dv] the owner's sums */
    int32_t *lo, *hi;       /* [rows] */
} keys_scratch;

static int64_t chunk_queries(const nsa_plan *plan)
{
    const int64_t g = plan->group_size;
    return g >= NSA_GRAD_KEY_ROWS ? 1 : NSA_GRAD_KEY_ROWS / g;
}

/* The widest span of panels an item reads: a selection block that starts
 * anywhere in a panel, or a run of compressed tokens. */
static int64_t span_keys(const nsa_config *cfg)
{
    return max64(round_up(cfg->sel_block + NSA_PANEL - 1, NSA_PANEL) + NSA_PANEL,
                 NSA_GRAD_CMP_KEYS);
}

static size_t carve(const backward_run *run, float *f, keys_scratch *t)
{
    const nsa_plan *plan = run->call.plan;
    const nsa_config *cfg = &plan->cfg;
    const size_t rows = (size_t)(chunk_queries(plan) * plan->group_size);
    const size_t span = (size_t)span_keys(cfg);
    const size_t keys = (size_t)max64(cfg->sel_block, NSA_GRAD_CMP_KEYS);
    const size_t dkd = (size_t)cfg->head_dim_qk, dvd = (size_t)cfg->head_dim_v;
    nsa_carver c = {.base = (char *)f};
    keys_scratch v = {0};
    v.chunk = nsa_carve(&c, nsa_grad_keys_chunk_floats(plan, rows, span) * sizeof(float));
    v.q = nsa_carve(&c, rows * dkd * sizeof(float));
    v.dout = nsa_carve(&c, rows * dvd * sizeof(float));
    v.lse = nsa_carve(&c, rows * sizeof(float));
    v.dot = nsa_carve(&c, rows * sizeof(float));
    v.gain = nsa_carve(&c, rows * sizeof(float));
    v.dk = nsa_carve(&c, keys * dkd * sizeof(float));
    v.dv = nsa_carve(&c, keys * dvd * sizeof(float));
    v.lo = nsa_carve(&c, rows * sizeof(int32_t));
    v.hi = nsa_carve(&c, rows * sizeof(int32_t));
    if (t != NULL)
        *t = v;
    return nsa_carved_floats(&c);
}

size_t nsa_backward_keys_scratch(const backward_run *run)
{
    return carve(run, NULL, NULL);
}

/* -------------------------------------------------------------- chunks -- */

/* Where one item's keys are and who owns what. */
typedef struct key_span {
    int64_t seq, head, start, len; /* the sequence: first token, length */
    int64_t span0;                 /* the first panel's first key */
    int64_t np;
    const float *kp, *vp;
    int64_t own_first, keys; /* owned keys, counted from span0 */
} key_span;

/* Limits of one row of a chunk, in keys counted from span0. */
typedef void row_limits_fn(const nsa_config *cfg, const key_span *ks, int64_t t,
                           int32_t *lo, int32_t *hi);

/* Runs one chunk: the G rows of each of the queries (local positions)
 * ts[0 .. count) or, when ts is NULL, of first .. first + count - 1, for
 * branch `branch`. */
static void run_chunk(const backward_run *run, const key_span *ks, int branch, const int32_t *ts,
                      int64_t first, int64_t count, row_limits_fn *limits, keys_scratch *t)
{
    const nsa_plan *plan = run->call.plan;
    const nsa_config *cfg = &plan->cfg;
    const int64_t g = plan->group_size, hq = cfg->num_q_heads;
    const int64_t dkd = cfg->head_dim_qk, dvd = cfg->head_dim_v;
    const int64_t T = run->call.batch->total_tokens;
    const float *lse = run->lse + (size_t)(branch * T * hq);
    const size_t m = (size_t)(count * g);
    nsa_grad_rows rows = {.m = m, .q = t->q, .dout = t->dout, .ldq = (size_t)dkd,
                          .lddout = (size_t)dvd, .lse = t->lse, .dot = t->dot, .gain = t->gain,
                          .lo = t->lo, .hi = t->hi};
    /* With one KV head, a run of queries' rows are already contiguous. */
    const int in_place = ts == NULL && cfg->num_kv_heads == 1;
    if (in_place) {
        const int64_t tok = ks->start + first;
        rows.q = run->call.q + (size_t)(tok * hq * dkd);
        rows.dout = run->dout + (size_t)(tok * hq * dvd);
        rows.lse = lse + (size_t)(tok * hq);
    }
    for (int64_t k = 0; k < count; k++) {
        const int64_t pos = ts != NULL ? ts[k] : first + k;
        const int64_t row0 = (ks->start + pos) * hq + ks->head * g; /* global row of head 0 */
        if (!in_place) {
            memcpy(t->q + k * g * dkd, run->call.q + (size_t)(row0 * dkd),
                   (size_t)(g * dkd) * sizeof *t->q);
            memcpy(t->dout + k * g * dvd, run->dout + (size_t)(row0 * dvd),
                   (size_t)(g * dvd) * sizeof *t->dout);
            memcpy(t->lse + k * g, lse + row0, (size_t)g * sizeof *t->lse);
        }
        int32_t lo, hi;
        limits(cfg, ks, pos, &lo, &hi);
        for (int64_t i = 0; i < g; i++) {
            const int64_t r = k * g + i;
            t->dot[r] = run->dgates[(row0 + i) * 3 + branch];
            t->gain[r] = run->call.gates[(row0 + i) * 3 + branch];
            t->lo[r] = lo;
            t->hi[r] = hi;
        }
    }
    nsa_grad_keys_chunk(plan, &rows, ks->kp, ks->vp, ks->np, ks->own_first, ks->keys, t->dk,
                        t->dv, t->chunk);
}

/* Starts loading the rows of the queries ts[0 .. count) into the cache. The
 * queries that selected a block are scattered over the sequence, a pattern
 * no hardware prefetcher follows; fetched during the previous chunk's
 * arithmetic, their misses cost nothing. */
static void prefetch_rows(const backward_run *run, const key_span *ks, const int32_t *ts,
                          int64_t count)
{
    const nsa_config *cfg = &run->call.plan->cfg;
    const int64_t g = run->call.plan->group_size, hq = cfg->num_q_heads;
    const size_t q_bytes = (size_t)(g * cfg->head_dim_qk) * sizeof(float);
    const size_t dout_bytes = (size_t)(g * cfg->head_dim_v) * sizeof(float);
    for (int64_t k = 0; k < count; k++) {
        const int64_t row0 = (ks->start + ts[k]) * hq + ks->head * g;
        const char *q = (const char *)(run->call.q + (size_t)(row0 * cfg->head_dim_qk));
        const char *dout = (const char *)(run->dout + (size_t)(row0 * cfg->head_dim_v));
        for (size_t b = 0; b < q_bytes; b += 64)
            __builtin_prefetch(q + b, 0, 2);
        for (size_t b = 0; b < dout_bytes; b += 64)
            __builtin_prefetch(dout + b, 0, 2);
    }
}

/* Keys a row may use: the owned keys, within [first_key, last_key]. */
static void clip_limits(const key_span *ks, int64_t first_key, int64_t last_key, int32_t *lo,
                        int32_t *hi)
{
    const int64_t a = max64(first_key - ks->span0, ks->own_first);
    const int64_t b = min64(last_key - ks->span0, ks->own_first + ks->keys - 1);
    *lo = a <= b ? (int32_t)a : 1;
    *hi = a <= b ? (int32_t)b : 0;
}

static void selected_limits(const nsa_config *cfg, const key_span *ks, int64_t t, int32_t *lo,
                            int32_t *hi)
{
    clip_limits(ks, 0, cfg->causal ? t : ks->len - 1, lo, hi);
}

static void window_limits(const nsa_config *cfg, const key_span *ks, int64_t t, int32_t *lo,
                          int32_t *hi)
{
    int64_t first, last;
    nsa_window_range(cfg, t, ks->len, &first, &last);
    clip_limits(ks, first, last, lo, hi);
}

static void compressed_limits(const nsa_config *cfg, const key_span *ks, int64_t t, int32_t *lo,
                              int32_t *hi)
{
    clip_limits(ks, 0, nsa_visible_compressed(cfg, t, ks->len) - 1, lo, hi);
}

/* The queries whose window overlaps keys [first_key, last_key]: both ends
 * of a window grow with t, so they form a range, found by bisection. */
static void window_queries(const nsa_config *cfg, int64_t len, int64_t first_key,
                           int64_t last_key, int64_t *ta, int64_t *tb)
{
    int64_t lo = 0, hi = len; /* first t whose window ends at or after first_key */
    while (lo < hi) {
        int64_t mid = lo + (hi - lo) / 2, a, b;
        nsa_window_range(cfg, mid, len, &a, &b);
        if (b >= first_key)
            hi = mid;
        else
            lo = mid + 1;
    }
    *ta = lo;
    lo = 0;
    hi = len; /* first t whose window starts after last_key */
    while (lo < hi) {
        int64_t mid = lo + (hi - lo) / 2, a, b;
        nsa_window_range(cfg, mid, len, &a, &b);
        if (a > last_key)
            hi = mid;
        else
            lo = mid + 1;
    }
    *tb = lo - 1;
}

static void zero_sums(keys_scratch *t, const nsa_config *cfg, int64_t keys)
{
    memset(t->dk, 0, (size_t)(keys * cfg->head_dim_qk) * sizeof *t->dk);
    memset(t->dv, 0, (size_t)(keys * cfg->head_dim_v) * sizeof *t->dv);
}

/* --------------------------------------------------------------- items -- */

void nsa_backward_block(const backward_run *run, const backward_item *it, float *scratch)
{
    const nsa_plan *plan = run->call.plan;
    const nsa_config *cfg = &plan->cfg;
    const int64_t b = it->seq, h = it->head, block = it->first, B = run->call.batch->num_seqs;
    const int64_t hkv = cfg->num_kv_heads, dkd = cfg->head_dim_qk, dvd = cfg->head_dim_v;
    const int64_t start = run->call.batch->cu_seqlens[b];
    const int64_t len = run->call.batch->cu_seqlens[b + 1] - start;
    const int64_t first_key = block * cfg->sel_block;
    const int64_t last_key = min64(first_key + cfg->sel_block - 1, len - 1);
    const int64_t span0 = first_key - first_key % NSA_PANEL;
    keys_scratch t;
    carve(run, scratch, &t);
    const key_span ks = {
        .seq = b, .head = h, .start = start, .len = len, .span0 = span0,
        .np = (last_key - span0) / NSA_PANEL + 1,
        .kp = backward_panels(run, run->kp, run->p_offset, b, h, dkd) + span0 * dkd,
        .vp = backward_panels(run, run->vp, run->p_offset, b, h, dvd) + span0 * dvd,
        .own_first = first_key - span0,
        .keys = last_key - first_key + 1,
    };
    zero_sums(&t, cfg, ks.keys);
    const int64_t step = chunk_queries(plan);

    /* The queries that selected the block. */
    const int64_t T = run->call.batch->total_tokens;
    const int64_t list = h * (run->b_offset[B] + B) + run->b_offset[b] + b + block;
    const int32_t *selectors = run->selectors + (size_t)(h * T * cfg->sel_count);
    const int64_t end = run->selector_first[list + 1];
    for (int64_t i = run->selector_first[list]; i < end; i += step) {
        if (i + step < end)
            prefetch_rows(run, &ks, selectors + i + step, min64(step, end - i - step));
        run_chunk(run, &ks, BRANCH_SLC, selectors + i, 0, min64(step, end - i), selected_limits,
                  &t);
    }

    /* The queries whose window overlaps it. */
    int64_t ta, tb;
    window_queries(cfg, len, first_key, last_key, &ta, &tb);
    for (int64_t q0 = ta; q0 <= tb; q0 += step)
        run_chunk(run, &ks, BRANCH_SWA, NULL, q0, min64(step, tb + 1 - q0), window_limits, &t);

    for (int64_t j = 0; j < ks.keys; j++) {
        const int64_t row = (start + first_key + j) * hkv + h;
        memcpy(run->dk + (size_t)(row * dkd), t.dk + j * dkd, (size_t)dkd * sizeof *t.dk);
        memcpy(run->dv + (size_t)(row * dvd), t.dv + j * dvd, (size_t)dvd * sizeof *t.dv);
    }
}

void nsa_backward_compressed(const backward_run *run, const backward_item *it, float *scratch)
{
    const nsa_plan *plan = run->call.plan;
    const nsa_config *cfg = &plan->cfg;
    const int64_t b = it->seq, h = it->head, B = run->call.batch->num_seqs;
    const int64_t dkd = cfg->head_dim_qk, dvd = cfg->head_dim_v;
    const int64_t start = run->call.batch->cu_seqlens[b];
    const int64_t len = run->call.batch->cu_seqlens[b + 1] - start;
    keys_scratch t;
    carve(run, scratch, &t);
    /* it->first is a multiple of NSA_GRAD_CMP_KEYS, so the span starts on a panel. */
    const key_span ks = {
        .seq = b, .head = h, .start = start, .len = len, .span0 = it->first,
        .np = nsa_panels_of(it->count),
        .kp = backward_panels(run, run->kcp, run->cp_offset, b, h, dkd) + it->first * dkd,
        .vp = backward_panels(run, run->vcp, run->cp_offset, b, h, dvd) + it->first * dvd,
        .own_first = 0,
        .keys = it->count,
    };
    zero_sums(&t, cfg, ks.keys);
    const int64_t step = chunk_queries(plan);
    const int64_t q0 = cfg->causal ? it->first * cfg->cmp_stride + cfg->cmp_block - 1 : 0;
    for (int64_t q = q0; q < len; q += step)
        run_chunk(run, &ks, BRANCH_CMP, NULL, q, min64(step, len - q), compressed_limits, &t);

    const int64_t row = h * run->c_offset[B] + run->c_offset[b] + it->first;
    memcpy(run->dkc + (size_t)(row * dkd), t.dk, (size_t)(ks.keys * dkd) * sizeof *t.dk);
    memcpy(run->dvc + (size_t)(row * dvd), t.dv, (size_t)(ks.keys * dvd) * sizeof *t.dv);
}
