/* SPDX-License-Identifier: MIT */
/*
 * nsa.h — the public C API of libnsa, a library for DeepSeek's Native Sparse
 * Attention (NSA, Yuan et al., arXiv 2502.11089).
 *
 * This is the only header libnsa installs. The function computed is defined
 * normatively by docs/nsa-semantics.md (the spec); section numbers below refer
 * to it.
 *
 * Lifecycle:
 *
 *     nsa_context_create()   what lives for the process: threads, topology
 *       nsa_config_init()    fill the paper defaults, then change fields
 *       nsa_plan_create()    validate a configuration once; immutable after
 *         nsa_forward()      run it, as often and from as many threads as wanted
 *       nsa_plan_destroy()
 *     nsa_context_destroy()
 *
 * Conventions used by every function:
 *   - Tensors are dense, row-major (C order), fp32, token-major and packed over
 *     a batch of variable-length sequences (FlashAttention's varlen layout).
 *     The caller owns every buffer; the library never keeps a pointer to one
 *     after the call returns.
 *   - Every fallible function returns an nsa_status; NSA_SUCCESS is 0. On
 *     failure nothing is written to any output, and nsa_context_last_error()
 *     names the argument at fault. The library never aborts and never prints
 *     unless asked to (NSA_VERBOSE).
 *   - Sizes that can exceed 2^31 elements are int64_t.
 */
#ifndef NSA_H
#define NSA_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The version. configure.ac reads NSA_VERSION_STRING from this line. */
#define NSA_VERSION_MAJOR 0
#define NSA_VERSION_MINOR 1
#define NSA_VERSION_PATCH 0
#define NSA_VERSION_STRING "0.1.0"

#if defined(NSA_BUILDING_LIBRARY) && defined(__GNUC__)
#define NSA_API __attribute__((visibility("default")))
#else
#define NSA_API
#endif

/* ------------------------------------------------------------------------ */
/* Status codes                                                              */
/* ------------------------------------------------------------------------ */

typedef enum nsa_status {
    NSA_SUCCESS = 0,
    NSA_ERROR_NULL_POINTER = 1,      /* a required pointer argument is NULL */
    NSA_ERROR_INVALID_DIMENSION = 2, /* a head count, head dim, length or
                                        count is zero or negative */
    NSA_ERROR_INVALID_HEADS = 3,     /* num_q_heads is not a multiple of
                                        num_kv_heads */
    NSA_ERROR_INVALID_BLOCKS = 4,    /* block geometry: d must divide l and
                                        l', and l <= l' */
    NSA_ERROR_INVALID_SELECTION = 5, /* n < n_init + n_local, or a negative
                                        forced count */
    NSA_ERROR_INVALID_SEQLENS = 6,   /* cu_seqlens does not start at 0,
                                        decreases, or does not end at T */
    NSA_ERROR_INVALID_INDICES = 7,   /* caller-given block indices out of
                                        range or repeated */
    NSA_ERROR_INVALID_ARGUMENT = 8,  /* any other bad value: an enum out of
                                        range, a non-finite scale, parameters
                                        given for the wrong compression kind */
    NSA_ERROR_SIZE_OVERFLOW = 9,     /* a size product does not fit in
                                        int64_t / size_t */
    NSA_ERROR_OUT_OF_MEMORY = 10,    /* an allocation failed */
    NSA_ERROR_UNSUPPORTED = 11,      /* valid, but not implemented here */
    NSA_ERROR_SYSTEM = 12,           /* the OS or hwloc refused (threads,
                                        topology) */
    NSA_ERROR_INTERNAL = 13,         /* a bug in libnsa; please report it */
    NSA_ERROR_CAPACITY = 14,         /* a KV cache has no room for the tokens */
    NSA_ERROR_MISMATCH = 15          /* a KV cache does not fit the plan: other
                                        heads, dims or block geometry */
} nsa_status;

/* A static, human-readable name for a status ("invalid block geometry").
 * Never NULL; unknown values give "unknown status". Thread-safe. */
NSA_API const char *nsa_status_string(nsa_status status);

/* The run-time library version, e.g. "0.1.0". May differ from
 * NSA_VERSION_STRING when the program was compiled against another header. */
NSA_API const char *nsa_version(void);

/* ------------------------------------------------------------------------ */
/* Context                                                                   */
/* ------------------------------------------------------------------------ */

/* What lives for the process: the hardware topology (hwloc), the thread
 * pool, the instruction set the kernels use, the diagnostic channel.
 * Opaque. */
typedef struct nsa_context nsa_context;

/* Instruction sets of the kernels. On x86-64, ref < avx2 < avx512 < amx; on
 * aarch64, ref < neon. The library picks the best one the CPU and OS support
 * at run time (CPUID + XGETBV on x86-64, getauxval on aarch64). */
typedef enum nsa_isa {
    NSA_ISA_REF = 0,    /* portable C */
    NSA_ISA_AVX2 = 1,   /* AVX2 + FMA */
    NSA_ISA_AVX512 = 2, /* AVX-512 F/BW/DQ/VL */
    NSA_ISA_NEON = 3,   /* Advanced SIMD (aarch64) */
    NSA_ISA_AMX = 4     /* avx512 plus AMX-BF16 tiles and AVX512-BF16: bf16 KV
                         * caches are read with tile products (see
                         * nsa_dtype), and the fp32 forward (nsa_forward,
                         * nsa_forward_train, nsa_dense_forward) runs its
                         * long spans of keys (dense attention, NSA's
                         * compressed branch) on tiles with each fp32
                         * operand split into three exact bf16 terms: fp32
                         * accuracy (six of the nine term products; the
                         * three dropped are below 2^-23 of each product),
                         * another summation order than the FMA kernels,
                         * 1.5x the bytes for those packed keys and values
                         * (NSA's selected and window branches stay on the
                         * FMA kernels); each such kernel call
                         * configures the tiles and releases them before it
                         * returns */
} nsa_isa;

/* "ref", "avx2", "avx512", "neon", "amx"; "unknown" otherwise. */
NSA_API const char *nsa_isa_name(nsa_isa isa);

typedef struct nsa_context_options {
    /* Worker threads used by each call. 0 = the NSA_NUM_THREADS environment
     * variable if set, else one per core. */
    int32_t num_threads;
    /* 1 = bind each worker thread to its own core with hwloc, the workers
     * spread over the NUMA nodes in proportion to their cores (a core each
     * while there are enough); the calling thread works too, as the first
     * worker: during a call it is moved onto that worker's core if it runs
     * elsewhere, and given its own binding back when the call returns.
     * 0 = leave placement to the OS. */
    int32_t bind_threads;
    /* The highest instruction set the kernels may use: an nsa_isa value, or
     * -1 = the NSA_MAX_ISA environment variable (ref, avx2, avx512, amx or neon)
     * if set, else no cap. Capped to what the CPU supports. */
    int32_t max_isa;
    /* 1 = print one line per decision (kernel choice, thread count) to
     * stderr; 0 = silent; -1 = the NSA_VERBOSE environment variable. */
    int32_t verbose;
    /* Microseconds (0 .. 1000000) that, after a short call (nsa_decode),
     * an idle worker keeps polling for the next call before it sleeps, and
     * the caller polls for its workers. Decode steps that come back to back
     * then skip the tens of microseconds a sleeping thread takes to wake;
     * longer polling costs idle CPU time, and CPU time of other programs
     * sharing the cores. Long calls (forward, backward) never poll. -1 = the NSA_SPIN_US environment variable if set, else
     * NSA_DEFAULT_SPIN_US. */
    int32_t spin_us;
} nsa_context_options;

/* The spin_us of the default options. */
#define NSA_DEFAULT_SPIN_US 100

/* Fills opts with the defaults: num_threads = 0, bind_threads = 1,
 * max_isa = -1, verbose = -1, spin_us = -1. */
NSA_API void nsa_context_options_init(nsa_context_options *opts);

/* Creates a context. opts may be NULL for the defaults.
 * Errors: NSA_ERROR_NULL_POINTER (ctx), NSA_ERROR_INVALID_ARGUMENT (negative
 * num_threads, bind_threads not 0 or 1, max_isa out of range, spin_us
 * out of range, NSA_MAX_ISA not a known name), NSA_ERROR_SYSTEM (hwloc could not
 * read the topology, or a thread could not be started),
 * NSA_ERROR_OUT_OF_MEMORY. On failure *ctx is set to NULL. */
NSA_API nsa_status nsa_context_create(const nsa_context_options *opts,
                                      nsa_context **ctx);

/* Releases a context. Every plan made from it must be destroyed first.
 * NULL is accepted and ignored. */
NSA_API void nsa_context_destroy(nsa_context *ctx);

/* The message of the most recent failure of a call that used this context
 * ("cu_seqlens[3] = 17 is smaller than cu_seqlens[2] = 40"), or "" if none.
 * The string stays valid until the next failing call on the context; when
 * several threads share a context, copy it right after the failing call.
 * ctx may be NULL (returns ""). */
NSA_API const char *nsa_context_last_error(const nsa_context *ctx);

/* The number of worker threads calls on this context use (>= 1). */
NSA_API int32_t nsa_context_num_threads(const nsa_context *ctx);

/* The instruction set the context's plans use. */
NSA_API nsa_isa nsa_context_isa(const nsa_context *ctx);

/* ------------------------------------------------------------------------ */
/* Configuration (spec, "Shapes and names")                                  */
/* ------------------------------------------------------------------------ */

/* The compression function phi of spec section 1. */
typedef enum nsa_compress_kind {
    NSA_COMPRESS_MEAN = 0,     /* (1/l) sum_j (x_j + pe_j)                   */
    NSA_COMPRESS_WEIGHTED = 1, /* sum_j a_j (x_j + pe_j)                     */
    NSA_COMPRESS_LINEAR = 2,   /* W^T vec(x + pe)                            */
    NSA_COMPRESS_MLP = 3       /* W2^T relu(W1^T vec(x + pe))                */
} nsa_compress_kind;

typedef struct nsa_config {
    int32_t num_q_heads;  /* Hq */
    int32_t num_kv_heads; /* Hkv; G = Hq / Hkv query heads share a KV head */
    int32_t head_dim_qk;  /* Dk */
    int32_t head_dim_v;   /* Dv (may differ from Dk) */

    int32_t cmp_block;  /* l: raw tokens per compressed token        (32) */
    int32_t cmp_stride; /* d: stride between compressed tokens       (16) */
    int32_t sel_block;  /* l': tokens per selection block            (64) */
    int32_t sel_count;  /* n: blocks per query, forced ones included (16) */
    int32_t sel_init;   /* n_init: forced initial blocks              (1) */
    int32_t sel_local;  /* n_local: forced most recent blocks         (2) */
    int32_t window;     /* w: sliding window, the query's own key
                           included                                 (512) */
    float scale;        /* softmax scale                   (1/sqrt(Dk)) */
    int32_t causal;     /* 1 = causal (decoders), 0 = spec section 9 (1) */

    nsa_compress_kind compress; /* phi                              (mean) */
    int32_t cmp_mlp_hidden;     /* M, hidden width of the mlp phi  (2*Dk) */
} nsa_config;

/* Fills cfg with the paper's defaults (values in brackets above) for the
 * given heads and head dims. The arguments are stored as given and checked
 * by nsa_plan_create. Errors: NSA_ERROR_NULL_POINTER. */
NSA_API nsa_status nsa_config_init(nsa_config *cfg, int32_t num_q_heads,
                                   int32_t num_kv_heads, int32_t head_dim_qk,
                                   int32_t head_dim_v);

/* ------------------------------------------------------------------------ */
/* Plan                                                                      */
/* ------------------------------------------------------------------------ */

/* A validated, immutable configuration with the kernels chosen for this
 * machine. Opaque. */
typedef struct nsa_plan nsa_plan;

/* Validates cfg and creates a plan; cfg is copied.
 * Errors, each with a message naming the field:
 *   NSA_ERROR_NULL_POINTER       ctx, cfg or plan is NULL (ctx NULL: no message)
 *   NSA_ERROR_INVALID_DIMENSION  a head count, head dim, l, d, l', n, w or M <= 0
 *   NSA_ERROR_INVALID_HEADS      num_q_heads % num_kv_heads != 0
 *   NSA_ERROR_INVALID_BLOCKS     d does not divide l or l', or l > l'
 *   NSA_ERROR_INVALID_SELECTION  sel_init or sel_local < 0, or
 *                                sel_count < sel_init + sel_local
 *   NSA_ERROR_INVALID_ARGUMENT   scale not finite and > 0, causal not 0/1,
 *                                unknown compress kind
 *   NSA_ERROR_SIZE_OVERFLOW      a parameter tensor's size overflows
 *   NSA_ERROR_OUT_OF_MEMORY
 * On failure *plan is set to NULL (when plan is not NULL).
 * Thread safety: safe to call concurrently on one context. */
NSA_API nsa_status nsa_plan_create(nsa_context *ctx, const nsa_config *cfg,
                                   nsa_plan **plan);

/* Releases a plan. NULL is accepted and ignored. */
NSA_API void nsa_plan_destroy(nsa_plan *plan);

/* Copies the plan's configuration into *cfg.
 * Errors: NSA_ERROR_NULL_POINTER (plan or cfg). */
NSA_API nsa_status nsa_plan_get_config(const nsa_plan *plan, nsa_config *cfg);

/* A static one-line description of the kernels and threads the plan uses,
 * e.g. "isa=ref threads=1 gemm=openblas". Never NULL. */
NSA_API const char *nsa_plan_describe(const nsa_plan *plan);

/* ------------------------------------------------------------------------ */
/* Inputs                                                                    */
/* ------------------------------------------------------------------------ */

/* A packed batch of variable-length sequences. Sequence b occupies tokens
 * [cu_seqlens[b], cu_seqlens[b+1]) of every tensor. Requirements:
 * cu_seqlens[0] = 0, non-decreasing, cu_seqlens[num_seqs] = total_tokens.
 * Zero-length sequences are valid; attention never crosses a sequence. */
typedef struct nsa_batch {
    int64_t num_seqs;          /* B >= 0 */
    int64_t total_tokens;      /* T >= 0 */
    const int64_t *cu_seqlens; /* [B + 1]; may be NULL when B = 0 and T = 0 */
} nsa_batch;

/* Parameters of phi for K or for V (spec section 1), D being Dk for K and
 * Dv for V. Which pointers are used depends on the plan's compress kind:
 *
 *   kind       required                            must be NULL
 *   mean       -                                   a, w, w1, w2
 *   weighted   a  [Hkv][l]                         w, w1, w2
 *   linear     w  [Hkv][l*D][D]                    a, w1, w2
 *   mlp        w1 [Hkv][l*D][M], w2 [Hkv][M][D]    a, w
 *
 * pe [Hkv][l][D] is optional for every kind (NULL = no position encoding);
 * vec(x + pe) flattens the l x D window row by row (token j, then channel).
 * For the mean kind with no pe, the whole struct pointer may be NULL. */
typedef struct nsa_compress_params {
    const float *pe;
    const float *a;
    const float *w;
    const float *w1;
    const float *w2;
} nsa_compress_params;

/* ------------------------------------------------------------------------ */
/* Forward                                                                   */
/* ------------------------------------------------------------------------ */

/* nsa_forward: NSA attention of a packed batch (spec sections 1-6, 9).
 *
 *   q      [T][Hq][Dk]     queries
 *   k      [T][Hkv][Dk]    keys
 *   v      [T][Hkv][Dv]    values
 *   gates  [T][Hq][3]      (g_cmp, g_slc, g_swa), used as given
 *   cmp_k, cmp_v           phi parameters for K and V (see above)
 *   out    [T][Hq][Dv]     o = g_cmp o_cmp + g_slc o_slc + g_swa o_swa
 *   block_indices_out      optional [T][Hkv][n] int32: the blocks each query
 *                          selected (shared by the G heads of a group),
 *                          sorted ascending, padded with -1; NULL to skip
 *
 * Memory: O(T) workspace, allocated inside the call; no T x T buffer.
 * Threads: the call runs on the context's worker threads; the result is
 * bitwise the same for every thread count.
 * Thread safety: a plan may run on several threads at once, each with its
 * own outputs (calls sharing a context take turns on its workers). Inputs
 * are only read.
 * Errors: NSA_ERROR_NULL_POINTER (plan, batch, cu_seqlens when B > 0, a
 * tensor when T > 0, a required phi parameter), NSA_ERROR_INVALID_DIMENSION
 * (B or T < 0), NSA_ERROR_INVALID_SEQLENS, NSA_ERROR_INVALID_ARGUMENT (a phi
 * parameter given that the kind does not use), NSA_ERROR_SIZE_OVERFLOW,
 * NSA_ERROR_OUT_OF_MEMORY. Outputs are written only on NSA_SUCCESS. */
NSA_API nsa_status nsa_forward(const nsa_plan *plan, const nsa_batch *batch,
                               const float *q, const float *k, const float *v,
                               const float *gates,
                               const nsa_compress_params *cmp_k,
                               const nsa_compress_params *cmp_v, float *out,
                               int32_t *block_indices_out);

/* nsa_forward_with_indices: as nsa_forward, but the selected branch attends
 * to the caller's blocks instead of selecting them (as fla's kernels allow).
 * The compressed and window branches are computed as usual.
 *
 *   block_indices  [T][Hkv][n] int32: block numbers local to each sequence,
 *                  in any order, -1 for an unused slot. Each entry must be -1
 *                  or in [0, ceil(L / l')) for its sequence of length L, with
 *                  no block repeated within one (token, KV head). In causal
 *                  mode keys after the query are masked, so a block starting
 *                  after the query contributes nothing; a query with no key
 *                  left gets o_slc = 0.
 *
 * Errors: as nsa_forward, plus NSA_ERROR_INVALID_INDICES naming the first
 * offending entry. */
NSA_API nsa_status nsa_forward_with_indices(
    const nsa_plan *plan, const nsa_batch *batch, const float *q,
    const float *k, const float *v, const float *gates,
    const nsa_compress_params *cmp_k, const nsa_compress_params *cmp_v,
    const int32_t *block_indices, float *out);

/* ------------------------------------------------------------------------ */
/* Training: the backward pass (spec section 7)                              */
/* ------------------------------------------------------------------------ */

/* What nsa_backward needs from the forward pass of a batch: the
 * log-sum-exp of each branch for every query head ([3][T][Hq] floats) and
 * the selected blocks ([T][Hkv][n]). Owned by the caller; reusable for any
 * batch of at most the tokens it was created for. Opaque. */
typedef struct nsa_saved nsa_saved;

/* Creates room for batches of up to max_tokens tokens.
 * Errors: NSA_ERROR_NULL_POINTER, NSA_ERROR_INVALID_DIMENSION,
 * NSA_ERROR_SIZE_OVERFLOW, NSA_ERROR_OUT_OF_MEMORY. */
NSA_API nsa_status nsa_saved_create(const nsa_plan *plan, int64_t max_tokens,
                                    nsa_saved **saved);

/* Releases it. NULL is accepted and ignored. */
NSA_API void nsa_saved_destroy(nsa_saved *saved);

/* nsa_forward_train: nsa_forward that also records in saved what
 * nsa_backward needs. Same arguments and errors as nsa_forward, plus
 * NSA_ERROR_NULL_POINTER (saved), NSA_ERROR_CAPACITY when the batch has
 * more tokens than saved holds, NSA_ERROR_MISMATCH when saved was made for
 * another plan's shapes. */
NSA_API nsa_status nsa_forward_train(const nsa_plan *plan, const nsa_batch *batch,
                                     const float *q, const float *k, const float *v,
                                     const float *gates, const nsa_compress_params *cmp_k,
                                     const nsa_compress_params *cmp_v, float *out,
                                     nsa_saved *saved);

/* Gradients of phi's parameters, shaped as nsa_compress_params: each
 * pointer the kind uses receives the gradient of that parameter (pe only
 * where the forward had one); NULL skips a gradient nobody wants. Pointers
 * the kind does not use, and pe when the forward had none, are ignored:
 * nothing is written there. */
typedef struct nsa_compress_grads {
    float *pe;
    float *a;
    float *w;
    float *w1;
    float *w2;
} nsa_compress_grads;

/* nsa_backward: the gradients of a loss through nsa_forward (spec section
 * 7), given dout = dLoss/dout [T][Hq][Dv]. Selection is a constant: no
 * gradient flows through the ranking, as in the paper.
 *
 *   batch, q, k, v, gates, cmp_k, cmp_v   exactly the forward's inputs
 *   saved    from nsa_forward_train on these inputs, or NULL to recompute
 *            the selection and log-sum-exps here (less memory kept between
 *            forward and backward, one more forward's worth of work)
 *   dq [T][Hq][Dk], dk [T][Hkv][Dk], dv [T][Hkv][Dv], dgates [T][Hq][3]
 *            overwritten with the gradients
 *   grad_k, grad_v   gradients of cmp_k's and cmp_v's parameters
 *            (overwritten); either may be NULL
 *
 * dK and dV sum the contributions of every query that attended to a key;
 * the sums are taken in a fixed order with no atomics, so the gradients
 * are bitwise the same on every run and for every thread count.
 * Memory: O(T). Errors: as nsa_forward (dout, dq, dk, dv and dgates are
 * required when T > 0), plus NSA_ERROR_CAPACITY when saved holds fewer
 * tokens than the batch and NSA_ERROR_MISMATCH when it was made for another
 * plan's shapes or its last nsa_forward_train had another number of
 * tokens. Outputs are written only on NSA_SUCCESS (with T = 0 that is the
 * parameter gradients alone: zero). */
NSA_API nsa_status nsa_backward(const nsa_plan *plan, const nsa_batch *batch, const float *q,
                                const float *k, const float *v, const float *gates,
                                const nsa_compress_params *cmp_k,
                                const nsa_compress_params *cmp_v, const float *dout,
                                const nsa_saved *saved, float *dq, float *dk, float *dv,
                                float *dgates, const nsa_compress_grads *grad_k,
                                const nsa_compress_grads *grad_v);

/* ------------------------------------------------------------------------ */
/* Dense attention                                                           */
/* ------------------------------------------------------------------------ */

/* nsa_dense_forward: full softmax attention over the same layout, causal or
 * not per the plan: out = softmax(scale q K^T) V, every key of the
 * sequence (up to the query when causal). Built from the same kernels and
 * threads as nsa_forward; it is the baseline NSA is measured against and a
 * reference for comparing NSA with full attention.
 *
 *   q [T][Hq][Dk], k [T][Hkv][Dk], v [T][Hkv][Dv], out [T][Hq][Dv]
 *
 * Memory: O(T). Errors: as nsa_forward (no gates or phi parameters). */
NSA_API nsa_status nsa_dense_forward(const nsa_plan *plan, const nsa_batch *batch,
                                     const float *q, const float *k, const float *v,
                                     float *out);

/* nsa_dense_backward: the gradients of a loss through nsa_dense_forward,
 * given dout = dLoss/dout [T][Hq][Dv]: FlashAttention-2's backward on the
 * same layout, kernels and threads, causal or not per the plan. Nothing is
 * kept from the forward: each row's log-sum-exp and <dO, O> are recomputed
 * here (one forward's worth of work). It is the baseline nsa_backward is
 * measured against.
 *
 *   q, k, v                                    nsa_dense_forward's inputs
 *   dq [T][Hq][Dk], dk [T][Hkv][Dk], dv [T][Hkv][Dv]   overwritten
 *
 * dK and dV sum over the queries in a fixed order with no atomics: the
 * gradients are bitwise the same on every run and for every thread count.
 * Memory: O(T). Errors: as nsa_dense_forward. Outputs are written only on
 * NSA_SUCCESS. */
NSA_API nsa_status nsa_dense_backward(const nsa_plan *plan, const nsa_batch *batch,
                                      const float *q, const float *k, const float *v,
                                      const float *dout, float *dq, float *dk, float *dv);

/* ------------------------------------------------------------------------ */
/* Decode with a KV cache (spec section 8)                                   */
/* ------------------------------------------------------------------------ */

/* Storage of a KV cache. Arithmetic is fp32 either way; bf16 halves the
 * bytes every decode step reads. On CPUs with AMX (isa amx), bf16 caches
 * are read with tile products on exact three-part bf16 splits of the
 * queries and probabilities: every product is exact and every sum fp32, in
 * another order than the other kernels. bf16 tokens are stored in pairs;
 * a non-finite value stored in a cache can spread to the other token of
 * its pair (it is multiplied by a zero probability). */
typedef enum nsa_dtype {
    NSA_DTYPE_F32 = 0,
    NSA_DTYPE_BF16 = 1 /* rounded to nearest even when stored */
} nsa_dtype;

/* The keys and values of one sequence, growing token by token, with its
 * compressed tokens: each is computed once, when its window completes
 * (spec section 8), never recomputed over the whole cache. Keys are stored
 * block-major per KV head, so a selected block is one sequential read.
 * Opaque. A cache belongs to one sequence; use one per sequence. */
typedef struct nsa_cache nsa_cache;

/* Creates an empty cache for up to `capacity` tokens of the plan's KV heads
 * and dims, allocating all its memory now: about
 * capacity * Hkv * (Dk + Dv) * (1 + 1/d) * (4 or 2) bytes. The cache copies
 * what it needs from the plan; the plan's context must outlive it.
 * Errors: NSA_ERROR_NULL_POINTER, NSA_ERROR_INVALID_DIMENSION (capacity
 * < 1), NSA_ERROR_INVALID_ARGUMENT (dtype; a non-causal plan),
 * NSA_ERROR_SIZE_OVERFLOW, NSA_ERROR_OUT_OF_MEMORY. *cache is NULL on
 * failure. */
NSA_API nsa_status nsa_cache_create(const nsa_plan *plan, int64_t capacity, nsa_dtype dtype,
                                    nsa_cache **cache);

/* Releases a cache. NULL is accepted and ignored. */
NSA_API void nsa_cache_destroy(nsa_cache *cache);

/* Tokens in the cache, and the most it can hold (0 for NULL). */
NSA_API int64_t nsa_cache_length(const nsa_cache *cache);
NSA_API int64_t nsa_cache_capacity(const nsa_cache *cache);

/* Empties the cache for reuse; its memory is kept. */
NSA_API nsa_status nsa_cache_reset(nsa_cache *cache);

/* Tokens a bf16 cache can always drop with nsa_cache_truncate (see there). */
#define NSA_CACHE_BF16_ROLLBACK 64

/* Drops the newest tokens: keeps the first `length` (0 <= length <=
 * nsa_cache_length), as if only they had been appended, with the
 * compressed tokens whose windows lie within them; the others are
 * recomputed when appends complete their windows again. For speculative
 * decoding: append a draft, decode it, truncate to the accepted prefix.
 * An fp32 cache can drop any number of tokens. A bf16 cache keeps fp32
 * copies of only its newest l - 1 + NSA_CACHE_BF16_ROLLBACK tokens (phi
 * must see what nsa_forward sees), so it can drop up to
 * NSA_CACHE_BF16_ROLLBACK tokens, fewer right after an earlier truncation
 * until appends make up for them; beyond that it answers
 * NSA_ERROR_UNSUPPORTED (nsa_cache_reset and appending again always work).
 * Cost: O(dropped tokens) memory writes (fp32: plus reading back l - 1
 * tokens). Errors: NSA_ERROR_NULL_POINTER, NSA_ERROR_INVALID_DIMENSION
 * (length out of range), NSA_ERROR_UNSUPPORTED; the cache is unchanged on
 * failure. Thread safety: one call at a time per cache, and none while a
 * decode reads it. */
NSA_API nsa_status nsa_cache_truncate(nsa_cache *cache, int64_t length);

/* Appends count >= 0 tokens at the end of the cache:
 *
 *   k [count][Hkv][Dk], v [count][Hkv][Dv]   fp32, the new tokens' keys and values
 *   cmp_k, cmp_v                             phi parameters, as for nsa_forward
 *
 * Every compression window completed by these tokens is compressed now.
 * Pass the same phi parameters on every append of a sequence (and to the
 * nsa_forward it must match). Errors: NSA_ERROR_NULL_POINTER,
 * NSA_ERROR_INVALID_DIMENSION (count < 0), NSA_ERROR_CAPACITY (length +
 * count > capacity), NSA_ERROR_INVALID_ARGUMENT (phi parameters for the
 * wrong kind), NSA_ERROR_OUT_OF_MEMORY. On failure the cache is unchanged.
 * Thread safety: one call at a time per cache. */
NSA_API nsa_status nsa_cache_append(nsa_cache *cache, int64_t count, const float *k,
                                    const float *v, const nsa_compress_params *cmp_k,
                                    const nsa_compress_params *cmp_v);

/* nsa_decode: NSA attention of the newest tokens of one or more caches.
 * For sequence b, the queries are the last m_b = cu_queries[b + 1] -
 * cu_queries[b] tokens of caches[b] (append their keys and values first),
 * at positions L_b - m_b .. L_b - 1 of its L_b tokens; m_b = 1 is one
 * decode step, m_b > 1 a chunk of a prefill or a speculative draft. The
 * outputs equal those nsa_forward gives these tokens over the whole
 * sequence, up to rounding (and bf16 storage, if chosen).
 *
 *   caches      [B] (B >= 0), made from plans with the same KV heads, dims
 *               and block geometry as this one
 *   cu_queries  [B + 1] int64, from 0, non-decreasing; M = cu_queries[B]
 *   q           [M][Hq][Dk]
 *   gates       [M][Hq][3]
 *   out         [M][Hq][Dv]
 *   block_indices_out  optional [M][Hkv][n], as nsa_forward
 *
 * Long caches are split across the context's threads and merged with
 * their log-sum-exp; results do not depend on the thread count.
 * Memory: the scratch (a few MB for one long cache) is kept by the context
 * for the next call, so repeated steps neither allocate nor fault pages; it
 * is freed with the context. After a call the workers poll for the next
 * one for the context's spin_us.
 * Errors: NSA_ERROR_NULL_POINTER, NSA_ERROR_INVALID_DIMENSION (B < 0),
 * NSA_ERROR_INVALID_SEQLENS (cu_queries malformed, or m_b > L_b),
 * NSA_ERROR_MISMATCH (a cache made for other shapes, or a non-causal plan),
 * NSA_ERROR_SIZE_OVERFLOW, NSA_ERROR_OUT_OF_MEMORY. Outputs are written only
 * on NSA_SUCCESS. Thread safety: caches are only read; several decodes may
 * share a plan and even caches. */
NSA_API nsa_status nsa_decode(const nsa_plan *plan, int64_t num_seqs,
                              const nsa_cache *const *caches, const int64_t *cu_queries,
                              const float *q, const float *gates, float *out,
                              int32_t *block_indices_out);

#ifdef __cplusplus
}
#endif

#endif /* NSA_H */
