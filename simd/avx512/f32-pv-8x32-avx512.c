/* SPDX-License-Identifier: MIT */
/*
 * f32-pv-8x32-avx512.c — acc += P . V (contract in src/ukernels.h), AVX-512.
 *
 * Tile: 8 rows x 32 value columns in 16 accumulators, loaded from acc once,
 * run over all nk keys (2 loads of a V row and 8 broadcasts of P feed 16
 * FMAs), stored once. Columns past the last multiple of 32 go 16 at a time,
 * the last dv % 16 under a lane mask. The rows past the last multiple of 8
 * (1 to 7: small groups, gathered selected rows) go through the same tiles
 * with that many rows, each row count its own specialisation, so a V row is
 * still loaded once for all of them. Nothing outside [0, dv) of a V or acc
 * row is touched. The next hint is spread over the first row block's key
 * loops: the lines of its columns of one next row per key.
 */
#include "avx512-helpers.h"
#include "row-tiles.h"
#include "ukernels.h"

/* rows (a constant 1..8 once inlined) x 32 columns, or x 16 columns under
 * mask when `wide` is 0. */
static inline __attribute__((always_inline)) void
pv_tile(const size_t rows, const int wide, __mmask16 mask, size_t nk, const float *p,
        size_t ldp, const float *v, size_t ldv, float *acc, size_t ldacc, const float *next)
{
    __m512 c0[8], c1[8];
#pragma GCC unroll 8
    for (size_t i = 0; i < rows; i++) {
        if (wide) {
            c0[i] = _mm512_loadu_ps(acc + i * ldacc);
            c1[i] = _mm512_loadu_ps(acc + i * ldacc + 16);
        } else {
            c0[i] = _mm512_maskz_loadu_ps(mask, acc + i * ldacc);
        }
    }
    for (size_t j = 0; j < nk; j++) {
        const __m512 v0 = wide ? _mm512_loadu_ps(v + j * ldv) : _mm512_maskz_loadu_ps(mask, v + j * ldv);
        const __m512 v1 = wide ? _mm512_loadu_ps(v + j * ldv + 16) : v0;
        if (next != NULL) {
            nsa_prefetch_line(next + j * ldv);
            if (wide)
                nsa_prefetch_line(next + j * ldv + 16);
        }
#pragma GCC unroll 8
        for (size_t i = 0; i < rows; i++) {
            const __m512 b = _mm512_set1_ps(p[i * ldp + j]);
            c0[i] = _mm512_fmadd_ps(b, v0, c0[i]);
            if (wide)
                c1[i] = _mm512_fmadd_ps(b, v1, c1[i]);
        }
    }
#pragma GCC unroll 8
    for (size_t i = 0; i < rows; i++) {
        if (wide) {
            _mm512_storeu_ps(acc + i * ldacc, c0[i]);
            _mm512_storeu_ps(acc + i * ldacc + 16, c1[i]);
        } else {
            _mm512_mask_storeu_ps(acc + i * ldacc, mask, c0[i]);
        }
    }
}

/* The tile for `rows` (1..8) rows, each count its own specialisation. */
static void pv_rows(size_t rows, int wide, __mmask16 mask, size_t nk, const float *p,
                    size_t ldp, const float *v, size_t ldv, float *acc, size_t ldacc,
                    const float *next)
{
#define TILE(r)                                                                                    \
    do {                                                                                           \
        if (wide)                                                                                  \
            pv_tile(r, 1, mask, nk, p, ldp, v, ldv, acc, ldacc, next);                             \
        else                                                                                       \
            pv_tile(r, 0, mask, nk, p, ldp, v, ldv, acc, ldacc, next);                             \
    } while (0)
    NSA_ROW_COUNT_8(rows, TILE)
#undef TILE
}

void nsa_f32_pv_ukernel_8x32__avx512(size_t m, size_t nk, size_t dv, const float *p, size_t ldp,
                                     const float *v, size_t ldv, float *acc, size_t ldacc,
                                     const float *next)
{
    for (size_t col = 0; col < dv;) {
        const int wide = col + 32 <= dv;
        const __mmask16 mask = wide ? (__mmask16)0xffff : nsa_avx512_mask_first(dv - col);
        const float *hint = next != NULL ? next + col : NULL; /* first row block */
        for (size_t r = 0; r < m; r += 8, hint = NULL)
            pv_rows(m - r < 8 ? m - r : 8, wide, mask, nk, p + r * ldp, ldp, v + col, ldv,
                    acc + r * ldacc + col, ldacc, hint);
        col += wide ? 32 : 16;
    }
}
