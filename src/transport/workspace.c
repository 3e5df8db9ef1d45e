/*
 * workspace.c — SOURCE strings opened into checkpoints, with the sessions, the cache and the
 * counters owned by a caller's object (include/ckptscope/workspace.h). Until session 4 this
 * lived in the CLI, as a static registry of at most 16 sessions freed at exit.
 */
#include "ckptscope/workspace.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* One session and what the workspace remembers of it. Allocated one by one, so the pointer
 * an engine holds as its progress context stays valid while the array grows. */
typedef struct ws_session {
    cks_workspace *w;
    cks_remote *remote;
    char *source;          /* the SOURCE text it was opened for, NULL for a parsed spec */
    cks_http_stats wire;   /* its engine's counters, as last reported */
} ws_session;

struct cks_workspace {
    cks_workspace_opts opts;
    char *cache_dir;
    cks_cache *cache;
    bool cache_tried;
    cks_err cache_err;
    cks_diag cache_why;
    ws_session **s;
    size_t n, cap;
    pthread_mutex_t mu;    /* the session list and counters: engines report from their own
                            * threads, and cks_workspace_open_all opens on several */
    unsigned one_stage;    /* > 0 while open_all speaks for its threads: their own stages are quiet */
    pthread_t http_init;   /* libcurl's set-up, begun at creation while the cache opens */
    bool http_init_running;
};

cks_err cks_workspace_new(const cks_workspace_opts *opts, cks_workspace **out, cks_diag *diag)
{
    cks_err err = CKS_OK;
    cks_workspace *w = calloc(1, sizeof *w);
    *out = NULL;
    if (!w) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        goto out;
    }
    if (opts)
        w->opts = *opts;
    if (opts && opts->cache_dir && !(w->cache_dir = strdup(opts->cache_dir))) {
        free(w);
        w = NULL;
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        goto out;
    }
    w->opts.cache_dir = w->cache_dir;
    pthread_mutex_init(&w->mu, NULL);
    /* a workspace is made to open remote SOURCEs, and its cache opens first: TLS's set-up
     * (~2 ms) runs beside that instead of after it; offline, nothing goes on the network */
    if (!w->opts.offline)
        w->http_init_running = cks_http_init_begin(&w->http_init);
    *out = w;
out:
    return err;
}

void cks_workspace_free(cks_workspace *w)
{
    if (!w)
        return;
    if (w->http_init_running)
        cks_http_init_join(w->http_init);
    for (size_t i = 0; i < w->n; i++) {
        cks_remote_free(w->s[i]->remote);
        free(w->s[i]->source);
        free(w->s[i]);
    }
    free(w->s);
    cks_cache_free(w->cache);
    pthread_mutex_destroy(&w->mu);
    free(w->cache_dir);
    free(w);
}

cks_cache *cks_workspace_cache(cks_workspace *w, cks_err *problem, cks_diag *why)
{
    if (!w->cache_tried) {
        const char *off = getenv("CKPTSCOPE_NO_CACHE");
        w->cache_tried = true;
        /* offline answers come from the cache alone: CKPTSCOPE_NO_CACHE cannot turn it off then */
        if (!w->opts.offline && (w->opts.no_cache || (off && *off && strcmp(off, "0") != 0)))
            goto done;
        cks_cache_opts co = {0};
        co.dir = w->opts.cache_dir;
        co.max_bytes = w->opts.cache_max;
        co.offline = w->opts.offline;
        co.revision_ttl_seconds = -1;
        w->cache_err = cks_cache_open(&co, &w->cache, &w->cache_why);
        if (w->cache_err)
            w->cache = NULL;
    }
done:
    if (problem)
        *problem = w->cache_err;
    if (why && w->cache_err)
        *why = w->cache_why;
    return w->cache;
}

/* The counters of every session, summed, to the caller's progress function. */
static void on_progress(void *ctx, const cks_http_stats *st)
{
    ws_session *me = ctx;
    cks_workspace *w = me->w;
    cks_http_stats sum = {0};
    pthread_mutex_lock(&w->mu);
    me->wire = *st;
    for (size_t i = 0; i < w->n; i++) {
        const cks_http_stats *x = &w->s[i]->wire;
        sum.bytes_fetched += x->bytes_fetched;
        sum.bytes_planned += x->bytes_planned;
        sum.requests += x->requests;
        if (x->seconds > sum.seconds)
            sum.seconds = x->seconds;
    }
    if (w->opts.progress)
        w->opts.progress(w->opts.ctx, &sum);
    pthread_mutex_unlock(&w->mu);
}

static void stage(cks_workspace *w, const char *text)
{
    pthread_mutex_lock(&w->mu);
    if (w->opts.stage && !w->one_stage)
        w->opts.stage(w->opts.ctx, text);
    pthread_mutex_unlock(&w->mu);
}

/* A new session for spec, remembered under `source` (may be NULL). */
static cks_err add_session(cks_workspace *w, const cks_hub_spec *spec, const char *source, cks_remote **out,
                           cks_diag *diag)
{
    cks_err err = CKS_OK;
    cks_remote_opts ro;
    ws_session *s = NULL;
    char what[200];
    *out = NULL;
    s = calloc(1, sizeof *s);
    if (!s || (source && !(s->source = strdup(source)))) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        goto out;
    }
    s->w = w;
    memset(&ro, 0, sizeof ro);
    ro.cache = cks_workspace_cache(w, NULL, NULL);
    ro.reads_config = w->opts.reads_config;
    cks_remote_config_from_env(&ro.http);
    ro.http.progress = on_progress;
    ro.http.progress_ctx = s;
    if (w->opts.offline && !ro.cache) {
        err = cks_fail(diag, CKS_ERR_OFFLINE_MISS,
                       "offline, answers come from the disk cache, which could not be opened (%s)",
                       w->cache_err ? w->cache_why.text : "it is turned off");
        goto out;
    }
    /* the first seconds go to resolving the revision: say so */
    if (spec->kind == CKS_SPEC_HUB)
        snprintf(what, sizeof what, "resolving %.120s%s%.60s", spec->repo_id, spec->revision ? "@" : "",
                 spec->revision ? spec->revision : "");
    else
        snprintf(what, sizeof what, "resolving %.180s", spec->url ? spec->url : "");
    stage(w, what);
    err = cks_remote_open(spec, &ro, &s->remote, diag);
    stage(w, NULL);
    if (err)
        goto out;
    pthread_mutex_lock(&w->mu);
    if (w->n == w->cap) {
        size_t cap = w->cap ? 2 * w->cap : 4;
        ws_session **grown = realloc(w->s, cap * sizeof *grown);
        if (grown) {
            w->s = grown;
            w->cap = cap;
        }
    }
    if (w->n < w->cap)
        w->s[w->n++] = s;
    else
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
    pthread_mutex_unlock(&w->mu);
    if (err)
        goto out;
    *out = s->remote;
    s = NULL;
out:
    if (s) {
        cks_remote_free(s->remote);
        free(s->source);
        free(s);
    }
    return err;
}

cks_err cks_workspace_session(cks_workspace *w, const cks_hub_spec *spec, cks_remote **out, cks_diag *diag)
{
    return add_session(w, spec, NULL, out, diag);
}

cks_err cks_workspace_is_local(const char *source, bool *local, cks_diag *diag)
{
    cks_hub_spec spec;
    cks_err err = cks_hub_parse_spec(source, &spec, diag);
    *local = false;
    if (err)
        return err;
    *local = spec.kind == CKS_SPEC_LOCAL;
    cks_hub_spec_release(&spec);
    return CKS_OK;
}

/* The second phase of opening: the headers (and index) of the checkpoint's files. */
static void headers_stage(cks_workspace *w, const cks_remote *r)
{
    char what[200];
    const cks_hub_repo *repo = cks_remote_repo(r);
    if (repo)
        snprintf(what, sizeof what, "reading the headers of %.120s@%.12s", repo->repo_id, repo->commit);
    else
        snprintf(what, sizeof what, "reading the header of %.160s", cks_remote_url(r));
    stage(w, what);
}

/* The remote session for source: a new one, or (reuse) the one opened for the same text. */
static cks_err remote_for(cks_workspace *w, const char *source, bool reuse, bool *local, cks_remote **r,
                          cks_diag *diag)
{
    cks_hub_spec spec;
    cks_err err = cks_hub_parse_spec(source, &spec, diag);
    *r = NULL;
    *local = false;
    if (err)
        return err; /* a malformed hf:// or URL: said, not taken for a path */
    if (spec.kind == CKS_SPEC_LOCAL) {
        *local = true;
    } else {
        pthread_mutex_lock(&w->mu);
        for (size_t i = 0; reuse && i < w->n && !*r; i++)
            if (w->s[i]->source && strcmp(w->s[i]->source, source) == 0)
                *r = w->s[i]->remote;
        pthread_mutex_unlock(&w->mu);
        if (!*r)
            err = add_session(w, &spec, source, r, diag);
    }
    cks_hub_spec_release(&spec);
    return err;
}

cks_err cks_workspace_open(cks_workspace *w, const char *source, cks_ckpt **out, cks_remote **session,
                           cks_diag *diag)
{
    cks_remote *r = NULL;
    bool local;
    cks_err err = remote_for(w, source, false, &local, &r, diag);
    *out = NULL;
    if (session)
        *session = NULL;
    if (err)
        goto out;
    if (local) {
        err = cks_ckpt_open_local(source, out, diag);
        goto out;
    }
    if (session)
        *session = r;
    headers_stage(w, r);
    err = cks_remote_open_ckpt(r, out, diag);
    stage(w, NULL);
out:
    return err;
}

/* ---- several at once ---- */

struct open_all_job {
    cks_workspace *w;
    cks_workspace_item *items;
    size_t n, next; /* next: the first item no thread has taken (under w->mu) */
};

static void open_item(cks_workspace *w, cks_workspace_item *it)
{
    it->err = cks_workspace_open(w, it->source, &it->ckpt, &it->session, &it->diag);
    for (size_t i = 0; !it->err && i < CKS_WORKSPACE_MAX_AUX && it->aux_names[i]; i++) {
        cks_diag ignored;
        if (cks_ckpt_fetch_aux(it->ckpt, it->aux_names[i], &it->aux[i], &it->aux_len[i], &ignored) != CKS_OK) {
            it->aux[i] = NULL; /* optional: the caller decides what its absence means */
            it->aux_len[i] = 0;
        }
    }
}

static void *open_all_worker(void *arg)
{
    struct open_all_job *job = arg;
    for (;;) {
        size_t k;
        pthread_mutex_lock(&job->w->mu);
        k = job->next < job->n ? job->next++ : job->n;
        pthread_mutex_unlock(&job->w->mu);
        if (k == job->n)
            break;
        open_item(job->w, &job->items[k]);
    }
    return NULL;
}

cks_err cks_workspace_open_all(cks_workspace *w, cks_workspace_item *items, size_t n, cks_diag *diag)
{
    cks_err err = CKS_OK;
    pthread_t threads[CKS_WORKSPACE_PARALLEL];
    size_t started = 0, want = n < CKS_WORKSPACE_PARALLEL ? n : CKS_WORKSPACE_PARALLEL;
    struct open_all_job job = {w, items, n, 0};
    char what[200];
    for (size_t i = 0; i < n; i++) {
        items[i].ckpt = NULL;
        items[i].session = NULL;
        items[i].err = CKS_OK;
        items[i].diag.text[0] = '\0';
        memset(items[i].aux, 0, sizeof items[i].aux);
        memset(items[i].aux_len, 0, sizeof items[i].aux_len);
    }
    (void)cks_workspace_cache(w, NULL, NULL); /* opened once, before any thread wants it */
    if (n > 1) {
        if (n == 2)
            snprintf(what, sizeof what, "resolving %.90s and %.90s", items[0].source, items[1].source);
        else
            snprintf(what, sizeof what, "resolving %.120s and %zu more, side by side", items[0].source, n - 1);
        stage(w, what);
        pthread_mutex_lock(&w->mu);
        w->one_stage++;
        pthread_mutex_unlock(&w->mu);
    }
    /* the calling thread works too; a thread that cannot start leaves its share to the others */
    for (size_t t = 1; t < want; t++)
        if (pthread_create(&threads[started], NULL, open_all_worker, &job) == 0)
            started++;
    open_all_worker(&job);
    for (size_t t = 0; t < started; t++)
        pthread_join(threads[t], NULL);
    if (n > 1) {
        pthread_mutex_lock(&w->mu);
        w->one_stage--;
        pthread_mutex_unlock(&w->mu);
        stage(w, NULL);
    }
    for (size_t i = 0; i < n && !err; i++)
        if (items[i].err) {
            err = items[i].err;
            if (diag)
                *diag = items[i].diag;
        }
    return err;
}

cks_err cks_workspace_check(cks_workspace *w, const char *source, cks_ckpt_check **out, cks_remote **session,
                            cks_diag *diag)
{
    cks_remote *r = NULL;
    bool local;
    cks_err err = remote_for(w, source, true, &local, &r, diag);
    *out = NULL;
    if (session)
        *session = NULL;
    if (err)
        goto out;
    if (local) {
        err = cks_ckpt_check_local(source, out, diag);
        goto out;
    }
    if (session)
        *session = r;
    headers_stage(w, r);
    err = cks_remote_check_ckpt(r, out, diag);
    stage(w, NULL);
out:
    return err;
}

void cks_workspace_totals(const cks_workspace *w, cks_http_stats *out)
{
    memset(out, 0, sizeof *out);
    for (size_t i = 0; i < w->n; i++) {
        cks_http_stats s;
        cks_remote_get_stats(w->s[i]->remote, &s);
        out->bytes_fetched += s.bytes_fetched;
        out->bytes_planned += s.bytes_planned;
        out->requests += s.requests;
        out->retries += s.retries;
        out->coalesced += s.coalesced;
        out->connections += s.connections;
        out->seconds += s.seconds;
    }
}

size_t cks_workspace_n_sessions(const cks_workspace *w)
{
    return w->n;
}

cks_remote *cks_workspace_session_at(const cks_workspace *w, size_t i)
{
    return i < w->n ? w->s[i]->remote : NULL;
}
