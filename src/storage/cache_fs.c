/*
 * src/storage/cache_fs.c — the disk cache: filesystem primitives: bytes in little-endian, paths, directories, fsync, temporary files committed by rename.
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
/* small helpers                                                                        */

char *cache_xstrdup(const char *s)
{
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d)
        memcpy(d, s, n);
    return d;
}

char *cache_path_join(const char *a, const char *b)
{
    char *p = NULL;
    if (asprintf(&p, "%s/%s", a, b) < 0)
        return NULL;
    return p;
}

int64_t cache_now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec;
}

void cache_add_note(cks_cache *c, const char *fmt, ...)
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

int cache_mkdir_p(const char *path)
{
    char *p = cache_xstrdup(path);
    int rc = 0;
    if (!p) {
        errno = ENOMEM;
        return -1;
    }
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
bool cache_real_dir(const char *path)
{
    struct stat st;
    return lstat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

/* mkdir -p for a path under the cache root: each component below the root must end up a
 * real directory (errno ELOOP when one is a symbolic link, ENOTDIR when it is a file). */
int cache_mkdirs_here(const cks_cache *c, const char *path)
{
    size_t root = strlen(c->dir);
    char *p = cache_xstrdup(path);
    int rc = 0;
    if (!p) {
        errno = ENOMEM;
        return -1;
    }
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
        } else if (!cache_real_dir(p)) {
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

DIR *cache_opendir_here(const char *path)
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

cks_err cache_io_fail(cks_diag *diag, int e, const char *what, const char *path)
{
    if (e == ENOMEM)
        return cks_fail(diag, CKS_ERR_NOMEM, "cache: out of memory while %s '%s'", what, path);
    if (errno_is_nospace(e))
        return cks_fail(diag, CKS_ERR_NO_SPACE,
                        "cache: no space left while %s '%s'; free space or lower --cache-max",
                        what, path);
    return cks_fail(diag, CKS_ERR_IO, "cache: %s '%s': %s", what, path, strerror(e));
}

/* Write all of buf at off; returns 0 or an errno. */
int cache_pwrite_all(int fd, const void *buf, size_t len, uint64_t off)
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
int cache_pread_all(int fd, void *buf, size_t len, uint64_t off)
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
cks_err cache_tmp_create(cks_cache *c, char **path_out, int *fd_out, cks_diag *diag)
{
    cks_err err = CKS_OK;
    char *path = NULL;
    int fd = -1;
    unsigned rnd = (unsigned)(cache_now_seconds() ^ (int64_t)(uintptr_t)&path);
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
        err = cache_io_fail(diag, errno, "creating", path);
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
cks_err cache_tmp_commit(char *tmp_path, int fd, const char *final_path, const char *final_dir, bool durable,
                          cks_diag *diag)
{
    cks_err err = CKS_OK;
    if (durable && fsync(fd) != 0) {
        err = cache_io_fail(diag, errno, "syncing", tmp_path);
        close(fd);
        unlink(tmp_path);
        goto out;
    }
    close(fd);
    if (rename(tmp_path, final_path) != 0) {
        err = cache_io_fail(diag, errno, "renaming into", final_path);
        unlink(tmp_path);
        goto out;
    }
    if (durable)
        fsync_dir(final_dir);
out:
    return err;
}

void cache_tmp_abort(char *tmp_path, int fd)
{
    if (fd >= 0)
        close(fd);
    if (tmp_path)
        unlink(tmp_path);
}

/* Write a small file atomically (used for the layout file, key names, markers). */
cks_err cache_write_file_atomic(cks_cache *c, const char *final_path, const char *final_dir,
                                 const void *data, size_t len, cks_diag *diag)
{
    return cache_write_file_renamed(c, final_path, final_dir, data, len, true, diag);
}

/* The same, durable (fsync of the file and its folder) or not: readers of a file written
 * without fsync must check what they read, since a crash can leave it empty or short. */
cks_err cache_write_file_renamed(cks_cache *c, const char *final_path, const char *final_dir,
                                 const void *data, size_t len, bool durable, cks_diag *diag)
{
    char *tmp = NULL;
    int fd = -1;
    cks_err err = cache_tmp_create(c, &tmp, &fd, diag);
    if (err)
        goto out;
    int e = cache_pwrite_all(fd, data, len, 0);
    if (e) {
        err = cache_io_fail(diag, e, "writing", tmp);
        cache_tmp_abort(tmp, fd);
        goto out;
    }
    err = cache_tmp_commit(tmp, fd, final_path, final_dir, durable, diag);
out:
    free(tmp);
    return err;
}
