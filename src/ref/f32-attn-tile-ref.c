/* SPDX-License-Identifier: MIT */
/*
 * f32-attn-tile-ref.c — online-softmax attention of m query rows over nk
 * contiguous keys, in plain C (contract in ukernels.h).
 *
 * Keys are taken in chunks of CHUNK: the scores of a chunk are computed
 * first, then the running state is rescaled once per chunk rather than once
 * per key. Any nk >= 1 is handled; nothing outside the nk rows is read.
 */
#include <math.h>

#include "ukernels.h"

enum { CHUNK = 64 };

void nsa_f32_attn_tile_ukernel__ref(size_t m, size_t nk, size_t dk, size_t dv, float scale,
                                    const float *q, size_t ldq, const float *k, size_t ldk,
                                    const float *v, size_t ldv, float *row_max,
                                    float *row_sum, float *acc)
{
    float s[CHUNK];
    for (size_t r = 0; r < m; r++) {
        const float *qr = q + r * ldq;
        float *ar = acc + r * dv;
        for (size_t j0 = 0; j0 < nk; j0 += CHUNK) {
            size_t nj = nk - j0 < CHUNK ? nk - j0 : CHUNK;
            float chunk_max = -INFINITY;
            for (size_t j = 0; j < nj; j++) {
                const float *kj = k + (j0 + j) * ldk;
                float dot = 0.0f;
                for (size_t c = 0; c < dk; c++)
                    dot += qr[c] * kj[c];
                s[j] = scale * dot;
                chunk_max = fmaxf(chunk_max, s[j]);
            }
            float new_max = fmaxf(row_max[r], chunk_max);
            float rescale = expf(row_max[r] - new_max);
            row_sum[r] *= rescale;
            for (size_t c = 0; c < dv; c++)
                ar[c] *= rescale;
            for (size_t j = 0; j < nj; j++) {
                float e = expf(s[j] - new_max);
                const float *vj = v + (j0 + j) * ldv;
                row_sum[r] += e;
                for (size_t c = 0; c < dv; c++)
                    ar[c] += e * vj[c];
            }
            row_max[r] = new_max;
        }
    }
}
