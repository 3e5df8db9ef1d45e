/*
 * hub.c — the Hugging Face Hub client. Contract in include/ckptscope/hub.h; the protocol as
 * observed is in research/hub-protocol.md §A (section numbers below refer to it).
 */
#include "ckptscope/hex.h"
#include "ckptscope/hub.h"

#include <cjson/cJSON.h>
#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#define MAX_HOPS 5
#define MAX_API_BODY (256u * 1024u * 1024u) /* a repo listing with 100k+ files is ~30 MB */
#define MAX_TOKEN_FILE 4096

struct cks_hub {
    cks_http *http;
    char *endpoint;        /* no trailing '/' */
    char *origin;          /* scheme://host:port of the endpoint */
    bool have_token;
};

/* ---------------------------------------------------------------- strings ---- */

static char *xstrndup(const char *s, size_t n)
{
    char *r = malloc(n + 1);
    if (r) {
        memcpy(r, s, n);
        r[n] = '\0';
    }
    return r;
}

/* printf into a fresh string; NULL on failure. */
__attribute__((format(printf, 1, 2))) static char *xasprintf(const char *fmt, ...)
{
    va_list ap;
    char *s = NULL;
    va_start(ap, fmt);
    if (vasprintf(&s, fmt, ap) < 0)
        s = NULL;
    va_end(ap);
    return s;
}

char *cks_hub_quote(const char *s, bool keep_slash)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t n = strlen(s);
    char *out = malloc(3 * n + 1), *o = out;
    if (!out)
        return NULL;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (isalnum(*p) || *p == '-' || *p == '.' || *p == '_' || *p == '~' ||
            (keep_slash && *p == '/')) {
            *o++ = (char)*p;
        } else {
            *o++ = '%';
            *o++ = hex[*p >> 4];
            *o++ = hex[*p & 15];
        }
    }
    *o = '\0';
    return out;
}

/* Copy a server-supplied message into a diagnostic: bounded, one line, printable. */
static void clean_message(const char *in, char *out, size_t cap)
{
    size_t o = 0;
    for (const unsigned char *p = (const unsigned char *)in; *p && o + 1 < cap; p++)
        out[o++] = (*p < 0x20 || *p == 0x7f) ? ' ' : (char)*p;
    out[o] = '\0';
}

/* ---------------------------------------------------------------- specs ---- */

static bool name_char(char c)
{
    return isalnum((unsigned char)c) || c == '-' || c == '_' || c == '.';
}

bool cks_hub_repo_id_valid(const char *id)
{
    const char *slash = strchr(id, '/');
    size_t n = strlen(id);
    if (n == 0 || strstr(id, "--") || strstr(id, "..") ||
        (n >= 4 && strcmp(id + n - 4, ".git") == 0))
        return false;
    if (slash && strchr(slash + 1, '/'))
        return false;
    const char *name = slash ? slash + 1 : id;
    if (slash == id || *name == '\0' || strlen(name) > 96)
        return false;
    for (const char *p = id; *p; p++)
        if (*p != '/' && !name_char(*p))
            return false;
    /* \b in the Hub's regex: each part starts and ends with a word character */
    const char *parts[2] = {id, name};
    size_t lens[2] = {slash ? (size_t)(slash - id) : n, strlen(name)};
    for (int i = 0; i < 2; i++) {
        char a = parts[i][0], b = parts[i][lens[i] - 1];
        if (a == '-' || a == '.' || b == '-' || b == '.')
            return false;
    }
    return true;
}

void cks_hub_spec_release(cks_hub_spec *spec)
{
    if (!spec)
        return;
    free(spec->repo_id);
    free(spec->revision);
    free(spec->path);
    free(spec->url);
    free(spec->local_path);
    memset(spec, 0, sizeof *spec);
}

/* "org/name@rev/path" after hf:// and its type prefix. */
static cks_err parse_hf_rest(const char *s, cks_hub_spec *sp, cks_diag *diag)
{
    cks_err err = CKS_OK;
    const char *slash = strchr(s, '/');
    if (!slash) {
        err = cks_fail(diag, CKS_ERR_INVALID_ARG,
                       "hf:// sources name a repository as namespace/name, not '%s'", s);
        goto out;
    }
    const char *name_end = slash + 1 + strcspn(slash + 1, "@/");
    sp->repo_id = xstrndup(s, (size_t)(name_end - s));
    if (!sp->repo_id) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        goto out;
    }
    const char *p = name_end;
    if (*p == '@') {
        p++;
        size_t rlen;
        /* only these revision forms contain a '/' (huggingface_hub _hf_uris.py) */
        if (strncmp(p, "refs/pr/", 8) == 0 || strncmp(p, "refs/convert/", 13) == 0) {
            const char *after = strchr(p, '/') + 1;
            after = strchr(after, '/') + 1;
            rlen = (size_t)(after - p) + strcspn(after, "/");
        } else {
            rlen = strcspn(p, "/");
        }
        if (rlen == 0) {
            err = cks_fail(diag, CKS_ERR_INVALID_ARG, "empty revision after '@' in '%s'", s);
            goto out;
        }
        sp->revision = xstrndup(p, rlen);
        if (!sp->revision) {
            err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
            goto out;
        }
        p += rlen;
    }
    if (*p == '/') {
        p++;
        size_t plen = strlen(p);
        while (plen && p[plen - 1] == '/')
            plen--;
        if (plen) {
            sp->path = xstrndup(p, plen);
            if (!sp->path) {
                err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
                goto out;
            }
        }
    }
out:
    return err;
}

/* Percent-decoding of one URL path segment ("refs%2Fpr%2F1" -> "refs/pr/1"). */
static char *url_unquote(const char *s, size_t n)
{
    char *out = malloc(n + 1);
    size_t o = 0;
    if (!out)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '%' && i + 2 < n && isxdigit((unsigned char)s[i + 1]) && isxdigit((unsigned char)s[i + 2])) {
            char hex[3] = {s[i + 1], s[i + 2], 0};
            out[o++] = (char)strtol(hex, NULL, 16);
            i += 2;
        } else {
            out[o++] = s[i];
        }
    }
    out[o] = '\0';
    return out;
}

/* The host[:port] of a URL, lowercased, into out; false when there is none. */
static bool url_authority(const char *url, char *out, size_t cap)
{
    const char *p = strstr(url, "://"), *end;
    size_t n;
    if (!p)
        return false;
    p += 3;
    end = p + strcspn(p, "/?#");
    n = (size_t)(end - p);
    if (n == 0 || n >= cap)
        return false;
    for (size_t i = 0; i < n; i++)
        out[i] = (char)tolower((unsigned char)p[i]);
    out[n] = '\0';
    return true;
}

/*
 * A Hub web page or file URL pasted as a SOURCE — https://huggingface.co/org/name, and its
 * /tree/REV[/DIR], /blob/REV/PATH, /resolve/REV/PATH, /commit/REV pages, /datasets/... too,
 * on huggingface.co, hf.co or HF_ENDPOINT's host — names a Hub repo, so it is read as one
 * (revision resolved and pinned, the LFS SHA-256 known) instead of as an anonymous URL.
 * Returns false, leaving sp alone, for any other URL.
 */
static bool hub_web_url(const char *text, cks_hub_spec *sp, cks_err *err, cks_diag *diag)
{
    static const char *const hosts[] = {"huggingface.co", "www.huggingface.co", "hf.co"};
    static const char *const not_repos[] = {"api", "docs", "blog", "settings", "organizations", "login", "join",
                                            "pricing", "papers", "collections", "posts", "learn", "tasks",
                                            "search", "new", "models", "spaces", "datasets"};
    char host[256], endpoint_host[256];
    const char *seg[8], *p;
    size_t seg_len[8], n = 0, first = 0;
    bool hub = false;
    cks_repo_type type = CKS_REPO_MODEL;
    char *rev = NULL, *path = NULL, *id = NULL;

    if (!url_authority(text, host, sizeof host))
        return false;
    for (size_t i = 0; i < sizeof hosts / sizeof hosts[0]; i++)
        hub = hub || strcmp(host, hosts[i]) == 0;
    if (!hub && url_authority(cks_hub_default_endpoint(), endpoint_host, sizeof endpoint_host))
        hub = strcmp(host, endpoint_host) == 0;
    if (!hub)
        return false;
    /* the path's segments, up to the query or fragment */
    p = strstr(text, "://") + 3;
    p += strcspn(p, "/?#");
    while (*p == '/' && n < 8) {
        size_t len;
        p++;
        len = strcspn(p, "/?#");
        if (len) {
            seg[n] = p;
            seg_len[n++] = len;
        }
        p += len;
    }
    if (n >= 1 && seg_len[0] == 8 && strncmp(seg[0], "datasets", 8) == 0) {
        type = CKS_REPO_DATASET;
        first = 1;
    } else if (n >= 1 && seg_len[0] == 6 && strncmp(seg[0], "spaces", 6) == 0) {
        type = CKS_REPO_SPACE;
        first = 1;
    }
    if (n < first + 1)
        return false; /* the site itself, or a listing page */
    for (size_t i = 0; first == 0 && i < sizeof not_repos / sizeof not_repos[0]; i++)
        if (strlen(not_repos[i]) == seg_len[0] && strncmp(seg[0], not_repos[i], seg_len[0]) == 0)
            return false;
    if (n == first + 1) /* a legacy id without a namespace ("gpt2") */
        id = xasprintf("%.*s", (int)seg_len[first], seg[first]);
    else
        id = xasprintf("%.*s/%.*s", (int)seg_len[first], seg[first], (int)seg_len[first + 1], seg[first + 1]);
    if (!id) {
        *err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        return true;
    }
    if (!cks_hub_repo_id_valid(id)) {
        free(id);
        return false;
    }
    if (n >= first + 4) {
        const char *kind = seg[first + 2];
        size_t kl = seg_len[first + 2];
        bool with_rev = (kl == 4 && (strncmp(kind, "tree", 4) == 0 || strncmp(kind, "blob", 4) == 0)) ||
                        (kl == 7 && strncmp(kind, "resolve", 7) == 0) || (kl == 3 && strncmp(kind, "raw", 3) == 0) ||
                        (kl == 6 && strncmp(kind, "commit", 6) == 0);
        if (with_rev) {
            /* the revision is one segment ("refs%2Fpr%2F1"); written out, refs/pr/N takes three */
            const char *r = seg[first + 3];
            const char *rest = r + seg_len[first + 3];
            rev = url_unquote(r, seg_len[first + 3]);
            if (rev && strcmp(rev, "refs") == 0 && n >= first + 6) {
                free(rev);
                rev = url_unquote(r, (size_t)(seg[first + 5] + seg_len[first + 5] - r));
                rest = seg[first + 5] + seg_len[first + 5];
            }
            if (rev && kl != 6 && *rest == '/') {
                size_t plen = strcspn(rest + 1, "?#");
                while (plen && rest[plen] == '/')
                    plen--;
                path = plen ? url_unquote(rest + 1, plen) : NULL;
                if (plen && !path)
                    rev = NULL;
            }
            if (!rev) {
                free(id);
                free(path);
                *err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
                return true;
            }
        }
    }
    if (path && (strstr(path, "..") || path[0] == '/')) {
        *err = cks_fail(diag, CKS_ERR_INVALID_ARG, "unsafe path '%s' in '%s'", path, text);
        free(id);
        free(rev);
        free(path);
        return true;
    }
    sp->kind = CKS_SPEC_HUB;
    sp->repo_type = type;
    sp->repo_id = id;
    sp->revision = rev;
    sp->path = path;
    *err = CKS_OK;
    return true;
}

cks_err cks_hub_parse_spec(const char *text, cks_hub_spec *sp, cks_diag *diag)
{
    cks_err err = CKS_OK;
    struct stat st;
    memset(sp, 0, sizeof *sp);
    if (!text || !*text) {
        err = cks_fail(diag, CKS_ERR_INVALID_ARG, "empty source");
        goto out;
    }
    if (strncmp(text, "hf://", 5) == 0) {
        const char *rest = text + 5;
        sp->kind = CKS_SPEC_HUB;
        sp->repo_type = CKS_REPO_MODEL;
        if (strncmp(rest, "models/", 7) == 0) {
            rest += 7;
        } else if (strncmp(rest, "datasets/", 9) == 0) {
            sp->repo_type = CKS_REPO_DATASET;
            rest += 9;
        } else if (strncmp(rest, "spaces/", 7) == 0) {
            sp->repo_type = CKS_REPO_SPACE;
            rest += 7;
        }
        err = parse_hf_rest(rest, sp, diag);
        if (err)
            goto out;
        if (!cks_hub_repo_id_valid(sp->repo_id)) {
            err = cks_fail(diag, CKS_ERR_INVALID_ARG, "'%s' is not a valid Hub repository id",
                           sp->repo_id);
            goto out;
        }
        if (sp->path && (strstr(sp->path, "..") || sp->path[0] == '/')) {
            err = cks_fail(diag, CKS_ERR_INVALID_ARG, "unsafe path '%s' in '%s'", sp->path, text);
            goto out;
        }
        goto out;
    }
    if ((strncasecmp(text, "http://", 7) == 0 || strncasecmp(text, "https://", 8) == 0) &&
        hub_web_url(text, sp, &err, diag))
        goto out;
    if (strncasecmp(text, "http://", 7) == 0 || strncasecmp(text, "https://", 8) == 0) {
        sp->kind = CKS_SPEC_URL;
        sp->url = strdup(text);
        if (!sp->url)
            err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        goto out;
    }
    if (strstr(text, "://")) {
        err = cks_fail(diag, CKS_ERR_INVALID_ARG,
                       "unsupported source '%s' (use a local path, org/name[@rev], hf://... or "
                       "an http(s) URL)", text);
        goto out;
    }
    /* A path that exists is always local: a folder named like a repo wins. */
    bool local = stat(text, &st) == 0 || text[0] == '/' || text[0] == '.' || text[0] == '~';
    if (!local) {
        const char *at = strchr(text, '@');
        size_t idlen = at ? (size_t)(at - text) : strlen(text);
        char *id = xstrndup(text, idlen);
        if (!id) {
            err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
            goto out;
        }
        if (strchr(id, '/') && cks_hub_repo_id_valid(id) && (!at || at[1])) {
            sp->kind = CKS_SPEC_HUB;
            sp->repo_type = CKS_REPO_MODEL;
            sp->repo_id = id;
            if (at) {
                sp->revision = strdup(at + 1);
                if (!sp->revision)
                    err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
            }
            goto out;
        }
        free(id);
    }
    sp->kind = CKS_SPEC_LOCAL;
    sp->local_path = strdup(text);
    if (!sp->local_path)
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
out:
    if (err)
        cks_hub_spec_release(sp);
    return err;
}

/* ---------------------------------------------------------------- token ---- */

/* huggingface_hub cleans tokens with replace("\r","").replace("\n","").strip(). */
static char *clean_token(const char *raw, size_t n)
{
    char *t = malloc(n + 1);
    size_t o = 0;
    if (!t)
        return NULL;
    for (size_t i = 0; i < n; i++)
        if (raw[i] != '\r' && raw[i] != '\n')
            t[o++] = raw[i];
    t[o] = '\0';
    size_t a = 0;
    while (t[a] && isspace((unsigned char)t[a]))
        a++;
    while (o > a && isspace((unsigned char)t[o - 1]))
        o--;
    memmove(t, t + a, o - a);
    t[o - a] = '\0';
    if (!*t) {
        free(t);
        return NULL;
    }
    return t;
}

static char *read_small_file(const char *path, size_t cap, size_t *len)
{
    FILE *f = fopen(path, "rb");
    char *buf = NULL;
    *len = 0;
    if (!f)
        return NULL;
    buf = malloc(cap + 1);
    if (buf) {
        *len = fread(buf, 1, cap + 1, f);
        if (*len > cap || ferror(f)) {
            free(buf);
            buf = NULL;
            *len = 0;
        }
    }
    fclose(f);
    return buf;
}

cks_err cks_hub_find_token(char **token, const char **origin_desc, cks_diag *diag)
{
    cks_err err = CKS_OK;
    const char *env;
    char *path = NULL, *raw = NULL;
    size_t len = 0;
    *token = NULL;
    if (origin_desc)
        *origin_desc = NULL;
    static const char *const vars[] = {"HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"};
    for (size_t i = 0; i < 2; i++) {
        env = getenv(vars[i]);
        if (env && *env) {
            *token = clean_token(env, strlen(env));
            if (*token) {
                if (origin_desc)
                    *origin_desc = vars[i];
                goto out;
            }
        }
    }
    env = getenv("HF_HUB_DISABLE_IMPLICIT_TOKEN");
    if (env && *env && strcmp(env, "0") != 0 && strcasecmp(env, "false") != 0)
        goto out;
    if ((env = getenv("HF_TOKEN_PATH")) && *env) {
        path = strdup(env);
    } else if ((env = getenv("HF_HOME")) && *env) {
        path = xasprintf("%s/token", env);
    } else if ((env = getenv("XDG_CACHE_HOME")) && *env) {
        path = xasprintf("%s/huggingface/token", env);
    } else if ((env = getenv("HOME")) && *env) {
        path = xasprintf("%s/.cache/huggingface/token", env);
    } else {
        goto out;
    }
    if (!path) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        goto out;
    }
    raw = read_small_file(path, MAX_TOKEN_FILE, &len);
    if (raw) {
        *token = clean_token(raw, len);
        if (*token && origin_desc)
            *origin_desc = "token file";
    }
out:
    if (raw) {
        memset(raw, 0, len);
        free(raw);
    }
    free(path);
    return err;
}

const char *cks_hub_default_endpoint(void)
{
    const char *e = getenv("HF_ENDPOINT");
    return (e && *e) ? e : CKS_HUB_DEFAULT_ENDPOINT;
}

/* ---------------------------------------------------------------- client ---- */

cks_err cks_hub_new(cks_http *http, const char *endpoint, bool have_token, cks_hub **out,
                    cks_diag *diag)
{
    cks_err err = CKS_OK;
    cks_hub *hub = calloc(1, sizeof *hub);
    *out = NULL;
    if (!hub) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        goto out;
    }
    if (!endpoint)
        endpoint = cks_hub_default_endpoint();
    size_t n = strlen(endpoint);
    while (n && endpoint[n - 1] == '/')
        n--;
    hub->endpoint = xstrndup(endpoint, n);
    hub->http = http;
    hub->have_token = have_token;
    if (!hub->endpoint) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        goto out;
    }
    err = cks_http_origin(hub->endpoint, &hub->origin, diag);
    if (err) {
        char tmp[CKS_DIAG_MAX];
        snprintf(tmp, sizeof tmp, "%s", diag ? diag->text : "");
        err = cks_fail(diag, err, "HF_ENDPOINT: %s", tmp);
        goto out;
    }
out:
    if (err) {
        cks_hub_free(hub);
        hub = NULL;
    }
    *out = hub;
    return err;
}

void cks_hub_free(cks_hub *hub)
{
    if (!hub)
        return;
    free(hub->endpoint);
    free(hub->origin);
    free(hub);
}

const char *cks_hub_endpoint(const cks_hub *hub)
{
    return hub->endpoint;
}

static const char *type_plural(cks_repo_type t)
{
    return t == CKS_REPO_DATASET ? "datasets" : t == CKS_REPO_SPACE ? "spaces" : "models";
}

static const char *type_prefix(cks_repo_type t)
{
    return t == CKS_REPO_DATASET ? "datasets/" : t == CKS_REPO_SPACE ? "spaces/" : "";
}

/* ---------------------------------------------------------------- errors ---- */

cks_err cks_hub_map_error(const cks_http_response *r, const char *what, const char *repo_id,
                          const char *endpoint, bool have_token, bool is_file, cks_diag *diag)
{
    cks_err err = CKS_OK;
    char msg[600];
    long s = r->status;
    const char *code = r->x_error_code;
    const char *sep;
    clean_message(r->x_error_message, msg, sizeof msg);
    sep = msg[0] ? ": " : "";
    if (s >= 200 && s < 400) {
        err = CKS_OK;
    } else if (strcmp(code, "GatedRepo") == 0) {
        err = cks_fail(diag, CKS_ERR_GATED,
                       "%s is a gated repository and %s. Request access at %s/%s, then %s "
                       "(HTTP %ld%s%s)",
                       repo_id, have_token ? "your token has not been granted access"
                                           : "no token was sent",
                       endpoint, repo_id,
                       have_token ? "wait for approval and retry"
                                  : "log in: set HF_TOKEN or run `hf auth login`",
                       s, sep, msg);
    } else if (strcmp(code, "RepoNotFound") == 0) {
        err = cks_fail(diag, CKS_ERR_REPO_NOT_FOUND,
                       "repository %s not found on %s: it does not exist, or it is private and "
                       "%s (HTTP %ld)",
                       repo_id, endpoint,
                       have_token ? "your token has no access to it"
                                  : "no token was sent (set HF_TOKEN or run `hf auth login`)",
                       s);
    } else if (strcmp(code, "RevisionNotFound") == 0) {
        err = cks_fail(diag, CKS_ERR_REVISION_NOT_FOUND,
                       "%s: revision not found (a branch, tag, 40-hex commit or refs/pr/N is "
                       "expected; HTTP %ld%s%s)",
                       what, s, sep, msg);
    } else if (strcmp(code, "EntryNotFound") == 0) {
        err = cks_fail(diag, CKS_ERR_FILE_NOT_FOUND, "%s: no such file at that revision (HTTP %ld)",
                       what, s);
    } else if (s == 401 && (have_token || strstr(msg, "Invalid credentials"))) {
        err = cks_fail(diag, CKS_ERR_AUTH,
                       "the Hugging Face token was rejected as invalid or expired (HTTP 401%s%s); "
                       "check HF_TOKEN / HF_TOKEN_PATH / the token file, or unset it for public "
                       "repositories",
                       sep, msg);
    } else if (s == 401) {
        err = cks_fail(diag, CKS_ERR_REPO_NOT_FOUND,
                       "%s: not found or private, and no token was sent (HTTP 401); set HF_TOKEN "
                       "or run `hf auth login`",
                       what);
    } else if (s == 403) {
        err = cks_fail(diag, CKS_ERR_AUTH, "%s: access forbidden (HTTP 403%s%s)%s", what, sep, msg,
                       have_token ? "; the token may lack read permission for this repository"
                                  : "");
    } else if (s == 404) {
        err = cks_fail(diag, is_file ? CKS_ERR_FILE_NOT_FOUND : CKS_ERR_REPO_NOT_FOUND,
                       "%s: not found (HTTP 404)", what);
    } else if (s == 429) {
        double wait = -1;
        if (!(r->retry_after[0] &&
              cks_http_parse_retry_after(r->retry_after, (double)time(NULL), &wait)) &&
            !(r->ratelimit[0] && cks_http_parse_ratelimit(r->ratelimit, &wait)))
            wait = -1;
        if (wait >= 0) {
            char until[32];
            time_t at = time(NULL) + (time_t)wait;
            struct tm tm;
            gmtime_r(&at, &tm);
            strftime(until, sizeof until, "%H:%M:%S UTC", &tm);
            err = cks_fail(diag, CKS_ERR_RATE_LIMITED,
                           "%s: rate limited by the Hub (429); retry after %.0f s (at %s)%s", what,
                           wait, until, have_token ? "" : "; logged-in users get higher limits");
        } else {
            err = cks_fail(diag, CKS_ERR_RATE_LIMITED,
                           "%s: rate limited by the Hub (429); wait a few minutes and retry", what);
        }
    } else {
        err = cks_fail(diag, CKS_ERR_HTTP, "%s: unexpected HTTP %ld from %s%s%s", what, s, endpoint,
                       sep, msg);
    }
    return err;
}

/* ---------------------------------------------------------------- repo listing ---- */

void cks_hub_repo_free(cks_hub_repo *repo)
{
    if (!repo)
        return;
    for (size_t i = 0; i < repo->n_files; i++)
        free(repo->files[i].path);
    free(repo->files);
    free(repo->unsafe_example);
    free(repo->repo_id);
    free(repo->revision);
    free(repo);
}

static int cmp_file(const void *a, const void *b)
{
    return strcmp(((const cks_hub_file *)a)->path, ((const cks_hub_file *)b)->path);
}

const cks_hub_file *cks_hub_repo_find(const cks_hub_repo *repo, const char *path)
{
    cks_hub_file key = {.path = (char *)path};
    if (!repo || !repo->n_files)
        return NULL;
    return bsearch(&key, repo->files, repo->n_files, sizeof key, cmp_file);
}

static bool json_u64(const cJSON *j, uint64_t *out)
{
    /* cJSON stores numbers as double: exact up to 2^53, far beyond any file size */
    if (!cJSON_IsNumber(j) || j->valuedouble < 0 || j->valuedouble > 9007199254740992.0 ||
        j->valuedouble != (double)(uint64_t)j->valuedouble)
        return false;
    *out = (uint64_t)j->valuedouble;
    return true;
}

/* A file name from the Hub that is safe to use as a path inside the repository (and, joined,
 * inside a cache or HF_HOME folder): relative, no "", "." or ".." segment, no backslash,
 * no control character. */
static bool listed_path_safe(const char *p)
{
    size_t n = strlen(p);
    if (n == 0 || n > 4096 || p[0] == '/')
        return false;
    for (const char *seg = p;;) {
        size_t sl = strcspn(seg, "/");
        if (sl == 0 || (sl == 1 && seg[0] == '.') || (sl == 2 && seg[0] == '.' && seg[1] == '.'))
            return false;
        if (!seg[sl])
            break;
        seg += sl + 1;
    }
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)p[i] < 0x20 || p[i] == 0x7f || p[i] == '\\')
            return false;
    return true;
}

static cks_err parse_listing(const char *body, size_t len, cks_hub_repo *repo, const char *what,
                             cks_diag *diag)
{
    cks_err err = CKS_OK;
    cJSON *root = cJSON_ParseWithLength(body, len);
    const cJSON *sha, *sib, *gated, *id;
    if (!cJSON_IsObject(root)) {
        size_t deep = cks_json_too_deep_at(body, len);
        if (deep < len)
            err = cks_fail(diag, CKS_ERR_HTTP,
                           "%s: the Hub's repository listing nests arrays or objects more than %d "
                           "levels deep (at byte %zu; the JSON parser's limit)",
                           what, CKS_JSON_MAX_DEPTH, deep);
        else
            err = cks_fail(diag, CKS_ERR_HTTP, "%s: the Hub's repository listing is not %s", what,
                           root ? "a JSON object" : "JSON");
        goto out;
    }
    sha = cJSON_GetObjectItemCaseSensitive(root, "sha");
    if (!cJSON_IsString(sha) || !cks_is_lower_hex(sha->valuestring, 40)) {
        err = cks_fail(diag, CKS_ERR_HTTP, "%s: the Hub's listing has no commit id (\"sha\")", what);
        goto out;
    }
    memcpy(repo->commit, sha->valuestring, 41);
    gated = cJSON_GetObjectItemCaseSensitive(root, "gated");
    repo->gated = cJSON_IsString(gated) || cJSON_IsTrue(gated);
    id = cJSON_GetObjectItemCaseSensitive(root, "id");
    if (cJSON_IsString(id) && cks_hub_repo_id_valid(id->valuestring) &&
        strcmp(id->valuestring, repo->repo_id) != 0) {
        /* renamed repository: talk to it under its current name */
        char *nid = strdup(id->valuestring);
        if (!nid) {
            err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
            goto out;
        }
        free(repo->repo_id);
        repo->repo_id = nid;
    }
    sib = cJSON_GetObjectItemCaseSensitive(root, "siblings");
    if (!cJSON_IsArray(sib)) {
        err = cks_fail(diag, CKS_ERR_HTTP, "%s: the Hub's listing has no file list", what);
        goto out;
    }
    size_t n = (size_t)cJSON_GetArraySize(sib);
    repo->files = calloc(n ? n : 1, sizeof *repo->files);
    if (!repo->files) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        goto out;
    }
    const cJSON *e;
    cJSON_ArrayForEach(e, sib) {
        const cJSON *name = cJSON_GetObjectItemCaseSensitive(e, "rfilename");
        const cJSON *size = cJSON_GetObjectItemCaseSensitive(e, "size");
        const cJSON *blob = cJSON_GetObjectItemCaseSensitive(e, "blobId");
        const cJSON *lfs = cJSON_GetObjectItemCaseSensitive(e, "lfs");
        if (!cJSON_IsString(name) || !*name->valuestring)
            continue; /* lenient: the Hub adds fields over time (§A10, vllm#3800) */
        if (!listed_path_safe(name->valuestring)) {
            if (repo->n_unsafe++ == 0 && !(repo->unsafe_example = strdup(name->valuestring))) {
                err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
                goto out;
            }
            continue;
        }
        cks_hub_file *f = &repo->files[repo->n_files];
        f->path = strdup(name->valuestring);
        if (!f->path) {
            err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
            goto out;
        }
        repo->n_files++;
        f->size_known = json_u64(size, &f->size);
        if (cJSON_IsString(blob) && cks_is_lower_hex(blob->valuestring, 40))
            memcpy(f->blob_id, blob->valuestring, 41);
        if (cJSON_IsObject(lfs)) {
            const cJSON *h = cJSON_GetObjectItemCaseSensitive(lfs, "sha256");
            const cJSON *ls = cJSON_GetObjectItemCaseSensitive(lfs, "size");
            f->lfs = true;
            if (cJSON_IsString(h) && cks_is_lower_hex(h->valuestring, 64))
                memcpy(f->sha256, h->valuestring, 65);
            uint64_t v;
            if (json_u64(ls, &v)) {
                f->size = v;
                f->size_known = true;
            }
        }
    }
    qsort(repo->files, repo->n_files, sizeof *repo->files, cmp_file);
out:
    cJSON_Delete(root);
    return err;
}

cks_err cks_hub_parse_listing(const char *body, size_t len, cks_repo_type type, const char *repo_id,
                              const char *revision, cks_hub_repo **out, cks_diag *diag)
{
    cks_err err = CKS_OK;
    cks_hub_repo *repo = calloc(1, sizeof *repo);
    *out = NULL;
    if (!repo || !(repo->repo_id = strdup(repo_id ? repo_id : "")) ||
        !(repo->revision = strdup(revision ? revision : "main"))) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        goto out;
    }
    repo->type = type;
    /* `what` must not be repo->repo_id: a renamed repository replaces it */
    err = parse_listing(body, len, repo, repo_id ? repo_id : "", diag);
out:
    if (err) {
        cks_hub_repo_free(repo);
        repo = NULL;
    }
    *out = repo;
    return err;
}

/* Build the URL a relative redirect points to: the current origin plus its path. */
static char *follow_relative(const char *origin, const char *location, bool keep_query)
{
    size_t n = keep_query ? strlen(location) : strcspn(location, "?#");
    return xasprintf("%s%.*s", origin, (int)n, location);
}

/*
 * After RevisionNotFound: the repository's branches and tags (GET /api/{type}/{repo}/refs,
 * research/hub-protocol.md), appended to the message so the user sees what does exist. Best
 * effort: when the refs cannot be read the message stays as it was.
 */
#define REFS_LISTED_MAX 12

__attribute__((format(printf, 4, 5))) static void appendf(char *buf, size_t cap, size_t *at, const char *fmt, ...)
{
    va_list ap;
    int n;
    if (*at >= cap)
        return;
    va_start(ap, fmt);
    n = vsnprintf(buf + *at, cap - *at, fmt, ap);
    va_end(ap);
    *at = n < 0 ? cap : *at + (size_t)n < cap ? *at + (size_t)n : cap;
}

static void append_refs(cks_hub *hub, cks_repo_type type, const char *qid, cks_diag *diag)
{
    static const char *const kinds[] = {"branches", "tags"};
    cks_http_request req;
    cks_diag ignored;
    cJSON *root = NULL;
    char *url = xasprintf("%s/api/%s/%s/refs", hub->endpoint, type_plural(type), qid);
    char list[600];
    size_t at = 0;
    memset(&req, 0, sizeof req);
    if (!url || !diag)
        goto out;
    req.method = "GET";
    req.url = url;
    req.max_body = MAX_API_BODY;
    req.accept = "application/json";
    if (cks_http_request_many(hub->http, &req, 1, &ignored) != CKS_OK || req.resp.status != 200 || !req.resp.body)
        goto out;
    root = cJSON_ParseWithLength(req.resp.body, req.resp.body_len);
    list[0] = '\0';
    for (size_t k = 0; k < 2 && root; k++) {
        const cJSON *arr = cJSON_GetObjectItemCaseSensitive(root, kinds[k]), *e;
        size_t shown = 0, total = (size_t)cJSON_GetArraySize(arr);
        if (!cJSON_IsArray(arr) || total == 0)
            continue;
        appendf(list, sizeof list, &at, "%s%s: ", at ? "; " : "", kinds[k]);
        cJSON_ArrayForEach(e, arr) {
            const cJSON *name = cJSON_GetObjectItemCaseSensitive(e, "name");
            if (!cJSON_IsString(name) || shown == REFS_LISTED_MAX)
                continue;
            appendf(list, sizeof list, &at, "%s%s", shown ? ", " : "", name->valuestring);
            shown++;
        }
        if (total > shown)
            appendf(list, sizeof list, &at, " and %zu more", total - shown);
    }
    if (at) {
        size_t len = strlen(diag->text);
        snprintf(diag->text + len, sizeof diag->text - len, ". The repository has %s", list);
    }
out:
    cJSON_Delete(root);
    cks_http_response_release(&req.resp);
    free(url);
}

struct walk;
static cks_err resolve_walk(cks_hub *hub, struct walk *w, size_t n, const char *repo_id,
                            bool hub_urls, cks_hub_resolved *out, cks_err *item_err,
                            cks_http_request *extra, cks_diag *diag);
static struct walk *walks_new(cks_hub *hub, cks_repo_type type, const char *repo_id,
                              const char *url_rev, const char *shown_rev, const char *const *paths,
                              size_t n);
static void walks_free(struct walk *w, size_t n);
static void ahead_keep_pinned(const cks_hub_repo *repo, const char *const *paths, size_t n,
                              cks_hub_resolved *res, cks_err *errs);

cks_err cks_hub_open_repo(cks_hub *hub, cks_repo_type type, const char *repo_id,
                          const char *revision, cks_hub_repo **out, cks_diag *diag)
{
    return cks_hub_open_repo_ahead(hub, type, repo_id, revision, NULL, 0, NULL, NULL, out, diag);
}

cks_err cks_hub_open_repo_ahead(cks_hub *hub, cks_repo_type type, const char *repo_id,
                                const char *revision, const char *const *ahead, size_t n_ahead,
                                cks_hub_resolved *ahead_out, cks_err *ahead_errs,
                                cks_hub_repo **out, cks_diag *diag)
{
    cks_err err = CKS_OK;
    cks_hub_repo *repo = calloc(1, sizeof *repo);
    char *qid = NULL, *qrev = NULL, *url = NULL, *what = NULL;
    struct walk *walks = NULL;
    cks_http_request req;
    memset(&req, 0, sizeof req);
    *out = NULL;
    if (!revision)
        revision = "main";
    for (size_t i = 0; i < n_ahead; i++) {
        memset(&ahead_out[i], 0, sizeof ahead_out[i]);
        ahead_errs[i] = CKS_ERR_HTTP; /* not resolved until shown otherwise */
    }
    if (!repo) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        goto out;
    }
    repo->type = type;
    repo->repo_id = strdup(repo_id);
    repo->revision = strdup(revision);
    qid = cks_hub_quote(repo_id, true);
    qrev = cks_hub_quote(revision, false);
    what = xasprintf("%s@%s", repo_id, revision);
    if (!repo->repo_id || !repo->revision || !qid || !qrev || !what) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        goto out;
    }
    url = xasprintf("%s/api/%s/%s/revision/%s?blobs=true", hub->endpoint, type_plural(type), qid,
                    qrev);
    for (int hop = 0;; hop++) {
        if (!url) {
            err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
            goto out;
        }
        cks_http_response_release(&req.resp);
        req.method = "GET";
        req.url = url;
        req.max_body = MAX_API_BODY;
        req.accept = "application/json";
        if (hop == 0 && n_ahead && (walks = walks_new(hub, type, repo_id, qrev, revision, ahead, n_ahead))) {
            /* the files the caller will ask for next are resolved by the revision's name beside
             * the listing: one round trip instead of two; kept below only if pinned to the
             * commit the listing names */
            for (size_t i = 0; i < n_ahead; i++)
                ahead_errs[i] = CKS_OK;
            err = resolve_walk(hub, walks, n_ahead, repo_id, true, ahead_out, ahead_errs, &req, diag);
            if (!err && req.err) {
                err = req.err;
                if (diag)
                    *diag = req.diag;
            }
        } else {
            err = cks_http_request_many(hub->http, &req, 1, diag);
        }
        if (err)
            goto out;
        long s = req.resp.status;
        if (s >= 300 && s < 400 && req.resp.location[0] == '/' && hop < MAX_HOPS) {
            /* a renamed repository answers with a relative redirect (§A1) */
            char *next = follow_relative(hub->origin, req.resp.location, true);
            free(url);
            url = next;
            continue;
        }
        break;
    }
    if (req.resp.status >= 300 && req.resp.status < 400) {
        err = cks_fail(diag, CKS_ERR_HTTP, "%s: the Hub answered the listing with HTTP %ld", what,
                       req.resp.status);
        goto out;
    }
    err = cks_hub_map_error(&req.resp, what, repo_id, hub->endpoint, hub->have_token, false, diag);
    if (err == CKS_ERR_REVISION_NOT_FOUND)
        append_refs(hub, type, qid, diag);
    if (err)
        goto out;
    if (req.resp.body_truncated) {
        err = cks_fail(diag, CKS_ERR_UNSUPPORTED, "%s: the repository listing exceeds %u bytes",
                       what, MAX_API_BODY);
        goto out;
    }
    err = parse_listing(req.resp.body ? req.resp.body : "", req.resp.body_len, repo, what, diag);
    if (err)
        goto out;
    /* A commit asked for by id must come back as itself. */
    if (cks_hex_span(revision, 40, true) && revision[40] == '\0' && strcasecmp(revision, repo->commit) != 0) {
        err = cks_fail(diag, CKS_ERR_REVISION_NOT_FOUND, "%s: the Hub resolved commit %s to %s",
                       what, revision, repo->commit);
        goto out;
    }
    if (walks)
        ahead_keep_pinned(repo, ahead, n_ahead, ahead_out, ahead_errs);
out:
    cks_http_response_release(&req.resp);
    walks_free(walks, n_ahead);
    free(qid);
    free(qrev);
    free(url);
    free(what);
    if (err) {
        cks_hub_repo_free(repo);
        repo = NULL;
        for (size_t i = 0; i < n_ahead; i++) {
            cks_hub_resolved_release(&ahead_out[i]);
            ahead_errs[i] = CKS_ERR_HTTP;
        }
    }
    *out = repo;
    return err;
}

/* ---------------------------------------------------------------- resolve ---- */

void cks_hub_resolved_release(cks_hub_resolved *r)
{
    if (!r)
        return;
    free(r->url);
    memset(r, 0, sizeof *r);
}

static bool query_param(const char *url, const char *name, char *out, size_t cap)
{
    const char *q = strchr(url, '?');
    size_t nl = strlen(name);
    while (q) {
        q++;
        if (strncmp(q, name, nl) == 0 && q[nl] == '=') {
            const char *v = q + nl + 1;
            size_t n = strcspn(v, "&#");
            if (n >= cap)
                return false;
            memcpy(out, v, n);
            out[n] = '\0';
            return true;
        }
        q = strchr(q, '&');
    }
    return false;
}

double cks_hub_url_expiry(const char *url)
{
    char v[64], d[64];
    if (query_param(url, "Expires", v, sizeof v)) {
        char *end;
        unsigned long long e = strtoull(v, &end, 10);
        if (*end == '\0' && e > 0)
            return (double)e;
    }
    if (query_param(url, "X-Amz-Date", d, sizeof d) && query_param(url, "X-Amz-Expires", v, sizeof v)) {
        struct tm tm;
        memset(&tm, 0, sizeof tm);
        const char *end = strptime(d, "%Y%m%dT%H%M%SZ", &tm);
        char *e2;
        unsigned long long ttl = strtoull(v, &e2, 10);
        if (end && *end == '\0' && *e2 == '\0')
            return (double)timegm(&tm) + (double)ttl;
    }
    return 0;
}

static void normalize_etag(const char *in, char *out, size_t cap)
{
    const char *p = in;
    if (strncmp(p, "W/", 2) == 0)
        p += 2;
    size_t n = strlen(p);
    if (n >= 2 && p[0] == '"' && p[n - 1] == '"') {
        p++;
        n -= 2;
    }
    if (n >= cap)
        n = cap - 1;
    memcpy(out, p, n);
    out[n] = '\0';
}

/* Take what the final response of a resolve walk says about the file. */
static cks_err take_resolution(cks_hub *hub, const cks_http_response *r, const char *url,
                               cks_hub_resolved *out, const char *what, cks_diag *diag)
{
    cks_err err = CKS_OK;
    char *origin = NULL;
    char etag[160];
    const char *size_hdr = r->x_linked_size[0] ? r->x_linked_size : NULL;
    bool redirect = r->status >= 300 && r->status < 400;
    if (!size_hdr && !redirect && r->content_length[0])
        size_hdr = r->content_length;
    if (size_hdr) {
        char *end;
        errno = 0;
        unsigned long long v = strtoull(size_hdr, &end, 10);
        if (*end || errno || !isdigit((unsigned char)size_hdr[0])) {
            err = cks_fail(diag, CKS_ERR_HTTP, "%s: unreadable size header '%s'", what, size_hdr);
            goto out;
        }
        out->size = v;
        out->size_known = true;
    }
    normalize_etag(r->x_linked_etag[0] ? r->x_linked_etag : "", etag, sizeof etag);
    if (cks_is_lower_hex(etag, 64))
        memcpy(out->sha256, etag, 65);
    if (cks_is_lower_hex(r->x_repo_commit, 40))
        memcpy(out->commit, r->x_repo_commit, 41);
    out->url = strdup(url);
    if (!out->url) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        goto out;
    }
    err = cks_http_origin(url, &origin, diag);
    if (err)
        goto out;
    out->cross_origin = strcmp(origin, hub->origin) != 0;
    out->expires_at = cks_hub_url_expiry(url);
out:
    free(origin);
    return err;
}

struct walk {
    char *url;
    char *what;
    int hops;
    bool done;
};

/* Resolve a batch of URLs in rounds of parallel HEADs, each walking its redirects. */
/* One response of a resolve walk: follow it, finish the walk, or fail this item. */
static cks_err walk_step(cks_hub *hub, struct walk *wk, const cks_http_response *r,
                         cks_hub_resolved *res, const char *repo_id, bool hub_urls, cks_diag *diag)
{
    cks_err err = CKS_OK;
    const char *loc = r->location;
    char *next = NULL, *origin = NULL;
    bool redirect = r->status >= 300 && r->status < 400 && r->status != 304 && loc[0];

    if (redirect && ++wk->hops > MAX_HOPS) {
        err = cks_fail(diag, CKS_ERR_HTTP, "%s: more than %d redirects", wk->what, MAX_HOPS);
    } else if (redirect && loc[0] == '/' && loc[1] != '/') {
        err = cks_http_origin(wk->url, &origin, diag);
        if (err)
            goto out;
        /* §A2: a relative hop keeps the path only, as huggingface_hub does */
        next = follow_relative(origin, loc, !hub_urls);
        if (!next) {
            err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
            goto out;
        }
        free(wk->url);
        wk->url = next;
        next = NULL;
        if (hub_urls && strncmp(loc, "/api/resolve-cache/", 19) == 0) {
            /* A regular file's cached copy on the Hub, pinned by commit in its path: ranged
             * GETs can go there directly. The size comes from the listing, so asking it
             * again would only cost a round trip. */
            err = take_resolution(hub, r, wk->url, res, wk->what, diag);
            res->size_known = false;
            wk->done = true;
        }
    } else if (redirect && strncasecmp(loc, "https://", 8) != 0 &&
               strncasecmp(loc, "http://", 7) != 0) {
        err = cks_fail(diag, CKS_ERR_HTTP, "%s: redirect to an unsupported location", wk->what);
    } else if (redirect && !hub_urls) {
        /* a plain URL: keep walking; no token can go there anyway */
        next = strdup(loc);
        if (!next) {
            err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
            goto out;
        }
        free(wk->url);
        wk->url = next;
        next = NULL;
    } else if (redirect) {
        /* an absolute redirect from the Hub is the signed CDN URL: stop here */
        wk->done = true;
        err = take_resolution(hub, r, loc, res, wk->what, diag);
    } else if (r->status >= 200 && r->status < 300) {
        wk->done = true;
        err = take_resolution(hub, r, wk->url, res, wk->what, diag);
    } else {
        if (hub_urls)
            err = cks_hub_map_error(r, wk->what, repo_id, hub->endpoint, hub->have_token, true,
                                    diag);
        else if (r->status == 404 || r->status == 410)
            err = cks_fail(diag, CKS_ERR_FILE_NOT_FOUND, "%s: not found (HTTP %ld)", wk->what,
                           r->status);
        else if (r->status == 401 || r->status == 403)
            err = cks_fail(diag, CKS_ERR_AUTH,
                           "%s: the server requires authorization (HTTP %ld); ckptscope only "
                           "sends the Hugging Face token to the Hub endpoint",
                           wk->what, r->status);
        else if (r->status == 429)
            err = cks_hub_map_error(r, wk->what, "", hub->endpoint, false, true, diag);
        if (!err)
            err = cks_fail(diag, CKS_ERR_HTTP, "%s: unexpected HTTP %ld", wk->what, r->status);
    }
out:
    free(origin);
    free(next);
    return err;
}

/*
 * Resolve a batch of URLs in rounds of parallel HEADs, each walking its redirects. With
 * item_err, an item that fails is recorded there and the others go on; without, the first
 * failure ends the batch.
 */
static cks_err resolve_walk(cks_hub *hub, struct walk *w, size_t n, const char *repo_id,
                            bool hub_urls, cks_hub_resolved *out, cks_err *item_err,
                            cks_http_request *extra, cks_diag *diag)
{
    cks_err err = CKS_OK;
    cks_http_request *reqs = calloc(n + 1, sizeof *reqs);
    size_t *idx = calloc(n + 1, sizeof *idx);
    if (!reqs || !idx) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        goto out;
    }
    for (;;) {
        size_t m = 0;
        for (size_t i = 0; i < n; i++) {
            if (w[i].done)
                continue;
            memset(&reqs[m], 0, sizeof reqs[m]);
            reqs[m].method = "HEAD";
            reqs[m].url = w[i].url;
            idx[m++] = i;
        }
        if (m == 0 && !extra)
            break;
        /* the caller's own request rides in the first round; its answer is the caller's */
        if (extra)
            reqs[m] = *extra;
        (void)cks_http_request_many(hub->http, reqs, m + (extra != NULL), NULL);
        if (extra) {
            *extra = reqs[m];
            extra = NULL;
        }
        for (size_t k = 0; k < m && !err; k++) {
            struct walk *wk = &w[idx[k]];
            cks_diag d;
            cks_err e;
            if (reqs[k].err)
                /* a transport error: say which file it was about */
                e = cks_fail(&d, reqs[k].err, "%s: %s", wk->what, reqs[k].diag.text);
            else
                e = walk_step(hub, wk, &reqs[k].resp, &out[idx[k]], repo_id, hub_urls, &d);
            if (e && item_err) {
                item_err[idx[k]] = e;
                wk->done = true;
            } else if (e) {
                err = e;
                if (diag)
                    *diag = d;
            }
        }
        for (size_t k = 0; k < m; k++)
            cks_http_response_release(&reqs[k].resp);
        if (err)
            goto out;
    }
out:
    free(reqs);
    free(idx);
    return err;
}

/* A walk per path of repo_id, from /resolve/{url_rev}/ (url_rev already quoted); messages name
 * it "repo/path@shown_rev". NULL without memory. */
static struct walk *walks_new(cks_hub *hub, cks_repo_type type, const char *repo_id,
                              const char *url_rev, const char *shown_rev, const char *const *paths,
                              size_t n)
{
    struct walk *w = calloc(n ? n : 1, sizeof *w);
    char *qid = cks_hub_quote(repo_id, true);
    bool ok = w && qid;
    for (size_t i = 0; ok && i < n; i++) {
        char *qp = cks_hub_quote(paths[i], true);
        w[i].url = qp ? xasprintf("%s/%s%s/resolve/%s/%s", hub->endpoint, type_prefix(type), qid,
                                  url_rev, qp)
                      : NULL;
        w[i].what = xasprintf("%s/%s@%s", repo_id, paths[i], shown_rev);
        free(qp);
        ok = w[i].url && w[i].what;
    }
    free(qid);
    if (!ok) {
        walks_free(w, n);
        w = NULL;
    }
    return w;
}

static void walks_free(struct walk *w, size_t n)
{
    if (!w)
        return;
    for (size_t i = 0; i < n; i++) {
        free(w[i].url);
        free(w[i].what);
    }
    free(w);
}

/*
 * A file resolved by a branch's name stands for the listing's commit only when its answer says
 * so: the X-Repo-Commit of a weight's redirect, or, for a regular file (whose 307 carries no
 * commit header), the commit in the path of the Hub's cached copy it leads to. Anything else
 * (a push between the two requests, an answer that names no commit) is dropped, and the file
 * is resolved again, pinned, when it is needed.
 */
static bool ahead_pinned(const cks_hub_resolved *r, const char *commit)
{
    char seg[44];
    const char *p, *query, *at;
    if (r->commit[0])
        return strcmp(r->commit, commit) == 0;
    if (!r->url || r->cross_origin || !(p = strstr(r->url, "/api/resolve-cache/")))
        return false;
    snprintf(seg, sizeof seg, "/%s/", commit);
    at = strstr(p, seg);
    query = strchr(p, '?');
    return at && (!query || at < query);
}

static void ahead_keep_pinned(const cks_hub_repo *repo, const char *const *paths, size_t n,
                              cks_hub_resolved *res, cks_err *errs)
{
    for (size_t i = 0; i < n; i++) {
        if (errs[i])
            continue;
        if (!cks_hub_repo_find(repo, paths[i]) || !res[i].url || !ahead_pinned(&res[i], repo->commit)) {
            cks_hub_resolved_release(&res[i]);
            errs[i] = CKS_ERR_HTTP;
        }
    }
}

cks_err cks_hub_resolve_many(cks_hub *hub, const cks_hub_repo *repo, const char *const *paths,
                             size_t n, cks_hub_resolved *out, cks_diag *diag)
{
    return cks_hub_resolve_some(hub, repo, paths, n, out, NULL, diag);
}

cks_err cks_hub_resolve_some(cks_hub *hub, const cks_hub_repo *repo, const char *const *paths,
                             size_t n, cks_hub_resolved *out, cks_err *errs, cks_diag *diag)
{
    return cks_hub_resolve_some_with(hub, repo, paths, n, out, errs, NULL, diag);
}

cks_err cks_hub_resolve_some_with(cks_hub *hub, const cks_hub_repo *repo, const char *const *paths,
                                  size_t n, cks_hub_resolved *out, cks_err *errs,
                                  cks_http_request *extra, cks_diag *diag)
{
    cks_err err = CKS_OK;
    char shown[13];
    snprintf(shown, sizeof shown, "%.12s", repo->commit);
    struct walk *w = walks_new(hub, repo->type, repo->repo_id, repo->commit, shown, paths, n);
    for (size_t i = 0; i < n; i++)
        memset(&out[i], 0, sizeof out[i]);
    if (!w) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        goto out;
    }
    if (errs)
        for (size_t i = 0; i < n; i++)
            errs[i] = CKS_OK;
    err = resolve_walk(hub, w, n, repo->repo_id, true, out, errs, extra, diag);
    if (err)
        goto out;
    for (size_t i = 0; i < n; i++) {
        if (errs && errs[i])
            continue;
        if (out[i].commit[0] && strcmp(out[i].commit, repo->commit) != 0) {
            err = cks_fail(diag, CKS_ERR_HTTP,
                           "%s: the Hub served commit %s for a request pinned to %s", w[i].what,
                           out[i].commit, repo->commit);
            goto out;
        }
    }
out:
    walks_free(w, n);
    if (err)
        for (size_t i = 0; i < n; i++)
            cks_hub_resolved_release(&out[i]);
    return err;
}

cks_err cks_hub_resolve_url(cks_hub *hub, const char *url, cks_hub_resolved *out, cks_diag *diag)
{
    cks_err err = CKS_OK;
    struct walk w;
    memset(out, 0, sizeof *out);
    memset(&w, 0, sizeof w);
    w.url = strdup(url);
    w.what = xstrndup(url, strcspn(url, "?#"));
    if (!w.url || !w.what) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        goto out;
    }
    err = resolve_walk(hub, &w, 1, "", false, out, NULL, NULL, diag);
    if (err)
        goto out;
    if (!out->size_known) {
        err = cks_fail(diag, CKS_ERR_UNSUPPORTED,
                       "%s: the server did not report the file size (no Content-Length)", w.what);
        goto out;
    }
out:
    free(w.url);
    free(w.what);
    if (err)
        cks_hub_resolved_release(out);
    return err;
}
