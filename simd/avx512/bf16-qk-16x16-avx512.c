/* SPDX-License-Identifier: MIT */
/*
 * bf16-qk-16x16-avx512.c — scores of query rows against panel-packed bf16
 * keys (contract in src/ukernels.h), AVX-512.
 *
 * Tile: up to 16 rows x 1 panel (16 keys) in 16 accumulators; per channel,
 * one panel row of bf16 is widened to fp32 (2 instructions) and feeds one
 * FMA per row with q broadcast, so each key is widened once for 16 rows,
 * the group of a decode step at G = 16. Rows go 16, 8, 4, 2, 1 at a time.
 * Accumulation order is fixed (channel 0 first), independent of threads.
 */
#include "avx512-helpers.h"
#include "ukernels.h"

static inline __attribute__((always_inline)) void
qk_rows(const int rows, size_t dk, __m512 scale, const float *q, size_t ldq,
        const uint16_t *panel, float *s, size_t lds)
{
    __m512 acc[16];
#pragma GCC unroll 16
    for (int i = 0; i < rows; i++)
        acc[i] = _mm512_setzero_ps();
    for (size_t c = 0; c < dk; c++) {
        const __m512 k = nsa_avx512_load_bf16(0xffff, panel + c * NSA_PANEL);
#pragma GCC unroll 16
        for (int i = 0; i < rows; i++)
            acc[i] = _mm512_fmadd_ps(_mm512_set1_ps(q[(size_t)i * ldq + c]), k, acc[i]);
    }
#pragma GCC unroll 16
    for (int i = 0; i < rows; i++)
        _mm512_storeu_ps(s + (size_t)i * lds, _mm512_mul_ps(scale, acc[i]));
}

void nsa_bf16_qk_ukernel_16x16__avx512(size_t m, size_t np, size_t dk, float scale,
                                       const float *q, size_t ldq, const uint16_t *kp, float *s,
                                       size_t lds)
{
    const __m512 vscale = _mm512_set1_ps(scale);
    for (size_t p = 0; p < np; p++) {
        const uint16_t *panel = kp + p * dk * NSA_PANEL;
        float *sp = s + p * NSA_PANEL;
        size_t r = 0;
        for (; r + 16 <= m; r += 16)
            qk_rows(16, dk, vscale, q + r * ldq, ldq, panel, sp + r * lds, lds);
        if (r + 8 <= m) {
            qk_rows(8, dk, vscale, q + r * ldq, ldq, panel, sp + r * lds, lds);
            r += 8;
        }
        if (r + 4 <= m) {
            qk_rows(4, dk, vscale, q + r * ldq, ldq, panel, sp + r * lds, lds);
            r += 4;
        }
        if (r + 2 <= m) {
            qk_rows(2, dk, vscale, q + r * ldq, ldq, panel, sp + r * lds, lds);
            r += 2;
        }
        if (r < m)
            qk_rows(1, dk, vscale, q + r * ldq, ldq, panel, sp + r * lds, lds);
    }
}
