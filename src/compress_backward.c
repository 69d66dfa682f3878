/* SPDX-License-Identifier: MIT */
/*
 * compress_backward.c — the backward of phi for every kind (spec section
 * 1), the mirror of compress.c.
 *
 * A raw token lies in l/d overlapping windows, so its gradient sums l/d
 * window gradients. For linear and mlp the window gradients of a run of
 * compressed tokens come from one GEMM (dy W^T, or dh W1^T) into scratch,
 * then each raw token of the run adds its pieces in ascending window order;
 * a run recomputes the one or two windows it shares with the previous run
 * rather than writing into rows another run owns.
 *
 * The parameter gradients are sums over every compressed token of the
 * batch. Split by window position j they are independent GEMMs
 * (X_j^T dy, with X_j the rows {i*d + j} read in place), summed sequence by
 * sequence in order; pe, being added to every window, contributes an outer
 * product with the sum of the gradients.
 */
#include <string.h>

#include "compress.h"
#include "compress_backward.h"
#include "gemm.h"

/* Compressed tokens whose windows touch raw tokens [first, first + count),
 * of the nc a sequence has: [*lo, *hi], empty when *lo > *hi. */
static void windows_touching(const nsa_config *cfg, int64_t nc, int64_t first, int64_t count,
                             int64_t *lo, int64_t *hi)
{
    const int64_t l = cfg->cmp_block, d = cfg->cmp_stride;
    const int64_t from = first - l + 1; /* window i covers first iff i*d >= first - l + 1 */
    *lo = from <= 0 ? 0 : (from + d - 1) / d;
    *hi = (first + count - 1) / d;
    if (*hi > nc - 1)
        *hi = nc - 1;
}

size_t nsa_compress_backward_workspace(const nsa_config *cfg, int32_t dim)
{
    const size_t l = (size_t)cfg->cmp_block, d = (size_t)cfg->cmp_stride;
    const size_t windows = NSA_PHI_GRAD_TOKENS / d + l / d + 2;
    const size_t window_grads = cfg->compress == NSA_COMPRESS_LINEAR ||
                                        cfg->compress == NSA_COMPRESS_MLP
                                    ? windows * l * (size_t)dim
                                    : 0;
    const size_t sums = (size_t)dim + (size_t)cfg->cmp_mlp_hidden + l;
    return window_grads > sums ? window_grads : sums;
}

/* The pooling weights of mean and weighted phi for one head. */
static void pool_weights(const nsa_config *cfg, const nsa_compress_params *params, int32_t head,
                         float *weight)
{
    const size_t l = (size_t)cfg->cmp_block;
    for (size_t j = 0; j < l; j++)
        weight[j] = cfg->compress == NSA_COMPRESS_WEIGHTED ? params->a[(size_t)head * l + j]
                                                           : 1.0f / (float)l;
}

void nsa_compress_backward_hidden(const nsa_plan *plan, const nsa_compress_params *params,
                                  int32_t dim, int32_t head, const float *x, size_t ldx,
                                  int64_t first, int64_t count, const float *dy, float *hidden,
                                  float *dhidden)
{
    const nsa_config *cfg = &plan->cfg;
    const size_t window = (size_t)cfg->cmp_block * (size_t)dim, m = (size_t)cfg->cmp_mlp_hidden;
    const float *pe = params->pe != NULL ? params->pe + (size_t)head * window : NULL;
    if (count <= 0)
        return;
    nsa_windows_times_matrix(cfg, x + (size_t)(first * cfg->cmp_stride) * ldx, ldx, count, dim,
                             pe, params->w1 + (size_t)head * window * m, m, hidden);
    /* dA = dy W2^T, W2 being [M][dim] */
    nsa_sgemm_t(0, 1, (size_t)count, m, (size_t)dim, dy, (size_t)dim,
                params->w2 + (size_t)head * m * (size_t)dim, (size_t)dim, 0.0f, dhidden, m);
    for (size_t e = 0; e < (size_t)count * m; e++) {
        const int active = hidden[e] > 0.0f;
        dhidden[e] = active ? dhidden[e] : 0.0f;
        hidden[e] = active ? hidden[e] : 0.0f;
    }
}

void nsa_compress_backward_inputs(const nsa_plan *plan, const nsa_compress_params *params,
                                  int32_t dim, int32_t head, int64_t nc, const float *dy,
                                  const float *dhidden, int64_t first, int64_t count, float *dx,
                                  size_t lddx, float *workspace)
{
    const nsa_config *cfg = &plan->cfg;
    const int64_t l = cfg->cmp_block, d = cfg->cmp_stride;
    const size_t dsz = (size_t)dim;
    int64_t lo, hi;
    windows_touching(cfg, nc, first, count, &lo, &hi);
    if (lo > hi)
        return;

    if (cfg->compress == NSA_COMPRESS_MEAN || cfg->compress == NSA_COMPRESS_WEIGHTED) {
        float *weight = workspace;
        pool_weights(cfg, params, head, weight);
        for (int64_t t = first; t < first + count; t++) {
            float *row = dx + (size_t)t * lddx;
            for (int64_t i = lo; i <= hi; i++) {
                const int64_t j = t - i * d;
                if (j < 0 || j >= l)
                    continue;
                const float *g = dy + (size_t)i * dsz;
                for (size_t c = 0; c < dsz; c++)
                    row[c] += weight[j] * g[c];
            }
        }
        return;
    }

    /* Window gradients of tokens lo .. hi: [hi - lo + 1][l * dim]. */
    const size_t window = (size_t)l * dsz, windows = (size_t)(hi - lo + 1);
    float *grad = workspace;
    if (cfg->compress == NSA_COMPRESS_LINEAR) {
        nsa_sgemm_t(0, 1, windows, window, dsz, dy + (size_t)lo * dsz, dsz,
                    params->w + (size_t)head * window * dsz, dsz, 0.0f, grad, window);
    } else {
        const size_t m = (size_t)cfg->cmp_mlp_hidden;
        nsa_sgemm_t(0, 1, windows, window, m, dhidden + (size_t)lo * m, m,
                    params->w1 + (size_t)head * window * m, m, 0.0f, grad, window);
    }
    for (int64_t t = first; t < first + count; t++) {
        float *row = dx + (size_t)t * lddx;
        for (int64_t i = lo; i <= hi; i++) {
            const int64_t j = t - i * d;
            if (j < 0 || j >= l)
                continue;
            const float *g = grad + (size_t)(i - lo) * window + (size_t)j * dsz;
            for (size_t c = 0; c < dsz; c++)
                row[c] += g[c];
        }
    }
}

int32_t nsa_compress_backward_parts(const nsa_config *cfg)
{
    return cfg->cmp_block + (cfg->compress == NSA_COMPRESS_MLP ? 1 : 0);
}

/* sum[cols] = the sum of rows[i][cols] over every compressed token of the
 * batch (rows at base + c_offset[b] * cols), in order. */
static void sum_rows(const nsa_phi_batch *batch, const float *base, size_t cols, float *sum)
{
    memset(sum, 0, cols * sizeof *sum);
    const int64_t total = batch->c_offset[batch->num_seqs];
    for (int64_t i = 0; i < total; i++)
        for (size_t c = 0; c < cols; c++)
            sum[c] += base[(size_t)i * cols + c];
}

/* out[dim][cols] = sum over sequences of X_j^T g, X_j the rows {i*d + j} of
 * the sequence's raw tokens and g its rows [nc][cols] at grads. */
static void windows_transposed_times(const nsa_config *cfg, const nsa_phi_batch *batch,
                                     int32_t j, size_t dim, const float *grads, size_t cols,
                                     float *out)
{
    memset(out, 0, dim * cols * sizeof *out);
    for (int64_t b = 0; b < batch->num_seqs; b++) {
        const int64_t nc = batch->c_offset[b + 1] - batch->c_offset[b];
        if (nc == 0)
            continue;
        const float *xj = batch->x + (size_t)(batch->cu_seqlens[b] + j) * batch->ldx;
        nsa_sgemm_t(1, 0, dim, cols, (size_t)nc, xj, (size_t)cfg->cmp_stride * batch->ldx,
                    grads + (size_t)batch->c_offset[b] * cols, cols, 1.0f, out, cols);
    }
}

/* out[dim][cols] += pe_j (x) sum. */
static void add_outer(const float *pe_j, size_t dim, const float *sum, size_t cols, float *out)
{
    for (size_t e = 0; e < dim; e++)
        for (size_t c = 0; c < cols; c++)
            out[e * cols + c] += pe_j[e] * sum[c];
}

/* dpe[dim] = slice[dim][cols] . sum: the pe gradient through a linear map. */
static void slice_times(const float *slice, size_t dim, size_t cols, const float *sum,
                        float *dpe)
{
    for (size_t e = 0; e < dim; e++) {
        float acc = 0.0f;
        for (size_t c = 0; c < cols; c++)
            acc += slice[e * cols + c] * sum[c];
        dpe[e] = acc;
    }
}

void nsa_compress_backward_params(const nsa_plan *plan, const nsa_compress_params *params,
                                  const nsa_compress_grads *grads, int32_t dim, int32_t head,
                                  int32_t part, const nsa_phi_batch *batch, float *workspace)
{
    const nsa_config *cfg = &plan->cfg;
    const size_t l = (size_t)cfg->cmp_block, dsz = (size_t)dim, h = (size_t)head;
    const size_t m = (size_t)cfg->cmp_mlp_hidden, j = (size_t)part;
    const float *pe = params != NULL && params->pe != NULL ? params->pe + h * l * dsz : NULL;
    float *dpe = grads->pe != NULL && pe != NULL ? grads->pe + (h * l + j) * dsz : NULL;
    const float *pe_j = pe != NULL ? pe + j * dsz : NULL;
    float *sum = workspace;

    switch (cfg->compress) {
    case NSA_COMPRESS_MEAN:
    case NSA_COMPRESS_WEIGHTED: {
        float *weight = workspace + dsz;
        pool_weights(cfg, params, head, weight);
        sum_rows(batch, batch->dy, dsz, sum);
        if (dpe != NULL)
            for (size_t c = 0; c < dsz; c++)
                dpe[c] = weight[j] * sum[c];
        if (cfg->compress == NSA_COMPRESS_WEIGHTED && grads->a != NULL) {
            float da = 0.0f;
            for (int64_t b = 0; b < batch->num_seqs; b++) {
                const int64_t nc = batch->c_offset[b + 1] - batch->c_offset[b];
                for (int64_t i = 0; i < nc; i++) {
                    const float *x = batch->x + (size_t)(batch->cu_seqlens[b] +
                                                         i * cfg->cmp_stride + part) *
                                                    batch->ldx;
                    const float *g = batch->dy + (size_t)(batch->c_offset[b] + i) * dsz;
                    for (size_t c = 0; c < dsz; c++)
                        da += x[c] * g[c];
                }
            }
            if (pe_j != NULL)
                for (size_t c = 0; c < dsz; c++)
                    da += pe_j[c] * sum[c];
            grads->a[h * l + j] = da;
        }
        break;
    }
    case NSA_COMPRESS_LINEAR: {
        const float *w_j = params->w + (h * l + j) * dsz * dsz;
        sum_rows(batch, batch->dy, dsz, sum);
        if (grads->w != NULL) {
            float *dw_j = grads->w + (h * l + j) * dsz * dsz;
            windows_transposed_times(cfg, batch, part, dsz, batch->dy, dsz, dw_j);
            if (pe_j != NULL)
                add_outer(pe_j, dsz, sum, dsz, dw_j);
        }
        if (dpe != NULL)
            slice_times(w_j, dsz, dsz, sum, dpe);
        break;
    }
    case NSA_COMPRESS_MLP:
        if (part == (int32_t)l) { /* W2: sum of hidden^T dy */
            if (grads->w2 == NULL)
                break;
            float *dw2 = grads->w2 + h * m * dsz;
            memset(dw2, 0, m * dsz * sizeof *dw2);
            for (int64_t b = 0; b < batch->num_seqs; b++) {
                const int64_t c0 = batch->c_offset[b], nc = batch->c_offset[b + 1] - c0;
                if (nc > 0)
                    nsa_sgemm_t(1, 0, m, dsz, (size_t)nc, batch->hidden + (size_t)c0 * m, m,
                                batch->dy + (size_t)c0 * dsz, dsz, 1.0f, dw2, dsz);
            }
            break;
        }
        sum_rows(batch, batch->dhidden, m, sum);
        if (grads->w1 != NULL) {
            float *dw1_j = grads->w1 + (h * l + j) * dsz * m;
            windows_transposed_times(cfg, batch, part, dsz, batch->dhidden, m, dw1_j);
            if (pe_j != NULL)
                add_outer(pe_j, dsz, sum, m, dw1_j);
        }
        if (dpe != NULL)
            slice_times(params->w1 + (h * l + j) * dsz * m, dsz, m, sum, dpe);
        break;
    }
}
