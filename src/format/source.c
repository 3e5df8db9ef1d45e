#include "ckptscope/source.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

cks_err cks_source_read_at(cks_source *src, uint64_t offset, void *buf, size_t len, cks_diag *diag)
{
    if (!src)
        return cks_fail(diag, CKS_ERR_INVALID_ARG, "no source");
    if (offset > src->size || len > src->size - offset)
        return cks_fail(diag, CKS_ERR_TRUNCATED,
                        "%s: read of %zu bytes at offset %llu goes past the end of the file "
                        "(%llu bytes)",
                        src->name, len, (unsigned long long)offset,
                        (unsigned long long)src->size);
    if (len == 0)
        return CKS_OK;
    return src->ops->read_at(src, offset, buf, len, diag);
}

cks_err cks_source_prefetch(cks_source *src, const cks_range *ranges, size_t n_ranges, cks_diag *diag)
{
    if (!src || !src->ops->prefetch)
        return CKS_OK;
    return src->ops->prefetch(src, ranges, n_ranges, diag);
}

cks_err cks_source_prefetch_many(cks_source *const *srcs, const cks_range *ranges, size_t n, cks_diag *diag)
{
    cks_err err = CKS_OK;
    bool *done = calloc(n ? n : 1, sizeof *done);
    cks_source **group = malloc((n ? n : 1) * sizeof *group);
    cks_range *granges = malloc((n ? n : 1) * sizeof *granges);
    if (!done || !group || !granges) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory planning reads");
        goto out;
    }
    for (size_t i = 0; i < n && !err; i++) {
        size_t k = 0;
        if (done[i] || !srcs[i])
            continue;
        for (size_t j = i; j < n; j++) {
            /* one batch per kind that can batch; otherwise one per source */
            bool same = srcs[i]->ops->prefetch_many ? srcs[j] && srcs[j]->ops->prefetch_many == srcs[i]->ops->prefetch_many
                                                    : srcs[j] == srcs[i];
            if (done[j] || !same)
                continue;
            group[k] = srcs[j];
            granges[k] = ranges[j];
            k++;
            done[j] = true;
        }
        if (srcs[i]->ops->prefetch_many)
            err = srcs[i]->ops->prefetch_many(group, granges, k, diag);
        else
            err = cks_source_prefetch(srcs[i], granges, k, diag);
    }
out:
    free(done);
    free(group);
    free(granges);
    return err;
}

void cks_source_trim(cks_source *src)
{
    if (src && src->ops->trim)
        src->ops->trim(src);
}

cks_err cks_source_check_whole(cks_source *src, cks_diag *diag)
{
    return src && src->ops->check_whole ? src->ops->check_whole(src, diag) : CKS_OK;
}

bool cks_source_discard(cks_source *src)
{
    return src && src->ops->discard ? src->ops->discard(src) : false;
}

bool cks_source_unverified(const cks_source *src)
{
    return src && src->ops->unverified ? src->ops->unverified(src) : false;
}

void cks_source_free(cks_source *src)
{
    if (!src)
        return;
    src->ops->destroy(src);
}

/* ---- local file ---- */

struct file_source {
    cks_source base;
    int fd;
};

static cks_err file_read_at(cks_source *src, uint64_t offset, void *buf, size_t len, cks_diag *diag)
{
    struct file_source *fs = (struct file_source *)src;
    unsigned char *p = buf;
    while (len > 0) {
        ssize_t got = pread(fs->fd, p, len, (off_t)offset);
        if (got < 0) {
            if (errno == EINTR)
                continue;
            return cks_fail(diag, CKS_ERR_IO, "%s: read at offset %llu failed: %s", src->name,
                            (unsigned long long)offset, strerror(errno));
        }
        if (got == 0)
            return cks_fail(diag, CKS_ERR_TRUNCATED,
                            "%s: file ended at offset %llu while %zu more bytes were expected "
                            "(was it truncated while being read?)",
                            src->name, (unsigned long long)offset, len);
        p += got;
        len -= (size_t)got;
        offset += (uint64_t)got;
    }
    return CKS_OK;
}

static void file_destroy(cks_source *src)
{
    struct file_source *fs = (struct file_source *)src;
    if (fs->fd >= 0)
        close(fs->fd);
    free(src->name);
    free(fs);
}

static const cks_source_ops file_ops = {.read_at = file_read_at, .destroy = file_destroy};

cks_err cks_source_open_file(const char *path, cks_source **out, cks_diag *diag)
{
    cks_err err = CKS_OK;
    struct file_source *fs = NULL;
    struct stat st;

    *out = NULL;
    fs = calloc(1, sizeof *fs);
    if (!fs) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory opening %s", path);
        goto out;
    }
    fs->fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fs->fd < 0) {
        err = cks_fail(diag, errno == ENOENT ? CKS_ERR_NOT_FOUND : CKS_ERR_IO, "%s: cannot open: %s",
                       path, strerror(errno));
        goto out;
    }
    if (fstat(fs->fd, &st) != 0) {
        err = cks_fail(diag, CKS_ERR_IO, "%s: cannot stat: %s", path, strerror(errno));
        goto out;
    }
    if (!S_ISREG(st.st_mode)) {
        err = cks_fail(diag, CKS_ERR_INVALID_ARG, "%s: not a regular file", path);
        goto out;
    }
    fs->base.ops = &file_ops;
    fs->base.size = (uint64_t)st.st_size;
    fs->base.thread_safe = true;
    fs->base.name = strdup(path);
    if (!fs->base.name) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory opening %s", path);
        goto out;
    }
    *out = &fs->base;
    fs = NULL;
out:
    if (fs) {
        if (fs->fd >= 0)
            close(fs->fd);
        free(fs);
    }
    return err;
}

/* ---- memory ---- */

struct mem_source {
    cks_source base;
    const unsigned char *data;
    unsigned char *owned;
};

static cks_err mem_read_at(cks_source *src, uint64_t offset, void *buf, size_t len, cks_diag *diag)
{
    struct mem_source *ms = (struct mem_source *)src;
    (void)diag; /* bounds were checked by cks_source_read_at */
    memcpy(buf, ms->data + offset, len);
    return CKS_OK;
}

static void mem_destroy(cks_source *src)
{
    struct mem_source *ms = (struct mem_source *)src;
    free(ms->owned);
    free(src->name);
    free(ms);
}

static const cks_source_ops mem_ops = {.read_at = mem_read_at, .destroy = mem_destroy};

cks_err cks_source_from_memory(const void *data, size_t len, const char *name, bool copy,
                               cks_source **out, cks_diag *diag)
{
    cks_err err = CKS_OK;
    struct mem_source *ms = calloc(1, sizeof *ms);

    *out = NULL;
    if (!ms) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        goto out;
    }
    ms->base.ops = &mem_ops;
    ms->base.size = len;
    ms->base.thread_safe = true;
    ms->base.name = strdup(name ? name : "<memory>");
    if (!ms->base.name) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        goto out;
    }
    if (copy) {
        ms->owned = malloc(len ? len : 1);
        if (!ms->owned) {
            err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory copying %zu bytes", len);
            goto out;
        }
        if (len)
            memcpy(ms->owned, data, len);
        ms->data = ms->owned;
    } else {
        ms->data = data;
    }
    *out = &ms->base;
    ms = NULL;
out:
    if (ms) {
        free(ms->base.name);
        free(ms->owned);
        free(ms);
    }
    return err;
}
