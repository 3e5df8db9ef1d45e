/*
 * Out-of-memory paths, walked one allocation at a time.
 *
 * This program is linked with `-Wl,--wrap=malloc,...` (Makefile): every allocation the library
 * makes goes through the shim below, which can be told to fail the n-th one. Each case runs an
 * operation once to count its allocations, then again failing allocation 0, 1, 2, ... in turn,
 * and checks that every run returns CKS_OK (an allocation the code can do without) or
 * CKS_ERR_NOMEM, never another error that would blame the input, and never crashes. Under
 * `make test-san` LeakSanitizer also sees every early exit free what it had taken.
 *
 * Only the library's own allocations are wrapped: libcurl, OpenSSL, cJSON and zstd allocate
 * inside their shared objects, which --wrap does not reach.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "ckptscope/cache.h"
#include "ckptscope/checkpoint.h"
#include "ckptscope/compare.h"
#include "ckptscope/fingerprint.h"
#include "ckptscope/hash.h"
#include "ckptscope/safetensors.h"
#include "ckptscope/tokenizer.h"
#include "support/stwriter.h"

/* ---- the shim ---- */

void *__real_malloc(size_t size);
void *__real_calloc(size_t n, size_t size);
void *__real_realloc(void *p, size_t size);
char *__real_strdup(const char *s);
char *__real_strndup(const char *s, size_t n);

static long long allocations;   /* allocation calls since the counter was reset */
static long long fail_at = -1;  /* the call that fails (-1: none) */
__attribute__((noinline)) void oom_failing_now(void);
__attribute__((noinline)) void oom_failing_now(void) { __asm__ volatile(""); } /* a breakpoint for debugging a walk */

static int should_fail(void)
{
    if (allocations++ != fail_at)
        return 0;
    oom_failing_now();
    errno = ENOMEM; /* as the C library's allocators do */
    return 1;
}

void *__wrap_malloc(size_t size)
{
    return should_fail() ? NULL : __real_malloc(size);
}

void *__wrap_calloc(size_t n, size_t size)
{
    return should_fail() ? NULL : __real_calloc(n, size);
}

void *__wrap_realloc(void *p, size_t size)
{
    return should_fail() ? NULL : __real_realloc(p, size);
}

char *__wrap_strdup(const char *s)
{
    return should_fail() ? NULL : __real_strdup(s);
}

char *__wrap_strndup(const char *s, size_t n)
{
    return should_fail() ? NULL : __real_strndup(s, n);
}

/* ---- the walk ---- */

/* What an operation answered, in a few words (a verdict and what ran, a digest): a run that
 * returns CKS_OK although an allocation failed must still give the clean run's answer, or the
 * failure was silently turned into a wrong result. */
static char answer[512];

typedef cks_err (*oom_op)(void *ctx, cks_diag *diag);

/* Run op failing each of its allocations in turn (every `stride`-th after the first 400, for
 * operations with thousands); return the number of allocations of a clean run. */
static long long walk(const char *what, oom_op op, void *ctx, long long stride)
{
    cks_diag diag = {{0}};
    long long total, bad = 0, tolerated = 0;
    cks_err err;

    char clean[sizeof answer];
    allocations = 0;
    fail_at = -1;
    answer[0] = 0;
    err = op(ctx, &diag);
    total = allocations;
    snprintf(clean, sizeof clean, "%s", answer);
    CHECK_MSG(err == CKS_OK, "%s: the clean run failed: %s", what, diag.text);
    CHECK_MSG(total > 0, "%s: no allocation went through the shim (is the program linked with --wrap?)", what);
    if (err != CKS_OK)
        return 0;
    for (long long n = 0; n < total; n += n < 400 ? 1 : stride) {
        memset(&diag, 0, sizeof diag);
        allocations = 0;
        fail_at = n;
        answer[0] = 0;
        err = op(ctx, &diag);
        fail_at = -1;
        if (err == CKS_OK) {
            tolerated++;
            if (strcmp(answer, clean) != 0 && bad++ < 5)
                CHECK_MSG(0, "%s: failing allocation %lld of %lld changed the answer: \"%s\", clean \"%s\"", what, n,
                          total, answer, clean);
        }
        else if (err != CKS_ERR_NOMEM && bad++ < 5)
            CHECK_MSG(0, "%s: failing allocation %lld of %lld gave %s (%s), not out of memory", what, n, total,
                      cks_strerror(err), diag.text);
    }
    CHECK_MSG(bad == 0, "%s: %lld runs ended in another error than out of memory", what, bad);
    printf("  %s: %lld allocations walked (%lld tolerated)\n", what, total, tolerated);
    return total;
}

/* ---- operations ---- */

/* Fixtures are built and freed outside the count: the walk is about the library's allocations. */
static long long pause_saved_at, pause_saved_count;

static void shim_pause(void)
{
    pause_saved_at = fail_at;
    pause_saved_count = allocations;
    fail_at = -1;
}

static void shim_resume(void)
{
    fail_at = pause_saved_at;
    allocations = pause_saved_count;
}

static cks_err parse_fixtures(void *ctx, cks_diag *diag)
{
    cks_err err = CKS_OK;
    (void)ctx;
    for (size_t i = 0; i < st_n_fixtures && err == CKS_OK; i++) {
        st_buf b = {0};
        cks_st_header *h = NULL;
        if (st_fixtures[i].expect != CKS_OK)
            continue;
        shim_pause();
        st_fixtures[i].build(&b);
        shim_resume();
        uint64_t need = 0;
        err = cks_st_parse(b.data, b.len, b.len, &h, &need, diag);
        cks_st_header_free(h);
        shim_pause();
        st_buf_free(&b);
        shim_resume();
    }
    return err;
}

static cks_err parse_index(void *ctx, cks_diag *diag)
{
    static const char index[] = "{\"metadata\": {\"total_size\": 64}, \"weight_map\": {"
                                "\"a.weight\": \"model-00001-of-00002.safetensors\", "
                                "\"b.weight\": \"model-00002-of-00002.safetensors\", "
                                "\"c.bias\": \"model-00001-of-00002.safetensors\"}}";
    cks_st_index *ix = NULL;
    cks_err err;
    (void)ctx;
    err = cks_st_index_parse(index, sizeof index - 1, &ix, diag);
    cks_st_index_free(ix);
    return err;
}

static cks_err parse_vocab(void *ctx, cks_diag *diag)
{
    static const char tok[] =
        "{\"version\": \"1.0\", \"added_tokens\": [{\"id\": 5, \"content\": \"<|end|>\", \"special\": true}],"
        " \"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1, \"ab\": 2, \"\\u0120the\": 3, \"12\": 4},"
        " \"merges\": [\"a b\"]}}";
    cks_vocab *v = NULL;
    cks_err err;
    (void)ctx;
    err = cks_vocab_parse(tok, sizeof tok - 1, &v, diag);
    cks_vocab_free(v);
    return err;
}

/* open a local file and hash every tensor (one thread, so the walk is deterministic) */
static cks_err open_and_hash(void *ctx, cks_diag *diag)
{
    const char *path = ctx;
    cks_ckpt *ck = NULL;
    const cks_ckpt_tensor **sel = NULL;
    cks_tensor_hash *out = NULL;
    cks_hash_opts opts = {.threads = 1};
    cks_err err = cks_ckpt_open_local(path, &ck, diag);
    if (err != CKS_OK)
        goto out;
    sel = __real_malloc(ck->n_tensors * sizeof *sel);
    out = __real_malloc(ck->n_tensors * sizeof *out);
    if (!sel || !out) { /* the test's own buffers (not walked): report it as what it is */
        err = CKS_ERR_NOMEM;
        goto out;
    }
    for (size_t i = 0; i < ck->n_tensors; i++)
        sel[i] = &ck->tensors[i];
    err = cks_hash_tensors(ck, sel, ck->n_tensors, &opts, out, diag);
    for (size_t i = 0; err == CKS_OK && i < ck->n_tensors; i++)
        snprintf(answer + strlen(answer), sizeof answer - strlen(answer), "%.8s ", out[i].hex);
out:
    free(sel);
    free(out);
    cks_ckpt_free(ck);
    return err;
}

static cks_err check_local(void *ctx, cks_diag *diag)
{
    cks_ckpt_check *c = NULL;
    cks_err err = cks_ckpt_check_local(ctx, &c, diag);
    cks_ckpt_check_free(c);
    return err;
}

static cks_err fingerprint_round_trip(void *ctx, cks_diag *diag)
{
    const char *path = ctx;
    cks_fingerprint *fp = NULL, *back = NULL;
    uint8_t *buf = NULL;
    size_t len = 0;
    cks_err err = cks_fingerprint_load(path, &fp, diag);
    if (err == CKS_OK)
        err = cks_fingerprint_encode(fp, 0, &buf, &len, diag);
    if (err == CKS_OK)
        err = cks_fingerprint_decode(buf, len, &back, diag);
    if (err == CKS_OK) {
        uint64_t h = 1469598103934665603ull; /* FNV-1a of the encoded bytes */
        for (size_t i = 0; i < len; i++)
            h = (h ^ buf[i]) * 1099511628211ull;
        snprintf(answer, sizeof answer, "%zu bytes, fnv %016llx, %zu layers", len, (unsigned long long)h,
                 (size_t)back->n_layers);
    }
    free(buf);
    cks_fingerprint_free(back);
    cks_fingerprint_free(fp);
    return err;
}

/* A compare's answer: the verdict and which tests ran. */
static void compare_answer(const cks_compare_result *r)
{
    int at = snprintf(answer, sizeof answer, "%s:", cks_verdict_name(r->verdict));
    for (size_t i = 0; i < r->n_tests && at > 0 && (size_t)at < sizeof answer; i++)
        at += snprintf(answer + at, sizeof answer - (size_t)at, " %s%s", r->tests[i].id, r->tests[i].ran ? "" : "-");
}

/* compare a fingerprint with itself: the family, the power checks and the verdict */
static cks_err compare_fingerprints(void *ctx, cks_diag *diag)
{
    const char *path = ctx;
    cks_fingerprint *fp = NULL;
    cks_compare_model a, b;
    cks_compare_opts opts = {.permutations = 99};
    cks_compare_result *r = NULL;
    cks_err err = cks_fingerprint_load(path, &fp, diag);
    if (err != CKS_OK)
        goto out;
    cks_fingerprint_model(fp, "A", &a);
    cks_fingerprint_model(fp, "B", &b);
    err = cks_compare(&a, &b, &opts, &r, diag);
    if (err == CKS_OK)
        compare_answer(r);
out:
    cks_compare_result_free(r);
    cks_fingerprint_free(fp);
    return err;
}

/* compare two live local checkpoints (the loader, decoding, the family) */
static cks_err compare_live(void *ctx, cks_diag *diag)
{
    char *const *paths = ctx;
    cks_ckpt *ca = NULL, *cb = NULL;
    cks_compare_model a = {.label = "A"}, b = {.label = "B"};
    cks_compare_opts opts = {.permutations = 99};
    cks_compare_result *r = NULL;
    cks_err err = cks_ckpt_open_local(paths[0], &ca, diag);
    if (err == CKS_OK)
        err = cks_ckpt_open_local(paths[1], &cb, diag);
    if (err != CKS_OK)
        goto out;
    a.ckpt = ca;
    b.ckpt = cb;
    err = cks_compare(&a, &b, &opts, &r, diag);
    if (err == CKS_OK)
        compare_answer(r);
out:
    cks_compare_result_free(r);
    cks_ckpt_free(ca);
    cks_ckpt_free(cb);
    return err;
}

/* ---- cases ---- */

/* A batch of small pieces and one large piece into a fresh cache (a pack and an extent
 * file), then read back by a second cache object, as another process would. The answer
 * counts the pieces that read back exact; a wrong byte is an answer of its own. */
#define CACHE_PIECES 40
static cks_err cache_pack_round_trip(void *ctx, cks_diag *diag)
{
    const char *root = ctx;
    char dir[300];
    static unsigned long run;
    cks_err err = CKS_OK;
    cks_cache *c = NULL;
    static unsigned char bytes[CACHE_PIECES][3000], big[300000], back[300000];
    cks_range r[CACHE_PIECES + 1];
    const void *d[CACHE_PIECES + 1];
    snprintf(dir, sizeof dir, "%s/cache-%lu", root, run++);
    for (size_t i = 0; i < CACHE_PIECES; i++) {
        r[i] = (cks_range){(uint64_t)i * 10000 + 7, 1000 + 50 * i};
        for (size_t j = 0; j < r[i].length; j++)
            bytes[i][j] = (unsigned char)((r[i].offset + j) * 2654435761u >> 13);
        d[i] = bytes[i];
    }
    r[CACHE_PIECES] = (cks_range){1000000, sizeof big};
    for (size_t j = 0; j < sizeof big; j++)
        big[j] = (unsigned char)((1000000 + j) * 2654435761u >> 13);
    d[CACHE_PIECES] = big;
    cks_cache_opts o = {.dir = dir, .revision_ttl_seconds = -1};
    err = cks_cache_open(&o, &c, diag);
    if (!err)
        err = cks_cache_write_many(c, "sha256:" "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
                                   r, d, CACHE_PIECES + 1, diag);
    cks_cache_free(c);
    c = NULL;
    if (!err)
        err = cks_cache_open(&o, &c, diag);
    int exact = 0, wrong = 0;
    for (size_t i = 0; !err && i <= CACHE_PIECES; i++) {
        bool hit = false;
        err = cks_cache_read(c, "sha256:" "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
                             r[i].offset, back, (size_t)r[i].length, &hit, diag);
        if (!err && hit)
            memcmp(back, d[i], (size_t)r[i].length) == 0 ? exact++ : wrong++;
    }
    cks_cache_free(c);
    snprintf(answer, sizeof answer, "%d exact, %d wrong", exact, wrong);
    return err;
}

static char tmpdir[256];

static const char *write_model(const char *name, const void *filler)
{
    static char paths[2][512];
    static int next;
    char *path = paths[next++ % 2];
    st_writer *w;
    st_buf b = {0};
    FILE *f;
    const uint64_t mat[2] = {64, 32}, vec[1] = {64};
    snprintf(path, sizeof paths[0], "%s/%s", tmpdir, name);
    w = st_writer_new();
    st_writer_meta(w, "format", "pt");
    st_writer_add(w, "model.layers.0.self_attn.k_proj.weight", CKS_DTYPE_BF16, mat, 2, filler);
    st_writer_add(w, "model.layers.0.input_layernorm.weight", CKS_DTYPE_F32, vec, 1, NULL);
    st_writer_add(w, "model.layers.1.self_attn.k_proj.weight", CKS_DTYPE_BF16, mat, 2, NULL);
    st_writer_add(w, "model.layers.1.input_layernorm.weight", CKS_DTYPE_F32, vec, 1, NULL);
    st_writer_finish(w, &b);
    st_writer_free(w);
    f = fopen(path, "wb");
    if (!f || fwrite(b.data, 1, b.len, f) != b.len) {
        if (f)
            fclose(f);
        st_buf_free(&b);
        return NULL;
    }
    fclose(f);
    st_buf_free(&b);
    return path;
}

static const char *fixture_path(void)
{
    static char path[4096];
    const char *root = getenv("CKS_ROOT");
    snprintf(path, sizeof path, "%s/tests/fixtures/fingerprint-v1-llama-base.ckfp", root ? root : ".");
    return access(path, R_OK) == 0 ? path : NULL;
}

static void header_parsing_survives_every_failed_allocation(void)
{
    walk("safetensors headers", parse_fixtures, NULL, 1);
    walk("shard index", parse_index, NULL, 1);
    walk("tokenizer.json", parse_vocab, NULL, 1);
}

static void local_open_hash_check_and_compare_survive_every_failed_allocation(void)
{
    const char *path;
    snprintf(tmpdir, sizeof tmpdir, "/tmp/cks-oom-XXXXXX");
    if (!mkdtemp(tmpdir))
        SKIP("no temporary folder");
    static uint16_t other[64 * 32];
    const char *path2;
    for (size_t i = 0; i < sizeof other / sizeof other[0]; i++)
        other[i] = (uint16_t)(0x3c00 + (i * 2654435761u >> 20) % 512); /* bf16 values near 0.008-1 */
    path = write_model("a.safetensors", NULL);
    path2 = write_model("b.safetensors", other);
    CHECK(path != NULL && path2 != NULL);
    if (path && path2) {
        char *pair[2] = {(char *)path, (char *)path2};
        walk("open + hash", open_and_hash, (void *)path, 1);
        walk("structural check", check_local, (void *)path, 1);
        walk("compare live", compare_live, pair, 3);
    }
    if (path)
        unlink(path);
    if (path2)
        unlink(path2);
    rmdir(tmpdir);
}

static void fingerprint_decode_and_compare_survive_failed_allocations(void)
{
    const char *path = fixture_path();
    if (!path)
        SKIP("tests/fixtures/fingerprint-v1-llama-base.ckfp not found (set CKS_ROOT)");
    walk("fingerprint load/encode/decode", fingerprint_round_trip, (void *)path, 1);
    /* a compare makes thousands of allocations: every one of the first 400, then every 7th */
    walk("compare", compare_fingerprints, (void *)path, 7);
}

static void cache_write_and_read_survive_every_failed_allocation(void)
{
    char root[] = "/tmp/cks-oom-cache-XXXXXX";
    if (!mkdtemp(root))
        SKIP("no temporary folder");
    walk("cache pack write + read", cache_pack_round_trip, root, 1);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", root);
    CHECK(system(cmd) == 0);
}

TEST_MAIN(T(header_parsing_survives_every_failed_allocation),
          T(local_open_hash_check_and_compare_survive_every_failed_allocation),
          T(fingerprint_decode_and_compare_survive_failed_allocations),
          T(cache_write_and_read_survive_every_failed_allocation))
