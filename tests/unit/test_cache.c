/*
 * The disk cache through its C API: byte exactness, merging, missing-range computation,
 * checksums (a flipped bit is a miss, never data), metadata TTLs, whole-file SHA-256,
 * LRU eviction and pins, HF_HOME reuse, several processes at once, kill -9 during writes,
 * and a full disk. Child processes are plain fork()s of this binary.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <openssl/evp.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "storage/cache_internal.h"
#include "check.h"
#include "ckptscope/cache.h"
#include "ckptscope/cache_hub.h"
#include "ckptscope/hash.h"

#define KEY_A "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
#define KEY_B "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
#define KEY_C "sha256:cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc"
#define KEY_G "git:0123456789abcdef0123456789abcdef01234567:config.json"

/* The content of "the file" at absolute offset i: position-dependent so that a byte
 * served from the wrong offset is caught. */
static unsigned char pat(uint64_t i)
{
    /* splitmix64 finaliser: incompressible, like the mantissa bytes of real weights */
    uint64_t x = (i >> 3) + 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    x ^= x >> 31;
    return (unsigned char)(x >> (8 * (i & 7)));
}

/* Low-entropy content that zstd compresses well (think norm vectors). */
static unsigned char pat_z(uint64_t i)
{
    return (unsigned char)((i / 4096) % 5 + (i % 3 == 0));
}

static void fill(unsigned char *buf, uint64_t off, size_t len, bool compressible)
{
    for (size_t i = 0; i < len; i++)
        buf[i] = compressible ? pat_z(off + i) : pat(off + i);
}

static bool check_bytes(const unsigned char *buf, uint64_t off, size_t len, bool compressible)
{
    for (size_t i = 0; i < len; i++)
        if (buf[i] != (compressible ? pat_z(off + i) : pat(off + i)))
            return false;
    return true;
}

static char *mkcachedir(void)
{
    char tmpl[] = "/tmp/cks-cache-test-XXXXXX";
    char *d = mkdtemp(tmpl);
    return d ? strdup(d) : NULL;
}

static void rmtree(const char *dir)
{
    char *cmd = NULL;
    if (asprintf(&cmd, "rm -rf '%s'", dir) >= 0)
        (void)system(cmd);
    free(cmd);
}

static cks_cache *open_at(const char *dir, uint64_t max_bytes)
{
    cks_cache_opts o = {.dir = dir, .max_bytes = max_bytes, .revision_ttl_seconds = -1};
    cks_cache *c = NULL;
    cks_diag d = {{0}};
    cks_err e = cks_cache_open(&o, &c, &d);
    CHECK_MSG(e == CKS_OK, "open: %s", d.text);
    return c;
}

static cks_err put_range(cks_cache *c, const char *key, uint64_t off, size_t len, bool z)
{
    unsigned char *buf = malloc(len ? len : 1);
    cks_diag d = {{0}};
    cks_err e;
    if (!buf)
        return CKS_ERR_NOMEM;
    fill(buf, off, len, z);
    e = cks_cache_write(c, key, off, buf, len, &d);
    if (e)
        fprintf(stderr, "  write: %s\n", d.text);
    free(buf);
    return e;
}

/* 1 = hit with the right bytes, 0 = miss, -1 = hit with WRONG bytes, -2 = error */
static int get_range(cks_cache *c, const char *key, uint64_t off, size_t len, bool z)
{
    unsigned char *buf = malloc(len ? len : 1);
    bool hit = false;
    cks_diag d = {{0}};
    int r;
    if (!buf)
        return -2;
    if (cks_cache_read(c, key, off, buf, len, &hit, &d) != CKS_OK) {
        fprintf(stderr, "  read: %s\n", d.text);
        r = -2;
    } else if (!hit) {
        r = 0;
    } else {
        r = check_bytes(buf, off, len, z) ? 1 : -1;
    }
    free(buf);
    return r;
}

static size_t count_extents(const char *dir, const char *key)
{
    cks_cache *c = open_at(dir, 0);
    cks_cache_entry *v = NULL;
    size_t n = 0, found = 0;
    if (c && cks_cache_list(c, &v, &n, NULL) == CKS_OK)
        for (size_t i = 0; i < n; i++)
            if (v[i].kind == CKS_CACHE_ENTRY_FILE && strcmp(v[i].key, key) == 0)
                found = (size_t)v[i].n_extents;
    cks_cache_entries_free(v, n);
    cks_cache_free(c);
    return found;
}

/* The directory of an LFS key (stored under s-<hex>). */
static char *key_dir(const char *dir, const char *key)
{
    char *kd = NULL;
    const char *hex = key + 7;
    return asprintf(&kd, "%s/files/%.2s/s-%s", dir, hex, hex) < 0 ? NULL : kd;
}

/* Path of the first extent file of key. */
static char *first_extent_path(const char *dir, const char *key)
{
    char *kd = key_dir(dir, key), *res = NULL;
    if (!kd)
        return NULL;
    DIR *d = opendir(kd);
    struct dirent *de;
    while (d && (de = readdir(d)) != NULL) {
        if (strncmp(de->d_name, "x-", 2) == 0) {
            if (asprintf(&res, "%s/%s", kd, de->d_name) < 0)
                res = NULL;
            break;
        }
    }
    if (d)
        closedir(d);
    free(kd);
    return res;
}

/* The pack file of key and the position of the image of its member at `off`, read from the
 * pack's directory as cache/README.md lays it out (a 64-byte header with the member count
 * at byte 8, then 24 bytes per member: offset, length, position). NULL when no pack of the
 * key has that member. */
static char *pack_member_path(const char *dir, const char *key, uint64_t off, uint64_t *image_at)
{
    char *kd = key_dir(dir, key), *res = NULL;
    if (!kd)
        return NULL;
    DIR *d = opendir(kd);
    struct dirent *de;
    while (!res && d && (de = readdir(d)) != NULL) {
        if (strncmp(de->d_name, "p-", 2) != 0)
            continue;
        char *p = NULL;
        if (asprintf(&p, "%s/%s", kd, de->d_name) < 0)
            break;
        FILE *f = fopen(p, "rb");
        unsigned char h[64], ent[24];
        if (f && fread(h, 1, 64, f) == 64 && memcmp(h, "CKSPACK1", 8) == 0) {
            uint32_t n = (uint32_t)h[8] | (uint32_t)h[9] << 8 | (uint32_t)h[10] << 16 | (uint32_t)h[11] << 24;
            for (uint32_t i = 0; i < n && fread(ent, 1, 24, f) == 24; i++) {
                uint64_t o = 0, at = 0;
                for (int b = 7; b >= 0; b--) {
                    o = o << 8 | ent[b];
                    at = at << 8 | ent[16 + b];
                }
                if (o == off) {
                    *image_at = at;
                    res = p;
                    p = NULL;
                    break;
                }
            }
        }
        if (f)
            fclose(f);
        free(p);
    }
    if (d)
        closedir(d);
    free(kd);
    return res;
}

static size_t count_files(const char *dir, const char *key, const char *prefix)
{
    char *kd = key_dir(dir, key);
    size_t n = 0;
    if (!kd)
        return 0;
    DIR *d = opendir(kd);
    struct dirent *de;
    while (d && (de = readdir(d)) != NULL)
        n += strncmp(de->d_name, prefix, strlen(prefix)) == 0;
    if (d)
        closedir(d);
    free(kd);
    return n;
}

static void flip_byte(const char *path, off_t at)
{
    int fd = open(path, O_RDWR);
    unsigned char b;
    CHECK(fd >= 0);
    if (fd < 0)
        return;
    CHECK(pread(fd, &b, 1, at) == 1);
    b ^= 0x10;
    CHECK(pwrite(fd, &b, 1, at) == 1);
    close(fd);
}

/* ------------------------------------------------------------------------------------ */

static void checksum_matches_portable_and_catches_flips(void)
{
    unsigned char buf[4099];
    for (size_t i = 0; i < sizeof buf; i++)
        buf[i] = pat(i);
    static const size_t lens[] = {0, 1, 7, 8, 31, 32, 33, 63, 64, 100, 1000, 4096, 4099};
    for (size_t i = 0; i < sizeof lens / sizeof lens[0]; i++) {
        uint32_t a[4], b[4];
        cks_cache_checksum(buf, lens[i], a);
        cks_cache_checksum_portable(buf, lens[i], b);
        CHECK_MSG(memcmp(a, b, sizeof a) == 0, "length %zu", lens[i]);
    }
    /* known answer: CRC32C("123456789") = 0xE3069283 */
    CHECK_EQ_INT(cks_crc32c(0, "123456789", 9), 0xE3069283u);
    uint32_t ref[4];
    cks_cache_checksum(buf, sizeof buf, ref);
    for (size_t bit = 0; bit < sizeof buf * 8; bit += 97) {
        uint32_t got[4];
        buf[bit / 8] ^= (unsigned char)(1u << (bit % 8));
        cks_cache_checksum(buf, sizeof buf, got);
        buf[bit / 8] ^= (unsigned char)(1u << (bit % 8));
        CHECK_MSG(memcmp(ref, got, sizeof ref) != 0, "flip of bit %zu not detected", bit);
    }
}

static void roundtrip_and_missing(void)
{
    char *dir = mkcachedir();
    cks_cache *c = open_at(dir, 0);
    CHECK(cks_cache_key_valid(KEY_A));
    CHECK(cks_cache_key_valid(KEY_G));
    CHECK(!cks_cache_key_valid("sha256:ABC"));
    CHECK(!cks_cache_key_valid("git:0123:x"));
    CHECK_EQ_INT(get_range(c, KEY_A, 0, 100, false), 0);
    CHECK_EQ_INT(put_range(c, KEY_A, 1000, 5000, false), CKS_OK);
    CHECK_EQ_INT(put_range(c, KEY_A, 100000, 3000, false), CKS_OK);
    CHECK_EQ_INT(get_range(c, KEY_A, 1000, 5000, false), 1);
    CHECK_EQ_INT(get_range(c, KEY_A, 1234, 17, false), 1);
    CHECK_EQ_INT(get_range(c, KEY_A, 100500, 2500, false), 1);
    CHECK_EQ_INT(get_range(c, KEY_A, 900, 200, false), 0);   /* starts before */
    CHECK_EQ_INT(get_range(c, KEY_A, 5999, 2, false), 0);    /* ends after */
    CHECK_EQ_INT(get_range(c, KEY_B, 1000, 10, false), 0);   /* other key */

    /* unsorted, overlapping request -> sorted, merged gaps */
    cks_range want[] = {{102000, 5000}, {0, 2000}, {1500, 4000}, {6000, 100}};
    cks_range *miss = NULL;
    size_t n = 0;
    CHECK_EQ_INT(cks_cache_missing(c, KEY_A, want, 4, &miss, &n, NULL), CKS_OK);
    CHECK_EQ_INT(n, 3);
    if (n == 3) {
        CHECK_EQ_INT(miss[0].offset, 0);
        CHECK_EQ_INT(miss[0].length, 1000);
        CHECK_EQ_INT(miss[1].offset, 6000);
        CHECK_EQ_INT(miss[1].length, 100);
        CHECK_EQ_INT(miss[2].offset, 103000);
        CHECK_EQ_INT(miss[2].length, 4000);
    }
    free(miss);
    cks_range all[] = {{1000, 5000}};
    CHECK_EQ_INT(cks_cache_missing(c, KEY_A, all, 1, &miss, &n, NULL), CKS_OK);
    CHECK(n == 0 && miss == NULL);

    /* a fresh handle (another process, later) sees the same bytes */
    cks_cache_free(c);
    c = open_at(dir, 0);
    CHECK_EQ_INT(get_range(c, KEY_A, 1000, 5000, false), 1);
    /* a git key stores non-LFS files the same way */
    CHECK_EQ_INT(put_range(c, KEY_G, 0, 777, true), CKS_OK);
    CHECK_EQ_INT(get_range(c, KEY_G, 0, 777, true), 1);
    cks_cache_free(c);
    rmtree(dir);
    free(dir);
}

static void adjacent_and_overlapping_extents_merge(void)
{
    char *dir = mkcachedir();
    cks_cache *c = open_at(dir, 0);
    CHECK_EQ_INT(put_range(c, KEY_A, 0, 100000, false), CKS_OK);
    CHECK_EQ_INT(put_range(c, KEY_A, 100000, 50000, false), CKS_OK);   /* adjacent */
    CHECK_EQ_INT(put_range(c, KEY_A, 120000, 60000, false), CKS_OK);   /* overlapping */
    CHECK_EQ_INT(put_range(c, KEY_A, 10, 20, false), CKS_OK);          /* already there */
    CHECK_EQ_INT(count_extents(dir, KEY_A), 1);
    CHECK_EQ_INT(get_range(c, KEY_A, 0, 180000, false), 1);
    /* a gap closed from both sides */
    CHECK_EQ_INT(put_range(c, KEY_A, 300000, 1000, false), CKS_OK);
    CHECK_EQ_INT(count_extents(dir, KEY_A), 2);
    CHECK_EQ_INT(put_range(c, KEY_A, 150000, 200000, false), CKS_OK);
    CHECK_EQ_INT(count_extents(dir, KEY_A), 1);
    CHECK_EQ_INT(get_range(c, KEY_A, 0, 350000, false), 1);
    /* a large write is split into bounded extents and reads back across their seams */
    size_t big = 70u * 1024 * 1024;
    CHECK_EQ_INT(put_range(c, KEY_B, 12345, big, false), CKS_OK);
    CHECK(count_extents(dir, KEY_B) >= 2);
    CHECK_EQ_INT(get_range(c, KEY_B, 12345, big, false), 1);
    CHECK_EQ_INT(get_range(c, KEY_B, 12345 + 64u * 1024 * 1024 - 10, 20, false), 1);
    cks_cache_stat st;
    CHECK_EQ_INT(cks_cache_stat_get(c, &st, NULL), CKS_OK);
    CHECK_EQ_INT(st.n_keys, 2);
    CHECK_EQ_INT(st.logical_bytes, 350000 + big);
    cks_cache_free(c);
    rmtree(dir);
    free(dir);
}

/* A file streamed in blocks is stored once, as a row of extents: a block merges with a
 * neighbour only when that rewrites at most a quarter of it or under 1 MiB (issue 15: the old
 * rule rewrote each 8 MiB block into its growing neighbour, 3x the bytes written). */
static void streamed_blocks_are_not_rewritten(void)
{
    char *dir = mkcachedir();
    cks_cache *c = open_at(dir, 0);
    size_t block = 2u * 1024 * 1024;
    for (int i = 0; i < 8; i++)
        CHECK_EQ_INT(put_range(c, KEY_A, (uint64_t)i * block, block, false), CKS_OK);
    CHECK_EQ_INT(count_extents(dir, KEY_A), 8);
    CHECK_EQ_INT(get_range(c, KEY_A, 0, 8 * block, false), 1);
    CHECK_EQ_INT(get_range(c, KEY_A, block - 5, 10, false), 1); /* across a seam */
    /* small neighbours still coalesce: 64 reads of 4 KiB end as one extent */
    for (int i = 0; i < 64; i++)
        CHECK_EQ_INT(put_range(c, KEY_B, (uint64_t)i * 4096, 4096, false), CKS_OK);
    CHECK_EQ_INT(count_extents(dir, KEY_B), 1);
    /* a large write next to a small extent takes it in (rewrites under a quarter of itself) */
    CHECK_EQ_INT(put_range(c, KEY_B, 64 * 4096, block, false), CKS_OK);
    CHECK_EQ_INT(count_extents(dir, KEY_B), 1);
    CHECK_EQ_INT(get_range(c, KEY_B, 0, 64 * 4096 + block, false), 1);
    cks_cache_free(c);
    rmtree(dir);
    free(dir);
}

static void compression_saves_space_and_reads_back(void)
{
    char *dir = mkcachedir();
    cks_cache *c = open_at(dir, 0);
    size_t len = 3u * 1024 * 1024 + 17;
    CHECK_EQ_INT(put_range(c, KEY_C, 5, len, true), CKS_OK);
    CHECK_EQ_INT(put_range(c, KEY_A, 0, 1024 * 1024, false), CKS_OK);
    CHECK_EQ_INT(get_range(c, KEY_C, 5, len, true), 1);
    CHECK_EQ_INT(get_range(c, KEY_C, 300000, 1000, true), 1);
    cks_cache_entry *v = NULL;
    size_t n = 0;
    CHECK_EQ_INT(cks_cache_list(c, &v, &n, NULL), CKS_OK);
    for (size_t i = 0; i < n; i++) {
        if (strcmp(v[i].key, KEY_C) == 0)
            CHECK_MSG(v[i].stored_bytes * 10 < v[i].logical_bytes, "stored %" PRIu64
                      " of %" PRIu64, v[i].stored_bytes, v[i].logical_bytes);
        if (strcmp(v[i].key, KEY_A) == 0) /* random bytes: stored raw, small overhead */
            CHECK(v[i].stored_bytes >= v[i].logical_bytes &&
                  v[i].stored_bytes < v[i].logical_bytes + 8192);
    }
    cks_cache_entries_free(v, n);
    cks_cache_free(c);
    rmtree(dir);
    free(dir);
}

static void flipped_byte_is_a_miss_and_refetch_repairs(void)
{
    char *dir = mkcachedir();
    static const bool kinds[] = {false, true};
    for (size_t kind = 0; kind < 2; kind++) {
        bool z = kinds[kind];
        const char *key = z ? KEY_C : KEY_A;
        cks_cache *c = open_at(dir, 0);
        CHECK_EQ_INT(put_range(c, key, 0, 600000, z), CKS_OK);
        cks_cache_free(c);
        char *p = first_extent_path(dir, key);
        CHECK(p != NULL);
        if (!p)
            continue;
        struct stat st;
        CHECK(stat(p, &st) == 0);
        /* raw: inside the last chunk's bytes; zstd: a literal of the first chunk (a flip in a
         * match offset of periodic data may decode to the same bytes, which is no harm) */
        flip_byte(p, z ? 64 + 3 * 32 + 16 : st.st_size - 100);

        cks_cache_verify_report rep;
        c = open_at(dir, 0);
        CHECK_EQ_INT(cks_cache_verify(c, false, &rep, NULL), CKS_OK);
        CHECK_EQ_INT(rep.bad_extents, 1);
        cks_cache_verify_report_release(&rep);
        /* a read of an untouched chunk of that extent is still checked chunk by chunk */
        CHECK_EQ_INT(get_range(c, key, z ? 590000 : 10, 100, z), 1);
        /* the damaged chunk: never data */
        CHECK_EQ_INT(get_range(c, key, 0, 600000, z), 0);
        char **notes = NULL;
        size_t nn = cks_cache_take_notes(c, &notes);
        CHECK_EQ_INT(nn, 1);
        if (nn)
            CHECK_MSG(strstr(notes[0], "corrupt") != NULL, "note: %s", notes[0]);
        cks_cache_free_notes(notes, nn);
        cks_range want = {0, 600000}, *miss = NULL;
        size_t n = 0;
        CHECK_EQ_INT(cks_cache_missing(c, key, &want, 1, &miss, &n, NULL), CKS_OK);
        CHECK_EQ_INT(n, 1);
        if (n == 1) {
            /* the chunks that still verified were kept: only the damaged 256 KiB chunk
             * (the last one for raw, the first for zstd) is to be fetched again */
            CHECK_EQ_INT(miss[0].offset, z ? 0 : 2 * 262144);
            CHECK_EQ_INT(miss[0].length, z ? 262144 : 600000 - 2 * 262144);
        }
        free(miss);
        /* the refetch stores the bytes again and they read back */
        CHECK_EQ_INT(put_range(c, key, 0, 600000, z), CKS_OK);
        CHECK_EQ_INT(get_range(c, key, 0, 600000, z), 1);
        CHECK_EQ_INT(cks_cache_verify(c, false, &rep, NULL), CKS_OK);
        CHECK_EQ_INT(rep.bad_extents, 0);
        cks_cache_verify_report_release(&rep);
        cks_cache_free(c);
        free(p);
    }
    /* a flip in the header / chunk table is caught too */
    cks_cache *c = open_at(dir, 0);
    CHECK_EQ_INT(put_range(c, KEY_B, 0, 1000, false), CKS_OK);
    cks_cache_free(c);
    char *p = first_extent_path(dir, KEY_B);
    if (p) {
        flip_byte(p, 70);
        c = open_at(dir, 0);
        CHECK_EQ_INT(get_range(c, KEY_B, 0, 1000, false), 0);
        cks_cache_free(c);
    }
    free(p);
    rmtree(dir);
    free(dir);
}

static void metadata_roundtrip_ttl_and_corruption(void)
{
    char *dir = mkcachedir();
    cks_cache *c = open_at(dir, 0);
    char *data = NULL;
    size_t len = 0;
    bool hit = true;
    const char *commit = "0123456789abcdef0123456789abcdef01234567";
    CHECK_EQ_INT(cks_cache_meta_get(c, "revision", "org/name@main", 600, &data, &len, &hit, NULL),
                 CKS_OK);
    CHECK(!hit && data == NULL);
    CHECK_EQ_INT(cks_cache_meta_put(c, "revision", "org/name@main", commit, 40, NULL), CKS_OK);
    CHECK_EQ_INT(cks_cache_meta_get(c, "revision", "org/name@main", 600, &data, &len, &hit, NULL),
                 CKS_OK);
    CHECK(hit && len == 40 && data && strcmp(data, commit) == 0);
    free(data);
    /* a big, compressible header */
    size_t hl = 300000;
    char *hdr = malloc(hl);
    for (size_t i = 0; i < hl; i++)
        hdr[i] = "{\"model.layers.0.weight\":{\"dtype\":\"BF16\"}},"[i % 44];
    CHECK_EQ_INT(cks_cache_meta_put(c, "header", KEY_A, hdr, hl, NULL), CKS_OK);
    CHECK_EQ_INT(cks_cache_meta_get(c, "header", KEY_A, -1, &data, &len, &hit, NULL), CKS_OK);
    CHECK(hit && len == hl && memcmp(data, hdr, hl) == 0);
    free(data);
    /* invalid namespace */
    CHECK_EQ_INT(cks_cache_meta_put(c, "../x", "k", "v", 1, NULL), CKS_ERR_INVALID_ARG);
    /* TTL: after a second, a 0-second TTL is expired, "never" is not */
    sleep(1);
    struct timespec ts = {0, 200 * 1000 * 1000};
    nanosleep(&ts, NULL);
    CHECK_EQ_INT(cks_cache_meta_get(c, "revision", "org/name@main", 0, &data, &len, &hit, NULL),
                 CKS_OK);
    CHECK(!hit);
    CHECK_EQ_INT(cks_cache_meta_get(c, "revision", "org/name@main", -1, &data, &len, &hit, NULL),
                 CKS_OK);
    CHECK(hit);
    free(data);
    /* corruption: flip a byte of the header entry */
    cks_cache_entry *v = NULL;
    size_t n = 0;
    CHECK_EQ_INT(cks_cache_list(c, &v, &n, NULL), CKS_OK);
    CHECK_EQ_INT(n, 2);
    cks_cache_entries_free(v, n);
    char *cmd = NULL;
    char path[512] = "";
    if (asprintf(&cmd, "ls %s/meta/header/* | head -1", dir) >= 0) {
        FILE *f = popen(cmd, "r");
        if (f && fgets(path, sizeof path, f))
            path[strcspn(path, "\n")] = '\0';
        if (f)
            pclose(f);
    }
    free(cmd);
    flip_byte(path, 100);
    CHECK_EQ_INT(cks_cache_meta_get(c, "header", KEY_A, -1, &data, &len, &hit, NULL), CKS_OK);
    CHECK(!hit && data == NULL);
    free(hdr);
    cks_cache_free(c);
    rmtree(dir);
    free(dir);
}

static void sha256_hex_of(const unsigned char *buf, size_t n, char out[72])
{
    unsigned char md[32];
    unsigned int ml = 0;
    EVP_Digest(buf, n, md, &ml, EVP_sha256(), NULL);
    strcpy(out, "sha256:");
    for (int i = 0; i < 32; i++)
        snprintf(out + 7 + 2 * i, 3, "%02x", md[i]);
}

static void whole_file_sha256_check(void)
{
    char *dir = mkcachedir();
    cks_cache *c = open_at(dir, 0);
    size_t n = 2u * 1024 * 1024 + 3;
    unsigned char *buf = malloc(n);
    char key[72];
    bool ok = true;
    fill(buf, 0, n, false);
    sha256_hex_of(buf, n, key);
    CHECK_EQ_INT(cks_cache_write(c, key, 0, buf, n / 2, NULL), CKS_OK);
    CHECK_EQ_INT(cks_cache_verify_file(c, key, n, &ok, NULL), CKS_OK);
    CHECK(!ok); /* not whole yet */
    CHECK_EQ_INT(cks_cache_write(c, key, n / 2, buf + n / 2, n - n / 2, NULL), CKS_OK);
    CHECK_EQ_INT(cks_cache_verify_file(c, key, n, &ok, NULL), CKS_OK);
    CHECK(ok);
    CHECK_EQ_INT(cks_cache_verify_file(c, key, n, &ok, NULL), CKS_OK); /* from the marker */
    CHECK(ok);
    /* bytes that do not hash to their key are dropped */
    CHECK_EQ_INT(cks_cache_write(c, KEY_B, 0, buf, n, NULL), CKS_OK);
    cks_diag d = {{0}};
    CHECK_EQ_INT(cks_cache_verify_file(c, KEY_B, n, &ok, &d), CKS_ERR_INTEGRITY);
    CHECK(!ok);
    CHECK_EQ_INT(get_range(c, KEY_B, 0, 100, false), 0);
    free(buf);
    cks_cache_free(c);
    rmtree(dir);
    free(dir);
}

static void set_key_atime(const char *dir, const char *key, time_t t)
{
    char *kd = NULL;
    if (asprintf(&kd, "%s/files/%.2s/s-%s", dir, key + 7, key + 7) < 0)
        return;
    DIR *d = opendir(kd);
    struct dirent *de;
    while (d && (de = readdir(d)) != NULL) {
        if (strncmp(de->d_name, "x-", 2) != 0)
            continue;
        struct timespec ts[2] = {{t, 0}, {0, UTIME_OMIT}};
        utimensat(dirfd(d), de->d_name, ts, 0);
    }
    if (d)
        closedir(d);
    free(kd);
}

static void lru_eviction_respects_cap_and_pins(void)
{
    char *dir = mkcachedir();
    size_t mb = 1024 * 1024;
    cks_cache *c = open_at(dir, 0);
    CHECK_EQ_INT(put_range(c, KEY_A, 0, mb, false), CKS_OK);
    CHECK_EQ_INT(put_range(c, KEY_B, 0, mb, false), CKS_OK);
    cks_cache_free(c);
    time_t now = time(NULL);
    set_key_atime(dir, KEY_A, now - 1000); /* A is the least recently used */
    set_key_atime(dir, KEY_B, now - 500);
    /* a process with a 2.5 MiB cap writes C: A must go, B and C stay */
    c = open_at(dir, 2 * mb + mb / 2);
    CHECK_EQ_INT(put_range(c, KEY_C, 0, mb, false), CKS_OK);
    CHECK_EQ_INT(get_range(c, KEY_C, 0, mb, false), 1);
    CHECK_EQ_INT(get_range(c, KEY_B, 0, mb, false), 1);
    CHECK_EQ_INT(get_range(c, KEY_A, 0, mb, false), 0);
    char **notes = NULL;
    size_t nn = cks_cache_take_notes(c, &notes);
    CHECK(nn >= 1);
    cks_cache_free_notes(notes, nn);
    /* this process has read B and C (pinned): even a cap of 0 does not evict them */
    uint64_t ev_n = 0, ev_b = 0;
    CHECK_EQ_INT(cks_cache_prune(c, 0, &ev_n, &ev_b, NULL), CKS_OK);
    CHECK_EQ_INT(ev_n, 0);
    /* another process pins B while this one prunes: only C goes */
    int ready[2], done[2];
    CHECK(pipe(ready) == 0 && pipe(done) == 0);
    cks_cache_free(c);
    pid_t pid = fork();
    if (pid == 0) {
        cks_cache *cc = open_at(dir, 0);
        cks_cache_pin(cc, KEY_B);
        char x = 1;
        (void)!write(ready[1], &x, 1);
        (void)!read(done[0], &x, 1);
        cks_cache_free(cc);
        _exit(0);
    }
    char x;
    CHECK(read(ready[0], &x, 1) == 1);
    c = open_at(dir, 0);
    CHECK_EQ_INT(cks_cache_prune(c, 0, &ev_n, &ev_b, NULL), CKS_OK);
    CHECK_EQ_INT(ev_n, 1);
    CHECK_EQ_INT(count_extents(dir, KEY_B), 1);
    CHECK_EQ_INT(count_extents(dir, KEY_C), 0);
    (void)!write(done[1], &x, 1);
    int status;
    waitpid(pid, &status, 0);
    /* and with nobody pinning, clear removes everything */
    uint64_t removed = 0;
    CHECK_EQ_INT(cks_cache_clear(c, &removed, NULL), CKS_OK);
    CHECK(removed >= mb);
    CHECK_EQ_INT(count_extents(dir, KEY_B), 0);
    close(ready[0]);
    close(ready[1]);
    close(done[0]);
    close(done[1]);
    cks_cache_free(c);
    rmtree(dir);
    free(dir);
}

static void write_file(const char *path, const void *data, size_t n)
{
    FILE *f = fopen(path, "wb");
    CHECK(f != NULL);
    if (f) {
        CHECK(fwrite(data, 1, n, f) == n);
        fclose(f);
    }
}

static void hf_home_reuse(void)
{
    char *home = mkcachedir();
    const char *commit = "0123456789abcdef0123456789abcdef01234567";
    const char *etag = "3f2a9d5e5c1f0b6a7d8e9f00112233445566778899aabbccddeeff0011223344";
    char *cmd = NULL;
    CHECK(asprintf(&cmd,
                   "cd '%s' && mkdir -p hub/models--org--name/blobs hub/models--org--name/refs "
                   "hub/models--org--name/snapshots/%s/sub && "
                   "ln -s ../../blobs/%s hub/models--org--name/snapshots/%s/model.safetensors && "
                   "ln -s ../../../blobs/part.incomplete "
                   "hub/models--org--name/snapshots/%s/sub/partial.bin",
                   home, commit, etag, commit, commit) >= 0);
    CHECK(system(cmd) == 0);
    free(cmd);
    char *p = NULL;
    CHECK(asprintf(&p, "%s/hub/models--org--name/blobs/%s", home, etag) >= 0);
    write_file(p, "hello", 5);
    free(p);
    CHECK(asprintf(&p, "%s/hub/models--org--name/blobs/part.incomplete", home) >= 0);
    write_file(p, "hel", 3);
    free(p);
    CHECK(asprintf(&p, "%s/hub/models--org--name/refs/main", home) >= 0);
    write_file(p, commit, 40);
    free(p);

    char *lp = NULL;
    CHECK_EQ_INT(cks_cache_hf_lookup(home, "model", "org/name", commit, "model.safetensors", &lp,
                                     NULL), CKS_OK);
    CHECK(lp != NULL && strstr(lp, etag) != NULL);
    free(lp);
    CHECK_EQ_INT(cks_cache_hf_lookup(home, "model", "org/name", "main", "model.safetensors", &lp,
                                     NULL), CKS_OK);
    CHECK(lp != NULL);
    free(lp);
    /* absent file, absent repo, partial blob, dataset type, unsafe path */
    CHECK_EQ_INT(cks_cache_hf_lookup(home, "model", "org/name", commit, "other.bin", &lp, NULL),
                 CKS_OK);
    CHECK(lp == NULL);
    CHECK_EQ_INT(cks_cache_hf_lookup(home, "model", "org/none", commit, "model.safetensors", &lp,
                                     NULL), CKS_OK);
    CHECK(lp == NULL);
    CHECK_EQ_INT(cks_cache_hf_lookup(home, "model", "org/name", commit, "sub/partial.bin", &lp,
                                     NULL), CKS_OK);
    CHECK(lp == NULL);
    CHECK_EQ_INT(cks_cache_hf_lookup(home, "dataset", "org/name", commit, "model.safetensors", &lp,
                                     NULL), CKS_OK);
    CHECK(lp == NULL);
    CHECK_EQ_INT(cks_cache_hf_lookup(home, "model", "org/name", commit, "../../x", &lp, NULL),
                 CKS_ERR_INVALID_ARG);
    /* through the environment */
    char *hub = NULL;
    CHECK(asprintf(&hub, "%s/hub", home) >= 0);
    setenv("HF_HUB_CACHE", hub, 1);
    CHECK_EQ_INT(cks_cache_hf_lookup(NULL, "model", "org/name", commit, "model.safetensors", &lp,
                                     NULL), CKS_OK);
    CHECK(lp != NULL);
    free(lp);
    unsetenv("HF_HUB_CACHE");
    free(hub);
    rmtree(home);
    free(home);
}

static void offline_report_names_missing_tensors(void)
{
    char *dir = mkcachedir();
    cks_cache *c = open_at(dir, 0);
    CHECK_EQ_INT(put_range(c, KEY_A, 0, 1000, false), CKS_OK);
    const char *names[] = {"embed.weight", "layers.0.norm.weight", "layers.1.norm.weight"};
    cks_range r[] = {{0, 500}, {500, 1000}, {2000, 10}};
    char *msg = NULL;
    CHECK_EQ_INT(cks_cache_describe_missing(c, KEY_A, "model.safetensors", names, r, 3, &msg,
                                            NULL), CKS_OK);
    CHECK(msg != NULL);
    if (msg) {
        CHECK_MSG(strstr(msg, "model.safetensors: 2 of 3 tensors not cached") != NULL, "%s", msg);
        CHECK(strstr(msg, "layers.0.norm.weight") && strstr(msg, "layers.1.norm.weight"));
        CHECK(strstr(msg, "embed.weight") == NULL);
    }
    free(msg);
    CHECK_EQ_INT(cks_cache_describe_missing(c, KEY_A, "f", names, r, 1, &msg, NULL), CKS_OK);
    CHECK(msg == NULL);
    cks_cache_free(c);
    rmtree(dir);
    free(dir);
}

/* Several processes write overlapping ranges of one file into one cache at once; every
 * read anyone does is right, and the cache is consistent afterwards. */
static void concurrent_writers_overlapping_ranges(void)
{
    char *dir = mkcachedir();
    enum { N_PROC = 6, ROUNDS = 25 };
    pid_t pids[N_PROC];
    for (int p = 0; p < N_PROC; p++) {
        pids[p] = fork();
        if (pids[p] == 0) {
            srand((unsigned)(p * 7919 + 1));
            cks_cache *c = open_at(dir, 0);
            int bad = c ? 0 : 1;
            for (int r = 0; r < ROUNDS && !bad; r++) {
                uint64_t off = (uint64_t)(rand() % 4000) * 1000;
                size_t len = (size_t)(rand() % 400 + 1) * 1000 + (size_t)(rand() % 999);
                const char *key = (r % 3 == 0) ? KEY_C : KEY_A;
                bool z = (r % 3 == 0);
                cks_range want = {off, len}, *miss = NULL;
                size_t nm = 0;
                if (cks_cache_missing(c, key, &want, 1, &miss, &nm, NULL) != CKS_OK)
                    bad = 2;
                for (size_t i = 0; i < nm && !bad; i++)
                    if (put_range(c, key, miss[i].offset, (size_t)miss[i].length, z) != CKS_OK)
                        bad = 3;
                free(miss);
                int g = get_range(c, key, off, len, z);
                if (g == -1)
                    bad = 4; /* wrong bytes: the one unforgivable outcome */
                else if (g != 1 && put_range(c, key, off, len, z) != CKS_OK)
                    bad = 5;
            }
            cks_cache_free(c);
            _exit(bad);
        }
    }
    for (int p = 0; p < N_PROC; p++) {
        int st = 0;
        waitpid(pids[p], &st, 0);
        CHECK_MSG(WIFEXITED(st) && WEXITSTATUS(st) == 0, "child %d status %d", p, st);
    }
    cks_cache *c = open_at(dir, 0);
    cks_cache_verify_report rep;
    CHECK_EQ_INT(cks_cache_verify(c, false, &rep, NULL), CKS_OK);
    CHECK_EQ_INT(rep.bad_extents, 0);
    CHECK_EQ_INT(rep.stale_temp, 0);
    cks_cache_verify_report_release(&rep);
    /* whatever is cached is right */
    cks_cache_entry *v = NULL;
    size_t n = 0;
    CHECK_EQ_INT(cks_cache_list(c, &v, &n, NULL), CKS_OK);
    CHECK_EQ_INT(n, 2);
    cks_cache_entries_free(v, n);
    for (uint64_t off = 0; off < 4400000; off += 50000) {
        int g1 = get_range(c, KEY_A, off, 50000, false), g2 = get_range(c, KEY_C, off, 50000, true);
        CHECK(g1 >= 0 && g2 >= 0);
    }
    cks_cache_free(c);
    rmtree(dir);
    free(dir);
}

/* kill -9 a writer at many points of a large fetch; afterwards no entry is bad, nothing
 * half-written is visible, and a rerun completes with the right bytes. */
static void kill9_during_writes_leaves_cache_consistent(void)
{
    char *dir = mkcachedir();
    const size_t total = 24u * 1024 * 1024, piece = 3u * 1024 * 1024 + 4321;
    for (int round = 0; round < 12; round++) {
        pid_t pid = fork();
        if (pid == 0) {
            cks_cache *c = open_at(dir, 0);
            /* pieces in a round-dependent order, so merges and splits happen mid-kill */
            for (size_t k = 0; k * piece < total; k++) {
                size_t idx = (k * 5 + (size_t)round) % ((total + piece - 1) / piece);
                uint64_t off = (uint64_t)idx * piece;
                size_t len = off + piece > total ? total - off : piece;
                put_range(c, round % 2 ? KEY_A : KEY_C, off, len, round % 2 == 0);
            }
            cks_cache_free(c);
            _exit(0);
        }
        struct timespec ts = {0, (long)(5 + (round * 37) % 120) * 1000 * 1000};
        nanosleep(&ts, NULL);
        kill(pid, SIGKILL);
        int st;
        waitpid(pid, &st, 0);
    }
    cks_cache *c = open_at(dir, 0);
    cks_cache_verify_report rep;
    CHECK_EQ_INT(cks_cache_verify(c, false, &rep, NULL), CKS_OK);
    CHECK_EQ_INT(rep.bad_extents, 0);
    CHECK_EQ_INT(rep.bad_meta, 0);
    cks_cache_verify_report_release(&rep);
    /* rerun: fetch what is missing, then everything reads back exactly */
    static const char *const keys[] = {KEY_A, KEY_C};
    for (int i = 0; i < 2; i++) {
        bool z = i == 1;
        cks_range want = {0, total}, *miss = NULL;
        size_t nm = 0;
        CHECK_EQ_INT(cks_cache_missing(c, keys[i], &want, 1, &miss, &nm, NULL), CKS_OK);
        for (size_t m = 0; m < nm; m++)
            CHECK_EQ_INT(put_range(c, keys[i], miss[m].offset, (size_t)miss[m].length, z), CKS_OK);
        free(miss);
        CHECK_EQ_INT(get_range(c, keys[i], 0, total, z), 1);
    }
    cks_cache_free(c);
    rmtree(dir);
    free(dir);
}

/* A 4 MiB tmpfs fills up: a clear NoSpace error, no temporary left behind, and everything
 * stored before is still there and right. */
static void disk_full_is_a_clear_error(void)
{
    char *dir = mkcachedir();
    if (geteuid() != 0 || mount("cks-test", dir, "tmpfs", 0, "size=4m") != 0) {
        rmtree(dir);
        free(dir);
        SKIP("cannot mount a tmpfs here (%s)", geteuid() ? "not root" : strerror(errno));
    }
    cks_cache *c = open_at(dir, 0);
    CHECK_EQ_INT(put_range(c, KEY_A, 0, 1024 * 1024, false), CKS_OK);
    cks_diag d = {{0}};
    size_t big = 8u * 1024 * 1024;
    unsigned char *buf = malloc(big);
    fill(buf, 0, big, false);
    cks_err e = cks_cache_write(c, KEY_B, 0, buf, big, &d);
    CHECK_EQ_INT(e, CKS_ERR_NO_SPACE);
    CHECK_MSG(strstr(d.text, "no space") != NULL, "%s", d.text);
    char **notes = NULL;
    size_t nn = cks_cache_take_notes(c, &notes);
    CHECK(nn == 1 && strstr(notes[0], "no space left"));
    cks_cache_free_notes(notes, nn);
    free(buf);
    CHECK_EQ_INT(get_range(c, KEY_A, 0, 1024 * 1024, false), 1);
    CHECK_EQ_INT(get_range(c, KEY_B, 0, 100, false), 0);
    cks_cache_verify_report rep;
    CHECK_EQ_INT(cks_cache_verify(c, false, &rep, NULL), CKS_OK);
    CHECK_EQ_INT(rep.bad_extents, 0);
    CHECK_EQ_INT(rep.stale_temp, 0);
    cks_cache_verify_report_release(&rep);
    /* metadata too */
    char *m = calloc(1, 6u * 1024 * 1024);
    for (size_t i = 0; i < 6u * 1024 * 1024; i++)
        m[i] = (char)pat(i);
    CHECK_EQ_INT(cks_cache_meta_put(c, "header", KEY_B, m, 6u * 1024 * 1024, NULL),
                 CKS_ERR_NO_SPACE);
    free(m);
    char *cmd = NULL;
    int tmp_left = -1;
    if (asprintf(&cmd, "ls -A '%s/tmp' | wc -l", dir) >= 0) {
        FILE *f = popen(cmd, "r");
        if (f && fscanf(f, "%d", &tmp_left) != 1)
            tmp_left = -1;
        if (f)
            pclose(f);
    }
    free(cmd);
    CHECK_EQ_INT(tmp_left, 0);
    cks_cache_free(c);
    umount2(dir, MNT_DETACH);
    rmtree(dir);
    free(dir);
}

/* Count the entries of a directory (-1 when it cannot be read). */
static int count_entries(const char *dir)
{
    DIR *d = opendir(dir);
    int n = 0;
    struct dirent *e;
    if (!d)
        return -1;
    while ((e = readdir(d)) != NULL)
        n += e->d_name[0] != '.';
    closedir(d);
    return n;
}

/* A shared cache is writable by others: links planted as a key's lock or pin file, as a key
 * directory, as a shard directory or as a metadata namespace must never make the cache
 * create, overwrite or delete anything outside it. Writes through them fail (a cache
 * failure costs a refetch, never data) and everything outside stays byte for byte. */
static void planted_links_never_reach_outside(void)
{
    char *dir = mkcachedir(), *outside = mkcachedir();
    char *p = NULL, *victim = NULL, *target = NULL, *shard = NULL;
    CHECK(asprintf(&victim, "%s/victim", outside) >= 0);
    FILE *f = fopen(victim, "w");
    CHECK(f != NULL);
    if (f) {
        fputs("precious", f);
        fclose(f);
    }
    cks_cache *c = open_at(dir, 0);
    CHECK_EQ_INT(put_range(c, KEY_A, 0, 4096, false), CKS_OK);
    cks_cache_free(c);
    /* 1. lock -> a file outside (the reported case: it was opened O_RDWR|O_CREAT and its
     *    first 8 bytes overwritten with the generation counter); pin -> a path outside */
    CHECK(asprintf(&p, "%s/files/aa/s-%s/lock", dir, KEY_A + 7) >= 0);
    unlink(p);
    CHECK(symlink(victim, p) == 0);
    free(p);
    CHECK(asprintf(&p, "%s/files/aa/s-%s/pin", dir, KEY_A + 7) >= 0);
    unlink(p);
    CHECK(asprintf(&target, "%s/created-by-pin", outside) >= 0);
    CHECK(symlink(target, p) == 0);
    free(p);
    /* 2. a key directory that is a link to a directory outside */
    CHECK(asprintf(&shard, "%s/files/bb", dir) >= 0);
    CHECK(mkdir(shard, 0755) == 0);
    CHECK(asprintf(&p, "%s/s-%s", shard, KEY_B + 7) >= 0);
    CHECK(symlink(outside, p) == 0);
    free(p);
    /* 3. a shard directory that is a link */
    CHECK(asprintf(&p, "%s/files/cc", dir) >= 0);
    CHECK(symlink(outside, p) == 0);
    free(p);
    /* 4. a metadata namespace that is a link */
    CHECK(asprintf(&p, "%s/meta/header", dir) >= 0);
    CHECK(symlink(outside, p) == 0);
    free(p);

    c = open_at(dir, 0);
    cks_diag d = {{0}};
    unsigned char buf[4096];
    fill(buf, 8192, sizeof buf, false);
    cks_err e = cks_cache_write(c, KEY_A, 8192, buf, sizeof buf, &d);
    CHECK_MSG(e == CKS_ERR_IO && strstr(d.text, "lock"), "write through a planted lock: %s %s",
              cks_strerror(e), d.text);
    cks_cache_pin(c, KEY_A);
    e = cks_cache_write(c, KEY_B, 0, buf, sizeof buf, &d);
    CHECK_MSG(e == CKS_ERR_IO, "write into a linked key directory: %s %s", cks_strerror(e), d.text);
    CHECK_EQ_INT(get_range(c, KEY_B, 0, 16, false), 0);
    e = cks_cache_write(c, KEY_C, 0, buf, sizeof buf, &d);
    CHECK_MSG(e == CKS_ERR_IO, "write under a linked shard directory: %s %s", cks_strerror(e), d.text);
    e = cks_cache_meta_put(c, "header", "k", "v", 1, &d);
    CHECK_MSG(e == CKS_ERR_IO, "metadata into a linked namespace: %s %s", cks_strerror(e), d.text);
    bool hit = true;
    char *data = NULL;
    size_t len = 0;
    CHECK_EQ_INT(cks_cache_meta_get(c, "header", "k", -1, &data, &len, &hit, NULL), CKS_OK);
    CHECK(!hit);
    free(data);
    uint64_t removed = 0;
    CHECK_EQ_INT(cks_cache_clear(c, &removed, NULL), CKS_OK);
    cks_cache_free(c);

    f = fopen(victim, "r");
    char back[32] = "";
    if (f) {
        if (!fgets(back, sizeof back, f))
            back[0] = '\0';
        fclose(f);
    }
    CHECK_EQ_STR(back, "precious");
    CHECK_MSG(access(target, F_OK) != 0, "%s was created through a planted pin link", target);
    CHECK_EQ_INT(count_entries(outside), 1); /* only the victim: nothing created or deleted */
    rmtree(dir);
    rmtree(outside);
    free(dir);
    free(outside);
    free(victim);
    free(target);
    free(shard);
}

/* A whole file held in the cache whose bytes are not the file (a transfer that was wrong, a
 * process killed before its hash concluded): `cache verify` hashes every whole LFS file a
 * cached listing names, reports it, and --repair drops it; a right one is marked verified;
 * one held in part is counted, not judged. Forgetting a listing removes both its keys. */
static void cache_verify_checks_listed_whole_files(void)
{
    char *dir = mkcachedir();
    cks_cache *c = open_at(dir, 0);
    const size_t n = 300000;
    unsigned char *good = malloc(n);
    fill(good, 0, n, false);
    char good_hex[65], key_good[72], key_bad[72], key_part[72];
    cks_sha256_hex(good, n, good_hex);
    snprintf(key_good, sizeof key_good, "sha256:%s", good_hex);
    /* "bad": listed with a SHA-256 its cached bytes do not have */
    snprintf(key_bad, sizeof key_bad, "%s", KEY_B);
    snprintf(key_part, sizeof key_part, "%s", KEY_C);
    CHECK_EQ_INT(cks_cache_write(c, key_good, 0, good, n, NULL), CKS_OK);
    CHECK_EQ_INT(cks_cache_write(c, key_bad, 0, good, n, NULL), CKS_OK);
    CHECK_EQ_INT(cks_cache_write(c, key_part, 0, good, 1000, NULL), CKS_OK);
    cks_hub_repo r = {0};
    cks_hub_file files[3] = {{0}};
    r.type = CKS_REPO_MODEL;
    r.repo_id = "org/name";
    r.revision = "main";
    strcpy(r.commit, "0123456789abcdef0123456789abcdef01234567");
    r.n_files = 3;
    r.files = files;
    const char *paths[3] = {"a.safetensors", "b.safetensors", "c.safetensors"};
    const char *keys[3] = {key_good, key_bad, key_part};
    for (int i = 0; i < 3; i++) {
        files[i].path = (char *)paths[i];
        files[i].size = n;
        files[i].size_known = true;
        files[i].lfs = true;
        strcpy(files[i].sha256, keys[i] + 7);
    }
    CHECK_EQ_INT(cks_cache_repo_put(c, "http://h", "org/name", "main", &r, NULL), CKS_OK);
    cks_cache_verify_report rep;
    CHECK_EQ_INT(cks_cache_verify(c, false, &rep, NULL), CKS_OK);
    CHECK_EQ_INT(cks_cache_verify_listed(c, false, &rep, NULL), CKS_OK);
    CHECK_EQ_INT(rep.checked_files, 2);
    CHECK_EQ_INT(rep.bad_files, 1);
    CHECK_EQ_INT(rep.partial_files, 1);
    CHECK(rep.n_bad == 1 && strstr(rep.bad[0], "b.safetensors") && strstr(rep.bad[0], good_hex));
    cks_cache_verify_report_release(&rep);
    CHECK(cks_cache_is_verified(c, key_good, n));            /* the right one is marked */
    CHECK_EQ_INT(get_range(c, key_bad, 0, 100, false), 1);   /* without --repair: still there */
    CHECK_EQ_INT(cks_cache_verify(c, true, &rep, NULL), CKS_OK);
    CHECK_EQ_INT(cks_cache_verify_listed(c, true, &rep, NULL), CKS_OK);
    CHECK_EQ_INT(rep.bad_files, 1);
    cks_cache_verify_report_release(&rep);
    CHECK_EQ_INT(get_range(c, key_bad, 0, 100, false), 0);   /* --repair dropped it */
    CHECK_EQ_INT(get_range(c, key_good, 0, 100, false), 1);
    memset(&rep, 0, sizeof rep);
    CHECK_EQ_INT(cks_cache_verify_listed(c, false, &rep, NULL), CKS_OK);
    CHECK_EQ_INT(rep.bad_files, 0);
    cks_cache_verify_report_release(&rep);
    /* a listing that failed a check is forgotten under both its keys */
    CHECK_EQ_INT(cks_cache_repo_put(c, "http://h", "org/name", "main", &r, NULL), CKS_OK);
    CHECK_EQ_INT(cks_cache_repo_forget(c, "http://h", CKS_REPO_MODEL, "org/name", "main", r.commit, NULL),
                 CKS_OK);
    cks_hub_repo *got = NULL;
    bool hit = true;
    CHECK_EQ_INT(cks_cache_repo_get(c, "http://h", CKS_REPO_MODEL, "org/name", "main", &got, &hit, NULL), CKS_OK);
    CHECK(!hit);
    CHECK_EQ_INT(cks_cache_repo_get(c, "http://h", CKS_REPO_MODEL, "org/name", r.commit, &got, &hit, NULL), CKS_OK);
    CHECK(!hit);
    /* dropping a key removes every extent and the mark */
    CHECK_EQ_INT(cks_cache_drop(c, key_good, "test", NULL), CKS_OK);
    CHECK(!cks_cache_is_verified(c, key_good, n));
    CHECK_EQ_INT(get_range(c, key_good, 0, 100, false), 0);
    free(good);
    cks_cache_free(c);
    rmtree(dir);
    free(dir);
}

static void bad_layout_is_refused(void)
{
    char *dir = mkcachedir();
    char *p = NULL;
    CHECK(asprintf(&p, "%s/layout", dir) >= 0);
    write_file(p, "something else 9\n", 17);
    cks_cache_opts o = {.dir = dir};
    cks_cache *c = NULL;
    cks_diag d = {{0}};
    CHECK_EQ_INT(cks_cache_open(&o, &c, &d), CKS_ERR_CACHE);
    CHECK(c == NULL);
    cks_cache_free(NULL);
    free(p);
    rmtree(dir);
    free(dir);
}


/* Repository listings: a branch expires with the revision TTL, its commit never does. */
static void repo_listing_cached_by_revision_and_commit(void)
{
    char *dir = mkcachedir();
    cks_cache_opts o = {.dir = dir, .revision_ttl_seconds = 1};
    cks_cache *c = NULL;
    CHECK_EQ_INT(cks_cache_open(&o, &c, NULL), CKS_OK);
    cks_hub_repo *r = calloc(1, sizeof *r);
    r->type = CKS_REPO_MODEL;
    r->repo_id = strdup("org/name");
    r->revision = strdup("main");
    strcpy(r->commit, "0123456789abcdef0123456789abcdef01234567");
    r->n_files = 2;
    r->files = calloc(2, sizeof *r->files);
    r->files[0].path = strdup("config.json");
    r->files[0].size = 22;
    r->files[0].size_known = true;
    strcpy(r->files[0].blob_id, "89abcdef0123456789abcdef0123456701234567");
    r->files[1].path = strdup("model.safetensors");
    r->files[1].size = 123456789012ull;
    r->files[1].size_known = true;
    r->files[1].lfs = true;
    strcpy(r->files[1].sha256, KEY_A + 7);
    const char *ep = "http://127.0.0.1:1";
    cks_hub_repo *got = NULL;
    bool hit = true;
    CHECK_EQ_INT(cks_cache_repo_get(c, ep, CKS_REPO_MODEL, "org/name", "main", &got, &hit, NULL),
                 CKS_OK);
    CHECK(!hit && got == NULL);
    CHECK_EQ_INT(cks_cache_repo_put(c, ep, "org/name", "main", r, NULL), CKS_OK);
    CHECK_EQ_INT(cks_cache_repo_get(c, ep, CKS_REPO_MODEL, "org/name", "main", &got, &hit, NULL),
                 CKS_OK);
    CHECK(hit && got);
    if (got) {
        CHECK_EQ_STR(got->commit, r->commit);
        CHECK_EQ_INT(got->n_files, 2);
        CHECK_EQ_STR(got->files[1].path, "model.safetensors");
        CHECK_EQ_INT(got->files[1].size, 123456789012ull);
        CHECK(got->files[1].lfs && strcmp(got->files[1].sha256, KEY_A + 7) == 0);
        CHECK_EQ_STR(got->files[0].blob_id, r->files[0].blob_id);
        CHECK(!got->files[0].lfs && got->files[0].sha256[0] == '\0');
    }
    cks_hub_repo_free(got);
    /* another endpoint or repo type is another answer */
    CHECK_EQ_INT(cks_cache_repo_get(c, "http://other", CKS_REPO_MODEL, "org/name", "main", &got,
                                    &hit, NULL), CKS_OK);
    CHECK(!hit);
    CHECK_EQ_INT(cks_cache_repo_get(c, ep, CKS_REPO_DATASET, "org/name", "main", &got, &hit, NULL),
                 CKS_OK);
    CHECK(!hit);
    struct timespec ts = {2, 100 * 1000 * 1000};
    nanosleep(&ts, NULL);
    CHECK_EQ_INT(cks_cache_repo_get(c, ep, CKS_REPO_MODEL, "org/name", "main", &got, &hit, NULL),
                 CKS_OK);
    CHECK(!hit); /* the branch may have moved */
    CHECK_EQ_INT(cks_cache_repo_get(c, ep, CKS_REPO_MODEL, "org/name", r->commit, &got, &hit, NULL),
                 CKS_OK);
    CHECK(hit && got && strcmp(got->revision, r->commit) == 0);
    cks_hub_repo_free(got);
    cks_hub_repo_free(r);
    cks_cache_free(c);
    rmtree(dir);
    free(dir);
}

/* --offline: name exactly the tensors of each file whose bytes are not cached. */
static void offline_report_for_a_checkpoint(void)
{
    char *dir = mkcachedir();
    cks_cache *c = open_at(dir, 0);
    const char *hdr = "{\"a.weight\":{\"dtype\":\"U8\",\"shape\":[1000],\"data_offsets\":[0,1000]},"
                      "\"b.norm\":{\"dtype\":\"U8\",\"shape\":[24],\"data_offsets\":[1000,1024]}}";
    size_t hl = strlen(hdr), total = 8 + hl + 1024;
    unsigned char *file = calloc(1, total);
    for (int i = 0; i < 8; i++)
        file[i] = (unsigned char)((uint64_t)hl >> (8 * i));
    memcpy(file + 8, hdr, hl);
    cks_source *src = NULL;
    CHECK_EQ_INT(cks_source_from_memory(file, total, "model.safetensors", true, &src, NULL), CKS_OK);
    memcpy(src->sha256_hex, KEY_A + 7, 65);
    cks_source *srcs[1] = {src};
    char *paths[1] = {strdup("model.safetensors")};
    cks_ckpt *ck = NULL;
    CHECK_EQ_INT(cks_ckpt_from_sources("org/name", srcs, paths, 1, &ck, NULL), CKS_OK);
    if (!ck)
        return;
    char *msg = NULL;
    CHECK_EQ_INT(cks_cache_describe_ckpt_missing(c, ck, NULL, 0, &msg, NULL), CKS_OK);
    CHECK(msg && strstr(msg, "model.safetensors: 2 of 2 tensors not cached: a.weight, b.norm"));
    free(msg);
    /* cache the bytes of a.weight only */
    CHECK_EQ_INT(cks_cache_write(c, KEY_A, 8 + hl, file + 8 + hl, 1000, NULL), CKS_OK);
    CHECK_EQ_INT(cks_cache_describe_ckpt_missing(c, ck, NULL, 0, &msg, NULL), CKS_OK);
    CHECK_MSG(msg && strstr(msg, "1 of 2 tensors not cached: b.norm"), "%s", msg ? msg : "(null)");
    free(msg);
    CHECK_EQ_INT(cks_cache_write(c, KEY_A, 8 + hl + 1000, file + 8 + hl + 1000, 24, NULL), CKS_OK);
    CHECK_EQ_INT(cks_cache_describe_ckpt_missing(c, ck, NULL, 0, &msg, NULL), CKS_OK);
    CHECK(msg == NULL);
    cks_ckpt_free(ck);
    free(file);
    cks_cache_free(c);
    rmtree(dir);
    free(dir);
}

/* A partly cached range: the cached bytes are copied, only the gaps are left to fetch. */
static void read_some_fills_cached_parts_and_names_gaps(void)
{
    char *dir = mkcachedir();
    cks_cache *c = open_at(dir, 0);
    CHECK_EQ_INT(put_range(c, KEY_A, 100000, 100000, false), CKS_OK);
    CHECK_EQ_INT(put_range(c, KEY_A, 300000, 100000, false), CKS_OK);
    size_t len = 400000;
    unsigned char *buf = calloc(1, len);
    cks_range *miss = NULL;
    size_t n = 0;
    CHECK_EQ_INT(cks_cache_read_some(c, KEY_A, 50000, buf, len, &miss, &n, NULL), CKS_OK);
    CHECK_EQ_INT(n, 3);
    if (n == 3) {
        CHECK(miss[0].offset == 50000 && miss[0].length == 50000);
        CHECK(miss[1].offset == 200000 && miss[1].length == 100000);
        CHECK(miss[2].offset == 400000 && miss[2].length == 50000);
    }
    CHECK(check_bytes(buf + 50000, 100000, 100000, false));
    CHECK(check_bytes(buf + 250000, 300000, 100000, false));
    free(miss);
    /* fully cached: nothing missing */
    CHECK_EQ_INT(cks_cache_read_some(c, KEY_A, 120000, buf, 1000, &miss, &n, NULL), CKS_OK);
    CHECK(n == 0 && miss == NULL && check_bytes(buf, 120000, 1000, false));
    /* a damaged extent is reported missing, never copied */
    cks_cache_free(c);
    char *p = NULL;
    CHECK(asprintf(&p, "%s/files/aa/s-%s/x-%016x-%016x", dir, KEY_A + 7, 100000, 100000) > 0);
    struct stat st;
    CHECK(stat(p, &st) == 0);
    flip_byte(p, st.st_size - 10);
    free(p);
    c = open_at(dir, 0);
    CHECK_EQ_INT(cks_cache_read_some(c, KEY_A, 100000, buf, 300000, &miss, &n, NULL), CKS_OK);
    /* the damaged [100000, 200000) and the uncached [200000, 300000) form one gap */
    CHECK_EQ_INT(n, 1);
    if (n == 1)
        CHECK_MSG(miss[0].offset == 100000 && miss[0].length == 200000, "%llu+%llu", (unsigned long long)miss[0].offset, (unsigned long long)miss[0].length);
    CHECK(check_bytes(buf + 200000, 300000, 100000, false));
    free(miss);
    free(buf);
    cks_cache_free(c);
    rmtree(dir);
    free(dir);
}

/* A whole, verified file is served by a cache source; damage falls back to the inner
 * source; new bytes under the key remove the verified mark. */
static void cache_source_serves_verified_files(void)
{
    char *dir = mkcachedir();
    cks_cache *c = open_at(dir, 0);
    size_t n = 700000;
    unsigned char *data = malloc(n), *got = malloc(n);
    char key[72];
    fill(data, 0, n, false);
    sha256_hex_of(data, n, key);
    cks_source *inner = NULL, *w = NULL;
    CHECK_EQ_INT(cks_source_from_memory(data, n, "model.safetensors", true, &inner, NULL), CKS_OK);
    CHECK_EQ_INT(cks_cache_write(c, key, 0, data, n, NULL), CKS_OK);
    CHECK(!cks_cache_is_verified(c, key, n));
    CHECK_EQ_INT(cks_cache_source_wrap(c, key, inner, &w, NULL), CKS_OK);
    CHECK(w == NULL); /* not marked: the caller keeps its source */
    CHECK_EQ_INT(cks_cache_mark_verified(c, key, n, NULL), CKS_OK);
    CHECK(cks_cache_is_verified(c, key, n));
    CHECK(!cks_cache_is_verified(c, key, n + 1));
    CHECK_EQ_INT(cks_cache_source_wrap(c, key, inner, &w, NULL), CKS_OK);
    CHECK(w != NULL);
    CHECK(cks_cache_source_is(w) && !cks_cache_source_is(inner) && !cks_cache_source_is(NULL));
    if (w) {
        CHECK_EQ_INT(cks_source_read_at(w, 0, got, n, NULL), CKS_OK);
        CHECK(memcmp(got, data, n) == 0);
        /* damage the stored bytes: the wrapper still answers right, from the inner source */
        char *p = NULL;
        CHECK(asprintf(&p, "%s/files/%.2s/s-%s/x-%016x-%016x", dir, key + 7, key + 7, 0, (unsigned)n) > 0);
        flip_byte(p, 64 + 3 * 32 + 1000);
        free(p);
        memset(got, 0, n);
        CHECK_EQ_INT(cks_source_read_at(w, 0, got, n, NULL), CKS_OK);
        CHECK(memcmp(got, data, n) == 0);
        /* the refetch of the dropped chunk is new bytes: no longer covered by the mark */
        CHECK_EQ_INT(cks_cache_write(c, key, 0, data, n, NULL), CKS_OK);
        CHECK(!cks_cache_is_verified(c, key, n));
        cks_source_free(w);
    } else {
        cks_source_free(inner);
    }
    free(data);
    free(got);
    cks_cache_free(c);
    rmtree(dir);
    free(dir);
}

/* A batch of ranges of one key (cks_cache_write_many, what a fetch of scattered tensors
 * stores): every range reads back exact, the bytes between them stay a miss, adjacent ones
 * merge as single writes do, the batch removes the whole-file mark, a flipped byte in one of
 * its extents is a miss for that range only, and bad arguments are refused. */
static void write_many_stores_each_range(void)
{
    char *dir = mkcachedir();
    cks_cache *c = open_at(dir, 0);
    static const cks_range want[] = {{4096, 8192}, {40000, 30000}, {70000, 5000}, {200000, 65536}};
    const size_t n = sizeof want / sizeof want[0];
    unsigned char *bufs[4];
    const void *data[4];
    for (size_t i = 0; i < n; i++) {
        bufs[i] = malloc((size_t)want[i].length);
        fill(bufs[i], want[i].offset, (size_t)want[i].length, i == 2 /* one compressible */);
        data[i] = bufs[i];
    }
    cks_diag d = {{0}};
    CHECK_EQ_INT(cks_cache_write_many(c, KEY_A, want, data, n, &d), CKS_OK);
    for (size_t i = 0; i < n; i++)
        CHECK_MSG(get_range(c, KEY_A, want[i].offset, (size_t)want[i].length, i == 2) == 1, "range %zu", i);
    /* a read across two merged neighbours: [40000, 75000) is one extent now */
    unsigned char *two = malloc(35000);
    bool hit = false;
    CHECK_EQ_INT(cks_cache_read(c, KEY_A, 40000, two, 30000, &hit, NULL), CKS_OK);
    CHECK(hit && check_bytes(two, 40000, 30000, false));
    free(two);
    CHECK_EQ_INT((int)count_extents(dir, KEY_A), 3);
    /* exactly the bytes between the ranges are missing */
    cks_range all = {0, 300000}, *miss = NULL;
    size_t n_miss = 0;
    CHECK_EQ_INT(cks_cache_missing(c, KEY_A, &all, 1, &miss, &n_miss, NULL), CKS_OK);
    CHECK_EQ_INT((int)n_miss, 4);
    if (n_miss == 4) {
        CHECK(miss[0].offset == 0 && miss[0].length == 4096);
        CHECK(miss[1].offset == 12288 && miss[1].length == 40000 - 12288);
        CHECK(miss[2].offset == 75000 && miss[2].length == 200000 - 75000);
        CHECK(miss[3].offset == 265536 && miss[3].length == 300000 - 265536);
    }
    free(miss);
    /* new bytes under a marked key take the mark away, as a single write does (the mark
     * needs the whole file stored: key B holds [0, 100000) and gets a batch past its end) */
    CHECK_EQ_INT(put_range(c, KEY_B, 0, 100000, false), CKS_OK);
    CHECK_EQ_INT(cks_cache_mark_verified(c, KEY_B, 100000, NULL), CKS_OK);
    CHECK(cks_cache_is_verified(c, KEY_B, 100000));
    static const cks_range more[] = {{100000, 1000}, {150000, 2000}};
    unsigned char *m0 = malloc(1000), *m1 = malloc(2000);
    fill(m0, 100000, 1000, false);
    fill(m1, 150000, 2000, false);
    const void *mdata[] = {m0, m1};
    CHECK_EQ_INT(cks_cache_write_many(c, KEY_B, more, mdata, 2, NULL), CKS_OK);
    CHECK(!cks_cache_is_verified(c, KEY_B, 100000));
    CHECK(get_range(c, KEY_B, 100000, 1000, false) == 1 && get_range(c, KEY_B, 150000, 2000, false) == 1);
    /* the batch's three pieces share one pack file */
    CHECK_EQ_INT((int)count_files(dir, KEY_A, "p-"), 1);
    CHECK_EQ_INT((int)count_files(dir, KEY_A, "x-"), 0);
    /* damage the first range's bytes in it (past its 64-byte header and one table entry): a
     * miss there; the pack goes, its other members are kept as extents of their own */
    uint64_t at = 0;
    char *p = pack_member_path(dir, KEY_A, 4096, &at);
    CHECK(p != NULL);
    if (p)
        flip_byte(p, (off_t)(at + 64 + 32 + 100));
    free(p);
    CHECK_EQ_INT(get_range(c, KEY_A, 4096, 8192, false), 0);
    CHECK_EQ_INT(get_range(c, KEY_A, 200000, 65536, false), 1);
    CHECK_EQ_INT(get_range(c, KEY_A, 40000, 30000, false), 1);
    CHECK_EQ_INT(get_range(c, KEY_A, 70000, 5000, true), 1);
    CHECK_EQ_INT((int)count_files(dir, KEY_A, "p-"), 0);
    CHECK_EQ_INT((int)count_files(dir, KEY_A, "x-"), 2);
    /* contiguous ranges given in any order become one extent; overlapping ones still read
     * back exact */
    static const cks_range rev[] = {{20000, 5000}, {10000, 10000}, {0, 10000}, {30000, 100}, {30050, 100}};
    unsigned char *rb[5];
    const void *rdata[5];
    for (size_t i = 0; i < 5; i++) {
        rb[i] = malloc((size_t)rev[i].length);
        fill(rb[i], rev[i].offset, (size_t)rev[i].length, false);
        rdata[i] = rb[i];
    }
    CHECK_EQ_INT(cks_cache_write_many(c, KEY_C, rev, rdata, 5, NULL), CKS_OK);
    CHECK_EQ_INT(get_range(c, KEY_C, 0, 25000, false), 1);
    CHECK_EQ_INT(get_range(c, KEY_C, 30000, 150, false), 1);
    CHECK_EQ_INT((int)count_extents(dir, KEY_C), 2);
    for (size_t i = 0; i < 5; i++)
        free(rb[i]);
    /* nothing to store is fine; a range without its bytes is refused */
    CHECK_EQ_INT(cks_cache_write_many(c, KEY_A, NULL, NULL, 0, NULL), CKS_OK);
    const void *none[] = {NULL};
    CHECK_EQ_INT(cks_cache_write_many(c, KEY_A, more, none, 1, NULL), CKS_ERR_INVALID_ARG);
    CHECK_EQ_INT(cks_cache_write_many(c, "not a key", more, mdata, 2, NULL), CKS_ERR_INVALID_ARG);
    free(m0);
    free(m1);
    for (size_t i = 0; i < n; i++)
        free(bufs[i]);
    cks_cache_free(c);
    rmtree(dir);
    free(dir);
}

/* A batch of small pieces is one pack file: another process reads every member back from
 * it, `cache ls` and `cache verify` count its members, a damaged directory or member costs
 * exactly those bytes, a later long write over the members reads back exact, and eviction
 * takes the pack whole. Big pieces and full packs get files of their own. */
static void pack_holds_a_batch_of_small_pieces(void)
{
    char *dir = mkcachedir();
    cks_cache *c = open_at(dir, 0);
    enum { N = 300, STRIDE = 50000 };
    cks_range want[N];
    const void *data[N];
    unsigned char *bufs[N];
    uint64_t logical = 0;
    for (size_t i = 0; i < N; i++) {
        /* 1 KiB to ~40 KiB, in shuffled order, every seventh compressible */
        size_t j = (i * 7919) % N;
        want[i] = (cks_range){(uint64_t)j * STRIDE + 13, 1024 + (j * 131) % 40000};
        bufs[i] = malloc((size_t)want[i].length);
        fill(bufs[i], want[i].offset, (size_t)want[i].length, j % 7 == 0);
        data[i] = bufs[i];
        logical += want[i].length;
    }
    /* one big piece in the same batch stays an extent file of its own */
    static unsigned char big[5u << 20];
    fill(big, 100000000, sizeof big, false);
    cks_range all[N + 1];
    const void *all_data[N + 1];
    memcpy(all, want, sizeof want);
    memcpy(all_data, data, sizeof data);
    all[N] = (cks_range){100000000, sizeof big};
    all_data[N] = big;
    CHECK_EQ_INT(cks_cache_write_many(c, KEY_A, all, all_data, N + 1, NULL), CKS_OK);
    CHECK_EQ_INT((int)count_files(dir, KEY_A, "p-"), 1);
    CHECK_EQ_INT((int)count_files(dir, KEY_A, "x-"), 1);
    cks_cache_free(c);

    /* another process: everything from the directory scan */
    c = open_at(dir, 0);
    int bad = 0;
    for (size_t i = 0; i < N; i++)
        bad += get_range(c, KEY_A, want[i].offset, (size_t)want[i].length, (want[i].offset / STRIDE) % 7 == 0) != 1;
    CHECK_EQ_INT(bad, 0);
    CHECK_EQ_INT(get_range(c, KEY_A, 100000000, sizeof big, false), 1);
    /* a read inside one member, across none of the others */
    CHECK_EQ_INT(get_range(c, KEY_A, want[5].offset + 100, 500, (want[5].offset / STRIDE) % 7 == 0), 1);
    cks_cache_entry *v = NULL;
    size_t n = 0;
    CHECK_EQ_INT(cks_cache_list(c, &v, &n, NULL), CKS_OK);
    for (size_t i = 0; i < n; i++) {
        if (strcmp(v[i].key, KEY_A) != 0)
            continue;
        CHECK_EQ_INT(v[i].n_extents, N + 1);
        CHECK_EQ_INT(v[i].logical_bytes, logical + sizeof big);
    }
    cks_cache_entries_free(v, n);
    cks_cache_verify_report rep;
    CHECK_EQ_INT(cks_cache_verify(c, false, &rep, NULL), CKS_OK);
    CHECK_EQ_INT(rep.checked_extents, N + 1);
    CHECK_EQ_INT(rep.checked_bytes, logical + sizeof big);
    CHECK_EQ_INT(rep.bad_extents, 0);
    cks_cache_verify_report_release(&rep);

    /* a long write over the first ten members' stretch merges them in; all reads back */
    size_t span = 10 * STRIDE;
    unsigned char *long_buf = malloc(span);
    fill(long_buf, 0, span, false);
    for (size_t i = 0; i < N; i++) /* the compressible members keep their own pattern */
        if (want[i].offset < span && (want[i].offset / STRIDE) % 7 == 0)
            fill(long_buf + want[i].offset, want[i].offset, (size_t)want[i].length, true);
    cks_range lw = {0, span};
    const void *lwd[] = {long_buf};
    CHECK_EQ_INT(cks_cache_write_many(c, KEY_A, &lw, lwd, 1, NULL), CKS_OK);
    unsigned char *back = malloc(span);
    bool hit = false;
    CHECK_EQ_INT(cks_cache_read(c, KEY_A, 0, back, span, &hit, NULL), CKS_OK);
    CHECK(hit && memcmp(back, long_buf, span) == 0);
    CHECK_EQ_INT((int)count_files(dir, KEY_A, "p-"), 1); /* the pack stays: others read it */
    cks_cache_free(c);

    /* a damaged directory: the pack is dropped when the key is scanned, its bytes are
     * missing (not wrong), and what the long write stored still reads */
    uint64_t at = 0;
    char *pp = pack_member_path(dir, KEY_A, want[0].offset, &at);
    CHECK(pp != NULL);
    if (pp)
        flip_byte(pp, 64 + 5);
    free(pp);
    c = open_at(dir, 0);
    size_t later = 0; /* a member the long write did not cover */
    while (later < N && want[later].offset < span + STRIDE)
        later++;
    CHECK(later < N);
    CHECK_EQ_INT(get_range(c, KEY_A, want[later].offset, (size_t)want[later].length, false), 0);
    CHECK_EQ_INT((int)count_files(dir, KEY_A, "p-"), 0);
    hit = false;
    CHECK_EQ_INT(cks_cache_read(c, KEY_A, 0, back, span, &hit, NULL), CKS_OK);
    CHECK(hit && memcmp(back, long_buf, span) == 0);
    char **notes = NULL;
    size_t nn = cks_cache_take_notes(c, &notes);
    CHECK(nn >= 1 && strstr(notes[0], "damaged directory") != NULL);
    cks_cache_free_notes(notes, nn);
    cks_cache_free(c);
    free(back);
    free(long_buf);

    /* more pieces than a pack holds: two packs; a cap evicts a pack whole */
    enum { M = 1100 };
    cks_range *many = malloc(M * sizeof *many);
    const void **many_data = malloc(M * sizeof *many_data);
    unsigned char *one = malloc(512);
    for (size_t i = 0; i < M; i++) {
        many[i] = (cks_range){(uint64_t)i * 1000, 512};
        many_data[i] = one;
    }
    fill(one, 0, 512, false); /* (the bytes of every piece alike: only counting here) */
    c = open_at(dir, 0);
    CHECK_EQ_INT(cks_cache_write_many(c, KEY_B, many, many_data, M, NULL), CKS_OK);
    CHECK_EQ_INT((int)count_files(dir, KEY_B, "p-"), 2);
    CHECK_EQ_INT(count_extents(dir, KEY_B), M);
    cks_cache_free(c);
    c = open_at(dir, 0);
    uint64_t ev_n = 0, ev_b = 0;
    CHECK_EQ_INT(cks_cache_prune(c, 0, &ev_n, &ev_b, NULL), CKS_OK);
    CHECK_EQ_INT(count_extents(dir, KEY_B), 0);
    CHECK_EQ_INT((int)count_files(dir, KEY_B, "p-"), 0);
    cks_cache_stat st;
    CHECK_EQ_INT(cks_cache_stat_get(c, &st, NULL), CKS_OK);
    CHECK_EQ_INT(st.n_extents, 0);
    cks_cache_free(c);
    free(many);
    free(many_data);
    free(one);
    for (size_t i = 0; i < N; i++)
        free(bufs[i]);
    rmtree(dir);
    free(dir);
}

TEST_MAIN(T(checksum_matches_portable_and_catches_flips), T(roundtrip_and_missing),
          T(adjacent_and_overlapping_extents_merge), T(streamed_blocks_are_not_rewritten), T(compression_saves_space_and_reads_back),
          T(flipped_byte_is_a_miss_and_refetch_repairs), T(metadata_roundtrip_ttl_and_corruption),
          T(whole_file_sha256_check), T(lru_eviction_respects_cap_and_pins), T(hf_home_reuse),
          T(offline_report_names_missing_tensors), T(concurrent_writers_overlapping_ranges),
          T(kill9_during_writes_leaves_cache_consistent), T(disk_full_is_a_clear_error),
          T(bad_layout_is_refused), T(planted_links_never_reach_outside),
          T(cache_verify_checks_listed_whole_files),
          T(repo_listing_cached_by_revision_and_commit),
          T(offline_report_for_a_checkpoint),
          T(read_some_fills_cached_parts_and_names_gaps),
          T(cache_source_serves_verified_files),
          T(write_many_stores_each_range), T(pack_holds_a_batch_of_small_pieces))
