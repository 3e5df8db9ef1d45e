/*
 * cks_fetch (src/transport/fetch.c) on a local checkpoint: the chosen tensors' hashes match a
 * SHA-256 of their bytes computed here, and the file written holds exactly them, readable by
 * the library's own parser; a file that cannot be written leaves nothing behind.
 */
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "ckptscope/fetch.h"
#include "ckptscope/hex.h"
#include "support/stwriter.h"

struct seen {
    size_t n;
    char hex[4][65];
};

static void on_tensor(void *ctx, size_t i, const char hex[65])
{
    struct seen *s = ctx;
    if (i < 4)
        memcpy(s->hex[i], hex, 65);
    s->n++;
}

static void chosen_tensors_are_hashed_and_written(void)
{
    char dir[] = "/tmp/cks-fetch-XXXXXX", in[256], outp[256], bad[300];
    const uint64_t shape[1] = {1000};
    float a[1000], b[1000];
    st_writer *w;
    st_buf buf = {0};
    FILE *f;
    cks_ckpt *ck = NULL, *back = NULL;
    cks_diag d = {{0}};
    struct seen s = {0};
    uint64_t bytes = 0;
    if (!mkdtemp(dir))
        SKIP("no temporary folder");
    for (int i = 0; i < 1000; i++) {
        a[i] = (float)i * 0.5f;
        b[i] = -(float)i;
    }
    w = st_writer_new();
    st_writer_add(w, "a", CKS_DTYPE_F32, shape, 1, a);
    st_writer_add(w, "b", CKS_DTYPE_F32, shape, 1, b);
    st_writer_add(w, "c", CKS_DTYPE_F32, shape, 1, NULL);
    st_writer_finish(w, &buf);
    st_writer_free(w);
    snprintf(in, sizeof in, "%s/in.safetensors", dir);
    snprintf(outp, sizeof outp, "%s/out.safetensors", dir);
    f = fopen(in, "wb");
    CHECK(f && fwrite(buf.data, 1, buf.len, f) == buf.len);
    if (f)
        fclose(f);
    st_buf_free(&buf);
    CHECK(cks_ckpt_open_local(in, &ck, &d) == CKS_OK);
    if (ck) {
        const cks_ckpt_tensor *sel[2] = {cks_ckpt_find(ck, "b"), cks_ckpt_find(ck, "a")};
        cks_fetch_opts o = {.output = outp, .source_name = "test", .tensor_done = on_tensor, .ctx = &s};
        unsigned char want[32];
        char hex[65];
        CHECK(sel[0] && sel[1]);
        CHECK(cks_fetch(ck, sel, 2, &o, &bytes, &d) == CKS_OK);
        CHECK_EQ_INT(s.n, 2);
        CHECK_EQ_INT(bytes, 8000);
        SHA256((const unsigned char *)b, sizeof b, want); /* in `sel` order: b first */
        cks_hex_encode(want, 32, hex);
        CHECK_EQ_STR(s.hex[0], hex);
        SHA256((const unsigned char *)a, sizeof a, want);
        cks_hex_encode(want, 32, hex);
        CHECK_EQ_STR(s.hex[1], hex);
        /* the written file: b then a, nothing else, same bytes */
        CHECK(cks_ckpt_open_local(outp, &back, &d) == CKS_OK);
        if (back) {
            const cks_ckpt_tensor *tb = cks_ckpt_find(back, "b");
            float got[1000];
            CHECK_EQ_INT(back->n_tensors, 2);
            CHECK(cks_ckpt_find(back, "c") == NULL);
            CHECK(tb && cks_ckpt_read_tensor(back, tb, 0, got, sizeof got, &d) == CKS_OK &&
                  memcmp(got, b, sizeof b) == 0);
            cks_ckpt_free(back);
        }
        /* an output in a folder that does not exist: an I/O error, no file, no temporary */
        snprintf(bad, sizeof bad, "%s/missing/out.safetensors", dir);
        o.output = bad;
        CHECK(cks_fetch(ck, sel, 2, &o, &bytes, &d) == CKS_ERR_IO);
        CHECK(access(bad, F_OK) != 0);
        cks_ckpt_free(ck);
    }
    unlink(in);
    unlink(outp);
    rmdir(dir);
}

TEST_MAIN(T(chosen_tensors_are_hashed_and_written))
