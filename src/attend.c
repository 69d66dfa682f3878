/* SPDX-License-Identifier: MIT */
/*
 * attend.c — tile attention from the three attention kernels. Spans start on
 * a panel boundary so qk always reads whole panels; the per-row limits turn
 * the columns outside a row's keys into zero probabilities, and pv only
 * runs over the columns some row uses (from an even one for bf16 values,
 * whose rows hold pairs), so it never reads a value row past the end of the
 * sequence's storage.
 */
#include <math.h>
#include <string.h>

#include "attend.h"

/* Value rows per pv call: keeps a slab of V hot in cache while every row
 * block of the tile passes over it. */
enum { PV_STEP = 256 };

void nsa_softmax_state_reset(const nsa_softmax_state *state, size_t m, size_t dv)
{
    for (size_t r = 0; r < m; r++) {
        state->max[r] = -INFINITY;
        state->sum[r] = 0.0f;
        memset(state->acc + r * state->ldacc, 0, dv * sizeof *state->acc);
    }
}

/* Whether keys [first, first + count) have a prefetch hint: the same span
 * keys->prefetch_ahead keys on, within the first `stored` keys. */
static int has_ahead(const nsa_keys *keys, int64_t first, int64_t count, int64_t stored)
{
    return keys->prefetch_ahead > 0 && first + keys->prefetch_ahead + count <= stored;
}

/* s[m][np panels] = scale q K^T. */
static void scores(const nsa_ukernels *uk, const nsa_rows *rows, const nsa_keys *keys,
                   int64_t first_panel, int64_t np, float *s, size_t lds)
{
    if (keys->kp3 != NULL)
        uk->qk_x3(rows->m, (size_t)np, rows->dk, rows->q3, nsa_x3_row_words(rows->dk),
                  keys->kp3 + (size_t)first_panel * nsa_x3_panel_words(rows->dk), s, lds);
    else if (keys->kp != NULL) {
        const float *kp = keys->kp + (size_t)first_panel * rows->dk * NSA_PANEL;
        const int ahead = has_ahead(keys, first_panel * NSA_PANEL, np * NSA_PANEL,
                                    nsa_panels_of(keys->count) * NSA_PANEL);
        uk->qk(rows->m, (size_t)np, rows->dk, rows->scale, rows->q, rows->dk, kp, s, lds,
               ahead ? kp + (size_t)keys->prefetch_ahead * rows->dk : NULL);
    }
    else if (rows->q3 != NULL) /* bf16 keys, the rows split once for all calls */
        uk->qk_bf16_split(rows->m, (size_t)np, rows->dk, rows->q3, nsa_x3_row_words(rows->dk),
                          keys->kp16 + (size_t)first_panel * nsa_bf16_panel_words(rows->dk), s,
                          lds);
    else
        uk->qk_bf16(rows->m, (size_t)np, rows->dk, rows->scale, rows->q, rows->dk,
                    keys->kp16 + (size_t)first_panel * nsa_bf16_panel_words(rows->dk), s, lds);
}

/* acc += p[m][count] . V[key .. key + count) (count <= PV_STEP; for bf16
 * and split values key is even: their rows hold pairs). */
static void accumulate(const nsa_ukernels *uk, const nsa_rows *rows, const nsa_keys *keys,
                       int64_t key, int64_t count, const float *p, size_t ldp,
                       const nsa_softmax_state *state)
{
    const size_t offset = (size_t)key * keys->ldv;
    if (keys->v3 != NULL)
        uk->pv_x3(rows->m, (size_t)count, rows->dv, p, ldp, keys->v3 + (size_t)key / 2 * nsa_x3_pair_words(keys->ldv),
                  keys->ldv,
                  state->acc, state->ldacc);
    else if (keys->v != NULL)
        uk->pv(rows->m, (size_t)count, rows->dv, p, ldp, keys->v + offset, keys->ldv,
               state->acc, state->ldacc,
               has_ahead(keys, key, count, keys->count)
                   ? keys->v + offset + (size_t)keys->prefetch_ahead * keys->ldv
                   : NULL);
    else
        uk->pv_bf16(rows->m, (size_t)count, rows->dv, p, ldp, keys->v16 + offset, keys->ldv,
                    state->acc, state->ldacc);
}

void nsa_attend_probabilities(const nsa_ukernels *uk, const nsa_rows *rows,
                              const nsa_keys *keys, int64_t first_panel, int64_t np,
                              const int32_t *lo, const int32_t *hi, float *s, size_t lds,
                              const nsa_softmax_state *state, nsa_used_keys *used)
{
    used->first = INT64_MAX;
    used->last = -1;
    for (size_t r = 0; r < rows->m; r++) {
        if (lo[r] > hi[r])
            continue;
        used->first = lo[r] < used->first ? lo[r] : used->first;
        used->last = hi[r] > used->last ? hi[r] : used->last;
    }
    if (used->last < 0)
        return; /* no row takes any key here */
    if (keys->v16 != NULL || keys->v3 != NULL)
        used->first -= used->first % 2; /* paired value rows start on even keys; s is 0 there */
    scores(uk, rows, keys, first_panel, np, s, lds);
    uk->softmax(rows->m, (size_t)(np * NSA_PANEL), lo, hi, s, lds, state->max, state->sum,
                rows->dv, state->acc, state->ldacc);
}

void nsa_attend_values(const nsa_ukernels *uk, const nsa_rows *rows, const nsa_keys *keys,
                       int64_t first_panel, const nsa_used_keys *used, const float *s,
                       size_t lds, const nsa_softmax_state *state)
{
    const int64_t first_key = first_panel * NSA_PANEL;
    for (int64_t j = used->first; j <= used->last; j += PV_STEP) {
        int64_t count = used->last + 1 - j < PV_STEP ? used->last + 1 - j : PV_STEP;
        accumulate(uk, rows, keys, first_key + j, count, s + j, lds, state);
    }
}

void nsa_attend_span(const nsa_ukernels *uk, const nsa_rows *rows, const nsa_keys *keys,
                     int64_t first_panel, int64_t np, const int32_t *lo, const int32_t *hi,
                     float *s, size_t lds, const nsa_softmax_state *state)
{
    nsa_used_keys used;
    nsa_attend_probabilities(uk, rows, keys, first_panel, np, lo, hi, s, lds, state, &used);
    nsa_attend_values(uk, rows, keys, first_panel, &used, s, lds, state);
}

void nsa_attend_keys(const nsa_ukernels *uk, const nsa_rows *rows, const nsa_keys *keys,
                     int64_t first, int64_t last, const int64_t *row_first,
                     const int64_t *row_last, const nsa_softmax_state *state, float *s,
                     int32_t *lo, int32_t *hi)
{
    if (last >= keys->count)
        last = keys->count - 1;
    for (int64_t start = first - first % NSA_PANEL; start <= last; start += NSA_ATTEND_CHUNK) {
        int64_t end = start + NSA_ATTEND_CHUNK - 1 < last ? start + NSA_ATTEND_CHUNK - 1 : last;
        for (size_t r = 0; r < rows->m; r++) {
            int64_t a = row_first[r] > first ? row_first[r] : first;
            int64_t b = row_last[r] < end ? row_last[r] : end;
            if (a < start)
                a = start;
            if (a > b) { /* the row takes no key in this chunk */
                lo[r] = 1;
                hi[r] = 0;
            } else {
                lo[r] = (int32_t)(a - start);
                hi[r] = (int32_t)(b - start);
            }
        }
        int64_t np = (end - start) / NSA_PANEL + 1;
        nsa_attend_span(uk, rows, keys, start / NSA_PANEL, np, lo, hi, s, NSA_ATTEND_CHUNK,
                        state);
    }
}
