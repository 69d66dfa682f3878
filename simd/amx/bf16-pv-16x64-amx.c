/* SPDX-License-Identifier: MIT */
/*
 * bf16-pv-16x64-amx.c — acc += P . V with bf16 value rows (paired layout,
 * contract in src/ukernels.h) with AMX tile products.
 *
 * Tile: 16 rows x 64 value channels in four accumulator tiles. Keys go in
 * steps of up to KEY_STEP; a step's probabilities are split into three
 * exact bf16 terms (amx-helpers.h), 32 keys per left tile, each 32 as the
 * first pass over the channels reaches them (a tile load waits for the
 * stores before it: splitting everything first made the first loads wait
 * for all of them). Value rows hold two keys each, the right operand's
 * layout: 16 rows x 16 channels are one right tile, loaded in place
 * (through a zero-padded copy when it would reach past the last key's row
 * or past dv), and the same tile 32 keys on is prefetched meanwhile (tile
 * loads seem not to train the hardware prefetchers: +10 % on the dev VM). Each
 * (32 keys, 16 channels) step is three tile products, one per term. The
 * tiles start at zero and are added to acc at the end of a key step. Few
 * rows go to the AVX-512 kernel, as in qk.
 */
#include "amx-helpers.h"
#include "ukernels.h"

enum {
    MIN_ROWS = 8,   /* fewer rows per call: the AVX-512 kernel is faster */
    KEY_STEP = 256, /* keys whose terms are split at once */
    GROUP = 4       /* channel blocks of 16 per pass: four accumulators */
};

/* Loads tile 7 with keys k .. k + 32 (below nk) and channels d .. d + 16
 * (below dv) of the value rows at v: in place when all are there, else
 * through `pad` (zeros for what is missing). */
static void load_right(const uint16_t *v, size_t ldv, size_t k, size_t nk, size_t d, size_t dv,
                       uint16_t *pad)
{
    const uint16_t *rows = v + k * ldv + 2 * d;
    const size_t stride = 2 * ldv; /* words from a row to the next */
    if (k + NSA_AMX_DEPTH <= nk && d + 16 <= dv) {
        _tile_loadd(7, rows, stride * sizeof(uint16_t));
        return;
    }
    const size_t have = (nk - k + 1) / 2; /* rows left, the last maybe half used */
    const __mmask16 mask = nsa_avx512_mask_first(dv - d);
    for (size_t i = 0; i < NSA_AMX_ROWS; i++)
        _mm512_store_si512(pad + i * NSA_AMX_DEPTH,
                           i < have ? _mm512_maskz_loadu_epi32(mask, rows + i * stride)
                                    : _mm512_setzero_si512());
    _tile_loadd(7, pad, NSA_AMX_BYTES);
}

/* acc[rows][dv] += P . V[k0 .. k0 + count) for up to 16 rows of p (stride
 * ldp, key k0 at column 0), split into terms[3] (stride ld words) as the
 * first pass over the channels reaches them. */
static void pv_rows(size_t rows, size_t k0, size_t count, size_t dv, const float *p, size_t ldp,
                    uint16_t *const terms[3], size_t ld, const uint16_t *v, size_t ldv,
                    float *acc, size_t ldacc)
{
    _Alignas(64) uint16_t pad[NSA_AMX_ROWS * NSA_AMX_DEPTH];
    _Alignas(64) float out[NSA_AMX_ROWS * 16];
    const size_t end = k0 + count;
    for (size_t d0 = 0; d0 < dv; d0 += GROUP * 16) {
        const size_t blocks = (dv - d0 + 15) / 16 < GROUP ? (dv - d0 + 15) / 16 : GROUP;
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
        for (size_t j = 0; j < count; j += NSA_AMX_DEPTH) {
            if (d0 == 0) {
                uint16_t *const at[3] = {terms[0] + j, terms[1] + j, terms[2] + j};
                nsa_amx_split_rows(p + j, ldp, rows, count - j, 1.0f, NSA_AMX_DEPTH, ld, at);
            }
            _tile_loadd(4, terms[0] + j, ld * sizeof(uint16_t));
            _tile_loadd(5, terms[1] + j, ld * sizeof(uint16_t));
            _tile_loadd(6, terms[2] + j, ld * sizeof(uint16_t));
            for (size_t b = 0; b < blocks; b++) {
                if (k0 + j + NSA_AMX_DEPTH < end) /* the same tile 32 keys on */
                    nsa_amx_prefetch_tile(v + (k0 + j + NSA_AMX_DEPTH) * ldv + 2 * (d0 + 16 * b),
                                          2 * ldv);
                load_right(v, ldv, k0 + j, end, d0 + 16 * b, dv, pad);
                switch (b) {
                case 0: NSA_AMX_THREE_TERMS(0); break;
                case 1: NSA_AMX_THREE_TERMS(1); break;
                case 2: NSA_AMX_THREE_TERMS(2); break;
                default: NSA_AMX_THREE_TERMS(3); break;
                }
            }
        }
        for (size_t b = 0; b < blocks; b++) {
            switch (b) {
            case 0: _tile_stored(0, out, NSA_AMX_BYTES); break;
            case 1: _tile_stored(1, out, NSA_AMX_BYTES); break;
            case 2: _tile_stored(2, out, NSA_AMX_BYTES); break;
            default: _tile_stored(3, out, NSA_AMX_BYTES); break;
            }
            const size_t d = d0 + 16 * b;
            const __mmask16 mask = nsa_avx512_mask_first(dv - d);
            for (size_t r = 0; r < rows; r++) {
                float *dst = acc + r * ldacc + d;
                const __m512 sum = _mm512_add_ps(_mm512_maskz_loadu_ps(mask, dst),
                                                 _mm512_load_ps(out + r * 16));
                _mm512_mask_storeu_ps(dst, mask, sum);
            }
        }
    }
}

void nsa_bf16_pv_ukernel_16x64__amx(size_t m, size_t nk, size_t dv, const float *p, size_t ldp,
                                    const uint16_t *v, size_t ldv, float *acc, size_t ldacc)
{
    if (m < MIN_ROWS) {
        nsa_bf16_pv_ukernel_8x32__avx512(m, nk, dv, p, ldp, v, ldv, acc, ldacc);
        return;
    }
    _Alignas(64) uint16_t split[3][NSA_AMX_ROWS * KEY_STEP];
    uint16_t *const terms[3] = {split[0], split[1], split[2]};
    nsa_amx_begin();
    for (size_t k0 = 0; k0 < nk; k0 += KEY_STEP) {
        const size_t count = nk - k0 < KEY_STEP ? nk - k0 : KEY_STEP;
        const size_t ld = (count + NSA_AMX_DEPTH - 1) / NSA_AMX_DEPTH * NSA_AMX_DEPTH;
        for (size_t r0 = 0; r0 < m; r0 += NSA_AMX_ROWS) {
            const size_t rows = m - r0 < NSA_AMX_ROWS ? m - r0 : NSA_AMX_ROWS;
            pv_rows(rows, k0, count, dv, p + r0 * ldp + k0, ldp, terms, ld, v, ldv,
                    acc + r0 * ldacc, ldacc);
        }
    }
    nsa_amx_end();
}
