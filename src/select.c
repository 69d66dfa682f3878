/* SPDX-License-Identifier: MIT */
/*
 * select.c — which blocks each query attends to. Portable: per query it
 * touches O(t/l' + t/d) numbers, a rounding error next to the attention it
 * steers.
 */
#include <string.h>

#include "select.h"

void nsa_block_scores(const nsa_config *cfg, const float *p_sum, int64_t nc, float *score,
                      int64_t num_blocks)
{
    const int64_t l = cfg->cmp_block, d = cfg->cmp_stride, lsel = cfg->sel_block;
    memset(score, 0, (size_t)num_blocks * sizeof *score);
    for (int64_t i = 0; i < nc; i++) {
        int64_t first = i * d, last = first + l - 1;
        int64_t j0 = first / lsel, j1 = last / lsel; /* j1 <= j0 + 1 since l <= l' */
        if (j0 == j1) {
            score[j0] += p_sum[i] * (float)(l / d);
        } else {
            int64_t split = j1 * lsel;
            score[j0] += p_sum[i] * (float)((split - first) / d);
            if (j1 < num_blocks)
                score[j1] += p_sum[i] * (float)((last + 1 - split) / d);
        }
    }
}

static int is_forced(const nsa_config *cfg, int64_t block, int64_t query_block)
{
    return block < cfg->sel_init ||
           (block <= query_block && block > query_block - cfg->sel_local);
}

void nsa_normalize_blocks(int32_t *blocks, int32_t n)
{
    int32_t count = 0;
    for (int32_t i = 0; i < n; i++)
        if (blocks[i] >= 0)
            blocks[count++] = blocks[i];
    nsa_sort_blocks(blocks, count);
    for (int32_t i = count; i < n; i++)
        blocks[i] = -1;
}

void nsa_sort_blocks(int32_t *blocks, int32_t count)
{
    for (int32_t i = 1; i < count; i++) {
        int32_t value = blocks[i], j = i;
        for (; j > 0 && blocks[j - 1] > value; j--)
            blocks[j] = blocks[j - 1];
        blocks[j] = value;
    }
}

int32_t nsa_select_blocks(const nsa_config *cfg, const float *score, int64_t num_candidates,
                          int64_t query_block, int32_t *selected)
{
    const int32_t n = cfg->sel_count;
    const int32_t target = num_candidates < n ? (int32_t)num_candidates : n;
    int32_t count = 0;
    for (int64_t j = 0; j < num_candidates && count < target; j++)
        if (is_forced(cfg, j, query_block))
            selected[count++] = (int32_t)j;

    /* The best (target - count) unforced candidates, kept in selected[count..]
     * ordered by descending score. Candidates arrive in ascending index, so
     * a later candidate displaces an earlier one only with a strictly higher
     * score: ties go to the lower index. */
    int32_t *best = selected + count;
    int32_t want = target - count, have = 0;
    for (int64_t j = 0; j < num_candidates && want > 0; j++) {
        if (is_forced(cfg, j, query_block))
            continue;
        int32_t pos = have < want ? have++ : want;
        while (pos > 0 && score[j] > score[best[pos - 1]]) {
            if (pos < want)
                best[pos] = best[pos - 1];
            pos--;
        }
        if (pos < want)
            best[pos] = (int32_t)j;
    }
    count += have;
    nsa_sort_blocks(selected, count);
    for (int32_t i = count; i < n; i++)
        selected[i] = -1;
    return count;
}
