/* SPDX-License-Identifier: MIT */
/*
 * bf16-pv-ref.c — acc += P . V with bf16 value rows, in plain C (contract in
 * ukernels.h): each value widened exactly to fp32, then the sums of
 * f32-pv-ref.c.
 */
#include "ukernels.h"

void nsa_bf16_pv_ukernel__ref(size_t m, size_t nk, size_t dv, const float *p, size_t ldp,
                              const uint16_t *v, size_t ldv, float *acc, size_t ldacc)
{
    for (size_t r = 0; r < m; r++) {
        float *ar = acc + r * ldacc;
        for (size_t j = 0; j < nk; j++) {
            float pj = p[r * ldp + j];
            for (size_t c = 0; c < dv; c++)
                ar[c] += pj * nsa_bf16_to_f32(v[nsa_bf16_value_at(ldv, j, c)]);
        }
    }
}
