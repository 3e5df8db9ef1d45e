/*
 * ckptscope/cka.h — linear centred kernel alignment (CKA), biased and debiased.
 *
 * Inputs are row-major float32 matrices X (n x p1) and Y (n x p2) whose ROWS ARE SAMPLES
 * that correspond between the two sides (for weights: the residual/hidden dimensions after
 * alignment, fingerprinting.md §4.5); the feature counts may differ.
 *
 *   biased CKA   = HSIC0(K,L) / sqrt(HSIC0(K,K) HSIC0(L,L)), K = XX^T, L = YY^T
 *                  (Kornblith et al. 2019) = |Xc^T Yc|_F^2 / (|Xc^T Xc|_F |Yc^T Yc|_F).
 *                  Has a large positive floor for independent data when features are many:
 *                  about sqrt(p1 p2 / ((n+p1)(n+p2))). Reported for contrast only.
 *   debiased CKA = the same ratio of unbiased HSIC estimates (Song et al. 2012):
 *     HSIC1(K,L) = [tr(K~L~) + (1'K~1)(1'L~1)/((n-1)(n-2)) - 2/(n-2) 1'K~L~1] / (n(n-3)),
 *     K~, L~ = K, L with zero diagonals. About 0 for independent data; may be slightly < 0.
 *
 * Everything is computed in feature space, never with n x n Grams (§4.2): with column-
 * centred Xc, Yc (HSIC1 is exactly invariant to centring the features, HSIC0 needs it),
 * d_i = |xc_i|^2, e_i = |yc_i|^2, it holds that K~1 = -d, so
 *   tr(K~L~) = |Xc^T Yc|_F^2 - sum d_i e_i,  1'K~1 = -sum d,  1'K~L~1 = sum d_i e_i.
 * The three products Xc^T Xc (ssyrk), Yc^T Yc (ssyrk) and Xc^T Yc (sgemm) come from
 * OpenBLAS in float32; every reduction after them is in double.
 *
 * Bounds: n >= 4 (the unbiased estimator needs it), n, p1, p2 <= 2^24 and n*p within size_t.
 * Non-finite inputs are rejected (CKS_ERR_NUMERIC). A statistic whose self-similarity is
 * not positive (a constant side) is NAN with its _defined flag false.
 */
#ifndef CKPTSCOPE_CKA_H
#define CKPTSCOPE_CKA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ckptscope/error.h"
#include "ckptscope/stats.h"

#define CKS_CKA_MAX_DIM (1u << 24)

typedef struct cks_cka_result {
    double biased;
    double debiased;
    bool biased_defined, debiased_defined;
    double hsic1_xy, hsic1_xx, hsic1_yy; /* the unbiased HSIC estimates themselves */
} cks_cka_result;

cks_err cks_cka_linear(const float *x, size_t n, size_t p1, const float *y, size_t p2,
                       cks_cka_result *out, cks_diag *diag);

/*
 * Permutation null of debiased CKA: the n sample rows of Y are permuted (one permutation
 * per draw, seeded, recorded in out->seed), which breaks the sample correspondence and
 * nothing else. Alternative GREATER; p = (1+b)/(T+1). Each draw costs one sgemm.
 */
cks_err cks_cka_perm_test(const float *x, size_t n, size_t p1, const float *y, size_t p2,
                          uint64_t seed, uint32_t permutations, cks_perm_result *out,
                          cks_diag *diag);

#endif
