/* SPDX-License-Identifier: MIT */
/*
 * test_ukernels.c — every kernel of the registry (simd/ukernels.inc) against
 * the reference kernel of its slot (src/ref/), over shapes that straddle
 * every tile boundary: rows below, at and above the row tile, column tails
 * of every width, single and odd panel counts, empty and partial softmax
 * ranges. Each case also checks that nothing outside the contract's rows
 * and columns is written (sentinels around every output) and, under ASan,
 * that nothing past an exactly sized input is read.
 *
 * One cmocka test per registry line; a line whose ISA this CPU lacks is
 * skipped, so the same binary runs everywhere.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "cpu_features.h"
#include "forward.h"
#include "split_keys.h"
#include "ukernels.h"

/* ------------------------------------------------------------ registry -- */

typedef enum slot {
    SLOT_qk,
    SLOT_pv,
    SLOT_softmax,
    SLOT_gate_mix,
    SLOT_pool,
    SLOT_qk_bf16,
    SLOT_pv_bf16,
    SLOT_grad_prob,
    SLOT_grad_score,
    SLOT_grad_score_t,
    SLOT_qk_x3,
    SLOT_pv_x3,
    SLOT_split_x3,
    SLOT_qk_bf16_split
} slot;

typedef struct entry {
    nsa_isa isa;
    slot kind;
    const char *name;
    void (*fn)(void);
} entry;

/* Not const: cmocka passes each entry as a test's mutable state. The last
 * entry only ends the list (a build may have no optimised kernel at all). */
static entry registry[] = {
#define NSA_UKERNEL(isa, kslot, fn) {isa, SLOT_##kslot, #fn, (void (*)(void))fn},
#include "ukernels.inc"
#undef NSA_UKERNEL
    {NSA_ISA_REF, SLOT_qk, NULL, NULL},
};

/* ------------------------------------------------------------- helpers -- */

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static float uniform(float lo, float hi)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return lo + (hi - lo) * (float)((rng_state >> 40) * 0x1.0p-24);
}

static float *random_floats(size_t n, float lo, float hi)
{
    float *x = malloc((n ? n : 1) * sizeof *x);
    assert_non_null(x);
    for (size_t i = 0; i < n; i++)
        x[i] = uniform(lo, hi);
    return x;
}

static float *copy_floats(const float *x, size_t n)
{
    float *y = malloc((n ? n : 1) * sizeof *y);
    assert_non_null(y);
    memcpy(y, x, n * sizeof *y);
    return y;
}

/* Random bf16 values in [lo, hi] (the upper halves of fp32 ones). */
static uint16_t *random_bf16(size_t n, float lo, float hi)
{
    uint16_t *x = malloc((n ? n : 1) * sizeof *x);
    assert_non_null(x);
    for (size_t i = 0; i < n; i++) {
        const float f = uniform(lo, hi);
        uint32_t bits;
        memcpy(&bits, &f, sizeof bits);
        x[i] = (uint16_t)(bits >> 16);
    }
    return x;
}

/* np bf16 key panels (paired layout, ukernels.h) of random keys, the
 * padding channel of an odd dk 0. */
static uint16_t *random_bf16_panels(size_t np, size_t dk)
{
    uint16_t *kp = random_bf16(np * nsa_bf16_panel_words(dk), -1, 1);
    if (dk % 2 == 1)
        for (size_t j = 0; j < np * NSA_PANEL; j++)
            kp[nsa_bf16_key_at(dk, j, dk)] = 0;
    return kp;
}

/* Words of nk bf16 value rows (paired layout, ukernels.h) of stride ldv,
 * exactly: the last pair's row ends at its 2 dv-th word. */
static size_t bf16_value_words(size_t nk, size_t dv, size_t ldv)
{
    return (nk - 1) / 2 * 2 * ldv + 2 * dv;
}

/* A value no kernel computes: marks memory a kernel must not write. */
static const float SENTINEL = -12345.5f;

static void fill_sentinel(float *x, size_t n)
{
    for (size_t i = 0; i < n; i++)
        x[i] = SENTINEL;
}

/* Compares a rows x cols region (stride ld) and requires every other
 * element of the ld * rows_total buffer to be equal in both (untouched or
 * identical). tol scales with the magnitude each element was built from. */
static void expect_region(const char *what, const float *got, const float *want, size_t rows,
                          size_t cols, size_t ld, size_t total, double atol, double rtol)
{
    for (size_t i = 0; i < total; i++) {
        size_t r = i / ld, c = i % ld;
        double g = got[i], w = want[i];
        int inside = r < rows && c < cols;
        if (inside ? fabs(g - w) <= atol + rtol * fabs(w) : g == w)
            continue;
        fail_msg("%s: element [%zu][%zu] (%s the output region %zux%zu): got %.9g, want %.9g", what,
                 r, c, inside ? "inside" : "outside", rows, cols, g, w);
    }
}

/* ---------------------------------------------------------------- cases -- */

/* The split panels (split_keys.h) of np fp32 key panels. */
static uint16_t *split_panels(const float *kp, size_t np, size_t dk)
{
    float *rows = malloc(np * NSA_PANEL * dk * sizeof *rows);
    uint16_t *split = malloc(np * nsa_x3_panel_words(dk) * sizeof *split);
    assert_non_null(rows);
    assert_non_null(split);
    for (size_t j = 0; j < np * NSA_PANEL; j++)
        for (size_t c = 0; c < dk; c++)
            rows[j * dk + c] = kp[j / NSA_PANEL * dk * NSA_PANEL + c * NSA_PANEL + j % NSA_PANEL];
    nsa_pack_panels_x3(rows, dk, (int64_t)(np * NSA_PANEL), (int64_t)dk, 0, (int64_t)np, split);
    free(rows);
    return split;
}

/* The split query layout (ukernels.h) of m rows of q times scale. */
static uint16_t *split_rows(const float *q, size_t ldq, size_t m, size_t dk, float scale)
{
    uint16_t *q3 = malloc(nsa_x3_query_words(m, dk) * sizeof *q3);
    assert_non_null(q3);
    nsa_x3_split_ukernel__ref(m, dk, scale, q, ldq, q3);
    return q3;
}

/* Words of the split value rows of nk keys (stride ldv), exactly: the last
 * pair row ends at its third term's 2 dv-th word. */
static size_t x3_value_words(size_t nk, size_t dv, size_t ldv)
{
    return (nk - 1) / 2 * 3 * 2 * ldv + 2 * 2 * ldv + 2 * dv;
}

/* Split value rows of v[nk][dv] (stride ldv both), packed to exactly
 * x3_value_words words. */
static uint16_t *split_values(const float *v, size_t nk, size_t dv, size_t ldv)
{
    const size_t pairs = (nk + 1) / 2;
    uint16_t *full = malloc(pairs * 3 * 2 * ldv * sizeof *full);
    assert_non_null(full);
    nsa_pack_values_x3(v, ldv, (int64_t)nk, (int64_t)dv, 0, (int64_t)pairs, ldv, full);
    uint16_t *exact = malloc(x3_value_words(nk, dv, ldv) * sizeof *exact);
    assert_non_null(exact);
    memcpy(exact, full, x3_value_words(nk, dv, ldv) * sizeof *exact);
    free(full);
    return exact;
}

/* The next hint of the fp32 qk kernel only prefetches: the same call with
 * other panels as the hint writes the same bits as got (the call without
 * one), sentinels included. */
static void expect_hint_ignored_qk(nsa_qk_ukernel *fn, size_t m, size_t np, size_t dk,
                                   const float *q, size_t ldq, const float *kp, const float *got,
                                   size_t lds, size_t total)
{
    float *next = random_floats(np * dk * NSA_PANEL, -1, 1);
    float *hinted = malloc(total * sizeof *hinted);
    fill_sentinel(hinted, total);
    fn(m, np, dk, 0.37f, q, ldq, kp, hinted, lds, next);
    assert_memory_equal(hinted, got, total * sizeof *got);
    free(next);
    free(hinted);
}

/* The same for pv, whose acc is read as well as written: called on a copy
 * of acc before the caller's own call. */
static void expect_hint_ignored_pv(nsa_pv_ukernel *fn, size_t m, size_t nk, size_t dv,
                                   const float *p, size_t ldp, const float *v, size_t ldv,
                                   const float *acc, size_t ldacc, size_t total)
{
    float *next = random_floats((nk - 1) * ldv + dv, -1, 1);
    float *hinted = copy_floats(acc, total), *plain = copy_floats(acc, total);
    fn(m, nk, dv, p, ldp, v, ldv, hinted, ldacc, next);
    fn(m, nk, dv, p, ldp, v, ldv, plain, ldacc, NULL);
    assert_memory_equal(hinted, plain, total * sizeof *plain);
    free(next);
    free(hinted);
    free(plain);
}

/* qk with fp32 keys (fn), bf16 keys (fn16), split fp32 keys (fn3) or
 * bf16 keys with split rows (fn16s), against the reference of the keys'
 * values (for split keys, the fp32 reference on the keys before the split;
 * for split rows, the bf16 reference on the rows before the split). */
static void check_qk(nsa_qk_ukernel *fn, nsa_qk_bf16_ukernel *fn16, nsa_qk_x3_ukernel *fn3,
                     nsa_qk_bf16_split_ukernel *fn16s, const char *name)
{
    static const size_t ms[] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12, 13, 15, 16, 17, 24, 31, 33};
    static const size_t nps[] = {1, 2, 3, 4, 5, 6, 7, 8, 9};
    static const size_t dks[] = {1, 3, 8, 17, 64, 128, 129, 260}; /* 260: AMX hands it on */
    for (size_t a = 0; a < sizeof ms / sizeof *ms; a++)
        for (size_t b = 0; b < sizeof nps / sizeof *nps; b++)
            for (size_t c = 0; c < sizeof dks / sizeof *dks; c++) {
                const size_t m = ms[a], np = nps[b], dk = dks[c];
                const size_t ldq = dk + 3, lds = np * NSA_PANEL + 5, total = (m + 1) * lds;
                float *q = random_floats((m - 1) * ldq + dk, -1, 1);
                const int bf16 = fn16 != NULL || fn16s != NULL;
                float *kp = !bf16 ? random_floats(np * dk * NSA_PANEL, -1, 1) : NULL;
                uint16_t *kp16 = bf16           ? random_bf16_panels(np, dk)
                                 : fn3 != NULL ? split_panels(kp, np, dk)
                                               : NULL;
                float *got = malloc(total * sizeof *got), *want = malloc(total * sizeof *want);
                fill_sentinel(got, total);
                fill_sentinel(want, total);
                if (fn3 != NULL) {
                    uint16_t *q3 = split_rows(q, ldq, m, dk, 0.37f);
                    fn3(m, np, dk, q3, nsa_x3_row_words(dk), kp16, got, lds);
                    nsa_f32_qk_ukernel__ref(m, np, dk, 0.37f, q, ldq, kp, want, lds, NULL);
                    free(q3);
                } else if (fn16s != NULL) {
                    uint16_t *q3 = split_rows(q, ldq, m, dk, 0.37f);
                    fn16s(m, np, dk, q3, nsa_x3_row_words(dk), kp16, got, lds);
                    nsa_bf16_qk_ukernel__ref(m, np, dk, 0.37f, q, ldq, kp16, want, lds);
                    free(q3);
                } else if (fn != NULL) {
                    fn(m, np, dk, 0.37f, q, ldq, kp, got, lds, NULL);
                    expect_hint_ignored_qk(fn, m, np, dk, q, ldq, kp, got, lds, total);
                    nsa_f32_qk_ukernel__ref(m, np, dk, 0.37f, q, ldq, kp, want, lds, NULL);
                } else {
                    fn16(m, np, dk, 0.37f, q, ldq, kp16, got, lds);
                    nsa_bf16_qk_ukernel__ref(m, np, dk, 0.37f, q, ldq, kp16, want, lds);
                }
                char what[128];
                snprintf(what, sizeof what, "%s m=%zu np=%zu dk=%zu", name, m, np, dk);
                expect_region(what, got, want, m, np * NSA_PANEL, lds, total, 2e-6 * (double)dk,
                              1e-5);
                free(q);
                free(kp);
                free(kp16);
                free(got);
                free(want);
            }
}

/* pv with fp32 values (fn), bf16 values (fn16) or split fp32 values
 * (fn3), against the reference of the values (as check_qk). */
static void check_pv(nsa_pv_ukernel *fn, nsa_pv_bf16_ukernel *fn16, nsa_pv_x3_ukernel *fn3,
                     const char *name)
{
    static const size_t ms[] = {1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31};
    static const size_t nks[] = {1, 2, 7, 16, 64, 65, 300};
    static const size_t dvs[] = {1, 3, 8, 12, 15, 16, 17, 31, 32, 33, 48, 128, 130};
    for (size_t a = 0; a < sizeof ms / sizeof *ms; a++)
        for (size_t b = 0; b < sizeof nks / sizeof *nks; b++)
            for (size_t c = 0; c < sizeof dvs / sizeof *dvs; c++) {
                const size_t m = ms[a], nk = nks[b], dv = dvs[c];
                const size_t ldp = nk + 2, ldv = dv + 5, ldacc = dv + 4, total = (m + 1) * ldacc;
                float *p = random_floats((m - 1) * ldp + nk, 0, 1);
                /* exact sizes: ASan sees over-reads */
                float *v = fn16 == NULL ? random_floats((nk - 1) * ldv + dv, -1, 1) : NULL;
                uint16_t *v16 = fn16 != NULL ? random_bf16(bf16_value_words(nk, dv, ldv), -1, 1)
                                : fn3 != NULL ? split_values(v, nk, dv, ldv)
                                              : NULL;
                float *got = random_floats(total, -1, 1);
                for (size_t r = 0; r <= m; r++) /* sentinels right of each row and below */
                    for (size_t col = 0; col < ldacc; col++)
                        if (col >= dv || r == m)
                            got[r * ldacc + col] = SENTINEL;
                float *want = copy_floats(got, total);
                if (fn3 != NULL) {
                    fn3(m, nk, dv, p, ldp, v16, ldv, got, ldacc);
                    nsa_f32_pv_ukernel__ref(m, nk, dv, p, ldp, v, ldv, want, ldacc, NULL);
                } else if (fn != NULL) {
                    expect_hint_ignored_pv(fn, m, nk, dv, p, ldp, v, ldv, got, ldacc, total);
                    fn(m, nk, dv, p, ldp, v, ldv, got, ldacc, NULL);
                    nsa_f32_pv_ukernel__ref(m, nk, dv, p, ldp, v, ldv, want, ldacc, NULL);
                } else {
                    fn16(m, nk, dv, p, ldp, v16, ldv, got, ldacc);
                    nsa_bf16_pv_ukernel__ref(m, nk, dv, p, ldp, v16, ldv, want, ldacc);
                }
                char what[128];
                snprintf(what, sizeof what, "%s m=%zu nk=%zu dv=%zu", name, m, nk, dv);
                expect_region(what, got, want, m, dv, ldacc, total, 2e-6 * (double)nk, 1e-5);
                free(p);
                free(v);
                free(v16);
                free(got);
                free(want);
            }
}

/* The bf16 kernels keep fp32 arithmetic (ukernels.h): with one-hot keys
 * (key j is 1 at channel j) every score is one fp32 product, scale q[r][j]
 * rounded once, and with one-hot values and acc = 0 every output is one
 * probability: both must come out bit for bit. A kernel that rounded q or P
 * to fewer bits (as a bf16 tile product would without the exact split of
 * simd/amx/amx-helpers.h) fails here, not only in the tolerance checks. */
static void check_bf16_exact(nsa_qk_bf16_ukernel *qk, nsa_pv_bf16_ukernel *pv,
                             const char *name)
{
    static const size_t ms[] = {3, 16, 17};
    enum { DIM = 128, KEYS = 128 };
    for (size_t a = 0; a < sizeof ms / sizeof *ms; a++) {
        const size_t m = ms[a];
        float *x = random_floats(m * DIM, -1, 1); /* q (qk) or P (pv), full mantissas */
        uint16_t *one_hot = calloc(KEYS * DIM, sizeof *one_hot);
        float *got = calloc(m * KEYS, sizeof *got);
        assert_non_null(one_hot);
        assert_non_null(got);
        for (size_t j = 0; j < KEYS; j++)
            one_hot[qk != NULL ? nsa_bf16_key_at(DIM, j, j) : nsa_bf16_value_at(DIM, j, j)] =
                0x3f80; /* 1.0 */
        if (qk != NULL)
            qk(m, KEYS / NSA_PANEL, DIM, 0.37f, x, DIM, one_hot, got, KEYS);
        else
            pv(m, KEYS, DIM, x, KEYS, one_hot, DIM, got, DIM);
        for (size_t r = 0; r < m; r++)
            for (size_t j = 0; j < KEYS; j++) {
                const float want = qk != NULL ? 0.37f * x[r * DIM + j] : x[r * KEYS + j];
                if (got[r * KEYS + j] != want)
                    fail_msg("%s m=%zu: row %zu column %zu is %.9g, not %.9g", name, m, r, j,
                             (double)got[r * KEYS + j], (double)want);
            }
        free(x);
        free(one_hot);
        free(got);
    }
}

/* The split kernels keep fp32 arithmetic too, on both sides: with one
 * operand one-hot (exact ones) and the other with full mantissas, every
 * output is one fp32 value, whole: a query or probability (the left side's
 * split) when the keys or values are one-hot, a key or value (their split,
 * and the packing) when the queries or probabilities are, with scale 1. */
static void check_x3_exact(nsa_qk_x3_ukernel *qk, nsa_pv_x3_ukernel *pv, const char *name)
{
    static const size_t ms[] = {3, 16, 17};
    enum { DIM = 128, KEYS = 128 };
    for (size_t a = 0; a < sizeof ms / sizeof *ms; a++)
        for (int left_full = 0; left_full < 2; left_full++) {
            const size_t m = ms[a];
            const float scale = left_full ? 0.37f : 1.0f;
            float *left = calloc(m * DIM, sizeof *left), *right = calloc(KEYS * DIM, sizeof *right);
            float *got = calloc(m * KEYS, sizeof *got);
            assert_non_null(left);
            assert_non_null(right);
            assert_non_null(got);
            for (size_t i = 0; i < m * DIM; i++)
                left[i] = left_full ? uniform(-1, 1) : (float)(i % DIM == (i / DIM) % DIM);
            for (size_t i = 0; i < KEYS * DIM; i++) /* row j: key or value j */
                right[i] = left_full ? (float)(i % DIM == i / DIM) : uniform(-1, 1);
            if (qk != NULL) {
                float *kp = malloc(KEYS * DIM * sizeof *kp);
                assert_non_null(kp);
                nsa_pack_panels(right, DIM, KEYS, DIM, 0, KEYS / NSA_PANEL, kp);
                uint16_t *split = split_panels(kp, KEYS / NSA_PANEL, DIM);
                uint16_t *q3 = split_rows(left, DIM, m, DIM, scale);
                qk(m, KEYS / NSA_PANEL, DIM, q3, nsa_x3_row_words(DIM), split, got, KEYS);
                free(kp);
                free(split);
                free(q3);
            } else {
                uint16_t *split = split_values(right, KEYS, DIM, DIM);
                pv(m, KEYS, DIM, left, KEYS, split, DIM, got, DIM);
                free(split);
            }
            for (size_t r = 0; r < m; r++)
                for (size_t j = 0; j < KEYS; j++) {
                    /* the one-hot side picks one element of the other */
                    const float want = left_full ? (qk != NULL ? scale : 1.0f) * left[r * DIM + j]
                                       : qk != NULL ? right[j * DIM + r % DIM]
                                                    : right[(r % DIM) * DIM + j];
                    if (got[r * KEYS + j] != want)
                        fail_msg("%s m=%zu (%s split): row %zu column %zu is %.9g, not %.9g", name,
                                 m, left_full ? "left" : "right", r, j,
                                 (double)got[r * KEYS + j], (double)want);
                }
            free(left);
            free(right);
            free(got);
        }
}

/* The split of query rows: the same words as the reference, every one
 * (both are exact splits with the same rounding), and none past the layout.
 * Finite inputs of every magnitude the forward meets. */
static void check_split(nsa_split_x3_ukernel *fn, const char *name)
{
    static const size_t ms[] = {1, 5, 15, 16, 17, 33};
    static const size_t dks[] = {1, 3, 17, 32, 64, 100, 128, 260};
    for (size_t a = 0; a < sizeof ms / sizeof *ms; a++)
        for (size_t c = 0; c < sizeof dks / sizeof *dks; c++) {
            const size_t m = ms[a], dk = dks[c], ldq = dk + 7;
            const size_t words = nsa_x3_query_words(m, dk);
            float *q = random_floats((m - 1) * ldq + dk, -1, 1);
            for (size_t i = 0; i < (m - 1) * ldq + dk; i += 3)
                q[i] *= i % 2 ? 1e-20f : 3e15f;
            uint16_t *got = malloc((words + 32) * sizeof *got);
            uint16_t *want = malloc((words + 32) * sizeof *want);
            assert_non_null(got);
            assert_non_null(want);
            memset(got, 0xa5, (words + 32) * sizeof *got);
            memset(want, 0xa5, (words + 32) * sizeof *want);
            fn(m, dk, 0.37f, q, ldq, got);
            nsa_x3_split_ukernel__ref(m, dk, 0.37f, q, ldq, want);
            for (size_t i = 0; i < words + 32; i++)
                if (got[i] != want[i])
                    fail_msg("%s m=%zu dk=%zu: word %zu of %zu is %#x, not %#x", name, m, dk, i,
                             words, got[i], want[i]);
            free(q);
            free(got);
            free(want);
        }
}

static void check_softmax(nsa_softmax_ukernel *fn, const char *name)
{
    static const size_t ms[] = {1, 3, 8, 16, 17};
    static const size_t nks[] = {1, 5, 16, 17, 64, 100, 257};
    static const size_t dvs[] = {1, 7, 16, 33};
    for (size_t a = 0; a < sizeof ms / sizeof *ms; a++)
        for (size_t b = 0; b < sizeof nks / sizeof *nks; b++)
            for (size_t c = 0; c < sizeof dvs / sizeof *dvs; c++) {
                const size_t m = ms[a], nk = nks[b], dv = dvs[c];
                const size_t lds = nk + 3, ldacc = dv + 2;
                int32_t lo[17], hi[17];
                float max_got[17], max_want[17], sum_got[17], sum_want[17];
                for (size_t r = 0; r < m; r++) {
                    switch (r % 4) { /* full, partial, empty, out-of-range limits */
                    case 0: lo[r] = 0; hi[r] = (int32_t)nk - 1; break;
                    case 1: lo[r] = (int32_t)(nk / 3); hi[r] = (int32_t)(nk - 1 - nk / 4); break;
                    case 2: lo[r] = 1; hi[r] = 0; break;
                    default: lo[r] = -5; hi[r] = (int32_t)nk + 7; break;
                    }
                    /* half the rows start fresh, half carry state from a
                     * previous step whose max may be above or below */
                    max_got[r] = max_want[r] = r % 2 ? -INFINITY : uniform(-3, 3);
                    sum_got[r] = sum_want[r] = r % 2 ? 0.0f : uniform(0.5f, 4);
                }
                float *s_got = random_floats((m + 1) * lds, -6, 6);
                float *acc_got = random_floats((m + 1) * ldacc, -1, 1);
                for (size_t r = 0; r <= m; r++)
                    for (size_t col = 0; col < lds; col++)
                        if (col >= nk || r == m)
                            s_got[r * lds + col] = SENTINEL;
                for (size_t r = 0; r <= m; r++) /* fresh rows start from acc = 0 */
                    for (size_t col = 0; col < ldacc; col++)
                        if (r == m || col >= dv)
                            acc_got[r * ldacc + col] = SENTINEL;
                        else if (r % 2)
                            acc_got[r * ldacc + col] = 0.0f;
                float *s_want = copy_floats(s_got, (m + 1) * lds);
                float *acc_want = copy_floats(acc_got, (m + 1) * ldacc);
                fn(m, nk, lo, hi, s_got, lds, max_got, sum_got, dv, acc_got, ldacc);
                nsa_f32_softmax_ukernel__ref(m, nk, lo, hi, s_want, lds, max_want, sum_want, dv,
                                             acc_want, ldacc);
                char what[128];
                snprintf(what, sizeof what, "%s m=%zu nk=%zu dv=%zu", name, m, nk, dv);
                /* exp within 2 ulp of expf: 5e-7 relative catches a worse one */
                expect_region(what, s_got, s_want, m, nk, lds, (m + 1) * lds, 1e-9, 5e-7);
                expect_region(what, acc_got, acc_want, m, dv, ldacc, (m + 1) * ldacc, 1e-9, 5e-7);
                for (size_t r = 0; r < m; r++) {
                    assert_true(max_got[r] == max_want[r] ||
                                (isinf(max_got[r]) && isinf(max_want[r])));
                    assert_float_equal(sum_got[r], sum_want[r], 2e-6 * (1 + fabs(sum_want[r])));
                }
                free(s_got);
                free(s_want);
                free(acc_got);
                free(acc_want);
            }
}

static void check_gate_mix(nsa_gate_mix_ukernel *fn, const char *name)
{
    static const size_t ms[] = {1, 2, 16, 17};
    static const size_t dvs[] = {1, 5, 8, 15, 16, 17, 128, 130};
    for (size_t a = 0; a < sizeof ms / sizeof *ms; a++)
        for (size_t c = 0; c < sizeof dvs / sizeof *dvs; c++) {
            const size_t m = ms[a], dv = dvs[c], ldacc = dv + 3, total = (m + 1) * dv;
            float *gates = random_floats(3 * m, 0, 1);
            float *accs[3], sums[3][17];
            for (int b = 0; b < 3; b++) {
                accs[b] = random_floats((m - 1) * ldacc + dv, -1, 1);
                for (size_t r = 0; r < m; r++) /* some branches saw no key */
                    sums[b][r] = (r + (size_t)b) % 5 == 0 ? 0.0f : uniform(0.5f, 3);
            }
            float *got = malloc(total * sizeof *got), *want = malloc(total * sizeof *want);
            fill_sentinel(got, total);
            fill_sentinel(want, total);
            fn(m, dv, gates, accs[0], sums[0], accs[1], sums[1], accs[2], sums[2], ldacc, got);
            nsa_f32_gate_mix_ukernel__ref(m, dv, gates, accs[0], sums[0], accs[1], sums[1],
                                          accs[2], sums[2], ldacc, want);
            char what[128];
            snprintf(what, sizeof what, "%s m=%zu dv=%zu", name, m, dv);
            expect_region(what, got, want, m, dv, dv, total, 1e-6, 1e-6);
            for (int b = 0; b < 3; b++)
                free(accs[b]);
            free(gates);
            free(got);
            free(want);
        }
}

static void check_pool(nsa_pool_ukernel *fn, const char *name)
{
    static const size_t ls[] = {1, 2, 16, 32, 33};
    static const size_t dims[] = {1, 3, 8, 15, 16, 17, 31, 64, 130, 255, 256, 257, 529};
    for (size_t a = 0; a < sizeof ls / sizeof *ls; a++)
        for (size_t c = 0; c < sizeof dims / sizeof *dims; c++) {
            const size_t l = ls[a], dim = dims[c], ldx = dim + 7, total = dim + 9;
            float *weight = random_floats(l, -1, 1);
            float *x = random_floats((l - 1) * ldx + dim, -1, 1);
            float *got = malloc(total * sizeof *got), *want = malloc(total * sizeof *want);
            fill_sentinel(got, total);
            fill_sentinel(want, total);
            fn(l, dim, weight, x, ldx, got);
            nsa_f32_pool_ukernel__ref(l, dim, weight, x, ldx, want);
            char what[128];
            snprintf(what, sizeof what, "%s l=%zu dim=%zu", name, l, dim);
            expect_region(what, got, want, 1, dim, total, total, 2e-6 * (double)l, 1e-5);
            free(weight);
            free(x);
            free(got);
            free(want);
        }
}

/* Row limits of the backward cases: full, partial, empty, out of range. */
static void backward_limits(size_t m, size_t nk, int32_t *lo, int32_t *hi)
{
    for (size_t r = 0; r < m; r++) {
        switch (r % 4) {
        case 0: lo[r] = 0; hi[r] = (int32_t)nk - 1; break;
        case 1: lo[r] = (int32_t)(nk / 3); hi[r] = (int32_t)(nk - 1 - nk / 4); break;
        case 2: lo[r] = 1; hi[r] = 0; break;
        default: lo[r] = -5; hi[r] = (int32_t)nk + 7; break;
        }
    }
}

static void check_grad_prob(nsa_grad_prob_ukernel *fn, const char *name)
{
    static const size_t ms[] = {1, 3, 8, 16, 17};
    static const size_t nks[] = {1, 5, 8, 16, 17, 64, 100, 257};
    for (size_t a = 0; a < sizeof ms / sizeof *ms; a++)
        for (size_t b = 0; b < sizeof nks / sizeof *nks; b++)
            for (int with_dp = 0; with_dp < 2; with_dp++) {
                const size_t m = ms[a], nk = nks[b], lds = nk + 3, lddp = nk + 5;
                int32_t lo[17], hi[17];
                float lse[17], dot_got[17], dot_want[17];
                backward_limits(m, nk, lo, hi);
                for (size_t r = 0; r < m; r++) {
                    lse[r] = uniform(0, 3);
                    dot_got[r] = dot_want[r] = uniform(-1, 1);
                }
                float *s_got = random_floats((m + 1) * lds, -6, 3);
                for (size_t r = 0; r <= m; r++)
                    for (size_t col = 0; col < lds; col++)
                        if (col >= nk || r == m)
                            s_got[r * lds + col] = SENTINEL;
                float *s_want = copy_floats(s_got, (m + 1) * lds);
                /* exact size: ASan sees reads past the last row's columns */
                float *dp = with_dp ? random_floats((m - 1) * lddp + nk, -2, 2) : NULL;
                fn(m, nk, lo, hi, lse, s_got, lds, dp, lddp, dot_got);
                nsa_f32_grad_prob_ukernel__ref(m, nk, lo, hi, lse, s_want, lds, dp, lddp,
                                               dot_want);
                char what[128];
                snprintf(what, sizeof what, "%s m=%zu nk=%zu dp=%d", name, m, nk, with_dp);
                expect_region(what, s_got, s_want, m, nk, lds, (m + 1) * lds, 1e-7, 2e-6);
                for (size_t r = 0; r < m; r++)
                    if (fabs((double)dot_got[r] - dot_want[r]) > 1e-5 * (1 + (double)nk))
                        fail_msg("%s: dot[%zu] = %.9g, want %.9g", what, r, (double)dot_got[r],
                                 (double)dot_want[r]);
                free(s_got);
                free(s_want);
                free(dp);
            }
}

static void check_grad_score(nsa_grad_score_ukernel *fn, const char *name)
{
    static const size_t ms[] = {1, 3, 8, 16, 17};
    static const size_t nks[] = {1, 5, 8, 15, 16, 17, 64, 100, 257};
    for (size_t a = 0; a < sizeof ms / sizeof *ms; a++)
        for (size_t b = 0; b < sizeof nks / sizeof *nks; b++) {
            const size_t m = ms[a], nk = nks[b], ldp = nk + 2, lddp = nk + 3;
            const size_t total = (m + 1) * lddp;
            float coef[17], dot[17];
            for (size_t r = 0; r < m; r++) {
                coef[r] = uniform(-1, 1);
                dot[r] = uniform(-1, 1);
            }
            float *p = random_floats((m - 1) * ldp + nk, 0, 1);
            float *got = random_floats(total, -2, 2);
            for (size_t r = 0; r <= m; r++)
                for (size_t col = 0; col < lddp; col++)
                    if (col >= nk || r == m)
                        got[r * lddp + col] = SENTINEL;
            float *want = copy_floats(got, total);
            fn(m, nk, coef, dot, p, ldp, got, lddp);
            nsa_f32_grad_score_ukernel__ref(m, nk, coef, dot, p, ldp, want, lddp);
            char what[128];
            snprintf(what, sizeof what, "%s m=%zu nk=%zu", name, m, nk);
            expect_region(what, got, want, m, nk, lddp, total, 1e-7, 2e-6);
            free(p);
            free(got);
            free(want);
        }
}

static void check_grad_score_t(nsa_grad_score_t_ukernel *fn, const char *name)
{
    static const size_t ms[] = {1, 3, 7, 8, 9, 15, 16, 17, 33, 64};
    static const size_t nks[] = {1, 5, 8, 15, 16, 17, 64, 70};
    for (size_t a = 0; a < sizeof ms / sizeof *ms; a++)
        for (size_t b = 0; b < sizeof nks / sizeof *nks; b++) {
            const size_t m = ms[a], nk = nks[b], lds = nk + 3, lddp = nk + 1, ldt = m + 5;
            const size_t total = (nk + 1) * ldt;
            int32_t lo[64], hi[64];
            float lse[64], dot[64], gain[64];
            backward_limits(m, nk, lo, hi);
            for (size_t r = 0; r < m; r++) {
                lse[r] = uniform(0, 3);
                dot[r] = uniform(-1, 1);
                gain[r] = uniform(0, 1);
            }
            /* exact sizes: ASan sees reads past the last row's columns */
            float *s = random_floats((m - 1) * lds + nk, -6, 3);
            float *dp = random_floats((m - 1) * lddp + nk, -2, 2);
            float *pt_got = malloc(total * sizeof *pt_got);
            float *pt_want = malloc(total * sizeof *pt_want);
            float *ds_got = malloc(total * sizeof *ds_got);
            float *ds_want = malloc(total * sizeof *ds_want);
            fill_sentinel(pt_got, total);
            fill_sentinel(pt_want, total);
            fill_sentinel(ds_got, total);
            fill_sentinel(ds_want, total);
            fn(m, nk, lo, hi, lse, dot, gain, 0.37f, s, lds, dp, lddp, pt_got, ds_got, ldt);
            nsa_f32_grad_score_t_ukernel__ref(m, nk, lo, hi, lse, dot, gain, 0.37f, s, lds, dp,
                                              lddp, pt_want, ds_want, ldt);
            char what[128];
            snprintf(what, sizeof what, "%s m=%zu nk=%zu (P)", name, m, nk);
            expect_region(what, pt_got, pt_want, nk, m, ldt, total, 1e-7, 2e-6);
            snprintf(what, sizeof what, "%s m=%zu nk=%zu (dS)", name, m, nk);
            expect_region(what, ds_got, ds_want, nk, m, ldt, total, 1e-7, 2e-6);
            free(s);
            free(dp);
            free(pt_got);
            free(pt_want);
            free(ds_got);
            free(ds_want);
        }
}

/* ---------------------------------------------------------------- tests -- */

static void test_registry_entry(void **state)
{
    const entry *e = *state;
    if (!nsa_host_supports(e->isa)) {
        print_message("%s: this CPU lacks %s, skipped\n", e->name, nsa_isa_name(e->isa));
        skip();
    }
    switch (e->kind) {
    case SLOT_qk: check_qk((nsa_qk_ukernel *)e->fn, NULL, NULL, NULL, e->name); break;
    case SLOT_pv: check_pv((nsa_pv_ukernel *)e->fn, NULL, NULL, e->name); break;
    case SLOT_qk_x3:
        check_qk(NULL, NULL, (nsa_qk_x3_ukernel *)e->fn, NULL, e->name);
        check_x3_exact((nsa_qk_x3_ukernel *)e->fn, NULL, e->name);
        break;
    case SLOT_split_x3: check_split((nsa_split_x3_ukernel *)e->fn, e->name); break;
    case SLOT_qk_bf16_split:
        check_qk(NULL, NULL, NULL, (nsa_qk_bf16_split_ukernel *)e->fn, e->name);
        break;
    case SLOT_pv_x3:
        check_pv(NULL, NULL, (nsa_pv_x3_ukernel *)e->fn, e->name);
        check_x3_exact(NULL, (nsa_pv_x3_ukernel *)e->fn, e->name);
        break;
    case SLOT_qk_bf16:
        check_qk(NULL, (nsa_qk_bf16_ukernel *)e->fn, NULL, NULL, e->name);
        check_bf16_exact((nsa_qk_bf16_ukernel *)e->fn, NULL, e->name);
        break;
    case SLOT_pv_bf16:
        check_pv(NULL, (nsa_pv_bf16_ukernel *)e->fn, NULL, e->name);
        check_bf16_exact(NULL, (nsa_pv_bf16_ukernel *)e->fn, e->name);
        break;
    case SLOT_softmax: check_softmax((nsa_softmax_ukernel *)e->fn, e->name); break;
    case SLOT_gate_mix: check_gate_mix((nsa_gate_mix_ukernel *)e->fn, e->name); break;
    case SLOT_pool: check_pool((nsa_pool_ukernel *)e->fn, e->name); break;
    case SLOT_grad_prob: check_grad_prob((nsa_grad_prob_ukernel *)e->fn, e->name); break;
    case SLOT_grad_score: check_grad_score((nsa_grad_score_ukernel *)e->fn, e->name); break;
    case SLOT_grad_score_t:
        check_grad_score_t((nsa_grad_score_t_ukernel *)e->fn, e->name);
        break;
    }
}

/* The reference kernels against themselves would prove nothing; instead,
 * check the reference softmax against a direct computation once, so the
 * baseline every kernel is compared with is itself right. */
static void test_reference_softmax_is_a_softmax(void **state)
{
    (void)state;
    float s[5] = {0.5f, -1.0f, 2.0f, 0.0f, 9.0f}, acc[2] = {1.0f, 2.0f};
    float row_max = 1.0f, row_sum = 3.0f;
    int32_t lo = 0, hi = 3;
    nsa_f32_softmax_ukernel__ref(1, 5, &lo, &hi, s, 5, &row_max, &row_sum, 2, acc, 2);
    assert_float_equal(row_max, 2.0f, 0);
    const float rescale = expf(1.0f - 2.0f);
    const float e[4] = {expf(0.5f - 2), expf(-1.0f - 2), 1.0f, expf(-2.0f)};
    assert_float_equal(row_sum, 3.0f * rescale + e[0] + e[1] + e[2] + e[3], 1e-6);
    for (int j = 0; j < 4; j++)
        assert_float_equal(s[j], e[j], 1e-7);
    assert_float_equal(s[4], 0.0f, 0); /* outside [lo, hi] */
    assert_float_equal(acc[1], 2.0f * rescale, 1e-7);
}

/* The key side's reference kernel against the query side's two, composed
 * and transposed: the three must describe the same gradient. */
static void test_reference_grad_kernels_agree(void **state)
{
    (void)state;
    enum { M = 5, NK = 7 };
    int32_t lo[M], hi[M];
    float lse[M], dot[M], gain[M], coef[M], s[M * NK], dp[M * NK], p[M * NK], pt[NK * M],
        dst[NK * M];
    backward_limits(M, NK, lo, hi);
    for (size_t r = 0; r < M; r++) {
        lse[r] = uniform(0, 2);
        dot[r] = uniform(-1, 1);
        gain[r] = uniform(0, 1);
        coef[r] = 0.37f * gain[r];
    }
    for (size_t i = 0; i < M * NK; i++) {
        s[i] = p[i] = uniform(-3, 2);
        dp[i] = uniform(-1, 1);
    }
    nsa_f32_grad_score_t_ukernel__ref(M, NK, lo, hi, lse, dot, gain, 0.37f, s, NK, dp, NK, pt,
                                      dst, M);
    nsa_f32_grad_prob_ukernel__ref(M, NK, lo, hi, lse, p, NK, NULL, NK, NULL);
    float ds[M * NK];
    memcpy(ds, dp, sizeof ds);
    nsa_f32_grad_score_ukernel__ref(M, NK, coef, dot, p, NK, ds, NK);
    for (size_t r = 0; r < M; r++)
        for (size_t j = 0; j < NK; j++) {
            assert_float_equal(pt[j * M + r], gain[r] * p[r * NK + j], 1e-6);
            assert_float_equal(dst[j * M + r], ds[r * NK + j], 1e-6);
            if ((int32_t)j < lo[r] || (int32_t)j > hi[r])
                assert_true(pt[j * M + r] == 0.0f && dst[j * M + r] == 0.0f);
        }
}

/* The split-rows reference is the baseline of qk_bf16_split's kernels;
 * check it, on its own, against the bf16 reference on the rows before the
 * split. */
static void test_reference_split_rows_qk(void **state)
{
    (void)state;
    check_qk(NULL, NULL, NULL, nsa_bf16_qk_split_ukernel__ref, "nsa_bf16_qk_split_ukernel__ref");
}

int main(void)
{
    enum { MAX_TESTS = 64 };
    struct CMUnitTest tests[MAX_TESTS];
    size_t count = 0;
    tests[count++] = (struct CMUnitTest)cmocka_unit_test(test_reference_softmax_is_a_softmax);
    tests[count++] = (struct CMUnitTest)cmocka_unit_test(test_reference_grad_kernels_agree);
    tests[count++] = (struct CMUnitTest)cmocka_unit_test(test_reference_split_rows_qk);
    for (size_t i = 0; registry[i].name != NULL && count < MAX_TESTS; i++) {
        tests[count] = (struct CMUnitTest)cmocka_unit_test_prestate(test_registry_entry,
                                                                    &registry[i]);
        tests[count].name = registry[i].name;
        count++;
    }
    return _cmocka_run_group_tests("ukernels", tests, count, NULL, NULL);
}
