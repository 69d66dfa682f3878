/* SPDX-License-Identifier: MIT */
/*
 * baseline-dnnl.c — the dense causal baseline of baseline-blas.c with
 * oneDNN's primitives in place of cblas_sgemm: per KV head and query
 * tile, S = Q K^T with the matmul primitive (K^T described by strides, no
 * copy), the causal mask as -inf on the tile's diagonal block, P =
 * softmax(S) with the softmax primitive (in place), O = P V with matmul.
 * oneDNN is what PyTorch and OpenVINO call on CPUs, so this row shows what
 * framework-grade primitives do on the same tiling. Everything heavy runs
 * on oneDNN's threads: a softmax on threads of our own would fight
 * OpenMP's spinning workers for the cores (measured: 1.8x slower).
 *
 * Primitives are made per tile shape (queries x keys) on first use, i.e.
 * in the warm-up run, and kept: frameworks cache them the same way. oneDNN
 * runs its own threads (OpenMP in Debian's build), set to --threads with
 * omp_set_num_threads, found at run time in the OpenMP runtime oneDNN
 * loaded. With --isa, oneDNN's ISA is capped to match (dnnl_set_max_cpu_isa).
 *
 * Written against the C API of oneDNN 2.x (Debian 12: 2.6/2.7); the 3.x
 * names are used when the header says 3.x. Without oneDNN at configure
 * time the row is reported as unavailable.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "bench.h"

#if defined(NSA_HAVE_DNNL)
#include <dlfcn.h>
#include <dnnl.h>

/* Scores of one tile may take this much memory. */
#define SCORE_BUDGET ((uint64_t)512 << 20)

#if DNNL_VERSION_MAJOR >= 3
typedef dnnl_memory_desc_t md_t; /* an opaque handle in 3.x */
#define MD_ARG(md) (md)
static dnnl_status_t md_init(md_t *md, int64_t rows, int64_t cols, int64_t row_stride,
                             int64_t col_stride)
{
    dnnl_dims_t dims = {rows, cols}, strides = {row_stride, col_stride};
    return dnnl_memory_desc_create_with_strides(md, 2, dims, dnnl_f32, strides);
}
static void md_free(md_t md)
{
    dnnl_memory_desc_destroy(md);
}
static dnnl_status_t matmul_pd(dnnl_primitive_desc_t *pd, dnnl_engine_t engine, md_t src,
                               md_t weights, md_t dst)
{
    return dnnl_matmul_primitive_desc_create(pd, engine, src, weights, NULL, dst, NULL);
}
static dnnl_status_t softmax_pd(dnnl_primitive_desc_t *pd, dnnl_engine_t engine, md_t data)
{
    return dnnl_softmax_forward_primitive_desc_create(pd, engine, dnnl_forward_inference,
                                                      dnnl_softmax_accurate, data, data, 1, NULL);
}
#else
typedef dnnl_memory_desc_t md_t; /* a struct in 2.x */
#define MD_ARG(md) (&(md))
static dnnl_status_t md_init(md_t *md, int64_t rows, int64_t cols, int64_t row_stride,
                             int64_t col_stride)
{
    dnnl_dims_t dims = {rows, cols}, strides = {row_stride, col_stride};
    return dnnl_memory_desc_init_by_strides(md, 2, dims, dnnl_f32, strides);
}
static void md_free(md_t md)
{
    (void)md;
}
static dnnl_status_t matmul_pd(dnnl_primitive_desc_t *pd, dnnl_engine_t engine, md_t src,
                               md_t weights, md_t dst)
{
    dnnl_matmul_desc_t desc;
    dnnl_status_t st = dnnl_matmul_desc_init(&desc, &src, &weights, NULL, &dst);
    return st != dnnl_success ? st : dnnl_primitive_desc_create(pd, &desc, NULL, engine, NULL);
}
static dnnl_status_t softmax_pd(dnnl_primitive_desc_t *pd, dnnl_engine_t engine, md_t data)
{
    dnnl_softmax_desc_t desc;
    dnnl_status_t st = dnnl_softmax_forward_desc_init(&desc, dnnl_forward_inference, &data, 1);
    return st != dnnl_success ? st : dnnl_primitive_desc_create(pd, &desc, NULL, engine, NULL);
}
#endif

/* One tile shape: its three primitives and the memory objects they run on
 * (data handles set per call). S is dense [m][nk] for each shape, so every
 * primitive sees plain layouts. */
typedef struct shape {
    dnnl_primitive_t qk, softmax, pv;
    dnnl_memory_t q, kt, s, v, o;
} shape;

typedef struct bench_dnnl impl;

struct bench_dnnl {
    const bench_problem *p;
    int threads;
    dnnl_engine_t engine;
    dnnl_stream_t stream;
    int64_t g, tile_q, tiles_per_head;
    shape *shapes; /* [tiles_per_head]: tile i has keys 0 .. (i + 1) tile_q - 1 */
    float *qp, *s, *o, *ones;
    char description[200];
    char error[120];
};

/* Makes the primitive of pd (if st says pd was made) and releases pd. */
static dnnl_status_t make_primitive(dnnl_primitive_t *prim, dnnl_status_t st,
                                    dnnl_primitive_desc_t *pd)
{
    if (st != dnnl_success)
        return st;
    st = dnnl_primitive_create(prim, *pd);
    dnnl_primitive_desc_destroy(*pd);
    *pd = NULL;
    return st;
}

/* The primitives of tile i (queries [i tile_q, ...)), made on first use. */
static dnnl_status_t tile_shape(impl *d, int64_t i, shape **out)
{
    shape *sh = &d->shapes[i];
    *out = sh;
    if (sh->qk != NULL)
        return dnnl_success;
    const nsa_config *c = &d->p->cfg;
    const int64_t t0 = i * d->tile_q;
    const int64_t count = d->p->seqlen - t0 < d->tile_q ? d->p->seqlen - t0 : d->tile_q;
    const int64_t m = count * d->g, nk = t0 + count, dk = c->head_dim_qk, dv = c->head_dim_v;
    const int64_t hkv = c->num_kv_heads;
    /* rows, cols, row stride, column stride of Q, K^T, S (= P), V, O */
    const int64_t layout[5][4] = {
        {m, dk, dk, 1},
        {dk, nk, 1, hkv * dk}, /* K^T: element (c, j) at k[j][h][c] */
        {m, nk, nk, 1},
        {nk, dv, hkv * dv, 1},
        {m, dv, dv, 1},
    };
    md_t md[5];
    int made = 0;
    dnnl_status_t st = dnnl_success;
    for (; made < 5 && st == dnnl_success; made++)
        st = md_init(&md[made], layout[made][0], layout[made][1], layout[made][2],
                     layout[made][3]);
    if (st != dnnl_success)
        made--; /* the last one failed */
    dnnl_memory_t *mems[5] = {&sh->q, &sh->kt, &sh->s, &sh->v, &sh->o};
    for (int j = 0; j < 5 && st == dnnl_success; j++)
        st = dnnl_memory_create(mems[j], MD_ARG(md[j]), d->engine, DNNL_MEMORY_NONE);
    dnnl_primitive_desc_t pd = NULL;
    if (st == dnnl_success) {
        st = matmul_pd(&pd, d->engine, md[0], md[1], md[2]);
        st = make_primitive(&sh->qk, st, &pd);
    }
    if (st == dnnl_success) {
        st = softmax_pd(&pd, d->engine, md[2]);
        st = make_primitive(&sh->softmax, st, &pd);
    }
    if (st == dnnl_success) {
        st = matmul_pd(&pd, d->engine, md[2], md[3], md[4]);
        st = make_primitive(&sh->pv, st, &pd);
    }
    for (int j = 0; j < made; j++)
        md_free(md[j]);
    return st;
}

/* Runs prim on src (weights: NULL for the softmax) into dst. */
static dnnl_status_t execute(impl *d, dnnl_primitive_t prim, dnnl_memory_t src,
                             dnnl_memory_t weights, dnnl_memory_t dst)
{
    dnnl_exec_arg_t args[3] = {{DNNL_ARG_SRC, src}, {DNNL_ARG_DST, dst},
                               {DNNL_ARG_WEIGHTS, weights}};
    dnnl_status_t st = dnnl_primitive_execute(prim, d->stream, weights != NULL ? 3 : 2, args);
    return st != dnnl_success ? st : dnnl_stream_wait(d->stream);
}

/* The causal mask: row r of the tile (query t0 + r / G) sees keys up to
 * its own; the rest of the diagonal block becomes -inf (exp -> 0). */
static void mask_tile(const impl *d, int64_t t0, int64_t count)
{
    const int64_t nk = t0 + count;
    for (int64_t r = 0; r < count * d->g; r++) {
        float *row = d->s + (size_t)(r * nk);
        for (int64_t j = t0 + r / d->g + 1; j < nk; j++)
            row[j] = -INFINITY;
    }
}

static int run_tile(impl *d, int64_t h, int64_t i, float *out)
{
    const nsa_config *c = &d->p->cfg;
    const int64_t t0 = i * d->tile_q;
    const int64_t count = d->p->seqlen - t0 < d->tile_q ? d->p->seqlen - t0 : d->tile_q;
    shape *sh;
    dnnl_status_t st = tile_shape(d, i, &sh);
    if (st != dnnl_success) {
        snprintf(d->error, sizeof d->error, "primitives for a %lld-key tile: oneDNN status %d",
                 (long long)(t0 + count), (int)st);
        return -1;
    }
    bench_tile_pack_q(d->p, h, t0, count, d->qp);
    /* The API takes non-const handles; oneDNN only reads K and V. */
    union { const float *in; void *out; } k = {.in = d->p->k + h * c->head_dim_qk};
    union { const float *in; void *out; } v = {.in = d->p->v + h * c->head_dim_v};
    dnnl_memory_set_data_handle(sh->q, d->qp);
    dnnl_memory_set_data_handle(sh->kt, k.out);
    dnnl_memory_set_data_handle(sh->s, d->s);
    dnnl_memory_set_data_handle(sh->v, v.out);
    dnnl_memory_set_data_handle(sh->o, d->o);
    if (execute(d, sh->qk, sh->q, sh->kt, sh->s) != dnnl_success)
        return -1;
    mask_tile(d, t0, count);
    if (execute(d, sh->softmax, sh->s, NULL, sh->s) != dnnl_success ||
        execute(d, sh->pv, sh->s, sh->v, sh->o) != dnnl_success)
        return -1;
    bench_tile_unpack_o(d->p, h, t0, count, d->o, d->ones, out); /* P is normalised */
    return 0;
}

/* oneDNN's OpenMP threads: the runtime is whichever oneDNN loaded. */
static int set_omp_threads(int threads)
{
    void *sym = dlsym(RTLD_DEFAULT, "omp_set_num_threads");
    if (sym == NULL)
        return -1;
    union { void *object; void (*fn)(int); } cast = {.object = sym};
    cast.fn(threads);
    return 0;
}

static const char *cap_isa(nsa_isa isa, int capped)
{
    static int done;
    if (!capped || done)
        return done ? "capped earlier in this run" : "oneDNN's best";
    done = 1;
    dnnl_cpu_isa_t cap = isa == NSA_ISA_AVX512 ? dnnl_cpu_isa_avx512_core
                         : isa == NSA_ISA_AVX2 ? dnnl_cpu_isa_avx2
                                               : dnnl_cpu_isa_sse41;
    return dnnl_set_max_cpu_isa(cap) == dnnl_success ? nsa_isa_name(isa) : "cap refused";
}
#endif /* NSA_HAVE_DNNL */

bench_dnnl *bench_dnnl_create(const bench_problem *p, const bench_options *opt, int threads,
                              nsa_isa isa, char *why, size_t why_size)
{
#if !defined(NSA_HAVE_DNNL)
    (void)p, (void)opt, (void)threads, (void)isa;
    snprintf(why, why_size, "not built in (no oneDNN at configure time; Debian: libdnnl-dev)");
    return NULL;
#else
    const nsa_config *c = &p->cfg;
    impl *d = calloc(1, sizeof *d);
    if (d == NULL) {
        snprintf(why, why_size, "out of memory");
        return NULL;
    }
    const char *isa_note = cap_isa(isa, opt->max_isa >= 0);
    const int omp = set_omp_threads(threads);
    d->p = p;
    d->threads = threads;
    d->g = c->num_q_heads / c->num_kv_heads;
    d->tile_q = bench_tile_queries(p, opt->blas_tile, SCORE_BUDGET);
    d->tiles_per_head = (p->seqlen + d->tile_q - 1) / d->tile_q;
    const size_t m = (size_t)(d->tile_q * d->g), lds = (size_t)p->seqlen;
    d->shapes = calloc((size_t)d->tiles_per_head, sizeof *d->shapes);
    d->qp = malloc(m * (size_t)c->head_dim_qk * sizeof *d->qp);
    d->s = malloc(m * lds * sizeof *d->s);
    d->o = malloc(m * (size_t)c->head_dim_v * sizeof *d->o);
    d->ones = malloc(m * sizeof *d->ones);
    if (d->shapes == NULL || d->qp == NULL || d->s == NULL || d->o == NULL || d->ones == NULL) {
        bench_dnnl_destroy(d);
        snprintf(why, why_size, "out of memory for the score tiles");
        return NULL;
    }
    for (size_t e = 0; e < m * lds; e++)
        d->s[e] = 0.0f; /* touched now, not in a timed run */
    for (size_t r = 0; r < m; r++)
        d->ones[r] = 1.0f;
    dnnl_status_t st = dnnl_engine_create(&d->engine, dnnl_cpu, 0);
    if (st == dnnl_success)
        st = dnnl_stream_create(&d->stream, d->engine, dnnl_stream_default_flags);
    if (st != dnnl_success) {
        bench_dnnl_destroy(d);
        snprintf(why, why_size, "oneDNN could not make a CPU engine (status %d)", (int)st);
        return NULL;
    }
    const dnnl_version_t *ver = dnnl_version();
    snprintf(d->description, sizeof d->description,
             "oneDNN %d.%d.%d matmul + softmax primitives, %s threads=%d, ISA %s, tiles in "
             "turn, %lld queries x G=%lld rows",
             ver->major, ver->minor, ver->patch, omp == 0 ? "OpenMP" : "OpenMP (default count)",
             threads, isa_note, (long long)d->tile_q, (long long)d->g);
    return d;
#endif
}

int bench_dnnl_run(bench_dnnl *handle, float *out)
{
#if defined(NSA_HAVE_DNNL)
    impl *d = handle;
    const int64_t hkv = d->p->cfg.num_kv_heads;
    for (int64_t i = d->tiles_per_head - 1; i >= 0; i--)
        for (int64_t h = 0; h < hkv; h++)
            if (run_tile(d, h, i, out) != 0)
                return -1;
    return 0;
#else
    (void)handle, (void)out;
    return -1;
#endif
}

const char *bench_dnnl_describe(const bench_dnnl *handle)
{
#if defined(NSA_HAVE_DNNL)
    const impl *d = handle;
    return d->error[0] != '\0' ? d->error : d->description;
#else
    (void)handle;
    return "unavailable";
#endif
}

void bench_dnnl_destroy(bench_dnnl *handle)
{
#if defined(NSA_HAVE_DNNL)
    impl *d = handle;
    if (d == NULL)
        return;
    for (int64_t i = 0; d->shapes != NULL && i < d->tiles_per_head; i++) {
        shape *sh = &d->shapes[i];
        dnnl_primitive_t prims[3] = {sh->qk, sh->softmax, sh->pv};
        dnnl_memory_t mems[5] = {sh->q, sh->kt, sh->s, sh->v, sh->o};
        for (int j = 0; j < 3; j++)
            if (prims[j] != NULL)
                dnnl_primitive_destroy(prims[j]);
        for (int j = 0; j < 5; j++)
            if (mems[j] != NULL)
                dnnl_memory_destroy(mems[j]);
    }
    if (d->stream != NULL)
        dnnl_stream_destroy(d->stream);
    if (d->engine != NULL)
        dnnl_engine_destroy(d->engine);
    free(d->shapes);
    free(d->qp);
    free(d->s);
    free(d->o);
    free(d->ones);
    free(d);
#else
    (void)handle;
#endif
}
