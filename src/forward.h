/* SPDX-License-Identifier: MIT */
/*
 * forward.h — one forward call as the pipeline sees it, and the argument
 * checks that run before any of it (forward_args.c).
 */
#ifndef NSA_FORWARD_H
#define NSA_FORWARD_H

#include "plan.h"

/* The batch, inputs and outputs of one call. */
typedef struct forward_call {
    const nsa_plan *plan;
    const nsa_batch *batch;
    const float *q, *k, *v, *gates;
    const nsa_compress_params *cmp_k, *cmp_v;
    const int32_t *given_indices; /* caller's blocks, or NULL to select */
    float *out;
    int32_t *indices_out; /* optional */
    int dense;            /* nsa_dense_forward: no gates, phi or selection */
    struct nsa_saved *saved; /* nsa_forward_train: record for the backward */
    int64_t max_len;      /* longest sequence, set by the checks */
} forward_call;

/* Checks every argument of the call (plan already non-NULL) and sets
 * max_len; on failure records a message naming the argument. */
nsa_status nsa_forward_check(forward_call *call);

/* phi's parameters for K or V (name "cmp_k" / "cmp_v"): exactly those the
 * plan's compress kind uses (see nsa_compress_params). */
nsa_status nsa_check_compress_params(const nsa_plan *plan, const nsa_compress_params *params,
                                     const char *name);

/* Panels [first, first + count) of x's rows (row i at x + i * ldx, rows
 * past len are zero) into dst, panel-major [count][dim][NSA_PANEL]: the
 * layout qk reads. The backward packs values this way too. */
void nsa_pack_panels(const float *x, size_t ldx, int64_t len, int64_t dim, int64_t first,
                     int64_t count, float *dst);

#endif /* NSA_FORWARD_H */
