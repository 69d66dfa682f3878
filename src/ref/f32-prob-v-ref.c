/* SPDX-License-Identifier: MIT */
/*
 * f32-prob-v-ref.c — o = p . V for the compressed branch, in plain C
 * (contract in ukernels.h).
 */
#include "ukernels.h"

void nsa_f32_prob_v_ukernel__ref(size_t m, size_t nc, size_t dv, const float *p, size_t ldp,
                                 const float *vc, size_t ldvc, float *o)
{
    for (size_t r = 0; r < m; r++) {
        float *orow = o + r * dv;
        for (size_t c = 0; c < dv; c++)
            orow[c] = 0.0f;
        for (size_t i = 0; i < nc; i++) {
            float pi = p[r * ldp + i];
            const float *vi = vc + i * ldvc;
            for (size_t c = 0; c < dv; c++)
                orow[c] += pi * vi[c];
        }
    }
}
