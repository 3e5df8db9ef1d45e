/*
 * The fingerprint container (fingerprint.h): the committed version-1 fixture loads, encode ->
 * decode keeps every field (versions 1 and 2, bf16 packing exact), and damaged files —
 * every truncation, flipped payload bytes, bad magic, unknown version, lying lengths — fail
 * with an error instead of a crash or a half-read fingerprint (run under ASan/UBSan by make
 * test-san).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <zstd.h>

#include "check.h"
#include "ckptscope/fingerprint.h"
#include "ckptscope/stats.h"
#include "analysis/fingerprint_internal.h" /* the 4-bit quantiser and the reference strings */

#define FIXTURE "tests/fixtures/fingerprint-v1-llama-base.ckfp"

static cks_fingerprint *load_fixture(void)
{
    cks_fingerprint *fp = NULL;
    cks_diag diag = {{0}};
    const char *root = getenv("CKS_ROOT");
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", root ? root : ".", FIXTURE);
    if (cks_fingerprint_load(path, &fp, &diag) != CKS_OK) {
        fprintf(stderr, "  %s: %s\n", path, diag.text);
        return NULL;
    }
    return fp;
}

static void fixture_loads(void)
{
    cks_fingerprint *fp = load_fixture();
    CHECK(fp != NULL);
    if (!fp)
        return;
    CHECK_EQ_INT(fp->version, 1);
    CHECK_EQ_STR(fp->source, "fam/llama/base");
    CHECK(fp->ckpt && fp->ckpt->n_tensors == 57 && fp->n_hashes == 57);
    CHECK(fp->full_coverage);
    CHECK(fp->n_layers == 6 && fp->hidden == 128);
    CHECK(fp->layers && fp->layers[0].attn_norm && fp->layers[0].n_attn_norm == 128);
    CHECK(cks_ckpt_find(fp->ckpt, "model.embed_tokens.weight") != NULL);
    /* tensor data cannot be read from a header-only checkpoint: an error, not garbage */
    {
        uint8_t buf[4];
        cks_diag diag = {{0}};
        const cks_ckpt_tensor *t = &fp->ckpt->tensors[0];
        CHECK(cks_ckpt_read_tensor(fp->ckpt, t, 0, buf, t->info->end - t->info->begin < 4 ? 1 : 4, &diag) != CKS_OK);
    }
    /* norms kept decoded give back their raw bytes exactly (SHA-256 checked on load) */
    {
        size_t with_bytes = 0;
        for (size_t i = 0; i < fp->n_hashes; i++)
            with_bytes += fp->hashes[i].bytes != NULL;
        CHECK(with_bytes >= 12);
    }
    cks_fingerprint_free(fp);
}

/* Give the fixture k rows, a router and embedding tokens so every array kind is exercised. */
static void enrich(cks_fingerprint *fp)
{
    static const char *const texts[3] = {" the", "0", "\n"};
    size_t cols = fp->hidden, text_len = 0;
    cks_fp_rows *k = &fp->layers[1].k;
    k->rows = 3;
    k->cols = cols;
    k->total_rows = 64;
    k->v = malloc(3 * cols * sizeof *k->v);
    k->ids = malloc(3 * sizeof *k->ids);
    for (size_t i = 0; i < 3 * cols; i++)
        k->v[i] = (float)((int)(i % 17) - 8) / 16.0f; /* exact in bf16 */
    k->ids[0] = 0;
    k->ids[1] = 9;
    k->ids[2] = 63;
    fp->layers[2].v.rows = 1;
    fp->layers[2].v.cols = cols;
    fp->layers[2].v.total_rows = 64;
    fp->layers[2].v.v = malloc(cols * sizeof(float));
    fp->layers[2].v.ids = malloc(sizeof(uint32_t));
    fp->layers[2].v.ids[0] = 5;
    for (size_t i = 0; i < cols; i++)
        fp->layers[2].v.v[i] = 1.0f / 3.0f * (float)i; /* not bf16-exact: stored as f32 */
    fp->embed_cols = cols;
    fp->embed_rows_total = 1024;
    fp->embed_elem_bytes = 2;
    fp->vocab_size = 1024;
    fp->n_tokens = 3;
    free(fp->tokens); /* the fixture kept no tokens: replace its empty arrays */
    free(fp->text_pool);
    free(fp->embed);
    fp->tokens = calloc(3, sizeof *fp->tokens);
    fp->text_pool = malloc(16);
    fp->embed = malloc(3 * cols * sizeof *fp->embed);
    for (int i = 0; i < 3; i++) {
        size_t n = strlen(texts[i]);
        memcpy(fp->text_pool + text_len, texts[i], n);
        fp->tokens[i].id = (uint32_t)(10 * i + 1);
        fp->tokens[i].flags = (uint32_t)i;
        fp->tokens[i].len = (uint32_t)n;
        fp->tokens[i].text = fp->text_pool + text_len;
        text_len += n;
    }
    for (size_t i = 0; i < 3 * cols; i++)
        fp->embed[i] = (float)i;
}

static bool rows_equal(const cks_fp_rows *a, const cks_fp_rows *b)
{
    if (a->rows != b->rows || a->cols != b->cols || a->total_rows != b->total_rows)
        return false;
    if (a->rows && (memcmp(a->v, b->v, a->rows * a->cols * sizeof *a->v) != 0 ||
                    (a->ids && memcmp(a->ids, b->ids, a->rows * sizeof *a->ids) != 0)))
        return false;
    return true;
}

static void round_trip(void)
{
    cks_fingerprint *fp = load_fixture(), *back = NULL;
    uint8_t *buf = NULL;
    size_t len = 0;
    cks_diag diag = {{0}};
    if (!fp) {
        CHECK(fp != NULL);
        return;
    }
    enrich(fp);
    for (uint32_t version = 1; version <= CKS_FP_VERSION; version++) {
        CHECK(cks_fingerprint_encode(fp, version, &buf, &len, &diag) == CKS_OK);
        CHECK(buf && cks_fingerprint_sniff(buf, len));
        CHECK(cks_fingerprint_decode(buf, len, &back, &diag) == CKS_OK);
        if (!back) {
            fprintf(stderr, "  v%u: %s\n", version, diag.text);
            free(buf);
            continue;
        }
        CHECK_EQ_INT(back->version, version);
        CHECK(back->ckpt->n_tensors == fp->ckpt->n_tensors && back->n_hashes == fp->n_hashes);
        for (size_t i = 0; i < fp->n_hashes && i < back->n_hashes; i++) {
            CHECK(memcmp(fp->hashes[i].sha256, back->hashes[i].sha256, 32) == 0);
            CHECK_EQ_STR(fp->hashes[i].tensor->info->name, back->hashes[i].tensor->info->name);
        }
        for (size_t i = 0; i < fp->ckpt->n_tensors; i++) {
            const cks_tensor_info *x = fp->ckpt->tensors[i].info, *y = back->ckpt->tensors[i].info;
            CHECK(strcmp(x->name, y->name) == 0 && x->dtype == y->dtype && x->ndim == y->ndim &&
                  x->begin == y->begin && x->end == y->end && x->file_offset == y->file_offset);
        }
        CHECK(rows_equal(&fp->layers[1].k, &back->layers[1].k));
        CHECK(rows_equal(&fp->layers[2].v, &back->layers[2].v));
        CHECK(memcmp(fp->layers[3].ffn_norm, back->layers[3].ffn_norm, fp->hidden * sizeof(double)) == 0);
        CHECK(back->n_tokens == 3 && back->tokens[2].len == 1 && back->tokens[2].text[0] == '\n');
        CHECK_EQ_INT(back->tokens[1].flags, version >= 2 ? 1 : 0); /* flags arrived in version 2 */
        CHECK(back->embed && memcmp(back->embed, fp->embed, 3 * fp->hidden * sizeof(float)) == 0);
        CHECK(back->seed == fp->seed && back->budget == fp->budget && back->full_coverage == fp->full_coverage);
        cks_fingerprint_free(back);
        back = NULL;
        free(buf);
        buf = NULL;
    }
    cks_fingerprint_free(fp);
}

static uint64_t rng_next(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

/* Decode must fail cleanly (or succeed) on anything; the sanitizer build checks the "cleanly". */
static void damaged_files(void)
{
    cks_fingerprint *fp = load_fixture(), *back = NULL;
    uint8_t *buf = NULL, *payload = NULL, *mut = NULL, *frame = NULL;
    size_t len = 0, payload_len, bound;
    uint64_t s = 0x9E3779B97F4A7C15ull;
    size_t accepted = 0;
    cks_diag diag = {{0}};

    if (!fp) {
        CHECK(fp != NULL);
        return;
    }
    enrich(fp);
    CHECK(fp_embed_quantise(fp) == CKS_OK); /* the 4-bit arrays are mutated too */
    CHECK(cks_fingerprint_encode(fp, 0, &buf, &len, &diag) == CKS_OK);
    if (!buf)
        goto out;
    /* every truncation of the file */
    for (size_t cut = 0; cut < len; cut += (cut < 64 ? 1 : 97)) {
        CHECK(cks_fingerprint_decode(buf, cut, &back, &diag) != CKS_OK);
        CHECK(back == NULL);
    }
    /* bad magic, a future version, a lying payload length */
    buf[0] ^= 1;
    CHECK(cks_fingerprint_decode(buf, len, &back, &diag) != CKS_OK && back == NULL);
    buf[0] ^= 1;
    buf[8] = 99;
    CHECK(cks_fingerprint_decode(buf, len, &back, &diag) == CKS_ERR_UNSUPPORTED && back == NULL);
    buf[8] = CKS_FP_VERSION;
    buf[19] = 0x7f;
    CHECK(cks_fingerprint_decode(buf, len, &back, &diag) != CKS_OK && back == NULL);
    buf[19] = 0;
    /* flipped bytes inside the payload (recompressed, so the JSON and arrays parser sees them) */
    payload_len = (size_t)ZSTD_getFrameContentSize(buf + 20, len - 20);
    payload = malloc(payload_len);
    mut = malloc(payload_len);
    bound = ZSTD_compressBound(payload_len);
    frame = malloc(20 + bound);
    CHECK(payload && mut && frame && ZSTD_decompress(payload, payload_len, buf + 20, len - 20) == payload_len);
    if (!payload || !mut || !frame)
        goto out;
    memcpy(frame, buf, 20);
    for (int round = 0; round < 1500; round++) {
        size_t flips = 1 + rng_next(&s) % 4, zlen;
        memcpy(mut, payload, payload_len);
        for (size_t f = 0; f < flips; f++) {
            /* mostly inside the JSON, where every field is checked, sometimes in the arrays */
            size_t json_len = (size_t)mut[0] | (size_t)mut[1] << 8 | (size_t)mut[2] << 16;
            size_t at = rng_next(&s) % 8 ? rng_next(&s) % (json_len + 4 < payload_len ? json_len + 4 : payload_len)
                                         : rng_next(&s) % payload_len;
            mut[at] = (uint8_t)(rng_next(&s) % 4 ? mut[at] ^ (1u << (rng_next(&s) % 8)) : rng_next(&s));
        }
        zlen = ZSTD_compress(frame + 20, bound, mut, payload_len, 1);
        if (ZSTD_isError(zlen))
            continue;
        if (cks_fingerprint_decode(frame, 20 + zlen, &back, &diag) == CKS_OK) {
            CHECK(back != NULL);
            accepted++;
            cks_fingerprint_free(back);
        } else {
            CHECK(back == NULL);
        }
        back = NULL;
    }
    /* some mutations land where any value is valid (a float, a name's character) */
    CHECK(accepted < 1500);
out:
    free(buf);
    free(payload);
    free(mut);
    free(frame);
    cks_fingerprint_free(fp);
}

/* A fingerprint with n x cols embedding rows from `values` (no file behind it). */
static cks_fingerprint *with_rows(size_t n, size_t cols, const float *values)
{
    cks_fingerprint *fp = calloc(1, sizeof *fp);
    fp->n_tokens = n;
    fp->embed_cols = cols;
    fp->embed = malloc(n * cols * sizeof *fp->embed);
    memcpy(fp->embed, values, n * cols * sizeof *fp->embed);
    return fp;
}

/* Worked by hand: a column {-1, 1} has mean 0 and sd 1. At Max's step 0.3352 its codes stand
 * for +-2.5 steps = +-0.838 (squared error 0.0525); at 0.4 they stand for +-2.5 * 0.4 = +-1
 * exactly (codes floor(-1 / 0.4) + 8 = 5 and floor(1 / 0.4) + 8 = 10), so 0.4 is chosen. A
 * constant column keeps its value; a NaN becomes the column's mean. */
static void q4_worked_case(void)
{
    const float rows[6] = {-1.0f, 4.0f, NAN, 1.0f, 4.0f, 2.0f};
    cks_fingerprint *fp = with_rows(2, 3, rows);
    CHECK(fp_embed_quantise(fp) == CKS_OK);
    CHECK(fp->embed_q4);
    CHECK(fabsf(fp->embed_qstep[0] - 0.4f) < 1e-6f && fp->embed_qoff[0] == 0.0f);
    CHECK(fp->embed_qstep[1] == 0.0f && fp->embed_qoff[1] == 4.0f);
    CHECK(fp->embed_qstep[2] == 0.0f && fp->embed_qoff[2] == 2.0f);
    /* cells in row order, two per byte, low nibble first: (5, 8) (8, 10) (8, 8) */
    CHECK_EQ_INT(fp->embed_codes[0], 0x85);
    CHECK_EQ_INT(fp->embed_codes[1], 0xA8);
    CHECK_EQ_INT(fp->embed_codes[2], 0x88);
    CHECK(fabsf(fp->embed[0] + 1.0f) < 1e-6f && fabsf(fp->embed[3] - 1.0f) < 1e-6f);
    CHECK(fp->embed[1] == 4.0f && fp->embed[4] == 4.0f && fp->embed[2] == 2.0f && fp->embed[5] == 2.0f);
    cks_fingerprint_free(fp);
}

/* Over the columns of x (n x cols) and their codes' values y: the mean squared error relative
 * to the column's variance, and the mean cosine, both about the column's mean. */
static void column_fidelity(const float *x, const float *y, size_t n, size_t cols, double *mse, double *cosine)
{
    *mse = *cosine = 0;
    for (size_t c = 0; c < cols; c++) {
        double mean = 0, var = 0, err = 0, xy = 0, yy = 0;
        for (size_t r = 0; r < n; r++)
            mean += x[r * cols + c] / (double)n;
        for (size_t r = 0; r < n; r++) {
            double a = x[r * cols + c] - mean, b = y[r * cols + c] - mean;
            var += a * a;
            err += (a - b) * (a - b);
            xy += a * b;
            yy += b * b;
        }
        *mse += err / var / (double)cols;
        *cosine += xy / sqrt(var * yy) / (double)cols;
    }
}

/* On Gaussian columns the distortion must be the published one: Max (1960), Table II, gives
 * 0.01154 for the optimal 16-level uniform quantiser of a unit Gaussian, so a column keeps a
 * cosine of sqrt(1 - 0.01154) = 0.9942 with its codes. */
static void q4_gaussian_distortion(void)
{
    enum { N = 4096, COLS = 32 };
    float *v = malloc(N * COLS * sizeof *v);
    uint64_t s = 0x243F6A8885A308D3ull;
    double mse = 0, cos_sum = 0;
    cks_fingerprint *fp;
    for (size_t i = 0; i < N * COLS; i += 2) { /* Box-Muller, with per-column scale and offset */
        double u1 = ((double)(rng_next(&s) >> 11) + 0.5) / 9007199254740992.0;
        double u2 = (double)(rng_next(&s) >> 11) / 9007199254740992.0;
        double r = sqrt(-2 * log(u1));
        v[i] = (float)(r * cos(2 * M_PI * u2));
        v[i + 1] = (float)(r * sin(2 * M_PI * u2));
    }
    for (size_t i = 0; i < N * COLS; i++)
        v[i] = v[i] * (float)(0.01 * (1 + i % COLS)) + (float)(i % COLS) * 0.001f;
    fp = with_rows(N, COLS, v);
    CHECK(fp_embed_quantise(fp) == CKS_OK);
    column_fidelity(v, fp->embed, N, COLS, &mse, &cos_sum);
    CHECK_MSG(fabs(mse - 0.01154) < 0.0008, "relative distortion %.5f, Max's 0.01154", mse);
    CHECK_MSG(fabs(cos_sum - 0.9942) < 0.0005, "column cosine %.5f, expected 0.9942", cos_sum);
    cks_fingerprint_free(fp);
    free(v);
}

/* The plain reference: Max's Gaussian step for every column, then the mean column cosine. */
static double fixed_step_cosine(const float *v, size_t n, size_t cols)
{
    double total = 0;
    for (size_t c = 0; c < cols; c++) {
        double mean = 0, var = 0, xy = 0, yy = 0;
        for (size_t r = 0; r < n; r++)
            mean += v[r * cols + c] / (double)n;
        for (size_t r = 0; r < n; r++)
            var += (v[r * cols + c] - mean) * (v[r * cols + c] - mean) / (double)n;
        for (size_t r = 0; r < n; r++) {
            double x = v[r * cols + c] - mean, step = 0.3352 * sqrt(var), q = floor(x / step) + 8, y;
            q = q < 0 ? 0 : q > 15 ? 15 : q;
            y = step * (q - 7.5);
            xy += x * y;
            yy += y * y;
        }
        total += xy / sqrt(var * (double)n * yy) / (double)cols;
    }
    return total;
}

/* Heavy tails (Student-t, 3 degrees of freedom, as rare tokens with large values make): the
 * chosen steps keep a mean column cosine of about 0.95 (numpy simulation of the same rule:
 * 0.954), above the 0.93 of Max's Gaussian step used for every column. */
static void q4_heavy_tails(void)
{
    enum { N = 4096, COLS = 32 };
    float *v = malloc(N * COLS * sizeof *v);
    cks_rng rng;
    cks_fingerprint *fp;
    double adaptive, mse, fixed;
    cks_rng_seed(&rng, 3);
    for (size_t i = 0; i < N * COLS; i++) {
        double chi = 0;
        for (int k = 0; k < 3; k++) {
            double g = cks_rng_normal(&rng);
            chi += g * g;
        }
        v[i] = (float)(cks_rng_normal(&rng) / sqrt(chi / 3));
    }
    fixed = fixed_step_cosine(v, N, COLS);
    fp = with_rows(N, COLS, v);
    CHECK(fp_embed_quantise(fp) == CKS_OK);
    column_fidelity(v, fp->embed, N, COLS, &mse, &adaptive);
    CHECK_MSG(adaptive > fixed && adaptive > 0.94, "mean column cosine %.4f (fixed Gaussian step %.4f)", adaptive,
              fixed);
    cks_fingerprint_free(fp);
    free(v);
}

/* Version 3 stores the codes: decoding gives the builder's values to the bit. An older version
 * stores those values as floats. */
static void q4_round_trip(void)
{
    cks_fingerprint *fp = load_fixture(), *back = NULL;
    uint8_t *buf = NULL;
    size_t len = 0, cells;
    cks_diag diag = {{0}};
    if (!fp) {
        CHECK(fp != NULL);
        return;
    }
    enrich(fp);
    CHECK(fp_embed_quantise(fp) == CKS_OK);
    cells = fp->n_tokens * fp->embed_cols;
    for (uint32_t version = 2; version <= CKS_FP_VERSION; version++) {
        CHECK(cks_fingerprint_encode(fp, version, &buf, &len, &diag) == CKS_OK);
        CHECK(cks_fingerprint_decode(buf, len, &back, &diag) == CKS_OK);
        if (back) {
            CHECK(back->embed && memcmp(back->embed, fp->embed, cells * sizeof *fp->embed) == 0);
            CHECK(back->embed_q4 == (version >= 3));
            if (version >= 3)
                CHECK(back->embed_codes && memcmp(back->embed_codes, fp->embed_codes, (cells + 1) / 2) == 0 &&
                      memcmp(back->embed_qstep, fp->embed_qstep, fp->embed_cols * sizeof(float)) == 0);
        }
        cks_fingerprint_free(back);
        back = NULL;
        free(buf);
        buf = NULL;
    }
    cks_fingerprint_free(fp);
}

static bool has_ref(const fp_refs *r, const char *s)
{
    for (size_t i = 0; i < r->n; i++)
        if (r->len[i] == strlen(s) && memcmp(r->text[i], s, r->len[i]) == 0)
            return true;
    return false;
}

/* The reference list is part of the format: version 2's 3,382 strings (README) are the start of
 * version 3's, which adds every two- and three-letter lowercase piece, bare and spaced. */
static void reference_strings(void)
{
    fp_refs *v2 = malloc(sizeof *v2), *v3 = malloc(sizeof *v3);
    fp_refs_build(v2, 2);
    fp_refs_build(v3, 3);
    CHECK_EQ_INT(v2->n, 3382);
    CHECK_EQ_INT(v3->n, 3382 + 2 * 26 * 26 + 2 * 26 * 26 * 26);
    for (size_t i = 0; i < v2->n; i++)
        CHECK(v2->len[i] == v3->len[i] && memcmp(v2->text[i], v3->text[i], v2->len[i]) == 0);
    CHECK(has_ref(v3, " the") && has_ref(v3, "qx") && has_ref(v3, " qx") && has_ref(v3, "zzz") &&
          has_ref(v3, " abc") && !has_ref(v2, "zzz"));
    free(v2);
    free(v3);
}

static void sniff_and_free_null(void)
{
    CHECK(!cks_fingerprint_sniff("CKSFPRN", 7));
    CHECK(cks_fingerprint_sniff("CKSFPRNT....", 12));
    CHECK(!cks_fingerprint_sniff(NULL, 0));
    cks_fingerprint_free(NULL);
}

TEST_MAIN(T(fixture_loads), T(round_trip), T(damaged_files), T(q4_worked_case), T(q4_gaussian_distortion),
          T(q4_heavy_tails), T(q4_round_trip), T(reference_strings), T(sniff_and_free_null))
