/*
 * ckptscope/compare.h — "was B derived from A?", answered the way a careful reviewer would
 * (research/fingerprinting.md §3 and §7), from the fewest bytes.
 *
 * Data flow: each model's tensors get canonical roles (roles.h); the analysis states which
 * tensors and row blocks it needs under a byte budget (row blocks sampled deterministically
 * from the seed, the same rows in both models), prefetches them per file, decodes them once,
 * and runs the test family on the decoded data:
 *
 *   T1  identity        SHA-256 of every tensor read, matched across models whatever the
 *                       name or shape; the pooled fraction of bit-identical elements of
 *                       role-matched tensors against its exact shuffle null. Tensors with
 *                       few distinct values are reported apart and never count.
 *   T2  norm gains      mean Pearson (centred cosine) of attn/ffn norm vectors along the
 *                       layer pairing, null = ONE permutation of the hidden dimension applied
 *                       to every vector of B (keeps the cross-layer dependence). Raw cosine is
 *                       reported beside it and labelled as not evidence.
 *   T3  index-aligned   mean Pearson of k, v, router and embedding rows (shared tokens) with
 *       weights         one joint permutation of B's residual (input) dimension as the null.
 *   T4  alignment       a) hidden-dimension permutation + signs recovered from shared-token
 *                          embedding columns by assignment on |cos|, tested against a
 *                          token-row-shuffle null; b) T2 and T3 redone on the aligned B;
 *                       c) debiased linear CKA of k (samples = hidden dims) on the aligned B,
 *                          null = permutation of the sample rows.
 *   Generic (no known architecture): name- and shape-matched tensors, per-tensor Pearson with
 *   a permutation null, and T1.
 *
 * Verdict (§7): Holm over the primary tests at alpha; negative controls (--control) make any
 * test they trip invalid; positive controls (--positive) and two built-in synthetic positives
 * (A plus noise; A plus noise with a random residual permutation and sign flips) prove power;
 * "derived" needs a valid rejection corroborated by more than one tensor type or layer;
 * "not_derived" needs every valid test silent AND powered, and lists what it covers.
 *
 * The library never prints; the result structure carries everything a report needs.
 */
#ifndef CKPTSCOPE_COMPARE_H
#define CKPTSCOPE_COMPARE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ckptscope/cache.h"
#include "ckptscope/checkpoint.h"
#include "ckptscope/error.h"

typedef enum cks_verdict {
    CKS_VERDICT_IDENTICAL = 0,
    CKS_VERDICT_DERIVED,
    CKS_VERDICT_NOT_DERIVED,
    CKS_VERDICT_INCONCLUSIVE
} cks_verdict;

const char *cks_verdict_name(cks_verdict v); /* "identical", "derived", "not_derived", "inconclusive" */

/* Test selection bits (--tests). */
enum {
    CKS_TEST_T1 = 1u << 0,
    CKS_TEST_T2 = 1u << 1,
    CKS_TEST_T3 = 1u << 2,
    CKS_TEST_T4 = 1u << 3,
    CKS_TEST_ALL = 0xFu
};

/* One model as compare sees it: a checkpoint plus its config.json / tokenizer.json text. */
typedef struct cks_compare_model {
    const char *label;        /* "A", "B", "control 1", ... */
    const cks_ckpt *ckpt;
    const char *config_json;  /* may be NULL */
    size_t config_len;
    const char *tokenizer_json; /* may be NULL */
    size_t tokenizer_len;
    /* When set, the model is read from this fingerprint instead of ckpt's bytes (ckpt is then
     * the fingerprint's header-only checkpoint): see fingerprint.h. NULL for a live model. */
    const struct cks_fingerprint *fingerprint;
} cks_compare_model;

typedef struct cks_compare_opts {
    unsigned tests;           /* CKS_TEST_* bits; 0 = all */
    uint64_t budget_bytes;    /* per model; 0 = default (384 MiB) */
    uint64_t seed;            /* 0 = default (20260128) */
    double alpha;             /* family-wise level; 0 = 1e-3 */
    uint32_t permutations;    /* for the cheap permutation tests; 0 = 9999 */
    const cks_compare_model *controls;  /* negative controls */
    size_t n_controls;
    const cks_compare_model *positives; /* known derivatives of A */
    size_t n_positives;
    bool synthetic_power;     /* run the built-in synthetic positives (default true via 0 = on) */
    bool no_synthetic_power;
    void (*progress)(void *ctx, const char *stage); /* may be NULL */
    void *progress_ctx;
} cks_compare_opts;

#define CKS_MAX_ITEMS 4096

typedef struct cks_compare_item {  /* one layer, tensor or layer pair inside a test */
    char label[96];
    double value;             /* e.g. Pearson r of that layer */
    double raw_cosine;        /* NAN when not applicable */
} cks_compare_item;

/*
 * What kind of agreement a test measures (DESIGN.md §8: the evidence of derivation must sit in
 * what training changed, not in what initialisation fixed or what a shared base imposes).
 */
typedef enum cks_evidence {
    CKS_EVIDENCE_NONE = 0,
    /* tensors that start from a constant (norm gains at one, zero-initialised biases and
     * LoRA up factors) or an adapter's whole update: their agreement is what training wrote */
    CKS_EVIDENCE_TRAINED,
    /* tensors whose values a random initialisation fixes (weights, embeddings, LoRA down
     * factors): agreement may be a shared seed as well as a shared history */
    CKS_EVIDENCE_INIT,
    /* agreement found only through a recovered permutation of units or hidden dimensions:
     * models that share a seed agree index for index, so this takes a deliberate
     * transformation of one model's weights */
    CKS_EVIDENCE_ALIGNMENT,
    /* byte-identical high-entropy tensors */
    CKS_EVIDENCE_COPY
} cks_evidence;

const char *cks_evidence_name(cks_evidence e); /* "trained", "initialisation", "alignment", "copy", "none" */

typedef struct cks_test_result {
    char id[16];              /* "T1", "T2", "T3", "T4a", "T4b-norms", "T4b-weights", "T4c", "L", "L-init", "G", "G-init", "G-rows" */
    char name[96];
    bool primary;
    bool ran;
    char why_not[256];        /* when !ran */
    char statistic_name[64];
    double statistic;
    double raw_cosine;        /* T2: mean raw cosine, labelled as not evidence; NAN otherwise */
    char null_kind[128];
    double null_mean, null_sd;
    uint32_t permutations;
    uint32_t null_at_least;   /* draws at least as extreme as the observed statistic */
    uint64_t seed;
    double p_value;           /* as p_method says; never smaller than the method supports */
    bool p_exact;
    char p_method[256];       /* how p was obtained: "exact permutation p, T = 9999", ... */
    bool decided_by_z;        /* too few draws to reach alpha: decided on z >= 6 with no draw as extreme */
    double z;                 /* (statistic - null mean) / null sd: approximate, descriptive */
    double p_holm;            /* NAN for tests outside the Holm family */
    bool significant;         /* beyond its null (Holm, or the z rule), before the effect floor */
    bool rejects;             /* significant, effect at or above its floor, and valid */
    bool valid;
    char invalid_reason[256];
    int power;                /* 1 powered, 0 no power shown, -1 not checked */
    char power_note[256];
    double effect;            /* effect size (statistic minus null mean, in the statistic's units) */
    double floor;             /* smallest effect that counts (calibrated, see PLAN.md); NAN: none */
    bool effect_ok;           /* effect >= floor */
    char floor_note[192];     /* where the floor comes from and its margins */
    cks_evidence evidence;    /* what kind of agreement this test measures */
    char sources[48];         /* the vectors it reads ("norms", "weights", ...): two tests on the same
                                 vectors never corroborate each other */
    char tensors[256];        /* which tensors and layers */
    size_t n_layers;
    uint64_t bytes_read;      /* of both models, for this test */
    char caveats[512];
    size_t n_items;
    cks_compare_item *items;
    bool corroborated;        /* evidence from >= 2 layers or tensor types */
} cks_test_result;

/* Relations a comparison can find besides derivation (bits of cks_compare_result.findings). */
enum {
    CKS_FINDING_SHARED_INIT = 1u << 0,      /* what initialisation fixes agrees, what training changed does not */
    CKS_FINDING_SHARED_STRUCTURE = 1u << 1, /* agreement beyond chance but far below any derivative's:
                                               structure a shared base, task or recipe imposes */
    CKS_FINDING_INIT_OR_DERIVATION = 1u << 2 /* initialisation-fixed tensors agree and nothing trained
                                                from a constant could be compared: cannot tell apart */
};

typedef struct cks_hash_match {
    char name_a[160], name_b[160];
    bool low_information;
} cks_hash_match;

typedef struct cks_compare_result {
    cks_verdict verdict;
    char headline[320];       /* one plain sentence a non-statistician can act on */
    char reason[1024];        /* the statistical reason, two sentences */
    unsigned findings;        /* CKS_FINDING_* */
    char relation[768];       /* the relation found, in plain words (findings and derivation) */
    char covered[512];        /* transformations the tests cover */
    char not_covered[512];
    size_t n_tests;
    cks_test_result tests[16];
    /* T1 details */
    size_t n_hash_matches;
    cks_hash_match *hash_matches;
    size_t tensors_hashed_a, tensors_hashed_b;
    bool full_coverage;       /* every tensor of both models was hashed */
    /* descriptive */
    int layers_a, layers_b;
    size_t hidden_a, hidden_b;
    const char *family_a, *family_b;
    double *layer_matrix;     /* layers_a x layers_b norm-gain Pearson (NULL if none) */
    double *layer_matrix_aligned; /* the same after T4 alignment (NULL if none) */
    int32_t *row_best;        /* per A layer: best B layer */
    double *row_margin;
    size_t n_path;
    int32_t *path_a, *path_b; /* layer pairing used */
    double *std_curve_a, *std_curve_b; /* per-layer std of sampled k rows */
    double std_curve_corr;    /* detrended correlation, NAN if n/a */
    size_t vocab_a, vocab_b, vocab_shared;
    double router_match;      /* mean |cos| of LAP-matched router rows (layer 0 pair), NAN if n/a */
    char config_diff[1024];
    char sampling[512];       /* what was sampled, for reports */
    uint64_t seed;
    uint64_t bytes_a, bytes_b;
    size_t n_controls_run, n_positives_run;
} cks_compare_result;

cks_err cks_compare(const cks_compare_model *a, const cks_compare_model *b, const cks_compare_opts *opts,
                    cks_compare_result **out, cks_diag *diag);
void cks_compare_result_free(cks_compare_result *r);

/*
 * The memo of results (src/analysis/compare_memo.c). A comparison is a pure function of the
 * bytes of its models and the options (every sample and permutation comes from the seed), so a
 * result can be kept under a key of the models' identities and the options and shown again
 * instead of recomputed. `identities[i]` is what pins model i (a Hub commit with its files'
 * SHA-256, as the caller prints it); NULL for a model nothing pins (a local path can change
 * under the same name): then there is no key (false). `producer` names the program and its
 * version, so another version never reads an old result.
 */
bool cks_compare_memo_key(const char *const *identities, size_t n, const cks_compare_opts *opts,
                          const char *producer, char hex[65]);
/* The result kept under key: *json (the --json document) and *text (what a person reads),
 * malloc'd, or *hit false. */
cks_err cks_compare_memo_get(cks_cache *cache, const char *key, char **json, char **text, bool *hit,
                             cks_diag *diag);
/* Keep a result under key (best effort: the cache may refuse). */
cks_err cks_compare_memo_put(cks_cache *cache, const char *key, const char *json, const char *text, cks_diag *diag);

#endif
