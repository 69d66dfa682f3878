/* SPDX-License-Identifier: MIT */
/*
 * backward.h — one backward call as its passes see it (spec section 7).
 *
 * The gradient of each branch is FlashAttention-2's, taken in two passes
 * that each own their outputs, so no sum needs atomics:
 *   - the query side (backward_queries.c), per tile of queries: dq and the
 *     gates' gradients;
 *   - the key side (backward_keys.c), per range of keys: dk and dv of raw
 *     keys, the gradients of compressed tokens, summing the contributions
 *     of every query that attended to them in a fixed order;
 * then phi's backward (compress_backward.c) carries the compressed tokens'
 * gradients to the raw keys and values and to phi's parameters.
 * nsa_dense_backward (dense_backward.c) uses the same two sides.
 */
#ifndef NSA_BACKWARD_H
#define NSA_BACKWARD_H

#include <stddef.h>
#include <stdint.h>

#include "forward.h"
#include "threads.h"

enum { BRANCH_CMP, BRANCH_SLC, BRANCH_SWA };

/* Query rows per chunk of the key side (rounded to whole queries), and
 * compressed tokens per key-side item. */
enum { NSA_GRAD_KEY_ROWS = 64, NSA_GRAD_CMP_KEYS = 64 };

/* A unit of work of any pass. */
typedef struct backward_item {
    int32_t seq, head, kind;
    int64_t first, count;
    int64_t cost; /* most expensive first */
} backward_item;

/* One nsa_backward call in flight. Panels are per (KV head, sequence),
 * each sequence's first at an offset of whole panels; compressed rows and
 * their gradients are [Hkv][total compressed][D]. */
typedef struct backward_run {
    forward_call call; /* the forward's inputs; call.out is not used */
    const float *dout;
    float *dq, *dk, *dv, *dgates;
    const nsa_compress_grads *grad_k, *grad_v;

    /* Per sequence b: its first compressed token, key panel, compressed-key
     * panel and selection block; entry [B] is the total. */
    int64_t *c_offset, *p_offset, *cp_offset, *b_offset;
    float *kp, *vp;   /* raw key and value panels */
    float *kr;        /* raw key rows per head [Hkv][T][Dk], for dq += dS K */
    float *kc, *vc;   /* compressed rows */
    float *kcp, *vcp; /* compressed panels */
    float *dkc, *dvc; /* gradients of the compressed rows */
    float *hidden[2], *dhidden[2]; /* mlp, for K and V: [Hkv][total compressed][M] */

    /* The forward's record: lse [3][T][Hq] and blocks [T][Hkv][n], from
     * saved or recomputed into the run's own buffers. */
    const float *lse;
    const int32_t *blocks;
    float *own_lse;
    int32_t *own_blocks;

    /* The selection inverted: for KV head h, the queries (local positions,
     * ascending) that chose block J of sequence b are
     * selectors[h * T * n + i] for i in [selector_first[k], selector_first[k+1])
     * with k = h * (total blocks + B) + b_offset[b] + b + J. */
    int64_t *selector_first;
    int32_t *selectors;

    int64_t tile_queries; /* per query-side item (whole sub-tiles) */
    backward_item *items;
    nsa_work_queue queue;
    float **scratch; /* per worker */
    size_t scratch_floats;
} backward_run;

/* The panels of sequence b and KV head h in an array of panels of `dim`
 * channels laid out with offsets `offset`. */
static inline float *backward_panels(const backward_run *run, float *base, const int64_t *offset,
                                     int64_t b, int64_t h, int64_t dim)
{
    const int64_t B = run->call.batch->num_seqs;
    return base + (size_t)((h * offset[B] + offset[b]) * dim * 16);
}

/* The key rows of sequence b and KV head h, contiguous (stride Dk). */
static inline float *backward_key_rows(const backward_run *run, int64_t b, int64_t h)
{
    const int64_t T = run->call.batch->total_tokens;
    return run->kr + (size_t)((h * T + run->call.batch->cu_seqlens[b]) *
                              run->call.plan->cfg.head_dim_qk);
}

/* ------------------------------------------------------------ query side */

/* Scratch floats of one query-side worker. */
size_t nsa_backward_queries_scratch(const backward_run *run);

/* dq and dgates of queries [it->first, it->first + it->count) of one
 * sequence and KV head: every branch's probabilities from the saved
 * log-sum-exp, then its score gradients. */
void nsa_backward_queries(const backward_run *run, const backward_item *it, float *scratch);

/* -------------------------------------------------------------- key side */

/* The query rows of one key-side chunk, m of them (row r's data at r * ld
 * of each array), and the per-row inputs of nsa_grad_score_t: the branch's
 * log-sum-exp, <dO, O_branch> and gate. lo/hi: row r's keys, counted from
 * the chunk's first panel. */
typedef struct nsa_grad_rows {
    size_t m;
    const float *q, *dout;
    size_t ldq, lddout;
    const float *lse, *dot, *gain;
    const int32_t *lo, *hi;
} nsa_grad_rows;

/* Scratch floats of nsa_grad_keys_chunk for up to `rows` rows and spans of
 * up to `span` keys (whole panels). */
size_t nsa_grad_keys_chunk_floats(const nsa_plan *plan, size_t rows, size_t span);

/* Adds the rows' contributions to dk[keys][Dk] and dv[keys][Dv] (rows
 * contiguous), for the keys own_first .. own_first + keys - 1 counted from
 * the span's first key: the span is the np panels at kp (keys) and vp
 * (values). scratch holds nsa_grad_keys_chunk_floats() floats. */
void nsa_grad_keys_chunk(const nsa_plan *plan, const nsa_grad_rows *rows, const float *kp,
                         const float *vp, int64_t np, int64_t own_first, int64_t keys, float *dk,
                         float *dv, float *scratch);

/* Scratch floats of one key-side worker of nsa_backward. */
size_t nsa_backward_keys_scratch(const backward_run *run);

/* Selection block it->first of one sequence and KV head: the selected
 * branch's contributions (queries that chose it, ascending) then the
 * window's (ascending); writes the block's rows of dk and dv. */
void nsa_backward_block(const backward_run *run, const backward_item *it, float *scratch);

/* Compressed tokens [it->first, it->first + it->count): their gradients
 * from every query that sees them, ascending, into dkc and dvc. */
void nsa_backward_compressed(const backward_run *run, const backward_item *it, float *scratch);

#endif /* NSA_BACKWARD_H */
