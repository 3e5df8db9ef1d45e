/*
 * fingerprint: building one from a model, read through compare's live loader within the room
 * (include/ckptscope/fingerprint.h).
 */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <openssl/evp.h>
#include <zstd.h>

#include "ckptscope/decode.h"
#include "ckptscope/hash.h"
#include "fingerprint_internal.h"

/* ---- building ---- */

static const cks_ckpt_tensor *same_tensor(const cks_fingerprint *fp, const cks_tensor_role *tr)
{
    return tr ? cks_ckpt_find(fp->ckpt, tr->tensor->info->name) : NULL;
}

static const cks_tensor_role *layer_role(const cks_roles *roles, cks_role role, int l)
{
    const cks_fused_slice *slice = NULL;
    const cks_tensor_role *tr;
    if (role == CKS_ROLE_ROUTER_BIAS) {
        tr = cks_roles_find(roles, role, CKS_PART_WEIGHT, l, -1);
        return tr ? tr : cks_roles_find(roles, role, CKS_PART_BIAS, l, -1);
    }
    tr = cks_roles_locate(roles, role, CKS_PART_WEIGHT, l, -1, &slice);
    return tr && !tr->fused ? tr : NULL;
}

static cks_err copy_doubles(const double *src, size_t n, double **out)
{
    *out = NULL;
    if (!src)
        return CKS_OK;
    *out = malloc((n ? n : 1) * sizeof **out);
    if (!*out)
        return CKS_ERR_NOMEM;
    memcpy(*out, src, n * sizeof **out);
    return CKS_OK;
}

/* Rows `want` (sorted ids) of a matrix whose rows carry ids `have` (sorted), into dst. */
static cks_err pick_rows(const cmp_matrix *m, const uint32_t *have, const uint32_t *want, size_t n_want,
                         size_t total, cks_fp_rows *dst)
{
    size_t i = 0, j = 0, k = 0;
    memset(dst, 0, sizeof *dst);
    dst->v = malloc((n_want ? n_want : 1) * m->cols * sizeof *dst->v);
    dst->ids = malloc((n_want ? n_want : 1) * sizeof *dst->ids);
    if (!dst->v || !dst->ids) {
        fp_rows_release(dst);
        return CKS_ERR_NOMEM;
    }
    while (i < m->rows && j < n_want) {
        if (have[i] < want[j]) {
            i++;
        } else if (have[i] > want[j]) {
            j++;
        } else {
            memcpy(dst->v + k * m->cols, m->v + i * m->cols, m->cols * sizeof *dst->v);
            dst->ids[k++] = have[i];
            i++;
            j++;
        }
    }
    dst->rows = k;
    dst->cols = m->cols;
    dst->total_rows = total;
    return CKS_OK;
}

/* Keep `keep` rows (0 = none, SIZE_MAX = all that compare read) of a sampled k or v matrix. */
static cks_err keep_kv(uint64_t seed, const cmp_matrix *m, size_t total, size_t keep, cks_fp_rows *dst)
{
    cks_err err = CKS_OK;
    uint32_t *have = NULL, *want = NULL;
    size_t n_have, n_want;
    memset(dst, 0, sizeof *dst);
    if (!m->v || m->rows == 0 || keep == 0 || total == 0 || total > UINT32_MAX)
        return CKS_OK;
    have = malloc(total * sizeof *have);
    want = malloc(total * sizeof *want);
    if (!have || !want) {
        err = CKS_ERR_NOMEM;
        goto out;
    }
    /* compare chose these rows from (seed, total, count) only: the same call gives their ids */
    n_have = cmp_sample_rows(seed, total, m->rows, have);
    if (n_have != m->rows)
        goto out;
    n_want = keep >= m->rows ? m->rows : cmp_sample_rows(seed, total, keep, want);
    if (keep >= m->rows)
        memcpy(want, have, n_have * sizeof *want);
    err = pick_rows(m, have, want, n_want, total, dst);
out:
    free(have);
    free(want);
    return err;
}

typedef struct build_state {
    const cks_compare_model *m;
    cmp_model md;
    cks_vocab *vocab;
    size_t embed_rows, embed_cols, embed_elem;
    /* candidate embedding rows: every token, or the reference tokens in priority order */
    bool cand_all;
    size_t n_cand;
    uint32_t *cand_ids;    /* index into vocab->tokens */
    cmp_matrix cand_rows;  /* n_cand x cols, in cand order */
    uint64_t bytes_read;
} build_state;

static int token_by_text(const void *x, const void *y, void *ctx)
{
    const cks_vocab *v = ctx;
    const cks_token *a = &v->tokens[*(const uint32_t *)x], *b = &v->tokens[*(const uint32_t *)y];
    size_t n = a->len < b->len ? a->len : b->len;
    int c = n ? memcmp(a->text, b->text, n) : 0;
    if (c)
        return c;
    if (a->len != b->len)
        return a->len < b->len ? -1 : 1;
    return a->id < b->id ? -1 : a->id > b->id;
}

/* The lowest-id token whose text is s (the one compare's matcher lets stand for it). */
static long find_text(const cks_vocab *v, const uint32_t *sorted, const char *s, size_t len)
{
    size_t lo = 0, hi = v->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const cks_token *t = &v->tokens[sorted[mid]];
        size_t n = t->len < len ? t->len : len;
        int c = n ? memcmp(t->text, s, n) : 0;
        if (!c)
            c = t->len < len ? -1 : t->len > len ? 1 : 0;
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo < v->n && v->tokens[sorted[lo]].len == len && (len == 0 || memcmp(v->tokens[sorted[lo]].text, s, len) == 0))
        return (long)sorted[lo];
    return -1;
}

/*
 * How many embedding rows `room` allows, and whether they go as 4-bit codes. Exact rows (bf16)
 * take up to 30 % of the room; when that holds fewer than FP_EMBED_TARGET rows (a wide model
 * under the default cap: 2,048 bf16 rows of 4,096 values are 16.8 MB) the rows go as 4-bit
 * codes, up to FP_EMBED_TARGET of them in up to 70 % of the room: T4 is the only test that sees
 * a permuted derivative, and it needs the rows; T2 keeps every norm, T3 fewer k/v rows.
 */
static size_t embed_plan(uint64_t room, size_t n_cand, size_t cols, uint32_t version, bool *q4, uint64_t *bytes)
{
    uint64_t exact_row = (uint64_t)cols * (version >= 2 ? 2 : 4), q4_row = ((uint64_t)cols + 1) / 2;
    uint64_t share = room * 3 / 10, most = room / 100 * FP_EMBED_MAX_PERCENT, params = (uint64_t)cols * 8;
    size_t target = n_cand < FP_EMBED_TARGET ? n_cand : FP_EMBED_TARGET;
    uint64_t n = cols ? share / exact_row : 0;

    *q4 = false;
    if (n >= n_cand) {
        n = n_cand; /* every candidate fits exactly */
    } else if (cols && n < target && version >= 3) {
        *q4 = true;
        n = most > params ? (most - params) / q4_row : 0;
        n = n < target ? n : target;
    }
    /* the rows, and for codes their per-column offset and step (two floats a column) */
    *bytes = n == 0 ? 0 : *q4 ? n * q4_row + params : n * exact_row;
    return (size_t)n;
}

static cks_err choose_candidates(build_state *st, size_t max_rows, uint32_t version, cks_diag *diag)
{
    cks_err err = CKS_OK;
    const cks_vocab *v = st->vocab;
    uint32_t *sorted = NULL, *ids = NULL;
    fp_refs *refs = NULL;

    if (!v || !st->embed_rows || !st->embed_cols)
        return CKS_OK;
    st->cand_ids = malloc((v->n ? v->n : 1) * sizeof *st->cand_ids);
    if (!st->cand_ids)
        return cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
    if (v->n <= max_rows) {
        st->cand_all = true;
        for (size_t i = 0; i < v->n; i++)
            if (v->tokens[i].id < st->embed_rows)
                st->cand_ids[st->n_cand++] = (uint32_t)i;
    } else {
        bool *taken = calloc(v->n ? v->n : 1, sizeof *taken);
        refs = malloc(sizeof *refs);
        sorted = malloc((v->n ? v->n : 1) * sizeof *sorted);
        if (!taken || !refs || !sorted) {
            free(taken);
            err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
            goto out;
        }
        fp_refs_build(refs, version);
        for (size_t i = 0; i < v->n; i++)
            sorted[i] = (uint32_t)i;
        qsort_r(sorted, v->n, sizeof *sorted, token_by_text, (void *)v);
        /* only as many as the fingerprint could keep: their rows are read and decoded */
        for (size_t r = 0; r < refs->n && st->n_cand < max_rows; r++) {
            long k = find_text(v, sorted, refs->text[r], refs->len[r]);
            if (k >= 0 && !taken[k] && v->tokens[k].id < st->embed_rows && !(v->tokens[k].flags & CKS_TOKEN_SPECIAL)) {
                taken[k] = true;
                st->cand_ids[st->n_cand++] = (uint32_t)k;
            }
        }
        free(taken);
    }
    /* read the candidates' rows once (sorted ids read as runs), keep them in candidate order */
    ids = malloc((st->n_cand ? st->n_cand : 1) * sizeof *ids);
    if (!ids) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < st->n_cand; i++)
        ids[i] = v->tokens[st->cand_ids[i]].id;
    err = cmp_live_loader.role_rows(&st->md, CKS_ROLE_EMBED, ids, st->n_cand, &st->cand_rows, &st->bytes_read, diag);
    if (!err && st->cand_rows.rows != st->n_cand)
        st->n_cand = 0;
out:
    free(ids);
    free(sorted);
    free(refs);
    return err;
}

typedef struct cand_sort {
    const cks_vocab *vocab;
    const uint32_t *cand_ids;
} cand_sort;

static int cand_by_id(const void *x, const void *y, void *ctx)
{
    const cand_sort *c = ctx;
    uint32_t a = c->vocab->tokens[c->cand_ids[*(const uint32_t *)x]].id;
    uint32_t b = c->vocab->tokens[c->cand_ids[*(const uint32_t *)y]].id;
    return a < b ? -1 : a > b;
}

/* The first `n` candidates (priority order), stored as tokens sorted by id with their rows,
 * as 4-bit codes when q4. */
static cks_err fill_embed(cks_fingerprint *fp, const build_state *st, size_t n, bool q4)
{
    size_t text_total = 0, at = 0;
    uint32_t *order = NULL;
    cand_sort cs = {st->vocab, st->cand_ids};

    fp_embed_release(fp);
    fp->embed_rows_total = st->embed_rows;
    fp->embed_cols = st->embed_cols;
    fp->embed_elem_bytes = st->embed_elem;
    fp->vocab_size = st->vocab ? st->vocab->n : 0;
    fp->embed_all = st->cand_all && n == st->n_cand;
    if (n == 0)
        return CKS_OK;
    order = malloc(n * sizeof *order);
    for (size_t i = 0; order && i < n; i++) {
        order[i] = (uint32_t)i;
        text_total += st->vocab->tokens[st->cand_ids[i]].len;
    }
    fp->tokens = calloc(n, sizeof *fp->tokens);
    fp->text_pool = malloc(text_total ? text_total : 1);
    fp->embed = malloc(n * st->embed_cols * sizeof *fp->embed);
    if (!order || !fp->tokens || !fp->text_pool || !fp->embed) {
        free(order);
        fp_embed_release(fp);
        return CKS_ERR_NOMEM;
    }
    qsort_r(order, n, sizeof *order, cand_by_id, &cs);
    for (size_t i = 0; i < n; i++) {
        const cks_token *t = &st->vocab->tokens[st->cand_ids[order[i]]];
        fp->tokens[i].id = t->id;
        fp->tokens[i].flags = t->flags;
        fp->tokens[i].len = t->len;
        fp->tokens[i].text = fp->text_pool + at;
        if (t->len)
            memcpy(fp->text_pool + at, t->text, t->len);
        at += t->len;
        memcpy(fp->embed + i * st->embed_cols, st->cand_rows.v + (size_t)order[i] * st->embed_cols,
               st->embed_cols * sizeof *fp->embed);
    }
    fp->n_tokens = n;
    free(order);
    if (q4 && fp_embed_quantise(fp) != CKS_OK) {
        fp_embed_release(fp);
        return CKS_ERR_NOMEM;
    }
    return CKS_OK;
}

/* Decide what the cap allows for k/v rows, routers and embeddings, and fill fp with it. */
static cks_err fill_selected(cks_fingerprint *fp, build_state *st, uint64_t room, uint64_t seed, uint32_t version)
{
    const cmp_model *md = &st->md;
    uint64_t kv_full = 0, router_full = 0, embed_bytes, router_share, kv_share, per_row;
    size_t kv_keep = SIZE_MAX, n_layers = md->n_layers > 0 ? (size_t)md->n_layers : 0, n_embed;
    size_t router_every = 1, n_routers = 0;
    bool keep_v = true, q4;
    int esz = version >= 2 ? 2 : 4;

    fp_layers_release(fp);
    fp->kv_subsampled = false;
    fp->routers_dropped = 0;
    for (size_t l = 0; l < n_layers && md->layers; l++) {
        kv_full += ((uint64_t)md->layers[l].k.rows + md->layers[l].v.rows) * md->hidden * (uint64_t)esz;
        if (md->layers[l].router.v) {
            router_full += (uint64_t)md->layers[l].router.rows * md->layers[l].router.cols * (uint64_t)esz;
            n_routers++;
        }
    }
    /* what is left after the norms: embeddings first (embed_plan), then routers 25/70 of the
       rest, k/v the remainder; a part that needs less than its share leaves it to the next */
    n_embed = embed_plan(room, st->n_cand, st->embed_cols, version, &q4, &embed_bytes);
    room -= embed_bytes < room ? embed_bytes : room;
    router_share = room * 25 / 70;
    if (router_full > router_share && n_routers > 0) {
        uint64_t one = router_full / n_routers, fit = one ? router_share / one : 0;
        router_every = fit ? (n_routers + fit - 1) / fit : SIZE_MAX;
        router_full = fit < n_routers ? fit * one : router_full;
    }
    room -= router_full < room ? router_full : room;
    kv_share = room;
    if (kv_full > kv_share && n_layers > 0 && md->hidden > 0) {
        fp->kv_subsampled = true;
        per_row = (uint64_t)n_layers * md->hidden * (uint64_t)esz;
        kv_keep = (size_t)(kv_share / (2 * per_row));
        if (kv_keep < 8) {
            keep_v = false; /* k alone carries T4c (CKA); v only adds to T3 */
            kv_keep = (size_t)(kv_share / per_row);
        }
        if (kv_keep >= 8)
            kv_keep -= kv_keep % 8; /* whole blocks: the sampler's unit */
    }
    if (n_layers == 0 || !md->layers)
        goto embed;
    fp->layers = calloc(n_layers, sizeof *fp->layers);
    if (!fp->layers)
        return CKS_ERR_NOMEM;
    for (size_t l = 0, router_seen = 0; l < n_layers; l++) {
        const cmp_layer *L = &md->layers[l];
        cks_fp_layer *F = &fp->layers[l];
        if (L->attn_norm) {
            F->attn_norm_t = same_tensor(fp, layer_role(md->roles, CKS_ROLE_ATTN_NORM, (int)l));
            F->n_attn_norm = md->hidden;
            if (copy_doubles(L->attn_norm, md->hidden, &F->attn_norm))
                return CKS_ERR_NOMEM;
        }
        if (L->ffn_norm) {
            F->ffn_norm_t = same_tensor(fp, layer_role(md->roles, CKS_ROLE_FFN_NORM, (int)l));
            F->n_ffn_norm = md->hidden;
            if (copy_doubles(L->ffn_norm, md->hidden, &F->ffn_norm))
                return CKS_ERR_NOMEM;
        }
        if (L->router_bias) {
            F->router_bias_t = same_tensor(fp, layer_role(md->roles, CKS_ROLE_ROUTER_BIAS, (int)l));
            F->n_router_bias = L->n_router_bias;
            if (copy_doubles(L->router_bias, L->n_router_bias, &F->router_bias))
                return CKS_ERR_NOMEM;
        }
        if (L->router.v) {
            if (router_every != SIZE_MAX && router_seen % router_every == 0) {
                size_t n = L->router.rows * L->router.cols;
                F->router_t = same_tensor(fp, layer_role(md->roles, CKS_ROLE_ROUTER, (int)l));
                F->router.v = malloc((n ? n : 1) * sizeof *F->router.v);
                if (!F->router.v)
                    return CKS_ERR_NOMEM;
                memcpy(F->router.v, L->router.v, n * sizeof *F->router.v);
                F->router.rows = F->router.total_rows = L->router.rows;
                F->router.cols = L->router.cols;
            } else {
                fp->routers_dropped++;
            }
            router_seen++;
        }
        if (keep_kv(seed, &L->k, L->k_total_rows, kv_keep, &F->k) ||
            keep_kv(seed, &L->v, L->v_total_rows, keep_v ? kv_keep : 0, &F->v))
            return CKS_ERR_NOMEM;
    }
embed:
    return fill_embed(fp, st, n_embed, q4);
}

static cks_err build_header(cks_fingerprint *fp, const cks_compare_model *m, const cks_fp_build_opts *o,
                            cks_diag *diag)
{
    cks_err err = CKS_OK;
    const cks_ckpt *c = m->ckpt;
    cks_st_header **headers = calloc(c->n_files ? c->n_files : 1, sizeof *headers);
    char **paths = calloc(c->n_files ? c->n_files : 1, sizeof *paths);

    fp->files = calloc(c->n_files ? c->n_files : 1, sizeof *fp->files);
    if (!headers || !paths || !fp->files) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < c->n_files && !err; i++) {
        cks_fp_file *f = &fp->files[i];
        f->path = strdup(c->files[i].path);
        fp->n_files++;
        paths[i] = strdup(c->files[i].path);
        if (!f->path || !paths[i]) {
            err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
            break;
        }
        f->size = c->files[i].header->file_size;
        if (c->files[i].source)
            snprintf(f->sha256, sizeof f->sha256, "%s", c->files[i].source->sha256_hex);
        err = fp_header_copy(c->files[i].header, &headers[i], diag);
    }
    if (!err)
        err = fp_ckpt_assemble(o && o->source ? o->source : c->name, c->n_files, headers, paths, &fp->ckpt, diag);
out:
    if (err)
        for (size_t i = 0; i < c->n_files && headers && paths; i++) {
            cks_st_header_free(headers[i]);
            free(paths[i]);
        }
    free(headers);
    free(paths);
    return err;
}

cks_err cks_fingerprint_build(const cks_compare_model *m, const cks_fp_build_opts *opts, cks_fingerprint **out,
                              cks_diag *diag)
{
    cks_err err = CKS_OK;
    cks_compare_opts copts;
    cmp_ctx ctx;
    build_state st;
    cks_fingerprint *fp = NULL;
    uint64_t cap = opts && opts->max_bytes ? opts->max_bytes : CKS_FP_DEFAULT_MAX_BYTES, fixed = 0, room, fit_room = 0;
    uint32_t version = opts && opts->version ? opts->version : CKS_FP_VERSION;
    uint8_t *enc = NULL;
    size_t enc_len = 0;
    size_t ra = 0, ca = 0, ea = 0;

    *out = NULL;
    memset(&st, 0, sizeof st);
    memset(&copts, 0, sizeof copts);
    memset(&ctx, 0, sizeof ctx); /* every setting not named below is off (no power run, no early choice) */
    if (!m || !m->ckpt || m->fingerprint || version < CKS_FP_MIN_VERSION || version > CKS_FP_VERSION)
        return cks_fail(diag, CKS_ERR_INVALID_ARG, "fingerprint: needs a model (not a fingerprint), version 1..%d",
                        CKS_FP_VERSION);
    copts.tests = CKS_TEST_ALL;
    ctx.opts = &copts;
    ctx.budget = opts && opts->budget ? opts->budget : FP_COMPARE_BUDGET;
    ctx.seed = opts && opts->seed ? opts->seed : FP_COMPARE_SEED;
    ctx.alpha = 1e-3;
    ctx.permutations = 9999;
    st.m = m;
    fp = calloc(1, sizeof *fp);
    if (!fp) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        goto out;
    }
    fp->version = CKS_FP_VERSION;
    fp->source = fp_dup_or_empty(opts ? opts->source : m->ckpt->name);
    fp->repo = fp_dup_or_empty(opts ? opts->repo : NULL);
    fp->revision = fp_dup_or_empty(opts ? opts->revision : NULL);
    fp->commit = fp_dup_or_empty(opts ? opts->commit : NULL);
    fp->tool = strdup("ckptscope");
    if (!fp->source || !fp->repo || !fp->revision || !fp->commit || !fp->tool) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        goto out;
    }
    fp->seed = ctx.seed;
    fp->budget = ctx.budget;
    if (m->config_json) {
        fp->config_json = malloc(m->config_len + 1);
        if (!fp->config_json) {
            err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
            goto out;
        }
        memcpy(fp->config_json, m->config_json, m->config_len);
        fp->config_json[m->config_len] = '\0';
        fp->config_len = m->config_len;
    }
    err = build_header(fp, m, opts, diag);
    if (err)
        goto out;
    /* exactly what compare reads, through compare's own loader */
    err = cmp_live_loader.load(&ctx, m, &st.md, diag);
    if (err)
        goto out;
    fp->full_coverage = st.md.full_coverage;
    fp->n_layers = st.md.n_layers > 0 && st.md.layers ? st.md.n_layers : 0;
    fp->hidden = st.md.hidden;
    st.bytes_read = st.md.bytes_norms + st.md.bytes_weights + st.md.bytes_router + st.md.bytes_embed +
                    st.md.bytes_other;
    fp->hashes = calloc(st.md.n_raw ? st.md.n_raw : 1, sizeof *fp->hashes);
    if (!fp->hashes) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < st.md.n_raw; i++) {
        cks_fp_hash *h = &fp->hashes[fp->n_hashes];
        h->tensor = cks_ckpt_find(fp->ckpt, st.md.raw[i].tensor->info->name);
        if (!h->tensor)
            continue;
        memcpy(h->sha256, st.md.raw[i].sha256, 32);
        h->low_information = st.md.raw[i].low_information;
        fp->n_hashes++;
    }
    for (int l = 0; l < fp->n_layers; l++) {
        const cmp_layer *L = &st.md.layers[l];
        fixed += (L->attn_norm ? st.md.hidden : 0) * 2 + (L->ffn_norm ? st.md.hidden : 0) * 2 + L->n_router_bias * 4;
    }
    /* embedding rows of every token when they fit, else of the reference strings */
    cmp_role_dims(&st.md, CKS_ROLE_EMBED, &ra, &ca, &ea);
    if (m->tokenizer_json && ra && ca) {
        cks_diag ignored;
        if (cks_vocab_parse(m->tokenizer_json, m->tokenizer_len, &st.vocab, &ignored) != CKS_OK)
            st.vocab = NULL;
        st.embed_rows = ra;
        st.embed_cols = ca;
        st.embed_elem = ea;
    }
    /* the payload is compressed; the header summary (tensor names) compresses ~10x */
    fixed += 4096 + (uint64_t)st.md.n_raw * 40 + (uint64_t)m->ckpt->n_tensors * 12;
    room = cap * 9 / 10 > fixed ? cap * 9 / 10 - fixed : 0;
    {
        /* the most rows any attempt below can keep (the exact share, or the 4-bit target) */
        bool q4;
        uint64_t bytes;
        size_t most = embed_plan(room, SIZE_MAX, st.embed_cols, version, &q4, &bytes);
        err = choose_candidates(&st, most > FP_EMBED_TARGET ? most : FP_EMBED_TARGET, version, diag);
    }
    if (err)
        goto out;
    /* Shrink until the compressed file is under the cap. The room estimate is conservative
     * (compression), so a first fit far under the cap gets one try with the room scaled up
     * toward it (more k/v rows and routers for T3); if that overshoots, the fit is rebuilt. */
    for (int attempt = 0, grew = 0; attempt < 14; attempt++) {
        if (fill_selected(fp, &st, room, ctx.seed, version) != CKS_OK) {
            err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
            goto out;
        }
        fp->bytes_read = st.bytes_read;
        free(enc);
        enc = NULL;
        err = cks_fingerprint_encode(fp, version, &enc, &enc_len, diag);
        if (err)
            goto out;
        if (enc_len <= cap && (grew || enc_len >= cap / 100 * 85 || enc_len == 0)) {
            break;
        } else if (enc_len <= cap) {
            fit_room = room;
            grew = 1;
            room = (uint64_t)((double)room * ((double)cap * 0.95 / (double)enc_len));
            continue;
        } else if (grew) {
            room = fit_room; /* the grown try overshot: the last fit again (deterministic) */
            continue;
        }
        room = room / 4 * 3;
        if (attempt >= 11) {
            err = cks_fail(diag, CKS_ERR_UNSUPPORTED,
                           "fingerprint: cannot fit under %llu bytes (the header summary alone is too large)",
                           (unsigned long long)cap);
            goto out;
        }
    }
    {
        size_t kr = 0, kt = 0, vr = 0, routers = 0;
        for (int l = 0; l < fp->n_layers; l++) {
            if (fp->layers[l].k.rows) {
                kr = fp->layers[l].k.rows;
                kt = fp->layers[l].k.total_rows;
            }
            if (fp->layers[l].v.rows)
                vr = fp->layers[l].v.rows;
            routers += fp->layers[l].router.v != NULL;
        }
        snprintf(fp->sampling, sizeof fp->sampling,
                 "seed %llu, budget %llu: %s; k %zu and v %zu of %zu rows per layer%s; routers of %zu layers%s; "
                 "embedding rows of %zu tokens (%s%s)",
                 (unsigned long long)ctx.seed, (unsigned long long)ctx.budget,
                 fp->full_coverage ? "every tensor hashed" : "tensors read whole hashed", kr, vr, kt,
                 fp->kv_subsampled ? " (subset of compare's sample: size cap)" : "", routers,
                 fp->routers_dropped ? " (others left out: size cap)" : "", fp->n_tokens,
                 fp->embed_all ? "every token" : "reference strings", fp->embed_q4 ? ", 4-bit per column" : "");
    }
    /* the decoded values are exact: rebuild the raw bytes T1 compares bitwise */
    fp_attach_raw(fp);
    *out = fp;
    fp = NULL;
out:
    free(enc);
    cmp_matrix_free(&st.cand_rows);
    free(st.cand_ids);
    cks_vocab_free(st.vocab);
    cmp_model_release(&st.md);
    cks_fingerprint_free(fp);
    return err;
}
