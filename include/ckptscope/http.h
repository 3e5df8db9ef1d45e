/*
 * ckptscope/http.h — the range engine: many byte ranges over HTTP(S), few round trips.
 *
 * One cks_http owns one libcurl multi handle, so connections (and TLS sessions) stay alive
 * between calls and HTTP/2 streams are multiplexed where the server offers it; over
 * HTTP/1.1 several connections per host run in parallel instead.
 *
 * Rules the engine enforces (DESIGN.md §4, research/hub-protocol.md §A3):
 *   - Redirects are never followed automatically; the Hub client follows them itself.
 *   - Only http and https are allowed, in requests and anywhere else.
 *   - The bearer token is attached only to requests whose scheme, host and port equal the
 *     configured auth origin (the Hub endpoint). A signed CDN URL never sees it. The token
 *     is never copied into a diagnostic.
 *   - A range succeeds only as 206 with `Content-Range: bytes a-b/TOTAL` where a, b are
 *     exactly what was asked and TOTAL the expected file size, and exactly b-a+1 body bytes.
 *     A 200 to a ranged request is CKS_ERR_RANGE_IGNORED and its body is never used (the
 *     transfer is cut off at the first body byte) — except when the whole file was asked for
 *     and the 200 announces exactly its size: then the body is the range, counted byte by
 *     byte like a 206. Multi-range requests are never sent.
 *   - 408, 429, 5xx, resets and stalls are retried with exponential backoff and jitter,
 *     honouring Retry-After; a broken range resumes from the first byte not yet received.
 *     403 from a signed URL (expired) makes the engine ask the target for a fresh URL.
 *
 * Ownership: cks_http_new/cks_http_free; targets are owned by the caller and must outlive
 * every call that uses them. Nothing here is thread-safe: one thread drives one engine.
 */
#ifndef CKPTSCOPE_HTTP_H
#define CKPTSCOPE_HTTP_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ckptscope/error.h"

typedef struct cks_http cks_http;

typedef struct cks_http_stats {
    uint64_t bytes_fetched;   /* body bytes received, all requests, including discarded */
    uint64_t bytes_planned;   /* body bytes the range calls asked for (after coalescing) */
    uint64_t requests;        /* HTTP requests sent, including retries and resolves */
    uint64_t retries;         /* requests that were repeats of a failed one */
    uint64_t coalesced;       /* caller ranges that were merged into another request */
    uint64_t connections;     /* connections opened, to every host */
    double seconds;           /* wall time spent inside engine calls */
} cks_http_stats;

typedef void (*cks_http_progress_fn)(void *ctx, const cks_http_stats *stats);

typedef struct cks_http_config {
    const char *user_agent;      /* NULL: "ckptscope" */
    const char *ca_bundle;       /* NULL: $CKPTSCOPE_CA_BUNDLE, $CURL_CA_BUNDLE, system */
    const char *auth_origin;     /* URL whose scheme://host:port may receive the token */
    const char *token;           /* bearer token, NULL for anonymous; copied */
    unsigned max_parallel;       /* transfers in flight at once; 0: 64 */
    unsigned max_host_conns;     /* HTTP/1.1 connections per host; 0: 64 */
    unsigned max_attempts;       /* attempts without progress per request (an attempt cut for
                                    being too slow counts, whatever it delivered); 0: 6 */
    double max_retry_wait;       /* longest Retry-After we wait for, seconds; 0: 60 */
    double backoff_base;         /* first backoff, seconds; 0: 0.25 (doubles, cap 8 s) */
    long connect_timeout;        /* seconds; 0: 15 */
    long stall_timeout;          /* the window: seconds below min_rate before a transfer is cut
                                    (then retried from where it stopped); 0: 20 */
    long min_rate;               /* bytes/s a transfer must average over that window; 0: 1024 */
    uint64_t coalesce_gap;       /* the largest gap merging may bridge; 0: 16 MiB (see below) */
    uint64_t max_request;        /* split requests larger than this; 0: 8 MiB */
    cks_http_progress_fn progress;  /* called about every 200 ms during transfers */
    void *progress_ctx;
} cks_http_config;

cks_err cks_http_new(const cks_http_config *cfg, cks_http **out, cks_diag *diag);
void cks_http_free(cks_http *http);

/* libcurl's global set-up (OpenSSL's with it: ~2 ms here) begun on a thread of its own, so
 * that it runs while the caller does other first work (the disk cache's opening); the first
 * cks_http_new waits for it if it is not done. False when no thread could be had (the first
 * cks_http_new then does it). A started thread is joined with cks_http_init_join. */
bool cks_http_init_begin(pthread_t *thread);
void cks_http_init_join(pthread_t thread);

/* Counters since cks_http_new. */
void cks_http_get_stats(const cks_http *http, cks_http_stats *out);

/* ---- single requests (Hub API, resolve) ---- */

/* The response headers the Hub client needs, each bounded (longer values are truncated
 * and flagged, never overflow). Empty string when absent. */
#define CKS_HTTP_HDR_MAX 4096
typedef struct cks_http_response {
    long status;
    char location[CKS_HTTP_HDR_MAX];
    char x_repo_commit[64];
    char x_linked_etag[160];
    char x_linked_size[32];
    char etag[160];
    char content_length[32];
    char content_range[128];
    char content_type[128];
    char x_error_code[64];
    char x_error_message[512];
    char retry_after[64];
    char ratelimit[160];
    char link[1024];
    bool header_truncated;        /* some header value did not fit */
    char *body;                   /* NUL-terminated, malloc'd; NULL when none */
    size_t body_len;
    bool body_truncated;          /* the body was longer than max_body */
} cks_http_response;

void cks_http_response_release(cks_http_response *resp);

typedef struct cks_http_request {
    const char *method;           /* "GET" or "HEAD" */
    const char *url;
    size_t max_body;              /* bytes kept; more is flagged as truncated; 0: 64 KiB */
    const char *accept;           /* Accept header value, NULL for none */
    const char *range;            /* Range header value ("bytes=0-0"), NULL for none; the
                                     answer, 206 or not, is returned as is (no range rules) */
    cks_http_response resp;       /* OUT */
    cks_err err;                  /* OUT: transport outcome (HTTP status is in resp) */
    cks_diag diag;                /* OUT: detail when err != CKS_OK */
} cks_http_request;

/*
 * Run requests in parallel without following redirects. Transport failures and 408/429/5xx
 * are retried; the final status, whatever it is, is returned in each resp for the caller
 * to interpret. Returns the first error of any request (details in that request).
 */
cks_err cks_http_request_many(cks_http *http, cks_http_request *reqs, size_t n, cks_diag *diag);

/* ---- ranged reads ---- */

typedef struct cks_http_target cks_http_target;

/*
 * Called when the engine needs a (fresh) URL for the target: before the first request when
 * url is NULL and after a 403 from a signed URL. It must set url (malloc'd; the engine frees
 * the old one) and may update size. `hint` is the failed status (0 for "no URL yet").
 */
typedef cks_err (*cks_http_refresh_fn)(void *ctx, cks_http_target *target, long hint,
                                       cks_diag *diag);

struct cks_http_target {
    char *url;                    /* where ranged GETs go; owned by the target */
    uint64_t size;                /* total file size; Content-Range totals must equal it */
    const char *name;             /* for diagnostics ("org/name/model.safetensors") */
    cks_http_refresh_fn refresh;  /* NULL: a 403 is final */
    void *refresh_ctx;
    double expires_at;            /* unix seconds after which url is stale; 0: unknown */
};

/* One caller range: `length` bytes at `offset` of `target`, written to `dst`. */
typedef struct cks_http_piece {
    cks_http_target *target;
    uint64_t offset;
    uint64_t length;
    uint8_t *dst;
} cks_http_piece;

/*
 * Fetch every piece. Pieces of the same target are merged into one request when the gap
 * between them is cheaper to read than to skip (the gap bytes are read and dropped): the
 * engine tries gaps from 0 to coalesce_gap and keeps the plan whose estimated time,
 * cks_http_plan_cost() with the round-trip time and bandwidth measured so far, is lowest.
 * Requests above max_request are split; up to cks_http_range_parallel() run at once. On
 * failure the contents of every dst are unspecified.
 */
cks_err cks_http_fetch(cks_http *http, cks_http_piece *pieces, size_t n, cks_diag *diag);

/* Called on the fetching thread, inside cks_http_fetch_notify, once every byte of
 * pieces[index] has arrived (in a request that completed with the status and length it
 * had to): the caller may use that dst from then on, while the other pieces are fetched. */
typedef void (*cks_http_piece_done_fn)(void *ctx, size_t index);

/* cks_http_fetch that reports each piece as it completes; `done` may be NULL. A fetch that
 * fails may have reported some pieces: their bytes are complete and correct. */
cks_err cks_http_fetch_notify(cks_http *http, cks_http_piece *pieces, size_t n, cks_http_piece_done_fn done,
                              void *ctx, cks_diag *diag);

/* ---- pieces exposed for unit tests ---- */

/* Parse "bytes a-b/TOTAL" (TOTAL may be "*": *total = UINT64_MAX) or "bytes * /TOTAL"
 * (without the space; then *first = *last = UINT64_MAX). Strict: no signs, no spaces
 * inside numbers, no overflow. */
bool cks_http_parse_content_range(const char *value, uint64_t *first, uint64_t *last,
                                  uint64_t *total);

/* One response header line as the transport delivers it (not NUL-terminated, CRLF included
 * or not): a status line ("HTTP/1.1 206 ...") starts a fresh response and sets r->status
 * (0 when its code is unreadable); a known header is stored, bounded (longer values are cut
 * and flagged); anything else is ignored. The body pointer survives a status line. */
void cks_http_capture_header(cks_http_response *r, const char *line, size_t n);

/* What a server's answer to a ranged GET of bytes [first, last] of a file of `size` bytes
 * is, judged from its status, Content-Range and Content-Length (-1: absent) before any body
 * byte is taken. Only CKS_REPLY_RANGE and CKS_REPLY_WHOLE_AS_RANGE carry the bytes asked for. */
typedef enum cks_range_reply {
    CKS_REPLY_RANGE,          /* 206, exactly that range of that file, length agreeing */
    CKS_REPLY_WHOLE_AS_RANGE, /* 200 with the whole file, of its size, and the whole was asked */
    CKS_REPLY_IGNORED,        /* 200 with the whole file when a part was asked: Range ignored */
    CKS_REPLY_OTHER_SIZE,     /* 206 from a file of another total size (*served_total) */
    CKS_REPLY_BAD_RANGE,      /* 206 with another range, or a Content-Range that does not parse */
    CKS_REPLY_BAD_LENGTH,     /* 206, the right range, a Content-Length that disagrees */
    CKS_REPLY_NOT_DATA        /* any other status: an error page, judged by its status */
} cks_range_reply;
cks_range_reply cks_http_range_reply(long status, const char *content_range, int64_t content_length,
                                     uint64_t first, uint64_t last, uint64_t size,
                                     uint64_t *served_total);

/* Retry-After as delta-seconds or HTTP-date, relative to `now` (unix seconds).
 * Returns false when unparseable. */
bool cks_http_parse_retry_after(const char *value, double now, double *seconds);

/* Seconds until reset from a `RateLimit: "name";r=R;t=T` header when r == 0. */
bool cks_http_parse_ratelimit(const char *value, double *seconds);

/* Backoff before attempt `attempt` (1 = first retry): base*2^(attempt-1) capped at 8 s,
 * scaled by a jitter factor in [0.5, 1.0] drawn from `rnd` in [0,1). */
double cks_http_backoff(double base, unsigned attempt, double rnd);

/* The largest request the planner makes when not told (split into parallel parts beyond). */
#define CKS_HTTP_DEFAULT_MAX_REQUEST (8u * 1024u * 1024u)

/* Group pieces into requests: sorts `order` (indices into pieces) by (target, offset) and
 * writes request spans; returns the number of spans. Exposed so coalescing is testable. */
typedef struct cks_http_span {
    cks_http_target *target;
    uint64_t first, last;         /* inclusive */
    size_t piece_begin, piece_end;/* range in `order` of pieces overlapping this span */
} cks_http_span;

cks_err cks_http_plan(const cks_http_piece *pieces, size_t n, uint64_t gap, uint64_t max_request,
                      size_t *order, cks_http_span **spans, size_t *n_spans, cks_diag *diag);

/* Estimated seconds for a plan: ceil(n_spans / parallel) round trips plus bytes / bandwidth. */
double cks_http_plan_cost(size_t n_spans, uint64_t bytes, unsigned parallel, double rtt, double bw);

/* Range transfers to keep in flight: a data server's round trip's worth of requests (its
 * fastest time to first byte so far, seconds, over CKS_HTTP_REQUEST_COST), at least
 * CKS_HTTP_MIN_RANGE_PARALLEL and at most `cap`; `cap` while nothing was timed (ttfb_min 0). */
#define CKS_HTTP_REQUEST_COST 100e-6
#define CKS_HTTP_MIN_RANGE_PARALLEL 8u
unsigned cks_http_range_parallel(double ttfb_min, unsigned cap);

/* The scheme://host:port of a URL, lower-cased, default port filled in. Caller frees. */
cks_err cks_http_origin(const char *url, char **out, cks_diag *diag);

#endif
