/* SPDX-License-Identifier: MIT */
/*
 * kernels-mode.c — `nsa-bench kernels`: every kernel of the registry
 * (simd/ukernels.inc, expanded here as src/dispatch.c expands it) that the
 * host runs, within --isa, timed on one thread on the shapes the attention
 * loop gives it, next to the reference kernel of its slot. Each kernel is
 * also checked against the reference on the same inputs, so a fast kernel
 * that computes something else shows. This mode calls internal kernels, so
 * nsa-bench links the core library (libnsa_core.la), not only the public
 * one.
 *
 * Shapes: qk m=16 rows x 4 panels (64 keys) x dk=128; pv m=16 x nk=64 x
 * dv=128; softmax m=16 x nk=64 (dv=128 accumulators); gate_mix m=16 x
 * dv=128; pool l=32 x dim=128; qk_bf16, pv_bf16, qk_x3, pv_x3 and
 * qk_bf16_split as qk and pv (qk_x3's and qk_bf16_split's queries split
 * beforehand). qk and pv count 2 FLOPs per
 * multiply-add; the others count nominal work (see the footnote
 * printed with the table). A slot the registry gains later is listed as
 * not benchmarked until it gets a shape here; the build does not break.
 */
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"
#include "cpu_features.h"
#include "forward.h"
#include "split_keys.h"
#include "ukernels.h"

enum { M = 16, NP = 4, NK = NP * NSA_PANEL, DK = 128, DV = 128, POOL_L = 32 };

/* Every buffer of every slot; inputs are drawn once and shared by the
 * kernel and its reference. Each starts on a cache line, as the library's
 * own buffers do (tile loads of rows that straddle two lines cost twice). */
#define LINE _Alignas(64)
typedef struct buffers {
    LINE float q[M * DK];
    LINE float kp[NP * DK * NSA_PANEL];
    LINE float s[M * NK];
    LINE float p[M * NK];
    LINE float v[NK * DV];
    LINE float acc[M * DV];
    LINE float s_pristine[M * NK];
    float row_max[M], row_sum[M];
    int32_t lo[M], hi[M];
    float gates[M * 3], accs[3][M * DV], sums[3][M], out[M * DV];
    float weight[POOL_L], x[POOL_L * DV], y[DV];
    LINE uint16_t kp16[NP * DK * NSA_PANEL];
    LINE uint16_t v16[NK * DV];
    LINE uint16_t q3[3 * M * DK]; /* q, kp and v split */
    LINE uint16_t kp3[3 * NP * DK * NSA_PANEL];
    LINE uint16_t v3[3 * NK * DV];
} buffers;
#undef LINE

/* Kernels are kept as void (*)(void) and cast back to their slot's type
 * by the slot's runner: the registry's own prototypes (src/ukernels.h:
 * slot `x` has type nsa_x_ukernel) guarantee the type matches the name. */
typedef void generic_fn(void);

/* How one slot is benchmarked: one call on the buffers, the output of a
 * call, the work of a call (FLOPs, nominal for the non-GEMM slots), its shape
 * and its reference kernel. */
typedef struct slot_bench {
    const char *slot;
    const char *shape;
    double work;
    void (*call)(generic_fn *f, buffers *b);
    size_t (*output)(const buffers *b, float *out); /* floats written */
    generic_fn *ref;
    const char *ref_name;
} slot_bench;

static void call_qk(generic_fn *f, buffers *b)
{
    ((nsa_qk_ukernel *)f)(M, NP, DK, 0.088388f, b->q, DK, b->kp, b->s, NK, NULL);
}

static void call_pv(generic_fn *f, buffers *b)
{
    ((nsa_pv_ukernel *)f)(M, NK, DV, b->p, NK, b->v, DV, b->acc, DV, NULL);
}

/* softmax works in place: each call first restores the scores (a 4 KiB
 * copy, included in its time), and a fence lets the copy's narrow stores
 * land before the kernel's wide loads read them: loads that would take
 * their data from several pending stores stall (~130 ns a call on Zen 5),
 * which the forward's kernels, reading what qk stored as whole vectors, do
 * not. The running max already covers the tile, the common case of a long
 * row: no rescale (for kernels that skip it). */
static void call_softmax(generic_fn *f, buffers *b)
{
    memcpy(b->s, b->s_pristine, sizeof b->s);
    atomic_thread_fence(memory_order_seq_cst);
    ((nsa_softmax_ukernel *)f)(M, NK, b->lo, b->hi, b->s, NK, b->row_max, b->row_sum, DV,
                               b->acc, DV);
}

static void call_gate_mix(generic_fn *f, buffers *b)
{
    ((nsa_gate_mix_ukernel *)f)(M, DV, b->gates, b->accs[0], b->sums[0], b->accs[1], b->sums[1],
                                b->accs[2], b->sums[2], DV, b->out);
}

static void call_pool(generic_fn *f, buffers *b)
{
    ((nsa_pool_ukernel *)f)(POOL_L, DV, b->weight, b->x, DV, b->y);
}

static void call_qk_bf16(generic_fn *f, buffers *b)
{
    ((nsa_qk_bf16_ukernel *)f)(M, NP, DK, 0.088388f, b->q, DK, b->kp16, b->s, NK);
}

static void call_pv_bf16(generic_fn *f, buffers *b)
{
    ((nsa_pv_bf16_ukernel *)f)(M, NK, DV, b->p, NK, b->v16, DV, b->acc, DV);
}

static void call_qk_x3(generic_fn *f, buffers *b)
{
    ((nsa_qk_x3_ukernel *)f)(M, NP, DK, b->q3, DK, b->kp3, b->s, NK);
}

static void call_qk_bf16_split(generic_fn *f, buffers *b)
{
    ((nsa_qk_bf16_split_ukernel *)f)(M, NP, DK, b->q3, DK, b->kp16, b->s, NK);
}

static void call_pv_x3(generic_fn *f, buffers *b)
{
    ((nsa_pv_x3_ukernel *)f)(M, NK, DV, b->p, NK, b->v3, DV, b->acc, DV);
}

static size_t copy_out(float *out, const float *x, size_t n)
{
    memcpy(out, x, n * sizeof *x);
    return n;
}

static size_t out_qk(const buffers *b, float *out) { return copy_out(out, b->s, M * NK); }
static size_t out_pv(const buffers *b, float *out) { return copy_out(out, b->acc, M * DV); }
static size_t out_softmax(const buffers *b, float *out)
{
    return copy_out(out, b->s, M * NK) + copy_out(out + M * NK, b->row_sum, M);
}
static size_t out_gate_mix(const buffers *b, float *out) { return copy_out(out, b->out, M * DV); }
static size_t out_pool(const buffers *b, float *out) { return copy_out(out, b->y, DV); }

#define REF(fn) (generic_fn *)(fn), #fn
/* Work per call: qk and pv 2 FLOPs per multiply-add; softmax 4 per score
 * (max, subtract, exp, sum) + 1 per accumulator element rescaled;
 * gate_mix 5 per output (3 multiplies, 2 adds); pool 2 per multiply-add. */
static const slot_bench slots[] = {
    {"qk", "m=16 np=4 (64 keys) dk=128", 2.0 * M * NK * DK, call_qk, out_qk,
     REF(nsa_f32_qk_ukernel__ref)},
    {"pv", "m=16 nk=64 dv=128", 2.0 * M * NK * DV, call_pv, out_pv,
     REF(nsa_f32_pv_ukernel__ref)},
    {"softmax", "m=16 nk=64 dv=128", 4.0 * M * NK + (double)M * DV, call_softmax,
     out_softmax, REF(nsa_f32_softmax_ukernel__ref)},
    {"gate_mix", "m=16 dv=128", 5.0 * M * DV, call_gate_mix, out_gate_mix,
     REF(nsa_f32_gate_mix_ukernel__ref)},
    {"pool", "l=32 dim=128", 2.0 * POOL_L * DV, call_pool, out_pool,
     REF(nsa_f32_pool_ukernel__ref)},
    {"qk_bf16", "m=16 np=4 (64 keys) dk=128", 2.0 * M * NK * DK, call_qk_bf16,
     out_qk, REF(nsa_bf16_qk_ukernel__ref)},
    {"pv_bf16", "m=16 nk=64 dv=128", 2.0 * M * NK * DV, call_pv_bf16, out_pv,
     REF(nsa_bf16_pv_ukernel__ref)},
    {"qk_x3", "m=16 np=4 (64 keys) dk=128", 2.0 * M * NK * DK, call_qk_x3, out_qk,
     REF(nsa_x3_qk_ukernel__ref)},
    {"pv_x3", "m=16 nk=64 dv=128", 2.0 * M * NK * DV, call_pv_x3, out_pv,
     REF(nsa_x3_pv_ukernel__ref)},
    {"qk_bf16_split", "m=16 np=4 (64 keys) dk=128", 2.0 * M * NK * DK, call_qk_bf16_split,
     out_qk, REF(nsa_bf16_qk_split_ukernel__ref)},
};
#undef REF
enum { SLOTS = sizeof slots / sizeof slots[0] };

typedef struct kernel_entry {
    const char *slot; /* NULL ends the table */
    nsa_isa isa;
    const char *name;
    generic_fn *fn;
} kernel_entry;

static const kernel_entry registry[] = {
#define NSA_UKERNEL(kernel_isa, slot, fn) {#slot, kernel_isa, #fn, (generic_fn *)(fn)},
#include "ukernels.inc"
#undef NSA_UKERNEL
    {NULL, NSA_ISA_REF, NULL, NULL},
};

static float uniform(uint64_t *state)
{
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    return (float)((double)((*state * 2685821657736338717ull) >> 11) * 0x1.0p-53);
}

static void fill(float *x, size_t n, float lo, float hi, uint64_t *state)
{
    for (size_t i = 0; i < n; i++)
        x[i] = lo + (hi - lo) * uniform(state);
}

/* n bf16 values in [-1, 1] (the upper halves of fp32 ones). */
static void fill_bf16(uint16_t *x, int n, uint64_t *st)
{
    for (int i = 0; i < n; i++) {
        float f = 2.0f * uniform(st) - 1.0f;
        uint32_t bits;
        memcpy(&bits, &f, sizeof bits);
        x[i] = (uint16_t)(bits >> 16);
    }
}

static void init_buffers(buffers *b, uint64_t seed)
{
    uint64_t st = seed * 0x9E3779B97F4A7C15ull + 7;
    fill(b->q, M * DK, -1, 1, &st);
    float keys[NK * DK]; /* key rows, packed into kp and split into kp3 */
    fill(keys, NK * DK, -1, 1, &st);
    nsa_pack_panels(keys, DK, NK, DK, 0, NP, b->kp);
    nsa_pack_panels_x3(keys, DK, NK, DK, 0, NP, b->kp3);
    fill(b->p, M * NK, 0, 1, &st);
    fill(b->v, NK * DV, -1, 1, &st);
    fill(b->s_pristine, M * NK, -4, 4, &st);
    for (int r = 0; r < M; r++) {
        float mx = -INFINITY;
        for (int j = 0; j < NK; j++)
            mx = fmaxf(mx, b->s_pristine[r * NK + j]);
        b->row_max[r] = mx;
        b->row_sum[r] = 1.0f;
        b->lo[r] = 0;
        b->hi[r] = NK - 1;
    }
    fill(b->gates, M * 3, 0, 1, &st);
    for (int i = 0; i < 3; i++) {
        fill(b->accs[i], M * DV, -1, 1, &st);
        fill(b->sums[i], M, 1, 8, &st);
    }
    for (int j = 0; j < POOL_L; j++)
        b->weight[j] = 1.0f / POOL_L;
    fill(b->x, POOL_L * DV, -1, 1, &st);
    fill_bf16(b->kp16, NP * DK * NSA_PANEL, &st);
    fill_bf16(b->v16, NK * DV, &st);
    nsa_pack_values_x3(b->v, DV, NK, DV, 0, NK / 2, DV, b->v3);
    nsa_x3_split_ukernel__ref(M, DK, 0.088388f, b->q, DK, b->q3);
    memset(b->acc, 0, sizeof b->acc);
}

/* The output of one call from fresh state, into out. */
static size_t one_output(const slot_bench *sb, generic_fn *f, buffers *b, float *out)
{
    memset(b->acc, 0, sizeof b->acc);
    for (int r = 0; r < M; r++)
        b->row_sum[r] = 1.0f;
    sb->call(f, b);
    return sb->output(b, out);
}

/* Nanoseconds per call: batches of calls long enough (>= 20 ms) to make the
 * clock's resolution irrelevant; one warm-up batch, then the best (or
 * median) of `repeats` batches. */
typedef struct batch_arg {
    const slot_bench *sb;
    generic_fn *f;
    buffers *b;
    long calls;
} batch_arg;

static int run_batch(void *opaque)
{
    batch_arg *a = opaque;
    for (long i = 0; i < a->calls; i++)
        a->sb->call(a->f, a->b);
    return 0;
}

static double ns_per_call(const slot_bench *sb, generic_fn *f, buffers *b,
                          const bench_options *opt)
{
    batch_arg a = {.sb = sb, .f = f, .b = b, .calls = 16};
    for (;;) {
        double start = bench_now();
        run_batch(&a);
        double elapsed = bench_now() - start;
        if (elapsed >= 0.02 || a.calls > (1L << 30))
            break;
        a.calls *= elapsed > 0.002 ? (long)(0.025 / elapsed) + 1 : 8;
    }
    memset(b->acc, 0, sizeof b->acc);
    bench_timing t;
    bench_time(run_batch, &a, opt->repeats, &t);
    return bench_timing_pick(&t, opt->median) * 1e9 / (double)a.calls;
}

static const slot_bench *slot_named(const char *name)
{
    for (size_t i = 0; i < SLOTS; i++)
        if (strcmp(slots[i].slot, name) == 0)
            return &slots[i];
    return NULL;
}

static int selected(const kernel_entry *k, const bench_options *opt)
{
    return nsa_host_supports(k->isa) && (opt->max_isa < 0 || (int)k->isa <= opt->max_isa);
}

/* One row of the table (and of the JSON). */
static void report(FILE *f, const bench_options *opt, const slot_bench *sb, const char *name,
                   nsa_isa isa, double ns, double ref_ns, double diff, double peak)
{
    const double rate = sb->work / ns; /* GFLOP/s */
    fprintf(f, "%-9s %-34s %-7s %-27s %9.1f %8.2f %-7s", sb->slot, name, nsa_isa_name(isa),
            sb->shape, ns, rate, "GFLOP/s");
    if (peak > 0)
        fprintf(f, " %6.1f%%", 100.0 * rate / peak);
    else
        fprintf(f, " %7s", "-");
    fprintf(f, " %6.2fx %10.2e\n", ref_ns / ns, diff);
    if (opt->json) {
        printf("{\"slot\":\"%s\",\"kernel\":\"%s\",\"isa\":\"%s\",\"shape\":\"%s\","
               "\"ns_per_call\":%.2f,\"rate\":%.3f,\"unit\":\"%s\",\"peak_gflops\":%.2f,"
               "\"pct_peak\":%.2f,\"speedup_vs_ref\":%.3f,\"max_diff_vs_ref\":%.3g}\n",
               sb->slot, name, nsa_isa_name(isa), sb->shape, ns, rate, "GFLOP/s", peak,
               peak > 0 ? 100.0 * rate / peak : 0.0, ref_ns / ns, diff);
        fflush(stdout);
    }
}

int bench_kernels_mode(const bench_options *opt)
{
    buffers *b = aligned_alloc(64, sizeof *b);
    const size_t out_floats = M * NK + M * DV + M;
    float *want = malloc(out_floats * sizeof *want);
    float *got = malloc(out_floats * sizeof *got);
    if (b == NULL || want == NULL || got == NULL) {
        fprintf(stderr, "nsa-bench: out of memory\n");
        free(b);
        free(want);
        free(got);
        return 1;
    }
    init_buffers(b, opt->seed);
    bench_bind_to_core(0);
    bench_machine machine;
    bench_machine_describe(&machine);
    FILE *f = opt->json ? stderr : stdout;
    fprintf(f, "nsa-bench kernels, libnsa %s: %s, one thread, %s of %d batches of >= 20 ms; "
               "load average %.2f\n",
            nsa_version(), machine.cpu, opt->median ? "median" : "best", (int)opt->repeats,
            bench_loadavg());
    double peak[NSA_ISA_LAST + 1] = {0};
    for (int isa = NSA_ISA_REF; isa <= NSA_ISA_LAST; isa++)
        if (machine.isa_supported[isa] && (opt->max_isa < 0 || isa <= opt->max_isa)) {
            peak[isa] = bench_fma_peak((nsa_isa)isa, 1, 3);
            if (peak[isa] > 0)
                fprintf(f, "single-thread peak %-7s %7.1f GFLOP/s (%s)\n",
                        nsa_isa_name((nsa_isa)isa), peak[isa], bench_peak_label((nsa_isa)isa));
        }
    fprintf(f, "\n%-9s %-34s %-7s %-27s %9s %16s %7s %7s %10s\n", "slot", "kernel", "isa",
            "shape", "ns/call", "rate", "% peak", "vs ref", "max|diff|");
    int rc = 0;
    for (size_t s = 0; s < SLOTS; s++) {
        const slot_bench *sb = &slots[s];
        const size_t n = one_output(sb, sb->ref, b, want);
        const double ref_ns = ns_per_call(sb, sb->ref, b, opt);
        report(f, opt, sb, sb->ref_name, NSA_ISA_REF, ref_ns, ref_ns, 0.0, peak[NSA_ISA_REF]);
        for (const kernel_entry *k = registry; k->slot != NULL; k++) {
            if (strcmp(k->slot, sb->slot) != 0 || !selected(k, opt))
                continue;
            one_output(sb, k->fn, b, got);
            const double diff = bench_max_abs_diff(got, want, n);
            if (!(diff <= 1e-4))
                rc = 1;
            report(f, opt, sb, k->name, k->isa, ns_per_call(sb, k->fn, b, opt), ref_ns, diff,
                   peak[k->isa]);
        }
    }
    for (const kernel_entry *k = registry; k->slot != NULL; k++)
        if (slot_named(k->slot) == NULL && selected(k, opt))
            fprintf(f, "%-9s %-34s %-7s not benchmarked: nsa-bench has no shape for this slot "
                       "(bench/kernels-mode.c)\n",
                    k->slot, k->name, nsa_isa_name(k->isa));
    fprintf(f, "\n%% peak: of the single-thread FMA peak of the kernel's ISA (ref: the "
               "baseline ISA's). qk/pv count 2 FLOPs per multiply-add; softmax 4 per score + 1 "
               "per accumulator element, and its time includes restoring the 4 KiB score tile; "
               "gate_mix 5 per output; pool 2 per multiply-add; qk_bf16, pv_bf16, qk_x3, pv_x3 "
               "and qk_bf16_split as qk and pv. "
               "max|diff| is against the ref kernel on the same inputs "
               "(non-zero exit above 1e-4).\n");
    free(b);
    free(want);
    free(got);
    return rc;
}
