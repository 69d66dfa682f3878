/* SPDX-License-Identifier: MIT */
/*
 * f32-grad-prob-avx512.c — the backward's probabilities (contract in
 * src/ukernels.h), AVX-512: one exp pass per row whose lane mask both
 * selects the row's columns and zeroes the rest, with the row sum of
 * P o dP accumulated in the same pass. dp is loaded under the same mask, so
 * nothing outside a row's columns is read; tails are masked.
 */
#include "avx512-helpers.h"
#include "ukernels.h"

/* Lanes of columns j .. j+15 that lie in [first, last). */
static inline __mmask16 columns_inside(size_t j, size_t first, size_t last)
{
    const __m512i index = _mm512_add_epi32(_mm512_set1_epi32((int)j),
                                           _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10,
                                                             11, 12, 13, 14, 15));
    return _mm512_cmpge_epi32_mask(index, _mm512_set1_epi32((int)first)) &
           _mm512_cmplt_epi32_mask(index, _mm512_set1_epi32((int)last));
}

void nsa_f32_grad_prob_ukernel__avx512(size_t m, size_t nk, const int32_t *lo, const int32_t *hi,
                                       const float *lse, float *s, size_t lds, const float *dp,
                                       size_t lddp, float *dot)
{
    for (size_t r = 0; r < m; r++) {
        float *sr = s + r * lds;
        const float *dpr = dp != NULL ? dp + r * lddp : NULL;
        size_t first = lo[r] > 0 ? (size_t)lo[r] : 0;
        size_t last = hi[r] < (int32_t)nk - 1 ? (size_t)(hi[r] + 1) : nk; /* one past */
        if (lo[r] > hi[r] || first >= last)
            first = last = 0; /* zeroes the row */
        const __m512 vlse = _mm512_set1_ps(lse[r]);
        __m512 sum = _mm512_setzero_ps();
        for (size_t j = 0; j < nk; j += 16) {
            const __mmask16 tail = nsa_avx512_mask_first(nk - j);
            const __mmask16 inside = columns_inside(j, first, last) & tail;
            if (inside == 0) {
                _mm512_mask_storeu_ps(sr + j, tail, _mm512_setzero_ps());
                continue;
            }
            const __m512 x = _mm512_maskz_loadu_ps(inside, sr + j);
            __m512 e = nsa_avx512_exp_ps(_mm512_sub_ps(x, vlse));
            e = _mm512_maskz_mov_ps(inside, e);
            _mm512_mask_storeu_ps(sr + j, tail, e);
            if (dpr != NULL)
                sum = _mm512_fmadd_ps(e, _mm512_maskz_loadu_ps(inside, dpr + j), sum);
        }
        if (dpr != NULL)
            dot[r] += _mm512_reduce_add_ps(sum);
    }
}
