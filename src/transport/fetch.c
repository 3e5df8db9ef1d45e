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
 * more (this one alone when none can start or a source is not thread-safe). *n_ok is how
 * many lead the first that failed (n when none did); that failure is the return value.
 */
static cks_err hash_batch(const cks_ckpt *ckpt, const cks_ckpt_tensor *const *sel, size_t n, uint64_t largest,
                          char (*hex)[65], size_t *n_ok, cks_diag *diag)
{
    struct batch_hash b = {.ckpt = ckpt, .sel = sel, .n = n, .largest = largest, .hex = hex, .first_bad = n};
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
        if (!err && !out && j - i > 1 && largest <= READ_CHUNK) {
            /* several small tensors, all in memory now and none written out: hash them side by
             * side (larger ones are read in chunks, in order, below) */
            size_t n_ok = 0;
            char (*hex)[65] = malloc((j - i) * sizeof *hex);
            err = hex ? hash_batch(ckpt, sel + i, j - i, largest, hex, &n_ok, diag)
                      : cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
            for (size_t k = 0; k < n_ok; k++, i++) {
                total += sel[i]->info->end - sel[i]->info->begin;
                if (o->progress)
                    o->progress(o->ctx, total, all_bytes);
                if (o->tensor_done)
                    o->tensor_done(o->ctx, i, hex[k]);
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
out:
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
