/*
 * compare: reading and decoding what the tests need, under a byte budget.
 *
 * Every read is planned first and handed to the sources' prefetch (a remote source then
 * fetches all ranges of a stage at once, coalesced and in parallel), then read through the
 * one read_at interface. Large matrices are sampled by blocks of consecutive rows (a row of
 * a row-major [out, in] tensor is contiguous, so a block is one range), chosen from the seed
 * and the row count only, so two models with the same shape get the same rows.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/evp.h>

#include "ckptscope/adapter.h"
#include "ckptscope/decode.h"
#include "ckptscope/hash.h"
#include "ckptscope/stats.h"
#include "ckptscope/tokenizer.h"
#include "compare_internal.h"

#define MAX_PLAN 65536u
/*
 * Memory bounds (peak under 512 MiB whatever the model size, both models and the tests'
 * temporaries included): the byte budget limits the wire, these limit what is decoded.
 */
#define RAW_KEEP_MAX (4u << 20)       /* raw bytes kept for bit-equality only up to this */
#define BIG_MODEL_BYTES (64ull << 20)   /* a quarter of the largest checkpoint read whole */
#define RAW_KEEP_BIG_MODEL (256u << 10) /* the same for models over 64 MiB: norms and biases */
#define ROUTER_FLOAT_CAP (8ull << 20)  /* decoded router rows, all layers */

/* ---- planned reads ---- */

typedef struct read_plan {
    size_t n;
    struct {
        cks_source *src;
        cks_range range;
    } items[MAX_PLAN];
} read_plan;

static void plan_add(read_plan *p, const cks_ckpt *ckpt, const cks_ckpt_tensor *t, uint64_t offset, uint64_t len)
{
    if (p->n == MAX_PLAN || len == 0)
        return; /* prefetch is an optimisation: reads still work without it */
    p->items[p->n].src = ckpt->files[t->file].source;
    p->items[p->n].range.offset = t->info->file_offset + offset;
    p->items[p->n].range.length = len;
    p->n++;
}

static cks_err plan_run(read_plan *p, cks_diag *diag)
{
    cks_err err = CKS_OK;
    cks_source **srcs = malloc((p->n ? p->n : 1) * sizeof *srcs);
    cks_range *ranges = malloc((p->n ? p->n : 1) * sizeof *ranges);
    if (!srcs || !ranges) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory planning reads");
        goto out;
    }
    for (size_t i = 0; i < p->n; i++) {
        srcs[i] = p->items[i].src;
        ranges[i] = p->items[i].range;
    }
    /* every shard of a stage at once: one parallel round, not one round trip per shard */
    err = cks_source_prefetch_many(srcs, ranges, p->n, diag);
out:
    free(srcs);
    free(ranges);
    p->n = 0;
    return err;
}

/* ---- decoding helpers ---- */

static uint64_t tensor_bytes(const cks_ckpt_tensor *t)
{
    return t->info->end - t->info->begin;
}

static cks_err read_whole(const cks_ckpt *ckpt, const cks_ckpt_tensor *t, uint8_t **out, cks_diag *diag)
{
    uint64_t len = tensor_bytes(t);
    cks_err err;
    *out = NULL;
    if (len > (uint64_t)SIZE_MAX / 2)
        return cks_fail(diag, CKS_ERR_UNSUPPORTED, "tensor %s is too large to read whole", t->info->name);
    *out = malloc(len ? (size_t)len : 1);
    if (!*out)
        return cks_fail(diag, CKS_ERR_NOMEM, "out of memory reading %s (%llu bytes)", t->info->name,
                        (unsigned long long)len);
    err = cks_ckpt_read_tensor(ckpt, t, 0, *out, (size_t)len, diag);
    if (err) {
        free(*out);
        *out = NULL;
    }
    return err;
}

static cmp_raw *raw_find(cmp_model *md, const cks_ckpt_tensor *t)
{
    for (size_t i = 0; i < md->n_raw; i++)
        if (md->raw[i].tensor == t)
            return &md->raw[i];
    return NULL;
}

/* Few distinct element values (constants, ones-initialised norms): never evidence. */
static bool low_information(const cks_ckpt_tensor *t, const uint8_t *bytes)
{
    size_t esize = cks_dtype_bits(t->info->dtype) / 8, n = (size_t)t->info->nelements, probe, distinct = 0;
    uint64_t seen[64];
    if (esize == 0 || n < 64)
        return true;
    probe = n < 4096 ? n : 4096;
    for (size_t i = 0; i < probe && distinct <= 16; i++) {
        uint64_t v = 0;
        bool known = false;
        memcpy(&v, bytes + i * esize, esize > 8 ? 8 : esize);
        for (size_t k = 0; k < distinct && !known; k++)
            known = seen[k] == v;
        if (!known && distinct < 64)
            seen[distinct++] = v;
    }
    return distinct <= 16;
}

/* Free a tensor's raw bytes when it is too large for bit-equality or the generic test to use
 * them (its hash stays for T1). */
static void raw_drop_big(cmp_raw *r, uint64_t model_bytes)
{
    if (r && r->len > (model_bytes > BIG_MODEL_BYTES ? RAW_KEEP_BIG_MODEL : RAW_KEEP_MAX)) {
        free(r->bytes);
        r->bytes = NULL;
    }
}

/* Read a tensor whole into the raw list (once), hash it. */
static cks_err raw_load(cmp_model *md, const cks_tensor_role *tr, cmp_raw **out, uint64_t *counter, cks_diag *diag)
{
    cks_err err;
    cmp_raw *r = raw_find(md, tr->tensor);
    *out = NULL;
    if (r && !r->bytes) {
        /* read before and its bytes let go (raw_drop_big): read them again */
        err = read_whole(md->m->ckpt, tr->tensor, &r->bytes, diag);
        if (err)
            return err;
    }
    if (r) {
        /* already read (a small model is read whole first): count it for the test using it */
        if (counter != &md->bytes_other)
            *counter += r->len;
        *out = r;
        return CKS_OK;
    }
    if (md->n_raw == md->cap_raw) {
        size_t cap = md->cap_raw ? md->cap_raw * 2 : 64;
        cmp_raw *grown = realloc(md->raw, cap * sizeof *grown);
        if (!grown)
            return cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        md->raw = grown;
        md->cap_raw = cap;
    }
    r = &md->raw[md->n_raw];
    memset(r, 0, sizeof *r);
    r->tensor = tr->tensor;
    r->role = tr->role;
    r->part = tr->part;
    r->layer = tr->layer;
    r->expert = tr->expert;
    err = read_whole(md->m->ckpt, tr->tensor, &r->bytes, diag);
    if (err)
        return err;
    r->len = (size_t)tensor_bytes(tr->tensor);
    {
        unsigned int dlen = 0;
        EVP_Digest(r->bytes, r->len, r->sha256, &dlen, EVP_sha256(), NULL);
    }
    r->low_information = low_information(tr->tensor, r->bytes);
    md->n_raw++;
    *counter += r->len;
    *out = r;
    return CKS_OK;
}

static cks_err decode_vector(const cmp_raw *r, double **out, size_t *n, cks_diag *diag)
{
    cks_err err;
    size_t count = (size_t)r->tensor->info->nelements;
    *out = NULL;
    *n = 0;
    if (!cks_decode_supported(r->tensor->info->dtype))
        return CKS_OK;
    *out = malloc((count ? count : 1) * sizeof **out);
    if (!*out)
        return cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
    err = cks_decode_f64(r->tensor->info->dtype, r->bytes, count, *out, NULL, diag);
    if (err) {
        free(*out);
        *out = NULL;
        return err;
    }
    *n = count;
    return CKS_OK;
}

/* Output units (rows in [out, in] terms) and input width of a role's matrix. */
static void matrix_dims(const cks_tensor_role *tr, const cks_fused_slice *slice, size_t *rows, size_t *cols)
{
    const cks_tensor_info *info = tr->tensor->info;
    size_t d0 = info->ndim >= 1 ? (size_t)info->shape[0] : 0, d1 = info->ndim >= 2 ? (size_t)info->shape[1] : 1;
    if (tr->transposed) {
        *rows = slice ? (size_t)slice->count : d1;
        *cols = d0;
    } else {
        *rows = slice && tr->split.axis == 0 ? (size_t)slice->count : d0;
        *cols = slice && tr->split.axis == 1 ? (size_t)slice->count : d1;
    }
}

/*
 * Decode rows `rows[0..n)` (output units) of a role's matrix into out (n x cols, float).
 * Untransposed, unfused-on-axis-1 tensors read just those rows; anything else reads whole.
 */
static cks_err load_rows(cmp_model *md, const cks_tensor_role *tr, const cks_fused_slice *slice, const uint32_t *rows,
                         size_t n, cmp_matrix *out, uint64_t *counter, cks_diag *diag)
{
    cks_err err = CKS_OK;
    const cks_tensor_info *info = tr->tensor->info;
    size_t total_rows, cols, esize = cks_decode_elem_size(info->dtype);
    uint8_t *buf = NULL;

    memset(out, 0, sizeof *out);
    if (!esize || info->ndim != 2)
        return CKS_OK; /* not a decodable matrix: the tests skip it */
    matrix_dims(tr, slice, &total_rows, &cols);
    out->v = malloc((n ? n : 1) * cols * sizeof(float));
    if (!out->v)
        return cks_fail(diag, CKS_ERR_NOMEM, "out of memory for %zu rows of %s", n, info->name);
    out->rows = n;
    out->cols = cols;
    if (!tr->transposed && !(slice && tr->split.axis == 1)) {
        size_t row_bytes = cols * esize, first = slice ? (size_t)slice->begin : 0;
        buf = malloc(row_bytes * CMP_ROW_BLOCK);
        if (!buf) {
            err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
            goto out;
        }
        for (size_t i = 0; i < n;) {
            size_t run = 1;
            while (i + run < n && run < CMP_ROW_BLOCK && rows[i + run] == rows[i] + run)
                run++;
            err = cks_ckpt_read_tensor(md->m->ckpt, tr->tensor, (uint64_t)(first + rows[i]) * row_bytes, buf,
                                       run * row_bytes, diag);
            if (!err)
                err = cks_decode_f32(info->dtype, buf, run * cols, out->v + i * cols, NULL, diag);
            if (err)
                goto out;
            *counter += run * row_bytes;
            i += run;
        }
    } else {
        cmp_raw *raw = NULL;
        size_t d0 = (size_t)info->shape[0], d1 = (size_t)info->shape[1];
        float *all = malloc(d0 * d1 * sizeof *all);
        if (!all) {
            err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
            goto out;
        }
        err = raw_load(md, tr, &raw, counter, diag);
        if (!err)
            err = cks_decode_f32(info->dtype, raw->bytes, d0 * d1, all, NULL, diag);
        if (!err) {
            size_t off = slice ? (size_t)slice->begin : 0;
            for (size_t i = 0; i < n; i++)
                for (size_t c = 0; c < cols; c++) {
                    size_t unit = off + rows[i];
                    /* transposed: stored [in, out]; fused on axis 1 untransposed: [out, in-slices] */
                    out->v[i * cols + c] = tr->transposed ? all[c * d1 + unit] : all[rows[i] * d1 + off + c];
                }
        }
        free(all);
    }
out:
    free(buf);
    if (err)
        cmp_matrix_free(out);
    return err;
}

static const cks_tensor_role *find_weight(const cks_roles *roles, cks_role role, int layer,
                                          const cks_fused_slice **slice)
{
    *slice = NULL;
    return cks_roles_locate(roles, role, CKS_PART_WEIGHT, layer, -1, slice);
}

static size_t infer_hidden(const cmp_model *md)
{
    const cks_tensor_role *tr;
    const cks_fused_slice *slice;
    if (md->roles->cfg.hidden_size > 0)
        return (size_t)md->roles->cfg.hidden_size;
    tr = find_weight(md->roles, CKS_ROLE_EMBED, -1, &slice);
    if (tr && tr->tensor->info->ndim == 2)
        return (size_t)tr->tensor->info->shape[1];
    tr = find_weight(md->roles, CKS_ROLE_ATTN_NORM, 0, &slice);
    if (tr && tr->tensor->info->ndim == 1)
        return (size_t)tr->tensor->info->shape[0];
    return 0;
}

/* Plan rows[0..n) of a role's matrix (when stored row by row: else it is read whole). */
static void plan_rows(read_plan *plan, const cmp_model *md, const cks_tensor_role *tr, const cks_fused_slice *slice,
                      const uint32_t *rows, size_t n)
{
    size_t total, cols, esize = cks_decode_elem_size(tr->tensor->info->dtype);
    if (tr->transposed || (slice && tr->split.axis == 1) || !esize)
        return;
    matrix_dims(tr, slice, &total, &cols);
    size_t first = slice ? (size_t)slice->begin : 0;
    for (size_t i = 0; i < n; i++)
        if (rows[i] < total)
            plan_add(plan, md->m->ckpt, tr->tensor, (uint64_t)(first + rows[i]) * cols * esize, (uint64_t)cols * esize);
}

static cks_err live_load(const cmp_ctx *ctx, const cks_compare_model *m, cmp_model *md, cks_diag *diag)
{
    cks_err err = CKS_OK;
    const cks_ckpt *ckpt = m->ckpt;
    uint64_t total = 0, used = 0;
    read_plan *plan = NULL;
    uint32_t *rows = NULL;
    int *last_layer = NULL; /* per file: the last layer whose k/v rows it holds (-1: none) */
    size_t n_rows = 0;
    unsigned tests = ctx->opts && ctx->opts->tests ? ctx->opts->tests : CKS_TEST_ALL;
    /* read only what the selected tests use: norms for T2/T4, routers and k/v for T3/T4 */
    bool want_norms = tests & (CKS_TEST_T2 | CKS_TEST_T4), want_weights = tests & (CKS_TEST_T3 | CKS_TEST_T4);

    memset(md, 0, sizeof *md);
    md->m = m;
    err = cks_roles_build(ckpt, m->config_json, m->config_len, &md->roles, diag);
    if (err)
        goto out;
    md->n_layers = md->roles->n_layers;
    md->hidden = infer_hidden(md);
    for (size_t i = 0; i < ckpt->n_tensors; i++)
        total += tensor_bytes(&ckpt->tensors[i]);
    plan = malloc(sizeof *plan);
    if (!plan) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        goto out;
    }
    plan->n = 0;

    /* Small enough: read and hash everything, so T1 can say "identical" for certain. */
    if (cmp_budget_read_whole(ctx->budget, total, tests & CKS_TEST_T1)) {
        for (size_t i = 0; i < ckpt->n_tensors; i++)
            plan_add(plan, ckpt, &ckpt->tensors[i], 0, tensor_bytes(&ckpt->tensors[i]));
        err = plan_run(plan, diag);
        for (size_t i = 0; i < md->roles->n && !err; i++) {
            cmp_raw *r;
            err = raw_load(md, &md->roles->entries[i], &r, &md->bytes_other, diag);
        }
        if (err)
            goto out;
        md->full_coverage = true;
        used = total;
    }
    if (md->n_layers <= 0) {
        md->known_arch = false;
        goto out;
    }
    md->layers = calloc((size_t)md->n_layers, sizeof *md->layers);
    if (!md->layers) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        goto out;
    }
    /* Norms, routers and router biases: small, read whole. */
    {
        static const cks_role whole_roles[] = {CKS_ROLE_ATTN_NORM, CKS_ROLE_FFN_NORM, CKS_ROLE_ROUTER,
                                               CKS_ROLE_ROUTER_BIAS};
        uint64_t small = 0;
        for (int l = 0; l < md->n_layers; l++)
            for (size_t r = 0; r < sizeof whole_roles / sizeof whole_roles[0]; r++) {
                const cks_fused_slice *slice;
                const cks_tensor_role *tr = whole_roles[r] == CKS_ROLE_ROUTER_BIAS
                                                ? cks_roles_find(md->roles, CKS_ROLE_ROUTER_BIAS, CKS_PART_WEIGHT, l, -1)
                                                : find_weight(md->roles, whole_roles[r], l, &slice);
                if (!tr && whole_roles[r] == CKS_ROLE_ROUTER_BIAS)
                    tr = cks_roles_find(md->roles, CKS_ROLE_ROUTER_BIAS, CKS_PART_BIAS, l, -1);
                if (!tr || tr->fused)
                    continue;
                if ((r < 2 && !want_norms) || (r >= 2 && !want_weights))
                    continue;
                /* routers only while they fit in half the budget */
                if (whole_roles[r] == CKS_ROLE_ROUTER && small + tensor_bytes(tr->tensor) > cmp_budget_whole_reads(ctx->budget))
                    continue;
                small += tensor_bytes(tr->tensor);
                if (!raw_find(md, tr->tensor))
                    plan_add(plan, ckpt, tr->tensor, 0, tensor_bytes(tr->tensor));
            }
        err = plan_run(plan, diag);
        if (err)
            goto out;
        int router_stride = 1;
        {
            /* keep the decoded routers under their cap: every k-th layer when they are many */
            const cks_fused_slice *sl;
            for (int l = 0; l < md->n_layers; l++) {
                const cks_tensor_role *rt = find_weight(md->roles, CKS_ROLE_ROUTER, l, &sl);
                if (rt && rt->tensor->info->ndim == 2) {
                    uint64_t one = rt->tensor->info->nelements * sizeof(float), all = one * (uint64_t)md->n_layers;
                    while (all / (uint64_t)router_stride > ROUTER_FLOAT_CAP && router_stride < md->n_layers)
                        router_stride++;
                    break;
                }
            }
        }
        for (int l = 0; l < md->n_layers && !err; l++) {
            cmp_layer *L = &md->layers[l];
            const cks_fused_slice *slice;
            const cks_tensor_role *tr;
            cmp_raw *raw;
            size_t n;
            tr = want_norms ? find_weight(md->roles, CKS_ROLE_ATTN_NORM, l, &slice) : NULL;
            if (tr && !tr->fused && tr->tensor->info->nelements == md->hidden) {
                err = raw_load(md, tr, &raw, &md->bytes_norms, diag);
                if (!err)
                    err = decode_vector(raw, &L->attn_norm, &n, diag);
            }
            tr = want_norms ? find_weight(md->roles, CKS_ROLE_FFN_NORM, l, &slice) : NULL;
            if (!err && tr && !tr->fused && tr->tensor->info->nelements == md->hidden) {
                err = raw_load(md, tr, &raw, &md->bytes_norms, diag);
                if (!err)
                    err = decode_vector(raw, &L->ffn_norm, &n, diag);
            }
            tr = want_weights && l % router_stride == 0 ? find_weight(md->roles, CKS_ROLE_ROUTER, l, &slice) : NULL;
            if (!err && tr && !tr->fused && tr->tensor->info->ndim == 2 && tr->tensor->info->shape[1] == md->hidden &&
                tensor_bytes(tr->tensor) <= cmp_budget_whole_reads(ctx->budget)) {
                size_t experts = (size_t)tr->tensor->info->shape[0];
                uint32_t *all = malloc(experts * sizeof *all);
                if (!all) {
                    err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
                    break;
                }
                for (size_t e = 0; e < experts; e++)
                    all[e] = (uint32_t)e;
                err = raw_load(md, tr, &raw, &md->bytes_router, diag);
                if (!err)
                    err = load_rows(md, tr, NULL, all, experts, &L->router, &md->bytes_router, diag);
                free(all);
                /* decoded now: its raw bytes go at once, not at the end of the load (GLM-4.5-Air's
                 * 46 routers are 92 MB raw, all held until the last layer was read) */
                if (!err)
                    raw_drop_big(raw, total);
            }
            tr = cks_roles_find(md->roles, CKS_ROLE_ROUTER_BIAS, CKS_PART_WEIGHT, l, -1);
            if (!tr)
                tr = cks_roles_find(md->roles, CKS_ROLE_ROUTER_BIAS, CKS_PART_BIAS, l, -1);
            if (!err && tr && want_weights) {
                err = raw_load(md, tr, &raw, &md->bytes_router, diag);
                if (!err)
                    err = decode_vector(raw, &L->router_bias, &L->n_router_bias, diag);
            }
        }
        if (err)
            goto out;
        used += md->full_coverage ? 0 : md->bytes_norms + md->bytes_router;
    }
    /* k and v: sampled row blocks with what the budget leaves (a quarter is kept for embeddings). */
    {
        size_t max_rows = 0;
        for (int l = 0; l < md->n_layers; l++) {
            static const cks_role kv[2] = {CKS_ROLE_K, CKS_ROLE_V};
            for (int w = 0; w < 2; w++) {
                const cks_fused_slice *slice;
                const cks_tensor_role *tr = find_weight(md->roles, kv[w], l, &slice);
                size_t r, c;
                if (!tr)
                    continue;
                matrix_dims(tr, slice, &r, &c);
                if (r > max_rows)
                    max_rows = r;
            }
        }
        if (max_rows > 0 && md->hidden > 0 && want_weights) {
            n_rows = cmp_budget_kv_rows(ctx->budget, used, md->n_layers, md->hidden, max_rows, md->full_coverage);
            rows = malloc((max_rows ? max_rows : 1) * sizeof *rows);
            last_layer = malloc((ckpt->n_files ? ckpt->n_files : 1) * sizeof *last_layer);
            if (!rows || !last_layer) {
                err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
                goto out;
            }
            for (size_t f = 0; f < ckpt->n_files; f++)
                last_layer[f] = -1;
        }
        for (int pass = 0; pass < 2 && n_rows > 0; pass++) {
            for (int l = 0; l < md->n_layers && !err; l++) {
                static const cks_role kv[2] = {CKS_ROLE_K, CKS_ROLE_V};
                for (int w = 0; w < 2 && !err; w++) {
                    const cks_fused_slice *slice;
                    const cks_tensor_role *tr = find_weight(md->roles, kv[w], l, &slice);
                    size_t r, c, got;
                    if (!tr)
                        continue;
                    matrix_dims(tr, slice, &r, &c);
                    if (c != md->hidden)
                        continue;
                    got = cmp_sample_rows(ctx->seed, r, n_rows < r ? n_rows : r, rows);
                    if (pass == 0) {
                        /* plan the row blocks so a remote source fetches them together */
                        size_t esize = cks_decode_elem_size(tr->tensor->info->dtype);
                        size_t first = slice && tr->split.axis == 0 ? (size_t)slice->begin : 0;
                        if (tr->transposed || (slice && tr->split.axis == 1) || !esize)
                            continue;
                        for (size_t i = 0; i < got;) {
                            size_t run = 1;
                            while (i + run < got && rows[i + run] == rows[i] + run)
                                run++;
                            plan_add(plan, ckpt, tr->tensor, (uint64_t)(first + rows[i]) * c * esize,
                                     (uint64_t)run * c * esize);
                            i += run;
                        }
                        if (tr->tensor->file < ckpt->n_files && last_layer[tr->tensor->file] < l)
                            last_layer[tr->tensor->file] = l;
                        continue;
                    }
                    if (w == 0) {
                        md->layers[l].k_total_rows = r;
                        err = load_rows(md, tr, slice, rows, got, &md->layers[l].k, &md->bytes_weights, diag);
                    } else {
                        md->layers[l].v_total_rows = r;
                        err = load_rows(md, tr, slice, rows, got, &md->layers[l].v, &md->bytes_weights, diag);
                    }
                }
                /* a shard whose last sampled rows are decoded lets its copies go now rather than
                 * after the last layer: the raw rows of every layer were held with the decoded
                 * ones (the bench pair's load held ~140 MiB of them, its peak) */
                for (size_t f = 0; pass == 1 && f < ckpt->n_files; f++)
                    if (last_layer[f] == l)
                        cks_source_trim(ckpt->files[f].source);
            }
            if (pass == 0)
                err = plan_run(plan, diag);
            if (err)
                goto out;
        }
    }
    md->known_arch = md->hidden > 0;
    /* everything this model's tests use is decoded now: a remote source's copies can go */
    for (size_t f = 0; f < ckpt->n_files; f++)
        cks_source_trim(ckpt->files[f].source);
    /* The shared-token embedding rows, when they were chosen while this model loaded
     * (compare.c): fetched now, on this model's own thread, instead of in a round after both
     * loads, and kept until the pair reads them (cmp_embed_pair_load trims them then). After
     * the k/v rows' copies went, so that the two are not held at once. Fetched together with
     * this round's first whole-tensor reads instead, they did not finish sooner (their many
     * small requests wait on round trips either way) and the peak grew by 30 MB. */
    {
        size_t n_embed = 0;
        const uint32_t *embed_rows = cmp_embed_early_rows(ctx, m, &n_embed);
        const cks_fused_slice *eslice;
        const cks_tensor_role *etr = n_embed ? find_weight(md->roles, CKS_ROLE_EMBED, -1, &eslice) : NULL;
        if (etr && etr->tensor->info->ndim == 2 && cks_decode_supported(etr->tensor->info->dtype)) {
            plan_rows(plan, md, etr, eslice, embed_rows, n_embed);
            err = plan_run(plan, diag);
            if (err)
                goto out;
        }
    }
    /* raw bytes only where bit-equality or the generic test can use them (small tensors) */
    for (size_t i = 0; i < md->n_raw; i++)
        raw_drop_big(&md->raw[i], total);
out:
    if (md->full_coverage)
        md->bytes_other = total; /* read once up front; the per-test counts say what each used */
    free(rows);
    free(last_layer);
    free(plan);
    return err;
}

void cmp_role_dims(const cmp_model *md, cks_role role, size_t *rows, size_t *cols, size_t *elem_bytes)
{
    const cks_fused_slice *slice;
    const cks_tensor_role *tr = md->roles ? find_weight(md->roles, role, -1, &slice) : NULL;
    *rows = *cols = *elem_bytes = 0;
    if (!tr || tr->tensor->info->ndim != 2 || !cks_decode_supported(tr->tensor->info->dtype))
        return;
    matrix_dims(tr, slice, rows, cols);
    *elem_bytes = cks_decode_elem_size(tr->tensor->info->dtype);
}

static cks_err live_role_rows(cmp_model *md, cks_role role, const uint32_t *rows, size_t n, cmp_matrix *out,
                              uint64_t *counter, cks_diag *diag)
{
    cks_err err;
    const cks_fused_slice *slice;
    const cks_tensor_role *tr = md->roles ? find_weight(md->roles, role, -1, &slice) : NULL;
    read_plan *plan = NULL;
    size_t total, cols;

    memset(out, 0, sizeof *out);
    if (!tr || tr->tensor->info->ndim != 2 || !cks_decode_supported(tr->tensor->info->dtype))
        return CKS_OK;
    matrix_dims(tr, slice, &total, &cols);
    for (size_t i = 0; i < n; i++)
        if (rows[i] >= total)
            return cks_fail(diag, CKS_ERR_INVALID_ARG, "row %u beyond the %zu rows of %s", rows[i], total,
                            tr->tensor->info->name);
    plan = malloc(sizeof *plan);
    if (!plan)
        return cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
    plan->n = 0;
    plan_rows(plan, md, tr, slice, rows, n);
    err = plan_run(plan, diag);
    free(plan);
    if (err)
        return err;
    return load_rows(md, tr, slice, rows, n, out, counter, diag);
}

/* The tokens of the checkpoint's tokenizer.json (T3/T4's shared rows). */
static cks_err live_vocab(const cks_compare_model *m, cks_vocab **out, char *note, size_t note_size)
{
    cks_diag d;
    cks_err err;
    *out = NULL;
    if (!m->tokenizer_json) {
        snprintf(note, note_size, "%s has no tokenizer.json", m->label);
        err = CKS_ERR_NOT_FOUND;
        goto out;
    }
    err = cks_vocab_parse(m->tokenizer_json, m->tokenizer_len, out, &d);
    if (err)
        snprintf(note, note_size, "tokenizer.json of %s is unusable: %.100s", m->label, d.text);
out:
    return err;
}

const cmp_loader cmp_live_loader = {
    .kind = "checkpoint",
    .reads_bytes = true,
    .load = live_load,
    .role_rows = live_role_rows,
    .vocab = live_vocab,
    .reconcile = NULL,
};
