/*
 * ckptscope/hash.h — SHA-256 of tensors' raw bytes, streamed, on several threads.
 *
 * A tensor's hash is the SHA-256 of exactly its data_offsets byte range (the stored
 * little-endian bytes, nothing of the header), so the same weights stored under another
 * name, in another shard or another file order hash the same. Tensors are spread over
 * worker threads (one tensor per worker at a time: SHA-256 itself is sequential); each
 * worker streams its tensor through a bounded buffer, so memory does not grow with size.
 */
#ifndef CKPTSCOPE_HASH_H
#define CKPTSCOPE_HASH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ckptscope/checkpoint.h"

typedef struct cks_tensor_hash {
    const cks_ckpt_tensor *tensor;
    uint8_t sha256[32];
    char hex[65];
    /* The bytes came from a copy nobody checked against the file's content identity (a file
     * in another program's cache read only in part; cks_source_unverified): the hash is of
     * that copy, which may differ from the file the Hub serves. */
    bool unverified;
} cks_tensor_hash;

/* Called from worker threads (serialised by the library) with bytes hashed so far. */
typedef void (*cks_progress_fn)(void *ctx, uint64_t done, uint64_t total);

typedef struct cks_hash_opts {
    unsigned threads;          /* 0: one per online core, at most 8 */
    size_t chunk_bytes;        /* 0: 4 MiB */
    cks_progress_fn progress;  /* may be NULL */
    void *progress_ctx;
} cks_hash_opts;

/*
 * Hash `n` tensors (pointers into ckpt->tensors). `out` has room for n results, filled in
 * the same order. Sources must be thread_safe for more than one thread to be used.
 * A file all of whose tensors are selected is read whole, so its source is asked to check
 * it first (cks_source_check_whole): no hash of a damaged copy is then given as the file's.
 */
cks_err cks_hash_tensors(const cks_ckpt *ckpt, const cks_ckpt_tensor *const *tensors, size_t n,
                         const cks_hash_opts *opts, cks_tensor_hash *out, cks_diag *diag);

/* cks_sha256_hex and cks_hex_encode live in ckptscope/hex.h (the one hex helper). */
#include "ckptscope/hex.h"

#endif
