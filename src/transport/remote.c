/*
 * remote.c — the Hub checkpoint provider, on the remote sources (remote_source.c) and the
 * session (remote_session.c); what they share is remote_impl.h. Contract in hub.h.
 *
 * Every byte a remote source hands out comes from one of three places, tried in order:
 * the in-memory extents of this run, the disk cache (when the session has one), and the
 * range engine. Whatever the engine fetches is written to the cache and fed to the
 * whole-file SHA-256 check before anyone reads it.
 *
 * Trust: nothing that fails a check stays. A whole-file SHA-256 that does not match drops
 * every cached byte of the file (and the listing that named the hash); a header the caller
 * could not parse is dropped and read again (discard); before a whole file is read, bytes
 * the cache holds from earlier partial reads are checked with the rest of the file, and
 * refetched from the network if the file does not match (check_whole), so a damaged
 * transfer of one run never decides a later one. A file found in another program's cache
 * (HF_HOME) is checked against the Hub's hash before a whole-file read, read from the
 * network instead when it does not match, and reported unverified while read only in part.
 */
#include "core/byteorder.h"
#include "remote_impl.h"

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <inttypes.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------- provider ---- */

static bool ends_with(const char *s, const char *suffix);

/*
 * An index is about to be read: resolve it together with every .safetensors file in its
 * folder, in one parallel batch, so the shards it names are already resolved when they are
 * opened (a round trip saved). Failures of the speculative ones are ignored. When the index
 * was resolved beside the listing (open_listing), its body is asked for in the same batch
 * (`body`, its URL in *body_url): the shards' resolves then cost no round trip of their own.
 */
static void presolve_with_index(cks_remote *r, const char *index_path, const cks_hub_file *f,
                                cks_http_request *body, char **body_url)
{
    const char *slash = strrchr(index_path, '/');
    size_t dl = slash ? (size_t)(slash - index_path) + 1 : 0;
    const char **paths = calloc(r->repo->n_files + 1, sizeof *paths);
    cks_hub_resolved *res = calloc(r->repo->n_files + 1, sizeof *res);
    cks_err *errs = calloc(r->repo->n_files + 1, sizeof *errs);
    size_t n = 0;
    if (!paths || !res || !errs || r->presolved_index)
        goto out;
    r->presolved_index = true;
    const char *index_url = remote_presolved_url(r, index_path);
    if (!index_url)
        paths[n++] = index_path;
    else if (!f->lfs && f->size_known && f->size > 0 && f->size <= MAX_SMALL_FILE &&
             (*body_url = strdup(index_url))) {
        body->method = "GET";
        body->url = *body_url;
        body->max_body = (size_t)f->size;
    }
    for (size_t i = 0; i < r->repo->n_files; i++) {
        const char *p = r->repo->files[i].path;
        /* the shards, and the two small files a compare reads next beside them (only for a
         * command that reads them: a batch ends with its slowest reply) */
        if (strncmp(p, index_path, dl) == 0 && !strchr(p + dl, '/') && !remote_presolved_url(r, p) &&
            (ends_with(p, ".safetensors") ||
             (r->reads_config && (strcmp(p + dl, "config.json") == 0 || strcmp(p + dl, "tokenizer.json") == 0))))
            paths[n++] = p;
    }
    if ((n == 0 && !body->method) ||
        cks_hub_resolve_some_with(r->hub, r->repo, paths, n, res, errs, body->method ? body : NULL, NULL) != CKS_OK)
        goto out;
    for (size_t i = 0; i < n; i++) {
        if (errs[i] || !res[i].url)
            continue;
        (void)remote_presolved_add(r, paths[i], res[i].url, res[i].expires_at);
        res[i].url = NULL;
    }
out:
    if (res)
        for (size_t i = 0; i < n; i++)
            cks_hub_resolved_release(&res[i]);
    free(res);
    free(errs);
    free(paths);
}

/* cache hook: an index the cache holds whole was read before, and so, most likely, were
 * the shard headers it leads to; resolving them ahead would be the rerun's only traffic. */
static bool index_cached(cks_remote *r, const cks_hub_file *f)
{
    char key[200];
    cks_range whole = {0, f->size}, *miss = NULL;
    size_t n = 1;
    if (!r->cache || !f->size_known || f->lfs ||
        snprintf(key, sizeof key, "git:%s:%s", r->repo->commit, f->path) >= (int)sizeof key ||
        !cks_cache_key_valid(key))
        return false;
    if (cks_cache_missing(r->cache, key, &whole, 1, &miss, &n, NULL) != CKS_OK)
        n = 1;
    free(miss);
    return n == 0;
}

/* The git blob id of a regular file's bytes (what the listing's blobId names). */
static void git_blob_id(const char *data, uint64_t len, char out[41])
{
    char head[32];
    unsigned char d[EVP_MAX_MD_SIZE];
    unsigned dl = 0;
    int n = snprintf(head, sizeof head, "blob %" PRIu64, len);
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    out[0] = '\0';
    if (md && EVP_DigestInit_ex(md, EVP_sha1(), NULL) == 1) {
        EVP_DigestUpdate(md, head, (size_t)n + 1);
        EVP_DigestUpdate(md, data, (size_t)len);
        EVP_DigestFinal_ex(md, d, &dl);
        if (dl >= 20)
            cks_hex_encode(d, 20, out);
    }
    EVP_MD_CTX_free(md);
}

/*
 * A small file read whole (an index, config.json, tokenizer.json), checked before use: a
 * regular file against the git blob id the listing gives it, an LFS file by the source's
 * own SHA-256. Bytes that fail go (memory, cache) and are read once more from the server;
 * failing again, the error names both identities and nothing of them is kept.
 */
static cks_err prov_fetch_file(void *ctx, const char *relpath, char **data, size_t *len,
                               cks_diag *diag)
{
    cks_remote *r = ctx;
    cks_err err;
    cks_source *src = NULL;
    char *buf = NULL;
    const cks_hub_file *f = r->repo ? cks_hub_repo_find(r->repo, relpath) : NULL;
    cks_http_request body;
    char *body_url = NULL;
    memset(&body, 0, sizeof body);
    *data = NULL;
    *len = 0;
    if (r->repo && ends_with(relpath, ".json") && f && !index_cached(r, f))
        presolve_with_index(r, relpath, f, &body, &body_url);
    err = cks_remote_open_file(r, relpath, &src, diag);
    if (err)
        goto out;
    /* the body asked for beside the shards' resolves, taken only whole and as listed (the
     * blob id check below judges its bytes like any others); otherwise it is read as usual */
    if (body.method && !body.err && body.resp.status == 200 && !body.resp.body_truncated &&
        body.resp.body && body.resp.body_len == src->size)
        (void)remote_adopt(src, 0, body.resp.body, src->size, NULL);
    if (src->size > MAX_SMALL_FILE) {
        err = cks_fail(diag, CKS_ERR_UNSUPPORTED, "%s: %" PRIu64 " bytes is too large to read whole",
                       src->name, src->size);
        goto out;
    }
    buf = malloc((size_t)src->size + 1);
    if (!buf) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        goto out;
    }
    for (int attempt = 0; attempt < 2; attempt++) {
        char got[41];
        err = cks_source_check_whole(src, diag);
        if (!err)
            err = cks_source_read_at(src, 0, buf, (size_t)src->size, diag);
        if (!err && f && !f->lfs && f->blob_id[0]) {
            git_blob_id(buf, src->size, got);
            if (strcmp(got, f->blob_id) != 0)
                err = cks_fail(diag, CKS_ERR_INTEGRITY,
                               "%s: the %" PRIu64 " bytes read hash to git blob %s, not to the "
                               "blob id the Hub lists (%s); nothing of them was kept — retry, "
                               "and report it if it persists",
                               src->name, src->size, got, f->blob_id);
        }
        if (err != CKS_ERR_INTEGRITY)
            break;
        /* wrong bytes never stay; the second read comes from the server */
        if (!cks_source_discard(src))
            break;
        if (attempt == 1)
            remote_distrust_listing(r);
    }
    if (err)
        goto out;
    buf[src->size] = '\0';
    *len = (size_t)src->size;
    *data = buf;
    buf = NULL;
out:
    free(buf);
    cks_source_free(src);
    cks_http_response_release(&body.resp);
    free(body_url);
    return err;
}

static cks_err prov_open_source(void *ctx, const char *relpath, cks_source **out, cks_diag *diag)
{
    return cks_remote_open_file(ctx, relpath, out, diag);
}

static cks_err prov_served_sizes(void *ctx, const char *const *relpaths, size_t n, cks_served_size *out,
                                 cks_diag *diag)
{
    return remote_served_sizes(ctx, relpaths, n, out, diag);
}

/* The file as its data server serves it, `size` bytes: the URL is resolved now and given to
 * the source, so the listing's size never enters (it is the one that disagrees). Nothing is
 * cached under the file's identity and no SHA-256 is checked: these are not its bytes. */
static cks_err prov_open_as_served(void *ctx, const char *relpath, uint64_t size, cks_source **out,
                                   cks_diag *diag)
{
    cks_remote *r = ctx;
    cks_err err = CKS_OK;
    char *url = NULL;
    cks_served_size why;
    struct rsrc *s = NULL;

    *out = NULL;
    memset(&why, 0, sizeof why);
    err = remote_resolve_now(r, &relpath, 1, &url, &why, diag);
    if (!err && why.err)
        err = cks_fail(diag, why.err, "%s", why.diag.text);
    if (!err)
        err = remote_new_source(r, relpath, size, NULL, url, &s, diag);
    if (!err) {
        s->key[0] = '\0';
        *out = &s->base;
    }
    free(url);
    return err;
}

static cks_err prov_list_safetensors(void *ctx, const char *dir, char ***paths, size_t *n, cks_diag *diag)
{
    cks_remote *r = ctx;
    cks_err err = CKS_OK;
    size_t dl = strlen(dir), k = 0;
    char **list = NULL;

    *paths = NULL;
    *n = 0;
    if (!r->repo) {
        err = cks_fail(diag, CKS_ERR_UNSUPPORTED, "a plain URL has no file listing");
        goto out;
    }
    list = calloc(r->repo->n_files ? r->repo->n_files : 1, sizeof *list);
    if (!list) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < r->repo->n_files && !err; i++) {
        const char *p = r->repo->files[i].path;
        const char *rest = dl ? p + dl + 1 : p;
        if ((dl && (strncmp(p, dir, dl) != 0 || p[dl] != '/')) || strchr(rest, '/') ||
            !ends_with(rest, ".safetensors"))
            continue;
        list[k] = strdup(p);
        if (!list[k])
            err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        else
            k++;
    }
    if (err)
        goto out;
    *paths = list; /* the listing is sorted by path */
    *n = k;
    list = NULL;
out:
    for (size_t i = 0; list && i < k; i++)
        free(list[i]);
    free(list);
    return err;
}

/*
 * Every shard's header in (about) one round trip: the first chunk of all shards at once,
 * then, for the few whose header is larger than the chunk, the rest.
 */
/*
 * config.json beside the shards, when the command reads it (compare, verify, fingerprint), the
 * session has a disk cache and the file is small: it is read right after the headers, so it
 * rides in their batch (its bytes land in the cache, where prov_fetch_file then finds them)
 * instead of costing a round trip of its own. Other commands leave it: the batch ends with its
 * slowest reply, and the file comes from the Hub's API, not the file servers (`fetch` of 500
 * tensors on loopback waited ~3 ms for it).
 */
#define RIDE_ALONG_MAX (256u * 1024u)
static cks_source *ride_along_config(cks_remote *r, cks_source *const *sources, size_t n)
{
    const char *name = n ? sources[0]->name : NULL, *rel, *slash;
    char prefix[300], path[512];
    const cks_hub_file *f;
    cks_source *src = NULL;
    cks_diag ignored;
    int pl;
    if (!r->reads_config || !r->cache || !r->repo || !name)
        return NULL;
    /* the shards' folder, from their name "org/repo@commit12/folder/shard" */
    pl = snprintf(prefix, sizeof prefix, "%s@%.12s/", r->repo->repo_id, r->repo->commit);
    if (pl < 0 || pl >= (int)sizeof prefix || strncmp(name, prefix, (size_t)pl) != 0)
        return NULL;
    rel = name + pl;
    slash = strrchr(rel, '/');
    if (snprintf(path, sizeof path, "%.*sconfig.json", slash ? (int)(slash - rel + 1) : 0, rel) >= (int)sizeof path)
        return NULL;
    f = cks_hub_repo_find(r->repo, path);
    if (!f || f->lfs || !f->size_known || f->size == 0 || f->size > RIDE_ALONG_MAX || index_cached(r, f) ||
        cks_remote_open_file(r, path, &src, &ignored) != CKS_OK)
        return NULL;
    return src;
}

static cks_err prov_prefetch_headers(void *ctx, cks_source *const *sources, size_t n,
                                     cks_diag *diag)
{
    cks_remote *r = ctx;
    cks_err err = CKS_OK;
    cks_source *config = ride_along_config(r, sources, n);
    cks_source **batch = calloc(n + 1, sizeof *batch);
    cks_range *ranges = calloc(n + 1, sizeof *ranges);
    if (!ranges || !batch) {
        free(ranges);
        free(batch);
        cks_source_free(config);
        return cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
    }
    memcpy(batch, sources, n * sizeof *batch);
    for (size_t i = 0; i < n; i++) {
        /* the index's guess when it has one (one round trip instead of two), bounded by the
         * largest header the parser accepts */
        uint64_t first = sources[i]->header_hint > HEADER_CHUNK ? sources[i]->header_hint : HEADER_CHUNK;
        if (first > 8 + (uint64_t)CKS_ST_MAX_HEADER)
            first = 8 + (uint64_t)CKS_ST_MAX_HEADER;
        ranges[i].offset = 0;
        ranges[i].length = sources[i]->size < first ? sources[i]->size : first;
    }
    if (config) {
        batch[n] = config;
        ranges[n].offset = 0;
        ranges[n].length = config->size;
    }
    /* the config's failure is not the headers': it is fetched again when read */
    err = cks_remote_prefetch(r, batch, ranges, n + (config != NULL), diag);
    if (err && config) {
        err = cks_remote_prefetch(r, sources, ranges, n, diag);
    }
    if (err)
        goto out;
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        uint8_t le[8];
        uint64_t hlen;
        if (sources[i]->size < 8)
            continue;
        err = cks_source_read_at(sources[i], 0, le, 8, diag);
        if (err)
            goto out;
        hlen = cks_get_le64(le);
        /* the parser judges absurd lengths; only fetch what could be a header */
        if (hlen > CKS_ST_MAX_HEADER || hlen > sources[i]->size - 8 || 8 + hlen <= ranges[i].length) {
            ranges[i].length = 0;
            continue;
        }
        ranges[i].offset = ranges[i].length;
        ranges[i].length = 8 + hlen - ranges[i].offset;
        m++;
    }
    if (m)
        err = cks_remote_prefetch(r, sources, ranges, n, diag);
out:
    free(ranges);
    free(batch);
    cks_source_free(config);
    return err;
}

static bool ends_with(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

/* What an hf:// source needs after "hf://" for this kind of repo ("datasets/" ...). */
static const char *hint_prefix(cks_repo_type type)
{
    return type == CKS_REPO_DATASET ? "datasets/" : type == CKS_REPO_SPACE ? "spaces/" : "";
}

/* Pick the checkpoint entry inside `dir` ("" for the root) from the listing. */
static cks_err pick_entry(const cks_hub_repo *repo, const char *dir, char **entry, cks_diag *diag)
{
    cks_err err = CKS_OK;
    char *cand = NULL;
    size_t dl = strlen(dir);
    const char *only = NULL;
    size_t n_st = 0;
    *entry = NULL;
    static const char *const names[] = {"model.safetensors.index.json", "model.safetensors",
                                        "diffusion_pytorch_model.safetensors.index.json",
                                        "diffusion_pytorch_model.safetensors"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        if (asprintf(&cand, "%s%s%s", dir, dl ? "/" : "", names[i]) < 0) {
            cand = NULL;
            err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
            goto out;
        }
        if (cks_hub_repo_find(repo, cand)) {
            *entry = cand;
            cand = NULL;
            goto out;
        }
        free(cand);
        cand = NULL;
    }
    for (size_t i = 0; i < repo->n_files; i++) {
        const char *p = repo->files[i].path;
        if (dl && (strncmp(p, dir, dl) != 0 || p[dl] != '/'))
            continue;
        const char *rest = dl ? p + dl + 1 : p;
        if (strchr(rest, '/'))
            continue;
        if (ends_with(rest, ".safetensors.index.json") || ends_with(rest, ".safetensors")) {
            /* an index wins over the shards it names */
            if (!only || (ends_with(rest, ".json") && !ends_with(only, ".json")))
                only = p;
            if (ends_with(rest, ".json"))
                n_st = 1;
            else if (!ends_with(only, ".json"))
                n_st++;
        }
    }
    if (only && n_st == 1) {
        *entry = strdup(only);
        if (!*entry)
            err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        goto out;
    }
    if (n_st > 1) {
        err = cks_fail(diag, CKS_ERR_FILE_NOT_FOUND,
                       "%s@%.12s%s%s holds %zu .safetensors files and no index; name one "
                       "(hf://%s%s@%s/FILE)",
                       repo->repo_id, repo->commit, dl ? "/" : "", dir, n_st, hint_prefix(repo->type),
                       repo->repo_id, repo->revision);
        goto out;
    }
    if (repo->n_unsafe)
        err = cks_fail(diag, CKS_ERR_FILE_NOT_FOUND,
                       "%s@%.12s%s%s has no safetensors checkpoint it can use: the Hub's listing "
                       "names %zu file%s that %s refused as unsafe (e.g. '%s': a path with a "
                       "'..', '.' or empty part, a leading '/', a backslash or a control "
                       "character could reach outside the repository)",
                       repo->repo_id, repo->commit, dl ? " in " : "", dir, repo->n_unsafe,
                       repo->n_unsafe == 1 ? "" : "s", repo->n_unsafe == 1 ? "was" : "were",
                       repo->unsafe_example);
    else
        err = cks_fail(diag, CKS_ERR_FILE_NOT_FOUND,
                       "%s@%.12s%s%s has no safetensors checkpoint (no model.safetensors, no "
                       "index); for a component in a folder use hf://%s%s/FOLDER",
                       repo->repo_id, repo->commit, dl ? " in " : "", dir, hint_prefix(repo->type),
                       repo->repo_id);
out:
    free(cand);
    return err;
}

/* The checkpoint entry of the session (its path, or the repo root's index or single file)
 * and the name reports give it. */
static cks_err ckpt_entry(cks_remote *r, char **entry, char **name, cks_diag *diag)
{
    cks_err err = CKS_OK;
    *entry = *name = NULL;
    if (r->repo) {
        const char *p = r->spec.path;
        if (p && (ends_with(p, ".safetensors") || ends_with(p, ".json"))) {
            *entry = strdup(p);
            if (!*entry) {
                err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
                goto out;
            }
            if (!cks_hub_repo_find(r->repo, *entry)) {
                err = cks_fail(diag, CKS_ERR_FILE_NOT_FOUND, "%s@%s has no file '%s'",
                               r->repo->repo_id, r->repo->revision, *entry);
                goto out;
            }
        } else {
            err = pick_entry(r->repo, p ? p : "", entry, diag);
            if (err)
                goto out;
        }
        if (asprintf(name, "%s@%s", r->repo->repo_id, r->repo->revision) < 0) {
            *name = NULL;
            err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
            goto out;
        }
    } else {
        *entry = strdup(strrchr(r->url_shown, '/') + 1);
        *name = strdup(r->url_shown);
        if (!*entry || !*name) {
            err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
            goto out;
        }
        if (!**entry) {
            err = cks_fail(diag, CKS_ERR_INVALID_ARG, "%s: the URL must name a file", *name);
            goto out;
        }
    }
out:
    if (err) {
        free(*entry);
        free(*name);
        *entry = *name = NULL;
    }
    return err;
}

/* sources hold references to the session, so the provider needs no release_ctx */
static cks_ckpt_provider session_provider(cks_remote *r)
{
    cks_ckpt_provider prov = {.ctx = r,
                              .fetch_file = prov_fetch_file,
                              .open_source = prov_open_source,
                              .prefetch_headers = prov_prefetch_headers,
                              .served_sizes = prov_served_sizes,
                              .open_as_served = prov_open_as_served,
                              .list_safetensors = prov_list_safetensors};
    return prov;
}

cks_err cks_remote_open_ckpt(cks_remote *r, cks_ckpt **out, cks_diag *diag)
{
    cks_err err = CKS_OK;
    char *entry = NULL, *name = NULL;
    cks_ckpt_provider prov = session_provider(r);
    *out = NULL;
    err = ckpt_entry(r, &entry, &name, diag);
    if (!err)
        err = cks_ckpt_open_with(&prov, name, entry, out, diag);
    if (cks_err_class_of(err) == CKS_CLASS_FORMAT) {
        /* the listing's sizes and hashes took part in that check: the next run asks again */
        pthread_mutex_lock(&r->mu);
        remote_distrust_listing(r);
        pthread_mutex_unlock(&r->mu);
    }
    free(entry);
    free(name);
    return err;
}

cks_err cks_remote_check_ckpt(cks_remote *r, cks_ckpt_check **out, cks_diag *diag)
{
    cks_err err = CKS_OK;
    char *entry = NULL, *name = NULL;
    cks_ckpt_provider prov = session_provider(r);
    *out = NULL;
    err = ckpt_entry(r, &entry, &name, diag);
    if (!err)
        err = cks_ckpt_check_with(&prov, entry, out, diag);
    if (cks_err_class_of(err) == CKS_CLASS_FORMAT || (!err && (*out)->n_problems > 0)) {
        pthread_mutex_lock(&r->mu);
        remote_distrust_listing(r);
        pthread_mutex_unlock(&r->mu);
    }
    free(entry);
    free(name);
    return err;
}
