/* SPDX-License-Identifier: MIT */
/*
 * gemm.h — the matrix-multiply entry points of the library, used where a
 * real GEMM fits (the linear and mlp compression, and their backward).
 * Backed by OpenBLAS when configured with it, else by a plain C loop.
 */
#ifndef NSA_GEMM_H
#define NSA_GEMM_H

#include <stddef.h>

/* Row-major, no transposes: C[m][n] = A[m][k] . B[k][n] + beta C.
 * lda, ldb, ldc are row strides in elements. */
void nsa_sgemm(size_t m, size_t n, size_t k, const float *a, size_t lda, const float *b,
               size_t ldb, float beta, float *c, size_t ldc);

/* As nsa_sgemm with either operand transposed, as the backward of phi
 * needs: C[m][n] = op(A) . op(B) + beta C, where op(A) is A[m][k] or, when
 * trans_a, the transpose of A[k][m]; likewise op(B) is B[k][n] or, when
 * trans_b, the transpose of B[n][k]. Strides are those of A, B, C as
 * stored. */
void nsa_sgemm_t(int trans_a, int trans_b, size_t m, size_t n, size_t k, const float *a,
                 size_t lda, const float *b, size_t ldb, float beta, float *c, size_t ldc);

/* "openblas" or "plain C", for descriptions. */
const char *nsa_gemm_backend(void);

#endif /* NSA_GEMM_H */
