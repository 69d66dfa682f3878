/* SPDX-License-Identifier: MIT */
/*
 * f32-pool-avx2.c — weighted pooling of one compression window (mean and
 * weighted phi, contract in src/ukernels.h), AVX2 + FMA: 8 columns at a
 * time down the l rows of the window, the last dim % 8 columns masked.
 */
#include "avx2-helpers.h"
#include "ukernels.h"

void nsa_f32_pool_ukernel__avx2(size_t l, size_t dim, const float *weight, const float *x,
                                size_t ldx, float *y)
{
    for (size_t c = 0; c < dim; c += 8) {
        const __m256i mask = nsa_avx2_mask_first(dim - c < 8 ? dim - c : 8);
        __m256 sum = _mm256_setzero_ps();
        for (size_t j = 0; j < l; j++)
            sum = _mm256_fmadd_ps(_mm256_set1_ps(weight[j]),
                                  _mm256_maskload_ps(x + j * ldx + c, mask), sum);
        _mm256_maskstore_ps(y + c, mask, sum);
    }
}
