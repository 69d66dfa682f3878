/* SPDX-License-Identifier: MIT */
/*
 * split_keys.c — the packing of fp32 keys and values into the split
 * layouts of the x3 kernels (split_keys.h, ukernels.h). Each value is
 * split once per forward, so the kernels' inner loops only load tiles.
 */
#include <string.h>

#include "split_keys.h"
#include "ukernels.h"

void nsa_pack_panels_x3(const float *x, size_t ldx, int64_t len, int64_t dk, int64_t first,
                        int64_t count, uint16_t *dst)
{
    const size_t words = nsa_bf16_panel_words((size_t)dk);
    for (int64_t p = first; p < first + count; p++, dst += 3 * words) {
        memset(dst, 0, 3 * words * sizeof *dst); /* the padding channel of an odd dk */
        for (int64_t j = 0; j < NSA_PANEL; j++) {
            const int64_t key = p * NSA_PANEL + j;
            if (key >= len)
                break;
            const float *row = x + (size_t)key * ldx;
            for (int64_t c = 0; c < dk; c++) {
                uint16_t terms[3];
                nsa_split3(row[c], terms);
                const size_t at = nsa_bf16_key_at((size_t)dk, (size_t)j, (size_t)c);
                dst[at] = terms[0];
                dst[words + at] = terms[1];
                dst[2 * words + at] = terms[2];
            }
        }
    }
}

void nsa_pack_values_x3(const float *x, size_t ldx, int64_t len, int64_t dv, int64_t first,
                        int64_t count, size_t ldv, uint16_t *dst)
{
    const size_t pair = nsa_x3_pair_words(ldv), row_words = 2 * ldv; /* a term's row */
    for (int64_t i = first; i < first + count; i++, dst += pair) {
        memset(dst, 0, pair * sizeof *dst);
        for (int64_t e = 0; e < 2 && 2 * i + e < len; e++) {
            const float *row = x + (size_t)(2 * i + e) * ldx;
            for (int64_t c = 0; c < dv; c++) {
                uint16_t terms[3];
                nsa_split3(row[c], terms);
                const size_t at = nsa_bf16_value_at(ldv, (size_t)e, (size_t)c);
                dst[at] = terms[0];
                dst[row_words + at] = terms[1];
                dst[2 * row_words + at] = terms[2];
            }
        }
    }
}
