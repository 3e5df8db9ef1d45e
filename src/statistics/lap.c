/*
 * Rectangular shortest augmenting path assignment, written from the description in
 * Crouse (2016), IEEE Trans. Aerospace and Electronic Systems 52(4), Algorithm 1 and §III:
 * for each unassigned row, grow a Dijkstra tree over columns with reduced costs
 * c[i][j] - u[i] - v[j] until an unassigned column is reached, update the duals of the
 * scanned rows and columns, and flip the alternating path.
 */
#include "ckptscope/lap.h"

#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

typedef struct lap_work {
    double *u, *v, *shortest;
    int32_t *path, *row4col, *col4row, *remaining, *scanned_rows, *scanned_cols;
} lap_work;

static void lap_work_release(lap_work *w)
{
    free(w->u);
    free(w->v);
    free(w->shortest);
    free(w->path);
    free(w->row4col);
    free(w->col4row);
    free(w->remaining);
    free(w->scanned_rows);
    free(w->scanned_cols);
    memset(w, 0, sizeof *w);
}

static bool lap_work_init(lap_work *w, size_t rows, size_t cols)
{
    memset(w, 0, sizeof *w);
    w->u = calloc(rows, sizeof *w->u);
    w->v = calloc(cols, sizeof *w->v);
    w->shortest = malloc(cols * sizeof *w->shortest);
    w->path = malloc(cols * sizeof *w->path);
    w->row4col = malloc(cols * sizeof *w->row4col);
    w->col4row = malloc(rows * sizeof *w->col4row);
    w->remaining = malloc(cols * sizeof *w->remaining);
    w->scanned_rows = malloc(rows * sizeof *w->scanned_rows);
    w->scanned_cols = malloc(cols * sizeof *w->scanned_cols);
    if (!w->u || !w->v || !w->shortest || !w->path || !w->row4col || !w->col4row ||
        !w->remaining || !w->scanned_rows || !w->scanned_cols) {
        lap_work_release(w);
        return false;
    }
    for (size_t j = 0; j < cols; j++)
        w->row4col[j] = -1;
    for (size_t i = 0; i < rows; i++)
        w->col4row[i] = -1;
    return true;
}

/*
 * rows <= cols. Fills w->col4row. Returns false only if no augmenting path exists, which
 * cannot happen for finite costs (kept as a guard against a broken invariant).
 */
static bool solve_wide(const double *cost, size_t rows, size_t cols, lap_work *w)
{
    double *u = w->u, *v = w->v, *shortest = w->shortest;
    int32_t *path = w->path, *row4col = w->row4col, *col4row = w->col4row;
    int32_t *remaining = w->remaining;
    for (size_t cur = 0; cur < rows; cur++) {
        size_t n_remaining = cols, n_rows = 0, n_cols = 0;
        for (size_t j = 0; j < cols; j++) {
            shortest[j] = INFINITY;
            /* scanning columns from the end first favours unassigned ones on ties */
            remaining[j] = (int32_t)(cols - 1 - j);
        }
        double min_val = 0;
        int32_t i = (int32_t)cur, sink = -1;
        while (sink < 0) {
            w->scanned_rows[n_rows++] = i;
            const double *row = cost + (size_t)i * cols;
            double base = min_val - u[i];
            double lowest = INFINITY;
            size_t lowest_at = 0;
            bool found = false;
            for (size_t it = 0; it < n_remaining; it++) {
                int32_t j = remaining[it];
                double reduced = base + row[j] - v[j];
                if (reduced < shortest[j]) {
                    path[j] = i;
                    shortest[j] = reduced;
                }
                if (shortest[j] < lowest || (shortest[j] == lowest && row4col[j] < 0)) {
                    lowest = shortest[j];
                    lowest_at = it;
                    found = true;
                }
            }
            if (!found || !isfinite(lowest))
                return false;
            min_val = lowest;
            int32_t j = remaining[lowest_at];
            if (row4col[j] < 0)
                sink = j;
            else
                i = row4col[j];
            w->scanned_cols[n_cols++] = j;
            remaining[lowest_at] = remaining[--n_remaining];
        }
        /* dual update keeps every reduced cost >= 0 and the tree edges tight */
        u[cur] += min_val;
        for (size_t k = 1; k < n_rows; k++) {
            int32_t r = w->scanned_rows[k];
            u[r] += min_val - shortest[col4row[r]];
        }
        for (size_t k = 0; k < n_cols; k++) {
            int32_t c = w->scanned_cols[k];
            v[c] -= min_val - shortest[c];
        }
        /* flip the alternating path back to the starting row */
        for (int32_t j = sink;;) {
            int32_t r = path[j];
            row4col[j] = r;
            int32_t previous = col4row[r];
            col4row[r] = j;
            j = previous;
            if (r == (int32_t)cur)
                break;
        }
    }
    return true;
}

/* The matrix is either doubles (m) or floats read as their magnitude (mf). */
static double matrix_value(const double *m, const float *mf, size_t k)
{
    return m ? m[k] : fabs((double)mf[k]);
}

static cks_err check_matrix(const double *m, const float *mf, size_t rows, size_t cols, const void *out,
                            cks_diag *diag)
{
    cks_err err = CKS_OK;
    if ((!m && !mf) || !out || rows == 0 || cols == 0) {
        err = cks_fail(diag, CKS_ERR_INVALID_ARG, "assignment needs a non-empty matrix and an output");
        goto out;
    }
    if (rows > CKS_LAP_MAX_DIM || cols > CKS_LAP_MAX_DIM || rows > SIZE_MAX / sizeof(double) / cols) {
        err = cks_fail(diag, CKS_ERR_INVALID_ARG, "assignment matrix %zu x %zu is too large", rows, cols);
        goto out;
    }
    for (size_t k = 0; k < rows * cols; k++) {
        if (!isfinite(matrix_value(m, mf, k))) {
            err = cks_fail(diag, CKS_ERR_NUMERIC, "assignment cost [%zu][%zu] is not finite",
                           k / cols, k % cols);
            goto out;
        }
    }
out:
    return err;
}

/*
 * sign = +1 minimises cost, -1 maximises it. The matrix is `matrix` (doubles) or, when that
 * is NULL, the magnitudes of `fmatrix` (floats): reading |sim| straight into the solver's own
 * copy saves a second rows x cols double matrix (128 MiB at 4096 x 4096).
 */
static cks_err solve_signed(const double *matrix, const float *fmatrix, size_t rows, size_t cols, double sign,
                            int32_t *row_to_col, double *total, cks_diag *diag)
{
    double *work_cost = NULL;
    lap_work w;
    bool have_work = false;
    bool transposed = rows > cols;
    size_t wide_rows = transposed ? cols : rows, wide_cols = transposed ? rows : cols;
    cks_err err = check_matrix(matrix, fmatrix, rows, cols, row_to_col, diag);
    if (err != CKS_OK)
        goto out;
    /* the solver wants rows <= cols and minimisation: copy once into that shape */
    work_cost = malloc(rows * cols * sizeof *work_cost);
    if (!work_cost) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "assignment of %zu x %zu", rows, cols);
        goto out;
    }
    for (size_t i = 0; i < rows; i++)
        for (size_t j = 0; j < cols; j++) {
            double c = sign * matrix_value(matrix, fmatrix, i * cols + j);
            if (transposed)
                work_cost[j * rows + i] = c;
            else
                work_cost[i * cols + j] = c;
        }
    if (!lap_work_init(&w, wide_rows, wide_cols)) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "assignment work arrays for %zu x %zu", rows, cols);
        goto out;
    }
    have_work = true;
    if (!solve_wide(work_cost, wide_rows, wide_cols, &w)) {
        err = cks_fail(diag, CKS_ERR_NUMERIC, "assignment found no augmenting path");
        goto out;
    }
    if (transposed) {
        for (size_t i = 0; i < rows; i++)
            row_to_col[i] = -1;
        for (size_t c = 0; c < cols; c++)
            row_to_col[w.col4row[c]] = (int32_t)c;
    } else {
        memcpy(row_to_col, w.col4row, rows * sizeof *row_to_col);
    }
    if (total) {
        double sum = 0;
        for (size_t i = 0; i < rows; i++)
            if (row_to_col[i] >= 0)
                sum += matrix_value(matrix, fmatrix, i * cols + (size_t)row_to_col[i]);
        *total = sum;
    }
out:
    if (err != CKS_OK && row_to_col && rows <= CKS_LAP_MAX_DIM)
        for (size_t i = 0; i < rows; i++)
            row_to_col[i] = -1;
    if (have_work)
        lap_work_release(&w);
    free(work_cost);
    return err;
}

cks_err cks_lap_minimize(const double *cost, size_t rows, size_t cols, int32_t *row_to_col,
                         double *total_cost, cks_diag *diag)
{
    return solve_signed(cost, NULL, rows, cols, 1.0, row_to_col, total_cost, diag);
}

cks_err cks_lap_maximize(const double *score, size_t rows, size_t cols, int32_t *row_to_col,
                         double *total_score, cks_diag *diag)
{
    return solve_signed(score, NULL, rows, cols, -1.0, row_to_col, total_score, diag);
}

cks_err cks_lap_max_abs(const float *sim, size_t rows, size_t cols, int32_t *row_to_col,
                        int8_t *sign, double *total_abs, cks_diag *diag)
{
    cks_err err = CKS_OK;
    if (!sim || !sign || rows == 0 || cols == 0 || rows > CKS_LAP_MAX_DIM || cols > CKS_LAP_MAX_DIM) {
        err = cks_fail(diag, CKS_ERR_INVALID_ARG, "|cos| assignment needs a non-empty matrix and outputs");
        goto out;
    }
    if (rows > SIZE_MAX / sizeof(double) / cols) {
        err = cks_fail(diag, CKS_ERR_INVALID_ARG, "|cos| assignment %zu x %zu is too large", rows, cols);
        goto out;
    }
    if ((err = solve_signed(NULL, sim, rows, cols, -1.0, row_to_col, total_abs, diag)) != CKS_OK)
        goto out;
    for (size_t i = 0; i < rows; i++)
        sign[i] = row_to_col[i] < 0 ? 0 : (sim[i * cols + (size_t)row_to_col[i]] < 0 ? -1 : 1);
out:
    if (err != CKS_OK && sign && rows <= CKS_LAP_MAX_DIM)
        memset(sign, 0, rows);
    return err;
}
