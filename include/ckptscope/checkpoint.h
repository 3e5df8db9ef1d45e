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

#endif
