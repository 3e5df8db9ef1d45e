/*
 * Layer matrices: hand-worked margins and summaries, the monotone path against brute-force
 * enumeration of every monotone pairing, the assignment pairing against brute force, and
 * std-curve detrending/correlation against numpy (polyfit, interp, corrcoef).
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "check.h"
#include "ckptscope/layers.h"
#include "ckptscope/metrics.h"
#include "ckptscope/stats.h"
#include "ref/pyref.h"

/* Every cell against cks_pearson_f64 (itself checked against numpy in test_metrics). */
static void pearson_matrix_against_pairwise(void)
{
    enum { LA = 5, LB = 7, N = 300 };
    cks_rng rng;
    cks_rng_seed(&rng, 3);
    static double va[LA][N], vb[LB][N];
    const double *pa[LA], *pb[LB];
    for (int i = 0; i < LA; i++) {
        for (int k = 0; k < N; k++)
            va[i][k] = 1.0 + 0.05 * cks_rng_normal(&rng);
        pa[i] = va[i];
    }
    for (int j = 0; j < LB; j++) {
        for (int k = 0; k < N; k++)
            vb[j][k] = (j < LA ? 0.5 * (va[j][k] - 1) : 0) + 0.7 + 0.03 * cks_rng_normal(&rng);
        pb[j] = vb[j];
    }
    double s[LA * LB];
    CHECK(cks_layer_pearson_matrix(pa, LA, pb, LB, N, s, NULL) == CKS_OK);
    for (int i = 0; i < LA; i++)
        for (int j = 0; j < LB; j++) {
            double r = 0;
            CHECK(cks_pearson_f64(va[i], vb[j], N, &r, NULL) == CKS_OK);
            CHECK_NEAR(s[i * LB + j], r, 1e-13);
        }
    vb[2][0] = NAN;
    cks_diag diag = {{0}};
    CHECK(cks_layer_pearson_matrix(pa, LA, pb, LB, N, s, &diag) == CKS_ERR_NUMERIC && strstr(diag.text, "B2"));
}

static void margins_hand_worked(void)
{
    double s[6] = {0.1, 0.9, 0.5,
                   0.3, 0.2, 0.25};
    int32_t best[3];
    double margin[3], z[3];
    CHECK(cks_layer_margins(s, 2, 3, CKS_LAYER_ROWS, best, margin, z, NULL) == CKS_OK);
    CHECK(best[0] == 1 && best[1] == 0);
    CHECK_NEAR(margin[0], 0.4, 1e-15);
    CHECK_NEAR(margin[1], 0.05, 1e-15);
    /* row 0: median 0.5, |deviations| .4 .4 0 -> MAD .4, z = (.9 - .5)/.4 = 1 */
    CHECK_NEAR(z[0], 1.0, 1e-15);
    /* row 1: median .25, |dev| .05 .05 0 -> MAD .05, z = (.3 - .25)/.05 = 1 */
    CHECK_NEAR(z[1], 1.0, 1e-12);
    CHECK(cks_layer_margins(s, 2, 3, CKS_LAYER_COLS, best, margin, NULL, NULL) == CKS_OK);
    CHECK(best[0] == 1 && best[1] == 0 && best[2] == 0);
    CHECK_NEAR(margin[0], 0.2, 1e-15);
    CHECK_NEAR(margin[1], 0.7, 1e-15);
    CHECK_NEAR(margin[2], 0.25, 1e-15);
    /* a single column: margin undefined, flagged as NAN */
    double one[2] = {0.4, 0.6};
    CHECK(cks_layer_margins(one, 2, 1, CKS_LAYER_ROWS, best, margin, z, NULL) == CKS_OK);
    CHECK(isnan(margin[0]) && isnan(z[0]) && best[0] == 0);
    double bad[2] = {0.4, NAN};
    CHECK(cks_layer_margins(bad, 1, 2, CKS_LAYER_ROWS, best, NULL, NULL, NULL) == CKS_ERR_NUMERIC);
}

/* Best score over every monotone pairing, by recursion over (row, first free column). */
static double brute_path(const double *s, int rows, int cols, double gap, int i, int j, int paired)
{
    if (i == rows) /* unpaired rows and columns each cost gap */
        return -gap * ((rows - paired) + (cols - paired));
    double best = brute_path(s, rows, cols, gap, i + 1, j, paired); /* row i unpaired */
    for (int c = j; c < cols; c++) {
        double v = s[i * cols + c] + brute_path(s, rows, cols, gap, i + 1, c + 1, paired + 1);
        if (v > best)
            best = v;
    }
    return best;
}

static void monotone_path_against_brute_force(void)
{
    cks_rng rng;
    cks_rng_seed(&rng, 17);
    for (int trial = 0; trial < 300; trial++) {
        int rows = 1 + (int)cks_rng_below(&rng, 6), cols = 1 + (int)cks_rng_below(&rng, 7);
        double s[42], gap = cks_rng_uniform(&rng) * 0.5;
        for (int k = 0; k < rows * cols; k++)
            s[k] = cks_rng_normal(&rng);
        cks_layer_pair pairs[6];
        size_t n = 0;
        double score = 0;
        CHECK(cks_layer_monotone_path(s, rows, cols, gap, pairs, &n, &score, NULL) == CKS_OK);
        CHECK_NEAR(score, brute_path(s, rows, cols, gap, 0, 0, 0), 1e-12);
        /* the pairs are strictly increasing and their score is the reported one */
        double recomputed = -gap * (double)((size_t)rows + (size_t)cols - 2 * n);
        for (size_t k = 0; k < n; k++) {
            CHECK(k == 0 || (pairs[k].a > pairs[k - 1].a && pairs[k].b > pairs[k - 1].b));
            recomputed += s[pairs[k].a * cols + pairs[k].b];
        }
        CHECK_NEAR(recomputed, score, 1e-12);
    }
}

/* A 5-layer model against a 6-layer one with an inserted layer at index 2 of B. */
static void monotone_path_finds_inserted_layer(void)
{
    enum { RA = 5, CB = 6 };
    double s[RA * CB];
    for (int i = 0; i < RA; i++)
        for (int j = 0; j < CB; j++) {
            int matching = i < 2 ? i : i + 1;
            /* depth trend plus a strong match on the true partner */
            s[i * CB + j] = 0.1 - 0.02 * abs(i - j) + (j == matching ? 0.8 : 0.0);
        }
    cks_layer_pair pairs[RA];
    size_t n = 0;
    double score = 0;
    CHECK(cks_layer_monotone_path(s, RA, CB, 0.05, pairs, &n, &score, NULL) == CKS_OK);
    CHECK(n == 5);
    static const int want_b[RA] = {0, 1, 3, 4, 5};
    for (size_t k = 0; k < n && k < RA; k++)
        CHECK(pairs[k].a == (int32_t)k && pairs[k].b == want_b[k]);
    cks_path_summary sum;
    CHECK(cks_layer_path_summary(s, RA, CB, pairs, n, &sum, NULL) == CKS_OK);
    CHECK(sum.fraction_rows_best_on_path == 1.0);
    CHECK(sum.diagonal_dominance > 0.7);
    /* the unconstrained assignment pairs the same layers here */
    cks_layer_pair assigned[RA];
    size_t na = 0;
    CHECK(cks_layer_assignment(s, RA, CB, assigned, &na, NULL, NULL) == CKS_OK);
    CHECK(na == 5);
    for (size_t k = 0; k < na && k < RA; k++)
        CHECK(assigned[k].a == (int32_t)k && assigned[k].b == want_b[k]);
}

static void assignment_against_brute_force(void)
{
    /* 3 x 3 where the greedy row choice is wrong: greedy takes (0,0)=.9 then gets .1+.1 */
    double s[9] = {0.9, 0.8, 0.0,
                   0.85, 0.1, 0.0,
                   0.0, 0.0, 0.1};
    cks_layer_pair pairs[3];
    size_t n = 0;
    double score = 0;
    CHECK(cks_layer_assignment(s, 3, 3, pairs, &n, &score, NULL) == CKS_OK);
    /* the six permutations, by hand: best is (0,1),(1,0),(2,2) = .8 + .85 + .1 = 1.75 */
    CHECK_NEAR(score, 1.75, 1e-12);
    CHECK(n == 3 && pairs[0].b == 1 && pairs[1].b == 0 && pairs[2].b == 2);
}

static void summary_and_double_centre_hand_worked(void)
{
    double s[4] = {1.0, 0.2,
                   0.4, 0.8};
    cks_layer_pair diag_pairs[2] = {{0, 0}, {1, 1}};
    cks_path_summary sum;
    CHECK(cks_layer_path_summary(s, 2, 2, diag_pairs, 2, &sum, NULL) == CKS_OK);
    CHECK_NEAR(sum.path_mean, 0.9, 1e-15);
    CHECK_NEAR(sum.off_path_mean, 0.3, 1e-15);
    CHECK_NEAR(sum.diagonal_dominance, 0.6, 1e-15);
    CHECK_NEAR(sum.fraction_rows_best_on_path, 1.0, 0);
    CHECK_NEAR(sum.median_row_margin, 0.6, 1e-15); /* margins .8 and .4 */
    double c[4];
    CHECK(cks_layer_double_centre(s, 2, 2, c, NULL) == CKS_OK);
    /* row means .6 .6, col means .7 .5, grand .6: 1 - .6 - .7 + .6 = .3 */
    CHECK_NEAR(c[0], 0.3, 1e-15);
    CHECK_NEAR(c[1], -0.3, 1e-15);
    CHECK_NEAR(c[2], -0.3, 1e-15);
    CHECK_NEAR(c[3], 0.3, 1e-15);
    cks_layer_pair repeated[2] = {{0, 0}, {0, 0}};
    CHECK(cks_layer_path_summary(s, 2, 2, repeated, 2, &sum, NULL) == CKS_ERR_INVALID_ARG);
}

static void detrend_hand_worked(void)
{
    double y[6], resid[6];
    for (int i = 0; i < 6; i++) {
        double x = i / 5.0;
        y[i] = 2 - 3 * x + 4 * x * x;
    }
    CHECK(cks_std_curve_detrend(y, 6, 2, resid, NULL) == CKS_OK);
    for (int i = 0; i < 6; i++)
        CHECK_NEAR(resid[i], 0.0, 1e-12);
    CHECK(cks_std_curve_detrend(y, 6, 0, resid, NULL) == CKS_OK);
    double mean = 0;
    for (int i = 0; i < 6; i++)
        mean += y[i] / 6;
    for (int i = 0; i < 6; i++)
        CHECK_NEAR(resid[i], y[i] - mean, 1e-12);
    CHECK(cks_std_curve_detrend(y, 3, 3, resid, NULL) == CKS_ERR_INVALID_ARG);
    CHECK(cks_std_curve_detrend(y, 6, CKS_STD_CURVE_MAX_DEGREE + 1, resid, NULL) == CKS_ERR_INVALID_ARG);
}

static void curves_against_numpy(void)
{
    if (!pyref_available())
        SKIP("/usr/bin/python3 with numpy/scipy not available for the reference");
    cks_rng rng;
    cks_rng_seed(&rng, 46);
    static const size_t lengths[][2] = {{46, 48}, {48, 46}, {32, 32}};
    for (size_t c = 0; c < 3; c++) {
        size_t na = lengths[c][0], nb = lengths[c][1];
        double a[48], b[48], resid[48];
        for (size_t i = 0; i < na; i++)
            a[i] = 0.02 + 0.01 * i / (double)na + 0.002 * cks_rng_normal(&rng);
        for (size_t i = 0; i < nb; i++)
            b[i] = 0.03 - 0.005 * i / (double)nb + 0.002 * cks_rng_normal(&rng);
        for (unsigned degree = 0; degree <= 3; degree++) {
            pyref_dir dir = {{0}};
            char text[8];
            snprintf(text, sizeof text, "%u", degree);
            CHECK(pyref_dir_make(&dir));
            CHECK(pyref_write(&dir, "a.f64", a, na * sizeof(double)));
            CHECK(pyref_write(&dir, "b.f64", b, nb * sizeof(double)));
            CHECK(pyref_write_text(&dir, "degree.txt", text));
            CHECK(pyref_run(&dir, "curves"));
            double *want_resid = pyref_read(&dir, "resid_a.f64", NULL), *want_r = pyref_read(&dir, "r.f64", NULL);
            double r = 0;
            CHECK(cks_std_curve_detrend(a, na, degree, resid, NULL) == CKS_OK);
            CHECK(cks_std_curve_correlation(a, na, b, nb, degree, &r, NULL) == CKS_OK);
            for (size_t i = 0; want_resid && i < na; i++)
                CHECK_NEAR(resid[i], want_resid[i], 1e-12);
            if (want_r)
                CHECK_NEAR(r, *want_r, 1e-10);
            free(want_resid);
            free(want_r);
            pyref_dir_remove(&dir);
        }
    }
}

TEST_MAIN(T(pearson_matrix_against_pairwise), T(margins_hand_worked), T(monotone_path_against_brute_force), T(monotone_path_finds_inserted_layer),
          T(assignment_against_brute_force), T(summary_and_double_centre_hand_worked), T(detrend_hand_worked),
          T(curves_against_numpy))
