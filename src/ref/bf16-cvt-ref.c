/* SPDX-License-Identifier: MIT */
/*
 * bf16-cvt-ref.c — bf16 to fp32 in plain C (contract in ukernels.h): a bf16
 * is the upper 16 bits of an fp32, so the conversion is a shift, exact.
 */
#include <string.h>

#include "ukernels.h"

void nsa_bf16_cvt_ukernel__ref(size_t n, const uint16_t *src, float *dst)
{
    for (size_t i = 0; i < n; i++) {
        uint32_t bits = (uint32_t)src[i] << 16;
        memcpy(dst + i, &bits, sizeof bits);
    }
}
