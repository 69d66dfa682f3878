/* SPDX-License-Identifier: MIT */
/*
 * test_select.c — block scores asked piecewise, as decode's workers ask
 * them (each worker the blocks inside its run of compressed tokens, the
 * last one the blocks between runs), equal the scores asked at once, bit
 * for bit, for many geometries, lengths and run sizes; and the ranges
 * nsa_blocks_within gives read no token outside their run. The top-n
 * choice equals a brute-force one (forced blocks, then descending score,
 * ties to the lower index) on scores full of ties, and ranking the
 * candidates in parts, as decode's workers do, chooses the same blocks.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "geometry.h"
#include "select.h"
#include "test_util.h"

/* Tokens block j reads: [j * stride - lead, + taps - 1] clipped to [0, nc). */
static void block_reads(const nsa_config *cfg, int64_t j, int64_t nc, int64_t *lo, int64_t *hi)
{
    const int64_t width = cfg->cmp_block / cfg->cmp_stride;
    const int64_t stride = cfg->sel_block / cfg->cmp_stride, lead = width - 1;
    const int64_t base = j * stride - lead;
    *lo = base > 0 ? base : 0;
    *hi = base + stride + lead - 1 < nc - 1 ? base + stride + lead - 1 : nc - 1;
}

static void test_piecewise_scores_equal_whole(void **state)
{
    (void)state;
    tu_rng rng = tu_rng_for("piecewise");
    const int32_t geometry[][3] = {{32, 16, 64}, {16, 8, 32}, {16, 16, 16}, {32, 16, 128},
                                   {4, 2, 8},    {64, 16, 64}, {8, 8, 64}};
    for (size_t gi = 0; gi < sizeof geometry / sizeof geometry[0]; gi++)
        for (int trial = 0; trial < 40; trial++) {
            nsa_config cfg;
            nsa_config_init(&cfg, 4, 1, 8, 8);
            cfg.cmp_block = geometry[gi][0];
            cfg.cmp_stride = geometry[gi][1];
            cfg.sel_block = geometry[gi][2];
            const int64_t len = tu_rng_int(&rng, 1, 3000), t = len - 1;
            const int64_t nc = nsa_visible_compressed(&cfg, t, len);
            const int64_t blocks = nsa_candidate_blocks(&cfg, t, len);
            const int64_t run = cfg.sel_block / cfg.cmp_stride * tu_rng_int(&rng, 1, 9);
            float *p_sum = tu_xcalloc((size_t)nc + 1, sizeof(float));
            float *whole = tu_xcalloc((size_t)blocks, sizeof(float));
            float *parts = tu_xcalloc((size_t)blocks, sizeof(float));
            tu_fill_uniform(&rng, p_sum, nc, 0.0, 1.0);
            for (int64_t j = 0; j < blocks; j++)
                parts[j] = NAN;
            nsa_block_scores(&cfg, p_sum, 0, nc, whole, 0, blocks);
            /* As the split decode does it: each run's blocks, with the
             * lead tokens of the run before, from a copy of just those
             * tokens (origin = the copy's first token); the rest from the
             * whole array. */
            const int64_t lead = nsa_block_lead(&cfg);
            int64_t next = 0;
            for (int64_t start = 0; start < nc; start += run) {
                const int64_t first = start >= lead && lead <= run ? start - lead : start;
                const int64_t last = start + run - 1 < nc - 1 ? start + run - 1 : nc - 1;
                int64_t j0, j1;
                nsa_blocks_within(&cfg, first, last, nc, blocks, &j0, &j1);
                for (int64_t j = j0; j < j1; j++) {
                    int64_t lo, hi;
                    block_reads(&cfg, j, nc, &lo, &hi);
                    assert_true(lo > hi || (lo >= first && hi <= last));
                }
                float *copy = tu_xcalloc((size_t)(last - first + 1), sizeof(float));
                memcpy(copy, p_sum + first, (size_t)(last - first + 1) * sizeof(float));
                nsa_block_scores(&cfg, copy, first, nc, parts, j0, j1);
                free(copy);
                if (j0 > next)
                    nsa_block_scores(&cfg, p_sum, 0, nc, parts, next, j0);
                next = j1 > next ? j1 : next;
            }
            nsa_block_scores(&cfg, p_sum, 0, nc, parts, next, blocks);
            assert_memory_equal(whole, parts, (size_t)blocks * sizeof(float));
            free(p_sum);
            free(whole);
            free(parts);
        }
}

/* The spec's choice, by brute force: forced blocks (ascending, at most
 * target), then repeatedly the unchosen block of highest score, the lowest
 * index among equals; the result ascending, padded with -1. */
static int32_t brute_force_select(const nsa_config *cfg, const float *score, int64_t candidates,
                                  int64_t query_block, int32_t *out)
{
    const int64_t n = cfg->sel_count, target = candidates < n ? candidates : n;
    char *taken = tu_xcalloc((size_t)candidates + 1, 1);
    int32_t count = 0;
    for (int64_t j = 0; j < candidates && count < target; j++)
        if (j < cfg->sel_init || (j <= query_block && j > query_block - cfg->sel_local)) {
            taken[j] = 1;
            out[count++] = (int32_t)j;
        }
    while (count < target) {
        int64_t best = -1;
        for (int64_t j = 0; j < candidates; j++)
            if (!taken[j] && (best < 0 || score[j] > score[best]))
                best = j;
        taken[best] = 1;
        out[count++] = (int32_t)best;
    }
    nsa_sort_blocks(out, count);
    for (int64_t i = count; i < n; i++)
        out[i] = -1;
    free(taken);
    return count;
}

/* Length of run r of `runs` starting at first[0..runs) and covering
 * [0, candidates). */
static int64_t runs_len(const int64_t *first, int64_t runs, int64_t r, int64_t candidates)
{
    return (r + 1 < runs ? first[r + 1] : candidates) - first[r];
}

static void test_selection_matches_brute_force_and_parts(void **state)
{
    (void)state;
    tu_rng rng = tu_rng_for("selection");
    for (int trial = 0; trial < 400; trial++) {
        nsa_config cfg;
        nsa_config_init(&cfg, 4, 1, 8, 8);
        cfg.sel_count = (int32_t)tu_rng_int(&rng, 3, 20);
        cfg.sel_init = (int32_t)tu_rng_int(&rng, 0, 2);
        cfg.sel_local = (int32_t)tu_rng_int(&rng, 0, cfg.sel_count - cfg.sel_init);
        const int64_t candidates = tu_rng_int(&rng, 1, 300);
        const int64_t query_block = candidates - 1;
        const int32_t n = cfg.sel_count;
        float *score = tu_xcalloc((size_t)candidates, sizeof(float));
        const int64_t levels = tu_rng_int(&rng, 1, 6); /* few values: many ties */
        for (int64_t j = 0; j < candidates; j++)
            score[j] = (float)tu_rng_int(&rng, 0, levels) * 0.25f;
        int32_t *want = tu_xcalloc((size_t)n, sizeof(int32_t));
        int32_t *got = tu_xcalloc((size_t)n, sizeof(int32_t));
        int32_t *parts = tu_xcalloc((size_t)n, sizeof(int32_t));
        nsa_ranked *best = tu_xcalloc((size_t)n, sizeof(nsa_ranked));
        nsa_ranked *lists = tu_xcalloc((size_t)(candidates * n), sizeof(nsa_ranked));
        const int32_t count = brute_force_select(&cfg, score, candidates, query_block, want);
        assert_int_equal(nsa_select_blocks(&cfg, score, candidates, query_block, best, got),
                         count);
        assert_memory_equal(got, want, (size_t)n * sizeof(int32_t));

        /* in parts: runs of random length ranked alone, then their lists
         * merged in reverse order, and single blocks ranked at the end */
        const int32_t forced = nsa_forced_blocks(&cfg, candidates, query_block, parts);
        const int32_t goal = (candidates < n ? (int32_t)candidates : n) - forced;
        int64_t runs = 0, first[300], sizes[300];
        for (int64_t j = 0; j < candidates; runs++) {
            const int64_t len = tu_rng_int(&rng, 1, 40);
            first[runs] = j;
            j += len < candidates - j ? len : candidates - j;
            const int64_t end = j;
            sizes[runs] = nsa_rank_blocks(&cfg, score, first[runs], end, query_block, n,
                                          lists + runs * n, 0);
        }
        int32_t have = 0;
        for (int64_t r = runs - 1; r >= 0; r--)
            have = nsa_rank_merge(lists + r * n, (int32_t)sizes[r], goal, best, have);
        assert_int_equal(nsa_finish_selection(&cfg, forced, best, have, parts), count);
        assert_memory_equal(parts, want, (size_t)n * sizeof(int32_t));

        /* the runs ranked into one list, last run first: a full list then
         * meets ties with lower indices than its own entries */
        nsa_forced_blocks(&cfg, candidates, query_block, parts);
        have = 0;
        for (int64_t r = runs - 1; r >= 0; r--)
            have = nsa_rank_blocks(&cfg, score, first[r], first[r] + runs_len(first, runs, r,
                                                                             candidates),
                                   query_block, goal, best, have);
        assert_int_equal(nsa_finish_selection(&cfg, forced, best, have, parts), count);
        assert_memory_equal(parts, want, (size_t)n * sizeof(int32_t));
        free(score);
        free(want);
        free(got);
        free(parts);
        free(best);
        free(lists);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_piecewise_scores_equal_whole),
        cmocka_unit_test(test_selection_matches_brute_force_and_parts),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
