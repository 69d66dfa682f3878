/* SPDX-License-Identifier: MIT */
/*
 * threads.c — a small persistent pthread pool. A call bumps a generation
 * number and every worker runs the call's function once (an eager call:
 * every worker that comes before it closes).
 *
 * Waiting: after an eager call (a short one, such as a decode step) a
 * worker polls for the next generation for a while (the spin time: such
 * calls come back to back, and waking a sleeping thread costs tens of
 * microseconds on virtual machines) before it sleeps on a condition
 * variable, and the caller polls for its workers the same way. After a long
 * call they sleep at once: a thread polling beside a busy SMT sibling slows
 * it down (measured: the 64K forward ran 3-4 % slower with polling after
 * every call). An eager call closes when the caller's share is done:
 * workers that wake later see it closed and go back to sleep.
 *
 * Joining: a worker announces the call it joins in a slot of its own (one
 * cache line per worker) and then looks whether the call is still open;
 * the caller closes an eager call and then waits for the workers whose
 * slots name it. A shared count of active workers, raised by every worker
 * at the start of a call, made the last of 16 workers start ~1.7 us after
 * the first on the Emerald Rapids host: the raises queued on one line.
 *
 * Placement: workers are bound with hwloc to the cores placement.c picks
 * (spread over the NUMA nodes, a core each while there are enough), so
 * that memory they first touch stays on their node and the OS does not
 * migrate them mid-call. The caller is worker 0: a bound pool moves it onto
 * worker 0's core for the call when the scheduler left it elsewhere (a
 * caller sharing a core with a pinned worker would take turns with it
 * instead of running beside it), and gives it its own binding back after.
 */
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>

#include "placement.h"
#include "threads.h"

typedef struct worker {
    nsa_pool *pool;
    int32_t index;
    pthread_t thread;
} worker;

/* A worker's join slot: the last call it announced joining, and the last
 * it is done with (ran, or found closed). Alone on its cache line. */
typedef struct join_slot {
    _Alignas(64) atomic_uint_fast64_t joined;
    atomic_uint_fast64_t left;
} join_slot;

struct nsa_pool {
    hwloc_topology_t topology;
    int32_t num_threads;
    int bind;
    int64_t spin_ns; /* how long an idle worker or a waiting caller polls */
    worker *workers; /* [num_threads]; entry 0 is the caller, no thread */
    int32_t *core_of; /* bound pools: each worker's core (placement.h) */
    hwloc_bitmap_t caller_set; /* bound pools: one PU of core 0 */
    hwloc_bitmap_t saved_set;  /* the caller's own binding during a call */

    pthread_mutex_t call_lock; /* one call at a time */
    /* The current call: state = generation << 1 | open (the call still
     * accepts workers), one word so that the two are read together; fn
     * and arg are written before the state that opens their call. A worker
     * joins by announcing the call in its slot and then finding the state
     * open. */
    atomic_uint_fast64_t state;
    join_slot *slots;   /* [num_threads]; entry 0 unused */
    atomic_int pending; /* plain calls: workers yet to finish it */
    atomic_int caller_waiting; /* the caller sleeps on done (eager calls) */
    int eager;
    nsa_pool_task fn;
    void *arg;
    atomic_int stopping;

    pthread_mutex_t lock; /* for sleeping only */
    pthread_cond_t wake;  /* a new generation, or stopping */
    pthread_cond_t done;  /* the caller may find its call complete */
    atomic_int sleepers;  /* workers in (or entering) the wake wait */
};

int64_t nsa_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield" ::: "memory");
#endif
}

/* One PU of the core of worker `index` (SMT siblings kept apart), or NULL. */
static hwloc_bitmap_t core_set(nsa_pool *pool, int32_t index)
{
    if (pool->core_of == NULL)
        return NULL;
    hwloc_obj_t core =
        hwloc_get_obj_by_type(pool->topology, HWLOC_OBJ_CORE, (unsigned)pool->core_of[index]);
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

static uint64_t generation(nsa_pool *pool)
{
    return atomic_load(&pool->state) >> 1;
}

/* Polls for a generation other than seen for spin_ns, then sleeps until
 * one comes; returns 0 when the pool is stopping. */
static int wait_for_call(nsa_pool *pool, uint64_t seen, int64_t spin_ns)
{
    const int64_t deadline = spin_ns > 0 ? nsa_now_ns() + spin_ns : 0;
    for (int spins = 1; spin_ns > 0; spins++) {
        if (generation(pool) != seen || atomic_load(&pool->stopping))
            return !atomic_load(&pool->stopping);
        cpu_relax();
        if (spins % 64 == 0 && nsa_now_ns() > deadline)
            break;
    }
    pthread_mutex_lock(&pool->lock);
    atomic_fetch_add(&pool->sleepers, 1);
    while (generation(pool) == seen && !atomic_load(&pool->stopping))
        pthread_cond_wait(&pool->wake, &pool->lock);
    atomic_fetch_sub(&pool->sleepers, 1);
    pthread_mutex_unlock(&pool->lock);
    return !atomic_load(&pool->stopping);
}

static void signal_done(nsa_pool *pool)
{
    pthread_mutex_lock(&pool->lock);
    pthread_cond_signal(&pool->done);
    pthread_mutex_unlock(&pool->lock);
}

static void *worker_main(void *opaque)
{
    worker *self = opaque;
    nsa_pool *pool = self->pool;
    if (pool->bind)
        bind_to_core(pool, self->index);
    uint64_t seen = 0;
    int64_t spin_ns = 0; /* poll only after an eager (short) call */
    join_slot *slot = &pool->slots[self->index];
    while (wait_for_call(pool, seen, spin_ns)) {
        seen = generation(pool);
        /* Announce, then look (both sequentially consistent): either the
         * caller, closing, sees the announcement and waits for us, or we
         * see the call closed (or a later one) and skip it. */
        atomic_store(&slot->joined, seen);
        /* Not open: an eager call that ended before we came (a plain call
         * stays open until every worker has run it). */
        const int joined = atomic_load(&pool->state) == (seen << 1 | 1);
        const int eager = !joined || pool->eager;
        spin_ns = joined && eager ? pool->spin_ns : 0;
        if (joined)
            pool->fn(pool->arg, self->index, pool->num_threads);
        atomic_store(&slot->left, seen);
        const int last_pending = !eager && atomic_fetch_sub(&pool->pending, 1) == 1;
        if (last_pending || (eager && atomic_load(&pool->caller_waiting)))
            signal_done(pool);
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
                           int32_t spin_us, nsa_pool **out)
{
    *out = NULL;
    nsa_pool *pool = calloc(1, sizeof *pool);
    worker *workers = calloc((size_t)num_threads, sizeof *workers);
    join_slot *slots = aligned_alloc(_Alignof(join_slot), (size_t)num_threads * sizeof *slots);
    if (pool == NULL || workers == NULL || slots == NULL) {
        free(pool);
        free(workers);
        free(slots);
        return NSA_ERROR_OUT_OF_MEMORY;
    }
    for (int32_t i = 0; i < num_threads; i++) {
        atomic_init(&slots[i].joined, 0);
        atomic_init(&slots[i].left, 0);
    }
    pool->slots = slots;
    pool->topology = topology;
    pool->num_threads = num_threads;
    pool->bind = bind;
    pool->spin_ns = (int64_t)spin_us * 1000;
    pool->workers = workers;
    if (bind && num_threads > 1) {
        pool->core_of = malloc((size_t)num_threads * sizeof *pool->core_of);
        if (pool->core_of != NULL && nsa_place_workers(topology, num_threads, pool->core_of) != 0) {
            free(pool->core_of); /* no cores known: leave placement to the OS */
            pool->core_of = NULL;
        }
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
    if (!atomic_load(&pool->stopping))
        stop_workers(pool, pool->num_threads);
    pthread_cond_destroy(&pool->done);
    pthread_cond_destroy(&pool->wake);
    pthread_mutex_destroy(&pool->lock);
    pthread_mutex_destroy(&pool->call_lock);
    if (pool->caller_set != NULL)
        hwloc_bitmap_free(pool->caller_set);
    if (pool->saved_set != NULL)
        hwloc_bitmap_free(pool->saved_set);
    free(pool->core_of);
    free(pool->workers);
    free(pool->slots);
    free(pool);
}

/* Whether call `call` is over: a plain call when every worker has run it,
 * an eager (closed) one when every worker that joined it is done. */
static int call_complete(nsa_pool *pool, uint64_t call, int eager)
{
    if (!eager)
        return atomic_load(&pool->pending) == 0;
    for (int32_t i = 1; i < pool->num_threads; i++)
        if (atomic_load(&pool->slots[i].joined) == call &&
            atomic_load(&pool->slots[i].left) != call)
            return 0;
    return 1;
}

static void run(nsa_pool *pool, nsa_pool_task fn, void *arg, int eager)
{
    if (pool->num_threads == 1) {
        fn(arg, 0, 1);
        return;
    }
    pthread_mutex_lock(&pool->call_lock);
    pool->fn = fn;
    pool->arg = arg;
    pool->eager = eager;
    atomic_store(&pool->pending, pool->num_threads - 1);
    const uint64_t call = generation(pool) + 1;
    atomic_store(&pool->state, call << 1 | 1);
    if (atomic_load(&pool->sleepers) > 0) {
        pthread_mutex_lock(&pool->lock);
        pthread_cond_broadcast(&pool->wake);
        pthread_mutex_unlock(&pool->lock);
    }
    /* After the workers may start: a move costs system calls they need not
     * wait for. */
    const int moved = caller_enter(pool);

    fn(arg, 0, pool->num_threads);

    if (eager)
        atomic_store(&pool->state, call << 1); /* closed: no worker joins now */
    const int64_t deadline = nsa_now_ns() + (eager ? pool->spin_ns : 0);
    for (int spins = 1; !call_complete(pool, call, eager); spins++) {
        cpu_relax();
        if (spins % 64 == 0 && nsa_now_ns() > deadline) {
            /* Workers that finish after seeing caller_waiting signal done;
             * one that saw it 0 finished before the check below. */
            pthread_mutex_lock(&pool->lock);
            atomic_store(&pool->caller_waiting, 1);
            while (!call_complete(pool, call, eager))
                pthread_cond_wait(&pool->done, &pool->lock);
            atomic_store(&pool->caller_waiting, 0);
            pthread_mutex_unlock(&pool->lock);
        }
    }
    atomic_store(&pool->state, call << 1);
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
