/*
 * fetch.c — chosen tensors pulled, hashed and optionally written as a new safetensors file
 * (include/ckptscope/fetch.h). Moved out of the CLI's `fetch` command, which keeps its
 * options, printing and exit codes.
 */
#include "ckptscope/fetch.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <inttypes.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "ckptscope/hex.h"
#include "ckptscope/hub.h"

/* Tensors are fetched in batches of about this many bytes: big enough to keep many
 * requests in flight, small enough that memory does not grow with the model. */
#define BATCH_BYTES (64u * 1024u * 1024u)
#define READ_CHUNK (8u * 1024u * 1024u)

/* The safetensors header of the output: same dtypes and shapes, new offsets, padded with
 * spaces to a multiple of 8 so the data section stays aligned. */
static char *output_header(const cks_ckpt_tensor *const *sel, size_t n, const char *source, size_t *len)
{
    cJSON *h = cJSON_CreateObject();
    cJSON *meta = h ? cJSON_AddObjectToObject(h, "__metadata__") : NULL;
    uint64_t off = 0;
    char *text = NULL, *out = NULL;
    if (!meta || !cJSON_AddStringToObject(meta, "ckptscope_source", source ? source : ""))
        goto out;
    for (size_t i = 0; i < n; i++) {
        const cks_tensor_info *t = sel[i]->info;
        cJSON *e = cJSON_AddObjectToObject(h, t->name), *shape, *offs;
        uint64_t sz = t->end - t->begin;
        if (!e || !cJSON_AddStringToObject(e, "dtype", cks_dtype_name(t->dtype)) ||
            !(shape = cJSON_AddArrayToObject(e, "shape")) || !(offs = cJSON_AddArrayToObject(e, "data_offsets")))
            goto out;
        for (uint32_t d = 0; d < t->ndim; d++)
            cJSON_AddItemToArray(shape, cJSON_CreateNumber((double)t->shape[d]));
        cJSON_AddItemToArray(offs, cJSON_CreateNumber((double)off));
        cJSON_AddItemToArray(offs, cJSON_CreateNumber((double)(off + sz)));
        off += sz;
    }
    text = cJSON_PrintUnformatted(h);
    if (!text)
        goto out;
    size_t n0 = strlen(text), padded = (n0 + 7) & ~(size_t)7;
    out = malloc(8 + padded);
    if (out) {
        uint64_t hl = padded;
        for (int b = 0; b < 8; b++)
            out[b] = (char)((hl >> (8 * b)) & 0xff);
        memcpy(out + 8, text, n0);
        memset(out + 8 + n0, ' ', padded - n0);
        *len = 8 + padded;
    }
out:
    free(text);
    cJSON_Delete(h);
    return out;
}

static bool write_all(FILE *f, const void *p, size_t n)
{
    return n == 0 || fwrite(p, 1, n, f) == n;
}

/*
 * The tensors of a prefetched batch are in memory once the prefetch returns; hashing them
 * was the last ~10 % of a 500-tensor fetch, on one core while the other idled. Two threads
 * take them in turn (the copy out of the fetched bytes is serialised by the source, the
 * SHA-256 is not); the caller reports them in order afterwards. Each tensor here is at most
 * READ_CHUNK, so one read covers it and each thread's buffer stays that small.
 */
struct batch_hash {
    const cks_ckpt *ckpt;
    const cks_ckpt_tensor *const *sel; /* the batch */
    const bool *skip;                  /* NULL, or true where hex[k] is already known */
    size_t n;
    uint64_t largest;
    atomic_size_t next;
    char (*hex)[65];
    pthread_mutex_t mu; /* guards the three below */
    size_t first_bad;   /* n while every tensor so far was read */
    cks_err bad_err;
    cks_diag bad_diag;
};

static void hash_batch_failed(struct batch_hash *b, size_t k, cks_err err, const cks_diag *d)
{
    pthread_mutex_lock(&b->mu);
    if (k < b->first_bad) {
        b->first_bad = k;
        b->bad_err = err;
        b->bad_diag = *d;
    }
    pthread_mutex_unlock(&b->mu);
}

static void hash_batch_share(struct batch_hash *b)
{
    uint8_t *buf = malloc(b->largest ? (size_t)b->largest : 1);
    for (size_t k; (k = atomic_fetch_add(&b->next, 1)) < b->n;) {
        if (b->skip && b->skip[k])
            continue;
        const cks_tensor_info *t = b->sel[k]->info;
        size_t sz = (size_t)(t->end - t->begin);
        cks_diag why;
        cks_err err = !buf ? cks_fail(&why, CKS_ERR_NOMEM, "out of memory")
                           : cks_ckpt_read_tensor(b->ckpt, b->sel[k], 0, buf, sz, &why);
        if (err) {
            hash_batch_failed(b, k, err, &why);
            break; /* the tensors after it are not reported */
        }
        cks_sha256_hex(buf, sz, b->hex[k]);
    }
    free(buf);
}

static void *hash_batch_helper(void *arg)
{
    hash_batch_share(arg);
    return NULL;
}

/*
 * Hash sel[0..n), none larger than `largest` (at most READ_CHUNK), on this thread and one
 * more (this one alone when none can start or a source is not thread-safe), except those
 * `skip` marks. *n_ok is how many lead the first that failed (n when none did); that failure
 * is the return value.
 */
static cks_err hash_batch(const cks_ckpt *ckpt, const cks_ckpt_tensor *const *sel, const bool *skip, size_t n,
                          uint64_t largest, char (*hex)[65], size_t *n_ok, cks_diag *diag)
{
    struct batch_hash b = {.ckpt = ckpt, .sel = sel, .skip = skip, .n = n, .largest = largest, .hex = hex,
                           .first_bad = n};
    cks_err err = CKS_OK;
    pthread_t helper;
    bool two;
    atomic_init(&b.next, 0);
    *n_ok = 0;
    if (pthread_mutex_init(&b.mu, NULL) != 0) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "cannot hash a batch of %zu tensors", n);
        goto out;
    }
    /* a source that does not take concurrent reads keeps the batch on this thread, as
     * cks_hash_tensors does (that hasher is not used here: it reads a network source in one
     * ordered stream and re-checks whole files, where this batch is already in memory) */
    bool concurrent = n > 1;
    for (size_t k = 0; k < n && concurrent; k++)
        concurrent = ckpt->files[sel[k]->file].source->thread_safe;
    two = concurrent && pthread_create(&helper, NULL, hash_batch_helper, &b) == 0;
    hash_batch_share(&b);
    if (two)
        pthread_join(helper, NULL);
    pthread_mutex_destroy(&b.mu);
    *n_ok = b.first_bad;
    if (b.first_bad < n) {
        err = b.bad_err;
        if (diag)
            *diag = b.bad_diag;
    }
out:
    return err;
}

/*
 * Hashing as the bytes arrive. A scattered fetch hashed its tensors only once the whole batch
 * was in memory, copying each out of the fetched pieces first: 7-8 ms of a 110 ms fetch of
 * 500 tensors, after the network had gone quiet. Here the fetching thread, as each piece
 * arrives, hands the tensors that piece holds whole to a hasher thread, which hashes them
 * where they lie (a hold keeps the piece's memory until then). A tensor no piece held whole
 * (read from the cache, split by a cached part, or fetched by a read-ahead) is hashed
 * afterwards by hash_batch, as before. It pays where the fetch waits on the network (0.96x
 * the wall over a 40 ms link); on loopback with 2 cores the hasher takes the CPU the
 * receiving thread needs, and the wall stays where it was (1.01x).
 */
struct early_job {
    size_t k;                 /* index into the selection */
    const uint8_t *bytes;     /* the tensor's first byte, inside `piece` */
    uint64_t size;            /* its length */
    const uint8_t *piece;     /* what the hold is on */
};

struct early_slot {
    uintptr_t src;            /* the tensor's source, as a number to sort by */
    uint64_t offset, size;    /* its bytes in the file */
    size_t k;                 /* index into the selection */
};

struct early_hash {
    size_t n;
    struct early_slot *slots; /* the selection sorted by (source, offset) */
    bool *claimed;            /* handed to the hasher (the fetching thread alone touches it) */
    char (*hex)[65];
    bool *hashed;             /* hex[k] is final (under mu until the hasher is joined) */
    pthread_mutex_t mu;       /* guards the queue, `closing` and `hashed` */
    pthread_cond_t cv;        /* work for the hasher */
    pthread_cond_t done_cv;   /* a tensor hashed */
    struct early_job *q;
    size_t q_head, q_len, q_cap;
    bool closing;
    bool running;
    pthread_t thread;
};

static int early_slot_cmp(const void *a, const void *b)
{
    const struct early_slot *x = a, *y = b;
    if (x->src != y->src)
        return x->src < y->src ? -1 : 1;
    if (x->offset != y->offset)
        return x->offset < y->offset ? -1 : 1;
    return x->k < y->k ? -1 : x->k > y->k;
}

static void *early_main(void *arg)
{
    struct early_hash *e = arg;
    pthread_mutex_lock(&e->mu);
    for (;;) {
        while (e->q_len == 0 && !e->closing)
            pthread_cond_wait(&e->cv, &e->mu);
        if (e->q_len == 0)
            break;
        struct early_job j = e->q[e->q_head];
        e->q_head = (e->q_head + 1) % e->q_cap;
        e->q_len--;
        pthread_mutex_unlock(&e->mu);
        cks_sha256_hex(j.bytes, (size_t)j.size, e->hex[j.k]);
        cks_remote_bytes_release(j.piece);
        pthread_mutex_lock(&e->mu);
        e->hashed[j.k] = true;
        pthread_cond_broadcast(&e->done_cv);
    }
    pthread_mutex_unlock(&e->mu);
    return NULL;
}

/* On the fetching thread: the tensors this piece holds whole go to the hasher. */
static void early_arrived(void *ctx, const cks_source *src, uint64_t offset, const uint8_t *bytes, uint64_t len)
{
    struct early_hash *e = ctx;
    uintptr_t from = (uintptr_t)src;
    size_t lo = 0, hi = e->n;
    /* the first selected tensor of `src` at or after `offset` */
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const struct early_slot *t = &e->slots[mid];
        if (t->src < from || (t->src == from && t->offset < offset))
            lo = mid + 1;
        else
            hi = mid;
    }
    pthread_mutex_lock(&e->mu);
    for (size_t m = lo; m < e->n && e->slots[m].src == from; m++) {
        const struct early_slot *t = &e->slots[m];
        uint64_t into = t->offset - offset;
        if (into >= len)
            break; /* sorted by offset: the rest start past the piece */
        if (t->size > len - into || t->size == 0 || e->claimed[t->k] || e->q_len == e->q_cap)
            continue;
        e->claimed[t->k] = true;
        cks_remote_bytes_hold(bytes);
        e->q[(e->q_head + e->q_len) % e->q_cap] = (struct early_job){t->k, bytes + into, t->size, bytes};
        e->q_len++;
    }
    pthread_cond_signal(&e->cv);
    pthread_mutex_unlock(&e->mu);
}

/* Start watching for the tensors of sel[0..n), all small; false (nothing started) when the
 * thread or the memory cannot be had: the batches are then hashed as before. */
static bool early_start(struct early_hash *e, const cks_ckpt *ckpt, const cks_ckpt_tensor *const *sel, size_t n)
{
    memset(e, 0, sizeof *e);
    e->n = n;
    e->q_cap = n ? n : 1; /* each tensor is queued at most once: the queue never fills */
    e->slots = malloc(e->q_cap * sizeof *e->slots);
    e->claimed = calloc(e->q_cap, sizeof *e->claimed);
    e->hex = malloc(e->q_cap * sizeof *e->hex);
    e->hashed = calloc(e->q_cap, sizeof *e->hashed);
    e->q = malloc(e->q_cap * sizeof *e->q);
    bool ok = e->slots && e->claimed && e->hex && e->hashed && e->q;
    if (ok) {
        for (size_t k = 0; k < n; k++) {
            const cks_tensor_info *t = sel[k]->info;
            e->slots[k] = (struct early_slot){(uintptr_t)ckpt->files[sel[k]->file].source, t->file_offset,
                                              t->end - t->begin, k};
        }
        qsort(e->slots, n, sizeof *e->slots, early_slot_cmp);
    }
    if (ok && pthread_mutex_init(&e->mu, NULL) != 0)
        ok = false;
    else if (ok && pthread_cond_init(&e->cv, NULL) != 0) {
        pthread_mutex_destroy(&e->mu);
        ok = false;
    } else if (ok && pthread_cond_init(&e->done_cv, NULL) != 0) {
        pthread_cond_destroy(&e->cv);
        pthread_mutex_destroy(&e->mu);
        ok = false;
    } else if (ok && pthread_create(&e->thread, NULL, early_main, e) != 0) {
        pthread_cond_destroy(&e->done_cv);
        pthread_cond_destroy(&e->cv);
        pthread_mutex_destroy(&e->mu);
        ok = false;
    }
    if (ok) {
        e->running = true;
        cks_remote_watch_arrivals(early_arrived, e);
    }
    return ok;
}

/* Wait until every tensor of sel[i..j) handed to the hasher so far is hashed, then copy into
 * known[0..j-i) which of them the batch need not read. A read while the batch is hashed may
 * hand over more of them: those are hashed twice, never read from a hex half written. */
static void early_settle(struct early_hash *e, size_t i, size_t j, bool *known)
{
    pthread_mutex_lock(&e->mu);
    for (size_t k = i; k < j; k++) {
        while (e->claimed[k] && !e->hashed[k])
            pthread_cond_wait(&e->done_cv, &e->mu);
        known[k - i] = e->hashed[k];
    }
    pthread_mutex_unlock(&e->mu);
}

/* Stop watching, let the hasher finish what it was handed (its holds go with it), free. */
static void early_free(struct early_hash *e)
{
    if (e->running) {
        cks_remote_watch_arrivals(NULL, NULL);
        pthread_mutex_lock(&e->mu);
        e->closing = true;
        pthread_cond_signal(&e->cv);
        pthread_mutex_unlock(&e->mu);
        pthread_join(e->thread, NULL);
        pthread_cond_destroy(&e->done_cv);
        pthread_cond_destroy(&e->cv);
        pthread_mutex_destroy(&e->mu);
        e->running = false;
    }
    free(e->slots);
    free(e->claimed);
    free(e->hex);
    free(e->hashed);
    free(e->q);
}

cks_err cks_refresh_partial(const cks_ckpt *ckpt, const cks_ckpt_tensor *const *sel, size_t n_sel, cks_diag *diag)
{
    cks_err err = CKS_OK;
    size_t *picked = calloc(ckpt->n_files ? ckpt->n_files : 1, sizeof *picked);
    size_t *present = calloc(ckpt->n_files ? ckpt->n_files : 1, sizeof *present);
    cks_source **srcs = calloc(n_sel ? n_sel : 1, sizeof *srcs);
    cks_range *ranges = calloc(n_sel ? n_sel : 1, sizeof *ranges);
    size_t m = 0;
    if (!picked || !present || !srcs || !ranges) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < n_sel; i++)
        picked[sel[i]->file]++;
    for (size_t i = 0; i < ckpt->n_tensors; i++)
        present[ckpt->tensors[i].file]++;
    for (size_t i = 0; i < n_sel; i++) {
        if (picked[sel[i]->file] >= present[sel[i]->file])
            continue; /* read whole: checked against the Hub's SHA-256 instead */
        srcs[m] = ckpt->files[sel[i]->file].source;
        ranges[m].offset = sel[i]->info->file_offset;
        ranges[m].length = sel[i]->info->end - sel[i]->info->begin;
        m++;
    }
    if (m)
        err = cks_remote_refresh(srcs, ranges, m, diag);
out:
    free(picked);
    free(present);
    free(srcs);
    free(ranges);
    return err;
}

/* sel[i], hashed without a read of its own (a batch, or as it arrived): counted and told. */
static void report_hashed(const cks_fetch_opts *o, size_t i, const cks_tensor_info *t, const char hex[65],
                          uint64_t *total, uint64_t all_bytes)
{
    *total += t->end - t->begin;
    if (o->progress)
        o->progress(o->ctx, *total, all_bytes);
    if (o->tensor_done)
        o->tensor_done(o->ctx, i, hex);
}

cks_err cks_fetch(const cks_ckpt *ckpt, const cks_ckpt_tensor *const *sel, size_t n_sel, const cks_fetch_opts *opts,
                  uint64_t *tensor_bytes, cks_diag *diag)
{
    cks_err err = CKS_OK;
    cks_fetch_opts none = {0};
    const cks_fetch_opts *o = opts ? opts : &none;
    cks_range *ranges = calloc(n_sel ? n_sel : 1, sizeof *ranges);
    cks_source **srcs = calloc(n_sel ? n_sel : 1, sizeof *srcs);
    uint8_t *buf = malloc(READ_CHUNK);
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    char *tmp_path = NULL, *hdr = NULL;
    size_t hdr_len = 0, i = 0;
    FILE *out = NULL;
    uint64_t total = 0, all_bytes = 0;
    struct early_hash early = {0};
    bool *known = NULL; /* the batch's tensors hashed as they arrived */
    size_t n_early = 0;

    if (tensor_bytes)
        *tensor_bytes = 0;
    if (!ranges || !srcs || !buf || !md) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        goto out;
    }
    if (o->output) {
        hdr = output_header(sel, n_sel, o->source_name, &hdr_len);
        if (asprintf(&tmp_path, "%s.tmp-%ld", o->output, (long)getpid()) < 0)
            tmp_path = NULL;
        if (!hdr || !tmp_path) {
            err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
            goto out;
        }
        out = fopen(tmp_path, "wb");
        if (!out || !write_all(out, hdr, hdr_len)) {
            err = cks_fail(diag, CKS_ERR_IO, "cannot write '%s': %s", tmp_path, strerror(errno));
            goto out;
        }
    }
    for (size_t k = 0; k < n_sel; k++)
        all_bytes += sel[k]->info->end - sel[k]->info->begin;

    /* a file whose every tensor is fetched is read whole: checked first (cks_hash_tensors
     * does the same), so a damaged copy never gives its hashes as the file's */
    for (size_t f = 0; f < ckpt->n_files && !err; f++) {
        size_t picked = 0, present = 0;
        for (size_t k = 0; k < n_sel; k++)
            picked += sel[k]->file == f;
        for (size_t k = 0; k < ckpt->n_tensors; k++)
            present += ckpt->tensors[k].file == f;
        if (picked && picked == present)
            err = cks_source_check_whole(ckpt->files[f].source, diag);
    }
    /* without an output file the bytes are only hashed: hash them as they arrive */
    if (!err && o->remote && !out && n_sel > 1)
        (void)early_start(&early, ckpt, sel, n_sel);
    if (!err)
        err = cks_refresh_partial(ckpt, sel, n_sel, diag);
    while (!err && i < n_sel) {
        /* one batch: prefetch all its small tensors at once, then read them in order */
        size_t j = i, m = 0;
        uint64_t batch = 0, largest = 0;
        while (j < n_sel) {
            uint64_t sz = sel[j]->info->end - sel[j]->info->begin;
            if (j > i && batch + sz > BATCH_BYTES)
                break;
            batch += sz;
            largest = sz > largest ? sz : largest;
            if (sz <= BATCH_BYTES) {
                /* larger tensors stream through read-ahead instead */
                srcs[m] = ckpt->files[sel[j]->file].source;
                ranges[m].offset = sel[j]->info->file_offset;
                ranges[m].length = sz;
                m++;
            }
            j++;
        }
        if (o->remote)
            err = cks_remote_prefetch(o->remote, srcs, ranges, m, diag);
        free(known);
        known = early.running ? calloc(j - i, sizeof *known) : NULL;
        if (known)
            early_settle(&early, i, j, known);
        size_t batch_first = i;
        if (!err && !out && j - i > 1 && largest <= READ_CHUNK) {
            /* several small tensors, all in memory now and none written out: hash them side by
             * side (larger ones are read in chunks, in order, below) */
            size_t n_ok = 0;
            char (*hex)[65] = malloc((j - i) * sizeof *hex);
            err = hex ? hash_batch(ckpt, sel + i, known, j - i, largest, hex, &n_ok, diag)
                      : cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
            for (size_t k = 0; k < n_ok; k++, i++) {
                n_early += known && known[k];
                report_hashed(o, i, sel[i]->info, known && known[k] ? early.hex[i] : hex[k], &total, all_bytes);
            }
            free(hex);
            continue;
        }
        for (; !err && i < j; i++) {
            const cks_tensor_info *t = sel[i]->info;
            uint64_t sz = t->end - t->begin;
            unsigned char d[EVP_MAX_MD_SIZE];
            unsigned dl = 0;
            char hex[65];
            if (known && known[i - batch_first]) {
                n_early++;
                report_hashed(o, i, t, early.hex[i], &total, all_bytes);
                continue;
            }
            EVP_DigestInit_ex(md, EVP_sha256(), NULL);
            for (uint64_t done = 0; !err && done < sz;) {
                size_t n = sz - done < READ_CHUNK ? (size_t)(sz - done) : READ_CHUNK;
                err = cks_ckpt_read_tensor(ckpt, sel[i], done, buf, n, diag);
                if (err)
                    break;
                EVP_DigestUpdate(md, buf, n);
                if (o->progress)
                    o->progress(o->ctx, total + done + n, all_bytes);
                if (out && !write_all(out, buf, n))
                    err = cks_fail(diag, CKS_ERR_IO, "cannot write '%s': %s", tmp_path, strerror(errno));
                done += n;
            }
            if (err)
                break;
            EVP_DigestFinal_ex(md, d, &dl);
            cks_hex_encode(d, 32, hex);
            total += sz;
            if (o->tensor_done)
                o->tensor_done(o->ctx, i, hex);
        }
    }
    if (!err && out) {
        int failed = fflush(out) != 0 || fsync(fileno(out)) != 0;
        failed |= fclose(out) != 0;
        out = NULL;
        if (failed)
            err = cks_fail(diag, CKS_ERR_IO, "cannot write '%s': %s", tmp_path, strerror(errno));
        else if (rename(tmp_path, o->output) != 0)
            err = cks_fail(diag, CKS_ERR_IO, "cannot rename to '%s': %s", o->output, strerror(errno));
        else {
            free(tmp_path);
            tmp_path = NULL;
        }
    }
    if (!err && tensor_bytes)
        *tensor_bytes = total;
    if (o->hashed_on_arrival)
        *o->hashed_on_arrival = n_early;
out:
    early_free(&early);
    free(known);
    if (out)
        fclose(out);
    if (tmp_path) {
        unlink(tmp_path); /* nothing half-written stays */
        free(tmp_path);
    }
    EVP_MD_CTX_free(md);
    free(hdr);
    free(buf);
    free(ranges);
    free(srcs);
    return err;
}
