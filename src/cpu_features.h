/* SPDX-License-Identifier: MIT */
/*
 * cpu_features.h — what instruction sets this CPU and OS can run.
 */
#ifndef NSA_CPU_FEATURES_H
#define NSA_CPU_FEATURES_H

#include "nsa.h"

/* The best ISA the host runs among those this build has kernels for. */
nsa_isa nsa_host_isa(void);

/* 1 if the host can run kernels of this ISA (and the build has them). */
int nsa_host_supports(nsa_isa isa);

/* The highest nsa_isa value. */
enum { NSA_ISA_LAST = NSA_ISA_AMX };

/* Parses "ref", "avx2", "avx512", "neon", "amx"; returns -1 for anything
 * else. */
int nsa_isa_parse(const char *name);

#endif /* NSA_CPU_FEATURES_H */
