/* SPDX-License-Identifier: MIT */
/*
 * forward_args.c — every check a forward call makes before touching data:
 * the batch layout, the sizes (no product may overflow), the pointers, the
 * phi parameters against the plan's kind, and caller-given block indices.
 * Each failure names the argument and the value at fault.
 */
#include "checked.h"
#include "forward.h"
#include "geometry.h"

static nsa_status check_batch(const nsa_plan *plan, const nsa_batch *batch, int64_t *max_len)
{
    nsa_context *ctx = plan->ctx;
    if (batch == NULL)
        return nsa_fail(ctx, NSA_ERROR_NULL_POINTER, "batch is NULL");
    if (batch->num_seqs < 0 || batch->total_tokens < 0)
        return nsa_fail(ctx, NSA_ERROR_INVALID_DIMENSION,
                        "batch has num_seqs = %lld and total_tokens = %lld; neither may be "
                        "negative",
                        (long long)batch->num_seqs, (long long)batch->total_tokens);
    const int64_t *cu = batch->cu_seqlens;
    if (cu == NULL) {
        if (batch->num_seqs > 0 || batch->total_tokens > 0)
            return nsa_fail(ctx, NSA_ERROR_NULL_POINTER,
                            "batch->cu_seqlens is NULL but num_seqs = %lld",
                            (long long)batch->num_seqs);
        *max_len = 0;
        return NSA_SUCCESS;
    }
    if (cu[0] != 0)
        return nsa_fail(ctx, NSA_ERROR_INVALID_SEQLENS, "cu_seqlens[0] is %lld but must be 0",
                        (long long)cu[0]);
    *max_len = 0;
    for (int64_t b = 0; b < batch->num_seqs; b++) {
        if (cu[b + 1] < cu[b])
            return nsa_fail(ctx, NSA_ERROR_INVALID_SEQLENS,
                            "cu_seqlens[%lld] = %lld is smaller than cu_seqlens[%lld] = %lld",
                            (long long)(b + 1), (long long)cu[b + 1], (long long)b,
                            (long long)cu[b]);
        if (cu[b + 1] - cu[b] > *max_len)
            *max_len = cu[b + 1] - cu[b];
    }
    if (cu[batch->num_seqs] != batch->total_tokens)
        return nsa_fail(ctx, NSA_ERROR_INVALID_SEQLENS,
                        "cu_seqlens[%lld] = %lld but total_tokens = %lld",
                        (long long)batch->num_seqs, (long long)cu[batch->num_seqs],
                        (long long)batch->total_tokens);
    return NSA_SUCCESS;
}

/* Every tensor the call reads or writes must be addressable in bytes. */
static nsa_status check_sizes(const nsa_plan *plan, int64_t tokens)
{
    const nsa_config *cfg = &plan->cfg;
    const int64_t rows[] = {cfg->num_q_heads, cfg->num_kv_heads};
    const int64_t cols[] = {cfg->head_dim_qk, cfg->head_dim_v, 3, cfg->sel_count};
    for (size_t r = 0; r < 2; r++) {
        for (size_t c = 0; c < 4; c++) {
            int64_t count;
            size_t bytes;
            if (!nsa_checked_mul3(tokens, rows[r], cols[c], &count) ||
                !nsa_checked_bytes(count, sizeof(float), &bytes))
                return nsa_fail(plan->ctx, NSA_ERROR_SIZE_OVERFLOW,
                                "total_tokens = %lld with %lld heads of %lld values is too "
                                "large to address",
                                (long long)tokens, (long long)rows[r], (long long)cols[c]);
        }
    }
    return NSA_SUCCESS;
}

static nsa_status check_tensors(const forward_call *call)
{
    const struct {
        const char *name;
        const void *ptr;
        int required;
    } tensors[] = {{"q", call->q, 1},
                   {"k", call->k, 1},
                   {"v", call->v, 1},
                   {"gates", call->gates, !call->dense},
                   {"out", call->out, 1}};
    if (call->batch->total_tokens == 0)
        return NSA_SUCCESS;
    for (size_t i = 0; i < sizeof tensors / sizeof tensors[0]; i++)
        if (tensors[i].required && tensors[i].ptr == NULL)
            return nsa_fail(call->plan->ctx, NSA_ERROR_NULL_POINTER, "%s is NULL",
                            tensors[i].name);
    return NSA_SUCCESS;
}

/* phi's parameters: exactly those the kind uses (see nsa_compress_params). */
nsa_status nsa_check_compress_params(const nsa_plan *plan, const nsa_compress_params *params,
                                     const char *name)
{
    const nsa_compress_kind kind = plan->cfg.compress;
    static const char *const kind_names[] = {"mean", "weighted", "linear", "mlp"};
    const struct {
        const char *field;
        const float *ptr;
        int needed;
    } fields[] = {
        {"a", params ? params->a : NULL, kind == NSA_COMPRESS_WEIGHTED},
        {"w", params ? params->w : NULL, kind == NSA_COMPRESS_LINEAR},
        {"w1", params ? params->w1 : NULL, kind == NSA_COMPRESS_MLP},
        {"w2", params ? params->w2 : NULL, kind == NSA_COMPRESS_MLP},
    };
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++) {
        if (fields[i].needed && params == NULL)
            return nsa_fail(plan->ctx, NSA_ERROR_NULL_POINTER,
                            "%s is NULL but %s compression needs its %s", name,
                            kind_names[kind], fields[i].field);
        if (fields[i].needed && fields[i].ptr == NULL)
            return nsa_fail(plan->ctx, NSA_ERROR_NULL_POINTER,
                            "%s->%s is NULL but %s compression needs it", name,
                            fields[i].field, kind_names[kind]);
        if (!fields[i].needed && fields[i].ptr != NULL)
            return nsa_fail(plan->ctx, NSA_ERROR_INVALID_ARGUMENT,
                            "%s->%s is set but %s compression does not use it", name,
                            fields[i].field, kind_names[kind]);
    }
    return NSA_SUCCESS;
}

/* Caller-given blocks: -1 or a block of the query's own sequence, no block
 * twice for one (token, KV head). */
static nsa_status check_given_indices(const forward_call *call)
{
    const nsa_config *cfg = &call->plan->cfg;
    const int64_t n = cfg->sel_count, hkv = cfg->num_kv_heads;
    const int64_t *cu = call->batch->cu_seqlens;
    for (int64_t b = 0; b < call->batch->num_seqs; b++) {
        int64_t blocks = nsa_num_blocks(cfg, cu[b + 1] - cu[b]);
        for (int64_t tok = cu[b]; tok < cu[b + 1]; tok++) {
            for (int64_t h = 0; h < hkv; h++) {
                const int32_t *row = call->given_indices + (tok * hkv + h) * n;
                for (int64_t s = 0; s < n; s++) {
                    int32_t j = row[s];
                    if (j < -1 || j >= blocks)
                        return nsa_fail(call->plan->ctx, NSA_ERROR_INVALID_INDICES,
                                        "block_indices[token %lld][kv head %lld][slot %lld] = %d "
                                        "is out of range: sequence %lld has length %lld, so "
                                        "blocks 0..%lld (or -1 for an unused slot)",
                                        (long long)tok, (long long)h, (long long)s, (int)j,
                                        (long long)b, (long long)(cu[b + 1] - cu[b]),
                                        (long long)(blocks - 1));
                    for (int64_t r = 0; j >= 0 && r < s; r++)
                        if (row[r] == j)
                            return nsa_fail(call->plan->ctx, NSA_ERROR_INVALID_INDICES,
                                            "block_indices[token %lld][kv head %lld] lists "
                                            "block %d twice (slots %lld and %lld)",
                                            (long long)tok, (long long)h, (int)j, (long long)r,
                                            (long long)s);
                }
            }
        }
    }
    return NSA_SUCCESS;
}

nsa_status nsa_forward_check(forward_call *call)
{
    const nsa_plan *plan = call->plan;
    nsa_status status = check_batch(plan, call->batch, &call->max_len);
    if (status == NSA_SUCCESS)
        status = check_sizes(plan, call->batch->total_tokens);
    if (status == NSA_SUCCESS)
        status = check_tensors(call);
    if (status == NSA_SUCCESS && !call->dense)
        status = nsa_check_compress_params(plan, call->cmp_k, "cmp_k");
    if (status == NSA_SUCCESS && !call->dense)
        status = nsa_check_compress_params(plan, call->cmp_v, "cmp_v");
    if (status == NSA_SUCCESS && call->given_indices != NULL)
        status = check_given_indices(call);
    return status;
}
