/* SPDX-License-Identifier: MIT */
/*
 * test_api.c — cmocka tests of the contract that include/nsa.h promises.
 *
 * This file exists to pin down the public API's behaviour at its edges rather
 * than the numerics of the attention itself: every documented error is
 * returned with the exact status, leaves a message in
 * nsa_context_last_error() that names the argument at fault, and writes
 * nothing to any output; the documented valid edge cases (empty batches,
 * zero-length sequences, a single token) succeed and write every output;
 * the few numeric promises the header makes outright hold (block indices
 * sorted and padded, caller-given blocks, the same bits on any thread
 * count); and the small contract functions (status strings, version,
 * defaults, plan accessors) do what the header says.
 *
 * Every output buffer is allocated with its exact size, so a run under
 * AddressSanitizer or valgrind also catches writes past the end, and is
 * pre-filled with a sentinel byte so a failing call that wrote anything is
 * caught. The configuration is tiny (Hq=4, Hkv=2, Dk=8, Dv=6, l=4, d=2, l'=8,
 * n=4, w=5) so the whole file runs in milliseconds.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <ctype.h>
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "nsa.h"

/* ------------------------------------------------------------------------ */
/* The small configuration every test starts from                          */
/* ------------------------------------------------------------------------ */

enum {
    TEST_Q_HEADS = 4,
    TEST_KV_HEADS = 2,
    TEST_DIM_QK = 8,
    TEST_DIM_V = 6,
    TEST_CMP_BLOCK = 4,  /* l  */
    TEST_CMP_STRIDE = 2, /* d  */
    TEST_SEL_BLOCK = 8,  /* l' */
    TEST_SEL_COUNT = 4,  /* n: one block chosen by score besides 3 forced */
    TEST_SEL_INIT = 1,
    TEST_SEL_LOCAL = 2,
    TEST_WINDOW = 5,
    TEST_THREADS = 2,
    MAX_TEST_SEQS = 8
};

/* Every byte of an output buffer holds this before a call. */
#define SENTINEL_BYTE 0xA5

static void make_small_config(nsa_config *cfg)
{
    assert_int_equal(nsa_config_init(cfg, TEST_Q_HEADS, TEST_KV_HEADS,
                                     TEST_DIM_QK, TEST_DIM_V),
                     NSA_SUCCESS);
    cfg->cmp_block = TEST_CMP_BLOCK;
    cfg->cmp_stride = TEST_CMP_STRIDE;
    cfg->sel_block = TEST_SEL_BLOCK;
    cfg->sel_count = TEST_SEL_COUNT;
    cfg->sel_init = TEST_SEL_INIT;
    cfg->sel_local = TEST_SEL_LOCAL;
    cfg->window = TEST_WINDOW;
}

/* ------------------------------------------------------------------------ */
/* Assertions                                                                */
/* ------------------------------------------------------------------------ */

/* Compares two statuses and prints both names when they differ. */
#define assert_status(actual, expected)                                        \
    do {                                                                       \
        nsa_status actual_status_ = (actual);                                  \
        nsa_status expected_status_ = (expected);                              \
        if (actual_status_ != expected_status_) {                              \
            fail_msg("status %d (%s), expected %d (%s)", (int)actual_status_,  \
                     nsa_status_string(actual_status_),                        \
                     (int)expected_status_,                                    \
                     nsa_status_string(expected_status_));                     \
        }                                                                      \
    } while (0)

static bool is_identifier_char(char c)
{
    return isalnum((unsigned char)c) || c == '_';
}

/* True when name occurs in message as a whole identifier, so that "q" is
 * found in "q is NULL" or "q[3]" but not in "sequence". */
static bool message_names(const char *message, const char *name)
{
    size_t length = strlen(name);
    for (const char *hit = strstr(message, name); hit != NULL;
         hit = strstr(hit + 1, name)) {
        bool starts_word = hit == message || !is_identifier_char(hit[-1]);
        bool ends_word = !is_identifier_char(hit[length]);
        if (starts_word && ends_word) {
            return true;
        }
    }
    return false;
}

/* The context's last error is non-empty and names the given identifier. */
static void expect_error_names(const nsa_context *ctx, const char *name)
{
    const char *message = nsa_context_last_error(ctx);
    assert_non_null(message);
    if (message[0] == '\0') {
        fail_msg("last error is empty; expected it to name '%s'", name);
    }
    if (!message_names(message, name)) {
        fail_msg("last error \"%s\" does not name '%s'", message, name);
    }
}

static bool bytes_all_equal(const void *buffer, size_t size, unsigned char byte)
{
    const unsigned char *bytes = buffer;
    for (size_t i = 0; i < size; i++) {
        if (bytes[i] != byte) {
            return false;
        }
    }
    return true;
}

static float absolute(float x)
{
    return x < 0.0f ? -x : x;
}

/* ------------------------------------------------------------------------ */
/* The fixture: a context, a plan, a batch and exactly sized buffers        */
/* ------------------------------------------------------------------------ */

typedef enum call_kind { CALL_FORWARD, CALL_FORWARD_WITH_INDICES } call_kind;

/* The arguments of the next nsa_forward / nsa_forward_with_indices call.
 * Tests start from valid ones and break exactly one thing. */
typedef struct forward_call {
    call_kind kind;
    const nsa_plan *plan;
    const nsa_batch *batch;
    const float *q;
    const float *k;
    const float *v;
    const float *gates;
    const nsa_compress_params *cmp_k;
    const nsa_compress_params *cmp_v;
    const int32_t *block_indices; /* input of nsa_forward_with_indices */
    float *out;
    int32_t *block_indices_out; /* output of nsa_forward */
} forward_call;

/* The parameters of phi for K or for V, allocated for every kind. */
typedef struct phi_buffers {
    float *pe;
    float *a;
    float *w;
    float *w1;
    float *w2;
} phi_buffers;

typedef struct fixture {
    nsa_context *ctx;
    nsa_config cfg; /* the configuration plan was made from */
    nsa_plan *plan;

    int64_t cu_seqlens[MAX_TEST_SEQS + 1];
    nsa_batch batch;

    /* Owned buffers, each of exactly the size its tensor has for the
     * number of tokens use_batch_with_buffers_for was given. */
    float *q;
    float *k;
    float *v;
    float *gates;
    float *out;
    int32_t *block_indices_in;
    int32_t *block_indices_out;
    size_t out_bytes;
    size_t block_indices_out_bytes;

    phi_buffers phi_k;
    phi_buffers phi_v;
    nsa_compress_params params_k; /* the pointers the plan's kind needs */
    nsa_compress_params params_v;

    forward_call call;
} fixture;

static void *alloc_exact(size_t bytes)
{
    void *buffer = malloc(bytes);
    if (bytes > 0) {
        assert_non_null(buffer);
    }
    return buffer;
}

static size_t element_count(int64_t a, int64_t b, int64_t c)
{
    return (size_t)a * (size_t)b * (size_t)c;
}

/* Small deterministic values in [-0.5, 0.5). */
static void fill_pseudo_random(float *values, size_t count, uint32_t seed)
{
    for (size_t i = 0; i < count; i++) {
        seed = seed * 1664525u + 1013904223u;
        values[i] = (float)(seed >> 8) / 16777216.0f - 0.5f;
    }
}

static void fill_constant(float *values, size_t count, float value)
{
    for (size_t i = 0; i < count; i++) {
        values[i] = value;
    }
}

static void free_tensors(fixture *fx)
{
    free(fx->q);
    free(fx->k);
    free(fx->v);
    free(fx->gates);
    free(fx->out);
    free(fx->block_indices_in);
    free(fx->block_indices_out);
    fx->q = fx->k = fx->v = fx->gates = fx->out = NULL;
    fx->block_indices_in = fx->block_indices_out = NULL;
}

static void free_phi(phi_buffers *phi)
{
    free(phi->pe);
    free(phi->a);
    free(phi->w);
    free(phi->w1);
    free(phi->w2);
    memset(phi, 0, sizeof *phi);
}

/* Allocates every phi parameter of one side (K: dim = Dk, V: dim = Dv). */
static void alloc_phi(phi_buffers *phi, const nsa_config *cfg, int64_t dim)
{
    int64_t heads = cfg->num_kv_heads;
    int64_t block = cfg->cmp_block;
    int64_t hidden = cfg->cmp_mlp_hidden;
    size_t a_count = element_count(heads, block, 1);
    size_t pe_count = element_count(heads, block, dim);
    size_t w_count = element_count(heads, block * dim, dim);
    size_t w1_count = element_count(heads, block * dim, hidden);
    size_t w2_count = element_count(heads, hidden, dim);

    phi->pe = alloc_exact(pe_count * sizeof(float));
    phi->a = alloc_exact(a_count * sizeof(float));
    phi->w = alloc_exact(w_count * sizeof(float));
    phi->w1 = alloc_exact(w1_count * sizeof(float));
    phi->w2 = alloc_exact(w2_count * sizeof(float));
    fill_pseudo_random(phi->pe, pe_count, 11);
    fill_constant(phi->a, a_count, 1.0f / (float)block);
    fill_pseudo_random(phi->w, w_count, 12);
    fill_pseudo_random(phi->w1, w1_count, 13);
    fill_pseudo_random(phi->w2, w2_count, 14);
}

/* Exactly the pointers the header's table requires for kind, pe left NULL. */
static nsa_compress_params required_params(nsa_compress_kind kind,
                                           const phi_buffers *phi)
{
    nsa_compress_params params = {0};
    switch (kind) {
    case NSA_COMPRESS_MEAN:
        break;
    case NSA_COMPRESS_WEIGHTED:
        params.a = phi->a;
        break;
    case NSA_COMPRESS_LINEAR:
        params.w = phi->w;
        break;
    case NSA_COMPRESS_MLP:
        params.w1 = phi->w1;
        params.w2 = phi->w2;
        break;
    }
    return params;
}

/* Points every argument of the next call at the fixture's valid state. For
 * the mean kind the phi parameter structs are NULL, as the header allows. */
static void reset_call(fixture *fx)
{
    bool needs_params = fx->cfg.compress != NSA_COMPRESS_MEAN;
    fx->call = (forward_call){
        .kind = CALL_FORWARD,
        .plan = fx->plan,
        .batch = &fx->batch,
        .q = fx->q,
        .k = fx->k,
        .v = fx->v,
        .gates = fx->gates,
        .cmp_k = needs_params ? &fx->params_k : NULL,
        .cmp_v = needs_params ? &fx->params_v : NULL,
        .block_indices = fx->block_indices_in,
        .out = fx->out,
        .block_indices_out = fx->block_indices_out,
    };
}

/* Fills the outputs with the sentinel again. */
static void reset_outputs(fixture *fx)
{
    if (fx->out_bytes > 0) {
        memset(fx->out, SENTINEL_BYTE, fx->out_bytes);
    }
    if (fx->block_indices_out_bytes > 0) {
        memset(fx->block_indices_out, SENTINEL_BYTE,
               fx->block_indices_out_bytes);
    }
}

/* Makes the batch (B sequences, T tokens, cu_seqlens copied; NULL stays
 * NULL) and buffers holding exactly buffer_tokens tokens for it. */
static void use_batch_with_buffers_for(fixture *fx, int64_t num_seqs,
                                       int64_t total_tokens,
                                       const int64_t *cu_seqlens,
                                       int64_t buffer_tokens)
{
    const nsa_config *cfg = &fx->cfg;
    int64_t entries = num_seqs >= 0 ? num_seqs + 1 : 1;
    assert_true(entries <= MAX_TEST_SEQS + 1);
    if (cu_seqlens != NULL) {
        memcpy(fx->cu_seqlens, cu_seqlens, (size_t)entries * sizeof(int64_t));
    }
    fx->batch.num_seqs = num_seqs;
    fx->batch.total_tokens = total_tokens;
    fx->batch.cu_seqlens = cu_seqlens != NULL ? fx->cu_seqlens : NULL;

    free_tensors(fx);
    const int64_t tokens = buffer_tokens;
    size_t q_count = element_count(tokens, cfg->num_q_heads, cfg->head_dim_qk);
    size_t k_count = element_count(tokens, cfg->num_kv_heads, cfg->head_dim_qk);
    size_t v_count = element_count(tokens, cfg->num_kv_heads, cfg->head_dim_v);
    size_t gate_count = element_count(tokens, cfg->num_q_heads, 3);
    size_t index_count = element_count(tokens, cfg->num_kv_heads, cfg->sel_count);

    fx->q = alloc_exact(q_count * sizeof(float));
    fx->k = alloc_exact(k_count * sizeof(float));
    fx->v = alloc_exact(v_count * sizeof(float));
    fx->gates = alloc_exact(gate_count * sizeof(float));
    fx->out_bytes = element_count(tokens, cfg->num_q_heads, cfg->head_dim_v) *
                    sizeof(float);
    fx->out = alloc_exact(fx->out_bytes);
    fx->block_indices_out_bytes = index_count * sizeof(int32_t);
    fx->block_indices_out = alloc_exact(fx->block_indices_out_bytes);
    fx->block_indices_in = alloc_exact(index_count * sizeof(int32_t));

    fill_pseudo_random(fx->q, q_count, 1);
    fill_pseudo_random(fx->k, k_count, 2);
    fill_pseudo_random(fx->v, v_count, 3);
    fill_constant(fx->gates, gate_count, 1.0f / 3.0f);
    for (size_t i = 0; i < index_count; i++) {
        fx->block_indices_in[i] = -1;
    }
    reset_outputs(fx);
    reset_call(fx);
}

static void use_batch(fixture *fx, int64_t num_seqs, int64_t total_tokens,
                      const int64_t *cu_seqlens)
{
    use_batch_with_buffers_for(fx, num_seqs, total_tokens, cu_seqlens,
                               total_tokens);
}

/* The batch most tests break one thing of: a 40-token sequence (5 selection
 * blocks, so top-n has a real choice) and a 3-token one. */
static const int64_t DEFAULT_CU_SEQLENS[] = {0, 40, 43};

static void use_default_batch(fixture *fx)
{
    use_batch(fx, 2, 43, DEFAULT_CU_SEQLENS);
}

/* Replaces the plan by one made from cfg, with phi parameters for its kind,
 * and makes the default batch with buffers of the new shapes. */
static void use_config(fixture *fx, const nsa_config *cfg)
{
    nsa_plan_destroy(fx->plan);
    fx->plan = NULL;
    free_phi(&fx->phi_k);
    free_phi(&fx->phi_v);

    nsa_status status = nsa_plan_create(fx->ctx, cfg, &fx->plan);
    if (status != NSA_SUCCESS) {
        fail_msg("nsa_plan_create: %s: %s", nsa_status_string(status),
                 nsa_context_last_error(fx->ctx));
    }
    fx->cfg = *cfg;
    alloc_phi(&fx->phi_k, cfg, cfg->head_dim_qk);
    alloc_phi(&fx->phi_v, cfg, cfg->head_dim_v);
    fx->params_k = required_params(cfg->compress, &fx->phi_k);
    fx->params_v = required_params(cfg->compress, &fx->phi_v);
    use_default_batch(fx);
}

static void use_compress_kind(fixture *fx, nsa_compress_kind kind)
{
    nsa_config cfg;
    make_small_config(&cfg);
    cfg.compress = kind;
    use_config(fx, &cfg);
}

static int setup_fixture(void **state)
{
    fixture *fx = calloc(1, sizeof *fx);
    assert_non_null(fx);
    nsa_context_options opts;
    nsa_context_options_init(&opts);
    opts.num_threads = TEST_THREADS;
    opts.bind_threads = 0; /* tests may run beside each other */
    opts.verbose = 0;
    assert_status(nsa_context_create(&opts, &fx->ctx), NSA_SUCCESS);

    nsa_config cfg;
    make_small_config(&cfg);
    use_config(fx, &cfg);
    *state = fx;
    return 0;
}

static int teardown_fixture(void **state)
{
    fixture *fx = *state;
    free_tensors(fx);
    free_phi(&fx->phi_k);
    free_phi(&fx->phi_v);
    nsa_plan_destroy(fx->plan);
    nsa_context_destroy(fx->ctx);
    free(fx);
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Running a call and checking what it did                                  */
/* ------------------------------------------------------------------------ */

static nsa_status run_call(const fixture *fx)
{
    const forward_call *c = &fx->call;
    if (c->kind == CALL_FORWARD_WITH_INDICES) {
        return nsa_forward_with_indices(c->plan, c->batch, c->q, c->k, c->v,
                                        c->gates, c->cmp_k, c->cmp_v,
                                        c->block_indices, c->out);
    }
    return nsa_forward(c->plan, c->batch, c->q, c->k, c->v, c->gates,
                       c->cmp_k, c->cmp_v, c->out, c->block_indices_out);
}

static void expect_outputs_untouched(const fixture *fx)
{
    if (!bytes_all_equal(fx->out, fx->out_bytes, SENTINEL_BYTE)) {
        fail_msg("a failing call wrote to out");
    }
    if (!bytes_all_equal(fx->block_indices_out, fx->block_indices_out_bytes,
                         SENTINEL_BYTE)) {
        fail_msg("a failing call wrote to block_indices_out");
    }
}

/* The call fails with expected, names name (NULL: the call cannot reach a
 * context, so no message is checked) and writes nothing. */
static void expect_call_fails(fixture *fx, nsa_status expected,
                              const char *name)
{
    assert_status(run_call(fx), expected);
    if (name != NULL) {
        expect_error_names(fx->ctx, name);
    }
    expect_outputs_untouched(fx);
}

/* Every element of out was written, and is finite. */
static void expect_out_fully_written(const fixture *fx)
{
    const unsigned char sentinel[sizeof(float)] = {
        SENTINEL_BYTE, SENTINEL_BYTE, SENTINEL_BYTE, SENTINEL_BYTE};
    size_t count = fx->out_bytes / sizeof(float);
    for (size_t i = 0; i < count; i++) {
        if (memcmp(&fx->out[i], sentinel, sizeof(float)) == 0) {
            fail_msg("out[%zu] was not written", i);
        }
        if (!isfinite(fx->out[i])) {
            fail_msg("out[%zu] = %g is not finite", i, (double)fx->out[i]);
        }
    }
}

static int64_t smaller(int64_t a, int64_t b)
{
    return a < b ? a : b;
}

static bool row_contains(const int32_t *row, int64_t count, int64_t block)
{
    for (int64_t slot = 0; slot < count; slot++) {
        if (row[slot] == block) {
            return true;
        }
    }
    return false;
}

/* block_indices_out of a causal call as the header and spec section 3 say:
 * sorted ascending, padded with -1, min(n, t/l' + 1) blocks, each a
 * candidate, the forced initial and local blocks among them. */
static void expect_causal_block_indices_well_formed(const fixture *fx)
{
    const nsa_config *cfg = &fx->cfg;
    for (int64_t seq = 0; seq < fx->batch.num_seqs; seq++) {
        int64_t start = fx->cu_seqlens[seq];
        for (int64_t token = start; token < fx->cu_seqlens[seq + 1]; token++) {
            int64_t current_block = (token - start) / cfg->sel_block;
            int64_t expected_count =
                smaller(cfg->sel_count, current_block + 1);
            for (int64_t head = 0; head < cfg->num_kv_heads; head++) {
                const int32_t *row =
                    fx->block_indices_out +
                    (token * cfg->num_kv_heads + head) * cfg->sel_count;
                int64_t count = 0;
                while (count < cfg->sel_count && row[count] != -1) {
                    count++;
                }
                if (count != expected_count) {
                    fail_msg("token %lld head %lld: %lld blocks, expected "
                             "%lld",
                             (long long)token, (long long)head,
                             (long long)count, (long long)expected_count);
                }
                for (int64_t slot = count; slot < cfg->sel_count; slot++) {
                    assert_int_equal(row[slot], -1);
                }
                for (int64_t slot = 0; slot < count; slot++) {
                    assert_in_range(row[slot], 0, current_block);
                    if (slot > 0) {
                        assert_true(row[slot - 1] < row[slot]);
                    }
                }
                for (int64_t block = 0; block <= current_block; block++) {
                    bool forced = block < cfg->sel_init ||
                                  block > current_block - cfg->sel_local;
                    if (forced && !row_contains(row, count, block)) {
                        fail_msg("token %lld head %lld: forced block %lld "
                                 "not selected",
                                 (long long)token, (long long)head,
                                 (long long)block);
                    }
                }
            }
        }
    }
}

static void expect_call_succeeds(fixture *fx)
{
    nsa_status status = run_call(fx);
    if (status != NSA_SUCCESS) {
        fail_msg("expected success, got %s: \"%s\"", nsa_status_string(status),
                 nsa_context_last_error(fx->ctx));
    }
    if (fx->call.out == fx->out) {
        expect_out_fully_written(fx);
    }
    if (fx->call.kind == CALL_FORWARD &&
        fx->call.block_indices_out == fx->block_indices_out &&
        fx->cfg.causal == 1) {
        expect_causal_block_indices_well_formed(fx);
    }
}

/* A placeholder that a failing create must overwrite with NULL. */
static char not_a_real_object;
#define STALE_POINTER ((void *)&not_a_real_object)

/* nsa_plan_create(cfg) fails with expected, names name, sets *plan = NULL. */
static void expect_plan_rejected(fixture *fx, const nsa_config *cfg,
                                 nsa_status expected, const char *name)
{
    nsa_plan *plan = STALE_POINTER;
    nsa_status status = nsa_plan_create(fx->ctx, cfg, &plan);
    if (status == NSA_SUCCESS) {
        nsa_plan_destroy(plan);
    }
    assert_status(status, expected);
    assert_null(plan);
    expect_error_names(fx->ctx, name);
}

/* One test per invalid configuration: start from the small valid config,
 * apply the change, and expect nsa_plan_create to refuse it. */
#define PLAN_REJECTS(test_name, change, expected_status, named_field)          \
    static void test_name(void **state)                                        \
    {                                                                          \
        nsa_config cfg;                                                        \
        make_small_config(&cfg);                                               \
        change;                                                                \
        expect_plan_rejected(*state, &cfg, expected_status, named_field);      \
    }

/* ------------------------------------------------------------------------ */
/* Status strings and version                                                */
/* ------------------------------------------------------------------------ */

static const nsa_status ALL_STATUSES[] = {
    NSA_SUCCESS,
    NSA_ERROR_NULL_POINTER,
    NSA_ERROR_INVALID_DIMENSION,
    NSA_ERROR_INVALID_HEADS,
    NSA_ERROR_INVALID_BLOCKS,
    NSA_ERROR_INVALID_SELECTION,
    NSA_ERROR_INVALID_SEQLENS,
    NSA_ERROR_INVALID_INDICES,
    NSA_ERROR_INVALID_ARGUMENT,
    NSA_ERROR_SIZE_OVERFLOW,
    NSA_ERROR_OUT_OF_MEMORY,
    NSA_ERROR_UNSUPPORTED,
    NSA_ERROR_SYSTEM,
    NSA_ERROR_INTERNAL,
    NSA_ERROR_CAPACITY,
    NSA_ERROR_MISMATCH,
};
#define STATUS_COUNT (sizeof ALL_STATUSES / sizeof ALL_STATUSES[0])

static void test_status_strings_are_non_empty_and_distinct(void **state)
{
    (void)state;
    for (size_t i = 0; i < STATUS_COUNT; i++) {
        const char *name = nsa_status_string(ALL_STATUSES[i]);
        assert_non_null(name);
        assert_true(name[0] != '\0');
        assert_string_not_equal(name, "unknown status");
        for (size_t j = 0; j < i; j++) {
            assert_string_not_equal(name, nsa_status_string(ALL_STATUSES[j]));
        }
    }
}

static void test_status_string_of_unknown_value(void **state)
{
    (void)state;
    assert_string_equal(nsa_status_string((nsa_status)16), "unknown status");
    assert_string_equal(nsa_status_string((nsa_status)1000),
                        "unknown status");
    assert_string_equal(nsa_status_string((nsa_status)-1), "unknown status");
}

static void test_version_matches_header(void **state)
{
    (void)state;
    assert_non_null(nsa_version());
    assert_string_equal(nsa_version(), NSA_VERSION_STRING);
}

/* ------------------------------------------------------------------------ */
/* Context                                                                   */
/* ------------------------------------------------------------------------ */

static void test_context_options_init_defaults(void **state)
{
    (void)state;
    nsa_context_options opts;
    memset(&opts, 0x5A, sizeof opts);
    nsa_context_options_init(&opts);
    assert_int_equal(opts.num_threads, 0);
    assert_int_equal(opts.bind_threads, 1);
    assert_int_equal(opts.verbose, -1);
    assert_int_equal(opts.spin_us, -1);
}

static void test_context_create_rejects_null_ctx(void **state)
{
    (void)state;
    assert_status(nsa_context_create(NULL, NULL), NSA_ERROR_NULL_POINTER);
}

static void test_context_create_rejects_negative_threads(void **state)
{
    (void)state;
    nsa_context_options opts;
    nsa_context_options_init(&opts);
    opts.num_threads = -1;
    opts.verbose = 0;
    nsa_context *ctx = STALE_POINTER;
    assert_status(nsa_context_create(&opts, &ctx),
                  NSA_ERROR_INVALID_ARGUMENT);
    assert_null(ctx);
}

static void test_context_create_rejects_bind_threads_two(void **state)
{
    (void)state;
    nsa_context_options opts;
    nsa_context_options_init(&opts);
    opts.bind_threads = 2;
    opts.verbose = 0;
    nsa_context *ctx = STALE_POINTER;
    assert_status(nsa_context_create(&opts, &ctx),
                  NSA_ERROR_INVALID_ARGUMENT);
    assert_null(ctx);
}

static void test_context_create_rejects_spin_out_of_range(void **state)
{
    (void)state;
    const int32_t bad[] = {-2, 1000001};
    for (int i = 0; i < 2; i++) {
        nsa_context_options opts;
        nsa_context_options_init(&opts);
        opts.spin_us = bad[i];
        opts.verbose = 0;
        nsa_context *ctx = STALE_POINTER;
        assert_status(nsa_context_create(&opts, &ctx), NSA_ERROR_INVALID_ARGUMENT);
        assert_null(ctx);
    }
}

/* Polling or not, with the caller bound or not, calls give the same bits. */
static void test_context_spin_settings_agree(void **state)
{
    (void)state;
    const int32_t spins[] = {0, 1000};
    float outs[2][4 * 2 * 8];
    for (int i = 0; i < 2; i++) {
        nsa_context_options opts;
        nsa_context_options_init(&opts);
        opts.num_threads = 3;
        opts.bind_threads = i;
        opts.spin_us = spins[i];
        opts.verbose = 0;
        nsa_context *ctx = NULL;
        assert_status(nsa_context_create(&opts, &ctx), NSA_SUCCESS);
        nsa_config cfg;
        nsa_config_init(&cfg, 4, 2, 8, 8);
        cfg.cmp_block = 4;
        cfg.cmp_stride = 2;
        cfg.sel_block = 4;
        cfg.sel_count = 4;
        cfg.window = 4;
        nsa_plan *plan = NULL;
        assert_status(nsa_plan_create(ctx, &cfg, &plan), NSA_SUCCESS);
        enum { T = 40 };
        static float q[T * 4 * 8], k[T * 2 * 8], v[T * 2 * 8], gates[T * 4 * 3];
        static float out[T * 4 * 8];
        for (int e = 0; e < T * 4 * 8; e++)
            q[e] = (float)((e * 37) % 19) / 19.0f - 0.5f;
        for (int e = 0; e < T * 2 * 8; e++) {
            k[e] = (float)((e * 11) % 23) / 23.0f - 0.5f;
            v[e] = (float)((e * 7) % 17) / 17.0f - 0.5f;
        }
        for (int e = 0; e < T * 4 * 3; e++)
            gates[e] = 0.5f;
        const int64_t cu[2] = {0, T};
        const nsa_batch batch = {.num_seqs = 1, .total_tokens = T, .cu_seqlens = cu};
        for (int call = 0; call < 3; call++) /* repeated: workers found polling */
            assert_status(nsa_forward(plan, &batch, q, k, v, gates, NULL, NULL, out, NULL),
                          NSA_SUCCESS);
        memcpy(outs[i], out + (T - 2) * 4 * 8, sizeof outs[i]);
        nsa_plan_destroy(plan);
        nsa_context_destroy(ctx);
    }
    assert_memory_equal(outs[0], outs[1], sizeof outs[0]);
}

static void test_context_with_default_options(void **state)
{
    (void)state;
    nsa_context *ctx = NULL;
    assert_status(nsa_context_create(NULL, &ctx), NSA_SUCCESS);
    assert_non_null(ctx);
    assert_true(nsa_context_num_threads(ctx) >= 1);
    assert_string_equal(nsa_context_last_error(ctx), "");
    nsa_context_destroy(ctx);
}

static void test_context_uses_requested_threads(void **state)
{
    fixture *fx = *state;
    assert_int_equal(nsa_context_num_threads(fx->ctx), TEST_THREADS);
}

static void test_last_error_of_null_context_is_empty(void **state)
{
    (void)state;
    assert_non_null(nsa_context_last_error(NULL));
    assert_string_equal(nsa_context_last_error(NULL), "");
}

static void test_destroy_null_is_a_no_op(void **state)
{
    (void)state;
    nsa_plan_destroy(NULL);
    nsa_context_destroy(NULL);
}

/* ------------------------------------------------------------------------ */
/* Configuration defaults                                                    */
/* ------------------------------------------------------------------------ */

static void test_config_init_rejects_null(void **state)
{
    (void)state;
    assert_status(nsa_config_init(NULL, 4, 2, 8, 6), NSA_ERROR_NULL_POINTER);
}

static void test_config_init_fills_paper_defaults(void **state)
{
    (void)state;
    nsa_config cfg;
    memset(&cfg, 0x5A, sizeof cfg);
    assert_status(nsa_config_init(&cfg, 16, 2, 8, 6), NSA_SUCCESS);
    assert_int_equal(cfg.num_q_heads, 16);
    assert_int_equal(cfg.num_kv_heads, 2);
    assert_int_equal(cfg.head_dim_qk, 8);
    assert_int_equal(cfg.head_dim_v, 6);
    assert_int_equal(cfg.cmp_block, 32);
    assert_int_equal(cfg.cmp_stride, 16);
    assert_int_equal(cfg.sel_block, 64);
    assert_int_equal(cfg.sel_count, 16);
    assert_int_equal(cfg.sel_init, 1);
    assert_int_equal(cfg.sel_local, 2);
    assert_int_equal(cfg.window, 512);
    /* scale = 1/sqrt(8), checked as scale^2 * 8 = 1 to avoid libm. */
    assert_true(absolute(cfg.scale * cfg.scale * 8.0f - 1.0f) < 1e-6f);
    assert_true(cfg.scale > 0.0f);
    assert_int_equal(cfg.causal, 1);
    assert_int_equal(cfg.compress, NSA_COMPRESS_MEAN);
    assert_int_equal(cfg.cmp_mlp_hidden, 16);
}

static void test_config_init_stores_invalid_values_as_given(void **state)
{
    (void)state;
    nsa_config cfg;
    assert_status(nsa_config_init(&cfg, 3, 2, 8, -6), NSA_SUCCESS);
    assert_int_equal(cfg.num_q_heads, 3);
    assert_int_equal(cfg.num_kv_heads, 2);
    assert_int_equal(cfg.head_dim_qk, 8);
    assert_int_equal(cfg.head_dim_v, -6);
    assert_status(nsa_config_init(&cfg, 0, -1, 8, 6), NSA_SUCCESS);
    assert_int_equal(cfg.num_q_heads, 0);
    assert_int_equal(cfg.num_kv_heads, -1);
}

/* ------------------------------------------------------------------------ */
/* Plan creation: NULL pointers and accessors                                */
/* ------------------------------------------------------------------------ */

static void test_plan_create_rejects_null_ctx(void **state)
{
    fixture *fx = *state;
    nsa_plan *plan = STALE_POINTER;
    assert_status(nsa_plan_create(NULL, &fx->cfg, &plan),
                  NSA_ERROR_NULL_POINTER);
    assert_null(plan);
}

static void test_plan_create_rejects_null_cfg(void **state)
{
    fixture *fx = *state;
    nsa_plan *plan = STALE_POINTER;
    assert_status(nsa_plan_create(fx->ctx, NULL, &plan),
                  NSA_ERROR_NULL_POINTER);
    assert_null(plan);
    expect_error_names(fx->ctx, "cfg");
}

static void test_plan_create_rejects_null_plan(void **state)
{
    fixture *fx = *state;
    assert_status(nsa_plan_create(fx->ctx, &fx->cfg, NULL),
                  NSA_ERROR_NULL_POINTER);
    expect_error_names(fx->ctx, "plan");
}

static void expect_configs_equal(const nsa_config *a, const nsa_config *b)
{
    assert_int_equal(a->num_q_heads, b->num_q_heads);
    assert_int_equal(a->num_kv_heads, b->num_kv_heads);
    assert_int_equal(a->head_dim_qk, b->head_dim_qk);
    assert_int_equal(a->head_dim_v, b->head_dim_v);
    assert_int_equal(a->cmp_block, b->cmp_block);
    assert_int_equal(a->cmp_stride, b->cmp_stride);
    assert_int_equal(a->sel_block, b->sel_block);
    assert_int_equal(a->sel_count, b->sel_count);
    assert_int_equal(a->sel_init, b->sel_init);
    assert_int_equal(a->sel_local, b->sel_local);
    assert_int_equal(a->window, b->window);
    assert_true(a->scale == b->scale);
    assert_int_equal(a->causal, b->causal);
    assert_int_equal(a->compress, b->compress);
    assert_int_equal(a->cmp_mlp_hidden, b->cmp_mlp_hidden);
}

static void test_plan_get_config_round_trips(void **state)
{
    fixture *fx = *state;
    nsa_config cfg;
    make_small_config(&cfg);
    cfg.window = 7;
    cfg.scale = 0.25f;
    cfg.causal = 0;
    cfg.compress = NSA_COMPRESS_MLP;
    cfg.cmp_mlp_hidden = 5;
    nsa_plan *plan = NULL;
    assert_status(nsa_plan_create(fx->ctx, &cfg, &plan), NSA_SUCCESS);

    nsa_config given = cfg;
    cfg.window = 99; /* the plan holds a copy: changing cfg changes nothing */
    nsa_config returned;
    memset(&returned, 0x5A, sizeof returned);
    assert_status(nsa_plan_get_config(plan, &returned), NSA_SUCCESS);
    expect_configs_equal(&returned, &given);
    nsa_plan_destroy(plan);
}

static void test_plan_get_config_rejects_null(void **state)
{
    fixture *fx = *state;
    nsa_config cfg;
    assert_status(nsa_plan_get_config(NULL, &cfg), NSA_ERROR_NULL_POINTER);
    assert_status(nsa_plan_get_config(fx->plan, NULL), NSA_ERROR_NULL_POINTER);
}

static void test_plan_describe_is_non_empty(void **state)
{
    fixture *fx = *state;
    const char *description = nsa_plan_describe(fx->plan);
    assert_non_null(description);
    assert_true(description[0] != '\0');
    assert_non_null(nsa_plan_describe(NULL)); /* "Never NULL" */
}

/* ------------------------------------------------------------------------ */
/* Plan creation: invalid configurations, one test each                     */
/* ------------------------------------------------------------------------ */

/* Each change breaks exactly one rule: negative head counts keep
 * Hq % Hkv == 0, and n = 0 comes with no forced blocks. */
PLAN_REJECTS(test_plan_rejects_zero_num_q_heads, cfg.num_q_heads = 0,
             NSA_ERROR_INVALID_DIMENSION, "num_q_heads")
PLAN_REJECTS(test_plan_rejects_negative_num_q_heads, cfg.num_q_heads = -4,
             NSA_ERROR_INVALID_DIMENSION, "num_q_heads")
PLAN_REJECTS(test_plan_rejects_zero_num_kv_heads, cfg.num_kv_heads = 0,
             NSA_ERROR_INVALID_DIMENSION, "num_kv_heads")
PLAN_REJECTS(test_plan_rejects_negative_num_kv_heads, cfg.num_kv_heads = -2,
             NSA_ERROR_INVALID_DIMENSION, "num_kv_heads")
PLAN_REJECTS(test_plan_rejects_zero_head_dim_qk, cfg.head_dim_qk = 0,
             NSA_ERROR_INVALID_DIMENSION, "head_dim_qk")
PLAN_REJECTS(test_plan_rejects_negative_head_dim_qk, cfg.head_dim_qk = -8,
             NSA_ERROR_INVALID_DIMENSION, "head_dim_qk")
PLAN_REJECTS(test_plan_rejects_zero_head_dim_v, cfg.head_dim_v = 0,
             NSA_ERROR_INVALID_DIMENSION, "head_dim_v")
PLAN_REJECTS(test_plan_rejects_negative_head_dim_v, cfg.head_dim_v = -6,
             NSA_ERROR_INVALID_DIMENSION, "head_dim_v")
PLAN_REJECTS(test_plan_rejects_zero_cmp_block, cfg.cmp_block = 0,
             NSA_ERROR_INVALID_DIMENSION, "cmp_block")
PLAN_REJECTS(test_plan_rejects_zero_cmp_stride, cfg.cmp_stride = 0,
             NSA_ERROR_INVALID_DIMENSION, "cmp_stride")
PLAN_REJECTS(test_plan_rejects_zero_sel_block, cfg.sel_block = 0,
             NSA_ERROR_INVALID_DIMENSION, "sel_block")
PLAN_REJECTS(test_plan_rejects_zero_sel_count,
             { cfg.sel_count = 0; cfg.sel_init = 0; cfg.sel_local = 0; },
             NSA_ERROR_INVALID_DIMENSION, "sel_count")
PLAN_REJECTS(test_plan_rejects_zero_window, cfg.window = 0,
             NSA_ERROR_INVALID_DIMENSION, "window")
PLAN_REJECTS(test_plan_rejects_negative_window, cfg.window = -1,
             NSA_ERROR_INVALID_DIMENSION, "window")
PLAN_REJECTS(test_plan_rejects_zero_mlp_hidden,
             { cfg.compress = NSA_COMPRESS_MLP; cfg.cmp_mlp_hidden = 0; },
             NSA_ERROR_INVALID_DIMENSION, "cmp_mlp_hidden")

PLAN_REJECTS(test_plan_rejects_heads_not_multiple,
             { cfg.num_q_heads = 5; cfg.num_kv_heads = 2; },
             NSA_ERROR_INVALID_HEADS, "num_kv_heads")

PLAN_REJECTS(test_plan_rejects_stride_not_dividing_cmp_block,
             cfg.cmp_block = 5, NSA_ERROR_INVALID_BLOCKS, "cmp_block")
PLAN_REJECTS(test_plan_rejects_stride_not_dividing_sel_block,
             cfg.sel_block = 9, NSA_ERROR_INVALID_BLOCKS, "sel_block")
PLAN_REJECTS(test_plan_rejects_cmp_block_longer_than_sel_block,
             cfg.cmp_block = 16, NSA_ERROR_INVALID_BLOCKS, "sel_block")

PLAN_REJECTS(test_plan_rejects_sel_count_below_forced,
             cfg.sel_count = TEST_SEL_INIT + TEST_SEL_LOCAL - 1,
             NSA_ERROR_INVALID_SELECTION, "sel_count")
PLAN_REJECTS(test_plan_rejects_negative_sel_init, cfg.sel_init = -1,
             NSA_ERROR_INVALID_SELECTION, "sel_init")
PLAN_REJECTS(test_plan_rejects_negative_sel_local, cfg.sel_local = -1,
             NSA_ERROR_INVALID_SELECTION, "sel_local")

PLAN_REJECTS(test_plan_rejects_nan_scale, cfg.scale = NAN,
             NSA_ERROR_INVALID_ARGUMENT, "scale")
PLAN_REJECTS(test_plan_rejects_infinite_scale, cfg.scale = INFINITY,
             NSA_ERROR_INVALID_ARGUMENT, "scale")
PLAN_REJECTS(test_plan_rejects_zero_scale, cfg.scale = 0.0f,
             NSA_ERROR_INVALID_ARGUMENT, "scale")
PLAN_REJECTS(test_plan_rejects_negative_scale, cfg.scale = -0.5f,
             NSA_ERROR_INVALID_ARGUMENT, "scale")
PLAN_REJECTS(test_plan_rejects_causal_two, cfg.causal = 2,
             NSA_ERROR_INVALID_ARGUMENT, "causal")
PLAN_REJECTS(test_plan_rejects_unknown_compress_kind,
             cfg.compress = (nsa_compress_kind)7, NSA_ERROR_INVALID_ARGUMENT,
             "compress")

/* Parameter tensors too large to count: the linear W is
 * Hkv * (l*Dk) * Dk = 2 * 2^24 * 2^20 * 2^20 = 2^65 elements. */
static void test_plan_rejects_overflowing_linear_weight(void **state)
{
    fixture *fx = *state;
    nsa_config cfg;
    make_small_config(&cfg);
    cfg.compress = NSA_COMPRESS_LINEAR;
    cfg.head_dim_qk = 1 << 20;
    cfg.head_dim_v = 1 << 20;
    cfg.cmp_block = 1 << 24;
    cfg.sel_block = 1 << 24;
    nsa_plan *plan = STALE_POINTER;
    assert_status(nsa_plan_create(fx->ctx, &cfg, &plan),
                  NSA_ERROR_SIZE_OVERFLOW);
    assert_null(plan);
    expect_error_names(fx->ctx, "cmp_block");
}

/* The mlp W1 is Hkv * (l*Dk) * M = 2 * 2^28 * 2^10 * 2^30 = 2^69 elements. */
static void test_plan_rejects_overflowing_mlp_weight(void **state)
{
    fixture *fx = *state;
    nsa_config cfg;
    make_small_config(&cfg);
    cfg.compress = NSA_COMPRESS_MLP;
    cfg.head_dim_qk = 1 << 10;
    cfg.head_dim_v = 1 << 10;
    cfg.cmp_block = 1 << 28;
    cfg.sel_block = 1 << 28;
    cfg.cmp_mlp_hidden = 1 << 30;
    nsa_plan *plan = STALE_POINTER;
    assert_status(nsa_plan_create(fx->ctx, &cfg, &plan),
                  NSA_ERROR_SIZE_OVERFLOW);
    assert_null(plan);
    expect_error_names(fx->ctx, "cmp_block");
}

/* ------------------------------------------------------------------------ */
/* Forward: NULL pointers                                                    */
/* ------------------------------------------------------------------------ */

static void test_forward_rejects_null_plan(void **state)
{
    fixture *fx = *state;
    fx->call.plan = NULL;
    expect_call_fails(fx, NSA_ERROR_NULL_POINTER, NULL);
}

static void test_forward_rejects_null_batch(void **state)
{
    fixture *fx = *state;
    fx->call.batch = NULL;
    expect_call_fails(fx, NSA_ERROR_NULL_POINTER, "batch");
}

static void test_forward_rejects_null_cu_seqlens(void **state)
{
    fixture *fx = *state;
    fx->batch.cu_seqlens = NULL;
    expect_call_fails(fx, NSA_ERROR_NULL_POINTER, "cu_seqlens");
}

static void test_forward_rejects_null_q(void **state)
{
    fixture *fx = *state;
    fx->call.q = NULL;
    expect_call_fails(fx, NSA_ERROR_NULL_POINTER, "q");
}

static void test_forward_rejects_null_k(void **state)
{
    fixture *fx = *state;
    fx->call.k = NULL;
    expect_call_fails(fx, NSA_ERROR_NULL_POINTER, "k");
}

static void test_forward_rejects_null_v(void **state)
{
    fixture *fx = *state;
    fx->call.v = NULL;
    expect_call_fails(fx, NSA_ERROR_NULL_POINTER, "v");
}

static void test_forward_rejects_null_gates(void **state)
{
    fixture *fx = *state;
    fx->call.gates = NULL;
    expect_call_fails(fx, NSA_ERROR_NULL_POINTER, "gates");
}

static void test_forward_rejects_null_out(void **state)
{
    fixture *fx = *state;
    fx->call.out = NULL;
    expect_call_fails(fx, NSA_ERROR_NULL_POINTER, "out");
}

static void test_forward_with_indices_rejects_null_indices(void **state)
{
    fixture *fx = *state;
    fx->call.kind = CALL_FORWARD_WITH_INDICES;
    fx->call.block_indices = NULL;
    expect_call_fails(fx, NSA_ERROR_NULL_POINTER, "block_indices");
}

/* ------------------------------------------------------------------------ */
/* Forward: phi parameters                                                   */
/* ------------------------------------------------------------------------ */

static void test_forward_rejects_weighted_without_a(void **state)
{
    fixture *fx = *state;
    use_compress_kind(fx, NSA_COMPRESS_WEIGHTED);
    fx->params_v.a = NULL;
    expect_call_fails(fx, NSA_ERROR_NULL_POINTER, "cmp_v");
    expect_error_names(fx->ctx, "a");
}

static void test_forward_rejects_weighted_without_params(void **state)
{
    fixture *fx = *state;
    use_compress_kind(fx, NSA_COMPRESS_WEIGHTED);
    fx->call.cmp_k = NULL;
    expect_call_fails(fx, NSA_ERROR_NULL_POINTER, "cmp_k");
}

static void test_forward_rejects_linear_without_w(void **state)
{
    fixture *fx = *state;
    use_compress_kind(fx, NSA_COMPRESS_LINEAR);
    fx->params_k.w = NULL;
    expect_call_fails(fx, NSA_ERROR_NULL_POINTER, "cmp_k");
    expect_error_names(fx->ctx, "w");
}

static void test_forward_rejects_mlp_without_w1(void **state)
{
    fixture *fx = *state;
    use_compress_kind(fx, NSA_COMPRESS_MLP);
    fx->params_k.w1 = NULL;
    expect_call_fails(fx, NSA_ERROR_NULL_POINTER, "cmp_k");
    expect_error_names(fx->ctx, "w1");
}

static void test_forward_rejects_mlp_without_w2(void **state)
{
    fixture *fx = *state;
    use_compress_kind(fx, NSA_COMPRESS_MLP);
    fx->params_v.w2 = NULL;
    expect_call_fails(fx, NSA_ERROR_NULL_POINTER, "cmp_v");
    expect_error_names(fx->ctx, "w2");
}

static void test_forward_rejects_mean_with_w(void **state)
{
    fixture *fx = *state;
    fx->params_k.w = fx->phi_k.w;
    fx->call.cmp_k = &fx->params_k;
    expect_call_fails(fx, NSA_ERROR_INVALID_ARGUMENT, "cmp_k");
    expect_error_names(fx->ctx, "w");
}

static void test_forward_rejects_mean_with_a(void **state)
{
    fixture *fx = *state;
    fx->params_v.a = fx->phi_v.a;
    fx->call.cmp_v = &fx->params_v;
    expect_call_fails(fx, NSA_ERROR_INVALID_ARGUMENT, "cmp_v");
    expect_error_names(fx->ctx, "a");
}

static void test_forward_rejects_weighted_with_w1(void **state)
{
    fixture *fx = *state;
    use_compress_kind(fx, NSA_COMPRESS_WEIGHTED);
    fx->params_k.w1 = fx->phi_k.w1;
    expect_call_fails(fx, NSA_ERROR_INVALID_ARGUMENT, "cmp_k");
    expect_error_names(fx->ctx, "w1");
}

static void test_forward_rejects_linear_with_a(void **state)
{
    fixture *fx = *state;
    use_compress_kind(fx, NSA_COMPRESS_LINEAR);
    fx->params_v.a = fx->phi_v.a;
    expect_call_fails(fx, NSA_ERROR_INVALID_ARGUMENT, "cmp_v");
    expect_error_names(fx->ctx, "a");
}

static void test_forward_rejects_mlp_with_w(void **state)
{
    fixture *fx = *state;
    use_compress_kind(fx, NSA_COMPRESS_MLP);
    fx->params_k.w = fx->phi_k.w;
    expect_call_fails(fx, NSA_ERROR_INVALID_ARGUMENT, "cmp_k");
    expect_error_names(fx->ctx, "w");
}

/* The positive controls of the tests above: each kind runs with exactly
 * its required parameters, and with the optional pe as well. */
static void expect_kind_runs(fixture *fx, nsa_compress_kind kind)
{
    use_compress_kind(fx, kind);
    expect_call_succeeds(fx);
    reset_outputs(fx);
    fx->params_k.pe = fx->phi_k.pe;
    fx->params_v.pe = fx->phi_v.pe;
    fx->call.cmp_k = &fx->params_k;
    fx->call.cmp_v = &fx->params_v;
    expect_call_succeeds(fx);
}

static void test_forward_runs_mean(void **state)
{
    expect_kind_runs(*state, NSA_COMPRESS_MEAN);
}

static void test_forward_runs_weighted(void **state)
{
    expect_kind_runs(*state, NSA_COMPRESS_WEIGHTED);
}

static void test_forward_runs_linear(void **state)
{
    expect_kind_runs(*state, NSA_COMPRESS_LINEAR);
}

static void test_forward_runs_mlp(void **state)
{
    expect_kind_runs(*state, NSA_COMPRESS_MLP);
}

/* ------------------------------------------------------------------------ */
/* Forward: the batch                                                        */
/* ------------------------------------------------------------------------ */

static void test_forward_rejects_cu_seqlens_not_starting_at_zero(void **state)
{
    fixture *fx = *state;
    use_batch(fx, 2, 9, (const int64_t[]){1, 5, 9});
    expect_call_fails(fx, NSA_ERROR_INVALID_SEQLENS, "cu_seqlens");
}

static void test_forward_rejects_decreasing_cu_seqlens(void **state)
{
    fixture *fx = *state;
    use_batch(fx, 3, 9, (const int64_t[]){0, 6, 4, 9});
    expect_call_fails(fx, NSA_ERROR_INVALID_SEQLENS, "cu_seqlens");
}

static void test_forward_rejects_cu_seqlens_ending_past_total(void **state)
{
    fixture *fx = *state;
    use_batch(fx, 2, 9, (const int64_t[]){0, 5, 11});
    expect_call_fails(fx, NSA_ERROR_INVALID_SEQLENS, "cu_seqlens");
}

static void test_forward_rejects_cu_seqlens_ending_before_total(void **state)
{
    fixture *fx = *state;
    use_batch(fx, 2, 9, (const int64_t[]){0, 5, 7});
    expect_call_fails(fx, NSA_ERROR_INVALID_SEQLENS, "cu_seqlens");
}

/* No sequences but three tokens: cu_seqlens = {0} does not end at T. */
static void test_forward_rejects_tokens_in_empty_batch(void **state)
{
    fixture *fx = *state;
    use_batch(fx, 0, 3, (const int64_t[]){0});
    expect_call_fails(fx, NSA_ERROR_INVALID_SEQLENS, "cu_seqlens");
}

static void test_forward_rejects_negative_num_seqs(void **state)
{
    fixture *fx = *state;
    use_batch(fx, -1, 0, (const int64_t[]){0});
    expect_call_fails(fx, NSA_ERROR_INVALID_DIMENSION, "num_seqs");
}

static void test_forward_rejects_negative_total_tokens(void **state)
{
    fixture *fx = *state;
    use_batch_with_buffers_for(fx, 0, -1, (const int64_t[]){0}, 0);
    expect_call_fails(fx, NSA_ERROR_INVALID_DIMENSION, "total_tokens");
}

/* A consistent batch of 2^62 tokens: T * Hq * Dk overflows int64_t. The
 * buffers hold one token; the library must refuse before touching them. */
static void test_forward_rejects_overflowing_total_tokens(void **state)
{
    fixture *fx = *state;
    const int64_t huge = INT64_MAX / 2;
    use_batch_with_buffers_for(fx, 1, huge, (const int64_t[]){0, huge}, 1);
    expect_call_fails(fx, NSA_ERROR_SIZE_OVERFLOW, "total_tokens");
}

/* T * Hq * Dk fits in int64_t, but not the size in bytes. */
static void test_forward_rejects_overflowing_byte_size(void **state)
{
    fixture *fx = *state;
    const int64_t huge = INT64_MAX / (TEST_Q_HEADS * TEST_DIM_QK);
    use_batch_with_buffers_for(fx, 1, huge, (const int64_t[]){0, huge}, 1);
    expect_call_fails(fx, NSA_ERROR_SIZE_OVERFLOW, "total_tokens");
}

/* ------------------------------------------------------------------------ */
/* Forward: valid edge cases                                                 */
/* ------------------------------------------------------------------------ */

static void test_forward_succeeds_on_default_batch(void **state)
{
    expect_call_succeeds(*state);
}

static void test_forward_succeeds_without_block_indices_out(void **state)
{
    fixture *fx = *state;
    fx->call.block_indices_out = NULL;
    expect_call_succeeds(fx);
}

static void test_forward_succeeds_non_causal(void **state)
{
    fixture *fx = *state;
    nsa_config cfg;
    make_small_config(&cfg);
    cfg.causal = 0;
    use_config(fx, &cfg);
    expect_call_succeeds(fx);
}

static void test_forward_accepts_zero_length_sequences(void **state)
{
    fixture *fx = *state;
    use_batch(fx, 4, 9, (const int64_t[]){0, 0, 5, 5, 9});
    expect_call_succeeds(fx);
}

static void test_forward_accepts_empty_batch(void **state)
{
    fixture *fx = *state;
    use_batch(fx, 0, 0, (const int64_t[]){0});
    expect_call_succeeds(fx);
}

/* The header requires cu_seqlens only when B > 0 and tensors only when
 * T > 0, so an empty batch may pass NULL for all of them. */
static void test_forward_accepts_empty_batch_with_null_pointers(void **state)
{
    fixture *fx = *state;
    use_batch(fx, 0, 0, NULL);
    fx->call.q = fx->call.k = fx->call.v = fx->call.gates = NULL;
    fx->call.out = NULL;
    fx->call.block_indices_out = NULL;
    expect_call_succeeds(fx);
}

static void test_forward_accepts_empty_sequences_with_null_tensors(void **state)
{
    fixture *fx = *state;
    use_batch(fx, 3, 0, (const int64_t[]){0, 0, 0, 0});
    fx->call.q = fx->call.k = fx->call.v = fx->call.gates = NULL;
    fx->call.out = NULL;
    fx->call.block_indices_out = NULL;
    expect_call_succeeds(fx);
}

/* "The result is bitwise the same for every thread count": the default
 * batch on contexts of 1, 2 and 3 threads gives identical bytes. */
static void test_forward_is_bitwise_identical_across_thread_counts(void **state)
{
    fixture *fx = *state;
    expect_call_succeeds(fx); /* on TEST_THREADS threads */
    float *reference_out = alloc_exact(fx->out_bytes);
    int32_t *reference_blocks = alloc_exact(fx->block_indices_out_bytes);
    memcpy(reference_out, fx->out, fx->out_bytes);
    memcpy(reference_blocks, fx->block_indices_out,
           fx->block_indices_out_bytes);

    for (int32_t threads = 1; threads <= 3; threads++) {
        nsa_context_options opts;
        nsa_context_options_init(&opts);
        opts.num_threads = threads;
        opts.bind_threads = 0;
        opts.verbose = 0;
        nsa_context *ctx = NULL;
        nsa_plan *plan = NULL;
        assert_status(nsa_context_create(&opts, &ctx), NSA_SUCCESS);
        assert_status(nsa_plan_create(ctx, &fx->cfg, &plan), NSA_SUCCESS);
        reset_outputs(fx);
        fx->call.plan = plan;
        nsa_status status = run_call(fx);
        bool same_out = memcmp(fx->out, reference_out, fx->out_bytes) == 0;
        bool same_blocks = memcmp(fx->block_indices_out, reference_blocks,
                                  fx->block_indices_out_bytes) == 0;
        fx->call.plan = fx->plan;
        nsa_plan_destroy(plan);
        nsa_context_destroy(ctx);
        if (status != NSA_SUCCESS || !same_out || !same_blocks) {
            free(reference_out);
            free(reference_blocks);
            fail_msg("%d threads: %s, out %s, block indices %s", (int)threads,
                     nsa_status_string(status), same_out ? "same" : "differs",
                     same_blocks ? "same" : "differ");
        }
    }
    free(reference_out);
    free(reference_blocks);
}

/* One token: nothing is compressed yet (o_cmp = 0) and both the selected
 * block and the window hold only the token itself (o_slc = o_swa = v), so
 * out = (g_slc + g_swa) v = 2/3 v. */
static void test_forward_single_token(void **state)
{
    fixture *fx = *state;
    use_batch(fx, 1, 1, (const int64_t[]){0, 1});
    expect_call_succeeds(fx);
    int64_t group = TEST_Q_HEADS / TEST_KV_HEADS;
    for (int64_t head = 0; head < TEST_Q_HEADS; head++) {
        for (int64_t dim = 0; dim < TEST_DIM_V; dim++) {
            float expected =
                (2.0f / 3.0f) * fx->v[(head / group) * TEST_DIM_V + dim];
            float got = fx->out[head * TEST_DIM_V + dim];
            assert_true(absolute(got - expected) < 1e-5f);
        }
    }
}

/* ------------------------------------------------------------------------ */
/* Forward with caller-given block indices                                   */
/* ------------------------------------------------------------------------ */

/* The slots of token t, KV head h in the indices the call reads. */
static int32_t *given_indices(fixture *fx, int64_t token, int64_t head)
{
    fx->call.kind = CALL_FORWARD_WITH_INDICES;
    return fx->block_indices_in +
           (token * TEST_KV_HEADS + head) * TEST_SEL_COUNT;
}

static void test_with_indices_rejects_block_past_sequence(void **state)
{
    fixture *fx = *state;
    given_indices(fx, 39, 0)[0] = 5; /* sequence 0: 40 tokens, blocks 0-4 */
    expect_call_fails(fx, NSA_ERROR_INVALID_INDICES, "block_indices");
}

/* Block 1 exists in sequence 0 but not in the 3-token sequence 1: indices
 * are local to each sequence. */
static void test_with_indices_rejects_block_of_another_sequence(void **state)
{
    fixture *fx = *state;
    given_indices(fx, 42, 1)[2] = 1;
    expect_call_fails(fx, NSA_ERROR_INVALID_INDICES, "block_indices");
}

static void test_with_indices_rejects_index_below_minus_one(void **state)
{
    fixture *fx = *state;
    given_indices(fx, 20, 1)[1] = -2;
    expect_call_fails(fx, NSA_ERROR_INVALID_INDICES, "block_indices");
}

static void test_with_indices_rejects_repeated_block(void **state)
{
    fixture *fx = *state;
    int32_t *slots = given_indices(fx, 30, 0);
    slots[0] = 2;
    slots[1] = 0;
    slots[2] = 2;
    expect_call_fails(fx, NSA_ERROR_INVALID_INDICES, "block_indices");
}

/* All -1 (a repeated -1 is padding, not a repeated block), and unsorted
 * blocks, are valid. */
static void test_with_indices_accepts_padding_and_any_order(void **state)
{
    fixture *fx = *state;
    int32_t *slots = given_indices(fx, 35, 1);
    slots[0] = 4;
    slots[1] = -1;
    slots[2] = 0;
    slots[3] = 2;
    expect_call_succeeds(fx);
}

/* Token 0 given block 0 (and -1 padding) attends to itself as nsa_forward
 * would: o_cmp = 0, o_slc = o_swa = v_0, so out = 2/3 v_0. */
static void test_with_indices_attends_to_given_block(void **state)
{
    fixture *fx = *state;
    for (int64_t head = 0; head < TEST_KV_HEADS; head++) {
        given_indices(fx, 0, head)[0] = 0;
    }
    expect_call_succeeds(fx);
    int64_t group = TEST_Q_HEADS / TEST_KV_HEADS;
    for (int64_t head = 0; head < TEST_Q_HEADS; head++) {
        for (int64_t dim = 0; dim < TEST_DIM_V; dim++) {
            float expected =
                (2.0f / 3.0f) * fx->v[(head / group) * TEST_DIM_V + dim];
            float got = fx->out[head * TEST_DIM_V + dim];
            if (absolute(got - expected) > 1e-5f) {
                fail_msg("out[0][%lld][%lld] = %g, expected %g",
                         (long long)head, (long long)dim, (double)got,
                         (double)expected);
            }
        }
    }
}

/* In causal mode a block starting after the query contributes nothing; with
 * no key left o_slc = 0, so token 0 gets out = g_swa v_0 = v_0 / 3. */
static void test_with_indices_future_block_gives_zero(void **state)
{
    fixture *fx = *state;
    for (int64_t head = 0; head < TEST_KV_HEADS; head++) {
        given_indices(fx, 0, head)[0] = 1;
    }
    expect_call_succeeds(fx);
    int64_t group = TEST_Q_HEADS / TEST_KV_HEADS;
    for (int64_t head = 0; head < TEST_Q_HEADS; head++) {
        for (int64_t dim = 0; dim < TEST_DIM_V; dim++) {
            float expected = fx->v[(head / group) * TEST_DIM_V + dim] / 3.0f;
            float got = fx->out[head * TEST_DIM_V + dim];
            assert_true(absolute(got - expected) < 1e-5f);
        }
    }
}

/* Giving back the blocks nsa_forward selected reproduces its output. */
static void test_with_indices_reproduces_forward(void **state)
{
    fixture *fx = *state;
    expect_call_succeeds(fx);
    size_t count = fx->out_bytes / sizeof(float);
    float *selected_out = alloc_exact(fx->out_bytes);
    memcpy(selected_out, fx->out, fx->out_bytes);
    memcpy(fx->block_indices_in, fx->block_indices_out,
           fx->block_indices_out_bytes);

    reset_outputs(fx);
    fx->call.kind = CALL_FORWARD_WITH_INDICES;
    expect_call_succeeds(fx);
    for (size_t i = 0; i < count; i++) {
        float without_indices = selected_out[i];
        if (absolute(fx->out[i] - without_indices) > 1e-5f) {
            free(selected_out);
            fail_msg("out[%zu] = %g with indices, %g without", i,
                     (double)fx->out[i], (double)without_indices);
        }
    }
    free(selected_out);
}

/* ------------------------------------------------------------------------ */

#define FIXTURE_TEST(f)                                                        \
    cmocka_unit_test_setup_teardown(f, setup_fixture, teardown_fixture)

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_status_strings_are_non_empty_and_distinct),
        cmocka_unit_test(test_status_string_of_unknown_value),
        cmocka_unit_test(test_version_matches_header),

        cmocka_unit_test(test_context_options_init_defaults),
        cmocka_unit_test(test_context_create_rejects_null_ctx),
        cmocka_unit_test(test_context_create_rejects_negative_threads),
        cmocka_unit_test(test_context_create_rejects_bind_threads_two),
        cmocka_unit_test(test_context_create_rejects_spin_out_of_range),
        cmocka_unit_test(test_context_spin_settings_agree),
        cmocka_unit_test(test_context_with_default_options),
        FIXTURE_TEST(test_context_uses_requested_threads),
        cmocka_unit_test(test_last_error_of_null_context_is_empty),
        cmocka_unit_test(test_destroy_null_is_a_no_op),

        cmocka_unit_test(test_config_init_rejects_null),
        cmocka_unit_test(test_config_init_fills_paper_defaults),
        cmocka_unit_test(test_config_init_stores_invalid_values_as_given),

        FIXTURE_TEST(test_plan_create_rejects_null_ctx),
        FIXTURE_TEST(test_plan_create_rejects_null_cfg),
        FIXTURE_TEST(test_plan_create_rejects_null_plan),
        FIXTURE_TEST(test_plan_get_config_round_trips),
        FIXTURE_TEST(test_plan_get_config_rejects_null),
        FIXTURE_TEST(test_plan_describe_is_non_empty),

        FIXTURE_TEST(test_plan_rejects_zero_num_q_heads),
        FIXTURE_TEST(test_plan_rejects_negative_num_q_heads),
        FIXTURE_TEST(test_plan_rejects_zero_num_kv_heads),
        FIXTURE_TEST(test_plan_rejects_negative_num_kv_heads),
        FIXTURE_TEST(test_plan_rejects_zero_head_dim_qk),
        FIXTURE_TEST(test_plan_rejects_negative_head_dim_qk),
        FIXTURE_TEST(test_plan_rejects_zero_head_dim_v),
        FIXTURE_TEST(test_plan_rejects_negative_head_dim_v),
        FIXTURE_TEST(test_plan_rejects_zero_cmp_block),
        FIXTURE_TEST(test_plan_rejects_zero_cmp_stride),
        FIXTURE_TEST(test_plan_rejects_zero_sel_block),
        FIXTURE_TEST(test_plan_rejects_zero_sel_count),
        FIXTURE_TEST(test_plan_rejects_zero_window),
        FIXTURE_TEST(test_plan_rejects_negative_window),
        FIXTURE_TEST(test_plan_rejects_zero_mlp_hidden),
        FIXTURE_TEST(test_plan_rejects_heads_not_multiple),
        FIXTURE_TEST(test_plan_rejects_stride_not_dividing_cmp_block),
        FIXTURE_TEST(test_plan_rejects_stride_not_dividing_sel_block),
        FIXTURE_TEST(test_plan_rejects_cmp_block_longer_than_sel_block),
        FIXTURE_TEST(test_plan_rejects_sel_count_below_forced),
        FIXTURE_TEST(test_plan_rejects_negative_sel_init),
        FIXTURE_TEST(test_plan_rejects_negative_sel_local),
        FIXTURE_TEST(test_plan_rejects_nan_scale),
        FIXTURE_TEST(test_plan_rejects_infinite_scale),
        FIXTURE_TEST(test_plan_rejects_zero_scale),
        FIXTURE_TEST(test_plan_rejects_negative_scale),
        FIXTURE_TEST(test_plan_rejects_causal_two),
        FIXTURE_TEST(test_plan_rejects_unknown_compress_kind),
        FIXTURE_TEST(test_plan_rejects_overflowing_linear_weight),
        FIXTURE_TEST(test_plan_rejects_overflowing_mlp_weight),

        FIXTURE_TEST(test_forward_rejects_null_plan),
        FIXTURE_TEST(test_forward_rejects_null_batch),
        FIXTURE_TEST(test_forward_rejects_null_cu_seqlens),
        FIXTURE_TEST(test_forward_rejects_null_q),
        FIXTURE_TEST(test_forward_rejects_null_k),
        FIXTURE_TEST(test_forward_rejects_null_v),
        FIXTURE_TEST(test_forward_rejects_null_gates),
        FIXTURE_TEST(test_forward_rejects_null_out),
        FIXTURE_TEST(test_forward_with_indices_rejects_null_indices),

        FIXTURE_TEST(test_forward_rejects_weighted_without_a),
        FIXTURE_TEST(test_forward_rejects_weighted_without_params),
        FIXTURE_TEST(test_forward_rejects_linear_without_w),
        FIXTURE_TEST(test_forward_rejects_mlp_without_w1),
        FIXTURE_TEST(test_forward_rejects_mlp_without_w2),
        FIXTURE_TEST(test_forward_rejects_mean_with_w),
        FIXTURE_TEST(test_forward_rejects_mean_with_a),
        FIXTURE_TEST(test_forward_rejects_weighted_with_w1),
        FIXTURE_TEST(test_forward_rejects_linear_with_a),
        FIXTURE_TEST(test_forward_rejects_mlp_with_w),
        FIXTURE_TEST(test_forward_runs_mean),
        FIXTURE_TEST(test_forward_runs_weighted),
        FIXTURE_TEST(test_forward_runs_linear),
        FIXTURE_TEST(test_forward_runs_mlp),

        FIXTURE_TEST(test_forward_rejects_cu_seqlens_not_starting_at_zero),
        FIXTURE_TEST(test_forward_rejects_decreasing_cu_seqlens),
        FIXTURE_TEST(test_forward_rejects_cu_seqlens_ending_past_total),
        FIXTURE_TEST(test_forward_rejects_cu_seqlens_ending_before_total),
        FIXTURE_TEST(test_forward_rejects_tokens_in_empty_batch),
        FIXTURE_TEST(test_forward_rejects_negative_num_seqs),
        FIXTURE_TEST(test_forward_rejects_negative_total_tokens),
        FIXTURE_TEST(test_forward_rejects_overflowing_total_tokens),
        FIXTURE_TEST(test_forward_rejects_overflowing_byte_size),

        FIXTURE_TEST(test_forward_succeeds_on_default_batch),
        FIXTURE_TEST(test_forward_succeeds_without_block_indices_out),
        FIXTURE_TEST(test_forward_succeeds_non_causal),
        FIXTURE_TEST(test_forward_accepts_zero_length_sequences),
        FIXTURE_TEST(test_forward_accepts_empty_batch),
        FIXTURE_TEST(test_forward_accepts_empty_batch_with_null_pointers),
        FIXTURE_TEST(test_forward_accepts_empty_sequences_with_null_tensors),
        FIXTURE_TEST(test_forward_is_bitwise_identical_across_thread_counts),
        FIXTURE_TEST(test_forward_single_token),

        FIXTURE_TEST(test_with_indices_rejects_block_past_sequence),
        FIXTURE_TEST(test_with_indices_rejects_block_of_another_sequence),
        FIXTURE_TEST(test_with_indices_rejects_index_below_minus_one),
        FIXTURE_TEST(test_with_indices_rejects_repeated_block),
        FIXTURE_TEST(test_with_indices_accepts_padding_and_any_order),
        FIXTURE_TEST(test_with_indices_attends_to_given_block),
        FIXTURE_TEST(test_with_indices_future_block_gives_zero),
        FIXTURE_TEST(test_with_indices_reproduces_forward),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
