/* SPDX-License-Identifier: MIT */
/*
 * placement.c — spreading workers over NUMA nodes (placement.h). A core
 * belongs to the first node whose CPU set holds its own; cores of no node
 * (none on real machines) count with the first.
 */
#include <stdlib.h>

#include "placement.h"

static int node_of_core(hwloc_topology_t topology, hwloc_obj_t core, int nodes)
{
    for (int n = 0; n < nodes; n++) {
        hwloc_obj_t node = hwloc_get_obj_by_type(topology, HWLOC_OBJ_NUMANODE, (unsigned)n);
        if (node != NULL && node->cpuset != NULL && core->cpuset != NULL &&
            hwloc_bitmap_isincluded(core->cpuset, node->cpuset))
            return n;
    }
    return 0;
}

int nsa_place_workers(hwloc_topology_t topology, int32_t num_workers, int32_t *core_of)
{
    const int cores = hwloc_get_nbobjs_by_type(topology, HWLOC_OBJ_CORE);
    int nodes = hwloc_get_nbobjs_by_type(topology, HWLOC_OBJ_NUMANODE);
    if (cores <= 0)
        return -1;
    if (nodes < 1)
        nodes = 1;
    if (num_workers >= cores || nodes == 1) {
        for (int32_t i = 0; i < num_workers; i++)
            core_of[i] = i % cores;
        return 0;
    }
    int *node = malloc((size_t)cores * sizeof *node);
    int64_t *count = calloc((size_t)nodes, sizeof *count); /* cores per node */
    int64_t *quota = calloc((size_t)nodes, sizeof *quota); /* workers per node */
    int64_t *rest = calloc((size_t)nodes, sizeof *rest);   /* remainders */
    if (node == NULL || count == NULL || quota == NULL || rest == NULL) {
        free(node);
        free(count);
        free(quota);
        free(rest);
        for (int32_t i = 0; i < num_workers; i++) /* no memory: plain order */
            core_of[i] = i % cores;
        return 0;
    }
    for (int c = 0; c < cores; c++) {
        node[c] = node_of_core(
            topology, hwloc_get_obj_by_type(topology, HWLOC_OBJ_CORE, (unsigned)c), nodes);
        count[node[c]]++;
    }
    int64_t given = 0;
    for (int n = 0; n < nodes; n++) {
        quota[n] = (int64_t)num_workers * count[n] / cores;
        rest[n] = (int64_t)num_workers * count[n] % cores;
        given += quota[n];
    }
    /* Fewer than `nodes` workers are left; each goes to the node with the
     * largest remainder not served yet (the lower node on ties). */
    for (; given < num_workers; given++) {
        int best = -1;
        for (int n = 0; n < nodes; n++)
            if (quota[n] < count[n] && rest[n] >= 0 && (best < 0 || rest[n] > rest[best]))
                best = n;
        if (best < 0) /* cannot happen while num_workers < cores; stay safe */
            for (int n = 0; n < nodes && best < 0; n++)
                if (quota[n] < count[n])
                    best = n;
        quota[best]++;
        rest[best] = -1;
    }
    int32_t next = 0;
    for (int n = 0; n < nodes; n++) {
        int64_t left = quota[n];
        for (int c = 0; c < cores && left > 0; c++)
            if (node[c] == n) {
                core_of[next++] = c;
                left--;
            }
    }
    free(node);
    free(count);
    free(quota);
    free(rest);
    return 0;
}
