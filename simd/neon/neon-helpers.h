/* SPDX-License-Identifier: MIT */
/*
 * neon-helpers.h — small vector helpers shared by the NEON (aarch64 Advanced
 * SIMD) kernels. Static inline and included only by the files of
 * libnsa_neon.la, so the kernels of one ISA share one exp and one way of
 * handling tails. Advanced SIMD is part of the aarch64 baseline, so these
 * need no extra compiler flags; they still stay out of the portable core,
 * which must build for every architecture.
 *
 * NEON has no masked loads or stores: a tail of 1..3 floats is moved lane by
 * lane (nsa_neon_load_first, nsa_neon_store_first), so a kernel never
 * touches memory past the last column it was given.
 */
#ifndef NSA_NEON_HELPERS_H
#define NSA_NEON_HELPERS_H

#include <stddef.h>
#include <stdint.h>

#include <arm_neon.h>

/* exp(x) for x <= 88, within 2 ulp; 0 below -87.33 (where expf underflows
 * to a denormal). The same method and constants as nsa_avx2_exp_ps, so both
 * ISAs round alike: Cephes' range reduction x = n ln2 + r, |r| <= ln2 / 2
 * (ln2 split in two parts so n ln2 is exact), a degree-6 polynomial for e^r,
 * and 2^n built in the exponent bits. */
static inline float32x4_t nsa_neon_exp_f32(float32x4_t x)
{
    const float32x4_t lowest = vdupq_n_f32(-87.33654f);
    const uint32x4_t underflow = vcltq_f32(x, lowest);
    x = vmaxq_f32(vminq_f32(x, vdupq_n_f32(88.0f)), lowest);
    /* n = round-to-nearest-even(x / ln2), as _MM_FROUND_TO_NEAREST_INT. */
    const float32x4_t n = vrndnq_f32(vmulq_f32(x, vdupq_n_f32(1.44269504088896341f)));
    float32x4_t r = vfmsq_f32(x, n, vdupq_n_f32(0.693359375f));
    r = vfmsq_f32(r, n, vdupq_n_f32(-2.12194440e-4f));
    float32x4_t p = vdupq_n_f32(1.9875691500e-4f);
    p = vfmaq_f32(vdupq_n_f32(1.3981999507e-3f), p, r);
    p = vfmaq_f32(vdupq_n_f32(8.3334519073e-3f), p, r);
    p = vfmaq_f32(vdupq_n_f32(4.1665795894e-2f), p, r);
    p = vfmaq_f32(vdupq_n_f32(1.6666665459e-1f), p, r);
    p = vfmaq_f32(vdupq_n_f32(5.0000001201e-1f), p, r);
    p = vfmaq_f32(vaddq_f32(r, vdupq_n_f32(1.0f)), p, vmulq_f32(r, r));
    /* n is integral and in [-126, 127], so the conversion is exact. */
    const int32x4_t biased = vaddq_s32(vcvtq_s32_f32(n), vdupq_n_s32(127));
    const float32x4_t two_n = vreinterpretq_f32_s32(vshlq_n_s32(biased, 23));
    const uint32x4_t e = vreinterpretq_u32_f32(vmulq_f32(p, two_n));
    return vreinterpretq_f32_u32(vbicq_u32(e, underflow));
}

static inline float nsa_neon_hsum_f32(float32x4_t v)
{
    return vaddvq_f32(v);
}

static inline float nsa_neon_hmax_f32(float32x4_t v)
{
    return vmaxvq_f32(v);
}

/* The first n floats at p (0 <= n <= 4) in the low lanes, 0 in the others;
 * nothing past p[n - 1] is read. */
static inline float32x4_t nsa_neon_load_first(const float *p, size_t n)
{
    if (n >= 4)
        return vld1q_f32(p);
    float32x4_t v = vdupq_n_f32(0.0f);
    if (n >= 1)
        v = vld1q_lane_f32(p, v, 0);
    if (n >= 2)
        v = vld1q_lane_f32(p + 1, v, 1);
    if (n >= 3)
        v = vld1q_lane_f32(p + 2, v, 2);
    return v;
}

/* Stores the low n lanes of v at p (0 <= n <= 4); nothing past p[n - 1] is
 * written. */
static inline void nsa_neon_store_first(float *p, float32x4_t v, size_t n)
{
    if (n >= 4) {
        vst1q_f32(p, v);
        return;
    }
    if (n >= 1)
        vst1q_lane_f32(p, v, 0);
    if (n >= 2)
        vst1q_lane_f32(p + 1, v, 1);
    if (n >= 3)
        vst1q_lane_f32(p + 2, v, 2);
}

/* bf16 in pairs (the paired layout of ukernels.h): a vector of 4 pairs of
 * words, one pair per 32-bit lane, widens exactly to two vectors of fp32,
 * one instruction each. The first word of a pair is the low half of its
 * lane, so a shift (SHL #16) puts it in the upper half; the second word is
 * the upper half already, so a mask (AND) clears the first from under it. */
static inline float32x4_t nsa_neon_bf16_first(uint16x8_t pairs)
{
    return vreinterpretq_f32_u32(vshlq_n_u32(vreinterpretq_u32_u16(pairs), 16));
}

static inline float32x4_t nsa_neon_bf16_second(uint16x8_t pairs)
{
    return vreinterpretq_f32_u32(vandq_u32(vreinterpretq_u32_u16(pairs), vdupq_n_u32(0xffff0000u)));
}

/* The first n pairs at p (0 <= n <= 4) in the low lanes, 0 in the others;
 * nothing past p[2 n - 1] is read. */
static inline uint16x8_t nsa_neon_load_pairs_first(const uint16_t *p, size_t n)
{
    if (n >= 4)
        return vld1q_u16(p);
    uint16_t part[8] = {0};
    for (size_t i = 0; i < 2 * n; i++)
        part[i] = p[i];
    return vld1q_u16(part);
}

#endif /* NSA_NEON_HELPERS_H */
