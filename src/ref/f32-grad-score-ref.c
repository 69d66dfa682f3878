/* SPDX-License-Identifier: MIT */
/*
 * f32-grad-score-ref.c — score gradients of the backward's query side in
 * plain C (contract in ukernels.h): dS = coef P o (dP - dot), with the
 * softmax scale and the branch's gate folded into coef.
 */
#include "ukernels.h"

void nsa_f32_grad_score_ukernel__ref(size_t m, size_t nk, const float *coef, const float *dot,
                                     const float *p, size_t ldp, float *dp, size_t lddp)
{
    for (size_t r = 0; r < m; r++)
        for (size_t j = 0; j < nk; j++)
            dp[r * lddp + j] = coef[r] * p[r * ldp + j] * (dp[r * lddp + j] - dot[r]);
}
