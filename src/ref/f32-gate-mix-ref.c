/* SPDX-License-Identifier: MIT */
/*
 * f32-gate-mix-ref.c — the gated sum of the three branches (spec section 6)
 * in plain C, normalising the two online-softmax accumulators on the way
 * (contract in ukernels.h).
 */
#include "ukernels.h"

void nsa_f32_gate_mix_ukernel__ref(size_t m, size_t dv, const float *gates, const float *o_cmp,
                                   const float *slc_acc, const float *slc_sum,
                                   const float *swa_acc, const float *swa_sum, float *out)
{
    for (size_t r = 0; r < m; r++) {
        float g_cmp = gates[3 * r + 0];
        float g_slc = slc_sum[r] > 0.0f ? gates[3 * r + 1] / slc_sum[r] : 0.0f;
        float g_swa = swa_sum[r] > 0.0f ? gates[3 * r + 2] / swa_sum[r] : 0.0f;
        for (size_t c = 0; c < dv; c++) {
            size_t i = r * dv + c;
            float slc = slc_sum[r] > 0.0f ? g_slc * slc_acc[i] : 0.0f;
            float swa = swa_sum[r] > 0.0f ? g_swa * swa_acc[i] : 0.0f;
            out[i] = g_cmp * o_cmp[i] + slc + swa;
        }
    }
}
