/* SPDX-License-Identifier: MIT */
/*
 * threads.c — a small persistent pthread pool. Workers sleep on a condition
 * variable between calls; a call bumps a generation number, every worker
 * runs the call's function once, and the last to finish wakes the caller.
 * Threads are bound to cores with hwloc so that memory they first touch
 * stays on their NUMA node and the OS does not migrate them mid-call.
 * Worker i >= 1 is bound to core i, and a bound pool moves its caller
 * (worker 0) onto core 0 for the call when the scheduler left it on
 * another core: a caller sharing a core with a pinned worker would take
 * turns with it instead of running beside it.
 * An eager call closes when the caller's share is done: workers that wake
 * later see it closed and go back to sleep.
 */
#include <pthread.h>
#include <sched.h>
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
    hwloc_bitmap_t caller_set; /* bound pools: one PU of core 0 */
    hwloc_bitmap_t saved_set;  /* the caller's own binding during a call */

    pthread_mutex_t call_lock; /* one call at a time */
    pthread_mutex_t lock;      /* guards everything below */
    pthread_cond_t wake;       /* generation changed or stopping */
    pthread_cond_t done;       /* active reached 0 */
    uint64_t generation;
    int32_t joined; /* workers that started the current call */
    int32_t active; /* of those, still running it */
    int open;       /* the current call still accepts workers */
    int stopping;
    nsa_pool_task fn;
    void *arg;
};

/* One PU of the core of worker `index` (SMT siblings kept apart), or NULL. */
static hwloc_bitmap_t core_set(nsa_pool *pool, int32_t index)
{
    int cores = hwloc_get_nbobjs_by_type(pool->topology, HWLOC_OBJ_CORE);
    hwloc_obj_t core = cores > 0 ? hwloc_get_obj_by_type(pool->topology, HWLOC_OBJ_CORE,
                                                         (unsigned)(index % cores))
                                 : NULL;
    if (core == NULL || core->cpuset == NULL)
        return NULL;
    hwloc_bitmap_t set = hwloc_bitmap_dup(core->cpuset);
    if (set != NULL)
        hwloc_bitmap_singlify(set);
    return set;
}

static void bind_to_core(nsa_pool *pool, int32_t index)
{
    hwloc_bitmap_t set = core_set(pool, index);
    if (set == NULL)
        return;
    /* Best effort: a refused binding only costs locality. */
    (void)hwloc_set_cpubind(pool->topology, set, HWLOC_CPUBIND_THREAD);
    hwloc_bitmap_free(set);
}

/* Moves the caller onto core 0 unless it runs there; returns 1 when it
 * did, with the caller's own binding in saved_set. sched_getcpu is a vDSO
 * read, so a caller already in place pays no system call. */
static int caller_enter(nsa_pool *pool)
{
    if (pool->caller_set == NULL || pool->saved_set == NULL)
        return 0;
    int cpu = sched_getcpu();
    if (cpu >= 0 && hwloc_bitmap_isset(pool->caller_set, (unsigned)cpu))
        return 0;
    if (hwloc_get_cpubind(pool->topology, pool->saved_set, HWLOC_CPUBIND_THREAD) != 0)
        return 0;
    return hwloc_set_cpubind(pool->topology, pool->caller_set, HWLOC_CPUBIND_THREAD) == 0;
}

static void caller_leave(nsa_pool *pool, int moved)
{
    if (moved)
        (void)hwloc_set_cpubind(pool->topology, pool->saved_set, HWLOC_CPUBIND_THREAD);
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
        if (!pool->open)
            continue; /* an eager call that ended before this worker woke */
        pool->joined++;
        pool->active++;
        nsa_pool_task fn = pool->fn;
        void *arg = pool->arg;
        pthread_mutex_unlock(&pool->lock);
        fn(arg, self->index, pool->num_threads);
        pthread_mutex_lock(&pool->lock);
        if (--pool->active == 0)
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
    if (bind && num_threads > 1) {
        pool->caller_set = core_set(pool, 0);
        pool->saved_set = hwloc_bitmap_alloc();
    }
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
    if (pool->caller_set != NULL)
        hwloc_bitmap_free(pool->caller_set);
    if (pool->saved_set != NULL)
        hwloc_bitmap_free(pool->saved_set);
    free(pool->workers);
    free(pool);
}

static void run(nsa_pool *pool, nsa_pool_task fn, void *arg, int eager)
{
    if (pool->num_threads == 1) {
        fn(arg, 0, 1);
        return;
    }
    const int32_t workers = pool->num_threads - 1;
    pthread_mutex_lock(&pool->call_lock);
    const int moved = caller_enter(pool);
    pthread_mutex_lock(&pool->lock);
    pool->fn = fn;
    pool->arg = arg;
    pool->joined = 0;
    pool->active = 0;
    pool->open = 1;
    pool->generation++;
    pthread_cond_broadcast(&pool->wake);
    pthread_mutex_unlock(&pool->lock);

    fn(arg, 0, pool->num_threads);

    pthread_mutex_lock(&pool->lock);
    if (eager)
        pool->open = 0;
    while (pool->active > 0 || (!eager && pool->joined < workers))
        pthread_cond_wait(&pool->done, &pool->lock);
    pool->open = 0;
    pthread_mutex_unlock(&pool->lock);
    caller_leave(pool, moved);
    pthread_mutex_unlock(&pool->call_lock);
}

void nsa_pool_run(nsa_pool *pool, nsa_pool_task fn, void *arg)
{
    run(pool, fn, arg, 0);
}

void nsa_pool_run_eager(nsa_pool *pool, nsa_pool_task fn, void *arg)
{
    run(pool, fn, arg, 1);
}

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield" ::: "memory");
#endif
}

void nsa_wait_zero(atomic_int_fast64_t *count)
{
    /* ~10-50 us of pauses (a pause is 10-140 cycles), then give the CPU to whoever we wait for: more
     * threads than CPUs must not spin against the worker they wait on. */
    for (int spins = 0; atomic_load_explicit(count, memory_order_acquire) != 0; spins++) {
        if (spins < 1024)
            cpu_relax();
        else
            sched_yield();
    }
}
