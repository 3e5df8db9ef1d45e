/*
 * Linear assignment against brute force (every injective map on small matrices, ties
 * included, both orientations) and against scipy.optimize.linear_sum_assignment on larger
 * ones (same optimum; same assignment when the optimum is unique).
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "check.h"
#include "ckptscope/lap.h"
#include "ckptscope/stats.h"
#include "ref/pyref.h"

static bool sanitized(void)
{
    const char *s = getenv("CKS_SANITIZED");
    return s && strcmp(s, "1") == 0;
}

/* Minimum over all injective maps of the smaller side into the larger (recursive search). */
static void brute_min(const double *cost, int rows, int cols, int row, bool *used, double acc, double *best)
{
    bool transposed = rows > cols;
    int small = transposed ? cols : rows, large = transposed ? rows : cols;
    if (row == small) {
        if (acc < *best)
            *best = acc;
        return;
    }
    for (int k = 0; k < large; k++) {
        if (used[k])
            continue;
        used[k] = true;
        double c = transposed ? cost[k * cols + row] : cost[row * cols + k];
        brute_min(cost, rows, cols, row + 1, used, acc + c, best);
        used[k] = false;
    }
}

static void against_brute_force(void)
{
    cks_rng rng;
    cks_rng_seed(&rng, 31);
    for (int trial = 0; trial < 300; trial++) {
        int rows = 1 + (int)cks_rng_below(&rng, 6), cols = 1 + (int)cks_rng_below(&rng, 6);
        double cost[36];
        bool integer = trial % 2; /* small integers make many ties */
        for (int k = 0; k < rows * cols; k++)
            cost[k] = integer ? (double)cks_rng_below(&rng, 4) : cks_rng_normal(&rng);
        int32_t assign[6];
        double total = 0, best = INFINITY;
        bool used[6] = {false};
        brute_min(cost, rows, cols, 0, used, 0, &best);
        CHECK(cks_lap_minimize(cost, rows, cols, assign, &total, NULL) == CKS_OK);
        CHECK_NEAR(total, best, 1e-12);
        /* the assignment is a valid injective map of the smaller side, and it costs `total` */
        bool taken[6] = {false};
        int assigned = 0;
        double recomputed = 0;
        for (int i = 0; i < rows; i++) {
            if (assign[i] < 0)
                continue;
            CHECK(assign[i] < cols && !taken[assign[i]]);
            if (assign[i] >= cols)
                continue;
            taken[assign[i]] = true;
            assigned++;
            recomputed += cost[i * cols + assign[i]];
        }
        CHECK(assigned == (rows < cols ? rows : cols));
        CHECK_NEAR(recomputed, total, 1e-12);
        /* maximisation is minimisation of the negated scores */
        double neg[36], best_max = INFINITY, total_max = 0;
        for (int k = 0; k < rows * cols; k++)
            neg[k] = -cost[k];
        bool used2[6] = {false};
        brute_min(neg, rows, cols, 0, used2, 0, &best_max);
        CHECK(cks_lap_maximize(cost, rows, cols, assign, &total_max, NULL) == CKS_OK);
        CHECK_NEAR(total_max, -best_max, 1e-12);
    }
}

static void against_scipy(void)
{
    if (!pyref_available())
        SKIP("/usr/bin/python3 with numpy/scipy not available for the reference");
    static const size_t shapes[][2] = {{300, 500}, {500, 300}, {700, 700}, {40, 41}, {1500, 1500}};
    cks_rng rng;
    cks_rng_seed(&rng, 8);
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        size_t rows = shapes[s][0], cols = shapes[s][1];
        if (sanitized() && rows * cols > 250000)
            continue; /* keep the sanitizer run short */
        double *cost = malloc(rows * cols * sizeof *cost);
        for (size_t k = 0; k < rows * cols; k++)
            cost[k] = s == 3 ? (double)cks_rng_below(&rng, 10) : cks_rng_uniform(&rng);
        if (s == 4) /* an AWM-like cost 1 - |cos| with a hidden matching under the noise */
            for (size_t i = 0; i < rows; i++)
                cost[i * cols + (i * 7919) % cols] = 0.002 * cks_rng_uniform(&rng);
        pyref_dir dir = {{0}};
        char shape[64];
        snprintf(shape, sizeof shape, "%zu %zu", rows, cols);
        CHECK(pyref_dir_make(&dir));
        CHECK(pyref_write_text(&dir, "shape.txt", shape));
        CHECK(pyref_write(&dir, "cost.f64", cost, rows * cols * sizeof *cost));
        CHECK(pyref_run(&dir, "lap"));
        int64_t *want = pyref_read(&dir, "assign.i64", NULL);
        double *want_total = pyref_read(&dir, "total.f64", NULL);
        int32_t *assign = malloc(rows * sizeof *assign);
        double total = 0;
        CHECK(cks_lap_minimize(cost, rows, cols, assign, &total, NULL) == CKS_OK);
        if (want && want_total) {
            CHECK_NEAR(total, *want_total, 1e-9 * fabs(*want_total) + 1e-12);
            if (s != 3) { /* continuous costs: the optimum is unique almost surely */
                size_t differ = 0;
                for (size_t i = 0; i < rows; i++)
                    differ += assign[i] != want[i];
                CHECK_MSG(differ == 0, "%zu x %zu: %zu rows assigned differently", rows, cols, differ);
            }
        }
        free(want);
        free(want_total);
        free(assign);
        free(cost);
        pyref_dir_remove(&dir);
    }
}

/* A hidden signed permutation plus noise is recovered with its signs. */
static void max_abs_recovers_signed_permutation(void)
{
    enum { N = 64, M = 80 };
    cks_rng rng;
    cks_rng_seed(&rng, 21);
    uint32_t hidden[M];
    cks_rng_permutation(&rng, hidden, M);
    static float sim[N * M];
    int8_t want_sign[N];
    for (size_t k = 0; k < N * M; k++)
        sim[k] = (float)(0.1 * cks_rng_normal(&rng));
    for (size_t i = 0; i < N; i++) {
        want_sign[i] = cks_rng_below(&rng, 2) ? 1 : -1;
        sim[i * M + hidden[i]] = (float)(want_sign[i] * (0.6 + 0.1 * cks_rng_uniform(&rng)));
    }
    int32_t assign[N];
    int8_t sign[N];
    double total = 0;
    CHECK(cks_lap_max_abs(sim, N, M, assign, sign, &total, NULL) == CKS_OK);
    size_t wrong = 0;
    double want_total = 0;
    for (size_t i = 0; i < N; i++) {
        wrong += assign[i] != (int32_t)hidden[i] || sign[i] != want_sign[i];
        want_total += fabs((double)sim[i * M + hidden[i]]);
    }
    CHECK(wrong == 0);
    CHECK_NEAR(total, want_total, 1e-9);
}

static void rejects_bad_input(void)
{
    double cost[4] = {1, 2, NAN, 4};
    int32_t assign[2] = {7, 7};
    cks_diag diag = {{0}};
    CHECK(cks_lap_minimize(cost, 2, 2, assign, NULL, &diag) == CKS_ERR_NUMERIC);
    CHECK(assign[0] == -1 && assign[1] == -1 && strstr(diag.text, "[1][0]") != NULL);
    CHECK(cks_lap_minimize(cost, 0, 2, assign, NULL, NULL) == CKS_ERR_INVALID_ARG);
    CHECK(cks_lap_minimize(NULL, 2, 2, assign, NULL, NULL) == CKS_ERR_INVALID_ARG);
    CHECK(cks_lap_minimize(cost, (size_t)CKS_LAP_MAX_DIM + 1, 1, assign, NULL, NULL) == CKS_ERR_INVALID_ARG);
    float sim[1] = {-0.5f};
    int8_t sign[1];
    CHECK(cks_lap_max_abs(sim, 1, 1, assign, sign, NULL, NULL) == CKS_OK && assign[0] == 0 && sign[0] == -1);
}

TEST_MAIN(T(against_brute_force), T(against_scipy), T(max_abs_recovers_signed_permutation), T(rejects_bad_input))
