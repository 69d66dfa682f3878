/* SPDX-License-Identifier: MIT */
/*
 * forward.c — the NSA forward pipeline (spec sections 1-6 and 9).
 *
 * Phase 1, per (sequence, KV head): pack the keys into panels for the qk
 * kernel, and compress K and V (then pack the compressed keys too).
 * Phase 2, per tile of consecutive queries of one (sequence, KV head): the
 * tile's rows are its queries x the G heads of the group, so each key the
 * kernels load is used by every row. The tile attends to the compressed
 * tokens, scores and selects blocks per query, attends to the union of the
 * selected blocks (rows whose query did not choose a block are masked) and
 * to the union of the windows, then mixes the branches with the gates.
 * Consecutive queries share most of their blocks and window, which is what
 * keeps small groups (G = 1, 2, 4) as efficient as G = 16.
 *
 * Work items go to the context's workers through a shared queue; each item
 * is computed the same way whoever takes it, so results are bitwise the
 * same for every thread count. Memory is O(T); everything is allocated
 * before the first output is written, so a failing call writes nothing.
 */
#include <stdlib.h>
#include <string.h>

#include "compress.h"
#include "forward.h"
#include "geometry.h"
#include "memory.h"
#include "saved.h"
#include "selected.h"
#include "split_keys.h"
#include "tile.h"

/* A unit of work: phase 1 packs and compresses panels [first, first+count)
 * of one sequence, head and tensor; phase 2 attends queries
 * [first, first+count) of one sequence and KV head. */
typedef struct work_item {
    int32_t seq, head, tensor; /* tensor: 0 = K, 1 = V (phase 1) */
    int64_t first, count;
    int64_t cost; /* phase 2: most expensive first */
} work_item;

enum { COMPRESS_ITEM_TOKENS = 256 }; /* a multiple of NSA_PANEL */

/* One call in flight. */
typedef struct forward_run {
    forward_call call;
    int64_t tile_queries; /* per work item */
    /* Per sequence b, offsets [b] of its first compressed token, first key
     * panel and first compressed-key panel; entry [B] is the total. */
    int64_t *c_offset, *p_offset, *cp_offset;
    float *kc, *vc; /* compressed rows [Hkv][total compressed][D] */
    float *kp;      /* key panels [Hkv][total panels][Dk][NSA_PANEL] */
    float *vp;      /* values per head [Hkv][T][Dv] */
    float *kcp;     /* compressed key panels, same layout */
    /* Or, when the plan's kernels run on tile products (split_fp32), the
     * same split (split_keys.h): key panels [Hkv][total panels][x3
     * panel] and value pair rows [Hkv][total panels * 8][3][2 Dv] (kp3,
     * vp3) for dense attention instead of kp and vp; for NSA the
     * compressed ones on the compressed panels (kcp3, vcp3) instead of
     * kcp, the raw keys staying fp32 (see split_raw_keys). */
    uint16_t *kp3, *vp3, *kcp3, *vcp3;
    int32_t *blocks;  /* [T][Hkv][n]: the selections, for phase 3 */
    int32_t *own_blocks; /* the same, when the caller did not ask for them */
    work_item *items;
    nsa_work_queue queue;
    float **scratch; /* per worker */
    size_t scratch_floats;
} forward_run;

static float *seq_panels(const forward_run *run, float *base, const int64_t *offset,
                               int64_t b, int64_t h)
{
    const int64_t B = run->call.batch->num_seqs, dk = run->call.plan->cfg.head_dim_qk;
    return base + (size_t)((h * offset[B] + offset[b]) * dk * NSA_PANEL);
}

/* The fp32 value rows of sequence b and head h ([Hkv][total tokens][Dv]). */
static float *seq_values(const forward_run *run, int64_t b, int64_t h)
{
    const nsa_batch *batch = run->call.batch;
    return run->vp + (size_t)((h * batch->total_tokens + batch->cu_seqlens[b]) *
                              run->call.plan->cfg.head_dim_v);
}

/* Pair rows of split values per panel of keys. */
enum { PAIRS_PER_PANEL = NSA_PANEL / 2 };

/* Words of the split keys (values = 0) or values of one panel of keys. */
static size_t split_panel_words(const nsa_config *cfg, int values)
{
    return values ? PAIRS_PER_PANEL * nsa_x3_pair_words((size_t)cfg->head_dim_v)
                  : nsa_x3_panel_words((size_t)cfg->head_dim_qk);
}

/* The split key panels or value pair rows of sequence b and head h, on
 * panels counted by offset. */
static uint16_t *seq_split(const forward_run *run, uint16_t *base, const int64_t *offset,
                           int64_t b, int64_t h, int values)
{
    const int64_t B = run->call.batch->num_seqs;
    return base + (size_t)(h * offset[B] + offset[b]) *
                      split_panel_words(&run->call.plan->cfg, values);
}

/* Panels [first, first + count) of x's rows (row i at x + i * ldx, rows
 * past len are zero) into dst, panel-major [count][dk][NSA_PANEL]. */
static void pack_panels(const float *x, size_t ldx, int64_t len, int64_t dk, int64_t first,
                        int64_t count, float *dst)
{
    for (int64_t p = first; p < first + count; p++) {
        for (int64_t j = 0; j < NSA_PANEL; j++) {
            int64_t key = p * NSA_PANEL + j;
            const float *row = key < len ? x + (size_t)key * ldx : NULL;
            for (int64_t c = 0; c < dk; c++)
                dst[(c * NSA_PANEL + j)] = row != NULL ? row[c] : 0.0f;
        }
        dst += dk * NSA_PANEL;
    }
}

/* ------------------------------------------------------------- phase 1 -- */

/* Packs panels [first, first + count) of sequence b's raw keys for KV head
 * h, and the same tokens' values: split for the x3 kernels, fp32 for the
 * FMA ones, or both, as run_alloc allocated them. */
static void pack_raw_keys(const forward_run *run, int64_t b, int64_t h, int64_t first,
                          int64_t count)
{
    const forward_call *call = &run->call;
    const nsa_config *cfg = &call->plan->cfg;
    const int64_t hkv = cfg->num_kv_heads, dk = cfg->head_dim_qk, dv = cfg->head_dim_v;
    const int64_t start = call->batch->cu_seqlens[b];
    const int64_t len = call->batch->cu_seqlens[b + 1] - start;
    const float *k = call->k + (size_t)((start * hkv + h) * dk);
    const float *v = call->v + (size_t)((start * hkv + h) * dv);
    if (run->kp3 != NULL) { /* panels and pair rows */
        nsa_pack_panels_x3(k, (size_t)(hkv * dk), len, dk, first, count,
                           seq_split(run, run->kp3, run->p_offset, b, h, 0) +
                               (size_t)first * split_panel_words(cfg, 0));
        nsa_pack_values_x3(v, (size_t)(hkv * dv), len, dv, first * PAIRS_PER_PANEL,
                           count * PAIRS_PER_PANEL, (size_t)dv,
                           seq_split(run, run->vp3, run->p_offset, b, h, 1) +
                               (size_t)first * split_panel_words(cfg, 1));
    }
    if (run->kp != NULL) { /* key panels, and the values as rows */
        pack_panels(k, (size_t)(hkv * dk), len, dk, first, count,
                    seq_panels(run, run->kp, run->p_offset, b, h) + (size_t)(first * dk * NSA_PANEL));
        const int64_t last = (first + count) * NSA_PANEL < len ? (first + count) * NSA_PANEL : len;
        float *vdst = seq_values(run, b, h);
        for (int64_t j = first * NSA_PANEL; j < last; j++)
            memcpy(vdst + (size_t)(j * dv), v + (size_t)(j * hkv * dv), (size_t)dv * sizeof(float));
    }
}

static void prepare_worker(void *arg, int32_t worker, int32_t num_workers)
{
    forward_run *run = arg;
    const forward_call *call = &run->call;
    const nsa_config *cfg = &call->plan->cfg;
    const int64_t hkv = cfg->num_kv_heads, dk = cfg->head_dim_qk, dv = cfg->head_dim_v;
    const int64_t B = call->batch->num_seqs, total_c = run->c_offset[B];
    (void)num_workers;
    for (int64_t i; (i = nsa_work_queue_take(&run->queue)) >= 0;) {
        const work_item *it = &run->items[i];
        const int64_t b = it->seq, h = it->head, start = call->batch->cu_seqlens[b];
        const float *k = call->k + (size_t)((start * hkv + h) * dk);
        if (it->tensor == 2) { /* raw keys: split, fp32 or both (run_alloc) */
            pack_raw_keys(run, b, h, it->first, it->count);
            continue;
        }
        const int64_t dim = it->tensor == 0 ? dk : dv;
        float *y = (it->tensor == 0 ? run->kc : run->vc) +
                   (size_t)((h * total_c + run->c_offset[b] + it->first) * dim);
        nsa_compress(call->plan, it->tensor == 0 ? call->cmp_k : call->cmp_v, (int32_t)dim,
                     (int32_t)h, it->tensor == 0 ? k : call->v + (size_t)((start * hkv + h) * dv),
                     (size_t)(hkv * dim), it->first, it->count, y, run->scratch[worker]);
        const int64_t nc = run->c_offset[b + 1] - run->c_offset[b];
        const float *rows = (it->tensor == 0 ? run->kc : run->vc) +
                            (size_t)((h * total_c + run->c_offset[b]) * dim);
        if (run->kcp3 != NULL && it->tensor == 0) /* the first token is a panel boundary */
            nsa_pack_panels_x3(rows, (size_t)dk, nc, dk, it->first / NSA_PANEL,
                               nsa_panels_of(it->count),
                               seq_split(run, run->kcp3, run->cp_offset, b, h, 0) +
                                   (size_t)(it->first / NSA_PANEL) * split_panel_words(cfg, 0));
        else if (run->kcp3 != NULL) /* ... and an even one */
            nsa_pack_values_x3(rows, (size_t)dv, nc, dv, it->first / 2, (it->count + 1) / 2,
                               (size_t)dv,
                               seq_split(run, run->vcp3, run->cp_offset, b, h, 1) +
                                   (size_t)(it->first / 2) * nsa_x3_pair_words((size_t)dv));
        else if (it->tensor == 0)
            pack_panels(rows, (size_t)dk, nc, dk, it->first / NSA_PANEL, nsa_panels_of(it->count),
                        seq_panels(run, run->kcp, run->cp_offset, b, h) +
                            (size_t)(it->first * dk));
    }
}

/* Items of phase 1: per (sequence, head), compress K and V in runs of
 * COMPRESS_ITEM_TOKENS compressed tokens, and pack the raw keys in runs of
 * COMPRESS_ITEM_TOKENS / NSA_PANEL panels. items may be NULL to count. */
static int64_t prepare_items(const forward_run *run, work_item *items)
{
    const int64_t B = run->call.batch->num_seqs, hkv = run->call.plan->cfg.num_kv_heads;
    const int64_t step = COMPRESS_ITEM_TOKENS;
    int64_t n = 0;
    for (int64_t b = 0; b < B; b++) {
        int64_t nc = run->c_offset[b + 1] - run->c_offset[b];
        int64_t np = run->p_offset[b + 1] - run->p_offset[b];
        if (run->call.dense)
            nc = 0; /* dense attention needs only the key panels */
        for (int32_t h = 0; h < hkv; h++) {
            for (int64_t first = 0; first < nc; first += step)
                for (int32_t tensor = 0; tensor < 2; tensor++, n++)
                    if (items != NULL)
                        items[n] = (work_item){.seq = (int32_t)b, .head = h, .tensor = tensor,
                                               .first = first,
                                               .count = nc - first < step ? nc - first : step};
            for (int64_t first = 0; first < np; first += step, n++)
                if (items != NULL)
                    items[n] = (work_item){.seq = (int32_t)b, .head = h, .tensor = 2,
                                           .first = first,
                                           .count = np - first < step ? np - first : step};
        }
    }
    return n;
}

/* ------------------------------------------------------------- phase 2 -- */

/* The tile of work item it, as nsa_tile_attend sees it. */
static nsa_tile make_tile(const forward_run *run, const work_item *it)
{
    const forward_call *call = &run->call;
    const nsa_config *cfg = &call->plan->cfg;
    const int64_t b = it->seq, h = it->head, B = call->batch->num_seqs;
    const int64_t start = call->batch->cu_seqlens[b], len = call->batch->cu_seqlens[b + 1] - start;
    const int64_t g = call->plan->group_size, hq = cfg->num_q_heads, hkv = cfg->num_kv_heads;
    const int64_t dk = cfg->head_dim_qk, dv = cfg->head_dim_v, n = cfg->sel_count;
    const int64_t token = start + it->first; /* the tile's first query */
    const int64_t nc = run->c_offset[b + 1] - run->c_offset[b];
    nsa_keys raw = {.ldv = (size_t)dv, .count = len};
    nsa_keys compressed = {.ldv = (size_t)dv, .count = nc};
    if (run->kp3 != NULL) {
        raw.kp3 = seq_split(run, run->kp3, run->p_offset, b, h, 0);
        raw.v3 = seq_split(run, run->vp3, run->p_offset, b, h, 1);
    }
    if (run->kp != NULL) {
        raw.kp = seq_panels(run, run->kp, run->p_offset, b, h);
        raw.v = seq_values(run, b, h);
    }
    if (run->kcp3 != NULL) {
        compressed.kp3 = seq_split(run, run->kcp3, run->cp_offset, b, h, 0);
        compressed.v3 = seq_split(run, run->vcp3, run->cp_offset, b, h, 1);
    } else if (run->kcp != NULL) { /* none for dense attention */
        compressed.kp = seq_panels(run, run->kcp, run->cp_offset, b, h);
        compressed.v = run->vc + (size_t)((h * run->c_offset[B] + run->c_offset[b]) * dv);
    }
    return (nsa_tile){
        .raw = raw,
        .compressed = compressed,
        .len = len,
        .first = it->first,
        .count = it->count,
        .q = call->q + (size_t)((token * hq + h * g) * dk),
        .gates = call->gates != NULL ? call->gates + (size_t)((token * hq + h * g) * 3) : NULL,
        .out = call->out + (size_t)((token * hq + h * g) * dv),
        .q_stride = (size_t)(hq * dk),
        .gates_stride = (size_t)(hq * 3),
        .out_stride = (size_t)(hq * dv),
        .given = call->given_indices != NULL
                     ? call->given_indices + (size_t)((token * hkv + h) * n)
                     : NULL,
        .indices_out = run->blocks != NULL ? run->blocks + (size_t)((token * hkv + h) * n) : NULL,
        .index_stride = (size_t)(hkv * n),
        .defer_selected = !call->dense,
        .lse = call->saved != NULL ? call->saved->lse + (size_t)(token * hq + h * g) : NULL,
        .lse_stride = (size_t)hq,
        .lse_branch_stride = (size_t)(call->batch->total_tokens * hq),
    };
}

static void attend_worker(void *arg, int32_t worker, int32_t num_workers)
{
    forward_run *run = arg;
    const nsa_plan *plan = run->call.plan;
    (void)num_workers;
    for (int64_t i; (i = nsa_work_queue_take(&run->queue)) >= 0;) {
        const nsa_tile tile = make_tile(run, &run->items[i]);
        if (run->call.dense)
            nsa_tile_attend_dense(plan, &tile, run->tile_queries, run->call.max_len,
                                  run->scratch[worker]);
        else
            nsa_tile_attend(plan, &tile, run->tile_queries, run->call.max_len,
                            run->scratch[worker]);
    }
}

/* ------------------------------------------------------------- phase 3 -- */

static void selected_worker(void *arg, int32_t worker, int32_t num_workers)
{
    forward_run *run = arg;
    const forward_call *call = &run->call;
    const nsa_config *cfg = &call->plan->cfg;
    const int64_t g = call->plan->group_size, hq = cfg->num_q_heads, hkv = cfg->num_kv_heads;
    const int64_t n = cfg->sel_count, T = call->batch->total_tokens;
    (void)num_workers;
    for (int64_t i; (i = nsa_work_queue_take(&run->queue)) >= 0;) {
        const work_item *it = &run->items[i];
        const nsa_tile tile = make_tile(run, it); /* for its keys and strides */
        const int64_t token = call->batch->cu_seqlens[it->seq] + it->first;
        const nsa_selected_job job = {
            .raw = tile.raw, .len = tile.len, .first = it->first, .count = it->count,
            .q = tile.q, .gates = tile.gates, .out = tile.out, .q_stride = tile.q_stride,
            .gates_stride = tile.gates_stride, .out_stride = tile.out_stride,
            .blocks = run->blocks + (size_t)((token * hkv + it->head) * n),
            .index_stride = (size_t)(hkv * n),
            .lse = call->saved != NULL
                       ? call->saved->lse + (size_t)(T * hq + token * hq + it->head * g)
                       : NULL,
            .lse_stride = (size_t)hq};
        nsa_selected_attend(call->plan, &job, run->scratch[worker]);
    }
}

/* Items of phase 3: chunks of nsa_selected_chunk_queries queries. */
static int64_t selected_items(const forward_run *run, work_item *items)
{
    const int64_t *cu = run->call.batch->cu_seqlens;
    const int64_t step = nsa_selected_chunk_queries(run->call.plan);
    int64_t n = 0;
    for (int64_t b = 0; b < run->call.batch->num_seqs; b++) {
        const int64_t len = cu[b + 1] - cu[b];
        for (int64_t first = 0; first < len; first += step)
            for (int32_t h = 0; h < run->call.plan->cfg.num_kv_heads; h++, n++)
                if (items != NULL)
                    items[n] = (work_item){.seq = (int32_t)b, .head = h, .first = first,
                                           .count = len - first < step ? len - first : step};
    }
    return n;
}

/* Keys a query at position t attends to, roughly: the cost of its work. */
static int64_t query_cost(const forward_call *call, int64_t t, int64_t len)
{
    const nsa_config *cfg = &call->plan->cfg;
    int64_t seen = cfg->causal ? t + 1 : len;
    if (call->dense)
        return seen;
    int64_t selected = (int64_t)cfg->sel_count * cfg->sel_block;
    return nsa_visible_compressed(cfg, t, len) + (seen < selected ? seen : selected) +
           (seen < cfg->window ? seen : cfg->window);
}

static int64_t attend_items(const forward_run *run, work_item *items)
{
    const nsa_config *cfg = &run->call.plan->cfg;
    const int64_t *cu = run->call.batch->cu_seqlens, step = run->tile_queries;
    int64_t n = 0;
    for (int64_t b = 0; b < run->call.batch->num_seqs; b++) {
        int64_t len = cu[b + 1] - cu[b];
        for (int64_t first = 0; first < len; first += step) {
            int64_t count = len - first < step ? len - first : step;
            for (int32_t h = 0; h < cfg->num_kv_heads; h++, n++)
                if (items != NULL)
                    items[n] = (work_item){.seq = (int32_t)b, .head = h, .first = first,
                                           .count = count,
                                           .cost = query_cost(&run->call, first + count - 1, len)};
        }
    }
    return n;
}

/* Longest items first, so the causal triangle's expensive end does not run
 * alone on one worker at the end. */
static int compare_cost_descending(const void *a, const void *b)
{
    const work_item *x = a, *y = b;
    if (x->cost != y->cost)
        return x->cost > y->cost ? -1 : 1;
    if (x->seq != y->seq)
        return x->seq < y->seq ? -1 : 1;
    if (x->first != y->first)
        return x->first < y->first ? -1 : 1;
    return (x->head > y->head) - (x->head < y->head);
}

/* ---------------------------------------------------------------- driver -- */

static void run_free(forward_run *run, int32_t workers)
{
    nsa_worker_scratch_free(run->scratch, workers);
    free(run->items);
    free(run->own_blocks);
    free(run->kc);
    free(run->vc);
    nsa_free_large(run->kp);
    nsa_free_large(run->vp);
    nsa_free_large(run->kcp);
    nsa_free_large(run->kp3);
    nsa_free_large(run->vp3);
    nsa_free_large(run->kcp3);
    nsa_free_large(run->vcp3);
    free(run->c_offset);
}

/* Which keys a call packs split for the tile-product kernels. The split
 * pays where a call sweeps long spans of keys for many rows: dense
 * attention, NSA's compressed branch (tiles of 128 rows over chunks of 256
 * keys) and NSA's windows (128 rows over the 8 queries' ~520 keys at
 * G = 16: the dense kernel's shape). NSA's selected blocks, 64 keys per
 * call for 16 rows, keep the fp32 keys and the FMA kernels: there the x3
 * kernels load nearly one tile per tile product and read 1.5x the bytes,
 * and on the 16-vCPU host the selected branch ran ~20 % slower on them
 * (bench/RESULTS.md, eighth session). So NSA packs its raw keys both ways
 * when windows go on tiles (nsa_tile_attend picks per pass): on the
 * 16-core host that made the forward 2-3 % faster at 32K and 64K (eleventh
 * session). NSA_SELECTED_ON_TILES=1 (split_selected) asks for them too. */
static int split_raw_keys(const forward_call *call)
{
    const nsa_ukernels *k = &call->plan->kernels;
    return k->split_fp32 && (call->dense || NSA_WINDOW_ON_TILES || k->split_selected);
}

/* The raw keys as fp32 panels: all but dense attention on tile products. */
static int fp32_raw_keys(const forward_call *call)
{
    return !(call->plan->kernels.split_fp32 && call->dense);
}

static int split_compressed_keys(const forward_call *call)
{
    return call->plan->kernels.split_fp32 && !call->dense;
}

/* Everything both phases need, allocated before any output is written so an
 * allocation failure leaves the outputs untouched. Scratch is only
 * allocated here; each worker touches its own first, which places it on the
 * worker's NUMA node. The checks proved T * Hkv * D fits, and every buffer
 * here is at most a small multiple of that. */
static nsa_status run_alloc(forward_run *run, int32_t workers)
{
    const forward_call *call = &run->call;
    const nsa_config *cfg = &call->plan->cfg;
    const int64_t B = call->batch->num_seqs, hkv = cfg->num_kv_heads;
    const int64_t dk = cfg->head_dim_qk, dv = cfg->head_dim_v;
    run->tile_queries = nsa_tile_queries(call->plan, call->dense);
    run->c_offset = malloc(3 * (size_t)(B + 1) * sizeof *run->c_offset);
    if (run->c_offset == NULL)
        return NSA_ERROR_OUT_OF_MEMORY;
    run->p_offset = run->c_offset + B + 1;
    run->cp_offset = run->p_offset + B + 1;
    run->c_offset[0] = run->p_offset[0] = run->cp_offset[0] = 0;
    for (int64_t b = 0; b < B; b++) {
        int64_t len = call->batch->cu_seqlens[b + 1] - call->batch->cu_seqlens[b];
        int64_t nc = nsa_num_compressed(cfg, len);
        run->c_offset[b + 1] = run->c_offset[b] + nc;
        run->p_offset[b + 1] = run->p_offset[b] + nsa_panels_of(len);
        run->cp_offset[b + 1] = run->cp_offset[b] + nsa_panels_of(nc);
    }
    const int compressed = !call->dense; /* dense attention reads only the raw keys */
    if (compressed) {
        run->kc = nsa_alloc_floats(hkv * run->c_offset[B] * dk);
        run->vc = nsa_alloc_floats(hkv * run->c_offset[B] * dv);
    }
    const int split_raw = split_raw_keys(call), split_cmp = split_compressed_keys(call);
    const size_t key_words = split_panel_words(cfg, 0), value_words = split_panel_words(cfg, 1);
    const int fp32_raw = fp32_raw_keys(call);
    if (split_raw) { /* 1.5x the bytes of fp32 panels */
        run->kp3 = nsa_alloc_large((size_t)(hkv * run->p_offset[B]) * key_words * 2, 0);
        run->vp3 = nsa_alloc_large((size_t)(hkv * run->p_offset[B]) * value_words * 2, 0);
    }
    if (fp32_raw) {
        run->kp = nsa_alloc_large((size_t)(hkv * run->p_offset[B] * NSA_PANEL * dk) * sizeof(float), 0);
        run->vp = nsa_alloc_large((size_t)(hkv * call->batch->total_tokens * dv) * sizeof(float), 0);
    }
    if (split_cmp) {
        run->kcp3 = nsa_alloc_large((size_t)(hkv * run->cp_offset[B]) * key_words * 2, 0);
        run->vcp3 = nsa_alloc_large((size_t)(hkv * run->cp_offset[B]) * value_words * 2, 0);
    } else if (compressed) {
        run->kcp = nsa_alloc_large((size_t)(hkv * run->cp_offset[B] * NSA_PANEL * dk) * sizeof(float), 0);
    }

    int64_t n1 = prepare_items(run, NULL), n2 = attend_items(run, NULL);
    int64_t n3 = call->dense ? 0 : selected_items(run, NULL);
    n1 = n1 > n2 ? n1 : n2;
    run->items = malloc((size_t)(n1 > n3 ? n1 : n3) * sizeof *run->items + 1);
    run->blocks = call->indices_out;
    if (!call->dense && run->blocks == NULL) /* T * Hkv * n ints: the checks proved it fits */
        run->blocks = run->own_blocks = malloc(
            (size_t)(call->batch->total_tokens * hkv * cfg->sel_count) * sizeof(int32_t) + 1);

    size_t work_k = nsa_compress_workspace(cfg, cfg->head_dim_qk);
    size_t work_v = nsa_compress_workspace(cfg, cfg->head_dim_v);
    run->scratch_floats = nsa_tile_scratch_floats(call->plan, run->tile_queries, call->max_len);
    if (work_k > run->scratch_floats)
        run->scratch_floats = work_k;
    if (work_v > run->scratch_floats)
        run->scratch_floats = work_v;
    if (!call->dense) {
        const size_t selected = nsa_selected_scratch_floats(call->plan, call->max_len);
        if (selected > run->scratch_floats)
            run->scratch_floats = selected;
    }
    run->scratch = nsa_worker_scratch_alloc(workers, run->scratch_floats);
    const int packed = (!split_raw || (run->kp3 != NULL && run->vp3 != NULL)) &&
                       (!fp32_raw || (run->kp != NULL && run->vp != NULL));
    const int packed_compressed =
        !compressed || (run->kc != NULL && run->vc != NULL &&
                        (split_cmp ? run->kcp3 != NULL && run->vcp3 != NULL : run->kcp != NULL));
    if (!packed || !packed_compressed || (!call->dense && run->blocks == NULL) ||
        run->items == NULL || run->scratch == NULL)
        return NSA_ERROR_OUT_OF_MEMORY;
    return NSA_SUCCESS;
}

static nsa_status run_forward(const forward_call *call)
{
    if (call->plan == NULL)
        return NSA_ERROR_NULL_POINTER;
    forward_run run = {.call = *call};
    nsa_status status = nsa_forward_check(&run.call);
    if (status != NSA_SUCCESS || call->batch->total_tokens == 0)
        return status;
    nsa_context *ctx = call->plan->ctx;
    const int32_t workers = ctx->num_threads;
    status = run_alloc(&run, workers);
    if (status != NSA_SUCCESS) {
        run_free(&run, workers);
        return nsa_fail(ctx, status, "no memory for the workspace of %lld tokens",
                        (long long)call->batch->total_tokens);
    }

    int64_t phase_ns[4] = {nsa_now_ns()};
    nsa_work_queue_init(&run.queue, prepare_items(&run, run.items));
    nsa_pool_run(ctx->pool, prepare_worker, &run);
    phase_ns[1] = nsa_now_ns();

    int64_t n = attend_items(&run, run.items);
    qsort(run.items, (size_t)n, sizeof *run.items, compare_cost_descending);
    nsa_work_queue_init(&run.queue, n);
    nsa_pool_run(ctx->pool, attend_worker, &run);
    phase_ns[2] = nsa_now_ns();

    if (!call->dense) {
        nsa_work_queue_init(&run.queue, selected_items(&run, run.items));
        nsa_pool_run(ctx->pool, selected_worker, &run);
    }
    phase_ns[3] = nsa_now_ns();
    run_free(&run, workers);
    nsa_log(ctx, "%s of %lld tokens: pack and compress %.2f ms, tiles %.2f ms, selected %.2f ms",
            call->dense ? "dense forward" : "forward", (long long)call->batch->total_tokens,
            1e-6 * (double)(phase_ns[1] - phase_ns[0]), 1e-6 * (double)(phase_ns[2] - phase_ns[1]),
            1e-6 * (double)(phase_ns[3] - phase_ns[2]));
    return NSA_SUCCESS;
}

nsa_status nsa_forward(const nsa_plan *plan, const nsa_batch *batch, const float *q,
                       const float *k, const float *v, const float *gates,
                       const nsa_compress_params *cmp_k, const nsa_compress_params *cmp_v,
                       float *out, int32_t *block_indices_out)
{
    forward_call call = {.plan = plan, .batch = batch, .q = q, .k = k, .v = v, .gates = gates,
                         .cmp_k = cmp_k, .cmp_v = cmp_v, .out = out,
                         .indices_out = block_indices_out};
    return run_forward(&call);
}

nsa_status nsa_forward_train(const nsa_plan *plan, const nsa_batch *batch, const float *q,
                             const float *k, const float *v, const float *gates,
                             const nsa_compress_params *cmp_k, const nsa_compress_params *cmp_v,
                             float *out, nsa_saved *saved)
{
    if (plan == NULL)
        return NSA_ERROR_NULL_POINTER;
    if (saved == NULL)
        return nsa_fail(plan->ctx, NSA_ERROR_NULL_POINTER, "saved is NULL");
    if (batch != NULL) {
        nsa_status status = nsa_saved_check(plan, saved, batch->total_tokens);
        if (status != NSA_SUCCESS)
            return status;
    }
    forward_call call = {.plan = plan, .batch = batch, .q = q, .k = k, .v = v, .gates = gates,
                         .cmp_k = cmp_k, .cmp_v = cmp_v, .out = out,
                         .indices_out = saved->indices, .saved = saved};
    nsa_status status = run_forward(&call);
    if (status == NSA_SUCCESS)
        saved->tokens = batch->total_tokens;
    return status;
}

nsa_status nsa_dense_forward(const nsa_plan *plan, const nsa_batch *batch, const float *q,
                             const float *k, const float *v, float *out)
{
    forward_call call = {.plan = plan, .batch = batch, .q = q, .k = k, .v = v, .out = out,
                         .dense = 1};
    return run_forward(&call);
}

nsa_status nsa_forward_with_indices(const nsa_plan *plan, const nsa_batch *batch,
                                    const float *q, const float *k, const float *v,
                                    const float *gates, const nsa_compress_params *cmp_k,
                                    const nsa_compress_params *cmp_v,
                                    const int32_t *block_indices, float *out)
{
    if (plan != NULL && block_indices == NULL)
        return nsa_fail(plan->ctx, NSA_ERROR_NULL_POINTER, "block_indices is NULL");
    forward_call call = {.plan = plan, .batch = batch, .q = q, .k = k, .v = v, .gates = gates,
                         .cmp_k = cmp_k, .cmp_v = cmp_v, .given_indices = block_indices,
                         .out = out};
    return run_forward(&call);
}

void nsa_pack_panels(const float *x, size_t ldx, int64_t len, int64_t dim, int64_t first,
                     int64_t count, float *dst)
{
    pack_panels(x, ldx, len, dim, first, count, dst);
}
