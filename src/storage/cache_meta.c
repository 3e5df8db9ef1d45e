/*
 * src/storage/cache_meta.c — the disk cache: metadata entries, dropping what failed a check, whole-file verification, offline reporting.
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
/* metadata                                                                            */

/*
 * Metadata file meta/<ns>/<sha256(ns NUL key)>:
 *   header (40 bytes): magic "CKSMETA1", i64 created (unix s), u32 key_len, u32 method,
 *     u64 data_len, u64 stored_len
 *   key bytes, stored bytes, u32 CRC32C of everything before it
 */
bool cache_ns_valid(const char *ns)
{
    size_t n = ns ? strlen(ns) : 0;
    if (n == 0 || n > 64)
        return false;
    for (size_t i = 0; i < n; i++) {
        char ch = ns[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '_' || ch == '-'))
            return false;
    }
    return true;
}

char *cache_meta_path(const cks_cache *c, const char *ns, const char *key)
{
    size_t nl = strlen(ns), kl = strlen(key);
    char *buf = malloc(nl + 1 + kl);
    char h[65], *p = NULL;
    if (!buf)
        return NULL;
    memcpy(buf, ns, nl);
    buf[nl] = '\0';
    memcpy(buf + nl + 1, key, kl);
    cks_sha256_hex(buf, nl + 1 + kl, h);
    free(buf);
    if (asprintf(&p, "%s/meta/%s/%s", c->dir, ns, h) < 0)
        return NULL;
    return p;
}

/* Parse and verify a whole metadata file image; returns false when it is damaged. */
bool cache_meta_decode(cks_cache *c, const unsigned char *img, size_t n, int64_t *created,
                        const unsigned char **key, uint32_t *key_len, char **data,
                        size_t *data_len)
{
    *data = NULL;
    if (n < META_HEADER_SIZE + 4 || memcmp(img, META_MAGIC, 8) != 0)
        return false;
    *created = (int64_t)cks_get_le64(img + 8);
    *key_len = cks_get_le32(img + 16);
    uint32_t method = cks_get_le32(img + 20);
    uint64_t dlen = cks_get_le64(img + 24), slen = cks_get_le64(img + 32);
    if (*key_len > MAX_KEY_LEN || dlen > MAX_META_LEN || slen > MAX_META_LEN ||
        META_HEADER_SIZE + (uint64_t)*key_len + slen + 4 != n)
        return false;
    if (cks_crc32c(0, img, n - 4) != cks_get_le32(img + n - 4))
        return false;
    *key = img + META_HEADER_SIZE;
    const unsigned char *s = img + META_HEADER_SIZE + *key_len;
    char *d = malloc((size_t)dlen + 1);
    if (!d)
        return false;
    if (method == METHOD_RAW && slen == dlen) {
        memcpy(d, s, (size_t)dlen);
    } else if (method == METHOD_ZSTD) {
        size_t r = ZSTD_decompressDCtx(c->dctx, d, (size_t)dlen, s, (size_t)slen);
        if (ZSTD_isError(r) || r != dlen) {
            free(d);
            return false;
        }
    } else {
        free(d);
        return false;
    }
    d[dlen] = '\0';
    *data = d;
    *data_len = (size_t)dlen;
    return true;
}

/* Read a whole small file (bounded); returns 0, an errno, or -1 when too large. */
int cache_slurp(const char *path, uint64_t max, unsigned char **img, size_t *n)
{
    int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    struct stat st;
    int rc = 0;
    *img = NULL;
    *n = 0;
    if (fd < 0)
        return errno;
    if (fstat(fd, &st) != 0) {
        rc = errno;
        goto out;
    }
    if ((uint64_t)st.st_size > max) {
        rc = -1;
        goto out;
    }
    *img = malloc((size_t)st.st_size + 1);
    if (!*img) {
        rc = ENOMEM;
        goto out;
    }
    rc = cache_pread_all(fd, *img, (size_t)st.st_size, 0);
    if (rc) {
        free(*img);
        *img = NULL;
        goto out;
    }
    *n = (size_t)st.st_size;
out:
    close(fd);
    return rc;
}

cks_err cks_cache_meta_get(cks_cache *c, const char *ns, const char *key, int64_t ttl_seconds,
                           char **data, size_t *len, bool *hit, cks_diag *diag)
{
    cks_err err = CKS_OK;
    char *path = NULL, *d = NULL;
    unsigned char *img = NULL;
    size_t n = 0, dl = 0;
    bool h = false, locked = false;

    if (!c || !data || !len || !hit || !cache_ns_valid(ns) || !key || strlen(key) > MAX_KEY_LEN) {
        err = cks_fail(diag, CKS_ERR_INVALID_ARG, "cache: invalid metadata namespace or key");
        goto out;
    }
    pthread_mutex_lock(&c->mu);
    locked = true;
    path = cache_meta_path(c, ns, key);
    if (!path) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "cache: out of memory");
        goto out;
    }
    int rc = cache_slurp(path, META_HEADER_SIZE + MAX_KEY_LEN + MAX_META_LEN + 4, &img, &n);
    if (rc == ENOENT)
        goto out;
    if (rc == ENOMEM) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "cache: out of memory");
        goto out;
    }
    int64_t created = 0;
    const unsigned char *k = NULL;
    uint32_t kl = 0;
    if (rc != 0 || !cache_meta_decode(c, img, n, &created, &k, &kl, &d, &dl)) {
        if (rc <= 0) {
            unlink(path);
            cache_add_note(c, "cache: dropped corrupt metadata %s/%s", ns, key);
        }
        goto out;
    }
    if (kl != strlen(key) || memcmp(k, key, kl) != 0)
        goto out; /* a SHA-256 collision would land here; treat as a miss */
    if (ttl_seconds >= 0 && cache_now_seconds() - created > ttl_seconds)
        goto out;
    h = true;
out:
    if (locked)
        pthread_mutex_unlock(&c->mu);
    free(img);
    free(path);
    if (!h) {
        free(d);
        d = NULL;
        dl = 0;
    }
    if (data)
        *data = d;
    if (len)
        *len = dl;
    if (hit)
        *hit = h;
    return err;
}

static cks_err meta_put(cks_cache *c, const char *ns, const char *key, const void *data,
                        size_t len, cks_diag *diag)
{
    cks_err err = CKS_OK;
    char *path = NULL, *dir = NULL, *tmp = NULL;
    unsigned char *img = NULL;
    int fd = -1;
    bool locked = false;

    if (!c || !cache_ns_valid(ns) || !key || strlen(key) > MAX_KEY_LEN || (len && !data) ||
        len > MAX_META_LEN) {
        err = cks_fail(diag, CKS_ERR_INVALID_ARG, "cache: invalid metadata namespace, key or size");
        goto out;
    }
    pthread_mutex_lock(&c->mu);
    locked = true;
    size_t kl = strlen(key);
    size_t bound = ZSTD_compressBound(len);
    size_t cap = META_HEADER_SIZE + kl + (bound > len ? bound : len) + 4;
    img = malloc(cap);
    path = cache_meta_path(c, ns, key);
    if (asprintf(&dir, "%s/meta/%s", c->dir, ns) < 0)
        dir = NULL;
    if (!img || !path || !dir) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "cache: out of memory");
        goto out;
    }
    unsigned char *s = img + META_HEADER_SIZE + kl;
    uint32_t method = METHOD_RAW;
    size_t slen = len;
    size_t z = len >= 256 ? ZSTD_compressCCtx(c->cctx, s, bound, data, len, ZSTD_LEVEL) : 0;
    if (len >= 256 && !ZSTD_isError(z) && z < len - len / 8) {
        method = METHOD_ZSTD;
        slen = z;
    } else if (len) {
        memcpy(s, data, len);
    }
    memcpy(img, META_MAGIC, 8);
    cks_put_le64(img + 8, (uint64_t)cache_now_seconds());
    cks_put_le32(img + 16, (uint32_t)kl);
    cks_put_le32(img + 20, method);
    cks_put_le64(img + 24, len);
    cks_put_le64(img + 32, slen);
    memcpy(img + META_HEADER_SIZE, key, kl);
    size_t total = META_HEADER_SIZE + kl + slen;
    cks_put_le32(img + total, cks_crc32c(0, img, total));
    total += 4;
    if (cache_mkdirs_here(c, dir) != 0) {
        err = cache_io_fail(diag, errno, "creating directory", dir);
        goto out;
    }
    err = cache_tmp_create(c, &tmp, &fd, diag);
    if (err)
        goto out;
    int e = cache_pwrite_all(fd, img, total, 0);
    if (e) {
        err = cache_io_fail(diag, e, "writing", tmp);
        cache_tmp_abort(tmp, fd);
        goto out;
    }
    /* Not synced: the CRC above turns a file a crash left short or empty into a miss (and a
     * note), as with extents; synced, each listing or resolve result cost two fsyncs under
     * the cache's lock, and an fsync waits behind whatever writeback the disk has queued. */
    err = cache_tmp_commit(tmp, fd, path, dir, false, diag);
    if (!err)
        c->size_estimate += total;
out:
    if (locked)
        pthread_mutex_unlock(&c->mu);
    free(img);
    free(path);
    free(dir);
    free(tmp);
    return err;
}

cks_err cks_cache_meta_delete(cks_cache *c, const char *ns, const char *key, cks_diag *diag)
{
    cks_err err = CKS_OK;
    char *path = NULL;
    if (!c || !cache_ns_valid(ns) || !key || strlen(key) > MAX_KEY_LEN) {
        err = cks_fail(diag, CKS_ERR_INVALID_ARG, "cache: invalid metadata namespace or key");
        goto out;
    }
    path = cache_meta_path(c, ns, key);
    if (!path) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "cache: out of memory");
        goto out;
    }
    if (unlink(path) != 0 && errno != ENOENT)
        err = cache_io_fail(diag, errno, "removing", path);
out:
    free(path);
    return err;
}

/* ------------------------------------------------------------------------------------ */
/* dropping what failed a check                                                        */

cks_err cks_cache_drop(cks_cache *c, const char *key, const char *why, cks_diag *diag)
{
    cks_err err = CKS_OK;
    bool locked = false, key_locked = false;
    char *dir = NULL, *marker = NULL;
    uint64_t dropped = 0, left = 0;
    keyent *k = NULL;
    if (!c || !cks_cache_key_valid(key)) {
        err = cks_fail(diag, CKS_ERR_INVALID_ARG, "cache: drop needs a valid key");
        goto out;
    }
    pthread_mutex_lock(&c->mu);
    locked = true;
    k = cache_key_get(c, key, diag, &err);
    if (!k)
        goto out;
    /* writers of the key wait while it goes (a read-only cache cannot lock: try anyway) */
    key_locked = cache_lock_key(c, k, NULL) == CKS_OK;
    err = cache_key_refresh(c, k, true, diag);
    if (err)
        goto out;
    dir = cache_keydir_path(c, k->name);
    marker = dir ? cache_path_join(dir, "verified") : NULL;
    if (marker)
        unlink(marker);
    for (size_t i = 0; i < k->n_ext; i++) {
        char *p = cache_extent_path(c, k->name, &k->ext[i]);
        if (p && (unlink(p) == 0 || errno == ENOENT))
            dropped += k->ext[i].len;
        else
            left += k->ext[i].len;
        free(p);
    }
    k->n_ext = 0;
    k->max_len = 0;
    cache_slots_forget(c, k->name);
    if (dropped)
        cache_add_note(c, "cache: dropped the %" PRIu64 " cached bytes of %s (%s)", dropped, key,
                 why ? why : "they failed a check");
    if (left)
        err = cks_fail(diag, CKS_ERR_IO,
                       "cache: could not remove %" PRIu64 " cached bytes of %s that failed a "
                       "check (%s); remove them with `ckptscope cache clear`",
                       left, key, strerror(errno));
out:
    if (key_locked)
        flock(k->lock_fd, LOCK_UN);
    if (locked)
        pthread_mutex_unlock(&c->mu);
    free(dir);
    free(marker);
    return err;
}

/* ------------------------------------------------------------------------------------ */
/* whole-file verification                                                             */

static cks_err mark_verified(cks_cache *c, const char *key, uint64_t size, cks_diag *diag)
{
    cks_err err = CKS_OK;
    char *dir = NULL, *marker = NULL, *text = NULL;
    bool locked = false;
    if (!c || !key || strncmp(key, "sha256:", 7) != 0 || !cks_cache_key_valid(key)) {
        err = cks_fail(diag, CKS_ERR_INVALID_ARG, "cache: a whole-file mark needs a sha256: key");
        goto out;
    }
    pthread_mutex_lock(&c->mu);
    locked = true;
    keyent *k = cache_key_get(c, key, diag, &err);
    if (!k)
        goto out;
    err = cache_key_refresh(c, k, false, diag);
    if (err)
        goto out;
    /* only what is stored now was hashed: require all of it */
    if (size > 0 && !cache_key_covers(k, 0, size))
        goto out;
    dir = cache_keydir_path(c, k->name);
    marker = dir ? cache_path_join(dir, "verified") : NULL;
    if (!marker || asprintf(&text, "%" PRIu64 "\n", size) < 0) {
        text = NULL;
        err = cks_fail(diag, CKS_ERR_NOMEM, "cache: out of memory");
        goto out;
    }
    err = cache_write_file_atomic(c, marker, dir, text, strlen(text), diag);
out:
    if (locked)
        pthread_mutex_unlock(&c->mu);
    free(dir);
    free(marker);
    free(text);
    return err;
}

/*
 * The public writers: the same, plus the memory of the first failure. Callers of the remote
 * source ignore cache write errors (a cache failure costs a refetch later, never data), so
 * this is how the command line learns, once, that the cache stopped keeping what it fetched.
 */
static cks_err remember_write(cks_cache *c, cks_err err, const cks_diag *d)
{
    if (!c || err == CKS_OK || err == CKS_ERR_INVALID_ARG || err == CKS_ERR_NOMEM)
        return err;
    pthread_mutex_lock(&c->mu);
    if (c->write_err == CKS_OK) {
        c->write_err = err;
        c->write_diag = *d;
    }
    if (err == CKS_ERR_NO_SPACE)
        c->no_space = true;
    pthread_mutex_unlock(&c->mu);
    return err;
}

static bool writes_stopped(cks_cache *c, cks_diag *diag)
{
    bool stopped = false;
    if (!c)
        return false;
    pthread_mutex_lock(&c->mu);
    if (c->no_space) {
        stopped = true;
        if (diag)
            *diag = c->write_diag;
    }
    pthread_mutex_unlock(&c->mu);
    return stopped;
}

cks_err cks_cache_write(cks_cache *c, const char *key, uint64_t offset, const void *data,
                        size_t len, cks_diag *diag)
{
    cks_diag local;
    if (writes_stopped(c, diag))
        return CKS_ERR_NO_SPACE;
    cks_range one = {offset, len};
    return remember_write(c, cache_write(c, key, &one, &data, 1, diag ? diag : &local),
                          diag ? diag : &local);
}

cks_err cks_cache_write_many(cks_cache *c, const char *key, const cks_range *ranges,
                             const void *const *data, size_t n, cks_diag *diag)
{
    cks_diag local;
    if (writes_stopped(c, diag))
        return CKS_ERR_NO_SPACE;
    return remember_write(c, cache_write(c, key, ranges, data, n, diag ? diag : &local),
                          diag ? diag : &local);
}

cks_err cks_cache_meta_put(cks_cache *c, const char *ns, const char *key, const void *data,
                           size_t len, cks_diag *diag)
{
    cks_diag local;
    if (writes_stopped(c, diag))
        return CKS_ERR_NO_SPACE;
    return remember_write(c, meta_put(c, ns, key, data, len, diag ? diag : &local),
                          diag ? diag : &local);
}

cks_err cks_cache_mark_verified(cks_cache *c, const char *key, uint64_t size, cks_diag *diag)
{
    cks_diag local;
    if (writes_stopped(c, diag))
        return CKS_ERR_NO_SPACE;
    return remember_write(c, mark_verified(c, key, size, diag ? diag : &local), diag ? diag : &local);
}

cks_err cks_cache_write_failure(cks_cache *c, cks_diag *diag)
{
    cks_err err = CKS_OK;
    if (!c)
        return CKS_OK;
    pthread_mutex_lock(&c->mu);
    err = c->write_err;
    if (err && diag)
        *diag = c->write_diag;
    pthread_mutex_unlock(&c->mu);
    return err;
}

bool cks_cache_is_verified(cks_cache *c, const char *key, uint64_t size)
{
    bool v = false, locked = false;
    char *dir = NULL, *marker = NULL, *want = NULL;
    unsigned char *img = NULL;
    size_t n = 0;
    cks_err err = CKS_OK;
    if (!c || !key || strncmp(key, "sha256:", 7) != 0 || !cks_cache_key_valid(key))
        goto out;
    pthread_mutex_lock(&c->mu);
    locked = true;
    keyent *k = cache_key_get(c, key, NULL, &err);
    if (!k || cache_key_refresh(c, k, false, NULL) != CKS_OK || (size > 0 && !cache_key_covers(k, 0, size)))
        goto out;
    dir = cache_keydir_path(c, k->name);
    marker = dir ? cache_path_join(dir, "verified") : NULL;
    if (!marker || asprintf(&want, "%" PRIu64 "\n", size) < 0) {
        want = NULL;
        goto out;
    }
    v = cache_slurp(marker, 64, &img, &n) == 0 && n == strlen(want) && memcmp(img, want, n) == 0;
out:
    if (locked)
        pthread_mutex_unlock(&c->mu);
    free(dir);
    free(marker);
    free(want);
    free(img);
    return v;
}

/* SHA-256 (hex) of [0, size) of k as cached, c->mu held; *whole false when a byte is missing
 * or a chunk failed its checksum (it is dropped then, as on every read). */
static cks_err hash_locked(cks_cache *c, keyent *k, uint64_t size, char hex[65], bool *whole,
                           cks_diag *diag)
{
    cks_err err = CKS_OK;
    const size_t step = 8u * 1024 * 1024;
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    unsigned char *buf = malloc(step);
    unsigned char dg[32];
    unsigned int dl = 0;
    *whole = false;
    hex[0] = '\0';
    if (!md || !buf || !EVP_DigestInit_ex(md, EVP_sha256(), NULL)) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "cache: out of memory");
        goto out;
    }
    for (uint64_t pos = 0; pos < size;) {
        size_t n = size - pos < step ? (size_t)(size - pos) : step;
        bool h = false;
        err = cache_read_locked(c, k, pos, buf, n, &h, diag);
        if (err || !h)
            goto out;
        EVP_DigestUpdate(md, buf, n);
        pos += n;
    }
    EVP_DigestFinal_ex(md, dg, &dl);
    cks_hex_encode(dg, 32, hex);
    *whole = true;
out:
    EVP_MD_CTX_free(md);
    free(buf);
    return err;
}

cks_err cks_cache_verify_file(cks_cache *c, const char *key, uint64_t size, bool *verified,
                              cks_diag *diag)
{
    cks_err err = CKS_OK;
    bool v = false, locked = false;
    char *dir = NULL, *marker = NULL, *want = NULL;
    unsigned char *img = NULL;
    size_t img_n = 0;

    if (!c || !verified || !key || strncmp(key, "sha256:", 7) != 0 || !cks_cache_key_valid(key)) {
        err = cks_fail(diag, CKS_ERR_INVALID_ARG, "cache: whole-file check needs a sha256: key");
        goto out;
    }
    pthread_mutex_lock(&c->mu);
    locked = true;
    keyent *k = cache_key_get(c, key, diag, &err);
    if (!k)
        goto out;
    err = cache_key_refresh(c, k, false, diag);
    if (err)
        goto out;
    if (size > 0 && !cache_key_covers(k, 0, size))
        goto out;
    dir = cache_keydir_path(c, k->name);
    marker = dir ? cache_path_join(dir, "verified") : NULL;
    if (!marker || asprintf(&want, "%" PRIu64 "\n", size) < 0) {
        want = NULL;
        err = cks_fail(diag, CKS_ERR_NOMEM, "cache: out of memory");
        goto out;
    }
    /* a previous run already hashed these bytes; chunk checksums guard them since */
    if (cache_slurp(marker, 64, &img, &img_n) == 0 && img_n == strlen(want) &&
        memcmp(img, want, img_n) == 0) {
        v = true;
        goto out;
    }
    char hex[65];
    bool whole = false;
    err = hash_locked(c, k, size, hex, &whole, diag);
    if (err || !whole)
        goto out; /* a corrupt chunk was dropped: not whole any more */
    if (strcmp(hex, key + 7) != 0) {
        /* every chunk passed its checksum, so the bytes were wrong when they were fetched:
         * drop them all so the next run refetches instead of trusting them */
        for (size_t i = k->n_ext; i-- > 0;) {
            char *p = cache_extent_path(c, k->name, &k->ext[i]);
            if (p)
                unlink(p);
            free(p);
        }
        k->n_ext = 0;
        cache_slots_forget(c, k->name);
        err = cks_fail(diag, CKS_ERR_INTEGRITY,
                       "cache: the %" PRIu64 " cached bytes of %s hash to sha256:%s; dropped them",
                       size, key, hex);
        goto out;
    }
    (void)cache_write_file_atomic(c, marker, dir, want, strlen(want), NULL);
    v = true;
out:
    if (locked)
        pthread_mutex_unlock(&c->mu);
    free(dir);
    free(marker);
    free(want);
    free(img);
    if (verified)
        *verified = err ? false : v;
    return err;
}

cks_err cks_cache_hash_file(cks_cache *c, const char *key, uint64_t size, char hex[65], bool *whole,
                            cks_diag *diag)
{
    cks_err err = CKS_OK;
    bool ok = false, locked = false;
    hex[0] = '\0';
    if (!c || !cks_cache_key_valid(key)) {
        err = cks_fail(diag, CKS_ERR_INVALID_ARG, "cache: hashing needs a valid key");
        goto out;
    }
    pthread_mutex_lock(&c->mu);
    locked = true;
    keyent *k = cache_key_get(c, key, diag, &err);
    if (!k || (err = cache_key_refresh(c, k, false, diag)) != CKS_OK || !cache_key_covers(k, 0, size))
        goto out;
    err = hash_locked(c, k, size, hex, &ok, diag);
out:
    if (locked)
        pthread_mutex_unlock(&c->mu);
    if (whole)
        *whole = ok && !err;
    return err;
}

/* ------------------------------------------------------------------------------------ */
/* offline reporting                                                                   */

cks_err cks_cache_describe_missing(cks_cache *c, const char *key, const char *file_label,
                                   const char *const *names, const cks_range *ranges, size_t n,
                                   char **message, cks_diag *diag)
{
    cks_err err = CKS_OK;
    char *msg = NULL;
    size_t len = 0, cap = 0, n_missing = 0;
    bool locked = false;
    const size_t max_msg = 64 * 1024;

    if (message)
        *message = NULL;
    if (!c || !message || (n && (!names || !ranges)) || !cks_cache_key_valid(key)) {
        err = cks_fail(diag, CKS_ERR_INVALID_ARG, "cache: invalid key or arguments");
        goto out;
    }
    pthread_mutex_lock(&c->mu);
    locked = true;
    keyent *k = cache_key_get(c, key, diag, &err);
    if (!k)
        goto out;
    err = cache_key_refresh(c, k, false, diag);
    if (err)
        goto out;
    /* first count, then list, so the message can start with the totals */
    bool *miss = calloc(n ? n : 1, sizeof *miss);
    if (!miss) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "cache: out of memory");
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        uint64_t a = ranges[i].offset, l = ranges[i].length;
        if (l && (a > UINT64_MAX - l || !cache_key_covers(k, a, a + l))) {
            miss[i] = true;
            n_missing++;
        }
    }
    if (n_missing == 0) {
        free(miss);
        goto out;
    }
    FILE *f = open_memstream(&msg, &len);
    if (!f) {
        free(miss);
        err = cks_fail(diag, CKS_ERR_NOMEM, "cache: out of memory");
        goto out;
    }
    fprintf(f, "%s: %zu of %zu %s not cached:", file_label ? file_label : key, n_missing, n,
            n == 1 ? "tensor" : "tensors");
    size_t listed = 0;
    for (size_t i = 0; i < n; i++) {
        if (!miss[i])
            continue;
        if ((size_t)ftell(f) > max_msg) {
            fprintf(f, " ... and %zu more", n_missing - listed);
            break;
        }
        fprintf(f, "%s %s", listed ? "," : "", names[i] ? names[i] : "(unnamed)");
        listed++;
    }
    fclose(f);
    free(miss);
    (void)cap;
    if (!msg)
        err = cks_fail(diag, CKS_ERR_NOMEM, "cache: out of memory");
out:
    if (locked)
        pthread_mutex_unlock(&c->mu);
    if (err) {
        free(msg);
        msg = NULL;
    }
    if (message)
        *message = msg;
    return err;
}
