/* SPDX-License-Identifier: MIT */
/*
 * f32-grad-prob-ref.c — the backward's probabilities in plain C (contract in
 * ukernels.h): P = exp(s - lse) on each row's columns, recomputed from the
 * forward's log-sum-exp so no online softmax is needed, and the row sums of
 * P o dP that become the gates' gradients.
 */
#include <math.h>

#include "ukernels.h"

void nsa_f32_grad_prob_ukernel__ref(size_t m, size_t nk, const int32_t *lo, const int32_t *hi,
                                    const float *lse, float *s, size_t lds, const float *dp,
                                    size_t lddp, float *dot)
{
    for (size_t r = 0; r < m; r++) {
        float *sr = s + r * lds;
        const size_t first = lo[r] > 0 ? (size_t)lo[r] : 0;
        const size_t last = hi[r] < (int32_t)nk - 1 ? (size_t)(hi[r] + 1) : nk; /* one past */
        float sum = 0.0f;
        for (size_t j = 0; j < nk; j++) {
            const int inside = lo[r] <= hi[r] && j >= first && j < last;
            sr[j] = inside ? expf(sr[j] - lse[r]) : 0.0f;
            if (inside && dp != NULL)
                sum += sr[j] * dp[r * lddp + j];
        }
        if (dp != NULL)
            dot[r] += sum;
    }
}
