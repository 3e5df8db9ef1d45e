/*
 * ckptscope/metrics.h — streaming similarity statistics between two tensors.
 *
 * Everything here streams: feed any number of chunks (raw safetensors bytes of any decodable
 * dtype, or already decoded doubles), in order or not, and merge accumulators filled by
 * different threads; nothing holds a whole tensor. Accumulation is in double precision:
 * each block of a few thousand elements gets centred sums (two-pass, or one pass shifted by
 * the block's first value in the BF16 SIMD kernel), and blocks are merged by the pairwise
 * Welford/Chan update (Chan, Golub & LeVeque 1979), so a near-constant vector (norm gains
 * around 1.0) keeps its precision (agreement with a long-double reference: ~1e-13).
 *
 * Contract for non-finite values: a pair where either element is NaN or ±inf is left out
 * of every similarity and counted (skipped_pairs, and per side in nonfinite_a/_b); it is
 * never propagated into a cosine or a correlation. Statistics that are undefined (zero norm,
 * zero variance, no pairs) are NAN and their *_defined flag is false — callers must check it.
 *
 * Statistics (population formulas over the n finite pairs; std uses n-1):
 *   cosine        a.b / (|a| |b|)             raw cosine: NOT evidence for positive-offset
 *                                             vectors such as norm gains (fingerprinting §3.2)
 *   pearson       centred cosine = Pearson r
 *   rel_l2_over_a |a-b| / |a|,  rel_l2_over_b  |a-b| / |b|   (the two directions, named)
 *   max_abs_diff  max |a_i - b_i|
 * Bitwise statistics work on the raw encodings of one dtype (cks_bits_acc): the fraction of
 * bit-identical elements and a histogram of ULP distances (distance between the elements'
 * positions in the ordered list of representable values; +0 and -0 are 0 ULP apart but not
 * bit-identical; pairs involving NaN go to their own count).
 */
#ifndef CKPTSCOPE_METRICS_H
#define CKPTSCOPE_METRICS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ckptscope/decode.h"
#include "ckptscope/dtype.h"
#include "ckptscope/error.h"

/* ---- one vector: count, mean, variance (for per-layer std curves) ---- */

typedef struct cks_moments {
    uint64_t n;            /* finite values seen */
    double mean;
    double m2;             /* sum of squared deviations from the mean */
    cks_nonfinite skipped; /* non-finite values left out */
} cks_moments;

void cks_moments_init(cks_moments *m);
/* Raw element bytes of `dtype` (see decode.h). */
cks_err cks_moments_add(cks_moments *m, cks_dtype dtype, const void *src, size_t count,
                        cks_diag *diag);
void cks_moments_add_f64(cks_moments *m, const double *x, size_t count);
void cks_moments_merge(cks_moments *into, const cks_moments *other);
/* Standard deviation with `ddof` (0: population, 1: sample); NAN when n <= ddof. */
double cks_moments_std(const cks_moments *m, unsigned ddof);

/* ---- two vectors of equal length, element i paired with element i ---- */

typedef struct cks_pair_acc {
    uint64_t n;             /* pairs with both elements finite */
    uint64_t skipped_pairs; /* pairs with a non-finite element on either side */
    cks_nonfinite nonfinite_a, nonfinite_b;
    double mean_a, mean_b;
    double m2_a, m2_b;      /* centred sums of squares */
    double comoment;        /* centred sum of products */
    double sumsq_diff;      /* sum (a-b)^2, accumulated directly so equal inputs give 0 */
    double max_abs_diff;
} cks_pair_acc;

typedef struct cks_pair_stats {
    uint64_t n;
    uint64_t skipped_pairs;
    cks_nonfinite nonfinite_a, nonfinite_b;
    double mean_a, mean_b, std_a, std_b; /* std with n-1 */
    double cosine;
    double pearson;
    double rel_l2_over_a, rel_l2_over_b;
    double max_abs_diff;
    bool cosine_defined, pearson_defined, rel_l2_over_a_defined, rel_l2_over_b_defined;
} cks_pair_stats;

void cks_pair_acc_init(cks_pair_acc *acc);
/*
 * Chunks of raw element bytes; the two sides may have different dtypes. BF16 x BF16 runs a
 * one-pass SIMD kernel (AVX-512F or AVX2+FMA, chosen at run time). A chunk of >= 4M pairs
 * is split over worker threads (see cks_metrics_set_threads) and merged in order, so a
 * given thread count always gives the same bits; different counts agree to rounding.
 */
cks_err cks_pair_acc_add(cks_pair_acc *acc, cks_dtype dtype_a, const void *a, cks_dtype dtype_b,
                         const void *b, size_t count, cks_diag *diag);
#define CKS_METRICS_MAX_THREADS 16
/* Worker threads for large chunks; 0 (the default) means one per online CPU. Set it before
 * starting concurrent work: it is a process-wide setting, not synchronised. */
void cks_metrics_set_threads(unsigned threads);
/* Which BF16 kernel to use (for tests and benchmarks); a request above what the CPU has
 * falls back to the best available. Process-wide, like the thread count. */
typedef enum cks_metrics_isa {
    CKS_ISA_AUTO = 0,
    CKS_ISA_GENERIC,
    CKS_ISA_AVX2,
    CKS_ISA_AVX512
} cks_metrics_isa;
void cks_metrics_set_isa(cks_metrics_isa isa);
void cks_pair_acc_add_f64(cks_pair_acc *acc, const double *a, const double *b, size_t count);
void cks_pair_acc_merge(cks_pair_acc *into, const cks_pair_acc *other);
void cks_pair_acc_result(const cks_pair_acc *acc, cks_pair_stats *out);

/*
 * Whole-vector convenience: Pearson r of n finite doubles. CKS_ERR_NUMERIC when a value is
 * not finite or a side has zero variance; *r is then NAN.
 */
cks_err cks_pearson_f64(const double *a, const double *b, size_t n, double *r, cks_diag *diag);

/*
 * Spearman rank correlation (Pearson of mid-ranks, ties get their average rank). Needs the
 * whole vectors (ranks are global). Allocates O(n). CKS_ERR_NUMERIC for non-finite input or
 * a constant side, CKS_ERR_INVALID_ARG for n < 2.
 */
cks_err cks_spearman_f64(const double *a, const double *b, size_t n, double *rho, cks_diag *diag);

/*
 * Mid-ranks of x (1-based; ties share the mean of their positions) into rank[0..n). The
 * rank transform behind every statistic that a few extreme coordinates must not carry
 * (compare's norm-gain and adapter tests). Allocates O(n). CKS_ERR_NUMERIC for a value that is
 * not finite.
 */
cks_err cks_mid_ranks_f64(const double *x, size_t n, double *rank, cks_diag *diag);

/* ---- bitwise comparison of two encodings of one dtype ---- */

/*
 * ULP histogram buckets: [0] distance 0; [k] for 1 <= k <= 64: distance in [2^(k-1), 2^k).
 * Integer dtypes use the integer difference; BOOL compares bytes as 0/1.
 */
#define CKS_ULP_BUCKETS 65

typedef struct cks_bits_acc {
    cks_dtype dtype;
    uint64_t n;         /* element pairs seen */
    uint64_t equal;     /* bit-identical pairs (NaN == NaN when their bits agree) */
    uint64_t nan_pairs; /* pairs where either side is NaN: not in ulp_hist */
    uint64_t ulp_hist[CKS_ULP_BUCKETS];
} cks_bits_acc;

/* CKS_ERR_UNSUPPORTED for a dtype decode.h cannot decode. */
cks_err cks_bits_acc_init(cks_bits_acc *acc, cks_dtype dtype, cks_diag *diag);
cks_err cks_bits_acc_add(cks_bits_acc *acc, const void *a, const void *b, size_t count,
                         cks_diag *diag);
/* CKS_ERR_INVALID_ARG when the dtypes differ. */
cks_err cks_bits_acc_merge(cks_bits_acc *into, const cks_bits_acc *other, cks_diag *diag);
/* equal / n; NAN when n == 0. */
double cks_bits_equal_fraction(const cks_bits_acc *acc);
/* The ULP distance of two encodings (exposed for tests and reports); false for NaN pairs. */
bool cks_ulp_distance(cks_dtype dtype, uint64_t bits_a, uint64_t bits_b, uint64_t *distance);

#endif
