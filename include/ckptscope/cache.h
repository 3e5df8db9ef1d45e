/*
 * ckptscope/cache.h — the persistent, content-addressed disk cache.
 *
 * Every byte the range engine fetches is written here before the metric core reads it, so
 * a second run costs no network. The on-disk layout and its guarantees are documented in
 * cache/README.md; in short:
 *
 *   - Bytes are keyed by the *content identity* of the file they belong to:
 *       "sha256:<64 lowercase hex>"              an LFS file (its Hub SHA-256)
 *       "git:<40-hex commit>:<path>[:<blob sha1>]" a regular (non-LFS) file
 *     so the same bytes reached through another repo, branch or revision are a hit.
 *   - A key holds *extents*: byte ranges [offset, offset+length) of that file. Extents
 *     are split into chunks; every chunk carries a checksum that is verified on every
 *     read. A chunk that fails its check is never returned: its extent is replaced by the
 *     chunks that still verify (a miss for the rest), a note is queued for --verbose, and
 *     the caller refetches only what is missing.
 *   - Every entry is written to a temporary file, fsync'ed and renamed into place, so a
 *     reader never sees half an entry, whatever crashes. Several processes may share one
 *     cache directory; writers of the same key serialise on a per-key lock.
 *   - Chunks are stored zstd-compressed when that saves space.
 *   - Metadata (repository listings: revision→commit, sizes, hashes; anything else a
 *     caller names) is stored per namespace with a creation time; a lookup gives a TTL
 *     (or "never expires"). Headers, index files and config.json are byte ranges of their
 *     files, cached as extents like any other.
 *   - With a size cap, least-recently-used extents are evicted; keys pinned by this
 *     process (cks_cache_pin) and keys pinned by other live processes are never evicted.
 *
 * Ownership: cks_cache_free(NULL) is a no-op; every char* / array returned through an
 * out-parameter is owned by the caller (free() it; cks_cache_free_notes for notes).
 * Out-parameters are NULL / 0 on failure. Thread safety: a cks_cache handle is protected
 * by an internal mutex, so several threads may share one.
 */
#ifndef CKPTSCOPE_CACHE_H
#define CKPTSCOPE_CACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ckptscope/error.h"
#include "ckptscope/source.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct cks_cache cks_cache;

typedef struct cks_cache_opts {
    const char *dir;              /* NULL: $CKPTSCOPE_CACHE, else ${XDG_CACHE_HOME:-~/.cache}/ckptscope */
    uint64_t max_bytes;           /* 0 = no cap */
    bool offline;                 /* answer from the cache alone (the remote source checks this) */
    int64_t revision_ttl_seconds; /* <0: default 600 */
} cks_cache_opts;
/* Settings left at 0 / <0 above may come from $CKPTSCOPE_CACHE_MAX or from the cache's own
 * config file <dir>/config ("max_size = 50G", "revision_ttl = 600", "min_saving = 25"). */

/* Default TTL of revision→commit mappings (branches move; commits never do). */
#define CKS_CACHE_DEFAULT_REVISION_TTL 600

/* Open (creating when needed) the cache directory. Fails with CKS_ERR_CACHE when the
 * directory cannot be created or holds an unknown layout version. */
cks_err cks_cache_open(const cks_cache_opts *opts, cks_cache **out, cks_diag *diag);
void cks_cache_free(cks_cache *cache);

/* The directory in use (borrowed) and the options it was opened with. */
const char *cks_cache_dir(const cks_cache *c);
/* The size cap in force: opts->max_bytes, else $CKPTSCOPE_CACHE_MAX, else "max_size" in
 * <dir>/config, else 0 (none). */
uint64_t cks_cache_max_bytes(const cks_cache *c);
bool cks_cache_offline(const cks_cache *c);
int64_t cks_cache_revision_ttl(const cks_cache *c);

/* Compression policy: a chunk is stored zstd-compressed only when that makes it at least
 * `percent` smaller (default 25: bf16 weights, which save ~22% but would then cost a
 * decompression on every read, stay raw; norms, biases and JSON compress). 0 compresses
 * whenever it does not grow; > 100 never compresses. Affects later writes only. */
void cks_cache_set_min_saving(cks_cache *c, unsigned percent);

/* True when `key` has the shape described above. */
bool cks_cache_key_valid(const char *key);

/* The sub-ranges of `want` that are not cached yet, sorted and merged (overlapping and
 * adjacent ranges coalesced). *missing is NULL when nothing is missing; caller frees it.
 * Presence is judged from the extent index only; checksums are verified on read. */
cks_err cks_cache_missing(cks_cache *c, const char *key, const cks_range *want, size_t n_want,
                          cks_range **missing, size_t *n_missing, cks_diag *diag);

/* Copy `len` bytes at `offset` of the file `key` into buf. *hit is true only if the range
 * is fully covered and every chunk touched verified; otherwise *hit is false, the content
 * of buf is unspecified, and the return value is still CKS_OK (a miss is not an error).
 * A corrupt extent is replaced by its chunks that still verify and noted
 * (cks_cache_take_notes). Errors are reserved for an unusable cache (CKS_ERR_IO /
 * CKS_ERR_CACHE / CKS_ERR_NOMEM). Also pins the key (cks_cache_pin), as write and missing do. */
cks_err cks_cache_read(cks_cache *c, const char *key, uint64_t offset, void *buf, size_t len,
                       bool *hit, cks_diag *diag);

/* For a range that may be partly cached: copy every cached, verified byte of
 * [offset, offset+len) into buf (at its place) and return in *missing the sub-ranges that
 * were not filled (sorted, merged; NULL/0 when everything was), so the caller fetches only
 * those into the same buffer. A corrupt extent is dropped (keeping its good chunks) and its
 * part reported missing. Caller frees *missing. */
cks_err cks_cache_read_some(cks_cache *c, const char *key, uint64_t offset, void *buf, size_t len,
                            cks_range **missing, size_t *n_missing, cks_diag *diag);

/* Store `len` bytes at `offset` of `key` atomically. Merges with adjacent or overlapping
 * extents when that is cheap; never stores a byte twice on purpose. On a full disk returns
 * CKS_ERR_NO_SPACE and leaves the cache as it was (the temporary file is removed). With a
 * size cap, may evict least-recently-used unpinned extents afterwards. */
cks_err cks_cache_write(cks_cache *c, const char *key, uint64_t offset, const void *data,
                        size_t len, cks_diag *diag);
/* The same for n ranges of one key (data[i] holds ranges[i].length bytes), under one lock
 * of the key: what a batch of scattered tensors costs in system calls is then mostly the
 * creation of their extent files. Stops at the first range that fails. */
cks_err cks_cache_write_many(cks_cache *c, const char *key, const cks_range *ranges,
                             const void *const *data, size_t n, cks_diag *diag);

/* Metadata. `ns` is a namespace made of [a-z0-9_-] (e.g. "revision", "resolve", "header",
 * "config", "tokenizer", "index", "size"); `key` any string up to 4 KiB. An entry older
 * than ttl_seconds is a miss (ttl < 0: never expires). *data is NUL-terminated for
 * convenience (the terminator is not counted in *len); caller frees it. */
cks_err cks_cache_meta_get(cks_cache *c, const char *ns, const char *key, int64_t ttl_seconds,
                           char **data, size_t *len, bool *hit, cks_diag *diag);
cks_err cks_cache_meta_put(cks_cache *c, const char *ns, const char *key, const void *data,
                           size_t len, cks_diag *diag);

/* The first write of this handle that failed (cks_cache_write, _meta_put, _mark_verified),
 * with its message; CKS_OK when none did. Reads go on as before; after a NoSpace every later
 * write fails at once with the same message (the cache is then read-only for this handle).
 * Callers that ignore write errors (the remote source: a cache failure costs a refetch,
 * never data) use it to say once that the cache stopped keeping what was fetched. */
cks_err cks_cache_write_failure(cks_cache *c, cks_diag *diag);

/* Remove every extent of `key` and its whole-file mark: bytes that failed a check (a
 * SHA-256 or git blob id that does not match, a header that does not parse) must not
 * outlive the run that found it. A note says what went (`why`). CKS_ERR_IO when some of it
 * could not be removed (a read-only cache). */
cks_err cks_cache_drop(cks_cache *c, const char *key, const char *why, cks_diag *diag);

/* Remove one metadata entry (absent is fine). */
cks_err cks_cache_meta_delete(cks_cache *c, const char *ns, const char *key, cks_diag *diag);

/* Never evict this key while this process lives (also protects it from eviction by
 * other processes that share the cache). */
void cks_cache_pin(cks_cache *c, const char *key);

/* Messages for --verbose (corrupt extents dropped, evictions), in order; the queue is
 * emptied. Returns the count; *notes is NULL when there are none. Free with
 * cks_cache_free_notes (or free() each and the array). */
size_t cks_cache_take_notes(cks_cache *c, char ***notes);
void cks_cache_free_notes(char **notes, size_t n);

/* Whole-file integrity. When [0, size) of the LFS file `key` ("sha256:<hex>") is fully
 * cached, stream it through SHA-256: on a match *verified = true and the result is
 * remembered (later calls answer from that record without rehashing); on a mismatch every
 * extent of the key is dropped and CKS_ERR_INTEGRITY returned. When the file is not fully
 * cached: CKS_OK with *verified = false. */
cks_err cks_cache_verify_file(cks_cache *c, const char *key, uint64_t size, bool *verified,
                              cks_diag *diag);

/* True when all `size` bytes of `key` are cached and marked verified (no hashing). */
bool cks_cache_is_verified(cks_cache *c, const char *key, uint64_t size);

/* Record that the caller streamed the whole file `key` (all `size` bytes, now cached)
 * through SHA-256 and it matched: later cks_cache_verify_file calls answer from this mark.
 * Writing new bytes under the key removes the mark (they were not part of the check). */
cks_err cks_cache_mark_verified(cks_cache *c, const char *key, uint64_t size, cks_diag *diag);

/* A source that serves a fully cached, SHA-256-verified LFS file straight from the cache
 * (one copy, chunk checksums verified), falling back to `inner` for any read the cache
 * cannot serve (a chunk found damaged is dropped, then refetched through inner). Takes
 * ownership of inner only when it returns a wrapper (*out != NULL); when the file is not
 * whole in the cache or not marked verified, *out is NULL and inner stays the caller's
 * (it never hashes here: opening a file for `ls` must not read all of it). */
cks_err cks_cache_source_wrap(cks_cache *c, const char *key, cks_source *inner, cks_source **out,
                              cks_diag *diag);

/* True for a source made by cks_cache_source_wrap (whole, SHA-256-verified, from the cache). */
bool cks_cache_source_is(const cks_source *src);

/* HF_HOME reuse: path of a complete file in the standard Hugging Face cache for
 * (repo_type "model"|"dataset", repo_id "org/name", commit (40 hex) or a ref name, path in
 * the repo) when present, else *local_path = NULL and CKS_OK. Never writes there.
 * hf_home NULL: $HF_HUB_CACHE, $HUGGINGFACE_HUB_CACHE, $HF_HOME/hub,
 * $XDG_CACHE_HOME/huggingface/hub, ~/.cache/huggingface/hub, first that is set. */
cks_err cks_cache_hf_lookup(const char *hf_home, const char *repo_type, const char *repo_id,
                            const char *commit, const char *path, char **local_path,
                            cks_diag *diag);

/* --offline reporting: given the named pieces of one file an analysis needs (tensor names
 * and their absolute byte ranges), write a message naming exactly the pieces not cached,
 * e.g. "model-00001.safetensors: 3 of 12 tensors not cached: a.weight, b.weight, ...".
 * *message is NULL when everything is cached. */
cks_err cks_cache_describe_missing(cks_cache *c, const char *key, const char *file_label,
                                   const char *const *names, const cks_range *ranges, size_t n,
                                   char **message, cks_diag *diag);

/* ---- maintenance (the `ckptscope cache` subcommand) ---------------------------------- */

typedef enum cks_cache_entry_kind {
    CKS_CACHE_ENTRY_FILE = 0, /* the extents of one content key */
    CKS_CACHE_ENTRY_META = 1  /* one metadata entry */
} cks_cache_entry_kind;

typedef struct cks_cache_entry {
    cks_cache_entry_kind kind;
    char *key;                /* content key, or metadata key */
    char *ns;                 /* metadata namespace; NULL for files */
    uint64_t n_extents;       /* files: number of extents (each member of a pack file counts) */
    uint64_t logical_bytes;   /* bytes of the original file covered (metadata: payload size) */
    uint64_t stored_bytes;    /* bytes on disk */
    int64_t last_used;        /* unix seconds: most recent use of any extent / creation */
    bool verified;            /* files: whole-file SHA-256 verified */
} cks_cache_entry;

/* Every entry of the cache, files first (by key), then metadata (by namespace, key). */
cks_err cks_cache_list(cks_cache *c, cks_cache_entry **entries, size_t *n, cks_diag *diag);
void cks_cache_entries_free(cks_cache_entry *entries, size_t n);

typedef struct cks_cache_stat {
    uint64_t n_keys, n_extents, n_meta, n_temp;
    uint64_t logical_bytes;   /* what the cached bytes would take uncompressed */
    uint64_t stored_bytes;    /* what they take on disk (extents + metadata) */
    uint64_t meta_bytes;      /* metadata on disk (part of stored_bytes) */
} cks_cache_stat;

cks_err cks_cache_stat_get(cks_cache *c, cks_cache_stat *st, cks_diag *diag);

typedef struct cks_cache_verify_report {
    uint64_t checked_extents, checked_meta, checked_bytes;
    uint64_t bad_extents, bad_meta;   /* found corrupt (and removed when repair is set) */
    uint64_t stale_temp;              /* temporaries left by dead processes (removed on repair) */
    char **bad;                       /* one line per bad entry; free with cks_cache_verify_report_release */
    size_t n_bad;
    /* whole files (cks_cache_verify_listed): held entirely and hashed against the SHA-256 a
     * cached listing gives them, found not to match (dropped on repair), held only in part
     * (no whole-file hash can check those: a later whole read of the file does) */
    uint64_t checked_files, bad_files, partial_files;
} cks_cache_verify_report;

/* Read and check every chunk and metadata entry. With repair, bad entries and stale
 * temporaries are deleted. A cache with bad entries is still CKS_OK (see the report). */
cks_err cks_cache_verify(cks_cache *c, bool repair, cks_cache_verify_report *rep, cks_diag *diag);
void cks_cache_verify_report_release(cks_cache_verify_report *rep);

/* SHA-256 (64 hex) of [0, size) of `key` as cached, without marking or dropping anything;
 * *whole is false (and hex "") when some of it is not cached or a chunk failed its check. */
cks_err cks_cache_hash_file(cks_cache *c, const char *key, uint64_t size, char hex[65], bool *whole,
                            cks_diag *diag);

/* Report a bad entry found outside cks_cache_verify (printf-style line). */
void cks_cache_verify_report_bad(cks_cache_verify_report *rep, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Evict least-recently-used unpinned extents until the cache holds at most max_bytes on
 * disk; also removes expired-by-design leftovers (stale temporaries). Reports what went. */
cks_err cks_cache_prune(cks_cache *c, uint64_t max_bytes, uint64_t *evicted_extents,
                        uint64_t *evicted_bytes, cks_diag *diag);

/* Remove every entry (extents and metadata) that no live process has pinned. */
cks_err cks_cache_clear(cks_cache *c, uint64_t *removed_bytes, cks_diag *diag);

/* Remove every extent of one content key, unless a live process pins it (*in_use, and
 * nothing removed). A key with nothing cached is no error. */
cks_err cks_cache_remove_key(cks_cache *c, const char *key, uint64_t *removed_bytes, bool *in_use,
                             cks_diag *diag);
/* Remove one metadata entry (absent: no error). */
cks_err cks_cache_meta_remove(cks_cache *c, const char *ns, const char *key, uint64_t *removed_bytes,
                              cks_diag *diag);

/* ---- building blocks, exposed for tests and benchmarks -------------------------------- */

/* The chunk checksum: four CRC32C (Castagnoli) lanes over interleaved 8-byte words, so
 * the hardware instruction's latency is hidden (about 3x one lane). Portable fallback
 * gives identical values. out[0..3]. */
void cks_cache_checksum(const void *data, size_t len, uint32_t out[4]);

#ifdef __cplusplus
}
#endif
#endif
