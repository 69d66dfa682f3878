/* SPDX-License-Identifier: MIT */
/*
 * x3-split-amx.c — query rows scaled and split into three bf16 terms each,
 * in the blocked layout qk_x3 reads (contract in src/ukernels.h), 32
 * channels of a row per step with AVX-512 (amx-helpers.h). Once per tile
 * of the forward, so that no qk_x3 call splits its rows again.
 */
#include "amx-helpers.h"
#include "ukernels.h"

void nsa_x3_split_ukernel__amx(size_t m, size_t dk, float scale, const float *q, size_t ldq,
                               uint16_t *dst)
{
    const size_t ld = nsa_x3_row_words(dk), term = NSA_AMX_ROWS * ld;
    for (size_t r0 = 0; r0 < m; r0 += NSA_AMX_ROWS, dst += 3 * term) {
        const size_t rows = m - r0 < NSA_AMX_ROWS ? m - r0 : NSA_AMX_ROWS;
        uint16_t *const terms[3] = {dst, dst + term, dst + 2 * term};
        nsa_amx_split_rows(q + r0 * ldq, ldq, rows, dk, scale, ld, ld, terms);
    }
}
