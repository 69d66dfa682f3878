/* SPDX-License-Identifier: MIT */
/*
 * plot.c — the picture of a sweep: time of every method against N (log-log)
 * and NSA's speedup over each dense method against N, next to the
 * dense/NSA FLOP ratio (what NSA would gain at equal efficiency). It runs
 * gnuplot as a subprocess with the data inline, using the pngcairo terminal
 * when gnuplot has it and png otherwise. Without gnuplot it says so; the
 * numbers have been printed already.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench.h"

/* Is there an executable `name` on PATH? */
static int on_path(const char *name)
{
    const char *path = getenv("PATH");
    if (path == NULL || *path == '\0')
        path = "/usr/bin:/bin";
    char buf[4096];
    while (*path != '\0') {
        size_t len = strcspn(path, ":");
        if (len > 0 && len + strlen(name) + 2 < sizeof buf) {
            memcpy(buf, path, len);
            snprintf(buf + len, sizeof buf - len, "/%s", name);
            if (access(buf, X_OK) == 0)
                return 1;
        }
        path += len;
        if (*path == ':')
            path++;
    }
    return 0;
}

/* A gnuplot single-quoted string: a quote is written twice. */
static void quoted(FILE *g, const char *s)
{
    fputc('\'', g);
    for (; *s != '\0'; s++) {
        if (*s == '\'')
            fputc('\'', g);
        fputc(*s, g);
    }
    fputc('\'', g);
}

static void value(FILE *g, const bench_method *m)
{
    if (m->outcome == BENCH_MEASURED)
        fprintf(g, " %.6g", m->seconds * 1e3);
    else
        fprintf(g, " ?");
}

int bench_plot_sweep(const bench_run_info *info, const bench_result *results, int count,
                     const char *path)
{
    if (!on_path("gnuplot")) {
        fprintf(stderr, "nsa-bench: gnuplot not found (Debian: gnuplot-nox); no plot written, "
                        "the numbers are above\n");
        return -1;
    }
    FILE *g = popen("gnuplot", "w");
    if (g == NULL) {
        fprintf(stderr, "nsa-bench: could not start gnuplot; no plot written\n");
        return -1;
    }
    const nsa_config *c = info->cfg;
    fprintf(g, "if (strstrt(GPVAL_TERMINALS, 'pngcairo') > 0) {\n"
               "  set terminal pngcairo size 1400,560 font ',10'\n"
               "} else {\n"
               "  set terminal png size 1400,560\n"
               "}\n");
    fprintf(g, "set output ");
    quoted(g, path);
    fprintf(g, "\nset datafile missing '?'\n");
    fprintf(g, "$data << EOD\n");
    for (int i = 0; i < count; i++) {
        const bench_result *r = &results[i];
        fprintf(g, "%lld", (long long)r->seqlen);
        for (int mth = 0; mth < BENCH_METHODS; mth++)
            value(g, &r->method[mth]);
        fprintf(g, " %.6g\n", bench_dense_flops(c, r->seqlen) / bench_nsa_flops(c, r->seqlen));
    }
    fprintf(g, "EOD\n");
    fprintf(g, "set xtics (");
    for (int i = 0; i < count; i++) {
        const long long n = (long long)results[i].seqlen;
        if (n % 1024 == 0)
            fprintf(g, "%s'%lldK' %lld", i ? ", " : "", n / 1024, n);
        else
            fprintf(g, "%s'%lld' %lld", i ? ", " : "", n, n);
    }
    fprintf(g, ")\n");
    /* A margin either side, so the end tics get their labels. */
    fprintf(g, "set xrange [%g:%g]\n", (double)results[0].seqlen / 1.25,
            (double)results[count - 1].seqlen * 1.25);
    fprintf(g, "set multiplot layout 1,2 title 'libnsa %s: NSA vs dense causal attention, "
               "Hq=%d Hkv=%d Dk=%d Dv=%d, %d threads, isa=%s, %s of %d runs'\n",
            nsa_version(), (int)c->num_q_heads, (int)c->num_kv_heads, (int)c->head_dim_qk,
            (int)c->head_dim_v, info->threads, nsa_isa_name(info->isa),
            info->opt->median ? "median" : "best", (int)info->opt->repeats);
    fprintf(g, "set grid\nset key top left\nset xlabel 'N (tokens)'\n"
               "set logscale x 2\nset logscale y 10\nset ylabel 'time (ms), log scale'\n");
    /* One colour per method in both panels; methods never measured are
     * left out (gnuplot would warn about empty columns). */
    static const char *const colours[BENCH_METHODS] = {"#000000", "#1f77b4", "#2ca02c",
                                                        "#d62728"};
    static const char *const titles[BENCH_METHODS] = {"NSA (nsa\\_forward)", "dense libnsa",
                                                      "dense OpenBLAS", "dense oneDNN"};
    int measured[BENCH_METHODS] = {0};
    for (int i = 0; i < count; i++)
        for (int mth = 0; mth < BENCH_METHODS; mth++)
            measured[mth] |= results[i].method[mth].outcome == BENCH_MEASURED;
    const char *sep = "plot ";
    for (int mth = 0; mth < BENCH_METHODS; mth++)
        if (measured[mth]) {
            fprintf(g, "%s$data using 1:%d with linespoints lw %d lc rgb '%s' title '%s'", sep,
                    mth + 2, mth == BENCH_NSA ? 3 : 2, colours[mth], titles[mth]);
            sep = ", \\\n     ";
        }
    fprintf(g, "\nunset logscale y\nset ylabel 'speedup of NSA (dense time / NSA time)'\n"
               "set yrange [0:*]\n");
    sep = "plot ";
    for (int mth = BENCH_DENSE; mth < BENCH_METHODS; mth++)
        if (measured[mth] && measured[BENCH_NSA]) {
            fprintf(g, "%s$data using 1:($%d/$2) with linespoints lw 2 lc rgb '%s' title 'vs %s'",
                    sep, mth + 2, colours[mth], titles[mth]);
            sep = ", \\\n     ";
        }
    fprintf(g, "%s$data using 1:6 with lines dt 2 lw 2 lc rgb '#7f7f7f' "
               "title 'dense/NSA FLOP ratio (ceiling at equal efficiency)', \\\n"
               "     1 with lines lc rgb '#bbbbbb' notitle\n", sep);
    fprintf(g, "unset multiplot\n");
    int status = pclose(g);
    if (status != 0) {
        fprintf(stderr, "nsa-bench: gnuplot failed (status %d); no plot written\n",
                WIFEXITED(status) ? WEXITSTATUS(status) : -1);
        return -1;
    }
    fprintf(info->opt->json ? stderr : stdout, "plot: %s\n", path);
    return 0;
}
