/* SPDX-License-Identifier: MIT */
/*
 * bf16-pv-16x64-amx.c — acc += P . V with bf16 value rows (contract in
 * src/ukernels.h) with AMX tile products.
 *
 * Tile: 16 rows x 64 value channels in four accumulator tiles. Keys go in
 * steps of up to KEY_STEP: the probabilities of a step are split once into
 * three exact bf16 terms (amx-helpers.h), 32 keys per left tile; the right
 * tile of 32 keys x 16 channels pairs value rows 2p and 2p + 1 into its
 * row p with one word permutation. Each (32 keys, 16 channels) step is
 * three tile products, one per term. The tiles start at zero and are added
 * to acc at the end of a key step. Keys past nk and channels past dv are
 * zeros and never read. Few rows go to the AVX-512 kernel, as in qk.
 */
#include "amx-helpers.h"
#include "ukernels.h"

enum {
    MIN_ROWS = 8,    /* fewer rows per call: the AVX-512 kernel is faster */
    KEY_STEP = 256,  /* keys whose terms are split at once */
    GROUP = 4        /* channel blocks of 16 per pass: four accumulators */
};

/* The right tile of keys k0 .. k0 + 32 (below nk) and channels d0 .. d0 + 16
 * (below dv): row p pairs value rows k0 + 2p and k0 + 2p + 1. */
static void pair_values(const uint16_t *v, size_t ldv, size_t k0, size_t nk, size_t d0,
                        size_t dv, uint16_t *b)
{
    const __m512i index = nsa_amx_pair_index();
    const __mmask16 mask = nsa_amx_mask(dv - d0);
    for (size_t p = 0; p < NSA_AMX_ROWS; p++) {
        const size_t k = k0 + 2 * p;
        const __m256i even = k < nk ? _mm256_maskz_loadu_epi16(mask, v + k * ldv + d0)
                                    : _mm256_setzero_si256();
        const __m256i odd = k + 1 < nk ? _mm256_maskz_loadu_epi16(mask, v + (k + 1) * ldv + d0)
                                       : _mm256_setzero_si256();
        const __m512i both = _mm512_inserti64x4(_mm512_castsi256_si512(even), odd, 1);
        _mm512_store_si512(b + p * NSA_AMX_DEPTH, _mm512_permutexvar_epi16(index, both));
    }
}

/* Accumulator tile `acc` += the three terms (tiles 4-6) times tile 7. */
#define THREE_TERMS(acc)                                                                    \
    do {                                                                                    \
        _tile_dpbf16ps(acc, 4, 7);                                                          \
        _tile_dpbf16ps(acc, 5, 7);                                                          \
        _tile_dpbf16ps(acc, 6, 7);                                                          \
    } while (0)

/* acc[rows][dv] += P . V[k0 .. k0 + count) for up to 16 rows whose terms
 * are at terms[3] (stride ld words, key k0 at column 0). */
static void pv_rows(size_t rows, size_t k0, size_t count, size_t dv, uint16_t *const terms[3],
                    size_t ld, const uint16_t *v, size_t ldv, float *acc, size_t ldacc)
{
    _Alignas(64) uint16_t right[NSA_AMX_ROWS * NSA_AMX_DEPTH];
    _Alignas(64) float out[NSA_AMX_ROWS * 16];
    const size_t end = k0 + count;
    for (size_t d0 = 0; d0 < dv; d0 += GROUP * 16) {
        const size_t blocks = (dv - d0 + 15) / 16 < GROUP ? (dv - d0 + 15) / 16 : GROUP;
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
        for (size_t j = 0; j < count; j += NSA_AMX_DEPTH) {
            _tile_loadd(4, terms[0] + j, ld * sizeof(uint16_t));
            _tile_loadd(5, terms[1] + j, ld * sizeof(uint16_t));
            _tile_loadd(6, terms[2] + j, ld * sizeof(uint16_t));
            for (size_t b = 0; b < blocks; b++) {
                pair_values(v, ldv, k0 + j, end, d0 + 16 * b, dv, right);
                _tile_loadd(7, right, NSA_AMX_BYTES);
                switch (b) {
                case 0: THREE_TERMS(0); break;
                case 1: THREE_TERMS(1); break;
                case 2: THREE_TERMS(2); break;
                default: THREE_TERMS(3); break;
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
            const __mmask16 mask = nsa_amx_mask(dv - d);
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
            nsa_amx_split_rows(p + r0 * ldp + k0, ldp, rows, count, ld, terms);
            pv_rows(rows, k0, count, dv, terms, ld, v, ldv, acc + r0 * ldacc, ldacc);
        }
    }
    nsa_amx_end();
}
