/* SPDX-License-Identifier: MIT */
/*
 * quickstart.c — the smallest complete program that uses libnsa.
 *
 * This is the example the README shows and users copy from: it walks the
 * whole lifecycle once (context, configuration, plan, forward, cleanup) on a
 * batch of two sequences of different lengths, with the paper's default NSA
 * settings and mean compression, which needs no learned parameters. It also
 * runs under `make check`: it exits 0 when every call succeeds and the
 * output is finite, nonzero otherwise.
 *
 * Build, once libnsa is installed:
 *     cc -std=c11 quickstart.c $(pkg-config --cflags --libs nsa) -o quickstart
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "nsa.h"

/* The problem: 16 query heads sharing 2 KV heads (GQA), head dim 128 for
 * queries, keys and values, and a batch of two sequences of 200 and 500
 * tokens packed one after the other: sequence b is tokens
 * [CU_SEQLENS[b], CU_SEQLENS[b+1]) of every tensor. */
enum { Q_HEADS = 16, KV_HEADS = 2, HEAD_DIM = 128, TOKENS = 700 };
static const int64_t CU_SEQLENS[] = {0, 200, 700};

/* Checks the status of a libnsa call; on failure prints the status name and
 * the context's message naming the bad argument, then jumps to the cleanup
 * at the end of main. */
#define CHECK(call)                                                            \
    do {                                                                       \
        nsa_status status_ = (call);                                           \
        if (status_ != NSA_SUCCESS) {                                          \
            fprintf(stderr, "%s failed: %s: %s\n", #call,                      \
                    nsa_status_string(status_), nsa_context_last_error(ctx));  \
            goto cleanup;                                                      \
        }                                                                      \
    } while (0)

/* Deterministic pseudo-random values in [-1, 1), so every run prints the
 * same numbers. A real program passes its model's activations instead. */
static void fill_pseudo_random(float *values, size_t count, uint32_t *seed)
{
    for (size_t i = 0; i < count; i++) {
        *seed = *seed * 1664525u + 1013904223u; /* a 32-bit LCG */
        values[i] = (float)(*seed >> 8) / 8388608.0f - 1.0f;
    }
}

/* Prints a few output values and the blocks the last token selected. */
static void print_results(const float *out, const int32_t *selected,
                          int32_t sel_count)
{
    /* out[t][h][:] is the output of query head h at token t; the last token
     * is position 499 of the second sequence. */
    const size_t last = TOKENS - 1;
    const float *first_row = out;
    const float *last_row = out + (last * Q_HEADS + (Q_HEADS - 1)) * HEAD_DIM;
    printf("token 0,   head 0:  out[0..2] = %+.6f %+.6f %+.6f\n",
           first_row[0], first_row[1], first_row[2]);
    printf("token %zu, head %d: out[0..2] = %+.6f %+.6f %+.6f\n", last,
           Q_HEADS - 1, last_row[0], last_row[1], last_row[2]);

    /* selected[t][h][:] lists the selection blocks of l' = 64 tokens that
     * token t attended to with KV head h, ascending, padded with -1. The
     * last token has 8 candidate blocks (0..7), all of which fit in n = 16. */
    for (int kv_head = 0; kv_head < KV_HEADS; kv_head++) {
        const int32_t *blocks =
            selected + (last * KV_HEADS + (size_t)kv_head) * (size_t)sel_count;
        printf("token %zu, KV head %d: selected blocks", last, kv_head);
        for (int slot = 0; slot < sel_count && blocks[slot] >= 0; slot++) {
            printf(" %d", (int)blocks[slot]);
        }
        printf("\n");
    }
}

/* A sanity check, so that `make check` notices a broken build. */
static int all_finite(const float *values, size_t count)
{
    for (size_t i = 0; i < count; i++) {
        if (!isfinite(values[i])) {
            return 0;
        }
    }
    return 1;
}

int main(void)
{
    const nsa_batch batch = {
        .num_seqs = 2, .total_tokens = TOKENS, .cu_seqlens = CU_SEQLENS};
    /* Tensor sizes, token-major: q and out are [T][Hq][D], k and v are
     * [T][Hkv][D], gates are [T][Hq][3] (compressed, selected, window). */
    const size_t q_count = (size_t)TOKENS * Q_HEADS * HEAD_DIM;
    const size_t kv_count = (size_t)TOKENS * KV_HEADS * HEAD_DIM;
    const size_t gate_count = (size_t)TOKENS * Q_HEADS * 3;

    uint32_t seed = 2025; /* of the pseudo-random inputs */
    int exit_code = EXIT_FAILURE;
    nsa_context *ctx = NULL;
    nsa_plan *plan = NULL;
    nsa_config cfg;
    float *q = NULL, *k = NULL, *v = NULL, *gates = NULL, *out = NULL;
    int32_t *selected = NULL; /* [T][Hkv][n]: blocks each query attended */

    /* 1. A context: threads and hardware topology, made once per process.
     *    NULL options: one thread per core (or NSA_NUM_THREADS). */
    CHECK(nsa_context_create(NULL, &ctx));

    /* 2. A configuration: the paper's defaults (l=32, d=16, l'=64, n=16,
     *    w=512, scale 1/sqrt(D), causal, mean compression). Any field may be
     *    changed here, before the plan is made. */
    CHECK(nsa_config_init(&cfg, Q_HEADS, KV_HEADS, HEAD_DIM, HEAD_DIM));

    /* 3. A plan: validates the configuration once and picks the kernels.
     *    It is immutable and serves every forward call, from any thread. */
    CHECK(nsa_plan_create(ctx, &cfg, &plan));
    printf("libnsa %s, plan: %s\n", nsa_version(), nsa_plan_describe(plan));

    /* 4. The buffers. The caller owns them; libnsa keeps no pointer. */
    q = malloc(q_count * sizeof *q);
    k = malloc(kv_count * sizeof *k);
    v = malloc(kv_count * sizeof *v);
    gates = malloc(gate_count * sizeof *gates);
    out = malloc(q_count * sizeof *out); /* [T][Hq][Dv], and Dv = Dk here */
    selected = malloc((size_t)TOKENS * KV_HEADS * (size_t)cfg.sel_count *
                      sizeof *selected);
    if (!q || !k || !v || !gates || !out || !selected) {
        fprintf(stderr, "out of memory\n");
        goto cleanup;
    }

    fill_pseudo_random(q, q_count, &seed);
    fill_pseudo_random(k, kv_count, &seed);
    fill_pseudo_random(v, kv_count, &seed);
    /* In a model the gates come from a small gate network; here each of the
     * three branches simply gets 1/3. */
    for (size_t i = 0; i < gate_count; i++) {
        gates[i] = 1.0f / 3.0f;
    }

    /* 5. The forward pass. Mean compression has no parameters, so cmp_k and
     *    cmp_v are NULL. block_indices_out is optional (NULL skips it). */
    CHECK(nsa_forward(plan, &batch, q, k, v, gates, NULL, NULL, out,
                      selected));

    /* 6. The results. */
    print_results(out, selected, cfg.sel_count);
    if (!all_finite(out, q_count)) {
        fprintf(stderr, "the output is not finite\n");
        goto cleanup;
    }
    exit_code = EXIT_SUCCESS;

cleanup:
    /* 7. Free the buffers, then the plan, then the context (destroying
     *    NULL is a no-op, so this works from any point of failure). */
    free(selected);
    free(out);
    free(gates);
    free(v);
    free(k);
    free(q);
    nsa_plan_destroy(plan);
    nsa_context_destroy(ctx);
    return exit_code;
}
