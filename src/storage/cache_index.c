/*
 * src/storage/cache_index.c — the disk cache: keys, their directories, locks and extent indexes; opening and freeing a cache.
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
/* keys and their directories                                                          */

bool cks_cache_key_valid(const char *key)
{
    size_t n;
    if (!key)
        return false;
    n = strlen(key);
    if (n > MAX_KEY_LEN)
        return false;
    if (strncmp(key, "sha256:", 7) == 0)
        return n == 7 + 64 && cks_hex_span(key + 7, 64, false);
    if (strncmp(key, "git:", 4) == 0) {
        if (n < 4 + 40 + 2 || !cks_hex_span(key + 4, 40, false) || key[44] != ':')
            return false;
        for (size_t i = 45; i < n; i++)
            if ((unsigned char)key[i] < 0x20)
                return false;
        return true;
    }
    return false;
}

/* LFS keys keep their SHA-256 as the directory name so a person can find a file by its
 * Hub hash; git keys (a path inside) are hashed to a safe name. */
void cache_key_dirname(const char *key, char out[67])
{
    if (strncmp(key, "sha256:", 7) == 0) {
        out[0] = 's';
        out[1] = '-';
        memcpy(out + 2, key + 7, 64);
        out[66] = '\0';
    } else {
        char h[65];
        cks_sha256_hex(key, strlen(key), h);
        out[0] = 'g';
        out[1] = '-';
        memcpy(out + 2, h, 65);
    }
}

char *cache_keydir_path(const cks_cache *c, const char *name)
{
    char *p = NULL;
    if (asprintf(&p, "%s/files/%.2s/%s", c->dir, name + 2, name) < 0)
        return NULL;
    return p;
}

char *cache_extent_path(const cks_cache *c, const char *name, const extent *e)
{
    char *p = NULL;
    if (asprintf(&p, "%s/files/%.2s/%s/%c-%016" PRIx64 "-%016" PRIx64, c->dir, name + 2, name,
                 e->packed ? 'p' : 'x', e->packed ? e->pack_off : e->off,
                 e->packed ? e->pack_tag : e->len) < 0)
        return NULL;
    return p;
}

/* "<letter>-<16 hex>-<16 hex>" */
static bool parse_two_hex(const char *s, char letter, uint64_t *a, uint64_t *b)
{
    if (strlen(s) != 2 + 16 + 1 + 16 || s[0] != letter || s[1] != '-' || s[18] != '-')
        return false;
    if (!cks_hex_span(s + 2, 16, false) || !cks_hex_span(s + 19, 16, false))
        return false;
    *a = strtoull(s + 2, NULL, 16);
    *b = strtoull(s + 19, NULL, 16);
    return true;
}

bool cache_parse_extent_name(const char *s, uint64_t *off, uint64_t *len)
{
    return parse_two_hex(s, 'x', off, len) && *len > 0 && *len <= MAX_EXTENT_LEN &&
           *off <= UINT64_MAX - *len;
}

bool cache_parse_pack_name(const char *s, uint64_t *pack_off, uint64_t *pack_tag)
{
    return parse_two_hex(s, 'p', pack_off, pack_tag);
}

/* The same file: both one extent file of that range, or both members of one pack. */
bool cache_same_file(const extent *a, const extent *b)
{
    if (a->packed != b->packed)
        return false;
    if (a->packed)
        return a->pack_off == b->pack_off && a->pack_tag == b->pack_tag;
    return a->off == b->off && a->len == b->len;
}

pack_status cache_pack_members(const char *path, uint64_t pack_off, uint64_t pack_tag, extent **members,
                               size_t *n_members, uint64_t *file_bytes)
{
    pack_status ps = PACK_UNREADABLE;
    unsigned char *dir = NULL;
    extent *v = NULL;
    struct stat st;
    unsigned char hdr[PACK_HEADER_SIZE];
    int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC), e;
    *members = NULL;
    *n_members = 0;
    if (fd < 0 || fstat(fd, &st) != 0)
        goto out;
    ps = PACK_DAMAGED;
    if (!S_ISREG(st.st_mode))
        goto out;
    e = cache_pread_all(fd, hdr, sizeof hdr, 0);
    if (e > 0)
        ps = PACK_UNREADABLE;
    if (e != 0 || memcmp(hdr, PACK_MAGIC, 8) != 0)
        goto out;
    uint32_t n = cks_get_le32(hdr + 8);
    if (n == 0 || n > PACK_MAX_MEMBERS || cks_get_le64(hdr + 16) != pack_off ||
        cks_get_le64(hdr + 24) != pack_tag)
        goto out;
    size_t dir_len = (size_t)n * PACK_ENTRY_SIZE;
    uint64_t images_from = PACK_HEADER_SIZE + dir_len;
    dir = malloc(dir_len);
    v = malloc((size_t)n * sizeof *v);
    if (!dir || !v) {
        ps = PACK_NOMEM;
        goto out;
    }
    e = cache_pread_all(fd, dir, dir_len, PACK_HEADER_SIZE);
    if (e > 0)
        ps = PACK_UNREADABLE;
    if (e != 0)
        goto out;
    uint32_t crc = cks_crc32c(0, hdr, 60);
    crc = cks_crc32c(crc, dir, dir_len);
    if (crc != cks_get_le32(hdr + 60))
        goto out;
    for (uint32_t i = 0; i < n; i++) {
        const unsigned char *ent = dir + (size_t)i * PACK_ENTRY_SIZE;
        extent *m = &v[i];
        m->off = cks_get_le64(ent);
        m->len = cks_get_le64(ent + 8);
        m->base = cks_get_le64(ent + 16);
        m->pack_off = pack_off;
        m->pack_tag = pack_tag;
        m->packed = true;
        if (m->len == 0 || m->len > MAX_EXTENT_LEN || m->off > UINT64_MAX - m->len ||
            m->base < images_from || m->base > (uint64_t)st.st_size)
            goto out;
    }
    *members = v;
    *n_members = n;
    *file_bytes = (uint64_t)st.st_size;
    v = NULL;
    ps = PACK_OK;
out:
    if (fd >= 0)
        close(fd);
    free(dir);
    free(v);
    return ps;
}

pack_status cache_file_extents(const char *keydir, const char *name, extent *one, extent **members,
                               size_t *n_members, uint64_t *file_bytes)
{
    pack_status ps = PACK_OK;
    memset(one, 0, sizeof *one);
    *members = one;
    *n_members = 1;
    if (cache_parse_pack_name(name, &one->pack_off, &one->pack_tag)) {
        one->packed = true;
        char *path = cache_path_join(keydir, name);
        ps = path ? cache_pack_members(path, one->pack_off, one->pack_tag, members, n_members, file_bytes)
                  : PACK_NOMEM;
        free(path);
        if (ps != PACK_OK) {
            *members = one;
            *n_members = 1;
        }
    } else if (!cache_parse_extent_name(name, &one->off, &one->len)) {
        ps = PACK_NOT_EXTENTS;
    }
    return ps;
}

int cache_cmp_extent(const void *a, const void *b)
{
    const extent *x = a, *y = b;
    if (x->off != y->off)
        return x->off < y->off ? -1 : 1;
    return x->len < y->len ? -1 : (x->len > y->len);
}

static keyent *key_find(cks_cache *c, const char *key, bool create)
{
    for (size_t i = 0; i < c->n_keys; i++)
        if (strcmp(c->keys[i].key, key) == 0)
            return &c->keys[i];
    if (!create)
        return NULL;
    if (c->n_keys == c->cap_keys) {
        size_t nc = c->cap_keys ? 2 * c->cap_keys : 16;
        keyent *nk = realloc(c->keys, nc * sizeof *nk);
        if (!nk)
            return NULL;
        c->keys = nk;
        c->cap_keys = nc;
    }
    keyent *k = &c->keys[c->n_keys];
    memset(k, 0, sizeof *k);
    k->key = cache_xstrdup(key);
    if (!k->key)
        return NULL;
    k->pin_fd = -1;
    k->lock_fd = -1;
    cache_key_dirname(key, k->name);
    c->n_keys++;
    return k;
}

/* Make the key directory and its "key" file (so `cache ls` can name it). */
static cks_err keydir_ensure(cks_cache *c, keyent *k, cks_diag *diag)
{
    cks_err err = CKS_OK;
    char *dir = cache_keydir_path(c, k->name);
    char *kf = NULL;
    struct stat st;
    if (!dir) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "cache: out of memory");
        goto out;
    }
    kf = cache_path_join(dir, "key");
    if (!kf) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "cache: out of memory");
        goto out;
    }
    /* checked every time: files are then opened inside it by name */
    if (cache_mkdirs_here(c, dir) != 0) {
        err = cache_io_fail(diag, errno, "creating directory", dir);
        goto out;
    }
    if (lstat(kf, &st) == 0)
        goto out;
    /* Not synced: it only names the folder for `cache ls`/`verify`, which check that the name
     * they read hashes to the folder's and fall back to the folder's own name when it does not
     * (a crash can leave it empty). Synced, it cost two fsyncs per shard at every first open:
     * ~0.3 s of a cold 89-shard T2 audit, under the cache's lock. */
    err = cache_write_file_renamed(c, kf, dir, k->key, strlen(k->key), false, diag);
out:
    free(dir);
    free(kf);
    return err;
}

/*
 * The key's "lock" file carries an 8-byte generation counter that every writer bumps
 * (under the lock) after it adds or replaces extents. Comparing it with the generation the
 * in-memory index was read at tells whether another process added anything, without
 * reading a directory that may hold thousands of extents. Removals (eviction, corrupt
 * extents) do not bump it: a stale entry costs an ENOENT and a rescan, never data.
 */
cks_err cache_key_open_lock(cks_cache *c, keyent *k, cks_diag *diag)
{
    cks_err err = CKS_OK;
    char *dir = NULL, *lf = NULL;
    struct stat st;
    if (k->lock_fd >= 0) {
        /* `cache clear` may have removed the directory of an unpinned key */
        if (fstat(k->lock_fd, &st) == 0 && st.st_nlink > 0)
            goto out;
        close(k->lock_fd);
        k->lock_fd = -1;
        k->gen_valid = false;
    }
    err = keydir_ensure(c, k, diag);
    if (err)
        goto out;
    dir = cache_keydir_path(c, k->name);
    lf = dir ? cache_path_join(dir, "lock") : NULL;
    if (!lf) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "cache: out of memory");
        goto out;
    }
    k->lock_fd = open(lf, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0644);
    if (k->lock_fd < 0)
        err = cache_io_fail(diag, errno, "opening lock", lf);
out:
    free(dir);
    free(lf);
    return err;
}

static uint64_t key_gen_read(const keyent *k)
{
    unsigned char b[8];
    if (k->lock_fd < 0 || pread(k->lock_fd, b, 8, 0) != 8)
        return 0;
    return cks_get_le64(b);
}

void cache_key_gen_bump(keyent *k)
{
    unsigned char b[8];
    uint64_t g = key_gen_read(k) + 1;
    cks_put_le64(b, g);
    if (k->lock_fd >= 0 && pwrite(k->lock_fd, b, 8, 0) == 8) {
        k->gen_seen = g;
        k->gen_valid = true;
    } else {
        k->gen_valid = false;
    }
}

/* Reload a key's extent index from its directory unless the generation says nothing was
 * added since the last scan (force: always). */
cks_err cache_key_refresh(cks_cache *c, keyent *k, bool force, cks_diag *diag)
{
    cks_err err = CKS_OK;
    char *dir = NULL;
    DIR *d = NULL;
    uint64_t gen = 0;
    if (k->lock_fd < 0) {
        char *kd = cache_keydir_path(c, k->name);
        char *shard = kd ? strndup(kd, strlen(kd) - strlen(k->name) - 1) : NULL;
        bool exists = kd && access(kd, F_OK) == 0;
        bool real = shard && cache_real_dir(shard) && cache_real_dir(kd);
        free(kd);
        free(shard);
        if (exists && !real) {
            /* a planted link instead of our directory: nothing of it is read */
            k->n_ext = 0;
            k->max_len = 0;
            k->loaded = true;
            k->gen_valid = false;
            goto out;
        }
        if (exists)
            (void)cache_key_open_lock(c, k, NULL);
    }
    if (k->lock_fd >= 0) {
        gen = key_gen_read(k);
        if (!force && k->loaded && k->gen_valid && gen == k->gen_seen)
            goto out;
    }
    dir = cache_keydir_path(c, k->name);
    if (!dir) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "cache: out of memory");
        goto out;
    }
    /* read the generation before the directory: a writer racing with the scan bumps it
     * afterwards, so the next call rescans */
    k->n_ext = 0;
    k->max_len = 0;
    k->loaded = true;
    k->gen_valid = k->lock_fd >= 0;
    k->gen_seen = gen;
    d = cache_opendir_here(dir);
    if (!d)
        goto out;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        extent one, *members;
        size_t n_members;
        uint64_t file_bytes = 0;
        pack_status ps = cache_file_extents(dir, de->d_name, &one, &members, &n_members, &file_bytes);
        if (ps == PACK_NOMEM) {
            k->gen_valid = false;
            err = cks_fail(diag, CKS_ERR_NOMEM, "cache: out of memory");
            goto out;
        }
        if (ps == PACK_DAMAGED) {
            /* a damaged directory: none of its members can be found, so the file is only in
             * the way of the refetch that replaces them */
            char *pp = cache_extent_path(c, k->name, &one);
            cache_add_note(c, "cache: dropped pack file %s of %s (damaged directory)", de->d_name, k->key);
            if (pp)
                unlink(pp);
            free(pp);
        }
        if (ps != PACK_OK)
            continue;
        if (k->cap_ext - k->n_ext < n_members) {
            size_t nc = k->cap_ext ? 2 * k->cap_ext : 16;
            while (nc - k->n_ext < n_members)
                nc *= 2;
            extent *ne = realloc(k->ext, nc * sizeof *ne);
            if (!ne) {
                if (members != &one)
                    free(members);
                k->gen_valid = false;
                err = cks_fail(diag, CKS_ERR_NOMEM, "cache: out of memory");
                goto out;
            }
            k->ext = ne;
            k->cap_ext = nc;
        }
        for (size_t m = 0; m < n_members; m++) {
            k->ext[k->n_ext++] = members[m];
            if (members[m].len > k->max_len)
                k->max_len = members[m].len;
        }
        if (members != &one)
            free(members);
    }
    if (k->n_ext > 1)
        qsort(k->ext, k->n_ext, sizeof *k->ext, cache_cmp_extent);
out:
    if (d)
        closedir(d);
    free(dir);
    return err;
}

/* Keep the in-memory index in step with our own writes (we hold the key lock). */
cks_err cache_key_insert_extent(keyent *k, const extent *e)
{
    if (k->n_ext == k->cap_ext) {
        size_t nc = k->cap_ext ? 2 * k->cap_ext : 16;
        extent *ne = realloc(k->ext, nc * sizeof *ne);
        if (!ne)
            return CKS_ERR_NOMEM;
        k->ext = ne;
        k->cap_ext = nc;
    }
    size_t i = k->n_ext;
    while (i > 0 && cache_cmp_extent(&k->ext[i - 1], e) > 0)
        i--;
    memmove(&k->ext[i + 1], &k->ext[i], (k->n_ext - i) * sizeof *k->ext);
    k->ext[i] = *e;
    k->n_ext++;
    if (e->len > k->max_len)
        k->max_len = e->len;
    return CKS_OK;
}

keyent *cache_key_get(cks_cache *c, const char *key, cks_diag *diag, cks_err *err)
{
    keyent *k = key_find(c, key, true);
    *err = CKS_OK;
    if (!k) {
        *err = cks_fail(diag, CKS_ERR_NOMEM, "cache: out of memory");
        return NULL;
    }
    if (!k->loaded) {
        *err = cache_key_refresh(c, k, true, diag);
        if (*err)
            return NULL;
    }
    return k;
}

void cache_key_remove_extent(keyent *k, const extent *e)
{
    for (size_t i = 0; i < k->n_ext; i++) {
        if (k->ext[i].off == e->off && k->ext[i].len == e->len && cache_same_file(&k->ext[i], e)) {
            memmove(&k->ext[i], &k->ext[i + 1], (k->n_ext - i - 1) * sizeof *k->ext);
            k->n_ext--;
            return;
        }
    }
}

/* Uncovered parts of [a, b) given a sorted extent list; appends to *out. */
/* Index of the first extent that can reach offset a. No extent is longer than max_len,
 * so none starting before a - max_len can: a binary search keeps lookups logarithmic in
 * the number of extents (10,000 of them in bench/cache). */
size_t cache_first_relevant(const keyent *k, uint64_t a)
{
    uint64_t from = a > k->max_len ? a - k->max_len : 0;
    size_t lo = 0, hi = k->n_ext;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (k->ext[mid].off < from)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

cks_err cache_gaps_append(const keyent *k, uint64_t a, uint64_t b, cks_range **out, size_t *n,
                           size_t *cap)
{
    uint64_t pos = a;
    for (size_t i = cache_first_relevant(k, a); i < k->n_ext && pos < b; i++) {
        const extent *e = &k->ext[i];
        uint64_t e_end = e->off + e->len;
        if (e_end <= pos)
            continue;
        if (e->off >= b)
            break;
        if (e->off > pos) {
            if (*n == *cap) {
                size_t nc = *cap ? 2 * *cap : 8;
                cks_range *nr = realloc(*out, nc * sizeof *nr);
                if (!nr)
                    return CKS_ERR_NOMEM;
                *out = nr;
                *cap = nc;
            }
            (*out)[(*n)++] = (cks_range){pos, e->off - pos};
        }
        if (e_end > pos)
            pos = e_end;
    }
    if (pos < b) {
        if (*n == *cap) {
            size_t nc = *cap ? 2 * *cap : 8;
            cks_range *nr = realloc(*out, nc * sizeof *nr);
            if (!nr)
                return CKS_ERR_NOMEM;
            *out = nr;
            *cap = nc;
        }
        (*out)[(*n)++] = (cks_range){pos, b - pos};
    }
    return CKS_OK;
}

bool cache_key_covers(const keyent *k, uint64_t a, uint64_t b)
{
    uint64_t pos = a;
    for (size_t i = cache_first_relevant(k, a); i < k->n_ext && pos < b; i++) {
        const extent *e = &k->ext[i];
        if (e->off > pos)
            return false;
        if (e->off + e->len > pos)
            pos = e->off + e->len;
    }
    return pos >= b;
}

/* Pin: remembered in memory (for this process's evictions) and as a shared flock on the
 * key's pin file (for everyone else's). */
void cache_key_pin(cks_cache *c, keyent *k)
{
    if (k->pinned)
        return;
    k->pinned = true;
    if (c->n_pin_fds >= MAX_PIN_FDS)
        return;
    char *dir = cache_keydir_path(c, k->name);
    char *pf = dir ? cache_path_join(dir, "pin") : NULL;
    if (pf && keydir_ensure(c, k, NULL) == CKS_OK) {
        int fd = open(pf, O_RDONLY | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0644);
        if (fd >= 0) {
            if (flock(fd, LOCK_SH) == 0) {
                k->pin_fd = fd;
                c->n_pin_fds++;
            } else {
                close(fd);
            }
        }
    }
    free(pf);
    free(dir);
}

/* ------------------------------------------------------------------------------------ */
/* open / free                                                                         */

static char *default_dir(void)
{
    const char *e = getenv("CKPTSCOPE_CACHE");
    char *p = NULL;
    if (e && *e)
        return cache_xstrdup(e);
    e = getenv("XDG_CACHE_HOME");
    if (e && *e) {
        if (asprintf(&p, "%s/ckptscope", e) < 0)
            p = NULL;
        return p;
    }
    e = getenv("HOME");
    if (!e || !*e)
        return NULL;
    if (asprintf(&p, "%s/.cache/ckptscope", e) < 0)
        p = NULL;
    return p;
}

/* "50G", "500M", "1.5GiB", "1000000" -> bytes (binary units, as --cache-max). */
static bool parse_size(const char *t, uint64_t *out)
{
    char *end = NULL;
    double v, mult = 1;
    while (*t == ' ' || *t == '\t')
        t++;
    if (*t < '0' || *t > '9')
        return false;
    v = strtod(t, &end);
    while (*end == ' ')
        end++;
    static const char units[] = "kmgt";
    const char *u = *end ? strchr(units, *end | 0x20) : NULL;
    if (u) {
        for (const char *p = units; p <= u; p++)
            mult *= 1024.0;
        end++;
    }
    if (mult > 1 && (*end == 'i' || *end == 'I'))
        end++;
    if (*end == 'b' || *end == 'B')
        end++;
    while (*end == ' ' || *end == '\t' || *end == '\n' || *end == '\r')
        end++;
    if (*end || !(v >= 0) || v * mult >= 18446744073709551615.0)
        return false;
    *out = (uint64_t)(v * mult);
    return true;
}

/*
 * Settings not given by the caller come from the environment (CKPTSCOPE_CACHE_MAX) or from
 * the cache's own "config" file, lines "max_size = 50G", "revision_ttl = 600",
 * "min_saving = 25" ('#' starts a comment). Explicit options win; a bad line is ignored.
 */
static void read_config(cks_cache *c, bool have_max, bool have_ttl)
{
    const char *env = getenv("CKPTSCOPE_CACHE_MAX");
    uint64_t v;
    if (!have_max && env && *env && parse_size(env, &v)) {
        c->max_bytes = v;
        have_max = true;
    }
    char *path = cache_path_join(c->dir, "config");
    int cfd = path ? open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC) : -1;
    FILE *f = cfd >= 0 ? fdopen(cfd, "r") : NULL;
    if (!f && cfd >= 0)
        close(cfd);
    char line[512];
    while (f && fgets(line, sizeof line, f)) {
        char *hash = strchr(line, '#'), *eq = strchr(line, '=');
        if (hash)
            *hash = '\0';
        if (!eq || (hash && hash < eq))
            continue;
        *eq = '\0';
        char *k = line, *val = eq + 1;
        while (*k == ' ' || *k == '\t')
            k++;
        for (char *e = k + strlen(k); e > k && (e[-1] == ' ' || e[-1] == '\t'); e--)
            e[-1] = '\0';
        if (strcmp(k, "max_size") == 0 && !have_max && parse_size(val, &v))
            c->max_bytes = v;
        else if (strcmp(k, "revision_ttl") == 0 && !have_ttl && parse_size(val, &v) &&
                 v <= INT64_MAX)
            c->revision_ttl = (int64_t)v;
        else if (strcmp(k, "min_saving") == 0 && parse_size(val, &v) && v <= 101)
            c->min_saving_pct = (unsigned)v;
    }
    if (f)
        fclose(f);
    free(path);
}

void cache_clean_stale_temps(cks_cache *c, uint64_t *count, bool remove)
{
    char *tdir = cache_path_join(c->dir, "tmp");
    DIR *d = tdir ? cache_opendir_here(tdir) : NULL;
    struct dirent *de;
    while (d && (de = readdir(d)) != NULL) {
        if (de->d_name[0] == '.')
            continue;
        char *p = cache_path_join(tdir, de->d_name);
        if (!p)
            break;
        int fd = open(p, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
        if (fd >= 0) {
            /* A free lock means the writer is gone, except in the instant between its
             * open(O_EXCL) and its flock: so also require that the pid in the name is
             * dead (or the file older than an hour, should that pid have been reused). */
            struct stat st;
            long pid = strtol(de->d_name, NULL, 10);
            bool dead = pid <= 0 || (kill((pid_t)pid, 0) != 0 && errno == ESRCH);
            bool old = fstat(fd, &st) == 0 && st.st_mtim.tv_sec + 3600 < cache_now_seconds();
            if ((dead || old) && flock(fd, LOCK_EX | LOCK_NB) == 0) {
                if (count)
                    (*count)++;
                if (remove)
                    unlink(p);
            }
            close(fd);
        }
        free(p);
    }
    if (d)
        closedir(d);
    free(tdir);
}

cks_err cks_cache_open(const cks_cache_opts *opts, cks_cache **out, cks_diag *diag)
{
    cks_err err = CKS_OK;
    cks_cache *c = NULL;
    char *layout = NULL, *sub = NULL;
    char buf[64];
    int fd = -1;

    if (!out) {
        err = cks_fail(diag, CKS_ERR_INVALID_ARG, "cache: no output handle");
        goto out;
    }
    c = calloc(1, sizeof *c);
    if (!c) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "cache: out of memory");
        goto out;
    }
    pthread_mutex_init(&c->mu, NULL);
    c->dir = (opts && opts->dir && *opts->dir) ? cache_xstrdup(opts->dir) : default_dir();
    if (!c->dir) {
        /* a folder was named (or HOME is set) and only its copy failed: memory */
        const char *home = getenv("HOME"), *xdg = getenv("XDG_CACHE_HOME"), *env = getenv("CKPTSCOPE_CACHE");
        bool named = (opts && opts->dir && *opts->dir) || (home && *home) || (xdg && *xdg) || (env && *env);
        err = named ? cks_fail(diag, CKS_ERR_NOMEM, "cache: out of memory")
                    : cks_fail(diag, CKS_ERR_CACHE,
                               "cache: no cache directory (set --cache-dir, CKPTSCOPE_CACHE or HOME)");
        goto out;
    }
    /* a trailing slash would double up in every path we print */
    for (size_t n = strlen(c->dir); n > 1 && c->dir[n - 1] == '/'; n--)
        c->dir[n - 1] = '\0';
    c->max_bytes = opts ? opts->max_bytes : 0;
    c->min_saving_pct = DEFAULT_MIN_SAVING_PCT;
    c->offline = opts ? opts->offline : false;
    c->revision_ttl = (opts && opts->revision_ttl_seconds >= 0) ? opts->revision_ttl_seconds
                                                                : CKS_CACHE_DEFAULT_REVISION_TTL;
    if (cache_mkdir_p(c->dir) != 0) {
        err = errno == ENOMEM ? cks_fail(diag, CKS_ERR_NOMEM, "cache: out of memory")
                              : cks_fail(diag, CKS_ERR_CACHE, "cache: cannot create '%s': %s", c->dir,
                                         strerror(errno));
        goto out;
    }
    static const char *const subdirs[] = {"tmp", "files", "meta"};
    for (size_t i = 0; i < sizeof subdirs / sizeof subdirs[0]; i++) {
        free(sub);
        sub = cache_path_join(c->dir, subdirs[i]);
        if (!sub || cache_mkdirs_here(c, sub) != 0) {
            err = !sub || errno == ENOMEM
                      ? cks_fail(diag, CKS_ERR_NOMEM, "cache: out of memory")
                      : cks_fail(diag, CKS_ERR_CACHE, "cache: cannot create '%s': %s", sub, strerror(errno));
            goto out;
        }
    }
    layout = cache_path_join(c->dir, "layout");
    if (!layout) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "cache: out of memory");
        goto out;
    }
    fd = open(layout, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd >= 0) {
        ssize_t r = read(fd, buf, sizeof buf - 1);
        buf[r > 0 ? r : 0] = '\0';
        if (strcmp(buf, LAYOUT_TEXT) != 0) {
            err = cks_fail(diag, CKS_ERR_CACHE,
                           "cache: '%s' holds an unknown layout (expected \"%.*s\"); use another "
                           "--cache-dir or clear it",
                           c->dir, (int)strlen(LAYOUT_TEXT) - 1, LAYOUT_TEXT);
            goto out;
        }
    } else {
        err = cache_write_file_atomic(c, layout, c->dir, LAYOUT_TEXT, strlen(LAYOUT_TEXT), diag);
        if (err)
            goto out;
        static const char tag[] = "Signature: 8a477f597d28d172789f06886806bc55\n"
                                  "# This file is a cache directory tag created by ckptscope.\n";
        free(sub);
        sub = cache_path_join(c->dir, "CACHEDIR.TAG");
        /* the tag only tells backup tools to skip the folder: no fsync */
        if (sub)
            (void)cache_write_file_renamed(c, sub, c->dir, tag, strlen(tag), false, NULL);
    }
    c->cctx = ZSTD_createCCtx();
    c->dctx = ZSTD_createDCtx();
    c->scratch_cap = ZSTD_compressBound(CHUNK_SIZE);
    c->scratch = malloc(c->scratch_cap);
    if (!c->cctx || !c->dctx || !c->scratch) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "cache: out of memory");
        goto out;
    }
    read_config(c, opts && opts->max_bytes, opts && opts->revision_ttl_seconds >= 0);
    cache_clean_stale_temps(c, NULL, true);
out:
    if (fd >= 0)
        close(fd);
    free(layout);
    free(sub);
    if (err) {
        cks_cache_free(c);
        c = NULL;
    }
    if (out)
        *out = c;
    return err;
}

void cks_cache_free(cks_cache *c)
{
    if (!c)
        return;
    for (size_t i = 0; i < c->n_keys; i++) {
        free(c->keys[i].key);
        free(c->keys[i].ext);
        if (c->keys[i].pin_fd >= 0)
            close(c->keys[i].pin_fd);
        if (c->keys[i].lock_fd >= 0)
            close(c->keys[i].lock_fd);
    }
    free(c->keys);
    cks_cache_free_notes(c->notes, c->n_notes);
    for (size_t i = 0; i < N_SLOTS; i++)
        free(c->slots[i].data);
    ZSTD_freeCCtx(c->cctx);
    ZSTD_freeDCtx(c->dctx);
    free(c->scratch);
    free(c->dir);
    pthread_mutex_destroy(&c->mu);
    free(c);
}

void cks_cache_set_min_saving(cks_cache *c, unsigned percent)
{
    if (!c)
        return;
    pthread_mutex_lock(&c->mu);
    c->min_saving_pct = percent;
    pthread_mutex_unlock(&c->mu);
}

const char *cks_cache_dir(const cks_cache *c)
{
    return c ? c->dir : NULL;
}

uint64_t cks_cache_max_bytes(const cks_cache *c)
{
    return c ? c->max_bytes : 0;
}

bool cks_cache_offline(const cks_cache *c)
{
    return c && c->offline;
}

int64_t cks_cache_revision_ttl(const cks_cache *c)
{
    return c ? c->revision_ttl : CKS_CACHE_DEFAULT_REVISION_TTL;
}

void cks_cache_free_notes(char **notes, size_t n)
{
    if (!notes)
        return;
    for (size_t i = 0; i < n; i++)
        free(notes[i]);
    free(notes);
}

size_t cks_cache_take_notes(cks_cache *c, char ***notes)
{
    size_t n = 0;
    if (!notes)
        return 0;
    *notes = NULL;
    if (!c)
        return 0;
    pthread_mutex_lock(&c->mu);
    *notes = c->notes;
    n = c->n_notes;
    c->notes = NULL;
    c->n_notes = 0;
    pthread_mutex_unlock(&c->mu);
    return n;
}

void cks_cache_pin(cks_cache *c, const char *key)
{
    if (!c || !cks_cache_key_valid(key))
        return;
    pthread_mutex_lock(&c->mu);
    keyent *k = key_find(c, key, true);
    if (k)
        cache_key_pin(c, k);
    pthread_mutex_unlock(&c->mu);
}

/* Drop the decoded chunks of a key from the slot cache (its extents changed or went away);
 * here, beside the cache object, so eviction and metadata need not call up into extents. */
void cache_slots_forget(cks_cache *c, const char *name)
{
    for (size_t s = 0; s < N_SLOTS; s++)
        if (strcmp(c->slots[s].name, name) == 0)
            c->slots[s].name[0] = '\0';
}
