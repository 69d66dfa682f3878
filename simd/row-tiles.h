/* SPDX-License-Identifier: MIT */
/*
 * row-tiles.h — how the kernels hand a tile its row count as a
 * compile-time constant that the always-inline tile functions unroll for,
 * one copy for every ISA: the bf16 kernels' row ladder (rows go `big` at a
 * time, then 4, 2 and 1), and the fp32 kernels' switch, which gives every
 * count from 1 to 6 or 8 its own specialisation.
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

/* Calls TILE(k) (a macro of the caller's) with the constant k == rows, for
 * rows in 1..6 (NSA_ROW_COUNT_6, AVX2) or 1..8 (NSA_ROW_COUNT_8, AVX-512);
 * other counts do nothing. */
#define NSA_ROW_COUNT_6(rows, TILE)                                                            \
    switch (rows) {                                                                            \
    case 1: TILE(1); break;                                                                    \
    case 2: TILE(2); break;                                                                    \
    case 3: TILE(3); break;                                                                    \
    case 4: TILE(4); break;                                                                    \
    case 5: TILE(5); break;                                                                    \
    case 6: TILE(6); break;                                                                    \
    default: break;                                                                            \
    }

#define NSA_ROW_COUNT_8(rows, TILE)                                                            \
    switch (rows) {                                                                            \
    case 1: TILE(1); break;                                                                    \
    case 2: TILE(2); break;                                                                    \
    case 3: TILE(3); break;                                                                    \
    case 4: TILE(4); break;                                                                    \
    case 5: TILE(5); break;                                                                    \
    case 6: TILE(6); break;                                                                    \
    case 7: TILE(7); break;                                                                    \
    case 8: TILE(8); break;                                                                    \
    default: break;                                                                            \
    }

#endif /* NSA_ROW_TILES_H */
