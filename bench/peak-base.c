/* SPDX-License-Identifier: MIT */
/*
 * peak-base.c — the peak loop of the baseline instruction set, the ceiling
 * of code compiled without ISA flags (the library's "ref" kernels): on
 * aarch64 a NEON FMA loop (Advanced SIMD is part of the baseline there); on
 * other targets 4-lane vectors (GCC vector extensions: SSE2 on x86-64) with
 * a separate multiply and add, since the baseline has no FMA and ISO C mode
 * does not contract a * x + y. Twelve independent accumulators hide the
 * latency; acc = acc * x + y with x just below 1 converges to 1.
 */
#include "bench.h"

/* Where the result goes, so the loop is not optimised away. */
static volatile float sink;

#if defined(__aarch64__)
#include <arm_neon.h>
typedef float32x4_t vec;
#define SPLAT(v) vdupq_n_f32(v)
#define STEP_OP(a, x, y) vfmaq_f32((y), (a), (x))
#define LANE_SUM(v) vaddvq_f32(v)
#else
typedef float vec __attribute__((vector_size(16)));
#define SPLAT(v) ((vec){(v), (v), (v), (v)})
#define STEP_OP(a, x, y) ((a) * (x) + (y))
#define LANE_SUM(v) ((v)[0] + (v)[1] + (v)[2] + (v)[3])
#endif

double bench_fma_loop_base(uint64_t iters)
{
    static volatile float x_seed = 0.9999999f, y_seed = 1e-7f;
    const float xs = x_seed, ys = y_seed;
    const vec x = SPLAT(xs), y = SPLAT(ys);
#define ACC(i) vec a##i = SPLAT(1.0f + (float)(i) * 0x1p-10f)
    ACC(0); ACC(1); ACC(2); ACC(3); ACC(4); ACC(5); ACC(6); ACC(7); ACC(8); ACC(9); ACC(10); ACC(11);
#undef ACC
    for (uint64_t i = 0; i < iters; i++) {
#define STEP(i) a##i = STEP_OP(a##i, x, y)
        STEP(0); STEP(1); STEP(2); STEP(3); STEP(4); STEP(5);
        STEP(6); STEP(7); STEP(8); STEP(9); STEP(10); STEP(11);
#undef STEP
    }
    vec s = ((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7)) + ((a8 + a9) + (a10 + a11));
    sink = LANE_SUM(s);
    return (double)iters * 12.0 /* accumulators */ * 4.0 /* lanes */ * 2.0;
}
