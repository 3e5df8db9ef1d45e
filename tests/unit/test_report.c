/*
 * test_report.c — the read-tracking source (merging, the cap, coarsening as a superset) and
 * the HTML writer on inputs the synthetic families do not reach: 46 x 47 layers with a gapped
 * pairing, thousands of items, NaN everywhere a number can be missing, markup in every string,
 * NULL arguments and a stream that fails.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "ckptscope/report.h"

static cks_source *wrapped_memory(size_t size, cks_ckpt *ckpt, cks_ckpt_file *file, unsigned char **data)
{
    cks_source *src = NULL;
    *data = calloc(size, 1);
    CHECK(*data != NULL);
    CHECK(cks_source_from_memory(*data, size, "mem", false, &src, NULL) == CKS_OK);
    memset(ckpt, 0, sizeof *ckpt);
    memset(file, 0, sizeof *file);
    file->path = "model.safetensors";
    file->source = src;
    ckpt->n_files = 1;
    ckpt->files = file;
    CHECK(cks_report_track_reads(ckpt, NULL) == CKS_OK);
    CHECK(file->source != src);            /* wrapped */
    CHECK(file->source->size == size);     /* identity copied */
    CHECK(cks_report_track_reads(ckpt, NULL) == CKS_OK); /* twice is harmless */
    return file->source;
}

static void test_track_merges(void)
{
    cks_ckpt ckpt;
    cks_ckpt_file file;
    unsigned char *data, buf[64];
    const cks_range *r;
    size_t n;
    uint64_t bytes;
    bool approx;
    cks_source *src = wrapped_memory(1000, &ckpt, &file, &data);

    CHECK(!cks_report_reads(data == NULL ? NULL : (cks_source *)NULL, &r, &n, &bytes, &approx));
    CHECK(cks_source_read_at(src, 100, buf, 10, NULL) == CKS_OK);  /* [100,110) */
    CHECK(cks_source_read_at(src, 300, buf, 10, NULL) == CKS_OK);  /* [300,310) */
    CHECK(cks_source_read_at(src, 110, buf, 5, NULL) == CKS_OK);   /* adjacent: [100,115) */
    CHECK(cks_source_read_at(src, 200, buf, 10, NULL) == CKS_OK);  /* between */
    CHECK(cks_source_read_at(src, 205, buf, 64, NULL) == CKS_OK);  /* overlaps [200,210): [200,269) */
    CHECK(cks_source_read_at(src, 990, buf, 20, NULL) != CKS_OK);  /* past the end: not recorded */
    CHECK(cks_report_reads(src, &r, &n, &bytes, &approx));
    CHECK_EQ_INT(n, 3);
    if (n == 3) {
        CHECK_EQ_INT(r[0].offset, 100);
        CHECK_EQ_INT(r[0].length, 15);
        CHECK_EQ_INT(r[1].offset, 200);
        CHECK_EQ_INT(r[1].length, 69);
        CHECK_EQ_INT(r[2].offset, 300);
        CHECK_EQ_INT(r[2].length, 10);
    }
    CHECK_EQ_INT(bytes, 15 + 69 + 10);
    CHECK(!approx);
    CHECK(cks_source_read_at(src, 0, buf, 64, NULL) == CKS_OK);
    CHECK(cks_source_read_at(src, 50, buf, 64, NULL) == CKS_OK);   /* bridges [0,64) and [100,115) */
    CHECK(cks_report_reads(src, &r, &n, &bytes, &approx));
    CHECK_EQ_INT(n, 3);
    CHECK_EQ_INT(r[0].offset, 0);
    CHECK_EQ_INT(r[0].length, 115);
    cks_source_free(src);
    free(data);
}

static void test_track_cap_is_superset(void)
{
    enum { READS = 3 * CKS_REPORT_MAX_RANGES };
    cks_ckpt ckpt;
    cks_ckpt_file file;
    unsigned char *data, buf[4];
    const cks_range *r;
    size_t n;
    uint64_t bytes, covered = 0;
    bool approx, inside = true;
    cks_source *src = wrapped_memory((size_t)READS * 16, &ckpt, &file, &data);

    /* disjoint reads in a scrambled order, more than the cap holds */
    for (uint64_t i = 0; i < READS; i++) {
        uint64_t k = (i * 7919) % READS;
        CHECK(cks_source_read_at(src, k * 16, buf, 4, NULL) == CKS_OK);
    }
    CHECK(cks_report_reads(src, &r, &n, &bytes, &approx));
    CHECK(n <= CKS_REPORT_MAX_RANGES);
    CHECK(approx);
    for (size_t i = 0; i < n; i++) {
        covered += r[i].length;
        if (i && r[i].offset <= r[i - 1].offset + r[i - 1].length)
            inside = false; /* must stay sorted, disjoint, non-adjacent */
    }
    CHECK(inside);
    CHECK_EQ_INT(covered, bytes);
    /* every read byte is inside some range */
    for (uint64_t k = 0; k < READS; k += 97) {
        bool hit = false;
        for (size_t i = 0; i < n && !hit; i++)
            hit = k * 16 >= r[i].offset && k * 16 + 4 <= r[i].offset + r[i].length;
        CHECK_MSG(hit, "read at %llu not covered", (unsigned long long)(k * 16));
    }
    cks_source_free(src);
    free(data);
}

#define LA 46
#define LB 47

static char *render(const cks_compare_result *r, const cks_report_meta *meta, cks_err *err)
{
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    CHECK(f != NULL);
    *err = cks_report_html(r, meta, f, NULL);
    fclose(f);
    return text;
}

static size_t count(const char *hay, const char *needle)
{
    size_t c = 0;
    for (const char *p = hay; (p = strstr(p, needle)) != NULL; p += strlen(needle))
        c++;
    return c;
}

static void test_html_large_and_hostile(void)
{
    static const char evil[] = "<script>alert(1)</script>\"'&";
    cks_compare_result r;
    cks_report_meta meta;
    cks_report_file files[2];
    cks_range ranges[10];
    cks_err err;
    char *html;

    memset(&r, 0, sizeof r);
    memset(&meta, 0, sizeof meta);
    r.verdict = CKS_VERDICT_INCONCLUSIVE;
    snprintf(r.reason, sizeof r.reason, "reason %s", evil);
    snprintf(r.covered, sizeof r.covered, "covered %s", evil);
    snprintf(r.sampling, sizeof r.sampling, "%s", evil);
    snprintf(r.config_diff, sizeof r.config_diff, "%s", evil);
    r.layers_a = LA;
    r.layers_b = LB;
    r.hidden_a = r.hidden_b = 4096;
    r.family_a = evil;
    r.family_b = "glm4_moe";
    r.layer_matrix = calloc(LA * LB, sizeof *r.layer_matrix);
    r.row_margin = calloc(LA, sizeof *r.row_margin);
    r.row_best = calloc(LA, sizeof *r.row_best);
    r.std_curve_a = calloc(LA, sizeof *r.std_curve_a);
    r.std_curve_b = calloc(LB, sizeof *r.std_curve_b);
    r.path_a = calloc(LA, sizeof *r.path_a);
    r.path_b = calloc(LA, sizeof *r.path_b);
    CHECK(r.layer_matrix && r.row_margin && r.row_best && r.std_curve_a && r.std_curve_b && r.path_a && r.path_b);
    for (int i = 0; i < LA; i++) {
        for (int j = 0; j < LB; j++)
            r.layer_matrix[i * LB + j] = (i == j || i + 1 == j) ? 0.9 : (i * j) % 3 ? -0.2 : NAN;
        r.row_margin[i] = i % 5 ? 0.3 : NAN;
        r.std_curve_a[i] = i % 7 ? 0.02 + i * 1e-4 : NAN;
        r.path_a[i] = i;
        r.path_b[i] = i < 20 ? i : i + 1; /* a layer inserted in B at 20 */
    }
    for (int j = 0; j < LB; j++)
        r.std_curve_b[j] = 0.02 + j * 1e-4;
    r.n_path = LA;
    r.std_curve_corr = NAN;
    r.router_match = NAN;
    r.n_tests = 3;
    {
        cks_test_result *t1 = &r.tests[0], *t2 = &r.tests[1], *t3 = &r.tests[2];
        snprintf(t1->id, sizeof t1->id, "T1");
        snprintf(t1->name, sizeof t1->name, "%s", evil);
        t1->ran = t1->valid = t1->primary = true;
        t1->statistic = NAN;
        t1->null_mean = NAN;
        t1->null_sd = NAN;
        t1->p_value = NAN;
        t1->p_holm = NAN;
        t1->z = NAN;
        t1->effect = NAN;
        t1->raw_cosine = NAN;
        t1->n_items = CKS_MAX_ITEMS;
        t1->items = calloc(CKS_MAX_ITEMS, sizeof *t1->items);
        CHECK(t1->items != NULL);
        for (size_t i = 0; i < CKS_MAX_ITEMS; i++) {
            snprintf(t1->items[i].label, sizeof t1->items[i].label, "model.layers.%zu.%s.norm", i % 60, evil);
            t1->items[i].value = i % 11 ? (double)(i % 100) / 100.0 : NAN;
        }
        snprintf(t2->id, sizeof t2->id, "T2");
        t2->ran = t2->valid = t2->primary = t2->rejects = true;
        t2->statistic = 0.5;
        t2->raw_cosine = 0.99;
        t2->p_value = 1e-4;
        t2->p_exact = true;
        t2->p_holm = 3e-4;
        t2->z = 7;
        t2->n_items = 2 * LA;
        t2->items = calloc(2 * LA, sizeof *t2->items);
        CHECK(t2->items != NULL);
        for (size_t i = 0; i < 2 * LA; i++) {
            snprintf(t2->items[i].label, sizeof t2->items[i].label, "layer %d/%d %s", r.path_a[i / 2],
                     r.path_b[i / 2], i % 2 ? "ffn_norm" : "attn_norm");
            t2->items[i].value = i % 9 ? 0.5 : NAN;
            t2->items[i].raw_cosine = 0.99;
        }
        snprintf(t3->id, sizeof t3->id, "T3");
        t3->ran = false;
        snprintf(t3->why_not, sizeof t3->why_not, "%s", evil);
    }
    for (int i = 0; i < 10; i++) {
        ranges[i].offset = (uint64_t)i * 1000;
        ranges[i].length = 100;
    }
    files[0] = (cks_report_file){.path = evil, .size = 1u << 30, .sha256 = NULL, .ranges = ranges, .n_ranges = 10,
                                 .bytes_read = 1000};
    files[1] = (cks_report_file){.path = "b.safetensors", .size = 5, .sha256 = "00ff", .ranges_approximate = true,
                                 .ranges = ranges, .n_ranges = 1, .bytes_read = 100};
    meta.a = (cks_report_model){.spec = evil, .kind = "hub", .endpoint = evil, .repo = evil, .revision = evil,
                                .commit = evil, .n_files = 2, .files = files};
    meta.b = (cks_report_model){.spec = "./b", .kind = "local", .n_files = 1, .files = files + 1};
    meta.command_line = evil;
    meta.have_transfer = true;

    html = render(&r, &meta, &err);
    CHECK(err == CKS_OK);
    CHECK(html != NULL);
    if (html) {
        CHECK(strstr(html, "<script") == NULL);
        CHECK(strstr(html, "&lt;script&gt;alert(1)&lt;/script&gt;&quot;&#39;&amp;") != NULL);
        CHECK_EQ_INT(count(html, "<svg"), count(html, "</svg>"));
        CHECK_EQ_INT(count(html, "<figure"), count(html, "</figure>"));
        CHECK_EQ_INT(count(html, "<table"), count(html, "</table>"));
        CHECK_EQ_INT(count(html, "<details"), count(html, "</details>"));
        CHECK(count(html, "<svg") >= 4);
        CHECK_EQ_INT(count(html, ", B layer "), LA * LB); /* one cell each */
        CHECK_EQ_INT(count(html, "<title>pair "), LA);
        /* a NaN must never reach an SVG coordinate: it would break the whole figure */
        CHECK(strstr(html, "nan\"") == NULL && strstr(html, "nan,") == NULL && strstr(html, "nan ") == NULL);
        CHECK(strstr(html, "inf\"") == NULL && strstr(html, "inf,") == NULL);
        CHECK(strstr(html, "coarsened") != NULL);
        CHECK(strstr(html, "not run") != NULL);
        CHECK(strstr(html, "</html>") != NULL);
    }
    free(html);

    /* no per-layer data at all: a short page, still complete */
    {
        cks_compare_result empty;
        cks_report_meta m2;
        memset(&empty, 0, sizeof empty);
        memset(&m2, 0, sizeof m2);
        m2.a.spec = "a";
        m2.b.spec = "b";
        html = render(&empty, &m2, &err);
        CHECK(err == CKS_OK);
        CHECK(html && strstr(html, "No per-layer data") && strstr(html, "</html>"));
        free(html);
    }
    free(r.tests[0].items);
    free(r.tests[1].items);
    free(r.layer_matrix);
    free(r.row_margin);
    free(r.row_best);
    free(r.std_curve_a);
    free(r.std_curve_b);
    free(r.path_a);
    free(r.path_b);
}

static void test_html_errors(void)
{
    cks_compare_result r;
    cks_report_meta meta;
    cks_diag diag;
    FILE *full;
    memset(&r, 0, sizeof r);
    memset(&meta, 0, sizeof meta);
    meta.a.spec = meta.b.spec = "x";
    CHECK(cks_report_html(NULL, &meta, stdout, &diag) == CKS_ERR_INVALID_ARG);
    CHECK(cks_report_html(&r, NULL, stdout, &diag) == CKS_ERR_INVALID_ARG);
    CHECK(cks_report_html(&r, &meta, NULL, &diag) == CKS_ERR_INVALID_ARG);
    CHECK(cks_report_track_reads(NULL, &diag) == CKS_ERR_INVALID_ARG);
    full = fopen("/dev/full", "w");
    if (!full)
        SKIP("no /dev/full");
    CHECK(cks_report_html(&r, &meta, full, &diag) == CKS_ERR_IO);
    fclose(full);
}

TEST_MAIN(T(test_track_merges), T(test_track_cap_is_superset), T(test_html_large_and_hostile), T(test_html_errors))
