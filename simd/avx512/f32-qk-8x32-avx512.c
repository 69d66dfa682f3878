/* SPDX-License-Identifier: MIT */
/*
 * f32-qk-8x32-avx512.c — scores of query rows against panel-packed keys
 * (contract in src/ukernels.h), AVX-512.
 *
 * Tile: 8 rows x 2 panels (32 keys) in 16 accumulators; per channel, 2 panel
 * loads and 8 broadcasts of q feed 16 FMAs, so the two FMA ports, not the
 * load ports, set the pace. An odd last panel uses an 8 x 16 tile, rows past
 * the last multiple of 8 a 1 x 16 tile. Panels are whole (no key tail).
 * Accumulation order is fixed (channel 0 first), independent of threads.
 * The next hint is spread over the first row block's channel loops: one
 * line of each of its panels per channel, beside the FMAs.
 */
#include "avx512-helpers.h"
#include "ukernels.h"

static inline void qk_8x32(size_t dk, __m512 scale, const float *q, size_t ldq,
                           const float *panel, float *s, size_t lds, const float *next)
{
    const float *second = panel + dk * NSA_PANEL;
    __m512 c0[8], c1[8];
#pragma GCC unroll 8
    for (int i = 0; i < 8; i++)
        c0[i] = c1[i] = _mm512_setzero_ps();
    for (size_t c = 0; c < dk; c++) {
        const __m512 k0 = _mm512_loadu_ps(panel + c * NSA_PANEL);
        const __m512 k1 = _mm512_loadu_ps(second + c * NSA_PANEL);
        if (next != NULL) {
            nsa_prefetch_line(next + c * NSA_PANEL);
            nsa_prefetch_line(next + (dk + c) * NSA_PANEL);
        }
#pragma GCC unroll 8
        for (int i = 0; i < 8; i++) {
            const __m512 b = _mm512_set1_ps(q[(size_t)i * ldq + c]);
            c0[i] = _mm512_fmadd_ps(b, k0, c0[i]);
            c1[i] = _mm512_fmadd_ps(b, k1, c1[i]);
        }
    }
#pragma GCC unroll 8
    for (int i = 0; i < 8; i++) {
        _mm512_storeu_ps(s + (size_t)i * lds, _mm512_mul_ps(scale, c0[i]));
        _mm512_storeu_ps(s + (size_t)i * lds + NSA_PANEL, _mm512_mul_ps(scale, c1[i]));
    }
}

static inline void qk_8x16(size_t dk, __m512 scale, const float *q, size_t ldq,
                           const float *panel, float *s, size_t lds, const float *next)
{
    __m512 c0[8];
#pragma GCC unroll 8
    for (int i = 0; i < 8; i++)
        c0[i] = _mm512_setzero_ps();
    for (size_t c = 0; c < dk; c++) {
        const __m512 k0 = _mm512_loadu_ps(panel + c * NSA_PANEL);
        if (next != NULL)
            nsa_prefetch_line(next + c * NSA_PANEL);
#pragma GCC unroll 8
        for (int i = 0; i < 8; i++)
            c0[i] = _mm512_fmadd_ps(_mm512_set1_ps(q[(size_t)i * ldq + c]), k0, c0[i]);
    }
#pragma GCC unroll 8
    for (int i = 0; i < 8; i++)
        _mm512_storeu_ps(s + (size_t)i * lds, _mm512_mul_ps(scale, c0[i]));
}

static inline void qk_1x16(size_t dk, __m512 scale, const float *q, const float *panel, float *s,
                           const float *next)
{
    __m512 a = _mm512_setzero_ps(), b = _mm512_setzero_ps();
    size_t c = 0;
    if (next != NULL) /* one row: too few FMAs to hide the hint among */
        for (size_t line = 0; line < dk; line++)
            nsa_prefetch_line(next + line * NSA_PANEL);
    for (; c + 2 <= dk; c += 2) { /* two chains hide the FMA latency */
        a = _mm512_fmadd_ps(_mm512_set1_ps(q[c]), _mm512_loadu_ps(panel + c * NSA_PANEL), a);
        b = _mm512_fmadd_ps(_mm512_set1_ps(q[c + 1]),
                            _mm512_loadu_ps(panel + (c + 1) * NSA_PANEL), b);
    }
    if (c < dk)
        a = _mm512_fmadd_ps(_mm512_set1_ps(q[c]), _mm512_loadu_ps(panel + c * NSA_PANEL), a);
    _mm512_storeu_ps(s, _mm512_mul_ps(scale, _mm512_add_ps(a, b)));
}

void nsa_f32_qk_ukernel_8x32__avx512(size_t m, size_t np, size_t dk, float scale, const float *q,
                                     size_t ldq, const float *kp, float *s, size_t lds,
                                     const float *next)
{
    const __m512 vscale = _mm512_set1_ps(scale);
    const size_t panel_floats = dk * NSA_PANEL;
    size_t p = 0;
    for (; p < np; p += 2) {
        const int pair = p + 2 <= np;
        const float *panel = kp + p * panel_floats;
        const float *hint = next != NULL ? next + p * panel_floats : NULL; /* first row block */
        float *sp = s + p * NSA_PANEL;
        size_t r = 0;
        for (; r + 8 <= m; r += 8, hint = NULL) {
            if (pair)
                qk_8x32(dk, vscale, q + r * ldq, ldq, panel, sp + r * lds, lds, hint);
            else
                qk_8x16(dk, vscale, q + r * ldq, ldq, panel, sp + r * lds, lds, hint);
        }
        for (; r < m; r++, hint = NULL) {
            qk_1x16(dk, vscale, q + r * ldq, panel, sp + r * lds, hint);
            if (pair)
                qk_1x16(dk, vscale, q + r * ldq, panel + panel_floats, sp + r * lds + NSA_PANEL,
                        hint != NULL ? hint + panel_floats : NULL);
        }
    }
}
