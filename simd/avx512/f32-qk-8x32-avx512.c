/* SPDX-License-Identifier: MIT */
/*
 * f32-qk-8x32-avx512.c — scores of query rows against panel-packed keys
 * (contract in src/ukernels.h), AVX-512.
 *
 * Tile: 8 rows x 2 panels (32 keys) in 16 accumulators; per channel, 2 panel
 * loads and 8 broadcasts of q feed 16 FMAs, so the two FMA ports, not the
 * load ports, set the pace. An odd last panel uses a 16-key tile. The rows
 * past the last multiple of 8 (1 to 7: small groups, gathered selected
 * rows) go through the same tiles with that many rows, each row count its
 * own specialisation, so a panel channel is still loaded once for all of
 * them. Panels are whole (no key tail). Accumulation order is fixed
 * (channel 0 first), independent of threads and of the tile a row is in.
 * The next hint is spread over the first row block's channel loops: one
 * line of each of its panels per channel, beside the FMAs.
 */
#include "avx512-helpers.h"
#include "row-tiles.h"
#include "ukernels.h"

/* rows (a constant 1..8 once inlined) x `panels` (1 or 2) panels. */
static inline __attribute__((always_inline)) void
qk_tile(const size_t rows, const size_t panels, size_t dk, __m512 scale, const float *q,
        size_t ldq, const float *panel, float *s, size_t lds, const float *next)
{
    const float *second = panel + dk * NSA_PANEL;
    __m512 c0[8], c1[8];
#pragma GCC unroll 8
    for (size_t i = 0; i < rows; i++)
        c0[i] = c1[i] = _mm512_setzero_ps();
    for (size_t c = 0; c < dk; c++) {
        const __m512 k0 = _mm512_loadu_ps(panel + c * NSA_PANEL);
        const __m512 k1 = panels == 2 ? _mm512_loadu_ps(second + c * NSA_PANEL) : k0;
        if (next != NULL) {
            nsa_prefetch_line(next + c * NSA_PANEL);
            if (panels == 2)
                nsa_prefetch_line(next + (dk + c) * NSA_PANEL);
        }
#pragma GCC unroll 8
        for (size_t i = 0; i < rows; i++) {
            const __m512 b = _mm512_set1_ps(q[i * ldq + c]);
            c0[i] = _mm512_fmadd_ps(b, k0, c0[i]);
            if (panels == 2)
                c1[i] = _mm512_fmadd_ps(b, k1, c1[i]);
        }
    }
#pragma GCC unroll 8
    for (size_t i = 0; i < rows; i++) {
        _mm512_storeu_ps(s + i * lds, _mm512_mul_ps(scale, c0[i]));
        if (panels == 2)
            _mm512_storeu_ps(s + i * lds + NSA_PANEL, _mm512_mul_ps(scale, c1[i]));
    }
}

/* The tile for `rows` (1..8) rows, each count its own specialisation. */
static void qk_rows(size_t rows, size_t panels, size_t dk, __m512 scale, const float *q,
                    size_t ldq, const float *panel, float *s, size_t lds, const float *next)
{
#define TILE(r)                                                                                    \
    do {                                                                                           \
        if (panels == 2)                                                                           \
            qk_tile(r, 2, dk, scale, q, ldq, panel, s, lds, next);                                 \
        else                                                                                       \
            qk_tile(r, 1, dk, scale, q, ldq, panel, s, lds, next);                                 \
    } while (0)
    NSA_ROW_COUNT_8(rows, TILE)
#undef TILE
}

void nsa_f32_qk_ukernel_8x32__avx512(size_t m, size_t np, size_t dk, float scale, const float *q,
                                     size_t ldq, const float *kp, float *s, size_t lds,
                                     const float *next)
{
    const __m512 vscale = _mm512_set1_ps(scale);
    const size_t panel_floats = dk * NSA_PANEL;
    for (size_t p = 0; p < np; p += 2) {
        const size_t panels = p + 2 <= np ? 2 : 1;
        const float *panel = kp + p * panel_floats;
        const float *hint = next != NULL ? next + p * panel_floats : NULL; /* first row block */
        float *sp = s + p * NSA_PANEL;
        for (size_t r = 0; r < m; r += 8, hint = NULL)
            qk_rows(m - r < 8 ? m - r : 8, panels, dk, vscale, q + r * ldq, ldq, panel,
                    sp + r * lds, lds, hint);
    }
}
