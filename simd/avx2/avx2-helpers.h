/* SPDX-License-Identifier: MIT */
/*
 * avx2-helpers.h — small vector helpers shared by the AVX2 kernels. Static
 * inline and included only by files compiled with the AVX2 flags, so no
 * AVX2 instruction can leak into the portable core.
 */
#ifndef NSA_AVX2_HELPERS_H
#define NSA_AVX2_HELPERS_H

#include <stddef.h>

#include <immintrin.h>

/* exp(x) for x <= 88, within 2 ulp; 0 below -87.33 (where expf underflows
 * to a denormal). Cephes' range reduction x = n ln2 + r, |r| <= ln2 / 2, a
 * degree-6 polynomial for e^r, and 2^n built in the exponent bits. */
static inline __m256 nsa_avx2_exp_ps(__m256 x)
{
    const __m256 lowest = _mm256_set1_ps(-87.33654f);
    const __m256 underflow = _mm256_cmp_ps(x, lowest, _CMP_LT_OQ);
    x = _mm256_max_ps(_mm256_min_ps(x, _mm256_set1_ps(88.0f)), lowest);
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    const __m256i biased = _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127));
    const __m256 two_n = _mm256_castsi256_ps(_mm256_slli_epi32(biased, 23));
    return _mm256_andnot_ps(underflow, _mm256_mul_ps(p, two_n));
}

static inline float nsa_avx2_hsum_ps(__m256 v)
{
    __m128 x = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    x = _mm_add_ps(x, _mm_movehl_ps(x, x));
    x = _mm_add_ss(x, _mm_movehdup_ps(x));
    return _mm_cvtss_f32(x);
}

static inline float nsa_avx2_hmax_ps(__m256 v)
{
    __m128 x = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    x = _mm_max_ps(x, _mm_movehl_ps(x, x));
    x = _mm_max_ss(x, _mm_movehdup_ps(x));
    return _mm_cvtss_f32(x);
}

/* A load/store mask selecting the first n lanes, 0 <= n <= 8. */
static inline __m256i nsa_avx2_mask_first(size_t n)
{
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)n), lane);
}

#endif /* NSA_AVX2_HELPERS_H */
