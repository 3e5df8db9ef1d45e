/*
 * The range set (src/format/rangeset.c) against a plain reference: a bitmap of the bytes of
 * a small universe, updated byte by byte.
 */
#include <stdint.h>
#include <stdlib.h>

#include "check.h"
#include "ckptscope/rangeset.h"

#define UNIVERSE 512u

static uint64_t next(uint64_t *state)
{
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    return *state;
}

/* the set's invariant: sorted, no empty range, no two touching or overlapping */
static int well_formed(const cks_rangeset *s)
{
    for (size_t i = 0; i < s->n; i++) {
        if (s->r[i].length == 0)
            return 0;
        if (i && s->r[i - 1].offset + s->r[i - 1].length >= s->r[i].offset)
            return 0;
    }
    return 1;
}

static void matches_a_bitmap_under_random_adds(void)
{
    uint64_t state = 0x9E3779B97F4A7C15ull;
    for (int round = 0; round < 50; round++) {
        cks_rangeset s = {0};
        unsigned char bit[UNIVERSE] = {0};
        int bad = 0;
        for (int op = 0; op < 60; op++) {
            uint64_t off = next(&state) % UNIVERSE, len = next(&state) % 24;
            if (off + len > UNIVERSE)
                len = UNIVERSE - off;
            CHECK(cks_rangeset_add(&s, off, len) == CKS_OK);
            for (uint64_t b = off; b < off + len; b++)
                bit[b] = 1;
            if (!well_formed(&s))
                bad++;
            /* covers: every interval of a few sizes, against the bitmap */
            for (uint64_t a = 0; a < UNIVERSE; a += 7) {
                for (uint64_t w = 0; w < 40 && a + w <= UNIVERSE; w += 5) {
                    int want = 1;
                    for (uint64_t b = a; b < a + w; b++)
                        want &= bit[b];
                    if (cks_rangeset_covers(&s, a, a + w) != (bool)want)
                        bad++;
                }
            }
        }
        {
            uint64_t want = 0;
            for (unsigned b = 0; b < UNIVERSE; b++)
                want += bit[b];
            CHECK_EQ_INT(cks_rangeset_bytes(&s), want);
        }
        CHECK_MSG(bad == 0, "round %d: %d disagreements with the bitmap", round, bad);
        cks_rangeset_free(&s);
        CHECK(s.n == 0 && s.r == NULL);
    }
}

static void hand_worked_merges(void)
{
    cks_rangeset s = {0};
    CHECK(cks_rangeset_add(&s, 10, 5) == CKS_OK);  /* [10,15) */
    CHECK(cks_rangeset_add(&s, 20, 5) == CKS_OK);  /* [10,15) [20,25) */
    CHECK(cks_rangeset_add(&s, 0, 0) == CKS_OK);   /* empty: nothing */
    CHECK_EQ_INT(s.n, 2);
    CHECK(cks_rangeset_add(&s, 15, 5) == CKS_OK);  /* touching both: [10,25) */
    CHECK_EQ_INT(s.n, 1);
    CHECK_EQ_INT(s.r[0].offset, 10);
    CHECK_EQ_INT(s.r[0].length, 15);
    CHECK(cks_rangeset_covers(&s, 10, 25));
    CHECK(!cks_rangeset_covers(&s, 9, 11));
    CHECK(!cks_rangeset_covers(&s, 24, 26));
    CHECK(cks_rangeset_covers(&s, 30, 30));        /* empty interval */
    CHECK(cks_rangeset_add(&s, UINT64_MAX - 4, 100) == CKS_OK); /* clipped at the top */
    CHECK_EQ_INT(s.n, 2);
    CHECK(s.r[1].offset + s.r[1].length == UINT64_MAX);
    cks_rangeset_free(&s);
}

static void unsorted_batches_cover_or_not(void)
{
    cks_range r[] = {{30, 10}, {0, 10}, {8, 12}, {20, 10}};
    cks_range gap[] = {{30, 10}, {0, 10}, {21, 9}};
    CHECK(cks_ranges_cover(r, 4, 0, 40));
    CHECK(cks_ranges_cover(r, 4, 5, 35));
    CHECK(!cks_ranges_cover(r, 4, 0, 41));
    CHECK(!cks_ranges_cover(gap, 3, 0, 40));     /* [10, 21) missing */
    CHECK(cks_ranges_cover(gap, 3, 21, 40));
    CHECK(cks_ranges_cover(NULL, 0, 7, 7));
}

static void many_blocks_stay_fast_and_merged(void)
{
    /* 18,000 sampled blocks in random order, as verify reads a 100B model: the merged set is
     * exactly the blocks that do not touch (each block of 8 KiB at a multiple of 64 KiB) */
    cks_rangeset s = {0};
    uint64_t state = 12345;
    size_t n = 18000;
    uint32_t *order = malloc(n * sizeof *order);
    CHECK(order != NULL);
    if (!order)
        return;
    for (size_t i = 0; i < n; i++)
        order[i] = (uint32_t)i;
    for (size_t i = n - 1; i > 0; i--) {
        size_t j = (size_t)(next(&state) % (i + 1));
        uint32_t t = order[i];
        order[i] = order[j];
        order[j] = t;
    }
    for (size_t i = 0; i < n; i++)
        CHECK(cks_rangeset_add(&s, (uint64_t)order[i] << 16, 8192) == CKS_OK);
    CHECK_EQ_INT(s.n, n);
    CHECK(well_formed(&s));
    CHECK(cks_rangeset_covers(&s, (uint64_t)17999 << 16, ((uint64_t)17999 << 16) + 8192));
    CHECK(!cks_rangeset_covers(&s, 8191, 8193));
    free(order);
    cks_rangeset_free(&s);
}

TEST_MAIN(T(matches_a_bitmap_under_random_adds), T(hand_worked_merges), T(unsorted_batches_cover_or_not),
          T(many_blocks_stay_fast_and_merged))
