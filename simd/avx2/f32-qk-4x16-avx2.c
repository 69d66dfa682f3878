/* SPDX-License-Identifier: MIT */
/*
 * f32-qk-4x16-avx2.c — scores of query rows against one key panel at a time
 * (contract in src/ukernels.h), AVX2 + FMA.
 *
 * Tile: 4 rows x 16 keys in 8 accumulators; per channel, 2 loads of the
 * panel and 4 broadcasts of q feed 8 FMAs. A panel (16 keys x dk) stays in
 * L1 while every row block of the tile passes over it. Rows past the last
 * multiple of 4 go through a 1-row tile. No tail in keys: panels are whole.
 * Accumulation order is fixed (channel 0 first), independent of threads.
 * The next hint goes with the first row block: one line of the next panel
 * per channel.
 */
#include "avx2-helpers.h"
#include "ukernels.h"

static inline void qk_4x16(size_t dk, __m256 scale, const float *q, size_t ldq,
                           const float *panel, float *s, size_t lds, const float *next)
{
    __m256 c00 = _mm256_setzero_ps(), c01 = _mm256_setzero_ps();
    __m256 c10 = _mm256_setzero_ps(), c11 = _mm256_setzero_ps();
    __m256 c20 = _mm256_setzero_ps(), c21 = _mm256_setzero_ps();
    __m256 c30 = _mm256_setzero_ps(), c31 = _mm256_setzero_ps();
    const float *q0 = q, *q1 = q + ldq, *q2 = q + 2 * ldq, *q3 = q + 3 * ldq;
    for (size_t c = 0; c < dk; c++) {
        const __m256 k0 = _mm256_loadu_ps(panel + c * NSA_PANEL);
        const __m256 k1 = _mm256_loadu_ps(panel + c * NSA_PANEL + 8);
        if (next != NULL)
            nsa_prefetch_line(next + c * NSA_PANEL);
        __m256 b = _mm256_broadcast_ss(q0 + c);
        c00 = _mm256_fmadd_ps(b, k0, c00);
        c01 = _mm256_fmadd_ps(b, k1, c01);
        b = _mm256_broadcast_ss(q1 + c);
        c10 = _mm256_fmadd_ps(b, k0, c10);
        c11 = _mm256_fmadd_ps(b, k1, c11);
        b = _mm256_broadcast_ss(q2 + c);
        c20 = _mm256_fmadd_ps(b, k0, c20);
        c21 = _mm256_fmadd_ps(b, k1, c21);
        b = _mm256_broadcast_ss(q3 + c);
        c30 = _mm256_fmadd_ps(b, k0, c30);
        c31 = _mm256_fmadd_ps(b, k1, c31);
    }
    _mm256_storeu_ps(s, _mm256_mul_ps(scale, c00));
    _mm256_storeu_ps(s + 8, _mm256_mul_ps(scale, c01));
    _mm256_storeu_ps(s + lds, _mm256_mul_ps(scale, c10));
    _mm256_storeu_ps(s + lds + 8, _mm256_mul_ps(scale, c11));
    _mm256_storeu_ps(s + 2 * lds, _mm256_mul_ps(scale, c20));
    _mm256_storeu_ps(s + 2 * lds + 8, _mm256_mul_ps(scale, c21));
    _mm256_storeu_ps(s + 3 * lds, _mm256_mul_ps(scale, c30));
    _mm256_storeu_ps(s + 3 * lds + 8, _mm256_mul_ps(scale, c31));
}

static inline void qk_1x16(size_t dk, __m256 scale, const float *q, const float *panel,
                           float *s, const float *next)
{
    __m256 c0 = _mm256_setzero_ps(), c1 = _mm256_setzero_ps();
    for (size_t c = 0; c < dk; c++) {
        if (next != NULL)
            nsa_prefetch_line(next + c * NSA_PANEL);
        const __m256 b = _mm256_broadcast_ss(q + c);
        c0 = _mm256_fmadd_ps(b, _mm256_loadu_ps(panel + c * NSA_PANEL), c0);
        c1 = _mm256_fmadd_ps(b, _mm256_loadu_ps(panel + c * NSA_PANEL + 8), c1);
    }
    _mm256_storeu_ps(s, _mm256_mul_ps(scale, c0));
    _mm256_storeu_ps(s + 8, _mm256_mul_ps(scale, c1));
}

void nsa_f32_qk_ukernel_4x16__avx2(size_t m, size_t np, size_t dk, float scale, const float *q,
                                   size_t ldq, const float *kp, float *s, size_t lds,
                                   const float *next)
{
    const __m256 vscale = _mm256_set1_ps(scale);
    for (size_t p = 0; p < np; p++) {
        const float *panel = kp + p * dk * NSA_PANEL;
        const float *hint = next != NULL ? next + p * dk * NSA_PANEL : NULL; /* first row block */
        float *sp = s + p * NSA_PANEL;
        size_t r = 0;
        for (; r + 4 <= m; r += 4, hint = NULL)
            qk_4x16(dk, vscale, q + r * ldq, ldq, panel, sp + r * lds, lds, hint);
        for (; r < m; r++, hint = NULL)
            qk_1x16(dk, vscale, q + r * ldq, panel, sp + r * lds, hint);
    }
}
