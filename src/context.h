/* SPDX-License-Identifier: MIT */
/*
 * context.h — the inside of nsa_context, and the two ways the library talks
 * back: nsa_fail() records why a call failed (the per-context message users
 * read with nsa_context_last_error) and nsa_log() prints a decision when the
 * user asked for verbose output.
 */
#ifndef NSA_CONTEXT_H
#define NSA_CONTEXT_H

#include <pthread.h>

#include <hwloc.h>

#include "nsa.h"
#include "threads.h"

enum { NSA_ERROR_MESSAGE_SIZE = 512 };

/* Whether G >= 16 selected blocks run on tile products where the kernels
 * have them, unless NSA_SELECTED_ON_TILES=0|1 says otherwise. */
#ifndef NSA_SELECTED_ON_TILES
#define NSA_SELECTED_ON_TILES 0
#endif

struct nsa_context {
    hwloc_topology_t topology;
    int32_t num_threads;
    int32_t verbose;
    nsa_isa isa; /* the kernels' instruction set, capped by max_isa */
    /* NSA_SPLIT_KEYS=1: run the split-key (tile product) paths even where
     * only the reference x3 kernels exist, so the tests cover on any CPU
     * the code the AMX host runs. */
    int32_t split_keys;
    /* NSA_SELECTED_ON_TILES=0|1: whether G >= 16 selected blocks take the
     * split keys (an A/B knob; the default is the macro above). */
    int32_t selected_on_tiles;
    nsa_pool *pool; /* num_threads workers, the caller included */
    /* Guards last_error: several threads may fail on one context at once. */
    pthread_mutex_t error_lock;
    char last_error[NSA_ERROR_MESSAGE_SIZE];
    /* The scratch short repeated calls keep (workspace.h). */
    pthread_mutex_t workspace_lock;
    void *workspace;
    size_t workspace_bytes;
};

/* Records a printf-style message on ctx (which may be NULL) and returns
 * status, so error paths read `return nsa_fail(ctx, NSA_ERROR_..., "...")`. */
nsa_status nsa_fail(nsa_context *ctx, nsa_status status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Prints "nsa: <message>" to stderr when ctx is verbose. */
void nsa_log(const nsa_context *ctx, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

#endif /* NSA_CONTEXT_H */
