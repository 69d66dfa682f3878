/* SPDX-License-Identifier: MIT */
/*
 * x3-pv-ref.c — acc += P . V with split fp32 value rows, in plain C
 * (contract in ukernels.h): each value put back together exactly, then the
 * sums of f32-pv-ref.c.
 */
#include "ukernels.h"

/* Channel c of key j (from the even key v points at). */
static float value_at(const uint16_t *v, size_t ldv, size_t j, size_t c)
{
    const uint16_t *row = v + j / 2 * nsa_x3_pair_words(ldv); /* term 0 of the pair row */
    const size_t at = nsa_bf16_value_at(ldv, j % 2, c);
    return (nsa_bf16_to_f32(row[at]) + nsa_bf16_to_f32(row[2 * ldv + at])) +
           nsa_bf16_to_f32(row[4 * ldv + at]);
}

void nsa_x3_pv_ukernel__ref(size_t m, size_t nk, size_t dv, const float *p, size_t ldp,
                            const uint16_t *v, size_t ldv, float *acc, size_t ldacc)
{
    for (size_t r = 0; r < m; r++) {
        float *ar = acc + r * ldacc;
        for (size_t j = 0; j < nk; j++) {
            float pj = p[r * ldp + j];
            for (size_t c = 0; c < dv; c++)
                ar[c] += pj * value_at(v, ldv, j, c);
        }
    }
}
