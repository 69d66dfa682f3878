/* SPDX-License-Identifier: MIT */
/*
 * threads.c — a small persistent pthread pool. A call bumps a generation
 * number, every worker runs the call's function once, and the caller waits
 * for the last to finish. Between calls, workers poll the generation for a
 * short while (SPIN_POLLS) before sleeping on a condition variable, and the
 * caller polls the count of running workers before sleeping too: calls that
 * follow each other closely (decode runs four per step) then cost a few
 * microseconds instead of a wake-up of every thread.
 * Threads are bound to cores with hwloc so that memory they first touch
 * stays on their NUMA node and the OS does not migrate them mid-call.
 */
#include <pthread.h>
#include <stdatomic.h>
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
    pthread_mutex_t lock;      /* guards the sleeping below */
    pthread_cond_t wake;       /* generation changed or stopping */
    pthread_cond_t done;       /* remaining reached 0 */
    atomic_uint_fast64_t generation;
    atomic_int remaining;
    atomic_int stopping;
    nsa_pool_task fn; /* written before generation moves, read after */
    void *arg;
};

/* Polls before sleeping: about 20-50 us on current CPUs. */
enum { SPIN_POLLS = 20000 };

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

/* Waits until the generation moves past `seen` (or the pool stops). */
static uint64_t wait_for_call(nsa_pool *pool, uint64_t seen)
{
    for (int i = 0; i < SPIN_POLLS; i++) {
        uint64_t now = atomic_load_explicit(&pool->generation, memory_order_acquire);
        if (now != seen || atomic_load_explicit(&pool->stopping, memory_order_acquire))
            return now;
    }
    pthread_mutex_lock(&pool->lock);
    while (atomic_load(&pool->generation) == seen && !atomic_load(&pool->stopping))
        pthread_cond_wait(&pool->wake, &pool->lock);
    pthread_mutex_unlock(&pool->lock);
    return atomic_load(&pool->generation);
}

static void *worker_main(void *opaque)
{
    worker *self = opaque;
    nsa_pool *pool = self->pool;
    if (pool->bind)
        bind_to_core(pool, self->index);
    uint64_t seen = 0;
    for (;;) {
        seen = wait_for_call(pool, seen);
        if (atomic_load(&pool->stopping))
            break;
        pool->fn(pool->arg, self->index, pool->num_threads);
        if (atomic_fetch_sub_explicit(&pool->remaining, 1, memory_order_acq_rel) == 1) {
            pthread_mutex_lock(&pool->lock); /* the caller may be asleep */
            pthread_cond_signal(&pool->done);
            pthread_mutex_unlock(&pool->lock);
        }
    }
    return NULL;
}

static void stop_workers(nsa_pool *pool, int32_t started)
{
    pthread_mutex_lock(&pool->lock);
    atomic_store(&pool->stopping, 1);
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
    atomic_init(&pool->generation, 0);
    atomic_init(&pool->remaining, 0);
    atomic_init(&pool->stopping, 0);
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
    if (!atomic_load(&pool->stopping))
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
    pool->fn = fn;
    pool->arg = arg;
    atomic_store_explicit(&pool->remaining, pool->num_threads - 1, memory_order_relaxed);
    pthread_mutex_lock(&pool->lock); /* workers may be asleep */
    atomic_fetch_add_explicit(&pool->generation, 1, memory_order_release);
    pthread_cond_broadcast(&pool->wake);
    pthread_mutex_unlock(&pool->lock);

    fn(arg, 0, pool->num_threads);

    int finished = 0;
    for (int i = 0; i < SPIN_POLLS && !finished; i++)
        finished = atomic_load_explicit(&pool->remaining, memory_order_acquire) == 0;
    if (!finished) {
        pthread_mutex_lock(&pool->lock);
        while (atomic_load(&pool->remaining) > 0)
            pthread_cond_wait(&pool->done, &pool->lock);
        pthread_mutex_unlock(&pool->lock);
    }
    pthread_mutex_unlock(&pool->call_lock);
}
