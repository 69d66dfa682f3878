/* SPDX-License-Identifier: MIT */
/*
 * test_forward.c — the library's nsa_forward and nsa_forward_with_indices
 * against the double-precision oracle, on whole outputs and block indices.
 *
 * The cases below are chosen to reach every branch of the spec at least once:
 * sequence lengths around each boundary (0, 1, l-1, l, l', and past 1000),
 * GQA group sizes 1, 2 and 16, Dk != Dv with odd sizes, each compression kind
 * with position encodings on K only, V only, both and neither, forced-block
 * counts from 0/0 to 0/3 and 2/1, n below and above the number of blocks,
 * windows shorter and longer than the sequences, causal and non-causal, and
 * non-default block geometries. Inputs are random on every run (see
 * test_util.h for replaying a seed).
 *
 * Block indices must match the oracle's exactly, except at float near-ties
 * (the oracle's ranking margin is below TU_NEAR_TIE_MARGIN): there the
 * library's choice is accepted if it is a valid selection, and that token's
 * output is compared with the oracle run on the library's blocks.
 */
#include <inttypes.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "nsa.h"
#include "oracle.h"
#include "test_util.h"

/* Near-ties tolerated per case before the selection counts as wrong. */
enum { MAX_NEAR_TIES = 6 };

/* A length in a case's list that is drawn at random, in [1, RANDOM_MAX]. */
enum { RANDOM_LEN = -1, RANDOM_MAX = 400, MAX_SEQS = 10 };

typedef struct fwd_case {
    const char *name;
    nsa_compress_kind kind;
    int32_t hq, hkv, dk, dv;
    int32_t l, d, lp; /* block geometry */
    int32_t n, n_init, n_local, w;
    int32_t causal;
    int pe_k, pe_v;
    int nseq;
    int64_t lengths[MAX_SEQS];
} fwd_case;

#define MEAN     NSA_COMPRESS_MEAN
#define WEIGHTED NSA_COMPRESS_WEIGHTED
#define LINEAR   NSA_COMPRESS_LINEAR
#define MLP      NSA_COMPRESS_MLP
#define R        RANDOM_LEN

/* Laid out by hand, two lines a case: name and phi, then Hq, Hkv, Dk, Dv, l, d, l', n,
 * n_init, n_local, w, causal, pe on K, pe on V, sequence count and lengths. */
/* clang-format off */
static const fwd_case cases[] = {
    /* Causal, paper geometry. */
    {"varlen_mix_mean_g2", MEAN,
      4, 2, 24, 16, 32, 16,  64,  8, 1, 2,   96, 1, 0, 0, 8, {0, 1, 31, 32, 64, 517, 1100, R}},
    {"long_weighted_pek_g1", WEIGHTED,
      2, 2, 20, 12, 32, 16,  64,  5, 0, 0,  700, 1, 1, 0, 5, {1030, 33, 63, 0, R}},
    {"g16_linear_pe_both_init2_local1", LINEAR,
     16, 1, 24, 16, 32, 16,  64,  4, 2, 1,  600, 1, 1, 1, 3, {300, 47, 200}},
    {"g16_mlp_pe_both_n3", MLP,
     16, 1, 16,  8, 32, 16,  64,  3, 0, 0,   32, 1, 1, 1, 2, {260, 90}},
    {"n_above_blocks_weighted_pev", WEIGHTED,
      4, 4, 12, 20, 32, 16,  64, 40, 1, 2,   50, 1, 0, 1, 3, {300, 500, R}},
    {"mean_pek_init1_local1", MEAN,
      4, 2, 20, 12, 32, 16,  64,  6, 1, 1,  128, 1, 1, 0, 4, {31, 32, 640, R}},
    {"linear_pev_g2", LINEAR,
      4, 2, 24, 16, 32, 16,  64,  5, 1, 2,   40, 1, 0, 1, 3, {65, 330, R}},
    /* Causal, other geometries. */
    {"geo16_8_32_mlp_pev_init0_local3", MLP,
      4, 2, 20, 12, 16,  8,  32,  6, 0, 3,   64, 1, 0, 1, 6, {1, 15, 16, 32, 300, R}},
    {"geo16_16_16_mean_pe_both", MEAN,
      2, 1, 16, 16, 16, 16,  16,  3, 1, 1,   20, 1, 1, 1, 4, {16, 100, 257, R}},
    {"geo32_16_128_linear_nope_long_window", LINEAR,
      4, 2, 24, 16, 32, 16, 128,  3, 1, 1, 1000, 1, 0, 0, 4, {127, 128, 129, 700}},
    {"geo16_8_32_weighted_nope", WEIGHTED,
      2, 1, 20, 12, 16,  8,  32,  4, 0, 1,   24, 1, 0, 0, 3, {7, 250, R}},
    {"geo32_16_128_mlp_pek", MLP,
      4, 2, 24, 16, 32, 16, 128,  4, 1, 2,  100, 1, 1, 0, 3, {200, 513, 31}},
    /* Over 512 compressed tokens: the compressed branch takes several
     * softmax chunks, and selection rescales them. */
    {"many_cmp_geo4_2_8_mean_g16", MEAN,
     16, 1, 16, 12,  4,  2,   8,  6, 1, 2,   40, 1, 0, 0, 2, {1200, 530}},
    /* Non-causal (spec section 9). */
    {"noncausal_mean_pek_odd_window", MEAN,
      4, 2, 24, 16, 32, 16,  64,  4, 1, 2,   65, 0, 1, 0, 6, {1, 31, 70, 100, 517, R}},
    {"noncausal_many_cmp_geo4_2_8_weighted_g1", WEIGHTED,
      2, 2, 12, 16,  4,  2,   8,  5, 1, 1,   33, 0, 1, 0, 2, {1100, 515}},
    {"noncausal_mean_pev_g1", MEAN,
      2, 2, 20, 12, 32, 16,  64,  3, 0, 1,   30, 0, 0, 1, 3, {64, 200, R}},
    {"noncausal_geo16_8_32_linear_pek_even_window", LINEAR,
      2, 1, 20, 12, 16,  8,  32,  5, 0, 1,   64, 0, 1, 0, 3, {15, 200, 333}},
    {"noncausal_linear_pev", LINEAR,
      4, 2, 16, 16, 32, 16,  64,  4, 2, 1,  100, 0, 0, 1, 2, {150, R}},
    {"noncausal_g16_weighted_pe_both_huge_window", WEIGHTED,
     16, 1, 16, 16, 32, 16,  64,  3, 1, 1, 2000, 0, 1, 1, 2, {150, 64}},
    {"noncausal_weighted_nope", WEIGHTED,
      4, 2, 20, 12, 32, 16,  64,  6, 1, 2,   48, 0, 0, 0, 3, {129, 260, 1}},
    {"noncausal_geo32_16_128_mlp_nope", MLP,
      4, 2, 24, 16, 32, 16, 128,  3, 0, 2,   10, 0, 0, 0, 2, {129, 400}},
    {"noncausal_geo16_16_16_mlp_pek", MLP,
      2, 1, 20, 12, 16, 16,  16,  4, 1, 1,   33, 0, 1, 0, 3, {16, 90, R}},
};
/* clang-format on */

enum { NUM_CASES = sizeof(cases) / sizeof(cases[0]) };

/* Builds the configuration as a user does: the defaults, then edits. */
static nsa_config case_config(const fwd_case *c)
{
    nsa_config cfg;
    nsa_status st = nsa_config_init(&cfg, c->hq, c->hkv, c->dk, c->dv);
    if (st != NSA_SUCCESS)
        fail_msg("nsa_config_init: %s", nsa_status_string(st));
    cfg.cmp_block = c->l;
    cfg.cmp_stride = c->d;
    cfg.sel_block = c->lp;
    cfg.sel_count = c->n;
    cfg.sel_init = c->n_init;
    cfg.sel_local = c->n_local;
    cfg.window = c->w;
    cfg.causal = c->causal;
    cfg.compress = c->kind;
    return cfg;
}

static void make_case_problem(const fwd_case *c, tu_rng *rng, tu_problem *p)
{
    nsa_config cfg = case_config(c);
    int64_t lengths[MAX_SEQS];
    for (int b = 0; b < c->nseq; b++)
        lengths[b] = c->lengths[b] == RANDOM_LEN ? tu_rng_int(rng, 1, RANDOM_MAX) : c->lengths[b];
    if (tu_problem_init(p, &cfg, lengths, c->nseq, c->pe_k, c->pe_v, rng))
        fail_msg("out of memory building the problem");

    char desc[512], lens[256] = "";
    for (int b = 0; b < c->nseq; b++) {
        size_t used = strlen(lens);
        snprintf(lens + used, sizeof(lens) - used, " %" PRId64, lengths[b]);
    }
    print_message("%s: %s pe_k=%d pe_v=%d lengths [%s ]\n", c->name,
                  tu_describe_config(&cfg, desc, sizeof(desc)), c->pe_k, c->pe_v, lens);
}

static double max_abs_error(const float *got, const double *want, int64_t n)
{
    double m = 0.0;
    for (int64_t i = 0; i < n; i++) {
        double e = fabs((double)got[i] - want[i]);
        if (!(e <= m))
            m = e; /* NaN sticks */
    }
    return m;
}

/* nsa_forward against the oracle: outputs and block indices. */
static void check_forward(const fwd_case *c, tu_rng *rng)
{
    tu_problem p;
    make_case_problem(c, rng, &p);

    const int64_t t = p.total_tokens, hq = p.cfg.num_q_heads, dv = p.cfg.head_dim_v;
    float *out = tu_xcalloc((size_t)tu_out_elems(&p), sizeof(float));
    int32_t *idx = tu_xcalloc((size_t)tu_indices_elems(&p), sizeof(int32_t));
    nsa_status st = tu_library_forward(&p, NULL, out, idx);
    if (st != NSA_SUCCESS)
        fail_msg("%s: nsa_forward failed: %s", c->name, nsa_status_string(st));

    oracle_problem op = tu_problem_oracle_view(&p);
    oracle_state *s = oracle_prepare(&op);
    if (!s)
        fail_msg("oracle_prepare: out of memory");
    double *want = tu_xcalloc((size_t)tu_out_elems(&p), sizeof(double));
    int64_t near_ties = 0, idx_errors = 0;
    tu_oracle_expected(c->name, &p, s, idx, want, NULL, NULL, NULL, &near_ties, &idx_errors);

    int64_t bad = tu_compare_f32_f64(c->name, out, want, t, hq, dv, TU_TOL_LIBRARY_VS_ORACLE);
    print_message("%s: %" PRId64 " tokens, max |library - oracle| = %.3g, "
                  "%" PRId64 " near-tie selections\n",
                  c->name, t, max_abs_error(out, want, tu_out_elems(&p)), near_ties);

    oracle_free(s);
    free(want);
    free(out);
    free(idx);
    tu_problem_free(&p);
    if (idx_errors)
        fail_msg("%s: %" PRId64 " block selections differ from the oracle "
                 "(NSA_TEST_SEED=%" PRIu64 ")",
                 c->name, idx_errors, tu_base_seed());
    if (near_ties > MAX_NEAR_TIES)
        fail_msg("%s: %" PRId64 " near-tie selections, more than float "
                 "rounding explains (NSA_TEST_SEED=%" PRIu64 ")",
                 c->name, near_ties, tu_base_seed());
    if (bad)
        fail_msg("%s: %" PRId64 " output elements differ from the oracle "
                 "(NSA_TEST_SEED=%" PRIu64 ")",
                 c->name, bad, tu_base_seed());
}

/* nsa_forward_with_indices with random valid blocks (any order, -1 slots,
 * blocks after the query) against the oracle given the same blocks. */
static void check_forward_with_indices(const fwd_case *c, tu_rng *rng)
{
    tu_problem p;
    make_case_problem(c, rng, &p);

    const int64_t t = p.total_tokens, hq = p.cfg.num_q_heads, dv = p.cfg.head_dim_v;
    int32_t *given = tu_xcalloc((size_t)tu_indices_elems(&p), sizeof(int32_t));
    tu_random_indices(rng, &p, given);
    float *out = tu_xcalloc((size_t)tu_out_elems(&p), sizeof(float));
    nsa_status st = tu_library_forward(&p, given, out, NULL);
    if (st != NSA_SUCCESS)
        fail_msg("%s: nsa_forward_with_indices failed: %s", c->name, nsa_status_string(st));

    oracle_problem op = tu_problem_oracle_view(&p);
    oracle_state *s = oracle_prepare(&op);
    if (!s)
        fail_msg("oracle_prepare: out of memory");
    double *want = tu_xcalloc((size_t)tu_out_elems(&p), sizeof(double));
    oracle_forward(s, given, want, NULL, NULL, NULL, NULL, NULL);

    char what[300];
    snprintf(what, sizeof(what), "%s (given indices)", c->name);
    int64_t bad = tu_compare_f32_f64(what, out, want, t, hq, dv, TU_TOL_LIBRARY_VS_ORACLE);
    print_message("%s: max |library - oracle| = %.3g\n", what,
                  max_abs_error(out, want, tu_out_elems(&p)));
    oracle_free(s);
    free(want);
    free(out);
    free(given);
    tu_problem_free(&p);
    if (bad)
        fail_msg("%s: %" PRId64 " output elements differ from the oracle "
                 "(NSA_TEST_SEED=%" PRIu64 ")",
                 what, bad, tu_base_seed());
}

/* ------------------------------------------------------------------------ */
/* Random configurations                                                     */
/* ------------------------------------------------------------------------ */

/* A configuration drawn at random, so that over many runs combinations the
 * table above does not list get tried too. The geometry comes from a list of
 * valid ones (d divides l and l', l <= l'); sizes stay small enough for the
 * oracle to run in well under a second. */
static fwd_case random_case(tu_rng *r, const char *name)
{
    static const int32_t geometries[][3] = {
        {32, 16, 64}, {16, 8, 32}, {16, 16, 16}, {32, 16, 128},
        {8, 4, 16},   {24, 8, 48}, {12, 4, 12},  {32, 32, 64},
    };
    static const int32_t groups[][2] = {{1, 1}, {2, 1}, {2, 2}, {4, 2}, {16, 1}, {3, 3}, {6, 2}};
    fwd_case c;
    memset(&c, 0, sizeof(c));
    c.name = name;
    const int32_t *geo = geometries[tu_rng_int(r, 0, 7)];
    const int32_t *grp = groups[tu_rng_int(r, 0, 6)];
    c.hq = grp[0];
    c.hkv = grp[1];
    c.dk = (int32_t)tu_rng_int(r, 1, 32);
    c.dv = (int32_t)tu_rng_int(r, 1, 32);
    c.l = geo[0];
    c.d = geo[1];
    c.lp = geo[2];
    c.n_init = (int32_t)tu_rng_int(r, 0, 2);
    c.n_local = (int32_t)tu_rng_int(r, 0, 3);
    c.n = c.n_init + c.n_local + (int32_t)tu_rng_int(r, 0, 8);
    if (c.n == 0)
        c.n = 1;
    /* Tiny windows (the query alone) as well as long ones. */
    c.w = tu_rng_int(r, 0, 3) == 0 ? (int32_t)tu_rng_int(r, 1, 3) : (int32_t)tu_rng_int(r, 1, 700);
    c.causal = (int32_t)tu_rng_int(r, 0, 1);
    c.kind = (nsa_compress_kind)tu_rng_int(r, 0, 3);
    c.pe_k = (int)tu_rng_int(r, 0, 1);
    c.pe_v = (int)tu_rng_int(r, 0, 1);
    c.nseq = (int)tu_rng_int(r, 1, 4);
    /* Keep Hq * T bounded so the oracle stays fast. */
    int64_t max_len = c.hq >= 6 ? 200 : 600;
    for (int b = 0; b < c.nseq; b++)
        c.lengths[b] = tu_rng_int(r, 0, max_len);
    return c;
}

/* One cmocka test: a table case or a random configuration, through
 * nsa_forward or nsa_forward_with_indices. */
typedef struct test_entry {
    char name[320];        /* also seeds the data */
    const fwd_case *table; /* NULL: a random configuration */
    char config_seed[64];  /* seeds a random configuration, shared by the
                              forward and given variants */
    int given;             /* 1: nsa_forward_with_indices */
} test_entry;

static void run_entry(void **state)
{
    const test_entry *e = *state;
    tu_rng rng = tu_rng_for(e->name);
    fwd_case c;
    if (e->table) {
        c = *e->table;
    } else {
        tu_rng cfg_rng = tu_rng_for(e->config_seed);
        c = random_case(&cfg_rng, e->config_seed);
    }
    if (e->given)
        check_forward_with_indices(&c, &rng);
    else
        check_forward(&c, &rng);
}

static int teardown_group(void **state)
{
    (void)state;
    tu_context_release();
    return 0;
}

enum { NUM_RANDOM = 4, NUM_ENTRIES = 2 * (NUM_CASES + NUM_RANDOM) };

static test_entry entries[NUM_ENTRIES];

int main(void)
{
    struct CMUnitTest tests[NUM_ENTRIES];
    tu_announce_seed("test_forward");
    for (int i = 0; i < NUM_CASES + NUM_RANDOM; i++) {
        for (int given = 0; given < 2; given++) {
            test_entry *e = &entries[2 * i + given];
            const char *mode = given ? "given" : "forward";
            e->given = given;
            if (i < NUM_CASES) {
                e->table = &cases[i];
                snprintf(e->name, sizeof(e->name), "%s/%s", mode, cases[i].name);
            } else {
                snprintf(e->config_seed, sizeof(e->config_seed), "random_config_%d",
                         i - NUM_CASES + 1);
                snprintf(e->name, sizeof(e->name), "%s/random_config_%d", mode,
                         i - NUM_CASES + 1);
            }
            tests[2 * i + given] = (struct CMUnitTest){e->name, run_entry, NULL, NULL, e};
        }
    }
    return cmocka_run_group_tests(tests, NULL, teardown_group);
}
