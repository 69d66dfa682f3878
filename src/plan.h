/* SPDX-License-Identifier: MIT */
/*
 * plan.h — the inside of nsa_plan: a validated configuration, the kernels
 * chosen for this machine and the context it reports to. Never modified after
 * nsa_plan_create, which is what makes concurrent execution safe.
 */
#ifndef NSA_PLAN_H
#define NSA_PLAN_H

#include "context.h"
#include "ukernels.h"

struct nsa_plan {
    nsa_context *ctx;
    nsa_config cfg;
    int32_t group_size; /* G = Hq / Hkv */
    nsa_ukernels kernels;
    char description[128];
};

/* Fills kernels with the best implementation of each slot for this machine
 * and writes a short summary ("isa=ref") into description. */
void nsa_dispatch_ukernels(const nsa_context *ctx, nsa_ukernels *kernels, char *description,
                           size_t description_size);

#endif /* NSA_PLAN_H */
