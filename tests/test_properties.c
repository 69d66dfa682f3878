/* SPDX-License-Identifier: MIT */
/*
 * test_properties.c — properties of NSA that hold whatever the data, checked
 * on the library.
 *
 * test_forward compares the library with the oracle; if both misread the
 * spec the same way it cannot tell. The properties below follow from the
 * spec by reasoning rather than by transcription, so they catch a different
 * class of mistakes: a batch must equal its sequences run alone; one-hot
 * gates must isolate each branch; a query that sees no compressed token must
 * get exactly zero from that branch and no NaN; a selection or a window that
 * covers the whole sequence must reduce to dense attention (computed here in
 * double, without the oracle), and so must nsa_dense_forward; the order of caller-given blocks must not
 * matter; exact score ties must go to the lower block index; and the thread
 * count must not change a bit of the result. Inputs are
 * random on every run (see test_util.h for replaying a seed).
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

/* Near-ties tolerated per comparison before a selection counts as wrong. */
enum { MAX_NEAR_TIES = 6 };

/* ------------------------------------------------------------------------ */
/* Helpers                                                                   */
/* ------------------------------------------------------------------------ */

static nsa_config make_config(int32_t hq, int32_t hkv, int32_t dk, int32_t dv,
                              nsa_compress_kind kind, int32_t causal)
{
    nsa_config cfg;
    nsa_status st = nsa_config_init(&cfg, hq, hkv, dk, dv);
    if (st != NSA_SUCCESS)
        fail_msg("nsa_config_init: %s", nsa_status_string(st));
    cfg.compress = kind;
    cfg.causal = causal;
    return cfg;
}

static void make_problem(tu_problem *p, const nsa_config *cfg, const int64_t *lengths,
                         int64_t num_seqs, int pe_k, int pe_v, tu_rng *rng)
{
    if (tu_problem_init(p, cfg, lengths, num_seqs, pe_k, pe_v, rng))
        fail_msg("out of memory building a problem");
}

static void run_library(const tu_problem *p, const int32_t *given, float *out, int32_t *indices)
{
    nsa_status st = tu_library_forward(p, given, out, indices);
    if (st != NSA_SUCCESS) {
        char desc[512];
        fail_msg("%s failed (%s) for %s", given ? "nsa_forward_with_indices" : "nsa_forward",
                 nsa_status_string(st), tu_describe_config(&p->cfg, desc, sizeof(desc)));
    }
}

static void fail_if(int64_t bad, const char *what)
{
    if (bad)
        fail_msg("%s: %" PRId64 " failures (NSA_TEST_SEED=%" PRIu64 ")", what, bad, tu_base_seed());
}

/* One sequence of a batch as a problem of its own, sharing the batch's
 * buffers (not to be freed). cu must hold two entries. */
static tu_problem single_sequence_view(const tu_problem *p, int64_t b, int64_t *cu)
{
    const nsa_config *cfg = &p->cfg;
    int64_t start = p->cu_seqlens[b];
    tu_problem s = *p;
    cu[0] = 0;
    cu[1] = p->cu_seqlens[b + 1] - start;
    s.num_seqs = 1;
    s.total_tokens = cu[1];
    s.cu_seqlens = cu;
    s.q = p->q + start * cfg->num_q_heads * cfg->head_dim_qk;
    s.k = p->k + start * cfg->num_kv_heads * cfg->head_dim_qk;
    s.v = p->v + start * cfg->num_kv_heads * cfg->head_dim_v;
    s.gates = p->gates + start * cfg->num_q_heads * 3;
    return s;
}

/* Plain softmax attention of every query head of `token` over all keys of
 * its sequence up to the query (causal) or all of them, in double: the
 * reference for the "covers everything" properties, independent of the
 * oracle. out: [Hq][Dv]. */
static void dense_attention(const tu_problem *p, int64_t token, double *out)
{
    const nsa_config *cfg = &p->cfg;
    const int64_t hq_n = cfg->num_q_heads, hkv = cfg->num_kv_heads;
    const int64_t g = hq_n / hkv, dk = cfg->head_dim_qk, dv = cfg->head_dim_v;
    int64_t t = 0;
    int64_t b = tu_token_sequence(p, token, &t);
    int64_t start = p->cu_seqlens[b], len = p->cu_seqlens[b + 1] - start;
    int64_t nkeys = cfg->causal ? t + 1 : len;
    double *w = tu_xcalloc((size_t)nkeys, sizeof(double));

    for (int64_t hq = 0; hq < hq_n; hq++) {
        const float *q = p->q + (token * hq_n + hq) * dk;
        int64_t h = hq / g;
        double mx = -INFINITY, sum = 0.0;
        for (int64_t j = 0; j < nkeys; j++) {
            const float *k = p->k + ((start + j) * hkv + h) * dk;
            double dot = 0.0;
            for (int64_t e = 0; e < dk; e++)
                dot += (double)q[e] * (double)k[e];
            w[j] = (double)cfg->scale * dot;
            mx = fmax(mx, w[j]);
        }
        for (int64_t j = 0; j < nkeys; j++) {
            w[j] = exp(w[j] - mx);
            sum += w[j];
        }
        for (int64_t e = 0; e < dv; e++) {
            double acc = 0.0;
            for (int64_t j = 0; j < nkeys; j++)
                acc += w[j] * (double)p->v[((start + j) * hkv + h) * dv + e];
            out[hq * dv + e] = acc / sum;
        }
    }
    free(w);
}

/* ------------------------------------------------------------------------ */
/* The configuration defaults                                                */
/* ------------------------------------------------------------------------ */

/* nsa_config_init gives the paper defaults of the spec's table; the other
 * tests build on them, so a wrong default would silently change what they
 * test. */
static void test_config_defaults(void **state)
{
    (void)state;
    nsa_config cfg;
    assert_int_equal(nsa_config_init(&cfg, 64, 4, 192, 128), NSA_SUCCESS);
    assert_int_equal(cfg.num_q_heads, 64);
    assert_int_equal(cfg.num_kv_heads, 4);
    assert_int_equal(cfg.head_dim_qk, 192);
    assert_int_equal(cfg.head_dim_v, 128);
    assert_int_equal(cfg.cmp_block, 32);
    assert_int_equal(cfg.cmp_stride, 16);
    assert_int_equal(cfg.sel_block, 64);
    assert_int_equal(cfg.sel_count, 16);
    assert_int_equal(cfg.sel_init, 1);
    assert_int_equal(cfg.sel_local, 2);
    assert_int_equal(cfg.window, 512);
    assert_int_equal(cfg.causal, 1);
    assert_int_equal(cfg.compress, NSA_COMPRESS_MEAN);
    assert_int_equal(cfg.cmp_mlp_hidden, 2 * 192);
    assert_true(fabs((double)cfg.scale - 1.0 / sqrt(192.0)) < 1e-7);
}

/* ------------------------------------------------------------------------ */
/* A batch equals its sequences alone                                        */
/* ------------------------------------------------------------------------ */

static void check_batch_equals_sequences(const char *name, nsa_config cfg, int pe_k, int pe_v)
{
    tu_rng rng = tu_rng_for(name);
    int64_t lengths[] = {0, 1, 31, 32, 300, 0, 517, tu_rng_int(&rng, 1, 400)};
    int64_t nseq = (int64_t)(sizeof(lengths) / sizeof(lengths[0]));
    tu_problem p;
    make_problem(&p, &cfg, lengths, nseq, pe_k, pe_v, &rng);
    const int64_t row = (int64_t)cfg.num_q_heads * cfg.head_dim_v;
    const int64_t irow = (int64_t)cfg.num_kv_heads * cfg.sel_count;
    float *out = tu_xcalloc((size_t)tu_out_elems(&p), sizeof(float));
    int32_t *idx = tu_xcalloc((size_t)tu_indices_elems(&p), sizeof(int32_t));
    run_library(&p, NULL, out, idx);

    int64_t bad = 0;
    for (int64_t b = 0; b < nseq; b++) {
        int64_t cu[2];
        tu_problem one = single_sequence_view(&p, b, cu);
        int64_t start = p.cu_seqlens[b], len = cu[1];
        /* Length 0 alone must be accepted too (T = 0). */
        float *out1 = tu_xcalloc((size_t)(len * row), sizeof(float));
        int32_t *idx1 = tu_xcalloc((size_t)(len * irow), sizeof(int32_t));
        run_library(&one, NULL, out1, idx1);
        char what[200];
        snprintf(what, sizeof(what), "%s: sequence %" PRId64 " alone", name, b);
        bad += tu_compare_f32_f32(what, out1, out + start * row, len, cfg.num_q_heads,
                                  cfg.head_dim_v, TU_TOL_LIBRARY_VS_LIBRARY);
        if (memcmp(idx1, idx + start * irow, (size_t)(len * irow) * sizeof(int32_t))) {
            print_error("%s: block indices differ from the batch's\n", what);
            bad++;
        }
        free(out1);
        free(idx1);
    }
    free(out);
    free(idx);
    tu_problem_free(&p);
    fail_if(bad, name);
}

static void test_batch_equals_sequences_causal(void **state)
{
    (void)state;
    nsa_config cfg = make_config(4, 2, 20, 12, NSA_COMPRESS_MLP, 1);
    cfg.sel_count = 5;
    cfg.window = 100;
    check_batch_equals_sequences("batch_equals_sequences_causal", cfg, 1, 1);
}

static void test_batch_equals_sequences_noncausal(void **state)
{
    (void)state;
    nsa_config cfg = make_config(2, 1, 24, 16, NSA_COMPRESS_LINEAR, 0);
    cfg.sel_count = 4;
    cfg.window = 63;
    check_batch_equals_sequences("batch_equals_sequences_noncausal", cfg, 0, 1);
}

/* ------------------------------------------------------------------------ */
/* One-hot gates isolate each branch                                         */
/* ------------------------------------------------------------------------ */

static void check_one_hot_gates(const char *name, nsa_config cfg, int pe_k, int pe_v)
{
    tu_rng rng = tu_rng_for(name);
    int64_t lengths[] = {1, 31, 130, 600, tu_rng_int(&rng, 1, 300)};
    tu_problem p;
    make_problem(&p, &cfg, lengths, 5, pe_k, pe_v, &rng);
    const int64_t n_out = tu_out_elems(&p), t = p.total_tokens;
    float *out = tu_xcalloc((size_t)n_out, sizeof(float));
    int32_t *idx = tu_xcalloc((size_t)tu_indices_elems(&p), sizeof(int32_t));
    double *branch[3];
    for (int i = 0; i < 3; i++)
        branch[i] = tu_xcalloc((size_t)n_out, sizeof(double));
    static const char *const names[3] = {"(1,0,0) vs o_cmp", "(0,1,0) vs o_slc",
                                         "(0,0,1) vs o_swa"};

    oracle_problem op = tu_problem_oracle_view(&p);
    oracle_state *s = oracle_prepare(&op);
    if (!s)
        fail_msg("oracle_prepare: out of memory");
    int64_t bad = 0;
    for (int which = 0; which < 3; which++) {
        tu_problem_set_gates(&p, which == 0, which == 1, which == 2);
        run_library(&p, NULL, out, idx);
        int64_t near_ties = 0, idx_errors = 0;
        tu_oracle_expected(name, &p, s, idx, NULL, branch[0], branch[1], branch[2], &near_ties,
                           &idx_errors);
        char what[200];
        snprintf(what, sizeof(what), "%s gates %s", name, names[which]);
        bad += tu_compare_f32_f64(what, out, branch[which], t, cfg.num_q_heads, cfg.head_dim_v,
                                  TU_TOL_LIBRARY_VS_ORACLE);
        bad += idx_errors + (near_ties > MAX_NEAR_TIES);
    }
    oracle_free(s);
    for (int i = 0; i < 3; i++)
        free(branch[i]);
    free(out);
    free(idx);
    tu_problem_free(&p);
    fail_if(bad, name);
}

static void test_one_hot_gates_causal(void **state)
{
    (void)state;
    nsa_config cfg = make_config(4, 2, 24, 16, NSA_COMPRESS_WEIGHTED, 1);
    cfg.sel_count = 4;
    cfg.window = 90;
    check_one_hot_gates("one_hot_gates_causal", cfg, 0, 1);
}

static void test_one_hot_gates_noncausal(void **state)
{
    (void)state;
    nsa_config cfg = make_config(2, 2, 16, 20, NSA_COMPRESS_MEAN, 0);
    cfg.sel_count = 3;
    cfg.sel_init = 0;
    cfg.sel_local = 1;
    cfg.window = 40; /* even: floor(w/2) != ceil(w/2) */
    check_one_hot_gates("one_hot_gates_noncausal", cfg, 1, 1);
}

/* ------------------------------------------------------------------------ */
/* Nothing visible: o_cmp is exactly zero, nothing is NaN                    */
/* ------------------------------------------------------------------------ */

static void check_nothing_visible(const char *name, nsa_config cfg)
{
    tu_rng rng = tu_rng_for(name);
    const int64_t l = cfg.cmp_block;
    int64_t lengths[] = {1, 2, l - 1, 0, l, 100, tu_rng_int(&rng, 1, l - 1)};
    int64_t nseq = (int64_t)(sizeof(lengths) / sizeof(lengths[0]));
    tu_problem p;
    make_problem(&p, &cfg, lengths, nseq, 1, 1, &rng);
    const int64_t row = (int64_t)cfg.num_q_heads * cfg.head_dim_v;
    float *out = tu_xcalloc((size_t)tu_out_elems(&p), sizeof(float));

    /* Random gates: every output finite. */
    run_library(&p, NULL, out, NULL);
    int64_t bad = tu_all_finite(out, tu_out_elems(&p)) ? 0 : 1;
    if (bad)
        print_error("%s: non-finite output with random gates\n", name);

    /* Gates (1,0,0): o = o_cmp, exactly 0 wherever no compressed token is
     * visible (a sequence shorter than l, or, causal, t < l - 1). */
    tu_problem_set_gates(&p, 1.0f, 0.0f, 0.0f);
    run_library(&p, NULL, out, NULL);
    int64_t zero_rows = 0;
    for (int64_t tok = 0; tok < p.total_tokens; tok++) {
        int64_t t = 0;
        int64_t b = tu_token_sequence(&p, tok, &t);
        int64_t len = p.cu_seqlens[b + 1] - p.cu_seqlens[b];
        int none_visible = len < l || (cfg.causal && t < l - 1);
        for (int64_t e = 0; e < row; e++) {
            float x = out[tok * row + e];
            if (!isfinite(x) || (none_visible && x != 0.0f)) {
                if (bad < 6)
                    print_error("%s: token %" PRId64 " (position %" PRId64 ", length %" PRId64
                                "): o_cmp[%" PRId64 "] = %g, expected %s\n",
                                name, tok, t, len, e, (double)x,
                                none_visible ? "0" : "a finite value");
                bad++;
            }
        }
        zero_rows += none_visible;
    }
    assert_true(zero_rows > 0); /* the test must exercise the case */
    free(out);
    tu_problem_free(&p);
    fail_if(bad, name);
}

static void test_nothing_visible_causal(void **state)
{
    (void)state;
    nsa_config cfg = make_config(4, 2, 20, 12, NSA_COMPRESS_LINEAR, 1);
    cfg.sel_count = 4;
    cfg.window = 50;
    check_nothing_visible("nothing_visible_causal", cfg);
}

static void test_nothing_visible_noncausal(void **state)
{
    (void)state;
    nsa_config cfg = make_config(2, 1, 16, 16, NSA_COMPRESS_MLP, 0);
    cfg.sel_count = 3;
    cfg.window = 16;
    check_nothing_visible("nothing_visible_noncausal", cfg);
}

/* ------------------------------------------------------------------------ */
/* Covering selections and windows are dense attention                       */
/* ------------------------------------------------------------------------ */

/* What must equal dense attention (causal or full, as cfg says) for every
 * token: nsa_forward with one gate set to 1 (the selected or the window
 * branch, whose selection or window covers the sequence), or
 * nsa_dense_forward, the benchmark's baseline and, on CPUs with tile
 * products, the one caller of the split raw keys (forward.c). */
enum { DENSE_FORWARD = 0, SELECTED_BRANCH = 1, WINDOW_BRANCH = 2 };

/* nsa_dense_forward of p into out. */
static void run_dense_forward(const char *name, const tu_problem *p, float *out)
{
    nsa_context *ctx = tu_context();
    nsa_plan *plan = NULL;
    if (ctx == NULL || nsa_plan_create(ctx, &p->cfg, &plan) != NSA_SUCCESS)
        fail_msg("%s: no context or plan", name);
    const nsa_batch batch = {p->num_seqs, p->total_tokens, p->cu_seqlens};
    const nsa_status st = nsa_dense_forward(plan, &batch, p->q, p->k, p->v, out);
    nsa_plan_destroy(plan);
    if (st != NSA_SUCCESS)
        fail_msg("%s: nsa_dense_forward: %s", name, nsa_status_string(st));
}

static void check_is_dense(const char *name, nsa_config cfg, const int64_t *lengths,
                           int64_t nseq, int what)
{
    tu_rng rng = tu_rng_for(name);
    tu_problem p;
    make_problem(&p, &cfg, lengths, nseq, 0, 0, &rng);
    const int64_t row = (int64_t)cfg.num_q_heads * cfg.head_dim_v;
    float *out = tu_xcalloc((size_t)tu_out_elems(&p), sizeof(float));
    double *want = tu_xcalloc((size_t)tu_out_elems(&p), sizeof(double));
    if (what == DENSE_FORWARD) {
        run_dense_forward(name, &p, out);
    } else {
        tu_problem_set_gates(&p, 0.0f, what == SELECTED_BRANCH, what == WINDOW_BRANCH);
        run_library(&p, NULL, out, NULL);
    }
    for (int64_t tok = 0; tok < p.total_tokens; tok++)
        dense_attention(&p, tok, want + tok * row);
    int64_t bad = tu_compare_f32_f64(name, out, want, p.total_tokens, cfg.num_q_heads,
                                     cfg.head_dim_v, TU_TOL_LIBRARY_VS_ORACLE);
    free(out);
    free(want);
    tu_problem_free(&p);
    fail_if(bad, name);
}

static void test_dense_forward_causal(void **state)
{
    (void)state;
    /* G = 3 (tiles of 66 rows), Dk = 40 (a partial last 32 channels of a
     * split row), Dv = 24; lengths on no block boundary. */
    nsa_config cfg = make_config(6, 2, 40, 24, NSA_COMPRESS_MEAN, 1);
    tu_rng rng = tu_rng_for("dense_forward_causal_len");
    int64_t lengths[] = {1, 17, 301, tu_rng_int(&rng, 1, 700)};
    check_is_dense("dense_forward_causal", cfg, lengths, 4, DENSE_FORWARD);
    /* G = 16, one KV head, Dk = Dv = 128 as in the benchmark. */
    nsa_config big = make_config(16, 1, 128, 128, NSA_COMPRESS_MEAN, 1);
    int64_t one[] = {tu_rng_int(&rng, 100, 300)};
    check_is_dense("dense_forward_causal_g16", big, one, 1, DENSE_FORWARD);
}

static void test_dense_forward_noncausal(void **state)
{
    (void)state;
    /* G = 1, Dk = 24 < Dv = 56. */
    nsa_config cfg = make_config(2, 2, 24, 56, NSA_COMPRESS_MEAN, 0);
    tu_rng rng = tu_rng_for("dense_forward_noncausal_len");
    int64_t lengths[] = {5, 129, tu_rng_int(&rng, 1, 500)};
    check_is_dense("dense_forward_noncausal", cfg, lengths, 3, DENSE_FORWARD);
}

static void test_covering_selection_is_dense_causal(void **state)
{
    (void)state;
    /* n * l' = 8 * 64 = 512 >= every length. */
    nsa_config cfg = make_config(4, 2, 24, 16, NSA_COMPRESS_MEAN, 1);
    cfg.sel_count = 8;
    cfg.window = 20;
    tu_rng rng = tu_rng_for("covering_selection_len");
    int64_t lengths[] = {1, 100, 512, tu_rng_int(&rng, 1, 512)};
    check_is_dense("covering_selection_is_dense_causal", cfg, lengths, 4, SELECTED_BRANCH);
}

static void test_covering_selection_is_dense_noncausal(void **state)
{
    (void)state;
    /* n * l' = 3 * 128 = 384 >= every length; partial last blocks. */
    nsa_config cfg = make_config(2, 1, 20, 12, NSA_COMPRESS_LINEAR, 0);
    cfg.sel_block = 128;
    cfg.sel_count = 3;
    cfg.window = 20;
    int64_t lengths[] = {7, 200, 384, 129};
    check_is_dense("covering_selection_is_dense_noncausal", cfg, lengths, 4, SELECTED_BRANCH);
}

static void test_covering_window_is_dense_causal(void **state)
{
    (void)state;
    nsa_config cfg = make_config(4, 1, 16, 16, NSA_COMPRESS_WEIGHTED, 1);
    cfg.sel_count = 3;
    cfg.window = 600;
    tu_rng rng = tu_rng_for("covering_window_len");
    int64_t lengths[] = {1, 64, 600, tu_rng_int(&rng, 1, 600)};
    check_is_dense("covering_window_is_dense_causal", cfg, lengths, 4, WINDOW_BRANCH);
}

static void test_covering_window_is_dense_noncausal(void **state)
{
    (void)state;
    /* Centred window: floor(w/2) and ceil(w/2) - 1 both >= L - 1. */
    nsa_config cfg = make_config(2, 2, 24, 16, NSA_COMPRESS_MEAN, 0);
    cfg.sel_count = 3;
    cfg.window = 2 * 300 - 1;
    int64_t lengths[] = {1, 64, 300, 33};
    check_is_dense("covering_window_is_dense_noncausal", cfg, lengths, 4, WINDOW_BRANCH);
}

/* ------------------------------------------------------------------------ */
/* The order of caller-given blocks does not matter                          */
/* ------------------------------------------------------------------------ */

static void check_given_order_irrelevant(const char *name, nsa_config cfg)
{
    tu_rng rng = tu_rng_for(name);
    int64_t lengths[] = {1, 70, 400, tu_rng_int(&rng, 1, 300)};
    tu_problem p;
    make_problem(&p, &cfg, lengths, 4, 1, 0, &rng);
    const int64_t n = cfg.sel_count, rows = p.total_tokens * cfg.num_kv_heads;
    int32_t *given = tu_xcalloc((size_t)tu_indices_elems(&p), sizeof(int32_t));
    tu_random_indices(&rng, &p, given);
    float *out1 = tu_xcalloc((size_t)tu_out_elems(&p), sizeof(float));
    float *out2 = tu_xcalloc((size_t)tu_out_elems(&p), sizeof(float));
    run_library(&p, given, out1, NULL);
    for (int64_t r = 0; r < rows; r++)
        tu_shuffle_i32(&rng, given + r * n, n);
    run_library(&p, given, out2, NULL);
    int64_t bad = tu_compare_f32_f32(name, out2, out1, p.total_tokens, cfg.num_q_heads,
                                     cfg.head_dim_v, TU_TOL_LIBRARY_VS_LIBRARY);
    free(given);
    free(out1);
    free(out2);
    tu_problem_free(&p);
    fail_if(bad, name);
}

static void test_given_order_irrelevant_causal(void **state)
{
    (void)state;
    nsa_config cfg = make_config(4, 2, 20, 12, NSA_COMPRESS_MEAN, 1);
    cfg.sel_count = 6;
    cfg.window = 30;
    check_given_order_irrelevant("given_order_irrelevant_causal", cfg);
}

static void test_given_order_irrelevant_noncausal(void **state)
{
    (void)state;
    nsa_config cfg = make_config(2, 1, 16, 16, NSA_COMPRESS_WEIGHTED, 0);
    cfg.sel_block = 32;
    cfg.sel_count = 7;
    cfg.window = 30;
    check_given_order_irrelevant("given_order_irrelevant_noncausal", cfg);
}

/* ------------------------------------------------------------------------ */
/* Exact ties go to the lower block index                                    */
/* ------------------------------------------------------------------------ */

/* Makes every score tie exactly: all keys of a head equal and every value a
 * multiple of 1/4, so compressed keys and dot products are exact in float;
 * the visible compressed tokens then get equal probabilities, and every full
 * block the same score. Where the number of visible compressed tokens is a
 * power of two those probabilities are exact too, so no rounding can break
 * the tie, and the spec's rule (lower block index first) alone decides. */
static void quantise_for_ties(tu_problem *p)
{
    const nsa_config *cfg = &p->cfg;
    const int64_t hkv = cfg->num_kv_heads, dk = cfg->head_dim_qk;
    const int64_t nq = p->total_tokens * cfg->num_q_heads * dk;
    for (int64_t i = 0; i < nq; i++)
        p->q[i] = roundf(p->q[i] * 4.0f) / 4.0f;
    for (int64_t b = 0; b < p->num_seqs; b++) {
        int64_t first = p->cu_seqlens[b];
        for (int64_t tok = first; tok < p->cu_seqlens[b + 1]; tok++)
            for (int64_t e = 0; e < hkv * dk; e++)
                p->k[tok * hkv * dk + e] = roundf(p->k[first * hkv * dk + e] * 4.0f) / 4.0f;
    }
}

static int is_power_of_two(int64_t x)
{
    return x > 0 && (x & (x - 1)) == 0;
}

static void check_exact_ties(const char *name, nsa_config cfg, const int64_t *lengths, int64_t nseq)
{
    tu_rng rng = tu_rng_for(name);
    tu_problem p;
    make_problem(&p, &cfg, lengths, nseq, 0, 0, &rng);
    quantise_for_ties(&p);
    const int64_t hkv = cfg.num_kv_heads, n = cfg.sel_count;
    int32_t *idx = tu_xcalloc((size_t)tu_indices_elems(&p), sizeof(int32_t));
    float *out = tu_xcalloc((size_t)tu_out_elems(&p), sizeof(float));
    int32_t *want = tu_xcalloc((size_t)(hkv * n), sizeof(int32_t));
    run_library(&p, NULL, out, idx);

    oracle_problem op = tu_problem_oracle_view(&p);
    oracle_state *s = oracle_prepare(&op);
    if (!s)
        fail_msg("oracle_prepare: out of memory");
    int64_t bad = 0, checked = 0;
    for (int64_t tok = 0; tok < p.total_tokens; tok++) {
        int64_t t = 0;
        int64_t b = tu_token_sequence(&p, tok, &t);
        int64_t len = p.cu_seqlens[b + 1] - p.cu_seqlens[b];
        int64_t nvis =
            cfg.causal ? (t + 1 >= cfg.cmp_block ? (t + 1 - cfg.cmp_block) / cfg.cmp_stride + 1 : 0)
                       : oracle_num_compressed(&cfg, len);
        /* Only where ties are exact and a ranking decision is made. */
        if (!is_power_of_two(nvis) || oracle_num_candidates(&cfg, len, t) <= n)
            continue;
        checked++;
        oracle_token(s, tok, NULL, NULL, NULL, NULL, NULL, want, NULL);
        if (memcmp(want, idx + tok * hkv * n, (size_t)(hkv * n) * sizeof(int32_t))) {
            if (bad < 6) {
                char g[512] = "", w[512] = "";
                for (int64_t j = 0; j < n; j++) {
                    size_t gl = strlen(g), wl = strlen(w);
                    snprintf(g + gl, sizeof(g) - gl, " %d", idx[tok * hkv * n + j]);
                    snprintf(w + wl, sizeof(w) - wl, " %d", want[j]);
                }
                print_error("%s: token %" PRId64 " (position %" PRId64
                            "): library [%s ], expected [%s ] (first KV head)\n",
                            name, tok, t, g, w);
            }
            bad++;
        }
    }
    print_message("%s: %" PRId64 " tokens with exact ties checked\n", name, checked);
    assert_true(checked > 0);
    oracle_free(s);
    free(want);
    free(out);
    free(idx);
    tu_problem_free(&p);
    fail_if(bad, name);
}

static void test_exact_ties_causal(void **state)
{
    (void)state;
    /* Full interior blocks all score 8p; block 0 scores 7p. With one forced
     * local block and n = 4, the three lowest interior blocks must win. */
    nsa_config cfg = make_config(2, 1, 16, 16, NSA_COMPRESS_MEAN, 1);
    cfg.sel_count = 4;
    cfg.sel_init = 0;
    cfg.sel_local = 1;
    cfg.window = 16;
    int64_t lengths[] = {600, 300};
    check_exact_ties("exact_ties_causal", cfg, lengths, 2);
}

static void test_exact_ties_noncausal(void **state)
{
    (void)state;
    /* C(528) = 32 compressed tokens, a power of two, for every query. */
    nsa_config cfg = make_config(4, 2, 16, 12, NSA_COMPRESS_MEAN, 0);
    cfg.sel_count = 4;
    cfg.sel_init = 0;
    cfg.sel_local = 1;
    cfg.window = 16;
    int64_t lengths[] = {528};
    check_exact_ties("exact_ties_noncausal", cfg, lengths, 1);
}

/* ------------------------------------------------------------------------ */
/* The thread count does not change a bit                                    */
/* ------------------------------------------------------------------------ */

/* nsa.h promises bitwise-identical results for every thread count; a race or
 * a thread-dependent reduction order would break it. */
static void test_thread_count_invariance(void **state)
{
    (void)state;
    static const int32_t thread_counts[] = {1, 2, 3};
    enum { RUNS = sizeof(thread_counts) / sizeof(thread_counts[0]) };
    nsa_config cfg = make_config(4, 2, 24, 16, NSA_COMPRESS_LINEAR, 1);
    cfg.sel_count = 6;
    cfg.window = 200;
    tu_rng rng = tu_rng_for("thread_count_invariance");
    int64_t lengths[] = {1100, 517, 33, tu_rng_int(&rng, 1, 400)};
    tu_problem p;
    make_problem(&p, &cfg, lengths, 4, 1, 1, &rng);
    const int64_t n_out = tu_out_elems(&p), n_idx = tu_indices_elems(&p);
    float *out[RUNS];
    int32_t *idx[RUNS];
    int64_t bad = 0;
    for (int r = 0; r < RUNS; r++) {
        nsa_context_options opts;
        nsa_context_options_init(&opts);
        opts.num_threads = thread_counts[r];
        opts.bind_threads = 0; /* more threads than cores must work too */
        nsa_context *ctx = NULL;
        nsa_status st = nsa_context_create(&opts, &ctx);
        if (st != NSA_SUCCESS)
            fail_msg("nsa_context_create(%d threads): %s", thread_counts[r], nsa_status_string(st));
        out[r] = tu_xcalloc((size_t)n_out, sizeof(float));
        idx[r] = tu_xcalloc((size_t)n_idx, sizeof(int32_t));
        st = tu_library_forward_on(ctx, &p, NULL, out[r], idx[r]);
        nsa_context_destroy(ctx);
        if (st != NSA_SUCCESS)
            fail_msg("nsa_forward with %d threads: %s", thread_counts[r], nsa_status_string(st));
        if (r > 0 && (memcmp(out[r], out[0], (size_t)n_out * sizeof(float)) ||
                      memcmp(idx[r], idx[0], (size_t)n_idx * sizeof(int32_t)))) {
            print_error("%d threads: output or indices differ from 1 thread\n", thread_counts[r]);
            bad++;
        }
    }
    for (int r = 0; r < RUNS; r++) {
        free(out[r]);
        free(idx[r]);
    }
    tu_problem_free(&p);
    fail_if(bad, "thread_count_invariance");
}

static int teardown_group(void **state)
{
    (void)state;
    tu_context_release();
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_config_defaults),
        cmocka_unit_test(test_batch_equals_sequences_causal),
        cmocka_unit_test(test_batch_equals_sequences_noncausal),
        cmocka_unit_test(test_one_hot_gates_causal),
        cmocka_unit_test(test_one_hot_gates_noncausal),
        cmocka_unit_test(test_nothing_visible_causal),
        cmocka_unit_test(test_nothing_visible_noncausal),
        cmocka_unit_test(test_dense_forward_causal),
        cmocka_unit_test(test_dense_forward_noncausal),
        cmocka_unit_test(test_covering_selection_is_dense_causal),
        cmocka_unit_test(test_covering_selection_is_dense_noncausal),
        cmocka_unit_test(test_covering_window_is_dense_causal),
        cmocka_unit_test(test_covering_window_is_dense_noncausal),
        cmocka_unit_test(test_given_order_irrelevant_causal),
        cmocka_unit_test(test_given_order_irrelevant_noncausal),
        cmocka_unit_test(test_exact_ties_causal),
        cmocka_unit_test(test_exact_ties_noncausal),
        cmocka_unit_test(test_thread_count_invariance),
    };
    tu_announce_seed("test_properties");
    return cmocka_run_group_tests(tests, NULL, teardown_group);
}
