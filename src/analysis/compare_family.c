/*
 * compare: the family's bookkeeping, at the bottom of the compare files: adding and finding
 * tests, items, permutation results and their p method, nulls accumulated draw by draw, nulls
 * reused from the real pair by the power checks, and the small numeric helpers every test
 * uses. It calls nothing of the tests above it (compare_t*.c, compare_generic.c,
 * compare_lora.c), the verdict (compare_verdict.c) or the orchestration (compare.c).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ckptscope/layers.h"
#include "ckptscope/metrics.h"
#include "ckptscope/stats.h"
#include "compare_internal.h"

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
