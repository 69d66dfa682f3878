/* SPDX-License-Identifier: MIT */
/*
 * saved.h — the inside of nsa_saved: what the forward pass leaves for the
 * backward pass (spec section 7).
 */
#ifndef NSA_SAVED_H
#define NSA_SAVED_H

#include "plan.h"

struct nsa_saved {
    int32_t num_q_heads, num_kv_heads, sel_count; /* the shapes it was made for */
    int64_t max_tokens;
    int64_t tokens;   /* of the last nsa_forward_train */
    float *lse;       /* [3][max_tokens][Hq]: cmp, slc, swa; -INFINITY where a
                         branch saw no key */
    int32_t *indices; /* [max_tokens][Hkv][n] */
};

/* NSA_SUCCESS if saved fits a batch of `tokens` tokens for plan. */
nsa_status nsa_saved_check(const nsa_plan *plan, const nsa_saved *saved, int64_t tokens);

#endif /* NSA_SAVED_H */
