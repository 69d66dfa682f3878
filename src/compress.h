/* SPDX-License-Identifier: MIT */
/*
 * compress.h — phi, the compression of spec section 1, for one sequence and
 * one KV head at a time.
 */
#ifndef NSA_COMPRESS_H
#define NSA_COMPRESS_H

#include <stddef.h>
#include <stdint.h>

#include "plan.h"

/* Floats of scratch nsa_compress needs for a tensor of head dim `dim`. */
size_t nsa_compress_workspace(const nsa_config *cfg, int32_t dim);

/* Compressed tokens first .. first + count - 1 of one sequence for KV head
 * `head`: y[i - first][dim] (rows contiguous) = phi(x[i*d .. i*d + l - 1]).
 * x points at the sequence's first token, already offset to `head`; its rows
 * have stride ldx, and every window read must lie inside the sequence.
 * params are the checked phi parameters of this tensor (NULL allowed for
 * mean without pe). workspace holds nsa_compress_workspace() floats. */
void nsa_compress(const nsa_plan *plan, const nsa_compress_params *params, int32_t dim,
                  int32_t head, const float *x, size_t ldx, int64_t first, int64_t count,
                  float *y, float *workspace);

/* out[rows][cols] = bias(pe) + sum_j X_j . W_j, where X_j are the rows
 * {i*d + j} of x (stride ldx) and W_j the j-th [dim][cols] slice of w: the
 * linear map of `rows` consecutive windows, read in place. pe ([l][dim]) may
 * be NULL. The backward of the mlp kind recomputes its hidden layer with it. */
void nsa_windows_times_matrix(const nsa_config *cfg, const float *x, size_t ldx, int64_t rows,
                              int32_t dim, const float *pe, const float *w, size_t cols,
                              float *out);

#endif /* NSA_COMPRESS_H */
