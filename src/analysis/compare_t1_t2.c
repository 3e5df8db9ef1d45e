/*
 * compare: T1 (identity: shared bits beyond chance), T2 (norm gains under a joint hidden-dimension
 * permutation) and the layer pairing, which reads T2's norm-gain matrix.
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

/* ---- T1: identity ---- */

cks_err cmp_test_identity(const cmp_ctx *ctx, const cmp_model *a, const cmp_model *b, cmp_family *f, cks_diag *diag)
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
                if (isfinite(eq.z) && eq.z >= CMP_ITEM_Z && eq.observed_fraction - eq.expected_fraction >= 0.05)
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
    bool borrowed;             /* a clone: the vectors below are another context's */
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
        if (!c->borrowed) {
            free(c->ua[k]);
            free(c->ub[k]);
            free(c->has_a[k]);
            free(c->has_b[k]);
        }
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

/* A context for another thread of the permutation test: src's vectors (only read), its own
 * scratch. Release it before src. */
static cks_err dp_ctx_clone(struct dp_ctx *c, const struct dp_ctx *src)
{
    *c = *src;
    c->borrowed = true;
    c->prod[0] = malloc((size_t)c->la * (size_t)c->lb * sizeof(double));
    c->prod[1] = malloc((size_t)c->la * (size_t)c->lb * sizeof(double));
    c->ubp = malloc((size_t)c->lb * c->d * sizeof(double));
    c->s = malloc((size_t)c->la * (size_t)c->lb * sizeof(double));
    c->pairs = malloc(CKS_LAYERS_MAX_DIM * sizeof *c->pairs);
    return c->prod[0] && c->prod[1] && c->ubp && c->s && c->pairs ? CKS_OK : CKS_ERR_NOMEM;
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
        cks_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, c->la, c->lb, (int)c->d, 1.0, c->ua[k], (int)c->d, ub,
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
cks_err cmp_norm_matrix(const cmp_model *a, const cmp_model *b, double *s, bool *any)
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

cks_err cmp_test_norms(const cmp_ctx *ctx, const cmp_model *a_in, const cmp_model *b_in, cmp_family *f,
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
            r = cmp_pearson_or_nan(xa[w], xb[w], a->hidden);
            rc = cmp_raw_cosine(oa[w], ob[w], a->hidden); /* of the gains themselves: shown as not evidence */
            raw_sum += rc;
            /* a layer corroborates when it reaches the floor on its own, clear of its noise */
            if (isfinite(r) && r >= cmp_floor_value(id) && r * sqrt((double)a->hidden - 1.0) >= CMP_ITEM_Z)
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
                sum += cmp_pearson_or_nan(va[i], vb[i], a->hidden);
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
        /* one context per thread: each permutation redoes two dgemms and the path (~1.2 ms
         * at 46 x 48 layers of 4096), and the draws are judged in order whatever the count */
        struct dp_ctx c[CKS_PERM_MAX_THREADS];
        void *cp[CKS_PERM_MAX_THREADS];
        unsigned threads = cks_perm_threads(), made = 0;
        uint32_t perms = ctx->permutations > 999 ? 999 : ctx->permutations;
        if (dp_ctx_init(&c[0], a, b) != CKS_OK) {
            err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        } else {
            cp[made++] = &c[0];
            for (; made < threads && dp_ctx_clone(&c[made], &c[0]) == CKS_OK; made++)
                cp[made] = &c[made];
            if (made < threads)
                dp_ctx_release(&c[made]); /* the clone that failed: fewer threads */
            err = cks_perm_test_curtailed_mt(b->hidden, dp_statistic, cp, made, ctx->seed, perms,
                                             cks_perm_stop_after(ctx->alpha, perms), CKS_ALT_GREATER, &pr, diag);
        }
        while (made > 1)
            dp_ctx_release(&c[--made]);
        dp_ctx_release(&c[0]);
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

/* ---- layer pairing (on T2's norm-gain matrix) ---- */

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
