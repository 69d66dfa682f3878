/* SPDX-License-Identifier: MIT */
/*
 * decode-mode.c — `nsa-bench decode`: one decode step (the newest token's
 * query against a KV cache of N tokens) with nsa_decode, against a dense
 * decode over the same cache built from the same kernels: the cache's keys
 * cut into one run per thread, each attended with nsa_attend_keys on the
 * library's own thread pool, the partial softmax states merged by their
 * log-sum-exp (flash-decoding). For
 * fp32 and bf16 caches (--dtype to pick one), at --seqlen N or, with
 * --sweep, N = 4K .. 128K.
 *
 * Decode reads far more bytes than it computes, so what it reports is
 * bytes: the unique bytes of keys and values a step reads per KV head (NSA:
 * the compressed tokens, the selected blocks and the window, overlaps
 * counted once, from the blocks the step actually chose; dense: every
 * token), the rate in GB/s, and that rate against the machine's measured
 * read bandwidth.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"
#include "cache.h"
#include "context.h"
#include "geometry.h"

typedef struct decode_bench {
    const bench_options *opt;
    nsa_context *ctx;
    nsa_plan *plan;
    nsa_cache *cache;
    int threads;
    float *q, *gates, *out, *dense_out;
    int32_t *indices;
    /* dense: one key run per thread, its partial state, merged afterwards */
    float *pmax, *psum, *pacc, *s, *qbuf;
    int32_t *lo, *hi;
    int64_t *row_first, *row_last;
    nsa_work_queue parts;
    nsa_status last;
} decode_bench;

static int body_nsa(void *arg)
{
    decode_bench *d = arg;
    const nsa_cache *caches[1] = {d->cache};
    const int64_t cu[2] = {0, 1};
    d->last = nsa_decode(d->plan, 1, caches, cu, d->q, d->gates, d->out, d->indices);
    return d->last == NSA_SUCCESS ? 0 : -1;
}

/* Part `index` of `count`: keys [N index / count, N (index + 1) / count)
 * of every KV head, into its own partial state. */
static void dense_part(void *arg, int index, int count)
{
    decode_bench *d = arg;
    const nsa_config *cfg = &d->plan->cfg;
    const int64_t len = nsa_cache_length(d->cache), g = d->plan->group_size;
    const size_t dk = (size_t)cfg->head_dim_qk, dv = (size_t)cfg->head_dim_v;
    const int64_t first = len * index / count, last = len * (index + 1) / count - 1;
    const size_t rows = (size_t)cfg->num_q_heads;
    float *s = d->s + (size_t)index * (size_t)g * NSA_ATTEND_CHUNK;
    int32_t *lo = d->lo + (size_t)index * (size_t)g, *hi = d->hi + (size_t)index * (size_t)g;
    int64_t *rf = d->row_first + (size_t)index * (size_t)g;
    int64_t *rl = d->row_last + (size_t)index * (size_t)g;
    for (int64_t h = 0; h < cfg->num_kv_heads; h++) {
        const size_t row0 = (size_t)index * rows + (size_t)(h * g);
        const nsa_softmax_state state = {.max = d->pmax + row0, .sum = d->psum + row0,
                                         .acc = d->pacc + row0 * dv, .ldacc = dv};
        nsa_softmax_state_reset(&state, (size_t)g, dv);
        if (first > last)
            continue;
        for (int64_t r = 0; r < g; r++) {
            rf[r] = first;
            rl[r] = last;
        }
        const nsa_keys keys = nsa_cache_keys(d->cache, h, 0);
        const nsa_rows q = {.m = (size_t)g, .dk = dk, .dv = dv, .scale = cfg->scale,
                            .q = d->q + (size_t)(h * g) * dk};
        nsa_attend_keys(&d->plan->kernels, &q, &keys, first, last, rf, rl, &state, s, lo, hi);
    }
}

/* On the library's own pool (the same threads, binding and polling as
 * nsa_decode): workers take the parts from a queue. */
static void dense_worker(void *arg, int32_t worker, int32_t num_workers)
{
    decode_bench *d = arg;
    (void)worker;
    (void)num_workers;
    for (int64_t part; (part = nsa_work_queue_take(&d->parts)) >= 0;)
        dense_part(d, (int)part, d->threads);
}

static int body_dense(void *arg)
{
    decode_bench *d = arg;
    const nsa_config *cfg = &d->plan->cfg;
    const size_t rows = (size_t)cfg->num_q_heads, dv = (size_t)cfg->head_dim_v;
    nsa_work_queue_init(&d->parts, d->threads);
    nsa_pool_run_eager(d->ctx->pool, dense_worker, d);
    for (size_t r = 0; r < rows; r++) { /* log-sum-exp merge of the threads' parts */
        float top = -INFINITY, sum = 0.0f;
        for (int t = 0; t < d->threads; t++)
            top = fmaxf(top, d->pmax[(size_t)t * rows + r]);
        float *out = d->dense_out + r * dv;
        memset(out, 0, dv * sizeof *out);
        for (int t = 0; t < d->threads; t++) {
            const size_t tr = (size_t)t * rows + r;
            if (d->psum[tr] == 0.0f)
                continue;
            const float f = expf(d->pmax[tr] - top);
            sum += f * d->psum[tr];
            for (size_t e = 0; e < dv; e++)
                out[e] += f * d->pacc[tr * dv + e];
        }
        for (size_t e = 0; e < dv; e++)
            out[e] /= sum;
    }
    return 0;
}

/* Unique keys one KV head's step reads: compressed + selected blocks +
 * window, each raw key once. */
static void unique_keys(const decode_bench *d, int64_t h, int64_t *compressed, int64_t *raw)
{
    const nsa_config *cfg = &d->plan->cfg;
    const int64_t len = nsa_cache_length(d->cache), t = len - 1;
    *compressed = nsa_visible_compressed(cfg, t, len);
    int64_t first, last;
    nsa_window_range(cfg, t, len, &first, &last);
    int64_t keys = last - first + 1;
    const int32_t *blocks = d->indices + (size_t)(h * cfg->sel_count);
    for (int32_t i = 0; i < cfg->sel_count && blocks[i] >= 0; i++) {
        const int64_t a = (int64_t)blocks[i] * cfg->sel_block;
        int64_t b = a + cfg->sel_block - 1;
        b = b < t ? b : t;
        for (int64_t k = a; k <= b; k++) /* keys inside the window are counted already */
            keys += k < first || k > last;
    }
    *raw = keys;
}

static void run_size(decode_bench *d, nsa_dtype dtype, int64_t len, double bandwidth)
{
    const bench_options *opt = d->opt;
    const nsa_config *cfg = &d->plan->cfg;
    const size_t elem = dtype == NSA_DTYPE_BF16 ? 2 : 4;
    const int64_t hkv = cfg->num_kv_heads, row = (int64_t)(cfg->head_dim_qk + cfg->head_dim_v);
    bench_problem p;
    if (bench_problem_init(&p, cfg, len, opt->seed) != 0 ||
        nsa_cache_create(d->plan, len, dtype, &d->cache) != NSA_SUCCESS ||
        nsa_cache_append(d->cache, len, p.k, p.v, NULL, NULL) != NSA_SUCCESS) {
        fprintf(stderr, "nsa-bench: decode: cannot set up N=%lld: %s\n", (long long)len,
                nsa_context_last_error(d->ctx));
        exit(1);
    }
    memcpy(d->q, p.q + (size_t)((len - 1) * cfg->num_q_heads * cfg->head_dim_qk),
           (size_t)(cfg->num_q_heads * cfg->head_dim_qk) * sizeof(float));
    memcpy(d->gates, p.gates + (size_t)((len - 1) * cfg->num_q_heads * 3),
           (size_t)(cfg->num_q_heads * 3) * sizeof(float));
    bench_timing nsa, dense;
    if (bench_time(body_nsa, d, opt->repeats, &nsa) != 0 ||
        bench_time(body_dense, d, opt->repeats, &dense) != 0) {
        fprintf(stderr, "nsa-bench: decode failed: %s\n", nsa_context_last_error(d->ctx));
        exit(1);
    }
    double nsa_bytes = 0.0;
    for (int64_t h = 0; h < hkv; h++) {
        int64_t compressed, raw;
        unique_keys(d, h, &compressed, &raw);
        nsa_bytes += (double)((compressed + raw) * row) * (double)elem;
    }
    const double dense_bytes = (double)(len * hkv * row) * (double)elem;
    const double t_nsa = bench_timing_pick(&nsa, opt->median);
    const double t_dense = bench_timing_pick(&dense, opt->median);
    const char *name = dtype == NSA_DTYPE_BF16 ? "bf16" : "f32";
    if (opt->json) {
        printf("{\"mode\":\"decode\",\"context\":%lld,\"dtype\":\"%s\",\"nsa_us\":%.2f,"
               "\"dense_us\":%.2f,\"speedup\":%.3f,\"nsa_bytes\":%.0f,\"dense_bytes\":%.0f,"
               "\"byte_ratio\":%.3f,\"nsa_gbs\":%.2f,\"dense_gbs\":%.2f,\"bandwidth_gbs\":%.2f,"
               "\"pct_bandwidth\":%.2f,\"threads\":%d,\"isa\":\"%s\",\"q_heads\":%d,"
               "\"kv_heads\":%d,\"dim_qk\":%d,\"dim_v\":%d,\"stat\":\"%s\",\"repeats\":%d}\n",
               (long long)len, name, t_nsa * 1e6, t_dense * 1e6, t_dense / t_nsa, nsa_bytes,
               dense_bytes, dense_bytes / nsa_bytes, nsa_bytes / t_nsa * 1e-9,
               dense_bytes / t_dense * 1e-9, bandwidth,
               bandwidth > 0 ? 100.0 * nsa_bytes / t_nsa * 1e-9 / bandwidth : 0.0, d->threads,
               nsa_isa_name(nsa_context_isa(d->ctx)), (int)cfg->num_q_heads,
               (int)cfg->num_kv_heads, (int)cfg->head_dim_qk, (int)cfg->head_dim_v,
               opt->median ? "median" : "best", (int)opt->repeats);
        fflush(stdout);
    }
    fprintf(stderr, "%8lld  %-5s  %9.1f  %9.1f  %7.2fx  %8.2f  %8.2f  %7.2fx  %7.1f  %7.1f  %5.1f%%\n",
            (long long)len, name, t_nsa * 1e6, t_dense * 1e6, t_dense / t_nsa, nsa_bytes / 1e6,
            dense_bytes / 1e6, dense_bytes / nsa_bytes, nsa_bytes / t_nsa * 1e-9,
            dense_bytes / t_dense * 1e-9,
            bandwidth > 0 ? 100.0 * nsa_bytes / t_nsa * 1e-9 / bandwidth : 0.0);
    nsa_cache_destroy(d->cache);
    d->cache = NULL;
    bench_problem_free(&p);
}

int bench_decode_mode(const bench_options *opt)
{
    decode_bench d = {.opt = opt};
    nsa_config cfg;
    if (bench_open_library(opt, &cfg, &d.ctx, &d.plan) != 0)
        return 1;
    d.threads = nsa_context_num_threads(d.ctx);
    const size_t rows = (size_t)cfg.num_q_heads, dk = (size_t)cfg.head_dim_qk;
    const size_t dv = (size_t)cfg.head_dim_v, t = (size_t)d.threads, g = (size_t)(cfg.num_q_heads / cfg.num_kv_heads);
    d.q = calloc(rows * dk, sizeof(float));
    d.gates = calloc(rows * 3, sizeof(float));
    d.out = calloc(rows * dv, sizeof(float));
    d.dense_out = calloc(rows * dv, sizeof(float));
    d.indices = calloc((size_t)(cfg.num_kv_heads * cfg.sel_count), sizeof(int32_t));
    d.pmax = calloc(t * rows, sizeof(float));
    d.psum = calloc(t * rows, sizeof(float));
    d.pacc = calloc(t * rows * dv, sizeof(float));
    d.s = calloc(t * g * NSA_ATTEND_CHUNK, sizeof(float));
    d.lo = calloc(t * g, sizeof(int32_t));
    d.hi = calloc(t * g, sizeof(int32_t));
    d.row_first = calloc(t * g, sizeof(int64_t));
    d.row_last = calloc(t * g, sizeof(int64_t));

    double bandwidth = 0.0;
    if (!opt->no_machine) {
        bench_machine machine;
        bench_measure_machine(opt, d.threads, &machine);
        bandwidth = machine.bandwidth_gbs;
    }
    fprintf(stderr, "nsa-bench decode, libnsa %s: one step, Hq=%d Hkv=%d Dk=%d Dv=%d, %d threads, "
                    "isa=%s, read bandwidth %.1f GB/s, %s of %d runs\n",
            nsa_version(), (int)cfg.num_q_heads, (int)cfg.num_kv_heads, (int)cfg.head_dim_qk,
            (int)cfg.head_dim_v, d.threads, nsa_isa_name(nsa_context_isa(d.ctx)), bandwidth,
            opt->median ? "median" : "best", (int)opt->repeats);
    fprintf(stderr, "%8s  %-5s  %9s  %9s  %8s  %8s  %8s  %8s  %7s  %7s  %6s\n", "context", "dtype",
            "nsa_us", "dense_us", "speedup", "nsa_MB", "dense_MB", "bytes", "nsa_GB/s",
            "dns_GB/s", "%bw");
    const int both = opt->dtype < 0;
    for (int64_t len = opt->sweep ? 4096 : opt->seqlen; len <= (opt->sweep ? opt->sweep_max : opt->seqlen);
         len *= 2) {
        if (both || opt->dtype == NSA_DTYPE_F32)
            run_size(&d, NSA_DTYPE_F32, len, bandwidth);
        if (both || opt->dtype == NSA_DTYPE_BF16)
            run_size(&d, NSA_DTYPE_BF16, len, bandwidth);
    }
    nsa_plan_destroy(d.plan);
    nsa_context_destroy(d.ctx);
    free(d.q);
    free(d.gates);
    free(d.out);
    free(d.dense_out);
    free(d.indices);
    free(d.pmax);
    free(d.psum);
    free(d.pacc);
    free(d.s);
    free(d.lo);
    free(d.hi);
    free(d.row_first);
    free(d.row_last);
    return 0;
}
