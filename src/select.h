/* SPDX-License-Identifier: MIT */
/*
 * select.h — block importance (spec section 3, paper Eq. 9-10) and top-n
 * selection with forced initial and local blocks.
 */
#ifndef NSA_SELECT_H
#define NSA_SELECT_H

#include <stdint.h>

#include "nsa.h"

/* score[J], first_block <= J < end_block, from the sum over the G heads of
 * the compressed-branch probability of each compressed token i < nc, held
 * in p_sum[i - origin]: each compressed token adds that sum times
 * |window_i ∩ block_J| / d to the (at most two) blocks its window overlaps.
 * Reads only the tokens those blocks overlap, none below origin if none of
 * the blocks starts before origin + nsa_block_lead(cfg). Each score is
 * computed the same way whichever range it is asked in. */
void nsa_block_scores(const nsa_config *cfg, const float *p_sum, int64_t origin, int64_t nc,
                      float *score, int64_t first_block, int64_t end_block);

/* Compressed tokens before block J's first one whose windows reach into J:
 * l/d - 1. */
int64_t nsa_block_lead(const nsa_config *cfg);

/* The blocks J < num_blocks whose scores read no compressed token outside
 * [first, last] (last <= nc - 1, tokens past nc - 1 being read by none):
 * [*first_block, *end_block), possibly empty. Lets workers that each hold
 * a run of p_sum score the blocks inside it. */
void nsa_blocks_within(const nsa_config *cfg, int64_t first, int64_t last, int64_t nc,
                       int64_t num_blocks, int64_t *first_block, int64_t *end_block);

/* A candidate block and its score. */
typedef struct nsa_ranked {
    float score;
    int32_t block;
} nsa_ranked;

/* Chooses min(n, num_candidates) blocks for a query in block query_block:
 * the forced ones (J < n_init, query_block - n_local < J <= query_block),
 * then the rest by descending score, ties to the lower index. Writes n
 * entries to selected, ascending, padded with -1; returns how many are
 * real. best is scratch for n candidates. */
int32_t nsa_select_blocks(const nsa_config *cfg, const float *score, int64_t num_candidates,
                          int64_t query_block, nsa_ranked *best, int32_t *selected);

/* nsa_select_blocks in pieces, for callers that rank the candidates in parts
 * (each worker the blocks of its part, then one the parts' best). Lists
 * `best` hold candidates in rank order (descending score, ties to the lower
 * index), at most `want`, the first `have` filled; the order candidates
 * are added in does not change the list.
 * - nsa_forced_blocks: writes the forced blocks among the first
 *   num_candidates (at most n, ascending) to selected; returns how many.
 * - nsa_rank_blocks: adds the unforced blocks first .. end - 1 (scores in
 *   score) to best; returns the new `have`.
 * - nsa_rank_merge: adds another list's count candidates to best.
 * - nsa_finish_selection: appends best's blocks to the forced ones in
 *   selected, sorts them and pads to n with -1; returns how many are real. */
int32_t nsa_forced_blocks(const nsa_config *cfg, int64_t num_candidates, int64_t query_block,
                          int32_t *selected);
int32_t nsa_rank_blocks(const nsa_config *cfg, const float *score, int64_t first, int64_t end,
                        int64_t query_block, int32_t want, nsa_ranked *best, int32_t have);
int32_t nsa_rank_merge(const nsa_ranked *from, int32_t count, int32_t want, nsa_ranked *best,
                       int32_t have);
int32_t nsa_finish_selection(const nsa_config *cfg, int32_t forced, const nsa_ranked *best,
                             int32_t have, int32_t *selected);

/* Sorts count block indices ascending (count is at most n, a few dozen). */
void nsa_sort_blocks(int32_t *blocks, int32_t count);

/* Puts n caller-given entries (-1 = unused, any order) in the form selection
 * produces: the blocks ascending, then the -1 padding. */
void nsa_normalize_blocks(int32_t *blocks, int32_t n);

#endif /* NSA_SELECT_H */
