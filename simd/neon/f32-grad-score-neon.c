/* SPDX-License-Identifier: MIT */
/*
 * f32-grad-score-neon.c — score gradients of the backward's query side
 * (contract in src/ukernels.h), aarch64 Advanced SIMD: dS = coef P o
 * (dP - dot), 4 columns at a time, the last nk % 4 moved lane by lane so
 * nothing past column nk of a p or dp row is read or written.
 */
#include "neon-helpers.h"
#include "ukernels.h"

void nsa_f32_grad_score_ukernel__neon(size_t m, size_t nk, const float *coef, const float *dot,
                                      const float *p, size_t ldp, float *dp, size_t lddp)
{
    for (size_t r = 0; r < m; r++) {
        const float32x4_t c = vdupq_n_f32(coef[r]), d = vdupq_n_f32(dot[r]);
        const float *pr = p + r * ldp;
        float *dpr = dp + r * lddp;
        size_t j = 0;
        for (; j + 4 <= nk; j += 4) {
            const float32x4_t x = vsubq_f32(vld1q_f32(dpr + j), d);
            const float32x4_t cp = vmulq_f32(c, vld1q_f32(pr + j));
            vst1q_f32(dpr + j, vmulq_f32(cp, x));
        }
        if (j < nk) {
            const size_t tail = nk - j;
            const float32x4_t x = vsubq_f32(nsa_neon_load_first(dpr + j, tail), d);
            const float32x4_t cp = vmulq_f32(c, nsa_neon_load_first(pr + j, tail));
            nsa_neon_store_first(dpr + j, vmulq_f32(cp, x), tail);
        }
    }
}
