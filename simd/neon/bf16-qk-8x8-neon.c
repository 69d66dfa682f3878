/* SPDX-License-Identifier: MIT */
/*
 * bf16-qk-8x8-neon.c — scores of query rows against panel-packed bf16 keys
 * (contract in src/ukernels.h), aarch64 Advanced SIMD: the qk_bf16 kernel
 * of aarch64 CPUs.
 *
 * Tile: up to 8 rows x 8 keys (half a panel) in 16 accumulators. Channels
 * go 4 at a time as in f32-qk-4x16-neon.c: one load of 4 channels of each
 * query row, then per channel one load of 8 bf16 keys, widened to fp32 (2
 * SHLL), feeds 16 FMAs that take their query value from a lane
 * (vfmaq_laneq_f32). 8 rows x 8 keys rather than 4 x 16 because widening
 * costs vector instructions: each key is widened once for 8 rows (twice for
 * a decode group of G = 16) instead of once for 4, in 16 accumulators + 8
 * query vectors + 2 keys of the 32 registers. The last dk % 4 channels go
 * one at a time with a broadcast. Rows go 8, then 4, 2, 1 at a time. No
 * tail in keys: panels are whole. A q row is read on [0, dk) only.
 * Accumulation order is fixed (channel 0 first), independent of threads.
 */
#include "neon-helpers.h"
#include "row-tiles.h"
#include "ukernels.h"

/* One channel of 8 keys (at `channel`), widened once, into the accumulators
 * lo (keys 0..3) and hi (keys 4..7) of `rows` rows, row i's query value taken
 * from lane `lane` of a[i]. */
#define QK_CHANNEL_LANE(rows, lo, hi, channel, a, lane)                                            \
    do {                                                                                           \
        const uint16_t *ch_ = (channel);                                                           \
        const uint16x8_t k_ = vld1q_u16(ch_);                                                      \
        const float32x4_t k0_ = nsa_neon_bf16_low(k_), k1_ = nsa_neon_bf16_high(k_);               \
        _Pragma("GCC unroll 8") for (int i_ = 0; i_ < (rows); i_++)                                \
        {                                                                                          \
            (lo)[i_] = vfmaq_laneq_f32((lo)[i_], k0_, (a)[i_], (lane));                            \
            (hi)[i_] = vfmaq_laneq_f32((hi)[i_], k1_, (a)[i_], (lane));                            \
        }                                                                                          \
    } while (0)

/* keys: 8 consecutive keys of a panel (channel stride NSA_PANEL); s: their
 * 8 scores in each of `rows` rows. */
static inline __attribute__((always_inline)) void
qk_rows(const int rows, size_t dk, float32x4_t scale, const float *q, size_t ldq,
        const uint16_t *keys, float *s, size_t lds)
{
    float32x4_t lo[8], hi[8], a[8];
#pragma GCC unroll 8
    for (int i = 0; i < rows; i++)
        lo[i] = hi[i] = vdupq_n_f32(0.0f);
    size_t c = 0;
    for (; c + 4 <= dk; c += 4) {
#pragma GCC unroll 8
        for (int i = 0; i < rows; i++)
            a[i] = vld1q_f32(q + (size_t)i * ldq + c);
        QK_CHANNEL_LANE(rows, lo, hi, keys + c * NSA_PANEL, a, 0);
        QK_CHANNEL_LANE(rows, lo, hi, keys + (c + 1) * NSA_PANEL, a, 1);
        QK_CHANNEL_LANE(rows, lo, hi, keys + (c + 2) * NSA_PANEL, a, 2);
        QK_CHANNEL_LANE(rows, lo, hi, keys + (c + 3) * NSA_PANEL, a, 3);
    }
    for (; c < dk; c++) {
        const uint16x8_t k = vld1q_u16(keys + c * NSA_PANEL);
        const float32x4_t k0 = nsa_neon_bf16_low(k), k1 = nsa_neon_bf16_high(k);
#pragma GCC unroll 8
        for (int i = 0; i < rows; i++) {
            const float32x4_t b = vld1q_dup_f32(q + (size_t)i * ldq + c);
            lo[i] = vfmaq_f32(lo[i], k0, b);
            hi[i] = vfmaq_f32(hi[i], k1, b);
        }
    }
#pragma GCC unroll 8
    for (int i = 0; i < rows; i++) {
        vst1q_f32(s + (size_t)i * lds, vmulq_f32(scale, lo[i]));
        vst1q_f32(s + (size_t)i * lds + 4, vmulq_f32(scale, hi[i]));
    }
}

void nsa_bf16_qk_ukernel_8x8__neon(size_t m, size_t np, size_t dk, float scale, const float *q,
                                   size_t ldq, const uint16_t *kp, float *s, size_t lds)
{
    const float32x4_t vscale = vdupq_n_f32(scale);
    for (size_t p = 0; p < np; p++) {
        for (size_t h = 0; h < NSA_PANEL; h += 8) {
            const uint16_t *keys = kp + p * dk * NSA_PANEL + h;
            float *sp = s + p * NSA_PANEL + h;
#define TILE(rows, r) qk_rows(rows, dk, vscale, q + (r) * ldq, ldq, keys, sp + (r) * lds, lds)
            NSA_ROW_TILES(m, 8, TILE);
#undef TILE
        }
    }
}
