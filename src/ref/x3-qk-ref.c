/* SPDX-License-Identifier: MIT */
/*
 * x3-qk-ref.c — scores of split query rows against split fp32 keys, in
 * plain C (contract in ukernels.h): each query and key value put back
 * together exactly (hi + mid is exact, and adding lo gives the fp32
 * value), then the sums of f32-qk-ref.c (the scale is in the queries).
 */
#include "ukernels.h"

/* Channel c of key j of the split panels at kp. */
static float key_at(const uint16_t *kp, size_t dk, size_t j, size_t c)
{
    const size_t words = nsa_bf16_panel_words(dk);
    const uint16_t *panel = kp + j / NSA_PANEL * 3 * words;
    const size_t at = nsa_bf16_key_at(dk, j % NSA_PANEL, c);
    return (nsa_bf16_to_f32(panel[at]) + nsa_bf16_to_f32(panel[words + at])) +
           nsa_bf16_to_f32(panel[2 * words + at]);
}

void nsa_x3_qk_ukernel__ref(size_t m, size_t np, size_t dk, const uint16_t *q, size_t ldq,
                            const uint16_t *kp, float *s, size_t lds)
{
    for (size_t r = 0; r < m; r++) {
        for (size_t p = 0; p < np; p++) {
            float dot[NSA_PANEL] = {0};
            for (size_t c = 0; c < dk; c++)
                for (size_t j = 0; j < NSA_PANEL; j++)
                    dot[j] += nsa_x3_query_value(q, ldq, r, c) *
                              key_at(kp, dk, p * NSA_PANEL + j, c);
            for (size_t j = 0; j < NSA_PANEL; j++)
                s[r * lds + p * NSA_PANEL + j] = dot[j];
        }
    }
}
