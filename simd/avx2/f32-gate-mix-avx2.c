/* SPDX-License-Identifier: MIT */
/*
 * f32-gate-mix-avx2.c — the gated sum of the three branches (spec section 6,
 * contract in src/ukernels.h), AVX2 + FMA; the last dv % 8 columns masked.
 */
#include "avx2-helpers.h"
#include "ukernels.h"

void nsa_f32_gate_mix_ukernel__avx2(size_t m, size_t dv, const float *gates,
                                    const float *cmp_acc, const float *cmp_sum,
                                    const float *slc_acc, const float *slc_sum,
                                    const float *swa_acc, const float *swa_sum, size_t ldacc,
                                    float *out)
{
    for (size_t r = 0; r < m; r++) {
        const __m256 a = _mm256_set1_ps(nsa_gate_over_sum(gates[3 * r + 0], cmp_sum[r]));
        const __m256 b = _mm256_set1_ps(nsa_gate_over_sum(gates[3 * r + 1], slc_sum[r]));
        const __m256 c = _mm256_set1_ps(nsa_gate_over_sum(gates[3 * r + 2], swa_sum[r]));
        const size_t i = r * ldacc;
        for (size_t e = 0; e < dv; e += 8) {
            const __m256i mask = nsa_avx2_mask_first(dv - e < 8 ? dv - e : 8);
            __m256 o = _mm256_mul_ps(a, _mm256_maskload_ps(cmp_acc + i + e, mask));
            o = _mm256_fmadd_ps(b, _mm256_maskload_ps(slc_acc + i + e, mask), o);
            o = _mm256_fmadd_ps(c, _mm256_maskload_ps(swa_acc + i + e, mask), o);
            _mm256_maskstore_ps(out + r * dv + e, mask, o);
        }
    }
}
