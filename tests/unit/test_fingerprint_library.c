/*
 * The fingerprint library (fingerprint_library.h): names and lists as the jobs use them, shares
 * that cover a list once, gather -> open -> read giving back each fingerprint byte for byte, and
 * damaged libraries (every cut of the header and index, a flipped index or member byte, unknown
 * version or flags, a member outside the file) refused with an error, never a crash (ASan/UBSan
 * in make test-san).
 */
#include <fcntl.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "check.h"
#include "ckptscope/fingerprint_library.h"

#define FIXTURE "tests/fixtures/fingerprint-v1-llama-base.ckfp"

static char tmpdir[] = "/tmp/cks-fplib-XXXXXX";
static void scratch(void);

static void write_bytes(const char *path, const void *buf, size_t len)
{
    FILE *f = fopen(path, "wb");
    CHECK(f != NULL);
    if (!f)
        return;
    CHECK(fwrite(buf, 1, len, f) == len);
    fclose(f);
}

static uint8_t *read_bytes(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    uint8_t *buf = NULL;
    long n;
    *len = 0;
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    n = ftell(f);
    fseek(f, 0, SEEK_SET);
    buf = malloc(n > 0 ? (size_t)n : 1);
    if (buf && fread(buf, 1, (size_t)n, f) == (size_t)n)
        *len = (size_t)n;
    fclose(f);
    return buf;
}

static void member_names(void)
{
    const char *cases[][2] = {{"org/name", "org--name.ckfp"},
                              {"org/name@v1", "org--name@v1.ckfp"},
                              {"./local/dir/", "local--dir.ckfp"},
                              {"hf://org/m", "hf_----org--m.ckfp"},
                              {"a#b c", "a_b_c.ckfp"},
                              {"", "model.ckfp"}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *n = cks_fplib_member_name(cases[i][0]);
        CHECK(n != NULL);
        if (n)
            CHECK_EQ_STR(n, cases[i][1]);
        free(n);
    }
}

static void lists_and_shares(void)
{
    scratch();
    char path[256], **specs = NULL;
    size_t n = 0;
    cks_diag diag;
    static const char text[] = "# bases\n\n  org/a  \r\norg/b\n\t# indented comment\norg/c@v2\norg/d";
    snprintf(path, sizeof path, "%s/list.txt", tmpdir);
    write_bytes(path, text, sizeof text - 1);
    CHECK(cks_fplib_read_list(path, &specs, &n, &diag) == CKS_OK);
    CHECK_EQ_INT(n, 4);
    if (n == 4) {
        CHECK_EQ_STR(specs[0], "org/a");
        CHECK_EQ_STR(specs[2], "org/c@v2");
        CHECK_EQ_STR(specs[3], "org/d");
    }
    cks_fplib_list_free(specs, n);
    /* every index in exactly one share, for any count */
    for (size_t count = 1; count <= 17; count++)
        for (size_t i = 0; i < 100; i++) {
            int owners = 0;
            for (size_t s = 0; s < count; s++)
                owners += cks_fplib_in_share(i, s, count);
            CHECK_EQ_INT(owners, 1);
        }
    CHECK(!cks_fplib_in_share(0, 0, 0));
    {
        char *longline = malloc(10000);
        memset(longline, 'x', 9999);
        longline[9999] = '\n';
        write_bytes(path, longline, 10000);
        free(longline);
        CHECK(cks_fplib_read_list(path, &specs, &n, &diag) == CKS_ERR_INVALID_ARG);
        CHECK(strstr(diag.text, "longer than") != NULL);
    }
    snprintf(path, sizeof path, "%s/no-such-list", tmpdir);
    CHECK(cks_fplib_read_list(path, &specs, &n, &diag) == CKS_ERR_NOT_FOUND);
}

/* Two fingerprints (the fixture under two sources) gathered into tmpdir/lib.ckfl. */
static bool make_library(char *lib_path, size_t size, uint8_t **a, size_t *a_len, uint8_t **b, size_t *b_len)
{
    const char *root = getenv("CKS_ROOT");
    char path[512], dir[300];
    cks_fingerprint *fp = NULL;
    cks_diag diag;
    cks_gather_report *r = NULL;
    const char *inputs[1];
    cks_gather_opts o;
    bool ok = false;

    snprintf(path, sizeof path, "%s/%s", root ? root : ".", FIXTURE);
    if (cks_fingerprint_load(path, &fp, &diag) != CKS_OK) {
        fprintf(stderr, "  %s\n", diag.text);
        return false;
    }
    snprintf(dir, sizeof dir, "%s/in", tmpdir);
    mkdir(dir, 0755);
    free(fp->source);
    free(fp->repo);
    fp->source = strdup("lab/alpha");
    fp->repo = strdup("lab/alpha");
    CHECK(cks_fingerprint_encode(fp, 0, a, a_len, &diag) == CKS_OK);
    free(fp->source);
    free(fp->repo);
    fp->source = strdup("lab/beta@v2");
    fp->repo = strdup("lab/beta");
    CHECK(cks_fingerprint_encode(fp, 0, b, b_len, &diag) == CKS_OK);
    cks_fingerprint_free(fp);
    if (!*a || !*b)
        return false;
    snprintf(path, sizeof path, "%s/lab--alpha.ckfp", dir);
    write_bytes(path, *a, *a_len);
    snprintf(path, sizeof path, "%s/lab--beta@v2.ckfp", dir);
    write_bytes(path, *b, *b_len);
    snprintf(lib_path, size, "%s/lib.ckfl", tmpdir);
    inputs[0] = dir;
    memset(&o, 0, sizeof o);
    o.inputs = inputs;
    o.n_inputs = 1;
    o.output = lib_path;
    if (cks_fplib_gather(&o, &r, &diag) == CKS_OK) {
        ok = r->n_entries == 2 && r->n_failures == 0;
        CHECK_EQ_INT(r->n_entries, 2);
        CHECK_EQ_INT(r->n_failures, 0);
    } else {
        fprintf(stderr, "  gather: %s\n", diag.text);
    }
    cks_gather_report_free(r);
    return ok;
}

static void round_trip(void)
{
    scratch();
    char lib_path[512];
    uint8_t *a = NULL, *b = NULL, *got = NULL;
    size_t a_len = 0, b_len = 0, got_len = 0, i;
    cks_fplib *lib = NULL;
    cks_fingerprint *fp = NULL;
    cks_diag diag;

    if (!make_library(lib_path, sizeof lib_path, &a, &a_len, &b, &b_len)) {
        CHECK(!"library made");
        goto out;
    }
    CHECK(cks_fplib_is_file(lib_path));
    CHECK(cks_fplib_open(lib_path, &lib, &diag) == CKS_OK);
    if (!lib)
        goto out;
    CHECK_EQ_INT(lib->n, 2);
    CHECK(cks_fplib_find(lib, "no-such.ckfp") == SIZE_MAX);
    i = cks_fplib_find(lib, "lab--beta@v2.ckfp");
    CHECK(i == 1);
    if (i == 1) {
        CHECK_EQ_STR(lib->entries[i].repo, "lab/beta");
        CHECK_EQ_STR(lib->entries[i].revision, lib->entries[0].revision);
        CHECK(lib->entries[i].offset % CKS_FPLIB_ALIGN == 0);
        CHECK(cks_fplib_read_member(lib, i, &got, &got_len, &diag) == CKS_OK);
        CHECK(got_len == b_len && got && memcmp(got, b, b_len) == 0);
        CHECK(cks_fplib_load_member(lib, i, &fp, &diag) == CKS_OK);
        CHECK(fp && strcmp(fp->source, "lab/beta@v2") == 0);
        CHECK(fp && lib->entries[i].hidden == fp->hidden && lib->entries[i].n_layers == fp->n_layers);
    }
out:
    cks_fingerprint_free(fp);
    cks_fplib_close(lib);
    free(got);
    free(a);
    free(b);
}

static cks_err open_bytes(const uint8_t *buf, size_t len, cks_diag *diag)
{
    char path[256];
    cks_fplib *lib = NULL;
    cks_err err;
    snprintf(path, sizeof path, "%s/damaged.ckfl", tmpdir);
    write_bytes(path, buf, len);
    err = cks_fplib_open(path, &lib, diag);
    if (!err) { /* an index that opens must still guard every member */
        for (size_t i = 0; i < lib->n; i++) {
            uint8_t *m = NULL;
            size_t n = 0;
            cks_err e = cks_fplib_read_member(lib, i, &m, &n, diag);
            free(m);
            if (e)
                err = e;
        }
    }
    cks_fplib_close(lib);
    return err;
}

static uint64_t le64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

static void damaged_libraries(void)
{
    scratch();
    char lib_path[512];
    uint8_t *a = NULL, *b = NULL, *lib = NULL, *copy = NULL;
    size_t a_len = 0, b_len = 0, len = 0;
    uint64_t index_len, first, extent[2][2] = {{0, 0}, {0, 0}};
    cks_diag diag;

    if (!make_library(lib_path, sizeof lib_path, &a, &a_len, &b, &b_len)) {
        CHECK(!"library made");
        goto out;
    }
    lib = read_bytes(lib_path, &len);
    copy = malloc(len);
    if (!lib || !copy || len < CKS_FPLIB_HEAD_LEN)
        goto out;
    index_len = le64(lib + 16);
    first = le64(lib + 24);
    {
        cks_fplib *l = NULL;
        CHECK(cks_fplib_open(lib_path, &l, &diag) == CKS_OK);
        for (size_t m = 0; l && m < 2 && m < l->n; m++) {
            extent[m][0] = l->entries[m].offset;
            extent[m][1] = l->entries[m].length;
        }
        cks_fplib_close(l);
    }
    CHECK(open_bytes(lib, len, &diag) == CKS_OK);
    /* every cut through the header and the index, and a few through the members */
    for (size_t cut = 0; cut < CKS_FPLIB_HEAD_LEN + index_len; cut += cut < 80 ? 1 : 97)
        CHECK_MSG(open_bytes(lib, cut, &diag) != CKS_OK, "a library cut at %zu opened", cut);
    for (size_t cut = first; cut < len; cut += (len - first) / 7 + 1)
        CHECK_MSG(open_bytes(lib, cut, &diag) != CKS_OK, "a library cut at %zu read", cut);
    /* a flipped byte anywhere in the index or the members */
    for (size_t at = CKS_FPLIB_HEAD_LEN; at < len; at += at < CKS_FPLIB_HEAD_LEN + index_len ? 13 : 1013) {
        bool read = at < CKS_FPLIB_HEAD_LEN + index_len;
        for (size_t m = 0; m < 2; m++)
            read |= at >= extent[m][0] && at < extent[m][0] + extent[m][1];
        if (!read)
            continue; /* padding: nobody reads it */
        memcpy(copy, lib, len);
        copy[at] ^= 0x20;
        CHECK_MSG(open_bytes(copy, len, &diag) == CKS_ERR_INTEGRITY, "a flipped byte at %zu: %s", at, diag.text);
    }
    memcpy(copy, lib, len);
    copy[8] = 2;
    CHECK(open_bytes(copy, len, &diag) == CKS_ERR_UNSUPPORTED);
    memcpy(copy, lib, len);
    copy[12] = 1;
    CHECK(open_bytes(copy, len, &diag) == CKS_ERR_UNSUPPORTED);
    memcpy(copy, lib, len);
    copy[0] = 'X';
    CHECK(open_bytes(copy, len, &diag) != CKS_OK);
    memcpy(copy, lib, len);
    copy[16 + 7] = 0x7f; /* an index length of 2^62 */
    CHECK(open_bytes(copy, len, &diag) != CKS_OK);
    memcpy(copy, lib, len);
    copy[24] = 1; /* a data offset off the alignment */
    CHECK(open_bytes(copy, len, &diag) != CKS_OK);
    /* a member said to lie where none can, under an index whose SHA-256 is right */
    {
        char *text = malloc((size_t)index_len + 1), *at;
        unsigned int dlen = 0;
        memcpy(text, lib + CKS_FPLIB_HEAD_LEN, (size_t)index_len);
        text[index_len] = '\0';
        at = strstr(text, "\"offset\":");
        CHECK(at != NULL);
        if (at) {
            at += 9; /* 4096 -> 9999: off the alignment and beyond the end */
            while (*at >= '0' && *at <= '9')
                *at++ = '9';
            memcpy(copy, lib, len);
            memcpy(copy + CKS_FPLIB_HEAD_LEN, text, (size_t)index_len);
            EVP_Digest(text, (size_t)index_len, copy + 32, &dlen, EVP_sha256(), NULL);
            CHECK_MSG(open_bytes(copy, len, &diag) == CKS_ERR_INVALID_HEADER_DESERIALIZATION, "%s", diag.text);
            CHECK_MSG(strstr(diag.text, "outside the file") != NULL, "%s", diag.text);
        }
        free(text);
    }
out:
    free(copy);
    free(lib);
    free(a);
    free(b);
}

static void gather_problems(void)
{
    scratch();
    char dir[300], path[400];
    uint8_t junk[40] = "CKSFPRNT";
    const char *inputs[1], *expected[2] = {"lab/alpha", "lab/gone"};
    cks_gather_opts o;
    cks_gather_report *r = NULL;
    cks_diag diag;
    int counts[CKS_GATHER__COUNT] = {0};

    snprintf(dir, sizeof dir, "%s/bad", tmpdir);
    mkdir(dir, 0755);
    snprintf(path, sizeof path, "%s/lab--alpha.ckfp", dir);
    write_bytes(path, junk, 12); /* cut inside the header */
    snprintf(path, sizeof path, "%s/other.ckfp", dir);
    write_bytes(path, "hello\n", 6);
    snprintf(path, sizeof path, "%s/lab--gone.ckfp.tmp.node1.99", dir);
    write_bytes(path, junk, 20);
    inputs[0] = dir;
    memset(&o, 0, sizeof o);
    o.inputs = inputs;
    o.n_inputs = 1;
    o.expected = expected;
    o.n_expected = 2;
    CHECK(cks_fplib_gather(&o, &r, &diag) == CKS_OK);
    if (!r)
        return;
    for (size_t i = 0; i < r->n_failures; i++)
        counts[r->failures[i].problem]++;
    CHECK_EQ_INT(r->n_failures, 3);
    CHECK_EQ_INT(counts[CKS_GATHER_TRUNCATED], 1);
    CHECK_EQ_INT(counts[CKS_GATHER_NOT_FINGERPRINT], 1);
    CHECK_EQ_INT(counts[CKS_GATHER_MISSING], 1);
    CHECK_EQ_INT(r->n_temporaries, 1);
    CHECK_EQ_INT(r->n_entries, 0);
    for (size_t i = 0; i < r->n_failures; i++)
        if (r->failures[i].problem == CKS_GATHER_MISSING)
            CHECK(strstr(r->failures[i].detail, "lab--gone.ckfp.tmp.node1.99") != NULL);
    CHECK_EQ_STR(cks_gather_problem_name(CKS_GATHER_DUPLICATE_COMMITS), "duplicate_differing_commits");
    cks_gather_report_free(r);
}

static void cleanup(void)
{
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0)
        fprintf(stderr, "  could not remove %s\n", tmpdir);
}

/* One scratch folder for the whole run, made by the first case that needs it. */
static void scratch(void)
{
    static bool made;
    if (made)
        return;
    if (!mkdtemp(tmpdir))
        abort();
    made = true;
    atexit(cleanup);
}

TEST_MAIN(T(member_names), T(lists_and_shares), T(round_trip), T(damaged_libraries), T(gather_problems))
