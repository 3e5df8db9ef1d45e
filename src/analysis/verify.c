/*
 * verify.c — checking an upload (include/ckptscope/verify.h): findings, per-file records,
 * sampled and full value checks, whole-file SHA-256, and the screen of known models. Moved out
 * of the CLI's `verify` command (issue 17), which keeps its options, printing and exit codes.
 */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "ckptscope/decode.h"
#include "ckptscope/hex.h"
#include "ckptscope/hub.h"
#include "ckptscope/verify.h"

#define SAMPLE_BYTES (64u << 10)
#define SAMPLE_MIN (3u << 9)
#define SAMPLE_TOTAL (64ull << 20)
#define SAMPLE_MIDDLE_MAX 4096u
#define HASH_CHUNK (8u << 20)
#define SCREEN_P 0.01
#define SCREEN_Z 3.0

void cks_verify_report_init(cks_verify_report *r, size_t max_problems, size_t max_warnings)
{
    memset(r, 0, sizeof *r);
    r->problems.max = max_problems;
    r->warnings.max = max_warnings;
}

static void findings_free(cks_verify_findings *f)
{
    for (size_t i = 0; i < f->n; i++) {
        free(f->items[i].file);
        free(f->items[i].tensor);
        free(f->items[i].detail);
    }
    free(f->items);
}

bool cks_verify_add_finding(cks_verify_findings *fs, const char *rule, const char *file, const char *tensor,
                            const char *fmt, ...)
{
    bool ok = true;
    cks_verify_finding f;
    va_list ap;
    int n;

    memset(&f, 0, sizeof f);
    for (size_t i = 0; i < fs->n; i++)
        if (strcmp(fs->items[i].rule, rule) == 0 && !fs->items[i].file == !file &&
            (!file || strcmp(fs->items[i].file, file) == 0) && !fs->items[i].tensor == !tensor &&
            (!tensor || strcmp(fs->items[i].tensor, tensor) == 0))
            goto out;
    if (fs->n == fs->max) {
        fs->omitted++;
        goto out;
    }
    if (fs->n == fs->cap) {
        size_t ncap = fs->cap ? fs->cap * 2 : 16;
        cks_verify_finding *grown = realloc(fs->items, ncap * sizeof *grown);
        if (!grown) {
            ok = false;
            goto out;
        }
        fs->items = grown;
        fs->cap = ncap;
    }
    snprintf(f.rule, sizeof f.rule, "%s", rule);
    va_start(ap, fmt);
    n = vasprintf(&f.detail, fmt, ap);
    va_end(ap);
    if (n < 0)
        f.detail = NULL;
    f.file = file ? strdup(file) : NULL;
    f.tensor = tensor ? strdup(tensor) : NULL;
    if (!f.detail || (file && !f.file) || (tensor && !f.tensor)) {
        if (n >= 0)
            free(f.detail);
        free(f.file);
        free(f.tensor);
        ok = false;
        goto out;
    }
    fs->items[fs->n++] = f;
out:
    return ok;
}

/* The first thing that could not be checked is the one reported. */
void cks_verify_set_error(cks_verify_report *v, cks_err err, const char *file, const char *detail)
{
    if (!v->have_error) {
        v->have_error = true;
        v->error = err;
        snprintf(v->error_file, sizeof v->error_file, "%s", file ? file : "");
        snprintf(v->error_detail, sizeof v->error_detail, "%s", detail);
        snprintf(v->error_text, sizeof v->error_text, "%s%s%s: %s", file ? file : "", file ? ": " : "",
                 cks_strerror(err), detail);
    }
}

/* The record of the file at path, or NULL. */
static cks_verify_file *file_record(cks_verify_report *v, const char *path)
{
    for (size_t i = 0; i < v->n_files; i++)
        if (strcmp(v->files[i].path, path) == 0)
            return &v->files[i];
    return NULL;
}

/* Everything the library's check found: problems, per-file sizes, what could not be checked. */
bool cks_verify_take_check(cks_verify_report *v, const cks_ckpt_check *c)
{
    bool ok = true;
    for (size_t i = 0; i < c->n_problems && ok; i++) {
        const cks_ckpt_problem *p = &c->problems[i];
        ok = cks_verify_add_finding(&v->problems, cks_strerror(p->rule), p->file, p->tensor, "%s", p->detail);
    }
    v->problems.omitted += c->n_omitted;
    v->unchecked_entries += c->n_unchecked_entries;
    for (size_t f = 0; f < c->n_files && ok; f++) {
        const cks_ckpt_file_check *fc = &c->files[f];
        cks_verify_file *e;
        if (v->n_files == v->cap_files) {
            size_t cap = v->cap_files ? 2 * v->cap_files : 8;
            cks_verify_file *grown = realloc(v->files, cap * sizeof *grown);
            if (!grown) {
                ok = false;
                break;
            }
            v->files = grown;
            v->cap_files = cap;
        }
        e = &v->files[v->n_files];
        memset(e, 0, sizeof *e);
        e->sha256_match = -1;
        if (!(e->path = strdup(fc->path))) {
            ok = false;
            break;
        }
        v->n_files++;
        e->size_known = fc->size_known;
        e->size = fc->size;
        e->served_known = fc->served_known;
        e->served_size = fc->served_size;
        e->implied_known = fc->implied_known;
        e->implied_size = fc->implied_size;
        e->header_known = fc->header_read;
        e->header_bytes = fc->header_len;
        e->header_valid = fc->header_valid;
        snprintf(e->sha256, sizeof e->sha256, "%s", fc->sha256);
        if (fc->error) {
            if (asprintf(&e->error, "%s: %s", cks_strerror(fc->error), fc->error_detail ? fc->error_detail : "") < 0) {
                e->error = NULL;
                ok = false;
            }
            cks_verify_set_error(v, fc->error, fc->path, fc->error_detail ? fc->error_detail : "");
        }
    }
    if (ok && c->n_unchecked_entries)
        ok = cks_verify_add_finding(&v->warnings, "IndexNotChecked", c->index_path, NULL,
                         "%zu index entries point to shards whose header could not be read; they were not "
                         "checked",
                         c->n_unchecked_entries);
    return ok;
}

/*
 * A read of file f failed. A property of the upload (a SHA-256 unlike the Hub's, a served
 * size unlike the listed one, a format rule) becomes a problem of that file and the file is
 * read no further (*bad); CKS_OK then. Anything else could not be checked: returned.
 */
static cks_err read_failure(cks_verify_report *v, const cks_ckpt *ckpt, size_t f, cks_err e, const cks_diag *d,
                            bool *bad, cks_diag *diag)
{
    cks_err err = CKS_OK;
    const char *path = ckpt->files[f].path;
    const cks_source *src = ckpt->files[f].source;
    char computed[65];
    cks_verify_file *entry = file_record(v, path);

    if (e == CKS_ERR_INTEGRITY && cks_remote_source_sha_check(src, computed) < 0) {
        if (entry && !entry->sha256_computed[0]) {
            snprintf(entry->sha256_computed, sizeof entry->sha256_computed, "%s", computed);
            entry->sha256_match = 0;
        }
        if (!cks_verify_add_finding(&v->problems, "Sha256Mismatch", path, NULL,
                         "the bytes served hash to SHA-256 %s, but the Hub's LFS SHA-256 is %s", computed,
                         src->sha256_hex))
            err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
    } else if (cks_err_class_of(e) == CKS_CLASS_FORMAT) {
        if (!cks_verify_add_finding(&v->problems, cks_strerror(e), path, NULL, "%s", d->text))
            err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
    } else {
        err = e;
        if (diag)
            *diag = *d;
    }
    *bad = true;
    return err;
}

/* Where the sampled blocks of a tensor lie (offsets into its data, UINT64_MAX: none), for a
 * per-tensor budget `per`; sample_all prefetches exactly these. */
static uint64_t sample_blocks(const cks_tensor_info *info, uint64_t per, bool middle, uint64_t offs[3])
{
    size_t esize = cks_decode_elem_size(info->dtype);
    uint64_t size = info->end - info->begin, block = per / 3;
    offs[0] = offs[1] = offs[2] = UINT64_MAX;
    if (!esize || !cks_dtype_is_float(info->dtype) || size == 0)
        return 0;
    block -= block % esize;
    if (block == 0)
        block = esize;
    offs[0] = 0;
    if (size <= 3 * block)
        return size;
    if (middle)
        offs[1] = (size / 2) - (size / 2) % esize;
    offs[2] = size - block;
    return block;
}

/* The sampled blocks of one float tensor: NaN/Inf anywhere is invalid; all zero is suspicious. */
static cks_err sample_tensor(const cks_ckpt *ckpt, const cks_ckpt_tensor *t, uint64_t per, bool middle,
                             cks_verify_report *v, cks_diag *diag)
{
    cks_err err = CKS_OK;
    const cks_tensor_info *info = t->info;
    const char *path = ckpt->files[t->file].path;
    size_t esize = cks_decode_elem_size(info->dtype);
    uint64_t offs[3], block = sample_blocks(info, per, middle, offs);
    uint8_t *buf = NULL;
    double *vals = NULL;
    bool all_zero = true;
    cks_nonfinite tally = {0, 0};

    if (block == 0)
        goto out;
    buf = malloc((size_t)block);
    vals = malloc((size_t)(block / esize) * sizeof *vals);
    if (!buf || !vals) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        goto out;
    }
    for (int i = 0; i < 3 && !err; i++) {
        if (offs[i] == UINT64_MAX)
            continue;
        err = cks_ckpt_read_tensor(ckpt, t, offs[i], buf, (size_t)block, diag);
        /* in double: an F64 beyond float's range is finite, not Inf */
        if (!err)
            err = cks_decode_f64(info->dtype, buf, (size_t)(block / esize), vals, &tally, diag);
        for (uint64_t k = 0; !err && k < block && all_zero; k++)
            all_zero = buf[k] == 0;
        v->sampled_bytes += block;
    }
    if (err)
        goto out;
    v->sampled++;
    /* with --full every value is checked while hashing, and that check reports the counts */
    if ((tally.nan_count || tally.inf_count) && !v->values.full) {
        if (!cks_verify_add_finding(&v->problems, "NonFinite", path, info->name,
                         "tensor \"%s\": %llu NaN and %llu Inf values in the sampled rows", info->name,
                         (unsigned long long)tally.nan_count, (unsigned long long)tally.inf_count))
            err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        v->nan_tensors++;
    } else if (all_zero && info->nelements >= 64) {
        /* zero-initialised biases exist: a warning, not a rejection */
        if (!cks_verify_add_finding(&v->warnings, "AllZero", path, info->name, "tensor \"%s\" is all zeros on the sampled rows",
                         info->name))
            err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        v->zero_tensors++;
    }
out:
    free(buf);
    free(vals);
    return err;
}

/* Sampled blocks of every float tensor, one prefetch per file; a file that cannot be read is
 * reported and skipped, the others are still sampled. */
static cks_err sample_all(const cks_ckpt *ckpt, cks_verify_report *v, bool *bad, cks_diag *diag)
{
    cks_err err = CKS_OK, e;
    cks_diag d;
    cks_range *ranges = NULL;
    cks_source **srcs = NULL;
    size_t cap, n_float = 0, n = 0, *file_first = calloc(ckpt->n_files + 1, sizeof *file_first),
                *file_n = calloc(ckpt->n_files + 1, sizeof *file_n);
    uint64_t per;
    bool middle;

    for (size_t i = 0; i < ckpt->n_tensors; i++)
        n_float += cks_dtype_is_float(ckpt->tensors[i].info->dtype) &&
                   ckpt->tensors[i].info->end > ckpt->tensors[i].info->begin;
    per = SAMPLE_TOTAL / (n_float ? n_float : 1);
    per = per < SAMPLE_MIN ? SAMPLE_MIN : per > SAMPLE_BYTES ? SAMPLE_BYTES : per;
    middle = n_float <= SAMPLE_MIDDLE_MAX;
    if (!file_first || !file_n || __builtin_mul_overflow(ckpt->n_tensors ? ckpt->n_tensors : 1, (size_t)3, &cap) ||
        !(ranges = malloc(cap * sizeof *ranges)) || !(srcs = malloc(cap * sizeof *srcs))) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        goto out;
    }
    for (size_t f = 0; f < ckpt->n_files; f++) {
        file_first[f] = n;
        for (size_t i = 0; i < ckpt->n_tensors; i++) {
            const cks_tensor_info *info = ckpt->tensors[i].info;
            uint64_t offs[3], len = sample_blocks(info, per, middle, offs);
            for (int k = 0; k < 3 && ckpt->tensors[i].file == f && len; k++)
                if (offs[k] != UINT64_MAX) {
                    srcs[n] = ckpt->files[f].source;
                    ranges[n].offset = info->file_offset + offs[k];
                    ranges[n++].length = len;
                }
        }
        file_n[f] = n - file_first[f];
    }
    /* every file's blocks in one parallel round (one round per shard cost ~1 s each on a
     * 47-shard model over a 40 ms link); a failing round is redone file by file to say which
     * file could not be read */
    if (n && cks_source_prefetch_many(srcs, ranges, n, &d) != CKS_OK)
        for (size_t f = 0; f < ckpt->n_files && !err; f++) {
            e = file_n[f] ? cks_source_prefetch(ckpt->files[f].source, ranges + file_first[f], file_n[f], &d) : CKS_OK;
            if (e)
                err = read_failure(v, ckpt, f, e, &d, &bad[f], diag);
        }
    for (size_t i = 0; i < ckpt->n_tensors && !err; i++) {
        size_t f = ckpt->tensors[i].file;
        if (bad[f])
            continue;
        e = sample_tensor(ckpt, &ckpt->tensors[i], per, middle, v, &d);
        if (e == CKS_ERR_NOMEM)
            err = cks_fail(diag, e, "%s", d.text);
        else if (e)
            err = read_failure(v, ckpt, f, e, &d, &bad[f], diag);
    }
    /* the sampled bytes are in the cache; the sources need not keep them in memory */
    for (size_t f = 0; f < ckpt->n_files; f++)
        cks_source_trim(ckpt->files[f].source);
out:
    free(ranges);
    free(srcs);
    free(file_first);
    free(file_n);
    return err;
}

/*
 * --full's value check: every element of every float tensor, decoded from the bytes as they
 * stream past for the SHA-256 (no second read, the decoders of src/core/decode.c). A file's tensors
 * lie back to back in offset order, so one cursor walks them; an element cut by a chunk boundary
 * waits in `carry`. Complex (C64) tensors are checked as pairs of F32; F4 and F6 have no NaN or
 * Inf encoding, so there is nothing to check in them.
 */
#define SCAN_BATCH 4096

typedef struct value_scan {
    const cks_ckpt_tensor **order; /* the file's tensors by offset */
    size_t n, at;
    uint8_t carry[8];
    size_t carry_len;
    cks_nonfinite tally;           /* of the current tensor */
    uint64_t values, bytes;        /* of the current tensor */
    double scratch[SCAN_BATCH];
} value_scan;

/* The dtype to decode a tensor's elements as (C64: its F32 halves), or INVALID when there is
 * nothing to check (not a float, or a float without NaN/Inf). */
static cks_dtype scan_dtype(const cks_tensor_info *info)
{
    if (info->dtype == CKS_DTYPE_C64)
        return CKS_DTYPE_F32;
    if (!cks_dtype_is_float(info->dtype) || !cks_decode_elem_size(info->dtype))
        return CKS_DTYPE_INVALID;
    return info->dtype;
}

static int by_offset(const void *x, const void *y)
{
    const cks_ckpt_tensor *a = *(const cks_ckpt_tensor *const *)x, *b = *(const cks_ckpt_tensor *const *)y;
    return (a->info->file_offset > b->info->file_offset) - (a->info->file_offset < b->info->file_offset);
}

static cks_err scan_decode(value_scan *vs, cks_dtype dt, const uint8_t *p, size_t count, cks_diag *diag)
{
    cks_err err = CKS_OK;
    size_t esize = cks_decode_elem_size(dt);
    for (size_t done = 0; done < count && !err; done += SCAN_BATCH) {
        size_t k = count - done < SCAN_BATCH ? count - done : SCAN_BATCH;
        err = cks_decode_f64(dt, p + done * esize, k, vs->scratch, &vs->tally, diag);
    }
    vs->values += count;
    return err;
}

static cks_err scan_feed(value_scan *vs, cks_dtype dt, const uint8_t *p, size_t len, cks_diag *diag)
{
    cks_err err = CKS_OK;
    size_t esize = cks_decode_elem_size(dt), whole;
    vs->bytes += len;
    if (vs->carry_len) {
        size_t need = esize - vs->carry_len, take = len < need ? len : need;
        memcpy(vs->carry + vs->carry_len, p, take);
        vs->carry_len += take;
        p += take;
        len -= take;
        if (vs->carry_len < esize)
            return CKS_OK;
        err = scan_decode(vs, dt, vs->carry, 1, diag);
        vs->carry_len = 0;
    }
    whole = len / esize;
    if (!err && whole)
        err = scan_decode(vs, dt, p, whole, diag);
    memcpy(vs->carry, p + whole * esize, len - whole * esize);
    vs->carry_len = len - whole * esize;
    return err;
}

/* The current tensor is done: count it, and report NaN/Inf. */
static bool scan_finish(value_scan *vs, const cks_ckpt *ckpt, cks_verify_report *v)
{
    const cks_ckpt_tensor *t = vs->order[vs->at];
    bool ok = true;
    if (scan_dtype(t->info) != CKS_DTYPE_INVALID) {
        v->values.tensors_checked++;
        v->values.values_checked += vs->values;
        v->values.bytes_checked += vs->bytes;
        if (vs->tally.nan_count || vs->tally.inf_count) {
            ok = cks_verify_add_finding(&v->problems, "NonFinite", ckpt->files[t->file].path, t->info->name,
                             "tensor \"%s\": %llu NaN and %llu Inf values (every value checked)", t->info->name,
                             (unsigned long long)vs->tally.nan_count, (unsigned long long)vs->tally.inf_count);
            v->nan_tensors++;
        }
    }
    memset(&vs->tally, 0, sizeof vs->tally);
    vs->values = vs->bytes = 0;
    vs->carry_len = 0;
    vs->at++;
    return ok;
}

/* The bytes [pos, pos + len) of the file, just read. */
static cks_err scan_bytes(value_scan *vs, const cks_ckpt *ckpt, uint64_t pos, const uint8_t *data, size_t len,
                          cks_verify_report *v, cks_diag *diag)
{
    cks_err err = CKS_OK;
    uint64_t start = pos, end = pos + len;
    while (!err && vs->at < vs->n) {
        const cks_tensor_info *info = vs->order[vs->at]->info;
        uint64_t ts = info->file_offset, te = ts + (info->end - info->begin);
        cks_dtype dt = scan_dtype(info);
        if (te <= pos) { /* done (or empty) */
            if (!scan_finish(vs, ckpt, v))
                err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
            continue;
        }
        if (ts >= end)
            break;
        if (ts > pos)
            pos = ts;
        uint64_t stop = te < end ? te : end;
        if (dt != CKS_DTYPE_INVALID)
            err = scan_feed(vs, dt, data + (pos - start), (size_t)(stop - pos), diag);
        pos = stop;
        if (pos < te)
            break; /* the tensor goes on in the next chunk */
    }
    return err;
}

/* --full: each file streamed through SHA-256 and compared with the Hub's LFS hash, and every
 * value of its float tensors checked for NaN/Inf on the way. */
static cks_err hash_files(const cks_ckpt *ckpt, cks_verify_report *v, bool *bad,
                          void (*progress)(void *ctx, uint64_t done, uint64_t total), void *ctx, cks_diag *diag)
{
    cks_err err = CKS_OK, e = CKS_OK;
    cks_diag d;
    uint8_t *buf = malloc(HASH_CHUNK);
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    value_scan *vs = calloc(1, sizeof *vs);
    uint64_t total = 0, done = 0;

    if (!buf || !md || !vs || !(vs->order = calloc(ckpt->n_tensors ? ckpt->n_tensors : 1, sizeof *vs->order))) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        goto out;
    }
    for (size_t f = 0; f < ckpt->n_files; f++)
        total += bad[f] ? 0 : ckpt->files[f].source->size;
    for (size_t f = 0; f < ckpt->n_files && !err; f++) {
        cks_source *src = ckpt->files[f].source;
        const char *path = ckpt->files[f].path;
        uint8_t digest[32];
        unsigned int dlen = 0;
        char hex[65];
        cks_verify_file *entry = file_record(v, path);
        if (bad[f])
            continue;
        if (EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1) {
            err = cks_fail(diag, CKS_ERR_NOMEM, "cannot set up SHA-256");
            break;
        }
        vs->n = vs->at = 0;
        for (size_t i = 0; i < ckpt->n_tensors; i++)
            if (ckpt->tensors[i].file == f)
                vs->order[vs->n++] = &ckpt->tensors[i];
        qsort(vs->order, vs->n, sizeof *vs->order, by_offset);
        /* a copy that can be checked first is (HF_HOME, bytes cached by earlier runs): the
         * upload is judged on the file the Hub serves, never on a damaged copy of it */
        e = cks_source_check_whole(src, &d);
        for (uint64_t off = 0; off < src->size && !e; off += HASH_CHUNK) {
            size_t len = src->size - off < HASH_CHUNK ? (size_t)(src->size - off) : HASH_CHUNK;
            e = cks_source_read_at(src, off, buf, len, &d);
            if (!e) {
                EVP_DigestUpdate(md, buf, len);
                v->hashed_bytes += len;
                e = scan_bytes(vs, ckpt, off, buf, len, v, &d);
                done += len;
                if (progress)
                    progress(ctx, done, total);
            }
        }
        if (!e)
            e = scan_bytes(vs, ckpt, src->size, buf, 0, v, &d); /* empty tensors at the very end */
        if (e == CKS_ERR_NOMEM) {
            err = cks_fail(diag, e, "%s", d.text);
            break;
        }
        if (e) {
            err = read_failure(v, ckpt, f, e, &d, &bad[f], diag);
            continue;
        }
        EVP_DigestFinal_ex(md, digest, &dlen);
        cks_hex_encode(digest, 32, hex);
        if (entry)
            snprintf(entry->sha256_computed, sizeof entry->sha256_computed, "%s", hex);
        if (!src->sha256_hex[0]) {
            if (entry)
                entry->sha256_match = -1;
            if (!cks_verify_add_finding(&v->warnings, "NoServerSha256", path, NULL,
                             "no SHA-256 from the server to check against (local file or plain URL)"))
                err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        } else {
            bool match = strcmp(hex, src->sha256_hex) == 0;
            if (entry)
                entry->sha256_match = match;
            if (!match && !cks_verify_add_finding(&v->problems, "Sha256Mismatch", path, NULL,
                                       "the bytes hash to SHA-256 %s, but the Hub's LFS SHA-256 is %s", hex,
                                       src->sha256_hex))
                err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        }
    }
out:
    if (vs)
        free((void *)vs->order);
    free(vs);
    EVP_MD_CTX_free(md);
    free(buf);
    return err;
}

/* Sampling, and with --full hashing, of a checkpoint's files; a file that cannot be read as
 * listed is a problem (or, for network and access failures, the run could not check). */
cks_err cks_verify_read(const cks_ckpt *ckpt, cks_verify_report *v, bool full,
                        void (*progress)(void *ctx, uint64_t done, uint64_t total), void *ctx, cks_diag *diag)
{
    cks_err err = CKS_OK;
    bool *bad = calloc(ckpt->n_files ? ckpt->n_files : 1, sizeof *bad);
    if (!bad) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        goto out;
    }
    v->values.full = full;
    for (size_t i = 0; i < ckpt->n_tensors; i++) {
        const cks_tensor_info *info = ckpt->tensors[i].info;
        if (!cks_dtype_is_float(info->dtype) && info->dtype != CKS_DTYPE_C64)
            continue;
        v->values.float_tensors++;
        v->values.float_bytes += info->end - info->begin;
        v->values.no_encoding += scan_dtype(info) == CKS_DTYPE_INVALID;
    }
    err = sample_all(ckpt, v, bad, diag);
    if (!err && full)
        err = hash_files(ckpt, v, bad, progress, ctx, diag);
    if (full)
        v->values.unread = v->values.float_tensors - v->values.no_encoding - v->values.tensors_checked;
out:
    free(bad);
    return err;
}

void cks_verify_report_release(cks_verify_report *r)
{
    findings_free(&r->problems);
    findings_free(&r->warnings);
    for (size_t i = 0; i < r->n_files; i++) {
        free(r->files[i].path);
        free(r->files[i].error);
    }
    free(r->files);
    memset(r, 0, sizeof *r);
}

bool cks_verify_screen_clears(const cks_compare_result *r, double *max_z, double *min_p)
{
    bool clears = true, any_ran = false;
    *max_z = -INFINITY;
    *min_p = 1;
    for (size_t i = 0; i < r->n_tests; i++) {
        const cks_test_result *t = &r->tests[i];
        if (!t->primary || !t->ran)
            continue;
        any_ran = true;
        if (isfinite(t->z) && t->z > *max_z)
            *max_z = t->z;
        if (isfinite(t->p_value) && t->p_value < *min_p)
            *min_p = t->p_value;
        /* near significance AND an effect that is not far under its floor: only such a test
         * could make a verdict of derived in the full comparison */
        if (t->rejects || (((isfinite(t->p_value) && t->p_value <= SCREEN_P) || (isfinite(t->z) && t->z >= SCREEN_Z)) &&
                           !(isfinite(t->floor) && isfinite(t->effect) && t->effect < t->floor / 2)))
            clears = false;
    }
    /* nothing compared is no evidence of distance: a derivative whose tensors the fingerprint
     * cannot compare (plain MLPs, adapters, heads) gets the full comparison, which says so
     * (inconclusive) as a plain compare does. The screen's own verdict is inconclusive for most
     * unrelated pairs (it runs without the power checks that not_derived needs): not a reason. */
    return clears && any_ran && r->verdict != CKS_VERDICT_IDENTICAL && r->verdict != CKS_VERDICT_DERIVED;
}
