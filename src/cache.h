/* SPDX-License-Identifier: MIT */
/*
 * cache.h — the inside of nsa_cache, shared by cache.c (growing it) and
 * decode.c (reading it).
 *
 * Per KV head, keys are stored as panels of NSA_PANEL keys ([Dk][16], the
 * layout the qk kernel reads) and values as rows, both in the cache's dtype,
 * so a selected block of l' keys is l'/16 consecutive panels and l'
 * consecutive value rows: two sequential reads. bf16 panels and rows hold
 * pairs (two channels of a key side by side, two tokens per value row: the
 * layout of ukernels.h), with the value rows per head rounded up to even.
 * Compressed keys and values use the same layout. Unused panel slots stay
 * zero, so whole panels are always safe to read.
 */
#ifndef NSA_CACHE_H
#define NSA_CACHE_H

#include "attend.h"
#include "plan.h"

struct nsa_cache {
    nsa_plan plan; /* a copy: configuration, kernels, context */
    nsa_dtype dtype;
    int64_t capacity, length;
    int64_t capacity_compressed; /* C(capacity) */
    int64_t panels, panels_compressed; /* per KV head */
    void *k, *v;   /* [Hkv][panels][Dk][16], [Hkv][capacity][Dv] (fp32) */
    void *kc, *vc; /* [Hkv][panels_compressed][Dk][16], [Hkv][capacity_compressed][Dv] */
    /* The last tail_count raw tokens, fp32, [tail_size][Hkv][D]: at least
     * min(length, l - 1) of them, the start of any compression window an
     * append has yet to complete. A bf16 cache keeps NSA_CACHE_BF16_ROLLBACK
     * more, the fp32 copies nsa_cache_truncate needs (an fp32 cache reads
     * them back from its own storage). */
    float *tail_k, *tail_v;
    int64_t tail_size, tail_count;
};

/* The raw (compressed = 0) or compressed keys of KV head h, as the
 * attention kernels read them. */
nsa_keys nsa_cache_keys(const nsa_cache *cache, int64_t h, int compressed);

#endif /* NSA_CACHE_H */
