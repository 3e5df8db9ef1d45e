/*
 * ckptscope/stats.h — seeded randomness, permutation nulls, exact equality nulls, Holm.
 *
 * Reproducibility contract: every random quantity comes from cks_rng, xoshiro256** (Blackman
 * & Vigna 2018) seeded through splitmix64 from one 64-bit seed, and every result that used
 * randomness records that seed. The same seed on any machine gives the same permutations.
 *
 * Permutation p-values are p = (1 + b) / (T + 1), with b the number of the T random
 * permutations whose statistic is at least as extreme as the observed one (Phipson & Smyth
 * 2010: exact and never 0). "At least as extreme" tolerates a relative 1e-12 rounding
 * difference, so an identity-like permutation is counted (conservative, as scipy does).
 * Alternatives: GREATER (S_pi >= S), LESS (S_pi <= S), TWO_SIDED (|S_pi| >= |S|, meant for
 * statistics centred on 0 under the null, such as Pearson r).
 * A z-score is reported next to p with the null mean and sd it used; with few permutations
 * it is approximate and the p-value is what is exact.
 */
#ifndef CKPTSCOPE_STATS_H
#define CKPTSCOPE_STATS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ckptscope/dtype.h"
#include "ckptscope/error.h"

/* ---- PRNG ---- */

typedef struct cks_rng {
    uint64_t state[4];
    uint64_t seed; /* the seed it was started from, for reports */
} cks_rng;

void cks_rng_seed(cks_rng *rng, uint64_t seed);
uint64_t cks_rng_next(cks_rng *rng);
/* Uniform in [0, 1) with 53 random bits. */
double cks_rng_uniform(cks_rng *rng);
/* Uniform integer in [0, bound), without modulo bias (Lemire 2019); 0 when bound == 0. */
uint64_t cks_rng_below(cks_rng *rng, uint64_t bound);
/* Standard normal (Marsaglia polar method). */
double cks_rng_normal(cks_rng *rng);
/* perm = a uniformly random permutation of 0..n-1 (Fisher–Yates). */
void cks_rng_permutation(cks_rng *rng, uint32_t *perm, size_t n);

/*
 * q = an n x n orthogonal matrix drawn from the Haar (uniform) distribution on O(n),
 * row-major: Householder QR of a standard normal matrix with the signs of R's diagonal moved
 * into Q (Mezzadri 2007, "How to generate random matrices from the classical compact
 * groups", §5), so no direction is preferred. O(n^3) work: meant for n up to a few hundred
 * (compare's structure-preserving nulls build larger rotations as Kronecker products of
 * these). Allocates O(n). CKS_ERR_INVALID_ARG for n == 0 or n > 4096.
 */
cks_err cks_rng_orthogonal(cks_rng *rng, size_t n, double *q, cks_diag *diag);

/*
 * A random orthogonal change of basis of R^n that any n can afford: `rounds` rounds, each a
 * random permutation of the coordinates followed by a block-diagonal matrix of independent
 * Haar blocks of at most CKS_ROTATION_BLOCK coordinates. After two rounds every output
 * coordinate mixes up to CKS_ROTATION_BLOCK^2 = 4096 inputs from different blocks, so no
 * coordinate of the result lines up with one of the input (three rounds above 4096). It
 * keeps every inner product between the rotated vectors (the geometry) exactly, which is what
 * compare's structure-preserving nulls need: "the same geometry in an unrelated basis".
 * Not the Haar measure on O(n) (that costs O(n^3) per draw); what the nulls rely on is that
 * the basis it produces is unrelated to any fixed one.
 */
#define CKS_ROTATION_BLOCK 64u

typedef struct cks_rotation {
    size_t n, rounds, n_blocks;
    uint32_t *perm;   /* rounds x n */
    float *blocks;    /* rounds x n_blocks x BLOCK x BLOCK (row-major, only size x size used) */
    float *scratch;   /* for apply: one batch of vectors */
    size_t scratch_len;
} cks_rotation;

cks_err cks_rotation_draw(cks_rng *rng, size_t n, cks_rotation *out, cks_diag *diag);
/*
 * Rotate `count` vectors of length n stored contiguously (x[i*n .. i*n+n)) in place.
 * Allocates count * n floats of scratch once (kept in the rotation for the next call).
 */
cks_err cks_rotation_apply(cks_rotation *rot, float *x, size_t count, cks_diag *diag);
/*
 * colsq[j] = sum over the `count` vectors of x (row-major, count x n) of (x R)_j^2: the squared
 * column norms of the rotated vectors, without rotating them all the way. Every round but the
 * last is applied (in batches of 256 vectors), then the last round's blocks are read through
 * their Gram matrices: column j of block b is Z_b q_j (Z_b: the permuted block's inputs, q_j a
 * row of Q_b), so its squared norm is q_j^T (Z_b^T Z_b) q_j. Equal to rotating and summing
 * squares up to float rounding, for about a third of the arithmetic of T4a's old draw.
 */
cks_err cks_rotation_column_norms2(cks_rotation *rot, const float *x, size_t count, double *colsq, cks_diag *diag);
void cks_rotation_release(cks_rotation *rot);

/* ---- permutation tests ---- */

typedef enum cks_alternative {
    CKS_ALT_GREATER = 0,
    CKS_ALT_LESS,
    CKS_ALT_TWO_SIDED
} cks_alternative;

typedef struct cks_perm_result {
    double observed;
    uint64_t seed;
    uint32_t permutations;        /* T */
    uint32_t at_least_as_extreme; /* b */
    double p_value;               /* (1 + b) / (T + 1) */
    double null_mean, null_sd;    /* of the T permuted statistics (sd with T-1) */
    double z;                     /* (observed - null_mean) / null_sd; NAN when sd == 0 */
    cks_alternative alternative;
    uint32_t planned;             /* the T asked for (= permutations unless curtailed) */
    bool curtailed;               /* stopped early: p = b / T (Besag & Clifford 1991) */
} cks_perm_result;

/*
 * The statistic of the data with index i of the permuted side replaced by perm[i]
 * (perm == NULL: the observed, unpermuted data). A joint permutation is simply a callback
 * that applies the one perm to every vector of that side.
 */
typedef cks_err (*cks_perm_statistic)(void *ctx, const uint32_t *perm, size_t n, double *value,
                                      cks_diag *diag);

/*
 * Run a permutation test over indices 0..n-1 (n <= UINT32_MAX, T >= 1). Allocates O(n) and
 * O(T). Any error of the callback is returned as is; *out is zeroed on failure.
 */
cks_err cks_perm_test(size_t n, cks_perm_statistic statistic, void *ctx, uint64_t seed,
                      uint32_t permutations, cks_alternative alternative, cks_perm_result *out,
                      cks_diag *diag);

/*
 * The same test, curtailed (Besag & Clifford 1991, "Sequential Monte Carlo p-values"): the
 * draws stop as soon as stop_after of them are at least as extreme as the observed value
 * (0: never, the plain test). Stopped after L draws, p = stop_after / L, which is exactly
 * valid (P(p <= u) <= u under the null); otherwise p = (1 + b) / (T + 1) as above, from the
 * same draws in the same order. With stop_after = cks_perm_stop_after(alpha, T) a stop
 * implies that the full T draws would give p >= (stop_after + 1) / (T + 1) > alpha and that
 * the curtailed p = stop_after / L > alpha too: the decision at alpha (or at any smaller
 * Holm level) is the one the full test makes, for a fraction of the draws when the
 * observed value sits inside its null.
 */
cks_err cks_perm_test_curtailed(size_t n, cks_perm_statistic statistic, void *ctx, uint64_t seed,
                                uint32_t permutations, uint32_t stop_after, cks_alternative alternative,
                                cks_perm_result *out, cks_diag *diag);

/*
 * The same test with the statistic evaluated on up to n_ctx threads at once: ctxs[w] is the
 * context of evaluator w (its own scratch; whatever the contexts share is only read). The
 * permutations are drawn from the same generator in the same order and judged in that order,
 * so *out is cks_perm_test_curtailed's with ctxs[0], bit for bit, whatever the thread count
 * (fewer than 2 n_ctx draws past a stop are evaluated for nothing). Threads that cannot be
 * started are done without. n_ctx 1: the serial test.
 */
#define CKS_PERM_MAX_THREADS 16u
cks_err cks_perm_test_curtailed_mt(size_t n, cks_perm_statistic statistic, void *const *ctxs, unsigned n_ctx,
                                   uint64_t seed, uint32_t permutations, uint32_t stop_after,
                                   cks_alternative alternative, cks_perm_result *out, cks_diag *diag);

/* Evaluators for a threaded permutation test: one per CPU this process may run on (its
 * affinity mask: a Slurm job's or a container's cpuset, taskset), at most CKS_PERM_MAX_THREADS. */
unsigned cks_perm_threads(void);

/* max(ceil(alpha (T + 1)), CKS_PERM_MIN_STOP): ceil(alpha (T + 1)) is the smallest stop_after
 * that can never turn a rejection at alpha into a non-rejection; any larger one keeps that
 * guarantee (0 when alpha is not in (0, 1), or when the stop could never come before T). */
#define CKS_PERM_MIN_STOP 32u
uint32_t cks_perm_stop_after(double alpha, uint32_t permutations);

/*
 * The T2/T3 test of fingerprinting.md §3.2: statistic = mean over k vector pairs of Pearson
 * r(a_j, b_j), null = ONE permutation of the n coordinates applied to every b_j at once,
 * which keeps the dependence between the vectors of one model. Every vector must be finite
 * and non-constant (CKS_ERR_NUMERIC otherwise).
 */
cks_err cks_joint_pearson_perm_test(const double *const *a, const double *const *b, size_t k,
                                    size_t n, uint64_t seed, uint32_t permutations,
                                    cks_alternative alternative, cks_perm_result *out,
                                    cks_diag *diag);

/* The same, curtailed as cks_perm_test_curtailed (stop_after 0: the plain test). */
cks_err cks_joint_pearson_perm_test_curtailed(const double *const *a, const double *const *b, size_t k,
                                              size_t n, uint64_t seed, uint32_t permutations,
                                              uint32_t stop_after, cks_alternative alternative,
                                              cks_perm_result *out, cks_diag *diag);

/*
 * The same null for 2-D tensors (T3: k, v, router, ... in residual coordinates): statistic
 * = mean over k matrix pairs of the Pearson r of the flattened A_j and B_j (rows_j x n,
 * row-major, n = the residual dimension); null = ONE permutation of the n columns applied
 * to every B_j. Exact and cheap: with Z the centred, unit-norm matrices, r_j(pi) =
 * sum_i M_j[i][pi(i)] for the n x n cross matrix M_j = Za_j^T Zb_j, so M = mean_j M_j is
 * formed once (OpenBLAS dgemm, rows_j n^2 multiply-adds per pair) and each permutation
 * then costs O(n). Memory: 8 n^2 bytes for M (128 MiB at n = 4096) plus two standardised
 * copies of the largest pair; n <= 16384. Vectors are the case rows_j = 1.
 */
cks_err cks_joint_column_pearson_perm_test(const double *const *a, const double *const *b,
                                           const size_t *rows, size_t k, size_t n, uint64_t seed,
                                           uint32_t permutations, cks_alternative alternative,
                                           cks_perm_result *out, cks_diag *diag);

/* ---- exact null of the bitwise equality fraction ---- */

typedef struct cks_equality_null {
    uint64_t n;
    uint64_t equal;          /* observed bit-identical pairs */
    double observed_fraction;
    double expected_fraction; /* sum_v cA(v) cB(v) / n^2: the same under independent draws
                                 from the two histograms and under a uniform shuffle of B */
    double null_sd;           /* exact sd of the fraction under the uniform shuffle of B */
    double z;                 /* NAN when null_sd == 0 (e.g. constant tensors) */
    uint64_t distinct_a, distinct_b; /* low counts mark low-information tensors */
} cks_equality_null;

/*
 * From the raw encodings of two same-dtype tensors of n elements (any decodable dtype; the
 * histograms are of bit patterns). Allocates O(n) for 32/64-bit types, 1 MiB for 16-bit.
 */
cks_err cks_equality_null_compute(cks_dtype dtype, const void *a, const void *b, size_t n,
                                  cks_equality_null *out, cks_diag *diag);

/*
 * The same from value histograms gathered while streaming: counts_a[v] and counts_b[v] are
 * the numbers of elements with value (bit pattern) v in each tensor, over n_values values
 * (e.g. a 65536-entry table per side for BF16, filled chunk by chunk); `equal` is the
 * observed number of bit-identical positions (cks_bits_acc.equal). Both histograms must
 * sum to the same n > 0 (CKS_ERR_INVALID_ARG otherwise).
 */
cks_err cks_equality_null_from_counts(const uint64_t *counts_a, const uint64_t *counts_b,
                                      size_t n_values, uint64_t equal, cks_equality_null *out,
                                      cks_diag *diag);

/* ---- small helpers ---- */

/* (x - mean) / sd; NAN when sd <= 0 or not finite. */
double cks_zscore(double x, double mean, double sd);
/* The median of v[0..n) (mean of the two middle values for even n); reorders v. NAN for n == 0. */
double cks_median_inplace(double *v, size_t n);
/* The q-quantile of v[0..n), 0 <= q <= 1, linear between order statistics (numpy's default,
 * Hyndman & Fan type 7; q = 0.5 is the median); reorders v. NAN for n == 0. */
double cks_quantile_inplace(double *v, size_t n, double q);
/* Upper tail of the standard normal, P(Z > z), accurate in the far tail (erfc). */
double cks_normal_sf(double z);

/*
 * Holm–Bonferroni adjusted p-values: adjusted[i] <= alpha exactly when Holm's step-down
 * procedure at family-wise level alpha rejects hypothesis i. Order of the input is kept.
 * CKS_ERR_INVALID_ARG for k == 0 or a p outside [0, 1] (NaN included).
 */
cks_err cks_holm(const double *p, size_t k, double *adjusted, cks_diag *diag);

#endif
