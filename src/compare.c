/*
 * compare: the test family T1-T4, controls, power checks and the verdict
 * (research/fingerprinting.md §3, §5, §7). See include/ckptscope/compare.h.
 *
 * This file holds the family's bookkeeping, the layer pairing, the run over one pair and the
 * orchestration; the tests live one family per file (compare_t1_t2.c, compare_t3.c,
 * compare_t4.c, compare_generic.c, compare_lora.c), the power checks' synthetic positives in
 * compare_synth.c, the descriptive numbers in compare_describe.c and the verdict in
 * compare_verdict.c.
 */
#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ckptscope/cka.h"
#include "ckptscope/defaults.h"
#include "ckptscope/lap.h"
#include "ckptscope/layers.h"
#include "ckptscope/metrics.h"
#include "ckptscope/stats.h"
#include "compare_internal.h"

#define DEFAULT_BUDGET CKS_DEFAULT_BUDGET_BYTES
#define DEFAULT_SEED CKS_DEFAULT_SEED
#define DEFAULT_ALPHA 1e-3
#define DEFAULT_PERMUTATIONS 9999u

const char *cks_verdict_name(cks_verdict v)
{
    switch (v) {
    case CKS_VERDICT_IDENTICAL:
        return "identical";
    case CKS_VERDICT_DERIVED:
        return "derived";
    case CKS_VERDICT_NOT_DERIVED:
        return "not_derived";
    default:
        return "inconclusive";
    }
}

void cmp_family_release(cmp_family *f)
{
    for (size_t i = 0; i < f->n; i++)
        free(f->t[i].items);
    free(f->map);
    free(f->sign);
    free(f->matches);
    memset(f, 0, sizeof *f);
}

cks_test_result *cmp_family_add(cmp_family *f, const char *id, const char *name, bool primary)
{
    cks_test_result *t;
    if (f->n == CMP_MAX_TESTS)
        return NULL;
    t = &f->t[f->n++];
    memset(t, 0, sizeof *t);
    snprintf(t->id, sizeof t->id, "%s", id);
    snprintf(t->name, sizeof t->name, "%s", name);
    t->primary = primary;
    t->valid = true;
    t->power = -1;
    t->p_value = NAN;
    t->p_holm = NAN;
    t->z = NAN;
    t->statistic = NAN;
    t->raw_cosine = NAN;
    t->null_mean = t->null_sd = NAN;
    t->effect = NAN;
    t->floor = NAN;
    return t;
}

cks_test_result *cmp_family_find(cmp_family *f, const char *id)
{
    for (size_t i = 0; i < f->n; i++)
        if (strcmp(f->t[i].id, id) == 0)
            return &f->t[i];
    return NULL;
}

void cmp_not_run(cks_test_result *t, const char *fmt, const char *arg)
{
    t->ran = false;
    snprintf(t->why_not, sizeof t->why_not, fmt, arg);
}

cks_err cmp_add_item(cks_test_result *t, const char *label, double value, double raw)
{
    cks_compare_item *grown;
    if (t->n_items >= CKS_MAX_ITEMS)
        return CKS_OK;
    grown = realloc(t->items, (t->n_items + 1) * sizeof *grown);
    if (!grown)
        return CKS_ERR_NOMEM;
    t->items = grown;
    snprintf(grown[t->n_items].label, sizeof grown[t->n_items].label, "%.95s", label);
    grown[t->n_items].value = value;
    grown[t->n_items].raw_cosine = raw;
    t->n_items++;
    return CKS_OK;
}

void cmp_set_perm(cks_test_result *t, const cks_perm_result *pr, const char *null_kind, double alpha)
{
    t->ran = true;
    t->statistic = pr->observed;
    t->null_mean = pr->null_mean;
    t->null_sd = pr->null_sd;
    t->permutations = pr->permutations;
    t->null_at_least = pr->at_least_as_extreme;
    t->seed = pr->seed;
    t->z = pr->z;
    t->effect = pr->observed - pr->null_mean;
    t->p_value = pr->p_value;
    t->p_exact = true;
    snprintf(t->null_kind, sizeof t->null_kind, "%s", null_kind);
    /* The printed p is always the exact permutation p: 19 draws cannot support 1e-12. When
     * the draws are too few to reach alpha, the test decides on the permutation z instead,
     * and only far out (z >= 6 with no draw as extreme: fingerprinting.md §7.3). */
    /* from the draws planned: a curtailed null stopped only because its p is above alpha */
    t->decided_by_z = 1.0 / ((pr->curtailed ? pr->planned : pr->permutations) + 1.0) > alpha / 4;
    if (pr->curtailed)
        snprintf(t->p_method, sizeof t->p_method,
                 "sequential permutation p = b/T (Besag & Clifford 1991): stopped after b = %u draws as extreme, "
                 "at T = %u of %u; the full %u could not have reached alpha",
                 pr->at_least_as_extreme, pr->permutations, pr->planned, pr->planned);
    else if (t->decided_by_z)
        snprintf(t->p_method, sizeof t->p_method,
                 "exact permutation p = (1+b)/(T+1), T = %u, b = %u: too few draws to reach alpha, so it "
                 "rejects only when z >= 6 and b = 0 (approximate)",
                 pr->permutations, pr->at_least_as_extreme);
    else
        snprintf(t->p_method, sizeof t->p_method, "exact permutation p = (1+b)/(T+1), T = %u, b = %u", pr->permutations,
                 pr->at_least_as_extreme);
}

void cmp_null_start(cmp_null_acc *acc, double observed)
{
    memset(acc, 0, sizeof *acc);
    acc->observed = observed;
}

void cmp_null_add(cmp_null_acc *acc, double statistic)
{
    acc->sum += statistic;
    acc->sumsq += statistic * statistic;
    acc->draws++;
    /* "at least as extreme" with the same rounding slack as cks_perm_test */
    if (statistic >= acc->observed - 1e-12 * fabs(acc->observed))
        acc->beat++;
}

void cmp_null_result(const cmp_null_acc *acc, uint64_t seed, cks_perm_result *out)
{
    uint32_t t = acc->draws;
    memset(out, 0, sizeof *out);
    out->observed = acc->observed;
    out->alternative = CKS_ALT_GREATER;
    out->seed = seed;
    out->permutations = t;
    out->at_least_as_extreme = acc->beat;
    out->p_value = (1.0 + acc->beat) / (t + 1.0);
    out->null_mean = t ? acc->sum / t : NAN;
    out->null_sd = t > 1 ? sqrt(fmax(0.0, (acc->sumsq - acc->sum * acc->sum / t) / (t - 1))) : NAN;
    out->z = out->null_sd > 0 ? (acc->observed - out->null_mean) / out->null_sd : NAN;
}

/* ---- small numeric helpers ---- */

/* The real pair's null of test `id`, for a power run (false when there is none). */
bool cmp_reused_null(const cmp_ctx *ctx, const char *id, double *mean, double *sd)
{
    if (!ctx->power_run)
        return false;
    for (size_t i = 0; i < ctx->n_nulls; i++)
        if (strcmp(ctx->nulls[i].id, id) == 0 && isfinite(ctx->nulls[i].sd) && ctx->nulls[i].sd > 0) {
            *mean = ctx->nulls[i].mean;
            *sd = ctx->nulls[i].sd;
            return true;
        }
    return false;
}

void cmp_judge_by_reused_null(cks_test_result *t, double observed, double mean, double sd, double alpha)
{
    (void)alpha;
    t->ran = true;
    t->statistic = observed;
    t->null_mean = mean;
    t->null_sd = sd;
    t->z = (observed - mean) / sd;
    t->effect = observed - mean;
    t->decided_by_z = true;
    t->null_at_least = t->z >= 6 ? 0 : 1; /* the real pair's draws are not kept: the z decides */
    t->p_value = NAN;
    t->p_exact = false;
    snprintf(t->null_kind, sizeof t->null_kind, "the real pair's null (reused for this power check)");
    snprintf(t->p_method, sizeof t->p_method, "z against the real pair's null (power check)");
}

bool cmp_vector_usable(const double *v, size_t n)
{
    double lo, hi;
    if (!v || n < 3)
        return false;
    lo = hi = v[0];
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(v[i]))
            return false;
        if (v[i] < lo)
            lo = v[i];
        if (v[i] > hi)
            hi = v[i];
    }
    return hi > lo;
}

double cmp_raw_cosine(const double *a, const double *b, size_t n)
{
    double ab = 0, aa = 0, bb = 0;
    for (size_t i = 0; i < n; i++) {
        ab += a[i] * b[i];
        aa += a[i] * a[i];
        bb += b[i] * b[i];
    }
    return aa > 0 && bb > 0 ? ab / sqrt(aa * bb) : NAN;
}

double cmp_pearson_or_nan(const double *a, const double *b, size_t n)
{
    double r = NAN;
    if (cks_pearson_f64(a, b, n, &r, NULL) != CKS_OK)
        return NAN;
    return r;
}

/* ---- layer pairing ---- */

cks_err cmp_norm_matrix(const cmp_model *a, const cmp_model *b, double *s, bool *any);

/* Equal depth: the diagonal. Otherwise a monotone path on the norm-gain matrix. */
cks_err cmp_choose_pairing(const cmp_model *a, const cmp_model *b, cmp_family *f, cks_diag *diag)
{
    cks_err err = CKS_OK;
    double *s = NULL, score;
    bool any = false;
    int la = a->n_layers, lb = b->n_layers;

    f->n_pairs = 0;
    if (la <= 0 || lb <= 0 || la > (int)CKS_LAYERS_MAX_DIM || lb > (int)CKS_LAYERS_MAX_DIM)
        return CKS_OK;
    if (la == lb || a->hidden != b->hidden) {
        for (int i = 0; i < (la < lb ? la : lb); i++) {
            f->pairs[f->n_pairs].a = i;
            f->pairs[f->n_pairs].b = i;
            f->n_pairs++;
        }
        return CKS_OK;
    }
    s = malloc((size_t)la * (size_t)lb * sizeof *s);
    if (!s || cmp_norm_matrix(a, b, s, &any) != CKS_OK) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        goto out;
    }
    if (!any) {
        /* no norms to align by: pair by relative depth */
        for (int i = 0; i < (la < lb ? la : lb); i++) {
            f->pairs[f->n_pairs].a = (la <= lb) ? i : (int)((double)i * la / lb);
            f->pairs[f->n_pairs].b = (la <= lb) ? (int)((double)i * lb / la) : i;
            f->n_pairs++;
        }
        goto out;
    }
    err = cks_layer_monotone_path(s, (size_t)la, (size_t)lb, 0.0, f->pairs, &f->n_pairs, &score, diag);
out:
    free(s);
    return err;
}

/* ---- the family on one pair ---- */

cks_err cmp_run_family(const cmp_ctx *ctx, const cmp_model *a, const cmp_model *b, const cmp_embed_pair *emb,
                       bool with_t1, cmp_family *f, cks_diag *diag)
{
    cks_err err = CKS_OK;
    unsigned tests = ctx->tests_override ? ctx->tests_override
                     : ctx->opts && ctx->opts->tests ? ctx->opts->tests
                                                     : CKS_TEST_ALL;

    memset(f, 0, sizeof *f);
    if (with_t1 && (tests & CKS_TEST_T1))
        err = cmp_test_identity(ctx, a, b, f, diag);
    /* LoRA adapters, whatever the architecture: their updates, module by module */
    if (!err && with_t1)
        err = cmp_test_adapters(ctx, a, b, f, diag);
    if (err)
        goto out;
    if (!a->known_arch || !b->known_arch || a->n_layers <= 0 || b->n_layers <= 0) {
        if (with_t1)
            err = cmp_test_generic(ctx, a, b, f, diag);
        if (with_t1 && !err)
            err = cmp_test_generic_rows(ctx, a, b, f, diag);
        goto out;
    }
    err = cmp_choose_pairing(a, b, f, diag);
    if (!err && (tests & CKS_TEST_T2))
        err = cmp_test_norms(ctx, a, b, f, "T2", "norm gains (Spearman, joint permutation null)", diag);
    if (!err && (tests & CKS_TEST_T3))
        err = cmp_test_weights(ctx, a, b, emb, f, "T3", "index-aligned k/v/router/embedding rows", diag);
    if (!err && (tests & CKS_TEST_T4))
        err = cmp_test_t4(ctx, a, b, emb, f, diag);
out:
    /* a family that failed half-way is of no use to the caller: what it holds goes with it
     * (the callers release a family only after success; found by tests/unit/test_oom.c) */
    if (err)
        cmp_family_release(f);
    return err;
}

/* ---- orchestration ---- */

static void progress(const cmp_ctx *ctx, const char *stage)
{
    if (ctx->opts && ctx->opts->progress)
        ctx->opts->progress(ctx->opts->progress_ctx, stage);
}

/* Power from a synthetic or real positive pair: each test that flags it is powered. */
static void record_power(cmp_family *main, const cmp_family *pos, double alpha, const char *what)
{
    for (size_t i = 0; i < main->n; i++) {
        cks_test_result *t = &main->t[i];
        const cks_test_result *p = NULL;
        for (size_t j = 0; j < pos->n; j++)
            if (strcmp(pos->t[j].id, t->id) == 0)
                p = &pos->t[j];
        if (!p || !p->ran || !t->primary)
            continue;
        if (cmp_flags(p, alpha)) {
            if (t->power != 0) {
                t->power = 1;
                snprintf(t->power_note, sizeof t->power_note, "flags %.150s (statistic %.3g, z %.1f)", what, p->statistic,
                         p->z);
            }
        } else {
            t->power = 0;
            snprintf(t->power_note, sizeof t->power_note, "did not flag %.150s (statistic %.3g, p %.2g)", what,
                     p->statistic, p->p_value);
        }
    }
}

/* Negative controls: a test that flags a control pair is invalid for this run. */
static void record_control(cmp_family *main, const cmp_family *ctl, double alpha, const char *what)
{
    for (size_t i = 0; i < main->n; i++) {
        cks_test_result *t = &main->t[i];
        for (size_t j = 0; j < ctl->n; j++) {
            const cks_test_result *c = &ctl->t[j];
            if (strcmp(c->id, t->id) != 0 || !t->primary)
                continue;
            if (cmp_flags(c, alpha) && t->valid) {
                t->valid = false;
                snprintf(t->invalid_reason, sizeof t->invalid_reason,
                         "invalidated by the negative control %.80s: it flags that independent pair too "
                         "(statistic %.3g, effect %.3g), so it cannot separate derived from independent here",
                         what, c->statistic, c->effect);
            }
        }
    }
}

static cks_err run_pair(const cmp_ctx *ctx, cmp_model *a, cmp_model *b, cmp_family *f, cks_diag *diag)
{
    cks_err err;
    cmp_embed_pair emb;
    memset(&emb, 0, sizeof emb);
    err = cmp_embed_pair_load(ctx, a, b, &emb, diag);
    if (!err)
        err = cmp_run_family(ctx, a, b, &emb, true, f, diag);
    if (!err)
        cmp_apply_holm(f, ctx->alpha);
    cmp_embed_pair_release(&emb);
    return err;
}

cks_err cks_compare(const cks_compare_model *a, const cks_compare_model *b, const cks_compare_opts *opts,
                    cks_compare_result **out, cks_diag *diag)
{
    cks_err err = CKS_OK;
    cmp_ctx ctx;
    cmp_model ma, mb;
    cmp_embed_pair emb;
    cmp_family main_f;
    cks_compare_result *r = NULL;
    int blas_threads;

    *out = NULL;
    memset(&ma, 0, sizeof ma);
    memset(&mb, 0, sizeof mb);
    memset(&emb, 0, sizeof emb);
    memset(&main_f, 0, sizeof main_f);
    memset(&ctx, 0, sizeof ctx);
    ctx.opts = opts;
    ctx.budget = opts && opts->budget_bytes ? opts->budget_bytes : DEFAULT_BUDGET;
    ctx.seed = opts && opts->seed ? opts->seed : DEFAULT_SEED;
    ctx.alpha = opts && opts->alpha > 0 ? opts->alpha : DEFAULT_ALPHA;
    ctx.permutations = opts && opts->permutations ? opts->permutations : DEFAULT_PERMUTATIONS;
    ctx.t4a_null_mean = ctx.t4a_null_sd = NAN;

    /* OpenBLAS's own threads: most products here are small (a 46 x 48 x 4096 dgemm per
     * permutation, 64 x 64 rotation blocks), and for those its idle workers spin in
     * sched_yield: 9-13 % of a default compare's CPU on 2 cores (issue 15). One thread does
     * the same products for less CPU; restored on the way out for the caller. */
    blas_threads = openblas_get_num_threads();
    openblas_set_num_threads(1);
    ctx.blas_threads = blas_threads;
    r = calloc(1, sizeof *r);
    if (!r) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        goto out;
    }
    r->seed = ctx.seed;
    progress(&ctx, "reading A");
    err = cmp_model_load(&ctx, a, &ma, diag);
    if (err)
        goto out;
    progress(&ctx, "reading B");
    err = cmp_model_load(&ctx, b, &mb, diag);
    if (err)
        goto out;
    progress(&ctx, "reading shared-token embeddings");
    err = cmp_embed_pair_load(&ctx, &ma, &mb, &emb, diag);
    if (err)
        goto out;
    progress(&ctx, "testing A against B");
    err = cmp_run_family(&ctx, &ma, &mb, &emb, true, &main_f, diag);
    if (err)
        goto out;

    /* power: built-in synthetic derivatives of A, then the user's positive controls */
    if (!(opts && opts->no_synthetic_power) && ma.known_arch) {
        cmp_model noisy, permuted;
        cmp_embed_pair e_noisy, e_perm;
        cmp_family fs;
        cmp_ctx pctx = ctx;
        unsigned selected = opts && opts->tests ? opts->tests : CKS_TEST_ALL;
        const cks_test_result *t4a = cmp_family_find(&main_f, "T4a");
        pctx.power_run = true;
        for (size_t i = 0; i < main_f.n && pctx.n_nulls < sizeof pctx.nulls / sizeof pctx.nulls[0]; i++)
            if (main_f.t[i].ran && isfinite(main_f.t[i].null_sd)) {
                snprintf(pctx.nulls[pctx.n_nulls].id, sizeof pctx.nulls[0].id, "%s", main_f.t[i].id);
                pctx.nulls[pctx.n_nulls].mean = main_f.t[i].null_mean;
                pctx.nulls[pctx.n_nulls].sd = main_f.t[i].null_sd;
                pctx.n_nulls++;
            }
        pctx.t4a_null_mean = t4a && t4a->ran ? t4a->null_mean : NAN;
        pctx.t4a_null_sd = t4a && t4a->ran ? t4a->null_sd : NAN;
        memset(&permuted, 0, sizeof permuted);
        memset(&e_perm, 0, sizeof e_perm);
        progress(&ctx, "power check: synthetic derivatives of A");
        err = cmp_synth_noisy(&ma, &emb, ctx.seed + 11, &noisy, &e_noisy);
        pctx.tests_override = selected & (CKS_TEST_T2 | CKS_TEST_T3);
        if (!err && pctx.tests_override)
            err = cmp_run_family(&pctx, &ma, &noisy, &e_noisy, false, &fs, diag);
        if (!err && pctx.tests_override) {
            record_power(&main_f, &fs, ctx.alpha, "a synthetic derivative of A (A plus noise, r about 0.7)");
            cmp_family_release(&fs);
        }
        /* the index-aligned tests are blind to a permutation by design: only T4 is judged on it */
        pctx.tests_override = selected & CKS_TEST_T4;
        {
            /* power matters only for tests that ran on the real pair (cmp_decide): when T4b/T4c
             * did not (T4a not beyond its null), the check runs T4a alone, without the
             * alignment T4b/T4c would read (~3 s of CPU at hidden 4096) */
            const cks_test_result *t4b = cmp_family_find(&main_f, "T4b-norms"),
                                  *t4bw = cmp_family_find(&main_f, "T4b-weights"), *t4c = cmp_family_find(&main_f, "T4c");
            pctx.alignment_only = !((t4b && t4b->ran) || (t4bw && t4bw->ran) || (t4c && t4c->ran));
        }
        if (!err && pctx.tests_override)
            err = cmp_synth_permuted(&noisy, &e_noisy, ctx.seed + 12, !pctx.alignment_only, &permuted, &e_perm);
        /* the noisy copy is not needed any more: free it before the most memory-hungry test */
        cmp_model_release(&noisy);
        e_noisy.a.v = NULL; /* borrowed */
        cmp_embed_pair_release(&e_noisy);
        if (!err && pctx.tests_override) {
            err = cmp_run_family(&pctx, &ma, &permuted, &e_perm, false, &fs, diag);
            if (!err) {
                record_power(&main_f, &fs, ctx.alpha,
                             "a synthetic permuted, sign-flipped derivative of A (hidden dimension shuffled)");
                cmp_family_release(&fs);
            }
        }
        cmp_model_release(&permuted);
        e_perm.a.v = NULL; /* borrowed */
        cmp_embed_pair_release(&e_perm);
        if (err)
            goto out;
    }
    for (size_t i = 0; opts && i < opts->n_positives; i++) {
        cmp_model mp;
        cmp_family fp;
        char what[160];
        progress(&ctx, "positive control");
        err = cmp_model_load(&ctx, &opts->positives[i], &mp, diag);
        if (!err)
            err = run_pair(&ctx, &ma, &mp, &fp, diag);
        if (!err) {
            snprintf(what, sizeof what, "the positive control %s", opts->positives[i].label);
            for (size_t k = 0; k < main_f.n; k++)
                main_f.t[k].power = main_f.t[k].power == 1 ? 1 : main_f.t[k].power; /* keep synthetic evidence */
            record_power(&main_f, &fp, ctx.alpha, what);
            cmp_family_release(&fp);
            r->n_positives_run++;
        }
        cmp_model_release(&mp);
        if (err)
            goto out;
    }
    for (size_t i = 0; opts && i < opts->n_controls; i++) {
        cmp_model mc;
        cmp_family fc;
        char what[200];
        progress(&ctx, "negative control");
        err = cmp_model_load(&ctx, &opts->controls[i], &mc, diag);
        for (int side = 0; side < 2 && !err; side++) {
            err = run_pair(&ctx, &mc, side == 0 ? &ma : &mb, &fc, diag);
            if (!err) {
                snprintf(what, sizeof what, "%s against %s", opts->controls[i].label, side == 0 ? "A" : "B");
                record_control(&main_f, &fc, ctx.alpha, what);
                cmp_family_release(&fc);
            }
        }
        cmp_model_release(&mc);
        if (err)
            goto out;
        r->n_controls_run++;
    }
    cmp_apply_holm(&main_f, ctx.alpha);
    cmp_describe(&ma, &mb, &emb, &main_f, r);
    cmp_decide(&ctx, &main_f, &ma, &mb, r);

    /* hand the results over */
    r->n_tests = main_f.n;
    for (size_t i = 0; i < main_f.n; i++) {
        r->tests[i] = main_f.t[i];
        main_f.t[i].items = NULL;
    }
    main_f.n = 0;
    r->hash_matches = main_f.matches;
    r->n_hash_matches = main_f.n_matches;
    main_f.matches = NULL;
    r->tensors_hashed_a = ma.n_raw;
    r->tensors_hashed_b = mb.n_raw;
    r->full_coverage = ma.full_coverage && mb.full_coverage;
    /* bytes of tensor data read per model: everything for a model read whole, else what was sampled */
    r->bytes_a = ma.full_coverage ? ma.bytes_other
                                  : ma.bytes_norms + ma.bytes_weights + ma.bytes_router + ma.bytes_other + emb.bytes / 2;
    r->bytes_b = mb.full_coverage ? mb.bytes_other
                                  : mb.bytes_norms + mb.bytes_weights + mb.bytes_router + mb.bytes_other + emb.bytes / 2;
    {
        size_t krows = 0, kt = 0;
        for (int l = 0; l < ma.n_layers && ma.layers; l++)
            if (ma.layers[l].k.v) {
                krows = ma.layers[l].k.rows;
                kt = ma.layers[l].k_total_rows;
                break;
            }
        snprintf(r->sampling, sizeof r->sampling,
                 "%s; k and v: %zu of %zu rows per layer in blocks of 8 consecutive rows (the same rows in both "
                 "models, chosen from seed %llu); norms and routers read whole; embedding rows of %zu shared tokens",
                 r->full_coverage ? "both checkpoints read whole (within the budget)" : "sampled within the budget",
                 krows, kt, (unsigned long long)ctx.seed, emb.a.rows);
    }
    *out = r;
    r = NULL;
out:
    cmp_family_release(&main_f);
    cmp_embed_pair_release(&emb);
    cmp_model_release(&ma);
    cmp_model_release(&mb);
    cks_compare_result_free(r);
    openblas_set_num_threads(blas_threads);
    return err;
}

void cks_compare_result_free(cks_compare_result *r)
{
    if (!r)
        return;
    for (size_t i = 0; i < r->n_tests; i++)
        free(r->tests[i].items);
    free(r->hash_matches);
    free(r->layer_matrix);
    free(r->layer_matrix_aligned);
    free(r->row_best);
    free(r->row_margin);
    free(r->path_a);
    free(r->path_b);
    free(r->std_curve_a);
    free(r->std_curve_b);
    free(r);
}
