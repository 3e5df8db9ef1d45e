/*
 * The budget planner (src/analysis/compare_budget.c): each split worked by hand.
 */
#include "check.h"
#include "analysis/compare_internal.h"

#define MiB (1024ull * 1024ull)

static void whole_read_needs_t1_the_budget_and_the_cap(void)
{
    CHECK(cmp_budget_read_whole(384 * MiB, 100 * MiB, true));
    CHECK(!cmp_budget_read_whole(384 * MiB, 100 * MiB, false)); /* no T1: nothing to be certain about */
    CHECK(!cmp_budget_read_whole(384 * MiB, 300 * MiB, true));  /* fits the budget, not the 256 MiB cap */
    CHECK(cmp_budget_read_whole(384 * MiB, 256 * MiB, true));   /* the cap itself is allowed */
    CHECK(!cmp_budget_read_whole(100 * MiB, 200 * MiB, true));  /* over the budget */
    CHECK(cmp_budget_read_whole(200 * MiB, 200 * MiB, true));
}

static void whole_reads_get_half(void)
{
    CHECK_EQ_INT(cmp_budget_whole_reads(384 * MiB), 192 * MiB);
    CHECK_EQ_INT(cmp_budget_whole_reads(1), 0);
}

static void kv_rows_by_hand(void)
{
    /* hidden 64, 2 layers: a row of k and v in every layer is 64 * 2 B * 2 * 2 = 512 B */
    /* 100,000 B left -> 75,000 B for k/v -> 146 rows (146.48) */
    CHECK_EQ_INT(cmp_budget_kv_rows(100000, 0, 2, 64, 1000, false), 146);
    /* 1 MiB: 786,432 B -> 1,536 rows, more than the 1,000 the tensors have */
    CHECK_EQ_INT(cmp_budget_kv_rows(MiB, 0, 2, 64, 1000, false), 1000);
    /* what the whole reads used comes off first: (100,000 - 50,000) * 3/4 / 512 = 73 */
    CHECK_EQ_INT(cmp_budget_kv_rows(100000, 50000, 2, 64, 1000, false), 73);
    /* a model read whole gives every row, whatever is left */
    CHECK_EQ_INT(cmp_budget_kv_rows(100000, 100000, 2, 64, 1000, true), 1000);
    /* nothing left, or nothing to read */
    CHECK_EQ_INT(cmp_budget_kv_rows(100000, 200000, 2, 64, 1000, false), 0);
    CHECK_EQ_INT(cmp_budget_kv_rows(MiB, 0, 0, 64, 1000, false), 0);
    CHECK_EQ_INT(cmp_budget_kv_rows(MiB, 0, 2, 0, 1000, false), 0);
    CHECK_EQ_INT(cmp_budget_kv_rows(MiB, 0, 2, 64, 0, false), 0);
    /* GLM-4.5-Air-shaped (hidden 4096, 46 layers, k and v of 1,024 rows), 384 MiB, 100 MiB read
     * whole: the budget allows 223,346,688 / 753,664 = 296 rows, but decoded floats of k and v
     * are 4096 * 4 B * 2 * 46 = 1,507,328 B a row and the 24 MiB cap holds 16 (16.69) */
    CHECK_EQ_INT(cmp_budget_kv_rows(384 * MiB, 100 * MiB, 46, 4096, 1024, false), 16);
    /* the float cap never goes below two blocks of rows: hidden 8192, 96 layers holds 4 (4.0) */
    CHECK_EQ_INT(cmp_budget_kv_rows(384 * MiB, 0, 96, 8192, 1024, false), 16);
    /* narrow and shallow: 4,096 rows at most (the float cap would allow 196,608) */
    CHECK_EQ_INT(cmp_budget_kv_rows(1024 * MiB, 0, 1, 16, 100000, false), 4096);
}

static void embed_tokens_get_a_quarter(void)
{
    /* 384 MiB / 4 = 100,663,296 B over (4096 * 2 + 6144 * 2 + 1) B per shared token = 4914 */
    CHECK_EQ_INT(cmp_budget_embed_tokens(384 * MiB, 4096 * 2, 6144 * 2), 4914);
    CHECK_EQ_INT(cmp_budget_embed_tokens(0, 4096 * 2, 4096 * 2), 0);
    CHECK_EQ_INT(cmp_budget_embed_tokens(4, 0, 0), 1); /* no division by zero */
}

TEST_MAIN(T(whole_read_needs_t1_the_budget_and_the_cap), T(whole_reads_get_half), T(kv_rows_by_hand),
          T(embed_tokens_get_a_quarter))
