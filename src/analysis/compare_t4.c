/*
 * compare: T4: alignment from shared-token embeddings (T4a under random rotations, T4b/T4c after alignment).
 * Part of cks_compare (compare.c); shared declarations in compare_internal.h.
 */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ckptscope/blas.h"
#include "ckptscope/cka.h"
#include "ckptscope/lap.h"
#include "ckptscope/layers.h"
#include "ckptscope/metrics.h"
#include "ckptscope/stats.h"
#include "compare_internal.h"

/* ---- T4: alignment from shared-token embeddings ---- */

/* The median over rows of each row's largest |entry| (scratch: rows doubles). */
static double median_row_max_abs(const float *sim, size_t rows, size_t cols, double *scratch)
{
    for (size_t i = 0; i < rows; i++) {
        float best = 0;
        for (size_t j = 0; j < cols; j++) {
            float v = fabsf(sim[i * cols + j]);
            if (v > best)
                best = v;
        }
        scratch[i] = best;
    }
    return cks_median_inplace(scratch, rows);
}

#define T4A_BLOCK 512u /* rows of A's dimensions per block of the half-token similarities */

/*
 * One draw of T4a's structure-preserving null: B's token rows in a random orthogonal basis
 * (cks_rotation: B's token geometry, every inner product between tokens, is kept; which
 * coordinate is which is not). The similarity sub^T (B R), each column divided by its new
 * norm (the columns of B R are not unit vectors), is computed as (sub^T B) R: the observed
 * product s0 = sub^T B rotated (256 rows instead of the n token rows), and the column norms
 * of B R from cks_rotation_column_norms2. The same numbers up to float rounding as rotating
 * B's rows and multiplying again, for 2.4 instead of 6.4 GFLOP per draw at n = 2048 tokens,
 * hidden 4096 (the draws, and so the null, are unchanged: same seed, same rotations).
 */
static cks_err rotated_similarity(const float *s0, size_t subset, const float *eb, size_t n, size_t db,
                                  cks_rotation *rot, double *colsq, float *sim, cks_diag *diag)
{
    cks_err err;
    memcpy(sim, s0, subset * db * sizeof *sim);
    err = cks_rotation_apply(rot, sim, subset, diag);
    if (!err)
        err = cks_rotation_column_norms2(rot, eb, n, colsq, diag);
    if (err)
        return err;
    for (size_t j = 0; j < db; j++) /* colsq now holds each column's factor, applied row by row */
        colsq[j] = colsq[j] > 0 ? (double)(float)(1.0 / sqrt(colsq[j])) : 0.0;
    for (size_t i = 0; i < subset; i++)
        for (size_t j = 0; j < db; j++)
            sim[i * db + j] *= (float)colsq[j];
    return err;
}

/*
 * One draw of T4a's null evaluated on a thread of its own: a rotation drawn beforehand (the
 * draws come from the generator in the serial order), its own similarity, norms and scratch.
 * A draw at hidden 4096 is ~2.4 GFLOP of small sgemms (~70 ms): the 9 draws of a default
 * compare were its longest serial stretch after the transfers.
 */
struct t4a_draw {
    const float *s0, *eb;
    size_t subset, n, db;
    cks_rotation rot;
    float *sim;
    double *colsq, *scratch;
    double value;
    cks_err err;
    cks_diag diag;
};

static void *t4a_draw_main(void *arg)
{
    struct t4a_draw *d = arg;
    d->err = rotated_similarity(d->s0, d->subset, d->eb, d->n, d->db, &d->rot, d->colsq, d->sim, &d->diag);
    if (!d->err)
        d->value = median_row_max_abs(d->sim, d->subset, d->db, d->scratch);
    return NULL;
}

/* The draws of T4a's null added to acc in the serial order, up to cks_perm_threads() at once.
 * d[0] comes with its buffers (the caller's); the others get theirs here. */
static cks_err t4a_null(cks_rng *rng, uint32_t draws, struct t4a_draw *d, cmp_null_acc *acc, cks_diag *diag)
{
    cks_err err = CKS_OK;
    unsigned threads = cks_perm_threads(), made = 1;
    if (threads > draws)
        threads = draws ? draws : 1;
    for (; made < threads; made++) {
        d[made] = d[0];
        memset(&d[made].rot, 0, sizeof d[made].rot);
        d[made].sim = malloc(d[0].subset * d[0].db * sizeof *d[made].sim);
        d[made].colsq = malloc(d[0].db * sizeof *d[made].colsq);
        d[made].scratch = malloc(d[0].subset * sizeof *d[made].scratch);
        if (!d[made].sim || !d[made].colsq || !d[made].scratch) {
            free(d[made].sim);
            free(d[made].colsq);
            free(d[made].scratch);
            break; /* fewer threads */
        }
    }
    for (uint32_t k = 0; k < draws && !err;) {
        unsigned m = draws - k < made ? draws - k : made;
        pthread_t th[CKS_PERM_MAX_THREADS];
        bool on_thread[CKS_PERM_MAX_THREADS] = {false};
        for (unsigned i = 0; i < m && !err; i++) {
            cks_rotation_release(&d[i].rot);
            err = cks_rotation_draw(rng, d[i].db, &d[i].rot, diag);
        }
        if (err)
            break;
        for (unsigned i = 1; i < m; i++)
            on_thread[i] = pthread_create(&th[i], NULL, t4a_draw_main, &d[i]) == 0;
        t4a_draw_main(&d[0]);
        for (unsigned i = 1; i < m; i++) {
            if (on_thread[i])
                pthread_join(th[i], NULL);
            else
                t4a_draw_main(&d[i]); /* no thread for it: here */
        }
        for (unsigned i = 0; i < m && !err; i++, k++) {
            if (d[i].err) {
                err = d[i].err;
                if (diag)
                    *diag = d[i].diag;
            } else {
                cmp_null_add(acc, d[i].value);
            }
        }
    }
    for (unsigned i = 1; i < made; i++) {
        cks_rotation_release(&d[i].rot);
        free(d[i].sim);
        free(d[i].colsq);
        free(d[i].scratch);
    }
    return err;
}

/* 1 / the norm of every column of m over rows [r0, r0 + rows). */
static void inverse_column_norms(const float *m, size_t cols, size_t r0, size_t rows, double *inv)
{
    for (size_t j = 0; j < cols; j++)
        inv[j] = 0;
    for (size_t r = r0; r < r0 + rows; r++)
        for (size_t j = 0; j < cols; j++)
            inv[j] += (double)m[r * cols + j] * m[r * cols + j];
    for (size_t j = 0; j < cols; j++)
        inv[j] = inv[j] > 0 ? 1.0 / sqrt(inv[j]) : 0.0;
}

/*
 * The best match of every dimension of A in B and of every dimension of B in A (largest
 * |cos|, with its sign), on the tokens [r0, r0 + rows). Blocks of A's dimensions at a time:
 * a few MiB however wide the models are.
 */
static void best_matches(const float *ea, size_t da, const float *eb, size_t db, size_t r0, size_t rows, float *block,
                         double *inv_a, double *inv_b, double *col_best_val, int32_t *row_best, int8_t *row_sign,
                         int32_t *col_best)
{
    inverse_column_norms(ea, da, r0, rows, inv_a);
    inverse_column_norms(eb, db, r0, rows, inv_b);
    for (size_t j = 0; j < db; j++) {
        col_best_val[j] = -1;
        col_best[j] = -1;
    }
    for (size_t i0 = 0; i0 < da; i0 += T4A_BLOCK) {
        size_t bi = da - i0 < T4A_BLOCK ? da - i0 : T4A_BLOCK;
        cks_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)bi, (int)db, (int)rows, 1.0f, ea + r0 * da + i0,
                  (int)da, eb + r0 * db, (int)db, 0.0f, block, (int)db);
        for (size_t i = 0; i < bi; i++) {
            double top = -1;
            int32_t at = -1;
            for (size_t j = 0; j < db; j++) {
                double c = (double)block[i * db + j] * inv_a[i0 + i] * inv_b[j], v = fabs(c);
                if (v > top) {
                    top = v;
                    at = (int32_t)j;
                }
                if (v > col_best_val[j]) {
                    col_best_val[j] = v;
                    col_best[j] = (int32_t)(i0 + i);
                }
            }
            row_best[i0 + i] = at;
            row_sign[i0 + i] = at >= 0 && block[i * db + (size_t)at] < 0 ? -1 : 1;
        }
    }
}

/*
 * T4a: is there a correspondence between A's and B's hidden dimensions?
 *
 * Statistic: the median over A's dimensions of the best |cos| with any dimension of B (for
 * hidden > 1024, over a fixed random 256 of A's dimensions: the median of 256 values is
 * already within a few hundredths). A median: a few dimensions that pair up in any two
 * models of one recipe (the "massive activation" dimensions) cannot carry it; a derivative
 * pairs nearly every dimension.
 *
 * Null: B's token geometry in a random orthogonal basis. Independent models trained on
 * similar text share their token geometry up to a change of basis; shuffling token rows (the
 * null this test used before) destroys that geometry, so such pairs looked aligned. Rotating
 * keeps it and removes only a coordinate correspondence, which is what the test is about.
 *
 * The alignment used by T4b/T4c pairs dimension i of A with j of B only when each is the
 * other's best match, with the same sign, on both halves of the shared tokens: a choice that
 * reproduces on data it was not fitted to. A derivative's dimensions pair one to one this
 * way (the matching is then the permutation an exact assignment would find, without its
 * O(d^3) cost and d x d matrix); a pair of independent models leaves too few such
 * dimensions for T4b/T4c to run.
 */
static cks_err test_alignment(const cmp_ctx *ctx, const cmp_model *a, const cmp_model *b, const cmp_embed_pair *emb,
                              cmp_family *f, cks_diag *diag)
{
    cks_err err = CKS_OK;
    cks_test_result *t = cmp_family_add(f, "T4a", "hidden-dimension alignment from shared-token embeddings", true);
    size_t n, da, db, min_tokens, subset, kept = 0, half;
    const float *ea = NULL, *eb = NULL;
    float *sim = NULL, *sub = NULL, *s0 = NULL;
    double *colsq = NULL, *scratch = NULL, *inv_a = NULL, *inv_b = NULL, *col_val = NULL;
    int32_t *map = NULL, *best1 = NULL, *best2 = NULL, *col1 = NULL, *col2 = NULL;
    int8_t *sign = NULL, *sign1 = NULL, *sign2 = NULL;
    uint32_t *dims = NULL;
    double observed;
    uint32_t draws;
    cks_rng rng;
    cks_rotation rot;
    cmp_null_acc acc;
    (void)a;
    (void)b;

    memset(&rot, 0, sizeof rot);
    if (!t)
        return CKS_OK;
    t->evidence = CKS_EVIDENCE_ALIGNMENT;
    snprintf(t->sources, sizeof t->sources, "embeddings");
    snprintf(t->statistic_name, sizeof t->statistic_name, "median best |cos| of a hidden dimension of A in B");
    if (!emb || !emb->a.v || !emb->b.v) {
        cmp_not_run(t, "%s", emb && emb->note[0] ? emb->note : "no shared-token embedding rows");
        return CKS_OK;
    }
    n = emb->a.rows;
    da = emb->a.cols;
    db = emb->b.cols;
    min_tokens = 2 * (da > db ? da : db);
    if (min_tokens < 64)
        min_tokens = 64;
    if (min_tokens > 2048)
        min_tokens = 2048; /* a true alignment stands out at cos ~ 1 against ~ 1/sqrt(n) noise */
    if (n < min_tokens) {
        char why[64];
        snprintf(why, sizeof why, "%zu", n);
        cmp_not_run(t, "only %s shared tokens: too few to recover a hidden-dimension alignment", why);
        return CKS_OK;
    }
    subset = da > 1024 ? 256 : da;
    half = n / 2;
    sim = malloc((subset > T4A_BLOCK ? subset : T4A_BLOCK) * db * sizeof *sim);
    map = malloc(da * sizeof *map);
    sign = malloc(da * sizeof *sign);
    best1 = malloc(da * sizeof *best1);
    best2 = malloc(da * sizeof *best2);
    sign1 = malloc(da * sizeof *sign1);
    sign2 = malloc(da * sizeof *sign2);
    col1 = malloc(db * sizeof *col1);
    col2 = malloc(db * sizeof *col2);
    col_val = malloc(db * sizeof *col_val);
    dims = malloc(da * sizeof *dims);
    sub = malloc(n * subset * sizeof *sub);
    s0 = malloc(subset * db * sizeof *s0);
    colsq = malloc(db * sizeof *colsq);
    inv_a = malloc(da * sizeof *inv_a);
    inv_b = malloc(db * sizeof *inv_b);
    scratch = malloc(da * sizeof *scratch);
    if (!sim || !map || !sign || !best1 || !best2 || !sign1 || !sign2 || !col1 || !col2 || !col_val || !dims || !sub ||
        !s0 || !colsq || !inv_a || !inv_b || !scratch) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory for the alignment (%zu x %zu)", da, db);
        goto out;
    }
    /* the pair's columns are unit vectors already (cmp_embed_pair): S is their cosines */
    ea = emb->a.v;
    eb = emb->b.v;
    cks_rng_seed(&rng, ctx->seed + 4);
    cks_rng_permutation(&rng, dims, da);
    for (size_t r = 0; r < n; r++)
        for (size_t k = 0; k < subset; k++)
            sub[r * subset + k] = ea[r * da + dims[k]];
    cks_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)subset, (int)db, (int)n, 1.0f, sub, (int)subset, eb,
              (int)db, 0.0f, s0, (int)db);
    memcpy(sim, s0, subset * db * sizeof *sim);
    observed = median_row_max_abs(sim, subset, db, scratch);
    /* the decision rests on z >= 6, no draw as extreme and the effect floor: a derivative is
     * hundreds of sd out, so a few draws suffice where each one costs a wide sgemm */
    draws = da <= 256 ? 49 : da <= 1024 ? 19 : 9;
    if (ctx->power_run && isfinite(ctx->t4a_null_sd) && ctx->t4a_null_sd > 0)
        draws = 0; /* a synthetic derivative is judged against the real pair's null */
    cmp_null_start(&acc, observed);
    {
        struct t4a_draw d[CKS_PERM_MAX_THREADS];
        d[0] = (struct t4a_draw){.s0 = s0, .eb = eb, .subset = subset, .n = n, .db = db, .rot = rot, .sim = sim,
                                 .colsq = colsq, .scratch = scratch};
        err = t4a_null(&rng, draws, d, &acc, diag);
        rot = d[0].rot; /* released with the rest below */
    }
    if (err)
        goto out;
    if (draws == 0) {
        cmp_judge_by_reused_null(t, observed, ctx->t4a_null_mean, ctx->t4a_null_sd, ctx->alpha);
    } else {
        cks_perm_result pr;
        cmp_null_result(&acc, ctx->seed + 4, &pr);
        cmp_set_perm(t, &pr,
                     subset < da ? "B's token geometry in random orthogonal bases (median over a fixed random 256 of "
                                   "A's dimensions)"
                                 : "B's token geometry in random orthogonal bases",
                     ctx->alpha);
    }
    /* T4b/T4c read through the alignment only when T4a is beyond its null and floor
     * (test_t4), and a power check needs them only when the real pair's ran: otherwise the
     * matching below (two da x db x n/2 products, 69 GFLOP at 4096 x 4096) is not computed */
    if (ctx->alignment_only || !cmp_flags(t, ctx->alpha)) {
        t->corroborated = false;
        t->bytes_read = emb->bytes;
        snprintf(t->tensors, sizeof t->tensors, "embedding rows of %zu shared tokens (%zu x %zu hidden dimensions)", n,
                 da, db);
        goto out;
    }
    /* mutual best matches on each half of the shared tokens; kept where both halves agree */
    best_matches(ea, da, eb, db, 0, half, sim, inv_a, inv_b, col_val, best1, sign1, col1);
    best_matches(ea, da, eb, db, half, n - half, sim, inv_a, inv_b, col_val, best2, sign2, col2);
    for (size_t i = 0; i < da; i++) {
        int32_t j = best1[i];
        map[i] = -1;
        sign[i] = 0;
        if (j < 0 || best2[i] != j || sign1[i] != sign2[i] || col1[j] != (int32_t)i || col2[j] != (int32_t)i)
            continue;
        map[i] = j;
        sign[i] = sign1[i];
        kept++;
    }
    snprintf(t->caveats + strlen(t->caveats), sizeof t->caveats - strlen(t->caveats),
             "%zu of %zu dimensions are each other's best match, with one sign, on both halves of the shared tokens; "
             "only those are used by T4b/T4c. ",
             kept, da);
    if (cmp_add_item(t, "dimensions matched one to one on both token halves (fraction)", (double)kept / (double)da,
                     NAN) != CKS_OK) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        goto out;
    }
    t->corroborated = false; /* one tensor type: the alignment alone never decides */
    t->bytes_read = emb->bytes;
    snprintf(t->tensors, sizeof t->tensors, "embedding rows of %zu shared tokens (%zu x %zu hidden dimensions)", n, da,
             db);
    f->map = map;
    f->sign = sign;
    f->map_len = da;
    map = NULL;
    sign = NULL;
out:
    cks_rotation_release(&rot);
    free(sim);
    free(sub);
    free(s0);
    free(colsq);
    free(inv_a);
    free(inv_b);
    free(col_val);
    free(scratch);
    free(dims);
    free(map);
    free(sign);
    free(best1);
    free(best2);
    free(sign1);
    free(sign2);
    free(col1);
    free(col2);
    return err;
}

/* Restrict A to the matched dimensions, and re-index B (permute, flip signs) onto them. */
cks_err cmp_select_columns(const cmp_matrix *src, const int32_t *cols, const int8_t *signs, size_t n,
                           cmp_matrix *dst)
{
    memset(dst, 0, sizeof *dst);
    if (!src->v)
        return CKS_OK;
    dst->v = malloc((src->rows ? src->rows : 1) * n * sizeof *dst->v);
    if (!dst->v)
        return CKS_ERR_NOMEM;
    dst->rows = src->rows;
    dst->cols = n;
    for (size_t r = 0; r < src->rows; r++)
        for (size_t j = 0; j < n; j++)
            dst->v[r * n + j] = src->v[r * src->cols + (size_t)cols[j]] * (signs ? (float)signs[j] : 1.0f);
    return CKS_OK;
}

static double *select_vector(const double *src, const int32_t *idx, size_t n)
{
    double *v;
    if (!src)
        return NULL;
    v = malloc(n * sizeof *v);
    if (!v)
        return NULL;
    for (size_t j = 0; j < n; j++)
        v[j] = src[idx[j]];
    return v;
}

/* A synthetic model view: `src` with hidden columns idx (signs applied to weights only). */
cks_err cmp_reindex_model(const cmp_model *src, const int32_t *idx, const int8_t *signs, size_t n, cmp_model *dst)
{
    cks_err err = CKS_OK;
    memset(dst, 0, sizeof *dst);
    dst->m = src->m;
    dst->synthetic = true;
    dst->n_layers = src->n_layers;
    dst->hidden = n;
    dst->known_arch = src->known_arch;
    dst->bytes_norms = src->bytes_norms;
    dst->bytes_weights = src->bytes_weights;
    dst->bytes_router = src->bytes_router;
    if (src->n_layers <= 0 || !src->layers)
        return CKS_OK;
    dst->layers = calloc((size_t)src->n_layers, sizeof *dst->layers);
    if (!dst->layers)
        return CKS_ERR_NOMEM;
    for (int l = 0; l < src->n_layers && !err; l++) {
        const cmp_layer *S = &src->layers[l];
        cmp_layer *D = &dst->layers[l];
        /* a sign flip of a residual dimension leaves the norm gain as it is (RMSNorm is
         * odd in its input), and flips the columns of the matrices that read it */
        D->attn_norm = select_vector(S->attn_norm, idx, n);
        D->ffn_norm = select_vector(S->ffn_norm, idx, n);
        D->k_total_rows = S->k_total_rows;
        D->v_total_rows = S->v_total_rows;
        if ((S->attn_norm && !D->attn_norm) || (S->ffn_norm && !D->ffn_norm))
            err = CKS_ERR_NOMEM;
        if (!err)
            err = cmp_select_columns(&S->k, idx, signs, n, &D->k);
        if (!err)
            err = cmp_select_columns(&S->v, idx, signs, n, &D->v);
        if (!err)
            err = cmp_select_columns(&S->router, idx, signs, n, &D->router);
    }
    return err;
}

/* T4c: debiased CKA of k (samples = hidden dimensions) along the layer pairing. */
struct cka_ctx {
    size_t n_pairs, n;
    float **x, **y, *scratch;
    size_t *p1, *p2;
    size_t max_p2;
};

static cks_err cka_statistic(void *vctx, const uint32_t *perm, size_t n, double *value, cks_diag *diag)
{
    struct cka_ctx *c = vctx;
    double sum = 0;
    size_t used = 0;
    for (size_t p = 0; p < c->n_pairs; p++) {
        cks_cka_result res;
        const float *y = c->y[p];
        cks_err err;
        if (perm) {
            for (size_t i = 0; i < n; i++)
                memcpy(c->scratch + i * c->p2[p], c->y[p] + (size_t)perm[i] * c->p2[p], c->p2[p] * sizeof(float));
            y = c->scratch;
        }
        err = cks_cka_linear(c->x[p], n, c->p1[p], y, c->p2[p], &res, diag);
        if (err)
            return err;
        if (res.debiased_defined) {
            sum += res.debiased;
            used++;
        }
    }
    *value = used ? sum / (double)used : 0.0;
    return CKS_OK;
}

static void transpose_into(const float *m, size_t rows, size_t cols, float *out);

static float *transpose(const cmp_matrix *m)
{
    size_t count = m->rows * m->cols;
    float *t = malloc((count ? count : 1) * sizeof *t);
    if (t)
        transpose_into(m->v, m->rows, m->cols, t);
    return t;
}

/* The transpose of m clipped at mean +- 3 sd (see cmp_winsorised()). */
static float *transpose_winsorised(const cmp_matrix *m)
{
    cmp_matrix w;
    float *t;
    if (cmp_winsorised(m, &w) != CKS_OK)
        return NULL;
    t = transpose(&w);
    cmp_matrix_free(&w);
    return t;
}

static cks_err test_cka(const cmp_ctx *ctx, const cmp_model *a, const cmp_model *b, cmp_family *f, cks_diag *diag)
{
    cks_err err = CKS_OK;
    cks_test_result *t = cmp_family_add(f, "T4c", "debiased linear CKA of k after alignment", true);
    struct cka_ctx c;
    cks_perm_result pr;
    double cost = 0;
    uint32_t perms;
    size_t strong = 0;

    memset(&c, 0, sizeof c);
    if (!t)
        return CKS_OK;
    t->evidence = CKS_EVIDENCE_INIT; /* set to alignment by test_t4 when the alignment is a real permutation */
    snprintf(t->sources, sizeof t->sources, "weights");
    snprintf(t->statistic_name, sizeof t->statistic_name, "mean debiased CKA of cmp_winsorised k over layer pairs");
    if (!a->layers || !b->layers || f->n_pairs == 0 || a->hidden < 4) {
        cmp_not_run(t, "%s", "no aligned k projections on both sides");
        return CKS_OK;
    }
    c.n = a->hidden;
    c.x = calloc(f->n_pairs, sizeof *c.x);
    c.y = calloc(f->n_pairs, sizeof *c.y);
    c.p1 = calloc(f->n_pairs, sizeof *c.p1);
    c.p2 = calloc(f->n_pairs, sizeof *c.p2);
    if (!c.x || !c.y || !c.p1 || !c.p2) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        goto out;
    }
    for (size_t p = 0; p < f->n_pairs; p++) {
        const cmp_matrix *ka = &a->layers[f->pairs[p].a].k, *kb = &b->layers[f->pairs[p].b].k;
        if (!ka->v || !kb->v || ka->cols != c.n || kb->cols != c.n || ka->rows < 2 || kb->rows < 2)
            continue;
        c.x[c.n_pairs] = transpose_winsorised(ka);
        c.y[c.n_pairs] = transpose_winsorised(kb);
        if (!c.x[c.n_pairs] || !c.y[c.n_pairs]) {
            err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
            goto out;
        }
        c.p1[c.n_pairs] = ka->rows;
        c.p2[c.n_pairs] = kb->rows;
        if (kb->rows > c.max_p2)
            c.max_p2 = kb->rows;
        cost += (double)c.n * (double)(ka->rows + kb->rows) * (double)(ka->rows + kb->rows);
        c.n_pairs++;
    }
    if (c.n_pairs == 0) {
        cmp_not_run(t, "%s", "no k projections of the aligned width on both sides");
        goto out;
    }
    {
        double null_mean, null_sd, observed = 0;
        if (cmp_reused_null(ctx, "T4c", &null_mean, &null_sd)) {
            err = cka_statistic(&c, NULL, c.n, &observed, diag);
            if (!err)
                cmp_judge_by_reused_null(t, observed, null_mean, null_sd, ctx->alpha);
            goto out;
        }
    }
    c.scratch = malloc(c.n * c.max_p2 * sizeof *c.scratch);
    if (!c.scratch) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        goto out;
    }
    /* as many permutations as about 4e9 multiply-adds allow, between 19 and the default */
    perms = cost > 0 ? (uint32_t)fmin((double)ctx->permutations, fmax(19.0, 4e9 / cost)) : 19;
    if (perms > 999)
        perms = 999;
    if (ctx->power_run)
        perms = 19; /* a power check needs the z of a clear effect, not a fine p */
    {
        /* a context per thread, each with its own scratch for the permuted rows (the
         * transposed k matrices are only read) */
        struct cka_ctx cc[CKS_PERM_MAX_THREADS];
        void *cp[CKS_PERM_MAX_THREADS] = {&c};
        unsigned threads = cks_perm_threads(), made = 1;
        for (; made < threads; made++) {
            cc[made] = c;
            cc[made].scratch = malloc(c.n * c.max_p2 * sizeof *c.scratch);
            if (!cc[made].scratch)
                break; /* fewer threads */
            cp[made] = &cc[made];
        }
        err = cks_perm_test_curtailed_mt(c.n, cka_statistic, cp, made, ctx->seed + 5, perms,
                                         cks_perm_stop_after(ctx->alpha, perms), CKS_ALT_GREATER, &pr, diag);
        while (made > 1)
            free(cc[--made].scratch);
    }
    if (err)
        goto out;
    cmp_set_perm(t, &pr, "permutation of B's sample rows (hidden dimensions), jointly over layers", ctx->alpha);
    {
        /* per-layer values, and how many stand out on their own */
        double layer_sd = isfinite(pr.null_sd) ? pr.null_sd * sqrt((double)c.n_pairs) : NAN;
        for (size_t p = 0; p < c.n_pairs; p++) {
            cks_cka_result res;
            char label[64];
            if (cks_cka_linear(c.x[p], c.n, c.p1[p], c.y[p], c.p2[p], &res, NULL) != CKS_OK)
                continue;
            snprintf(label, sizeof label, "layer pair %zu k", p);
            if (cmp_add_item(t, label, res.debiased, NAN) != CKS_OK) {
                err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
                goto out;
            }
            if (layer_sd > 0 && res.debiased >= cmp_floor_value("T4c") && (res.debiased - pr.null_mean) / layer_sd >= CMP_ITEM_Z)
                strong++;
        }
    }
    t->corroborated = strong >= 2;
    t->n_layers = c.n_pairs;
    t->bytes_read = a->bytes_weights + b->bytes_weights;
    snprintf(t->tensors, sizeof t->tensors, "k projections of %zu layer pairs (sampled rows as features, %zu hidden "
             "dimensions as samples)", c.n_pairs, c.n);
out:
    for (size_t p = 0; p < f->n_pairs; p++) { /* calloc'd: unused entries are NULL */
        if (c.x)
            free(c.x[p]);
        if (c.y)
            free(c.y[p]);
    }
    free(c.x);
    free(c.y);
    free(c.p1);
    free(c.p2);
    free(c.scratch);
    return err;
}

/* T4: alignment, then T2/T3 redone and CKA on the aligned models. */
cks_err cmp_test_t4(const cmp_ctx *ctx, const cmp_model *a, const cmp_model *b, const cmp_embed_pair *emb, cmp_family *f,
                    cks_diag *diag)
{
    cks_err err;
    cmp_model aa, bb;
    int32_t *idx_a = NULL, *idx_b = NULL;
    int8_t *sgn = NULL;
    size_t n = 0;

    memset(&aa, 0, sizeof aa);
    memset(&bb, 0, sizeof bb);
    err = test_alignment(ctx, a, b, emb, f, diag);
    if (err)
        return err;
    {
        /* T4b/T4c read through the alignment: run them only on one that is real (beyond its
         * null and its floor) and reproducible on enough dimensions */
        const cks_test_result *t4a = cmp_family_find(f, "T4a");
        size_t kept = 0;
        char why[256];
        for (size_t i = 0; f->map && i < f->map_len; i++)
            kept += f->map[i] >= 0;
        if (ctx->alignment_only) {
            cmp_not_run(cmp_family_add(f, "T4b-norms", "norm gains after alignment", true), "%s",
                        "not needed: the real pair's T4b/T4c did not run");
            cmp_not_run(cmp_family_add(f, "T4b-weights", "index-aligned weights after alignment", true), "%s",
                        "not needed: the real pair's T4b/T4c did not run");
            cmp_not_run(cmp_family_add(f, "T4c", "debiased linear CKA of k after alignment", true), "%s",
                        "not needed: the real pair's T4b/T4c did not run");
            return CKS_OK;
        }
        /* test_alignment leaves no map when T4a ran without flagging */
        if (t4a && t4a->ran && !cmp_flags(t4a, ctx->alpha)) {
            snprintf(why, sizeof why,
                     "no alignment: T4a is not beyond its null and floor (median best |cos| %.3f, rotation null %.3f)",
                     t4a ? t4a->statistic : NAN, t4a ? t4a->null_mean : NAN);
            free(f->map);
            free(f->sign);
            f->map = NULL;
            f->sign = NULL;
            cmp_not_run(cmp_family_add(f, "T4b-norms", "norm gains after alignment", true), "%s", why);
            cmp_not_run(cmp_family_add(f, "T4b-weights", "index-aligned weights after alignment", true), "%s", why);
            cmp_not_run(cmp_family_add(f, "T4c", "debiased linear CKA of k after alignment", true), "%s", why);
            return CKS_OK;
        }
        if (f->map && kept < 16) {
            snprintf(why, sizeof why, "only %zu dimensions match the same way on both halves of the shared tokens", kept);
            cmp_not_run(cmp_family_add(f, "T4b-norms", "norm gains after alignment", true), "%s", why);
            cmp_not_run(cmp_family_add(f, "T4b-weights", "index-aligned weights after alignment", true), "%s", why);
            cmp_not_run(cmp_family_add(f, "T4c", "debiased linear CKA of k after alignment", true), "%s", why);
            return CKS_OK;
        }
    }
    if (!f->map) {
        const cks_test_result *t4a = cmp_family_find(f, "T4a");
        const char *why = t4a ? t4a->why_not : "no alignment";
        cmp_not_run(cmp_family_add(f, "T4b-norms", "norm gains after alignment", true), "%s", why);
        cmp_not_run(cmp_family_add(f, "T4b-weights", "index-aligned weights after alignment", true), "%s", why);
        cmp_not_run(cmp_family_add(f, "T4c", "debiased linear CKA of k after alignment", true), "%s", why);
        return CKS_OK;
    }
    idx_a = malloc(f->map_len * sizeof *idx_a);
    idx_b = malloc(f->map_len * sizeof *idx_b);
    sgn = malloc(f->map_len * sizeof *sgn);
    if (!idx_a || !idx_b || !sgn) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < f->map_len; i++)
        if (f->map[i] >= 0) {
            idx_a[n] = (int32_t)i;
            idx_b[n] = f->map[i];
            sgn[n] = f->sign[i];
            n++;
        }
    err = cmp_reindex_model(a, idx_a, NULL, n, &aa);
    if (!err)
        err = cmp_reindex_model(b, idx_b, sgn, n, &bb);
    if (err) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory aligning the models");
        goto out;
    }
    {
        /* the pairing may change once B is aligned (unequal depths) */
        err = cmp_choose_pairing(&aa, &bb, f, diag);
        if (!err)
            err = cmp_test_norms(ctx, &aa, &bb, f, "T4b-norms", "norm gains after alignment", diag);
        /* not the embedding rows: the alignment was fitted to them, so they agree by construction */
        if (!err)
            err = cmp_test_weights(ctx, &aa, &bb, NULL, f, "T4b-weights", "index-aligned weights after alignment", diag);
        if (!err)
            err = test_cka(ctx, &aa, &bb, f, diag);
    }
    if (!err) {
        /* Through an alignment that is mostly the identity, T4b/T4c read what T3 reads: a
         * shared seed agrees there too. Only a real permutation makes them evidence that
         * needs a deliberate transformation of one model. */
        size_t same = 0;
        for (size_t i = 0; i < n; i++)
            same += idx_a[i] == idx_b[i];
        for (size_t i = 0; i < f->n; i++)
            if (strcmp(f->t[i].id, "T4b-weights") == 0 || strcmp(f->t[i].id, "T4c") == 0) {
                f->t[i].evidence = 2 * same >= n ? CKS_EVIDENCE_INIT : CKS_EVIDENCE_ALIGNMENT;
                snprintf(f->t[i].sources, sizeof f->t[i].sources, "%s", 2 * same >= n ? "weights" : "aligned weights");
            }
    }
out:
    cmp_model_release(&aa);
    cmp_model_release(&bb);
    free(idx_a);
    free(idx_b);
    free(sgn);
    return err;
}

static void transpose_into(const float *m, size_t rows, size_t cols, float *out)
{
    for (size_t r = 0; r < rows; r++)
        for (size_t c = 0; c < cols; c++)
            out[c * rows + r] = m[r * cols + c];
}
