/*
 * verify_prescreen.c — the pre-screen of `verify --against` (include/ckptscope/verify.h): a
 * few hundred KiB per known model, kept in the cache, that clear a known model without opening
 * its fingerprint when what could make the comparison say "derived" or "identical" is provably
 * (T1, T2) or, for T4a, all but certainly (a fixed sample of its dimensions) far from its floor.
 *
 * Opening a 100B-class fingerprint costs 250-400 ms (the header summary of ~19,000 tensors is
 * rebuilt) and the screen's comparison ~3.5 s; this check costs a few ms against a summary read
 * from the cache, and the summary is made once per fingerprint file.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <openssl/evp.h>

#include "ckptscope/blas.h"
#include "ckptscope/cache.h"
#include "ckptscope/defaults.h"
#include "ckptscope/dtype.h"
#include "ckptscope/fingerprint.h"
#include "ckptscope/fingerprint_library.h"
#include "ckptscope/hex.h"
#include "ckptscope/metrics.h"
#include "ckptscope/verify.h"
#include "compare_internal.h"

#define SUMMARY_MAGIC "CKSVSUM1"
#define SUMMARY_NS "verify-summary"
#define SUMMARY_MAX_HIDDEN 65536u
#define SUMMARY_MAX_LAYERS 4096
#define SUMMARY_MAX_TOKENS 65536u
#define SUMMARY_MAX_ITEMS 1000000u
#define SUMMARY_MAX_BYTES (512u << 20)
#define PROBE_DIMS 32u  /* of T4a's dimensions of A: ~0.74 GFLOP against a 4096-wide B over 2816 tokens */
#define KEY_EDGE (64u << 10)
#define EB_MEMO 4u
#define PROBE_FIRST 16u

/* Bytes of n elements of a whole-byte dtype; 0 when sub-byte, unknown or too large. */
static uint64_t raw_nbytes(uint32_t dtype, uint64_t n)
{
    unsigned bits = cks_dtype_bits((cks_dtype)dtype);
    if (bits == 0 || bits % 8 || n > SUMMARY_MAX_BYTES)
        return 0;
    return n * (bits / 8);
}

typedef struct trained_raw {
    char *name;
    uint32_t dtype;
    uint64_t n;
    uint8_t *bytes;
} trained_raw;

struct cks_verify_summary {
    char *source, *repo, *commit;
    uint64_t seed;
    uint32_t hidden;
    int32_t n_layers;
    /* T1: every hash, with its low-information flag */
    uint32_t n_hashes;
    uint8_t (*sha)[32];
    uint8_t *low;
    /* T1 bitwise: the raw bytes of the tensors trained from a constant that the fingerprint kept */
    uint32_t n_raw;
    trained_raw *raw;
    /* T2: twice the mid-ranks of each layer's attn / ffn norm gains (0 rows: not usable) */
    uint8_t *has_norm;       /* n_layers x 2 */
    uint16_t *ranks2;        /* n_layers x 2 x hidden */
    /* T4a: token strings, and the embedding values of the probed dimensions */
    uint32_t n_tokens, embed_cols, n_probe;
    uint32_t *tok_len;
    uint8_t **tok_text;
    uint8_t *text_pool;
    uint32_t *probe_dims;
    float *probe;            /* n_tokens x n_probe */
};

struct cks_verify_live {
    cks_fingerprint *fp;
    cks_verify_summary *all; /* every dimension probed */
    uint32_t *tok_order;     /* live tokens sorted by text */
    double *unit[2];         /* centred unit rank vectors, n_layers x hidden per kind */
    /* B's unit columns over the last few sets of shared tokens: members that share a tokenizer
     * share one, and gathering and normalising 2816 x 4096 floats costs more than T4a's probe */
    struct {
        uint32_t *pairs;
        size_t n;
        float *eb;
    } memo[EB_MEMO];
    unsigned memo_next;
};

/* ---- building ---- */

void cks_verify_summary_free(cks_verify_summary *s)
{
    if (!s)
        return;
    free(s->source);
    free(s->repo);
    free(s->commit);
    free(s->sha);
    free(s->low);
    for (uint32_t i = 0; s->raw && i < s->n_raw; i++) {
        free(s->raw[i].name);
        free(s->raw[i].bytes);
    }
    free(s->raw);
    free(s->has_norm);
    free(s->ranks2);
    free(s->tok_len);
    free(s->tok_text);
    free(s->text_pool);
    free(s->probe_dims);
    free(s->probe);
    free(s);
}

static char *dup_or_empty(const char *s)
{
    return strdup(s ? s : "");
}

/* Which of A's dimensions T4a reads, in its order (compare_t4.c: seed + 4, first 256). */
static void t4a_dims(uint64_t seed, size_t hidden, uint32_t *dims)
{
    cks_rng rng;
    cks_rng_seed(&rng, seed + 4);
    cks_rng_permutation(&rng, dims, hidden);
}

static bool is_trained_tensor(const cks_fingerprint *fp, const cks_ckpt_tensor *t)
{
    for (int l = 0; l < fp->n_layers; l++)
        if (fp->layers[l].attn_norm_t == t || fp->layers[l].ffn_norm_t == t || fp->layers[l].router_bias_t == t)
            return true;
    return false;
}

cks_err cks_verify_summary_build(const cks_fingerprint *fp, uint64_t seed, bool all_dims, cks_verify_summary **out,
                                 cks_diag *diag)
{
    cks_err err = CKS_OK;
    cks_verify_summary *s = calloc(1, sizeof *s);
    double *ranks = NULL;
    uint32_t *dims = NULL;
    size_t pool = 0;

    *out = NULL;
    if (!s)
        return cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
    s->source = dup_or_empty(fp->source);
    s->repo = dup_or_empty(fp->repo);
    s->commit = dup_or_empty(fp->commit);
    s->seed = seed ? seed : CKS_DEFAULT_SEED;
    seed = s->seed;
    if (fp->hidden > SUMMARY_MAX_HIDDEN || fp->n_layers > SUMMARY_MAX_LAYERS || fp->n_tokens > SUMMARY_MAX_TOKENS ||
        fp->embed_cols > SUMMARY_MAX_HIDDEN) {
        err = cks_fail(diag, CKS_ERR_UNSUPPORTED, "fingerprint too large to summarise (hidden %zu, %d layers, %zu tokens)",
                       fp->hidden, fp->n_layers, fp->n_tokens);
        goto out;
    }
    s->hidden = (uint32_t)fp->hidden;
    s->n_layers = fp->n_layers > 0 && fp->layers ? fp->n_layers : 0;
    if (!s->source || !s->repo || !s->commit)
        goto nomem;
    s->n_hashes = (uint32_t)fp->n_hashes;
    s->sha = malloc((fp->n_hashes + 1) * sizeof *s->sha);
    s->low = malloc(fp->n_hashes + 1);
    s->raw = calloc(fp->n_hashes + 1, sizeof *s->raw);
    if (!s->sha || !s->low || !s->raw)
        goto nomem;
    for (size_t i = 0; i < fp->n_hashes; i++) {
        const cks_fp_hash *h = &fp->hashes[i];
        memcpy(s->sha[i], h->sha256, 32);
        s->low[i] = h->low_information;
        if (h->bytes && !h->low_information && h->tensor && is_trained_tensor(fp, h->tensor) &&
            raw_nbytes((uint32_t)h->tensor->info->dtype, h->tensor->info->nelements) == h->len && h->len) {
            trained_raw *r = &s->raw[s->n_raw];
            r->name = strdup(h->tensor->info->name);
            r->bytes = malloc(h->len ? h->len : 1);
            if (!r->name || !r->bytes) {
                free(r->name);
                free(r->bytes);
                goto nomem;
            }
            memcpy(r->bytes, h->bytes, h->len);
            r->dtype = (uint32_t)h->tensor->info->dtype;
            r->n = h->tensor->info->nelements;
            s->n_raw++;
        }
    }
    if (s->n_layers > 0 && s->hidden > 0) {
        size_t rows = (size_t)s->n_layers * 2;
        s->has_norm = calloc(rows, 1);
        s->ranks2 = calloc(rows * s->hidden, sizeof *s->ranks2);
        ranks = malloc(s->hidden * sizeof *ranks);
        if (!s->has_norm || !s->ranks2 || !ranks)
            goto nomem;
        for (int l = 0; l < s->n_layers && !err; l++) {
            const double *v[2] = {fp->layers[l].attn_norm, fp->layers[l].ffn_norm};
            size_t n[2] = {fp->layers[l].n_attn_norm, fp->layers[l].n_ffn_norm};
            for (int w = 0; w < 2 && !err; w++) {
                if (!v[w] || n[w] != s->hidden || !cmp_vector_usable(v[w], s->hidden))
                    continue;
                err = cks_mid_ranks_f64(v[w], s->hidden, ranks, diag);
                for (size_t i = 0; !err && i < s->hidden; i++)
                    s->ranks2[((size_t)l * 2 + w) * s->hidden + i] = (uint16_t)lround(2 * ranks[i]);
                s->has_norm[(size_t)l * 2 + w] = 1;
            }
        }
        if (err)
            goto out;
    }
    if (fp->n_tokens && fp->embed && fp->embed_cols) {
        s->n_tokens = (uint32_t)fp->n_tokens;
        s->embed_cols = (uint32_t)fp->embed_cols;
        s->n_probe = all_dims ? s->embed_cols : (s->embed_cols < PROBE_DIMS ? s->embed_cols : PROBE_DIMS);
        for (size_t i = 0; i < fp->n_tokens; i++)
            pool += fp->tokens[i].len;
        s->tok_len = malloc(s->n_tokens * sizeof *s->tok_len);
        s->tok_text = malloc(s->n_tokens * sizeof *s->tok_text);
        s->text_pool = malloc(pool ? pool : 1);
        dims = malloc(s->embed_cols * sizeof *dims);
        s->probe_dims = malloc(s->n_probe * sizeof *s->probe_dims);
        s->probe = malloc((size_t)s->n_tokens * s->n_probe * sizeof *s->probe);
        if (!s->tok_len || !s->tok_text || !s->text_pool || !dims || !s->probe_dims || !s->probe)
            goto nomem;
        pool = 0;
        for (size_t i = 0; i < fp->n_tokens; i++) {
            s->tok_len[i] = fp->tokens[i].len;
            if (fp->tokens[i].len)
                memcpy(s->text_pool + pool, fp->tokens[i].text, fp->tokens[i].len);
            s->tok_text[i] = s->text_pool + pool;
            pool += fp->tokens[i].len;
        }
        if (all_dims)
            for (uint32_t k = 0; k < s->n_probe; k++)
                s->probe_dims[k] = k;
        else {
            t4a_dims(seed, s->embed_cols, dims);
            memcpy(s->probe_dims, dims, s->n_probe * sizeof *dims);
        }
        for (size_t r = 0; r < fp->n_tokens; r++)
            for (uint32_t k = 0; k < s->n_probe; k++)
                s->probe[r * s->n_probe + k] = fp->embed[r * fp->embed_cols + s->probe_dims[k]];
    }
    goto out;
nomem:
    err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
out:
    free(ranks);
    free(dims);
    if (err)
        cks_verify_summary_free(s);
    else
        *out = s;
    return err;
}

/* ---- the stored form (little-endian, bounded on read) ---- */

typedef struct wbuf {
    uint8_t *p;
    size_t n, cap;
    bool failed;
} wbuf;

static void put(wbuf *b, const void *src, size_t len)
{
    if (b->failed)
        return;
    if (b->n + len > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        uint8_t *grown;
        while (cap < b->n + len)
            cap *= 2;
        grown = realloc(b->p, cap);
        if (!grown) {
            b->failed = true;
            return;
        }
        b->p = grown;
        b->cap = cap;
    }
    if (len)
        memcpy(b->p + b->n, src, len);
    b->n += len;
}

static void put_u32(wbuf *b, uint32_t v)
{
    uint8_t x[4] = {(uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16), (uint8_t)(v >> 24)};
    put(b, x, 4);
}

static void put_u64(wbuf *b, uint64_t v)
{
    put_u32(b, (uint32_t)v);
    put_u32(b, (uint32_t)(v >> 32));
}

static void put_str(wbuf *b, const char *s)
{
    put_u32(b, (uint32_t)strlen(s));
    put(b, s, strlen(s));
}

/* The arrays are written in host order: the cache is per machine (x86-64 and arm64 are both
 * little-endian; a big-endian host reads a magic it does not expect and rebuilds). */
cks_err cks_verify_summary_encode(const cks_verify_summary *s, uint8_t **out, size_t *len, cks_diag *diag)
{
    wbuf b = {0};
    uint32_t one = 1;
    put(&b, SUMMARY_MAGIC, 8);
    put(&b, &one, 4); /* endianness probe */
    put_str(&b, s->source);
    put_str(&b, s->repo);
    put_str(&b, s->commit);
    put_u64(&b, s->seed);
    put_u32(&b, s->hidden);
    put_u32(&b, (uint32_t)s->n_layers);
    put_u32(&b, s->n_hashes);
    put(&b, s->sha, (size_t)s->n_hashes * 32);
    put(&b, s->low, s->n_hashes);
    put_u32(&b, s->n_raw);
    for (uint32_t i = 0; i < s->n_raw; i++) {
        put_str(&b, s->raw[i].name);
        put_u32(&b, s->raw[i].dtype);
        put_u64(&b, s->raw[i].n);
        put_u64(&b, raw_nbytes(s->raw[i].dtype, s->raw[i].n));
        put(&b, s->raw[i].bytes, raw_nbytes(s->raw[i].dtype, s->raw[i].n));
    }
    if (s->n_layers > 0 && s->hidden > 0) {
        put(&b, s->has_norm, (size_t)s->n_layers * 2);
        put(&b, s->ranks2, (size_t)s->n_layers * 2 * s->hidden * sizeof *s->ranks2);
    }
    put_u32(&b, s->n_tokens);
    put_u32(&b, s->embed_cols);
    put_u32(&b, s->n_probe);
    if (s->n_tokens) {
        put(&b, s->tok_len, s->n_tokens * sizeof *s->tok_len);
        for (uint32_t i = 0; i < s->n_tokens; i++)
            put(&b, s->tok_text[i], s->tok_len[i]);
        put(&b, s->probe_dims, s->n_probe * sizeof *s->probe_dims);
        put(&b, s->probe, (size_t)s->n_tokens * s->n_probe * sizeof *s->probe);
    }
    if (b.failed) {
        free(b.p);
        return cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
    }
    *out = b.p;
    *len = b.n;
    return CKS_OK;
}

typedef struct rbuf {
    const uint8_t *p;
    size_t n, at;
    bool bad;
} rbuf;

static const uint8_t *take(rbuf *b, size_t len)
{
    const uint8_t *at;
    if (b->bad || len > b->n - b->at) {
        b->bad = true;
        return NULL;
    }
    at = b->p + b->at;
    b->at += len;
    return at;
}

static uint32_t get_u32(rbuf *b)
{
    const uint8_t *x = take(b, 4);
    return x ? (uint32_t)x[0] | (uint32_t)x[1] << 8 | (uint32_t)x[2] << 16 | (uint32_t)x[3] << 24 : 0;
}

static uint64_t get_u64(rbuf *b)
{
    uint64_t lo = get_u32(b);
    return lo | (uint64_t)get_u32(b) << 32;
}

static void *get_copy(rbuf *b, size_t len)
{
    const uint8_t *x = take(b, len);
    void *p = x ? malloc(len ? len : 1) : NULL;
    if (p && len)
        memcpy(p, x, len);
    if (x && !p)
        b->bad = true;
    return p;
}

static char *get_str(rbuf *b)
{
    uint32_t len = get_u32(b);
    const uint8_t *x = len <= 4096 ? take(b, len) : (b->bad = true, NULL);
    char *s = x ? malloc(len + 1) : NULL;
    if (s) {
        memcpy(s, x, len);
        s[len] = 0;
    } else {
        b->bad = true;
    }
    return s;
}

cks_err cks_verify_summary_decode(const uint8_t *data, size_t len, cks_verify_summary **out, cks_diag *diag)
{
    rbuf b = {data, len, 0, false};
    cks_verify_summary *s = calloc(1, sizeof *s);
    const uint8_t *magic = take(&b, 12);
    uint32_t one = 1;
    size_t pool = 0;

    *out = NULL;
    if (!s)
        return cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
    if (!magic || memcmp(magic, SUMMARY_MAGIC, 8) != 0 || memcmp(magic + 8, &one, 4) != 0)
        goto bad;
    s->source = get_str(&b);
    s->repo = get_str(&b);
    s->commit = get_str(&b);
    s->seed = get_u64(&b);
    s->hidden = get_u32(&b);
    s->n_layers = (int32_t)get_u32(&b);
    s->n_hashes = get_u32(&b);
    if (b.bad || s->hidden > SUMMARY_MAX_HIDDEN || s->n_layers < 0 || s->n_layers > SUMMARY_MAX_LAYERS ||
        s->n_hashes > SUMMARY_MAX_ITEMS)
        goto bad;
    s->sha = get_copy(&b, (size_t)s->n_hashes * 32);
    s->low = get_copy(&b, s->n_hashes);
    s->n_raw = get_u32(&b);
    if (b.bad || s->n_raw > s->n_hashes)
        goto bad;
    s->raw = calloc(s->n_raw + 1, sizeof *s->raw);
    if (!s->raw)
        goto bad;
    for (uint32_t i = 0; i < s->n_raw && !b.bad; i++) {
        uint64_t nbytes;
        s->raw[i].name = get_str(&b);
        s->raw[i].dtype = get_u32(&b);
        s->raw[i].n = get_u64(&b);
        nbytes = get_u64(&b);
        if (b.bad || s->raw[i].n > SUMMARY_MAX_BYTES || nbytes > SUMMARY_MAX_BYTES ||
            nbytes != raw_nbytes(s->raw[i].dtype, s->raw[i].n) || nbytes == 0)
            goto bad;
        s->raw[i].bytes = get_copy(&b, nbytes);
    }
    if (s->n_layers > 0 && s->hidden > 0) {
        s->has_norm = get_copy(&b, (size_t)s->n_layers * 2);
        s->ranks2 = get_copy(&b, (size_t)s->n_layers * 2 * s->hidden * sizeof *s->ranks2);
    }
    s->n_tokens = get_u32(&b);
    s->embed_cols = get_u32(&b);
    s->n_probe = get_u32(&b);
    if (b.bad || s->n_tokens > SUMMARY_MAX_TOKENS || s->embed_cols > SUMMARY_MAX_HIDDEN || s->n_probe > s->embed_cols)
        goto bad;
    if (s->n_tokens) {
        s->tok_len = get_copy(&b, s->n_tokens * sizeof *s->tok_len);
        s->tok_text = malloc(s->n_tokens * sizeof *s->tok_text);
        if (b.bad || !s->tok_text)
            goto bad;
        for (uint32_t i = 0; i < s->n_tokens; i++) {
            if (s->tok_len[i] > 4096)
                goto bad;
            pool += s->tok_len[i];
        }
        s->text_pool = get_copy(&b, pool);
        if (b.bad)
            goto bad;
        pool = 0;
        for (uint32_t i = 0; i < s->n_tokens; i++) {
            s->tok_text[i] = s->text_pool + pool;
            pool += s->tok_len[i];
        }
        s->probe_dims = get_copy(&b, s->n_probe * sizeof *s->probe_dims);
        s->probe = get_copy(&b, (size_t)s->n_tokens * s->n_probe * sizeof *s->probe);
        for (uint32_t k = 0; !b.bad && k < s->n_probe; k++)
            if (s->probe_dims[k] >= s->embed_cols)
                goto bad;
    }
    if (b.bad || b.at != b.n)
        goto bad;
    *out = s;
    return CKS_OK;
bad:
    cks_verify_summary_free(s);
    return cks_fail(diag, CKS_ERR_IO, "stored verify summary is malformed (%zu bytes)", len);
}

/* ---- cache ---- */

/* What pins a fingerprint file: its path, size, times and inode, and the SHA-256 of its first
 * and last 64 KiB (the zstd frame's end holds its checksum): any rewrite changes ctime. A
 * library member ("LIBRARY#MEMBER") is pinned by its library file and its name. */
static bool summary_key(const char *ref, uint64_t seed, char *key, size_t cap)
{
    struct stat sb;
    FILE *f = NULL;
    uint8_t *edge = malloc(KEY_EDGE), digest[32];
    unsigned int dlen = 0;
    char hex[65], *real = NULL, *file = strdup(ref);
    const char *member = "";
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    bool ok = edge && file && md;
    if (ok && stat(file, &sb) != 0) {
        char *hash = strrchr(file, '#');
        if (hash) {
            *hash = 0;
            member = ref + (hash - file) + 1;
        }
    }
    ok = ok && (real = realpath(file, NULL)) != NULL && stat(file, &sb) == 0 && (f = fopen(file, "rb")) != NULL &&
         EVP_DigestInit_ex(md, EVP_sha256(), NULL) == 1;
    if (ok) {
        size_t got = fread(edge, 1, KEY_EDGE, f);
        EVP_DigestUpdate(md, edge, got);
        if ((uint64_t)sb.st_size > KEY_EDGE && fseeko(f, sb.st_size - (off_t)KEY_EDGE, SEEK_SET) == 0) {
            got = fread(edge, 1, KEY_EDGE, f);
            EVP_DigestUpdate(md, edge, got);
        }
        ok = EVP_DigestFinal_ex(md, digest, &dlen) == 1;
    }
    if (ok) {
        cks_hex_encode(digest, 32, hex);
        ok = snprintf(key, cap, "v1|%llu|%s|%s|%llu|%lld.%09ld|%lld.%09ld|%llu|%s", (unsigned long long)seed, real,
                      member, (unsigned long long)sb.st_size, (long long)sb.st_mtim.tv_sec, sb.st_mtim.tv_nsec,
                      (long long)sb.st_ctim.tv_sec, sb.st_ctim.tv_nsec, (unsigned long long)sb.st_ino, hex) < (int)cap;
    }
    if (f)
        fclose(f);
    EVP_MD_CTX_free(md);
    free(edge);
    free(real);
    free(file);
    return ok;
}

cks_err cks_verify_summary_for_file(cks_cache *cache, const char *path, uint64_t seed, cks_verify_summary **out,
                                    bool *from_cache, cks_diag *diag)
{
    cks_err err;
    char key[4096 + 256];
    char *data = NULL;
    size_t len = 0;
    bool hit = false, keyed;
    cks_fingerprint *fp = NULL;
    uint8_t *enc = NULL;
    size_t enc_len = 0;
    cks_diag ignored;

    *out = NULL;
    *from_cache = false;
    if (!seed)
        seed = CKS_DEFAULT_SEED;
    keyed = cache && summary_key(path, seed, key, sizeof key);
    if (keyed && cks_cache_meta_get(cache, SUMMARY_NS, key, -1, &data, &len, &hit, &ignored) == CKS_OK && hit) {
        if (cks_verify_summary_decode((const uint8_t *)data, len, out, &ignored) == CKS_OK) {
            free(data);
            *from_cache = true;
            return CKS_OK;
        }
    }
    free(data);
    err = cks_fingerprint_load_ref(path, &fp, diag);
    if (!err)
        err = cks_verify_summary_build(fp, seed, false, out, diag);
    if (!err && keyed && cks_verify_summary_encode(*out, &enc, &enc_len, &ignored) == CKS_OK)
        (void)cks_cache_meta_put(cache, SUMMARY_NS, key, enc, enc_len, &ignored); /* best effort */
    free(enc);
    cks_fingerprint_free(fp);
    return err;
}

const char *cks_verify_summary_source(const cks_verify_summary *s, const char **repo, const char **commit)
{
    *repo = s->repo;
    *commit = s->commit;
    return s->source;
}

/* ---- the live side, prepared once ---- */

static const cks_verify_summary *sort_ctx;

static int by_text(const void *x, const void *y)
{
    uint32_t i = *(const uint32_t *)x, j = *(const uint32_t *)y;
    uint32_t li = sort_ctx->tok_len[i], lj = sort_ctx->tok_len[j];
    int c = memcmp(sort_ctx->tok_text[i], sort_ctx->tok_text[j], li < lj ? li : lj);
    return c ? c : (li > lj) - (li < lj);
}

void cks_verify_live_free(cks_verify_live *l)
{
    if (!l)
        return;
    cks_fingerprint_free(l->fp);
    cks_verify_summary_free(l->all);
    free(l->tok_order);
    free(l->unit[0]);
    free(l->unit[1]);
    for (unsigned i = 0; i < EB_MEMO; i++) {
        free(l->memo[i].pairs);
        free(l->memo[i].eb);
    }
    free(l);
}

/* A rank row as a centred unit vector (Pearson of ranks = Spearman). */
static void unit_ranks(const uint16_t *r2, size_t n, double *out)
{
    double mean = 0, ss = 0;
    for (size_t i = 0; i < n; i++)
        mean += r2[i];
    mean /= (double)n;
    for (size_t i = 0; i < n; i++)
        ss += (r2[i] - mean) * (r2[i] - mean);
    for (size_t i = 0; i < n; i++)
        out[i] = ss > 0 ? (r2[i] - mean) / sqrt(ss) : 0;
}

/* The live side from a fingerprint of it (not taken over: it must outlive the result). */
cks_err cks_verify_live_from_fingerprint(const cks_fingerprint *fp, uint64_t seed, cks_verify_live **out,
                                         cks_diag *diag)
{
    cks_err err;
    cks_verify_live *l = calloc(1, sizeof *l);

    *out = NULL;
    if (!l)
        return cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
    if (!seed)
        seed = CKS_DEFAULT_SEED;
    err = cks_verify_summary_build(fp, seed, true, &l->all, diag);
    if (err)
        goto out;
    if (l->all->n_tokens) {
        l->tok_order = malloc(l->all->n_tokens * sizeof *l->tok_order);
        if (!l->tok_order) {
            err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
            goto out;
        }
        for (uint32_t i = 0; i < l->all->n_tokens; i++)
            l->tok_order[i] = i;
        sort_ctx = l->all;
        qsort(l->tok_order, l->all->n_tokens, sizeof *l->tok_order, by_text);
        sort_ctx = NULL;
    }
    if (l->all->n_layers > 0 && l->all->hidden > 0) {
        size_t h = l->all->hidden;
        for (int w = 0; w < 2; w++) {
            l->unit[w] = calloc((size_t)l->all->n_layers * h, sizeof *l->unit[w]);
            if (!l->unit[w]) {
                err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
                goto out;
            }
            for (int i = 0; i < l->all->n_layers; i++)
                if (l->all->has_norm[(size_t)i * 2 + w])
                    unit_ranks(l->all->ranks2 + ((size_t)i * 2 + w) * h, h, l->unit[w] + (size_t)i * h);
        }
    }
out:
    if (err)
        cks_verify_live_free(l);
    else
        *out = l;
    return err;
}

cks_err cks_verify_live_prepare(const cks_compare_model *live, uint64_t seed, cks_verify_live **out, cks_diag *diag)
{
    cks_err err;
    cks_fingerprint *fp = NULL;
    cks_fp_build_opts bo;
    cks_compare_model m = *live;

    *out = NULL;
    if (!seed)
        seed = CKS_DEFAULT_SEED;
    memset(&bo, 0, sizeof bo);
    /* rows as compare reads them (never 4-bit): the cap only decides how much is kept */
    bo.max_bytes = 200u << 20;
    bo.seed = seed;
    m.fingerprint = NULL;
    err = cks_fingerprint_build(&m, &bo, &fp, diag);
    if (!err)
        err = cks_verify_live_from_fingerprint(fp, seed, out, diag);
    if (!err)
        (*out)->fp = fp;
    else
        cks_fingerprint_free(fp);
    return err;
}

/* ---- the bounds ---- */

/* T1 copy: a byte-identical tensor that is not low-information on both sides. */
static bool any_copy(const cks_verify_summary *a, const cks_verify_summary *b)
{
    for (uint32_t i = 0; i < a->n_hashes; i++)
        for (uint32_t j = 0; j < b->n_hashes; j++)
            if (!(a->low[i] && b->low[j]) && memcmp(a->sha[i], b->sha[j], 32) == 0)
                return true;
    return false;
}

/* T1 bitwise: the pooled excess of bit-identical elements over the shuffle null is a weighted
 * mean of each tensor pair's excess, so it is at most the largest one. */
static double t1_excess_bound(const cks_verify_summary *a, const cks_verify_summary *b)
{
    double worst = -INFINITY;
    for (uint32_t i = 0; i < a->n_raw; i++)
        for (uint32_t j = 0; j < b->n_raw; j++) {
            const trained_raw *ra = &a->raw[i], *rb = &b->raw[j];
            size_t esz, equal = 0;
            cks_equality_null eq;
            if (ra->dtype != rb->dtype || ra->n != rb->n || strcmp(ra->name, rb->name) != 0 || ra->n == 0)
                continue;
            esz = raw_nbytes(ra->dtype, ra->n) / ra->n;
            for (uint64_t k = 0; esz && k < ra->n; k++)
                equal += memcmp(ra->bytes + k * esz, rb->bytes + k * esz, esz) == 0;
            /* the excess is at most the observed fraction: the exact null only when that is near */
            if ((double)equal / (double)ra->n < cmp_floor_value("T1") / 2) {
                if ((double)equal / (double)ra->n > worst)
                    worst = (double)equal / (double)ra->n;
                continue;
            }
            if (cks_equality_null_compute((cks_dtype)ra->dtype, ra->bytes, rb->bytes, (size_t)ra->n, &eq, NULL) !=
                CKS_OK)
                return INFINITY; /* cannot bound it: keep */
            if (eq.observed_fraction - eq.expected_fraction > worst)
                worst = eq.observed_fraction - eq.expected_fraction;
        }
    return worst;
}

/* T2 (and any layer path of it): a mean of per-layer-pair Spearman values is at most the
 * largest over every pair of layers and both kinds. */
static double t2_bound(const cks_verify_live *l, const cks_verify_summary *a, double *scratch_a, double *prod)
{
    const cks_verify_summary *b = l->all;
    size_t h = a->hidden;
    double worst = -INFINITY;
    for (int w = 0; w < 2; w++) {
        for (int i = 0; i < a->n_layers; i++) {
            if (a->has_norm[(size_t)i * 2 + w])
                unit_ranks(a->ranks2 + ((size_t)i * 2 + w) * h, h, scratch_a + (size_t)i * h);
            else
                memset(scratch_a + (size_t)i * h, 0, h * sizeof *scratch_a);
        }
        cks_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, a->n_layers, b->n_layers, (int)h, 1.0, scratch_a, (int)h,
                  l->unit[w], (int)h, 0.0, prod, b->n_layers);
        for (size_t k = 0; k < (size_t)a->n_layers * (size_t)b->n_layers; k++)
            if (prod[k] > worst)
                worst = prod[k];
    }
    return worst;
}

static void normalise_columns(float *m, size_t rows, size_t cols)
{
    double *ss = calloc(cols, sizeof *ss);
    if (!ss)
        return;
    for (size_t r = 0; r < rows; r++)
        for (size_t c = 0; c < cols; c++)
            ss[c] += (double)m[r * cols + c] * m[r * cols + c];
    for (size_t c = 0; c < cols; c++)
        ss[c] = ss[c] > 0 ? 1.0 / sqrt(ss[c]) : 1.0;
    for (size_t r = 0; r < rows; r++)
        for (size_t c = 0; c < cols; c++)
            m[r * cols + c] *= (float)ss[c];
    free(ss);
}

static int find_token(const cks_verify_live *l, const uint8_t *text, uint32_t len)
{
    const cks_verify_summary *b = l->all;
    size_t lo = 0, hi = b->n_tokens;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        uint32_t j = l->tok_order[mid], lj = b->tok_len[j];
        int c = memcmp(b->tok_text[j], text, lj < len ? lj : len);
        if (!c)
            c = (lj > len) - (lj < len);
        if (c == 0)
            return (int)j;
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return -1;
}

cks_err cks_verify_prescreen(cks_verify_live *l, const cks_verify_summary *a, cks_verify_prescreen_result *res,
                             cks_diag *diag)
{
    cks_err err = CKS_OK;
    const cks_verify_summary *b = l->all;
    double *sa = NULL, *prod = NULL;
    float *ea = NULL, *sim = NULL;
    uint32_t *pair_a = NULL, *pair_b = NULL;
    size_t n = 0, min_tokens, db = b->embed_cols, m = a->n_probe, first;
    unsigned slot;

    memset(res, 0, sizeof *res);
    res->t1_excess = res->t2_bound = NAN;
    res->clears = false;
    if (a->seed != b->seed) {
        snprintf(res->reason, sizeof res->reason, "kept: summary made with another seed");
        return CKS_OK;
    }
    /* T1: a byte copy */
    if (any_copy(a, b)) {
        res->copy = true;
        snprintf(res->reason, sizeof res->reason, "kept: a tensor is byte-identical (T1)");
        return CKS_OK;
    }
    res->t1_excess = t1_excess_bound(a, b);
    if (res->t1_excess >= cmp_floor_value("T1") / 2) {
        snprintf(res->reason, sizeof res->reason, "kept: %.3f excess bit-identical elements (T1 floor/2 %.3f)",
                 res->t1_excess, cmp_floor_value("T1") / 2);
        return CKS_OK;
    }
    /* only decoder layouts: adapters and unknown architectures have tests this does not bound */
    if (a->n_layers <= 0 || b->n_layers <= 0 || !a->has_norm || !b->has_norm) {
        snprintf(res->reason, sizeof res->reason, "kept: no decoder layers with norm gains on both sides");
        return CKS_OK;
    }
    if (a->hidden == b->hidden) {
        sa = malloc((size_t)a->n_layers * a->hidden * sizeof *sa);
        prod = malloc((size_t)a->n_layers * (size_t)b->n_layers * sizeof *prod);
        if (!sa || !prod) {
            err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
            goto out;
        }
        res->t2_bound = t2_bound(l, a, sa, prod);
        if (!(res->t2_bound < cmp_floor_value("T2") / 2)) {
            snprintf(res->reason, sizeof res->reason, "kept: a layer pair's norm-gain Spearman is %.3f (T2 floor/2 %.3f)",
                     res->t2_bound, cmp_floor_value("T2") / 2);
            goto out;
        }
    }
    /* T4a (T4b and T4c read through its alignment and run only when it passes its floor) */
    res->t4a_sampled = (uint32_t)m;
    if (a->n_tokens == 0 || b->n_tokens == 0) {
        res->clears = true; /* no embedding rows on one side: T4 cannot run */
        snprintf(res->reason, sizeof res->reason, "cleared: no shared-token embedding rows for T4; T1/T2 far from floor");
        goto out;
    }
    min_tokens = 2 * (a->embed_cols > db ? a->embed_cols : db);
    if (min_tokens < 64)
        min_tokens = 64;
    if (min_tokens > 2048)
        min_tokens = 2048;
    pair_a = malloc(a->n_tokens * sizeof *pair_a);
    pair_b = malloc(a->n_tokens * sizeof *pair_b);
    if (!pair_a || !pair_b) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        goto out;
    }
    for (uint32_t i = 0; i < a->n_tokens; i++) {
        int j = find_token(l, a->tok_text[i], a->tok_len[i]);
        if (j >= 0) {
            pair_a[n] = i;
            pair_b[n] = (uint32_t)j;
            n++;
        }
    }
    res->shared_tokens = (uint32_t)n;
    if (a->n_tokens < min_tokens) {
        /* compare's T4a matches A's tokens against B's whole vocabulary: never more than A holds */
        res->clears = true;
        snprintf(res->reason, sizeof res->reason,
                 "cleared: %u tokens, too few for T4a (%zu); T1 and T2 far under their floors", a->n_tokens, min_tokens);
        goto out;
    }
    if (n < min_tokens) {
        snprintf(res->reason, sizeof res->reason, "kept: %zu tokens shared with the upload's reference rows, too few to "
                                                  "bound T4a (%zu)", n, min_tokens);
        goto out;
    }
    ea = malloc(n * m * sizeof *ea);
    sim = malloc(m * db * sizeof *sim);
    if (!ea || !sim) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        goto out;
    }
    for (size_t r = 0; r < n; r++)
        memcpy(ea + r * m, a->probe + (size_t)pair_a[r] * m, m * sizeof *ea);
    normalise_columns(ea, n, m);
    for (slot = 0; slot < EB_MEMO; slot++)
        if (l->memo[slot].eb && l->memo[slot].n == n && !memcmp(l->memo[slot].pairs, pair_b, n * sizeof *pair_b))
            break;
    if (slot == EB_MEMO) {
        slot = l->memo_next++ % EB_MEMO;
        free(l->memo[slot].eb);
        free(l->memo[slot].pairs);
        l->memo[slot].n = 0;
        l->memo[slot].eb = malloc(n * db * sizeof *l->memo[slot].eb);
        l->memo[slot].pairs = malloc(n * sizeof *l->memo[slot].pairs);
        if (!l->memo[slot].eb || !l->memo[slot].pairs) {
            free(l->memo[slot].eb);
            l->memo[slot].eb = NULL;
            err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
            goto out;
        }
        for (size_t r = 0; r < n; r++)
            memcpy(l->memo[slot].eb + r * db, b->probe + (size_t)pair_b[r] * db, db * sizeof *l->memo[slot].eb);
        normalise_columns(l->memo[slot].eb, n, db);
        memcpy(l->memo[slot].pairs, pair_b, n * sizeof *pair_b);
        l->memo[slot].n = n;
    }
    /* In two rounds: a member that none of the first PROBE_FIRST dimensions tie to B is cleared
     * on them (the sgemm reads all of B's 2816 x 4096 columns either way: half the work for
     * nearly every unrelated member); any hit and the rest are probed. */
    first = m > PROBE_FIRST ? PROBE_FIRST : m;
    for (size_t done = 0; done < m;) {
        size_t rows = done == 0 ? first : m - done;
        cks_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)rows, (int)db, (int)n, 1.0f, ea + done, (int)m,
                  l->memo[slot].eb, (int)db, 0.0f, sim, (int)db);
        for (size_t i = 0; i < rows; i++) {
            float best = 0;
            for (size_t j = 0; j < db; j++)
                if (fabsf(sim[i * db + j]) > best)
                    best = fabsf(sim[i * db + j]);
            if (best > res->t4a_max)
                res->t4a_max = best;
            if (best >= cmp_floor_value("T4a") / 2)
                res->t4a_hits++;
        }
        done += rows;
        res->t4a_sampled = (uint32_t)done;
        if (res->t4a_hits == 0 && done < m)
            break;
    }
    /* T4a's effect is its median less the rotation null's mean: at floor/2 at least half of its
     * dimensions reach floor/2. Of a random 16 of them none then does with probability 2^-16
     * (1.5e-5); of 32, 3 or fewer with probability 5489 / 2^32 (1.3e-6): either way < 2e-5 */
    if (res->t4a_hits > 0 && (size_t)res->t4a_hits * 8 >= res->t4a_sampled) {
        snprintf(res->reason, sizeof res->reason,
                 "kept: %u of %u probed dimensions reach |cos| %.2f (T4a floor/2) over %zu shared tokens",
                 res->t4a_hits, res->t4a_sampled, cmp_floor_value("T4a") / 2, n);
        goto out;
    }
    res->clears = true;
    snprintf(res->reason, sizeof res->reason,
             "pre-screened out: no byte copy, T1 excess %.3f, T2 bound %.3f, T4a %u of %u probed dimensions reach %.2f "
             "(largest %.3f) over %zu shared tokens",
             isfinite(res->t1_excess) ? res->t1_excess : 0.0, isfinite(res->t2_bound) ? res->t2_bound : 0.0,
             res->t4a_hits, res->t4a_sampled, cmp_floor_value("T4a") / 2, res->t4a_max, n);
out:
    free(sa);
    free(prod);
    free(ea);
    free(sim);
    free(pair_a);
    free(pair_b);
    return err;
}

/* ---- provenance ---- */

static int verdict_rank(cks_verdict v)
{
    switch (v) {
    case CKS_VERDICT_IDENTICAL:
        return 0;
    case CKS_VERDICT_DERIVED:
        return 1;
    case CKS_VERDICT_INCONCLUSIVE:
        return 2;
    default:
        return 3;
    }
}

static int known_order(const void *x, const void *y)
{
    const cks_verify_known *a = x, *b = y;
    double ta = isfinite(a->t2) ? a->t2 : -2, tb = isfinite(b->t2) ? b->t2 : -2;
    if (a->rank != b->rank)
        return a->rank - b->rank;
    return ta > tb ? -1 : ta < tb;
}

static void keep_result(const cks_compare_result *r, cks_verify_known *k)
{
    k->verdict = r->verdict;
    k->rank = verdict_rank(r->verdict);
    k->screened = false;
    snprintf(k->reason, sizeof k->reason, "%s", r->reason);
    for (size_t i = 0; i < r->n_tests; i++) {
        if (strcmp(r->tests[i].id, "T2") == 0 && r->tests[i].ran)
            k->t2 = r->tests[i].statistic;
        if (strcmp(r->tests[i].id, "T1") == 0 && r->tests[i].ran)
            k->t1 = r->tests[i].statistic;
    }
}

/*
 * The screen: every test at 99 permutations and without the synthetic power checks (a 100B-
 * class pair: ~4.6 s instead of ~12.7 s, bench/fingerprint). A fingerprint is screened out
 * only when no primary test comes near significance (each permutation p above 0.01, at least
 * one of the 99 permutations as extreme, and each z under 3) with an effect at least half its
 * floor: a test far under its floor cannot make "derived" however significant (shared
 * structure of independent models is often significant and always weak). A test that the full
 * comparison rejects (p <= 1e-3 / 7 after Holm) passes neither bound only if at least one of 99
 * permutations beats it and its z is also under 3, which its p makes all but impossible. The
 * alignment test T4a draws its null independently of the permutation count, so it is the
 * full test.
 */
static cks_err compare_one(const char *path, const cks_compare_model *live, const cks_verify_against_opts *o,
                           cks_verify_known *k, cks_diag *diag)
{
    cks_err err;
    cks_fingerprint *fp = NULL;
    cks_compare_model a;
    cks_compare_opts copts;
    cks_compare_result *r = NULL;
    double max_z, min_p;

    memset(&copts, 0, sizeof copts);
    err = cks_fingerprint_load_ref(path, &fp, diag);
    if (err)
        return err;
    cks_fingerprint_model(fp, "known", &a);
    snprintf(k->source, sizeof k->source, "%s", fp->source);
    snprintf(k->repo, sizeof k->repo, "%s", fp->repo);
    snprintf(k->commit, sizeof k->commit, "%s", fp->commit);
    if (!o->no_screen) {
        copts.permutations = CKS_VERIFY_SCREEN_PERMUTATIONS;
        copts.no_synthetic_power = true;
        err = cks_compare(&a, live, &copts, &r, diag);
        if (!err && cks_verify_screen_clears(r, &max_z, &min_p)) {
            keep_result(r, k);
            k->screened = true;
            k->verdict = CKS_VERDICT_NOT_DERIVED;
            k->rank = verdict_rank(CKS_VERDICT_NOT_DERIVED);
            snprintf(k->reason, sizeof k->reason,
                     "screened out: at %d permutations no test comes near significance (smallest p %.2g, largest z "
                     "%.2g); the full comparison was skipped (--no-screen runs it)",
                     CKS_VERIFY_SCREEN_PERMUTATIONS, min_p, isfinite(max_z) ? max_z : 0.0);
            goto out;
        }
        cks_compare_result_free(r);
        r = NULL;
        if (err)
            goto out;
        memset(&copts, 0, sizeof copts);
    }
    copts.no_synthetic_power = o->no_synthetic;
    err = cks_compare(&a, live, &copts, &r, diag);
    if (!err)
        keep_result(r, k);
out:
    cks_compare_result_free(r);
    cks_fingerprint_free(fp);
    return err;
}

/* From the fingerprint's summary. A summary that cannot be made is no error here: the
 * fingerprint goes to the screen, which says what is wrong with it. */
static cks_err prescreen_one(const char *path, cks_verify_live *pre, struct cks_cache *cache,
                             cks_verify_known *k, cks_diag *diag)
{
    cks_verify_summary *s = NULL;
    cks_verify_prescreen_result res;
    bool cached = false;
    cks_err err;
    cks_diag ignored;

    if (cks_verify_summary_for_file(cache, path, 0, &s, &cached, &ignored) != CKS_OK)
        return CKS_OK;
    err = cks_verify_prescreen(pre, s, &res, diag);
    if (!err && res.clears) {
        snprintf(k->source, sizeof k->source, "%s", s->source);
        snprintf(k->repo, sizeof k->repo, "%s", s->repo);
        snprintf(k->commit, sizeof k->commit, "%s", s->commit);
        k->verdict = CKS_VERDICT_NOT_DERIVED;
        k->rank = verdict_rank(CKS_VERDICT_NOT_DERIVED);
        k->screened = k->prescreened = true;
        snprintf(k->reason, sizeof k->reason,
                 "%s; the screen and the full comparison were skipped (--no-screen runs them)", res.reason);
    }
    cks_verify_summary_free(s);
    return err;
}

cks_err cks_verify_against(const cks_compare_model *live, const char *const *paths, size_t n,
                           const cks_verify_against_opts *opts, cks_verify_known *out, size_t *n_done,
                           size_t *failed, cks_diag *diag)
{
    static const cks_verify_against_opts defaults;
    const cks_verify_against_opts *o = opts ? opts : &defaults;
    cks_err err = CKS_OK;
    cks_verify_live *pre = NULL;
    bool use_pre = !o->no_screen && o->prescreen != CKS_PRESCREEN_NEVER &&
                   (o->prescreen == CKS_PRESCREEN_ALWAYS || n >= CKS_VERIFY_PRESCREEN_MIN);

    *n_done = 0;
    *failed = SIZE_MAX;
    if (use_pre) {
        if (o->progress)
            o->progress(o->progress_ctx, "the upload, for the pre-screen", 0, n);
        err = cks_verify_live_prepare(live, 0, &pre, diag);
        if (err)
            goto out;
    }
    for (size_t i = 0; i < n; i++) {
        cks_verify_known *k = &out[i];
        memset(k, 0, sizeof *k);
        k->path = paths[i];
        k->t1 = k->t2 = NAN;
        if (o->progress)
            o->progress(o->progress_ctx, paths[i], i, n);
        if (pre) {
            /* one BLAS thread: each probe is a thin product (16 x 2816 by 2816 x 4096) whose
             * threads would spin more than they work; measured 89 ms against 277 ms a member
             * on this 2-core machine at a load of 8 */
            int threads = cks_blas_threads();
            cks_blas_set_threads(1);
            err = prescreen_one(paths[i], pre, o->cache, k, diag);
            cks_blas_set_threads(threads);
        }
        if (!err && !k->prescreened)
            err = compare_one(paths[i], live, o, k, diag);
        if (err) {
            *failed = i;
            goto out;
        }
        (*n_done)++;
    }
    qsort(out, n, sizeof *out, known_order);
out:
    if (o->progress)
        o->progress(o->progress_ctx, NULL, *n_done, n);
    cks_verify_live_free(pre);
    return err;
}
