/* SPDX-License-Identifier: MIT */
/*
 * f32-pool-avx2.c — weighted pooling of l rows (mean and weighted phi,
 * and the selection's head sums; contract in src/ukernels.h), AVX2 + FMA.
 * Columns go in panels of 64 (8 accumulators) walked row by row, so each
 * row is read as one contiguous span (the head sums pool G rows of
 * probabilities that have often left L2); the rest of dim goes 8 columns
 * at a time down the rows, the last dim % 8 masked. Each column still sums
 * its rows in order 0 .. l-1, one FMA each.
 */
#include "avx2-helpers.h"
#include "ukernels.h"

enum { PANEL_VECTORS = 8, PANEL = 8 * PANEL_VECTORS };

static void pool_panel(size_t l, const float *weight, const float *x, size_t ldx, float *y)
{
    __m256 sum[PANEL_VECTORS];
#pragma GCC unroll 8
    for (size_t v = 0; v < PANEL_VECTORS; v++)
        sum[v] = _mm256_setzero_ps();
    for (size_t j = 0; j < l; j++) {
        const __m256 w = _mm256_set1_ps(weight[j]);
#pragma GCC unroll 8
        for (size_t v = 0; v < PANEL_VECTORS; v++)
            sum[v] = _mm256_fmadd_ps(w, _mm256_loadu_ps(x + j * ldx + 8 * v), sum[v]);
    }
#pragma GCC unroll 8
    for (size_t v = 0; v < PANEL_VECTORS; v++)
        _mm256_storeu_ps(y + 8 * v, sum[v]);
}

void nsa_f32_pool_ukernel__avx2(size_t l, size_t dim, const float *weight, const float *x,
                                size_t ldx, float *y)
{
    size_t c = 0;
    for (; c + PANEL <= dim; c += PANEL)
        pool_panel(l, weight, x + c, ldx, y + c);
    for (; c < dim; c += 8) {
        const __m256i mask = nsa_avx2_mask_first(dim - c < 8 ? dim - c : 8);
        __m256 sum = _mm256_setzero_ps();
        for (size_t j = 0; j < l; j++)
            sum = _mm256_fmadd_ps(_mm256_set1_ps(weight[j]),
                                  _mm256_maskload_ps(x + j * ldx + c, mask), sum);
        _mm256_maskstore_ps(y + c, mask, sum);
    }
}
