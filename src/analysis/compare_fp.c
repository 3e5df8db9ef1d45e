/*
 * compare with a fingerprint on either side: compare's loaders call these instead of reading
 * a model (compare_data.c, compare_embed.c), so the tests run unchanged on the stored data.
 *
 * The fingerprint holds what compare decoded (same seed, same budget, values stored losslessly),
 * so a comparison against it sees the data a live one would have seen. Where its size cap kept
 * fewer k/v rows, or only the reference tokens' embedding rows, the live side is cut down to
 * the same rows and tokens (cmp_fp_reconcile, and the vocabulary of the stored tokens), so the
 * two sides always describe the same rows.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fingerprint_internal.h"

static cks_err copy_vector(const double *src, size_t n, double **out, cks_diag *diag)
{
    *out = malloc((n ? n : 1) * sizeof **out);
    if (!*out)
        return cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
    memcpy(*out, src, n * sizeof **out);
    return CKS_OK;
}

static cks_err copy_rows(const cks_fp_rows *src, cmp_matrix *out, cks_diag *diag)
{
    size_t n = src->rows * src->cols;
    memset(out, 0, sizeof *out);
    out->v = malloc((n ? n : 1) * sizeof *out->v);
    if (!out->v)
        return cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
    memcpy(out->v, src->v, n * sizeof *out->v);
    out->rows = src->rows;
    out->cols = src->cols;
    return CKS_OK;
}

static bool used_by_layers(const cks_fingerprint *fp, const cks_ckpt_tensor *t, bool norms, bool weights)
{
    for (int l = 0; l < fp->n_layers && fp->layers; l++) {
        const cks_fp_layer *L = &fp->layers[l];
        if ((norms && (L->attn_norm_t == t || L->ffn_norm_t == t)) ||
            (weights && (L->router_t == t || L->router_bias_t == t)))
            return true;
    }
    return false;
}

static cks_err stored_load(const cmp_ctx *ctx, const cks_compare_model *m, cmp_model *md, cks_diag *diag)
{
    cks_err err = CKS_OK;
    const cks_fingerprint *fp = m->fingerprint;
    unsigned tests = ctx->opts && ctx->opts->tests ? ctx->opts->tests : CKS_TEST_ALL;
    bool want_norms = tests & (CKS_TEST_T2 | CKS_TEST_T4), want_weights = tests & (CKS_TEST_T3 | CKS_TEST_T4);
    bool want_t1 = tests & CKS_TEST_T1;
    /* k/v rows are the sampler's choice for one seed: with another seed they describe other rows */
    bool same_seed = fp->seed == ctx->seed;

    memset(md, 0, sizeof *md);
    md->m = m;
    err = cks_roles_build(fp->ckpt, fp->config_json, fp->config_len, &md->roles, diag);
    if (err)
        goto out;
    md->n_layers = md->roles->n_layers;
    md->hidden = fp->hidden;
    md->raw = calloc(fp->n_hashes ? fp->n_hashes : 1, sizeof *md->raw);
    if (!md->raw) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        goto out;
    }
    md->cap_raw = fp->n_hashes ? fp->n_hashes : 1;
    for (size_t i = 0; i < fp->n_hashes; i++) {
        const cks_fp_hash *h = &fp->hashes[i];
        const cks_tensor_role *tr = &md->roles->entries[h->tensor - fp->ckpt->tensors];
        cmp_raw *r = &md->raw[md->n_raw];
        /* without T1 a live run reads only what the other tests decode: keep the same set */
        if (!want_t1 && !used_by_layers(fp, h->tensor, want_norms, want_weights))
            continue;
        r->tensor = h->tensor;
        r->role = tr->role;
        r->part = tr->part;
        r->layer = tr->layer;
        r->expert = tr->expert;
        r->len = (size_t)(h->tensor->info->end - h->tensor->info->begin);
        memcpy(r->sha256, h->sha256, 32);
        r->low_information = h->low_information;
        if (h->bytes) {
            r->bytes = malloc(h->len ? h->len : 1);
            if (!r->bytes) {
                err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
                goto out;
            }
            memcpy(r->bytes, h->bytes, h->len);
        }
        md->n_raw++;
    }
    md->full_coverage = fp->full_coverage && want_t1;
    if (md->n_layers <= 0) {
        md->known_arch = false;
        goto out;
    }
    md->layers = calloc((size_t)md->n_layers, sizeof *md->layers);
    if (!md->layers) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        goto out;
    }
    for (int l = 0; l < md->n_layers && l < fp->n_layers && fp->layers && !err; l++) {
        const cks_fp_layer *F = &fp->layers[l];
        cmp_layer *L = &md->layers[l];
        if (want_norms && F->attn_norm && F->n_attn_norm == md->hidden)
            err = copy_vector(F->attn_norm, F->n_attn_norm, &L->attn_norm, diag);
        if (!err && want_norms && F->ffn_norm && F->n_ffn_norm == md->hidden)
            err = copy_vector(F->ffn_norm, F->n_ffn_norm, &L->ffn_norm, diag);
        if (!err && want_weights && F->router.v)
            err = copy_rows(&F->router, &L->router, diag);
        if (!err && want_weights && F->router_bias) {
            err = copy_vector(F->router_bias, F->n_router_bias, &L->router_bias, diag);
            L->n_router_bias = F->n_router_bias;
        }
        if (!err && want_weights && same_seed && F->k.v) {
            err = copy_rows(&F->k, &L->k, diag);
            L->k_total_rows = F->k.total_rows;
        }
        if (!err && want_weights && same_seed && F->v.v) {
            err = copy_rows(&F->v, &L->v, diag);
            L->v_total_rows = F->v.total_rows;
        }
    }
    md->known_arch = md->hidden > 0;
out:
    if (err)
        cmp_model_release(md);
    return err;
}

static cks_err stored_vocab_of(const cks_fingerprint *fp, cks_vocab **out, char *note, size_t note_size)
{
    size_t text = 0, at = 0;
    cks_vocab *v;
    *out = NULL;
    if (fp->n_tokens == 0) {
        snprintf(note, note_size, "the fingerprint of %s kept no embedding rows", fp->source);
        return CKS_ERR_NOT_FOUND;
    }
    for (size_t i = 0; i < fp->n_tokens; i++)
        text += fp->tokens[i].len;
    v = calloc(1, sizeof *v);
    if (!v || !(v->tokens = calloc(fp->n_tokens, sizeof *v->tokens)) || !(v->pool = malloc(text ? text : 1))) {
        cks_vocab_free(v);
        snprintf(note, note_size, "out of memory");
        return CKS_ERR_NOMEM;
    }
    /* the stored tokens are sorted by id with unique ids, as a parsed vocabulary is */
    for (size_t i = 0; i < fp->n_tokens; i++) {
        cks_token *t = &v->tokens[i];
        t->id = fp->tokens[i].id;
        t->flags = fp->tokens[i].flags;
        t->len = fp->tokens[i].len;
        if (t->len)
            memcpy(v->pool + at, fp->tokens[i].text, t->len);
        t->text = v->pool + at;
        at += t->len;
    }
    v->n = fp->n_tokens;
    *out = v;
    return CKS_OK;
}

static const cks_fp_token *token_by_id(const cks_fingerprint *fp, uint32_t id, size_t *index)
{
    size_t lo = 0, hi = fp->n_tokens;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (fp->tokens[mid].id < id)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo < fp->n_tokens && fp->tokens[lo].id == id) {
        *index = lo;
        return &fp->tokens[lo];
    }
    return NULL;
}

static cks_err stored_role_rows(cmp_model *md, cks_role role, const uint32_t *rows, size_t n, cmp_matrix *out,
                                uint64_t *counter, cks_diag *diag)
{
    const cks_fingerprint *fp = md->m->fingerprint;
    size_t cols = fp->embed_cols;
    memset(out, 0, sizeof *out);
    if (role != CKS_ROLE_EMBED || !fp->embed || cols == 0)
        return CKS_OK; /* nothing else is kept by rows: the tests skip it */
    out->v = malloc((n ? n : 1) * cols * sizeof *out->v);
    if (!out->v)
        return cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
    for (size_t i = 0; i < n; i++) {
        size_t k;
        if (!token_by_id(fp, rows[i], &k)) {
            cmp_matrix_free(out);
            return cks_fail(diag, CKS_ERR_NOT_FOUND, "the fingerprint of %s holds no embedding row for token %u",
                            fp->source, rows[i]);
        }
        memcpy(out->v + i * cols, fp->embed + k * cols, cols * sizeof *out->v);
    }
    out->rows = n;
    out->cols = cols;
    return CKS_OK;
}

/* ---- keeping the k/v rows both sides hold ---- */

#define MAX_TOTALS 16

typedef struct row_set {
    size_t total;
    uint32_t *ids;
    size_t n;
} row_set;

typedef struct row_table {
    size_t n;
    row_set sets[MAX_TOTALS];
} row_table;

static void table_release(row_table *t)
{
    for (size_t i = 0; i < t->n; i++)
        free(t->sets[i].ids);
    t->n = 0;
}

/* The row ids of matrix w (0 = k, 1 = v) of layer l: stored in a fingerprint, else the
 * sampler's choice for (seed, total, rows), which is how compare picked them. */
static uint32_t *matrix_ids(const cmp_ctx *ctx, const cmp_model *md, int l, int w, size_t *n)
{
    const cmp_matrix *m = w ? &md->layers[l].v : &md->layers[l].k;
    size_t total = w ? md->layers[l].v_total_rows : md->layers[l].k_total_rows;
    const cks_fingerprint *fp = md->m ? md->m->fingerprint : NULL;
    uint32_t *ids;
    *n = 0;
    if (!m->v || m->rows == 0 || total == 0 || total > UINT32_MAX)
        return NULL;
    ids = malloc(total * sizeof *ids);
    if (!ids)
        return NULL;
    if (fp && fp->layers && l < fp->n_layers) {
        const cks_fp_rows *r = w ? &fp->layers[l].v : &fp->layers[l].k;
        if (r->ids && r->rows == m->rows) {
            memcpy(ids, r->ids, r->rows * sizeof *ids);
            *n = r->rows;
            return ids;
        }
    }
    if (cmp_sample_rows(ctx->seed, total, m->rows, ids) != m->rows) {
        free(ids);
        return NULL;
    }
    *n = m->rows;
    return ids;
}

static cks_err collect(const cmp_ctx *ctx, const cmp_model *md, row_table *t)
{
    for (int l = 0; l < md->n_layers && md->layers; l++)
        for (int w = 0; w < 2; w++) {
            size_t total = w ? md->layers[l].v_total_rows : md->layers[l].k_total_rows, n;
            bool known = false;
            uint32_t *ids;
            for (size_t i = 0; i < t->n; i++)
                known |= t->sets[i].total == total;
            if (known || t->n == MAX_TOTALS)
                continue;
            ids = matrix_ids(ctx, md, l, w, &n);
            if (!ids)
                continue;
            t->sets[t->n].total = total;
            t->sets[t->n].ids = ids;
            t->sets[t->n].n = n;
            t->n++;
        }
    return CKS_OK;
}

/* Keep the rows of every k/v matrix of md whose ids the other side also holds. */
static cks_err restrict_model(const cmp_ctx *ctx, cmp_model *md, const row_table *other, cks_diag *diag)
{
    cks_err err = CKS_OK;
    for (int l = 0; l < md->n_layers && md->layers && !err; l++)
        for (int w = 0; w < 2 && !err; w++) {
            cmp_matrix *m = w ? &md->layers[l].v : &md->layers[l].k;
            size_t total = w ? md->layers[l].v_total_rows : md->layers[l].k_total_rows, n, i = 0, j = 0, k = 0;
            const row_set *o = NULL;
            uint32_t *ids;
            for (size_t s = 0; s < other->n; s++)
                if (other->sets[s].total == total)
                    o = &other->sets[s];
            if (!m->v || !o)
                continue;
            ids = matrix_ids(ctx, md, l, w, &n);
            if (!ids) {
                cmp_matrix_free(m); /* unknown rows cannot be matched: leave them out */
                continue;
            }
            while (i < n && j < o->n) {
                if (ids[i] < o->ids[j]) {
                    i++;
                } else if (ids[i] > o->ids[j]) {
                    j++;
                } else {
                    if (k != i)
                        memmove(m->v + k * m->cols, m->v + i * m->cols, m->cols * sizeof *m->v);
                    k++;
                    i++;
                    j++;
                }
            }
            free(ids);
            if (k == 0)
                cmp_matrix_free(m);
            else
                m->rows = k;
        }
    (void)diag;
    return err;
}

static cks_err stored_reconcile(const cmp_ctx *ctx, cmp_model *a, cmp_model *b, cks_diag *diag)
{
    cks_err err;
    row_table ta = {0}, tb = {0};
    /* both tables first: each side is cut to what the other held before any cut */
    err = collect(ctx, a, &ta);
    if (!err)
        err = collect(ctx, b, &tb);
    if (!err)
        err = restrict_model(ctx, a, &tb, diag);
    if (!err)
        err = restrict_model(ctx, b, &ta, diag);
    table_release(&ta);
    table_release(&tb);
    return err;
}

static cks_err stored_vocab(const cks_compare_model *m, cks_vocab **out, char *note, size_t note_size)
{
    return stored_vocab_of(m->fingerprint, out, note, note_size);
}

const cmp_loader cmp_stored_loader = {
    .kind = "fingerprint",
    .reads_bytes = false,
    .load = stored_load,
    .role_rows = stored_role_rows,
    .vocab = stored_vocab,
    .reconcile = stored_reconcile,
};
