/*
 * http_plan.c — the pure request planner of the range engine (include/ckptscope/http.h):
 * pieces of files grouped into requests, nearby ones coalesced, large ones split; and the
 * cost estimate the engine chooses a gap with. No network, no engine state: the engine
 * (http.c) calls it, and tests/unit/test_http.c checks it on its own.
 */
#include "ckptscope/http.h"

#include <inttypes.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

/* qsort_r's comparison (GNU): the pieces come as the context, so two threads may plan at once
 * (the planner kept them in a file-scope pointer before, which two sessions planning in two
 * threads could overwrite under each other). */
static int cmp_piece(const void *a, const void *b, void *pieces)
{
    const cks_http_piece *x = &((const cks_http_piece *)pieces)[*(const size_t *)a];
    const cks_http_piece *y = &((const cks_http_piece *)pieces)[*(const size_t *)b];
    if (x->target != y->target)
        return (uintptr_t)x->target < (uintptr_t)y->target ? -1 : 1;
    if (x->offset != y->offset)
        return x->offset < y->offset ? -1 : 1;
    return 0;
}

cks_err cks_http_plan(const cks_http_piece *pieces, size_t n, uint64_t gap, uint64_t max_request,
                      size_t *order, cks_http_span **out_spans, size_t *n_spans, cks_diag *diag)
{
    cks_err err = CKS_OK;
    cks_http_span *spans = NULL;
    size_t ns = 0, cap = 0, m = 0;
    *out_spans = NULL;
    *n_spans = 0;
    if (max_request == 0)
        max_request = CKS_HTTP_DEFAULT_MAX_REQUEST;
    for (size_t i = 0; i < n; i++) {
        const cks_http_piece *p = &pieces[i];
        if (p->length == 0)
            continue;
        if (!p->target || p->offset > p->target->size ||
            p->length > p->target->size - p->offset) {
            err = cks_fail(diag, CKS_ERR_TRUNCATED,
                           "%s: range of %" PRIu64 " bytes at %" PRIu64 " is past the end "
                           "(%" PRIu64 " bytes)",
                           p->target ? p->target->name : "?", p->length, p->offset,
                           p->target ? p->target->size : 0);
            goto out;
        }
        order[m++] = i;
    }
    qsort_r(order, m, sizeof *order, cmp_piece, (void *)pieces);

    size_t i = 0;
    while (i < m) {
        const cks_http_piece *p = &pieces[order[i]];
        uint64_t first = p->offset, last = p->offset + p->length - 1;
        size_t begin = i++;
        while (i < m) {
            const cks_http_piece *q = &pieces[order[i]];
            if (q->target != p->target)
                break;
            uint64_t qlast = q->offset + q->length - 1;
            uint64_t nlast = qlast > last ? qlast : last;
            bool touching = q->offset <= last + 1;
            bool close_enough = !touching && q->offset - (last + 1) <= gap &&
                                nlast - first + 1 <= max_request;
            if (!touching && !close_enough)
                break;
            last = nlast;
            i++;
        }
        /* split what is too large for one request into parallel parts */
        uint64_t a = first;
        while (a <= last) {
            uint64_t b = last - a + 1 > max_request ? a + max_request - 1 : last;
            if (ns == cap) {
                size_t ncap = cap ? cap * 2 : 16;
                cks_http_span *nsp = realloc(spans, ncap * sizeof *nsp);
                if (!nsp) {
                    err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory planning requests");
                    goto out;
                }
                spans = nsp;
                cap = ncap;
            }
            /* pieces overlapping [a,b]: narrow the begin..i window */
            size_t pb = begin, pe = i;
            while (pb < pe) {
                const cks_http_piece *r = &pieces[order[pb]];
                if (r->offset + r->length > a)
                    break;
                pb++;
            }
            spans[ns].target = p->target;
            spans[ns].first = a;
            spans[ns].last = b;
            spans[ns].piece_begin = pb;
            spans[ns].piece_end = pe;
            ns++;
            if (b == last)
                break;
            a = b + 1;
        }
    }
out:
    if (err) {
        free(spans);
        spans = NULL;
        ns = 0;
    }
    *out_spans = spans;
    *n_spans = ns;
    return err;
}

double cks_http_plan_cost(size_t n_spans, uint64_t bytes, unsigned parallel, double rtt, double bw)
{
    size_t rounds = parallel ? (n_spans + parallel - 1) / parallel : n_spans;
    return (double)rounds * rtt + (double)bytes / bw;
}

/*
 * Parallel requests hide round trips: while one waits for its first byte the others arrive.
 * More than a round trip's worth of them (the fastest reply over what a request costs this
 * side and the server's, ~0.1 ms: the fastest replies of nginx on loopback take 0.1-0.2 ms)
 * cannot all be busy, and each only adds a connection with its handshake, receive buffer and
 * libcurl state: on loopback 500 scattered tensors took 0.89x the wall and 0.91x the CPU with
 * 8 in flight instead of 64 (farm-bench, 40 pairs), and 4, 8 or 16 made no difference. Over a
 * 40 ms link the rule gives 400, so the cap.
 */
unsigned cks_http_range_parallel(double ttfb_min, unsigned cap)
{
    unsigned want = cap;
    if (ttfb_min > 0) {
        double fit = ceil(ttfb_min / CKS_HTTP_REQUEST_COST);
        want = fit >= (double)cap ? cap : (unsigned)fit;
        if (want < CKS_HTTP_MIN_RANGE_PARALLEL)
            want = CKS_HTTP_MIN_RANGE_PARALLEL;
        if (want > cap)
            want = cap;
    }
    return want;
}
