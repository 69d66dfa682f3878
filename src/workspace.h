/* SPDX-License-Identifier: MIT */
/*
 * workspace.h — a buffer the context keeps between calls, for calls that
 * are short and repeated (a decode step every token): allocating and
 * page-faulting their scratch afresh each time would cost more than their
 * arithmetic. One call at a time holds the kept buffer; a call that finds
 * it taken allocates its own, so concurrent calls stay correct.
 */
#ifndef NSA_WORKSPACE_H
#define NSA_WORKSPACE_H

#include <stddef.h>

#include "nsa.h"

typedef struct nsa_workspace {
    void *data; /* 64-byte aligned, at least the bytes asked for */
    int kept;   /* 1: the context's kept buffer (released, not freed) */
} nsa_workspace;

/* bytes of scratch (contents undefined) in ws. Errors:
 * NSA_ERROR_OUT_OF_MEMORY (nothing held). */
nsa_status nsa_workspace_acquire(nsa_context *ctx, size_t bytes, nsa_workspace *ws);
void nsa_workspace_release(nsa_context *ctx, nsa_workspace *ws);

/* Frees the kept buffer (nsa_context_destroy). */
void nsa_workspace_free_kept(nsa_context *ctx);

#endif /* NSA_WORKSPACE_H */
