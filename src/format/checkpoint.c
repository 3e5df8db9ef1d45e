/*
 * Checkpoints: one or more safetensors files read as one model, with the index (when
 * there is one) checked against the shard headers, so that a tensor name always means
 * exactly one byte range of one file.
 */
#include "ckptscope/checkpoint.h"
#include "checkpoint_internal.h"

#include <dirent.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define INDEX_NAME "model.safetensors.index.json"
#define MAX_LOCAL_FILES 100000

static char *join_path(const char *dir, const char *name)
{
    size_t a = strlen(dir), b = strlen(name);
    char *p = malloc(a + b + 2);
    if (!p)
        return NULL;
    memcpy(p, dir, a);
    p[a] = '/';
    memcpy(p + a + 1, name, b + 1);
    return p;
}

static bool ends_with(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

void cks_ckpt_free(cks_ckpt *ckpt)
{
    if (!ckpt)
        return;
    for (size_t i = 0; i < ckpt->n_files; i++) {
        free(ckpt->files[i].path);
        cks_source_free(ckpt->files[i].source);
        cks_st_header_free(ckpt->files[i].header);
    }
    free(ckpt->files);
    free(ckpt->tensors);
    cks_st_index_free(ckpt->index);
    free(ckpt->index_path);
    free(ckpt->name);
    if (ckpt->provider.release_ctx)
        ckpt->provider.release_ctx(ckpt->provider.ctx);
    free(ckpt);
}

cks_err cks_ckpt_fetch_aux(const cks_ckpt *ckpt, const char *relpath, char **data, size_t *len,
                           cks_diag *diag)
{
    *data = NULL;
    *len = 0;
    if (!ckpt->provider.fetch_file)
        return cks_fail(diag, CKS_ERR_NOT_FOUND, "%s: no way to read %s beside the weights", ckpt->name, relpath);
    return ckpt->provider.fetch_file(ckpt->provider.ctx, relpath, data, len, diag);
}

static int compare_tensor_names(const void *a, const void *b)
{
    return strcmp(((const cks_ckpt_tensor *)a)->info->name, ((const cks_ckpt_tensor *)b)->info->name);
}

/* Collect every tensor of every file, sorted by name; a name in two files is an error. */
static cks_err build_tensor_table(cks_ckpt *ckpt, cks_diag *diag)
{
    size_t total = 0, k = 0;
    for (size_t f = 0; f < ckpt->n_files; f++) {
        if (__builtin_add_overflow(total, ckpt->files[f].header->n_tensors, &total))
            return cks_fail(diag, CKS_ERR_NOMEM, "too many tensors");
    }
    if (total == 0)
        return CKS_OK;
    ckpt->tensors = calloc(total, sizeof *ckpt->tensors);
    if (!ckpt->tensors)
        return cks_fail(diag, CKS_ERR_NOMEM, "out of memory for %zu tensors", total);
    for (size_t f = 0; f < ckpt->n_files; f++)
        for (size_t t = 0; t < ckpt->files[f].header->n_tensors; t++) {
            ckpt->tensors[k].info = &ckpt->files[f].header->tensors[t];
            ckpt->tensors[k].file = f;
            k++;
        }
    ckpt->n_tensors = total;
    qsort(ckpt->tensors, total, sizeof *ckpt->tensors, compare_tensor_names);
    for (k = 1; k < total; k++) {
        if (strcmp(ckpt->tensors[k].info->name, ckpt->tensors[k - 1].info->name) == 0)
            return cks_fail(diag, CKS_ERR_INDEX_MISMATCH,
                            "IndexMismatch: tensor \"%s\" is stored in two files, %s and %s",
                            ckpt->tensors[k].info->name, ckpt->files[ckpt->tensors[k - 1].file].path,
                            ckpt->files[ckpt->tensors[k].file].path);
    }
    return CKS_OK;
}

/* The index must describe the shards exactly: every entry in its shard, nothing unlisted. */
static cks_err check_index(const cks_ckpt *ckpt, cks_diag *diag)
{
    const cks_st_index *index = ckpt->index;
    for (size_t e = 0; e < index->n_entries; e++) {
        const cks_st_index_entry *entry = &index->entries[e];
        const cks_ckpt_tensor *t = cks_ckpt_find(ckpt, entry->tensor);
        if (!t)
            return cks_fail(diag, CKS_ERR_INDEX_MISMATCH,
                            "IndexMismatch: the index maps tensor \"%s\" to %s, but that shard's "
                            "header has no such tensor",
                            entry->tensor, index->shards[entry->shard]);
        if (t->file != entry->shard) /* file i was opened from shard i */
            return cks_fail(diag, CKS_ERR_INDEX_MISMATCH,
                            "IndexMismatch: the index maps tensor \"%s\" to %s, but it is stored in %s",
                            entry->tensor, index->shards[entry->shard], ckpt->files[t->file].path);
    }
    if (ckpt->n_tensors != index->n_entries) {
        /* more tensors in the shards than entries: find one that is not listed */
        for (size_t k = 0; k < ckpt->n_tensors; k++) {
            const char *name = ckpt->tensors[k].info->name;
            size_t lo = 0, hi = index->n_entries;
            bool found = false;
            while (lo < hi) {
                size_t mid = lo + (hi - lo) / 2;
                int c = strcmp(index->entries[mid].tensor, name);
                if (c == 0) {
                    found = true;
                    break;
                }
                if (c < 0)
                    lo = mid + 1;
                else
                    hi = mid;
            }
            if (!found)
                return cks_fail(diag, CKS_ERR_INDEX_MISMATCH,
                                "IndexMismatch: shard %s holds tensor \"%s\", which the index does "
                                "not list (loaders would never read it)",
                                ckpt->files[ckpt->tensors[k].file].path, name);
        }
    }
    return CKS_OK;
}

cks_err cks_ckpt_from_sources(const char *name, cks_source **sources, char **relpaths, size_t n,
                              cks_ckpt **out, cks_diag *diag)
{
    cks_err err = CKS_OK;
    cks_ckpt *ckpt = NULL;
    size_t taken = 0;

    *out = NULL;
    ckpt = calloc(1, sizeof *ckpt);
    if (!ckpt || !(ckpt->name = strdup(name)) || (n && !(ckpt->files = calloc(n, sizeof *ckpt->files)))) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        goto out;
    }
    for (; taken < n; taken++) {
        ckpt->files[taken].source = sources[taken];
        ckpt->files[taken].path = relpaths[taken];
        ckpt->n_files = taken + 1;
    }
    for (size_t f = 0; f < n; f++) {
        cks_source *src = ckpt->files[f].source;
        err = cks_st_read_header(src, &ckpt->files[f].header, diag);
        if (err && cks_err_class_of(err) == CKS_CLASS_FORMAT && cks_source_discard(src)) {
            /* bytes that fail a check are not believed, nor kept: a source that can read them
             * afresh (a damaged cache or HF_HOME copy, a corrupted transfer) is asked once
             * more; failing again, the file is invalid as served, and that copy goes too */
            err = cks_st_read_header(src, &ckpt->files[f].header, diag);
            if (err && cks_err_class_of(err) == CKS_CLASS_FORMAT)
                (void)cks_source_discard(src);
        }
        if (err)
            goto out;
    }
    err = build_tensor_table(ckpt, diag);
    if (err)
        goto out;
    *out = ckpt;
    ckpt = NULL;
out:
    /* ownership of every source and path passes to us even on failure */
    for (size_t f = taken; f < n; f++) {
        cks_source_free(sources[f]);
        free(relpaths[f]);
    }
    cks_ckpt_free(ckpt);
    return err;
}

/*
 * Each shard's header length guessed from the names the index gives it: a header entry is
 * its quoted name and about 80 bytes of dtype, shape and offsets (78.5-79.5 in the bench's
 * GLM- and Solar-shaped shards, 58-93 in the real files of ../shared/realdata), and 84 with
 * 256 bytes for the braces and __metadata__ errs on the long side (1.05x on the bench shards).
 * A short guess costs what no guess costs (a second request for the rest); a long one, bytes.
 */
#define HINT_ENTRY_BYTES 84u
#define HINT_FIXED_BYTES (8u + 256u)
static void hint_header_lengths(const cks_st_index *index, cks_source **sources, size_t n)
{
    for (size_t f = 0; f < n; f++)
        sources[f]->header_hint = 0;
    for (size_t e = 0; e < index->n_entries; e++) {
        size_t f = index->entries[e].shard;
        if (f < n)
            sources[f]->header_hint += strlen(index->entries[e].tensor) + HINT_ENTRY_BYTES;
    }
    for (size_t f = 0; f < n; f++)
        if (sources[f]->header_hint)
            sources[f]->header_hint += HINT_FIXED_BYTES;
}

/* Parse an index, open each shard through the provider, then build and check. */
static cks_err open_from_index(const cks_ckpt_provider *provider, const char *name, const char *index_path,
                               const char *json, size_t len, cks_ckpt **out, cks_diag *diag)
{
    cks_err err = CKS_OK;
    cks_st_index *index = NULL;
    cks_source **sources = NULL;
    char **paths = NULL;
    size_t opened = 0;
    char *prefix = NULL;
    const char *slash = strrchr(index_path, '/');

    *out = NULL;
    err = cks_st_index_parse(json, len, &index, diag);
    if (err)
        goto out;
    /* shard paths are relative to the folder holding the index */
    prefix = strndup(index_path, slash ? (size_t)(slash - index_path + 1) : 0);
    sources = calloc(index->n_shards ? index->n_shards : 1, sizeof *sources);
    paths = calloc(index->n_shards ? index->n_shards : 1, sizeof *paths);
    if (!prefix || !sources || !paths) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        goto out;
    }
    for (; opened < index->n_shards; opened++) {
        size_t plen = strlen(prefix), slen = strlen(index->shards[opened]);
        paths[opened] = malloc(plen + slen + 1);
        if (!paths[opened]) {
            err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
            goto out;
        }
        memcpy(paths[opened], prefix, plen);
        memcpy(paths[opened] + plen, index->shards[opened], slen + 1);
        err = provider->open_source(provider->ctx, paths[opened], &sources[opened], diag);
        if (err) {
            free(paths[opened]);
            goto out;
        }
    }
    if (provider->prefetch_headers) {
        hint_header_lengths(index, sources, opened);
        err = provider->prefetch_headers(provider->ctx, sources, opened, diag);
        if (err)
            goto out;
    }
    {
        size_t n = opened;
        opened = 0; /* cks_ckpt_from_sources takes ownership now */
        err = cks_ckpt_from_sources(name, sources, paths, n, out, diag);
    }
    if (err)
        goto out;
    /* file i is shard i of the index: the same relative paths, in the same order */
    (*out)->index = index;
    index = NULL;
    (*out)->index_path = strdup(index_path);
    if (!(*out)->index_path) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        goto out;
    }
    err = check_index(*out, diag);
out:
    if (err) {
        cks_ckpt_free(*out);
        *out = NULL;
    }
    for (size_t f = 0; f < opened; f++) {
        cks_source_free(sources[f]);
        free(paths[f]);
    }
    free(sources);
    free(paths);
    free(prefix);
    cks_st_index_free(index);
    return err;
}

cks_err cks_ckpt_open_with(const cks_ckpt_provider *provider, const char *name, const char *entry,
                           cks_ckpt **out, cks_diag *diag)
{
    cks_err err = CKS_OK;
    char *json = NULL, *path = NULL;
    size_t len = 0;
    cks_source *src = NULL;

    *out = NULL;
    if (!entry) {
        cks_diag ignored;
        err = provider->fetch_file(provider->ctx, INDEX_NAME, &json, &len, &ignored);
        if (err == CKS_OK) {
            err = open_from_index(provider, name, INDEX_NAME, json, len, out, diag);
            goto out;
        }
        if (err != CKS_ERR_NOT_FOUND && err != CKS_ERR_FILE_NOT_FOUND) {
            cks_fail(diag, err, "%s", ignored.text);
            goto out;
        }
        entry = "model.safetensors";
    }
    if (ends_with(entry, ".json")) {
        err = provider->fetch_file(provider->ctx, entry, &json, &len, diag);
        if (!err)
            err = open_from_index(provider, name, entry, json, len, out, diag);
        goto out;
    }
    err = provider->open_source(provider->ctx, entry, &src, diag);
    if (err)
        goto out;
    path = strdup(entry);
    if (!path) {
        cks_source_free(src);
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        goto out;
    }
    err = cks_ckpt_from_sources(name, &src, &path, 1, out, diag);
out:
    if (err == CKS_OK) {
        (*out)->provider = *provider;
        (*out)->provider.release_ctx = NULL; /* the caller hands over ctx explicitly */
    }
    free(json);
    return err;
}

/* ---- local provider: files under a directory ---- */

cks_err cks_local_fetch_file(void *ctx, const char *relpath, char **data, size_t *len, cks_diag *diag)
{
    cks_err err = CKS_OK;
    char *full = join_path((const char *)ctx, relpath);
    cks_source *src = NULL;

    *data = NULL;
    *len = 0;
    if (!full)
        return cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
    err = cks_source_open_file(full, &src, diag);
    if (err)
        goto out;
    if (src->size > 256u * 1024u * 1024u) {
        err = cks_fail(diag, CKS_ERR_INDEX_INVALID, "%s: %llu bytes is too large for an index file", full,
                       (unsigned long long)src->size);
        goto out;
    }
    *data = malloc((size_t)src->size + 1);
    if (!*data) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        goto out;
    }
    err = cks_source_read_at(src, 0, *data, (size_t)src->size, diag);
    if (err) {
        free(*data);
        *data = NULL;
        goto out;
    }
    (*data)[src->size] = '\0';
    *len = (size_t)src->size;
out:
    cks_source_free(src);
    free(full);
    return err;
}

cks_err cks_local_open_source(void *ctx, const char *relpath, cks_source **out, cks_diag *diag)
{
    cks_err err;
    char *full = join_path((const char *)ctx, relpath);
    if (!full)
        return cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
    err = cks_source_open_file(full, out, diag);
    free(full);
    return err;
}

static int compare_cstr(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* A directory without an index: every *.safetensors in it, in name order. */
static cks_err open_local_dir_files(const char *dir, cks_ckpt **out, cks_diag *diag)
{
    cks_err err = CKS_OK;
    DIR *d = opendir(dir);
    struct dirent *ent;
    char **names = NULL;
    cks_source **sources = NULL;
    size_t n = 0, cap = 0, opened = 0;

    *out = NULL;
    if (!d)
        return cks_fail(diag, CKS_ERR_IO, "%s: cannot list: %s", dir, strerror(errno));
    while ((ent = readdir(d))) {
        if (!ends_with(ent->d_name, ".safetensors") || ent->d_name[0] == '.')
            continue;
        if (n == cap) {
            size_t ncap = cap ? cap * 2 : 16;
            char **grown = ncap <= MAX_LOCAL_FILES ? realloc(names, ncap * sizeof *names) : NULL;
            if (!grown) {
                err = cks_fail(diag, CKS_ERR_NOMEM, "%s: too many files", dir);
                goto out;
            }
            names = grown;
            cap = ncap;
        }
        names[n] = strdup(ent->d_name);
        if (!names[n]) {
            err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
            goto out;
        }
        n++;
    }
    if (n == 0) {
        err = cks_fail(diag, CKS_ERR_NOT_FOUND, "%s: no .safetensors file and no %s in this directory", dir,
                       INDEX_NAME);
        goto out;
    }
    qsort(names, n, sizeof *names, compare_cstr);
    sources = calloc(n, sizeof *sources);
    if (!sources) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        goto out;
    }
    for (; opened < n; opened++) {
        err = cks_local_open_source((void *)dir, names[opened], &sources[opened], diag);
        if (err)
            goto out;
    }
    opened = 0;
    err = cks_ckpt_from_sources(dir, sources, names, n, out, diag);
    n = 0; /* names now owned by the checkpoint (or freed by it) */
    if (err == CKS_OK) {
        (*out)->provider.fetch_file = cks_local_fetch_file;
        (*out)->provider.open_source = cks_local_open_source;
        (*out)->provider.ctx = strdup(dir);
        (*out)->provider.release_ctx = free;
        if (!(*out)->provider.ctx) {
            cks_ckpt_free(*out);
            *out = NULL;
            err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        }
    }
out:
    for (size_t i = 0; i < opened; i++)
        cks_source_free(sources[i]);
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
    free(sources);
    closedir(d);
    return err;
}

cks_err cks_ckpt_open_local(const char *path, cks_ckpt **out, cks_diag *diag)
{
    cks_err err = CKS_OK;
    struct stat st;
    char *dir = NULL;
    const char *base;
    cks_ckpt_provider provider = {0};

    *out = NULL;
    if (stat(path, &st) != 0)
        return cks_fail(diag, errno == ENOENT ? CKS_ERR_NOT_FOUND : CKS_ERR_IO, "%s: %s", path, strerror(errno));
    provider.fetch_file = cks_local_fetch_file;
    provider.open_source = cks_local_open_source;
    if (S_ISDIR(st.st_mode)) {
        char *index = join_path(path, INDEX_NAME);
        bool has_index;
        if (!index)
            return cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        has_index = stat(index, &st) == 0;
        free(index);
        if (!has_index)
            return open_local_dir_files(path, out, diag);
        dir = strdup(path);
        if (!dir) {
            err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
            goto out;
        }
        provider.ctx = dir;
        err = cks_ckpt_open_with(&provider, path, INDEX_NAME, out, diag);
        if (err == CKS_OK) {
            (*out)->provider.release_ctx = free;
            dir = NULL;
        }
        goto out;
    }
    /* a file: resolve relative to its folder so an index finds its shards */
    base = strrchr(path, '/');
    dir = base ? strndup(path, (size_t)(base - path)) : strdup(".");
    if (!dir) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        goto out;
    }
    if (base && base == path) { /* "/x.safetensors" */
        free(dir);
        dir = strdup("/");
    }
    provider.ctx = dir;
    err = cks_ckpt_open_with(&provider, path, base ? base + 1 : path, out, diag);
    if (err == CKS_OK) {
        (*out)->provider.release_ctx = free;
        dir = NULL;
    }
    if (err == CKS_OK && !ends_with(path, ".json")) {
        /* show the path the user gave, not the one relative to its folder */
        char *given = strdup(path);
        if (!given) {
            err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
            goto out;
        }
        free((*out)->files[0].path);
        (*out)->files[0].path = given;
    }
out:
    if (err) {
        cks_ckpt_free(*out);
        *out = NULL;
    }
    free(dir);
    return err;
}

const cks_ckpt_tensor *cks_ckpt_find(const cks_ckpt *ckpt, const char *name)
{
    size_t lo = 0, hi = ckpt->n_tensors;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(ckpt->tensors[mid].info->name, name);
        if (c == 0)
            return &ckpt->tensors[mid];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

cks_err cks_ckpt_read_tensor(const cks_ckpt *ckpt, const cks_ckpt_tensor *t, uint64_t offset, void *buf,
                             size_t len, cks_diag *diag)
{
    const cks_tensor_info *info = t->info;
    uint64_t size = info->end - info->begin;
    if (offset > size || len > size - offset)
        return cks_fail(diag, CKS_ERR_INVALID_ARG, "read of %zu bytes at %llu is outside tensor \"%s\" (%llu bytes)",
                        len, (unsigned long long)offset, info->name, (unsigned long long)size);
    return cks_source_read_at(ckpt->files[t->file].source, info->file_offset + offset, buf, len, diag);
}
