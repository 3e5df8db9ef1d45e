/*
 * http.c — the range engine on libcurl multi. Contract in include/ckptscope/http.h.
 *
 * Shape: every call builds an array of transfers (struct xfer) and hands it to run(),
 * which keeps up to max_parallel of them on the multi handle, retries the ones that fail
 * in a retryable way after a backoff, and returns when all are done or one failed for good.
 * The multi handle lives as long as the engine, so its connection pool (and HTTP/2
 * sessions) carries over from one call to the next.
 */
#include "ckptscope/http.h"

#include <curl/curl.h>
#include <ctype.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define DEFAULT_MAX_PARALLEL 64
/* On HTTP/2 (the Hub and its CDN) every transfer multiplexes over one connection. On HTTP/1.1
 * a request holds its connection for a round trip, so a latency-bound batch needs about as
 * many connections as transfers in flight; 64 is what download accelerators open too. */
#define DEFAULT_MAX_HOST_CONNS 64
#define DEFAULT_MAX_ATTEMPTS 6
#define DEFAULT_MAX_RETRY_WAIT 60.0
#define DEFAULT_BACKOFF_BASE 0.25
#define BACKOFF_CAP 8.0
#define DEFAULT_CONNECT_TIMEOUT 15
#define DEFAULT_STALL_TIMEOUT 20
/* A transfer averaging under this over the stall window is cut and retried: a server that
 * drips a few bytes a second would otherwise hold a read forever. 1 KiB/s is ~1/16 of what
 * each of 64 parallel transfers gets on a 1 Mbit/s link, so only a broken server trips it. */
#define DEFAULT_MIN_RATE 1024
#define DEFAULT_COALESCE_GAP (16u * 1024u * 1024u) /* the largest gap the cost model may pick */
/* Until measured: a typical transatlantic round trip and a modest access link. */
#define DEFAULT_RTT 0.05
#define DEFAULT_BANDWIDTH 10e6 /* guessing low costs round trips only past the connection count */
#define DEFAULT_MAX_REQUEST CKS_HTTP_DEFAULT_MAX_REQUEST
#define DEFAULT_MAX_BODY (64u * 1024u)
#define ERROR_BODY_MAX 1024
/* Signed URLs are refreshed this long before they expire, so a request never races it. */
#define EXPIRY_MARGIN 30.0
#define SPARE_EASY 64u
#define TRACKED_SOCKETS 512u
#define ACK_NOW_TAIL (256u * 1024u) /* larger than any segment a link carries */

struct tracked_socket {
    curl_socket_t fd;
    unsigned port;           /* local port; 0 until learnt */
};

struct cks_http {
    CURLM *multi;
    CURLM *aux_multi;        /* for requests made from inside a run (URL refresh) */
    unsigned depth;          /* nesting of run() */
    char *user_agent;
    char *ca_bundle;
    char *auth_origin;
    char *auth_header;       /* "Authorization: Bearer ..." — never copied anywhere else */
    unsigned max_parallel;
    unsigned max_attempts;
    double max_retry_wait;
    double backoff_base;
    long connect_timeout;
    long stall_timeout;
    long min_rate;
    uint64_t coalesce_gap;
    uint64_t max_request;
    unsigned max_host_conns;
    double rtt_est;          /* seconds from request sent to first byte, smoothed; 0: none yet */
    double bw_est;           /* bytes/s the link delivered on large runs, smoothed; 0: none yet */
    double range_ttfb_min;   /* the fastest time to first byte of a range (the data server's
                              * round trip plus its least think time); 0: none yet */
    bool multiplexed;        /* the last range transfer ran on HTTP/2 or later */
    uint64_t run_bytes;      /* range body bytes of the current run, for bw_est */
    cks_http_progress_fn progress;
    void *progress_ctx;
    cks_http_stats stats;
    double last_progress;
    uint64_t rng;
    /* Easy handles of finished transfers, reset and reused by the next ones: a new handle per
     * request cost more than the request itself on loopback (500 scattered ranges: ~1 ms
     * each against 0.25 ms for curl -K reusing one). At most SPARE_EASY are kept. */
    CURL *spare[SPARE_EASY];
    unsigned n_spare;
    /* The open sockets (libcurl's callbacks keep the list) and a mutex for it: the
     * callbacks run on whichever thread drives a transfer. */
    pthread_mutex_t socks_mu;
    struct tracked_socket socks[TRACKED_SOCKETS];
    unsigned n_socks;
};

enum xkind { XK_SIMPLE, XK_RANGE };

/* Why a range transfer was cut off by our own write callback. */
enum verdict { V_NONE, V_IGNORED, V_BAD_RANGE, V_BAD_LENGTH, V_TOO_LONG, V_BODY_FULL, V_SIZE };

/*
 * What one attempt receives besides the body: ~8 KiB, so it is not part of struct xfer. A
 * batch allocates an xfer per request up front (hundreds for a scattered fetch); with the
 * buffers inside, first touching them faulted in ~3 pages per request. At most max_parallel
 * attempts exist at once and each reuses the memory the last one freed.
 */
struct attempt {
    char curl_err[CURL_ERROR_SIZE];
    cks_http_response hdr;     /* response headers */
    char errbody[ERROR_BODY_MAX];
    size_t errbody_len;
};

struct xfer {
    enum xkind kind;
    cks_http *h;               /* the engine driving it (set at each start) */
    CURL *easy;
    struct curl_slist *hdrs;
    bool active, done;
    double not_before;         /* monotonic seconds; 0: now */
    unsigned attempts;         /* failures since the last progress */
    cks_err err;
    cks_diag diag;
    struct attempt *at;        /* while started or waiting for a retry; NULL before and after */

    /* XK_SIMPLE */
    cks_http_request *req;

    /* XK_RANGE */
    cks_http_span span;
    uint64_t next;             /* first byte not yet received (resume point) */
    const cks_http_piece *pieces;
    const size_t *order;
    size_t cursor;
    uint64_t *piece_left;      /* per piece: bytes not yet in a completed request (NULL: no report) */
    cks_http_piece_done_fn piece_done;
    void *piece_ctx;
    unsigned refreshes;        /* URL refreshes in a row without progress */

    /* per attempt */
    long status;
    bool validated;
    enum verdict verdict;
    uint64_t served_total;     /* V_SIZE: the file size the server reported */
    uint64_t got;
    uint64_t expect;
    curl_socket_t sock;        /* the connection's socket, once ack_now looked it up */
};

/* ---------------------------------------------------------------- small helpers ---- */

static double mono_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double wall_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double rand01(cks_http *h)
{
    /* xorshift64*: jitter only needs to decorrelate clients, not be unpredictable */
    h->rng ^= h->rng >> 12;
    h->rng ^= h->rng << 25;
    h->rng ^= h->rng >> 27;
    return (double)((h->rng * 2685821657736338717ULL) >> 11) / 9007199254740992.0;
}

/* A URL fit for a diagnostic: signed query strings are credentials too, so drop them. */
static void url_for_diag(const char *url, char *out, size_t cap)
{
    size_t n = url ? strcspn(url, "?#") : 0;
    if (n >= cap)
        n = cap - 1;
    if (n)
        memcpy(out, url, n);
    out[n] = '\0';
}

static bool parse_u64(const char **pp, uint64_t *out)
{
    const char *p = *pp;
    uint64_t v = 0;
    if (!isdigit((unsigned char)*p))
        return false;
    while (isdigit((unsigned char)*p)) {
        unsigned d = (unsigned)(*p - '0');
        if (v > (UINT64_MAX - d) / 10)
            return false;
        v = v * 10 + d;
        p++;
    }
    *pp = p;
    *out = v;
    return true;
}

bool cks_http_parse_content_range(const char *value, uint64_t *first, uint64_t *last,
                                  uint64_t *total)
{
    const char *p = value;
    uint64_t a, b, t;
    if (!p || strncasecmp(p, "bytes", 5) != 0)
        return false;
    p += 5;
    if (*p != ' ' && *p != '=')
        return false;
    p++;
    while (*p == ' ')
        p++;
    if (*p == '*') {
        a = b = UINT64_MAX;
        p++;
    } else {
        /* UINT64_MAX stands for "*": a position that large is refused (fuzz_http_response) */
        if (!parse_u64(&p, &a) || a == UINT64_MAX || *p != '-')
            return false;
        p++;
        if (!parse_u64(&p, &b) || b == UINT64_MAX || b < a)
            return false;
    }
    if (*p != '/')
        return false;
    p++;
    if (*p == '*') {
        if (a == UINT64_MAX)
            return false; /* both unknown says nothing */
        t = UINT64_MAX;
        p++;
    } else if (!parse_u64(&p, &t) || t == UINT64_MAX) {
        return false;
    }
    while (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n')
        p++;
    if (*p)
        return false;
    if (a != UINT64_MAX && t != UINT64_MAX && b >= t)
        return false;
    *first = a;
    *last = b;
    *total = t;
    return true;
}

bool cks_http_parse_retry_after(const char *value, double now, double *seconds)
{
    const char *p = value;
    uint64_t v;
    struct tm tm;
    if (!p)
        return false;
    while (*p == ' ')
        p++;
    if (isdigit((unsigned char)*p)) {
        if (!parse_u64(&p, &v))
            return false;
        while (*p == ' ' || *p == '\r' || *p == '\n')
            p++;
        if (*p || v > 365u * 86400u)
            return false;
        *seconds = (double)v;
        return true;
    }
    memset(&tm, 0, sizeof tm);
    const char *end = strptime(p, "%a, %d %b %Y %H:%M:%S GMT", &tm);
    if (!end)
        return false;
    double at = (double)timegm(&tm);
    *seconds = at > now ? at - now : 0.0;
    return true;
}

bool cks_http_parse_ratelimit(const char *value, double *seconds)
{
    /* RateLimit: "resolvers";r=0;t=55 — only r == 0 says "wait t" */
    const char *r = value ? strstr(value, ";r=") : NULL;
    const char *t = value ? strstr(value, ";t=") : NULL;
    uint64_t rv, tv;
    if (!r || !t)
        return false;
    r += 3;
    t += 3;
    if (!parse_u64(&r, &rv) || !parse_u64(&t, &tv) || rv != 0 || tv > 86400)
        return false;
    *seconds = (double)tv;
    return true;
}

double cks_http_backoff(double base, unsigned attempt, double rnd)
{
    double d = base;
    for (unsigned i = 1; i < attempt && d < BACKOFF_CAP; i++)
        d *= 2;
    if (d > BACKOFF_CAP)
        d = BACKOFF_CAP;
    if (rnd < 0)
        rnd = 0;
    if (rnd >= 1)
        rnd = 0.999;
    return d * (0.5 + 0.5 * rnd);
}

cks_err cks_http_origin(const char *url, char **out, cks_diag *diag)
{
    cks_err err = CKS_OK;
    CURLU *u = curl_url();
    char *scheme = NULL, *host = NULL, *port = NULL, *res = NULL;
    *out = NULL;
    if (!u) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory parsing a URL");
        goto out;
    }
    if (curl_url_set(u, CURLUPART_URL, url, 0) != CURLUE_OK ||
        curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK ||
        curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK ||
        curl_url_get(u, CURLUPART_PORT, &port, CURLU_DEFAULT_PORT) != CURLUE_OK) {
        char shown[256];
        url_for_diag(url, shown, sizeof shown);
        err = cks_fail(diag, CKS_ERR_INVALID_ARG, "not a valid URL: '%s'", shown);
        goto out;
    }
    if (strcasecmp(scheme, "http") != 0 && strcasecmp(scheme, "https") != 0) {
        err = cks_fail(diag, CKS_ERR_INVALID_ARG, "only http and https URLs are supported, not '%s'",
                       scheme);
        goto out;
    }
    size_t n = strlen(scheme) + strlen(host) + strlen(port) + 5;
    res = malloc(n);
    if (!res) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        goto out;
    }
    snprintf(res, n, "%s://%s:%s", scheme, host, port);
    for (char *p = res; *p; p++)
        *p = (char)tolower((unsigned char)*p);
out:
    curl_free(scheme);
    curl_free(host);
    curl_free(port);
    if (u)
        curl_url_cleanup(u);
    if (err) {
        free(res);
        res = NULL;
    }
    *out = res;
    return err;
}

/* ---------------------------------------------------------------- engine life ---- */

/* libcurl's global set-up, once per process: engines may be made on several threads at once
 * (cks_workspace_open_all), and curl_global_init is only safe to race on builds that say so. */
static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_result;

static void curl_init_once(void)
{
    curl_init_result = curl_global_init(CURL_GLOBAL_DEFAULT);
}

static void *init_main(void *arg)
{
    (void)arg;
    pthread_once(&curl_once, curl_init_once);
    return NULL;
}

bool cks_http_init_begin(pthread_t *thread)
{
    return pthread_create(thread, NULL, init_main, NULL) == 0;
}

void cks_http_init_join(pthread_t thread)
{
    pthread_join(thread, NULL);
}

cks_err cks_http_new(const cks_http_config *cfg, cks_http **out, cks_diag *diag)
{
    static const cks_http_config defaults;
    cks_err err = CKS_OK;
    cks_http *h = NULL;
    *out = NULL;
    if (!cfg)
        cfg = &defaults;
    pthread_once(&curl_once, curl_init_once);
    if (curl_init_result != CURLE_OK) {
        err = cks_fail(diag, CKS_ERR_NETWORK, "libcurl failed to initialise");
        goto out;
    }
    h = calloc(1, sizeof *h);
    if (!h) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        goto out;
    }
    pthread_mutex_init(&h->socks_mu, NULL);
    h->multi = curl_multi_init();
    const char *ca = cfg->ca_bundle;
    if (!ca || !*ca)
        ca = getenv("CKPTSCOPE_CA_BUNDLE");
    if (!ca || !*ca)
        ca = getenv("CURL_CA_BUNDLE");
    h->user_agent = strdup(cfg->user_agent ? cfg->user_agent : "ckptscope/0.1");
    h->ca_bundle = (ca && *ca) ? strdup(ca) : NULL;
    if (!h->multi || !h->user_agent || ((ca && *ca) && !h->ca_bundle)) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        goto out;
    }
    if (cfg->token && *cfg->token) {
        /* A token with control bytes would let a header be injected; refuse it whole. */
        for (const char *p = cfg->token; *p; p++) {
            if ((unsigned char)*p < 0x21 || (unsigned char)*p > 0x7e) {
                err = cks_fail(diag, CKS_ERR_AUTH,
                               "the Hugging Face token contains spaces or control characters; "
                               "check HF_TOKEN or the token file");
                goto out;
            }
        }
        if (!cfg->auth_origin) {
            err = cks_fail(diag, CKS_ERR_INVALID_ARG, "a token needs an auth origin");
            goto out;
        }
        err = cks_http_origin(cfg->auth_origin, &h->auth_origin, diag);
        if (err)
            goto out;
        size_t n = strlen(cfg->token) + sizeof "Authorization: Bearer ";
        h->auth_header = malloc(n);
        if (!h->auth_header) {
            err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
            goto out;
        }
        snprintf(h->auth_header, n, "Authorization: Bearer %s", cfg->token);
    }
    h->max_parallel = cfg->max_parallel ? cfg->max_parallel : DEFAULT_MAX_PARALLEL;
    h->max_attempts = cfg->max_attempts ? cfg->max_attempts : DEFAULT_MAX_ATTEMPTS;
    h->max_retry_wait = cfg->max_retry_wait > 0 ? cfg->max_retry_wait : DEFAULT_MAX_RETRY_WAIT;
    h->backoff_base = cfg->backoff_base > 0 ? cfg->backoff_base : DEFAULT_BACKOFF_BASE;
    h->connect_timeout = cfg->connect_timeout > 0 ? cfg->connect_timeout : DEFAULT_CONNECT_TIMEOUT;
    h->stall_timeout = cfg->stall_timeout > 0 ? cfg->stall_timeout : DEFAULT_STALL_TIMEOUT;
    h->min_rate = cfg->min_rate > 0 ? cfg->min_rate : DEFAULT_MIN_RATE;
    h->coalesce_gap = cfg->coalesce_gap ? cfg->coalesce_gap : DEFAULT_COALESCE_GAP;
    h->max_request = cfg->max_request ? cfg->max_request : DEFAULT_MAX_REQUEST;
    h->progress = cfg->progress;
    h->progress_ctx = cfg->progress_ctx;
    h->rng = ((uint64_t)time(NULL) << 20) ^ (uint64_t)getpid() ^ 0x9e3779b97f4a7c15ULL;
    unsigned conns = cfg->max_host_conns ? cfg->max_host_conns : DEFAULT_MAX_HOST_CONNS;
    h->max_host_conns = conns;
    curl_multi_setopt(h->multi, CURLMOPT_PIPELINING, (long)CURLPIPE_MULTIPLEX);
    curl_multi_setopt(h->multi, CURLMOPT_MAX_HOST_CONNECTIONS, (long)conns);
    curl_multi_setopt(h->multi, CURLMOPT_MAXCONNECTS, (long)conns * 4);
    /* libcurl's default of 100 streams per connection is what HTTP/2 servers allow */
    curl_multi_setopt(h->multi, CURLMOPT_MAX_CONCURRENT_STREAMS, 100L);
out:
    if (err) {
        cks_http_free(h);
        h = NULL;
    }
    *out = h;
    return err;
}

void cks_http_free(cks_http *h)
{
    if (!h)
        return;
    while (h->n_spare > 0)
        curl_easy_cleanup(h->spare[--h->n_spare]);
    if (h->multi)
        curl_multi_cleanup(h->multi);
    if (h->aux_multi)
        curl_multi_cleanup(h->aux_multi);
    free(h->user_agent);
    free(h->ca_bundle);
    free(h->auth_origin);
    if (h->auth_header) {
        /* do not leave the token lying around in freed memory */
        volatile char *p = h->auth_header;
        while (*p)
            *p++ = 0;
        free(h->auth_header);
    }
    pthread_mutex_destroy(&h->socks_mu);
    free(h);
}

void cks_http_get_stats(const cks_http *h, cks_http_stats *out)
{
    memset(out, 0, sizeof *out);
    if (h)
        *out = h->stats;
}

void cks_http_response_release(cks_http_response *resp)
{
    if (!resp)
        return;
    free(resp->body);
    memset(resp, 0, sizeof *resp);
}

/* ---------------------------------------------------------------- callbacks ---- */

static void set_field(char *dst, size_t cap, const char *v, size_t n, bool *trunc)
{
    if (n >= cap) {
        n = cap - 1;
        *trunc = true;
    }
    memcpy(dst, v, n);
    dst[n] = '\0';
}

/* Header lines arrive one at a time, not NUL-terminated. A status line starts a fresh
 * response (interim 1xx responses come first). */
void cks_http_capture_header(cks_http_response *r, const char *line, size_t n)
{
    while (n && (line[n - 1] == '\r' || line[n - 1] == '\n'))
        n--;
    if (n >= 5 && strncmp(line, "HTTP/", 5) == 0) {
        char *body = r->body;
        size_t body_len = r->body_len;
        const char *sp = memchr(line, ' ', n);
        long code = 0;
        memset(r, 0, sizeof *r);
        r->body = body;
        r->body_len = body_len;
        /* "HTTP/x[.y] NNN[ reason]": exactly three digits (libcurl's value replaces it later) */
        if (sp && (size_t)(sp - line) + 4 <= n && isdigit((unsigned char)sp[1]) &&
            isdigit((unsigned char)sp[2]) && isdigit((unsigned char)sp[3]) &&
            ((size_t)(sp - line) + 4 == n || sp[4] == ' '))
            code = (sp[1] - '0') * 100 + (sp[2] - '0') * 10 + (sp[3] - '0');
        r->status = code;
        return;
    }
    const char *colon = memchr(line, ':', n);
    if (!colon)
        return;
    size_t klen = (size_t)(colon - line);
    const char *v = colon + 1;
    size_t vlen = n - klen - 1;
    while (vlen && (*v == ' ' || *v == '\t')) {
        v++;
        vlen--;
    }
    while (vlen && (v[vlen - 1] == ' ' || v[vlen - 1] == '\t'))
        vlen--;
    static const struct {
        const char *name;
        size_t off, cap;
    } fields[] = {
#define F(hname, member) {hname, offsetof(cks_http_response, member), sizeof(((cks_http_response *)0)->member)}
        F("location", location),
        F("x-repo-commit", x_repo_commit),
        F("x-linked-etag", x_linked_etag),
        F("x-linked-size", x_linked_size),
        F("etag", etag),
        F("content-length", content_length),
        F("content-range", content_range),
        F("content-type", content_type),
        F("x-error-code", x_error_code),
        F("x-error-message", x_error_message),
        F("retry-after", retry_after),
        F("ratelimit", ratelimit),
        F("link", link),
#undef F
    };
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++) {
        if (strlen(fields[i].name) == klen && strncasecmp(fields[i].name, line, klen) == 0) {
            set_field((char *)r + fields[i].off, fields[i].cap, v, vlen, &r->header_truncated);
            break;
        }
    }
}

static void ack_now(struct xfer *x);

static size_t on_header(char *p, size_t size, size_t nmemb, void *ud)
{
    struct xfer *x = ud;
    size_t n = size * nmemb;
    cks_http_capture_header(x->kind == XK_SIMPLE ? &x->req->resp : &x->at->hdr, p, n);
    /* The blank line that ends a header block: acknowledge the headers now. A server that
     * writes headers and body apart under Nagle's rule holds a body shorter than a segment
     * until they are acknowledged, so a delayed ACK cost 40 ms per small reply (config.json
     * from the fake Hub: 38 ms of a 0.12 s fetch; fault `nagle`). One syscall per reply. */
    if (n == 0 || p[0] == '\r' || p[0] == '\n')
        ack_now(x);
    return n;
}

static size_t pow2_at_least(size_t v)
{
    size_t p = 64;
    while (p < v && p <= SIZE_MAX / 2)
        p *= 2;
    return p < v ? v : p;
}

static size_t on_simple_body(char *p, size_t size, size_t nmemb, void *ud)
{
    struct xfer *x = ud;
    cks_http_response *r = &x->req->resp;
    size_t n = size * nmemb;
    size_t cap = x->req->max_body ? x->req->max_body : DEFAULT_MAX_BODY;
    if (r->body_len + n > cap) {
        /* stop reading: the caller said how much it can use */
        r->body_truncated = true;
        x->verdict = V_BODY_FULL;
        return 0;
    }
    /* capacity doubles (a power of two past body_len, so it needs no field of its own): a
     * 1.5 MB index arriving 16 KiB at a time was ~100 reallocs, each free to copy it all */
    size_t need = r->body_len + n + 1, have = r->body ? pow2_at_least(r->body_len + 1) : 0;
    if (need > have) {
        char *nb = realloc(r->body, pow2_at_least(need));
        if (!nb)
            return 0;
        r->body = nb;
    }
    char *nb = r->body;
    memcpy(nb + r->body_len, p, n);
    r->body_len += n;
    r->body[r->body_len] = '\0';
    return n;
}

static void scatter(struct xfer *x, uint64_t pos, const uint8_t *data, size_t n)
{
    uint64_t end = pos + n;
    size_t pe = x->span.piece_end;
    while (x->cursor < pe) {
        const cks_http_piece *pc = &x->pieces[x->order[x->cursor]];
        if (pc->offset + pc->length > pos)
            break;
        x->cursor++;
    }
    for (size_t i = x->cursor; i < pe; i++) {
        const cks_http_piece *pc = &x->pieces[x->order[i]];
        if (pc->offset >= end)
            break;
        uint64_t a = pc->offset > pos ? pc->offset : pos;
        uint64_t pend = pc->offset + pc->length;
        uint64_t b = pend < end ? pend : end;
        if (a < b)
            memcpy(pc->dst + (a - pc->offset), data + (a - pos), (size_t)(b - a));
    }
}

cks_range_reply cks_http_range_reply(long status, const char *content_range, int64_t content_length,
                                     uint64_t first, uint64_t last, uint64_t size,
                                     uint64_t *served_total)
{
    uint64_t a, b, t;
    *served_total = 0;
    if (status == 200) {
        /* The whole file was asked for and the whole file, of the announced size, is coming:
         * the body is exactly the range (small regular files are often served this way).
         * Anything else means the server sent the whole file: never mistake it for a part. */
        if (first == 0 && size > 0 && last == size - 1 && content_length >= 0 &&
            (uint64_t)content_length == size)
            return CKS_REPLY_WHOLE_AS_RANGE;
        return CKS_REPLY_IGNORED;
    }
    if (status != 206)
        return CKS_REPLY_NOT_DATA;
    if (!cks_http_parse_content_range(content_range, &a, &b, &t))
        return CKS_REPLY_BAD_RANGE;
    if (t != UINT64_MAX && t != size) {
        /* the server holds a file of another size: not the bytes of the file asked for */
        *served_total = t;
        return CKS_REPLY_OTHER_SIZE;
    }
    if (a != first || b != last || t != size)
        return CKS_REPLY_BAD_RANGE;
    if (content_length >= 0 && (uint64_t)content_length != last - first + 1) {
        /* the range is right; the length the reply gives its own body is not */
        *served_total = (uint64_t)content_length;
        return CKS_REPLY_BAD_LENGTH;
    }
    return CKS_REPLY_RANGE;
}

/*
 * Acknowledge what has arrived at once when more of the range is still to come. A request
 * and its reply look interactive to the kernel, so it delays its ACKs (40 ms); a server that
 * holds back a range's last, short segment until the earlier ones are acknowledged (Nagle's
 * rule, or nginx's tcp_nopush) then stalls every range longer than one segment by those
 * 40 ms (500 scattered ranges from nginx on loopback, one connection: 5 s instead of 0.2 s).
 * TCP_QUICKACK set while an ACK is pending sends it now; it is not sticky, so it is set again
 * after every write callback in the last ACK_NOW_TAIL bytes of a range, where such a tail can
 * be held back (only there: the body arrives in 16 KiB callbacks, and a syscall for each one
 * of a 2 GiB stream cost 0.9 s).
 */
static curl_socket_t tracked_socket_of(cks_http *h, CURL *easy)
{
    long port = 0;
    curl_socket_t fd = CURL_SOCKET_BAD;
    if (curl_easy_getinfo(easy, CURLINFO_LOCAL_PORT, &port) != CURLE_OK || port <= 0)
        return CURL_SOCKET_BAD;
    pthread_mutex_lock(&h->socks_mu);
    for (unsigned i = 0; i < h->n_socks && fd == CURL_SOCKET_BAD; i++) {
        struct tracked_socket *t = &h->socks[i];
        if (t->port == 0) { /* learnt once the socket is bound, on first use */
            struct sockaddr_storage sa;
            socklen_t len = sizeof sa;
            if (getsockname(t->fd, (struct sockaddr *)&sa, &len) == 0) {
                if (sa.ss_family == AF_INET)
                    t->port = ntohs(((struct sockaddr_in *)&sa)->sin_port);
                else if (sa.ss_family == AF_INET6)
                    t->port = ntohs(((struct sockaddr_in6 *)&sa)->sin6_port);
            }
        }
        if (t->port == (unsigned)port)
            fd = t->fd;
    }
    pthread_mutex_unlock(&h->socks_mu);
    return fd;
}

static void ack_now(struct xfer *x)
{
    int one = 1;
    if (x->sock == CURL_SOCKET_BAD)
        x->sock = tracked_socket_of(x->h, x->easy);
    if (x->sock != CURL_SOCKET_BAD)
        (void)setsockopt(x->sock, IPPROTO_TCP, TCP_QUICKACK, &one, sizeof one);
}

/* libcurl's socket callbacks: the engine's sockets, so ack_now can find a transfer's one */
static int on_socket_open(void *clientp, curl_socket_t fd, curlsocktype purpose)
{
    cks_http *h = clientp;
    if (purpose == CURLSOCKTYPE_IPCXN) {
        pthread_mutex_lock(&h->socks_mu);
        if (h->n_socks < TRACKED_SOCKETS) /* untracked beyond: those only ACK late */
            h->socks[h->n_socks++] = (struct tracked_socket){fd, 0};
        h->stats.connections++;
        pthread_mutex_unlock(&h->socks_mu);
    }
    return CURL_SOCKOPT_OK;
}

static int on_socket_close(void *clientp, curl_socket_t fd)
{
    cks_http *h = clientp;
    pthread_mutex_lock(&h->socks_mu);
    for (unsigned i = 0; i < h->n_socks; i++)
        if (h->socks[i].fd == fd) {
            h->socks[i] = h->socks[--h->n_socks];
            break;
        }
    pthread_mutex_unlock(&h->socks_mu);
    return close(fd);
}

static size_t on_range_body(char *p, size_t size, size_t nmemb, void *ud)
{
    struct xfer *x = ud;
    size_t n = size * nmemb;
    if (!x->validated) {
        long code = 0;
        curl_off_t cl = -1;
        curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &code);
        curl_easy_getinfo(x->easy, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &cl);
        x->status = code;
        x->validated = true;
        switch (cks_http_range_reply(code, x->at->hdr.content_range, (int64_t)cl, x->next, x->span.last,
                                     x->span.target->size, &x->served_total)) {
        case CKS_REPLY_RANGE:
            break;
        case CKS_REPLY_WHOLE_AS_RANGE:
            x->status = 206; /* counted and checked like a 206 from here on */
            break;
        case CKS_REPLY_IGNORED:
            x->verdict = V_IGNORED; /* hang up */
            return 0;
        case CKS_REPLY_OTHER_SIZE:
            x->verdict = V_SIZE;
            return 0;
        case CKS_REPLY_BAD_RANGE:
            x->verdict = V_BAD_RANGE;
            return 0;
        case CKS_REPLY_BAD_LENGTH:
            x->verdict = V_BAD_LENGTH;
            return 0;
        case CKS_REPLY_NOT_DATA:
            break;
        }
    }
    if (x->status != 206) {
        /* an error page: keep its start for the diagnostic, count the rest */
        size_t room = sizeof x->at->errbody - 1 - x->at->errbody_len;
        size_t k = n < room ? n : room;
        memcpy(x->at->errbody + x->at->errbody_len, p, k);
        x->at->errbody_len += k;
        x->at->errbody[x->at->errbody_len] = '\0';
        return n;
    }
    if (n > x->expect - x->got) {
        x->verdict = V_TOO_LONG;
        return 0;
    }
    scatter(x, x->next + x->got, (const uint8_t *)p, n);
    x->got += n;
    if (x->got < x->expect && x->expect - x->got <= ACK_NOW_TAIL)
        ack_now(x);
    return n;
}

/* ---------------------------------------------------------------- transfers ---- */

static bool same_origin_as_auth(cks_http *h, const char *url)
{
    char *origin = NULL;
    bool same = false;
    if (!h->auth_header || !h->auth_origin)
        return false;
    if (cks_http_origin(url, &origin, NULL) == CKS_OK)
        same = strcmp(origin, h->auth_origin) == 0;
    free(origin);
    return same;
}

static void xfer_reset_attempt(struct xfer *x)
{
    x->status = 0;
    x->validated = false;
    x->verdict = V_NONE;
    x->got = 0;
    x->sock = CURL_SOCKET_BAD;
    x->at->errbody_len = 0;
    x->at->errbody[0] = '\0';
    x->at->curl_err[0] = '\0';
    memset(&x->at->hdr, 0, sizeof x->at->hdr);
    if (x->kind == XK_SIMPLE)
        cks_http_response_release(&x->req->resp);
    if (x->kind == XK_RANGE) {
        x->cursor = x->span.piece_begin;
        x->expect = x->span.last - x->next + 1;
    }
}

/*
 * libcurl 7.88 allocates a transfer's receive buffer when it starts and frees it when it is
 * done. 256 KiB keeps a long stream to few recv calls. A shorter range gets libcurl's own
 * 16 KiB: the kernel writes each range's bytes into that buffer before our callback copies
 * them out, and a buffer the size of the range was fresh memory touched page by page (a third
 * of a 500-tensor fetch's page faults, 930 of 2,900), where a 16 KiB one comes back from
 * malloc already touched: a cold scattered fetch took 0.95x the wall and 0.94x the CPU
 * (farm-bench, 30 pairs), for a few more recv calls on ranges between 16 and 256 KiB.
 */
static long receive_buffer_size(const struct xfer *x)
{
    const uint64_t stream = 256u * 1024u, small = 16u * 1024u;
    return (long)(x->kind != XK_RANGE || x->expect >= stream ? stream : small);
}

/* What libcurl said went wrong with this attempt, or its code's generic text. */
static const char *transfer_error(const struct xfer *x, CURLcode rc)
{
    return x->at->curl_err[0] ? x->at->curl_err : curl_easy_strerror(rc);
}

static cks_err xfer_start(cks_http *h, CURLM *m, struct xfer *x, cks_diag *diag)
{
    cks_err err = CKS_OK;
    const char *url;
    char range[64];
    if (!x->at && !(x->at = malloc(sizeof *x->at))) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory starting a transfer");
        goto out;
    }
    xfer_reset_attempt(x);
    if (x->kind == XK_RANGE) {
        cks_http_target *t = x->span.target;
        /* A signed URL about to expire is refreshed before use, not after a 403. */
        if (!t->url || (t->expires_at > 0 && wall_now() + EXPIRY_MARGIN > t->expires_at)) {
            if (!t->refresh) {
                err = cks_fail(diag, CKS_ERR_INVALID_ARG, "%s: no URL to read from", t->name);
                goto out;
            }
            err = t->refresh(t->refresh_ctx, t, 0, diag);
            if (err)
                goto out;
        }
        url = t->url;
    } else {
        url = x->req->url;
    }
    if (!x->easy && h->n_spare > 0)
        x->easy = h->spare[--h->n_spare];
    if (!x->easy)
        x->easy = curl_easy_init();
    else
        curl_easy_reset(x->easy);
    curl_slist_free_all(x->hdrs);
    x->hdrs = NULL;
    if (!x->easy) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory creating a transfer");
        goto out;
    }
    CURL *e = x->easy;
    x->h = h;
    curl_easy_setopt(e, CURLOPT_URL, url);
    curl_easy_setopt(e, CURLOPT_SOCKOPTFUNCTION, on_socket_open);
    curl_easy_setopt(e, CURLOPT_SOCKOPTDATA, h);
    curl_easy_setopt(e, CURLOPT_CLOSESOCKETFUNCTION, on_socket_close);
    curl_easy_setopt(e, CURLOPT_CLOSESOCKETDATA, h);
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(e, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_USERAGENT, h->user_agent);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT, h->connect_timeout);
    curl_easy_setopt(e, CURLOPT_LOW_SPEED_LIMIT, h->min_rate);
    curl_easy_setopt(e, CURLOPT_LOW_SPEED_TIME, h->stall_timeout);
    curl_easy_setopt(e, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_2TLS);
    /* Waiting for a connection in progress pays when it may multiplex (HTTP/2, negotiated
     * only over TLS here); in clear text it made the second of two parallel requests wait a
     * round trip for the first to finish, then take its connection. */
    curl_easy_setopt(e, CURLOPT_PIPEWAIT, strncasecmp(url, "https://", 8) == 0 ? 1L : 0L);
    curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(e, CURLOPT_BUFFERSIZE, receive_buffer_size(x));
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, x->at->curl_err);
    curl_easy_setopt(e, CURLOPT_PRIVATE, x);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, x);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, x);
    if (h->ca_bundle)
        curl_easy_setopt(e, CURLOPT_CAINFO, h->ca_bundle);
    /* Content-Length and Content-Range must describe the stored bytes, so no encodings. */
    x->hdrs = curl_slist_append(x->hdrs, "Accept-Encoding: identity");
    if (same_origin_as_auth(h, url))
        x->hdrs = curl_slist_append(x->hdrs, h->auth_header);
    if (x->kind == XK_RANGE) {
        snprintf(range, sizeof range, "Range: bytes=%" PRIu64 "-%" PRIu64, x->next, x->span.last);
        x->hdrs = curl_slist_append(x->hdrs, range);
        curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_range_body);
    } else {
        if (x->req->accept) {
            char acc[256];
            snprintf(acc, sizeof acc, "Accept: %s", x->req->accept);
            x->hdrs = curl_slist_append(x->hdrs, acc);
        }
        if (x->req->range) {
            snprintf(range, sizeof range, "Range: %s", x->req->range);
            x->hdrs = curl_slist_append(x->hdrs, range);
        }
        curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_simple_body);
        if (strcmp(x->req->method, "HEAD") == 0)
            curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
    }
    if (!x->hdrs) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory building request headers");
        goto out;
    }
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, x->hdrs);
    if (curl_multi_add_handle(m, e) != CURLM_OK) {
        err = cks_fail(diag, CKS_ERR_NETWORK, "libcurl refused a transfer");
        goto out;
    }
    x->active = true;
    h->stats.requests++;
    if (x->attempts > 0)
        h->stats.retries++;
out:
    return err;
}

static bool curl_is_tls(CURLcode rc)
{
    switch (rc) {
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CIPHER:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_ISSUER_ERROR:
    case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
    case CURLE_SSL_INVALIDCERTSTATUS:
    case CURLE_SSL_ENGINE_NOTFOUND:
    case CURLE_SSL_ENGINE_SETFAILED:
    case CURLE_SSL_CRL_BADFILE:
    case CURLE_USE_SSL_FAILED:
        return true;
    default:
        return false;
    }
}

/*
 * A name that does not resolve is not retried: it means no network (or a mistyped host), and
 * the retries with backoff only made the user wait ~8 s to hear it. The hint names --offline,
 * which answers from the cache.
 */
static bool curl_is_dns(CURLcode rc)
{
    return rc == CURLE_COULDNT_RESOLVE_HOST || rc == CURLE_COULDNT_RESOLVE_PROXY;
}

static cks_err dns_fail(cks_diag *diag, const char *shown, const char *detail)
{
    return cks_fail(diag, CKS_ERR_NETWORK,
                    "cannot resolve the host of %s (%s): no network, or no DNS? To work from what is already "
                    "cached, use --offline (or HF_HUB_OFFLINE=1)",
                    shown, detail);
}

static bool status_retryable(long s)
{
    return s == 408 || s == 429 || s == 500 || s == 502 || s == 503 || s == 504;
}

/* How long the server asked us to wait, or -1. */
static double server_wait(const cks_http_response *r)
{
    double s;
    if (r->retry_after[0] && cks_http_parse_retry_after(r->retry_after, wall_now(), &s))
        return s;
    if (r->ratelimit[0] && cks_http_parse_ratelimit(r->ratelimit, &s))
        return s;
    return -1;
}

static void format_until(double wait, char *out, size_t cap)
{
    time_t at = (time_t)(wall_now() + wait + 0.5);
    struct tm tm;
    gmtime_r(&at, &tm);
    strftime(out, cap, "%H:%M:%S UTC", &tm);
}

/*
 * Decide when to try again. Returns false (and fills x->err) when the request must not be
 * retried: too many attempts, or the server asks for a longer wait than we accept.
 */
static bool schedule_retry(cks_http *h, struct xfer *x, const cks_http_response *r,
                           const char *what)
{
    double srv = r ? server_wait(r) : -1;
    double wait;
    char until[32];
    x->attempts++;
    if (srv > h->max_retry_wait || x->attempts >= h->max_attempts) {
        bool limited = r && x->status == 429;
        if (limited) {
            if (srv >= 0) {
                format_until(srv, until, sizeof until);
                x->err = cks_fail(&x->diag, CKS_ERR_RATE_LIMITED,
                                  "rate limited by the server (429) — retry after %.0f s "
                                  "(at %s)%s",
                                  srv, until,
                                  x->attempts >= h->max_attempts ? "; gave up after retries" : "");
            } else {
                x->err = cks_fail(&x->diag, CKS_ERR_RATE_LIMITED,
                                  "rate limited by the server (429) after %u attempts, and it "
                                  "did not say for how long; wait a few minutes and retry",
                                  x->attempts);
            }
        } else {
            x->err = cks_fail(&x->diag, CKS_ERR_NETWORK, "%s; gave up after %u attempts", what,
                              x->attempts);
        }
        return false;
    }
    wait = cks_http_backoff(h->backoff_base, x->attempts, rand01(h));
    if (srv > wait)
        wait = srv + 0.05 * rand01(h);
    x->not_before = mono_now() + wait;
    return true;
}

static void finish_simple(cks_http *h, struct xfer *x, CURLcode rc)
{
    cks_http_response *r = &x->req->resp;
    char shown[512];
    long code = 0;
    curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &code);
    r->status = code;
    x->status = code;
    url_for_diag(x->req->url, shown, sizeof shown);
    if (rc == CURLE_WRITE_ERROR && x->verdict == V_BODY_FULL)
        rc = CURLE_OK;
    if (rc != CURLE_OK) {
        if (curl_is_dns(rc)) {
            x->err = dns_fail(&x->diag, shown, transfer_error(x, rc));
            x->done = true;
            goto out;
        }
        if (curl_is_tls(rc)) {
            x->err = cks_fail(&x->diag, CKS_ERR_TLS,
                              "TLS failure talking to %s: %s (set CKPTSCOPE_CA_BUNDLE or "
                              "CURL_CA_BUNDLE if you use a private CA)",
                              shown, transfer_error(x, rc));
            x->done = true;
            goto out;
        }
        char what[1100];
        snprintf(what, sizeof what, "%s %s: %s", x->req->method, shown,
                 transfer_error(x, rc));
        if (!schedule_retry(h, x, NULL, what))
            x->done = true;
        goto out;
    }
    if (status_retryable(code)) {
        char what[1100];
        snprintf(what, sizeof what, "%s %s: HTTP %ld", x->req->method, shown, code);
        if (!schedule_retry(h, x, r, what)) {
            /* the status itself is the answer; let the caller map it (e.g. 429) */
            if (x->err != CKS_ERR_RATE_LIMITED) {
                x->err = CKS_OK;
                x->diag.text[0] = '\0';
            }
            x->done = true;
        }
        goto out;
    }
    x->done = true;
out:
    return;
}

/* What an error reply says about itself: X-Error-Message, else the <Code>/<Message> of an
 * S3-style XML body (CloudFront, S3), cleaned of control characters; "" when nothing. */
static void error_reason(const struct xfer *x, char *out, size_t cap)
{
    const char *src = x->at->hdr.x_error_message;
    char tmp[256] = "";
    if (!src[0]) {
        const char *c = strstr(x->at->errbody, "<Code>"), *m = strstr(x->at->errbody, "<Message>");
        const char *ce = c ? strstr(c, "</Code>") : NULL, *me = m ? strstr(m, "</Message>") : NULL;
        if (c && ce && m && me)
            snprintf(tmp, sizeof tmp, "%.*s, %.*s", (int)(ce - c - 6), c + 6, (int)(me - m - 9), m + 9);
        else if (c && ce)
            snprintf(tmp, sizeof tmp, "%.*s", (int)(ce - c - 6), c + 6);
        src = tmp;
    }
    size_t k = 0;
    for (const char *p = src; *p && k + 1 < cap; p++)
        out[k++] = (unsigned char)*p < 0x20 || *p == 0x7f ? ' ' : *p;
    out[k] = '\0';
}

static void finish_range(cks_http *h, struct xfer *x, CURLcode rc)
{
    cks_http_target *t = x->span.target;
    char shown[512];
    long code = x->status;
    if (!x->validated)
        curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &code);
    x->status = code;
    url_for_diag(t->url, shown, sizeof shown);
    h->stats.bytes_fetched += x->got + x->at->errbody_len;

    bool too_slow = rc == CURLE_OPERATION_TIMEDOUT;
    /* A reply whose body ran past its Content-Range is refused whole below, also when every
     * byte asked for came before the excess (the excess then arrives in a read of its own,
     * after the range looked complete): it is no progress to resume from. */
    if (x->got > 0 && x->verdict != V_TOO_LONG) {
        /* progress: the next attempt resumes after the bytes we have; but an attempt cut for
         * being too slow still counts against the limit, or a server dripping a few bytes per
         * window would be retried forever */
        x->next += x->got;
        if (!too_slow)
            x->attempts = 0;
        x->refreshes = 0;
        if (x->next > x->span.last) {
            x->done = true;
            goto out;
        }
    }
    if (x->verdict == V_SIZE) {
        x->err = cks_fail(&x->diag, CKS_ERR_SERVED_SIZE,
                          "%s: ServedSizeMismatch: the server says the file has %" PRIu64 " bytes "
                          "(Content-Range '%s'), but the Hub lists %" PRIu64 "; refusing bytes "
                          "of a file that is not the one listed",
                          t->name, x->served_total, x->at->hdr.content_range, t->size);
        x->done = true;
        goto out;
    }
    if (x->verdict == V_IGNORED) {
        x->err = cks_fail(&x->diag, CKS_ERR_RANGE_IGNORED,
                          "%s: the server ignored the Range header (asked bytes=%" PRIu64
                          "-%" PRIu64 ", got 200 with the whole file); ckptscope never reads "
                          "a whole file in place of a range — use a server that honours Range",
                          t->name, x->next, x->span.last);
        x->done = true;
        goto out;
    }
    if (x->verdict == V_BAD_RANGE) {
        x->err = cks_fail(&x->diag, CKS_ERR_RANGE_IGNORED,
                          "%s: the server answered bytes=%" PRIu64 "-%" PRIu64
                          " (file of %" PRIu64 " bytes) with 206 but 'Content-Range: %s'; "
                          "refusing bytes that may not be the ones asked for",
                          t->name, x->next, x->span.last, t->size,
                          x->at->hdr.content_range[0] ? x->at->hdr.content_range : "(missing)");
        x->done = true;
        goto out;
    }
    if (x->verdict == V_BAD_LENGTH || x->verdict == V_TOO_LONG) {
        /* the Content-Range is the one asked for: it is the body that contradicts it */
        char sent[64];
        if (x->verdict == V_BAD_LENGTH)
            snprintf(sent, sizeof sent, "a Content-Length of %" PRIu64 " bytes", x->served_total);
        else
            snprintf(sent, sizeof sent, "a body running past them");
        x->err = cks_fail(&x->diag, CKS_ERR_RANGE_IGNORED,
                          "%s: the server's reply to bytes=%" PRIu64 "-%" PRIu64 " carries the "
                          "right 'Content-Range: %s' (%" PRIu64 " bytes) but %s; refusing a "
                          "reply whose body does not match its own headers",
                          t->name, x->next, x->span.last, x->at->hdr.content_range, x->expect, sent);
        x->done = true;
        goto out;
    }
    if (rc != CURLE_OK && curl_is_dns(rc)) {
        x->err = dns_fail(&x->diag, shown, transfer_error(x, rc));
        x->done = true;
        goto out;
    }
    if (rc != CURLE_OK && curl_is_tls(rc)) {
        x->err = cks_fail(&x->diag, CKS_ERR_TLS, "TLS failure reading %s from %s: %s", t->name,
                          shown, transfer_error(x, rc));
        x->done = true;
        goto out;
    }
    if (rc != CURLE_OK || (code == 206 && x->got < x->expect)) {
        /* reset, stall, short body: resume from x->next */
        char what[1400];
        char slow[160] = "";
        if (too_slow)
            snprintf(slow, sizeof slow,
                     "the server sent %" PRIu64 " bytes, under %ld bytes/s for %ld s (set "
                     "CKPTSCOPE_MIN_RATE and CKPTSCOPE_STALL_TIMEOUT to change the limit)",
                     x->got, h->min_rate, h->stall_timeout);
        snprintf(what, sizeof what, "%s: reading bytes %" PRIu64 "-%" PRIu64 " from %s: %s",
                 t->name, x->next, x->span.last, shown,
                 too_slow ? slow
                 : rc != CURLE_OK ? (transfer_error(x, rc))
                                  : "the body ended early");
        if (!schedule_retry(h, x, NULL, what))
            x->done = true;
        goto out;
    }
    if (code == 206) {
        /* got == expect handled above; an empty 206 for a non-empty range is a bad reply */
        x->err = cks_fail(&x->diag, CKS_ERR_RANGE_IGNORED, "%s: 206 without a body", t->name);
        x->done = true;
        goto out;
    }
    if (code == 403 && t->refresh && x->refreshes < 2) {
        /* A signed URL expired (or was revoked): ask the Hub for a fresh one. */
        cks_diag d;
        x->refreshes++;
        cks_err err = t->refresh(t->refresh_ctx, t, code, &d);
        if (err) {
            x->err = err;
            x->diag = d;
            x->done = true;
        }
        goto out; /* retried at once with the new URL */
    }
    if (status_retryable(code)) {
        char what[1400];
        snprintf(what, sizeof what, "%s: HTTP %ld from %s", t->name, code, shown);
        if (!schedule_retry(h, x, &x->at->hdr, what))
            x->done = true;
        goto out;
    }
    uint64_t f416, l416, t416;
    if (code == 416 && cks_http_parse_content_range(x->at->hdr.content_range, &f416, &l416, &t416) &&
        t416 != UINT64_MAX && t416 != t->size) {
        x->err = cks_fail(&x->diag, CKS_ERR_SERVED_SIZE,
                          "%s: ServedSizeMismatch: range bytes=%" PRIu64 "-%" PRIu64 " not "
                          "satisfiable (416, Content-Range '%s'): the server holds %" PRIu64
                          " bytes, the Hub lists %" PRIu64,
                          t->name, x->next, x->span.last, x->at->hdr.content_range, t416, t->size);
    } else if (code == 416) {
        x->err = cks_fail(&x->diag, CKS_ERR_HTTP,
                          "%s: range bytes=%" PRIu64 "-%" PRIu64 " not satisfiable (416, "
                          "Content-Range '%s'); the file is not the %" PRIu64 " bytes the Hub "
                          "announced",
                          t->name, x->next, x->span.last, x->at->hdr.content_range, t->size);
    } else if (code == 404 || code == 410) {
        x->err = cks_fail(&x->diag, CKS_ERR_FILE_NOT_FOUND, "%s: HTTP %ld from %s", t->name,
                          code, shown);
    } else if ((code == 401 || code == 403) && same_origin_as_auth(h, t->url)) {
        x->err = cks_fail(&x->diag, CKS_ERR_AUTH,
                          "%s: HTTP %ld from %s%s%s", t->name, code, shown,
                          x->at->hdr.x_error_message[0] ? ": " : "", x->at->hdr.x_error_message);
    } else if (code == 401 || code == 403) {
        /* No token goes to this host (the CDN a download is redirected to), so the token is
         * not what it refuses: its signed URL kept failing after fresh ones were asked for. */
        char why[256];
        error_reason(x, why, sizeof why);
        x->err = cks_fail(&x->diag, CKS_ERR_DENIED,
                          "%s: the data server %s refused the download (HTTP %ld%s%s) even with a "
                          "freshly signed URL; no token is sent to it, so this is not about your "
                          "token: the file may be blocked there or the server misconfigured — "
                          "retry later, or report it to the repository's owner",
                          t->name, shown, code, why[0] ? ": " : "", why);
    } else {
        x->err = cks_fail(&x->diag, CKS_ERR_HTTP, "%s: unexpected HTTP %ld from %s for bytes=%"
                          PRIu64 "-%" PRIu64, t->name, code, shown, x->next, x->span.last);
    }
    x->done = true;
out:
    return;
}

/* Learn the link: time to first byte (a round trip plus server time) and the protocol. */
static void measure(cks_http *h, struct xfer *x, CURLcode rc)
{
    curl_off_t pre = 0, start = 0;
    long ver = 0;
    if (rc != CURLE_OK)
        return;
    if (curl_easy_getinfo(x->easy, CURLINFO_PRETRANSFER_TIME_T, &pre) == CURLE_OK &&
        curl_easy_getinfo(x->easy, CURLINFO_STARTTRANSFER_TIME_T, &start) == CURLE_OK &&
        start > pre) {
        double ttfb = (double)(start - pre) / 1e6;
        h->rtt_est = h->rtt_est > 0 ? 0.8 * h->rtt_est + 0.2 * ttfb : ttfb;
        if (x->kind == XK_RANGE && (h->range_ttfb_min <= 0 || ttfb < h->range_ttfb_min))
            h->range_ttfb_min = ttfb;
    }
    if (x->kind == XK_RANGE) {
        h->run_bytes += x->got;
        if (curl_easy_getinfo(x->easy, CURLINFO_HTTP_VERSION, &ver) == CURLE_OK)
            h->multiplexed = ver >= CURL_HTTP_VERSION_2_0;
    }
}

/* The counters so far, with the bytes of ranges still arriving (the stats count a transfer
 * when it ends, so one large range would otherwise show no progress until it is whole). */
static void report_progress(cks_http *h, const struct xfer *xs, size_t n, double t0, bool force)
{
    double now = mono_now();
    if (!h->progress || (!force && now - h->last_progress < 0.2))
        return;
    h->last_progress = now;
    cks_http_stats s = h->stats;
    for (size_t i = 0; i < n; i++)
        if (xs[i].kind == XK_RANGE && xs[i].active && !xs[i].done)
            s.bytes_fetched += xs[i].got;
    s.seconds += now - t0;
    h->progress(h->progress_ctx, &s);
}

/* A range request is complete: every piece whose last bytes it brought is reported. */
static void report_pieces(struct xfer *x)
{
    if (!x->piece_left) /* allocated only with a piece_done */
        return;
    for (size_t k = x->span.piece_begin; k < x->span.piece_end; k++) {
        size_t i = x->order[k];
        const cks_http_piece *p = &x->pieces[i];
        uint64_t a = p->offset > x->span.first ? p->offset : x->span.first;
        uint64_t b = p->offset + p->length - 1 < x->span.last ? p->offset + p->length - 1 : x->span.last;
        if (p->length == 0 || a > b || x->piece_left[i] == 0)
            continue;
        x->piece_left[i] -= b - a + 1 < x->piece_left[i] ? b - a + 1 : x->piece_left[i];
        if (x->piece_left[i] == 0)
            x->piece_done(x->piece_ctx, i);
    }
}

/* How many range transfers to keep in flight (cks_http_range_parallel, in http_plan.c). */
static unsigned range_parallel(const cks_http *h)
{
    return cks_http_range_parallel(h->range_ttfb_min, h->max_parallel);
}

/*
 * Drive transfers until all are done. With `stop_on_error`, the first transfer that fails
 * for good ends the run (the others are abandoned) and its error is returned.
 */
static cks_err run(cks_http *h, struct xfer *xs, size_t n, bool stop_on_error, cks_diag *diag)
{
    cks_err err = CKS_OK;
    double t0 = mono_now();
    size_t n_done = 0, n_active = 0;
    size_t first_undone = 0;
    CURLM *m = h->multi;

    if (h->depth > 0) {
        /* A URL refresh runs while range transfers sit on the main handle; keep their
         * completions out of this loop by using a handle of its own. */
        if (!h->aux_multi)
            h->aux_multi = curl_multi_init();
        m = h->aux_multi;
        if (!m)
            return cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
    }
    h->depth++;
    if (h->depth == 1)
        h->run_bytes = 0;

    while (n_done < n) {
        double now = mono_now();
        double soonest = -1;
        /* re-read each turn: the batch's own first replies may time the data server */
        unsigned cap = n > 0 && xs[0].kind == XK_RANGE ? range_parallel(h) : h->max_parallel;
        for (size_t i = first_undone; i < n && n_active < cap; i++) {
            struct xfer *x = &xs[i];
            if (x->done || x->active)
                continue;
            if (x->not_before > now) {
                if (soonest < 0 || x->not_before < soonest)
                    soonest = x->not_before;
                continue;
            }
            cks_diag d;
            cks_err e = xfer_start(h, m, x, &d);
            if (e) {
                x->err = e;
                x->diag = d;
                x->done = true;
                n_done++;
                if (stop_on_error) {
                    err = e;
                    if (diag)
                        *diag = d;
                    goto out;
                }
                continue;
            }
            n_active++;
        }
        while (first_undone < n && xs[first_undone].done)
            first_undone++;
        if (n_done >= n)
            break;

        int running = 0;
        if (curl_multi_perform(m, &running) != CURLM_OK) {
            err = cks_fail(diag, CKS_ERR_NETWORK, "libcurl multi interface failed");
            goto out;
        }
        CURLMsg *msg;
        int left;
        while ((msg = curl_multi_info_read(m, &left))) {
            if (msg->msg != CURLMSG_DONE)
                continue;
            struct xfer *x = NULL;
            CURLcode rc = msg->data.result;
            curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&x);
            curl_multi_remove_handle(m, msg->easy_handle);
            x->active = false;
            n_active--;
            measure(h, x, rc);
            if (x->kind == XK_SIMPLE)
                finish_simple(h, x, rc);
            else
                finish_range(h, x, rc);
            if (x->done && !x->err && x->kind == XK_RANGE)
                report_pieces(x);
            if (x->done) {
                n_done++;
                if (x->easy) /* the handle outlives the attempt's error buffer */
                    curl_easy_setopt(x->easy, CURLOPT_ERRORBUFFER, NULL);
                free(x->at);
                x->at = NULL;
                if (x->easy && h->n_spare < SPARE_EASY) { /* for the next transfer */
                    h->spare[h->n_spare++] = x->easy;
                    x->easy = NULL;
                }
                if (x->err && stop_on_error) {
                    err = x->err;
                    if (diag)
                        *diag = x->diag;
                    goto out;
                }
            }
        }
        report_progress(h, xs, n, t0, false);
        if (n_done >= n)
            break;

        int timeout_ms = 200;
        now = mono_now();
        if (soonest >= 0) {
            double w = (soonest - now) * 1000.0;
            if (w < timeout_ms)
                timeout_ms = w < 1 ? 1 : (int)w;
        }
        if (n_active == 0) {
            /* nothing on the wire: sleep until the next retry is due */
            if (soonest >= 0 && soonest > now)
                usleep((useconds_t)((soonest - now) * 1e6));
            continue;
        }
        curl_multi_poll(m, NULL, 0, timeout_ms, NULL);
    }
out:
    for (size_t i = 0; i < n; i++) {
        if (xs[i].active) {
            curl_multi_remove_handle(m, xs[i].easy);
            xs[i].active = false;
        }
    }
    h->depth--;
    double took = mono_now() - t0;
    h->stats.seconds += took;
    if (h->depth == 0 && h->run_bytes >= 1024u * 1024u && took > 0) {
        /* a run that moved at least 1 MiB says something about the link's bandwidth */
        double bw = (double)h->run_bytes / took;
        h->bw_est = h->bw_est > 0 ? 0.5 * h->bw_est + 0.5 * bw : bw;
    }
    report_progress(h, xs, 0, mono_now(), true);
    return err;
}

static void xfers_release(struct xfer *xs, size_t n)
{
    if (!xs)
        return;
    for (size_t i = 0; i < n; i++) {
        if (xs[i].easy)
            curl_easy_cleanup(xs[i].easy);
        curl_slist_free_all(xs[i].hdrs);
        free(xs[i].at);
    }
    free(xs);
}

cks_err cks_http_request_many(cks_http *h, cks_http_request *reqs, size_t n, cks_diag *diag)
{
    cks_err err = CKS_OK;
    struct xfer *xs = NULL;
    if (n == 0)
        goto out;
    xs = calloc(n, sizeof *xs);
    if (!xs) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        memset(&reqs[i].resp, 0, sizeof reqs[i].resp);
        reqs[i].err = CKS_OK;
        reqs[i].diag.text[0] = '\0';
        if (!reqs[i].method || (strcmp(reqs[i].method, "GET") && strcmp(reqs[i].method, "HEAD"))) {
            err = cks_fail(diag, CKS_ERR_INVALID_ARG, "only GET and HEAD are supported");
            goto out;
        }
        xs[i].kind = XK_SIMPLE;
        xs[i].req = &reqs[i];
    }
    err = run(h, xs, n, false, diag);
    if (err)
        goto out;
    for (size_t i = 0; i < n; i++) {
        reqs[i].err = xs[i].err;
        reqs[i].diag = xs[i].diag;
        if (xs[i].err && !err) {
            err = xs[i].err;
            if (diag)
                *diag = xs[i].diag;
        }
    }
out:
    xfers_release(xs, n);
    return err;
}

/* ---------------------------------------------------------------- planning ---- */

/* The pure planner (cks_http_plan, cks_http_plan_cost) is in http_plan.c. */

/*
 * Coalescing trades bandwidth for round trips: reading a gap costs gap/bandwidth, a separate
 * request costs nothing extra while it runs in parallel with the others and a round trip
 * once the requests outnumber the connections (or streams). So try gaps from "touching
 * only" up to coalesce_gap and keep the plan with the lowest estimated time.
 */
static cks_err choose_plan(cks_http *h, const cks_http_piece *pieces, size_t n, size_t *order,
                           cks_http_span **best, size_t *n_best, cks_diag *diag)
{
    cks_err err = CKS_OK;
    double rtt = h->rtt_est > 0 ? h->rtt_est : DEFAULT_RTT;
    double bw = h->bw_est > 0 ? h->bw_est : DEFAULT_BANDWIDTH;
    unsigned in_flight = range_parallel(h);
    unsigned parallel = h->multiplexed || h->max_host_conns >= in_flight ? in_flight : h->max_host_conns;
    double best_cost = 0;
    *best = NULL;
    *n_best = 0;
    for (uint64_t gap = 0;; gap = gap ? gap * 4 : 4096) {
        cks_http_span *sp = NULL;
        size_t ns = 0;
        uint64_t g = gap < h->coalesce_gap ? gap : h->coalesce_gap;
        err = cks_http_plan(pieces, n, g, h->max_request, order, &sp, &ns, diag);
        if (err)
            goto out;
        uint64_t bytes = 0;
        for (size_t i = 0; i < ns; i++)
            bytes += sp[i].last - sp[i].first + 1;
        double cost = cks_http_plan_cost(ns, bytes, parallel, rtt, bw);
        if (!*best || cost < best_cost) {
            free(*best);
            *best = sp;
            *n_best = ns;
            best_cost = cost;
        } else {
            free(sp);
        }
        if (g >= h->coalesce_gap || ns <= 1)
            break;
    }
out:
    if (err) {
        free(*best);
        *best = NULL;
        *n_best = 0;
    }
    return err;
}

cks_err cks_http_fetch(cks_http *h, cks_http_piece *pieces, size_t n, cks_diag *diag)
{
    return cks_http_fetch_notify(h, pieces, n, NULL, NULL, diag);
}

cks_err cks_http_fetch_notify(cks_http *h, cks_http_piece *pieces, size_t n, cks_http_piece_done_fn done,
                              void *ctx, cks_diag *diag)
{
    cks_err err = CKS_OK;
    size_t *order = NULL;
    uint64_t *left = NULL;
    cks_http_span *spans = NULL;
    size_t ns = 0;
    struct xfer *xs = NULL;
    if (n == 0)
        goto out;
    order = malloc(n * sizeof *order);
    left = done ? malloc(n * sizeof *left) : NULL;
    if (!order || (done && !left)) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        goto out;
    }
    for (size_t i = 0; left && i < n; i++)
        left[i] = pieces[i].length;
    err = choose_plan(h, pieces, n, order, &spans, &ns, diag);
    if (err || ns == 0)
        goto out;
    size_t nonempty = 0;
    for (size_t i = 0; i < n; i++)
        nonempty += pieces[i].length > 0;
    if (nonempty > ns)
        h->stats.coalesced += nonempty - ns;
    xs = calloc(ns, sizeof *xs);
    if (!xs) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < ns; i++) {
        xs[i].kind = XK_RANGE;
        xs[i].span = spans[i];
        xs[i].next = spans[i].first;
        xs[i].pieces = pieces;
        xs[i].order = order;
        xs[i].piece_left = left;
        xs[i].piece_done = done;
        xs[i].piece_ctx = ctx;
        h->stats.bytes_planned += spans[i].last - spans[i].first + 1;
    }
    err = run(h, xs, ns, true, diag);
out:
    xfers_release(xs, ns);
    free(spans);
    free(order);
    free(left);
    return err;
}
