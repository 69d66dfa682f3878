/* SPDX-License-Identifier: MIT */
/*
 * gemm.c — nsa_sgemm over OpenBLAS's cblas_sgemm, or a plain C fallback for
 * builds configured --without-openblas. The fallback keeps the i-k-j order
 * so its inner loop streams rows of B and C.
 */
#include "config.h"
#include "gemm.h"

#ifdef NSA_HAVE_OPENBLAS
#include <cblas.h>
#endif

#ifdef NSA_HAVE_OPENBLAS
void nsa_sgemm(size_t m, size_t n, size_t k, const float *a, size_t lda, const float *b,
               size_t ldb, float beta, float *c, size_t ldc)
{
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (blasint)m, (blasint)n, (blasint)k,
                1.0f, a, (blasint)lda, b, (blasint)ldb, beta, c, (blasint)ldc);
}

void nsa_sgemm_t(int trans_a, int trans_b, size_t m, size_t n, size_t k, const float *a,
                 size_t lda, const float *b, size_t ldb, float beta, float *c, size_t ldc)
{
    cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
                trans_b ? CblasTrans : CblasNoTrans, (blasint)m, (blasint)n, (blasint)k, 1.0f, a,
                (blasint)lda, b, (blasint)ldb, beta, c, (blasint)ldc);
}

const char *nsa_gemm_backend(void)
{
    return "openblas";
}
#else
void nsa_sgemm(size_t m, size_t n, size_t k, const float *a, size_t lda, const float *b,
               size_t ldb, float beta, float *c, size_t ldc)
{
    for (size_t i = 0; i < m; i++) {
        float *ci = c + i * ldc;
        for (size_t j = 0; j < n; j++)
            ci[j] = beta == 0.0f ? 0.0f : beta * ci[j];
        for (size_t p = 0; p < k; p++) {
            float aip = a[i * lda + p];
            const float *bp = b + p * ldb;
            for (size_t j = 0; j < n; j++)
                ci[j] += aip * bp[j];
        }
    }
}

/* Each element is one dot product over k in ascending order, so the
 * result does not depend on the operands' layout. */
void nsa_sgemm_t(int trans_a, int trans_b, size_t m, size_t n, size_t k, const float *a,
                 size_t lda, const float *b, size_t ldb, float beta, float *c, size_t ldc)
{
    for (size_t i = 0; i < m; i++) {
        for (size_t j = 0; j < n; j++) {
            float sum = 0.0f;
            for (size_t p = 0; p < k; p++)
                sum += (trans_a ? a[p * lda + i] : a[i * lda + p]) *
                       (trans_b ? b[j * ldb + p] : b[p * ldb + j]);
            float *cij = c + i * ldc + j;
            *cij = beta == 0.0f ? sum : beta * *cij + sum;
        }
    }
}

const char *nsa_gemm_backend(void)
{
    return "plain C";
}
#endif
