/* SPDX-License-Identifier: MIT */
/*
 * baseline-blas.c — dense causal attention the way one writes it with a
 * BLAS: per KV head and tile of queries (times the G heads of the group),
 * S = Q K^T with cblas_sgemm over the keys up to the tile's last query,
 * causal mask + softmax (baseline-softmax.c), O = P V with cblas_sgemm.
 * This is the baseline a user with OpenBLAS gets without a fused kernel.
 *
 * Threads, two ways: OpenBLAS's own threads inside each GEMM (tiles in
 * turn, the softmax rows split over our threads), or our threads over the
 * tiles with OpenBLAS single-threaded. --blas-mode auto times both once
 * and keeps the faster; the report says which ran.
 */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"

#if defined(NSA_HAVE_OPENBLAS)
#include <cblas.h>
#endif

/* Scores of the tiles in flight may take this much memory over all
 * workers, or 128 MiB per worker where that is more (many threads). */
#define SCORE_BUDGET ((uint64_t)512 << 20)
#define SCORE_BUDGET_PER_WORKER ((uint64_t)128 << 20)

typedef struct scratch {
    float *qp, *s, *o, *sum;
    int64_t *len;
} scratch;

struct bench_blas {
    const bench_problem *p;
    int threads;
    bench_blas_mode requested, mode;
    int64_t g, tile_q, tiles_per_head, items;
    int64_t limit; /* items a run does: all of them, or the probe's few */
    size_t lds;
    double probe_ratio;
    scratch *work; /* [threads] */
    bench_softmax_rows_fn *softmax;
    const char *softmax_isa;
    /* per run */
    float *out;
    atomic_llong next;
    char description[200];
};

#if defined(NSA_HAVE_OPENBLAS)

/* Item i: head i % Hkv, tiles from the causal triangle's long end down, so
 * the longest ones do not run alone at the end. */
static void item_tile(const bench_blas *b, int64_t i, int64_t *h, int64_t *t0, int64_t *count)
{
    const int64_t hkv = b->p->cfg.num_kv_heads;
    const int64_t tile = b->tiles_per_head - 1 - i / hkv;
    *h = i % hkv;
    *t0 = tile * b->tile_q;
    *count = b->p->seqlen - *t0 < b->tile_q ? b->p->seqlen - *t0 : b->tile_q;
}

static void scores(const bench_blas *b, const scratch *w, int64_t h, int64_t t0, int64_t count)
{
    const nsa_config *c = &b->p->cfg;
    const int64_t m = count * b->g, nk = t0 + count;
    bench_tile_pack_q(b->p, h, t0, count, w->qp);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)m, (int)nk, c->head_dim_qk, 1.0f,
                w->qp, c->head_dim_qk, b->p->k + h * c->head_dim_qk,
                c->num_kv_heads * c->head_dim_qk, 0.0f, w->s, (int)b->lds);
    bench_tile_lengths(b->p, t0, count, w->len);
}

static void output(const bench_blas *b, const scratch *w, int64_t h, int64_t t0, int64_t count)
{
    const nsa_config *c = &b->p->cfg;
    const int64_t m = count * b->g, nk = t0 + count;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)m, c->head_dim_v, (int)nk, 1.0f,
                w->s, (int)b->lds, b->p->v + h * c->head_dim_v, c->num_kv_heads * c->head_dim_v,
                0.0f, w->o, c->head_dim_v);
    bench_tile_unpack_o(b->p, h, t0, count, w->o, w->sum, b->out);
}

/* Tiles mode: each thread takes whole tiles with single-threaded GEMMs. */
static void tiles_worker(void *arg, int index, int count)
{
    bench_blas *b = arg;
    const scratch *w = &b->work[index];
    (void)count;
    for (int64_t i; (i = atomic_fetch_add(&b->next, 1)) < b->limit;) {
        int64_t h, t0, n;
        item_tile(b, i, &h, &t0, &n);
        scores(b, w, h, t0, n);
        b->softmax((size_t)(n * b->g), (size_t)(t0 + n), w->len, w->s, b->lds, w->sum);
        output(b, w, h, t0, n);
    }
}

/* OpenBLAS mode: the softmax of one tile, rows split over the threads. */
typedef struct softmax_split {
    const bench_blas *b;
    const scratch *w;
    int64_t rows, ncols;
} softmax_split;

static void softmax_worker(void *arg, int index, int count)
{
    const softmax_split *sp = arg;
    const int64_t first = sp->rows * index / count, last = sp->rows * (index + 1) / count;
    if (last > first)
        sp->b->softmax((size_t)(last - first), (size_t)sp->ncols, sp->w->len + first,
                       sp->w->s + (size_t)first * sp->b->lds, sp->b->lds, sp->w->sum + first);
}

static int run_mode(bench_blas *b, bench_blas_mode mode, float *out)
{
    b->out = out;
    if (mode == BENCH_BLAS_TILES || b->threads == 1) {
        openblas_set_num_threads(1);
        atomic_store(&b->next, 0);
        if (b->threads == 1) {
            tiles_worker(b, 0, 1);
            return 0;
        }
        return bench_parallel(b->threads, tiles_worker, b);
    }
    openblas_set_num_threads(b->threads);
    const scratch *w = &b->work[0];
    for (int64_t i = 0; i < b->limit; i++) {
        int64_t h, t0, n;
        item_tile(b, i, &h, &t0, &n);
        scores(b, w, h, t0, n);
        softmax_split sp = {.b = b, .w = w, .rows = n * b->g, .ncols = t0 + n};
        if (bench_parallel(b->threads, softmax_worker, &sp) != 0)
            return -1;
        output(b, w, h, t0, n);
    }
    return 0;
}

static void describe(bench_blas *b)
{
    const char *core = openblas_get_corename();
    if (b->mode == BENCH_BLAS_OPENBLAS)
        snprintf(b->description, sizeof b->description,
                 "OpenBLAS threads=%d (core %s), tiles in turn, %lld queries x G=%lld rows, "
                 "softmax %s on %d threads",
                 b->threads, core, (long long)b->tile_q, (long long)b->g, b->softmax_isa,
                 b->threads);
    else
        snprintf(b->description, sizeof b->description,
                 "%d pthreads over tiles, OpenBLAS 1 thread each (core %s), %lld queries x "
                 "G=%lld rows, softmax %s",
                 b->threads, core, (long long)b->tile_q, (long long)b->g, b->softmax_isa);
}

#endif /* NSA_HAVE_OPENBLAS */

void bench_blas_destroy(bench_blas *b)
{
    if (b == NULL)
        return;
    for (int w = 0; b->work != NULL && w < b->threads; w++) {
        free(b->work[w].qp);
        free(b->work[w].s);
        free(b->work[w].o);
        free(b->work[w].sum);
        free(b->work[w].len);
    }
    free(b->work);
    free(b);
}

bench_blas *bench_blas_create(const bench_problem *p, const bench_options *opt, int threads,
                              nsa_isa isa, char *why, size_t why_size)
{
#if !defined(NSA_HAVE_OPENBLAS)
    (void)p, (void)opt, (void)threads, (void)isa;
    snprintf(why, why_size, "not built in (configured without OpenBLAS)");
    return NULL;
#else
    const nsa_config *c = &p->cfg;
    bench_blas *b = calloc(1, sizeof *b);
    if (b == NULL)
        goto oom;
    b->p = p;
    b->threads = threads;
    b->requested = opt->blas_mode;
    b->mode = opt->blas_mode == BENCH_BLAS_AUTO ? BENCH_BLAS_TILES : opt->blas_mode;
    b->g = c->num_q_heads / c->num_kv_heads;
    uint64_t budget = SCORE_BUDGET / (uint64_t)threads;
    if (budget < SCORE_BUDGET_PER_WORKER)
        budget = SCORE_BUDGET_PER_WORKER;
    b->tile_q = bench_tile_queries(p, opt->blas_tile, budget);
    b->tiles_per_head = (p->seqlen + b->tile_q - 1) / b->tile_q;
    b->items = b->tiles_per_head * c->num_kv_heads;
    b->lds = ((size_t)p->seqlen + 15) / 16 * 16;
    b->softmax = bench_softmax_rows_for(isa, &b->softmax_isa);
    b->work = calloc((size_t)threads, sizeof *b->work);
    if (b->work == NULL)
        goto oom;
    const size_t m = (size_t)(b->tile_q * b->g);
    for (int w = 0; w < threads; w++) {
        scratch *s = &b->work[w];
        s->qp = malloc(m * (size_t)c->head_dim_qk * sizeof *s->qp);
        s->s = malloc(m * b->lds * sizeof *s->s);
        s->o = malloc(m * (size_t)c->head_dim_v * sizeof *s->o);
        s->sum = malloc(m * sizeof *s->sum);
        s->len = malloc(m * sizeof *s->len);
        if (s->qp == NULL || s->s == NULL || s->o == NULL || s->sum == NULL || s->len == NULL)
            goto oom;
        memset(s->s, 0, m * b->lds * sizeof *s->s); /* touched now, not in a timed run */
    }
    describe(b);
    return b;
oom:
    bench_blas_destroy(b);
    snprintf(why, why_size, "out of memory for the score tiles");
    return NULL;
#endif
}

int bench_blas_run(bench_blas *b, float *out)
{
#if defined(NSA_HAVE_OPENBLAS)
    b->limit = b->items;
    return run_mode(b, b->mode, out);
#else
    (void)b, (void)out;
    return -1;
#endif
}

int bench_blas_choose_mode(bench_blas *b, float *out)
{
#if defined(NSA_HAVE_OPENBLAS)
    if (b->requested != BENCH_BLAS_AUTO || b->threads == 1)
        return 0;
    /* The probe: the longest tiles (an eighth of the work or more), each
     * mode twice, alternating, so neither gets the cold first run alone. */
    b->limit = b->items / 8 > 4 * b->threads ? b->items / 8 : 4 * b->threads;
    if (b->limit > b->items)
        b->limit = b->items;
    double best[2] = {0.0, 0.0};
    const bench_blas_mode modes[2] = {BENCH_BLAS_TILES, BENCH_BLAS_OPENBLAS};
    for (int round = 0; round < 4; round++) {
        const int i = round % 2;
        double start = bench_now();
        if (run_mode(b, modes[i], out) != 0)
            return -1;
        double elapsed = bench_now() - start;
        if (round < 2 || elapsed < best[i])
            best[i] = elapsed;
    }
    b->mode = best[1] < best[0] ? BENCH_BLAS_OPENBLAS : BENCH_BLAS_TILES;
    b->limit = b->items;
    b->probe_ratio = best[0] / best[1];
    describe(b);
    size_t used = strlen(b->description);
    snprintf(b->description + used, sizeof b->description - used,
             " [auto: tiles/openblas time %.2f on a probe]", b->probe_ratio);
    return 0;
#else
    (void)b, (void)out;
    return -1;
#endif
}

const char *bench_blas_describe(const bench_blas *b)
{
    return b->description;
}
