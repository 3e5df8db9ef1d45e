/*
 * include/ckptscope/verify.h — checking an upload: every format rule file by file, sizes three
 * ways, sampled (or, full, every) values for NaN/Inf and all-zero blocks, each file's SHA-256
 * against the Hub's; and the screen that clears a known model without a full comparison
 * (src/analysis/verify.c). What `ckptscope verify` prints is this report.
 */
#ifndef CKPTSCOPE_VERIFY_H
#define CKPTSCOPE_VERIFY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ckptscope/checkpoint.h"
#include "ckptscope/compare.h"
#include "ckptscope/error.h"
#include "ckptscope/fingerprint.h"

struct cks_cache;

#ifdef __cplusplus
extern "C" {
#endif

/* One finding: a problem (the upload is invalid) or a warning. file/tensor NULL when none. */
typedef struct cks_verify_finding {
    char rule[48];
    char *file;
    char *tensor;
    char *detail;
} cks_verify_finding;

typedef struct cks_verify_findings {
    cks_verify_finding *items;
    size_t n, cap, omitted, max; /* max: kept at most (0: none kept); beyond it only counted */
} cks_verify_findings;

/* What the value check covered and what it did not. */
typedef struct cks_verify_values {
    bool full;                 /* every value (full) rather than sampled blocks */
    size_t float_tensors;      /* float (and complex) tensors of the files opened */
    uint64_t float_bytes;      /* their bytes */
    size_t tensors_checked;    /* every value seen (full) */
    uint64_t bytes_checked, values_checked;
    size_t no_encoding;        /* F4/F6: no NaN or Inf exists in the format, nothing to check */
    size_t unread;             /* in a file that could not be read (see problems / error) */
} cks_verify_values;

/* One file: its sizes as the listing, the server and the header say, and its hashes. */
typedef struct cks_verify_file {
    char *path;
    bool size_known, served_known, implied_known, header_known;
    uint64_t size, served_size, implied_size, header_bytes;
    bool header_valid;
    char sha256[65];           /* the Hub's LFS SHA-256, "" when none */
    char sha256_computed[65];  /* of the bytes read whole, "" when the file was not hashed */
    int sha256_match;          /* with sha256_computed: 1, 0, or -1 when there is nothing to match */
    char *error;               /* "Rule: detail" when the file could not be checked, else NULL */
} cks_verify_file;

typedef struct cks_verify_report {
    cks_verify_findings problems, warnings;
    size_t sampled, nan_tensors, zero_tensors;
    uint64_t sampled_bytes;
    cks_verify_values values;
    uint64_t hashed_bytes;
    cks_verify_file *files;
    size_t n_files, cap_files;
    bool file_by_file;         /* opening failed; the files were checked one by one */
    size_t unchecked_entries;
    bool have_error;           /* something could not be checked (network, access, I/O) */
    cks_err error;
    char error_text[CKS_DIAG_MAX + 512];
    char error_file[512];
    char error_detail[CKS_DIAG_MAX];
    bool against;              /* known models were compared: provenance was checked */
} cks_verify_report;

/* An empty report keeping at most max_problems problems and max_warnings warnings. */
void cks_verify_report_init(cks_verify_report *r, size_t max_problems, size_t max_warnings);
void cks_verify_report_release(cks_verify_report *r);

/* Add a finding unless the same rule was already found for the same file and tensor. False
 * only when out of memory. */
bool cks_verify_add_finding(cks_verify_findings *fs, const char *rule, const char *file, const char *tensor,
                            const char *fmt, ...) __attribute__((format(printf, 5, 6)));
/* The first thing that could not be checked is the one reported. */
void cks_verify_set_error(cks_verify_report *r, cks_err err, const char *file, const char *detail);

/* Take everything a file-by-file check found: problems, per-file sizes, what could not be
 * checked. False only when out of memory. */
bool cks_verify_take_check(cks_verify_report *r, const cks_ckpt_check *check);

/* Sample every float tensor (about 64 MiB in one round) for NaN/Inf and all-zero blocks; with
 * `full`, read every file whole through SHA-256 and every value. A file that cannot be read as
 * listed becomes a problem; network and access failures are returned. progress (may be NULL)
 * gets bytes hashed of total. */
cks_err cks_verify_read(const cks_ckpt *ckpt, cks_verify_report *r, bool full,
                        void (*progress)(void *ctx, uint64_t done, uint64_t total), void *ctx, cks_diag *diag);

/* The screen (docs/verdicts.md): a known model is cleared without a full comparison when, at
 * CKS_VERIFY_SCREEN_PERMUTATIONS permutations and without power checks, no primary test
 * rejects or comes near (p <= 0.01 or z >= 3) with an effect not far under its floor, at least
 * one ran, and the verdict is neither identical nor derived. *max_z and *min_p say how near
 * the nearest came. */
#define CKS_VERIFY_SCREEN_PERMUTATIONS 99
bool cks_verify_screen_clears(const cks_compare_result *r, double *max_z, double *min_p);


/*
 * The pre-screen of `verify --against` at scale (src/analysis/verify_prescreen.c): a summary
 * of each known model (its tensor hashes, the ranks of its norm gains, the raw bytes of what
 * training writes from a constant, the embedding values of 32 of the dimensions T4a reads),
 * made once per fingerprint file and kept in the cache, against the upload's side prepared
 * once. A known model is cleared only when no tensor is byte-identical, T1's bitwise excess
 * and every layer pair's norm-gain Spearman (a bound on T2 whatever the layer path) are under
 * half their floors, both sides have decoder layers, and T4a cannot reach half its floor
 * (exact when A has too few tokens; else fewer than 1 in 8 of the probed dimensions reach
 * it: at half the floor at least half of T4a's dimensions do). Everything else is kept and
 * goes to the screen and the full comparison. docs/verify.md.
 */
typedef struct cks_verify_summary cks_verify_summary;
typedef struct cks_verify_live cks_verify_live;

typedef struct cks_verify_prescreen_result {
    bool clears;
    bool copy;               /* a byte-identical tensor */
    double t1_excess;        /* largest bitwise excess of a tensor pair (NAN: none compared) */
    double t2_bound;         /* largest norm-gain Spearman of a layer pair (NAN: not bounded) */
    uint32_t t4a_hits, t4a_sampled, shared_tokens;
    float t4a_max;
    char reason[320];
} cks_verify_prescreen_result;

/* From a decoded fingerprint (all_dims: every embedding column, for the upload's side). */
cks_err cks_verify_summary_build(const cks_fingerprint *fp, uint64_t seed, bool all_dims, cks_verify_summary **out,
                                 cks_diag *diag);
cks_err cks_verify_summary_encode(const cks_verify_summary *s, uint8_t **out, size_t *len, cks_diag *diag);
cks_err cks_verify_summary_decode(const uint8_t *data, size_t len, cks_verify_summary **out, cks_diag *diag);
/* From the cache (namespace "verify-summary", keyed by the file's path, size, times, inode and
 * the SHA-256 of its ends), else from the fingerprint file, then stored (cache may be NULL). */
cks_err cks_verify_summary_for_file(struct cks_cache *cache, const char *path, uint64_t seed,
                                    cks_verify_summary **out, bool *from_cache, cks_diag *diag);
const char *cks_verify_summary_source(const cks_verify_summary *s, const char **repo, const char **commit);
void cks_verify_summary_free(cks_verify_summary *s);

/* The upload's side: what compare reads from it, read once (seed 0: compare's default). */
cks_err cks_verify_live_prepare(const cks_compare_model *live, uint64_t seed, cks_verify_live **out, cks_diag *diag);
/* The same from a fingerprint of the upload (fp must outlive the result): tests. */
cks_err cks_verify_live_from_fingerprint(const cks_fingerprint *fp, uint64_t seed, cks_verify_live **out,
                                         cks_diag *diag);
void cks_verify_live_free(cks_verify_live *l);

/* live is not changed but for a memo of its columns over the last shared tokens. */
cks_err cks_verify_prescreen(cks_verify_live *live, const cks_verify_summary *known,
                             cks_verify_prescreen_result *res, cks_diag *diag);

/* ---- provenance: the upload against every known model ---- */

typedef struct cks_verify_known {
    const char *path;        /* the fingerprint (or LIBRARY#MEMBER) as given; not owned */
    cks_verdict verdict;     /* NOT_DERIVED when screened out */
    bool screened;           /* cleared by the screen or the pre-screen: no full comparison */
    bool prescreened;        /* cleared by the pre-screen: the fingerprint was not even opened */
    double t2, t1;           /* statistics of the comparison that decided (NAN: not run) */
    int rank;                /* 0 identical, 1 derived, 2 inconclusive, 3 otherwise */
    char reason[1024];
    char source[256], repo[256], commit[64];
} cks_verify_known;

typedef enum cks_prescreen_mode {
    CKS_PRESCREEN_AUTO = 0,  /* with CKS_VERIFY_PRESCREEN_MIN fingerprints or more */
    CKS_PRESCREEN_ALWAYS,
    CKS_PRESCREEN_NEVER
} cks_prescreen_mode;

/* Reading the upload for the pre-screen costs about one screen (~3 s for a 100B-class model):
 * it pays for itself from a few fingerprints on. */
#define CKS_VERIFY_PRESCREEN_MIN 8

typedef struct cks_verify_against_opts {
    bool no_screen;          /* every fingerprint gets the full comparison (and no pre-screen) */
    bool no_synthetic;       /* full comparisons without the synthetic power checks */
    cks_prescreen_mode prescreen;
    struct cks_cache *cache; /* where the summaries are kept (NULL: made each time) */
    /* may be NULL: called before each fingerprint (i of n) and with path NULL when done */
    void (*progress)(void *ctx, const char *path, size_t i, size_t n);
    void *progress_ctx;
} cks_verify_against_opts;

/*
 * The upload (`live`, as B) against each fingerprint of paths: pre-screen (see above), then the
 * screen (cks_verify_screen_clears), then the full comparison; out (n entries, caller's) sorted
 * nearest first (rank, then T2 descending). On an error *n_done says how many were compared (in
 * the order given, not sorted) and *failed which path failed (SIZE_MAX: the upload's side).
 */
cks_err cks_verify_against(const cks_compare_model *live, const char *const *paths, size_t n,
                           const cks_verify_against_opts *opts, cks_verify_known *out, size_t *n_done,
                           size_t *failed, cks_diag *diag);

#ifdef __cplusplus
}
#endif

#endif
