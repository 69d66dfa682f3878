/* SPDX-License-Identifier: MIT */
/*
 * saved.c — creating and checking nsa_saved, the forward's record for the
 * backward pass. Its contents are written by the forward's tiles
 * (tile.c) and read by nsa_backward.
 */
#include <math.h>
#include <stdlib.h>

#include "checked.h"
#include "saved.h"

nsa_status nsa_saved_create(const nsa_plan *plan, int64_t max_tokens, nsa_saved **saved)
{
    if (saved != NULL)
        *saved = NULL;
    if (plan == NULL)
        return NSA_ERROR_NULL_POINTER;
    if (saved == NULL)
        return nsa_fail(plan->ctx, NSA_ERROR_NULL_POINTER, "nsa_saved_create: saved is NULL");
    if (max_tokens < 1)
        return nsa_fail(plan->ctx, NSA_ERROR_INVALID_DIMENSION,
                        "max_tokens is %lld but must be at least 1", (long long)max_tokens);
    const nsa_config *cfg = &plan->cfg;
    int64_t lse_count, index_count;
    size_t lse_bytes, index_bytes;
    if (!nsa_checked_mul3(3, max_tokens, cfg->num_q_heads, &lse_count) ||
        !nsa_checked_bytes(lse_count, sizeof(float), &lse_bytes) ||
        !nsa_checked_mul3(max_tokens, cfg->num_kv_heads, cfg->sel_count, &index_count) ||
        !nsa_checked_bytes(index_count, sizeof(int32_t), &index_bytes))
        return nsa_fail(plan->ctx, NSA_ERROR_SIZE_OVERFLOW,
                        "saved state for %lld tokens is too large to address",
                        (long long)max_tokens);
    nsa_saved *s = calloc(1, sizeof *s);
    if (s != NULL) {
        s->lse = malloc(lse_bytes);
        s->indices = malloc(index_bytes);
    }
    if (s == NULL || s->lse == NULL || s->indices == NULL) {
        nsa_saved_destroy(s);
        return nsa_fail(plan->ctx, NSA_ERROR_OUT_OF_MEMORY,
                        "no memory for the saved state of %lld tokens", (long long)max_tokens);
    }
    s->num_q_heads = cfg->num_q_heads;
    s->num_kv_heads = cfg->num_kv_heads;
    s->sel_count = cfg->sel_count;
    s->max_tokens = max_tokens;
    *saved = s;
    return NSA_SUCCESS;
}

void nsa_saved_destroy(nsa_saved *saved)
{
    if (saved == NULL)
        return;
    free(saved->lse);
    free(saved->indices);
    free(saved);
}

nsa_status nsa_saved_check(const nsa_plan *plan, const nsa_saved *saved, int64_t tokens)
{
    const nsa_config *cfg = &plan->cfg;
    if (saved->num_q_heads != cfg->num_q_heads || saved->num_kv_heads != cfg->num_kv_heads ||
        saved->sel_count != cfg->sel_count)
        return nsa_fail(plan->ctx, NSA_ERROR_MISMATCH,
                        "saved was made for Hq=%d Hkv=%d n=%d, the plan has Hq=%d Hkv=%d n=%d",
                        (int)saved->num_q_heads, (int)saved->num_kv_heads,
                        (int)saved->sel_count, (int)cfg->num_q_heads, (int)cfg->num_kv_heads,
                        (int)cfg->sel_count);
    if (tokens > saved->max_tokens)
        return nsa_fail(plan->ctx, NSA_ERROR_CAPACITY,
                        "the batch has %lld tokens but saved holds at most %lld",
                        (long long)tokens, (long long)saved->max_tokens);
    return NSA_SUCCESS;
}
