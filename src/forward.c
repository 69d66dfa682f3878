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

#include "compress.h"
#include "forward.h"
#include "geometry.h"
#include "plan.h"
#include "select.h"
#include "threads.h"

/* One call in flight: the checked arguments, the compressed K/V of the
 * batch, the work items of both phases and each worker's scratch. */
typedef struct forward_run {
    forward_call call;
    int64_t *c_offset;        /* [B + 1]: first compressed token of each sequence */
    float *kc, *vc;           /* [Hkv][total_compressed][Dk or Dv] */
    struct work_item *items;  /* the current phase's items */
    nsa_work_queue queue;
    float **scratch;          /* [num_workers] blocks of scratch_floats */
    size_t scratch_floats;
} forward_run;

/* A unit of work: compressed tokens [first, first + count) of one sequence,
 * head and tensor (phase 1), or queries [first, first + count) of one
 * sequence and KV head (phase 2). */
typedef struct work_item {
    int32_t seq, head, tensor;
    int64_t first, count;
    int64_t cost; /* phase 2 ordering: most expensive first */
} work_item;

enum { COMPRESS_ITEM_TOKENS = 256, ATTEND_ITEM_QUERIES = 16 };

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
static void attend_query(const forward_run *run, int64_t seq_start, int64_t len,
                         int64_t c_offset, int64_t h, int64_t t, query_scratch *s)
{
    const forward_call *call = &run->call;
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
        const int64_t total = run->c_offset[call->batch->num_seqs];
        const size_t c0 = (size_t)(h * total + c_offset);
        uk->cmp_probs(g, (size_t)nc, dk, cfg->scale, q, dk, run->kc + c0 * dk, dk, s->p, s->ldp);
        uk->prob_v(g, (size_t)nc, dv, s->p, s->ldp, run->vc + c0 * dv, dv, s->o_cmp);
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

/* ------------------------------------------------------------- phase 1 -- */

/* Compressed K and V of the whole batch, in items of COMPRESS_ITEM_TOKENS
 * compressed tokens per (sequence, head, tensor). */
static void compress_worker(void *arg, int32_t worker, int32_t num_workers)
{
    forward_run *run = arg;
    const forward_call *call = &run->call;
    const nsa_config *cfg = &call->plan->cfg;
    const int64_t hkv = cfg->num_kv_heads, total = run->c_offset[call->batch->num_seqs];
    float *work = run->scratch[worker];
    (void)num_workers;
    for (int64_t i; (i = nsa_work_queue_take(&run->queue)) >= 0;) {
        const work_item *item = &run->items[i];
        const int64_t start = call->batch->cu_seqlens[item->seq];
        const int64_t dim = item->tensor == 0 ? cfg->head_dim_qk : cfg->head_dim_v;
        const float *x = item->tensor == 0 ? call->k : call->v;
        float *y = item->tensor == 0 ? run->kc : run->vc;
        y += (size_t)((item->head * total + run->c_offset[item->seq] + item->first) * dim);
        nsa_compress(call->plan, item->tensor == 0 ? call->cmp_k : call->cmp_v, (int32_t)dim,
                     item->head, x + (size_t)((start * hkv + item->head) * dim),
                     (size_t)(hkv * dim), item->first, item->count, y, work);
    }
}

static int64_t compress_items(const forward_run *run, work_item *items)
{
    const int64_t B = run->call.batch->num_seqs, hkv = run->call.plan->cfg.num_kv_heads;
    int64_t n = 0;
    for (int64_t b = 0; b < B; b++) {
        int64_t nc = run->c_offset[b + 1] - run->c_offset[b];
        for (int64_t first = 0; first < nc; first += COMPRESS_ITEM_TOKENS)
            for (int32_t h = 0; h < hkv; h++)
                for (int32_t tensor = 0; tensor < 2; tensor++) {
                    if (items != NULL)
                        items[n] = (work_item){.seq = (int32_t)b, .head = h, .tensor = tensor,
                                               .first = first,
                                               .count = nc - first < COMPRESS_ITEM_TOKENS
                                                            ? nc - first
                                                            : COMPRESS_ITEM_TOKENS};
                    n++;
                }
    }
    return n;
}

/* ------------------------------------------------------------- phase 2 -- */

static void scratch_carve(const forward_run *run, float *f, query_scratch *s)
{
    const nsa_config *cfg = &run->call.plan->cfg;
    const size_t g = (size_t)run->call.plan->group_size, dv = (size_t)cfg->head_dim_v;
    const size_t max_c = (size_t)nsa_num_compressed(cfg, run->call.max_len) + 1;
    const size_t max_blocks = (size_t)nsa_num_blocks(cfg, run->call.max_len) + 1;
    s->ldp = max_c;
    s->p = f;
    s->p_sum = s->p + g * max_c;
    s->score = s->p_sum + max_c;
    s->o_cmp = s->score + max_blocks;
    s->slc_acc = s->o_cmp + g * dv;
    s->swa_acc = s->slc_acc + g * dv;
    s->slc_max = s->swa_acc + g * dv;
    s->slc_sum = s->slc_max + g;
    s->swa_max = s->slc_sum + g;
    s->swa_sum = s->swa_max + g;
    s->blocks = (int32_t *)(s->swa_sum + g);
}

static size_t attend_scratch_floats(const forward_run *run)
{
    const nsa_config *cfg = &run->call.plan->cfg;
    const size_t g = (size_t)run->call.plan->group_size, dv = (size_t)cfg->head_dim_v;
    const size_t max_c = (size_t)nsa_num_compressed(cfg, run->call.max_len) + 1;
    const size_t max_blocks = (size_t)nsa_num_blocks(cfg, run->call.max_len) + 1;
    return g * max_c + max_c + max_blocks + 3 * g * dv + 4 * g + (size_t)cfg->sel_count;
}

static void attend_worker(void *arg, int32_t worker, int32_t num_workers)
{
    forward_run *run = arg;
    const int64_t *cu = run->call.batch->cu_seqlens;
    query_scratch scratch;
    scratch_carve(run, run->scratch[worker], &scratch);
    (void)num_workers;
    for (int64_t i; (i = nsa_work_queue_take(&run->queue)) >= 0;) {
        const work_item *item = &run->items[i];
        const int64_t len = cu[item->seq + 1] - cu[item->seq];
        for (int64_t t = item->first; t < item->first + item->count; t++)
            attend_query(run, cu[item->seq], len, run->c_offset[item->seq], item->head, t,
                         &scratch);
    }
}

/* Keys a query at position t attends to, roughly: the cost of its work. */
static int64_t query_cost(const nsa_config *cfg, int64_t t, int64_t len)
{
    int64_t seen = cfg->causal ? t + 1 : len;
    int64_t selected = (int64_t)cfg->sel_count * cfg->sel_block;
    return nsa_visible_compressed(cfg, t, len) + (seen < selected ? seen : selected) +
           (seen < cfg->window ? seen : cfg->window);
}

static int64_t attend_items(const forward_run *run, work_item *items)
{
    const nsa_config *cfg = &run->call.plan->cfg;
    const int64_t *cu = run->call.batch->cu_seqlens;
    int64_t n = 0;
    for (int64_t b = 0; b < run->call.batch->num_seqs; b++) {
        int64_t len = cu[b + 1] - cu[b];
        for (int64_t first = 0; first < len; first += ATTEND_ITEM_QUERIES) {
            int64_t count = len - first < ATTEND_ITEM_QUERIES ? len - first : ATTEND_ITEM_QUERIES;
            for (int32_t h = 0; h < cfg->num_kv_heads; h++) {
                if (items != NULL)
                    items[n] = (work_item){.seq = (int32_t)b, .head = h, .first = first,
                                           .count = count,
                                           .cost = query_cost(cfg, first + count - 1, len)};
                n++;
            }
        }
    }
    return n;
}

/* Longest items first, so the causal triangle's expensive tail does not
 * end up alone on one worker. Ties keep their order (deterministic). */
static int compare_cost_descending(const void *a, const void *b)
{
    const work_item *x = a, *y = b;
    if (x->cost != y->cost)
        return x->cost > y->cost ? -1 : 1;
    if (x->seq != y->seq)
        return x->seq < y->seq ? -1 : 1;
    if (x->first != y->first)
        return x->first < y->first ? -1 : 1;
    return (x->head > y->head) - (x->head < y->head);
}

/* ---------------------------------------------------------------- driver -- */

static void run_free(forward_run *run, int32_t workers)
{
    if (run->scratch != NULL)
        for (int32_t w = 0; w < workers; w++)
            free(run->scratch[w]);
    free(run->scratch);
    free(run->items);
    free(run->kc);
    free(run->vc);
    free(run->c_offset);
}

/* Everything both phases need, allocated before any output is written so an
 * allocation failure leaves the outputs untouched. Scratch is only
 * allocated here; each worker touches its own first, which places it on
 * the worker's NUMA node. */
static nsa_status run_alloc(forward_run *run, int32_t workers)
{
    const forward_call *call = &run->call;
    const nsa_config *cfg = &call->plan->cfg;
    const int64_t B = call->batch->num_seqs, hkv = cfg->num_kv_heads;
    run->c_offset = malloc((size_t)(B + 1) * sizeof *run->c_offset);
    if (run->c_offset == NULL)
        return NSA_ERROR_OUT_OF_MEMORY;
    run->c_offset[0] = 0;
    for (int64_t b = 0; b < B; b++)
        run->c_offset[b + 1] =
            run->c_offset[b] +
            nsa_num_compressed(cfg, call->batch->cu_seqlens[b + 1] - call->batch->cu_seqlens[b]);
    /* total compressed <= T, and the checks proved T * Hkv * D fits. */
    const size_t total = (size_t)run->c_offset[B];
    run->kc = malloc(total * (size_t)(hkv * cfg->head_dim_qk) * sizeof(float) + 1);
    run->vc = malloc(total * (size_t)(hkv * cfg->head_dim_v) * sizeof(float) + 1);

    int64_t n1 = compress_items(run, NULL), n2 = attend_items(run, NULL);
    run->items = malloc((size_t)(n1 > n2 ? n1 : n2) * sizeof *run->items + 1);

    size_t work_k = nsa_compress_workspace(cfg, cfg->head_dim_qk);
    size_t work_v = nsa_compress_workspace(cfg, cfg->head_dim_v);
    run->scratch_floats = attend_scratch_floats(run);
    if (work_k > run->scratch_floats)
        run->scratch_floats = work_k;
    if (work_v > run->scratch_floats)
        run->scratch_floats = work_v;
    run->scratch = calloc((size_t)workers, sizeof *run->scratch);
    if (run->kc == NULL || run->vc == NULL || run->items == NULL || run->scratch == NULL)
        return NSA_ERROR_OUT_OF_MEMORY;
    for (int32_t w = 0; w < workers; w++)
        if ((run->scratch[w] = malloc(run->scratch_floats * sizeof(float))) == NULL)
            return NSA_ERROR_OUT_OF_MEMORY;
    return NSA_SUCCESS;
}

static nsa_status run_forward(const forward_call *call)
{
    if (call->plan == NULL)
        return NSA_ERROR_NULL_POINTER;
    forward_run run = {.call = *call};
    nsa_status status = nsa_forward_check(&run.call);
    if (status != NSA_SUCCESS || call->batch->total_tokens == 0)
        return status;
    nsa_context *ctx = call->plan->ctx;
    const int32_t workers = ctx->num_threads;
    status = run_alloc(&run, workers);
    if (status != NSA_SUCCESS) {
        run_free(&run, workers);
        return nsa_fail(ctx, status, "no memory for the workspace of %lld tokens",
                        (long long)call->batch->total_tokens);
    }

    nsa_work_queue_init(&run.queue, compress_items(&run, run.items));
    nsa_pool_run(ctx->pool, compress_worker, &run);

    int64_t n = attend_items(&run, run.items);
    qsort(run.items, (size_t)n, sizeof *run.items, compare_cost_descending);
    nsa_work_queue_init(&run.queue, n);
    nsa_pool_run(ctx->pool, attend_worker, &run);

    run_free(&run, workers);
    return NSA_SUCCESS;
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
