/* The file-by-file checkpoint check (verify's fallback) and the layout-only header parse. */
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check.h"
#include "ckptscope/checkpoint.h"
#include "ckptscope/safetensors.h"
#include "support/stwriter.h"

/* A shard with `n` F32 tensors "<prefix>.<i>" of 16 elements each. */
static void shard(st_buf *out, const char *prefix, int n)
{
    st_writer *w = st_writer_new();
    uint64_t shape[1] = {16};
    char name[64];
    for (int i = 0; i < n; i++) {
        snprintf(name, sizeof name, "%s.%d", prefix, i);
        st_writer_add(w, name, CKS_DTYPE_F32, shape, 1, NULL);
    }
    st_writer_finish(w, out);
    st_writer_free(w);
}

static const cks_ckpt_problem *find_problem(const cks_ckpt_check *c, cks_err rule, const char *file, const char *tensor)
{
    for (size_t i = 0; i < c->n_problems; i++) {
        const cks_ckpt_problem *p = &c->problems[i];
        if (p->rule == rule && (!file || (p->file && strcmp(p->file, file) == 0)) &&
            (!tensor || (p->tensor && strcmp(p->tensor, tensor) == 0)))
            return p;
    }
    return NULL;
}

static void dump(const cks_ckpt_check *c)
{
    for (size_t i = 0; i < c->n_problems; i++)
        fprintf(stderr, "    problem %s [%s] %s\n", cks_strerror(c->problems[i].rule),
                c->problems[i].file ? c->problems[i].file : "-", c->problems[i].detail);
}

/* The layout-only parse gives the size a header implies, whatever the file's size. */
static void layout_parse_implied_size(void)
{
    st_buf b = {0};
    cks_st_header *hdr = NULL;
    cks_diag diag;
    uint64_t need = 0;
    shard(&b, "w", 3);
    CHECK_EQ_INT(cks_st_parse(b.data, b.len, b.len - 10, &hdr, NULL, &diag), CKS_ERR_TRUNCATED);
    CHECK(hdr == NULL);
    CHECK_EQ_INT(cks_st_parse(b.data, b.len, b.len + 10, &hdr, NULL, &diag), CKS_ERR_METADATA_INCOMPLETE_BUFFER);
    CHECK_EQ_INT(cks_st_parse_layout(b.data, b.len, &hdr, NULL, &diag), CKS_OK);
    CHECK(hdr && hdr->file_size == b.len && hdr->n_tensors == 3);
    cks_st_header_free(hdr);
    hdr = NULL;
    /* only the header's bytes are needed */
    CHECK_EQ_INT(cks_st_parse_layout(b.data, 8, &hdr, &need, &diag), CKS_ERR_NEED_MORE);
    CHECK(need > 8 && need < b.len);
    CHECK_EQ_INT(cks_st_parse_layout(b.data, (size_t)need, &hdr, NULL, &diag), CKS_OK);
    CHECK(hdr && hdr->file_size == b.len);
    cks_st_header_free(hdr);
    hdr = NULL;
    st_buf_free(&b);
    /* every other rule still holds: a hole is InvalidOffset */
    {
        static const char h[] = "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}";
        st_raw_file(h, sizeof h - 1, 8, &b);
        CHECK_EQ_INT(cks_st_parse_layout(b.data, b.len, &hdr, NULL, &diag), CKS_ERR_INVALID_OFFSET);
        CHECK(hdr == NULL);
        st_buf_free(&b);
    }
}

static char tmpdir[256];

static void cleanup(void)
{
    char cmd[300];
    if (tmpdir[0]) {
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
        if (system(cmd) != 0)
            fprintf(stderr, "could not remove %s\n", tmpdir);
    }
}

static const char *scratch(const char *sub)
{
    static char path[512];
    if (!tmpdir[0]) {
        snprintf(tmpdir, sizeof tmpdir, "/tmp/cks-test-check-%d", (int)getpid());
        mkdir(tmpdir, 0700);
        atexit(cleanup);
    }
    snprintf(path, sizeof path, "%s/%s", tmpdir, sub);
    mkdir(path, 0700);
    return path;
}

static void write_at(const char *dir, const char *name, const void *data, size_t len)
{
    char p[600];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    CHECK_EQ_INT(st_write_file(p, data, len), 0);
}

#define S1 "model-00001-of-00003.safetensors"
#define S2 "model-00002-of-00003.safetensors"
#define S3 "model-00003-of-00003.safetensors"

/* Three shards: the second truncated, the third with a broken header, and an index entry for
 * a tensor the first lacks. Every problem is reported, each with its file. */
static void local_every_problem(void)
{
    const char *dir = scratch("three");
    st_buf a = {0}, b = {0}, c = {0};
    cks_ckpt_check *chk = NULL;
    cks_ckpt *ckpt = NULL;
    cks_diag diag;
    char *bad;
    static const char index[] =
        "{\"metadata\":{\"total_size\":0},\"weight_map\":{"
        "\"a.0\":\"" S1 "\",\"a.1\":\"" S1 "\",\"ghost\":\"" S1 "\","
        "\"b.0\":\"" S2 "\",\"b.1\":\"" S2 "\","
        "\"c.0\":\"" S3 "\",\"c.1\":\"" S3 "\",\"c.2\":\"" S3 "\"}}";
    shard(&a, "a", 2);
    shard(&b, "b", 2);
    shard(&c, "c", 3);
    bad = memmem(c.data, c.len, "\"F32\"", 5);
    CHECK(bad != NULL);
    if (bad)
        memcpy(bad, "\"X32\"", 5); /* an unknown dtype: InvalidHeaderDeserialization */
    write_at(dir, S1, a.data, a.len);
    write_at(dir, S2, b.data, b.len - 10);
    write_at(dir, S3, c.data, c.len);
    write_at(dir, "model.safetensors.index.json", index, sizeof index - 1);

    CHECK(cks_ckpt_open_local(dir, &ckpt, &diag) != CKS_OK); /* the opener stops at the first */
    CHECK_EQ_INT(cks_ckpt_check_local(dir, &chk, &diag), CKS_OK);
    if (!chk)
        goto out;
    dump(chk);
    CHECK_EQ_INT(chk->n_files, 3);
    CHECK(find_problem(chk, CKS_ERR_TRUNCATED, S2, NULL) != NULL);
    CHECK(find_problem(chk, CKS_ERR_INVALID_HEADER_DESERIALIZATION, S3, NULL) != NULL);
    CHECK(find_problem(chk, CKS_ERR_INDEX_MISMATCH, S1, "ghost") != NULL);
    CHECK_EQ_INT(chk->n_problems, 3);
    CHECK_EQ_INT(chk->n_unchecked_entries, 3); /* the third shard's entries */
    /* the truncated shard's header still counts for the index, and says what it implies */
    CHECK(chk->files[1].implied_known && chk->files[1].implied_size == b.len);
    CHECK(chk->files[1].size == b.len - 10 && !chk->files[1].header_valid);
    CHECK(chk->files[0].header_valid && !chk->files[2].header_read);
    /* the valid shard is open for reading */
    CHECK(chk->valid_part && chk->valid_part->n_files == 1 && chk->valid_part->n_tensors == 2);
out:
    cks_ckpt_check_free(chk);
    st_buf_free(&a);
    st_buf_free(&b);
    st_buf_free(&c);
}

/* A shard the index names that is not there; an index that is not JSON. */
static void missing_shard_and_bad_index(void)
{
    const char *dir = scratch("missing");
    st_buf a = {0};
    cks_ckpt_check *chk = NULL;
    cks_diag diag;
    static const char index[] = "{\"weight_map\":{\"a.0\":\"" S1 "\",\"b.0\":\"" S2 "\"}}";
    shard(&a, "a", 1);
    write_at(dir, S1, a.data, a.len);
    write_at(dir, "model.safetensors.index.json", index, sizeof index - 1);
    CHECK_EQ_INT(cks_ckpt_check_local(dir, &chk, &diag), CKS_OK);
    if (chk) {
        dump(chk);
        CHECK(find_problem(chk, CKS_ERR_INDEX_MISMATCH, S2, NULL) != NULL);
        CHECK_EQ_INT(chk->n_problems, 1);
    }
    cks_ckpt_check_free(chk);
    chk = NULL;

    dir = scratch("badindex");
    write_at(dir, S1, a.data, a.len);
    write_at(dir, S2, a.data, a.len - 4);
    write_at(dir, "model.safetensors.index.json", "{not json", 9);
    CHECK_EQ_INT(cks_ckpt_check_local(dir, &chk, &diag), CKS_OK);
    if (chk) {
        dump(chk);
        CHECK(find_problem(chk, CKS_ERR_INDEX_INVALID, "model.safetensors.index.json", NULL) != NULL);
        CHECK(find_problem(chk, CKS_ERR_TRUNCATED, S2, NULL) != NULL);
        CHECK_EQ_INT(chk->n_files, 2); /* the shards beside the index, checked anyway */
    }
    cks_ckpt_check_free(chk);
    st_buf_free(&a);
}

/* ---- a provider in memory, whose data server serves other sizes for some files ---- */

typedef struct fake {
    const char *names[2];
    st_buf *bufs[2];
    uint64_t served[2];      /* what the "server" says; the listed size is the buffer's */
    cks_err served_err[2];
    int as_served_calls;
} fake;

static int fake_find(const fake *f, const char *rel)
{
    for (int i = 0; i < 2; i++)
        if (f->names[i] && strcmp(f->names[i], rel) == 0)
            return i;
    return -1;
}

static cks_err fake_fetch(void *ctx, const char *rel, char **data, size_t *len, cks_diag *diag)
{
    (void)ctx;
    (void)rel;
    *data = NULL;
    *len = 0;
    return cks_fail(diag, CKS_ERR_NOT_FOUND, "no index here");
}

static cks_err fake_open(void *ctx, const char *rel, cks_source **out, cks_diag *diag)
{
    fake *f = ctx;
    int i = fake_find(f, rel);
    if (i < 0)
        return cks_fail(diag, CKS_ERR_NOT_FOUND, "%s: no such file", rel);
    return cks_source_from_memory(f->bufs[i]->data, f->bufs[i]->len, rel, false, out, diag);
}

static cks_err fake_served(void *ctx, const char *const *rels, size_t n, cks_served_size *out, cks_diag *diag)
{
    fake *f = ctx;
    (void)diag;
    for (size_t k = 0; k < n; k++) {
        int i = fake_find(f, rels[k]);
        memset(&out[k], 0, sizeof out[k]);
        if (i < 0 || f->served_err[i]) {
            out[k].err = cks_fail(&out[k].diag, i < 0 ? CKS_ERR_FILE_NOT_FOUND : f->served_err[i], "not asked");
            continue;
        }
        out[k].size = f->served[i];
    }
    return CKS_OK;
}

/* The copy as served: cut to the served size (never longer in these tests). */
static cks_err fake_as_served(void *ctx, const char *rel, uint64_t size, cks_source **out, cks_diag *diag)
{
    fake *f = ctx;
    int i = fake_find(f, rel);
    f->as_served_calls++;
    if (i < 0 || size > f->bufs[i]->len)
        return cks_fail(diag, CKS_ERR_UNSUPPORTED, "cannot serve that");
    return cks_source_from_memory(f->bufs[i]->data, (size_t)size, rel, false, out, diag);
}

static cks_ckpt_provider fake_provider(fake *f)
{
    cks_ckpt_provider p;
    memset(&p, 0, sizeof p);
    p.ctx = f;
    p.fetch_file = fake_fetch;
    p.open_source = fake_open;
    p.served_sizes = fake_served;
    p.open_as_served = fake_as_served;
    return p;
}

/* Listed vs served vs implied: each disagreement is its own problem. */
static void served_sizes_disagree(void)
{
    st_buf a = {0};
    fake f;
    cks_ckpt_provider p;
    cks_ckpt_check *chk = NULL;
    cks_diag diag;
    shard(&a, "a", 4);
    memset(&f, 0, sizeof f);
    f.names[0] = "model.safetensors";
    f.bufs[0] = &a;
    f.served[0] = a.len - 32; /* the CDN's copy is cut short; the listing and the header agree */
    p = fake_provider(&f);
    CHECK_EQ_INT(cks_ckpt_check_with(&p, "model.safetensors", &chk, &diag), CKS_OK);
    if (chk) {
        dump(chk);
        CHECK(find_problem(chk, CKS_ERR_SERVED_SIZE, "model.safetensors", NULL) != NULL);
        CHECK(find_problem(chk, CKS_ERR_SERVED_HEADER_SIZE, "model.safetensors", NULL) != NULL);
        CHECK_EQ_INT(chk->n_problems, 2);
        CHECK(chk->files[0].served_known && chk->files[0].served_size == a.len - 32);
        CHECK(chk->files[0].implied_known && chk->files[0].implied_size == a.len);
        CHECK_EQ_INT(f.as_served_calls, 1); /* the header was read from the served copy */
        CHECK(chk->valid_part == NULL);      /* its bytes are not the listed file's */
    }
    cks_ckpt_check_free(chk);
    chk = NULL;

    /* sizes agree: nothing to report; an unanswered probe is not a problem but is noted */
    f.served[0] = a.len;
    CHECK_EQ_INT(cks_ckpt_check_with(&p, "model.safetensors", &chk, &diag), CKS_OK);
    CHECK(chk && chk->n_problems == 0 && chk->files[0].error == CKS_OK && chk->valid_part);
    cks_ckpt_check_free(chk);
    chk = NULL;
    f.served_err[0] = CKS_ERR_NETWORK;
    CHECK_EQ_INT(cks_ckpt_check_with(&p, "model.safetensors", &chk, &diag), CKS_OK);
    CHECK(chk && chk->n_problems == 0 && chk->files[0].error == CKS_ERR_NETWORK && !chk->files[0].served_known);
    cks_ckpt_check_free(chk);
    chk = NULL;
    f.served_err[0] = CKS_ERR_UNSUPPORTED; /* --offline: not asked, not an error */
    CHECK_EQ_INT(cks_ckpt_check_with(&p, "model.safetensors", &chk, &diag), CKS_OK);
    CHECK(chk && chk->n_problems == 0 && chk->files[0].error == CKS_OK);
    cks_ckpt_check_free(chk);
    st_buf_free(&a);
}

/* An opened checkpoint: sizes asked of the provider it was opened with. */
static void sizes_of_opened_checkpoint(void)
{
    st_buf a = {0};
    fake f;
    cks_ckpt_provider p;
    cks_ckpt *ckpt = NULL;
    cks_ckpt_check *chk = NULL;
    cks_diag diag;
    shard(&a, "a", 2);
    memset(&f, 0, sizeof f);
    f.names[0] = "model.safetensors";
    f.bufs[0] = &a;
    f.served[0] = a.len + 100; /* longer on the server */
    p = fake_provider(&f);
    CHECK_EQ_INT(cks_ckpt_open_with(&p, "fake", "model.safetensors", &ckpt, &diag), CKS_OK);
    if (!ckpt)
        goto out;
    CHECK_EQ_INT(cks_ckpt_check_sizes(ckpt, &chk, &diag), CKS_OK);
    if (chk) {
        dump(chk);
        CHECK(find_problem(chk, CKS_ERR_SERVED_SIZE, "model.safetensors", NULL) != NULL);
        CHECK(find_problem(chk, CKS_ERR_SERVED_HEADER_SIZE, "model.safetensors", NULL) != NULL);
        CHECK(chk->files[0].size == a.len && chk->files[0].implied_size == a.len &&
              chk->files[0].served_size == a.len + 100);
    }
    cks_ckpt_check_free(chk);
    chk = NULL;
    f.served[0] = a.len;
    CHECK_EQ_INT(cks_ckpt_check_sizes(ckpt, &chk, &diag), CKS_OK);
    CHECK(chk && chk->n_problems == 0 && chk->files[0].served_known);
out:
    cks_ckpt_check_free(chk);
    cks_ckpt_free(ckpt);
    st_buf_free(&a);
}

TEST_MAIN(T(layout_parse_implied_size), T(local_every_problem), T(missing_shard_and_bad_index),
          T(served_sizes_disagree), T(sizes_of_opened_checkpoint))
