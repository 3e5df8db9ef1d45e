/*
 * Internals of compare: the decoded data each test works on, and the helpers that load it.
 * Loading is separate from testing so the same tests run on the real pair, on control
 * pairs, and on the synthetic positives built in memory from A (no extra bytes fetched).
 */
#ifndef CKS_COMPARE_INTERNAL_H
#define CKS_COMPARE_INTERNAL_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ckptscope/compare.h"
#include "ckptscope/tokenizer.h"
#include "ckptscope/stats.h"
#include "ckptscope/layers.h"
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
    const struct cmp_loader *loader; /* where the data came from (NULL: built in memory) */
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
    int blas_threads;             /* the caller's OpenBLAS threads (compare runs on one) */
    bool alignment_only;          /* T4: T4a alone (the real pair's T4b/T4c did not run) */
    double t4a_null_mean, t4a_null_sd; /* NAN when not known */
    /* the shared-token rows chosen while A and B load (compare.c: load_pair), so each load
     * fetches its rows with its own last batch; NULL everywhere else */
    struct cmp_embed_early *early;
    /* nulls of the real pair by test id, reused to judge the synthetic derivatives */
    struct cmp_null {
        char id[16];
        double mean, sd;
    } nulls[12];
    size_t n_nulls;
} cmp_ctx;

/* ---- results of one run of the family on one pair ---- */

#define CMP_MAX_TESTS 16

typedef struct cmp_family {
    size_t n;
    cks_test_result t[CMP_MAX_TESTS];
    /* layer pairing used by T2/T3/T4 */
    size_t n_pairs;
    cks_layer_pair pairs[CKS_LAYERS_MAX_DIM];
    /* T4a alignment: A dim i -> B dim map[i] with sign[i] (-1 where the split halves of the
     * shared tokens disagree: such dimensions are left out of T4b/T4c) */
    int32_t *map;
    int8_t *sign;
    size_t map_len;
    bool identical;
    size_t n_matches;
    cks_hash_match *matches;
} cmp_family;

void cmp_family_release(cmp_family *f);
cks_test_result *cmp_family_add(cmp_family *f, const char *id, const char *name, bool primary);
cks_test_result *cmp_family_find(cmp_family *f, const char *id);

/* ---- helpers shared by the tests (compare.c) ---- */

void cmp_not_run(cks_test_result *t, const char *fmt, const char *arg);
cks_err cmp_add_item(cks_test_result *t, const char *label, double value, double raw);
/* A permutation result into t: the exact p, and the z rule when T is too small for alpha. */
void cmp_set_perm(cks_test_result *t, const cks_perm_result *pr, const char *null_kind, double alpha);
/* The real pair's null of test `id` during a power run (false when there is none). */
bool cmp_reused_null(const cmp_ctx *ctx, const char *id, double *mean, double *sd);
/* A power check's statistic judged by its z against the real pair's null. */
void cmp_judge_by_reused_null(cks_test_result *t, double observed, double mean, double sd, double alpha);
/* Finite, at least 3 values, not constant. */
bool cmp_vector_usable(const double *v, size_t n);
/* What initialisation does to a tensor, from its role or (for unknown architectures) its name. */
cks_evidence cmp_init_class(const cmp_raw *r);
/* A tensor that is a LoRA factor (the adapter tests compare those as modules). */
bool cmp_is_lora_factor(const cmp_raw *r);

/*
 * A null drawn by hand (rotations, module exchanges, per-tensor shuffles): each draw's
 * statistic goes in, a cks_perm_result with p = (1 + b) / (T + 1) comes out.
 */
typedef struct cmp_null_acc {
    double observed, sum, sumsq;
    uint32_t draws, beat;
} cmp_null_acc;

void cmp_null_start(cmp_null_acc *acc, double observed);
void cmp_null_add(cmp_null_acc *acc, double statistic);
void cmp_null_result(const cmp_null_acc *acc, uint64_t seed, cks_perm_result *out);

/* ---- checkpoints with no known architecture (compare_generic.c) ---- */

/* G (tensors trained from a constant) and G-init (tensors fixed by initialisation). */
cks_err cmp_test_generic(const cmp_ctx *ctx, const cmp_model *a, const cmp_model *b, cmp_family *f, cks_diag *diag);
/* G-rows: units matched one to one, against a null that rotates B's units within their span. */
cks_err cmp_test_generic_rows(const cmp_ctx *ctx, const cmp_model *a, const cmp_model *b, cmp_family *f,
                              cks_diag *diag);

/* ---- effect floors and the verdict (compare_verdict.c) ---- */

/* The calibrated floor of test `id` (NAN when it has none). */
double cmp_floor_value(const char *id);
/* Set t->floor, floor_note and effect_ok from the calibrated floor of t->id. */
void cmp_apply_floor(cks_test_result *t);
/* Holm over the primary tests that ran and are valid; sets p_holm, significant, rejects. */
void cmp_apply_holm(cmp_family *f, double alpha);
/* A test "flags" a pair when it is significant on its own (its floor allowing) and its effect
 * reaches the floor: what power checks and negative controls look for. */
bool cmp_flags(const cks_test_result *t, double alpha);
/* The verdict, the relation found and the sentences a person reads first. */
void cmp_decide(const cmp_ctx *ctx, cmp_family *f, const cmp_model *a, const cmp_model *b, cks_compare_result *r);
/* p for reports: never smaller than what the method supports. */
const char *cmp_short_p(const cks_test_result *t, double p, char *buf, size_t size);

/* ---- adapters (compare_lora.c) ---- */

/* L (adapter updates agree) and L-init (down factors agree) when both models are LoRA adapters
 * with modules in common; nothing is added when they are not. `power_synthetic` also judges
 * a noisy copy of A's adapter against the real pair's null (the power check of L). */
cks_err cmp_test_adapters(const cmp_ctx *ctx, const cmp_model *a, const cmp_model *b, cmp_family *f,
                          cks_diag *diag);

/* ---- the shared types' helpers (compare_model.c, below every loader) ---- */

/* Rows are sampled by blocks of this many consecutive rows (one range each). */
#define CMP_ROW_BLOCK 8u

void cmp_matrix_free(cmp_matrix *m);
void cmp_normalise_columns(cmp_matrix *m);
void cmp_model_release(cmp_model *md);
/* fn(b_job) on a second thread while fn(a_job) runs on the caller's (A's and B's reading each
 * wait on their own round trips and decoding); without a thread, one after the other. The two
 * jobs must share nothing writable but what locks for itself (the disk cache). */
void cmp_both_sides(void *(*fn)(void *), void *a_job, void *b_job);
/* Hand freed heap pages back to the system (glibc's malloc_trim; nothing elsewhere). Between
 * a compare's stages: each loading thread frees into its own malloc arena, which the main
 * thread's next allocations cannot reuse (64 MB more at the peak of a cold default compare of
 * the bench pair), and a copy made of many blocks of a few hundred KiB (a parsed
 * tokenizer.json, the noisy derivative's k/v rows) leaves its pages mapped once freed. */
void cmp_return_freed_memory(void);
void cmp_embed_pair_release(cmp_embed_pair *e);
/* Rows sampled from a tensor with `total` rows: the same indices for the same total. */
size_t cmp_sample_rows(uint64_t seed, size_t total, size_t want, uint32_t *rows);

/* ---- loaders: where a model's data comes from, chosen once per model ----
 *
 * A model is read from its checkpoint's bytes (compare_data.c, `cmp_live_loader`) or from a
 * store of what the tests need (compare_fp.c, `cmp_stored_loader`); compare_load.c picks one
 * when a model is loaded and dispatches to it afterwards, so the tests and the pair loader
 * (compare_embed.c) never ask which it is. */
typedef struct cmp_loader {
    const char *kind;        /* "checkpoint", "fingerprint": for messages */
    bool reads_bytes;        /* the checkpoint's own tensor bytes can be read (L reads adapters whole) */
    /* Read and decode what the tests need from one model, within the budget. */
    cks_err (*load)(const cmp_ctx *ctx, const cks_compare_model *m, cmp_model *md, cks_diag *diag);
    /* Decode rows `rows[0..n)` of the matrix with `role` (weight part, no layer) into out;
     * out is left empty when the model has no such matrix (or kept none of it). */
    cks_err (*role_rows)(cmp_model *md, cks_role role, const uint32_t *rows, size_t n, cmp_matrix *out,
                         uint64_t *counter, cks_diag *diag);
    /* The model's vocabulary, or an error with a note saying why there is none. */
    cks_err (*vocab)(const cks_compare_model *m, cks_vocab **out, char *note, size_t note_size);
    /* May be NULL. Make both models of a pair hold the same weight rows, when this loader's
     * model holds only some of them; run before the pair's tests. */
    cks_err (*reconcile)(const cmp_ctx *ctx, cmp_model *a, cmp_model *b, cks_diag *diag);
} cmp_loader;

extern const cmp_loader cmp_live_loader;   /* compare_data.c */
extern const cmp_loader cmp_stored_loader; /* compare_fp.c */

/* compare_load.c: pick the loader of m and load it (md->loader is set); then, on md: */
cks_err cmp_model_load(const cmp_ctx *ctx, const cks_compare_model *m, cmp_model *md, cks_diag *diag);
cks_err cmp_load_role_rows(cmp_model *md, cks_role role, const uint32_t *rows, size_t n, cmp_matrix *out,
                           uint64_t *counter, cks_diag *diag);
cks_err cmp_model_vocab(const cmp_model *md, cks_vocab **out, char *note, size_t note_size);
cks_err cmp_pair_reconcile(const cmp_ctx *ctx, cmp_model *a, cmp_model *b, cks_diag *diag);

/* ---- the budget planner (compare_budget.c): how one model's byte budget is split ---- */

/* Read and hash the whole checkpoint (T1 selected, and it fits the budget and the cap)? */
bool cmp_budget_read_whole(uint64_t budget, uint64_t total_bytes, bool t1);
/* Norms, routers and router biases read whole: routers only while the sum stays under this. */
uint64_t cmp_budget_whole_reads(uint64_t budget);
/* k and v rows to sample per layer after `used` bytes of whole reads: three quarters of
 * what is left, as bf16-sized rows of k and v in every layer, at most max_rows (all of them
 * when the model was read whole), under the decoded-float cap (at least two blocks) and 4,096. */
size_t cmp_budget_kv_rows(uint64_t budget, uint64_t used, int n_layers, size_t hidden, size_t max_rows,
                          bool full_coverage);
/* Shared tokens whose embedding rows a pair reads: a quarter of the budget over the two
 * models' bytes per row. */
size_t cmp_budget_embed_tokens(uint64_t budget, uint64_t row_bytes_a, uint64_t row_bytes_b);

/* Which shared-token rows of A and B a pair reads (compare_embed.c): the tokenizers parsed
 * and matched, the rows chosen from the pairs inside both embedding matrices. Needs of a and b
 * only their compare model, loader and roles, so it can run while they load. */
typedef struct cmp_embed_choice {
    uint32_t *rows_a, *rows_b;    /* n rows each: A's token rows[i] is B's rows_b[i] */
    size_t n, usable;             /* usable: shared tokens inside both matrices */
    size_t vocab_a, vocab_b, shared;
    bool done;                    /* the choice was made (rows_chosen false: none, note says why) */
    bool rows_chosen;
    char note[160];
} cmp_embed_choice;
cks_err cmp_embed_choose(const cmp_ctx *ctx, const cmp_model *a, const cmp_model *b, cmp_embed_choice *out,
                         cks_diag *diag);
/* Whether the chosen tests read shared-token embedding rows (only T3 and T4 do). */
bool cmp_reads_embeddings(const cmp_ctx *ctx);
void cmp_embed_choice_release(cmp_embed_choice *c);
/* A choice made on the caller's thread while the two loads run on theirs (compare.c). */
typedef struct cmp_embed_early {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool published;               /* final: the loads may read it (it may hold no rows) */
    cmp_embed_choice choice;
    const cks_compare_model *model_a, *model_b;
} cmp_embed_early;
/* For a loader: the rows of m's side in ctx's early choice, waiting until it is published;
 * NULL (*n = 0) without one, or when it holds none (compare_model.c, below the loaders). */
const uint32_t *cmp_embed_early_rows(const cmp_ctx *ctx, const cks_compare_model *m, size_t *n);
/* The shared-token embedding rows of a pair (empty, with a note, when not possible), read as
 * `chosen` says when it was made beforehand (NULL: chosen here). */
cks_err cmp_embed_pair_load(const cmp_ctx *ctx, cmp_model *a, cmp_model *b, const cmp_embed_choice *chosen,
                            cmp_embed_pair *out, cks_diag *diag);
/* Output rows and input width of a whole-model role's matrix in a checkpoint (0, 0 when
 * absent; compare_data.c). */
void cmp_role_dims(const cmp_model *md, cks_role role, size_t *rows, size_t *cols, size_t *elem_bytes);

/* ---- the family T1-T4 across compare*.c (split along the tests) ---- */

#define CMP_MAX_CROSS_DIM 8192u /* T3's d x d cross matrix: 256 MiB of floats at most */
#define CMP_ITEM_Z 2.0          /* with its effect at the test's floor, a layer or tensor corroborates above this z */
#define CMP_SYNTH_NOISE 1.0     /* synthetic positive: noise sd relative to the values' sd (r ~ 0.7) */

double cmp_raw_cosine(const double *a, const double *b, size_t n);
double cmp_pearson_or_nan(const double *a, const double *b, size_t n);
cks_err cmp_norm_matrix(const cmp_model *a, const cmp_model *b, double *s, bool *any);
cks_err cmp_choose_pairing(const cmp_model *a, const cmp_model *b, cmp_family *f, cks_diag *diag);
float cmp_clipped(float value, float lo_f, float hi_f);
cks_err cmp_winsorised(const cmp_matrix *m, cmp_matrix *out);
cks_err cmp_test_weights(const cmp_ctx *ctx, const cmp_model *a, const cmp_model *b, const cmp_embed_pair *emb,
                         cmp_family *f, const char *id, const char *name, cks_diag *diag);
void cmp_matrix_moments(const cmp_matrix *m, double *mean, double *sd);
cks_err cmp_test_norms(const cmp_ctx *ctx, const cmp_model *a_in, const cmp_model *b_in, cmp_family *f,
                       const char *id, const char *name, cks_diag *diag);
cks_err cmp_test_identity(const cmp_ctx *ctx, const cmp_model *a, const cmp_model *b, cmp_family *f, cks_diag *diag);
cks_err cmp_test_t4(const cmp_ctx *ctx, const cmp_model *a, const cmp_model *b, const cmp_embed_pair *emb, cmp_family *f,
                    cks_diag *diag);
cks_err cmp_reindex_model(const cmp_model *src, const int32_t *idx, const int8_t *signs, size_t n, cmp_model *dst);
cks_err cmp_select_columns(const cmp_matrix *src, const int32_t *cols, const int8_t *signs, size_t n,
                           cmp_matrix *dst);
void cmp_describe(const cmp_model *a, const cmp_model *b, const cmp_embed_pair *emb, const cmp_family *f,
                  cks_compare_result *r);
cks_err cmp_synth_noisy(const cmp_model *a, const cmp_embed_pair *emb, uint64_t seed, cmp_model *out,
                        cmp_embed_pair *eout);
cks_err cmp_synth_permuted(const cmp_model *b, cmp_embed_pair *emb, uint64_t seed, bool weights,
                           cmp_model *out, cmp_embed_pair *eout);
cks_err cmp_run_family(const cmp_ctx *ctx, const cmp_model *a, const cmp_model *b, const cmp_embed_pair *emb,
                       bool with_t1, cmp_family *f, cks_diag *diag);

#endif
