/* SPDX-License-Identifier: MIT */
/*
 * bf16-qk-ref.c — scores of query rows against panel-packed bf16 keys, in
 * plain C (contract in ukernels.h): each key widened exactly to fp32, then
 * the sums of f32-qk-ref.c.
 */
#include "ukernels.h"

void nsa_bf16_qk_ukernel__ref(size_t m, size_t np, size_t dk, float scale, const float *q,
                              size_t ldq, const uint16_t *kp, float *s, size_t lds)
{
    for (size_t r = 0; r < m; r++) {
        for (size_t p = 0; p < np; p++) {
            float dot[NSA_PANEL] = {0};
            for (size_t c = 0; c < dk; c++)
                for (size_t j = 0; j < NSA_PANEL; j++)
                    dot[j] += q[r * ldq + c] *
                              nsa_bf16_to_f32(kp[nsa_bf16_key_at(dk, p * NSA_PANEL + j, c)]);
            for (size_t j = 0; j < NSA_PANEL; j++)
                s[r * lds + p * NSA_PANEL + j] = scale * dot[j];
        }
    }
}
