/* SPDX-License-Identifier: MIT */
/*
 * f32-softmax-avx2.c — the online-softmax step (contract in
 * src/ukernels.h), AVX2 + FMA: a vector max over the row's columns, one
 * vectorised exp pass that also zeroes the columns outside them, and the
 * rescale of the row's accumulator (skipped when the maximum did not move).
 * Tails use masked loads and stores; nothing past column nk is touched.
 */
#include <math.h>

#include "avx2-helpers.h"
#include "ukernels.h"

static float row_max_of(const float *s, size_t first, size_t last)
{
    __m256 vmax = _mm256_set1_ps(-INFINITY);
    size_t j = first;
    for (; j + 8 <= last; j += 8)
        vmax = _mm256_max_ps(vmax, _mm256_loadu_ps(s + j));
    float max = nsa_avx2_hmax_ps(vmax);
    for (; j < last; j++)
        max = fmaxf(max, s[j]);
    return max;
}

/* s[j] = exp(s[j] - max) on [first, last), 0 elsewhere in [0, nk); returns
 * the sum. */
static float exponentiate(float *s, size_t nk, size_t first, size_t last, float max)
{
    const __m256 vmax = _mm256_set1_ps(max);
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256i vfirst = _mm256_set1_epi32((int)first), vlast = _mm256_set1_epi32((int)last);
    __m256 sum = _mm256_setzero_ps();
    for (size_t j = 0; j < nk; j += 8) {
        const __m256i index = _mm256_add_epi32(_mm256_set1_epi32((int)j), lane);
        const __m256i inside =
            _mm256_andnot_si256(_mm256_cmpgt_epi32(vfirst, index), _mm256_cmpgt_epi32(vlast, index));
        if (j + 8 <= nk) {
            __m256 e = nsa_avx2_exp_ps(_mm256_sub_ps(_mm256_loadu_ps(s + j), vmax));
            e = _mm256_and_ps(e, _mm256_castsi256_ps(inside));
            _mm256_storeu_ps(s + j, e);
            sum = _mm256_add_ps(sum, e);
        } else {
            const __m256i tail = nsa_avx2_mask_first(nk - j);
            __m256 e = nsa_avx2_exp_ps(_mm256_sub_ps(_mm256_maskload_ps(s + j, tail), vmax));
            e = _mm256_and_ps(e, _mm256_castsi256_ps(inside));
            _mm256_maskstore_ps(s + j, tail, e);
            sum = _mm256_add_ps(sum, e);
        }
    }
    return nsa_avx2_hsum_ps(sum);
}

static void scale_row(float *acc, size_t dv, float factor)
{
    const __m256 f = _mm256_set1_ps(factor);
    size_t c = 0;
    for (; c + 8 <= dv; c += 8)
        _mm256_storeu_ps(acc + c, _mm256_mul_ps(f, _mm256_loadu_ps(acc + c)));
    for (; c < dv; c++)
        acc[c] *= factor;
}

void nsa_f32_softmax_ukernel__avx2(size_t m, size_t nk, const int32_t *lo, const int32_t *hi,
                                   float *s, size_t lds, float *row_max, float *row_sum, size_t dv,
                                   float *acc, size_t ldacc)
{
    for (size_t r = 0; r < m; r++) {
        float *sr = s + r * lds;
        const size_t first = lo[r] > 0 ? (size_t)lo[r] : 0;
        const size_t last = hi[r] < (int32_t)nk - 1 ? (size_t)(hi[r] + 1) : nk; /* one past */
        if (lo[r] > hi[r] || first >= last) {
            exponentiate(sr, nk, 0, 0, 0.0f); /* zeroes the row */
            continue;
        }
        const float new_max = fmaxf(row_max[r], row_max_of(sr, first, last));
        const float sum = exponentiate(sr, nk, first, last, new_max);
        if (new_max != row_max[r]) {
            const float rescale = expf(row_max[r] - new_max);
            row_sum[r] *= rescale;
            scale_row(acc + r * ldacc, dv, rescale);
        }
        row_sum[r] += sum;
        row_max[r] = new_max;
    }
}
