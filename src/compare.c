/*
 * compare: the test family T1-T4, controls, power checks and the verdict
 * (research/fingerprinting.md §3, §5, §7). See include/ckptscope/compare.h.
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

#define DEFAULT_BUDGET (384ull << 20)
#define DEFAULT_SEED 20260128ull
#define DEFAULT_ALPHA 1e-3
#define DEFAULT_PERMUTATIONS 9999u
#define MAX_CROSS_DIM 8192u   /* T3's d x d cross matrix: 256 MiB of floats at most */
#define ITEM_Z 4.0            /* a single layer or tensor counts as corroborating evidence above this */
#define SYNTH_NOISE 1.0       /* synthetic positive: noise sd relative to the values' sd (r ~ 0.7) */
#define MAX_TESTS 12

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

/* ---- results of one run of the family on one pair ---- */

typedef struct family {
    size_t n;
    cks_test_result t[MAX_TESTS];
    /* layer pairing used by T2/T3/T4 */
    size_t n_pairs;
    cks_layer_pair pairs[CKS_LAYERS_MAX_DIM];
    /* T4a alignment: A dim i -> B dim map[i] with sign[i] */
    int32_t *map;
    int8_t *sign;
    size_t map_len;
    bool identical;
    size_t n_matches;
    cks_hash_match *matches;
} family;

static void family_release(family *f)
{
    for (size_t i = 0; i < f->n; i++)
        free(f->t[i].items);
    free(f->map);
    free(f->sign);
    free(f->matches);
    memset(f, 0, sizeof *f);
}

static cks_test_result *family_add(family *f, const char *id, const char *name, bool primary)
{
    cks_test_result *t;
    if (f->n == MAX_TESTS)
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
    return t;
}

static cks_test_result *family_find(family *f, const char *id)
{
    for (size_t i = 0; i < f->n; i++)
        if (strcmp(f->t[i].id, id) == 0)
            return &f->t[i];
    return NULL;
}

static void not_run(cks_test_result *t, const char *fmt, const char *arg)
{
    t->ran = false;
    snprintf(t->why_not, sizeof t->why_not, fmt, arg);
}

static cks_err add_item(cks_test_result *t, const char *label, double value, double raw)
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

static void set_perm(cks_test_result *t, const cks_perm_result *pr, const char *null_kind, double alpha)
{
    t->ran = true;
    t->statistic = pr->observed;
    t->null_mean = pr->null_mean;
    t->null_sd = pr->null_sd;
    t->permutations = pr->permutations;
    t->seed = pr->seed;
    t->z = pr->z;
    t->effect = pr->observed - pr->null_mean;
    snprintf(t->null_kind, sizeof t->null_kind, "%s", null_kind);
    /* With too few permutations to reach alpha, the exact p cannot decide: use the
     * permutation z (approximate, says so) as fingerprinting.md §7.3 prescribes. */
    if (1.0 / (pr->permutations + 1.0) > alpha / 4 && isfinite(pr->z)) {
        t->p_value = cks_normal_sf(pr->z);
        t->p_exact = false;
        snprintf(t->caveats + strlen(t->caveats), sizeof t->caveats - strlen(t->caveats),
                 "%sp from the permutation z (normal approximation); exact permutation p = %.3g with T = %u. ",
                 t->caveats[0] ? "" : "", pr->p_value, pr->permutations);
    } else {
        t->p_value = pr->p_value;
        t->p_exact = true;
    }
}

/* ---- small numeric helpers ---- */

/* The real pair's null of test `id`, for a power run (false when there is none). */
static bool reused_null(const cmp_ctx *ctx, const char *id, double *mean, double *sd)
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

static void judge_by_reused_null(cks_test_result *t, double observed, double mean, double sd, double alpha)
{
    cks_perm_result pr;
    memset(&pr, 0, sizeof pr);
    pr.observed = observed;
    pr.null_mean = mean;
    pr.null_sd = sd;
    pr.z = (observed - mean) / sd;
    pr.p_value = 1.0;
    pr.alternative = CKS_ALT_GREATER;
    set_perm(t, &pr, "the real pair's null (reused for this power check)", alpha);
}

static bool vector_usable(const double *v, size_t n)
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

static double raw_cosine(const double *a, const double *b, size_t n)
{
    double ab = 0, aa = 0, bb = 0;
    for (size_t i = 0; i < n; i++) {
        ab += a[i] * b[i];
        aa += a[i] * a[i];
        bb += b[i] * b[i];
    }
    return aa > 0 && bb > 0 ? ab / sqrt(aa * bb) : NAN;
}

static double pearson_or_nan(const double *a, const double *b, size_t n)
{
    double r = NAN;
    if (cks_pearson_f64(a, b, n, &r, NULL) != CKS_OK)
        return NAN;
    return r;
}

/* ---- layer pairing ---- */

static cks_err norm_matrix(const cmp_model *a, const cmp_model *b, double *s, bool *any);

/* Equal depth: the diagonal. Otherwise a monotone path on the norm-gain matrix. */
static cks_err choose_pairing(const cmp_model *a, const cmp_model *b, family *f, cks_diag *diag)
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
    if (!s || norm_matrix(a, b, s, &any) != CKS_OK) {
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

/* ---- T1: identity ---- */

static cks_err test_identity(const cmp_ctx *ctx, const cmp_model *a, const cmp_model *b, family *f, cks_diag *diag)
{
    cks_err err = CKS_OK;
    cks_test_result *t = family_add(f, "T1", "byte identity and bitwise equality", true);
    double equal = 0, expected = 0, variance = 0, n_total = 0;
    size_t informative_matches = 0, tensors_excess = 0, compared = 0;
    bool *used_b = NULL;

    if (!t)
        return CKS_OK;
    if (a->n_raw == 0 || b->n_raw == 0) {
        not_run(t, "%s", "no tensor was read whole on both sides");
        return CKS_OK;
    }
    used_b = calloc(b->n_raw, sizeof *used_b);
    if (!used_b)
        return cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
    /* hashes, whatever the names */
    for (size_t i = 0; i < a->n_raw; i++) {
        for (size_t j = 0; j < b->n_raw; j++) {
            cks_hash_match *grown;
            if (used_b[j] || memcmp(a->raw[i].sha256, b->raw[j].sha256, 32) != 0)
                continue;
            used_b[j] = true;
            grown = realloc(f->matches, (f->n_matches + 1) * sizeof *grown);
            if (!grown) {
                err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
                goto out;
            }
            f->matches = grown;
            snprintf(grown[f->n_matches].name_a, sizeof grown->name_a, "%s", a->raw[i].tensor->info->name);
            snprintf(grown[f->n_matches].name_b, sizeof grown->name_b, "%s", b->raw[j].tensor->info->name);
            grown[f->n_matches].low_information = a->raw[i].low_information;
            f->n_matches++;
            if (!a->raw[i].low_information)
                informative_matches++;
            break;
        }
    }
    /* identical: every tensor of both read and matched one to one */
    f->identical = a->full_coverage && b->full_coverage && a->n_raw == b->n_raw && f->n_matches == a->n_raw &&
                   a->n_raw > 0;
    /* bitwise equality of role-matched tensors against the exact shuffle null */
    for (size_t i = 0; i < a->n_raw; i++) {
        const cmp_raw *ra = &a->raw[i];
        if (ra->low_information || ra->role == CKS_ROLE_OTHER || !ra->bytes)
            continue;
        for (size_t j = 0; j < b->n_raw; j++) {
            const cmp_raw *rb = &b->raw[j];
            cks_equality_null eq;
            if (rb->role != ra->role || rb->part != ra->part || rb->layer != ra->layer || rb->expert != ra->expert ||
                rb->tensor->info->dtype != ra->tensor->info->dtype ||
                rb->tensor->info->nelements != ra->tensor->info->nelements || rb->low_information || !rb->bytes)
                continue;
            if (cks_equality_null_compute(ra->tensor->info->dtype, ra->bytes, rb->bytes,
                                          (size_t)ra->tensor->info->nelements, &eq, NULL) != CKS_OK)
                break;
            equal += (double)eq.equal;
            expected += eq.expected_fraction * (double)eq.n;
            if (isfinite(eq.null_sd))
                variance += (eq.null_sd * (double)eq.n) * (eq.null_sd * (double)eq.n);
            n_total += (double)eq.n;
            compared++;
            if (isfinite(eq.z) && eq.z >= ITEM_Z)
                tensors_excess++;
            if (add_item(t, ra->tensor->info->name, eq.observed_fraction, NAN) != CKS_OK) {
                err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
                goto out;
            }
            break;
        }
    }
    t->ran = true;
    snprintf(t->statistic_name, sizeof t->statistic_name, "bit-identical element fraction");
    snprintf(t->null_kind, sizeof t->null_kind, "exact shuffle null of the value histograms (normal approximation)");
    t->statistic = n_total > 0 ? equal / n_total : NAN;
    t->null_mean = n_total > 0 ? expected / n_total : NAN;
    t->null_sd = n_total > 0 ? sqrt(variance) / n_total : NAN;
    t->z = t->null_sd > 0 ? (t->statistic - t->null_mean) / t->null_sd : NAN;
    t->effect = t->statistic - t->null_mean;
    t->p_value = isfinite(t->z) ? cks_normal_sf(t->z) : 1.0;
    t->p_exact = false;
    if (informative_matches > 0) {
        /* a byte-identical high-entropy tensor does not happen by chance (SHA-256) */
        t->p_value = 1e-300;
        snprintf(t->caveats, sizeof t->caveats, "%zu high-entropy tensor(s) byte-identical across the models. ",
                 informative_matches);
    }
    t->corroborated = informative_matches >= 2 || tensors_excess >= 2;
    t->power = 1;
    snprintf(t->power_note, sizeof t->power_note,
             "exact by construction: a byte copy of any tensor read cannot be missed (SHA-256)");
    snprintf(t->tensors, sizeof t->tensors, "%zu + %zu tensors hashed; %zu role-matched pairs compared bitwise",
             a->n_raw, b->n_raw, compared);
    t->bytes_read = 0; /* hashing reuses what the other tests read */
    (void)ctx;
out:
    free(used_b);
    return err;
}

/* ---- T2: norm gains ---- */

/*
 * The layer x layer matrix of norm-gain Pearson r (mean over attn and ffn norms present on both
 * sides). Each norm vector is centred and scaled to unit length once, so the matrix is one
 * product per kind of A's vectors with B's (permuted) vectors. The unequal-depth null of T2
 * rebuilds it for every permutation and redoes the monotone path: a gather and two dgemms per
 * permutation instead of la * lb scalar loops.
 */
struct dp_ctx {
    int la, lb;
    size_t d;
    double *ua[2], *ub[2];     /* unit centred vectors, la x d and lb x d (zero rows: absent) */
    bool *has_a[2], *has_b[2]; /* which of those rows hold a usable vector */
    double *ubp, *prod[2];     /* scratch: permuted B, and the two products */
    double *s;
    cks_layer_pair *pairs;
};

static bool unit_centred(const double *v, size_t n, double *out)
{
    double mean = 0, ss = 0;
    if (!vector_usable(v, n))
        return false;
    for (size_t i = 0; i < n; i++)
        mean += v[i];
    mean /= (double)n;
    for (size_t i = 0; i < n; i++)
        ss += (v[i] - mean) * (v[i] - mean);
    for (size_t i = 0; i < n; i++)
        out[i] = (v[i] - mean) / sqrt(ss);
    return true;
}

static void dp_ctx_release(struct dp_ctx *c)
{
    for (int k = 0; k < 2; k++) {
        free(c->ua[k]);
        free(c->ub[k]);
        free(c->has_a[k]);
        free(c->has_b[k]);
        free(c->prod[k]);
    }
    free(c->ubp);
    free(c->s);
    free(c->pairs);
}

static cks_err dp_ctx_init(struct dp_ctx *c, const cmp_model *a, const cmp_model *b)
{
    memset(c, 0, sizeof *c);
    c->la = a->n_layers;
    c->lb = b->n_layers;
    c->d = a->hidden;
    for (int k = 0; k < 2; k++) {
        c->ua[k] = calloc((size_t)c->la * c->d, sizeof(double));
        c->ub[k] = calloc((size_t)c->lb * c->d, sizeof(double));
        c->has_a[k] = calloc((size_t)c->la, sizeof(bool));
        c->has_b[k] = calloc((size_t)c->lb, sizeof(bool));
        c->prod[k] = malloc((size_t)c->la * (size_t)c->lb * sizeof(double));
        if (!c->ua[k] || !c->ub[k] || !c->has_a[k] || !c->has_b[k] || !c->prod[k])
            return CKS_ERR_NOMEM;
    }
    c->ubp = malloc((size_t)c->lb * c->d * sizeof(double));
    c->s = malloc((size_t)c->la * (size_t)c->lb * sizeof(double));
    c->pairs = malloc(CKS_LAYERS_MAX_DIM * sizeof *c->pairs);
    if (!c->ubp || !c->s || !c->pairs)
        return CKS_ERR_NOMEM;
    for (int i = 0; i < c->la; i++) {
        const double *v[2] = {a->layers[i].attn_norm, a->layers[i].ffn_norm};
        for (int k = 0; k < 2; k++)
            c->has_a[k][i] = v[k] && unit_centred(v[k], c->d, c->ua[k] + (size_t)i * c->d);
    }
    for (int j = 0; j < c->lb; j++) {
        const double *v[2] = {b->layers[j].attn_norm, b->layers[j].ffn_norm};
        for (int k = 0; k < 2; k++)
            c->has_b[k][j] = v[k] && unit_centred(v[k], c->d, c->ub[k] + (size_t)j * c->d);
    }
    return CKS_OK;
}

/* c->s = the matrix for B permuted by perm (NULL: as it is); *any: some cell had a pair. */
static void dp_fill(struct dp_ctx *c, const uint32_t *perm, bool *any)
{
    *any = false;
    for (int k = 0; k < 2; k++) {
        const double *ub = c->ub[k];
        if (perm) {
            for (int j = 0; j < c->lb; j++)
                for (size_t x = 0; x < c->d; x++)
                    c->ubp[(size_t)j * c->d + x] = c->ub[k][(size_t)j * c->d + perm[x]];
            ub = c->ubp;
        }
        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, c->la, c->lb, (int)c->d, 1.0, c->ua[k], (int)c->d, ub,
                    (int)c->d, 0.0, c->prod[k], c->lb);
    }
    for (int i = 0; i < c->la; i++)
        for (int j = 0; j < c->lb; j++) {
            double sum = 0;
            int used = 0;
            for (int k = 0; k < 2; k++)
                if (c->has_a[k][i] && c->has_b[k][j]) {
                    sum += c->prod[k][(size_t)i * c->lb + j];
                    used++;
                }
            c->s[(size_t)i * c->lb + j] = used ? sum / used : 0.0;
            *any = *any || used > 0;
        }
}

static cks_err dp_statistic(void *vctx, const uint32_t *perm, size_t n, double *value, cks_diag *diag)
{
    struct dp_ctx *c = vctx;
    size_t np = 0;
    double score = 0;
    bool any;
    cks_err err;
    (void)n;
    dp_fill(c, perm, &any);
    err = cks_layer_monotone_path(c->s, (size_t)c->la, (size_t)c->lb, 0.0, c->pairs, &np, &score, diag);
    if (err)
        return err;
    *value = score / (double)(c->la < c->lb ? c->la : c->lb);
    return CKS_OK;
}

/* The norm-gain matrix of A against B (equal hidden sizes), written to s (la x lb). */
static cks_err norm_matrix(const cmp_model *a, const cmp_model *b, double *s, bool *any)
{
    struct dp_ctx c;
    cks_err err = dp_ctx_init(&c, a, b);
    *any = false;
    if (!err) {
        dp_fill(&c, NULL, any);
        memcpy(s, c.s, (size_t)c.la * (size_t)c.lb * sizeof *s);
    }
    dp_ctx_release(&c);
    return err;
}

static cks_err test_norms(const cmp_ctx *ctx, const cmp_model *a, const cmp_model *b, family *f, const char *id,
                          const char *name, cks_diag *diag)
{
    cks_err err = CKS_OK;
    cks_test_result *t = family_add(f, id, name, true);
    const double **va = NULL, **vb = NULL;
    size_t k = 0, strong = 0, cap;
    double raw_sum = 0;
    cks_perm_result pr;

    if (!t)
        return CKS_OK;
    snprintf(t->statistic_name, sizeof t->statistic_name, "mean Pearson r of norm gains");
    if (!a->layers || !b->layers || f->n_pairs == 0) {
        not_run(t, "%s", "no decoder layers with norm gains on both sides");
        return CKS_OK;
    }
    if (a->hidden != b->hidden) {
        not_run(t, "%s", "hidden sizes differ: index-aligned norms cannot be compared (T4 aligns them)");
        return CKS_OK;
    }
    cap = 2 * f->n_pairs;
    va = calloc(cap, sizeof *va);
    vb = calloc(cap, sizeof *vb);
    if (!va || !vb) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        goto out;
    }
    for (size_t p = 0; p < f->n_pairs; p++) {
        const cmp_layer *LA = &a->layers[f->pairs[p].a], *LB = &b->layers[f->pairs[p].b];
        const double *xa[2] = {LA->attn_norm, LA->ffn_norm}, *xb[2] = {LB->attn_norm, LB->ffn_norm};
        static const char *const kind[2] = {"attn_norm", "ffn_norm"};
        for (int w = 0; w < 2; w++) {
            char label[96];
            double r, rc;
            if (!vector_usable(xa[w], a->hidden) || !vector_usable(xb[w], b->hidden))
                continue;
            va[k] = xa[w];
            vb[k] = xb[w];
            k++;
            r = pearson_or_nan(xa[w], xb[w], a->hidden);
            rc = raw_cosine(xa[w], xb[w], a->hidden);
            raw_sum += rc;
            if (isfinite(r) && r * sqrt((double)a->hidden - 1.0) >= ITEM_Z)
                strong++;
            snprintf(label, sizeof label, "layer %d/%d %s", f->pairs[p].a, f->pairs[p].b, kind[w]);
            if (add_item(t, label, r, rc) != CKS_OK) {
                err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
                goto out;
            }
        }
    }
    if (k == 0) {
        not_run(t, "%s", "no usable norm-gain vectors (absent, constant, or not finite)");
        goto out;
    }
    {
        double null_mean, null_sd;
        if (a->n_layers == b->n_layers && reused_null(ctx, id, &null_mean, &null_sd)) {
            /* a power check: the statistic against the real pair's null */
            double sum = 0;
            for (size_t i = 0; i < k; i++)
                sum += pearson_or_nan(va[i], vb[i], a->hidden);
            judge_by_reused_null(t, sum / (double)k, null_mean, null_sd, ctx->alpha);
            goto done;
        }
    }
    if (a->n_layers == b->n_layers) {
        err = cks_joint_pearson_perm_test(va, vb, k, a->hidden, ctx->seed, ctx->permutations, CKS_ALT_GREATER, &pr,
                                          diag);
        if (err)
            goto out;
        set_perm(t, &pr, "joint permutation of the hidden dimension (one permutation for every layer of B)",
                 ctx->alpha);
    } else {
        struct dp_ctx c;
        uint32_t perms = ctx->permutations > 999 ? 999 : ctx->permutations;
        if (dp_ctx_init(&c, a, b) != CKS_OK)
            err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        else
            err = cks_perm_test(b->hidden, dp_statistic, &c, ctx->seed, perms, CKS_ALT_GREATER, &pr, diag);
        dp_ctx_release(&c);
        if (err)
            goto out;
        set_perm(t, &pr,
                 "joint permutation of the hidden dimension, monotone layer alignment redone inside every permutation",
                 ctx->alpha);
        snprintf(t->statistic_name, sizeof t->statistic_name, "monotone-path score of norm-gain Pearson");
    }
done:
    t->raw_cosine = raw_sum / (double)k;
    t->n_layers = f->n_pairs;
    t->corroborated = strong >= 2;
    t->bytes_read = a->bytes_norms + b->bytes_norms;
    snprintf(t->tensors, sizeof t->tensors, "%zu norm-gain vectors (attn_norm, ffn_norm) over %zu layer pairs", k,
             f->n_pairs);
    snprintf(t->caveats + strlen(t->caveats), sizeof t->caveats - strlen(t->caveats),
             "Raw cosine %.4f is shown for contrast and is not evidence: norm gains are positive around a common "
             "offset, so any two models score near 1.",
             t->raw_cosine);
out:
    free((void *)va);
    free((void *)vb);
    return err;
}

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
    double ma, sa, mb, sb;   /* means and population sds, computed once */
    double r;                /* Pearson r, NAN for a constant side */
} weight_item;

static void matrix_moments(const cmp_matrix *m, double *mean, double *sd)
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

/* Fill an item's moments and Pearson r (one pass for the moments, one for the products). */
static void weight_item_stats(weight_item *it)
{
    double s = 0;
    size_t n = it->a->rows * it->a->cols;
    matrix_moments(it->a, &it->ma, &it->sa);
    matrix_moments(it->b, &it->mb, &it->sb);
    it->r = NAN;
    if (it->sa <= 0 || it->sb <= 0)
        return;
    for (size_t i = 0; i < n; i++)
        s += ((double)it->a->v[i] - it->ma) * ((double)it->b->v[i] - it->mb);
    it->r = s / ((double)n * it->sa * it->sb);
}

static cks_err test_weights(const cmp_ctx *ctx, const cmp_model *a, const cmp_model *b, const cmp_embed_pair *emb,
                            family *f, const char *id, const char *name, cks_diag *diag)
{
    cks_err err = CKS_OK;
    cks_test_result *t = family_add(f, id, name, true);
    weight_item *items = NULL;
    size_t n_items = 0, cap, d = a->hidden, strong = 0;
    float *cross = NULL;
    double constant = 0;
    cks_perm_result pr;
    struct cross_ctx c;

    if (!t)
        return CKS_OK;
    snprintf(t->statistic_name, sizeof t->statistic_name, "mean Pearson r of index-aligned weight rows");
    if (a->hidden != b->hidden || a->hidden == 0) {
        not_run(t, "%s", "hidden sizes differ: index-aligned weights cannot be compared (T4 aligns them)");
        return CKS_OK;
    }
    if (d > MAX_CROSS_DIM) {
        not_run(t, "%s", "hidden size above 8192: the cross-matrix null would not fit the memory bound");
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
        not_run(t, "%s", "no k, v, router or shared-token embedding rows of matching shape on both sides");
        goto out;
    }
    for (size_t i = 0; i < n_items; i++)
        weight_item_stats(&items[i]);
    {
        double null_mean, null_sd;
        if (reused_null(ctx, id, &null_mean, &null_sd)) {
            /* a power check: the statistic itself against the real pair's null, no cross matrix */
            double sum = 0;
            size_t used = 0;
            for (size_t i = 0; i < n_items; i++) {
                if (isfinite(items[i].r)) {
                    sum += items[i].r;
                    used++;
                }
            }
            if (used == 0) {
                not_run(t, "%s", "every candidate weight block is constant");
                goto out;
            }
            judge_by_reused_null(t, sum / (double)used, null_mean, null_sd, ctx->alpha);
            goto out;
        }
    }
    cross = calloc(d * d, sizeof *cross);
    if (!cross) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory for the %zu x %zu cross matrix", d, d);
        goto out;
    }
    {
        size_t used = 0;
        for (size_t i = 0; i < n_items; i++) {
            size_t n = items[i].a->rows * d;
            if (items[i].sa <= 0 || items[i].sb <= 0)
                continue;
            used++;
            if (isfinite(items[i].r) && items[i].r * sqrt((double)n - 1.0) >= ITEM_Z)
                strong++;
            if (add_item(t, items[i].label, items[i].r, NAN) != CKS_OK) {
                err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
                goto out;
            }
        }
        if (used == 0) {
            not_run(t, "%s", "every candidate weight block is constant");
            goto out;
        }
        /* cross += A^T B / (N sa sb used): the statistic of any column permutation is then a trace */
        for (size_t i = 0; i < n_items; i++) {
            const weight_item *it = &items[i];
            if (it->sa <= 0 || it->sb <= 0)
                continue;
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)d, (int)d, (int)it->a->rows,
                        (float)(1.0 / ((double)it->a->rows * (double)d * it->sa * it->sb * (double)used)), it->a->v,
                        (int)d, it->b->v, (int)d, 1.0f, cross, (int)d);
            constant -= it->ma * it->mb / (it->sa * it->sb * (double)used);
        }
    }
    c.d = cross;
    c.dim = d;
    c.constant = constant;
    err = cks_perm_test(d, cross_statistic, &c, ctx->seed + 1, ctx->permutations, CKS_ALT_GREATER, &pr, diag);
    if (err)
        goto out;
    set_perm(t, &pr, "joint permutation of B's residual (input) dimension across every tensor", ctx->alpha);
    t->n_layers = f->n_pairs;
    t->corroborated = strong >= 2;
    t->bytes_read = a->bytes_weights + b->bytes_weights + a->bytes_router + b->bytes_router +
                    (emb ? emb->bytes : 0);
    snprintf(t->tensors, sizeof t->tensors, "%zu blocks: sampled k/v rows, routers, shared-token embedding rows",
             n_items);
out:
    free(items);
    free(cross);
    return err;
}

/* ---- T4: alignment from shared-token embeddings ---- */

/*
 * Reorder the rows of m in place so that new row r is old row perm[r] (inverse: undo it),
 * following the permutation's cycles with one spare row: no second copy of a matrix that
 * can be tens of megabytes.
 */
static void permute_rows(float *m, size_t rows, size_t cols, const uint32_t *perm, float *rowbuf, bool inverse)
{
    /* mark visited positions in the sign bit of a scratch copy of perm would need memory;
     * instead walk each cycle from its smallest index, which identifies it uniquely */
    for (size_t start = 0; start < rows; start++) {
        size_t r = perm[start], len = 1;
        bool smallest = true;
        while (r != start) {
            if (r < start) {
                smallest = false;
                break;
            }
            r = perm[r];
            len++;
        }
        if (!smallest || len == 1)
            continue;
        if (!inverse) {
            /* new[r] = old[perm[r]]: pull values along the cycle */
            size_t cur = start;
            memcpy(rowbuf, m + cur * cols, cols * sizeof *m);
            for (;;) {
                size_t next = perm[cur];
                if (next == start) {
                    memcpy(m + cur * cols, rowbuf, cols * sizeof *m);
                    break;
                }
                memcpy(m + cur * cols, m + next * cols, cols * sizeof *m);
                cur = next;
            }
        } else {
            /* undo: old[perm[r]] = new[r], pushing values back along the cycle */
            size_t cur = start, next;
            memcpy(rowbuf, m + cur * cols, cols * sizeof *m);
            for (;;) {
                next = perm[cur];
                float *tmp_dst = m + next * cols;
                /* swap rowbuf with row `next` */
                for (size_t c = 0; c < cols; c++) {
                    float t = tmp_dst[c];
                    tmp_dst[c] = rowbuf[c];
                    rowbuf[c] = t;
                }
                cur = next;
                if (cur == start)
                    break;
            }
        }
    }
}

/* mean over rows of the largest |entry| of each row */
static double mean_row_max_abs(const float *sim, size_t rows, size_t cols)
{
    double sum = 0;
    for (size_t i = 0; i < rows; i++) {
        float best = 0;
        for (size_t j = 0; j < cols; j++) {
            float v = fabsf(sim[i * cols + j]);
            if (v > best)
                best = v;
        }
        sum += best;
    }
    return rows ? sum / (double)rows : 0;
}

/*
 * T4a. The alignment itself is the exact assignment on |cos| between hidden-dimension
 * columns (AWM). The test of "is there any correspondence at all" uses a statistic that needs
 * no assignment per null draw: the mean over A's dimensions of the best |cos| with any
 * dimension of B. Its null shuffles B's token rows. For wide models each draw looks at a
 * fixed random subset of A's dimensions: the null mean is unchanged and its spread is wider
 * than the full statistic's, so the z is conservative.
 */
static cks_err test_alignment(const cmp_ctx *ctx, const cmp_model *a, const cmp_model *b, const cmp_embed_pair *emb,
                              family *f, cks_diag *diag)
{
    cks_err err = CKS_OK;
    cks_test_result *t = family_add(f, "T4a", "hidden-dimension alignment from shared-token embeddings", true);
    size_t n, da, db, min_tokens, subset;
    const float *ea = NULL;
    float *eb = NULL, *rowbuf = NULL, *sim = NULL, *sub = NULL;
    int32_t *map = NULL;
    int8_t *sign = NULL;
    uint32_t *perm = NULL, *dims = NULL;
    double observed, assigned, sum = 0, sumsq = 0;
    uint32_t draws, beat = 0;
    cks_rng rng;
    (void)a;
    (void)b;

    if (!t)
        return CKS_OK;
    snprintf(t->statistic_name, sizeof t->statistic_name, "mean best |cos| of each hidden dimension of A in B");
    if (!emb || !emb->a.v || !emb->b.v) {
        not_run(t, "%s", emb && emb->note[0] ? emb->note : "no shared-token embedding rows");
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
        not_run(t, "only %s shared tokens: too few to recover a hidden-dimension alignment", why);
        return CKS_OK;
    }
    subset = da > 1024 ? 512 : da;
    rowbuf = malloc(db * sizeof *rowbuf);
    sim = malloc(da * db * sizeof *sim);
    map = malloc(da * sizeof *map);
    sign = malloc(da * sizeof *sign);
    perm = malloc((n > da ? n : da) * sizeof *perm);
    dims = malloc(da * sizeof *dims);
    sub = malloc(n * subset * sizeof *sub);
    if (!rowbuf || !sim || !map || !sign || !perm || !dims || !sub) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory for the alignment (%zu x %zu)", da, db);
        goto out;
    }
    /* the pair's columns are unit vectors already (cmp_embed_pair): S is their cosines */
    ea = emb->a.v;
    eb = emb->b.v; /* shuffled in place for the null draws, and always restored */
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)da, (int)db, (int)n, 1.0f, ea, (int)da, eb, (int)db, 0.0f,
                sim, (int)db);
    observed = mean_row_max_abs(sim, da, db);
    err = cks_lap_max_abs(sim, da, db, map, sign, &assigned, diag);
    if (err)
        goto out;
    assigned /= (double)(da < db ? da : db);
    /* null: shuffle the token rows of B (breaks the token correspondence, nothing else) */
    draws = da <= 256 ? 99 : da <= 1024 ? 49 : 19;
    if (ctx->power_run && isfinite(ctx->t4a_null_sd) && ctx->t4a_null_sd > 0)
        draws = 0; /* a synthetic derivative is judged against the real pair's null */
    cks_rng_seed(&rng, ctx->seed + 4);
    cks_rng_permutation(&rng, dims, da);
    for (size_t r = 0; r < n; r++)
        for (size_t k = 0; k < subset; k++)
            sub[r * subset + k] = ea[r * da + dims[k]];
    for (uint32_t k = 0; k < draws; k++) {
        double s;
        cks_rng_permutation(&rng, perm, n);
        permute_rows(eb, n, db, perm, rowbuf, false);
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)subset, (int)db, (int)n, 1.0f, sub, (int)subset, eb,
                    (int)db, 0.0f, sim, (int)db);
        permute_rows(eb, n, db, perm, rowbuf, true);
        s = mean_row_max_abs(sim, subset, db);
        sum += s;
        sumsq += s * s;
        if (s >= observed)
            beat++;
    }
    {
        cks_perm_result pr;
        memset(&pr, 0, sizeof pr);
        pr.observed = observed;
        pr.alternative = CKS_ALT_GREATER;
        if (draws == 0) {
            pr.null_mean = ctx->t4a_null_mean;
            pr.null_sd = ctx->t4a_null_sd;
            pr.p_value = 1.0;
            pr.z = (observed - pr.null_mean) / pr.null_sd;
            set_perm(t, &pr, "token-row shuffle null of the real pair (reused for this power check)", ctx->alpha);
        } else {
            pr.seed = ctx->seed + 4;
            pr.permutations = draws;
            pr.at_least_as_extreme = beat;
            pr.p_value = (1.0 + beat) / (draws + 1.0);
            pr.null_mean = sum / draws;
            pr.null_sd = draws > 1 ? sqrt(fmax(0.0, (sumsq - sum * sum / draws) / (draws - 1))) : NAN;
            pr.z = pr.null_sd > 0 ? (observed - pr.null_mean) / pr.null_sd : NAN;
            set_perm(t, &pr,
                     subset < da ? "shuffle of B's token rows (null on a random 512 of A's dimensions: conservative)"
                                 : "shuffle of B's token rows",
                     ctx->alpha);
        }
    }
    snprintf(t->caveats + strlen(t->caveats), sizeof t->caveats - strlen(t->caveats),
             "The one-to-one assignment used for T4b/T4c has mean |cos| %.4f. ", assigned);
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
    free(rowbuf);
    free(sim);
    free(sub);
    free(dims);
    free(map);
    free(sign);
    free(perm);
    return err;
}

/* Restrict A to the matched dimensions, and re-index B (permute, flip signs) onto them. */
static cks_err select_columns(const cmp_matrix *src, const int32_t *cols, const int8_t *signs, size_t n,
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
static cks_err reindex_model(const cmp_model *src, const int32_t *idx, const int8_t *signs, size_t n, cmp_model *dst)
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
            err = select_columns(&S->k, idx, signs, n, &D->k);
        if (!err)
            err = select_columns(&S->v, idx, signs, n, &D->v);
        if (!err)
            err = select_columns(&S->router, idx, signs, n, &D->router);
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

static cks_err test_cka(const cmp_ctx *ctx, const cmp_model *a, const cmp_model *b, family *f, cks_diag *diag)
{
    cks_err err = CKS_OK;
    cks_test_result *t = family_add(f, "T4c", "debiased linear CKA of k after alignment", true);
    struct cka_ctx c;
    cks_perm_result pr;
    double cost = 0;
    uint32_t perms;
    size_t strong = 0;

    memset(&c, 0, sizeof c);
    if (!t)
        return CKS_OK;
    snprintf(t->statistic_name, sizeof t->statistic_name, "mean debiased CKA of k over layer pairs");
    if (!a->layers || !b->layers || f->n_pairs == 0 || a->hidden < 4) {
        not_run(t, "%s", "no aligned k projections on both sides");
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
        c.x[c.n_pairs] = transpose(ka);
        c.y[c.n_pairs] = transpose(kb);
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
        not_run(t, "%s", "no k projections of the aligned width on both sides");
        goto out;
    }
    {
        double null_mean, null_sd, observed = 0;
        if (reused_null(ctx, "T4c", &null_mean, &null_sd)) {
            err = cka_statistic(&c, NULL, c.n, &observed, diag);
            if (!err)
                judge_by_reused_null(t, observed, null_mean, null_sd, ctx->alpha);
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
    err = cks_perm_test(c.n, cka_statistic, &c, ctx->seed + 5, perms, CKS_ALT_GREATER, &pr, diag);
    if (err)
        goto out;
    set_perm(t, &pr, "permutation of B's sample rows (hidden dimensions), jointly over layers", ctx->alpha);
    {
        /* per-layer values, and how many stand out on their own */
        double layer_sd = isfinite(pr.null_sd) ? pr.null_sd * sqrt((double)c.n_pairs) : NAN;
        for (size_t p = 0; p < c.n_pairs; p++) {
            cks_cka_result res;
            char label[64];
            if (cks_cka_linear(c.x[p], c.n, c.p1[p], c.y[p], c.p2[p], &res, NULL) != CKS_OK)
                continue;
            snprintf(label, sizeof label, "layer pair %zu k", p);
            if (add_item(t, label, res.debiased, NAN) != CKS_OK) {
                err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
                goto out;
            }
            if (layer_sd > 0 && (res.debiased - pr.null_mean) / layer_sd >= ITEM_Z)
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
static cks_err test_t4(const cmp_ctx *ctx, const cmp_model *a, const cmp_model *b, const cmp_embed_pair *emb, family *f,
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
    if (!f->map) {
        const cks_test_result *t4a = family_find(f, "T4a");
        const char *why = t4a ? t4a->why_not : "no alignment";
        not_run(family_add(f, "T4b-norms", "norm gains after alignment", true), "%s", why);
        not_run(family_add(f, "T4b-weights", "index-aligned weights after alignment", true), "%s", why);
        not_run(family_add(f, "T4c", "debiased linear CKA of k after alignment", true), "%s", why);
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
    err = reindex_model(a, idx_a, NULL, n, &aa);
    if (!err)
        err = reindex_model(b, idx_b, sgn, n, &bb);
    if (err) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory aligning the models");
        goto out;
    }
    {
        /* the pairing may change once B is aligned (unequal depths) */
        err = choose_pairing(&aa, &bb, f, diag);
        if (!err)
            err = test_norms(ctx, &aa, &bb, f, "T4b-norms", "norm gains after alignment", diag);
        /* not the embedding rows: the alignment was fitted to them, so they agree by construction */
        if (!err)
            err = test_weights(ctx, &aa, &bb, NULL, f, "T4b-weights", "index-aligned weights after alignment", diag);
        if (!err)
            err = test_cka(ctx, &aa, &bb, f, diag);
    }
out:
    cmp_model_release(&aa);
    cmp_model_release(&bb);
    free(idx_a);
    free(idx_b);
    free(sgn);
    return err;
}

/* ---- G: checkpoints with no known architecture ---- */

struct elem_ctx {
    const double *a, *b;
    double *scratch;
};

static cks_err elem_statistic(void *vctx, const uint32_t *perm, size_t n, double *value, cks_diag *diag)
{
    struct elem_ctx *c = vctx;
    const double *b = c->b;
    (void)diag;
    if (perm) {
        for (size_t i = 0; i < n; i++)
            c->scratch[i] = c->b[perm[i]];
        b = c->scratch;
    }
    *value = pearson_or_nan(c->a, b, n);
    if (!isfinite(*value))
        *value = 0;
    return CKS_OK;
}

static cks_err test_generic(const cmp_ctx *ctx, const cmp_model *a, const cmp_model *b, family *f, cks_diag *diag)
{
    cks_err err = CKS_OK;
    cks_test_result *t = family_add(f, "G", "name- and shape-matched tensors, per-tensor Pearson", true);
    double *p = NULL, *adjusted = NULL, best_p = 1.0, best_r = NAN;
    size_t n_tests = 0, significant = 0, unusable = 0;
    uint64_t bytes = 0;

    if (!t)
        return CKS_OK;
    snprintf(t->statistic_name, sizeof t->statistic_name, "tensors correlated beyond their permutation null");
    p = calloc(a->n_raw ? a->n_raw : 1, sizeof *p);
    if (!p) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < a->n_raw && !err; i++) {
        const cmp_raw *ra = &a->raw[i];
        const cks_ckpt_tensor *tb = cks_ckpt_find(b->m->ckpt, ra->tensor->info->name);
        const cmp_raw *rb = NULL;
        double *va = NULL, *vb = NULL, *scratch = NULL;
        size_t n = (size_t)ra->tensor->info->nelements;
        cks_perm_result pr;
        struct elem_ctx c;
        uint32_t perms;
        for (size_t j = 0; tb && j < b->n_raw; j++)
            if (b->raw[j].tensor == tb)
                rb = &b->raw[j];
        if (rb && rb->tensor->info->nelements == n && (ra->low_information || rb->low_information))
            unusable++; /* constant, NaN-filled or few-valued on one side */
        if (!rb || !ra->bytes || !rb->bytes || ra->low_information || rb->low_information ||
            rb->tensor->info->nelements != n || n < 16 ||
            !cks_dtype_is_float(ra->tensor->info->dtype) || !cks_dtype_is_float(rb->tensor->info->dtype) ||
            !cks_decode_supported(ra->tensor->info->dtype) || !cks_decode_supported(rb->tensor->info->dtype))
            continue;
        va = malloc(n * sizeof *va);
        vb = malloc(n * sizeof *vb);
        scratch = malloc(n * sizeof *scratch);
        if (!va || !vb || !scratch)
            err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        if (!err)
            err = cks_decode_f64(ra->tensor->info->dtype, ra->bytes, n, va, NULL, diag);
        if (!err)
            err = cks_decode_f64(rb->tensor->info->dtype, rb->bytes, n, vb, NULL, diag);
        if (!err && !(vector_usable(va, n) && vector_usable(vb, n)))
            unusable++;
        if (!err && vector_usable(va, n) && vector_usable(vb, n)) {
            c.a = va;
            c.b = vb;
            c.scratch = scratch;
            perms = (uint32_t)fmax(99.0, fmin(999.0, 2e8 / (double)n));
            err = cks_perm_test(n, elem_statistic, &c, ctx->seed + 7 + i, perms, CKS_ALT_GREATER, &pr, diag);
            if (!err) {
                double pv = pr.p_value;
                /* the exact floor 1/(T+1) cannot reach alpha: use the permutation z beyond it */
                if (pr.at_least_as_extreme == 0 && isfinite(pr.z))
                    pv = fmin(pv, cks_normal_sf(pr.z));
                p[n_tests++] = pv;
                bytes += ra->len + rb->len;
                if (pv < best_p) {
                    best_p = pv;
                    best_r = pr.observed;
                }
                if (add_item(t, ra->tensor->info->name, pr.observed, NAN) != CKS_OK)
                    err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
            }
        }
        free(va);
        free(vb);
        free(scratch);
    }
    if (err)
        goto out;
    if (n_tests == 0) {
        if (unusable > 0) {
            char why[160];
            snprintf(why, sizeof why, "%zu name-matched tensor(s), but each is constant, few-valued or NaN/Inf on one side",
                     unusable);
            not_run(t, "%s", why);
        } else {
            not_run(t, "%s", "no tensor shares its name, shape and a float dtype on both sides");
        }
        goto out;
    }
    adjusted = malloc(n_tests * sizeof *adjusted);
    if (!adjusted || cks_holm(p, n_tests, adjusted, NULL) != CKS_OK) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < n_tests; i++)
        if (adjusted[i] <= ctx->alpha)
            significant++;
    t->ran = true;
    t->statistic = (double)significant;
    t->null_mean = 0;
    t->effect = best_r;
    t->p_value = fmin(1.0, best_p * (double)n_tests); /* Bonferroni over the tensors: the family min */
    t->p_exact = false;
    t->permutations = 0;
    t->seed = ctx->seed + 7;
    snprintf(t->null_kind, sizeof t->null_kind, "per-tensor element permutation, Holm across %zu tensors", n_tests);
    t->corroborated = significant >= 2;
    t->bytes_read = bytes;
    snprintf(t->tensors, sizeof t->tensors, "%zu name- and shape-matched float tensors; %zu significant", n_tests,
             significant);
    if (significant == 1)
        snprintf(t->caveats, sizeof t->caveats,
                 "Only one tensor correlates: a single task-shaped tensor cannot decide derivation. ");
out:
    free(p);
    free(adjusted);
    return err;
}

/*
 * G-rows: the same tensors with their rows (output units, neurons) possibly permuted. Rows of
 * A and B are matched one to one by assignment on |cos|; the statistic is the mean matched
 * |cos|, and its null permutes B's columns (one permutation for all rows: the rows stay
 * rows, their correspondence with A's input dimensions is broken). A derivative whose hidden
 * units were shuffled keeps each row, so its rows find their twins.
 */
#define ROWS_MAX 512u   /* one assignment per draw: n^3 work, kept to seconds */
#define ROWS_MIN_WIDTH 16u /* a cosine over fewer coordinates says little */
#define ROWS_MAX_TESTS 64u
#define ROWS_DRAWS 19u

static cks_err row_match_score(const float *x, const float *y, size_t rows, size_t cols, float *sim, int32_t *map,
                               int8_t *sign, double *score, cks_diag *diag)
{
    double total = 0;
    cks_err err;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)rows, (int)rows, (int)cols, 1.0f, x, (int)cols, y,
                (int)cols, 0.0f, sim, (int)rows);
    err = cks_lap_max_abs(sim, rows, rows, map, sign, &total, diag);
    if (!err)
        *score = total / (double)rows;
    return err;
}

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

/* Match the rows of x and y (unit rows, rows x cols) and draw the column-permutation null. */
static cks_err row_match_test(const float *x, const float *y, size_t rows, size_t cols, uint64_t seed,
                              double *observed, double *null_mean, double *null_sd, cks_diag *diag)
{
    cks_err err = CKS_OK;
    float *yp = malloc(rows * cols * sizeof *yp), *sim = malloc(rows * rows * sizeof *sim);
    int32_t *map = malloc(rows * sizeof *map);
    int8_t *sign = malloc(rows * sizeof *sign);
    uint32_t *perm = malloc(cols * sizeof *perm);
    double sum = 0, sumsq = 0;
    cks_rng rng;
    if (!yp || !sim || !map || !sign || !perm) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        goto out;
    }
    err = row_match_score(x, y, rows, cols, sim, map, sign, observed, diag);
    cks_rng_seed(&rng, seed);
    for (uint32_t k = 0; k < ROWS_DRAWS && !err; k++) {
        double sc = 0;
        cks_rng_permutation(&rng, perm, cols);
        for (size_t r = 0; r < rows; r++)
            for (size_t c = 0; c < cols; c++)
                yp[r * cols + c] = y[r * cols + perm[c]];
        err = row_match_score(x, yp, rows, cols, sim, map, sign, &sc, diag);
        sum += sc;
        sumsq += sc * sc;
    }
    *null_mean = sum / ROWS_DRAWS;
    *null_sd = sqrt(fmax(0.0, (sumsq - sum * sum / ROWS_DRAWS) / (ROWS_DRAWS - 1)));
out:
    free(yp);
    free(sim);
    free(map);
    free(sign);
    free(perm);
    return err;
}

static void transpose_into(const float *m, size_t rows, size_t cols, float *out)
{
    for (size_t r = 0; r < rows; r++)
        for (size_t c = 0; c < cols; c++)
            out[c * rows + r] = m[r * cols + c];
}

/*
 * Each 2-D tensor is tested twice: its rows (output units shuffled, e.g. the first layer of a
 * permuted MLP) and its columns (input units shuffled, the next layer). Holm runs over every
 * (tensor, axis) test; corroboration needs two different tensors.
 */
static cks_err test_generic_rows(const cmp_ctx *ctx, const cmp_model *a, const cmp_model *b, family *f,
                                 cks_diag *diag)
{
    cks_err err = CKS_OK;
    cks_test_result *t = family_add(f, "G-rows", "name- and shape-matched 2-D tensors, rows or columns matched", true);
    size_t n_tests = 0, significant = 0, cap = 2 * (a->n_raw ? a->n_raw : 1);
    double best_z = -INFINITY, best_p = 1.0, *p = NULL, *adjusted = NULL;
    size_t *tensor_of = NULL;
    uint64_t bytes = 0;
    bool *tensor_hit = NULL;

    if (!t)
        return CKS_OK;
    snprintf(t->statistic_name, sizeof t->statistic_name, "tensors whose rows or columns find twins beyond the null");
    p = calloc(cap, sizeof *p);
    tensor_of = calloc(cap, sizeof *tensor_of);
    tensor_hit = calloc(a->n_raw ? a->n_raw : 1, sizeof *tensor_hit);
    if (!p || !tensor_of || !tensor_hit) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < a->n_raw && !err; i++) {
        const cmp_raw *ra = &a->raw[i], *rb = NULL;
        const cks_tensor_info *ia = ra->tensor->info;
        const cks_ckpt_tensor *tb = cks_ckpt_find(b->m->ckpt, ia->name);
        size_t rows, cols;
        float *x = NULL, *y = NULL, *xt = NULL, *yt = NULL;
        bool finite = true;
        for (size_t j = 0; tb && j < b->n_raw; j++)
            if (b->raw[j].tensor == tb)
                rb = &b->raw[j];
        if (!rb || !ra->bytes || !rb->bytes || ia->ndim != 2 || rb->tensor->info->ndim != 2 ||
            ia->shape[0] != rb->tensor->info->shape[0] || ia->shape[1] != rb->tensor->info->shape[1] ||
            !cks_dtype_is_float(ia->dtype) || !cks_decode_supported(ia->dtype) ||
            !cks_decode_supported(rb->tensor->info->dtype) || ra->low_information || rb->low_information)
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
                double observed = 0, mean = 0, sd = 0, z, pv;
                char label[200];
                if (n > ROWS_MAX || m < ROWS_MIN_WIDTH || n_tests >= ROWS_MAX_TESTS)
                    continue;
                unit_rows(xx, n, m);
                unit_rows(yy, n, m);
                err = row_match_test(xx, yy, n, m, ctx->seed + 31 + 2 * i + (size_t)axis, &observed, &mean, &sd, diag);
                if (err)
                    break;
                z = sd > 0 ? (observed - mean) / sd : (observed > mean + 1e-9 ? INFINITY : 0);
                pv = isfinite(z) ? cks_normal_sf(z) : (z > 0 ? 0 : 1);
                tensor_of[n_tests] = i;
                p[n_tests++] = pv;
                if (z > best_z) {
                    best_z = z;
                    best_p = pv;
                }
                snprintf(label, sizeof label, "%.140s %s (matched |cos| %.3f, null %.3f)", ia->name,
                         axis ? "columns" : "rows", observed, mean);
                if (add_item(t, label, z, NAN) != CKS_OK)
                    err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
            }
            bytes += ra->len + rb->len;
        }
        free(x);
        free(y);
        free(xt);
        free(yt);
    }
    if (err)
        goto out;
    if (n_tests == 0) {
        not_run(t, "%s", "no name- and shape-matched 2-D float tensor with 4 to 512 rows (or columns) of width >= 16 on both sides");
        goto out;
    }
    adjusted = malloc(n_tests * sizeof *adjusted);
    if (!adjusted || cks_holm(p, n_tests, adjusted, NULL) != CKS_OK) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        goto out;
    }
    for (size_t k = 0; k < n_tests; k++)
        if (adjusted[k] <= ctx->alpha && !tensor_hit[tensor_of[k]]) {
            tensor_hit[tensor_of[k]] = true;
            significant++;
        }
    t->ran = true;
    t->statistic = (double)significant;
    t->null_mean = 0;
    t->z = best_z;
    t->effect = best_z;
    t->p_value = fmin(1.0, best_p * (double)n_tests);
    t->p_exact = false;
    t->permutations = ROWS_DRAWS;
    t->seed = ctx->seed + 31;
    snprintf(t->null_kind, sizeof t->null_kind, "B's other axis permuted, %u draws, Holm over %zu tests", ROWS_DRAWS,
             n_tests);
    t->corroborated = significant >= 2;
    t->power = 1;
    snprintf(t->power_note, sizeof t->power_note,
             "by construction: a shuffled copy with noise keeps each row's twin (|cos| near 1 against ~1/sqrt(width))");
    t->bytes_read = bytes;
    snprintf(t->tensors, sizeof t->tensors, "2-D tensors tested on rows and columns; %zu tensors matched beyond the null",
             significant);
out:
    free(p);
    free(adjusted);
    free(tensor_of);
    free(tensor_hit);
    return err;
}

/* ---- the family on one pair ---- */

static cks_err run_family(const cmp_ctx *ctx, const cmp_model *a, const cmp_model *b, const cmp_embed_pair *emb,
                          bool with_t1, family *f, cks_diag *diag)
{
    cks_err err = CKS_OK;
    unsigned tests = ctx->tests_override ? ctx->tests_override
                     : ctx->opts && ctx->opts->tests ? ctx->opts->tests
                                                     : CKS_TEST_ALL;

    memset(f, 0, sizeof *f);
    if (with_t1 && (tests & CKS_TEST_T1))
        err = test_identity(ctx, a, b, f, diag);
    if (err)
        return err;
    if (!a->known_arch || !b->known_arch || a->n_layers <= 0 || b->n_layers <= 0) {
        if (with_t1)
            err = test_generic(ctx, a, b, f, diag);
        if (with_t1 && !err)
            err = test_generic_rows(ctx, a, b, f, diag);
        return err;
    }
    err = choose_pairing(a, b, f, diag);
    if (!err && (tests & CKS_TEST_T2))
        err = test_norms(ctx, a, b, f, "T2", "norm gains (Pearson, joint permutation null)", diag);
    if (!err && (tests & CKS_TEST_T3))
        err = test_weights(ctx, a, b, emb, f, "T3", "index-aligned k/v/router/embedding rows", diag);
    if (!err && (tests & CKS_TEST_T4))
        err = test_t4(ctx, a, b, emb, f, diag);
    return err;
}

/* Holm over the family's primary tests that ran and are valid; sets p_holm and rejects. */
static void apply_holm(family *f, double alpha)
{
    double p[MAX_TESTS], adj[MAX_TESTS];
    size_t idx[MAX_TESTS], k = 0;
    for (size_t i = 0; i < f->n; i++) {
        cks_test_result *t = &f->t[i];
        t->rejects = false;
        t->p_holm = NAN;
        if (!t->primary || !t->ran || !t->valid || !isfinite(t->p_value))
            continue;
        idx[k] = i;
        p[k] = fmin(1.0, fmax(0.0, t->p_value));
        k++;
    }
    if (k == 0 || cks_holm(p, k, adj, NULL) != CKS_OK)
        return;
    for (size_t j = 0; j < k; j++) {
        f->t[idx[j]].p_holm = adj[j];
        f->t[idx[j]].rejects = adj[j] <= alpha;
    }
}

/* ---- synthetic positives: A plus noise, and the same permuted and sign-flipped ---- */

static double values_sd(const double *v, size_t n)
{
    double m = 0, ss = 0;
    for (size_t i = 0; i < n; i++)
        m += v[i];
    m /= (double)(n ? n : 1);
    for (size_t i = 0; i < n; i++)
        ss += (v[i] - m) * (v[i] - m);
    return n > 1 ? sqrt(ss / (double)(n - 1)) : 0;
}

static double *noisy_vector(const double *v, size_t n, cks_rng *rng)
{
    double *out, sd;
    if (!v)
        return NULL;
    out = malloc(n * sizeof *out);
    if (!out)
        return NULL;
    sd = values_sd(v, n);
    for (size_t i = 0; i < n; i++)
        out[i] = v[i] + SYNTH_NOISE * sd * cks_rng_normal(rng);
    return out;
}

static cks_err noisy_matrix(const cmp_matrix *m, cks_rng *rng, cmp_matrix *out)
{
    double mean, sd;
    memset(out, 0, sizeof *out);
    if (!m->v)
        return CKS_OK;
    out->v = malloc(m->rows * m->cols * sizeof *out->v);
    if (!out->v)
        return CKS_ERR_NOMEM;
    out->rows = m->rows;
    out->cols = m->cols;
    matrix_moments(m, &mean, &sd);
    for (size_t i = 0; i < m->rows * m->cols; i++)
        out->v[i] = m->v[i] + (float)(SYNTH_NOISE * sd * cks_rng_normal(rng));
    return CKS_OK;
}

static cks_err synth_noisy(const cmp_model *a, const cmp_embed_pair *emb, uint64_t seed, cmp_model *out,
                           cmp_embed_pair *eout)
{
    cks_err err = CKS_OK;
    cks_rng rng;
    cks_rng_seed(&rng, seed);
    memset(out, 0, sizeof *out);
    memset(eout, 0, sizeof *eout);
    out->m = a->m;
    out->synthetic = true;
    out->known_arch = a->known_arch;
    out->n_layers = a->n_layers;
    out->hidden = a->hidden;
    out->layers = calloc((size_t)(a->n_layers > 0 ? a->n_layers : 1), sizeof *out->layers);
    if (!out->layers)
        return CKS_ERR_NOMEM;
    /* Large models: a synthetic derivative of 8 evenly spaced layers. Fewer layers give the
     * tests less to work with, so power shown on them is conservative, and it keeps the
     * copies within the memory bound. */
    int stride = (size_t)a->n_layers * a->hidden > 16u * 4096u ? (a->n_layers + 7) / 8 : 1;
    for (int l = 0; l < a->n_layers && !err; l++) {
        const cmp_layer *S = &a->layers[l];
        cmp_layer *D = &out->layers[l];
        if (l % stride != 0)
            continue;
        D->attn_norm = noisy_vector(S->attn_norm, a->hidden, &rng);
        D->ffn_norm = noisy_vector(S->ffn_norm, a->hidden, &rng);
        D->k_total_rows = S->k_total_rows;
        D->v_total_rows = S->v_total_rows;
        if ((S->attn_norm && !D->attn_norm) || (S->ffn_norm && !D->ffn_norm))
            err = CKS_ERR_NOMEM;
        if (!err)
            err = noisy_matrix(&S->k, &rng, &D->k);
        if (!err)
            err = noisy_matrix(&S->v, &rng, &D->v);
        if (!err)
            err = noisy_matrix(&S->router, &rng, &D->router);
    }
    if (!err && emb && emb->a.v) {
        err = noisy_matrix(&emb->a, &rng, &eout->b);
        if (!err)
            cmp_normalise_columns(&eout->b);
        if (!err) {
            eout->a = emb->a; /* borrowed: the caller must not release eout->a */
            eout->shared = emb->shared;
        }
    }
    return err;
}

/* B' = B re-indexed by a random permutation and random signs of the hidden dimension. */
static cks_err synth_permuted(const cmp_model *b, const cmp_embed_pair *emb, uint64_t seed, cmp_model *out,
                              cmp_embed_pair *eout)
{
    cks_err err;
    cks_rng rng;
    uint32_t *perm = malloc((b->hidden ? b->hidden : 1) * sizeof *perm);
    int32_t *idx = malloc((b->hidden ? b->hidden : 1) * sizeof *idx);
    int8_t *sgn = malloc((b->hidden ? b->hidden : 1) * sizeof *sgn);
    memset(eout, 0, sizeof *eout);
    if (!perm || !idx || !sgn) {
        err = CKS_ERR_NOMEM;
        goto out;
    }
    cks_rng_seed(&rng, seed);
    cks_rng_permutation(&rng, perm, b->hidden);
    for (size_t i = 0; i < b->hidden; i++) {
        idx[i] = (int32_t)perm[i];
        sgn[i] = (cks_rng_next(&rng) & 1) ? 1 : -1;
    }
    err = reindex_model(b, idx, sgn, b->hidden, out);
    if (!err && emb && emb->b.v) {
        eout->a = emb->a; /* borrowed */
        err = select_columns(&emb->b, idx, sgn, b->hidden, &eout->b);
        eout->shared = emb->shared;
    }
out:
    free(perm);
    free(idx);
    free(sgn);
    return err;
}

/* A test "flags" a pair when it rejects at alpha on its own (its floor allowing). */
static bool flags(const cks_test_result *t, double alpha)
{
    if (!t || !t->ran || !isfinite(t->p_value))
        return false;
    if (t->p_value <= alpha)
        return true;
    /* the exact floor cannot go below 1/(T+1): accept the floor with a clear z */
    return t->permutations > 0 && t->p_value <= 1.0 / (t->permutations + 1.0) + 1e-12 && isfinite(t->z) && t->z >= 6;
}

/* ---- descriptive results ---- */

static void describe(const cmp_model *a, const cmp_model *b, const cmp_embed_pair *emb, const family *f,
                     cks_compare_result *r)
{
    size_t la = a->n_layers > 0 ? (size_t)a->n_layers : 0, lb = b->n_layers > 0 ? (size_t)b->n_layers : 0;
    r->layers_a = a->n_layers;
    r->layers_b = b->n_layers;
    r->hidden_a = a->hidden;
    r->hidden_b = b->hidden;
    r->family_a = a->roles ? a->roles->family : "unknown";
    r->family_b = b->roles ? b->roles->family : "unknown";
    r->std_curve_corr = NAN;
    r->router_match = NAN;
    if (emb) {
        r->vocab_a = emb->vocab_a;
        r->vocab_b = emb->vocab_b;
        r->vocab_shared = emb->shared;
    }
    if (la && lb && a->layers && b->layers && a->hidden == b->hidden && la <= CKS_LAYERS_MAX_DIM &&
        lb <= CKS_LAYERS_MAX_DIM) {
        bool any = false;
        r->layer_matrix = malloc(la * lb * sizeof *r->layer_matrix);
        r->row_best = malloc(la * sizeof *r->row_best);
        r->row_margin = malloc(la * sizeof *r->row_margin);
        if (!r->layer_matrix || !r->row_best || !r->row_margin || norm_matrix(a, b, r->layer_matrix, &any) != CKS_OK ||
            !any ||
            cks_layer_margins(r->layer_matrix, la, lb, CKS_LAYER_ROWS, r->row_best, r->row_margin, NULL, NULL) !=
                CKS_OK) {
            free(r->layer_matrix);
            r->layer_matrix = NULL;
        }
    }
    if (f->map && la && lb && a->layers && b->layers) {
        /* the same matrix once B is re-indexed onto A's dimensions */
        int32_t *ia = malloc(f->map_len * sizeof *ia), *ib = malloc(f->map_len * sizeof *ib);
        int8_t *sg = malloc(f->map_len * sizeof *sg);
        size_t n = 0;
        cmp_model aa, bb;
        memset(&aa, 0, sizeof aa);
        memset(&bb, 0, sizeof bb);
        if (ia && ib && sg) {
            for (size_t i = 0; i < f->map_len; i++)
                if (f->map[i] >= 0) {
                    ia[n] = (int32_t)i;
                    ib[n] = f->map[i];
                    sg[n] = f->sign[i];
                    n++;
                }
            if (reindex_model(a, ia, NULL, n, &aa) == CKS_OK && reindex_model(b, ib, sg, n, &bb) == CKS_OK) {
                bool any = false;
                r->layer_matrix_aligned = malloc(la * lb * sizeof *r->layer_matrix_aligned);
                if (!r->layer_matrix_aligned || norm_matrix(&aa, &bb, r->layer_matrix_aligned, &any) != CKS_OK || !any) {
                    free(r->layer_matrix_aligned);
                    r->layer_matrix_aligned = NULL;
                }
            }
        }
        cmp_model_release(&aa);
        cmp_model_release(&bb);
        free(ia);
        free(ib);
        free(sg);
    }
    if (f->n_pairs) {
        r->path_a = malloc(f->n_pairs * sizeof *r->path_a);
        r->path_b = malloc(f->n_pairs * sizeof *r->path_b);
        if (r->path_a && r->path_b) {
            for (size_t p = 0; p < f->n_pairs; p++) {
                r->path_a[p] = f->pairs[p].a;
                r->path_b[p] = f->pairs[p].b;
            }
            r->n_path = f->n_pairs;
        }
    }
    /* per-layer std of the sampled k rows: supporting evidence only */
    if (la >= 4 && lb >= 4 && a->layers && b->layers) {
        r->std_curve_a = calloc(la, sizeof *r->std_curve_a);
        r->std_curve_b = calloc(lb, sizeof *r->std_curve_b);
        if (r->std_curve_a && r->std_curve_b) {
            bool ok = true;
            for (size_t l = 0; l < la; l++) {
                double m, sd;
                if (!a->layers[l].k.v)
                    ok = false;
                else {
                    matrix_moments(&a->layers[l].k, &m, &sd);
                    r->std_curve_a[l] = sd;
                }
            }
            for (size_t l = 0; l < lb; l++) {
                double m, sd;
                if (!b->layers[l].k.v)
                    ok = false;
                else {
                    matrix_moments(&b->layers[l].k, &m, &sd);
                    r->std_curve_b[l] = sd;
                }
            }
            if (!ok || cks_std_curve_correlation(r->std_curve_a, la, r->std_curve_b, lb, 1, &r->std_curve_corr, NULL) !=
                           CKS_OK)
                r->std_curve_corr = NAN;
            if (!ok) {
                free(r->std_curve_a);
                free(r->std_curve_b);
                r->std_curve_a = r->std_curve_b = NULL;
            }
        }
    }
    /* router rows of the first paired layer, matched by assignment on |cos| */
    if (f->n_pairs && a->layers && b->layers) {
        const cmp_matrix *ra = &a->layers[f->pairs[0].a].router, *rb = &b->layers[f->pairs[0].b].router;
        if (ra->v && rb->v && ra->cols == rb->cols && ra->rows && rb->rows && ra->rows <= 4096 && rb->rows <= 4096) {
            float *x = malloc(ra->rows * ra->cols * sizeof *x), *y = malloc(rb->rows * rb->cols * sizeof *y);
            float *s = malloc(ra->rows * rb->rows * sizeof *s);
            int32_t *m = malloc(ra->rows * sizeof *m);
            int8_t *sg = malloc(ra->rows * sizeof *sg);
            double total;
            if (x && y && s && m && sg) {
                /* rows as unit vectors: s = X Y^T is the cosine of every expert pair */
                for (size_t i = 0; i < ra->rows; i++) {
                    double ss = 0;
                    for (size_t c = 0; c < ra->cols; c++)
                        ss += (double)ra->v[i * ra->cols + c] * ra->v[i * ra->cols + c];
                    for (size_t c = 0; c < ra->cols; c++)
                        x[i * ra->cols + c] = ss > 0 ? (float)(ra->v[i * ra->cols + c] / sqrt(ss)) : 0;
                }
                for (size_t i = 0; i < rb->rows; i++) {
                    double ss = 0;
                    for (size_t c = 0; c < rb->cols; c++)
                        ss += (double)rb->v[i * rb->cols + c] * rb->v[i * rb->cols + c];
                    for (size_t c = 0; c < rb->cols; c++)
                        y[i * rb->cols + c] = ss > 0 ? (float)(rb->v[i * rb->cols + c] / sqrt(ss)) : 0;
                }
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)ra->rows, (int)rb->rows, (int)ra->cols, 1.0f, x,
                            (int)ra->cols, y, (int)rb->cols, 0.0f, s, (int)rb->rows);
                if (cks_lap_max_abs(s, ra->rows, rb->rows, m, sg, &total, NULL) == CKS_OK)
                    r->router_match = total / (double)(ra->rows < rb->rows ? ra->rows : rb->rows);
            }
            free(x);
            free(y);
            free(s);
            free(m);
            free(sg);
        }
    }
    /* config differences that matter for the comparison */
    if (a->roles && b->roles) {
        const cks_arch_config *x = &a->roles->cfg, *y = &b->roles->cfg;
        size_t at = 0;
        struct {
            const char *name;
            int64_t va, vb;
        } fields[] = {{"num_hidden_layers", x->num_hidden_layers, y->num_hidden_layers},
                      {"hidden_size", x->hidden_size, y->hidden_size},
                      {"num_attention_heads", x->num_attention_heads, y->num_attention_heads},
                      {"num_key_value_heads", x->num_key_value_heads, y->num_key_value_heads},
                      {"intermediate_size", x->intermediate_size, y->intermediate_size},
                      {"vocab_size", x->vocab_size, y->vocab_size},
                      {"n_routed_experts", x->n_routed_experts, y->n_routed_experts}};
        if (strcmp(x->model_type, y->model_type) != 0)
            at += (size_t)snprintf(r->config_diff + at, sizeof r->config_diff - at, "model_type %s vs %s; ",
                                   x->model_type[0] ? x->model_type : "?", y->model_type[0] ? y->model_type : "?");
        for (size_t i = 0; i < sizeof fields / sizeof fields[0] && at < sizeof r->config_diff; i++)
            if (fields[i].va != fields[i].vb)
                at += (size_t)snprintf(r->config_diff + at, sizeof r->config_diff - at, "%s %lld vs %lld; ",
                                       fields[i].name, (long long)fields[i].va, (long long)fields[i].vb);
    }
}

/* ---- verdict ---- */

static const char *short_p(double p, char *buf, size_t size)
{
    if (!isfinite(p))
        snprintf(buf, size, "n/a");
    else if (p < 1e-12)
        snprintf(buf, size, "< 1e-12");
    else
        snprintf(buf, size, "%.2g", p);
    return buf;
}

/* Which rejecting test a person should read first: the most interpretable one. */
static int lead_rank(const cks_test_result *t)
{
    static const char *const order[] = {"T2", "T3", "T4b-norms", "T4b-weights", "T4c", "T4a", "G", "G-rows", "T1"};
    for (int i = 0; i < (int)(sizeof order / sizeof order[0]); i++)
        if (strcmp(t->id, order[i]) == 0)
            return i;
    return 99;
}

static const char *operation_class(family *f, const cmp_model *a, const cmp_model *b)
{
    const cks_test_result *t2 = family_find(f, "T2"), *t3 = family_find(f, "T3");
    bool aligned_only = !((t2 && t2->rejects) || (t3 && t3->rejects));
    if (a->n_layers != b->n_layers && a->n_layers > 0 && b->n_layers > 0)
        return aligned_only ? "permuted and with layers inserted or removed (alignment and monotone layer path)"
                            : "fine-tuned with layers inserted or removed (monotone layer path)";
    if (aligned_only && family_find(f, "T4a") && family_find(f, "T4a")->rejects)
        return "permuted or sign-flipped in its hidden dimension (found by alignment)";
    if (aligned_only)
        return "related through the tensors listed";
    return "fine-tuning-like: same residual basis, index-aligned weights agree";
}

static void decide(const cmp_ctx *ctx, family *f, const cmp_model *a, const cmp_model *b, cks_compare_result *r)
{
    size_t n_reject = 0, n_ran = 0, unpowered = 0;
    bool corroborated = false, t4_ran = false;
    const cks_test_result *lead = NULL;
    char pbuf[32], list[256] = "";
    size_t at = 0;
    (void)ctx;

    for (size_t i = 0; i < f->n; i++) {
        const cks_test_result *t = &f->t[i];
        if (!t->primary || !t->ran || !t->valid)
            continue;
        n_ran++;
        if (strcmp(t->id, "T4a") == 0)
            t4_ran = true;
        if (t->rejects) {
            n_reject++;
            corroborated = corroborated || t->corroborated;
            if (!lead || lead_rank(t) < lead_rank(lead))
                lead = t;
            at += (size_t)snprintf(list + at, at < sizeof list ? sizeof list - at : 0, "%s%s", at ? ", " : "", t->id);
        } else if (t->power == 0) {
            unpowered++;
        }
    }
    if (n_reject >= 2)
        corroborated = true;

    /* what the tests cover */
    snprintf(r->covered, sizeof r->covered, "byte copies under any names or sharding%s%s%s",
             (a->known_arch && b->known_arch) ? "; fine-tuning that keeps the residual basis (index-aligned norms and "
                                                "weights)"
                                              : "; name- and shape-matched tensors, index-aligned and with their rows "
                                                "(neurons) permuted",
             t4_ran ? "; residual permutations and sign flips (alignment from shared-token embeddings)" : "",
             (a->known_arch && b->known_arch) ? "; layers inserted or removed (monotone layer alignment)" : "");
    snprintf(r->not_covered, sizeof r->not_covered,
             "general residual rotations (e.g. QuaRot with norm folding)%s; re-initialised embeddings and attention; "
             "distillation; data-level reuse",
             t4_ran ? "" : "; residual permutations and sign flips (no alignment could be run)");

    if (f->identical) {
        r->verdict = CKS_VERDICT_IDENTICAL;
        snprintf(r->reason, sizeof r->reason,
                 "Every tensor of both checkpoints was read and each one of A has a byte-identical counterpart in B "
                 "(%zu tensors, SHA-256), whatever their names and shards. B is a copy of A.",
                 f->n_matches);
        return;
    }
    if (n_reject > 0 && corroborated) {
        r->verdict = CKS_VERDICT_DERIVED;
        if (strcmp(lead->id, "G") == 0)
            snprintf(r->reason, sizeof r->reason,
                     "%.0f name- and shape-matched tensors correlate beyond their permutation nulls (strongest r "
                     "%.3f, Holm-adjusted p %s), corroborated across %s. Rejecting tests: %s.",
                     lead->statistic, lead->effect, short_p(lead->p_holm, pbuf, sizeof pbuf),
                     n_reject >= 2 ? "tests" : "tensors", list);
        else
            snprintf(r->reason, sizeof r->reason,
                     "B is derived from A, %s. %s: %s %.4g against a null mean of %.3g (Holm-adjusted p %s), "
                     "corroborated across %s; rejecting tests: %s.",
                     operation_class(f, a, b), lead->id, lead->statistic_name, lead->statistic, lead->null_mean,
                     short_p(lead->p_holm, pbuf, sizeof pbuf), n_reject >= 2 ? "tests" : "layers or tensor types",
                     list);
        return;
    }
    if (n_reject > 0) {
        r->verdict = CKS_VERDICT_INCONCLUSIVE;
        snprintf(r->reason, sizeof r->reason,
                 "Only %s rejects, and its evidence comes from a single tensor type or layer (%s); one task-shaped "
                 "tensor cannot decide derivation.",
                 lead->id, lead->tensors);
        return;
    }
    {
        /* T1 alone never clears a pair: it only sees byte copies */
        size_t beyond_t1 = 0;
        for (size_t i = 0; i < f->n; i++)
            if (f->t[i].primary && f->t[i].ran && f->t[i].valid && strcmp(f->t[i].id, "T1") != 0)
                beyond_t1++;
        if (n_ran > 0 && beyond_t1 == 0) {
            const cks_test_result *g = family_find(f, "G");
            r->verdict = CKS_VERDICT_INCONCLUSIVE;
            snprintf(r->reason, sizeof r->reason,
                     "No tensor is byte-identical, but nothing else could be compared (%s), so derivation can be "
                     "neither shown nor excluded.",
                     g && g->why_not[0] ? g->why_not : "no comparable tensors");
            return;
        }
    }
    if (n_ran == 0) {
        r->verdict = CKS_VERDICT_INCONCLUSIVE;
        snprintf(r->reason, sizeof r->reason,
                 "No primary test could run: the checkpoints share no comparable tensors (different architectures, "
                 "or nothing read).");
        return;
    }
    if (a->known_arch && b->known_arch && !t4_ran) {
        const cks_test_result *t4a = family_find(f, "T4a");
        r->verdict = CKS_VERDICT_INCONCLUSIVE;
        snprintf(r->reason, sizeof r->reason,
                 "No test rejects, but the hidden-dimension alignment could not run (%s), so a permuted or "
                 "sign-flipped derivative cannot be excluded.",
                 t4a && t4a->why_not[0] ? t4a->why_not : "not run");
        return;
    }
    if (unpowered > 0) {
        r->verdict = CKS_VERDICT_INCONCLUSIVE;
        snprintf(r->reason, sizeof r->reason,
                 "No test rejects, but %zu test(s) did not show the power to detect a derivative here (see power "
                 "notes), so silence is not evidence.",
                 unpowered);
        return;
    }
    for (size_t i = 0; i < f->n; i++)
        if (f->t[i].primary && f->t[i].ran && f->t[i].valid && f->t[i].power < 0) {
            r->verdict = CKS_VERDICT_INCONCLUSIVE;
            snprintf(r->reason, sizeof r->reason,
                     "No test rejects, but %s has no power check (no positive control, synthetic checks off), so "
                     "silence is not evidence.",
                     f->t[i].id);
            return;
        }
    {
        const cks_test_result *t2 = family_find(f, "T2");
        r->verdict = CKS_VERDICT_NOT_DERIVED;
        if (t2 && t2->ran && isfinite(t2->raw_cosine))
            snprintf(r->reason, sizeof r->reason,
                     "No evidence of weight-level derivation under the tested transformations: every valid test stays "
                     "at its null (norm-gain Pearson %.3f, p %s) and each one flags a synthetic derivative. The raw "
                     "cosine of the norm gains is %.3f, which any two models reach: it is not evidence.",
                     t2->statistic, short_p(t2->p_value, pbuf, sizeof pbuf), t2->raw_cosine);
        else
            snprintf(r->reason, sizeof r->reason,
                     "No evidence of weight-level derivation under the tested transformations: every valid test stays "
                     "at its null and each one has shown the power to flag a derivative.");
    }
}

/* ---- orchestration ---- */

static void progress(const cmp_ctx *ctx, const char *stage)
{
    if (ctx->opts && ctx->opts->progress)
        ctx->opts->progress(ctx->opts->progress_ctx, stage);
}

/* Power from a synthetic or real positive pair: each test that flags it is powered. */
static void record_power(family *main, const family *pos, double alpha, const char *what)
{
    for (size_t i = 0; i < main->n; i++) {
        cks_test_result *t = &main->t[i];
        const cks_test_result *p = NULL;
        for (size_t j = 0; j < pos->n; j++)
            if (strcmp(pos->t[j].id, t->id) == 0)
                p = &pos->t[j];
        if (!p || !p->ran || !t->primary)
            continue;
        if (flags(p, alpha)) {
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
static void record_control(family *main, const family *ctl, double alpha, const char *what)
{
    for (size_t i = 0; i < main->n; i++) {
        cks_test_result *t = &main->t[i];
        for (size_t j = 0; j < ctl->n; j++) {
            const cks_test_result *c = &ctl->t[j];
            if (strcmp(c->id, t->id) != 0 || !t->primary)
                continue;
            if (flags(c, alpha) && t->valid) {
                t->valid = false;
                snprintf(t->invalid_reason, sizeof t->invalid_reason,
                         "flags the negative control %.100s (statistic %.3g, p %.2g), so it cannot separate derived "
                         "from independent here",
                         what, c->statistic, c->p_value);
            }
        }
    }
}

static cks_err run_pair(const cmp_ctx *ctx, cmp_model *a, cmp_model *b, family *f, cks_diag *diag)
{
    cks_err err;
    cmp_embed_pair emb;
    memset(&emb, 0, sizeof emb);
    err = cmp_embed_pair_load(ctx, a, b, &emb, diag);
    if (!err)
        err = run_family(ctx, a, b, &emb, true, f, diag);
    if (!err)
        apply_holm(f, ctx->alpha);
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
    family main_f;
    cks_compare_result *r = NULL;

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
    err = run_family(&ctx, &ma, &mb, &emb, true, &main_f, diag);
    if (err)
        goto out;

    /* power: built-in synthetic derivatives of A, then the user's positive controls */
    if (!(opts && opts->no_synthetic_power) && ma.known_arch) {
        cmp_model noisy, permuted;
        cmp_embed_pair e_noisy, e_perm;
        family fs;
        cmp_ctx pctx = ctx;
        unsigned selected = opts && opts->tests ? opts->tests : CKS_TEST_ALL;
        const cks_test_result *t4a = family_find(&main_f, "T4a");
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
        err = synth_noisy(&ma, &emb, ctx.seed + 11, &noisy, &e_noisy);
        pctx.tests_override = selected & (CKS_TEST_T2 | CKS_TEST_T3);
        if (!err && pctx.tests_override)
            err = run_family(&pctx, &ma, &noisy, &e_noisy, false, &fs, diag);
        if (!err && pctx.tests_override) {
            record_power(&main_f, &fs, ctx.alpha, "a synthetic derivative of A (A plus noise, r about 0.7)");
            family_release(&fs);
        }
        /* the index-aligned tests are blind to a permutation by design: only T4 is judged on it */
        pctx.tests_override = selected & CKS_TEST_T4;
        if (!err && pctx.tests_override)
            err = synth_permuted(&noisy, &e_noisy, ctx.seed + 12, &permuted, &e_perm);
        /* the noisy copy is not needed any more: free it before the most memory-hungry test */
        cmp_model_release(&noisy);
        e_noisy.a.v = NULL; /* borrowed */
        cmp_embed_pair_release(&e_noisy);
        if (!err && pctx.tests_override) {
            err = run_family(&pctx, &ma, &permuted, &e_perm, false, &fs, diag);
            if (!err) {
                record_power(&main_f, &fs, ctx.alpha,
                             "a synthetic permuted, sign-flipped derivative of A (hidden dimension shuffled)");
                family_release(&fs);
            }
        }
        cmp_model_release(&permuted);
        e_perm.a.v = NULL; /* borrowed */
        cmp_embed_pair_release(&e_perm);
        if (err)
            goto out;
    }
    if (!ma.known_arch || !mb.known_arch) {
        /* generic test: a correlation of r = 0.7 over n >= 64 elements is z >= 5.6 by itself */
        cks_test_result *g = family_find(&main_f, "G");
        if (g && g->ran) {
            g->power = 1;
            snprintf(g->power_note, sizeof g->power_note,
                     "by construction: any tensor correlated like a fine-tune (r 0.7, n >= 64) exceeds z 5.6");
        }
    }
    for (size_t i = 0; opts && i < opts->n_positives; i++) {
        cmp_model mp;
        family fp;
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
            family_release(&fp);
            r->n_positives_run++;
        }
        cmp_model_release(&mp);
        if (err)
            goto out;
    }
    for (size_t i = 0; opts && i < opts->n_controls; i++) {
        cmp_model mc;
        family fc;
        char what[200];
        progress(&ctx, "negative control");
        err = cmp_model_load(&ctx, &opts->controls[i], &mc, diag);
        for (int side = 0; side < 2 && !err; side++) {
            err = run_pair(&ctx, &mc, side == 0 ? &ma : &mb, &fc, diag);
            if (!err) {
                snprintf(what, sizeof what, "%s against %s", opts->controls[i].label, side == 0 ? "A" : "B");
                record_control(&main_f, &fc, ctx.alpha, what);
                family_release(&fc);
            }
        }
        cmp_model_release(&mc);
        if (err)
            goto out;
        r->n_controls_run++;
    }
    apply_holm(&main_f, ctx.alpha);
    describe(&ma, &mb, &emb, &main_f, r);
    decide(&ctx, &main_f, &ma, &mb, r);

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
    family_release(&main_f);
    cmp_embed_pair_release(&emb);
    cmp_model_release(&ma);
    cmp_model_release(&mb);
    cks_compare_result_free(r);
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
