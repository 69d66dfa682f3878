/* SPDX-License-Identifier: MIT */
/*
 * test_util.h — helpers shared by the cmocka tests: a seeded random source,
 * random NSA problems with their allocations, calls into the library the way
 * a user makes them, and element-wise comparisons against a tolerance table.
 *
 * Every run draws fresh inputs. The base seed comes from the clock unless
 * NSA_TEST_SEED is set; it is printed at start and in every failure message,
 * so any failure can be replayed with NSA_TEST_SEED=<seed>. Each test mixes
 * its own name into the base seed, so one test replays the same way whether
 * it runs alone or with the others.
 */
#ifndef NSA_TESTS_TEST_UTIL_H
#define NSA_TESTS_TEST_UTIL_H

#include <stddef.h>
#include <stdint.h>

#include "nsa.h"
#include "oracle.h"

/* ------------------------------------------------------------------------ */
/* Tolerances                                                                */
/* ------------------------------------------------------------------------ */

/* An element passes when |got - want| <= atol + rtol * |want| (NaN never
 * passes). The inputs the helpers draw are O(1) (|q| <= 2, |k|, |v| <= 1,
 * gates in [0, 1], compression weights scaled to keep compressed tokens
 * O(1)), so the outputs are O(1) and absolute bounds are meaningful. */
typedef struct tu_tol {
    double atol, rtol;
} tu_tol;

/* The table. Observed worst cases (reference and AVX2 kernels, many seeds) are
 * given with each bound; each bound leaves at least a tenfold margin over them
 * yet stays far below what any indexing mistake costs: one key too many or too
 * few moves an output by about |v - o| / (keys attended), at least ~5e-4 for
 * the sizes the tests use, and a wrong compressed token or block far more. */

/* fp32 library against the double oracle: fp32 rounding of softmaxes over up
 * to a few thousand keys and of compressions over l*D products (observed
 * <= 5e-7). */
#define TU_TOL_LIBRARY_VS_ORACLE ((tu_tol){1e-5, 1e-5})

/* The library against itself on the same data laid out differently (a
 * sequence alone or in a batch, indices permuted): only the summation order
 * may change. */
#define TU_TOL_LIBRARY_VS_LIBRARY ((tu_tol){1e-6, 0.0})

/* The double oracle against the golden data, whose softmax was rounded to
 * float32 (README: agreement to about 1e-6 absolute; observed <= 3.5e-7). */
#define TU_TOL_ORACLE_VS_GOLDEN ((tu_tol){2e-6, 2e-6})

/* The fp32 library against the golden data: the golden rounding plus the
 * library's own (observed <= 8e-7). */
#define TU_TOL_LIBRARY_VS_GOLDEN ((tu_tol){1e-5, 1e-5})

/* The oracle's selection margin below which a different choice by a float
 * implementation counts as a near-tie and not as an error: fp32 block scores
 * carry a relative rounding error of about 1e-6. */
#define TU_NEAR_TIE_MARGIN 1e-5

/* ------------------------------------------------------------------------ */
/* Seeds and random numbers                                                  */
/* ------------------------------------------------------------------------ */

/* The base seed of this process (NSA_TEST_SEED, else the clock). */
uint64_t tu_base_seed(void);

/* Prints the base seed and how to replay it; call once from main. */
void tu_announce_seed(const char *program);

typedef struct tu_rng {
    uint64_t state;
} tu_rng;

/* A generator for one test: the base seed mixed with the test's name. */
tu_rng tu_rng_for(const char *test_name);

uint64_t tu_rng_next(tu_rng *r);
double tu_rng_uniform(tu_rng *r, double lo, double hi);
/* Uniform integer in [lo, hi]. */
int64_t tu_rng_int(tu_rng *r, int64_t lo, int64_t hi);
void tu_fill_uniform(tu_rng *r, float *x, int64_t n, double lo, double hi);
/* Fisher-Yates shuffle of n int32 values. */
void tu_shuffle_i32(tu_rng *r, int32_t *x, int64_t n);

/* ------------------------------------------------------------------------ */
/* Random problems                                                           */
/* ------------------------------------------------------------------------ */

/* Every buffer of one forward problem, owned here. */
typedef struct tu_problem {
    nsa_config cfg;
    int64_t num_seqs, total_tokens;
    int64_t *cu_seqlens;
    float *q, *k, *v, *gates;
    float *param_buf[2][5]; /* [K, V][pe, a, w, w1, w2] owners */
    nsa_compress_params cmp_k, cmp_v;
} tu_problem;

/* Fills p with random data for cfg and the given sequence lengths: q, k, v,
 * gates, and the compression parameters cfg->compress needs, for K and V
 * separately; pe_k / pe_v add position encodings. Returns 0, or -1 when out
 * of memory (p is then empty). */
int tu_problem_init(tu_problem *p, const nsa_config *cfg, const int64_t *lengths, int64_t num_seqs,
                    int pe_k, int pe_v, tu_rng *rng);
void tu_problem_free(tu_problem *p);

/* Sets every gate of every token and head to (g_cmp, g_slc, g_swa). */
void tu_problem_set_gates(tu_problem *p, float g_cmp, float g_slc, float g_swa);

/* The oracle's view of p (pointers into p). */
oracle_problem tu_problem_oracle_view(const tu_problem *p);

/* Element counts of the outputs. */
int64_t tu_out_elems(const tu_problem *p);     /* T * Hq * Dv */
int64_t tu_indices_elems(const tu_problem *p); /* T * Hkv * n */

/* Which sequence token belongs to, and its local position. */
int64_t tu_token_sequence(const tu_problem *p, int64_t token, int64_t *t);

/* Random valid caller-given indices [T][Hkv][n] for
 * nsa_forward_with_indices: for each (token, KV head) a random number of
 * distinct blocks of the token's sequence (blocks after the query included),
 * in random slots, the others -1. */
void tu_random_indices(tu_rng *r, const tu_problem *p, int32_t *indices);

/* Allocation that fails the running test instead of returning NULL. */
void *tu_xcalloc(size_t count, size_t size);

/* ------------------------------------------------------------------------ */
/* The library, used as a user would                                          */
/* ------------------------------------------------------------------------ */

/* A process-wide context from nsa_context_create(NULL, ...); NULL when it
 * could not be created (the message is printed). */
nsa_context *tu_context(void);
void tu_context_release(void);

/* Creates a plan for p->cfg and runs nsa_forward (given == NULL) or
 * nsa_forward_with_indices. out: [T][Hq][Dv]; indices: [T][Hkv][n] or NULL
 * (nsa_forward only). On failure prints the status and the context's last
 * error. */
nsa_status tu_library_forward(const tu_problem *p, const int32_t *given, float *out,
                              int32_t *indices);

/* tu_library_forward on a given context. */
nsa_status tu_library_forward_on(nsa_context *ctx, const tu_problem *p, const int32_t *given,
                                 float *out, int32_t *indices);

/* ------------------------------------------------------------------------ */
/* Comparisons                                                               */
/* ------------------------------------------------------------------------ */

/* Element-wise comparison of [tokens][heads][dim] arrays. Prints the first
 * few failures as (token, head, channel), got, want and the bound, and the
 * largest error seen. Returns the number of elements out of tolerance. */
int64_t tu_compare_f32_f64(const char *what, const float *got, const double *want, int64_t tokens,
                           int64_t heads, int64_t dim, tu_tol tol);
int64_t tu_compare_f64_f64(const char *what, const double *got, const double *want, int64_t tokens,
                           int64_t heads, int64_t dim, tu_tol tol);
int64_t tu_compare_f32_f32(const char *what, const float *got, const float *want, int64_t tokens,
                           int64_t heads, int64_t dim, tu_tol tol);

/* The oracle's expected outputs for the whole batch (each array [T][Hq][Dv]
 * or NULL), checked against the library's block indices lib_idx
 * [T][Hkv][n]: where a row differs from the oracle's selection and the
 * oracle's margin is below TU_NEAR_TIE_MARGIN and the library's row is a
 * valid selection, it counts in *near_ties and that token's expected outputs
 * are recomputed with the library's blocks; any other difference is printed
 * (labelled `what`) and counted in *errors. */
void tu_oracle_expected(const char *what, const tu_problem *p, const oracle_state *s,
                        const int32_t *lib_idx, double *o, double *o_cmp, double *o_slc,
                        double *o_swa, int64_t *near_ties, int64_t *errors);

/* 1 when every element of x is finite. */
int tu_all_finite(const float *x, int64_t n);

/* A short text naming a configuration, for messages. buf of >= 256 bytes. */
const char *tu_describe_config(const nsa_config *cfg, char *buf, size_t size);

#endif /* NSA_TESTS_TEST_UTIL_H */
