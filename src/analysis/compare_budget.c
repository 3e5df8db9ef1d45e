/*
 * compare: how one model's byte budget is split between what the tests read (DESIGN's
 * planner). Pure arithmetic on sizes, so each rule is tested on its own
 * (tests/unit/test_budget.c); compare_data.c and compare_embed.c read by these numbers.
 *
 *   whole read   a checkpoint no larger than the budget (and FULL_READ_MAX) is read and hashed
 *                whole when T1 runs: `identical` is then certain, not sampled;
 *   routers      norms first, then whole routers while the whole reads stay under half the
 *                budget (a 128-expert router of GLM-4.5-Air is 2 MiB a layer: 92 MiB in all);
 *   k and v      three quarters of what is left, as rows sampled in the same blocks in every
 *                layer, under the decoded-float cap and 4,096 rows (enough features for CKA);
 *   embeddings   a quarter of the budget, shared by the two models' rows of a token.
 */
#include "compare_internal.h"

/* read and hash every tensor only below this */
#define FULL_READ_MAX (256ull << 20)
/* decoded k and v rows over all layers: part of the 512 MiB peak bound */
#define KV_FLOAT_CAP (24ull << 20)
/* beyond this many rows k/v cost compute, not evidence */
#define KV_ROWS_MAX 4096u

bool cmp_budget_read_whole(uint64_t budget, uint64_t total_bytes, bool t1)
{
    return t1 && total_bytes <= budget && total_bytes <= FULL_READ_MAX;
}

uint64_t cmp_budget_whole_reads(uint64_t budget)
{
    return budget / 2;
}

size_t cmp_budget_kv_rows(uint64_t budget, uint64_t used, int n_layers, size_t hidden, size_t max_rows,
                          bool full_coverage)
{
    uint64_t left = used < budget ? (budget - used) * 3 / 4 : 0;
    uint64_t per_row, per_row_floats;
    size_t rows, cap;
    if (n_layers <= 0 || hidden == 0 || max_rows == 0)
        return 0;
    per_row = (uint64_t)hidden * 2 /* bf16-ish */ * 2 /* k and v */ * (uint64_t)n_layers;
    rows = (size_t)(left / per_row);
    if (rows > max_rows || full_coverage)
        rows = max_rows;
    per_row_floats = (uint64_t)hidden * sizeof(float) * 2 * (uint64_t)n_layers;
    cap = (size_t)(KV_FLOAT_CAP / per_row_floats);
    if (cap < 2 * CMP_ROW_BLOCK)
        cap = 2 * CMP_ROW_BLOCK;
    if (rows > cap)
        rows = cap;
    if (rows > KV_ROWS_MAX)
        rows = KV_ROWS_MAX;
    return rows;
}

size_t cmp_budget_embed_tokens(uint64_t budget, uint64_t row_bytes_a, uint64_t row_bytes_b)
{
    return (size_t)(budget / 4 / (row_bytes_a + row_bytes_b + 1));
}

