/*
 * compare: the memo of results (include/ckptscope/compare.h). Kept as cache metadata in the
 * namespace "compare-result": {"json": the --json document, "text": the text report}.
 */
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "ckptscope/compare.h"
#include "ckptscope/hex.h"

#define MEMO_NS "compare-result"

bool cks_compare_memo_key(const char *const *identities, size_t n, const cks_compare_opts *opts,
                          const char *producer, char hex[65])
{
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    uint8_t digest[32];
    unsigned int len = 0;
    char opts_text[320];
    bool ok = md && opts && producer && n > 0 && EVP_DigestInit_ex(md, EVP_sha256(), NULL) == 1;
    for (size_t i = 0; ok && i < n; i++) {
        if (!identities[i]) {
            ok = false; /* nothing pins this model */
            break;
        }
        EVP_DigestUpdate(md, identities[i], strlen(identities[i]) + 1);
    }
    if (ok) {
        /* "compare v2": the layout of what is kept; the options every statistic depends on */
        snprintf(opts_text, sizeof opts_text, "%s compare v2|tests %u|budget %llu|seed %llu|alpha %.17g|perm %u|syn %d",
                 producer, opts->tests, (unsigned long long)opts->budget_bytes, (unsigned long long)opts->seed,
                 opts->alpha, opts->permutations, (int)opts->no_synthetic_power);
        ok = EVP_DigestUpdate(md, opts_text, strlen(opts_text) + 1) == 1 && EVP_DigestFinal_ex(md, digest, &len) == 1;
    }
    if (ok)
        cks_hex_encode(digest, 32, hex);
    EVP_MD_CTX_free(md);
    return ok;
}

cks_err cks_compare_memo_get(cks_cache *cache, const char *key, char **json, char **text, bool *hit,
                             cks_diag *diag)
{
    cks_err err;
    char *data = NULL;
    size_t len = 0;
    cJSON *doc = NULL;
    const cJSON *j, *t;
    *json = *text = NULL;
    *hit = false;
    err = cks_cache_meta_get(cache, MEMO_NS, key, -1, &data, &len, hit, diag);
    if (err || !*hit)
        goto out;
    *hit = false; /* until the entry proves whole */
    doc = cJSON_ParseWithLength(data, len);
    j = doc ? cJSON_GetObjectItemCaseSensitive(doc, "json") : NULL;
    t = doc ? cJSON_GetObjectItemCaseSensitive(doc, "text") : NULL;
    if (!cJSON_IsObject(j) || !cJSON_IsString(t))
        goto out; /* not what this version keeps: a miss, recomputed and replaced */
    *json = cJSON_PrintUnformatted(j);
    *text = strdup(t->valuestring);
    if (!*json || !*text) {
        free(*json);
        free(*text);
        *json = *text = NULL;
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        goto out;
    }
    *hit = true;
out:
    cJSON_Delete(doc);
    free(data);
    return err;
}

cks_err cks_compare_memo_put(cks_cache *cache, const char *key, const char *json, const char *text, cks_diag *diag)
{
    cks_err err = CKS_OK;
    cJSON *doc = cJSON_CreateObject(), *j = cJSON_Parse(json);
    char *data = NULL;
    if (!doc || !j || !cJSON_AddItemToObject(doc, "json", j) || !cJSON_AddStringToObject(doc, "text", text)) {
        if (doc && j && !cJSON_GetObjectItemCaseSensitive(doc, "json"))
            cJSON_Delete(j);
        err = cks_fail(diag, j || !json ? CKS_ERR_NOMEM : CKS_ERR_INVALID_ARG, "compare memo: cannot keep the result");
        goto out;
    }
    data = cJSON_PrintUnformatted(doc);
    if (!data) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        goto out;
    }
    err = cks_cache_meta_put(cache, MEMO_NS, key, data, strlen(data), diag);
out:
    free(data);
    cJSON_Delete(doc);
    return err;
}
