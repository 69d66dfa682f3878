/* SPDX-License-Identifier: MIT */
/*
 * f32-pv-8x32-avx512.c — acc += P . V (contract in src/ukernels.h), AVX-512.
 *
 * Tile: 8 rows x 32 value columns in 16 accumulators, loaded from acc once,
 * run over all nk keys (2 loads of a V row and 8 broadcasts of P feed 16
 * FMAs), stored once. Columns past the last multiple of 32 go 16 at a time,
 * the last dv % 16 under a lane mask; rows past the last multiple of 8 one
 * at a time. Nothing outside [0, dv) of a V or acc row is touched. The
 * next hint is spread over the first row block's key loops: the lines of
 * its columns of one next row per key.
 */
#include "avx512-helpers.h"
#include "ukernels.h"

static inline void pv_8x32(size_t nk, const float *p, size_t ldp, const float *v, size_t ldv,
                           float *acc, size_t ldacc, const float *next)
{
    __m512 c0[8], c1[8];
#pragma GCC unroll 8
    for (int i = 0; i < 8; i++) {
        c0[i] = _mm512_loadu_ps(acc + (size_t)i * ldacc);
        c1[i] = _mm512_loadu_ps(acc + (size_t)i * ldacc + 16);
    }
    for (size_t j = 0; j < nk; j++) {
        const __m512 v0 = _mm512_loadu_ps(v + j * ldv), v1 = _mm512_loadu_ps(v + j * ldv + 16);
        if (next != NULL) {
            nsa_prefetch_line(next + j * ldv);
            nsa_prefetch_line(next + j * ldv + 16);
        }
#pragma GCC unroll 8
        for (int i = 0; i < 8; i++) {
            const __m512 b = _mm512_set1_ps(p[(size_t)i * ldp + j]);
            c0[i] = _mm512_fmadd_ps(b, v0, c0[i]);
            c1[i] = _mm512_fmadd_ps(b, v1, c1[i]);
        }
    }
#pragma GCC unroll 8
    for (int i = 0; i < 8; i++) {
        _mm512_storeu_ps(acc + (size_t)i * ldacc, c0[i]);
        _mm512_storeu_ps(acc + (size_t)i * ldacc + 16, c1[i]);
    }
}

/* rows (1..8) x up to 16 columns selected by mask. */
static inline void pv_rows_x16(size_t rows, __mmask16 mask, size_t nk, const float *p,
                               size_t ldp, const float *v, size_t ldv, float *acc, size_t ldacc,
                               const float *next)
{
    __m512 c[8];
    for (size_t i = 0; i < rows; i++)
        c[i] = _mm512_maskz_loadu_ps(mask, acc + i * ldacc);
    for (size_t j = 0; j < nk; j++) {
        const __m512 vj = _mm512_maskz_loadu_ps(mask, v + j * ldv);
        if (next != NULL)
            nsa_prefetch_line(next + j * ldv);
        for (size_t i = 0; i < rows; i++)
            c[i] = _mm512_fmadd_ps(_mm512_set1_ps(p[i * ldp + j]), vj, c[i]);
    }
    for (size_t i = 0; i < rows; i++)
        _mm512_mask_storeu_ps(acc + i * ldacc, mask, c[i]);
}

void nsa_f32_pv_ukernel_8x32__avx512(size_t m, size_t nk, size_t dv, const float *p, size_t ldp,
                                     const float *v, size_t ldv, float *acc, size_t ldacc,
                                     const float *next)
{
    size_t col = 0;
    for (; col + 32 <= dv; col += 32) {
        const float *hint = next != NULL ? next + col : NULL; /* first row block */
        size_t r = 0;
        for (; r + 8 <= m; r += 8, hint = NULL)
            pv_8x32(nk, p + r * ldp, ldp, v + col, ldv, acc + r * ldacc + col, ldacc, hint);
        for (; r < m; r++, hint = NULL) {
            pv_rows_x16(1, 0xffff, nk, p + r * ldp, ldp, v + col, ldv, acc + r * ldacc + col,
                        ldacc, hint);
            pv_rows_x16(1, 0xffff, nk, p + r * ldp, ldp, v + col + 16, ldv,
                        acc + r * ldacc + col + 16, ldacc, hint != NULL ? hint + 16 : NULL);
        }
    }
    for (; col < dv; col += 16) {
        const __mmask16 mask = nsa_avx512_mask_first(dv - col);
        for (size_t r = 0; r < m; r += 8)
            pv_rows_x16(m - r < 8 ? m - r : 8, mask, nk, p + r * ldp, ldp, v + col, ldv,
                        acc + r * ldacc + col, ldacc, r == 0 && next != NULL ? next + col : NULL);
    }
}
