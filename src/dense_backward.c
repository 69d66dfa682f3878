/* SPDX-License-Identifier: MIT */
/*
 * dense_backward.c — nsa_dense_backward: the backward of full softmax
 * attention (causal or not) on NSA's layout, the baseline the NSA backward
 * is measured against. FlashAttention-2's method with O(T) memory and the
 * same kernels and key-side machinery as nsa_backward:
 *
 *   1. per (sequence, KV head): pack keys and values into panels;
 *   2. per tile of queries (the dense forward's tiles): one forward sweep
 *      over the keys for each row's log-sum-exp and delta = <dO, O> (there
 *      is no saved record to read them from), then a second sweep that
 *      recomputes P exactly, forms dS = scale P o (dO V^T - delta) and adds
 *      dS K to dq;
 *   3. per block of keys, one owner: every query that sees the block, in
 *      ascending order, adds P^T dO to dv and scale dS^T Q to dk.
 * Every item owns its outputs, so the results are bitwise the same for every
 * run and thread count.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "backward.h"
#include "carve.h"
#include "memory.h"
#include "tile.h"

enum { DENSE_KEYS = 64 };         /* keys per key-side item (whole panels) */
enum { DENSE_SWEEP_KEYS = 256 };  /* keys per step of the query side's second sweep */
enum { PACK, QUERIES, KEYS };

typedef struct dense_item {
    int32_t seq, head, kind;
    int64_t first, count, cost;
} dense_item;

typedef struct dense_run {
    forward_call call;
    const float *dout;
    float *dq, *dk, *dv;
    int64_t *p_offset;
    float *kp, *vp;
    float *lse, *delta; /* [T][Hq] */
    int64_t tile_queries;
    dense_item *items;
    nsa_work_queue queue;
    float **scratch;
} dense_run;

static int64_t min64(int64_t a, int64_t b)
{
    return a < b ? a : b;
}

static float *panels(const dense_run *run, float *base, int64_t b, int64_t h, int64_t dim)
{
    const int64_t B = run->call.batch->num_seqs;
    return base + (size_t)((h * run->p_offset[B] + run->p_offset[b]) * dim * NSA_PANEL);
}

/* ------------------------------------------------------------- scratch -- */

typedef struct dense_scratch {
    float *q, *dout;            /* [m][Dk], [m][Dv] packed rows */
    float *s, *dp;              /* [m][DENSE_SWEEP_KEYS] */
    float *dq;                  /* [m][Dk] */
    float *lse, *delta, *coef;  /* [m] */
    float *max, *sum, *acc;     /* the forward sweep: [m], [m], [m][Dv] */
    float *chunk;               /* the forward sweep's scores, or a key-side chunk's */
    float *ones;                /* [rows] gains of the key side */
    float *kdk, *kdv;           /* [DENSE_KEYS][Dk], [DENSE_KEYS][Dv] */
    int32_t *lo, *hi;           /* [m] */
    int64_t *row_first, *row_last; /* [m] */
} dense_scratch;

/* Rows of a key-side chunk: whole queries, about NSA_GRAD_KEY_ROWS rows. */
static int64_t chunk_queries(const nsa_plan *plan)
{
    const int64_t g = plan->group_size;
    return g >= NSA_GRAD_KEY_ROWS ? 1 : NSA_GRAD_KEY_ROWS / g;
}

static size_t carve(const dense_run *run, float *f, dense_scratch *t)
{
    const nsa_plan *plan = run->call.plan;
    const nsa_config *cfg = &plan->cfg;
    const int64_t g = plan->group_size;
    const int64_t rows = run->tile_queries * g > chunk_queries(plan) * g
                             ? run->tile_queries * g
                             : chunk_queries(plan) * g;
    const size_t m = (size_t)rows, dkd = (size_t)cfg->head_dim_qk, dvd = (size_t)cfg->head_dim_v;
    size_t chunk = nsa_grad_keys_chunk_floats(plan, m, DENSE_KEYS);
    chunk = chunk > m * NSA_ATTEND_CHUNK ? chunk : m * NSA_ATTEND_CHUNK;
    nsa_carver c = {.base = (char *)f};
    dense_scratch v = {0};
    v.q = nsa_carve(&c, m * dkd * sizeof(float));
    v.dout = nsa_carve(&c, m * dvd * sizeof(float));
    v.s = nsa_carve(&c, m * DENSE_SWEEP_KEYS * sizeof(float));
    v.dp = nsa_carve(&c, m * DENSE_SWEEP_KEYS * sizeof(float));
    v.dq = nsa_carve(&c, m * dkd * sizeof(float));
    v.lse = nsa_carve(&c, m * sizeof(float));
    v.delta = nsa_carve(&c, m * sizeof(float));
    v.coef = nsa_carve(&c, m * sizeof(float));
    v.max = nsa_carve(&c, m * sizeof(float));
    v.sum = nsa_carve(&c, m * sizeof(float));
    v.acc = nsa_carve(&c, m * dvd * sizeof(float));
    v.chunk = nsa_carve(&c, chunk * sizeof(float));
    v.ones = nsa_carve(&c, m * sizeof(float));
    v.kdk = nsa_carve(&c, DENSE_KEYS * dkd * sizeof(float));
    v.kdv = nsa_carve(&c, DENSE_KEYS * dvd * sizeof(float));
    v.lo = nsa_carve(&c, m * sizeof(int32_t));
    v.hi = nsa_carve(&c, m * sizeof(int32_t));
    v.row_first = nsa_carve(&c, m * sizeof(int64_t));
    v.row_last = nsa_carve(&c, m * sizeof(int64_t));
    if (t != NULL)
        *t = v;
    return nsa_carved_floats(&c);
}

/* --------------------------------------------------------------- items -- */

static void pack(const dense_run *run, const dense_item *it)
{
    const nsa_config *cfg = &run->call.plan->cfg;
    const int64_t b = it->seq, h = it->head, hkv = cfg->num_kv_heads;
    const int64_t dkd = cfg->head_dim_qk, dvd = cfg->head_dim_v;
    const int64_t start = run->call.batch->cu_seqlens[b];
    const int64_t len = run->call.batch->cu_seqlens[b + 1] - start;
    nsa_pack_panels(run->call.k + (size_t)((start * hkv + h) * dkd), (size_t)(hkv * dkd), len,
                    dkd, it->first, it->count,
                    panels(run, run->kp, b, h, dkd) + it->first * dkd * NSA_PANEL);
    nsa_pack_panels(run->call.v + (size_t)((start * hkv + h) * dvd), (size_t)(hkv * dvd), len,
                    dvd, it->first, it->count,
                    panels(run, run->vp, b, h, dvd) + it->first * dvd * NSA_PANEL);
}

/* The query side of one tile: statistics, then dq. */
static void queries(const dense_run *run, const dense_item *it, float *scratch)
{
    const nsa_plan *plan = run->call.plan;
    const nsa_config *cfg = &plan->cfg;
    const nsa_ukernels *uk = &plan->kernels;
    const int64_t b = it->seq, h = it->head, g = plan->group_size;
    const int64_t hq = cfg->num_q_heads, hkv = cfg->num_kv_heads;
    const int64_t dkd = cfg->head_dim_qk, dvd = cfg->head_dim_v;
    const int64_t start = run->call.batch->cu_seqlens[b];
    const int64_t len = run->call.batch->cu_seqlens[b + 1] - start;
    const int64_t row0 = (start + it->first) * hq + h * g; /* first query, head 0 */
    const size_t m = (size_t)(it->count * g);
    dense_scratch t;
    carve(run, scratch, &t);
    for (int64_t tq = 0; tq < it->count; tq++) {
        memcpy(t.q + tq * g * dkd, run->call.q + (size_t)((row0 + tq * hq) * dkd),
               (size_t)(g * dkd) * sizeof *t.q);
        memcpy(t.dout + tq * g * dvd, run->dout + (size_t)((row0 + tq * hq) * dvd),
               (size_t)(g * dvd) * sizeof *t.dout);
        for (int64_t r = tq * g; r < (tq + 1) * g; r++) {
            t.row_first[r] = 0;
            t.row_last[r] = cfg->causal ? it->first + tq : len - 1;
        }
    }
    const int64_t last = cfg->causal ? it->first + it->count - 1 : len - 1;
    const float *kp = panels(run, run->kp, b, h, dkd), *vp = panels(run, run->vp, b, h, dvd);
    const float *k = run->call.k + (size_t)((start * hkv + h) * dkd);
    const size_t ldk = (size_t)(hkv * dkd);

    /* Sweep 1: the forward, for the log-sum-exp and O. */
    const nsa_rows rows = {.m = m, .dk = (size_t)dkd, .dv = (size_t)dvd, .scale = cfg->scale,
                           .q = t.q};
    const nsa_keys keys = {.kp = kp,
                           .v = run->call.v + (size_t)((start * hkv + h) * dvd),
                           .ldv = (size_t)(hkv * dvd),
                           .count = len};
    const nsa_softmax_state state = {.max = t.max, .sum = t.sum, .acc = t.acc,
                                     .ldacc = (size_t)dvd};
    nsa_softmax_state_reset(&state, m, (size_t)dvd);
    nsa_attend_keys(uk, &rows, &keys, 0, last, t.row_first, t.row_last, &state, t.chunk, t.lo,
                    t.hi);
    for (size_t r = 0; r < m; r++) {
        float dot = 0.0f;
        for (int64_t c = 0; c < dvd; c++)
            dot += t.dout[r * (size_t)dvd + (size_t)c] * t.acc[r * (size_t)dvd + (size_t)c];
        t.lse[r] = t.max[r] + logf(t.sum[r]);
        t.delta[r] = dot / t.sum[r];
        t.coef[r] = cfg->scale;
        const int64_t row = row0 + (int64_t)r / g * hq + (int64_t)r % g;
        run->lse[row] = t.lse[r];
        run->delta[row] = t.delta[r];
    }

    /* Sweep 2: P exactly, dS, dq += dS K. */
    memset(t.dq, 0, m * (size_t)dkd * sizeof *t.dq);
    for (int64_t first = 0; first <= last; first += DENSE_SWEEP_KEYS) {
        const int64_t end = min64(first + DENSE_SWEEP_KEYS - 1, last);
        const int64_t np = (end - first) / NSA_PANEL + 1;
        int64_t used_hi = -1;
        for (size_t r = 0; r < m; r++) {
            const int64_t hi = min64(t.row_last[r], end);
            t.lo[r] = hi >= first ? 0 : 1;
            t.hi[r] = hi >= first ? (int32_t)(hi - first) : 0;
            used_hi = hi - first > used_hi ? hi - first : used_hi;
        }
        uk->qk(m, (size_t)np, (size_t)dkd, cfg->scale, t.q, (size_t)dkd,
               kp + (size_t)(first * dkd), t.s, DENSE_SWEEP_KEYS, NULL);
        uk->qk(m, (size_t)np, (size_t)dvd, 1.0f, t.dout, (size_t)dvd,
               vp + (size_t)(first * dvd), t.dp, DENSE_SWEEP_KEYS, NULL);
        uk->grad_prob(m, (size_t)(np * NSA_PANEL), t.lo, t.hi, t.lse, t.s, DENSE_SWEEP_KEYS,
                      NULL, 0, NULL);
        uk->grad_score(m, (size_t)(used_hi + 1), t.coef, t.delta, t.s, DENSE_SWEEP_KEYS, t.dp,
                       DENSE_SWEEP_KEYS);
        uk->pv(m, (size_t)(used_hi + 1), (size_t)dkd, t.dp, DENSE_SWEEP_KEYS,
               k + (size_t)first * ldk, ldk, t.dq, (size_t)dkd, NULL);
    }
    for (int64_t tq = 0; tq < it->count; tq++)
        memcpy(run->dq + (size_t)((row0 + tq * hq) * dkd), t.dq + tq * g * dkd,
               (size_t)(g * dkd) * sizeof *t.dq);
}

/* The key side of one block: every query that sees it, ascending. */
static void keys(const dense_run *run, const dense_item *it, float *scratch)
{
    const nsa_plan *plan = run->call.plan;
    const nsa_config *cfg = &plan->cfg;
    const int64_t b = it->seq, h = it->head, g = plan->group_size;
    const int64_t hq = cfg->num_q_heads, hkv = cfg->num_kv_heads;
    const int64_t dkd = cfg->head_dim_qk, dvd = cfg->head_dim_v;
    const int64_t start = run->call.batch->cu_seqlens[b];
    const int64_t len = run->call.batch->cu_seqlens[b + 1] - start;
    const int64_t first_key = it->first, nkeys = it->count, step = chunk_queries(plan);
    dense_scratch t;
    carve(run, scratch, &t);
    memset(t.kdk, 0, (size_t)(nkeys * dkd) * sizeof *t.kdk);
    memset(t.kdv, 0, (size_t)(nkeys * dvd) * sizeof *t.kdv);
    for (int64_t r = 0; r < step * g; r++)
        t.ones[r] = 1.0f;
    const float *kp = panels(run, run->kp, b, h, dkd) + first_key * dkd;
    const float *vp = panels(run, run->vp, b, h, dvd) + first_key * dvd;
    const int64_t np = nsa_panels_of(nkeys);
    for (int64_t q0 = cfg->causal ? first_key : 0; q0 < len; q0 += step) {
        const int64_t count = min64(step, len - q0), row0 = (start + q0) * hq + h * g;
        nsa_grad_rows rows = {.m = (size_t)(count * g), .q = t.q, .dout = t.dout,
                              .ldq = (size_t)dkd, .lddout = (size_t)dvd, .lse = t.lse,
                              .dot = t.delta, .gain = t.ones, .lo = t.lo, .hi = t.hi};
        if (hkv == 1) { /* a run of queries' rows is already contiguous */
            rows.q = run->call.q + (size_t)(row0 * dkd);
            rows.dout = run->dout + (size_t)(row0 * dvd);
            rows.lse = run->lse + row0;
            rows.dot = run->delta + row0;
        }
        for (int64_t tq = 0; tq < count; tq++) {
            const int64_t row = row0 + tq * hq;
            if (hkv != 1) {
                memcpy(t.q + tq * g * dkd, run->call.q + (size_t)(row * dkd),
                       (size_t)(g * dkd) * sizeof *t.q);
                memcpy(t.dout + tq * g * dvd, run->dout + (size_t)(row * dvd),
                       (size_t)(g * dvd) * sizeof *t.dout);
                memcpy(t.lse + tq * g, run->lse + row, (size_t)g * sizeof *t.lse);
                memcpy(t.delta + tq * g, run->delta + row, (size_t)g * sizeof *t.delta);
            }
            const int64_t hi = min64(cfg->causal ? q0 + tq - first_key : nkeys - 1, nkeys - 1);
            for (int64_t r = tq * g; r < (tq + 1) * g; r++) {
                t.lo[r] = hi >= 0 ? 0 : 1;
                t.hi[r] = hi >= 0 ? (int32_t)hi : 0;
            }
        }
        nsa_grad_keys_chunk(plan, &rows, kp, vp, np, 0, nkeys, t.kdk, t.kdv, t.chunk);
    }
    for (int64_t j = 0; j < nkeys; j++) {
        const int64_t row = (start + first_key + j) * hkv + h;
        memcpy(run->dk + (size_t)(row * dkd), t.kdk + j * dkd, (size_t)dkd * sizeof *t.kdk);
        memcpy(run->dv + (size_t)(row * dvd), t.kdv + j * dvd, (size_t)dvd * sizeof *t.kdv);
    }
}

static int64_t make_items(const dense_run *run, int kind, dense_item *items)
{
    const nsa_config *cfg = &run->call.plan->cfg;
    const int64_t *cu = run->call.batch->cu_seqlens;
    const int64_t step = kind == PACK ? 16 : kind == QUERIES ? run->tile_queries : DENSE_KEYS;
    int64_t n = 0;
    for (int64_t b = 0; b < run->call.batch->num_seqs; b++) {
        const int64_t len = cu[b + 1] - cu[b];
        const int64_t units = kind == PACK ? nsa_panels_of(len) : len;
        for (int64_t first = 0; first < units; first += step)
            for (int32_t h = 0; h < cfg->num_kv_heads; h++, n++) {
                if (items == NULL)
                    continue;
                const int64_t count = min64(step, units - first);
                /* the keys seen (queries side) or the queries seeing (key side) */
                const int64_t cost = kind == QUERIES ? (cfg->causal ? first + count : len)
                                                     : (cfg->causal ? len - first : len);
                items[n] = (dense_item){.seq = (int32_t)b, .head = h, .kind = kind,
                                        .first = first, .count = count, .cost = cost};
            }
    }
    return n;
}

static int compare_cost_descending(const void *a, const void *b)
{
    const dense_item *x = a, *y = b;
    if (x->cost != y->cost)
        return x->cost > y->cost ? -1 : 1;
    if (x->seq != y->seq)
        return x->seq < y->seq ? -1 : 1;
    if (x->first != y->first)
        return x->first < y->first ? -1 : 1;
    return (x->head > y->head) - (x->head < y->head);
}

static void worker(void *arg, int32_t index, int32_t num_workers)
{
    dense_run *run = arg;
    (void)num_workers;
    for (int64_t i; (i = nsa_work_queue_take(&run->queue)) >= 0;) {
        const dense_item *it = &run->items[i];
        if (it->kind == PACK)
            pack(run, it);
        else if (it->kind == QUERIES)
            queries(run, it, run->scratch[index]);
        else
            keys(run, it, run->scratch[index]);
    }
}

static void run_items(dense_run *run, int kind)
{
    const int64_t n = make_items(run, kind, run->items);
    if (kind != PACK)
        qsort(run->items, (size_t)n, sizeof *run->items, compare_cost_descending);
    nsa_work_queue_init(&run->queue, n);
    nsa_pool_run(run->call.plan->ctx->pool, worker, run);
}

/* -------------------------------------------------------------- driver -- */

static void run_free(dense_run *run, int32_t workers)
{
    nsa_worker_scratch_free(run->scratch, workers);
    free(run->items);
    free(run->kp);
    free(run->vp);
    free(run->lse);
    free(run->delta);
    free(run->p_offset);
}

static nsa_status run_alloc(dense_run *run, int32_t workers)
{
    const nsa_plan *plan = run->call.plan;
    const nsa_config *cfg = &plan->cfg;
    const int64_t B = run->call.batch->num_seqs, T = run->call.batch->total_tokens;
    const int64_t hkv = cfg->num_kv_heads;
    run->tile_queries = nsa_tile_queries(plan, 1);
    run->p_offset = malloc((size_t)(B + 1) * sizeof *run->p_offset);
    if (run->p_offset == NULL)
        return NSA_ERROR_OUT_OF_MEMORY;
    run->p_offset[0] = 0;
    const int64_t *cu = run->call.batch->cu_seqlens;
    for (int64_t b = 0; b < B; b++)
        run->p_offset[b + 1] = run->p_offset[b] + nsa_panels_of(cu[b + 1] - cu[b]);
    run->kp = nsa_alloc_floats(hkv * run->p_offset[B] * NSA_PANEL * cfg->head_dim_qk);
    run->vp = nsa_alloc_floats(hkv * run->p_offset[B] * NSA_PANEL * cfg->head_dim_v);
    run->lse = nsa_alloc_floats(T * cfg->num_q_heads);
    run->delta = nsa_alloc_floats(T * cfg->num_q_heads);
    int64_t items = 0;
    for (int kind = PACK; kind <= KEYS; kind++) {
        const int64_t n = make_items(run, kind, NULL);
        items = n > items ? n : items;
    }
    run->items = malloc((size_t)items * sizeof *run->items + 1);
    run->scratch = nsa_worker_scratch_alloc(workers, carve(run, NULL, NULL));
    if (run->kp == NULL || run->vp == NULL || run->lse == NULL || run->delta == NULL ||
        run->items == NULL || run->scratch == NULL)
        return NSA_ERROR_OUT_OF_MEMORY;
    return NSA_SUCCESS;
}

nsa_status nsa_dense_backward(const nsa_plan *plan, const nsa_batch *batch, const float *q,
                              const float *k, const float *v, const float *dout, float *dq,
                              float *dk, float *dv)
{
    if (plan == NULL)
        return NSA_ERROR_NULL_POINTER;
    dense_run run = {.call = {.plan = plan, .batch = batch, .q = q, .k = k, .v = v, .dense = 1},
                     .dout = dout, .dq = dq, .dk = dk, .dv = dv};
    /* The forward's checks want an output; ours are checked below by name. */
    float placeholder;
    run.call.out = &placeholder;
    nsa_status status = nsa_forward_check(&run.call);
    run.call.out = NULL;
    if (status != NSA_SUCCESS || batch->total_tokens == 0)
        return status;
    const struct {
        const char *name;
        const void *ptr;
    } tensors[] = {{"dout", dout}, {"dq", dq}, {"dk", dk}, {"dv", dv}};
    for (size_t i = 0; i < sizeof tensors / sizeof *tensors; i++)
        if (tensors[i].ptr == NULL)
            return nsa_fail(plan->ctx, NSA_ERROR_NULL_POINTER, "%s is NULL", tensors[i].name);

    nsa_context *ctx = plan->ctx;
    const int32_t workers = ctx->num_threads;
    status = run_alloc(&run, workers);
    if (status != NSA_SUCCESS) {
        run_free(&run, workers);
        return nsa_fail(ctx, status, "no memory for the workspace of %lld tokens",
                        (long long)batch->total_tokens);
    }
    run_items(&run, PACK);
    run_items(&run, QUERIES);
    run_items(&run, KEYS);
    run_free(&run, workers);
    return NSA_SUCCESS;
}
