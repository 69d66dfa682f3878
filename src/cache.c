/* SPDX-License-Identifier: MIT */
/*
 * cache.c — the KV cache: creation, appending tokens and compressing each
 * window once as it completes (spec section 8: a compressed token appears
 * when the length L reaches L >= l with (L - l) mod d = 0).
 *
 * A window can straddle appends, so the cache keeps the last l - 1 raw
 * tokens in fp32 (the stored copy may be bf16, and phi must see exactly
 * what nsa_forward sees). An append gathers each run of new windows into a
 * small fp32 buffer and runs phi on it with the same code as the forward.
 * Truncation (a rejected speculative draft) drops the newest tokens and the
 * compressed tokens whose windows reach them, and restores that tail.
 */
#include <stdlib.h>
#include <string.h>

#include "cache.h"
#include "checked.h"
#include "compress.h"
#include "forward.h"
#include "geometry.h"

/* New compressed tokens per phi call during an append: bounds the gather
 * buffer to about COMPRESS_RUN * d tokens. */
enum { COMPRESS_RUN = 256 };

static size_t dtype_size(nsa_dtype dtype)
{
    return dtype == NSA_DTYPE_BF16 ? 2 : 4;
}

/* fp32 to bf16, rounding to nearest even; NaN stays NaN. */
static uint16_t bf16_from_f32(float x)
{
    uint32_t bits;
    memcpy(&bits, &x, sizeof bits);
    if ((bits & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((bits >> 16) | 0x40u);
    bits += 0x7fffu + ((bits >> 16) & 1u);
    return (uint16_t)(bits >> 16);
}

static void store(void *base, nsa_dtype dtype, size_t index, float value)
{
    if (dtype == NSA_DTYPE_BF16)
        ((uint16_t *)base)[index] = bf16_from_f32(value);
    else
        ((float *)base)[index] = value;
}

/* Elements of one key panel: [dim][16] floats, or bf16 in pairs of
 * channels (ukernels.h). */
static int64_t panel_size(nsa_dtype dtype, int64_t dim)
{
    return dtype == NSA_DTYPE_BF16 ? (int64_t)nsa_bf16_panel_words((size_t)dim)
                                   : dim * NSA_PANEL;
}

/* Value rows kept per head for `rows` tokens: bf16 rows hold pairs of
 * tokens (ukernels.h), so their count is rounded up to even. */
static int64_t value_rows(nsa_dtype dtype, int64_t rows)
{
    return dtype == NSA_DTYPE_BF16 ? rows + rows % 2 : rows;
}

/* Where channel c of key `pos` sits among one head's panels. */
static size_t key_at(nsa_dtype dtype, int64_t dim, int64_t pos, int64_t c)
{
    return dtype == NSA_DTYPE_BF16
               ? nsa_bf16_key_at((size_t)dim, (size_t)pos, (size_t)c)
               : (size_t)((pos / NSA_PANEL * dim + c) * NSA_PANEL + pos % NSA_PANEL);
}

/* Where channel c of token `pos` sits among one head's value rows. */
static size_t value_at(nsa_dtype dtype, int64_t dim, int64_t pos, int64_t c)
{
    return dtype == NSA_DTYPE_BF16 ? nsa_bf16_value_at((size_t)dim, (size_t)pos, (size_t)c)
                                   : (size_t)(pos * dim + c);
}

/* Where head h starts in a store of head_panels key panels, or of
 * head_rows value rows, per head. */
static size_t key_head(nsa_dtype dtype, int64_t head_panels, int64_t dim, int64_t h)
{
    return (size_t)(h * head_panels * panel_size(dtype, dim));
}

static size_t value_head(nsa_dtype dtype, int64_t head_rows, int64_t dim, int64_t h)
{
    return (size_t)(h * value_rows(dtype, head_rows) * dim);
}

/* Key `pos` of head h (dim values) into the panel layout, value into rows. */
static void store_panel_key(void *panels, nsa_dtype dtype, int64_t head_panels, int64_t dim,
                            int64_t h, int64_t pos, const float *key)
{
    const size_t head = key_head(dtype, head_panels, dim, h);
    for (int64_t c = 0; c < dim; c++)
        store(panels, dtype, head + key_at(dtype, dim, pos, c), key[c]);
}

static void store_row(void *rows, nsa_dtype dtype, int64_t head_rows, int64_t dim, int64_t h,
                      int64_t pos, const float *value)
{
    const size_t head = value_head(dtype, head_rows, dim, h);
    for (int64_t c = 0; c < dim; c++)
        store(rows, dtype, head + value_at(dtype, dim, pos, c), value[c]);
}

/* Elements of a cache's four stores (keys, values, compressed keys,
 * compressed values) for `capacity` tokens; 0 when they overflow. */
enum { K, V, KC, VC };
static int store_counts(const nsa_config *cfg, nsa_dtype dtype, int64_t capacity,
                        int64_t counts[4])
{
    const int64_t hkv = cfg->num_kv_heads, dk = cfg->head_dim_qk, dv = cfg->head_dim_v;
    const int64_t compressed = nsa_num_compressed(cfg, capacity);
    return nsa_checked_mul3(hkv, nsa_panels_of(capacity), panel_size(dtype, dk), &counts[K]) &&
           nsa_checked_mul3(hkv, value_rows(dtype, capacity), dv, &counts[V]) &&
           nsa_checked_mul3(hkv, nsa_panels_of(compressed), panel_size(dtype, dk), &counts[KC]) &&
           nsa_checked_mul3(hkv, value_rows(dtype, compressed), dv, &counts[VC]);
}

nsa_keys nsa_cache_keys(const nsa_cache *cache, int64_t h, int compressed)
{
    const nsa_config *cfg = &cache->plan.cfg;
    const int64_t dk = cfg->head_dim_qk, dv = cfg->head_dim_v;
    const int64_t panels = compressed ? cache->panels_compressed : cache->panels;
    const int64_t rows = compressed ? cache->capacity_compressed : cache->capacity;
    const size_t k_off = key_head(cache->dtype, panels, dk, h),
                 v_off = value_head(cache->dtype, rows, dv, h);
    const void *k = compressed ? cache->kc : cache->k, *v = compressed ? cache->vc : cache->v;
    nsa_keys keys = {.ldv = (size_t)dv,
                     .count = compressed ? nsa_num_compressed(cfg, cache->length) : cache->length};
    if (cache->dtype == NSA_DTYPE_BF16) {
        keys.kp16 = (const uint16_t *)k + k_off;
        keys.v16 = (const uint16_t *)v + v_off;
    } else {
        keys.kp = (const float *)k + k_off;
        keys.v = (const float *)v + v_off;
    }
    return keys;
}

void nsa_cache_destroy(nsa_cache *cache)
{
    if (cache == NULL)
        return;
    free(cache->k);
    free(cache->v);
    free(cache->kc);
    free(cache->vc);
    free(cache->tail_k);
    free(cache->tail_v);
    free(cache);
}

/* calloc of count elements of size bytes, NULL on overflow. */
static void *zeroed(int64_t count, size_t size)
{
    size_t bytes;
    if (!nsa_checked_bytes(count, size, &bytes))
        return NULL;
    return calloc(bytes / size + 1, size);
}

nsa_status nsa_cache_create(const nsa_plan *plan, int64_t capacity, nsa_dtype dtype,
                            nsa_cache **cache)
{
    if (cache != NULL)
        *cache = NULL;
    if (plan == NULL)
        return NSA_ERROR_NULL_POINTER;
    nsa_context *ctx = plan->ctx;
    if (cache == NULL)
        return nsa_fail(ctx, NSA_ERROR_NULL_POINTER, "nsa_cache_create: cache is NULL");
    if (capacity < 1)
        return nsa_fail(ctx, NSA_ERROR_INVALID_DIMENSION,
                        "capacity is %lld but must be at least 1", (long long)capacity);
    if (dtype != NSA_DTYPE_F32 && dtype != NSA_DTYPE_BF16)
        return nsa_fail(ctx, NSA_ERROR_INVALID_ARGUMENT, "dtype is %d, not an nsa_dtype",
                        (int)dtype);
    if (!plan->cfg.causal)
        return nsa_fail(ctx, NSA_ERROR_INVALID_ARGUMENT,
                        "a KV cache needs a causal plan (decoding is causal)");
    const nsa_config *cfg = &plan->cfg;
    const int64_t hkv = cfg->num_kv_heads, dk = cfg->head_dim_qk, dv = cfg->head_dim_v;
    int64_t counts[4];
    if (!store_counts(cfg, dtype, capacity, counts))
        return nsa_fail(ctx, NSA_ERROR_SIZE_OVERFLOW,
                        "a cache of %lld tokens x %lld heads is too large to address",
                        (long long)capacity, (long long)hkv);

    nsa_cache *c = calloc(1, sizeof *c);
    if (c == NULL)
        return nsa_fail(ctx, NSA_ERROR_OUT_OF_MEMORY, "no memory for a cache");
    c->plan = *plan;
    c->dtype = dtype;
    c->capacity = capacity;
    c->capacity_compressed = nsa_num_compressed(cfg, capacity);
    c->panels = nsa_panels_of(capacity);
    c->panels_compressed = nsa_panels_of(c->capacity_compressed);
    const size_t size = dtype_size(dtype);
    c->k = zeroed(counts[K], size);
    c->v = zeroed(counts[V], size);
    c->kc = zeroed(counts[KC], size);
    c->vc = zeroed(counts[VC], size);
    c->tail_size = cfg->cmp_block - 1 + (dtype == NSA_DTYPE_BF16 ? NSA_CACHE_BF16_ROLLBACK : 0);
    c->tail_k = zeroed(c->tail_size * hkv * dk, sizeof(float));
    c->tail_v = zeroed(c->tail_size * hkv * dv, sizeof(float));
    if (!c->k || !c->v || !c->kc || !c->vc || !c->tail_k || !c->tail_v) {
        nsa_cache_destroy(c);
        return nsa_fail(ctx, NSA_ERROR_OUT_OF_MEMORY,
                        "no memory for a cache of %lld tokens", (long long)capacity);
    }
    *cache = c;
    return NSA_SUCCESS;
}

int64_t nsa_cache_length(const nsa_cache *cache)
{
    return cache == NULL ? 0 : cache->length;
}

int64_t nsa_cache_capacity(const nsa_cache *cache)
{
    return cache == NULL ? 0 : cache->capacity;
}

nsa_status nsa_cache_reset(nsa_cache *cache)
{
    if (cache == NULL)
        return NSA_ERROR_NULL_POINTER;
    /* Stale panel slots past the new length must read as zero again, and so
     * must stale bf16 values (the other token of a pair row is multiplied
     * by zero, which only a finite value survives). */
    const size_t size = dtype_size(cache->dtype);
    int64_t counts[4];
    (void)store_counts(&cache->plan.cfg, cache->dtype, cache->capacity, counts); /* fit at create */
    memset(cache->k, 0, (size_t)counts[K] * size);
    memset(cache->kc, 0, (size_t)counts[KC] * size);
    if (cache->dtype == NSA_DTYPE_BF16) {
        memset(cache->v, 0, (size_t)counts[V] * size);
        memset(cache->vc, 0, (size_t)counts[VC] * size);
    }
    cache->length = 0;
    cache->tail_count = 0;
    return NSA_SUCCESS;
}

/* Zeroes tokens [from, to) of every head of one key (panels) and value
 * (rows) store, as a reset leaves them. */
static void clear_tokens(const nsa_cache *cache, void *panels, int64_t head_panels, void *rows,
                         int64_t head_rows, int64_t from, int64_t to)
{
    const nsa_config *cfg = &cache->plan.cfg;
    const nsa_dtype dtype = cache->dtype;
    const int64_t dk = cfg->head_dim_qk, dv = cfg->head_dim_v;
    for (int64_t h = 0; h < cfg->num_kv_heads; h++) {
        const size_t keys = key_head(dtype, head_panels, dk, h);
        const size_t values = value_head(dtype, head_rows, dv, h);
        for (int64_t pos = from; pos < to; pos++) {
            for (int64_t c = 0; c < dk; c++)
                store(panels, dtype, keys + key_at(dtype, dk, pos, c), 0.0f);
            for (int64_t c = 0; c < dv; c++)
                store(rows, dtype, values + value_at(dtype, dv, pos, c), 0.0f);
        }
    }
}

/* An fp32 cache's tail read back from its storage: the last tail_count
 * tokens before its length. */
static void reload_tail(nsa_cache *cache)
{
    const nsa_config *cfg = &cache->plan.cfg;
    const int64_t hkv = cfg->num_kv_heads, dk = cfg->head_dim_qk, dv = cfg->head_dim_v;
    const int64_t first = cache->length - cache->tail_count;
    for (int64_t h = 0; h < hkv; h++) {
        const nsa_keys keys = nsa_cache_keys(cache, h, 0);
        for (int64_t i = 0; i < cache->tail_count; i++) {
            for (int64_t c = 0; c < dk; c++)
                cache->tail_k[(i * hkv + h) * dk + c] =
                    keys.kp[key_at(NSA_DTYPE_F32, dk, first + i, c)];
            for (int64_t c = 0; c < dv; c++)
                cache->tail_v[(i * hkv + h) * dv + c] =
                    keys.v[value_at(NSA_DTYPE_F32, dv, first + i, c)];
        }
    }
}

nsa_status nsa_cache_truncate(nsa_cache *cache, int64_t length)
{
    if (cache == NULL)
        return NSA_ERROR_NULL_POINTER;
    const nsa_config *cfg = &cache->plan.cfg;
    nsa_context *ctx = cache->plan.ctx;
    const int64_t old = cache->length, dropped = old - length;
    if (length < 0 || length > old)
        return nsa_fail(ctx, NSA_ERROR_INVALID_DIMENSION,
                        "nsa_cache_truncate: length %lld is outside 0 .. %lld, the cache's length",
                        (long long)length, (long long)old);
    /* a bf16 cache's tail must still hold the l - 1 tokens before length */
    const int64_t needed = length < cfg->cmp_block - 1 ? length : cfg->cmp_block - 1;
    if (cache->dtype == NSA_DTYPE_BF16 && cache->tail_count - dropped < needed) {
        const int64_t most = cache->tail_count - (cfg->cmp_block - 1);
        return nsa_fail(ctx, NSA_ERROR_UNSUPPORTED,
                        "nsa_cache_truncate: this bf16 cache of %lld tokens can drop at most "
                        "%lld now (it keeps fp32 copies of its newest tokens only), not %lld",
                        (long long)old, (long long)most, (long long)dropped);
    }
    clear_tokens(cache, cache->k, cache->panels, cache->v, cache->capacity, length, old);
    clear_tokens(cache, cache->kc, cache->panels_compressed, cache->vc,
                 cache->capacity_compressed, nsa_num_compressed(cfg, length),
                 nsa_num_compressed(cfg, old));
    cache->length = length;
    if (cache->dtype == NSA_DTYPE_BF16) {
        cache->tail_count -= dropped; /* its first rows are the kept tokens */
    } else {
        cache->tail_count = length < cache->tail_size ? length : cache->tail_size;
        reload_tail(cache);
    }
    return NSA_SUCCESS;
}

/* Raw token `pos` (fp32, all heads) during an append of `fresh` tokens
 * starting at position `old`: from the tail if it predates the append. */
static const float *raw_token(const nsa_cache *cache, const float *tail, const float *fresh,
                              int64_t old, int64_t pos, int64_t dim)
{
    const int64_t hkv = cache->plan.cfg.num_kv_heads;
    if (pos >= old)
        return fresh + (size_t)((pos - old) * hkv * dim);
    return tail + (size_t)((pos - (old - cache->tail_count)) * hkv * dim);
}

/* Compresses the windows [first, first + count) of one tensor (K: keys = 1)
 * and stores them; old is the length before the append. */
static void compress_run(nsa_cache *cache, const nsa_compress_params *params, int keys,
                         const float *fresh, int64_t old, int64_t first, int64_t count,
                         float *gather, float *out, float *work)
{
    const nsa_config *cfg = &cache->plan.cfg;
    const int64_t hkv = cfg->num_kv_heads, dim = keys ? cfg->head_dim_qk : cfg->head_dim_v;
    const int64_t start = first * cfg->cmp_stride;
    const int64_t rows = (count - 1) * cfg->cmp_stride + cfg->cmp_block;
    const float *tail = keys ? cache->tail_k : cache->tail_v;
    for (int64_t p = 0; p < rows; p++)
        memcpy(gather + (size_t)(p * hkv * dim), raw_token(cache, tail, fresh, old, start + p, dim),
               (size_t)(hkv * dim) * sizeof(float));
    for (int64_t h = 0; h < hkv; h++) {
        nsa_compress(&cache->plan, params, (int32_t)dim, (int32_t)h, gather + (size_t)(h * dim),
                     (size_t)(hkv * dim), 0, count, out, work);
        for (int64_t i = 0; i < count; i++) {
            const float *y = out + (size_t)(i * dim);
            if (keys)
                store_panel_key(cache->kc, cache->dtype, cache->panels_compressed, dim, h,
                                first + i, y);
            else
                store_row(cache->vc, cache->dtype, cache->capacity_compressed, dim, h, first + i,
                          y);
        }
    }
}

/* The tail's token count after an append of count tokens: as many as fit,
 * from those it holds and the new ones. */
static int64_t tail_after(const nsa_cache *cache, int64_t count)
{
    const int64_t have = cache->tail_count + count;
    return have < cache->tail_size ? have : cache->tail_size;
}

/* Keeps the last `kept` (tail_after) raw tokens of one tensor in its tail
 * (tail_count still counts the tokens it held before the append). */
static void update_tail(const nsa_cache *cache, float *tail, const float *fresh, int64_t old,
                        int64_t count, int64_t kept, int64_t dim)
{
    const int64_t row = cache->plan.cfg.num_kv_heads * dim;
    const int64_t length = old + count, first = length - kept;
    /* Rows move towards the front, so copying in order never overwrites a
     * row before it is read. */
    for (int64_t p = first; p < length; p++)
        memmove(tail + (size_t)((p - first) * row), raw_token(cache, tail, fresh, old, p, dim),
                (size_t)row * sizeof(float));
}

nsa_status nsa_cache_append(nsa_cache *cache, int64_t count, const float *k, const float *v,
                            const nsa_compress_params *cmp_k, const nsa_compress_params *cmp_v)
{
    if (cache == NULL)
        return NSA_ERROR_NULL_POINTER;
    const nsa_plan *plan = &cache->plan;
    const nsa_config *cfg = &plan->cfg;
    nsa_context *ctx = plan->ctx;
    if (count < 0)
        return nsa_fail(ctx, NSA_ERROR_INVALID_DIMENSION, "count is %lld but must be >= 0",
                        (long long)count);
    if (count > cache->capacity - cache->length)
        return nsa_fail(ctx, NSA_ERROR_CAPACITY,
                        "appending %lld tokens to a cache holding %lld of %lld", (long long)count,
                        (long long)cache->length, (long long)cache->capacity);
    if (count > 0 && (k == NULL || v == NULL))
        return nsa_fail(ctx, NSA_ERROR_NULL_POINTER, "nsa_cache_append: %s is NULL",
                        k == NULL ? "k" : "v");
    nsa_status status = nsa_check_compress_params(plan, cmp_k, "cmp_k");
    if (status == NSA_SUCCESS)
        status = nsa_check_compress_params(plan, cmp_v, "cmp_v");
    if (status != NSA_SUCCESS || count == 0)
        return status;

    const int64_t hkv = cfg->num_kv_heads, dk = cfg->head_dim_qk, dv = cfg->head_dim_v;
    const int64_t dmax = dk > dv ? dk : dv, old = cache->length;
    const int64_t first = nsa_num_compressed(cfg, old);
    const int64_t fresh = nsa_num_compressed(cfg, old + count) - first;
    const int64_t run = fresh < COMPRESS_RUN ? fresh : COMPRESS_RUN;
    const size_t gather_rows = (size_t)((run - 1) * cfg->cmp_stride + cfg->cmp_block);
    const size_t work_floats = nsa_compress_workspace(cfg, (int32_t)dmax);
    float *gather = NULL, *out = NULL, *work = NULL;
    if (fresh > 0) {
        gather = malloc(gather_rows * (size_t)(hkv * dmax) * sizeof(float));
        out = malloc((size_t)(run * dmax) * sizeof(float));
        work = malloc(work_floats * sizeof(float));
        if (gather == NULL || out == NULL || work == NULL) {
            free(gather);
            free(out);
            free(work);
            return nsa_fail(ctx, NSA_ERROR_OUT_OF_MEMORY,
                            "no memory to compress %lld new windows", (long long)fresh);
        }
    }

    for (int64_t i = 0; i < count; i++)
        for (int64_t h = 0; h < hkv; h++) {
            store_panel_key(cache->k, cache->dtype, cache->panels, dk, h, old + i,
                            k + (size_t)((i * hkv + h) * dk));
            store_row(cache->v, cache->dtype, cache->capacity, dv, h, old + i,
                      v + (size_t)((i * hkv + h) * dv));
        }
    for (int64_t i = first; i < first + fresh; i += run) {
        const int64_t n = first + fresh - i < run ? first + fresh - i : run;
        compress_run(cache, cmp_k, 1, k, old, i, n, gather, out, work);
        compress_run(cache, cmp_v, 0, v, old, i, n, gather, out, work);
    }
    const int64_t kept = tail_after(cache, count);
    update_tail(cache, cache->tail_k, k, old, count, kept, dk);
    update_tail(cache, cache->tail_v, v, old, count, kept, dv);
    cache->tail_count = kept;
    cache->length = old + count;
    free(gather);
    free(out);
    free(work);
    return NSA_SUCCESS;
}
