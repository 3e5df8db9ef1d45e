/*
 * bench/metrics/bench_metrics.c — timings of the metric core, paired with baseline.py
 * (numpy/scipy on the very same input files) by bench/metrics/run.sh.
 *
 *   bench_metrics pearson DIR N   two BF16 vectors of N elements (written to DIR), the
 *                                  library's streaming Pearson, and a memcpy copy loop over
 *                                  the same number of bytes for the machine's bandwidth
 *   bench_metrics cka DIR N P     two N x P float32 matrices, debiased + biased linear CKA
 *   bench_metrics lap DIR N       an N x N uniform cost matrix, exact assignment
 * Each prints "key value" lines; times are the best of several runs (seconds, monotonic).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ckptscope/cka.h"
#include "ckptscope/lap.h"
#include "ckptscope/metrics.h"
#include "ckptscope/stats.h"

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static int write_file(const char *dir, const char *name, const void *data, size_t bytes)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (!f)
        return -1;
    size_t done = fwrite(data, 1, bytes, f);
    return fclose(f) == 0 && done == bytes ? 0 : -1;
}

static uint16_t bf16_of(double v)
{
    float f = (float)v;
    uint32_t u;
    memcpy(&u, &f, 4);
    return (uint16_t)(u >> 16); /* truncation is fine for synthetic data */
}

static int bench_pearson(const char *dir, size_t n)
{
    uint16_t *a = malloc(n * 2), *b = malloc(n * 2);
    char *copy_src = malloc(4 * n), *copy_dst = malloc(4 * n);
    if (!a || !b || !copy_src || !copy_dst)
        return 1;
    cks_rng rng;
    cks_rng_seed(&rng, 1);
    for (size_t i = 0; i < n; i++) {
        double x = 0.02 * cks_rng_normal(&rng);
        a[i] = bf16_of(x);
        b[i] = bf16_of(0.3 * x + 0.02 * cks_rng_normal(&rng));
    }
    if (write_file(dir, "a.bf16", a, n * 2) || write_file(dir, "b.bf16", b, n * 2))
        return 1;
    memset(copy_src, 1, 4 * n);
    memset(copy_dst, 0, 4 * n);
    double best_copy = 1e9, best_pearson = 1e9, best_single = 1e9;
    cks_pair_stats stats, single_stats;
    for (int rep = 0; rep < 7; rep++) {
        /* the copy moves as many bytes as the Pearson reads (2 x 2n), read + written */
        double t0 = now();
        memcpy(copy_dst, copy_src, 4 * n);
        double t1 = now();
        if (t1 - t0 < best_copy)
            best_copy = t1 - t0;
        for (unsigned threads = 0; threads <= 1; threads++) {
            cks_metrics_set_threads(threads); /* 0: one per CPU (the default), 1: one */
            cks_pair_acc acc;
            cks_pair_acc_init(&acc);
            t0 = now();
            if (cks_pair_acc_add(&acc, CKS_DTYPE_BF16, a, CKS_DTYPE_BF16, b, n, NULL) != CKS_OK)
                return 1;
            cks_pair_acc_result(&acc, threads ? &single_stats : &stats);
            t1 = now();
            double *best = threads ? &best_single : &best_pearson;
            if (t1 - t0 < *best)
                *best = t1 - t0;
        }
    }
    cks_metrics_set_threads(0);
    printf("n %zu\n", n);
    printf("pearson %.17g\n", stats.pearson);
    printf("pearson_seconds %.6f\n", best_pearson);
    printf("pearson_read_gbps %.3f\n", 4.0 * (double)n / best_pearson / 1e9);
    printf("pearson_1thread %.17g\n", single_stats.pearson);
    printf("pearson_1thread_seconds %.6f\n", best_single);
    printf("copy_seconds %.6f\n", best_copy);
    printf("copy_bytes %zu\n", 4 * n);
    /* a copy reads and writes every byte: count both, as STREAM's "Copy" does */
    printf("copy_gbps %.3f\n", 2.0 * 4.0 * (double)n / best_copy / 1e9);
    printf("copy_sink %d\n", copy_dst[n] + copy_dst[4 * n - 1]);
    free(a);
    free(b);
    free(copy_src);
    free(copy_dst);
    return 0;
}

static int bench_cka(const char *dir, size_t n, size_t p)
{
    float *x = malloc(n * p * sizeof *x), *y = malloc(n * p * sizeof *y);
    if (!x || !y)
        return 1;
    cks_rng rng;
    cks_rng_seed(&rng, 2);
    for (size_t k = 0; k < n * p; k++) {
        x[k] = (float)cks_rng_normal(&rng);
        y[k] = (float)(0.5 * x[k] + cks_rng_normal(&rng));
    }
    if (write_file(dir, "x.f32", x, n * p * 4) || write_file(dir, "y.f32", y, n * p * 4))
        return 1;
    double best = 1e9;
    cks_cka_result r;
    for (int rep = 0; rep < 5; rep++) {
        double t0 = now();
        if (cks_cka_linear(x, n, p, y, p, &r, NULL) != CKS_OK)
            return 1;
        double t1 = now();
        if (t1 - t0 < best)
            best = t1 - t0;
    }
    printf("n %zu\np %zu\n", n, p);
    printf("cka_debiased %.10f\ncka_biased %.10f\n", r.debiased, r.biased);
    printf("cka_seconds %.6f\n", best);
    free(x);
    free(y);
    return 0;
}

static int bench_lap(const char *dir, size_t n)
{
    double *cost = malloc(n * n * sizeof *cost);
    int32_t *assign = malloc(n * sizeof *assign);
    if (!cost || !assign)
        return 1;
    cks_rng rng;
    cks_rng_seed(&rng, 3);
    for (size_t k = 0; k < n * n; k++)
        cost[k] = cks_rng_uniform(&rng);
    if (write_file(dir, "cost.f64", cost, n * n * sizeof *cost))
        return 1;
    double best = 1e9, total = 0;
    for (int rep = 0; rep < 2; rep++) {
        double t0 = now();
        if (cks_lap_minimize(cost, n, n, assign, &total, NULL) != CKS_OK)
            return 1;
        double t1 = now();
        if (t1 - t0 < best)
            best = t1 - t0;
    }
    printf("n %zu\nlap_total %.12f\nlap_seconds %.6f\n", n, total, best);
    free(cost);
    free(assign);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc >= 4 && strcmp(argv[1], "pearson") == 0)
        return bench_pearson(argv[2], strtoull(argv[3], NULL, 10));
    if (argc >= 5 && strcmp(argv[1], "cka") == 0)
        return bench_cka(argv[2], strtoull(argv[3], NULL, 10), strtoull(argv[4], NULL, 10));
    if (argc >= 4 && strcmp(argv[1], "lap") == 0)
        return bench_lap(argv[2], strtoull(argv[3], NULL, 10));
    fprintf(stderr, "usage: bench_metrics pearson DIR N | cka DIR N P | lap DIR N\n");
    return 2;
}
