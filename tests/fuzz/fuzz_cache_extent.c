/*
 * Fuzz target: the cache's extent reader. The input is the content of one extent file of a
 * shared cache (which anyone with write access could have planted or damaged), read through
 * the public API (cks_cache_read, cks_cache_read_some, cks_cache_missing): header, chunk
 * table, stored offsets and lengths, raw and zstd chunks, checksums, and the salvage of a
 * damaged extent's good chunks.
 *
 * So that mutations get past what they could never guess, the target writes the key's
 * fingerprint into the header, fixes the header checksum, and fixes the checksum of every
 * raw chunk that lies inside the file; what the chunks hold, how the table points at them
 * and zstd payloads stay as the fuzzer made them. The file is named from the offset and
 * length its header states. Invariants: a read that hits returns the same bytes twice; a
 * read that reports no gap really holds every byte of the range.
 */
#include <dirent.h>
#include <inttypes.h>
#include <openssl/evp.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "storage/cache_internal.h"
#include "ckptscope/cache.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define KEY "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
#define KEY_HEX (&KEY[7])
#define HEADER 64u
#define ENTRY 32u
#define CHUNK (256u * 1024u)
#define MAX_READ (1u << 20)

static uint32_t get32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t get64(const uint8_t *p)
{
    return get32(p) | (uint64_t)get32(p + 4) << 32;
}

static void put32(uint8_t *p, uint32_t v)
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

static char root[64];

static void cleanup(void)
{
    if (root[0])
        rm_tree(root);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char keydir[512], path[600];
    uint8_t *img = NULL, *a = NULL, *b = NULL;
    cks_cache *c = NULL;
    cks_range *gaps = NULL, *miss = NULL;
    size_t n_gaps = 0, n_miss = 0;
    if (!root[0]) {
        snprintf(root, sizeof root, "/tmp/cks-fuzz-extent-%ld", (long)getpid());
        mkdir(root, 0755);
        atexit(cleanup);
    }
    if (size < HEADER || size > (8u << 20))
        return 0;
    img = malloc(size);
    memcpy(img, data, size);
    /* the fingerprint of the key (first half of its SHA-256), as the writer puts it */
    {
        unsigned char d[32];
        unsigned dl = 0;
        EVP_Digest(KEY, strlen(KEY), d, &dl, EVP_sha256(), NULL);
        memcpy(img + 32, d, 16);
    }
    uint64_t off = get64(img + 8), len = get64(img + 16);
    uint32_t n_chunks = get32(img + 28);
    size_t table = (size_t)n_chunks * ENTRY;
    if (n_chunks <= 256 && HEADER + table <= size) {
        for (uint32_t i = 0; i < n_chunks; i++) {
            uint8_t *ent = img + HEADER + (size_t)i * ENTRY;
            uint64_t soff = get64(ent);
            uint32_t slen = get32(ent + 8), method = get32(ent + 12), sum[4];
            if (method == 0 && soff <= size && slen <= size - soff && slen <= CHUNK) {
                cks_cache_checksum(img + soff, slen, sum);
                for (int k = 0; k < 4; k++)
                    put32(ent + 16 + 4 * k, sum[k]);
            }
        }
        uint32_t crc = cks_crc32c(0, img, 60);
        crc = cks_crc32c(crc, img + HEADER, table);
        put32(img + 60, crc);
    }
    /* the cache holds just this extent: the key's directory is made afresh (the layout stays,
     * so opening the cache costs no fsync) */
    snprintf(keydir, sizeof keydir, "%s/files/01/s-%s", root, KEY_HEX);
    rm_tree(keydir);
    {
        char p1[512];
        snprintf(p1, sizeof p1, "%s", root);
        mkdir(p1, 0755);
        snprintf(p1, sizeof p1, "%s/files", root);
        mkdir(p1, 0755);
        snprintf(p1, sizeof p1, "%s/files/01", root);
        mkdir(p1, 0755);
        mkdir(keydir, 0755);
    }
    snprintf(path, sizeof path, "%s/key", keydir);
    FILE *f = fopen(path, "w");
    if (f) {
        fputs(KEY, f);
        fclose(f);
    }
    snprintf(path, sizeof path, "%s/x-%016" PRIx64 "-%016" PRIx64, keydir, off, len);
    f = fopen(path, "wb");
    if (f) {
        fwrite(img, 1, size, f);
        fclose(f);
    }
    cks_cache_opts o = {.dir = root, .revision_ttl_seconds = -1};
    if (cks_cache_open(&o, &c, NULL) != CKS_OK)
        goto out;
    /* what the name claims, bounded: a window at the start of the extent */
    uint64_t want = len < MAX_READ ? len : MAX_READ;
    if (want == 0 || off > UINT64_MAX - want)
        goto out;
    a = malloc((size_t)want);
    b = malloc((size_t)want);
    cks_range r = {off, want};
    (void)cks_cache_missing(c, KEY, &r, 1, &miss, &n_miss, NULL);
    bool hit = false, hit2 = false;
    if (cks_cache_read(c, KEY, off, a, (size_t)want, &hit, NULL) == CKS_OK && hit) {
        if (cks_cache_read(c, KEY, off, b, (size_t)want, &hit2, NULL) != CKS_OK || !hit2 ||
            memcmp(a, b, (size_t)want) != 0)
            __builtin_trap(); /* verified bytes must read back the same */
    }
    if (cks_cache_read_some(c, KEY, off, b, (size_t)want, &gaps, &n_gaps, NULL) == CKS_OK && n_gaps == 0 &&
        hit && memcmp(a, b, (size_t)want) != 0)
        __builtin_trap();
    for (size_t i = 0; i < n_gaps; i++)
        if (gaps[i].offset < off || gaps[i].length == 0 || gaps[i].length > want ||
            gaps[i].offset - off > want - gaps[i].length)
            __builtin_trap(); /* a gap outside the range asked for */
out:
    free(gaps);
    free(miss);
    free(a);
    free(b);
    free(img);
    cks_cache_free(c);
    return 0;
}
