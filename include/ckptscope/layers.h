/*
 * ckptscope/layers.h — layer x layer similarity matrices: margins, monotone alignment,
 * assignment pairing, and per-layer std curves (fingerprinting.md §5 and §3.8).
 *
 * A similarity matrix S is row-major, rows = layers of model A, columns = layers of B,
 * S[i][j] = any statistic where larger means more similar (Pearson of norm gains, debiased
 * CKA, ...). All entries must be finite (CKS_ERR_NUMERIC otherwise). Sizes are bounded by
 * CKS_LAYERS_MAX_DIM per side (real models have at most a few hundred layers).
 *
 * These are DESCRIPTIVE statistics. The best cell of a row, a margin or a path score is
 * selected from many cells and has no null of its own; calibrate it with the joint
 * permutation null of the whole pipeline (stats.h) or with control model pairs.
 */
#ifndef CKPTSCOPE_LAYERS_H
#define CKPTSCOPE_LAYERS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ckptscope/error.h"

#define CKS_LAYERS_MAX_DIM 4096u

typedef enum cks_layer_axis {
    CKS_LAYER_ROWS = 0, /* for each layer of A, over the layers of B */
    CKS_LAYER_COLS      /* for each layer of B, over the layers of A */
} cks_layer_axis;

/*
 * S[i][j] = Pearson r(a_i, b_j) for la vectors of A and lb vectors of B, all of length n
 * (e.g. the norm gains of every layer): each vector is centred and scaled once, then S is
 * one matrix product (OpenBLAS dgemm). Non-finite or constant vectors: CKS_ERR_NUMERIC.
 * s holds la * lb doubles.
 */
cks_err cks_layer_pearson_matrix(const double *const *a, size_t la, const double *const *b,
                                 size_t lb, size_t n, double *s, cks_diag *diag);

/*
 * Per row (or column): best[k] = index of the largest entry (first on ties),
 * margin[k] = largest minus second largest (NAN when the line has one entry),
 * robust_z[k] = (largest - median) / MAD with MAD = median |S - median| (NAN when MAD = 0).
 * Any of the three outputs may be NULL. Output arrays hold rows (or cols) entries.
 */
cks_err cks_layer_margins(const double *s, size_t rows, size_t cols, cks_layer_axis axis,
                          int32_t *best, double *margin, double *robust_z, cks_diag *diag);

typedef struct cks_layer_pair {
    int32_t a; /* row: layer of A */
    int32_t b; /* column: layer of B */
} cks_layer_pair;

/*
 * Monotone alignment (Needleman–Wunsch style dynamic programming): choose pairs with both
 * a and b strictly increasing to maximise  sum S[a][b] - gap_penalty * (unpaired rows +
 * unpaired columns). gap_penalty >= 0; layers inserted or dropped in one model become gaps.
 * pairs needs room for min(rows, cols) entries; *n_pairs and *score are set on success.
 * Ties prefer pairing, then skipping a row, then skipping a column (deterministic).
 */
cks_err cks_layer_monotone_path(const double *s, size_t rows, size_t cols, double gap_penalty,
                                cks_layer_pair *pairs, size_t *n_pairs, double *score,
                                cks_diag *diag);

/* Unconstrained pairing by maximum-weight assignment (as AWM pairs layers); sorted by a. */
cks_err cks_layer_assignment(const double *s, size_t rows, size_t cols, cks_layer_pair *pairs,
                             size_t *n_pairs, double *score, cks_diag *diag);

typedef struct cks_path_summary {
    double path_mean;          /* mean of S over the path cells */
    double off_path_mean;      /* mean of every other cell (NAN if there is none) */
    double diagonal_dominance; /* path_mean - off_path_mean */
    double fraction_rows_best_on_path; /* of the paired rows, how many have their row best on the path */
    double median_row_margin;  /* over all rows with a defined margin (NAN if none) */
} cks_path_summary;

cks_err cks_layer_path_summary(const double *s, size_t rows, size_t cols,
                               const cks_layer_pair *pairs, size_t n_pairs,
                               cks_path_summary *out, cks_diag *diag);

/* out = S - row mean - column mean + grand mean (removes depth trends shared by both). */
cks_err cks_layer_double_centre(const double *s, size_t rows, size_t cols, double *out,
                                cks_diag *diag);

/* ---- per-layer std curves ---- */

#define CKS_STD_CURVE_MAX_DEGREE 5u

/*
 * residual = y minus its least-squares polynomial of `degree` in relative depth
 * x = i/(n-1) (computed by projecting on an orthonormalised polynomial basis, stable).
 * Needs n > degree and degree <= CKS_STD_CURVE_MAX_DEGREE.
 */
cks_err cks_std_curve_detrend(const double *y, size_t n, unsigned degree, double *residual,
                              cks_diag *diag);

/*
 * Correlation of two per-layer curves of possibly different depth: the shorter one is
 * linearly interpolated onto the longer one's relative depths (as LeaFBench does), both are
 * detrended with `degree`, and *r is the Pearson r of the residuals. Supporting evidence
 * only: depth trends are shared by independent models (fingerprinting.md §3.8).
 */
cks_err cks_std_curve_correlation(const double *a, size_t na, const double *b, size_t nb,
                                  unsigned degree, double *r, cks_diag *diag);

#endif
