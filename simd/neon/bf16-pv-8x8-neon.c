/* SPDX-License-Identifier: MIT */
/*
 * bf16-pv-8x8-neon.c — acc += P . V with bf16 value rows (paired layout,
 * contract in src/ukernels.h), aarch64 Advanced SIMD: the pv_bf16 kernel of
 * aarch64 CPUs.
 *
 * Tile: up to 8 rows x 8 value columns in 16 accumulators, loaded from acc
 * once, run over all nk keys, stored once; rows go 8, then 4, 2, 1 at a
 * time. Keys go 4 at a time as in f32-pv-4x16-neon.c: one load of 4
 * probabilities of each row, then per value row (keys j and j + 1) two
 * loads of 4 columns' pairs, each widened to fp32 for both keys (SHL for j,
 * AND for j + 1: nsa_neon_bf16_first, _second), feed 32 FMAs that take
 * their probability from a lane (vfmaq_laneq_f32). The last nk % 4 keys go
 * as one more value row (its 2 probabilities loaded alone) and, for an odd
 * nk, a last key alone with a broadcast (only the first word of each pair
 * of its row is used). 8 x 8 for the reason given in bf16-qk-8x8-neon.c:
 * each value is widened once for 8 rows. Column tails (dv % 8) use a
 * 4-column tile, the last dv % 4 columns one whose loads and stores stop at
 * column dv. Nothing outside [0, nk) of a P row, [0, dv) of an acc row, or
 * the pairs of those columns in a value row is read or written.
 */
#include "neon-helpers.h"
#include "row-tiles.h"
#include "ukernels.h"

/* One value row of 8 columns of keys j and j + 1 (at `row`), widened once,
 * into the accumulators lo (columns 0..3) and hi (columns 4..7) of `rows`
 * rows, row i's probabilities of j and j + 1 taken from lanes `lane` and
 * `lane` + 1 of b[i]. */
#define PV_ROW_LANES(rows, lo, hi, row, b, lane)                                                   \
    do {                                                                                           \
        const uint16_t *row_ = (row);                                                              \
        const uint16x8_t x0_ = vld1q_u16(row_), x1_ = vld1q_u16(row_ + 8);                         \
        const float32x4_t v0_ = nsa_neon_bf16_first(x0_), v1_ = nsa_neon_bf16_first(x1_);          \
        const float32x4_t u0_ = nsa_neon_bf16_second(x0_), u1_ = nsa_neon_bf16_second(x1_);        \
        _Pragma("GCC unroll 8") for (int i_ = 0; i_ < (rows); i_++)                                \
        {                                                                                          \
            (lo)[i_] = vfmaq_laneq_f32((lo)[i_], v0_, (b)[i_], (lane));                            \
            (hi)[i_] = vfmaq_laneq_f32((hi)[i_], v1_, (b)[i_], (lane));                            \
            (lo)[i_] = vfmaq_laneq_f32((lo)[i_], u0_, (b)[i_], (lane) + 1);                        \
            (hi)[i_] = vfmaq_laneq_f32((hi)[i_], u1_, (b)[i_], (lane) + 1);                        \
        }                                                                                          \
    } while (0)

/* v: word 2 col of the first value row (column col of keys 0 and 1). */
static inline __attribute__((always_inline)) void
pv_rows(const int rows, size_t nk, const float *p, size_t ldp, const uint16_t *v, size_t ldv,
        float *acc, size_t ldacc)
{
    float32x4_t lo[8], hi[8], b[8];
#pragma GCC unroll 8
    for (int i = 0; i < rows; i++) {
        lo[i] = vld1q_f32(acc + (size_t)i * ldacc);
        hi[i] = vld1q_f32(acc + (size_t)i * ldacc + 4);
    }
    size_t j = 0; /* value row j / 2 starts at v + j * ldv */
    for (; j + 4 <= nk; j += 4) {
#pragma GCC unroll 8
        for (int i = 0; i < rows; i++)
            b[i] = vld1q_f32(p + (size_t)i * ldp + j);
        PV_ROW_LANES(rows, lo, hi, v + j * ldv, b, 0);
        PV_ROW_LANES(rows, lo, hi, v + (j + 2) * ldv, b, 2);
    }
    if (j + 2 <= nk) {
#pragma GCC unroll 8
        for (int i = 0; i < rows; i++)
            b[i] = vcombine_f32(vld1_f32(p + (size_t)i * ldp + j), vdup_n_f32(0.0f));
        PV_ROW_LANES(rows, lo, hi, v + j * ldv, b, 0);
        j += 2;
    }
    if (j < nk) { /* an odd nk's last key, alone */
        const float32x4_t v0 = nsa_neon_bf16_first(vld1q_u16(v + j * ldv));
        const float32x4_t v1 = nsa_neon_bf16_first(vld1q_u16(v + j * ldv + 8));
#pragma GCC unroll 8
        for (int i = 0; i < rows; i++) {
            const float32x4_t pj = vld1q_dup_f32(p + (size_t)i * ldp + j);
            lo[i] = vfmaq_f32(lo[i], v0, pj);
            hi[i] = vfmaq_f32(hi[i], v1, pj);
        }
    }
#pragma GCC unroll 8
    for (int i = 0; i < rows; i++) {
        vst1q_f32(acc + (size_t)i * ldacc, lo[i]);
        vst1q_f32(acc + (size_t)i * ldacc + 4, hi[i]);
    }
}

/* rows (1..8) x cols (1..4) columns: the column tails, v as in pv_rows.
 * Loads and stores of V and acc stop at column cols. */
static inline void pv_rows_x4(size_t rows, size_t cols, size_t nk, const float *p, size_t ldp,
                              const uint16_t *v, size_t ldv, float *acc, size_t ldacc)
{
    float32x4_t c[8];
    for (size_t i = 0; i < rows; i++)
        c[i] = nsa_neon_load_first(acc + i * ldacc, cols);
    for (size_t j = 0; j < nk; j += 2) {
        const uint16x8_t x = nsa_neon_load_pairs_first(v + j * ldv, cols);
        const float32x4_t v0 = nsa_neon_bf16_first(x), v1 = nsa_neon_bf16_second(x);
        const int both = j + 1 < nk; /* an odd nk's last key goes alone */
        for (size_t i = 0; i < rows; i++) {
            c[i] = vfmaq_f32(c[i], v0, vld1q_dup_f32(p + i * ldp + j));
            if (both)
                c[i] = vfmaq_f32(c[i], v1, vld1q_dup_f32(p + i * ldp + j + 1));
        }
    }
    for (size_t i = 0; i < rows; i++)
        nsa_neon_store_first(acc + i * ldacc, c[i], cols);
}

void nsa_bf16_pv_ukernel_8x8__neon(size_t m, size_t nk, size_t dv, const float *p, size_t ldp,
                                   const uint16_t *v, size_t ldv, float *acc, size_t ldacc)
{
    size_t col = 0; /* column col of a value row's two keys starts at word 2 col */
    for (; col + 8 <= dv; col += 8) {
        const uint16_t *vc = v + 2 * col;
        float *ac = acc + col;
#define TILE(rows, r) pv_rows(rows, nk, p + (r) * ldp, ldp, vc, ldv, ac + (r) * ldacc, ldacc)
        NSA_ROW_TILES(m, 8, TILE);
#undef TILE
    }
    for (; col < dv; col += 4) {
        const size_t cols = dv - col < 4 ? dv - col : 4;
        for (size_t r = 0; r < m; r += 8)
            pv_rows_x4(m - r < 8 ? m - r : 8, cols, nk, p + r * ldp, ldp, v + 2 * col, ldv,
                       acc + r * ldacc + col, ldacc);
    }
}
