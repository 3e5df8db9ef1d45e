/*
 * fingerprint: files (save, load) and what a fingerprint limited, said in a result; at the
 * top of the fingerprint files, on the builder (fingerprint_build.c), the encoder
 * (fingerprint_encode.c), the untrusted decoder (fingerprint_decode.c) and what they share
 * (fingerprint_format.c). Format and contract: include/ckptscope/fingerprint.h.
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
