/* SPDX-License-Identifier: MIT */
/*
 * bf16-cvt-avx512.c — bf16 to fp32 (contract in src/ukernels.h), AVX-512:
 * widen 16 values to 32 bits and shift them into the upper half; the tail
 * is a masked load (AVX-512BW), so nothing past src[n - 1] is read.
 */
#include "avx512-helpers.h"
#include "ukernels.h"

void nsa_bf16_cvt_ukernel__avx512(size_t n, const uint16_t *src, float *dst)
{
    for (size_t i = 0; i < n; i += 16) {
        const __mmask16 mask = nsa_avx512_mask_first(n - i);
        const __m512i wide = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mask, src + i));
        _mm512_mask_storeu_ps(dst + i, mask, _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16)));
    }
}
