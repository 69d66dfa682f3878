/* SPDX-License-Identifier: MIT */
/*
 * row-tiles.h — the row ladder of the bf16 kernels, one copy for every ISA:
 * rows go `big` at a time, then 4, 2 and 1, so each tile's row count is a
 * compile-time constant that the always-inline tile functions unroll for.
 */
#ifndef NSA_ROW_TILES_H
#define NSA_ROW_TILES_H

/* Calls TILE(rows, r) (a macro of the caller's) for tiles of rows
 * [r, r + rows) that cover [0, m) in order; big >= 4. */
#define NSA_ROW_TILES(m, big, TILE)                                                            \
    do {                                                                                       \
        size_t r_ = 0;                                                                         \
        for (; r_ + (big) <= (m); r_ += (big))                                                 \
            TILE(big, r_);                                                                     \
        if (r_ + 4 <= (m)) {                                                                   \
            TILE(4, r_);                                                                       \
            r_ += 4;                                                                           \
        }                                                                                      \
        if (r_ + 2 <= (m)) {                                                                   \
            TILE(2, r_);                                                                       \
            r_ += 2;                                                                           \
        }                                                                                      \
        if (r_ < (m))                                                                          \
            TILE(1, r_);                                                                       \
    } while (0)

#endif /* NSA_ROW_TILES_H */
