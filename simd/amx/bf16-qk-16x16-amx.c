/* SPDX-License-Identifier: MIT */
/*
 * bf16-qk-16x16-amx.c — scores of query rows against panel-packed bf16
 * keys (paired layout, contract in src/ukernels.h) with AMX tile products.
 *
 * Tile: 16 rows x 1 panel (16 keys) in one accumulator tile. The rows are
 * scaled and split into three exact bf16 terms (amx-helpers.h; the scale is
 * applied to q, not to the scores), 32 channels per left tile, each 32 as
 * the first panel reaches them (a tile load waits for the stores before it);
 * the split variant takes them split already (split_x3's layout), as a
 * decode step passes them to each of its calls. A panel's paired rows are
 * already the right operand's layout: 32 channels of a panel are one 1 KiB
 * right tile, loaded as it is (an incomplete last one is copied into a
 * zero-padded tile first). Each 32 channels are three tile products, one per
 * term, summed in the accumulator, which goes straight into s when it holds
 * 16 rows. Panels go one after the other, so the right tiles are read in
 * memory order (four panels side by side, reusing each left tile 4 times,
 * were 10-20 % slower: their loads were not), and each right tile is asked
 * for two panels ahead (tile loads train no hardware prefetcher; in a decode
 * step the keys come from L3). Rows past m are zeros. Few rows would leave
 * the tiles mostly empty, and very long rows would not fit the split on the
 * stack: both go to the AVX-512 kernel.
 */
#include "amx-helpers.h"
#include "ukernels.h"

enum {
    MIN_ROWS = 8,       /* fewer rows per call: the AVX-512 kernel is faster */
    MAX_DK = 256,       /* longer rows: the AVX-512 kernel */
    PREFETCH_PANELS = 2 /* right tiles are asked for this many panels ahead */
};

/* Loads tile 7 with channels c0 .. c0 + 32 of a panel: in place when the
 * panel has them all, else through `pad` (the missing rows zero). */
static void load_right(const uint16_t *panel, size_t c0, size_t dk, uint16_t *pad)
{
    const uint16_t *rows = panel + c0 * NSA_PANEL;
    if (c0 + NSA_AMX_DEPTH <= dk) {
        _tile_loadd(7, rows, NSA_AMX_BYTES);
        return;
    }
    const size_t have = (dk - c0 + 1) / 2; /* pair rows left in the panel */
    for (size_t i = 0; i < NSA_AMX_ROWS; i++)
        _mm512_store_si512(pad + i * NSA_AMX_DEPTH,
                           i < have ? _mm512_loadu_si512(rows + i * NSA_AMX_DEPTH)
                                    : _mm512_setzero_si512());
    _tile_loadd(7, pad, NSA_AMX_BYTES);
}

/* s[rows][np * 16] for up to 16 rows whose terms[3] (stride ld words) are
 * given, or (split not NULL: the same buffers) split from q (stride ldq)
 * times scale as the first panel reaches them. */
static void qk_rows(size_t rows, size_t np, size_t dk, float scale, const float *q, size_t ldq,
                    uint16_t *const split[3], const uint16_t *const terms[3], size_t ld,
                    const uint16_t *kp, float *s, size_t lds)
{
    _Alignas(64) uint16_t pad[NSA_AMX_ROWS * NSA_AMX_DEPTH];
    _Alignas(64) float out[NSA_AMX_ROWS * NSA_PANEL];
    const size_t words = nsa_bf16_panel_words(dk);
    for (size_t p = 0; p < np; p++) {
        const uint16_t *panel = kp + p * words;
        _tile_zero(0);
        for (size_t c0 = 0; c0 < dk; c0 += NSA_AMX_DEPTH) {
            if (p == 0 && split != NULL) {
                uint16_t *const at[3] = {split[0] + c0, split[1] + c0, split[2] + c0};
                nsa_amx_split_rows(q + c0, ldq, rows, dk - c0, scale, NSA_AMX_DEPTH, ld, at);
            }
            _tile_loadd(4, terms[0] + c0, ld * sizeof(uint16_t));
            _tile_loadd(5, terms[1] + c0, ld * sizeof(uint16_t));
            _tile_loadd(6, terms[2] + c0, ld * sizeof(uint16_t));
            for (size_t ahead = p == 0 ? 1 : PREFETCH_PANELS; ahead <= PREFETCH_PANELS; ahead++)
                if (p + ahead < np && c0 + NSA_AMX_DEPTH <= dk)
                    nsa_amx_prefetch_tile(panel + ahead * words + c0 * NSA_PANEL, NSA_AMX_DEPTH);
            load_right(panel, c0, dk, pad);
            NSA_AMX_THREE_TERMS(0);
        }
        float *dst = s + p * NSA_PANEL, *to = rows == NSA_AMX_ROWS ? dst : out;
        const size_t stride = (rows == NSA_AMX_ROWS ? lds : NSA_PANEL) * sizeof(float);
        _tile_stored(0, to, stride);
        if (to == out)
            for (size_t r = 0; r < rows; r++)
                _mm512_storeu_ps(dst + r * lds, _mm512_load_ps(out + r * NSA_PANEL));
    }
}

void nsa_bf16_qk_ukernel_16x16__amx(size_t m, size_t np, size_t dk, float scale, const float *q,
                                    size_t ldq, const uint16_t *kp, float *s, size_t lds)
{
    if (m < MIN_ROWS || dk > MAX_DK) {
        nsa_bf16_qk_ukernel_8x32__avx512(m, np, dk, scale, q, ldq, kp, s, lds);
        return;
    }
    const size_t ld = (dk + NSA_AMX_DEPTH - 1) / NSA_AMX_DEPTH * NSA_AMX_DEPTH;
    _Alignas(64) uint16_t split[3][NSA_AMX_ROWS * MAX_DK];
    uint16_t *const terms[3] = {split[0], split[1], split[2]};
    const uint16_t *const read[3] = {split[0], split[1], split[2]};
    nsa_amx_begin();
    for (size_t r0 = 0; r0 < m; r0 += NSA_AMX_ROWS) {
        const size_t rows = m - r0 < NSA_AMX_ROWS ? m - r0 : NSA_AMX_ROWS;
        qk_rows(rows, np, dk, scale, q + r0 * ldq, ldq, terms, read, ld, kp, s + r0 * lds, lds);
    }
    nsa_amx_end();
}

void nsa_bf16_qk_split_ukernel_16x16__amx(size_t m, size_t np, size_t dk, const uint16_t *q,
                                          size_t ldq, const uint16_t *kp, float *s, size_t lds)
{
    const size_t term = NSA_AMX_ROWS * ldq;
    nsa_amx_begin();
    for (size_t r0 = 0; r0 < m; r0 += NSA_AMX_ROWS, q += 3 * term) {
        const size_t rows = m - r0 < NSA_AMX_ROWS ? m - r0 : NSA_AMX_ROWS;
        const uint16_t *const terms[3] = {q, q + term, q + 2 * term};
        qk_rows(rows, np, dk, 1.0f, NULL, 0, NULL, terms, ldq, kp, s + r0 * lds, lds);
    }
    nsa_amx_end();
}
