/*
 * ckptscope/report.h — the comparison as a page a person would rather look at than read.
 *
 * cks_report_html() writes ONE self-contained HTML file: inline CSS and inline SVG, no
 * script, no font, no image or stylesheet fetched from anywhere, so the report can be
 * mailed, archived or opened offline and shows the same thing forever. Order of the page:
 *
 *   1. the verdict and the reason (two sentences), what the tests cover and do not cover
 *   2. the two models (source, architecture, commit, bytes read)
 *   3. the tests: statistic, null (kind, mean ± sd, permutations), p, Holm p, z, effect,
 *      result, power, tensors used, bytes read; raw cosine beside T2, labelled not evidence
 *   4. figures: layer×layer norm-gain Pearson heatmaps with the layer pairing drawn,
 *      per-layer norm Pearson with the exact permutation null band (raw cosine shown in grey),
 *      per-layer bitwise-equal fraction, per-layer std curves
 *   5. byte-identical tensors, vocabularies, config differences, sampling
 *   6. provenance of every number: per model the endpoint, repo, revision, commit, and per
 *      file its size, SHA-256 and the byte ranges that were read; seed, alpha, tool version
 *
 * Every string that came from a file or the network is HTML-escaped. The library writes to
 * the FILE* the caller gives and nothing else; writing it atomically is the caller's job.
 *
 * Read tracking: cks_report_track_reads() wraps every file source of a checkpoint so that
 * the byte ranges an analysis reads are recorded (merged, bounded) for the provenance
 * section. The wrappers belong to the checkpoint (cks_ckpt_free frees them), so there is no
 * second object whose lifetime must be managed.
 */
#ifndef CKPTSCOPE_REPORT_H
#define CKPTSCOPE_REPORT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "ckptscope/checkpoint.h"
#include "ckptscope/compare.h"
#include "ckptscope/error.h"
#include "ckptscope/source.h"

/* At most this many merged ranges are kept per file; past it, ranges are coarsened (the
 * report then says the list is approximate: a superset of what was read). */
#define CKS_REPORT_MAX_RANGES 4096

/*
 * Wrap every file source of `ckpt` in a recording source, seeded with the header range
 * [0, 8 + header length) that opening the checkpoint already read. Reads and prefetches are
 * forwarded unchanged; content identity (size, sha256_hex, name) is copied. Call once, right
 * after opening and before any analysis. On failure the checkpoint is left as it was for the
 * files not yet wrapped (still valid and usable).
 */
cks_err cks_report_track_reads(cks_ckpt *ckpt, cks_diag *diag);

/*
 * The byte ranges read from `src` so far, sorted and merged (borrowed; valid until the next
 * read of that source or its destruction). false when `src` is not a tracking source.
 * OUT: *ranges, *n, *bytes (total bytes covered), *approximate (coarsened past the cap).
 */
bool cks_report_reads(const cks_source *src, const cks_range **ranges, size_t *n, uint64_t *bytes,
                      bool *approximate);

typedef struct cks_report_file {
    const char *path;          /* relative to the checkpoint root */
    uint64_t size;
    const char *sha256;        /* 64 hex (the Hub's LFS SHA-256), NULL or "" when unknown */
    uint64_t header_bytes;     /* 8 + JSON header length */
    const cks_range *ranges;   /* byte ranges read, sorted; may be NULL */
    size_t n_ranges;
    uint64_t bytes_read;
    bool ranges_approximate;
} cks_report_file;

typedef struct cks_report_model {
    const char *spec;          /* what the user typed: a path, org/name@rev or URL */
    const char *kind;          /* "hub", "url" or "local" */
    const char *endpoint;      /* hub only; NULL otherwise */
    const char *repo, *revision, *commit; /* hub only */
    const char *url;           /* url only */
    const char *index;         /* index file when sharded; NULL otherwise */
    size_t n_files;
    const cks_report_file *files;
} cks_report_model;

typedef struct cks_report_meta {
    cks_report_model a, b;
    /* --control and --positive models, listed in the provenance like A and B */
    const cks_report_model *controls, *positives;
    size_t n_controls, n_positives;
    const char *tool_version;  /* may be NULL */
    const char *generated_at;  /* UTC, e.g. "2026-11-28 04:10:03 UTC"; NULL to omit */
    const char *command_line;  /* may be NULL */
    uint64_t permutations;     /* as requested (0: the default) */
    double alpha;              /* as requested (0: the default) */
    bool have_transfer;        /* remote sources were read: the figures below are set */
    uint64_t transfer_bytes, transfer_requests;
    double transfer_seconds;
} cks_report_meta;

/*
 * Write the report of `r` to `out`. CKS_ERR_INVALID_ARG on NULL arguments, CKS_ERR_IO when
 * the stream reports a write error (ferror), CKS_ERR_NOMEM. Partial output on failure is
 * the caller's to discard.
 */
cks_err cks_report_html(const cks_compare_result *r, const cks_report_meta *meta, FILE *out, cks_diag *diag);

#endif
