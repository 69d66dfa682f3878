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

#include "attend.h"
#include "compress.h"
#include "forward.h"
#include "geometry.h"
#include "select.h"

/* Rows (queries x G heads) per tile. The compressed branch reads the same
 * compressed keys for every query, so it runs on CMP_TILE_ROWS rows at once;
 * the selected and window branches then run on sub-tiles of TILE_ROWS rows,
 * small enough that the union of their queries' blocks stays close to each
 * query's own. Dense attention has nothing to select, so its tiles are large
 * for reuse alone. */
enum { TILE_ROWS = 16, CMP_TILE_ROWS = 64, DENSE_TILE_ROWS = 64 };

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
    int64_t sub_queries;  /* per selected/window sub-tile */
    /* Per sequence b, offsets [b] of its first compressed token, first key
     * panel and first compressed-key panel; entry [B] is the total. */
    int64_t *c_offset, *p_offset, *cp_offset;
    float *kc, *vc; /* compressed rows [Hkv][total compressed][D] */
    float *kp;      /* key panels [Hkv][total panels][Dk][NSA_PANEL] */
    float *kcp;     /* compressed key panels, same layout */
    work_item *items;
    nsa_work_queue queue;
    float **scratch; /* per worker */
    size_t scratch_floats;
} forward_run;

/* A worker's view of its scratch for one tile. */
typedef struct tile_scratch {
    float *q;            /* [m][Dk] packed rows */
    float *s_cmp;        /* [m][lds_cmp] compressed scores, then probabilities */
    size_t lds_cmp;
    float *s;            /* [m][NSA_ATTEND_CHUNK] */
    float *p_sum;        /* [max compressed] */
    float *score;        /* [max blocks] */
    int32_t *blocks;     /* [tile queries][n] */
    int32_t *lo, *hi;    /* [m] */
    int64_t *row_first, *row_last; /* [m] */
    nsa_softmax_state branch[3];   /* cmp, slc, swa */
} tile_scratch;

static int64_t round_up_panels(int64_t keys)
{
    return (keys + NSA_PANEL - 1) / NSA_PANEL;
}

static float *seq_panels(const forward_run *run, float *base, const int64_t *offset,
                               int64_t b, int64_t h)
{
    const int64_t B = run->call.batch->num_seqs, dk = run->call.plan->cfg.head_dim_qk;
    return base + (size_t)((h * offset[B] + offset[b]) * dk * NSA_PANEL);
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
        const int64_t len = call->batch->cu_seqlens[b + 1] - start;
        const float *k = call->k + (size_t)((start * hkv + h) * dk);
        if (it->tensor == 2) { /* raw key panels */
            float *dst = seq_panels(run, run->kp, run->p_offset, b, h);
            pack_panels(k, (size_t)(hkv * dk), len, dk, it->first, it->count,
                        dst + (size_t)(it->first * dk * NSA_PANEL));
            continue;
        }
        const int64_t dim = it->tensor == 0 ? dk : dv;
        float *y = (it->tensor == 0 ? run->kc : run->vc) +
                   (size_t)((h * total_c + run->c_offset[b] + it->first) * dim);
        nsa_compress(call->plan, it->tensor == 0 ? call->cmp_k : call->cmp_v, (int32_t)dim,
                     (int32_t)h, it->tensor == 0 ? k : call->v + (size_t)((start * hkv + h) * dv),
                     (size_t)(hkv * dim), it->first, it->count, y, run->scratch[worker]);
        if (it->tensor == 0) { /* the first token is a panel boundary */
            float *dst = seq_panels(run, run->kcp, run->cp_offset, b, h);
            int64_t nc = run->c_offset[b + 1] - run->c_offset[b];
            const float *rows = run->kc + (size_t)((h * total_c + run->c_offset[b]) * dk);
            pack_panels(rows, (size_t)dk, nc, dk, it->first / NSA_PANEL,
                        round_up_panels(it->count), dst + (size_t)(it->first * dk));
        }
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

static size_t tile_rows(const forward_run *run)
{
    return (size_t)(run->tile_queries * run->call.plan->group_size);
}

/* Lays the tile scratch out in f; returns the floats used (f may be NULL
 * to size it). */
static size_t tile_scratch_carve(const forward_run *run, float *f, tile_scratch *t)
{
    const nsa_config *cfg = &run->call.plan->cfg;
    const size_t m = tile_rows(run), dk = (size_t)cfg->head_dim_qk;
    const size_t dv = (size_t)cfg->head_dim_v;
    const size_t max_c = (size_t)nsa_num_compressed(cfg, run->call.max_len) + 1;
    const size_t lds_cmp = (size_t)round_up_panels((int64_t)max_c) * NSA_PANEL;
    const size_t max_blocks = (size_t)nsa_num_blocks(cfg, run->call.max_len) + 1;
    size_t used = 0;
#define CARVE(field, type, count)                                                  \
    do {                                                                           \
        if (f != NULL)                                                             \
            t->field = (type *)(f + used);                                         \
        used += (count);                                                           \
    } while (0)
    CARVE(q, float, m * dk);
    CARVE(s_cmp, float, m * lds_cmp);
    CARVE(s, float, m * NSA_ATTEND_CHUNK);
    CARVE(p_sum, float, max_c);
    CARVE(score, float, max_blocks);
    for (int b = 0; b < 3; b++) {
        CARVE(branch[b].max, float, m);
        CARVE(branch[b].sum, float, m);
        CARVE(branch[b].acc, float, m * dv);
        if (f != NULL)
            t->branch[b].ldacc = dv;
    }
    used += used % 2; /* int64 alignment; an int64 takes two floats */
    CARVE(row_first, int64_t, 2 * m);
    CARVE(row_last, int64_t, 2 * m);
    CARVE(blocks, int32_t, (size_t)run->tile_queries * (size_t)cfg->sel_count);
    CARVE(lo, int32_t, m);
    CARVE(hi, int32_t, m);
    if (f != NULL)
        t->lds_cmp = lds_cmp;
#undef CARVE
    return used;
}

/* The queries' blocks: the caller's (sorted), or chosen from the
 * compressed-branch probabilities left in t->s_cmp (spec section 3). */
static void choose_blocks(const forward_run *run, int64_t start, int64_t len, int64_t h,
                          int64_t t0, int64_t count, tile_scratch *t)
{
    const forward_call *call = &run->call;
    const nsa_config *cfg = &call->plan->cfg;
    const int64_t n = cfg->sel_count, g = call->plan->group_size, hkv = cfg->num_kv_heads;
    for (int64_t tq = 0; tq < count; tq++) {
        const int64_t pos = t0 + tq, token = start + pos;
        int32_t *blocks = t->blocks + tq * n;
        if (call->given_indices != NULL) {
            memcpy(blocks, call->given_indices + (token * hkv + h) * n, (size_t)n * sizeof *blocks);
            nsa_normalize_blocks(blocks, (int32_t)n);
            continue;
        }
        const int64_t nc = nsa_visible_compressed(cfg, pos, len);
        for (int64_t i = 0; i < nc; i++) {
            float sum = 0.0f;
            for (int64_t r = tq * g; r < (tq + 1) * g; r++)
                sum += t->s_cmp[(size_t)r * t->lds_cmp + (size_t)i] / t->branch[0].sum[r];
            t->p_sum[i] = sum;
        }
        int64_t candidates = nsa_candidate_blocks(cfg, pos, len);
        nsa_block_scores(cfg, t->p_sum, nc, t->score, candidates);
        nsa_select_blocks(cfg, t->score, candidates, pos / cfg->sel_block, blocks);
        if (call->indices_out != NULL)
            memcpy(call->indices_out + (token * hkv + h) * n, blocks, (size_t)n * sizeof *blocks);
    }
}

/* Selected branch over the union of the tile's blocks, ascending; a row
 * takes a block only if its query chose it. */
static void attend_selected(const forward_run *run, const nsa_rows *rows, const nsa_keys *keys,
                            int64_t len, int64_t t0, int64_t count, const int32_t *chosen,
                            const nsa_softmax_state *state, tile_scratch *t)
{
    const nsa_config *cfg = &run->call.plan->cfg;
    const nsa_ukernels *uk = &run->call.plan->kernels;
    const int64_t n = cfg->sel_count, g = run->call.plan->group_size, lsel = cfg->sel_block;
    int64_t cursor[TILE_ROWS]; /* sub_queries <= TILE_ROWS */
    for (int64_t tq = 0; tq < count; tq++)
        cursor[tq] = 0;
    for (;;) {
        /* The next block in the union: the smallest not yet taken. */
        int64_t block = INT64_MAX;
        for (int64_t tq = 0; tq < count; tq++) {
            int64_t c = cursor[tq];
            int32_t j = c < n ? chosen[tq * n + c] : -1;
            if (j >= 0 && j < block)
                block = j;
        }
        if (block == INT64_MAX)
            return;
        const int64_t first = block * lsel, last = first + lsel - 1;
        for (int64_t tq = 0; tq < count; tq++) {
            int64_t pos = t0 + tq, limit = cfg->causal ? pos : len - 1;
            int takes = cursor[tq] < n && chosen[tq * n + cursor[tq]] == block;
            cursor[tq] += takes;
            for (int64_t r = tq * g; r < (tq + 1) * g; r++) {
                t->row_first[r] = takes ? first : 1;
                t->row_last[r] = takes ? (last < limit ? last : limit) : 0;
            }
        }
        nsa_attend_keys(uk, rows, keys, first, last, t->row_first, t->row_last, state, t->s,
                        t->lo, t->hi);
    }
}

static void attend_window(const forward_run *run, const nsa_rows *rows, const nsa_keys *keys,
                          int64_t len, int64_t t0, int64_t count, const nsa_softmax_state *state,
                          tile_scratch *t)
{
    const nsa_config *cfg = &run->call.plan->cfg;
    const int64_t g = run->call.plan->group_size;
    int64_t first = INT64_MAX, last = -1;
    for (int64_t tq = 0; tq < count; tq++) {
        int64_t a, b;
        nsa_window_range(cfg, t0 + tq, len, &a, &b);
        first = a < first ? a : first;
        last = b > last ? b : last;
        for (int64_t r = tq * g; r < (tq + 1) * g; r++) {
            t->row_first[r] = a;
            t->row_last[r] = b;
        }
    }
    nsa_attend_keys(&run->call.plan->kernels, rows, keys, first, last, t->row_first,
                    t->row_last, state, t->s, t->lo, t->hi);
}

/* Compressed branch: one softmax step over every visible compressed token,
 * so the probabilities left in s_cmp are final (selection reads them). */
static void attend_compressed(const forward_run *run, const nsa_rows *rows,
                              const nsa_keys *keys, int64_t len, int64_t t0, int64_t count,
                              tile_scratch *t)
{
    const nsa_config *cfg = &run->call.plan->cfg;
    const int64_t g = run->call.plan->group_size;
    int64_t most = 0;
    for (int64_t tq = 0; tq < count; tq++) {
        int64_t nc = nsa_visible_compressed(cfg, t0 + tq, len);
        most = nc > most ? nc : most;
        for (int64_t r = tq * g; r < (tq + 1) * g; r++) {
            t->lo[r] = 0;
            t->hi[r] = (int32_t)nc - 1;
        }
    }
    if (most > 0)
        nsa_attend_span(&run->call.plan->kernels, rows, keys, 0, round_up_panels(most), t->lo,
                        t->hi, t->s_cmp, t->lds_cmp, &t->branch[0]);
}

static void attend_tile(const forward_run *run, const work_item *it, tile_scratch *t)
{
    const forward_call *call = &run->call;
    const nsa_plan *plan = call->plan;
    const nsa_config *cfg = &plan->cfg;
    const int64_t b = it->seq, h = it->head, t0 = it->first, count = it->count;
    const int64_t start = call->batch->cu_seqlens[b], len = call->batch->cu_seqlens[b + 1] - start;
    const int64_t g = plan->group_size, hq = cfg->num_q_heads, hkv = cfg->num_kv_heads;
    const int64_t dk = cfg->head_dim_qk, dv = cfg->head_dim_v, B = call->batch->num_seqs;
    const size_t m = (size_t)(count * g);

    for (int64_t tq = 0; tq < count; tq++) /* the G rows of a query are contiguous */
        memcpy(t->q + (size_t)(tq * g * dk), call->q + (size_t)(((start + t0 + tq) * hq + h * g) * dk),
               (size_t)(g * dk) * sizeof(float));
    const nsa_rows rows = {.m = m, .dk = (size_t)dk, .dv = (size_t)dv, .scale = cfg->scale,
                           .q = t->q};
    const nsa_keys raw = {.kp = seq_panels(run, run->kp, run->p_offset, b, h),
                          .v = call->v + (size_t)((start * hkv + h) * dv),
                          .ldv = (size_t)(hkv * dv), .count = len};
    const nsa_keys compressed = {
        .kp = seq_panels(run, run->kcp, run->cp_offset, b, h),
        .v = run->vc + (size_t)((h * run->c_offset[B] + run->c_offset[b]) * dv),
        .ldv = (size_t)dv, .count = run->c_offset[b + 1] - run->c_offset[b]};
    for (int i = 0; i < 3; i++)
        nsa_softmax_state_reset(&t->branch[i], m, (size_t)dv);

    attend_compressed(run, &rows, &compressed, len, t0, count, t);
    choose_blocks(run, start, len, h, t0, count, t);
    for (int64_t sub = 0; sub < count; sub += run->sub_queries) {
        const int64_t n = count - sub < run->sub_queries ? count - sub : run->sub_queries;
        const size_t row0 = (size_t)(sub * g);
        const nsa_rows sub_rows = {.m = (size_t)(n * g), .dk = (size_t)dk, .dv = (size_t)dv,
                                   .scale = cfg->scale, .q = t->q + row0 * (size_t)dk};
        nsa_softmax_state part[3];
        for (int i = 1; i < 3; i++)
            part[i] = (nsa_softmax_state){.max = t->branch[i].max + row0,
                                          .sum = t->branch[i].sum + row0,
                                          .acc = t->branch[i].acc + row0 * (size_t)dv,
                                          .ldacc = (size_t)dv};
        attend_selected(run, &sub_rows, &raw, len, t0 + sub, n,
                        t->blocks + sub * cfg->sel_count, &part[1], t);
        attend_window(run, &sub_rows, &raw, len, t0 + sub, n, &part[2], t);
    }

    for (int64_t tq = 0; tq < count; tq++) {
        const size_t row0 = (size_t)(tq * g), first_row = (size_t)((start + t0 + tq) * hq + h * g);
        const nsa_softmax_state *s = t->branch;
        plan->kernels.gate_mix((size_t)g, (size_t)dv, call->gates + first_row * 3,
                               s[0].acc + row0 * (size_t)dv, s[0].sum + row0,
                               s[1].acc + row0 * (size_t)dv, s[1].sum + row0,
                               s[2].acc + row0 * (size_t)dv, s[2].sum + row0, (size_t)dv,
                               call->out + first_row * (size_t)dv);
    }
}

/* nsa_dense_forward's tile: every row attends to all keys of the sequence
 * (up to its query when causal), through the same kernels. */
static void attend_tile_dense(const forward_run *run, const work_item *it, tile_scratch *t)
{
    const forward_call *call = &run->call;
    const nsa_config *cfg = &call->plan->cfg;
    const int64_t b = it->seq, h = it->head, t0 = it->first, count = it->count;
    const int64_t start = call->batch->cu_seqlens[b], len = call->batch->cu_seqlens[b + 1] - start;
    const int64_t g = call->plan->group_size, hq = cfg->num_q_heads, hkv = cfg->num_kv_heads;
    const int64_t dk = cfg->head_dim_qk, dv = cfg->head_dim_v;
    const size_t m = (size_t)(count * g);
    for (int64_t tq = 0; tq < count; tq++) {
        memcpy(t->q + (size_t)(tq * g * dk), call->q + (size_t)(((start + t0 + tq) * hq + h * g) * dk),
               (size_t)(g * dk) * sizeof(float));
        for (int64_t r = tq * g; r < (tq + 1) * g; r++) {
            t->row_first[r] = 0;
            t->row_last[r] = cfg->causal ? t0 + tq : len - 1;
        }
    }
    const nsa_rows rows = {.m = m, .dk = (size_t)dk, .dv = (size_t)dv, .scale = cfg->scale,
                           .q = t->q};
    const nsa_keys raw = {.kp = seq_panels(run, run->kp, run->p_offset, b, h),
                          .v = call->v + (size_t)((start * hkv + h) * dv),
                          .ldv = (size_t)(hkv * dv), .count = len};
    const nsa_softmax_state *s = &t->branch[2];
    nsa_softmax_state_reset(s, m, (size_t)dv);
    nsa_attend_keys(&call->plan->kernels, &rows, &raw, 0, cfg->causal ? t0 + count - 1 : len - 1,
                    t->row_first, t->row_last, s, t->s, t->lo, t->hi);
    for (int64_t tq = 0; tq < count; tq++) {
        float *out = call->out + (size_t)(((start + t0 + tq) * hq + h * g) * dv);
        for (int64_t r = tq * g; r < (tq + 1) * g; r++, out += dv)
            for (int64_t c = 0; c < dv; c++)
                out[c] = s->acc[(size_t)(r * dv + c)] / s->sum[r];
    }
}

static void attend_worker(void *arg, int32_t worker, int32_t num_workers)
{
    forward_run *run = arg;
    tile_scratch scratch;
    tile_scratch_carve(run, run->scratch[worker], &scratch);
    (void)num_workers;
    for (int64_t i; (i = nsa_work_queue_take(&run->queue)) >= 0;) {
        if (run->call.dense)
            attend_tile_dense(run, &run->items[i], &scratch);
        else
            attend_tile(run, &run->items[i], &scratch);
    }
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
    if (run->scratch != NULL)
        for (int32_t w = 0; w < workers; w++)
            free(run->scratch[w]);
    free(run->scratch);
    free(run->items);
    free(run->kc);
    free(run->vc);
    free(run->kp);
    free(run->kcp);
    free(run->c_offset);
}

static void *alloc_floats(int64_t count)
{
    return malloc((size_t)count * sizeof(float) + sizeof(float));
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
    const int64_t g = call->plan->group_size;
    const int64_t rows = call->dense ? DENSE_TILE_ROWS : CMP_TILE_ROWS;
    run->sub_queries = (TILE_ROWS + g - 1) / g;
    run->tile_queries = (rows + g - 1) / g / run->sub_queries * run->sub_queries;
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
        run->p_offset[b + 1] = run->p_offset[b] + round_up_panels(len);
        run->cp_offset[b + 1] = run->cp_offset[b] + round_up_panels(nc);
    }
    run->kc = alloc_floats(hkv * run->c_offset[B] * dk);
    run->vc = alloc_floats(hkv * run->c_offset[B] * dv);
    run->kp = alloc_floats(hkv * run->p_offset[B] * NSA_PANEL * dk);
    run->kcp = alloc_floats(hkv * run->cp_offset[B] * NSA_PANEL * dk);

    int64_t n1 = prepare_items(run, NULL), n2 = attend_items(run, NULL);
    run->items = malloc((size_t)(n1 > n2 ? n1 : n2) * sizeof *run->items + 1);

    size_t work_k = nsa_compress_workspace(cfg, cfg->head_dim_qk);
    size_t work_v = nsa_compress_workspace(cfg, cfg->head_dim_v);
    run->scratch_floats = tile_scratch_carve(run, NULL, NULL);
    if (work_k > run->scratch_floats)
        run->scratch_floats = work_k;
    if (work_v > run->scratch_floats)
        run->scratch_floats = work_v;
    run->scratch = calloc((size_t)workers, sizeof *run->scratch);
    if (run->kc == NULL || run->vc == NULL || run->kp == NULL || run->kcp == NULL ||
        run->items == NULL || run->scratch == NULL)
        return NSA_ERROR_OUT_OF_MEMORY;
    for (int32_t w = 0; w < workers; w++)
        if ((run->scratch[w] = alloc_floats((int64_t)run->scratch_floats)) == NULL)
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

    nsa_work_queue_init(&run.queue, prepare_items(&run, run.items));
    nsa_pool_run(ctx->pool, prepare_worker, &run);

    int64_t n = attend_items(&run, run.items);
    qsort(run.items, (size_t)n, sizeof *run.items, compare_cost_descending);
    nsa_work_queue_init(&run.queue, n);
    nsa_pool_run(ctx->pool, attend_worker, &run);

    run_free(&run, workers);
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
