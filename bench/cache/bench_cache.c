/*
 * Cache benchmarks (bench/cache/run.sh builds and runs this; results in RESULTS.md).
 *
 *  1. Warm-cache hashing: SHA-256 of every "tensor" of a bf16 checkpoint-like file read
 *     through cks_cache_read (checksums verified on every read), against the best plain
 *     local baseline: pread() of the same bytes from an ordinary file into the same buffer
 *     and the same SHA-256. Both from the page cache, best of several passes, same run.
 *  2. Lookups: a file with 10,000 cached extents; how long cks_cache_missing takes to
 *     answer for all of them (one call, from a fresh handle that must read the directory),
 *     and 10,000 single-range calls; plus 10,000 cached reads for reference.
 *
 * usage: bench_cache WORKDIR [MiB]
 */
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "ckptscope/cache.h"

#define KEY_W "sha256:5555555555555555555555555555555555555555555555555555555555555555"
#define KEY_L "sha256:6666666666666666666666666666666666666666666666666666666666666666"

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static uint64_t rng = 0x853c49e6748fea9bull;
static uint64_t next_u64(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

/* bf16 values of N(0, 0.02), the statistics of real weight matrices */
static void fill_bf16(uint16_t *h, size_t n)
{
    for (size_t i = 0; i < n; i += 2) {
        double u1 = ((double)(next_u64() >> 11) + 1.0) / 9007199254740993.0;
        double u2 = (double)(next_u64() >> 11) / 9007199254740992.0;
        double r = 0.02 * sqrt(-2.0 * log(u1));
        float a = (float)(r * cos(6.283185307179586 * u2)), b = (float)(r * sin(6.283185307179586 * u2));
        uint32_t x, y;
        memcpy(&x, &a, 4);
        memcpy(&y, &b, 4);
        h[i] = (uint16_t)(x >> 16);
        if (i + 1 < n)
            h[i + 1] = (uint16_t)(y >> 16);
    }
}

/* tensor layout: per "layer", a few big matrices and two small norm vectors */
typedef struct tensor {
    uint64_t off, len;
} tensor;

static size_t make_layout(uint64_t total, tensor **out)
{
    static const uint64_t pattern[] = {32u << 20, 8u << 20, 8u << 20, 32u << 20, 8192, 8192,
                                       44u << 20, 44u << 20, 44u << 20};
    size_t n = 0, cap = 1024;
    tensor *t = malloc(cap * sizeof *t);
    uint64_t off = 0;
    for (size_t i = 0; off < total; i++) {
        uint64_t len = pattern[i % (sizeof pattern / sizeof pattern[0])];
        if (off + len > total)
            len = total - off;
        if (n == cap)
            t = realloc(t, (cap *= 2) * sizeof *t);
        t[n].off = off;
        t[n].len = len;
        n++;
        off += len;
    }
    *out = t;
    return n;
}

static int die(const char *what)
{
    fprintf(stderr, "bench_cache: %s\n", what);
    return 1;
}

int main(int argc, char **argv)
{
    if (argc < 2)
        return die("usage: bench_cache WORKDIR [MiB]");
    const char *work = argv[1];
    uint64_t mib = argc > 2 ? strtoull(argv[2], NULL, 10) : 1024;
    uint64_t total = mib << 20;
    char cdir[4096], plain[4096];
    snprintf(cdir, sizeof cdir, "%s/cache", work);
    snprintf(plain, sizeof plain, "%s/plain.bin", work);
    cks_cache_opts o = {.dir = cdir, .revision_ttl_seconds = -1};
    cks_cache *c = NULL;
    cks_diag d = {{0}};
    if (cks_cache_open(&o, &c, &d) != CKS_OK)
        return die(d.text);

    /* ---- data: the same bytes in a plain file and in the cache ---- */
    const size_t step = 64u << 20;
    uint16_t *gen = malloc(step);
    int pfd = open(plain, O_RDWR | O_CREAT | O_TRUNC, 0644);
    if (!gen || pfd < 0)
        return die("setup");
    double t0, t_fill = 0;
    for (uint64_t off = 0; off < total; off += step) {
        size_t n = total - off < step ? (size_t)(total - off) : step;
        fill_bf16(gen, n / 2);
        if (pwrite(pfd, gen, n, (off_t)off) != (ssize_t)n)
            return die("pwrite");
        t0 = now();
        if (cks_cache_write(c, KEY_W, off, gen, n, &d) != CKS_OK)
            return die(d.text);
        t_fill += now() - t0;
    }
    cks_cache_free(c);
    c = NULL;

    tensor *tens = NULL;
    size_t n_t = make_layout(total, &tens);
    unsigned char *buf = malloc(64u << 20);
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    unsigned char dg[32];
    unsigned int dl;
    double best_plain = 1e9, best_cache = 1e9, best_sha = 1e9;
    unsigned char ref[32], got[32];
    memset(ref, 0, 32);
    memset(got, 0, 32);
    for (int pass = 0; pass < 8; pass++) {
        /* plain file: pread + SHA-256 per tensor */
        t0 = now();
        for (size_t i = 0; i < n_t; i++) {
            if (pread(pfd, buf, tens[i].len, (off_t)tens[i].off) != (ssize_t)tens[i].len)
                return die("pread");
            EVP_DigestInit_ex(md, EVP_sha256(), NULL);
            EVP_DigestUpdate(md, buf, tens[i].len);
            EVP_DigestFinal_ex(md, dg, &dl);
            ref[i % 32] ^= dg[0];
        }
        double tp = now() - t0;
        /* cache: a fresh handle each pass, as a rerun would */
        if (cks_cache_open(&o, &c, &d) != CKS_OK)
            return die(d.text);
        t0 = now();
        for (size_t i = 0; i < n_t; i++) {
            bool hit = false;
            if (cks_cache_read(c, KEY_W, tens[i].off, buf, tens[i].len, &hit, &d) != CKS_OK || !hit)
                return die("cache miss in the warm pass");
            EVP_DigestInit_ex(md, EVP_sha256(), NULL);
            EVP_DigestUpdate(md, buf, tens[i].len);
            EVP_DigestFinal_ex(md, dg, &dl);
            got[i % 32] ^= dg[0];
        }
        double tc = now() - t0;
        cks_cache_free(c);
        c = NULL;
        /* SHA-256 alone over the same bytes (the floor both approach) */
        t0 = now();
        for (size_t i = 0; i < n_t; i++) {
            EVP_DigestInit_ex(md, EVP_sha256(), NULL);
            EVP_DigestUpdate(md, buf, tens[i].len);
            EVP_DigestFinal_ex(md, dg, &dl);
        }
        double ts = now() - t0;
        if (tp < best_plain)
            best_plain = tp;
        if (tc < best_cache)
            best_cache = tc;
        if (ts < best_sha)
            best_sha = ts;
    }
    if (memcmp(ref, got, 32) != 0)
        return die("the cache and the plain file hashed differently");

    /* stored versus logical for these bf16 bytes, and with compression forced on */
    cks_cache_stat st;
    if (cks_cache_open(&o, &c, &d) != CKS_OK || cks_cache_stat_get(c, &st, &d) != CKS_OK)
        return die(d.text);
    cks_cache_free(c);
    c = NULL;

    printf("| measurement | value |\n|---|---|\n");
    printf("| data | %" PRIu64 " MiB of bf16 N(0, 0.02) values, %zu tensors (8 KiB .. 44 MiB) |\n",
           mib, n_t);
    printf("| cache writes of that data (chunk, checksum, zstd trial, write, fsync, rename) | %.2f s (%.0f MB/s) |\n",
           t_fill, (double)total / t_fill / 1e6);
    printf("| hash from a plain local file (pread + SHA-256), best of 8 | %.3f s (%.0f MB/s) |\n",
           best_plain, (double)total / best_plain / 1e6);
    printf("| hash from the cache (cks_cache_read, checksums verified + SHA-256), best of 8 | %.3f s (%.0f MB/s) |\n",
           best_cache, (double)total / best_cache / 1e6);
    printf("| SHA-256 alone, in memory | %.3f s (%.0f MB/s) |\n", best_sha,
           (double)total / best_sha / 1e6);
    printf("| **warm cache / plain file** | **%.3fx** (bound: 1.2x) |\n", best_cache / best_plain);
    printf("| stored / logical bytes for these weights | %.3f |\n",
           (double)st.stored_bytes / (double)st.logical_bytes);

    /* ---- lookups over 10,000 extents ---- */
    enum { N_EXT = 10000 };
    const uint64_t gap = 8192, elen = 4096;
    unsigned char small[4096];
    memset(small, 0x3c, sizeof small);
    if (cks_cache_open(&o, &c, &d) != CKS_OK)
        return die(d.text);
    t0 = now();
    for (int i = 0; i < N_EXT; i++)
        if (cks_cache_write(c, KEY_L, (uint64_t)i * gap, small, elen, &d) != CKS_OK)
            return die(d.text);
    double t_w = now() - t0;
    cks_cache_free(c);
    cks_range *want = malloc(N_EXT * sizeof *want);
    for (int i = 0; i < N_EXT; i++) {
        want[i].offset = (uint64_t)i * gap;
        want[i].length = elen;
    }
    double best_one = 1e9, best_many = 1e9, best_reads = 1e9;
    for (int pass = 0; pass < 3; pass++) {
        cks_range *miss = NULL;
        size_t nm = 0;
        if (cks_cache_open(&o, &c, &d) != CKS_OK)
            return die(d.text);
        t0 = now();
        if (cks_cache_missing(c, KEY_L, want, N_EXT, &miss, &nm, &d) != CKS_OK || nm != 0)
            return die("lookup: not all extents found");
        double t1 = now() - t0;
        t0 = now();
        for (int i = 0; i < N_EXT; i++) {
            if (cks_cache_missing(c, KEY_L, &want[i], 1, &miss, &nm, &d) != CKS_OK || nm != 0)
                return die("lookup: extent not found");
        }
        double t2 = now() - t0;
        t0 = now();
        for (int i = 0; i < N_EXT; i++) {
            bool hit = false;
            if (cks_cache_read(c, KEY_L, want[i].offset, buf, elen, &hit, &d) != CKS_OK || !hit)
                return die("read: extent not found");
        }
        double t3 = now() - t0;
        cks_cache_free(c);
        if (t1 < best_one)
            best_one = t1;
        if (t2 < best_many)
            best_many = t2;
        if (t3 < best_reads)
            best_reads = t3;
    }
    printf("| write 10,000 separate 4 KiB extents (each fsync'ed and renamed) | %.2f s |\n", t_w);
    printf("| **lookup of 10,000 extents, one cks_cache_missing call, fresh handle** | **%.1f ms** (bound: 50 ms) |\n",
           best_one * 1e3);
    printf("| lookup of 10,000 extents, 10,000 single-range calls | %.1f ms |\n", best_many * 1e3);
    printf("| 10,000 cached 4 KiB reads (open, header check, chunk verify) | %.1f ms |\n",
           best_reads * 1e3);
    free(want);
    free(tens);
    free(buf);
    free(gen);
    EVP_MD_CTX_free(md);
    close(pfd);
    return 0;
}
