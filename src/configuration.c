/* SPDX-License-Identifier: MIT */
/*
 * configuration.c — the paper's defaults and the rules a configuration must follow
 * (spec "Shapes and names" and section 1). Checked once, at plan creation, so
 * the hot paths can trust every field.
 */
#include <math.h>

#include "checked.h"
#include "configuration.h"

nsa_status nsa_config_init(nsa_config *cfg, int32_t num_q_heads, int32_t num_kv_heads,
                           int32_t head_dim_qk, int32_t head_dim_v)
{
    if (cfg == NULL)
        return NSA_ERROR_NULL_POINTER;
    *cfg = (nsa_config){
        .num_q_heads = num_q_heads,
        .num_kv_heads = num_kv_heads,
        .head_dim_qk = head_dim_qk,
        .head_dim_v = head_dim_v,
        .cmp_block = 32,
        .cmp_stride = 16,
        .sel_block = 64,
        .sel_count = 16,
        .sel_init = 1,
        .sel_local = 2,
        .window = 512,
        .scale = head_dim_qk > 0 ? 1.0f / sqrtf((float)head_dim_qk) : 1.0f,
        .causal = 1,
        .compress = NSA_COMPRESS_MEAN,
        .cmp_mlp_hidden = head_dim_qk > 0 && head_dim_qk <= INT32_MAX / 2 ? 2 * head_dim_qk : 1,
    };
    return NSA_SUCCESS;
}

static nsa_status check_positive(nsa_context *ctx, const char *name, int32_t value)
{
    if (value > 0)
        return NSA_SUCCESS;
    return nsa_fail(ctx, NSA_ERROR_INVALID_DIMENSION, "%s is %d but must be positive", name,
                    (int)value);
}

/* The parameter tensors of phi for one of K (dim = Dk) or V (dim = Dv) must
 * have sizes that fit in memory arithmetic. */
static nsa_status check_param_sizes(nsa_context *ctx, const nsa_config *cfg, int32_t dim,
                                    const char *which)
{
    int64_t window_elems, count;
    size_t bytes;
    bool ok = nsa_checked_mul3(cfg->num_kv_heads, cfg->cmp_block, dim, &window_elems) &&
              nsa_checked_bytes(window_elems, sizeof(float), &bytes);
    if (ok && cfg->compress == NSA_COMPRESS_LINEAR)
        ok = nsa_checked_mul3(window_elems, dim, 1, &count) &&
             nsa_checked_bytes(count, sizeof(float), &bytes);
    if (ok && cfg->compress == NSA_COMPRESS_MLP)
        ok = nsa_checked_mul3(window_elems, cfg->cmp_mlp_hidden, 1, &count) &&
             nsa_checked_bytes(count, sizeof(float), &bytes) &&
             nsa_checked_mul3(cfg->num_kv_heads, cfg->cmp_mlp_hidden, dim, &count) &&
             nsa_checked_bytes(count, sizeof(float), &bytes);
    if (ok)
        return NSA_SUCCESS;
    return nsa_fail(ctx, NSA_ERROR_SIZE_OVERFLOW,
                    "the compression parameters for %s (num_kv_heads %d, cmp_block %d, "
                    "head dim %d, cmp_mlp_hidden %d) are too large to address",
                    which, (int)cfg->num_kv_heads, (int)cfg->cmp_block, (int)dim,
                    (int)cfg->cmp_mlp_hidden);
}

nsa_status nsa_config_check(nsa_context *ctx, const nsa_config *cfg)
{
    const struct {
        const char *name;
        int32_t value;
    } positive[] = {
        {"num_q_heads", cfg->num_q_heads}, {"num_kv_heads", cfg->num_kv_heads},
        {"head_dim_qk", cfg->head_dim_qk}, {"head_dim_v", cfg->head_dim_v},
        {"cmp_block (l)", cfg->cmp_block}, {"cmp_stride (d)", cfg->cmp_stride},
        {"sel_block (l')", cfg->sel_block}, {"sel_count (n)", cfg->sel_count},
        {"window (w)", cfg->window},
    };
    for (size_t i = 0; i < sizeof positive / sizeof positive[0]; i++) {
        nsa_status status = check_positive(ctx, positive[i].name, positive[i].value);
        if (status != NSA_SUCCESS)
            return status;
    }
    if (cfg->num_q_heads % cfg->num_kv_heads != 0)
        return nsa_fail(ctx, NSA_ERROR_INVALID_HEADS,
                        "num_q_heads (%d) must be a multiple of num_kv_heads (%d)",
                        (int)cfg->num_q_heads, (int)cfg->num_kv_heads);
    if (cfg->cmp_block % cfg->cmp_stride != 0)
        return nsa_fail(ctx, NSA_ERROR_INVALID_BLOCKS,
                        "cmp_stride (d = %d) must divide cmp_block (l = %d)",
                        (int)cfg->cmp_stride, (int)cfg->cmp_block);
    if (cfg->sel_block % cfg->cmp_stride != 0)
        return nsa_fail(ctx, NSA_ERROR_INVALID_BLOCKS,
                        "cmp_stride (d = %d) must divide sel_block (l' = %d)",
                        (int)cfg->cmp_stride, (int)cfg->sel_block);
    if (cfg->cmp_block > cfg->sel_block)
        return nsa_fail(ctx, NSA_ERROR_INVALID_BLOCKS,
                        "cmp_block (l = %d) must not exceed sel_block (l' = %d)",
                        (int)cfg->cmp_block, (int)cfg->sel_block);
    if (cfg->sel_init < 0 || cfg->sel_local < 0)
        return nsa_fail(ctx, NSA_ERROR_INVALID_SELECTION,
                        "sel_init (%d) and sel_local (%d) must not be negative",
                        (int)cfg->sel_init, (int)cfg->sel_local);
    if ((int64_t)cfg->sel_count < (int64_t)cfg->sel_init + cfg->sel_local)
        return nsa_fail(ctx, NSA_ERROR_INVALID_SELECTION,
                        "sel_count (n = %d) must be at least sel_init + sel_local (%d + %d)",
                        (int)cfg->sel_count, (int)cfg->sel_init, (int)cfg->sel_local);
    if (!(isfinite(cfg->scale) && cfg->scale > 0.0f))
        return nsa_fail(ctx, NSA_ERROR_INVALID_ARGUMENT,
                        "scale (%g) must be positive and finite", (double)cfg->scale);
    if (cfg->causal != 0 && cfg->causal != 1)
        return nsa_fail(ctx, NSA_ERROR_INVALID_ARGUMENT, "causal is %d but must be 0 or 1",
                        (int)cfg->causal);
    switch (cfg->compress) {
    case NSA_COMPRESS_MEAN:
    case NSA_COMPRESS_WEIGHTED:
    case NSA_COMPRESS_LINEAR:
        break;
    case NSA_COMPRESS_MLP: {
        nsa_status status = check_positive(ctx, "cmp_mlp_hidden", cfg->cmp_mlp_hidden);
        if (status != NSA_SUCCESS)
            return status;
        break;
    }
    default:
        return nsa_fail(ctx, NSA_ERROR_INVALID_ARGUMENT,
                        "compress is %d, not a known nsa_compress_kind", (int)cfg->compress);
    }
    nsa_status status = check_param_sizes(ctx, cfg, cfg->head_dim_qk, "K");
    if (status == NSA_SUCCESS)
        status = check_param_sizes(ctx, cfg, cfg->head_dim_v, "V");
    return status;
}
