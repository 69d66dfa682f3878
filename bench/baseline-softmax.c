/* SPDX-License-Identifier: MIT */
/*
 * baseline-softmax.c — the row softmax between the two GEMMs of the dense
 * baselines (scores -> probabilities, causal tail -> 0, row sums). A
 * baseline whose softmax ran on libm's scalar expf would spend more time in
 * exp than in its GEMMs and flatter NSA, so this one is vectorised: 16-lane
 * GCC vector extensions and a Cephes-style polynomial exp (about 2 ulp),
 * the way PyTorch's CPU flash attention fuses its exp. The file is compiled
 * once per ISA with that ISA's flags (BENCH_ISA names the copy: base, avx2,
 * avx512), each copy into its own library, and the baselines call the best
 * one the host runs (baseline-common.c).
 */
#include <math.h>
#include <string.h>

#include "bench.h"

#ifndef BENCH_ISA
#error "compile with -DBENCH_ISA=base|avx2|avx512"
#endif
#define BENCH_NAME2(a, b) a##_##b
#define BENCH_NAME(a, b) BENCH_NAME2(a, b)

/* The helpers below pass 64-byte vectors by value; they are static and
 * inlined, so the ABI GCC warns about (for copies built without AVX-512)
 * never applies. */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

enum { W = 16 };
typedef float vf __attribute__((vector_size(W * sizeof(float))));
typedef int32_t vi __attribute__((vector_size(W * sizeof(int32_t))));

static inline vf splat(float x)
{
    const vf zero = {0};
    return zero + x;
}

static inline vf load(const float *p)
{
    vf v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline void store(float *p, vf v)
{
    memcpy(p, &v, sizeof v);
}

static inline vf vmax(vf a, vf b)
{
    const vi m = a > b;
    return (vf)(((vi)a & m) | ((vi)b & ~m));
}

/* exp(x) for x <= 0 (x >= -87 after clamping: no denormals). */
static inline vf vexp(vf x)
{
    const float magic = 12582912.0f; /* 1.5 * 2^23: adding it rounds to an integer */
    x = vmax(x, splat(-87.0f));
    const vf t = x * splat(1.44269504088896341f) + splat(magic);
    const vf n = t - splat(magic);
    const vf r = x - n * splat(0.693359375f) - n * splat(-2.12194440e-4f);
    vf p = splat(1.9875691500e-4f);
    p = p * r + splat(1.3981999507e-3f);
    p = p * r + splat(8.3334519073e-3f);
    p = p * r + splat(4.1665795894e-2f);
    p = p * r + splat(1.6666665459e-1f);
    p = p * r + splat(5.0000001201e-1f);
    p = p * (r * r) + r + splat(1.0f);
    /* t's low mantissa bits hold n: 2^n is (n + 127) << 23. */
    const vi e = ((vi)t - (vi)splat(magic) + 127) << 23;
    return p * (vf)e;
}

void BENCH_NAME(bench_softmax_rows, BENCH_ISA)(size_t m, size_t ncols, const int64_t *len,
                                               float *s, size_t lds, float *sum)
{
    vi lane;
    for (int i = 0; i < W; i++)
        lane[i] = i;
    for (size_t r = 0; r < m; r++) {
        float *row = s + r * lds;
        const size_t n = (size_t)len[r];
        vf vm = splat(-INFINITY);
        size_t j = 0;
        for (; j + W <= n; j += W)
            vm = vmax(vm, load(row + j));
        float max = -INFINITY;
        for (int i = 0; i < W; i++)
            max = fmaxf(max, vm[i]);
        for (; j < n; j++)
            max = fmaxf(max, row[j]);
        const vf vmaxs = splat(max);
        vf vsum = {0};
        for (j = 0; j < n; j += W) {
            const vi inside = (lane + (int32_t)j) < (int32_t)n;
            const vf e = (vf)((vi)vexp(load(row + j) - vmaxs) & inside);
            store(row + j, e);
            vsum += e;
        }
        if (j < ncols) /* j is n rounded up to W */
            memset(row + j, 0, (ncols - j) * sizeof *row);
        float total = 0.0f;
        for (int i = 0; i < W; i++)
            total += vsum[i];
        sum[r] = total;
    }
}
