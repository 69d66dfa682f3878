/* SPDX-License-Identifier: MIT */
/*
 * f32-cmp-probs-ref.c — softmax probabilities of the compressed branch in
 * plain C (contract in ukernels.h). Unlike the online tile, the normalised
 * probabilities are materialised: selection (spec section 3) needs them.
 */
#include <math.h>

#include "ukernels.h"

void nsa_f32_cmp_probs_ukernel__ref(size_t m, size_t nc, size_t dk, float scale,
                                    const float *q, size_t ldq, const float *kc, size_t ldkc,
                                    float *p, size_t ldp)
{
    for (size_t r = 0; r < m; r++) {
        const float *qr = q + r * ldq;
        float *pr = p + r * ldp;
        float max = -INFINITY;
        for (size_t i = 0; i < nc; i++) {
            const float *ki = kc + i * ldkc;
            float dot = 0.0f;
            for (size_t c = 0; c < dk; c++)
                dot += qr[c] * ki[c];
            pr[i] = scale * dot;
            max = fmaxf(max, pr[i]);
        }
        float sum = 0.0f;
        for (size_t i = 0; i < nc; i++) {
            pr[i] = expf(pr[i] - max);
            sum += pr[i];
        }
        float inv = 1.0f / sum;
        for (size_t i = 0; i < nc; i++)
            pr[i] *= inv;
    }
}
