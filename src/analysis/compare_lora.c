/*
 * compare: LoRA adapters, compared as the updates they apply (adapter.h).
 *
 *   L       the update dW = up . down of each module both adapters hold (matched by canonical
 *           key, whatever the key style), compared by Spearman over the same sampled entries;
 *           statistic: a quantile over modules. An up factor starts at zero, so dW is exactly
 *           what training wrote: two saves of one run agree (the real pairs in
 *           ../shared/realdata: median 0.63-1.0), separate runs on one frozen base or task
 *           agree only through the structure the base imposes (median ~0.01, no module above
 *           0.14). Statistic: the lower quartile over modules (see run_l).
 *   L-init  the down factors, which a seeded random draw fixes: adapters that share a seed
 *           agree here (r ~ 0.999) whether or not one comes from the other. Reported as a
 *           shared initialisation, never decisive.
 *
 * Null (both): B's modules exchanged among modules of the same shape (layer i's update
 * against layer j's), one permutation per draw within each shape class: "matched strata".
 * Each module keeps everything that modules of its kind share, only its own history is
 * broken. With a single module per shape there is nothing to exchange and p stays 1.
 * Work and memory are bounded: at most L_TOTAL ranked entries per side over all modules.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ckptscope/adapter.h"
#include "ckptscope/decode.h"
#include "ckptscope/metrics.h"
#include "ckptscope/stats.h"
#include "compare_internal.h"

#define L_TOTAL (1u << 21)   /* sampled entries per side over all modules */
#define L_MAX_SAMPLE 16384u  /* per module */
#define L_MIN_SAMPLE 1024u
#define L_DRAWS 9999u
#define L_SHUFFLE_DRAWS 199u /* the fallback null: decided on z */
#define SYNTH_NOISE 1.0      /* the power check: noise sd = the up factor's sd (dW r ~ 0.7) */
#define Z_RULE 6.0

/* A factor as a dense matrix [rows, cols] in the PEFT orientation (down [r, in], up [out, r]). */
static cks_err load_factor(const cks_ckpt *ckpt, const cks_ckpt_tensor *t, bool transposed, size_t rows, size_t cols,
                           float **out, uint64_t *bytes, cks_diag *diag)
{
    cks_err err = CKS_OK;
    const cks_tensor_info *info = t->info;
    size_t n = rows * cols, len = (size_t)(info->end - info->begin);
    uint8_t *raw = NULL;
    float *v = NULL;

    *out = NULL;
    if (!cks_decode_supported(info->dtype) || !cks_dtype_is_float(info->dtype) || info->nelements != n)
        return CKS_ERR_UNSUPPORTED;
    raw = malloc(len ? len : 1);
    v = malloc(n * sizeof *v);
    if (!raw || !v) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory reading %s", info->name);
        goto out;
    }
    err = cks_ckpt_read_tensor(ckpt, t, 0, raw, len, diag);
    if (!err)
        err = cks_decode_f32(info->dtype, raw, n, v, NULL, diag);
    if (err)
        goto out;
    *bytes += len;
    if (transposed) { /* stored [cols, rows] */
        float *tr = malloc(n * sizeof *tr);
        if (!tr) {
            err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
            goto out;
        }
        for (size_t r = 0; r < rows; r++)
            for (size_t c = 0; c < cols; c++)
                tr[r * cols + c] = v[c * rows + r];
        free(v);
        v = tr;
    }
    for (size_t i = 0; i < n; i++)
        if (!isfinite(v[i])) {
            err = CKS_ERR_NUMERIC;
            goto out;
        }
    *out = v;
    v = NULL;
out:
    free(raw);
    free(v);
    return err;
}

/* Standardised mid-ranks of x (n values) into z; false when x is constant. */
static bool rank_standardise(const double *x, size_t n, float *z, double *scratch)
{
    double mean = 0, ss = 0;
    if (cks_mid_ranks_f64(x, n, scratch, NULL) != CKS_OK)
        return false;
    for (size_t i = 0; i < n; i++)
        mean += scratch[i];
    mean /= (double)n;
    for (size_t i = 0; i < n; i++)
        ss += (scratch[i] - mean) * (scratch[i] - mean);
    if (!(ss > 0))
        return false;
    for (size_t i = 0; i < n; i++)
        z[i] = (float)((scratch[i] - mean) / sqrt(ss));
    return true;
}

/* Sampled positions of an out x in matrix: the same for every matrix of that shape. */
static void sample_positions(uint64_t seed, size_t out, size_t in, size_t count, uint64_t *pos)
{
    cks_rng rng;
    uint64_t total = (uint64_t)out * in;
    cks_rng_seed(&rng, seed ^ (0x9E3779B97F4A7C15ull * total) ^ (uint64_t)out);
    if (count >= total) {
        for (uint64_t i = 0; i < total; i++)
            pos[i] = i;
        return;
    }
    for (size_t i = 0; i < count; i++)
        pos[i] = cks_rng_below(&rng, total); /* with replacement: fine for a correlation */
}

typedef struct lmod {
    const cks_adapter_module *ma, *mb;
    size_t stratum;          /* index of its shape class */
    float *za, *zb, *zs;     /* ranked updates of A, B, and the synthetic (A's with noisy up) */
    float *da, *db;          /* ranked down factors (L-init), NULL when the ranks differ */
    size_t n, n_down;
    double r, r_syn, r_down;
} lmod;

typedef struct l_test {
    const char *id;
    size_t k;                /* modules in the test */
    size_t *mod;             /* indices into the module list */
    size_t *stratum;         /* per module */
    double *c;               /* per stratum block: c[off + i * size + j] = module i of A vs j of B */
    size_t *s_off, *s_size, *s_first, n_strata;
} l_test;

static double dotf(const float *x, const float *y, size_t n)
{
    double s = 0;
    for (size_t i = 0; i < n; i++)
        s += (double)x[i] * y[i];
    return s;
}

/* The statistic's quantile over modules of c[i][pi(i)], pi one permutation per stratum (NULL: identity). */
static double strata_quantile(const l_test *lt, const uint32_t *const *pi, double *scratch, size_t *pos_in_stratum,
                              double q)
{
    for (size_t i = 0; i < lt->k; i++) {
        size_t s = lt->stratum[i], p = pos_in_stratum[i], qq = pi ? pi[s][p] : p;
        scratch[i] = lt->c[lt->s_off[s] + p * lt->s_size[s] + qq];
    }
    return cks_quantile_inplace(scratch, lt->k, q);
}

/* One draw of the fallback null: every module's B entries shuffled, the quantile redone. */
static cks_err shuffled_quantile(const lmod *mods, const size_t *mod, size_t k, bool down, double quantile, cks_rng *rng,
                                 double *scratch, cks_diag *diag, double *out)
{
    size_t largest = 0;
    uint32_t *perm;
    for (size_t i = 0; i < k; i++) {
        size_t n = down ? mods[mod[i]].n_down : mods[mod[i]].n;
        if (n > largest)
            largest = n;
    }
    perm = malloc((largest ? largest : 1) * sizeof *perm);
    if (!perm)
        return cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
    for (size_t i = 0; i < k; i++) {
        const lmod *m = &mods[mod[i]];
        const float *x = down ? m->da : m->za, *y = down ? m->db : m->zb;
        size_t n = down ? m->n_down : m->n;
        double sum = 0;
        cks_rng_permutation(rng, perm, n);
        for (size_t j = 0; j < n; j++)
            sum += (double)x[j] * y[perm[j]];
        scratch[i] = sum;
    }
    free(perm);
    *out = cks_quantile_inplace(scratch, k, quantile);
    return CKS_OK;
}

/*
 * Run one of L / L-init over modules whose vectors are picked by `down` (false: updates).
 * Modules are grouped into strata by shape; inside each, the full cross matrix of A's
 * modules against B's is formed once, so a null draw costs one lookup per module.
 */
static cks_err run_l(const cmp_ctx *ctx, cks_test_result *t, lmod *mods, size_t n_mods, bool down, cks_diag *diag)
{
    cks_err err = CKS_OK;
    size_t k = 0, n_strata = 0, *mod = NULL, *stratum = NULL, *pos = NULL, *s_size = NULL, *s_off = NULL, total = 0;
    size_t *key_out = NULL, *key_in = NULL, strong = 0;
    double *c = NULL, *scratch = NULL, observed;
    uint32_t **pi = NULL, draws;
    cmp_null_acc acc;
    bool strata_null;
    cks_rng rng;
    l_test lt;
    /* L: the lower quartile over modules. A derivative's update agrees in (nearly) every module;
     * what a shared base, task or seed imposes shows in some modules and not others (a seed
     * twin in bench/verdicts: median 0.66 over modules, lower quartile 0.50; one run's early
     * and late saves: lower quartile 0.59 and up). L-init: the median (a finding only). */
    double quantile = down ? 0.5 : 0.25;
    cks_perm_result pr;

    mod = malloc((n_mods ? n_mods : 1) * sizeof *mod);
    stratum = malloc((n_mods ? n_mods : 1) * sizeof *stratum);
    pos = malloc((n_mods ? n_mods : 1) * sizeof *pos);
    key_out = malloc((n_mods ? n_mods : 1) * sizeof *key_out);
    key_in = malloc((n_mods ? n_mods : 1) * sizeof *key_in);
    s_size = calloc(n_mods ? n_mods : 1, sizeof *s_size);
    s_off = calloc(n_mods ? n_mods : 1, sizeof *s_off);
    scratch = malloc((n_mods ? n_mods : 1) * sizeof *scratch);
    if (!mod || !stratum || !pos || !key_out || !key_in || !s_size || !s_off || !scratch) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < n_mods; i++) {
        size_t so = down ? mods[i].ma->rank : mods[i].ma->out, si = mods[i].ma->in, s;
        const float *za = down ? mods[i].da : mods[i].za;
        if (!za)
            continue;
        for (s = 0; s < n_strata; s++)
            if (key_out[s] == so && key_in[s] == si)
                break;
        if (s == n_strata) {
            key_out[s] = so;
            key_in[s] = si;
            n_strata++;
        }
        mod[k] = i;
        stratum[k] = s;
        pos[k] = s_size[s]++;
        k++;
    }
    if (k == 0) {
        cmp_not_run(t, "%s", down ? "no module whose down factors have the same rank on both sides"
                                  : "no module with a usable update on both sides (all-zero or NaN/Inf up factors)");
        goto out;
    }
    for (size_t s = 0; s < n_strata; s++) {
        s_off[s] = total;
        total += s_size[s] * s_size[s];
    }
    c = malloc(total * sizeof *c);
    pi = calloc(n_strata, sizeof *pi);
    if (!c || !pi) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory for %zu module pairs", total);
        goto out;
    }
    /* members of each stratum in order, then their cross products */
    {
        size_t *members = malloc(k * sizeof *members), at = 0;
        if (!members) {
            err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
            goto out;
        }
        for (size_t s = 0; s < n_strata; s++)
            for (size_t i = 0; i < k; i++)
                if (stratum[i] == s)
                    members[at++] = i;
        for (size_t i = 0; i < k; i++) {
            const lmod *mi = &mods[mod[i]];
            size_t s = stratum[i];
            for (size_t j = 0; j < k; j++) {
                const lmod *mj = &mods[mod[j]];
                if (stratum[j] != s)
                    continue;
                c[s_off[s] + pos[i] * s_size[s] + pos[j]] =
                    down ? dotf(mi->da, mj->db, mi->n_down) : dotf(mi->za, mj->zb, mi->n);
            }
        }
        free(members);
    }
    memset(&lt, 0, sizeof lt);
    lt.k = k;
    lt.stratum = stratum;
    lt.c = c;
    lt.s_off = s_off;
    lt.s_size = s_size;
    for (size_t i = 0; i < k; i++) {
        lmod *m = &mods[mod[i]];
        double r = c[s_off[stratum[i]] + pos[i] * s_size[stratum[i]] + pos[i]];
        if (down)
            m->r_down = r;
        else
            m->r = r;
        if (cmp_add_item(t, m->ma->key, r, NAN) != CKS_OK) {
            err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
            goto out;
        }
    }
    observed = strata_quantile(&lt, NULL, scratch, pos, quantile);
    for (size_t s = 0; s < n_strata; s++) {
        pi[s] = malloc(s_size[s] * sizeof *pi[s]);
        if (!pi[s]) {
            err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
            goto out;
        }
    }
    {
        /* distinct exchanges the strata allow: too few and no draw count can reach alpha */
        double distinct = 1;
        for (size_t s = 0; s < n_strata; s++)
            for (size_t q = 2; q <= s_size[s] && distinct < 1e12; q++)
                distinct *= (double)q;
        strata_null = distinct >= 4.0 / ctx->alpha;
    }
    draws = strata_null ? L_DRAWS : L_SHUFFLE_DRAWS;
    cks_rng_seed(&rng, ctx->seed + (down ? 22 : 21));
    cmp_null_start(&acc, observed);
    for (uint32_t d = 0; d < draws && !err; d++) {
        double st = 0;
        if (strata_null) {
            for (size_t s = 0; s < n_strata; s++)
                cks_rng_permutation(&rng, pi[s], s_size[s]);
            st = strata_quantile(&lt, (const uint32_t *const *)pi, scratch, pos, quantile);
        } else {
            err = shuffled_quantile(mods, mod, k, down, quantile, &rng, scratch, diag, &st);
            if (err)
                break;
        }
        cmp_null_add(&acc, st);
    }
    if (err)
        goto out;
    cmp_null_result(&acc, ctx->seed + (down ? 22 : 21), &pr);
    cmp_set_perm(t, &pr,
                 strata_null ? "B's modules exchanged among modules of the same shape (matched strata)"
                             : "each of B's modules with its sampled entries shuffled (too few modules to exchange)",
                 ctx->alpha);
    if (!strata_null)
        snprintf(t->caveats + strlen(t->caveats), sizeof t->caveats - strlen(t->caveats),
                 "Too few modules of one shape for the matched-strata null to reach alpha; the entry-shuffle null used "
                 "instead keeps nothing two models share, so only the floor separates shared structure here. ");
    cmp_apply_floor(t);
    for (size_t i = 0; i < k; i++)
        if ((down ? mods[mod[i]].r_down : mods[mod[i]].r) >= t->floor)
            strong++;
    t->corroborated = strong >= 2;
    {
        size_t largest = 0;
        for (size_t s = 0; s < n_strata; s++)
            if (s_size[s] > largest)
                largest = s_size[s];
        if (largest < 2)
            snprintf(t->caveats + strlen(t->caveats), sizeof t->caveats - strlen(t->caveats),
                     "No two modules share a shape, so the null has nothing to exchange and p stays 1. ");
    }
    snprintf(t->tensors, sizeof t->tensors, "%zu adapter modules in %zu shape classes (%s)", k, n_strata,
             down ? "down factors" : "updates up . down, sampled entries");
    if (!down) {
        /* power: A's adapter with noisy up factors (dW r ~ 0.7), judged against this null */
        double syn;
        for (size_t i = 0; i < k; i++)
            scratch[i] = mods[mod[i]].r_syn;
        syn = cks_quantile_inplace(scratch, k, quantile);
        t->power = t->null_sd > 0 && (syn - t->null_mean) / t->null_sd >= Z_RULE && syn - t->null_mean >= t->floor;
        snprintf(t->power_note, sizeof t->power_note,
                 "%s a synthetic derivative of A (its up factors plus noise: %.3f, z %.1f)",
                 t->power ? "flags" : "did not flag", syn, t->null_sd > 0 ? (syn - t->null_mean) / t->null_sd : NAN);
    }
out:
    for (size_t s = 0; pi && s < n_strata; s++)
        free(pi[s]);
    free(pi);
    free(c);
    free(mod);
    free(stratum);
    free(pos);
    free(key_out);
    free(key_in);
    free(s_size);
    free(s_off);
    free(scratch);
    return err;
}

/* The ranked sampled entries of up . down at positions pos (count of them). */
static void update_entries(const float *up, const float *down, size_t rank, size_t in, const uint64_t *pos,
                           size_t count, double *out)
{
    for (size_t e = 0; e < count; e++) {
        size_t i = (size_t)(pos[e] / in), j = (size_t)(pos[e] % in);
        double s = 0;
        for (size_t q = 0; q < rank; q++)
            s += (double)up[i * rank + q] * down[q * in + j];
        out[e] = s;
    }
}

static cks_err prepare_module(const cmp_ctx *ctx, const cmp_model *a, const cmp_model *b, lmod *m, size_t per_module,
                              cks_rng *noise, uint64_t *bytes, cks_diag *diag)
{
    cks_err err = CKS_OK;
    const cks_adapter_module *ma = m->ma, *mb = m->mb;
    float *ua = NULL, *da = NULL, *ub = NULL, *dbf = NULL, *us = NULL;
    uint64_t *pos = NULL;
    double *vals = NULL, *scratch = NULL;
    size_t total = ma->out * ma->in, count = total < per_module ? total : per_module;

    m->n = count;
    pos = malloc(count * sizeof *pos);
    vals = malloc((count > per_module ? count : per_module) * sizeof *vals);
    scratch = malloc((count > per_module ? count : per_module) * sizeof *scratch);
    if (!pos || !vals || !scratch) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        goto out;
    }
    err = load_factor(a->m->ckpt, ma->up, ma->up_transposed, ma->out, ma->rank, &ua, bytes, diag);
    if (!err)
        err = load_factor(a->m->ckpt, ma->down, ma->down_transposed, ma->rank, ma->in, &da, bytes, diag);
    if (!err)
        err = load_factor(b->m->ckpt, mb->up, mb->up_transposed, mb->out, mb->rank, &ub, bytes, diag);
    if (!err)
        err = load_factor(b->m->ckpt, mb->down, mb->down_transposed, mb->rank, mb->in, &dbf, bytes, diag);
    if (err)
        goto out;
    sample_positions(ctx->seed, ma->out, ma->in, count, pos);
    m->za = malloc(count * sizeof *m->za);
    m->zb = malloc(count * sizeof *m->zb);
    m->zs = malloc(count * sizeof *m->zs);
    us = malloc(ma->out * ma->rank * sizeof *us);
    if (!m->za || !m->zb || !m->zs || !us) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        goto out;
    }
    update_entries(ua, da, ma->rank, ma->in, pos, count, vals);
    if (!rank_standardise(vals, count, m->za, scratch)) {
        err = CKS_ERR_NUMERIC; /* an all-zero update: untrained */
        goto out;
    }
    update_entries(ub, dbf, mb->rank, mb->in, pos, count, vals);
    if (!rank_standardise(vals, count, m->zb, scratch)) {
        err = CKS_ERR_NUMERIC;
        goto out;
    }
    {
        double mean = 0, ss = 0, sd;
        size_t nu = ma->out * ma->rank;
        for (size_t i = 0; i < nu; i++)
            mean += ua[i];
        mean /= (double)nu;
        for (size_t i = 0; i < nu; i++)
            ss += (ua[i] - mean) * (ua[i] - mean);
        sd = sqrt(ss / (double)nu);
        for (size_t i = 0; i < nu; i++)
            us[i] = ua[i] + (float)(SYNTH_NOISE * sd * cks_rng_normal(noise));
        update_entries(us, da, ma->rank, ma->in, pos, count, vals);
        m->r_syn = rank_standardise(vals, count, m->zs, scratch) ? dotf(m->za, m->zs, count) : NAN;
    }
    if (ma->rank == mb->rank) {
        size_t nd = ma->rank * ma->in, cd = nd < per_module ? nd : per_module;
        uint64_t *dpos = malloc(cd * sizeof *dpos);
        m->da = malloc(cd * sizeof *m->da);
        m->db = malloc(cd * sizeof *m->db);
        if (!dpos || !m->da || !m->db) {
            free(dpos);
            err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
            goto out;
        }
        sample_positions(ctx->seed + 1, ma->rank, ma->in, cd, dpos);
        for (size_t e = 0; e < cd; e++)
            vals[e] = da[dpos[e]];
        if (rank_standardise(vals, cd, m->da, scratch)) {
            for (size_t e = 0; e < cd; e++)
                vals[e] = dbf[dpos[e]];
            if (!rank_standardise(vals, cd, m->db, scratch)) {
                free(m->da);
                m->da = NULL;
            }
        } else {
            free(m->da);
            m->da = NULL;
        }
        m->n_down = cd;
        free(dpos);
    }
out:
    free(ua);
    free(da);
    free(ub);
    free(dbf);
    free(us);
    free(pos);
    free(vals);
    free(scratch);
    return err;
}

static void lmod_release(lmod *m)
{
    free(m->za);
    free(m->zb);
    free(m->zs);
    free(m->da);
    free(m->db);
    memset(m, 0, sizeof *m);
}

cks_err cmp_test_adapters(const cmp_ctx *ctx, const cmp_model *a, const cmp_model *b, cmp_family *f, cks_diag *diag)
{
    cks_err err = CKS_OK;
    cks_adapter *xa = NULL, *xb = NULL;
    lmod *mods = NULL;
    size_t n = 0, skipped = 0, per_module;
    uint64_t bytes = 0;
    cks_test_result *tl, *ti;
    cks_rng noise;

    /* L reads adapter factors whole from the checkpoints: not from a store of what T1-T4 use */
    if (!a->m->ckpt || !b->m->ckpt || (a->loader && !a->loader->reads_bytes) || (b->loader && !b->loader->reads_bytes))
        return CKS_OK;
    err = cks_adapter_scan(a->m->ckpt, &xa, diag);
    if (!err)
        err = cks_adapter_scan(b->m->ckpt, &xb, diag);
    if (err || xa->n == 0 || xb->n == 0)
        goto out;
    tl = cmp_family_add(f, "L", "LoRA updates, module by module (what training wrote)", true);
    ti = cmp_family_add(f, "L-init", "LoRA down factors (what the initialisation fixed)", true);
    if (!tl || !ti)
        goto out;
    tl->evidence = CKS_EVIDENCE_TRAINED;
    ti->evidence = CKS_EVIDENCE_INIT;
    snprintf(tl->sources, sizeof tl->sources, "adapter updates");
    snprintf(ti->sources, sizeof ti->sources, "adapter down factors");
    snprintf(tl->statistic_name, sizeof tl->statistic_name, "lower quartile over modules of the updates' Spearman");
    snprintf(ti->statistic_name, sizeof ti->statistic_name, "median Spearman of module down factors");
    mods = calloc(xa->n, sizeof *mods);
    if (!mods) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < xa->n; i++) {
        const cks_adapter_module *mb = cks_adapter_find(xb, xa->modules[i].key);
        if (!mb || mb->out != xa->modules[i].out || mb->in != xa->modules[i].in)
            continue;
        mods[n].ma = &xa->modules[i];
        mods[n].mb = mb;
        n++;
    }
    if (n == 0) {
        char why[256];
        snprintf(why, sizeof why, "the adapters share no module of the same shape (e.g. %.80s in A, %.80s in B)",
                 xa->modules[0].key, xb->modules[0].key);
        cmp_not_run(tl, "%s", why);
        cmp_not_run(ti, "%s", why);
        goto out;
    }
    per_module = L_TOTAL / n;
    if (per_module > L_MAX_SAMPLE)
        per_module = L_MAX_SAMPLE;
    if (per_module < L_MIN_SAMPLE)
        per_module = L_MIN_SAMPLE;
    cks_rng_seed(&noise, ctx->seed + 23);
    for (size_t i = 0; i < n && !err; i++) {
        err = prepare_module(ctx, a, b, &mods[i], per_module, &noise, &bytes, diag);
        if (err == CKS_ERR_NUMERIC || err == CKS_ERR_UNSUPPORTED) {
            /* an untrained (all-zero) update, NaN/Inf, or an undecodable dtype: leave it out */
            lmod_release(&mods[i]);
            mods[i] = mods[--n];
            memset(&mods[n], 0, sizeof mods[n]);
            i--;
            skipped++;
            err = CKS_OK;
        }
    }
    if (err)
        goto out;
    err = run_l(ctx, tl, mods, n, false, diag);
    if (!err)
        err = run_l(ctx, ti, mods, n, true, diag);
    tl->bytes_read = ti->bytes_read = bytes;
    if (skipped)
        snprintf(tl->caveats + strlen(tl->caveats), sizeof tl->caveats - strlen(tl->caveats),
                 "%zu module(s) left out: an all-zero update, values that are not finite, or an undecodable dtype. ",
                 skipped);
out:
    for (size_t i = 0; mods && i < n; i++)
        lmod_release(&mods[i]);
    free(mods);
    cks_adapter_free(xa);
    cks_adapter_free(xb);
    return err;
}
