/*
 * ckptscope/blas.h — the few BLAS calls the statistics make, from OpenBLAS loaded on first use.
 *
 * Linking OpenBLAS into the program cost every command ~6 ms at start (its relocations, the
 * libraries it pulls in, its constructor's thread pool and buffers) although only compare,
 * verify and fingerprint compute with it: `ls`, `hash`, `fetch`, `diff` and `cache` paid it
 * for nothing (about a third of a small command's start). The library is now opened (dlopen)
 * by the first call below; a command that never calls one never loads it.
 *
 * Without a loadable OpenBLAS (libopenblas.so.0) the same calls run as plain loops in this
 * file: the same results up to rounding, much slower. cks_blas_name() says which is in use.
 * The signatures and the enums are CBLAS's (row- or column-major, transposes, strides).
 */
#ifndef CKPTSCOPE_BLAS_H
#define CKPTSCOPE_BLAS_H

#include <cblas.h>
#include <stdbool.h>

void cks_sgemm(enum CBLAS_ORDER order, enum CBLAS_TRANSPOSE ta, enum CBLAS_TRANSPOSE tb, blasint m,
               blasint n, blasint k, float alpha, const float *a, blasint lda, const float *b, blasint ldb,
               float beta, float *c, blasint ldc);
void cks_dgemm(enum CBLAS_ORDER order, enum CBLAS_TRANSPOSE ta, enum CBLAS_TRANSPOSE tb, blasint m,
               blasint n, blasint k, double alpha, const double *a, blasint lda, const double *b,
               blasint ldb, double beta, double *c, blasint ldc);
/* C := alpha A^T A + beta C (trans CblasTrans) or alpha A A^T + beta C, the `uplo` triangle. */
void cks_ssyrk(enum CBLAS_ORDER order, enum CBLAS_UPLO uplo, enum CBLAS_TRANSPOSE trans, blasint n,
               blasint k, float alpha, const float *a, blasint lda, float beta, float *c, blasint ldc);
void cks_sscal(blasint n, float alpha, float *x, blasint incx);

/* OpenBLAS's own thread count (1 for the plain loops). */
int cks_blas_threads(void);
void cks_blas_set_threads(int n);

/* "OpenBLAS <version/config>" or "built-in loops (OpenBLAS could not be loaded: why)". */
const char *cks_blas_name(void);

/* Why the plain loops run, once a BLAS call found no usable OpenBLAS; NULL when OpenBLAS is
 * in use, when the loops were forced, or when no BLAS call was made (nothing is loaded here). */
const char *cks_blas_fallback_reason(void);

/* Tests: the plain loops from now on, whatever is loadable (before the first call only). */
void cks_blas_use_builtin(void);

#endif
