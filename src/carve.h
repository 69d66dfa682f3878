/* SPDX-License-Identifier: MIT */
/*
 * carve.h — lays a scratch buffer out in consecutive 64-byte aligned
 * pieces. With a NULL base it only adds up the bytes, so one function can
 * first size a layout and then lay it out; every worker scratch and
 * workspace of the library is carved this way.
 */
#ifndef NSA_CARVE_H
#define NSA_CARVE_H

#include <stddef.h>

typedef struct nsa_carver {
    char *base; /* NULL: sizing only */
    size_t used;
} nsa_carver;

/* The next piece of bytes (NULL when sizing). Offsets are multiples of 64
 * from base, so a piece has base's alignment or 64 bytes', the smaller. */
static inline void *nsa_carve(nsa_carver *c, size_t bytes)
{
    void *p = c->base != NULL ? c->base + c->used : NULL;
    c->used += (bytes + 63) & ~(size_t)63;
    return p;
}

/* The floats the pieces carved so far take. */
static inline size_t nsa_carved_floats(const nsa_carver *c)
{
    return c->used / sizeof(float);
}

#endif /* NSA_CARVE_H */
