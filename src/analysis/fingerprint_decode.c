/*
 * fingerprint: decoding the container, as untrusted input: every length, count and offset is
 * checked before use (the fuzz target tests/fuzz/fuzz_fingerprint.c drives this file).
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

/* ---- decoding (untrusted input) ---- */

typedef struct dec {
    const uint8_t *bin;
    size_t bin_len;
    uint32_t version;
    cks_diag *diag;
} dec;

static cks_err bad(dec *d, const char *what)
{
    return cks_fail(d->diag, FP_BAD, "fingerprint: %s", what);
}

static bool json_uint(const cJSON *o, const char *key, uint64_t max, uint64_t *out)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!cJSON_IsNumber(v) || !(v->valuedouble >= 0) || v->valuedouble > FP_MAX_JSON_INT ||
        v->valuedouble != floor(v->valuedouble) || v->valuedouble > (double)max)
        return false;
    *out = (uint64_t)v->valuedouble;
    return true;
}

static bool item_uint(const cJSON *v, uint64_t *out)
{
    if (!cJSON_IsNumber(v) || !(v->valuedouble >= 0) || v->valuedouble > FP_MAX_JSON_INT ||
        v->valuedouble != floor(v->valuedouble))
        return false;
    *out = (uint64_t)v->valuedouble;
    return true;
}

static const char *json_str(const cJSON *o, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* An array reference: its encoding, element count `n` (must equal `want` unless want is
 * SIZE_MAX) and the bytes it spans inside the binary section. */
static cks_err get_ref(dec *d, const cJSON *o, const char *key, size_t want, const char **enc, const uint8_t **p,
                       size_t *n)
{
    const cJSON *r = cJSON_GetObjectItemCaseSensitive(o, key);
    const char *e = r ? json_str(r, "enc") : NULL;
    uint64_t off, count, esize, bytes = 0;
    if (!e || !json_uint(r, "off", UINT64_MAX, &off) || !json_uint(r, "n", UINT64_MAX, &count))
        return bad(d, "an array reference is malformed");
    if (strcmp(e, "f32") == 0 || strcmp(e, "u32") == 0)
        esize = 4;
    else if (strcmp(e, "bf16") == 0)
        esize = 2;
    else if (strcmp(e, "f64") == 0)
        esize = 8;
    else if (strcmp(e, "u8") == 0)
        esize = 1;
    else if (strcmp(e, "q4") == 0 && d->version >= 3)
        esize = 0; /* two per byte */
    else
        return bad(d, "an array has an unknown encoding");
    if (esize == 0)
        bytes = count / 2 + count % 2; /* q4_bytes, in 64 bits */
    if ((esize && !fp_mul_ok(count, esize, &bytes)) || off > d->bin_len || bytes > d->bin_len - off)
        return bad(d, "an array reaches beyond the binary section");
    if (want != SIZE_MAX && count != want)
        return bad(d, "an array has the wrong length");
    *enc = e;
    *p = d->bin + off;
    *n = (size_t)count;
    return CKS_OK;
}

static cks_err get_floats(dec *d, const cJSON *o, const char *key, size_t want, float **out)
{
    const char *e;
    const uint8_t *p;
    size_t n;
    cks_err err = get_ref(d, o, key, want, &e, &p, &n);
    *out = NULL;
    if (err)
        return err;
    *out = malloc((n ? n : 1) * sizeof **out);
    if (!*out)
        return cks_fail(d->diag, CKS_ERR_NOMEM, "out of memory");
    for (size_t i = 0; i < n; i++) {
        if (strcmp(e, "bf16") == 0)
            (*out)[i] = fp_bits_f32((uint32_t)(p[2 * i] | p[2 * i + 1] << 8) << 16);
        else if (strcmp(e, "f32") == 0)
            (*out)[i] = fp_bits_f32(cks_get_le32(p + 4 * i));
        else {
            free(*out);
            *out = NULL;
            return bad(d, "a float array has a non-float encoding");
        }
    }
    return CKS_OK;
}

static cks_err get_doubles(dec *d, const cJSON *o, const char *key, size_t want, double **out)
{
    const char *e;
    const uint8_t *p;
    size_t n;
    float *f = NULL;
    cks_err err = get_ref(d, o, key, want, &e, &p, &n);
    *out = NULL;
    if (err)
        return err;
    if (strcmp(e, "f64") == 0) {
        *out = malloc((n ? n : 1) * sizeof **out);
        if (!*out)
            return cks_fail(d->diag, CKS_ERR_NOMEM, "out of memory");
        for (size_t i = 0; i < n; i++) {
            uint64_t u = cks_get_le64(p + 8 * i);
            memcpy(&(*out)[i], &u, 8);
        }
        return CKS_OK;
    }
    err = get_floats(d, o, key, want, &f);
    if (err)
        return err;
    *out = malloc((n ? n : 1) * sizeof **out);
    if (!*out) {
        free(f);
        return cks_fail(d->diag, CKS_ERR_NOMEM, "out of memory");
    }
    for (size_t i = 0; i < n; i++)
        (*out)[i] = f[i];
    free(f);
    return CKS_OK;
}

static cks_err get_u32s(dec *d, const cJSON *o, const char *key, size_t want, uint32_t **out, size_t *n)
{
    const char *e;
    const uint8_t *p;
    cks_err err = get_ref(d, o, key, want, &e, &p, n);
    *out = NULL;
    if (err)
        return err;
    if (strcmp(e, "u32") != 0)
        return bad(d, "an index array is not u32");
    *out = malloc((*n ? *n : 1) * sizeof **out);
    if (!*out)
        return cks_fail(d->diag, CKS_ERR_NOMEM, "out of memory");
    for (size_t i = 0; i < *n; i++)
        (*out)[i] = cks_get_le32(p + 4 * i);
    return CKS_OK;
}

static cks_err decode_header(dec *d, const cJSON *root, cks_fingerprint *fp)
{
    cks_err err = CKS_OK;
    const cJSON *files = cJSON_GetObjectItemCaseSensitive(root, "files"), *f;
    size_t n = (size_t)cJSON_GetArraySize(files), i = 0, total = 0;
    cks_st_header **headers = NULL;
    char **paths = NULL;

    if (!cJSON_IsArray(files) || n == 0 || n > FP_MAX_FILES)
        return bad(d, "\"files\" is missing or too long");
    headers = calloc(n, sizeof *headers);
    paths = calloc(n, sizeof *paths);
    fp->files = calloc(n, sizeof *fp->files);
    if (!headers || !paths || !fp->files) {
        err = cks_fail(d->diag, CKS_ERR_NOMEM, "out of memory");
        goto out;
    }
    cJSON_ArrayForEach(f, files)
    {
        const char *path = json_str(f, "path"), *sha = json_str(f, "sha256");
        const cJSON *tensors = cJSON_GetObjectItemCaseSensitive(f, "tensors"), *t;
        const cJSON *meta = cJSON_GetObjectItemCaseSensitive(f, "metadata"), *kv;
        size_t nt = (size_t)cJSON_GetArraySize(tensors), k = 0;
        uint64_t size, header_len;
        cks_st_header *h;
        if (!path || !json_uint(f, "size", UINT64_MAX, &size) || !json_uint(f, "header_len", CKS_ST_MAX_HEADER, &header_len) ||
            !cJSON_IsArray(tensors) || nt > FP_MAX_TENSORS - total) {
            err = bad(d, "a file entry is malformed");
            goto out;
        }
        total += nt;
        fp->files[i].path = strdup(path);
        fp->n_files++;
        fp->files[i].size = size;
        if (sha && strlen(sha) == 64)
            memcpy(fp->files[i].sha256, sha, 65);
        paths[i] = strdup(path);
        h = headers[i] = calloc(1, sizeof *h);
        if (!fp->files[i].path || !paths[i] || !h || !(h->tensors = calloc(nt ? nt : 1, sizeof *h->tensors))) {
            err = cks_fail(d->diag, CKS_ERR_NOMEM, "out of memory");
            goto out;
        }
        h->header_len = header_len;
        h->data_start = 8 + header_len;
        h->file_size = size;
        cJSON_ArrayForEach(t, tensors)
        {
            cks_tensor_info *ti = &h->tensors[k];
            const cJSON *name = cJSON_GetArrayItem(t, 0), *dt = cJSON_GetArrayItem(t, 1), *shape = cJSON_GetArrayItem(t, 2), *dim;
            uint64_t nel = 1, bits, begin, end, nbytes;
            int nd = cJSON_GetArraySize(shape);
            if (!cJSON_IsArray(t) || cJSON_GetArraySize(t) != 5 || !cJSON_IsString(name) || !cJSON_IsString(dt) ||
                !cJSON_IsArray(shape) || nd > CKS_ST_MAX_NDIM || !item_uint(cJSON_GetArrayItem(t, 3), &begin) ||
                !item_uint(cJSON_GetArrayItem(t, 4), &end) || end < begin) {
                err = bad(d, "a tensor entry is malformed");
                goto out;
            }
            ti->name = strdup(name->valuestring);
            h->n_tensors++;
            ti->dtype = cks_dtype_from_name(dt->valuestring, strlen(dt->valuestring));
            ti->ndim = (uint32_t)nd;
            ti->shape = nd ? calloc((size_t)nd, sizeof *ti->shape) : NULL;
            if (!ti->name || (nd && !ti->shape)) {
                err = cks_fail(d->diag, CKS_ERR_NOMEM, "out of memory");
                goto out;
            }
            if (ti->dtype == CKS_DTYPE_INVALID) {
                err = bad(d, "a tensor has an unknown dtype");
                goto out;
            }
            k = 0;
            cJSON_ArrayForEach(dim, shape)
            {
                if (!item_uint(dim, &ti->shape[k]) || !fp_mul_ok(nel, ti->shape[k], &nel)) {
                    err = bad(d, "a tensor shape is malformed");
                    goto out;
                }
                k++;
            }
            k = h->n_tensors;
            bits = cks_dtype_bits(ti->dtype);
            /* the byte span must match the shape exactly, as in a real header */
            if (!fp_mul_ok(nel, bits, &nbytes) || nbytes % 8 != 0 || nbytes / 8 != end - begin ||
                begin > UINT64_MAX - h->data_start) {
                err = bad(d, "a tensor's offsets do not match its shape");
                goto out;
            }
            ti->nelements = nel;
            ti->begin = begin;
            ti->end = end;
            ti->file_offset = h->data_start + begin;
        }
        if (cJSON_IsObject(meta)) {
            size_t nm = (size_t)cJSON_GetArraySize(meta), m = 0;
            h->metadata_keys = calloc(nm ? nm : 1, sizeof *h->metadata_keys);
            h->metadata_values = calloc(nm ? nm : 1, sizeof *h->metadata_values);
            if (!h->metadata_keys || !h->metadata_values) {
                err = cks_fail(d->diag, CKS_ERR_NOMEM, "out of memory");
                goto out;
            }
            cJSON_ArrayForEach(kv, meta)
            {
                if (!cJSON_IsString(kv) || !kv->string)
                    continue;
                h->metadata_keys[m] = strdup(kv->string);
                h->metadata_values[m] = strdup(kv->valuestring);
                h->n_metadata = ++m;
                if (!h->metadata_keys[m - 1] || !h->metadata_values[m - 1]) {
                    err = cks_fail(d->diag, CKS_ERR_NOMEM, "out of memory");
                    goto out;
                }
            }
        }
        i++;
    }
    err = fp_ckpt_assemble(fp->source, n, headers, paths, &fp->ckpt, d->diag);
out:
    if (err)
        for (size_t j = 0; j < n; j++) {
            cks_st_header_free(headers ? headers[j] : NULL);
            free(paths ? paths[j] : NULL);
        }
    free(headers);
    free(paths);
    return err;
}

static cks_err decode_rows(dec *d, const cJSON *o, bool with_ids, cks_fp_rows *r, const cks_ckpt_tensor **tensor,
                           const cks_fingerprint *fp)
{
    uint64_t rows, cols, total, cells;
    cks_err err;
    size_t n_ids;
    if (tensor) {
        const char *name = json_str(o, "tensor");
        *tensor = name ? cks_ckpt_find(fp->ckpt, name) : NULL;
    }
    if (!json_uint(o, "rows", UINT32_MAX, &rows) || !json_uint(o, "cols", FP_MAX_COLS, &cols) ||
        !json_uint(o, "total_rows", UINT32_MAX, &total) || rows > total || !fp_mul_ok(rows, cols, &cells) ||
        cells > CKS_FP_MAX_PAYLOAD)
        return bad(d, "a row block is malformed");
    r->rows = (size_t)rows;
    r->cols = (size_t)cols;
    r->total_rows = (size_t)total;
    err = get_floats(d, o, "data", (size_t)cells, &r->v);
    if (err || !with_ids)
        return err;
    err = get_u32s(d, o, "ids", r->rows, &r->ids, &n_ids);
    if (err)
        return err;
    for (size_t i = 0; i < n_ids; i++)
        if (r->ids[i] >= total || (i && r->ids[i] <= r->ids[i - 1]))
            return bad(d, "row ids are out of range or not increasing");
    return CKS_OK;
}

static cks_err decode_vector(dec *d, const cJSON *o, const cks_fingerprint *fp, size_t want, double **v, size_t *n,
                             const cks_ckpt_tensor **tensor)
{
    const cJSON *r = cJSON_GetObjectItemCaseSensitive(o, "data");
    const char *name = json_str(o, "tensor");
    uint64_t count;
    *tensor = name ? cks_ckpt_find(fp->ckpt, name) : NULL;
    if (!r || !json_uint(r, "n", CKS_FP_MAX_PAYLOAD, &count) || (want != SIZE_MAX && count != want))
        return bad(d, "a vector has the wrong length");
    *n = (size_t)count;
    return get_doubles(d, o, "data", (size_t)count, v);
}

static cks_err decode_layers(dec *d, const cJSON *root, cks_fingerprint *fp)
{
    cks_err err = CKS_OK;
    const cJSON *layers = cJSON_GetObjectItemCaseSensitive(root, "layers"), *o;
    int l = 0;
    if (fp->n_layers == 0)
        return CKS_OK;
    if (!cJSON_IsArray(layers) || cJSON_GetArraySize(layers) != fp->n_layers)
        return bad(d, "\"layers\" does not have n_layers entries");
    fp->layers = calloc((size_t)fp->n_layers, sizeof *fp->layers);
    if (!fp->layers)
        return cks_fail(d->diag, CKS_ERR_NOMEM, "out of memory");
    cJSON_ArrayForEach(o, layers)
    {
        cks_fp_layer *L = &fp->layers[l++];
        const cJSON *x;
        if ((x = cJSON_GetObjectItemCaseSensitive(o, "attn_norm")) &&
            (err = decode_vector(d, x, fp, fp->hidden, &L->attn_norm, &L->n_attn_norm, &L->attn_norm_t)))
            break;
        if ((x = cJSON_GetObjectItemCaseSensitive(o, "ffn_norm")) &&
            (err = decode_vector(d, x, fp, fp->hidden, &L->ffn_norm, &L->n_ffn_norm, &L->ffn_norm_t)))
            break;
        if ((x = cJSON_GetObjectItemCaseSensitive(o, "router_bias")) &&
            (err = decode_vector(d, x, fp, SIZE_MAX, &L->router_bias, &L->n_router_bias, &L->router_bias_t)))
            break;
        if ((x = cJSON_GetObjectItemCaseSensitive(o, "router")) &&
            (err = decode_rows(d, x, false, &L->router, &L->router_t, fp)))
            break;
        if ((x = cJSON_GetObjectItemCaseSensitive(o, "k")) && (err = decode_rows(d, x, true, &L->k, NULL, fp)))
            break;
        if ((x = cJSON_GetObjectItemCaseSensitive(o, "v")) && (err = decode_rows(d, x, true, &L->v, NULL, fp)))
            break;
        if ((L->k.v && L->k.cols != fp->hidden) || (L->v.v && L->v.cols != fp->hidden) ||
            (L->router.v && L->router.cols != fp->hidden)) {
            err = bad(d, "a layer's rows are not hidden-wide");
            break;
        }
    }
    return err;
}

/* The rows: floats, or (version 3, "quant": "q4") 4-bit codes with per-column offset and step,
 * decoded here with the builder's own q4_value. */
static cks_err decode_embed_data(dec *d, const cJSON *e, cks_fingerprint *fp, size_t cells)
{
    cks_err err = CKS_OK;
    const cJSON *quant = cJSON_GetObjectItemCaseSensitive(e, "quant");
    const char *enc;
    const uint8_t *p = NULL;
    size_t n, cols = fp->embed_cols;

    if (!quant) {
        err = get_floats(d, e, "data", cells, &fp->embed);
        goto out;
    }
    if (d->version < 3 || !cJSON_IsString(quant) || strcmp(quant->valuestring, "q4") != 0)
        err = bad(d, "\"embed\" has an unknown \"quant\"");
    if (!err)
        err = get_ref(d, e, "data", cells, &enc, &p, &n);
    if (!err && strcmp(enc, "q4") != 0)
        err = bad(d, "4-bit embedding rows are not stored as \"q4\"");
    if (!err)
        err = get_floats(d, e, "q_offset", cols, &fp->embed_qoff);
    if (!err)
        err = get_floats(d, e, "q_step", cols, &fp->embed_qstep);
    for (size_t c = 0; !err && c < cols; c++)
        if (!isfinite(fp->embed_qoff[c]) || !isfinite(fp->embed_qstep[c]) || fp->embed_qstep[c] < 0)
            err = bad(d, "a 4-bit embedding column has a non-finite offset or a negative step");
    if (!err) {
        fp->embed_codes = malloc(cells / 2 + 1);
        fp->embed = malloc((cells ? cells : 1) * sizeof *fp->embed);
        if (!fp->embed_codes || !fp->embed)
            err = cks_fail(d->diag, CKS_ERR_NOMEM, "out of memory");
    }
    if (err)
        goto out;
    memcpy(fp->embed_codes, p, fp_q4_bytes(cells));
    for (size_t i = 0; i < cells; i++)
        fp->embed[i] = fp_q4_value(fp->embed_qoff[i % cols], fp->embed_qstep[i % cols], fp_q4_code_at(fp->embed_codes, i));
    fp->embed_q4 = true;
out:
    return err;
}

static cks_err decode_embed(dec *d, const cJSON *root, cks_fingerprint *fp)
{
    cks_err err = CKS_OK;
    const cJSON *e = cJSON_GetObjectItemCaseSensitive(root, "embed");
    uint32_t *ids = NULL, *flags = NULL, *lens = NULL;
    size_t n = 0, n2 = 0, text_n = 0, at = 0;
    uint64_t rows, cols, elem, vocab, cells;
    const char *enc;
    const uint8_t *text;
    const cJSON *all;

    if (!e)
        return CKS_OK;
    all = cJSON_GetObjectItemCaseSensitive(e, "all_tokens");
    if (!json_uint(e, "rows_total", UINT32_MAX, &rows) || !json_uint(e, "cols", FP_MAX_COLS, &cols) || cols == 0 ||
        !json_uint(e, "elem_bytes", 8, &elem) || !json_uint(e, "vocab_size", CKS_TOK_MAX_VOCAB, &vocab) ||
        !cJSON_IsBool(all))
        return bad(d, "\"embed\" is malformed");
    fp->embed_rows_total = (size_t)rows;
    fp->embed_cols = (size_t)cols;
    fp->embed_elem_bytes = (size_t)elem;
    fp->vocab_size = (size_t)vocab;
    fp->embed_all = cJSON_IsTrue(all);
    err = get_u32s(d, e, "ids", SIZE_MAX, &ids, &n);
    if (!err && n > CKS_TOK_MAX_VOCAB)
        err = bad(d, "too many tokens");
    if (!err)
        err = get_u32s(d, e, "lens", n, &lens, &n2);
    if (!err && d->version >= 2)
        err = get_u32s(d, e, "flags", n, &flags, &n2);
    if (!err)
        err = get_ref(d, e, "text", SIZE_MAX, &enc, &text, &text_n);
    if (err)
        goto out;
    if (strcmp(enc, "u8") != 0 || !fp_mul_ok(n, cols, &cells) || cells > CKS_FP_MAX_PAYLOAD) {
        err = bad(d, "\"embed\" arrays are malformed");
        goto out;
    }
    fp->tokens = calloc(n ? n : 1, sizeof *fp->tokens);
    fp->text_pool = malloc(text_n ? text_n : 1);
    if (!fp->tokens || !fp->text_pool) {
        err = cks_fail(d->diag, CKS_ERR_NOMEM, "out of memory");
        goto out;
    }
    if (text_n)
        memcpy(fp->text_pool, text, text_n);
    for (size_t i = 0; i < n; i++) {
        if (lens[i] > CKS_TOK_MAX_PIECE || lens[i] > text_n - at || ids[i] >= rows || (i && ids[i] <= ids[i - 1])) {
            err = bad(d, "embedding tokens are out of range or not sorted");
            goto out;
        }
        fp->tokens[i].id = ids[i];
        fp->tokens[i].flags = flags ? flags[i] : 0;
        fp->tokens[i].len = lens[i];
        fp->tokens[i].text = fp->text_pool + at;
        at += lens[i];
    }
    fp->n_tokens = n;
    err = decode_embed_data(d, e, fp, (size_t)cells);
out:
    free(ids);
    free(flags);
    free(lens);
    return err;
}

static cks_err decode_payload(dec *d, const uint8_t *payload, size_t len, cks_fingerprint *fp)
{
    cks_err err = CKS_OK;
    uint32_t json_len;
    cJSON *root = NULL, *hashes, *h;
    const char *fmt;
    const cJSON *cfg;
    uint64_t v, n_layers, hidden;

    if (len < 4 || (json_len = cks_get_le32(payload)) > len - 4)
        return bad(d, "the metadata length is beyond the payload");
    d->bin = payload + 4 + json_len;
    d->bin_len = len - 4 - json_len;
    root = cJSON_ParseWithLength((const char *)payload + 4, json_len);
    if (!root || !cJSON_IsObject(root)) {
        err = bad(d, "the metadata is not a JSON object");
        goto out;
    }
    fmt = json_str(root, "format");
    if (!fmt || strcmp(fmt, "ckptscope-fingerprint") != 0 || !json_uint(root, "version", UINT32_MAX, &v) ||
        v != d->version) {
        err = bad(d, "the metadata does not name this format and version");
        goto out;
    }
    fp->source = fp_dup_or_empty(json_str(root, "source"));
    fp->repo = fp_dup_or_empty(json_str(root, "repo"));
    fp->revision = fp_dup_or_empty(json_str(root, "revision"));
    fp->commit = fp_dup_or_empty(json_str(root, "commit"));
    fp->tool = fp_dup_or_empty(json_str(root, "tool"));
    if (!fp->source || !fp->repo || !fp->revision || !fp->commit || !fp->tool) {
        err = cks_fail(d->diag, CKS_ERR_NOMEM, "out of memory");
        goto out;
    }
    snprintf(fp->sampling, sizeof fp->sampling, "%s", json_str(root, "sampling") ? json_str(root, "sampling") : "");
    if (!json_uint(root, "seed", UINT64_MAX, &fp->seed) || !json_uint(root, "budget", UINT64_MAX, &fp->budget) ||
        !json_uint(root, "n_layers", FP_MAX_LAYERS, &n_layers) || !json_uint(root, "hidden", FP_MAX_COLS, &hidden) ||
        !json_uint(root, "bytes_read", UINT64_MAX, &fp->bytes_read)) {
        err = bad(d, "seed, budget, n_layers, hidden or bytes_read is malformed");
        goto out;
    }
    fp->n_layers = (int)n_layers;
    fp->hidden = (size_t)hidden;
    fp->full_coverage = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(root, "full_coverage"));
    fp->kv_subsampled = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(root, "kv_subsampled"));
    if (!json_uint(root, "routers_dropped", FP_MAX_LAYERS, &v))
        v = 0;
    fp->routers_dropped = (size_t)v;
    cfg = cJSON_GetObjectItemCaseSensitive(root, "config_json");
    if (cJSON_IsString(cfg)) {
        fp->config_json = strdup(cfg->valuestring);
        if (!fp->config_json) {
            err = cks_fail(d->diag, CKS_ERR_NOMEM, "out of memory");
            goto out;
        }
        fp->config_len = strlen(fp->config_json);
    }
    err = decode_header(d, root, fp);
    if (err)
        goto out;
    hashes = cJSON_GetObjectItemCaseSensitive(root, "hashes");
    if (!cJSON_IsArray(hashes) || (size_t)cJSON_GetArraySize(hashes) > fp->ckpt->n_tensors) {
        err = bad(d, "\"hashes\" is malformed");
        goto out;
    }
    fp->hashes = calloc((size_t)cJSON_GetArraySize(hashes) + 1, sizeof *fp->hashes);
    if (!fp->hashes) {
        err = cks_fail(d->diag, CKS_ERR_NOMEM, "out of memory");
        goto out;
    }
    cJSON_ArrayForEach(h, hashes)
    {
        const cJSON *name = cJSON_GetArrayItem(h, 0), *hex = cJSON_GetArrayItem(h, 1), *low = cJSON_GetArrayItem(h, 2);
        cks_fp_hash *e = &fp->hashes[fp->n_hashes];
        if (!cJSON_IsString(name) || !cJSON_IsString(hex) || strlen(hex->valuestring) != 64 || !cJSON_IsBool(low) ||
            !(e->tensor = cks_ckpt_find(fp->ckpt, name->valuestring))) {
            err = bad(d, "a hash entry is malformed or names an unknown tensor");
            goto out;
        }
        for (int k = 0; k < 32; k++) {
            unsigned byte;
            if (sscanf(hex->valuestring + 2 * k, "%2x", &byte) != 1) {
                err = bad(d, "a hash is not hex");
                goto out;
            }
            e->sha256[k] = (uint8_t)byte;
        }
        e->low_information = cJSON_IsTrue(low);
        fp->n_hashes++;
    }
    err = decode_layers(d, root, fp);
    if (!err)
        err = decode_embed(d, root, fp);
    if (!err)
        fp_attach_raw(fp);
out:
    cJSON_Delete(root);
    return err;
}

bool cks_fingerprint_sniff(const void *buf, size_t len)
{
    return buf && len >= CKS_FP_MAGIC_LEN && memcmp(buf, CKS_FP_MAGIC, CKS_FP_MAGIC_LEN) == 0;
}

cks_err cks_fingerprint_decode(const uint8_t *buf, size_t len, cks_fingerprint **out, cks_diag *diag)
{
    cks_err err = CKS_OK;
    cks_fingerprint *fp = NULL;
    uint8_t *payload = NULL;
    uint64_t payload_len;
    size_t got;
    dec d = {0};

    *out = NULL;
    d.diag = diag;
    if (len < FP_HEAD_LEN || !cks_fingerprint_sniff(buf, len))
        return cks_fail(diag, FP_BAD, "not a ckptscope fingerprint (no CKSFPRNT magic)");
    d.version = cks_get_le32(buf + 8);
    payload_len = cks_get_le64(buf + 12);
    if (d.version < CKS_FP_MIN_VERSION || d.version > CKS_FP_VERSION)
        return cks_fail(diag, CKS_ERR_UNSUPPORTED, "fingerprint version %u: this ckptscope reads versions %d to %d",
                        d.version, CKS_FP_MIN_VERSION, CKS_FP_VERSION);
    if (payload_len > CKS_FP_MAX_PAYLOAD || payload_len < 4)
        return cks_fail(diag, FP_BAD, "fingerprint: payload length %llu is out of bounds",
                        (unsigned long long)payload_len);
    {
        unsigned long long frame = ZSTD_getFrameContentSize(buf + FP_HEAD_LEN, len - FP_HEAD_LEN);
        if (frame != ZSTD_CONTENTSIZE_UNKNOWN && frame != payload_len)
            return cks_fail(diag, FP_BAD, "fingerprint: the compressed frame does not hold the declared payload");
    }
    payload = malloc((size_t)payload_len);
    fp = calloc(1, sizeof *fp);
    if (!payload || !fp) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        goto out;
    }
    got = ZSTD_decompress(payload, (size_t)payload_len, buf + FP_HEAD_LEN, len - FP_HEAD_LEN);
    if (ZSTD_isError(got) || got != payload_len) {
        err = cks_fail(diag, CKS_ERR_TRUNCATED, "fingerprint: the compressed payload is damaged or truncated%s%s",
                       ZSTD_isError(got) ? ": " : "", ZSTD_isError(got) ? ZSTD_getErrorName(got) : "");
        goto out;
    }
    fp->version = d.version;
    err = decode_payload(&d, payload, (size_t)payload_len, fp);
    if (err)
        goto out;
    *out = fp;
    fp = NULL;
out:
    free(payload);
    cks_fingerprint_free(fp);
    return err;
}
