/* SPDX-License-Identifier: MIT */
/*
 * avx512-helpers.h — small vector helpers shared by the AVX-512 kernels.
 * Static inline and included only by files compiled with the AVX-512 flags,
 * so no AVX-512 instruction can leak into the portable core.
 */
#ifndef NSA_AVX512_HELPERS_H
#define NSA_AVX512_HELPERS_H

#include <stddef.h>
#include <stdint.h>

#include <immintrin.h>

/* exp(x) for x <= 0 (softmax arguments), within 2 ulp; x below -88 gives
 * exp(-88), a negligible 6e-39 where expf would underflow. Cody-Waite
 * reduction x = n ln2 + r with |r| <= ln2 / 2, a degree-5 polynomial for
 * e^r (coefficients fitted for minimum relative error), and scalef for 2^n:
 * 11 instructions for 16 values. Larger x gives garbage, which callers mask. */
static inline __m512 nsa_avx512_exp_ps(__m512 x)
{
    x = _mm512_max_ps(x, _mm512_set1_ps(-88.0f));
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(8.290312648e-3f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.189793029e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.666763623e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.999914952e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(9.999997072e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}

/* 16 pairs of bf16 (the paired layout of ukernels.h; under mask, by pair:
 * the rest read as 0, not read at all) widened exactly to fp32: the first
 * word of each pair into `even`, the second into `odd`. */
static inline void nsa_avx512_load_bf16_pairs(__mmask16 mask, const uint16_t *x, __m512 *even,
                                              __m512 *odd)
{
    const __m512i w = _mm512_maskz_loadu_epi32(mask, x);
    *even = _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
    *odd = _mm512_castsi512_ps(_mm512_and_si512(w, _mm512_set1_epi32((int)0xffff0000u)));
}

/* A mask selecting the first min(n, 16) lanes. */
static inline __mmask16 nsa_avx512_mask_first(size_t n)
{
    return n >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << n) - 1u);
}

#endif /* NSA_AVX512_HELPERS_H */
