/* SPDX-License-Identifier: MIT */
/*
 * dispatch.c — the choice of kernels. The table is filled with the portable
 * reference kernels; instruction-set specific kernels override slots in
 * ascending ISA order as they are added.
 */
#include <stdio.h>

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
    };
    snprintf(description, description_size, "isa=ref threads=%d", (int)ctx->num_threads);
    nsa_log(ctx, "dispatch: all kernels ref");
}
