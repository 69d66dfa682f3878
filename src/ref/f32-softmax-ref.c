/* SPDX-License-Identifier: MIT */
/*
 * f32-softmax-ref.c — the online-softmax step between qk and pv, in plain C
 * (contract in ukernels.h). Columns outside a row's range become 0, so the
 * following pv may run over the whole tile.
 */
#include <math.h>

#include "ukernels.h"

void nsa_f32_softmax_ukernel__ref(size_t m, size_t nk, const int32_t *lo, const int32_t *hi,
                                  float *s, size_t lds, float *row_max, float *row_sum,
                                  size_t dv, float *acc, size_t ldacc)
{
    for (size_t r = 0; r < m; r++) {
        float *sr = s + r * lds;
        if (lo[r] > hi[r] || hi[r] < 0 || (int64_t)lo[r] >= (int64_t)nk) { /* no column */
            for (size_t j = 0; j < nk; j++)
                sr[j] = 0.0f;
            continue;
        }
        size_t first = lo[r] > 0 ? (size_t)lo[r] : 0;
        size_t last = hi[r] < (int32_t)nk - 1 ? (size_t)(hi[r] + 1) : nk; /* one past */
        float new_max = row_max[r];
        for (size_t j = first; j < last; j++)
            new_max = fmaxf(new_max, sr[j]);
        float rescale = expf(row_max[r] - new_max);
        float sum = 0.0f;
        for (size_t j = 0; j < nk; j++) {
            sr[j] = j >= first && j < last ? expf(sr[j] - new_max) : 0.0f;
            sum += sr[j];
        }
        row_sum[r] = row_sum[r] * rescale + sum;
        row_max[r] = new_max;
        for (size_t c = 0; c < dv; c++)
            acc[r * ldacc + c] *= rescale;
    }
}
