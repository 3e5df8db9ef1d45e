/* Unit tests of the range engine's pure parts: header parsing, backoff, request planning. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "ckptscope/http.h"

static void content_range_valid(void)
{
    uint64_t a, b, t;
    CHECK(cks_http_parse_content_range("bytes 0-99/100", &a, &b, &t));
    CHECK_EQ_INT(a, 0);
    CHECK_EQ_INT(b, 99);
    CHECK_EQ_INT(t, 100);
    CHECK(cks_http_parse_content_range("bytes 100000-100007/1507691856\r\n", &a, &b, &t));
    CHECK_EQ_INT(a, 100000);
    CHECK_EQ_INT(t, 1507691856);
    CHECK(cks_http_parse_content_range("bytes */177", &a, &b, &t));
    CHECK(a == UINT64_MAX && b == UINT64_MAX && t == 177);
    CHECK(cks_http_parse_content_range("bytes 5-9/*", &a, &b, &t));
    CHECK(t == UINT64_MAX && a == 5 && b == 9);
    CHECK(cks_http_parse_content_range("bytes 18446744073709551613-18446744073709551613/18446744073709551614",
                                       &a, &b, &t));
}

static void content_range_invalid(void)
{
    uint64_t a, b, t;
    static const char *const bad[] = {
        "", "bytes", "bytes 0-99", "bytes 0-99/", "bytes -1-99/100", "bytes 9-5/100",
        "bytes 0-100/100",         /* last byte beyond the total */
        "bytes 0-99/100 junk", "items 0-99/100", "bytes 0 -99/100", "bytes +0-99/100",
        "bytes 0-99/18446744073709551616", /* overflow */
        "bytes */*", "bytes 0-99,200-299/1000", "bytes 0x10-20/100",
        /* 2^64-1 is the parser's "*": as a number it would read as "*" / "*" (fuzz) */
        "bytes 18446744073709551615-18446744073709551615/18446744073709551615",
        "bytes 0-9/18446744073709551615",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        CHECK_MSG(!cks_http_parse_content_range(bad[i], &a, &b, &t), "accepted \"%s\"", bad[i]);
    CHECK(!cks_http_parse_content_range(NULL, &a, &b, &t));
}

/* The verdict on a ranged reply, one case per outcome, including the ones issue 14 named
 * wrongly before (a length that disagrees is not a bad Content-Range). */
static void range_reply_verdicts(void)
{
    uint64_t served = 0;
    CHECK_EQ_INT(cks_http_range_reply(206, "bytes 10-19/100", 10, 10, 19, 100, &served), CKS_REPLY_RANGE);
    CHECK_EQ_INT(cks_http_range_reply(206, "bytes 10-19/100", -1, 10, 19, 100, &served), CKS_REPLY_RANGE);
    CHECK_EQ_INT(cks_http_range_reply(200, "", 100, 0, 99, 100, &served), CKS_REPLY_WHOLE_AS_RANGE);
    CHECK_EQ_INT(cks_http_range_reply(200, "", 100, 10, 19, 100, &served), CKS_REPLY_IGNORED);
    CHECK_EQ_INT(cks_http_range_reply(200, "", -1, 0, 99, 100, &served), CKS_REPLY_IGNORED);
    CHECK_EQ_INT(cks_http_range_reply(206, "bytes 10-19/90", 10, 10, 19, 100, &served), CKS_REPLY_OTHER_SIZE);
    CHECK_EQ_INT(served, 90);
    CHECK_EQ_INT(cks_http_range_reply(206, "bytes 11-19/100", 9, 10, 19, 100, &served), CKS_REPLY_BAD_RANGE);
    CHECK_EQ_INT(cks_http_range_reply(206, "", 10, 10, 19, 100, &served), CKS_REPLY_BAD_RANGE);
    CHECK_EQ_INT(cks_http_range_reply(206, "bytes 10-19/100", 26, 10, 19, 100, &served), CKS_REPLY_BAD_LENGTH);
    CHECK_EQ_INT(served, 26);
    CHECK_EQ_INT(cks_http_range_reply(403, "", 10, 10, 19, 100, &served), CKS_REPLY_NOT_DATA);
}

/* Header lines as libcurl delivers them: status lines reset the response and give its code,
 * overlong values are cut and flagged, never overrun. */
static void header_capture(void)
{
    cks_http_response r;
    memset(&r, 0, sizeof r);
    const char *lines[] = {"HTTP/1.1 100 Continue\r\n", "Content-Range: stale\r\n", "\r\n",
                           "HTTP/2 206\r\n", "content-range:  bytes 0-9/10 \r\n", "X-Error-Message: hi\r\n"};
    for (size_t i = 0; i < sizeof lines / sizeof lines[0]; i++)
        cks_http_capture_header(&r, lines[i], strlen(lines[i]));
    CHECK_EQ_INT(r.status, 206);
    CHECK_EQ_STR(r.content_range, "bytes 0-9/10");
    CHECK_EQ_STR(r.x_error_message, "hi");
    cks_http_capture_header(&r, "HTTP/1.1 2x6 odd\r\n", 18);
    CHECK_EQ_INT(r.status, 0);
    CHECK_EQ_STR(r.content_range, "");
    char big[6000] = "Location: ";
    memset(big + 10, 'x', sizeof big - 11);
    big[sizeof big - 1] = '\0';
    cks_http_capture_header(&r, big, strlen(big));
    CHECK(r.header_truncated && strlen(r.location) == sizeof r.location - 1);
}

static void retry_after(void)
{
    double s;
    CHECK(cks_http_parse_retry_after("120", 0, &s));
    CHECK_NEAR(s, 120, 0);
    CHECK(cks_http_parse_retry_after(" 0", 0, &s));
    CHECK_NEAR(s, 0, 0);
    /* HTTP-date: 1994-11-06 08:49:37 UTC = 784111777 */
    CHECK(cks_http_parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", 784111777.0 - 30, &s));
    CHECK_NEAR(s, 30, 0.5);
    CHECK(cks_http_parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", 784111777.0 + 30, &s));
    CHECK_NEAR(s, 0, 0);
    CHECK(!cks_http_parse_retry_after("soon", 0, &s));
    CHECK(!cks_http_parse_retry_after("-5", 0, &s));
    CHECK(!cks_http_parse_retry_after("99999999999", 0, &s));
    CHECK(!cks_http_parse_retry_after("12abc", 0, &s));
}

static void ratelimit_header(void)
{
    double s;
    CHECK(cks_http_parse_ratelimit("\"resolvers\";r=0;t=55", &s));
    CHECK_NEAR(s, 55, 0);
    CHECK(!cks_http_parse_ratelimit("\"resolvers\";r=12;t=55", &s)); /* quota left: no wait */
    CHECK(!cks_http_parse_ratelimit("\"api\";t=5", &s));
    CHECK(!cks_http_parse_ratelimit(NULL, &s));
}

static void backoff(void)
{
    CHECK_NEAR(cks_http_backoff(0.25, 1, 0.0), 0.125, 1e-9);
    CHECK_NEAR(cks_http_backoff(0.25, 1, 0.999), 0.25, 0.001);
    CHECK_NEAR(cks_http_backoff(0.25, 3, 0.999), 1.0, 0.002);
    /* capped at 8 s, jitter keeps it within [4, 8] */
    for (unsigned k = 6; k < 40; k++) {
        double d = cks_http_backoff(0.25, k, 0.5);
        CHECK(d >= 4.0 && d <= 8.0);
    }
    CHECK(cks_http_backoff(1, 2, 2.0) <= 2.0); /* out-of-range jitter is clamped */
}

static void origin(void)
{
    char *o = NULL;
    CHECK(cks_http_origin("https://HuggingFace.co/api/models", &o, NULL) == CKS_OK);
    CHECK_EQ_STR(o, "https://huggingface.co:443");
    free(o);
    CHECK(cks_http_origin("http://127.0.0.1:8080/x?y=1", &o, NULL) == CKS_OK);
    CHECK_EQ_STR(o, "http://127.0.0.1:8080");
    free(o);
    /* a different port is a different origin: the token must not go there */
    char *p = NULL;
    CHECK(cks_http_origin("http://127.0.0.1:8081/x", &p, NULL) == CKS_OK);
    CHECK(strcmp(p, "http://127.0.0.1:8080") != 0);
    free(p);
    CHECK(cks_http_origin("ftp://example.com/x", &o, NULL) == CKS_ERR_INVALID_ARG && o == NULL);
    CHECK(cks_http_origin("file:///etc/passwd", &o, NULL) == CKS_ERR_INVALID_ARG && o == NULL);
    CHECK(cks_http_origin("not a url", &o, NULL) != CKS_OK && o == NULL);
}

static void plan_coalesces_and_splits(void)
{
    cks_http_target t1 = {.size = 1000000, .name = "a"}, t2 = {.size = 5000, .name = "b"};
    uint8_t buf[16];
    cks_http_piece p[] = {
        {&t1, 100, 10, buf}, {&t1, 0, 10, buf},    /* unsorted */
        {&t1, 115, 5, buf},                        /* 5-byte gap: merged with 100..109 */
        {&t1, 900000, 4, buf},                     /* far away: own request */
        {&t2, 0, 8, buf},                          /* another file never merges */
        {&t1, 50, 0, buf},                         /* empty: ignored */
    };
    size_t order[6];
    cks_http_span *spans = NULL;
    size_t n = 0;
    CHECK(cks_http_plan(p, 6, 64, 1 << 20, order, &spans, &n, NULL) == CKS_OK);
    /* t1: [0,9]+[100,119] merge too (gap 90 > 64? no: 100-10 = 90 > 64) */
    size_t n_t1 = 0, n_t2 = 0;
    for (size_t i = 0; i < n; i++) {
        if (spans[i].target == &t1)
            n_t1++;
        else
            n_t2++;
    }
    CHECK_EQ_INT(n_t1, 3);
    CHECK_EQ_INT(n_t2, 1);
    bool found_merged = false;
    for (size_t i = 0; i < n; i++)
        if (spans[i].target == &t1 && spans[i].first == 100 && spans[i].last == 119)
            found_merged = true;
    CHECK(found_merged);
    free(spans);

    /* a wide gap setting merges everything of t1 up to max_request */
    CHECK(cks_http_plan(p, 6, 1000, 1 << 20, order, &spans, &n, NULL) == CKS_OK);
    CHECK_EQ_INT(n, 3); /* [0,119], [900000,900003], t2 */
    free(spans);

    /* one big piece splits into parallel parts that cover it exactly */
    cks_http_piece big = {&t1, 10, 250000, buf};
    CHECK(cks_http_plan(&big, 1, 0, 100000, order, &spans, &n, NULL) == CKS_OK);
    CHECK_EQ_INT(n, 3);
    if (n == 3) {
        CHECK(spans[0].first == 10 && spans[0].last == 100009);
        CHECK(spans[1].first == 100010 && spans[1].last == 200009);
        CHECK(spans[2].first == 200010 && spans[2].last == 250009);
    }
    free(spans);

    /* past the end of the file is refused before any request */
    cks_http_piece past = {&t2, 4990, 20, buf};
    cks_diag d;
    CHECK(cks_http_plan(&past, 1, 0, 0, order, &spans, &n, &d) == CKS_ERR_TRUNCATED);
    CHECK(spans == NULL && n == 0);
}

static void plan_merge_respects_max_request(void)
{
    cks_http_target t = {.size = 10000000, .name = "t"};
    uint8_t buf[1];
    cks_http_piece p[3] = {{&t, 0, 1000, buf}, {&t, 1100, 1000, buf}, {&t, 2200, 1000, buf}};
    size_t order[3];
    cks_http_span *spans = NULL;
    size_t n = 0;
    /* gaps of 100 are "close", but a merged request may not exceed 2500 bytes */
    CHECK(cks_http_plan(p, 3, 200, 2500, order, &spans, &n, NULL) == CKS_OK);
    CHECK_EQ_INT(n, 2);
    if (n == 2) {
        CHECK(spans[0].first == 0 && spans[0].last == 2099);
        CHECK(spans[1].first == 2200 && spans[1].last == 3199);
        CHECK(spans[1].piece_end - spans[1].piece_begin == 1);
    }
    free(spans);
}

static void engine_refuses_bad_token(void)
{
    cks_http *h = NULL;
    cks_http_config cfg = {0};
    cks_diag d;
    cfg.token = "hf_abc\r\nX-Injected: 1";
    cfg.auth_origin = "https://huggingface.co";
    CHECK(cks_http_new(&cfg, &h, &d) == CKS_ERR_AUTH);
    CHECK(h == NULL);
    CHECK(strstr(d.text, "hf_abc") == NULL); /* never echo the token */
    cfg.token = "hf_goodtoken";
    CHECK(cks_http_new(&cfg, &h, &d) == CKS_OK);
    cks_http_free(h);
    cks_http_free(NULL);
}

static void plan_cost_model(void)
{
    /* 500 separate requests on 16 connections: 32 rounds of 50 ms plus 4 MB at 12.5 MB/s */
    CHECK_NEAR(cks_http_plan_cost(500, 4000000, 16, 0.05, 12.5e6), 32 * 0.05 + 0.32, 1e-9);
    /* merging into 40 requests costs 3 rounds but 30 MB: worse on this link */
    CHECK(cks_http_plan_cost(40, 30000000, 16, 0.05, 12.5e6) >
          cks_http_plan_cost(500, 4000000, 16, 0.05, 12.5e6));
    /* on a fast link the same merge wins */
    CHECK(cks_http_plan_cost(40, 30000000, 16, 0.05, 1e9) <
          cks_http_plan_cost(500, 4000000, 16, 0.05, 1e9));
    /* HTTP/2: everything in flight at once is one round */
    CHECK_NEAR(cks_http_plan_cost(64, 0, 64, 0.05, 1e6), 0.05, 1e-12);
}

static void range_parallel_fits_the_round_trip(void)
{
    /* nothing timed yet: the full count */
    CHECK(cks_http_range_parallel(0, 64) == 64);
    /* loopback (0.2 ms to the first byte): two requests' worth, raised to the floor of 8 */
    CHECK(cks_http_range_parallel(0.0002, 64) == 8);
    /* a LAN (1.5 ms): 15 requests cover the round trip */
    CHECK(cks_http_range_parallel(0.0015, 64) == 15);
    /* 40 ms: 400 would fit, the cap holds */
    CHECK(cks_http_range_parallel(0.040, 64) == 64);
    /* a user's smaller cap (CKPTSCOPE_MAX_PARALLEL=1) beats the floor */
    CHECK(cks_http_range_parallel(0.0002, 1) == 1);
    CHECK(cks_http_range_parallel(0.040, 3) == 3);
}

TEST_MAIN(T(range_parallel_fits_the_round_trip), T(plan_cost_model), T(content_range_valid), T(content_range_invalid), T(range_reply_verdicts),
          T(header_capture), T(retry_after), T(ratelimit_header),
          T(backoff), T(origin), T(plan_coalesces_and_splits), T(plan_merge_respects_max_request),
          T(engine_refuses_bad_token))
