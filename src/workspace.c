/* SPDX-License-Identifier: MIT */
/*
 * workspace.c — the context's kept scratch buffer (workspace.h). It only
 * grows; a trylock decides who holds it, so a call never waits for another.
 */
#include <stdlib.h>

#include "context.h"
#include "workspace.h"

static void *aligned(size_t bytes)
{
    void *p = NULL;
    return posix_memalign(&p, 64, bytes > 0 ? bytes : 64) == 0 ? p : NULL;
}

nsa_status nsa_workspace_acquire(nsa_context *ctx, size_t bytes, nsa_workspace *ws)
{
    *ws = (nsa_workspace){0};
    if (pthread_mutex_trylock(&ctx->workspace_lock) == 0) {
        if (ctx->workspace_bytes < bytes) {
            free(ctx->workspace);
            ctx->workspace = aligned(bytes);
            ctx->workspace_bytes = ctx->workspace != NULL ? bytes : 0;
        }
        if (ctx->workspace != NULL) {
            *ws = (nsa_workspace){.data = ctx->workspace, .kept = 1};
            return NSA_SUCCESS;
        }
        pthread_mutex_unlock(&ctx->workspace_lock);
        return NSA_ERROR_OUT_OF_MEMORY;
    }
    ws->data = aligned(bytes);
    return ws->data != NULL ? NSA_SUCCESS : NSA_ERROR_OUT_OF_MEMORY;
}

void nsa_workspace_release(nsa_context *ctx, nsa_workspace *ws)
{
    if (ws->kept)
        pthread_mutex_unlock(&ctx->workspace_lock);
    else
        free(ws->data);
    *ws = (nsa_workspace){0};
}

void nsa_workspace_free_kept(nsa_context *ctx)
{
    free(ctx->workspace);
    ctx->workspace = NULL;
    ctx->workspace_bytes = 0;
}
