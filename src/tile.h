/* SPDX-License-Identifier: MIT */
/*
 * tile.h — all of NSA for a tile of consecutive queries of one sequence and
 * KV head: the rows are the queries x the G heads of the group, so every key
 * the kernels load serves all of them. The forward pass (forward.c) and
 * decode (decode.c) differ only in where the keys live and which queries a
 * tile holds; both call nsa_tile_attend.
 */
#ifndef NSA_TILE_H
#define NSA_TILE_H

#include "attend.h"
#include "plan.h"

/* Rows (queries x G heads) per tile. The compressed branch reads the same
 * compressed keys for every query, so it runs on NSA_CMP_TILE_ROWS rows at
 * once (128: at 64K tokens each tile streams ~4 MB of compressed keys and
 * values, and 128 rows ran 8-10 % faster than 64 on the EMR host, 256 no
 * better than 128 but twice the scratch); the selected and window branches then run on sub-tiles of
 * NSA_TILE_ROWS rows, small enough that the union of their queries' blocks
 * stays close to each query's own. Dense attention has nothing to select,
 * so its tiles are large for reuse alone: 128 rows read each key once per
 * 8 queries of G = 16 (on the 2-vCPU Zen 5 development VM, where long
 * sequences stream their keys from DRAM, 10-18 % faster than 64 rows at
 * 32K-64K, 2 % slower at 8K; the dense backward 2-3 % faster at 8K).
 * NSA_CMP_TILE_ROWS may be set at configure time for A/B builds
 * (CPPFLAGS=-DNSA_CMP_TILE_ROWS=64). */
#ifndef NSA_CMP_TILE_ROWS
#define NSA_CMP_TILE_ROWS 128
#endif
enum { NSA_TILE_ROWS = 16, NSA_DENSE_TILE_ROWS = 128 };

/* Whether NSA's windows run on tile products where the plan's kernels do
 * (split_fp32): the forward then packs its raw keys split as well as fp32,
 * and nsa_tile_attend gives the split ones to window passes of many rows.
 * 0 keeps every window on the FMA kernels (A/B builds:
 * CPPFLAGS=-DNSA_WINDOW_ON_TILES=0). */
#ifndef NSA_WINDOW_ON_TILES
#define NSA_WINDOW_ON_TILES 1
#endif

/* One tile: where its keys are and where its queries' data are. Query i of
 * the tile (position first + i) has its G rows at q + i * q_stride, its
 * gates at gates + i * gates_stride, its output at out + i * out_stride and
 * its n block indices at given / indices_out + i * index_stride. */
typedef struct nsa_tile {
    nsa_keys raw;        /* the sequence's keys for this KV head: split for
                            the x3 kernels in nsa_tile_attend_dense, fp32
                            and (windows on tiles) split in nsa_tile_attend */
    nsa_keys compressed; /* its compressed keys (fp32, bf16 or split) */
    int64_t len;         /* keys in the sequence */
    int64_t first, count;
    const float *q, *gates;
    float *out;
    size_t q_stride, gates_stride, out_stride;
    const int32_t *given;  /* caller's blocks, or NULL to select */
    int32_t *indices_out;  /* optional */
    size_t index_stride;
    /* Optional (training): each branch's log-sum-exp of query i's G rows at
     * lse + branch * lse_branch_stride + i * lse_stride. */
    float *lse;
    size_t lse_stride, lse_branch_stride;
    /* 1: leave the selected branch to nsa_selected_attend (selected.h):
     * write only g_cmp o_cmp + g_swa o_swa, and the blocks (normalised,
     * the caller's too) to indices_out, which must then be set. */
    int defer_selected;
} nsa_tile;

/* Queries per tile and per sub-tile for a plan. */
int64_t nsa_tile_queries(const nsa_plan *plan, int dense);
int64_t nsa_tile_sub_queries(const nsa_plan *plan);

/* Whether m rows over a tile's keys are split once for all the tile's
 * calls: for split fp32 keys (qk_x3), and for a bf16 cache's keys on tile
 * products (qk_bf16_split) when the rows fill half a tile or more (fewer
 * go to the AVX-512 kernels, which read the fp32 rows). */
int nsa_tile_splits_rows(const nsa_plan *plan, const nsa_tile *tile, int64_t m);

/* Scratch of one worker: sized for tiles of up to max_queries queries in
 * sequences of up to max_len keys. */
typedef struct nsa_tile_scratch nsa_tile_scratch;
size_t nsa_tile_scratch_floats(const nsa_plan *plan, int64_t max_queries, int64_t max_len);

/* The three branches, selection and gates for every query of the tile
 * (spec sections 2-6). scratch holds nsa_tile_scratch_floats() floats. */
void nsa_tile_attend(const nsa_plan *plan, const nsa_tile *tile, int64_t max_queries,
                     int64_t max_len, float *scratch);

/* nsa_dense_forward's tile: every row attends to all keys of the sequence
 * (up to its query when causal); out = the normalised result. */
void nsa_tile_attend_dense(const nsa_plan *plan, const nsa_tile *tile, int64_t max_queries,
                           int64_t max_len, float *scratch);

/* Pieces of a tile's work, for decode's split path (decode_split.c). */

/* The union of count queries' chosen blocks ([count][n], each ascending,
 * -1 padded) into blocks, ascending; returns its size. */
int64_t nsa_union_blocks(const nsa_plan *plan, int64_t count, const int32_t *chosen,
                         int32_t *blocks);

/* Per row of queries first .. first + count - 1: the keys of `block` it
 * attends to (row_first > row_last when its query did not choose it). */
void nsa_selected_rows(const nsa_plan *plan, int64_t first, int64_t count, int64_t len,
                       const int32_t *chosen, int64_t block, int64_t *row_first,
                       int64_t *row_last);

/* Asks for a selected block's keys and values (fp32 or split) ahead of
 * use: the blocks are scattered over the sequence, so unlike the window
 * they give the hardware prefetcher no stream to follow, and tile loads
 * train none. */
void nsa_prefetch_block(const nsa_plan *plan, const nsa_keys *keys, int64_t block);

/* Per row: its query's window; *first_key, *last_key: their union. */
void nsa_window_rows(const nsa_plan *plan, int64_t first, int64_t count, int64_t len,
                     int64_t *row_first, int64_t *row_last, int64_t *first_key,
                     int64_t *last_key);

#endif /* NSA_TILE_H */
