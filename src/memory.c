/* SPDX-License-Identifier: MIT */
/*
 * memory.c — the library's buffers (see memory.h). A large buffer of at
 * least HUGE bytes is aligned to 2 MiB and marked MADV_HUGEPAGE, which
 * transparent huge pages honour in their default "madvise" mode; smaller
 * ones are only cache-line aligned.
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

float *nsa_alloc_floats(int64_t count)
{
    return malloc((size_t)count * sizeof(float) + sizeof(float));
}

float **nsa_worker_scratch_alloc(int32_t workers, size_t floats)
{
    float **scratch = calloc((size_t)workers, sizeof *scratch);
    if (scratch == NULL)
        return NULL;
    for (int32_t w = 0; w < workers; w++)
        if ((scratch[w] = nsa_alloc_floats((int64_t)floats)) == NULL) {
            nsa_worker_scratch_free(scratch, workers);
            return NULL;
        }
    return scratch;
}

void nsa_worker_scratch_free(float **scratch, int32_t workers)
{
    if (scratch == NULL)
        return;
    for (int32_t w = 0; w < workers; w++)
        free(scratch[w]);
    free(scratch);
}
