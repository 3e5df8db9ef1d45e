/*
 * The header parser's flat path (no cJSON tree) against the tree path it stands in for:
 * on the fixture table, the fuzz corpus and thousands of generated headers, plain and
 * mangled, cks_st_parse and cks_st_parse_tree_only give the same error code and message,
 * or the same table (names, dtypes, shapes, offsets, metadata, in the same order). Plain
 * headers must take the flat path (else this would only test the tree against itself),
 * and headers with escapes, odd numbers or odd keys must not.
 */
#include <dirent.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "ckptscope/safetensors.h"
#include "format/safetensors_internal.h"
#include "support/stwriter.h"

static bool same_header(const cks_st_header *a, const cks_st_header *b, char *why, size_t cap)
{
    if (a->n_tensors != b->n_tensors || a->n_metadata != b->n_metadata || a->header_len != b->header_len ||
        a->data_start != b->data_start || a->file_size != b->file_size) {
        snprintf(why, cap, "counts or sizes differ (%zu/%zu tensors, %zu/%zu metadata)", a->n_tensors,
                 b->n_tensors, a->n_metadata, b->n_metadata);
        return false;
    }
    for (size_t i = 0; i < a->n_tensors; i++) {
        const cks_tensor_info *x = &a->tensors[i], *y = &b->tensors[i];
        bool same = strcmp(x->name, y->name) == 0 && x->dtype == y->dtype && x->ndim == y->ndim &&
                    x->nelements == y->nelements && x->begin == y->begin && x->end == y->end &&
                    x->file_offset == y->file_offset;
        for (uint32_t d = 0; same && d < x->ndim; d++)
            same = x->shape[d] == y->shape[d];
        if (!same) {
            snprintf(why, cap, "tensor %zu differs (%s / %s)", i, x->name, y->name);
            return false;
        }
    }
    for (size_t i = 0; i < a->n_metadata; i++)
        if (strcmp(a->metadata_keys[i], b->metadata_keys[i]) != 0 ||
            strcmp(a->metadata_values[i], b->metadata_values[i]) != 0) {
            snprintf(why, cap, "metadata %zu differs", i);
            return false;
        }
    return true;
}

/* Both parsers on the first `len` bytes of a file of `size`; true when they agree. */
static bool agree_sized(const uint8_t *buf, size_t len, uint64_t size, const char *what)
{
    cks_st_header *flat = NULL, *tree = NULL;
    cks_diag df = {{0}}, dt = {{0}};
    char why[200] = "";
    cks_err ef = cks_st_parse(buf, len, size, &flat, NULL, &df);
    cks_err et = cks_st_parse_tree_only(buf, len, size, &tree, &dt);
    bool ok = ef == et;
    if (ok && ef == CKS_OK)
        ok = flat && tree && same_header(flat, tree, why, sizeof why);
    else if (ok)
        ok = strcmp(df.text, dt.text) == 0 && !flat && !tree;
    CHECK_MSG(ok, "%s: flat %s (%s) vs tree %s (%s) %s", what, cks_strerror(ef), df.text, cks_strerror(et), dt.text,
              why);
    cks_st_header_free(flat);
    cks_st_header_free(tree);
    return ok;
}

static bool agree(const uint8_t *buf, size_t len, const char *what)
{
    return agree_sized(buf, len, len, what);
}

static void fixture_table_agrees(void)
{
    for (size_t i = 0; i < st_n_fixtures; i++) {
        st_buf b = {0};
        st_fixtures[i].build(&b);
        agree(b.data, b.len, st_fixtures[i].name);
        st_buf_free(&b);
    }
}

static void fuzz_corpus_agrees(void)
{
    const char *root = getenv("CKS_ROOT");
    char dir[1024], path[1300];
    size_t n = 0;
    snprintf(dir, sizeof dir, "%s/tests/fuzz/corpus/fuzz_header", root ? root : ".");
    DIR *d = opendir(dir);
    CHECK_MSG(d != NULL, "cannot open %s", dir);
    if (!d)
        return;
    for (struct dirent *e; (e = readdir(d));) {
        if (e->d_name[0] == '.')
            continue;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        FILE *f = fopen(path, "rb");
        if (!f)
            continue;
        uint8_t *buf = malloc(1 << 20);
        size_t len = buf ? fread(buf, 1, 1 << 20, f) : 0;
        fclose(f);
        if (buf)
            agree(buf, len, e->d_name);
        free(buf);
        n++;
    }
    closedir(d);
    CHECK_MSG(n >= 20, "only %zu corpus files in %s", n, dir);
}

/* Every .safetensors file under dir (recursively): its header through both parsers. */
static void realdata_walk(const char *dir, size_t *files, size_t *flat)
{
    char path[2048];
    DIR *d = opendir(dir);
    for (struct dirent *e; d && (e = readdir(d));) {
        size_t nl = strlen(e->d_name);
        if (e->d_name[0] == '.')
            continue;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        if (e->d_type == DT_DIR) {
            realdata_walk(path, files, flat);
            continue;
        }
        if (nl < 12 || strcmp(e->d_name + nl - 12, ".safetensors") != 0)
            continue;
        FILE *f = fopen(path, "rb");
        uint8_t le[8];
        uint64_t n = 0, size;
        if (!f)
            continue;
        fseek(f, 0, SEEK_END);
        size = (uint64_t)ftell(f);
        fseek(f, 0, SEEK_SET);
        size_t got = fread(le, 1, 8, f);
        for (int k = 7; k >= 0 && got == 8; k--)
            n = (n << 8) | le[k];
        /* what a reader would hand the parser: the header when the file holds it, else all */
        uint64_t want = got == 8 && n <= CKS_ST_MAX_HEADER && 8 + n <= size ? 8 + n : size;
        if (want > (64u << 20))
            want = 64u << 20;
        uint8_t *buf = malloc(want ? (size_t)want : 1);
        fseek(f, 0, SEEK_SET);
        size_t have = buf ? fread(buf, 1, (size_t)want, f) : 0;
        fclose(f);
        if (buf) {
            agree_sized(buf, have, size, path);
            *flat += cks_st_flat_accepts(buf, have);
            (*files)++;
        }
        free(buf);
    }
    if (d)
        closedir(d);
}

static void realdata_agrees(void)
{
    const char *dir = getenv("CKS_REALDATA");
    size_t files = 0, flat = 0;
    DIR *d = dir ? opendir(dir) : NULL;
    if (!d)
        SKIP("no real safetensors files (CKS_REALDATA)");
    closedir(d);
    realdata_walk(dir, &files, &flat);
    CHECK_MSG(files >= 10, "only %zu real files under %s", files, dir);
    /* most real headers are plain; the flat path must take them, or it is never used */
    CHECK_MSG(flat * 2 >= files, "the flat path took %zu of %zu real headers", flat, files);
}

/* ---- generated headers ---- */

static uint64_t rng_state = 0x9e3779b97f4a7c15ULL;
static uint64_t next_random(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}
static unsigned pick(unsigned n)
{
    return (unsigned)(next_random() % n);
}

struct text {
    char *s;
    size_t len, cap;
};

static void put(struct text *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(struct text *t, const char *fmt, ...)
{
    va_list ap;
    for (;;) {
        va_start(ap, fmt);
        int n = vsnprintf(t->s + t->len, t->cap - t->len, fmt, ap);
        va_end(ap);
        if (n >= 0 && (size_t)n < t->cap - t->len) {
            t->len += (size_t)n;
            return;
        }
        t->cap = t->cap * 2 + (size_t)(n > 0 ? n : 64) + 64;
        t->s = realloc(t->s, t->cap);
        if (!t->s)
            abort();
    }
}

static const char *space(void)
{
    static const char *const sp[] = {"", "", "", " ", "\n", "\t", " \r\n "};
    return sp[pick(sizeof sp / sizeof sp[0])];
}

/* How a generated header may be mangled (0: not at all). */
enum mangle {
    M_NONE,
    M_ESCAPE_IN_NAME, M_ESCAPE_IN_METADATA, M_LEADING_ZERO, M_FLOAT, M_EXPONENT, M_NEGATIVE, M_BIG,
    M_EXTRA_KEY, M_DUP_TENSOR_KEY, M_DUP_NAME, M_DUP_METADATA_KEY, M_MISSING_KEY, M_BAD_DTYPE,
    M_TOO_MANY_DIMS, M_TRAILING_COMMA, M_METADATA_NUMBER, M_METADATA_TWICE, M_SHAPE_MISMATCH, M_HOLE,
    M_EMPTY_NAME, M_TRAILING_GARBAGE, M_NULL_TENSOR, M_SIXTEEN_DIGITS,
    M_COUNT
};

static const char *const dtypes[] = {"F32", "BF16", "F16", "I64", "U8", "BOOL", "F64", "I8"};
static const unsigned dtype_bytes[] = {4, 2, 2, 8, 1, 1, 8, 1};

/* A file: the 8-byte length, the header, padding and the data section (zeros). */
static void make_file(enum mangle m, struct text *out)
{
    struct text h = {0};
    unsigned n = 1 + pick(12), meta_at = pick(n + 1), meta_n = pick(4);
    unsigned dup = pick(n), bad = pick(n);
    uint64_t off = 0;
    bool first_member = true;
    put(&h, "{%s", space());
    for (unsigned i = 0; i <= n; i++) {
        if (i == meta_at && (meta_n > 0 || m == M_ESCAPE_IN_METADATA || m == M_DUP_METADATA_KEY ||
                             m == M_METADATA_NUMBER || m == M_METADATA_TWICE)) {
            for (int twice = 0; twice < (m == M_METADATA_TWICE ? 2 : 1); twice++) {
                put(&h, "%s\"__metadata__\"%s:%s{", first_member ? "" : ",", space(), space());
                first_member = false;
                unsigned k = meta_n ? meta_n : 1;
                for (unsigned j = 0; j < k; j++)
                    put(&h, "%s\"%s%u\":%s%s%s", j ? "," : "", m == M_ESCAPE_IN_METADATA && j == 0 ? "k\\n" : "key",
                        m == M_DUP_METADATA_KEY ? 0 : j, space(),
                        m == M_METADATA_NUMBER && j == 0 ? "12" : "\"v\"", space());
                if (m == M_DUP_METADATA_KEY && k == 1)
                    put(&h, ",\"key0\":\"w\"");
                put(&h, "}%s", space());
            }
        }
        if (i == n)
            break;
        unsigned dt = pick(8), nd = pick(4);
        uint64_t dims[4], count = 1;
        for (unsigned d = 0; d < nd; d++) {
            dims[d] = 1 + pick(9);
            count *= dims[d];
        }
        uint64_t bytes = count * dtype_bytes[dt];
        if (m == M_SHAPE_MISMATCH && i == bad)
            bytes += dtype_bytes[dt];
        uint64_t begin = off + (m == M_HOLE && i == bad ? 4 : 0);
        char name[64];
        if (m == M_EMPTY_NAME && i == bad)
            name[0] = '\0';
        else
            snprintf(name, sizeof name, "model.layers.%u.%s", m == M_DUP_NAME && i == bad ? dup : i,
                     m == M_ESCAPE_IN_NAME && i == bad ? "w\\u00e9" : "weight");
        if (m == M_DUP_NAME && i == bad && dup != i)
            snprintf(name, sizeof name, "model.layers.%u.weight", dup);
        put(&h, "%s\"%s\"%s:%s", first_member ? "" : ",", name, space(), space());
        first_member = false;
        if (m == M_NULL_TENSOR && i == bad) {
            put(&h, "null");
        } else {
            /* the three keys in a random order */
            char parts[3][400];
            snprintf(parts[0], sizeof parts[0], "\"dtype\":%s\"%s\"", space(),
                     m == M_BAD_DTYPE && i == bad ? "f32" : dtypes[dt]);
            int w = snprintf(parts[1], sizeof parts[1], "\"shape\":%s[", space());
            unsigned nd_out = m == M_TOO_MANY_DIMS && i == bad ? CKS_ST_MAX_NDIM + 1 : nd;
            for (unsigned d = 0; d < nd_out; d++)
                w += snprintf(parts[1] + w, sizeof parts[1] - (size_t)w, "%s%s%" PRIu64, d ? "," : "", space(),
                              d < nd ? dims[d] : (uint64_t)1);
            snprintf(parts[1] + w, sizeof parts[1] - (size_t)w, "%s]", m == M_TRAILING_COMMA && i == bad ? "," : "");
            char b0[40], b1[40];
            snprintf(b0, sizeof b0, "%" PRIu64, begin);
            snprintf(b1, sizeof b1, "%" PRIu64, begin + bytes);
            if (i == bad) {
                if (m == M_LEADING_ZERO)
                    snprintf(b1, sizeof b1, "0%" PRIu64, begin + bytes);
                else if (m == M_FLOAT)
                    snprintf(b1, sizeof b1, "%" PRIu64 ".0", begin + bytes);
                else if (m == M_EXPONENT)
                    snprintf(b1, sizeof b1, "%" PRIu64 "e0", begin + bytes);
                else if (m == M_NEGATIVE)
                    snprintf(b0, sizeof b0, "-0");
                else if (m == M_BIG)
                    snprintf(b1, sizeof b1, "9007199254740993");
                else if (m == M_SIXTEEN_DIGITS)
                    snprintf(b1, sizeof b1, "1000000000000000");
            }
            snprintf(parts[2], sizeof parts[2], "\"data_offsets\":%s[%s%s,%s%s]", space(), b0, space(), space(), b1);
            if (m == M_MISSING_KEY && i == bad)
                parts[pick(3)][0] = '\0';
            unsigned order = pick(6);
            static const unsigned perm[6][3] = {{0, 1, 2}, {0, 2, 1}, {1, 0, 2}, {1, 2, 0}, {2, 0, 1}, {2, 1, 0}};
            put(&h, "{%s", space());
            bool first = true;
            for (unsigned k = 0; k < 3; k++) {
                const char *p = parts[perm[order][k]];
                if (!*p)
                    continue;
                put(&h, "%s%s%s", first ? "" : ",", space(), p);
                first = false;
            }
            if (m == M_EXTRA_KEY && i == bad)
                put(&h, ",\"extra\":1");
            if (m == M_DUP_TENSOR_KEY && i == bad)
                put(&h, ",\"dtype\":\"F32\"");
            put(&h, "%s}", space());
        }
        put(&h, "%s", space());
        off = begin + bytes;
    }
    put(&h, "}%s", m == M_TRAILING_GARBAGE ? "x" : "");
    /* the header padded with spaces to a multiple of 8, as writers do, sometimes */
    while (pick(2) && h.len % 8)
        put(&h, " ");
    uint64_t hl = h.len;
    out->len = 0;
    for (int k = 0; k < 8; k++)
        put(out, "%c", 'A'); /* placeholder, overwritten below */
    for (int k = 0; k < 8; k++)
        out->s[k] = (char)((hl >> (8 * k)) & 0xff);
    put(out, "%s", h.s);
    for (uint64_t k = 0; k < off; k++)
        put(out, "%c", 'z');
    free(h.s);
}

static void generated_headers_agree(void)
{
    struct text f = {0};
    size_t flat_taken = 0, plain = 0, declined_when_odd = 0, odd = 0, failures = 0;
    for (int round = 0; round < 4000 && failures < 5; round++) {
        enum mangle m = round % 2 ? (enum mangle)(1 + pick(M_COUNT - 1)) : M_NONE;
        make_file(m, &f);
        if (!agree((const uint8_t *)f.s, f.len, m == M_NONE ? "plain header" : "mangled header"))
            failures++;
        bool flat = cks_st_flat_accepts((const uint8_t *)f.s, f.len);
        if (m == M_NONE) {
            plain++;
            flat_taken += flat;
        } else if (m == M_ESCAPE_IN_NAME || m == M_ESCAPE_IN_METADATA || m == M_LEADING_ZERO || m == M_FLOAT ||
                   m == M_EXPONENT || m == M_NEGATIVE || m == M_BIG || m == M_EXTRA_KEY || m == M_DUP_TENSOR_KEY ||
                   m == M_DUP_METADATA_KEY || m == M_MISSING_KEY || m == M_BAD_DTYPE || m == M_TOO_MANY_DIMS ||
                   m == M_TRAILING_COMMA || m == M_METADATA_NUMBER || m == M_METADATA_TWICE ||
                   m == M_TRAILING_GARBAGE || m == M_NULL_TENSOR || m == M_SIXTEEN_DIGITS) {
            odd++;
            declined_when_odd += !flat;
        }
    }
    free(f.s);
    CHECK_MSG(plain > 1000 && flat_taken == plain, "the flat path took %zu of %zu plain headers", flat_taken, plain);
    CHECK_MSG(odd > 1000 && declined_when_odd == odd, "the flat path declined %zu of %zu odd headers", declined_when_odd,
              odd);
}

/* A header the writer in tests/support makes, with many tensors, through both paths. */
static void written_checkpoint_agrees(void)
{
    st_writer *w = st_writer_new();
    st_buf b = {0};
    char name[64];
    uint64_t shape[2] = {3, 5};
    for (int i = 0; i < 3000; i++) {
        snprintf(name, sizeof name, "model.layers.%d.mlp.experts.%d.weight", i / 64, i % 64);
        st_writer_add(w, name, i % 3 ? CKS_DTYPE_BF16 : CKS_DTYPE_F32, shape, 2, NULL);
    }
    st_writer_finish(w, &b);
    st_writer_free(w);
    CHECK(agree(b.data, b.len, "3,000 tensors"));
    CHECK(cks_st_flat_accepts(b.data, b.len));
    st_buf_free(&b);
}

/* ---- indexes (model.safetensors.index.json): the same pair of parsers ---- */

static bool same_index(const cks_st_index *a, const cks_st_index *b, char *why, size_t cap)
{
    if (a->n_entries != b->n_entries || a->n_shards != b->n_shards || a->total_size != b->total_size) {
        snprintf(why, cap, "%zu/%zu entries, %zu/%zu shards, total %lld/%lld", a->n_entries, b->n_entries,
                 a->n_shards, b->n_shards, (long long)a->total_size, (long long)b->total_size);
        return false;
    }
    for (size_t i = 0; i < a->n_shards; i++)
        if (strcmp(a->shards[i], b->shards[i]) != 0) {
            snprintf(why, cap, "shard %zu differs", i);
            return false;
        }
    for (size_t i = 0; i < a->n_entries; i++)
        if (strcmp(a->entries[i].tensor, b->entries[i].tensor) != 0 || a->entries[i].shard != b->entries[i].shard) {
            snprintf(why, cap, "entry %zu differs (%s / %s)", i, a->entries[i].tensor, b->entries[i].tensor);
            return false;
        }
    return true;
}

static bool index_agrees(const char *json, size_t len, const char *what)
{
    cks_st_index *flat = NULL, *tree = NULL;
    cks_diag df = {{0}}, dt = {{0}};
    char why[200] = "";
    cks_err ef = cks_st_index_parse(json, len, &flat, &df);
    cks_err et = cks_st_index_parse_tree_only(json, len, &tree, &dt);
    bool ok = ef == et;
    if (ok && ef == CKS_OK)
        ok = flat && tree && same_index(flat, tree, why, sizeof why);
    else if (ok)
        ok = strcmp(df.text, dt.text) == 0 && !flat && !tree;
    CHECK_MSG(ok, "%s: flat %s (%s) vs tree %s (%s) %s", what, cks_strerror(ef), df.text, cks_strerror(et), dt.text,
              why);
    cks_st_index_free(flat);
    cks_st_index_free(tree);
    return ok;
}

static void index_fixtures_agree(void)
{
    for (size_t i = 0; i < st_n_index_fixtures; i++) {
        const st_index_fixture *fx = &st_index_fixtures[i];
        size_t len = strlen(fx->json);
        index_agrees(fx->json, len, fx->name);
        /* the valid one is plain: it must be read flat; the broken ones must not be */
        CHECK_MSG(cks_st_index_flat_accepts(fx->json, len) == (fx->expect == CKS_OK), "%s", fx->name);
    }
}

static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    char *buf = NULL;
    long n;
    if (f && fseek(f, 0, SEEK_END) == 0 && (n = ftell(f)) >= 0 && fseek(f, 0, SEEK_SET) == 0 &&
        (buf = malloc((size_t)n + 1)) && fread(buf, 1, (size_t)n, f) == (size_t)n) {
        *len = (size_t)n;
    } else {
        free(buf);
        buf = NULL;
    }
    if (f)
        fclose(f);
    return buf;
}

static void index_corpus_and_realdata_agree(void)
{
    const char *root = getenv("CKS_ROOT"), *real = getenv("CKS_REALDATA");
    char dir[1024], path[1300];
    size_t n = 0, len;
    snprintf(dir, sizeof dir, "%s/tests/fuzz/corpus/fuzz_index", root ? root : ".");
    DIR *d = opendir(dir);
    CHECK_MSG(d != NULL, "cannot open %s", dir);
    for (struct dirent *e; d && (e = readdir(d));) {
        if (e->d_name[0] == '.')
            continue;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        char *buf = slurp(path, &len);
        if (buf)
            index_agrees(buf, len, e->d_name);
        free(buf);
        n++;
    }
    if (d)
        closedir(d);
    CHECK_MSG(n >= 5, "only %zu corpus files in %s", n, dir);
    /* an index another tool wrote (FluxML's SafeTensors.jl): plain, so read flat */
    snprintf(path, sizeof path, "%s/fluxml-safetensors-jl/sharded/model.safetensors.index.json",
             real ? real : "../shared/realdata");
    char *buf = slurp(path, &len);
    if (buf) {
        CHECK(index_agrees(buf, len, "realdata index"));
        CHECK(cks_st_index_flat_accepts(buf, len));
    }
    free(buf);
}

enum index_mangle {
    IX_NONE,
    IX_ESCAPE, IX_DUP_NAME, IX_DUP_META, IX_DUP_MAP, IX_UNSAFE_PATH, IX_EXTRA_KEY, IX_NO_MAP, IX_NUMBER_VALUE,
    IX_NESTED_META, IX_FLOAT_TOTAL, IX_TRAILING, IX_EMPTY_PATH, IX_DUP_TOTAL,
    IX_COUNT
};

/* An index as transformers writes one (indented or compact, names in layer order or not,
 * shards of one or many), or mangled one way. */
static void make_index(enum index_mangle m, struct text *out)
{
    unsigned n = 1 + pick(300), shards = 1 + pick(12), dup = pick(n), bad = pick(n);
    const char *sp = pick(2) ? "" : " ", *nl = pick(2) ? "" : "\n  ";
    out->len = 0;
    put(out, "{%s", nl);
    bool needs_meta = m == IX_NESTED_META || m == IX_FLOAT_TOTAL || m == IX_DUP_META || m == IX_DUP_TOTAL;
    if (m != IX_NO_MAP && (needs_meta || pick(4))) {
        put(out, "\"metadata\":%s{", sp);
        if (m == IX_NESTED_META)
            put(out, "\"info\": {\"a\": 1}");
        else if (m == IX_FLOAT_TOTAL)
            put(out, "\"total_size\": 1.5e3");
        else if (pick(3))
            put(out, "\"total_size\":%s%u%s", sp, pick(1000000), pick(2) ? ", \"total_parameters\": \"7B\"" : "");
        if (m == IX_DUP_TOTAL)
            put(out, "\"total_size\": 5, \"total_size\": 6");
        put(out, "},%s", nl);
        if (m == IX_DUP_META)
            put(out, "\"metadata\": {},%s", nl);
    }
    if (m == IX_EXTRA_KEY)
        put(out, "\"format\": \"pt\",%s", nl);
    if (m != IX_NO_MAP) {
        put(out, "\"weight_map\":%s{", sp);
        for (unsigned i = 0; i < n; i++) {
            unsigned layer = pick(3) ? i / 7 : pick(40), shard = 1 + layer * shards / 43;
            const char *part = pick(5) ? "mlp.experts" : "self_attn.ñ";
            put(out, "%s%s\"model.layers.%u.%s.%u%s.weight\":%s", i ? "," : "", nl, layer, part, i,
                m == IX_ESCAPE && i == bad ? "\\u00e9" : "", sp);
            if (i == dup && m == IX_DUP_NAME) /* the same name again, mapped elsewhere */
                put(out, "\"x.safetensors\", \"model.layers.%u.%s.%u.weight\": ", layer, part, i);
            if (m == IX_NUMBER_VALUE && i == bad)
                put(out, "%u", shard);
            else if (m == IX_UNSAFE_PATH && i == bad)
                put(out, "\"../model-%05u-of-%05u.safetensors\"", shard, shards);
            else if (m == IX_EMPTY_PATH && i == bad)
                put(out, "\"\"");
            else
                put(out, "\"%smodel-%05u-of-%05u.safetensors\"", pick(8) ? "" : "sub/", shard, shards);
        }
        put(out, "}");
        if (m == IX_DUP_MAP)
            put(out, ", \"weight_map\": {}");
    }
    put(out, "%s}%s", nl, m == IX_TRAILING ? " x" : "\n");
}

static void generated_indexes_agree(void)
{
    struct text f = {0};
    size_t flat_taken = 0, plain = 0, declined = 0, odd = 0, failures = 0;
    for (int round = 0; round < 3000 && failures < 5; round++) {
        enum index_mangle m = round % 2 ? (enum index_mangle)(1 + pick(IX_COUNT - 1)) : IX_NONE;
        make_index(m, &f);
        if (!index_agrees(f.s, f.len, m == IX_NONE ? "plain index" : "mangled index"))
            failures++;
        bool flat = cks_st_index_flat_accepts(f.s, f.len);
        if (m == IX_NONE) {
            plain++;
            flat_taken += flat;
        } else {
            odd++;
            declined += !flat;
        }
    }
    free(f.s);
    CHECK_MSG(plain > 1000 && flat_taken == plain, "the flat path took %zu of %zu plain indexes", flat_taken, plain);
    CHECK_MSG(odd > 1000 && declined == odd, "the flat path declined %zu of %zu odd indexes", declined, odd);
}

/*
 * The raw checks run eight bytes at a time: a bad byte must be found wherever it sits in a
 * word, at every offset of a long string value, and named at its own file offset. The
 * expected offset is where this test put the byte.
 */
/* A file of this header (at most 500 bytes) and one byte of data, through cks_st_parse. */
static cks_err parse_one_byte_file(const char *json, size_t n, cks_diag *d)
{
    uint8_t buf[600];
    cks_st_header *h = NULL;
    for (int k = 0; k < 8; k++)
        buf[k] = (uint8_t)((uint64_t)n >> (8 * k));
    memcpy(buf + 8, json, n);
    buf[8 + n] = 0;
    cks_err err = cks_st_parse(buf, 8 + n + 1, 8 + (uint64_t)n + 1, &h, NULL, d);
    cks_st_header_free(h);
    return err;
}

static void raw_checks_find_every_position(void)
{
    static const struct {
        const char *bad;    /* spliced into a metadata value */
        const char *says;   /* in the message */
    } cases[] = {
        {"\x01", "raw control byte inside a string"},
        {"\n", "raw control byte inside a string"},
        {"\xff", "not valid UTF-8"},
        {"\xc0\x80", "not valid UTF-8"},
        {"\xed\xa0\x80", "not valid UTF-8"},
        {"\\u0000", "escaped NUL"},
    };
    char json[512], value[80], want_at[64];
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++)
        for (size_t pos = 0; pos < 41; pos++) {
            memset(value, 'a', 40);
            value[40] = '\0';
            int n = snprintf(json, sizeof json,
                             "{\"__metadata__\":{\"key\":\"%.*s%s%s\"},\"t\":{\"dtype\":\"U8\",\"shape\":[1],"
                             "\"data_offsets\":[0,1]}}",
                             (int)pos, value, cases[c].bad, value + pos);
            size_t at = 8 + strlen("{\"__metadata__\":{\"key\":\"") + pos;
            cks_diag d = {{0}};
            cks_err err = parse_one_byte_file(json, (size_t)n, &d);
            snprintf(want_at, sizeof want_at, "offset %zu", at);
            CHECK_MSG(err != CKS_OK && strstr(d.text, cases[c].says) && strstr(d.text, want_at),
                      "case %zu at %zu: %s (want \"%s\" at %zu)", c, pos, d.text, cases[c].says, at);
        }
    /* and a clean 40-byte value around every position parses */
    for (size_t pos = 0; pos < 41; pos++) {
        memset(value, 'a', 40);
        value[pos < 40 ? pos : 39] = 'z';
        value[40] = '\0';
        int n = snprintf(json, sizeof json,
                         "{\"__metadata__\":{\"key\":\"%s\"},\"t\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}",
                         value);
        cks_diag d = {{0}};
        CHECK_MSG(parse_one_byte_file(json, (size_t)n, &d) == CKS_OK, "%s", d.text);
    }
}

TEST_MAIN(T(raw_checks_find_every_position), T(fixture_table_agrees), T(fuzz_corpus_agrees), T(realdata_agrees), T(generated_headers_agree),
          T(written_checkpoint_agrees), T(index_fixtures_agree), T(index_corpus_and_realdata_agree),
          T(generated_indexes_agree))
