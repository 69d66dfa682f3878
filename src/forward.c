/* SPDX-License-Identifier: MIT */
/*
 * forward.c — the NSA forward pipeline: check every argument, compress K and
 * V, then for each query and KV head attend to the compressed tokens, score
 * and select blocks, attend to the selected blocks and to the sliding window,
 * and mix the branches with the gates (spec sections 1-6 and 9).
 *
 * Memory is O(T): the compressed K/V of the batch plus per-query scratch
 * sized by the longest sequence. All checks run before the first output
 * byte is written, so a failing call leaves the outputs untouched.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "checked.h"
#include "compress.h"
#include "geometry.h"
#include "plan.h"
#include "select.h"

/* The batch, inputs and outputs of one call, after validation. */
typedef struct forward_call {
    const nsa_plan *plan;
    const nsa_batch *batch;
    const float *q, *k, *v, *gates;
    const nsa_compress_params *cmp_k, *cmp_v;
    const int32_t *given_indices; /* caller's blocks, or NULL to select */
    float *out;
    int32_t *indices_out; /* optional */
    int64_t max_len;      /* longest sequence */
    int64_t total_compressed;
    float *kc, *vc; /* [Hkv][total_compressed][D] */
} forward_call;

/* Per-query scratch, sized for the longest sequence. */
typedef struct query_scratch {
    float *p;      /* [G][max_compressed] compressed-branch probabilities */
    float *p_sum;  /* [max_compressed] summed over the group */
    float *score;  /* [max_blocks] */
    int32_t *blocks; /* [n] */
    float *o_cmp;  /* [G][Dv] */
    float *slc_acc, *slc_max, *slc_sum;
    float *swa_acc, *swa_max, *swa_sum;
    size_t ldp;
} query_scratch;

/* ----------------------------------------------------------- validation -- */

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
    } tensors[] = {{"q", call->q}, {"k", call->k}, {"v", call->v}, {"gates", call->gates},
                   {"out", call->out}, {"block_indices", call->given_indices}};
    size_t count = sizeof tensors / sizeof tensors[0] - (call->given_indices == NULL);
    if (call->batch->total_tokens == 0)
        return NSA_SUCCESS;
    for (size_t i = 0; i < count; i++)
        if (tensors[i].ptr == NULL)
            return nsa_fail(call->plan->ctx, NSA_ERROR_NULL_POINTER, "%s is NULL",
                            tensors[i].name);
    return NSA_SUCCESS;
}

/* phi's parameters: exactly those the kind uses (see nsa_compress_params). */
static nsa_status check_compress_params(const nsa_plan *plan, const nsa_compress_params *params,
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
        if (fields[i].needed && fields[i].ptr == NULL)
            return nsa_fail(plan->ctx, NSA_ERROR_NULL_POINTER,
                            "%s%s is NULL but %s compression needs it", name,
                            fields[i].field, kind_names[kind]);
        if (!fields[i].needed && fields[i].ptr != NULL)
            return nsa_fail(plan->ctx, NSA_ERROR_INVALID_ARGUMENT,
                            "%s%s is set but %s compression does not use it", name,
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
                    const char *problem = NULL;
                    if (j < -1 || j >= blocks)
                        problem = "out of range";
                    for (int64_t r = 0; problem == NULL && j >= 0 && r < s; r++)
                        if (row[r] == j)
                            problem = "repeated";
                    if (problem != NULL)
                        return nsa_fail(call->plan->ctx, NSA_ERROR_INVALID_INDICES,
                                        "block_indices[token %lld][kv head %lld][slot %lld] = %d "
                                        "is %s: sequence %lld has length %lld, so blocks 0..%lld "
                                        "(or -1)",
                                        (long long)tok, (long long)h, (long long)s, (int)j,
                                        problem, (long long)b, (long long)(cu[b + 1] - cu[b]),
                                        (long long)(blocks - 1));
                }
            }
        }
    }
    return NSA_SUCCESS;
}

static nsa_status check_call(forward_call *call)
{
    const nsa_plan *plan = call->plan;
    nsa_status status = check_batch(plan, call->batch, &call->max_len);
    if (status == NSA_SUCCESS)
        status = check_sizes(plan, call->batch->total_tokens);
    if (status == NSA_SUCCESS)
        status = check_tensors(call);
    if (status == NSA_SUCCESS)
        status = check_compress_params(plan, call->cmp_k, "cmp_k->");
    if (status == NSA_SUCCESS)
        status = check_compress_params(plan, call->cmp_v, "cmp_v->");
    if (status == NSA_SUCCESS && call->given_indices != NULL)
        status = check_given_indices(call);
    return status;
}

/* ---------------------------------------------------------- compression -- */

static nsa_status compress_batch(forward_call *call)
{
    const nsa_plan *plan = call->plan;
    const nsa_config *cfg = &plan->cfg;
    const int64_t *cu = call->batch->cu_seqlens;
    const int64_t hkv = cfg->num_kv_heads, dk = cfg->head_dim_qk, dv = cfg->head_dim_v;

    call->total_compressed = 0;
    for (int64_t b = 0; b < call->batch->num_seqs; b++)
        call->total_compressed += nsa_num_compressed(cfg, cu[b + 1] - cu[b]);
    if (call->total_compressed == 0)
        return NSA_SUCCESS;

    /* total_compressed <= T, and check_sizes proved T * Hkv * D fits. */
    size_t kc_bytes = (size_t)(hkv * call->total_compressed * dk) * sizeof(float);
    size_t vc_bytes = (size_t)(hkv * call->total_compressed * dv) * sizeof(float);
    size_t work_k = nsa_compress_workspace(cfg, cfg->head_dim_qk);
    size_t work_v = nsa_compress_workspace(cfg, cfg->head_dim_v);
    float *work = malloc((work_k > work_v ? work_k : work_v) * sizeof(float));
    call->kc = malloc(kc_bytes);
    call->vc = malloc(vc_bytes);
    if (work == NULL || call->kc == NULL || call->vc == NULL) {
        free(work);
        return nsa_fail(plan->ctx, NSA_ERROR_OUT_OF_MEMORY,
                        "no memory for the %lld compressed tokens of the batch",
                        (long long)call->total_compressed);
    }

    int64_t offset = 0;
    for (int64_t b = 0; b < call->batch->num_seqs; b++) {
        int64_t len = cu[b + 1] - cu[b];
        for (int64_t h = 0; h < hkv; h++) {
            float *kc = call->kc + (size_t)((h * call->total_compressed + offset) * dk);
            float *vc = call->vc + (size_t)((h * call->total_compressed + offset) * dv);
            nsa_compress(plan, call->cmp_k, cfg->head_dim_qk, (int32_t)h,
                         call->k + (size_t)((cu[b] * hkv + h) * dk), (size_t)(hkv * dk), len, kc,
                         work);
            nsa_compress(plan, call->cmp_v, cfg->head_dim_v, (int32_t)h,
                         call->v + (size_t)((cu[b] * hkv + h) * dv), (size_t)(hkv * dv), len, vc,
                         work);
        }
        offset += nsa_num_compressed(cfg, len);
    }
    free(work);
    return NSA_SUCCESS;
}

/* ------------------------------------------------------------ attention -- */

static nsa_status scratch_alloc(const forward_call *call, query_scratch *s, void **block)
{
    const nsa_config *cfg = &call->plan->cfg;
    const size_t g = (size_t)call->plan->group_size, dv = (size_t)cfg->head_dim_v;
    const size_t max_c = (size_t)nsa_num_compressed(cfg, call->max_len) + 1;
    const size_t max_blocks = (size_t)nsa_num_blocks(cfg, call->max_len) + 1;
    const size_t floats = g * max_c + max_c + max_blocks + 3 * g * dv + 4 * g;
    const size_t bytes = floats * sizeof(float) + (size_t)cfg->sel_count * sizeof(int32_t);
    float *f = malloc(bytes);
    *block = f;
    if (f == NULL)
        return nsa_fail(call->plan->ctx, NSA_ERROR_OUT_OF_MEMORY,
                        "no memory for %zu bytes of attention scratch", bytes);
    s->ldp = max_c;
    s->p = f;
    f += g * max_c;
    s->p_sum = f;
    f += max_c;
    s->score = f;
    f += max_blocks;
    s->o_cmp = f;
    f += g * dv;
    s->slc_acc = f;
    f += g * dv;
    s->swa_acc = f;
    f += g * dv;
    s->slc_max = f;
    s->slc_sum = f + g;
    s->swa_max = f + 2 * g;
    s->swa_sum = f + 3 * g;
    f += 4 * g;
    s->blocks = (int32_t *)f;
    return NSA_SUCCESS;
}

static void softmax_state_reset(size_t g, size_t dv, float *row_max, float *row_sum, float *acc)
{
    for (size_t r = 0; r < g; r++) {
        row_max[r] = -INFINITY;
        row_sum[r] = 0.0f;
    }
    memset(acc, 0, g * dv * sizeof *acc);
}

/* The blocks query t (local position) of KV head h attends to: the caller's,
 * or selected from the compressed probabilities already in s->p. */
static void choose_blocks(const forward_call *call, int64_t token, int64_t t, int64_t len,
                          int64_t h, int64_t nc, query_scratch *s)
{
    const nsa_config *cfg = &call->plan->cfg;
    const int64_t n = cfg->sel_count;
    if (call->given_indices != NULL) {
        memcpy(s->blocks, call->given_indices + (token * cfg->num_kv_heads + h) * n,
               (size_t)n * sizeof *s->blocks);
        nsa_sort_blocks(s->blocks, (int32_t)n);
        return;
    }
    const size_t g = (size_t)call->plan->group_size;
    for (int64_t i = 0; i < nc; i++) {
        float sum = 0.0f;
        for (size_t r = 0; r < g; r++)
            sum += s->p[r * s->ldp + (size_t)i];
        s->p_sum[i] = sum;
    }
    int64_t candidates = nsa_candidate_blocks(cfg, t, len);
    nsa_block_scores(cfg, s->p_sum, nc, s->score, candidates);
    nsa_select_blocks(cfg, s->score, candidates, t / cfg->sel_block, s->blocks);
}

/* All three branches and the gate mix for query t of one sequence, KV head h. */
static void attend_query(const forward_call *call, int64_t seq_start, int64_t len,
                         int64_t c_offset, int64_t h, int64_t t, query_scratch *s)
{
    const nsa_plan *plan = call->plan;
    const nsa_config *cfg = &plan->cfg;
    const nsa_ukernels *uk = &plan->kernels;
    const size_t g = (size_t)plan->group_size;
    const size_t dk = (size_t)cfg->head_dim_qk, dv = (size_t)cfg->head_dim_v;
    const size_t hq = (size_t)cfg->num_q_heads, hkv = (size_t)cfg->num_kv_heads;
    const size_t ldk = hkv * dk, ldv = hkv * dv;
    const int64_t token = seq_start + t;
    const size_t first_row = (size_t)token * hq + (size_t)h * g; /* q, gates, out */
    const float *q = call->q + first_row * dk;
    const float *k = call->k + ((size_t)seq_start * hkv + (size_t)h) * dk;
    const float *v = call->v + ((size_t)seq_start * hkv + (size_t)h) * dv;

    /* Compressed branch (spec section 2). */
    int64_t nc = nsa_visible_compressed(cfg, t, len);
    if (nc > 0) {
        const size_t c0 = (size_t)h * (size_t)call->total_compressed + (size_t)c_offset;
        uk->cmp_probs(g, (size_t)nc, dk, cfg->scale, q, dk, call->kc + c0 * dk, dk, s->p, s->ldp);
        uk->prob_v(g, (size_t)nc, dv, s->p, s->ldp, call->vc + c0 * dv, dv, s->o_cmp);
    } else {
        memset(s->o_cmp, 0, g * dv * sizeof *s->o_cmp);
    }

    /* Selection (section 3) and selected branch (section 4). */
    choose_blocks(call, token, t, len, h, nc, s);
    if (call->indices_out != NULL)
        memcpy(call->indices_out + ((size_t)token * hkv + (size_t)h) * (size_t)cfg->sel_count,
               s->blocks, (size_t)cfg->sel_count * sizeof *s->blocks);
    softmax_state_reset(g, dv, s->slc_max, s->slc_sum, s->slc_acc);
    for (int32_t i = 0; i < cfg->sel_count && s->blocks[i] >= 0; i++) {
        int64_t first = (int64_t)s->blocks[i] * cfg->sel_block;
        int64_t last = first + cfg->sel_block - 1;
        int64_t limit = cfg->causal ? t : len - 1;
        if (last > limit)
            last = limit;
        if (first > last)
            continue;
        uk->attn_tile(g, (size_t)(last - first + 1), dk, dv, cfg->scale, q, dk,
                      k + (size_t)first * ldk, ldk, v + (size_t)first * ldv, ldv, s->slc_max,
                      s->slc_sum, s->slc_acc);
    }

    /* Sliding window (sections 5 and 9). */
    int64_t first, last;
    nsa_window_range(cfg, t, len, &first, &last);
    softmax_state_reset(g, dv, s->swa_max, s->swa_sum, s->swa_acc);
    uk->attn_tile(g, (size_t)(last - first + 1), dk, dv, cfg->scale, q, dk,
                  k + (size_t)first * ldk, ldk, v + (size_t)first * ldv, ldv, s->swa_max,
                  s->swa_sum, s->swa_acc);

    /* Gates (section 6). */
    uk->gate_mix(g, dv, call->gates + first_row * 3, s->o_cmp, s->slc_acc, s->slc_sum,
                 s->swa_acc, s->swa_sum, call->out + first_row * dv);
}

static nsa_status attend_batch(const forward_call *call)
{
    query_scratch scratch = {0};
    void *block = NULL;
    nsa_status status = scratch_alloc(call, &scratch, &block);
    if (status != NSA_SUCCESS)
        return status;
    const nsa_config *cfg = &call->plan->cfg;
    const int64_t *cu = call->batch->cu_seqlens;
    int64_t c_offset = 0;
    for (int64_t b = 0; b < call->batch->num_seqs; b++) {
        int64_t len = cu[b + 1] - cu[b];
        for (int64_t h = 0; h < cfg->num_kv_heads; h++)
            for (int64_t t = 0; t < len; t++)
                attend_query(call, cu[b], len, c_offset, h, t, &scratch);
        c_offset += nsa_num_compressed(cfg, len);
    }
    free(block);
    return NSA_SUCCESS;
}

/* ---------------------------------------------------------- entry points -- */

static nsa_status run_forward(forward_call *call)
{
    if (call->plan == NULL)
        return NSA_ERROR_NULL_POINTER;
    nsa_status status = check_call(call);
    if (status != NSA_SUCCESS || call->batch->total_tokens == 0)
        return status;
    status = compress_batch(call);
    if (status == NSA_SUCCESS)
        status = attend_batch(call);
    free(call->kc);
    free(call->vc);
    return status;
}

nsa_status nsa_forward(const nsa_plan *plan, const nsa_batch *batch, const float *q,
                       const float *k, const float *v, const float *gates,
                       const nsa_compress_params *cmp_k, const nsa_compress_params *cmp_v,
                       float *out, int32_t *block_indices_out)
{
    forward_call call = {.plan = plan, .batch = batch, .q = q, .k = k, .v = v, .gates = gates,
                         .cmp_k = cmp_k, .cmp_v = cmp_v, .out = out,
                         .indices_out = block_indices_out};
    return run_forward(&call);
}

nsa_status nsa_forward_with_indices(const nsa_plan *plan, const nsa_batch *batch,
                                    const float *q, const float *k, const float *v,
                                    const float *gates, const nsa_compress_params *cmp_k,
                                    const nsa_compress_params *cmp_v,
                                    const int32_t *block_indices, float *out)
{
    if (plan != NULL && block_indices == NULL)
        return nsa_fail(plan->ctx, NSA_ERROR_NULL_POINTER, "block_indices is NULL");
    forward_call call = {.plan = plan, .batch = batch, .q = q, .k = k, .v = v, .gates = gates,
                         .cmp_k = cmp_k, .cmp_v = cmp_v, .given_indices = block_indices,
                         .out = out};
    return run_forward(&call);
}
