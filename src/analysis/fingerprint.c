/*
 * fingerprint: build from a model through compare's loader, encode/decode the versioned
 * container, save/load files. Format and contract: include/ckptscope/fingerprint.h.
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

#define FP_HEAD_LEN 20u              /* magic + u32 version + u64 payload length */
#define FP_MAX_FILES 100000u
#define FP_MAX_TENSORS 10000000u
#define FP_MAX_LAYERS 100000
#define FP_MAX_COLS (1u << 20)
#define FP_MAX_JSON_INT 9007199254740992.0 /* 2^53: larger integers are not exact in JSON numbers */
/* Written once, read often: spend time on the ratio, where it buys any. Measured on a 10.9 MB
 * payload of mostly 4-bit codes: level 19 takes 3.6 s for 9.165 MB, level 9 0.3 s for 9.150 MB;
 * on a 0.5 MB payload of names and bf16 values level 19 saves 2 % in 0.06 s. */
#define FP_ZSTD_LEVEL_SMALL 19
#define FP_ZSTD_LEVEL_LARGE 9
#define FP_ZSTD_LARGE (2u << 20)
#define FP_BAD CKS_ERR_INVALID_HEADER_DESERIALIZATION
/* Embedding rows a capped fingerprint aims to keep: compare's T4 needs 2,048 shared tokens on a
 * wide model, and a vocabulary of another family lacks some reference strings. */
#define FP_EMBED_TARGET 2816u
#define FP_EMBED_MAX_PERCENT 70u     /* of the room, to reach FP_EMBED_TARGET as 4-bit codes */
/* The step of a column's 16-level quantiser, in standard deviations: whichever of these gives
 * the column the least squared error. 0.3352 is Max's (1960, "Quantizing for minimum
 * distortion") optimum for a Gaussian (distortion 0.01154: a cosine of 0.994 between a column
 * and its codes); wider steps serve heavy-tailed columns (Student-t with 3 degrees of freedom:
 * mean cosine 0.93 at 0.3352 alone, 0.95 with the choice). */
static const double fp_q4_steps[] = {0.3352, 0.4, 0.5, 0.65, 0.85, 1.1, 1.5};

/* ---- small helpers ---- */

static char *dup_or_empty(const char *s)
{
    return strdup(s ? s : "");
}

static bool mul_ok(uint64_t a, uint64_t b, uint64_t *out)
{
    if (a && b > UINT64_MAX / a)
        return false;
    *out = a * b;
    return true;
}

static uint32_t f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static float bits_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

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
        bf16 = (f32_bits(v[i]) & 0xFFFFu) == 0;
    if (n > SIZE_MAX / 4 || !(at = bbuf_grow(b, n * (bf16 ? 2 : 4))))
        return NULL;
    for (size_t i = 0; i < n; i++) {
        uint32_t u = f32_bits(v[i]);
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

/* ---- freeing ---- */

static void rows_release(cks_fp_rows *r)
{
    free(r->v);
    free(r->ids);
    memset(r, 0, sizeof *r);
}

static void layers_release(cks_fingerprint *fp)
{
    for (int l = 0; l < fp->n_layers && fp->layers; l++) {
        cks_fp_layer *L = &fp->layers[l];
        free(L->attn_norm);
        free(L->ffn_norm);
        free(L->router_bias);
        rows_release(&L->router);
        rows_release(&L->k);
        rows_release(&L->v);
    }
    free(fp->layers);
    fp->layers = NULL;
}

static void embed_release(cks_fingerprint *fp)
{
    free(fp->tokens);
    free(fp->text_pool);
    free(fp->embed);
    free(fp->embed_codes);
    free(fp->embed_qoff);
    free(fp->embed_qstep);
    fp->tokens = NULL;
    fp->text_pool = NULL;
    fp->embed = NULL;
    fp->embed_codes = NULL;
    fp->embed_qoff = NULL;
    fp->embed_qstep = NULL;
    fp->embed_q4 = false;
    fp->n_tokens = 0;
}

/* ---- 4-bit embedding rows (version 3) ---- */

/* Bytes of n 4-bit codes packed two per byte (the stored array; allocations add a spare). */
static size_t q4_bytes(size_t n)
{
    return n / 2 + n % 2;
}

/* The value a code stands for; build and decode both use this, so they agree to the bit. */
static float q4_value(float offset, float step, unsigned code)
{
    return offset + step * ((float)code - 7.5f);
}

static unsigned q4_code_at(const uint8_t *codes, size_t i)
{
    return i % 2 ? codes[i / 2] >> 4 : codes[i / 2] & 0x0Fu;
}

/* The code of x: the middle one (8) for a constant column or a non-finite value. */
static unsigned q4_code(double x, float offset, float step)
{
    double q = step > 0 && isfinite(x) ? floor((x - offset) / step) + 8 : 8;
    return q < 0 ? 0u : q > 15 ? 15u : (unsigned)q;
}

/* Replace the n_tokens x embed_cols rows by 4-bit codes, one uniform 16-level quantiser per
 * column: centred on the column's mean, its step the one of fp_q4_steps (times the column's sd)
 * with the least squared error. The column is the unit T4 works in (cosines between hidden
 * dimensions), so a column's scale never leaks into another's. A non-finite value becomes the
 * column's mean. */
cks_err fp_embed_quantise(cks_fingerprint *fp)
{
    size_t n = fp->n_tokens, cols = fp->embed_cols, cells = n * cols;
    cks_err err = CKS_OK;
    fp->embed_codes = calloc(cells / 2 + 1, 1);
    fp->embed_qoff = malloc((cols ? cols : 1) * sizeof *fp->embed_qoff);
    fp->embed_qstep = malloc((cols ? cols : 1) * sizeof *fp->embed_qstep);
    if (!fp->embed_codes || !fp->embed_qoff || !fp->embed_qstep) {
        err = CKS_ERR_NOMEM;
        goto out;
    }
    for (size_t c = 0; c < cols; c++) {
        double sum = 0, sq = 0, mean, sd, best;
        size_t finite = 0;
        for (size_t r = 0; r < n; r++) {
            double x = fp->embed[r * cols + c];
            if (isfinite(x)) {
                sum += x;
                finite++;
            }
        }
        mean = finite ? sum / (double)finite : 0;
        for (size_t r = 0; r < n; r++) {
            double x = fp->embed[r * cols + c];
            if (isfinite(x))
                sq += (x - mean) * (x - mean);
        }
        fp->embed_qoff[c] = isfinite((float)mean) ? (float)mean : 0.0f;
        fp->embed_qstep[c] = 0.0f;
        sd = finite ? sqrt(sq / (double)finite) : 0;
        best = INFINITY;
        for (size_t k = 0; k < sizeof fp_q4_steps / sizeof fp_q4_steps[0]; k++) {
            float step = (float)(fp_q4_steps[k] * sd);
            double sq_err = 0;
            if (!(step > 0) || !isfinite(step))
                continue;
            for (size_t r = 0; r < n; r++) {
                double x = fp->embed[r * cols + c], d;
                if (!isfinite(x))
                    continue;
                d = x - q4_value(fp->embed_qoff[c], step, q4_code(x, fp->embed_qoff[c], step));
                sq_err += d * d;
            }
            if (sq_err < best) {
                best = sq_err;
                fp->embed_qstep[c] = step;
            }
        }
    }
    for (size_t i = 0; i < cells; i++) {
        size_t c = i % cols;
        unsigned code = q4_code(fp->embed[i], fp->embed_qoff[c], fp->embed_qstep[c]);
        fp->embed_codes[i / 2] |= (uint8_t)(i % 2 ? code << 4 : code);
        fp->embed[i] = q4_value(fp->embed_qoff[c], fp->embed_qstep[c], code);
    }
    fp->embed_q4 = true;
out:
    return err;
}

void cks_fingerprint_free(cks_fingerprint *fp)
{
    if (!fp)
        return;
    free(fp->source);
    free(fp->repo);
    free(fp->revision);
    free(fp->commit);
    free(fp->tool);
    for (size_t i = 0; i < fp->n_files; i++)
        free(fp->files[i].path);
    free(fp->files);
    layers_release(fp);
    embed_release(fp);
    for (size_t i = 0; i < fp->n_hashes; i++)
        free(fp->hashes[i].bytes);
    free(fp->hashes);
    free(fp->config_json);
    cks_ckpt_free(fp->ckpt);
    free(fp);
}

/* ---- a checkpoint made of headers only ---- */

static int tensor_by_name(const void *x, const void *y)
{
    const cks_ckpt_tensor *a = x, *b = y;
    return strcmp(a->info->name, b->info->name);
}

/*
 * A cks_ckpt whose files have headers but no bytes (each file's source is empty, so a read
 * fails cleanly instead of returning data): tensor roles, shapes and names work on it as
 * on the model itself. Takes ownership of headers[] and paths[] entries.
 */
static cks_err ckpt_assemble(const char *name, size_t n_files, cks_st_header **headers, char **paths,
                             cks_ckpt **out, cks_diag *diag)
{
    static const uint8_t nothing[1] = {0};
    cks_err err = CKS_OK;
    cks_ckpt *c = calloc(1, sizeof *c);
    size_t total = 0, at = 0;

    *out = NULL;
    if (!c || !(c->name = strdup(name)) || !(c->files = calloc(n_files ? n_files : 1, sizeof *c->files))) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < n_files; i++) {
        c->files[i].path = paths[i];
        c->files[i].header = headers[i];
        paths[i] = NULL;
        headers[i] = NULL;
        c->n_files++;
        err = cks_source_from_memory(nothing, 0, c->files[i].path, false, &c->files[i].source, diag);
        if (err)
            goto out;
        total += c->files[i].header->n_tensors;
    }
    c->tensors = calloc(total ? total : 1, sizeof *c->tensors);
    if (!c->tensors) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < c->n_files; i++)
        for (size_t t = 0; t < c->files[i].header->n_tensors; t++) {
            c->tensors[at].info = &c->files[i].header->tensors[t];
            c->tensors[at].file = i;
            at++;
        }
    c->n_tensors = total;
    qsort(c->tensors, total, sizeof *c->tensors, tensor_by_name);
    for (size_t i = 1; i < total; i++)
        if (strcmp(c->tensors[i - 1].info->name, c->tensors[i].info->name) == 0) {
            err = cks_fail(diag, FP_BAD, "fingerprint: tensor \"%s\" listed twice", c->tensors[i].info->name);
            goto out;
        }
    *out = c;
    c = NULL;
out:
    for (size_t i = 0; i < n_files; i++) {
        free(paths[i]);
        cks_st_header_free(headers[i]);
        paths[i] = NULL;
        headers[i] = NULL;
    }
    cks_ckpt_free(c);
    return err;
}

static cks_err header_copy(const cks_st_header *src, cks_st_header **out, cks_diag *diag)
{
    cks_st_header *h = calloc(1, sizeof *h);
    *out = NULL;
    if (!h)
        return cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
    *h = *src;
    h->tensors = calloc(src->n_tensors ? src->n_tensors : 1, sizeof *h->tensors);
    h->metadata_keys = calloc(src->n_metadata ? src->n_metadata : 1, sizeof *h->metadata_keys);
    h->metadata_values = calloc(src->n_metadata ? src->n_metadata : 1, sizeof *h->metadata_values);
    h->n_tensors = h->n_metadata = 0;
    if (!h->tensors || !h->metadata_keys || !h->metadata_values)
        goto nomem;
    for (size_t i = 0; i < src->n_tensors; i++) {
        cks_tensor_info *d = &h->tensors[i];
        *d = src->tensors[i];
        d->shape = NULL;
        d->name = strdup(src->tensors[i].name);
        h->n_tensors++;
        if (!d->name)
            goto nomem;
        if (d->ndim) {
            d->shape = malloc(d->ndim * sizeof *d->shape);
            if (!d->shape)
                goto nomem;
            memcpy(d->shape, src->tensors[i].shape, d->ndim * sizeof *d->shape);
        }
    }
    for (size_t i = 0; i < src->n_metadata; i++) {
        h->metadata_keys[i] = strdup(src->metadata_keys[i]);
        h->metadata_values[i] = strdup(src->metadata_values[i]);
        h->n_metadata++;
        if (!h->metadata_keys[i] || !h->metadata_values[i])
            goto nomem;
    }
    *out = h;
    return CKS_OK;
nomem:
    cks_st_header_free(h);
    return cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
}

/* ---- raw bytes of the tensors a fingerprint keeps decoded, rebuilt and checked ---- */

static bool f32_to_f16_exact(float f, uint16_t *out)
{
    uint32_t u = f32_bits(f), sign = (u >> 16) & 0x8000u;
    int exp = (int)((u >> 23) & 0xFF);
    uint32_t man = u & 0x7FFFFFu;
    if (exp == 0xFF) {
        *out = (uint16_t)(sign | 0x7C00u | (man ? 0x200u | (man >> 13) : 0));
        return man == 0 || (man & 0x1FFFu) == 0;
    }
    if (exp == 0 && man == 0) {
        *out = (uint16_t)sign;
        return true;
    }
    exp -= 127;
    if (exp >= -14 && exp <= 15) {
        if (man & 0x1FFFu)
            return false;
        *out = (uint16_t)(sign | (uint32_t)(exp + 15) << 10 | man >> 13);
        return true;
    }
    if (exp < -14 && exp >= -24) {
        /* subnormal half: value = m * 2^-24 */
        uint32_t full = man | 0x800000u;
        int shift = 13 + (-14 - exp);
        if (shift > 31 || (full & ((1u << shift) - 1)))
            return false;
        *out = (uint16_t)(sign | full >> shift);
        return true;
    }
    return false;
}

/* Encode decoded values back into the tensor's dtype; false when that is not exact. */
static bool encode_values(cks_dtype dtype, const double *dv, const float *fv, size_t n, uint8_t *out)
{
    for (size_t i = 0; i < n; i++) {
        double d = dv ? dv[i] : (double)fv[i];
        float f = (float)d;
        switch (dtype) {
        case CKS_DTYPE_F64: {
            uint64_t u;
            memcpy(&u, &d, 8);
            cks_put_le64(out + 8 * i, u);
            break;
        }
        case CKS_DTYPE_F32:
            cks_put_le32(out + 4 * i, f32_bits(f));
            break;
        case CKS_DTYPE_BF16: {
            uint32_t u = f32_bits(f);
            if (u & 0xFFFFu)
                return false;
            out[2 * i] = (uint8_t)(u >> 16);
            out[2 * i + 1] = (uint8_t)(u >> 24);
            break;
        }
        case CKS_DTYPE_F16: {
            uint16_t h;
            if (!f32_to_f16_exact(f, &h))
                return false;
            out[2 * i] = (uint8_t)h;
            out[2 * i + 1] = (uint8_t)(h >> 8);
            break;
        }
        default:
            return false;
        }
    }
    return true;
}

static cks_fp_hash *hash_for(cks_fingerprint *fp, const cks_ckpt_tensor *t)
{
    for (size_t i = 0; t && i < fp->n_hashes; i++)
        if (fp->hashes[i].tensor == t)
            return &fp->hashes[i];
    return NULL;
}

static void attach_one(cks_fingerprint *fp, const cks_ckpt_tensor *t, const double *dv, const float *fv, size_t n)
{
    cks_fp_hash *h = hash_for(fp, t);
    size_t esize;
    uint8_t *bytes, digest[32];
    unsigned int dlen = 0;
    if (!h || h->bytes || !t || t->info->nelements != n || !cks_dtype_is_float(t->info->dtype))
        return;
    esize = cks_dtype_bits(t->info->dtype) / 8;
    if (esize == 0 || n > SIZE_MAX / esize || t->info->end - t->info->begin != n * esize)
        return;
    bytes = malloc(n * esize > 0 ? n * esize : 1);
    if (!bytes)
        return;
    /* kept only when the rebuilt bytes hash to the recorded SHA-256: never approximate bytes */
    if (encode_values(t->info->dtype, dv, fv, n, bytes) &&
        EVP_Digest(bytes, n * esize, digest, &dlen, EVP_sha256(), NULL) == 1 && memcmp(digest, h->sha256, 32) == 0) {
        h->bytes = bytes;
        h->len = n * esize;
        return;
    }
    free(bytes);
}

/* T1's bit-equality needs raw bytes: rebuild them from the decoded norms, routers and biases. */
static void attach_raw(cks_fingerprint *fp)
{
    for (int l = 0; l < fp->n_layers && fp->layers; l++) {
        cks_fp_layer *L = &fp->layers[l];
        attach_one(fp, L->attn_norm_t, L->attn_norm, NULL, L->n_attn_norm);
        attach_one(fp, L->ffn_norm_t, L->ffn_norm, NULL, L->n_ffn_norm);
        attach_one(fp, L->router_bias_t, L->router_bias, NULL, L->n_router_bias);
        if (L->router.v)
            attach_one(fp, L->router_t, NULL, L->router.v, L->router.rows * L->router.cols);
    }
}

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
        rows_release(dst);
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

    embed_release(fp);
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
        embed_release(fp);
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
        embed_release(fp);
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

    layers_release(fp);
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
        err = header_copy(c->files[i].header, &headers[i], diag);
    }
    if (!err)
        err = ckpt_assemble(o && o->source ? o->source : c->name, c->n_files, headers, paths, &fp->ckpt, diag);
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
    fp->source = dup_or_empty(opts ? opts->source : m->ckpt->name);
    fp->repo = dup_or_empty(opts ? opts->repo : NULL);
    fp->revision = dup_or_empty(opts ? opts->revision : NULL);
    fp->commit = dup_or_empty(opts ? opts->commit : NULL);
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
    attach_raw(fp);
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
                cJSON_AddItemToObject(e, "data", put_raw(b, fp->embed_codes, q4_bytes(fp->n_tokens * fp->embed_cols),
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
    if ((esize && !mul_ok(count, esize, &bytes)) || off > d->bin_len || bytes > d->bin_len - off)
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
            (*out)[i] = bits_f32((uint32_t)(p[2 * i] | p[2 * i + 1] << 8) << 16);
        else if (strcmp(e, "f32") == 0)
            (*out)[i] = bits_f32(cks_get_le32(p + 4 * i));
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
                if (!item_uint(dim, &ti->shape[k]) || !mul_ok(nel, ti->shape[k], &nel)) {
                    err = bad(d, "a tensor shape is malformed");
                    goto out;
                }
                k++;
            }
            k = h->n_tensors;
            bits = cks_dtype_bits(ti->dtype);
            /* the byte span must match the shape exactly, as in a real header */
            if (!mul_ok(nel, bits, &nbytes) || nbytes % 8 != 0 || nbytes / 8 != end - begin ||
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
    err = ckpt_assemble(fp->source, n, headers, paths, &fp->ckpt, d->diag);
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
        !json_uint(o, "total_rows", UINT32_MAX, &total) || rows > total || !mul_ok(rows, cols, &cells) ||
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
    memcpy(fp->embed_codes, p, q4_bytes(cells));
    for (size_t i = 0; i < cells; i++)
        fp->embed[i] = q4_value(fp->embed_qoff[i % cols], fp->embed_qstep[i % cols], q4_code_at(fp->embed_codes, i));
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
    if (strcmp(enc, "u8") != 0 || !mul_ok(n, cols, &cells) || cells > CKS_FP_MAX_PAYLOAD) {
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
    fp->source = dup_or_empty(json_str(root, "source"));
    fp->repo = dup_or_empty(json_str(root, "repo"));
    fp->revision = dup_or_empty(json_str(root, "revision"));
    fp->commit = dup_or_empty(json_str(root, "commit"));
    fp->tool = dup_or_empty(json_str(root, "tool"));
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
        attach_raw(fp);
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

/* ---- files ---- */

void fp_sync_parent(const char *path)
{
    char *dir = strdup(path);
    char *slash = dir ? strrchr(dir, '/') : NULL;
    int fd;
    if (!dir)
        return;
    if (slash == dir)
        slash[1] = '\0';
    else if (slash)
        *slash = '\0';
    fd = open(slash ? dir : ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        (void)fsync(fd);
        close(fd);
    }
    free(dir);
}

cks_err cks_fingerprint_save(const cks_fingerprint *fp, uint32_t version, const char *path, uint64_t *written,
                             cks_diag *diag)
{
    cks_err err;
    uint8_t *buf = NULL;
    size_t len = 0, done = 0;
    char *tmp = NULL, host[64] = "host";
    int fd = -1;

    if (written)
        *written = 0;
    err = cks_fingerprint_encode(fp, version, &buf, &len, diag);
    if (err)
        goto out;
    /* host and pid: jobs on several nodes may write into one folder of a shared filesystem */
    (void)gethostname(host, sizeof host - 1);
    host[sizeof host - 1] = '\0';
    if (asprintf(&tmp, "%s.tmp.%s.%ld", path, host, (long)getpid()) < 0) {
        tmp = NULL;
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        goto out;
    }
    fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        err = cks_fail(diag, errno == ENOSPC ? CKS_ERR_NO_SPACE : CKS_ERR_IO, "%s: %s", tmp, strerror(errno));
        goto out;
    }
    while (done < len) {
        ssize_t n = write(fd, buf + done, len - done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            err = cks_fail(diag, errno == ENOSPC ? CKS_ERR_NO_SPACE : CKS_ERR_IO, "%s: %s", tmp, strerror(errno));
            goto out;
        }
        done += (size_t)n;
    }
    /* a crash leaves either the old file or the whole new one, never half of it */
    if (fsync(fd) != 0 || close(fd) != 0) {
        fd = -1;
        err = cks_fail(diag, CKS_ERR_IO, "%s: %s", tmp, strerror(errno));
        goto out;
    }
    fd = -1;
    if (rename(tmp, path) != 0) {
        err = cks_fail(diag, CKS_ERR_IO, "%s: %s", path, strerror(errno));
        goto out;
    }
    fp_sync_parent(path); /* the rename itself survives a crash */
    if (written)
        *written = len;
out:
    if (fd >= 0)
        close(fd);
    if (err && tmp)
        unlink(tmp);
    free(tmp);
    free(buf);
    return err;
}

cks_err cks_fingerprint_load(const char *path, cks_fingerprint **out, cks_diag *diag)
{
    cks_err err = CKS_OK;
    uint8_t *buf = NULL;
    size_t done = 0;
    struct stat sb;
    int fd = open(path, O_RDONLY | O_CLOEXEC);

    *out = NULL;
    if (fd < 0)
        return cks_fail(diag, errno == ENOENT ? CKS_ERR_NOT_FOUND : CKS_ERR_IO, "%s: %s", path, strerror(errno));
    if (fstat(fd, &sb) != 0 || sb.st_size < 0 || (uint64_t)sb.st_size > CKS_FP_MAX_PAYLOAD) {
        err = cks_fail(diag, FP_BAD, "%s: not a fingerprint of a plausible size", path);
        goto out;
    }
    buf = malloc(sb.st_size ? (size_t)sb.st_size : 1);
    if (!buf) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        goto out;
    }
    while (done < (size_t)sb.st_size) {
        ssize_t n = read(fd, buf + done, (size_t)sb.st_size - done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            err = cks_fail(diag, CKS_ERR_IO, "%s: %s", path, n < 0 ? strerror(errno) : "shorter than its size");
            goto out;
        }
        done += (size_t)n;
    }
    err = cks_fingerprint_decode(buf, done, out, diag);
    if (err && diag) {
        /* say which file: a directory of fingerprints is checked one by one */
        char what[CKS_DIAG_MAX];
        snprintf(what, sizeof what, "%s", diag->text);
        snprintf(diag->text, sizeof diag->text, "%.300s: %.700s", path, what);
    }
out:
    close(fd);
    free(buf);
    return err;
}

bool cks_fingerprint_is_file(const char *path)
{
    char magic[CKS_FP_MAGIC_LEN];
    struct stat sb;
    int fd;
    ssize_t n;
    if (stat(path, &sb) != 0 || !S_ISREG(sb.st_mode))
        return false;
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return false;
    n = read(fd, magic, sizeof magic);
    close(fd);
    return n == (ssize_t)sizeof magic && cks_fingerprint_sniff(magic, sizeof magic);
}

void cks_fingerprint_model(const cks_fingerprint *fp, const char *label, cks_compare_model *out)
{
    memset(out, 0, sizeof *out);
    out->label = label;
    out->ckpt = fp->ckpt;
    out->config_json = fp->config_json;
    out->config_len = fp->config_len;
    out->fingerprint = fp;
}

/* ---- what a fingerprint limited, said in the result ---- */

static void append(char *buf, size_t size, const char *fmt, const char *side, size_t n)
{
    size_t at = strlen(buf);
    if (at < size)
        snprintf(buf + at, size - at, fmt, side, n);
}

void cks_fingerprint_annotate(cks_compare_result *r, const cks_fingerprint *a, const cks_fingerprint *b, uint64_t seed)
{
    const cks_fingerprint *fps[2] = {a, b};
    static const char *const side[2] = {"A", "B"};
    if (!r)
        return;
    for (int s = 0; s < 2; s++) {
        const cks_fingerprint *fp = fps[s];
        if (!fp)
            continue;
        for (size_t i = 0; i < r->n_tests; i++) {
            cks_test_result *t = &r->tests[i];
            bool weights = strcmp(t->id, "T3") == 0 || strcmp(t->id, "T4b-weights") == 0 || strcmp(t->id, "T4c") == 0;
            bool embeds = strcmp(t->id, "T3") == 0 || strcmp(t->id, "T4a") == 0 || strcmp(t->id, "T4b-weights") == 0;
            if (strcmp(t->id, "T1") == 0 || strcmp(t->id, "G") == 0)
                append(t->caveats, sizeof t->caveats,
                       "%s is a fingerprint: byte identity from its %zu stored tensor hashes; bitwise fractions and "
                       "per-tensor correlations only on the tensors it keeps whole (norm gains, routers, router "
                       "biases). ",
                       side[s], fp->n_hashes);
            if (embeds && fp->embed_cols && !fp->embed_all)
                append(t->caveats, sizeof t->caveats,
                       "%s is a fingerprint: embedding rows only of its %zu reference-string tokens. ", side[s],
                       fp->n_tokens);
            if (weights && fp->kv_subsampled)
                append(t->caveats, sizeof t->caveats,
                       "%s is a fingerprint: k/v rows limited to its smaller sample (%zu layers). ", side[s],
                       (size_t)fp->n_layers);
            if (weights && fp->seed != seed) {
                append(t->caveats, sizeof t->caveats,
                       "%s is a fingerprint sampled with another seed: its k/v rows are left out (%zu). ", side[s],
                       (size_t)0);
                if (!t->ran && strcmp(t->id, "T4c") == 0)
                    snprintf(t->why_not, sizeof t->why_not,
                             "the fingerprint's k rows were sampled with seed %llu, not %llu: rerun with --seed %llu",
                             (unsigned long long)fp->seed, (unsigned long long)seed, (unsigned long long)fp->seed);
            }
        }
    }
}
