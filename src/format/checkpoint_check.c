/*
 * checkpoint_check.c — a checkpoint checked file by file, every problem kept (contract in
 * checkpoint.h). Opening a checkpoint stops at its first error; this is what `verify` falls
 * back to so that a user sees every broken shard, every index entry that disagrees with a
 * header and every size that disagrees with another, in one run.
 *
 * Only headers are read, through the provider (so through the remote source, the range
 * engine and the disk cache). Sizes: `size` is the source's (the Hub's listing for a Hub
 * file), `served_size` the data server's Content-Range total (the provider asks it),
 * `implied_size` what the header says (8 + N + end of the last tensor's data).
 */
#include "ckptscope/checkpoint.h"
#include "checkpoint_internal.h"

#include <dirent.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define INDEX_NAME "model.safetensors.index.json"
#define MAX_LOCAL_FILES 100000

/* A check being built: the report, and per file what the index check needs. */
typedef struct builder {
    cks_ckpt_check *check;
    cks_st_header **headers;   /* per file: the header when its tensor names are known */
    size_t n_headers;
    bool owns_headers;         /* false when they belong to an opened checkpoint */
    size_t cap_problems;
} builder;

static bool ends_with(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

static bool is_finding(cks_err e)
{
    return cks_err_class_of(e) == CKS_CLASS_FORMAT;
}

void cks_ckpt_check_free(cks_ckpt_check *check)
{
    if (!check)
        return;
    for (size_t i = 0; i < check->n_files; i++) {
        free(check->files[i].path);
        free(check->files[i].error_detail);
    }
    free(check->files);
    for (size_t i = 0; i < check->n_problems; i++) {
        free(check->problems[i].file);
        free(check->problems[i].tensor);
        free(check->problems[i].detail);
    }
    free(check->problems);
    free(check->index_path);
    cks_ckpt_free(check->valid_part);
    free(check);
}

static void builder_release(builder *b)
{
    for (size_t i = 0; b->headers && b->owns_headers && i < b->n_headers; i++)
        cks_st_header_free(b->headers[i]);
    free(b->headers);
    b->headers = NULL;
    b->n_headers = 0;
}

static bool has_problem(const builder *b, cks_err rule, const char *file)
{
    bool found = false;
    for (size_t i = 0; i < b->check->n_problems && !found; i++)
        found = b->check->problems[i].rule == rule && b->check->problems[i].file && file &&
                strcmp(b->check->problems[i].file, file) == 0;
    return found;
}

/* Record one problem (file and tensor may be NULL); only running out of memory fails. */
static cks_err add_problem(builder *b, cks_err rule, const char *file, const char *tensor, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

static cks_err add_problem(builder *b, cks_err rule, const char *file, const char *tensor, const char *fmt, ...)
{
    cks_err err = CKS_OK;
    cks_ckpt_check *c = b->check;
    cks_ckpt_problem p = {rule, NULL, NULL, NULL};
    va_list ap;
    int n;

    if (c->n_problems >= CKS_CKPT_MAX_PROBLEMS) {
        c->n_omitted++;
        goto out;
    }
    if (c->n_problems == b->cap_problems) {
        size_t ncap = b->cap_problems ? b->cap_problems * 2 : 16;
        cks_ckpt_problem *grown = realloc(c->problems, ncap * sizeof *grown);
        if (!grown) {
            err = CKS_ERR_NOMEM;
            goto out;
        }
        c->problems = grown;
        b->cap_problems = ncap;
    }
    va_start(ap, fmt);
    n = vasprintf(&p.detail, fmt, ap);
    va_end(ap);
    if (n < 0)
        p.detail = NULL;
    p.file = file ? strdup(file) : NULL;
    p.tensor = tensor ? strdup(tensor) : NULL;
    if (!p.detail || (file && !p.file) || (tensor && !p.tensor)) {
        if (n >= 0)
            free(p.detail);
        free(p.file);
        free(p.tensor);
        err = CKS_ERR_NOMEM;
        goto out;
    }
    c->problems[c->n_problems++] = p;
out:
    return err;
}

/* This file could not be checked for a reason that says nothing about the upload. */
static cks_err note_error(cks_ckpt_file_check *fc, cks_err e, const cks_diag *d)
{
    cks_err err = CKS_OK;
    if (fc->error != CKS_OK)
        goto out; /* the first reason is the one to show */
    fc->error = e;
    fc->error_detail = strdup(d->text);
    if (!fc->error_detail)
        err = CKS_ERR_NOMEM;
out:
    return err;
}

/* A failure while opening or reading file f: a problem of the upload, or a file not checked. */
static cks_err file_failure(builder *b, size_t f, cks_err e, const cks_diag *d, bool named_by_index)
{
    cks_err err = CKS_OK;
    cks_ckpt_file_check *fc = &b->check->files[f];
    if (e == CKS_ERR_NOMEM)
        err = CKS_ERR_NOMEM;
    else if (named_by_index && (e == CKS_ERR_NOT_FOUND || e == CKS_ERR_FILE_NOT_FOUND))
        err = add_problem(b, CKS_ERR_INDEX_MISMATCH, fc->path, NULL,
                          "IndexMismatch: the index names shard %s, but the checkpoint has no such file (%s)",
                          fc->path, d->text);
    else if (is_finding(e))
        err = add_problem(b, e, fc->path, NULL, "%s", d->text);
    else
        err = note_error(fc, e, d);
    return err;
}

/*
 * Read the header of `rd` and validate it against a file of fc->size bytes (the listed
 * size). A format problem is recorded; when only the end-of-file rule fails (Truncated,
 * MetadataIncompleteBuffer) the header is parsed once more without it, so the size it
 * implies is known and the index can still be checked against its names.
 */
static cks_err read_header(builder *b, size_t f, cks_source *rd, bool named_by_index, cks_diag *diag)
{
    cks_err err = CKS_OK, e = CKS_OK;
    cks_ckpt_file_check *fc = &b->check->files[f];
    uint8_t *buf = NULL;
    uint64_t have = rd->size < CKS_ST_FIRST_READ ? rd->size : CKS_ST_FIRST_READ, need = 0;
    bool retried = false;
    cks_st_header *hdr = NULL;
    cks_diag d;

reread:
    for (int attempt = 0; attempt < 2; attempt++) {
        uint8_t *grown = realloc(buf, have ? (size_t)have : 1);
        if (!grown) {
            err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory for a %llu-byte header", (unsigned long long)have);
            goto out;
        }
        buf = grown;
        e = cks_source_read_at(rd, 0, buf, (size_t)have, &d);
        if (e) {
            err = file_failure(b, f, e, &d, named_by_index);
            goto out;
        }
        e = cks_st_parse(buf, (size_t)have, fc->size, &hdr, &need, &d);
        if (e != CKS_ERR_NEED_MORE)
            break;
        if (need > rd->size) {
            /* only when reading the copy a server serves, which is shorter than listed */
            err = add_problem(b, CKS_ERR_SERVED_HEADER_SIZE, fc->path, NULL,
                              "HeaderServedSizeMismatch: the header alone needs %llu bytes, but the "
                              "server serves %llu",
                              (unsigned long long)need, (unsigned long long)rd->size);
            goto out;
        }
        have = need;
    }
    if (cks_err_class_of(e) == CKS_CLASS_FORMAT && !retried && cks_source_discard(rd)) {
        /* not believed at once: a copy that can be read afresh (cache, HF_HOME, a damaged
         * transfer) is read once more, and what fails twice is not kept either */
        retried = true;
        cks_st_header_free(hdr);
        hdr = NULL;
        have = rd->size < CKS_ST_FIRST_READ ? rd->size : CKS_ST_FIRST_READ;
        goto reread;
    }
    if (cks_err_class_of(e) == CKS_CLASS_FORMAT && retried)
        (void)cks_source_discard(rd);
    if (e == CKS_OK) {
        fc->header_valid = true;
    } else if (e == CKS_ERR_NOMEM) {
        err = cks_fail(diag, e, "%s", d.text);
        goto out;
    } else {
        err = add_problem(b, e, fc->path, NULL, "%s", d.text);
        if (err)
            goto out;
        if (e == CKS_ERR_TRUNCATED || e == CKS_ERR_METADATA_INCOMPLETE_BUFFER) {
            cks_diag ignored;
            if (cks_st_parse_layout(buf, (size_t)have, &hdr, NULL, &ignored) != CKS_OK)
                hdr = NULL;
        }
    }
    if (hdr) {
        fc->header_read = true;
        fc->header_len = hdr->header_len;
        fc->implied_size = hdr->file_size;
        fc->implied_known = true;
        b->headers[f] = hdr;
        hdr = NULL;
    }
out:
    cks_st_header_free(hdr);
    free(buf);
    if (err && err != CKS_ERR_NOMEM)
        err = CKS_OK; /* add_problem only fails for memory; anything else is recorded */
    return err;
}

/* Served size against listed and implied size, for one file whose sizes are known so far. */
static cks_err compare_sizes(builder *b, cks_ckpt_file_check *fc)
{
    cks_err err = CKS_OK;
    if (!fc->served_known || !fc->size_known || fc->served_size == fc->size)
        goto out; /* served == listed: implied vs served is implied vs listed, the parser's rule */
    if (!has_problem(b, CKS_ERR_SERVED_SIZE, fc->path))
        err = add_problem(b, CKS_ERR_SERVED_SIZE, fc->path, NULL,
                      "ServedSizeMismatch: the server that holds its bytes serves %llu bytes "
                      "(Content-Range total) but the Hub lists %llu (%s)",
                      (unsigned long long)fc->served_size, (unsigned long long)fc->size,
                      fc->served_size < fc->size ? "the served copy is shorter" : "the served copy is longer");
    if (err || !fc->implied_known || fc->implied_size == fc->served_size ||
        has_problem(b, CKS_ERR_SERVED_HEADER_SIZE, fc->path))
        goto out;
    err = add_problem(b, CKS_ERR_SERVED_HEADER_SIZE, fc->path, NULL,
                      "HeaderServedSizeMismatch: the header implies %llu bytes (8 + %llu header + "
                      "data) but the server serves %llu",
                      (unsigned long long)fc->implied_size, (unsigned long long)fc->header_len,
                      (unsigned long long)fc->served_size);
out:
    return err;
}

/* Ask the provider what the data server serves for every file in `paths` (when it can). */
static cks_err ask_served(builder *b, const cks_ckpt_provider *p, const char *const *paths, size_t n,
                          cks_diag *diag)
{
    cks_err err = CKS_OK, e;
    cks_served_size *served = NULL;
    cks_diag d;

    if (!p->served_sizes || n == 0)
        goto out;
    served = calloc(n, sizeof *served);
    if (!served) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        goto out;
    }
    e = p->served_sizes(p->ctx, paths, n, served, &d);
    for (size_t i = 0; i < n && !err; i++) {
        cks_ckpt_file_check *fc = &b->check->files[i];
        cks_err ie = e ? e : served[i].err;
        if (ie == CKS_OK) {
            fc->served_size = served[i].size;
            fc->served_known = true;
        } else if (ie == CKS_ERR_NOMEM) {
            err = cks_fail(diag, ie, "out of memory");
        } else if (ie != CKS_ERR_UNSUPPORTED && fc->size_known) {
            /* a file that did not open already says why */
            err = note_error(fc, ie, e ? &d : &served[i].diag);
        }
    }
out:
    free(served);
    return err;
}

/* Every index entry in its shard's header, every tensor of a read header in the index, no
 * tensor in two shards. Shards whose header could not be read are skipped (counted). */
typedef struct named {
    const char *name;
    size_t file;
} named;

static int by_name(const void *x, const void *y)
{
    const named *a = x, *b = y;
    int c = strcmp(a->name, b->name);
    return c ? c : (a->file > b->file) - (a->file < b->file);
}

static const named *find_named(const named *t, size_t n, const char *name)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (strcmp(t[mid].name, name) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < n && strcmp(t[lo].name, name) == 0 ? &t[lo] : NULL;
}

static bool index_lists(const cks_st_index *index, const char *name)
{
    size_t lo = 0, hi = index->n_entries;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (strcmp(index->entries[mid].tensor, name) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < index->n_entries && strcmp(index->entries[lo].tensor, name) == 0;
}

static cks_err check_index(builder *b, const cks_st_index *index, cks_diag *diag)
{
    cks_err err = CKS_OK;
    cks_ckpt_check *c = b->check;
    named *table = NULL;
    size_t total = 0, k = 0;

    for (size_t f = 0; f < c->n_files; f++)
        if (b->headers[f] && __builtin_add_overflow(total, b->headers[f]->n_tensors, &total)) {
            err = cks_fail(diag, CKS_ERR_NOMEM, "too many tensors");
            goto out;
        }
    table = malloc((total ? total : 1) * sizeof *table);
    if (!table) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory for %zu tensor names", total);
        goto out;
    }
    for (size_t f = 0; f < c->n_files; f++)
        for (size_t t = 0; b->headers[f] && t < b->headers[f]->n_tensors; t++) {
            table[k].name = b->headers[f]->tensors[t].name;
            table[k++].file = f;
        }
    qsort(table, total, sizeof *table, by_name);
    for (k = 1; k < total && !err; k++)
        if (strcmp(table[k].name, table[k - 1].name) == 0)
            err = add_problem(b, CKS_ERR_INDEX_MISMATCH, c->files[table[k].file].path, table[k].name,
                              "IndexMismatch: tensor \"%s\" is stored in two files, %s and %s", table[k].name,
                              c->files[table[k - 1].file].path, c->files[table[k].file].path);
    for (size_t e = 0; e < index->n_entries && !err; e++) {
        const cks_st_index_entry *entry = &index->entries[e];
        const named *hit;
        bool here = false;
        if (entry->shard >= c->n_files || !b->headers[entry->shard]) {
            c->n_unchecked_entries++;
            continue;
        }
        hit = find_named(table, total, entry->tensor);
        for (const named *h = hit; h && h < table + total && strcmp(h->name, entry->tensor) == 0 && !here; h++)
            here = h->file == entry->shard;
        if (here)
            continue;
        err = add_problem(b, CKS_ERR_INDEX_MISMATCH, c->files[entry->shard].path, entry->tensor,
                          "IndexMismatch: the index maps tensor \"%s\" to %s, but that shard's header has "
                          "no such tensor%s%s",
                          entry->tensor, c->files[entry->shard].path, hit ? "; it is stored in " : "",
                          hit ? c->files[hit->file].path : "");
    }
    for (k = 0; k < total && !err; k++)
        if (!index_lists(index, table[k].name))
            err = add_problem(b, CKS_ERR_INDEX_MISMATCH, c->files[table[k].file].path, table[k].name,
                              "IndexMismatch: shard %s holds tensor \"%s\", which the index does not list "
                              "(loaders would never read it)",
                              c->files[table[k].file].path, table[k].name);
    if (err && err != CKS_ERR_NOMEM)
        err = CKS_OK;
    else if (err)
        cks_fail(diag, err, "out of memory");
out:
    free(table);
    return err;
}

/*
 * The files whose header is valid (read as listed, not from a served copy), opened as one
 * checkpoint for the reads that follow; takes their sources from srcs. A tensor in two of
 * them leaves valid_part NULL (that clash is already a problem).
 */
static cks_err keep_valid_part(builder *b, cks_source **srcs, cks_source *const *served_copy, cks_diag *diag)
{
    cks_err err = CKS_OK, e;
    cks_ckpt_check *c = b->check;
    cks_source **take = calloc(c->n_files ? c->n_files : 1, sizeof *take);
    char **names = calloc(c->n_files ? c->n_files : 1, sizeof *names);
    size_t k = 0;
    cks_diag ignored;

    if (!take || !names) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        goto out;
    }
    for (size_t f = 0; f < c->n_files && !err; f++) {
        if (!srcs[f] || served_copy[f] || !c->files[f].header_valid)
            continue;
        names[k] = strdup(c->files[f].path);
        if (!names[k]) {
            err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
            break;
        }
        take[k++] = srcs[f];
        srcs[f] = NULL;
    }
    if (err || k == 0)
        goto out;
    e = cks_ckpt_from_sources(c->index_path ? c->index_path : names[0], take, names, k, &c->valid_part, &ignored);
    k = 0; /* taken, even on failure */
    if (e == CKS_ERR_NOMEM)
        err = cks_fail(diag, e, "out of memory");
out:
    for (size_t i = 0; i < k; i++) {
        cks_source_free(take[i]);
        free(names[i]);
    }
    free(take);
    free(names);
    return err;
}

/*
 * Check files[0..n) (paths already in place): open each, ask what is served, read and
 * validate each header (from the copy as served when it disagrees with the listing), then
 * compare the sizes. Nothing stops at a file's problem.
 */
static cks_err check_files(builder *b, const cks_ckpt_provider *p, bool named_by_index, cks_diag *diag)
{
    cks_err err = CKS_OK, e;
    cks_ckpt_check *c = b->check;
    size_t n = c->n_files, m = 0;
    cks_source **srcs = calloc(n ? n : 1, sizeof *srcs);
    cks_source **served_copy = calloc(n ? n : 1, sizeof *served_copy);
    cks_source **batch = calloc(n ? n : 1, sizeof *batch);
    const char **paths = calloc(n ? n : 1, sizeof *paths);
    cks_diag d;

    if (!srcs || !served_copy || !batch || !paths) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        goto out;
    }
    for (size_t f = 0; f < n && !err; f++) {
        cks_ckpt_file_check *fc = &c->files[f];
        paths[f] = fc->path;
        e = p->open_source(p->ctx, fc->path, &srcs[f], &d);
        if (e) {
            srcs[f] = NULL;
            err = file_failure(b, f, e, &d, named_by_index);
            continue;
        }
        fc->size = srcs[f]->size;
        fc->size_known = true;
        memcpy(fc->sha256, srcs[f]->sha256_hex, sizeof fc->sha256);
    }
    if (!err)
        err = ask_served(b, p, paths, n, diag);
    for (size_t f = 0; f < n && !err; f++) {
        cks_ckpt_file_check *fc = &c->files[f];
        if (!srcs[f])
            continue;
        if (fc->served_known && fc->served_size != fc->size && p->open_as_served) {
            e = p->open_as_served(p->ctx, fc->path, fc->served_size, &served_copy[f], &d);
            if (e == CKS_ERR_NOMEM)
                err = cks_fail(diag, e, "out of memory");
            else if (e)
                served_copy[f] = NULL; /* the header is then read as listed, if it can be */
        }
        batch[m++] = served_copy[f] ? served_copy[f] : srcs[f];
    }
    /* every header in one round where the provider can; a failure here is met again below,
     * file by file, where it is recorded */
    if (!err && p->prefetch_headers && m)
        (void)p->prefetch_headers(p->ctx, batch, m, &d);
    for (size_t f = 0; f < n && !err; f++) {
        if (!srcs[f])
            continue;
        err = read_header(b, f, served_copy[f] ? served_copy[f] : srcs[f], named_by_index, diag);
        if (!err)
            err = compare_sizes(b, &c->files[f]);
    }
    if (!err)
        err = keep_valid_part(b, srcs, served_copy, diag);
out:
    if (err == CKS_ERR_NOMEM)
        cks_fail(diag, err, "out of memory");
    for (size_t f = 0; srcs && f < n; f++)
        cks_source_free(srcs[f]);
    for (size_t f = 0; served_copy && f < n; f++)
        cks_source_free(served_copy[f]);
    free(srcs);
    free(served_copy);
    free(batch);
    free(paths);
    return err;
}

/* Allocate the report for n files, taking ownership of paths[0..n) (freed on failure too). */
static cks_err builder_init(builder *b, char **paths, size_t n, cks_diag *diag)
{
    cks_err err = CKS_OK;
    memset(b, 0, sizeof *b);
    b->owns_headers = true;
    b->check = calloc(1, sizeof *b->check);
    if (b->check)
        b->check->files = calloc(n ? n : 1, sizeof *b->check->files);
    b->headers = calloc(n ? n : 1, sizeof *b->headers);
    if (!b->check || !b->check->files || !b->headers) {
        for (size_t i = 0; i < n; i++)
            free(paths[i]);
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < n; i++)
        b->check->files[i].path = paths[i];
    b->check->n_files = n;
out:
    return err;
}

static int compare_cstr(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The paths of the files to check: the index's shards (relative to the index's folder), the
 * folder's *.safetensors when the index is unreadable, or the one file. */
static cks_err entry_files(builder *b, const cks_ckpt_provider *p, const char *entry, cks_st_index **index,
                           char ***paths, size_t *n, cks_diag *diag)
{
    cks_err err = CKS_OK, e;
    char *json = NULL, *dir = NULL;
    size_t len = 0;
    const char *slash = strrchr(entry, '/');
    cks_diag d;

    *index = NULL;
    *paths = NULL;
    *n = 0;
    if (!ends_with(entry, ".json")) {
        *paths = calloc(1, sizeof **paths);
        if (!*paths || !((*paths)[0] = strdup(entry))) {
            err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
            goto out;
        }
        *n = 1;
        goto out;
    }
    b->check->index_path = strdup(entry);
    dir = strndup(entry, slash ? (size_t)(slash - entry) : 0);
    if (!b->check->index_path || !dir) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        goto out;
    }
    e = p->fetch_file(p->ctx, entry, &json, &len, &d);
    if (e == CKS_OK)
        e = cks_st_index_parse(json, len, index, &d);
    if (e && !is_finding(e)) {
        err = cks_fail(diag, e, "%s", d.text);
        goto out;
    }
    if (e) {
        /* the index itself is broken: say so, and check the shards beside it */
        err = add_problem(b, e, entry, NULL, "%s", d.text);
        if (!err && p->list_safetensors) {
            e = p->list_safetensors(p->ctx, dir, paths, n, &d);
            if (e)
                err = e == CKS_ERR_NOMEM ? cks_fail(diag, e, "out of memory") : CKS_OK;
        }
        goto out;
    }
    *paths = calloc((*index)->n_shards ? (*index)->n_shards : 1, sizeof **paths);
    if (!*paths) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < (*index)->n_shards && !err; i++) {
        if (asprintf(&(*paths)[i], "%s%s%s", dir, *dir ? "/" : "", (*index)->shards[i]) < 0) {
            (*paths)[i] = NULL;
            err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        } else {
            *n = i + 1;
        }
    }
out:
    free(json);
    free(dir);
    return err;
}

/* Check files `paths` (taking them) of a checkpoint with `index` (may be NULL), adding to b. */
static cks_err check_paths(builder *b, const cks_ckpt_provider *p, char **paths, size_t n,
                           const cks_st_index *index, cks_diag *diag)
{
    cks_err err = CKS_OK;
    cks_ckpt_file_check *files = calloc(n ? n : 1, sizeof *files);
    cks_st_header **headers = calloc(n ? n : 1, sizeof *headers);

    if (!files || !headers) {
        for (size_t i = 0; i < n; i++)
            free(paths[i]);
        free(files);
        free(headers);
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < n; i++)
        files[i].path = paths[i];
    free(b->check->files);
    free(b->headers);
    b->check->files = files;
    b->check->n_files = n;
    b->headers = headers;
    b->n_headers = n;
    err = check_files(b, p, index != NULL, diag);
    if (!err && index)
        err = check_index(b, index, diag);
out:
    return err;
}

cks_err cks_ckpt_check_with(const cks_ckpt_provider *provider, const char *entry, cks_ckpt_check **out,
                            cks_diag *diag)
{
    cks_err err = CKS_OK;
    builder b;
    cks_st_index *index = NULL;
    char **paths = NULL;
    size_t n = 0;

    *out = NULL;
    err = builder_init(&b, NULL, 0, diag);
    if (err)
        goto out;
    err = entry_files(&b, provider, entry, &index, &paths, &n, diag);
    if (err) {
        for (size_t i = 0; i < n; i++)
            free(paths[i]);
        goto out;
    }
    err = check_paths(&b, provider, paths, n, index, diag);
    if (err)
        goto out;
    *out = b.check;
    b.check = NULL;
out:
    builder_release(&b);
    cks_ckpt_check_free(b.check);
    cks_st_index_free(index);
    free(paths);
    return err;
}

/* Every *.safetensors directly in a local folder (ctx is the checkpoint root). */
static cks_err local_list(void *ctx, const char *dir, char ***paths, size_t *n, cks_diag *diag)
{
    cks_err err = CKS_OK;
    const char *root = ctx;
    char *full = NULL;
    DIR *d = NULL;
    struct dirent *ent;
    char **names = NULL;
    size_t cap = 0;

    *paths = NULL;
    *n = 0;
    if (asprintf(&full, "%s%s%s", root, *dir ? "/" : "", dir) < 0) {
        full = NULL;
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        goto out;
    }
    d = opendir(full);
    if (!d) {
        err = cks_fail(diag, errno == ENOENT ? CKS_ERR_NOT_FOUND : CKS_ERR_IO, "%s: cannot list: %s", full,
                       strerror(errno));
        goto out;
    }
    while ((ent = readdir(d)) && !err) {
        if (ent->d_name[0] == '.' || !ends_with(ent->d_name, ".safetensors"))
            continue;
        if (*n == cap) {
            size_t ncap = cap ? cap * 2 : 16;
            char **grown = ncap <= MAX_LOCAL_FILES ? realloc(names, ncap * sizeof *names) : NULL;
            if (!grown) {
                err = cks_fail(diag, CKS_ERR_NOMEM, "%s: too many files", full);
                break;
            }
            names = grown;
            cap = ncap;
        }
        if (asprintf(&names[*n], "%s%s%s", dir, *dir ? "/" : "", ent->d_name) < 0)
            err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        else
            (*n)++;
    }
    if (err)
        goto out;
    if (*n > 1)
        qsort(names, *n, sizeof *names, compare_cstr);
    *paths = names;
    names = NULL;
out:
    if (names)
        for (size_t i = 0; i < *n; i++)
            free(names[i]);
    if (err)
        *n = 0;
    free(names);
    if (d)
        closedir(d);
    free(full);
    return err;
}

/* Show the path the user gave for a single local file, as the opener does. */
static cks_err rename_single(cks_ckpt_check *c, const char *given, cks_diag *diag)
{
    cks_err err = CKS_OK;
    const char *old = c->n_files == 1 ? c->files[0].path : NULL;
    char *name = old ? strdup(old) : NULL;
    if (!old)
        goto out;
    if (!name) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < c->n_problems && !err; i++) {
        if (!c->problems[i].file || strcmp(c->problems[i].file, name) != 0)
            continue;
        free(c->problems[i].file);
        c->problems[i].file = strdup(given);
        if (!c->problems[i].file)
            err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
    }
    free(c->files[0].path);
    c->files[0].path = strdup(given);
    if (!c->files[0].path)
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
out:
    free(name);
    return err;
}

cks_err cks_ckpt_check_local(const char *path, cks_ckpt_check **out, cks_diag *diag)
{
    cks_err err = CKS_OK;
    struct stat st;
    char *dir = NULL, *index = NULL;
    const char *base = strrchr(path, '/');
    cks_ckpt_provider p;
    builder b;
    char **paths = NULL;
    size_t n = 0;

    *out = NULL;
    memset(&b, 0, sizeof b);
    memset(&p, 0, sizeof p);
    p.fetch_file = cks_local_fetch_file;
    p.open_source = cks_local_open_source;
    p.list_safetensors = local_list;
    if (stat(path, &st) != 0) {
        err = cks_fail(diag, errno == ENOENT ? CKS_ERR_NOT_FOUND : CKS_ERR_IO, "%s: %s", path, strerror(errno));
        goto out;
    }
    if (S_ISDIR(st.st_mode)) {
        dir = strdup(path);
        if (asprintf(&index, "%s/%s", path, INDEX_NAME) < 0)
            index = NULL;
        if (!dir || !index) {
            err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
            goto out;
        }
        p.ctx = dir;
        if (stat(index, &st) == 0) {
            err = cks_ckpt_check_with(&p, INDEX_NAME, out, diag);
            goto out;
        }
        /* no index: every *.safetensors in the folder, each on its own */
        err = local_list(dir, "", &paths, &n, diag);
        if (!err && n == 0)
            err = cks_fail(diag, CKS_ERR_NOT_FOUND, "%s: no .safetensors file and no %s in this directory", path,
                           INDEX_NAME);
        if (!err)
            err = builder_init(&b, NULL, 0, diag);
        if (!err) {
            err = check_paths(&b, &p, paths, n, NULL, diag);
            n = 0; /* taken */
        }
        if (!err) {
            *out = b.check;
            b.check = NULL;
        }
        goto out;
    }
    dir = base ? (base == path ? strdup("/") : strndup(path, (size_t)(base - path))) : strdup(".");
    if (!dir) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        goto out;
    }
    p.ctx = dir;
    err = cks_ckpt_check_with(&p, base ? base + 1 : path, out, diag);
    if (!err && !ends_with(path, ".json"))
        err = rename_single(*out, path, diag);
out:
    if (err) {
        cks_ckpt_check_free(*out);
        *out = NULL;
    }
    for (size_t i = 0; i < n; i++)
        free(paths[i]);
    free(paths);
    builder_release(&b);
    cks_ckpt_check_free(b.check);
    free(dir);
    free(index);
    return err;
}

cks_err cks_ckpt_check_sizes(const cks_ckpt *ckpt, cks_ckpt_check **out, cks_diag *diag)
{
    cks_err err = CKS_OK;
    builder b;
    const char **paths = NULL;
    cks_ckpt_check *c;

    *out = NULL;
    err = builder_init(&b, NULL, 0, diag);
    if (err)
        goto out;
    b.owns_headers = false;
    c = b.check;
    free(c->files);
    c->files = calloc(ckpt->n_files ? ckpt->n_files : 1, sizeof *c->files);
    paths = calloc(ckpt->n_files ? ckpt->n_files : 1, sizeof *paths);
    if (!c->files || !paths || (ckpt->index_path && !(c->index_path = strdup(ckpt->index_path)))) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        goto out;
    }
    for (size_t f = 0; f < ckpt->n_files; f++) {
        cks_ckpt_file_check *fc = &c->files[f];
        const cks_st_header *h = ckpt->files[f].header;
        fc->path = strdup(ckpt->files[f].path);
        if (!fc->path) {
            err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
            goto out;
        }
        c->n_files = f + 1;
        paths[f] = fc->path;
        fc->size = ckpt->files[f].source->size;
        fc->size_known = true;
        memcpy(fc->sha256, ckpt->files[f].source->sha256_hex, sizeof fc->sha256);
        fc->header_read = fc->header_valid = fc->implied_known = true;
        fc->header_len = h->header_len;
        fc->implied_size = h->file_size; /* the opener held it to the source's size */
    }
    err = ask_served(&b, &ckpt->provider, paths, ckpt->n_files, diag);
    for (size_t f = 0; f < ckpt->n_files && !err; f++)
        err = compare_sizes(&b, &c->files[f]);
    if (err) {
        if (err == CKS_ERR_NOMEM)
            cks_fail(diag, err, "out of memory");
        goto out;
    }
    *out = b.check;
    b.check = NULL;
out:
    builder_release(&b);
    cks_ckpt_check_free(b.check);
    free(paths);
    return err;
}
