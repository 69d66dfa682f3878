/* SPDX-License-Identifier: MIT */
/*
 * threads.c — a small persistent pthread pool. Workers sleep on a condition
 * variable between calls; a call bumps a generation number, every worker
 * runs the call's function once, and the last to finish wakes the caller.
 * Threads are bound to cores with hwloc so that memory they first touch
 * stays on their NUMA node and the OS does not migrate them mid-call.
 */
#include <pthread.h>
#include <stdlib.h>

#include "threads.h"

typedef struct worker {
    nsa_pool *pool;
    int32_t index;
    pthread_t thread;
} worker;

struct nsa_pool {
    hwloc_topology_t topology;
    int32_t num_threads;
    int bind;
    worker *workers; /* [num_threads]; entry 0 is the caller, no thread */

    pthread_mutex_t call_lock; /* one call at a time */
    pthread_mutex_t lock;      /* guards everything below */
    pthread_cond_t wake;       /* generation changed or stopping */
    pthread_cond_t done;       /* remaining reached 0 */
    uint64_t generation;
    int32_t remaining;
    int stopping;
    nsa_pool_task fn;
    void *arg;
};

static void bind_to_core(nsa_pool *pool, int32_t index)
{
    int cores = hwloc_get_nbobjs_by_type(pool->topology, HWLOC_OBJ_CORE);
    hwloc_obj_t core = cores > 0 ? hwloc_get_obj_by_type(pool->topology, HWLOC_OBJ_CORE,
                                                         (unsigned)(index % cores))
                                 : NULL;
    if (core == NULL || core->cpuset == NULL)
        return;
    hwloc_bitmap_t set = hwloc_bitmap_dup(core->cpuset);
    if (set == NULL)
        return;
    hwloc_bitmap_singlify(set); /* one PU: keep SMT siblings apart */
    /* Best effort: a refused binding only costs locality. */
    (void)hwloc_set_cpubind(pool->topology, set, HWLOC_CPUBIND_THREAD);
    hwloc_bitmap_free(set);
}

static void *worker_main(void *opaque)
{
    worker *self = opaque;
    nsa_pool *pool = self->pool;
    if (pool->bind)
        bind_to_core(pool, self->index);
    uint64_t seen = 0;
    pthread_mutex_lock(&pool->lock);
    for (;;) {
        while (pool->generation == seen && !pool->stopping)
            pthread_cond_wait(&pool->wake, &pool->lock);
        if (pool->stopping)
            break;
        seen = pool->generation;
        nsa_pool_task fn = pool->fn;
        void *arg = pool->arg;
        pthread_mutex_unlock(&pool->lock);
        fn(arg, self->index, pool->num_threads);
        pthread_mutex_lock(&pool->lock);
        if (--pool->remaining == 0)
            pthread_cond_signal(&pool->done);
    }
    pthread_mutex_unlock(&pool->lock);
    return NULL;
}

static void stop_workers(nsa_pool *pool, int32_t started)
{
    pthread_mutex_lock(&pool->lock);
    pool->stopping = 1;
    pthread_cond_broadcast(&pool->wake);
    pthread_mutex_unlock(&pool->lock);
    for (int32_t i = 1; i < started; i++)
        pthread_join(pool->workers[i].thread, NULL);
}

nsa_status nsa_pool_create(hwloc_topology_t topology, int32_t num_threads, int bind,
                           nsa_pool **out)
{
    *out = NULL;
    nsa_pool *pool = calloc(1, sizeof *pool);
    worker *workers = calloc((size_t)num_threads, sizeof *workers);
    if (pool == NULL || workers == NULL) {
        free(pool);
        free(workers);
        return NSA_ERROR_OUT_OF_MEMORY;
    }
    pool->topology = topology;
    pool->num_threads = num_threads;
    pool->bind = bind;
    pool->workers = workers;
    pthread_mutex_init(&pool->call_lock, NULL);
    pthread_mutex_init(&pool->lock, NULL);
    pthread_cond_init(&pool->wake, NULL);
    pthread_cond_init(&pool->done, NULL);
    for (int32_t i = 1; i < num_threads; i++) {
        workers[i] = (worker){.pool = pool, .index = i};
        if (pthread_create(&workers[i].thread, NULL, worker_main, &workers[i]) != 0) {
            stop_workers(pool, i);
            nsa_pool_destroy(pool);
            return NSA_ERROR_SYSTEM;
        }
    }
    *out = pool;
    return NSA_SUCCESS;
}

void nsa_pool_destroy(nsa_pool *pool)
{
    if (pool == NULL)
        return;
    if (!pool->stopping)
        stop_workers(pool, pool->num_threads);
    pthread_cond_destroy(&pool->done);
    pthread_cond_destroy(&pool->wake);
    pthread_mutex_destroy(&pool->lock);
    pthread_mutex_destroy(&pool->call_lock);
    free(pool->workers);
    free(pool);
}

void nsa_pool_run(nsa_pool *pool, nsa_pool_task fn, void *arg)
{
    if (pool->num_threads == 1) {
        fn(arg, 0, 1);
        return;
    }
    pthread_mutex_lock(&pool->call_lock);
    pthread_mutex_lock(&pool->lock);
    pool->fn = fn;
    pool->arg = arg;
    pool->remaining = pool->num_threads - 1;
    pool->generation++;
    pthread_cond_broadcast(&pool->wake);
    pthread_mutex_unlock(&pool->lock);

    fn(arg, 0, pool->num_threads);

    pthread_mutex_lock(&pool->lock);
    while (pool->remaining > 0)
        pthread_cond_wait(&pool->done, &pool->lock);
    pthread_mutex_unlock(&pool->lock);
    pthread_mutex_unlock(&pool->call_lock);
}
