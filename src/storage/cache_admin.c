/*
 * src/storage/cache_admin.c — the disk cache: list, stat, verify, clear and remove, on the walker
 * and the pins of cache_evict.c.
 * What the cache_*.c files of this folder share, and the rules they follow: src/storage/cache_impl.h.
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

/* ------------------------------------------------------------------------------------ */
/* walking the cache: list, stat, verify, prune, clear                                  */

static void remove_tree_files(const char *dir, uint64_t *bytes)
{
    DIR *d = cache_opendir_here(dir);
    struct dirent *de;
    while (d && (de = readdir(d)) != NULL) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
            continue;
        char *p = cache_path_join(dir, de->d_name);
        struct stat st;
        if (p && lstat(p, &st) == 0) {
            if (S_ISDIR(st.st_mode)) {
                remove_tree_files(p, bytes);
                rmdir(p);
            } else {
                if (bytes)
                    *bytes += (uint64_t)st.st_size;
                unlink(p);
            }
        }
        free(p);
    }
    if (d)
        closedir(d);
}

cks_err cks_cache_clear(cks_cache *c, uint64_t *removed_bytes, cks_diag *diag)
{
    cks_err err = CKS_OK;
    uint64_t bytes = 0;
    char *files = NULL, *meta = NULL;
    if (!c) {
        err = cks_fail(diag, CKS_ERR_INVALID_ARG, "cache: no cache");
        goto out;
    }
    pthread_mutex_lock(&c->mu);
    files = cache_path_join(c->dir, "files");
    meta = cache_path_join(c->dir, "meta");
    DIR *d1 = files ? cache_opendir_here(files) : NULL;
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
            if (cache_name_pinned_here(c, b->d_name))
                continue;
            int pfd = cache_pin_exclusive(c, b->d_name);
            if (pfd < 0)
                continue; /* in use by a live process */
            char *p2 = cache_path_join(p1, b->d_name);
            char *lf = p2 ? cache_path_join(p2, "lock") : NULL;
            int lfd = lf ? open(lf, O_RDONLY | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0644) : -1;
            if (lfd >= 0 && flock(lfd, LOCK_EX | LOCK_NB) == 0) {
                remove_tree_files(p2, &bytes);
                rmdir(p2);
            }
            if (lfd >= 0)
                close(lfd);
            close(pfd);
            free(lf);
            free(p2);
        }
        if (d2)
            closedir(d2);
        if (p1)
            rmdir(p1); /* fails harmlessly when something was kept */
        free(p1);
    }
    if (d1)
        closedir(d1);
    if (meta)
        remove_tree_files(meta, &bytes);
    cache_clean_stale_temps(c, NULL, true);
    for (size_t i = 0; i < c->n_keys; i++) {
        c->keys[i].loaded = false;
        c->keys[i].gen_valid = false;
        c->keys[i].n_ext = 0;
    }
    for (size_t s = 0; s < N_SLOTS; s++)
        c->slots[s].name[0] = '\0';
    c->size_known = false;
    pthread_mutex_unlock(&c->mu);
out:
    free(files);
    free(meta);
    if (removed_bytes)
        *removed_bytes = bytes;
    return err;
}

/* One key, as cks_cache_clear removes every key: only when no live process pins it. */
cks_err cks_cache_remove_key(cks_cache *c, const char *key, uint64_t *removed_bytes, bool *in_use, cks_diag *diag)
{
    cks_err err = CKS_OK;
    uint64_t bytes = 0;
    char name[67], *dir = NULL, *lf = NULL;
    int pfd = -1, lfd = -1;
    bool busy = false;
    if (!c || !cks_cache_key_valid(key)) {
        err = cks_fail(diag, CKS_ERR_INVALID_ARG, "cache: not a content key");
        goto out;
    }
    cache_key_dirname(key, name);
    pthread_mutex_lock(&c->mu);
    dir = cache_keydir_path(c, name);
    if (!dir) {
        pthread_mutex_unlock(&c->mu);
        err = cks_fail(diag, CKS_ERR_NOMEM, "cache: out of memory");
        goto out;
    }
    if (access(dir, F_OK) != 0) {
        pthread_mutex_unlock(&c->mu);
        goto out; /* nothing cached under it */
    }
    busy = cache_name_pinned_here(c, name) || (pfd = cache_pin_exclusive(c, name)) < 0;
    lf = busy ? NULL : cache_path_join(dir, "lock");
    lfd = lf ? open(lf, O_RDONLY | O_CREAT | O_CLOEXEC, 0644) : -1;
    if (!busy && lfd >= 0 && flock(lfd, LOCK_EX | LOCK_NB) == 0) {
        remove_tree_files(dir, &bytes);
        rmdir(dir);
        for (size_t i = 0; i < c->n_keys; i++)
            if (strcmp(c->keys[i].name, name) == 0) {
                c->keys[i].loaded = false;
                c->keys[i].gen_valid = false;
                c->keys[i].n_ext = 0;
            }
        cache_slots_forget(c, name);
        c->size_known = false;
    } else {
        busy = true;
    }
    if (lfd >= 0)
        close(lfd);
    if (pfd >= 0)
        close(pfd);
    pthread_mutex_unlock(&c->mu);
out:
    free(lf);
    free(dir);
    if (removed_bytes)
        *removed_bytes = bytes;
    if (in_use)
        *in_use = busy;
    return err;
}

cks_err cks_cache_meta_remove(cks_cache *c, const char *ns, const char *key, uint64_t *removed_bytes, cks_diag *diag)
{
    cks_err err = CKS_OK;
    char *path = NULL;
    struct stat st;
    uint64_t bytes = 0;
    if (!c || !cache_ns_valid(ns) || !key) {
        err = cks_fail(diag, CKS_ERR_INVALID_ARG, "cache: invalid metadata namespace or key");
        goto out;
    }
    path = cache_meta_path(c, ns, key);
    if (!path) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "cache: out of memory");
        goto out;
    }
    pthread_mutex_lock(&c->mu);
    if (lstat(path, &st) == 0 && unlink(path) == 0) {
        bytes = (uint64_t)st.st_size;
        c->size_known = false;
    }
    pthread_mutex_unlock(&c->mu);
out:
    free(path);
    if (removed_bytes)
        *removed_bytes = bytes;
    return err;
}

static int cmp_entry(const void *x, const void *y)
{
    const cks_cache_entry *a = x, *b = y;
    if (a->kind != b->kind)
        return a->kind < b->kind ? -1 : 1;
    if (a->ns && b->ns) {
        int r = strcmp(a->ns, b->ns);
        if (r)
            return r;
    }
    return strcmp(a->key, b->key);
}

static int cmp_walk_name(const void *x, const void *y)
{
    const cache_walk_ext *a = x, *b = y;
    int r = strcmp(a->name, b->name);
    if (r)
        return r;
    if (a->e.off != b->e.off)
        return a->e.off < b->e.off ? -1 : 1;
    return a->e.len < b->e.len ? -1 : (a->e.len > b->e.len);
}

void cks_cache_entries_free(cks_cache_entry *entries, size_t n)
{
    if (!entries)
        return;
    for (size_t i = 0; i < n; i++) {
        free(entries[i].key);
        free(entries[i].ns);
    }
    free(entries);
}

static cks_err entries_push(cks_cache_entry **v, size_t *n, size_t *cap, cks_cache_entry *e)
{
    if (*n == *cap) {
        size_t nc = *cap ? 2 * *cap : 32;
        cks_cache_entry *nv = realloc(*v, nc * sizeof *nv);
        if (!nv)
            return CKS_ERR_NOMEM;
        *v = nv;
        *cap = nc;
    }
    (*v)[(*n)++] = *e;
    return CKS_OK;
}

cks_err cks_cache_list(cks_cache *c, cks_cache_entry **entries, size_t *n_entries, cks_diag *diag)
{
    cks_err err = CKS_OK;
    cache_walk w = {0};
    cks_cache_entry *v = NULL;
    size_t n = 0, cap = 0;
    char *metad = NULL;
    bool locked = false;

    if (entries)
        *entries = NULL;
    if (n_entries)
        *n_entries = 0;
    if (!c || !entries || !n_entries) {
        err = cks_fail(diag, CKS_ERR_INVALID_ARG, "cache: invalid arguments");
        goto out;
    }
    pthread_mutex_lock(&c->mu);
    locked = true;
    err = cache_walk_cache(c, &w, diag);
    if (err)
        goto out;
    if (w.n > 1)
        qsort(w.ext, w.n, sizeof *w.ext, cmp_walk_name);
    for (size_t i = 0; i < w.n;) {
        size_t j = i;
        cks_cache_entry e = {0};
        uint64_t covered_to = 0;
        e.kind = CKS_CACHE_ENTRY_FILE;
        for (; j < w.n && strcmp(w.ext[j].name, w.ext[i].name) == 0; j++) {
            const cache_walk_ext *x = &w.ext[j];
            uint64_t a = x->e.off > covered_to ? x->e.off : covered_to, b = x->e.off + x->e.len;
            if (b > a)
                e.logical_bytes += b - a; /* union: overlaps counted once */
            if (b > covered_to)
                covered_to = b;
            e.stored_bytes += x->stored;
            e.n_extents++;
            if (x->atime > e.last_used)
                e.last_used = x->atime;
        }
        char *dir = cache_keydir_path(c, w.ext[i].name);
        char *kf = dir ? cache_path_join(dir, "key") : NULL;
        char *vf = dir ? cache_path_join(dir, "verified") : NULL;
        unsigned char *img = NULL;
        size_t kn = 0;
        struct stat st;
        char named[67] = "";
        if (kf && cache_slurp(kf, MAX_KEY_LEN, &img, &kn) == 0 && (img[kn] = '\0', cks_cache_key_valid((char *)img)) &&
            (cache_key_dirname((char *)img, named), strcmp(named, w.ext[i].name) == 0)) {
            /* the key file is written without fsync: only a name that hashes to its folder is it */
            e.key = (char *)img;
        } else {
            free(img);
            e.key = cache_xstrdup(w.ext[i].name);
        }
        e.verified = vf && stat(vf, &st) == 0;
        free(dir);
        free(kf);
        free(vf);
        if (!e.key || entries_push(&v, &n, &cap, &e) != CKS_OK) {
            free(e.key);
            err = cks_fail(diag, CKS_ERR_NOMEM, "cache: out of memory");
            goto out;
        }
        i = j;
    }
    metad = cache_path_join(c->dir, "meta");
    DIR *d1 = metad ? cache_opendir_here(metad) : NULL;
    struct dirent *a;
    while (d1 && (a = readdir(d1)) != NULL && !err) {
        if (a->d_name[0] == '.')
            continue;
        char *p1 = cache_path_join(metad, a->d_name);
        DIR *d2 = p1 ? cache_opendir_here(p1) : NULL;
        struct dirent *b;
        while (d2 && (b = readdir(d2)) != NULL) {
            if (b->d_name[0] == '.' || strlen(b->d_name) != 64)
                continue;
            char *p2 = cache_path_join(p1, b->d_name);
            unsigned char hdr[META_HEADER_SIZE + MAX_KEY_LEN];
            int fd = p2 ? open(p2, O_RDONLY | O_NOFOLLOW | O_CLOEXEC) : -1;
            struct stat st;
            if (fd >= 0 && fstat(fd, &st) == 0) {
                ssize_t r = pread(fd, hdr, sizeof hdr, 0);
                if (r >= (ssize_t)META_HEADER_SIZE && memcmp(hdr, META_MAGIC, 8) == 0) {
                    uint32_t kl = cks_get_le32(hdr + 16);
                    if (kl <= MAX_KEY_LEN && (size_t)r >= META_HEADER_SIZE + kl) {
                        cks_cache_entry e = {0};
                        e.kind = CKS_CACHE_ENTRY_META;
                        e.ns = cache_xstrdup(a->d_name);
                        e.key = strndup((const char *)hdr + META_HEADER_SIZE, kl);
                        e.logical_bytes = cks_get_le64(hdr + 24);
                        e.stored_bytes = (uint64_t)st.st_size;
                        e.last_used = (int64_t)cks_get_le64(hdr + 8);
                        if (!e.ns || !e.key || entries_push(&v, &n, &cap, &e) != CKS_OK) {
                            free(e.ns);
                            free(e.key);
                            err = cks_fail(diag, CKS_ERR_NOMEM, "cache: out of memory");
                        }
                    }
                }
            }
            if (fd >= 0)
                close(fd);
            free(p2);
            if (err)
                break;
        }
        if (d2)
            closedir(d2);
        free(p1);
    }
    if (d1)
        closedir(d1);
    if (err)
        goto out;
    if (n)
        qsort(v, n, sizeof *v, cmp_entry);
out:
    if (locked)
        pthread_mutex_unlock(&c->mu);
    cache_walk_release(&w);
    free(metad);
    if (err) {
        cks_cache_entries_free(v, n);
        v = NULL;
        n = 0;
    }
    if (entries)
        *entries = v;
    if (n_entries)
        *n_entries = n;
    return err;
}

cks_err cks_cache_stat_get(cks_cache *c, cks_cache_stat *st, cks_diag *diag)
{
    cks_err err = CKS_OK;
    cks_cache_entry *v = NULL;
    size_t n = 0;
    if (st)
        memset(st, 0, sizeof *st);
    if (!c || !st) {
        err = cks_fail(diag, CKS_ERR_INVALID_ARG, "cache: invalid arguments");
        goto out;
    }
    err = cks_cache_list(c, &v, &n, diag);
    if (err)
        goto out;
    for (size_t i = 0; i < n; i++) {
        if (v[i].kind == CKS_CACHE_ENTRY_FILE) {
            st->n_keys++;
            st->n_extents += v[i].n_extents;
        } else {
            st->n_meta++;
            st->meta_bytes += v[i].stored_bytes;
        }
        st->logical_bytes += v[i].logical_bytes;
        st->stored_bytes += v[i].stored_bytes;
    }
    pthread_mutex_lock(&c->mu);
    cache_clean_stale_temps(c, &st->n_temp, false);
    pthread_mutex_unlock(&c->mu);
out:
    cks_cache_entries_free(v, n);
    return err;
}

void cks_cache_verify_report_release(cks_cache_verify_report *rep)
{
    if (!rep)
        return;
    cks_cache_free_notes(rep->bad, rep->n_bad);
    rep->bad = NULL;
    rep->n_bad = 0;
}

static void report_bad_v(cks_cache_verify_report *rep, const char *fmt, va_list ap)
{
    char *s = NULL;
    if (vasprintf(&s, fmt, ap) < 0)
        s = NULL;
    if (!s)
        return;
    char **nb = realloc(rep->bad, (rep->n_bad + 1) * sizeof *nb);
    if (!nb) {
        free(s);
        return;
    }
    rep->bad = nb;
    rep->bad[rep->n_bad++] = s;
}

static void report_bad(cks_cache_verify_report *rep, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void report_bad(cks_cache_verify_report *rep, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    report_bad_v(rep, fmt, ap);
    va_end(ap);
}

void cks_cache_verify_report_bad(cks_cache_verify_report *rep, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    report_bad_v(rep, fmt, ap);
    va_end(ap);
}

cks_err cks_cache_verify(cks_cache *c, bool repair, cks_cache_verify_report *rep, cks_diag *diag)
{
    cks_err err = CKS_OK;
    cache_walk w = {0};
    unsigned char *buf = NULL;
    char *metad = NULL;
    bool locked = false;

    if (rep)
        memset(rep, 0, sizeof *rep);
    if (!c || !rep) {
        err = cks_fail(diag, CKS_ERR_INVALID_ARG, "cache: invalid arguments");
        goto out;
    }
    pthread_mutex_lock(&c->mu);
    locked = true;
    err = cache_walk_cache(c, &w, diag);
    if (err)
        goto out;
    buf = malloc(MAX_EXTENT_LEN);
    if (!buf) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "cache: out of memory");
        goto out;
    }
    for (size_t i = 0; i < w.n; i++) {
        cache_walk_ext *x = &w.ext[i];
        char *dir = cache_keydir_path(c, x->name);
        char *kf = dir ? cache_path_join(dir, "key") : NULL;
        unsigned char *img = NULL;
        size_t kn = 0;
        char why[128] = "";
        ext_status st = EXT_CORRUPT;
        if (kf && cache_slurp(kf, MAX_KEY_LEN, &img, &kn) == 0) {
            img[kn] = '\0';
            char name[67];
            if (cks_cache_key_valid((char *)img)) {
                cache_key_dirname((char *)img, name);
                if (strcmp(name, x->name) == 0) {
                    keyent tmpk = {0};
                    tmpk.key = (char *)img;
                    memcpy(tmpk.name, x->name, sizeof tmpk.name);
                    extent e = x->e;
                    /* bypass the slot cache: verify means reading the disk */
                    cache_slots_forget(c, x->name);
                    st = cache_ext_read(c, &tmpk, &e, e.off, buf, e.len, why, sizeof why);
                    cache_slots_forget(c, x->name);
                } else {
                    snprintf(why, sizeof why, "key file names another key");
                }
            } else {
                snprintf(why, sizeof why, "invalid key file");
            }
        } else {
            snprintf(why, sizeof why, "key file missing");
        }
        free(img);
        free(kf);
        free(dir);
        if (st == EXT_GONE)
            continue; /* evicted while we walked */
        rep->checked_extents++;
        if (st == EXT_OK) {
            rep->checked_bytes += x->e.len;
            continue;
        }
        rep->bad_extents++;
        report_bad(rep, "extent %s: %s", x->path, why[0] ? why : "unreadable");
        if (repair)
            unlink(x->path);
    }
    metad = cache_path_join(c->dir, "meta");
    DIR *d1 = metad ? cache_opendir_here(metad) : NULL;
    struct dirent *a;
    while (d1 && (a = readdir(d1)) != NULL) {
        if (a->d_name[0] == '.')
            continue;
        char *p1 = cache_path_join(metad, a->d_name);
        DIR *d2 = p1 ? cache_opendir_here(p1) : NULL;
        struct dirent *b;
        while (d2 && (b = readdir(d2)) != NULL) {
            if (b->d_name[0] == '.' || strlen(b->d_name) != 64)
                continue;
            char *p2 = cache_path_join(p1, b->d_name);
            unsigned char *img = NULL;
            size_t n = 0;
            int rc = p2 ? cache_slurp(p2, META_HEADER_SIZE + MAX_KEY_LEN + MAX_META_LEN + 4, &img, &n)
                        : ENOMEM;
            if (rc == ENOENT) {
                free(p2);
                continue;
            }
            int64_t created;
            const unsigned char *k;
            uint32_t kl;
            char *d = NULL;
            size_t dl;
            rep->checked_meta++;
            if (rc != 0 || !cache_meta_decode(c, img, n, &created, &k, &kl, &d, &dl)) {
                rep->bad_meta++;
                report_bad(rep, "metadata %s: damaged", p2 ? p2 : "?");
                if (repair && p2)
                    unlink(p2);
            }
            free(d);
            free(img);
            free(p2);
        }
        if (d2)
            closedir(d2);
        free(p1);
    }
    if (d1)
        closedir(d1);
    cache_clean_stale_temps(c, &rep->stale_temp, repair);
out:
    if (locked)
        pthread_mutex_unlock(&c->mu);
    cache_walk_release(&w);
    free(buf);
    free(metad);
    if (err && rep)
        cks_cache_verify_report_release(rep);
    return err;
}
