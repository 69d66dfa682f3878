/* SPDX-License-Identifier: MIT */
/*
 * test_select.c — block scores asked piecewise, as decode's workers ask
 * them (each worker the blocks inside its run of compressed tokens, the
 * last one the blocks between runs), equal the scores asked at once, bit
 * for bit, for many geometries, lengths and run sizes; and the ranges
 * nsa_blocks_within gives read no token outside their run.
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
            nsa_block_scores(&cfg, p_sum, nc, whole, 0, blocks);
            int64_t next = 0;
            for (int64_t first = 0; first < nc; first += run) {
                const int64_t last = first + run - 1 < nc - 1 ? first + run - 1 : nc - 1;
                int64_t j0, j1;
                nsa_blocks_within(&cfg, first, last, nc, blocks, &j0, &j1);
                for (int64_t j = j0; j < j1; j++) {
                    int64_t lo, hi;
                    block_reads(&cfg, j, nc, &lo, &hi);
                    assert_true(lo > hi || (lo >= first && hi <= last));
                }
                nsa_block_scores(&cfg, p_sum, nc, parts, j0, j1);
                if (j0 > next)
                    nsa_block_scores(&cfg, p_sum, nc, parts, next, j0);
                next = j1 > next ? j1 : next;
            }
            nsa_block_scores(&cfg, p_sum, nc, parts, next, blocks);
            assert_memory_equal(whole, parts, (size_t)blocks * sizeof(float));
            free(p_sum);
            free(whole);
            free(parts);
        }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_piecewise_scores_equal_whole),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
