/* SPDX-License-Identifier: MIT */
/*
 * ukernels.h — the contracts of the hot kernels and the table a plan calls
 * them through. The pipeline (forward.c) knows only these signatures; which
 * implementation fills each slot is decided once per plan (dispatch.c).
 *
 * Shared conventions: fp32 in and out, fp32 accumulation; strides (ld*) are
 * in elements between consecutive rows; no kernel reads or writes outside
 * the rows and columns it is given; results do not depend on threads.
 */
#ifndef NSA_UKERNELS_H
#define NSA_UKERNELS_H

#include <stddef.h>

/* Online-softmax attention of m query rows over nk >= 1 keys.
 * q [m][dk] (stride ldq), k [nk][dk] (ldk), v [nk][dv] (ldv).
 * State in/out per row r: row_max[r] (-INFINITY before the first call),
 * row_sum[r] (0), acc[r][dv] (0, rows contiguous): after any sequence of
 * calls, acc / row_sum is softmax(scale q K^T) V over all keys seen. */
typedef void (*nsa_attn_tile_fn)(size_t m, size_t nk, size_t dk, size_t dv, float scale,
                                 const float *q, size_t ldq, const float *k, size_t ldk,
                                 const float *v, size_t ldv, float *row_max, float *row_sum,
                                 float *acc);

/* Softmax probabilities of m query rows over nc >= 1 compressed keys:
 * p[r][i] = softmax_i(scale q_r . kc_i), p rows of stride ldp. These are the
 * p_cmp of spec section 2 that also feed the block scores of section 3. */
typedef void (*nsa_cmp_probs_fn)(size_t m, size_t nc, size_t dk, float scale, const float *q,
                                 size_t ldq, const float *kc, size_t ldkc, float *p, size_t ldp);

/* o[m][dv] (rows contiguous) = p[m][nc] (stride ldp) . vc[nc][dv] (ldvc). */
typedef void (*nsa_prob_v_fn)(size_t m, size_t nc, size_t dv, const float *p, size_t ldp,
                              const float *vc, size_t ldvc, float *o);

/* The gated output of spec section 6 for m rows (one query head each):
 * out[r] = g_cmp o_cmp[r] + g_slc slc_acc[r]/slc_sum[r] + g_swa swa_acc[r]/swa_sum[r],
 * gates[r][3] = (g_cmp, g_slc, g_swa); a branch whose sum is 0 saw no key and
 * contributes 0. All [m][dv] arrays have contiguous rows. */
typedef void (*nsa_gate_mix_fn)(size_t m, size_t dv, const float *gates, const float *o_cmp,
                                const float *slc_acc, const float *slc_sum,
                                const float *swa_acc, const float *swa_sum, float *out);

/* Weighted pooling of one window: y[dim] = sum_{j<l} weight[j] x[j][dim],
 * x rows of stride ldx. Serves the mean and weighted kinds of phi. */
typedef void (*nsa_pool_fn)(size_t l, size_t dim, const float *weight, const float *x,
                            size_t ldx, float *y);

typedef struct nsa_ukernels {
    nsa_attn_tile_fn attn_tile;
    nsa_cmp_probs_fn cmp_probs;
    nsa_prob_v_fn prob_v;
    nsa_gate_mix_fn gate_mix;
    nsa_pool_fn pool;
} nsa_ukernels;

/* The portable scalar kernels (src/ref/): the executable specification every
 * optimised kernel is tested against. */
void nsa_f32_attn_tile_ukernel__ref(size_t m, size_t nk, size_t dk, size_t dv, float scale,
                                    const float *q, size_t ldq, const float *k, size_t ldk,
                                    const float *v, size_t ldv, float *row_max,
                                    float *row_sum, float *acc);
void nsa_f32_cmp_probs_ukernel__ref(size_t m, size_t nc, size_t dk, float scale,
                                    const float *q, size_t ldq, const float *kc, size_t ldkc,
                                    float *p, size_t ldp);
void nsa_f32_prob_v_ukernel__ref(size_t m, size_t nc, size_t dv, const float *p, size_t ldp,
                                 const float *vc, size_t ldvc, float *o);
void nsa_f32_gate_mix_ukernel__ref(size_t m, size_t dv, const float *gates, const float *o_cmp,
                                   const float *slc_acc, const float *slc_sum,
                                   const float *swa_acc, const float *swa_sum, float *out);
void nsa_f32_pool_ukernel__ref(size_t l, size_t dim, const float *weight, const float *x,
                               size_t ldx, float *y);

#endif /* NSA_UKERNELS_H */
