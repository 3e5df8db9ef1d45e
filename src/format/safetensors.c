/*
 * safetensors header and index parsing, rule for rule as the reference crate validates
 * (huggingface/safetensors tensor.rs; research notes hub-protocol.md §B2-§B6).
 *
 * cJSON is lenient where serde is strict, so the raw header bytes are checked first:
 * strict UTF-8, no control bytes other than JSON whitespace, no BOM, no escaped NUL (a C
 * string would silently truncate the name). Then cJSON parses with an explicit length,
 * we check that only JSON whitespace follows the value, look keys up case-sensitively and
 * reject duplicate keys ourselves. A plain header (the common case) skips cJSON's tree and
 * is read straight into the table; anything else goes through the tree (parse_flat).
 */
#include "ckptscope/safetensors.h"
#include "format/safetensors_internal.h"
#include "core/byteorder.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#define FIRST_CHUNK CKS_ST_FIRST_READ
#define MAX_EXACT_INTEGER 9007199254740992.0 /* 2^53: larger JSON numbers lose precision in a double */
#define MAX_INDEX_BYTES (256u * 1024u * 1024u)
_Static_assert(CKS_JSON_MAX_DEPTH == CJSON_NESTING_LIMIT && CKS_JSON_MAX_DEPTH == 1000,
               "the depth the messages name (1000) is cJSON's limit");

/* ---- raw byte checks ---- */

/*
 * Eight bytes at a time (the checks below passed over every byte of a header or index one by
 * one: two thirds of a flat index parse). Each test is exact for "some byte of the word":
 * word_has_zero for a zero byte, word_has_below for a byte under n (n <= 128), from the
 * classic bit tricks (Anderson, "Bit Twiddling Hacks", Stanford).
 */
#define BYTES_OF(b) (0x0101010101010101ULL * (uint64_t)(b))

static uint64_t word_at(const uint8_t *s)
{
    uint64_t w;
    memcpy(&w, s, sizeof w);
    return w;
}

static bool word_has_zero(uint64_t w)
{
    return ((w - BYTES_OF(1)) & ~w & BYTES_OF(0x80)) != 0;
}

static bool word_has_below(uint64_t w, uint8_t n)
{
    return ((w - BYTES_OF(n)) & ~w & BYTES_OF(0x80)) != 0;
}

/* The first byte at or after i (len if none) that ends a run of a JSON string's plain
 * characters: a quote, a backslash or a control byte. */
static size_t string_run_end(const uint8_t *s, size_t i, size_t len)
{
    while (i + 8 <= len) {
        uint64_t w = word_at(s + i);
        if (word_has_zero(w ^ BYTES_OF('"')) || word_has_zero(w ^ BYTES_OF('\\')) || word_has_below(w, 0x20))
            break;
        i += 8;
    }
    while (i < len && s[i] != '"' && s[i] != '\\' && s[i] >= 0x20)
        i++;
    return i;
}

/* Strict UTF-8 (no overlongs, no surrogates, nothing above U+10FFFF), as Rust's from_utf8.
 * Returns the offset of the first invalid byte, or len when all is valid. */
static size_t utf8_invalid_at(const uint8_t *s, size_t len)
{
    size_t i = 0;
    while (i < len) {
        uint8_t c = s[i];
        size_t need;
        uint32_t cp;
        if (i + 8 <= len && !(word_at(s + i) & BYTES_OF(0x80))) {
            i += 8; /* eight ASCII bytes */
            continue;
        }
        if (c < 0x80) {
            i++;
            continue;
        } else if (c >= 0xC2 && c <= 0xDF) {
            need = 1;
            cp = c & 0x1F;
        } else if (c >= 0xE0 && c <= 0xEF) {
            need = 2;
            cp = c & 0x0F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            need = 3;
            cp = c & 0x07;
        } else {
            return i;
        }
        if (len - i <= need)
            return i;
        for (size_t k = 1; k <= need; k++) {
            if ((s[i + k] & 0xC0) != 0x80)
                return i;
            cp = (cp << 6) | (s[i + k] & 0x3F);
        }
        if ((need == 2 && cp < 0x800) || (need == 3 && (cp < 0x10000 || cp > 0x10FFFF)) ||
            (cp >= 0xD800 && cp <= 0xDFFF))
            return i;
        i += need + 1;
    }
    return len;
}

static bool is_json_space(uint8_t c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

/*
 * serde_json rejects raw control bytes anywhere (inside strings too) except JSON
 * whitespace between tokens; cJSON would skip them as whitespace. An escaped \u0000 is
 * valid JSON but cannot survive as a C string. Returns the offset of the offending byte
 * or len; *what names the problem.
 */
size_t cks_json_too_deep_at(const char *json, size_t len)
{
    const uint8_t *s = (const uint8_t *)json;
    bool in_string = false;
    size_t depth = 0;
    for (size_t i = 0; i < len; i++) {
        uint8_t c = s[i];
        if (in_string) {
            i = string_run_end(s, i, len);
            if (i >= len)
                break;
            c = s[i];
            if (c == '\\')
                i++;
            else if (c == '"')
                in_string = false;
        } else if (c == '"') {
            in_string = true;
        } else if (c == '[' || c == '{') {
            if (++depth > CKS_JSON_MAX_DEPTH)
                return i;
        } else if ((c == ']' || c == '}') && depth > 0) {
            depth--;
        }
    }
    return len;
}

static size_t raw_json_problem_at(const uint8_t *s, size_t len, const char **what)
{
    bool in_string = false;
    size_t deep = cks_json_too_deep_at((const char *)s, len);
    if (len >= 3 && s[0] == 0xEF && s[1] == 0xBB && s[2] == 0xBF) {
        *what = "a UTF-8 byte-order mark before the JSON";
        return 0;
    }
    for (size_t i = 0; i < len; i++) {
        uint8_t c = s[i];
        if (i == deep) {
            /* cJSON would only say "not valid JSON" */
            *what = "arrays or objects nested more than 1000 levels deep (the JSON parser's "
                    "limit; a safetensors header nests 3)";
            return i;
        }
        if (c < 0x20 && (in_string || !is_json_space(c))) {
            *what = in_string ? "a raw control byte inside a string" : "a control byte outside JSON whitespace";
            return i;
        }
        if (!in_string) {
            if (c == '"')
                in_string = true;
            continue;
        }
        /* a run of plain characters cannot hold anything this loop looks for */
        size_t run = string_run_end(s, i, len);
        if (run > i) { /* (the depth limit's bracket is never inside a string) */
            i = run - 1;
            continue;
        }
        if (c == '"') {
            in_string = false;
        } else if (c == '\\' && i + 1 < len) {
            if (s[i + 1] == 'u' && i + 5 < len && memcmp(s + i + 2, "0000", 4) == 0) {
                *what = "an escaped NUL (\\u0000) in a string";
                return i;
            }
            i++; /* skip the escaped character, so \\" does not end the string */
        }
    }
    return len;
}

cks_err cks_st_sniff(const uint8_t *buf, size_t buf_len, uint64_t file_size, cks_diag *diag)
{
    size_t i = 0;
    static const char lfs_magic[] = "version https://git-lfs.github.com/spec/";
    size_t lfs_len = sizeof lfs_magic - 1;

    if (buf_len >= 8 && memcmp(buf, "version ", 8) == 0 &&
        (buf_len < lfs_len || memcmp(buf, lfs_magic, lfs_len) == 0))
        return cks_fail(diag, CKS_ERR_LFS_POINTER,
                        "this is a Git-LFS pointer (%llu bytes of text), not the weights: the file "
                        "was committed or cloned without LFS; run `git lfs pull` or download it "
                        "from the Hub's resolve URL",
                        (unsigned long long)file_size);
    while (i < buf_len && is_json_space(buf[i]))
        i++;
    if (i < buf_len && buf[i] == '<') {
        size_t rest = buf_len - i;
        const char *p = (const char *)buf + i;
        if ((rest >= 9 && strncasecmp(p, "<!doctype", 9) == 0) || (rest >= 5 && strncasecmp(p, "<html", 5) == 0) ||
            (rest >= 5 && strncasecmp(p, "<?xml", 5) == 0) || (rest >= 5 && strncasecmp(p, "<head", 5) == 0))
            return cks_fail(diag, CKS_ERR_HTML_PAGE,
                            "this is an HTML/XML page (%llu bytes), not a safetensors file: probably "
                            "an error or login page saved in its place; download it again (with a "
                            "token if the repo is gated)",
                            (unsigned long long)file_size);
    }
    if (i < buf_len && buf[i] == '{')
        return cks_fail(diag, CKS_ERR_TEXT_FILE,
                        "this is a JSON text file, not a safetensors file (safetensors starts with "
                        "an 8-byte little-endian header length)");
    /* Eight printable bytes in a row where the header length should be: text, not binary. */
    if (buf_len >= 8) {
        bool printable = true;
        for (size_t k = 0; k < 8; k++)
            if (!((buf[k] >= 0x20 && buf[k] < 0x7F) || buf[k] == '\n' || buf[k] == '\r' || buf[k] == '\t'))
                printable = false;
        if (printable) {
            char head[41];
            size_t n = buf_len < 40 ? buf_len : 40;
            for (size_t k = 0; k < n; k++)
                head[k] = (buf[k] >= 0x20 && buf[k] < 0x7F) ? (char)buf[k] : ' ';
            head[n] = '\0';
            return cks_fail(diag, CKS_ERR_TEXT_FILE,
                            "this is a text file (%llu bytes, starting \"%s%s\"), not a safetensors "
                            "file: a symlink stored as its target path, or a placeholder?",
                            (unsigned long long)file_size, head, buf_len > 40 ? "..." : "");
        }
    }
    return CKS_OK;
}

/* ---- header ---- */

static void clear_entries(cks_st_header *hdr);

void cks_st_header_free(cks_st_header *hdr)
{
    if (!hdr)
        return;
    clear_entries(hdr);
    free(hdr);
}

static int compare_cstr_ptr(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* The first of names[0..n) that appears twice (the array is sorted in place), or NULL. */
static const char *first_repeat(const char **names, size_t n)
{
    const char *twice = NULL;
    if (n > 1)
        qsort(names, n, sizeof *names, compare_cstr_ptr);
    for (size_t i = 1; i < n && !twice; i++)
        if (strcmp(names[i - 1], names[i]) == 0)
            twice = names[i];
    return twice;
}

/* Reject an object whose keys repeat (cJSON keeps both; serde keeps the last silently). */
static cks_err check_duplicate_keys(const cJSON *object, const char *where, cks_diag *diag)
{
    cks_err err = CKS_OK;
    size_t n = 0, i = 0;
    const char **names = NULL;
    const cJSON *child;

    cJSON_ArrayForEach(child, object) n++;
    if (n < 2)
        goto out;
    names = malloc(n * sizeof *names);
    if (!names) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory checking %zu keys", n);
        goto out;
    }
    cJSON_ArrayForEach(child, object) names[i++] = child->string;
    const char *twice = first_repeat(names, n);
    if (twice)
        err = cks_fail(diag, CKS_ERR_DUPLICATE_KEY,
                       "DuplicateKey: key \"%s\" appears more than once in %s (the reference "
                       "would silently keep the last one)",
                       twice, where);
out:
    free(names);
    return err;
}

/* A non-negative integer that a double holds exactly; anything else is not a usize. */
static cks_err json_to_u64(const cJSON *item, const char *tensor, const char *field, uint64_t *out,
                           cks_diag *diag)
{
    double v;
    if (!cJSON_IsNumber(item))
        return cks_fail(diag, CKS_ERR_INVALID_HEADER_DESERIALIZATION,
                        "InvalidHeaderDeserialization: tensor \"%s\": %s holds a non-number", tensor, field);
    v = item->valuedouble;
    if (!(v >= 0) || v != floor(v))
        return cks_fail(diag, CKS_ERR_INVALID_HEADER_DESERIALIZATION,
                        "InvalidHeaderDeserialization: tensor \"%s\": %s holds %g, not a "
                        "non-negative integer",
                        tensor, field, v);
    if (v >= MAX_EXACT_INTEGER)
        return cks_fail(diag, CKS_ERR_VALIDATION_OVERFLOW,
                        "ValidationOverflow: tensor \"%s\": %s holds %g, beyond 2^53 (no real "
                        "tensor is that large; the format's schema caps values at 2^48)",
                        tensor, field, v);
    *out = (uint64_t)v;
    return CKS_OK;
}

static cks_err parse_metadata(const cJSON *meta, cks_st_header *hdr, cks_diag *diag)
{
    cks_err err = CKS_OK;
    size_t n = 0, i = 0;
    const cJSON *child;

    if (cJSON_IsNull(meta))
        goto out;
    if (!cJSON_IsObject(meta)) {
        err = cks_fail(diag, CKS_ERR_INVALID_HEADER_DESERIALIZATION,
                       "InvalidHeaderDeserialization: __metadata__ must be an object of strings");
        goto out;
    }
    err = check_duplicate_keys(meta, "__metadata__", diag);
    if (err)
        goto out;
    cJSON_ArrayForEach(child, meta) n++;
    if (n == 0)
        goto out;
    hdr->metadata_keys = calloc(n, sizeof *hdr->metadata_keys);
    hdr->metadata_values = calloc(n, sizeof *hdr->metadata_values);
    if (!hdr->metadata_keys || !hdr->metadata_values) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory reading __metadata__");
        goto out;
    }
    cJSON_ArrayForEach(child, meta) {
        if (!cJSON_IsString(child)) {
            err = cks_fail(diag, CKS_ERR_INVALID_HEADER_DESERIALIZATION,
                           "InvalidHeaderDeserialization: __metadata__ value of \"%s\" is not a "
                           "string (arbitrary JSON is not allowed, all values must be strings)",
                           child->string);
            goto out;
        }
        hdr->metadata_keys[i] = strdup(child->string);
        hdr->metadata_values[i] = strdup(child->valuestring);
        hdr->n_metadata = ++i;
        if (!hdr->metadata_keys[i - 1] || !hdr->metadata_values[i - 1]) {
            err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory reading __metadata__");
            goto out;
        }
    }
out:
    return err;
}

static cks_err parse_tensor(const cJSON *obj, cks_tensor_info *t, cks_diag *diag)
{
    cks_err err = CKS_OK;
    const char *name = obj->string;
    const cJSON *dtype, *shape, *offsets, *dim;
    int ndim;

    if (!cJSON_IsObject(obj)) {
        err = cks_fail(diag, CKS_ERR_INVALID_HEADER_DESERIALIZATION,
                       "InvalidHeaderDeserialization: tensor \"%s\" is not an object", name);
        goto out;
    }
    err = check_duplicate_keys(obj, name, diag);
    if (err)
        goto out;
    t->name = strdup(name);
    if (!t->name) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        goto out;
    }
    dtype = cJSON_GetObjectItemCaseSensitive(obj, "dtype");
    shape = cJSON_GetObjectItemCaseSensitive(obj, "shape");
    offsets = cJSON_GetObjectItemCaseSensitive(obj, "data_offsets");
    if (!dtype || !shape || !offsets) {
        err = cks_fail(diag, CKS_ERR_INVALID_HEADER_DESERIALIZATION,
                       "InvalidHeaderDeserialization: tensor \"%s\" lacks \"%s\"", name,
                       !dtype ? "dtype" : !shape ? "shape" : "data_offsets");
        goto out;
    }
    if (!cJSON_IsString(dtype)) {
        err = cks_fail(diag, CKS_ERR_INVALID_HEADER_DESERIALIZATION,
                       "InvalidHeaderDeserialization: tensor \"%s\": dtype is not a string", name);
        goto out;
    }
    t->dtype = cks_dtype_from_name(dtype->valuestring, strlen(dtype->valuestring));
    if (t->dtype == CKS_DTYPE_INVALID) {
        err = cks_fail(diag, CKS_ERR_INVALID_HEADER_DESERIALIZATION,
                       "InvalidHeaderDeserialization: tensor \"%s\": unknown dtype \"%s\" (dtype "
                       "names are case-sensitive: BOOL, U8, I8, F8_E5M2, F8_E4M3, F8_E8M0, I16, "
                       "U16, F16, BF16, I32, U32, F32, F64, I64, U64, C64, F4, F6_E2M3, F6_E3M2, "
                       "F8_E4M3FNUZ, F8_E5M2FNUZ)",
                       name, dtype->valuestring);
        goto out;
    }
    if (!cJSON_IsArray(shape)) {
        err = cks_fail(diag, CKS_ERR_INVALID_HEADER_DESERIALIZATION,
                       "InvalidHeaderDeserialization: tensor \"%s\": shape is not an array", name);
        goto out;
    }
    ndim = cJSON_GetArraySize(shape);
    if (ndim > CKS_ST_MAX_NDIM) {
        err = cks_fail(diag, CKS_ERR_UNSUPPORTED, "tensor \"%s\" has %d dimensions; at most %d are supported",
                       name, ndim, CKS_ST_MAX_NDIM);
        goto out;
    }
    t->ndim = (uint32_t)ndim;
    if (ndim > 0) {
        t->shape = calloc((size_t)ndim, sizeof *t->shape);
        if (!t->shape) {
            err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
            goto out;
        }
    }
    {
        int d = 0;
        cJSON_ArrayForEach(dim, shape) {
            err = json_to_u64(dim, name, "shape", &t->shape[d++], diag);
            if (err)
                goto out;
        }
    }
    if (!cJSON_IsArray(offsets) || cJSON_GetArraySize(offsets) != 2) {
        err = cks_fail(diag, CKS_ERR_INVALID_HEADER_DESERIALIZATION,
                       "InvalidHeaderDeserialization: tensor \"%s\": data_offsets must be an array "
                       "of exactly two integers",
                       name);
        goto out;
    }
    err = json_to_u64(cJSON_GetArrayItem(offsets, 0), name, "data_offsets", &t->begin, diag);
    if (!err)
        err = json_to_u64(cJSON_GetArrayItem(offsets, 1), name, "data_offsets", &t->end, diag);
out:
    return err;
}

static int compare_by_offsets(const void *a, const void *b)
{
    const cks_tensor_info *x = a, *y = b;
    if (x->begin != y->begin)
        return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end)
        return x->end < y->end ? -1 : 1;
    /* ties (zero-size tensors at one offset): keep a deterministic order */
    return strcmp(x->name, y->name);
}

/*
 * Reference Metadata::validate: contiguous from 0, exact sizes, checked arithmetic. With
 * eof_rule false the last rule (the data ends at the end of the file) is left out and
 * hdr->file_size becomes the size the header implies (cks_st_parse_layout).
 */
static cks_err validate_layout(cks_st_header *hdr, bool eof_rule, cks_diag *diag)
{
    uint64_t start = 0;
    for (size_t i = 0; i < hdr->n_tensors; i++) {
        cks_tensor_info *t = &hdr->tensors[i];
        uint64_t nelements = 1, nbits;
        unsigned bits = cks_dtype_bits(t->dtype);

        if (t->begin != start || t->end < t->begin)
            return cks_fail(diag, CKS_ERR_INVALID_OFFSET,
                            "InvalidOffset: tensor \"%s\": data_offsets [%llu, %llu] %s (expected "
                            "it to start at %llu, where the previous tensor ends)",
                            t->name, (unsigned long long)t->begin, (unsigned long long)t->end,
                            t->end < t->begin        ? "end before they begin"
                            : t->begin > start       ? "leave a hole before this tensor"
                                                     : "overlap the previous tensor",
                            (unsigned long long)start);
        for (uint32_t d = 0; d < t->ndim; d++) {
            if (__builtin_mul_overflow(nelements, t->shape[d], &nelements))
                return cks_fail(diag, CKS_ERR_VALIDATION_OVERFLOW,
                                "ValidationOverflow: tensor \"%s\": the product of its shape "
                                "overflows 64 bits",
                                t->name);
        }
        if (__builtin_mul_overflow(nelements, (uint64_t)bits, &nbits))
            return cks_fail(diag, CKS_ERR_VALIDATION_OVERFLOW,
                            "ValidationOverflow: tensor \"%s\": %llu elements x %u bits overflows",
                            t->name, (unsigned long long)nelements, bits);
        if (nbits % 8 != 0)
            return cks_fail(diag, CKS_ERR_MISALIGNED_SLICE,
                            "MisalignedSlice: tensor \"%s\": %llu elements of %s (%u bits) is not "
                            "a whole number of bytes",
                            t->name, (unsigned long long)nelements, cks_dtype_name(t->dtype), bits);
        if (t->end - t->begin != nbits / 8)
            return cks_fail(diag, CKS_ERR_TENSOR_INVALID_INFO,
                            "TensorInvalidInfo: tensor \"%s\" at data offset %llu: %llu bytes "
                            "stored, but its shape and %s need %llu",
                            t->name, (unsigned long long)t->begin,
                            (unsigned long long)(t->end - t->begin), cks_dtype_name(t->dtype),
                            (unsigned long long)(nbits / 8));
        t->nelements = nelements;
        t->file_offset = hdr->data_start + t->begin;
        start = t->end;
    }
    /* start is now the end of the data section (0 when there is no tensor) */
    if (!eof_rule) {
        if (__builtin_add_overflow(hdr->data_start, start, &hdr->file_size))
            return cks_fail(diag, CKS_ERR_VALIDATION_OVERFLOW,
                            "ValidationOverflow: the header's data section ends past 2^64 bytes");
        return CKS_OK;
    }
    if (start > hdr->file_size - hdr->data_start)
        return cks_fail(diag, CKS_ERR_TRUNCATED,
                        "MetadataIncompleteBuffer (truncated): the header says the data ends at "
                        "byte %llu but the file has only %llu bytes: %llu bytes are missing "
                        "(an interrupted download?)",
                        (unsigned long long)(hdr->data_start + start), (unsigned long long)hdr->file_size,
                        (unsigned long long)(hdr->data_start + start - hdr->file_size));
    if (start < hdr->file_size - hdr->data_start)
        return cks_fail(diag, CKS_ERR_METADATA_INCOMPLETE_BUFFER,
                        "MetadataIncompleteBuffer: the last tensor ends at byte %llu but the file "
                        "has %llu bytes: %llu trailing bytes belong to no tensor",
                        (unsigned long long)(hdr->data_start + start), (unsigned long long)hdr->file_size,
                        (unsigned long long)(hdr->file_size - hdr->data_start - start));
    return CKS_OK;
}

/* ---- the common header without a tree ---- */

/*
 * Most headers are plain: an object of tensors, each {"dtype", "shape", "data_offsets"} with
 * small integers, perhaps a __metadata__ of strings, and no escapes anywhere. For those the
 * table is filled straight from the bytes. cJSON's tree of the same header is ~850 bytes per
 * tensor, every page of it touched for the first time (2,000 tensors: ~430 page faults, 8 ms
 * of a 2.9 ms parse when warm, on this kind of VM), and a compare opens 89 headers. Anything
 * else (an escape, a number cJSON and serde might read differently, a key out of place, any
 * error) declines, and the tree parser below decides and words the error: this path accepts
 * only what that one accepts and fills the same table (the differential test checks it).
 */
enum flat { FLAT_OK, FLAT_DECLINE, FLAT_NOMEM };

struct scan {
    const uint8_t *p, *end;
};

static void skip_space(struct scan *s)
{
    while (s->p < s->end && is_json_space(*s->p))
        s->p++;
}

static bool take_char(struct scan *s, uint8_t c)
{
    skip_space(s);
    bool ok = s->p < s->end && *s->p == c;
    if (ok)
        s->p++;
    return ok;
}

/* A string (the caller knows the bytes hold no backslash); it stays in the buffer. */
static bool take_string(struct scan *s, const uint8_t **str, size_t *n)
{
    const uint8_t *close = NULL;
    skip_space(s);
    if (s->p < s->end && *s->p == '"')
        close = memchr(s->p + 1, '"', (size_t)(s->end - s->p - 1));
    if (close) {
        *str = s->p + 1;
        *n = (size_t)(close - s->p - 1);
        s->p = close + 1;
    }
    return close != NULL;
}

static bool string_is(const uint8_t *str, size_t n, const char *lit)
{
    return n == strlen(lit) && memcmp(str, lit, n) == 0;
}

/* A JSON integer as a writer spells it (no sign, no leading zero, no fraction or exponent)
 * of at most 15 digits, which a double holds exactly: json_to_u64 would take the same. */
static bool take_small_integer(struct scan *s, uint64_t *v)
{
    const uint8_t *q;
    uint64_t x = 0;
    size_t digits = 0;
    skip_space(s);
    q = s->p;
    while (q < s->end && *q >= '0' && *q <= '9' && digits <= 15) {
        x = x * 10 + (uint64_t)(*q - '0');
        q++;
        digits++;
    }
    bool ok = digits >= 1 && digits <= 15 && !(digits > 1 && *s->p == '0') &&
              !(q < s->end && (*q == '.' || *q == 'e' || *q == 'E' || (*q >= '0' && *q <= '9')));
    if (ok) {
        *v = x;
        s->p = q;
    }
    return ok;
}

static enum flat flat_tensor(struct scan *s, const uint8_t *name, size_t name_len, cks_tensor_info *t)
{
    uint64_t dims[CKS_ST_MAX_NDIM];
    uint32_t ndim = 0;
    bool have_dtype = false, have_shape = false, have_offsets = false, ok = take_char(s, '{');
    for (int k = 0; k < 3 && ok; k++) {
        const uint8_t *key, *str;
        size_t key_len, n;
        ok = (k == 0 || take_char(s, ',')) && take_string(s, &key, &key_len) && take_char(s, ':');
        if (!ok)
            break;
        if (!have_dtype && string_is(key, key_len, "dtype")) {
            have_dtype = take_string(s, &str, &n);
            if (have_dtype)
                t->dtype = cks_dtype_from_name((const char *)str, n);
            ok = have_dtype && t->dtype != CKS_DTYPE_INVALID;
        } else if (!have_shape && string_is(key, key_len, "shape")) {
            have_shape = ok = take_char(s, '[');
            if (ok && !take_char(s, ']')) {
                do
                    ok = ndim < CKS_ST_MAX_NDIM && take_small_integer(s, &dims[ndim++]);
                while (ok && take_char(s, ','));
                ok = ok && take_char(s, ']');
            }
        } else if (!have_offsets && string_is(key, key_len, "data_offsets")) {
            have_offsets = ok = take_char(s, '[') && take_small_integer(s, &t->begin) && take_char(s, ',') &&
                                take_small_integer(s, &t->end) && take_char(s, ']');
        } else {
            ok = false;
        }
    }
    ok = ok && have_dtype && have_shape && have_offsets && take_char(s, '}');
    if (!ok)
        return FLAT_DECLINE;
    t->name = strndup((const char *)name, name_len);
    t->shape = ndim ? malloc(ndim * sizeof *t->shape) : NULL;
    if (!t->name || (ndim && !t->shape))
        return FLAT_NOMEM; /* the caller frees what was made */
    if (ndim)
        memcpy(t->shape, dims, ndim * sizeof *t->shape);
    t->ndim = ndim;
    return FLAT_OK;
}

/* null, or an object of strings (parse_flat checks that its keys do not repeat) */
static enum flat flat_metadata(struct scan *s, cks_st_header *hdr)
{
    size_t cap = 0;
    enum flat r = FLAT_OK;
    skip_space(s);
    if (s->end - s->p >= 4 && memcmp(s->p, "null", 4) == 0) {
        s->p += 4;
        return FLAT_OK;
    }
    if (!take_char(s, '{'))
        return FLAT_DECLINE;
    if (take_char(s, '}'))
        return FLAT_OK;
    do {
        const uint8_t *key, *value;
        size_t key_len, value_len;
        if (!take_string(s, &key, &key_len) || !take_char(s, ':') || !take_string(s, &value, &value_len)) {
            r = FLAT_DECLINE;
            break;
        }
        if (hdr->n_metadata == cap) {
            size_t ncap = cap ? 2 * cap : 8;
            char **k = realloc(hdr->metadata_keys, ncap * sizeof *k);
            if (k)
                hdr->metadata_keys = k;
            char **v = k ? realloc(hdr->metadata_values, ncap * sizeof *v) : NULL;
            if (v)
                hdr->metadata_values = v;
            r = k && v ? FLAT_OK : FLAT_NOMEM;
            cap = r == FLAT_OK ? ncap : cap;
        }
        if (r != FLAT_OK)
            break;
        /* strndup copies them whole: the raw checks let no NUL into a header */
        hdr->metadata_keys[hdr->n_metadata] = strndup((const char *)key, key_len);
        hdr->metadata_values[hdr->n_metadata] = strndup((const char *)value, value_len);
        hdr->n_metadata++;
        if (!hdr->metadata_keys[hdr->n_metadata - 1] || !hdr->metadata_values[hdr->n_metadata - 1])
            r = FLAT_NOMEM;
    } while (r == FLAT_OK && take_char(s, ','));
    if (r == FLAT_OK && !take_char(s, '}'))
        r = FLAT_DECLINE;
    return r;
}

/* FLAT_DECLINE when two tensors, or two metadata keys, share a name: the tree parser then
 * words the error. */
static enum flat flat_names_repeat(const cks_st_header *hdr)
{
    size_t most = hdr->n_tensors > hdr->n_metadata ? hdr->n_tensors : hdr->n_metadata;
    const char **names = malloc((most ? most : 1) * sizeof *names);
    enum flat r = names ? FLAT_OK : FLAT_NOMEM;
    if (r == FLAT_OK) {
        for (size_t i = 0; i < hdr->n_tensors; i++)
            names[i] = hdr->tensors[i].name;
        if (first_repeat(names, hdr->n_tensors))
            r = FLAT_DECLINE;
    }
    if (r == FLAT_OK) {
        for (size_t i = 0; i < hdr->n_metadata; i++)
            names[i] = hdr->metadata_keys[i];
        if (first_repeat(names, hdr->n_metadata))
            r = FLAT_DECLINE;
    }
    free(names);
    return r;
}

static enum flat parse_flat(const uint8_t *json, size_t len, cks_st_header *hdr)
{
    struct scan s = {json, json + len};
    size_t cap = 0;
    bool seen_metadata = false;
    enum flat r = FLAT_OK;
    if (memchr(json, '\\', len) || !take_char(&s, '{'))
        return FLAT_DECLINE;
    if (!take_char(&s, '}')) {
        do {
            const uint8_t *key;
            size_t key_len;
            if (!take_string(&s, &key, &key_len) || !take_char(&s, ':')) {
                r = FLAT_DECLINE;
            } else if (string_is(key, key_len, "__metadata__")) {
                r = seen_metadata ? FLAT_DECLINE : flat_metadata(&s, hdr);
                seen_metadata = true;
            } else {
                if (hdr->n_tensors == cap) {
                    size_t ncap = cap ? 2 * cap : 64;
                    cks_tensor_info *t = realloc(hdr->tensors, ncap * sizeof *t);
                    if (t) {
                        hdr->tensors = t;
                        cap = ncap;
                    }
                    r = t ? FLAT_OK : FLAT_NOMEM;
                }
                if (r == FLAT_OK) {
                    memset(&hdr->tensors[hdr->n_tensors], 0, sizeof hdr->tensors[0]);
                    hdr->n_tensors++; /* so the caller frees a partly filled entry */
                    r = flat_tensor(&s, key, key_len, &hdr->tensors[hdr->n_tensors - 1]);
                }
            }
        } while (r == FLAT_OK && take_char(&s, ','));
        if (r == FLAT_OK && !take_char(&s, '}'))
            r = FLAT_DECLINE;
    }
    skip_space(&s);
    if (r == FLAT_OK && s.p != s.end)
        r = FLAT_DECLINE;
    if (r == FLAT_OK)
        r = flat_names_repeat(hdr);
    return r;
}

/* Forget the tensors and metadata of a header (a flat parse that declined part way). */
static void clear_entries(cks_st_header *hdr)
{
    for (size_t i = 0; i < hdr->n_tensors; i++) {
        free(hdr->tensors[i].name);
        free(hdr->tensors[i].shape);
    }
    free(hdr->tensors);
    for (size_t i = 0; i < hdr->n_metadata; i++) {
        free(hdr->metadata_keys[i]);
        free(hdr->metadata_values[i]);
    }
    free(hdr->metadata_keys);
    free(hdr->metadata_values);
    hdr->tensors = NULL;
    hdr->metadata_keys = hdr->metadata_values = NULL;
    hdr->n_tensors = hdr->n_metadata = 0;
}

bool cks_st_flat_accepts(const uint8_t *buf, size_t buf_len)
{
    cks_st_header scratch = {0};
    uint64_t n = buf_len >= 8 ? cks_get_le64(buf) : 0;
    bool ok = buf_len >= 8 && n <= buf_len - 8 && parse_flat(buf + 8, (size_t)n, &scratch) == FLAT_OK;
    clear_entries(&scratch);
    return ok;
}

/* ---- every header, through cJSON's tree ---- */

static cks_err parse_tree(const uint8_t *json, size_t len, cks_st_header *hdr, cks_diag *diag)
{
    cks_err err = CKS_OK;
    cJSON *root = NULL;
    const char *end = NULL;
    const cJSON *child;
    size_t n = 0, i = 0;

    root = cJSON_ParseWithLengthOpts((const char *)json, len, &end, 0);
    if (!root) {
        const char *bad = cJSON_GetErrorPtr();
        size_t pos = (bad && bad >= (const char *)json && bad <= (const char *)json + len)
                         ? (size_t)(bad - (const char *)json)
                         : 0;
        err = cks_fail(diag, CKS_ERR_INVALID_HEADER_DESERIALIZATION,
                       "InvalidHeaderDeserialization: the header is not valid JSON (near file "
                       "offset %zu)",
                       pos + 8);
        goto out;
    }
    for (const uint8_t *p = (const uint8_t *)end; p < json + len; p++) {
        if (!is_json_space(*p)) {
            err = cks_fail(diag, CKS_ERR_INVALID_HEADER_DESERIALIZATION,
                           "InvalidHeaderDeserialization: trailing characters after the JSON "
                           "object at file offset %zu (padding must be JSON whitespace)",
                           (size_t)(p - json) + 8);
            goto out;
        }
    }
    if (!cJSON_IsObject(root)) {
        err = cks_fail(diag, CKS_ERR_INVALID_HEADER_DESERIALIZATION,
                       "InvalidHeaderDeserialization: the header is JSON but not an object");
        goto out;
    }
    err = check_duplicate_keys(root, "the header", diag);
    if (err)
        goto out;
    cJSON_ArrayForEach(child, root) {
        if (strcmp(child->string, "__metadata__") != 0)
            n++;
    }
    if (n > 0) {
        hdr->tensors = calloc(n, sizeof *hdr->tensors);
        if (!hdr->tensors) {
            err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory for %zu tensors", n);
            goto out;
        }
    }
    cJSON_ArrayForEach(child, root) {
        if (strcmp(child->string, "__metadata__") == 0) {
            err = parse_metadata(child, hdr, diag);
        } else {
            hdr->n_tensors = i + 1; /* so free() sees the partly filled entry */
            err = parse_tensor(child, &hdr->tensors[i++], diag);
        }
        if (err)
            goto out;
    }
out:
    cJSON_Delete(root);
    return err;
}

static cks_err parse_json(const uint8_t *json, size_t len, cks_st_header *hdr, bool eof_rule, bool tree_only,
                          cks_diag *diag)
{
    cks_err err = CKS_OK;
    const char *what = NULL;
    size_t at;
    enum flat flat = FLAT_DECLINE;

    at = utf8_invalid_at(json, len);
    if (at < len) {
        err = cks_fail(diag, CKS_ERR_INVALID_HEADER,
                       "InvalidHeader: the header is not valid UTF-8 (byte 0x%02x at file offset %zu)",
                       json[at], at + 8);
        goto out;
    }
    at = raw_json_problem_at(json, len, &what);
    if (at < len) {
        err = cks_fail(diag, CKS_ERR_INVALID_HEADER_DESERIALIZATION,
                       "InvalidHeaderDeserialization: %s at file offset %zu", what, at + 8);
        goto out;
    }
    if (!tree_only)
        flat = parse_flat(json, len, hdr);
    if (flat == FLAT_NOMEM) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory for a %zu-byte header", len);
        goto out;
    }
    if (flat == FLAT_DECLINE) {
        clear_entries(hdr);
        err = parse_tree(json, len, hdr, diag);
        if (err)
            goto out;
    }
    if (hdr->n_tensors > 1)
        qsort(hdr->tensors, hdr->n_tensors, sizeof *hdr->tensors, compare_by_offsets);
    err = validate_layout(hdr, eof_rule, diag);
out:
    return err;
}

/*
 * Both parsers. With eof_rule, every rule of the reference against a file of file_size
 * bytes; without, file_size is unknown (UINT64_MAX) and every rule but the end-of-file one
 * is checked (the header length is then bounded only by the 100 MB limit).
 */
static cks_err parse_header(const uint8_t *buf, size_t buf_len, uint64_t file_size, bool eof_rule,
                            bool tree_only, cks_st_header **out, uint64_t *need, cks_diag *diag)
{
    cks_err err = CKS_OK;
    cks_st_header *hdr = NULL;
    uint64_t n = 0;

    *out = NULL;
    if (need)
        *need = 0;
    if (file_size < 8) {
        err = cks_fail(diag, CKS_ERR_HEADER_TOO_SMALL,
                       "HeaderTooSmall: the file has %llu bytes, fewer than the 8-byte header "
                       "length every safetensors file starts with (empty or not safetensors)",
                       (unsigned long long)file_size);
        goto out;
    }
    if (buf_len < 8) {
        if (need)
            *need = 8;
        err = cks_fail(diag, CKS_ERR_NEED_MORE, "need the first 8 bytes");
        goto out;
    }
    n = cks_get_le64(buf);
    if (n > CKS_ST_MAX_HEADER || 8 + n > file_size) {
        /* The usual reason is that this is not safetensors at all: say what it is. */
        err = cks_st_sniff(buf, buf_len, file_size, diag);
        if (err)
            goto out;
        if (n > CKS_ST_MAX_HEADER)
            err = cks_fail(diag, CKS_ERR_HEADER_TOO_LARGE,
                           "HeaderTooLarge: the first 8 bytes declare a %llu-byte header; the "
                           "limit is %llu (not a safetensors file? a pickle .bin renamed?)",
                           (unsigned long long)n, (unsigned long long)CKS_ST_MAX_HEADER);
        else
            err = cks_fail(diag, CKS_ERR_INVALID_HEADER_LENGTH,
                           "InvalidHeaderLength: the header is declared as %llu bytes but the file "
                           "has only %llu bytes after the length field (truncated, or not "
                           "safetensors)",
                           (unsigned long long)n, (unsigned long long)(file_size - 8));
        goto out;
    }
    if (buf_len < 8 + n) {
        if (need)
            *need = 8 + n;
        err = cks_fail(diag, CKS_ERR_NEED_MORE, "need %llu bytes for the header", (unsigned long long)(8 + n));
        goto out;
    }
    hdr = calloc(1, sizeof *hdr);
    if (!hdr) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        goto out;
    }
    hdr->header_len = n;
    hdr->data_start = 8 + n;
    hdr->file_size = file_size;
    err = parse_json(buf + 8, (size_t)n, hdr, eof_rule, tree_only, diag);
    if (err)
        goto out;
    *out = hdr;
    hdr = NULL;
out:
    cks_st_header_free(hdr);
    return err;
}

cks_err cks_st_parse(const uint8_t *buf, size_t buf_len, uint64_t file_size, cks_st_header **out,
                     uint64_t *need, cks_diag *diag)
{
    return parse_header(buf, buf_len, file_size, true, false, out, need, diag);
}

cks_err cks_st_parse_tree_only(const uint8_t *buf, size_t buf_len, uint64_t file_size, cks_st_header **out,
                               cks_diag *diag)
{
    return parse_header(buf, buf_len, file_size, true, true, out, NULL, diag);
}

cks_err cks_st_parse_layout(const uint8_t *buf, size_t buf_len, cks_st_header **out, uint64_t *need,
                            cks_diag *diag)
{
    return parse_header(buf, buf_len, UINT64_MAX, false, false, out, need, diag);
}

cks_err cks_st_read_header(cks_source *src, cks_st_header **out, cks_diag *diag)
{
    cks_err err = CKS_OK;
    uint8_t *buf = NULL;
    uint64_t have = src->size < FIRST_CHUNK ? src->size : FIRST_CHUNK, need = 0;
    cks_diag inner;

    *out = NULL;
    for (int attempt = 0; attempt < 2; attempt++) {
        uint8_t *grown = realloc(buf, have ? (size_t)have : 1);
        if (!grown) {
            err = cks_fail(diag, CKS_ERR_NOMEM, "%s: out of memory for a %llu-byte header", src->name,
                           (unsigned long long)have);
            goto out;
        }
        buf = grown;
        err = cks_source_read_at(src, 0, buf, (size_t)have, diag);
        if (err)
            goto out;
        err = cks_st_parse(buf, (size_t)have, src->size, out, &need, &inner);
        if (err != CKS_ERR_NEED_MORE)
            break;
        have = need; /* bounded by the parser: need <= 8 + 100,000,000 <= size */
    }
    if (err)
        cks_fail(diag, err, "%s: %s", src->name, inner.text);
out:
    free(buf);
    return err;
}

const cks_tensor_info *cks_st_find(const cks_st_header *hdr, const char *name)
{
    for (size_t i = 0; i < hdr->n_tensors; i++)
        if (strcmp(hdr->tensors[i].name, name) == 0)
            return &hdr->tensors[i];
    return NULL;
}

/* ---- index ---- */

/* Everything an index holds, freed; the index itself left empty. */
static void index_clear(cks_st_index *ix)
{
    for (size_t i = 0; i < ix->n_entries; i++)
        free(ix->entries[i].tensor);
    free(ix->entries);
    for (size_t i = 0; i < ix->n_shards; i++)
        free(ix->shards[i]);
    free(ix->shards);
    memset(ix, 0, sizeof *ix);
    ix->total_size = -1;
}

void cks_st_index_free(cks_st_index *index)
{
    if (!index)
        return;
    index_clear(index);
    free(index);
}

/* A shard path must stay inside the checkpoint: no "..", no absolute path, no URL. */
static cks_err check_shard_path(const char *path, const char *tensor, cks_diag *diag)
{
    const char *why = NULL;
    size_t len = strlen(path);

    if (len == 0)
        why = "is empty";
    else if (path[0] == '/')
        why = "is absolute";
    else if (strchr(path, '\\'))
        why = "contains a backslash";
    else if (strstr(path, "://") || (len >= 2 && path[1] == ':'))
        why = "is a URL or drive path";
    else {
        for (size_t i = 0; i < len && !why; i++)
            if ((unsigned char)path[i] < 0x20)
                why = "contains a control character";
        const char *p = path;
        while (!why && *p) {
            const char *slash = strchr(p, '/');
            size_t seg = slash ? (size_t)(slash - p) : strlen(p);
            if ((seg == 2 && p[0] == '.' && p[1] == '.') || seg == 0)
                why = seg == 0 ? "has an empty path component" : "leaves the checkpoint with \"..\"";
            p = slash ? slash + 1 : p + seg;
        }
    }
    if (why)
        return cks_fail(diag, CKS_ERR_UNSAFE_PATH,
                        "UnsafeShardPath: the index maps tensor \"%s\" to shard \"%s\", which %s; "
                        "shard paths must be relative paths inside the checkpoint",
                        tensor, path, why);
    return CKS_OK;
}

static int compare_entries(const void *a, const void *b)
{
    return strcmp(((const cks_st_index_entry *)a)->tensor, ((const cks_st_index_entry *)b)->tensor);
}

/*
 * An index as its writers spell it (transformers, safetensors, mlx): {"metadata": {plain
 * values}, "weight_map": {"name": "shard", ...}}, no escapes. Read straight from the bytes:
 * cJSON's tree of a 2,000-tensor index, its duplicate-key sort and a sort of every entry's
 * shard path took 1.4 ms warm and 2.6-3.3 ms in a fresh process (a quarter of a 500-tensor
 * fetch's Hub stages on loopback); an index of an 89-shard MoE is ten times that. Anything
 * else (an escape, another key, a nested value, a repeated name, an unsafe path, any error)
 * declines, and the tree parser below decides and words it, as for headers (parse_flat).
 */
struct flat_index {
    cks_st_index *index;
    size_t cap;
    const uint8_t **paths;  /* distinct shard paths met so far (in the buffer), first-seen order */
    size_t *path_lens;
    size_t n_paths, cap_paths;
};

/* The distinct-path slot of a shard path; entries of one shard mostly come together. */
static enum flat index_path_slot(struct flat_index *f, const uint8_t *path, size_t len, size_t last, size_t *slot)
{
    if (last < f->n_paths && f->path_lens[last] == len && memcmp(f->paths[last], path, len) == 0) {
        *slot = last;
        return FLAT_OK;
    }
    for (size_t i = 0; i < f->n_paths; i++)
        if (f->path_lens[i] == len && memcmp(f->paths[i], path, len) == 0) {
            *slot = i;
            return FLAT_OK;
        }
    if (f->n_paths == f->cap_paths) {
        size_t nc = f->cap_paths ? 2 * f->cap_paths : 16;
        const uint8_t **np = realloc(f->paths, nc * sizeof *np);
        if (np)
            f->paths = np;
        size_t *nl = np ? realloc(f->path_lens, nc * sizeof *nl) : NULL;
        if (!nl)
            return FLAT_NOMEM;
        f->path_lens = nl;
        f->cap_paths = nc;
    }
    f->paths[f->n_paths] = path;
    f->path_lens[f->n_paths] = len;
    *slot = f->n_paths++;
    return FLAT_OK;
}

static enum flat flat_weight_map(struct scan *s, struct flat_index *f)
{
    cks_st_index *ix = f->index;
    enum flat r = FLAT_OK;
    size_t last = 0;
    if (!take_char(s, '{'))
        return FLAT_DECLINE;
    if (take_char(s, '}'))
        return FLAT_OK;
    do {
        const uint8_t *name, *path;
        size_t name_len, path_len, slot = 0;
        if (!take_string(s, &name, &name_len) || !take_char(s, ':') || !take_string(s, &path, &path_len)) {
            r = FLAT_DECLINE;
            break;
        }
        if (ix->n_entries == f->cap) {
            size_t nc = f->cap ? 2 * f->cap : 256;
            cks_st_index_entry *ne = realloc(ix->entries, nc * sizeof *ne);
            if (!ne) {
                r = FLAT_NOMEM;
                break;
            }
            ix->entries = ne;
            f->cap = nc;
        }
        r = index_path_slot(f, path, path_len, last, &slot);
        if (r != FLAT_OK)
            break;
        last = slot;
        /* strndup copies the name whole: the raw checks let no NUL into an index */
        ix->entries[ix->n_entries].tensor = strndup((const char *)name, name_len);
        ix->entries[ix->n_entries].shard = slot;
        if (!ix->entries[ix->n_entries++].tensor)
            r = FLAT_NOMEM;
    } while (r == FLAT_OK && take_char(s, ','));
    if (r == FLAT_OK && !take_char(s, '}'))
        r = FLAT_DECLINE;
    return r;
}

/* {} or an object of small integers and plain strings; total_size read as the tree reads it */
static enum flat flat_index_metadata(struct scan *s, cks_st_index *ix)
{
    bool seen_total = false;
    if (!take_char(s, '{'))
        return FLAT_DECLINE;
    if (take_char(s, '}'))
        return FLAT_OK;
    do {
        const uint8_t *key, *str;
        size_t key_len, n;
        uint64_t v = 0;
        if (!take_string(s, &key, &key_len) || !take_char(s, ':'))
            return FLAT_DECLINE;
        bool total = string_is(key, key_len, "total_size");
        if (total && seen_total)
            return FLAT_DECLINE; /* which one counts is the tree's call */
        seen_total = seen_total || total;
        skip_space(s);
        if (s->p < s->end && *s->p == '"') {
            if (!take_string(s, &str, &n))
                return FLAT_DECLINE;
        } else if (take_small_integer(s, &v)) {
            if (total)
                ix->total_size = (int64_t)v;
        } else {
            return FLAT_DECLINE;
        }
    } while (take_char(s, ','));
    return take_char(s, '}') ? FLAT_OK : FLAT_DECLINE;
}

static int compare_path_slots(const void *a, const void *b, void *ctx)
{
    const struct flat_index *f = ctx;
    size_t x = *(const size_t *)a, y = *(const size_t *)b;
    size_t n = f->path_lens[x] < f->path_lens[y] ? f->path_lens[x] : f->path_lens[y];
    int c = memcmp(f->paths[x], f->paths[y], n);
    return c ? c : (f->path_lens[x] > f->path_lens[y]) - (f->path_lens[x] < f->path_lens[y]);
}

/* The distinct shard paths sorted, each checked safe, and the entries pointed at them. */
static enum flat flat_index_shards(struct flat_index *f)
{
    cks_st_index *ix = f->index;
    size_t n = f->n_paths;
    size_t *order = malloc((n ? n : 1) * sizeof *order), *rank = malloc((n ? n : 1) * sizeof *rank);
    enum flat r = order && rank ? FLAT_OK : FLAT_NOMEM;
    if (r == FLAT_OK && n > 0 && !(ix->shards = calloc(n, sizeof *ix->shards)))
        r = FLAT_NOMEM;
    for (size_t i = 0; i < n && r == FLAT_OK; i++)
        order[i] = i;
    if (r == FLAT_OK)
        qsort_r(order, n, sizeof *order, compare_path_slots, f);
    for (size_t i = 0; i < n && r == FLAT_OK; i++) {
        ix->shards[i] = strndup((const char *)f->paths[order[i]], f->path_lens[order[i]]);
        ix->n_shards = i + 1;
        rank[order[i]] = i;
        if (!ix->shards[i])
            r = FLAT_NOMEM;
        else if (check_shard_path(ix->shards[i], "", NULL) != CKS_OK)
            r = FLAT_DECLINE; /* the tree names the first tensor that maps there */
    }
    for (size_t i = 0; i < ix->n_entries && r == FLAT_OK; i++)
        ix->entries[i].shard = rank[ix->entries[i].shard];
    free(order);
    free(rank);
    return r;
}

static enum flat index_flat(const char *json, size_t len, cks_st_index *ix)
{
    struct scan s = {(const uint8_t *)json, (const uint8_t *)json + len};
    struct flat_index f = {.index = ix};
    bool seen_meta = false, seen_map = false;
    enum flat r = FLAT_OK;
    if (memchr(json, '\\', len) || !take_char(&s, '{'))
        return FLAT_DECLINE;
    if (take_char(&s, '}'))
        r = FLAT_DECLINE; /* no weight_map: the tree words it */
    while (r == FLAT_OK) {
        const uint8_t *key;
        size_t key_len;
        if (!take_string(&s, &key, &key_len) || !take_char(&s, ':')) {
            r = FLAT_DECLINE;
        } else if (string_is(key, key_len, "metadata") && !seen_meta) {
            seen_meta = true;
            r = flat_index_metadata(&s, ix);
        } else if (string_is(key, key_len, "weight_map") && !seen_map) {
            seen_map = true;
            r = flat_weight_map(&s, &f);
        } else {
            r = FLAT_DECLINE;
        }
        if (r != FLAT_OK || !take_char(&s, ','))
            break;
    }
    if (r == FLAT_OK && (!seen_map || !take_char(&s, '}')))
        r = FLAT_DECLINE;
    skip_space(&s);
    if (r == FLAT_OK && s.p != s.end)
        r = FLAT_DECLINE;
    if (r == FLAT_OK)
        r = flat_index_shards(&f);
    if (r == FLAT_OK && ix->n_entries > 1) {
        qsort(ix->entries, ix->n_entries, sizeof *ix->entries, compare_entries);
        for (size_t i = 1; i < ix->n_entries && r == FLAT_OK; i++)
            if (strcmp(ix->entries[i - 1].tensor, ix->entries[i].tensor) == 0)
                r = FLAT_DECLINE; /* DuplicateKey, worded by the tree */
    }
    free(f.paths);
    free(f.path_lens);
    return r;
}

bool cks_st_index_flat_accepts(const char *json, size_t len)
{
    cks_st_index scratch = {.total_size = -1};
    bool ok = index_flat(json, len, &scratch) == FLAT_OK;
    index_clear(&scratch);
    return ok;
}

/* Both parsers: the flat one first unless tree_only, the tree for whatever it declines. */
static cks_err index_parse(const char *json, size_t len, bool tree_only, cks_st_index **out, cks_diag *diag)
{
    cks_err err = CKS_OK;
    cJSON *root = NULL;
    cks_st_index *index = NULL;
    const cJSON *map, *meta, *child;
    const char *end = NULL, *what = NULL;
    const char **paths = NULL;
    size_t n = 0, i = 0, at;

    *out = NULL;
    if (len > MAX_INDEX_BYTES) {
        err = cks_fail(diag, CKS_ERR_INDEX_INVALID, "IndexInvalid: the index is %zu bytes, over the %u-byte limit",
                       len, MAX_INDEX_BYTES);
        goto out;
    }
    at = utf8_invalid_at((const uint8_t *)json, len);
    if (at == len)
        at = raw_json_problem_at((const uint8_t *)json, len, &what);
    if (at < len) {
        err = cks_fail(diag, CKS_ERR_INDEX_INVALID, "IndexInvalid: %s at byte %zu",
                       what ? what : "invalid UTF-8", at);
        goto out;
    }
    if (!tree_only) {
        index = calloc(1, sizeof *index);
        if (index)
            index->total_size = -1;
        enum flat flat = index ? index_flat(json, len, index) : FLAT_NOMEM;
        if (flat == FLAT_NOMEM) {
            err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory for a %zu-byte index", len);
            goto out;
        }
        if (flat == FLAT_OK) {
            *out = index;
            index = NULL;
            goto out;
        }
        cks_st_index_free(index);
        index = NULL;
    }
    root = cJSON_ParseWithLengthOpts(json, len, &end, 0);
    if (!root) {
        err = cks_fail(diag, CKS_ERR_INDEX_INVALID, "IndexInvalid: not valid JSON");
        goto out;
    }
    for (const char *p = end; p < json + len; p++)
        if (!is_json_space((uint8_t)*p)) {
            err = cks_fail(diag, CKS_ERR_INDEX_INVALID, "IndexInvalid: trailing characters after the JSON at byte %zu",
                           (size_t)(p - json));
            goto out;
        }
    if (!cJSON_IsObject(root)) {
        err = cks_fail(diag, CKS_ERR_INDEX_INVALID, "IndexInvalid: the index is not a JSON object");
        goto out;
    }
    err = check_duplicate_keys(root, "the index", diag);
    if (err)
        goto out;
    map = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
    if (!cJSON_IsObject(map)) {
        err = cks_fail(diag, CKS_ERR_INDEX_INVALID, "IndexInvalid: no \"weight_map\" object");
        goto out;
    }
    err = check_duplicate_keys(map, "weight_map", diag);
    if (err) {
        if (err != CKS_ERR_NOMEM) /* out of memory is not a broken index */
            err = CKS_ERR_INDEX_INVALID;
        goto out;
    }
    index = calloc(1, sizeof *index);
    if (!index) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        goto out;
    }
    index->total_size = -1;
    meta = cJSON_GetObjectItemCaseSensitive(root, "metadata");
    if (meta && cJSON_IsObject(meta)) {
        const cJSON *total = cJSON_GetObjectItemCaseSensitive(meta, "total_size");
        if (cJSON_IsNumber(total) && total->valuedouble >= 0 && total->valuedouble < MAX_EXACT_INTEGER)
            index->total_size = (int64_t)total->valuedouble;
    }
    cJSON_ArrayForEach(child, map) n++;
    if (n > 0) {
        index->entries = calloc(n, sizeof *index->entries);
        paths = calloc(n, sizeof *paths);
        if (!index->entries || !paths) {
            err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory for %zu index entries", n);
            goto out;
        }
    }
    cJSON_ArrayForEach(child, map) {
        if (!cJSON_IsString(child)) {
            err = cks_fail(diag, CKS_ERR_INDEX_INVALID,
                           "IndexInvalid: weight_map entry \"%s\" is not a string", child->string);
            goto out;
        }
        err = check_shard_path(child->valuestring, child->string, diag);
        if (err)
            goto out;
        index->entries[i].tensor = strdup(child->string);
        index->n_entries = i + 1;
        if (!index->entries[i].tensor) {
            err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
            goto out;
        }
        paths[i++] = child->valuestring;
    }
    /* distinct shard paths, sorted */
    {
        const char **sorted = NULL;
        if (n > 0) {
            sorted = malloc(n * sizeof *sorted);
            index->shards = calloc(n, sizeof *index->shards);
            if (!sorted || !index->shards) {
                free(sorted);
                err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
                goto out;
            }
            memcpy(sorted, paths, n * sizeof *sorted);
            qsort(sorted, n, sizeof *sorted, compare_cstr_ptr);
        }
        for (i = 0; i < n; i++) {
            if (i > 0 && strcmp(sorted[i], sorted[i - 1]) == 0)
                continue;
            index->shards[index->n_shards] = strdup(sorted[i]);
            if (!index->shards[index->n_shards]) {
                free(sorted);
                err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
                goto out;
            }
            index->n_shards++;
        }
        free(sorted);
    }
    for (i = 0; i < n; i++) {
        const char *key = paths[i];
        const char **hit = bsearch(&key, index->shards, index->n_shards, sizeof *index->shards, compare_cstr_ptr);
        index->entries[i].shard = (size_t)(hit - (const char **)index->shards);
    }
    if (n > 1)
        qsort(index->entries, n, sizeof *index->entries, compare_entries);
    *out = index;
    index = NULL;
out:
    free(paths);
    cks_st_index_free(index);
    cJSON_Delete(root);
    return err;
}

cks_err cks_st_index_parse(const char *json, size_t len, cks_st_index **out, cks_diag *diag)
{
    return index_parse(json, len, false, out, diag);
}

cks_err cks_st_index_parse_tree_only(const char *json, size_t len, cks_st_index **out, cks_diag *diag)
{
    return index_parse(json, len, true, out, diag);
}
