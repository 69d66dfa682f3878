/* SPDX-License-Identifier: MIT */
/*
 * decode_split.h — decode's path for a few tiles over long caches: each
 * tile's keys are split into fixed units that all workers share
 * (decode_split.c).
 */
#ifndef NSA_DECODE_SPLIT_H
#define NSA_DECODE_SPLIT_H

#include "tile.h"

/* Compressed keys per unit, a multiple of NSA_PANEL. */
enum { NSA_SPLIT_CMP_KEYS = 256 };

/* A decode with at most this many tiles takes the split path; more tiles
 * keep every worker busy on their own. Fixed, so the path (and so the
 * rounding) depends on the inputs, never on the number of workers. */
enum { NSA_SPLIT_MAX_TILES = 16 };

/* NSA for the tiles (keys in caches; tiles' conversion scratch unused),
 * with max_len the longest cache. Writes the tiles' outputs and indices.
 * Errors: NSA_ERROR_OUT_OF_MEMORY, before anything is written. */
nsa_status nsa_decode_split(const nsa_plan *plan, const nsa_tile *tiles, int64_t num_tiles,
                            int64_t max_len);

#endif /* NSA_DECODE_SPLIT_H */
