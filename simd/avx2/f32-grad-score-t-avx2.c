/* SPDX-License-Identifier: MIT */
/*
 * f32-grad-score-t-avx2.c — the backward's key side (contract in
 * src/ukernels.h), AVX2 + FMA.
 *
 * Works on 8 rows x 8 columns at a time: each row's 8 probabilities and
 * score gradients are one vector (exp under the row's column mask), then
 * both 8 x 8 blocks are transposed in registers (unpack, shuffle, 128-bit
 * permute) and stored as 8 key rows, masked to the rows that exist. Nothing
 * outside a row's columns of s or dp is read.
 */
#include "avx2-helpers.h"
#include "ukernels.h"

static inline __m256i columns_inside(size_t j, size_t first, size_t last)
{
    const __m256i index = _mm256_add_epi32(_mm256_set1_epi32((int)j),
                                           _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    return _mm256_andnot_si256(_mm256_cmpgt_epi32(_mm256_set1_epi32((int)first), index),
                               _mm256_cmpgt_epi32(_mm256_set1_epi32((int)last), index));
}

/* x[i] holds row i of an 8 x 8 block; afterwards x[j] holds column j. */
static inline void transpose_8x8(__m256 x[8])
{
    __m256 t[8], u[8];
#pragma GCC unroll 4
    for (int i = 0; i < 8; i += 2) {
        t[i] = _mm256_unpacklo_ps(x[i], x[i + 1]);
        t[i + 1] = _mm256_unpackhi_ps(x[i], x[i + 1]);
    }
    /* Per 128-bit lane L, u[4a + b] is column 4L + b of rows 4a .. 4a+3. */
#pragma GCC unroll 2
    for (int i = 0; i < 8; i += 4) {
        u[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
        u[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xee);
        u[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
        u[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xee);
    }
#pragma GCC unroll 4
    for (int b = 0; b < 4; b++) {
        x[b] = _mm256_permute2f128_ps(u[b], u[4 + b], 0x20);
        x[4 + b] = _mm256_permute2f128_ps(u[b], u[4 + b], 0x31);
    }
}

void nsa_f32_grad_score_t_ukernel__avx2(size_t m, size_t nk, const int32_t *lo, const int32_t *hi,
                                        const float *lse, const float *dot, const float *gain,
                                        float scale, const float *s, size_t lds, const float *dp,
                                        size_t lddp, float *pt, float *dst, size_t ldt)
{
    const __m256 vscale = _mm256_set1_ps(scale);
    for (size_t r0 = 0; r0 < m; r0 += 8) {
        const size_t rows = m - r0 < 8 ? m - r0 : 8;
        const __m256i row_mask = nsa_avx2_mask_first(rows);
        for (size_t j0 = 0; j0 < nk; j0 += 8) {
            const size_t cols = nk - j0 < 8 ? nk - j0 : 8;
            const __m256i tail = nsa_avx2_mask_first(cols);
            __m256 p[8], ds[8];
            for (size_t i = 0; i < 8; i++) {
                p[i] = ds[i] = _mm256_setzero_ps();
                const size_t r = r0 + i;
                if (i >= rows || lo[r] > hi[r])
                    continue;
                const size_t first = lo[r] > 0 ? (size_t)lo[r] : 0;
                const size_t last = hi[r] < (int32_t)nk - 1 ? (size_t)(hi[r] + 1) : nk;
                const __m256i inside = _mm256_and_si256(columns_inside(j0, first, last), tail);
                if (_mm256_testz_si256(inside, inside))
                    continue;
                const __m256 keep = _mm256_castsi256_ps(inside);
                const __m256 x = _mm256_sub_ps(_mm256_maskload_ps(s + r * lds + j0, inside),
                                               _mm256_set1_ps(lse[r]));
                p[i] = _mm256_and_ps(keep, _mm256_mul_ps(_mm256_set1_ps(gain[r]),
                                                         nsa_avx2_exp_ps(x)));
                const __m256 d = _mm256_sub_ps(_mm256_maskload_ps(dp + r * lddp + j0, inside),
                                               _mm256_set1_ps(dot[r]));
                ds[i] = _mm256_and_ps(keep, _mm256_mul_ps(_mm256_mul_ps(vscale, p[i]), d));
            }
            transpose_8x8(p);
            transpose_8x8(ds);
            for (size_t j = 0; j < cols; j++) {
                _mm256_maskstore_ps(pt + (j0 + j) * ldt + r0, row_mask, p[j]);
                _mm256_maskstore_ps(dst + (j0 + j) * ldt + r0, row_mask, ds[j]);
            }
        }
    }
}
