/* SPDX-License-Identifier: MIT */
/*
 * f32-qk-6x16-avx2.c — scores of query rows against one key panel at a time
 * (contract in src/ukernels.h), AVX2 + FMA.
 *
 * Tile: 6 rows x 16 keys in 12 accumulators; per channel, 2 loads of the
 * panel and 6 broadcasts of q feed 12 FMAs. 12 chains hide the FMA latency
 * with room to spare, where 4 rows (8 chains) only just did: on Zen 4 the
 * 16 x 64 call ran at 93 % of peak on 4 rows and 98 % on 6 (bench/RESULTS.md).
 * 12 accumulators, 2 keys and 1 broadcast fill 15 of the 16 ymm registers.
 * A panel (16 keys x dk) stays in L1 while every row block of the tile
 * passes over it. The rows past the last multiple of 6 (1 to 5) go through
 * the same tile with that many rows, each count its own specialisation. No
 * tail in keys: panels are whole.
 * Accumulation order is fixed (channel 0 first), independent of threads and
 * of the tile a row is in. The next hint goes with the first row block: one
 * line of the next panel per channel.
 */
#include "avx2-helpers.h"
#include "row-tiles.h"
#include "ukernels.h"

/* rows (a constant 1..6 once inlined) x one panel. */
static inline __attribute__((always_inline)) void
qk_tile(const size_t rows, size_t dk, __m256 scale, const float *q, size_t ldq,
        const float *panel, float *s, size_t lds, const float *next)
{
    __m256 c0[6], c1[6];
#pragma GCC unroll 6
    for (size_t i = 0; i < rows; i++)
        c0[i] = c1[i] = _mm256_setzero_ps();
    for (size_t c = 0; c < dk; c++) {
        const __m256 k0 = _mm256_loadu_ps(panel + c * NSA_PANEL);
        const __m256 k1 = _mm256_loadu_ps(panel + c * NSA_PANEL + 8);
        if (next != NULL)
            nsa_prefetch_line(next + c * NSA_PANEL);
#pragma GCC unroll 6
        for (size_t i = 0; i < rows; i++) {
            const __m256 b = _mm256_broadcast_ss(q + i * ldq + c);
            c0[i] = _mm256_fmadd_ps(b, k0, c0[i]);
            c1[i] = _mm256_fmadd_ps(b, k1, c1[i]);
        }
    }
#pragma GCC unroll 6
    for (size_t i = 0; i < rows; i++) {
        _mm256_storeu_ps(s + i * lds, _mm256_mul_ps(scale, c0[i]));
        _mm256_storeu_ps(s + i * lds + 8, _mm256_mul_ps(scale, c1[i]));
    }
}

/* The tile for `rows` (1..6) rows, each count its own specialisation. */
static void qk_rows(size_t rows, size_t dk, __m256 scale, const float *q, size_t ldq,
                    const float *panel, float *s, size_t lds, const float *next)
{
#define TILE(r) qk_tile(r, dk, scale, q, ldq, panel, s, lds, next)
    NSA_ROW_COUNT_6(rows, TILE)
#undef TILE
}

void nsa_f32_qk_ukernel_6x16__avx2(size_t m, size_t np, size_t dk, float scale, const float *q,
                                   size_t ldq, const float *kp, float *s, size_t lds,
                                   const float *next)
{
    const __m256 vscale = _mm256_set1_ps(scale);
    for (size_t p = 0; p < np; p++) {
        const float *panel = kp + p * dk * NSA_PANEL;
        const float *hint = next != NULL ? next + p * dk * NSA_PANEL : NULL; /* first row block */
        float *sp = s + p * NSA_PANEL;
        for (size_t r = 0; r < m; r += 6, hint = NULL)
            qk_rows(m - r < 6 ? m - r : 6, dk, vscale, q + r * ldq, ldq, panel, sp + r * lds, lds,
                    hint);
    }
}
