/* SPDX-License-Identifier: MIT */
/*
 * f32-pool-avx512.c — weighted pooling of l rows (mean and weighted phi,
 * and the selection's head sums; contract in src/ukernels.h), AVX-512.
 * Columns go in panels of 256 (16 accumulators) walked row by row, so each
 * row is one contiguous read: the head sums pool G rows of 256
 * probabilities that have often left L2, and one stream at a time
 * prefetches better than G at once. The rest of dim goes 16 columns at a
 * time down the rows, the last dim % 16 masked. Each column still sums
 * its rows in order 0 .. l-1, one FMA each.
 */
#include "avx512-helpers.h"
#include "ukernels.h"

enum { PANEL_VECTORS = 16, PANEL = 16 * PANEL_VECTORS };

static void pool_panel(size_t l, const float *weight, const float *x, size_t ldx, float *y)
{
    __m512 sum[PANEL_VECTORS];
#pragma GCC unroll 16
    for (size_t v = 0; v < PANEL_VECTORS; v++)
        sum[v] = _mm512_setzero_ps();
    for (size_t j = 0; j < l; j++) {
        const __m512 w = _mm512_set1_ps(weight[j]);
#pragma GCC unroll 16
        for (size_t v = 0; v < PANEL_VECTORS; v++)
            sum[v] = _mm512_fmadd_ps(w, _mm512_loadu_ps(x + j * ldx + 16 * v), sum[v]);
    }
#pragma GCC unroll 16
    for (size_t v = 0; v < PANEL_VECTORS; v++)
        _mm512_storeu_ps(y + 16 * v, sum[v]);
}

void nsa_f32_pool_ukernel__avx512(size_t l, size_t dim, const float *weight, const float *x,
                                  size_t ldx, float *y)
{
    size_t c = 0;
    for (; c + PANEL <= dim; c += PANEL)
        pool_panel(l, weight, x + c, ldx, y + c);
    for (; c < dim; c += 16) {
        const __mmask16 mask = nsa_avx512_mask_first(dim - c);
        __m512 sum = _mm512_setzero_ps();
        for (size_t j = 0; j < l; j++)
            sum = _mm512_fmadd_ps(_mm512_set1_ps(weight[j]),
                                  _mm512_maskz_loadu_ps(mask, x + j * ldx + c), sum);
        _mm512_mask_storeu_ps(y + c, mask, sum);
    }
}
