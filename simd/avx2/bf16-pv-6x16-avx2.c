/* SPDX-License-Identifier: MIT */
/*
 * bf16-pv-6x16-avx2.c — acc += P . V with bf16 value rows (contract in
 * src/ukernels.h), AVX2 + FMA: the pv_bf16 kernel of AVX2 CPUs without
 * AVX-512.
 *
 * Tile: up to 6 rows x 16 value columns in 12 accumulators, loaded from acc
 * once, run over all nk keys (16 bf16 of a V row widened once, then 2 FMAs
 * per row with P broadcast), stored once; rows go 6, then 4, 2, 1 at a
 * time. 6 rows for the reason given in bf16-qk-6x16-avx2.c: the widening
 * shares the FMA ports, so it is spread over as many rows as the 16 ymm
 * registers allow. Column tails (dv % 16) use 8-column tiles under a lane
 * mask, whose V loads stop at column dv (nsa_avx2_load_bf16_first). Nothing
 * outside [0, nk) of a P row or [0, dv) of a V or acc row is read or
 * written.
 */
#include "avx2-helpers.h"
#include "row-tiles.h"
#include "ukernels.h"

static inline __attribute__((always_inline)) void
pv_rows(const int rows, size_t nk, const float *p, size_t ldp, const uint16_t *v, size_t ldv,
        float *acc, size_t ldacc)
{
    __m256 c0[6], c1[6];
#pragma GCC unroll 6
    for (int i = 0; i < rows; i++) {
        c0[i] = _mm256_loadu_ps(acc + (size_t)i * ldacc);
        c1[i] = _mm256_loadu_ps(acc + (size_t)i * ldacc + 8);
    }
    for (size_t j = 0; j < nk; j++) {
        const __m256 v0 = nsa_avx2_load_bf16(v + j * ldv);
        const __m256 v1 = nsa_avx2_load_bf16(v + j * ldv + 8);
#pragma GCC unroll 6
        for (int i = 0; i < rows; i++) {
            const __m256 b = _mm256_broadcast_ss(p + (size_t)i * ldp + j);
            c0[i] = _mm256_fmadd_ps(b, v0, c0[i]);
            c1[i] = _mm256_fmadd_ps(b, v1, c1[i]);
        }
    }
#pragma GCC unroll 6
    for (int i = 0; i < rows; i++) {
        _mm256_storeu_ps(acc + (size_t)i * ldacc, c0[i]);
        _mm256_storeu_ps(acc + (size_t)i * ldacc + 8, c1[i]);
    }
}

/* rows (1..6) x cols (1..8) columns: the column tails. */
static inline void pv_rows_x8(size_t rows, size_t cols, size_t nk, const float *p, size_t ldp,
                              const uint16_t *v, size_t ldv, float *acc, size_t ldacc)
{
    const __m256i mask = nsa_avx2_mask_first(cols);
    __m256 c[6];
    for (size_t i = 0; i < rows; i++)
        c[i] = _mm256_maskload_ps(acc + i * ldacc, mask);
    for (size_t j = 0; j < nk; j++) {
        const __m256 vj = nsa_avx2_load_bf16_first(v + j * ldv, cols);
        for (size_t i = 0; i < rows; i++)
            c[i] = _mm256_fmadd_ps(_mm256_broadcast_ss(p + i * ldp + j), vj, c[i]);
    }
    for (size_t i = 0; i < rows; i++)
        _mm256_maskstore_ps(acc + i * ldacc, mask, c[i]);
}

void nsa_bf16_pv_ukernel_6x16__avx2(size_t m, size_t nk, size_t dv, const float *p, size_t ldp,
                                    const uint16_t *v, size_t ldv, float *acc, size_t ldacc)
{
    size_t col = 0;
    for (; col + 16 <= dv; col += 16) {
        const uint16_t *vc = v + col;
        float *ac = acc + col;
#define TILE(rows, r) pv_rows(rows, nk, p + (r) * ldp, ldp, vc, ldv, ac + (r) * ldacc, ldacc)
        NSA_ROW_TILES(m, 6, TILE);
#undef TILE
    }
    for (; col < dv; col += 8) {
        const size_t cols = dv - col < 8 ? dv - col : 8;
        for (size_t r = 0; r < m; r += 6)
            pv_rows_x8(m - r < 6 ? m - r : 6, cols, nk, p + r * ldp, ldp, v + col, ldv,
                       acc + r * ldacc + col, ldacc);
    }
}
