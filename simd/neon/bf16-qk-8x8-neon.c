/* SPDX-License-Identifier: MIT */
/*
 * bf16-qk-8x8-neon.c — scores of query rows against panel-packed bf16 keys
 * (paired layout, contract in src/ukernels.h), aarch64 Advanced SIMD: the
 * qk_bf16 kernel of aarch64 CPUs.
 *
 * Tile: up to 8 rows x 8 keys (half a panel) in 16 accumulators. Channels
 * go 4 at a time as in f32-qk-4x16-neon.c: one load of 4 channels of each
 * query row, then per panel row (channels c and c + 1 of the 8 keys) two
 * loads of 4 keys' pairs, each widened to fp32 for both channels (SHL for
 * c, AND for c + 1: nsa_neon_bf16_first, _second), feed 32 FMAs that take
 * their query value from a lane (vfmaq_laneq_f32). 8 rows x 8 keys rather
 * than 4 x 16 because widening costs vector instructions: each key is
 * widened once for 8 rows (twice for a decode group of G = 16) instead of
 * once for 4, in 16 accumulators + 8 query vectors + 4 keys + the mask of
 * the 32 registers. The last dk % 4 channels go as one more panel row (its
 * 2 query values loaded alone) and, for an odd dk, a last row of channel
 * dk - 1 only with a broadcast. Rows go 8, then 4, 2, 1 at a time. No tail
 * in keys: panels are whole. A q row is read on [0, dk) only. Accumulation
 * order is fixed (channel 0 first), independent of threads.
 */
#include "neon-helpers.h"
#include "row-tiles.h"
#include "ukernels.h"

/* One panel row of 8 keys (at `row`: channels c and c + 1), widened once,
 * into the accumulators lo (keys 0..3) and hi (keys 4..7) of `rows` rows,
 * row i's query values for c and c + 1 taken from lanes `lane` and
 * `lane` + 1 of a[i]. */
#define QK_ROW_LANES(rows, lo, hi, row, a, lane)                                                   \
    do {                                                                                           \
        const uint16_t *row_ = (row);                                                              \
        const uint16x8_t x0_ = vld1q_u16(row_), x1_ = vld1q_u16(row_ + 8);                         \
        const float32x4_t k0_ = nsa_neon_bf16_first(x0_), k1_ = nsa_neon_bf16_first(x1_);          \
        const float32x4_t l0_ = nsa_neon_bf16_second(x0_), l1_ = nsa_neon_bf16_second(x1_);        \
        _Pragma("GCC unroll 8") for (int i_ = 0; i_ < (rows); i_++)                                \
        {                                                                                          \
            (lo)[i_] = vfmaq_laneq_f32((lo)[i_], k0_, (a)[i_], (lane));                            \
            (hi)[i_] = vfmaq_laneq_f32((hi)[i_], k1_, (a)[i_], (lane));                            \
            (lo)[i_] = vfmaq_laneq_f32((lo)[i_], l0_, (a)[i_], (lane) + 1);                        \
            (hi)[i_] = vfmaq_laneq_f32((hi)[i_], l1_, (a)[i_], (lane) + 1);                        \
        }                                                                                          \
    } while (0)

/* keys: the pairs of 8 consecutive keys in a panel's first row (panel row
 * stride 2 NSA_PANEL); s: their 8 scores in each of `rows` rows. */
static inline __attribute__((always_inline)) void
qk_rows(const int rows, size_t dk, float32x4_t scale, const float *q, size_t ldq,
        const uint16_t *keys, float *s, size_t lds)
{
    float32x4_t lo[8], hi[8], a[8];
#pragma GCC unroll 8
    for (int i = 0; i < rows; i++)
        lo[i] = hi[i] = vdupq_n_f32(0.0f);
    size_t c = 0; /* panel row c / 2 starts at keys + c * NSA_PANEL */
    for (; c + 4 <= dk; c += 4) {
#pragma GCC unroll 8
        for (int i = 0; i < rows; i++)
            a[i] = vld1q_f32(q + (size_t)i * ldq + c);
        QK_ROW_LANES(rows, lo, hi, keys + c * NSA_PANEL, a, 0);
        QK_ROW_LANES(rows, lo, hi, keys + (c + 2) * NSA_PANEL, a, 2);
    }
    if (c + 2 <= dk) {
#pragma GCC unroll 8
        for (int i = 0; i < rows; i++)
            a[i] = vcombine_f32(vld1_f32(q + (size_t)i * ldq + c), vdup_n_f32(0.0f));
        QK_ROW_LANES(rows, lo, hi, keys + c * NSA_PANEL, a, 0);
        c += 2;
    }
    if (c < dk) { /* an odd dk's last row: channel dk - 1 only */
        const float32x4_t k0 = nsa_neon_bf16_first(vld1q_u16(keys + c * NSA_PANEL));
        const float32x4_t k1 = nsa_neon_bf16_first(vld1q_u16(keys + c * NSA_PANEL + 8));
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
            /* key h's pair in each panel row is at word 2 h */
            const uint16_t *keys = kp + p * nsa_bf16_panel_words(dk) + 2 * h;
            float *sp = s + p * NSA_PANEL + h;
#define TILE(rows, r) qk_rows(rows, dk, vscale, q + (r) * ldq, ldq, keys, sp + (r) * lds, lds)
            NSA_ROW_TILES(m, 8, TILE);
#undef TILE
        }
    }
}
