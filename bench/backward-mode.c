/* SPDX-License-Identifier: MIT */
/*
 * backward-mode.c — `nsa-bench backward`: for each size, draws one set of
 * inputs and an upstream gradient dO, records the NSA forward once
 * (nsa_forward_train, outside the timing) and times on them, in this
 * order, the NSA backward from that record (nsa_backward), the NSA backward
 * that recomputes it (saved = NULL) and the library's dense
 * FlashAttention-2 backward (nsa_dense_backward), each with one warm-up and
 * --repeats timed runs on --threads threads. The two NSA backwards must
 * agree bit for bit. Takes the forward mode's options (those about the
 * OpenBLAS and oneDNN baselines are accepted and have nothing to skip) and
 * writes the same kind of table and JSON line.
 *
 * Throughput is counted in useful FLOPs by FlashAttention's convention: a
 * backward is 2.5 forwards (five products of the attention matrix against
 * the forward's two). What the implementations execute is printed next to
 * it: NSA's backward takes seven products (P and dO V^T are recomputed on
 * both the query and the key side, so that no sum needs atomics), the dense
 * backward nine (it also recomputes the log-sum-exp and <dO, O>).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench.h"

enum { BWD_NSA, BWD_NSA_RECOMPUTE, BWD_DENSE, BWD_METHODS };

static const char *const method_names[BWD_METHODS] = {
    "NSA backward (saved forward)", "NSA backward (recompute, saved=NULL)",
    "dense, libnsa (nsa_dense_backward)"};
static const char *const json_keys[BWD_METHODS] = {"nsa", "nsa_recompute", "dense"};
/* Products of the attention matrix each method executes, in forwards (2). */
static const double executed_forwards[BWD_METHODS] = {3.5, 4.5, 4.5};
static const double useful_forwards = 2.5;

typedef struct gradients {
    float *dq, *dk, *dv, *dgates;
} gradients;

typedef struct backward_ctx {
    const bench_options *opt;
    nsa_context *ctx;
    nsa_plan *plan;
    int threads;
    nsa_isa isa;
    bench_problem problem;
    float *dout;
    nsa_saved *saved;
    gradients grads[2]; /* [0]: the saved run's, [1]: every other method's */
    nsa_status last;
} backward_ctx;

typedef struct backward_result {
    int64_t seqlen;
    double load_before;
    bench_method method[BWD_METHODS];
    double recompute_max_diff; /* NSA from saved vs recomputed; must be 0 */
} backward_result;

static void progress(const backward_ctx *r, const char *what)
{
    if (isatty(STDERR_FILENO))
        fprintf(stderr, "nsa-bench: N=%lld: %s...\n", (long long)r->problem.seqlen, what);
}

static int body_nsa(void *arg)
{
    backward_ctx *r = arg;
    const bench_problem *p = &r->problem;
    const gradients *g = &r->grads[0];
    r->last = nsa_backward(r->plan, &p->batch, p->q, p->k, p->v, p->gates, NULL, NULL, r->dout,
                           r->saved, g->dq, g->dk, g->dv, g->dgates, NULL, NULL);
    return r->last == NSA_SUCCESS ? 0 : -1;
}

static int body_nsa_recompute(void *arg)
{
    backward_ctx *r = arg;
    const bench_problem *p = &r->problem;
    const gradients *g = &r->grads[1];
    r->last = nsa_backward(r->plan, &p->batch, p->q, p->k, p->v, p->gates, NULL, NULL, r->dout,
                           NULL, g->dq, g->dk, g->dv, g->dgates, NULL, NULL);
    return r->last == NSA_SUCCESS ? 0 : -1;
}

static int body_dense(void *arg)
{
    backward_ctx *r = arg;
    const bench_problem *p = &r->problem;
    const gradients *g = &r->grads[1];
    r->last = nsa_dense_backward(r->plan, &p->batch, p->q, p->k, p->v, r->dout, g->dq, g->dk,
                                 g->dv);
    return r->last == NSA_SUCCESS ? 0 : -1;
}

static size_t count_of(const backward_ctx *r, int which)
{
    const nsa_config *c = &r->problem.cfg;
    const size_t t = (size_t)r->problem.seqlen;
    const size_t sizes[4] = {t * (size_t)(c->num_q_heads * c->head_dim_qk),
                             t * (size_t)(c->num_kv_heads * c->head_dim_qk),
                             t * (size_t)(c->num_kv_heads * c->head_dim_v),
                             t * (size_t)(c->num_q_heads * 3)};
    return sizes[which];
}

static float **field(gradients *g, int which)
{
    float **fields[4] = {&g->dq, &g->dk, &g->dv, &g->dgates};
    return fields[which];
}

static void measure(backward_ctx *r, bench_method *m, bench_body *body, int grads, double flops)
{
    m->flops = flops;
    if (bench_time(body, r, r->opt->repeats, &m->timing) != 0) {
        m->outcome = BENCH_FAILED;
        snprintf(m->note, sizeof m->note, "%s: %s", nsa_status_string(r->last),
                 nsa_context_last_error(r->ctx));
        return;
    }
    m->outcome = BENCH_MEASURED;
    m->seconds = bench_timing_pick(&m->timing, r->opt->median);
    for (int which = 0; which < 3; which++) {
        const float *x = *field(&r->grads[grads], which);
        for (size_t i = 0; i < count_of(r, which); i++)
            if (!isfinite(x[i])) {
                m->outcome = BENCH_FAILED;
                snprintf(m->note, sizeof m->note, "gradient %c[%zu] is not finite",
                         "qkv"[which], i);
                return;
            }
    }
}

/* dO uniform in [-1, 1], reproducible from the seed (splitmix64). */
static float *random_gradient(uint64_t seed, size_t count)
{
    float *x = malloc(count * sizeof *x);
    uint64_t state = seed ^ 0x6a09e667f3bcc909ull;
    for (size_t i = 0; x != NULL && i < count; i++) {
        uint64_t z = (state += 0x9e3779b97f4a7c15ull);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        z ^= z >> 31;
        x[i] = (float)((double)(z >> 11) * 0x1.0p-53 * 2.0 - 1.0);
    }
    return x;
}

static void free_size(backward_ctx *r)
{
    for (int g = 0; g < 2; g++)
        for (int which = 0; which < 4; which++) {
            free(*field(&r->grads[g], which));
            *field(&r->grads[g], which) = NULL;
        }
    free(r->dout);
    r->dout = NULL;
    nsa_saved_destroy(r->saved);
    r->saved = NULL;
    bench_problem_free(&r->problem);
}

static int run_size(backward_ctx *r, int64_t seqlen, backward_result *res)
{
    const bench_options *opt = r->opt;
    nsa_config cfg;
    if (nsa_plan_get_config(r->plan, &cfg) != NSA_SUCCESS ||
        bench_problem_init(&r->problem, &cfg, seqlen, opt->seed) != 0) {
        fprintf(stderr, "nsa-bench: out of memory for the inputs of N=%lld\n", (long long)seqlen);
        return -1;
    }
    r->dout = random_gradient(opt->seed, (size_t)seqlen * (size_t)(cfg.num_q_heads *
                                                                   cfg.head_dim_v));
    int ok = r->dout != NULL;
    for (int g = 0; g < 2; g++)
        for (int which = 0; which < 4; which++)
            *field(&r->grads[g], which) = malloc(count_of(r, which) * sizeof(float));
    ok = ok && r->dout != NULL && nsa_saved_create(r->plan, seqlen, &r->saved) == NSA_SUCCESS;
    for (int g = 0; g < 2; g++)
        for (int which = 0; which < 4; which++)
            ok = ok && *field(&r->grads[g], which) != NULL;
    float *out = ok ? malloc((size_t)seqlen * (size_t)(cfg.num_q_heads * cfg.head_dim_v) *
                             sizeof *out)
                    : NULL;
    const bench_problem *p = &r->problem;
    if (out == NULL || nsa_forward_train(r->plan, &p->batch, p->q, p->k, p->v, p->gates, NULL,
                                         NULL, out, r->saved) != NSA_SUCCESS) {
        fprintf(stderr, "nsa-bench: could not record the forward of N=%lld: %s\n",
                (long long)seqlen, nsa_context_last_error(r->ctx));
        free(out);
        free_size(r);
        return -1;
    }
    free(out);

    *res = (backward_result){.seqlen = seqlen, .load_before = bench_loadavg(),
                             .recompute_max_diff = NAN};
    for (int i = 0; i < BWD_METHODS; i++)
        res->method[i].max_diff = NAN;
    const double nsa_flops = useful_forwards * bench_nsa_flops(&cfg, seqlen);
    for (int i = 0; i < BWD_METHODS; i++)
        snprintf(res->method[i].note, sizeof res->method[i].note, "libnsa %s",
                 nsa_plan_describe(r->plan));

    progress(r, "NSA backward");
    measure(r, &res->method[BWD_NSA], body_nsa, 0, nsa_flops);
    progress(r, "NSA backward, recomputing the forward's record");
    measure(r, &res->method[BWD_NSA_RECOMPUTE], body_nsa_recompute, 1, nsa_flops);
    if (res->method[BWD_NSA].outcome == BENCH_MEASURED &&
        res->method[BWD_NSA_RECOMPUTE].outcome == BENCH_MEASURED) {
        double worst = 0.0;
        for (int which = 0; which < 4; which++) {
            const double d = bench_max_abs_diff(*field(&r->grads[0], which),
                                          *field(&r->grads[1], which), count_of(r, which));
            worst = !(d <= worst) ? d : worst;
        }
        res->recompute_max_diff = worst;
        res->method[BWD_NSA_RECOMPUTE].max_diff = worst;
        if (worst != 0.0) {
            res->method[BWD_NSA_RECOMPUTE].outcome = BENCH_FAILED;
            snprintf(res->method[BWD_NSA_RECOMPUTE].note,
                     sizeof res->method[BWD_NSA_RECOMPUTE].note,
                     "gradients differ from the saved run's by %.3g", worst);
        }
    }
    bench_method *m = &res->method[BWD_DENSE];
    if (opt->no_dense) {
        m->outcome = BENCH_SKIPPED;
        snprintf(m->note, sizeof m->note, "--no-dense");
    } else {
        progress(r, "dense backward, libnsa");
        measure(r, m, body_dense, 1, useful_forwards * bench_dense_flops(&cfg, seqlen));
    }
    free_size(r);
    return 0;
}

/* ------------------------------------------------------------- reports -- */

static FILE *human(const bench_options *opt)
{
    return opt->json ? stderr : stdout;
}

static void report_table(const bench_run_info *info, const backward_result *r)
{
    FILE *f = human(info->opt);
    const bench_method *nsa = &r->method[BWD_NSA];
    const double ratio =
        bench_dense_flops(info->cfg, r->seqlen) / bench_nsa_flops(info->cfg, r->seqlen);
    fprintf(f, "\nN = %lld: dense/NSA useful-FLOP ratio %.2f (NSA's speedup at equal efficiency); "
               "load average before: %.2f\n",
            (long long)r->seqlen, ratio, r->load_before);
    fprintf(f, "%-38s %11s %9s %7s %9s %8s %10s  %s\n", "method", "time ms", "GFLOP/s", "% peak",
            "executed", "vs NSA", "max|diff|", "how");
    for (int i = 0; i < BWD_METHODS; i++) {
        const bench_method *m = &r->method[i];
        if (m->outcome != BENCH_MEASURED) {
            const char *what = m->outcome == BENCH_SKIPPED ? "skipped" : "FAILED";
            fprintf(f, "%-38s %11s  %s\n", method_names[i], what, m->note);
            continue;
        }
        const double g = bench_method_gflops(m), executed = g * executed_forwards[i] / useful_forwards;
        fprintf(f, "%-38s %11.2f %9.1f", method_names[i], m->seconds * 1e3, g);
        if (info->peak_gflops > 0)
            fprintf(f, " %6.1f%% %8.1f%%", 100.0 * g / info->peak_gflops,
                    100.0 * executed / info->peak_gflops);
        else
            fprintf(f, " %7s %9s", "-", "-");
        if (nsa->outcome == BENCH_MEASURED)
            fprintf(f, " %7.2fx", m->seconds / nsa->seconds);
        else
            fprintf(f, " %8s", "-");
        if (isnan(m->max_diff))
            fprintf(f, " %10s", "-");
        else
            fprintf(f, " %10.2e", m->max_diff);
        fprintf(f, "  %s\n", m->note);
    }
    fprintf(f, "(GFLOP/s counts useful FLOPs: 2.5 forwards, 2 (Dk+Dv) per query head and key "
               "attended each; 'executed' = %% of peak of the products actually run: 3.5 "
               "forwards for NSA, 4.5 recomputing or dense; 'vs NSA' = time / NSA's time; "
               "max|diff| of the recomputing run's gradients against the saved run's)\n");
    fflush(f);
}

static void report_json(const bench_run_info *info, const backward_result *r)
{
    if (!info->opt->json)
        return;
    FILE *f = stdout;
    const nsa_config *c = info->cfg;
    const bench_method *m = r->method;
    const double peak = info->peak_gflops > 0 ? info->peak_gflops : NAN;
    const double bw = info->machine->bandwidth_gbs > 0 ? info->machine->bandwidth_gbs : NAN;
    fprintf(f, "{\"mode\":\"backward\",\"seqlen\":%lld", (long long)r->seqlen);
    for (int i = 0; i < BWD_METHODS; i++) {
        char key[40];
        snprintf(key, sizeof key, "%s_ms", json_keys[i]);
        bench_json_number(f, key, bench_method_ms(&m[i]), 3);
    }
    bench_json_number(f, "speedup", bench_method_ms(&m[BWD_DENSE]) / bench_method_ms(&m[BWD_NSA]), 3);
    bench_json_number(f, "speedup_recompute", bench_method_ms(&m[BWD_DENSE]) / bench_method_ms(&m[BWD_NSA_RECOMPUTE]), 3);
    for (int i = 0; i < BWD_METHODS; i++) {
        char key[40];
        snprintf(key, sizeof key, "%s_gflops", json_keys[i]);
        bench_json_number(f, key, bench_method_gflops(&m[i]), 2);
    }
    bench_json_number(f, "peak_gflops", peak, 2);
    bench_json_number(f, "pct_peak", 100.0 * bench_method_gflops(&m[BWD_NSA]) / peak, 2);
    bench_json_number(f, "dense_pct_peak", 100.0 * bench_method_gflops(&m[BWD_DENSE]) / peak, 2);
    bench_json_number(f, "executed_pct_peak",
                100.0 * bench_method_gflops(&m[BWD_NSA]) * executed_forwards[BWD_NSA] / useful_forwards / peak,
                2);
    bench_json_number(f, "dense_executed_pct_peak",
                100.0 * bench_method_gflops(&m[BWD_DENSE]) * executed_forwards[BWD_DENSE] / useful_forwards /
                    peak,
                2);
    bench_json_number(f, "bandwidth_gbs", bw, 2);
    bench_json_number(f, "flop_ratio", bench_dense_flops(c, r->seqlen) / bench_nsa_flops(c, r->seqlen),
                3);
    bench_json_number(f, "recompute_max_diff", r->recompute_max_diff, 9);
    bench_json_number(f, "loadavg", r->load_before, 2);
    fprintf(f, ",\"threads\":%d", info->threads);
    bench_json_string(f, "isa", nsa_isa_name(info->isa));
    fprintf(f, ",\"q_heads\":%d,\"kv_heads\":%d,\"dim_qk\":%d,\"dim_v\":%d", (int)c->num_q_heads,
            (int)c->num_kv_heads, (int)c->head_dim_qk, (int)c->head_dim_v);
    bench_json_string(f, "stat", info->opt->median ? "median" : "best");
    fprintf(f, ",\"repeats\":%d", (int)info->opt->repeats);
    bench_json_string(f, "cpu", info->machine->cpu);
    fprintf(f, "}\n");
    fflush(f);
}

/* ---------------------------------------------------------------- mode -- */

int bench_backward_mode(const bench_options *opt)
{
    backward_ctx r = {.opt = opt};
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

    const int64_t first = opt->sweep ? opt->sweep_min : opt->seqlen;
    const int64_t last = opt->sweep ? opt->sweep_max : opt->seqlen;
    int rc = 0;
    for (int64_t n = first; rc == 0 && n <= last; n *= 2) {
        backward_result res;
        if (run_size(&r, n, &res) != 0) {
            rc = 1;
            break;
        }
        report_table(&info, &res);
        report_json(&info, &res);
        for (int i = 0; i < BWD_METHODS; i++)
            if (res.method[i].outcome == BENCH_FAILED)
                rc = 1;
    }
    nsa_plan_destroy(r.plan);
    nsa_context_destroy(r.ctx);
    return rc;
}
