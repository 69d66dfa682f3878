/* SPDX-License-Identifier: MIT */
/*
 * memory.h — allocation of the library's large buffers (packed keys and
 * values, KV caches): cache-line aligned, and on Linux backed by huge pages
 * where the system allows it, because selected blocks are scattered over
 * the whole sequence and 4 KiB pages make every block a handful of TLB
 * misses.
 */
#ifndef NSA_MEMORY_H
#define NSA_MEMORY_H

#include <stddef.h>

/* bytes of uninitialised memory (zeroed if zero != 0), or NULL. Free with
 * nsa_free_large. */
void *nsa_alloc_large(size_t bytes, int zero);
void nsa_free_large(void *p);

#endif /* NSA_MEMORY_H */
