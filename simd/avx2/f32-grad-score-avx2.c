/* SPDX-License-Identifier: MIT */
/*
 * f32-grad-score-avx2.c — score gradients of the backward's query side
 * (contract in src/ukernels.h), AVX2: dS = coef P o (dP - dot), 8 columns
 * at a time, the last nk % 8 through masked loads and stores.
 */
#include "avx2-helpers.h"
#include "ukernels.h"

void nsa_f32_grad_score_ukernel__avx2(size_t m, size_t nk, const float *coef, const float *dot,
                                      const float *p, size_t ldp, float *dp, size_t lddp)
{
    for (size_t r = 0; r < m; r++) {
        const __m256 c = _mm256_set1_ps(coef[r]), d = _mm256_set1_ps(dot[r]);
        const float *pr = p + r * ldp;
        float *dpr = dp + r * lddp;
        size_t j = 0;
        for (; j + 8 <= nk; j += 8) {
            const __m256 x = _mm256_sub_ps(_mm256_loadu_ps(dpr + j), d);
            const __m256 cp = _mm256_mul_ps(c, _mm256_loadu_ps(pr + j));
            _mm256_storeu_ps(dpr + j, _mm256_mul_ps(cp, x));
        }
        if (j < nk) {
            const __m256i mask = nsa_avx2_mask_first(nk - j);
            const __m256 x = _mm256_sub_ps(_mm256_maskload_ps(dpr + j, mask), d);
            const __m256 cp = _mm256_mul_ps(c, _mm256_maskload_ps(pr + j, mask));
            _mm256_maskstore_ps(dpr + j, mask, _mm256_mul_ps(cp, x));
        }
    }
}
