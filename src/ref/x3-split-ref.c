/* SPDX-License-Identifier: MIT */
/*
 * x3-split-ref.c — query rows scaled and split into three bf16 terms each
 * (nsa_split3), in the blocked layout qk_x3 reads (contract in ukernels.h).
 */
#include <string.h>

#include "ukernels.h"

void nsa_x3_split_ukernel__ref(size_t m, size_t dk, float scale, const float *q, size_t ldq,
                               uint16_t *dst)
{
    const size_t ld = nsa_x3_row_words(dk);
    memset(dst, 0, nsa_x3_query_words(m, dk) * sizeof *dst);
    for (size_t r = 0; r < m; r++)
        for (size_t c = 0; c < dk; c++) {
            uint16_t terms[3];
            nsa_split3(scale * q[r * ldq + c], terms);
            for (size_t t = 0; t < 3; t++)
                dst[nsa_x3_query_at(ld, r, t, c)] = terms[t];
        }
}
