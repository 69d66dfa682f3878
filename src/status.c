/* SPDX-License-Identifier: MIT */
/*
 * status.c — status names, the per-context error message and verbose lines.
 * Errors are values: every entry point returns an nsa_status, and the
 * message stored here says which argument was wrong and why.
 */
#include <stdarg.h>
#include <stdio.h>

#include "context.h"

const char *nsa_status_string(nsa_status status)
{
    switch (status) {
    case NSA_SUCCESS: return "success";
    case NSA_ERROR_NULL_POINTER: return "a required pointer is NULL";
    case NSA_ERROR_INVALID_DIMENSION: return "a size or count is not positive";
    case NSA_ERROR_INVALID_HEADS: return "num_q_heads is not a multiple of num_kv_heads";
    case NSA_ERROR_INVALID_BLOCKS: return "invalid block geometry";
    case NSA_ERROR_INVALID_SELECTION: return "invalid selection counts";
    case NSA_ERROR_INVALID_SEQLENS: return "invalid cu_seqlens";
    case NSA_ERROR_INVALID_INDICES: return "invalid block indices";
    case NSA_ERROR_INVALID_ARGUMENT: return "invalid argument";
    case NSA_ERROR_SIZE_OVERFLOW: return "size overflow";
    case NSA_ERROR_OUT_OF_MEMORY: return "out of memory";
    case NSA_ERROR_UNSUPPORTED: return "unsupported";
    case NSA_ERROR_SYSTEM: return "system error";
    case NSA_ERROR_INTERNAL: return "internal error";
    case NSA_ERROR_CAPACITY: return "the cache is full";
    case NSA_ERROR_MISMATCH: return "the cache does not fit the plan";
    }
    return "unknown status";
}

const char *nsa_version(void)
{
    return NSA_VERSION_STRING;
}

nsa_status nsa_fail(nsa_context *ctx, nsa_status status, const char *fmt, ...)
{
    if (ctx == NULL)
        return status;
    va_list args;
    va_start(args, fmt);
    pthread_mutex_lock(&ctx->error_lock);
    vsnprintf(ctx->last_error, sizeof ctx->last_error, fmt, args);
    pthread_mutex_unlock(&ctx->error_lock);
    va_end(args);
    if (ctx->verbose)
        fprintf(stderr, "nsa: error: %s: %s\n", nsa_status_string(status), ctx->last_error);
    return status;
}

void nsa_log(const nsa_context *ctx, const char *fmt, ...)
{
    if (ctx == NULL || !ctx->verbose)
        return;
    va_list args;
    va_start(args, fmt);
    fputs("nsa: ", stderr);
    vfprintf(stderr, fmt, args);
    fputc('\n', stderr);
    va_end(args);
}
