/* SPDX-License-Identifier: MIT */
/*
 * decode.c — how a serving loop uses libnsa's KV cache: prefill a prompt in
 * one append, then generate token by token, each step appending the new
 * token's keys and values and attending with its query; every tenth step
 * first tries a speculative draft of three tokens, which the (stand-in)
 * verification rejects and nsa_cache_truncate takes back out. A real model
 * would compute q, k and v from its hidden state; here a small
 * deterministic generator stands in for it. At the end the example checks
 * that the last step's output equals what nsa_forward gives over the whole
 * sequence: the rejected drafts left no trace.
 *
 * Build: cc -std=c11 decode.c $(pkg-config --cflags --libs nsa) -lm
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include <nsa.h>

#define CHECK(call)                                                                     \
    do {                                                                                \
        nsa_status status_ = (call);                                                    \
        if (status_ != NSA_SUCCESS) {                                                   \
            fprintf(stderr, "%s failed: %s: %s\n", #call, nsa_status_string(status_),   \
                    nsa_context_last_error(ctx));                                       \
            exit(1);                                                                    \
        }                                                                               \
    } while (0)

/* Stand-in for the model: values in [-1, 1) from a linear congruential
 * generator, so every run sees the same numbers. */
static void fill(float *x, size_t n, unsigned *state)
{
    for (size_t i = 0; i < n; i++) {
        *state = *state * 1664525u + 1013904223u;
        x[i] = (float)(*state >> 8) / 8388608.0f - 1.0f;
    }
}

int main(void)
{
    enum { HQ = 8, HKV = 2, D = 64, PROMPT = 700, GENERATED = 40, TOTAL = PROMPT + GENERATED };
    nsa_context *ctx = NULL;
    CHECK(nsa_context_create(NULL, &ctx));
    nsa_config cfg;
    CHECK(nsa_config_init(&cfg, HQ, HKV, D, D)); /* paper defaults: l=32, d=16, l'=64, n=16 */
    cfg.window = 256;
    nsa_plan *plan;
    CHECK(nsa_plan_create(ctx, &cfg, &plan));

    /* The whole sequence's tensors, as the model would produce them. */
    unsigned seed = 42;
    float *q = malloc(sizeof(float) * TOTAL * HQ * D), *k = malloc(sizeof(float) * TOTAL * HKV * D);
    float *v = malloc(sizeof(float) * TOTAL * HKV * D), *gates = malloc(sizeof(float) * TOTAL * HQ * 3);
    float *out = malloc(sizeof(float) * HQ * D), *full = malloc(sizeof(float) * TOTAL * HQ * D);
    if (!q || !k || !v || !gates || !out || !full)
        return 1;
    fill(q, (size_t)TOTAL * HQ * D, &seed);
    fill(k, (size_t)TOTAL * HKV * D, &seed);
    fill(v, (size_t)TOTAL * HKV * D, &seed);
    for (size_t i = 0; i < (size_t)TOTAL * HQ * 3; i++)
        gates[i] = 0.5f;

    /* A cache with room for the whole conversation, stored as bf16 would
     * halve the bytes each step reads; fp32 here for the exact check. */
    enum { DRAFT = 3 };
    nsa_cache *cache;
    CHECK(nsa_cache_create(plan, TOTAL + DRAFT, NSA_DTYPE_F32, &cache));
    float *draft = malloc(sizeof(float) * DRAFT * HQ * D), *draft_out = malloc(sizeof(float) * DRAFT * HQ * D);
    if (!draft || !draft_out)
        return 1;
    CHECK(nsa_cache_append(cache, PROMPT, k, v, NULL, NULL)); /* mean phi: no parameters */

    /* Generation: one new token per step; its query is the cache's newest
     * token. One sequence, so cu_queries = {0, 1}. */
    const nsa_cache *caches[1] = {cache};
    const int64_t cu_queries[2] = {0, 1};
    for (int64_t t = PROMPT; t < TOTAL; t++) {
        if (t % 10 == 0) { /* a draft model's guesses, decoded as one chunk, rejected */
            const int64_t cu_draft[2] = {0, DRAFT};
            fill(draft, (size_t)DRAFT * HKV * D, &seed);
            CHECK(nsa_cache_append(cache, DRAFT, draft, draft, NULL, NULL));
            fill(draft, (size_t)DRAFT * HQ * D, &seed);
            CHECK(nsa_decode(plan, 1, caches, cu_draft, draft, gates, draft_out, NULL));
            CHECK(nsa_cache_truncate(cache, t));
        }
        CHECK(nsa_cache_append(cache, 1, k + t * HKV * D, v + t * HKV * D, NULL, NULL));
        CHECK(nsa_decode(plan, 1, caches, cu_queries, q + t * HQ * D, gates + t * HQ * 3, out,
                         NULL));
    }
    printf("generated %d tokens after a %d-token prompt; cache holds %lld\n", GENERATED, PROMPT,
           (long long)nsa_cache_length(cache));

    /* The last step must match the forward pass over the whole sequence. */
    int64_t cu_seqlens[2] = {0, TOTAL};
    nsa_batch batch = {.num_seqs = 1, .total_tokens = TOTAL, .cu_seqlens = cu_seqlens};
    CHECK(nsa_forward(plan, &batch, q, k, v, gates, NULL, NULL, full, NULL));
    double worst = 0.0;
    for (int i = 0; i < HQ * D; i++) {
        const double error = fabs((double)out[i] - full[(size_t)(TOTAL - 1) * HQ * D + i]);
        if (error > worst)
            worst = error;
    }
    printf("last step vs nsa_forward: max |difference| = %.2g\n", worst);

    nsa_cache_destroy(cache);
    nsa_plan_destroy(plan);
    nsa_context_destroy(ctx);
    free(q);
    free(k);
    free(v);
    free(gates);
    free(out);
    free(full);
    free(draft);
    free(draft_out);
    return worst < 1e-5 ? 0 : 1;
}
