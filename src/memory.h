/* SPDX-License-Identifier: MIT */
/*
 * memory.h — allocation of the library's buffers. The large ones (packed
 * keys and values, KV caches) are cache-line aligned, and on Linux backed
 * by huge pages where the system allows it, because selected blocks are
 * scattered over the whole sequence and 4 KiB pages make every block a
 * handful of TLB misses. The calls' float buffers and per-worker scratch
 * come from one place too.
 */
#ifndef NSA_MEMORY_H
#define NSA_MEMORY_H

#include <stddef.h>
#include <stdint.h>

/* bytes of uninitialised memory (zeroed if zero != 0), or NULL. Free with
 * nsa_free_large. */
void *nsa_alloc_large(size_t bytes, int zero);
void nsa_free_large(void *p);

/* count floats (uninitialised, count >= 0: never a zero-byte request), or
 * NULL. Free with free(). */
float *nsa_alloc_floats(int64_t count);

/* Scratch for the workers of one call: scratch[w] holds floats floats.
 * Only allocated here; each worker touches its own first, which places it
 * on the worker's NUMA node. NULL when out of memory (nothing left). */
float **nsa_worker_scratch_alloc(int32_t workers, size_t floats);
void nsa_worker_scratch_free(float **scratch, int32_t workers);

#endif /* NSA_MEMORY_H */
