/*
 * ckptscope/hub.h — the Hugging Face Hub client: source specs, revisions, files, errors.
 *
 * Protocol as observed (research/hub-protocol.md §A):
 *   - A revision (branch, tag, 40-hex commit, refs/pr/N) is resolved to a commit once, with
 *     GET {endpoint}/api/{models|datasets}/{repo}/revision/{quote(rev, safe="")}?blobs=true,
 *     which also lists every file with its size and, for LFS files, its SHA-256. Every later
 *     request names that commit, so a branch that moves mid-run cannot mix two versions.
 *   - A file is resolved with HEAD {endpoint}/{prefix}{repo}/resolve/{commit}/{quote(path)}
 *     without following redirects: relative redirects (renamed repo, /api/resolve-cache/)
 *     are followed by path only; an absolute one (the signed CDN URL of an LFS file) ends
 *     the walk and is where ranged GETs go, without the token.
 *   - Errors map from status + X-Error-Code: RepoNotFound, RevisionNotFound, EntryNotFound,
 *     GatedRepo (401 / 403), "Invalid credentials" 401, 429.
 *
 * Tokens: HF_TOKEN, then HUGGING_FACE_HUB_TOKEN, then the file HF_TOKEN_PATH, else
 * $HF_HOME/token, else ~/.cache/huggingface/token; HF_HUB_DISABLE_IMPLICIT_TOKEN=1 skips
 * the files. The token goes only to the endpoint's origin and never into a diagnostic.
 */
#ifndef CKPTSCOPE_HUB_H
#define CKPTSCOPE_HUB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ckptscope/cache.h"
#include "ckptscope/checkpoint.h"
#include "ckptscope/error.h"
#include "ckptscope/http.h"
#include "ckptscope/source.h"

#define CKS_HUB_DEFAULT_ENDPOINT "https://huggingface.co"

typedef enum cks_spec_kind {
    CKS_SPEC_LOCAL = 0,   /* a local path */
    CKS_SPEC_HUB,         /* a Hub repo (org/name[@rev], hf://...) */
    CKS_SPEC_URL          /* a plain http(s) URL of one file */
} cks_spec_kind;

typedef enum cks_repo_type {
    CKS_REPO_MODEL = 0,
    CKS_REPO_DATASET,
    CKS_REPO_SPACE
} cks_repo_type;

typedef struct cks_hub_spec {
    cks_spec_kind kind;
    cks_repo_type repo_type;
    char *repo_id;        /* "org/name" (HUB) */
    char *revision;       /* as typed, NULL when not given (HUB) */
    char *path;           /* file or folder inside the repo, NULL for the root (HUB) */
    char *url;            /* URL (URL) */
    char *local_path;     /* path (LOCAL) */
} cks_hub_spec;

/*
 * Parse what a user typed as SOURCE:
 *   hf://[models/|datasets/|spaces/]org/name[@rev][/path]    (rev may be refs/pr/N)
 *   http://... or https://...                                 a single file
 *   org/name[@rev]                                            when no such local path exists
 *   anything else                                             a local path
 */
cks_err cks_hub_parse_spec(const char *text, cks_hub_spec *out, cks_diag *diag);
void cks_hub_spec_release(cks_hub_spec *spec);

/* True when repo_id has the Hub's shape: [ns/]name of [A-Za-z0-9_.-], no "--" or "..",
 * not ending in ".git", name at most 96 characters. */
bool cks_hub_repo_id_valid(const char *repo_id);

/* Percent-encode: with keep_slash, '/' stays (paths); without, it becomes %2F (revisions).
 * Unreserved characters (A-Z a-z 0-9 - . _ ~) are kept. Caller frees. */
char *cks_hub_quote(const char *s, bool keep_slash);

/*
 * The token from the environment or the standard files, cleaned of whitespace and
 * newlines; *token NULL when none. *origin_desc says where it came from ("HF_TOKEN",
 * "token file") for --verbose, never the token. Caller frees *token.
 */
cks_err cks_hub_find_token(char **token, const char **origin_desc, cks_diag *diag);

/* The endpoint: $HF_ENDPOINT without trailing '/', else https://huggingface.co. */
const char *cks_hub_default_endpoint(void);

typedef struct cks_hub cks_hub;

/* A client on an engine the caller owns (the engine must have been created with the same
 * token and auth_origin = endpoint). endpoint NULL: cks_hub_default_endpoint(). */
cks_err cks_hub_new(cks_http *http, const char *endpoint, bool have_token, cks_hub **out,
                    cks_diag *diag);
void cks_hub_free(cks_hub *hub);
const char *cks_hub_endpoint(const cks_hub *hub);

typedef struct cks_hub_file {
    char *path;           /* path in the repo */
    uint64_t size;        /* bytes (the real size for LFS files) */
    bool size_known;
    bool lfs;
    char sha256[65];      /* LFS SHA-256, "" when not LFS / unknown */
    char blob_id[41];     /* git blob sha1, "" when unknown */
} cks_hub_file;

typedef struct cks_hub_repo {
    cks_repo_type type;
    char *repo_id;
    char *revision;       /* as asked ("main" by default) */
    char commit[41];      /* what it resolved to */
    bool gated;           /* the repo is gated (the listing says so) */
    size_t n_files;
    cks_hub_file *files;  /* sorted by path */
    /* Names in the listing refused as paths (".." or "." segments, absolute, empty segments,
     * backslashes, control characters): they are left out of files, counted here, and the
     * first is kept so that "no checkpoint" can say why. */
    size_t n_unsafe;
    char *unsafe_example;
} cks_hub_repo;

/* Resolve revision (NULL: "main") to a commit and list the files with sizes and hashes. */
cks_err cks_hub_open_repo(cks_hub *hub, cks_repo_type type, const char *repo_id,
                          const char *revision, cks_hub_repo **out, cks_diag *diag);
void cks_hub_repo_free(cks_hub_repo *repo);
/* The repository listing as the Hub sends it (`/api/{models,datasets}/{id}/revision/{rev}
 * ?blobs=true`) turned into a repo (what cks_hub_open_repo does with the body); exposed for
 * the fuzz target. Files are sorted by path; unsafe names are counted, not listed. */
cks_err cks_hub_parse_listing(const char *body, size_t len, cks_repo_type type, const char *repo_id,
                              const char *revision, cks_hub_repo **out, cks_diag *diag);
const cks_hub_file *cks_hub_repo_find(const cks_hub_repo *repo, const char *path);

/* Where the bytes of one file are: the URL for ranged GETs and what the Hub says. */
typedef struct cks_hub_resolved {
    char *url;            /* signed CDN URL (LFS) or the Hub URL (regular file) */
    bool cross_origin;    /* url is on another host: the token is never sent there */
    uint64_t size;
    bool size_known;
    char sha256[65];      /* from X-Linked-Etag when it is a SHA-256 */
    char commit[41];      /* X-Repo-Commit */
    double expires_at;    /* from the signed URL's Expires / X-Amz-Date+X-Amz-Expires; 0: unknown */
} cks_hub_resolved;

void cks_hub_resolved_release(cks_hub_resolved *r);

/* cks_hub_open_repo, and the files the caller reads next (ahead[0..n)) resolved by the
 * revision's name in the listing's round trip. ahead_errs[i] is CKS_OK when ahead_out[i] holds
 * a resolution pinned to the listed commit (release each); anything else (absent, an error, an
 * answer for another commit) is not an error of the listing: that file is resolved when used. */
cks_err cks_hub_open_repo_ahead(cks_hub *hub, cks_repo_type type, const char *repo_id,
                                const char *revision, const char *const *ahead, size_t n_ahead,
                                cks_hub_resolved *ahead_out, cks_err *ahead_errs,
                                cks_hub_repo **out, cks_diag *diag);

/* Resolve n files of one repo (commit pinned) in parallel. */
cks_err cks_hub_resolve_many(cks_hub *hub, const cks_hub_repo *repo, const char *const *paths,
                             size_t n, cks_hub_resolved *out, cks_diag *diag);

/* The same, tolerating failures: errs[i] says how item i ended (out[i] is valid only when it
 * is CKS_OK). Used to resolve files speculatively, before it is known they are needed. */
cks_err cks_hub_resolve_some(cks_hub *hub, const cks_hub_repo *repo, const char *const *paths,
                             size_t n, cks_hub_resolved *out, cks_err *errs, cks_diag *diag);

/* The same, with the caller's own request (`extra`, may be NULL) sent in the first round:
 * its answer, or its transport error, is left in it. */
cks_err cks_hub_resolve_some_with(cks_hub *hub, const cks_hub_repo *repo, const char *const *paths,
                                  size_t n, cks_hub_resolved *out, cks_err *errs,
                                  cks_http_request *extra, cks_diag *diag);

/* Resolve a plain URL: HEAD, following up to 5 redirects (no token ever goes there). */
cks_err cks_hub_resolve_url(cks_hub *hub, const char *url, cks_hub_resolved *out, cks_diag *diag);

/*
 * Map a Hub error response to an error and a sentence telling the user what to do.
 * `what` names the thing asked for ("org/name", "org/name@rev", "org/name/file").
 * Returns CKS_OK for 2xx/3xx. Exposed for tests.
 */
cks_err cks_hub_map_error(const cks_http_response *resp, const char *what, const char *repo_id,
                          const char *endpoint, bool have_token, bool is_file, cks_diag *diag);

/* Expiry of a signed URL, unix seconds: Expires=E, or X-Amz-Date + X-Amz-Expires; 0 when
 * neither is present. Exposed for tests. */
double cks_hub_url_expiry(const char *url);

/* ---- remote checkpoints: sources and the checkpoint provider (src/transport/remote*.c) ----
 *
 * A cks_remote is one session with one Hub repo (or one URL): it resolves the revision to
 * a commit at open, then hands out cks_sources whose bytes come through the range engine:
 *   - each file is resolved once, lazily, and the batch of files a checkpoint needs is
 *     resolved in parallel; the signed URL is reused until it expires (then re-resolved);
 *   - fetched bytes pass through `cache` when given (keys "sha256:<hex>" for LFS files,
 *     "git:<commit>:<path>" otherwise), else live in memory for the run (bounded, LRU);
 *   - sequential reads of a source read ahead, in parallel parts;
 *   - reading a whole LFS file, in any order of calls that reaches its end from byte 0,
 *     checks its SHA-256 against the Hub's; a mismatch is CKS_ERR_INTEGRITY, for that read
 *     and every later one.
 * Sources and checkpoints opened from a session keep it alive (reference counted), so
 * cks_remote_free may come before or after freeing them. Sources are thread_safe: one
 * mutex per session serialises the engine.
 */
typedef struct cks_remote cks_remote;

typedef struct cks_remote_opts {
    const char *endpoint;       /* NULL: $HF_ENDPOINT, else https://huggingface.co */
    cks_cache *cache;           /* borrowed; NULL: bytes live only in memory for the run */
    cks_http_config http;       /* engine tuning; token and auth_origin are filled in here */
    bool anonymous;             /* do not look for a token */
    uint64_t memory_cap;        /* bytes of fetched data kept in memory per file; 0: 256 MiB */
    /* config.json will be read after the headers (compare, verify, fingerprint): with a disk
     * cache it rides in the headers' batch. Other commands never wait for it: the batch ends
     * with its slowest reply, and the Hub's API can answer slower than the file servers. */
    bool reads_config;
} cks_remote_opts;

/* Tuning from the environment (CKPTSCOPE_MAX_PARALLEL, CKPTSCOPE_MAX_HOST_CONNS,
 * CKPTSCOPE_STALL_TIMEOUT, CKPTSCOPE_MIN_RATE, CKPTSCOPE_MAX_ATTEMPTS, CKPTSCOPE_BACKOFF_BASE,
 * CKPTSCOPE_MAX_RETRY_WAIT, CKPTSCOPE_COALESCE_GAP, CKPTSCOPE_MAX_REQUEST); unset values
 * are left alone. */
void cks_remote_config_from_env(cks_http_config *cfg);

/* Open a HUB or URL spec: finds the token, resolves revision -> commit and lists files
 * (HUB), or resolves the URL (URL). */
cks_err cks_remote_open(const cks_hub_spec *spec, const cks_remote_opts *opts, cks_remote **out,
                        cks_diag *diag);
void cks_remote_free(cks_remote *r);

/* The checkpoint the spec names: its path (a .safetensors file, an index .json, or a folder)
 * or the repo root: model.safetensors.index.json, model.safetensors, or the only
 * .safetensors file there. Shard headers are fetched in parallel. */
cks_err cks_remote_open_ckpt(cks_remote *r, cks_ckpt **out, cks_diag *diag);

/* One file of the repo (path in the repo; for a URL session, relative to the URL's folder). */
cks_err cks_remote_open_file(cks_remote *r, const char *path, cks_source **out, cks_diag *diag);

/* Fetch the given byte ranges of several sources of this session at once (coalesced,
 * parallel). ranges[i] belongs to sources[i]. Sources from another session are skipped. */
cks_err cks_remote_prefetch(cks_remote *r, cks_source *const *sources, const cks_range *ranges,
                            size_t n, cks_diag *diag);

/* Bytes as they arrive. While a watch is set on the calling thread, every piece that a
 * prefetch or refresh on this thread receives from the network is shown to `fn` once all of
 * its bytes are in and checked (status, length), on this thread, while the rest of the fetch
 * is still in flight: the source, the piece's file offset and length, and its bytes. The
 * bytes stay valid after the call only under a hold (cks_remote_bytes_hold, then
 * cks_remote_bytes_release, from any thread). `fn` runs between transfers: it should only
 * take note and hand work on. A NULL `fn` clears the watch. Read-ahead of streamed files and
 * other threads' fetches are not shown. */
typedef void (*cks_remote_arrival_fn)(void *ctx, const cks_source *src, uint64_t offset,
                                      const uint8_t *bytes, uint64_t len);
void cks_remote_watch_arrivals(cks_remote_arrival_fn fn, void *ctx);
void cks_remote_bytes_hold(const uint8_t *bytes);
void cks_remote_bytes_release(const uint8_t *bytes);

/* Read these ranges of remote sources again from the network whatever the disk cache holds,
 * replacing a cached copy that differs. A partial read cannot be checked against the Hub's
 * whole-file SHA-256, so bytes an earlier run cached for one may be a damaged transfer that
 * nothing caught; commands whose answer is the bytes themselves (hash or fetch of some
 * tensors) call this first, so that answer never comes from them. Files verified whole,
 * sessions without a disk cache and --offline are left alone; other sources are skipped. */
cks_err cks_remote_refresh(cks_source *const *sources, const cks_range *ranges, size_t n,
                           cks_diag *diag);

/* The checkpoint of the session (as cks_remote_open_ckpt finds it) checked file by file
 * (cks_ckpt_check_with): every shard's header on its own, the index against every header
 * read, each file's listed, served (the CDN's Content-Range total) and implied sizes. */
cks_err cks_remote_check_ckpt(cks_remote *r, cks_ckpt_check **out, cks_diag *diag);

/* NULL for a URL session. */
const cks_hub_repo *cks_remote_repo(const cks_remote *r);
const char *cks_remote_endpoint(const cks_remote *r);
/* The URL of a URL session (query string removed), else NULL. */
const char *cks_remote_url(const cks_remote *r);
/* Whether a token was found, and where ("HF_TOKEN", "token file"); never the token. */
const char *cks_remote_token_origin(const cks_remote *r);
void cks_remote_get_stats(const cks_remote *r, cks_http_stats *out);
/* True when src is a remote source; *verified set when its whole-file SHA-256 was checked. */
bool cks_remote_source_verified(const cks_source *src, bool *verified);
/* The whole-file SHA-256 check of a remote source: 1 the bytes matched the Hub's SHA-256, -1
 * they did not (`computed`, when not NULL, receives the SHA-256 of the bytes read, 64 hex),
 * 0 not concluded yet or not a remote source. */
int cks_remote_source_sha_check(const cks_source *src, char computed[65]);

/* Sentences for the person running the command, about data the session replaced on its
 * own (a copy in HF_HOME that did not match the Hub's SHA-256, read from the Hub instead).
 * The queue is emptied; free each string and the array. */
size_t cks_remote_take_notes(cks_remote *r, char ***notes);

#endif
