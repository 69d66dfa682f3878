/* SPDX-License-Identifier: MIT */
/*
 * f32-pool-ref.c — weighted pooling of one compression window in plain C
 * (contract in ukernels.h): the mean and weighted kinds of phi.
 */
#include "ukernels.h"

void nsa_f32_pool_ukernel__ref(size_t l, size_t dim, const float *weight, const float *x,
                               size_t ldx, float *y)
{
    for (size_t c = 0; c < dim; c++)
        y[c] = 0.0f;
    for (size_t j = 0; j < l; j++) {
        const float *xj = x + j * ldx;
        for (size_t c = 0; c < dim; c++)
            y[c] += weight[j] * xj[c];
    }
}
