/* SPDX-License-Identifier: MIT */
/*
 * select.c — which blocks each query attends to. Portable: per query it
 * touches O(t/l' + t/d) numbers, little next to the attention it steers,
 * but small groups select per head: at G = 1 the block scores and the
 * ranking were a tenth of the forward (Zen 5, 32K), so both avoid chains
 * of dependent adds and unpredictable inserts where they can.
 */
#include <math.h>
#include <string.h>

#include "select.h"

/* Block scores need the overlap of token k's window with the block, for the
 * k = 0 .. taps - 1 tokens reaching into it; these many are kept at hand. */
enum { MAX_KEPT_TAPS = 64 };

int64_t nsa_block_lead(const nsa_config *cfg)
{
    return cfg->cmp_block / cfg->cmp_stride - 1;
}

/* omega(i, J) depends only on i's place in block J's span: with
 * stride = l'/d and lead = l/d - 1 (tokens reaching in from the block
 * before), block J takes tokens i = J * stride - lead + k,
 * k = 0 .. stride + lead - 1, with the same weights for every J. In units
 * of d: a window is `width` long, a block `stride`. */
typedef struct block_taps {
    int64_t width, stride, lead, taps;
    float kept[MAX_KEPT_TAPS]; /* the weights, when taps <= MAX_KEPT_TAPS */
} block_taps;

/* The overlap of token k's window with the block. */
static float tap_weight(const block_taps *t, int64_t k)
{
    const int64_t start = k - t->lead; /* the window's start, relative to the block */
    const int64_t end = start + t->width < t->stride ? start + t->width : t->stride;
    return (float)(end - (start > 0 ? start : 0));
}

/* Block j's score, tap by tap within [0, nc). */
static float block_score(const block_taps *t, const float *p_sum, int64_t origin, int64_t nc,
                         int64_t j)
{
    const int64_t base = j * t->stride - t->lead;
    const int64_t at = base - origin; /* p_sum[at + k]: token base + k */
    const int64_t k0 = base < 0 ? -base : 0;
    const int64_t k1 = nc - base < t->taps ? nc - base : t->taps; /* one past */
    const int kept = t->taps <= MAX_KEPT_TAPS;
    float total = 0.0f;
    for (int64_t k = k0; k < k1; k++)
        total += p_sum[at + k] * (kept ? t->kept[k] : tap_weight(t, k));
    return total;
}

void nsa_block_scores(const nsa_config *cfg, const float *p_sum, int64_t origin, int64_t nc,
                      float *score, int64_t first_block, int64_t end_block)
{
    block_taps t = {.width = cfg->cmp_block / cfg->cmp_stride,
                    .stride = cfg->sel_block / cfg->cmp_stride,
                    .lead = nsa_block_lead(cfg)};
    t.taps = t.stride + t.lead;
    for (int64_t k = 0; k < t.taps && k < MAX_KEPT_TAPS; k++)
        t.kept[k] = tap_weight(&t, k);
    /* Blocks whose taps all lie in [0, nc) (base >= 0, base + taps <= nc)
     * take them tap by tap over all of them at once: the same sums in the
     * same order, without a loop of `taps` dependent adds per block. */
    const int64_t top = nc + t.lead - t.taps; /* the largest j * stride */
    int64_t inner_first = (t.lead + t.stride - 1) / t.stride;
    int64_t inner_end = top < 0 ? inner_first : top / t.stride + 1;
    inner_first = inner_first > first_block ? inner_first : first_block;
    inner_end = inner_end < end_block ? inner_end : end_block;
    if (t.taps > MAX_KEPT_TAPS || inner_first >= inner_end)
        inner_first = inner_end = end_block;
    for (int64_t j = first_block; j < inner_first; j++)
        score[j] = block_score(&t, p_sum, origin, nc, j);
    for (int64_t j = inner_first; j < inner_end; j++)
        score[j] = 0.0f;
    for (int64_t k = 0; k < t.taps && inner_first < inner_end; k++) {
        const float *p = p_sum + k - t.lead - origin, weight = t.kept[k];
        for (int64_t j = inner_first; j < inner_end; j++)
            score[j] += p[j * t.stride] * weight;
    }
    for (int64_t j = inner_end; j < end_block; j++)
        score[j] = block_score(&t, p_sum, origin, nc, j);
}

void nsa_blocks_within(const nsa_config *cfg, int64_t first, int64_t last, int64_t nc,
                       int64_t num_blocks, int64_t *first_block, int64_t *end_block)
{
    const int64_t stride = cfg->sel_block / cfg->cmp_stride, lead = nsa_block_lead(cfg);
    const int64_t taps = stride + lead;
    /* Block J reads tokens J * stride - lead .. J * stride - lead + taps - 1,
     * clipped to [0, nc - 1]. */
    int64_t lo = first > 0 ? (first + lead + stride - 1) / stride : 0;
    int64_t end = num_blocks;
    if (last < nc - 1) {
        const int64_t top = last + lead - taps + 1; /* J * stride <= top */
        end = top >= 0 ? top / stride + 1 : 0;
    }
    end = end < num_blocks ? end : num_blocks;
    *first_block = lo < end ? lo : end;
    *end_block = end;
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

/* a ranks above b: a higher score, or an equal one and a lower index. */
static int ranks_above(nsa_ranked a, nsa_ranked b)
{
    return a.score > b.score || (a.score == b.score && a.block < b.block);
}

/* Puts c into best[0 .. have) (rank order, at most want kept). */
static inline int32_t insert(nsa_ranked *best, int32_t have, int32_t want, nsa_ranked c)
{
    if (have == want && (want == 0 || !ranks_above(c, best[want - 1])))
        return have; /* the common case once the list is full */
    int32_t pos = have < want ? have++ : want - 1; /* a full list drops its last */
    for (; pos > 0 && ranks_above(c, best[pos - 1]); pos--)
        best[pos] = best[pos - 1];
    best[pos] = c;
    return have;
}

/* A score below which no block of [first, end) can be among its best
 * `want`: the least of the maxima of `want` disjoint groups of the span's
 * scores (want blocks reach it). Inserting is the costly part of ranking
 * (where a candidate lands is unpredictable), and with it only the blocks
 * at or above the floor are tried instead of every one: ranking 512
 * random blocks took 0.45-0.52 instead of 0.85-0.89 us (Zen 5, 3 pairs).
 * -INFINITY when the span is too short for groups. */
static float rank_floor(const float *score, int64_t first, int64_t end, int32_t want)
{
    const int64_t size = want > 0 ? (end - first) / want : 0;
    if (size < 2)
        return -INFINITY;
    float floor = INFINITY;
    for (int32_t g = 0; g < want; g++) {
        const float *group = score + first + (int64_t)g * size;
        float max = -INFINITY; /* NaN scores never rank, nor raise the floor */
        for (int64_t k = 0; k < size; k++)
            max = group[k] > max ? group[k] : max;
        floor = max < floor ? max : floor;
    }
    return floor;
}

/* Adds blocks first .. end - 1, none of them forced. */
static int32_t rank_span(const float *score, int64_t first, int64_t end, int32_t want,
                         nsa_ranked *best, int32_t have)
{
    const float floor = rank_floor(score, first, end, want);
    for (int64_t j = first; j < end; j++)
        if (score[j] >= floor)
            have = insert(best, have, want, (nsa_ranked){score[j], (int32_t)j});
    return have;
}

int32_t nsa_rank_blocks(const nsa_config *cfg, const float *score, int64_t first, int64_t end,
                        int64_t query_block, int32_t want, nsa_ranked *best, int32_t have)
{
    /* around the forced blocks: [0, sel_init) and [local_first, query_block] */
    const int64_t local_first = query_block - cfg->sel_local + 1;
    const int64_t from = first > cfg->sel_init ? first : cfg->sel_init;
    const int64_t below = end < local_first ? end : local_first;
    const int64_t above = from > query_block + 1 ? from : query_block + 1;
    have = rank_span(score, from, below, want, best, have);
    return rank_span(score, above, end, want, best, have);
}

int32_t nsa_rank_merge(const nsa_ranked *from, int32_t count, int32_t want, nsa_ranked *best,
                       int32_t have)
{
    for (int32_t i = 0; i < count; i++)
        have = insert(best, have, want, from[i]);
    return have;
}

int32_t nsa_forced_blocks(const nsa_config *cfg, int64_t num_candidates, int64_t query_block,
                          int32_t *selected)
{
    /* The initial blocks, then the local ones above them: ascending, and
     * without a scan over every candidate. */
    const int64_t target = num_candidates < cfg->sel_count ? num_candidates : cfg->sel_count;
    const int64_t init_end = cfg->sel_init < num_candidates ? cfg->sel_init : num_candidates;
    int64_t local_first = query_block - cfg->sel_local + 1;
    const int64_t local_last = query_block < num_candidates - 1 ? query_block : num_candidates - 1;
    local_first = local_first > init_end ? local_first : init_end;
    int32_t count = 0;
    for (int64_t j = 0; j < init_end && count < target; j++)
        selected[count++] = (int32_t)j;
    for (int64_t j = local_first; j <= local_last && count < target; j++)
        selected[count++] = (int32_t)j;
    return count;
}

int32_t nsa_finish_selection(const nsa_config *cfg, int32_t forced, const nsa_ranked *best,
                             int32_t have, int32_t *selected)
{
    for (int32_t i = 0; i < have; i++)
        selected[forced + i] = best[i].block;
    nsa_sort_blocks(selected, forced + have);
    for (int32_t i = forced + have; i < cfg->sel_count; i++)
        selected[i] = -1;
    return forced + have;
}

int32_t nsa_select_blocks(const nsa_config *cfg, const float *score, int64_t num_candidates,
                          int64_t query_block, nsa_ranked *best, int32_t *selected)
{
    const int32_t forced = nsa_forced_blocks(cfg, num_candidates, query_block, selected);
    const int32_t want =
        (num_candidates < cfg->sel_count ? (int32_t)num_candidates : cfg->sel_count) - forced;
    const int32_t have = nsa_rank_blocks(cfg, score, 0, num_candidates, query_block, want, best, 0);
    return nsa_finish_selection(cfg, forced, best, have, selected);
}
