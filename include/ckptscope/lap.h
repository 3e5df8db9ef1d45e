/*
 * ckptscope/lap.h — exact rectangular linear assignment.
 *
 * Solves min sum_i cost[i][col(i)] over injective maps from the smaller side into the larger
 * one (every row assigned when rows <= cols, every column when rows > cols), by the
 * shortest-augmenting-path method of Jonker & Volgenant (1987) in the rectangular form
 * described by Crouse (2016, "On implementing 2D rectangular assignment algorithms"), the
 * algorithm behind scipy.optimize.linear_sum_assignment: one Dijkstra search with reduced
 * costs per row, dual variables kept feasible, O(rows^2 cols) worst case, exact for finite
 * costs. Matrices are row-major; a 4096 x 4096 double matrix is 128 MiB and solves in
 * seconds.
 *
 * Output: row_to_col[i] is the column of row i, or -1 for a row left out (only when
 * rows > cols). Sizes are bounded by CKS_LAP_MAX_DIM per side. Non-finite costs are
 * rejected (CKS_ERR_NUMERIC): an assignment over NaN would be meaningless.
 */
#ifndef CKPTSCOPE_LAP_H
#define CKPTSCOPE_LAP_H

#include <stddef.h>
#include <stdint.h>

#include "ckptscope/error.h"

#define CKS_LAP_MAX_DIM (1u << 20)

/* Minimise total cost. total_cost may be NULL. */
cks_err cks_lap_minimize(const double *cost, size_t rows, size_t cols, int32_t *row_to_col,
                         double *total_cost, cks_diag *diag);

/* Maximise total score (the same problem with the costs negated). */
cks_err cks_lap_maximize(const double *score, size_t rows, size_t cols, int32_t *row_to_col,
                         double *total_score, cks_diag *diag);

/*
 * The AWM alignment step (fingerprinting.md §3.7): maximise sum |sim[i][col(i)]| over a
 * similarity matrix (e.g. cosines between hidden-dimension columns) and record the sign of
 * each matched entry in sign[i] (+1 or -1; 0 for an unassigned row). total_abs may be NULL.
 */
cks_err cks_lap_max_abs(const float *sim, size_t rows, size_t cols, int32_t *row_to_col,
                        int8_t *sign, double *total_abs, cks_diag *diag);

#endif
