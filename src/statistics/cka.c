/*
 * Linear CKA in feature space (formulas and references in ckptscope/cka.h).
 */
#include "ckptscope/cka.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ckptscope/blas.h"

/* Everything a CKA evaluation needs that does not change when Y's rows are permuted. */
typedef struct cka_prep {
    size_t n, p1, p2;
    float *xc, *yc;     /* column-centred copies, row-major */
    double *d, *e;      /* squared row norms of xc and yc */
    double sum_d, sum_e;
    double frob2_xx, frob2_yy; /* |Xc^T Xc|_F^2, |Yc^T Yc|_F^2 */
    double sum_dd, sum_ee;
    float *cross;       /* p1 x p2 workspace for Xc^T Yc */
    float *y_permuted;  /* n x p2 workspace for the null */
} cka_prep;

static void cka_prep_release(cka_prep *p)
{
    free(p->xc);
    free(p->yc);
    free(p->d);
    free(p->e);
    free(p->cross);
    free(p->y_permuted);
    memset(p, 0, sizeof *p);
}

/* Column means in double, then a centred float copy and its squared row norms. */
static cks_err centre(const float *src, size_t n, size_t p, float *dst, double *row_norm2,
                      const char *side, cks_diag *diag)
{
    double *mean = calloc(p, sizeof *mean);
    cks_err err = CKS_OK;
    if (!mean) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "CKA column means of %zu features", p);
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        const float *row = src + i * p;
        for (size_t j = 0; j < p; j++) {
            if (!isfinite(row[j])) {
                err = cks_fail(diag, CKS_ERR_NUMERIC, "CKA: %s[%zu][%zu] is not finite", side, i, j);
                goto out;
            }
            mean[j] += row[j];
        }
    }
    for (size_t j = 0; j < p; j++)
        mean[j] /= (double)n;
    for (size_t i = 0; i < n; i++) {
        double norm2 = 0;
        for (size_t j = 0; j < p; j++) {
            float c = (float)((double)src[i * p + j] - mean[j]);
            dst[i * p + j] = c;
            norm2 += (double)c * c;
        }
        row_norm2[i] = norm2;
    }
out:
    free(mean);
    return err;
}

/* |A^T A|_F^2 from ssyrk's upper triangle. */
static double gram_frob2(const float *a, size_t n, size_t p, float *work)
{
    cks_ssyrk(CblasRowMajor, CblasUpper, CblasTrans, (blasint)p, (blasint)n, 1.0f, a, (blasint)p,
              0.0f, work, (blasint)p);
    double diag_sum = 0, off_sum = 0;
    for (size_t i = 0; i < p; i++) {
        const float *row = work + i * p;
        diag_sum += (double)row[i] * row[i];
        for (size_t j = i + 1; j < p; j++)
            off_sum += (double)row[j] * row[j];
    }
    return diag_sum + 2.0 * off_sum;
}

static cks_err cka_prep_init(cka_prep *p, const float *x, size_t n, size_t p1, const float *y,
                             size_t p2, bool for_null, cks_diag *diag)
{
    cks_err err = CKS_OK;
    float *gram = NULL;
    memset(p, 0, sizeof *p);
    if (!x || !y || n < 4 || p1 == 0 || p2 == 0 || n > CKS_CKA_MAX_DIM || p1 > CKS_CKA_MAX_DIM ||
        p2 > CKS_CKA_MAX_DIM) {
        err = cks_fail(diag, CKS_ERR_INVALID_ARG,
                       "CKA needs n >= 4 samples and features on both sides, each <= 2^24 (n=%zu p1=%zu p2=%zu)",
                       n, p1, p2);
        goto out;
    }
    size_t pmax = p1 > p2 ? p1 : p2;
    if (n > SIZE_MAX / sizeof(float) / pmax || pmax > SIZE_MAX / sizeof(float) / pmax) {
        err = cks_fail(diag, CKS_ERR_INVALID_ARG, "CKA of %zu x %zu and %zu x %zu overflows", n, p1, n, p2);
        goto out;
    }
    p->n = n;
    p->p1 = p1;
    p->p2 = p2;
    p->xc = malloc(n * p1 * sizeof(float));
    p->yc = malloc(n * p2 * sizeof(float));
    p->d = malloc(n * sizeof(double));
    p->e = malloc(n * sizeof(double));
    p->cross = malloc(p1 * p2 * sizeof(float));
    gram = malloc(pmax * pmax * sizeof(float));
    if (for_null)
        p->y_permuted = malloc(n * p2 * sizeof(float));
    if (!p->xc || !p->yc || !p->d || !p->e || !p->cross || !gram || (for_null && !p->y_permuted)) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "CKA workspace for %zu x %zu and %zu x %zu", n, p1, n, p2);
        goto out;
    }
    if ((err = centre(x, n, p1, p->xc, p->d, "X", diag)) != CKS_OK ||
        (err = centre(y, n, p2, p->yc, p->e, "Y", diag)) != CKS_OK)
        goto out;
    for (size_t i = 0; i < n; i++) {
        p->sum_d += p->d[i];
        p->sum_e += p->e[i];
        p->sum_dd += p->d[i] * p->d[i];
        p->sum_ee += p->e[i] * p->e[i];
    }
    p->frob2_xx = gram_frob2(p->xc, n, p1, gram);
    p->frob2_yy = gram_frob2(p->yc, n, p2, gram);
out:
    free(gram);
    if (err != CKS_OK)
        cka_prep_release(p);
    return err;
}

/* HSIC1 numerator times n(n-3), from the feature-space pieces. */
static double hsic1_scaled(double frob2_cross, double sum_de, double sum_d, double sum_e, size_t n)
{
    double nn = (double)n;
    return frob2_cross - sum_de + sum_d * sum_e / ((nn - 1) * (nn - 2)) - 2.0 / (nn - 2) * sum_de;
}

/* Evaluate both CKAs for y rows given (yc itself, or a permuted copy with its e permuted). */
static void cka_evaluate(const cka_prep *p, const float *yrows, const uint32_t *perm, cks_cka_result *out)
{
    size_t n = p->n;
    cks_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (blasint)p->p1, (blasint)p->p2, (blasint)n,
              1.0f, p->xc, (blasint)p->p1, yrows, (blasint)p->p2, 0.0f, p->cross, (blasint)p->p2);
    double frob2_cross = 0;
    for (size_t k = 0; k < p->p1 * p->p2; k++)
        frob2_cross += (double)p->cross[k] * p->cross[k];
    double sum_de = 0;
    for (size_t i = 0; i < n; i++)
        sum_de += p->d[i] * p->e[perm ? perm[i] : i];
    double scale = (double)n * ((double)n - 3);
    double xy = hsic1_scaled(frob2_cross, sum_de, p->sum_d, p->sum_e, n);
    double xx = hsic1_scaled(p->frob2_xx, p->sum_dd, p->sum_d, p->sum_d, n);
    double yy = hsic1_scaled(p->frob2_yy, p->sum_ee, p->sum_e, p->sum_e, n);
    memset(out, 0, sizeof *out);
    out->hsic1_xy = xy / scale;
    out->hsic1_xx = xx / scale;
    out->hsic1_yy = yy / scale;
    out->debiased_defined = xx > 0 && yy > 0;
    out->debiased = out->debiased_defined ? xy / (sqrt(xx) * sqrt(yy)) : NAN;
    out->biased_defined = p->frob2_xx > 0 && p->frob2_yy > 0;
    out->biased = out->biased_defined ? frob2_cross / (sqrt(p->frob2_xx) * sqrt(p->frob2_yy)) : NAN;
}

cks_err cks_cka_linear(const float *x, size_t n, size_t p1, const float *y, size_t p2,
                       cks_cka_result *out, cks_diag *diag)
{
    cka_prep prep;
    cks_err err = CKS_OK;
    if (!out) {
        err = cks_fail(diag, CKS_ERR_INVALID_ARG, "CKA without a result");
        goto out;
    }
    memset(out, 0, sizeof *out);
    if ((err = cka_prep_init(&prep, x, n, p1, y, p2, false, diag)) != CKS_OK)
        goto out;
    cka_evaluate(&prep, prep.yc, NULL, out);
    cka_prep_release(&prep);
out:
    if (err != CKS_OK && out)
        out->biased = out->debiased = NAN;
    return err;
}

static cks_err permuted_cka_statistic(void *ctx, const uint32_t *perm, size_t n, double *value,
                                      cks_diag *diag)
{
    cka_prep *p = ctx;
    cks_cka_result r;
    cks_err err = CKS_OK;
    if (!perm) {
        cka_evaluate(p, p->yc, NULL, &r);
    } else {
        for (size_t i = 0; i < n; i++)
            memcpy(p->y_permuted + i * p->p2, p->yc + (size_t)perm[i] * p->p2, p->p2 * sizeof(float));
        cka_evaluate(p, p->y_permuted, perm, &r);
    }
    if (r.debiased_defined)
        *value = r.debiased;
    else
        err = cks_fail(diag, CKS_ERR_NUMERIC, "debiased CKA undefined: a side has no variance");
    return err;
}

cks_err cks_cka_perm_test(const float *x, size_t n, size_t p1, const float *y, size_t p2,
                          uint64_t seed, uint32_t permutations, cks_perm_result *out,
                          cks_diag *diag)
{
    cka_prep prep;
    cks_err err = CKS_OK;
    if (!out) {
        err = cks_fail(diag, CKS_ERR_INVALID_ARG, "CKA permutation test without a result");
        goto out;
    }
    memset(out, 0, sizeof *out);
    if ((err = cka_prep_init(&prep, x, n, p1, y, p2, true, diag)) != CKS_OK)
        goto out;
    err = cks_perm_test(n, permuted_cka_statistic, &prep, seed, permutations, CKS_ALT_GREATER, out, diag);
    cka_prep_release(&prep);
out:
    return err;
}
