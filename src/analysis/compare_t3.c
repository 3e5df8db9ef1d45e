/*
 * compare: T3: index-aligned k/v/router/embedding rows against a row-permutation null.
 * Part of cks_compare (compare.c); shared declarations in compare_internal.h.
 */
#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ckptscope/cka.h"
#include "ckptscope/lap.h"
#include "ckptscope/layers.h"
#include "ckptscope/metrics.h"
#include "ckptscope/stats.h"
#include "compare_internal.h"

/* ---- T3: index-aligned weights ---- */

struct cross_ctx {
    const float *d;
    size_t dim;
    double constant;
};

static cks_err cross_statistic(void *vctx, const uint32_t *perm, size_t n, double *value, cks_diag *diag)
{
    const struct cross_ctx *c = vctx;
    double s = c->constant;
    (void)diag;
    for (size_t j = 0; j < n; j++)
        s += c->d[j * c->dim + (perm ? perm[j] : j)];
    *value = s;
    return CKS_OK;
}

typedef struct weight_item {
    const cmp_matrix *a, *b;
    char label[96];
    double ma, sa, mb, sb;   /* means and population sds of the winsorised blocks */
    double r;                /* winsorised Pearson r, NAN for a constant side */
} weight_item;

void cmp_matrix_moments(const cmp_matrix *m, double *mean, double *sd)
{
    double s = 0, ss = 0;
    size_t n = m->rows * m->cols;
    for (size_t i = 0; i < n; i++)
        s += m->v[i];
    *mean = n ? s / (double)n : 0;
    for (size_t i = 0; i < n; i++) {
        double d = m->v[i] - *mean;
        ss += d * d;
    }
    *sd = n ? sqrt(ss / (double)n) : 0;
}

#define WINSOR_SD 3.0 /* clip at mean +- 3 sd: a Gaussian block loses 0.27 % of its values */

/*
 * A copy of m with every value clipped to mean +- 3 sd. Weight blocks of real models carry a
 * few columns far larger than the rest (the residual dimensions of "massive activations");
 * independent models of one recipe can share them, and unclipped they carry a Pearson r on
 * their own. Clipped, each value's pull on the statistic is bounded.
 */
cks_err cmp_winsorised(const cmp_matrix *m, cmp_matrix *out)
{
    double mean, sd;
    size_t n = m->rows * m->cols;
    memset(out, 0, sizeof *out);
    out->v = malloc((n ? n : 1) * sizeof *out->v);
    if (!out->v)
        return CKS_ERR_NOMEM;
    out->rows = m->rows;
    out->cols = m->cols;
    cmp_matrix_moments(m, &mean, &sd);
    for (size_t i = 0; i < n; i++) {
        double v = m->v[i];
        if (v > mean + WINSOR_SD * sd)
            v = mean + WINSOR_SD * sd;
        else if (v < mean - WINSOR_SD * sd)
            v = mean - WINSOR_SD * sd;
        out->v[i] = (float)v;
    }
    return CKS_OK;
}

/* cmp_winsorised()'s bounds for m, and its value for v (the same double arithmetic, stored as float). */
static void clip_bounds(const cmp_matrix *m, double *lo, double *hi)
{
    double mean, sd;
    cmp_matrix_moments(m, &mean, &sd);
    *hi = mean + WINSOR_SD * sd;
    *lo = mean - WINSOR_SD * sd;
}

float cmp_clipped(float value, double lo, double hi)
{
    double v = value;
    if (v > hi)
        v = hi;
    else if (v < lo)
        v = lo;
    return (float)v;
}

/*
 * Moments and Pearson r of the winsorised blocks, without making them: each sum runs over
 * the same values in the same order as over cmp_winsorised() copies, so the moments and r are
 * bit for bit the same.
 */
static void clipped_item_stats(weight_item *it, double lo_a, double hi_a, double lo_b, double hi_b)
{
    const float *a = it->a->v, *b = it->b->v;
    size_t n = it->a->rows * it->a->cols;
    double sa = 0, sb = 0, ssa = 0, ssb = 0, s = 0;
    for (size_t i = 0; i < n; i++) {
        sa += cmp_clipped(a[i], lo_a, hi_a);
        sb += cmp_clipped(b[i], lo_b, hi_b);
    }
    it->ma = n ? sa / (double)n : 0;
    it->mb = n ? sb / (double)n : 0;
    for (size_t i = 0; i < n; i++) {
        double da = (double)cmp_clipped(a[i], lo_a, hi_a) - it->ma, db = (double)cmp_clipped(b[i], lo_b, hi_b) - it->mb;
        ssa += da * da;
        ssb += db * db;
        s += da * db;
    }
    it->sa = n ? sqrt(ssa / (double)n) : 0;
    it->sb = n ? sqrt(ssb / (double)n) : 0;
    it->r = NAN;
    if (it->sa <= 0 || it->sb <= 0)
        return;
    it->r = s / ((double)n * it->sa * it->sb);
}

/*
 * T3's cross matrix gathers many blocks of few rows (16 sampled k or v rows, 128 router rows
 * per layer): one sgemm each streams the whole d x d cross matrix (64 MiB at d = 4096) for
 * 16 rows of work. Rows are stacked (A's side pre-scaled by its block's weight) into
 * batches of CROSS_BATCH_ROWS rows (8 MiB at d = 4096) and added with one sgemm per batch:
 * the same sum, in another order (float rounding only).
 */
#define CROSS_BATCH_ROWS 256u

static size_t cross_flush(const float *batch_a, const float *batch_b, size_t rows, size_t d, float *cross)
{
    if (rows)
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)d, (int)d, (int)rows, 1.0f, batch_a, (int)d, batch_b,
                    (int)d, 1.0f, cross, (int)d);
    return 0;
}

cks_err cmp_test_weights(const cmp_ctx *ctx, const cmp_model *a, const cmp_model *b, const cmp_embed_pair *emb,
                         cmp_family *f, const char *id, const char *name, cks_diag *diag)
{
    cks_err err = CKS_OK;
    cks_test_result *t = cmp_family_add(f, id, name, true);
    weight_item *items = NULL;
    size_t n_items = 0, cap, d = a->hidden, strong = 0, used = 0;
    float *cross = NULL, *batch_a = NULL, *batch_b = NULL;
    size_t batched = 0;
    double constant = 0, sum_r = 0, null_mean, null_sd;
    bool power_check;
    cks_perm_result pr;
    struct cross_ctx c;

    if (!t)
        return CKS_OK;
    t->evidence = CKS_EVIDENCE_INIT;
    snprintf(t->sources, sizeof t->sources, "weights");
    snprintf(t->statistic_name, sizeof t->statistic_name, "mean cmp_winsorised Pearson r of index-aligned weight rows");
    if (a->hidden != b->hidden || a->hidden == 0) {
        cmp_not_run(t, "%s", "hidden sizes differ: index-aligned weights cannot be compared (T4 aligns them)");
        return CKS_OK;
    }
    if (d > CMP_MAX_CROSS_DIM) {
        cmp_not_run(t, "%s", "hidden size above 8192: the cross-matrix null would not fit the memory bound");
        return CKS_OK;
    }
    cap = 3 * f->n_pairs + 1;
    items = calloc(cap, sizeof *items);
    if (!items) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        goto out;
    }
    for (size_t p = 0; p < f->n_pairs && a->layers && b->layers; p++) {
        const cmp_layer *LA = &a->layers[f->pairs[p].a], *LB = &b->layers[f->pairs[p].b];
        const cmp_matrix *ma[3] = {&LA->k, &LA->v, &LA->router}, *mb[3] = {&LB->k, &LB->v, &LB->router};
        static const char *const kind[3] = {"k", "v", "router"};
        size_t total_a[3] = {LA->k_total_rows, LA->v_total_rows, LA->router.rows};
        size_t total_b[3] = {LB->k_total_rows, LB->v_total_rows, LB->router.rows};
        for (int w = 0; w < 3; w++) {
            if (!ma[w]->v || !mb[w]->v || ma[w]->rows != mb[w]->rows || ma[w]->cols != d || mb[w]->cols != d ||
                total_a[w] != total_b[w])
                continue;
            items[n_items].a = ma[w];
            items[n_items].b = mb[w];
            snprintf(items[n_items].label, sizeof items[n_items].label, "layer %d/%d %s", f->pairs[p].a, f->pairs[p].b,
                     kind[w]);
            n_items++;
        }
    }
    if (emb && emb->a.v && emb->b.v && emb->a.rows == emb->b.rows && emb->a.cols == d && emb->b.cols == d &&
        emb->a.rows > 0) {
        items[n_items].a = &emb->a;
        items[n_items].b = &emb->b;
        snprintf(items[n_items].label, sizeof items[n_items].label, "embedding rows of %zu shared tokens", emb->a.rows);
        n_items++;
    }
    if (n_items == 0) {
        cmp_not_run(t, "%s", "no k, v, router or shared-token embedding rows of matching shape on both sides");
        goto out;
    }
    power_check = cmp_reused_null(ctx, id, &null_mean, &null_sd);
    if (!power_check) {
        cross = calloc(d * d, sizeof *cross);
        batch_a = malloc(CROSS_BATCH_ROWS * d * sizeof *batch_a);
        batch_b = malloc(CROSS_BATCH_ROWS * d * sizeof *batch_b);
        if (!cross || !batch_a || !batch_b) {
            err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory for the %zu x %zu cross matrix", d, d);
            goto out;
        }
    }
    /* the cross matrix's products are large (d x d x 512): the caller's BLAS threads pay off
     * there, unlike on the small products elsewhere */
    if (cross && ctx->blas_threads > 1)
        openblas_set_num_threads(ctx->blas_threads);
    /* one item at a time: its winsorised r and its share of the cross matrix (cross +=
     * Za^T Zb / N, so the statistic of any column permutation is a trace); the winsorised
     * values are made on the fly (cmp_clipped()), never as whole copies: 64 MiB less at the peak
     * for 2048 embedding rows of 4096 */
    for (size_t i = 0; i < n_items; i++) {
        weight_item *it = &items[i];
        size_t n = it->a->rows * d;
        double lo_a, hi_a, lo_b, hi_b;
        clip_bounds(it->a, &lo_a, &hi_a);
        clip_bounds(it->b, &lo_b, &hi_b);
        clipped_item_stats(it, lo_a, hi_a, lo_b, hi_b);
        if (isfinite(it->r)) {
            used++;
            sum_r += it->r;
            if (it->r >= cmp_floor_value(id) && it->r * sqrt((double)n - 1.0) >= CMP_ITEM_Z)
                strong++;
            if (cross) {
                float w = (float)(1.0 / ((double)it->a->rows * (double)d * it->sa * it->sb));
                for (size_t r = 0; r < it->a->rows; r++) {
                    const float *ra = it->a->v + r * d, *rb = it->b->v + r * d;
                    float *ba, *bb;
                    if (batched == CROSS_BATCH_ROWS)
                        batched = cross_flush(batch_a, batch_b, batched, d, cross);
                    ba = batch_a + batched * d;
                    bb = batch_b + batched * d;
                    for (size_t x = 0; x < d; x++) {
                        ba[x] = cmp_clipped(ra[x], lo_a, hi_a) * w;
                        bb[x] = cmp_clipped(rb[x], lo_b, hi_b);
                    }
                    batched++;
                }
                constant -= it->ma * it->mb / (it->sa * it->sb);
            }
            if (cmp_add_item(t, it->label, it->r, NAN) != CKS_OK) {
                err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
                goto out;
            }
        }
    }
    if (cross)
        batched = cross_flush(batch_a, batch_b, batched, d, cross);
    openblas_set_num_threads(1);
    if (used == 0) {
        cmp_not_run(t, "%s", "every candidate weight block is constant");
        goto out;
    }
    if (power_check) {
        /* a power check: the statistic itself against the real pair's null, no cross matrix */
        cmp_judge_by_reused_null(t, sum_r / (double)used, null_mean, null_sd, ctx->alpha);
        goto out;
    }
    cblas_sscal((int)(d * d), (float)(1.0 / (double)used), cross, 1);
    c.d = cross;
    c.dim = d;
    c.constant = constant / (double)used;
    err = cks_perm_test_curtailed(d, cross_statistic, &c, ctx->seed + 1, ctx->permutations,
                                  cks_perm_stop_after(ctx->alpha, ctx->permutations), CKS_ALT_GREATER, &pr, diag);
    if (err)
        goto out;
    cmp_set_perm(t, &pr, "joint permutation of B's residual (input) dimension across every tensor", ctx->alpha);
    t->n_layers = f->n_pairs;
    t->corroborated = strong >= 2;
    t->bytes_read = a->bytes_weights + b->bytes_weights + a->bytes_router + b->bytes_router +
                    (emb ? emb->bytes : 0);
    snprintf(t->tensors, sizeof t->tensors, "%zu blocks: sampled k/v rows, routers, shared-token embedding rows",
             n_items);
out:
    openblas_set_num_threads(1); /* also on the error paths out of the loop */
    free(items);
    free(cross);
    free(batch_a);
    free(batch_b);
    return err;
}
