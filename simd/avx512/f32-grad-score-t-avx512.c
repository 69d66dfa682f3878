/* SPDX-License-Identifier: MIT */
/*
 * f32-grad-score-t-avx512.c — the backward's key side (contract in
 * src/ukernels.h), AVX-512.
 *
 * Works on 16 rows x 16 columns at a time: each row's 16 probabilities and
 * score gradients are computed as one vector (exp under the row's column
 * mask), then both 16 x 16 blocks are transposed in registers (unpack,
 * shuffle, two 128-bit lane shuffles) and stored as 16 key rows, masked to
 * the rows and columns that exist. Nothing outside a row's columns of s or
 * dp is read.
 */
#include "avx512-helpers.h"
#include "ukernels.h"

static inline __mmask16 columns_inside(size_t j, size_t first, size_t last)
{
    const __m512i index = _mm512_add_epi32(_mm512_set1_epi32((int)j),
                                           _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10,
                                                             11, 12, 13, 14, 15));
    return _mm512_cmpge_epi32_mask(index, _mm512_set1_epi32((int)first)) &
           _mm512_cmplt_epi32_mask(index, _mm512_set1_epi32((int)last));
}

/* x[i] holds row i of a 16 x 16 block; afterwards x[j] holds column j. */
static inline void transpose_16x16(__m512 x[16])
{
    __m512 t[16];
#pragma GCC unroll 8
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_ps(x[i], x[i + 1]);
        t[i + 1] = _mm512_unpackhi_ps(x[i], x[i + 1]);
    }
    /* Per 128-bit lane L, x[4a + b] becomes column 4L + b of rows 4a .. 4a+3. */
#pragma GCC unroll 4
    for (int i = 0; i < 16; i += 4) {
        x[i] = _mm512_shuffle_ps(t[i], t[i + 2], 0x44);
        x[i + 1] = _mm512_shuffle_ps(t[i], t[i + 2], 0xee);
        x[i + 2] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0x44);
        x[i + 3] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0xee);
    }
#pragma GCC unroll 4
    for (int b = 0; b < 4; b++) {
        t[b] = _mm512_shuffle_f32x4(x[b], x[4 + b], 0x88);
        t[4 + b] = _mm512_shuffle_f32x4(x[b], x[4 + b], 0xdd);
        t[8 + b] = _mm512_shuffle_f32x4(x[8 + b], x[12 + b], 0x88);
        t[12 + b] = _mm512_shuffle_f32x4(x[8 + b], x[12 + b], 0xdd);
    }
#pragma GCC unroll 4
    for (int b = 0; b < 4; b++) {
        x[b] = _mm512_shuffle_f32x4(t[b], t[8 + b], 0x88);
        x[8 + b] = _mm512_shuffle_f32x4(t[b], t[8 + b], 0xdd);
        x[4 + b] = _mm512_shuffle_f32x4(t[4 + b], t[12 + b], 0x88);
        x[12 + b] = _mm512_shuffle_f32x4(t[4 + b], t[12 + b], 0xdd);
    }
}

void nsa_f32_grad_score_t_ukernel__avx512(size_t m, size_t nk, const int32_t *lo,
                                          const int32_t *hi, const float *lse, const float *dot,
                                          const float *gain, float scale, const float *s,
                                          size_t lds, const float *dp, size_t lddp, float *pt,
                                          float *dst, size_t ldt)
{
    const __m512 vscale = _mm512_set1_ps(scale);
    for (size_t r0 = 0; r0 < m; r0 += 16) {
        const size_t rows = m - r0 < 16 ? m - r0 : 16;
        const __mmask16 row_mask = nsa_avx512_mask_first(rows);
        for (size_t j0 = 0; j0 < nk; j0 += 16) {
            const size_t cols = nk - j0 < 16 ? nk - j0 : 16;
            const __mmask16 tail = nsa_avx512_mask_first(cols);
            __m512 p[16], ds[16];
            for (size_t i = 0; i < 16; i++) {
                p[i] = ds[i] = _mm512_setzero_ps();
                const size_t r = r0 + i;
                if (i >= rows || lo[r] > hi[r])
                    continue;
                const size_t first = lo[r] > 0 ? (size_t)lo[r] : 0;
                const size_t last = hi[r] < (int32_t)nk - 1 ? (size_t)(hi[r] + 1) : nk;
                const __mmask16 inside = columns_inside(j0, first, last) & tail;
                if (inside == 0)
                    continue;
                const __m512 x = _mm512_sub_ps(_mm512_maskz_loadu_ps(inside, s + r * lds + j0),
                                               _mm512_set1_ps(lse[r]));
                const __m512 e = _mm512_mul_ps(_mm512_set1_ps(gain[r]), nsa_avx512_exp_ps(x));
                p[i] = _mm512_maskz_mov_ps(inside, e);
                const __m512 d = _mm512_sub_ps(_mm512_maskz_loadu_ps(inside, dp + r * lddp + j0),
                                               _mm512_set1_ps(dot[r]));
                ds[i] = _mm512_maskz_mul_ps(inside, _mm512_mul_ps(vscale, p[i]), d);
            }
            transpose_16x16(p);
            transpose_16x16(ds);
            for (size_t j = 0; j < cols; j++) {
                _mm512_mask_storeu_ps(pt + (j0 + j) * ldt + r0, row_mask, p[j]);
                _mm512_mask_storeu_ps(dst + (j0 + j) * ldt + r0, row_mask, ds[j]);
            }
        }
    }
}
