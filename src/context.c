/* SPDX-License-Identifier: MIT */
/*
 * context.c — creating and destroying the process-lifetime state: the hwloc
 * topology (used to size and bind the thread pool) and the settings read from
 * the options or, failing that, from the environment (NSA_NUM_THREADS,
 * NSA_VERBOSE). The environment is read here once, never on a hot path.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "context.h"
#include "cpu_features.h"
#include "workspace.h"

enum { NSA_MAX_SPIN_US = 1000000 };

void nsa_context_options_init(nsa_context_options *opts)
{
    if (opts == NULL)
        return;
    opts->num_threads = 0;
    opts->bind_threads = 1;
    opts->spin_us = -1;
    opts->max_isa = -1;
    opts->verbose = -1;
}

/* The largest NSA_NUM_THREADS and NSA_VERBOSE read. */
enum { MAX_ENV_COUNT = 4096 };

/* The environment variable `name` as an integer in [0, max], or fallback
 * when it is unset or not such a number. */
static int32_t env_int(const char *name, int32_t max, int32_t fallback)
{
    const char *text = getenv(name);
    if (text == NULL || *text == '\0')
        return fallback;
    char *end;
    errno = 0;
    long value = strtol(text, &end, 10);
    if (errno != 0 || *end != '\0' || value < 0 || value > max)
        return fallback;
    return (int32_t)value;
}

/* The best ISA the host supports at or below the cap: the option, else
 * NSA_MAX_ISA, else none. -1 for an unknown NSA_MAX_ISA. */
static int choose_isa(int32_t max_isa)
{
    if (max_isa < 0) {
        const char *text = getenv("NSA_MAX_ISA");
        max_isa = text != NULL && *text != '\0' ? nsa_isa_parse(text) : NSA_ISA_LAST;
        if (max_isa < 0)
            return -1;
    }
    for (int isa = max_isa; isa > NSA_ISA_REF; isa--)
        if (nsa_host_supports((nsa_isa)isa))
            return isa;
    return NSA_ISA_REF;
}

static int32_t count_cores(hwloc_topology_t topology)
{
    int cores = hwloc_get_nbobjs_by_type(topology, HWLOC_OBJ_CORE);
    if (cores <= 0)
        cores = hwloc_get_nbobjs_by_type(topology, HWLOC_OBJ_PU);
    return cores > 0 ? cores : 1;
}

nsa_status nsa_context_create(const nsa_context_options *opts, nsa_context **ctx)
{
    if (ctx == NULL)
        return NSA_ERROR_NULL_POINTER;
    *ctx = NULL;
    nsa_context_options defaults;
    nsa_context_options_init(&defaults);
    if (opts == NULL)
        opts = &defaults;
    if (opts->num_threads < 0 || (opts->bind_threads != 0 && opts->bind_threads != 1) ||
        opts->max_isa < -1 || opts->max_isa > NSA_ISA_LAST || opts->spin_us < -1 ||
        opts->spin_us > NSA_MAX_SPIN_US)
        return NSA_ERROR_INVALID_ARGUMENT;
    int isa = choose_isa(opts->max_isa);
    if (isa < 0)
        return NSA_ERROR_INVALID_ARGUMENT;

    nsa_context *c = calloc(1, sizeof *c);
    if (c == NULL)
        return NSA_ERROR_OUT_OF_MEMORY;
    if (pthread_mutex_init(&c->error_lock, NULL) != 0) {
        free(c);
        return NSA_ERROR_SYSTEM;
    }
    if (pthread_mutex_init(&c->workspace_lock, NULL) != 0) {
        pthread_mutex_destroy(&c->error_lock);
        free(c);
        return NSA_ERROR_SYSTEM;
    }
    if (hwloc_topology_init(&c->topology) != 0 || hwloc_topology_load(c->topology) != 0) {
        if (c->topology != NULL)
            hwloc_topology_destroy(c->topology);
        pthread_mutex_destroy(&c->workspace_lock);
        pthread_mutex_destroy(&c->error_lock);
        free(c);
        return NSA_ERROR_SYSTEM;
    }

    c->isa = (nsa_isa)isa;
    c->verbose = opts->verbose >= 0 ? (opts->verbose > 0) : (env_int("NSA_VERBOSE", MAX_ENV_COUNT, 0) > 0);
    c->split_keys = env_int("NSA_SPLIT_KEYS", 1, 0);
    c->selected_on_tiles = env_int("NSA_SELECTED_ON_TILES", 1, NSA_SELECTED_ON_TILES);
    c->num_threads = opts->num_threads;
    if (c->num_threads == 0)
        c->num_threads = env_int("NSA_NUM_THREADS", MAX_ENV_COUNT, 0);
    if (c->num_threads == 0)
        c->num_threads = count_cores(c->topology);

    const int32_t spin_us = opts->spin_us >= 0
                                ? opts->spin_us
                                : env_int("NSA_SPIN_US", NSA_MAX_SPIN_US, NSA_DEFAULT_SPIN_US);
    nsa_status status =
        nsa_pool_create(c->topology, c->num_threads, opts->bind_threads, spin_us, &c->pool);
    if (status != NSA_SUCCESS) {
        nsa_context_destroy(c);
        return status;
    }
    nsa_log(c,
            "libnsa %s: context with %d threads (%d cores), %s, polling %d us; isa %s (host "
            "best %s)",
            NSA_VERSION_STRING, (int)c->num_threads, (int)count_cores(c->topology),
            opts->bind_threads ? "bound to cores" : "unbound", (int)spin_us, nsa_isa_name(c->isa),
            nsa_isa_name(nsa_host_isa()));
    *ctx = c;
    return NSA_SUCCESS;
}

void nsa_context_destroy(nsa_context *ctx)
{
    if (ctx == NULL)
        return;
    nsa_pool_destroy(ctx->pool);
    hwloc_topology_destroy(ctx->topology);
    nsa_workspace_free_kept(ctx);
    pthread_mutex_destroy(&ctx->workspace_lock);
    pthread_mutex_destroy(&ctx->error_lock);
    free(ctx);
}

const char *nsa_context_last_error(const nsa_context *ctx)
{
    return ctx == NULL ? "" : ctx->last_error;
}

int32_t nsa_context_num_threads(const nsa_context *ctx)
{
    return ctx == NULL ? 1 : ctx->num_threads;
}

nsa_isa nsa_context_isa(const nsa_context *ctx)
{
    return ctx == NULL ? NSA_ISA_REF : ctx->isa;
}
