/* SPDX-License-Identifier: MIT */
/*
 * f32-pool-avx512.c — weighted pooling of one compression window (mean and
 * weighted phi, contract in src/ukernels.h), AVX-512: 16 columns at a time
 * down the l rows of the window, the last dim % 16 columns masked.
 */
#include "avx512-helpers.h"
#include "ukernels.h"

void nsa_f32_pool_ukernel__avx512(size_t l, size_t dim, const float *weight, const float *x,
                                  size_t ldx, float *y)
{
    for (size_t c = 0; c < dim; c += 16) {
        const __mmask16 mask = nsa_avx512_mask_first(dim - c);
        __m512 sum = _mm512_setzero_ps();
        for (size_t j = 0; j < l; j++)
            sum = _mm512_fmadd_ps(_mm512_set1_ps(weight[j]),
                                  _mm512_maskz_loadu_ps(mask, x + j * ldx + c), sum);
        _mm512_mask_storeu_ps(y + c, mask, sum);
    }
}
