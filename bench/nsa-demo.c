/* SPDX-License-Identifier: MIT */
/*
 * nsa-demo.c — the main job of the README's first command: runs the NSA
 * forward at a default size with the paper's settings, prints time and
 * throughput, and checks a sample of queries against the double-precision
 * oracle of the tests (tests/oracle.c, written from the spec independently of
 * the library). Exits non-zero if any sampled output is off.
 *
 *   nsa-demo [--seqlen N] [--q-heads H] [--kv-heads H] [--dim-qk D]
 *            [--dim-v D] [--samples S] [--repeats R] [--seed X]
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "nsa.h"
#include "oracle.h"

typedef struct demo_options {
    int64_t seqlen;
    int32_t q_heads, kv_heads, dim_qk, dim_v;
    int32_t samples, repeats;
    uint64_t seed;
} demo_options;

static void usage(void)
{
    fprintf(stderr, "usage: nsa-demo [--seqlen N] [--q-heads H] [--kv-heads H] [--dim-qk D] "
                    "[--dim-v D] [--samples S] [--repeats R] [--seed X]\n");
}

static int parse_options(int argc, char **argv, demo_options *opt)
{
    *opt = (demo_options){.seqlen = 4096, .q_heads = 16, .kv_heads = 1, .dim_qk = 128,
                          .dim_v = 128, .samples = 32, .repeats = 3, .seed = 1};
    for (int i = 1; i < argc; i++) {
        const char *name = argv[i];
        if (i + 1 >= argc) {
            usage();
            return -1;
        }
        long long value = strtoll(argv[++i], NULL, 10);
        if (strcmp(name, "--seqlen") == 0) opt->seqlen = value;
        else if (strcmp(name, "--q-heads") == 0) opt->q_heads = (int32_t)value;
        else if (strcmp(name, "--kv-heads") == 0) opt->kv_heads = (int32_t)value;
        else if (strcmp(name, "--dim-qk") == 0) opt->dim_qk = (int32_t)value;
        else if (strcmp(name, "--dim-v") == 0) opt->dim_v = (int32_t)value;
        else if (strcmp(name, "--samples") == 0) opt->samples = (int32_t)value;
        else if (strcmp(name, "--repeats") == 0) opt->repeats = (int32_t)value;
        else if (strcmp(name, "--seed") == 0) opt->seed = (uint64_t)value;
        else {
            usage();
            return -1;
        }
    }
    if (opt->seqlen < 1 || opt->samples < 0 || opt->repeats < 1) {
        usage();
        return -1;
    }
    return 0;
}

/* xorshift64*: reproducible inputs without libc's rand. */
static double next_uniform(uint64_t *state)
{
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    return (double)((*state * 2685821657736338717ull) >> 11) * 0x1.0p-53;
}

static float *random_tensor(uint64_t *state, size_t count, double lo, double hi)
{
    float *x = malloc(count * sizeof *x);
    for (size_t i = 0; x != NULL && i < count; i++)
        x[i] = (float)(lo + (hi - lo) * next_uniform(state));
    return x;
}

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Useful FLOPs of one causal sequence: 2 (Dk + Dv) per (query head, key
 * attended), summed over the three branches; keys masked away are not
 * counted. Selection and compression are a rounding error next to this. */
static double useful_flops(const nsa_config *c, int64_t len)
{
    double keys = 0.0;
    for (int64_t t = 0; t < len; t++) {
        int64_t nc = t + 1 >= c->cmp_block ? (t + 1 - c->cmp_block) / c->cmp_stride + 1 : 0;
        int64_t blocks = t / c->sel_block + 1;
        int64_t chosen = blocks < c->sel_count ? blocks : c->sel_count;
        /* Every selected block is full except the query's own (forced). */
        int64_t slc = (chosen - 1) * c->sel_block + (t % c->sel_block + 1);
        int64_t swa = t + 1 < c->window ? t + 1 : c->window;
        keys += (double)(nc + slc + swa);
    }
    return 2.0 * (c->head_dim_qk + c->head_dim_v) * (double)c->num_q_heads * keys;
}

#define CHECK(call)                                                                  \
    do {                                                                             \
        nsa_status status_ = (call);                                                 \
        if (status_ != NSA_SUCCESS) {                                                \
            fprintf(stderr, "nsa-demo: %s failed: %s: %s\n", #call,                  \
                    nsa_status_string(status_), nsa_context_last_error(ctx));        \
            return 1;                                                                \
        }                                                                            \
    } while (0)

/* Compares the library's output for `samples` tokens with the oracle, using
 * the blocks the library selected where the oracle calls the choice a
 * float near-tie. Returns the largest absolute error. */
static double check_samples(const oracle_problem *problem, const float *out,
                            const int32_t *indices, const demo_options *opt, int *near_ties)
{
    const nsa_config *c = &problem->cfg;
    const size_t per_token = (size_t)c->num_q_heads * (size_t)c->head_dim_v;
    const size_t n = (size_t)c->sel_count, hkv = (size_t)c->num_kv_heads;
    double *want = malloc(per_token * sizeof *want);
    int32_t *chosen = malloc(hkv * n * sizeof *chosen);
    double *margin = malloc(hkv * sizeof *margin);
    oracle_state *state = oracle_prepare(problem);
    double worst = 0.0;
    uint64_t rng = opt->seed * 7919 + 17;
    *near_ties = 0;
    if (want == NULL || chosen == NULL || margin == NULL || state == NULL) {
        worst = INFINITY;
        goto done;
    }
    for (int32_t s = 0; s < opt->samples; s++) {
        int64_t token = s == 0 ? opt->seqlen - 1 : (int64_t)(next_uniform(&rng) * (double)opt->seqlen);
        const int32_t *got_blocks = indices + (size_t)token * hkv * n;
        oracle_token(state, token, NULL, want, NULL, NULL, NULL, chosen, margin);
        if (memcmp(chosen, got_blocks, hkv * n * sizeof *chosen) != 0) {
            /* A different selection is only acceptable as a near-tie. */
            for (size_t h = 0; h < hkv; h++)
                if (memcmp(chosen + h * n, got_blocks + h * n, n * sizeof *chosen) != 0 &&
                    margin[h] >= 1e-5)
                    worst = INFINITY;
            ++*near_ties;
            oracle_token(state, token, got_blocks, want, NULL, NULL, NULL, NULL, NULL);
        }
        for (size_t e = 0; e < per_token; e++) {
            double err = fabs((double)out[(size_t)token * per_token + e] - want[e]);
            if (!(err <= worst))
                worst = err;
        }
    }
done:
    oracle_free(state);
    free(want);
    free(chosen);
    free(margin);
    return worst;
}

int main(int argc, char **argv)
{
    demo_options opt;
    nsa_context *ctx = NULL;
    if (parse_options(argc, argv, &opt) != 0)
        return 2;
    CHECK(nsa_context_create(NULL, &ctx));
    nsa_config cfg;
    CHECK(nsa_config_init(&cfg, opt.q_heads, opt.kv_heads, opt.dim_qk, opt.dim_v));
    nsa_plan *plan;
    CHECK(nsa_plan_create(ctx, &cfg, &plan));

    const size_t T = (size_t)opt.seqlen;
    uint64_t state = opt.seed | 1;
    float *q = random_tensor(&state, T * (size_t)cfg.num_q_heads * (size_t)cfg.head_dim_qk, -1, 1);
    float *k = random_tensor(&state, T * (size_t)cfg.num_kv_heads * (size_t)cfg.head_dim_qk, -1, 1);
    float *v = random_tensor(&state, T * (size_t)cfg.num_kv_heads * (size_t)cfg.head_dim_v, -1, 1);
    float *gates = random_tensor(&state, T * (size_t)cfg.num_q_heads * 3, 0, 1);
    float *out = malloc(T * (size_t)cfg.num_q_heads * (size_t)cfg.head_dim_v * sizeof *out);
    int32_t *indices = malloc(T * (size_t)cfg.num_kv_heads * (size_t)cfg.sel_count * sizeof *indices);
    if (!q || !k || !v || !gates || !out || !indices) {
        fprintf(stderr, "nsa-demo: out of memory\n");
        return 1;
    }
    int64_t cu_seqlens[2] = {0, opt.seqlen};
    nsa_batch batch = {.num_seqs = 1, .total_tokens = opt.seqlen, .cu_seqlens = cu_seqlens};

    printf("libnsa %s demo: one causal sequence of %lld tokens, Hq=%d Hkv=%d Dk=%d Dv=%d, "
           "l=%d d=%d l'=%d n=%d w=%d, mean compression\n",
           nsa_version(), (long long)opt.seqlen, (int)cfg.num_q_heads, (int)cfg.num_kv_heads,
           (int)cfg.head_dim_qk, (int)cfg.head_dim_v, (int)cfg.cmp_block, (int)cfg.cmp_stride,
           (int)cfg.sel_block, (int)cfg.sel_count, (int)cfg.window);
    printf("plan: %s\n", nsa_plan_describe(plan));

    double best = INFINITY;
    for (int32_t r = 0; r < opt.repeats; r++) {
        double start = now_seconds();
        CHECK(nsa_forward(plan, &batch, q, k, v, gates, NULL, NULL, out, indices));
        double elapsed = now_seconds() - start;
        best = elapsed < best ? elapsed : best;
    }
    double flops = useful_flops(&cfg, opt.seqlen);
    printf("forward: %.2f ms (best of %d), %.2f useful GFLOP/s, %.0f tokens/s\n", best * 1e3,
           (int)opt.repeats, flops / best * 1e-9, (double)opt.seqlen / best);

    oracle_problem problem = {.cfg = cfg, .num_seqs = 1, .total_tokens = opt.seqlen,
                              .cu_seqlens = cu_seqlens, .q = q, .k = k, .v = v, .gates = gates};
    int near_ties = 0;
    double worst = check_samples(&problem, out, indices, &opt, &near_ties);
    const double tolerance = 1e-4;
    printf("check: %d sampled tokens (all heads) against the double-precision oracle: "
           "max |error| = %.3g (tolerance %.0e, %d near-tie selections) -> %s\n",
           (int)opt.samples, worst, tolerance, near_ties, worst <= tolerance ? "OK" : "FAILED");

    free(q);
    free(k);
    free(v);
    free(gates);
    free(out);
    free(indices);
    nsa_plan_destroy(plan);
    nsa_context_destroy(ctx);
    return worst <= tolerance ? 0 : 1;
}
