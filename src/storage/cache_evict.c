/*
 * src/storage/cache_evict.c — the disk cache: walking the extent files, and eviction under the
 * size cap (least recently used first, pinned keys kept), with `cks_cache_prune`.
 * Below cache_admin.c (list, stat, verify, clear), which walks the cache with the same walker;
 * cache_extents.c calls cache_maybe_evict after a write. Shared rules: cache_impl.h.
 */
#include "ckptscope/cache.h"
#include "ckptscope/hex.h"
#include "cache_impl.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>


void cache_walk_release(cache_walk *w)
{
    for (size_t i = 0; i < w->n; i++)
        free(w->ext[i].path);
    free(w->ext);
    memset(w, 0, sizeof *w);
}

/* Every extent file (with size and access time) and the metadata totals. */
cks_err cache_walk_cache(cks_cache *c, cache_walk *w, cks_diag *diag)
{
    cks_err err = CKS_OK;
    char *files = cache_path_join(c->dir, "files"), *meta = cache_path_join(c->dir, "meta");
    DIR *d1 = NULL;
    memset(w, 0, sizeof *w);
    if (!files || !meta) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "cache: out of memory");
        goto out;
    }
    d1 = cache_opendir_here(files);
    struct dirent *a;
    while (d1 && (a = readdir(d1)) != NULL) {
        if (a->d_name[0] == '.')
            continue;
        char *p1 = cache_path_join(files, a->d_name);
        DIR *d2 = p1 ? cache_opendir_here(p1) : NULL;
        struct dirent *b;
        while (d2 && (b = readdir(d2)) != NULL) {
            if (b->d_name[0] == '.' || strlen(b->d_name) != 66)
                continue;
            char *p2 = cache_path_join(p1, b->d_name);
            DIR *d3 = p2 ? cache_opendir_here(p2) : NULL;
            struct dirent *x;
            while (d3 && (x = readdir(d3)) != NULL) {
                extent one, *members;
                size_t n_members;
                uint64_t file_bytes = 0;
                struct stat st;
                pack_status ps = cache_file_extents(p2, x->d_name, &one, &members, &n_members, &file_bytes);
                if (ps == PACK_NOT_EXTENTS)
                    continue;
                if (ps == PACK_NOMEM) {
                    err = cks_fail(diag, CKS_ERR_NOMEM, "cache: out of memory");
                    break;
                }
                /* (a pack whose directory fails still counts as one entry, so that eviction
                 * can remove it and `cache verify` reports it) */
                char *p3 = cache_path_join(p2, x->d_name);
                if (!p3 || stat(p3, &st) != 0) {
                    if (members != &one)
                        free(members);
                    free(p3);
                    continue;
                }
                if (ps != PACK_OK || !one.packed)
                    file_bytes = (uint64_t)st.st_size;
                if (w->cap - w->n < n_members) {
                    size_t nc = w->cap ? 2 * w->cap : 64;
                    while (nc - w->n < n_members)
                        nc *= 2;
                    cache_walk_ext *ne = realloc(w->ext, nc * sizeof *ne);
                    if (!ne) {
                        if (members != &one)
                            free(members);
                        free(p3);
                        err = cks_fail(diag, CKS_ERR_NOMEM, "cache: out of memory");
                        break;
                    }
                    w->ext = ne;
                    w->cap = nc;
                }
                for (size_t m = 0; m < n_members; m++) {
                    char *path = m == 0 ? p3 : cache_xstrdup(p3);
                    if (!path) {
                        err = cks_fail(diag, CKS_ERR_NOMEM, "cache: out of memory");
                        break;
                    }
                    cache_walk_ext *we = &w->ext[w->n++];
                    we->path = path;
                    memcpy(we->name, b->d_name, 67);
                    we->e = members[m];
                    we->stored = m == 0 ? file_bytes : 0;
                    we->file_bytes = file_bytes;
                    we->atime = (int64_t)st.st_atim.tv_sec;
                }
                if (members != &one)
                    free(members);
                if (err)
                    break;
            }
            if (d3)
                closedir(d3);
            free(p2);
            if (err)
                break;
        }
        if (d2)
            closedir(d2);
        free(p1);
        if (err)
            goto out;
    }
    if (d1)
        closedir(d1);
    d1 = cache_opendir_here(meta);
    while (d1 && (a = readdir(d1)) != NULL) {
        if (a->d_name[0] == '.')
            continue;
        char *p1 = cache_path_join(meta, a->d_name);
        DIR *d2 = p1 ? cache_opendir_here(p1) : NULL;
        struct dirent *b;
        while (d2 && (b = readdir(d2)) != NULL) {
            struct stat st;
            if (b->d_name[0] == '.' || strlen(b->d_name) != 64)
                continue;
            char *p2 = cache_path_join(p1, b->d_name);
            if (p2 && stat(p2, &st) == 0) {
                w->meta_bytes += (uint64_t)st.st_size;
                w->n_meta++;
            }
            free(p2);
        }
        if (d2)
            closedir(d2);
        free(p1);
    }
out:
    if (d1)
        closedir(d1);
    free(files);
    free(meta);
    if (err)
        cache_walk_release(w);
    return err;
}

static int cmp_walk_atime(const void *x, const void *y)
{
    const cache_walk_ext *a = x, *b = y;
    if (a->atime != b->atime)
        return a->atime < b->atime ? -1 : 1;
    return strcmp(a->path, b->path);
}

bool cache_name_pinned_here(cks_cache *c, const char *name)
{
    for (size_t i = 0; i < c->n_keys; i++)
        if (c->keys[i].pinned && strcmp(c->keys[i].name, name) == 0)
            return true;
    return false;
}

/* Try to take a key's pin file exclusively: succeeds only when no live process pins it.
 * Returns the fd holding the lock, or -1. */
int cache_pin_exclusive(cks_cache *c, const char *name)
{
    char *dir = cache_keydir_path(c, name);
    char *pf = dir ? cache_path_join(dir, "pin") : NULL;
    int fd = pf ? open(pf, O_RDONLY | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0644) : -1;
    if (fd >= 0 && flock(fd, LOCK_EX | LOCK_NB) != 0) {
        close(fd);
        fd = -1;
    }
    free(pf);
    free(dir);
    return fd;
}

/* Evict LRU extents until the total on disk is at most target. Caller holds c->mu. */
static cks_err evict_to(cks_cache *c, uint64_t target, uint64_t *n_out, uint64_t *bytes_out,
                        uint64_t *remaining_out, cks_diag *diag)
{
    cks_err err = CKS_OK;
    cache_walk w;
    uint64_t total, n_ev = 0, b_ev = 0;
    char *lockp = cache_path_join(c->dir, "evict.lock");
    int lfd = lockp ? open(lockp, O_RDONLY | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0644) : -1;
    if (lfd >= 0)
        (void)flock(lfd, LOCK_EX);
    err = cache_walk_cache(c, &w, diag);
    if (err)
        goto out;
    total = w.meta_bytes;
    for (size_t i = 0; i < w.n; i++)
        total += w.ext[i].stored;
    if (w.n > 1)
        qsort(w.ext, w.n, sizeof *w.ext, cmp_walk_atime);
    for (size_t i = 0; i < w.n && total > target; i++) {
        cache_walk_ext *e = &w.ext[i];
        if (cache_name_pinned_here(c, e->name))
            continue;
        int pfd = cache_pin_exclusive(c, e->name);
        if (pfd < 0)
            continue; /* another process needs it */
        if (unlink(e->path) == 0) {
            /* a pack's members share its file: the first of them to go takes all of it */
            total = total > e->file_bytes ? total - e->file_bytes : 0;
            n_ev++;
            b_ev += e->file_bytes;
            cache_add_note(c, "cache: evicted [%" PRIu64 ", %" PRIu64 ") of %s (%" PRIu64 " bytes%s)",
                     e->e.off, e->e.off + e->e.len, e->name, e->file_bytes,
                     e->e.packed ? ", with the rest of its pack" : "");
        }
        close(pfd);
        cache_slots_forget(c, e->name);
    }
    c->size_estimate = total;
    c->size_known = true;
    if (remaining_out)
        *remaining_out = total;
out:
    cache_walk_release(&w);
    if (lfd >= 0)
        close(lfd);
    free(lockp);
    if (n_out)
        *n_out = n_ev;
    if (bytes_out)
        *bytes_out = b_ev;
    return err;
}

/* Keep the cap without walking the whole cache on every write: cache_walk once, then track our
 * own writes, and cache_walk again only when the estimate crosses the cap (other processes'
 * writes are caught at that point). */
cks_err cache_maybe_evict(cks_cache *c, cks_diag *diag)
{
    cks_err err = CKS_OK;
    if (!c->size_known) {
        cache_walk w;
        err = cache_walk_cache(c, &w, diag);
        if (err)
            goto out;
        c->size_estimate = w.meta_bytes;
        for (size_t i = 0; i < w.n; i++)
            c->size_estimate += w.ext[i].stored;
        c->size_known = true;
        cache_walk_release(&w);
    }
    uint64_t limit = c->max_bytes > c->size_floor ? c->max_bytes : c->size_floor;
    if (c->size_estimate <= limit)
        goto out;
    uint64_t remaining = 0;
    err = evict_to(c, c->max_bytes, NULL, NULL, &remaining, diag);
    if (err)
        goto out;
    /* what is left over the cap is pinned; wait for 10% more growth before walking again */
    c->size_floor = remaining > c->max_bytes ? remaining + c->max_bytes / 10 : 0;
out:
    return err;
}

cks_err cks_cache_prune(cks_cache *c, uint64_t max_bytes, uint64_t *evicted_extents,
                        uint64_t *evicted_bytes, cks_diag *diag)
{
    cks_err err = CKS_OK;
    if (evicted_extents)
        *evicted_extents = 0;
    if (evicted_bytes)
        *evicted_bytes = 0;
    if (!c) {
        err = cks_fail(diag, CKS_ERR_INVALID_ARG, "cache: no cache");
        goto out;
    }
    pthread_mutex_lock(&c->mu);
    cache_clean_stale_temps(c, NULL, true);
    err = evict_to(c, max_bytes, evicted_extents, evicted_bytes, NULL, diag);
    pthread_mutex_unlock(&c->mu);
out:
    return err;
}
