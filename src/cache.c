/*
 * The disk cache: content-addressed extents with per-chunk checksums, metadata with TTLs,
 * atomic writes, multi-process safety, zstd, and an LRU size cap. Layout and guarantees:
 * cache/README.md. Contracts: include/ckptscope/cache.h.
 *
 * The three rules everything below follows:
 *   1. An entry becomes visible only by rename() of a complete temporary file, so readers
 *      need no lock and never see half an entry. Files are fsync'ed before the rename,
 *      except extents under EXTENT_SYNC_MIN: a crash may then leave one missing or torn,
 *      which rule 2 turns into a miss and a refetch. Syncing each costs two fsyncs; a verify
 *      of a 100B MoE stores ~18,000 sampled blocks and spent 30 s in them.
 *   2. Bytes are returned only after the checksum of every chunk they came from matched;
 *      anything else is a miss (and a corrupt file is deleted so the refetch replaces it).
 *   3. Writers of one key serialise on that key's lock file; evictors never touch a key
 *      that a live process pinned (flock LOCK_SH on the key's pin file).
 */
#include "ckptscope/cache.h"
#include "ckptscope/hex.h"
#include "cache_internal.h"

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

#include <openssl/evp.h>
#include <zstd.h>

#define LAYOUT_TEXT "ckptscope-cache 1\n"

#define EXT_MAGIC "CKSEXT01"
#define META_MAGIC "CKSMETA1"
#define EXT_HEADER_SIZE 64u
#define EXTENT_SYNC_MIN (1u << 20) /* smaller extents are not fsync'ed (rule 1) */
#define EXT_ENTRY_SIZE 32u
#define META_HEADER_SIZE 40u

/* 256 KiB chunks: small enough that reading one norm vector verifies little, large enough
 * that zstd finds redundancy and the chunk table stays a few KiB. */
#define CHUNK_SIZE (256u * 1024u)
/* An extent never exceeds 64 MiB, which bounds a merge's copy and an extent's table. */
#define MAX_EXTENT_LEN (64u * 1024u * 1024u)
#define MAX_CHUNKS (MAX_EXTENT_LEN / CHUNK_SIZE)
/* Merging rewrites neighbours; only do it when they are small next to the new bytes. */
#define MERGE_ABS_LIMIT (8u * 1024u * 1024u)
#define MAX_META_LEN ((uint64_t)256 * 1024 * 1024)
#define MAX_KEY_LEN 4096u
#define MAX_NOTES 1000u
#define MAX_PIN_FDS 512u
#define N_SLOTS 16u
/* Compress a chunk only when that saves at least a quarter of it. bf16 weights save about
 * 22% under zstd but decompress at ~1.3 GB/s, slower than the SHA-256 every analysis runs
 * (~1.8 GB/s here): compressing them would make a warm rerun about twice as slow for a
 * fifth of the disk. Norms, biases, constants and JSON save far more than a quarter.
 * (bench/cache/RESULTS.md has the figures; cks_cache_set_min_saving changes the policy.) */
#define DEFAULT_MIN_SAVING_PCT 25
#define ZSTD_LEVEL 3          /* metadata: small, read rarely */
#define ZSTD_LEVEL_EXTENT 1   /* extents: as fast as the network, nearly the same ratio here */
#define SAMPLE_LEN (16u * 1024u)
/* Access times are refreshed at most this often (they only order evictions). */
#define ATIME_SLACK_SECONDS 60

enum { METHOD_RAW = 0, METHOD_ZSTD = 1 };

typedef struct extent {
    uint64_t off, len;
} extent;

typedef struct keyent {
    char *key;
    char name[67];          /* "s-<hex>" or "g-<hex>" */
    extent *ext;            /* sorted by offset */
    size_t n_ext, cap_ext;
    uint64_t max_len;          /* longest extent in the index (bounds lookups) */
    bool loaded;
    int lock_fd;               /* the key's "lock" file: writers' flock + generation */
    uint64_t gen_seen;         /* generation the index reflects */
    bool gen_valid;
    bool pinned;
    int pin_fd;
} keyent;

typedef struct chunk_slot {
    char name[67];
    uint64_t ext_off, ext_len;
    uint32_t idx, len;
    dev_t dev;
    ino_t ino;
    uint64_t stamp;
    unsigned char *data;
} chunk_slot;

struct cks_cache {
    char *dir;
    uint64_t max_bytes;
    bool offline;
    int64_t revision_ttl;
    pthread_mutex_t mu;
    keyent *keys;
    size_t n_keys, cap_keys;
    size_t n_pin_fds;
    char **notes;
    size_t n_notes;
    ZSTD_CCtx *cctx;
    ZSTD_DCtx *dctx;
    chunk_slot slots[N_SLOTS];
    uint64_t slot_clock;
    unsigned char *scratch;   /* CHUNK_SIZE-bound compressed buffer */
    size_t scratch_cap;
    uint64_t tmp_counter;
    unsigned min_saving_pct;  /* compress a chunk only if it shrinks by this much */
    /* The first write that failed (CKS_OK: none), for cks_cache_write_failure. After a full
     * disk every later write fails at once: retrying each extent would only churn the disk. */
    cks_err write_err;
    cks_diag write_diag;
    bool no_space;
    /* size-cap bookkeeping */
    bool size_known;
    uint64_t size_estimate;
    uint64_t size_floor;      /* what could not be evicted last time (pinned) */
};

/* ------------------------------------------------------------------------------------ */
/* small helpers                                                                        */

static void put_u32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static void put_u64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static uint32_t get_u32(const unsigned char *p)
{
    uint32_t v = 0;
    for (int i = 3; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

static uint64_t get_u64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

static char *xstrdup(const char *s)
{
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d)
        memcpy(d, s, n);
    return d;
}

static char *path_join(const char *a, const char *b)
{
    char *p = NULL;
    if (asprintf(&p, "%s/%s", a, b) < 0)
        return NULL;
    return p;
}

static int64_t now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec;
}

static void add_note(cks_cache *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void add_note(cks_cache *c, const char *fmt, ...)
{
    char *s = NULL;
    va_list ap;
    if (c->n_notes >= MAX_NOTES)
        return;
    va_start(ap, fmt);
    if (vasprintf(&s, fmt, ap) < 0)
        s = NULL;
    va_end(ap);
    if (!s)
        return;
    char **nn = realloc(c->notes, (c->n_notes + 1) * sizeof *nn);
    if (!nn) {
        free(s);
        return;
    }
    c->notes = nn;
    c->notes[c->n_notes++] = s;
}

static int mkdir_p(const char *path)
{
    char *p = xstrdup(path);
    int rc = 0;
    if (!p)
        return -1;
    for (char *q = p + 1; *q; q++) {
        if (*q != '/')
            continue;
        *q = '\0';
        if (mkdir(p, 0755) != 0 && errno != EEXIST) {
            rc = -1;
            break;
        }
        *q = '/';
    }
    if (rc == 0 && mkdir(p, 0755) != 0 && errno != EEXIST)
        rc = -1;
    free(p);
    return rc;
}

static void fsync_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        (void)fsync(fd);
        close(fd);
    }
}

/*
 * Nothing inside the cache is reached through a symbolic link. A shared cache (what the
 * README recommends for cluster jobs) is writable by others, and a link planted as a key's
 * lock, pin or directory would otherwise make us create, overwrite or delete a file outside
 * it. Files are opened with O_NOFOLLOW (which guards the last component of a path); every
 * directory under the cache root is made, checked and walked here so that no component in
 * between is a link either. The root itself may be a link: the user chose it.
 */
static bool real_dir(const char *path)
{
    struct stat st;
    return lstat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

/* mkdir -p for a path under the cache root: each component below the root must end up a
 * real directory (errno ELOOP when one is a symbolic link, ENOTDIR when it is a file). */
static int mkdirs_here(const cks_cache *c, const char *path)
{
    size_t root = strlen(c->dir);
    char *p = xstrdup(path);
    int rc = 0;
    if (!p)
        return -1;
    if (strncmp(p, c->dir, root) != 0 || p[root] != '/') {
        free(p);
        errno = EINVAL;
        return -1;
    }
    for (char *q = p + root + 1;; q++) {
        if (*q != '/' && *q != '\0')
            continue;
        char saved = *q;
        *q = '\0';
        if (mkdir(p, 0755) != 0 && errno != EEXIST) {
            rc = -1;
        } else if (!real_dir(p)) {
            struct stat st;
            errno = lstat(p, &st) == 0 && S_ISLNK(st.st_mode) ? ELOOP : ENOTDIR;
            rc = -1;
        }
        *q = saved;
        if (rc || saved == '\0')
            break;
    }
    free(p);
    return rc;
}

static DIR *opendir_here(const char *path)
{
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
    if (!d && fd >= 0)
        close(fd);
    return d;
}

static bool errno_is_nospace(int e)
{
    return e == ENOSPC || e == EDQUOT;
}

static cks_err io_fail(cks_diag *diag, int e, const char *what, const char *path)
{
    if (errno_is_nospace(e))
        return cks_fail(diag, CKS_ERR_NO_SPACE,
                        "cache: no space left while %s '%s'; free space or lower --cache-max",
                        what, path);
    return cks_fail(diag, CKS_ERR_IO, "cache: %s '%s': %s", what, path, strerror(e));
}

/* Write all of buf at off; returns 0 or an errno. */
static int pwrite_all(int fd, const void *buf, size_t len, uint64_t off)
{
    const unsigned char *p = buf;
    while (len > 0) {
        ssize_t w = pwrite(fd, p, len, (off_t)off);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return errno;
        }
        if (w == 0)
            return EIO;
        p += w;
        len -= (size_t)w;
        off += (uint64_t)w;
    }
    return 0;
}

/* Read exactly len bytes; returns 0, an errno, or -1 for a short file. */
static int pread_all(int fd, void *buf, size_t len, uint64_t off)
{
    unsigned char *p = buf;
    while (len > 0) {
        ssize_t r = pread(fd, p, len, (off_t)off);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return errno;
        }
        if (r == 0)
            return -1;
        p += r;
        len -= (size_t)r;
        off += (uint64_t)r;
    }
    return 0;
}

/*
 * Temporary files live in <dir>/tmp and are flock'ed by their writer, so a cleaner can
 * tell a live writer's file (lock busy) from a dead one's (lock free) without guessing
 * from ages. O_EXCL plus pid and counter make names unique across processes.
 */
static cks_err tmp_create(cks_cache *c, char **path_out, int *fd_out, cks_diag *diag)
{
    cks_err err = CKS_OK;
    char *path = NULL;
    int fd = -1;
    unsigned rnd = (unsigned)(now_seconds() ^ (int64_t)(uintptr_t)&path);
    for (int tries = 0; tries < 16; tries++) {
        free(path);
        path = NULL;
        if (asprintf(&path, "%s/tmp/%ld-%" PRIu64 "-%x.tmp", c->dir, (long)getpid(),
                     c->tmp_counter++, rnd + (unsigned)tries * 7919u) < 0) {
            path = NULL;
            err = cks_fail(diag, CKS_ERR_NOMEM, "cache: out of memory");
            goto out;
        }
        fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
        if (fd >= 0 || errno != EEXIST)
            break;
    }
    if (fd < 0) {
        err = io_fail(diag, errno, "creating", path);
        goto out;
    }
    (void)flock(fd, LOCK_EX);
out:
    if (err) {
        free(path);
        path = NULL;
    }
    *path_out = path;
    *fd_out = fd;
    return err;
}

/* Close and rename a finished temporary into place; when durable, fsync it first and the
 * directory after (rule 1). */
static cks_err tmp_commit(char *tmp_path, int fd, const char *final_path, const char *final_dir, bool durable,
                          cks_diag *diag)
{
    cks_err err = CKS_OK;
    if (durable && fsync(fd) != 0) {
        err = io_fail(diag, errno, "syncing", tmp_path);
        close(fd);
        unlink(tmp_path);
        goto out;
    }
    close(fd);
    if (rename(tmp_path, final_path) != 0) {
        err = io_fail(diag, errno, "renaming into", final_path);
        unlink(tmp_path);
        goto out;
    }
    if (durable)
        fsync_dir(final_dir);
out:
    return err;
}

static void tmp_abort(char *tmp_path, int fd)
{
    if (fd >= 0)
        close(fd);
    if (tmp_path)
        unlink(tmp_path);
}

/* Write a small file atomically (used for the layout file, key names, markers). */
static cks_err write_file_atomic(cks_cache *c, const char *final_path, const char *final_dir,
                                 const void *data, size_t len, cks_diag *diag)
{
    char *tmp = NULL;
    int fd = -1;
    cks_err err = tmp_create(c, &tmp, &fd, diag);
    if (err)
        goto out;
    int e = pwrite_all(fd, data, len, 0);
    if (e) {
        err = io_fail(diag, e, "writing", tmp);
        tmp_abort(tmp, fd);
        goto out;
    }
    err = tmp_commit(tmp, fd, final_path, final_dir, true, diag);
out:
    free(tmp);
    return err;
}

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
static void key_dirname(const char *key, char out[67])
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

static char *keydir_path(const cks_cache *c, const char *name)
{
    char *p = NULL;
    if (asprintf(&p, "%s/files/%.2s/%s", c->dir, name + 2, name) < 0)
        return NULL;
    return p;
}

static char *extent_path(const cks_cache *c, const char *name, uint64_t off, uint64_t len)
{
    char *p = NULL;
    if (asprintf(&p, "%s/files/%.2s/%s/x-%016" PRIx64 "-%016" PRIx64, c->dir, name + 2, name,
                 off, len) < 0)
        return NULL;
    return p;
}

static bool parse_extent_name(const char *s, uint64_t *off, uint64_t *len)
{
    if (strlen(s) != 2 + 16 + 1 + 16 || s[0] != 'x' || s[1] != '-' || s[18] != '-')
        return false;
    if (!cks_hex_span(s + 2, 16, false) || !cks_hex_span(s + 19, 16, false))
        return false;
    *off = strtoull(s + 2, NULL, 16);
    *len = strtoull(s + 19, NULL, 16);
    return *len > 0 && *len <= MAX_EXTENT_LEN && *off <= UINT64_MAX - *len;
}

static int cmp_extent(const void *a, const void *b)
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
    k->key = xstrdup(key);
    if (!k->key)
        return NULL;
    k->pin_fd = -1;
    k->lock_fd = -1;
    key_dirname(key, k->name);
    c->n_keys++;
    return k;
}

/* Make the key directory and its "key" file (so `cache ls` can name it). */
static cks_err keydir_ensure(cks_cache *c, keyent *k, cks_diag *diag)
{
    cks_err err = CKS_OK;
    char *dir = keydir_path(c, k->name);
    char *kf = NULL;
    struct stat st;
    if (!dir) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "cache: out of memory");
        goto out;
    }
    kf = path_join(dir, "key");
    if (!kf) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "cache: out of memory");
        goto out;
    }
    /* checked every time: files are then opened inside it by name */
    if (mkdirs_here(c, dir) != 0) {
        err = io_fail(diag, errno, "creating directory", dir);
        goto out;
    }
    if (lstat(kf, &st) == 0)
        goto out;
    err = write_file_atomic(c, kf, dir, k->key, strlen(k->key), diag);
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
static cks_err key_open_lock(cks_cache *c, keyent *k, cks_diag *diag)
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
    dir = keydir_path(c, k->name);
    lf = dir ? path_join(dir, "lock") : NULL;
    if (!lf) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "cache: out of memory");
        goto out;
    }
    k->lock_fd = open(lf, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0644);
    if (k->lock_fd < 0)
        err = io_fail(diag, errno, "opening lock", lf);
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
    return get_u64(b);
}

static void key_gen_bump(keyent *k)
{
    unsigned char b[8];
    uint64_t g = key_gen_read(k) + 1;
    put_u64(b, g);
    if (k->lock_fd >= 0 && pwrite(k->lock_fd, b, 8, 0) == 8) {
        k->gen_seen = g;
        k->gen_valid = true;
    } else {
        k->gen_valid = false;
    }
}

/* Reload a key's extent index from its directory unless the generation says nothing was
 * added since the last scan (force: always). */
static cks_err key_refresh(cks_cache *c, keyent *k, bool force, cks_diag *diag)
{
    cks_err err = CKS_OK;
    char *dir = NULL;
    DIR *d = NULL;
    uint64_t gen = 0;
    if (k->lock_fd < 0) {
        char *kd = keydir_path(c, k->name);
        char *shard = kd ? strndup(kd, strlen(kd) - strlen(k->name) - 1) : NULL;
        bool exists = kd && access(kd, F_OK) == 0;
        bool real = shard && real_dir(shard) && real_dir(kd);
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
            (void)key_open_lock(c, k, NULL);
    }
    if (k->lock_fd >= 0) {
        gen = key_gen_read(k);
        if (!force && k->loaded && k->gen_valid && gen == k->gen_seen)
            goto out;
    }
    dir = keydir_path(c, k->name);
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
    d = opendir_here(dir);
    if (!d)
        goto out;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        uint64_t off, len;
        if (!parse_extent_name(de->d_name, &off, &len))
            continue;
        if (k->n_ext == k->cap_ext) {
            size_t nc = k->cap_ext ? 2 * k->cap_ext : 16;
            extent *ne = realloc(k->ext, nc * sizeof *ne);
            if (!ne) {
                k->gen_valid = false;
                err = cks_fail(diag, CKS_ERR_NOMEM, "cache: out of memory");
                goto out;
            }
            k->ext = ne;
            k->cap_ext = nc;
        }
        k->ext[k->n_ext].off = off;
        k->ext[k->n_ext].len = len;
        k->n_ext++;
        if (len > k->max_len)
            k->max_len = len;
    }
    if (k->n_ext > 1)
        qsort(k->ext, k->n_ext, sizeof *k->ext, cmp_extent);
out:
    if (d)
        closedir(d);
    free(dir);
    return err;
}

/* Keep the in-memory index in step with our own writes (we hold the key lock). */
static cks_err key_insert_extent(keyent *k, uint64_t off, uint64_t len)
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
    extent e = {off, len};
    while (i > 0 && cmp_extent(&k->ext[i - 1], &e) > 0)
        i--;
    memmove(&k->ext[i + 1], &k->ext[i], (k->n_ext - i) * sizeof *k->ext);
    k->ext[i] = e;
    k->n_ext++;
    if (len > k->max_len)
        k->max_len = len;
    return CKS_OK;
}

static keyent *key_get(cks_cache *c, const char *key, cks_diag *diag, cks_err *err)
{
    keyent *k = key_find(c, key, true);
    *err = CKS_OK;
    if (!k) {
        *err = cks_fail(diag, CKS_ERR_NOMEM, "cache: out of memory");
        return NULL;
    }
    if (!k->loaded) {
        *err = key_refresh(c, k, true, diag);
        if (*err)
            return NULL;
    }
    return k;
}

static void key_remove_extent(keyent *k, uint64_t off, uint64_t len)
{
    for (size_t i = 0; i < k->n_ext; i++) {
        if (k->ext[i].off == off && k->ext[i].len == len) {
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
static size_t first_relevant(const keyent *k, uint64_t a)
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

static cks_err gaps_append(const keyent *k, uint64_t a, uint64_t b, cks_range **out, size_t *n,
                           size_t *cap)
{
    uint64_t pos = a;
    for (size_t i = first_relevant(k, a); i < k->n_ext && pos < b; i++) {
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

static bool key_covers(const keyent *k, uint64_t a, uint64_t b)
{
    uint64_t pos = a;
    for (size_t i = first_relevant(k, a); i < k->n_ext && pos < b; i++) {
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
static void key_pin(cks_cache *c, keyent *k)
{
    if (k->pinned)
        return;
    k->pinned = true;
    if (c->n_pin_fds >= MAX_PIN_FDS)
        return;
    char *dir = keydir_path(c, k->name);
    char *pf = dir ? path_join(dir, "pin") : NULL;
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
        return xstrdup(e);
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
    char *path = path_join(c->dir, "config");
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

static void clean_stale_temps(cks_cache *c, uint64_t *count, bool remove)
{
    char *tdir = path_join(c->dir, "tmp");
    DIR *d = tdir ? opendir_here(tdir) : NULL;
    struct dirent *de;
    while (d && (de = readdir(d)) != NULL) {
        if (de->d_name[0] == '.')
            continue;
        char *p = path_join(tdir, de->d_name);
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
            bool old = fstat(fd, &st) == 0 && st.st_mtim.tv_sec + 3600 < now_seconds();
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
    c->dir = (opts && opts->dir && *opts->dir) ? xstrdup(opts->dir) : default_dir();
    if (!c->dir) {
        err = cks_fail(diag, CKS_ERR_CACHE,
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
    if (mkdir_p(c->dir) != 0) {
        err = cks_fail(diag, CKS_ERR_CACHE, "cache: cannot create '%s': %s", c->dir, strerror(errno));
        goto out;
    }
    static const char *const subdirs[] = {"tmp", "files", "meta"};
    for (size_t i = 0; i < sizeof subdirs / sizeof subdirs[0]; i++) {
        free(sub);
        sub = path_join(c->dir, subdirs[i]);
        if (!sub || mkdirs_here(c, sub) != 0) {
            err = cks_fail(diag, CKS_ERR_CACHE, "cache: cannot create '%s': %s",
                           sub ? sub : c->dir, strerror(errno));
            goto out;
        }
    }
    layout = path_join(c->dir, "layout");
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
        err = write_file_atomic(c, layout, c->dir, LAYOUT_TEXT, strlen(LAYOUT_TEXT), diag);
        if (err)
            goto out;
        static const char tag[] = "Signature: 8a477f597d28d172789f06886806bc55\n"
                                  "# This file is a cache directory tag created by ckptscope.\n";
        free(sub);
        sub = path_join(c->dir, "CACHEDIR.TAG");
        if (sub)
            (void)write_file_atomic(c, sub, c->dir, tag, strlen(tag), NULL);
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
    clean_stale_temps(c, NULL, true);
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
        key_pin(c, k);
    pthread_mutex_unlock(&c->mu);
}

/* ------------------------------------------------------------------------------------ */
/* extent files                                                                        */

/*
 * Extent file:
 *   header (64 bytes): magic "CKSEXT01", u64 offset, u64 length, u32 chunk_size,
 *     u32 n_chunks, 16 bytes of SHA-256(key) (catches a file in the wrong directory),
 *     u32 flags, u32 reserved, u32 reserved, u32 CRC32C(header[0..60) + table)
 *   table: n_chunks x { u64 stored_offset, u32 stored_len, u32 method, u32 sum[4] }
 *   payloads, in chunk order
 * All integers little-endian. sum[] is cks_cache_checksum of the chunk's logical bytes.
 */
typedef struct ext_table {
    uint64_t off, len;
    uint32_t n_chunks;
    unsigned char raw[EXT_HEADER_SIZE + MAX_CHUNKS * EXT_ENTRY_SIZE];
    struct stat st;
} ext_table;

typedef enum ext_status {
    EXT_OK = 0,
    EXT_GONE,     /* the file disappeared (evicted, merged): rescan */
    EXT_CORRUPT,  /* the file is damaged: delete it */
    EXT_IOERR,    /* the disk failed to read: a miss, but leave the file */
    EXT_NOMEM
} ext_status;

static void key_fingerprint(const char *key, unsigned char out[16])
{
    unsigned char md[32];
    unsigned int n = 0;
    if (!EVP_Digest(key, strlen(key), md, &n, EVP_sha256(), NULL))
        memset(md, 0, sizeof md);
    memcpy(out, md, 16);
}

static ext_status ext_load_table(int fd, const char *key, uint64_t want_off, uint64_t want_len,
                                 ext_table *t, char *why, size_t why_len)
{
    unsigned char fp[16];
    if (fstat(fd, &t->st) != 0)
        return EXT_IOERR;
    if ((uint64_t)t->st.st_size < EXT_HEADER_SIZE) {
        snprintf(why, why_len, "shorter than its header");
        return EXT_CORRUPT;
    }
    int e = pread_all(fd, t->raw, EXT_HEADER_SIZE, 0);
    if (e > 0)
        return EXT_IOERR;
    if (e < 0 || memcmp(t->raw, EXT_MAGIC, 8) != 0) {
        snprintf(why, why_len, "bad magic");
        return EXT_CORRUPT;
    }
    t->off = get_u64(t->raw + 8);
    t->len = get_u64(t->raw + 16);
    uint32_t cs = get_u32(t->raw + 24);
    t->n_chunks = get_u32(t->raw + 28);
    if (t->off != want_off || t->len != want_len || cs != CHUNK_SIZE ||
        t->n_chunks != (want_len + CHUNK_SIZE - 1) / CHUNK_SIZE || t->n_chunks > MAX_CHUNKS) {
        snprintf(why, why_len, "header does not match its name");
        return EXT_CORRUPT;
    }
    size_t table_len = (size_t)t->n_chunks * EXT_ENTRY_SIZE;
    e = pread_all(fd, t->raw + EXT_HEADER_SIZE, table_len, EXT_HEADER_SIZE);
    if (e > 0)
        return EXT_IOERR;
    if (e < 0) {
        snprintf(why, why_len, "truncated chunk table");
        return EXT_CORRUPT;
    }
    uint32_t want_crc = get_u32(t->raw + 60);
    uint32_t crc = cks_crc32c(0, t->raw, 60);
    crc = cks_crc32c(crc, t->raw + EXT_HEADER_SIZE, table_len);
    if (crc != want_crc) {
        snprintf(why, why_len, "header checksum mismatch");
        return EXT_CORRUPT;
    }
    key_fingerprint(key, fp);
    if (memcmp(fp, t->raw + 32, 16) != 0) {
        snprintf(why, why_len, "belongs to another key");
        return EXT_CORRUPT;
    }
    return EXT_OK;
}

static uint32_t chunk_logical_len(const ext_table *t, uint32_t i)
{
    uint64_t start = (uint64_t)i * CHUNK_SIZE;
    uint64_t rem = t->len - start;
    return rem < CHUNK_SIZE ? (uint32_t)rem : CHUNK_SIZE;
}

/* Decode chunk i of an open extent into dst (which holds its logical length) and verify. */
static ext_status ext_read_chunk(cks_cache *c, int fd, const ext_table *t, uint32_t i,
                                 unsigned char *dst, char *why, size_t why_len)
{
    const unsigned char *ent = t->raw + EXT_HEADER_SIZE + (size_t)i * EXT_ENTRY_SIZE;
    uint64_t soff = get_u64(ent);
    uint32_t slen = get_u32(ent + 8);
    uint32_t method = get_u32(ent + 12);
    uint32_t want[4], got[4];
    uint32_t llen = chunk_logical_len(t, i);
    int e;

    for (int k = 0; k < 4; k++)
        want[k] = get_u32(ent + 16 + 4 * k);
    if (soff > (uint64_t)t->st.st_size || slen > (uint64_t)t->st.st_size - soff ||
        slen > c->scratch_cap) {
        snprintf(why, why_len, "chunk %u lies outside the file", i);
        return EXT_CORRUPT;
    }
    if (method == METHOD_RAW) {
        if (slen != llen) {
            snprintf(why, why_len, "chunk %u has the wrong length", i);
            return EXT_CORRUPT;
        }
        e = pread_all(fd, dst, llen, soff);
    } else if (method == METHOD_ZSTD) {
        e = pread_all(fd, c->scratch, slen, soff);
        if (e == 0) {
            size_t r = ZSTD_decompressDCtx(c->dctx, dst, llen, c->scratch, slen);
            if (ZSTD_isError(r) || r != llen) {
                snprintf(why, why_len, "chunk %u does not decompress", i);
                return EXT_CORRUPT;
            }
        }
    } else {
        snprintf(why, why_len, "chunk %u has unknown method %u", i, method);
        return EXT_CORRUPT;
    }
    if (e > 0)
        return EXT_IOERR;
    if (e < 0) {
        snprintf(why, why_len, "chunk %u is truncated", i);
        return EXT_CORRUPT;
    }
    cks_cache_checksum(dst, llen, got);
    if (memcmp(want, got, sizeof want) != 0) {
        snprintf(why, why_len, "checksum mismatch in chunk %u", i);
        return EXT_CORRUPT;
    }
    return EXT_OK;
}

/* The verified-chunk memory cache: small reads (norm vectors, headers) that share a chunk
 * decode and verify it once. Keyed by the file's identity, which never changes content. */
static chunk_slot *slot_find(cks_cache *c, const char *name, const ext_table *t, uint32_t i)
{
    for (size_t s = 0; s < N_SLOTS; s++) {
        chunk_slot *sl = &c->slots[s];
        if (sl->data && sl->idx == i && sl->ext_off == t->off && sl->ext_len == t->len &&
            sl->ino == t->st.st_ino && sl->dev == t->st.st_dev && strcmp(sl->name, name) == 0) {
            sl->stamp = ++c->slot_clock;
            return sl;
        }
    }
    return NULL;
}

static chunk_slot *slot_claim(cks_cache *c)
{
    chunk_slot *best = &c->slots[0];
    for (size_t s = 0; s < N_SLOTS; s++) {
        if (!c->slots[s].data || c->slots[s].name[0] == '\0') {
            best = &c->slots[s];
            break;
        }
        if (c->slots[s].stamp < best->stamp)
            best = &c->slots[s];
    }
    if (!best->data) {
        best->data = malloc(CHUNK_SIZE);
        if (!best->data)
            return NULL;
    }
    best->name[0] = '\0';
    return best;
}

static void slots_forget(cks_cache *c, const char *name)
{
    for (size_t s = 0; s < N_SLOTS; s++)
        if (strcmp(c->slots[s].name, name) == 0)
            c->slots[s].name[0] = '\0';
}

/*
 * Copy [pos, pos+n) (inside extent e) into dst, verifying every chunk touched. Chunks the
 * request covers whole are decoded straight into dst (no copy); partial ones go through
 * the slot cache.
 */
static ext_status ext_read(cks_cache *c, keyent *k, const extent *e, uint64_t pos,
                           unsigned char *dst, uint64_t n, char *why, size_t why_len)
{
    ext_status st = EXT_OK;
    ext_table *t = NULL;
    char *path = extent_path(c, k->name, e->off, e->len);
    int fd = -1;
    if (!path) {
        st = EXT_NOMEM;
        goto out;
    }
    fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) {
        st = errno == ENOENT ? EXT_GONE : EXT_IOERR;
        goto out;
    }
    t = malloc(sizeof *t);
    if (!t) {
        st = EXT_NOMEM;
        goto out;
    }
    st = ext_load_table(fd, k->key, e->off, e->len, t, why, why_len);
    if (st)
        goto out;
    uint64_t rel = pos - e->off, end = rel + n;
    for (uint32_t i = (uint32_t)(rel / CHUNK_SIZE); (uint64_t)i * CHUNK_SIZE < end; i++) {
        uint64_t cstart = (uint64_t)i * CHUNK_SIZE;
        uint32_t clen = chunk_logical_len(t, i);
        uint64_t a = rel > cstart ? rel : cstart;
        uint64_t b = end < cstart + clen ? end : cstart + clen;
        unsigned char *d = dst + (a - rel);
        if (a == cstart && b == cstart + clen) {
            st = ext_read_chunk(c, fd, t, i, d, why, why_len);
            if (st)
                goto out;
            continue;
        }
        chunk_slot *sl = slot_find(c, k->name, t, i);
        if (!sl) {
            sl = slot_claim(c);
            if (!sl) {
                st = EXT_NOMEM;
                goto out;
            }
            st = ext_read_chunk(c, fd, t, i, sl->data, why, why_len);
            if (st)
                goto out;
            memcpy(sl->name, k->name, sizeof sl->name);
            sl->ext_off = t->off;
            sl->ext_len = t->len;
            sl->idx = i;
            sl->len = clen;
            sl->ino = t->st.st_ino;
            sl->dev = t->st.st_dev;
            sl->stamp = ++c->slot_clock;
        }
        memcpy(d, sl->data + (a - cstart), (size_t)(b - a));
    }
    /* LRU order for eviction: refresh the access time, but not on every read */
    if (t->st.st_atim.tv_sec + ATIME_SLACK_SECONDS < now_seconds()) {
        struct timespec ts[2] = {{0, UTIME_NOW}, {0, UTIME_OMIT}};
        (void)futimens(fd, ts);
    }
out:
    if (fd >= 0)
        close(fd);
    free(t);
    free(path);
    return st;
}

static cks_err ext_write(cks_cache *c, keyent *k, uint64_t off, const unsigned char *data,
                         uint64_t len, uint64_t *stored_out, cks_diag *diag);
static cks_err lock_key(cks_cache *c, keyent *k, cks_diag *diag);

/*
 * Before a damaged extent goes, rewrite the runs of its chunks that still verify as new
 * extents, so one flipped bit costs a refetch of one chunk, not of the whole extent.
 * Returns the bytes kept. Needs the key lock (taken here unless the caller holds it).
 */
static uint64_t ext_salvage(cks_cache *c, keyent *k, const extent *e, bool have_lock)
{
    uint64_t saved = 0;
    ext_table *t = malloc(sizeof *t);
    unsigned char *buf = malloc((size_t)e->len);
    char *path = extent_path(c, k->name, e->off, e->len);
    char why[128];
    int fd = -1;
    bool locked_here = false, wrote = false, in_run = false;
    uint64_t run_start = 0;
    if (!t || !buf || !path)
        goto out;
    if (!have_lock) {
        if (lock_key(c, k, NULL) != CKS_OK)
            goto out;
        locked_here = true;
    }
    fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0 || ext_load_table(fd, k->key, e->off, e->len, t, why, sizeof why) != EXT_OK)
        goto out; /* header or table damaged: nothing can be trusted */
    for (uint32_t i = 0; i <= t->n_chunks; i++) {
        uint64_t cstart = (uint64_t)i * CHUNK_SIZE;
        bool good = i < t->n_chunks &&
                    ext_read_chunk(c, fd, t, i, buf + cstart, why, sizeof why) == EXT_OK;
        if (good && !in_run) {
            run_start = cstart;
            in_run = true;
        } else if (!good && in_run) {
            uint64_t run_end = cstart < e->len ? cstart : e->len, stored = 0;
            in_run = false;
            if (ext_write(c, k, e->off + run_start, buf + run_start, run_end - run_start, &stored,
                          NULL) != CKS_OK)
                continue;
            wrote = true;
            saved += run_end - run_start;
            if (key_insert_extent(k, e->off + run_start, run_end - run_start) != CKS_OK)
                k->gen_valid = false;
        }
    }
out:
    if (wrote) {
        key_gen_bump(k);
        k->gen_valid = false; /* others may have written since our last scan: rescan next time */
    }
    if (fd >= 0)
        close(fd);
    if (locked_here && k->lock_fd >= 0)
        flock(k->lock_fd, LOCK_UN);
    free(t);
    free(buf);
    free(path);
    return saved;
}

/* Delete a damaged extent so the refetch can replace it (keeping the chunks that still
 * verify); note it for --verbose. */
static void ext_drop(cks_cache *c, keyent *k, const extent *e, const char *why, bool have_lock)
{
    extent copy = *e;
    char *path = extent_path(c, k->name, copy.off, copy.len);
    uint64_t kept = ext_salvage(c, k, &copy, have_lock);
    if (path)
        unlink(path);
    add_note(c,
             "cache: dropped corrupt extent [%" PRIu64 ", %" PRIu64 ") of %s (%s); kept %" PRIu64
             " bytes that verified, refetching the rest",
             copy.off, copy.off + copy.len, k->key, why, kept);
    slots_forget(c, k->name);
    key_remove_extent(k, copy.off, copy.len);
    free(path);
}

/* Most weight chunks will not pass the saving threshold: judge from a 16 KiB sample from
 * the middle of the chunk before compressing all of it (a misjudged chunk is only stored
 * raw, which is always correct). */
static bool chunk_worth_compressing(cks_cache *c, const unsigned char *src, uint32_t llen)
{
    if (llen < 4 * SAMPLE_LEN)
        return true;
    const unsigned char *mid = src + (llen / 2 - SAMPLE_LEN / 2);
    size_t z = ZSTD_compressCCtx(c->cctx, c->scratch, c->scratch_cap, mid, SAMPLE_LEN,
                                 ZSTD_LEVEL_EXTENT);
    unsigned want = c->min_saving_pct > 2 ? c->min_saving_pct - 2 : 0;
    return !ZSTD_isError(z) && (uint64_t)z * 100 <= (uint64_t)SAMPLE_LEN * (100 - want);
}

/* Encode [off, off+len) into a new extent file and rename it into the key directory. */
static cks_err ext_write(cks_cache *c, keyent *k, uint64_t off, const unsigned char *data,
                         uint64_t len, uint64_t *stored_out, cks_diag *diag)
{
    cks_err err = CKS_OK;
    char *tmp = NULL, *final = NULL, *dir = NULL;
    int fd = -1;
    unsigned char *hdr = NULL;
    uint32_t n_chunks = (uint32_t)((len + CHUNK_SIZE - 1) / CHUNK_SIZE);
    size_t hdr_len = EXT_HEADER_SIZE + (size_t)n_chunks * EXT_ENTRY_SIZE;
    uint64_t pos = hdr_len;
    int e;

    *stored_out = 0;
    hdr = calloc(1, hdr_len);
    final = extent_path(c, k->name, off, len);
    dir = keydir_path(c, k->name);
    if (!hdr || !final || !dir) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "cache: out of memory");
        goto out;
    }
    err = tmp_create(c, &tmp, &fd, diag);
    if (err)
        goto out;
    for (uint32_t i = 0; i < n_chunks; i++) {
        const unsigned char *src = data + (uint64_t)i * CHUNK_SIZE;
        uint64_t rem = len - (uint64_t)i * CHUNK_SIZE;
        uint32_t llen = rem < CHUNK_SIZE ? (uint32_t)rem : CHUNK_SIZE;
        uint32_t sum[4];
        const unsigned char *out_p = src;
        uint32_t out_len = llen, method = METHOD_RAW;
        size_t z = (size_t)-1;
        if (c->min_saving_pct <= 100 && chunk_worth_compressing(c, src, llen))
            z = ZSTD_compressCCtx(c->cctx, c->scratch, c->scratch_cap, src, llen,
                                  ZSTD_LEVEL_EXTENT);
        if (c->min_saving_pct <= 100 && !ZSTD_isError(z) &&
            (uint64_t)z * 100 <= (uint64_t)llen * (100 - c->min_saving_pct)) {
            out_p = c->scratch;
            out_len = (uint32_t)z;
            method = METHOD_ZSTD;
        }
        cks_cache_checksum(src, llen, sum);
        unsigned char *ent = hdr + EXT_HEADER_SIZE + (size_t)i * EXT_ENTRY_SIZE;
        put_u64(ent, pos);
        put_u32(ent + 8, out_len);
        put_u32(ent + 12, method);
        for (int q = 0; q < 4; q++)
            put_u32(ent + 16 + 4 * q, sum[q]);
        e = pwrite_all(fd, out_p, out_len, pos);
        if (e) {
            err = io_fail(diag, e, "writing", tmp);
            goto out;
        }
        pos += out_len;
    }
    memcpy(hdr, EXT_MAGIC, 8);
    put_u64(hdr + 8, off);
    put_u64(hdr + 16, len);
    put_u32(hdr + 24, CHUNK_SIZE);
    put_u32(hdr + 28, n_chunks);
    key_fingerprint(k->key, hdr + 32);
    uint32_t crc = cks_crc32c(0, hdr, 60);
    crc = cks_crc32c(crc, hdr + EXT_HEADER_SIZE, hdr_len - EXT_HEADER_SIZE);
    put_u32(hdr + 60, crc);
    e = pwrite_all(fd, hdr, hdr_len, 0);
    if (e) {
        err = io_fail(diag, e, "writing", tmp);
        goto out;
    }
    err = tmp_commit(tmp, fd, final, dir, len >= EXTENT_SYNC_MIN, diag);
    fd = -1;
    if (err)
        goto out;
    *stored_out = pos;
out:
    if (err && fd >= 0)
        tmp_abort(tmp, fd);
    free(tmp);
    free(final);
    free(dir);
    free(hdr);
    return err;
}

/* ------------------------------------------------------------------------------------ */
/* public read / write / missing                                                       */

cks_err cks_cache_missing(cks_cache *c, const char *key, const cks_range *want, size_t n_want,
                          cks_range **missing, size_t *n_missing, cks_diag *diag)
{
    cks_err err = CKS_OK;
    cks_range *out = NULL, *sorted = NULL;
    size_t n = 0, cap = 0;
    bool locked = false;

    if (missing)
        *missing = NULL;
    if (n_missing)
        *n_missing = 0;
    if (!c || !missing || !n_missing || (n_want && !want) || !cks_cache_key_valid(key)) {
        err = cks_fail(diag, CKS_ERR_INVALID_ARG, "cache: invalid key or arguments");
        goto out;
    }
    pthread_mutex_lock(&c->mu);
    locked = true;
    keyent *k = key_get(c, key, diag, &err);
    if (!k)
        goto out;
    /* asking what is missing means this run is about to use the key: keep it */
    key_pin(c, k);
    err = key_refresh(c, k, false, diag);
    if (err)
        goto out;
    /* sort and merge the request first so the answer is sorted and merged too */
    sorted = malloc((n_want ? n_want : 1) * sizeof *sorted);
    if (!sorted) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "cache: out of memory");
        goto out;
    }
    size_t m = 0;
    for (size_t i = 0; i < n_want; i++) {
        if (want[i].length == 0)
            continue;
        if (want[i].offset > UINT64_MAX - want[i].length) {
            err = cks_fail(diag, CKS_ERR_INVALID_ARG, "cache: range overflows at offset %" PRIu64,
                           want[i].offset);
            goto out;
        }
        sorted[m++] = want[i];
    }
    qsort(sorted, m, sizeof *sorted, cmp_extent);
    size_t w = 0;
    for (size_t i = 0; i < m; i++) {
        if (w > 0 && sorted[i].offset <= sorted[w - 1].offset + sorted[w - 1].length) {
            uint64_t end = sorted[i].offset + sorted[i].length;
            uint64_t pend = sorted[w - 1].offset + sorted[w - 1].length;
            if (end > pend)
                sorted[w - 1].length = end - sorted[w - 1].offset;
        } else {
            sorted[w++] = sorted[i];
        }
    }
    for (size_t i = 0; i < w; i++) {
        if (gaps_append(k, sorted[i].offset, sorted[i].offset + sorted[i].length, &out, &n,
                        &cap) != CKS_OK) {
            err = cks_fail(diag, CKS_ERR_NOMEM, "cache: out of memory");
            goto out;
        }
    }
    /* gaps of adjacent requests can touch: merge them */
    size_t j = 0;
    for (size_t i = 0; i < n; i++) {
        if (j > 0 && out[i].offset == out[j - 1].offset + out[j - 1].length)
            out[j - 1].length += out[i].length;
        else
            out[j++] = out[i];
    }
    n = j;
out:
    if (locked)
        pthread_mutex_unlock(&c->mu);
    free(sorted);
    if (err || n == 0) {
        free(out);
        out = NULL;
        n = 0;
    }
    if (missing)
        *missing = out;
    if (n_missing)
        *n_missing = n;
    return err;
}

/* Read with the mutex held; hit semantics as the public function. */
static cks_err read_locked(cks_cache *c, keyent *k, uint64_t offset, unsigned char *buf,
                           size_t len, bool *hit, cks_diag *diag)
{
    cks_err err = CKS_OK;
    uint64_t end = offset + len;
    char why[128];
    *hit = false;
    for (int attempt = 0; attempt < 3; attempt++) {
        if (!key_covers(k, offset, end)) {
            if (attempt > 0)
                goto out;
            err = key_refresh(c, k, false, diag);
            if (err)
                goto out;
            if (!key_covers(k, offset, end))
                goto out;
        }
        uint64_t pos = offset;
        bool retry = false;
        while (pos < end) {
            /* the extent reaching furthest among those that contain pos */
            const extent *best = NULL;
            for (size_t i = first_relevant(k, pos); i < k->n_ext && k->ext[i].off <= pos; i++) {
                const extent *e = &k->ext[i];
                if (e->off + e->len > pos && (!best || e->off + e->len > best->off + best->len))
                    best = e;
            }
            if (!best) {
                retry = true;
                break;
            }
            uint64_t stop = best->off + best->len < end ? best->off + best->len : end;
            why[0] = '\0';
            ext_status st = ext_read(c, k, best, pos, buf + (pos - offset), stop - pos, why,
                                     sizeof why);
            if (st == EXT_OK) {
                pos = stop;
                continue;
            }
            if (st == EXT_NOMEM) {
                err = cks_fail(diag, CKS_ERR_NOMEM, "cache: out of memory");
                goto out;
            }
            if (st == EXT_CORRUPT) {
                ext_drop(c, k, best, why, false);
                goto out;
            }
            if (st == EXT_IOERR) {
                add_note(c, "cache: read error on an extent of %s; treating it as missing",
                         k->key);
                goto out;
            }
            retry = true; /* EXT_GONE: evicted or merged by another process */
            break;
        }
        if (!retry) {
            *hit = true;
            goto out;
        }
        err = key_refresh(c, k, true, diag);
        if (err)
            goto out;
    }
out:
    return err;
}

static cks_err gap_push(cks_range **v, size_t *n, size_t *cap, uint64_t a, uint64_t b)
{
    if (a >= b)
        return CKS_OK;
    if (*n > 0 && (*v)[*n - 1].offset + (*v)[*n - 1].length == a) {
        (*v)[*n - 1].length += b - a;
        return CKS_OK;
    }
    if (*n == *cap) {
        size_t nc = *cap ? 2 * *cap : 8;
        cks_range *nv = realloc(*v, nc * sizeof *nv);
        if (!nv)
            return CKS_ERR_NOMEM;
        *v = nv;
        *cap = nc;
    }
    (*v)[(*n)++] = (cks_range){a, b - a};
    return CKS_OK;
}

cks_err cks_cache_read_some(cks_cache *c, const char *key, uint64_t offset, void *vbuf,
                            size_t len, cks_range **missing, size_t *n_missing, cks_diag *diag)
{
    cks_err err = CKS_OK;
    bool locked = false;
    cks_range *gaps = NULL;
    size_t n = 0, cap = 0;
    unsigned char *buf = vbuf;
    char why[128];
    if (missing)
        *missing = NULL;
    if (n_missing)
        *n_missing = 0;
    if (!c || !missing || !n_missing || (len && !buf) || !cks_cache_key_valid(key) ||
        offset > UINT64_MAX - len) {
        err = cks_fail(diag, CKS_ERR_INVALID_ARG, "cache: invalid key or arguments");
        goto out;
    }
    if (len == 0)
        goto out;
    pthread_mutex_lock(&c->mu);
    locked = true;
    keyent *k = key_get(c, key, diag, &err);
    if (!k)
        goto out;
    key_pin(c, k);
    err = key_refresh(c, k, false, diag);
    if (err)
        goto out;
    uint64_t pos = offset, end = offset + len;
    int gone_retries = 0;
    while (pos < end) {
        const extent *best = NULL;
        uint64_t next = end;
        for (size_t i = first_relevant(k, pos); i < k->n_ext; i++) {
            const extent *e = &k->ext[i];
            if (e->off > pos) {
                if (e->off < next)
                    next = e->off;
                break;
            }
            if (e->off + e->len > pos && (!best || e->off + e->len > best->off + best->len))
                best = e;
        }
        if (!best) {
            /* not cached: a gap up to the next extent */
            if (gap_push(&gaps, &n, &cap, pos, next) != CKS_OK) {
                err = cks_fail(diag, CKS_ERR_NOMEM, "cache: out of memory");
                goto out;
            }
            pos = next;
            continue;
        }
        uint64_t stop = best->off + best->len < end ? best->off + best->len : end;
        why[0] = '\0';
        ext_status st = ext_read(c, k, best, pos, buf + (pos - offset), stop - pos, why, sizeof why);
        if (st == EXT_NOMEM) {
            err = cks_fail(diag, CKS_ERR_NOMEM, "cache: out of memory");
            goto out;
        }
        if (st == EXT_GONE && gone_retries++ < 3) {
            err = key_refresh(c, k, true, diag);
            if (err)
                goto out;
            continue;
        }
        if (st == EXT_CORRUPT)
            ext_drop(c, k, best, why, false);
        else if (st == EXT_IOERR)
            add_note(c, "cache: read error on an extent of %s; treating it as missing", k->key);
        if (st != EXT_OK && gap_push(&gaps, &n, &cap, pos, stop) != CKS_OK) {
            err = cks_fail(diag, CKS_ERR_NOMEM, "cache: out of memory");
            goto out;
        }
        pos = stop;
    }
out:
    if (locked)
        pthread_mutex_unlock(&c->mu);
    if (err) {
        free(gaps);
        gaps = NULL;
        n = 0;
    }
    if (missing)
        *missing = n ? gaps : NULL;
    if (n_missing)
        *n_missing = n;
    if (!n)
        free(gaps);
    return err;
}

cks_err cks_cache_read(cks_cache *c, const char *key, uint64_t offset, void *buf, size_t len,
                       bool *hit, cks_diag *diag)
{
    cks_err err = CKS_OK;
    bool h = false, locked = false;
    if (!c || !hit || (len && !buf) || !cks_cache_key_valid(key) ||
        offset > UINT64_MAX - len) {
        err = cks_fail(diag, CKS_ERR_INVALID_ARG, "cache: invalid key or arguments");
        goto out;
    }
    if (len == 0) {
        h = true;
        goto out;
    }
    pthread_mutex_lock(&c->mu);
    locked = true;
    keyent *k = key_get(c, key, diag, &err);
    if (!k)
        goto out;
    key_pin(c, k);
    err = read_locked(c, k, offset, buf, len, &h, diag);
out:
    if (locked)
        pthread_mutex_unlock(&c->mu);
    if (hit)
        *hit = err ? false : h;
    return err;
}

/* Take the key's writer lock. `cache clear` may remove the directory of a key nobody
 * pins between our open and our flock: then the lock file is unlinked; start over. */
static cks_err lock_key(cks_cache *c, keyent *k, cks_diag *diag)
{
    cks_err err = CKS_OK;
    for (int tries = 0; tries < 8; tries++) {
        struct stat st;
        err = key_open_lock(c, k, diag);
        if (err)
            goto out;
        while (flock(k->lock_fd, LOCK_EX) != 0 && errno == EINTR)
            ;
        if (fstat(k->lock_fd, &st) == 0 && st.st_nlink > 0)
            goto out;
        close(k->lock_fd);
        k->lock_fd = -1;
        k->gen_valid = false;
    }
    err = cks_fail(diag, CKS_ERR_CACHE, "cache: cannot lock the directory of %s", k->key);
out:
    return err;
}

/* True when every extent the index says covers part of [a, b) is still on disk. */
static bool covering_extents_exist(cks_cache *c, const keyent *k, uint64_t a, uint64_t b)
{
    for (size_t i = 0; i < k->n_ext; i++) {
        const extent *e = &k->ext[i];
        struct stat st;
        if (e->off >= b || e->off + e->len <= a)
            continue;
        char *p = extent_path(c, k->name, e->off, e->len);
        bool ok = p && stat(p, &st) == 0;
        free(p);
        if (!ok)
            return false;
    }
    return true;
}

static cks_err maybe_evict(cks_cache *c, cks_diag *diag);

static cks_err cache_write(cks_cache *c, const char *key, uint64_t offset, const void *data,
                           size_t len, cks_diag *diag)
{
    cks_err err = CKS_OK;
    bool locked = false, key_locked = false, wrote = false;
    keyent *k = NULL;
    unsigned char *merged = NULL;
    cks_range *gaps = NULL;
    size_t n_gaps = 0, cap_gaps = 0;
    uint64_t stored_total = 0;
    const unsigned char *src = data;

    if (!c || (len && !data) || !cks_cache_key_valid(key) || offset > UINT64_MAX - len) {
        err = cks_fail(diag, CKS_ERR_INVALID_ARG, "cache: invalid key or arguments");
        goto out;
    }
    if (len == 0)
        goto out;
    pthread_mutex_lock(&c->mu);
    locked = true;
    k = key_get(c, key, diag, &err);
    if (!k)
        goto out;
    key_pin(c, k);
    err = lock_key(c, k, diag);
    if (err)
        goto out;
    key_locked = true;
    /* under the key lock, catch up with what other processes wrote */
    err = key_refresh(c, k, false, diag);
    if (err)
        goto out;
    uint64_t a = offset, b = offset + len;
    if (key_covers(k, a, b)) {
        if (covering_extents_exist(c, k, a, b))
            goto out;
        /* evicted or dropped by someone else meanwhile */
        err = key_refresh(c, k, true, diag);
        if (err)
            goto out;
        if (key_covers(k, a, b))
            goto out;
    }

    /* Merge with overlapping or adjacent neighbours when the result is one bounded extent
     * and the neighbours are cheap to rewrite. */
    uint64_t ua = a, ub = b, neigh = 0;
    size_t first = k->n_ext, last = 0;
    for (size_t i = 0; i < k->n_ext; i++) {
        const extent *e = &k->ext[i];
        if (e->off + e->len < a || e->off > b)
            continue;
        if (first == k->n_ext)
            first = i;
        last = i;
        neigh += e->len;
        if (e->off < ua)
            ua = e->off;
        if (e->off + e->len > ub)
            ub = e->off + e->len;
    }
    uint64_t merge_limit = (uint64_t)len * 4 > MERGE_ABS_LIMIT ? (uint64_t)len * 4
                                                                 : MERGE_ABS_LIMIT;
    if (first < k->n_ext && ub - ua <= MAX_EXTENT_LEN && neigh <= merge_limit) {
        merged = malloc((size_t)(ub - ua));
        if (!merged) {
            err = cks_fail(diag, CKS_ERR_NOMEM, "cache: out of memory");
            goto out;
        }
        bool ok = true;
        /* copy neighbours in, then the new bytes over them (identical where they overlap) */
        size_t n_old = last - first + 1;
        extent *old = malloc(n_old * sizeof *old);
        if (!old) {
            err = cks_fail(diag, CKS_ERR_NOMEM, "cache: out of memory");
            goto out;
        }
        size_t n_sel = 0;
        for (size_t i = first; i <= last; i++) {
            const extent *e = &k->ext[i];
            if (e->off + e->len < a || e->off > b)
                continue;
            old[n_sel++] = *e;
        }
        for (size_t i = 0; i < n_sel && ok; i++) {
            char why[128] = "";
            ext_status st = ext_read(c, k, &old[i], old[i].off, merged + (old[i].off - ua),
                                     old[i].len, why, sizeof why);
            if (st == EXT_CORRUPT)
                ext_drop(c, k, &old[i], why, true);
            if (st == EXT_NOMEM) {
                free(old);
                err = cks_fail(diag, CKS_ERR_NOMEM, "cache: out of memory");
                goto out;
            }
            ok = st == EXT_OK;
        }
        if (ok) {
            memcpy(merged + (a - ua), src, len);
            uint64_t stored = 0;
            err = ext_write(c, k, ua, merged, ub - ua, &stored, diag);
            if (err) {
                free(old);
                goto out;
            }
            wrote = true;
            stored_total += stored;
            /* the merged extent is durable; the parts it replaces can go */
            for (size_t i = 0; i < n_sel; i++) {
                if (old[i].off == ua && old[i].len == ub - ua)
                    continue;
                char *p = extent_path(c, k->name, old[i].off, old[i].len);
                struct stat st;
                if (p && stat(p, &st) == 0) {
                    /* the new extent is counted in stored_total; the one it replaces goes */
                    uint64_t sz = (uint64_t)st.st_size;
                    c->size_estimate = c->size_estimate > sz ? c->size_estimate - sz : 0;
                    unlink(p);
                }
                free(p);
                key_remove_extent(k, old[i].off, old[i].len);
            }
            free(old);
            if (key_insert_extent(k, ua, ub - ua) != CKS_OK)
                k->gen_valid = false;
            goto done;
        }
        free(old);
        /* a neighbour was bad or vanished: store only what is missing */
        err = key_refresh(c, k, true, diag);
        if (err)
            goto out;
    }
    if (gaps_append(k, a, b, &gaps, &n_gaps, &cap_gaps) != CKS_OK) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "cache: out of memory");
        goto out;
    }
    for (size_t g = 0; g < n_gaps; g++) {
        for (uint64_t p = gaps[g].offset; p < gaps[g].offset + gaps[g].length;) {
            uint64_t rest = gaps[g].offset + gaps[g].length - p;
            uint64_t piece = rest < MAX_EXTENT_LEN ? rest : MAX_EXTENT_LEN;
            uint64_t stored = 0;
            err = ext_write(c, k, p, src + (p - a), piece, &stored, diag);
            if (err)
                goto out;
            wrote = true;
            if (key_insert_extent(k, p, piece) != CKS_OK)
                k->gen_valid = false;
            stored_total += stored;
            p += piece;
        }
    }
done:
    slots_forget(c, k->name);
    c->size_estimate += stored_total;
out:
    if (k && wrote) {
        /* new bytes were not part of a whole-file SHA-256 check: the marker no longer covers
         * everything stored under the key */
        char *kd = keydir_path(c, k->name);
        char *mk = kd ? path_join(kd, "verified") : NULL;
        if (mk)
            unlink(mk);
        free(mk);
        free(kd);
        /* tell other processes (and our next refresh) that extents were added; our own
         * index already has them, unless it fell behind (then gen_valid is false) */
        bool current = k->gen_valid;
        key_gen_bump(k);
        if (!current)
            k->gen_valid = false;
    }
    if (key_locked && k && k->lock_fd >= 0)
        flock(k->lock_fd, LOCK_UN);
    if (err == CKS_ERR_NO_SPACE)
        add_note(c, "cache: no space left in %s; %zu bytes at offset %" PRIu64 " of %s were not "
                    "stored (free space or lower --cache-max)", c->dir, len, offset, key);
    free(merged);
    free(gaps);
    if (!err && c && c->max_bytes && len)
        err = maybe_evict(c, diag);
    if (locked)
        pthread_mutex_unlock(&c->mu);
    return err;
}

/* ------------------------------------------------------------------------------------ */
/* metadata                                                                            */

/*
 * Metadata file meta/<ns>/<sha256(ns NUL key)>:
 *   header (40 bytes): magic "CKSMETA1", i64 created (unix s), u32 key_len, u32 method,
 *     u64 data_len, u64 stored_len
 *   key bytes, stored bytes, u32 CRC32C of everything before it
 */
static bool ns_valid(const char *ns)
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

static char *meta_path(const cks_cache *c, const char *ns, const char *key)
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
static bool meta_decode(cks_cache *c, const unsigned char *img, size_t n, int64_t *created,
                        const unsigned char **key, uint32_t *key_len, char **data,
                        size_t *data_len)
{
    *data = NULL;
    if (n < META_HEADER_SIZE + 4 || memcmp(img, META_MAGIC, 8) != 0)
        return false;
    *created = (int64_t)get_u64(img + 8);
    *key_len = get_u32(img + 16);
    uint32_t method = get_u32(img + 20);
    uint64_t dlen = get_u64(img + 24), slen = get_u64(img + 32);
    if (*key_len > MAX_KEY_LEN || dlen > MAX_META_LEN || slen > MAX_META_LEN ||
        META_HEADER_SIZE + (uint64_t)*key_len + slen + 4 != n)
        return false;
    if (cks_crc32c(0, img, n - 4) != get_u32(img + n - 4))
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
static int slurp(const char *path, uint64_t max, unsigned char **img, size_t *n)
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
    rc = pread_all(fd, *img, (size_t)st.st_size, 0);
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

    if (!c || !data || !len || !hit || !ns_valid(ns) || !key || strlen(key) > MAX_KEY_LEN) {
        err = cks_fail(diag, CKS_ERR_INVALID_ARG, "cache: invalid metadata namespace or key");
        goto out;
    }
    pthread_mutex_lock(&c->mu);
    locked = true;
    path = meta_path(c, ns, key);
    if (!path) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "cache: out of memory");
        goto out;
    }
    int rc = slurp(path, META_HEADER_SIZE + MAX_KEY_LEN + MAX_META_LEN + 4, &img, &n);
    if (rc == ENOENT)
        goto out;
    if (rc == ENOMEM) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "cache: out of memory");
        goto out;
    }
    int64_t created = 0;
    const unsigned char *k = NULL;
    uint32_t kl = 0;
    if (rc != 0 || !meta_decode(c, img, n, &created, &k, &kl, &d, &dl)) {
        if (rc <= 0) {
            unlink(path);
            add_note(c, "cache: dropped corrupt metadata %s/%s", ns, key);
        }
        goto out;
    }
    if (kl != strlen(key) || memcmp(k, key, kl) != 0)
        goto out; /* a SHA-256 collision would land here; treat as a miss */
    if (ttl_seconds >= 0 && now_seconds() - created > ttl_seconds)
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

    if (!c || !ns_valid(ns) || !key || strlen(key) > MAX_KEY_LEN || (len && !data) ||
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
    path = meta_path(c, ns, key);
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
    put_u64(img + 8, (uint64_t)now_seconds());
    put_u32(img + 16, (uint32_t)kl);
    put_u32(img + 20, method);
    put_u64(img + 24, len);
    put_u64(img + 32, slen);
    memcpy(img + META_HEADER_SIZE, key, kl);
    size_t total = META_HEADER_SIZE + kl + slen;
    put_u32(img + total, cks_crc32c(0, img, total));
    total += 4;
    if (mkdirs_here(c, dir) != 0) {
        err = io_fail(diag, errno, "creating directory", dir);
        goto out;
    }
    err = tmp_create(c, &tmp, &fd, diag);
    if (err)
        goto out;
    int e = pwrite_all(fd, img, total, 0);
    if (e) {
        err = io_fail(diag, e, "writing", tmp);
        tmp_abort(tmp, fd);
        goto out;
    }
    err = tmp_commit(tmp, fd, path, dir, true, diag);
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
    if (!c || !ns_valid(ns) || !key || strlen(key) > MAX_KEY_LEN) {
        err = cks_fail(diag, CKS_ERR_INVALID_ARG, "cache: invalid metadata namespace or key");
        goto out;
    }
    path = meta_path(c, ns, key);
    if (!path) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "cache: out of memory");
        goto out;
    }
    if (unlink(path) != 0 && errno != ENOENT)
        err = io_fail(diag, errno, "removing", path);
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
    k = key_get(c, key, diag, &err);
    if (!k)
        goto out;
    /* writers of the key wait while it goes (a read-only cache cannot lock: try anyway) */
    key_locked = lock_key(c, k, NULL) == CKS_OK;
    err = key_refresh(c, k, true, diag);
    if (err)
        goto out;
    dir = keydir_path(c, k->name);
    marker = dir ? path_join(dir, "verified") : NULL;
    if (marker)
        unlink(marker);
    for (size_t i = 0; i < k->n_ext; i++) {
        char *p = extent_path(c, k->name, k->ext[i].off, k->ext[i].len);
        if (p && (unlink(p) == 0 || errno == ENOENT))
            dropped += k->ext[i].len;
        else
            left += k->ext[i].len;
        free(p);
    }
    k->n_ext = 0;
    k->max_len = 0;
    slots_forget(c, k->name);
    if (dropped)
        add_note(c, "cache: dropped the %" PRIu64 " cached bytes of %s (%s)", dropped, key,
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
    keyent *k = key_get(c, key, diag, &err);
    if (!k)
        goto out;
    err = key_refresh(c, k, false, diag);
    if (err)
        goto out;
    /* only what is stored now was hashed: require all of it */
    if (size > 0 && !key_covers(k, 0, size))
        goto out;
    dir = keydir_path(c, k->name);
    marker = dir ? path_join(dir, "verified") : NULL;
    if (!marker || asprintf(&text, "%" PRIu64 "\n", size) < 0) {
        text = NULL;
        err = cks_fail(diag, CKS_ERR_NOMEM, "cache: out of memory");
        goto out;
    }
    err = write_file_atomic(c, marker, dir, text, strlen(text), diag);
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
    return remember_write(c, cache_write(c, key, offset, data, len, diag ? diag : &local),
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
    keyent *k = key_get(c, key, NULL, &err);
    if (!k || key_refresh(c, k, false, NULL) != CKS_OK || (size > 0 && !key_covers(k, 0, size)))
        goto out;
    dir = keydir_path(c, k->name);
    marker = dir ? path_join(dir, "verified") : NULL;
    if (!marker || asprintf(&want, "%" PRIu64 "\n", size) < 0) {
        want = NULL;
        goto out;
    }
    v = slurp(marker, 64, &img, &n) == 0 && n == strlen(want) && memcmp(img, want, n) == 0;
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
        err = read_locked(c, k, pos, buf, n, &h, diag);
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
    keyent *k = key_get(c, key, diag, &err);
    if (!k)
        goto out;
    err = key_refresh(c, k, false, diag);
    if (err)
        goto out;
    if (size > 0 && !key_covers(k, 0, size))
        goto out;
    dir = keydir_path(c, k->name);
    marker = dir ? path_join(dir, "verified") : NULL;
    if (!marker || asprintf(&want, "%" PRIu64 "\n", size) < 0) {
        want = NULL;
        err = cks_fail(diag, CKS_ERR_NOMEM, "cache: out of memory");
        goto out;
    }
    /* a previous run already hashed these bytes; chunk checksums guard them since */
    if (slurp(marker, 64, &img, &img_n) == 0 && img_n == strlen(want) &&
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
            char *p = extent_path(c, k->name, k->ext[i].off, k->ext[i].len);
            if (p)
                unlink(p);
            free(p);
        }
        k->n_ext = 0;
        slots_forget(c, k->name);
        err = cks_fail(diag, CKS_ERR_INTEGRITY,
                       "cache: the %" PRIu64 " cached bytes of %s hash to sha256:%s; dropped them",
                       size, key, hex);
        goto out;
    }
    (void)write_file_atomic(c, marker, dir, want, strlen(want), NULL);
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
    keyent *k = key_get(c, key, diag, &err);
    if (!k || (err = key_refresh(c, k, false, diag)) != CKS_OK || !key_covers(k, 0, size))
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
    keyent *k = key_get(c, key, diag, &err);
    if (!k)
        goto out;
    err = key_refresh(c, k, false, diag);
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
        if (l && (a > UINT64_MAX - l || !key_covers(k, a, a + l))) {
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

/* ------------------------------------------------------------------------------------ */
/* walking the cache: list, stat, verify, prune, clear                                  */

typedef struct walk_ext {
    char *path;
    char name[67];
    uint64_t off, len, stored;
    int64_t atime;
} walk_ext;

typedef struct walk {
    walk_ext *ext;
    size_t n, cap;
    uint64_t meta_bytes, n_meta;
} walk;

static void walk_release(walk *w)
{
    for (size_t i = 0; i < w->n; i++)
        free(w->ext[i].path);
    free(w->ext);
    memset(w, 0, sizeof *w);
}

/* Every extent file (with size and access time) and the metadata totals. */
static cks_err walk_cache(cks_cache *c, walk *w, cks_diag *diag)
{
    cks_err err = CKS_OK;
    char *files = path_join(c->dir, "files"), *meta = path_join(c->dir, "meta");
    DIR *d1 = NULL;
    memset(w, 0, sizeof *w);
    if (!files || !meta) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "cache: out of memory");
        goto out;
    }
    d1 = opendir_here(files);
    struct dirent *a;
    while (d1 && (a = readdir(d1)) != NULL) {
        if (a->d_name[0] == '.')
            continue;
        char *p1 = path_join(files, a->d_name);
        DIR *d2 = p1 ? opendir_here(p1) : NULL;
        struct dirent *b;
        while (d2 && (b = readdir(d2)) != NULL) {
            if (b->d_name[0] == '.' || strlen(b->d_name) != 66)
                continue;
            char *p2 = path_join(p1, b->d_name);
            DIR *d3 = p2 ? opendir_here(p2) : NULL;
            struct dirent *x;
            while (d3 && (x = readdir(d3)) != NULL) {
                uint64_t off, len;
                struct stat st;
                if (!parse_extent_name(x->d_name, &off, &len))
                    continue;
                char *p3 = path_join(p2, x->d_name);
                if (!p3 || stat(p3, &st) != 0) {
                    free(p3);
                    continue;
                }
                if (w->n == w->cap) {
                    size_t nc = w->cap ? 2 * w->cap : 64;
                    walk_ext *ne = realloc(w->ext, nc * sizeof *ne);
                    if (!ne) {
                        free(p3);
                        err = cks_fail(diag, CKS_ERR_NOMEM, "cache: out of memory");
                        break;
                    }
                    w->ext = ne;
                    w->cap = nc;
                }
                walk_ext *we = &w->ext[w->n++];
                we->path = p3;
                memcpy(we->name, b->d_name, 67);
                we->off = off;
                we->len = len;
                we->stored = (uint64_t)st.st_size;
                we->atime = (int64_t)st.st_atim.tv_sec;
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
    d1 = opendir_here(meta);
    while (d1 && (a = readdir(d1)) != NULL) {
        if (a->d_name[0] == '.')
            continue;
        char *p1 = path_join(meta, a->d_name);
        DIR *d2 = p1 ? opendir_here(p1) : NULL;
        struct dirent *b;
        while (d2 && (b = readdir(d2)) != NULL) {
            struct stat st;
            if (b->d_name[0] == '.' || strlen(b->d_name) != 64)
                continue;
            char *p2 = path_join(p1, b->d_name);
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
        walk_release(w);
    return err;
}

static int cmp_walk_atime(const void *x, const void *y)
{
    const walk_ext *a = x, *b = y;
    if (a->atime != b->atime)
        return a->atime < b->atime ? -1 : 1;
    return strcmp(a->path, b->path);
}

static bool name_pinned_here(cks_cache *c, const char *name)
{
    for (size_t i = 0; i < c->n_keys; i++)
        if (c->keys[i].pinned && strcmp(c->keys[i].name, name) == 0)
            return true;
    return false;
}

/* Try to take a key's pin file exclusively: succeeds only when no live process pins it.
 * Returns the fd holding the lock, or -1. */
static int pin_exclusive(cks_cache *c, const char *name)
{
    char *dir = keydir_path(c, name);
    char *pf = dir ? path_join(dir, "pin") : NULL;
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
    walk w;
    uint64_t total, n_ev = 0, b_ev = 0;
    char *lockp = path_join(c->dir, "evict.lock");
    int lfd = lockp ? open(lockp, O_RDONLY | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0644) : -1;
    if (lfd >= 0)
        (void)flock(lfd, LOCK_EX);
    err = walk_cache(c, &w, diag);
    if (err)
        goto out;
    total = w.meta_bytes;
    for (size_t i = 0; i < w.n; i++)
        total += w.ext[i].stored;
    if (w.n > 1)
        qsort(w.ext, w.n, sizeof *w.ext, cmp_walk_atime);
    for (size_t i = 0; i < w.n && total > target; i++) {
        walk_ext *e = &w.ext[i];
        if (name_pinned_here(c, e->name))
            continue;
        int pfd = pin_exclusive(c, e->name);
        if (pfd < 0)
            continue; /* another process needs it */
        if (unlink(e->path) == 0) {
            total -= e->stored;
            n_ev++;
            b_ev += e->stored;
            add_note(c, "cache: evicted [%" PRIu64 ", %" PRIu64 ") of %s (%" PRIu64 " bytes)",
                     e->off, e->off + e->len, e->name, e->stored);
        }
        close(pfd);
        slots_forget(c, e->name);
    }
    c->size_estimate = total;
    c->size_known = true;
    if (remaining_out)
        *remaining_out = total;
out:
    walk_release(&w);
    if (lfd >= 0)
        close(lfd);
    free(lockp);
    if (n_out)
        *n_out = n_ev;
    if (bytes_out)
        *bytes_out = b_ev;
    return err;
}

/* Keep the cap without walking the whole cache on every write: walk once, then track our
 * own writes, and walk again only when the estimate crosses the cap (other processes'
 * writes are caught at that point). */
static cks_err maybe_evict(cks_cache *c, cks_diag *diag)
{
    cks_err err = CKS_OK;
    if (!c->size_known) {
        walk w;
        err = walk_cache(c, &w, diag);
        if (err)
            goto out;
        c->size_estimate = w.meta_bytes;
        for (size_t i = 0; i < w.n; i++)
            c->size_estimate += w.ext[i].stored;
        c->size_known = true;
        walk_release(&w);
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
    clean_stale_temps(c, NULL, true);
    err = evict_to(c, max_bytes, evicted_extents, evicted_bytes, NULL, diag);
    pthread_mutex_unlock(&c->mu);
out:
    return err;
}

static void remove_tree_files(const char *dir, uint64_t *bytes)
{
    DIR *d = opendir_here(dir);
    struct dirent *de;
    while (d && (de = readdir(d)) != NULL) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
            continue;
        char *p = path_join(dir, de->d_name);
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
    files = path_join(c->dir, "files");
    meta = path_join(c->dir, "meta");
    DIR *d1 = files ? opendir_here(files) : NULL;
    struct dirent *a;
    while (d1 && (a = readdir(d1)) != NULL) {
        if (a->d_name[0] == '.')
            continue;
        char *p1 = path_join(files, a->d_name);
        DIR *d2 = p1 ? opendir_here(p1) : NULL;
        struct dirent *b;
        while (d2 && (b = readdir(d2)) != NULL) {
            if (b->d_name[0] == '.' || strlen(b->d_name) != 66)
                continue;
            if (name_pinned_here(c, b->d_name))
                continue;
            int pfd = pin_exclusive(c, b->d_name);
            if (pfd < 0)
                continue; /* in use by a live process */
            char *p2 = path_join(p1, b->d_name);
            char *lf = p2 ? path_join(p2, "lock") : NULL;
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
    clean_stale_temps(c, NULL, true);
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
    key_dirname(key, name);
    pthread_mutex_lock(&c->mu);
    dir = keydir_path(c, name);
    if (!dir) {
        pthread_mutex_unlock(&c->mu);
        err = cks_fail(diag, CKS_ERR_NOMEM, "cache: out of memory");
        goto out;
    }
    if (access(dir, F_OK) != 0) {
        pthread_mutex_unlock(&c->mu);
        goto out; /* nothing cached under it */
    }
    busy = name_pinned_here(c, name) || (pfd = pin_exclusive(c, name)) < 0;
    lf = busy ? NULL : path_join(dir, "lock");
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
        slots_forget(c, name);
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
    if (!c || !ns_valid(ns) || !key) {
        err = cks_fail(diag, CKS_ERR_INVALID_ARG, "cache: invalid metadata namespace or key");
        goto out;
    }
    path = meta_path(c, ns, key);
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
    const walk_ext *a = x, *b = y;
    int r = strcmp(a->name, b->name);
    if (r)
        return r;
    if (a->off != b->off)
        return a->off < b->off ? -1 : 1;
    return a->len < b->len ? -1 : (a->len > b->len);
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
    walk w = {0};
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
    err = walk_cache(c, &w, diag);
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
            const walk_ext *x = &w.ext[j];
            uint64_t a = x->off > covered_to ? x->off : covered_to, b = x->off + x->len;
            if (b > a)
                e.logical_bytes += b - a; /* union: overlaps counted once */
            if (b > covered_to)
                covered_to = b;
            e.stored_bytes += x->stored;
            e.n_extents++;
            if (x->atime > e.last_used)
                e.last_used = x->atime;
        }
        char *dir = keydir_path(c, w.ext[i].name);
        char *kf = dir ? path_join(dir, "key") : NULL;
        char *vf = dir ? path_join(dir, "verified") : NULL;
        unsigned char *img = NULL;
        size_t kn = 0;
        struct stat st;
        if (kf && slurp(kf, MAX_KEY_LEN, &img, &kn) == 0) {
            img[kn] = '\0';
            e.key = (char *)img;
        } else {
            free(img);
            e.key = xstrdup(w.ext[i].name);
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
    metad = path_join(c->dir, "meta");
    DIR *d1 = metad ? opendir_here(metad) : NULL;
    struct dirent *a;
    while (d1 && (a = readdir(d1)) != NULL && !err) {
        if (a->d_name[0] == '.')
            continue;
        char *p1 = path_join(metad, a->d_name);
        DIR *d2 = p1 ? opendir_here(p1) : NULL;
        struct dirent *b;
        while (d2 && (b = readdir(d2)) != NULL) {
            if (b->d_name[0] == '.' || strlen(b->d_name) != 64)
                continue;
            char *p2 = path_join(p1, b->d_name);
            unsigned char hdr[META_HEADER_SIZE + MAX_KEY_LEN];
            int fd = p2 ? open(p2, O_RDONLY | O_NOFOLLOW | O_CLOEXEC) : -1;
            struct stat st;
            if (fd >= 0 && fstat(fd, &st) == 0) {
                ssize_t r = pread(fd, hdr, sizeof hdr, 0);
                if (r >= (ssize_t)META_HEADER_SIZE && memcmp(hdr, META_MAGIC, 8) == 0) {
                    uint32_t kl = get_u32(hdr + 16);
                    if (kl <= MAX_KEY_LEN && (size_t)r >= META_HEADER_SIZE + kl) {
                        cks_cache_entry e = {0};
                        e.kind = CKS_CACHE_ENTRY_META;
                        e.ns = xstrdup(a->d_name);
                        e.key = strndup((const char *)hdr + META_HEADER_SIZE, kl);
                        e.logical_bytes = get_u64(hdr + 24);
                        e.stored_bytes = (uint64_t)st.st_size;
                        e.last_used = (int64_t)get_u64(hdr + 8);
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
    walk_release(&w);
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
    clean_stale_temps(c, &st->n_temp, false);
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
    walk w = {0};
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
    err = walk_cache(c, &w, diag);
    if (err)
        goto out;
    buf = malloc(MAX_EXTENT_LEN);
    if (!buf) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "cache: out of memory");
        goto out;
    }
    for (size_t i = 0; i < w.n; i++) {
        walk_ext *x = &w.ext[i];
        char *dir = keydir_path(c, x->name);
        char *kf = dir ? path_join(dir, "key") : NULL;
        unsigned char *img = NULL;
        size_t kn = 0;
        char why[128] = "";
        ext_status st = EXT_CORRUPT;
        if (kf && slurp(kf, MAX_KEY_LEN, &img, &kn) == 0) {
            img[kn] = '\0';
            char name[67];
            if (cks_cache_key_valid((char *)img)) {
                key_dirname((char *)img, name);
                if (strcmp(name, x->name) == 0) {
                    keyent tmpk = {0};
                    tmpk.key = (char *)img;
                    memcpy(tmpk.name, x->name, sizeof tmpk.name);
                    extent e = {x->off, x->len};
                    /* bypass the slot cache: verify means reading the disk */
                    slots_forget(c, x->name);
                    st = ext_read(c, &tmpk, &e, e.off, buf, e.len, why, sizeof why);
                    slots_forget(c, x->name);
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
            rep->checked_bytes += x->len;
            continue;
        }
        rep->bad_extents++;
        report_bad(rep, "extent %s: %s", x->path, why[0] ? why : "unreadable");
        if (repair)
            unlink(x->path);
    }
    metad = path_join(c->dir, "meta");
    DIR *d1 = metad ? opendir_here(metad) : NULL;
    struct dirent *a;
    while (d1 && (a = readdir(d1)) != NULL) {
        if (a->d_name[0] == '.')
            continue;
        char *p1 = path_join(metad, a->d_name);
        DIR *d2 = p1 ? opendir_here(p1) : NULL;
        struct dirent *b;
        while (d2 && (b = readdir(d2)) != NULL) {
            if (b->d_name[0] == '.' || strlen(b->d_name) != 64)
                continue;
            char *p2 = path_join(p1, b->d_name);
            unsigned char *img = NULL;
            size_t n = 0;
            int rc = p2 ? slurp(p2, META_HEADER_SIZE + MAX_KEY_LEN + MAX_META_LEN + 4, &img, &n)
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
            if (rc != 0 || !meta_decode(c, img, n, &created, &k, &kl, &d, &dl)) {
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
    clean_stale_temps(c, &rep->stale_temp, repair);
out:
    if (locked)
        pthread_mutex_unlock(&c->mu);
    walk_release(&w);
    free(buf);
    free(metad);
    if (err && rep)
        cks_cache_verify_report_release(rep);
    return err;
}
