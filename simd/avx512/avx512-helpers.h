/* SPDX-License-Identifier: MIT */
/*
 * avx512-helpers.h — small vector helpers shared by the AVX-512 kernels.
 * Static inline and included only by files compiled with the AVX-512 flags,
 * so no AVX-512 instruction can leak into the portable core.
 */
#ifndef NSA_AVX512_HELPERS_H
#define NSA_AVX512_HELPERS_H

#include <stddef.h>

#include <immintrin.h>

/* exp(x) for x <= 88, within 2 ulp; 0 below -87.33 (where expf underflows
 * to a denormal). Same method as nsa_avx2_exp_ps: x = n ln2 + r, a degree-6
 * polynomial for e^r, and 2^n applied with scalef. */
static inline __m512 nsa_avx512_exp_ps(__m512 x)
{
    const __m512 lowest = _mm512_set1_ps(-87.33654f);
    const __mmask16 underflow = _mm512_cmp_ps_mask(x, lowest, _CMP_LT_OQ);
    x = _mm512_max_ps(_mm512_min_ps(x, _mm512_set1_ps(88.0f)), lowest);
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return _mm512_maskz_scalef_ps((__mmask16)~underflow, p, n);
}

/* A mask selecting the first n lanes, 0 <= n <= 16. */
static inline __mmask16 nsa_avx512_mask_first(size_t n)
{
    return n >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << n) - 1u);
}

#endif /* NSA_AVX512_HELPERS_H */
