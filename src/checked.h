/* SPDX-License-Identifier: MIT */
/*
 * checked.h — size arithmetic that reports overflow instead of wrapping.
 * Every size derived from user input (tokens x heads x dims, parameter
 * tensors) goes through these before anything is allocated or indexed, so a
 * hostile or mistaken shape yields NSA_ERROR_SIZE_OVERFLOW, never a short
 * buffer.
 */
#ifndef NSA_CHECKED_H
#define NSA_CHECKED_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* *out = a * b * c (all >= 0); false on int64_t overflow. */
static inline bool nsa_checked_mul3(int64_t a, int64_t b, int64_t c, int64_t *out)
{
    int64_t ab = 0;
    return !__builtin_mul_overflow(a, b, &ab) && !__builtin_mul_overflow(ab, c, out);
}

/* *out = count elements of elem_size bytes; false if it does not fit size_t
 * (or is negative). */
static inline bool nsa_checked_bytes(int64_t count, size_t elem_size, size_t *out)
{
    if (count < 0 || (uint64_t)count > SIZE_MAX)
        return false;
    return !__builtin_mul_overflow((size_t)count, elem_size, out);
}

#endif /* NSA_CHECKED_H */
