/* SPDX-License-Identifier: MIT */
/*
 * ukernels.h — the contracts of the hot kernels and the table a plan calls
 * them through. The pipeline (attend.c, forward.c) is written once against
 * these signatures; which implementation fills each slot is decided once per
 * plan (dispatch.c), from the registry simd/ukernels.inc.
 *
 * Attention is split GEMM-style, as BLIS splits a GEMM: qk and pv are small
 * register-blocked matrix products, softmax is the online-softmax step
 * between them. Keys enter qk packed in panels of NSA_PANEL keys, each panel
 * [dk][NSA_PANEL] floats, so a vector load takes one channel of NSA_PANEL
 * keys; panels are zero-padded past the end of a sequence.
 *
 * Shared conventions: fp32 in and out, fp32 accumulation; strides (ld*) are
 * in elements between consecutive rows; m, nk, dk, dv >= 1; no kernel reads
 * or writes outside the rows and columns it is given; the arithmetic of a
 * call does not depend on threads.
 */
#ifndef NSA_UKERNELS_H
#define NSA_UKERNELS_H

#include <stddef.h>
#include <stdint.h>

#include "config.h" /* which ISAs the registry may name */

enum { NSA_PANEL = 16 };

/* Panels that hold `keys` keys (the last one padded). */
static inline int64_t nsa_panels_of(int64_t keys)
{
    return (keys + NSA_PANEL - 1) / NSA_PANEL;
}

/* s[m][np * NSA_PANEL] (row stride lds) = scale * q[m][dk] . K^T, for the np
 * consecutive key panels at kp (panel stride dk * NSA_PANEL). next is a
 * prefetch hint: NULL, or np more panels laid out as kp's that the caller
 * reads next, which the kernel may ask the caches for while it computes (a
 * selected block's keys come from DRAM and are read once per query). It
 * never changes a result. */
typedef void nsa_qk_ukernel(size_t m, size_t np, size_t dk, float scale, const float *q,
                          size_t ldq, const float *kp, float *s, size_t lds, const float *next);

/* acc[m][dv] (row stride ldacc) += p[m][nk] (ldp) . v[nk][dv] (ldv). next:
 * NULL, or nk more rows of dv floats at stride ldv read next (a prefetch
 * hint, as qk's). */
typedef void nsa_pv_ukernel(size_t m, size_t nk, size_t dv, const float *p, size_t ldp,
                          const float *v, size_t ldv, float *acc, size_t ldacc,
                          const float *next);

/* What the fp32 kernels do with their next hint: ask for one cache line. */
static inline void nsa_prefetch_line(const float *line)
{
    __builtin_prefetch(line);
}

/* One online-softmax step over a tile of scores s[m][nk] (stride lds). Row r
 * uses columns lo[r] .. hi[r] (none when lo[r] > hi[r]). For a row with at
 * least one column: new_max = max(row_max[r], its scores); row_sum[r] and
 * acc[r][0..dv) are multiplied by exp(row_max[r] - new_max); s[r][j] becomes
 * exp(s[r][j] - new_max) on its columns and 0 elsewhere in [0, nk);
 * row_sum[r] gains their sum; row_max[r] = new_max. A row with no column is
 * left alone except that s[r][0..nk) becomes 0. Start rows with row_max =
 * -INFINITY, row_sum = 0, acc = 0. */
typedef void nsa_softmax_ukernel(size_t m, size_t nk, const int32_t *lo, const int32_t *hi,
                               float *s, size_t lds, float *row_max, float *row_sum, size_t dv,
                               float *acc, size_t ldacc);

/* The gated output of spec section 6 for m rows (one query head each):
 * out[r] = g_cmp cmp_acc[r]/cmp_sum[r] + g_slc slc_acc[r]/slc_sum[r]
 *        + g_swa swa_acc[r]/swa_sum[r], gates[r][3] = (g_cmp, g_slc, g_swa);
 * a branch whose sum is 0 saw no key and contributes 0. The accumulators
 * have row stride ldacc; gates and out have contiguous rows. */
typedef void nsa_gate_mix_ukernel(size_t m, size_t dv, const float *gates, const float *cmp_acc,
                                const float *cmp_sum, const float *slc_acc,
                                const float *slc_sum, const float *swa_acc,
                                const float *swa_sum, size_t ldacc, float *out);

/* gate / sum for the gate mix: a branch whose sum is 0 saw no key, its
 * accumulator is 0, and it contributes 0. Shared by every ISA's gate_mix. */
static inline float nsa_gate_over_sum(float gate, float sum)
{
    return sum > 0.0f ? gate / sum : 0.0f;
}

/* Weighted pooling of one window: y[dim] = sum_{j<l} weight[j] x[j][dim],
 * x rows of stride ldx. Serves the mean and weighted kinds of phi. */
typedef void nsa_pool_ukernel(size_t l, size_t dim, const float *weight, const float *x,
                            size_t ldx, float *y);

/* qk and pv over keys and values stored as bf16 (a KV cache's storage;
 * bf16 is the upper half of an fp32, so widening is exact): the same
 * contracts, the arithmetic in fp32, with kp and v holding bf16 in pairs.
 * Two channels of a key, or one channel of two keys, sit side by side: the
 * layout AMX tile products read as they are, and one vector load of it
 * widens into two vectors of fp32 with a shift and a mask.
 * - Keys: a panel of NSA_PANEL keys is ceil(dk / 2) rows of 2 NSA_PANEL
 *   words; word 2j + e of row i is channel 2i + e of key j (0 past dk).
 *   Panels follow each other every nsa_bf16_panel_words(dk) words.
 * - Values: two keys per row of 2 ldv words; word 2c + e of row i is
 *   channel c of key 2i + e. v points at a row (an even key); when nk is
 *   odd, the row of the last key is read whole (its other key is unused). */
typedef void nsa_qk_bf16_ukernel(size_t m, size_t np, size_t dk, float scale, const float *q,
                                 size_t ldq, const uint16_t *kp, float *s, size_t lds);
typedef void nsa_pv_bf16_ukernel(size_t m, size_t nk, size_t dv, const float *p, size_t ldp,
                                 const uint16_t *v, size_t ldv, float *acc, size_t ldacc);

/* Words of one bf16 key panel. */
static inline size_t nsa_bf16_panel_words(size_t dk)
{
    return (dk + 1) / 2 * 2 * NSA_PANEL;
}

/* Where channel c of key j sits among bf16 key panels (j counted from the
 * first panel's first key). */
static inline size_t nsa_bf16_key_at(size_t dk, size_t j, size_t c)
{
    return j / NSA_PANEL * nsa_bf16_panel_words(dk) + c / 2 * 2 * NSA_PANEL +
           j % NSA_PANEL * 2 + c % 2;
}

/* Where channel c of key j sits among bf16 value rows of stride ldv (j
 * counted from an even key). */
static inline size_t nsa_bf16_value_at(size_t ldv, size_t j, size_t c)
{
    return j / 2 * 2 * ldv + 2 * c + j % 2;
}

/* The fp32 value of a bf16 one. */
static inline float nsa_bf16_to_f32(uint16_t x)
{
    union {
        uint32_t u;
        float f;
    } bits = {.u = (uint32_t)x << 16};
    return bits.f;
}

/* qk and pv over fp32 keys and values stored split, each value x as three
 * bf16 terms hi + mid + lo == x exactly (nsa_split3 below), for the AMX
 * kernels: a bf16 tile product of split operands keeps fp32 accuracy with
 * six of the nine term products (the three dropped are below 2^-23 of each
 * product). The terms of a panel, a value row or a query row sit together:
 * - Keys: the three terms of panel p are bf16 key panels (the paired layout
 *   above) at kp + (3 p + t) * nsa_bf16_panel_words(dk), t = 0, 1, 2.
 * - Values: the three terms of pair row i (keys 2i and 2i + 1) are bf16
 *   value rows at v + (3 i + t) * 2 ldv; v points at an even key's pair row,
 *   and when nk is odd the last pair row is read whole.
 * - Query rows, split once per tile by split_x3 and already scaled: in
 *   blocks of 16 rows, term t of row 16 b + i at q + ((3 b + t) 16 + i) ldq,
 *   ldq = nsa_x3_row_words(dk), zero past dk and past the last row. Rows
 *   from a multiple of 16 on are the same layout again.
 * pv takes fp32 probabilities, as the other pv kernels, and splits them. */
typedef void nsa_qk_x3_ukernel(size_t m, size_t np, size_t dk, const uint16_t *q, size_t ldq,
                               const uint16_t *kp, float *s, size_t lds);
typedef nsa_pv_bf16_ukernel nsa_pv_x3_ukernel;

/* Scores of query rows split as qk_x3 takes them (split_x3's layout, the
 * scale in the rows) against bf16 key panels (the paired layout above):
 * the rows of a decode step are split once, not once per call of qk_bf16
 * (for 64 keys the split took half of such a call). */
typedef nsa_qk_x3_ukernel nsa_qk_bf16_split_ukernel;

/* q[m][dk] (row stride ldq) times scale into the split query layout at
 * dst: nsa_x3_query_words(m, dk) words. */
typedef void nsa_split_x3_ukernel(size_t m, size_t dk, float scale, const float *q, size_t ldq,
                                  uint16_t *dst);

/* Words per split query row, and of the split layout of m rows. */
static inline size_t nsa_x3_row_words(size_t dk)
{
    return (dk + 31) / 32 * 32;
}

static inline size_t nsa_x3_query_words(size_t m, size_t dk)
{
    return (m + 15) / 16 * 3 * 16 * nsa_x3_row_words(dk);
}

/* Where term t of channel c of row r sits in the split query layout (rows
 * ldq words apart), and the fp32 value the three terms add up to exactly
 * (hi + mid is exact, and adding lo gives it): for the reference kernels. */
static inline size_t nsa_x3_query_at(size_t ldq, size_t r, size_t t, size_t c)
{
    return ((r / 16 * 3 + t) * 16 + r % 16) * ldq + c;
}

static inline float nsa_x3_query_value(const uint16_t *q, size_t ldq, size_t r, size_t c)
{
    return (nsa_bf16_to_f32(q[nsa_x3_query_at(ldq, r, 0, c)]) +
            nsa_bf16_to_f32(q[nsa_x3_query_at(ldq, r, 1, c)])) +
           nsa_bf16_to_f32(q[nsa_x3_query_at(ldq, r, 2, c)]);
}

/* Words of one split key panel, and of one split value pair row (two
 * keys), all three terms. */
static inline size_t nsa_x3_panel_words(size_t dk)
{
    return 3 * nsa_bf16_panel_words(dk);
}

static inline size_t nsa_x3_pair_words(size_t ldv)
{
    return 3 * 2 * ldv;
}

/* x rounded to the nearest bf16, ties away from zero (add half an ulp of
 * bf16 to the magnitude, keep the top 16 bits), as its 16 bits: the split's
 * rounding, one add and one mask in vector form (ties to even would cost
 * three more and change none of the bounds below). Finite inputs only (the
 * split of an infinity or of a value that rounds to one gives NaN). */
static inline uint16_t nsa_bf16_round(float x)
{
    union {
        float f;
        uint32_t u;
    } bits = {.f = x};
    bits.u += 0x8000u;
    return (uint16_t)(bits.u >> 16);
}

/* x == hi + mid + lo exactly: hi is x rounded to bf16, mid the remainder
 * rounded, lo what is left (at most 8 significant bits, so exact). The
 * remainders are exact fp32 subtractions, |mid| <= 2^-8 |x| and |lo| <=
 * 2^-16 |x|. Shared by the packing (src/split_keys.c) and, in vector form,
 * the AMX kernels. */
static inline void nsa_split3(float x, uint16_t terms[3])
{
    terms[0] = nsa_bf16_round(x);
    const float rest = x - nsa_bf16_to_f32(terms[0]);
    terms[1] = nsa_bf16_round(rest);
    terms[2] = nsa_bf16_round(rest - nsa_bf16_to_f32(terms[1]));
}

/* The backward pass (spec section 7) recomputes each branch's probabilities
 * P = exp(scale q.k - lse) from the forward's log-sum-exp, with dp = dO V^T
 * from qk (values packed in panels like keys). Three elementwise steps sit
 * between the products: */

/* Query side, step 1: probabilities. Row r uses columns lo[r] .. hi[r]
 * (none when lo[r] > hi[r]): s[r][j] becomes exp(s[r][j] - lse[r]) there and
 * 0 elsewhere in [0, nk). When dp is not NULL, dot[r] += sum_j s[r][j]
 * dp[r][j] over the new s (dp has stride lddp and is read on the row's
 * columns only); summed over all of a row's keys that is <dO, O>. */
typedef void nsa_grad_prob_ukernel(size_t m, size_t nk, const int32_t *lo, const int32_t *hi,
                                   const float *lse, float *s, size_t lds, const float *dp,
                                   size_t lddp, float *dot);

/* Query side, step 2: score gradients from probabilities, in place over dp:
 * dp[r][j] = coef[r] * p[r][j] * (dp[r][j] - dot[r]) for j < nk. */
typedef void nsa_grad_score_ukernel(size_t m, size_t nk, const float *coef, const float *dot,
                                    const float *p, size_t ldp, float *dp, size_t lddp);

/* Key side: both steps at once, written transposed (keys become rows) so
 * that pv can sum them over the query rows into dV and dK. With P =
 * exp(s[r][j] - lse[r]) on row r's columns lo[r] .. hi[r] and P = 0 elsewhere,
 * for r < m and j < nk: pt[j][r] = gain[r] P and dst[j][r] = scale gain[r] P
 * (dp[r][j] - dot[r]); pt and dst have row stride ldt. dp is read on the
 * row's columns only. */
typedef void nsa_grad_score_t_ukernel(size_t m, size_t nk, const int32_t *lo, const int32_t *hi,
                                      const float *lse, const float *dot, const float *gain,
                                      float scale, const float *s, size_t lds, const float *dp,
                                      size_t lddp, float *pt, float *dst, size_t ldt);

/* The table a plan calls: one pointer per kernel kind (slot). */
typedef struct nsa_ukernels {
    nsa_qk_ukernel *qk;
    nsa_pv_ukernel *pv;
    nsa_softmax_ukernel *softmax;
    nsa_gate_mix_ukernel *gate_mix;
    nsa_pool_ukernel *pool;
    nsa_qk_bf16_ukernel *qk_bf16;
    nsa_pv_bf16_ukernel *pv_bf16;
    nsa_grad_prob_ukernel *grad_prob;
    nsa_grad_score_ukernel *grad_score;
    nsa_grad_score_t_ukernel *grad_score_t;
    nsa_qk_x3_ukernel *qk_x3;
    nsa_pv_x3_ukernel *pv_x3;
    nsa_split_x3_ukernel *split_x3;
    nsa_qk_bf16_split_ukernel *qk_bf16_split;
    /* Whether the forward stores its fp32 keys and values split for
     * qk_x3 and pv_x3: only when tile products run them (dispatch.c). */
    int split_fp32;
    /* Whether the forward's selected blocks take those split keys too,
     * where a query's rows are whole 16-row blocks (selected.c). */
    int split_selected;
    /* Whether a decode step over a bf16 cache splits its rows once for
     * qk_bf16_split: likewise only on tile products. */
    int split_bf16_queries;
} nsa_ukernels;

/* The portable scalar kernels (src/ref/): the executable specification every
 * optimised kernel is tested against. */
nsa_qk_ukernel nsa_f32_qk_ukernel__ref;
nsa_pv_ukernel nsa_f32_pv_ukernel__ref;
nsa_softmax_ukernel nsa_f32_softmax_ukernel__ref;
nsa_gate_mix_ukernel nsa_f32_gate_mix_ukernel__ref;
nsa_pool_ukernel nsa_f32_pool_ukernel__ref;
nsa_qk_bf16_ukernel nsa_bf16_qk_ukernel__ref;
nsa_pv_bf16_ukernel nsa_bf16_pv_ukernel__ref;
nsa_grad_prob_ukernel nsa_f32_grad_prob_ukernel__ref;
nsa_grad_score_ukernel nsa_f32_grad_score_ukernel__ref;
nsa_grad_score_t_ukernel nsa_f32_grad_score_t_ukernel__ref;
nsa_qk_x3_ukernel nsa_x3_qk_ukernel__ref;
nsa_pv_x3_ukernel nsa_x3_pv_ukernel__ref;
nsa_split_x3_ukernel nsa_x3_split_ukernel__ref;
nsa_qk_bf16_split_ukernel nsa_bf16_qk_split_ukernel__ref;

/* The optimised kernels, one declaration per line of the registry. */
#define NSA_UKERNEL(isa, slot, fn) nsa_##slot##_ukernel fn;
#include "ukernels.inc"
#undef NSA_UKERNEL

#endif /* NSA_UKERNELS_H */
