/* SPDX-License-Identifier: MIT */
/*
 * bf16-pv-8x32-avx512.c — acc += P . V with bf16 value rows (contract in
 * src/ukernels.h), AVX-512.
 *
 * Tile: up to 8 rows x 32 value columns in 16 accumulators, the tile of
 * f32-pv-8x32-avx512.c: loaded from acc once, run over all nk keys (32 bf16
 * of a V row widened to fp32, 8 broadcasts of P, 16 FMAs), stored once.
 * Rows go 8, then 4, 2, 1 at a time; columns past the last multiple of 32
 * go 16 at a time, the last dv % 16 under a lane mask, so nothing outside
 * [0, dv) of a V or acc row is touched.
 */
#include "avx512-helpers.h"
#include "row-tiles.h"
#include "ukernels.h"

/* rows x (16 or 32) columns: `halves` vectors of 16, the last under mask. */
static inline __attribute__((always_inline)) void
pv_tile(const int rows, const int halves, __mmask16 mask, size_t nk, const float *p, size_t ldp,
        const uint16_t *v, size_t ldv, float *acc, size_t ldacc)
{
    const __mmask16 first = halves == 2 ? (__mmask16)0xffff : mask;
    __m512 c0[8], c1[8];
#pragma GCC unroll 8
    for (int i = 0; i < rows; i++) {
        c0[i] = _mm512_maskz_loadu_ps(first, acc + (size_t)i * ldacc);
        if (halves == 2)
            c1[i] = _mm512_maskz_loadu_ps(mask, acc + (size_t)i * ldacc + 16);
    }
    for (size_t j = 0; j < nk; j++) {
        const __m512 v0 = nsa_avx512_load_bf16(first, v + j * ldv);
        const __m512 v1 = halves == 2 ? nsa_avx512_load_bf16(mask, v + j * ldv + 16) : v0;
#pragma GCC unroll 8
        for (int i = 0; i < rows; i++) {
            const __m512 b = _mm512_set1_ps(p[(size_t)i * ldp + j]);
            c0[i] = _mm512_fmadd_ps(b, v0, c0[i]);
            if (halves == 2)
                c1[i] = _mm512_fmadd_ps(b, v1, c1[i]);
        }
    }
#pragma GCC unroll 8
    for (int i = 0; i < rows; i++) {
        _mm512_mask_storeu_ps(acc + (size_t)i * ldacc, first, c0[i]);
        if (halves == 2)
            _mm512_mask_storeu_ps(acc + (size_t)i * ldacc + 16, mask, c1[i]);
    }
}

/* Every row, for `halves` x 16 columns. */
static inline __attribute__((always_inline)) void
pv_columns(const int halves, __mmask16 mask, size_t m, size_t nk, const float *p, size_t ldp,
           const uint16_t *v, size_t ldv, float *acc, size_t ldacc)
{
#define TILE(rows, r)                                                                   \
    pv_tile(rows, halves, mask, nk, p + (r) * ldp, ldp, v, ldv, acc + (r) * ldacc, ldacc)
    NSA_ROW_TILES(m, 8, TILE);
#undef TILE
}

void nsa_bf16_pv_ukernel_8x32__avx512(size_t m, size_t nk, size_t dv, const float *p,
                                      size_t ldp, const uint16_t *v, size_t ldv, float *acc,
                                      size_t ldacc)
{
    size_t col = 0;
    for (; col + 32 <= dv; col += 32)
        pv_columns(2, 0xffff, m, nk, p, ldp, v + col, ldv, acc + col, ldacc);
    for (; col < dv; col += 16)
        pv_columns(1, nsa_avx512_mask_first(dv - col), m, nk, p, ldp, v + col, ldv, acc + col,
                   ldacc);
}
