/* SPDX-License-Identifier: MIT */
/*
 * f32-pv-4x16-neon.c — acc += P . V (contract in src/ukernels.h), aarch64
 * Advanced SIMD: the second product of attention on aarch64 CPUs.
 *
 * Tile: 4 rows x 16 value columns in 16 accumulators, loaded from acc once,
 * run over all nk keys, stored once. Keys go 4 at a time: one load of 4
 * probabilities of each row, then per key 4 loads of a V row feed 16 FMAs
 * that take their probability from a lane (vfmaq_laneq_f32); the last nk % 4
 * keys go one at a time with a broadcast. Column tails (dv % 16) use a
 * 4-column tile, the last dv % 4 columns one whose loads and stores stop at
 * column dv; row tails a 1-row tile. Nothing outside [0, nk) of a P row or
 * [0, dv) of a V or acc row is read or written. The next hint goes with
 * the first row block: the line of its columns of one next row per key.
 */
#include "neon-helpers.h"
#include "ukernels.h"

/* acc[0..3] += p_value * the 16 columns of one V row. */
#define PV_FMA_KEY(acc, v, p_value)                                                                \
    do {                                                                                           \
        (acc)[0] = vfmaq_f32((acc)[0], (v)[0], (p_value));                                         \
        (acc)[1] = vfmaq_f32((acc)[1], (v)[1], (p_value));                                         \
        (acc)[2] = vfmaq_f32((acc)[2], (v)[2], (p_value));                                         \
        (acc)[3] = vfmaq_f32((acc)[3], (v)[3], (p_value));                                         \
    } while (0)

/* The same with the probability taken from lane `lane` of a vector. */
#define PV_FMA_KEY_LANE(acc, v, p_vector, lane)                                                    \
    do {                                                                                           \
        (acc)[0] = vfmaq_laneq_f32((acc)[0], (v)[0], (p_vector), (lane));                          \
        (acc)[1] = vfmaq_laneq_f32((acc)[1], (v)[1], (p_vector), (lane));                          \
        (acc)[2] = vfmaq_laneq_f32((acc)[2], (v)[2], (p_vector), (lane));                          \
        (acc)[3] = vfmaq_laneq_f32((acc)[3], (v)[3], (p_vector), (lane));                          \
    } while (0)

static inline void load16(const float *x, float32x4_t v[4])
{
    v[0] = vld1q_f32(x);
    v[1] = vld1q_f32(x + 4);
    v[2] = vld1q_f32(x + 8);
    v[3] = vld1q_f32(x + 12);
}

static inline void store16(float *x, const float32x4_t v[4])
{
    vst1q_f32(x, v[0]);
    vst1q_f32(x + 4, v[1]);
    vst1q_f32(x + 8, v[2]);
    vst1q_f32(x + 12, v[3]);
}

static inline void pv_4x16(size_t nk, const float *p, size_t ldp, const float *v, size_t ldv,
                           float *acc, size_t ldacc, const float *next)
{
    const float *p0 = p, *p1 = p + ldp, *p2 = p + 2 * ldp, *p3 = p + 3 * ldp;
    float32x4_t c0[4], c1[4], c2[4], c3[4], vj[4];
    load16(acc, c0);
    load16(acc + ldacc, c1);
    load16(acc + 2 * ldacc, c2);
    load16(acc + 3 * ldacc, c3);
    size_t j = 0;
    for (; j + 4 <= nk; j += 4) {
        const float32x4_t b0 = vld1q_f32(p0 + j), b1 = vld1q_f32(p1 + j);
        const float32x4_t b2 = vld1q_f32(p2 + j), b3 = vld1q_f32(p3 + j);
        if (next != NULL)
            for (size_t row = j; row < j + 4; row++)
                nsa_prefetch_line(next + row * ldv);
        load16(v + j * ldv, vj);
        PV_FMA_KEY_LANE(c0, vj, b0, 0);
        PV_FMA_KEY_LANE(c1, vj, b1, 0);
        PV_FMA_KEY_LANE(c2, vj, b2, 0);
        PV_FMA_KEY_LANE(c3, vj, b3, 0);
        load16(v + (j + 1) * ldv, vj);
        PV_FMA_KEY_LANE(c0, vj, b0, 1);
        PV_FMA_KEY_LANE(c1, vj, b1, 1);
        PV_FMA_KEY_LANE(c2, vj, b2, 1);
        PV_FMA_KEY_LANE(c3, vj, b3, 1);
        load16(v + (j + 2) * ldv, vj);
        PV_FMA_KEY_LANE(c0, vj, b0, 2);
        PV_FMA_KEY_LANE(c1, vj, b1, 2);
        PV_FMA_KEY_LANE(c2, vj, b2, 2);
        PV_FMA_KEY_LANE(c3, vj, b3, 2);
        load16(v + (j + 3) * ldv, vj);
        PV_FMA_KEY_LANE(c0, vj, b0, 3);
        PV_FMA_KEY_LANE(c1, vj, b1, 3);
        PV_FMA_KEY_LANE(c2, vj, b2, 3);
        PV_FMA_KEY_LANE(c3, vj, b3, 3);
    }
    for (; j < nk; j++) {
        if (next != NULL)
            nsa_prefetch_line(next + j * ldv);
        load16(v + j * ldv, vj);
        PV_FMA_KEY(c0, vj, vld1q_dup_f32(p0 + j));
        PV_FMA_KEY(c1, vj, vld1q_dup_f32(p1 + j));
        PV_FMA_KEY(c2, vj, vld1q_dup_f32(p2 + j));
        PV_FMA_KEY(c3, vj, vld1q_dup_f32(p3 + j));
    }
    store16(acc, c0);
    store16(acc + ldacc, c1);
    store16(acc + 2 * ldacc, c2);
    store16(acc + 3 * ldacc, c3);
}

static inline void pv_1x16(size_t nk, const float *p, const float *v, size_t ldv, float *acc,
                           const float *next)
{
    float32x4_t c[4], vj[4];
    load16(acc, c);
    size_t j = 0;
    for (; j + 4 <= nk; j += 4) {
        const float32x4_t b = vld1q_f32(p + j);
        if (next != NULL)
            for (size_t row = j; row < j + 4; row++)
                nsa_prefetch_line(next + row * ldv);
        load16(v + j * ldv, vj);
        PV_FMA_KEY_LANE(c, vj, b, 0);
        load16(v + (j + 1) * ldv, vj);
        PV_FMA_KEY_LANE(c, vj, b, 1);
        load16(v + (j + 2) * ldv, vj);
        PV_FMA_KEY_LANE(c, vj, b, 2);
        load16(v + (j + 3) * ldv, vj);
        PV_FMA_KEY_LANE(c, vj, b, 3);
    }
    for (; j < nk; j++) {
        if (next != NULL)
            nsa_prefetch_line(next + j * ldv);
        load16(v + j * ldv, vj);
        PV_FMA_KEY(c, vj, vld1q_dup_f32(p + j));
    }
    store16(acc, c);
}

/* rows (1..4) x cols (1..4) columns: the column tails. Loads and stores of
 * V and acc stop at column cols. */
static inline void pv_rows_x4(size_t rows, size_t cols, size_t nk, const float *p, size_t ldp,
                              const float *v, size_t ldv, float *acc, size_t ldacc,
                              const float *next)
{
    float32x4_t c[4];
    for (size_t i = 0; i < rows; i++)
        c[i] = nsa_neon_load_first(acc + i * ldacc, cols);
    for (size_t j = 0; j < nk; j++) {
        const float32x4_t vj = nsa_neon_load_first(v + j * ldv, cols);
        if (next != NULL)
            nsa_prefetch_line(next + j * ldv);
        for (size_t i = 0; i < rows; i++)
            c[i] = vfmaq_f32(c[i], vj, vld1q_dup_f32(p + i * ldp + j));
    }
    for (size_t i = 0; i < rows; i++)
        nsa_neon_store_first(acc + i * ldacc, c[i], cols);
}

void nsa_f32_pv_ukernel_4x16__neon(size_t m, size_t nk, size_t dv, const float *p, size_t ldp,
                                   const float *v, size_t ldv, float *acc, size_t ldacc,
                                   const float *next)
{
    size_t col = 0;
    for (; col + 16 <= dv; col += 16) {
        const float *hint = next != NULL ? next + col : NULL; /* first row block */
        size_t r = 0;
        for (; r + 4 <= m; r += 4, hint = NULL)
            pv_4x16(nk, p + r * ldp, ldp, v + col, ldv, acc + r * ldacc + col, ldacc, hint);
        for (; r < m; r++, hint = NULL)
            pv_1x16(nk, p + r * ldp, v + col, ldv, acc + r * ldacc + col, hint);
    }
    for (; col < dv; col += 4) {
        const size_t cols = dv - col < 4 ? dv - col : 4;
        for (size_t r = 0; r < m; r += 4)
            pv_rows_x4(m - r < 4 ? m - r : 4, cols, nk, p + r * ldp, ldp, v + col, ldv,
                       acc + r * ldacc + col, ldacc, r == 0 && next != NULL ? next + col : NULL);
    }
}
