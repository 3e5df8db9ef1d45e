/*
 * Layer-alignment helpers. The monotone path is the global sequence-alignment recurrence of
 * Needleman & Wunsch (1970) with a linear gap cost, on a similarity instead of a score table.
 */
#include "ckptscope/layers.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ckptscope/blas.h"
#include "ckptscope/lap.h"
#include "ckptscope/metrics.h"

static cks_err check_matrix(const double *s, size_t rows, size_t cols, cks_diag *diag)
{
    cks_err err = CKS_OK;
    if (!s || rows == 0 || cols == 0) {
        err = cks_fail(diag, CKS_ERR_INVALID_ARG, "layer matrix is empty");
        goto out;
    }
    if (rows > CKS_LAYERS_MAX_DIM || cols > CKS_LAYERS_MAX_DIM) {
        err = cks_fail(diag, CKS_ERR_INVALID_ARG, "layer matrix %zu x %zu exceeds %u per side",
                       rows, cols, CKS_LAYERS_MAX_DIM);
        goto out;
    }
    for (size_t k = 0; k < rows * cols; k++) {
        if (!isfinite(s[k])) {
            err = cks_fail(diag, CKS_ERR_NUMERIC, "layer similarity [%zu][%zu] is not finite",
                           k / cols, k % cols);
            goto out;
        }
    }
out:
    return err;
}

/* dst = (src - mean) / |src - mean| in double. */
static cks_err unit_centred(const double *src, size_t n, double *dst, const char *side, size_t which,
                            cks_diag *diag)
{
    double sum = 0, ss = 0;
    cks_err err = CKS_OK;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(src[i])) {
            err = cks_fail(diag, CKS_ERR_NUMERIC, "layer %s%zu: element %zu is not finite", side, which, i);
            goto out;
        }
        sum += src[i];
    }
    double mean = sum / (double)n;
    for (size_t i = 0; i < n; i++)
        ss += (src[i] - mean) * (src[i] - mean);
    if (!(ss > 0)) {
        err = cks_fail(diag, CKS_ERR_NUMERIC, "layer %s%zu is constant: Pearson undefined", side, which);
        goto out;
    }
    for (size_t i = 0; i < n; i++)
        dst[i] = (src[i] - mean) / sqrt(ss);
out:
    return err;
}

cks_err cks_layer_pearson_matrix(const double *const *a, size_t la, const double *const *b,
                                 size_t lb, size_t n, double *s, cks_diag *diag)
{
    double *za = NULL, *zb = NULL;
    cks_err err = CKS_OK;
    if (!a || !b || !s || la == 0 || lb == 0 || n < 2 || la > CKS_LAYERS_MAX_DIM ||
        lb > CKS_LAYERS_MAX_DIM || n > (size_t)INT32_MAX / CKS_LAYERS_MAX_DIM) {
        err = cks_fail(diag, CKS_ERR_INVALID_ARG,
                       "layer Pearson matrix needs 1..%u vectors per side of 2..%zu elements",
                       CKS_LAYERS_MAX_DIM, (size_t)INT32_MAX / CKS_LAYERS_MAX_DIM);
        goto out;
    }
    za = malloc(la * n * sizeof *za);
    zb = malloc(lb * n * sizeof *zb);
    if (!za || !zb) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "layer Pearson matrix %zu x %zu of length %zu", la, lb, n);
        goto out;
    }
    for (size_t i = 0; i < la; i++) {
        if (!a[i]) {
            err = cks_fail(diag, CKS_ERR_INVALID_ARG, "layer A%zu is NULL", i);
            goto out;
        }
        if ((err = unit_centred(a[i], n, za + i * n, "A", i, diag)) != CKS_OK)
            goto out;
    }
    for (size_t j = 0; j < lb; j++) {
        if (!b[j]) {
            err = cks_fail(diag, CKS_ERR_INVALID_ARG, "layer B%zu is NULL", j);
            goto out;
        }
        if ((err = unit_centred(b[j], n, zb + j * n, "B", j, diag)) != CKS_OK)
            goto out;
    }
    cks_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (blasint)la, (blasint)lb, (blasint)n, 1.0,
              za, (blasint)n, zb, (blasint)n, 0.0, s, (blasint)lb);
    for (size_t q = 0; q < la * lb; q++) /* rounding can leave |r| a hair above 1 */
        s[q] = fmax(-1.0, fmin(1.0, s[q]));
out:
    free(za);
    free(zb);
    return err;
}

static int compare_double(const void *x, const void *y)
{
    double p = *(const double *)x, q = *(const double *)y;
    return (p > q) - (p < q);
}

/* Median of len values (sorted in place). */
static double median_in_place(double *v, size_t len)
{
    qsort(v, len, sizeof *v, compare_double);
    return len % 2 ? v[len / 2] : 0.5 * (v[len / 2 - 1] + v[len / 2]);
}

cks_err cks_layer_margins(const double *s, size_t rows, size_t cols, cks_layer_axis axis,
                          int32_t *best, double *margin, double *robust_z, cks_diag *diag)
{
    double *line = NULL;
    cks_err err = check_matrix(s, rows, cols, diag);
    if (err != CKS_OK)
        goto out;
    if ((unsigned)axis > CKS_LAYER_COLS) {
        err = cks_fail(diag, CKS_ERR_INVALID_ARG, "unknown margin axis %d", (int)axis);
        goto out;
    }
    size_t lines = axis == CKS_LAYER_ROWS ? rows : cols, len = axis == CKS_LAYER_ROWS ? cols : rows;
    line = malloc(len * sizeof *line);
    if (!line) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "layer margins");
        goto out;
    }
    for (size_t k = 0; k < lines; k++) {
        for (size_t t = 0; t < len; t++)
            line[t] = axis == CKS_LAYER_ROWS ? s[k * cols + t] : s[t * cols + k];
        size_t top = 0;
        for (size_t t = 1; t < len; t++)
            if (line[t] > line[top])
                top = t;
        double second = -INFINITY;
        for (size_t t = 0; t < len; t++)
            if (t != top && line[t] > second)
                second = line[t];
        double top_value = line[top];
        if (best)
            best[k] = (int32_t)top;
        if (margin)
            margin[k] = len > 1 ? top_value - second : NAN;
        if (robust_z) {
            double median = median_in_place(line, len);
            for (size_t t = 0; t < len; t++)
                line[t] = fabs(line[t] - median);
            double mad = median_in_place(line, len);
            robust_z[k] = mad > 0 ? (top_value - median) / mad : NAN;
        }
    }
out:
    free(line);
    return err;
}

enum { FROM_DIAGONAL = 0, FROM_UP = 1, FROM_LEFT = 2 };

cks_err cks_layer_monotone_path(const double *s, size_t rows, size_t cols, double gap_penalty,
                                cks_layer_pair *pairs, size_t *n_pairs, double *score,
                                cks_diag *diag)
{
    double *f = NULL;
    uint8_t *from = NULL;
    cks_err err = check_matrix(s, rows, cols, diag);
    if (err != CKS_OK)
        goto out;
    if (!pairs || !n_pairs || !(gap_penalty >= 0) || !isfinite(gap_penalty)) {
        err = cks_fail(diag, CKS_ERR_INVALID_ARG, "monotone path needs outputs and a finite gap penalty >= 0");
        goto out;
    }
    size_t width = cols + 1;
    f = malloc((rows + 1) * width * sizeof *f);
    from = malloc((rows + 1) * width);
    if (!f || !from) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "monotone path table %zu x %zu", rows + 1, cols + 1);
        goto out;
    }
    for (size_t i = 0; i <= rows; i++) {
        for (size_t j = 0; j <= cols; j++) {
            double value;
            uint8_t step;
            if (i == 0 && j == 0) {
                value = 0;
                step = FROM_DIAGONAL;
            } else if (i == 0) {
                value = f[j - 1] - gap_penalty;
                step = FROM_LEFT;
            } else if (j == 0) {
                value = f[(i - 1) * width] - gap_penalty;
                step = FROM_UP;
            } else {
                value = f[(i - 1) * width + j - 1] + s[(i - 1) * cols + j - 1];
                step = FROM_DIAGONAL;
                double up = f[(i - 1) * width + j] - gap_penalty;
                double left = f[i * width + j - 1] - gap_penalty;
                if (up > value) {
                    value = up;
                    step = FROM_UP;
                }
                if (left > value) {
                    value = left;
                    step = FROM_LEFT;
                }
            }
            f[i * width + j] = value;
            from[i * width + j] = step;
        }
    }
    /* trace back from the corner, collecting pairs in reverse */
    size_t count = 0, i = rows, j = cols;
    while (i > 0 || j > 0) {
        uint8_t step = from[i * width + j];
        if (step == FROM_DIAGONAL) {
            pairs[count++] = (cks_layer_pair){(int32_t)(i - 1), (int32_t)(j - 1)};
            i--;
            j--;
        } else if (step == FROM_UP) {
            i--;
        } else {
            j--;
        }
    }
    for (size_t k = 0; k < count / 2; k++) {
        cks_layer_pair t = pairs[k];
        pairs[k] = pairs[count - 1 - k];
        pairs[count - 1 - k] = t;
    }
    *n_pairs = count;
    if (score)
        *score = f[rows * width + cols];
out:
    if (err != CKS_OK && n_pairs)
        *n_pairs = 0;
    free(f);
    free(from);
    return err;
}

cks_err cks_layer_assignment(const double *s, size_t rows, size_t cols, cks_layer_pair *pairs,
                             size_t *n_pairs, double *score, cks_diag *diag)
{
    int32_t *row_to_col = NULL;
    cks_err err = check_matrix(s, rows, cols, diag);
    if (err != CKS_OK)
        goto out;
    if (!pairs || !n_pairs) {
        err = cks_fail(diag, CKS_ERR_INVALID_ARG, "layer assignment needs outputs");
        goto out;
    }
    row_to_col = malloc(rows * sizeof *row_to_col);
    if (!row_to_col) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "layer assignment");
        goto out;
    }
    if ((err = cks_lap_maximize(s, rows, cols, row_to_col, score, diag)) != CKS_OK)
        goto out;
    size_t count = 0;
    for (size_t i = 0; i < rows; i++)
        if (row_to_col[i] >= 0)
            pairs[count++] = (cks_layer_pair){(int32_t)i, row_to_col[i]};
    *n_pairs = count;
out:
    if (err != CKS_OK && n_pairs)
        *n_pairs = 0;
    free(row_to_col);
    return err;
}

cks_err cks_layer_path_summary(const double *s, size_t rows, size_t cols,
                               const cks_layer_pair *pairs, size_t n_pairs,
                               cks_path_summary *out, cks_diag *diag)
{
    bool *on_path = NULL;
    int32_t *best = NULL;
    double *margin = NULL;
    cks_err err = check_matrix(s, rows, cols, diag);
    if (out)
        memset(out, 0, sizeof *out);
    if (err != CKS_OK)
        goto out;
    if (!out || !pairs || n_pairs == 0 || n_pairs > rows || n_pairs > cols) {
        err = cks_fail(diag, CKS_ERR_INVALID_ARG, "path summary needs 1..min(rows, cols) pairs");
        goto out;
    }
    on_path = calloc(rows * cols, sizeof *on_path);
    best = malloc(rows * sizeof *best);
    margin = malloc(rows * sizeof *margin);
    if (!on_path || !best || !margin) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "path summary");
        goto out;
    }
    double path_sum = 0, total = 0;
    for (size_t k = 0; k < n_pairs; k++) {
        if (pairs[k].a < 0 || (size_t)pairs[k].a >= rows || pairs[k].b < 0 || (size_t)pairs[k].b >= cols ||
            on_path[(size_t)pairs[k].a * cols + (size_t)pairs[k].b]) {
            err = cks_fail(diag, CKS_ERR_INVALID_ARG, "path pair %zu (%d, %d) is out of range or repeated",
                           k, pairs[k].a, pairs[k].b);
            goto out;
        }
        on_path[(size_t)pairs[k].a * cols + (size_t)pairs[k].b] = true;
        path_sum += s[(size_t)pairs[k].a * cols + (size_t)pairs[k].b];
    }
    for (size_t q = 0; q < rows * cols; q++)
        total += s[q];
    if ((err = cks_layer_margins(s, rows, cols, CKS_LAYER_ROWS, best, margin, NULL, diag)) != CKS_OK)
        goto out;
    size_t best_on_path = 0, defined = 0;
    for (size_t k = 0; k < n_pairs; k++)
        best_on_path += best[pairs[k].a] == pairs[k].b;
    for (size_t i = 0; i < rows; i++)
        if (!isnan(margin[i]))
            margin[defined++] = margin[i];
    out->path_mean = path_sum / (double)n_pairs;
    size_t off = rows * cols - n_pairs;
    out->off_path_mean = off ? (total - path_sum) / (double)off : NAN;
    out->diagonal_dominance = out->path_mean - out->off_path_mean;
    out->fraction_rows_best_on_path = (double)best_on_path / (double)n_pairs;
    out->median_row_margin = defined ? median_in_place(margin, defined) : NAN;
out:
    free(on_path);
    free(best);
    free(margin);
    return err;
}

cks_err cks_layer_double_centre(const double *s, size_t rows, size_t cols, double *out,
                                cks_diag *diag)
{
    double *row_mean = NULL, *col_mean = NULL;
    cks_err err = check_matrix(s, rows, cols, diag);
    if (err != CKS_OK)
        goto out;
    if (!out) {
        err = cks_fail(diag, CKS_ERR_INVALID_ARG, "double centring needs an output");
        goto out;
    }
    row_mean = calloc(rows, sizeof *row_mean);
    col_mean = calloc(cols, sizeof *col_mean);
    if (!row_mean || !col_mean) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "double centring");
        goto out;
    }
    double grand = 0;
    for (size_t i = 0; i < rows; i++)
        for (size_t j = 0; j < cols; j++) {
            row_mean[i] += s[i * cols + j];
            col_mean[j] += s[i * cols + j];
            grand += s[i * cols + j];
        }
    for (size_t i = 0; i < rows; i++)
        row_mean[i] /= (double)cols;
    for (size_t j = 0; j < cols; j++)
        col_mean[j] /= (double)rows;
    grand /= (double)(rows * cols);
    for (size_t i = 0; i < rows; i++)
        for (size_t j = 0; j < cols; j++)
            out[i * cols + j] = s[i * cols + j] - row_mean[i] - col_mean[j] + grand;
out:
    free(row_mean);
    free(col_mean);
    return err;
}

/* ---------------- std curves ---------------- */

cks_err cks_std_curve_detrend(const double *y, size_t n, unsigned degree, double *residual,
                              cks_diag *diag)
{
    double *basis = NULL;
    cks_err err = CKS_OK;
    if (!y || !residual || degree > CKS_STD_CURVE_MAX_DEGREE || n <= degree || n > (1u << 24)) {
        err = cks_fail(diag, CKS_ERR_INVALID_ARG,
                       "detrending needs n > degree and degree <= %u (n=%zu, degree=%u)",
                       CKS_STD_CURVE_MAX_DEGREE, n, degree);
        goto out;
    }
    for (size_t i = 0; i < n; i++)
        if (!isfinite(y[i])) {
            err = cks_fail(diag, CKS_ERR_NUMERIC, "curve value %zu is not finite", i);
            goto out;
        }
    basis = malloc((degree + 1) * n * sizeof *basis);
    if (!basis) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "detrending basis");
        goto out;
    }
    memcpy(residual, y, n * sizeof *residual);
    /* monomials in t in [-1, 1], orthonormalised by modified Gram–Schmidt (run twice for
     * stability), then the residual is y minus its projection on each basis vector */
    for (unsigned k = 0; k <= degree; k++) {
        double *q = basis + (size_t)k * n;
        for (size_t i = 0; i < n; i++) {
            double t = n > 1 ? 2.0 * (double)i / (double)(n - 1) - 1.0 : 0.0;
            q[i] = pow(t, (double)k);
        }
        for (int pass = 0; pass < 2; pass++)
            for (unsigned m = 0; m < k; m++) {
                const double *p = basis + (size_t)m * n;
                double dot = 0;
                for (size_t i = 0; i < n; i++)
                    dot += p[i] * q[i];
                for (size_t i = 0; i < n; i++)
                    q[i] -= dot * p[i];
            }
        double norm = 0;
        for (size_t i = 0; i < n; i++)
            norm += q[i] * q[i];
        norm = sqrt(norm);
        if (!(norm > 1e-12)) {
            err = cks_fail(diag, CKS_ERR_NUMERIC, "polynomial basis of degree %u is degenerate for n=%zu", k, n);
            goto out;
        }
        for (size_t i = 0; i < n; i++)
            q[i] /= norm;
        double dot = 0;
        for (size_t i = 0; i < n; i++)
            dot += q[i] * residual[i];
        for (size_t i = 0; i < n; i++)
            residual[i] -= dot * q[i];
    }
out:
    free(basis);
    return err;
}

/* Values of `src` (length ns) at `len` evenly spaced relative depths, linear interpolation. */
static void resample(const double *src, size_t ns, double *dst, size_t len)
{
    for (size_t t = 0; t < len; t++) {
        double x = len > 1 ? (double)t * (double)(ns - 1) / (double)(len - 1) : 0.0;
        size_t lo = (size_t)x;
        if (lo >= ns - 1) {
            dst[t] = src[ns - 1];
            continue;
        }
        double w = x - (double)lo;
        dst[t] = (1.0 - w) * src[lo] + w * src[lo + 1];
    }
}

cks_err cks_std_curve_correlation(const double *a, size_t na, const double *b, size_t nb,
                                  unsigned degree, double *r, cks_diag *diag)
{
    double *ra = NULL, *rb = NULL, *da = NULL, *db = NULL;
    cks_err err = CKS_OK;
    if (r)
        *r = NAN;
    if (!a || !b || !r || na == 0 || nb == 0 || na > (1u << 24) || nb > (1u << 24)) {
        err = cks_fail(diag, CKS_ERR_INVALID_ARG, "curve correlation needs two non-empty curves");
        goto out;
    }
    size_t len = na > nb ? na : nb;
    ra = malloc(len * sizeof *ra);
    rb = malloc(len * sizeof *rb);
    da = malloc(len * sizeof *da);
    db = malloc(len * sizeof *db);
    if (!ra || !rb || !da || !db) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "curve correlation");
        goto out;
    }
    resample(a, na, ra, len);
    resample(b, nb, rb, len);
    if ((err = cks_std_curve_detrend(ra, len, degree, da, diag)) != CKS_OK ||
        (err = cks_std_curve_detrend(rb, len, degree, db, diag)) != CKS_OK)
        goto out;
    err = cks_pearson_f64(da, db, len, r, diag);
out:
    free(ra);
    free(rb);
    free(da);
    free(db);
    return err;
}
