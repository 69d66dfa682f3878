/* SPDX-License-Identifier: MIT */
/*
 * f32-gate-mix-ref.c — the gated sum of the three branches (spec section 6)
 * in plain C, normalising the three online-softmax accumulators on the way
 * (contract in ukernels.h).
 */
#include "ukernels.h"

void nsa_f32_gate_mix_ukernel__ref(size_t m, size_t dv, const float *gates,
                                   const float *cmp_acc, const float *cmp_sum,
                                   const float *slc_acc, const float *slc_sum,
                                   const float *swa_acc, const float *swa_sum, size_t ldacc,
                                   float *out)
{
    for (size_t r = 0; r < m; r++) {
        float a = nsa_gate_over_sum(gates[3 * r + 0], cmp_sum[r]);
        float b = nsa_gate_over_sum(gates[3 * r + 1], slc_sum[r]);
        float c = nsa_gate_over_sum(gates[3 * r + 2], swa_sum[r]);
        const size_t i = r * ldacc;
        for (size_t e = 0; e < dv; e++)
            out[r * dv + e] = a * cmp_acc[i + e] + b * slc_acc[i + e] + c * swa_acc[i + e];
    }
}
