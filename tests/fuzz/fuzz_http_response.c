/*
 * Fuzz target: what the range engine takes from a server before it takes a body byte — the
 * status line and headers as libcurl delivers them line by line (cks_http_capture_header),
 * Content-Range, Retry-After and RateLimit values, and the verdict on a ranged reply
 * (cks_http_range_reply).
 *
 * Input: 12 bytes choosing the range asked for (first, length, file size; small numbers so
 * the fuzzer can hit them), then the response head, one header per line. Invariants: every
 * stored header is NUL-terminated within its field; a parsed Content-Range is ordered; a
 * verdict that lets body bytes through means the headers say exactly the range asked for.
 */
#include <inttypes.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ckptscope/http.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static uint32_t u32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

#define FIELD_OK(r, f) (memchr((r)->f, '\0', sizeof (r)->f) != NULL)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    cks_http_response r;
    uint64_t first, last, fsize, a, b, t, served;
    double secs;
    if (size < 12)
        return 0;
    fsize = 1 + u32(data + 8) % 100000;
    first = u32(data) % fsize;
    last = first + u32(data + 4) % (fsize - first);
    memset(&r, 0, sizeof r);
    const char *p = (const char *)data + 12, *end = (const char *)data + size;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t n = nl ? (size_t)(nl - p) + 1 : (size_t)(end - p);
        cks_http_capture_header(&r, p, n);
        p += n;
    }
    if (!FIELD_OK(&r, location) || !FIELD_OK(&r, x_repo_commit) || !FIELD_OK(&r, x_linked_etag) ||
        !FIELD_OK(&r, x_linked_size) || !FIELD_OK(&r, etag) || !FIELD_OK(&r, content_length) ||
        !FIELD_OK(&r, content_range) || !FIELD_OK(&r, content_type) || !FIELD_OK(&r, x_error_code) ||
        !FIELD_OK(&r, x_error_message) || !FIELD_OK(&r, retry_after) || !FIELD_OK(&r, ratelimit) ||
        !FIELD_OK(&r, link))
        __builtin_trap(); /* a header value ran past its field */
    if (r.status < 0 || r.status > 999)
        __builtin_trap();
    if (cks_http_parse_content_range(r.content_range, &a, &b, &t)) {
        if (a == UINT64_MAX ? (b != UINT64_MAX || t == UINT64_MAX) : (b < a || (t != UINT64_MAX && b >= t)))
            __builtin_trap(); /* an impossible range was accepted */
    }
    if (cks_http_parse_retry_after(r.retry_after, 1.7e9, &secs) && !(secs >= 0))
        __builtin_trap();
    (void)cks_http_parse_ratelimit(r.ratelimit, &secs);
    int64_t cl = -1;
    if (r.content_length[0]) {
        char *e = NULL;
        unsigned long long v = strtoull(r.content_length, &e, 10);
        if (e && !*e && v < (1ull << 62))
            cl = (int64_t)v;
    }
    long status = r.status ? r.status : 206;
    switch (cks_http_range_reply(status, r.content_range, cl, first, last, fsize, &served)) {
    case CKS_REPLY_RANGE:
        if (status != 206 || !cks_http_parse_content_range(r.content_range, &a, &b, &t) || a != first ||
            b != last || t != fsize || (cl >= 0 && (uint64_t)cl != last - first + 1))
            __builtin_trap(); /* bytes would be taken for a range the headers do not state */
        break;
    case CKS_REPLY_WHOLE_AS_RANGE:
        if (status != 200 || first != 0 || last != fsize - 1 || cl != (int64_t)fsize)
            __builtin_trap();
        break;
    case CKS_REPLY_OTHER_SIZE:
        if (served == fsize)
            __builtin_trap();
        break;
    default:
        break;
    }
    return 0;
}
