/*
 * compare: checkpoints with no known architecture (DESIGN.md §8, "for checkpoints with no
 * known architecture"), rebuilt so that shared structure cannot pass for derivation.
 *
 *   G       name- and shape-matched tensors that training writes from a constant (norm gains,
 *           norm biases, running statistics): the median over tensors of their Spearman
 *           correlation. Agreement here is what training wrote.
 *   G-init  the same over tensors a random initialisation fixes (weights, heads): agreement
 *           here may be a shared seed, so it is reported, never decisive.
 *   G-rows  the units (rows, or columns) of 2-D tensors matched one to one: finds a copy whose
 *           neurons were shuffled. Its null rotates B's units within their own span, which
 *           keeps the subspace a shared base or task imposes on both models and removes only
 *           a one-to-one correspondence; the column shuffle it replaces destroyed that
 *           subspace, so independent adapters of one base "matched" at z ~ 40.
 *
 * LoRA factors are left to the adapter tests (compare_lora.c): factors are defined only up to
 * an r x r change of basis, so they are compared as the updates they multiply to.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ckptscope/blas.h"
#include "ckptscope/decode.h"
#include "ckptscope/lap.h"
#include "ckptscope/metrics.h"
#include "ckptscope/stats.h"
#include "compare_internal.h"

#define G_MIN_ELEMENTS 64u      /* a correlation over fewer values says little */
#define G_TOTAL_SAMPLE (1u << 22) /* rank-transformed values kept over all tensors of one test */
#define G_DRAWS 199u
#define G_ITEM_Z 4.0
#define SYNTH_NOISE 1.0         /* the power check's derivative: noise sd = the values' sd (r ~ 0.7) */

#define ROWS_MAX 512u           /* one assignment per draw: n^3 work, kept to seconds */
#define ROWS_MIN_WIDTH 16u
#define ROWS_MAX_TESTS 64u
#define ROWS_DRAWS 19u
#define Z_RULE 6.0

typedef struct g_tensor {
    const cmp_raw *ra, *rb;
    size_t n;        /* values kept (a seeded sample of the tensor when it is large) */
    double *za, *zb; /* standardised mid-ranks: r = za . zb */
    double r;
} g_tensor;

static const cmp_raw *raw_by_name(const cmp_model *m, const char *name)
{
    const cks_ckpt_tensor *t = cks_ckpt_find(m->m->ckpt, name);
    for (size_t j = 0; t && j < m->n_raw; j++)
        if (m->raw[j].tensor == t)
            return &m->raw[j];
    return NULL;
}

static bool comparable(const cmp_raw *ra, const cmp_raw *rb)
{
    const cks_tensor_info *ia = ra->tensor->info, *ib = rb->tensor->info;
    if (!ra->bytes || !rb->bytes || ra->low_information || rb->low_information || ia->nelements != ib->nelements ||
        ia->ndim != ib->ndim || !cks_dtype_is_float(ia->dtype) || !cks_dtype_is_float(ib->dtype) ||
        !cks_decode_supported(ia->dtype) || !cks_decode_supported(ib->dtype))
        return false;
    for (uint32_t d = 0; d < ia->ndim; d++)
        if (ia->shape[d] != ib->shape[d])
            return false;
    return true;
}

/* Centre and scale v to unit length; false when it is constant. */
static bool standardise(double *v, size_t n)
{
    double mean = 0, ss = 0;
    for (size_t i = 0; i < n; i++)
        mean += v[i];
    mean /= (double)n;
    for (size_t i = 0; i < n; i++) {
        v[i] -= mean;
        ss += v[i] * v[i];
    }
    if (!(ss > 0))
        return false;
    for (size_t i = 0; i < n; i++)
        v[i] /= sqrt(ss);
    return true;
}

static double dot(const double *x, const double *y, size_t n)
{
    double s = 0;
    for (size_t i = 0; i < n; i++)
        s += x[i] * y[i];
    return s;
}

/*
 * Decode `count` values of a tensor (the positions idx, or all when idx is NULL) into out;
 * with noise_rng set, add Gaussian noise of the values' sd (the power check's derivative).
 */
static cks_err decode_sample(const cmp_raw *r, const uint32_t *idx, size_t count, double *out, cks_rng *noise_rng,
                             cks_diag *diag)
{
    cks_err err = CKS_OK;
    size_t n = (size_t)r->tensor->info->nelements;
    double *all = idx ? malloc(n * sizeof *all) : out;
    if (!all)
        return cks_fail(diag, CKS_ERR_NOMEM, "out of memory decoding %s", r->tensor->info->name);
    err = cks_decode_f64(r->tensor->info->dtype, r->bytes, n, all, NULL, diag);
    if (!err && idx)
        for (size_t i = 0; i < count; i++)
            out[i] = all[idx[i]];
    if (all != out)
        free(all);
    for (size_t i = 0; i < count && !err; i++)
        if (!isfinite(out[i]))
            err = CKS_ERR_NUMERIC; /* NaN/Inf: the caller skips the tensor */
    if (!err && noise_rng) {
        double mean = 0, ss = 0;
        for (size_t i = 0; i < count; i++)
            mean += out[i];
        mean /= (double)count;
        for (size_t i = 0; i < count; i++)
            ss += (out[i] - mean) * (out[i] - mean);
        for (size_t i = 0; i < count; i++)
            out[i] += SYNTH_NOISE * sqrt(ss / (double)count) * cks_rng_normal(noise_rng);
    }
    return err;
}

/* za/zb of one tensor pair: standardised mid-ranks of the same sampled positions. */
static cks_err prepare(g_tensor *g, const uint32_t *idx, cks_rng *noise_rng, cks_diag *diag)
{
    cks_err err;
    double *ra = malloc(g->n * sizeof *ra), *rb = malloc(g->n * sizeof *rb);
    g->za = malloc(g->n * sizeof *g->za);
    g->zb = malloc(g->n * sizeof *g->zb);
    if (!ra || !rb || !g->za || !g->zb) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        goto out;
    }
    err = decode_sample(g->ra, idx, g->n, ra, NULL, diag);
    if (!err)
        err = decode_sample(noise_rng ? g->ra : g->rb, idx, g->n, rb, noise_rng, diag);
    if (!err)
        err = cks_mid_ranks_f64(ra, g->n, g->za, diag);
    if (!err)
        err = cks_mid_ranks_f64(rb, g->n, g->zb, diag);
    if (!err && (!standardise(g->za, g->n) || !standardise(g->zb, g->n)))
        err = CKS_ERR_NUMERIC;
    if (!err)
        g->r = dot(g->za, g->zb, g->n);
out:
    free(ra);
    free(rb);
    return err;
}

static void g_release(g_tensor *g, size_t n)
{
    for (size_t i = 0; g && i < n; i++) {
        free(g[i].za);
        free(g[i].zb);
    }
    free(g);
}

/* The median of the tensors' r with every B permuted (perm scratch: the largest n). */
static double permuted_median(const g_tensor *g, size_t k, cks_rng *rng, uint32_t *perm, double *rs)
{
    for (size_t i = 0; i < k; i++) {
        double s = 0;
        cks_rng_permutation(rng, perm, g[i].n);
        for (size_t j = 0; j < g[i].n; j++)
            s += g[i].za[j] * g[i].zb[perm[j]];
        rs[i] = s;
    }
    return cks_median_inplace(rs, k);
}

static cks_err one_class(const cmp_ctx *ctx, const cmp_model *a, const cmp_model *b, cmp_family *f,
                         cks_evidence cls, cks_diag *diag)
{
    cks_err err = CKS_OK;
    bool trained = cls == CKS_EVIDENCE_TRAINED;
    cks_test_result *t = cmp_family_add(f, trained ? "G" : "G-init",
                                        trained ? "name-matched tensors trained from a constant (Spearman)"
                                                : "name-matched tensors fixed by initialisation (Spearman)",
                                        true);
    g_tensor *g = NULL;
    size_t k = 0, unusable = 0, per_tensor, largest = 0, strong = 0;
    uint32_t *idx = NULL, *perm = NULL;
    double *rs = NULL, observed;
    uint64_t bytes = 0;
    cks_rng rng;
    cks_perm_result pr;
    cmp_null_acc acc;

    if (!t)
        return CKS_OK;
    t->evidence = cls;
    snprintf(t->sources, sizeof t->sources, trained ? "tensors (trained)" : "tensors (initialisation)");
    snprintf(t->statistic_name, sizeof t->statistic_name, "median Spearman over name-matched tensors");
    g = calloc(a->n_raw ? a->n_raw : 1, sizeof *g);
    if (!g) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < a->n_raw; i++) {
        const cmp_raw *ra = &a->raw[i], *rb;
        if (cmp_is_lora_factor(ra) || cmp_init_class(ra) != cls)
            continue;
        rb = raw_by_name(b, ra->tensor->info->name);
        if (!rb || rb->tensor->info->nelements != ra->tensor->info->nelements)
            continue;
        if (!comparable(ra, rb) || ra->tensor->info->nelements < G_MIN_ELEMENTS) {
            unusable++;
            continue;
        }
        g[k].ra = ra;
        g[k].rb = rb;
        g[k].n = (size_t)ra->tensor->info->nelements;
        k++;
    }
    if (k == 0) {
        cmp_not_run(t, "%s",
                    unusable ? "name-matched tensors of this kind exist, but each is constant, few-valued, tiny or "
                               "NaN/Inf on one side"
                             : trained ? "no name- and shape-matched tensor trained from a constant (norm gains, "
                                         "norm biases) on both sides"
                                       : "no name- and shape-matched float tensor on both sides");
        goto out;
    }
    /* bounded work: at most G_TOTAL_SAMPLE ranked values in all, the same positions both sides */
    per_tensor = G_TOTAL_SAMPLE / k;
    if (per_tensor < 4096)
        per_tensor = 4096;
    cks_rng_seed(&rng, ctx->seed + 7);
    for (size_t i = 0; i < k && !err; i++) {
        size_t n = g[i].n;
        if (n > per_tensor) {
            uint32_t *all = malloc(n * sizeof *all);
            if (!all) {
                err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
                break;
            }
            cks_rng_permutation(&rng, all, n);
            idx = all;
            g[i].n = per_tensor;
        }
        err = prepare(&g[i], idx, NULL, diag);
        free(idx);
        idx = NULL;
        if (err == CKS_ERR_NUMERIC) { /* NaN/Inf or constant after all: leave it out */
            free(g[i].za);
            free(g[i].zb);
            g[i] = g[--k];
            memset(&g[k], 0, sizeof g[k]);
            i--;
            unusable++;
            err = CKS_OK;
            continue;
        }
        if (!err) {
            bytes += g[i].ra->len + g[i].rb->len;
            if (g[i].n > largest)
                largest = g[i].n;
        }
    }
    if (err)
        goto out;
    if (k == 0) {
        cmp_not_run(t, "%s", "every name-matched tensor of this kind is constant or NaN/Inf on one side");
        goto out;
    }
    perm = malloc(largest * sizeof *perm);
    rs = malloc(k * sizeof *rs);
    if (!perm || !rs) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < k; i++) {
        rs[i] = g[i].r;
        if (cmp_add_item(t, g[i].ra->tensor->info->name, g[i].r, NAN) != CKS_OK) {
            err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
            goto out;
        }
    }
    observed = cks_median_inplace(rs, k);
    /* null: every tensor's values of B shuffled (independently per tensor), the median redone */
    cks_rng_seed(&rng, ctx->seed + 8);
    cmp_null_start(&acc, observed);
    for (uint32_t d = 0; d < G_DRAWS; d++)
        cmp_null_add(&acc, permuted_median(g, k, &rng, perm, rs));
    cmp_null_result(&acc, ctx->seed + 8, &pr);
    cmp_set_perm(t, &pr, "values of each of B's tensors shuffled, the median redone", ctx->alpha);
    cmp_apply_floor(t);
    for (size_t i = 0; i < k; i++)
        if (g[i].r * sqrt((double)g[i].n - 1.0) >= G_ITEM_Z && g[i].r >= t->floor)
            strong++;
    t->corroborated = strong >= 2;
    t->bytes_read = bytes;
    snprintf(t->tensors, sizeof t->tensors, "%zu name- and shape-matched tensors (%s)%s", k,
             trained ? "trained from a constant" : "fixed by initialisation",
             unusable ? "; some skipped (constant, tiny or NaN/Inf)" : "");
    /* Power: A against A plus noise (r ~ 0.7 per tensor), judged against this null. */
    {
        double syn;
        cks_rng noise;
        g_tensor *sg = calloc(k, sizeof *sg);
        if (!sg) {
            err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
            goto out;
        }
        cks_rng_seed(&noise, ctx->seed + 11);
        for (size_t i = 0; i < k && !err; i++) {
            sg[i].ra = g[i].ra;
            sg[i].rb = g[i].ra;
            sg[i].n = g[i].n == (size_t)g[i].ra->tensor->info->nelements ? g[i].n : 0;
            if (sg[i].n == 0) { /* a sampled tensor: redo the sample positions */
                uint32_t *all = malloc((size_t)g[i].ra->tensor->info->nelements * sizeof *all);
                cks_rng srng;
                if (!all) {
                    err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
                    break;
                }
                cks_rng_seed(&srng, ctx->seed + 12 + i);
                cks_rng_permutation(&srng, all, (size_t)g[i].ra->tensor->info->nelements);
                sg[i].n = g[i].n;
                err = prepare(&sg[i], all, &noise, diag);
                free(all);
            } else {
                err = prepare(&sg[i], NULL, &noise, diag);
            }
            rs[i] = sg[i].r;
        }
        if (!err) {
            syn = cks_median_inplace(rs, k);
            t->power = syn - t->null_mean >= t->floor && t->null_sd > 0 && (syn - t->null_mean) / t->null_sd >= Z_RULE
                           ? 1
                           : 0;
            snprintf(t->power_note, sizeof t->power_note, "%s a synthetic derivative of A (A plus noise, median %.3f, z %.1f)",
                     t->power ? "flags" : "did not flag", syn, t->null_sd > 0 ? (syn - t->null_mean) / t->null_sd : NAN);
        } else if (err == CKS_ERR_NUMERIC) {
            err = CKS_OK;
        }
        g_release(sg, k);
    }
out:
    g_release(g, k);
    free(idx);
    free(perm);
    free(rs);
    return err;
}

cks_err cmp_test_generic(const cmp_ctx *ctx, const cmp_model *a, const cmp_model *b, cmp_family *f, cks_diag *diag)
{
    cks_err err = one_class(ctx, a, b, f, CKS_EVIDENCE_TRAINED, diag);
    if (!err)
        err = one_class(ctx, a, b, f, CKS_EVIDENCE_INIT, diag);
    return err;
}

/* ---- G-rows ---- */

static void unit_rows(float *m, size_t rows, size_t cols)
{
    for (size_t r = 0; r < rows; r++) {
        double ss = 0;
        for (size_t c = 0; c < cols; c++)
            ss += (double)m[r * cols + c] * m[r * cols + c];
        for (size_t c = 0; c < cols && ss > 0; c++)
            m[r * cols + c] = (float)(m[r * cols + c] / sqrt(ss));
    }
}

static void transpose_into(const float *m, size_t rows, size_t cols, float *out)
{
    for (size_t r = 0; r < rows; r++)
        for (size_t c = 0; c < cols; c++)
            out[c * rows + r] = m[r * cols + c];
}

/* Median matched |cos| of the one-to-one assignment of x's rows to y's (unit rows), and how
 * many rows are matched to themselves. */
static cks_err match_score(const float *x, const float *y, size_t rows, size_t cols, float *sim, int32_t *map,
                           int8_t *sign, double *scratch, double *score, size_t *identity, cks_diag *diag)
{
    cks_err err;
    cks_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)rows, (int)rows, (int)cols, 1.0f, x, (int)cols, y,
              (int)cols, 0.0f, sim, (int)rows);
    err = cks_lap_max_abs(sim, rows, rows, map, sign, NULL, diag);
    if (err)
        return err;
    *identity = 0;
    for (size_t i = 0; i < rows; i++) {
        scratch[i] = map[i] >= 0 ? fabs((double)sim[i * rows + (size_t)map[i]]) : 0.0;
        *identity += map[i] == (int32_t)i;
    }
    *score = cks_median_inplace(scratch, rows);
    return CKS_OK;
}

typedef struct rows_outcome {
    double observed, mean, sd, z, p;
    uint32_t beat;
    size_t identity;
} rows_outcome;

/*
 * x, y: rows x cols, unit rows. Null: y's rows replaced by a random orthogonal mix of
 * themselves (R y: the span of B's units, the subspace, is kept exactly).
 */
static cks_err rows_test(const float *x, const float *y, size_t rows, size_t cols, uint64_t seed, rows_outcome *o,
                         cks_diag *diag)
{
    cks_err err = CKS_OK;
    float *sim = malloc(rows * rows * sizeof *sim), *yt = malloc(rows * cols * sizeof *yt);
    float *ym = malloc(rows * cols * sizeof *ym);
    int32_t *map = malloc(rows * sizeof *map);
    int8_t *sign = malloc(rows * sizeof *sign);
    double *scratch = malloc(rows * sizeof *scratch);
    size_t ident;
    cks_rng rng;
    cks_rotation rot;
    cmp_null_acc acc;

    memset(&rot, 0, sizeof rot);
    memset(o, 0, sizeof *o);
    if (!sim || !yt || !ym || !map || !sign || !scratch) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        goto out;
    }
    err = match_score(x, y, rows, cols, sim, map, sign, scratch, &o->observed, &o->identity, diag);
    cmp_null_start(&acc, o->observed);
    cks_rng_seed(&rng, seed);
    transpose_into(y, rows, cols, yt); /* cols x rows: each row of yt is one coordinate across B's units */
    for (uint32_t k = 0; k < ROWS_DRAWS && !err; k++) {
        double sc;
        float *mixed = malloc(rows * cols * sizeof *mixed);
        if (!mixed) {
            err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
            break;
        }
        memcpy(mixed, yt, rows * cols * sizeof *mixed);
        cks_rotation_release(&rot);
        err = cks_rotation_draw(&rng, rows, &rot, diag);
        if (!err)
            err = cks_rotation_apply(&rot, mixed, cols, diag);
        if (!err) {
            transpose_into(mixed, cols, rows, ym);
            unit_rows(ym, rows, cols);
            err = match_score(x, ym, rows, cols, sim, map, sign, scratch, &sc, &ident, diag);
        }
        free(mixed);
        if (!err)
            cmp_null_add(&acc, sc);
    }
    if (!err) {
        cks_perm_result pr;
        cmp_null_result(&acc, seed, &pr);
        o->mean = pr.null_mean;
        o->sd = pr.null_sd;
        o->beat = pr.at_least_as_extreme;
        o->z = o->sd > 0 ? pr.z : (o->observed > o->mean + 1e-9 ? INFINITY : 0);
        o->p = pr.p_value;
    }
out:
    cks_rotation_release(&rot);
    free(sim);
    free(yt);
    free(ym);
    free(map);
    free(sign);
    free(scratch);
    return err;
}

cks_err cmp_test_generic_rows(const cmp_ctx *ctx, const cmp_model *a, const cmp_model *b, cmp_family *f,
                              cks_diag *diag)
{
    cks_err err = CKS_OK;
    cks_test_result *t = cmp_family_add(f, "G-rows", "units of name-matched 2-D tensors matched one to one", true);
    size_t n_tests = 0, passing = 0, passing_permuted = 0;
    double floor_value;
    uint64_t bytes = 0;
    bool have_best = false, power_done = false;
    rows_outcome best;

    if (!t)
        return CKS_OK;
    memset(&best, 0, sizeof best);
    t->evidence = CKS_EVIDENCE_ALIGNMENT;
    snprintf(t->sources, sizeof t->sources, "units");
    snprintf(t->statistic_name, sizeof t->statistic_name, "tensors whose units find one-to-one twins");
    t->effect = NAN;
    cmp_apply_floor(t);
    floor_value = t->floor;
    for (size_t i = 0; i < a->n_raw && !err; i++) {
        const cmp_raw *ra = &a->raw[i], *rb;
        const cks_tensor_info *ia = ra->tensor->info;
        size_t rows, cols;
        float *x = NULL, *y = NULL, *xt = NULL, *yt = NULL;
        bool finite = true, tensor_passes = false, tensor_permuted = false;
        if (cmp_is_lora_factor(ra) || ia->ndim != 2)
            continue;
        rb = raw_by_name(b, ia->name);
        if (!rb || !comparable(ra, rb))
            continue;
        rows = (size_t)ia->shape[0];
        cols = (size_t)ia->shape[1];
        if (rows < 4 || cols < 4 || rows * cols > (64u << 20))
            continue;
        x = malloc(rows * cols * sizeof *x);
        y = malloc(rows * cols * sizeof *y);
        xt = malloc(rows * cols * sizeof *xt);
        yt = malloc(rows * cols * sizeof *yt);
        if (!x || !y || !xt || !yt)
            err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        if (!err)
            err = cks_decode_f32(ia->dtype, ra->bytes, rows * cols, x, NULL, diag);
        if (!err)
            err = cks_decode_f32(rb->tensor->info->dtype, rb->bytes, rows * cols, y, NULL, diag);
        for (size_t k = 0; !err && k < rows * cols && finite; k++)
            finite = isfinite(x[k]) && isfinite(y[k]);
        if (!err && finite) {
            transpose_into(x, rows, cols, xt);
            transpose_into(y, rows, cols, yt);
            for (int axis = 0; axis < 2 && !err; axis++) {
                size_t n = axis ? cols : rows, m = axis ? rows : cols;
                float *xx = axis ? xt : x, *yy = axis ? yt : y;
                rows_outcome o;
                char label[200];
                bool passes;
                if (n > ROWS_MAX || m < ROWS_MIN_WIDTH || n_tests >= ROWS_MAX_TESTS)
                    continue;
                unit_rows(xx, n, m);
                unit_rows(yy, n, m);
                err = rows_test(xx, yy, n, m, ctx->seed + 31 + 2 * i + (size_t)axis, &o, diag);
                if (err)
                    break;
                n_tests++;
                passes = o.z >= Z_RULE && o.beat == 0 && o.observed - o.mean >= floor_value;
                if (passes) {
                    tensor_passes = true;
                    tensor_permuted = tensor_permuted || 2 * o.identity < n;
                }
                if (!have_best || o.z > best.z) {
                    best = o;
                    have_best = true;
                }
                snprintf(label, sizeof label, "%.140s %s (median matched |cos| %.3f, null %.3f)", ia->name,
                         axis ? "columns" : "rows", o.observed, o.mean);
                if (cmp_add_item(t, label, o.z, NAN) != CKS_OK)
                    err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
                if (!err && !power_done) {
                    /* power: A's own units, shuffled and noised (r ~ 0.7), against this null */
                    float *noisy = malloc(n * m * sizeof *noisy);
                    uint32_t *perm = malloc(n * sizeof *perm);
                    cks_rng rng;
                    rows_outcome po;
                    if (!noisy || !perm) {
                        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
                    } else {
                        cks_rng_seed(&rng, ctx->seed + 13);
                        cks_rng_permutation(&rng, perm, n);
                        for (size_t r = 0; r < n; r++)
                            for (size_t c = 0; c < m; c++)
                                noisy[r * m + c] = xx[(size_t)perm[r] * m + c] +
                                                   (float)(SYNTH_NOISE * cks_rng_normal(&rng) / sqrt((double)m));
                        unit_rows(noisy, n, m);
                        err = rows_test(xx, noisy, n, m, ctx->seed + 14, &po, diag);
                        if (!err) {
                            double z = o.sd > 0 ? (po.observed - o.mean) / o.sd : NAN;
                            t->power = isfinite(z) && z >= Z_RULE && po.observed - o.mean >= floor_value ? 1 : 0;
                            snprintf(t->power_note, sizeof t->power_note,
                                     "%s a shuffled, noisy copy of %.80s (median |cos| %.3f against a null of %.3f, z %.1f)",
                                     t->power ? "flags" : "did not flag", ia->name, po.observed, o.mean, z);
                        }
                    }
                    free(noisy);
                    free(perm);
                    power_done = true;
                }
            }
            bytes += ra->len + rb->len;
        }
        passing += tensor_passes;
        passing_permuted += tensor_passes && tensor_permuted;
        free(x);
        free(y);
        free(xt);
        free(yt);
    }
    if (err)
        goto out;
    if (n_tests == 0) {
        cmp_not_run(t, "%s",
                    "no name- and shape-matched 2-D float tensor with 4 to 512 rows (or columns) of width >= 16 on both "
                    "sides (LoRA factors are compared as adapters)");
        goto out;
    }
    t->ran = true;
    t->statistic = (double)passing;
    t->null_mean = best.mean;
    t->null_sd = best.sd;
    t->z = best.z;
    t->effect = best.observed - best.mean;
    cmp_apply_floor(t);
    t->permutations = ROWS_DRAWS;
    t->null_at_least = best.beat;
    t->p_value = best.p;
    t->p_exact = true;
    t->decided_by_z = true;
    t->seed = ctx->seed + 31;
    snprintf(t->p_method, sizeof t->p_method,
             "exact p = (1+b)/(T+1) per tensor with T = %u rotations: too few to reach alpha, so it "
             "rejects only when z >= 6 and b = 0 (approximate); the strongest tensor is shown",
             ROWS_DRAWS);
    snprintf(t->null_kind, sizeof t->null_kind, "B's units rotated within their own span (%u draws per tensor)",
             ROWS_DRAWS);
    /* a match that is mostly the identity is index-aligned agreement (G-init reads it, and a
     * shared seed gives it); only a real permutation needs a deliberate transformation */
    if (passing > 0 && passing_permuted * 2 < passing)
        t->evidence = CKS_EVIDENCE_INIT;
    t->corroborated = passing >= 2;
    t->bytes_read = bytes;
    snprintf(t->tensors, sizeof t->tensors,
             "%zu tensor axes tested; %zu tensors with one-to-one twins (%zu of them through a permutation)", n_tests,
             passing, passing_permuted);
out:
    return err;
}
