/*
 * The memo of compare results (src/analysis/compare_memo.c): the key pins every model and
 * option, and a kept result reads back as it was put.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "ckptscope/compare.h"

static void key_pins_models_options_and_producer(void)
{
    const char *ids[2] = {"{\"commit\":\"a\"}", "{\"commit\":\"b\"}"};
    const char *swapped[2] = {ids[1], ids[0]};
    const char *unpinned[2] = {ids[0], NULL};
    cks_compare_opts o = {.seed = 1, .permutations = 99}, o2 = o;
    char k1[65], k2[65];
    CHECK(cks_compare_memo_key(ids, 2, &o, "ckptscope 1", k1));
    CHECK_EQ_INT(strlen(k1), 64);
    CHECK(cks_compare_memo_key(ids, 2, &o, "ckptscope 1", k2) && strcmp(k1, k2) == 0); /* same inputs */
    CHECK(cks_compare_memo_key(swapped, 2, &o, "ckptscope 1", k2) && strcmp(k1, k2) != 0); /* A and B matter */
    o2.seed = 2;
    CHECK(cks_compare_memo_key(ids, 2, &o2, "ckptscope 1", k2) && strcmp(k1, k2) != 0);
    o2 = o;
    o2.tests = 2;
    CHECK(cks_compare_memo_key(ids, 2, &o2, "ckptscope 1", k2) && strcmp(k1, k2) != 0);
    CHECK(cks_compare_memo_key(ids, 2, &o, "ckptscope 2", k2) && strcmp(k1, k2) != 0); /* another version */
    CHECK(!cks_compare_memo_key(unpinned, 2, &o, "ckptscope 1", k2)); /* a local path: no key */
    CHECK(!cks_compare_memo_key(ids, 0, &o, "ckptscope 1", k2));
}

static void kept_results_read_back(void)
{
    char dir[] = "/tmp/cks-memo-XXXXXX";
    cks_cache_opts co = {0};
    cks_cache *c = NULL;
    cks_diag d = {{0}};
    char *json = NULL, *text = NULL;
    bool hit = true;
    const char *key = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    if (!mkdtemp(dir))
        SKIP("no temporary folder");
    co.dir = dir;
    CHECK(cks_cache_open(&co, &c, &d) == CKS_OK);
    if (!c)
        return;
    CHECK(cks_compare_memo_get(c, key, &json, &text, &hit, &d) == CKS_OK);
    CHECK(!hit && !json && !text);
    CHECK(cks_compare_memo_put(c, key, "{\"verdict\":\"not_derived\"}", "verdict: not_derived\n", &d) == CKS_OK);
    CHECK(cks_compare_memo_get(c, key, &json, &text, &hit, &d) == CKS_OK);
    CHECK(hit && json && text);
    if (json && text) {
        CHECK_EQ_STR(json, "{\"verdict\":\"not_derived\"}");
        CHECK_EQ_STR(text, "verdict: not_derived\n");
    }
    free(json);
    free(text);
    CHECK(cks_compare_memo_put(c, key, "not json", "x", &d) == CKS_ERR_INVALID_ARG);
    cks_cache_free(c);
    {
        char cmd[64];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
        CHECK(system(cmd) == 0);
    }
}

TEST_MAIN(T(key_pins_models_options_and_producer), T(kept_results_read_back))
