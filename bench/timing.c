/* SPDX-License-Identifier: MIT */
/*
 * timing.c — how every number of nsa-bench is timed: a monotonic clock, one
 * warm-up call (page faults, lazily built kernels, cold caches and thread
 * start-up land there), then a fixed number of timed calls, of which the
 * reports show the best or the median. One policy in one place, so that the
 * methods compared in a table were timed alike.
 */
#include <stdlib.h>
#include <time.h>

#include "bench.h"

double bench_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int compare_doubles(const void *a, const void *b)
{
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int bench_time(bench_body *body, void *arg, int repeats, bench_timing *timing)
{
    double *runs = malloc((size_t)(repeats > 0 ? repeats : 1) * sizeof *runs);
    if (runs == NULL)
        return -1;
    double start = bench_now();
    int rc = body(arg);
    timing->warmup = bench_now() - start;
    for (int r = 0; r < repeats && rc == 0; r++) {
        start = bench_now();
        rc = body(arg);
        runs[r] = bench_now() - start;
    }
    if (rc == 0) {
        qsort(runs, (size_t)repeats, sizeof *runs, compare_doubles);
        timing->best = runs[0];
        timing->median = repeats % 2 ? runs[repeats / 2]
                                     : 0.5 * (runs[repeats / 2 - 1] + runs[repeats / 2]);
    }
    free(runs);
    return rc;
}

double bench_timing_pick(const bench_timing *timing, int median)
{
    return median ? timing->median : timing->best;
}
