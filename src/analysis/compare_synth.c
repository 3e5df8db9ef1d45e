/*
 * compare: the synthetic positives of the power checks: A plus noise, and the same permuted and sign-flipped.
 * Part of cks_compare (compare.c); shared declarations in compare_internal.h.
 */
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
        out[i] = v[i] + CMP_SYNTH_NOISE * sd * cks_rng_normal(rng);
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
        out->v[i] = m->v[i] + (float)(CMP_SYNTH_NOISE * sd * cks_rng_normal(rng));
    return CKS_OK;
}

cks_err cmp_synth_noisy(const cmp_model *a, const cmp_embed_pair *emb, uint64_t seed, cmp_model *out,
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

/* m's columns re-indexed in place: column j becomes signs[j] x the old column cols[j]. */
static cks_err select_columns_in_place(cmp_matrix *m, const int32_t *cols, const int8_t *signs)
{
    float *row = malloc((m->cols ? m->cols : 1) * sizeof *row);
    if (!row)
        return CKS_ERR_NOMEM;
    for (size_t r = 0; r < m->rows; r++) {
        float *v = m->v + r * m->cols;
        memcpy(row, v, m->cols * sizeof *row);
        for (size_t j = 0; j < m->cols; j++)
            v[j] = row[(size_t)cols[j]] * (float)signs[j];
    }
    free(row);
    return CKS_OK;
}

/*
 * B' = B re-indexed by a random permutation and random signs of the hidden dimension. emb's
 * B side is taken over (re-indexed in place and moved to eout->b, emb->b left empty): the
 * caller's noisy copy is not needed after this, and a second 32 MiB copy of it was the peak
 * of a default compare (the same values either way).
 */
cks_err cmp_synth_permuted(const cmp_model *b, cmp_embed_pair *emb, uint64_t seed, bool weights,
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
    err = cmp_reindex_model(&view, idx, sgn, b->hidden, out);
    if (!err && emb && emb->b.v) {
        eout->a = emb->a; /* borrowed */
        if (emb->b.cols == b->hidden) {
            err = select_columns_in_place(&emb->b, idx, sgn);
            if (!err) {
                eout->b = emb->b;
                memset(&emb->b, 0, sizeof emb->b);
            }
        } else {
            err = cmp_select_columns(&emb->b, idx, sgn, b->hidden, &eout->b);
        }
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
