/*
 * A cache-backed source for files the cache holds whole and verified (contract in
 * include/ckptscope/cache.h). A warm rerun then reads tensors with one pread per chunk
 * straight into the caller's buffer, instead of through the remote source's memory
 * extents and its whole-file SHA-256 pipeline, which were already paid for on the first run.
 */
#include "ckptscope/cache.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

struct cache_source {
    cks_source base;
    cks_cache *cache;
    char key[72];
    cks_source *inner;
    pthread_mutex_t inner_mu;  /* the inner source may not be thread-safe */
};

static cks_err cs_read_at(cks_source *src, uint64_t offset, void *buf, size_t len,
                          cks_diag *diag)
{
    struct cache_source *cs = (struct cache_source *)src;
    bool hit = false;
    cks_err err = cks_cache_read(cs->cache, cs->key, offset, buf, len, &hit, NULL);
    if (err || !hit) { /* damaged and dropped, or removed: the inner source refetches */
        pthread_mutex_lock(&cs->inner_mu);
        err = cks_source_read_at(cs->inner, offset, buf, len, diag);
        pthread_mutex_unlock(&cs->inner_mu);
    }
    return err;
}

static cks_err cs_prefetch(cks_source *src, const cks_range *ranges, size_t n, cks_diag *diag)
{
    struct cache_source *cs = (struct cache_source *)src;
    cks_range *miss = NULL;
    size_t nm = 0;
    cks_err err = cks_cache_missing(cs->cache, cs->key, ranges, n, &miss, &nm, NULL);
    /* only what the cache lost since the file was found whole goes to the inner source */
    pthread_mutex_lock(&cs->inner_mu);
    if (err == CKS_OK && nm > 0)
        err = cks_source_prefetch(cs->inner, miss, nm, diag);
    else if (err)
        err = cks_source_prefetch(cs->inner, ranges, n, diag);
    pthread_mutex_unlock(&cs->inner_mu);
    free(miss);
    return err;
}

static void cs_destroy(cks_source *src)
{
    struct cache_source *cs = (struct cache_source *)src;
    cks_source_free(cs->inner);
    pthread_mutex_destroy(&cs->inner_mu);
    free(cs->base.name);
    free(cs);
}

static void cs_trim(cks_source *src)
{
    struct cache_source *cs = (struct cache_source *)src;
    pthread_mutex_lock(&cs->inner_mu);
    cks_source_trim(cs->inner);
    pthread_mutex_unlock(&cs->inner_mu);
}

/* The caller found bytes it read wrong: they came from this cache (or the inner source),
 * so none of them may stay; later reads go to the inner source, which refetches. */
static bool cs_discard(cks_source *src)
{
    struct cache_source *cs = (struct cache_source *)src;
    (void)cks_cache_drop(cs->cache, cs->key, "the caller found them wrong", NULL);
    pthread_mutex_lock(&cs->inner_mu);
    (void)cks_source_discard(cs->inner);
    pthread_mutex_unlock(&cs->inner_mu);
    return true;
}

static const cks_source_ops cache_source_ops = {.read_at = cs_read_at,
                                                .prefetch = cs_prefetch,
                                                .destroy = cs_destroy,
                                                .trim = cs_trim,
                                                .discard = cs_discard};

bool cks_cache_source_is(const cks_source *src)
{
    return src && src->ops == &cache_source_ops;
}

cks_err cks_cache_source_wrap(cks_cache *c, const char *key, cks_source *inner, cks_source **out,
                              cks_diag *diag)
{
    cks_err err = CKS_OK;
    struct cache_source *cs = NULL;
    bool verified = false;
    if (out)
        *out = NULL;
    if (!c || !inner || !out || !key || strncmp(key, "sha256:", 7) != 0 ||
        !cks_cache_key_valid(key) || inner->size == 0)
        goto out;
    /* only files already checked whole: hashing one here would make `ls` read every byte */
    verified = cks_cache_is_verified(c, key, inner->size);
    if (!verified)
        goto out;
    cs = calloc(1, sizeof *cs);
    if (!cs || !(cs->base.name = strdup(inner->name ? inner->name : key))) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        goto out;
    }
    cs->base.ops = &cache_source_ops;
    cs->base.size = inner->size;
    /* the cache locks itself and inner_mu guards the fallback, so readers may share it
     * (hashing then runs on every core, as it does for a local file) */
    cs->base.thread_safe = true;
    pthread_mutex_init(&cs->inner_mu, NULL);
    memcpy(cs->base.sha256_hex, inner->sha256_hex, sizeof cs->base.sha256_hex);
    memcpy(cs->key, key, strlen(key) + 1);
    cs->cache = c;
    cs->inner = inner;
    cks_cache_pin(c, key);
    *out = &cs->base;
    cs = NULL;
out:
    if (cs) {
        free(cs->base.name);
        free(cs);
    }
    return err;
}
