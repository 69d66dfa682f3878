/* SPDX-License-Identifier: MIT */
/*
 * bf16-cvt-neon.c — bf16 to fp32 (contract in src/ukernels.h), aarch64
 * Advanced SIMD: the conversion of bf16 keys and values on aarch64 CPUs.
 * A bf16 is the upper half of an fp32, so one widening shift left by 16
 * (vshll_n_u16) converts 4 values exactly; 8 go per iteration, then 4, and
 * the last n % 4 one at a time, so nothing past src[n - 1] is read and
 * nothing past dst[n - 1] is written.
 */
#include <string.h>

#include "neon-helpers.h"
#include "ukernels.h"

void nsa_bf16_cvt_ukernel__neon(size_t n, const uint16_t *src, float *dst)
{
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const uint16x8_t half = vld1q_u16(src + i);
        vst1q_f32(dst + i, vreinterpretq_f32_u32(vshll_n_u16(vget_low_u16(half), 16)));
        vst1q_f32(dst + i + 4, vreinterpretq_f32_u32(vshll_high_n_u16(half, 16)));
    }
    for (; i + 4 <= n; i += 4)
        vst1q_f32(dst + i, vreinterpretq_f32_u32(vshll_n_u16(vld1_u16(src + i), 16)));
    for (; i < n; i++) {
        const uint32_t bits = (uint32_t)src[i] << 16;
        memcpy(dst + i, &bits, sizeof bits);
    }
}
