/* SPDX-License-Identifier: MIT */
/*
 * bf16-pv-8x32-avx512.c — acc += P . V with bf16 value rows (paired layout,
 * contract in src/ukernels.h), AVX-512.
 *
 * Tile: up to 8 rows x 32 value columns in 16 accumulators, the tile of
 * f32-pv-8x32-avx512.c: loaded from acc once, run over all nk keys, stored
 * once. A value row holds two keys: one load of 16 channels and a shift and
 * a mask widen it into both keys (nsa_avx512_load_bf16_pairs), which feed 2
 * FMAs per row and 16 columns with the two keys' P broadcast; an odd nk's
 * last key goes alone. Rows go 8, then 4, 2, 1 at a time; columns past the
 * last multiple of 32 go 16 at a time, the last dv % 16 under a lane mask,
 * so nothing outside [0, dv) of an acc row, or outside the pairs of those
 * columns in a value row, is touched.
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
    for (size_t j = 0; j < nk; j += 2) {
        const int both = j + 1 < nk; /* an odd nk's last key goes alone */
        const uint16_t *row = v + j * ldv;
        __m512 v0, v0next, v1 = _mm512_setzero_ps(), v1next = _mm512_setzero_ps();
        nsa_avx512_load_bf16_pairs(first, row, &v0, &v0next);
        if (halves == 2)
            nsa_avx512_load_bf16_pairs(mask, row + 32, &v1, &v1next);
#pragma GCC unroll 8
        for (int i = 0; i < rows; i++) {
            const __m512 b = _mm512_set1_ps(p[(size_t)i * ldp + j]);
            c0[i] = _mm512_fmadd_ps(b, v0, c0[i]);
            if (halves == 2)
                c1[i] = _mm512_fmadd_ps(b, v1, c1[i]);
            if (both) {
                const __m512 b2 = _mm512_set1_ps(p[(size_t)i * ldp + j + 1]);
                c0[i] = _mm512_fmadd_ps(b2, v0next, c0[i]);
                if (halves == 2)
                    c1[i] = _mm512_fmadd_ps(b2, v1next, c1[i]);
            }
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
    size_t col = 0; /* column col of a key pair starts at word 2 col of its row */
    for (; col + 32 <= dv; col += 32)
        pv_columns(2, 0xffff, m, nk, p, ldp, v + 2 * col, ldv, acc + col, ldacc);
    for (; col < dv; col += 16)
        pv_columns(1, nsa_avx512_mask_first(dv - col), m, nk, p, ldp, v + 2 * col, ldv,
                   acc + col, ldacc);
}
