/*
 * include/ckptscope/workspace.h — opening SOURCE strings, for any program.
 *
 * A SOURCE is what a user types: a local file or folder, `org/name[@revision]`, a pasted Hub
 * URL, `hf://...`, or an http(s) URL of a file. A workspace turns SOURCEs into checkpoints and
 * owns everything that takes: the remote sessions (one per SOURCE opened; as many as the
 * caller opens), the disk cache they share, and their transfer counters. Nothing is global:
 * two workspaces are independent, and freeing one frees all it opened (free the checkpoints
 * first).
 *
 *     cks_workspace *w;
 *     cks_workspace_opts o = {0};            // the cache in its default place
 *     cks_workspace_new(&o, &w, &diag);
 *     cks_workspace_open(w, "org/model@main", &ckpt, NULL, &diag);
 *     ...
 *     cks_ckpt_free(ckpt);
 *     cks_workspace_free(w);
 */
#ifndef CKPTSCOPE_WORKSPACE_H
#define CKPTSCOPE_WORKSPACE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ckptscope/cache.h"
#include "ckptscope/checkpoint.h"
#include "ckptscope/error.h"
#include "ckptscope/http.h"
#include "ckptscope/hub.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct cks_workspace cks_workspace;

typedef struct cks_workspace_opts {
    const char *cache_dir;   /* NULL: $CKPTSCOPE_CACHE, else the XDG cache folder */
    uint64_t cache_max;      /* 0: the cache's default cap */
    bool no_cache;           /* keep fetched bytes in memory only ($CKPTSCOPE_NO_CACHE does too) */
    bool offline;            /* answer from the cache alone (HF_HUB_OFFLINE is read by the Hub client) */
    bool reads_config;       /* the command reads config.json after the headers (cks_remote_opts) */
    /* Optional. The transfer counters summed over every session, as the engines report them
     * (from the engines' threads, one call at a time). */
    void (*progress)(void *ctx, const cks_http_stats *sum);
    /* Optional. What opening is doing now ("resolving org/name@main", "reading the headers of
     * ..."); NULL when a stage ends. */
    void (*stage)(void *ctx, const char *stage);
    void *ctx;
} cks_workspace_opts;

cks_err cks_workspace_new(const cks_workspace_opts *opts, cks_workspace **out, cks_diag *diag);

/* Free every session and the cache. Checkpoints opened through the workspace must be freed
 * before. NULL is allowed. */
void cks_workspace_free(cks_workspace *w);

/* Is `source` a local path (true) or something remote? A malformed hf:// or URL is an error. */
cks_err cks_workspace_is_local(const char *source, bool *local, cks_diag *diag);

/*
 * Open a SOURCE as a checkpoint. Remote SOURCEs get a session of their own (resolved once;
 * the shards' headers read in one batch); `session` (may be NULL) receives it, NULL for a
 * local path. CKS_ERR_OFFLINE_MISS when offline and the cache cannot be opened.
 */
cks_err cks_workspace_open(cks_workspace *w, const char *source, cks_ckpt **out, cks_remote **session,
                           cks_diag *diag);

/*
 * Several SOURCEs opened at once (a compare's A and B, its controls): each as
 * cks_workspace_open, then the optional files named in aux_names read beside its weights,
 * up to CKS_WORKSPACE_PARALLEL of them on their own threads, so their round trips overlap
 * instead of adding up (two 100B-class repos over a 40 ms link: ~1.3 s of a 3.5 s T2
 * audit went to opening B after A). An aux file that cannot be read is left NULL: they are
 * optional. While they open, the stage callback hears one line for all of them.
 */
#define CKS_WORKSPACE_MAX_AUX 4
#define CKS_WORKSPACE_PARALLEL 4
typedef struct cks_workspace_item {
    const char *source;                           /* in */
    const char *aux_names[CKS_WORKSPACE_MAX_AUX]; /* in: "config.json", ...; NULL ends the list */
    cks_ckpt *ckpt;                               /* out: the caller frees it */
    cks_remote *session;                          /* out: owned by the workspace; NULL when local */
    char *aux[CKS_WORKSPACE_MAX_AUX];             /* out: bytes of aux_names[i] (free()), or NULL */
    size_t aux_len[CKS_WORKSPACE_MAX_AUX];
    cks_err err;                                  /* out: this SOURCE's outcome, */
    cks_diag diag;                                /*      and what went wrong */
} cks_workspace_item;
/* Returns the error of the first item (in order) that failed, its text copied to diag; the
 * items that opened stay open either way (free them). */
cks_err cks_workspace_open_all(cks_workspace *w, cks_workspace_item *items, size_t n, cks_diag *diag);
/* Check a SOURCE's structure file by file (checkpoint.h, cks_ckpt_check). A remote SOURCE
 * opened before through this workspace reuses its session. */
cks_err cks_workspace_check(cks_workspace *w, const char *source, cks_ckpt_check **out, cks_remote **session,
                            cks_diag *diag);

/* A session for a parsed spec (for callers that parse themselves), owned by the workspace. */
cks_err cks_workspace_session(cks_workspace *w, const cks_hub_spec *spec, cks_remote **out, cks_diag *diag);

/* The disk cache the sessions share: opened at the first call, NULL when turned off or when it
 * could not be opened (then *problem, if given, says why: the run goes on without it). */
cks_cache *cks_workspace_cache(cks_workspace *w, cks_err *problem, cks_diag *why);

/* Counters summed over every session so far. */
void cks_workspace_totals(const cks_workspace *w, cks_http_stats *out);

/* Sessions opened so far, and the i-th. */
size_t cks_workspace_n_sessions(const cks_workspace *w);
cks_remote *cks_workspace_session_at(const cks_workspace *w, size_t i);

#ifdef __cplusplus
}
#endif

#endif
