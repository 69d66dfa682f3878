/* SPDX-License-Identifier: MIT */
/*
 * cpu_features.c — run-time detection of the instruction sets the kernels
 * need. On x86-64 a CPUID bit is not enough: the OS must also save the
 * vector registers on a context switch, which XGETBV reports (XCR0 bits 1-2
 * for AVX state, 5-7 for AVX-512 state, 17-18 for AMX tiles), and Linux
 * hands out the AMX tile state only to a process that asks for it
 * (arch_prctl ARCH_REQ_XCOMP_PERM, once per process; asking again is
 * harmless). On aarch64, Linux reports Advanced SIMD through
 * getauxval(AT_HWCAP).
 */
#include <string.h>

#include "config.h"
#include "cpu_features.h"

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

static unsigned long long read_xcr0(void)
{
    unsigned int eax, edx;
    __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
    return ((unsigned long long)edx << 32) | eax;
}

/* Asks Linux for the AMX tile state; 1 once granted. */
static int amx_permitted(void)
{
#if defined(__linux__) && defined(SYS_arch_prctl)
    enum { ARCH_REQ_XCOMP_PERM = 0x1023, XFEATURE_XTILEDATA = 18 };
    return syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0;
#else
    return 0;
#endif
}

static int x86_supports(nsa_isa isa)
{
    unsigned int eax, ebx, ecx, edx;
    if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx))
        return 0;
    const int fma = (ecx >> 12) & 1, osxsave = (ecx >> 27) & 1, avx = (ecx >> 28) & 1;
    if (!(fma && osxsave && avx))
        return 0;
    unsigned long long xcr0 = read_xcr0();
    if ((xcr0 & 0x6) != 0x6)
        return 0;
    if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx))
        return 0;
    const int avx2 = (ebx >> 5) & 1;
    if (isa == NSA_ISA_AVX2)
        return avx2;
    const int f = (ebx >> 16) & 1, dq = (ebx >> 17) & 1, bw = (ebx >> 30) & 1,
              vl = (ebx >> 31) & 1;
    const int avx512 = avx2 && f && dq && bw && vl && (xcr0 & 0xe0) == 0xe0;
    if (isa == NSA_ISA_AVX512)
        return avx512;
    const int amx_bf16 = (edx >> 22) & 1, amx_tile = (edx >> 24) & 1;
    if (!(isa == NSA_ISA_AMX && avx512 && amx_bf16 && amx_tile && (xcr0 & 0x60000) == 0x60000))
        return 0;
    if (!__get_cpuid_count(7, 1, &eax, &ebx, &ecx, &edx) || !((eax >> 5) & 1)) /* AVX512-BF16 */
        return 0;
    return amx_permitted();
}
#endif

#if defined(__aarch64__)
#include <sys/auxv.h>
#ifndef HWCAP_ASIMD
#define HWCAP_ASIMD (1 << 1)
#endif
#endif

int nsa_host_supports(nsa_isa isa)
{
    switch (isa) {
    case NSA_ISA_REF:
        return 1;
    case NSA_ISA_AVX2:
#if defined(NSA_HAVE_AVX2)
        return x86_supports(NSA_ISA_AVX2);
#else
        return 0;
#endif
    case NSA_ISA_AVX512:
#if defined(NSA_HAVE_AVX512)
        return x86_supports(NSA_ISA_AVX512);
#else
        return 0;
#endif
    case NSA_ISA_AMX:
#if defined(NSA_HAVE_AMX)
        return x86_supports(NSA_ISA_AMX);
#else
        return 0;
#endif
    case NSA_ISA_NEON:
#if defined(NSA_HAVE_NEON)
        return (getauxval(AT_HWCAP) & HWCAP_ASIMD) != 0;
#else
        return 0;
#endif
    }
    return 0;
}

nsa_isa nsa_host_isa(void)
{
    static const nsa_isa best_first[] = {NSA_ISA_AMX, NSA_ISA_AVX512, NSA_ISA_AVX2,
                                           NSA_ISA_NEON};
    for (size_t i = 0; i < sizeof best_first / sizeof best_first[0]; i++)
        if (nsa_host_supports(best_first[i]))
            return best_first[i];
    return NSA_ISA_REF;
}

const char *nsa_isa_name(nsa_isa isa)
{
    switch (isa) {
    case NSA_ISA_REF: return "ref";
    case NSA_ISA_AVX2: return "avx2";
    case NSA_ISA_AVX512: return "avx512";
    case NSA_ISA_NEON: return "neon";
    case NSA_ISA_AMX: return "amx";
    }
    return "unknown";
}

int nsa_isa_parse(const char *name)
{
    for (int isa = NSA_ISA_REF; isa <= NSA_ISA_LAST; isa++)
        if (strcmp(name, nsa_isa_name((nsa_isa)isa)) == 0)
            return isa;
    return -1;
}
