/*
 * fingerprint: encoding the versioned container (JSON metadata, a binary section, zstd).
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

/* ---- the binary section being written ---- */

typedef struct bbuf {
    uint8_t *p;
    size_t len, cap;
    bool failed;
} bbuf;

static uint8_t *bbuf_grow(bbuf *b, size_t n)
{
    uint8_t *at;
    if (b->failed)
        return NULL;
    if (n > SIZE_MAX - b->len) {
        b->failed = true;
        return NULL;
    }
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 65536;
        uint8_t *grown;
        while (cap < b->len + n)
            cap = cap > SIZE_MAX / 2 ? b->len + n : cap * 2;
        grown = realloc(b->p, cap);
        if (!grown) {
            b->failed = true;
            return NULL;
        }
        b->p = grown;
        b->cap = cap;
    }
    at = b->p + b->len;
    b->len += n;
    return at;
}

/* The reference to a run of the binary section. A reference that cannot be made marks the
 * section failed: the caller would otherwise write the object without its data and the
 * encoder would return a fingerprint that does not decode (found by tests/unit/test_oom.c). */
static cJSON *ref_json(bbuf *b, const char *enc, size_t off, size_t n)
{
    cJSON *o = cJSON_CreateObject();
    if (!o || !cJSON_AddStringToObject(o, "enc", enc) || !cJSON_AddNumberToObject(o, "off", (double)off) ||
        !cJSON_AddNumberToObject(o, "n", (double)n)) {
        cJSON_Delete(o);
        b->failed = true;
        return NULL;
    }
    return o;
}

/* Floats as bf16 when every value is exactly a bf16 (the usual case: weights stored as BF16),
 * else f32 (version 1 always f32): lossless either way, so statistics match a live run. */
static cJSON *put_floats(bbuf *b, const float *v, size_t n, uint32_t version)
{
    bool bf16 = version >= 2;
    size_t off = b->len;
    uint8_t *at;
    for (size_t i = 0; i < n && bf16; i++)
        bf16 = (fp_f32_bits(v[i]) & 0xFFFFu) == 0;
    if (n > SIZE_MAX / 4 || !(at = bbuf_grow(b, n * (bf16 ? 2 : 4))))
        return NULL;
    for (size_t i = 0; i < n; i++) {
        uint32_t u = fp_f32_bits(v[i]);
        if (bf16) {
            at[2 * i] = (uint8_t)(u >> 16);
            at[2 * i + 1] = (uint8_t)(u >> 24);
        } else {
            cks_put_le32(at + 4 * i, u);
        }
    }
    return ref_json(b, bf16 ? "bf16" : "f32", off, n);
}

static cJSON *put_doubles(bbuf *b, const double *v, size_t n, uint32_t version)
{
    bool exact = true;
    cJSON *ref = NULL;
    float *f;
    for (size_t i = 0; i < n && exact; i++)
        exact = (double)(float)v[i] == v[i] || isnan(v[i]);
    if (!exact) {
        size_t off = b->len;
        uint8_t *at;
        if (n > SIZE_MAX / 8 || !(at = bbuf_grow(b, n * 8)))
            return NULL;
        for (size_t i = 0; i < n; i++) {
            uint64_t u;
            memcpy(&u, &v[i], 8);
            cks_put_le64(at + 8 * i, u);
        }
        return ref_json(b, "f64", off, n);
    }
    f = malloc((n ? n : 1) * sizeof *f);
    if (!f) {
        b->failed = true;
        return NULL;
    }
    for (size_t i = 0; i < n; i++)
        f[i] = (float)v[i];
    ref = put_floats(b, f, n, version);
    free(f);
    return ref;
}

static cJSON *put_u32s(bbuf *b, const uint32_t *v, size_t n)
{
    size_t off = b->len;
    uint8_t *at;
    if (n > SIZE_MAX / 4 || !(at = bbuf_grow(b, n * 4)))
        return NULL;
    for (size_t i = 0; i < n; i++)
        cks_put_le32(at + 4 * i, v[i]);
    return ref_json(b, "u32", off, n);
}

/* `bytes` bytes already in their stored form, referred to as n elements of encoding enc */
static cJSON *put_raw(bbuf *b, const uint8_t *v, size_t bytes, const char *enc, size_t n)
{
    size_t off = b->len;
    uint8_t *at = bbuf_grow(b, bytes);
    if (!at && bytes)
        return NULL;
    if (bytes)
        memcpy(at, v, bytes);
    return ref_json(b, enc, off, n);
}

static cJSON *put_bytes(bbuf *b, const uint8_t *v, size_t n)
{
    return put_raw(b, v, n, "u8", n);
}

/* ---- encoding ---- */

static cJSON *rows_json(bbuf *b, const cks_fp_rows *r, const cks_ckpt_tensor *t, uint32_t version)
{
    cJSON *o = cJSON_CreateObject();
    if (t)
        cJSON_AddStringToObject(o, "tensor", t->info->name);
    cJSON_AddNumberToObject(o, "rows", (double)r->rows);
    cJSON_AddNumberToObject(o, "cols", (double)r->cols);
    cJSON_AddNumberToObject(o, "total_rows", (double)r->total_rows);
    if (r->ids)
        cJSON_AddItemToObject(o, "ids", put_u32s(b, r->ids, r->rows));
    cJSON_AddItemToObject(o, "data", put_floats(b, r->v, r->rows * r->cols, version));
    return o;
}

static cJSON *vector_json(bbuf *b, const double *v, size_t n, const cks_ckpt_tensor *t, uint32_t version)
{
    cJSON *o = cJSON_CreateObject();
    if (t)
        cJSON_AddStringToObject(o, "tensor", t->info->name);
    cJSON_AddItemToObject(o, "data", put_doubles(b, v, n, version));
    return o;
}

static cJSON *encode_json(const cks_fingerprint *fp, uint32_t version, bbuf *b)
{
    cJSON *root = cJSON_CreateObject(), *files, *hashes, *layers;
    char hex[65];
    cJSON_AddStringToObject(root, "format", "ckptscope-fingerprint");
    cJSON_AddNumberToObject(root, "version", version);
    cJSON_AddStringToObject(root, "tool", fp->tool ? fp->tool : "ckptscope");
    cJSON_AddStringToObject(root, "source", fp->source ? fp->source : "");
    cJSON_AddStringToObject(root, "repo", fp->repo ? fp->repo : "");
    cJSON_AddStringToObject(root, "revision", fp->revision ? fp->revision : "");
    cJSON_AddStringToObject(root, "commit", fp->commit ? fp->commit : "");
    cJSON_AddNumberToObject(root, "seed", (double)fp->seed);
    cJSON_AddNumberToObject(root, "budget", (double)fp->budget);
    cJSON_AddBoolToObject(root, "full_coverage", fp->full_coverage);
    cJSON_AddNumberToObject(root, "n_layers", fp->n_layers);
    cJSON_AddNumberToObject(root, "hidden", (double)fp->hidden);
    cJSON_AddNumberToObject(root, "bytes_read", (double)fp->bytes_read);
    cJSON_AddStringToObject(root, "sampling", fp->sampling);
    cJSON_AddBoolToObject(root, "kv_subsampled", fp->kv_subsampled);
    cJSON_AddNumberToObject(root, "routers_dropped", (double)fp->routers_dropped);
    if (fp->config_json)
        cJSON_AddStringToObject(root, "config_json", fp->config_json);
    files = cJSON_AddArrayToObject(root, "files");
    for (size_t i = 0; i < fp->n_files; i++) {
        const cks_st_header *h = fp->ckpt->files[i].header;
        cJSON *f = cJSON_CreateObject(), *tensors, *meta;
        cJSON_AddStringToObject(f, "path", fp->files[i].path);
        cJSON_AddNumberToObject(f, "size", (double)fp->files[i].size);
        cJSON_AddStringToObject(f, "sha256", fp->files[i].sha256);
        cJSON_AddNumberToObject(f, "header_len", (double)h->header_len);
        meta = cJSON_AddObjectToObject(f, "metadata");
        for (size_t k = 0; k < h->n_metadata; k++)
            cJSON_AddStringToObject(meta, h->metadata_keys[k], h->metadata_values[k]);
        tensors = cJSON_AddArrayToObject(f, "tensors");
        for (size_t t = 0; t < h->n_tensors; t++) {
            const cks_tensor_info *ti = &h->tensors[t];
            cJSON *e = cJSON_CreateArray(), *shape = cJSON_CreateArray();
            cJSON_AddItemToArray(e, cJSON_CreateString(ti->name));
            cJSON_AddItemToArray(e, cJSON_CreateString(cks_dtype_name(ti->dtype)));
            for (uint32_t d = 0; d < ti->ndim; d++)
                cJSON_AddItemToArray(shape, cJSON_CreateNumber((double)ti->shape[d]));
            cJSON_AddItemToArray(e, shape);
            cJSON_AddItemToArray(e, cJSON_CreateNumber((double)ti->begin));
            cJSON_AddItemToArray(e, cJSON_CreateNumber((double)ti->end));
            cJSON_AddItemToArray(tensors, e);
        }
        cJSON_AddItemToArray(files, f);
    }
    hashes = cJSON_AddArrayToObject(root, "hashes");
    for (size_t i = 0; i < fp->n_hashes; i++) {
        cJSON *e = cJSON_CreateArray();
        cks_hex_encode(fp->hashes[i].sha256, 32, hex);
        cJSON_AddItemToArray(e, cJSON_CreateString(fp->hashes[i].tensor->info->name));
        cJSON_AddItemToArray(e, cJSON_CreateString(hex));
        cJSON_AddItemToArray(e, cJSON_CreateBool(fp->hashes[i].low_information));
        cJSON_AddItemToArray(hashes, e);
    }
    layers = cJSON_AddArrayToObject(root, "layers");
    for (int l = 0; l < fp->n_layers && fp->layers; l++) {
        const cks_fp_layer *L = &fp->layers[l];
        cJSON *o = cJSON_CreateObject();
        if (L->attn_norm)
            cJSON_AddItemToObject(o, "attn_norm", vector_json(b, L->attn_norm, L->n_attn_norm, L->attn_norm_t, version));
        if (L->ffn_norm)
            cJSON_AddItemToObject(o, "ffn_norm", vector_json(b, L->ffn_norm, L->n_ffn_norm, L->ffn_norm_t, version));
        if (L->router_bias)
            cJSON_AddItemToObject(o, "router_bias",
                                  vector_json(b, L->router_bias, L->n_router_bias, L->router_bias_t, version));
        if (L->router.v)
            cJSON_AddItemToObject(o, "router", rows_json(b, &L->router, L->router_t, version));
        if (L->k.v)
            cJSON_AddItemToObject(o, "k", rows_json(b, &L->k, NULL, version));
        if (L->v.v)
            cJSON_AddItemToObject(o, "v", rows_json(b, &L->v, NULL, version));
        cJSON_AddItemToArray(layers, o);
    }
    if (fp->embed_cols) {
        cJSON *e = cJSON_AddObjectToObject(root, "embed");
        uint32_t *ids = malloc((fp->n_tokens ? fp->n_tokens : 1) * sizeof *ids);
        uint32_t *flags = malloc((fp->n_tokens ? fp->n_tokens : 1) * sizeof *flags);
        uint32_t *lens = malloc((fp->n_tokens ? fp->n_tokens : 1) * sizeof *lens);
        size_t text = 0;
        if (!ids || !flags || !lens) {
            b->failed = true;
        } else {
            for (size_t i = 0; i < fp->n_tokens; i++) {
                ids[i] = fp->tokens[i].id;
                flags[i] = fp->tokens[i].flags;
                lens[i] = fp->tokens[i].len;
                text += fp->tokens[i].len;
            }
            cJSON_AddNumberToObject(e, "rows_total", (double)fp->embed_rows_total);
            cJSON_AddNumberToObject(e, "cols", (double)fp->embed_cols);
            cJSON_AddNumberToObject(e, "elem_bytes", (double)fp->embed_elem_bytes);
            cJSON_AddBoolToObject(e, "all_tokens", fp->embed_all);
            cJSON_AddNumberToObject(e, "vocab_size", (double)fp->vocab_size);
            cJSON_AddItemToObject(e, "ids", put_u32s(b, ids, fp->n_tokens));
            if (version >= 2)
                cJSON_AddItemToObject(e, "flags", put_u32s(b, flags, fp->n_tokens));
            cJSON_AddItemToObject(e, "lens", put_u32s(b, lens, fp->n_tokens));
            cJSON_AddItemToObject(e, "text", put_bytes(b, fp->text_pool, text));
            if (fp->embed_q4 && version >= 3) {
                cJSON_AddStringToObject(e, "quant", "q4");
                cJSON_AddItemToObject(e, "q_offset", put_floats(b, fp->embed_qoff, fp->embed_cols, version));
                cJSON_AddItemToObject(e, "q_step", put_floats(b, fp->embed_qstep, fp->embed_cols, version));
                cJSON_AddItemToObject(e, "data", put_raw(b, fp->embed_codes, fp_q4_bytes(fp->n_tokens * fp->embed_cols),
                                                         "q4", fp->n_tokens * fp->embed_cols));
            } else { /* older versions store a 4-bit fingerprint's decoded values */
                cJSON_AddItemToObject(e, "data",
                                      put_floats(b, fp->embed, fp->n_tokens * fp->embed_cols, version));
            }
        }
        free(ids);
        free(flags);
        free(lens);
    }
    return root;
}

cks_err cks_fingerprint_encode(const cks_fingerprint *fp, uint32_t version, uint8_t **out, size_t *len,
                               cks_diag *diag)
{
    cks_err err = CKS_OK;
    bbuf b = {0};
    cJSON *root = NULL;
    char *json = NULL;
    uint8_t *payload = NULL, *file = NULL;
    size_t json_len, payload_len, bound, zlen;

    *out = NULL;
    *len = 0;
    if (version == 0)
        version = CKS_FP_VERSION;
    if (version < CKS_FP_MIN_VERSION || version > CKS_FP_VERSION)
        return cks_fail(diag, CKS_ERR_INVALID_ARG, "fingerprint: cannot write version %u", version);
    root = encode_json(fp, version, &b);
    json = root ? cJSON_PrintUnformatted(root) : NULL;
    if (!json || b.failed) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory encoding the fingerprint");
        goto out;
    }
    json_len = strlen(json);
    if (json_len > UINT32_MAX || b.len > SIZE_MAX - json_len - 4) {
        err = cks_fail(diag, CKS_ERR_UNSUPPORTED, "fingerprint: metadata too large");
        goto out;
    }
    payload_len = 4 + json_len + b.len;
    payload = malloc(payload_len);
    bound = ZSTD_compressBound(payload_len);
    file = malloc(FP_HEAD_LEN + bound);
    if (!payload || !file) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory encoding the fingerprint");
        goto out;
    }
    cks_put_le32(payload, (uint32_t)json_len);
    memcpy(payload + 4, json, json_len);
    if (b.len)
        memcpy(payload + 4 + json_len, b.p, b.len);
    memcpy(file, CKS_FP_MAGIC, CKS_FP_MAGIC_LEN);
    cks_put_le32(file + 8, version);
    cks_put_le64(file + 12, payload_len);
    zlen = ZSTD_compress(file + FP_HEAD_LEN, bound, payload, payload_len,
                         payload_len < FP_ZSTD_LARGE ? FP_ZSTD_LEVEL_SMALL : FP_ZSTD_LEVEL_LARGE);
    if (ZSTD_isError(zlen)) {
        err = cks_fail(diag, CKS_ERR_NUMERIC, "fingerprint: zstd: %s", ZSTD_getErrorName(zlen));
        goto out;
    }
    *out = file;
    *len = FP_HEAD_LEN + zlen;
    file = NULL;
out:
    cJSON_Delete(root);
    free(json);
    free(b.p);
    free(payload);
    free(file);
    return err;
}
