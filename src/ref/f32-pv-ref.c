/* SPDX-License-Identifier: MIT */
/*
 * f32-pv-ref.c — acc += P . V in plain C (contract in ukernels.h): the second
 * product of attention, probabilities times value rows.
 */
#include "ukernels.h"

void nsa_f32_pv_ukernel__ref(size_t m, size_t nk, size_t dv, const float *p, size_t ldp,
                             const float *v, size_t ldv, float *acc, size_t ldacc,
                             const float *next)
{
    (void)next; /* the reference prefetches nothing */
    for (size_t r = 0; r < m; r++) {
        float *ar = acc + r * ldacc;
        for (size_t j = 0; j < nk; j++) {
            float pj = p[r * ldp + j];
            const float *vj = v + j * ldv;
            for (size_t c = 0; c < dv; c++)
                ar[c] += pj * vj[c];
        }
    }
}
