/* SPDX-License-Identifier: MIT */
/*
 * test_util.c — the helpers of test_util.h: seeds, random problems, library
 * calls and tolerance checks shared by test_forward, test_golden and
 * test_properties.
 *
 * What is compared, and why, lives in the test files; this file makes
 * inputs, runs the library, reports differences in a form that locates them
 * (token, head, channel), and holds the one piece of judgement the tests
 * share: when a block selection that differs from the oracle's is a float
 * near-tie rather than an error (tu_oracle_expected).
 */
#include "test_util.h"

#include <inttypes.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

/* ------------------------------------------------------------------------ */
/* Seeds and random numbers                                                  */
/* ------------------------------------------------------------------------ */

static int base_seed_ready;
static uint64_t base_seed;

uint64_t tu_base_seed(void)
{
    if (!base_seed_ready) {
        const char *env = getenv("NSA_TEST_SEED");
        if (env && *env) {
            base_seed = strtoull(env, NULL, 0);
        } else {
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            base_seed = ((uint64_t)ts.tv_sec * 1000000007u) ^ (uint64_t)ts.tv_nsec;
        }
        base_seed_ready = 1;
    }
    return base_seed;
}

void tu_announce_seed(const char *program)
{
    printf("%s: seed %" PRIu64 " (replay with NSA_TEST_SEED=%" PRIu64 ")\n", program,
           tu_base_seed(), tu_base_seed());
    fflush(stdout);
}

/* splitmix64: small, fast, and good enough for test data. */
uint64_t tu_rng_next(tu_rng *r)
{
    uint64_t z = (r->state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

tu_rng tu_rng_for(const char *test_name)
{
    /* FNV-1a of the name, so tests draw independent streams. */
    uint64_t h = 0xcbf29ce484222325ull;
    for (const char *c = test_name; *c; c++)
        h = (h ^ (uint64_t)(unsigned char)*c) * 0x100000001b3ull;
    tu_rng r = {tu_base_seed() ^ h};
    tu_rng_next(&r);
    return r;
}

double tu_rng_uniform(tu_rng *r, double lo, double hi)
{
    double u = (double)(tu_rng_next(r) >> 11) * (1.0 / 9007199254740992.0);
    return lo + (hi - lo) * u;
}

int64_t tu_rng_int(tu_rng *r, int64_t lo, int64_t hi)
{
    uint64_t span = (uint64_t)(hi - lo) + 1;
    return lo + (int64_t)(tu_rng_next(r) % span);
}

void tu_fill_uniform(tu_rng *r, float *x, int64_t n, double lo, double hi)
{
    for (int64_t i = 0; i < n; i++)
        x[i] = (float)tu_rng_uniform(r, lo, hi);
}

void tu_shuffle_i32(tu_rng *r, int32_t *x, int64_t n)
{
    for (int64_t i = n - 1; i > 0; i--) {
        int64_t j = tu_rng_int(r, 0, i);
        int32_t tmp = x[i];
        x[i] = x[j];
        x[j] = tmp;
    }
}

void *tu_xcalloc(size_t count, size_t size)
{
    void *p = calloc(count ? count : 1, size ? size : 1);
    if (!p)
        fail_msg("out of memory allocating %zu x %zu bytes", count, size);
    return p;
}

/* ------------------------------------------------------------------------ */
/* Random problems                                                           */
/* ------------------------------------------------------------------------ */

enum { PARAM_PE, PARAM_A, PARAM_W, PARAM_W1, PARAM_W2 };

/* A random tensor of n floats in [-bound, bound], or NULL when out of
 * memory. */
static float *random_tensor(tu_rng *r, int64_t n, double bound)
{
    float *x = malloc((size_t)(n > 0 ? n : 1) * sizeof(float));
    if (x)
        tu_fill_uniform(r, x, n, -bound, bound);
    return x;
}

/* The phi parameters of one tensor (K or V, head dim `dim`). Scales keep the
 * compressed tokens O(1): a uniform weight of variance 1/(3 fan_in) against
 * inputs of variance ~1/3. Returns 0 or -1 (out of memory). */
static int make_compress_params(tu_problem *p, int which, int64_t dim, int with_pe, tu_rng *r)
{
    const nsa_config *cfg = &p->cfg;
    const int64_t hkv = cfg->num_kv_heads, l = cfg->cmp_block;
    const int64_t fan_in = l * dim, m = cfg->cmp_mlp_hidden;
    float **buf = p->param_buf[which];

    if (with_pe && !(buf[PARAM_PE] = random_tensor(r, hkv * l * dim, 0.5)))
        return -1;
    switch (cfg->compress) {
    case NSA_COMPRESS_MEAN: break;
    case NSA_COMPRESS_WEIGHTED:
        /* Mostly positive weights near 1/l, so phi stays an average-like
         * summary, with some negative ones to exercise the sign. */
        if (!(buf[PARAM_A] = random_tensor(r, hkv * l, 1.0)))
            return -1;
        for (int64_t i = 0; i < hkv * l; i++)
            buf[PARAM_A][i] = (float)((1.0 + 1.5 * buf[PARAM_A][i]) / (double)l);
        break;
    case NSA_COMPRESS_LINEAR:
        if (!(buf[PARAM_W] = random_tensor(r, hkv * fan_in * dim, 1.0 / sqrt((double)fan_in))))
            return -1;
        break;
    case NSA_COMPRESS_MLP:
        if (!(buf[PARAM_W1] = random_tensor(r, hkv * fan_in * m, sqrt(3.0 / (double)fan_in))) ||
            !(buf[PARAM_W2] = random_tensor(r, hkv * m * dim, sqrt(3.0 / (double)m))))
            return -1;
        break;
    }
    nsa_compress_params *prm = which == 0 ? &p->cmp_k : &p->cmp_v;
    prm->pe = buf[PARAM_PE];
    prm->a = buf[PARAM_A];
    prm->w = buf[PARAM_W];
    prm->w1 = buf[PARAM_W1];
    prm->w2 = buf[PARAM_W2];
    return 0;
}

int tu_problem_init(tu_problem *p, const nsa_config *cfg, const int64_t *lengths, int64_t num_seqs,
                    int pe_k, int pe_v, tu_rng *rng)
{
    memset(p, 0, sizeof(*p));
    p->cfg = *cfg;
    p->num_seqs = num_seqs;
    p->cu_seqlens = malloc((size_t)(num_seqs + 1) * sizeof(int64_t));
    if (!p->cu_seqlens)
        goto fail;
    p->cu_seqlens[0] = 0;
    for (int64_t b = 0; b < num_seqs; b++)
        p->cu_seqlens[b + 1] = p->cu_seqlens[b] + lengths[b];
    const int64_t t = p->total_tokens = p->cu_seqlens[num_seqs];
    const int64_t hq = cfg->num_q_heads, hkv = cfg->num_kv_heads;
    p->q = random_tensor(rng, t * hq * cfg->head_dim_qk, 2.0);
    p->k = random_tensor(rng, t * hkv * cfg->head_dim_qk, 1.0);
    p->v = random_tensor(rng, t * hkv * cfg->head_dim_v, 1.0);
    p->gates = random_tensor(rng, t * hq * 3, 0.5);
    if (!p->q || !p->k || !p->v || !p->gates)
        goto fail;
    for (int64_t i = 0; i < t * hq * 3; i++)
        p->gates[i] += 0.5f; /* sigmoid-like values in [0, 1] */
    if (make_compress_params(p, 0, cfg->head_dim_qk, pe_k, rng) ||
        make_compress_params(p, 1, cfg->head_dim_v, pe_v, rng))
        goto fail;
    return 0;

fail:
    tu_problem_free(p);
    return -1;
}

void tu_problem_free(tu_problem *p)
{
    free(p->cu_seqlens);
    free(p->q);
    free(p->k);
    free(p->v);
    free(p->gates);
    for (int which = 0; which < 2; which++)
        for (int i = 0; i < 5; i++)
            free(p->param_buf[which][i]);
    memset(p, 0, sizeof(*p));
}

void tu_problem_set_gates(tu_problem *p, float g_cmp, float g_slc, float g_swa)
{
    int64_t rows = p->total_tokens * p->cfg.num_q_heads;
    for (int64_t i = 0; i < rows; i++) {
        p->gates[3 * i + 0] = g_cmp;
        p->gates[3 * i + 1] = g_slc;
        p->gates[3 * i + 2] = g_swa;
    }
}

oracle_problem tu_problem_oracle_view(const tu_problem *p)
{
    oracle_problem op;
    op.cfg = p->cfg;
    op.num_seqs = p->num_seqs;
    op.total_tokens = p->total_tokens;
    op.cu_seqlens = p->cu_seqlens;
    op.q = p->q;
    op.k = p->k;
    op.v = p->v;
    op.gates = p->gates;
    op.cmp_k = p->cmp_k;
    op.cmp_v = p->cmp_v;
    return op;
}

int64_t tu_out_elems(const tu_problem *p)
{
    return p->total_tokens * p->cfg.num_q_heads * p->cfg.head_dim_v;
}

int64_t tu_indices_elems(const tu_problem *p)
{
    return p->total_tokens * p->cfg.num_kv_heads * p->cfg.sel_count;
}

int64_t tu_token_sequence(const tu_problem *p, int64_t token, int64_t *t)
{
    for (int64_t b = 0; b < p->num_seqs; b++) {
        if (p->cu_seqlens[b + 1] > token) {
            if (t)
                *t = token - p->cu_seqlens[b];
            return b;
        }
    }
    return -1;
}

void tu_random_indices(tu_rng *r, const tu_problem *p, int32_t *indices)
{
    const nsa_config *cfg = &p->cfg;
    const int64_t n = cfg->sel_count;
    int32_t *pool = NULL;
    int64_t pool_cap = 0;

    for (int64_t tok = 0; tok < p->total_tokens; tok++) {
        int64_t b = tu_token_sequence(p, tok, NULL);
        int64_t len = p->cu_seqlens[b + 1] - p->cu_seqlens[b];
        int64_t nb = oracle_num_blocks(cfg, len);
        if (nb > pool_cap) {
            free(pool);
            pool = tu_xcalloc((size_t)nb, sizeof(int32_t));
            pool_cap = nb;
        }
        for (int64_t h = 0; h < cfg->num_kv_heads; h++) {
            int32_t *row = indices + (tok * cfg->num_kv_heads + h) * n;
            /* A random subset: shuffle all blocks, keep the first `used`,
             * then scatter them over the n slots with -1 in the rest. */
            for (int64_t j = 0; j < nb; j++)
                pool[j] = (int32_t)j;
            tu_shuffle_i32(r, pool, nb);
            int64_t used = tu_rng_int(r, 0, nb < n ? nb : n);
            for (int64_t slot = 0; slot < n; slot++)
                row[slot] = slot < used ? pool[slot] : -1;
            tu_shuffle_i32(r, row, n);
        }
    }
    free(pool);
}

/* ------------------------------------------------------------------------ */
/* The library                                                               */
/* ------------------------------------------------------------------------ */

static nsa_context *shared_ctx;

nsa_context *tu_context(void)
{
    if (!shared_ctx) {
        nsa_status st = nsa_context_create(NULL, &shared_ctx);
        if (st != NSA_SUCCESS) {
            print_error("nsa_context_create failed: %s\n", nsa_status_string(st));
            shared_ctx = NULL;
        }
    }
    return shared_ctx;
}

void tu_context_release(void)
{
    nsa_context_destroy(shared_ctx);
    shared_ctx = NULL;
}

nsa_status tu_library_forward(const tu_problem *p, const int32_t *given, float *out,
                              int32_t *indices)
{
    nsa_context *ctx = tu_context();
    if (!ctx)
        return NSA_ERROR_SYSTEM;
    return tu_library_forward_on(ctx, p, given, out, indices);
}

nsa_status tu_library_forward_on(nsa_context *ctx, const tu_problem *p, const int32_t *given,
                                 float *out, int32_t *indices)
{
    nsa_plan *plan = NULL;
    nsa_status st = nsa_plan_create(ctx, &p->cfg, &plan);
    if (st != NSA_SUCCESS) {
        print_error("nsa_plan_create: %s: %s\n", nsa_status_string(st),
                    nsa_context_last_error(ctx));
        return st;
    }
    nsa_batch batch = {p->num_seqs, p->total_tokens, p->cu_seqlens};
    if (given)
        st = nsa_forward_with_indices(plan, &batch, p->q, p->k, p->v, p->gates, &p->cmp_k,
                                      &p->cmp_v, given, out);
    else
        st = nsa_forward(plan, &batch, p->q, p->k, p->v, p->gates, &p->cmp_k, &p->cmp_v, out,
                         indices);
    if (st != NSA_SUCCESS)
        print_error("%s: %s: %s\n", given ? "nsa_forward_with_indices" : "nsa_forward",
                    nsa_status_string(st), nsa_context_last_error(ctx));
    nsa_plan_destroy(plan);
    return st;
}

/* ------------------------------------------------------------------------ */
/* Comparisons                                                               */
/* ------------------------------------------------------------------------ */

enum { MAX_REPORTED = 6 };

/* The comparison of all three element types; the values are read through
 * these accessors so one loop serves float and double arrays. */
typedef double (*element_reader)(const void *base, int64_t i);

static double read_f32(const void *base, int64_t i)
{
    return (double)((const float *)base)[i];
}

static double read_f64(const void *base, int64_t i)
{
    return ((const double *)base)[i];
}

static int64_t compare_elements(const char *what, const void *got, element_reader got_at,
                                const void *want, element_reader want_at, int64_t tokens,
                                int64_t heads, int64_t dim, tu_tol tol)
{
    int64_t bad = 0, n = tokens * heads * dim, worst_i = -1;
    double worst_ratio = 0.0;
    for (int64_t i = 0; i < n; i++) {
        double g = got_at(got, i), w = want_at(want, i);
        double bound = tol.atol + tol.rtol * fabs(w);
        double err = fabs(g - w);
        int ok = err <= bound; /* false for NaN */
        double ratio = ok ? err / bound : INFINITY;
        if (ratio > worst_ratio || worst_i < 0) {
            worst_ratio = ratio;
            worst_i = i;
        }
        if (ok)
            continue;
        if (bad < MAX_REPORTED)
            print_error("%s: token %" PRId64 " head %" PRId64 " channel %" PRId64
                        ": got %.9g want %.9g "
                        "(|diff| %.3g > bound %.3g)\n",
                        what, i / (heads * dim), (i / dim) % heads, i % dim, g, w, err, bound);
        bad++;
    }
    if (bad > 0)
        print_error("%s: %" PRId64 " of %" PRId64
                    " elements out of tolerance (atol %.1e, rtol %.1e); "
                    "NSA_TEST_SEED=%" PRIu64 "\n",
                    what, bad, n, tol.atol, tol.rtol, tu_base_seed());
    return bad;
}

int64_t tu_compare_f32_f64(const char *what, const float *got, const double *want, int64_t tokens,
                           int64_t heads, int64_t dim, tu_tol tol)
{
    return compare_elements(what, got, read_f32, want, read_f64, tokens, heads, dim, tol);
}

int64_t tu_compare_f64_f64(const char *what, const double *got, const double *want, int64_t tokens,
                           int64_t heads, int64_t dim, tu_tol tol)
{
    return compare_elements(what, got, read_f64, want, read_f64, tokens, heads, dim, tol);
}

int64_t tu_compare_f32_f32(const char *what, const float *got, const float *want, int64_t tokens,
                           int64_t heads, int64_t dim, tu_tol tol)
{
    return compare_elements(what, got, read_f32, want, read_f32, tokens, heads, dim, tol);
}

/* ------------------------------------------------------------------------ */
/* Expected outputs, given the library's selections                          */
/* ------------------------------------------------------------------------ */

/* Whether a library selection row is one the spec could produce under some
 * rounding of the scores: the right count, ascending, -1 only at the end,
 * candidates only, every forced block present. Checked before the scores
 * are read, so an out-of-range block cannot index them. */
static int selection_is_plausible(const nsa_config *cfg, int64_t len, int64_t t, const int32_t *row)
{
    const int64_t n = cfg->sel_count;
    const int64_t want = oracle_num_selected(cfg, len, t);
    const int64_t ncand = oracle_num_candidates(cfg, len, t);
    for (int64_t j = 0; j < n; j++) {
        if (j >= want) {
            if (row[j] != -1)
                return 0;
            continue;
        }
        if (row[j] < 0 || row[j] >= ncand || (j > 0 && row[j] <= row[j - 1]))
            return 0;
    }
    for (int64_t blk = 0; blk < ncand; blk++) {
        if (!oracle_block_is_forced(cfg, t, blk))
            continue;
        int found = 0;
        for (int64_t j = 0; j < want; j++)
            found |= row[j] == blk;
        if (!found)
            return 0;
    }
    return 1;
}

/* Whether the blocks on which two selections differ all score within the
 * near-tie margin of one another, so that float rounding of the scores
 * explains the difference. */
static int difference_is_near_tie(const oracle_state *s, int64_t token, int64_t h, int64_t len,
                                  const nsa_config *cfg, const int32_t *got, const int32_t *want)
{
    const int64_t n = cfg->sel_count;
    double *score = tu_xcalloc((size_t)oracle_num_blocks(cfg, len) + 1, sizeof(double));
    int ok = oracle_block_scores(s, token, h, score) >= 0;
    for (int64_t i = 0; ok && i < n; i++) {
        for (int64_t j = 0; ok && j < n; j++) {
            int32_t a = got[i], b = want[j];
            if (a < 0 || b < 0)
                continue;
            int a_in_want = 0, b_in_got = 0;
            for (int64_t x = 0; x < n; x++) {
                a_in_want |= want[x] == a;
                b_in_got |= got[x] == b;
            }
            if (a_in_want || b_in_got)
                continue; /* only the swapped blocks matter */
            double mag = fmax(fabs(score[a]), fabs(score[b]));
            ok = fabs(score[a] - score[b]) <= TU_NEAR_TIE_MARGIN * mag;
        }
    }
    free(score);
    return ok;
}

static void print_row_mismatch(const char *name, int64_t token, int64_t t, int64_t h,
                               const int32_t *got, const int32_t *want, int64_t n, double margin)
{
    char g[512] = "", w[512] = "";
    for (int64_t j = 0; j < n; j++) {
        size_t gl = strlen(g), wl = strlen(w);
        snprintf(g + gl, sizeof(g) - gl, " %d", got[j]);
        snprintf(w + wl, sizeof(w) - wl, " %d", want[j]);
    }
    print_error("%s: token %" PRId64 " (position %" PRId64 ") KV head %" PRId64
                ": library blocks [%s ], oracle [%s ] "
                "(margin %.3g)\n",
                name, token, t, h, g, w, margin);
}

/* The expected outputs of the whole batch, with the oracle's own selection
 * checked against the library's indices row by row. */
void tu_oracle_expected(const char *what, const tu_problem *p, const oracle_state *s,
                        const int32_t *lib_idx, double *o, double *o_cmp, double *o_slc,
                        double *o_swa, int64_t *near_ties, int64_t *errors)
{
    const nsa_config *cfg = &p->cfg;
    const int64_t hkv = cfg->num_kv_heads, n = cfg->sel_count;
    const int64_t row = (int64_t)cfg->num_q_heads * cfg->head_dim_v;
    int32_t *idx = tu_xcalloc((size_t)(hkv * n), sizeof(int32_t));
    double *margin = tu_xcalloc((size_t)hkv, sizeof(double));

    for (int64_t tok = 0; tok < p->total_tokens; tok++) {
        int64_t t = 0;
        int64_t b = tu_token_sequence(p, tok, &t);
        int64_t len = p->cu_seqlens[b + 1] - p->cu_seqlens[b];
        const int32_t *lib = lib_idx + tok * hkv * n;
        double *to = o ? o + tok * row : NULL;
        double *tc = o_cmp ? o_cmp + tok * row : NULL;
        double *ts = o_slc ? o_slc + tok * row : NULL;
        double *tw = o_swa ? o_swa + tok * row : NULL;
        oracle_token(s, tok, NULL, to, tc, ts, tw, idx, margin);
        int differs = 0;
        for (int64_t h = 0; h < hkv; h++) {
            if (!memcmp(lib + h * n, idx + h * n, (size_t)n * sizeof(int32_t)))
                continue;
            differs = 1;
            if (margin[h] < TU_NEAR_TIE_MARGIN &&
                selection_is_plausible(cfg, len, t, lib + h * n) &&
                difference_is_near_tie(s, tok, h, len, cfg, lib + h * n, idx + h * n)) {
                (*near_ties)++;
                continue;
            }
            if (*errors < 6)
                print_row_mismatch(what, tok, t, h, lib + h * n, idx + h * n, n, margin[h]);
            (*errors)++;
        }
        /* Expect the output the library's own blocks give, so the selected
         * branch is still checked at a near-tie. */
        if (differs)
            oracle_token(s, tok, lib, to, tc, ts, tw, NULL, NULL);
    }
    free(idx);
    free(margin);
}

int tu_all_finite(const float *x, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        if (!isfinite(x[i]))
            return 0;
    return 1;
}

const char *tu_describe_config(const nsa_config *cfg, char *buf, size_t size)
{
    static const char *const kinds[] = {"mean", "weighted", "linear", "mlp"};
    unsigned kind = (unsigned)cfg->compress;
    snprintf(buf, size,
             "Hq=%d Hkv=%d Dk=%d Dv=%d l=%d d=%d l'=%d n=%d n_init=%d "
             "n_local=%d w=%d causal=%d phi=%s M=%d scale=%g",
             cfg->num_q_heads, cfg->num_kv_heads, cfg->head_dim_qk, cfg->head_dim_v, cfg->cmp_block,
             cfg->cmp_stride, cfg->sel_block, cfg->sel_count, cfg->sel_init, cfg->sel_local,
             cfg->window, cfg->causal, kind < 4 ? kinds[kind] : "?", cfg->cmp_mlp_hidden,
             (double)cfg->scale);
    return buf;
}
