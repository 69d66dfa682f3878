/* SPDX-License-Identifier: MIT */
/*
 * bf16-qk-16x64-amx.c — scores of query rows against panel-packed bf16
 * keys (contract in src/ukernels.h) with AMX tile products.
 *
 * Tile: 16 rows x 4 panels (64 keys) in four accumulator tiles. The rows
 * are split once per call into three exact bf16 terms (amx-helpers.h), 32
 * channels per left tile; the two panel rows of channels 2p and 2p + 1 are
 * one 64-byte load, and one word permutation pairs them into row p of the
 * right tile. Each (32 channels, panel) step is three tile products, one
 * per term, summed in the panel's accumulator. Rows past m and channels
 * past dk are zeros. Few rows would leave the tiles mostly empty, and very
 * long rows would not fit the split on the stack: both go to the AVX-512
 * kernel.
 */
#include "amx-helpers.h"
#include "ukernels.h"

enum {
    MIN_ROWS = 8,   /* fewer rows per call: the AVX-512 kernel is faster */
    MAX_DK = 256,   /* longer rows: the AVX-512 kernel */
    GROUP = 4       /* panels per pass: four accumulators, 3 left tiles, 1 right */
};

/* The right tile of channels c0 .. c0 + 32 of one panel, pairs of channels
 * per row; channels at or past dk read as zero. */
static void pair_panel(const uint16_t *panel, size_t c0, size_t dk, uint16_t *b)
{
    const __m512i index = nsa_amx_pair_index();
    for (size_t p = 0; p < NSA_AMX_ROWS; p++) {
        const size_t c = c0 + 2 * p;
        __m512i two_rows;
        if (c + 1 < dk)
            two_rows = _mm512_loadu_si512(panel + c * NSA_PANEL);
        else if (c < dk)
            two_rows = _mm512_maskz_loadu_epi16(0xffff, panel + c * NSA_PANEL);
        else
            two_rows = _mm512_setzero_si512();
        _mm512_store_si512(b + p * NSA_AMX_DEPTH, _mm512_permutexvar_epi16(index, two_rows));
    }
}

/* Accumulator tile `acc` += the three terms (tiles 4-6) times tile 7. */
#define THREE_TERMS(acc)                                                                    \
    do {                                                                                    \
        _tile_dpbf16ps(acc, 4, 7);                                                          \
        _tile_dpbf16ps(acc, 5, 7);                                                          \
        _tile_dpbf16ps(acc, 6, 7);                                                          \
    } while (0)

/* s[rows][panels * 16] for up to 16 rows whose terms are at terms[3]
 * (stride ld words). */
static void qk_rows(size_t rows, size_t np, size_t dk, float scale, uint16_t *const terms[3],
                    size_t ld, const uint16_t *kp, float *s, size_t lds)
{
    _Alignas(64) uint16_t right[GROUP][NSA_AMX_ROWS * NSA_AMX_DEPTH];
    _Alignas(64) float out[NSA_AMX_ROWS * NSA_PANEL];
    const __m512 vscale = _mm512_set1_ps(scale);
    for (size_t p0 = 0; p0 < np; p0 += GROUP) {
        const size_t count = np - p0 < GROUP ? np - p0 : GROUP;
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
        for (size_t c0 = 0; c0 < dk; c0 += NSA_AMX_DEPTH) {
            _tile_loadd(4, terms[0] + c0, ld * sizeof(uint16_t));
            _tile_loadd(5, terms[1] + c0, ld * sizeof(uint16_t));
            _tile_loadd(6, terms[2] + c0, ld * sizeof(uint16_t));
            for (size_t i = 0; i < count; i++) {
                pair_panel(kp + (p0 + i) * dk * NSA_PANEL, c0, dk, right[i]);
                _tile_loadd(7, right[i], NSA_AMX_BYTES);
                switch (i) {
                case 0: THREE_TERMS(0); break;
                case 1: THREE_TERMS(1); break;
                case 2: THREE_TERMS(2); break;
                default: THREE_TERMS(3); break;
                }
            }
        }
        for (size_t i = 0; i < count; i++) {
            switch (i) {
            case 0: _tile_stored(0, out, NSA_AMX_BYTES); break;
            case 1: _tile_stored(1, out, NSA_AMX_BYTES); break;
            case 2: _tile_stored(2, out, NSA_AMX_BYTES); break;
            default: _tile_stored(3, out, NSA_AMX_BYTES); break;
            }
            float *dst = s + (p0 + i) * NSA_PANEL;
            for (size_t r = 0; r < rows; r++)
                _mm512_storeu_ps(dst + r * lds,
                                 _mm512_mul_ps(vscale, _mm512_load_ps(out + r * NSA_PANEL)));
        }
    }
}

void nsa_bf16_qk_ukernel_16x64__amx(size_t m, size_t np, size_t dk, float scale, const float *q,
                                    size_t ldq, const uint16_t *kp, float *s, size_t lds)
{
    if (m < MIN_ROWS || dk > MAX_DK) {
        nsa_bf16_qk_ukernel_8x32__avx512(m, np, dk, scale, q, ldq, kp, s, lds);
        return;
    }
    const size_t ld = (dk + NSA_AMX_DEPTH - 1) / NSA_AMX_DEPTH * NSA_AMX_DEPTH;
    _Alignas(64) uint16_t split[3][NSA_AMX_ROWS * MAX_DK];
    uint16_t *const terms[3] = {split[0], split[1], split[2]};
    nsa_amx_begin();
    for (size_t r0 = 0; r0 < m; r0 += NSA_AMX_ROWS) {
        const size_t rows = m - r0 < NSA_AMX_ROWS ? m - r0 : NSA_AMX_ROWS;
        nsa_amx_split_rows(q + r0 * ldq, ldq, rows, dk, ld, terms);
        qk_rows(rows, np, dk, scale, terms, ld, kp, s + r0 * lds, lds);
    }
    nsa_amx_end();
}
