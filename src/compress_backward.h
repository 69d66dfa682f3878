/* SPDX-License-Identifier: MIT */
/*
 * compress_backward.h — the backward of phi (spec section 1): from the
 * gradients of the compressed tokens to the gradients of the raw keys and
 * values they summarise, and of phi's parameters. Separate from the
 * attention backward because it is a different kind of work: dense
 * products (GEMMs for linear and mlp) and sums over whole sequences.
 *
 * Each function covers one piece with a fixed set of outputs, so pieces
 * run in parallel with results that do not depend on who runs them.
 */
#ifndef NSA_COMPRESS_BACKWARD_H
#define NSA_COMPRESS_BACKWARD_H

#include <stddef.h>
#include <stdint.h>

#include "plan.h"

/* Raw tokens per call of nsa_compress_backward_inputs, and compressed
 * tokens per call of nsa_compress_backward_hidden (the forward's GEMM chunk,
 * so the recomputed hidden layer takes the forward's shapes). */
enum { NSA_PHI_GRAD_TOKENS = 512, NSA_PHI_HIDDEN_TOKENS = 128 };

/* Floats of scratch either call needs for a tensor of head dim `dim`. */
size_t nsa_compress_backward_workspace(const nsa_config *cfg, int32_t dim);

/* mlp only: the hidden layer of compressed tokens first .. first + count - 1
 * (count <= NSA_PHI_HIDDEN_TOKENS) of one sequence, and its gradient:
 * hidden[i][M] = relu(h_i), dhidden[i][M] = (W2 dy_i) o (h_i > 0), with
 * h_i = W1^T vec(x_i + pe). x points at the sequence's first token, offset to
 * the head (row stride ldx); dy holds the count tokens' gradients [count][dim]. */
void nsa_compress_backward_hidden(const nsa_plan *plan, const nsa_compress_params *params,
                                  int32_t dim, int32_t head, const float *x, size_t ldx,
                                  int64_t first, int64_t count, const float *dy, float *hidden,
                                  float *dhidden);

/* Adds phi's contribution to the gradients of raw tokens first .. first +
 * count - 1 (count <= NSA_PHI_GRAD_TOKENS) of a sequence with nc compressed
 * tokens: dx[t] += sum over the windows i covering t, in ascending i, of
 * d phi(x_i) / d x_t applied to dy_i. dy: the sequence's compressed-token
 * gradients [nc][dim]; dhidden: for mlp, [nc][M] from
 * nsa_compress_backward_hidden. dx points at the sequence's first token
 * (row stride lddx). */
void nsa_compress_backward_inputs(const nsa_plan *plan, const nsa_compress_params *params,
                                  int32_t dim, int32_t head, int64_t nc, const float *dy,
                                  const float *dhidden, int64_t first, int64_t count, float *dx,
                                  size_t lddx, float *workspace);

/* One KV head's view of a batch for the parameter gradients: sequence b's
 * raw rows at x + cu_seqlens[b] * ldx (x offset to the head), its
 * compressed-token gradients at dy + c_offset[b] * dim, and for mlp its
 * hidden layer and gradient at hidden / dhidden + c_offset[b] * M. */
typedef struct nsa_phi_batch {
    int64_t num_seqs;
    const int64_t *cu_seqlens, *c_offset;
    const float *x;
    size_t ldx;
    const float *dy, *hidden, *dhidden;
} nsa_phi_batch;

/* Parameter gradients are computed in parts per head: part j < l is
 * everything of window position j (a_j, pe_j, the slice W_j or W1_j); the
 * mlp has one more part, W2. */
int32_t nsa_compress_backward_parts(const nsa_config *cfg);

/* Writes part `part` of head `head`'s parameter gradients into the fields of
 * grads the kind uses (NULL fields are skipped; pe only when params has
 * one), summing over every compressed token of the batch in sequence and
 * token order. Zero when the batch has no compressed token. */
void nsa_compress_backward_params(const nsa_plan *plan, const nsa_compress_params *params,
                                  const nsa_compress_grads *grads, int32_t dim, int32_t head,
                                  int32_t part, const nsa_phi_batch *batch, float *workspace);

#endif /* NSA_COMPRESS_BACKWARD_H */
