/* SPDX-License-Identifier: MIT */
/*
 * dispatch.c — the choice of kernels. The table starts with the portable
 * reference kernels; then every line of the registry (simd/ukernels.inc),
 * in its ascending ISA order, overrides its slot if its ISA is at or below
 * the context's. A plan copies the table, so plans never change.
 */
#include <stdio.h>

#include "config.h"
#include "plan.h"

void nsa_dispatch_ukernels(const nsa_context *ctx, nsa_ukernels *kernels, char *description,
                           size_t description_size)
{
    *kernels = (nsa_ukernels){
        .qk = nsa_f32_qk_ukernel__ref,
        .pv = nsa_f32_pv_ukernel__ref,
        .softmax = nsa_f32_softmax_ukernel__ref,
        .gate_mix = nsa_f32_gate_mix_ukernel__ref,
        .pool = nsa_f32_pool_ukernel__ref,
        .qk_bf16 = nsa_bf16_qk_ukernel__ref,
        .pv_bf16 = nsa_bf16_pv_ukernel__ref,
        .grad_prob = nsa_f32_grad_prob_ukernel__ref,
        .grad_score = nsa_f32_grad_score_ukernel__ref,
        .grad_score_t = nsa_f32_grad_score_t_ukernel__ref,
        .qk_x3 = nsa_x3_qk_ukernel__ref,
        .pv_x3 = nsa_x3_pv_ukernel__ref,
        .split_x3 = nsa_x3_split_ukernel__ref,
        .qk_bf16_split = nsa_bf16_qk_split_ukernel__ref,
    };
#define NSA_UKERNEL(kernel_isa, slot, fn)                                            \
    if ((kernel_isa) <= ctx->isa) {                                                  \
        kernels->slot = fn;                                                          \
        nsa_log(ctx, "dispatch: %-8s -> %s", #slot, #fn);                            \
    }
#include "ukernels.inc"
#undef NSA_UKERNEL
    /* Split fp32 keys pay only where tile products run the split kernels;
     * the reference ones exist for the tests (and NSA_SPLIT_KEYS=1). */
    kernels->split_fp32 = ctx->split_keys || (kernels->qk_x3 != nsa_x3_qk_ukernel__ref &&
                                              kernels->pv_x3 != nsa_x3_pv_ukernel__ref);
    kernels->split_selected = kernels->split_fp32 && ctx->selected_on_tiles;
    kernels->split_bf16_queries = kernels->qk_bf16_split != nsa_bf16_qk_split_ukernel__ref;
    snprintf(description, description_size, "isa=%s threads=%d", nsa_isa_name(ctx->isa),
             (int)ctx->num_threads);
}
