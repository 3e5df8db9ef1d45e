/*
 * compare: T3: index-aligned k/v/router/embedding rows against a row-permutation null.
 * Part of cks_compare (compare.c); shared declarations in compare_internal.h.
 */
#include <math.h>
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
    float lo_a, hi_a, lo_b, hi_b; /* each side's clipping bounds, rounded to float (cmp_clipped) */
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

/* cmp_winsorised()'s bounds for m. */
static void clip_bounds(const cmp_matrix *m, double *lo, double *hi)
{
    double mean, sd;
    cmp_matrix_moments(m, &mean, &sd);
    *hi = mean + WINSOR_SD * sd;
    *lo = mean - WINSOR_SD * sd;
}

/*
 * cmp_winsorised()'s value for v, with its double bounds rounded to float once (lo_f =
 * (float)lo, hi_f = (float)hi): the same float as clipping in double. A float above hi is
 * at least hi_f (no float lies strictly between hi and its nearest float), and a float at
 * most hi is at most hi_f, so both clip exactly the same values to the same (float)hi; the
 * same holds at lo, and a NaN passes both unchanged. In float the loops vectorise: the
 * clipping in double was over half of T3's own time.
 */
float cmp_clipped(float value, float lo_f, float hi_f)
{
    return value > hi_f ? hi_f : value < lo_f ? lo_f : value;
}

/*
 * Moments and Pearson r of the winsorised blocks, without making them: each sum runs over
 * the same values in the same order as over cmp_winsorised() copies, so the moments and r are
 * bit for bit the same.
 */
static void clipped_item_stats(weight_item *it)
{
    const float *a = it->a->v, *b = it->b->v;
    float lo_a = it->lo_a, hi_a = it->hi_a, lo_b = it->lo_b, hi_b = it->hi_b;
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

/*
 * Every item's winsorised rows (A's side weighted by its block, the values clipped on the
 * fly, cmp_clipped(), never as whole copies: 64 MiB less at the peak for 2048 embedding rows
 * of 4096), stacked CROSS_BATCH_ROWS rows at a time into batch_a and batch_b (d columns
 * each); every full batch, and the last, goes to add(ctx, rows).
 */
static void stack_rows(const weight_item *items, size_t n_items, size_t d, float *batch_a, float *batch_b,
                       void (*add)(void *ctx, size_t rows), void *ctx)
{
    size_t batched = 0;
    for (size_t i = 0; i < n_items; i++) {
        const weight_item *it = &items[i];
        if (!isfinite(it->r))
            continue;
        float w = (float)(1.0 / ((double)it->a->rows * (double)d * it->sa * it->sb));
        /* locals: a store into the batches could alias the item's fields and stop the loop vectorising */
        float lo_a = it->lo_a, hi_a = it->hi_a, lo_b = it->lo_b, hi_b = it->hi_b;
        for (size_t r = 0; r < it->a->rows; r++) {
            const float *ra = it->a->v + r * d, *rb = it->b->v + r * d;
            float *ba = batch_a + batched * d, *bb = batch_b + batched * d;
            for (size_t x = 0; x < d; x++) {
                ba[x] = cmp_clipped(ra[x], lo_a, hi_a) * w;
                bb[x] = cmp_clipped(rb[x], lo_b, hi_b);
            }
            if (++batched == CROSS_BATCH_ROWS) {
                add(ctx, batched);
                batched = 0;
            }
        }
    }
    if (batched)
        add(ctx, batched);
}

/*
 * The draws' table. The statistic of a draw is a sum over every row j of one entry of the
 * cross matrix, cross[j][perm(j)]: with the draws' permutations known in advance (the same
 * generator, seed and order cks_perm_test_curtailed uses), only those d entries per draw are
 * computed, each a dot product of a column of A's stacked rows with one of B's
 * (table_add_batch), and the d x d matrix is never made. Its sgemm cost d x d x rows (103
 * GFLOP for the bench pair, 1.6 s of CPU on 2 threads) for the ~70 draws an unrelated pair
 * needs (p near 0.5); 128 draws cost 1/32 of that. The draws come a chunk at a time, doubling
 * up to the table (1,024 draws of 16-bit indices in 8 MiB at d = 4096), the test rerun on
 * each (the same draws give the same values, so a rerun only reaches further). Every value is
 * the whole matrix's up to float rounding (the bench pair's T3 statistic moved by 2e-6 of
 * itself, its p and draws not at all; tests/unit/test_compare_t3.c checks p and draws against
 * a plain double reference). A test that needs more than the table (a small p) runs on the
 * whole matrix, as before.
 */
#define TABLE_MAX_BYTES (8u << 20)
#define TABLE_FIRST_DRAWS 128u
#define TABLE_MIN_DRAWS 100u
#define TABLE_MEAN_R_MAX 0.05

struct draw_table {
    double observed;
    double *sums;          /* sums[t]: draw t's statistic */
    uint16_t *perm_t;      /* perm_t[j * draws + t] = draw t's permutation at j */
    uint32_t draws, next;  /* next: the draw the permutation test asks for next */
    uint32_t ready;        /* draws [0, ready) are drawn and their sums complete */
    size_t dim;
    double constant;
    cks_rng rng;           /* the test's generator, drawn ahead as far as ready */
    uint32_t *perm;
};

static cks_err table_statistic(void *vctx, const uint32_t *perm, size_t n, double *value, cks_diag *diag)
{
    struct draw_table *tb = vctx;
    if (!perm) {
        *value = tb->observed;
        return CKS_OK;
    }
    if (tb->next >= tb->ready) /* more draws than computed: the caller adds more, or goes whole */
        return cks_fail(diag, CKS_ERR_NEED_MORE, "T3: the test needs more than the table's %u draws", tb->ready);
    /* the test must be drawing what the table was made from: check both ends of the draw */
    if (n != tb->dim || perm[0] != tb->perm_t[tb->next] ||
        perm[n - 1] != tb->perm_t[(n - 1) * tb->draws + tb->next])
        return cks_fail(diag, CKS_ERR_INVALID_ARG, "T3: permutation %u is not the one its table was made for", tb->next);
    *value = tb->sums[tb->next++];
    return CKS_OK;
}

/* How many draws the table holds for d (0: no table, the whole matrix is used). */
static uint32_t table_draws(size_t d, uint32_t permutations)
{
    uint64_t fit = d && d <= 65536 ? TABLE_MAX_BYTES / (d * sizeof(uint16_t)) : 0;
    if (fit > permutations)
        fit = permutations;
    return fit >= TABLE_MIN_DRAWS ? (uint32_t)fit : 0;
}

/* The draws' permutations, as cks_perm_test_curtailed will draw them, transposed. */
static cks_err table_make(struct draw_table *tb, size_t d, uint32_t draws, uint64_t seed, double constant)
{
    memset(tb, 0, sizeof *tb);
    tb->dim = d;
    tb->draws = draws;
    tb->observed = constant;
    tb->constant = constant;
    tb->sums = malloc((draws ? draws : 1) * sizeof *tb->sums);
    tb->perm_t = malloc(d * (draws ? draws : 1) * sizeof *tb->perm_t);
    tb->perm = malloc(d * sizeof *tb->perm);
    if (!tb->sums || !tb->perm_t || !tb->perm)
        return CKS_ERR_NOMEM;
    cks_rng_seed(&tb->rng, seed);
    return CKS_OK;
}


/*
 * A batch's dot products of a column of A's side with a column of B's side, both stored
 * transposed (a column's `stride` rows contiguous, zero-padded to a multiple of 16). Sixteen
 * lanes, each summed in row order, then the lanes in order: the same float on any build.
 */
static float column_dot(const float *x, const float *y, size_t stride)
{
    float lane[16] = {0};
    for (size_t i = 0; i < stride; i += 16)
        for (size_t l = 0; l < 16; l++)
            lane[l] += x[i + l] * y[i + l];
    float s = 0;
    for (size_t l = 0; l < 16; l++)
        s += lane[l];
    return s;
}

/* dst (d x stride) = src (rows x d) transposed, rows [rows, stride) zero; in 16 x 16 tiles */
static void transpose_rows(const float *src, size_t rows, size_t d, size_t stride, float *dst)
{
    for (size_t j0 = 0; j0 < d; j0 += 16)
        for (size_t r0 = 0; r0 < stride; r0 += 16)
            for (size_t j = j0; j < j0 + 16 && j < d; j++)
                for (size_t r = r0; r < r0 + 16; r++)
                    dst[j * stride + r] = r < rows ? src[r * d + j] : 0.0f;
}

/*
 * One batch of stacked rows into draws [t0, t1) of the table (and the observed value when
 * t0 is 0). A draw's statistic is a sum over j of one entry of the cross matrix,
 * cross[j][perm(j)], and each entry is a dot product of column j of A's rows with column
 * perm(j) of B's: only those d entries per draw are computed, never the d x d matrix.
 */
static void table_add_batch(struct draw_table *tb, const float *at, const float *bt, size_t stride, uint32_t t0,
                            uint32_t t1, double scale)
{
    size_t d = tb->dim;
    for (size_t j = 0; j < d; j++) {
        const float *aj = at + j * stride;
        const uint16_t *pj = tb->perm_t + j * tb->draws;
        if (t0 == 0)
            tb->observed += (double)column_dot(aj, bt + j * stride, stride) * scale;
        for (uint32_t t = t0; t < t1; t++)
            tb->sums[t] += (double)column_dot(aj, bt + (size_t)pj[t] * stride, stride) * scale;
    }
}

static void table_release(struct draw_table *tb)
{
    free(tb->sums);
    free(tb->perm_t);
    free(tb->perm);
    memset(tb, 0, sizeof *tb);
}

struct cross_fill {
    const float *batch_a, *batch_b;
    size_t d;
    float *cross;
};

/* cross += batch_a^T batch_b */
static void cross_add(void *vctx, size_t rows)
{
    struct cross_fill *c = vctx;
    cks_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)c->d, (int)c->d, (int)rows, 1.0f, c->batch_a, (int)c->d,
              c->batch_b, (int)c->d, 1.0f, c->cross, (int)c->d);
}

/* The d x d cross matrix, scaled by 1 / used: one sgemm per batch of stacked rows. */
static void cross_rows(const cmp_ctx *ctx, const weight_item *items, size_t n_items, size_t d, size_t used,
                       float *batch_a, float *batch_b, float *cross)
{
    struct cross_fill c = {batch_a, batch_b, d, cross};
    memset(cross, 0, d * d * sizeof *cross);
    /* the cross matrix's products are large (d x d x 512): the caller's BLAS threads pay off
     * there, unlike on the small products elsewhere */
    if (ctx->blas_threads > 1)
        cks_blas_set_threads(ctx->blas_threads);
    stack_rows(items, n_items, d, batch_a, batch_b, cross_add, &c);
    cks_sscal((int)(d * d), (float)(1.0 / (double)used), cross, 1);
    cks_blas_set_threads(1);
}

struct table_fill {
    struct draw_table *tb;
    const float *batch_a, *batch_b;
    float *at, *bt;        /* the batch transposed */
    uint32_t t0, t1;
    double scale;
};

static void table_add(void *vctx, size_t rows)
{
    struct table_fill *f = vctx;
    size_t d = f->tb->dim, stride = (rows + 15) & ~(size_t)15;
    transpose_rows(f->batch_a, rows, d, stride, f->at);
    transpose_rows(f->batch_b, rows, d, stride, f->bt);
    table_add_batch(f->tb, f->at, f->bt, stride, f->t0, f->t1, f->scale);
}

/* The table's draws [ready, upto): their permutations, then their sums from every item's rows. */
static void table_extend(struct draw_table *tb, uint32_t upto, const weight_item *items, size_t n_items, size_t used,
                         float *batch_a, float *batch_b, float *at, float *bt)
{
    struct table_fill f = {tb, batch_a, batch_b, at, bt, tb->ready, upto, 1.0 / (double)used};
    for (uint32_t t = tb->ready; t < upto; t++) {
        cks_rng_permutation(&tb->rng, tb->perm, tb->dim);
        for (size_t j = 0; j < tb->dim; j++)
            tb->perm_t[j * tb->draws + t] = (uint16_t)tb->perm[j];
        tb->sums[t] = tb->constant;
    }
    stack_rows(items, n_items, tb->dim, batch_a, batch_b, table_add, &f);
    tb->ready = upto;
}

cks_err cmp_test_weights(const cmp_ctx *ctx, const cmp_model *a, const cmp_model *b, const cmp_embed_pair *emb,
                         cmp_family *f, const char *id, const char *name, cks_diag *diag)
{
    cks_err err = CKS_OK;
    cks_test_result *t = cmp_family_add(f, id, name, true);
    weight_item *items = NULL;
    size_t n_items = 0, cap, d = a->hidden, strong = 0, used = 0;
    float *cross = NULL, *batch_a = NULL, *batch_b = NULL;
    uint32_t table_size;
    double constant = 0, sum_r = 0, null_mean, null_sd;
    bool power_check, whole;
    struct draw_table table = {0};
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
    /* each item: its winsorised r (clipped on the fly, as cross_rows does) */
    for (size_t i = 0; i < n_items; i++) {
        weight_item *it = &items[i];
        size_t n = it->a->rows * d;
        double lo_a, hi_a, lo_b, hi_b;
        clip_bounds(it->a, &lo_a, &hi_a);
        clip_bounds(it->b, &lo_b, &hi_b);
        it->lo_a = (float)lo_a;
        it->hi_a = (float)hi_a;
        it->lo_b = (float)lo_b;
        it->hi_b = (float)hi_b;
        clipped_item_stats(it);
        if (!isfinite(it->r))
            continue;
        used++;
        sum_r += it->r;
        if (it->r >= cmp_floor_value(id) && it->r * sqrt((double)n - 1.0) >= CMP_ITEM_Z)
            strong++;
        constant -= it->ma * it->mb / (it->sa * it->sb);
        if (cmp_add_item(t, it->label, it->r, NAN) != CKS_OK) {
            err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
            goto out;
        }
    }
    if (used == 0) {
        cmp_not_run(t, "%s", "every candidate weight block is constant");
        goto out;
    }
    if (power_check) {
        /* a power check: the statistic itself against the real pair's null, no cross matrix */
        cmp_judge_by_reused_null(t, sum_r / (double)used, null_mean, null_sd, ctx->alpha);
        goto out;
    }
    /* the cross matrix (cross += Za^T Zb / N over every item's rows, so the statistic of any
     * column permutation is a trace): a block of rows at a time with the draws' table, or whole */
    batch_a = malloc(CROSS_BATCH_ROWS * d * sizeof *batch_a);
    batch_b = malloc(CROSS_BATCH_ROWS * d * sizeof *batch_b);
    if (!batch_a || !batch_b) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory for the %zu x %zu cross matrix", d, d);
        goto out;
    }
    /* a pair whose blocks already correlate (a derivative: mean r near 1) will not stop early,
     * and would only pay for the blocks twice: it goes whole at once */
    table_size = sum_r / (double)used < TABLE_MEAN_R_MAX ? table_draws(d, ctx->permutations) : 0;
    whole = table_size == 0;
    if (!whole) {
        /* the draws a chunk at a time, doubling: an unrelated pair stops within the first
         * (p near 0.5: ~70 draws), and each chunk costs its draws x d x rows products */
        float *at = malloc(CROSS_BATCH_ROWS * d * sizeof *at), *bt = malloc(CROSS_BATCH_ROWS * d * sizeof *bt);
        if (!at || !bt || table_make(&table, d, table_size, ctx->seed + 1, constant / (double)used) != CKS_OK) {
            free(at);
            free(bt);
            err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory for the %zu x %zu cross matrix", d, d);
            goto out;
        }
        do {
            uint32_t upto = table.ready ? 2 * table.ready : TABLE_FIRST_DRAWS;
            upto = upto < table.draws ? upto : table.draws;
            table_extend(&table, upto, items, n_items, used, batch_a, batch_b, at, bt);
            table.next = 0;
            err = cks_perm_test_curtailed(d, table_statistic, &table, ctx->seed + 1, ctx->permutations,
                                          cks_perm_stop_after(ctx->alpha, ctx->permutations), CKS_ALT_GREATER, &pr,
                                          diag);
        } while (err == CKS_ERR_NEED_MORE && table.ready < table.draws);
        free(at);
        free(bt);
        /* a test that does not stop within the table's draws runs on the whole matrix, as before */
        whole = err == CKS_ERR_NEED_MORE;
        table_release(&table);
    }
    if (whole) {
        cross = malloc(d * d * sizeof *cross);
        if (!cross) {
            err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory for the %zu x %zu cross matrix", d, d);
            goto out;
        }
        cross_rows(ctx, items, n_items, d, used, batch_a, batch_b, cross);
        c.d = cross;
        c.dim = d;
        c.constant = constant / (double)used;
        err = cks_perm_test_curtailed(d, cross_statistic, &c, ctx->seed + 1, ctx->permutations,
                                      cks_perm_stop_after(ctx->alpha, ctx->permutations), CKS_ALT_GREATER, &pr, diag);
    }
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
    table_release(&table);
    free(items);
    free(cross);
    free(batch_a);
    free(batch_b);
    return err;
}
