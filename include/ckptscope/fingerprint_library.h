/*
 * ckptscope/fingerprint_library.h — many fingerprints in one file, with an index that says what
 * each one is without decoding it; the lists that fingerprint jobs share out; and the gathering
 * step that builds a library from the output folders of many jobs (a Slurm array, a Kubernetes
 * Indexed Job, GNU parallel). `verify --against LIBRARY` reads it (docs/scale-out.md).
 *
 * Why one file and not a folder: a library of 1,000 fingerprints of 100B-class models is ~10 GB
 * in 1,000 members; one file is one open and one index read on a shared filesystem (where each
 * file's metadata costs a round trip), is replaced atomically as a whole (a reader never sees
 * half of an update), and copies as one artifact. The index carries what a screen needs to
 * pass over an incompatible fingerprint without reading it (architecture, widths, vocabulary,
 * options) and where each member is, so a reader can fetch only the members it compares.
 *
 * File format, version 1 (all integers little-endian):
 *   0-7    "CKSFPLIB"
 *   8-11   u32 format version (1)
 *   12-15  u32 flags (0; a reader refuses bits it does not know)
 *   16-23  u64 index length L (at most CKS_FPLIB_MAX_INDEX)
 *   24-31  u64 data offset D: where the first member starts (a multiple of 4096, >= 64 + L)
 *   32-63  SHA-256 of the index bytes
 *   64     the index, L bytes of UTF-8 JSON:
 *            {"format": "ckptscope-fingerprint-library", "version": 1, "tool", "members": [...]}
 *          each member {"name", "source", "repo", "revision", "commit", "offset", "length",
 *          "sha256", "format_version", "model_type", "n_layers", "hidden", "vocab_size",
 *          "embed_cols", "embedding_tokens", "all_tokens", "embedding_4bit", "full_coverage",
 *          "seed", "budget", "bytes_read"}; offset is from the start of the file, sha256 is of
 *          the member's bytes; members sorted by name, names unique
 *   then zeros up to D, and the members: each the exact bytes of a fingerprint file
 *   (CKSFPRNT...), starting at a multiple of 4096 (a member can be mapped on its own), zeros
 *   between them; the file ends with the last member.
 * Nothing in it depends on time, host or input order: gathering the same fingerprints gives
 * the same bytes. A library is untrusted input: every length and offset is bounded before use
 * and a member is used only after its SHA-256 matches the index.
 *
 * Library only: never prints, never exits.
 */
#ifndef CKPTSCOPE_FINGERPRINT_LIBRARY_H
#define CKPTSCOPE_FINGERPRINT_LIBRARY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ckptscope/error.h"
#include "ckptscope/fingerprint.h"

#define CKS_FPLIB_MAGIC "CKSFPLIB"
#define CKS_FPLIB_VERSION 1
#define CKS_FPLIB_HEAD_LEN 64u
#define CKS_FPLIB_ALIGN 4096u
#define CKS_FPLIB_MAX_INDEX (256u << 20)
#define CKS_FPLIB_MAX_MEMBERS 1000000u
#define CKS_FPLIB_MAX_LIST 10000000u /* lines of a list */

typedef struct cks_fplib_entry {
    char *name;              /* cks_fplib_member_name(source) */
    char *source, *repo, *revision, *commit, *model_type; /* "" when unknown */
    char sha256[65];         /* of the member's bytes */
    uint64_t offset, length; /* in the library file */
    uint32_t format_version;
    int64_t n_layers;
    uint64_t hidden, vocab_size, embed_cols, embed_tokens;
    bool all_tokens, embed_q4, full_coverage;
    uint64_t seed, budget, bytes_read;
} cks_fplib_entry;

typedef struct cks_fplib {
    char *path;
    int fd;
    uint64_t file_size;
    uint32_t version;
    size_t n;
    cks_fplib_entry *entries; /* sorted by name */
} cks_fplib;

/* Open a library and read its index (every entry checked against the file's bounds). */
cks_err cks_fplib_open(const char *path, cks_fplib **out, cks_diag *diag);
void cks_fplib_close(cks_fplib *lib);
/* The entry called name, or SIZE_MAX. */
size_t cks_fplib_find(const cks_fplib *lib, const char *name);
/* Member i's bytes (malloc'd), after its SHA-256 matched the index. */
cks_err cks_fplib_read_member(const cks_fplib *lib, size_t i, uint8_t **buf, size_t *len, cks_diag *diag);
/* Member i decoded. */
cks_err cks_fplib_load_member(const cks_fplib *lib, size_t i, cks_fingerprint **out, cks_diag *diag);
/* A fingerprint file, or a library member named "LIBRARY#MEMBER" (as `verify --against LIBRARY`
 * lists them) when no file has that name. */
cks_err cks_fingerprint_load_ref(const char *ref, cks_fingerprint **out, cks_diag *diag);
bool cks_fplib_sniff(const void *buf, size_t len);
bool cks_fplib_is_file(const char *path);

/*
 * A list of SOURCEs: one per line, surrounding blanks dropped, blank lines and lines starting
 * with '#' skipped. Shares (fingerprint --from with --shard or a scheduler's index): the i-th
 * SOURCE (0-based, in list order) belongs to share i mod count, so every SOURCE is in exactly
 * one share, and appending lines to a list never moves the ones already there to another share.
 */
cks_err cks_fplib_read_list(const char *path, char ***specs, size_t *n, cks_diag *diag);
void cks_fplib_list_free(char **specs, size_t n);
static inline bool cks_fplib_in_share(size_t i, size_t share, size_t count)
{
    return count > 0 && i % count == share;
}
/* The file name of a SOURCE's fingerprint: "org/name@rev" -> "org--name@rev.ckfp" (malloc'd). */
char *cks_fplib_member_name(const char *spec);

/* ---- gathering ---- */

typedef enum cks_gather_problem {
    CKS_GATHER_MISSING,            /* the list names a SOURCE and no fingerprint of it was found */
    CKS_GATHER_UNREADABLE,         /* the file could not be read */
    CKS_GATHER_NOT_FINGERPRINT,    /* a *.ckfp file without the fingerprint magic */
    CKS_GATHER_TRUNCATED,          /* shorter than its header or compressed frame says */
    CKS_GATHER_WRONG_VERSION,      /* a format version this ckptscope does not read */
    CKS_GATHER_CORRUPT,            /* damaged: fails to decode or to validate */
    CKS_GATHER_WRONG_SOURCE,       /* the file the list expects for S is a fingerprint of another */
    CKS_GATHER_DUPLICATE_COMMITS,  /* one repo and revision fingerprinted at different commits */
    CKS_GATHER_DUPLICATE_DIFFERS,  /* one repo and commit, different bytes (other options, tool) */
    CKS_GATHER_NAME_COLLISION,     /* two SOURCEs with one file name */
    CKS_GATHER__COUNT
} cks_gather_problem;

/* "missing", "truncated", "wrong_version", ... (stable: the JSON summary uses them) */
const char *cks_gather_problem_name(cks_gather_problem p);

typedef struct cks_gather_failure {
    cks_gather_problem problem;
    char *path;              /* the file, "LIBRARY#member", or NULL (missing) */
    char *source;            /* what it is, or should be, a fingerprint of; NULL when unknown */
    char *detail;            /* a sentence: what is wrong and what to do */
} cks_gather_failure;

typedef struct cks_gather_opts {
    const char *const *inputs;   /* folders (their *.ckfp and libraries), fingerprint files, libraries */
    size_t n_inputs;
    const char *const *expected; /* the SOURCEs of the list the jobs ran (may be none) */
    size_t n_expected;
    const char *output;          /* the library to write atomically; NULL: check only */
} cks_gather_opts;

typedef struct cks_gather_report {
    size_t n_candidates;         /* fingerprint files and library members looked at */
    size_t n_duplicates;         /* byte-identical copies left out */
    size_t n_entries;            /* in the library (written when opts->output) */
    cks_fplib_entry *entries;    /* sorted by name; offsets set when written */
    uint64_t library_bytes, fingerprint_bytes, bytes_read;
    size_t n_failures;
    cks_gather_failure *failures;
    size_t n_temporaries;        /* "*.ckfp.tmp.*": what a job killed while writing leaves */
    char **temporaries;
} cks_gather_report;

/*
 * Validate every fingerprint found in the inputs (each one decoded in full), drop byte-identical
 * copies, report every problem, and write what is valid as a library. Problems with single
 * fingerprints go to the report (the library holds the rest); the error is for what stops the
 * whole step (an input that does not exist, the library cannot be written, out of memory).
 */
cks_err cks_fplib_gather(const cks_gather_opts *opts, cks_gather_report **out, cks_diag *diag);
void cks_gather_report_free(cks_gather_report *r);

#endif
