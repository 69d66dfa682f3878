/* SPDX-License-Identifier: MIT */
/*
 * amx-helpers.h — what the AMX kernels share: the tile configuration and
 * the exact split of fp32 values into three bf16 terms. (The bf16 keys and
 * values need no such step: their paired layout, ukernels.h, is the one a
 * tile product's right operand wants.) Static inline and included only by
 * files compiled with the AMX flags.
 *
 * Why three terms: TDPBF16PS multiplies bf16 by bf16 and adds in fp32. The
 * cache's keys and values are bf16 already; the queries and probabilities
 * are fp32. Cut into hi + mid + lo (8 significant bits each) an fp32 value
 * is represented exactly, every bf16 x bf16 product is exact in fp32, and
 * the sums are fp32 sums: the arithmetic stays fp32, only its order differs
 * from the FMA kernels. Three tile products still cost far fewer cycles than
 * the FMAs they replace. Keys and values stored as fp32 are split the same
 * way when the forward packs them (the x3 kernels): six tile products per
 * step then keep all but terms below 2^-23 of each product. (Exactly so for
 * |x| >= 2^-103: below, the smallest terms are bf16 denormals, which tile
 * products read as zero; such values are ~1e-31 of their row's largest and
 * change nothing measurable.)
 */
#ifndef NSA_AMX_HELPERS_H
#define NSA_AMX_HELPERS_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <immintrin.h>

#include "avx512/avx512-helpers.h" /* the AMX kernels are AVX-512 code too */

/* A tile: 16 rows of 64 bytes (32 bf16 or 16 fp32). */
enum { NSA_AMX_ROWS = 16, NSA_AMX_BYTES = 64, NSA_AMX_DEPTH = 32 };

/* Configures all eight tiles as full 16 x 64-byte tiles. Every kernel call
 * loads the configuration and releases the tiles before it returns, so no
 * tile state outlives a call; an application that uses AMX itself finds
 * the tiles released after a libnsa call and configures them again. */
static inline void nsa_amx_begin(void)
{
    struct {
        uint8_t palette, start_row, reserved[14];
        uint16_t colsb[16];
        uint8_t rows[16];
    } config;
    memset(&config, 0, sizeof config);
    config.palette = 1;
    for (int t = 0; t < 8; t++) {
        config.colsb[t] = NSA_AMX_BYTES;
        config.rows[t] = NSA_AMX_ROWS;
    }
    _tile_loadconfig(&config);
}

static inline void nsa_amx_end(void)
{
    _tile_release();
}

/* Accumulator tile `acc` += the three terms of the left operand (tiles
 * 4-6) times the right one (tile 7): the kernels' tile numbering. */
#define NSA_AMX_THREE_TERMS(acc)                                                            \
    do {                                                                                    \
        _tile_dpbf16ps(acc, 4, 7);                                                          \
        _tile_dpbf16ps(acc, 5, 7);                                                          \
        _tile_dpbf16ps(acc, 6, 7);                                                          \
    } while (0)

/* Tile products of split left (tiles 2-4: hi, mid, lo) and right (tiles
 * 5-7) operands into accumulator `acc`: six of the nine term products,
 * the dropped three (mid.lo, lo.mid, lo.lo) below 2^-23 of the product
 * (ukernels.h). For the x3 kernels' tile numbering. */
#define NSA_AMX_SIX_TERMS(acc)                                                              \
    do {                                                                                    \
        _tile_dpbf16ps(acc, 2, 5);                                                          \
        _tile_dpbf16ps(acc, 2, 6);                                                          \
        _tile_dpbf16ps(acc, 3, 5);                                                          \
        _tile_dpbf16ps(acc, 2, 7);                                                          \
        _tile_dpbf16ps(acc, 4, 5);                                                          \
        _tile_dpbf16ps(acc, 3, 6);                                                          \
    } while (0)

/* x rounded to the nearest bf16 (ties away from zero), still as fp32: the
 * vector form of nsa_bf16_round (ukernels.h). */
static inline __m512 nsa_amx_round_bf16(__m512 x)
{
    const __m512i up = _mm512_add_epi32(_mm512_castps_si512(x), _mm512_set1_epi32(0x8000));
    return _mm512_castsi512_ps(_mm512_and_si512(up, _mm512_set1_epi32((int)0xffff0000u)));
}

/* x == hi + mid + lo exactly, for the 32 values of x0 and x1, each term
 * stored as 32 bf16: nsa_split3 (ukernels.h) in vector form. The terms are
 * bf16 values already, so the conversion (round to nearest even) changes
 * none of them. */
static inline void nsa_amx_split3(__m512 x0, __m512 x1, uint16_t *hi, uint16_t *mid,
                                  uint16_t *lo)
{
    const __m512 h0 = nsa_amx_round_bf16(x0), h1 = nsa_amx_round_bf16(x1);
    const __m512 r0 = _mm512_sub_ps(x0, h0), r1 = _mm512_sub_ps(x1, h1);
    const __m512 m0 = nsa_amx_round_bf16(r0), m1 = nsa_amx_round_bf16(r1);
    const __m512 l0 = _mm512_sub_ps(r0, m0), l1 = _mm512_sub_ps(r1, m1);
    _mm512_storeu_si512(hi, (__m512i)_mm512_cvtne2ps_pbh(h1, h0));
    _mm512_storeu_si512(mid, (__m512i)_mm512_cvtne2ps_pbh(m1, m0));
    _mm512_storeu_si512(lo, (__m512i)_mm512_cvtne2ps_pbh(l1, l0));
}

/* Accumulator tile 0 or 1 (second) from or to rows `stride` bytes apart:
 * the x3 kernels keep two. */
static inline void nsa_amx_load_acc(int second, const float *at, size_t stride)
{
    if (second)
        _tile_loadd(1, at, stride);
    else
        _tile_loadd(0, at, stride);
}

static inline void nsa_amx_store_acc(int second, float *at, size_t stride)
{
    if (second)
        _tile_stored(1, at, stride);
    else
        _tile_stored(0, at, stride);
}

/* The three terms of a split operand into tiles 2-4 (left) or 5-7
 * (right), the x3 kernels' numbering: term t at at + t * term words, rows
 * `stride` words apart. */
static inline void nsa_amx_load_left3(const uint16_t *at, size_t term, size_t stride)
{
    _tile_loadd(2, at, stride * sizeof(uint16_t));
    _tile_loadd(3, at + term, stride * sizeof(uint16_t));
    _tile_loadd(4, at + 2 * term, stride * sizeof(uint16_t));
}

static inline void nsa_amx_load_right3(const uint16_t *at, size_t term, size_t stride)
{
    _tile_loadd(5, at, stride * sizeof(uint16_t));
    _tile_loadd(6, at + term, stride * sizeof(uint16_t));
    _tile_loadd(7, at + 2 * term, stride * sizeof(uint16_t));
}

/* The same right tiles where they would reach past the operand: the first
 * `have` rows (channels in `mask`, the 16 pairs of a row) copied into a
 * zero-padded `pad` of 3 tiles, zeros for the rest. */
static inline void nsa_amx_load_right3_padded(const uint16_t *at, size_t term, size_t stride,
                                              size_t have, __mmask16 mask, uint16_t *pad)
{
    enum { TILE = NSA_AMX_ROWS * NSA_AMX_DEPTH }; /* words */
    for (size_t t = 0; t < 3; t++)
        for (size_t i = 0; i < NSA_AMX_ROWS; i++)
            _mm512_store_si512(pad + t * TILE + i * NSA_AMX_DEPTH,
                               i < have ? _mm512_maskz_loadu_epi32(mask, at + t * term + i * stride)
                                        : _mm512_setzero_si512());
    nsa_amx_load_right3(pad, TILE, NSA_AMX_DEPTH);
}

/* Asks for `count` rows of a right tile (row stride `stride` words) ahead
 * of its load: tile loads seem not to train the hardware prefetchers. */
static inline void nsa_amx_prefetch_rows(const uint16_t *rows, size_t stride, size_t count)
{
    for (size_t i = 0; i < count; i++)
        _mm_prefetch((const char *)(rows + i * stride), _MM_HINT_T0);
}

static inline void nsa_amx_prefetch_tile(const uint16_t *rows, size_t stride)
{
    nsa_amx_prefetch_rows(rows, stride, NSA_AMX_ROWS);
}

/* The left tiles' rows: 16 rows x width columns (width a multiple of 32)
 * of terms[t] (row stride ld words) from rows x cols values of x (row
 * stride ldx) times scale, zeros past rows and cols. */
static inline void nsa_amx_split_rows(const float *x, size_t ldx, size_t rows, size_t cols,
                                      float scale, size_t width, size_t ld,
                                      uint16_t *const terms[3])
{
    const __m512 vscale = _mm512_set1_ps(scale);
    for (size_t r = 0; r < NSA_AMX_ROWS; r++)
        for (size_t c = 0; c < width; c += NSA_AMX_DEPTH) {
            const size_t left = r < rows && c < cols ? cols - c : 0;
            const float *row = r < rows ? x + r * ldx + c : x;
            const size_t at = r * ld + c;
            const __m512 x0 =
                _mm512_mul_ps(vscale, _mm512_maskz_loadu_ps(nsa_avx512_mask_first(left), row));
            const __m512 x1 =
                left > 16 ? _mm512_mul_ps(vscale, _mm512_maskz_loadu_ps(
                                                      nsa_avx512_mask_first(left - 16), row + 16))
                          : _mm512_setzero_ps();
            nsa_amx_split3(x0, x1, terms[0] + at, terms[1] + at, terms[2] + at);
        }
}

#endif /* NSA_AMX_HELPERS_H */
