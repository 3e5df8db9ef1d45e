/*
 * A driver for the cache integration tests (tests/integration/test_cache_cli.sh): it fills a
 * cache through the C API, writes large ranges for the kill -9 loop, and checks that what
 * a cache returns is byte-exact. Run without arguments (as make test does) it checks
 * itself once and prints PASS/FAIL lines like every test program.
 *
 *   test_cache_tool populate DIR             two files (random, compressible) + metadata
 *   test_cache_tool write DIR TOTAL PIECE [BASE]  write [BASE, BASE+TOTAL) in PIECE-sized ranges
 *   test_cache_tool check DIR TOTAL          fetch what is missing, then compare every byte
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ckptscope/cache.h"

#define KEY_R "sha256:1111111111111111111111111111111111111111111111111111111111111111"
#define KEY_Z "sha256:2222222222222222222222222222222222222222222222222222222222222222"

static unsigned char pat(uint64_t i)
{
    uint64_t x = (i >> 3) + 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    x ^= x >> 31;
    return (unsigned char)(x >> (8 * (i & 7)));
}

static unsigned char pat_z(uint64_t i)
{
    return (unsigned char)((i / 4096) % 5 + (i % 3 == 0));
}

static cks_cache *open_dir(const char *dir)
{
    cks_cache_opts o = {.dir = dir, .revision_ttl_seconds = -1};
    cks_cache *c = NULL;
    cks_diag d = {{0}};
    if (cks_cache_open(&o, &c, &d) != CKS_OK)
        fprintf(stderr, "open: %s\n", d.text);
    return c;
}

static int put(cks_cache *c, const char *key, bool z, uint64_t off, size_t len)
{
    unsigned char *b = malloc(len ? len : 1);
    cks_diag d = {{0}};
    int rc = 0;
    if (!b)
        return 1;
    for (size_t i = 0; i < len; i++)
        b[i] = z ? pat_z(off + i) : pat(off + i);
    if (cks_cache_write(c, key, off, b, len, &d) != CKS_OK) {
        fprintf(stderr, "write: %s\n", d.text);
        rc = 1;
    }
    free(b);
    return rc;
}

static int populate(const char *dir)
{
    cks_cache *c = open_dir(dir);
    int rc = c ? 0 : 1;
    const size_t mb = 1024 * 1024;
    if (c) {
        rc |= put(c, KEY_R, false, 0, mb);
        rc |= put(c, KEY_R, false, 2 * mb, mb);      /* a gap: two extents */
        rc |= put(c, KEY_Z, true, 0, 4 * mb);
        const char *commit = "0123456789abcdef0123456789abcdef01234567";
        rc |= cks_cache_meta_put(c, "revision", "model/org/name@main", commit, 40, NULL) != CKS_OK;
        rc |= cks_cache_meta_put(c, "config", "git:0123456789abcdef0123456789abcdef01234567:config.json",
                                 "{\"model_type\":\"llama\"}", 22, NULL) != CKS_OK;
    }
    cks_cache_free(c);
    return rc;
}

static int write_all(const char *dir, uint64_t base, uint64_t total, uint64_t piece)
{
    cks_cache *c = open_dir(dir);
    int rc = c ? 0 : 1;
    for (uint64_t off = 0; c && off < total && rc == 0; off += piece)
        rc = put(c, KEY_R, false, base + off, (size_t)(total - off < piece ? total - off : piece));
    cks_cache_free(c);
    return rc;
}

static int check_all(const char *dir, uint64_t total)
{
    cks_cache *c = open_dir(dir);
    cks_range want = {0, total}, *miss = NULL;
    size_t n = 0;
    unsigned char *b = malloc((size_t)total);
    bool hit = false;
    int rc = (c && b) ? 0 : 1;
    if (rc == 0 && cks_cache_missing(c, KEY_R, &want, 1, &miss, &n, NULL) != CKS_OK)
        rc = 1;
    for (size_t i = 0; rc == 0 && i < n; i++)
        rc = put(c, KEY_R, false, miss[i].offset, (size_t)miss[i].length);
    if (rc == 0 && (cks_cache_read(c, KEY_R, 0, b, (size_t)total, &hit, NULL) != CKS_OK || !hit))
        rc = 1;
    for (uint64_t i = 0; rc == 0 && i < total; i++)
        if (b[i] != pat(i)) {
            fprintf(stderr, "wrong byte at %llu\n", (unsigned long long)i);
            rc = 2;
        }
    if (rc == 0)
        printf("refetched %zu missing range(s); %llu bytes exact\n", n, (unsigned long long)total);
    free(miss);
    free(b);
    cks_cache_free(c);
    return rc;
}

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "populate") == 0)
        return populate(argv[2]);
    if ((argc == 5 || argc == 6) && strcmp(argv[1], "write") == 0)
        return write_all(argv[2], argc == 6 ? strtoull(argv[5], NULL, 10) : 0,
                         strtoull(argv[3], NULL, 10), strtoull(argv[4], NULL, 10));
    if (argc == 4 && strcmp(argv[1], "check") == 0)
        return check_all(argv[2], strtoull(argv[3], NULL, 10));
    /* self-check, so `make test` running every test binary sees one case */
    char tmpl[] = "/tmp/cks-cache-tool-XXXXXX";
    char *dir = mkdtemp(tmpl);
    int rc = dir ? populate(dir) : 1;
    if (rc == 0)
        rc = write_all(dir, 0, 3u * 1024 * 1024, 700000);
    if (rc == 0)
        rc = check_all(dir, 3u * 1024 * 1024) ? 1 : 0;
    if (dir) {
        char cmd[64];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
        if (system(cmd) != 0)
            rc = 1;
    }
    printf(rc ? "FAIL cache_tool_selfcheck: populate/write/check failed\n"
              : "PASS cache_tool_selfcheck\n");
    return rc ? 1 : 0;
}
