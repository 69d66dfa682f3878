/* SPDX-License-Identifier: MIT */
/*
 * f32-gate-mix-neon.c — the gated sum of the three branches (spec section 6,
 * contract in src/ukernels.h), aarch64 Advanced SIMD: the last step of every
 * query row on aarch64 CPUs, normalising the three online-softmax
 * accumulators on the way.
 *
 * Per row, the three factors gate / sum (nsa_gate_over_sum, shared with the
 * other ISAs) are computed once; then 4 columns at a time take 3 loads and
 * 3 multiply-adds; the last dv % 4 columns are loaded and stored lane by
 * lane, so nothing past column dv of an accumulator or output row is read
 * or written.
 */
#include "neon-helpers.h"
#include "ukernels.h"

void nsa_f32_gate_mix_ukernel__neon(size_t m, size_t dv, const float *gates, const float *cmp_acc,
                                    const float *cmp_sum, const float *slc_acc,
                                    const float *slc_sum, const float *swa_acc,
                                    const float *swa_sum, size_t ldacc, float *out)
{
    for (size_t r = 0; r < m; r++) {
        const float32x4_t a = vdupq_n_f32(nsa_gate_over_sum(gates[3 * r + 0], cmp_sum[r]));
        const float32x4_t b = vdupq_n_f32(nsa_gate_over_sum(gates[3 * r + 1], slc_sum[r]));
        const float32x4_t c = vdupq_n_f32(nsa_gate_over_sum(gates[3 * r + 2], swa_sum[r]));
        const float *cmp = cmp_acc + r * ldacc, *slc = slc_acc + r * ldacc;
        const float *swa = swa_acc + r * ldacc;
        float *o = out + r * dv;
        size_t e = 0;
        for (; e + 4 <= dv; e += 4) {
            float32x4_t x = vmulq_f32(a, vld1q_f32(cmp + e));
            x = vfmaq_f32(x, b, vld1q_f32(slc + e));
            x = vfmaq_f32(x, c, vld1q_f32(swa + e));
            vst1q_f32(o + e, x);
        }
        if (e < dv) {
            const size_t tail = dv - e;
            float32x4_t x = vmulq_f32(a, nsa_neon_load_first(cmp + e, tail));
            x = vfmaq_f32(x, b, nsa_neon_load_first(slc + e, tail));
            x = vfmaq_f32(x, c, nsa_neon_load_first(swa + e, tail));
            nsa_neon_store_first(o + e, x, tail);
        }
    }
}
