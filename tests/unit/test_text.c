/*
 * tests/unit/test_text.c — the helpers written once for the whole program (issue 17): bytes for
 * people (cks_human_bytes, CLI and report) and the hex helpers (cks_hex_encode, cks_is_lower_hex,
 * cks_hex_span). Expected values are worked out by hand: 1536 = 1.5 * 1024, 384 MiB = 384 * 2^20.
 */
#include <stdbool.h>
#include <stdint.h>

#include "check.h"
#include "ckptscope/hex.h"
#include "ckptscope/text.h"

static void test_human_bytes_fixed_and_adaptive(void)
{
    char b[32];
    CHECK_EQ_STR(cks_human_bytes(0, 1, b, sizeof b), "0 B");
    CHECK_EQ_STR(cks_human_bytes(1023, 1, b, sizeof b), "1023 B");
    CHECK_EQ_STR(cks_human_bytes(1024, 1, b, sizeof b), "1.0 KiB");
    CHECK_EQ_STR(cks_human_bytes(1536, 1, b, sizeof b), "1.5 KiB");
    CHECK_EQ_STR(cks_human_bytes(384ull << 20, 1, b, sizeof b), "384.0 MiB");
    CHECK_EQ_STR(cks_human_bytes(UINT64_MAX, 1, b, sizeof b), "16384.0 PiB"); /* 2^64 / 2^50 */
    /* three significant digits */
    CHECK_EQ_STR(cks_human_bytes(1536, -1, b, sizeof b), "1.50 KiB");
    CHECK_EQ_STR(cks_human_bytes(15ull << 20, -1, b, sizeof b), "15.0 MiB");
    CHECK_EQ_STR(cks_human_bytes(384ull << 20, -1, b, sizeof b), "384 MiB");
    CHECK_EQ_STR(cks_human_bytes(512, -1, b, sizeof b), "512 B");
}

static void test_hex_encode_and_checks(void)
{
    const uint8_t bytes[] = {0x00, 0x0f, 0xa5, 0xff};
    char hex[9];
    cks_hex_encode(bytes, sizeof bytes, hex);
    CHECK_EQ_STR(hex, "000fa5ff");
    CHECK(cks_is_lower_hex(hex, 8));
    CHECK(!cks_is_lower_hex(hex, 7));  /* exactly n: one more character follows */
    CHECK(!cks_is_lower_hex(hex, 9));  /* the NUL is not a digit */
    CHECK(!cks_is_lower_hex(NULL, 0));
    CHECK(cks_is_lower_hex("", 0));
    CHECK(!cks_is_lower_hex("000FA5FF", 8)); /* upper case is not what the Hub sends */
    CHECK(!cks_is_lower_hex("000fa5fg", 8));
    CHECK(cks_hex_span("000FA5FF", 8, true));
    CHECK(!cks_hex_span("000FA5FF", 8, false));
    CHECK(cks_hex_span("abc:def", 3, false));  /* only the first n are looked at */
    CHECK(!cks_hex_span("ab", 3, false));      /* a shorter string stops at its NUL */
}

TEST_MAIN(T(test_human_bytes_fixed_and_adaptive), T(test_hex_encode_and_checks))
