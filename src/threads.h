/* SPDX-License-Identifier: MIT */
/*
 * threads.h — the context's pool of worker threads. A call hands the pool
 * one function that every worker runs once (SPMD style); the function
 * divides its work itself, usually through an nsa_work_queue. The calling
 * thread takes part as worker 0, so a pool of one thread is plain serial
 * code with no thread at all.
 */
#ifndef NSA_THREADS_H
#define NSA_THREADS_H

#include <stdatomic.h>
#include <stdint.h>

#include <hwloc.h>

#include "nsa.h"

typedef struct nsa_pool nsa_pool;

/* Runs on each worker: worker in [0, num_workers). */
typedef void (*nsa_pool_task)(void *arg, int32_t worker, int32_t num_workers);

/* Starts num_threads - 1 threads (the caller is the last one). With bind,
 * worker i is bound to the core nsa_place_workers gives it, and a caller
 * found running on another core than worker 0's is moved there for the
 * call and then given its own binding back (bindings are best effort: a
 * refused one only costs locality). spin_us: how long workers and caller
 * poll after an eager call. Errors: NSA_ERROR_OUT_OF_MEMORY,
 * NSA_ERROR_SYSTEM. */
nsa_status nsa_pool_create(hwloc_topology_t topology, int32_t num_threads, int bind,
                           int32_t spin_us, nsa_pool **pool);
void nsa_pool_destroy(nsa_pool *pool);

/* Runs fn on every worker and returns when all have finished. Calls from
 * several threads at once are serialised: each one uses the whole pool. */
void nsa_pool_run(nsa_pool *pool, nsa_pool_task fn, void *arg);

/* Like nsa_pool_run, for fn whose work any worker may take (a shared
 * queue; work meant for a worker index that the caller, worker 0, takes
 * over when that worker has not come): returns once the caller's fn has
 * returned and every worker that joined has finished, without waiting for
 * workers still waking up (they skip the call). Short calls (a decode
 * step) then do not pay for the slowest wake-up; fn must not rely on every
 * worker index taking part. After an eager call, workers poll for the next
 * call for the pool's spin time. */
void nsa_pool_run_eager(nsa_pool *pool, nsa_pool_task fn, void *arg);

/* A shared counter handing out work items 0, 1, 2, ... in order. Which
 * worker gets an item varies from run to run; results must not depend on it
 * (every item is computed the same way by whoever takes it). */
typedef struct nsa_work_queue {
    atomic_int_fast64_t next;
    int64_t count;
} nsa_work_queue;

static inline void nsa_work_queue_init(nsa_work_queue *queue, int64_t count)
{
    atomic_init(&queue->next, 0);
    queue->count = count;
}

/* The next item, or -1 when none is left. */
static inline int64_t nsa_work_queue_take(nsa_work_queue *queue)
{
    int64_t item = atomic_fetch_add_explicit(&queue->next, 1, memory_order_relaxed);
    return item < queue->count ? item : -1;
}

/* A monotonic clock in nanoseconds (polling deadlines, verbose timings). */
int64_t nsa_now_ns(void);

/* Waits until *count is 0 (read with acquire ordering), spinning at first
 * and then yielding the CPU: for waits on other workers inside one call,
 * which last microseconds. */
void nsa_wait_zero(atomic_int_fast64_t *count);

/* Lowers *count by one with release ordering: the writes made before are
 * visible to whoever nsa_wait_zero sees it reach 0, and to the caller that
 * brings it to 0, which gets 1 back (0 otherwise). */
static inline int nsa_count_down(atomic_int_fast64_t *count)
{
    return atomic_fetch_sub_explicit(count, 1, memory_order_acq_rel) == 1;
}

#endif /* NSA_THREADS_H */
