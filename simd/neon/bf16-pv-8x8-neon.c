/* SPDX-License-Identifier: MIT */
/*
 * bf16-pv-8x8-neon.c — acc += P . V with bf16 value rows (contract in
 * src/ukernels.h), aarch64 Advanced SIMD: the pv_bf16 kernel of aarch64
 * CPUs.
 *
 * Tile: up to 8 rows x 8 value columns in 16 accumulators, loaded from acc
 * once, run over all nk keys, stored once; rows go 8, then 4, 2, 1 at a
 * time. Keys go 4 at a time as in f32-pv-4x16-neon.c: one load of 4
 * probabilities of each row, then per key one load of 8 bf16 of a V row,
 * widened to fp32 (2 SHLL), feeds 16 FMAs that take their probability from
 * a lane (vfmaq_laneq_f32); the last nk % 4 keys go one at a time with a
 * broadcast. 8 x 8 for the reason given in bf16-qk-8x8-neon.c: each value
 * is widened once for 8 rows. Column tails (dv % 8) use a 4-column tile,
 * the last dv % 4 columns one whose loads and stores stop at column dv.
 * Nothing outside [0, nk) of a P row or [0, dv) of a V or acc row is read
 * or written.
 */
#include "neon-helpers.h"
#include "row-tiles.h"
#include "ukernels.h"

/* One V row of 8 values (at `row`), widened once, into the accumulators lo
 * (columns 0..3) and hi (columns 4..7) of `rows` rows, row i's probability
 * taken from lane `lane` of b[i]. */
#define PV_KEY_LANE(rows, lo, hi, row, b, lane)                                                    \
    do {                                                                                           \
        const uint16_t *row_ = (row);                                                              \
        const uint16x8_t v_ = vld1q_u16(row_);                                                     \
        const float32x4_t v0_ = nsa_neon_bf16_low(v_), v1_ = nsa_neon_bf16_high(v_);               \
        _Pragma("GCC unroll 8") for (int i_ = 0; i_ < (rows); i_++)                                \
        {                                                                                          \
            (lo)[i_] = vfmaq_laneq_f32((lo)[i_], v0_, (b)[i_], (lane));                            \
            (hi)[i_] = vfmaq_laneq_f32((hi)[i_], v1_, (b)[i_], (lane));                            \
        }                                                                                          \
    } while (0)

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
    size_t j = 0;
    for (; j + 4 <= nk; j += 4) {
#pragma GCC unroll 8
        for (int i = 0; i < rows; i++)
            b[i] = vld1q_f32(p + (size_t)i * ldp + j);
        PV_KEY_LANE(rows, lo, hi, v + j * ldv, b, 0);
        PV_KEY_LANE(rows, lo, hi, v + (j + 1) * ldv, b, 1);
        PV_KEY_LANE(rows, lo, hi, v + (j + 2) * ldv, b, 2);
        PV_KEY_LANE(rows, lo, hi, v + (j + 3) * ldv, b, 3);
    }
    for (; j < nk; j++) {
        const uint16x8_t vj = vld1q_u16(v + j * ldv);
        const float32x4_t v0 = nsa_neon_bf16_low(vj), v1 = nsa_neon_bf16_high(vj);
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

/* rows (1..8) x cols (1..4) columns: the column tails. Loads and stores of
 * V and acc stop at column cols. */
static inline void pv_rows_x4(size_t rows, size_t cols, size_t nk, const float *p, size_t ldp,
                              const uint16_t *v, size_t ldv, float *acc, size_t ldacc)
{
    float32x4_t c[8];
    for (size_t i = 0; i < rows; i++)
        c[i] = nsa_neon_load_first(acc + i * ldacc, cols);
    for (size_t j = 0; j < nk; j++) {
        const float32x4_t vj = nsa_neon_load_bf16_first(v + j * ldv, cols);
        for (size_t i = 0; i < rows; i++)
            c[i] = vfmaq_f32(c[i], vj, vld1q_dup_f32(p + i * ldp + j));
    }
    for (size_t i = 0; i < rows; i++)
        nsa_neon_store_first(acc + i * ldacc, c[i], cols);
}

void nsa_bf16_pv_ukernel_8x8__neon(size_t m, size_t nk, size_t dv, const float *p, size_t ldp,
                                   const uint16_t *v, size_t ldv, float *acc, size_t ldacc)
{
    size_t col = 0;
    for (; col + 8 <= dv; col += 8) {
        const uint16_t *vc = v + col;
        float *ac = acc + col;
#define TILE(rows, r) pv_rows(rows, nk, p + (r) * ldp, ldp, vc, ldv, ac + (r) * ldacc, ldacc)
        NSA_ROW_TILES(m, 8, TILE);
#undef TILE
    }
    for (; col < dv; col += 4) {
        const size_t cols = dv - col < 4 ? dv - col : 4;
        for (size_t r = 0; r < m; r += 8)
            pv_rows_x4(m - r < 8 ? m - r : 8, cols, nk, p + r * ldp, ldp, v + col, ldv,
                       acc + r * ldacc + col, ldacc);
    }
}
