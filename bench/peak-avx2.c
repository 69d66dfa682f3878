/* SPDX-License-Identifier: MIT */
/*
 * peak-avx2.c — the AVX2 + FMA peak loop, compiled with configure's AVX2
 * flags (NSA_AVX2_CFLAGS) in a library of its own so that the rest of
 * nsa-bench stays baseline code. Twelve independent accumulators (of the 16
 * ymm registers; two hold the constants) cover the FMA latency (4-5 cycles)
 * times the two FMA ports of current x86 cores; the values stay in
 * registers, so the loop measures the FMA units alone. acc = acc * x + y
 * with x just below 1 converges to 1: no overflow, no denormal.
 */
#include <immintrin.h>

#include "bench.h"

/* Where the result goes, so the loop is not optimised away. */
static volatile float sink;

double bench_fma_loop_avx2(uint64_t iters)
{
    static volatile float x_seed = 0.9999999f, y_seed = 1e-7f;
    const __m256 x = _mm256_set1_ps(x_seed), y = _mm256_set1_ps(y_seed);
#define ACC(i) __m256 a##i = _mm256_set1_ps(1.0f + (float)(i) * 0x1p-10f)
    ACC(0); ACC(1); ACC(2); ACC(3); ACC(4); ACC(5); ACC(6); ACC(7); ACC(8); ACC(9); ACC(10); ACC(11);
#undef ACC
    for (uint64_t i = 0; i < iters; i++) {
#define STEP(i) a##i = _mm256_fmadd_ps(a##i, x, y)
        STEP(0); STEP(1); STEP(2); STEP(3); STEP(4); STEP(5);
        STEP(6); STEP(7); STEP(8); STEP(9); STEP(10); STEP(11);
#undef STEP
    }
    __m256 s = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)),
                             _mm256_add_ps(_mm256_add_ps(a4, a5), _mm256_add_ps(a6, a7)));
    s = _mm256_add_ps(s, _mm256_add_ps(_mm256_add_ps(a8, a9), _mm256_add_ps(a10, a11)));
    float lanes[8];
    _mm256_storeu_ps(lanes, s);
    sink = lanes[0] + lanes[1] + lanes[2] + lanes[3] + lanes[4] + lanes[5] + lanes[6] + lanes[7];
    return (double)iters * 12.0 /* accumulators */ * 8.0 /* lanes */ * 2.0;
}
