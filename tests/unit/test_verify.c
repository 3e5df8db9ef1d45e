/*
 * The library's verify (src/analysis/verify.c) on a local file, without the CLI: the file
 * record, a NaN found by the full read, the whole-file SHA-256 against OpenSSL's of the file,
 * and the screen's rule on hand-made results.
 */
#include <math.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "ckptscope/hex.h"
#include "ckptscope/verify.h"
#include "support/stwriter.h"

static bool has(const cks_verify_findings *fs, const char *rule)
{
    for (size_t i = 0; i < fs->n; i++)
        if (strcmp(fs->items[i].rule, rule) == 0)
            return true;
    return false;
}

static void full_read_finds_nan_and_hashes_the_file(void)
{
    char dir[] = "/tmp/cks-verify-XXXXXX", path[256], hex[65];
    const uint64_t shape[1] = {4096};
    float *w = calloc(4096, sizeof *w);
    st_writer *sw;
    st_buf buf = {0};
    FILE *f;
    cks_ckpt *ck = NULL;
    cks_ckpt_check *chk = NULL;
    cks_verify_report r;
    cks_diag d = {{0}};
    unsigned char want[32];
    if (!w || !mkdtemp(dir)) {
        free(w);
        SKIP("no memory or temporary folder");
    }
    for (int i = 0; i < 4096; i++)
        w[i] = 0.25f * (float)(i % 7) + 1.0f;
    w[3000] = NAN;
    sw = st_writer_new();
    st_writer_add(sw, "model.layers.0.mlp.weight", CKS_DTYPE_F32, shape, 1, w);
    st_writer_finish(sw, &buf);
    st_writer_free(sw);
    snprintf(path, sizeof path, "%s/m.safetensors", dir);
    f = fopen(path, "wb");
    CHECK(f && fwrite(buf.data, 1, buf.len, f) == buf.len);
    if (f)
        fclose(f);
    SHA256(buf.data, buf.len, want);
    cks_hex_encode(want, 32, hex);
    st_buf_free(&buf);

    cks_verify_report_init(&r, 100, 100);
    CHECK(cks_ckpt_check_local(path, &chk, &d) == CKS_OK);
    CHECK(chk && cks_verify_take_check(&r, chk));
    CHECK_EQ_INT(r.n_files, 1);
    CHECK(cks_ckpt_open_local(path, &ck, &d) == CKS_OK);
    if (ck && r.n_files == 1) {
        CHECK(cks_verify_read(ck, &r, true, NULL, NULL, &d) == CKS_OK);
        CHECK(has(&r.problems, "NonFinite"));
        CHECK(has(&r.warnings, "NoServerSha256")); /* a local file: nothing to match */
        CHECK_EQ_STR(r.files[0].sha256_computed, hex);
        CHECK_EQ_INT(r.files[0].sha256_match, -1);
        CHECK(r.values.full && r.values.tensors_checked == 1 && r.values.values_checked == 4096);
        CHECK_EQ_INT(r.hashed_bytes, r.files[0].size);
    }
    cks_ckpt_free(ck);
    cks_ckpt_check_free(chk);
    cks_verify_report_release(&r);
    unlink(path);
    rmdir(dir);
    free(w);
}

static void screen_clears_only_far_from_derived(void)
{
    static cks_compare_result res;
    cks_test_result *t = res.tests;
    double z, p;
    memset(&res, 0, sizeof res);
    res.n_tests = 1;
    res.verdict = CKS_VERDICT_INCONCLUSIVE;
    t[0].primary = t[0].ran = true;
    t[0].p_value = 0.4;
    t[0].z = 0.3;
    t[0].floor = 0.3;
    t[0].effect = 0.01;
    CHECK(cks_verify_screen_clears(&res, &z, &p));
    CHECK_NEAR(z, 0.3, 0);
    CHECK_NEAR(p, 0.4, 0);
    t[0].z = 3.5; /* near significance with an effect at half its floor or more: not cleared */
    t[0].effect = 0.2;
    CHECK(!cks_verify_screen_clears(&res, &z, &p));
    t[0].effect = 0.1; /* near significance but far under the floor: cleared */
    CHECK(cks_verify_screen_clears(&res, &z, &p));
    t[0].z = 0.3;
    res.verdict = CKS_VERDICT_IDENTICAL; /* never cleared */
    CHECK(!cks_verify_screen_clears(&res, &z, &p));
    res.verdict = CKS_VERDICT_INCONCLUSIVE; /* what the screen says without power checks */
    CHECK(cks_verify_screen_clears(&res, &z, &p));
    t[0].ran = false; /* no primary test ran: nothing says the models are far apart */
    CHECK(!cks_verify_screen_clears(&res, &z, &p));
}

TEST_MAIN(T(full_read_finds_nan_and_hashes_the_file), T(screen_clears_only_far_from_derived))
