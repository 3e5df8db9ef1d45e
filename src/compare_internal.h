/*
 * Internals of compare: the decoded data each test works on, and the helpers that load it.
 * Loading is separate from testing so the same tests run on the real pair, on control
 * pairs, and on the synthetic positives built in memory from A (no extra bytes fetched).
 */
#ifndef CKS_COMPARE_INTERNAL_H
#define CKS_COMPARE_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ckptscope/compare.h"
#include "ckptscope/roles.h"

/* A row-major float matrix. */
typedef struct cmp_matrix {
    float *v;
    size_t rows, cols;
} cmp_matrix;

typedef struct cmp_layer {
    double *attn_norm, *ffn_norm; /* hidden-length, or NULL */
    cmp_matrix k, v;              /* sampled rows x hidden */
    size_t k_total_rows, v_total_rows;
    cmp_matrix router;            /* experts x hidden */
    double *router_bias;
    size_t n_router_bias;
} cmp_layer;

/* A tensor read whole: kept raw for T1 (hashes, bit-equality). */
typedef struct cmp_raw {
    const cks_ckpt_tensor *tensor;
    cks_role role;
    cks_part part;
    int layer, expert;
    uint8_t *bytes;
    size_t len;
    uint8_t sha256[32];
    bool low_information;
} cmp_raw;

typedef struct cmp_model {
    const cks_compare_model *m;
    cks_roles *roles;
    bool known_arch;              /* enough roles to run T2-T4 */
    int n_layers;
    size_t hidden;
    cmp_layer *layers;
    size_t n_raw, cap_raw;
    cmp_raw *raw;
    bool full_coverage;           /* every tensor was hashed */
    uint64_t bytes_norms, bytes_weights, bytes_router, bytes_embed, bytes_other;
    bool synthetic;               /* built in memory, not read */
} cmp_model;

/* The embedding rows of the tokens two models share (depends on the pair). */
typedef struct cmp_embed_pair {
    cmp_matrix a, b;              /* n_tokens x hidden of each; columns L2-normalised over the
                                     tokens read (T4's cosines need it; T3's Pearson is
                                     indifferent to a per-column scale that moves with the column) */
    size_t vocab_a, vocab_b, shared;
    uint64_t bytes;
    char note[160];
} cmp_embed_pair;

typedef struct cmp_ctx {
    const cks_compare_opts *opts;
    uint64_t budget;
    uint64_t seed;
    double alpha;
    uint32_t permutations;
    /* power checks on synthetic derivatives: only the tests being checked run, expensive
     * nulls are cheaper, and T4a reuses the token-shuffle null of the real pair */
    unsigned tests_override;      /* 0: opts->tests */
    bool power_run;
    double t4a_null_mean, t4a_null_sd; /* NAN when not known */
    /* nulls of the real pair by test id, reused to judge the synthetic derivatives */
    struct cmp_null {
        char id[16];
        double mean, sd;
    } nulls[12];
    size_t n_nulls;
} cmp_ctx;

void cmp_matrix_free(cmp_matrix *m);
void cmp_normalise_columns(cmp_matrix *m);
void cmp_model_release(cmp_model *md);
void cmp_embed_pair_release(cmp_embed_pair *e);

/* Read and decode what the tests need from one model, within the budget. */
cks_err cmp_model_load(const cmp_ctx *ctx, const cks_compare_model *m, cmp_model *md, cks_diag *diag);
/* The shared-token embedding rows of a pair (empty, with a note, when not possible). */
cks_err cmp_embed_pair_load(const cmp_ctx *ctx, cmp_model *a, cmp_model *b, cmp_embed_pair *out, cks_diag *diag);
/* Decode rows `rows[0..n)` of the tensor with `role` (weight part, no layer) into out,
 * prefetching them first; out is left empty when the model has no such decodable matrix. */
cks_err cmp_load_role_rows(cmp_model *md, cks_role role, const uint32_t *rows, size_t n, cmp_matrix *out,
                           uint64_t *counter, cks_diag *diag);
/* Output rows and input width of a whole-model role's matrix (0, 0 when absent). */
void cmp_role_dims(const cmp_model *md, cks_role role, size_t *rows, size_t *cols, size_t *elem_bytes);
/* Rows sampled from a tensor with `total` rows: the same indices for the same total. */
size_t cmp_sample_rows(uint64_t seed, size_t total, size_t want, uint32_t *rows);

#endif
