/* SPDX-License-Identifier: MIT */
/*
 * machine-peak.c — what the machine itself can do, measured rather than
 * looked up, so that "% of peak" means something on whatever VM slice the
 * benchmark runs: the FMA peak of each instruction set (the register-
 * resident loops of peak-<isa>.c on all the run's threads at once, so
 * all-core clocks and AVX-512 frequency licences are included) and the
 * streaming read bandwidth of a buffer several times the last-level cache.
 * Also describes the CPU (model, cores, caches) from hwloc for the reports.
 */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hwloc.h>

#include "bench.h"
#include "cpu_features.h"

void bench_machine_describe(bench_machine *m)
{
    *m = (bench_machine){.cores = 1, .pus = 1};
    snprintf(m->cpu, sizeof m->cpu, "unknown CPU");
    for (int isa = NSA_ISA_REF; isa <= NSA_ISA_LAST; isa++)
        m->isa_supported[isa] = nsa_host_supports((nsa_isa)isa);
    hwloc_topology_t t = bench_topology();
    if (t == NULL)
        return;
    int cores = hwloc_get_nbobjs_by_type(t, HWLOC_OBJ_CORE);
    int pus = hwloc_get_nbobjs_by_type(t, HWLOC_OBJ_PU);
    m->cores = cores > 0 ? cores : 1;
    m->pus = pus > 0 ? pus : m->cores;
    hwloc_obj_t package = hwloc_get_obj_by_type(t, HWLOC_OBJ_PACKAGE, 0);
    const char *model = package != NULL ? hwloc_obj_get_info_by_name(package, "CPUModel") : NULL;
    if (model != NULL)
        snprintf(m->cpu, sizeof m->cpu, "%s", model);
    const hwloc_obj_type_t levels[3] = {HWLOC_OBJ_L1CACHE, HWLOC_OBJ_L2CACHE, HWLOC_OBJ_L3CACHE};
    uint64_t *sizes[3] = {&m->l1d, &m->l2, &m->l3};
    for (int i = 0; i < 3; i++) {
        hwloc_obj_t cache = hwloc_get_obj_by_type(t, levels[i], 0);
        if (cache != NULL && cache->attr != NULL)
            *sizes[i] = cache->attr->cache.size;
    }
    int l3 = hwloc_get_nbobjs_by_type(t, HWLOC_OBJ_L3CACHE);
    m->l3_count = l3 > 0 ? l3 : 0;
}

double bench_loadavg(void)
{
    FILE *f = fopen("/proc/loadavg", "r");
    double load = NAN;
    if (f != NULL) {
        if (fscanf(f, "%lf", &load) != 1)
            load = NAN;
        fclose(f);
    }
    return load;
}

const char *bench_peak_label(nsa_isa isa)
{
    switch (isa) {
    case NSA_ISA_AVX512: return "avx512 FMA, 16 lanes";
    case NSA_ISA_AMX: return "avx512 FMA, 16 lanes (fp32; the bf16 tiles are not counted)";
    case NSA_ISA_AVX2: return "avx2 FMA, 8 lanes";
#if defined(__aarch64__)
    case NSA_ISA_NEON: return "neon FMA, 4 lanes";
    case NSA_ISA_REF: return "baseline: neon FMA, 4 lanes";
#else
    case NSA_ISA_NEON: return "neon (not this target)";
    case NSA_ISA_REF: return "baseline: 4-lane mul + add (SSE2)";
#endif
    }
    return "?";
}

typedef double loop_fn(uint64_t iters);

static loop_fn *loop_for(nsa_isa isa)
{
    if (!nsa_host_supports(isa))
        return NULL;
    switch (isa) {
#if defined(NSA_HAVE_AVX512)
    case NSA_ISA_AVX512: return bench_fma_loop_avx512;
    case NSA_ISA_AMX: return bench_fma_loop_avx512;
#endif
#if defined(NSA_HAVE_AVX2)
    case NSA_ISA_AVX2: return bench_fma_loop_avx2;
#endif
    case NSA_ISA_REF: return bench_fma_loop_base;
#if defined(__aarch64__)
    case NSA_ISA_NEON: return bench_fma_loop_base;
#endif
    default: return NULL;
    }
}

/* All threads start together after a barrier; the span from the first
 * start to the last end is the time of the whole machine's work. */
typedef struct timed_threads {
    pthread_barrier_t barrier;
    double *start, *end, *work; /* per thread */
} timed_threads;

static int timed_init(timed_threads *tt, int threads)
{
    tt->start = calloc((size_t)threads * 3, sizeof *tt->start);
    if (tt->start == NULL)
        return -1;
    tt->end = tt->start + threads;
    tt->work = tt->end + threads;
    if (pthread_barrier_init(&tt->barrier, NULL, (unsigned)threads) != 0) {
        free(tt->start);
        return -1;
    }
    return 0;
}

static void timed_free(timed_threads *tt)
{
    pthread_barrier_destroy(&tt->barrier);
    free(tt->start);
}

/* Work per second over the span of all threads. */
static double timed_rate(const timed_threads *tt, int threads)
{
    double first = tt->start[0], last = tt->end[0], work = 0.0;
    for (int i = 0; i < threads; i++) {
        first = tt->start[i] < first ? tt->start[i] : first;
        last = tt->end[i] > last ? tt->end[i] : last;
        work += tt->work[i];
    }
    return last > first ? work / (last - first) : 0.0;
}

typedef struct peak_job {
    timed_threads tt;
    loop_fn *loop;
    uint64_t iters;
} peak_job;

static void peak_worker(void *arg, int index, int count)
{
    peak_job *job = arg;
    (void)count;
    pthread_barrier_wait(&job->tt.barrier);
    job->tt.start[index] = bench_now();
    job->tt.work[index] = job->loop(job->iters);
    job->tt.end[index] = bench_now();
}

double bench_fma_peak(nsa_isa isa, int threads, int repeats)
{
    loop_fn *loop = loop_for(isa);
    if (loop == NULL)
        return 0.0;
    /* Calibrate on one thread: about 0.2 s per run. */
    uint64_t iters = 1u << 16;
    for (;;) {
        double start = bench_now();
        loop(iters);
        double elapsed = bench_now() - start;
        if (elapsed > 0.02 || iters > ((uint64_t)1 << 40)) {
            iters = (uint64_t)((double)iters * 0.2 / (elapsed > 0 ? elapsed : 1e-9)) + 1;
            break;
        }
        iters *= 4;
    }
    peak_job job = {.loop = loop, .iters = iters};
    if (timed_init(&job.tt, threads) != 0)
        return 0.0;
    double best = 0.0;
    for (int r = 0; r < repeats + 1; r++) { /* the first is a warm-up */
        if (bench_parallel(threads, peak_worker, &job) != 0)
            break;
        double rate = timed_rate(&job.tt, threads);
        if (r > 0 && rate > best)
            best = rate;
    }
    timed_free(&job.tt);
    return best * 1e-9;
}

/* ------------------------------------------------------------ bandwidth -- */

typedef uint64_t u64x4 __attribute__((vector_size(32)));

typedef struct read_job {
    timed_threads tt;
    unsigned char *buffer;
    uint64_t bytes;
    int touch; /* 1 = write the chunk (first touch), 0 = read it */
    volatile uint64_t sink;
} read_job;

static void read_worker(void *arg, int index, int count)
{
    read_job *job = arg;
    /* Chunks of whole 128-byte lines per thread. */
    const uint64_t lines = job->bytes / 128;
    const uint64_t first = lines * (uint64_t)index / (uint64_t)count;
    const uint64_t last = lines * (uint64_t)(index + 1) / (uint64_t)count;
    unsigned char *p = job->buffer + first * 128;
    const size_t n = (size_t)(last - first) * 128;
    if (job->touch) {
        memset(p, index + 1, n);
        return;
    }
    pthread_barrier_wait(&job->tt.barrier);
    job->tt.start[index] = bench_now();
    u64x4 a = {0}, b = {0}, c = {0}, d = {0};
    for (size_t off = 0; off < n; off += 128) {
        u64x4 x0, x1, x2, x3;
        memcpy(&x0, p + off, 32);
        memcpy(&x1, p + off + 32, 32);
        memcpy(&x2, p + off + 64, 32);
        memcpy(&x3, p + off + 96, 32);
        a += x0;
        b += x1;
        c += x2;
        d += x3;
    }
    u64x4 s = (a + b) + (c + d);
    job->tt.end[index] = bench_now();
    job->tt.work[index] = (double)n;
    job->sink = s[0] + s[1] + s[2] + s[3];
}

double bench_read_bandwidth(uint64_t bytes, int threads, int repeats)
{
    read_job job = {.bytes = bytes / 128 * 128};
    void *buffer = NULL;
    if (job.bytes == 0 || posix_memalign(&buffer, 4096, (size_t)job.bytes) != 0)
        return 0.0;
    job.buffer = buffer;
    if (timed_init(&job.tt, threads) != 0) {
        free(job.buffer);
        return 0.0;
    }
    double best = 0.0;
    job.touch = 1; /* each thread writes its own chunk first: its NUMA node */
    if (bench_parallel(threads, read_worker, &job) == 0) {
        job.touch = 0;
        for (int r = 0; r < repeats + 1; r++) { /* the first is a warm-up */
            if (bench_parallel(threads, read_worker, &job) != 0)
                break;
            double rate = timed_rate(&job.tt, threads);
            if (r > 0 && rate > best)
                best = rate;
        }
    }
    timed_free(&job.tt);
    free(job.buffer);
    return best * 1e-9;
}
