/*
 * tokenizer.json vocabularies. Every piece is turned back into the bytes of text it stands for
 * (rules in ckptscope/tokenizer.h), because two models can only be compared row by row through
 * tokens whose text is the same, however each tokenizer spells it.
 */
#include "ckptscope/tokenizer.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_NESTING 8 /* Sequence pre-tokenizers / decoders nest a level or two in practice */

/* One entry before ids are made unique. */
typedef struct raw_entry {
    uint32_t id;
    uint32_t flags;
    size_t order;            /* position in the file: the first of two equal ids wins */
    const char *piece;
} raw_entry;

typedef struct parse_ctx {
    bool byte_level, metaspace, byte_fallback, wordpiece;
    const char *wp_prefix;
    size_t wp_prefix_len;
    int16_t gpt2[256 + 68];  /* code point -> byte, -1 when the table has no such character */
} parse_ctx;

/*
 * GPT-2's bytes_to_unicode (openai/gpt-2 src/encoder.py): the 188 printable bytes '!'..'~',
 * 0xA1..0xAC and 0xAE..0xFF stand for themselves; the other 68 bytes, in increasing order,
 * are code points 256, 257, ... Only the inverse is needed here.
 */
static void gpt2_table(int16_t *t)
{
    int next = 256;
    for (int cp = 0; cp < 256 + 68; cp++)
        t[cp] = -1;
    for (int b = 0; b < 256; b++) {
        bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
        if (printable)
            t[b] = (int16_t)b;
        else
            t[next++] = (int16_t)b;
    }
}

/* Does a pre-tokenizer / decoder / normalizer tree contain a component of this type? */
static bool has_type(const cJSON *node, const char *type, int depth)
{
    const cJSON *t, *child;
    static const char *const lists[] = {"pretokenizers", "decoders", "normalizers", NULL};
    if (!cJSON_IsObject(node) || depth > MAX_NESTING)
        return false;
    t = cJSON_GetObjectItemCaseSensitive(node, "type");
    if (cJSON_IsString(t) && t->valuestring && strcmp(t->valuestring, type) == 0)
        return true;
    for (size_t i = 0; lists[i]; i++) {
        const cJSON *arr = cJSON_GetObjectItemCaseSensitive(node, lists[i]);
        cJSON_ArrayForEach(child, arr) {
            if (has_type(child, type, depth + 1))
                return true;
        }
    }
    return false;
}

static int hexval(uint8_t c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

/* Length of the UTF-8 sequence at s (at most n bytes) and its code point; 0 when invalid. */
static size_t utf8_next(const uint8_t *s, size_t n, uint32_t *cp)
{
    size_t len;
    uint32_t v;
    if (s[0] < 0x80) {
        *cp = s[0];
        return 1;
    }
    if ((s[0] & 0xE0) == 0xC0) {
        len = 2;
        v = s[0] & 0x1F;
    } else if ((s[0] & 0xF0) == 0xE0) {
        len = 3;
        v = s[0] & 0x0F;
    } else if ((s[0] & 0xF8) == 0xF0) {
        len = 4;
        v = s[0] & 0x07;
    } else {
        return 0;
    }
    if (len > n)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80)
            return 0;
        v = (v << 6) | (s[i] & 0x3F);
    }
    *cp = v;
    return len;
}

/*
 * Write the normalised form of a piece to dst (room for len + 1 bytes: only WordPiece's
 * word-start space makes a piece longer) and return its length.
 */
static size_t normalise(const parse_ctx *c, const uint8_t *s, size_t len, uint32_t *flags, uint8_t *dst,
                        bool *undecodable)
{
    size_t k = 0, i = 0;

    if (*flags & CKS_TOKEN_ADDED) {
        memcpy(dst, s, len);
        return len;
    }
    if (c->byte_fallback && len == 6 && s[0] == '<' && s[1] == '0' && s[2] == 'x' && s[5] == '>' &&
        hexval(s[3]) >= 0 && hexval(s[4]) >= 0) {
        dst[0] = (uint8_t)(hexval(s[3]) * 16 + hexval(s[4]));
        *flags |= CKS_TOKEN_BYTE;
        return 1;
    }
    if (c->wordpiece) {
        if (len > c->wp_prefix_len && memcmp(s, c->wp_prefix, c->wp_prefix_len) == 0) {
            *flags |= CKS_TOKEN_CONTINUATION;
            i = c->wp_prefix_len;
        } else {
            dst[k++] = ' ';
        }
    }
    while (i < len) {
        uint32_t cp = 0;
        size_t n = utf8_next(s + i, len - i, &cp);
        if (n == 0) { /* not UTF-8: keep the byte as it is */
            dst[k++] = s[i++];
            *undecodable = true;
            continue;
        }
        if (c->byte_level) {
            if (cp < sizeof c->gpt2 / sizeof c->gpt2[0] && c->gpt2[cp] >= 0) {
                dst[k++] = (uint8_t)c->gpt2[cp];
            } else {
                memcpy(dst + k, s + i, n);
                k += n;
                *undecodable = true;
            }
        } else if (c->metaspace && cp == 0x2581) {
            dst[k++] = ' ';
        } else {
            memcpy(dst + k, s + i, n);
            k += n;
        }
        i += n;
    }
    return k;
}

/*
 * model.merges is never read (only whether it is there), yet in a BPE tokenizer.json it is a
 * quarter to two fifths of the bytes and, in the newer [["a", "b"], ...] spelling, three cJSON
 * nodes a merge: most of the parse. So the value of the first "merges" member of the first
 * "model" member is found with a plain scan and replaced by [] before cJSON parses the text.
 * The scan only needs to find where values end (strings with their escapes, nested brackets);
 * whatever it does not understand makes it give up, and the text is then parsed whole. cJSON
 * judges everything else; what lies inside the merges is only checked for balanced brackets
 * and closed strings, since nothing of it is used.
 */
static size_t json_ws(const char *s, size_t len, size_t i)
{
    while (i < len && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r'))
        i++;
    return i;
}

/* One past the end of the string starting at s[i] == '"', or 0. */
static size_t json_string_end(const char *s, size_t len, size_t i)
{
    for (i++; i < len;) {
        const char *q = memchr(s + i, '"', len - i);
        size_t at, backslashes = 0;
        if (!q)
            return 0;
        at = (size_t)(q - s);
        while (at - backslashes > i && s[at - backslashes - 1] == '\\')
            backslashes++;
        if (backslashes % 2 == 0)
            return at + 1;
        i = at + 1; /* an escaped quote */
    }
    return 0;
}

/* One past the end of the value starting at s[i], or 0 when it is not one. */
static size_t json_value_end(const char *s, size_t len, size_t i)
{
    size_t depth = 0;
    if (i >= len)
        return 0;
    if (s[i] != '{' && s[i] != '[') {
        if (s[i] == '"')
            return json_string_end(s, len, i);
        while (i < len && !strchr(",}] \t\r\n", s[i]))
            i++;
        return i;
    }
    while (i < len) {
        switch (s[i]) {
        case '"':
            i = json_string_end(s, len, i);
            if (i == 0)
                return 0;
            continue;
        case '{':
        case '[':
            depth++;
            break;
        case '}':
        case ']':
            if (--depth == 0)
                return i + 1;
            break;
        default:
            break;
        }
        i++;
    }
    return 0;
}

/* The value of the first member named `key` (spelled without escapes) of the object starting
 * at s[i] == '{': true with [*vb, *ve) set, false when absent or not understood. */
static bool json_member(const char *s, size_t len, size_t i, const char *key, size_t *vb, size_t *ve)
{
    size_t klen = strlen(key);
    if (i >= len || s[i] != '{')
        return false;
    i = json_ws(s, len, i + 1);
    while (i < len && s[i] == '"') {
        size_t kend = json_string_end(s, len, i), colon, b, e;
        if (kend == 0)
            return false;
        colon = json_ws(s, len, kend);
        if (colon >= len || s[colon] != ':')
            return false;
        b = json_ws(s, len, colon + 1);
        e = json_value_end(s, len, b);
        if (e == 0)
            return false;
        if (kend - i - 2 == klen && memcmp(s + i + 1, key, klen) == 0) {
            *vb = b;
            *ve = e;
            return true;
        }
        i = json_ws(s, len, e);
        if (i >= len || s[i] != ',')
            return false;
        i = json_ws(s, len, i + 1);
    }
    return false;
}

/* cJSON's tree of the text with model.merges emptied (see above), or of the whole text. */
static cJSON *parse_without_merges(const char *json, size_t len)
{
    size_t mb, me, gb, ge;
    char *lean;
    cJSON *root;
    if (!json_member(json, len, json_ws(json, len, 0), "model", &mb, &me) ||
        !json_member(json, me, mb, "merges", &gb, &ge) || ge - gb < 2)
        return cJSON_ParseWithLength(json, len);
    lean = malloc(len - (ge - gb) + 2);
    if (!lean)
        return cJSON_ParseWithLength(json, len);
    memcpy(lean, json, gb);
    memcpy(lean + gb, "[]", 2);
    memcpy(lean + gb + 2, json + ge, len - ge);
    root = cJSON_ParseWithLength(lean, len - (ge - gb) + 2);
    free(lean);
    return root;
}

static int raw_cmp(const void *pa, const void *pb)
{
    const raw_entry *a = pa, *b = pb;
    if (a->id != b->id)
        return a->id < b->id ? -1 : 1;
    /* an added token overrides model.vocab at its id; otherwise the first in the file wins */
    if ((a->flags & CKS_TOKEN_ADDED) != (b->flags & CKS_TOKEN_ADDED))
        return (a->flags & CKS_TOKEN_ADDED) ? -1 : 1;
    return a->order < b->order ? -1 : a->order > b->order;
}

static cks_err get_id(const cJSON *v, uint32_t *id, const char *what, cks_diag *diag)
{
    if (!cJSON_IsNumber(v) || v->valuedouble < 0 || v->valuedouble >= (double)CKS_TOK_MAX_ID ||
        v->valuedouble != (double)(int64_t)v->valuedouble)
        return cks_fail(diag, CKS_ERR_INVALID_ARG, "tokenizer.json: %s has an id that is not an integer in [0, %u)",
                        what, CKS_TOK_MAX_ID);
    *id = (uint32_t)v->valuedouble;
    return CKS_OK;
}

static cks_err add_raw(raw_entry *raw, size_t *n, size_t cap, uint32_t id, const char *piece, uint32_t flags,
                       cks_diag *diag)
{
    if (*n == cap)
        return cks_fail(diag, CKS_ERR_UNSUPPORTED, "tokenizer.json: more than %u tokens", CKS_TOK_MAX_VOCAB);
    if (strlen(piece) > CKS_TOK_MAX_PIECE)
        return cks_fail(diag, CKS_ERR_UNSUPPORTED, "tokenizer.json: token %u is longer than %u bytes", id,
                        CKS_TOK_MAX_PIECE);
    raw[*n] = (raw_entry){id, flags, *n, piece};
    (*n)++;
    return CKS_OK;
}

cks_err cks_vocab_parse(const char *json, size_t len, cks_vocab **out, cks_diag *diag)
{
    cJSON *root = NULL;
    const cJSON *model, *type, *vocab, *added, *item;
    raw_entry *raw = NULL;
    cks_vocab *v = NULL;
    parse_ctx c;
    size_t n_raw = 0, cap = 0, pool_cap = 0, pool_len = 0, n_vocab_items = 0, n_added = 0;
    cks_err err = CKS_OK;

    if (out)
        *out = NULL;
    if (!json || !out) {
        err = cks_fail(diag, CKS_ERR_INVALID_ARG, "tokenizer.json: no buffer");
        goto out;
    }
    if (len > CKS_TOK_MAX_JSON) {
        err = cks_fail(diag, CKS_ERR_UNSUPPORTED, "tokenizer.json is %zu bytes, more than the %u allowed", len,
                       CKS_TOK_MAX_JSON);
        goto out;
    }
    root = parse_without_merges(json, len);
    model = cJSON_GetObjectItemCaseSensitive(root, "model");
    if (!cJSON_IsObject(root) || !cJSON_IsObject(model)) {
        err = cks_fail(diag, CKS_ERR_INVALID_ARG, "tokenizer.json is not a JSON object with a \"model\" object");
        goto out;
    }
    v = calloc(1, sizeof *v);
    if (!v) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "tokenizer: out of memory");
        goto out;
    }
    vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
    type = cJSON_GetObjectItemCaseSensitive(model, "type");
    if (cJSON_IsString(type) && strcmp(type->valuestring, "BPE") == 0)
        v->model = CKS_TOK_BPE;
    else if (cJSON_IsString(type) && strcmp(type->valuestring, "Unigram") == 0)
        v->model = CKS_TOK_UNIGRAM;
    else if (cJSON_IsString(type) && strcmp(type->valuestring, "WordPiece") == 0)
        v->model = CKS_TOK_WORDPIECE;
    else if (cJSON_IsString(type) && strcmp(type->valuestring, "WordLevel") == 0)
        v->model = CKS_TOK_WORDLEVEL;
    else if (cJSON_IsArray(vocab)) /* older files omit "type": the shape of vocab tells */
        v->model = CKS_TOK_UNIGRAM;
    else if (cJSON_GetObjectItemCaseSensitive(model, "merges"))
        v->model = CKS_TOK_BPE;
    else if (cJSON_GetObjectItemCaseSensitive(model, "continuing_subword_prefix"))
        v->model = CKS_TOK_WORDPIECE;
    else
        v->model = CKS_TOK_WORDLEVEL;
    if ((v->model == CKS_TOK_UNIGRAM) != cJSON_IsArray(vocab) || !(cJSON_IsArray(vocab) || cJSON_IsObject(vocab))) {
        err = cks_fail(diag, CKS_ERR_INVALID_ARG, "tokenizer.json: model.vocab is not the %s a %s model has",
                       v->model == CKS_TOK_UNIGRAM ? "array" : "object",
                       v->model == CKS_TOK_UNIGRAM ? "Unigram" : "BPE/WordPiece/WordLevel");
        goto out;
    }

    memset(&c, 0, sizeof c);
    gpt2_table(c.gpt2);
    c.byte_level = has_type(cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer"), "ByteLevel", 0) ||
                   has_type(cJSON_GetObjectItemCaseSensitive(root, "decoder"), "ByteLevel", 0);
    c.metaspace = !c.byte_level;
    c.byte_fallback = v->model == CKS_TOK_UNIGRAM ||
                      cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(model, "byte_fallback"));
    c.wordpiece = v->model == CKS_TOK_WORDPIECE;
    if (c.wordpiece) {
        const cJSON *p = cJSON_GetObjectItemCaseSensitive(model, "continuing_subword_prefix");
        c.wp_prefix = cJSON_IsString(p) && p->valuestring[0] ? p->valuestring : "##";
        c.wp_prefix_len = strlen(c.wp_prefix);
    }
    v->byte_level = c.byte_level;
    v->metaspace = c.metaspace;
    v->byte_fallback = c.byte_fallback;

    /* bound the work before allocating for it */
    cJSON_ArrayForEach(item, vocab) {
        if (++n_vocab_items > CKS_TOK_MAX_VOCAB)
            break;
    }
    added = cJSON_GetObjectItemCaseSensitive(root, "added_tokens");
    cJSON_ArrayForEach(item, added) {
        if (++n_added > CKS_TOK_MAX_VOCAB)
            break;
    }
    if (n_vocab_items + n_added > CKS_TOK_MAX_VOCAB) {
        err = cks_fail(diag, CKS_ERR_UNSUPPORTED, "tokenizer.json: more than %u tokens", CKS_TOK_MAX_VOCAB);
        goto out;
    }
    cap = n_vocab_items + n_added;
    raw = calloc(cap ? cap : 1, sizeof *raw);
    if (!raw) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "tokenizer: out of memory for %zu tokens", cap);
        goto out;
    }

    if (v->model == CKS_TOK_UNIGRAM) {
        uint32_t id = 0;
        cJSON_ArrayForEach(item, vocab) {
            const cJSON *piece = cJSON_GetArrayItem(item, 0);
            if (!cJSON_IsArray(item) || !cJSON_IsString(piece)) {
                err = cks_fail(diag, CKS_ERR_INVALID_ARG,
                               "tokenizer.json: Unigram vocab entry %u is not [piece, score]", id);
                goto out;
            }
            if ((err = add_raw(raw, &n_raw, cap, id, piece->valuestring, 0, diag)))
                goto out;
            id++;
        }
    } else {
        cJSON_ArrayForEach(item, vocab) {
            uint32_t id = 0; /* set by get_id; initialised for -O3 flow analysis */
            if ((err = get_id(item, &id, "a model.vocab entry", diag)) ||
                (err = add_raw(raw, &n_raw, cap, id, item->string, 0, diag)))
                goto out;
        }
    }
    cJSON_ArrayForEach(item, added) {
        const cJSON *content = cJSON_GetObjectItemCaseSensitive(item, "content");
        uint32_t id = 0, flags = CKS_TOKEN_ADDED;
        if (!cJSON_IsString(content)) {
            err = cks_fail(diag, CKS_ERR_INVALID_ARG, "tokenizer.json: an added token has no content");
            goto out;
        }
        if ((err = get_id(cJSON_GetObjectItemCaseSensitive(item, "id"), &id, "an added token", diag)))
            goto out;
        if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(item, "special")))
            flags |= CKS_TOKEN_SPECIAL;
        if ((err = add_raw(raw, &n_raw, cap, id, content->valuestring, flags, diag)))
            goto out;
    }

    qsort(raw, n_raw, sizeof *raw, raw_cmp);
    /* room for every text: at most one byte longer than its piece; n_raw and each piece are bounded */
    for (size_t i = 0; i < n_raw; i++) {
        size_t l = strlen(raw[i].piece) + 1;
        if (pool_cap > SIZE_MAX - l) {
            err = cks_fail(diag, CKS_ERR_UNSUPPORTED, "tokenizer.json: vocabulary text too large");
            goto out;
        }
        pool_cap += l;
    }
    v->pool = malloc(pool_cap ? pool_cap : 1);
    v->tokens = calloc(n_raw ? n_raw : 1, sizeof *v->tokens);
    if (!v->pool || !v->tokens) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "tokenizer: out of memory for %zu bytes of token text", pool_cap);
        goto out;
    }
    for (size_t i = 0; i < n_raw; i++) {
        cks_token *t;
        bool undecodable = false, restates;
        uint32_t flags = raw[i].flags;
        size_t l;
        if (i > 0 && raw[i].id == raw[i - 1].id) {
            /* an added token replacing its own vocab entry is the normal case, not a duplicate */
            if (!(raw[i - 1].flags & CKS_TOKEN_ADDED) || (raw[i].flags & CKS_TOKEN_ADDED))
                v->n_duplicate_ids++;
            continue;
        }
        /* a non-special added token that restates the model's piece at its id is that model
         * token (only also matched literally): read it as the model's piece. Gemma 3 lists its
         * 30 runs of spaces this way ("▁▁" at id 138 is two spaces, as "ĠĠ" is in byte-level
         * vocabularies); sorted by raw_cmp, the vocab entry follows at the same id */
        restates = (flags & CKS_TOKEN_ADDED) && !(flags & CKS_TOKEN_SPECIAL) && i + 1 < n_raw &&
                   raw[i + 1].id == raw[i].id && !(raw[i + 1].flags & CKS_TOKEN_ADDED) &&
                   strcmp(raw[i + 1].piece, raw[i].piece) == 0;
        if (restates)
            flags &= ~(uint32_t)CKS_TOKEN_ADDED;
        l = normalise(&c, (const uint8_t *)raw[i].piece, strlen(raw[i].piece), &flags, v->pool + pool_len,
                      &undecodable);
        if (restates)
            flags |= CKS_TOKEN_ADDED;
        t = &v->tokens[v->n++];
        t->id = raw[i].id;
        t->len = (uint32_t)l;
        t->flags = flags;
        t->text = v->pool + pool_len; /* the pool was sized for everything: it never moves */
        pool_len += l;
        v->n_undecodable += undecodable;
    }
    *out = v;
    v = NULL;
out:
    cJSON_Delete(root);
    free(raw);
    cks_vocab_free(v);
    return err;
}

cks_err cks_vocab_load_file(const char *path, cks_vocab **out, cks_diag *diag)
{
    FILE *f = NULL;
    char *data = NULL;
    size_t len = 0;
    cks_err err = CKS_OK;

    if (out)
        *out = NULL;
    if (!path) {
        err = cks_fail(diag, CKS_ERR_INVALID_ARG, "tokenizer: no path");
        goto out;
    }
    f = fopen(path, "rb");
    if (!f) {
        err = cks_fail(diag, errno == ENOENT ? CKS_ERR_NOT_FOUND : CKS_ERR_IO, "%s: %s", path, strerror(errno));
        goto out;
    }
    /* one byte beyond the limit tells "too large" apart from "exactly the limit" */
    data = malloc((size_t)CKS_TOK_MAX_JSON + 1);
    if (!data) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "tokenizer: out of memory reading %s", path);
        goto out;
    }
    len = fread(data, 1, (size_t)CKS_TOK_MAX_JSON + 1, f);
    if (ferror(f)) {
        err = cks_fail(diag, CKS_ERR_IO, "%s: read error", path);
        goto out;
    }
    err = cks_vocab_parse(data, len, out, diag);
out:
    if (f)
        fclose(f);
    free(data);
    return err;
}

const cks_token *cks_vocab_find_id(const cks_vocab *vocab, uint32_t id)
{
    size_t lo = 0, hi;
    if (!vocab)
        return NULL;
    hi = vocab->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (vocab->tokens[mid].id < id)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < vocab->n && vocab->tokens[lo].id == id ? &vocab->tokens[lo] : NULL;
}

void cks_vocab_free(cks_vocab *vocab)
{
    if (!vocab)
        return;
    free(vocab->tokens);
    free(vocab->pool);
    free(vocab);
}

/* ---- matching ---- */

static int text_cmp(const cks_token *a, const cks_token *b)
{
    size_t n = a->len < b->len ? a->len : b->len;
    int c = n ? memcmp(a->text, b->text, n) : 0;
    if (c)
        return c;
    return a->len < b->len ? -1 : a->len > b->len;
}

static int by_text_then_id(const void *pa, const void *pb)
{
    const cks_token *a = *(const cks_token *const *)pa, *b = *(const cks_token *const *)pb;
    int c = text_cmp(a, b);
    if (c)
        return c;
    return a->id < b->id ? -1 : a->id > b->id;
}

static int pair_cmp(const void *pa, const void *pb)
{
    const cks_token_pair *a = pa, *b = pb;
    return a->id_a < b->id_a ? -1 : a->id_a > b->id_a;
}

/* The tokens of v sorted by text, one per distinct text (the lowest id). */
static const cks_token **distinct_texts(const cks_vocab *v, bool skip_special, size_t *n_out, size_t *dups)
{
    const cks_token **s = malloc((v->n ? v->n : 1) * sizeof *s);
    size_t n = 0, k = 0;
    *dups = 0;
    if (!s)
        return NULL;
    for (size_t i = 0; i < v->n; i++)
        if (!(skip_special && (v->tokens[i].flags & CKS_TOKEN_SPECIAL)))
            s[n++] = &v->tokens[i];
    qsort(s, n, sizeof *s, by_text_then_id);
    for (size_t i = 0; i < n; i++) {
        if (k > 0 && text_cmp(s[k - 1], s[i]) == 0) {
            (*dups)++;
            continue;
        }
        s[k++] = s[i];
    }
    *n_out = k;
    return s;
}

cks_err cks_vocab_match_run(const cks_vocab *a, const cks_vocab *b, const cks_vocab_match_opts *opts,
                            cks_vocab_match **out, cks_diag *diag)
{
    const cks_token **sa = NULL, **sb = NULL;
    cks_vocab_match *m = NULL;
    bool skip = opts && opts->skip_special;
    size_t i = 0, j = 0;
    cks_err err = CKS_OK;

    if (out)
        *out = NULL;
    if (!a || !b || !out) {
        err = cks_fail(diag, CKS_ERR_INVALID_ARG, "tokenizer match: missing vocabulary");
        goto out;
    }
    m = calloc(1, sizeof *m);
    if (!m) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "tokenizer match: out of memory");
        goto out;
    }
    sa = distinct_texts(a, skip, &m->n_a, &m->n_dup_a);
    sb = distinct_texts(b, skip, &m->n_b, &m->n_dup_b);
    m->pairs = malloc(((m->n_a < m->n_b ? m->n_a : m->n_b) + 1) * sizeof *m->pairs);
    if (!sa || !sb || !m->pairs) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "tokenizer match: out of memory for %zu + %zu tokens", a->n, b->n);
        goto out;
    }
    while (i < m->n_a && j < m->n_b) {
        int c = text_cmp(sa[i], sb[j]);
        if (c < 0) {
            i++;
        } else if (c > 0) {
            j++;
        } else {
            m->pairs[m->n_pairs++] = (cks_token_pair){sa[i]->id, sb[j]->id};
            m->n_same_id += sa[i]->id == sb[j]->id;
            i++;
            j++;
        }
    }
    qsort(m->pairs, m->n_pairs, sizeof *m->pairs, pair_cmp);
    m->n_shared = m->n_pairs;
    if (m->n_a + m->n_b > 0)
        m->jaccard = (double)m->n_shared / (double)(m->n_a + m->n_b - m->n_shared);
    *out = m;
    m = NULL;
out:
    free(sa);
    free(sb);
    cks_vocab_match_free(m);
    return err;
}

void cks_vocab_match_free(cks_vocab_match *match)
{
    if (!match)
        return;
    free(match->pairs);
    free(match);
}
