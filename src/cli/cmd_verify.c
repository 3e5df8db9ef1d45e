/*
 * ckptscope verify SOURCE [--against FILE_OR_DIR ...] [--full] — is a new upload well-formed,
 * complete, what the Hub says it is, and is it a silent copy or derivative of a known model?
 *
 * Validation reuses the checkpoint opener (every format rule on every shard, the index against
 * the shard headers, truncation, LFS pointers); when it fails, the library's file-by-file
 * check (cks_ckpt_check_*) finds every problem instead of the first. Each file's size is
 * compared three ways (the Hub's listing, the CDN's Content-Range total, the header). Then
 * rows of every float tensor are sampled for NaN/Inf and all-zero blocks, and with --full each
 * file is streamed through SHA-256 against the Hub's LFS hash. Provenance compares the upload
 * against each fingerprint given (the fingerprint as A), and lists the nearest known models
 * first.
 */
#include <dirent.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "ckptscope/compare.h"
#include "ckptscope/decode.h"
#include "ckptscope/fingerprint.h"
#include "ckptscope/fingerprint_library.h"
#include "ckptscope/hub.h"
#include "cli.h"

/* NaN/Inf and all-zero sampling: per upload about SAMPLE_TOTAL, shared out over the float
 * tensors, each between SAMPLE_MIN and SAMPLE_BYTES in three blocks (start, middle, end). A
 * 100B MoE has ~18,000 tensors: 256 MiB at 64 KiB each read 1.3 GB in 38,000 requests (100 s,
 * 1.4 GB of memory, bench/fingerprint). Past SAMPLE_MIDDLE_MAX tensors only the start and end
 * blocks are read: the end of one tensor and the start of the next are adjacent in the file, so
 * they travel in one request. */
#define SAMPLE_BYTES (64u << 10)
#define SAMPLE_MIN (3u << 9)
#define SAMPLE_TOTAL (64ull << 20)
#define SAMPLE_MIDDLE_MAX 4096u
#define TEXT_WARNINGS_MAX 20
#define HASH_CHUNK (8u << 20)
#define MAX_AGAINST 64
#define MAX_FPS 4096

static const char verify_help[] =
    "usage: ckptscope verify [OPTIONS] SOURCE [--against FILE_OR_DIR ...] [--full]\n"
    "\n"
    "Validation: every safetensors rule on every shard, the index against the shard headers,\n"
    "each file's size as the Hub lists it, as its CDN serves it (Content-Range) and as its\n"
    "header implies, truncated files and Git-LFS pointers, and NaN/Inf or all-zero values on\n"
    "sampled rows of every float tensor. When the checkpoint does not open, each file is\n"
    "checked on its own so that every problem is reported. --full also streams each file\n"
    "through SHA-256 and checks it against the Hub's LFS hash (no copy on disk besides the\n"
    "cache's), and checks every value of every float tensor for NaN/Inf as it streams past.\n"
    "The output says what was checked and what was not (sampled blocks without --full).\n"
    "Provenance: with --against, compares SOURCE against each fingerprint (a file, or every\n"
    "fingerprint in a directory; see `ckptscope fingerprint`) and lists the nearest known\n"
    "models with their verdicts.\n"
    "\n"
    "options:\n"
    "  --against F      a fingerprint file, a directory of them, or a library made by\n"
    "                   `fingerprint gather` (repeatable)\n"
    "  --full           SHA-256 of every file against the Hub's, and every value of every\n"
    "                   float tensor checked for NaN/Inf on the way\n"
    "  --no-synthetic   skip compare's synthetic power checks in full comparisons\n"
    "  --no-screen      compare fully against every fingerprint (default: a quick screen\n"
    "                   first, 99 permutations and no power checks; a fingerprint the\n"
    "                   screen sees nothing of is listed as screened_out, the others are\n"
    "                   compared fully)\n"
    "  --json           machine-readable result (docs/json.md)\n"
    "  --quiet          no progress on stderr\n"
    "  --help           this text\n"
    "\n"
    "Without --against the outcome is \"valid\" (provenance not checked), never \"unrelated\";\n"
    "an --against directory holding no fingerprint is an error (exit 2).\n"
    "\n"
    "exit status: 0 valid and not related to any fingerprint given (warnings allowed); 1\n"
    "identical to or derived from a known model; 3 invalid upload (every problem is listed\n"
    "with its rule and file); 4/5/6 could not check (I/O, network, access).\n"
    "\n"
    "examples:\n"
    "  ckptscope verify org/new-upload --full\n"
    "  ckptscope verify org/new-upload --against known/ --json\n";

#define MAX_PROBLEMS 2000
#define MAX_WARNINGS 256

/* One finding: a problem (the upload is invalid) or a warning. file/tensor NULL when none. */
typedef struct finding {
    char rule[48];
    char *file;
    char *tensor;
    char *detail;
} finding;

typedef struct findings {
    finding *items;
    size_t n, cap, omitted, max;
} findings;

/* What --full's value check covered and what it did not. */
typedef struct value_check {
    bool full;                 /* every value (--full) rather than sampled blocks */
    size_t float_tensors;      /* float (and complex) tensors of the files opened */
    uint64_t float_bytes;      /* their bytes */
    size_t tensors_checked;    /* every value seen (--full) */
    uint64_t bytes_checked, values_checked;
    size_t no_encoding;        /* F4/F6: no NaN or Inf exists in the format, nothing to check */
    size_t unread;             /* in a file that could not be read (see problems / error) */
} value_check;

typedef struct verify_state {
    findings problems, warnings;
    size_t sampled, nan_tensors, zero_tensors;
    uint64_t sampled_bytes;
    value_check values;
    uint64_t hashed_bytes;
    cJSON *files;            /* checks.files: one object per file (path, sizes, hashes) */
    bool file_by_file;       /* opening failed; the files were checked one by one */
    size_t unchecked_entries;
    bool have_error;         /* something could not be checked (network, access, I/O) */
    cks_err error;
    char error_text[CKS_DIAG_MAX + 512];
    char error_file[512];
    char error_detail[CKS_DIAG_MAX];
    bool against;            /* --against was given: provenance was checked */
} verify_state;

static void findings_free(findings *f)
{
    for (size_t i = 0; i < f->n; i++) {
        free(f->items[i].file);
        free(f->items[i].tensor);
        free(f->items[i].detail);
    }
    free(f->items);
}

/* Add a finding unless the same rule was already found for the same file and tensor.
 * False only when out of memory. */
static bool add_finding(findings *fs, const char *rule, const char *file, const char *tensor, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

static bool add_finding(findings *fs, const char *rule, const char *file, const char *tensor, const char *fmt, ...)
{
    bool ok = true;
    finding f;
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
        finding *grown = realloc(fs->items, ncap * sizeof *grown);
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
static void set_error(verify_state *v, cks_err err, const char *file, const char *detail)
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

static cJSON *file_json(const verify_state *v, const char *path)
{
    cJSON *e, *found = NULL;
    cJSON_ArrayForEach(e, v->files) {
        const cJSON *p = cJSON_GetObjectItemCaseSensitive(e, "path");
        if (!found && cJSON_IsString(p) && strcmp(p->valuestring, path) == 0)
            found = e;
    }
    return found;
}

static void add_size(cJSON *o, const char *key, bool known, uint64_t value)
{
    if (known)
        cJSON_AddNumberToObject(o, key, (double)value);
    else
        cJSON_AddNullToObject(o, key);
}

/* Everything the library's check found: problems, per-file sizes, what could not be checked. */
static bool take_check(verify_state *v, const cks_ckpt_check *c)
{
    bool ok = true;
    for (size_t i = 0; i < c->n_problems && ok; i++) {
        const cks_ckpt_problem *p = &c->problems[i];
        ok = add_finding(&v->problems, cks_strerror(p->rule), p->file, p->tensor, "%s", p->detail);
    }
    v->problems.omitted += c->n_omitted;
    v->unchecked_entries += c->n_unchecked_entries;
    for (size_t f = 0; f < c->n_files && ok; f++) {
        const cks_ckpt_file_check *fc = &c->files[f];
        cJSON *e = cJSON_CreateObject();
        cJSON_AddStringToObject(e, "path", fc->path);
        add_size(e, "size", fc->size_known, fc->size);
        add_size(e, "served_size", fc->served_known, fc->served_size);
        add_size(e, "header_implied_size", fc->implied_known, fc->implied_size);
        add_size(e, "header_bytes", fc->header_read, fc->header_len);
        cJSON_AddBoolToObject(e, "header_valid", fc->header_valid);
        if (fc->sha256[0])
            cJSON_AddStringToObject(e, "sha256", fc->sha256);
        else
            cJSON_AddNullToObject(e, "sha256");
        if (fc->error) {
            char text[CKS_DIAG_MAX + 64];
            snprintf(text, sizeof text, "%s: %s", cks_strerror(fc->error), fc->error_detail ? fc->error_detail : "");
            cJSON_AddStringToObject(e, "error", text);
            set_error(v, fc->error, fc->path, fc->error_detail ? fc->error_detail : "");
        }
        cJSON_AddItemToArray(v->files, e);
    }
    if (ok && c->n_unchecked_entries)
        ok = add_finding(&v->warnings, "IndexNotChecked", c->index_path, NULL,
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
static cks_err read_failure(verify_state *v, const cks_ckpt *ckpt, size_t f, cks_err e, const cks_diag *d,
                            bool *bad, cks_diag *diag)
{
    cks_err err = CKS_OK;
    const char *path = ckpt->files[f].path;
    const cks_source *src = ckpt->files[f].source;
    char computed[65];
    cJSON *entry = file_json(v, path);

    if (e == CKS_ERR_INTEGRITY && cks_remote_source_sha_check(src, computed) < 0) {
        if (entry && !cJSON_GetObjectItemCaseSensitive(entry, "sha256_computed")) {
            cJSON_AddStringToObject(entry, "sha256_computed", computed);
            cJSON_AddBoolToObject(entry, "sha256_match", false);
        }
        if (!add_finding(&v->problems, "Sha256Mismatch", path, NULL,
                         "the bytes served hash to SHA-256 %s, but the Hub's LFS SHA-256 is %s", computed,
                         src->sha256_hex))
            err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
    } else if (cks_err_class_of(e) == CKS_CLASS_FORMAT) {
        if (!add_finding(&v->problems, cks_strerror(e), path, NULL, "%s", d->text))
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
                             verify_state *v, cks_diag *diag)
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
        if (!add_finding(&v->problems, "NonFinite", path, info->name,
                         "tensor \"%s\": %llu NaN and %llu Inf values in the sampled rows", info->name,
                         (unsigned long long)tally.nan_count, (unsigned long long)tally.inf_count))
            err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        v->nan_tensors++;
    } else if (all_zero && info->nelements >= 64) {
        /* zero-initialised biases exist: a warning, not a rejection */
        if (!add_finding(&v->warnings, "AllZero", path, info->name, "tensor \"%s\" is all zeros on the sampled rows",
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
static cks_err sample_all(const cks_ckpt *ckpt, verify_state *v, bool *bad, cks_diag *diag)
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
static bool scan_finish(value_scan *vs, const cks_ckpt *ckpt, verify_state *v)
{
    const cks_ckpt_tensor *t = vs->order[vs->at];
    bool ok = true;
    if (scan_dtype(t->info) != CKS_DTYPE_INVALID) {
        v->values.tensors_checked++;
        v->values.values_checked += vs->values;
        v->values.bytes_checked += vs->bytes;
        if (vs->tally.nan_count || vs->tally.inf_count) {
            ok = add_finding(&v->problems, "NonFinite", ckpt->files[t->file].path, t->info->name,
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
                          verify_state *v, cks_diag *diag)
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
static cks_err hash_files(const cks_ckpt *ckpt, verify_state *v, bool *bad, const cli_opts *opts, cks_diag *diag)
{
    cks_err err = CKS_OK, e = CKS_OK;
    cks_diag d;
    uint8_t *buf = malloc(HASH_CHUNK);
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    value_scan *vs = calloc(1, sizeof *vs);
    cli_progress progress;
    uint64_t total = 0, done = 0;

    if (!buf || !md || !vs || !(vs->order = calloc(ckpt->n_tensors ? ckpt->n_tensors : 1, sizeof *vs->order))) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        goto out;
    }
    for (size_t f = 0; f < ckpt->n_files; f++)
        total += bad[f] ? 0 : ckpt->files[f].source->size;
    cli_progress_init(&progress, opts, "verify: hashing and checking every value");
    progress.total = total;
    for (size_t f = 0; f < ckpt->n_files && !err; f++) {
        cks_source *src = ckpt->files[f].source;
        const char *path = ckpt->files[f].path;
        uint8_t digest[32];
        unsigned int dlen = 0;
        char hex[65];
        cJSON *entry = file_json(v, path);
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
                cli_progress_update(&progress, done, total);
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
            cJSON_AddStringToObject(entry, "sha256_computed", hex);
        if (!src->sha256_hex[0]) {
            if (entry)
                cJSON_AddNullToObject(entry, "sha256_match");
            if (!add_finding(&v->warnings, "NoServerSha256", path, NULL,
                             "no SHA-256 from the server to check against (local file or plain URL)"))
                err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        } else {
            bool match = strcmp(hex, src->sha256_hex) == 0;
            if (entry)
                cJSON_AddBoolToObject(entry, "sha256_match", match);
            if (!match && !add_finding(&v->problems, "Sha256Mismatch", path, NULL,
                                       "the bytes hash to SHA-256 %s, but the Hub's LFS SHA-256 is %s", hex,
                                       src->sha256_hex))
                err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        }
    }
    cli_progress_done(&progress);
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
static cks_err read_checks(const cks_ckpt *ckpt, verify_state *v, bool full, const cli_opts *opts, cks_diag *diag)
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
        err = hash_files(ckpt, v, bad, opts, diag);
    if (full)
        v->values.unread = v->values.float_tensors - v->values.no_encoding - v->values.tensors_checked;
out:
    free(bad);
    return err;
}

/* ---- provenance ---- */

typedef struct known {
    char *path;
    cks_verdict verdict;
    bool screened;           /* cleared by the screen: no full comparison was run */
    double t2, t1;
    char reason[1024];
    char source[256], repo[256], commit[64];
    int rank;
} known;

static int verdict_rank(cks_verdict v)
{
    switch (v) {
    case CKS_VERDICT_IDENTICAL:
        return 0;
    case CKS_VERDICT_DERIVED:
        return 1;
    case CKS_VERDICT_INCONCLUSIVE:
        return 2;
    default:
        return 3;
    }
}

static int known_order(const void *x, const void *y)
{
    const known *a = x, *b = y;
    double ta = isfinite(a->t2) ? a->t2 : -2, tb = isfinite(b->t2) ? b->t2 : -2;
    if (a->rank != b->rank)
        return a->rank - b->rank;
    return ta > tb ? -1 : ta < tb;
}

static int add_path(char **list, size_t *n, const char *path)
{
    if (*n == MAX_FPS)
        return -1;
    list[*n] = strdup(path);
    if (!list[*n])
        return -1;
    (*n)++;
    return 0;
}

static int by_string(const void *x, const void *y)
{
    return strcmp(*(char *const *)x, *(char *const *)y);
}

/* A file, or the fingerprints in a directory (by their magic, in name order). A directory
 * without any is an error, not an empty list: a CI job pointed at the wrong folder (or one a
 * failed step left empty) would otherwise pass every upload as unrelated to nothing. */
static int collect_fps(const char *arg, char **list, size_t *n)
{
    struct stat sb;
    DIR *d;
    struct dirent *e;
    size_t first = *n, others = 0;
    if (stat(arg, &sb) != 0)
        return cli_usage_error("verify", "--against %s: no such file or directory", arg);
    if (!S_ISDIR(sb.st_mode) && cks_fplib_is_file(arg)) { /* a library: each member (docs/scale-out.md) */
        char **refs = NULL;
        size_t n_refs = 0;
        int rc = cli_fingerprint_library_refs(arg, &refs, &n_refs);
        for (size_t i = 0; i < n_refs; i++) {
            if (rc == EXIT_OK && add_path(list, n, refs[i]))
                rc = cli_usage_error("verify", "more than %d fingerprints", MAX_FPS);
            free(refs[i]);
        }
        free(refs);
        return rc;
    }
    if (!S_ISDIR(sb.st_mode)) {
        if (!cks_fingerprint_is_file(arg))
            return cli_usage_error("verify", "--against %s is not a fingerprint (make one with `ckptscope "
                                             "fingerprint SOURCE -o FILE`)",
                                   arg);
        return add_path(list, n, arg) ? cli_usage_error("verify", "more than %d fingerprints", MAX_FPS) : EXIT_OK;
    }
    d = opendir(arg);
    if (!d) {
        cks_diag diag;
        return cli_fail("verify", cks_fail(&diag, CKS_ERR_IO, "--against %s: cannot read the directory", arg), &diag);
    }
    while ((e = readdir(d))) {
        char *p = NULL;
        if (e->d_name[0] == '.')
            continue;
        if (asprintf(&p, "%s/%s", arg, e->d_name) < 0)
            continue;
        if (!cks_fingerprint_is_file(p))
            others++;
        else if (add_path(list, n, p)) {
            free(p);
            closedir(d);
            return cli_usage_error("verify", "more than %d fingerprints", MAX_FPS);
        }
        free(p);
    }
    closedir(d);
    if (*n == first)
        return cli_usage_error("verify",
                               "--against %s holds no fingerprint (%zu other file%s): nothing to compare the upload "
                               "with. Make them with `ckptscope fingerprint SOURCE -o %s/NAME.ckfp` (or --from LIST "
                               "%s), or drop --against to check only the upload",
                               arg, others, others == 1 ? "" : "s", arg, arg);
    qsort(list + first, *n - first, sizeof *list, by_string);
    return EXIT_OK;
}

/*
 * The screen: every test at 99 permutations and without the synthetic power checks (a 100B-
 * class pair: ~4.6 s instead of ~12.7 s, bench/fingerprint). A fingerprint is screened out
 * only when no primary test comes near significance (each permutation p above 0.01, at least
 * one of the 99 permutations as extreme, and each z under 3) with an effect at least half its
 * floor: a test far under its floor cannot make "derived" however significant (shared
 * structure of independent models is often significant and always weak). A test that the full comparison
 * rejects (p <= 1e-3 / 7 after Holm) passes neither bound only if at least one of 99
 * permutations beats it and its z is also under 3, which its p makes all but impossible. The
 * alignment test T4a draws its null independently of the permutation count, so it is the
 * full test.
 */
#define SCREEN_PERMUTATIONS 99
#define SCREEN_P 0.01
#define SCREEN_Z 3.0

static bool screen_clears(const cks_compare_result *r, double *max_z, double *min_p)
{
    bool clears = true;
    *max_z = -INFINITY;
    *min_p = 1;
    for (size_t i = 0; i < r->n_tests; i++) {
        const cks_test_result *t = &r->tests[i];
        if (!t->primary || !t->ran)
            continue;
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
    return clears && r->verdict != CKS_VERDICT_IDENTICAL && r->verdict != CKS_VERDICT_DERIVED;
}

static void keep_result(const cks_compare_result *r, known *k)
{
    k->verdict = r->verdict;
    k->rank = verdict_rank(r->verdict);
    k->screened = false;
    snprintf(k->reason, sizeof k->reason, "%s", r->reason);
    for (size_t i = 0; i < r->n_tests; i++) {
        if (strcmp(r->tests[i].id, "T2") == 0 && r->tests[i].ran)
            k->t2 = r->tests[i].statistic;
        if (strcmp(r->tests[i].id, "T1") == 0 && r->tests[i].ran)
            k->t1 = r->tests[i].statistic;
    }
}

static cks_err compare_against(const char *path, const cks_compare_model *live, bool no_synthetic, bool screen,
                               known *k, cks_diag *diag)
{
    cks_err err;
    cks_fingerprint *fp = NULL;
    cks_compare_model a;
    cks_compare_opts copts;
    cks_compare_result *r = NULL;
    double max_z, min_p;

    memset(&copts, 0, sizeof copts);
    k->t1 = k->t2 = NAN;
    err = cli_open_fingerprint(path, "known", &fp, &a, NULL, diag);
    if (err)
        return err;
    snprintf(k->source, sizeof k->source, "%s", fp->source);
    snprintf(k->repo, sizeof k->repo, "%s", fp->repo);
    snprintf(k->commit, sizeof k->commit, "%s", fp->commit);
    if (screen) {
        copts.permutations = SCREEN_PERMUTATIONS;
        copts.no_synthetic_power = true;
        err = cks_compare(&a, live, &copts, &r, diag);
        if (!err && screen_clears(r, &max_z, &min_p)) {
            keep_result(r, k);
            k->screened = true;
            k->rank = verdict_rank(CKS_VERDICT_NOT_DERIVED);
            snprintf(k->reason, sizeof k->reason,
                     "screened out: at %d permutations no test comes near significance (smallest p %.2g, largest z "
                     "%.2g); the full comparison was skipped (--no-screen runs it)",
                     SCREEN_PERMUTATIONS, min_p, isfinite(max_z) ? max_z : 0.0);
            goto out;
        }
        cks_compare_result_free(r);
        r = NULL;
        if (err)
            goto out;
        memset(&copts, 0, sizeof copts);
    }
    copts.no_synthetic_power = no_synthetic;
    err = cks_compare(&a, live, &copts, &r, diag);
    if (!err)
        keep_result(r, k);
out:
    cks_compare_result_free(r);
    cks_fingerprint_free(fp);
    return err;
}

/* ---- output ---- */

static const char *outcome_name(int rc, bool against)
{
    switch (rc) {
    case EXIT_OK:
        /* without --against nothing was compared: "unrelated" would claim what was not checked */
        return against ? "valid_unrelated" : "valid";
    case EXIT_DIFFERENT:
        return "related_to_known_model";
    case EXIT_FORMAT:
        return "invalid";
    default:
        return "could_not_check";
    }
}

static cJSON *findings_json(const findings *fs)
{
    cJSON *arr = cJSON_CreateArray();
    for (size_t i = 0; i < fs->n; i++) {
        const finding *f = &fs->items[i];
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "rule", f->rule);
        if (f->file)
            cJSON_AddStringToObject(o, "file", f->file);
        else
            cJSON_AddNullToObject(o, "file");
        if (f->tensor)
            cJSON_AddStringToObject(o, "tensor", f->tensor);
        else
            cJSON_AddNullToObject(o, "tensor");
        cJSON_AddStringToObject(o, "detail", f->detail);
        cJSON_AddItemToArray(arr, o);
    }
    return arr;
}

/* "rule (file, tensor "x")" for the text output. */
static void finding_head(const finding *f, char *out, size_t cap)
{
    if (f->file && f->tensor)
        snprintf(out, cap, "%s (%s, tensor \"%s\")", f->rule, f->file, f->tensor);
    else if (f->file)
        snprintf(out, cap, "%s (%s)", f->rule, f->file);
    else
        snprintf(out, cap, "%s", f->rule);
}

static cJSON *values_json(const value_check *vc, const verify_state *v)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "mode", vc->full ? "every_value" : "sampled");
    cJSON_AddNumberToObject(o, "float_tensors", (double)vc->float_tensors);
    cJSON_AddNumberToObject(o, "float_bytes", (double)vc->float_bytes);
    cJSON_AddNumberToObject(o, "tensors_checked", (double)(vc->full ? vc->tensors_checked : v->sampled));
    cJSON_AddNumberToObject(o, "bytes_checked", (double)(vc->full ? vc->bytes_checked : v->sampled_bytes));
    if (vc->full)
        cJSON_AddNumberToObject(o, "values_checked", (double)vc->values_checked);
    cJSON_AddNumberToObject(o, "tensors_without_nan_or_inf_encoding", (double)vc->no_encoding);
    cJSON_AddNumberToObject(o, "tensors_unread", (double)vc->unread);
    return o;
}

static void print_json(const char *spec, cJSON *source, const verify_state *v, const known *ks, size_t n_known,
                       int rc)
{
    cJSON *root = cli_json_new("verify"), *warns, *prov, *checks;
    if (!source)
        source = cJSON_CreateObject(); /* the source did not open: what was asked for */
    cJSON_AddNumberToObject(source, "bytes_read", (double)(v->sampled_bytes + v->hashed_bytes));
    cJSON_AddItemToObject(root, "source", cli_source_spec(source, spec));
    cJSON_AddStringToObject(root, "outcome", outcome_name(rc, v->against));
    cJSON_AddNumberToObject(root, "exit_code", rc);
    /* valid: every check ran and none found a problem (not merely "no problem found") */
    cJSON_AddBoolToObject(root, "valid", rc != EXIT_FORMAT && v->problems.n == 0 && !v->have_error);
    cJSON_AddBoolToObject(root, "provenance_checked", v->against && rc != EXIT_FORMAT && !v->have_error);
    cJSON_AddNumberToObject(root, "bytes_read", (double)(v->sampled_bytes + v->hashed_bytes));
    if (v->have_error) {
        cJSON *error = cJSON_AddObjectToObject(root, "error");
        cJSON_AddStringToObject(error, "rule", cks_strerror(v->error));
        cJSON_AddStringToObject(error, "message", v->error_text);
        cJSON_AddNumberToObject(error, "exit_code", cli_exit_code(v->error));
        if (v->error_file[0])
            cJSON_AddStringToObject(error, "file", v->error_file);
        else
            cJSON_AddNullToObject(error, "file");
    }
    cJSON_AddItemToObject(root, "problems", findings_json(&v->problems));
    warns = cJSON_AddArrayToObject(root, "warnings");
    for (size_t i = 0; i < v->warnings.n; i++) {
        char text[1200];
        const finding *f = &v->warnings.items[i];
        snprintf(text, sizeof text, "%s%s%s", f->file && !f->tensor ? f->file : "", f->file && !f->tensor ? ": " : "",
                 f->detail);
        cJSON_AddItemToArray(warns, cJSON_CreateString(text));
    }
    cJSON_AddItemToObject(root, "warning_items", findings_json(&v->warnings));
    checks = cJSON_AddObjectToObject(root, "checks");
    cJSON_AddBoolToObject(checks, "file_by_file", v->file_by_file);
    cJSON_AddNumberToObject(checks, "problems_omitted", (double)v->problems.omitted);
    cJSON_AddNumberToObject(checks, "index_entries_unchecked", (double)v->unchecked_entries);
    cJSON_AddNumberToObject(checks, "tensors_sampled", (double)v->sampled);
    cJSON_AddNumberToObject(checks, "bytes_sampled", (double)v->sampled_bytes);
    cJSON_AddNumberToObject(checks, "non_finite_tensors", (double)v->nan_tensors);
    cJSON_AddNumberToObject(checks, "all_zero_tensors", (double)v->zero_tensors);
    cJSON_AddItemToObject(checks, "values", values_json(&v->values, v));
    if (v->files)
        cJSON_AddItemReferenceToObject(checks, "files", v->files);
    prov = cJSON_AddArrayToObject(root, "provenance");
    for (size_t i = 0; i < n_known; i++) {
        cJSON *k = cJSON_CreateObject();
        cJSON_AddStringToObject(k, "fingerprint", ks[i].path);
        cJSON_AddStringToObject(k, "made_from", ks[i].source);
        cJSON_AddStringToObject(k, "repo", ks[i].repo);
        cJSON_AddStringToObject(k, "commit", ks[i].commit);
        cJSON_AddStringToObject(k, "verdict", ks[i].screened ? "screened_out" : cks_verdict_name(ks[i].verdict));
        cJSON_AddBoolToObject(k, "screened", ks[i].screened);
        if (isfinite(ks[i].t2))
            cJSON_AddNumberToObject(k, "norm_gain_pearson", ks[i].t2);
        cJSON_AddStringToObject(k, "reason", ks[i].reason);
        cJSON_AddItemToArray(prov, k);
    }
    cli_json_print(root);
}

/* What the value check covered, and what it did not. */
static void print_values(const verify_state *v)
{
    const value_check *vc = &v->values;
    char a[32], b[32];
    if (!vc->float_tensors)
        return;
    if (vc->full) {
        printf("  values: every value of %zu float tensors checked for NaN/Inf while hashing (%s, %llu values): "
               "%zu with NaN/Inf",
               vc->tensors_checked, cli_human_bytes(vc->bytes_checked, a, sizeof a),
               (unsigned long long)vc->values_checked, v->nan_tensors);
        if (vc->unread)
            printf("; not checked: %zu in files that could not be read", vc->unread);
        if (vc->no_encoding)
            printf("; %zu F4/F6 tensors hold no NaN or Inf encoding", vc->no_encoding);
        printf("\n");
    } else if (v->sampled) {
        printf("  values: NaN/Inf checked on sampled blocks of %zu float tensors (%s of %s, %.2g%%): %zu with "
               "NaN/Inf, %zu all zero; the rest was not read (--full checks every value)\n",
               v->sampled, cli_human_bytes(v->sampled_bytes, a, sizeof a), cli_human_bytes(vc->float_bytes, b, sizeof b),
               vc->float_bytes ? 100.0 * (double)v->sampled_bytes / (double)vc->float_bytes : 0.0, v->nan_tensors,
               v->zero_tensors);
    }
}

static void print_text(const char *spec, const verify_state *v, const known *ks, size_t n_known, int rc)
{
    char head[1024];
    printf("%s: %s%s\n", cli_esc(spec), outcome_name(rc, v->against),
           v->file_by_file ? " (checked file by file: the checkpoint does not open)" : "");
    if (v->have_error)
        printf("  could not check: %s\n", cli_esc(v->error_text));
    for (size_t i = 0; i < v->problems.n; i++) {
        finding_head(&v->problems.items[i], head, sizeof head);
        printf("  problem %s: %s\n", cli_esc(head), cli_esc(v->problems.items[i].detail));
    }
    if (v->problems.omitted)
        printf("  ... and %zu more problems\n", v->problems.omitted);
    /* warnings can number thousands (a sparse or zero-initialised MoE): the first few here,
     * every one in --json */
    for (size_t i = 0; i < v->warnings.n && i < TEXT_WARNINGS_MAX; i++) {
        finding_head(&v->warnings.items[i], head, sizeof head);
        printf("  warning %s: %s\n", cli_esc(head), cli_esc(v->warnings.items[i].detail));
    }
    if (v->warnings.n > TEXT_WARNINGS_MAX)
        printf("  ... and %zu more warnings (--json lists every one)\n", v->warnings.n - TEXT_WARNINGS_MAX);
    print_values(v);
    if (!v->against && rc == EXIT_OK)
        printf("  provenance: not checked (no --against: compare it with fingerprints of known models, "
               "`ckptscope fingerprint`)\n");
    for (size_t i = 0; i < n_known; i++)
        printf("  %-12s %s%s%s (%s)\n", ks[i].screened ? "screened_out" : cks_verdict_name(ks[i].verdict), cli_esc(ks[i].source),
               ks[i].commit[0] ? "@" : "", cli_esc(ks[i].commit), cli_esc(ks[i].path));
}

/* Opening failed for a reason the file-by-file check can say more about. */
static bool worth_checking_files(cks_err err)
{
    return cks_err_class_of(err) == CKS_CLASS_FORMAT || err == CKS_ERR_NOT_FOUND || err == CKS_ERR_FILE_NOT_FOUND;
}

/*
 * Opening the checkpoint failed with `first`: check it file by file so that every problem
 * is reported, and read (sample, hash) the files that are valid on their own. The open
 * error itself is a problem when the check finds none (a checkpoint that does not open is
 * never valid).
 */
static cks_err verify_file_by_file(const char *spec, const cli_opts *opts, bool full, cks_err first,
                                   const cks_diag *first_diag, verify_state *v, cJSON **source, cks_diag *diag)
{
    cks_err err = CKS_OK, e;
    cks_ckpt_check *check = NULL;
    cks_diag d;

    e = cli_check_checkpoint(spec, opts, &check, source, &d);
    if (e) {
        set_error(v, e, NULL, d.text);
        goto done;
    }
    v->file_by_file = true;
    if (!take_check(v, check)) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        goto out;
    }
    if (check->valid_part) {
        e = read_checks(check->valid_part, v, full, opts, &d);
        if (e == CKS_ERR_NOMEM) {
            err = cks_fail(diag, e, "%s", d.text);
            goto out;
        }
        if (e)
            set_error(v, e, NULL, d.text);
    }
done:
    if (v->problems.n == 0 && cks_err_class_of(first) == CKS_CLASS_FORMAT) {
        if (!add_finding(&v->problems, cks_strerror(first), NULL, NULL, "%s", first_diag->text))
            err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
    } else if (v->problems.n == 0) {
        set_error(v, first, NULL, first_diag->text);
    }
out:
    cks_ckpt_check_free(check);
    return err;
}

int cmd_verify(int argc, char **argv)
{
    cli_opts opts = {0};
    const char *against[MAX_AGAINST];
    size_t n_against = 0, n_fps = 0, n_known = 0;
    char **fps = NULL;
    bool full = false, no_synth = false, screen = true;
    int rc = EXIT_OK;
    verify_state *v = NULL;
    known *ks = NULL;
    cks_ckpt *ckpt = NULL;
    cks_ckpt_check *sizes = NULL;
    cJSON *source = NULL;
    char *config = NULL, *tokenizer = NULL;
    size_t config_len = 0, tokenizer_len = 0;
    cks_diag diag, ignored;
    cks_err err;

    cli_list against_list = {against, 0, MAX_AGAINST, "fingerprints, libraries or folders"};
    bool no_screen = false;
    const cli_option table[] = {{.name = "against", .kind = CLI_LIST, .dest = &against_list},
                                {.name = "full", .kind = CLI_FLAG, .dest = &full},
                                {.name = "no-synthetic", .kind = CLI_FLAG, .dest = &no_synth},
                                {.name = "no-screen", .kind = CLI_FLAG, .dest = &no_screen},
                                {.kind = CLI_END}};
    rc = cli_parse_options("verify", argc, argv, table, &opts, verify_help);
    if (rc != CLI_GO_ON)
        return rc;
    rc = EXIT_OK;
    n_against = against_list.n;
    screen = !no_screen;
    if (argc - optind != 1)
        return cli_usage_error("verify", "expected exactly one SOURCE");
    fps = calloc(MAX_FPS, sizeof *fps);
    v = calloc(1, sizeof *v);
    if (!fps || !v || !(v->files = cJSON_CreateArray())) {
        rc = cli_fail("verify", cks_fail(&diag, CKS_ERR_NOMEM, "out of memory"), &diag);
        goto out;
    }
    v->against = n_against > 0;
    v->problems.max = MAX_PROBLEMS;
    v->warnings.max = MAX_WARNINGS;
    for (size_t i = 0; i < n_against; i++) {
        rc = collect_fps(against[i], fps, &n_fps);
        if (rc != EXIT_OK)
            goto out;
    }
    /* every shard's header and the index against the headers are checked on open */
    err = cli_open_checkpoint(argv[optind], &opts, &ckpt, &source, &diag);
    if (err && worth_checking_files(err)) {
        cks_diag first = diag;
        err = verify_file_by_file(argv[optind], &opts, full, err, &first, v, &source, &diag);
        if (err) {
            rc = cli_fail("verify", err, &diag);
            goto out;
        }
        goto report;
    }
    if (err) {
        set_error(v, err, NULL, diag.text);
        goto report;
    }
    /* the sizes: what the Hub lists, what its data server serves, what each header implies */
    err = cks_ckpt_check_sizes(ckpt, &sizes, &diag);
    if (!err && !take_check(v, sizes))
        err = cks_fail(&diag, CKS_ERR_NOMEM, "out of memory");
    if (!err)
        err = read_checks(ckpt, v, full, &opts, &diag);
    if (err == CKS_ERR_NOMEM) {
        rc = cli_fail("verify", err, &diag);
        goto out;
    }
    if (err)
        set_error(v, err, NULL, diag.text);
    if (v->problems.n || v->have_error)
        goto report;
    if (n_fps) {
        cks_compare_model live;
        if (cks_ckpt_fetch_aux(ckpt, "config.json", &config, &config_len, &ignored) != CKS_OK) {
            config = NULL;
            config_len = 0;
        }
        if (cks_ckpt_fetch_aux(ckpt, "tokenizer.json", &tokenizer, &tokenizer_len, &ignored) != CKS_OK) {
            tokenizer = NULL;
            tokenizer_len = 0;
        }
        memset(&live, 0, sizeof live);
        live.label = "upload";
        live.ckpt = ckpt;
        live.config_json = config;
        live.config_len = config_len;
        live.tokenizer_json = tokenizer;
        live.tokenizer_len = tokenizer_len;
        ks = calloc(n_fps, sizeof *ks);
        if (!ks) {
            rc = cli_fail("verify", cks_fail(&diag, CKS_ERR_NOMEM, "out of memory"), &diag);
            goto out;
        }
        for (size_t i = 0; i < n_fps; i++) {
            char stage[600];
            snprintf(stage, sizeof stage, "verify: against %s (%zu of %zu)", fps[i], i + 1, n_fps);
            cli_progress_stage(&opts, stage, 0);
            ks[n_known].path = fps[i];
            err = compare_against(fps[i], &live, no_synth, screen, &ks[n_known], &diag);
            cli_progress_stage(&opts, NULL, 0);
            if (err) {
                set_error(v, err, fps[i], diag.text);
                goto report;
            }
            n_known++;
        }
        qsort(ks, n_known, sizeof *ks, known_order);
        if (n_known && ks[0].rank <= 1)
            rc = EXIT_DIFFERENT;
    }
report:
    /* an invalid upload says so whatever else could not be checked; then could-not-check */
    if (v->problems.n)
        rc = EXIT_FORMAT;
    else if (v->have_error)
        rc = cli_exit_code(v->error);
    if (opts.json) {
        print_json(argv[optind], source, v, ks, n_known, rc);
        source = NULL;
    } else {
        print_text(argv[optind], v, ks, n_known, rc);
    }
out:
    for (size_t i = 0; fps && i < n_fps; i++)
        free(fps[i]);
    free(fps);
    free(ks);
    if (v) {
        findings_free(&v->problems);
        findings_free(&v->warnings);
        cJSON_Delete(v->files);
    }
    free(v);
    free(config);
    free(tokenizer);
    cJSON_Delete(source);
    cks_ckpt_check_free(sizes);
    cks_ckpt_free(ckpt);
    return rc;
}
