/*
 * src/storage/cache_impl.h — what the files of the disk cache share: its limits, the cache
 * object and the helpers one file uses from another. Not part of the public API (that is
 * include/ckptscope/cache.h); src/storage/cache_internal.h is what the unit tests also see.
 *
 * The files, along the seams the one 3,600-line cache.c had marked with banners:
 *   cache_fs.c       filesystem primitives: bytes in little-endian, paths, directories, fsync, temporary files committed by rename
 *   cache_index.c    keys, their directories, locks and extent indexes; opening and freeing a cache
 *   cache_extents.c  extent files with per-chunk checksums; the public read, write and missing
 *   cache_meta.c     metadata entries, dropping what failed a check, whole-file verification, offline reporting
 *   cache_evict.c    walking the extent files, eviction under the size cap, prune
 *   cache_admin.c    list, stat, verify, clear, remove (on the walker of cache_evict.c)
 *
 *
 * The disk cache: content-addressed extents with per-chunk checksums, metadata with TTLs,
 * atomic writes, multi-process safety, zstd, and an LRU size cap. Layout and guarantees:
 * cache/README.md. Contracts: include/ckptscope/cache.h.
 *
 * The three rules everything below follows:
 *   1. An entry becomes visible only by rename() of a complete temporary file, so readers
 *      need no lock and never see half an entry. Metadata and indexes are fsync'ed before
 *      the rename; extents are not: a power loss may leave one missing or torn, which rule 2
 *      turns into a miss and a refetch, never wrong bytes. Syncing each cost two fsyncs: a
 *      verify of a 100B MoE stores ~18,000 sampled blocks and spent 30 s in them (then
 *      extents under 1 MiB were exempt), and `hash` of a remote 1 GiB file spent 0.75 s of
 *      3.2 s syncing its 8 MiB extents (issue 15).
 *   2. Bytes are returned only after the checksum of every chunk they came from matched;
 *      anything else is a miss (and a corrupt file is deleted so the refetch replaces it).
 *   3. Writers of one key serialise on that key's lock file; evictors never touch a key
 *      that a live process pinned (flock LOCK_SH on the key's pin file).
 */
#ifndef CKPTSCOPE_CACHE_IMPL_H
#define CKPTSCOPE_CACHE_IMPL_H

#include "core/byteorder.h"

#include <dirent.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include <zstd.h>

#include "ckptscope/cache.h"
#include "cache_internal.h"

#include <openssl/evp.h>
#include <zstd.h>

#define LAYOUT_TEXT "ckptscope-cache 1\n"

#define EXT_MAGIC "CKSEXT01"
#define PACK_MAGIC "CKSPACK1"
#define META_MAGIC "CKSMETA1"
#define EXT_HEADER_SIZE 64u
#define EXT_ENTRY_SIZE 32u
#define PACK_HEADER_SIZE 64u
#define PACK_ENTRY_SIZE 24u
#define META_HEADER_SIZE 40u

/* 256 KiB chunks: small enough that reading one norm vector verifies little, large enough
 * that zstd finds redundancy and the chunk table stays a few KiB. */
#define CHUNK_SIZE (256u * 1024u)
/* An extent never exceeds 64 MiB, which bounds a merge's copy and an extent's table. */
#define MAX_EXTENT_LEN (64u * 1024u * 1024u)
#define MAX_CHUNKS (MAX_EXTENT_LEN / CHUNK_SIZE)
/* Merging rewrites neighbours: only when what it rewrites is at most a quarter of the new
 * bytes, or under MERGE_SMALL whatever the write (so tiny extents still coalesce). The old
 * rule (up to 4x the new bytes, at least 8 MiB) rewrote every 8 MiB block of a streamed file
 * into its growing neighbour: 120 MiB written per 40 MiB stored, `hash` of a remote 1 GiB
 * file 6.6 s against 1.8 s without the cache (issue 15). */
#define MERGE_SMALL (1024u * 1024u)
/* A write batch stores its small pieces together, as the members of one pack file, instead
 * of one extent file each: 500 scattered tensors made 374 files, and creating them (open in
 * tmp/, flock, two writes, rename, close) took 70 of a cold fetch's 200 ms (issue 15). Pieces
 * from PACK_MEMBER_MAX up get files of their own, where a file's cost is small next to the
 * bytes; a pack holds at most PACK_MAX_MEMBERS members and MAX_EXTENT_LEN bytes, which bounds
 * its directory and what salvaging it rewrites. */
#define PACK_MEMBER_MAX (4u * 1024u * 1024u)
#define PACK_MAX_MEMBERS 1024u
#define MAX_META_LEN ((uint64_t)256 * 1024 * 1024)
#define MAX_KEY_LEN 4096u
#define MAX_NOTES 1000u
#define MAX_PIN_FDS 512u
#define N_SLOTS 16u
/* Compress a chunk only when that saves at least a quarter of it. bf16 weights save about
 * 22% under zstd but decompress at ~1.3 GB/s, slower than the SHA-256 every analysis runs
 * (~1.8 GB/s here): compressing them would make a warm rerun about twice as slow for a
 * fifth of the disk. Norms, biases, constants and JSON save far more than a quarter.
 * (bench/cache/RESULTS.md has the figures; cks_cache_set_min_saving changes the policy.) */
#define DEFAULT_MIN_SAVING_PCT 25
#define ZSTD_LEVEL 3          /* metadata: small, read rarely */
#define ZSTD_LEVEL_EXTENT 1   /* extents: as fast as the network, nearly the same ratio here */
#define SAMPLE_LEN (16u * 1024u)
/* Access times are refreshed at most this often (they only order evictions). */
#define ATIME_SLACK_SECONDS 60

enum { METHOD_RAW = 0, METHOD_ZSTD = 1 };

/* Bytes [off, off+len) of a key, stored as an extent image: alone in the file
 * x-<off>-<len>, or (packed) as a member of the pack file p-<pack_off>-<pack_tag>, whose image
 * starts at byte `base` of that file. */
typedef struct extent {
    uint64_t off, len;
    uint64_t base;
    uint64_t pack_off, pack_tag;
    bool packed;
} extent;

typedef struct keyent {
    char *key;
    char name[67];          /* "s-<hex>" or "g-<hex>" */
    extent *ext;            /* sorted by offset */
    size_t n_ext, cap_ext;
    uint64_t max_len;          /* longest extent in the index (bounds lookups) */
    bool loaded;
    int lock_fd;               /* the key's "lock" file: writers' flock + generation */
    uint64_t gen_seen;         /* generation the index reflects */
    bool gen_valid;
    bool pinned;
    int pin_fd;
} keyent;

typedef struct chunk_slot {
    char name[67];
    uint64_t ext_off, ext_len;
    uint32_t idx, len;
    dev_t dev;
    ino_t ino;
    uint64_t stamp;
    unsigned char *data;
} chunk_slot;

struct cks_cache {
    char *dir;
    uint64_t max_bytes;
    bool offline;
    int64_t revision_ttl;
    pthread_mutex_t mu;
    keyent *keys;
    size_t n_keys, cap_keys;
    size_t n_pin_fds;
    char **notes;
    size_t n_notes;
    ZSTD_CCtx *cctx;
    ZSTD_DCtx *dctx;
    chunk_slot slots[N_SLOTS];
    uint64_t slot_clock;
    unsigned char *scratch;   /* CHUNK_SIZE-bound compressed buffer */
    size_t scratch_cap;
    uint64_t tmp_counter;
    unsigned min_saving_pct;  /* compress a chunk only if it shrinks by this much */
    /* The first write that failed (CKS_OK: none), for cks_cache_write_failure. After a full
     * disk every later write fails at once: retrying each extent would only churn the disk. */
    cks_err write_err;
    cks_diag write_diag;
    bool no_space;
    /* size-cap bookkeeping */
    bool size_known;
    uint64_t size_estimate;
    uint64_t size_floor;      /* what could not be evicted last time (pinned) */
};

/* What reading an extent found (cache_ext_read). */
typedef enum ext_status {
    EXT_OK = 0,
    EXT_GONE,     /* the file disappeared (evicted, merged): rescan */
    EXT_CORRUPT,  /* the file is damaged: delete it */
    EXT_IOERR,    /* the disk failed to read: a miss, but leave the file */
    EXT_NOMEM
} ext_status;

/* cache_fs.c */
char *cache_xstrdup(const char *s);
char *cache_path_join(const char *a, const char *b);
int64_t cache_now_seconds(void);
void cache_add_note(cks_cache *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int cache_mkdir_p(const char *path);
bool cache_real_dir(const char *path);
int cache_mkdirs_here(const cks_cache *c, const char *path);
DIR *cache_opendir_here(const char *path);
cks_err cache_io_fail(cks_diag *diag, int e, const char *what, const char *path);
int cache_pwrite_all(int fd, const void *buf, size_t len, uint64_t off);
int cache_pread_all(int fd, void *buf, size_t len, uint64_t off);
cks_err cache_tmp_create(cks_cache *c, char **path_out, int *fd_out, cks_diag *diag);
cks_err cache_tmp_commit(char *tmp_path, int fd, const char *final_path, const char *final_dir, bool durable,
                          cks_diag *diag);
void cache_tmp_abort(char *tmp_path, int fd);
cks_err cache_write_file_atomic(cks_cache *c, const char *final_path, const char *final_dir,
                                 const void *data, size_t len, cks_diag *diag);
cks_err cache_write_file_renamed(cks_cache *c, const char *final_path, const char *final_dir,
                                 const void *data, size_t len, bool durable, cks_diag *diag);
/* cache_index.c */
void cache_key_dirname(const char *key, char out[67]);
char *cache_keydir_path(const cks_cache *c, const char *name);
char *cache_extent_path(const cks_cache *c, const char *name, const extent *e);
bool cache_parse_extent_name(const char *s, uint64_t *off, uint64_t *len);
bool cache_parse_pack_name(const char *s, uint64_t *pack_off, uint64_t *pack_tag);
bool cache_same_file(const extent *a, const extent *b);
/* The members of the pack file at `path` (named p-<pack_off>-<pack_tag>), from its directory
 * (the members' own headers and chunks are checked when they are read). *members is
 * malloc'ed. PACK_DAMAGED only when the file is there and its directory wrong; a pack that
 * could not be read (gone, a disk error) is PACK_UNREADABLE and left alone; PACK_NOMEM: no
 * memory to read it. */
typedef enum pack_status { PACK_OK = 0, PACK_DAMAGED, PACK_UNREADABLE, PACK_NOMEM, PACK_NOT_EXTENTS } pack_status;
pack_status cache_pack_members(const char *path, uint64_t pack_off, uint64_t pack_tag, extent **members,
                               size_t *n_members, uint64_t *file_bytes);
/* The extents the file `name` of the key directory `keydir` holds, for the index and the
 * walker alike: an extent file's one (*members = one, *n_members = 1) or a pack's members
 * (*members malloc'ed, free it when it is not `one`; *file_bytes its size). A pack whose
 * directory fails gives that status with *one naming the pack; PACK_NOT_EXTENTS: a name
 * that is neither (key, lock, pin, verified). */
pack_status cache_file_extents(const char *keydir, const char *name, extent *one, extent **members,
                               size_t *n_members, uint64_t *file_bytes);
int cache_cmp_extent(const void *a, const void *b);
cks_err cache_key_open_lock(cks_cache *c, keyent *k, cks_diag *diag);
void cache_key_gen_bump(keyent *k);
cks_err cache_key_refresh(cks_cache *c, keyent *k, bool force, cks_diag *diag);
cks_err cache_key_insert_extent(keyent *k, const extent *e);
keyent *cache_key_get(cks_cache *c, const char *key, cks_diag *diag, cks_err *err);
void cache_key_remove_extent(keyent *k, const extent *e);
size_t cache_first_relevant(const keyent *k, uint64_t a);
cks_err cache_gaps_append(const keyent *k, uint64_t a, uint64_t b, cks_range **out, size_t *n,
                           size_t *cap);
bool cache_key_covers(const keyent *k, uint64_t a, uint64_t b);
void cache_key_pin(cks_cache *c, keyent *k);
void cache_clean_stale_temps(cks_cache *c, uint64_t *count, bool remove);
/* cache_extents.c */
void cache_slots_forget(cks_cache *c, const char *name);
ext_status cache_ext_read(cks_cache *c, keyent *k, const extent *e, uint64_t pos,
                           unsigned char *dst, uint64_t n, char *why, size_t why_len);
cks_err cache_read_locked(cks_cache *c, keyent *k, uint64_t offset, unsigned char *buf,
                           size_t len, bool *hit, cks_diag *diag);
cks_err cache_lock_key(cks_cache *c, keyent *k, cks_diag *diag);
cks_err cache_write(cks_cache *c, const char *key, const cks_range *ranges,
                    const void *const *data, size_t n, cks_diag *diag);
/* cache_meta.c */
bool cache_ns_valid(const char *ns);
char *cache_meta_path(const cks_cache *c, const char *ns, const char *key);
bool cache_meta_decode(cks_cache *c, const unsigned char *img, size_t n, int64_t *created,
                        const unsigned char **key, uint32_t *key_len, char **data,
                        size_t *data_len);
int cache_slurp(const char *path, uint64_t max, unsigned char **img, size_t *n);
/* cache_admin.c */
/* ---- walking the extent files (cache_evict.c; used by cache_admin.c too) ---- */

/* One extent; a pack file gives one entry per member, all with its path, and its size as
 * `stored` on the first of them only (so sums count the file once). */
typedef struct cache_walk_ext {
    char *path;
    char name[67];
    extent e;
    uint64_t stored, file_bytes;
    int64_t atime;
} cache_walk_ext;

typedef struct cache_walk {
    cache_walk_ext *ext;
    size_t n, cap;
    uint64_t meta_bytes, n_meta;
} cache_walk;

void cache_walk_release(cache_walk *w);
/* Every extent file (with size and access time) and the metadata totals. */
cks_err cache_walk_cache(cks_cache *c, cache_walk *w, cks_diag *diag);
/* A key pinned by this process (an open checkpoint reads it). */
bool cache_name_pinned_here(cks_cache *c, const char *name);
/* The key's pin lock taken exclusively (no live process reads it), or -1. */
int cache_pin_exclusive(cks_cache *c, const char *name);

cks_err cache_maybe_evict(cks_cache *c, cks_diag *diag);

#endif
