/* SPDX-License-Identifier: MIT */
/*
 * f32-pv-6x16-avx2.c — acc += P . V (contract in src/ukernels.h), AVX2 + FMA.
 *
 * Tile: 6 rows x 16 value columns in 12 accumulators (as in the qk kernel,
 * enough chains to hide the FMA latency), loaded from acc once, run over all
 * nk keys (2 loads of a V row and 6 broadcasts of P feed 12 FMAs), stored
 * once. Column tails (dv % 16) go 8 at a time, the last dv % 8
 * columns under a mask. The rows past the last multiple of 6 (1 to 5) go
 * through the same tiles with that many rows, each count its own
 * specialisation. Nothing outside [0, dv) of a V or acc row is read or
 * written. The next hint goes with the first row block: the line of its
 * columns of one next row per key.
 */
#include "avx2-helpers.h"
#include "row-tiles.h"
#include "ukernels.h"

/* rows (a constant 1..6 once inlined) x 16 columns, or x 8 columns under
 * mask when `wide` is 0. */
static inline __attribute__((always_inline)) void
pv_tile(const size_t rows, const int wide, __m256i mask, size_t nk, const float *p, size_t ldp,
        const float *v, size_t ldv, float *acc, size_t ldacc, const float *next)
{
    __m256 c0[6], c1[6];
#pragma GCC unroll 6
    for (size_t i = 0; i < rows; i++) {
        if (wide) {
            c0[i] = _mm256_loadu_ps(acc + i * ldacc);
            c1[i] = _mm256_loadu_ps(acc + i * ldacc + 8);
        } else {
            c0[i] = _mm256_maskload_ps(acc + i * ldacc, mask);
        }
    }
    for (size_t j = 0; j < nk; j++) {
        const __m256 v0 = wide ? _mm256_loadu_ps(v + j * ldv) : _mm256_maskload_ps(v + j * ldv, mask);
        const __m256 v1 = wide ? _mm256_loadu_ps(v + j * ldv + 8) : v0;
        if (next != NULL)
            nsa_prefetch_line(next + j * ldv);
#pragma GCC unroll 6
        for (size_t i = 0; i < rows; i++) {
            const __m256 b = _mm256_broadcast_ss(p + i * ldp + j);
            c0[i] = _mm256_fmadd_ps(b, v0, c0[i]);
            if (wide)
                c1[i] = _mm256_fmadd_ps(b, v1, c1[i]);
        }
    }
#pragma GCC unroll 6
    for (size_t i = 0; i < rows; i++) {
        if (wide) {
            _mm256_storeu_ps(acc + i * ldacc, c0[i]);
            _mm256_storeu_ps(acc + i * ldacc + 8, c1[i]);
        } else {
            _mm256_maskstore_ps(acc + i * ldacc, mask, c0[i]);
        }
    }
}

/* The tile for `rows` (1..6) rows, each count its own specialisation. */
static void pv_rows(size_t rows, int wide, __m256i mask, size_t nk, const float *p, size_t ldp,
                    const float *v, size_t ldv, float *acc, size_t ldacc, const float *next)
{
#define TILE(r)                                                                                    \
    do {                                                                                           \
        if (wide)                                                                                  \
            pv_tile(r, 1, mask, nk, p, ldp, v, ldv, acc, ldacc, next);                             \
        else                                                                                       \
            pv_tile(r, 0, mask, nk, p, ldp, v, ldv, acc, ldacc, next);                             \
    } while (0)
    NSA_ROW_COUNT_6(rows, TILE)
#undef TILE
}

void nsa_f32_pv_ukernel_6x16__avx2(size_t m, size_t nk, size_t dv, const float *p, size_t ldp,
                                   const float *v, size_t ldv, float *acc, size_t ldacc,
                                   const float *next)
{
    for (size_t col = 0; col < dv;) {
        const int wide = col + 16 <= dv;
        const __m256i mask = nsa_avx2_mask_first(dv - col < 8 ? dv - col : 8);
        const float *hint = next != NULL ? next + col : NULL; /* first row block */
        for (size_t r = 0; r < m; r += 6, hint = NULL)
            pv_rows(m - r < 6 ? m - r : 6, wide, mask, nk, p + r * ldp, ldp, v + col, ldv,
                    acc + r * ldacc + col, ldacc, hint);
        col += wide ? 16 : 8;
    }
}
