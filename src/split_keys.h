/* SPDX-License-Identifier: MIT */
/*
 * split_keys.h — fp32 keys and values stored as three exact bf16 terms
 * each, the layouts of the qk_x3 and pv_x3 kernels (ukernels.h). The
 * forward packs them so when its plan's kernels run on tile products.
 */
#ifndef NSA_SPLIT_KEYS_H
#define NSA_SPLIT_KEYS_H

#include <stddef.h>
#include <stdint.h>

/* Panels [first, first + count) of x's rows (row i at x + i * ldx, rows
 * past len zero) into dst as split key panels of dk channels, panel first
 * at dst: nsa_x3_panel_words(dk) words each. */
void nsa_pack_panels_x3(const float *x, size_t ldx, int64_t len, int64_t dk, int64_t first,
                        int64_t count, uint16_t *dst);

/* Pair rows [first, first + count) of x's rows (pair row i holds rows 2i
 * and 2i + 1; rows past len zero) into dst as split value rows of dv
 * channels, pair row first at dst: 3 * 2 * ldv words each (ldv >= dv;
 * the words past 2 dv of a term's row are zero). */
void nsa_pack_values_x3(const float *x, size_t ldx, int64_t len, int64_t dv, int64_t first,
                        int64_t count, size_t ldv, uint16_t *dst);

#endif /* NSA_SPLIT_KEYS_H */
