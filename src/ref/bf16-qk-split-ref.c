/* SPDX-License-Identifier: MIT */
/*
 * bf16-qk-split-ref.c — scores of split query rows against bf16 key
 * panels, in plain C (contract in ukernels.h): each query value put back
 * together exactly from its three terms, then the sums of bf16-qk-ref.c
 * (the scale is in the queries).
 */
#include "ukernels.h"

void nsa_bf16_qk_split_ukernel__ref(size_t m, size_t np, size_t dk, const uint16_t *q,
                                    size_t ldq, const uint16_t *kp, float *s, size_t lds)
{
    for (size_t r = 0; r < m; r++)
        for (size_t p = 0; p < np; p++) {
            float dot[NSA_PANEL] = {0};
            for (size_t c = 0; c < dk; c++)
                for (size_t j = 0; j < NSA_PANEL; j++)
                    dot[j] += nsa_x3_query_value(q, ldq, r, c) *
                              nsa_bf16_to_f32(kp[nsa_bf16_key_at(dk, p * NSA_PANEL + j, c)]);
            for (size_t j = 0; j < NSA_PANEL; j++)
                s[r * lds + p * NSA_PANEL + j] = dot[j];
        }
}
