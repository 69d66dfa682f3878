/* SPDX-License-Identifier: MIT */
/*
 * workers.c — the threads nsa-bench starts itself: for the machine's peak
 * and bandwidth, and for the OpenBLAS baseline when it parallelises over
 * tiles. Each thread is bound to one core with hwloc, the way libnsa binds
 * its workers, so that the methods compared run on the same cores under the
 * same placement. Threads are started per call: a start costs tens of
 * microseconds, nothing next to the work they are timed on.
 */
#include <pthread.h>
#include <stdlib.h>

#include <hwloc.h>

#include "bench.h"

static hwloc_topology_t topology;
static pthread_once_t topology_once = PTHREAD_ONCE_INIT;
static int topology_ok;

static void load_topology(void)
{
    if (hwloc_topology_init(&topology) != 0)
        return;
    if (hwloc_topology_load(topology) != 0) {
        hwloc_topology_destroy(topology);
        return;
    }
    topology_ok = 1;
}

struct hwloc_topology *bench_topology(void)
{
    pthread_once(&topology_once, load_topology);
    return topology_ok ? topology : NULL;
}

void bench_bind_to_core(int index)
{
    hwloc_topology_t t = bench_topology();
    if (t == NULL)
        return;
    int cores = hwloc_get_nbobjs_by_type(t, HWLOC_OBJ_CORE);
    hwloc_obj_t core =
        cores > 0 ? hwloc_get_obj_by_type(t, HWLOC_OBJ_CORE, (unsigned)(index % cores)) : NULL;
    if (core == NULL || core->cpuset == NULL)
        return;
    hwloc_bitmap_t set = hwloc_bitmap_dup(core->cpuset);
    if (set == NULL)
        return;
    hwloc_bitmap_singlify(set); /* one hardware thread of the core */
    (void)hwloc_set_cpubind(t, set, HWLOC_CPUBIND_THREAD);
    hwloc_bitmap_free(set);
}

/* Threads wait at a gate until all have started, and run the task only if
 * all did: a task may then wait for all of them (the peak's barrier). */
typedef struct gate {
    pthread_mutex_t lock;
    pthread_cond_t open;
    int state; /* 0 = closed, 1 = run, -1 = give up */
} gate;

typedef struct worker {
    pthread_t thread;
    int index, count;
    bench_task *fn;
    void *arg;
    gate *gate;
} worker;

static void *worker_main(void *opaque)
{
    worker *w = opaque;
    pthread_mutex_lock(&w->gate->lock);
    while (w->gate->state == 0)
        pthread_cond_wait(&w->gate->open, &w->gate->lock);
    int run = w->gate->state > 0;
    pthread_mutex_unlock(&w->gate->lock);
    if (run) {
        bench_bind_to_core(w->index);
        w->fn(w->arg, w->index, w->count);
    }
    return NULL;
}

int bench_parallel(int count, bench_task *fn, void *arg)
{
    worker *workers = calloc((size_t)count, sizeof *workers);
    if (workers == NULL)
        return -1;
    gate g = {.lock = PTHREAD_MUTEX_INITIALIZER, .open = PTHREAD_COND_INITIALIZER, .state = 0};
    int started = 0;
    for (; started < count; started++) {
        workers[started] = (worker){.index = started, .count = count, .fn = fn, .arg = arg,
                                    .gate = &g};
        if (pthread_create(&workers[started].thread, NULL, worker_main, &workers[started]) != 0)
            break;
    }
    pthread_mutex_lock(&g.lock);
    g.state = started == count ? 1 : -1;
    pthread_cond_broadcast(&g.open);
    pthread_mutex_unlock(&g.lock);
    for (int i = 0; i < started; i++)
        pthread_join(workers[i].thread, NULL);
    free(workers);
    return started == count ? 0 : -1;
}
