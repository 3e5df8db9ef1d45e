/*
 * src/statistics/blas.c — OpenBLAS opened on first use, plain loops without it (ckptscope/blas.h).
 */
#include "ckptscope/blas.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

typedef void (*sgemm_fn)(enum CBLAS_ORDER, enum CBLAS_TRANSPOSE, enum CBLAS_TRANSPOSE, blasint, blasint, blasint,
                         float, const float *, blasint, const float *, blasint, float, float *, blasint);
typedef void (*dgemm_fn)(enum CBLAS_ORDER, enum CBLAS_TRANSPOSE, enum CBLAS_TRANSPOSE, blasint, blasint, blasint,
                         double, const double *, blasint, const double *, blasint, double, double *, blasint);
typedef void (*ssyrk_fn)(enum CBLAS_ORDER, enum CBLAS_UPLO, enum CBLAS_TRANSPOSE, blasint, blasint, float,
                         const float *, blasint, float, float *, blasint);
typedef void (*sscal_fn)(blasint, float, float *, blasint);
typedef int (*get_threads_fn)(void);
typedef void (*set_threads_fn)(int);
typedef char *(*get_config_fn)(void);

static struct {
    sgemm_fn sgemm;
    dgemm_fn dgemm;
    ssyrk_fn ssyrk;
    sscal_fn sscal;
    get_threads_fn get_threads; /* NULL: a BLAS without OpenBLAS's thread calls */
    set_threads_fn set_threads;
    char name[200];
    char why[160];  /* the loops' reason, "" while OpenBLAS is in use or nothing was tried */
} lib;

static pthread_once_t load_once = PTHREAD_ONCE_INIT;
static atomic_bool load_done;      /* load() has run: lib is final */
static atomic_bool builtin_forced; /* cks_blas_use_builtin */

/* Debian's runtime package installs the soname; the bare name is the -dev package's link. */
static const char *const candidates[] = {"libopenblas.so.0", "libopenblas.so"};

static void load(void)
{
    void *h = NULL;
    const char *why;
    for (size_t i = 0; i < sizeof candidates / sizeof *candidates && !h; i++)
        h = dlopen(candidates[i], RTLD_NOW | RTLD_LOCAL);
    why = h ? NULL : dlerror();
    if (h) {
        lib.sgemm = (sgemm_fn)dlsym(h, "cblas_sgemm");
        lib.dgemm = (dgemm_fn)dlsym(h, "cblas_dgemm");
        lib.ssyrk = (ssyrk_fn)dlsym(h, "cblas_ssyrk");
        lib.sscal = (sscal_fn)dlsym(h, "cblas_sscal");
        lib.get_threads = (get_threads_fn)dlsym(h, "openblas_get_num_threads");
        lib.set_threads = (set_threads_fn)dlsym(h, "openblas_set_num_threads");
        if (!lib.sgemm || !lib.dgemm || !lib.ssyrk || !lib.sscal) {
            /* all or nothing: one BLAS computes every statistic of a run */
            memset(&lib, 0, sizeof lib);
            why = "it lacks a CBLAS function";
            dlclose(h);
            h = NULL;
        }
    }
    if (h) {
        get_config_fn config = (get_config_fn)dlsym(h, "openblas_get_config");
        snprintf(lib.name, sizeof lib.name, "OpenBLAS %s", config ? config() : "");
    } else {
        snprintf(lib.why, sizeof lib.why, "OpenBLAS could not be loaded: %s", why ? why : "unknown reason");
        snprintf(lib.name, sizeof lib.name, "built-in loops (%s)", lib.why);
    }
    atomic_store(&load_done, true);
}

/* True: call the library's functions; false: the loops below. */
static bool use_lib(void)
{
    pthread_once(&load_once, load);
    return lib.sgemm && !atomic_load(&builtin_forced);
}

const char *cks_blas_fallback_reason(void)
{
    if (!atomic_load(&load_done) || atomic_load(&builtin_forced))
        return NULL;
    return lib.sgemm ? NULL : lib.why;
}

void cks_blas_use_builtin(void)
{
    atomic_store(&builtin_forced, true);
}

const char *cks_blas_name(void)
{
    pthread_once(&load_once, load);
    return atomic_load(&builtin_forced) ? "built-in loops (forced by the caller)" : lib.name;
}

int cks_blas_threads(void)
{
    return use_lib() && lib.get_threads ? lib.get_threads() : 1;
}

void cks_blas_set_threads(int n)
{
    if (use_lib() && lib.set_threads)
        lib.set_threads(n);
}

/* ------------------------------------------------------------- plain loops ---- */

/*
 * Row-major C (m x n) := alpha op(A) op(B) + beta C. A column-major call is the row-major
 * one for the transposes (C^T = op(B)^T op(A)^T), so one loop serves both. beta == 0 never
 * reads C (it may hold anything), as BLAS specifies. Sums in double, whatever the type.
 */
#define GEMM_LOOP(T)                                                                                              \
    for (blasint i = 0; i < m; i++)                                                                               \
        for (blasint j = 0; j < n; j++) {                                                                         \
            double sum = 0.0;                                                                                     \
            for (blasint p = 0; p < k; p++) {                                                                     \
                double x = ta == CblasNoTrans ? a[(size_t)i * lda + p] : a[(size_t)p * lda + i];                \
                double y = tb == CblasNoTrans ? b[(size_t)p * ldb + j] : b[(size_t)j * ldb + p];                \
                sum += x * y;                                                                                     \
            }                                                                                                     \
            T *out = &c[(size_t)i * ldc + j];                                                                     \
            *out = (T)(alpha * sum + (beta == 0 ? 0.0 : (double)beta * *out));                                    \
        }

static void sgemm_rows(enum CBLAS_TRANSPOSE ta, enum CBLAS_TRANSPOSE tb, blasint m, blasint n, blasint k,
                       float alpha, const float *a, blasint lda, const float *b, blasint ldb, float beta, float *c,
                       blasint ldc)
{
    GEMM_LOOP(float)
}

static void dgemm_rows(enum CBLAS_TRANSPOSE ta, enum CBLAS_TRANSPOSE tb, blasint m, blasint n, blasint k,
                       double alpha, const double *a, blasint lda, const double *b, blasint ldb, double beta,
                       double *c, blasint ldc)
{
    GEMM_LOOP(double)
}

void cks_sgemm(enum CBLAS_ORDER order, enum CBLAS_TRANSPOSE ta, enum CBLAS_TRANSPOSE tb, blasint m,
               blasint n, blasint k, float alpha, const float *a, blasint lda, const float *b, blasint ldb,
               float beta, float *c, blasint ldc)
{
    if (use_lib())
        lib.sgemm(order, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    else if (order == CblasRowMajor)
        sgemm_rows(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    else
        sgemm_rows(tb, ta, n, m, k, alpha, b, ldb, a, lda, beta, c, ldc);
}

void cks_dgemm(enum CBLAS_ORDER order, enum CBLAS_TRANSPOSE ta, enum CBLAS_TRANSPOSE tb, blasint m,
               blasint n, blasint k, double alpha, const double *a, blasint lda, const double *b,
               blasint ldb, double beta, double *c, blasint ldc)
{
    if (use_lib())
        lib.dgemm(order, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    else if (order == CblasRowMajor)
        dgemm_rows(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    else
        dgemm_rows(tb, ta, n, m, k, alpha, b, ldb, a, lda, beta, c, ldc);
}

/* Row-major C (n x n): with trans, A is k x n and C := alpha A^T A + beta C; without, A is
 * n x k and C := alpha A A^T + beta C; only `uplo`'s triangle is touched. Column-major is the
 * row-major call with both the triangle and the transpose flipped (the same memory read the
 * other way round). */
void cks_ssyrk(enum CBLAS_ORDER order, enum CBLAS_UPLO uplo, enum CBLAS_TRANSPOSE trans, blasint n,
               blasint k, float alpha, const float *a, blasint lda, float beta, float *c, blasint ldc)
{
    if (use_lib()) {
        lib.ssyrk(order, uplo, trans, n, k, alpha, a, lda, beta, c, ldc);
        return;
    }
    if (order == CblasColMajor) {
        uplo = uplo == CblasUpper ? CblasLower : CblasUpper;
        trans = trans == CblasNoTrans ? CblasTrans : CblasNoTrans;
    }
    for (blasint i = 0; i < n; i++) {
        blasint from = uplo == CblasUpper ? i : 0, to = uplo == CblasUpper ? n : i + 1;
        for (blasint j = from; j < to; j++) {
            double sum = 0.0;
            for (blasint p = 0; p < k; p++) {
                double x = trans == CblasNoTrans ? a[(size_t)i * lda + p] : a[(size_t)p * lda + i];
                double y = trans == CblasNoTrans ? a[(size_t)j * lda + p] : a[(size_t)p * lda + j];
                sum += x * y;
            }
            float *out = &c[(size_t)i * ldc + j];
            *out = (float)(alpha * sum + (beta == 0 ? 0.0 : (double)beta * *out));
        }
    }
}

void cks_sscal(blasint n, float alpha, float *x, blasint incx)
{
    if (use_lib()) {
        lib.sscal(n, alpha, x, incx);
        return;
    }
    for (blasint i = 0; incx > 0 && i < n; i++)
        x[(size_t)i * incx] *= alpha;
}
