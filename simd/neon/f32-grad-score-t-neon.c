/* SPDX-License-Identifier: MIT */
/*
 * f32-grad-score-t-neon.c — the backward's key side (contract in
 * src/ukernels.h), aarch64 Advanced SIMD.
 *
 * Works on 4 rows x 4 columns at a time: each row's 4 probabilities and
 * score gradients are one vector (exp over the row's columns, 0 outside
 * them), then both 4 x 4 blocks are transposed in registers (trn1/trn2 on
 * 32- and 64-bit lanes) and stored as 4 key rows of the rows that exist,
 * lane by lane when fewer than 4. A block that lies wholly inside a row's
 * columns is loaded as one vector; one that straddles the row's first or
 * last column is loaded lane by lane, so nothing outside a row's columns of
 * s or dp is read, and nothing past row m or column nk of pt or dst is
 * written.
 */
#include <stdint.h>

#include "neon-helpers.h"
#include "ukernels.h"

/* Lanes a .. b-1 of p[0 .. 3] (0 <= a < b <= 4), 0 in the others; only
 * p[a] .. p[b - 1] are read. */
static inline float32x4_t load_lanes(const float *p, size_t a, size_t b)
{
    if (a == 0 && b == 4)
        return vld1q_f32(p);
    float v[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (size_t k = a; k < b; k++)
        v[k] = p[k];
    return vld1q_f32(v);
}

/* x[i] holds row i of a 4 x 4 block; afterwards x[j] holds column j. */
static inline void transpose_4x4(float32x4_t x[4])
{
    const float64x2_t t0 = vreinterpretq_f64_f32(vtrn1q_f32(x[0], x[1]));
    const float64x2_t t1 = vreinterpretq_f64_f32(vtrn2q_f32(x[0], x[1]));
    const float64x2_t t2 = vreinterpretq_f64_f32(vtrn1q_f32(x[2], x[3]));
    const float64x2_t t3 = vreinterpretq_f64_f32(vtrn2q_f32(x[2], x[3]));
    x[0] = vreinterpretq_f32_f64(vtrn1q_f64(t0, t2));
    x[1] = vreinterpretq_f32_f64(vtrn1q_f64(t1, t3));
    x[2] = vreinterpretq_f32_f64(vtrn2q_f64(t0, t2));
    x[3] = vreinterpretq_f32_f64(vtrn2q_f64(t1, t3));
}

void nsa_f32_grad_score_t_ukernel__neon(size_t m, size_t nk, const int32_t *lo, const int32_t *hi,
                                        const float *lse, const float *dot, const float *gain,
                                        float scale, const float *s, size_t lds, const float *dp,
                                        size_t lddp, float *pt, float *dst, size_t ldt)
{
    const float32x4_t vscale = vdupq_n_f32(scale);
    const uint32x4_t lane = {0, 1, 2, 3};
    for (size_t r0 = 0; r0 < m; r0 += 4) {
        const size_t rows = m - r0 < 4 ? m - r0 : 4;
        /* Each row's columns [first, last), clipped to [0, nk) in 64 bits so
         * that no lo, hi or nk can wrap around; first = last = 0 when none. */
        size_t first[4] = {0, 0, 0, 0}, last[4] = {0, 0, 0, 0};
        for (size_t i = 0; i < rows; i++) {
            const size_t r = r0 + i;
            const int64_t past_hi = (int64_t)hi[r] + 1;
            const int64_t first64 = lo[r] > 0 ? lo[r] : 0;
            const int64_t last64 = past_hi < (int64_t)nk ? past_hi : (int64_t)nk;
            if (first64 < last64) {
                first[i] = (size_t)first64;
                last[i] = (size_t)last64;
            }
        }
        for (size_t j0 = 0; j0 < nk; j0 += 4) {
            const size_t cols = nk - j0 < 4 ? nk - j0 : 4;
            float32x4_t p[4], ds[4];
            for (size_t i = 0; i < 4; i++) {
                p[i] = ds[i] = vdupq_n_f32(0.0f);
                if (i >= rows)
                    continue;
                /* The row's columns within this block, as lanes [a, b). */
                const size_t a = first[i] > j0 ? first[i] - j0 : 0;
                const size_t b = last[i] < j0 + cols ? (last[i] > j0 ? last[i] - j0 : 0) : cols;
                if (a >= b)
                    continue;
                const size_t r = r0 + i;
                const uint32x4_t keep = vandq_u32(vcgeq_u32(lane, vdupq_n_u32((uint32_t)a)),
                                                  vcltq_u32(lane, vdupq_n_u32((uint32_t)b)));
                const float32x4_t x = vsubq_f32(load_lanes(s + r * lds + j0, a, b),
                                                vdupq_n_f32(lse[r]));
                const float32x4_t e = vmulq_f32(vdupq_n_f32(gain[r]), nsa_neon_exp_f32(x));
                p[i] = vreinterpretq_f32_u32(vandq_u32(keep, vreinterpretq_u32_f32(e)));
                const float32x4_t d = vsubq_f32(load_lanes(dp + r * lddp + j0, a, b),
                                                vdupq_n_f32(dot[r]));
                ds[i] = vmulq_f32(vmulq_f32(vscale, p[i]), d);
            }
            transpose_4x4(p);
            transpose_4x4(ds);
            for (size_t j = 0; j < cols; j++) {
                nsa_neon_store_first(pt + (j0 + j) * ldt + r0, p[j], rows);
                nsa_neon_store_first(dst + (j0 + j) * ldt + r0, ds[j], rows);
            }
        }
    }
}
