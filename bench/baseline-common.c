/* SPDX-License-Identifier: MIT */
/*
 * baseline-common.c — what the two dense baselines (OpenBLAS, oneDNN) share,
 * so that they differ only in whose GEMM they call: the tiling of the causal
 * triangle (a query tile of one KV head times its G heads, one GEMM row per
 * (query, head), so K and V are read once per group, as GQA allows), the
 * packing of a tile's queries, the choice of the vectorised softmax, and
 * the write-back of the normalised output.
 */
#include "bench.h"
#include "cpu_features.h"

bench_softmax_rows_fn *bench_softmax_rows_for(nsa_isa cap, const char **isa_name)
{
#if defined(NSA_HAVE_AVX512)
    if (cap >= NSA_ISA_AVX512 && cap != NSA_ISA_NEON && nsa_host_supports(NSA_ISA_AVX512)) {
        *isa_name = "avx512";
        return bench_softmax_rows_avx512;
    }
#endif
#if defined(NSA_HAVE_AVX2)
    if (cap >= NSA_ISA_AVX2 && cap != NSA_ISA_NEON && nsa_host_supports(NSA_ISA_AVX2)) {
        *isa_name = "avx2";
        return bench_softmax_rows_avx2;
    }
#endif
    (void)cap;
    *isa_name = "base";
    return bench_softmax_rows_base;
}

int64_t bench_tile_queries(const bench_problem *p, int64_t wanted, uint64_t budget_bytes)
{
    const uint64_t g = (uint64_t)(p->cfg.num_q_heads / p->cfg.num_kv_heads);
    const uint64_t row_bytes = ((uint64_t)p->seqlen + 16) * sizeof(float);
    int64_t fit = (int64_t)(budget_bytes / (row_bytes * g));
    int64_t q = wanted < fit ? wanted : fit;
    if (q >= 16)
        q -= q % 16;
    if (q < 1)
        q = 1;
    return q < p->seqlen ? q : p->seqlen;
}

void bench_tile_pack_q(const bench_problem *p, int64_t h, int64_t t0, int64_t count, float *qp)
{
    const int64_t hq = p->cfg.num_q_heads, g = hq / p->cfg.num_kv_heads;
    const int64_t dk = p->cfg.head_dim_qk;
    const float scale = p->cfg.scale;
    for (int64_t tq = 0; tq < count; tq++) {
        const float *src = p->q + (size_t)(((t0 + tq) * hq + h * g) * dk);
        float *dst = qp + (size_t)(tq * g * dk);
        for (int64_t e = 0; e < g * dk; e++) /* the G rows of a query are contiguous */
            dst[e] = src[e] * scale;
    }
}

void bench_tile_lengths(const bench_problem *p, int64_t t0, int64_t count, int64_t *len)
{
    const int64_t g = p->cfg.num_q_heads / p->cfg.num_kv_heads;
    for (int64_t tq = 0; tq < count; tq++)
        for (int64_t r = tq * g; r < (tq + 1) * g; r++)
            len[r] = t0 + tq + 1;
}

void bench_tile_unpack_o(const bench_problem *p, int64_t h, int64_t t0, int64_t count,
                         const float *o, const float *sum, float *out)
{
    const int64_t hq = p->cfg.num_q_heads, g = hq / p->cfg.num_kv_heads;
    const int64_t dv = p->cfg.head_dim_v;
    for (int64_t tq = 0; tq < count; tq++) {
        float *dst = out + (size_t)(((t0 + tq) * hq + h * g) * dv);
        for (int64_t r = tq * g; r < (tq + 1) * g; r++, dst += dv) {
            const float inv = 1.0f / sum[r];
            for (int64_t c = 0; c < dv; c++)
                dst[c] = o[r * dv + c] * inv;
        }
    }
}
