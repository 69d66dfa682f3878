/* SPDX-License-Identifier: MIT */
/*
 * oracle.h — a double-precision transcription of docs/nsa-semantics.md, used
 * by the tests as the reference the library is judged against.
 *
 * The oracle is deliberately naive: it follows the spec section by section,
 * one token at a time, in double, with no tiling, no online softmax and no
 * shortcut. It shares no code with src/ so that a misreading of the spec in
 * the library is not silently repeated here. Only the compressed tokens are
 * computed ahead (once per sequence, in oracle_prepare) so that whole-batch
 * comparisons stay fast.
 */
#ifndef NSA_TESTS_ORACLE_H
#define NSA_TESTS_ORACLE_H

#include <stdint.h>

#include "nsa.h"

/* One forward problem, exactly the inputs nsa_forward takes. The oracle keeps
 * the pointers (not copies): they must outlive the oracle_state. */
typedef struct oracle_problem {
    nsa_config cfg;
    int64_t num_seqs, total_tokens;
    const int64_t *cu_seqlens;        /* [num_seqs+1] */
    const float *q, *k, *v, *gates;   /* layouts as in nsa.h */
    nsa_compress_params cmp_k, cmp_v; /* by value; unused fields NULL */
} oracle_problem;

/* Compressed K/V of every sequence, in double. Opaque. */
typedef struct oracle_state oracle_state;

/* Compresses every sequence (spec section 1). NULL on out of memory. */
oracle_state *oracle_prepare(const oracle_problem *p);

void oracle_free(oracle_state *s);

/* The outputs of one token (global packed index) for all heads.
 *
 * given_indices: NULL = select per the spec (section 3 / 9); else [Hkv][n]
 * block numbers for this token (-1 = unused, any order; the causal mask
 * still applies; an empty key set gives o_slc = 0).
 *
 * Outputs, each may be NULL:
 *   o, o_cmp, o_slc, o_swa  [Hq][Dv]
 *   indices                 [Hkv][n] the blocks used, ascending, -1 padded
 *   margin                  [Hkv] relative gap between the lowest score chosen
 *                           by ranking (not forced) and the highest unchosen
 *                           candidate score; +INFINITY when no ranking
 *                           decision was needed (or indices were given). */
void oracle_token(const oracle_state *s, int64_t token, const int32_t *given_indices, double *o,
                  double *o_cmp, double *o_slc, double *o_swa, int32_t *indices, double *margin);

/* oracle_token for every token of the batch; arrays are [T][...] versions of
 * oracle_token's outputs, each may be NULL. given_indices, if not NULL, is
 * [T][Hkv][n]. */
void oracle_forward(const oracle_state *s, const int32_t *given_indices, double *o, double *o_cmp,
                    double *o_slc, double *o_swa, int32_t *indices, double *margin);

/* The block scores of section 3 (Eq. 9 summed over the G heads, Eq. 10) of
 * one token for KV head h, one per candidate block. scores must hold
 * oracle_num_blocks(len) entries. Returns the candidate count (-1 on out of
 * memory). Tests use it to judge a selection that differs at a near-tie. */
int64_t oracle_block_scores(const oracle_state *s, int64_t token, int64_t h, double *scores);

/* Small facts of the spec the tests need to reason about selections. */

/* C(L): compressed tokens of a sequence of length L (section 1). */
int64_t oracle_num_compressed(const nsa_config *cfg, int64_t len);

/* Selection blocks of a sequence of length L, the last one possibly partial:
 * ceil(L / l'). */
int64_t oracle_num_blocks(const nsa_config *cfg, int64_t len);

/* Candidate blocks of query t in a sequence of length L: floor(t/l') + 1
 * when causal, every block otherwise (section 9). */
int64_t oracle_num_candidates(const nsa_config *cfg, int64_t len, int64_t t);

/* 1 if block J is forced for query t (J < n_init, or one of the n_local most
 * recent blocks up to and including the query's own). */
int oracle_block_is_forced(const nsa_config *cfg, int64_t t, int64_t block);

/* How many blocks the spec selects for query t: min(n, candidates). */
int64_t oracle_num_selected(const nsa_config *cfg, int64_t len, int64_t t);

/* ------------------------------------------------------------------------ */
/* Helpers for gradient checks (test_backward)                               */
/* ------------------------------------------------------------------------ */

/* The scalar loss sum over tokens [first_token, end_token) of <dout, o>, o
 * being oracle_token's gated output with the given blocks. given_indices
 * ([T][Hkv][n]; NULL = select per the spec) and dout ([T][Hq][Dv], fp32 as
 * the library takes it) are indexed by the state's packed token number.
 * Central differences of this loss, with the blocks held fixed, are the
 * reference for nsa_backward. NaN when out of memory. */
double oracle_loss(const oracle_state *s, const int32_t *given_indices, const float *dout,
                   int64_t first_token, int64_t end_token);

/* The part of oracle_loss that phi's parameters can change once the blocks
 * are fixed: sum over tokens [first_token, end_token) of g_cmp <dout,
 * o_cmp> over every query head (sections 2 and 6). The selected and window
 * branches do not depend on phi, so central differences of this loss in a
 * phi parameter equal those of oracle_loss, at a fraction of the cost. NaN
 * when out of memory. */
double oracle_compressed_loss(const oracle_state *s, const float *dout, int64_t first_token,
                              int64_t end_token);

/* For the mlp kind: the largest change of one input element (a raw K or V
 * entry, a pe entry or a W1 entry) that cannot carry any hidden unit's
 * pre-activation W1^T vec(x + pe) across zero, from the current inputs:
 * min |pre-activation| / max(max |W1|, max |x + pe|) over every window, head
 * and hidden unit of both K and V. A finite-difference step below it never
 * straddles a relu kink. +INFINITY for the other kinds (phi is smooth),
 * and when there is no window at all. */
double oracle_relu_kink_distance(const oracle_state *s);

#endif /* NSA_TESTS_ORACLE_H */
