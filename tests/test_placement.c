/* SPDX-License-Identifier: MIT */
/*
 * test_placement.c — the NUMA logic on hwloc synthetic topologies (every
 * machine here has one node): workers spread over the nodes in proportion
 * to their cores, one core each while there are enough, in node order
 * from the first node; beyond the cores they wrap around. And a bound pool
 * built on such a topology (its bindings refused: the topology is not this
 * machine) still runs every worker, plain and eager calls alike; an eager
 * call returns only after every worker that joined it is done, and no
 * worker starts it after that, with workers polling or asleep between
 * calls.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "placement.h"
#include "threads.h"

static hwloc_topology_t synthetic(const char *description)
{
    hwloc_topology_t topology;
    assert_int_equal(hwloc_topology_init(&topology), 0);
    assert_int_equal(hwloc_topology_set_synthetic(topology, description), 0);
    assert_int_equal(hwloc_topology_load(topology), 0);
    return topology;
}

/* The NUMA node (index) holding core c. */
static int node_of(hwloc_topology_t topology, int32_t c)
{
    hwloc_obj_t core = hwloc_get_obj_by_type(topology, HWLOC_OBJ_CORE, (unsigned)c);
    const int nodes = hwloc_get_nbobjs_by_type(topology, HWLOC_OBJ_NUMANODE);
    for (int n = 0; n < nodes; n++)
        if (hwloc_bitmap_isincluded(core->cpuset,
                                    hwloc_get_obj_by_type(topology, HWLOC_OBJ_NUMANODE,
                                                          (unsigned)n)->cpuset))
            return n;
    fail_msg("core %d is in no node", (int)c);
    return -1;
}

typedef struct placement_case {
    const char *topology;
    int32_t workers;
    int32_t per_node[4]; /* expected workers per node, while workers <= cores */
} placement_case;

static void test_workers_spread_over_nodes(void **state)
{
    (void)state;
    const placement_case cases[] = {
        {"pack:2 numa:1 core:4 pu:2", 1, {1, 0}},
        {"pack:2 numa:1 core:4 pu:2", 2, {1, 1}},
        {"pack:2 numa:1 core:4 pu:2", 3, {2, 1}},
        {"pack:2 numa:1 core:4 pu:2", 8, {4, 4}},
        {"pack:2 numa:2 core:3 pu:2", 5, {2, 1, 1, 1}},
        {"pack:2 numa:2 core:3 pu:2", 11, {3, 3, 3, 2}},
        {"numa:2 core:3 pu:1", 4, {2, 2}},
        {"core:4 pu:2", 3, {3}},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const placement_case *c = &cases[i];
        hwloc_topology_t topology = synthetic(c->topology);
        const int cores = hwloc_get_nbobjs_by_type(topology, HWLOC_OBJ_CORE);
        int32_t core_of[64];
        assert_int_equal(nsa_place_workers(topology, c->workers, core_of), 0);
        int32_t per_node[4] = {0}, used[64] = {0};
        int last_node = 0;
        for (int32_t w = 0; w < c->workers; w++) {
            assert_in_range(core_of[w], 0, cores - 1);
            assert_int_equal(used[core_of[w]]++, 0); /* a core each */
            const int n = node_of(topology, core_of[w]);
            assert_true(n >= last_node); /* in node order */
            last_node = n;
            per_node[n]++;
        }
        assert_memory_equal(per_node, c->per_node, sizeof per_node);
        hwloc_topology_destroy(topology);
    }
}

static void test_workers_beyond_the_cores_wrap(void **state)
{
    (void)state;
    hwloc_topology_t topology = synthetic("pack:2 numa:1 core:4 pu:2");
    int32_t core_of[20];
    assert_int_equal(nsa_place_workers(topology, 20, core_of), 0);
    for (int32_t w = 0; w < 20; w++)
        assert_int_equal(core_of[w], w % 8);
    hwloc_topology_destroy(topology);
}

typedef struct tally {
    atomic_int ran;
    int seen[16];
} tally;

static void count_worker(void *arg, int32_t worker, int32_t num_workers)
{
    tally *t = arg;
    assert_true(worker >= 0 && worker < num_workers);
    t->seen[worker] = 1;
    atomic_fetch_add(&t->ran, 1);
}

static void queue_worker(void *arg, int32_t worker, int32_t num_workers)
{
    nsa_work_queue *queue = ((void **)arg)[0];
    atomic_int *done = ((void **)arg)[1];
    (void)worker;
    (void)num_workers;
    while (nsa_work_queue_take(queue) >= 0)
        atomic_fetch_add(done, 1);
}

static void test_bound_pool_on_synthetic_topology_runs_all(void **state)
{
    (void)state;
    hwloc_topology_t topology = synthetic("pack:2 numa:1 core:4 pu:2");
    nsa_pool *pool = NULL;
    assert_int_equal(nsa_pool_create(topology, 5, 1, 50, &pool), NSA_SUCCESS);
    for (int call = 0; call < 50; call++) {
        tally t = {0};
        atomic_init(&t.ran, 0);
        nsa_pool_run(pool, count_worker, &t);
        assert_int_equal(atomic_load(&t.ran), 5); /* plain calls: every worker */
        for (int w = 0; w < 5; w++)
            assert_int_equal(t.seen[w], 1);
        nsa_work_queue queue;
        atomic_int done;
        atomic_init(&done, 0);
        nsa_work_queue_init(&queue, 1000);
        void *args[2] = {&queue, &done};
        nsa_pool_run_eager(pool, queue_worker, args);
        assert_int_equal(atomic_load(&done), 1000); /* eager calls: every item */
    }
    nsa_pool_destroy(pool);
    hwloc_topology_destroy(topology);
}

typedef struct eager_trace {
    int call;
    atomic_int started[8], finished[8];
} eager_trace;

static void busy_ns(int64_t ns)
{
    const int64_t end = nsa_now_ns() + ns;
    while (nsa_now_ns() < end) {
    }
}

/* Marks the start and the end of its share, some microseconds apart. */
static void traced_worker(void *arg, int32_t worker, int32_t num_workers)
{
    eager_trace *t = arg;
    (void)num_workers;
    atomic_store(&t->started[worker], t->call);
    busy_ns(1000 * ((t->call + worker) % 7)); /* 0 .. 6 us */
    atomic_store(&t->finished[worker], t->call);
}

static void test_eager_call_returns_after_its_workers(void **state)
{
    (void)state;
    hwloc_topology_t topology = synthetic("pack:1 numa:1 core:4 pu:2");
    for (int spin_us = 0; spin_us <= 50; spin_us += 50) { /* asleep, polling */
        nsa_pool *pool = NULL;
        assert_int_equal(nsa_pool_create(topology, 8, 1, spin_us, &pool), NSA_SUCCESS);
        eager_trace t = {0};
        for (int w = 0; w < 8; w++) {
            atomic_init(&t.started[w], 0);
            atomic_init(&t.finished[w], 0);
        }
        for (t.call = 1; t.call <= 300; t.call++) {
            nsa_pool_run_eager(pool, traced_worker, &t);
            int started[8];
            for (int w = 0; w < 8; w++) {
                started[w] = atomic_load(&t.started[w]);
                if (started[w] == t.call)
                    assert_int_equal(atomic_load(&t.finished[w]), t.call);
            }
            assert_int_equal(started[0], t.call); /* the caller always runs */
            if (t.call % 50 == 0) { /* late workers must not start it now */
                busy_ns(200000);
                for (int w = 0; w < 8; w++)
                    assert_int_equal(atomic_load(&t.started[w]), started[w]);
            }
        }
        nsa_pool_destroy(pool);
    }
    hwloc_topology_destroy(topology);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_workers_spread_over_nodes),
        cmocka_unit_test(test_workers_beyond_the_cores_wrap),
        cmocka_unit_test(test_bound_pool_on_synthetic_topology_runs_all),
        cmocka_unit_test(test_eager_call_returns_after_its_workers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
