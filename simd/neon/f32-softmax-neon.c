/* SPDX-License-Identifier: MIT */
/*
 * f32-softmax-neon.c — the online-softmax step (contract in src/ukernels.h),
 * aarch64 Advanced SIMD: the step between qk and pv on aarch64 CPUs, where
 * the reference kernel's scalar expf would dominate a tile.
 *
 * Per row: a vector max over the row's columns [first, last), one
 * vectorised exp pass over them, zeroes written to the columns of [0, nk)
 * outside them, and the rescale of the row's accumulator (skipped when the
 * maximum did not move). Each range is split into whole vectors of 4 and a
 * tail of 0..3 floats moved lane by lane, so nothing past column nk of a
 * score row, nor past column dv of an acc row, is read or written.
 */
#include <math.h>

#include "neon-helpers.h"
#include "ukernels.h"

static float row_max_of(const float *s, size_t first, size_t last)
{
    float32x4_t vmax = vdupq_n_f32(-INFINITY);
    size_t j = first;
    for (; j + 4 <= last; j += 4)
        vmax = vmaxq_f32(vmax, vld1q_f32(s + j));
    float max = nsa_neon_hmax_f32(vmax);
    for (; j < last; j++)
        max = fmaxf(max, s[j]);
    return max;
}

static void zero_columns(float *s, size_t begin, size_t end)
{
    const float32x4_t zero = vdupq_n_f32(0.0f);
    size_t j = begin;
    for (; j + 4 <= end; j += 4)
        vst1q_f32(s + j, zero);
    for (; j < end; j++)
        s[j] = 0.0f;
}

/* s[j] = exp(s[j] - max) on [first, last); returns their sum. */
static float exponentiate(float *s, size_t first, size_t last, float max)
{
    const float32x4_t vmax = vdupq_n_f32(max);
    float32x4_t sum = vdupq_n_f32(0.0f);
    size_t j = first;
    for (; j + 4 <= last; j += 4) {
        const float32x4_t e = nsa_neon_exp_f32(vsubq_f32(vld1q_f32(s + j), vmax));
        vst1q_f32(s + j, e);
        sum = vaddq_f32(sum, e);
    }
    if (j < last) {
        /* The tail's unused lanes are 0 after the load; exp turns them into
         * nonzero values, so they are cleared before the sum. */
        const size_t tail = last - j;
        const uint32x4_t lane = {0, 1, 2, 3};
        const uint32x4_t used = vcltq_u32(lane, vdupq_n_u32((uint32_t)tail));
        float32x4_t e = nsa_neon_exp_f32(vsubq_f32(nsa_neon_load_first(s + j, tail), vmax));
        e = vreinterpretq_f32_u32(vandq_u32(vreinterpretq_u32_f32(e), used));
        nsa_neon_store_first(s + j, e, tail);
        sum = vaddq_f32(sum, e);
    }
    return nsa_neon_hsum_f32(sum);
}

static void scale_row(float *acc, size_t dv, float factor)
{
    const float32x4_t f = vdupq_n_f32(factor);
    size_t c = 0;
    for (; c + 4 <= dv; c += 4)
        vst1q_f32(acc + c, vmulq_f32(f, vld1q_f32(acc + c)));
    for (; c < dv; c++)
        acc[c] *= factor;
}

void nsa_f32_softmax_ukernel__neon(size_t m, size_t nk, const int32_t *lo, const int32_t *hi,
                                   float *s, size_t lds, float *row_max, float *row_sum, size_t dv,
                                   float *acc, size_t ldacc)
{
    for (size_t r = 0; r < m; r++) {
        float *sr = s + r * lds;
        /* The row's columns [first, last), clipped to [0, nk) in 64 bits so
         * that no lo, hi or nk can wrap around. */
        const int64_t past_hi = (int64_t)hi[r] + 1;
        const int64_t first64 = lo[r] > 0 ? lo[r] : 0;
        const int64_t last64 = past_hi < (int64_t)nk ? past_hi : (int64_t)nk;
        if (first64 >= last64) {
            zero_columns(sr, 0, nk);
            continue;
        }
        const size_t first = (size_t)first64, last = (size_t)last64;
        const float new_max = fmaxf(row_max[r], row_max_of(sr, first, last));
        const float sum = exponentiate(sr, first, last, new_max);
        zero_columns(sr, 0, first);
        zero_columns(sr, last, nk);
        if (new_max != row_max[r]) {
            const float rescale = expf(row_max[r] - new_max);
            row_sum[r] *= rescale;
            scale_row(acc + r * ldacc, dv, rescale);
        }
        row_sum[r] += sum;
        row_max[r] = new_max;
    }
}
