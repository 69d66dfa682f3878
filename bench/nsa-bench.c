/* SPDX-License-Identifier: MIT */
/*
 * nsa-bench.c — the entry point of the benchmark, in the manner of oneDNN's
 * benchdnn: a mode word, then options. It parses the command line and hands
 * the options to the mode; everything measured lives in the other files of
 * bench/.
 *
 *   nsa-bench forward [--seqlen N] [--q-heads H] [--kv-heads H] [--dim-qk D]
 *                     [--dim-v D] [--threads T] [--isa X] [--repeats R]
 *                     [--median] [--json] [--sweep] [--sweep-min N]
 *                     [--sweep-max N] [--plot FILE] [--no-blas] [--no-dnnl]
 *                     [--no-dense] [--no-machine] [--blas-mode M]
 *                     [--blas-tile Q] [--bw-mib MIB] [--seed S]
 *   nsa-bench backward [the forward's options]
 *   nsa-bench kernels [--isa X] [--repeats R] [--json]
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"

static void usage(FILE *to)
{
    fprintf(to,
            "usage: nsa-bench forward [options]   NSA forward vs dense attention baselines\n"
            "       nsa-bench backward [options]  NSA backward vs the dense backward\n"
            "       nsa-bench decode [options]    one decode step vs a dense decode, bytes and GB/s\n"
            "       nsa-bench kernels [options]   each registry kernel vs the reference\n"
            "\n"
            "problem (paper defaults l=32 d=16 l'=64 n=16 w=512, mean compression, causal):\n"
            "  --seqlen N          tokens of the one sequence (default 8192)\n"
            "  --q-heads H         query heads (16)       --kv-heads H  KV heads (1)\n"
            "  --dim-qk D          query/key head dim (128) --dim-v D   value head dim (128)\n"
            "  --seed S            seed of the random inputs (1)\n"
            "machine:\n"
            "  --threads T         threads of every method (default: one per core)\n"
            "  --isa X             cap the library's kernels: ref, avx2, avx512, amx, neon\n"
            "timing:\n"
            "  --repeats R         timed runs after one warm-up (3; kernels: 5)\n"
            "  --rounds K          forward: time NSA and nsa_dense_forward K times each,\n"
            "                      alternating, and keep each one's best round (1)\n"
            "  --median            report the median of the runs (default: the best)\n"
            "output:\n"
            "  --json              one JSON object per size, one per line\n"
            "  --sweep             N = 1K, 2K, ... up to --sweep-max (64K), from --sweep-min (1K)\n"
            "  --plot FILE         the sweep's PNG plot (nsa-sweep.png)\n"
            "baselines:\n"
            "  --no-dense          skip nsa_dense_forward   --no-blas   skip OpenBLAS\n"
            "  --no-dnnl           skip oneDNN              --no-machine skip peak/bandwidth\n"
            "  --blas-mode M       auto | openblas (OpenBLAS threads) | tiles (pthreads) (auto)\n"
            "  --blas-tile Q       queries per dense-baseline tile (256; smaller when long)\n"
            "  --bw-mib MIB        bandwidth buffer (default 4 x L3, 256..2048 MiB)\n"
            "backward mode: the forward's options; no OpenBLAS or oneDNN baseline, no plot\n"
            "decode mode: one decode step at --context N (alias of --seqlen; --sweep: 4K ..\n"
            "  --sweep-max) against a dense decode on the same cache; --dtype f32|bf16 (both)\n"
            "kernels mode: one thread; takes --isa, --repeats, --median, --json, --seed\n");
}

static int parse_int(const char *name, const char *text, int64_t lo, int64_t hi, int64_t *value)
{
    char *end = NULL;
    long long v = strtoll(text, &end, 0);
    /* 8K, 64k: sizes may be written in units of 1024 */
    if (end != NULL && (*end == 'k' || *end == 'K') && end[1] == '\0') {
        v *= 1024;
        end++;
    }
    if (end == text || end == NULL || *end != '\0' || v < lo || v > hi) {
        fprintf(stderr, "nsa-bench: %s wants an integer in [%lld, %lld], not '%s'\n", name,
                (long long)lo, (long long)hi, text);
        return -1;
    }
    *value = v;
    return 0;
}

static int parse_isa(const char *text, int32_t *isa)
{
    for (int i = NSA_ISA_REF; i <= NSA_ISA_LAST; i++)
        if (strcmp(text, nsa_isa_name((nsa_isa)i)) == 0) {
            *isa = i;
            return 0;
        }
    fprintf(stderr, "nsa-bench: --isa wants ref, avx2, avx512, amx or neon, not '%s'\n", text);
    return -1;
}

int bench_parse_options(int argc, char **argv, bench_options *opt)
{
    *opt = (bench_options){.seqlen = 8192, .q_heads = 16, .kv_heads = 1, .dim_qk = 128,
                           .dim_v = 128, .threads = 0, .max_isa = -1, .repeats = 0, .rounds = 1,
                           .sweep_min = 1024, .sweep_max = 65536, .plot = "nsa-sweep.png",
                           .blas_mode = BENCH_BLAS_AUTO, .blas_tile = 256, .seed = 1,
                           .dtype = -1};
    if (argc < 2) {
        usage(stderr);
        return -1;
    }
    if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        usage(stdout);
        return 1;
    }
    opt->mode = argv[1];
    if (strcmp(opt->mode, "forward") != 0 && strcmp(opt->mode, "backward") != 0 &&
        strcmp(opt->mode, "decode") != 0 && strcmp(opt->mode, "kernels") != 0) {
        fprintf(stderr, "nsa-bench: unknown mode '%s' (forward, backward, decode or kernels)\n",
                opt->mode);
        return -1;
    }
    const int64_t big = (int64_t)1 << 40;
    for (int i = 2; i < argc; i++) {
        const char *name = argv[i];
        /* flags without a value */
        if (strcmp(name, "--help") == 0 || strcmp(name, "-h") == 0) {
            usage(stdout);
            return 1;
        }
        int *flag = strcmp(name, "--json") == 0       ? &opt->json
                    : strcmp(name, "--sweep") == 0    ? &opt->sweep
                    : strcmp(name, "--median") == 0   ? &opt->median
                    : strcmp(name, "--no-blas") == 0  ? &opt->no_blas
                    : strcmp(name, "--no-dnnl") == 0  ? &opt->no_dnnl
                    : strcmp(name, "--no-dense") == 0 ? &opt->no_dense
                    : strcmp(name, "--no-machine") == 0 ? &opt->no_machine
                                                        : NULL;
        if (flag != NULL) {
            *flag = 1;
            continue;
        }
        static const char *const valued[] = {
            "--seqlen", "--q-heads", "--kv-heads", "--dim-qk", "--dim-v", "--threads",
            "--repeats", "--rounds", "--sweep-min", "--sweep-max", "--blas-tile", "--bw-mib", "--seed",
            "--isa", "--plot", "--blas-mode", "--context", "--dtype"};
        int known = 0;
        for (size_t k = 0; k < sizeof valued / sizeof valued[0]; k++)
            known |= strcmp(name, valued[k]) == 0;
        if (!known) {
            fprintf(stderr, "nsa-bench: unknown option '%s' (see --help)\n", name);
            return -1;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "nsa-bench: %s needs a value\n", name);
            return -1;
        }
        const char *text = argv[++i];
        int64_t v = 0;
        int rc = 0;
        if (strcmp(name, "--seqlen") == 0 || strcmp(name, "--context") == 0) {
            rc = parse_int(name, text, 1, big, &v);
            opt->seqlen = v;
        } else if (strcmp(name, "--q-heads") == 0) {
            rc = parse_int(name, text, 1, 4096, &v);
            opt->q_heads = (int32_t)v;
        } else if (strcmp(name, "--kv-heads") == 0) {
            rc = parse_int(name, text, 1, 4096, &v);
            opt->kv_heads = (int32_t)v;
        } else if (strcmp(name, "--dim-qk") == 0) {
            rc = parse_int(name, text, 1, 4096, &v);
            opt->dim_qk = (int32_t)v;
        } else if (strcmp(name, "--dim-v") == 0) {
            rc = parse_int(name, text, 1, 4096, &v);
            opt->dim_v = (int32_t)v;
        } else if (strcmp(name, "--threads") == 0) {
            rc = parse_int(name, text, 0, 4096, &v);
            opt->threads = (int32_t)v;
        } else if (strcmp(name, "--repeats") == 0) {
            rc = parse_int(name, text, 1, 100000, &v);
            opt->repeats = (int32_t)v;
        } else if (strcmp(name, "--rounds") == 0) {
            rc = parse_int(name, text, 1, 1000, &v);
            opt->rounds = (int32_t)v;
        } else if (strcmp(name, "--sweep-min") == 0) {
            rc = parse_int(name, text, 1, big, &v);
            opt->sweep_min = v;
        } else if (strcmp(name, "--sweep-max") == 0) {
            rc = parse_int(name, text, 1, big, &v);
            opt->sweep_max = v;
        } else if (strcmp(name, "--blas-tile") == 0) {
            rc = parse_int(name, text, 1, 1 << 20, &v);
            opt->blas_tile = (int32_t)v;
        } else if (strcmp(name, "--bw-mib") == 0) {
            rc = parse_int(name, text, 1, 1 << 20, &v);
            opt->bw_mib = v;
        } else if (strcmp(name, "--seed") == 0) {
            rc = parse_int(name, text, 0, INT64_MAX, &v);
            opt->seed = (uint64_t)v;
        } else if (strcmp(name, "--isa") == 0) {
            rc = parse_isa(text, &opt->max_isa);
        } else if (strcmp(name, "--plot") == 0) {
            opt->plot = text;
        } else if (strcmp(name, "--dtype") == 0) {
            if (strcmp(text, "f32") == 0 || strcmp(text, "fp32") == 0)
                opt->dtype = NSA_DTYPE_F32;
            else if (strcmp(text, "bf16") == 0)
                opt->dtype = NSA_DTYPE_BF16;
            else {
                fprintf(stderr, "nsa-bench: --dtype wants f32 or bf16\n");
                rc = -1;
            }
        } else if (strcmp(name, "--blas-mode") == 0) {
            if (strcmp(text, "auto") == 0)
                opt->blas_mode = BENCH_BLAS_AUTO;
            else if (strcmp(text, "openblas") == 0)
                opt->blas_mode = BENCH_BLAS_OPENBLAS;
            else if (strcmp(text, "tiles") == 0)
                opt->blas_mode = BENCH_BLAS_TILES;
            else {
                fprintf(stderr, "nsa-bench: --blas-mode wants auto, openblas or tiles\n");
                rc = -1;
            }
        } else {
            fprintf(stderr, "nsa-bench: unknown option '%s' (see --help)\n", name);
            rc = -1;
        }
        if (rc != 0)
            return -1;
    }
    if (opt->repeats == 0)
        opt->repeats = strcmp(opt->mode, "kernels") == 0 ? 5 : 3;
    if (opt->q_heads % opt->kv_heads != 0) {
        fprintf(stderr, "nsa-bench: --q-heads must be a multiple of --kv-heads\n");
        return -1;
    }
    if (opt->sweep && opt->sweep_min > opt->sweep_max) {
        fprintf(stderr, "nsa-bench: --sweep-min is above --sweep-max\n");
        return -1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    bench_options opt;
    int rc = bench_parse_options(argc, argv, &opt);
    if (rc != 0)
        return rc > 0 ? 0 : 2;
    if (strcmp(opt.mode, "kernels") == 0)
        return bench_kernels_mode(&opt);
    if (strcmp(opt.mode, "decode") == 0)
        return bench_decode_mode(&opt);
    return strcmp(opt.mode, "backward") == 0 ? bench_backward_mode(&opt)
                                              : bench_forward_mode(&opt);
}
