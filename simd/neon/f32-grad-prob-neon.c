/* SPDX-License-Identifier: MIT */
/*
 * f32-grad-prob-neon.c — the backward's probabilities (contract in
 * src/ukernels.h), aarch64 Advanced SIMD: per row, one vectorised exp pass
 * over the row's columns [first, last) with the row sum of P o dP in the
 * same pass, and zeroes written to the columns of [0, nk) outside them.
 *
 * Each range is split into whole vectors of 4 and a tail of 0..3 floats
 * moved lane by lane, so nothing past column nk of an s row is read or
 * written, and dp is read on the row's columns only.
 */
#include <stdint.h>

#include "neon-helpers.h"
#include "ukernels.h"

static void zero_columns(float *s, size_t begin, size_t end)
{
    const float32x4_t zero = vdupq_n_f32(0.0f);
    size_t j = begin;
    for (; j + 4 <= end; j += 4)
        vst1q_f32(s + j, zero);
    for (; j < end; j++)
        s[j] = 0.0f;
}

void nsa_f32_grad_prob_ukernel__neon(size_t m, size_t nk, const int32_t *lo, const int32_t *hi,
                                     const float *lse, float *s, size_t lds, const float *dp,
                                     size_t lddp, float *dot)
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
            continue; /* no column: dot[r] += 0 */
        }
        const size_t first = (size_t)first64, last = (size_t)last64;
        const float *dpr = dp != NULL ? dp + r * lddp : NULL;
        const float32x4_t vlse = vdupq_n_f32(lse[r]);
        float32x4_t sum = vdupq_n_f32(0.0f);
        size_t j = first;
        for (; j + 4 <= last; j += 4) {
            const float32x4_t e = nsa_neon_exp_f32(vsubq_f32(vld1q_f32(sr + j), vlse));
            vst1q_f32(sr + j, e);
            if (dpr != NULL)
                sum = vfmaq_f32(sum, e, vld1q_f32(dpr + j));
        }
        if (j < last) {
            /* Unused lanes load as 0 and exp makes them nonzero: cleared
             * before the store and the sum. dp's unused lanes load as 0. */
            const size_t tail = last - j;
            const uint32x4_t lane = {0, 1, 2, 3};
            const uint32x4_t used = vcltq_u32(lane, vdupq_n_u32((uint32_t)tail));
            float32x4_t e = nsa_neon_exp_f32(vsubq_f32(nsa_neon_load_first(sr + j, tail), vlse));
            e = vreinterpretq_f32_u32(vandq_u32(vreinterpretq_u32_f32(e), used));
            nsa_neon_store_first(sr + j, e, tail);
            if (dpr != NULL)
                sum = vfmaq_f32(sum, e, nsa_neon_load_first(dpr + j, tail));
        }
        zero_columns(sr, 0, first);
        zero_columns(sr, last, nk);
        if (dpr != NULL)
            dot[r] += nsa_neon_hsum_f32(sum);
    }
}
