/*
 * Streaming statistics against independent references: hand-worked small cases, a plain
 * long-double two-pass loop written here, numpy/scipy (tests/ref/ref.py), and for ULP
 * distances a Python reference that ranks every distinct value of the format by sorting.
 */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "check.h"
#include "ckptscope/metrics.h"
#include "ref/pyref.h"

/* test-local generator (independent of the library's PRNG) */
static uint64_t lcg_state = 12345;
static double test_uniform(void)
{
    lcg_state = lcg_state * 6364136223846793005ull + 1442695040888963407ull;
    return ((double)(lcg_state >> 11) + 0.5) * 0x1p-53;
}
static double test_normal(void)
{
    return sqrt(-2 * log(test_uniform())) * cos(2 * M_PI * test_uniform());
}

/* The reference: two passes, long double, no streaming, no blocks. */
typedef struct ref_stats {
    long double n, mean_a, mean_b, std_a, std_b, cosine, pearson, rel_a, rel_b, max_abs;
} ref_stats;

static ref_stats plain_reference(const double *a, const double *b, size_t n)
{
    ref_stats r = {0};
    long double sa = 0, sb = 0, m = 0;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(a[i]) || !isfinite(b[i]))
            continue;
        sa += a[i];
        sb += b[i];
        m++;
    }
    r.n = m;
    r.mean_a = sa / m;
    r.mean_b = sb / m;
    long double caa = 0, cbb = 0, cab = 0, raa = 0, rbb = 0, rab = 0, dd = 0;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(a[i]) || !isfinite(b[i]))
            continue;
        long double da = a[i] - r.mean_a, db = b[i] - r.mean_b, d = (long double)a[i] - b[i];
        caa += da * da;
        cbb += db * db;
        cab += da * db;
        raa += (long double)a[i] * a[i];
        rbb += (long double)b[i] * b[i];
        rab += (long double)a[i] * b[i];
        dd += d * d;
        if (fabsl(d) > r.max_abs)
            r.max_abs = fabsl(d);
    }
    r.std_a = sqrtl(caa / (m - 1));
    r.std_b = sqrtl(cbb / (m - 1));
    r.pearson = cab / sqrtl(caa * cbb);
    r.cosine = rab / sqrtl(raa * rbb);
    r.rel_a = sqrtl(dd / raa);
    r.rel_b = sqrtl(dd / rbb);
    return r;
}

static void hand_worked_pairs(void)
{
    cks_pair_acc acc;
    cks_pair_stats s;
    double a[4] = {1, 2, 3, 4}, b[4] = {2, 4, 6, 8};
    cks_pair_acc_init(&acc);
    cks_pair_acc_add_f64(&acc, a, b, 4);
    cks_pair_acc_result(&acc, &s);
    CHECK(s.n == 4 && s.skipped_pairs == 0);
    CHECK_NEAR(s.pearson, 1.0, 1e-15);
    CHECK_NEAR(s.cosine, 1.0, 1e-15);
    CHECK_NEAR(s.rel_l2_over_a, 1.0, 1e-15); /* |a-b| = |a| */
    CHECK_NEAR(s.rel_l2_over_b, 0.5, 1e-15); /* |a-b| = |b|/2 */
    CHECK_NEAR(s.max_abs_diff, 4.0, 0);
    CHECK_NEAR(s.mean_a, 2.5, 1e-15);
    CHECK_NEAR(s.std_a, sqrt(5.0 / 3.0), 1e-15);

    /* orthogonal raw vectors that are perfectly anti-correlated once centred */
    double c[2] = {1, 0}, d[2] = {0, 1};
    cks_pair_acc_init(&acc);
    cks_pair_acc_add_f64(&acc, c, d, 2);
    cks_pair_acc_result(&acc, &s);
    CHECK_NEAR(s.cosine, 0.0, 1e-15);
    CHECK_NEAR(s.pearson, -1.0, 1e-15);
    CHECK_NEAR(s.rel_l2_over_a, sqrt(2.0), 1e-15);

    /* the norm-gain trap: positive offsets give raw cosine ~1 with Pearson exactly 0 */
    double g1[4] = {1.0, 1.1, 1.0, 1.1}, g2[4] = {1.0, 1.0, 1.1, 1.1};
    cks_pair_acc_init(&acc);
    cks_pair_acc_add_f64(&acc, g1, g2, 4);
    cks_pair_acc_result(&acc, &s);
    CHECK(s.cosine > 0.99);
    CHECK_NEAR(s.pearson, 0.0, 1e-14);

    /* identical inputs: zero distance exactly */
    cks_pair_acc_init(&acc);
    cks_pair_acc_add_f64(&acc, a, a, 4);
    cks_pair_acc_result(&acc, &s);
    CHECK(s.rel_l2_over_a == 0.0 && s.max_abs_diff == 0.0);
    CHECK_NEAR(s.pearson, 1.0, 1e-15);
}

static void undefined_statistics_are_flagged(void)
{
    cks_pair_acc acc;
    cks_pair_stats s;
    double constant[3] = {2, 2, 2}, varying[3] = {1, 2, 3}, zeros[3] = {0, 0, 0};
    cks_pair_acc_init(&acc);
    cks_pair_acc_add_f64(&acc, constant, varying, 3);
    cks_pair_acc_result(&acc, &s);
    CHECK(!s.pearson_defined && isnan(s.pearson) && s.cosine_defined);
    cks_pair_acc_init(&acc);
    cks_pair_acc_add_f64(&acc, zeros, varying, 3);
    cks_pair_acc_result(&acc, &s);
    CHECK(!s.cosine_defined && !s.rel_l2_over_a_defined && s.rel_l2_over_b_defined);
    cks_pair_acc_init(&acc);
    cks_pair_acc_result(&acc, &s);
    CHECK(s.n == 0 && !s.pearson_defined && !s.cosine_defined && isnan(s.mean_a));
    double r = 0;
    CHECK(cks_pearson_f64(constant, varying, 3, &r, NULL) == CKS_ERR_NUMERIC && isnan(r));
}

/* Random data fed in odd-sized chunks and through merges, against the plain reference. */
static void streaming_matches_plain_reference(void)
{
    enum { N = 100003 };
    double *a = malloc(N * sizeof *a), *b = malloc(N * sizeof *b);
    for (size_t i = 0; i < N; i++) {
        /* the norm-gain case: a big common offset and a small spread (precision test) */
        a[i] = 1.0 + 1e-3 * test_normal();
        b[i] = 1.0 + 0.5e-3 * (0.3 * (a[i] - 1.0) * 1e3 + test_normal());
    }
    cks_pair_acc whole, parts[3];
    cks_pair_acc_init(&whole);
    cks_pair_acc_add_f64(&whole, a, b, N);
    /* three accumulators fed interleaved chunks of awkward sizes, then merged */
    for (int k = 0; k < 3; k++)
        cks_pair_acc_init(&parts[k]);
    size_t pos = 0, chunk = 1;
    for (int k = 0; pos < N; k = (k + 1) % 3) {
        size_t len = chunk < N - pos ? chunk : N - pos;
        cks_pair_acc_add_f64(&parts[k], a + pos, b + pos, len);
        pos += len;
        chunk = chunk * 3 + 7;
        if (chunk > 20000)
            chunk = 5;
    }
    cks_pair_acc_merge(&parts[0], &parts[1]);
    cks_pair_acc_merge(&parts[0], &parts[2]);
    ref_stats r = plain_reference(a, b, N);
    cks_pair_stats s[2];
    cks_pair_acc_result(&whole, &s[0]);
    cks_pair_acc_result(&parts[0], &s[1]);
    for (int k = 0; k < 2; k++) {
        CHECK(s[k].n == N);
        CHECK_NEAR(s[k].mean_a, r.mean_a, 1e-14);
        CHECK_NEAR(s[k].std_a, r.std_a, 1e-15);
        CHECK_NEAR(s[k].std_b, r.std_b, 1e-15);
        CHECK_NEAR(s[k].pearson, r.pearson, 1e-12);
        CHECK_NEAR(s[k].cosine, r.cosine, 1e-14);
        CHECK_NEAR(s[k].rel_l2_over_a, r.rel_a, 1e-14);
        CHECK_NEAR(s[k].rel_l2_over_b, r.rel_b, 1e-14);
        CHECK_NEAR(s[k].max_abs_diff, r.max_abs, 0);
    }
    /* the single-vector moments agree with the same reference */
    cks_moments m;
    cks_moments_init(&m);
    cks_moments_add_f64(&m, a, 777);
    cks_moments_add_f64(&m, a + 777, N - 777);
    CHECK(m.n == N);
    CHECK_NEAR(cks_moments_std(&m, 1), r.std_a, 1e-15);
    CHECK_NEAR(m.mean, r.mean_a, 1e-14);
    /* ... and so do two halves accumulated apart and merged (Chan et al.'s pairwise update),
     * in either order, with an empty side changing nothing */
    {
        cks_moments lo, hi, empty;
        cks_moments_init(&lo);
        cks_moments_init(&hi);
        cks_moments_init(&empty);
        cks_moments_add_f64(&lo, a, 1001);
        cks_moments_add_f64(&hi, a + 1001, N - 1001);
        cks_moments_merge(&hi, &lo);
        CHECK(hi.n == N);
        CHECK_NEAR(hi.mean, r.mean_a, 1e-14);
        CHECK_NEAR(cks_moments_std(&hi, 1), r.std_a, 1e-14);
        cks_moments_merge(&hi, &empty);
        CHECK(hi.n == N);
        CHECK_NEAR(cks_moments_std(&hi, 1), r.std_a, 1e-14);
        cks_moments_merge(&empty, &hi);
        CHECK(empty.n == N);
        CHECK_NEAR(empty.mean, r.mean_a, 1e-14);
    }
    free(a);
    free(b);
}

/* NaN and inf pairs are counted and left out; the rest matches the reference on finite pairs. */
static void nonfinite_pairs_are_skipped_and_counted(void)
{
    enum { N = 5000 };
    double a[N], b[N];
    for (size_t i = 0; i < N; i++) {
        a[i] = test_normal();
        b[i] = 0.5 * a[i] + test_normal();
    }
    a[10] = NAN;
    a[600] = INFINITY;
    b[600] = NAN;
    b[4999] = -INFINITY;
    b[2000] = NAN;
    cks_pair_acc acc;
    cks_pair_stats s;
    cks_pair_acc_init(&acc);
    cks_pair_acc_add_f64(&acc, a, b, N);
    cks_pair_acc_result(&acc, &s);
    ref_stats r = plain_reference(a, b, N);
    CHECK(s.n == N - 4 && s.skipped_pairs == 4);
    CHECK(s.nonfinite_a.nan_count == 1 && s.nonfinite_a.inf_count == 1);
    CHECK(s.nonfinite_b.nan_count == 2 && s.nonfinite_b.inf_count == 1);
    CHECK(isfinite(s.pearson) && isfinite(s.cosine));
    CHECK_NEAR(s.pearson, r.pearson, 1e-13);
    double rr = 0;
    CHECK(cks_pearson_f64(a, b, N, &rr, NULL) == CKS_ERR_NUMERIC);

    /* raw-bytes path: an F16 inf in the stream is counted too */
    uint16_t ha[4] = {0x3c00, 0x4000, 0x7c00, 0x4200}, hb[4] = {0x3c00, 0x4000, 0x4000, 0x7e00};
    cks_moments m;
    cks_moments_init(&m);
    CHECK(cks_moments_add(&m, CKS_DTYPE_F16, ha, 4, NULL) == CKS_OK);
    CHECK(m.n == 3 && m.skipped.inf_count == 1);
    cks_pair_acc_init(&acc);
    CHECK(cks_pair_acc_add(&acc, CKS_DTYPE_F16, ha, CKS_DTYPE_F16, hb, 4, NULL) == CKS_OK);
    cks_pair_acc_result(&acc, &s);
    CHECK(s.n == 2 && s.skipped_pairs == 2 && s.nonfinite_b.nan_count == 1 && s.nonfinite_a.inf_count == 1);
}

/* BF16 raw bytes (odd length, chunked) against numpy decoding by the shift definition. */
static void bf16_against_numpy(void)
{
    enum { N = 50001 };
    if (!pyref_available())
        SKIP("/usr/bin/python3 with numpy/scipy not available for the reference");
    uint16_t *a = malloc(N * 2), *b = malloc(N * 2);
    for (size_t i = 0; i < N; i++) {
        float x = (float)(0.9 + 0.05 * test_normal());
        float y = (float)(0.5 * x + 0.02 * test_normal());
        uint32_t ux, uy;
        memcpy(&ux, &x, 4);
        memcpy(&uy, &y, 4);
        a[i] = (uint16_t)(ux >> 16);
        b[i] = (uint16_t)(uy >> 16);
    }
    pyref_dir dir = {{0}};
    CHECK(pyref_dir_make(&dir));
    CHECK(pyref_write(&dir, "a.bf16", a, N * 2));
    CHECK(pyref_write(&dir, "b.bf16", b, N * 2));
    CHECK(pyref_run(&dir, "bf16_pair_stats"));
    size_t bytes = 0;
    double *want = pyref_read(&dir, "stats.f64", &bytes);
    CHECK(want && bytes == 12 * sizeof(double));
    cks_pair_acc acc;
    cks_pair_stats s;
    cks_pair_acc_init(&acc);
    CHECK(cks_pair_acc_add(&acc, CKS_DTYPE_BF16, a, CKS_DTYPE_BF16, b, 12345, NULL) == CKS_OK);
    CHECK(cks_pair_acc_add(&acc, CKS_DTYPE_BF16, a + 12345, CKS_DTYPE_BF16, b + 12345, N - 12345, NULL) == CKS_OK);
    cks_pair_acc_result(&acc, &s);
    if (want && bytes == 12 * sizeof(double)) {
        CHECK(s.n == (uint64_t)want[0]);
        CHECK_NEAR(s.mean_a, want[1], 1e-13);
        CHECK_NEAR(s.mean_b, want[2], 1e-13);
        CHECK_NEAR(s.std_a, want[3], 1e-13);
        CHECK_NEAR(s.std_b, want[4], 1e-13);
        CHECK_NEAR(s.cosine, want[5], 1e-13);
        CHECK_NEAR(s.pearson, want[6], 1e-12);
        CHECK_NEAR(s.rel_l2_over_a, want[7], 1e-13);
        CHECK_NEAR(s.rel_l2_over_b, want[8], 1e-13);
        CHECK_NEAR(s.max_abs_diff, want[9], 0);
    }
    free(want);
    free(a);
    free(b);
    pyref_dir_remove(&dir);
}

/*
 * The one-pass SIMD BF16 kernel and the threaded split against the long-double reference:
 * 5M pairs (enough to be split over threads), an odd byte offset, and NaN/inf codes placed
 * mid-block and at a block's first element (the element the kernel shifts by).
 */
static void bf16_fast_path_and_threads(void)
{
    enum { N = 5000003 };
    uint8_t *raw_a = malloc(2 * N + 1), *raw_b = malloc(2 * N + 1);
    double *fa = malloc(N * sizeof *fa), *fb = malloc(N * sizeof *fb);
    for (size_t i = 0; i < N; i++) {
        float x = (float)(1.0 + 0.01 * test_normal());
        float y = (float)(0.9 * x + 0.005 * test_normal());
        uint32_t ux, uy;
        memcpy(&ux, &x, 4);
        memcpy(&uy, &y, 4);
        uint16_t ha = (uint16_t)(ux >> 16), hb = (uint16_t)(uy >> 16);
        if (i == 1234567)
            ha = 0x7fc0; /* NaN */
        if (i == 4000000)
            hb = 0xff80; /* -inf */
        if (i == 8192)
            ha = 0x7f80; /* +inf as the first element of a 4096-block */
        raw_a[1 + 2 * i] = (uint8_t)ha;
        raw_a[2 + 2 * i] = (uint8_t)(ha >> 8);
        raw_b[1 + 2 * i] = (uint8_t)hb;
        raw_b[2 + 2 * i] = (uint8_t)(hb >> 8);
        uint32_t ba = (uint32_t)ha << 16, bb = (uint32_t)hb << 16;
        float va, vb;
        memcpy(&va, &ba, 4);
        memcpy(&vb, &bb, 4);
        fa[i] = va;
        fb[i] = vb;
    }
    ref_stats r = plain_reference(fa, fb, N);
    static const unsigned thread_counts[] = {1, 2, 3, 1, 2};
    static const cks_metrics_isa isas[] = {CKS_ISA_AUTO, CKS_ISA_AUTO, CKS_ISA_AVX512, CKS_ISA_AVX2, CKS_ISA_GENERIC};
    for (size_t t = 0; t < 5; t++) {
        cks_metrics_set_threads(thread_counts[t]);
        cks_metrics_set_isa(isas[t]);
        cks_pair_acc acc;
        cks_pair_stats s;
        cks_pair_acc_init(&acc);
        CHECK(cks_pair_acc_add(&acc, CKS_DTYPE_BF16, raw_a + 1, CKS_DTYPE_BF16, raw_b + 1, N, NULL) == CKS_OK);
        cks_pair_acc_result(&acc, &s);
        CHECK_MSG(s.n == N - 3 && s.skipped_pairs == 3, "threads %u: n %llu skipped %llu", thread_counts[t],
                  (unsigned long long)s.n, (unsigned long long)s.skipped_pairs);
        CHECK(s.nonfinite_a.nan_count == 1 && s.nonfinite_a.inf_count == 1 && s.nonfinite_b.inf_count == 1);
        CHECK_NEAR(s.mean_a, r.mean_a, 1e-13);
        CHECK_NEAR(s.std_a, r.std_a, 1e-13);
        CHECK_NEAR(s.std_b, r.std_b, 1e-13);
        CHECK_NEAR(s.pearson, r.pearson, 1e-11);
        CHECK_NEAR(s.cosine, r.cosine, 1e-13);
        CHECK_NEAR(s.rel_l2_over_a, r.rel_a, 1e-12);
        CHECK_NEAR(s.rel_l2_over_b, r.rel_b, 1e-12);
        CHECK_NEAR(s.max_abs_diff, r.max_abs, 0);
    }
    /* one vector: the moments of the BF16 stream (NaN and inf left out), on every kernel */
    long double sum = 0, ss = 0, kept = 0;
    for (size_t i = 0; i < N; i++)
        if (isfinite(fa[i])) {
            sum += fa[i];
            kept++;
        }
    for (size_t i = 0; i < N; i++)
        if (isfinite(fa[i]))
            ss += (fa[i] - sum / kept) * (fa[i] - sum / kept);
    for (size_t t = 0; t < 3; t++) {
        cks_metrics_set_isa(isas[t + 2]);
        cks_moments m;
        cks_moments_init(&m);
        CHECK(cks_moments_add(&m, CKS_DTYPE_BF16, raw_a + 1, 777, NULL) == CKS_OK);
        CHECK(cks_moments_add(&m, CKS_DTYPE_BF16, raw_a + 1 + 2 * 777, N - 777, NULL) == CKS_OK);
        CHECK(m.n == N - 2 && m.skipped.nan_count == 1 && m.skipped.inf_count == 1);
        CHECK_NEAR(m.mean, (double)(sum / kept), 1e-13);
        CHECK_NEAR(cks_moments_std(&m, 1), (double)sqrtl(ss / (kept - 1)), 1e-13);
    }
    cks_metrics_set_threads(0);
    cks_metrics_set_isa(CKS_ISA_AUTO);
    free(raw_a);
    free(raw_b);
    free(fa);
    free(fb);
}

/* Spearman: a hand-worked case with ties, and scipy.stats.spearmanr on tied random data. */
static void spearman_against_scipy(void)
{
    /* a ranks 1..5 (deviations -2..2); b = {5,6,7,8,7} ranks {1,2,3.5,5,3.5} (deviations
     * -2,-1,.5,2,.5): sum of products 4+1+0+2+1 = 8, sums of squares 10 and 9.5 */
    double a5[5] = {1, 2, 3, 4, 5}, b5[5] = {5, 6, 7, 8, 7}, rho = 0;
    CHECK(cks_spearman_f64(a5, b5, 5, &rho, NULL) == CKS_OK);
    CHECK_NEAR(rho, 8.0 / sqrt(10 * 9.5), 1e-15);
    double constant[5] = {3, 3, 3, 3, 3};
    CHECK(cks_spearman_f64(a5, constant, 5, &rho, NULL) == CKS_ERR_NUMERIC);
    CHECK(cks_spearman_f64(a5, b5, 1, &rho, NULL) == CKS_ERR_INVALID_ARG);
    double with_nan[5] = {1, NAN, 3, 4, 5};
    CHECK(cks_spearman_f64(with_nan, b5, 5, &rho, NULL) == CKS_ERR_NUMERIC);

    if (!pyref_available())
        SKIP("/usr/bin/python3 with numpy/scipy not available for the reference");
    enum { N = 3001 };
    double a[N], b[N];
    for (size_t i = 0; i < N; i++) {
        a[i] = floor(10 * test_uniform()); /* many ties */
        b[i] = a[i] + floor(8 * test_uniform());
    }
    pyref_dir dir = {{0}};
    CHECK(pyref_dir_make(&dir));
    CHECK(pyref_write(&dir, "a.f64", a, sizeof a));
    CHECK(pyref_write(&dir, "b.f64", b, sizeof b));
    CHECK(pyref_run(&dir, "pair_stats"));
    double *want = pyref_read(&dir, "stats.f64", NULL);
    CHECK(cks_spearman_f64(a, b, N, &rho, NULL) == CKS_OK);
    if (want)
        CHECK_NEAR(rho, want[10], 1e-12);
    free(want);
    pyref_dir_remove(&dir);
}

static uint32_t f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static void bitwise_hand_worked(void)
{
    float a[6] = {1.0f, 1.0f, 0.0f, -1.0f, NAN, 3.0f};
    float b[6] = {1.0f, 0, -0.0f, 1.0f, NAN, 3.0f};
    b[1] = nextafterf(1.0f, 2.0f);
    cks_bits_acc acc;
    CHECK(cks_bits_acc_init(&acc, CKS_DTYPE_F32, NULL) == CKS_OK);
    CHECK(cks_bits_acc_add(&acc, a, b, 6, NULL) == CKS_OK);
    /* equal: 1.0, NaN (same bits), 3.0; +0/-0 differ in bits but are 0 ULP apart */
    CHECK(acc.n == 6 && acc.equal == 3 && acc.nan_pairs == 1);
    CHECK(acc.ulp_hist[0] == 3); /* 1==1, +0/-0, 3==3 */
    CHECK(acc.ulp_hist[1] == 1); /* one step */
    /* -1 to +1: 2 * 0x3f800000 steps, which is 2^31 - 2^24: bucket 31 holds [2^30, 2^31) */
    CHECK(acc.ulp_hist[31] == 1);
    CHECK_NEAR(cks_bits_equal_fraction(&acc), 0.5, 0);
    uint64_t dist = 0;
    CHECK(cks_ulp_distance(CKS_DTYPE_F32, f32_bits(-1.0f), f32_bits(1.0f), &dist) && dist == 2ull * 0x3f800000u);
    CHECK(cks_ulp_distance(CKS_DTYPE_I8, 0x80, 0x7f, &dist) && dist == 255);
    CHECK(cks_ulp_distance(CKS_DTYPE_U64, 0, UINT64_MAX, &dist) && dist == UINT64_MAX);
    CHECK(!cks_ulp_distance(CKS_DTYPE_F8_E4M3, 0x7f, 0x00, &dist));
    cks_bits_acc other;
    CHECK(cks_bits_acc_init(&other, CKS_DTYPE_BF16, NULL) == CKS_OK);
    CHECK(cks_bits_acc_merge(&acc, &other, NULL) == CKS_ERR_INVALID_ARG);
    CHECK(cks_bits_acc_init(&other, CKS_DTYPE_F4, NULL) == CKS_ERR_UNSUPPORTED);
}

/* ULP distances for random BF16/F16/F8 pairs against value ranks computed by sorting in Python. */
static void ulp_against_sorted_values(void)
{
    static const struct { cks_dtype dtype; const char *name; unsigned codes; } formats[] = {
        {CKS_DTYPE_BF16, "BF16", 65536}, {CKS_DTYPE_F16, "F16", 65536},
        {CKS_DTYPE_F8_E4M3, "F8_E4M3", 256}, {CKS_DTYPE_F8_E5M2, "F8_E5M2", 256},
        {CKS_DTYPE_F8_E4M3FNUZ, "F8_E4M3FNUZ", 256},
    };
    enum { PAIRS = 2000 };
    if (!pyref_available())
        SKIP("/usr/bin/python3 with numpy/scipy not available for the reference");
    for (size_t f = 0; f < sizeof formats / sizeof formats[0]; f++) {
        uint16_t ca[PAIRS], cb[PAIRS];
        uint8_t na[PAIRS], nb[PAIRS];
        for (size_t i = 0; i < PAIRS; i++) {
            ca[i] = (uint16_t)(test_uniform() * formats[f].codes);
            /* half the pairs are near each other, like a fine-tune */
            cb[i] = i % 2 ? (uint16_t)(test_uniform() * formats[f].codes)
                          : (uint16_t)((ca[i] + (unsigned)(test_uniform() * 5)) % formats[f].codes);
            na[i] = (uint8_t)ca[i];
            nb[i] = (uint8_t)cb[i];
        }
        ca[0] = 0x0000 & (formats[f].codes - 1);
        cb[0] = (uint16_t)(formats[f].codes / 2); /* +0 vs -0 */
        na[0] = (uint8_t)ca[0];
        nb[0] = (uint8_t)cb[0];
        pyref_dir dir = {{0}};
        CHECK(pyref_dir_make(&dir));
        CHECK(pyref_write_text(&dir, "dtype.txt", formats[f].name));
        CHECK(pyref_write(&dir, "a.codes", ca, sizeof ca));
        CHECK(pyref_write(&dir, "b.codes", cb, sizeof cb));
        CHECK(pyref_run(&dir, "ulp"));
        size_t bytes = 0;
        uint64_t *want = pyref_read(&dir, "ulp.u64", &bytes);
        CHECK(want && bytes == sizeof(uint64_t) * PAIRS);
        cks_bits_acc acc, want_acc;
        CHECK(cks_bits_acc_init(&acc, formats[f].dtype, NULL) == CKS_OK);
        CHECK(cks_bits_acc_init(&want_acc, formats[f].dtype, NULL) == CKS_OK);
        const void *pa = formats[f].codes == 256 ? (const void *)na : (const void *)ca;
        const void *pb = formats[f].codes == 256 ? (const void *)nb : (const void *)cb;
        CHECK(cks_bits_acc_add(&acc, pa, pb, PAIRS, NULL) == CKS_OK);
        size_t bad = 0;
        for (size_t i = 0; want && i < PAIRS; i++) {
            uint64_t dist = 0;
            bool ok = cks_ulp_distance(formats[f].dtype, ca[i], cb[i], &dist);
            if (want[i] == UINT64_MAX ? ok : (!ok || dist != want[i]))
                bad++;
            if (want[i] == UINT64_MAX)
                want_acc.nan_pairs++;
            else
                want_acc.ulp_hist[want[i] ? 64 - __builtin_clzll(want[i]) : 0]++;
            want_acc.equal += ca[i] == cb[i];
        }
        CHECK_MSG(bad == 0, "%s: %zu ULP distances differ from the sorted-value reference", formats[f].name, bad);
        CHECK(memcmp(acc.ulp_hist, want_acc.ulp_hist, sizeof acc.ulp_hist) == 0);
        CHECK(acc.nan_pairs == want_acc.nan_pairs && acc.equal == want_acc.equal);
        free(want);
        pyref_dir_remove(&dir);
    }
}

/*
 * The chunked histogram paths (byte tables, 16/32-bit loops) agree with the per-pair
 * definition cks_ulp_distance for every decodable dtype, on random codes that include NaNs
 * and near neighbours, fed in uneven chunks.
 */
static void bits_histogram_matches_pairwise_definition(void)
{
    static const cks_dtype dtypes[] = {CKS_DTYPE_BOOL, CKS_DTYPE_U8, CKS_DTYPE_I8, CKS_DTYPE_F8_E4M3,
                                       CKS_DTYPE_F8_E5M2, CKS_DTYPE_F8_E8M0, CKS_DTYPE_F8_E4M3FNUZ,
                                       CKS_DTYPE_I16, CKS_DTYPE_U16, CKS_DTYPE_F16, CKS_DTYPE_BF16,
                                       CKS_DTYPE_I32, CKS_DTYPE_U32, CKS_DTYPE_F32, CKS_DTYPE_I64,
                                       CKS_DTYPE_U64, CKS_DTYPE_F64};
    enum { N = 3000 };
    static uint8_t a[8 * N], b[8 * N];
    for (size_t t = 0; t < sizeof dtypes / sizeof dtypes[0]; t++) {
        size_t width = cks_decode_elem_size(dtypes[t]);
        for (size_t i = 0; i < N; i++) {
            uint64_t x = (uint64_t)(test_uniform() * 0x1p32) << 32 | (uint64_t)(test_uniform() * 0x1p32);
            uint64_t y = i % 3 == 0 ? x : i % 3 == 1 ? x + (uint64_t)(test_uniform() * 4) : ~x * 7;
            if (i % 97 == 0) /* an all-ones pattern is a NaN in every float format here */
                y = UINT64_MAX;
            for (size_t k = 0; k < width; k++) {
                a[i * width + k] = (uint8_t)(x >> (8 * k));
                b[i * width + k] = (uint8_t)(y >> (8 * k));
            }
        }
        cks_bits_acc acc, want;
        CHECK(cks_bits_acc_init(&acc, dtypes[t], NULL) == CKS_OK);
        CHECK(cks_bits_acc_init(&want, dtypes[t], NULL) == CKS_OK);
        for (size_t start = 0, chunk = 1; start < N; start += chunk, chunk = chunk * 2 + 1) {
            size_t len = chunk < N - start ? chunk : N - start;
            CHECK(cks_bits_acc_add(&acc, a + start * width, b + start * width, len, NULL) == CKS_OK);
        }
        for (size_t i = 0; i < N; i++) {
            uint64_t x = 0, y = 0, distance = 0;
            for (size_t k = 0; k < width; k++) {
                x |= (uint64_t)a[i * width + k] << (8 * k);
                y |= (uint64_t)b[i * width + k] << (8 * k);
            }
            want.equal += x == y;
            if (cks_ulp_distance(dtypes[t], x, y, &distance))
                want.ulp_hist[distance ? 64 - __builtin_clzll(distance) : 0]++;
            else
                want.nan_pairs++;
        }
        CHECK_MSG(acc.n == N && acc.equal == want.equal && acc.nan_pairs == want.nan_pairs &&
                      memcmp(acc.ulp_hist, want.ulp_hist, sizeof acc.ulp_hist) == 0,
                  "%s: histogram differs from the pairwise definition", cks_dtype_name(dtypes[t]));
    }
}

static void raw_input_errors(void)
{
    cks_pair_acc acc;
    uint8_t byte = 0;
    cks_pair_acc_init(&acc);
    CHECK(cks_pair_acc_add(&acc, CKS_DTYPE_F4, &byte, CKS_DTYPE_F32, &byte, 1, NULL) == CKS_ERR_UNSUPPORTED);
    CHECK(cks_pair_acc_add(&acc, CKS_DTYPE_F32, NULL, CKS_DTYPE_F32, &byte, 1, NULL) == CKS_ERR_INVALID_ARG);
    cks_moments m;
    cks_moments_init(&m);
    CHECK(cks_moments_add(&m, CKS_DTYPE_C64, &byte, 1, NULL) == CKS_ERR_UNSUPPORTED);
    CHECK(isnan(cks_moments_std(&m, 1)));
}

TEST_MAIN(T(hand_worked_pairs), T(undefined_statistics_are_flagged), T(streaming_matches_plain_reference),
          T(nonfinite_pairs_are_skipped_and_counted), T(bf16_against_numpy), T(bf16_fast_path_and_threads), T(spearman_against_scipy),
          T(bitwise_hand_worked), T(ulp_against_sorted_values),
          T(bits_histogram_matches_pairwise_definition), T(raw_input_errors))
