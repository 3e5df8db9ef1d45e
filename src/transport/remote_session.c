/*
 * remote_session.c — a remote session: its options from the environment, notes, transfer
 * stats and freeing. The bottom of the remote files (remote_impl.h).
 */
#include "remote_impl.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------- session ---- */

void remote_unref(cks_remote *r)
{
    bool last;
    if (!r)
        return;
    pthread_mutex_lock(&r->mu);
    last = --r->refs == 0;
    pthread_mutex_unlock(&r->mu);
    if (!last)
        return;
    if (r->bg_started) {
        pthread_mutex_lock(&r->mu);
        r->bg_stop = true;
        pthread_cond_broadcast(&r->bg_cv);
        pthread_mutex_unlock(&r->mu);
        pthread_join(r->bg, NULL);
    }
    if (r->h_started) {
        /* every source drained its jobs before it went (rsrc_destroy): the queue is empty */
        pthread_mutex_lock(&r->mu);
        r->h_stop = true;
        pthread_cond_broadcast(&r->hcv);
        pthread_mutex_unlock(&r->mu);
        pthread_join(r->hasher, NULL);
    }
    pthread_cond_destroy(&r->hcv);
    pthread_cond_destroy(&r->bg_cv);
    /* no cache writer runs now: the last source that used it stopped it (rsrc_destroy) */
    pthread_cond_destroy(&r->wcv);
    pthread_mutex_destroy(&r->wmu);
    for (size_t i = 0; i < r->n_pre; i++) {
        free(r->pre[i].path);
        free(r->pre[i].url);
    }
    free(r->pre);
    for (size_t i = 0; i < r->n_notes; i++)
        free(r->notes[i]);
    free(r->notes);
    free(r->endpoint);
    cks_hub_repo_free(r->repo);
    cks_hub_free(r->hub);
    cks_http_free(r->http);
    cks_hub_spec_release(&r->spec);
    cks_hub_resolved_release(&r->url_res);
    free(r->url);
    free(r->url_base);
    free(r->url_shown);
    pthread_mutex_destroy(&r->mu);
    pthread_mutex_destroy(&r->net);
    free(r);
}

void cks_remote_free(cks_remote *r)
{
    remote_unref(r);
}

/* Queue a sentence for the command line (r->mu held or not yet shared). */
void remote_note(cks_remote *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void remote_note(cks_remote *r, const char *fmt, ...)
{
    char *s = NULL, **grown;
    va_list ap;
    if (r->n_notes >= 100)
        return;
    va_start(ap, fmt);
    if (vasprintf(&s, fmt, ap) < 0)
        s = NULL;
    va_end(ap);
    grown = s ? realloc(r->notes, (r->n_notes + 1) * sizeof *grown) : NULL;
    if (!grown) {
        free(s);
        return;
    }
    r->notes = grown;
    r->notes[r->n_notes++] = s;
}

size_t cks_remote_take_notes(cks_remote *r, char ***notes)
{
    size_t n = 0;
    *notes = NULL;
    if (!r)
        return 0;
    pthread_mutex_lock(&r->mu);
    *notes = r->notes;
    n = r->n_notes;
    r->notes = NULL;
    r->n_notes = 0;
    pthread_mutex_unlock(&r->mu);
    return n;
}

/* Something the listing said failed a check (a size or hash the servers contradict): a rerun
 * must ask the Hub again rather than trust the remembered listing, forever under a commit. */
void remote_distrust_listing(cks_remote *r)
{
    if (!r->cache || !r->repo || r->listing_forgotten)
        return;
    r->listing_forgotten = true;
    (void)cks_cache_repo_forget(r->cache, r->endpoint, r->spec.repo_type, r->spec.repo_id,
                                r->spec.revision, r->repo->commit, NULL);
}

static bool env_u64(const char *name, uint64_t *out)
{
    const char *v = getenv(name);
    char *end;
    if (!v || !*v)
        return false;
    unsigned long long x = strtoull(v, &end, 10);
    if (*end)
        return false;
    *out = x;
    return true;
}

static bool env_double(const char *name, double *out)
{
    const char *v = getenv(name);
    char *end;
    if (!v || !*v)
        return false;
    double x = strtod(v, &end);
    if (*end || !(x > 0))
        return false;
    *out = x;
    return true;
}

void cks_remote_config_from_env(cks_http_config *cfg)
{
    uint64_t v;
    double d;
    if (env_u64("CKPTSCOPE_MAX_PARALLEL", &v) && v > 0 && v <= 1024)
        cfg->max_parallel = (unsigned)v;
    if (env_u64("CKPTSCOPE_MAX_HOST_CONNS", &v) && v > 0 && v <= 256)
        cfg->max_host_conns = (unsigned)v;
    if (env_u64("CKPTSCOPE_STALL_TIMEOUT", &v) && v > 0 && v <= 3600)
        cfg->stall_timeout = (long)v;
    if (env_u64("CKPTSCOPE_MIN_RATE", &v) && v > 0 && v <= (1u << 30))
        cfg->min_rate = (long)v;
    if (env_u64("CKPTSCOPE_MAX_ATTEMPTS", &v) && v > 0 && v <= 100)
        cfg->max_attempts = (unsigned)v;
    if (env_u64("CKPTSCOPE_COALESCE_GAP", &v))
        cfg->coalesce_gap = v ? v : 1; /* 0 means "never merge across a gap" */
    if (env_u64("CKPTSCOPE_MAX_REQUEST", &v) && v >= 4096)
        cfg->max_request = v;
    if (env_double("CKPTSCOPE_BACKOFF_BASE", &d))
        cfg->backoff_base = d;
    if (env_double("CKPTSCOPE_MAX_RETRY_WAIT", &d))
        cfg->max_retry_wait = d;
}

bool remote_presolved_add(cks_remote *r, const char *path, char *url, double expires_at)
{
    struct presolved *grown = realloc(r->pre, (r->n_pre + 1) * sizeof *grown);
    char *copy = strdup(path);
    if (!grown || !copy) {
        if (grown)
            r->pre = grown;
        free(copy);
        free(url);
        return false;
    }
    r->pre = grown;
    r->pre[r->n_pre++] = (struct presolved){copy, url, expires_at};
    return true;
}

const char *remote_presolved_url(const cks_remote *r, const char *path)
{
    for (size_t i = 0; i < r->n_pre; i++)
        if (r->pre[i].path && r->pre[i].url && strcmp(r->pre[i].path, path) == 0)
            return r->pre[i].url;
    return NULL;
}

/*
 * The file a session of this spec opens first, when it is known before the listing: the
 * index or weights file the spec names, or a folder's (the root's) model.safetensors.index.json,
 * the name a sharded checkpoint nearly always has. A repo without one pays a parallel 404.
 */
static char *first_file_guess(const cks_hub_spec *spec)
{
    const char *p = spec->path && spec->path[0] ? spec->path : NULL;
    size_t n = p ? strlen(p) : 0;
    char *guess = NULL;
    if (p && ((n > 12 && strcmp(p + n - 12, ".safetensors") == 0) || (n > 5 && strcmp(p + n - 5, ".json") == 0)))
        return strdup(p);
    if (asprintf(&guess, "%s%smodel.safetensors.index.json", p ? p : "", p && p[n - 1] != '/' ? "/" : "") < 0)
        guess = NULL;
    return guess;
}

/* The listing from the Hub, with the file the session opens first resolved in the same round
 * trip (cks_hub_open_repo_ahead): over a 40 ms link a cold open is one round trip shorter. */
static cks_err open_listing(cks_remote *r, const cks_hub_spec *spec, cks_diag *diag)
{
    char *guess = first_file_guess(spec);
    const char *ahead[1] = {guess};
    cks_hub_resolved res;
    cks_err res_err = CKS_ERR_HTTP;
    cks_err err = cks_hub_open_repo_ahead(r->hub, spec->repo_type, spec->repo_id, spec->revision,
                                          ahead, guess ? 1 : 0, &res, &res_err, &r->repo, diag);
    if (!err && guess && res_err == CKS_OK) {
        (void)remote_presolved_add(r, guess, res.url, res.expires_at); /* a hint: may fail */
        res.url = NULL;
    }
    if (guess && res_err == CKS_OK)
        cks_hub_resolved_release(&res);
    free(guess);
    return err;
}

cks_err cks_remote_open(const cks_hub_spec *spec, const cks_remote_opts *opts, cks_remote **out,
                        cks_diag *diag)
{
    cks_err err = CKS_OK;
    static const cks_remote_opts defaults;
    cks_remote *r = NULL;
    char *token = NULL;
    cks_http_config cfg;
    *out = NULL;
    if (!opts)
        opts = &defaults;
    if (spec->kind != CKS_SPEC_HUB && spec->kind != CKS_SPEC_URL) {
        err = cks_fail(diag, CKS_ERR_INVALID_ARG, "not a remote source");
        goto out;
    }
    r = calloc(1, sizeof *r);
    if (!r) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        goto out;
    }
    pthread_mutex_init(&r->mu, NULL);
    pthread_mutex_init(&r->net, NULL);
    pthread_cond_init(&r->bg_cv, NULL);
    pthread_cond_init(&r->hcv, NULL);
    pthread_mutex_init(&r->wmu, NULL);
    pthread_cond_init(&r->wcv, NULL);
    r->refs = 1;
    r->cache = opts->cache;
    r->memory_cap = opts->memory_cap ? opts->memory_cap : DEFAULT_MEMORY_CAP;
    r->reads_config = opts->reads_config;
    r->spec.kind = spec->kind;
    r->spec.repo_type = spec->repo_type;
#define COPY(f)                                                                          \
    if (spec->f && !(r->spec.f = strdup(spec->f))) {                                     \
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");                            \
        goto out;                                                                        \
    }
    COPY(repo_id)
    COPY(revision)
    COPY(path)
    COPY(url)
#undef COPY
    const char *endpoint = opts->endpoint ? opts->endpoint : cks_hub_default_endpoint();
    r->endpoint = strdup(endpoint);
    if (!r->endpoint) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        goto out;
    }
    if (!opts->anonymous) {
        err = cks_hub_find_token(&token, &r->token_origin, diag);
        if (err)
            goto out;
    }
    cfg = opts->http;
    cfg.token = token;
    cfg.auth_origin = endpoint;
    err = cks_http_new(&cfg, &r->http, diag);
    if (err)
        goto out;
    err = cks_hub_new(r->http, endpoint, token != NULL, &r->hub, diag);
    if (err)
        goto out;
    if (spec->kind == CKS_SPEC_HUB) {
        /* cache hook (cache/README.md): a remembered listing answers without the Hub */
        bool listed = false;
        (void)cks_cache_repo_get(r->cache, endpoint, spec->repo_type, spec->repo_id,
                                 spec->revision, &r->repo, &listed, NULL);
        if (!listed && cks_cache_offline(r->cache)) {
            /* offline, the standard Hugging Face cache may hold the snapshot: its refs/ name
             * the commit and snapshots/<commit>/ lists the files, which are then read there */
            err = cks_cache_hf_repo(NULL, spec->repo_type, spec->repo_id, spec->revision, &r->repo, diag);
            if (err)
                goto out;
            listed = r->repo != NULL;
        }
        if (!listed && cks_cache_offline(r->cache)) {
            err = cks_fail(diag, CKS_ERR_OFFLINE_MISS,
                           "%s@%s: offline (--offline or HF_HUB_OFFLINE), and neither ckptscope's cache nor "
                           "the Hugging Face cache holds the repository's listing at that revision", spec->repo_id,
                           spec->revision ? spec->revision : "main");
            goto out;
        }
        if (!listed) {
            err = open_listing(r, spec, diag);
            if (err)
                goto out;
            (void)cks_cache_repo_put(r->cache, endpoint, spec->repo_id, spec->revision, r->repo,
                                     NULL);
        }
    } else {
        const char *slash;
        if (cks_cache_offline(r->cache)) {
            err = cks_fail(diag, CKS_ERR_OFFLINE_MISS,
                           "%s: --offline, and a plain URL has no content identity to find in "
                           "the cache", spec->url);
            goto out;
        }
        r->url = strdup(spec->url);
        r->url_shown = strndup(spec->url, strcspn(spec->url, "?#"));
        if (!r->url || !r->url_shown) {
            err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
            goto out;
        }
        slash = strrchr(r->url_shown, '/');
        r->url_base = strndup(r->url_shown, (size_t)(slash - r->url_shown) + 1);
        if (!r->url_base) {
            err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
            goto out;
        }
        err = cks_hub_resolve_url(r->hub, r->url, &r->url_res, diag);
        if (err)
            goto out;
    }
out:
    if (token) {
        memset(token, 0, strlen(token));
        free(token);
    }
    if (err) {
        cks_remote_free(r);
        r = NULL;
    }
    *out = r;
    return err;
}

const cks_hub_repo *cks_remote_repo(const cks_remote *r)
{
    return r ? r->repo : NULL;
}

const char *cks_remote_endpoint(const cks_remote *r)
{
    return r ? cks_hub_endpoint(r->hub) : NULL;
}

const char *cks_remote_url(const cks_remote *r)
{
    return r ? r->url_shown : NULL;
}

const char *cks_remote_token_origin(const cks_remote *r)
{
    return r ? r->token_origin : NULL;
}

void cks_remote_get_stats(const cks_remote *r, cks_http_stats *out)
{
    memset(out, 0, sizeof *out);
    if (!r)
        return;
    pthread_mutex_lock((pthread_mutex_t *)&r->net);
    cks_http_get_stats(r->http, out);
    pthread_mutex_unlock((pthread_mutex_t *)&r->net);
}
