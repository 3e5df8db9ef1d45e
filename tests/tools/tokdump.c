/*
 * tokdump — print what the library reads from tokenizer.json files, for tests that check it
 * against an independent reader (tests/integration/test_tokenizers_real.py). Text is hex, so
 * any byte (NUL, newline) survives the line format.
 *
 *   tokdump read FILE...   for each file i: "F i", lines "key value" (model, byte_level, ...),
 *                          then "T id flags hex" per token; then for every pair i <= j, matched
 *                          skipping special tokens as compare does: "M i j n_a n_b n_shared
 *                          n_same_id n_dup_a n_dup_b", then "P id_a id_b" per pair (i < j only)
 *   tokdump refs VERSION   the fingerprint's reference strings, "R hex" in priority order
 * One process parses each file once (the five real files are 90 MB of JSON).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ckptscope/tokenizer.h"
#include "analysis/fingerprint_internal.h"

static void put_hex(const uint8_t *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        printf("%02x", s[i]);
    if (n == 0)
        putchar('-');
}

static cks_vocab *load(const char *path)
{
    cks_vocab *v = NULL;
    cks_diag diag = {{0}};
    cks_err err = cks_vocab_load_file(path, &v, &diag);
    if (err)
        fprintf(stderr, "tokdump: %s: %s: %s\n", path, cks_strerror(err), diag.text);
    return v;
}

static void dump_vocab(int index, const cks_vocab *v)
{
    static const char *const kinds[] = {"unknown", "BPE", "Unigram", "WordPiece", "WordLevel"};
    printf("F %d\nmodel %s\nbyte_level %d\nmetaspace %d\nbyte_fallback %d\nn %zu\nn_undecodable %zu\n"
           "n_duplicate_ids %zu\n",
           index, kinds[v->model], v->byte_level, v->metaspace, v->byte_fallback, v->n, v->n_undecodable,
           v->n_duplicate_ids);
    for (size_t i = 0; i < v->n; i++) {
        printf("T %u %u ", v->tokens[i].id, v->tokens[i].flags);
        put_hex(v->tokens[i].text, v->tokens[i].len);
        putchar('\n');
    }
}

static int dump_files(int n, char **paths)
{
    cks_vocab **v = calloc((size_t)n, sizeof *v);
    cks_vocab_match_opts opts = {.skip_special = true};
    int rc = 0;
    if (!v)
        return 1;
    for (int i = 0; i < n && rc == 0; i++) {
        if (!(v[i] = load(paths[i])))
            rc = 1;
        else
            dump_vocab(i, v[i]);
    }
    for (int i = 0; i < n && rc == 0; i++)
        for (int j = i; j < n && rc == 0; j++) {
            cks_vocab_match *m = NULL;
            cks_diag diag = {{0}};
            if (cks_vocab_match_run(v[i], v[j], &opts, &m, &diag) != CKS_OK) {
                fprintf(stderr, "tokdump: match %s %s: %s\n", paths[i], paths[j], diag.text);
                rc = 1;
                break;
            }
            printf("M %d %d %zu %zu %zu %zu %zu %zu\n", i, j, m->n_a, m->n_b, m->n_shared, m->n_same_id, m->n_dup_a,
                   m->n_dup_b);
            for (size_t k = 0; i != j && k < m->n_pairs; k++)
                printf("P %u %u\n", m->pairs[k].id_a, m->pairs[k].id_b);
            cks_vocab_match_free(m);
        }
    for (int i = 0; i < n; i++)
        cks_vocab_free(v[i]);
    free(v);
    return rc;
}

static int dump_refs(const char *version)
{
    fp_refs *r = malloc(sizeof *r);
    if (!r)
        return 1;
    fp_refs_build(r, (uint32_t)strtoul(version, NULL, 10));
    for (size_t i = 0; i < r->n; i++) {
        printf("R ");
        put_hex((const uint8_t *)r->text[i], r->len[i]);
        putchar('\n');
    }
    free(r);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc >= 3 && strcmp(argv[1], "read") == 0)
        return dump_files(argc - 2, argv + 2);
    if (argc == 3 && strcmp(argv[1], "refs") == 0)
        return dump_refs(argv[2]);
    fprintf(stderr, "usage: tokdump read FILE... | tokdump refs VERSION\n");
    return 2;
}
