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

/* bf16 in pairs (the paired layout of ukernels.h): a vector of 8 pairs of
 * words, one pair per 32-bit lane, widens exactly to two vectors of fp32,
 * one instruction each. The first word of a pair is the low half of its
 * lane, so a shift puts it in the upper half. The second word is the upper
 * half already; a blend takes it from the pairs and the zero low half from
 * the first's vector, so no mask constant takes a register, and the pairs
 * may come straight from memory (the blend's memory operand) instead of
 * staying in one. */
static inline __m256 nsa_avx2_bf16_first(__m256i pairs)
{
    return _mm256_castsi256_ps(_mm256_slli_epi32(pairs, 16));
}

/* first: nsa_avx2_bf16_first(pairs). */
static inline __m256 nsa_avx2_bf16_second(__m256 first, __m256i pairs)
{
    return _mm256_castsi256_ps(_mm256_blend_epi16(_mm256_castps_si256(first), pairs, 0xaa));
}

/* 8 pairs of bf16 (16 words) at x. */
static inline __m256i nsa_avx2_load_pairs(const uint16_t *x)
{
    return _mm256_loadu_si256((const __m256i *)x);
}

/* The first n pairs at x (0 <= n <= 8) in the low lanes, 0 in the others;
 * nothing past x[2 n - 1] is read (a partial vector goes through a zeroed
 * buffer, as x need not be 4-byte aligned for a 32-bit masked load). */
static inline __m256i nsa_avx2_load_pairs_first(const uint16_t *x, size_t n)
{
    if (n >= 8)
        return nsa_avx2_load_pairs(x);
    uint16_t part[16] = {0};
    for (size_t i = 0; i < 2 * n; i++)
        part[i] = x[i];
    return nsa_avx2_load_pairs(part);
}

#endif /* NSA_AVX2_HELPERS_H */
