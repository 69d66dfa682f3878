/* SPDX-License-Identifier: MIT */
/*
 * attend.h — attention of a tile of query rows over a span of keys, built
 * from the qk / softmax / pv kernels. Every branch of NSA is this operation
 * with a different span and different per-row limits: the compressed tokens
 * (limited by causality), the selected blocks (limited to the rows whose
 * query chose the block) and the sliding window (limited to each row's own
 * window).
 */
#ifndef NSA_ATTEND_H
#define NSA_ATTEND_H

#include <stdint.h>

#include "ukernels.h"

/* Keys per softmax step in nsa_attend_keys: one selection block at the
 * paper's l' = 64, four panels. */
enum { NSA_ATTEND_CHUNK = 64 };

/* The keys of one sequence and KV head, laid out for the kernels: fp32,
 * bf16 (a KV cache's storage), which the bf16 kernels widen as they read,
 * or fp32 split into three bf16 terms for the x3 kernels (tile products;
 * the rows then carry their split queries too). */
typedef struct nsa_keys {
    const float *kp;      /* fp32 panels; panel 0 starts at key 0 */
    const float *v;       /* fp32 value rows; row 0 is key 0 */
    const uint16_t *kp16; /* or bf16 panels and value rows (kp, v NULL) */
    const uint16_t *v16;
    const uint16_t *kp3;  /* or split panels and value rows (ukernels.h) */
    const uint16_t *v3;
    size_t ldv;
    int64_t count; /* keys that exist (v has this many rows) */
    /* When > 0, a multiple of NSA_PANEL: the fp32 kernels are handed, as
     * their prefetch hint, the keys this many positions on from the ones
     * they read (the span attended next: another selected block), where
     * those exist. */
    int64_t prefetch_ahead;
} nsa_keys;

/* keys without their split form, where they also have the fp32 one: for
 * the calls that must run on the FMA kernels. */
static inline nsa_keys nsa_fp32_keys(const nsa_keys *keys)
{
    nsa_keys fp32 = *keys;
    if (fp32.kp != NULL) {
        fp32.kp3 = NULL;
        fp32.v3 = NULL;
    }
    return fp32;
}

/* Online-softmax state of m rows: max[m], sum[m], acc[m][ldacc]. */
typedef struct nsa_softmax_state {
    float *max, *sum, *acc;
    size_t ldacc;
} nsa_softmax_state;

/* The rows of a tile: m query rows q[m][dk] (contiguous, packed), and
 * for split keys, or bf16 keys on tile products, the same rows scaled and
 * split (split_x3, ukernels.h). */
typedef struct nsa_rows {
    size_t m, dk, dv;
    float scale;
    const float *q;
    const uint16_t *q3;
} nsa_rows;

void nsa_softmax_state_reset(const nsa_softmax_state *state, size_t m, size_t dv);

/* One softmax step over the keys of panels [first_panel, first_panel + np):
 * row r takes keys [lo[r], hi[r]] counted from the first panel's key 0.
 * Leaves the probabilities exp(s - max) in s[m][lds] (0 off a row's keys). */
void nsa_attend_span(const nsa_ukernels *uk, const nsa_rows *rows, const nsa_keys *keys,
                     int64_t first_panel, int64_t np, const int32_t *lo, const int32_t *hi,
                     float *s, size_t lds, const nsa_softmax_state *state);

/* The same step in two halves, which may run on different threads: the
 * scores and the softmax (the maxima and sums of state, and s) and then the
 * values (the accumulators). The keys some row uses, from the first panel's
 * key 0, pass from one to the other. */
typedef struct nsa_used_keys {
    int64_t first, last;
} nsa_used_keys;

/* When no row takes a key of the span it touches nothing and leaves used
 * empty (last < first), and nsa_attend_values then does nothing. */
void nsa_attend_probabilities(const nsa_ukernels *uk, const nsa_rows *rows,
                              const nsa_keys *keys, int64_t first_panel, int64_t np,
                              const int32_t *lo, const int32_t *hi, float *s, size_t lds,
                              const nsa_softmax_state *state, nsa_used_keys *used);
void nsa_attend_values(const nsa_ukernels *uk, const nsa_rows *rows, const nsa_keys *keys,
                       int64_t first_panel, const nsa_used_keys *used, const float *s,
                       size_t lds, const nsa_softmax_state *state);

/* Attention of the rows to keys [first, last], row r limited to
 * [row_first[r], row_last[r]] (empty when row_first > row_last), in steps of
 * NSA_ATTEND_CHUNK keys. s holds m * NSA_ATTEND_CHUNK floats; lo and hi m
 * ints each. */
void nsa_attend_keys(const nsa_ukernels *uk, const nsa_rows *rows, const nsa_keys *keys,
                     int64_t first, int64_t last, const int64_t *row_first,
                     const int64_t *row_last, const nsa_softmax_state *state, float *s,
                     int32_t *lo, int32_t *hi);

#endif /* NSA_ATTEND_H */
