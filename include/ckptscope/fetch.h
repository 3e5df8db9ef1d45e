/*
 * include/ckptscope/fetch.h — pulling chosen tensors of a checkpoint: their bytes with as few
 * round trips as possible, each tensor's SHA-256, and optionally a new safetensors file of
 * them (what `ckptscope fetch` does; src/transport/fetch.c).
 */
#ifndef CKPTSCOPE_FETCH_H
#define CKPTSCOPE_FETCH_H

#include <stddef.h>
#include <stdint.h>

#include "ckptscope/checkpoint.h"
#include "ckptscope/error.h"
#include "ckptscope/hub.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct cks_fetch_opts {
    cks_remote *remote;        /* the checkpoint's session (prefetch spans shards); NULL: local */
    const char *output;        /* write the tensors, in `sel` order, as this file; NULL: none */
    const char *source_name;   /* kept in the output's __metadata__ as "ckptscope_source" */
    /* Optional: bytes of tensor data read so far, of total. */
    void (*progress)(void *ctx, uint64_t done, uint64_t total);
    /* Optional: tensor sel[i] is read; its SHA-256 in hex. Called in `sel` order. */
    void (*tensor_done)(void *ctx, size_t i, const char sha256_hex[65]);
    void *ctx;
    /* Optional: receives how many tensors were hashed as their bytes arrived from the network
     * (while the rest were still on their way), not read back afterwards. */
    size_t *hashed_on_arrival;
} cks_fetch_opts;

/*
 * Read sel[0..n) in order: files all of whose tensors are chosen are checked whole first (a
 * damaged copy never gives its hashes as the file's), partly cached tensors of the others are
 * read again from the network (cks_refresh_partial), then batches of about 64 MiB are
 * prefetched at once and read. The output file is written beside its name and renamed into
 * place only when complete and synced; on failure nothing is left. *tensor_bytes (may be
 * NULL) receives the bytes of tensor data read. Without an output file, the tensors of a
 * remote checkpoint are hashed on another thread as the pieces holding them arrive.
 */
cks_err cks_fetch(const cks_ckpt *ckpt, const cks_ckpt_tensor *const *sel, size_t n, const cks_fetch_opts *opts,
                  uint64_t *tensor_bytes, cks_diag *diag);

/* Tensors of sel that are read only in part of their file are read again from the network
 * and replace a differing cached copy (the Hub publishes no hash of a range; issue 14). Files
 * all of whose tensors are chosen are left to the whole-file check. Local files: nothing. */
cks_err cks_refresh_partial(const cks_ckpt *ckpt, const cks_ckpt_tensor *const *sel, size_t n, cks_diag *diag);

#ifdef __cplusplus
}
#endif

#endif
