/*
 * ckptscope/cache_hub.h — remembered Hub answers, so a rerun needs no Hub at all.
 *
 * A repository listing (revision → commit, and every file's size, LFS SHA-256 and blob id)
 * is stored as cache metadata (namespace "repo"), keyed by endpoint, repo type, repo id and
 * revision as asked. A listing asked for by commit never expires (a commit is immutable);
 * one asked for by branch or tag expires after the cache's revision TTL (branches move).
 * The listing is also stored under its commit, so a later run pinned to that commit hits.
 *
 * The hook in the remote source:
 *     if (cks_cache_repo_get(cache, endpoint, type, id, rev, &repo, &hit, d) || !hit)
 *         fetch with cks_hub_open_repo, then cks_cache_repo_put(cache, endpoint, id, rev, repo, d)
 */
#ifndef CKPTSCOPE_CACHE_HUB_H
#define CKPTSCOPE_CACHE_HUB_H

#include <stdbool.h>

#include "ckptscope/cache.h"
#include "ckptscope/hub.h"

/* *out (free with cks_hub_repo_free) is NULL and *hit false when absent, expired or damaged.
 * revision NULL means "main". A NULL cache is a miss. */
cks_err cks_cache_repo_get(cks_cache *c, const char *endpoint, cks_repo_type type,
                           const char *repo_id, const char *revision, cks_hub_repo **out,
                           bool *hit, cks_diag *diag);

/* Remember `repo` as the answer for (endpoint, type, asked_repo_id, asked_revision) and
 * for its commit. A NULL cache does nothing. */
cks_err cks_cache_repo_put(cks_cache *c, const char *endpoint, const char *asked_repo_id,
                           const char *asked_revision, const cks_hub_repo *repo, cks_diag *diag);

/* Forget the listing remembered for (endpoint, type, asked_repo_id, asked_revision) and for
 * `commit` (NULL: only the first): something it said failed a check (a size or SHA-256 the
 * servers contradict), so the next run asks the Hub again instead of trusting it forever. */
cks_err cks_cache_repo_forget(cks_cache *c, const char *endpoint, cks_repo_type type,
                              const char *asked_repo_id, const char *asked_revision,
                              const char *commit, cks_diag *diag);

/* `cache verify`, the part about whole files: every LFS file a cached listing names, that the
 * cache holds entirely and has not marked verified, is hashed and compared with the listed
 * SHA-256 (match: marked verified; mismatch: a bad entry, dropped when repair is set); files
 * held only in part are counted (rep->partial_files). Adds to rep (cks_cache_verify fills
 * the rest). */
cks_err cks_cache_verify_listed(cks_cache *c, bool repair, cks_cache_verify_report *rep,
                                cks_diag *diag);

/* HF_HOME reuse for a listed file: when the standard Hugging Face cache holds a complete
 * copy of `f` at repo->commit (its blob named by the file's LFS SHA-256 or git blob id, its
 * size the listed size), open it as a local source named like the remote one would be
 * ("org/name@<commit12>/path"); else *out = NULL. Never writes there. hf_home as in
 * cks_cache_hf_lookup (NULL: the environment). */
cks_err cks_cache_hf_source(const char *hf_home, const cks_hub_repo *repo, const cks_hub_file *f,
                            cks_source **out, cks_diag *diag);

/* A listing from the standard Hugging Face cache alone, for --offline / HF_HUB_OFFLINE: the
 * revision resolved through refs/<revision> (a 40-hex commit as is), the files of
 * snapshots/<commit>/ with their sizes and, from the blob each entry links to, their LFS
 * SHA-256 or git blob id (so cks_cache_hf_source then serves them). *out NULL when the cache
 * holds no such snapshot (not an error). Never writes there. hf_home as in cks_cache_hf_lookup. */
cks_err cks_cache_hf_repo(const char *hf_home, cks_repo_type type, const char *repo_id, const char *revision,
                          cks_hub_repo **out, cks_diag *diag);

/* --offline reporting for a checkpoint: for each file holding some of the selected tensors
 * (all tensors when sel is NULL), name exactly the tensors whose bytes are not cached, one
 * line per file ("model-00002-of-00004.safetensors: 3 of 120 tensors not cached: a, b, c").
 * Files without a content identity (no LFS SHA-256) are named as a whole. *message is NULL
 * when every selected byte is cached. */
cks_err cks_cache_describe_ckpt_missing(cks_cache *c, const cks_ckpt *ckpt,
                                        const cks_ckpt_tensor *const *sel, size_t n_sel,
                                        char **message, cks_diag *diag);

/* ---- the cache seen by repository (`ckptscope cache ls`, `cache rm`; src/transport/cache_repos.c) ----
 *
 * Bytes are stored by content, so which repository they belong to is known only from the
 * listings kept in the cache: every cached file key named by some listing of a repo (any
 * revision, any endpoint) counts for that repo. A key that two repos list (a re-upload of
 * the same file) counts for both and is marked shared.
 */
typedef struct cks_cache_repo_usage {
    cks_repo_type type;
    char *repo_id;            /* NULL for the group of keys no listing names */
    char **revisions;         /* as asked (branches, tags, commits), sorted; n_revisions */
    size_t n_revisions;
    size_t n_commits;         /* distinct commits the listings resolved to */
    size_t n_files;           /* cached file keys */
    size_t n_shared;          /* of which another repo lists too */
    uint64_t logical_bytes;   /* bytes of the files covered */
    uint64_t stored_bytes;    /* bytes on disk (extents and this repo's listings) */
    int64_t last_used;
} cks_cache_repo_usage;

/* One entry per repository (type, id), by id; then, when any, the unattributed group. */
cks_err cks_cache_repo_usage_list(cks_cache *c, cks_cache_repo_usage **out, size_t *n, cks_diag *diag);
void cks_cache_repo_usage_free(cks_cache_repo_usage *v, size_t n);

typedef struct cks_cache_rm_report {
    size_t files_removed, files_shared_kept, files_in_use, listings_removed;
    uint64_t bytes_removed;
} cks_cache_rm_report;

/* Remove what the cache holds for one repository: its listings, and every file key its
 * listings name that no other repository's listing names and no live process is using.
 * CKS_ERR_NOT_FOUND when the cache has no listing of it. */
cks_err cks_cache_remove_repo(cks_cache *c, cks_repo_type type, const char *repo_id, cks_cache_rm_report *rep,
                              cks_diag *diag);

#endif
