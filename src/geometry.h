/* SPDX-License-Identifier: MIT */
/*
 * geometry.h — the index arithmetic of the spec in one place: how many
 * compressed tokens a sequence has and a query sees (sections 1-2), which
 * selection blocks exist (section 3), which keys the window covers (sections
 * 5 and 9). Positions are local to one sequence.
 */
#ifndef NSA_GEOMETRY_H
#define NSA_GEOMETRY_H

#include <stdint.h>

#include "nsa.h"

/* C(L): compressed tokens of a sequence of length L. */
static inline int64_t nsa_num_compressed(const nsa_config *cfg, int64_t len)
{
    return len < cfg->cmp_block ? 0 : (len - cfg->cmp_block) / cfg->cmp_stride + 1;
}

/* Compressed tokens query t sees: NC(t) when causal, C(L) otherwise. */
static inline int64_t nsa_visible_compressed(const nsa_config *cfg, int64_t t, int64_t len)
{
    return cfg->causal ? nsa_num_compressed(cfg, t + 1) : nsa_num_compressed(cfg, len);
}

/* Selection blocks of a sequence, the last one possibly partial. */
static inline int64_t nsa_num_blocks(const nsa_config *cfg, int64_t len)
{
    return (len + cfg->sel_block - 1) / cfg->sel_block;
}

/* Candidate blocks of query t: 0 .. floor(t/l') when causal, all otherwise. */
static inline int64_t nsa_candidate_blocks(const nsa_config *cfg, int64_t t, int64_t len)
{
    return cfg->causal ? t / cfg->sel_block + 1 : nsa_num_blocks(cfg, len);
}

/* Keys [*first, *last] of query t's sliding window (never empty). */
static inline void nsa_window_range(const nsa_config *cfg, int64_t t, int64_t len,
                                    int64_t *first, int64_t *last)
{
    int64_t w = cfg->window;
    if (cfg->causal) {
        *first = t - w + 1 > 0 ? t - w + 1 : 0;
        *last = t;
    } else {
        *first = t - w / 2 > 0 ? t - w / 2 : 0;
        *last = t + (w + 1) / 2 - 1 < len - 1 ? t + (w + 1) / 2 - 1 : len - 1;
    }
}

#endif /* NSA_GEOMETRY_H */
