/* SPDX-License-Identifier: MIT */
/*
 * peak-avx512.c — the AVX-512 FMA peak loop, compiled with configure's
 * AVX-512 flags (NSA_AVX512_CFLAGS) in a library of its own so that the
 * rest of nsa-bench stays baseline code. Sixteen independent accumulators
 * cover the FMA latency (4 cycles) times the FMA ports (2 on Intel server
 * cores) with room to spare; the values stay in registers, so the loop
 * measures the FMA units alone. acc = acc * x + y with x just below 1
 * converges to 1: no overflow, no denormal.
 */
#include <immintrin.h>

#include "bench.h"

/* Where the result goes, so the loop is not optimised away. */
static volatile float sink;

double bench_fma_loop_avx512(uint64_t iters)
{
    static volatile float x_seed = 0.9999999f, y_seed = 1e-7f;
    const __m512 x = _mm512_set1_ps(x_seed), y = _mm512_set1_ps(y_seed);
#define ACC(i) __m512 a##i = _mm512_set1_ps(1.0f + (float)(i) * 0x1p-10f)
    ACC(0); ACC(1); ACC(2); ACC(3); ACC(4); ACC(5); ACC(6); ACC(7);
    ACC(8); ACC(9); ACC(10); ACC(11); ACC(12); ACC(13); ACC(14); ACC(15);
#undef ACC
    for (uint64_t i = 0; i < iters; i++) {
#define STEP(i) a##i = _mm512_fmadd_ps(a##i, x, y)
        STEP(0); STEP(1); STEP(2); STEP(3); STEP(4); STEP(5); STEP(6); STEP(7);
        STEP(8); STEP(9); STEP(10); STEP(11); STEP(12); STEP(13); STEP(14); STEP(15);
#undef STEP
    }
    __m512 s = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)),
                             _mm512_add_ps(_mm512_add_ps(a4, a5), _mm512_add_ps(a6, a7)));
    s = _mm512_add_ps(s, _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(a8, a9), _mm512_add_ps(a10, a11)),
                                       _mm512_add_ps(_mm512_add_ps(a12, a13), _mm512_add_ps(a14, a15))));
    sink = _mm512_reduce_add_ps(s);
    return (double)iters * 16.0 /* accumulators */ * 16.0 /* lanes */ * 2.0;
}
