#include "ckptscope/hash.h"

#include <openssl/evp.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define DEFAULT_CHUNK (4u * 1024u * 1024u)
#define SEQUENTIAL_CHUNK (1u * 1024u * 1024u)
#define MAX_THREADS 8u

struct hash_job {
    const cks_ckpt *ckpt;
    const cks_ckpt_tensor *const *tensors;
    size_t n;
    size_t chunk;
    cks_tensor_hash *out;
    cks_progress_fn progress;
    void *progress_ctx;
    uint64_t total_bytes;

    const size_t *order;    /* the order tensors are taken in (NULL: as given) */

    pthread_mutex_t lock;   /* guards everything below */
    size_t next;
    uint64_t done_bytes;
    cks_err err;
    cks_diag diag;
};

static cks_err hash_one(struct hash_job *job, const cks_ckpt_tensor *t, uint8_t *buf, cks_tensor_hash *res,
                        cks_diag *diag)
{
    cks_err err = CKS_OK;
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    uint64_t size = t->info->end - t->info->begin, at = 0;
    unsigned int dlen = 0;

    if (!md || EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "cannot set up SHA-256");
        goto out;
    }
    while (at < size) {
        size_t len = size - at < job->chunk ? (size_t)(size - at) : job->chunk;
        err = cks_ckpt_read_tensor(job->ckpt, t, at, buf, len, diag);
        if (err)
            goto out;
        EVP_DigestUpdate(md, buf, len);
        at += len;
        if (job->progress) {
            pthread_mutex_lock(&job->lock);
            job->done_bytes += len;
            job->progress(job->progress_ctx, job->done_bytes, job->total_bytes);
            pthread_mutex_unlock(&job->lock);
        }
    }
    EVP_DigestFinal_ex(md, res->sha256, &dlen);
    cks_hex_encode(res->sha256, 32, res->hex);
    res->tensor = t;
out:
    EVP_MD_CTX_free(md);
    return err;
}

static void *hash_worker(void *arg)
{
    struct hash_job *job = arg;
    uint8_t *buf = malloc(job->chunk);
    cks_diag diag;

    for (;;) {
        size_t i;
        cks_err err;
        pthread_mutex_lock(&job->lock);
        if (!buf && !job->err) {
            job->err = cks_fail(&job->diag, CKS_ERR_NOMEM, "out of memory for a hash buffer");
        }
        if (job->err || job->next >= job->n) {
            pthread_mutex_unlock(&job->lock);
            break;
        }
        i = job->order ? job->order[job->next] : job->next;
        job->next++;
        pthread_mutex_unlock(&job->lock);
        err = hash_one(job, job->tensors[i], buf, &job->out[i], &diag);
        if (err) {
            pthread_mutex_lock(&job->lock);
            if (!job->err) {
                job->err = err;
                job->diag = diag;
            }
            pthread_mutex_unlock(&job->lock);
            break;
        }
    }
    free(buf);
    return NULL;
}

struct placed {
    size_t file;
    uint64_t begin;
    size_t index;
};

static int by_place(const void *a, const void *b)
{
    const struct placed *x = a, *y = b;
    if (x->file != y->file)
        return x->file < y->file ? -1 : 1;
    if (x->begin != y->begin)
        return x->begin < y->begin ? -1 : 1;
    return x->index < y->index ? -1 : x->index > y->index;
}

/* The tensors in file order (file, then offset), as indexes into `tensors`; NULL when out of
 * memory (the given order then stands: slower, never wrong). */
static size_t *file_order(const cks_ckpt_tensor *const *tensors, size_t n)
{
    struct placed *p = malloc((n ? n : 1) * sizeof *p);
    size_t *order = malloc((n ? n : 1) * sizeof *order);
    if (!p || !order) {
        free(p);
        free(order);
        return NULL;
    }
    for (size_t i = 0; i < n; i++) {
        p[i].file = tensors[i]->file;
        p[i].begin = tensors[i]->info->begin;
        p[i].index = i;
    }
    qsort(p, n, sizeof *p, by_place);
    for (size_t i = 0; i < n; i++)
        order[i] = p[i].index;
    free(p);
    return order;
}

cks_err cks_hash_tensors(const cks_ckpt *ckpt, const cks_ckpt_tensor *const *tensors, size_t n,
                         const cks_hash_opts *opts, cks_tensor_hash *out, cks_diag *diag)
{
    struct hash_job job;
    pthread_t threads[MAX_THREADS];
    unsigned n_threads = opts && opts->threads ? opts->threads : 0, started = 0;
    bool all_thread_safe = true, any_sequential = false;
    size_t *order = NULL;

    memset(&job, 0, sizeof job);
    job.ckpt = ckpt;
    job.tensors = tensors;
    job.n = n;
    job.out = out;
    job.chunk = opts && opts->chunk_bytes ? opts->chunk_bytes : DEFAULT_CHUNK;
    job.progress = opts ? opts->progress : NULL;
    job.progress_ctx = opts ? opts->progress_ctx : NULL;
    for (size_t i = 0; i < n; i++) {
        job.total_bytes += tensors[i]->info->end - tensors[i]->info->begin;
        if (!ckpt->files[tensors[i]->file].source->thread_safe)
            all_thread_safe = false;
        if (ckpt->files[tensors[i]->file].source->sequential)
            any_sequential = true;
    }
    if (n_threads == 0) {
        long cores = sysconf(_SC_NPROCESSORS_ONLN);
        n_threads = cores > 0 ? (unsigned)cores : 1;
    }
    if (n_threads > MAX_THREADS)
        n_threads = MAX_THREADS;
    if (n_threads > n)
        n_threads = n ? (unsigned)n : 1;
    if (!all_thread_safe)
        n_threads = 1;
    /* A network stream: one reader in file order keeps the source's read-ahead a stream (two
     * threads on tensors 128 MiB apart defeat it: each 4 MiB read then waits for its own
     * request) and its memory to two windows. One core hashes faster than a link delivers,
     * and the source's worker fetches, caches and checks the file on the other. */
    if (any_sequential)
        n_threads = 1;
    /* The stream's memory holds the windows already (remote_impl.h): a smaller buffer here
     * takes 3 MiB off the peak of `hash` of a remote file (51-67 MiB at 2 GiB, goal 64) at
     * no cost, the bytes being copied from memory either way. */
    if (any_sequential && !(opts && opts->chunk_bytes))
        job.chunk = SEQUENTIAL_CHUNK;
    /* whole files are checked before their bytes are used (a copy that fails is replaced by
     * the source: HF_HOME by the network, an old cached copy by a fresh one) */
    {
        size_t *picked = calloc(ckpt->n_files ? ckpt->n_files : 1, sizeof *picked);
        size_t *present = calloc(ckpt->n_files ? ckpt->n_files : 1, sizeof *present);
        if (!picked || !present) {
            free(picked);
            free(present);
            return cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        }
        for (size_t i = 0; i < n; i++)
            picked[tensors[i]->file]++;
        for (size_t i = 0; i < ckpt->n_tensors; i++)
            present[ckpt->tensors[i].file]++;
        for (size_t f = 0; f < ckpt->n_files && !job.err; f++)
            if (picked[f] && picked[f] >= present[f])
                job.err = cks_source_check_whole(ckpt->files[f].source, &job.diag);
        free(picked);
        free(present);
        if (job.err) {
            if (diag)
                *diag = job.diag;
            return job.err;
        }
    }
    if (any_sequential)
        job.order = order = file_order(tensors, n);
    pthread_mutex_init(&job.lock, NULL);
    if (n_threads == 1) {
        hash_worker(&job);
    } else {
        for (; started < n_threads; started++)
            if (pthread_create(&threads[started], NULL, hash_worker, &job) != 0)
                break;
        if (started == 0)
            hash_worker(&job);
        for (unsigned t = 0; t < started; t++)
            pthread_join(threads[t], NULL);
    }
    pthread_mutex_destroy(&job.lock);
    for (size_t i = 0; i < n && !job.err; i++)
        out[i].unverified = cks_source_unverified(ckpt->files[tensors[i]->file].source);
    free(order);
    if (job.err && diag)
        *diag = job.diag;
    return job.err;
}
