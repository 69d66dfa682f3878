/* SPDX-License-Identifier: MIT */
/*
 * bf16-qk-6x16-avx2.c — scores of query rows against panel-packed bf16 keys
 * (contract in src/ukernels.h), AVX2 + FMA: the qk_bf16 kernel of AVX2 CPUs
 * without AVX-512.
 *
 * Tile: up to 6 rows x 1 panel (16 keys) in 12 accumulators; per channel,
 * the two halves of a panel row of bf16 are widened to fp32 (2 instructions
 * each) and feed 2 FMAs per row with q broadcast, so each key is widened
 * once for 6 rows. 6 rows, not the 4 of f32-qk-4x16-avx2.c, because the
 * widening shares the FMA ports: 12 accumulators, 2 keys and 1 broadcast
 * fill 15 of the 16 ymm registers, and a decode group of G = 16 rows goes
 * 6 + 6 + 4, each key widened 3 times instead of 4. Rows go 6, then 4, 2,
 * 1 at a time. No tail in keys: panels are whole. A q row is read on
 * [0, dk) only. Accumulation order is fixed (channel 0 first), independent
 * of threads.
 */
#include "avx2-helpers.h"
#include "row-tiles.h"
#include "ukernels.h"

static inline __attribute__((always_inline)) void
qk_rows(const int rows, size_t dk, __m256 scale, const float *q, size_t ldq,
        const uint16_t *panel, float *s, size_t lds)
{
    __m256 c0[6], c1[6];
#pragma GCC unroll 6
    for (int i = 0; i < rows; i++)
        c0[i] = c1[i] = _mm256_setzero_ps();
    for (size_t c = 0; c < dk; c++) {
        const __m256 k0 = nsa_avx2_load_bf16(panel + c * NSA_PANEL);
        const __m256 k1 = nsa_avx2_load_bf16(panel + c * NSA_PANEL + 8);
#pragma GCC unroll 6
        for (int i = 0; i < rows; i++) {
            const __m256 b = _mm256_broadcast_ss(q + (size_t)i * ldq + c);
            c0[i] = _mm256_fmadd_ps(b, k0, c0[i]);
            c1[i] = _mm256_fmadd_ps(b, k1, c1[i]);
        }
    }
#pragma GCC unroll 6
    for (int i = 0; i < rows; i++) {
        _mm256_storeu_ps(s + (size_t)i * lds, _mm256_mul_ps(scale, c0[i]));
        _mm256_storeu_ps(s + (size_t)i * lds + 8, _mm256_mul_ps(scale, c1[i]));
    }
}

void nsa_bf16_qk_ukernel_6x16__avx2(size_t m, size_t np, size_t dk, float scale, const float *q,
                                    size_t ldq, const uint16_t *kp, float *s, size_t lds)
{
    const __m256 vscale = _mm256_set1_ps(scale);
    for (size_t p = 0; p < np; p++) {
        const uint16_t *panel = kp + p * dk * NSA_PANEL;
        float *sp = s + p * NSA_PANEL;
#define TILE(rows, r) qk_rows(rows, dk, vscale, q + (r) * ldq, ldq, panel, sp + (r) * lds, lds)
        NSA_ROW_TILES(m, 6, TILE);
#undef TILE
    }
}
