/* SPDX-License-Identifier: MIT */
/*
 * f32-grad-prob-avx2.c — the backward's probabilities (contract in
 * src/ukernels.h), AVX2 + FMA: one exp pass per row, a lane mask selecting
 * the row's columns (the rest become 0), and the row sum of P o dP in the
 * same pass. s and dp are loaded under masks, so nothing past column nk or
 * outside a row's columns of dp is read.
 */
#include "avx2-helpers.h"
#include "ukernels.h"

/* Lanes of columns j .. j+7 that lie in [first, last). */
static inline __m256i columns_inside(size_t j, size_t first, size_t last)
{
    const __m256i index = _mm256_add_epi32(_mm256_set1_epi32((int)j),
                                           _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    return _mm256_andnot_si256(_mm256_cmpgt_epi32(_mm256_set1_epi32((int)first), index),
                               _mm256_cmpgt_epi32(_mm256_set1_epi32((int)last), index));
}

void nsa_f32_grad_prob_ukernel__avx2(size_t m, size_t nk, const int32_t *lo, const int32_t *hi,
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
        const __m256 vlse = _mm256_set1_ps(lse[r]);
        __m256 sum = _mm256_setzero_ps();
        for (size_t j = 0; j < nk; j += 8) {
            const __m256i tail = nsa_avx2_mask_first(nk - j < 8 ? nk - j : 8);
            const __m256i inside = _mm256_and_si256(columns_inside(j, first, last), tail);
            if (_mm256_testz_si256(inside, inside)) {
                _mm256_maskstore_ps(sr + j, tail, _mm256_setzero_ps());
                continue;
            }
            __m256 e = nsa_avx2_exp_ps(_mm256_sub_ps(_mm256_maskload_ps(sr + j, inside), vlse));
            e = _mm256_and_ps(e, _mm256_castsi256_ps(inside));
            _mm256_maskstore_ps(sr + j, tail, e);
            if (dpr != NULL)
                sum = _mm256_fmadd_ps(e, _mm256_maskload_ps(dpr + j, inside), sum);
        }
        if (dpr != NULL)
            dot[r] += nsa_avx2_hsum_ps(sum);
    }
}
