/* SPDX-License-Identifier: MIT */
/*
 * f32-qk-ref.c — scores of query rows against panel-packed keys, in plain C
 * (contract in ukernels.h): s[r][p*16 + j] = scale * sum_c q[r][c] kp[p][c][j].
 */
#include "ukernels.h"

void nsa_f32_qk_ukernel__ref(size_t m, size_t np, size_t dk, float scale, const float *q,
                             size_t ldq, const float *kp, float *s, size_t lds,
                             const float *next)
{
    (void)next; /* the reference prefetches nothing */
    for (size_t r = 0; r < m; r++) {
        for (size_t p = 0; p < np; p++) {
            const float *panel = kp + p * dk * NSA_PANEL;
            float dot[NSA_PANEL] = {0};
            for (size_t c = 0; c < dk; c++)
                for (size_t j = 0; j < NSA_PANEL; j++)
                    dot[j] += q[r * ldq + c] * panel[c * NSA_PANEL + j];
            for (size_t j = 0; j < NSA_PANEL; j++)
                s[r * lds + p * NSA_PANEL + j] = scale * dot[j];
        }
    }
}
