/*
 * remote_source.c — remote sources: every byte from memory, the disk cache or the range
 * engine, in that order; the whole-file SHA-256 and read-ahead; copies found in HF_HOME; the
 * sizes the servers report. See remote_impl.h and include/ckptscope/hub.h.
 */
#include "remote_impl.h"

#include <ctype.h>
#include <stdalign.h>
#include <stdatomic.h>
#include <stddef.h>
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

/* ---------------------------------------------------------------- sources ---- */
static const cks_source_ops rsrc_ops;

/* ------------------------------------------------------- shared extent bytes ---- */

/* The bytes of an extent are read by the caller (from memory) and stored by the cache writer
 * at the same time: a reference count in front of them lets each let go on its own, without
 * a copy (8 MiB per window; a copy cost 0.3 s per 2 GiB streamed).
 *
 * The pieces of one network fetch share blocks of huge pages where there are enough of them:
 * a malloc per piece touched every 4 KiB page for the first time while the bytes arrived, and
 * those page faults were half the CPU of a scattered fetch (500 tensors, 17 MB: 7,600 faults).
 * A block goes back to the system when its last piece does; blocks are kept small (8 MiB) so
 * that evicting old pieces frees memory at nearly the rate it is counted. Only small pieces
 * share blocks (RBUF_SLOT_MAX). */
struct rbuf_block {
    atomic_size_t live;      /* pieces not yet let go */
    size_t map_len;
};

struct rbuf_head {
    atomic_uint refs;
    struct rbuf_block *block; /* NULL: a malloc of its own */
    alignas(max_align_t) unsigned char bytes[];
};

#define HUGE_PAGE_BYTES ((size_t)2 << 20)
#define RBUF_BLOCK_MAX ((size_t)8 << 20)
/* Larger pieces are malloc'd alone: malloc hands them memory freed by earlier ones (the
 * windows of a streamed file), already faulted in, which a new block would fault again. */
#define RBUF_SLOT_MAX ((size_t)1 << 20)
#define RBUF_BLOCK_MIN ((size_t)2 << 20)   /* a run of fewer bytes is malloc'd piece by piece */
#define RBUF_SLOT_ALIGN ((size_t)64)

static size_t round_up(size_t v, size_t to) /* `to` a power of two */
{
    return (v + to - 1) & ~(to - 1);
}

static uint8_t *rbuf_new(uint64_t len)
{
    if (len > SIZE_MAX - sizeof(struct rbuf_head))
        return NULL;
    struct rbuf_head *h = malloc(sizeof *h + (size_t)len);
    if (!h)
        return NULL;
    atomic_init(&h->refs, 1);
    h->block = NULL;
    return h->bytes;
}

static struct rbuf_head *rbuf_of(uint8_t *p)
{
    return (struct rbuf_head *)(void *)(p - offsetof(struct rbuf_head, bytes));
}

static uint8_t *rbuf_ref(uint8_t *p)
{
    atomic_fetch_add(&rbuf_of(p)->refs, 1);
    return p;
}

static void rbuf_put(uint8_t *p)
{
    if (!p)
        return;
    struct rbuf_head *h = rbuf_of(p);
    if (atomic_fetch_sub(&h->refs, 1) != 1)
        return;
    struct rbuf_block *b = h->block;
    if (!b)
        free(h);
    else if (atomic_fetch_sub(&b->live, 1) == 1)
        munmap(b, b->map_len);
}

/* The bytes one slot of a block takes for a piece of `len` bytes; 0 when it cannot fit any. */
static size_t rbuf_slot_size(uint64_t len)
{
    if (len > RBUF_SLOT_MAX)
        return 0;
    return round_up(sizeof(struct rbuf_head) + (size_t)len, RBUF_SLOT_ALIGN);
}

/* Map `len` bytes (a multiple of HUGE_PAGE_BYTES) at a huge-page boundary, asking for huge
 * pages; NULL when the system refuses the mapping. */
static void *map_huge(size_t len)
{
    uint8_t *raw = mmap(NULL, len + HUGE_PAGE_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (raw == MAP_FAILED)
        return NULL;
    uintptr_t start = round_up((uintptr_t)raw, HUGE_PAGE_BYTES);
    size_t lead = start - (uintptr_t)raw, trail = HUGE_PAGE_BYTES - lead;
    if (lead)
        munmap(raw, lead);
    if (trail)
        munmap((uint8_t *)start + len, trail);
    (void)madvise((void *)start, len, MADV_HUGEPAGE); /* a hint: 4 KiB pages work too */
    return (void *)start;
}

/* Where a block's first slot starts. */
#define RBUF_BLOCK_HEAD round_up(sizeof(struct rbuf_block), RBUF_SLOT_ALIGN)

/* A block with room for `bytes` of slots, `live` references counted; NULL when no mapping. */
static struct rbuf_block *rbuf_block_new(size_t bytes, size_t live)
{
    size_t map_len = round_up(RBUF_BLOCK_HEAD + bytes, HUGE_PAGE_BYTES);
    struct rbuf_block *b = map_huge(map_len);
    if (b) {
        atomic_init(&b->live, live);
        b->map_len = map_len;
    }
    return b;
}

/* The bytes of the slot at `at` in block b; with `claim`, the slot becomes an rbuf of one
 * reference (the block's count is the caller's to keep). */
static uint8_t *rbuf_slot_at(struct rbuf_block *b, size_t at, bool claim)
{
    struct rbuf_head *h = (struct rbuf_head *)(void *)((uint8_t *)b + at);
    if (claim) {
        atomic_init(&h->refs, 1);
        h->block = b;
    }
    return h->bytes;
}

/* Give each of pieces[first, last) a slot of one new block. */
static bool rbuf_fill_block(cks_http_piece *pieces, size_t first, size_t last, size_t bytes)
{
    struct rbuf_block *b = rbuf_block_new(bytes, last - first);
    if (!b)
        return false;
    size_t used = RBUF_BLOCK_HEAD;
    for (size_t i = first; i < last; i++) {
        pieces[i].dst = rbuf_slot_at(b, used, true);
        used += rbuf_slot_size(pieces[i].length);
    }
    return true;
}

/*
 * Memory for every piece of a fetch: each run of small pieces that adds up to RBUF_BLOCK_MIN
 * or more (at most RBUF_BLOCK_MAX) shares a block of huge pages; the other pieces, and any
 * run a block cannot be had for, get a malloc each (a block for a few small pieces would hold
 * a whole huge page for them). False when memory ran out; the pieces given memory so far keep
 * it (rbuf_put frees them).
 */
static bool rbuf_new_pieces(cks_http_piece *pieces, size_t n)
{
    size_t i = 0;
    while (i < n) {
        size_t end = i, bytes = 0, slot;
        while (end < n && (slot = rbuf_slot_size(pieces[end].length)) != 0 && bytes + slot <= RBUF_BLOCK_MAX) {
            bytes += slot;
            end++;
        }
        if (bytes >= RBUF_BLOCK_MIN && rbuf_fill_block(pieces, i, end, bytes)) {
            i = end;
            continue;
        }
        if (end == i)
            end = i + 1; /* a piece too large for any block */
        for (; i < end; i++)
            if (!(pieces[i].dst = rbuf_new(pieces[i].length)))
                return false;
    }
    return true;
}

/*
 * Memory for bytes read back from the disk cache. A malloc per range grew the heap a 4 KiB
 * page fault at a time: a warm fetch of 500 scattered tensors (17.5 MB) took 5,750 faults and
 * longer than the cold fetch. When a batch asks the cache for RBUF_BLOCK_MIN or more in small
 * ranges, they get slots of huge-page blocks instead, one at a time: a slot is offered before
 * the cache read and kept only when the read filled it, so a miss touches nothing and the next
 * range takes the same place. The arena holds a reference to its current block until it moves
 * on or is done, so a block goes back to the system with the last kept slot (rbuf_put).
 */
struct rbuf_arena {
    struct rbuf_block *block; /* NULL: none mapped yet */
    size_t used;              /* bytes of the block given out (its head included) */
    uint64_t left;            /* bytes the batch may still ask for, sizing the next block */
};

static void rbuf_arena_release(struct rbuf_arena *a)
{
    if (a->block && atomic_fetch_sub(&a->block->live, 1) == 1)
        munmap(a->block, a->block->map_len);
    a->block = NULL;
}

/* A slot's bytes for `len`, or NULL when the arena cannot give one (len too large for a slot,
 * or no mapping): the caller then uses rbuf_new. A slot-sized `len` counts as asked for. */
static uint8_t *rbuf_arena_offer(struct rbuf_arena *a, uint64_t len)
{
    size_t slot = rbuf_slot_size(len);
    if (slot == 0)
        return NULL;
    uint64_t want = a->left > RBUF_BLOCK_MAX ? RBUF_BLOCK_MAX : a->left;
    a->left -= a->left > len ? len : a->left;
    if (!a->block || a->used + slot > a->block->map_len) {
        rbuf_arena_release(a);
        /* one reference for the arena itself */
        if (!(a->block = rbuf_block_new(want > slot ? (size_t)want : slot, 1)))
            return NULL;
        a->used = RBUF_BLOCK_HEAD;
    }
    return rbuf_slot_at(a->block, a->used, false);
}

/* Keep the slot just offered for `len` bytes: from now on it is an rbuf like any other. */
static void rbuf_arena_keep(struct rbuf_arena *a, uint64_t len)
{
    (void)rbuf_slot_at(a->block, a->used, true);
    atomic_fetch_add(&a->block->live, 1);
    a->used += rbuf_slot_size(len);
}

/* ------------------------------------------------------------ cache writer ---- */

/*
 * A streamed window used to go into the cache on the thread that fetched it, before it could
 * fetch the next: 8 MiB of CRC, page-cache copy and file creation between two requests. The
 * writer thread takes those jobs from a queue of at most WRITE_QUEUE_MAX bytes (a full queue
 * makes the fetcher wait, so memory stays bounded). Whoever concludes or drops a key first
 * waits for, or discards, that key's queued jobs (writer_settle): a `verified` mark never
 * precedes a byte it covers, and a drop leaves nothing behind. One window queued (a job
 * larger than the room left waits for an empty queue) was as fast as two (hash of a remote
 * 512 MiB file: 2.35 s median either way, 6 runs each, busy machine) and never held more.
 */
#define WRITE_QUEUE_MAX (8u * 1024u * 1024u)
#define WRITER_BATCH 64u /* jobs of one key written under one lock of it */

static void *writer_main(void *arg)
{
    cks_remote *r = arg;
    pthread_mutex_lock(&r->wmu);
    for (;;) {
        while (!r->w_head && !r->w_stop)
            pthread_cond_wait(&r->wcv, &r->wmu);
        if (!r->w_head)
            break; /* stopped, and everything queued is written */
        /* the jobs of one key at the head go together, under one lock of the key (pieces
         * queued as they arrive come one by one: a batch forms while one is written) */
        struct cache_job *j = r->w_head, *last = j;
        size_t n = 1;
        while (n < WRITER_BATCH && last->next && strcmp(last->next->key, j->key) == 0) {
            last = last->next;
            n++;
        }
        r->w_head = last->next;
        last->next = NULL;
        if (!r->w_head)
            r->w_tail = NULL;
        r->w_cur = j; /* the batch, chained: writer_settle matches its key */
        pthread_mutex_unlock(&r->wmu);
        cks_range ranges[WRITER_BATCH];
        const void *data[WRITER_BATCH];
        size_t m = 0;
        for (struct cache_job *q = j; q; q = q->next, m++) {
            ranges[m].offset = q->off;
            ranges[m].length = q->len;
            data[m] = q->data;
        }
        /* a cache failure costs a refetch later, never data */
        (void)cks_cache_write_many(r->cache, j->key, ranges, data, m, NULL);
        pthread_mutex_lock(&r->wmu);
        r->w_cur = NULL;
        while (j) {
            struct cache_job *next = j->next;
            r->w_queued -= j->len;
            rbuf_put(j->data);
            free(j);
            j = next;
        }
        pthread_cond_broadcast(&r->wcv);
    }
    pthread_mutex_unlock(&r->wmu);
    return NULL;
}

/* Queue [off, off+len) of `data` (an rbuf, a reference is taken) for the cache; false when
 * it cannot (no memory, no thread, or with !wait a full queue): the caller then writes it
 * itself. */
static bool writer_queue(cks_remote *r, const char *key, uint64_t off, uint8_t *data, uint64_t len, bool wait)
{
    struct cache_job *j = calloc(1, sizeof *j);
    bool queued = false;
    if (!j || strlen(key) >= sizeof j->key)
        goto out;
    memcpy(j->key, key, strlen(key) + 1);
    j->off = off;
    j->len = len;
    pthread_mutex_lock(&r->wmu);
    for (;;) {
        if (!r->w_started && !r->w_stop && pthread_create(&r->writer, NULL, writer_main, r) == 0)
            r->w_started = true;
        if (!r->w_started || r->w_stop)
            break; /* no writer, or one that is stopping: the caller writes */
        if (r->w_queued == 0 || r->w_queued + len <= WRITE_QUEUE_MAX) {
            j->data = rbuf_ref(data);
            if (r->w_tail)
                r->w_tail->next = j;
            else
                r->w_head = j;
            r->w_tail = j;
            r->w_queued += len;
            queued = true;
            pthread_cond_broadcast(&r->wcv);
            break;
        }
        if (!wait)
            break;
        pthread_cond_wait(&r->wcv, &r->wmu); /* full: wait for room (or a stop) */
    }
    pthread_mutex_unlock(&r->wmu);
out:
    if (!queued)
        free(j);
    return queued;
}

/* Return when no job of `key` is queued or being written; with `discard`, its queued jobs are
 * dropped instead of written (bytes that failed a check). */
static void writer_settle(cks_remote *r, const char *key, bool discard)
{
    pthread_mutex_lock(&r->wmu);
    for (;;) {
        bool pending = r->w_cur && strcmp(r->w_cur->key, key) == 0;
        for (struct cache_job **pj = &r->w_head; *pj;) {
            struct cache_job *j = *pj;
            if (strcmp(j->key, key) != 0) {
                pj = &j->next;
                continue;
            }
            if (!discard) {
                pending = true;
                pj = &j->next;
                continue;
            }
            *pj = j->next;
            r->w_queued -= j->len;
            rbuf_put(j->data);
            free(j);
        }
        r->w_tail = NULL;
        for (struct cache_job *j = r->w_head; j; j = j->next)
            r->w_tail = j;
        if (discard)
            pthread_cond_broadcast(&r->wcv); /* room freed */
        if (!pending)
            break;
        pthread_cond_wait(&r->wcv, &r->wmu);
    }
    pthread_mutex_unlock(&r->wmu);
}

/* When a source goes: write everything queued and stop the writer (r->mu not held). So no
 * writer outlives the last source, and the session frees no lock a thread still uses; a
 * stream of another source meanwhile writes its windows itself, then starts a new writer. */
static void writer_stop(cks_remote *r)
{
    pthread_mutex_lock(&r->wmu);
    while (r->w_stopping)
        pthread_cond_wait(&r->wcv, &r->wmu);
    bool join = r->w_started;
    if (join) {
        r->w_stopping = r->w_stop = true;
        pthread_cond_broadcast(&r->wcv);
    }
    pthread_mutex_unlock(&r->wmu);
    if (!join)
        return;
    pthread_join(r->writer, NULL);
    pthread_mutex_lock(&r->wmu);
    r->w_started = r->w_stop = r->w_stopping = false;
    pthread_cond_broadcast(&r->wcv);
    pthread_mutex_unlock(&r->wmu);
}


/* ------------------------------------------------------------------ hasher ---- */

/* How many bytes the hasher may have queued before a fetch waits for it: one window in
 * hand and one queued, so the next window's transfer overlaps the hashing of the last and
 * a stream holds no more windows than when the fetching thread hashed them itself. */
#define HASH_QUEUE_MAX (READAHEAD_MAX)

static void *hasher_main(void *arg)
{
    cks_remote *r = arg;
    pthread_mutex_lock(&r->mu);
    for (;;) {
        while (!r->h_head && !r->h_stop)
            pthread_cond_wait(&r->hcv, &r->mu);
        if (!r->h_head)
            break;
        struct hash_job *j = r->h_head;
        r->h_head = j->next;
        if (!r->h_head)
            r->h_tail = NULL;
        pthread_mutex_unlock(&r->mu);
        /* the context is this thread's while the source has jobs (sha_drain) */
        EVP_DigestUpdate(j->src->sha, j->data + j->skip, (size_t)j->len);
        rbuf_put(j->data);
        pthread_mutex_lock(&r->mu);
        j->src->sha_pending--;
        r->h_queued -= j->len;
        free(j);
        pthread_cond_broadcast(&r->hcv);
    }
    pthread_mutex_unlock(&r->mu);
    return NULL;
}

/* Queue data[skip, skip+len) of s for the hasher (r->mu held; `data` an rbuf, a reference is
 * taken). False when it cannot (no memory, no thread): the caller hashes it itself. */
static bool hasher_queue(struct rsrc *s, uint8_t *data, uint64_t skip, uint64_t len)
{
    cks_remote *r = s->rem;
    struct hash_job *j;
    if (!r->h_started && !r->h_stop) {
        if (pthread_create(&r->hasher, NULL, hasher_main, r) != 0)
            return false;
        r->h_started = true;
    }
    if (!r->h_started || r->h_stop || !(j = calloc(1, sizeof *j)))
        return false;
    j->src = s;
    j->data = rbuf_ref(data);
    j->skip = skip;
    j->len = len;
    if (r->h_tail)
        r->h_tail->next = j;
    else
        r->h_head = j;
    r->h_tail = j;
    r->h_queued += len;
    s->sha_pending++;
    pthread_cond_broadcast(&r->hcv);
    return true;
}

/* Wait until the hasher has fed every queued byte of s to its context (r->mu held; dropped
 * while waiting): before anyone else touches the context, or reads the hash's outcome. */
static void sha_drain(struct rsrc *s)
{
    while (s->sha_pending > 0)
        pthread_cond_wait(&s->rem->hcv, &s->rem->mu);
}

/* Feed bytes [off, off+len) of `data` (an rbuf) to the whole-file hash if they continue it:
 * queued for the hasher, or hashed here when it cannot take them (r->mu held). */
static void sha_feed(struct rsrc *s, uint64_t off, uint8_t *data, uint64_t len)
{
    if (s->sha_state != SHA_RUNNING || off > s->sha_next || off + len <= s->sha_next)
        return;
    if (hasher_queue(s, data, s->sha_next - off, off + len - s->sha_next)) {
        s->sha_next = off + len;
        return;
    }
    /* in order behind what is queued: wait for it (holding the bytes, which the wait may
     * evict from memory), then look again, as the wait let others feed or restart */
    rbuf_ref(data);
    sha_drain(s);
    if (s->sha_state == SHA_RUNNING && off <= s->sha_next && off + len > s->sha_next) {
        EVP_DigestUpdate(s->sha, data + (s->sha_next - off), (size_t)(off + len - s->sha_next));
        s->sha_next = off + len;
    }
    rbuf_put(data);
}

/* Continue the hash through the in-memory extents, and conclude it at the end of file. */
static cks_err sha_advance(struct rsrc *s, cks_diag *diag)
{
    bool moved = true;
    while (s->sha_state == SHA_RUNNING && moved && s->sha_next < s->base.size) {
        moved = false;
        for (size_t i = 0; i < s->n_ext; i++) {
            struct extent *e = &s->ext[i];
            if (e->off <= s->sha_next && s->sha_next < e->off + e->len) {
                s->sha_saw_cache = s->sha_saw_cache || e->from_cache;
                sha_feed(s, e->off, e->data, e->len);
                moved = true;
            }
        }
    }
    if (s->sha_state == SHA_RUNNING && s->sha_next == s->base.size)
        sha_drain(s); /* every byte is queued: the outcome waits for the hasher */
    if (s->sha_state == SHA_RUNNING && s->sha_next == s->base.size && s->sha_pending == 0) {
        unsigned char d[EVP_MAX_MD_SIZE];
        unsigned dl = 0;
        char hex[65];
        EVP_DigestFinal_ex(s->sha, d, &dl);
        cks_hex_encode(d, 32, hex);
        memcpy(s->sha_hex, hex, sizeof s->sha_hex);
        s->sha_state = strcmp(hex, s->base.sha256_hex) == 0 ? SHA_OK : SHA_BAD;
        /* the windows still queued for the cache: written before the mark that covers
         * them, discarded before the drop */
        if (s->rem->cache && s->key[0])
            writer_settle(s->rem, s->key, s->sha_state == SHA_BAD);
        /* cache hook: remember the check, so a rerun from the cache need not redo it */
        if (s->sha_state == SHA_OK && s->rem->cache && s->key[0])
            (void)cks_cache_mark_verified(s->rem->cache, s->key, s->base.size, NULL);
        /* cache hook: bytes that are not the file must not outlive this run (a rerun, or any
         * command reading single tensors, would take them for the file's): every cached byte
         * of the key goes, whether or not all of it is cached, and so does the listing that
         * named the hash (it may be the listing that is wrong) */
        if (s->sha_state == SHA_BAD && s->rem->cache && s->key[0])
            (void)cks_cache_drop(s->rem->cache, s->key, "they do not hash to the Hub's SHA-256",
                                 NULL);
        if (s->sha_state == SHA_BAD)
            remote_distrust_listing(s->rem);
    }
    if (s->sha_state == SHA_BAD) {
        return cks_fail(diag, CKS_ERR_INTEGRITY,
                        "%s: the bytes read (%s) hash to %s, not to the SHA-256 the Hub publishes "
                        "(%s); %s",
                        s->base.name,
                        s->sha_saw_cache ? "partly from the disk cache" : "all from the network",
                        s->sha_hex, s->base.sha256_hex,
                        s->sha_saw_cache
                            ? "the cached copy was damaged and is dropped: run the command again"
                            : "the file was changed or corrupted in transit (nothing of it was "
                              "kept) — retry, and report it if it persists");
    }
    return CKS_OK;
}

bool cks_remote_source_verified(const cks_source *src, bool *verified)
{
    /* cache hook: a file served whole from the cache was verified when it was marked */
    if (cks_cache_source_is(src)) {
        if (verified)
            *verified = true;
        return true;
    }
    if (!src || src->ops != &rsrc_ops)
        return false;
    struct rsrc *s = (struct rsrc *)src;
    pthread_mutex_lock(&s->rem->mu);
    (void)sha_advance(s, NULL); /* an outcome the hasher still works on */
    if (verified)
        *verified = s->sha_state == SHA_OK;
    pthread_mutex_unlock(&s->rem->mu);
    return true;
}

int cks_remote_source_sha_check(const cks_source *src, char computed[65])
{
    int outcome = 0;
    struct rsrc *s = (struct rsrc *)src;
    if (!src || src->ops != &rsrc_ops)
        goto out;
    pthread_mutex_lock(&s->rem->mu);
    (void)sha_advance(s, NULL); /* an outcome the hasher still works on */
    outcome = s->sha_state == SHA_OK ? 1 : s->sha_state == SHA_BAD ? -1 : 0;
    if (outcome && computed)
        memcpy(computed, s->sha_hex, 65);
    pthread_mutex_unlock(&s->rem->mu);
out:
    return outcome;
}

static void evict(struct rsrc *s, uint64_t cap)
{
    while (s->mem > cap && s->n_ext > 0) {
        size_t oldest = 0;
        for (size_t i = 1; i < s->n_ext; i++)
            if (s->ext[i].stamp < s->ext[oldest].stamp)
                oldest = i;
        s->mem -= s->ext[oldest].len;
        rbuf_put(s->ext[oldest].data);
        s->ext[oldest] = s->ext[--s->n_ext];
    }
}

static cks_err add_extent(struct rsrc *s, uint64_t off, uint64_t len, uint8_t *data, cks_diag *diag)
{
    if (s->n_ext == s->cap_ext) {
        size_t ncap = s->cap_ext ? s->cap_ext * 2 : 8;
        struct extent *ne = realloc(s->ext, ncap * sizeof *ne);
        if (!ne) {
            rbuf_put(data);
            return cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        }
        s->ext = ne;
        s->cap_ext = ncap;
    }
    /* make room first, so the newest bytes are never the ones evicted */
    if (s->mem + len > s->rem->memory_cap)
        evict(s, s->rem->memory_cap > len ? s->rem->memory_cap - len : 0);
    s->ext[s->n_ext].off = off;
    s->ext[s->n_ext].len = len;
    s->ext[s->n_ext].data = data;
    s->ext[s->n_ext].stamp = ++s->rem->stamp;
    s->ext[s->n_ext].from_cache = false;
    s->n_ext++;
    s->mem += len;
    return CKS_OK;
}

/* Copy from memory what covers [off, off+len); return the first byte not covered. */
static uint64_t copy_from_memory(struct rsrc *s, uint64_t off, uint8_t *buf, uint64_t len)
{
    uint64_t pos = off, end = off + len;
    bool moved = true;
    while (pos < end && moved) {
        moved = false;
        for (size_t i = 0; i < s->n_ext; i++) {
            struct extent *e = &s->ext[i];
            if (e->off <= pos && pos < e->off + e->len) {
                uint64_t n = e->off + e->len - pos;
                if (n > end - pos)
                    n = end - pos;
                memcpy(buf + (pos - off), e->data + (pos - e->off), (size_t)n);
                e->stamp = ++s->rem->stamp;
                pos += n;
                moved = true;
                break;
            }
        }
    }
    return pos;
}

/* Remember that [off, off+len) came from the network in this run (r->mu held). A failed
 * allocation only makes check_whole more careful (it then rechecks those bytes too). */
static void note_fetched(struct rsrc *s, uint64_t off, uint64_t len)
{
    (void)cks_rangeset_add(&s->fetched, off, len);
}

/* Bytes just fetched into memory (r->mu held): remembered as this run's, fed to the whole-file
 * hash, kept as an extent (which owns `data` now, or freed it). */
static cks_err keep_fetched(struct rsrc *s, uint64_t off, uint64_t len, uint8_t *data, cks_diag *diag)
{
    note_fetched(s, off, len);
    sha_feed(s, off, data, len);
    return add_extent(s, off, len, data, diag);
}

/* What the cache holds of [off, off+len) must equal the bytes just fetched; when it does not,
 * an earlier transfer stored wrong bytes that no check could catch (the file was read only
 * in part): every cached byte of the file goes (true), and the caller stores the fresh bytes. */
static bool compare_with_cache(struct rsrc *s, uint64_t off, const uint8_t *fresh, uint64_t len)
{
    cks_cache *c = s->rem->cache;
    uint8_t *old = c && s->key[0] ? malloc((size_t)len) : NULL;
    cks_range *gaps = NULL;
    size_t ng = 0;
    bool differs = false;
    if (!old || cks_cache_read_some(c, s->key, off, old, (size_t)len, &gaps, &ng, NULL) != CKS_OK)
        goto out;
    uint64_t pos = off;
    for (size_t g = 0; g <= ng && !differs; g++) {
        uint64_t stop = g < ng ? gaps[g].offset : off + len;
        if (stop > pos)
            differs = memcmp(old + (pos - off), fresh + (pos - off), (size_t)(stop - pos)) != 0;
        if (g < ng)
            pos = gaps[g].offset + gaps[g].length;
    }
    if (differs) {
        writer_settle(s->rem, s->key, true);
        (void)cks_cache_drop(c, s->key, "they differ from what the server sends now", NULL);
        remote_note(s->rem,
                    "%s: the disk cache held bytes of this file that differ from what the server "
                    "sends now (a damaged earlier transfer, never checked because the file was "
                    "read only in part): they were dropped and replaced",
                    s->base.name);
    }
out:
    free(gaps);
    free(old);
    return differs;
}

/* Store fetched bytes in the cache; a cache failure costs a refetch later, never data. */
static void cache_store(struct rsrc *s, uint64_t off, const uint8_t *data, uint64_t len)
{
    if (s->rem->cache && s->key[0] && len)
        (void)cks_cache_write(s->rem->cache, s->key, off, data, (size_t)len, NULL);
}

/* Store fetched pieces in the cache, one batch (one lock of the key) per run of pieces of
 * one source; pieces of streams go to the cache writer when `stream`; pieces `queued` for the
 * writer as they arrived (piece_arrived) are skipped. */
static void cache_store_pieces(cks_remote *r, struct rsrc **srcs, const cks_http_piece *pieces,
                               size_t np, bool stream, const bool *queued)
{
    cks_range *ranges = malloc((np ? np : 1) * sizeof *ranges);
    const void **data = malloc((np ? np : 1) * sizeof *data);
    for (size_t i = 0; i < np;) {
        struct rsrc *s = srcs[i];
        size_t j = i, m = 0;
        for (; j < np && srcs[j] == s; j++) {
            if (queued && queued[j])
                continue;
            if (stream && r->cache && s->key[0] &&
                writer_queue(r, s->key, pieces[j].offset, pieces[j].dst, pieces[j].length, true))
                continue;
            if (!ranges || !data) {
                cache_store(s, pieces[j].offset, pieces[j].dst, pieces[j].length);
                continue;
            }
            ranges[m].offset = pieces[j].offset;
            ranges[m].length = pieces[j].length;
            data[m++] = pieces[j].dst;
        }
        if (m && r->cache && s->key[0])
            (void)cks_cache_write_many(r->cache, s->key, ranges, data, m, NULL);
        i = j;
    }
    free(ranges);
    free(data);
}

/* The calling thread's watch of arriving bytes (cks_remote_watch_arrivals): per thread, so a
 * fetch on another thread (read-ahead, a second model loaded side by side) never shows its
 * pieces to a watch that does not expect them, and setting it needs no lock. */
struct arrival_watch {
    cks_remote_arrival_fn fn;
    void *ctx;
};
static _Thread_local struct arrival_watch thread_watch;

void cks_remote_watch_arrivals(cks_remote_arrival_fn fn, void *ctx)
{
    thread_watch.fn = fn;
    thread_watch.ctx = fn ? ctx : NULL;
}

void cks_remote_bytes_hold(const uint8_t *bytes)
{
    if (bytes)
        (void)rbuf_ref((uint8_t *)bytes);
}

void cks_remote_bytes_release(const uint8_t *bytes)
{
    rbuf_put((uint8_t *)bytes);
}

/*
 * A fetch's pieces go to the cache writer as they arrive, so the cache files are written while
 * the rest is on the network instead of after it (500 scattered tensors: 374 files, 60-100 ms
 * of file creation on this VM, were all after the last byte). A full queue does not stop the
 * transfers: such a piece is stored after the fetch, as before. The same moment shows each
 * piece to the fetching thread's watch, if it set one.
 */
struct arrivals {
    cks_remote *r;
    struct rsrc **srcs;
    const cks_http_piece *pieces;
    bool *queued;              /* NULL: nothing goes early */
    bool *fresh;               /* a refresh: pieces the cache held no byte of (others wait) */
    struct arrival_watch watch; /* fn NULL: nobody watches this fetch */
};

static void piece_arrived(void *ctx, size_t i)
{
    struct arrivals *a = ctx;
    struct rsrc *s = a->srcs[i];
    const cks_http_piece *p = &a->pieces[i];
    if (a->queued && s->key[0] && p->length && (!a->fresh || a->fresh[i]))
        a->queued[i] = writer_queue(a->r, s->key, p->offset, p->dst, p->length, false);
    if (a->watch.fn && p->length)
        a->watch.fn(a->watch.ctx, &s->base, p->offset, p->dst, p->length);
}

/* For a refresh: which pieces the cache holds no byte of (nothing to compare them with, so
 * they may be stored as they arrive; the others are compared first). One question to the
 * cache per source, not per piece: each asks for the key's generation under the cache's
 * lock, a system call that 500 scattered tensors paid 500 times. NULL without memory. */
static bool *absent_from_cache(cks_remote *r, struct rsrc **srcs, const cks_http_piece *pieces, size_t np)
{
    bool *fresh = calloc(np ? np : 1, sizeof *fresh);
    bool *asked = calloc(np ? np : 1, sizeof *asked);
    cks_range *want = malloc((np ? np : 1) * sizeof *want);
    size_t *which = malloc((np ? np : 1) * sizeof *which);
    if (!fresh || !asked || !want || !which) {
        free(fresh);
        fresh = NULL;
        goto out;
    }
    for (size_t i = 0; i < np; i++) {
        struct rsrc *s = srcs[i];
        size_t m = 0, n_miss = 0, g = 0;
        cks_range *miss = NULL;
        if (asked[i] || !s->key[0])
            continue;
        for (size_t j = i; j < np; j++)
            if (srcs[j] == s && !asked[j]) {
                asked[j] = true;
                if (pieces[j].length) {
                    want[m] = (cks_range){pieces[j].offset, pieces[j].length};
                    which[m++] = j;
                }
            }
        if (m == 0 || cks_cache_missing(r->cache, s->key, want, m, &miss, &n_miss, NULL) != CKS_OK)
            continue; /* fresh stays false: compared first, as any piece the cache may hold */
        /* the answer is sorted and merged: a piece is absent when one missing range holds it;
         * the pieces of a fetch are in file order, so the walk over the answer goes forward */
        for (size_t k = 0; k < m; k++) {
            uint64_t a = want[k].offset, b = a + want[k].length;
            if (k > 0 && a < want[k - 1].offset)
                g = 0;
            while (g < n_miss && miss[g].offset + miss[g].length <= a)
                g++;
            fresh[which[k]] = g < n_miss && miss[g].offset <= a && b <= miss[g].offset + miss[g].length;
        }
        free(miss);
    }
out:
    free(asked);
    free(want);
    free(which);
    return fresh;
}

static cks_err refresh_target(void *ctx, cks_http_target *t, long hint, cks_diag *diag)
{
    struct rsrc *s = ctx;
    cks_remote *r = s->rem;
    cks_err err = CKS_OK;
    cks_hub_resolved res;
    memset(&res, 0, sizeof res);
    if (r->repo) {
        const char *p = s->path;
        err = cks_hub_resolve_many(r->hub, r->repo, &p, 1, &res, diag);
    } else {
        err = cks_hub_resolve_url(r->hub, r->url, &res, diag);
    }
    if (err)
        goto out;
    if (res.size_known && res.size != s->base.size) {
        err = cks_fail(diag, CKS_ERR_INTEGRITY,
                       "%s: the server now reports %" PRIu64 " bytes, the listing said %" PRIu64,
                       s->base.name, res.size, s->base.size);
        goto out;
    }
    if (s->base.sha256_hex[0] && res.sha256[0] && strcmp(res.sha256, s->base.sha256_hex) != 0) {
        err = cks_fail(diag, CKS_ERR_INTEGRITY, "%s: the Hub now names content %s, not %s",
                       s->base.name, res.sha256, s->base.sha256_hex);
        goto out;
    }
    free(t->url);
    t->url = res.url;
    res.url = NULL;
    t->expires_at = res.expires_at;
out:
    cks_hub_resolved_release(&res);
    return err;
}

static void rsrc_destroy(cks_source *src)
{
    struct rsrc *s = (struct rsrc *)src;
    cks_remote *rr = s->rem;
    if (rr) {
        /* the worker must neither start nor be in the middle of a fetch for this source */
        pthread_mutex_lock(&rr->mu);
        s->ahead = 0;
        if (rr->bg_src == s)
            rr->bg_src = NULL;
        while (rr->bg_busy == s)
            pthread_cond_wait(&rr->bg_cv, &rr->mu);
        sha_drain(s); /* the hasher holds no job of a source that is gone */
        pthread_mutex_unlock(&rr->mu);
        writer_stop(rr);
    }
    for (size_t i = 0; i < s->n_ext; i++)
        rbuf_put(s->ext[i].data);
    free(s->ext);
    cks_rangeset_free(&s->fetched);
    free(s->target.url);
    free(s->path);
    free(s->base.name);
    EVP_MD_CTX_free(s->sha);
    cks_remote *r = s->rem;
    free(s);
    remote_unref(r);
}

/* A batch of (source, range) to bring into memory; the caller holds the session lock. */
struct want {
    struct rsrc *src;
    uint64_t off, len;
};

static cks_err resolve_pending(cks_remote *r, struct rsrc **srcs, size_t n, cks_diag *diag)
{
    cks_err err = CKS_OK;
    const char **paths = calloc(n ? n : 1, sizeof *paths);
    struct rsrc **todo = calloc(n ? n : 1, sizeof *todo);
    cks_hub_resolved *res = NULL;
    size_t m = 0;
    if (!paths || !todo) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        bool dup = false;
        if (srcs[i]->target.url || !r->repo)
            continue;
        for (size_t k = 0; k < m && !dup; k++)
            dup = todo[k] == srcs[i];
        if (dup)
            continue;
        todo[m] = srcs[i];
        paths[m++] = srcs[i]->path;
    }
    if (m == 0)
        goto out;
    res = calloc(m, sizeof *res);
    if (!res) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        goto out;
    }
    err = cks_hub_resolve_many(r->hub, r->repo, paths, m, res, diag);
    if (err)
        goto out;
    for (size_t k = 0; k < m; k++) {
        struct rsrc *s = todo[k];
        if (res[k].size_known && res[k].size != s->base.size) {
            err = cks_fail(diag, CKS_ERR_INTEGRITY,
                           "%s: the resolve reports %" PRIu64 " bytes, the listing %" PRIu64,
                           s->base.name, res[k].size, s->base.size);
            goto out;
        }
        s->target.url = res[k].url;
        s->target.expires_at = res[k].expires_at;
        res[k].url = NULL;
    }
out:
    if (res)
        for (size_t k = 0; k < m; k++)
            cks_hub_resolved_release(&res[k]);
    free(res);
    free(paths);
    free(todo);
    return err;
}

/* End of the bytes in memory that continue without a hole from `pos` (pos itself if none). */
static uint64_t memory_frontier(struct rsrc *s, uint64_t pos)
{
    bool moved = true;
    while (moved) {
        moved = false;
        for (size_t i = 0; i < s->n_ext; i++)
            if (s->ext[i].off <= pos && pos < s->ext[i].off + s->ext[i].len) {
                pos = s->ext[i].off + s->ext[i].len;
                moved = true;
            }
    }
    return pos;
}

/*
 * Whether a stream's hole [off, off+len) is known to be absent from the disk cache, so that
 * asking the cache for it can be skipped (r->mu held; the caller is about to fetch the hole,
 * which then leaves the known-cold stretch). A stream asked the cache once per window, and
 * the cache answers under its own lock, which the writer thread holds while it stores the
 * window before: the fetch of the next window waited for that write (remote `hash` of a 2 GiB
 * file: 0.966x the wall without the asking, farm-bench). The first window of a stream asks
 * once how far from there the cache holds nothing; later windows inside that stretch do not
 * ask. The stretch only ever lets a hole be fetched from the network instead of read from
 * the cache: were it stale (another process stored those bytes meanwhile), the cost is bytes
 * fetched again, never wrong bytes.
 */
static bool stream_knows_cold(cks_remote *r, struct rsrc *s, uint64_t off, uint64_t len, bool stream)
{
    bool cold = false;
    if (!stream || len == 0)
        goto out;
    if (!(off >= s->cold_from && off + len <= s->cold_to)) {
        cks_range rest = {off, s->base.size - off}, *miss = NULL;
        size_t n_miss = 0;
        s->cold_from = s->cold_to = 0;
        if (off < s->base.size &&
            cks_cache_missing(r->cache, s->key, &rest, 1, &miss, &n_miss, NULL) == CKS_OK &&
            n_miss > 0 && miss[0].offset == off) {
            s->cold_from = off;
            s->cold_to = off + miss[0].length;
        }
        free(miss);
    }
    cold = off >= s->cold_from && off + len <= s->cold_to;
    if (cold)
        s->cold_from = off + len; /* fetched now: a later read of it may find it in the cache */
out:
    return cold;
}

/*
 * Bring every wanted range into memory (and the cache): skip what memory already holds,
 * read what the cache holds, fetch the rest in one engine call. Called and returns with
 * r->mu held, but drops it while on the network. With `try_net`, gives up silently (CKS_OK)
 * when another thread is using the network: used for early read-ahead, which is optional.
 * With `refresh`, the cache is not read: everything comes from the network, and what the
 * cache held of it is compared with the fresh bytes (cks_remote_refresh). With `stream` (the
 * windows of a file read front to back), the cache writer stores the bytes, so this thread
 * can go on to the next window.
 */
static cks_err fetch_wants(cks_remote *r, struct want *w, size_t n, bool try_net, bool refresh,
                          bool stream, cks_diag *diag)
{
    cks_err err = CKS_OK;
    cks_http_piece *pieces = NULL;
    struct rsrc **srcs = NULL;
    struct want *holes = NULL;
    size_t np = 0, nh = 0, cap_h = 0, cap_p = 0;
    bool have_net = false;
    struct arrivals arrived = {0};
    struct rbuf_arena arena = {0};
    if (try_net) {
        if (pthread_mutex_trylock(&r->net) != 0)
            goto out;
    } else {
        pthread_mutex_unlock(&r->mu);
        pthread_mutex_lock(&r->net);
        pthread_mutex_lock(&r->mu);
    }
    have_net = true;
    /* What is still missing now that we may go to the network: another thread may have
     * fetched some of it meanwhile, and bytes must never be fetched twice. */
    for (size_t i = 0; i < n; i++) {
        struct rsrc *s = w[i].src;
        uint64_t pos = w[i].off, end = w[i].off + w[i].len;
        while (pos < end) {
            uint64_t f = memory_frontier(s, pos);
            if (f > pos) {
                pos = f;
                continue;
            }
            uint64_t hole_end = end;
            for (size_t k = 0; k < s->n_ext; k++)
                if (s->ext[k].off > pos && s->ext[k].off < hole_end)
                    hole_end = s->ext[k].off;
            if (nh == cap_h) {
                size_t nc = cap_h ? cap_h * 2 : (n ? n : 1);
                struct want *nw = realloc(holes, nc * sizeof *nw);
                if (!nw) {
                    err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
                    goto out;
                }
                holes = nw;
                cap_h = nc;
            }
            holes[nh].src = s;
            holes[nh].off = pos;
            holes[nh].len = hole_end - pos;
            nh++;
            pos = hole_end;
        }
    }
    w = holes;
    n = nh;
    /* the small ranges the cache will be asked for: an arena pays from RBUF_BLOCK_MIN on */
    for (size_t i = 0; i < n && r->cache && !refresh && !stream; i++)
        if (w[i].src->key[0] && rbuf_slot_size(w[i].len))
            arena.left += w[i].len;
    bool use_arena = arena.left >= RBUF_BLOCK_MIN;
    for (size_t i = 0; i < n; i++) {
        struct rsrc *s = w[i].src;
        cks_range whole = {w[i].off, w[i].len}, *gaps = &whole;
        size_t ng = 1;
        cks_range *cached_gaps = NULL;
        /* cache hook (cache/README.md): serve what the cache holds of this hole and fetch
         * only the rest, so a range already partly cached costs only its missing part */
        if (r->cache && s->key[0] && !refresh && !stream_knows_cold(r, s, w[i].off, w[i].len, stream)) {
            uint8_t *buf = use_arena ? rbuf_arena_offer(&arena, w[i].len) : NULL;
            bool in_arena = buf != NULL;
            if (!in_arena)
                buf = rbuf_new(w[i].len);
            if (!buf) {
                err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory for %" PRIu64 " bytes", w[i].len);
                goto out;
            }
            if (cks_cache_read_some(r->cache, s->key, w[i].off, buf, (size_t)w[i].len,
                                    &cached_gaps, &ng, NULL) != CKS_OK) {
                cached_gaps = NULL;
                ng = 1;
            } else if (ng > 0) {
                gaps = cached_gaps;
            }
            if (ng == 0) {
                if (in_arena)
                    rbuf_arena_keep(&arena, w[i].len);
                err = add_extent(s, w[i].off, w[i].len, buf, diag);
                if (err)
                    goto out;
                s->ext[s->n_ext - 1].from_cache = true;
                continue;
            }
            /* keep the cached runs between the gaps */
            uint64_t pos = w[i].off, end = w[i].off + w[i].len;
            for (size_t g = 0; g <= ng && !err; g++) {
                uint64_t stop = g < ng ? gaps[g].offset : end;
                if (stop > pos) {
                    uint8_t *part = rbuf_new(stop - pos);
                    if (!part) {
                        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
                        break;
                    }
                    memcpy(part, buf + (pos - w[i].off), (size_t)(stop - pos));
                    err = add_extent(s, pos, stop - pos, part, diag);
                    if (!err)
                        s->ext[s->n_ext - 1].from_cache = true;
                }
                if (g < ng)
                    pos = gaps[g].offset + gaps[g].length;
            }
            if (!in_arena) /* an offered slot not kept is nobody's: the next range reuses it */
                rbuf_put(buf);
            if (!err && cks_cache_offline(r->cache))
                err = cks_fail(diag, CKS_ERR_OFFLINE_MISS,
                               "%s: bytes %" PRIu64 "-%" PRIu64 " are not in the cache and "
                               "--offline forbids the network",
                               s->base.name, gaps[0].offset, gaps[0].offset + gaps[0].length - 1);
            if (err) {
                free(cached_gaps);
                goto out;
            }
        }
        if (np + ng > cap_p) {
            size_t nc = (np + ng) * 2;
            cks_http_piece *npc = realloc(pieces, nc * sizeof *npc);
            if (npc)
                pieces = npc;
            struct rsrc **nsr = npc ? realloc(srcs, nc * sizeof *nsr) : NULL;
            if (nsr)
                srcs = nsr;
            if (!npc || !nsr) {
                free(cached_gaps);
                err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
                goto out;
            }
            cap_p = nc;
        }
        for (size_t g = 0; g < ng; g++) {
            memset(&pieces[np], 0, sizeof pieces[np]);
            pieces[np].target = &s->target;
            pieces[np].offset = gaps[g].offset;
            pieces[np].length = gaps[g].length;
            srcs[np++] = s;
        }
        free(cached_gaps);
    }
    rbuf_arena_release(&arena);
    if (np == 0)
        goto out;
    if (!rbuf_new_pieces(pieces, np)) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory for the %zu ranges to fetch", np);
        goto out;
    }
    /* a refresh compares what the cache held with the fresh bytes after the fetch: only the
     * pieces it held nothing of go early (reading our own bytes back to compare them cost
     * an open per piece), and a difference drops the key and stores every piece (below) */
    if (r->cache) {
        arrived.fresh = refresh ? absent_from_cache(r, srcs, pieces, np) : NULL;
        if (!refresh || arrived.fresh)
            arrived.queued = calloc(np, sizeof *arrived.queued);
    }
    arrived.r = r;
    arrived.srcs = srcs;
    arrived.pieces = pieces;
    /* read-ahead (try_net) and streamed windows run for a reader, not for whoever watches */
    if (!try_net && !stream)
        arrived.watch = thread_watch;
    pthread_mutex_unlock(&r->mu);
    err = resolve_pending(r, srcs, np, diag);
    if (!err)
        err = cks_http_fetch_notify(r->http, pieces, np, arrived.queued || arrived.watch.fn ? piece_arrived : NULL,
                                    &arrived, diag);
    /* Into the cache (or its writer's queue) before the lock is taken again: a cache write
     * must not stop readers copying what memory holds. Still before the whole-file hash sees
     * these bytes, so a hash that fails drops them from the cache after they were written
     * (sha_advance settles the writer's jobs of the key first; `net`, held here, keeps other
     * fetches out meanwhile). */
    if (!err && !refresh)
        cache_store_pieces(r, srcs, pieces, np, stream, arrived.queued);
    pthread_mutex_lock(&r->mu);
    if (err && cks_err_class_of(err) == CKS_CLASS_FORMAT)
        remote_distrust_listing(r); /* a size or hash the servers contradict */
    if (err)
        goto out;
    bool dropped = false;
    for (size_t i = 0; i < np && refresh; i++)
        if (!(arrived.fresh && arrived.fresh[i]))
            dropped |= compare_with_cache(srcs[i], pieces[i].offset, pieces[i].dst, pieces[i].length);
    /* after every comparison: one that differs drops the key, and must not take the fresh
     * bytes of the other pieces with it (those stored early went with the key) */
    if (refresh)
        cache_store_pieces(r, srcs, pieces, np, false, dropped ? NULL : arrived.queued);
    for (size_t i = 0; i < np; i++) {
        err = keep_fetched(srcs[i], pieces[i].offset, pieces[i].length, pieces[i].dst, diag);
        pieces[i].dst = NULL; /* owned by the extent (or freed by add_extent) now */
        if (err)
            goto out;
    }
    /* a fetch runs at most a window ahead of the hasher: its queue holds the bytes it
     * has not hashed, outside the memory cap */
    while (r->h_queued > HASH_QUEUE_MAX)
        pthread_cond_wait(&r->hcv, &r->mu);
    for (size_t i = 0; i < np; i++) {
        err = sha_advance(srcs[i], diag);
        if (err)
            goto out;
    }
out:
    if (have_net)
        pthread_mutex_unlock(&r->net);
    rbuf_arena_release(&arena);
    if (pieces)
        for (size_t i = 0; i < np; i++)
            rbuf_put(pieces[i].dst);
    free(pieces);
    free(srcs);
    free(holes);
    free(arrived.queued);
    free(arrived.fresh);
    return err;
}

/*
 * Bytes of the file that arrived outside a range fetch (an index's body, asked for in the
 * round trip that resolves its shards): kept exactly as fetched bytes are, in the cache and
 * in memory, and fed to the whole-file hash. Nothing is kept when they do not fit the file.
 */
cks_err remote_adopt(cks_source *src, uint64_t off, const void *bytes, uint64_t len, cks_diag *diag)
{
    cks_err err = CKS_OK;
    struct rsrc *s = (struct rsrc *)src;
    cks_remote *r;
    uint8_t *buf;
    if (!src || src->ops != &rsrc_ops || len == 0)
        return CKS_OK;
    r = s->rem;
    if (off > src->size || len > src->size - off)
        return cks_fail(diag, CKS_ERR_INVALID_ARG, "%s: %" PRIu64 " bytes at %" PRIu64 " are past the end",
                        src->name, len, off);
    buf = rbuf_new(len);
    if (!buf)
        return cks_fail(diag, CKS_ERR_NOMEM, "out of memory for %" PRIu64 " bytes", len);
    memcpy(buf, bytes, (size_t)len);
    /* as fetch_wants orders it: the cache first (holding `net`, so no fetch of the key runs
     * meanwhile), then memory and the hash under r->mu */
    pthread_mutex_lock(&r->net);
    cache_store(s, off, buf, len);
    pthread_mutex_lock(&r->mu);
    err = keep_fetched(s, off, len, buf, diag);
    if (!err)
        err = sha_advance(s, diag);
    pthread_mutex_unlock(&r->mu);
    pthread_mutex_unlock(&r->net);
    return err;
}

static void *bg_main(void *arg)
{
    cks_remote *r = arg;
    pthread_mutex_lock(&r->mu);
    for (;;) {
        while (!r->bg_stop && !r->bg_src)
            pthread_cond_wait(&r->bg_cv, &r->mu);
        if (r->bg_stop)
            break;
        struct want w = {r->bg_src, r->bg_off, r->bg_len};
        struct rsrc *s = r->bg_src;
        cks_diag ignored;
        r->bg_busy = s;
        r->bg_src = NULL;
        for (;;) {
            /* a failure here is not reported: the reader that needs these bytes fetches them
             * itself and meets the error then (an integrity failure is sticky on the source) */
            cks_err err = fetch_wants(r, &w, 1, false, false, true, &ignored);
            pthread_cond_broadcast(&r->bg_cv);
            /* Keep the stream going without waiting for the reader to post the next window,
             * up to STREAM_LEAD bytes past what it has read: when the reader posted each one,
             * a window fetched and hashed here while the reader hashed the previous one
             * often arrived late, and the reader then fetched (and hashed) it itself, one
             * core doing both passes (hash of a remote file: CPU = wall, issue 15). A
             * posted request, a stop, or a reader that stopped streaming (ahead 0: a jump,
             * quiesce, destroy) ends it. */
            uint64_t frontier = memory_frontier(s, s->last_end);
            if (err || r->bg_stop || r->bg_src || s->ahead == 0 || s->sha_state == SHA_BAD ||
                frontier >= s->base.size || frontier - s->last_end >= STREAM_LEAD)
                break;
            w.off = frontier;
            w.len = s->base.size - frontier < s->ahead ? s->base.size - frontier : s->ahead;
        }
        r->bg_busy = NULL;
        pthread_cond_broadcast(&r->bg_cv);
    }
    pthread_mutex_unlock(&r->mu);
    return NULL;
}

/* Ask the worker for a window (r->mu held). False when it cannot take one now. */
static bool post_readahead(cks_remote *r, struct rsrc *s, uint64_t off, uint64_t len)
{
    if (!r->bg_started) {
        if (pthread_create(&r->bg, NULL, bg_main, r) != 0)
            return false;
        r->bg_started = true;
    }
    if (r->bg_src || r->bg_busy)
        return true; /* one window at a time; the next read posts the next one */
    r->bg_src = s;
    r->bg_off = off;
    r->bg_len = len;
    pthread_cond_signal(&r->bg_cv);
    return true;
}

/* A stream read [from, end): extents inside what it has read, which the whole-file hash has
 * passed too, are not needed again by it (the disk cache keeps them; a reader that comes
 * back refetches). Without this a stream held every window up to the memory cap. */
static void drop_consumed(struct rsrc *s, uint64_t from, uint64_t end)
{
    uint64_t hashed = s->sha_state == SHA_RUNNING ? s->sha_next : UINT64_MAX;
    uint64_t since = from > s->ahead ? from - s->ahead : 0; /* a window back: hash lag */
    for (size_t i = 0; i < s->n_ext;) {
        struct extent *e = &s->ext[i];
        uint64_t e_end = e->off + e->len;
        if (e_end > since && e_end <= end && e_end <= hashed) {
            s->mem -= e->len;
            rbuf_put(e->data);
            *e = s->ext[--s->n_ext];
        } else {
            i++;
        }
    }
}

static cks_err rsrc_read_at(cks_source *src, uint64_t offset, void *vbuf, size_t len,
                            cks_diag *diag)
{
    struct rsrc *s = (struct rsrc *)src;
    cks_remote *r = s->rem;
    cks_err err = CKS_OK;
    uint8_t *buf = vbuf;
    if (s->settled) {
        /* the whole file is in the cache and verified: read it straight into the caller's
         * buffer (no read-ahead copies); a chunk that went bad falls back to the path below */
        bool hit = false;
        if (cks_cache_read(r->cache, s->key, offset, buf, len, &hit, NULL) == CKS_OK && hit)
            return CKS_OK;
    }
    pthread_mutex_lock(&r->mu);
    if (offset <= s->head_end && offset + len > s->head_end)
        s->head_end = offset + len;
    if (s->sha_state == SHA_BAD) {
        err = sha_advance(s, diag);
        goto out;
    }
    uint64_t pos = copy_from_memory(s, offset, buf, len);
    uint64_t end = offset + len;
    /* Streaming: this read continues the previous one, or it misses exactly where the bytes
     * already fetched end (several threads taking turns through the file look like that). */
    bool streaming = offset > 0 && offset == s->last_end;
    /* only a read that starts at that edge: one that overlaps fetched bytes and runs past
     * them (a header read again with its full length) is not a stream */
    for (size_t i = 0; i < s->n_ext && !streaming && pos == offset && pos < end; i++)
        streaming = pos > 0 && s->ext[i].off + s->ext[i].len == pos;
    if (!streaming && pos < end) {
        /* a jump elsewhere ends the stream; a miss near the fetched frontier (threads taking
         * turns) does not */
        uint64_t f = memory_frontier(s, s->last_end);
        if (pos + s->ahead < f || pos > f + s->ahead)
            s->ahead = 0;
        else if (s->ahead)
            streaming = true;
    }
    while (pos < end && err == CKS_OK) {
        if (streaming && s->ahead > 0 && r->bg_busy == s) {
            /* the worker is fetching this stream, and goes on to this hole next if it is
             * not fetching it already: wait for it rather than fetch behind it */
            pthread_cond_wait(&r->bg_cv, &r->mu);
            pos = copy_from_memory(s, pos, buf + (pos - offset), end - pos);
            continue;
        }
        /* the hole runs from pos to the next byte memory holds (or the end of the read) */
        uint64_t hole_end = end;
        for (size_t i = 0; i < s->n_ext; i++)
            if (s->ext[i].off > pos && s->ext[i].off < hole_end)
                hole_end = s->ext[i].off;
        uint64_t want = hole_end - pos;
        if (streaming && hole_end == end) {
            /* someone is reading the file front to back: fetch ahead, in parallel parts */
            s->ahead = s->ahead ? s->ahead * 2 : READAHEAD_MIN;
            if (s->ahead > READAHEAD_MAX)
                s->ahead = READAHEAD_MAX;
            uint64_t ahead = s->ahead;
            if (ahead > s->base.size - end)
                ahead = s->base.size - end;
            for (size_t i = 0; i < s->n_ext; i++)
                if (s->ext[i].off >= end && s->ext[i].off - end < ahead)
                    ahead = s->ext[i].off - end; /* stop where fetched bytes resume */
            if (want + ahead <= r->memory_cap / 2)
                want += ahead;
        }
        struct want w = {s, pos, want};
        err = fetch_wants(r, &w, 1, false, false, streaming, diag);
        if (err)
            break;
        pos = copy_from_memory(s, pos, buf + (pos - offset), end - pos);
    }
    s->last_end = end;
    if (streaming)
        drop_consumed(s, offset, end);
    /* The read-ahead worker may have concluded the whole-file hash while this read waited
     * for the network: bytes of a file that failed its check are never handed out. A read
     * that reaches the end of the file waits for the hasher's outcome, so the last bytes
     * never leave before the check of the whole file is known. */
    if (!err && (s->sha_state == SHA_BAD || (s->sha_state == SHA_RUNNING && end == s->base.size)))
        err = sha_advance(s, diag);
    if (!err && s->ahead > 0) {
        /* A stream that has started on its window fetches the next one now, so the link
         * stays busy while this and other threads work on what is in memory. */
        uint64_t frontier = memory_frontier(s, end);
        if (frontier < s->base.size && frontier - end < s->ahead) {
            uint64_t n = s->ahead;
            if (n > s->base.size - frontier)
                n = s->base.size - frontier;
            if (!post_readahead(r, s, frontier, n)) {
                struct want w = {s, frontier, n};
                err = fetch_wants(r, &w, 1, true, false, true, diag);
            }
        }
    }
out:
    pthread_mutex_unlock(&r->mu);
    return err;
}

static cks_err rsrc_prefetch(cks_source *src, const cks_range *ranges, size_t n, cks_diag *diag)
{
    struct rsrc *s = (struct rsrc *)src;
    cks_source **srcs = malloc((n ? n : 1) * sizeof *srcs);
    cks_err err;
    if (!srcs)
        return cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
    for (size_t i = 0; i < n; i++)
        srcs[i] = src;
    err = cks_remote_prefetch(s->rem, srcs, ranges, n, diag);
    free(srcs);
    return err;
}

/* Ranges of many remote files: one parallel batch per session (a session is one repo). */
static cks_err rsrc_prefetch_many(cks_source *const *srcs, const cks_range *ranges, size_t n, cks_diag *diag)
{
    cks_err err = CKS_OK;
    bool *done = calloc(n ? n : 1, sizeof *done);
    cks_source **group = malloc((n ? n : 1) * sizeof *group);
    cks_range *granges = malloc((n ? n : 1) * sizeof *granges);
    if (!done || !group || !granges) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < n && !err; i++) {
        cks_remote *rem = ((struct rsrc *)srcs[i])->rem;
        size_t k = 0;
        if (done[i])
            continue;
        for (size_t j = i; j < n; j++)
            if (!done[j] && ((struct rsrc *)srcs[j])->rem == rem) {
                group[k] = srcs[j];
                granges[k] = ranges[j];
                k++;
                done[j] = true;
            }
        err = cks_remote_prefetch(rem, group, granges, k, diag);
    }
out:
    free(done);
    free(group);
    free(granges);
    return err;
}

/* The caller is done with what it read: free the fetched extents (the disk cache keeps them). */
static void rsrc_trim(cks_source *src)
{
    struct rsrc *s = (struct rsrc *)src;
    pthread_mutex_lock(&s->rem->mu);
    evict(s, 0);
    pthread_mutex_unlock(&s->rem->mu);
}

/* Forget what memory holds and start the whole-file hash again from byte 0 (r->mu held, and
 * the read-ahead worker not busy with this source). */
static void sha_restart(struct rsrc *s)
{
    sha_drain(s);
    evict(s, 0);
    if (s->sha && EVP_DigestInit_ex(s->sha, EVP_sha256(), NULL) == 1)
        s->sha_state = SHA_RUNNING;
    s->sha_next = 0;
    s->sha_saw_cache = false;
    s->settled = false;
    s->sha_hex[0] = '\0';
    s->fetched.n = 0; /* forgotten, the memory kept for the next pass */
    s->cold_from = s->cold_to = 0;
    s->ahead = 0;
    s->last_end = 0;
}

/* r->mu held: keep the read-ahead worker away from s while its state is reset. */
static void quiesce(cks_remote *r, struct rsrc *s)
{
    s->ahead = 0; /* the worker does not go on with this stream */
    if (r->bg_src == s)
        r->bg_src = NULL;
    while (r->bg_busy == s)
        pthread_cond_wait(&r->bg_cv, &r->mu);
}

/* The caller found the bytes it read wrong (a header that does not parse): none of them may
 * stay, in memory or in the cache; the next read fetches them from the server again. */
static bool rsrc_discard(cks_source *src)
{
    struct rsrc *s = (struct rsrc *)src;
    cks_remote *r = s->rem;
    pthread_mutex_lock(&r->mu);
    quiesce(r, s);
    if (r->cache && s->key[0])
        writer_settle(r, s->key, true);
    if (r->cache && s->key[0])
        (void)cks_cache_drop(r->cache, s->key, "they failed a check (a header that does not parse)",
                             NULL);
    sha_restart(s);
    pthread_mutex_unlock(&r->mu);
    return true;
}

/* One pass of check_whole: the file from the hash frontier to its end, a window at a time,
 * through fetch_wants (the cache for what it holds, the network for the rest) and into the
 * hash; memory is freed after each window (the cache keeps the bytes). r->mu held. */
#define SETTLE_WINDOW (16u * 1024u * 1024u)
static cks_err settle_pass(cks_remote *r, struct rsrc *s, cks_diag *diag)
{
    cks_err err = CKS_OK;
    while (!err && s->sha_state == SHA_RUNNING && s->sha_next < s->base.size) {
        uint64_t from = s->sha_next, len = s->base.size - from;
        struct want w = {s, from, len < SETTLE_WINDOW ? len : SETTLE_WINDOW};
        err = fetch_wants(r, &w, 1, false, false, false, diag);
        if (!err)
            err = sha_advance(s, diag);
        if (!err && s->sha_state == SHA_RUNNING && s->sha_next == from)
            err = cks_fail(diag, CKS_ERR_IO, "%s: the whole-file check made no progress at byte %" PRIu64,
                           s->base.name, from);
        evict(s, 0);
    }
    return err;
}

/*
 * The whole file is about to be read. When every byte will come from this run's network
 * reads, the streaming hash checks them as they arrive and nothing is done here. When the
 * disk cache holds bytes of the file from an earlier run (a header read by `ls`, blocks
 * sampled by `verify`, a transfer killed half way), those have never been checked against
 * the Hub's SHA-256: the file is then read through the cache and hashed now, before any byte
 * reaches the caller, and when it does not match, the damaged copy is dropped and the file
 * hashed again from the network alone. So a damaged partial transfer of one run never makes
 * a later whole-file read fail, or succeed with wrong bytes.
 */
static cks_err rsrc_check_whole(cks_source *src, cks_diag *diag)
{
    struct rsrc *s = (struct rsrc *)src;
    cks_remote *r = s->rem;
    cks_err err = CKS_OK;
    cks_range whole = {0, s->base.size}, *miss = NULL;
    size_t n_miss = 0;
    bool mixed = false;
    pthread_mutex_lock(&r->mu);
    if (s->sha_state != SHA_RUNNING || !r->cache || strncmp(s->key, "sha256:", 7) != 0 ||
        s->base.size == 0 || cks_cache_is_verified(r->cache, s->key, s->base.size))
        goto out; /* checked already, nothing to check against, or only this run's bytes */
    if (cks_cache_missing(r->cache, s->key, &whole, 1, &miss, &n_miss, NULL) != CKS_OK)
        goto out;
    /* a cached range this run did not fetch itself is an old, unchecked copy */
    uint64_t pos = 0;
    for (size_t i = 0; i <= n_miss && !mixed; i++) {
        uint64_t stop = i < n_miss ? miss[i].offset : s->base.size;
        mixed = !cks_rangeset_covers(&s->fetched, pos, stop);
        if (i < n_miss)
            pos = miss[i].offset + miss[i].length;
    }
    mixed = mixed || s->sha_saw_cache;
    if (!mixed)
        goto out;
    quiesce(r, s);
    err = settle_pass(r, s, diag);
    if (err == CKS_ERR_INTEGRITY && s->sha_saw_cache) {
        /* the old copy was damaged (sha_advance dropped it): once more, all from the network */
        sha_restart(s);
        err = settle_pass(r, s, diag);
    }
    s->settled = !err && s->sha_state == SHA_OK;
out:
    pthread_mutex_unlock(&r->mu);
    free(miss);
    return err;
}

/* Do these ranges (sorted in place), with [0, head) already read, cover a file of `size`
 * bytes? (A caller that prefetches every tensor of a file is about to read all of it.) */
static bool ranges_cover(cks_range *ranges, size_t n, uint64_t head, uint64_t size)
{
    return n > 0 && cks_ranges_cover(ranges, n, head, size);
}

/* The same for the ranges of `src` in a batch over several sources. */
static bool batch_covers(const void *src, cks_source *const *sources, const cks_range *ranges,
                         size_t n, uint64_t head, uint64_t size)
{
    cks_range *mine = malloc((n ? n : 1) * sizeof *mine);
    size_t m = 0;
    bool covers;
    if (!mine)
        return false;
    for (size_t i = 0; i < n; i++)
        if (sources[i] == src && ranges[i].length)
            mine[m++] = ranges[i];
    covers = ranges_cover(mine, m, head, size);
    free(mine);
    return covers;
}

static const cks_source_ops rsrc_ops = {.read_at = rsrc_read_at,
                                        .prefetch = rsrc_prefetch,
                                        .destroy = rsrc_destroy,
                                        .prefetch_many = rsrc_prefetch_many,
                                        .trim = rsrc_trim,
                                        .check_whole = rsrc_check_whole,
                                        .discard = rsrc_discard};

cks_err cks_remote_prefetch(cks_remote *r, cks_source *const *sources, const cks_range *ranges,
                            size_t n, cks_diag *diag)
{
    cks_err err = CKS_OK;
    struct want *w = calloc(n ? n : 1, sizeof *w);
    size_t m = 0;
    if (!w)
        return cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
    /* a batch that reads the rest of a file whole: check what the cache holds of it first
     * (the distinct sources of a batch are few: the shards of one repository) */
    const cks_source **seen = calloc(n ? n : 1, sizeof *seen);
    size_t n_seen = 0;
    for (size_t i = 0; seen && i < n && !err; i++) {
        bool first = true;
        if (!sources[i] || sources[i]->ops != &rsrc_ops || ((struct rsrc *)sources[i])->rem != r)
            continue;
        for (size_t j = 0; j < n_seen && first; j++)
            first = seen[j] != sources[i];
        if (!first)
            continue;
        seen[n_seen++] = sources[i];
        struct rsrc *s = (struct rsrc *)sources[i];
        if (batch_covers(s, sources, ranges, n, s->head_end, s->base.size))
            err = rsrc_check_whole(&s->base, diag);
    }
    free(seen);
    if (err) {
        free(w);
        return err;
    }
    pthread_mutex_lock(&r->mu);
    for (size_t i = 0; i < n; i++) {
        if (!sources[i] || sources[i]->ops != &rsrc_ops)
            continue;
        struct rsrc *s = (struct rsrc *)sources[i];
        if (s->rem != r || ranges[i].length == 0)
            continue;
        if (ranges[i].offset > s->base.size || ranges[i].length > s->base.size - ranges[i].offset) {
            err = cks_fail(diag, CKS_ERR_TRUNCATED,
                           "%s: prefetch of %" PRIu64 " bytes at %" PRIu64 " is past the end",
                           s->base.name, ranges[i].length, ranges[i].offset);
            goto out;
        }
        w[m].src = s;
        w[m].off = ranges[i].offset;
        w[m].len = ranges[i].length;
        m++;
    }
    err = fetch_wants(r, w, m, false, false, false, diag);
out:
    pthread_mutex_unlock(&r->mu);
    free(w);
    return err;
}

/*
 * A partial read cannot be checked against the Hub's SHA-256 (it covers whole files), so
 * bytes an earlier run cached for one could be a damaged transfer that nothing caught. For
 * the commands whose answer is the bytes themselves (hash or fetch of some tensors), those
 * ranges come from the network again, and a cached copy that differs is replaced. Files
 * verified whole, sources without a disk cache (everything is this run's) and --offline
 * (the cache is the answer asked for) are left alone. Ranges are fetched in batches of
 * REFRESH_BATCH, split into windows of SETTLE_WINDOW, one parallel round per batch.
 */
#define REFRESH_BATCH (64u * 1024u * 1024u)
cks_err cks_remote_refresh(cks_source *const *sources, const cks_range *ranges, size_t n,
                           cks_diag *diag)
{
    cks_err err = CKS_OK;
    struct want *w = NULL;
    size_t cap = 0;
    for (size_t i = 0; i < n && !err; i++) {
        if (!sources[i] || sources[i]->ops != &rsrc_ops)
            continue;
        cks_remote *r = ((struct rsrc *)sources[i])->rem;
        size_t m = 0;
        uint64_t batch = 0;
        bool seen_before = false, verified = false;
        const struct rsrc *verified_src = NULL;
        for (size_t j = 0; j < i && !seen_before; j++)
            seen_before = sources[j] && sources[j]->ops == &rsrc_ops && ((struct rsrc *)sources[j])->rem == r;
        if (seen_before || !r->cache || cks_cache_offline(r->cache))
            continue;
        pthread_mutex_lock(&r->mu);
        for (size_t j = i; j <= n && !err; j++) {
            bool flush = j == n || batch >= REFRESH_BATCH;
            if (flush && m) {
                err = fetch_wants(r, w, m, false, true, false, diag);
                m = 0;
                batch = 0;
                verified_src = NULL; /* a fetch may have dropped a key: ask again */
            }
            if (j == n || err)
                break;
            if (!sources[j] || sources[j]->ops != &rsrc_ops)
                continue;
            struct rsrc *s = (struct rsrc *)sources[j];
            if (s->rem != r || strncmp(s->key, "sha256:", 7) != 0 || s->sha_state == SHA_OK ||
                ranges[j].length == 0 || ranges[j].offset > s->base.size ||
                ranges[j].length > s->base.size - ranges[j].offset)
                continue;
            /* asked once per run of ranges of one source (a batch lists a file's tensors
             * together), not once per range: each question reads the key's generation */
            if (s != verified_src) {
                verified_src = s;
                verified = cks_cache_is_verified(r->cache, s->key, s->base.size);
            }
            if (verified)
                continue;
            quiesce(r, s);
            /* bytes memory holds from the cache are as unchecked as the cache */
            for (size_t k = s->n_ext; k-- > 0;)
                if (s->ext[k].from_cache) {
                    s->mem -= s->ext[k].len;
                    rbuf_put(s->ext[k].data);
                    s->ext[k] = s->ext[--s->n_ext];
                }
            for (uint64_t off = ranges[j].offset, end = off + ranges[j].length; off < end;) {
                uint64_t len = end - off < SETTLE_WINDOW ? end - off : SETTLE_WINDOW;
                if (m == cap) {
                    size_t nc = cap ? 2 * cap : 64;
                    struct want *g = realloc(w, nc * sizeof *g);
                    if (!g) {
                        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
                        break;
                    }
                    w = g;
                    cap = nc;
                }
                w[m].src = s;
                w[m].off = off;
                w[m].len = len;
                m++;
                batch += len;
                off += len;
            }
        }
        pthread_mutex_unlock(&r->mu);
    }
    free(w);
    return err;
}

cks_err remote_new_source(cks_remote *r, const char *path, uint64_t size, const char *sha256,
                          const char *url, struct rsrc **out, cks_diag *diag)
{
    cks_err err = CKS_OK;
    struct rsrc *s = calloc(1, sizeof *s);
    *out = NULL;
    if (!s) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        goto out;
    }
    s->base.ops = &rsrc_ops;
    s->base.size = size;
    s->base.thread_safe = true;
    s->base.sequential = true;
    s->path = strdup(path);
    if (r->repo) {
        if (asprintf(&s->base.name, "%s@%.12s/%s", r->repo->repo_id, r->repo->commit, path) < 0)
            s->base.name = NULL;
    } else {
        s->base.name = strdup(r->url_shown);
    }
    if (!s->path || !s->base.name) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        goto out;
    }
    if (sha256 && strlen(sha256) == 64) {
        memcpy(s->base.sha256_hex, sha256, 65);
        snprintf(s->key, sizeof s->key, "sha256:%s", sha256);
        s->sha = EVP_MD_CTX_new();
        if (!s->sha || EVP_DigestInit_ex(s->sha, EVP_sha256(), NULL) != 1) {
            err = cks_fail(diag, CKS_ERR_NOMEM, "cannot set up SHA-256");
            goto out;
        }
        s->sha_state = SHA_RUNNING;
    } else if (r->repo && strlen(path) + 50 < sizeof s->key) {
        snprintf(s->key, sizeof s->key, "git:%s:%s", r->repo->commit, path);
    }
    if (s->key[0] && r->cache && !cks_cache_key_valid(s->key))
        s->key[0] = '\0';
    if (url) {
        s->target.url = strdup(url);
        if (!s->target.url) {
            err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
            goto out;
        }
    } else {
        pthread_mutex_lock(&r->mu);
        for (size_t i = 0; i < r->n_pre; i++)
            if (r->pre[i].path && strcmp(r->pre[i].path, path) == 0) {
                s->target.url = r->pre[i].url;
                s->target.expires_at = r->pre[i].expires_at;
                r->pre[i].url = NULL;
                free(r->pre[i].path);
                r->pre[i].path = NULL;
                break;
            }
        pthread_mutex_unlock(&r->mu);
    }
    s->target.size = size;
    s->target.name = s->base.name;
    s->target.refresh = refresh_target;
    s->target.refresh_ctx = s;
    pthread_mutex_lock(&r->mu);
    r->refs++;
    pthread_mutex_unlock(&r->mu);
    s->rem = r;
out:
    if (err && s) {
        EVP_MD_CTX_free(s->sha);
        free(s->path);
        free(s->base.name);
        free(s->target.url);
        free(s);
        s = NULL;
    }
    *out = s;
    return err;
}

/* ---------------------------------------------------------------- HF_HOME copies ---- */

/*
 * A file found in the Hugging Face cache is another program's copy on a disk anyone may
 * have written to: it is checked against the Hub's identity of the file (the LFS SHA-256,
 * or the git blob id of a regular file) before a whole-file read uses it, read from the
 * network instead when it does not match, and said to be unverified while it is read only
 * in part (hashing a 5 GB shard to read one tensor would cost more than the network read).
 */
enum hf_state { HF_UNCHECKED, HF_VERIFIED, HF_FALLBACK };

struct hfsrc {
    cks_source base;
    cks_remote *rem;           /* a reference */
    cks_source *local;         /* the copy in HF_HOME */
    cks_source *net;           /* after a mismatch: the file as the Hub serves it */
    char *path;                /* in the repository */
    bool lfs;
    char want[65];             /* the Hub's SHA-256 (LFS) or git blob id (regular file) */
    enum hf_state state;
    uint64_t head_end;         /* [0, head_end) was read (coverage of prefetches) */
    pthread_mutex_t mu;        /* guards state, net, head_end */
};

static const cks_source_ops hfsrc_ops;
static cks_err open_file(cks_remote *r, const char *path, bool allow_hf, cks_source **out,
                         cks_diag *diag);

/* The identity of the local copy, in the form the Hub gives it (hex into out). */
static cks_err hf_hash(struct hfsrc *h, char out[65], cks_diag *diag)
{
    cks_err err = CKS_OK;
    const size_t step = 8u * 1024u * 1024u;
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    uint8_t *buf = malloc(step);
    unsigned char d[EVP_MAX_MD_SIZE];
    unsigned dl = 0;
    if (!md || !buf || EVP_DigestInit_ex(md, h->lfs ? EVP_sha256() : EVP_sha1(), NULL) != 1) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        goto out;
    }
    if (!h->lfs) {
        /* a git blob id hashes "blob <size>\0" and then the content */
        char head[32];
        int n = snprintf(head, sizeof head, "blob %" PRIu64, h->base.size);
        EVP_DigestUpdate(md, head, (size_t)n + 1);
    }
    for (uint64_t pos = 0; pos < h->base.size;) {
        size_t n = h->base.size - pos < step ? (size_t)(h->base.size - pos) : step;
        err = cks_source_read_at(h->local, pos, buf, n, diag);
        if (err)
            goto out;
        EVP_DigestUpdate(md, buf, n);
        pos += n;
    }
    EVP_DigestFinal_ex(md, d, &dl);
    if (dl >= 32)
        cks_hex_encode(d, 32, out);
out:
    EVP_MD_CTX_free(md);
    free(buf);
    return err;
}

/* From now on the file comes from the network (h->mu held). */
static cks_err hf_fall_back(struct hfsrc *h, const char *why, cks_diag *diag)
{
    cks_err err = CKS_OK;
    cks_source *net = NULL;
    if (h->state == HF_FALLBACK)
        goto out;
    err = open_file(h->rem, h->path, false, &net, diag);
    if (err)
        goto out;
    h->net = net;
    h->state = HF_FALLBACK;
    pthread_mutex_lock(&h->rem->mu);
    remote_note(h->rem,
                "%s: the copy in the Hugging Face cache (HF_HOME) %s, so it was read from the Hub "
                "instead (that copy is left as it is: delete it, or download the file again)",
                h->base.name, why);
    pthread_mutex_unlock(&h->rem->mu);
out:
    return err;
}

static cks_err hf_check_whole(cks_source *src, cks_diag *diag)
{
    struct hfsrc *h = (struct hfsrc *)src;
    cks_err err = CKS_OK;
    char got[65] = "", why[200];
    pthread_mutex_lock(&h->mu);
    if (h->state == HF_VERIFIED)
        goto out;
    if (h->state == HF_FALLBACK) {
        err = cks_source_check_whole(h->net, diag);
        goto out;
    }
    cks_diag ignored;
    if (hf_hash(h, got, &ignored) == CKS_OK && strcmp(got, h->want) == 0) {
        h->state = HF_VERIFIED;
        goto out;
    }
    snprintf(why, sizeof why, "%s%s, not to the Hub's %s %s", got[0] ? "hashes to " : "cannot be read",
             got, h->lfs ? "SHA-256" : "git blob id", h->want);
    err = hf_fall_back(h, why, diag);
    if (!err)
        err = cks_source_check_whole(h->net, diag);
out:
    pthread_mutex_unlock(&h->mu);
    return err;
}

/* The source to read from now, after noting what is read (coverage of later prefetches). */
static cks_source *hf_current(struct hfsrc *h, uint64_t offset, uint64_t len)
{
    cks_source *cur;
    pthread_mutex_lock(&h->mu);
    if (offset <= h->head_end && offset + len > h->head_end)
        h->head_end = offset + len;
    cur = h->state == HF_FALLBACK ? h->net : h->local;
    pthread_mutex_unlock(&h->mu);
    return cur;
}

static cks_err hf_read_at(cks_source *src, uint64_t offset, void *buf, size_t len, cks_diag *diag)
{
    return cks_source_read_at(hf_current((struct hfsrc *)src, offset, len), offset, buf, len, diag);
}

static cks_err hf_prefetch(cks_source *src, const cks_range *ranges, size_t n, cks_diag *diag)
{
    struct hfsrc *h = (struct hfsrc *)src;
    cks_err err = CKS_OK;
    cks_range *copy = malloc((n ? n : 1) * sizeof *copy);
    cks_source *net;
    if (!copy)
        return cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
    memcpy(copy, ranges, n * sizeof *copy);
    pthread_mutex_lock(&h->mu);
    bool whole = h->state == HF_UNCHECKED && ranges_cover(copy, n, h->head_end, h->base.size);
    pthread_mutex_unlock(&h->mu);
    free(copy);
    if (whole)
        err = hf_check_whole(src, diag);
    pthread_mutex_lock(&h->mu);
    net = h->state == HF_FALLBACK ? h->net : NULL;
    pthread_mutex_unlock(&h->mu);
    if (!err && net)
        err = cks_source_prefetch(net, ranges, n, diag);
    return err;
}

/* The caller could not use what it read (a header that does not parse): the copy is not the
 * file, so the network serves it from now on. */
static bool hf_discard(cks_source *src)
{
    struct hfsrc *h = (struct hfsrc *)src;
    bool ok;
    pthread_mutex_lock(&h->mu);
    if (h->state == HF_FALLBACK)
        ok = cks_source_discard(h->net);
    else
        ok = hf_fall_back(h, "gave bytes that failed a check (a header that does not parse)", NULL) ==
             CKS_OK;
    pthread_mutex_unlock(&h->mu);
    return ok;
}

static bool hf_unverified(const cks_source *src)
{
    struct hfsrc *h = (struct hfsrc *)src;
    bool u;
    pthread_mutex_lock(&h->mu);
    u = h->state == HF_UNCHECKED;
    pthread_mutex_unlock(&h->mu);
    return u;
}

static void hf_trim(cks_source *src)
{
    struct hfsrc *h = (struct hfsrc *)src;
    pthread_mutex_lock(&h->mu);
    cks_source_trim(h->net);
    pthread_mutex_unlock(&h->mu);
}

static void hf_destroy(cks_source *src)
{
    struct hfsrc *h = (struct hfsrc *)src;
    cks_remote *r = h->rem;
    cks_source_free(h->local);
    cks_source_free(h->net);
    pthread_mutex_destroy(&h->mu);
    free(h->path);
    free(h->base.name);
    free(h);
    remote_unref(r);
}

static const cks_source_ops hfsrc_ops = {.read_at = hf_read_at,
                                         .prefetch = hf_prefetch,
                                         .destroy = hf_destroy,
                                         .trim = hf_trim,
                                         .check_whole = hf_check_whole,
                                         .discard = hf_discard,
                                         .unverified = hf_unverified};

/* Wrap the local copy `local` of listed file f; takes ownership of local. */
static cks_err hf_wrap(cks_remote *r, const cks_hub_file *f, cks_source *local, cks_source **out,
                       cks_diag *diag)
{
    cks_err err = CKS_OK;
    struct hfsrc *h = calloc(1, sizeof *h);
    const char *want = f->lfs ? f->sha256 : f->blob_id;
    *out = NULL;
    if (!h || !(h->path = strdup(f->path)) || !(h->base.name = strdup(local->name))) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        goto out;
    }
    h->base.ops = &hfsrc_ops;
    h->base.size = local->size;
    h->base.thread_safe = true;
    memcpy(h->base.sha256_hex, local->sha256_hex, sizeof h->base.sha256_hex);
    h->lfs = f->lfs;
    snprintf(h->want, sizeof h->want, "%s", want);
    h->local = local;
    local = NULL;
    pthread_mutex_init(&h->mu, NULL);
    pthread_mutex_lock(&r->mu);
    r->refs++;
    pthread_mutex_unlock(&r->mu);
    h->rem = r;
    *out = &h->base;
    h = NULL;
out:
    if (h) {
        free(h->path);
        free(h->base.name);
        free(h);
    }
    cks_source_free(local);
    return err;
}

cks_err cks_remote_open_file(cks_remote *r, const char *path, cks_source **out, cks_diag *diag)
{
    return open_file(r, path, true, out, diag);
}

/* A hub file, or a URL session's file: from HF_HOME (allow_hf), the disk cache, or the network. */
static cks_err open_file(cks_remote *r, const char *path, bool allow_hf, cks_source **out,
                         cks_diag *diag)
{
    cks_err err = CKS_OK;
    struct rsrc *s = NULL;
    cks_source *hf = NULL; /* a local copy from the Hugging Face cache (cache hook) */
    cks_source *cached = NULL; /* the file served whole from the disk cache (cache hook) */
    char *url = NULL;
    *out = NULL;
    if (r->repo) {
        const cks_hub_file *f = cks_hub_repo_find(r->repo, path);
        if (!f) {
            err = cks_fail(diag, CKS_ERR_FILE_NOT_FOUND, "%s@%.12s has no file '%s'",
                           r->repo->repo_id, r->repo->commit, path);
            goto out;
        }
        /* cache hook: a complete copy in the standard Hugging Face cache needs no network
         * (checked against the Hub's identity of the file before a whole read) */
        if (allow_hf)
            (void)cks_cache_hf_source(NULL, r->repo, f, &hf, NULL);
        if (hf) {
            cks_source *local = hf;
            /* reports still name the Hub's content identity for it */
            if (f->sha256[0])
                memcpy(local->sha256_hex, f->sha256, sizeof local->sha256_hex);
            hf = NULL;
            err = hf_wrap(r, f, local, &hf, diag);
            goto out;
        }
        if (f->size_known) {
            err = remote_new_source(r, path, f->size, f->sha256, NULL, &s, diag);
        } else {
            /* the listing did not say how big it is: ask now */
            cks_hub_resolved res;
            err = cks_hub_resolve_many(r->hub, r->repo, &path, 1, &res, diag);
            if (err)
                goto out;
            if (!res.size_known) {
                cks_hub_resolved_release(&res);
                err = cks_fail(diag, CKS_ERR_HTTP, "%s: the Hub did not report the size", path);
                goto out;
            }
            err = remote_new_source(r, path, res.size, f->sha256[0] ? f->sha256 : res.sha256, res.url,
                                    &s, diag);
            cks_hub_resolved_release(&res);
        }
        goto out;
    }
    /* URL session: the file itself, or a file next to it (a shard named by an index) */
    const char *base_name = strrchr(r->url_shown, '/') + 1;
    if (strcmp(path, base_name) == 0) {
        err = remote_new_source(r, path, r->url_res.size, r->url_res.sha256, r->url_res.url, &s, diag);
        goto out;
    }
    if (asprintf(&url, "%s%s", r->url_base, path) < 0) {
        url = NULL;
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        goto out;
    }
    cks_hub_resolved res;
    err = cks_hub_resolve_url(r->hub, url, &res, diag);
    if (err)
        goto out;
    err = remote_new_source(r, path, res.size, res.sha256, res.url, &s, diag);
    if (s) {
        /* re-resolves must go to this file, not the session's URL */
        free(s->base.name);
        s->base.name = strdup(url);
        s->target.name = s->base.name;
        if (!s->base.name)
            err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
    }
    cks_hub_resolved_release(&res);
out:
    free(url);
    if (err && s) {
        rsrc_destroy(&s->base);
        s = NULL;
    }
    /* cache hook: a file the cache holds whole and verified is read straight from it
     * (falling back to this source for anything the cache can no longer serve) */
    if (!err && s && r->cache && strncmp(s->key, "sha256:", 7) == 0 &&
        cks_cache_source_wrap(r->cache, s->key, &s->base, &cached, NULL) == CKS_OK && cached)
        s = NULL;
    *out = s ? &s->base : cached ? cached : hf;
    return err;
}

/* ---------------------------------------------------------------- served sizes ---- */

/* Where the bytes of each path come from, resolved now: urls[i] (malloc'd), or out[i].err and
 * out[i].diag say why not. Never the cache: this asks the servers. */
cks_err remote_resolve_now(cks_remote *r, const char *const *paths, size_t n, char **urls,
                           cks_served_size *out, cks_diag *diag)
{
    cks_err err = CKS_OK;
    cks_hub_resolved *res = calloc(n ? n : 1, sizeof *res);
    cks_err *errs = calloc(n ? n : 1, sizeof *errs);
    char *url = NULL;
    if (!res || !errs) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        goto out;
    }
    if (r->repo) {
        pthread_mutex_lock(&r->net);
        err = cks_hub_resolve_some(r->hub, r->repo, paths, n, res, errs, diag);
        pthread_mutex_unlock(&r->net);
        if (err)
            goto out;
        for (size_t i = 0; i < n; i++) {
            if (errs[i]) {
                out[i].err = cks_fail(&out[i].diag, errs[i], "%s/%s: the Hub did not resolve it (%s)",
                                      r->repo->repo_id, paths[i], cks_strerror(errs[i]));
                continue;
            }
            urls[i] = res[i].url;
            res[i].url = NULL;
        }
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        const char *base_name = strrchr(r->url_shown, '/') + 1;
        cks_hub_resolved one;
        cks_err e;
        free(url);
        url = NULL;
        if (strcmp(paths[i], base_name) != 0 && asprintf(&url, "%s%s", r->url_base, paths[i]) < 0) {
            url = NULL;
            err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
            goto out;
        }
        pthread_mutex_lock(&r->net);
        e = cks_hub_resolve_url(r->hub, url ? url : r->url, &one, &out[i].diag);
        pthread_mutex_unlock(&r->net);
        if (e) {
            out[i].err = e;
            continue;
        }
        urls[i] = one.url;
        one.url = NULL;
        cks_hub_resolved_release(&one);
    }
out:
    if (res)
        for (size_t i = 0; i < n; i++)
            cks_hub_resolved_release(&res[i]);
    free(res);
    free(errs);
    free(url);
    return err;
}

/* What one answer to "Range: bytes=0-0" says the file's size is. */
static void take_total(const cks_http_request *q, const char *path, cks_served_size *o)
{
    uint64_t a, b, t;
    long st = q->resp.status;
    o->err = CKS_OK;
    if ((st == 206 || st == 416) && cks_http_parse_content_range(q->resp.content_range, &a, &b, &t) &&
        t != UINT64_MAX) {
        o->size = t; /* 206 "bytes 0-0/T", or 416 "bytes * /T" for an empty file */
    } else if (st == 200 && q->resp.content_length[0] && isdigit((unsigned char)q->resp.content_length[0])) {
        char *end;
        errno = 0;
        unsigned long long v = strtoull(q->resp.content_length, &end, 10);
        if (*end || errno)
            o->err = cks_fail(&o->diag, CKS_ERR_HTTP, "%s: unreadable Content-Length '%s'", path,
                              q->resp.content_length);
        else
            o->size = v; /* the server ignored Range and announced the whole file */
    } else if (st == 404 || st == 410) {
        o->err = cks_fail(&o->diag, CKS_ERR_FILE_NOT_FOUND, "%s: the data server answers HTTP %ld", path, st);
    } else if (st == 401 || st == 403) {
        o->err = cks_fail(&o->diag, CKS_ERR_DENIED, "%s: the data server refuses access (HTTP %ld); no token is sent to it", path, st);
    } else {
        o->err = cks_fail(&o->diag, CKS_ERR_HTTP,
                          "%s: the data server answered a one-byte range with HTTP %ld and Content-Range '%s'",
                          path, st, q->resp.content_range);
    }
}

/*
 * The size each file's data server (the CDN for an LFS file) reports now: a GET of
 * "bytes=0-0" to a freshly resolved URL, read from the Content-Range TOTAL (the
 * Content-Length of a 200 that ignored the range, whose body is cut off after 64 bytes).
 * With --offline nothing is asked (CKS_ERR_UNSUPPORTED per file).
 */
cks_err remote_served_sizes(cks_remote *r, const char *const *paths, size_t n, cks_served_size *out,
                            cks_diag *diag)
{
    cks_err err = CKS_OK, e;
    char **urls = calloc(n ? n : 1, sizeof *urls);
    cks_http_request *reqs = calloc(n ? n : 1, sizeof *reqs);
    size_t *idx = calloc(n ? n : 1, sizeof *idx);
    size_t m = 0;
    cks_diag d;
    bool any_item_err = false;

    memset(out, 0, n * sizeof *out);
    if (!urls || !reqs || !idx) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        goto out;
    }
    if (cks_cache_offline(r->cache)) {
        for (size_t i = 0; i < n; i++)
            out[i].err = cks_fail(&out[i].diag, CKS_ERR_UNSUPPORTED, "--offline: the data server was not asked");
        goto out;
    }
    err = remote_resolve_now(r, paths, n, urls, out, diag);
    if (err)
        goto out;
    for (size_t i = 0; i < n; i++) {
        if (!urls[i])
            continue;
        reqs[m].method = "GET";
        reqs[m].url = urls[i];
        reqs[m].range = "bytes=0-0";
        reqs[m].max_body = 64;
        idx[m++] = i;
    }
    pthread_mutex_lock(&r->net);
    e = cks_http_request_many(r->http, reqs, m, &d);
    pthread_mutex_unlock(&r->net);
    for (size_t k = 0; k < m; k++)
        any_item_err = any_item_err || reqs[k].err != CKS_OK;
    if (e && !any_item_err) {
        /* the batch itself failed (memory, libcurl): nothing was learnt about any file */
        err = cks_fail(diag, e, "%s", d.text);
        goto out;
    }
    for (size_t k = 0; k < m; k++) {
        cks_served_size *o = &out[idx[k]];
        if (reqs[k].err) {
            o->err = reqs[k].err;
            o->diag = reqs[k].diag;
        } else {
            take_total(&reqs[k], paths[idx[k]], o);
        }
    }
out:
    for (size_t k = 0; reqs && k < m; k++)
        cks_http_response_release(&reqs[k].resp);
    for (size_t i = 0; urls && i < n; i++)
        free(urls[i]);
    free(urls);
    free(reqs);
    free(idx);
    return err;
}
