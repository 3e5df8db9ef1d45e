/*
 * remote_impl.h — what the remote files share (not part of the API; that is
 * include/ckptscope/hub.h): the session, its remote sources and their state.
 *
 *   remote_session.c  the session: options, notes, stats, freeing (the bottom)
 *   remote_source.c   remote sources (memory, disk cache, network; the whole-file SHA-256;
 *                     read-ahead), HF_HOME copies, and the sizes servers report
 *   remote.c          the checkpoint provider: listing, shards, index, opening (the top)
 */
#ifndef CKS_REMOTE_IMPL_H
#define CKS_REMOTE_IMPL_H

#include "ckptscope/cache_hub.h"
#include "ckptscope/hex.h"
#include "ckptscope/hub.h"
#include "ckptscope/rangeset.h"

#include <openssl/evp.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#define DEFAULT_MEMORY_CAP (256u * 1024u * 1024u)
/* The first read of every shard. It matches cks_st_read_header's first read (4 KiB), so the
 * parser finds in memory exactly what was prefetched: a small header costs one 4 KiB range,
 * a larger one that plus exactly the rest of the header, never tensor data. */
#define HEADER_CHUNK CKS_ST_FIRST_READ
/* Read-ahead windows of a stream (a file read front to back). Bytes a stream has read are
 * dropped once the whole-file hash has them too (drop_consumed), so a stream holds about the
 * window it reads plus the one in flight: with 64 MiB windows and nothing dropped before the
 * 256 MiB memory cap, `hash` of a remote 2 GiB file peaked at 400-600 MiB RSS; with 8 MiB
 * windows at 48 MiB (77 MiB with the disk cache, whose merge of adjacent extents copies up to
 * 40 MiB), 16 MiB windows took 64 and 106 MiB. A window still outlasts a round trip at
 * 1 Gbit/s (67 ms against 40), so the next one is on its way before this one is read. */
#define READAHEAD_MIN (8u * 1024u * 1024u)
#define READAHEAD_MAX (8u * 1024u * 1024u)
/* How far past the reader the worker streams on its own: the window after the reader's is
 * fetched while the reader works on its current one, so a stream holds about two windows in
 * memory plus what the cache writer still has to store. Two windows of lead were no faster
 * within the noise (hash of a remote 512 MiB file: 0.97 s against 1.05 s median, 5 runs
 * each, busy machine) and took the 2 GiB run's peak to 63 MiB, at the 64 MiB goal. */
#define STREAM_LEAD (1u * READAHEAD_MAX)
#define MAX_SMALL_FILE (256u * 1024u * 1024u)

struct extent {
    uint64_t off, len;
    uint8_t *data;
    uint64_t stamp;   /* last use, for LRU eviction */
    bool from_cache;  /* read from the disk cache, not fetched in this run */
};

enum sha_state { SHA_NONE, SHA_RUNNING, SHA_OK, SHA_BAD };

/*
 * Locking: `mu` guards the extents, the hash state and the session; `net` serialises the
 * range engine (libcurl handles are single-threaded). The network is never used with `mu`
 * held, so while one thread waits for bytes the others keep reading what is in memory.
 * Order: net before mu.
 */
struct rsrc;

/* Bytes waiting for the hasher to feed them to their source's whole-file SHA-256. */
struct hash_job {
    struct hash_job *next;
    struct rsrc *src;
    uint8_t *data;             /* a reference to the extent's bytes (rbuf) */
    uint64_t skip, len;        /* the bytes hashed: data[skip, skip+len) */
};

/* A window of a stream waiting to be stored in the disk cache by the writer thread. */
struct cache_job {
    struct cache_job *next;
    char key[200];
    uint64_t off, len;
    uint8_t *data;             /* a reference to the extent's bytes (rbuf) */
};

struct cks_remote {
    pthread_mutex_t mu;
    pthread_mutex_t net;
    /* The cache writer: stores the windows of streams (CRC, copy into the page cache, rename)
     * off the thread that fetches and hashes them. Its own lock `wmu` is taken alone or
     * after mu, never before; the writer itself never takes mu. */
    pthread_mutex_t wmu;
    pthread_cond_t wcv;        /* with wmu: a job was queued or finished, or stop */
    pthread_t writer;
    bool w_started, w_stop, w_stopping;
    struct cache_job *w_head, *w_tail;
    struct cache_job *w_cur;   /* the job being written now (off the queue) */
    uint64_t w_queued;         /* bytes queued or being written */
    /* The read-ahead worker: fetches the next window of a stream while readers work on
     * the current one, so a reader never waits for bytes it does not need yet. */
    pthread_cond_t bg_cv;      /* with mu: a request was posted, a fetch ended, or stop */
    pthread_t bg;
    bool bg_started, bg_stop;
    struct rsrc *bg_src;       /* the posted request (NULL: none) */
    uint64_t bg_off, bg_len;
    struct rsrc *bg_busy;      /* the source the worker is fetching for right now */
    /* The hasher: feeds fetched bytes to their file's SHA-256 in order, so the thread that
     * fetches them goes back to the network at once. Hashing on the fetching thread made it
     * the bottleneck of `hash` of a remote file on 2 cores: receive, copy and the whole-file
     * SHA-256 there (53% of the CPU samples), while the reader hashed the tensors on the
     * other core. Its queue is guarded by mu; it lives as long as the session. */
    pthread_cond_t hcv;        /* with mu: a hash job was queued or finished, or stop */
    pthread_t hasher;
    bool h_started, h_stop;
    struct hash_job *h_head, *h_tail;
    uint64_t h_queued;         /* bytes queued or being hashed */
    /* Files resolved ahead of need (the shards next to an index, resolved together with it),
     * handed to their sources when those are opened. */
    struct presolved {
        char *path, *url;
        double expires_at;
    } *pre;
    size_t n_pre;
    bool presolved_index;      /* the batch beside an index was resolved (presolve_with_index) */
    int refs;
    cks_http *http;
    cks_hub *hub;
    cks_hub_repo *repo;        /* HUB */
    cks_hub_spec spec;
    cks_cache *cache;
    const char *token_origin;
    uint64_t memory_cap;
    bool reads_config;         /* config.json rides with the headers (cks_remote_opts) */
    uint64_t stamp;
    char *url;                 /* URL session: the file URL */
    char *url_base;            /* URL session: up to and including the last '/' */
    char *url_shown;           /* URL without the query string */
    cks_hub_resolved url_res;  /* URL session: resolution of `url` */
    char *endpoint;            /* as given, the key of the cached listing */
    bool listing_forgotten;    /* the cached listing was dropped after a failed check */
    char **notes;              /* for the command line (cks_remote_take_notes) */
    size_t n_notes;
};

struct rsrc {
    cks_source base;
    cks_remote *rem;
    char *path;                /* path in the repo, or the URL for URL sessions */
    cks_http_target target;
    char key[200];             /* cache key, "" when the content has no identity */
    struct extent *ext;
    size_t n_ext, cap_ext;
    uint64_t mem;
    uint64_t last_end;         /* end of the previous read_at */
    uint64_t ahead;            /* current read-ahead window; grows while reads stream */
    EVP_MD_CTX *sha;
    uint64_t sha_next;         /* bytes [0, sha_next) are hashed or queued for the hasher */
    unsigned sha_pending;      /* this source's jobs queued for the hasher or being hashed */
    enum sha_state sha_state;
    bool sha_saw_cache;        /* some hashed bytes came from the disk cache */
    char sha_hex[65];          /* the SHA-256 of the bytes, once the whole file was hashed */
    uint64_t head_end;         /* [0, head_end) was read by the caller (coverage of prefetches) */
    bool settled;              /* check_whole put the whole file in the cache and verified it */
    cks_rangeset fetched;      /* what this run fetched from the network */
    uint64_t cold_from;        /* [cold_from, cold_to): none of it was in the disk cache when a */
    uint64_t cold_to;          /* stream last asked, and this run has not fetched it since */
};

/* ---- shared across remote_session.c, remote_source.c, remote.c ---- */

void remote_distrust_listing(cks_remote *r);
/* Keep `url` (taken) as the resolution of `path`, for the source opened on it later. False
 * (url freed) without memory. */
bool remote_presolved_add(cks_remote *r, const char *path, char *url, double expires_at);
/* Keep bytes of a remote source that arrived outside a range fetch, as if fetched now. */
cks_err remote_adopt(cks_source *src, uint64_t off, const void *bytes, uint64_t len, cks_diag *diag);
/* The resolution waiting for the source of `path` (still the session's), or NULL. */
const char *remote_presolved_url(const cks_remote *r, const char *path);
cks_err remote_new_source(cks_remote *r, const char *path, uint64_t size, const char *sha256,
                          const char *url, struct rsrc **out, cks_diag *diag);
void remote_note(cks_remote *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void remote_unref(cks_remote *r);
cks_err remote_resolve_now(cks_remote *r, const char *const *paths, size_t n, char **urls,
                           cks_served_size *out, cks_diag *diag);
cks_err remote_served_sizes(cks_remote *r, const char *const *paths, size_t n, cks_served_size *out,
                            cks_diag *diag);

#endif
