/* SPDX-License-Identifier: MIT */
/*
 * bf16-qk-6x16-avx2.c — scores of query rows against panel-packed bf16 keys
 * (paired layout, contract in src/ukernels.h), AVX2 + FMA: the qk_bf16
 * kernel of AVX2 CPUs without AVX-512.
 *
 * Tile: up to 6 rows x 1 panel (16 keys) in 12 accumulators. A panel row
 * holds channels c and c + 1 of the 16 keys: two loads of 8 keys each, then
 * one instruction per load and channel widens it to fp32 (a shift for
 * channel c, a blend for c + 1: nsa_avx2_bf16_first, _second), where bf16
 * one to a 16-bit lane would take a zero-extension and a shift. Each channel
 * feeds 2 FMAs per row with its q value broadcast, so each key is widened
 * once for 6 rows. Channel c's FMAs run before c + 1 is widened (the blend
 * rereads the pairs from memory), so 12 accumulators, 2 keys and 1 broadcast
 * fit the 16 ymm registers. 6 rows, as in f32-qk-6x16-avx2.c; here also because
 * the widening shares the FMA ports: a decode group of G = 16 rows goes 6 +
 * 6 + 4, each key widened 3 times instead of 4. Rows go 6, then 4, 2, 1 at a
 * time. An odd dk's last panel row has channel dk - 1 only. No tail in keys:
 * panels are whole. A q row is read on [0, dk) only. Accumulation order is
 * fixed (channel 0 first), independent of threads.
 */
#include "avx2-helpers.h"
#include "row-tiles.h"
#include "ukernels.h"

/* Row i of the tile += q * (k0, k1): keys 0..7 into c0[i], 8..15 into
 * c1[i], with the query value at q broadcast. */
#define QK_ROW(c0, c1, i, q, k0, k1)                                                               \
    do {                                                                                           \
        const __m256 b_ = _mm256_broadcast_ss(q);                                                  \
        (c0)[i] = _mm256_fmadd_ps(b_, (k0), (c0)[i]);                                              \
        (c1)[i] = _mm256_fmadd_ps(b_, (k1), (c1)[i]);                                              \
    } while (0)

/* scale comes by address: as a float it would hold a vector register
 * through the channel loop, which has none to spare. */
static inline __attribute__((always_inline)) void
qk_rows(const int rows, size_t dk, const float *scale, const float *q, size_t ldq,
        const uint16_t *panel, float *s, size_t lds)
{
    __m256 c0[6], c1[6];
    const float *qr[6]; /* row i's channel c */
#pragma GCC unroll 6
    for (int i = 0; i < rows; i++) {
        c0[i] = c1[i] = _mm256_setzero_ps();
        qr[i] = q + (size_t)i * ldq;
    }
    const uint16_t *row = panel; /* panel row c / 2 */
    size_t c = 0;
    for (; c + 2 <= dk; c += 2, row += 2 * NSA_PANEL) {
        const __m256i w0 = nsa_avx2_load_pairs(row), w1 = nsa_avx2_load_pairs(row + 16);
        const __m256 k0 = nsa_avx2_bf16_first(w0), k1 = nsa_avx2_bf16_first(w1); /* channel c */
#pragma GCC unroll 6
        for (int i = 0; i < rows; i++)
            QK_ROW(c0, c1, i, qr[i], k0, k1);
        const __m256 l0 = nsa_avx2_bf16_second(k0, w0), l1 = nsa_avx2_bf16_second(k1, w1);
        /* channel c + 1, rows backwards: GCC 12 then keeps all 12
         * accumulators in registers (forwards, it spilled one) */
#pragma GCC unroll 6
        for (int i = rows - 1; i >= 0; i--) {
            QK_ROW(c0, c1, i, qr[i] + 1, l0, l1);
            qr[i] += 2;
        }
    }
    if (c < dk) { /* an odd dk's last row: channel dk - 1 only */
        const __m256 k0 = nsa_avx2_bf16_first(nsa_avx2_load_pairs(row));
        const __m256 k1 = nsa_avx2_bf16_first(nsa_avx2_load_pairs(row + 16));
#pragma GCC unroll 6
        for (int i = 0; i < rows; i++)
            QK_ROW(c0, c1, i, qr[i], k0, k1);
    }
    const __m256 vscale = _mm256_broadcast_ss(scale);
#pragma GCC unroll 6
    for (int i = 0; i < rows; i++) {
        _mm256_storeu_ps(s + (size_t)i * lds, _mm256_mul_ps(vscale, c0[i]));
        _mm256_storeu_ps(s + (size_t)i * lds + 8, _mm256_mul_ps(vscale, c1[i]));
    }
}

void nsa_bf16_qk_ukernel_6x16__avx2(size_t m, size_t np, size_t dk, float scale, const float *q,
                                    size_t ldq, const uint16_t *kp, float *s, size_t lds)
{
    for (size_t p = 0; p < np; p++) {
        const uint16_t *panel = kp + p * nsa_bf16_panel_words(dk);
        float *sp = s + p * NSA_PANEL;
#define TILE(rows, r) qk_rows(rows, dk, &scale, q + (r) * ldq, ldq, panel, sp + (r) * lds, lds)
        NSA_ROW_TILES(m, 6, TILE);
#undef TILE
    }
}
