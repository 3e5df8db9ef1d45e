/* src/cli/cli_remote.c — opening remote SOURCEs for every command; see cli_remote.h. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "cli_remote.h"
#include "ckptscope/cache.h"
#include "ckptscope/cache_hub.h"
#include "ckptscope/workspace.h"

/* HF_HUB_OFFLINE or --offline: answer from the cache alone. */
bool cli_offline(const cli_opts *opts)
{
    static const char *const truthy[] = {"1", "ON", "YES", "TRUE"};
    const char *env = getenv("HF_HUB_OFFLINE");
    if (opts && opts->offline)
        return true;
    for (size_t i = 0; env && i < sizeof truthy / sizeof truthy[0]; i++)
        if (strcasecmp(env, truthy[i]) == 0)
            return true;
    return false;
}

/*
 * The command's workspace (include/ckptscope/workspace.h): the library owns the sessions, the
 * cache and the counters; the CLI keeps what it says about them. One per run, made at the
 * first remote SOURCE (or cache use) and freed by cli_remote_finish when the command returns.
 */
static struct {
    cks_workspace *ws;
    const cli_opts *opts;   /* the command's options, for the progress line */
    bool progress_on;
    bool verbose;
    bool cache_warned;
} g;

/* The engines' counters, summed over every session by the workspace, feed the progress line. */
static void on_progress(void *ctx, const cks_http_stats *sum)
{
    (void)ctx;
    if (g.progress_on)
        cli_progress_wire(sum->bytes_fetched, sum->bytes_planned, sum->requests, sum->seconds);
}

static void on_stage(void *ctx, const char *stage)
{
    (void)ctx;
    if (g.progress_on && g.opts)
        cli_progress_stage(g.opts, stage, 0);
}

static cks_workspace *workspace(const cli_opts *opts, cks_diag *diag, cks_err *err)
{
    *err = CKS_OK;
    g.opts = opts;
    g.progress_on = !opts->quiet && isatty(STDERR_FILENO);
    g.verbose = g.verbose || opts->verbose;
    if (!g.ws) {
        cks_workspace_opts wo = {0};
        wo.cache_dir = opts->cache_dir;
        wo.cache_max = opts->cache_max;
        wo.offline = cli_offline(opts);
        wo.reads_config = opts->reads_config;
        wo.progress = on_progress;
        wo.stage = on_stage;
        *err = cks_workspace_new(&wo, &g.ws, diag);
    }
    return g.ws;
}

/* The disk cache is an optimisation: when it cannot be opened the run goes on without it. */
static cks_cache *get_cache(const cli_opts *opts)
{
    cks_err err, problem = CKS_OK;
    cks_diag d;
    cks_workspace *w = workspace(opts, &d, &err);
    cks_cache *cache = w ? cks_workspace_cache(w, &problem, &d) : NULL;
    if (problem && !g.cache_warned) {
        /* said once, whatever --quiet: every later run would fetch everything again */
        g.cache_warned = true;
        fprintf(stderr, "ckptscope: warning: cache unavailable, going on without it (%s: %s)\n",
                cks_strerror(problem), cli_esc(d.text));
    }
    return cache;
}

void cli_remote_finish(void)
{
    cks_diag d;
    cks_err werr;
    cks_cache *cache = g.ws ? cks_workspace_cache(g.ws, NULL, NULL) : NULL;
    cli_progress_clear();
    if (!g.ws)
        return;
    if (cache && (werr = cks_cache_write_failure(cache, &d)) != CKS_OK)
        /* once, at the end: the run itself went on without storing */
        fprintf(stderr,
                "ckptscope: warning: the cache in %s stopped keeping what this run fetched, so "
                "the next run fetches it again (%s: %s)\n",
                cli_esc(cks_cache_dir(cache)), cks_strerror(werr), cli_esc(d.text));
    if (cache && g.verbose) {
        /* what the cache did on the way: damaged extents dropped and refetched, evictions */
        char **notes = NULL;
        size_t n = cks_cache_take_notes(cache, &notes);
        for (size_t i = 0; i < n; i++) {
            fprintf(stderr, "ckptscope: %s\n", cli_esc(notes[i]));
            free(notes[i]);
        }
        free(notes);
    }
    for (size_t i = 0; i < cks_workspace_n_sessions(g.ws); i++) {
        /* what a session replaced on its own (a damaged HF_HOME copy read from the Hub) */
        char **notes = NULL;
        size_t n = cks_remote_take_notes(cks_workspace_session_at(g.ws, i), &notes);
        for (size_t k = 0; k < n; k++) {
            fprintf(stderr, "ckptscope: warning: %s\n", cli_esc(notes[k]));
            free(notes[k]);
        }
        free(notes);
    }
    cks_workspace_free(g.ws);
    g.ws = NULL;
}

static void say_session(const cli_opts *opts, cks_remote *r)
{
    if (opts->verbose && r) {
        const char *t = cks_remote_token_origin(r);
        const cks_hub_repo *repo = cks_remote_repo(r);
        fprintf(stderr, "ckptscope: %s, token from %s\n", cli_esc(cks_remote_endpoint(r)),
                t ? t : "nowhere (anonymous)");
        if (repo)
            fprintf(stderr, "ckptscope: %s@%s is commit %s (%zu files)\n", cli_esc(repo->repo_id),
                    cli_esc(repo->revision), repo->commit, repo->n_files);
    }
}

cks_err cli_remote_session(const cks_hub_spec *spec, const cli_opts *opts, cks_remote **out,
                           cks_diag *diag)
{
    cks_err err;
    cks_workspace *w = workspace(opts, diag, &err);
    *out = NULL;
    if (err)
        return err;
    (void)get_cache(opts); /* its warning first, when it cannot be opened */
    err = cks_workspace_session(w, spec, out, diag);
    if (!err)
        say_session(opts, *out);
    return err;
}

cJSON *cli_remote_source_json(cks_remote *r, const cks_ckpt *ckpt)
{
    cJSON *src = cJSON_CreateObject();
    const cks_hub_repo *repo = cks_remote_repo(r);
    if (repo) {
        cJSON_AddStringToObject(src, "kind", "hub");
        cJSON_AddStringToObject(src, "endpoint", cks_remote_endpoint(r));
        cJSON_AddStringToObject(src, "repo_type",
                                repo->type == CKS_REPO_DATASET ? "dataset"
                                : repo->type == CKS_REPO_SPACE ? "space"
                                                               : "model");
        cJSON_AddStringToObject(src, "repo", repo->repo_id);
        cJSON_AddStringToObject(src, "revision", repo->revision);
        cJSON_AddStringToObject(src, "commit", repo->commit);
    } else {
        cJSON_AddStringToObject(src, "kind", "url");
        cJSON_AddStringToObject(src, "url", cks_remote_url(r));
    }
    if (!ckpt)
        return src;
    if (ckpt->index_path)
        cJSON_AddStringToObject(src, "index", ckpt->index_path);
    cJSON *files = cJSON_AddArrayToObject(src, "files");
    for (size_t f = 0; f < ckpt->n_files; f++) {
        cJSON *file = cJSON_CreateObject();
        const cks_source *s = ckpt->files[f].source;
        cJSON_AddStringToObject(file, "path", ckpt->files[f].path);
        cJSON_AddNumberToObject(file, "size", (double)s->size);
        if (s->sha256_hex[0])
            cJSON_AddStringToObject(file, "sha256", s->sha256_hex);
        else
            cJSON_AddNullToObject(file, "sha256");
        cJSON_AddNumberToObject(file, "header_bytes", (double)ckpt->files[f].header->header_len);
        cJSON_AddItemToArray(files, file);
    }
    return src;
}

bool cli_remote_open(const char *text, const cli_opts *opts, cks_ckpt **out, cJSON **report,
                     cks_err *err, cks_diag *diag)
{
    cks_remote *r = NULL;
    bool local = false;
    cks_workspace *w;
    *err = cks_workspace_is_local(text, &local, diag);
    if (*err)
        return true; /* a malformed hf:// or URL: report it rather than treat it as a path */
    if (local)
        return false;
    w = workspace(opts, diag, err);
    if (*err)
        return true;
    (void)get_cache(opts);
    *err = cks_workspace_open(w, text, out, &r, diag);
    say_session(opts, r);
    if (!*err && report)
        *report = cli_remote_source_json(r, *out);
    return true;
}

cks_err cli_remote_open_all(cks_workspace_item *items, size_t n, const cli_opts *opts, cJSON **reports,
                            cks_diag *diag)
{
    cks_err err;
    cks_workspace *w = workspace(opts, diag, &err);
    for (size_t i = 0; i < n; i++)
        reports[i] = NULL;
    if (err)
        return err;
    (void)get_cache(opts);
    err = cks_workspace_open_all(w, items, n, diag);
    for (size_t i = 0; i < n; i++)
        if (!items[i].err && items[i].session) {
            say_session(opts, items[i].session);
            reports[i] = cli_remote_source_json(items[i].session, items[i].ckpt);
        }
    return err;
}

bool cli_remote_check(const char *text, const cli_opts *opts, cks_ckpt_check **out, cJSON **report,
                      cks_err *err, cks_diag *diag)
{
    cks_remote *r = NULL;
    bool local = false;
    cks_workspace *w;
    *out = NULL;
    *err = cks_workspace_is_local(text, &local, diag);
    if (*err)
        return true;
    if (local)
        return false;
    w = workspace(opts, diag, err);
    if (*err)
        return true;
    (void)get_cache(opts);
    *err = cks_workspace_check(w, text, out, &r, diag);
    if (!*err && report)
        *report = cli_remote_source_json(r, NULL);
    return true;
}

void cli_remote_totals(cks_http_stats *out)
{
    memset(out, 0, sizeof *out);
    if (g.ws)
        cks_workspace_totals(g.ws, out);
}

void cli_remote_json_finish(cJSON *root)
{
    cks_http_stats t;
    if (!root || !g.ws || cks_workspace_n_sessions(g.ws) == 0 || cJSON_GetObjectItemCaseSensitive(root, "transfer"))
        return;
    cli_remote_totals(&t);
    cJSON *tr = cJSON_AddObjectToObject(root, "transfer");
    cJSON_AddNumberToObject(tr, "bytes_fetched", (double)t.bytes_fetched);
    cJSON_AddNumberToObject(tr, "requests", (double)t.requests);
    cJSON_AddNumberToObject(tr, "connections", (double)t.connections);
    cJSON_AddNumberToObject(tr, "seconds", t.seconds);
    cJSON_AddNumberToObject(tr, "retries", (double)t.retries);
    cJSON_AddNumberToObject(tr, "ranges_coalesced", (double)t.coalesced);
}

void cli_explain_offline(const cks_ckpt *ckpt, const cks_ckpt_tensor *const *sel, size_t n_sel)
{
    char *message = NULL;
    cks_diag d;
    const cks_ckpt_tensor **all = NULL;
    cks_cache *cache = g.ws ? cks_workspace_cache(g.ws, NULL, NULL) : NULL;
    if (!cache || !ckpt)
        return;
    if (!sel) {
        /* no selection known: say which of all the tensors are missing */
        all = malloc((ckpt->n_tensors ? ckpt->n_tensors : 1) * sizeof *all);
        if (!all)
            return;
        for (size_t i = 0; i < ckpt->n_tensors; i++)
            all[i] = &ckpt->tensors[i];
        sel = all;
        n_sel = ckpt->n_tensors;
    }
    if (cks_cache_describe_ckpt_missing(cache, ckpt, sel, n_sel, &message, &d) == CKS_OK && message) {
        fprintf(stderr, "ckptscope: not in the cache (run once without --offline to fetch them):\n");
        for (char *line = strtok(message, "\n"); line; line = strtok(NULL, "\n"))
            fprintf(stderr, "%s\n", cli_esc(line));
    }
    free(message);
    free((void *)all);
}

struct cks_cache *cli_remote_cache(const cli_opts *opts)
{
    return get_cache(opts);
}
