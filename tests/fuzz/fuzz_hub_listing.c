/*
 * Fuzz target: the Hub's repository listing JSON (cks_hub_parse_listing), the answer every
 * remote command starts from. Invariants on what it accepts: a 40-hex commit; files sorted
 * by path and each one a safe relative path (no "..", ".", empty or absolute part, no
 * backslash or control character); hashes either empty or lower-case hex of their length;
 * an unsafe name counted, never listed.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "ckptscope/hub.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static bool hex_or_empty(const char *s, size_t n)
{
    size_t len = strlen(s);
    if (len == 0)
        return true;
    if (len != n)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return false;
    return true;
}

static bool safe_path(const char *p)
{
    if (!*p || p[0] == '/')
        return false;
    for (const char *seg = p;;) {
        size_t sl = strcspn(seg, "/");
        if (sl == 0 || (sl == 1 && seg[0] == '.') || (sl == 2 && seg[0] == '.' && seg[1] == '.'))
            return false;
        if (!seg[sl])
            break;
        seg += sl + 1;
    }
    for (const char *c = p; *c; c++)
        if ((unsigned char)*c < 0x20 || *c == 0x7f || *c == '\\')
            return false;
    return true;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    cks_hub_repo *repo = NULL;
    cks_diag diag;
    if (cks_hub_parse_listing((const char *)data, size, CKS_REPO_MODEL, "org/name", "main", &repo, &diag) ==
            CKS_OK &&
        repo) {
        if (strlen(repo->commit) != 40 || !hex_or_empty(repo->commit, 40))
            __builtin_trap();
        if (repo->n_unsafe && !repo->unsafe_example)
            __builtin_trap();
        for (size_t i = 0; i < repo->n_files; i++) {
            const cks_hub_file *f = &repo->files[i];
            if (!safe_path(f->path) || !hex_or_empty(f->sha256, 64) || !hex_or_empty(f->blob_id, 40))
                __builtin_trap(); /* an unsafe name or a malformed hash got through */
            if (i && strcmp(repo->files[i - 1].path, f->path) > 0)
                __builtin_trap(); /* lookups bsearch this list */
            if (cks_hub_repo_find(repo, f->path) == NULL)
                __builtin_trap();
        }
    }
    cks_hub_repo_free(repo);
    return 0;
}
