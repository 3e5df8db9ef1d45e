/*
 * src/storage/cache_extents.c — the disk cache: extent files with per-chunk checksums; the public read, write and missing.
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
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

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
 *
 * Pack file (p-<pack offset>-<tag>): several extent images in one file.
 *   header (64 bytes): magic "CKSPACK1", u32 n_members, u32 reserved, u64 pack offset (as in
 *     the name), u64 tag (as in the name), 28 bytes reserved, u32 CRC32C(header[0..60) + directory)
 *   directory: n_members x { u64 offset, u64 length, u64 position of the member's image }
 *   images: each laid out as an extent file, its stored offsets counted from its own start
 */
typedef struct ext_table {
    uint64_t off, len;
    uint64_t base; /* where the image starts in its file (a pack member's position) */
    uint32_t n_chunks;
    unsigned char raw[EXT_HEADER_SIZE + MAX_CHUNKS * EXT_ENTRY_SIZE];
    struct stat st;
} ext_table;

static void key_fingerprint(const char *key, unsigned char out[16])
{
    unsigned char md[32];
    unsigned int n = 0;
    if (!EVP_Digest(key, strlen(key), md, &n, EVP_sha256(), NULL))
        memset(md, 0, sizeof md);
    memcpy(out, md, 16);
}

static ext_status ext_load_table(int fd, const char *key, const extent *want, ext_table *t,
                                 char *why, size_t why_len)
{
    unsigned char fp[16];
    if (fstat(fd, &t->st) != 0)
        return EXT_IOERR;
    t->base = want->base;
    if ((uint64_t)t->st.st_size < EXT_HEADER_SIZE || (uint64_t)t->st.st_size - EXT_HEADER_SIZE < t->base) {
        snprintf(why, why_len, "shorter than its header");
        return EXT_CORRUPT;
    }
    int e = cache_pread_all(fd, t->raw, EXT_HEADER_SIZE, t->base);
    if (e > 0)
        return EXT_IOERR;
    if (e < 0 || memcmp(t->raw, EXT_MAGIC, 8) != 0) {
        snprintf(why, why_len, "bad magic");
        return EXT_CORRUPT;
    }
    t->off = cks_get_le64(t->raw + 8);
    t->len = cks_get_le64(t->raw + 16);
    uint32_t cs = cks_get_le32(t->raw + 24);
    t->n_chunks = cks_get_le32(t->raw + 28);
    if (t->off != want->off || t->len != want->len || cs != CHUNK_SIZE ||
        t->n_chunks != (want->len + CHUNK_SIZE - 1) / CHUNK_SIZE || t->n_chunks > MAX_CHUNKS) {
        snprintf(why, why_len, "header does not match its name");
        return EXT_CORRUPT;
    }
    size_t table_len = (size_t)t->n_chunks * EXT_ENTRY_SIZE;
    e = cache_pread_all(fd, t->raw + EXT_HEADER_SIZE, table_len, t->base + EXT_HEADER_SIZE);
    if (e > 0)
        return EXT_IOERR;
    if (e < 0) {
        snprintf(why, why_len, "truncated chunk table");
        return EXT_CORRUPT;
    }
    uint32_t want_crc = cks_get_le32(t->raw + 60);
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
    uint64_t soff = cks_get_le64(ent);
    uint32_t slen = cks_get_le32(ent + 8);
    uint32_t method = cks_get_le32(ent + 12);
    uint32_t want[4], got[4];
    uint32_t llen = chunk_logical_len(t, i);
    int e;

    for (int k = 0; k < 4; k++)
        want[k] = cks_get_le32(ent + 16 + 4 * k);
    uint64_t room = (uint64_t)t->st.st_size - t->base; /* ext_load_table: base <= size */
    if (soff > room || slen > room - soff || slen > c->scratch_cap) {
        snprintf(why, why_len, "chunk %u lies outside the file", i);
        return EXT_CORRUPT;
    }
    if (method == METHOD_RAW) {
        if (slen != llen) {
            snprintf(why, why_len, "chunk %u has the wrong length", i);
            return EXT_CORRUPT;
        }
        e = cache_pread_all(fd, dst, llen, t->base + soff);
    } else if (method == METHOD_ZSTD) {
        e = cache_pread_all(fd, c->scratch, slen, t->base + soff);
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

/*
 * Copy [pos, pos+n) (inside extent e) into dst, verifying every chunk touched. Chunks the
 * request covers whole are decoded straight into dst (no copy); partial ones go through
 * the slot cache.
 */
ext_status cache_ext_read(cks_cache *c, keyent *k, const extent *e, uint64_t pos,
                           unsigned char *dst, uint64_t n, char *why, size_t why_len)
{
    ext_status st = EXT_OK;
    ext_table *t = NULL;
    char *path = cache_extent_path(c, k->name, e);
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
    st = ext_load_table(fd, k->key, e, t, why, why_len);
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
    if (t->st.st_atim.tv_sec + ATIME_SLACK_SECONDS < cache_now_seconds()) {
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
    char *path = cache_extent_path(c, k->name, e);
    char why[128];
    int fd = -1;
    bool locked_here = false, wrote = false, in_run = false;
    uint64_t run_start = 0;
    if (!t || !buf || !path)
        goto out;
    if (!have_lock) {
        if (cache_lock_key(c, k, NULL) != CKS_OK)
            goto out;
        locked_here = true;
    }
    fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0 || ext_load_table(fd, k->key, e, t, why, sizeof why) != EXT_OK)
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
            extent kept = {.off = e->off + run_start, .len = run_end - run_start};
            if (cache_key_insert_extent(k, &kept) != CKS_OK)
                k->gen_valid = false;
        }
    }
out:
    if (wrote) {
        cache_key_gen_bump(k);
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
 * verify); note it for --verbose. A pack member takes its whole pack file with it, so every
 * member of that pack is salvaged first. */
static void ext_drop(cks_cache *c, keyent *k, const extent *e, const char *why, bool have_lock)
{
    extent copy = *e, *members = NULL;
    size_t n_members = 0;
    char *path = cache_extent_path(c, k->name, &copy);
    uint64_t kept = 0;
    if (copy.packed) {
        members = malloc(k->n_ext * sizeof *members);
        for (size_t i = 0; members && i < k->n_ext; i++)
            if (cache_same_file(&k->ext[i], &copy))
                members[n_members++] = k->ext[i];
    }
    if (!copy.packed || !members) {
        kept = ext_salvage(c, k, &copy, have_lock);
    } else {
        for (size_t i = 0; i < n_members; i++)
            kept += ext_salvage(c, k, &members[i], have_lock);
    }
    if (path)
        unlink(path);
    cache_add_note(c,
             "cache: dropped corrupt extent [%" PRIu64 ", %" PRIu64 ") of %s (%s)%s; kept %" PRIu64
             " bytes that verified, refetching the rest",
             copy.off, copy.off + copy.len, k->key, why,
             copy.packed ? " with the pack file holding it" : "", kept);
    cache_slots_forget(c, k->name);
    for (size_t i = k->n_ext; i-- > 0;) {
        if (cache_same_file(&k->ext[i], &copy)) {
            extent gone = k->ext[i];
            cache_key_remove_extent(k, &gone);
        }
    }
    free(members);
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

/*
 * A file being written: pieces are laid out in file order and written in gathered calls.
 * A piece is memory owned here (headers, tables, compressed chunks) or the caller's bytes
 * (raw chunks, most of a fetch), which are not copied. Small extents gather: writing each
 * with a call for its chunks and one for its header cost two system calls per extent, and a
 * pack of hundreds of members now takes a call per IMAGE_WRITE_MAX. A larger extent's chunks
 * are written one by one as they are encoded, while the checksum has them in the CPU's cache,
 * and its header after them: laying out a whole 8 MiB window before writing it made the
 * kernel's copy into the page cache read every byte from memory again (`hash` of a remote 2
 * GiB file 6.5 s against 3.5 s; bench/cache's 1 GB of writes 1.09 s against 0.46 s).
 */
typedef struct file_image {
    int fd;
    const char *path;      /* for messages */
    struct iovec *iov;     /* pending pieces, contiguous in the file from `written` */
    size_t n_iov, cap_iov;
    unsigned char **owned; /* freed once the pending pieces are written */
    size_t n_owned, cap_owned;
    uint64_t written;      /* the file offset of the first pending byte */
    uint64_t size;         /* bytes laid out so far */
} file_image;

/* About this much per system call: a call gathers small pieces up to one chunk's worth and
 * writes a chunk alone (1 MiB per call took 1.30x the time of 256 KiB on this VM, 64 KiB
 * 1.14x). */
#define IMAGE_WRITE_MAX CHUNK_SIZE

/* Append n bytes at p; with `owned`, p is freed with the image. On false nothing was added
 * (and an owned p is still the caller's to free). */
static bool image_add(file_image *im, const void *p, size_t n, bool owned)
{
    if (owned && im->n_owned == im->cap_owned) {
        size_t nc = im->cap_owned ? 2 * im->cap_owned : 16;
        unsigned char **no = realloc(im->owned, nc * sizeof *no);
        if (!no)
            return false;
        im->owned = no;
        im->cap_owned = nc;
    }
    if (n > 0 && im->n_iov == im->cap_iov) {
        size_t nc = im->cap_iov ? 2 * im->cap_iov : 16;
        struct iovec *ni = realloc(im->iov, nc * sizeof *ni);
        if (!ni)
            return false;
        im->iov = ni;
        im->cap_iov = nc;
    }
    if (owned)
        im->owned[im->n_owned++] = (unsigned char *)p;
    if (n > 0) {
        im->iov[im->n_iov].iov_base = (void *)p;
        im->iov[im->n_iov].iov_len = n;
        im->n_iov++;
        im->size += n;
    }
    return true;
}

static void image_drop_pending(file_image *im)
{
    for (size_t i = 0; i < im->n_owned; i++)
        free(im->owned[i]);
    im->n_owned = 0;
    im->n_iov = 0;
}

static void image_free(file_image *im)
{
    image_drop_pending(im);
    free(im->owned);
    free(im->iov);
    memset(im, 0, sizeof *im);
    im->fd = -1;
}

/* Write the pending pieces: 0, or an errno (EIO for a write that makes no progress). */
static int image_flush(file_image *im)
{
    uint64_t pos = im->written;
    size_t i = 0, skip = 0; /* skip: bytes of iov[i] already written */
    int e = 0;
    while (i < im->n_iov) {
        struct iovec v[64];
        size_t m = 0, bytes = 0;
        for (size_t j = i; j < im->n_iov && m < 64 && bytes < IMAGE_WRITE_MAX; j++, m++) {
            size_t s = j == i ? skip : 0;
            v[m].iov_base = (unsigned char *)im->iov[j].iov_base + s;
            v[m].iov_len = im->iov[j].iov_len - s;
            bytes += v[m].iov_len;
        }
        ssize_t w = pwritev(im->fd, v, (int)m, (off_t)pos);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            e = w < 0 ? errno : EIO;
            break;
        }
        pos += (uint64_t)w;
        for (size_t left = (size_t)w; left > 0;) {
            size_t rest = im->iov[i].iov_len - skip;
            if (left < rest) {
                skip += left;
                left = 0;
            } else {
                left -= rest;
                i++;
                skip = 0;
            }
        }
    }
    if (!e) {
        image_drop_pending(im);
        im->written = im->size;
    }
    return e;
}

/* Leave n bytes to be written later (a header finished after what follows it). */
static int image_reserve(file_image *im, uint64_t n)
{
    int e = image_flush(im);
    if (!e) {
        im->size += n;
        im->written = im->size;
    }
    return e;
}

/* Lay out the extent image of [off, off+len) of `key` (its bytes in data) at the end of im;
 * an extent of more than one chunk is written as it goes (see file_image). */
static cks_err ext_encode(cks_cache *c, const char *key, uint64_t off, const unsigned char *data,
                          uint64_t len, file_image *im, cks_diag *diag)
{
    cks_err err = CKS_OK;
    uint32_t n_chunks = (uint32_t)((len + CHUNK_SIZE - 1) / CHUNK_SIZE);
    size_t hdr_len = EXT_HEADER_SIZE + (size_t)n_chunks * EXT_ENTRY_SIZE;
    uint64_t pos = hdr_len, at = im->size; /* pos: from the image's start, at: in the file */
    bool streamed = n_chunks > 1, hdr_owned_by_image = false;
    unsigned char *hdr = calloc(1, hdr_len);
    int e = 0;
    if (!hdr) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "cache: out of memory");
        goto out;
    }
    if (streamed) {
        e = image_reserve(im, hdr_len);
    } else {
        if (!image_add(im, hdr, hdr_len, true)) {
            err = cks_fail(diag, CKS_ERR_NOMEM, "cache: out of memory");
            goto out;
        }
        hdr_owned_by_image = true;
    }
    for (uint32_t i = 0; i < n_chunks && !e; i++) {
        const unsigned char *src = data + (uint64_t)i * CHUNK_SIZE;
        uint64_t rem = len - (uint64_t)i * CHUNK_SIZE;
        uint32_t llen = rem < CHUNK_SIZE ? (uint32_t)rem : CHUNK_SIZE;
        uint32_t sum[4];
        uint32_t out_len = llen, method = METHOD_RAW;
        size_t z = (size_t)-1;
        if (c->min_saving_pct <= 100 && chunk_worth_compressing(c, src, llen))
            z = ZSTD_compressCCtx(c->cctx, c->scratch, c->scratch_cap, src, llen,
                                  ZSTD_LEVEL_EXTENT);
        bool ok;
        if (c->min_saving_pct <= 100 && !ZSTD_isError(z) &&
            (uint64_t)z * 100 <= (uint64_t)llen * (100 - c->min_saving_pct)) {
            unsigned char *copy = malloc(z ? z : 1);
            if (copy)
                memcpy(copy, c->scratch, z);
            ok = copy && image_add(im, copy, z, true);
            if (copy && !ok)
                free(copy);
            out_len = (uint32_t)z;
            method = METHOD_ZSTD;
        } else {
            ok = image_add(im, src, llen, false);
        }
        if (!ok) {
            err = cks_fail(diag, CKS_ERR_NOMEM, "cache: out of memory");
            goto out;
        }
        cks_cache_checksum(src, llen, sum);
        unsigned char *ent = hdr + EXT_HEADER_SIZE + (size_t)i * EXT_ENTRY_SIZE;
        cks_put_le64(ent, pos);
        cks_put_le32(ent + 8, out_len);
        cks_put_le32(ent + 12, method);
        for (int q = 0; q < 4; q++)
            cks_put_le32(ent + 16 + 4 * q, sum[q]);
        pos += out_len;
        if (streamed)
            e = image_flush(im);
    }
    if (e)
        goto io;
    memcpy(hdr, EXT_MAGIC, 8);
    cks_put_le64(hdr + 8, off);
    cks_put_le64(hdr + 16, len);
    cks_put_le32(hdr + 24, CHUNK_SIZE);
    cks_put_le32(hdr + 28, n_chunks);
    key_fingerprint(key, hdr + 32);
    uint32_t crc = cks_crc32c(0, hdr, 60);
    crc = cks_crc32c(crc, hdr + EXT_HEADER_SIZE, hdr_len - EXT_HEADER_SIZE);
    cks_put_le32(hdr + 60, crc);
    if (streamed)
        e = cache_pwrite_all(im->fd, hdr, hdr_len, at);
    else if (im->size - im->written >= IMAGE_WRITE_MAX)
        e = image_flush(im);
io:
    if (e)
        err = cache_io_fail(diag, e, "writing", im->path);
out:
    if (!hdr_owned_by_image)
        free(hdr);
    return err;
}

/* A new temporary for an image (rule 1: renamed into place complete). */
static cks_err image_begin(cks_cache *c, file_image *im, char **tmp, cks_diag *diag)
{
    memset(im, 0, sizeof *im);
    im->fd = -1;
    cks_err err = cache_tmp_create(c, tmp, &im->fd, diag);
    if (!err)
        im->path = *tmp;
    return err;
}

/* Write what is pending and rename the temporary to final (rule 1: not synced); on an
 * error the temporary goes. */
static cks_err image_commit(cks_cache *c, keyent *k, file_image *im, char *tmp, const char *final, cks_err err,
                            cks_diag *diag)
{
    char *dir = NULL;
    int e = err ? 0 : image_flush(im);
    if (!err && e)
        err = cache_io_fail(diag, e, "writing", tmp);
    if (!err) {
        dir = cache_keydir_path(c, k->name);
        err = dir ? cache_tmp_commit(tmp, im->fd, final, dir, false /* rule 1: extents are not synced */, diag)
                  : cks_fail(diag, CKS_ERR_NOMEM, "cache: out of memory");
        if (dir)
            im->fd = -1; /* closed by the commit, or by the abort below */
    }
    if (err && im->fd >= 0) {
        cache_tmp_abort(tmp, im->fd);
        im->fd = -1;
    }
    free(dir);
    return err;
}

/* Encode [off, off+len) into a new extent file and rename it into the key directory. */
static cks_err ext_write(cks_cache *c, keyent *k, uint64_t off, const unsigned char *data,
                         uint64_t len, uint64_t *stored_out, cks_diag *diag)
{
    file_image im;
    char *tmp = NULL;
    extent e = {.off = off, .len = len};
    char *final = cache_extent_path(c, k->name, &e);
    cks_err err = final ? image_begin(c, &im, &tmp, diag) : cks_fail(diag, CKS_ERR_NOMEM, "cache: out of memory");
    if (!final || err) {
        free(final);
        *stored_out = 0;
        return err;
    }
    err = ext_encode(c, k->key, off, data, len, &im, diag);
    err = image_commit(c, k, &im, tmp, final, err, diag);
    *stored_out = err ? 0 : im.size;
    image_free(&im);
    free(tmp);
    free(final);
    return err;
}

/* ------------------------------------------------------------------------------------ */
/* packs: the small pieces of one write batch in one file                             */

typedef struct pack_piece {
    uint64_t off, len;
    const unsigned char *data;
} pack_piece;

typedef struct pack_builder {
    pack_piece *v;
    size_t n, cap;
    uint64_t bytes;
} pack_builder;

/* A tag no other pack of the key is likely to have: the name must not replace a pack
 * another process wrote at the same offset. */
static uint64_t pack_tag(cks_cache *c)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t x = ((uint64_t)getpid() << 40) ^ ((uint64_t)ts.tv_sec << 20) ^ (uint64_t)ts.tv_nsec ^
                 (c->tmp_counter++ << 52) ^ (uint64_t)(uintptr_t)c;
    /* splitmix64's finaliser: spreads every input bit over the tag */
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebull;
    x ^= x >> 31;
    return x;
}

/* Store the builder's pieces (one alone as an extent file, several as a pack) and add them
 * to the index; the builder is emptied either way. */
static cks_err pack_flush(cks_cache *c, keyent *k, pack_builder *pb, bool *wrote, cks_diag *diag)
{
    cks_err err = CKS_OK;
    file_image im = {.fd = -1};
    extent *members = NULL;
    unsigned char *head = NULL;
    char *final = NULL, *tmp = NULL;
    uint64_t stored = 0;
    if (pb->n == 0)
        goto out;
    if (pb->n == 1) {
        extent e = {.off = pb->v[0].off, .len = pb->v[0].len};
        err = ext_write(c, k, e.off, pb->v[0].data, e.len, &stored, diag);
        if (err)
            goto out;
        if (cache_key_insert_extent(k, &e) != CKS_OK)
            k->gen_valid = false;
        goto stored;
    }
    uint64_t first = pb->v[0].off, tag = pack_tag(c);
    for (size_t i = 0; i < pb->n; i++)
        if (pb->v[i].off < first)
            first = pb->v[i].off;
    extent name = {.pack_off = first, .pack_tag = tag, .packed = true};
    size_t head_len = PACK_HEADER_SIZE + pb->n * PACK_ENTRY_SIZE;
    head = calloc(1, head_len);
    members = malloc(pb->n * sizeof *members);
    final = cache_extent_path(c, k->name, &name);
    if (!head || !members || !final) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "cache: out of memory");
        goto out;
    }
    err = image_begin(c, &im, &tmp, diag);
    if (err)
        goto out;
    /* the directory is written last, at the front, once every member's position is known */
    int e = image_reserve(&im, head_len);
    if (e)
        err = cache_io_fail(diag, e, "writing", tmp);
    for (size_t i = 0; i < pb->n && !err; i++) {
        extent *m = &members[i];
        *m = (extent){.off = pb->v[i].off, .len = pb->v[i].len, .base = im.size,
                      .pack_off = first, .pack_tag = tag, .packed = true};
        unsigned char *ent = head + PACK_HEADER_SIZE + i * PACK_ENTRY_SIZE;
        cks_put_le64(ent, m->off);
        cks_put_le64(ent + 8, m->len);
        cks_put_le64(ent + 16, m->base);
        err = ext_encode(c, k->key, m->off, pb->v[i].data, m->len, &im, diag);
    }
    if (!err) {
        memcpy(head, PACK_MAGIC, 8);
        cks_put_le32(head + 8, (uint32_t)pb->n);
        cks_put_le64(head + 16, first);
        cks_put_le64(head + 24, tag);
        uint32_t crc = cks_crc32c(0, head, 60);
        crc = cks_crc32c(crc, head + PACK_HEADER_SIZE, head_len - PACK_HEADER_SIZE);
        cks_put_le32(head + 60, crc);
        e = cache_pwrite_all(im.fd, head, head_len, 0);
        if (e)
            err = cache_io_fail(diag, e, "writing", tmp);
    }
    err = image_commit(c, k, &im, tmp, final, err, diag);
    if (err)
        goto out;
    stored = im.size;
    for (size_t i = 0; i < pb->n; i++)
        if (cache_key_insert_extent(k, &members[i]) != CKS_OK)
            k->gen_valid = false;
stored:
    *wrote = true;
    c->size_estimate += stored;
out:
    pb->n = 0;
    pb->bytes = 0;
    image_free(&im);
    free(head);
    free(members);
    free(final);
    free(tmp);
    return err;
}

/* Add a piece to the pack being built (flushing a full one first). Its bytes must stay valid
 * until the builder is flushed. */
static cks_err pack_add(cks_cache *c, keyent *k, pack_builder *pb, uint64_t off,
                        const unsigned char *data, uint64_t len, bool *wrote, cks_diag *diag)
{
    cks_err err = CKS_OK;
    if (pb->n == PACK_MAX_MEMBERS || pb->bytes + len > MAX_EXTENT_LEN) {
        err = pack_flush(c, k, pb, wrote, diag);
        if (err)
            goto out;
    }
    if (pb->n == pb->cap) {
        size_t nc = pb->cap ? 2 * pb->cap : 64;
        pack_piece *nv = realloc(pb->v, nc * sizeof *nv);
        if (!nv) {
            err = cks_fail(diag, CKS_ERR_NOMEM, "cache: out of memory");
            goto out;
        }
        pb->v = nv;
        pb->cap = nc;
    }
    pb->v[pb->n++] = (pack_piece){off, len, data};
    pb->bytes += len;
out:
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
    keyent *k = cache_key_get(c, key, diag, &err);
    if (!k)
        goto out;
    /* asking what is missing means this run is about to use the key: keep it */
    cache_key_pin(c, k);
    err = cache_key_refresh(c, k, false, diag);
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
    qsort(sorted, m, sizeof *sorted, cache_cmp_extent);
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
        if (cache_gaps_append(k, sorted[i].offset, sorted[i].offset + sorted[i].length, &out, &n,
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
cks_err cache_read_locked(cks_cache *c, keyent *k, uint64_t offset, unsigned char *buf,
                           size_t len, bool *hit, cks_diag *diag)
{
    cks_err err = CKS_OK;
    uint64_t end = offset + len;
    char why[128];
    *hit = false;
    for (int attempt = 0; attempt < 3; attempt++) {
        if (!cache_key_covers(k, offset, end)) {
            if (attempt > 0)
                goto out;
            err = cache_key_refresh(c, k, false, diag);
            if (err)
                goto out;
            if (!cache_key_covers(k, offset, end))
                goto out;
        }
        uint64_t pos = offset;
        bool retry = false;
        while (pos < end) {
            /* the extent reaching furthest among those that contain pos */
            const extent *best = NULL;
            for (size_t i = cache_first_relevant(k, pos); i < k->n_ext && k->ext[i].off <= pos; i++) {
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
            ext_status st = cache_ext_read(c, k, best, pos, buf + (pos - offset), stop - pos, why,
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
                cache_add_note(c, "cache: read error on an extent of %s; treating it as missing",
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
        err = cache_key_refresh(c, k, true, diag);
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
    keyent *k = cache_key_get(c, key, diag, &err);
    if (!k)
        goto out;
    cache_key_pin(c, k);
    err = cache_key_refresh(c, k, false, diag);
    if (err)
        goto out;
    uint64_t pos = offset, end = offset + len;
    int gone_retries = 0;
    while (pos < end) {
        const extent *best = NULL;
        uint64_t next = end;
        for (size_t i = cache_first_relevant(k, pos); i < k->n_ext; i++) {
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
        ext_status st = cache_ext_read(c, k, best, pos, buf + (pos - offset), stop - pos, why, sizeof why);
        if (st == EXT_NOMEM) {
            err = cks_fail(diag, CKS_ERR_NOMEM, "cache: out of memory");
            goto out;
        }
        if (st == EXT_GONE && gone_retries++ < 3) {
            err = cache_key_refresh(c, k, true, diag);
            if (err)
                goto out;
            continue;
        }
        if (st == EXT_CORRUPT)
            ext_drop(c, k, best, why, false);
        else if (st == EXT_IOERR)
            cache_add_note(c, "cache: read error on an extent of %s; treating it as missing", k->key);
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
    keyent *k = cache_key_get(c, key, diag, &err);
    if (!k)
        goto out;
    cache_key_pin(c, k);
    err = cache_read_locked(c, k, offset, buf, len, &h, diag);
out:
    if (locked)
        pthread_mutex_unlock(&c->mu);
    if (hit)
        *hit = err ? false : h;
    return err;
}

/* Take the key's writer lock. `cache clear` may remove the directory of a key nobody
 * pins between our open and our flock: then the lock file is unlinked; start over. */
cks_err cache_lock_key(cks_cache *c, keyent *k, cks_diag *diag)
{
    cks_err err = CKS_OK;
    for (int tries = 0; tries < 8; tries++) {
        struct stat st;
        err = cache_key_open_lock(c, k, diag);
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
        char *p = cache_extent_path(c, k->name, e);
        bool ok = p && stat(p, &st) == 0;
        free(p);
        if (!ok)
            return false;
    }
    return true;
}


/* Store [offset, offset+len) of key k: c->mu and k's writer lock held, its index current.
 * *wrote is set when an extent file was created. Pieces smaller than PACK_MEMBER_MAX that
 * merge with nothing go to the pack builder pb when there is one (src must then stay valid
 * until it is flushed). */
static cks_err write_range(cks_cache *c, keyent *k, uint64_t offset, const unsigned char *src,
                           size_t len, pack_builder *pb, bool *wrote, cks_diag *diag)
{
    cks_err err = CKS_OK;
    unsigned char *merged = NULL;
    cks_range *gaps = NULL;
    size_t n_gaps = 0, cap_gaps = 0;
    uint64_t stored_total = 0;

    if (len == 0)
        goto out;
    uint64_t a = offset, b = offset + len;
    if (cache_key_covers(k, a, b)) {
        if (covering_extents_exist(c, k, a, b))
            goto out;
        /* evicted or dropped by someone else meanwhile */
        err = cache_key_refresh(c, k, true, diag);
        if (err)
            goto out;
        if (cache_key_covers(k, a, b))
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
    uint64_t merge_limit = (uint64_t)len / 4 > MERGE_SMALL ? (uint64_t)len / 4 : MERGE_SMALL;
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
            ext_status st = cache_ext_read(c, k, &old[i], old[i].off, merged + (old[i].off - ua),
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
            *wrote = true;
            stored_total += stored;
            /* the merged extent is durable; the parts it replaces can go (a pack member
             * stays with its pack: the index reads the extent reaching furthest, and the
             * unread pack is among the first to be evicted) */
            for (size_t i = 0; i < n_sel; i++) {
                if (old[i].packed || (old[i].off == ua && old[i].len == ub - ua))
                    continue;
                char *p = cache_extent_path(c, k->name, &old[i]);
                struct stat st;
                if (p && stat(p, &st) == 0) {
                    /* the new extent is counted in stored_total; the one it replaces goes */
                    uint64_t sz = (uint64_t)st.st_size;
                    c->size_estimate = c->size_estimate > sz ? c->size_estimate - sz : 0;
                    unlink(p);
                }
                free(p);
                cache_key_remove_extent(k, &old[i]);
            }
            free(old);
            extent joined = {.off = ua, .len = ub - ua};
            if (cache_key_insert_extent(k, &joined) != CKS_OK)
                k->gen_valid = false;
            goto done;
        }
        free(old);
        /* a neighbour was bad or vanished: store only what is missing */
        err = cache_key_refresh(c, k, true, diag);
        if (err)
            goto out;
    }
    if (cache_gaps_append(k, a, b, &gaps, &n_gaps, &cap_gaps) != CKS_OK) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "cache: out of memory");
        goto out;
    }
    for (size_t g = 0; g < n_gaps; g++) {
        for (uint64_t p = gaps[g].offset; p < gaps[g].offset + gaps[g].length;) {
            uint64_t rest = gaps[g].offset + gaps[g].length - p;
            uint64_t piece = rest < MAX_EXTENT_LEN ? rest : MAX_EXTENT_LEN;
            uint64_t stored = 0;
            if (pb && piece < PACK_MEMBER_MAX) {
                err = pack_add(c, k, pb, p, src + (p - a), piece, wrote, diag);
                if (err)
                    goto out;
                p += piece;
                continue;
            }
            err = ext_write(c, k, p, src + (p - a), piece, &stored, diag);
            if (err)
                goto out;
            *wrote = true;
            extent e = {.off = p, .len = piece};
            if (cache_key_insert_extent(k, &e) != CKS_OK)
                k->gen_valid = false;
            stored_total += stored;
            p += piece;
        }
    }
done:
    cache_slots_forget(c, k->name);
    c->size_estimate += stored_total;
out:
    if (err == CKS_ERR_NO_SPACE)
        cache_add_note(c, "cache: no space left in %s; %zu bytes at offset %" PRIu64 " of %s were not "
                    "stored (free space or lower --cache-max)", c->dir, len, offset, k->key);
    free(merged);
    free(gaps);
    return err;
}

struct placed_range {
    uint64_t off;
    size_t idx;
};

static int by_offset(const void *a, const void *b)
{
    const struct placed_range *x = a, *y = b;
    if (x->off != y->off)
        return x->off < y->off ? -1 : 1;
    return x->idx < y->idx ? -1 : x->idx > y->idx;
}

/* Write a batch (c->mu and the key's lock held). Ranges that follow each other exactly (or
 * overlap) are stored as one extent: written one by one, each would be merged into the
 * extent of the one before (read back, rewritten, the old file deleted), as ~120 of 500
 * scattered tensors were. The small pieces of the batch share one pack file. Without memory for the joining
 * or the pack, each range is written on its own (slower, same bytes). */
static cks_err write_batch(cks_cache *c, keyent *k, const cks_range *ranges, const void *const *data,
                           size_t n, bool *wrote, cks_diag *diag)
{
    cks_err err = CKS_OK;
    struct placed_range *o = n > 1 ? malloc(n * sizeof *o) : NULL;
    unsigned char **joins = n > 1 ? malloc(n * sizeof *joins) : NULL; /* alive until the flush */
    size_t n_joins = 0;
    pack_builder pb = {0};
    if (!o || !joins) {
        for (size_t i = 0; i < n && !err; i++)
            err = write_range(c, k, ranges[i].offset, data[i], (size_t)ranges[i].length, NULL, wrote,
                              diag);
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        o[i].off = ranges[i].offset;
        o[i].idx = i;
    }
    qsort(o, n, sizeof *o, by_offset);
    for (size_t i = 0; i < n && !err;) {
        const cks_range *first = &ranges[o[i].idx];
        uint64_t span = first->length;
        size_t j = i + 1;
        while (j < n) {
            /* the next range touches or overlaps what is joined so far (the same bytes
             * where they overlap: they are of one file) */
            const cks_range *next = &ranges[o[j].idx];
            uint64_t end = first->offset + span, next_end = next->offset + next->length;
            if (next->offset > end || (next_end > end && next_end - first->offset > MAX_EXTENT_LEN))
                break;
            if (next_end > end)
                span = next_end - first->offset;
            j++;
        }
        unsigned char *joined = j - i > 1 ? malloc((size_t)span) : NULL;
        if (joined) {
            joins[n_joins++] = joined;
            for (size_t q = i; q < j; q++) {
                const cks_range *r = &ranges[o[q].idx];
                if (r->length)
                    memcpy(joined + (r->offset - first->offset), data[o[q].idx], (size_t)r->length);
            }
            err = write_range(c, k, first->offset, joined, (size_t)span, &pb, wrote, diag);
        } else {
            for (size_t q = i; q < j && !err; q++)
                err = write_range(c, k, ranges[o[q].idx].offset, data[o[q].idx],
                                  (size_t)ranges[o[q].idx].length, &pb, wrote, diag);
        }
        i = j;
    }
    if (!err)
        err = pack_flush(c, k, &pb, wrote, diag);
    if (*wrote)
        cache_slots_forget(c, k->name);
out:
    for (size_t i = 0; i < n_joins; i++)
        free(joins[i]);
    free(joins);
    free(pb.v);
    free(o);
    return err;
}

/*
 * Store n ranges of one key under one writer lock: the lock, the index refresh, the
 * `verified` mark's removal, the generation bump and the eviction check once per batch, not
 * once per range (500 scattered tensors: 14 system calls per extent before, 7 now).
 */
cks_err cache_write(cks_cache *c, const char *key, const cks_range *ranges,
                    const void *const *data, size_t n, cks_diag *diag)
{
    cks_err err = CKS_OK;
    bool locked = false, key_locked = false, wrote = false;
    keyent *k = NULL;
    bool any = false;

    if (!c || (n && (!ranges || !data)) || !cks_cache_key_valid(key)) {
        err = cks_fail(diag, CKS_ERR_INVALID_ARG, "cache: invalid key or arguments");
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        if ((ranges[i].length && !data[i]) || ranges[i].offset > UINT64_MAX - ranges[i].length ||
            ranges[i].length > SIZE_MAX) {
            err = cks_fail(diag, CKS_ERR_INVALID_ARG, "cache: invalid key or arguments");
            goto out;
        }
        any = any || ranges[i].length > 0;
    }
    if (!any)
        goto out;
    pthread_mutex_lock(&c->mu);
    locked = true;
    k = cache_key_get(c, key, diag, &err);
    if (!k)
        goto out;
    cache_key_pin(c, k);
    err = cache_lock_key(c, k, diag);
    if (err)
        goto out;
    key_locked = true;
    /* under the key lock, catch up with what other processes wrote */
    err = cache_key_refresh(c, k, false, diag);
    if (!err)
        err = write_batch(c, k, ranges, data, n, &wrote, diag);
out:
    if (k && wrote) {
        /* new bytes were not part of a whole-file SHA-256 check: the marker no longer covers
         * everything stored under the key */
        char *kd = cache_keydir_path(c, k->name);
        char *mk = kd ? cache_path_join(kd, "verified") : NULL;
        if (mk)
            unlink(mk);
        free(mk);
        free(kd);
        /* tell other processes (and our next refresh) that extents were added; our own
         * index already has them, unless it fell behind (then gen_valid is false) */
        bool current = k->gen_valid;
        cache_key_gen_bump(k);
        if (!current)
            k->gen_valid = false;
    }
    if (key_locked && k && k->lock_fd >= 0)
        flock(k->lock_fd, LOCK_UN);
    if (!err && c && c->max_bytes && any)
        err = cache_maybe_evict(c, diag);
    if (locked)
        pthread_mutex_unlock(&c->mu);
    return err;
}
