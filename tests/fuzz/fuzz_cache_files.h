/*
 * tests/fuzz/fuzz_cache_files.h — what the cache fuzz targets share: little-endian fields of
 * the file images they fix up, and a scratch cache whose one key directory is made afresh
 * for each input, holding the key file and the one file the input becomes.
 */
#ifndef CKS_FUZZ_CACHE_FILES_H
#define CKS_FUZZ_CACHE_FILES_H

#include <dirent.h>
#include <inttypes.h>
#include <stdbool.h>
#include <openssl/evp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ckptscope/cache.h"
#include "storage/cache_internal.h"

static inline uint32_t get32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static inline uint64_t get64(const uint8_t *p)
{
    return get32(p) | (uint64_t)get32(p + 4) << 32;
}

static inline void put32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static void rm_tree(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    char p[4096];
    while (d && (e = readdir(d)) != NULL) {
        struct stat st;
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
            continue;
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        if (lstat(p, &st) == 0 && S_ISDIR(st.st_mode))
            rm_tree(p);
        else
            unlink(p);
    }
    if (d)
        closedir(d);
    rmdir(dir);
}

static char fuzz_root[64];

static void fuzz_cleanup(void)
{
    if (fuzz_root[0])
        rm_tree(fuzz_root);
}

/* The scratch cache of this process (removed at exit). */
static const char *fuzz_cache_root(const char *name)
{
    if (!fuzz_root[0]) {
        snprintf(fuzz_root, sizeof fuzz_root, "/tmp/cks-fuzz-%s-%ld", name, (long)getpid());
        mkdir(fuzz_root, 0755);
        atexit(fuzz_cleanup);
    }
    return fuzz_root;
}

/* Make the directory of `key` (an LFS key: files/<hex[0:2]>/s-<hex>) afresh, with its key file
 * and one file holding img, named <kind>-<a:16 hex>-<b:16 hex> as its header claims; then open
 * the cache (NULL when it cannot). The cache's layout stays, so opening it costs no fsync. */
static cks_cache *fuzz_cache_with(const char *root, const char *key, char kind, uint64_t a, uint64_t b,
                                  const uint8_t *img, size_t size)
{
    char keydir[512], path[700];
    const char *hex = key + 7;
    cks_cache *c = NULL;
    snprintf(keydir, sizeof keydir, "%s/files/%.2s/s-%s", root, hex, hex);
    rm_tree(keydir);
    snprintf(path, sizeof path, "%s/files", root);
    mkdir(path, 0755);
    snprintf(path, sizeof path, "%s/files/%.2s", root, hex);
    mkdir(path, 0755);
    mkdir(keydir, 0755);
    snprintf(path, sizeof path, "%s/key", keydir);
    FILE *f = fopen(path, "w");
    if (f) {
        fputs(key, f);
        fclose(f);
    }
    snprintf(path, sizeof path, "%s/%c-%016" PRIx64 "-%016" PRIx64, keydir, kind, a, b);
    f = fopen(path, "wb");
    if (f) {
        fwrite(img, 1, size, f);
        fclose(f);
    }
    cks_cache_opts o = {.dir = root, .revision_ttl_seconds = -1};
    if (cks_cache_open(&o, &c, NULL) != CKS_OK)
        c = NULL;
    return c;
}

/* An extent image (a file of its own, or a pack member at img[base..]) made to pass the
 * checks a mutation could never guess: the key's fingerprint (first half of its SHA-256,
 * as the writer puts it), the checksum of every raw chunk inside the file, and the header
 * checksum. What the chunks hold, how the table points at them and zstd payloads stay as
 * the fuzzer made them. */
static void fuzz_fix_extent_image(uint8_t *img, size_t size, uint64_t base, const char *key)
{
    enum { HEADER_LEN = 64, ENTRY_LEN = 32, CHUNK_LEN = 256 * 1024 };
    if (base > size || size - base < HEADER_LEN)
        return;
    uint8_t *m = img + base;
    size_t room = size - (size_t)base;
    unsigned char fp[32];
    unsigned fl = 0;
    EVP_Digest(key, strlen(key), fp, &fl, EVP_sha256(), NULL);
    memcpy(m + 32, fp, 16);
    uint32_t n_chunks = get32(m + 28);
    size_t table = (size_t)n_chunks * ENTRY_LEN;
    if (n_chunks > 256 || HEADER_LEN + table > room)
        return;
    for (uint32_t i = 0; i < n_chunks; i++) {
        uint8_t *ent = m + HEADER_LEN + (size_t)i * ENTRY_LEN;
        uint64_t soff = get64(ent);
        uint32_t slen = get32(ent + 8), method = get32(ent + 12), sum[4];
        if (method == 0 && soff <= room && slen <= room - soff && slen <= CHUNK_LEN) {
            cks_cache_checksum(m + soff, slen, sum);
            for (int k = 0; k < 4; k++)
                put32(ent + 16 + 4 * k, sum[k]);
        }
    }
    uint32_t crc = cks_crc32c(0, m, 60);
    crc = cks_crc32c(crc, m + HEADER_LEN, table);
    put32(m + 60, crc);
}



/* Read [off, off+want) of key twice and through read_some; trap on a broken invariant: a
 * read that hits returns the same bytes twice, one that reports no gap holds every byte, and
 * every gap lies inside the range asked for. */
static void fuzz_check_range(cks_cache *c, const char *key, uint64_t off, uint64_t want)
{
    uint8_t *a = malloc((size_t)want), *b = malloc((size_t)want);
    cks_range *gaps = NULL, *miss = NULL;
    size_t n_gaps = 0, n_miss = 0;
    cks_range r = {off, want};
    (void)cks_cache_missing(c, key, &r, 1, &miss, &n_miss, NULL);
    bool hit = false, hit2 = false;
    if (cks_cache_read(c, key, off, a, (size_t)want, &hit, NULL) == CKS_OK && hit) {
        if (cks_cache_read(c, key, off, b, (size_t)want, &hit2, NULL) != CKS_OK || !hit2 ||
            memcmp(a, b, (size_t)want) != 0)
            __builtin_trap(); /* verified bytes must read back the same */
    }
    if (cks_cache_read_some(c, key, off, b, (size_t)want, &gaps, &n_gaps, NULL) == CKS_OK && n_gaps == 0 &&
        hit && memcmp(a, b, (size_t)want) != 0)
        __builtin_trap();
    for (size_t i = 0; i < n_gaps; i++)
        if (gaps[i].offset < off || gaps[i].length == 0 || gaps[i].length > want ||
            gaps[i].offset - off > want - gaps[i].length)
            __builtin_trap(); /* a gap outside the range asked for */
    free(gaps);
    free(miss);
    free(a);
    free(b);
}

#endif
