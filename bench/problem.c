/* SPDX-License-Identifier: MIT */
/*
 * problem.c — the inputs every method of one size runs on, and the FLOP
 * counts their throughput is measured against. The inputs are drawn once
 * per size from a seeded generator, so every method sees the same tensors
 * and runs are reproducible. FLOPs are "useful": only the keys each query
 * attends are counted (2 (Dk + Dv) per query head and key), the way
 * nsa-demo counts, so NSA and dense numbers are comparable work rates.
 */
#include <stdio.h>
#include <stdlib.h>

#include "bench.h"

int bench_open_library(const bench_options *opt, nsa_config *cfg, nsa_context **ctx,
                       nsa_plan **plan)
{
    nsa_context_options co;
    nsa_context_options_init(&co);
    co.num_threads = opt->threads;
    co.max_isa = opt->max_isa;
    nsa_status st = nsa_context_create(&co, ctx);
    if (st != NSA_SUCCESS) {
        fprintf(stderr, "nsa-bench: nsa_context_create: %s\n", nsa_status_string(st));
        return 1;
    }
    nsa_config_init(cfg, opt->q_heads, opt->kv_heads, opt->dim_qk, opt->dim_v);
    st = nsa_plan_create(*ctx, cfg, plan);
    if (st != NSA_SUCCESS) {
        fprintf(stderr, "nsa-bench: nsa_plan_create: %s: %s\n", nsa_status_string(st),
                nsa_context_last_error(*ctx));
        nsa_context_destroy(*ctx);
        *ctx = NULL;
        return 1;
    }
    return 0;
}

/* xorshift64*, as nsa-demo: reproducible inputs without libc's rand. */
static float next_uniform(uint64_t *state, float lo, float hi)
{
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    double u = (double)((*state * 2685821657736338717ull) >> 11) * 0x1.0p-53;
    return (float)(lo + (hi - lo) * u);
}

static float *random_tensor(uint64_t *state, size_t count, float lo, float hi)
{
    float *x = malloc(count * sizeof *x);
    for (size_t i = 0; x != NULL && i < count; i++)
        x[i] = next_uniform(state, lo, hi);
    return x;
}

int bench_problem_init(bench_problem *p, const nsa_config *cfg, int64_t seqlen, uint64_t seed)
{
    *p = (bench_problem){.cfg = *cfg, .seqlen = seqlen};
    p->cu_seqlens[0] = 0;
    p->cu_seqlens[1] = seqlen;
    /* The batch points into p: callers keep p where it is. */
    p->batch = (nsa_batch){.num_seqs = 1, .total_tokens = seqlen, .cu_seqlens = p->cu_seqlens};
    const size_t t = (size_t)seqlen, hq = (size_t)cfg->num_q_heads;
    const size_t hkv = (size_t)cfg->num_kv_heads;
    uint64_t state = seed * 0x9E3779B97F4A7C15ull + 1;
    if (state == 0)
        state = 1;
    p->q = random_tensor(&state, t * hq * (size_t)cfg->head_dim_qk, -1.0f, 1.0f);
    p->k = random_tensor(&state, t * hkv * (size_t)cfg->head_dim_qk, -1.0f, 1.0f);
    p->v = random_tensor(&state, t * hkv * (size_t)cfg->head_dim_v, -1.0f, 1.0f);
    p->gates = random_tensor(&state, t * hq * 3, 0.0f, 1.0f);
    if (p->q == NULL || p->k == NULL || p->v == NULL || p->gates == NULL) {
        bench_problem_free(p);
        return -1;
    }
    return 0;
}

void bench_problem_free(bench_problem *p)
{
    free(p->q);
    free(p->k);
    free(p->v);
    free(p->gates);
    p->q = p->k = p->v = p->gates = NULL;
}

double bench_nsa_flops(const nsa_config *c, int64_t len)
{
    /* nsa-demo's count: every selected block is full except the query's
     * own (forced); selection and compression are a rounding error. */
    double keys = 0.0;
    for (int64_t t = 0; t < len; t++) {
        int64_t nc = t + 1 >= c->cmp_block ? (t + 1 - c->cmp_block) / c->cmp_stride + 1 : 0;
        int64_t blocks = t / c->sel_block + 1;
        int64_t chosen = blocks < c->sel_count ? blocks : c->sel_count;
        int64_t slc = (chosen - 1) * c->sel_block + (t % c->sel_block + 1);
        int64_t swa = t + 1 < c->window ? t + 1 : c->window;
        keys += (double)(nc + slc + swa);
    }
    return 2.0 * (c->head_dim_qk + c->head_dim_v) * (double)c->num_q_heads * keys;
}

double bench_dense_flops(const nsa_config *c, int64_t len)
{
    const double keys = 0.5 * (double)len * (double)(len + 1); /* query t sees t + 1 keys */
    return 2.0 * (c->head_dim_qk + c->head_dim_v) * (double)c->num_q_heads * keys;
}
