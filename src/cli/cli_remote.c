/* src/cli/cli_remote.c — opening remote SOURCEs for every command; see cli_remote.h. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli_remote.h"
#include "ckptscope/cache.h"
#include "ckptscope/cache_hub.h"

#define MAX_SESSIONS 16

static struct {
    cks_remote *sessions[MAX_SESSIONS];
    char *spec_text[MAX_SESSIONS]; /* what the user typed, for sessions opened from a SOURCE */
    size_t n;
    cks_http_stats wire[MAX_SESSIONS]; /* each session's counters, as its engine last said */
    cks_cache *cache;
    bool cache_tried;
    bool registered;
    bool progress_on;
    bool verbose;
} g;

static void cleanup(void)
{
    cks_diag d;
    cks_err werr;
    cli_progress_clear();
    if (g.cache && (werr = cks_cache_write_failure(g.cache, &d)) != CKS_OK)
        /* once, at the end: the run itself went on without storing */
        fprintf(stderr,
                "ckptscope: warning: the cache in %s stopped keeping what this run fetched, so "
                "the next run fetches it again (%s: %s)\n",
                cli_esc(cks_cache_dir(g.cache)), cks_strerror(werr), cli_esc(d.text));
    if (g.cache && g.verbose) {
        /* what the cache did on the way: damaged extents dropped and refetched, evictions */
        char **notes = NULL;
        size_t n = cks_cache_take_notes(g.cache, &notes);
        for (size_t i = 0; i < n; i++) {
            fprintf(stderr, "ckptscope: %s\n", cli_esc(notes[i]));
            free(notes[i]);
        }
        free(notes);
    }
    for (size_t i = 0; i < g.n; i++) {
        /* what a session replaced on its own (a damaged HF_HOME copy read from the Hub) */
        char **notes = NULL;
        size_t n = cks_remote_take_notes(g.sessions[i], &notes);
        for (size_t k = 0; k < n; k++) {
            fprintf(stderr, "ckptscope: warning: %s\n", cli_esc(notes[k]));
            free(notes[k]);
        }
        free(notes);
    }
    for (size_t i = 0; i < g.n; i++) {
        cks_remote_free(g.sessions[i]);
        free(g.spec_text[i]);
        g.spec_text[i] = NULL;
    }
    g.n = 0;
    cks_cache_free(g.cache);
    g.cache = NULL;
}

/* The engines' counters, summed over every session, feed the one progress line. Sessions
 * are never removed before exit, so a slot index stays valid; the sum is approximate while
 * two engines report at once, which a progress line can afford. */
static void on_progress(void *ctx, const cks_http_stats *st)
{
    size_t slot = (size_t)(uintptr_t)ctx;
    cks_http_stats sum = {0};
    if (!g.progress_on || slot >= MAX_SESSIONS)
        return;
    g.wire[slot] = *st;
    for (size_t i = 0; i < MAX_SESSIONS; i++) {
        sum.bytes_fetched += g.wire[i].bytes_fetched;
        sum.bytes_planned += g.wire[i].bytes_planned;
        sum.requests += g.wire[i].requests;
        if (g.wire[i].seconds > sum.seconds)
            sum.seconds = g.wire[i].seconds;
    }
    cli_progress_wire(sum.bytes_fetched, sum.bytes_planned, sum.requests, sum.seconds);
}

/* The disk cache is an optimisation: when it cannot be opened the run goes on without it. */
static cks_cache *get_cache(const cli_opts *opts)
{
    const char *off = getenv("CKPTSCOPE_NO_CACHE");
    if (g.cache_tried)
        return g.cache;
    g.cache_tried = true;
    if (off && *off && strcmp(off, "0") != 0 && !cli_offline(opts))
        return NULL;
    cks_cache_opts co = {0};
    cks_diag d;
    co.dir = opts->cache_dir;
    co.max_bytes = opts->cache_max;
    co.offline = cli_offline(opts);
    co.revision_ttl_seconds = -1;
    cks_err err = cks_cache_open(&co, &g.cache, &d);
    if (err) {
        /* said once, whatever --quiet: every later run would fetch everything again */
        fprintf(stderr, "ckptscope: warning: cache unavailable, going on without it (%s: %s)\n",
                cks_strerror(err), cli_esc(d.text));
        g.cache = NULL;
    }
    if (!g.registered) {
        atexit(cleanup);
        g.registered = true;
    }
    return g.cache;
}

cks_err cli_remote_session(const cks_hub_spec *spec, const cli_opts *opts, cks_remote **out,
                           cks_diag *diag)
{
    cks_err err;
    cks_remote_opts ro;
    *out = NULL;
    if (!g.registered) {
        atexit(cleanup);
        g.registered = true;
    }
    if (g.n == MAX_SESSIONS)
        return cks_fail(diag, CKS_ERR_INVALID_ARG, "too many remote sources in one command");
    memset(&ro, 0, sizeof ro);
    ro.cache = get_cache(opts);
    cks_remote_config_from_env(&ro.http);
    g.progress_on = !opts->quiet && isatty(STDERR_FILENO);
    g.verbose = g.verbose || opts->verbose;
    ro.http.progress = on_progress;
    ro.http.progress_ctx = (void *)(uintptr_t)g.n;
    if (cli_offline(opts) && !ro.cache)
        return cks_fail(diag, CKS_ERR_OFFLINE_MISS,
                        "--offline (or HF_HUB_OFFLINE) answers from the cache, which could not be "
                        "opened (see the warning above)");
    if (g.progress_on) {
        /* the first seconds go to resolving the revision and reading headers: say so */
        char stage[160];
        if (spec->kind == CKS_SPEC_HUB)
            snprintf(stage, sizeof stage, "resolving %s%s%s", spec->repo_id, spec->revision ? "@" : "",
                     spec->revision ? spec->revision : "");
        else
            snprintf(stage, sizeof stage, "resolving %.140s", spec->url);
        cli_progress_stage(opts, stage, 0);
    }
    err = cks_remote_open(spec, &ro, out, diag);
    cli_progress_stage(opts, NULL, 0);
    if (err)
        return err;
    g.sessions[g.n++] = *out;
    if (opts->verbose) {
        const char *t = cks_remote_token_origin(*out);
        const cks_hub_repo *repo = cks_remote_repo(*out);
        fprintf(stderr, "ckptscope: %s, token from %s\n", cli_esc(cks_remote_endpoint(*out)),
                t ? t : "nowhere (anonymous)");
        if (repo)
            fprintf(stderr, "ckptscope: %s@%s is commit %s (%zu files)\n", cli_esc(repo->repo_id),
                    cli_esc(repo->revision), repo->commit, repo->n_files);
    }
    return CKS_OK;
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

/* The second phase of opening: the headers (and index) of the checkpoint's files. */
static void headers_stage(const cli_opts *opts, const cks_remote *r)
{
    char stage[200];
    const cks_hub_repo *repo = cks_remote_repo(r);
    if (!g.progress_on)
        return;
    if (repo)
        snprintf(stage, sizeof stage, "reading the headers of %.120s@%.12s", repo->repo_id, repo->commit);
    else
        snprintf(stage, sizeof stage, "reading the header of %.160s", cks_remote_url(r));
    cli_progress_stage(opts, stage, 0);
}

bool cli_remote_open(const char *text, const cli_opts *opts, cks_ckpt **out, cJSON **report,
                     cks_err *err, cks_diag *diag)
{
    cks_hub_spec spec;
    cks_remote *r = NULL;
    *err = cks_hub_parse_spec(text, &spec, diag);
    if (*err)
        return true; /* a malformed hf:// or URL: report it rather than treat it as a path */
    if (spec.kind == CKS_SPEC_LOCAL) {
        cks_hub_spec_release(&spec);
        return false;
    }
    *err = cli_remote_session(&spec, opts, &r, diag);
    if (!*err)
        g.spec_text[g.n - 1] = strdup(text); /* so a check of the same SOURCE reuses it */
    if (!*err) {
        headers_stage(opts, r);
        *err = cks_remote_open_ckpt(r, out, diag);
        cli_progress_stage(opts, NULL, 0);
    }
    if (!*err && report)
        *report = cli_remote_source_json(r, *out);
    cks_hub_spec_release(&spec);
    return true;
}

bool cli_remote_check(const char *text, const cli_opts *opts, cks_ckpt_check **out, cJSON **report,
                      cks_err *err, cks_diag *diag)
{
    cks_hub_spec spec;
    cks_remote *r = NULL;
    *out = NULL;
    *err = cks_hub_parse_spec(text, &spec, diag);
    if (*err)
        return true;
    if (spec.kind == CKS_SPEC_LOCAL) {
        cks_hub_spec_release(&spec);
        return false;
    }
    for (size_t i = 0; i < g.n && !r; i++)
        if (g.spec_text[i] && strcmp(g.spec_text[i], text) == 0)
            r = g.sessions[i];
    if (!r) {
        *err = cli_remote_session(&spec, opts, &r, diag);
        if (!*err)
            g.spec_text[g.n - 1] = strdup(text);
    }
    if (!*err) {
        headers_stage(opts, r);
        *err = cks_remote_check_ckpt(r, out, diag);
        cli_progress_stage(opts, NULL, 0);
    }
    if (!*err && report)
        *report = cli_remote_source_json(r, NULL);
    cks_hub_spec_release(&spec);
    return true;
}

void cli_remote_totals(cks_http_stats *out)
{
    memset(out, 0, sizeof *out);
    for (size_t i = 0; i < g.n; i++) {
        cks_http_stats s;
        cks_remote_get_stats(g.sessions[i], &s);
        out->bytes_fetched += s.bytes_fetched;
        out->bytes_planned += s.bytes_planned;
        out->requests += s.requests;
        out->retries += s.retries;
        out->coalesced += s.coalesced;
        out->seconds += s.seconds;
    }
}

void cli_remote_json_finish(cJSON *root)
{
    cks_http_stats t;
    if (!root || g.n == 0 || cJSON_GetObjectItemCaseSensitive(root, "transfer"))
        return;
    cli_remote_totals(&t);
    cJSON *tr = cJSON_AddObjectToObject(root, "transfer");
    cJSON_AddNumberToObject(tr, "bytes_fetched", (double)t.bytes_fetched);
    cJSON_AddNumberToObject(tr, "requests", (double)t.requests);
    cJSON_AddNumberToObject(tr, "seconds", t.seconds);
    cJSON_AddNumberToObject(tr, "retries", (double)t.retries);
    cJSON_AddNumberToObject(tr, "ranges_coalesced", (double)t.coalesced);
}

void cli_explain_offline(const cks_ckpt *ckpt, const cks_ckpt_tensor *const *sel, size_t n_sel)
{
    char *message = NULL;
    cks_diag d;
    const cks_ckpt_tensor **all = NULL;
    if (!g.cache || !ckpt)
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
    if (cks_cache_describe_ckpt_missing(g.cache, ckpt, sel, n_sel, &message, &d) == CKS_OK && message) {
        fprintf(stderr, "ckptscope: not in the cache (run once without --offline to fetch them):\n");
        for (char *line = strtok(message, "\n"); line; line = strtok(NULL, "\n"))
            fprintf(stderr, "%s\n", cli_esc(line));
    }
    free(message);
    free((void *)all);
}

cks_err cli_refresh_partial(const cks_ckpt *ckpt, const cks_ckpt_tensor *const *sel, size_t n_sel,
                            cks_diag *diag)
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

struct cks_cache *cli_remote_cache(const cli_opts *opts)
{
    return get_cache(opts);
}
