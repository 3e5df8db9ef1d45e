/*
 * fingerprint_library: the library file (index + members), the lists fingerprint jobs share
 * out, and gathering the jobs' output into a library. Format and contract:
 * include/ckptscope/fingerprint_library.h.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <openssl/evp.h>
#include <zstd.h>
#include <zstd_errors.h>

#include "ckptscope/fingerprint_library.h"
#include "ckptscope/hash.h"
#include "fingerprint_internal.h" /* fp_sync_parent */

#define LIB_FORMAT "ckptscope-fingerprint-library"
#define FP_HEAD_LEN 20u /* a fingerprint file: magic, u32 version, u64 payload length */
/* The largest fingerprint file a reader accepts (fingerprint.c's bound on a file it loads). */
#define MAX_MEMBER_LEN ((uint64_t)CKS_FP_MAX_PAYLOAD)
#define MAX_LINE 4096

/* ---- small helpers ---- */

static uint64_t align_up(uint64_t v)
{
    return (v + CKS_FPLIB_ALIGN - 1) / CKS_FPLIB_ALIGN * CKS_FPLIB_ALIGN;
}

static char *dup_or_empty(const char *s)
{
    return strdup(s ? s : "");
}

static const char *base_name(const char *path)
{
    const char *slash = strrchr(path, '/');
    return slash ? slash + 1 : path;
}

static cks_err read_exact(int fd, uint64_t offset, void *buf, size_t len, const char *path, cks_diag *diag)
{
    size_t done = 0;
    while (done < len) {
        ssize_t n = pread(fd, (uint8_t *)buf + done, len - done, (off_t)(offset + done));
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return cks_fail(diag, CKS_ERR_IO, "%s: %s", path, strerror(errno));
        if (n == 0)
            return cks_fail(diag, CKS_ERR_TRUNCATED, "%s: ends at byte %llu, before the %zu bytes at %llu it declares",
                            path, (unsigned long long)(offset + done), len, (unsigned long long)offset);
        done += (size_t)n;
    }
    return CKS_OK;
}

static cks_err write_all(int fd, const void *buf, size_t len, const char *path, cks_diag *diag)
{
    size_t done = 0;
    while (done < len) {
        ssize_t n = write(fd, (const uint8_t *)buf + done, len - done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return cks_fail(diag, errno == ENOSPC || errno == EDQUOT ? CKS_ERR_NO_SPACE : CKS_ERR_IO, "%s: %s", path,
                            strerror(errno));
        done += (size_t)n;
    }
    return CKS_OK;
}

/* A whole file of at most max bytes (malloc'd). */
static cks_err read_file(const char *path, uint64_t max, uint8_t **out, size_t *len, cks_diag *diag)
{
    cks_err err = CKS_OK;
    struct stat sb;
    uint8_t *buf = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);

    *out = NULL;
    *len = 0;
    if (fd < 0)
        return cks_fail(diag, errno == ENOENT ? CKS_ERR_NOT_FOUND : CKS_ERR_IO, "%s: %s", path, strerror(errno));
    if (fstat(fd, &sb) != 0 || sb.st_size < 0) {
        err = cks_fail(diag, CKS_ERR_IO, "%s: %s", path, strerror(errno));
        goto out;
    }
    if ((uint64_t)sb.st_size > max) {
        err = cks_fail(diag, CKS_ERR_INVALID_HEADER_DESERIALIZATION, "%s: %llu bytes, more than a fingerprint can be",
                       path, (unsigned long long)sb.st_size);
        goto out;
    }
    buf = malloc(sb.st_size ? (size_t)sb.st_size : 1);
    if (!buf) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        goto out;
    }
    err = read_exact(fd, 0, buf, (size_t)sb.st_size, path, diag);
    if (err)
        goto out;
    *out = buf;
    *len = (size_t)sb.st_size;
    buf = NULL;
out:
    free(buf);
    close(fd);
    return err;
}

static void sha256_hex(const uint8_t *data, size_t len, char hex[65])
{
    cks_sha256_hex(data, len, hex);
}

/* ---- names and lists ---- */

char *cks_fplib_member_name(const char *spec)
{
    size_t n = strlen(spec), at = 0;
    char *name = malloc(2 * n + sizeof "model.ckfp"); /* each byte at most 2; "model" when empty */
    if (!name)
        return NULL;
    while (spec[0] == '.' && spec[1] == '/')
        spec += 2;
    for (const char *p = spec; *p; p++) {
        if (*p == '/') {
            if (p[1] == '\0')
                break;
            name[at++] = '-';
            name[at++] = '-';
        } else if (*p == ':' || *p == ' ' || *p == '\\' || *p == '#') {
            name[at++] = '_';
        } else {
            name[at++] = *p;
        }
    }
    if (at == 0) {
        memcpy(name, "model", 5);
        at = 5;
    }
    memcpy(name + at, ".ckfp", 6);
    return name;
}

void cks_fplib_list_free(char **specs, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(specs[i]);
    free(specs);
}

cks_err cks_fplib_read_list(const char *path, char ***specs_out, size_t *n_out, cks_diag *diag)
{
    cks_err err = CKS_OK;
    FILE *f = fopen(path, "r");
    char line[MAX_LINE + 2];
    char **specs = NULL;
    size_t n = 0, cap = 0, line_no = 0;

    *specs_out = NULL;
    *n_out = 0;
    if (!f)
        return cks_fail(diag, errno == ENOENT ? CKS_ERR_NOT_FOUND : CKS_ERR_IO, "%s: %s", path, strerror(errno));
    while (fgets(line, sizeof line, f)) {
        char *s = line, *e;
        line_no++;
        if (!strchr(line, '\n') && !feof(f)) {
            err = cks_fail(diag, CKS_ERR_INVALID_ARG, "%s:%zu: a line longer than %d bytes", path, line_no, MAX_LINE);
            goto out;
        }
        while (*s == ' ' || *s == '\t')
            s++;
        e = s + strlen(s);
        while (e > s && (e[-1] == '\n' || e[-1] == '\r' || e[-1] == ' ' || e[-1] == '\t'))
            *--e = '\0';
        if (!*s || *s == '#')
            continue;
        if (n == CKS_FPLIB_MAX_LIST) {
            err = cks_fail(diag, CKS_ERR_INVALID_ARG, "%s: more than %u sources", path, CKS_FPLIB_MAX_LIST);
            goto out;
        }
        if (n == cap) {
            char **grown = realloc(specs, (cap = cap ? cap * 2 : 16) * sizeof *grown);
            if (!grown) {
                err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
                goto out;
            }
            specs = grown;
        }
        if (!(specs[n] = strdup(s))) {
            err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
            goto out;
        }
        n++;
    }
    if (ferror(f))
        err = cks_fail(diag, CKS_ERR_IO, "%s: read error", path);
out:
    fclose(f);
    if (err) {
        cks_fplib_list_free(specs, n);
        return err;
    }
    *specs_out = specs;
    *n_out = n;
    return CKS_OK;
}

/* ---- entries ---- */

static void entry_release(cks_fplib_entry *e)
{
    if (!e)
        return;
    free(e->name);
    free(e->source);
    free(e->repo);
    free(e->revision);
    free(e->commit);
    free(e->model_type);
    memset(e, 0, sizeof *e);
}

static cks_err entry_copy(cks_fplib_entry *dst, const cks_fplib_entry *src)
{
    *dst = *src;
    dst->name = strdup(src->name);
    dst->source = strdup(src->source);
    dst->repo = strdup(src->repo);
    dst->revision = strdup(src->revision);
    dst->commit = strdup(src->commit);
    dst->model_type = strdup(src->model_type);
    if (!dst->name || !dst->source || !dst->repo || !dst->revision || !dst->commit || !dst->model_type) {
        entry_release(dst);
        return CKS_ERR_NOMEM;
    }
    return CKS_OK;
}

/* What the index says of a decoded fingerprint (offset and length are the caller's). */
static cks_err entry_of(const cks_fingerprint *fp, const uint8_t *bytes, size_t len, cks_fplib_entry *e)
{
    cJSON *config = fp->config_json ? cJSON_ParseWithLength(fp->config_json, fp->config_len) : NULL;
    const cJSON *mt = config ? cJSON_GetObjectItemCaseSensitive(config, "model_type") : NULL;

    memset(e, 0, sizeof *e);
    e->name = cks_fplib_member_name(fp->source ? fp->source : "");
    e->source = dup_or_empty(fp->source);
    e->repo = dup_or_empty(fp->repo);
    e->revision = dup_or_empty(fp->revision);
    e->commit = dup_or_empty(fp->commit);
    e->model_type = dup_or_empty(cJSON_IsString(mt) ? mt->valuestring : "");
    cJSON_Delete(config);
    if (!e->name || !e->source || !e->repo || !e->revision || !e->commit || !e->model_type) {
        entry_release(e);
        return CKS_ERR_NOMEM;
    }
    sha256_hex(bytes, len, e->sha256);
    e->length = len;
    e->format_version = fp->version;
    e->n_layers = fp->n_layers;
    e->hidden = fp->hidden;
    e->vocab_size = fp->vocab_size;
    e->embed_cols = fp->embed_cols;
    e->embed_tokens = fp->n_tokens;
    e->all_tokens = fp->embed_all;
    e->embed_q4 = fp->embed_q4;
    e->full_coverage = fp->full_coverage;
    e->seed = fp->seed;
    e->budget = fp->budget;
    e->bytes_read = fp->bytes_read;
    return CKS_OK;
}

static cJSON *entry_json(const cks_fplib_entry *e)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "name", e->name);
    cJSON_AddStringToObject(o, "source", e->source);
    cJSON_AddStringToObject(o, "repo", e->repo);
    cJSON_AddStringToObject(o, "revision", e->revision);
    cJSON_AddStringToObject(o, "commit", e->commit);
    cJSON_AddNumberToObject(o, "offset", (double)e->offset);
    cJSON_AddNumberToObject(o, "length", (double)e->length);
    cJSON_AddStringToObject(o, "sha256", e->sha256);
    cJSON_AddNumberToObject(o, "format_version", e->format_version);
    cJSON_AddStringToObject(o, "model_type", e->model_type);
    cJSON_AddNumberToObject(o, "n_layers", (double)e->n_layers);
    cJSON_AddNumberToObject(o, "hidden", (double)e->hidden);
    cJSON_AddNumberToObject(o, "vocab_size", (double)e->vocab_size);
    cJSON_AddNumberToObject(o, "embed_cols", (double)e->embed_cols);
    cJSON_AddNumberToObject(o, "embedding_tokens", (double)e->embed_tokens);
    cJSON_AddBoolToObject(o, "all_tokens", e->all_tokens);
    cJSON_AddBoolToObject(o, "embedding_4bit", e->embed_q4);
    cJSON_AddBoolToObject(o, "full_coverage", e->full_coverage);
    cJSON_AddNumberToObject(o, "seed", (double)e->seed);
    cJSON_AddNumberToObject(o, "budget", (double)e->budget);
    cJSON_AddNumberToObject(o, "bytes_read", (double)e->bytes_read);
    return o;
}

#define JSON_MAX_INT 9007199254740992.0 /* 2^53: larger integers are not exact in a JSON number */

static bool json_u64(const cJSON *o, const char *key, uint64_t *out)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!cJSON_IsNumber(v) || !(v->valuedouble >= 0) || v->valuedouble > JSON_MAX_INT ||
        v->valuedouble != (double)(uint64_t)v->valuedouble)
        return false;
    *out = (uint64_t)v->valuedouble;
    return true;
}

static bool json_str(const cJSON *o, const char *key, char **out)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!cJSON_IsString(v))
        return false;
    *out = strdup(v->valuestring);
    return *out != NULL;
}

static bool json_bool(const cJSON *o, const char *key, bool *out)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!cJSON_IsBool(v))
        return false;
    *out = cJSON_IsTrue(v);
    return true;
}

static cks_err entry_from_json(const cJSON *o, cks_fplib_entry *e, size_t i, cks_diag *diag)
{
    uint64_t version = 0, layers = 0;
    char *sha = NULL;
    bool ok;
    memset(e, 0, sizeof *e);
    ok = cJSON_IsObject(o) && json_str(o, "name", &e->name) && json_str(o, "source", &e->source) &&
         json_str(o, "repo", &e->repo) && json_str(o, "revision", &e->revision) &&
         json_str(o, "commit", &e->commit) && json_str(o, "model_type", &e->model_type) &&
         json_str(o, "sha256", &sha) && json_u64(o, "offset", &e->offset) && json_u64(o, "length", &e->length) &&
         json_u64(o, "format_version", &version) && json_u64(o, "n_layers", &layers) &&
         json_u64(o, "hidden", &e->hidden) && json_u64(o, "vocab_size", &e->vocab_size) &&
         json_u64(o, "embed_cols", &e->embed_cols) && json_u64(o, "embedding_tokens", &e->embed_tokens) &&
         json_bool(o, "all_tokens", &e->all_tokens) && json_bool(o, "embedding_4bit", &e->embed_q4) &&
         json_bool(o, "full_coverage", &e->full_coverage) && json_u64(o, "seed", &e->seed) &&
         json_u64(o, "budget", &e->budget) && json_u64(o, "bytes_read", &e->bytes_read);
    if (ok && (strlen(sha) != 64 || !cks_is_lower_hex(sha, 64) || version > UINT32_MAX ||
               layers > INT32_MAX || !e->name[0] || strchr(e->name, '/')))
        ok = false;
    if (!ok) {
        free(sha);
        entry_release(e);
        return cks_fail(diag, CKS_ERR_INVALID_HEADER_DESERIALIZATION,
                        "fingerprint library: index member %zu is malformed (a field is missing or out of range)", i);
    }
    memcpy(e->sha256, sha, 65);
    free(sha);
    e->format_version = (uint32_t)version;
    e->n_layers = (int64_t)layers;
    return CKS_OK;
}

/* ---- reading a library ---- */

bool cks_fplib_sniff(const void *buf, size_t len)
{
    return buf && len >= 8 && memcmp(buf, CKS_FPLIB_MAGIC, 8) == 0;
}

bool cks_fplib_is_file(const char *path)
{
    uint8_t magic[8];
    struct stat sb;
    int fd;
    ssize_t n;
    if (stat(path, &sb) != 0 || !S_ISREG(sb.st_mode))
        return false;
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return false;
    n = pread(fd, magic, sizeof magic, 0);
    close(fd);
    return n == (ssize_t)sizeof magic && cks_fplib_sniff(magic, sizeof magic);
}

void cks_fplib_close(cks_fplib *lib)
{
    if (!lib)
        return;
    for (size_t i = 0; i < lib->n; i++)
        entry_release(&lib->entries[i]);
    free(lib->entries);
    if (lib->fd >= 0)
        close(lib->fd);
    free(lib->path);
    free(lib);
}

#define LIB_BAD CKS_ERR_INVALID_HEADER_DESERIALIZATION

cks_err cks_fplib_open(const char *path, cks_fplib **out, cks_diag *diag)
{
    cks_err err = CKS_OK;
    uint8_t head[CKS_FPLIB_HEAD_LEN];
    uint8_t *index = NULL, digest[32];
    unsigned int dlen = 0;
    uint64_t index_len, data_off;
    cJSON *root = NULL;
    const cJSON *members, *m;
    struct stat sb;
    cks_fplib *lib = calloc(1, sizeof *lib);

    *out = NULL;
    if (!lib)
        return cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
    lib->fd = open(path, O_RDONLY | O_CLOEXEC);
    lib->path = strdup(path);
    if (lib->fd < 0) {
        err = cks_fail(diag, errno == ENOENT ? CKS_ERR_NOT_FOUND : CKS_ERR_IO, "%s: %s", path, strerror(errno));
        goto out;
    }
    if (!lib->path || fstat(lib->fd, &sb) != 0) {
        err = cks_fail(diag, lib->path ? CKS_ERR_IO : CKS_ERR_NOMEM, "%s: cannot read it", path);
        goto out;
    }
    lib->file_size = (uint64_t)sb.st_size;
    if (lib->file_size < CKS_FPLIB_HEAD_LEN) {
        err = cks_fail(diag, CKS_ERR_TRUNCATED, "%s: %llu bytes, shorter than a library's %u-byte header", path,
                       (unsigned long long)lib->file_size, CKS_FPLIB_HEAD_LEN);
        goto out;
    }
    err = read_exact(lib->fd, 0, head, sizeof head, path, diag);
    if (err)
        goto out;
    if (!cks_fplib_sniff(head, sizeof head)) {
        err = cks_fail(diag, LIB_BAD, "%s: not a fingerprint library (no CKSFPLIB magic)", path);
        goto out;
    }
    lib->version = cks_get_le32(head + 8);
    index_len = cks_get_le64(head + 16);
    data_off = cks_get_le64(head + 24);
    if (lib->version != CKS_FPLIB_VERSION || cks_get_le32(head + 12) != 0) {
        err = cks_fail(diag, CKS_ERR_UNSUPPORTED,
                       "%s: fingerprint library version %u (flags %#x): this ckptscope reads version %d", path,
                       lib->version, cks_get_le32(head + 12), CKS_FPLIB_VERSION);
        goto out;
    }
    if (index_len == 0 || index_len > CKS_FPLIB_MAX_INDEX || data_off % CKS_FPLIB_ALIGN != 0 ||
        data_off < CKS_FPLIB_HEAD_LEN + index_len) {
        err = cks_fail(diag, LIB_BAD, "%s: index length %llu and data offset %llu are inconsistent", path,
                       (unsigned long long)index_len, (unsigned long long)data_off);
        goto out;
    }
    if (CKS_FPLIB_HEAD_LEN + index_len > lib->file_size) {
        err = cks_fail(diag, CKS_ERR_TRUNCATED, "%s: %llu bytes, shorter than its %llu-byte index", path,
                       (unsigned long long)lib->file_size, (unsigned long long)index_len);
        goto out;
    }
    index = malloc((size_t)index_len);
    if (!index) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        goto out;
    }
    err = read_exact(lib->fd, CKS_FPLIB_HEAD_LEN, index, (size_t)index_len, path, diag);
    if (err)
        goto out;
    if (!EVP_Digest(index, (size_t)index_len, digest, &dlen, EVP_sha256(), NULL) || dlen != 32 ||
        memcmp(digest, head + 32, 32) != 0) {
        err = cks_fail(diag, CKS_ERR_INTEGRITY, "%s: the index does not match its SHA-256 (damaged)", path);
        goto out;
    }
    root = cJSON_ParseWithLength((const char *)index, (size_t)index_len);
    members = root ? cJSON_GetObjectItemCaseSensitive(root, "members") : NULL;
    if (!cJSON_IsObject(root) || !cJSON_IsArray(members) ||
        !cJSON_IsString(cJSON_GetObjectItemCaseSensitive(root, "format")) ||
        strcmp(cJSON_GetObjectItemCaseSensitive(root, "format")->valuestring, LIB_FORMAT) != 0) {
        err = cks_fail(diag, LIB_BAD, "%s: the index is not a fingerprint library's JSON", path);
        goto out;
    }
    if ((size_t)cJSON_GetArraySize(members) > CKS_FPLIB_MAX_MEMBERS) {
        err = cks_fail(diag, LIB_BAD, "%s: more than %u members", path, CKS_FPLIB_MAX_MEMBERS);
        goto out;
    }
    lib->entries = calloc((size_t)cJSON_GetArraySize(members) + 1, sizeof *lib->entries);
    if (!lib->entries) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        goto out;
    }
    cJSON_ArrayForEach(m, members)
    {
        cks_fplib_entry *e = &lib->entries[lib->n];
        err = entry_from_json(m, e, lib->n, diag);
        if (err)
            goto out;
        lib->n++;
        /* members start on the alignment, inside the file, in name order (find is a binary search) */
        if (e->offset < data_off || e->offset % CKS_FPLIB_ALIGN != 0 || e->length < FP_HEAD_LEN ||
            e->length > MAX_MEMBER_LEN || e->offset > lib->file_size || e->length > lib->file_size - e->offset) {
            err = cks_fail(diag, LIB_BAD,
                           "%s: member \"%s\" lies outside the file or off the alignment (offset %llu, length "
                           "%llu, file %llu)",
                           path, e->name, (unsigned long long)e->offset, (unsigned long long)e->length,
                           (unsigned long long)lib->file_size);
            goto out;
        }
        if (lib->n > 1 && strcmp(lib->entries[lib->n - 2].name, e->name) >= 0) {
            err = cks_fail(diag, LIB_BAD, "%s: members are not in strict name order at \"%s\"", path, e->name);
            goto out;
        }
    }
    *out = lib;
    lib = NULL;
out:
    cJSON_Delete(root);
    free(index);
    cks_fplib_close(lib);
    return err;
}

size_t cks_fplib_find(const cks_fplib *lib, const char *name)
{
    size_t lo = 0, hi = lib ? lib->n : 0;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(lib->entries[mid].name, name);
        if (c == 0)
            return mid;
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return SIZE_MAX;
}

cks_err cks_fplib_read_member(const cks_fplib *lib, size_t i, uint8_t **out, size_t *len, cks_diag *diag)
{
    cks_err err;
    const cks_fplib_entry *e;
    uint8_t *buf;
    char hex[65];

    *out = NULL;
    *len = 0;
    if (!lib || i >= lib->n)
        return cks_fail(diag, CKS_ERR_INVALID_ARG, "no such library member");
    e = &lib->entries[i];
    buf = malloc((size_t)e->length);
    if (!buf)
        return cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
    err = read_exact(lib->fd, e->offset, buf, (size_t)e->length, lib->path, diag);
    if (!err) {
        sha256_hex(buf, (size_t)e->length, hex);
        if (strcmp(hex, e->sha256) != 0)
            err = cks_fail(diag, CKS_ERR_INTEGRITY,
                           "%s#%s: the member's bytes do not match the index's SHA-256 (damaged)",
                           lib->path, e->name);
    }
    if (err) {
        free(buf);
        return err;
    }
    *out = buf;
    *len = (size_t)e->length;
    return CKS_OK;
}

cks_err cks_fplib_load_member(const cks_fplib *lib, size_t i, cks_fingerprint **out, cks_diag *diag)
{
    uint8_t *buf = NULL;
    size_t len = 0;
    cks_err err = cks_fplib_read_member(lib, i, &buf, &len, diag);
    *out = NULL;
    if (!err) {
        err = cks_fingerprint_decode(buf, len, out, diag);
        if (err && diag) {
            char what[CKS_DIAG_MAX];
            snprintf(what, sizeof what, "%s", diag->text);
            snprintf(diag->text, sizeof diag->text, "%.300s#%.200s: %.500s", lib->path, lib->entries[i].name, what);
        }
    }
    free(buf);
    return err;
}

/* ---- writing a library ---- */

/* The index for entries placed from data_off on (offsets assigned here). */
static char *index_text(cks_fplib_entry *entries, size_t n, uint64_t data_off)
{
    cJSON *root = cJSON_CreateObject(), *arr;
    char *text;
    uint64_t at = data_off;
    cJSON_AddStringToObject(root, "format", LIB_FORMAT);
    cJSON_AddNumberToObject(root, "version", CKS_FPLIB_VERSION);
    cJSON_AddStringToObject(root, "tool", "ckptscope");
    arr = cJSON_AddArrayToObject(root, "members");
    for (size_t i = 0; i < n; i++) {
        entries[i].offset = at;
        at = align_up(at + entries[i].length);
        cJSON_AddItemToArray(arr, entry_json(&entries[i]));
    }
    text = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    return text;
}

/* Supplies member i's bytes to the writer; they must hash to entries[i].sha256. */
typedef cks_err (*member_bytes_fn)(void *ctx, size_t i, uint8_t **buf, size_t *len, cks_diag *diag);

static cks_err write_library(const char *path, cks_fplib_entry *entries, size_t n, member_bytes_fn bytes_of,
                             void *ctx, uint64_t *written, cks_diag *diag)
{
    cks_err err = CKS_OK;
    char *text = NULL, *tmp = NULL, host[64] = "host";
    uint64_t data_off = CKS_FPLIB_ALIGN, end;
    size_t text_len = 0;
    uint8_t head[CKS_FPLIB_HEAD_LEN], *member = NULL;
    static const uint8_t zeros[CKS_FPLIB_ALIGN];
    unsigned int dlen = 0;
    int fd = -1;

    *written = 0;
    /* The index holds absolute offsets, which depend on where the data starts, which depends on
     * the index's length: iterate to the fixed point (offsets only grow, so this ends fast). */
    for (int round = 0; round < 16; round++) {
        free(text);
        text = index_text(entries, n, data_off);
        if (!text) {
            err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
            goto out;
        }
        text_len = strlen(text);
        if (align_up(CKS_FPLIB_HEAD_LEN + text_len) <= data_off)
            break;
        data_off = align_up(CKS_FPLIB_HEAD_LEN + text_len);
    }
    if (text_len > CKS_FPLIB_MAX_INDEX || align_up(CKS_FPLIB_HEAD_LEN + text_len) > data_off) {
        err = cks_fail(diag, CKS_ERR_INVALID_ARG, "fingerprint library: the index would be too large (%zu bytes)",
                       text_len);
        goto out;
    }
    memset(head, 0, sizeof head);
    memcpy(head, CKS_FPLIB_MAGIC, 8);
    cks_put_le32(head + 8, CKS_FPLIB_VERSION);
    cks_put_le32(head + 12, 0);
    cks_put_le64(head + 16, text_len);
    cks_put_le64(head + 24, data_off);
    EVP_Digest(text, text_len, head + 32, &dlen, EVP_sha256(), NULL);

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
    err = write_all(fd, head, sizeof head, tmp, diag);
    if (!err)
        err = write_all(fd, text, text_len, tmp, diag);
    end = CKS_FPLIB_HEAD_LEN + text_len;
    for (size_t i = 0; !err && i < n; i++) {
        size_t len = 0;
        char hex[65];
        while (!err && end < entries[i].offset) {
            size_t pad = (size_t)(entries[i].offset - end < sizeof zeros ? entries[i].offset - end : sizeof zeros);
            err = write_all(fd, zeros, pad, tmp, diag);
            end += pad;
        }
        if (err)
            break;
        err = bytes_of(ctx, i, &member, &len, diag);
        if (err)
            break;
        sha256_hex(member, len, hex);
        if (len != entries[i].length || strcmp(hex, entries[i].sha256) != 0) {
            err = cks_fail(diag, CKS_ERR_IO, "the fingerprint of %s changed while it was being gathered; gather again",
                           entries[i].source);
            break;
        }
        err = write_all(fd, member, len, tmp, diag);
        end += len;
        free(member);
        member = NULL;
    }
    while (!err && end < data_off) { /* an empty library still has its data offset inside the file */
        size_t pad = (size_t)(data_off - end < sizeof zeros ? data_off - end : sizeof zeros);
        err = write_all(fd, zeros, pad, tmp, diag);
        end += pad;
    }
    if (err)
        goto out;
    /* a crash leaves either the old library or the whole new one */
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
    fp_sync_parent(path);
    *written = end;
out:
    if (fd >= 0)
        close(fd);
    if (err && tmp)
        unlink(tmp);
    free(member);
    free(tmp);
    free(text);
    return err;
}

/* ---- gathering ---- */

static const char *const problem_names[CKS_GATHER__COUNT] = {
    [CKS_GATHER_MISSING] = "missing",
    [CKS_GATHER_UNREADABLE] = "unreadable",
    [CKS_GATHER_NOT_FINGERPRINT] = "not_a_fingerprint",
    [CKS_GATHER_TRUNCATED] = "truncated",
    [CKS_GATHER_WRONG_VERSION] = "wrong_version",
    [CKS_GATHER_CORRUPT] = "corrupt",
    [CKS_GATHER_WRONG_SOURCE] = "wrong_source",
    [CKS_GATHER_DUPLICATE_COMMITS] = "duplicate_differing_commits",
    [CKS_GATHER_DUPLICATE_DIFFERS] = "duplicate_differing_content",
    [CKS_GATHER_NAME_COLLISION] = "name_collision",
};

const char *cks_gather_problem_name(cks_gather_problem p)
{
    return (unsigned)p < CKS_GATHER__COUNT ? problem_names[p] : "unknown";
}

/* One fingerprint found in the inputs: a file, or a member of an input library. */
typedef struct cand {
    char *path;              /* file, or "LIBRARY#member" */
    const cks_fplib *lib;    /* the input library holding it, or NULL */
    size_t lib_index;
    cks_fplib_entry e;
    char *key;               /* repo@revision, or the source when there is no repo */
    bool valid, keep;
} cand;

typedef struct gather {
    cks_gather_report *r;
    cand *c;
    size_t n, cap;
    cks_fplib **libs;
    size_t n_libs;
    size_t cap_failures, cap_tmps;
} gather;

static cks_err add_failure(gather *g, cks_gather_problem p, const char *path, const char *source, cks_diag *diag,
                           const char *fmt, ...) __attribute__((format(printf, 6, 7)));

static cks_err add_failure(gather *g, cks_gather_problem p, const char *path, const char *source, cks_diag *diag,
                           const char *fmt, ...)
{
    cks_gather_report *r = g->r;
    cks_gather_failure *f;
    va_list ap;
    int rc;
    if (r->n_failures == g->cap_failures) {
        size_t cap = g->cap_failures ? 2 * g->cap_failures : 16;
        cks_gather_failure *grown = realloc(r->failures, cap * sizeof *grown);
        if (!grown)
            return cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        r->failures = grown;
        g->cap_failures = cap;
    }
    f = &r->failures[r->n_failures];
    memset(f, 0, sizeof *f);
    f->problem = p;
    f->path = path ? strdup(path) : NULL;
    f->source = source && *source ? strdup(source) : NULL;
    va_start(ap, fmt);
    rc = vasprintf(&f->detail, fmt, ap);
    va_end(ap);
    r->n_failures++;
    if (rc < 0) {
        f->detail = NULL;
        return cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
    }
    return CKS_OK;
}

static cks_err add_cand(gather *g, const char *path, const cks_fplib *lib, size_t lib_index, cks_diag *diag)
{
    cand *c;
    if (g->n == g->cap) {
        size_t cap = g->cap ? 2 * g->cap : 64;
        cand *grown = realloc(g->c, cap * sizeof *grown);
        if (!grown)
            return cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        g->c = grown;
        g->cap = cap;
    }
    c = &g->c[g->n];
    memset(c, 0, sizeof *c);
    c->lib = lib;
    c->lib_index = lib_index;
    if (lib) {
        if (asprintf(&c->path, "%s#%s", lib->path, lib->entries[lib_index].name) < 0)
            c->path = NULL;
    } else {
        c->path = path ? strdup(path) : NULL; /* NULL: out of memory below */
    }
    if (!c->path)
        return cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
    g->n++;
    return CKS_OK;
}

static cks_err add_temporary(gather *g, const char *path, cks_diag *diag)
{
    cks_gather_report *r = g->r;
    if (r->n_temporaries == g->cap_tmps) {
        size_t cap = g->cap_tmps ? 2 * g->cap_tmps : 16;
        char **grown = realloc(r->temporaries, cap * sizeof *grown);
        if (!grown)
            return cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        r->temporaries = grown;
        g->cap_tmps = cap;
    }
    if (!(r->temporaries[r->n_temporaries] = strdup(path)))
        return cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
    r->n_temporaries++;
    return CKS_OK;
}

static cks_err add_library(gather *g, const char *path, cks_diag *diag)
{
    cks_err err;
    cks_fplib *lib = NULL, **grown;
    cks_diag why;
    if (cks_fplib_open(path, &lib, &why) != CKS_OK)
        return add_failure(g, CKS_GATHER_CORRUPT, path, NULL, diag, "%s", why.text);
    grown = realloc(g->libs, (g->n_libs + 1) * sizeof *grown);
    if (!grown) {
        cks_fplib_close(lib);
        return cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
    }
    g->libs = grown;
    g->libs[g->n_libs++] = lib;
    for (size_t i = 0; i < lib->n; i++) {
        err = add_cand(g, NULL, lib, i, diag);
        if (err)
            return err;
    }
    return CKS_OK;
}

static int by_string(const void *x, const void *y)
{
    return strcmp(*(char *const *)x, *(char *const *)y);
}

static bool ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

/* A folder: its *.ckfp files and anything with a fingerprint or library magic; temporaries
 * apart; everything else (job logs, summaries) ignored. Not recursive. Name order. */
static cks_err scan_dir(gather *g, const char *dir, cks_diag *diag)
{
    cks_err err = CKS_OK;
    DIR *d = opendir(dir);
    struct dirent *de;
    char **names = NULL;
    size_t n = 0, cap = 0;

    if (!d)
        return cks_fail(diag, CKS_ERR_IO, "%s: %s", dir, strerror(errno));
    while ((de = readdir(d))) {
        if (de->d_name[0] == '.')
            continue;
        if (n == cap) {
            char **grown = realloc(names, (cap = cap ? 2 * cap : 64) * sizeof *grown);
            if (!grown) {
                err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
                goto out;
            }
            names = grown;
        }
        if (!(names[n] = strdup(de->d_name))) {
            err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
            goto out;
        }
        n++;
    }
    qsort(names, n, sizeof *names, by_string);
    for (size_t i = 0; i < n && !err; i++) {
        char *path = NULL;
        struct stat sb;
        if (asprintf(&path, "%s/%s", dir, names[i]) < 0) {
            err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
            break;
        }
        if (stat(path, &sb) == 0 && S_ISREG(sb.st_mode)) {
            if (strstr(names[i], ".ckfp.tmp."))
                err = add_temporary(g, path, diag);
            else if (cks_fplib_is_file(path))
                err = add_library(g, path, diag);
            else if (ends_with(names[i], ".ckfp") || cks_fingerprint_is_file(path))
                err = add_cand(g, path, NULL, 0, diag);
        }
        free(path);
    }
out:
    closedir(d);
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
    return err;
}

/* Which problem a fingerprint file that does not decode has, and why (for the summary). */
static cks_gather_problem classify(const uint8_t *buf, size_t len, cks_err err)
{
    if (len < 8)
        return len == 0 || memcmp(buf, CKS_FP_MAGIC, len) == 0 ? CKS_GATHER_TRUNCATED : CKS_GATHER_NOT_FINGERPRINT;
    if (!cks_fingerprint_sniff(buf, len))
        return CKS_GATHER_NOT_FINGERPRINT;
    if (len < FP_HEAD_LEN)
        return CKS_GATHER_TRUNCATED;
    if (err == CKS_ERR_UNSUPPORTED)
        return CKS_GATHER_WRONG_VERSION;
    {
        size_t frame = ZSTD_findFrameCompressedSize(buf + FP_HEAD_LEN, len - FP_HEAD_LEN);
        if (ZSTD_isError(frame) && ZSTD_getErrorCode(frame) == ZSTD_error_srcSize_wrong)
            return CKS_GATHER_TRUNCATED;
    }
    return CKS_GATHER_CORRUPT;
}

static cks_err validate(gather *g, cand *c, cks_diag *diag)
{
    cks_err err = CKS_OK, why;
    uint8_t *buf = NULL;
    size_t len = 0;
    cks_fingerprint *fp = NULL;
    cks_diag d;

    if (c->lib)
        why = cks_fplib_read_member(c->lib, c->lib_index, &buf, &len, &d);
    else
        why = read_file(c->path, MAX_MEMBER_LEN, &buf, &len, &d);
    if (why == CKS_ERR_NOMEM) {
        err = cks_fail(diag, why, "out of memory");
        goto out;
    }
    if (why) {
        err = add_failure(g, c->lib ? CKS_GATHER_CORRUPT : CKS_GATHER_UNREADABLE, c->path, NULL, diag, "%s", d.text);
        goto out;
    }
    why = cks_fingerprint_decode(buf, len, &fp, &d);
    if (why == CKS_ERR_NOMEM) {
        err = cks_fail(diag, why, "out of memory");
        goto out;
    }
    if (why) {
        cks_gather_problem p = classify(buf, len, why);
        err = add_failure(g, p, c->path, NULL, diag, "%s (%zu bytes)%s", d.text, len,
                          p == CKS_GATHER_WRONG_VERSION ? "; gather with the ckptscope that made it, or make it again"
                          : p == CKS_GATHER_NOT_FINGERPRINT ? "; move it out of the folder"
                                                            : "; delete it and run the same jobs again (a finished, "
                                                              "valid fingerprint is skipped, this one is made again)");
        goto out;
    }
    if (entry_of(fp, buf, len, &c->e) != CKS_OK) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        goto out;
    }
    if (c->e.repo[0])
        err = asprintf(&c->key, "%s@%s", c->e.repo, c->e.revision) < 0 ? CKS_ERR_NOMEM : CKS_OK;
    else
        err = (c->key = strdup(c->e.source)) ? CKS_OK : CKS_ERR_NOMEM;
    if (err) {
        c->key = NULL;
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        goto out;
    }
    c->valid = c->keep = true;
out:
    cks_fingerprint_free(fp);
    free(buf);
    return err;
}

static int by_key(const void *x, const void *y)
{
    const cand *a = *(const cand *const *)x, *b = *(const cand *const *)y;
    int c = strcmp(a->key, b->key);
    if (!c)
        c = strcmp(a->e.commit, b->e.commit);
    if (!c)
        c = strcmp(a->e.sha256, b->e.sha256);
    if (!c)
        c = strcmp(a->path, b->path);
    return c;
}

static int by_cand_name(const void *x, const void *y)
{
    const cand *a = *(const cand *const *)x, *b = *(const cand *const *)y;
    int c = strcmp(a->e.name, b->e.name);
    return c ? c : strcmp(a->key, b->key);
}

/* One repo and revision (or one local source) found more than once. */
static cks_err settle_group(gather *g, cand **grp, size_t n, cks_diag *diag)
{
    cks_err err = CKS_OK;
    bool commits_differ = false, bytes_differ = false;
    char *where = NULL;
    size_t len = 0;
    FILE *f;

    for (size_t i = 1; i < n; i++) {
        commits_differ |= strcmp(grp[i]->e.commit, grp[0]->e.commit) != 0;
        bytes_differ |= strcmp(grp[i]->e.sha256, grp[0]->e.sha256) != 0;
    }
    if (!bytes_differ) { /* copies of one file: keep the first */
        for (size_t i = 1; i < n; i++)
            grp[i]->keep = false;
        g->r->n_duplicates += n - 1;
        return CKS_OK;
    }
    f = open_memstream(&where, &len);
    if (!f)
        return cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
    for (size_t i = 0; i < n; i++)
        fprintf(f, "%s%s at commit %.12s", i ? ", " : "", grp[i]->path, grp[i]->e.commit[0] ? grp[i]->e.commit : "?");
    fclose(f);
    for (size_t i = 0; i < n && !err; i++) {
        grp[i]->keep = false;
        if (commits_differ)
            err = add_failure(g, CKS_GATHER_DUPLICATE_COMMITS, grp[i]->path, grp[i]->e.source, diag,
                              "%s is fingerprinted at different commits (%s): the revision moved between the jobs; "
                              "keep the one you want (or pin a commit in the list) and gather again",
                              grp[0]->key, where);
        else
            err = add_failure(g, CKS_GATHER_DUPLICATE_DIFFERS, grp[i]->path, grp[i]->e.source, diag,
                              "%s has fingerprints of one commit that differ (%s): made with other options or "
                              "another ckptscope; keep one and gather again",
                              grp[0]->key, where);
    }
    free(where);
    return err;
}

struct writer_ctx {
    cand **kept;
};

static cks_err kept_bytes(void *ctx, size_t i, uint8_t **buf, size_t *len, cks_diag *diag)
{
    cand *c = ((struct writer_ctx *)ctx)->kept[i];
    if (c->lib)
        return cks_fplib_read_member(c->lib, c->lib_index, buf, len, diag);
    return read_file(c->path, MAX_MEMBER_LEN, buf, len, diag);
}

void cks_gather_report_free(cks_gather_report *r)
{
    if (!r)
        return;
    for (size_t i = 0; i < r->n_entries; i++)
        entry_release(&r->entries[i]);
    free(r->entries);
    for (size_t i = 0; i < r->n_failures; i++) {
        free(r->failures[i].path);
        free(r->failures[i].source);
        free(r->failures[i].detail);
    }
    free(r->failures);
    for (size_t i = 0; i < r->n_temporaries; i++)
        free(r->temporaries[i]);
    free(r->temporaries);
    free(r);
}

/* Was a problem already reported for this SOURCE (so "missing" would say it twice)? */
static bool reported(const gather *g, const char *source, const char *name)
{
    for (size_t i = 0; i < g->r->n_failures; i++) {
        const cks_gather_failure *f = &g->r->failures[i];
        if ((f->source && strcmp(f->source, source) == 0) || (f->path && strcmp(base_name(f->path), name) == 0))
            return true;
    }
    return false;
}

static cks_err check_expected(gather *g, const cks_gather_opts *o, cks_diag *diag)
{
    cks_err err = CKS_OK;
    for (size_t k = 0; k < o->n_expected && !err; k++) {
        const char *spec = o->expected[k];
        char *name = cks_fplib_member_name(spec);
        bool found = false;
        const char *tmp = NULL;
        if (!name)
            return cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        for (size_t i = 0; i < g->n && !found; i++)
            found = g->c[i].keep && strcmp(g->c[i].e.name, name) == 0;
        if (!found && !reported(g, spec, name)) {
            size_t nl = strlen(name);
            for (size_t i = 0; i < g->r->n_temporaries && !tmp; i++) {
                const char *b = base_name(g->r->temporaries[i]);
                if (strncmp(b, name, nl) == 0 && strncmp(b + nl, ".tmp.", 5) == 0)
                    tmp = g->r->temporaries[i];
            }
            err = add_failure(g, CKS_GATHER_MISSING, NULL, spec, diag,
                              "no fingerprint of %s (%s) in the inputs%s%s%s; submit the same jobs again: only what is "
                              "missing runs",
                              spec, name, tmp ? "; " : "", tmp ? tmp : "",
                              tmp ? " shows a job was stopped while writing it" : "");
        }
        free(name);
    }
    return err;
}

/* With a list: the file named for a SOURCE must be a fingerprint of it. */
static cks_err check_names(gather *g, const cks_gather_opts *o, cks_diag *diag)
{
    cks_err err = CKS_OK;
    for (size_t i = 0; i < g->n && !err; i++) {
        cand *c = &g->c[i];
        const char *b = base_name(c->path);
        if (!c->valid || c->lib || strcmp(b, c->e.name) == 0)
            continue;
        for (size_t k = 0; k < o->n_expected && !err; k++) {
            char *name = cks_fplib_member_name(o->expected[k]);
            if (!name)
                return cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
            if (strcmp(name, b) == 0) {
                c->keep = false;
                err = add_failure(g, CKS_GATHER_WRONG_SOURCE, c->path, o->expected[k], diag,
                                  "%s should be the fingerprint of %s but is one of %s; remove it and run the same "
                                  "jobs again",
                                  c->path, o->expected[k], c->e.source);
            }
            free(name);
        }
    }
    return err;
}

cks_err cks_fplib_gather(const cks_gather_opts *o, cks_gather_report **out, cks_diag *diag)
{
    cks_err err = CKS_OK;
    gather g;
    cand **order = NULL;
    size_t n_kept = 0;
    struct writer_ctx wc = {NULL};

    *out = NULL;
    memset(&g, 0, sizeof g);
    g.r = calloc(1, sizeof *g.r);
    if (!g.r)
        return cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
    for (size_t i = 0; i < o->n_inputs && !err; i++) {
        struct stat sb;
        const char *in = o->inputs[i];
        if (stat(in, &sb) != 0)
            err = cks_fail(diag, CKS_ERR_NOT_FOUND, "%s: %s", in, strerror(errno));
        else if (S_ISDIR(sb.st_mode))
            err = scan_dir(&g, in, diag);
        else if (cks_fplib_is_file(in))
            err = add_library(&g, in, diag);
        else
            err = add_cand(&g, in, NULL, 0, diag);
    }
    g.r->n_candidates = g.n;
    for (size_t i = 0; i < g.n && !err; i++)
        err = validate(&g, &g.c[i], diag);
    if (!err)
        err = check_names(&g, o, diag);
    if (err)
        goto out;

    /* the same repo and revision more than once: copies are dropped, disagreements reported */
    order = calloc(g.n + 1, sizeof *order);
    if (!order) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < g.n; i++)
        if (g.c[i].keep)
            order[n_kept++] = &g.c[i];
    qsort(order, n_kept, sizeof *order, by_key);
    for (size_t i = 0; i < n_kept && !err;) {
        size_t j = i + 1;
        while (j < n_kept && strcmp(order[j]->key, order[i]->key) == 0)
            j++;
        if (j - i > 1)
            err = settle_group(&g, order + i, j - i, diag);
        i = j;
    }
    if (err)
        goto out;
    /* two sources that file under one name (rare: "a/b" and a local "a--b") */
    n_kept = 0;
    for (size_t i = 0; i < g.n; i++)
        if (g.c[i].keep)
            order[n_kept++] = &g.c[i];
    qsort(order, n_kept, sizeof *order, by_cand_name);
    for (size_t i = 0; i + 1 < n_kept && !err; i++)
        if (strcmp(order[i]->e.name, order[i + 1]->e.name) == 0) {
            size_t j = i + 1;
            while (j < n_kept && strcmp(order[j]->e.name, order[i]->e.name) == 0)
                j++;
            for (size_t k = i; k < j && !err; k++) {
                order[k]->keep = false;
                err = add_failure(&g, CKS_GATHER_NAME_COLLISION, order[k]->path, order[k]->e.source, diag,
                                  "%s and %s are different sources with one file name, %s; gather them into "
                                  "different libraries",
                                  order[i]->e.source, order[i + 1]->e.source, order[i]->e.name);
            }
            i = j - 1;
        }
    if (!err)
        err = check_expected(&g, o, diag);
    if (err)
        goto out;

    /* the library: what is left, in name order */
    n_kept = 0;
    for (size_t i = 0; i < g.n; i++)
        if (g.c[i].keep)
            order[n_kept++] = &g.c[i];
    qsort(order, n_kept, sizeof *order, by_cand_name);
    g.r->entries = calloc(n_kept + 1, sizeof *g.r->entries);
    if (!g.r->entries) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < n_kept; i++) {
        if (entry_copy(&g.r->entries[i], &order[i]->e) != CKS_OK) {
            err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
            goto out;
        }
        g.r->n_entries++;
        g.r->fingerprint_bytes += order[i]->e.length;
        g.r->bytes_read += order[i]->e.bytes_read;
    }
    if (n_kept > CKS_FPLIB_MAX_MEMBERS) {
        err = cks_fail(diag, CKS_ERR_INVALID_ARG, "%zu fingerprints: a library holds at most %u", n_kept,
                       CKS_FPLIB_MAX_MEMBERS);
        goto out;
    }
    if (o->output) { /* entries[i] is order[i]: both in name order, names unique */
        wc.kept = order;
        err = write_library(o->output, g.r->entries, g.r->n_entries, kept_bytes, &wc, &g.r->library_bytes, diag);
    }
out:
    for (size_t i = 0; i < g.n; i++) {
        free(g.c[i].path);
        free(g.c[i].key);
        entry_release(&g.c[i].e);
    }
    free(g.c);
    for (size_t i = 0; i < g.n_libs; i++)
        cks_fplib_close(g.libs[i]);
    free(g.libs);
    free(order);
    if (err) {
        cks_gather_report_free(g.r);
        return err;
    }
    *out = g.r;
    return CKS_OK;
}

cks_err cks_fingerprint_load_ref(const char *ref, cks_fingerprint **out, cks_diag *diag)
{
    cks_err err;
    struct stat sb;
    const char *hash = strrchr(ref, '#');
    char *lib_path;
    cks_fplib *lib = NULL;
    size_t i;

    *out = NULL;
    if (!hash || stat(ref, &sb) == 0)
        return cks_fingerprint_load(ref, out, diag);
    lib_path = strndup(ref, (size_t)(hash - ref));
    if (!lib_path)
        return cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
    err = cks_fplib_open(lib_path, &lib, diag);
    if (!err && (i = cks_fplib_find(lib, hash + 1)) == SIZE_MAX)
        err = cks_fail(diag, CKS_ERR_NOT_FOUND, "%s: the library has no member \"%s\"", lib_path, hash + 1);
    if (!err)
        err = cks_fplib_load_member(lib, i, out, diag);
    cks_fplib_close(lib);
    free(lib_path);
    return err;
}
