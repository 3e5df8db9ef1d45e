/* Unit tests of the Hub client's pure parts: specs, quoting, ids, tokens, error mapping. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "ckptscope/hub.h"

static void spec_forms(void)
{
    cks_hub_spec s;
    CHECK(cks_hub_parse_spec("org/name", &s, NULL) == CKS_OK);
    CHECK(s.kind == CKS_SPEC_HUB && s.repo_type == CKS_REPO_MODEL);
    CHECK_EQ_STR(s.repo_id, "org/name");
    CHECK(s.revision == NULL && s.path == NULL);
    cks_hub_spec_release(&s);

    CHECK(cks_hub_parse_spec("org/name@refs/pr/12", &s, NULL) == CKS_OK);
    CHECK_EQ_STR(s.revision, "refs/pr/12");
    cks_hub_spec_release(&s);

    CHECK(cks_hub_parse_spec("hf://org/name@v1.0/sub/dir/model.safetensors", &s, NULL) == CKS_OK);
    CHECK_EQ_STR(s.repo_id, "org/name");
    CHECK_EQ_STR(s.revision, "v1.0");
    CHECK_EQ_STR(s.path, "sub/dir/model.safetensors");
    cks_hub_spec_release(&s);

    CHECK(cks_hub_parse_spec("hf://datasets/org/ds@refs/pr/3/weights/", &s, NULL) == CKS_OK);
    CHECK(s.repo_type == CKS_REPO_DATASET);
    CHECK_EQ_STR(s.revision, "refs/pr/3");
    CHECK_EQ_STR(s.path, "weights");
    cks_hub_spec_release(&s);

    CHECK(cks_hub_parse_spec("hf://models/org/name/model.safetensors", &s, NULL) == CKS_OK);
    CHECK(s.repo_type == CKS_REPO_MODEL && s.revision == NULL);
    CHECK_EQ_STR(s.path, "model.safetensors");
    cks_hub_spec_release(&s);

    CHECK(cks_hub_parse_spec("hf://org/name@0123456789abcdef0123456789abcdef01234567", &s, NULL) == CKS_OK);
    CHECK_EQ_STR(s.revision, "0123456789abcdef0123456789abcdef01234567");
    cks_hub_spec_release(&s);

    CHECK(cks_hub_parse_spec("https://host.example/x/model.safetensors?sig=1", &s, NULL) == CKS_OK);
    CHECK(s.kind == CKS_SPEC_URL);
    cks_hub_spec_release(&s);

    /* local: existing paths, explicit relative/absolute ones, and anything not repo-shaped */
    static const char *const local[] = {"./org/name", "/abs/path", "model.safetensors", "a/b/c", ".",
                                        "~/x"};
    for (size_t i = 0; i < sizeof local / sizeof local[0]; i++) {
        CHECK(cks_hub_parse_spec(local[i], &s, NULL) == CKS_OK);
        CHECK_MSG(s.kind == CKS_SPEC_LOCAL, "%s", local[i]);
        cks_hub_spec_release(&s);
    }
    /* a directory that exists wins over the repo reading */
    char dir[] = "/tmp/cks-test-hub-XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    CHECK(cks_hub_parse_spec(dir, &s, NULL) == CKS_OK && s.kind == CKS_SPEC_LOCAL);
    cks_hub_spec_release(&s);
    rmdir(dir);
}

static void spec_errors(void)
{
    cks_hub_spec s;
    static const char *const bad[] = {"", "hf://", "hf://name-only", "hf://org/na--me",
                                      "hf://org/name@", "hf://org/name/../etc", "ftp://x/y",
                                      "s3://bucket/key"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        cks_diag d;
        CHECK_MSG(cks_hub_parse_spec(bad[i], &s, &d) == CKS_ERR_INVALID_ARG, "accepted \"%s\"", bad[i]);
        CHECK(s.repo_id == NULL && s.path == NULL && s.url == NULL);
    }
    cks_hub_spec_release(NULL);
}

static void repo_ids(void)
{
    static const char *const good[] = {"gpt2", "org/name", "google-bert/bert-base-uncased",
                                       "a/b.c_d-e", "Qwen/Qwen3-0.6B"};
    static const char *const bad[] = {"", "/name", "org/", "a/b/c", "org/na--me", "org/a..b", "org/x.git",
                                      "org/-x", "org/x-", "org/na me", "org/ü"};
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++)
        CHECK_MSG(cks_hub_repo_id_valid(good[i]), "%s", good[i]);
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        CHECK_MSG(!cks_hub_repo_id_valid(bad[i]), "%s", bad[i]);
    char longname[120];
    memset(longname, 'a', sizeof longname);
    memcpy(longname, "org/", 4);
    longname[4 + 97] = '\0';
    CHECK(!cks_hub_repo_id_valid(longname));
}

static void quoting(void)
{
    char *q = cks_hub_quote("refs/pr/1", false);
    CHECK_EQ_STR(q, "refs%2Fpr%2F1");
    free(q);
    q = cks_hub_quote("sub dir/model.safetensors", true);
    CHECK_EQ_STR(q, "sub%20dir/model.safetensors");
    free(q);
    q = cks_hub_quote("a?b#c&d%e", true);
    CHECK_EQ_STR(q, "a%3Fb%23c%26d%25e");
    free(q);
}

static void tokens(void)
{
    char *tok = NULL;
    const char *from = NULL;
    char path[] = "/tmp/cks-test-token-XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0);
    CHECK(write(fd, " hf_fromfile\r\n\n", 15) == 15);
    close(fd);
    unsetenv("HF_TOKEN");
    unsetenv("HUGGING_FACE_HUB_TOKEN");
    unsetenv("HF_HUB_DISABLE_IMPLICIT_TOKEN");
    setenv("HF_TOKEN_PATH", path, 1);
    CHECK(cks_hub_find_token(&tok, &from, NULL) == CKS_OK);
    CHECK(tok && strcmp(tok, "hf_fromfile") == 0);
    CHECK(from && strcmp(from, "token file") == 0);
    free(tok);
    setenv("HF_TOKEN", "  hf_fromenv\n", 1);
    CHECK(cks_hub_find_token(&tok, &from, NULL) == CKS_OK);
    CHECK(tok && strcmp(tok, "hf_fromenv") == 0);
    CHECK(from && strcmp(from, "HF_TOKEN") == 0);
    free(tok);
    unsetenv("HF_TOKEN");
    setenv("HF_HUB_DISABLE_IMPLICIT_TOKEN", "1", 1);
    CHECK(cks_hub_find_token(&tok, &from, NULL) == CKS_OK);
    CHECK(tok == NULL);
    unsetenv("HF_HUB_DISABLE_IMPLICIT_TOKEN");
    setenv("HF_TOKEN_PATH", "/nonexistent/cks/token", 1);
    CHECK(cks_hub_find_token(&tok, &from, NULL) == CKS_OK && tok == NULL);
    unsetenv("HF_TOKEN_PATH");
    unlink(path);
}

static cks_http_response resp(long status, const char *code, const char *msg)
{
    cks_http_response r;
    memset(&r, 0, sizeof r);
    r.status = status;
    snprintf(r.x_error_code, sizeof r.x_error_code, "%s", code);
    snprintf(r.x_error_message, sizeof r.x_error_message, "%s", msg);
    return r;
}

static void error_mapping(void)
{
    cks_diag d;
    const char *ep = "https://huggingface.co";
    cks_http_response r;
    r = resp(200, "", "");
    CHECK(cks_hub_map_error(&r, "x", "o/n", ep, false, false, &d) == CKS_OK);
    r = resp(401, "GatedRepo", "Access to model o/n is restricted.");
    CHECK(cks_hub_map_error(&r, "x", "o/n", ep, false, true, &d) == CKS_ERR_GATED);
    CHECK(strstr(d.text, "https://huggingface.co/o/n") && strstr(d.text, "HF_TOKEN"));
    r = resp(403, "GatedRepo", "not in the authorized list");
    CHECK(cks_hub_map_error(&r, "x", "o/n", ep, true, true, &d) == CKS_ERR_GATED);
    CHECK(strstr(d.text, "not been granted") != NULL);
    r = resp(401, "RepoNotFound", "");
    CHECK(cks_hub_map_error(&r, "x", "o/n", ep, false, false, &d) == CKS_ERR_REPO_NOT_FOUND);
    r = resp(404, "RepoNotFound", "");
    CHECK(cks_hub_map_error(&r, "x", "o/n", ep, true, false, &d) == CKS_ERR_REPO_NOT_FOUND);
    r = resp(404, "RevisionNotFound", "Invalid rev id: nope");
    CHECK(cks_hub_map_error(&r, "o/n@nope", "o/n", ep, false, false, &d) == CKS_ERR_REVISION_NOT_FOUND);
    r = resp(404, "EntryNotFound", "");
    CHECK(cks_hub_map_error(&r, "o/n/f", "o/n", ep, false, true, &d) == CKS_ERR_FILE_NOT_FOUND);
    r = resp(401, "", "Invalid credentials in Authorization header");
    CHECK(cks_hub_map_error(&r, "x", "o/n", ep, true, false, &d) == CKS_ERR_AUTH);
    r = resp(401, "", "");
    CHECK(cks_hub_map_error(&r, "x", "o/n", ep, false, false, &d) == CKS_ERR_REPO_NOT_FOUND);
    r = resp(429, "", "");
    snprintf(r.retry_after, sizeof r.retry_after, "42");
    CHECK(cks_hub_map_error(&r, "x", "o/n", ep, false, false, &d) == CKS_ERR_RATE_LIMITED);
    CHECK(strstr(d.text, "42 s") && strstr(d.text, "UTC"));
    r = resp(500, "", "boom\r\nInjected: header");
    CHECK(cks_hub_map_error(&r, "x", "o/n", ep, false, false, &d) == CKS_ERR_HTTP);
    CHECK(strchr(d.text, '\n') == NULL && strchr(d.text, '\r') == NULL);
}

static void url_expiry(void)
{
    CHECK_NEAR(cks_hub_url_expiry("https://cdn/x?Expires=1781098782&Policy=p"), 1781098782.0, 0);
    /* 2024-01-01T00:00:00Z = 1704067200, + 3600 */
    CHECK_NEAR(cks_hub_url_expiry("https://cdn/x?X-Amz-Date=20240101T000000Z&X-Amz-Expires=3600&X-Amz-Signature=s"),
               1704070800.0, 0);
    CHECK_NEAR(cks_hub_url_expiry("https://cdn/x"), 0, 0);
    CHECK_NEAR(cks_hub_url_expiry("https://cdn/x?X-Amz-Date=garbage&X-Amz-Expires=3600"), 0, 0);
}

/* A URL pasted from the Hub's web site names a repository (issue 16). */
static void web_urls(void)
{
    static const struct {
        const char *url;
        cks_repo_type type;
        const char *repo, *rev, *path;
    } hub[] = {
        {"https://huggingface.co/zai-org/GLM-4.5-Air", CKS_REPO_MODEL, "zai-org/GLM-4.5-Air", NULL, NULL},
        {"https://huggingface.co/org/name/blob/main/model-00001-of-00002.safetensors", CKS_REPO_MODEL, "org/name",
         "main", "model-00001-of-00002.safetensors"},
        {"https://huggingface.co/org/name/resolve/v1.0/sub/model.safetensors?download=true", CKS_REPO_MODEL,
         "org/name", "v1.0", "sub/model.safetensors"},
        {"https://huggingface.co/org/name/tree/refs%2Fpr%2F3/weights/", CKS_REPO_MODEL, "org/name", "refs/pr/3",
         "weights"},
        {"https://huggingface.co/org/name/blob/refs/pr/3/model.safetensors", CKS_REPO_MODEL, "org/name", "refs/pr/3",
         "model.safetensors"},
        {"https://huggingface.co/org/name/commit/0123456789abcdef0123456789abcdef01234567", CKS_REPO_MODEL,
         "org/name", "0123456789abcdef0123456789abcdef01234567", NULL},
        {"https://hf.co/datasets/org/ds/tree/main", CKS_REPO_DATASET, "org/ds", "main", NULL},
        {"HTTPS://HuggingFace.co/gpt2#readme", CKS_REPO_MODEL, "gpt2", NULL, NULL},
        {"http://mirror.example:8080/org/name/resolve/main/x.safetensors", CKS_REPO_MODEL, "org/name", "main",
         "x.safetensors"},
    };
    /* other pages of the site, and other hosts, stay plain URLs */
    static const char *const plain[] = {"https://huggingface.co/", "https://huggingface.co/docs/hub/index",
                                        "https://huggingface.co/api/models/org/name", "https://huggingface.co/models",
                                        "https://example.com/org/name/resolve/main/x.safetensors",
                                        "http://mirror.example:9090/org/name"};
    cks_hub_spec s;
    cks_diag d;
    setenv("HF_ENDPOINT", "http://mirror.example:8080", 1);
    for (size_t i = 0; i < sizeof hub / sizeof hub[0]; i++) {
        CHECK_MSG(cks_hub_parse_spec(hub[i].url, &s, &d) == CKS_OK, "%s: %s", hub[i].url, d.text);
        CHECK_MSG(s.kind == CKS_SPEC_HUB && s.repo_type == hub[i].type, "%s", hub[i].url);
        CHECK_MSG(s.repo_id && strcmp(s.repo_id, hub[i].repo) == 0, "%s: repo %s", hub[i].url, s.repo_id);
        CHECK_MSG(!s.revision == !hub[i].rev && (!s.revision || strcmp(s.revision, hub[i].rev) == 0), "%s: rev %s",
                  hub[i].url, s.revision);
        CHECK_MSG(!s.path == !hub[i].path && (!s.path || strcmp(s.path, hub[i].path) == 0), "%s: path %s",
                  hub[i].url, s.path);
        cks_hub_spec_release(&s);
    }
    for (size_t i = 0; i < sizeof plain / sizeof plain[0]; i++) {
        CHECK(cks_hub_parse_spec(plain[i], &s, NULL) == CKS_OK);
        CHECK_MSG(s.kind == CKS_SPEC_URL, "%s", plain[i]);
        cks_hub_spec_release(&s);
    }
    CHECK(cks_hub_parse_spec("https://huggingface.co/org/name/blob/main/../../etc/passwd", &s, &d) ==
          CKS_ERR_INVALID_ARG);
    unsetenv("HF_ENDPOINT");
}

TEST_MAIN(T(spec_forms), T(spec_errors), T(repo_ids), T(quoting), T(tokens), T(error_mapping),
          T(url_expiry), T(web_urls))
