/* SPDX-License-Identifier: MIT */
/*
 * isa-list.c — prints the instruction sets this machine can run libnsa's
 * kernels with, one per line, lowest first ("ref", then e.g. "avx2",
 * "avx512"). tests/each-isa uses it to run the suite once per ISA.
 */
#include <stdio.h>

#include "nsa.h"

int main(void)
{
    for (int isa = NSA_ISA_REF; isa <= NSA_ISA_AMX; isa++) {
        nsa_context_options opts;
        nsa_context_options_init(&opts);
        opts.num_threads = 1;
        opts.max_isa = isa;
        nsa_context *ctx = NULL;
        if (nsa_context_create(&opts, &ctx) != NSA_SUCCESS)
            return 1;
        if ((int)nsa_context_isa(ctx) == isa)
            printf("%s\n", nsa_isa_name((nsa_isa)isa));
        nsa_context_destroy(ctx);
    }
    return 0;
}
