/*
 * The BLAS calls (ckptscope/blas.h): OpenBLAS is opened by the first call and not before, and
 * both it and the built-in loops give hand-computed products exactly (small integer
 * matrices, every transpose, both storage orders, strides, beta) and agree with each other
 * on random matrices. The cases run in this order: forcing the loops is for the whole process.
 */
#include <stdio.h>
#include <string.h>

#include "check.h"
#include "ckptscope/blas.h"
#include "ckptscope/stats.h"

/* Whether the process has a libopenblas mapped. */
static bool openblas_mapped(void)
{
    char line[512];
    bool found = false;
    FILE *f = fopen("/proc/self/maps", "r");
    while (f && fgets(line, sizeof line, f))
        found = found || strstr(line, "libopenblas") != NULL;
    if (f)
        fclose(f);
    return found;
}

static bool have_openblas(void)
{
    return strncmp(cks_blas_name(), "OpenBLAS", 8) == 0;
}

static void opened_on_first_call(void)
{
    CHECK(!openblas_mapped()); /* linked in, it would be mapped before main */
    CHECK(cks_blas_fallback_reason() == NULL); /* nothing tried yet */
    int threads = cks_blas_threads();
    if (!have_openblas())
        SKIP("OpenBLAS could not be loaded here: %s", cks_blas_name());
    CHECK(openblas_mapped());
    CHECK(cks_blas_fallback_reason() == NULL);
    CHECK(threads >= 1);
    cks_blas_set_threads(1);
    CHECK_EQ_INT(cks_blas_threads(), 1);
    cks_blas_set_threads(threads);
}

/* A (2 x 3) = [1 2 3; 4 5 6], B (3 x 2) = [7 8; 9 10; 11 12]: AB = [58 64; 139 154],
 * A^T A = [17 22 27; 22 29 36; 27 36 45], A A^T = [14 32; 32 77]. */
static void exact_products(void)
{
    const float a[6] = {1, 2, 3, 4, 5, 6}, at[6] = {1, 4, 2, 5, 3, 6};
    const float b[6] = {7, 8, 9, 10, 11, 12}, bt[6] = {7, 9, 11, 8, 10, 12};
    const float ab[4] = {58, 64, 139, 154};
    float c[4];
    /* row-major, every transpose combination (the transposed copies read back to A and B) */
    const float *as[2] = {a, at}, *bs[2] = {b, bt};
    const int lda[2] = {3, 2}, ldb[2] = {2, 3};
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++) {
            memset(c, 0xff, sizeof c); /* NaN: beta 0 must not read C */
            cks_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, 2, 2, 3,
                      1.0f, as[ta], lda[ta], bs[tb], ldb[tb], 0.0f, c, 2);
            for (int i = 0; i < 4; i++)
                CHECK_MSG(c[i] == ab[i], "ta %d tb %d [%d]: %g != %g", ta, tb, i, c[i], ab[i]);
        }
    /* column-major: the column-major A is `at` read by columns, B is `bt`; C comes by columns */
    cks_sgemm(CblasColMajor, CblasNoTrans, CblasNoTrans, 2, 2, 3, 1.0f, at, 2, bt, 3, 0.0f, c, 2);
    CHECK(c[0] == 58 && c[1] == 139 && c[2] == 64 && c[3] == 154);
    /* alpha, beta, and a C with a stride wider than its rows */
    float wide[6] = {1, 1, -1, 1, 1, -1};
    cks_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, 2, 2, 3, 2.0f, a, 3, b, 2, 0.5f, wide, 3);
    CHECK(wide[0] == 116.5f && wide[1] == 128.5f && wide[2] == -1 && wide[3] == 278.5f && wide[4] == 308.5f &&
          wide[5] == -1);
    /* double */
    const double ad[6] = {1, 2, 3, 4, 5, 6}, bd[6] = {7, 8, 9, 10, 11, 12};
    double cd[4];
    cks_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, 2, 2, 3, 1.0, ad, 3, bd, 2, 0.0, cd, 2);
    CHECK(cd[0] == 58 && cd[1] == 64 && cd[2] == 139 && cd[3] == 154);
    cks_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, 2, 2, 3, 1.0, ad, 3, ad, 3, 0.0, cd, 2);
    CHECK(cd[0] == 14 && cd[1] == 32 && cd[2] == 32 && cd[3] == 77);
    /* syrk: the upper triangle of A^T A, the lower left as it was */
    float s[9];
    for (int i = 0; i < 9; i++)
        s[i] = -7;
    cks_ssyrk(CblasRowMajor, CblasUpper, CblasTrans, 3, 2, 1.0f, a, 3, 0.0f, s, 3);
    const float ata[9] = {17, 22, 27, -7, 29, 36, -7, -7, 45};
    for (int i = 0; i < 9; i++)
        CHECK_MSG(s[i] == ata[i], "syrk [%d]: %g != %g", i, s[i], ata[i]);
    /* column-major upper of A A^T, A stored by columns (that is `at`... read as 2 x 3) */
    float s2[4] = {-7, -7, -7, -7};
    cks_ssyrk(CblasColMajor, CblasUpper, CblasNoTrans, 2, 3, 1.0f, at, 2, 0.0f, s2, 2);
    CHECK(s2[0] == 14 && s2[1] == -7 && s2[2] == 32 && s2[3] == 77);
    float x[5] = {1, 2, 3, 4, 5};
    cks_sscal(3, 2.0f, x, 2);
    CHECK(x[0] == 2 && x[1] == 2 && x[2] == 6 && x[3] == 4 && x[4] == 10);
}

static void exact_with_openblas(void)
{
    if (!have_openblas())
        SKIP("OpenBLAS could not be loaded here: %s", cks_blas_name());
    exact_products();
}

/* Random shapes and strides: OpenBLAS first, then the loops on the same inputs. */
static void loops_agree_with_openblas(void)
{
    if (!have_openblas())
        SKIP("OpenBLAS could not be loaded here: %s", cks_blas_name());
    enum { M = 37, N = 29, K = 211, LD = 240 };
    cks_rng rng;
    cks_rng_seed(&rng, 77);
    float *a = malloc(sizeof(float) * K * LD), *b = malloc(sizeof(float) * K * LD);
    float *c_lib = malloc(sizeof(float) * M * LD), *c_loop = malloc(sizeof(float) * M * LD);
    double *ad = malloc(sizeof(double) * K * LD), *bd = malloc(sizeof(double) * K * LD);
    double *d_lib = malloc(sizeof(double) * M * LD), *d_loop = malloc(sizeof(double) * M * LD);
    float *s_lib = malloc(sizeof(float) * N * N), *s_loop = malloc(sizeof(float) * N * N);
    for (size_t i = 0; i < (size_t)K * LD; i++) {
        a[i] = (float)cks_rng_normal(&rng);
        b[i] = (float)cks_rng_normal(&rng);
        ad[i] = a[i];
        bd[i] = b[i];
    }
    for (size_t i = 0; i < (size_t)M * LD; i++)
        c_lib[i] = c_loop[i] = (float)(d_lib[i] = d_loop[i] = cks_rng_normal(&rng));
    for (size_t i = 0; i < (size_t)N * N; i++)
        s_lib[i] = s_loop[i] = 3.0f;
    /* op(A) is M x K, op(B) K x N; stored with stride LD whichever way round */
    cks_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, M, N, K, 0.5f, a, LD, b, LD, 0.25f, c_lib, LD);
    cks_dgemm(CblasColMajor, CblasNoTrans, CblasTrans, M, N, K, 1.5, ad, LD, bd, LD, 0.0, d_lib, LD);
    cks_ssyrk(CblasRowMajor, CblasUpper, CblasTrans, N, K, 1.0f, a, LD, 0.0f, s_lib, N);
    cks_blas_use_builtin();
    CHECK(strncmp(cks_blas_name(), "built-in", 8) == 0);
    cks_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, M, N, K, 0.5f, a, LD, b, LD, 0.25f, c_loop, LD);
    cks_dgemm(CblasColMajor, CblasNoTrans, CblasTrans, M, N, K, 1.5, ad, LD, bd, LD, 0.0, d_loop, LD);
    cks_ssyrk(CblasRowMajor, CblasUpper, CblasTrans, N, K, 1.0f, a, LD, 0.0f, s_loop, N);
    /* sums of K ~ 211 products of unit normals: |c| ~ 15; float rounding ~ 1e-5 of that */
    double worst_s = 0, worst_d = 0, worst_k = 0;
    for (size_t i = 0; i < (size_t)M * LD; i++) {
        worst_s = fmax(worst_s, fabs((double)c_lib[i] - c_loop[i]));
        worst_d = fmax(worst_d, fabs(d_lib[i] - d_loop[i]));
    }
    for (size_t i = 0; i < (size_t)N * N; i++)
        worst_k = fmax(worst_k, fabs((double)s_lib[i] - s_loop[i]));
    CHECK_MSG(worst_s < 1e-3, "sgemm differs by %g", worst_s);
    CHECK_MSG(worst_d < 1e-10, "dgemm differs by %g", worst_d);
    CHECK_MSG(worst_k < 1e-3, "ssyrk differs by %g", worst_k);
    /* untouched: the lower triangle of the syrk output */
    CHECK(s_loop[N] == 3.0f && s_lib[N] == 3.0f);
    free(a);
    free(b);
    free(c_lib);
    free(c_loop);
    free(ad);
    free(bd);
    free(d_lib);
    free(d_loop);
    free(s_lib);
    free(s_loop);
}

static void exact_with_loops(void)
{
    cks_blas_use_builtin();
    CHECK(strncmp(cks_blas_name(), "built-in", 8) == 0);
    CHECK_EQ_INT(cks_blas_threads(), 1);
    exact_products();
}

TEST_MAIN(T(opened_on_first_call), T(exact_with_openblas), T(loops_agree_with_openblas), T(exact_with_loops))
