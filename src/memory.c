/* SPDX-License-Identifier: MIT */
/*
 * memory.c — large, aligned, huge-page backed buffers (see memory.h). A
 * buffer of at least HUGE bytes is aligned to 2 MiB and marked
 * MADV_HUGEPAGE, which transparent huge pages honour in their default
 * "madvise" mode; smaller ones are only cache-line aligned.
 */
#include <stdlib.h>
#include <string.h>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "memory.h"

enum { LINE = 64, HUGE = 2 << 20 };

void *nsa_alloc_large(size_t bytes, int zero)
{
    void *p = NULL;
    const size_t alignment = bytes >= HUGE ? HUGE : LINE;
    if (bytes == 0)
        bytes = LINE;
    if (posix_memalign(&p, alignment, bytes) != 0)
        return NULL;
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    if (bytes >= HUGE)
        (void)madvise(p, bytes, MADV_HUGEPAGE); /* a refusal only costs speed */
#endif
    if (zero)
        memset(p, 0, bytes);
    return p;
}

void nsa_free_large(void *p)
{
    free(p);
}
