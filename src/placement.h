/* SPDX-License-Identifier: MIT */
/*
 * placement.h — which core each worker of the pool runs on. Workers are
 * spread over the NUMA nodes in proportion to the nodes' cores, so that a
 * pool smaller than the machine still draws on every node's memory
 * bandwidth, and each node's workers take its cores in order. Kept apart
 * from the pool so that tests can check it on synthetic topologies.
 */
#ifndef NSA_PLACEMENT_H
#define NSA_PLACEMENT_H

#include <stdint.h>

#include <hwloc.h>

/* core_of[i], i < num_workers: the logical index (hwloc's HWLOC_OBJ_CORE
 * order) of worker i's core. While num_workers <= cores, every worker has
 * its own core and node k gets floor or ceil of num_workers * cores(k) /
 * cores of them (the larger remainders first, then the lower nodes), as
 * workers in node order: worker 0 (the caller) on the first node. Beyond
 * the cores, worker i shares core (i mod cores). Returns 0, or -1 when the
 * topology has no core. */
int nsa_place_workers(hwloc_topology_t topology, int32_t num_workers, int32_t *core_of);

#endif /* NSA_PLACEMENT_H */
