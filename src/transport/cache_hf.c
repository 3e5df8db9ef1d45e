/*
 * Reading from the standard Hugging Face cache (HF_HOME), never writing to it.
 *
 * Layout (research/hub-protocol.md §A5): <hub>/<type>s--<org>--<name>/snapshots/<commit>/<path>
 * is a symlink to ../../blobs/<etag>, and blobs are renamed into place only when complete
 * (partial downloads are "<etag>.<x>.incomplete"). So a snapshot entry that resolves to a
 * regular file is a complete file; we still refuse anything that escapes the repo folder.
 */
#include "ckptscope/cache.h"
#include "ckptscope/hex.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* A repo-relative path we are willing to join: no "..", no absolute, no empty segments. */
static bool safe_rel_path(const char *p, bool allow_slash)
{
    size_t n = strlen(p);
    if (n == 0 || n > 1024 || p[0] == '/' || strstr(p, "://"))
        return false;
    const char *seg = p;
    for (;;) {
        const char *slash = strchr(seg, '/');
        size_t len = slash ? (size_t)(slash - seg) : strlen(seg);
        if (len == 0 || (len == 1 && seg[0] == '.') || (len == 2 && seg[0] == '.' && seg[1] == '.'))
            return false;
        if (!slash)
            break;
        if (!allow_slash)
            return false;
        seg = slash + 1;
    }
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)p[i] < 0x20 || p[i] == '\\')
            return false;
    return true;
}

static char *hub_dir(const char *hf_home)
{
    char *p = NULL;
    const char *e;
    if (hf_home) {
        if (asprintf(&p, "%s/hub", hf_home) < 0)
            p = NULL;
        return p;
    }
    if ((e = getenv("HF_HUB_CACHE")) && *e)
        return strdup(e);
    if ((e = getenv("HUGGINGFACE_HUB_CACHE")) && *e)
        return strdup(e);
    if ((e = getenv("HF_HOME")) && *e) {
        if (asprintf(&p, "%s/hub", e) < 0)
            p = NULL;
        return p;
    }
    if ((e = getenv("XDG_CACHE_HOME")) && *e) {
        if (asprintf(&p, "%s/huggingface/hub", e) < 0)
            p = NULL;
        return p;
    }
    if ((e = getenv("HOME")) && *e) {
        if (asprintf(&p, "%s/.cache/huggingface/hub", e) < 0)
            p = NULL;
        return p;
    }
    return NULL;
}

cks_err cks_cache_hf_lookup(const char *hf_home, const char *repo_type, const char *repo_id,
                            const char *commit, const char *path, char **local_path,
                            cks_diag *diag)
{
    cks_err err = CKS_OK;
    char *hub = NULL, *repo_dir = NULL, *ref = NULL, *snap = NULL, *real = NULL;
    char *real_repo = NULL, *folder = NULL;
    char commit_buf[41];
    FILE *f = NULL;
    struct stat st;

    if (local_path)
        *local_path = NULL;
    if (!local_path || !repo_type || !repo_id || !commit || !path ||
        (strcmp(repo_type, "model") != 0 && strcmp(repo_type, "dataset") != 0) ||
        !safe_rel_path(repo_id, true) || !safe_rel_path(path, true) ||
        !safe_rel_path(commit, true)) {
        err = cks_fail(diag, CKS_ERR_INVALID_ARG, "HF cache lookup: invalid repo, revision or path");
        goto out;
    }
    hub = hub_dir(hf_home);
    if (!hub)
        goto out; /* no HF cache configured: nothing to reuse */
    /* repo folder: "models--org--name" (the "/" of the id becomes "--") */
    folder = malloc(strlen(repo_type) + 3 + 2 * strlen(repo_id) + 1);
    if (!folder) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        goto out;
    }
    char *w = folder + sprintf(folder, "%ss--", repo_type);
    for (const char *r = repo_id; *r; r++) {
        if (*r == '/') {
            *w++ = '-';
            *w++ = '-';
        } else {
            *w++ = *r;
        }
    }
    *w = '\0';
    if (asprintf(&repo_dir, "%s/%s", hub, folder) < 0) {
        repo_dir = NULL;
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        goto out;
    }
    if (!cks_is_lower_hex(commit, 40)) {
        /* a branch or tag: refs/<rev> holds the commit (no newline) */
        if (asprintf(&ref, "%s/refs/%s", repo_dir, commit) < 0) {
            ref = NULL;
            err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
            goto out;
        }
        f = fopen(ref, "r");
        if (!f)
            goto out;
        size_t n = fread(commit_buf, 1, 40, f);
        commit_buf[n] = '\0';
        if (n != 40 || !cks_is_lower_hex(commit_buf, 40))
            goto out;
        commit = commit_buf;
    }
    if (asprintf(&snap, "%s/snapshots/%s/%s", repo_dir, commit, path) < 0) {
        snap = NULL;
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        goto out;
    }
    if (stat(snap, &st) != 0 || !S_ISREG(st.st_mode))
        goto out;
    real = realpath(snap, NULL);
    real_repo = realpath(repo_dir, NULL);
    if (!real || !real_repo)
        goto out;
    /* a symlink pointing outside the repo folder is not a blob of this repo */
    size_t rl = strlen(real_repo);
    if (strncmp(real, real_repo, rl) != 0 || real[rl] != '/' || strstr(real, ".incomplete"))
        goto out;
    *local_path = real;
    real = NULL;
out:
    if (f)
        fclose(f);
    free(hub);
    free(folder);
    free(repo_dir);
    free(ref);
    free(snap);
    free(real);
    free(real_repo);
    return err;
}

/* ---- a listing from the Hugging Face cache alone (offline) ---------------------------- */

#include <dirent.h>

#include "ckptscope/cache_hub.h"

#define HF_SNAPSHOT_MAX_FILES 100000
#define HF_SNAPSHOT_MAX_DEPTH 16

struct snap_walk {
    const char *repo_real;      /* realpath of the repo folder: every blob must be inside */
    cks_hub_file *files;
    size_t n, cap;
    bool nomem;
};

/* One snapshot entry: a symlink to ../../blobs/<etag>, complete (blobs are renamed into place
 * only when whole). Its etag is the LFS SHA-256 (64 hex) or the git blob id (40 hex). */
static void snap_add(struct snap_walk *w, const char *full, const char *rel)
{
    struct stat st;
    char *real = NULL;
    const char *blob;
    cks_hub_file *f;
    size_t rl = strlen(w->repo_real);
    if (stat(full, &st) != 0 || !S_ISREG(st.st_mode) || !(real = realpath(full, NULL)))
        goto out;
    if (strncmp(real, w->repo_real, rl) != 0 || real[rl] != '/' || strstr(real, ".incomplete"))
        goto out;
    if (w->n == w->cap) {
        size_t cap = w->cap ? 2 * w->cap : 32;
        cks_hub_file *grown = cap > HF_SNAPSHOT_MAX_FILES ? NULL : realloc(w->files, cap * sizeof *grown);
        if (!grown) {
            w->nomem = true;
            goto out;
        }
        w->files = grown;
        w->cap = cap;
    }
    f = &w->files[w->n];
    memset(f, 0, sizeof *f);
    if (!(f->path = strdup(rel))) {
        w->nomem = true;
        goto out;
    }
    f->size = (uint64_t)st.st_size;
    f->size_known = true;
    blob = strrchr(real, '/') + 1;
    if (cks_is_lower_hex(blob, 64)) {
        f->lfs = true;
        memcpy(f->sha256, blob, 65);
    } else if (cks_is_lower_hex(blob, 40)) {
        memcpy(f->blob_id, blob, 41);
    }
    w->n++;
out:
    free(real);
}

static void snap_walk_dir(struct snap_walk *w, const char *dir, const char *rel, int depth)
{
    DIR *d = depth <= HF_SNAPSHOT_MAX_DEPTH ? opendir(dir) : NULL;
    struct dirent *e;
    while (d && !w->nomem && (e = readdir(d)) != NULL) {
        char *full = NULL, *sub = NULL;
        struct stat st;
        if (e->d_name[0] == '.')
            continue;
        if (asprintf(&full, "%s/%s", dir, e->d_name) < 0 ||
            asprintf(&sub, "%s%s%s", rel, *rel ? "/" : "", e->d_name) < 0) {
            w->nomem = true;
        } else if (lstat(full, &st) == 0 && S_ISDIR(st.st_mode)) {
            snap_walk_dir(w, full, sub, depth + 1);
        } else if (safe_rel_path(sub, true)) {
            snap_add(w, full, sub);
        }
        free(full);
        free(sub);
    }
    if (d)
        closedir(d);
}

static int by_path(const void *a, const void *b)
{
    return strcmp(((const cks_hub_file *)a)->path, ((const cks_hub_file *)b)->path);
}

cks_err cks_cache_hf_repo(const char *hf_home, cks_repo_type type, const char *repo_id, const char *revision,
                          cks_hub_repo **out, cks_diag *diag)
{
    cks_err err = CKS_OK;
    char *hub = NULL, *repo_dir = NULL, *ref = NULL, *snap = NULL, *repo_real = NULL;
    char commit[41];
    struct snap_walk w = {0};
    cks_hub_repo *repo = NULL;
    FILE *f = NULL;
    struct stat st;
    const char *rev = revision ? revision : "main";

    *out = NULL;
    if (type == CKS_REPO_SPACE || !repo_id || !safe_rel_path(repo_id, true) || !safe_rel_path(rev, true))
        goto out; /* nothing the Hugging Face cache could hold under that name */
    hub = hub_dir(hf_home);
    if (!hub)
        goto out;
    /* "<hub>/models--org--name": the "/" of the id becomes "--" */
    repo_dir = malloc(strlen(hub) + sizeof "/datasets--" + 2 * strlen(repo_id));
    if (!repo_dir) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        goto out;
    }
    char *w_at = repo_dir + sprintf(repo_dir, "%s/%ss--", hub, type == CKS_REPO_DATASET ? "dataset" : "model");
    for (const char *r = repo_id; *r; r++) {
        if (*r == '/') {
            *w_at++ = '-';
            *w_at++ = '-';
        } else {
            *w_at++ = *r;
        }
    }
    *w_at = '\0';
    if (cks_is_lower_hex(rev, 40)) {
        memcpy(commit, rev, 41);
    } else {
        size_t n;
        /* refs/<revision> holds the commit, no newline ("refs/pr/1" nests folders) */
        if (asprintf(&ref, "%s/refs/%s", repo_dir, rev) < 0) {
            ref = NULL;
            err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
            goto out;
        }
        if (!(f = fopen(ref, "r")))
            goto out;
        n = fread(commit, 1, 40, f);
        commit[n] = '\0';
        if (n != 40 || !cks_is_lower_hex(commit, 40))
            goto out;
    }
    if (asprintf(&snap, "%s/snapshots/%s", repo_dir, commit) < 0) {
        snap = NULL;
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        goto out;
    }
    if (stat(snap, &st) != 0 || !S_ISDIR(st.st_mode) || !(repo_real = realpath(repo_dir, NULL)))
        goto out;
    w.repo_real = repo_real;
    snap_walk_dir(&w, snap, "", 0);
    if (w.nomem) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        goto out;
    }
    if (w.n == 0)
        goto out;
    qsort(w.files, w.n, sizeof *w.files, by_path);
    repo = calloc(1, sizeof *repo);
    if (!repo || !(repo->repo_id = strdup(repo_id)) || !(repo->revision = strdup(rev))) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        goto out;
    }
    repo->type = type;
    memcpy(repo->commit, commit, 41);
    repo->files = w.files;
    repo->n_files = w.n;
    w.files = NULL;
    w.n = 0;
    *out = repo;
    repo = NULL;
out:
    if (f)
        fclose(f);
    for (size_t i = 0; i < w.n; i++)
        free(w.files[i].path);
    free(w.files);
    if (repo) { /* not cks_hub_repo_free: this file links without the Hub client (bench/cache) */
        free(repo->repo_id);
        free(repo->revision);
        free(repo);
    }
    free(hub);
    free(repo_dir);
    free(ref);
    free(snap);
    free(repo_real);
    return err;
}
