/* SPDX-License-Identifier: MIT */
/*
 * f32-pool-neon.c — weighted pooling of one compression window (mean and
 * weighted phi, contract in src/ukernels.h), aarch64 Advanced SIMD: the
 * compression phase's inner loop on aarch64 CPUs.
 *
 * 16 columns at a time in 4 accumulators down the l rows of the window (one
 * broadcast of the row's weight feeds 4 FMAs), then 4 at a time, then the
 * last dim % 4 columns loaded and stored lane by lane, so nothing past
 * column dim of an x row or of y is read or written. Rows are summed in
 * order (row 0 first), as the reference kernel does.
 */
#include "neon-helpers.h"
#include "ukernels.h"

void nsa_f32_pool_ukernel__neon(size_t l, size_t dim, const float *weight, const float *x,
                                size_t ldx, float *y)
{
    size_t c = 0;
    for (; c + 16 <= dim; c += 16) {
        float32x4_t s0 = vdupq_n_f32(0.0f), s1 = s0, s2 = s0, s3 = s0;
        for (size_t j = 0; j < l; j++) {
            const float *xj = x + j * ldx + c;
            const float32x4_t w = vld1q_dup_f32(weight + j);
            s0 = vfmaq_f32(s0, w, vld1q_f32(xj));
            s1 = vfmaq_f32(s1, w, vld1q_f32(xj + 4));
            s2 = vfmaq_f32(s2, w, vld1q_f32(xj + 8));
            s3 = vfmaq_f32(s3, w, vld1q_f32(xj + 12));
        }
        vst1q_f32(y + c, s0);
        vst1q_f32(y + c + 4, s1);
        vst1q_f32(y + c + 8, s2);
        vst1q_f32(y + c + 12, s3);
    }
    for (; c < dim; c += 4) {
        const size_t cols = dim - c < 4 ? dim - c : 4;
        float32x4_t sum = vdupq_n_f32(0.0f);
        for (size_t j = 0; j < l; j++)
            sum = vfmaq_f32(sum, vld1q_dup_f32(weight + j),
                            nsa_neon_load_first(x + j * ldx + c, cols));
        nsa_neon_store_first(y + c, sum, cols);
    }
}
