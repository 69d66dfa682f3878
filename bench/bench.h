/* SPDX-License-Identifier: MIT */
/*
 * bench.h — what the files of nsa-bench share: the options, the inputs of
 * one size, the results of one size, and the small services (clock, repeat
 * timing, bound worker threads, per-ISA loops) the modes are built from.
 * nsa-bench has three modes: `forward` (NSA against dense attention from
 * the library, OpenBLAS and oneDNN, next to the machine's measured limits),
 * `backward` (the NSA backward against the library's dense backward) and
 * `kernels` (each kernel of the registry against the reference kernel).
 */
#ifndef NSA_BENCH_H
#define NSA_BENCH_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "config.h"
#include "cpu_features.h"
#include "nsa.h"

/* ------------------------------------------------------------------------ */
/* Options                                                                   */
/* ------------------------------------------------------------------------ */

typedef enum bench_blas_mode {
    BENCH_BLAS_AUTO = 0,     /* time both below once, keep the faster */
    BENCH_BLAS_OPENBLAS = 1, /* tiles in turn, OpenBLAS threaded */
    BENCH_BLAS_TILES = 2     /* tiles on pthreads, OpenBLAS single-threaded */
} bench_blas_mode;

typedef struct bench_options {
    const char *mode; /* "forward", "backward" or "kernels" */
    int64_t seqlen;
    int32_t q_heads, kv_heads, dim_qk, dim_v;
    int32_t threads; /* 0 = one per core (the library's default) */
    int32_t max_isa; /* an nsa_isa, or -1 = no cap */
    int32_t repeats;
    int32_t rounds;  /* forward: NSA and nsa_dense_forward timed this often, alternating */
    int median;      /* 1 = report the median of the repeats, 0 = the best */
    int json;
    int sweep;
    int64_t sweep_min, sweep_max;
    const char *plot;
    int no_blas, no_dnnl, no_dense, no_machine;
    bench_blas_mode blas_mode;
    int32_t blas_tile; /* queries per tile of the dense baselines */
    int64_t bw_mib;    /* bandwidth buffer; 0 = 4 x L3 within [256, 2048] MiB */
    uint64_t seed;
    int32_t dtype;     /* decode: an nsa_dtype, or -1 = both */
} bench_options;

/* Fills the defaults and parses argv; returns 0, or 1 after --help, or -1
 * after printing the error. */
int bench_parse_options(int argc, char **argv, bench_options *opt);

/* `nsa-bench decode` (decode-mode.c). */
int bench_decode_mode(const bench_options *opt);

/* ------------------------------------------------------------------------ */
/* Clock, timing, threads                                                    */
/* ------------------------------------------------------------------------ */

double bench_now(void);

/* One body call as warm-up, then `repeats` timed calls. The body returns 0
 * on success; the first failure stops the timing and is returned. */
typedef int bench_body(void *arg);
typedef struct bench_timing {
    double best, median; /* seconds */
    double warmup;       /* seconds of the warm-up call */
} bench_timing;
int bench_time(bench_body *body, void *arg, int repeats, bench_timing *timing);

/* The number a report shows: the best or the median. */
double bench_timing_pick(const bench_timing *timing, int median);

/* Runs fn(arg, i, count) on `count` new threads, thread i bound to core
 * i modulo the cores (as the library binds its workers), and joins them.
 * Returns 0, or -1 if a thread could not be started (none is left running). */
typedef void bench_task(void *arg, int index, int count);
int bench_parallel(int count, bench_task *fn, void *arg);

/* Binds the calling thread to core `index` modulo the cores; best effort. */
void bench_bind_to_core(int index);

/* The machine's hwloc topology, loaded on first use; NULL if hwloc failed.
 * (A hwloc_topology_t, declared here without hwloc.h.) */
struct hwloc_topology;
struct hwloc_topology *bench_topology(void);

/* ------------------------------------------------------------------------ */
/* Inputs of one size                                                        */
/* ------------------------------------------------------------------------ */

typedef struct bench_problem {
    nsa_config cfg; /* the paper's defaults for the heads and dims */
    int64_t seqlen;
    int64_t cu_seqlens[2];
    nsa_batch batch; /* one causal sequence */
    float *q, *k, *v, *gates;
} bench_problem;

/* The library as the options ask for it: a context (threads, ISA cap) and
 * a plan for the paper's defaults with the options' heads and dims, which
 * go to *cfg. Returns 0, or 1 after printing why not (nothing left). */
int bench_open_library(const bench_options *opt, nsa_config *cfg, nsa_context **ctx,
                       nsa_plan **plan);

/* Random q, k, v in [-1, 1] and gates in [0, 1], reproducible from seed.
 * Returns 0 or -1 (out of memory; nothing left allocated). */
int bench_problem_init(bench_problem *p, const nsa_config *cfg, int64_t seqlen, uint64_t seed);
void bench_problem_free(bench_problem *p);

/* Useful FLOPs: 2 (Dk + Dv) per (query head, key attended). NSA sums its
 * three branches (as nsa-demo counts); dense causal attention attends keys
 * 0..t for query t. */
double bench_nsa_flops(const nsa_config *cfg, int64_t seqlen);
double bench_dense_flops(const nsa_config *cfg, int64_t seqlen);

/* ------------------------------------------------------------------------ */
/* The machine                                                               */
/* ------------------------------------------------------------------------ */

typedef struct bench_machine {
    char cpu[128];  /* model name */
    int cores, pus; /* physical cores, hardware threads */
    uint64_t l1d, l2, l3; /* bytes per instance */
    int l3_count;
    int isa_supported[NSA_ISA_LAST + 1];   /* indexed by nsa_isa: the host runs it */
    double peak_gflops[NSA_ISA_LAST + 1];  /* FMA peak per ISA on the run's threads; 0 = not measured */
    int peak_threads;
    double bandwidth_gbs;   /* streaming read, all the run's threads; 0 = not measured */
    uint64_t bandwidth_bytes;
} bench_machine;

/* The model, cores and caches (hwloc) and which ISAs the host runs. */
void bench_machine_describe(bench_machine *m);

/* bench_machine_describe, then (unless --no-machine) the FMA peak of every
 * ISA the host runs and the read bandwidth on `threads` threads, saying so
 * on a terminal: what every mode measures before its first size. */
void bench_measure_machine(const bench_options *opt, int threads, bench_machine *machine);

/* FMA peak in GFLOP/s of one ISA's register-resident loop on `threads`
 * threads (best of `repeats` runs of ~0.2 s); 0 if the host lacks it. */
double bench_fma_peak(nsa_isa isa, int threads, int repeats);

/* Streaming-read bandwidth in GB/s (1e9 bytes/s) over `bytes` on `threads`
 * threads (best of `repeats` after a warm-up); 0 if out of memory. */
double bench_read_bandwidth(uint64_t bytes, int threads, int repeats);

/* The 1-minute load average (/proc/loadavg), NAN where unknown: other
 * processes on the machine skew every number, so reports show it. */
double bench_loadavg(void);

/* What the peak of an ISA measures, for reports ("avx512 FMA, 16 floats"). */
const char *bench_peak_label(nsa_isa isa);

/* The per-ISA loops behind bench_fma_peak, each in its own file compiled
 * with its ISA's flags: `iters` passes over independent accumulators;
 * return the floating-point operations done. */
double bench_fma_loop_base(uint64_t iters);
#if defined(NSA_HAVE_AVX2)
double bench_fma_loop_avx2(uint64_t iters);
#endif
#if defined(NSA_HAVE_AVX512)
double bench_fma_loop_avx512(uint64_t iters);
#endif

/* ------------------------------------------------------------------------ */
/* Dense baselines                                                           */
/* ------------------------------------------------------------------------ */

/* The softmax of the dense baselines, compiled once per ISA (baseline-
 * softmax.c): for rows r < m of s (stride lds), columns [0, len[r]) become
 * exp(s - row max) and columns [len[r], ncols) become 0; sum[r] gets the
 * row's sum. len[r] >= 1. lds is a multiple of 16 and >= ncols rounded up
 * to 16: the kernels may write up to there. */
typedef void bench_softmax_rows_fn(size_t m, size_t ncols, const int64_t *len, float *s,
                                   size_t lds, float *sum);
bench_softmax_rows_fn bench_softmax_rows_base;
#if defined(NSA_HAVE_AVX2)
bench_softmax_rows_fn bench_softmax_rows_avx2;
#endif
#if defined(NSA_HAVE_AVX512)
bench_softmax_rows_fn bench_softmax_rows_avx512;
#endif

/* The best softmax for an ISA cap, and the name of the ISA it uses. */
bench_softmax_rows_fn *bench_softmax_rows_for(nsa_isa cap, const char **isa_name);

/* The tiles of the dense baselines: per KV head h, queries [t0, t0 + count)
 * times the G heads of the group, row r = (t0 + r / G, head h G + r % G),
 * attending keys 0 .. t0 + count - 1 (later keys of a row masked). */

/* q rows of the tile, times the softmax scale, into qp[count * G][Dk]. */
void bench_tile_pack_q(const bench_problem *p, int64_t h, int64_t t0, int64_t count, float *qp);

/* len[r] = keys row r attends = its query position + 1. */
void bench_tile_lengths(const bench_problem *p, int64_t t0, int64_t count, int64_t *len);

/* out rows of the tile = o[r][Dv] / sum[r]. */
void bench_tile_unpack_o(const bench_problem *p, int64_t h, int64_t t0, int64_t count,
                         const float *o, const float *sum, float *out);

/* Queries per tile so that one tile's scores [tile * G][seqlen] stay within
 * budget_bytes: at most `wanted`, at least 1, a multiple of 16 when >= 16. */
int64_t bench_tile_queries(const bench_problem *p, int64_t wanted, uint64_t budget_bytes);

/* A dense baseline: create (outside the timing), run (timed), destroy.
 * create returns NULL and writes why into `why` when the baseline cannot
 * run (not built in, out of memory). */
typedef struct bench_blas bench_blas;
bench_blas *bench_blas_create(const bench_problem *p, const bench_options *opt, int threads,
                              nsa_isa isa, char *why, size_t why_size);
int bench_blas_run(bench_blas *b, float *out);
/* In auto mode, times both threading modes once each and keeps the faster;
 * a no-op otherwise. Returns 0 or -1. */
int bench_blas_choose_mode(bench_blas *b, float *out);
const char *bench_blas_describe(const bench_blas *b);
void bench_blas_destroy(bench_blas *b);

typedef struct bench_dnnl bench_dnnl;
bench_dnnl *bench_dnnl_create(const bench_problem *p, const bench_options *opt, int threads,
                              nsa_isa isa, char *why, size_t why_size);
int bench_dnnl_run(bench_dnnl *d, float *out);
const char *bench_dnnl_describe(const bench_dnnl *d);
void bench_dnnl_destroy(bench_dnnl *d);

/* ------------------------------------------------------------------------ */
/* Results and reports                                                       */
/* ------------------------------------------------------------------------ */

enum { BENCH_NSA = 0, BENCH_DENSE = 1, BENCH_DENSE_BLAS = 2, BENCH_DENSE_DNNL = 3,
       BENCH_METHODS = 4 };

typedef enum bench_outcome {
    BENCH_MEASURED = 0,
    BENCH_SKIPPED = 1,     /* turned off by an option */
    BENCH_UNAVAILABLE = 2, /* not built in, or could not be set up */
    BENCH_FAILED = 3       /* the call returned an error */
} bench_outcome;

typedef struct bench_method {
    bench_outcome outcome;
    char note[200];  /* how it ran (threads, kernels), or why it did not */
    bench_timing timing;
    double seconds;  /* the reported statistic */
    double flops;    /* useful FLOPs */
    double max_diff; /* max |out - nsa_dense_forward's out|; NAN = not compared */
} bench_method;

typedef struct bench_result {
    int64_t seqlen;
    double load_before; /* 1-minute load average before the size ran */
    bench_method method[BENCH_METHODS];
} bench_result;

/* What every report of a run repeats. */
typedef struct bench_run_info {
    const bench_options *opt;
    const nsa_config *cfg;
    int threads;
    nsa_isa isa;
    const char *plan;       /* nsa_plan_describe */
    const bench_machine *machine;
    double peak_gflops;     /* the run's ISA at the run's threads; 0 = unknown */
} bench_run_info;

void bench_report_header(const bench_run_info *info);
void bench_report_table(const bench_run_info *info, const bench_result *r);
void bench_report_json(const bench_run_info *info, const bench_result *r);

/* max |a[i] - b[i]| over n values; NaN when either holds one. */
double bench_max_abs_diff(const float *a, const float *b, size_t n);

/* A method's time in ms and useful GFLOP/s, NAN when it was not measured. */
double bench_method_ms(const bench_method *m);
double bench_method_gflops(const bench_method *m);

/* JSON members `,"key":value` of the --json lines: a number (null when it
 * is not one: not measured, not comparable) and an escaped string. */
void bench_json_number(FILE *f, const char *key, double value, int decimals);
void bench_json_string(FILE *f, const char *key, const char *value);
/* Method names for reports and plots. */
const char *bench_method_name(int method);

/* Writes the sweep plot (time and speedup against N) with gnuplot to
 * `path`; returns 0, or -1 after saying why on stderr (numbers are printed
 * regardless). */
int bench_plot_sweep(const bench_run_info *info, const bench_result *results, int count,
                     const char *path);

/* ------------------------------------------------------------------------ */
/* Modes                                                                     */
/* ------------------------------------------------------------------------ */

int bench_forward_mode(const bench_options *opt);
int bench_backward_mode(const bench_options *opt);
int bench_kernels_mode(const bench_options *opt);

#endif /* NSA_BENCH_H */
