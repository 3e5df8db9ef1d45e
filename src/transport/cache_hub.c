/*
 * Repository listings in the cache (contract: include/ckptscope/cache_hub.h). The listing is
 * stored as a small JSON document of our own, not the Hub's answer, so what is read back
 * is exactly what the remote source used the first time.
 */
#include "ckptscope/cache_hub.h"
#include "ckptscope/hex.h"

#include <cjson/cJSON.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define REPO_NS "repo"
#define REPO_FORMAT 1
#define MAX_REPO_FILES 1000000

static char *repo_key(const char *endpoint, cks_repo_type type, const char *repo_id,
                      const char *revision)
{
    char *k = NULL;
    if (asprintf(&k, "%s|%d|%s@%s", endpoint ? endpoint : "", (int)type, repo_id,
                 revision ? revision : "main") < 0)
        return NULL;
    return k;
}

static bool copy_hex(const cJSON *o, const char *name, char *dst, size_t n)
{
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(o, name);
    if (!cJSON_IsString(j) || (*j->valuestring && !cks_is_lower_hex(j->valuestring, n)))
        return false;
    memcpy(dst, j->valuestring, strlen(j->valuestring) + 1);
    return true;
}

static cks_hub_repo *repo_from_json(const char *text, size_t len, cks_repo_type type,
                                    const char *revision)
{
    cJSON *root = cJSON_ParseWithLength(text, len);
    cks_hub_repo *repo = calloc(1, sizeof *repo);
    bool ok = false;
    const cJSON *fmt, *id, *files, *gated, *e;
    if (!root || !repo)
        goto out;
    fmt = cJSON_GetObjectItemCaseSensitive(root, "format");
    id = cJSON_GetObjectItemCaseSensitive(root, "repo_id");
    files = cJSON_GetObjectItemCaseSensitive(root, "files");
    gated = cJSON_GetObjectItemCaseSensitive(root, "gated");
    if (!cJSON_IsNumber(fmt) || fmt->valuedouble != REPO_FORMAT || !cJSON_IsString(id) ||
        !cJSON_IsArray(files) || !copy_hex(root, "commit", repo->commit, 40) || !repo->commit[0])
        goto out;
    int n = cJSON_GetArraySize(files);
    if (n < 0 || n > MAX_REPO_FILES)
        goto out;
    repo->type = type;
    repo->gated = cJSON_IsTrue(gated);
    repo->repo_id = strdup(id->valuestring);
    repo->revision = strdup(revision ? revision : "main");
    repo->files = calloc(n ? (size_t)n : 1, sizeof *repo->files);
    if (!repo->repo_id || !repo->revision || !repo->files)
        goto out;
    const cJSON *unsafe = cJSON_GetObjectItemCaseSensitive(root, "unsafe_example");
    const cJSON *n_unsafe = cJSON_GetObjectItemCaseSensitive(root, "unsafe_count");
    if (cJSON_IsString(unsafe) && cJSON_IsNumber(n_unsafe) && n_unsafe->valuedouble >= 1 &&
        n_unsafe->valuedouble <= MAX_REPO_FILES) {
        repo->n_unsafe = (size_t)n_unsafe->valuedouble;
        if (!(repo->unsafe_example = strdup(unsafe->valuestring)))
            goto out;
    }
    cJSON_ArrayForEach(e, files) {
        const cJSON *p = cJSON_GetObjectItemCaseSensitive(e, "path");
        const cJSON *sz = cJSON_GetObjectItemCaseSensitive(e, "size");
        cks_hub_file *f = &repo->files[repo->n_files];
        if (!cJSON_IsString(p) || !cJSON_IsNumber(sz) || sz->valuedouble < 0 ||
            sz->valuedouble > 9007199254740992.0)
            goto out;
        f->path = strdup(p->valuestring);
        if (!f->path)
            goto out;
        repo->n_files++;
        f->size = (uint64_t)sz->valuedouble;
        f->size_known = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(e, "size_known"));
        f->lfs = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(e, "lfs"));
        if (!copy_hex(e, "sha256", f->sha256, 64) || !copy_hex(e, "blob_id", f->blob_id, 40))
            goto out;
    }
    ok = true;
out:
    cJSON_Delete(root);
    if (!ok) {
        cks_hub_repo_free(repo);
        repo = NULL;
    }
    return repo;
}

cks_err cks_cache_repo_get(cks_cache *c, const char *endpoint, cks_repo_type type,
                           const char *repo_id, const char *revision, cks_hub_repo **out,
                           bool *hit, cks_diag *diag)
{
    cks_err err = CKS_OK;
    char *key = NULL, *data = NULL;
    size_t len = 0;
    bool h = false;
    cks_hub_repo *repo = NULL;
    if (!c || !repo_id)
        goto out;
    key = repo_key(endpoint, type, repo_id, revision);
    if (!key) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        goto out;
    }
    /* a commit never moves; a branch or tag does. Offline, the last answer is the only one:
     * an expired listing still answers (as huggingface_hub's offline mode reads refs/). */
    int64_t ttl = cks_is_lower_hex(revision, 40) || cks_cache_offline(c) ? -1 : cks_cache_revision_ttl(c);
    err = cks_cache_meta_get(c, REPO_NS, key, ttl, &data, &len, &h, diag);
    if (err || !h)
        goto out;
    repo = repo_from_json(data, len, type, revision);
    h = repo != NULL;
out:
    free(key);
    free(data);
    if (out)
        *out = repo;
    if (hit)
        *hit = h;
    return err;
}

cks_err cks_cache_repo_put(cks_cache *c, const char *endpoint, const char *asked_repo_id,
                           const char *asked_revision, const cks_hub_repo *repo, cks_diag *diag)
{
    cks_err err = CKS_OK;
    cJSON *root = NULL;
    char *text = NULL, *k1 = NULL, *k2 = NULL;
    if (!c || !repo || !asked_repo_id)
        goto out;
    root = cJSON_CreateObject();
    cJSON *files = root ? cJSON_AddArrayToObject(root, "files") : NULL;
    if (!files || !cJSON_AddNumberToObject(root, "format", REPO_FORMAT) ||
        !cJSON_AddStringToObject(root, "repo_id", repo->repo_id) ||
        !cJSON_AddStringToObject(root, "commit", repo->commit) ||
        !cJSON_AddBoolToObject(root, "gated", repo->gated) ||
        (repo->n_unsafe && (!cJSON_AddNumberToObject(root, "unsafe_count", (double)repo->n_unsafe) ||
                            !cJSON_AddStringToObject(root, "unsafe_example", repo->unsafe_example)))) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < repo->n_files; i++) {
        const cks_hub_file *f = &repo->files[i];
        cJSON *e = cJSON_CreateObject();
        if (!e || !cJSON_AddItemToArray(files, e) || !cJSON_AddStringToObject(e, "path", f->path) ||
            !cJSON_AddNumberToObject(e, "size", (double)f->size) ||
            !cJSON_AddBoolToObject(e, "size_known", f->size_known) ||
            !cJSON_AddBoolToObject(e, "lfs", f->lfs) ||
            !cJSON_AddStringToObject(e, "sha256", f->sha256) ||
            !cJSON_AddStringToObject(e, "blob_id", f->blob_id)) {
            err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
            goto out;
        }
    }
    text = cJSON_PrintUnformatted(root);
    k1 = repo_key(endpoint, repo->type, asked_repo_id, asked_revision);
    k2 = repo_key(endpoint, repo->type, asked_repo_id, repo->commit);
    if (!text || !k1 || !k2) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        goto out;
    }
    err = cks_cache_meta_put(c, REPO_NS, k1, text, strlen(text), diag);
    if (!err && strcmp(k1, k2) != 0)
        err = cks_cache_meta_put(c, REPO_NS, k2, text, strlen(text), diag);
out:
    cJSON_Delete(root);
    free(text);
    free(k1);
    free(k2);
    return err;
}

cks_err cks_cache_verify_listed(cks_cache *c, bool repair, cks_cache_verify_report *rep,
                                cks_diag *diag)
{
    cks_err err = CKS_OK;
    cks_cache_entry *v = NULL;
    size_t n = 0, n_done = 0;
    char **done = NULL;
    if (!c || !rep) {
        err = cks_fail(diag, CKS_ERR_INVALID_ARG, "cache: invalid arguments");
        goto out;
    }
    err = cks_cache_list(c, &v, &n, diag);
    if (err)
        goto out;
    for (size_t i = 0; i < n && !err; i++) {
        char *data = NULL;
        size_t len = 0;
        bool hit = false;
        cks_hub_repo *repo = NULL;
        if (v[i].kind != CKS_CACHE_ENTRY_META || strcmp(v[i].ns, REPO_NS) != 0 ||
            cks_cache_meta_get(c, REPO_NS, v[i].key, -1, &data, &len, &hit, NULL) != CKS_OK || !hit)
            continue;
        repo = repo_from_json(data, len, CKS_REPO_MODEL, NULL);
        free(data);
        for (size_t f = 0; repo && f < repo->n_files && !err; f++) {
            const cks_hub_file *hf = &repo->files[f];
            char key[72], hex[65];
            bool whole = false, seen = false;
            cks_range all = {0, hf->size}, *miss = NULL;
            size_t n_miss = 0;
            if (!hf->lfs || !hf->sha256[0] || !hf->size_known || hf->size == 0)
                continue;
            snprintf(key, sizeof key, "sha256:%s", hf->sha256);
            for (size_t k = 0; k < n_done && !seen; k++)
                seen = strcmp(done[k], key) == 0;
            if (seen)
                continue;
            char **grown = realloc(done, (n_done + 1) * sizeof *grown);
            if (!grown || !(grown[n_done] = strdup(key))) {
                if (grown)
                    done = grown;
                err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
                break;
            }
            done = grown;
            n_done++;
            if (cks_cache_missing(c, key, &all, 1, &miss, &n_miss, NULL) != CKS_OK)
                n_miss = 0, whole = true; /* unknown: skip it below */
            /* nothing cached at all is not a file held in part */
            bool nothing = n_miss == 1 && miss[0].offset == 0 && miss[0].length == hf->size;
            free(miss);
            if (whole || n_miss > 0) {
                rep->partial_files += n_miss > 0 && !nothing;
                continue;
            }
            rep->checked_files++;
            if (cks_cache_is_verified(c, key, hf->size))
                continue;
            if (cks_cache_hash_file(c, key, hf->size, hex, &whole, NULL) != CKS_OK || !whole)
                continue; /* a damaged chunk: the extent pass reports it */
            if (strcmp(hex, hf->sha256) == 0) {
                (void)cks_cache_mark_verified(c, key, hf->size, NULL);
                continue;
            }
            rep->bad_files++;
            cks_cache_verify_report_bad(rep, "file %s (%s in %s): its %" PRIu64 " cached bytes hash "
                                        "to sha256:%s",
                                        key, hf->path, repo->repo_id, hf->size, hex);
            if (repair)
                (void)cks_cache_drop(c, key, "they do not hash to the listed SHA-256", NULL);
        }
        cks_hub_repo_free(repo);
    }
out:
    for (size_t k = 0; k < n_done; k++)
        free(done[k]);
    free(done);
    cks_cache_entries_free(v, n);
    return err;
}

cks_err cks_cache_repo_forget(cks_cache *c, const char *endpoint, cks_repo_type type,
                              const char *asked_repo_id, const char *asked_revision,
                              const char *commit, cks_diag *diag)
{
    cks_err err = CKS_OK;
    char *k1 = NULL, *k2 = NULL;
    if (!c || !asked_repo_id)
        goto out;
    k1 = repo_key(endpoint, type, asked_repo_id, asked_revision);
    k2 = commit ? repo_key(endpoint, type, asked_repo_id, commit) : NULL;
    if (!k1 || (commit && !k2)) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        goto out;
    }
    err = cks_cache_meta_delete(c, REPO_NS, k1, diag);
    if (!err && k2)
        err = cks_cache_meta_delete(c, REPO_NS, k2, diag);
out:
    free(k1);
    free(k2);
    return err;
}

cks_err cks_cache_hf_source(const char *hf_home, const cks_hub_repo *repo, const cks_hub_file *f,
                            cks_source **out, cks_diag *diag)
{
    cks_err err = CKS_OK;
    char *path = NULL, *name = NULL;
    cks_source *src = NULL;
    const char *type;
    if (out)
        *out = NULL;
    if (!out || !repo || !f || !f->size_known)
        goto out;
    if (repo->type == CKS_REPO_MODEL)
        type = "model";
    else if (repo->type == CKS_REPO_DATASET)
        type = "dataset";
    else
        goto out;
    /* a lookup failure (odd path, odd id) only means "not there": the network remains */
    if (cks_cache_hf_lookup(hf_home, type, repo->repo_id, repo->commit, f->path, &path, NULL) !=
            CKS_OK ||
        !path)
        goto out;
    /* blobs are named by their etag: the LFS SHA-256, or the git blob id */
    const char *blob = strrchr(path, '/');
    const char *want = f->lfs ? f->sha256 : f->blob_id;
    if (!blob || !*want || strcmp(blob + 1, want) != 0)
        goto out;
    if (cks_source_open_file(path, &src, NULL) != CKS_OK)
        goto out;
    if (src->size != f->size)
        goto out;
    if (asprintf(&name, "%s@%.12s/%s", repo->repo_id, repo->commit, f->path) < 0) {
        name = NULL;
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        goto out;
    }
    free(src->name);
    src->name = name;
    name = NULL;
    if (f->lfs)
        memcpy(src->sha256_hex, f->sha256, 65);
    *out = src;
    src = NULL;
out:
    cks_source_free(src);
    free(path);
    free(name);
    return err;
}

cks_err cks_cache_describe_ckpt_missing(cks_cache *c, const cks_ckpt *ckpt,
                                        const cks_ckpt_tensor *const *sel, size_t n_sel,
                                        char **message, cks_diag *diag)
{
    cks_err err = CKS_OK;
    char *msg = NULL;
    size_t msg_len = 0;
    FILE *f = NULL;
    const char **names = NULL;
    cks_range *ranges = NULL;
    bool any = false;
    if (message)
        *message = NULL;
    if (!c || !ckpt || !message) {
        err = cks_fail(diag, CKS_ERR_INVALID_ARG, "cache: invalid arguments");
        goto out;
    }
    size_t n = sel ? n_sel : ckpt->n_tensors;
    names = calloc(n ? n : 1, sizeof *names);
    ranges = calloc(n ? n : 1, sizeof *ranges);
    f = open_memstream(&msg, &msg_len);
    if (!names || !ranges || !f) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        goto out;
    }
    for (size_t fi = 0; fi < ckpt->n_files; fi++) {
        const cks_ckpt_file *file = &ckpt->files[fi];
        size_t m = 0;
        for (size_t i = 0; i < n; i++) {
            const cks_ckpt_tensor *t = sel ? sel[i] : &ckpt->tensors[i];
            if (t->file != fi)
                continue;
            names[m] = t->info->name;
            ranges[m].offset = t->info->file_offset;
            ranges[m].length = t->info->end - t->info->begin;
            m++;
        }
        if (m == 0)
            continue;
        char key[72];
        char *line = NULL;
        if (!file->source || strlen(file->source->sha256_hex) != 64) {
            fprintf(f, "%s%s: not identified by content, so not answerable from the cache",
                    any ? "\n" : "", file->path);
            any = true;
            continue;
        }
        snprintf(key, sizeof key, "sha256:%s", file->source->sha256_hex);
        err = cks_cache_describe_missing(c, key, file->path, names, ranges, m, &line, diag);
        if (err)
            goto out;
        if (line) {
            fprintf(f, "%s%s", any ? "\n" : "", line);
            any = true;
            free(line);
        }
    }
out:
    if (f)
        fclose(f);
    free(names);
    free(ranges);
    if (err || !any) {
        free(msg);
        msg = NULL;
    }
    if (message)
        *message = msg;
    return err;
}
