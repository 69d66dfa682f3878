/* SPDX-License-Identifier: MIT */
/*
 * f32-pv-4x16-avx2.c — acc += P . V (contract in src/ukernels.h), AVX2 + FMA.
 *
 * Tile: 4 rows x 16 value columns in 8 accumulators, loaded from acc once,
 * run over all nk keys (2 loads of a V row and 4 broadcasts of P feed 8
 * FMAs), stored once. Column tails (dv % 16) use an 8-wide tile, the last
 * dv % 8 columns a masked one; row tails a 1-row tile. Nothing outside
 * [0, dv) of a V or acc row is read or written. The next hint goes with
 * the first row block: the line of its columns of one next row per key.
 */
#include "avx2-helpers.h"
#include "ukernels.h"

static inline void pv_4x16(size_t nk, const float *p, size_t ldp, const float *v, size_t ldv,
                           float *acc, size_t ldacc, const float *next)
{
    float *a0 = acc, *a1 = acc + ldacc, *a2 = acc + 2 * ldacc, *a3 = acc + 3 * ldacc;
    __m256 c00 = _mm256_loadu_ps(a0), c01 = _mm256_loadu_ps(a0 + 8);
    __m256 c10 = _mm256_loadu_ps(a1), c11 = _mm256_loadu_ps(a1 + 8);
    __m256 c20 = _mm256_loadu_ps(a2), c21 = _mm256_loadu_ps(a2 + 8);
    __m256 c30 = _mm256_loadu_ps(a3), c31 = _mm256_loadu_ps(a3 + 8);
    for (size_t j = 0; j < nk; j++) {
        const __m256 v0 = _mm256_loadu_ps(v + j * ldv), v1 = _mm256_loadu_ps(v + j * ldv + 8);
        if (next != NULL)
            nsa_prefetch_line(next + j * ldv);
        __m256 b = _mm256_broadcast_ss(p + j);
        c00 = _mm256_fmadd_ps(b, v0, c00);
        c01 = _mm256_fmadd_ps(b, v1, c01);
        b = _mm256_broadcast_ss(p + ldp + j);
        c10 = _mm256_fmadd_ps(b, v0, c10);
        c11 = _mm256_fmadd_ps(b, v1, c11);
        b = _mm256_broadcast_ss(p + 2 * ldp + j);
        c20 = _mm256_fmadd_ps(b, v0, c20);
        c21 = _mm256_fmadd_ps(b, v1, c21);
        b = _mm256_broadcast_ss(p + 3 * ldp + j);
        c30 = _mm256_fmadd_ps(b, v0, c30);
        c31 = _mm256_fmadd_ps(b, v1, c31);
    }
    _mm256_storeu_ps(a0, c00);
    _mm256_storeu_ps(a0 + 8, c01);
    _mm256_storeu_ps(a1, c10);
    _mm256_storeu_ps(a1 + 8, c11);
    _mm256_storeu_ps(a2, c20);
    _mm256_storeu_ps(a2 + 8, c21);
    _mm256_storeu_ps(a3, c30);
    _mm256_storeu_ps(a3 + 8, c31);
}

/* rows (1..4) x up to 8 columns selected by mask. */
static inline void pv_rows_x8(size_t rows, __m256i mask, size_t nk, const float *p, size_t ldp,
                              const float *v, size_t ldv, float *acc, size_t ldacc,
                              const float *next)
{
    __m256 c[4];
    for (size_t i = 0; i < rows; i++)
        c[i] = _mm256_maskload_ps(acc + i * ldacc, mask);
    for (size_t j = 0; j < nk; j++) {
        const __m256 vj = _mm256_maskload_ps(v + j * ldv, mask);
        if (next != NULL)
            nsa_prefetch_line(next + j * ldv);
        for (size_t i = 0; i < rows; i++)
            c[i] = _mm256_fmadd_ps(_mm256_broadcast_ss(p + i * ldp + j), vj, c[i]);
    }
    for (size_t i = 0; i < rows; i++)
        _mm256_maskstore_ps(acc + i * ldacc, mask, c[i]);
}

static inline void pv_1x16(size_t nk, const float *p, const float *v, size_t ldv, float *acc,
                           const float *next)
{
    __m256 c0 = _mm256_loadu_ps(acc), c1 = _mm256_loadu_ps(acc + 8);
    for (size_t j = 0; j < nk; j++) {
        if (next != NULL)
            nsa_prefetch_line(next + j * ldv);
        const __m256 b = _mm256_broadcast_ss(p + j);
        c0 = _mm256_fmadd_ps(b, _mm256_loadu_ps(v + j * ldv), c0);
        c1 = _mm256_fmadd_ps(b, _mm256_loadu_ps(v + j * ldv + 8), c1);
    }
    _mm256_storeu_ps(acc, c0);
    _mm256_storeu_ps(acc + 8, c1);
}

void nsa_f32_pv_ukernel_4x16__avx2(size_t m, size_t nk, size_t dv, const float *p, size_t ldp,
                                   const float *v, size_t ldv, float *acc, size_t ldacc,
                                   const float *next)
{
    size_t col = 0;
    for (; col + 16 <= dv; col += 16) {
        const float *hint = next != NULL ? next + col : NULL; /* first row block */
        size_t r = 0;
        for (; r + 4 <= m; r += 4, hint = NULL)
            pv_4x16(nk, p + r * ldp, ldp, v + col, ldv, acc + r * ldacc + col, ldacc, hint);
        for (; r < m; r++, hint = NULL)
            pv_1x16(nk, p + r * ldp, v + col, ldv, acc + r * ldacc + col, hint);
    }
    for (; col < dv; col += 8) {
        const __m256i mask = nsa_avx2_mask_first(dv - col < 8 ? dv - col : 8);
        for (size_t r = 0; r < m; r += 4)
            pv_rows_x8(m - r < 4 ? m - r : 4, mask, nk, p + r * ldp, ldp, v + col, ldv,
                       acc + r * ldacc + col, ldacc, r == 0 && next != NULL ? next + col : NULL);
    }
}
