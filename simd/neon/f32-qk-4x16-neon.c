/* SPDX-License-Identifier: MIT */
/*
 * f32-qk-4x16-neon.c — scores of query rows against one key panel at a time
 * (contract in src/ukernels.h), aarch64 Advanced SIMD. The qk kernel of
 * aarch64 CPUs, where the reference kernel would leave the vector unit idle.
 *
 * Tile: 4 rows x 16 keys in 16 accumulators (4 vectors of 4 keys per row).
 * Channels go 4 at a time: one load of 4 channels of each query row, then
 * per channel 4 loads of the panel feed 16 FMAs that take their query value
 * from a lane (vfmaq_laneq_f32), so q needs no broadcasts. The last dk % 4
 * channels go one at a time with a broadcast. Rows past the last multiple of
 * 4 go through a 1-row tile. No tail in keys: panels are whole. A q row is
 * read on [0, dk) only. Accumulation order is fixed (channel 0 first),
 * independent of threads. The next hint goes with the first row block: one
 * line of the next panel per channel.
 */
#include "neon-helpers.h"
#include "ukernels.h"

/* acc[0..3] += q_value * the 16 keys of one panel channel. */
#define QK_FMA_CHANNEL(acc, k, q_value)                                                            \
    do {                                                                                           \
        (acc)[0] = vfmaq_f32((acc)[0], (k)[0], (q_value));                                         \
        (acc)[1] = vfmaq_f32((acc)[1], (k)[1], (q_value));                                         \
        (acc)[2] = vfmaq_f32((acc)[2], (k)[2], (q_value));                                         \
        (acc)[3] = vfmaq_f32((acc)[3], (k)[3], (q_value));                                         \
    } while (0)

/* The same with the query value taken from lane `lane` of a vector. */
#define QK_FMA_CHANNEL_LANE(acc, k, q_vector, lane)                                                \
    do {                                                                                           \
        (acc)[0] = vfmaq_laneq_f32((acc)[0], (k)[0], (q_vector), (lane));                          \
        (acc)[1] = vfmaq_laneq_f32((acc)[1], (k)[1], (q_vector), (lane));                          \
        (acc)[2] = vfmaq_laneq_f32((acc)[2], (k)[2], (q_vector), (lane));                          \
        (acc)[3] = vfmaq_laneq_f32((acc)[3], (k)[3], (q_vector), (lane));                          \
    } while (0)

static inline void load_panel_channel(const float *channel, float32x4_t k[4])
{
    k[0] = vld1q_f32(channel);
    k[1] = vld1q_f32(channel + 4);
    k[2] = vld1q_f32(channel + 8);
    k[3] = vld1q_f32(channel + 12);
}

static inline void store_scaled(float *s, float32x4_t scale, const float32x4_t acc[4])
{
    vst1q_f32(s, vmulq_f32(scale, acc[0]));
    vst1q_f32(s + 4, vmulq_f32(scale, acc[1]));
    vst1q_f32(s + 8, vmulq_f32(scale, acc[2]));
    vst1q_f32(s + 12, vmulq_f32(scale, acc[3]));
}

static inline void qk_4x16(size_t dk, float32x4_t scale, const float *q, size_t ldq,
                           const float *panel, float *s, size_t lds, const float *next)
{
    float32x4_t c0[4], c1[4], c2[4], c3[4];
    for (int i = 0; i < 4; i++)
        c0[i] = c1[i] = c2[i] = c3[i] = vdupq_n_f32(0.0f);
    const float *q0 = q, *q1 = q + ldq, *q2 = q + 2 * ldq, *q3 = q + 3 * ldq;
    float32x4_t k[4];
    size_t c = 0;
    for (; c + 4 <= dk; c += 4) {
        const float32x4_t a0 = vld1q_f32(q0 + c), a1 = vld1q_f32(q1 + c);
        const float32x4_t a2 = vld1q_f32(q2 + c), a3 = vld1q_f32(q3 + c);
        if (next != NULL)
            for (size_t line = c; line < c + 4; line++)
                nsa_prefetch_line(next + line * NSA_PANEL);
        load_panel_channel(panel + c * NSA_PANEL, k);
        QK_FMA_CHANNEL_LANE(c0, k, a0, 0);
        QK_FMA_CHANNEL_LANE(c1, k, a1, 0);
        QK_FMA_CHANNEL_LANE(c2, k, a2, 0);
        QK_FMA_CHANNEL_LANE(c3, k, a3, 0);
        load_panel_channel(panel + (c + 1) * NSA_PANEL, k);
        QK_FMA_CHANNEL_LANE(c0, k, a0, 1);
        QK_FMA_CHANNEL_LANE(c1, k, a1, 1);
        QK_FMA_CHANNEL_LANE(c2, k, a2, 1);
        QK_FMA_CHANNEL_LANE(c3, k, a3, 1);
        load_panel_channel(panel + (c + 2) * NSA_PANEL, k);
        QK_FMA_CHANNEL_LANE(c0, k, a0, 2);
        QK_FMA_CHANNEL_LANE(c1, k, a1, 2);
        QK_FMA_CHANNEL_LANE(c2, k, a2, 2);
        QK_FMA_CHANNEL_LANE(c3, k, a3, 2);
        load_panel_channel(panel + (c + 3) * NSA_PANEL, k);
        QK_FMA_CHANNEL_LANE(c0, k, a0, 3);
        QK_FMA_CHANNEL_LANE(c1, k, a1, 3);
        QK_FMA_CHANNEL_LANE(c2, k, a2, 3);
        QK_FMA_CHANNEL_LANE(c3, k, a3, 3);
    }
    for (; c < dk; c++) {
        if (next != NULL)
            nsa_prefetch_line(next + c * NSA_PANEL);
        load_panel_channel(panel + c * NSA_PANEL, k);
        QK_FMA_CHANNEL(c0, k, vld1q_dup_f32(q0 + c));
        QK_FMA_CHANNEL(c1, k, vld1q_dup_f32(q1 + c));
        QK_FMA_CHANNEL(c2, k, vld1q_dup_f32(q2 + c));
        QK_FMA_CHANNEL(c3, k, vld1q_dup_f32(q3 + c));
    }
    store_scaled(s, scale, c0);
    store_scaled(s + lds, scale, c1);
    store_scaled(s + 2 * lds, scale, c2);
    store_scaled(s + 3 * lds, scale, c3);
}

static inline void qk_1x16(size_t dk, float32x4_t scale, const float *q, const float *panel,
                           float *s, const float *next)
{
    float32x4_t acc[4], k[4];
    for (int i = 0; i < 4; i++)
        acc[i] = vdupq_n_f32(0.0f);
    size_t c = 0;
    for (; c + 4 <= dk; c += 4) {
        const float32x4_t a = vld1q_f32(q + c);
        if (next != NULL)
            for (size_t line = c; line < c + 4; line++)
                nsa_prefetch_line(next + line * NSA_PANEL);
        load_panel_channel(panel + c * NSA_PANEL, k);
        QK_FMA_CHANNEL_LANE(acc, k, a, 0);
        load_panel_channel(panel + (c + 1) * NSA_PANEL, k);
        QK_FMA_CHANNEL_LANE(acc, k, a, 1);
        load_panel_channel(panel + (c + 2) * NSA_PANEL, k);
        QK_FMA_CHANNEL_LANE(acc, k, a, 2);
        load_panel_channel(panel + (c + 3) * NSA_PANEL, k);
        QK_FMA_CHANNEL_LANE(acc, k, a, 3);
    }
    for (; c < dk; c++) {
        if (next != NULL)
            nsa_prefetch_line(next + c * NSA_PANEL);
        load_panel_channel(panel + c * NSA_PANEL, k);
        QK_FMA_CHANNEL(acc, k, vld1q_dup_f32(q + c));
    }
    store_scaled(s, scale, acc);
}

void nsa_f32_qk_ukernel_4x16__neon(size_t m, size_t np, size_t dk, float scale, const float *q,
                                   size_t ldq, const float *kp, float *s, size_t lds,
                                   const float *next)
{
    const float32x4_t vscale = vdupq_n_f32(scale);
    for (size_t p = 0; p < np; p++) {
        const float *panel = kp + p * dk * NSA_PANEL;
        const float *hint = next != NULL ? next + p * dk * NSA_PANEL : NULL; /* first row block */
        float *sp = s + p * NSA_PANEL;
        size_t r = 0;
        for (; r + 4 <= m; r += 4, hint = NULL)
            qk_4x16(dk, vscale, q + r * ldq, ldq, panel, sp + r * lds, lds, hint);
        for (; r < m; r++, hint = NULL)
            qk_1x16(dk, vscale, q + r * ldq, panel, sp + r * lds, hint);
    }
}
