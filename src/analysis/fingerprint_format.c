/*
 * fingerprint: what the builder, the encoder and the decoder share, at the bottom of the
 * fingerprint files: small helpers, freeing, the 4-bit embedding rows, the checkpoint made of
 * headers only, and the raw bytes of kept tensors rebuilt and checked.
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

/* ---- small helpers ---- */

char *fp_dup_or_empty(const char *s)
{
    return strdup(s ? s : "");
}

bool fp_mul_ok(uint64_t a, uint64_t b, uint64_t *out)
{
    if (a && b > UINT64_MAX / a)
        return false;
    *out = a * b;
    return true;
}

uint32_t fp_f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

float fp_bits_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* ---- freeing ---- */

void fp_rows_release(cks_fp_rows *r)
{
    free(r->v);
    free(r->ids);
    memset(r, 0, sizeof *r);
}

void fp_layers_release(cks_fingerprint *fp)
{
    for (int l = 0; l < fp->n_layers && fp->layers; l++) {
        cks_fp_layer *L = &fp->layers[l];
        free(L->attn_norm);
        free(L->ffn_norm);
        free(L->router_bias);
        fp_rows_release(&L->router);
        fp_rows_release(&L->k);
        fp_rows_release(&L->v);
    }
    free(fp->layers);
    fp->layers = NULL;
}

void fp_embed_release(cks_fingerprint *fp)
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

/* The step of a column's 16-level quantiser, in standard deviations: whichever of these gives
 * the column the least squared error. 0.3352 is Max's (1960, "Quantizing for minimum
 * distortion") optimum for a Gaussian (distortion 0.01154: a cosine of 0.994 between a column
 * and its codes); wider steps serve heavy-tailed columns (Student-t with 3 degrees of freedom:
 * mean cosine 0.93 at 0.3352 alone, 0.95 with the choice). */
static const double fp_q4_steps[] = {0.3352, 0.4, 0.5, 0.65, 0.85, 1.1, 1.5};

/* Bytes of n 4-bit codes packed two per byte (the stored array; allocations add a spare). */
size_t fp_q4_bytes(size_t n)
{
    return n / 2 + n % 2;
}

/* The value a code stands for; build and decode both use this, so they agree to the bit. */
float fp_q4_value(float offset, float step, unsigned code)
{
    return offset + step * ((float)code - 7.5f);
}

unsigned fp_q4_code_at(const uint8_t *codes, size_t i)
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
                d = x - fp_q4_value(fp->embed_qoff[c], step, q4_code(x, fp->embed_qoff[c], step));
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
        fp->embed[i] = fp_q4_value(fp->embed_qoff[c], fp->embed_qstep[c], code);
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
    fp_layers_release(fp);
    fp_embed_release(fp);
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
cks_err fp_ckpt_assemble(const char *name, size_t n_files, cks_st_header **headers, char **paths,
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

cks_err fp_header_copy(const cks_st_header *src, cks_st_header **out, cks_diag *diag)
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
    uint32_t u = fp_f32_bits(f), sign = (u >> 16) & 0x8000u;
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
            cks_put_le32(out + 4 * i, fp_f32_bits(f));
            break;
        case CKS_DTYPE_BF16: {
            uint32_t u = fp_f32_bits(f);
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
void fp_attach_raw(cks_fingerprint *fp)
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
