/* The safetensors parser against the fixture table, the need-more protocol, indexes and checkpoints. */
#include <openssl/evp.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "ckptscope/checkpoint.h"
#include "ckptscope/hash.h"
#include "ckptscope/safetensors.h"
#include "support/stwriter.h"

static void fixture_table(void)
{
    for (size_t i = 0; i < st_n_fixtures; i++) {
        const st_fixture *fx = &st_fixtures[i];
        st_buf b = {0};
        cks_st_header *hdr = NULL;
        cks_diag diag = {{0}};
        uint64_t need = 0;
        cks_err err;
        fx->build(&b);
        err = cks_st_parse(b.data, b.len, b.len, &hdr, &need, &diag);
        CHECK_MSG(err == fx->expect, "%s: got %s (%s), expected %s", fx->name, cks_strerror(err), diag.text,
                  cks_strerror(fx->expect));
        if (fx->expect == CKS_OK) {
            CHECK_MSG(hdr != NULL, "%s: no header", fx->name);
        } else {
            CHECK_MSG(hdr == NULL, "%s: header returned on failure", fx->name);
            if (fx->mention)
                CHECK_MSG(strstr(diag.text, fx->mention) != NULL, "%s: \"%s\" not in \"%s\"", fx->name, fx->mention,
                          diag.text);
        }
        cks_st_header_free(hdr);
        st_buf_free(&b);
    }
}

static void every_dtype_is_listed(void)
{
    st_buf b = {0};
    cks_st_header *hdr = NULL;
    cks_diag diag;
    st_fixtures[0].build(&b);
    CHECK_EQ_INT(cks_st_parse(b.data, b.len, b.len, &hdr, NULL, &diag), CKS_OK);
    if (!hdr)
        return;
    CHECK_EQ_INT(hdr->n_tensors, CKS_DTYPE__COUNT - 1);
    for (int d = CKS_DTYPE_INVALID + 1; d < CKS_DTYPE__COUNT; d++) {
        char name[64];
        const cks_tensor_info *t;
        snprintf(name, sizeof name, "tensor.%s", cks_dtype_name((cks_dtype)d));
        t = cks_st_find(hdr, name);
        CHECK_MSG(t != NULL, "%s missing", name);
        if (!t)
            continue;
        CHECK_EQ_INT(t->dtype, d);
        CHECK_EQ_INT(t->nelements, 12);
        CHECK_EQ_INT(t->end - t->begin, 12 * cks_dtype_bits((cks_dtype)d) / 8);
        CHECK_EQ_INT(t->file_offset, hdr->data_start + t->begin);
    }
    CHECK_EQ_INT(hdr->n_metadata, 1);
    CHECK_EQ_STR(hdr->metadata_keys[0], "format");
    CHECK_EQ_STR(hdr->metadata_values[0], "pt");
    cks_st_header_free(hdr);
    st_buf_free(&b);
}

static void edge_shapes(void)
{
    st_buf b = {0};
    cks_st_header *hdr = NULL;
    cks_diag diag;
    const cks_tensor_info *t;
    st_fixtures[1].build(&b);
    CHECK_EQ_INT(cks_st_parse(b.data, b.len, b.len, &hdr, NULL, &diag), CKS_OK);
    if (!hdr)
        return;
    t = cks_st_find(hdr, "scalar");
    CHECK(t && t->ndim == 0 && t->nelements == 1 && t->end - t->begin == 4);
    t = cks_st_find(hdr, "empty_a");
    CHECK(t && t->nelements == 0 && t->begin == t->end);
    t = cks_st_find(hdr, "cube");
    CHECK(t && t->ndim == 3 && t->nelements == 30 && t->end - t->begin == 60);
    /* sorted by offset: each begins where the previous ended */
    for (size_t i = 1; i < hdr->n_tensors; i++)
        CHECK_EQ_INT(hdr->tensors[i].begin, hdr->tensors[i - 1].end);
    cks_st_header_free(hdr);
    st_buf_free(&b);
}

/* The range engine reads 0-7, then the header, with the data section never present. */
static void need_more_protocol(void)
{
    st_buf b = {0};
    cks_st_header *hdr = NULL;
    cks_diag diag;
    uint64_t need = 0;
    uint64_t header_end;
    st_fixtures[0].build(&b);
    CHECK_EQ_INT(cks_st_parse(b.data, 3, b.len, &hdr, &need, &diag), CKS_ERR_NEED_MORE);
    CHECK_EQ_INT(need, 8);
    CHECK_EQ_INT(cks_st_parse(b.data, 8, b.len, &hdr, &need, &diag), CKS_ERR_NEED_MORE);
    header_end = need;
    CHECK(header_end > 8 && header_end < b.len);
    CHECK_EQ_INT(cks_st_parse(b.data, (size_t)header_end - 1, b.len, &hdr, &need, &diag), CKS_ERR_NEED_MORE);
    CHECK_EQ_INT(need, header_end);
    /* exactly the header, no data: the caller states the file size */
    CHECK_EQ_INT(cks_st_parse(b.data, (size_t)header_end, b.len, &hdr, &need, &diag), CKS_OK);
    CHECK(hdr && hdr->file_size == b.len && hdr->data_start == header_end);
    cks_st_header_free(hdr);
    hdr = NULL;
    /* a remote size smaller than the header says is a truncated file */
    CHECK_EQ_INT(cks_st_parse(b.data, (size_t)header_end, b.len - 1, &hdr, &need, &diag), CKS_ERR_TRUNCATED);
    CHECK_EQ_INT(cks_st_parse(b.data, (size_t)header_end, b.len + 1, &hdr, &need, &diag),
                 CKS_ERR_METADATA_INCOMPLETE_BUFFER);
    st_buf_free(&b);
}

/* Through a source: a first chunk smaller than the header forces the second read. */
static void read_header_from_source(void)
{
    st_writer *w = st_writer_new();
    st_buf b = {0};
    cks_source *src = NULL;
    cks_st_header *hdr = NULL;
    cks_diag diag;
    char name[64];
    uint64_t shape[1] = {1};
    /* ~100 KB of header: more than the 64 KiB first chunk */
    for (int i = 0; i < 1500; i++) {
        snprintf(name, sizeof name, "model.layers.%d.some_rather_long_tensor_name.weight", i);
        st_writer_add(w, name, CKS_DTYPE_U8, shape, 1, NULL);
    }
    st_writer_finish(w, &b);
    CHECK(b.len > 64 * 1024 + 1500);
    CHECK_EQ_INT(cks_source_from_memory(b.data, b.len, "mem", false, &src, &diag), CKS_OK);
    CHECK_EQ_INT(cks_st_read_header(src, &hdr, &diag), CKS_OK);
    CHECK(hdr && hdr->n_tensors == 1500);
    cks_st_header_free(hdr);
    cks_source_free(src);
    st_writer_free(w);
    st_buf_free(&b);
}

static void index_table(void)
{
    for (size_t i = 0; i < st_n_index_fixtures; i++) {
        const st_index_fixture *fx = &st_index_fixtures[i];
        cks_st_index *index = NULL;
        cks_diag diag = {{0}};
        cks_err err = cks_st_index_parse(fx->json, strlen(fx->json), &index, &diag);
        CHECK_MSG(err == fx->expect, "%s: got %s (%s)", fx->name, cks_strerror(err), diag.text);
        if (fx->mention && err)
            CHECK_MSG(strstr(diag.text, fx->mention) != NULL, "%s: \"%s\" not in \"%s\"", fx->name, fx->mention,
                      diag.text);
        if (fx->expect == CKS_OK && index) {
            CHECK_EQ_INT(index->n_entries, 3);
            CHECK_EQ_INT(index->n_shards, 3);
            CHECK_EQ_STR(index->entries[0].tensor, "a");
            CHECK_EQ_STR(index->shards[index->entries[0].shard], "s1.safetensors");
            CHECK_EQ_STR(index->shards[index->entries[2].shard], "sub/s3.safetensors");
            CHECK_EQ_INT(index->total_size, 12);
        }
        cks_st_index_free(index);
    }
}

static char fixture_dir[256];

static void remove_fixtures(void)
{
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", fixture_dir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", fixture_dir);
}

static const char *fixtures(void)
{
    if (!fixture_dir[0]) {
        snprintf(fixture_dir, sizeof fixture_dir, "/tmp/cks-test-st-%d", (int)getpid());
        atexit(remove_fixtures);
        if (st_write_fixture_dir(fixture_dir) != 0)
            fprintf(stderr, "cannot write fixtures to %s\n", fixture_dir);
    }
    return fixture_dir;
}

static void sharded_checkpoint(void)
{
    char path[512];
    cks_ckpt *ckpt = NULL;
    cks_diag diag;
    const cks_ckpt_tensor *t;
    snprintf(path, sizeof path, "%s/sharded", fixtures());
    CHECK_EQ_INT(cks_ckpt_open_local(path, &ckpt, &diag), CKS_OK);
    if (!ckpt) {
        fprintf(stderr, "  %s\n", diag.text);
        return;
    }
    CHECK_EQ_INT(ckpt->n_files, 2);
    CHECK_EQ_INT(ckpt->n_tensors, 4);
    CHECK(ckpt->index != NULL);
    t = cks_ckpt_find(ckpt, "model.norm.weight");
    CHECK(t && strcmp(ckpt->files[t->file].path, "model-00002-of-00002.safetensors") == 0);
    CHECK(cks_ckpt_find(ckpt, "model.missing") == NULL);
    cks_ckpt_free(ckpt);
    /* the index file itself opens the same checkpoint */
    snprintf(path, sizeof path, "%s/sharded/model.safetensors.index.json", fixtures());
    CHECK_EQ_INT(cks_ckpt_open_local(path, &ckpt, &diag), CKS_OK);
    CHECK(ckpt && ckpt->n_tensors == 4);
    cks_ckpt_free(ckpt);
}

static void sharded_mismatch(void)
{
    char path[512];
    cks_ckpt *ckpt = NULL;
    cks_diag diag;
    snprintf(path, sizeof path, "%s/sharded-mismatch", fixtures());
    CHECK_EQ_INT(cks_ckpt_open_local(path, &ckpt, &diag), CKS_ERR_INDEX_MISMATCH);
    CHECK(ckpt == NULL);
    CHECK(strstr(diag.text, "model.layers.0.input_layernorm.weight") != NULL);
}

/* Hash of a tensor equals an independent SHA-256 of its byte range, whatever the threads. */
static void tensor_hashes(void)
{
    st_writer *w = st_writer_new();
    st_buf b = {0};
    cks_source *src = NULL;
    cks_ckpt *ckpt = NULL;
    cks_diag diag;
    uint64_t shape[2] = {300, 1000};
    char *relpath = strdup("mem.safetensors");
    const cks_ckpt_tensor *sel[8];
    cks_tensor_hash hashes[8];
    cks_hash_opts opts = {0};
    for (int i = 0; i < 8; i++) {
        char name[32];
        snprintf(name, sizeof name, "t%d", i);
        st_writer_add(w, name, i % 2 ? CKS_DTYPE_BF16 : CKS_DTYPE_F32, shape, 2, NULL);
    }
    st_writer_finish(w, &b);
    CHECK_EQ_INT(cks_source_from_memory(b.data, b.len, "mem", false, &src, &diag), CKS_OK);
    CHECK_EQ_INT(cks_ckpt_from_sources("mem", &src, &relpath, 1, &ckpt, &diag), CKS_OK);
    if (!ckpt)
        goto out;
    for (int i = 0; i < 8; i++)
        sel[i] = &ckpt->tensors[i];
    for (unsigned threads = 1; threads <= 3; threads++) {
        opts.threads = threads;
        opts.chunk_bytes = 4096 + threads; /* odd chunk sizes cross tensor-internal boundaries */
        CHECK_EQ_INT(cks_hash_tensors(ckpt, sel, 8, &opts, hashes, &diag), CKS_OK);
        for (int i = 0; i < 8; i++) {
            const cks_tensor_info *info = sel[i]->info;
            uint8_t digest[32];
            unsigned int len = 0;
            EVP_Digest(b.data + info->file_offset, info->end - info->begin, digest, &len, EVP_sha256(), NULL);
            CHECK_MSG(memcmp(digest, hashes[i].sha256, 32) == 0, "tensor %s, %u threads", info->name, threads);
        }
    }
out:
    cks_ckpt_free(ckpt);
    st_writer_free(w);
    st_buf_free(&b);
}

/* A known answer: SHA-256("abc"). */
static void sha256_known_answer(void)
{
    char hex[65];
    cks_sha256_hex("abc", 3, hex);
    CHECK_EQ_STR(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

TEST_MAIN(T(fixture_table), T(every_dtype_is_listed), T(edge_shapes), T(need_more_protocol),
          T(read_header_from_source), T(index_table), T(sharded_checkpoint), T(sharded_mismatch),
          T(tensor_hashes), T(sha256_known_answer))
