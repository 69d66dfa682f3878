/* SPDX-License-Identifier: MIT */
/*
 * bf16-pv-16x16-avx512.c — acc += P . V with bf16 value rows (contract in
 * src/ukernels.h), AVX-512.
 *
 * Tile: up to 16 rows x 16 value columns in 16 accumulators, loaded from acc
 * once, run over all nk keys (16 bf16 of a V row widened once, then one FMA
 * per row with P broadcast), stored once; rows go 16, 8, 4, 2, 1 at a time.
 * The last dv % 16 columns go under a lane mask, so nothing outside [0, dv)
 * of a V or acc row is touched.
 */
#include "avx512-helpers.h"
#include "ukernels.h"

static inline __attribute__((always_inline)) void
pv_rows(const int rows, __mmask16 mask, size_t nk, const float *p, size_t ldp,
        const uint16_t *v, size_t ldv, float *acc, size_t ldacc)
{
    __m512 c[16];
#pragma GCC unroll 16
    for (int i = 0; i < rows; i++)
        c[i] = _mm512_maskz_loadu_ps(mask, acc + (size_t)i * ldacc);
    for (size_t j = 0; j < nk; j++) {
        const __m512 vj = nsa_avx512_load_bf16(mask, v + j * ldv);
#pragma GCC unroll 16
        for (int i = 0; i < rows; i++)
            c[i] = _mm512_fmadd_ps(_mm512_set1_ps(p[(size_t)i * ldp + j]), vj, c[i]);
    }
#pragma GCC unroll 16
    for (int i = 0; i < rows; i++)
        _mm512_mask_storeu_ps(acc + (size_t)i * ldacc, mask, c[i]);
}

void nsa_bf16_pv_ukernel_16x16__avx512(size_t m, size_t nk, size_t dv, const float *p,
                                       size_t ldp, const uint16_t *v, size_t ldv, float *acc,
                                       size_t ldacc)
{
    for (size_t col = 0; col < dv; col += 16) {
        const __mmask16 mask = nsa_avx512_mask_first(dv - col);
        const uint16_t *vc = v + col;
        float *ac = acc + col;
        size_t r = 0;
        for (; r + 16 <= m; r += 16)
            pv_rows(16, mask, nk, p + r * ldp, ldp, vc, ldv, ac + r * ldacc, ldacc);
        if (r + 8 <= m) {
            pv_rows(8, mask, nk, p + r * ldp, ldp, vc, ldv, ac + r * ldacc, ldacc);
            r += 8;
        }
        if (r + 4 <= m) {
            pv_rows(4, mask, nk, p + r * ldp, ldp, vc, ldv, ac + r * ldacc, ldacc);
            r += 4;
        }
        if (r + 2 <= m) {
            pv_rows(2, mask, nk, p + r * ldp, ldp, vc, ldv, ac + r * ldacc, ldacc);
            r += 2;
        }
        if (r < m)
            pv_rows(1, mask, nk, p + r * ldp, ldp, vc, ldv, ac + r * ldacc, ldacc);
    }
}
