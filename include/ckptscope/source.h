/*
 * ckptscope/source.h — the one interface every byte goes through.
 *
 * A source is one file (local, in memory, cached or remote) of known total size that can
 * read `len` bytes at `offset`. Parsers, hashers and metrics see only this interface, so
 * the same code runs on a local checkpoint and on one that lives on the Hub.
 *
 * Contract:
 *   - read_at() fills exactly `len` bytes or fails; reading past `size` is
 *     CKS_ERR_TRUNCATED (the file is shorter than something said it would be).
 *   - prefetch() is optional (NULL for local files): a remote source uses it to fetch a
 *     batch of ranges at once (coalesced, in parallel) before the reads that follow.
 *   - A source may be read from several threads at once only if `thread_safe` is set.
 *   - Trust (optional ops): a caller about to read a whole file says so (check_whole), so a
 *     source whose copy can be checked against the file's content identity checks it before
 *     handing out bytes; a caller whose check of some bytes failed (a header that does not
 *     parse) says so (discard), so no copy of them outlives the check; and a source serving
 *     bytes from a copy nobody checked (another program's cache, read in part) says so
 *     (unverified), so results computed from them can be marked.
 *   - cks_source_free(NULL) is a no-op.
 */
#ifndef CKPTSCOPE_SOURCE_H
#define CKPTSCOPE_SOURCE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ckptscope/error.h"

typedef struct cks_range {
    uint64_t offset;
    uint64_t length;
} cks_range;

typedef struct cks_source cks_source;

typedef struct cks_source_ops {
    cks_err (*read_at)(cks_source *src, uint64_t offset, void *buf, size_t len, cks_diag *diag);
    cks_err (*prefetch)(cks_source *src, const cks_range *ranges, size_t n_ranges, cks_diag *diag);
    void (*destroy)(cks_source *src);
    /* Optional: one batch over several sources of this kind (ranges[i] belongs to srcs[i]),
     * so a remote reader fetches the ranges of many shards in one parallel round. */
    cks_err (*prefetch_many)(cks_source *const *srcs, const cks_range *ranges, size_t n, cks_diag *diag);
    /* Optional: drop the bytes kept in memory (a remote source's fetched extents); later
     * reads may cost I/O again (from the disk cache, or the network without one). */
    void (*trim)(cks_source *src);
    /* Optional: the whole file is about to be read: check it against its content identity
     * now, switching to a good copy (the network) when this one is damaged. CKS_OK means
     * every byte read from now on is checked; an error means no good copy could be had. */
    cks_err (*check_whole)(cks_source *src, cks_diag *diag);
    /* Optional: the bytes read so far failed the caller's check: forget every copy of them
     * (memory, disk cache, or switch away from a foreign copy), so the next read fetches
     * them afresh. False when the source cannot read them anew (a local file). */
    bool (*discard)(cks_source *src);
    /* Optional: true while the bytes handed out come from a copy that was not checked
     * against the file's content identity and could have been altered since it was made
     * (a file in another program's cache, read only in part). */
    bool (*unverified)(const cks_source *src);
} cks_source_ops;

struct cks_source {
    const cks_source_ops *ops;
    uint64_t size;     /* total file size in bytes */
    char *name;        /* what a person calls it: a path or repo/file@commit */
    bool thread_safe;  /* read_at may be called concurrently */
    /* Reads in file order are what this source serves best (a network stream with bounded
     * read-ahead): a reader of many tensors should take them in offset order, one at a time. */
    bool sequential;
    /* Content identity when known (the Hub's LFS SHA-256 as 64 hex chars), else "". */
    char sha256_hex[65];
    /* A guess at the safetensors header's length (8 + its JSON), 0 when nobody knows: set by
     * whoever knows which tensors the file holds (a shard index), so that a remote reader can
     * fetch the whole header in its first request instead of a first chunk and then the rest. */
    uint64_t header_hint;
};

cks_err cks_source_read_at(cks_source *src, uint64_t offset, void *buf, size_t len, cks_diag *diag);
cks_err cks_source_prefetch(cks_source *src, const cks_range *ranges, size_t n_ranges, cks_diag *diag);
void cks_source_free(cks_source *src);
/*
 * Prefetch ranges of several sources at once (ranges[i] belongs to srcs[i]): sources whose
 * kind has prefetch_many get one batch per kind, the others one prefetch per source.
 */
cks_err cks_source_prefetch_many(cks_source *const *srcs, const cks_range *ranges, size_t n, cks_diag *diag);
/* A hint that what was read so far will not be read again soon (see ops.trim). */
void cks_source_trim(cks_source *src);
/* The trust ops above; CKS_OK / false / false for sources without them. */
cks_err cks_source_check_whole(cks_source *src, cks_diag *diag);
bool cks_source_discard(cks_source *src);
bool cks_source_unverified(const cks_source *src);

/* A local file opened read-only; pread() based, thread-safe. */
cks_err cks_source_open_file(const char *path, cks_source **out, cks_diag *diag);
/* A memory buffer; the source keeps its own copy when `copy` is true, else borrows. */
cks_err cks_source_from_memory(const void *data, size_t len, const char *name, bool copy,
                               cks_source **out, cks_diag *diag);

#endif
