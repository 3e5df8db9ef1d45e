/*
 * PRNG, permutation tests, equality null and Holm against independent references: a Python
 * implementation of xoshiro256** and splitmix64, exact results known in closed form (the
 * permutation variance of Pearson r is 1/(n-1)), brute-force enumeration of every
 * permutation, hand-worked Holm cases and Holm's sequential rejection rule, and a
 * Kolmogorov–Smirnov check that p-values are uniform under a true null.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "ckptscope/metrics.h"
#include "ckptscope/stats.h"
#include "ref/pyref.h"

static bool sanitized(void)
{
    const char *s = getenv("CKS_SANITIZED");
    return s && strcmp(s, "1") == 0;
}

static void rng_matches_python_reference(void)
{
    if (!pyref_available())
        SKIP("/usr/bin/python3 with numpy/scipy not available for the reference");
    pyref_dir dir = {{0}};
    CHECK(pyref_dir_make(&dir));
    CHECK(pyref_write_text(&dir, "seed.txt", "20260128"));
    CHECK(pyref_run(&dir, "xoshiro"));
    size_t bytes = 0;
    uint64_t *want = pyref_read(&dir, "rng.u64", &bytes);
    CHECK(want && bytes == 8000);
    cks_rng rng;
    cks_rng_seed(&rng, 20260128);
    CHECK(rng.seed == 20260128);
    size_t bad = 0;
    for (size_t i = 0; want && i < 1000; i++)
        bad += cks_rng_next(&rng) != want[i];
    CHECK_MSG(bad == 0, "%zu of 1000 outputs differ from the Python xoshiro256**", bad);
    free(want);
    pyref_dir_remove(&dir);
}

/* Chi-square goodness of fit of bounded draws and of all 24 permutations of 4 elements. */
static void rng_bounded_and_permutations_are_uniform(void)
{
    cks_rng rng;
    cks_rng_seed(&rng, 7);
    enum { DRAWS = 70000 };
    uint64_t counts[7] = {0};
    for (int i = 0; i < DRAWS; i++) {
        uint64_t v = cks_rng_below(&rng, 7);
        CHECK(v < 7);
        counts[v < 7 ? v : 0]++;
    }
    double chi2 = 0;
    for (int k = 0; k < 7; k++)
        chi2 += pow(counts[k] - DRAWS / 7.0, 2) / (DRAWS / 7.0);
    CHECK_MSG(chi2 < 22.46, "chi2 %g over 6 df (p < 0.001)", chi2); /* chi2_6 quantile 0.999 */
    CHECK(cks_rng_below(&rng, 0) == 0);
    CHECK(cks_rng_below(&rng, 1) == 0);

    uint64_t perm_counts[24] = {0};
    for (int t = 0; t < 48000; t++) {
        uint32_t p[4];
        cks_rng_permutation(&rng, p, 4);
        /* Lehmer code -> index 0..23 */
        int code = 0;
        for (int i = 0; i < 4; i++) {
            int smaller = 0;
            for (int j = i + 1; j < 4; j++)
                smaller += p[j] < p[i];
            code = code * (4 - i) + smaller;
        }
        perm_counts[code]++;
    }
    chi2 = 0;
    for (int k = 0; k < 24; k++)
        chi2 += pow(perm_counts[k] - 2000.0, 2) / 2000.0;
    CHECK_MSG(chi2 < 49.73, "chi2 %g over 23 df (p < 0.001)", chi2);

    double sum = 0, sumsq = 0;
    for (int i = 0; i < 20000; i++) {
        double z = cks_rng_normal(&rng);
        sum += z;
        sumsq += z * z;
    }
    CHECK_NEAR(sum / 20000, 0.0, 0.03);  /* 4 sd of the mean */
    CHECK_NEAR(sumsq / 20000, 1.0, 0.04);
}

static cks_err constant_statistic(void *ctx, const uint32_t *perm, size_t n, double *value, cks_diag *diag)
{
    *value = 3.0;
    return CKS_OK;
}

/* sum i * x[perm[i]] with x increasing: the identity is the unique maximum (rearrangement). */
static cks_err rearrangement_statistic(void *ctx, const uint32_t *perm, size_t n, double *value, cks_diag *diag)
{
    double s = 0;
    for (size_t i = 0; i < n; i++)
        s += (double)i * (double)(perm ? perm[i] : i);
    *value = s;
    return CKS_OK;
}

static cks_err failing_statistic(void *ctx, const uint32_t *perm, size_t n, double *value, cks_diag *diag)
{
    return perm ? cks_fail(diag, CKS_ERR_NUMERIC, "planted failure") : (*value = 0, CKS_OK);
}

static void perm_test_counting_rules(void)
{
    cks_perm_result r;
    /* all ties: b = T, p = 1 */
    CHECK(cks_perm_test(10, constant_statistic, NULL, 1, 99, CKS_ALT_GREATER, &r, NULL) == CKS_OK);
    CHECK(r.at_least_as_extreme == 99 && r.p_value == 1.0 && r.null_sd == 0 && isnan(r.z));
    /* unique maximum over 12! orderings: nothing reaches it, p = 1/(T+1) */
    CHECK(cks_perm_test(12, rearrangement_statistic, NULL, 5, 199, CKS_ALT_GREATER, &r, NULL) == CKS_OK);
    CHECK(r.at_least_as_extreme == 0);
    CHECK_NEAR(r.p_value, 1.0 / 200, 1e-15);
    CHECK(r.seed == 5 && r.permutations == 199 && r.z > 0);
    /* the opposite alternative: everything is at most the maximum */
    CHECK(cks_perm_test(12, rearrangement_statistic, NULL, 5, 199, CKS_ALT_LESS, &r, NULL) == CKS_OK);
    CHECK(r.at_least_as_extreme == 199 && r.p_value == 1.0);
    /* same seed, same answer; the callback's error is passed through and out is zeroed */
    cks_perm_result again;
    CHECK(cks_perm_test(12, rearrangement_statistic, NULL, 5, 199, CKS_ALT_LESS, &again, NULL) == CKS_OK);
    CHECK(again.null_mean == r.null_mean && again.null_sd == r.null_sd);
    cks_diag diag = {{0}};
    CHECK(cks_perm_test(5, failing_statistic, NULL, 1, 9, CKS_ALT_GREATER, &r, &diag) == CKS_ERR_NUMERIC);
    CHECK(strstr(diag.text, "planted") != NULL && r.permutations == 0);
    CHECK(cks_perm_test(0, constant_statistic, NULL, 1, 9, CKS_ALT_GREATER, &r, NULL) == CKS_ERR_INVALID_ARG);
    CHECK(cks_perm_test(5, constant_statistic, NULL, 1, 0, CKS_ALT_GREATER, &r, NULL) == CKS_ERR_INVALID_ARG);
}

/* For one pair the permutation distribution of r has mean 0 and variance 1/(n-1) exactly. */
static void joint_pearson_null_moments(void)
{
    enum { N = 40 };
    double a[N], b[N];
    cks_rng data;
    cks_rng_seed(&data, 99);
    for (int i = 0; i < N; i++) {
        a[i] = cks_rng_normal(&data);
        b[i] = cks_rng_normal(&data) + 0.2 * a[i];
    }
    const double *pa[1] = {a}, *pb[1] = {b};
    cks_perm_result r;
    uint32_t T = sanitized() ? 2000 : 8000;
    CHECK(cks_joint_pearson_perm_test(pa, pb, 1, N, 11, T, CKS_ALT_TWO_SIDED, &r, NULL) == CKS_OK);
    double want_r = 0;
    CHECK(cks_pearson_f64(a, b, N, &want_r, NULL) == CKS_OK);
    CHECK_NEAR(r.observed, want_r, 1e-14);
    double sd = 1 / sqrt(N - 1.0);
    CHECK_NEAR(r.null_mean, 0.0, 5 * sd / sqrt(T));
    CHECK_MSG(fabs(r.null_sd / sd - 1) < 0.06, "null sd %g, exact %g", r.null_sd, sd);

    /* within-model dependence: 8 vectors sharing one pattern (rho ~ 0.8). The joint null is
     * much wider than the iid prediction 1/sqrt(k n), which is the point of permuting jointly */
    enum { K = 8, M = 256 };
    static double va[K][M], vb[K][M];
    double shared_a[M], shared_b[M];
    for (int i = 0; i < M; i++) {
        shared_a[i] = cks_rng_normal(&data);
        shared_b[i] = cks_rng_normal(&data);
    }
    const double *qa[K], *qb[K];
    for (int k = 0; k < K; k++) {
        for (int i = 0; i < M; i++) {
            va[k][i] = 2 * shared_a[i] + cks_rng_normal(&data);
            vb[k][i] = 2 * shared_b[i] + cks_rng_normal(&data);
        }
        qa[k] = va[k];
        qb[k] = vb[k];
    }
    CHECK(cks_joint_pearson_perm_test(qa, qb, K, M, 3, 2000, CKS_ALT_TWO_SIDED, &r, NULL) == CKS_OK);
    CHECK_MSG(r.null_sd > 2.0 / sqrt((double)K * M), "joint null sd %g vs iid %g", r.null_sd,
              1 / sqrt((double)K * M));
    double constant[M];
    for (int i = 0; i < M; i++)
        constant[i] = 1;
    qb[3] = constant;
    CHECK(cks_joint_pearson_perm_test(qa, qb, K, M, 3, 10, CKS_ALT_TWO_SIDED, &r, NULL) == CKS_ERR_NUMERIC);
}

/* Brute force for the matrix test: mean Pearson of flattened matrices with B's columns permuted. */
typedef struct brute_matrix_ctx {
    const double *const *a, *const *b;
    const size_t *rows;
    size_t k;
    double *scratch;
} brute_matrix_ctx;

static cks_err brute_matrix_statistic(void *opaque, const uint32_t *perm, size_t n, double *value, cks_diag *diag)
{
    brute_matrix_ctx *ctx = opaque;
    double total = 0;
    for (size_t j = 0; j < ctx->k; j++) {
        size_t len = ctx->rows[j] * n;
        for (size_t r = 0; r < ctx->rows[j]; r++)
            for (size_t i = 0; i < n; i++)
                ctx->scratch[r * n + i] = ctx->b[j][r * n + (perm ? perm[i] : i)];
        double rj = 0;
        cks_err err = cks_pearson_f64(ctx->a[j], ctx->scratch, len, &rj, diag);
        if (err != CKS_OK)
            return err;
        total += rj;
    }
    *value = total / (double)ctx->k;
    return CKS_OK;
}

/* The cross-matrix shortcut equals recomputing every permuted Pearson (same seed, same perms). */
static void joint_column_test_matches_brute_force(void)
{
    enum { K = 3, N = 50 };
    static const size_t rows[K] = {7, 1, 12};
    cks_rng rng;
    cks_rng_seed(&rng, 55);
    double *a[K], *b[K];
    for (size_t j = 0; j < K; j++) {
        a[j] = malloc(rows[j] * N * sizeof(double));
        b[j] = malloc(rows[j] * N * sizeof(double));
        for (size_t q = 0; q < rows[j] * N; q++) {
            a[j][q] = 3.0 + cks_rng_normal(&rng);
            b[j][q] = 0.3 * a[j][q] + cks_rng_normal(&rng);
        }
    }
    double scratch[12 * N];
    brute_matrix_ctx ctx = {(const double *const *)a, (const double *const *)b, rows, K, scratch};
    static const cks_alternative alts[3] = {CKS_ALT_GREATER, CKS_ALT_LESS, CKS_ALT_TWO_SIDED};
    for (int t = 0; t < 3; t++) {
        cks_perm_result fast, brute;
        CHECK(cks_joint_column_pearson_perm_test((const double *const *)a, (const double *const *)b, rows, K, N,
                                                 42, 499, alts[t], &fast, NULL) == CKS_OK);
        CHECK(cks_perm_test(N, brute_matrix_statistic, &ctx, 42, 499, alts[t], &brute, NULL) == CKS_OK);
        CHECK_NEAR(fast.observed, brute.observed, 1e-12);
        CHECK_NEAR(fast.null_mean, brute.null_mean, 1e-12);
        CHECK_NEAR(fast.null_sd, brute.null_sd, 1e-12);
        CHECK(fast.at_least_as_extreme == brute.at_least_as_extreme && fast.p_value == brute.p_value);
    }
    /* with one row per matrix it is the vector test */
    const double *va[1] = {a[1]}, *vb[1] = {b[1]};
    size_t one = 1;
    cks_perm_result as_matrix, as_vector;
    CHECK(cks_joint_column_pearson_perm_test(va, vb, &one, 1, N, 9, 199, CKS_ALT_GREATER, &as_matrix, NULL) == CKS_OK);
    CHECK(cks_joint_pearson_perm_test(va, vb, 1, N, 9, 199, CKS_ALT_GREATER, &as_vector, NULL) == CKS_OK);
    CHECK_NEAR(as_matrix.observed, as_vector.observed, 1e-12);
    CHECK(as_matrix.at_least_as_extreme == as_vector.at_least_as_extreme);
    for (size_t q = 0; q < rows[2] * N; q++)
        b[2][q] = 1.0;
    CHECK(cks_joint_column_pearson_perm_test((const double *const *)a, (const double *const *)b, rows, K, N,
                                             42, 9, CKS_ALT_GREATER, &as_matrix, NULL) == CKS_ERR_NUMERIC);
    CHECK(cks_joint_column_pearson_perm_test((const double *const *)a, (const double *const *)b, rows, K, 1,
                                             42, 9, CKS_ALT_GREATER, &as_matrix, NULL) == CKS_ERR_INVALID_ARG);
    for (size_t j = 0; j < K; j++) {
        free(a[j]);
        free(b[j]);
    }
}

/* Kolmogorov–Smirnov distance of permutation p-values from uniform under a true null. */
static void perm_p_values_uniform_under_null(void)
{
    int runs = sanitized() ? 200 : 400;
    enum { N = 48, K = 3, T = 99 };
    double *p = malloc(sizeof(double) * (size_t)runs);
    cks_rng data;
    cks_rng_seed(&data, 2026);
    double a[K][N], b[K][N];
    for (int run = 0; run < runs; run++) {
        const double *pa[K], *pb[K];
        for (int k = 0; k < K; k++) {
            for (int i = 0; i < N; i++) {
                a[k][i] = cks_rng_normal(&data);
                b[k][i] = cks_rng_normal(&data);
            }
            pa[k] = a[k];
            pb[k] = b[k];
        }
        cks_perm_result r;
        CHECK(cks_joint_pearson_perm_test(pa, pb, K, N, 1000 + (uint64_t)run, T, CKS_ALT_GREATER, &r, NULL) == CKS_OK);
        p[run] = r.p_value;
    }
    /* p lives on the grid j/(T+1); compare the empirical CDF with the uniform CDF there */
    double d = 0;
    for (int j = 1; j <= T + 1; j++) {
        double grid = (double)j / (T + 1), below = 0;
        for (int run = 0; run < runs; run++)
            below += p[run] <= grid + 1e-12;
        d = fmax(d, fabs(below / runs - grid));
    }
    double critical = 1.949 / sqrt((double)runs); /* Kolmogorov, alpha = 0.001 */
    CHECK_MSG(d < critical, "KS distance %g >= %g over %d runs", d, critical, runs);
    free(p);

    /* and the test has power: a real dependence gives the floor 1/(T+1) */
    const double *pa[1] = {a[0]}, *pb[1] = {a[1]};
    for (int i = 0; i < N; i++)
        a[1][i] = a[0][i] + 0.3 * cks_rng_normal(&data);
    cks_perm_result r;
    CHECK(cks_joint_pearson_perm_test(pa, pb, 1, N, 1, T, CKS_ALT_GREATER, &r, NULL) == CKS_OK);
    CHECK_NEAR(r.p_value, 1.0 / (T + 1), 1e-15);
}

/* Exact mean and variance of the number of matches, by enumerating all n! shuffles of B. */
static void brute_equality_moments(const uint8_t *a, const uint8_t *b, int n, double *mean, double *var)
{
    int idx[8];
    for (int i = 0; i < n; i++)
        idx[i] = i;
    double s = 0, ss = 0, count = 0;
    /* Heap's algorithm, iterative */
    int c[8] = {0};
    for (int i = 0;;) {
        double x = 0;
        for (int k = 0; k < n; k++)
            x += a[k] == b[idx[k]];
        s += x;
        ss += x * x;
        count++;
        while (i < n && c[i] >= i) {
            c[i] = 0;
            i++;
        }
        if (i >= n)
            break;
        int j = i % 2 ? c[i] : 0;
        int t = idx[j];
        idx[j] = idx[i];
        idx[i] = t;
        c[i]++;
        i = 0;
    }
    *mean = s / count;
    *var = ss / count - (*mean) * (*mean);
}

static void equality_null_exact(void)
{
    cks_equality_null e;
    /* two values, B a copy of A: X is 2 (identity) or 0 (swap) */
    uint8_t two[2] = {1, 2};
    CHECK(cks_equality_null_compute(CKS_DTYPE_U8, two, two, 2, &e, NULL) == CKS_OK);
    CHECK(e.equal == 2 && e.observed_fraction == 1.0);
    CHECK_NEAR(e.expected_fraction, 0.5, 1e-15);
    CHECK_NEAR(e.null_sd, 0.5, 1e-15);

    static const uint8_t cases[][2][7] = {
        {{1, 1, 2, 2, 2, 3, 4}, {2, 1, 2, 5, 2, 3, 1}},
        {{7, 7, 7, 7, 7, 7, 7}, {7, 7, 7, 1, 7, 7, 7}},
        {{1, 2, 3, 4, 5, 6, 7}, {7, 6, 5, 4, 3, 2, 1}},
        {{0, 0, 1, 1, 0, 1, 0}, {1, 0, 1, 0, 0, 0, 1}},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        double mean, var;
        brute_equality_moments(cases[c][0], cases[c][1], 7, &mean, &var);
        CHECK(cks_equality_null_compute(CKS_DTYPE_U8, cases[c][0], cases[c][1], 7, &e, NULL) == CKS_OK);
        CHECK_NEAR(e.expected_fraction, mean / 7, 1e-14);
        CHECK_NEAR(e.null_sd, sqrt(fmax(var, 0)) / 7, 1e-12);
        /* the sorted path (32-bit values) gives the same numbers as the table path */
        uint32_t wa[7], wb[7];
        for (int i = 0; i < 7; i++) {
            wa[i] = cases[c][0][i] * 0x01010101u;
            wb[i] = cases[c][1][i] * 0x01010101u;
        }
        cks_equality_null e32;
        CHECK(cks_equality_null_compute(CKS_DTYPE_U32, wa, wb, 7, &e32, NULL) == CKS_OK);
        CHECK_NEAR(e32.expected_fraction, mean / 7, 1e-14);
        CHECK_NEAR(e32.null_sd, sqrt(fmax(var, 0)) / 7, 1e-12);
        CHECK(e32.equal == e.equal && e32.distinct_a == e.distinct_a && e32.distinct_b == e.distinct_b);
    }
    /* from histograms (the streaming form): the same numbers as from the raw tensor */
    uint64_t counts_a[256] = {0}, counts_b[256] = {0};
    for (int i = 0; i < 7; i++) {
        counts_a[cases[0][0][i]]++;
        counts_b[cases[0][1][i]]++;
    }
    cks_equality_null from_counts, from_raw;
    CHECK(cks_equality_null_compute(CKS_DTYPE_U8, cases[0][0], cases[0][1], 7, &from_raw, NULL) == CKS_OK);
    CHECK(cks_equality_null_from_counts(counts_a, counts_b, 256, from_raw.equal, &from_counts, NULL) == CKS_OK);
    CHECK(from_counts.expected_fraction == from_raw.expected_fraction && from_counts.null_sd == from_raw.null_sd);
    CHECK(from_counts.z == from_raw.z && from_counts.distinct_a == from_raw.distinct_a);
    counts_b[9]++;
    CHECK(cks_equality_null_from_counts(counts_a, counts_b, 256, 1, &from_counts, NULL) == CKS_ERR_INVALID_ARG);
    /* a constant tensor: every shuffle matches the same way, sd 0, z undefined */
    CHECK(cks_equality_null_compute(CKS_DTYPE_U8, cases[1][0], cases[1][0], 7, &e, NULL) == CKS_OK);
    CHECK(e.null_sd == 0 && isnan(e.z) && e.distinct_a == 1);
    CHECK(cks_equality_null_compute(CKS_DTYPE_F4, two, two, 2, &e, NULL) == CKS_ERR_UNSUPPORTED);
}

/* BF16 "norm gains" in a narrow band collide by chance: the null mean is far above 0. */
static void equality_null_bf16_against_shuffles(void)
{
    enum { N = 4096 };
    uint16_t a[N], b[N], shuffled[N];
    cks_rng rng;
    cks_rng_seed(&rng, 77);
    for (int i = 0; i < N; i++) {
        float x = (float)(0.8 + 0.01 * cks_rng_normal(&rng)), y = (float)(0.8 + 0.01 * cks_rng_normal(&rng));
        uint32_t ux, uy;
        memcpy(&ux, &x, 4);
        memcpy(&uy, &y, 4);
        a[i] = (uint16_t)(ux >> 16);
        b[i] = (uint16_t)(uy >> 16);
    }
    cks_equality_null e;
    CHECK(cks_equality_null_compute(CKS_DTYPE_BF16, a, b, N, &e, NULL) == CKS_OK);
    CHECK(e.expected_fraction > 0.1); /* many collisions expected by chance */
    /* Monte Carlo over explicit shuffles with a test-local shuffle */
    int shuffles = sanitized() ? 300 : 1000;
    double s = 0, ss = 0;
    uint64_t state = 1;
    for (int t = 0; t < shuffles; t++) {
        memcpy(shuffled, b, sizeof b);
        for (int i = N - 1; i > 0; i--) {
            state = state * 6364136223846793005ull + 1442695040888963407ull;
            int j = (int)((state >> 33) % (uint64_t)(i + 1));
            uint16_t tmp = shuffled[i];
            shuffled[i] = shuffled[j];
            shuffled[j] = tmp;
        }
        double x = 0;
        for (int i = 0; i < N; i++)
            x += a[i] == shuffled[i];
        s += x / N;
        ss += (x / N) * (x / N);
    }
    double mc_mean = s / shuffles, mc_sd = sqrt(ss / shuffles - mc_mean * mc_mean);
    CHECK_NEAR(mc_mean, e.expected_fraction, 5 * e.null_sd / sqrt(shuffles));
    CHECK_MSG(fabs(mc_sd / e.null_sd - 1) < 0.12, "Monte Carlo sd %g, exact %g", mc_sd, e.null_sd);
}

/* Holm's step-down rule written out: reject in p order while p_(i) <= alpha / (k - i + 1). */
static void holm_sequential_reference(const double *p, size_t k, double alpha, bool *reject)
{
    bool *done = calloc(k, 1);
    for (size_t i = 0; i < k; i++)
        reject[i] = false;
    for (size_t step = 0; step < k; step++) {
        size_t best = k;
        for (size_t j = 0; j < k; j++)
            if (!done[j] && (best == k || p[j] < p[best]))
                best = j;
        done[best] = true;
        if (p[best] > alpha / (double)(k - step))
            break;
        reject[best] = true;
    }
    free(done);
}

static void holm_correction(void)
{
    /* hand-worked: sorted .005 .01 .03 .04 -> x4 .02, x3 .03, x2 .06, x1 .04 -> monotone .06 */
    double p[4] = {0.01, 0.04, 0.03, 0.005}, adj[4];
    CHECK(cks_holm(p, 4, adj, NULL) == CKS_OK);
    CHECK_NEAR(adj[0], 0.03, 1e-15);
    CHECK_NEAR(adj[1], 0.06, 1e-15);
    CHECK_NEAR(adj[2], 0.06, 1e-15);
    CHECK_NEAR(adj[3], 0.02, 1e-15);
    double big[2] = {0.6, 0.9}, adj2[2];
    CHECK(cks_holm(big, 2, adj2, NULL) == CKS_OK);
    CHECK(adj2[0] == 1.0 && adj2[1] == 1.0);

    cks_rng rng;
    cks_rng_seed(&rng, 4);
    static const double alphas[] = {1e-3, 0.01, 0.05, 0.2};
    for (int trial = 0; trial < 300; trial++) {
        size_t k = 1 + cks_rng_below(&rng, 9);
        double q[10], qa[10];
        bool want[10];
        for (size_t i = 0; i < k; i++)
            q[i] = pow(cks_rng_uniform(&rng), 3); /* skewed towards small p */
        CHECK(cks_holm(q, k, qa, NULL) == CKS_OK);
        for (size_t a = 0; a < 4; a++) {
            holm_sequential_reference(q, k, alphas[a], want);
            for (size_t i = 0; i < k; i++)
                CHECK((qa[i] <= alphas[a]) == want[i]);
        }
    }
    double bad[2] = {0.1, NAN}, out[2];
    CHECK(cks_holm(bad, 2, out, NULL) == CKS_ERR_INVALID_ARG);
    bad[1] = 1.5;
    CHECK(cks_holm(bad, 2, out, NULL) == CKS_ERR_INVALID_ARG);
    CHECK(cks_holm(bad, 0, out, NULL) == CKS_ERR_INVALID_ARG);
}

static void normal_tail_and_z(void)
{
    CHECK_NEAR(cks_normal_sf(0), 0.5, 1e-16);
    CHECK_NEAR(cks_normal_sf(1.959963984540054), 0.025, 1e-15);
    /* P(Z > 10) = 7.619853024160527e-24 (tables; Abramowitz & Stegun 26.2) */
    CHECK_NEAR(cks_normal_sf(10) / 7.619853024160527e-24, 1.0, 1e-12);
    CHECK_NEAR(cks_zscore(3, 1, 0.5), 4.0, 0);
    CHECK(isnan(cks_zscore(3, 1, 0)));
}

/* Haar orthogonal matrices: orthogonal to rounding, and distributed as theory says for the
 * Haar measure on O(3): E[q11] = 0 (plain Householder QR without Mezzadri's sign correction
 * biases it), E[q11^2] = 1/3, E[q11^4] = 3/(n(n+2)) = 1/5, and det = +1 half of the time. */
static void orthogonal_matrices_are_haar(void)
{
    cks_rng rng;
    double q[80 * 80];
    cks_rng_seed(&rng, 11);
    for (size_t n = 1; n <= 80; n += 13) {
        double worst = 0;
        CHECK(cks_rng_orthogonal(&rng, n, q, NULL) == CKS_OK);
        for (size_t i = 0; i < n; i++)
            for (size_t j = 0; j < n; j++) {
                double s = 0;
                for (size_t k = 0; k < n; k++)
                    s += q[i * n + k] * q[j * n + k];
                worst = fmax(worst, fabs(s - (i == j)));
            }
        CHECK_MSG(worst < 1e-12, "n = %zu: Q Q^T differs from I by %g", n, worst);
    }
    enum { DRAWS = 40000 };
    double m1 = 0, m2 = 0, m4 = 0;
    int positive_det = 0;
    for (int d = 0; d < DRAWS; d++) {
        CHECK(cks_rng_orthogonal(&rng, 3, q, NULL) == CKS_OK);
        double det = q[0] * (q[4] * q[8] - q[5] * q[7]) - q[1] * (q[3] * q[8] - q[5] * q[6]) +
                     q[2] * (q[3] * q[7] - q[4] * q[6]);
        positive_det += det > 0;
        m1 += q[0];
        m2 += q[0] * q[0];
        m4 += pow(q[0], 4);
    }
    /* standard errors: sd(q11) = 0.577, sd(q11^2) = 0.298, sd(q11^4) = 0.27; 5 sd tolerances */
    CHECK_NEAR(m1 / DRAWS, 0.0, 5 * 0.577 / sqrt(DRAWS));
    CHECK_NEAR(m2 / DRAWS, 1.0 / 3.0, 5 * 0.298 / sqrt(DRAWS));
    CHECK_NEAR(m4 / DRAWS, 0.2, 5 * 0.27 / sqrt(DRAWS));
    CHECK_NEAR((double)positive_det / DRAWS, 0.5, 5 * 0.5 / sqrt(DRAWS));
    CHECK(cks_rng_orthogonal(&rng, 0, q, NULL) == CKS_ERR_INVALID_ARG);
}

/* The rotation keeps every inner product and leaves no coordinate lined up with an input one. */
static void rotation_keeps_geometry_and_mixes_coordinates(void)
{
    static const size_t sizes[] = {5, 64, 300, 4096};
    cks_rng rng;
    cks_rng_seed(&rng, 12);
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
        size_t n = sizes[s], count = 6;
        float *x = malloc(count * n * sizeof *x), *y = malloc(count * n * sizeof *y);
        float *basis = calloc(n * 4, sizeof *basis);
        cks_rotation rot;
        double worst = 0, largest = 0;
        CHECK(x && y && basis);
        if (!x || !y || !basis)
            return;
        for (size_t i = 0; i < count * n; i++)
            x[i] = (float)cks_rng_normal(&rng);
        memcpy(y, x, count * n * sizeof *y);
        CHECK(cks_rotation_draw(&rng, n, &rot, NULL) == CKS_OK);
        CHECK(cks_rotation_apply(&rot, y, count, NULL) == CKS_OK);
        for (size_t i = 0; i < count; i++)
            for (size_t j = 0; j < count; j++) {
                double before = 0, after = 0;
                for (size_t k = 0; k < n; k++) {
                    before += (double)x[i * n + k] * x[j * n + k];
                    after += (double)y[i * n + k] * y[j * n + k];
                }
                worst = fmax(worst, fabs(after - before) / n);
            }
        CHECK_MSG(worst < 1e-5, "n = %zu: inner products moved by %g (relative to n)", n, worst);
        /* unit vectors e_0..e_3: after the rotation no entry should carry most of the mass */
        for (size_t i = 0; i < 4 && i < n; i++)
            basis[i * n + i] = 1.0f;
        CHECK(cks_rotation_apply(&rot, basis, 4 < n ? 4 : n, NULL) == CKS_OK);
        for (size_t i = 0; i < 4 * n && n >= 300; i++)
            largest = fmax(largest, fabs(basis[i]));
        if (n >= 300)
            CHECK_MSG(largest < 0.5, "n = %zu: a unit vector keeps %.3f of one coordinate", n, largest);
        cks_rotation_release(&rot);
        free(x);
        free(y);
        free(basis);
    }
}

static void median_and_ranks_exact(void)
{
    double v[] = {5, 1, 4, 2, 3}, w[] = {2, 8, 4, 6}, r[6];
    double ties[] = {10, 20, 10, 30, 20, 10};
    CHECK_NEAR(cks_median_inplace(v, 5), 3, 0);
    CHECK_NEAR(cks_median_inplace(w, 4), 5, 0);
    CHECK(isnan(cks_median_inplace(w, 0)));
    /* numpy.percentile([1, 2, 3, 4, 10], [25, 50, 90]) = 2, 3, 7.6 */
    {
        double x[] = {10, 3, 1, 4, 2};
        CHECK_NEAR(cks_quantile_inplace(x, 5, 0.25), 2, 1e-15);
        CHECK_NEAR(cks_quantile_inplace(x, 5, 0.5), 3, 1e-15);
        CHECK_NEAR(cks_quantile_inplace(x, 5, 0.9), 7.6, 1e-12);
        CHECK_NEAR(cks_quantile_inplace(x, 5, 1.0), 10, 0);
        CHECK(isnan(cks_quantile_inplace(x, 5, 1.5)));
    }
    CHECK(cks_mid_ranks_f64(ties, 6, r, NULL) == CKS_OK);
    /* 10 x3 -> ranks 1,2,3 -> 2; 20 x2 -> 4,5 -> 4.5; 30 -> 6 */
    CHECK_NEAR(r[0], 2, 0);
    CHECK_NEAR(r[1], 4.5, 0);
    CHECK_NEAR(r[2], 2, 0);
    CHECK_NEAR(r[3], 6, 0);
    CHECK_NEAR(r[4], 4.5, 0);
    CHECK_NEAR(r[5], 2, 0);
    ties[2] = NAN;
    CHECK(cks_mid_ranks_f64(ties, 6, r, NULL) == CKS_ERR_NUMERIC);
}

/* Mid-ranks against their definition, counted by hand for every element (O(n^2)): rank =
 * (number below) + (number equal + 1) / 2. Random data with many ties, both zeros (which
 * compare equal and must tie), negatives, subnormals and extremes; sizes around the radix
 * sort's edge cases (1, 2, 255-257, 4096). */
static void mid_ranks_match_definition(void)
{
    static const size_t sizes[] = {1, 2, 3, 17, 255, 256, 257, 1000, 4096};
    static const double specials[] = {0.0, -0.0, 1.0, -1.0, 1e-310, -1e-310, 1.7e308, -1.7e308, 0.5, -0.5};
    static double x[4096], r[4096];
    uint64_t state = 12345;
    for (size_t si = 0; si < sizeof sizes / sizeof sizes[0]; si++) {
        size_t n = sizes[si], wrong = 0;
        for (size_t i = 0; i < n; i++) {
            state = state * 6364136223846793005ull + 1442695040888963407ull;
            unsigned pick = (unsigned)(state >> 60);
            if (pick < 4)
                x[i] = specials[(state >> 20) % 10];
            else if (pick < 10)
                x[i] = (double)((int)((state >> 33) % 9) - 4); /* small integers: many ties */
            else
                x[i] = ((double)(state >> 11) * 0x1p-53 - 0.5) * 1e3;
        }
        CHECK(cks_mid_ranks_f64(x, n, r, NULL) == CKS_OK);
        for (size_t i = 0; i < n; i++) {
            size_t below = 0, equal = 0;
            for (size_t j = 0; j < n; j++) {
                below += x[j] < x[i];
                equal += x[j] == x[i];
            }
            wrong += r[i] != (double)below + ((double)equal + 1.0) / 2.0;
        }
        CHECK(wrong == 0);
    }
}

static int cmp_dbl(const void *x, const void *y)
{
    double a = *(const double *)x, b = *(const double *)y;
    return (a > b) - (a < b);
}

/* Median and quantiles (selection, not sorting) against a sorted copy and the textbook
 * formulas (type 7), on sizes 1..1001 with heavy ties (bf16-like), both zeros and extremes. */
static void median_and_quantile_match_sorted(void)
{
    static double v[1001], w[1001], sorted[1001];
    static const double qs[] = {0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 0.999, 1.0};
    uint64_t state = 99;
    size_t wrong = 0;
    for (size_t n = 1; n <= 1001; n += (n < 20 ? 1 : 37)) {
        for (size_t i = 0; i < n; i++) {
            state = state * 6364136223846793005ull + 1442695040888963407ull;
            unsigned pick = (unsigned)(state >> 61);
            v[i] = pick < 3 ? (double)((int)((state >> 40) % 7) - 3) : pick < 4 ? ((state >> 20) & 1 ? 0.0 : -0.0)
                                                                    : ((double)(state >> 11) * 0x1p-53 - 0.5) * 1e6;
        }
        memcpy(sorted, v, n * sizeof *v);
        qsort(sorted, n, sizeof *sorted, cmp_dbl);
        memcpy(w, v, n * sizeof *v);
        double want = n % 2 ? sorted[n / 2] : 0.5 * (sorted[n / 2 - 1] + sorted[n / 2]);
        wrong += cks_median_inplace(w, n) != want;
        for (size_t k = 0; k < sizeof qs / sizeof qs[0]; k++) {
            double h = qs[k] * (double)(n - 1);
            size_t lo = (size_t)h;
            double wq = lo + 1 < n ? sorted[lo] + (h - (double)lo) * (sorted[lo + 1] - sorted[lo]) : sorted[n - 1];
            memcpy(w, v, n * sizeof *v);
            wrong += cks_quantile_inplace(w, n, qs[k]) != wq;
        }
    }
    CHECK(wrong == 0);
}

/* Records every statistic it is asked for: the draws of a plain run, to check the curtailed
 * one against by counting. Values: a fixed pseudo-random function of the permutation. */
typedef struct recorder {
    double values[4096];
    size_t n;
} recorder;

static cks_err recording_statistic(void *ctx, const uint32_t *perm, size_t n, double *value, cks_diag *diag)
{
    recorder *r = ctx;
    double s = 0;
    for (size_t i = 0; i < n; i++)
        s += sin((double)(i + 1) * (double)(perm ? perm[i] : i));
    *value = s;
    if (perm && r->n < sizeof r->values / sizeof r->values[0])
        r->values[r->n++] = s;
    return CKS_OK;
}

/* Curtailed (Besag-Clifford) test: the same draws as the plain test, stopped at the h-th draw
 * as extreme with p = h / L; the plain answer when that never happens; and the stop rule of
 * cks_perm_stop_after by hand. */
static void perm_test_curtailed_matches_counting(void)
{
    static recorder plain, cut;
    cks_perm_result full, r;
    double observed = 0;
    size_t extreme = 0, at = 0;
    memset(&plain, 0, sizeof plain);
    memset(&cut, 0, sizeof cut);
    CHECK(cks_perm_test(40, recording_statistic, &plain, 77, 999, CKS_ALT_GREATER, &full, NULL) == CKS_OK);
    CHECK(plain.n == 999);
    observed = full.observed;
    for (at = 0; at < plain.n && extreme < 32; at++)
        extreme += plain.values[at] >= observed - 1e-12 * fabs(observed);
    CHECK(extreme == 32); /* the observed value is not extreme for this statistic: it must stop */
    CHECK(cks_perm_test_curtailed(40, recording_statistic, &cut, 77, 999, 32, CKS_ALT_GREATER, &r, NULL) == CKS_OK);
    CHECK(r.curtailed && r.planned == 999 && r.permutations == at && r.at_least_as_extreme == 32);
    CHECK_NEAR(r.p_value, 32.0 / (double)at, 1e-15);
    CHECK(cut.n == at && memcmp(cut.values, plain.values, at * sizeof plain.values[0]) == 0);
    /* a stop that never comes: the plain result, bit for bit */
    memset(&cut, 0, sizeof cut);
    CHECK(cks_perm_test_curtailed(40, recording_statistic, &cut, 77, 999, 999, CKS_ALT_GREATER, &r, NULL) == CKS_OK);
    CHECK(!r.curtailed && r.permutations == 999 && r.p_value == full.p_value && r.null_sd == full.null_sd);
    /* stop_after = max(ceil(alpha (T + 1)), 32), 0 when it could never come before T */
    CHECK(cks_perm_stop_after(1e-3, 999) == 32);
    CHECK(cks_perm_stop_after(0.05, 9999) == 500);
    CHECK(cks_perm_stop_after(0.01, 9999) == 100);
    CHECK(cks_perm_stop_after(1e-3, 19) == 0);
    CHECK(cks_perm_stop_after(0, 999) == 0);
}

/* A statistic with scratch of its own context (written, then read back), counting its calls, and
 * failing on request at the first permutation (in draw order) that starts with index 3. */
typedef struct scratch_ctx {
    double buf[64];
    unsigned calls;
    bool fail;
} scratch_ctx;

static cks_err scratch_statistic(void *vctx, const uint32_t *perm, size_t n, double *value, cks_diag *diag)
{
    scratch_ctx *c = vctx;
    double s = 0;
    c->calls++;
    if (c->fail && perm && perm[0] == 3)
        return cks_fail(diag, CKS_ERR_NUMERIC, "planted at a permutation whose second index is %u", perm[1]);
    for (size_t i = 0; i < n; i++)
        c->buf[i] = sin((double)(i + 1) * (double)(perm ? perm[i] : i));
    for (size_t i = 0; i < n; i++)
        s += c->buf[i] * (double)(i % 7);
    *value = s;
    return CKS_OK;
}

static bool same_result(const cks_perm_result *a, const cks_perm_result *b)
{
    return a->observed == b->observed && a->permutations == b->permutations && a->planned == b->planned &&
           a->at_least_as_extreme == b->at_least_as_extreme && a->p_value == b->p_value &&
           a->null_mean == b->null_mean && a->null_sd == b->null_sd && a->curtailed == b->curtailed &&
           ((isnan(a->z) && isnan(b->z)) || a->z == b->z) && a->seed == b->seed;
}

/* The threaded test is the serial one bit for bit, whatever the thread count: the same draws
 * judged in the same order (a stop, no stop, an error at the same permutation), each thread
 * on its own context, and few draws evaluated past a stop. */
static void perm_test_threads_match_serial(void)
{
    static scratch_ctx ctx[CKS_PERM_MAX_THREADS];
    void *cp[CKS_PERM_MAX_THREADS];
    static const unsigned counts[] = {1, 2, 3, 5, CKS_PERM_MAX_THREADS};
    static const uint32_t stops[] = {32, 0};
    for (unsigned w = 0; w < CKS_PERM_MAX_THREADS; w++)
        cp[w] = &ctx[w];
    for (size_t si = 0; si < sizeof stops / sizeof stops[0]; si++) {
        cks_perm_result serial, mt;
        memset(ctx, 0, sizeof ctx);
        CHECK(cks_perm_test_curtailed(48, scratch_statistic, &ctx[0], 21, 999, stops[si], CKS_ALT_GREATER, &serial,
                                      NULL) == CKS_OK);
        CHECK(serial.curtailed == (stops[si] != 0)); /* the observed value is ordinary: a stop comes */
        for (size_t ci = 0; ci < sizeof counts / sizeof counts[0]; ci++) {
            unsigned threads = counts[ci], calls = 0;
            memset(ctx, 0, sizeof ctx);
            CHECK(cks_perm_test_curtailed_mt(48, scratch_statistic, cp, threads, 21, 999, stops[si], CKS_ALT_GREATER,
                                             &mt, NULL) == CKS_OK);
            CHECK(same_result(&serial, &mt));
            for (unsigned w = 0; w < threads; w++)
                calls += ctx[w].calls;
            /* the observed value, every draw judged, and fewer than 2 per thread past a stop */
            CHECK(calls >= 1 + mt.permutations && calls < 1 + mt.permutations + 2 * threads);
            if (threads > 1)
                CHECK(ctx[1].calls > 0); /* a second thread really evaluated draws */
            for (unsigned w = threads; w < CKS_PERM_MAX_THREADS; w++)
                CHECK(ctx[w].calls == 0);
        }
    }
    /* an error: the same first failing draw (its text names it), out zeroed */
    cks_diag d1 = {{0}}, d2 = {{0}};
    cks_perm_result r;
    memset(ctx, 0, sizeof ctx);
    for (unsigned w = 0; w < CKS_PERM_MAX_THREADS; w++)
        ctx[w].fail = true;
    CHECK(cks_perm_test_curtailed(48, scratch_statistic, &ctx[0], 21, 999, 0, CKS_ALT_GREATER, &r, &d1) ==
          CKS_ERR_NUMERIC);
    CHECK(strstr(d1.text, "planted") != NULL);
    CHECK(cks_perm_test_curtailed_mt(48, scratch_statistic, cp, 4, 21, 999, 0, CKS_ALT_GREATER, &r, &d2) ==
          CKS_ERR_NUMERIC);
    CHECK(strcmp(d1.text, d2.text) == 0 && r.permutations == 0 && r.p_value == 0);
    CHECK(cks_perm_test_curtailed_mt(48, scratch_statistic, cp, 0, 21, 999, 0, CKS_ALT_GREATER, &r, NULL) ==
          CKS_ERR_INVALID_ARG);
    CHECK(cks_perm_threads() >= 1 && cks_perm_threads() <= CKS_PERM_MAX_THREADS);
}

/* Under the null the curtailed p is valid: P(p <= u) <= u (Besag & Clifford 1991), checked over
 * 4000 exchangeable data sets (the observed value is one more draw of the null). */
static void perm_test_curtailed_valid_under_null(void)
{
    static const double levels[] = {0.05, 0.1, 0.25, 0.5};
    size_t below[4] = {0}, runs = 4000, stopped = 0;
    cks_rng rng;
    cks_rng_seed(&rng, 2024);
    for (size_t run = 0; run < runs; run++) {
        double x[24], y[24];
        const double *px = x, *py = y;
        cks_perm_result r;
        for (size_t i = 0; i < 24; i++) {
            x[i] = cks_rng_normal(&rng);
            y[i] = cks_rng_normal(&rng);
        }
        CHECK(cks_joint_pearson_perm_test_curtailed(&px, &py, 1, 24, 500 + run, 199, 8, CKS_ALT_GREATER, &r, NULL) ==
              CKS_OK);
        stopped += r.curtailed;
        for (size_t l = 0; l < 4; l++)
            below[l] += r.p_value <= levels[l];
    }
    CHECK_MSG(stopped > runs / 2, "only %zu of %zu runs stopped early", stopped, runs);
    for (size_t l = 0; l < 4; l++) /* binomial sd at 4000 runs is <= 0.008: 3 sd of slack */
        CHECK_MSG((double)below[l] / (double)runs <= levels[l] + 0.024, "P(p <= %.2f) = %.3f", levels[l],
                  (double)below[l] / (double)runs);
}

/* Column norms of rotated vectors without rotating them: against rotating and summing squares. */
static void rotation_column_norms_match_rotating(void)
{
    static const size_t sizes[] = {50, 300, 4096};
    cks_rng rng;
    cks_rng_seed(&rng, 31);
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
        size_t n = sizes[s], count = 300;
        float *x = malloc(count * n * sizeof *x), *y = malloc(count * n * sizeof *y);
        double *ref = calloc(n, sizeof *ref), *got = malloc(n * sizeof *got), worst = 0;
        cks_rotation rot;
        CHECK(x && y && ref && got);
        if (!x || !y || !ref || !got)
            return;
        for (size_t i = 0; i < count * n; i++)
            x[i] = (float)cks_rng_normal(&rng);
        memcpy(y, x, count * n * sizeof *y);
        CHECK(cks_rotation_draw(&rng, n, &rot, NULL) == CKS_OK);
        CHECK(cks_rotation_apply(&rot, y, count, NULL) == CKS_OK);
        for (size_t v = 0; v < count; v++)
            for (size_t j = 0; j < n; j++)
                ref[j] += (double)y[v * n + j] * y[v * n + j];
        CHECK(cks_rotation_column_norms2(&rot, x, count, got, NULL) == CKS_OK);
        for (size_t j = 0; j < n; j++)
            worst = fmax(worst, fabs(got[j] - ref[j]) / ref[j]);
        CHECK_MSG(worst < 1e-4, "n = %zu: column norms off by %g (relative)", n, worst);
        cks_rotation_release(&rot);
        free(x);
        free(y);
        free(ref);
        free(got);
    }
}

TEST_MAIN(T(rng_matches_python_reference), T(orthogonal_matrices_are_haar), T(rotation_keeps_geometry_and_mixes_coordinates),
          T(median_and_ranks_exact), T(mid_ranks_match_definition), T(median_and_quantile_match_sorted), T(rng_bounded_and_permutations_are_uniform),
          T(perm_test_counting_rules), T(perm_test_curtailed_matches_counting), T(perm_test_threads_match_serial),
          T(perm_test_curtailed_valid_under_null), T(rotation_column_norms_match_rotating), T(joint_pearson_null_moments), T(perm_p_values_uniform_under_null),
          T(joint_column_test_matches_brute_force),
          T(equality_null_exact), T(equality_null_bf16_against_shuffles), T(holm_correction),
          T(normal_tail_and_z))
