/*
 * Linear CKA against independent references: a plain C loop over explicit n x n Gram
 * matrices (the formulas as printed, nothing from the feature-space shortcut), numpy with
 * Gram matrices in float64 (tests/ref/ref.py), and the published simulation values of
 * research/fingerprinting.md §4.3 (biased floor sqrt(p1 p2/((n+p1)(n+p2))), debiased
 * 0 +- 0.002, and the related-pair table).
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "check.h"
#include "ckptscope/cka.h"
#include "ckptscope/stats.h"
#include "ref/pyref.h"

static bool sanitized(void)
{
    const char *s = getenv("CKS_SANITIZED");
    return s && strcmp(s, "1") == 0;
}

static float *gaussian_matrix(cks_rng *rng, size_t rows, size_t cols)
{
    float *m = malloc(rows * cols * sizeof *m);
    for (size_t k = 0; k < rows * cols; k++)
        m[k] = (float)cks_rng_normal(rng);
    return m;
}

/* The formulas with explicit Grams, in double: HSIC0 = tr(KHLH), HSIC1 as in Song et al. */
static void gram_reference(const float *x, const float *y, size_t n, size_t p1, size_t p2,
                           double *biased, double *debiased)
{
    double *k = calloc(n * n, sizeof *k), *l = calloc(n * n, sizeof *l);
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < n; j++) {
            for (size_t f = 0; f < p1; f++)
                k[i * n + j] += (double)x[i * p1 + f] * x[j * p1 + f];
            for (size_t f = 0; f < p2; f++)
                l[i * n + j] += (double)y[i * p2 + f] * y[j * p2 + f];
        }
    /* biased: double-centre both Grams, then Frobenius products */
    double hsic0[3] = {0, 0, 0};
    double *kc = malloc(n * n * sizeof *kc), *lc = malloc(n * n * sizeof *lc);
    double *grams[2] = {k, l}, *centred[2] = {kc, lc};
    for (int g = 0; g < 2; g++) {
        double total = 0, *row_mean = calloc(n, sizeof *row_mean);
        for (size_t i = 0; i < n; i++) {
            for (size_t j = 0; j < n; j++)
                row_mean[i] += grams[g][i * n + j];
            total += row_mean[i];
            row_mean[i] /= (double)n;
        }
        total /= (double)(n * n);
        for (size_t i = 0; i < n; i++)
            for (size_t j = 0; j < n; j++)
                centred[g][i * n + j] = grams[g][i * n + j] - row_mean[i] - row_mean[j] + total;
        free(row_mean);
    }
    for (size_t q = 0; q < n * n; q++) {
        hsic0[0] += kc[q] * lc[q];
        hsic0[1] += kc[q] * kc[q];
        hsic0[2] += lc[q] * lc[q];
    }
    *biased = hsic0[0] / sqrt(hsic0[1] * hsic0[2]);
    /* unbiased: zero diagonals, then the three terms */
    for (size_t i = 0; i < n; i++)
        k[i * n + i] = l[i * n + i] = 0;
    double h1[3];
    double *pairs[3][2] = {{k, l}, {k, k}, {l, l}};
    double nn = (double)n;
    for (int c = 0; c < 3; c++) {
        double *a = pairs[c][0], *b = pairs[c][1], trace = 0, sum_a = 0, sum_b = 0, quad = 0;
        for (size_t i = 0; i < n; i++) {
            double a_row = 0, b_col = 0;
            for (size_t j = 0; j < n; j++) {
                trace += a[i * n + j] * b[j * n + i];
                sum_a += a[i * n + j];
                sum_b += b[i * n + j];
                a_row += a[j * n + i]; /* (1'A)_i */
                b_col += b[i * n + j]; /* (B1)_i */
            }
            quad += a_row * b_col;
        }
        h1[c] = (trace + sum_a * sum_b / ((nn - 1) * (nn - 2)) - 2.0 / (nn - 2) * quad) / (nn * (nn - 3));
    }
    *debiased = h1[0] / sqrt(h1[1] * h1[2]);
    free(k);
    free(l);
    free(kc);
    free(lc);
}

static void against_plain_gram_loop(void)
{
    cks_rng rng;
    cks_rng_seed(&rng, 1);
    static const size_t shapes[][3] = {{12, 3, 5}, {30, 40, 7}, {5, 2, 2}, {64, 16, 16}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        size_t n = shapes[s][0], p1 = shapes[s][1], p2 = shapes[s][2];
        float *x = gaussian_matrix(&rng, n, p1), *y = gaussian_matrix(&rng, n, p2);
        /* make y partly depend on x, and give x a large mean (centring must handle it) */
        for (size_t i = 0; i < n; i++) {
            y[i * p2] += 2 * x[i * p1];
            for (size_t f = 0; f < p1; f++)
                x[i * p1 + f] += 3.0f;
        }
        double want_biased, want_debiased;
        gram_reference(x, y, n, p1, p2, &want_biased, &want_debiased);
        cks_cka_result r;
        CHECK(cks_cka_linear(x, n, p1, y, p2, &r, NULL) == CKS_OK);
        CHECK(r.biased_defined && r.debiased_defined);
        CHECK_NEAR(r.biased, want_biased, 2e-5);
        CHECK_NEAR(r.debiased, want_debiased, 2e-5);
        free(x);
        free(y);
    }
}

static void against_numpy(void)
{
    if (!pyref_available())
        SKIP("/usr/bin/python3 with numpy/scipy not available for the reference");
    static const size_t shapes[][3] = {{200, 50, 30}, {64, 300, 200}};
    cks_rng rng;
    cks_rng_seed(&rng, 2);
    for (size_t s = 0; s < 2; s++) {
        size_t n = shapes[s][0], p1 = shapes[s][1], p2 = shapes[s][2];
        float *x = gaussian_matrix(&rng, n, p1), *y = gaussian_matrix(&rng, n, p2);
        for (size_t i = 0; i < n; i++)
            for (size_t f = 0; f < 10; f++)
                y[i * p2 + f] += 0.7f * x[i * p1 + f];
        pyref_dir dir = {{0}};
        char shape[64];
        snprintf(shape, sizeof shape, "%zu %zu %zu", n, p1, p2);
        CHECK(pyref_dir_make(&dir));
        CHECK(pyref_write_text(&dir, "shape.txt", shape));
        CHECK(pyref_write(&dir, "x.f32", x, n * p1 * sizeof(float)));
        CHECK(pyref_write(&dir, "y.f32", y, n * p2 * sizeof(float)));
        CHECK(pyref_run(&dir, "cka"));
        double *want = pyref_read(&dir, "cka.f64", NULL);
        cks_cka_result r;
        CHECK(cks_cka_linear(x, n, p1, y, p2, &r, NULL) == CKS_OK);
        if (want) {
            CHECK_NEAR(r.biased, want[0], 1e-5);
            CHECK_NEAR(r.debiased, want[1], 1e-5);
            CHECK_NEAR(r.hsic1_xy / want[2], 1.0, 1e-4);
            CHECK_NEAR(r.hsic1_xx / want[3], 1.0, 1e-5);
            CHECK_NEAR(r.hsic1_yy / want[4], 1.0, 1e-5);
        }
        free(want);
        free(x);
        free(y);
        pyref_dir_remove(&dir);
    }
}

/* fingerprinting.md §4.3: the biased floor, and debiased 0 +- 0.002, at n = 4096, p = 1024. */
static void published_floor_and_null(void)
{
    /* under the sanitizers the big case is scaled to n = 1024, p = 256 (same table) */
    size_t n = sanitized() ? 1024 : 4096, p = sanitized() ? 256 : 1024;
    cks_rng rng;
    cks_rng_seed(&rng, 4096);
    float *x = gaussian_matrix(&rng, n, p), *y = gaussian_matrix(&rng, n, p);
    cks_cka_result r;
    CHECK(cks_cka_linear(x, n, p, y, p, &r, NULL) == CKS_OK);
    double floor = sqrt((double)p * p / (((double)n + p) * ((double)n + p))); /* 0.2 */
    CHECK_MSG(fabs(r.biased - floor) < 0.005, "biased %g, published floor %g", r.biased, floor);
    CHECK_MSG(fabs(r.debiased) < 0.002, "debiased %g, published 0 +- 0.002", r.debiased);
    free(x);
    free(y);

    /* the related-pair table (n=1024, p=256, Y = XQ + eps N): eps = 1 gives 0.60 / 0.50,
     * eps = 2 gives 0.36 / 0.20. Q = identity: CKA is invariant to it. */
    n = 1024;
    p = 256;
    x = gaussian_matrix(&rng, n, p);
    y = gaussian_matrix(&rng, n, p);
    float *related = malloc(n * p * sizeof *related);
    static const double eps[2] = {1, 2}, want_biased[2] = {0.60, 0.36}, want_debiased[2] = {0.50, 0.20};
    for (int c = 0; c < 2; c++) {
        for (size_t k = 0; k < n * p; k++)
            related[k] = x[k] + (float)eps[c] * y[k];
        CHECK(cks_cka_linear(x, n, p, related, p, &r, NULL) == CKS_OK);
        CHECK_MSG(fabs(r.biased - want_biased[c]) < 0.015, "eps %g biased %g", eps[c], r.biased);
        CHECK_MSG(fabs(r.debiased - want_debiased[c]) < 0.015, "eps %g debiased %g", eps[c], r.debiased);
    }
    free(x);
    free(y);
    free(related);
}

/* Invariances CKA has (orthogonal maps and scale of features) and the one it lacks (samples). */
static void invariances(void)
{
    enum { N = 100, P = 6 };
    cks_rng rng;
    cks_rng_seed(&rng, 6);
    float *x = gaussian_matrix(&rng, N, P), *y = gaussian_matrix(&rng, N, P);
    for (size_t k = 0; k < N * P; k++)
        y[k] += x[k];
    cks_cka_result base, r;
    CHECK(cks_cka_linear(x, N, P, y, P, &base, NULL) == CKS_OK);
    /* rotate features of y by 30 degrees in the plane (0,1), reverse their order, scale by 7 */
    float *t = malloc(N * P * sizeof *t);
    double c = cos(M_PI / 6), s = sin(M_PI / 6);
    for (size_t i = 0; i < N; i++) {
        float rotated[P];
        for (size_t f = 0; f < P; f++)
            rotated[f] = y[i * P + f];
        rotated[0] = (float)(c * y[i * P] - s * y[i * P + 1]);
        rotated[1] = (float)(s * y[i * P] + c * y[i * P + 1]);
        for (size_t f = 0; f < P; f++)
            t[i * P + f] = 7.0f * rotated[P - 1 - f];
    }
    CHECK(cks_cka_linear(x, N, P, t, P, &r, NULL) == CKS_OK);
    CHECK_NEAR(r.biased, base.biased, 1e-5);
    CHECK_NEAR(r.debiased, base.debiased, 1e-5);
    /* shuffling the sample rows of one side destroys it */
    cks_perm_result pr;
    CHECK(cks_cka_perm_test(x, N, P, y, P, 9, 99, &pr, NULL) == CKS_OK);
    CHECK_NEAR(pr.observed, base.debiased, 1e-12);
    CHECK(pr.null_mean < 0.05 && pr.p_value == 1.0 / 100);
    free(x);
    free(y);
    free(t);
}

/*
 * Each null draw is the CKA of an explicitly row-shuffled Y: replay the documented seeded
 * permutation sequence, recompute with cks_cka_linear on shuffled copies, and compare the
 * null mean, sd and count.
 */
static void perm_null_equals_explicit_shuffles(void)
{
    enum { N = 40, P1 = 6, P2 = 4, T = 30 };
    cks_rng rng;
    cks_rng_seed(&rng, 314);
    float *x = gaussian_matrix(&rng, N, P1), *y = gaussian_matrix(&rng, N, P2);
    for (size_t i = 0; i < N; i++) {
        y[i * P2] += 0.5f * x[i * P1];
        for (size_t f = 0; f < P2; f++)
            y[i * P2 + f] *= (float)(1 + i % 5); /* unequal row norms: the permuted e matters */
    }
    cks_perm_result r;
    CHECK(cks_cka_perm_test(x, N, P1, y, P2, 77, T, &r, NULL) == CKS_OK);
    cks_rng replay;
    cks_rng_seed(&replay, 77);
    uint32_t perm[N];
    float shuffled[N * P2];
    double sum = 0, sumsq = 0;
    unsigned extreme = 0;
    cks_cka_result base;
    CHECK(cks_cka_linear(x, N, P1, y, P2, &base, NULL) == CKS_OK);
    for (int t = 0; t < T; t++) {
        cks_rng_permutation(&replay, perm, N);
        for (size_t i = 0; i < N; i++)
            memcpy(shuffled + i * P2, y + (size_t)perm[i] * P2, P2 * sizeof(float));
        cks_cka_result c;
        CHECK(cks_cka_linear(x, N, P1, shuffled, P2, &c, NULL) == CKS_OK);
        sum += c.debiased;
        sumsq += c.debiased * c.debiased;
        extreme += c.debiased >= base.debiased - 1e-12 * fabs(base.debiased);
    }
    double mean = sum / T, sd = sqrt((sumsq - T * mean * mean) / (T - 1));
    CHECK_NEAR(r.observed, base.debiased, 1e-12);
    CHECK_NEAR(r.null_mean, mean, 1e-9);
    CHECK_NEAR(r.null_sd, sd, 1e-8);
    CHECK(r.at_least_as_extreme == extreme);
    CHECK_NEAR(r.p_value, (1.0 + extreme) / (T + 1.0), 1e-15);
    free(x);
    free(y);
}

/* Under independence the row-permutation p-values are uniform (Kolmogorov–Smirnov). */
static void perm_null_uniform(void)
{
    int runs = sanitized() ? 100 : 250;
    enum { N = 24, P1 = 5, P2 = 3, T = 49 };
    cks_rng rng;
    cks_rng_seed(&rng, 123);
    double *p = malloc(sizeof(double) * (size_t)runs);
    for (int run = 0; run < runs; run++) {
        float *x = gaussian_matrix(&rng, N, P1), *y = gaussian_matrix(&rng, N, P2);
        cks_perm_result r;
        CHECK(cks_cka_perm_test(x, N, P1, y, P2, 500 + (uint64_t)run, T, &r, NULL) == CKS_OK);
        CHECK(r.seed == 500 + (uint64_t)run && r.permutations == T);
        p[run] = r.p_value;
        free(x);
        free(y);
    }
    double d = 0;
    for (int j = 1; j <= T + 1; j++) {
        double grid = (double)j / (T + 1), below = 0;
        for (int run = 0; run < runs; run++)
            below += p[run] <= grid + 1e-12;
        d = fmax(d, fabs(below / runs - grid));
    }
    CHECK_MSG(d < 1.949 / sqrt((double)runs), "KS distance %g over %d runs", d, runs);
    free(p);
}

static void rejects_bad_input(void)
{
    float x[8] = {1, 2, 3, 4, 5, 6, 7, 8}, y[8] = {1, 0, 0, 1, 1, 1, 0, 0};
    cks_cka_result r;
    CHECK(cks_cka_linear(x, 3, 2, y, 2, &r, NULL) == CKS_ERR_INVALID_ARG);
    CHECK(cks_cka_linear(x, 4, 0, y, 2, &r, NULL) == CKS_ERR_INVALID_ARG);
    x[5] = NAN;
    cks_diag diag = {{0}};
    CHECK(cks_cka_linear(x, 4, 2, y, 2, &r, &diag) == CKS_ERR_NUMERIC && strstr(diag.text, "X[2][1]"));
    float constant[8] = {1, 1, 1, 1, 1, 1, 1, 1};
    x[5] = 6;
    CHECK(cks_cka_linear(x, 4, 2, constant, 2, &r, NULL) == CKS_OK);
    CHECK(!r.debiased_defined && !r.biased_defined && isnan(r.debiased));
}

TEST_MAIN(T(against_plain_gram_loop), T(against_numpy), T(published_floor_and_null), T(invariances),
          T(perm_null_equals_explicit_shuffles), T(perm_null_uniform), T(rejects_bad_input))
