/*
 * ckptscope/checkpoint.h — a checkpoint is a set of safetensors files read as one model.
 *
 * It is opened from a local .safetensors file, a model.safetensors.index.json, a directory
 * holding either, or (through cks_ckpt_open_with) any file provider such as the Hub client:
 * the provider opens a file by its path relative to the checkpoint root as a cks_source.
 * Opening reads and validates every shard header (and checks the index against them:
 * every mapped tensor present in its shard, no tensor in two shards, no unlisted tensor).
 */
#ifndef CKPTSCOPE_CHECKPOINT_H
#define CKPTSCOPE_CHECKPOINT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ckptscope/safetensors.h"
#include "ckptscope/source.h"

typedef struct cks_ckpt_file {
    char *path;              /* relative to the checkpoint root ("model-00001-of-00002.safetensors") */
    cks_source *source;
    cks_st_header *header;
} cks_ckpt_file;

/*
 * The size the server holding a file's bytes reports for it now (the TOTAL of the
 * Content-Range answering a one-byte ranged GET), as a provider's served_sizes gives it.
 */
typedef struct cks_served_size {
    cks_err err;          /* CKS_OK: `size` is what the server says; CKS_ERR_UNSUPPORTED: not
                             asked (--offline); anything else: why it could not be asked */
    uint64_t size;
    cks_diag diag;        /* the detail when err != CKS_OK */
} cks_served_size;

/*
 * A provider opens files of one checkpoint by relative path. `fetch_file` reads a small
 * whole file (the index) into a malloc'd buffer; `open_source` opens a shard as a source.
 * Optional `prefetch_headers` lets a remote provider fetch all shard headers in parallel
 * before they are parsed one by one (may be NULL).
 */
typedef struct cks_ckpt_provider {
    void *ctx;
    cks_err (*fetch_file)(void *ctx, const char *relpath, char **data, size_t *len, cks_diag *diag);
    cks_err (*open_source)(void *ctx, const char *relpath, cks_source **out, cks_diag *diag);
    cks_err (*prefetch_headers)(void *ctx, cks_source *const *sources, size_t n, cks_diag *diag);
    /* Optional: called once by cks_ckpt_free() so the checkpoint can own ctx (may be NULL). */
    void (*release_ctx)(void *ctx);
    /* Optional (remote providers; used by the file-by-file check below):
     *   served_sizes: out[i] for relpaths[i], asked of the server that serves the bytes (the
     *     CDN for an LFS file), not of the Hub's listing; CKS_OK when the batch ran.
     *   open_as_served: the file as that server serves it, `size` bytes, so a header can be
     *     read from a file whose served size disagrees with the listed one (nothing of it is
     *     cached and no SHA-256 is checked: it is only for diagnosing the disagreement).
     *   list_safetensors: every *.safetensors file directly in folder `dir` ("" = the root),
     *     malloc'd paths relative to the root; used when an index is unreadable. */
    cks_err (*served_sizes)(void *ctx, const char *const *relpaths, size_t n, cks_served_size *out,
                            cks_diag *diag);
    cks_err (*open_as_served)(void *ctx, const char *relpath, uint64_t size, cks_source **out,
                              cks_diag *diag);
    cks_err (*list_safetensors)(void *ctx, const char *dir, char ***paths, size_t *n, cks_diag *diag);
} cks_ckpt_provider;

/* One tensor of the checkpoint, pointing into its file's header. */
typedef struct cks_ckpt_tensor {
    const cks_tensor_info *info;
    size_t file;             /* index into files[] */
} cks_ckpt_tensor;

typedef struct cks_ckpt {
    char *name;              /* what the user typed, for reports */
    size_t n_files;
    cks_ckpt_file *files;
    size_t n_tensors;
    cks_ckpt_tensor *tensors;  /* sorted by name */
    cks_st_index *index;       /* NULL for a single file */
    char *index_path;          /* relative path of the index, NULL for a single file */
    cks_ckpt_provider provider;  /* how it was opened: fetches config.json, tokenizer.json */
} cks_ckpt;


/* Open a local path: a .safetensors file, an index JSON, or a directory. */
cks_err cks_ckpt_open_local(const char *path, cks_ckpt **out, cks_diag *diag);

/*
 * Open through a provider. `entry` is the relative path of a .safetensors file or an
 * index .json; NULL means "find it": model.safetensors.index.json, else model.safetensors
 * (the caller that can list files should pass the right one instead).
 */
cks_err cks_ckpt_open_with(const cks_ckpt_provider *provider, const char *name, const char *entry,
                           cks_ckpt **out, cks_diag *diag);

/* Build a checkpoint from already-open sources (takes ownership of them, even on failure). */
cks_err cks_ckpt_from_sources(const char *name, cks_source **sources, char **relpaths, size_t n,
                              cks_ckpt **out, cks_diag *diag);

/*
 * A small whole file beside the weights (config.json, tokenizer.json), through the provider
 * the checkpoint was opened with; relpath is relative to the checkpoint root. The buffer is
 * malloc'd and NUL-terminated. CKS_ERR_NOT_FOUND / CKS_ERR_FILE_NOT_FOUND when absent.
 */
cks_err cks_ckpt_fetch_aux(const cks_ckpt *ckpt, const char *relpath, char **data, size_t *len,
                           cks_diag *diag);

const cks_ckpt_tensor *cks_ckpt_find(const cks_ckpt *ckpt, const char *name);

/* Read a tensor's raw bytes (or part: byte `offset` within the tensor, `len` bytes). */
cks_err cks_ckpt_read_tensor(const cks_ckpt *ckpt, const cks_ckpt_tensor *t, uint64_t offset,
                             void *buf, size_t len, cks_diag *diag);

void cks_ckpt_free(cks_ckpt *ckpt);

/* ---- checking a checkpoint file by file (ckptscope verify) ----
 *
 * Opening stops at the first error. The check below keeps going: each file is opened and its
 * header read and validated on its own (headers only, through the provider, so through the
 * remote and cache layers), the index is checked against every header that could be read,
 * and each file's sizes are compared: the size the Hub lists (the source's size; the file
 * system's for a local file), the size the data server serves (Content-Range total, when the
 * provider can ask) and the size the header implies (8 + header length + end of the last
 * tensor's data). Every problem is kept, with its rule, file and detail:
 *   - any safetensors rule, named as in the reference (a header that implies more bytes than
 *     the file has is Truncated, fewer is MetadataIncompleteBuffer: header vs listed size);
 *   - ServedSizeMismatch: served vs listed size; HeaderServedSizeMismatch: served vs implied
 *     size (reported only when served differs from listed; otherwise it would repeat the
 *     header-vs-listed problem);
 *   - IndexMismatch: an index entry whose shard's header lacks the tensor, a tensor no entry
 *     lists, a tensor in two shards, a shard the index names that does not exist; IndexInvalid
 *     and UnsafeShardPath for the index itself.
 * A file that cannot be checked for another reason (network, access) is marked with that
 * error and the check goes on.
 */
#define CKS_CKPT_MAX_PROBLEMS 1000

typedef struct cks_ckpt_problem {
    cks_err rule;            /* cks_strerror(rule) is its stable name */
    char *file;              /* relative path of the file it is about; NULL: the checkpoint */
    char *tensor;            /* the tensor it is about; NULL: none */
    char *detail;            /* the sentence (does not repeat the file) */
} cks_ckpt_problem;

typedef struct cks_ckpt_file_check {
    char *path;                    /* relative to the checkpoint root */
    uint64_t size;                 /* listed: the Hub's listing (or the file system's size) */
    uint64_t served_size;          /* the data server's Content-Range total */
    uint64_t implied_size;         /* 8 + N + end of the last tensor's data */
    uint64_t header_len;           /* N */
    bool size_known, served_known, implied_known, header_read;
    bool header_valid;             /* every safetensors rule holds for this file */
    char sha256[65];               /* the content identity the server publishes, "" if none */
    cks_err error;                 /* CKS_OK, or why this file could not be (fully) checked */
    char *error_detail;            /* NULL when error == CKS_OK */
} cks_ckpt_file_check;

typedef struct cks_ckpt_check {
    char *index_path;              /* the index's relative path; NULL for a single file or folder */
    size_t n_files;
    cks_ckpt_file_check *files;    /* in index (shard) order, or name order */
    size_t n_problems;
    cks_ckpt_problem *problems;    /* in the order found: per file, then the index */
    size_t n_omitted;              /* problems beyond CKS_CKPT_MAX_PROBLEMS, counted only */
    size_t n_unchecked_entries;    /* index entries whose shard header could not be read */
    cks_ckpt *valid_part;          /* the files whose header is valid, opened together as one
                                      checkpoint without index (for reading their tensors);
                                      NULL when none, or when they share a tensor name */
} cks_ckpt_check;

/*
 * Check the checkpoint `entry` names (an index .json or one .safetensors, relative to the
 * provider's root) file by file. Returns CKS_OK when the check ran, whatever it found; an
 * error only when it could not run at all (the entry itself unreadable for a reason that is
 * not a format problem, out of memory).
 */
cks_err cks_ckpt_check_with(const cks_ckpt_provider *provider, const char *entry, cks_ckpt_check **out,
                            cks_diag *diag);

/* The same for a local path: a .safetensors file, an index JSON, or a directory. */
cks_err cks_ckpt_check_local(const char *path, cks_ckpt_check **out, cks_diag *diag);

/* For a checkpoint that opened (every rule held): each file's sizes, asked of the provider it
 * was opened with, and each disagreement as a problem. */
cks_err cks_ckpt_check_sizes(const cks_ckpt *ckpt, cks_ckpt_check **out, cks_diag *diag);

void cks_ckpt_check_free(cks_ckpt_check *check);

#endif
