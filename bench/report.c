/* SPDX-License-Identifier: MIT */
/*
 * report.c — how nsa-bench's numbers are shown: a header that says what ran
 * where (machine, problem, timing policy, measured peak and bandwidth), a
 * table per size for people (time, useful GFLOP/s, % of peak, time relative
 * to NSA, agreement with the library's dense output, how each method ran),
 * and one JSON object per size on one line for scripts. With --json,
 * stdout carries only the JSON lines and the tables go to stderr.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "bench.h"

const char *bench_method_name(int method)
{
    static const char *const names[BENCH_METHODS] = {
        "NSA forward (nsa_forward)", "dense, libnsa (nsa_dense_forward)",
        "dense, OpenBLAS sgemm", "dense, oneDNN matmul + softmax"};
    return method >= 0 && method < BENCH_METHODS ? names[method] : "?";
}

static FILE *human(const bench_run_info *info)
{
    return info->opt->json ? stderr : stdout;
}

static void print_size(FILE *f, const char *name, uint64_t bytes)
{
    if (bytes == 0)
        fprintf(f, "%s ?", name);
    else if (bytes >= ((uint64_t)1 << 20))
        fprintf(f, "%s %.0f MiB", name, (double)bytes / (1 << 20));
    else
        fprintf(f, "%s %.0f KiB", name, (double)bytes / 1024);
}

void bench_report_header(const bench_run_info *info)
{
    FILE *f = human(info);
    const bench_machine *m = info->machine;
    const nsa_config *c = info->cfg;
    fprintf(f, "nsa-bench %s, libnsa %s\n", info->opt->mode, nsa_version());
    fprintf(f, "machine: %s, %d cores / %d hardware threads, ", m->cpu, m->cores, m->pus);
    print_size(f, "L1d", m->l1d);
    print_size(f, ", L2", m->l2);
    print_size(f, ", L3", m->l3);
    fprintf(f, " x %d; ISAs run:", m->l3_count);
    for (int isa = NSA_ISA_REF; isa <= NSA_ISA_LAST; isa++)
        if (m->isa_supported[isa])
            fprintf(f, " %s", nsa_isa_name((nsa_isa)isa));
    fprintf(f, "\n");
    fprintf(f,
            "problem: one causal sequence, Hq=%d Hkv=%d Dk=%d Dv=%d; NSA l=%d d=%d l'=%d n=%d "
            "(init %d, local %d) w=%d, mean compression, gates uniform in [0, 1]\n",
            (int)c->num_q_heads, (int)c->num_kv_heads, (int)c->head_dim_qk, (int)c->head_dim_v,
            (int)c->cmp_block, (int)c->cmp_stride, (int)c->sel_block, (int)c->sel_count,
            (int)c->sel_init, (int)c->sel_local, (int)c->window);
    fprintf(f, "run: threads=%d isa=%s (plan: %s); load average at start %.2f\n", info->threads,
            nsa_isa_name(info->isa), info->plan, bench_loadavg());
    fprintf(f, "timing: one warm-up run, then the %s of %d runs",
            info->opt->median ? "median" : "best", (int)info->opt->repeats);
    if (info->opt->rounds > 1 && strcmp(info->opt->mode, "forward") == 0)
        fprintf(f, "; NSA and nsa_dense_forward: the best of %d such rounds, alternating",
                (int)info->opt->rounds);
    fprintf(f, "\n");
    if (info->peak_gflops > 0) {
        fprintf(f, "peak: %.1f GFLOP/s (%s, %d threads)", info->peak_gflops,
                bench_peak_label(info->isa), m->peak_threads);
        const char *sep = "; other ISAs:";
        for (int isa = NSA_ISA_REF; isa <= NSA_ISA_LAST; isa++)
            if (isa != (int)info->isa && m->peak_gflops[isa] > 0) {
                fprintf(f, "%s %s %.1f", sep, nsa_isa_name((nsa_isa)isa), m->peak_gflops[isa]);
                sep = ",";
            }
        fprintf(f, "\n");
    } else {
        fprintf(f, "peak: not measured\n");
    }
    if (m->bandwidth_gbs > 0)
        fprintf(f, "read bandwidth: %.1f GB/s (%.0f MiB buffer, %d threads)\n", m->bandwidth_gbs,
                (double)m->bandwidth_bytes / (1 << 20), m->peak_threads);
    else
        fprintf(f, "read bandwidth: not measured\n");
    fflush(f);
}

double bench_max_abs_diff(const float *a, const float *b, size_t n)
{
    double worst = 0.0;
    for (size_t i = 0; i < n; i++) {
        const double d = fabs((double)a[i] - (double)b[i]);
        if (!(d <= worst)) /* NaN wins */
            worst = d;
    }
    return worst;
}

double bench_method_gflops(const bench_method *m)
{
    return m->outcome == BENCH_MEASURED && m->seconds > 0 ? m->flops / m->seconds * 1e-9 : NAN;
}

double bench_method_ms(const bench_method *m)
{
    return m->outcome == BENCH_MEASURED ? m->seconds * 1e3 : NAN;
}

void bench_report_table(const bench_run_info *info, const bench_result *r)
{
    FILE *f = human(info);
    const bench_method *nsa = &r->method[BENCH_NSA];
    const double ratio = bench_dense_flops(info->cfg, r->seqlen) / bench_nsa_flops(info->cfg, r->seqlen);
    fprintf(f, "\nN = %lld: dense/NSA useful-FLOP ratio %.2f (NSA's speedup at equal efficiency); "
               "load average before: %.2f\n",
            (long long)r->seqlen, ratio, r->load_before);
    fprintf(f, "%-34s %11s %9s %7s %8s %10s  %s\n", "method", "time ms", "GFLOP/s", "% peak",
            "vs NSA", "max|diff|", "how");
    for (int i = 0; i < BENCH_METHODS; i++) {
        const bench_method *m = &r->method[i];
        if (m->outcome != BENCH_MEASURED) {
            const char *what = m->outcome == BENCH_SKIPPED       ? "skipped"
                               : m->outcome == BENCH_UNAVAILABLE ? "unavailable"
                                                                 : "FAILED";
            fprintf(f, "%-34s %11s  %s\n", bench_method_name(i), what, m->note);
            continue;
        }
        const double g = bench_method_gflops(m);
        fprintf(f, "%-34s %11.2f %9.1f", bench_method_name(i), m->seconds * 1e3, g);
        if (info->peak_gflops > 0)
            fprintf(f, " %6.1f%%", 100.0 * g / info->peak_gflops);
        else
            fprintf(f, " %7s", "-");
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
    fprintf(f, "(GFLOP/s counts useful FLOPs, 2 (Dk+Dv) per query head and key attended; "
               "'vs NSA' = time / NSA's time; max|diff| against nsa_dense_forward's output)\n");
    fflush(f);
}

/* ----------------------------------------------------------------- JSON -- */

void bench_json_string(FILE *f, const char *key, const char *value)
{
    fprintf(f, ",\"%s\":\"", key);
    for (const char *c = value; *c != '\0'; c++) {
        if (*c == '"' || *c == '\\')
            fprintf(f, "\\%c", *c);
        else if ((unsigned char)*c < 0x20)
            fprintf(f, "\\u%04x", (unsigned)*c);
        else
            fputc(*c, f);
    }
    fputc('"', f);
}

void bench_json_number(FILE *f, const char *key, double value, int decimals)
{
    if (isfinite(value))
        fprintf(f, ",\"%s\":%.*f", key, decimals, value);
    else
        fprintf(f, ",\"%s\":null", key);
}

void bench_report_json(const bench_run_info *info, const bench_result *r)
{
    if (!info->opt->json)
        return;
    FILE *f = stdout;
    const nsa_config *c = info->cfg;
    const bench_method *m = r->method;
    const double peak = info->peak_gflops > 0 ? info->peak_gflops : NAN;
    const double bw = info->machine->bandwidth_gbs > 0 ? info->machine->bandwidth_gbs : NAN;
    static const char *const keys[BENCH_METHODS] = {"nsa", "dense", "dense_blas", "dense_dnnl"};
    fprintf(f, "{\"seqlen\":%lld", (long long)r->seqlen);
    for (int i = 0; i < BENCH_METHODS; i++) {
        char key[40];
        snprintf(key, sizeof key, "%s_ms", keys[i]);
        bench_json_number(f, key, bench_method_ms(&m[i]), 3);
    }
    bench_json_number(f, "speedup", bench_method_ms(&m[BENCH_DENSE]) / bench_method_ms(&m[BENCH_NSA]), 3);
    bench_json_number(f, "speedup_blas", bench_method_ms(&m[BENCH_DENSE_BLAS]) / bench_method_ms(&m[BENCH_NSA]), 3);
    bench_json_number(f, "speedup_dnnl", bench_method_ms(&m[BENCH_DENSE_DNNL]) / bench_method_ms(&m[BENCH_NSA]), 3);
    for (int i = 0; i < BENCH_METHODS; i++) {
        char key[40];
        snprintf(key, sizeof key, "%s_gflops", keys[i]);
        bench_json_number(f, key, bench_method_gflops(&m[i]), 2);
    }
    bench_json_number(f, "peak_gflops", peak, 2);
    bench_json_number(f, "pct_peak", 100.0 * bench_method_gflops(&m[BENCH_NSA]) / peak, 2);
    bench_json_number(f, "dense_pct_peak", 100.0 * bench_method_gflops(&m[BENCH_DENSE]) / peak, 2);
    bench_json_number(f, "bandwidth_gbs", bw, 2);
    bench_json_number(f, "flop_ratio", bench_dense_flops(c, r->seqlen) / bench_nsa_flops(c, r->seqlen), 3);
    bench_json_number(f, "dense_blas_max_diff", m[BENCH_DENSE_BLAS].max_diff, 9);
    bench_json_number(f, "dense_dnnl_max_diff", m[BENCH_DENSE_DNNL].max_diff, 9);
    bench_json_number(f, "loadavg", r->load_before, 2);
    fprintf(f, ",\"threads\":%d", info->threads);
    bench_json_string(f, "isa", nsa_isa_name(info->isa));
    fprintf(f, ",\"q_heads\":%d,\"kv_heads\":%d,\"dim_qk\":%d,\"dim_v\":%d", (int)c->num_q_heads,
            (int)c->num_kv_heads, (int)c->head_dim_qk, (int)c->head_dim_v);
    bench_json_string(f, "stat", info->opt->median ? "median" : "best");
    fprintf(f, ",\"repeats\":%d,\"rounds\":%d", (int)info->opt->repeats,
            (int)info->opt->rounds);
    bench_json_string(f, "dense_blas_how", m[BENCH_DENSE_BLAS].note);
    bench_json_string(f, "dense_dnnl_how", m[BENCH_DENSE_DNNL].note);
    bench_json_string(f, "cpu", info->machine->cpu);
    fprintf(f, "}\n");
    fflush(f);
}
