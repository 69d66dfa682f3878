/* SPDX-License-Identifier: MIT */
/*
 * bf16-cvt-avx2.c — bf16 to fp32 (contract in src/ukernels.h), AVX2: widen
 * 8 values to 32 bits and shift them into the upper half; the last n % 8 go
 * one at a time, so nothing past src[n - 1] is read.
 */
#include <string.h>

#include "avx2-helpers.h"
#include "ukernels.h"

void nsa_bf16_cvt_ukernel__avx2(size_t n, const uint16_t *src, float *dst)
{
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(src + i)));
        _mm256_storeu_ps(dst + i, _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16)));
    }
    for (; i < n; i++) {
        uint32_t bits = (uint32_t)src[i] << 16;
        memcpy(dst + i, &bits, sizeof bits);
    }
}
