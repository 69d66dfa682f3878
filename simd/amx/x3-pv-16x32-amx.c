/* SPDX-License-Identifier: MIT */
/*
 * x3-pv-16x32-amx.c — acc += P . V with split fp32 value rows (three bf16
 * terms per value, contract in src/ukernels.h) with AMX tile products: the
 * forward's fp32 pv when the CPU has tile products.
 *
 * Tile: 16 rows x 32 value channels in two accumulator tiles, which start
 * from acc itself and go back to it (no separate sum). Keys go in steps of
 * up to KEY_STEP whose probabilities are split into three exact bf16 terms
 * (amx-helpers.h) once; each 32 keys they are three left tiles, loaded
 * once for both accumulators, whose right tiles are the three terms of 16
 * pair rows x 16 channels: six tile products per accumulator
 * (NSA_AMX_SIX_TERMS). Right tiles load in place, strided over the terms
 * of the rows between, except where they would reach past the last key's
 * pair row or past dv (copied into a zero-padded tile).
 */
#include "amx-helpers.h"
#include "ukernels.h"

enum { KEY_STEP = 256 }; /* keys whose terms are split at once */

/* Tiles 5-7 = the three terms of keys k .. k + 32 (below nk) and channels
 * d .. d + 16 (below dv) of the split value rows at v. */
static void load_value_terms(const uint16_t *v, size_t ldv, size_t k, size_t nk, size_t d,
                             size_t dv, uint16_t *pad)
{
    const size_t row = 2 * ldv, stride = nsa_x3_pair_words(ldv); /* a term's row, a pair row */
    const uint16_t *at = v + k / 2 * stride + 2 * d;
    if (k + NSA_AMX_DEPTH <= nk && d + 16 <= dv)
        nsa_amx_load_right3(at, row, stride);
    else /* the pair rows left, the last maybe half used */
        nsa_amx_load_right3_padded(at, row, stride, (nk - k + 1) / 2,
                                   nsa_avx512_mask_first(dv - d), pad);
}

/* Asks for the three terms of the right tile of keys k .. k + 32 (below
 * nk) and channels d .. d + 16 ahead of use. */
static void prefetch_value_terms(const uint16_t *v, size_t ldv, size_t k, size_t nk, size_t d)
{
    const size_t row = 2 * ldv, stride = nsa_x3_pair_words(ldv), rows = (nk - k + 1) / 2;
    const uint16_t *at = v + k / 2 * stride + 2 * d;
    for (size_t t = 0; t < 3; t++)
        nsa_amx_prefetch_rows(at + t * row, stride, rows < NSA_AMX_ROWS ? rows : NSA_AMX_ROWS);
}

/* Moves accumulator tile `second` from (to_tile) or to acc's rows x 16
 * channels from d: in place when all are there, else through `buf`. */
static void move_acc(int second, int to_tile, float *acc, size_t ldacc, size_t rows, size_t d,
                     size_t dv, float *buf)
{
    const int direct = rows == NSA_AMX_ROWS && d + 16 <= dv;
    float *at = acc + d;
    const __mmask16 mask = nsa_avx512_mask_first(dv - d);
    if (!direct && to_tile)
        for (size_t r = 0; r < NSA_AMX_ROWS; r++)
            _mm512_store_ps(buf + r * 16, r < rows ? _mm512_maskz_loadu_ps(mask, at + r * ldacc)
                                                   : _mm512_setzero_ps());
    float *tile = direct ? at : buf;
    const size_t stride = (direct ? ldacc : 16) * sizeof(float);
    if (to_tile) {
        nsa_amx_load_acc(second, tile, stride);
        return;
    }
    nsa_amx_store_acc(second, tile, stride);
    if (!direct)
        for (size_t r = 0; r < rows; r++)
            _mm512_mask_storeu_ps(at + r * ldacc, mask, _mm512_load_ps(buf + r * 16));
}

/* acc[rows][dv] += P . V[k0 .. k0 + count) for up to 16 rows whose
 * probabilities are split (stride ld, key k0 at column 0). */
static void pv_rows(size_t rows, size_t k0, size_t count, size_t dv, const uint16_t *split,
                    size_t ld, const uint16_t *v, size_t ldv, float *acc, size_t ldacc)
{
    _Alignas(64) uint16_t pad[3 * NSA_AMX_ROWS * NSA_AMX_DEPTH];
    _Alignas(64) float buf[NSA_AMX_ROWS * 16];
    const size_t end = k0 + count, term = NSA_AMX_ROWS * ld;
    for (size_t d = 0; d < dv; d += 32) {
        const int two = d + 16 < dv;
        move_acc(0, 1, acc, ldacc, rows, d, dv, buf);
        if (two)
            move_acc(1, 1, acc, ldacc, rows, d + 16, dv, buf);
        for (size_t j = 0; j < count; j += NSA_AMX_DEPTH) {
            nsa_amx_load_left3(split + j, term, ld);
            if (k0 + j + NSA_AMX_DEPTH < end) /* the same tiles 32 keys on */
                prefetch_value_terms(v, ldv, k0 + j + NSA_AMX_DEPTH, end, d);
            load_value_terms(v, ldv, k0 + j, end, d, dv, pad);
            NSA_AMX_SIX_TERMS(0);
            if (two) {
                if (k0 + j + NSA_AMX_DEPTH < end)
                    prefetch_value_terms(v, ldv, k0 + j + NSA_AMX_DEPTH, end, d + 16);
                load_value_terms(v, ldv, k0 + j, end, d + 16, dv, pad);
                NSA_AMX_SIX_TERMS(1);
            }
        }
        move_acc(0, 0, acc, ldacc, rows, d, dv, buf);
        if (two)
            move_acc(1, 0, acc, ldacc, rows, d + 16, dv, buf);
    }
}

void nsa_x3_pv_ukernel_16x32__amx(size_t m, size_t nk, size_t dv, const float *p, size_t ldp,
                                  const uint16_t *v, size_t ldv, float *acc, size_t ldacc)
{
    _Alignas(64) uint16_t split[3 * NSA_AMX_ROWS * KEY_STEP];
    nsa_amx_begin();
    for (size_t k0 = 0; k0 < nk; k0 += KEY_STEP) {
        const size_t count = nk - k0 < KEY_STEP ? nk - k0 : KEY_STEP;
        const size_t ld = (count + NSA_AMX_DEPTH - 1) / NSA_AMX_DEPTH * NSA_AMX_DEPTH;
        uint16_t *const terms[3] = {split, split + NSA_AMX_ROWS * ld,
                                    split + 2 * NSA_AMX_ROWS * ld};
        for (size_t r0 = 0; r0 < m; r0 += NSA_AMX_ROWS) {
            const size_t rows = m - r0 < NSA_AMX_ROWS ? m - r0 : NSA_AMX_ROWS;
            nsa_amx_split_rows(p + r0 * ldp + k0, ldp, rows, count, 1.0f, ld, ld, terms);
            pv_rows(rows, k0, count, dv, split, ld, v, ldv, acc + r0 * ldacc, ldacc);
        }
    }
    nsa_amx_end();
}
