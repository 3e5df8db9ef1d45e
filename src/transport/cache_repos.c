/*
 * The cache seen by repository (contract: include/ckptscope/cache_hub.h): which cached file
 * keys each repository's listings name, their sizes, and removing one repository.
 *
 * The cache stores bytes by content key ("sha256:<hex>", "git:<commit>:<path>") and keeps
 * each repository listing as metadata (namespace "repo", key "endpoint|type|org/name@rev",
 * src/transport/cache_hub.c), so a repository's files are the keys its listings name.
 */
#include "ckptscope/cache_hub.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define REPO_NS "repo"

/* One (content key, repository) link, sorted by key for lookups. */
typedef struct link {
    char *key;
    size_t repo;
} link;

typedef struct repo_acc {
    cks_repo_type type;
    char *repo_id;
    char **revisions, **commits, **listing_keys;
    size_t n_revisions, n_commits, n_listing_keys;
    uint64_t listing_bytes;
} repo_acc;

typedef struct scan {
    cks_cache_entry *entries;
    size_t n_entries;
    repo_acc *repos;
    size_t n_repos;
    link *links;
    size_t n_links, cap_links;
} scan;

static bool push_str(char ***v, size_t *n, const char *s)
{
    for (size_t i = 0; i < *n; i++)
        if (strcmp((*v)[i], s) == 0)
            return true;
    char **grown = realloc(*v, (*n + 1) * sizeof *grown);
    if (!grown)
        return false;
    *v = grown;
    if (!(grown[*n] = strdup(s)))
        return false;
    (*n)++;
    return true;
}

static void free_strs(char **v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(v[i]);
    free(v);
}

static void scan_release(scan *s)
{
    cks_cache_entries_free(s->entries, s->n_entries);
    for (size_t i = 0; i < s->n_repos; i++) {
        free(s->repos[i].repo_id);
        free_strs(s->repos[i].revisions, s->repos[i].n_revisions);
        free_strs(s->repos[i].commits, s->repos[i].n_commits);
        free_strs(s->repos[i].listing_keys, s->repos[i].n_listing_keys);
    }
    free(s->repos);
    for (size_t i = 0; i < s->n_links; i++)
        free(s->links[i].key);
    free(s->links);
    memset(s, 0, sizeof *s);
}

/* "endpoint|type|org/name@rev" -> type, id, rev (pointers into buf). */
static bool parse_listing_key(char *buf, cks_repo_type *type, char **id, char **rev)
{
    char *bar1 = strchr(buf, '|'), *bar2, *at;
    if (!bar1 || !(bar2 = strchr(bar1 + 1, '|')) || !(at = strchr(bar2 + 1, '@')))
        return false;
    *bar2 = *at = '\0';
    *type = (cks_repo_type)atoi(bar1 + 1);
    *id = bar2 + 1;
    *rev = at + 1;
    return **id && **rev;
}

static size_t repo_index(scan *s, cks_repo_type type, const char *id, bool *ok)
{
    repo_acc *grown;
    for (size_t i = 0; i < s->n_repos; i++)
        if (s->repos[i].type == type && strcmp(s->repos[i].repo_id, id) == 0)
            return i;
    grown = realloc(s->repos, (s->n_repos + 1) * sizeof *grown);
    if (!grown) {
        *ok = false;
        return 0;
    }
    s->repos = grown;
    memset(&grown[s->n_repos], 0, sizeof *grown);
    grown[s->n_repos].type = type;
    grown[s->n_repos].repo_id = strdup(id);
    if (!grown[s->n_repos].repo_id)
        *ok = false;
    return s->n_repos++;
}

static bool add_link(scan *s, const char *key, size_t repo)
{
    if (s->n_links == s->cap_links) {
        size_t cap = s->cap_links ? 2 * s->cap_links : 256;
        link *grown = realloc(s->links, cap * sizeof *grown);
        if (!grown)
            return false;
        s->links = grown;
        s->cap_links = cap;
    }
    if (!(s->links[s->n_links].key = strdup(key)))
        return false;
    s->links[s->n_links++].repo = repo;
    return true;
}

static int by_key(const void *x, const void *y)
{
    const link *a = x, *b = y;
    int c = strcmp(a->key, b->key);
    return c ? c : (a->repo > b->repo) - (a->repo < b->repo);
}

/* Links of one listing: the content key of each of its files. */
static bool read_listing(cks_cache *c, scan *s, size_t repo, const char *meta_key)
{
    char *data = NULL;
    size_t len = 0;
    bool hit = false, ok = true;
    cks_diag d;
    cJSON *root = NULL;
    const cJSON *commit, *files, *f;
    if (cks_cache_meta_get(c, REPO_NS, meta_key, -1, &data, &len, &hit, &d) != CKS_OK || !hit)
        goto out;
    root = cJSON_ParseWithLength(data, len);
    commit = cJSON_GetObjectItemCaseSensitive(root, "commit");
    files = cJSON_GetObjectItemCaseSensitive(root, "files");
    if (!cJSON_IsString(commit) || !cJSON_IsArray(files))
        goto out;
    ok = push_str(&s->repos[repo].commits, &s->repos[repo].n_commits, commit->valuestring);
    cJSON_ArrayForEach(f, files) {
        const cJSON *sha = cJSON_GetObjectItemCaseSensitive(f, "sha256");
        const cJSON *path = cJSON_GetObjectItemCaseSensitive(f, "path");
        char *key = NULL;
        int n;
        if (!ok)
            break;
        if (cJSON_IsString(sha) && sha->valuestring[0])
            n = asprintf(&key, "sha256:%s", sha->valuestring);
        else if (cJSON_IsString(path))
            n = asprintf(&key, "git:%s:%s", commit->valuestring, path->valuestring);
        else
            continue;
        ok = n > 0 && add_link(s, key, repo);
        if (n > 0)
            free(key);
    }
out:
    cJSON_Delete(root);
    free(data);
    return ok;
}

static cks_err scan_cache(cks_cache *c, scan *s, cks_diag *diag)
{
    cks_err err;
    bool ok = true;
    memset(s, 0, sizeof *s);
    err = cks_cache_list(c, &s->entries, &s->n_entries, diag);
    if (err)
        return err;
    for (size_t i = 0; i < s->n_entries && ok; i++) {
        const cks_cache_entry *e = &s->entries[i];
        cks_repo_type type;
        char *buf, *id, *rev;
        size_t r;
        if (e->kind != CKS_CACHE_ENTRY_META || !e->ns || strcmp(e->ns, REPO_NS) != 0)
            continue;
        if (!(buf = strdup(e->key))) {
            ok = false;
            break;
        }
        if (parse_listing_key(buf, &type, &id, &rev)) {
            r = repo_index(s, type, id, &ok);
            if (ok) {
                repo_acc *a = &s->repos[r];
                a->listing_bytes += e->stored_bytes;
                ok = push_str(&a->revisions, &a->n_revisions, rev) &&
                     push_str(&a->listing_keys, &a->n_listing_keys, e->key) && read_listing(c, s, r, e->key);
            }
        }
        free(buf);
    }
    if (!ok) {
        scan_release(s);
        return cks_fail(diag, CKS_ERR_NOMEM, "cache: out of memory");
    }
    if (s->n_links)
        qsort(s->links, s->n_links, sizeof *s->links, by_key);
    return CKS_OK;
}

/* The links of `key`: [*first, *first + count). */
static size_t links_of(const scan *s, const char *key, size_t *first)
{
    size_t lo = 0, hi = s->n_links, count = 0;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (strcmp(s->links[mid].key, key) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    *first = lo;
    while (lo + count < s->n_links && strcmp(s->links[lo + count].key, key) == 0)
        count++;
    return count;
}

static int by_revision(const void *x, const void *y)
{
    return strverscmp(*(char *const *)x, *(char *const *)y);
}

static int by_repo(const void *x, const void *y)
{
    const cks_cache_repo_usage *a = x, *b = y;
    if (!a->repo_id || !b->repo_id)
        return !a->repo_id - !b->repo_id;
    int c = strcmp(a->repo_id, b->repo_id);
    return c ? c : (int)a->type - (int)b->type;
}

void cks_cache_repo_usage_free(cks_cache_repo_usage *v, size_t n)
{
    for (size_t i = 0; v && i < n; i++) {
        free(v[i].repo_id);
        free_strs(v[i].revisions, v[i].n_revisions);
    }
    free(v);
}

cks_err cks_cache_repo_usage_list(cks_cache *c, cks_cache_repo_usage **out, size_t *n_out, cks_diag *diag)
{
    cks_err err;
    scan s;
    cks_cache_repo_usage *v = NULL, *other;
    size_t n = 0;
    *out = NULL;
    *n_out = 0;
    err = scan_cache(c, &s, diag);
    if (err)
        return err;
    v = calloc(s.n_repos + 1, sizeof *v);
    if (!v) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "cache: out of memory");
        goto out;
    }
    for (size_t r = 0; r < s.n_repos; r++) {
        repo_acc *a = &s.repos[r];
        v[r].type = a->type;
        v[r].repo_id = a->repo_id;
        v[r].revisions = a->revisions;
        v[r].n_revisions = a->n_revisions;
        v[r].n_commits = a->n_commits;
        v[r].stored_bytes = a->listing_bytes;
        a->repo_id = NULL;
        a->revisions = NULL;
        a->n_revisions = 0;
        if (v[r].n_revisions)
            qsort(v[r].revisions, v[r].n_revisions, sizeof *v[r].revisions, by_revision);
    }
    n = s.n_repos;
    other = &v[n];
    for (size_t i = 0; i < s.n_entries; i++) {
        const cks_cache_entry *e = &s.entries[i];
        size_t first, count;
        if (e->kind != CKS_CACHE_ENTRY_FILE)
            continue;
        count = links_of(&s, e->key, &first);
        if (count == 0) {
            other->n_files++;
            other->logical_bytes += e->logical_bytes;
            other->stored_bytes += e->stored_bytes;
            if (e->last_used > other->last_used)
                other->last_used = e->last_used;
            continue;
        }
        /* a key one repo's listings name several times (two revisions) counts once */
        size_t distinct = 0;
        for (size_t k = 0; k < count; k++)
            distinct += k == 0 || s.links[first + k].repo != s.links[first + k - 1].repo;
        for (size_t k = 0; k < count; k++) {
            cks_cache_repo_usage *u = &v[s.links[first + k].repo];
            if (k > 0 && s.links[first + k].repo == s.links[first + k - 1].repo)
                continue;
            u->n_files++;
            u->n_shared += distinct > 1;
            u->logical_bytes += e->logical_bytes;
            u->stored_bytes += e->stored_bytes;
            if (e->last_used > u->last_used)
                u->last_used = e->last_used;
        }
    }
    qsort(v, n, sizeof *v, by_repo);
    if (other->n_files)
        n++;
    *out = v;
    *n_out = n;
    v = NULL;
out:
    cks_cache_repo_usage_free(v, s.n_repos + 1);
    scan_release(&s);
    return err;
}

cks_err cks_cache_remove_repo(cks_cache *c, cks_repo_type type, const char *repo_id, cks_cache_rm_report *rep,
                              cks_diag *diag)
{
    cks_err err;
    scan s;
    size_t target = (size_t)-1;
    memset(rep, 0, sizeof *rep);
    err = scan_cache(c, &s, diag);
    if (err)
        return err;
    for (size_t r = 0; r < s.n_repos; r++)
        if (s.repos[r].type == type && strcmp(s.repos[r].repo_id, repo_id) == 0)
            target = r;
    if (target == (size_t)-1) {
        err = cks_fail(diag, CKS_ERR_NOT_FOUND, "the cache holds no listing of %s%s", type == CKS_REPO_DATASET ? "datasets/" : "",
                       repo_id);
        goto out;
    }
    for (size_t i = 0; i < s.n_entries && !err; i++) {
        const cks_cache_entry *e = &s.entries[i];
        size_t first, count;
        bool ours = false, others = false, in_use = false;
        uint64_t bytes = 0;
        if (e->kind != CKS_CACHE_ENTRY_FILE)
            continue;
        count = links_of(&s, e->key, &first);
        for (size_t k = 0; k < count; k++) {
            ours = ours || s.links[first + k].repo == target;
            others = others || s.links[first + k].repo != target;
        }
        if (!ours)
            continue;
        if (others) {
            rep->files_shared_kept++;
            continue;
        }
        err = cks_cache_remove_key(c, e->key, &bytes, &in_use, diag);
        rep->files_in_use += in_use;
        rep->files_removed += !in_use;
        rep->bytes_removed += bytes;
    }
    for (size_t k = 0; k < s.repos[target].n_listing_keys && !err; k++) {
        uint64_t bytes = 0;
        err = cks_cache_meta_remove(c, REPO_NS, s.repos[target].listing_keys[k], &bytes, diag);
        rep->listings_removed++;
        rep->bytes_removed += bytes;
    }
out:
    scan_release(&s);
    return err;
}
