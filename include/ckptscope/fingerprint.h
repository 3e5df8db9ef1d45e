/*
 * ckptscope/fingerprint.h — a compact, versioned record of what `compare` reads from a model,
 * so that a new upload can be checked against thousands of known models without refetching
 * any of them.
 *
 * A fingerprint is built with compare's own loader (same seed, same budget, same decoding),
 * so a comparison against it sees exactly the data a live comparison would have read, except
 * where the size cap forced a subset (then it says so). It holds:
 *   - provenance: source, repo, revision, commit, each file's size and SHA-256 (when known);
 *   - the header summary: every tensor's name, dtype, shape, file and data offsets, each
 *     file's __metadata__, and config.json verbatim (tensor roles are rebuilt from these);
 *   - the SHA-256 of every tensor compare read whole, with its low-information flag, and the
 *     raw bytes of the small ones the tests decode (norm gains, routers, router biases);
 *   - the sampled k and v row blocks of every layer with their row indices and the seed;
 *   - the embedding rows of the tokens of a fixed list of reference strings (every token when
 *     the whole embedding fits), each with its normalised string and flags.
 *
 * File format (README "Fingerprints and verify"): 8 bytes "CKSFPRNT", u32 LE version,
 * u64 LE payload length, then one zstd frame holding the payload: u32 LE JSON length, the JSON
 * metadata (UTF-8), then a binary section of little-endian arrays that the JSON refers to by
 * {"enc", "off", "n"}. Version 1 stored every float array as f32; version 2 may store them as
 * bf16 when that is exact, and adds token flags; version 3 (current) may store the embedding
 * rows as 4-bit codes per column ("q4") when the rows T4 needs would not fit the cap as bf16,
 * and draws reference tokens from a longer list. Readers accept 1, 2 and 3.
 *
 * A fingerprint file is untrusted input: every count and offset is bounded and overflow-checked
 * before use. Library only: never prints, never exits.
 */
#ifndef CKPTSCOPE_FINGERPRINT_H
#define CKPTSCOPE_FINGERPRINT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ckptscope/checkpoint.h"
#include "ckptscope/compare.h"
#include "ckptscope/error.h"

#define CKS_FP_MAGIC "CKSFPRNT"
#define CKS_FP_MAGIC_LEN 8
#define CKS_FP_VERSION 3
#define CKS_FP_MIN_VERSION 1
#define CKS_FP_DEFAULT_MAX_BYTES 10000000u /* the cap on the file, compressed */
#define CKS_FP_MAX_PAYLOAD (256u << 20)    /* a reader refuses larger payloads */

typedef struct cks_fp_file {
    char *path;
    uint64_t size;
    char sha256[65];         /* the Hub's LFS SHA-256, "" when unknown */
} cks_fp_file;

typedef struct cks_fp_hash {
    const cks_ckpt_tensor *tensor; /* into ckpt->tensors */
    uint8_t sha256[32];
    bool low_information;
    uint8_t *bytes;          /* raw tensor bytes when kept (norms, routers, biases), else NULL */
    size_t len;
} cks_fp_hash;

typedef struct cks_fp_rows {
    float *v;                /* rows x cols */
    size_t rows, cols;
    uint32_t *ids;           /* row index of each stored row */
    size_t total_rows;       /* rows of the whole matrix */
} cks_fp_rows;

/* What compare decoded from one decoder layer (NULL / empty where it read nothing). */
typedef struct cks_fp_layer {
    const cks_ckpt_tensor *attn_norm_t, *ffn_norm_t, *router_t, *router_bias_t;
    double *attn_norm, *ffn_norm;   /* hidden values each */
    size_t n_attn_norm, n_ffn_norm;
    cks_fp_rows router;             /* every expert row (ids NULL) */
    double *router_bias;
    size_t n_router_bias;
    cks_fp_rows k, v;               /* sampled rows with their ids */
} cks_fp_layer;

typedef struct cks_fp_token {
    uint32_t id;
    uint32_t flags;          /* CKS_TOKEN_* */
    uint32_t len;
    uint8_t *text;           /* normalised bytes (points into text_pool) */
} cks_fp_token;

typedef struct cks_fingerprint {
    uint32_t version;        /* of the file it was read from (CKS_FP_VERSION when built) */
    char *source, *repo, *revision, *commit; /* "" when unknown */
    char *tool;
    size_t n_files;
    cks_fp_file *files;
    cks_ckpt *ckpt;          /* headers only: tensor data cannot be read from it */
    char *config_json;       /* NULL when the model had none */
    size_t config_len;
    uint64_t seed, budget;
    bool full_coverage;      /* compare hashed every tensor */
    int n_layers;
    size_t hidden;
    size_t n_hashes;
    cks_fp_hash *hashes;
    cks_fp_layer *layers;    /* n_layers entries (NULL when n_layers <= 0) */
    bool kv_subsampled;      /* fewer k/v rows than compare read (size cap) */
    size_t routers_dropped;  /* layers whose router compare read but the cap left out */
    /* embedding rows */
    size_t embed_rows_total, embed_cols, embed_elem_bytes;
    bool embed_all;          /* every token of the vocabulary is kept */
    size_t vocab_size;       /* tokens in the model's tokenizer.json (0: none) */
    size_t n_tokens;         /* sorted by id */
    cks_fp_token *tokens;
    uint8_t *text_pool;
    float *embed;            /* n_tokens x embed_cols (the decoded values when embed_q4) */
    /* Version 3: when the rows T4 needs do not fit the cap as bf16 they are kept as 4-bit codes,
     * one uniform quantiser per column (hidden dimension), the statistic's unit:
     * value = qoff[col] + qstep[col] * (code - 7.5). Exact rows leave these NULL. */
    bool embed_q4;
    uint8_t *embed_codes;    /* n_tokens x embed_cols codes, two per byte, low nibble first */
    float *embed_qoff, *embed_qstep; /* embed_cols each */
    uint64_t bytes_read;     /* what building it read from the model */
    char sampling[512];
} cks_fingerprint;

typedef struct cks_fp_build_opts {
    uint64_t max_bytes;      /* 0 = CKS_FP_DEFAULT_MAX_BYTES (compressed file size) */
    uint64_t budget;         /* compare's budget; 0 = compare's default */
    uint64_t seed;           /* 0 = compare's default */
    const char *source, *repo, *revision, *commit; /* provenance, may be NULL */
    uint32_t version;        /* 0 = current; 1 writes the version-1 layout (tests, fixtures) */
} cks_fp_build_opts;

/* Read what compare reads from m and keep it (m->fingerprint must be NULL). */
cks_err cks_fingerprint_build(const cks_compare_model *m, const cks_fp_build_opts *opts, cks_fingerprint **out,
                              cks_diag *diag);

/* Serialise (magic, version, zstd frame). *out is malloc'd. version 0 = current. */
cks_err cks_fingerprint_encode(const cks_fingerprint *fp, uint32_t version, uint8_t **out, size_t *len,
                               cks_diag *diag);
/* Parse an encoded fingerprint of any supported version. */
cks_err cks_fingerprint_decode(const uint8_t *buf, size_t len, cks_fingerprint **out, cks_diag *diag);

/* Files: write atomically (temporary file, fsync, rename); read whole then decode. */
cks_err cks_fingerprint_save(const cks_fingerprint *fp, uint32_t version, const char *path, uint64_t *written,
                             cks_diag *diag);
cks_err cks_fingerprint_load(const char *path, cks_fingerprint **out, cks_diag *diag);

/* True when buf starts with the magic (a SOURCE that is a fingerprint file). */
bool cks_fingerprint_sniff(const void *buf, size_t len);
bool cks_fingerprint_is_file(const char *path);

/* The compare model view of a fingerprint (label given by the caller). */
void cks_fingerprint_model(const cks_fingerprint *fp, const char *label, cks_compare_model *out);

/*
 * After cks_compare with a fingerprint on either side: add to each test what the fingerprint
 * limited (T1 bitwise fractions only on the tensors kept whole, embedding rows only of the
 * reference tokens, k/v rows sampled with another seed). a or b may be NULL (a live side).
 */
void cks_fingerprint_annotate(cks_compare_result *r, const cks_fingerprint *a, const cks_fingerprint *b,
                              uint64_t seed);

void cks_fingerprint_free(cks_fingerprint *fp);

#endif
