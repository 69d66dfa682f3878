/* SPDX-License-Identifier: MIT */
/*
 * decode.c — NSA for the newest tokens of KV caches (spec section 8). The
 * queries of one sequence and KV head form tiles exactly as in the forward
 * pass, with their keys read from the cache instead of packed from the
 * caller's tensors, so decode runs the same code and the same kernels as
 * nsa_forward and gives the same numbers.
 */

#include "cache.h"
#include "carve.h"
#include "checked.h"
#include "decode_split.h"
#include "geometry.h"
#include "threads.h"
#include "tile.h"
#include "workspace.h"

typedef struct decode_item {
    int64_t seq, head, first, count; /* queries [first, first + count) of seq */
} decode_item;

typedef struct decode_run {
    const nsa_plan *plan;
    const nsa_cache *const *caches;
    const int64_t *cu_queries;
    const float *q, *gates;
    float *out;
    int32_t *indices_out;
    int64_t tile_queries, max_len;
    decode_item *items;
    nsa_work_queue queue;
    float *scratch; /* per worker: tile scratch, then bf16 conversion scratch */
    size_t tile_floats, worker_floats;
} decode_run;

static nsa_status check_cache(const nsa_plan *plan, const nsa_cache *cache, int64_t b)
{
    const nsa_config *a = &plan->cfg, *c = &cache->plan.cfg;
    if (a->num_kv_heads != c->num_kv_heads || a->head_dim_qk != c->head_dim_qk ||
        a->head_dim_v != c->head_dim_v || a->cmp_block != c->cmp_block ||
        a->cmp_stride != c->cmp_stride || a->sel_block != c->sel_block)
        return nsa_fail(plan->ctx, NSA_ERROR_MISMATCH,
                        "caches[%lld] was made for Hkv=%d Dk=%d Dv=%d l=%d d=%d l'=%d, the plan "
                        "has Hkv=%d Dk=%d Dv=%d l=%d d=%d l'=%d",
                        (long long)b, c->num_kv_heads, c->head_dim_qk, c->head_dim_v,
                        c->cmp_block, c->cmp_stride, c->sel_block, a->num_kv_heads,
                        a->head_dim_qk, a->head_dim_v, a->cmp_block, a->cmp_stride,
                        a->sel_block);
    return NSA_SUCCESS;
}

static nsa_status check_call(decode_run *run, int64_t num_seqs)
{
    const nsa_plan *plan = run->plan;
    const nsa_config *cfg = &plan->cfg;
    nsa_context *ctx = plan->ctx;
    if (num_seqs < 0)
        return nsa_fail(ctx, NSA_ERROR_INVALID_DIMENSION, "num_seqs is %lld",
                        (long long)num_seqs);
    if (!cfg->causal)
        return nsa_fail(ctx, NSA_ERROR_MISMATCH, "nsa_decode needs a causal plan");
    if (num_seqs > 0 && (run->caches == NULL || run->cu_queries == NULL))
        return nsa_fail(ctx, NSA_ERROR_NULL_POINTER, "%s is NULL",
                        run->caches == NULL ? "caches" : "cu_queries");
    const int64_t *cu = run->cu_queries;
    if (num_seqs > 0 && cu[0] != 0)
        return nsa_fail(ctx, NSA_ERROR_INVALID_SEQLENS, "cu_queries[0] is %lld but must be 0",
                        (long long)cu[0]);
    run->max_len = 0;
    for (int64_t b = 0; b < num_seqs; b++) {
        const nsa_cache *cache = run->caches[b];
        if (cache == NULL)
            return nsa_fail(ctx, NSA_ERROR_NULL_POINTER, "caches[%lld] is NULL", (long long)b);
        nsa_status status = check_cache(plan, cache, b);
        if (status != NSA_SUCCESS)
            return status;
        if (cu[b + 1] < cu[b] || cu[b + 1] - cu[b] > cache->length)
            return nsa_fail(ctx, NSA_ERROR_INVALID_SEQLENS,
                            "sequence %lld asks for %lld queries (cu_queries[%lld] = %lld, "
                            "cu_queries[%lld] = %lld) but its cache holds %lld tokens",
                            (long long)b, (long long)(cu[b + 1] - cu[b]), (long long)b,
                            (long long)cu[b], (long long)(b + 1), (long long)cu[b + 1],
                            (long long)cache->length);
        if (cache->length > run->max_len)
            run->max_len = cache->length;
    }
    const int64_t queries = num_seqs > 0 ? cu[num_seqs] : 0;
    const int64_t widest = cfg->head_dim_qk > cfg->head_dim_v ? cfg->head_dim_qk : cfg->head_dim_v;
    int64_t count;
    size_t bytes;
    if (!nsa_checked_mul3(queries, cfg->num_q_heads, widest > 3 ? widest : 3, &count) ||
        !nsa_checked_bytes(count, sizeof(float), &bytes) ||
        !nsa_checked_mul3(queries, cfg->num_kv_heads, cfg->sel_count, &count) ||
        !nsa_checked_bytes(count, sizeof(int32_t), &bytes))
        return nsa_fail(ctx, NSA_ERROR_SIZE_OVERFLOW, "%lld queries are too many to address",
                        (long long)queries);
    if (queries > 0 && (run->q == NULL || run->gates == NULL || run->out == NULL))
        return nsa_fail(ctx, NSA_ERROR_NULL_POINTER, "%s is NULL",
                        run->q == NULL ? "q" : run->gates == NULL ? "gates" : "out");
    return NSA_SUCCESS;
}

/* Work items: per sequence, KV head and tile of its new queries. */
static int64_t decode_items(const decode_run *run, int64_t num_seqs, decode_item *items)
{
    const int64_t hkv = run->plan->cfg.num_kv_heads, step = run->tile_queries;
    int64_t n = 0;
    for (int64_t b = 0; b < num_seqs; b++) {
        const int64_t m = run->cu_queries[b + 1] - run->cu_queries[b];
        const int64_t len = run->caches[b]->length;
        for (int64_t first = 0; first < m; first += step)
            for (int64_t h = 0; h < hkv; h++, n++)
                if (items != NULL)
                    items[n] = (decode_item){.seq = b, .head = h, .first = len - m + first,
                                             .count = m - first < step ? m - first : step};
    }
    return n;
}

/* The tile of an item. */
static nsa_tile make_tile(const decode_run *run, const decode_item *it)
{
    const nsa_plan *plan = run->plan;
    const nsa_config *cfg = &plan->cfg;
    const int64_t g = plan->group_size, hq = cfg->num_q_heads, hkv = cfg->num_kv_heads;
    const int64_t dk = cfg->head_dim_qk, dv = cfg->head_dim_v, n = cfg->sel_count;
    const nsa_cache *cache = run->caches[it->seq];
    /* the packed row of the item's first query */
    const int64_t row = run->cu_queries[it->seq + 1] - (cache->length - it->first);
    return (nsa_tile){
            .raw = nsa_cache_keys(cache, it->head, 0),
            .compressed = nsa_cache_keys(cache, it->head, 1),
            .len = cache->length,
            .first = it->first,
            .count = it->count,
            .q = run->q + (size_t)((row * hq + it->head * g) * dk),
            .gates = run->gates + (size_t)((row * hq + it->head * g) * 3),
            .out = run->out + (size_t)((row * hq + it->head * g) * dv),
            .q_stride = (size_t)(hq * dk),
            .gates_stride = (size_t)(hq * 3),
            .out_stride = (size_t)(hq * dv),
            .indices_out = run->indices_out != NULL
                               ? run->indices_out + (size_t)((row * hkv + it->head) * n)
                               : NULL,
            .index_stride = (size_t)(hkv * n),
    };
}

static void decode_worker(void *arg, int32_t worker, int32_t num_workers)
{
    decode_run *run = arg;
    float *scratch = run->scratch + (size_t)worker * run->worker_floats;
    (void)num_workers;
    for (int64_t i; (i = nsa_work_queue_take(&run->queue)) >= 0;) {
        const nsa_tile tile = make_tile(run, &run->items[i]);
        nsa_tile_attend(run->plan, &tile, run->tile_queries, run->max_len, scratch);
    }
}

/* A few tiles: split each over all workers (decode_split.c). */
static nsa_status decode_split(decode_run *run, int64_t num_seqs, int64_t items)
{
    nsa_tile tiles[NSA_SPLIT_MAX_TILES];
    decode_item list[NSA_SPLIT_MAX_TILES];
    decode_items(run, num_seqs, list);
    for (int64_t i = 0; i < items; i++)
        tiles[i] = make_tile(run, &list[i]);
    return nsa_decode_split(run->plan, tiles, items, run->max_len);
}

nsa_status nsa_decode(const nsa_plan *plan, int64_t num_seqs, const nsa_cache *const *caches,
                      const int64_t *cu_queries, const float *q, const float *gates, float *out,
                      int32_t *block_indices_out)
{
    if (plan == NULL)
        return NSA_ERROR_NULL_POINTER;
    decode_run run = {.plan = plan, .caches = caches, .cu_queries = cu_queries, .q = q,
                      .gates = gates, .out = out, .indices_out = block_indices_out,
                      .tile_queries = nsa_tile_queries(plan, 0)};
    nsa_status status = check_call(&run, num_seqs);
    if (status != NSA_SUCCESS)
        return status;
    const int64_t items = decode_items(&run, num_seqs, NULL);
    if (items == 0)
        return NSA_SUCCESS;
    if (items <= NSA_SPLIT_MAX_TILES)
        return decode_split(&run, num_seqs, items);

    nsa_context *ctx = plan->ctx;
    run.tile_floats = nsa_tile_scratch_floats(plan, run.tile_queries, run.max_len);
    run.worker_floats = (run.tile_floats + 15) & ~(size_t)15;
    nsa_carver layout = {0};
    nsa_carve(&layout, (size_t)items * sizeof *run.items);
    nsa_carve(&layout, (size_t)ctx->num_threads * run.worker_floats * sizeof(float));
    nsa_workspace ws;
    if (nsa_workspace_acquire(ctx, layout.used, &ws) != NSA_SUCCESS)
        return nsa_fail(ctx, NSA_ERROR_OUT_OF_MEMORY, "no memory for the decode workspace");
    layout = (nsa_carver){.base = ws.data};
    run.items = nsa_carve(&layout, (size_t)items * sizeof *run.items);
    run.scratch = nsa_carve(&layout, (size_t)ctx->num_threads * run.worker_floats * sizeof(float));
    decode_items(&run, num_seqs, run.items);
    nsa_work_queue_init(&run.queue, items);
    nsa_pool_run_eager(ctx->pool, decode_worker, &run);
    nsa_workspace_release(ctx, &ws);
    return NSA_SUCCESS;
}
