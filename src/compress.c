/* SPDX-License-Identifier: MIT */
/*
 * compress.c — phi for every kind of spec section 1.
 *
 * The position encoding is a constant per window position, so its effect is
 * a bias computed once per head: pooling gives bias = sum_j w_j pe_j, the
 * linear map bias = vec(pe) . W. For linear and mlp, W = [W_0; ...; W_{l-1}]
 * splits into one D x D' slice per window position j, and the rows {i*d + j}
 * of x form a strided matrix, so vec(x_i) . W = sum_j X_j . W_j: l GEMMs read
 * the keys in place, with no gathered copy of overlapping windows.
 */
#include <string.h>

#include "compress.h"
#include "gemm.h"

/* Compressed tokens produced per GEMM pass; bounds the mlp's hidden buffer. */
enum { COMPRESS_CHUNK = 128 };

size_t nsa_compress_workspace(const nsa_config *cfg, int32_t dim)
{
    size_t pooling = (size_t)cfg->cmp_block + (size_t)dim;
    size_t hidden = cfg->compress == NSA_COMPRESS_MLP
                        ? (size_t)(COMPRESS_CHUNK + 1) * (size_t)cfg->cmp_mlp_hidden
                        : 0;
    return pooling > hidden ? pooling : hidden;
}

static void broadcast_rows(float *y, size_t rows, size_t dim, const float *row)
{
    for (size_t i = 0; i < rows; i++)
        memcpy(y + i * dim, row, dim * sizeof *y);
}

static void compress_pooled(const nsa_plan *plan, const nsa_compress_params *params,
                            int32_t dim, int32_t head, const float *x, size_t ldx, int64_t nc,
                            float *y, float *workspace)
{
    const nsa_config *cfg = &plan->cfg;
    const size_t l = (size_t)cfg->cmp_block;
    float *weight = workspace, *bias = workspace + l;
    if (cfg->compress == NSA_COMPRESS_WEIGHTED)
        memcpy(weight, params->a + (size_t)head * l, l * sizeof *weight);
    else
        for (size_t j = 0; j < l; j++)
            weight[j] = 1.0f / (float)l;

    const float *pe = params != NULL ? params->pe : NULL;
    if (pe != NULL)
        plan->kernels.pool(l, (size_t)dim, weight, pe + (size_t)head * l * (size_t)dim,
                           (size_t)dim, bias);
    for (int64_t i = 0; i < nc; i++) {
        float *yi = y + (size_t)i * (size_t)dim;
        plan->kernels.pool(l, (size_t)dim, weight, x + (size_t)(i * cfg->cmp_stride) * ldx, ldx,
                           yi);
        if (pe != NULL)
            for (int32_t c = 0; c < dim; c++)
                yi[c] += bias[c];
    }
}

void nsa_windows_times_matrix(const nsa_config *cfg, const float *x, size_t ldx,
                              int64_t rows, int32_t dim, const float *pe, const float *w,
                              size_t cols, float *out)
{
    const size_t l = (size_t)cfg->cmp_block, slice = (size_t)dim * cols;
    if (pe != NULL) {
        nsa_sgemm(1, cols, l * (size_t)dim, pe, l * (size_t)dim, w, cols, 0.0f, out, cols);
        broadcast_rows(out + cols, (size_t)rows - 1, cols, out);
    } else {
        memset(out, 0, (size_t)rows * cols * sizeof *out);
    }
    for (size_t j = 0; j < l; j++)
        nsa_sgemm((size_t)rows, cols, (size_t)dim, x + j * ldx, (size_t)cfg->cmp_stride * ldx,
                  w + j * slice, cols, 1.0f, out, cols);
}

static void compress_matrix(const nsa_plan *plan, const nsa_compress_params *params,
                            int32_t dim, int32_t head, const float *x, size_t ldx, int64_t nc,
                            float *y, float *workspace)
{
    const nsa_config *cfg = &plan->cfg;
    const size_t window = (size_t)cfg->cmp_block * (size_t)dim;
    const float *pe = params->pe != NULL ? params->pe + (size_t)head * window : NULL;
    const size_t ldchunk = (size_t)cfg->cmp_stride * ldx * COMPRESS_CHUNK;

    for (int64_t i0 = 0; i0 < nc; i0 += COMPRESS_CHUNK) {
        int64_t rows = nc - i0 < COMPRESS_CHUNK ? nc - i0 : COMPRESS_CHUNK;
        const float *xc = x + (size_t)(i0 / COMPRESS_CHUNK) * ldchunk;
        float *yc = y + (size_t)i0 * (size_t)dim;
        if (cfg->compress == NSA_COMPRESS_LINEAR) {
            nsa_windows_times_matrix(cfg, xc, ldx, rows, dim, pe,
                                     params->w + (size_t)head * window * (size_t)dim,
                                     (size_t)dim, yc);
        } else {
            const size_t hidden = (size_t)cfg->cmp_mlp_hidden;
            float *h = workspace;
            nsa_windows_times_matrix(cfg, xc, ldx, rows, dim, pe,
                                     params->w1 + (size_t)head * window * hidden, hidden, h);
            for (size_t e = 0; e < (size_t)rows * hidden; e++)
                h[e] = h[e] > 0.0f ? h[e] : 0.0f;
            nsa_sgemm((size_t)rows, (size_t)dim, hidden, h, hidden,
                      params->w2 + (size_t)head * hidden * (size_t)dim, (size_t)dim, 0.0f, yc,
                      (size_t)dim);
        }
    }
}

void nsa_compress(const nsa_plan *plan, const nsa_compress_params *params, int32_t dim,
                  int32_t head, const float *x, size_t ldx, int64_t first, int64_t count,
                  float *y, float *workspace)
{
    if (count <= 0)
        return;
    x += (size_t)(first * plan->cfg.cmp_stride) * ldx;
    int64_t nc = count;
    switch (plan->cfg.compress) {
    case NSA_COMPRESS_MEAN:
    case NSA_COMPRESS_WEIGHTED:
        compress_pooled(plan, params, dim, head, x, ldx, nc, y, workspace);
        break;
    case NSA_COMPRESS_LINEAR:
    case NSA_COMPRESS_MLP:
        compress_matrix(plan, params, dim, head, x, ldx, nc, y, workspace);
        break;
    }
}
