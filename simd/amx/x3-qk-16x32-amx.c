/* SPDX-License-Identifier: MIT */
/*
 * x3-qk-16x32-amx.c — scores of query rows against split fp32 keys (three
 * bf16 terms per key, contract in src/ukernels.h) with AMX tile products:
 * the forward's fp32 qk when the CPU has tile products.
 *
 * Tile: 16 rows x 2 panels (32 keys) in two accumulator tiles. The rows
 * come split and scaled (split once per tile by the caller: splitting them
 * here, per call, cost as much as the products of a 64-key call); each 32
 * channels they are three left tiles, loaded once for both panels, whose
 * three key terms are the right tiles: six tile products per panel
 * (NSA_AMX_SIX_TERMS). Both operands are in the tiles' layouts, so tiles
 * load in place, except the last 32 channels of a dk that is not a
 * multiple of 32 (key terms copied into a zero-padded tile). Rows past m
 * are zeros; their scores are not stored.
 */
#include "amx-helpers.h"
#include "ukernels.h"

/* Tiles 5-7 = channels c0 .. c0 + 32 of the three terms of a panel: in
 * place when the panel has them all, else through `pad` (zeros past dk). */
static void load_key_terms(const uint16_t *panel, size_t words, size_t c0, size_t dk,
                           uint16_t *pad)
{
    const uint16_t *rows = panel + c0 * NSA_PANEL;
    if (c0 + NSA_AMX_DEPTH <= dk)
        nsa_amx_load_right3(rows, words, NSA_AMX_DEPTH);
    else /* the pair rows left in the panel */
        nsa_amx_load_right3_padded(rows, words, NSA_AMX_DEPTH, (dk - c0 + 1) / 2, 0xffff, pad);
}

/* Scores of one accumulator tile (16 keys) into s: rows past `rows` are
 * dropped through `out`. */
static void store_scores(int second, size_t rows, float *s, size_t lds, float *out)
{
    const int direct = rows == NSA_AMX_ROWS;
    float *to = direct ? s : out;
    const size_t stride = (direct ? lds : NSA_PANEL) * sizeof(float);
    nsa_amx_store_acc(second, to, stride);
    if (!direct)
        for (size_t r = 0; r < rows; r++)
            _mm512_storeu_ps(s + r * lds, _mm512_load_ps(out + r * NSA_PANEL));
}

/* Asks for channels c0 .. c0 + 32 of a panel's three terms ahead of use. */
static void prefetch_key_terms(const uint16_t *panel, size_t words, size_t c0, size_t dk)
{
    const size_t rows = (dk - c0 < NSA_AMX_DEPTH ? dk - c0 + 1 : NSA_AMX_DEPTH) / 2;
    for (size_t t = 0; t < 3; t++)
        nsa_amx_prefetch_rows(panel + t * words + c0 * NSA_PANEL, NSA_AMX_DEPTH, rows);
}

/* s[rows][np * 16] for up to 16 rows, term t of row r at split + t *
 * term + r * ld. The first block of rows (fetch) asks for the panels two
 * ahead as it goes: the later blocks find them in cache. */
static void qk_rows(size_t rows, size_t np, size_t dk, const uint16_t *split, size_t term,
                    size_t ld, const uint16_t *kp, float *s, size_t lds, int fetch)
{
    _Alignas(64) uint16_t pad[3 * NSA_AMX_ROWS * NSA_AMX_DEPTH];
    _Alignas(64) float out[NSA_AMX_ROWS * NSA_PANEL];
    const size_t words = nsa_bf16_panel_words(dk);
    for (size_t p = 0; p < np; p += 2) {
        const int two = p + 1 < np;
        const uint16_t *panel = kp + p * 3 * words;
        _tile_zero(0);
        _tile_zero(1);
        for (size_t c0 = 0; c0 < dk; c0 += NSA_AMX_DEPTH) {
            nsa_amx_load_left3(split + c0, term, ld);
            if (fetch && p + 2 < np)
                prefetch_key_terms(panel + 6 * words, words, c0, dk);
            load_key_terms(panel, words, c0, dk, pad);
            NSA_AMX_SIX_TERMS(0);
            if (fetch && p + 3 < np)
                prefetch_key_terms(panel + 9 * words, words, c0, dk);
            if (two) {
                load_key_terms(panel + 3 * words, words, c0, dk, pad);
                NSA_AMX_SIX_TERMS(1);
            }
        }
        store_scores(0, rows, s + p * NSA_PANEL, lds, out);
        if (two)
            store_scores(1, rows, s + (p + 1) * NSA_PANEL, lds, out);
    }
}

void nsa_x3_qk_ukernel_16x32__amx(size_t m, size_t np, size_t dk, const uint16_t *q, size_t ldq,
                                  const uint16_t *kp, float *s, size_t lds)
{
    const size_t term = NSA_AMX_ROWS * ldq;
    nsa_amx_begin();
    for (size_t r0 = 0; r0 < m; r0 += NSA_AMX_ROWS) {
        const size_t rows = m - r0 < NSA_AMX_ROWS ? m - r0 : NSA_AMX_ROWS;
        qk_rows(rows, np, dk, q + r0 * 3 * ldq, term, ldq, kp, s + r0 * lds, lds, r0 == 0);
    }
    nsa_amx_end();
}
