/* SPDX-License-Identifier: MIT */
/*
 * f32-grad-score-avx512.c — score gradients of the backward's query side
 * (contract in src/ukernels.h), AVX-512: dS = coef P o (dP - dot), 16
 * columns at a time, the last nk % 16 under a lane mask.
 */
#include "avx512-helpers.h"
#include "ukernels.h"

void nsa_f32_grad_score_ukernel__avx512(size_t m, size_t nk, const float *coef, const float *dot,
                                        const float *p, size_t ldp, float *dp, size_t lddp)
{
    for (size_t r = 0; r < m; r++) {
        const __m512 c = _mm512_set1_ps(coef[r]), d = _mm512_set1_ps(dot[r]);
        const float *pr = p + r * ldp;
        float *dpr = dp + r * lddp;
        size_t j = 0;
        for (; j + 16 <= nk; j += 16) {
            const __m512 x = _mm512_sub_ps(_mm512_loadu_ps(dpr + j), d);
            const __m512 cp = _mm512_mul_ps(c, _mm512_loadu_ps(pr + j));
            _mm512_storeu_ps(dpr + j, _mm512_mul_ps(cp, x));
        }
        if (j < nk) {
            const __mmask16 mask = nsa_avx512_mask_first(nk - j);
            const __m512 x = _mm512_sub_ps(_mm512_maskz_loadu_ps(mask, dpr + j), d);
            const __m512 cp = _mm512_mul_ps(c, _mm512_maskz_loadu_ps(mask, pr + j));
            _mm512_mask_storeu_ps(dpr + j, mask, _mm512_mul_ps(cp, x));
        }
    }
}
