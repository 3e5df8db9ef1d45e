/*
 * Reading from the standard Hugging Face cache (HF_HOME), never writing to it.
 *
 * Layout (research/hub-protocol.md §A5): <hub>/<type>s--<org>--<name>/snapshots/<commit>/<path>
 * is a symlink to ../../blobs/<etag>, and blobs are renamed into place only when complete
 * (partial downloads are "<etag>.<x>.incomplete"). So a snapshot entry that resolves to a
 * regular file is a complete file; we still refuse anything that escapes the repo folder.
 */
#include "ckptscope/cache.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static bool hex40(const char *s)
{
    if (strlen(s) != 40)
        return false;
    for (int i = 0; i < 40; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return false;
    return true;
}

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
    if (!hex40(commit)) {
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
        if (n != 40 || !hex40(commit_buf))
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
