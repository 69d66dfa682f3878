/* SPDX-License-Identifier: MIT */
/*
 * avx2-helpers.h — small vector helpers shared by the AVX2 kernels. Static
 * inline and included only by files compiled with the AVX2 flags, so no
 * AVX2 instruction can leak into the portable core.
 */
#ifndef NSA_AVX2_HELPERS_H
#define NSA_AVX2_HELPERS_H

#include <stddef.h>
#include <stdint.h>

#include <immintrin.h>

/* exp(x) for x <= 0 (softmax arguments), within 2 ulp; x below -87 gives
 * exp(-87), a negligible 1.6e-38 where expf would underflow. Cody-Waite
 * reduction x = n ln2 + r with |r| <= ln2 / 2, a degree-5 polynomial for
 * e^r (coefficients fitted for minimum relative error), and 2^n built in the
 * exponent bits (n >= -126 keeps it a normal number). Larger x gives
 * garbage, which callers mask. */
static inline __m256 nsa_avx2_exp_ps(__m256 x)
{
    x = _mm256_max_ps(x, _mm256_set1_ps(-87.0f));
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(8.290312648e-3f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.189793029e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.666763623e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.999914952e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(9.999997072e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    const __m256i biased = _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127));
    return _mm256_mul_ps(p, _mm256_castsi256_ps(_mm256_slli_epi32(biased, 23)));
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

/* 8 bf16 values widened exactly to fp32: zero-extend each to 32 bits and
 * shift it into the upper half. */
static inline __m256 nsa_avx2_load_bf16(const uint16_t *x)
{
    const __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)x));
    return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
}

/* The first n bf16 values at x (0 <= n <= 8) widened in the low lanes, 0 in
 * the others; nothing past x[n - 1] is read (AVX2 has no 16-bit masked
 * load, so a partial vector goes through a zeroed buffer). */
static inline __m256 nsa_avx2_load_bf16_first(const uint16_t *x, size_t n)
{
    if (n >= 8)
        return nsa_avx2_load_bf16(x);
    uint16_t part[8] = {0};
    for (size_t i = 0; i < n; i++)
        part[i] = x[i];
    return nsa_avx2_load_bf16(part);
}

#endif /* NSA_AVX2_HELPERS_H */
