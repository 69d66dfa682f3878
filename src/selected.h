/* SPDX-License-Identifier: MIT */
/*
 * selected.h — the forward's selected branch block by block (selected.c):
 * for a chunk of consecutive queries of one sequence and KV head, the
 * selections are inverted into a list of selecting queries per block, and
 * each block is loaded once for all of its rows. Used after the tiles have
 * written the compressed and window branches (nsa_tile with
 * defer_selected), it adds g_slc * o_slc to the output.
 */
#ifndef NSA_SELECTED_H
#define NSA_SELECTED_H

#include "tile.h"

/* Rows (queries x G heads) per chunk, and at most this many queries. A
 * block read from DRAM serves every row of the chunk that chose it, so
 * more queries per chunk share more of each load, while the chunk's row
 * state (2 MiB at 4096 rows, Dv = 128) spills further out of L2. Zen 4, two
 * threads, NSA alone: at G = 16, 4096 rows against 1024 took the 64K
 * selected branch from 3218-3295 to 2970-3102 ms (16384 rows: 3764-3821
 * ms); at G = 1, 4096 queries were slower than 1024 (selected 2050-2224
 * against 1944-1951 ms at 32K) and 256 much slower (2746-2875 ms).
 * Both may be set at configure time for A/B builds, e.g.
 * CPPFLAGS=-DNSA_SELECTED_CHUNK_ROWS=1024 (bench/pack-gpu-host.sh). */
#ifndef NSA_SELECTED_CHUNK_ROWS
#define NSA_SELECTED_CHUNK_ROWS 4096
#endif
#ifndef NSA_SELECTED_CHUNK_QUERIES
#define NSA_SELECTED_CHUNK_QUERIES 1024
#endif

/* One chunk: queries first .. first + count - 1 of a sequence of len keys,
 * with the strides of nsa_tile (query i's G rows at q + i * q_stride, ...). */
typedef struct nsa_selected_job {
    nsa_keys raw; /* fp32 or bf16, maybe also split (used where on tiles) */
    int64_t len;
    int64_t first, count;
    const float *q, *gates;
    float *out;
    size_t q_stride, gates_stride, out_stride;
    const int32_t *blocks; /* query i's n blocks at blocks + i * index_stride,
                              ascending, -1 padded */
    size_t index_stride;
    float *lse; /* optional: the slc log-sum-exp of query i's rows at lse + i * lse_stride */
    size_t lse_stride;
} nsa_selected_job;

/* Queries per chunk for a plan. */
int64_t nsa_selected_chunk_queries(const nsa_plan *plan);

/* Scratch floats of one worker for chunks in sequences of up to max_len keys. */
size_t nsa_selected_scratch_floats(const nsa_plan *plan, int64_t max_len);

/* out += g_slc * o_slc for every query of the job (spec section 4). */
void nsa_selected_attend(const nsa_plan *plan, const nsa_selected_job *job, float *scratch);

#endif /* NSA_SELECTED_H */
