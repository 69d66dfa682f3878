/* SPDX-License-Identifier: MIT */
/*
 * f32-gate-mix-avx512.c — the gated sum of the three branches (spec section
 * 6, contract in src/ukernels.h), AVX-512; the last dv % 16 columns masked.
 */
#include "avx512-helpers.h"
#include "ukernels.h"

void nsa_f32_gate_mix_ukernel__avx512(size_t m, size_t dv, const float *gates,
                                      const float *cmp_acc, const float *cmp_sum,
                                      const float *slc_acc, const float *slc_sum,
                                      const float *swa_acc, const float *swa_sum, size_t ldacc,
                                      float *out)
{
    for (size_t r = 0; r < m; r++) {
        const __m512 a = _mm512_set1_ps(nsa_gate_over_sum(gates[3 * r + 0], cmp_sum[r]));
        const __m512 b = _mm512_set1_ps(nsa_gate_over_sum(gates[3 * r + 1], slc_sum[r]));
        const __m512 c = _mm512_set1_ps(nsa_gate_over_sum(gates[3 * r + 2], swa_sum[r]));
        const size_t i = r * ldacc;
        for (size_t e = 0; e < dv; e += 16) {
            const __mmask16 mask = nsa_avx512_mask_first(dv - e);
            __m512 o = _mm512_mul_ps(a, _mm512_maskz_loadu_ps(mask, cmp_acc + i + e));
            o = _mm512_fmadd_ps(b, _mm512_maskz_loadu_ps(mask, slc_acc + i + e), o);
            o = _mm512_fmadd_ps(c, _mm512_maskz_loadu_ps(mask, swa_acc + i + e), o);
            _mm512_mask_storeu_ps(out + r * dv + e, mask, o);
        }
    }
}
