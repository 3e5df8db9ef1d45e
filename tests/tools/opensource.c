/*
 * opensource — a program outside the CLI that opens SOURCE strings through the library alone
 * (include/ckptscope/workspace.h), for tests/integration/test_workspace.py.
 *
 *   opensource SOURCE...   one workspace for all of them; per SOURCE one line
 *                          "OK <tensors> <files> <remote 0|1>" or "ERR <error name> <detail>";
 *                          then "CHECK <ok 0|1>" for the first SOURCE checked again (a remote one
 *                          reuses its session), and "SESSIONS <n> BYTES <fetched>".
 *   opensource --all SOURCE...   the same SOURCEs opened side by side (cks_workspace_open_all)
 *                          with config.json as an optional file: each OK line ends with the
 *                          length of its config.json (-1 when absent), and "FIRST <error name>"
 *                          says what the call itself returned.
 * Exit 0 when every SOURCE opened.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ckptscope/workspace.h"

int main(int argc, char **argv)
{
    cks_workspace *w = NULL;
    cks_workspace_opts o = {0};
    cks_diag d = {{0}};
    cks_http_stats st;
    cks_ckpt **opened = calloc((size_t)(argc > 1 ? argc : 1), sizeof *opened);
    int failed = 0;
    if (!opened || cks_workspace_new(&o, &w, &d) != CKS_OK) {
        fprintf(stderr, "opensource: %s\n", d.text);
        free(opened);
        return 2;
    }
    if (argc > 1 && strcmp(argv[1], "--all") == 0) {
        size_t n = (size_t)argc - 2;
        cks_workspace_item *items = calloc(n ? n : 1, sizeof *items);
        cks_err first;
        if (!items)
            return 2;
        for (size_t i = 0; i < n; i++) {
            items[i].source = argv[i + 2];
            items[i].aux_names[0] = "config.json";
        }
        first = cks_workspace_open_all(w, items, n, &d);
        for (size_t i = 0; i < n; i++) {
            if (items[i].err) {
                printf("ERR %s %s\n", cks_strerror(items[i].err), items[i].diag.text);
                failed++;
            } else {
                printf("OK %zu %zu %d %lld\n", items[i].ckpt->n_tensors, items[i].ckpt->n_files,
                       items[i].session != NULL, items[i].aux[0] ? (long long)items[i].aux_len[0] : -1LL);
            }
            free(items[i].aux[0]);
            cks_ckpt_free(items[i].ckpt);
        }
        printf("FIRST %s %s\n", first ? cks_strerror(first) : "OK", first ? d.text : "");
        cks_workspace_totals(w, &st);
        printf("SESSIONS %zu BYTES %llu\n", cks_workspace_n_sessions(w), (unsigned long long)st.bytes_fetched);
        free(items);
        free(opened);
        cks_workspace_free(w);
        return failed ? 1 : 0;
    }
    for (int i = 1; i < argc; i++) {
        cks_remote *r = NULL;
        cks_err err = cks_workspace_open(w, argv[i], &opened[i], &r, &d);
        if (err) {
            printf("ERR %s %s\n", cks_strerror(err), d.text);
            failed++;
        } else {
            printf("OK %zu %zu %d\n", opened[i]->n_tensors, opened[i]->n_files, r != NULL);
        }
    }
    if (argc > 1) {
        cks_ckpt_check *c = NULL;
        size_t before = cks_workspace_n_sessions(w);
        cks_err err = cks_workspace_check(w, argv[1], &c, NULL, &d);
        printf("CHECK %d %d\n", err == CKS_OK && c != NULL, cks_workspace_n_sessions(w) == before);
        cks_ckpt_check_free(c);
    }
    cks_workspace_totals(w, &st);
    printf("SESSIONS %zu BYTES %llu\n", cks_workspace_n_sessions(w), (unsigned long long)st.bytes_fetched);
    for (int i = 1; i < argc; i++)
        cks_ckpt_free(opened[i]);
    free(opened);
    cks_workspace_free(w);
    return failed ? 1 : 0;
}
