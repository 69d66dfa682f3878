/* SPDX-License-Identifier: MIT */
/*
 * forward-mode.c — `nsa-bench forward`: for each size, draws one set of
 * inputs and times on them, in this order, NSA (nsa_forward), the library's
 * own dense kernel (nsa_dense_forward), dense attention on OpenBLAS and on
 * oneDNN, each with one warm-up and --repeats timed runs on --threads
 * threads. With --rounds K, NSA and the library's dense kernel are timed K
 * times each, alternating, and each keeps its best round: a slow spell of a
 * shared host then falls on both, not on whichever ran during it. The dense
 * outputs are compared with each other, so a fast baseline cannot be a
 * wrong one. Before the first size it measures the
 * machine's FMA peak and read bandwidth; after a sweep it plots.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench.h"

typedef struct run_ctx {
    const bench_options *opt;
    nsa_context *ctx;
    nsa_plan *plan;
    int threads;
    nsa_isa isa;
    bench_problem problem;
    float *out, *ref; /* ref: the first dense output of the size */
    int have_ref;
    bench_blas *blas;
    bench_dnnl *dnnl;
    nsa_status last;
} run_ctx;

static void progress(const run_ctx *r, const char *what)
{
    if (isatty(STDERR_FILENO))
        fprintf(stderr, "nsa-bench: N=%lld: %s...\n", (long long)r->problem.seqlen, what);
}

static int body_nsa(void *arg)
{
    run_ctx *r = arg;
    const bench_problem *p = &r->problem;
    r->last = nsa_forward(r->plan, &p->batch, p->q, p->k, p->v, p->gates, NULL, NULL, r->out,
                          NULL);
    return r->last == NSA_SUCCESS ? 0 : -1;
}

static int body_dense(void *arg)
{
    run_ctx *r = arg;
    const bench_problem *p = &r->problem;
    r->last = nsa_dense_forward(r->plan, &p->batch, p->q, p->k, p->v, r->out);
    return r->last == NSA_SUCCESS ? 0 : -1;
}

static int body_blas(void *arg)
{
    run_ctx *r = arg;
    return bench_blas_run(r->blas, r->out);
}

static int body_dnnl(void *arg)
{
    run_ctx *r = arg;
    return bench_dnnl_run(r->dnnl, r->out);
}

/* Times one method into m; dense methods are compared with the reference
 * output, or become it. */
static void measure(run_ctx *r, bench_method *m, bench_body *body, int dense, double flops)
{
    m->flops = flops;
    if (bench_time(body, r, r->opt->repeats, &m->timing) != 0) {
        m->outcome = BENCH_FAILED;
        if (r->last != NSA_SUCCESS)
            snprintf(m->note, sizeof m->note, "%s: %s", nsa_status_string(r->last),
                     nsa_context_last_error(r->ctx));
        else
            snprintf(m->note, sizeof m->note, "the run failed");
        return;
    }
    m->outcome = BENCH_MEASURED;
    m->seconds = bench_timing_pick(&m->timing, r->opt->median);
    const size_t n = (size_t)r->problem.seqlen * (size_t)r->problem.cfg.num_q_heads *
                     (size_t)r->problem.cfg.head_dim_v;
    for (size_t i = 0; i < n; i++)
        if (!isfinite(r->out[i])) {
            m->outcome = BENCH_FAILED;
            snprintf(m->note, sizeof m->note, "output %zu is not finite", i);
            return;
        }
    if (!dense)
        return;
    if (r->have_ref) {
        m->max_diff = bench_max_abs_diff(r->out, r->ref, n);
    } else {
        float *t = r->ref;
        r->ref = r->out;
        r->out = t;
        r->have_ref = 1;
    }
}

/* Round `round` of measure() into m: the round whose reported time is
 * lowest stays, with the first round's difference from the reference (later
 * rounds of the dense kernel would compare it with itself). */
static void measure_round(run_ctx *r, bench_method *m, int round, bench_body *body, int dense,
                          double flops)
{
    if (round == 0) {
        measure(r, m, body, dense, flops);
        return;
    }
    bench_method again = *m;
    measure(r, &again, body, dense, flops);
    if (again.outcome != BENCH_MEASURED) {
        *m = again; /* a failure is never hidden by an earlier round */
        return;
    }
    again.max_diff = m->max_diff;
    if (again.seconds < m->seconds)
        *m = again;
}

static int run_size(run_ctx *r, int64_t seqlen, bench_result *res)
{
    const bench_options *opt = r->opt;
    nsa_config cfg;
    if (nsa_plan_get_config(r->plan, &cfg) != NSA_SUCCESS ||
        bench_problem_init(&r->problem, &cfg, seqlen, opt->seed) != 0) {
        fprintf(stderr, "nsa-bench: out of memory for the inputs of N=%lld\n", (long long)seqlen);
        return -1;
    }
    const size_t n = (size_t)seqlen * (size_t)cfg.num_q_heads * (size_t)cfg.head_dim_v;
    r->out = malloc(n * sizeof *r->out);
    r->ref = malloc(n * sizeof *r->ref);
    r->have_ref = 0;
    if (r->out == NULL || r->ref == NULL) {
        fprintf(stderr, "nsa-bench: out of memory for the outputs of N=%lld\n", (long long)seqlen);
        free(r->out);
        free(r->ref);
        bench_problem_free(&r->problem);
        return -1;
    }
    *res = (bench_result){.seqlen = seqlen, .load_before = bench_loadavg()};
    for (int i = 0; i < BENCH_METHODS; i++)
        res->method[i].max_diff = NAN;
    const double dense_flops = bench_dense_flops(&cfg, seqlen);
    char why[200];

    bench_method *m = &res->method[BENCH_NSA];
    snprintf(m->note, sizeof m->note, "libnsa %s", nsa_plan_describe(r->plan));
    m = &res->method[BENCH_DENSE];
    if (opt->no_dense) {
        m->outcome = BENCH_SKIPPED;
        snprintf(m->note, sizeof m->note, "--no-dense");
    } else
        snprintf(m->note, sizeof m->note, "libnsa %s", nsa_plan_describe(r->plan));
    for (int round = 0; round < opt->rounds; round++) {
        progress(r, "NSA forward");
        measure_round(r, &res->method[BENCH_NSA], round, body_nsa, 0,
                      bench_nsa_flops(&cfg, seqlen));
        if (!opt->no_dense) {
            progress(r, "dense, libnsa");
            measure_round(r, &res->method[BENCH_DENSE], round, body_dense, 1, dense_flops);
        }
    }

    m = &res->method[BENCH_DENSE_BLAS];
    if (opt->no_blas) {
        m->outcome = BENCH_SKIPPED;
        snprintf(m->note, sizeof m->note, "--no-blas");
    } else if ((r->blas = bench_blas_create(&r->problem, opt, r->threads, r->isa, why,
                                            sizeof why)) == NULL) {
        m->outcome = BENCH_UNAVAILABLE;
        snprintf(m->note, sizeof m->note, "%s", why);
    } else {
        progress(r, "dense, OpenBLAS (choosing the threading)");
        if (bench_blas_choose_mode(r->blas, r->out) != 0) {
            m->outcome = BENCH_FAILED;
            snprintf(m->note, sizeof m->note, "threads could not be started");
        } else {
            progress(r, "dense, OpenBLAS");
            snprintf(m->note, sizeof m->note, "%s", bench_blas_describe(r->blas));
            measure(r, m, body_blas, 1, dense_flops);
        }
        bench_blas_destroy(r->blas);
        r->blas = NULL;
    }

    m = &res->method[BENCH_DENSE_DNNL];
    if (opt->no_dnnl) {
        m->outcome = BENCH_SKIPPED;
        snprintf(m->note, sizeof m->note, "--no-dnnl");
    } else if ((r->dnnl = bench_dnnl_create(&r->problem, opt, r->threads, r->isa, why,
                                            sizeof why)) == NULL) {
        m->outcome = BENCH_UNAVAILABLE;
        snprintf(m->note, sizeof m->note, "%s", why);
    } else {
        progress(r, "dense, oneDNN");
        snprintf(m->note, sizeof m->note, "%s", bench_dnnl_describe(r->dnnl));
        measure(r, m, body_dnnl, 1, dense_flops);
        if (m->outcome == BENCH_FAILED) /* the reason oneDNN gave */
            snprintf(m->note, sizeof m->note, "%s", bench_dnnl_describe(r->dnnl));
        bench_dnnl_destroy(r->dnnl);
        r->dnnl = NULL;
    }

    free(r->out);
    free(r->ref);
    r->out = r->ref = NULL;
    bench_problem_free(&r->problem);
    return 0;
}

void bench_measure_machine(const bench_options *opt, int threads, bench_machine *machine)
{
    bench_machine_describe(machine);
    machine->peak_threads = threads;
    if (opt->no_machine)
        return;
    if (isatty(STDERR_FILENO))
        fprintf(stderr, "nsa-bench: measuring the FMA peak and the read bandwidth...\n");
    for (int isa = NSA_ISA_REF; isa <= NSA_ISA_LAST; isa++)
        if (machine->isa_supported[isa])
            machine->peak_gflops[isa] = bench_fma_peak((nsa_isa)isa, threads, 3);
    uint64_t bytes = (uint64_t)opt->bw_mib << 20;
    if (bytes == 0) {
        const uint64_t mib = (uint64_t)1 << 20;
        bytes = 4 * machine->l3 * (uint64_t)(machine->l3_count > 0 ? machine->l3_count : 1);
        bytes = bytes < 256 * mib ? 256 * mib : bytes > 2048 * mib ? 2048 * mib : bytes;
    }
    machine->bandwidth_bytes = bytes;
    machine->bandwidth_gbs = bench_read_bandwidth(bytes, threads, 3);
}

int bench_forward_mode(const bench_options *opt)
{
    run_ctx r = {.opt = opt};
    nsa_config cfg;
    if (bench_open_library(opt, &cfg, &r.ctx, &r.plan) != 0)
        return 1;
    r.threads = nsa_context_num_threads(r.ctx);
    r.isa = nsa_context_isa(r.ctx);

    bench_machine machine;
    bench_measure_machine(opt, r.threads, &machine);
    const bench_run_info info = {.opt = opt, .cfg = &cfg, .threads = r.threads, .isa = r.isa,
                                 .plan = nsa_plan_describe(r.plan), .machine = &machine,
                                 .peak_gflops = machine.peak_gflops[r.isa]};
    bench_report_header(&info);

    int64_t first = opt->sweep ? opt->sweep_min : opt->seqlen;
    int64_t last = opt->sweep ? opt->sweep_max : opt->seqlen;
    int count = 0;
    for (int64_t n = first; n <= last; n *= 2)
        count++;
    bench_result *results = calloc((size_t)count, sizeof *results);
    int rc = results == NULL ? 1 : 0, done = 0;
    for (int64_t n = first; rc == 0 && n <= last; n *= 2) {
        if (run_size(&r, n, &results[done]) != 0) {
            rc = 1;
            break;
        }
        bench_report_table(&info, &results[done]);
        bench_report_json(&info, &results[done]);
        for (int i = 0; i < BENCH_METHODS; i++)
            if (results[done].method[i].outcome == BENCH_FAILED)
                rc = 1;
        done++;
    }
    if (opt->sweep && done > 0)
        bench_plot_sweep(&info, results, done, opt->plot);
    free(results);
    nsa_plan_destroy(r.plan);
    nsa_context_destroy(r.ctx);
    return rc;
}
