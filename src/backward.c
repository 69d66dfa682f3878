/* SPDX-License-Identifier: MIT */
/*
 * backward.c — nsa_backward: the checks, the workspace and the order of the
 * passes (spec section 7; the passes themselves are described in
 * backward.h).
 *
 * Pool runs, each a barrier:
 *   1. per (sequence, KV head): pack raw keys and values into panels (and
 *      the key rows, per head), compress K and V and pack the compressed
 *      tokens too;
 *   2. without a saved record: the forward's own two passes (its tiles,
 *      then its selected branch block by block), for the log-sum-exps and
 *      the selected blocks, bit for bit what nsa_forward_train records;
 *   3. invert the selection: per (sequence, KV head, block) the queries that
 *      chose it, ascending (a counting sort);
 *   4. the query side: dq, dgates;
 *   5. the key side: dk, dv of raw keys (selected + window), gradients of
 *      the compressed tokens;
 *   6. mlp only: phi's hidden layer and its gradient;
 *   7. phi's backward into dk, dv, and phi's parameter gradients.
 * Every item writes its own outputs and is computed the same way by
 * whichever worker takes it, so the results are bitwise the same for every
 * run and thread count. Everything is allocated before the first output is
 * written, so a failing call writes nothing.
 */
#include <stdlib.h>
#include <string.h>

#include "backward.h"
#include "compress.h"
#include "compress_backward.h"
#include "geometry.h"
#include "memory.h"
#include "saved.h"
#include "selected.h"
#include "tile.h"

enum { PREPARE_TOKENS = 256 }; /* compressed tokens or keys per prepare item */

enum item_kind { PACK_RAW, COMPRESS_K, COMPRESS_V, FORWARD_TILE, FORWARD_SELECTED, INVERT,
                 QUERIES, BLOCK, COMPRESSED, HIDDEN_K, HIDDEN_V, INPUTS_K, INPUTS_V, PARAMS_K,
                 PARAMS_V };

static int64_t min64(int64_t a, int64_t b)
{
    return a < b ? a : b;
}

static int64_t seq_start(const backward_run *run, int64_t b)
{
    return run->call.batch->cu_seqlens[b];
}

static int64_t seq_len(const backward_run *run, int64_t b)
{
    return run->call.batch->cu_seqlens[b + 1] - run->call.batch->cu_seqlens[b];
}

/* ------------------------------------------------------------- prepare -- */

static void prepare(const backward_run *run, const backward_item *it, float *scratch)
{
    const nsa_plan *plan = run->call.plan;
    const nsa_config *cfg = &plan->cfg;
    const int64_t b = it->seq, h = it->head, B = run->call.batch->num_seqs;
    const int64_t hkv = cfg->num_kv_heads, dkd = cfg->head_dim_qk, dvd = cfg->head_dim_v;
    const int64_t start = seq_start(run, b), len = seq_len(run, b);
    const float *k = run->call.k + (size_t)((start * hkv + h) * dkd);
    const float *v = run->call.v + (size_t)((start * hkv + h) * dvd);
    if (it->kind == PACK_RAW) {
        nsa_pack_panels(k, (size_t)(hkv * dkd), len, dkd, it->first, it->count,
                        backward_panels(run, run->kp, run->p_offset, b, h, dkd) +
                            it->first * dkd * NSA_PANEL);
        nsa_pack_panels(v, (size_t)(hkv * dvd), len, dvd, it->first, it->count,
                        backward_panels(run, run->vp, run->p_offset, b, h, dvd) +
                            it->first * dvd * NSA_PANEL);
        float *rows = backward_key_rows(run, b, h);
        const int64_t last = min64((it->first + it->count) * NSA_PANEL, len);
        for (int64_t t = it->first * NSA_PANEL; t < last; t++)
            memcpy(rows + t * dkd, k + (size_t)(t * hkv * dkd), (size_t)dkd * sizeof *rows);
        return;
    }
    const int is_k = it->kind == COMPRESS_K;
    const int64_t dim = is_k ? dkd : dvd, total_c = run->c_offset[B];
    float *rows = (is_k ? run->kc : run->vc) + (size_t)((h * total_c + run->c_offset[b]) * dim);
    nsa_compress(plan, is_k ? run->call.cmp_k : run->call.cmp_v, (int32_t)dim, (int32_t)h,
                 is_k ? k : v, (size_t)(hkv * dim), it->first, it->count,
                 rows + it->first * dim, scratch);
    /* it->first is a multiple of PREPARE_TOKENS, so a panel boundary. */
    nsa_pack_panels(rows, (size_t)dim, run->c_offset[b + 1] - run->c_offset[b], dim,
                    it->first / NSA_PANEL, nsa_panels_of(it->count),
                    backward_panels(run, is_k ? run->kcp : run->vcp, run->cp_offset, b, h, dim) +
                        it->first * dim);
}

static int64_t prepare_items(const backward_run *run, backward_item *items)
{
    const int64_t B = run->call.batch->num_seqs, hkv = run->call.plan->cfg.num_kv_heads;
    int64_t n = 0;
    for (int64_t b = 0; b < B; b++) {
        const int64_t nc = run->c_offset[b + 1] - run->c_offset[b];
        const int64_t np = run->p_offset[b + 1] - run->p_offset[b];
        for (int32_t h = 0; h < hkv; h++) {
            for (int64_t first = 0; first < nc; first += PREPARE_TOKENS)
                for (int32_t kind = COMPRESS_K; kind <= COMPRESS_V; kind++, n++)
                    if (items != NULL)
                        items[n] = (backward_item){.seq = (int32_t)b, .head = h, .kind = kind,
                                                   .first = first,
                                                   .count = min64(nc - first, PREPARE_TOKENS)};
            for (int64_t first = 0; first < np; first += PREPARE_TOKENS / NSA_PANEL, n++)
                if (items != NULL)
                    items[n] = (backward_item){
                        .seq = (int32_t)b, .head = h, .kind = PACK_RAW, .first = first,
                        .count = min64(np - first, PREPARE_TOKENS / NSA_PANEL)};
        }
    }
    return n;
}

/* ------------------------------------------------- forward record, again -- */

/* The forward's tile it (the forward's own tiling and passes, so the same
 * bits), with its output dropped into scratch: only the log-sum-exps and
 * blocks stay. The selected branch is left to forward_selected, as the
 * forward leaves it to its third pass. */
static nsa_tile forward_tile_of(const backward_run *run, const backward_item *it, float *out)
{
    const nsa_plan *plan = run->call.plan;
    const nsa_config *cfg = &plan->cfg;
    const int64_t b = it->seq, h = it->head, B = run->call.batch->num_seqs;
    const int64_t g = plan->group_size, hq = cfg->num_q_heads, hkv = cfg->num_kv_heads;
    const int64_t dkd = cfg->head_dim_qk, dvd = cfg->head_dim_v, n = cfg->sel_count;
    const int64_t start = seq_start(run, b), len = seq_len(run, b);
    const int64_t token = start + it->first, T = run->call.batch->total_tokens;
    return (nsa_tile){
        .raw = {.kp = backward_panels(run, run->kp, run->p_offset, b, h, dkd),
                .v = run->call.v + (size_t)((start * hkv + h) * dvd),
                .ldv = (size_t)(hkv * dvd),
                .count = len},
        .compressed = {.kp = backward_panels(run, run->kcp, run->cp_offset, b, h, dkd),
                       .v = run->vc + (size_t)((h * run->c_offset[B] + run->c_offset[b]) * dvd),
                       .ldv = (size_t)dvd,
                       .count = run->c_offset[b + 1] - run->c_offset[b]},
        .len = len,
        .first = it->first,
        .count = it->count,
        .q = run->call.q + (size_t)((token * hq + h * g) * dkd),
        .gates = run->call.gates + (size_t)((token * hq + h * g) * 3),
        .out = out,
        .q_stride = (size_t)(hq * dkd),
        .gates_stride = (size_t)(hq * 3),
        .out_stride = (size_t)(g * dvd),
        .indices_out = run->own_blocks + (size_t)((token * hkv + h) * n),
        .index_stride = (size_t)(hkv * n),
        .defer_selected = 1,
        .lse = run->own_lse + (size_t)(token * hq + h * g),
        .lse_stride = (size_t)hq,
        .lse_branch_stride = (size_t)(T * hq),
    };
}

static void forward_tile(const backward_run *run, const backward_item *it, float *scratch)
{
    const nsa_plan *plan = run->call.plan;
    const int64_t queries = nsa_tile_queries(plan, 0);
    const nsa_tile tile = forward_tile_of(run, it, scratch);
    nsa_tile_attend(plan, &tile, queries, run->call.max_len,
                    scratch + (size_t)(queries * plan->group_size * plan->cfg.head_dim_v));
}

/* The forward's selected branch of a chunk of queries, for its log-sum-exp. */
static void forward_selected(const backward_run *run, const backward_item *it, float *scratch)
{
    const nsa_plan *plan = run->call.plan;
    const nsa_config *cfg = &plan->cfg;
    const int64_t g = plan->group_size, hq = cfg->num_q_heads;
    const int64_t T = run->call.batch->total_tokens, queries = nsa_selected_chunk_queries(plan);
    const size_t out_floats = (size_t)(queries * g * cfg->head_dim_v);
    const nsa_tile tile = forward_tile_of(run, it, scratch); /* its keys and strides */
    const int64_t token = seq_start(run, it->seq) + it->first;
    const nsa_selected_job job = {
        .raw = tile.raw, .len = tile.len, .first = it->first, .count = it->count,
        .q = tile.q, .gates = tile.gates, .out = tile.out, .q_stride = tile.q_stride,
        .gates_stride = tile.gates_stride, .out_stride = tile.out_stride,
        .blocks = tile.indices_out, .index_stride = tile.index_stride,
        .lse = run->own_lse + (size_t)(T * hq + token * hq + it->head * g),
        .lse_stride = (size_t)hq};
    memset(scratch, 0, out_floats * sizeof *scratch); /* the job adds to its output */
    nsa_selected_attend(plan, &job, scratch + out_floats);
}

static size_t forward_scratch(const backward_run *run)
{
    const nsa_plan *plan = run->call.plan;
    const int64_t tile = nsa_tile_queries(plan, 0), chunk = nsa_selected_chunk_queries(plan);
    const size_t dv = (size_t)(plan->group_size * plan->cfg.head_dim_v);
    const size_t tiles = (size_t)tile * dv + nsa_tile_scratch_floats(plan, tile, run->call.max_len);
    const size_t chunks = (size_t)chunk * dv + nsa_selected_scratch_floats(plan, run->call.max_len);
    return tiles > chunks ? tiles : chunks;
}

/* ---------------------------------------------------------- inversion -- */

/* Per block of sequence it->seq, the queries that chose it for KV head
 * it->head: a counting sort over the queries in ascending order, so each
 * list comes out ascending. */
static void invert(const backward_run *run, const backward_item *it)
{
    const nsa_config *cfg = &run->call.plan->cfg;
    const int64_t b = it->seq, h = it->head, B = run->call.batch->num_seqs;
    const int64_t n = cfg->sel_count, hkv = cfg->num_kv_heads, T = run->call.batch->total_tokens;
    const int64_t start = seq_start(run, b), len = seq_len(run, b);
    const int64_t blocks = nsa_num_blocks(cfg, len);
    int64_t *first = run->selector_first + h * (run->b_offset[B] + B) + run->b_offset[b] + b;
    int32_t *list = run->selectors + (size_t)(h * T * n);
    memset(first, 0, (size_t)(blocks + 1) * sizeof *first);
    for (int64_t t = 0; t < len; t++) {
        const int32_t *chosen = run->blocks + (size_t)(((start + t) * hkv + h) * n);
        for (int64_t s = 0; s < n; s++)
            if (chosen[s] >= 0)
                first[chosen[s] + 1]++;
    }
    first[0] = start * n; /* the sequence's region of the head's list */
    for (int64_t j = 0; j < blocks; j++)
        first[j + 1] += first[j];
    /* Fill with first[j] as block j's cursor, which leaves first[j] at the
     * start of block j + 1; then shift back. */
    for (int64_t t = 0; t < len; t++) {
        const int32_t *chosen = run->blocks + (size_t)(((start + t) * hkv + h) * n);
        for (int64_t s = 0; s < n; s++)
            if (chosen[s] >= 0)
                list[first[chosen[s]]++] = (int32_t)t;
    }
    for (int64_t j = blocks; j > 0; j--)
        first[j] = first[j - 1];
    first[0] = start * n;
}

static int64_t per_head_items(const backward_run *run, backward_item *items, int kind)
{
    const int64_t B = run->call.batch->num_seqs, hkv = run->call.plan->cfg.num_kv_heads;
    int64_t n = 0;
    for (int64_t b = 0; b < B; b++)
        for (int32_t h = 0; h < hkv; h++, n++)
            if (items != NULL)
                items[n] = (backward_item){.seq = (int32_t)b, .head = h, .kind = kind};
    return n;
}

/* The forward's tiles (kind FORWARD_TILE) or selected chunks: the items
 * of its second and third passes. */
static int64_t forward_pass_items(const backward_run *run, backward_item *items, int kind)
{
    const int64_t B = run->call.batch->num_seqs, hkv = run->call.plan->cfg.num_kv_heads;
    const int64_t step = kind == FORWARD_TILE ? nsa_tile_queries(run->call.plan, 0)
                                              : nsa_selected_chunk_queries(run->call.plan);
    int64_t n = 0;
    for (int64_t b = 0; b < B; b++)
        for (int64_t first = 0; first < seq_len(run, b); first += step)
            for (int32_t h = 0; h < hkv; h++, n++)
                if (items != NULL)
                    items[n] = (backward_item){.seq = (int32_t)b, .head = h, .kind = kind,
                                               .first = first,
                                               .count = min64(step, seq_len(run, b) - first)};
    return n;
}

static int64_t forward_items(const backward_run *run, backward_item *items)
{
    return forward_pass_items(run, items, FORWARD_TILE);
}

static int64_t forward_selected_items(const backward_run *run, backward_item *items)
{
    return forward_pass_items(run, items, FORWARD_SELECTED);
}

/* ---------------------------------------------------- attention passes -- */

/* Keys the queries [first, first + count) of a sequence of length len
 * attend to, roughly. */
static int64_t query_keys(const nsa_config *cfg, int64_t t, int64_t len)
{
    const int64_t seen = cfg->causal ? t + 1 : len;
    const int64_t selected = (int64_t)cfg->sel_count * cfg->sel_block;
    return nsa_visible_compressed(cfg, t, len) + min64(seen, selected) + min64(seen, cfg->window);
}

static int64_t query_items(const backward_run *run, backward_item *items)
{
    const nsa_config *cfg = &run->call.plan->cfg;
    const int64_t B = run->call.batch->num_seqs, step = run->tile_queries;
    int64_t n = 0;
    for (int64_t b = 0; b < B; b++) {
        const int64_t len = seq_len(run, b);
        for (int64_t first = 0; first < len; first += step)
            for (int32_t h = 0; h < cfg->num_kv_heads; h++, n++)
                if (items != NULL) {
                    const int64_t count = min64(step, len - first);
                    items[n] = (backward_item){
                        .seq = (int32_t)b, .head = h, .kind = QUERIES, .first = first,
                        .count = count, .cost = count * query_keys(cfg, first + count - 1, len)};
                }
    }
    return n;
}

static int64_t key_items(const backward_run *run, backward_item *items)
{
    const nsa_config *cfg = &run->call.plan->cfg;
    const int64_t B = run->call.batch->num_seqs;
    int64_t n = 0;
    for (int64_t b = 0; b < B; b++) {
        const int64_t len = seq_len(run, b), blocks = nsa_num_blocks(cfg, len);
        const int64_t nc = run->c_offset[b + 1] - run->c_offset[b];
        for (int32_t h = 0; h < cfg->num_kv_heads; h++) {
            for (int64_t j = 0; j < blocks; j++, n++)
                if (items != NULL) {
                    const int64_t *first = run->selector_first + h * (run->b_offset[B] + B) +
                                           run->b_offset[b] + b;
                    const int64_t selecting = first[j + 1] - first[j];
                    items[n] = (backward_item){
                        .seq = (int32_t)b, .head = h, .kind = BLOCK, .first = j, .count = 1,
                        .cost = cfg->sel_block * (selecting + cfg->window + cfg->sel_block)};
                }
            for (int64_t i = 0; i < nc; i += NSA_GRAD_CMP_KEYS, n++)
                if (items != NULL) {
                    const int64_t q0 = cfg->causal ? i * cfg->cmp_stride + cfg->cmp_block - 1
                                                   : 0;
                    items[n] = (backward_item){
                        .seq = (int32_t)b, .head = h, .kind = COMPRESSED, .first = i,
                        .count = min64(NSA_GRAD_CMP_KEYS, nc - i),
                        .cost = NSA_GRAD_CMP_KEYS * (len - q0)};
                }
        }
    }
    return n;
}

/* Longest items first, so the expensive end of the causal triangle does
 * not run alone on one worker at the end; ties in a fixed order. */
static int compare_cost_descending(const void *a, const void *b)
{
    const backward_item *x = a, *y = b;
    if (x->cost != y->cost)
        return x->cost > y->cost ? -1 : 1;
    if (x->kind != y->kind)
        return x->kind < y->kind ? -1 : 1;
    if (x->seq != y->seq)
        return x->seq < y->seq ? -1 : 1;
    if (x->first != y->first)
        return x->first < y->first ? -1 : 1;
    return (x->head > y->head) - (x->head < y->head);
}

/* ----------------------------------------------------------- phi's pass -- */

static int64_t phi_items(const backward_run *run, backward_item *items, int hidden)
{
    const nsa_config *cfg = &run->call.plan->cfg;
    const int64_t B = run->call.batch->num_seqs;
    int64_t n = 0;
    if (hidden && cfg->compress != NSA_COMPRESS_MLP)
        return 0;
    for (int64_t b = 0; b < B; b++) {
        const int64_t nc = run->c_offset[b + 1] - run->c_offset[b], len = seq_len(run, b);
        if (nc == 0)
            continue;
        const int64_t count = hidden ? nc : len;
        const int64_t step = hidden ? NSA_PHI_HIDDEN_TOKENS : NSA_PHI_GRAD_TOKENS;
        for (int32_t h = 0; h < cfg->num_kv_heads; h++)
            for (int64_t first = 0; first < count; first += step)
                for (int32_t tensor = 0; tensor < 2; tensor++, n++)
                    if (items != NULL)
                        items[n] = (backward_item){
                            .seq = (int32_t)b, .head = h, .first = first,
                            .kind = (hidden ? HIDDEN_K : INPUTS_K) + tensor,
                            .count = min64(step, count - first)};
    }
    if (hidden)
        return n;
    const int32_t parts = nsa_compress_backward_parts(cfg);
    for (int32_t tensor = 0; tensor < 2; tensor++) {
        if ((tensor == 0 ? run->grad_k : run->grad_v) == NULL)
            continue;
        for (int32_t h = 0; h < cfg->num_kv_heads; h++)
            for (int32_t part = 0; part < parts; part++, n++)
                if (items != NULL)
                    items[n] = (backward_item){.head = h, .first = part,
                                               .kind = PARAMS_K + tensor};
    }
    return n;
}

static nsa_phi_batch phi_batch(const backward_run *run, int is_k, int64_t h)
{
    const nsa_config *cfg = &run->call.plan->cfg;
    const int64_t B = run->call.batch->num_seqs, total_c = run->c_offset[B];
    const int64_t dim = is_k ? cfg->head_dim_qk : cfg->head_dim_v, m = cfg->cmp_mlp_hidden;
    const float *x = is_k ? run->call.k : run->call.v;
    const int t = is_k ? 0 : 1;
    return (nsa_phi_batch){
        .num_seqs = B,
        .cu_seqlens = run->call.batch->cu_seqlens,
        .c_offset = run->c_offset,
        .x = x + (size_t)(h * dim),
        .ldx = (size_t)(cfg->num_kv_heads * dim),
        .dy = (is_k ? run->dkc : run->dvc) + (size_t)(h * total_c * dim),
        .hidden = run->hidden[t] != NULL ? run->hidden[t] + (size_t)(h * total_c * m) : NULL,
        .dhidden = run->dhidden[t] != NULL ? run->dhidden[t] + (size_t)(h * total_c * m) : NULL,
    };
}

static void phi_item(const backward_run *run, const backward_item *it, float *scratch)
{
    const nsa_plan *plan = run->call.plan;
    const nsa_config *cfg = &plan->cfg;
    const int is_k = it->kind == HIDDEN_K || it->kind == INPUTS_K || it->kind == PARAMS_K;
    const int64_t dim = is_k ? cfg->head_dim_qk : cfg->head_dim_v, m = cfg->cmp_mlp_hidden;
    const int64_t hkv = cfg->num_kv_heads, h = it->head;
    const nsa_compress_params *params = is_k ? run->call.cmp_k : run->call.cmp_v;
    const nsa_phi_batch batch = phi_batch(run, is_k, h);
    if (it->kind == PARAMS_K || it->kind == PARAMS_V) {
        nsa_compress_backward_params(plan, params, is_k ? run->grad_k : run->grad_v,
                                     (int32_t)dim, (int32_t)h, (int32_t)it->first, &batch,
                                     scratch);
        return;
    }
    const int64_t b = it->seq, start = seq_start(run, b), c0 = run->c_offset[b];
    if (it->kind == HIDDEN_K || it->kind == HIDDEN_V) {
        const size_t row = (size_t)((h * run->c_offset[run->call.batch->num_seqs] + c0 +
                                     it->first) * m);
        nsa_compress_backward_hidden(plan, params, (int32_t)dim, (int32_t)h,
                                     batch.x + (size_t)start * batch.ldx, batch.ldx, it->first,
                                     it->count, batch.dy + (size_t)((c0 + it->first) * dim),
                                     run->hidden[is_k ? 0 : 1] + row,
                                     run->dhidden[is_k ? 0 : 1] + row);
        return;
    }
    float *dx = (is_k ? run->dk : run->dv) + (size_t)((start * hkv + h) * dim);
    nsa_compress_backward_inputs(plan, params, (int32_t)dim, (int32_t)h,
                                 run->c_offset[b + 1] - c0, batch.dy + (size_t)(c0 * dim),
                                 batch.dhidden != NULL ? batch.dhidden + (size_t)(c0 * m) : NULL,
                                 it->first, it->count, dx, (size_t)(hkv * dim), scratch);
}

/* ---------------------------------------------------------------- pool -- */

static void worker(void *arg, int32_t index, int32_t num_workers)
{
    backward_run *run = arg;
    float *scratch = run->scratch[index];
    (void)num_workers;
    for (int64_t i; (i = nsa_work_queue_take(&run->queue)) >= 0;) {
        const backward_item *it = &run->items[i];
        switch (it->kind) {
        case PACK_RAW:
        case COMPRESS_K:
        case COMPRESS_V: prepare(run, it, scratch); break;
        case FORWARD_TILE: forward_tile(run, it, scratch); break;
        case FORWARD_SELECTED: forward_selected(run, it, scratch); break;
        case INVERT: invert(run, it); break;
        case QUERIES: nsa_backward_queries(run, it, scratch); break;
        case BLOCK: nsa_backward_block(run, it, scratch); break;
        case COMPRESSED: nsa_backward_compressed(run, it, scratch); break;
        default: phi_item(run, it, scratch); break;
        }
    }
}

/* Runs the items `make` lists on every worker, in cost order if asked. */
static void run_items(backward_run *run, int64_t (*make)(const backward_run *, backward_item *),
                      int sort)
{
    const int64_t n = make(run, run->items);
    if (sort)
        qsort(run->items, (size_t)n, sizeof *run->items, compare_cost_descending);
    nsa_work_queue_init(&run->queue, n);
    nsa_pool_run(run->call.plan->ctx->pool, worker, run);
}

static int64_t invert_items(const backward_run *run, backward_item *items)
{
    return per_head_items(run, items, INVERT);
}

static int64_t hidden_items(const backward_run *run, backward_item *items)
{
    return phi_items(run, items, 1);
}

static int64_t input_and_param_items(const backward_run *run, backward_item *items)
{
    return phi_items(run, items, 0);
}

/* -------------------------------------------------------------- memory -- */

static void run_free(backward_run *run, int32_t workers)
{
    nsa_worker_scratch_free(run->scratch, workers);
    free(run->items);
    float *large[] = {run->kp, run->vp, run->kr, run->kcp, run->vcp};
    for (size_t i = 0; i < sizeof large / sizeof *large; i++)
        nsa_free_large(large[i]);
    float *buffers[] = {run->kc, run->vc, run->dkc, run->dvc, run->hidden[0], run->hidden[1],
                        run->dhidden[0], run->dhidden[1], run->own_lse};
    for (size_t i = 0; i < sizeof buffers / sizeof *buffers; i++)
        free(buffers[i]);
    free(run->own_blocks);
    free(run->selector_first);
    free(run->selectors);
    free(run->c_offset);
}

/* The packed keys and values the passes read in scattered blocks: on huge
 * pages where the system allows (memory.h). */
static void *alloc_large_floats(int64_t count)
{
    return nsa_alloc_large((size_t)count * sizeof(float) + sizeof(float), 0);
}

static size_t max_size(size_t a, size_t b)
{
    return a > b ? a : b;
}

/* The checks proved T * heads * D fits; every buffer here is at most a small
 * multiple of that. */
static nsa_status run_alloc(backward_run *run, int need_record, int32_t workers)
{
    const forward_call *call = &run->call;
    const nsa_plan *plan = call->plan;
    const nsa_config *cfg = &plan->cfg;
    const int64_t B = call->batch->num_seqs, T = call->batch->total_tokens;
    const int64_t hkv = cfg->num_kv_heads, hq = cfg->num_q_heads, n = cfg->sel_count;
    const int64_t dkd = cfg->head_dim_qk, dvd = cfg->head_dim_v;
    run->tile_queries = nsa_tile_queries(plan, 0);
    run->c_offset = malloc(4 * (size_t)(B + 1) * sizeof *run->c_offset);
    if (run->c_offset == NULL)
        return NSA_ERROR_OUT_OF_MEMORY;
    run->p_offset = run->c_offset + B + 1;
    run->cp_offset = run->p_offset + B + 1;
    run->b_offset = run->cp_offset + B + 1;
    run->c_offset[0] = run->p_offset[0] = run->cp_offset[0] = run->b_offset[0] = 0;
    for (int64_t b = 0; b < B; b++) {
        const int64_t len = seq_len(run, b), nc = nsa_num_compressed(cfg, len);
        run->c_offset[b + 1] = run->c_offset[b] + nc;
        run->p_offset[b + 1] = run->p_offset[b] + nsa_panels_of(len);
        run->cp_offset[b + 1] = run->cp_offset[b] + nsa_panels_of(nc);
        run->b_offset[b + 1] = run->b_offset[b] + nsa_num_blocks(cfg, len);
    }
    const int64_t total_c = run->c_offset[B];
    run->kp = alloc_large_floats(hkv * run->p_offset[B] * NSA_PANEL * dkd);
    run->vp = alloc_large_floats(hkv * run->p_offset[B] * NSA_PANEL * dvd);
    run->kr = alloc_large_floats(hkv * T * dkd);
    run->kc = nsa_alloc_floats(hkv * total_c * dkd);
    run->vc = nsa_alloc_floats(hkv * total_c * dvd);
    run->kcp = alloc_large_floats(hkv * run->cp_offset[B] * NSA_PANEL * dkd);
    run->vcp = alloc_large_floats(hkv * run->cp_offset[B] * NSA_PANEL * dvd);
    run->dkc = nsa_alloc_floats(hkv * total_c * dkd);
    run->dvc = nsa_alloc_floats(hkv * total_c * dvd);
    int ok = run->kp && run->vp && run->kr && run->kc && run->vc && run->kcp && run->vcp &&
             run->dkc && run->dvc;
    if (cfg->compress == NSA_COMPRESS_MLP)
        for (int t = 0; t < 2; t++) {
            run->hidden[t] = nsa_alloc_floats(hkv * total_c * cfg->cmp_mlp_hidden);
            run->dhidden[t] = nsa_alloc_floats(hkv * total_c * cfg->cmp_mlp_hidden);
            ok = ok && run->hidden[t] && run->dhidden[t];
        }
    if (need_record) {
        run->own_lse = nsa_alloc_floats(3 * T * hq);
        run->own_blocks = malloc((size_t)(T * hkv * n) * sizeof *run->own_blocks + 1);
        run->lse = run->own_lse;
        run->blocks = run->own_blocks;
        ok = ok && run->own_lse && run->own_blocks;
    }
    run->selector_first =
        malloc((size_t)(hkv * (run->b_offset[B] + B) + 1) * sizeof *run->selector_first);
    run->selectors = malloc((size_t)(hkv * T * n) * sizeof *run->selectors + 1);
    ok = ok && run->selector_first && run->selectors;

    int64_t items = prepare_items(run, NULL);
    int64_t (*const counts[])(const backward_run *, backward_item *) = {
        forward_items, forward_selected_items, invert_items, query_items, key_items,
        hidden_items, input_and_param_items};
    for (size_t i = 0; i < sizeof counts / sizeof *counts; i++) {
        const int64_t count = counts[i](run, NULL);
        items = items > count ? items : count;
    }
    run->items = malloc((size_t)items * sizeof *run->items + 1);
    ok = ok && run->items;

    size_t floats = max_size(nsa_compress_workspace(cfg, (int32_t)dkd),
                             nsa_compress_workspace(cfg, (int32_t)dvd));
    floats = max_size(floats, nsa_backward_queries_scratch(run));
    floats = max_size(floats, nsa_backward_keys_scratch(run));
    floats = max_size(floats, nsa_compress_backward_workspace(cfg, (int32_t)dkd));
    floats = max_size(floats, nsa_compress_backward_workspace(cfg, (int32_t)dvd));
    if (need_record)
        floats = max_size(floats, forward_scratch(run));
    run->scratch_floats = floats;
    run->scratch = nsa_worker_scratch_alloc(workers, floats);
    if (!ok || run->scratch == NULL)
        return NSA_ERROR_OUT_OF_MEMORY;
    return NSA_SUCCESS;
}

/* ---------------------------------------------------------------- checks -- */

/* Every argument, before any work: the forward's checks on the inputs, then
 * the backward's own tensors and the saved record. */
static nsa_status check_backward(backward_run *run, const nsa_saved *saved)
{
    const nsa_plan *plan = run->call.plan;
    /* The forward's checks want an output; the backward's outputs are
     * checked below under their own names. */
    float placeholder;
    run->call.out = &placeholder;
    nsa_status status = nsa_forward_check(&run->call);
    run->call.out = NULL;
    if (status != NSA_SUCCESS)
        return status;
    const int64_t T = run->call.batch->total_tokens;
    const struct {
        const char *name;
        const void *ptr;
    } tensors[] = {{"dout", run->dout}, {"dq", run->dq}, {"dk", run->dk}, {"dv", run->dv},
                   {"dgates", run->dgates}};
    for (size_t i = 0; T > 0 && i < sizeof tensors / sizeof *tensors; i++)
        if (tensors[i].ptr == NULL)
            return nsa_fail(plan->ctx, NSA_ERROR_NULL_POINTER, "%s is NULL", tensors[i].name);
    if (saved == NULL)
        return NSA_SUCCESS;
    status = nsa_saved_check(plan, saved, T);
    if (status == NSA_SUCCESS && T > 0 && saved->tokens != T)
        status = nsa_fail(plan->ctx, NSA_ERROR_MISMATCH,
                          "saved holds the forward of a batch of %lld tokens, this batch has "
                          "%lld",
                          (long long)saved->tokens, (long long)T);
    return status;
}

/* A batch with no token still has parameter gradients: zero. */
static nsa_status zero_param_grads(backward_run *run)
{
    const nsa_plan *plan = run->call.plan;
    const nsa_config *cfg = &plan->cfg;
    const int64_t c_offset[1] = {0};
    float *workspace = nsa_alloc_floats((int64_t)max_size(
        nsa_compress_backward_workspace(cfg, cfg->head_dim_qk),
        nsa_compress_backward_workspace(cfg, cfg->head_dim_v)));
    if (workspace == NULL)
        return nsa_fail(plan->ctx, NSA_ERROR_OUT_OF_MEMORY, "no memory for a small workspace");
    for (int tensor = 0; tensor < 2; tensor++) {
        const nsa_compress_grads *grads = tensor == 0 ? run->grad_k : run->grad_v;
        const int32_t dim = tensor == 0 ? cfg->head_dim_qk : cfg->head_dim_v;
        const nsa_phi_batch batch = {.num_seqs = 0, .c_offset = c_offset};
        for (int32_t h = 0; grads != NULL && h < cfg->num_kv_heads; h++)
            for (int32_t part = 0; part < nsa_compress_backward_parts(cfg); part++)
                nsa_compress_backward_params(plan, tensor == 0 ? run->call.cmp_k
                                                               : run->call.cmp_v,
                                             grads, dim, h, part, &batch, workspace);
    }
    free(workspace);
    return NSA_SUCCESS;
}

nsa_status nsa_backward(const nsa_plan *plan, const nsa_batch *batch, const float *q,
                        const float *k, const float *v, const float *gates,
                        const nsa_compress_params *cmp_k, const nsa_compress_params *cmp_v,
                        const float *dout, const nsa_saved *saved, float *dq, float *dk,
                        float *dv, float *dgates, const nsa_compress_grads *grad_k,
                        const nsa_compress_grads *grad_v)
{
    if (plan == NULL)
        return NSA_ERROR_NULL_POINTER;
    backward_run run = {
        .call = {.plan = plan, .batch = batch, .q = q, .k = k, .v = v, .gates = gates,
                 .cmp_k = cmp_k, .cmp_v = cmp_v},
        .dout = dout, .dq = dq, .dk = dk, .dv = dv, .dgates = dgates,
        .grad_k = grad_k, .grad_v = grad_v,
    };
    nsa_status status = check_backward(&run, saved);
    if (status != NSA_SUCCESS)
        return status;
    if (batch->total_tokens == 0)
        return zero_param_grads(&run);

    nsa_context *ctx = plan->ctx;
    const int32_t workers = ctx->num_threads;
    if (saved != NULL) {
        run.lse = saved->lse;
        run.blocks = saved->indices;
    }
    status = run_alloc(&run, saved == NULL, workers);
    if (status != NSA_SUCCESS) {
        run_free(&run, workers);
        return nsa_fail(ctx, status, "no memory for the backward's workspace of %lld tokens",
                        (long long)batch->total_tokens);
    }
    run_items(&run, prepare_items, 0);
    if (saved == NULL) {
        run_items(&run, forward_items, 0);
        run_items(&run, forward_selected_items, 0);
    }
    run_items(&run, invert_items, 0);
    run_items(&run, query_items, 1);
    run_items(&run, key_items, 1);
    run_items(&run, hidden_items, 0);
    run_items(&run, input_and_param_items, 0);
    run_free(&run, workers);
    return NSA_SUCCESS;
}
