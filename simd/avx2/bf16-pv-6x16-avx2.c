/* SPDX-License-Identifier: MIT */
/*
 * bf16-pv-6x16-avx2.c — acc += P . V with bf16 value rows (paired layout,
 * contract in src/ukernels.h), AVX2 + FMA: the pv_bf16 kernel of AVX2 CPUs
 * without AVX-512.
 *
 * Tile: up to 6 rows x 16 value columns in 12 accumulators, loaded from acc
 * once, run over all nk keys, stored once; rows go 6, then 4, 2, 1 at a
 * time. A value row holds keys j and j + 1: two loads of 8 columns each,
 * then one instruction per load and key widens it to fp32 (a shift for key
 * j, a blend for j + 1: nsa_avx2_bf16_first, _second), where bf16 one to a
 * 16-bit lane would take a zero-extension and a shift. Each key feeds 2 FMAs
 * per row with its P value broadcast. Key j's FMAs run before j + 1 is
 * widened (the blend rereads the pairs from memory), so 12 accumulators, 2
 * values and 1 broadcast fit the 16 ymm registers. An odd nk's last key goes
 * alone: only the first word of each pair of its row is used. 6 rows for the
 * reason given in bf16-qk-6x16-avx2.c: the widening shares the FMA ports, so
 * it is spread over as many rows as the 16 ymm registers allow. Column tails
 * (dv % 16) use 8-column tiles under a lane mask, whose V loads stop at the
 * pair of column dv - 1 (nsa_avx2_load_pairs_first). Nothing outside [0, nk)
 * of a P row, [0, dv) of an acc row, or the pairs of those columns in a
 * value row is read or written.
 */
#include "avx2-helpers.h"
#include "row-tiles.h"
#include "ukernels.h"

/* Row i of the tile += p * (v0, v1): columns 0..7 into c0[i], 8..15 into
 * c1[i], with the probability at p broadcast. */
#define PV_ROW(c0, c1, i, p, v0, v1)                                                               \
    do {                                                                                           \
        const __m256 b_ = _mm256_broadcast_ss(p);                                                  \
        (c0)[i] = _mm256_fmadd_ps(b_, (v0), (c0)[i]);                                              \
        (c1)[i] = _mm256_fmadd_ps(b_, (v1), (c1)[i]);                                              \
    } while (0)

/* v: word 2 col of the first value row (column col of keys 0 and 1). */
static inline __attribute__((always_inline)) void
pv_rows(const int rows, size_t nk, const float *p, size_t ldp, const uint16_t *v, size_t ldv,
        float *acc, size_t ldacc)
{
    __m256 c0[6], c1[6];
    const float *pr[6]; /* row i's probability of key j */
#pragma GCC unroll 6
    for (int i = 0; i < rows; i++) {
        c0[i] = _mm256_loadu_ps(acc + (size_t)i * ldacc);
        c1[i] = _mm256_loadu_ps(acc + (size_t)i * ldacc + 8);
        pr[i] = p + (size_t)i * ldp;
    }
    const uint16_t *row = v; /* value row j / 2 */
    size_t j = 0;
    for (; j + 2 <= nk; j += 2, row += 2 * ldv) {
        const __m256i w0 = nsa_avx2_load_pairs(row), w1 = nsa_avx2_load_pairs(row + 16);
        const __m256 v0 = nsa_avx2_bf16_first(w0), v1 = nsa_avx2_bf16_first(w1); /* key j */
#pragma GCC unroll 6
        for (int i = 0; i < rows; i++)
            PV_ROW(c0, c1, i, pr[i], v0, v1);
        const __m256 u0 = nsa_avx2_bf16_second(v0, w0), u1 = nsa_avx2_bf16_second(v1, w1);
        /* key j + 1, rows backwards: GCC 12 then keeps all 12 accumulators
         * in registers (forwards, it spilled one) */
#pragma GCC unroll 6
        for (int i = rows - 1; i >= 0; i--) {
            PV_ROW(c0, c1, i, pr[i] + 1, u0, u1);
            pr[i] += 2;
        }
    }
    if (j < nk) { /* an odd nk's last key, alone */
        const __m256 v0 = nsa_avx2_bf16_first(nsa_avx2_load_pairs(row));
        const __m256 v1 = nsa_avx2_bf16_first(nsa_avx2_load_pairs(row + 16));
#pragma GCC unroll 6
        for (int i = 0; i < rows; i++)
            PV_ROW(c0, c1, i, pr[i], v0, v1);
    }
#pragma GCC unroll 6
    for (int i = 0; i < rows; i++) {
        _mm256_storeu_ps(acc + (size_t)i * ldacc, c0[i]);
        _mm256_storeu_ps(acc + (size_t)i * ldacc + 8, c1[i]);
    }
}

/* rows (1..6) x cols (1..8) columns: the column tails. v as in pv_rows. */
static inline void pv_rows_x8(size_t rows, size_t cols, size_t nk, const float *p, size_t ldp,
                              const uint16_t *v, size_t ldv, float *acc, size_t ldacc)
{
    const __m256i mask = nsa_avx2_mask_first(cols);
    __m256 c[6];
    for (size_t i = 0; i < rows; i++)
        c[i] = _mm256_maskload_ps(acc + i * ldacc, mask);
    for (size_t j = 0; j < nk; j += 2) {
        const __m256i w = nsa_avx2_load_pairs_first(v + j * ldv, cols);
        const __m256 v0 = nsa_avx2_bf16_first(w), v1 = nsa_avx2_bf16_second(v0, w);
        const int both = j + 1 < nk; /* an odd nk's last key goes alone */
        for (size_t i = 0; i < rows; i++) {
            c[i] = _mm256_fmadd_ps(_mm256_broadcast_ss(p + i * ldp + j), v0, c[i]);
            if (both)
                c[i] = _mm256_fmadd_ps(_mm256_broadcast_ss(p + i * ldp + j + 1), v1, c[i]);
        }
    }
    for (size_t i = 0; i < rows; i++)
        _mm256_maskstore_ps(acc + i * ldacc, mask, c[i]);
}

void nsa_bf16_pv_ukernel_6x16__avx2(size_t m, size_t nk, size_t dv, const float *p, size_t ldp,
                                    const uint16_t *v, size_t ldv, float *acc, size_t ldacc)
{
    size_t col = 0; /* column col of a value row's two keys starts at word 2 col */
    for (; col + 16 <= dv; col += 16) {
        const uint16_t *vc = v + 2 * col;
        float *ac = acc + col;
#define TILE(rows, r) pv_rows(rows, nk, p + (r) * ldp, ldp, vc, ldv, ac + (r) * ldacc, ldacc)
        NSA_ROW_TILES(m, 6, TILE);
#undef TILE
    }
    for (; col < dv; col += 8) {
        const size_t cols = dv - col < 8 ? dv - col : 8;
        for (size_t r = 0; r < m; r += 6)
            pv_rows_x8(m - r < 6 ? m - r : 6, cols, nk, p + r * ldp, ldp, v + 2 * col, ldv,
                       acc + r * ldacc + col, ldacc);
    }
}
