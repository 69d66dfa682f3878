/* SPDX-License-Identifier: MIT */
/*
 * f32-grad-score-t-ref.c — the backward's key side in plain C (contract in
 * ukernels.h): probabilities and score gradients of a tile of query rows,
 * written transposed so that each key's row of them multiplies the query
 * rows (pv) into that key's dV and dK.
 */
#include <math.h>

#include "ukernels.h"

void nsa_f32_grad_score_t_ukernel__ref(size_t m, size_t nk, const int32_t *lo, const int32_t *hi,
                                       const float *lse, const float *dot, const float *gain,
                                       float scale, const float *s, size_t lds, const float *dp,
                                       size_t lddp, float *pt, float *dst, size_t ldt)
{
    for (size_t r = 0; r < m; r++) {
        const size_t first = lo[r] > 0 ? (size_t)lo[r] : 0;
        const size_t last = hi[r] < (int32_t)nk - 1 ? (size_t)(hi[r] + 1) : nk; /* one past */
        for (size_t j = 0; j < nk; j++) {
            const int inside = lo[r] <= hi[r] && j >= first && j < last;
            const float p = inside ? gain[r] * expf(s[r * lds + j] - lse[r]) : 0.0f;
            pt[j * ldt + r] = p;
            dst[j * ldt + r] = inside ? scale * p * (dp[r * lddp + j] - dot[r]) : 0.0f;
        }
    }
}
