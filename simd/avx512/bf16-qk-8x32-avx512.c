/* SPDX-License-Identifier: MIT */
/*
 * bf16-qk-8x32-avx512.c — scores of query rows against panel-packed bf16
 * keys (paired layout, contract in src/ukernels.h), AVX-512.
 *
 * Tile: up to 8 rows x 2 panels (32 keys) in 16 accumulators, the tile of
 * f32-qk-8x32-avx512.c. A panel row holds two channels of its 16 keys: one
 * load and a shift and a mask widen it into both (nsa_avx512_load_bf16_pairs),
 * which feed 2 FMAs per row and panel with the two channels of q broadcast;
 * an odd dk's last row has one channel. An odd last panel goes alone; rows go
 * 8, then 4, 2, 1 at a time. (A 16 x 16 tile widens each key once for 16 rows
 * but keeps 16 row pointers and ran 10-15 % slower.) Accumulation order is
 * fixed (channel 0 first), independent of threads.
 */
#include "avx512-helpers.h"
#include "row-tiles.h"
#include "ukernels.h"

/* rows x (panels x 16) scores, panels 1 or 2. */
static inline __attribute__((always_inline)) void
qk_tile(const int rows, const int panels, size_t dk, __m512 scale, const float *q, size_t ldq,
        const uint16_t *panel, float *s, size_t lds)
{
    const uint16_t *second = panel + nsa_bf16_panel_words(dk);
    __m512 c0[8], c1[8];
#pragma GCC unroll 8
    for (int i = 0; i < rows; i++)
        c0[i] = c1[i] = _mm512_setzero_ps();
    for (size_t c = 0; c < dk; c += 2) {
        const int both = c + 1 < dk; /* an odd dk's last row: channel c only */
        __m512 k0, k0odd, k1 = _mm512_setzero_ps(), k1odd = _mm512_setzero_ps();
        nsa_avx512_load_bf16_pairs(0xffff, panel + c * NSA_PANEL, &k0, &k0odd);
        if (panels == 2)
            nsa_avx512_load_bf16_pairs(0xffff, second + c * NSA_PANEL, &k1, &k1odd);
#pragma GCC unroll 8
        for (int i = 0; i < rows; i++) {
            const __m512 b = _mm512_set1_ps(q[(size_t)i * ldq + c]);
            c0[i] = _mm512_fmadd_ps(b, k0, c0[i]);
            if (panels == 2)
                c1[i] = _mm512_fmadd_ps(b, k1, c1[i]);
            if (both) {
                const __m512 b2 = _mm512_set1_ps(q[(size_t)i * ldq + c + 1]);
                c0[i] = _mm512_fmadd_ps(b2, k0odd, c0[i]);
                if (panels == 2)
                    c1[i] = _mm512_fmadd_ps(b2, k1odd, c1[i]);
            }
        }
    }
#pragma GCC unroll 8
    for (int i = 0; i < rows; i++) {
        _mm512_storeu_ps(s + (size_t)i * lds, _mm512_mul_ps(scale, c0[i]));
        if (panels == 2)
            _mm512_storeu_ps(s + (size_t)i * lds + NSA_PANEL, _mm512_mul_ps(scale, c1[i]));
    }
}

/* Every row against `panels` panels. */
static inline __attribute__((always_inline)) void
qk_panels(const int panels, size_t m, size_t dk, __m512 scale, const float *q, size_t ldq,
          const uint16_t *panel, float *s, size_t lds)
{
#define TILE(rows, r)                                                                   \
    qk_tile(rows, panels, dk, scale, q + (r) * ldq, ldq, panel, s + (r) * lds, lds)
    NSA_ROW_TILES(m, 8, TILE);
#undef TILE
}

void nsa_bf16_qk_ukernel_8x32__avx512(size_t m, size_t np, size_t dk, float scale,
                                      const float *q, size_t ldq, const uint16_t *kp, float *s,
                                      size_t lds)
{
    const __m512 vscale = _mm512_set1_ps(scale);
    const size_t words = nsa_bf16_panel_words(dk);
    size_t p = 0;
    for (; p + 2 <= np; p += 2)
        qk_panels(2, m, dk, vscale, q, ldq, kp + p * words, s + p * NSA_PANEL, lds);
    if (p < np)
        qk_panels(1, m, dk, vscale, q, ldq, kp + p * words, s + p * NSA_PANEL, lds);
}
