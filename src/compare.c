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
#define MAX_CROSS_DIM 8192u   /* T3's d x d cross matrix: 256 MiB of floats at most */
#define ITEM_Z 2.0            /* with its effect at the test's floor, a layer or tensor corroborates above this z */
#define SYNTH_NOISE 1.0       /* synthetic positive: noise sd relative to the values' sd (r ~ 0.7) */

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
static cks_err choose_pairing(const cmp_model *a, const cmp_model *b, cmp_family *f, cks_diag *diag)
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

static cks_err test_identity(const cmp_ctx *ctx, const cmp_model *a, const cmp_model *b, cmp_family *f, cks_diag *diag)
{
    cks_err err = CKS_OK;
    cks_test_result *t = cmp_family_add(f, "T1", "more shared bits than chance", true);
    double equal = 0, expected = 0, variance = 0, n_total = 0;
    size_t copies = 0, init_copies = 0, tensors_excess = 0, compared = 0;
    bool *used_b = NULL;

    if (!t)
        return CKS_OK;
    snprintf(t->sources, sizeof t->sources, "bytes");
    if (a->n_raw == 0 || b->n_raw == 0) {
        cmp_not_run(t, "%s", "no tensor was read whole on both sides");
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
            if (!a->raw[i].low_information) {
                /* a LoRA down factor can be byte-identical because it was never trained (a frozen
                 * seeded draw): that is a shared initialisation, not a copy */
                if (cmp_is_lora_factor(&a->raw[i]) && cmp_init_class(&a->raw[i]) == CKS_EVIDENCE_INIT)
                    init_copies++;
                else
                    copies++;
            }
            break;
        }
    }
    /* identical: every tensor of both read and matched one to one */
    f->identical = a->full_coverage && b->full_coverage && a->n_raw == b->n_raw && f->n_matches == a->n_raw &&
                   a->n_raw > 0;
    /* Bitwise equality of role-matched tensors against the exact shuffle null, pooled over the
     * tensors training writes from a constant: in tensors a seed fixes, equal bits are what a
     * shared initialisation leaves (those are listed, not pooled). */
    for (size_t i = 0; i < a->n_raw; i++) {
        const cmp_raw *ra = &a->raw[i];
        bool trained = cmp_init_class(ra) == CKS_EVIDENCE_TRAINED;
        if (ra->low_information || !ra->bytes)
            continue;
        for (size_t j = 0; j < b->n_raw; j++) {
            const cmp_raw *rb = &b->raw[j];
            cks_equality_null eq;
            char label[200];
            bool same_tensor = ra->role != CKS_ROLE_OTHER
                                   ? rb->role == ra->role && rb->part == ra->part && rb->layer == ra->layer &&
                                         rb->expert == ra->expert
                                   : strcmp(rb->tensor->info->name, ra->tensor->info->name) == 0;
            if (!same_tensor || rb->tensor->info->dtype != ra->tensor->info->dtype ||
                rb->tensor->info->nelements != ra->tensor->info->nelements || rb->low_information || !rb->bytes)
                continue;
            if (cks_equality_null_compute(ra->tensor->info->dtype, ra->bytes, rb->bytes,
                                          (size_t)ra->tensor->info->nelements, &eq, NULL) != CKS_OK)
                break;
            if (trained) {
                equal += (double)eq.equal;
                expected += eq.expected_fraction * (double)eq.n;
                if (isfinite(eq.null_sd))
                    variance += (eq.null_sd * (double)eq.n) * (eq.null_sd * (double)eq.n);
                n_total += (double)eq.n;
                compared++;
                if (isfinite(eq.z) && eq.z >= ITEM_Z && eq.observed_fraction - eq.expected_fraction >= 0.05)
                    tensors_excess++;
            }
            snprintf(label, sizeof label, "%.150s (%s)", ra->tensor->info->name,
                     trained ? "trained from a constant" : "fixed by initialisation");
            if (cmp_add_item(t, label, eq.observed_fraction, NAN) != CKS_OK) {
                err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
                goto out;
            }
            break;
        }
    }
    t->ran = true;
    t->power = 1;
    snprintf(t->power_note, sizeof t->power_note,
             "exact by construction: a byte copy of any tensor read cannot be missed (SHA-256)");
    snprintf(t->tensors, sizeof t->tensors,
             "%zu + %zu tensors hashed; %zu role-matched tensors trained from a constant compared bitwise", a->n_raw,
             b->n_raw, compared);
    t->bytes_read = 0; /* hashing reuses what the other tests read */
    if (copies > 0) {
        /* a byte-identical high-entropy tensor does not happen by chance (SHA-256) */
        t->evidence = CKS_EVIDENCE_COPY;
        snprintf(t->statistic_name, sizeof t->statistic_name, "byte-identical high-entropy tensors");
        t->statistic = (double)copies;
        t->null_mean = 0;
        t->effect = (double)copies;
        t->floor = 1;
        t->effect_ok = true;
        snprintf(t->floor_note, sizeof t->floor_note, "one byte-identical tensor with many distinct values suffices");
        t->p_value = 1e-300;
        t->p_exact = false;
        snprintf(t->p_method, sizeof t->p_method,
                 "SHA-256 identity of tensors with many distinct values: a chance match is below 2^-128");
        snprintf(t->null_kind, sizeof t->null_kind, "independent tensors share no high-entropy byte string");
        t->corroborated = copies >= 2;
        snprintf(t->caveats, sizeof t->caveats, "%zu high-entropy tensor(s) byte-identical across the models. ", copies);
        goto out;
    }
    t->evidence = CKS_EVIDENCE_TRAINED;
    snprintf(t->statistic_name, sizeof t->statistic_name, "bit-identical element fraction");
    snprintf(t->null_kind, sizeof t->null_kind, "exact shuffle null of the value histograms");
    t->statistic = n_total > 0 ? equal / n_total : NAN;
    t->null_mean = n_total > 0 ? expected / n_total : NAN;
    t->null_sd = n_total > 0 ? sqrt(variance) / n_total : NAN;
    t->z = t->null_sd > 0 ? (t->statistic - t->null_mean) / t->null_sd : NAN;
    t->effect = t->statistic - t->null_mean;
    t->p_value = isfinite(t->z) ? cks_normal_sf(t->z) : 1.0;
    t->p_exact = false;
    snprintf(t->p_method, sizeof t->p_method,
             "normal tail with the exact mean and sd of the shuffle null (approximate)");
    t->corroborated = tensors_excess >= 2;
    if (init_copies > 0)
        snprintf(t->caveats, sizeof t->caveats,
                 "%zu LoRA down factor(s) byte-identical: a frozen seeded initialisation, not a copy. ", init_copies);
    if (compared == 0)
        cmp_not_run(t, "%s", "no role-matched tensor trained from a constant (norm gains, biases) on both sides");
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
    if (!cmp_vector_usable(v, n))
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

/*
 * A view of `src` whose norm gains are their mid-ranks: Pearson of ranks is Spearman, so the
 * joint permutation machinery runs unchanged, and a handful of extreme coordinates (the tiny
 * gains of "massive activation" dimensions, which independent models of one recipe share)
 * can no longer carry the statistic: they move it by O(k/d) instead of up to r ~ 0.6.
 */
static cks_err rank_norms(const cmp_model *src, cmp_model *dst, cks_diag *diag)
{
    cks_err err = CKS_OK;
    memset(dst, 0, sizeof *dst);
    dst->m = src->m;
    dst->synthetic = true;
    dst->n_layers = src->n_layers;
    dst->hidden = src->hidden;
    dst->known_arch = src->known_arch;
    if (src->n_layers <= 0 || !src->layers)
        return CKS_OK;
    dst->layers = calloc((size_t)src->n_layers, sizeof *dst->layers);
    if (!dst->layers)
        return cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
    for (int l = 0; l < src->n_layers && !err; l++) {
        const double *in[2] = {src->layers[l].attn_norm, src->layers[l].ffn_norm};
        double **out[2] = {&dst->layers[l].attn_norm, &dst->layers[l].ffn_norm};
        for (int w = 0; w < 2 && !err; w++) {
            if (!cmp_vector_usable(in[w], src->hidden))
                continue;
            *out[w] = malloc(src->hidden * sizeof **out[w]);
            if (!*out[w])
                err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
            else
                err = cks_mid_ranks_f64(in[w], src->hidden, *out[w], diag);
        }
    }
    return err;
}

static cks_err test_norms(const cmp_ctx *ctx, const cmp_model *a_in, const cmp_model *b_in, cmp_family *f,
                          const char *id, const char *name, cks_diag *diag)
{
    cks_err err = CKS_OK;
    cks_test_result *t = cmp_family_add(f, id, name, true);
    cmp_model ranked_a, ranked_b;
    const cmp_model *a = &ranked_a, *b = &ranked_b;
    const double **va = NULL, **vb = NULL;
    size_t k = 0, strong = 0, cap;
    double raw_sum = 0;
    cks_perm_result pr;

    memset(&ranked_a, 0, sizeof ranked_a);
    memset(&ranked_b, 0, sizeof ranked_b);
    if (!t)
        return CKS_OK;
    t->evidence = CKS_EVIDENCE_TRAINED;
    snprintf(t->sources, sizeof t->sources, "norms");
    snprintf(t->statistic_name, sizeof t->statistic_name, "mean Spearman of norm gains");
    if ((err = rank_norms(a_in, &ranked_a, diag)) != CKS_OK || (err = rank_norms(b_in, &ranked_b, diag)) != CKS_OK)
        goto out;
    if (!a->layers || !b->layers || f->n_pairs == 0) {
        cmp_not_run(t, "%s", "no decoder layers with norm gains on both sides");
        goto out; /* the ranked copies are freed there */
    }
    if (a->hidden != b->hidden) {
        cmp_not_run(t, "%s", "hidden sizes differ: index-aligned norms cannot be compared (T4 aligns them)");
        goto out;
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
        const cmp_layer *OA = &a_in->layers[f->pairs[p].a], *OB = &b_in->layers[f->pairs[p].b];
        const double *xa[2] = {LA->attn_norm, LA->ffn_norm}, *xb[2] = {LB->attn_norm, LB->ffn_norm};
        const double *oa[2] = {OA->attn_norm, OA->ffn_norm}, *ob[2] = {OB->attn_norm, OB->ffn_norm};
        static const char *const kind[2] = {"attn_norm", "ffn_norm"};
        for (int w = 0; w < 2; w++) {
            char label[96];
            double r, rc;
            if (!xa[w] || !xb[w])
                continue; /* not usable (rank_norms skipped it) */
            va[k] = xa[w];
            vb[k] = xb[w];
            k++;
            r = pearson_or_nan(xa[w], xb[w], a->hidden);
            rc = raw_cosine(oa[w], ob[w], a->hidden); /* of the gains themselves: shown as not evidence */
            raw_sum += rc;
            /* a layer corroborates when it reaches the floor on its own, clear of its noise */
            if (isfinite(r) && r >= cmp_floor_value(id) && r * sqrt((double)a->hidden - 1.0) >= ITEM_Z)
                strong++;
            snprintf(label, sizeof label, "layer %d/%d %s", f->pairs[p].a, f->pairs[p].b, kind[w]);
            if (cmp_add_item(t, label, r, rc) != CKS_OK) {
                err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
                goto out;
            }
        }
    }
    if (k == 0) {
        cmp_not_run(t, "%s", "no usable norm-gain vectors (absent, constant, or not finite)");
        goto out;
    }
    {
        double null_mean, null_sd;
        if (a->n_layers == b->n_layers && cmp_reused_null(ctx, id, &null_mean, &null_sd)) {
            /* a power check: the statistic against the real pair's null */
            double sum = 0;
            for (size_t i = 0; i < k; i++)
                sum += pearson_or_nan(va[i], vb[i], a->hidden);
            cmp_judge_by_reused_null(t, sum / (double)k, null_mean, null_sd, ctx->alpha);
            goto done;
        }
    }
    if (a->n_layers == b->n_layers) {
        err = cks_joint_pearson_perm_test_curtailed(va, vb, k, a->hidden, ctx->seed, ctx->permutations,
                                                    cks_perm_stop_after(ctx->alpha, ctx->permutations),
                                                    CKS_ALT_GREATER, &pr, diag);
        if (err)
            goto out;
        cmp_set_perm(t, &pr, "joint permutation of the hidden dimension (one permutation for every layer of B)",
                 ctx->alpha);
    } else {
        struct dp_ctx c;
        uint32_t perms = ctx->permutations > 999 ? 999 : ctx->permutations;
        if (dp_ctx_init(&c, a, b) != CKS_OK)
            err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        else
            err = cks_perm_test_curtailed(b->hidden, dp_statistic, &c, ctx->seed, perms,
                                          cks_perm_stop_after(ctx->alpha, perms), CKS_ALT_GREATER, &pr, diag);
        dp_ctx_release(&c);
        if (err)
            goto out;
        cmp_set_perm(t, &pr,
                 "joint permutation of the hidden dimension, monotone layer alignment redone inside every permutation",
                 ctx->alpha);
        snprintf(t->statistic_name, sizeof t->statistic_name, "monotone-path score of norm-gain Spearman");
    }
done:
    t->raw_cosine = raw_sum / (double)k;
    t->n_layers = f->n_pairs;
    t->corroborated = strong >= 2;
    t->bytes_read = a_in->bytes_norms + b_in->bytes_norms;
    snprintf(t->tensors, sizeof t->tensors, "%zu norm-gain vectors (attn_norm, ffn_norm) over %zu layer pairs", k,
             f->n_pairs);
    snprintf(t->caveats + strlen(t->caveats), sizeof t->caveats - strlen(t->caveats),
             "Raw cosine %.4f is shown for contrast and is not evidence: norm gains are positive around a common "
             "offset, so any two models score near 1.",
             t->raw_cosine);
out:
    free((void *)va);
    free((void *)vb);
    cmp_model_release(&ranked_a);
    cmp_model_release(&ranked_b);
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
    double ma, sa, mb, sb;   /* means and population sds of the winsorised blocks */
    double r;                /* winsorised Pearson r, NAN for a constant side */
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

#define WINSOR_SD 3.0 /* clip at mean +- 3 sd: a Gaussian block loses 0.27 % of its values */

/*
 * A copy of m with every value clipped to mean +- 3 sd. Weight blocks of real models carry a
 * few columns far larger than the rest (the residual dimensions of "massive activations");
 * independent models of one recipe can share them, and unclipped they carry a Pearson r on
 * their own. Clipped, each value's pull on the statistic is bounded.
 */
static cks_err winsorised(const cmp_matrix *m, cmp_matrix *out)
{
    double mean, sd;
    size_t n = m->rows * m->cols;
    memset(out, 0, sizeof *out);
    out->v = malloc((n ? n : 1) * sizeof *out->v);
    if (!out->v)
        return CKS_ERR_NOMEM;
    out->rows = m->rows;
    out->cols = m->cols;
    matrix_moments(m, &mean, &sd);
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

/* winsorised()'s bounds for m, and its value for v (the same double arithmetic, stored as float). */
static void clip_bounds(const cmp_matrix *m, double *lo, double *hi)
{
    double mean, sd;
    matrix_moments(m, &mean, &sd);
    *hi = mean + WINSOR_SD * sd;
    *lo = mean - WINSOR_SD * sd;
}

static inline float clipped(float value, double lo, double hi)
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
 * the same values in the same order as over winsorised() copies, so the moments and r are
 * bit for bit the same.
 */
static void clipped_item_stats(weight_item *it, double lo_a, double hi_a, double lo_b, double hi_b)
{
    const float *a = it->a->v, *b = it->b->v;
    size_t n = it->a->rows * it->a->cols;
    double sa = 0, sb = 0, ssa = 0, ssb = 0, s = 0;
    for (size_t i = 0; i < n; i++) {
        sa += clipped(a[i], lo_a, hi_a);
        sb += clipped(b[i], lo_b, hi_b);
    }
    it->ma = n ? sa / (double)n : 0;
    it->mb = n ? sb / (double)n : 0;
    for (size_t i = 0; i < n; i++) {
        double da = (double)clipped(a[i], lo_a, hi_a) - it->ma, db = (double)clipped(b[i], lo_b, hi_b) - it->mb;
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

static cks_err test_weights(const cmp_ctx *ctx, const cmp_model *a, const cmp_model *b, const cmp_embed_pair *emb,
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
    snprintf(t->statistic_name, sizeof t->statistic_name, "mean winsorised Pearson r of index-aligned weight rows");
    if (a->hidden != b->hidden || a->hidden == 0) {
        cmp_not_run(t, "%s", "hidden sizes differ: index-aligned weights cannot be compared (T4 aligns them)");
        return CKS_OK;
    }
    if (d > MAX_CROSS_DIM) {
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
     * values are made on the fly (clipped()), never as whole copies: 64 MiB less at the peak
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
            if (it->r >= cmp_floor_value(id) && it->r * sqrt((double)n - 1.0) >= ITEM_Z)
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
                        ba[x] = clipped(ra[x], lo_a, hi_a) * w;
                        bb[x] = clipped(rb[x], lo_b, hi_b);
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
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)bi, (int)db, (int)rows, 1.0f, ea + r0 * da + i0,
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
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)subset, (int)db, (int)n, 1.0f, sub, (int)subset, eb,
                (int)db, 0.0f, s0, (int)db);
    memcpy(sim, s0, subset * db * sizeof *sim);
    observed = median_row_max_abs(sim, subset, db, scratch);
    /* the decision rests on z >= 6, no draw as extreme and the effect floor: a derivative is
     * hundreds of sd out, so a few draws suffice where each one costs a wide sgemm */
    draws = da <= 256 ? 49 : da <= 1024 ? 19 : 9;
    if (ctx->power_run && isfinite(ctx->t4a_null_sd) && ctx->t4a_null_sd > 0)
        draws = 0; /* a synthetic derivative is judged against the real pair's null */
    cmp_null_start(&acc, observed);
    for (uint32_t k = 0; k < draws && !err; k++) {
        cks_rotation_release(&rot);
        err = cks_rotation_draw(&rng, db, &rot, diag);
        if (!err)
            err = rotated_similarity(s0, subset, eb, n, db, &rot, colsq, sim, diag);
        if (!err)
            cmp_null_add(&acc, median_row_max_abs(sim, subset, db, scratch));
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

/* The transpose of m clipped at mean +- 3 sd (see winsorised()). */
static float *transpose_winsorised(const cmp_matrix *m)
{
    cmp_matrix w;
    float *t;
    if (winsorised(m, &w) != CKS_OK)
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
    snprintf(t->statistic_name, sizeof t->statistic_name, "mean debiased CKA of winsorised k over layer pairs");
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
    err = cks_perm_test_curtailed(c.n, cka_statistic, &c, ctx->seed + 5, perms, cks_perm_stop_after(ctx->alpha, perms),
                                  CKS_ALT_GREATER, &pr, diag);
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
            if (layer_sd > 0 && res.debiased >= cmp_floor_value("T4c") && (res.debiased - pr.null_mean) / layer_sd >= ITEM_Z)
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
static cks_err test_t4(const cmp_ctx *ctx, const cmp_model *a, const cmp_model *b, const cmp_embed_pair *emb, cmp_family *f,
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

/* ---- the family on one pair ---- */

static cks_err run_family(const cmp_ctx *ctx, const cmp_model *a, const cmp_model *b, const cmp_embed_pair *emb,
                          bool with_t1, cmp_family *f, cks_diag *diag)
{
    cks_err err = CKS_OK;
    unsigned tests = ctx->tests_override ? ctx->tests_override
                     : ctx->opts && ctx->opts->tests ? ctx->opts->tests
                                                     : CKS_TEST_ALL;

    memset(f, 0, sizeof *f);
    if (with_t1 && (tests & CKS_TEST_T1))
        err = test_identity(ctx, a, b, f, diag);
    /* LoRA adapters, whatever the architecture: their updates, module by module */
    if (!err && with_t1)
        err = cmp_test_adapters(ctx, a, b, f, diag);
    if (err)
        return err;
    if (!a->known_arch || !b->known_arch || a->n_layers <= 0 || b->n_layers <= 0) {
        if (with_t1)
            err = cmp_test_generic(ctx, a, b, f, diag);
        if (with_t1 && !err)
            err = cmp_test_generic_rows(ctx, a, b, f, diag);
        return err;
    }
    err = choose_pairing(a, b, f, diag);
    if (!err && (tests & CKS_TEST_T2))
        err = test_norms(ctx, a, b, f, "T2", "norm gains (Spearman, joint permutation null)", diag);
    if (!err && (tests & CKS_TEST_T3))
        err = test_weights(ctx, a, b, emb, f, "T3", "index-aligned k/v/router/embedding rows", diag);
    if (!err && (tests & CKS_TEST_T4))
        err = test_t4(ctx, a, b, emb, f, diag);
    return err;
}

/* ---- synthetic positives: A plus noise, and the same permuted and sign-flipped ---- */

#define ROBUST_SAMPLE 65536u

/*
 * The spread of the bulk of the values: 1.4826 x the median absolute deviation (= the sd for
 * Gaussian values), from at most ROBUST_SAMPLE evenly strided values. The synthetic
 * derivatives add noise at this scale: with the plain sd, a few "massive activation" gains
 * (0.01 among values near 1) inflate it, and the noise then drowns the bulk (a power check
 * at Spearman 0.25 instead of 0.7).
 */
static double robust_sd_f64(const double *v, const float *f, size_t n)
{
    size_t m = n < ROBUST_SAMPLE ? n : ROBUST_SAMPLE, stride = m ? n / m : 1;
    double *x = malloc((m ? m : 1) * sizeof *x), med, sd;
    if (!x || m < 2) {
        free(x);
        return 0;
    }
    for (size_t i = 0; i < m; i++)
        x[i] = v ? v[i * stride] : (double)f[i * stride];
    med = cks_median_inplace(x, m);
    for (size_t i = 0; i < m; i++)
        x[i] = fabs(x[i] - med);
    sd = 1.4826 * cks_median_inplace(x, m);
    free(x);
    return sd;
}

static double *noisy_vector(const double *v, size_t n, cks_rng *rng)
{
    double *out, sd;
    if (!v)
        return NULL;
    out = malloc(n * sizeof *out);
    if (!out)
        return NULL;
    sd = robust_sd_f64(v, NULL, n);
    for (size_t i = 0; i < n; i++)
        out[i] = v[i] + SYNTH_NOISE * sd * cks_rng_normal(rng);
    return out;
}

static cks_err noisy_matrix(const cmp_matrix *m, cks_rng *rng, cmp_matrix *out)
{
    double sd;
    memset(out, 0, sizeof *out);
    if (!m->v)
        return CKS_OK;
    out->v = malloc(m->rows * m->cols * sizeof *out->v);
    if (!out->v)
        return CKS_ERR_NOMEM;
    out->rows = m->rows;
    out->cols = m->cols;
    sd = robust_sd_f64(NULL, m->v, m->rows * m->cols);
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
static cks_err synth_permuted(const cmp_model *b, const cmp_embed_pair *emb, uint64_t seed, bool weights,
                              cmp_model *out, cmp_embed_pair *eout)
{
    cks_err err;
    cks_rng rng;
    cmp_model view = *b; /* !weights: B's norms only (borrowed), for a check that runs T4a alone */
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
    if (!weights && b->layers && b->n_layers > 0) {
        /* T4a reads the embedding rows only, and the layer pairing the norms: no permuted
         * copies of k, v and routers (the peak of a default compare was this copy) */
        view.layers = calloc((size_t)b->n_layers, sizeof *view.layers);
        if (!view.layers) {
            err = CKS_ERR_NOMEM;
            goto out;
        }
        for (int l = 0; l < b->n_layers; l++) {
            view.layers[l].attn_norm = b->layers[l].attn_norm;
            view.layers[l].ffn_norm = b->layers[l].ffn_norm;
        }
    }
    err = reindex_model(&view, idx, sgn, b->hidden, out);
    if (!err && emb && emb->b.v) {
        eout->a = emb->a; /* borrowed */
        err = select_columns(&emb->b, idx, sgn, b->hidden, &eout->b);
        eout->shared = emb->shared;
    }
out:
    if (view.layers != b->layers)
        free(view.layers); /* the vectors are borrowed */
    free(perm);
    free(idx);
    free(sgn);
    return err;
}

/* ---- descriptive results ---- */

static void describe(const cmp_model *a, const cmp_model *b, const cmp_embed_pair *emb, const cmp_family *f,
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
            /* no matrix, no margins: never hand out the unfilled arrays */
            free(r->layer_matrix);
            free(r->row_best);
            free(r->row_margin);
            r->layer_matrix = NULL;
            r->row_best = NULL;
            r->row_margin = NULL;
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
        err = run_family(ctx, a, b, &emb, true, f, diag);
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
    err = run_family(&ctx, &ma, &mb, &emb, true, &main_f, diag);
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
        err = synth_noisy(&ma, &emb, ctx.seed + 11, &noisy, &e_noisy);
        pctx.tests_override = selected & (CKS_TEST_T2 | CKS_TEST_T3);
        if (!err && pctx.tests_override)
            err = run_family(&pctx, &ma, &noisy, &e_noisy, false, &fs, diag);
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
            err = synth_permuted(&noisy, &e_noisy, ctx.seed + 12, !pctx.alignment_only, &permuted, &e_perm);
        /* the noisy copy is not needed any more: free it before the most memory-hungry test */
        cmp_model_release(&noisy);
        e_noisy.a.v = NULL; /* borrowed */
        cmp_embed_pair_release(&e_noisy);
        if (!err && pctx.tests_override) {
            err = run_family(&pctx, &ma, &permuted, &e_perm, false, &fs, diag);
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
    describe(&ma, &mb, &emb, &main_f, r);
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
