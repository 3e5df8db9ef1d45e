/*
 * Streaming pair statistics. Generic path: chunks are cut into blocks small enough to stay
 * in L1; each block is decoded to double, its own mean taken, its centred sums formed (two
 * passes over cached data: the textbook two-pass algorithm, stable), and the block is
 * merged into the running totals with the pairwise update of Chan, Golub & LeVeque (1979).
 * Its inner loops use GCC vector types so one source serves SSE2 and, at run time, AVX2.
 * BF16 x BF16 has a one-pass intrinsics kernel (see add_bf16_fast), large chunks are split
 * over threads (add_parallel), and the bitwise statistics have per-width loops.
 */
#include "ckptscope/metrics.h"

#include <immintrin.h>
#include <math.h>
#include <pthread.h>
#include <unistd.h>
#include <stdlib.h>
#include <string.h>

/* 32-byte vectors only ever live inside always-inlined static helpers: no ABI crosses. */
#pragma GCC diagnostic ignored "-Wpsabi"

enum { BLOCK = 512 }; /* two double blocks = 8 KiB: comfortably inside L1 */

typedef double v4d __attribute__((vector_size(32)));
typedef long long v4i __attribute__((vector_size(32)));

static inline __attribute__((always_inline)) v4d load4(const double *p)
{
    v4d v;
    memcpy(&v, p, sizeof v);
    return v;
}

#define HSUM4(v) (((v)[0] + (v)[1]) + ((v)[2] + (v)[3]))

/* ---------------- single vector ---------------- */

void cks_moments_init(cks_moments *m) { memset(m, 0, sizeof *m); }

/* Chan et al.: combine (n, mean, m2) of two disjoint parts. */
static void merge_moments(uint64_t *n, double *mean, double *m2, uint64_t n_b, double mean_b,
                          double m2_b)
{
    if (n_b == 0)
        return;
    if (*n == 0) {
        *n = n_b;
        *mean = mean_b;
        *m2 = m2_b;
        return;
    }
    double total = (double)*n + (double)n_b;
    double delta = mean_b - *mean;
    *mean += delta * ((double)n_b / total);
    *m2 += m2_b + delta * delta * ((double)*n * (double)n_b / total);
    *n += n_b;
}

void cks_moments_merge(cks_moments *into, const cks_moments *other)
{
    merge_moments(&into->n, &into->mean, &into->m2, other->n, other->mean, other->m2);
    into->skipped.nan_count += other->skipped.nan_count;
    into->skipped.inf_count += other->skipped.inf_count;
}

void cks_moments_add_f64(cks_moments *m, const double *x, size_t count)
{
    double finite[BLOCK];
    for (size_t start = 0; start < count; start += BLOCK) {
        size_t len = count - start < BLOCK ? count - start : BLOCK, kept = 0;
        for (size_t i = 0; i < len; i++) {
            double v = x[start + i];
            if (isfinite(v))
                finite[kept++] = v;
            else if (isnan(v))
                m->skipped.nan_count++;
            else
                m->skipped.inf_count++;
        }
        if (kept == 0)
            continue;
        double sum = 0, m2 = 0;
        for (size_t i = 0; i < kept; i++)
            sum += finite[i];
        double mean = sum / (double)kept;
        for (size_t i = 0; i < kept; i++)
            m2 += (finite[i] - mean) * (finite[i] - mean);
        merge_moments(&m->n, &m->mean, &m->m2, kept, mean, m2);
    }
}

static cks_err moments_add_generic(cks_moments *m, cks_dtype dtype, const void *src, size_t count,
                                   cks_diag *diag)
{
    double block[BLOCK];
    size_t elem = cks_decode_elem_size(dtype);
    cks_err err = CKS_OK;
    if (elem == 0) {
        err = cks_fail(diag, CKS_ERR_UNSUPPORTED, "moments of dtype %s", cks_dtype_name(dtype));
        goto out;
    }
    for (size_t start = 0; start < count; start += BLOCK) {
        size_t len = count - start < BLOCK ? count - start : BLOCK;
        err = cks_decode_f64(dtype, (const uint8_t *)src + start * elem, len, block, NULL, diag);
        if (err != CKS_OK)
            goto out;
        cks_moments_add_f64(m, block, len);
    }
out:
    return err;
}

double cks_moments_std(const cks_moments *m, unsigned ddof)
{
    if (m->n <= ddof)
        return NAN;
    return sqrt(m->m2 / (double)(m->n - ddof));
}

/* ---------------- pairs ---------------- */

void cks_pair_acc_init(cks_pair_acc *acc) { memset(acc, 0, sizeof *acc); }

typedef struct block_sums {
    double mean_a, mean_b, m2_a, m2_b, comoment, sumsq_diff, max_abs_diff;
} block_sums;

/*
 * The two-pass kernel over one block of finite pairs. Two accumulators per quantity hide
 * the add latency; the order of operations is fixed, so results do not depend on which
 * instruction set runs it (no FMA contraction under -std=c17).
 */
static inline __attribute__((always_inline)) void pair_block_body(const double *a, const double *b,
                                                                 size_t m, block_sums *s)
{
    v4d sa0 = {0}, sa1 = {0}, sb0 = {0}, sb1 = {0};
    size_t i = 0;
    for (; i + 8 <= m; i += 8) {
        sa0 += load4(a + i);
        sa1 += load4(a + i + 4);
        sb0 += load4(b + i);
        sb1 += load4(b + i + 4);
    }
    double sum_a = HSUM4(sa0 + sa1), sum_b = HSUM4(sb0 + sb1);
    for (; i < m; i++) {
        sum_a += a[i];
        sum_b += b[i];
    }
    double mean_a = sum_a / (double)m, mean_b = sum_b / (double)m;
    v4d ma = {mean_a, mean_a, mean_a, mean_a}, mb = {mean_b, mean_b, mean_b, mean_b};
    v4d aa = {0}, bb = {0}, ab = {0}, dd = {0}, mx = {0};
    const v4i abs_mask = {0x7fffffffffffffffLL, 0x7fffffffffffffffLL, 0x7fffffffffffffffLL,
                          0x7fffffffffffffffLL};
    for (i = 0; i + 4 <= m; i += 4) {
        v4d va = load4(a + i), vb = load4(b + i);
        v4d da = va - ma, db = vb - mb, diff = va - vb;
        aa += da * da;
        bb += db * db;
        ab += da * db;
        dd += diff * diff;
        v4d ad = (v4d)((v4i)diff & abs_mask);
        v4i bigger = ad > mx;
        mx = (v4d)(((v4i)ad & bigger) | ((v4i)mx & ~bigger));
    }
    double m2_a = HSUM4(aa), m2_b = HSUM4(bb), co = HSUM4(ab), sdd = HSUM4(dd);
    double max_abs = fmax(fmax(mx[0], mx[1]), fmax(mx[2], mx[3]));
    for (; i < m; i++) {
        double da = a[i] - mean_a, db = b[i] - mean_b, diff = a[i] - b[i];
        m2_a += da * da;
        m2_b += db * db;
        co += da * db;
        sdd += diff * diff;
        max_abs = fmax(max_abs, fabs(diff));
    }
    s->mean_a = mean_a;
    s->mean_b = mean_b;
    s->m2_a = m2_a;
    s->m2_b = m2_b;
    s->comoment = co;
    s->sumsq_diff = sdd;
    s->max_abs_diff = max_abs;
}

static void pair_block_generic(const double *a, const double *b, size_t m, block_sums *s)
{
    pair_block_body(a, b, m, s);
}

__attribute__((target("avx2"))) static void pair_block_avx2(const double *a, const double *b,
                                                            size_t m, block_sums *s)
{
    pair_block_body(a, b, m, s);
}

typedef void (*pair_block_fn)(const double *, const double *, size_t, block_sums *);

static pair_block_fn choose_pair_block(void)
{
    /* a racy first call stores the same value from every thread: benign */
    static pair_block_fn chosen;
    if (!chosen) {
        __builtin_cpu_init();
        chosen = __builtin_cpu_supports("avx2") ? pair_block_avx2 : pair_block_generic;
    }
    return chosen;
}

static void merge_block(cks_pair_acc *acc, uint64_t m, const block_sums *s)
{
    if (m == 0)
        return;
    if (acc->n == 0) {
        acc->mean_a = s->mean_a;
        acc->mean_b = s->mean_b;
        acc->m2_a = s->m2_a;
        acc->m2_b = s->m2_b;
        acc->comoment = s->comoment;
    } else {
        double total = (double)acc->n + (double)m;
        double delta_a = s->mean_a - acc->mean_a, delta_b = s->mean_b - acc->mean_b;
        double weight = (double)acc->n * (double)m / total;
        acc->mean_a += delta_a * ((double)m / total);
        acc->mean_b += delta_b * ((double)m / total);
        acc->m2_a += s->m2_a + delta_a * delta_a * weight;
        acc->m2_b += s->m2_b + delta_b * delta_b * weight;
        acc->comoment += s->comoment + delta_a * delta_b * weight;
    }
    acc->n += m;
    acc->sumsq_diff += s->sumsq_diff;
    acc->max_abs_diff = fmax(acc->max_abs_diff, s->max_abs_diff);
}

/*
 * One block of decoded pairs: pairs with a non-finite side are counted and squeezed out
 * (in place) before the kernel sees the block.
 */
static void add_decoded_block(cks_pair_acc *acc, double *a, double *b, size_t len,
                              bool may_have_nonfinite)
{
    size_t kept = len;
    if (may_have_nonfinite) {
        kept = 0;
        for (size_t i = 0; i < len; i++) {
            bool fa = isfinite(a[i]), fb = isfinite(b[i]);
            if (fa && fb) {
                a[kept] = a[i];
                b[kept] = b[i];
                kept++;
                continue;
            }
            acc->skipped_pairs++;
            if (!fa)
                isnan(a[i]) ? acc->nonfinite_a.nan_count++ : acc->nonfinite_a.inf_count++;
            if (!fb)
                isnan(b[i]) ? acc->nonfinite_b.nan_count++ : acc->nonfinite_b.inf_count++;
        }
    }
    if (kept == 0)
        return;
    block_sums sums;
    choose_pair_block()(a, b, kept, &sums);
    merge_block(acc, kept, &sums);
}


/*
 * The BF16 x BF16 fast path (the common case: two checkpoints' weights). One pass over the
 * raw bytes per block: decode by shifting, subtract a per-block shift (the block's first
 * values, so the sums of squares stay small and cancellation costs at most a few bits —
 * the "shifted data" algorithm), and accumulate seven double sums with FMA. A block that
 * contains a NaN/inf code is detected from its exponent bits and redone by the generic path,
 * which counts and skips those pairs. Results agree with the generic path to rounding.
 */
enum { FAST_BLOCK = 4096 };

typedef struct shifted_sums {
    double sx, sy, sxx, syy, sxy, sdd, max_abs;
} shifted_sums;

static inline __attribute__((always_inline)) double bf16_value(const uint8_t *p)
{
    uint32_t bits = (uint32_t)(p[0] | (p[1] << 8)) << 16;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

/*
 * A NaN or inf element makes its shifted value, and so the plain sums sx/sy, non-finite
 * (inf - inf is NaN, still non-finite), and finite BF16 values are far too small for the
 * sums of one block to overflow: checking the sums once replaces a per-element test.
 */
static inline __attribute__((always_inline)) bool sums_finite(const shifted_sums *s)
{
    return isfinite(s->sx) && isfinite(s->sy) && isfinite(s->sxx) && isfinite(s->syy);
}

/* scalar tail, shared by both vector kernels */
static inline __attribute__((always_inline)) void bf16_tail(const uint8_t *a, const uint8_t *b, size_t from,
                                                           size_t m, double ka, double kb, shifted_sums *s)
{
    for (size_t i = from; i < m; i++) {
        double va = bf16_value(a + 2 * i), vb = bf16_value(b + 2 * i);
        double x = va - ka, y = vb - kb, d = va - vb;
        s->sx += x;
        s->sy += y;
        s->sxx += x * x;
        s->syy += y * y;
        s->sxy += x * y;
        s->sdd += d * d;
        s->max_abs = fmax(s->max_abs, fabs(d));
    }
}

__attribute__((target("avx512f"))) static bool bf16_block_avx512(const uint8_t *a, const uint8_t *b,
                                                                 size_t m, double ka, double kb,
                                                                 shifted_sums *s)
{
    __m512d sx = _mm512_setzero_pd(), sy = sx, sxx = sx, syy = sx, sxy = sx, sdd = sx, mx = sx;
    __m512d vka = _mm512_set1_pd(ka), vkb = _mm512_set1_pd(kb);
    size_t i = 0;
    for (; i + 16 <= m; i += 16) {
        __m256i ra = _mm256_loadu_si256((const __m256i *)(const void *)(a + 2 * i));
        __m256i rb = _mm256_loadu_si256((const __m256i *)(const void *)(b + 2 * i));
        __m512 fa = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(ra), 16));
        __m512 fb = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(rb), 16));
        __m512d halves_a[2] = {_mm512_cvtps_pd(_mm512_castps512_ps256(fa)),
                               _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(fa), 1)))};
        __m512d halves_b[2] = {_mm512_cvtps_pd(_mm512_castps512_ps256(fb)),
                               _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(fb), 1)))};
        for (int h = 0; h < 2; h++) {
            __m512d x = _mm512_sub_pd(halves_a[h], vka), y = _mm512_sub_pd(halves_b[h], vkb);
            __m512d d = _mm512_sub_pd(halves_a[h], halves_b[h]);
            sx = _mm512_add_pd(sx, x);
            sy = _mm512_add_pd(sy, y);
            sxx = _mm512_fmadd_pd(x, x, sxx);
            syy = _mm512_fmadd_pd(y, y, syy);
            sxy = _mm512_fmadd_pd(x, y, sxy);
            sdd = _mm512_fmadd_pd(d, d, sdd);
            mx = _mm512_max_pd(mx, _mm512_abs_pd(d));
        }
    }
    s->sx = _mm512_reduce_add_pd(sx);
    s->sy = _mm512_reduce_add_pd(sy);
    s->sxx = _mm512_reduce_add_pd(sxx);
    s->syy = _mm512_reduce_add_pd(syy);
    s->sxy = _mm512_reduce_add_pd(sxy);
    s->sdd = _mm512_reduce_add_pd(sdd);
    s->max_abs = _mm512_reduce_max_pd(mx);
    bf16_tail(a, b, i, m, ka, kb, s);
    return sums_finite(s);
}

/* horizontal sum of four doubles, spelled out so it inlines into the AVX2 function */
#define STORE_HSUM256(v, out)                                                                \
    do {                                                                                     \
        double lanes_[4];                                                                    \
        _mm256_storeu_pd(lanes_, (v));                                                       \
        (out) = (lanes_[0] + lanes_[1]) + (lanes_[2] + lanes_[3]);                           \
    } while (0)

__attribute__((target("avx2,fma"))) static bool bf16_block_avx2(const uint8_t *a, const uint8_t *b,
                                                                size_t m, double ka, double kb,
                                                                shifted_sums *s)
{
    __m256d sx = _mm256_setzero_pd(), sy = sx, sxx = sx, syy = sx, sxy = sx, sdd = sx, mx = sx;
    __m256d vka = _mm256_set1_pd(ka), vkb = _mm256_set1_pd(kb);
    __m256d sign = _mm256_set1_pd(-0.0);
    size_t i = 0;
    for (; i + 8 <= m; i += 8) {
        __m128i ra = _mm_loadu_si128((const __m128i *)(const void *)(a + 2 * i));
        __m128i rb = _mm_loadu_si128((const __m128i *)(const void *)(b + 2 * i));
        __m256 fa = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(ra), 16));
        __m256 fb = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(rb), 16));
        __m256d halves_a[2] = {_mm256_cvtps_pd(_mm256_castps256_ps128(fa)), _mm256_cvtps_pd(_mm256_extractf128_ps(fa, 1))};
        __m256d halves_b[2] = {_mm256_cvtps_pd(_mm256_castps256_ps128(fb)), _mm256_cvtps_pd(_mm256_extractf128_ps(fb, 1))};
        for (int h = 0; h < 2; h++) {
            __m256d x = _mm256_sub_pd(halves_a[h], vka), y = _mm256_sub_pd(halves_b[h], vkb);
            __m256d d = _mm256_sub_pd(halves_a[h], halves_b[h]);
            sx = _mm256_add_pd(sx, x);
            sy = _mm256_add_pd(sy, y);
            sxx = _mm256_fmadd_pd(x, x, sxx);
            syy = _mm256_fmadd_pd(y, y, syy);
            sxy = _mm256_fmadd_pd(x, y, sxy);
            sdd = _mm256_fmadd_pd(d, d, sdd);
            mx = _mm256_max_pd(mx, _mm256_andnot_pd(sign, d));
        }
    }
    STORE_HSUM256(sx, s->sx);
    STORE_HSUM256(sy, s->sy);
    STORE_HSUM256(sxx, s->sxx);
    STORE_HSUM256(syy, s->syy);
    STORE_HSUM256(sxy, s->sxy);
    STORE_HSUM256(sdd, s->sdd);
    double lanes[4];
    _mm256_storeu_pd(lanes, mx);
    s->max_abs = fmax(fmax(lanes[0], lanes[1]), fmax(lanes[2], lanes[3]));
    bf16_tail(a, b, i, m, ka, kb, s);
    return sums_finite(s);
}

typedef bool (*bf16_block_fn)(const uint8_t *, const uint8_t *, size_t, double, double, shifted_sums *);

static int isa_request = CKS_ISA_AUTO;

void cks_metrics_set_isa(cks_metrics_isa isa)
{
    isa_request = (unsigned)isa <= CKS_ISA_AVX512 ? (int)isa : CKS_ISA_AUTO;
}

/* NULL when the CPU has neither AVX-512F nor AVX2+FMA (or GENERIC was requested). */
static bf16_block_fn choose_bf16_block(void)
{
    static int best = -1; /* racy first call stores the same value everywhere: benign */
    if (best < 0) {
        __builtin_cpu_init();
        best = __builtin_cpu_supports("avx512f") ? CKS_ISA_AVX512
               : (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) ? CKS_ISA_AVX2
                                                                                    : CKS_ISA_GENERIC;
    }
    int use = isa_request == CKS_ISA_AUTO || isa_request > best ? best : isa_request;
    return use == CKS_ISA_AVX512 ? bf16_block_avx512 : use == CKS_ISA_AVX2 ? bf16_block_avx2 : NULL;
}

/* Shifted sums of one block -> centred block moments, then the usual merge. */
static void merge_shifted(cks_pair_acc *acc, size_t m, double ka, double kb, const shifted_sums *s)
{
    double count = (double)m;
    block_sums b;
    b.mean_a = ka + s->sx / count;
    b.mean_b = kb + s->sy / count;
    b.m2_a = fmax(0.0, s->sxx - s->sx * s->sx / count);
    b.m2_b = fmax(0.0, s->syy - s->sy * s->sy / count);
    b.comoment = s->sxy - s->sx * s->sy / count;
    b.sumsq_diff = s->sdd;
    b.max_abs_diff = s->max_abs;
    merge_block(acc, m, &b);
}

static cks_err add_generic(cks_pair_acc *acc, cks_dtype dtype_a, const uint8_t *a, size_t elem_a,
                           cks_dtype dtype_b, const uint8_t *b, size_t elem_b, size_t count,
                           cks_diag *diag);
static cks_err add_serial(cks_pair_acc *acc, cks_dtype dtype_a, const uint8_t *a, size_t elem_a,
                          cks_dtype dtype_b, const uint8_t *b, size_t elem_b, size_t count,
                          cks_diag *diag);
static cks_err add_parallel(cks_pair_acc *acc, cks_dtype dtype_a, const uint8_t *a, size_t elem_a,
                            cks_dtype dtype_b, const uint8_t *b, size_t elem_b, size_t count,
                            unsigned threads, cks_diag *diag);

/* Chunks below this many pairs are not worth a thread start (~4M pairs ~ 2 ms of work). */
enum { PARALLEL_MIN = 1 << 22 };

static unsigned configured_threads; /* 0: one per online CPU */

void cks_metrics_set_threads(unsigned threads)
{
    configured_threads = threads > CKS_METRICS_MAX_THREADS ? CKS_METRICS_MAX_THREADS : threads;
}

static unsigned metrics_threads(void)
{
    if (configured_threads)
        return configured_threads;
    long online = sysconf(_SC_NPROCESSORS_ONLN);
    if (online < 1)
        online = 1;
    return online > CKS_METRICS_MAX_THREADS ? CKS_METRICS_MAX_THREADS : (unsigned)online;
}

static cks_err add_bf16_fast(cks_pair_acc *acc, bf16_block_fn kernel, const uint8_t *a,
                             const uint8_t *b, size_t count, cks_diag *diag)
{
    cks_err err = CKS_OK;
    for (size_t start = 0; start < count && err == CKS_OK; start += FAST_BLOCK) {
        size_t len = count - start < FAST_BLOCK ? count - start : FAST_BLOCK;
        const uint8_t *pa = a + 2 * start, *pb = b + 2 * start;
        double ka = bf16_value(pa), kb = bf16_value(pb);
        shifted_sums s;
        if (isfinite(ka) && isfinite(kb) && kernel(pa, pb, len, ka, kb, &s))
            merge_shifted(acc, len, ka, kb, &s);
        else
            err = add_generic(acc, CKS_DTYPE_BF16, pa, 2, CKS_DTYPE_BF16, pb, 2, len, diag);
    }
    return err;
}

void cks_pair_acc_add_f64(cks_pair_acc *acc, const double *a, const double *b, size_t count)
{
    double block_a[BLOCK], block_b[BLOCK];
    for (size_t start = 0; start < count; start += BLOCK) {
        size_t len = count - start < BLOCK ? count - start : BLOCK;
        memcpy(block_a, a + start, len * sizeof(double));
        memcpy(block_b, b + start, len * sizeof(double));
        add_decoded_block(acc, block_a, block_b, len, true);
    }
}

cks_err cks_pair_acc_add(cks_pair_acc *acc, cks_dtype dtype_a, const void *a, cks_dtype dtype_b,
                         const void *b, size_t count, cks_diag *diag)
{
    size_t elem_a = cks_decode_elem_size(dtype_a), elem_b = cks_decode_elem_size(dtype_b);
    cks_err err = CKS_OK;
    if (elem_a == 0 || elem_b == 0) {
        err = cks_fail(diag, CKS_ERR_UNSUPPORTED, "pair statistics of dtypes %s and %s",
                       cks_dtype_name(dtype_a), cks_dtype_name(dtype_b));
        goto out;
    }
    if (count > 0 && (a == NULL || b == NULL)) {
        err = cks_fail(diag, CKS_ERR_INVALID_ARG, "pair statistics with a NULL buffer");
        goto out;
    }
    unsigned threads = metrics_threads();
    if (threads > 1 && count >= PARALLEL_MIN)
        err = add_parallel(acc, dtype_a, a, elem_a, dtype_b, b, elem_b, count, threads, diag);
    else
        err = add_serial(acc, dtype_a, a, elem_a, dtype_b, b, elem_b, count, diag);
out:
    return err;
}

static cks_err add_serial(cks_pair_acc *acc, cks_dtype dtype_a, const uint8_t *a, size_t elem_a,
                          cks_dtype dtype_b, const uint8_t *b, size_t elem_b, size_t count,
                          cks_diag *diag)
{
    bf16_block_fn kernel = dtype_a == CKS_DTYPE_BF16 && dtype_b == CKS_DTYPE_BF16 ? choose_bf16_block() : NULL;
    if (kernel)
        return add_bf16_fast(acc, kernel, a, b, count, diag);
    return add_generic(acc, dtype_a, a, elem_a, dtype_b, b, elem_b, count, diag);
}

typedef struct pair_job {
    cks_pair_acc acc;
    cks_dtype dtype_a, dtype_b;
    const uint8_t *a, *b;
    size_t elem_a, elem_b, count;
    cks_err err;
    cks_diag diag;
} pair_job;

static void *run_pair_job(void *opaque)
{
    pair_job *job = opaque;
    job->err = add_serial(&job->acc, job->dtype_a, job->a, job->elem_a, job->dtype_b, job->b,
                          job->elem_b, job->count, &job->diag);
    return NULL;
}

/*
 * Big chunks are cut into `threads` contiguous parts on FAST_BLOCK boundaries, accumulated
 * in parallel and merged in order: the same thread count always gives the same result.
 * If a thread cannot be started its part runs on the caller's thread.
 */
static cks_err add_parallel(cks_pair_acc *acc, cks_dtype dtype_a, const uint8_t *a, size_t elem_a,
                            cks_dtype dtype_b, const uint8_t *b, size_t elem_b, size_t count,
                            unsigned threads, cks_diag *diag)
{
    pair_job jobs[CKS_METRICS_MAX_THREADS];
    pthread_t ids[CKS_METRICS_MAX_THREADS];
    bool started[CKS_METRICS_MAX_THREADS] = {false};
    size_t blocks = (count + FAST_BLOCK - 1) / FAST_BLOCK, start = 0;
    cks_err err = CKS_OK;
    for (unsigned t = 0; t < threads; t++) {
        size_t my_blocks = blocks / threads + (t < blocks % threads);
        size_t len = my_blocks * FAST_BLOCK;
        if (start + len > count)
            len = count - start;
        pair_job *job = &jobs[t];
        memset(job, 0, sizeof *job);
        cks_pair_acc_init(&job->acc);
        job->dtype_a = dtype_a;
        job->dtype_b = dtype_b;
        job->a = a + start * elem_a;
        job->b = b + start * elem_b;
        job->elem_a = elem_a;
        job->elem_b = elem_b;
        job->count = len;
        start += len;
        started[t] = t > 0 && pthread_create(&ids[t], NULL, run_pair_job, job) == 0;
    }
    for (unsigned t = 0; t < threads; t++) {
        if (started[t])
            pthread_join(ids[t], NULL);
        else
            run_pair_job(&jobs[t]);
    }
    for (unsigned t = 0; t < threads; t++) {
        if (jobs[t].err != CKS_OK && err == CKS_OK) {
            err = jobs[t].err;
            if (diag)
                *diag = jobs[t].diag;
        }
        cks_pair_acc_merge(acc, &jobs[t].acc);
    }
    return err;
}

/*
 * One vector through the pair kernel (the vector paired with itself): the extra sums cost
 * far less than the generic decode-then-two-pass route, and blocks with NaN/inf fall back.
 */
cks_err cks_moments_add(cks_moments *m, cks_dtype dtype, const void *src, size_t count,
                        cks_diag *diag)
{
    bf16_block_fn kernel = dtype == CKS_DTYPE_BF16 ? choose_bf16_block() : NULL;
    const uint8_t *bytes = src;
    cks_err err = CKS_OK;
    if (!kernel || count == 0 || !src) {
        err = moments_add_generic(m, dtype, src, count, diag);
        goto out;
    }
    for (size_t start = 0; start < count; start += FAST_BLOCK) {
        size_t len = count - start < FAST_BLOCK ? count - start : FAST_BLOCK;
        const uint8_t *p = bytes + 2 * start;
        double shift = bf16_value(p);
        shifted_sums s;
        if (isfinite(shift) && kernel(p, p, len, shift, shift, &s)) {
            double block_n = (double)len;
            merge_moments(&m->n, &m->mean, &m->m2, len, shift + s.sx / block_n,
                          fmax(0.0, s.sxx - s.sx * s.sx / block_n));
        } else if ((err = moments_add_generic(m, dtype, p, len, diag)) != CKS_OK) {
            goto out;
        }
    }
out:
    return err;
}

static cks_err add_generic(cks_pair_acc *acc, cks_dtype dtype_a, const uint8_t *a, size_t elem_a,
                           cks_dtype dtype_b, const uint8_t *b, size_t elem_b, size_t count,
                           cks_diag *diag)
{
    double block_a[BLOCK], block_b[BLOCK];
    cks_err err = CKS_OK;
    for (size_t start = 0; start < count; start += BLOCK) {
        size_t len = count - start < BLOCK ? count - start : BLOCK;
        cks_nonfinite tally = {0, 0};
        err = cks_decode_f64(dtype_a, a + start * elem_a, len, block_a, &tally, diag);
        if (err == CKS_OK)
            err = cks_decode_f64(dtype_b, b + start * elem_b, len, block_b, &tally, diag);
        if (err != CKS_OK)
            goto out;
        add_decoded_block(acc, block_a, block_b, len, tally.nan_count + tally.inf_count > 0);
    }
out:
    return err;
}

void cks_pair_acc_merge(cks_pair_acc *into, const cks_pair_acc *other)
{
    block_sums s = {other->mean_a, other->mean_b, other->m2_a, other->m2_b, other->comoment,
                    other->sumsq_diff, other->max_abs_diff};
    merge_block(into, other->n, &s);
    into->skipped_pairs += other->skipped_pairs;
    into->nonfinite_a.nan_count += other->nonfinite_a.nan_count;
    into->nonfinite_a.inf_count += other->nonfinite_a.inf_count;
    into->nonfinite_b.nan_count += other->nonfinite_b.nan_count;
    into->nonfinite_b.inf_count += other->nonfinite_b.inf_count;
}

void cks_pair_acc_result(const cks_pair_acc *acc, cks_pair_stats *out)
{
    double n = (double)acc->n;
    memset(out, 0, sizeof *out);
    out->n = acc->n;
    out->skipped_pairs = acc->skipped_pairs;
    out->nonfinite_a = acc->nonfinite_a;
    out->nonfinite_b = acc->nonfinite_b;
    out->mean_a = acc->n ? acc->mean_a : NAN;
    out->mean_b = acc->n ? acc->mean_b : NAN;
    out->std_a = acc->n > 1 ? sqrt(acc->m2_a / (n - 1)) : NAN;
    out->std_b = acc->n > 1 ? sqrt(acc->m2_b / (n - 1)) : NAN;
    out->max_abs_diff = acc->n ? acc->max_abs_diff : NAN;
    /* raw second moments from the centred ones: all terms of sumsq are non-negative */
    double sumsq_a = acc->m2_a + n * acc->mean_a * acc->mean_a;
    double sumsq_b = acc->m2_b + n * acc->mean_b * acc->mean_b;
    double dot = acc->comoment + n * acc->mean_a * acc->mean_b;
    out->cosine_defined = acc->n > 0 && sumsq_a > 0 && sumsq_b > 0;
    out->cosine = out->cosine_defined ? dot / (sqrt(sumsq_a) * sqrt(sumsq_b)) : NAN;
    out->pearson_defined = acc->n > 1 && acc->m2_a > 0 && acc->m2_b > 0;
    out->pearson = out->pearson_defined ? acc->comoment / (sqrt(acc->m2_a) * sqrt(acc->m2_b)) : NAN;
    /* rounding can push |r| a hair above 1; a correlation never is */
    if (out->pearson_defined)
        out->pearson = fmax(-1.0, fmin(1.0, out->pearson));
    if (out->cosine_defined)
        out->cosine = fmax(-1.0, fmin(1.0, out->cosine));
    out->rel_l2_over_a_defined = acc->n > 0 && sumsq_a > 0;
    out->rel_l2_over_b_defined = acc->n > 0 && sumsq_b > 0;
    out->rel_l2_over_a = out->rel_l2_over_a_defined ? sqrt(acc->sumsq_diff / sumsq_a) : NAN;
    out->rel_l2_over_b = out->rel_l2_over_b_defined ? sqrt(acc->sumsq_diff / sumsq_b) : NAN;
}

cks_err cks_pearson_f64(const double *a, const double *b, size_t n, double *r, cks_diag *diag)
{
    cks_pair_acc acc;
    cks_pair_stats stats;
    cks_err err = CKS_OK;
    if (!r || (n > 0 && (!a || !b))) {
        err = cks_fail(diag, CKS_ERR_INVALID_ARG, "Pearson needs two vectors and a result");
        goto out;
    }
    *r = NAN;
    cks_pair_acc_init(&acc);
    cks_pair_acc_add_f64(&acc, a, b, n);
    cks_pair_acc_result(&acc, &stats);
    if (stats.skipped_pairs > 0) {
        err = cks_fail(diag, CKS_ERR_NUMERIC, "Pearson: %llu of %zu pairs are not finite",
                       (unsigned long long)stats.skipped_pairs, n);
        goto out;
    }
    if (!stats.pearson_defined) {
        err = cks_fail(diag, CKS_ERR_NUMERIC, "Pearson undefined: fewer than 2 values or a constant side");
        goto out;
    }
    *r = stats.pearson;
out:
    return err;
}

/* ---------------- Spearman ---------------- */

typedef struct ranked {
    uint64_t key; /* the value's order as an unsigned integer (see order_key) */
    double value;
    size_t index;
} ranked;

/* An unsigned integer that orders as the finite double does: flip every bit of a negative
 * number, only the sign bit of a positive one. -0.0 is made +0.0 first, since they compare
 * equal and must tie. */
static uint64_t order_key(double x)
{
    uint64_t u;
    if (x == 0.0)
        x = 0.0;
    memcpy(&u, &x, sizeof u);
    return (u & 0x8000000000000000ull) ? ~u : u | 0x8000000000000000ull;
}

/*
 * Sort by value, ties in index order: a stable least-significant-digit radix sort on the
 * order keys, 8 bits a pass, skipping the passes where every key has the same digit (the top
 * bytes of norm gains mostly do). Replaces qsort with a comparison callback, which was ~18 %
 * of a warm T2 audit's CPU (190 vectors of 4,096 ranked per run, more in T4's alignments).
 * tmp holds n more items.
 */
static void sort_ranked(ranked *a, ranked *tmp, size_t n)
{
    size_t count[8][256];
    memset(count, 0, sizeof count);
    for (size_t i = 0; i < n; i++)
        for (int d = 0; d < 8; d++)
            count[d][(a[i].key >> (8 * d)) & 0xff]++;
    for (int d = 0; d < 8; d++) {
        size_t pos = 0;
        bool trivial = false;
        for (int b = 0; b < 256; b++) {
            size_t c = count[d][b];
            if (c == n)
                trivial = true;
            count[d][b] = pos;
            pos += c;
        }
        if (trivial)
            continue;
        for (size_t i = 0; i < n; i++)
            tmp[count[d][(a[i].key >> (8 * d)) & 0xff]++] = a[i];
        memcpy(a, tmp, n * sizeof *a);
    }
}

/* Mid-ranks (1-based; ties share the mean of their positions). scratch holds 2n items. */
static cks_err mid_ranks(const double *x, size_t n, double *rank, ranked *scratch, cks_diag *diag)
{
    cks_err err = CKS_OK;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(x[i])) {
            err = cks_fail(diag, CKS_ERR_NUMERIC, "Spearman: value %zu is not finite", i);
            goto out;
        }
        scratch[i].key = order_key(x[i]);
        scratch[i].value = x[i];
        scratch[i].index = i;
    }
    sort_ranked(scratch, scratch + n, n);
    for (size_t start = 0; start < n;) {
        size_t end = start + 1;
        while (end < n && scratch[end].value == scratch[start].value)
            end++;
        double mean_rank = ((double)start + (double)end + 1.0) / 2.0; /* positions start+1..end */
        for (size_t k = start; k < end; k++)
            rank[scratch[k].index] = mean_rank;
        start = end;
    }
out:
    return err;
}

cks_err cks_spearman_f64(const double *a, const double *b, size_t n, double *rho, cks_diag *diag)
{
    double *rank_a = NULL, *rank_b = NULL;
    ranked *scratch = NULL;
    cks_err err = CKS_OK;
    if (rho)
        *rho = NAN;
    if (!rho || n < 2 || a == NULL || b == NULL) {
        err = cks_fail(diag, CKS_ERR_INVALID_ARG, "Spearman needs two vectors of length >= 2");
        goto out;
    }
    if (n > SIZE_MAX / 2 / sizeof(ranked)) {
        err = cks_fail(diag, CKS_ERR_INVALID_ARG, "Spearman: %zu elements is too many", n);
        goto out;
    }
    rank_a = malloc(n * sizeof *rank_a);
    rank_b = malloc(n * sizeof *rank_b);
    scratch = malloc(2 * n * sizeof *scratch);
    if (!rank_a || !rank_b || !scratch) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "Spearman of %zu elements", n);
        goto out;
    }
    if ((err = mid_ranks(a, n, rank_a, scratch, diag)) != CKS_OK ||
        (err = mid_ranks(b, n, rank_b, scratch, diag)) != CKS_OK)
        goto out;
    err = cks_pearson_f64(rank_a, rank_b, n, rho, diag);
out:
    free(rank_a);
    free(rank_b);
    free(scratch);
    return err;
}

cks_err cks_mid_ranks_f64(const double *x, size_t n, double *rank, cks_diag *diag)
{
    cks_err err = CKS_OK;
    ranked *scratch = NULL;
    if (n > SIZE_MAX / 2 / sizeof(ranked)) {
        err = cks_fail(diag, CKS_ERR_INVALID_ARG, "ranks: %zu elements is too many", n);
        goto out;
    }
    scratch = malloc((n ? 2 * n : 1) * sizeof *scratch);
    if (!scratch) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "ranks of %zu elements", n);
        goto out;
    }
    err = mid_ranks(x, n, rank, scratch, diag);
out:
    free(scratch);
    return err;
}

/* ---------------- bitwise ---------------- */

cks_err cks_bits_acc_init(cks_bits_acc *acc, cks_dtype dtype, cks_diag *diag)
{
    cks_err err = CKS_OK;
    memset(acc, 0, sizeof *acc);
    if (cks_decode_supported(dtype))
        acc->dtype = dtype;
    else
        err = cks_fail(diag, CKS_ERR_UNSUPPORTED, "bitwise comparison of dtype %s", cks_dtype_name(dtype));
    return err;
}

static uint64_t load_bits(const uint8_t *p, size_t width)
{
    uint64_t v = 0;
    for (size_t k = 0; k < width; k++)
        v |= (uint64_t)p[k] << (8 * k);
    return v;
}

static bool bits_are_nan(cks_dtype dtype, uint64_t bits)
{
    switch (dtype) {
    case CKS_DTYPE_F8_E4M3: return isnan(cks_f8_e4m3_to_f32((uint8_t)bits));
    case CKS_DTYPE_F8_E5M2: return isnan(cks_f8_e5m2_to_f32((uint8_t)bits));
    case CKS_DTYPE_F8_E4M3FNUZ: return isnan(cks_f8_e4m3fnuz_to_f32((uint8_t)bits));
    case CKS_DTYPE_F8_E5M2FNUZ: return isnan(cks_f8_e5m2fnuz_to_f32((uint8_t)bits));
    case CKS_DTYPE_F8_E8M0: return bits == 0xff;
    case CKS_DTYPE_F16: return (bits & 0x7c00) == 0x7c00 && (bits & 0x3ff);
    case CKS_DTYPE_BF16: return (bits & 0x7f80) == 0x7f80 && (bits & 0x7f);
    case CKS_DTYPE_F32: return (bits & 0x7f800000u) == 0x7f800000u && (bits & 0x7fffffu);
    case CKS_DTYPE_F64:
        return (bits & 0x7ff0000000000000ull) == 0x7ff0000000000000ull && (bits & 0xfffffffffffffull);
    default: return false;
    }
}

/*
 * Position of an encoding on the number line of its dtype, as a signed 64-bit key whose
 * differences are ULP distances: sign-magnitude floats map to -magnitude / +magnitude;
 * integers are their value (U64 above 2^63 is shifted so the order survives).
 */
static bool ordered_key(cks_dtype dtype, uint64_t bits, __int128 *key)
{
    unsigned width = cks_dtype_bits(dtype);
    if (bits_are_nan(dtype, bits))
        return false;
    switch (dtype) {
    case CKS_DTYPE_F8_E4M3: case CKS_DTYPE_F8_E5M2: case CKS_DTYPE_F8_E4M3FNUZ:
    case CKS_DTYPE_F8_E5M2FNUZ: case CKS_DTYPE_F16: case CKS_DTYPE_BF16: case CKS_DTYPE_F32:
    case CKS_DTYPE_F64: {
        uint64_t sign_bit = 1ull << (width - 1);
        __int128 magnitude = (__int128)(bits & (sign_bit - 1));
        *key = (bits & sign_bit) ? -magnitude : magnitude;
        return true;
    }
    case CKS_DTYPE_BOOL: *key = bits != 0; return true;
    case CKS_DTYPE_I8: *key = (int8_t)bits; return true;
    case CKS_DTYPE_I16: *key = (int16_t)bits; return true;
    case CKS_DTYPE_I32: *key = (int32_t)bits; return true;
    case CKS_DTYPE_I64: *key = (int64_t)bits; return true;
    default: *key = (__int128)bits; return true; /* unsigned types and E8M0 */
    }
}

bool cks_ulp_distance(cks_dtype dtype, uint64_t bits_a, uint64_t bits_b, uint64_t *distance)
{
    __int128 ka, kb;
    if (!ordered_key(dtype, bits_a, &ka) || !ordered_key(dtype, bits_b, &kb))
        return false;
    __int128 d = ka > kb ? ka - kb : kb - ka;
    /* the widest gap (-max to +max of F64, 0 to U64 max) still fits 64 bits */
    *distance = d > (__int128)UINT64_MAX ? UINT64_MAX : (uint64_t)d;
    return true;
}

static unsigned ulp_bucket(uint64_t distance)
{
    return distance == 0 ? 0 : 64u - (unsigned)__builtin_clzll(distance);
}

/* 8-bit dtypes: the key and NaN-ness of all 256 codes, looked up. */
static void bits_add_bytes(cks_bits_acc *acc, const uint8_t *a, const uint8_t *b, size_t count)
{
    int32_t key[256];
    bool nan[256];
    for (unsigned code = 0; code < 256; code++) {
        __int128 k = 0;
        nan[code] = !ordered_key(acc->dtype, code, &k);
        key[code] = (int32_t)k;
    }
    for (size_t i = 0; i < count; i++) {
        acc->equal += a[i] == b[i];
        if (nan[a[i]] || nan[b[i]]) {
            acc->nan_pairs++;
            continue;
        }
        int32_t d = key[a[i]] - key[b[i]];
        acc->ulp_hist[ulp_bucket((uint64_t)(d < 0 ? -d : d))]++;
    }
}

/*
 * 16- and 32-bit dtypes: keys fit int64, so no 128-bit arithmetic, and the element width is
 * a compile-time constant in each loop. Floats are sign-magnitude with an IEEE-style NaN
 * (all-ones exponent, non-zero mantissa). Four interleaved histograms keep consecutive
 * increments of one bucket from waiting on each other.
 */
#define BITS_NARROW_LOOP(WIDTH, KEY_OF)                                                       \
    do {                                                                                      \
        for (size_t i = 0; i < count; i++) {                                                  \
            uint64_t ba = load_bits(a + i * (WIDTH), (WIDTH));                                \
            uint64_t bb = load_bits(b + i * (WIDTH), (WIDTH));                                \
            equal += ba == bb;                                                                \
            if (is_float && (((ba & exponent) == exponent && (ba & mantissa)) ||              \
                             ((bb & exponent) == exponent && (bb & mantissa)))) {             \
                nan_pairs++;                                                                  \
                continue;                                                                     \
            }                                                                                 \
            int64_t d = KEY_OF(ba) - KEY_OF(bb);                                              \
            uint64_t distance = (uint64_t)(d < 0 ? -d : d);                                   \
            hist[i & 3][distance ? 64 - __builtin_clzll(distance) : 0]++;                     \
        }                                                                                     \
    } while (0)

#define FLOAT_KEY(bits) (((bits) & sign) ? -(int64_t)((bits) & ~sign) : (int64_t)(bits))
#define SIGNED16_KEY(bits) ((int64_t)(int16_t)(bits))
#define SIGNED32_KEY(bits) ((int64_t)(int32_t)(bits))
#define UNSIGNED_KEY(bits) ((int64_t)(bits))

static void bits_add_narrow(cks_bits_acc *acc, const uint8_t *a, const uint8_t *b, size_t count,
                            size_t width)
{
    uint64_t sign = 0, exponent = 0, mantissa = 0, equal = 0, nan_pairs = 0;
    uint64_t hist[4][CKS_ULP_BUCKETS];
    bool is_float = true;
    memset(hist, 0, sizeof hist);
    switch (acc->dtype) {
    case CKS_DTYPE_F16: sign = 0x8000; exponent = 0x7c00; mantissa = 0x03ff; break;
    case CKS_DTYPE_BF16: sign = 0x8000; exponent = 0x7f80; mantissa = 0x007f; break;
    case CKS_DTYPE_F32: sign = 0x80000000u; exponent = 0x7f800000u; mantissa = 0x007fffffu; break;
    default: is_float = false; break;
    }
    if (is_float && width == 2)
        BITS_NARROW_LOOP(2, FLOAT_KEY);
    else if (is_float)
        BITS_NARROW_LOOP(4, FLOAT_KEY);
    else if (acc->dtype == CKS_DTYPE_I16)
        BITS_NARROW_LOOP(2, SIGNED16_KEY);
    else if (acc->dtype == CKS_DTYPE_I32)
        BITS_NARROW_LOOP(4, SIGNED32_KEY);
    else if (width == 2)
        BITS_NARROW_LOOP(2, UNSIGNED_KEY);
    else
        BITS_NARROW_LOOP(4, UNSIGNED_KEY);
    acc->equal += equal;
    acc->nan_pairs += nan_pairs;
    for (size_t k = 0; k < CKS_ULP_BUCKETS; k++)
        acc->ulp_hist[k] += hist[0][k] + hist[1][k] + hist[2][k] + hist[3][k];
}

static void bits_add_wide(cks_bits_acc *acc, const uint8_t *a, const uint8_t *b, size_t count,
                          size_t width)
{
    for (size_t i = 0; i < count; i++) {
        uint64_t ba = load_bits(a + i * width, width), bb = load_bits(b + i * width, width);
        uint64_t distance;
        acc->equal += ba == bb;
        if (cks_ulp_distance(acc->dtype, ba, bb, &distance))
            acc->ulp_hist[ulp_bucket(distance)]++;
        else
            acc->nan_pairs++;
    }
}

cks_err cks_bits_acc_add(cks_bits_acc *acc, const void *a, const void *b, size_t count,
                         cks_diag *diag)
{
    size_t width = cks_decode_elem_size(acc->dtype);
    const uint8_t *pa = a, *pb = b;
    cks_err err = CKS_OK;
    if (width == 0) {
        err = cks_fail(diag, CKS_ERR_INVALID_ARG, "bitwise accumulator not initialised");
        goto out;
    }
    if (count > 0 && (a == NULL || b == NULL)) {
        err = cks_fail(diag, CKS_ERR_INVALID_ARG, "bitwise comparison with a NULL buffer");
        goto out;
    }
    if (width == 1)
        bits_add_bytes(acc, pa, pb, count);
    else if (width <= 4)
        bits_add_narrow(acc, pa, pb, count, width);
    else
        bits_add_wide(acc, pa, pb, count, width);
    acc->n += count;
out:
    return err;
}

cks_err cks_bits_acc_merge(cks_bits_acc *into, const cks_bits_acc *other, cks_diag *diag)
{
    cks_err err = CKS_OK;
    if (into->dtype != other->dtype) {
        err = cks_fail(diag, CKS_ERR_INVALID_ARG, "merging bitwise accumulators of %s and %s",
                       cks_dtype_name(into->dtype), cks_dtype_name(other->dtype));
        goto out;
    }
    into->n += other->n;
    into->equal += other->equal;
    into->nan_pairs += other->nan_pairs;
    for (size_t k = 0; k < CKS_ULP_BUCKETS; k++)
        into->ulp_hist[k] += other->ulp_hist[k];
out:
    return err;
}

double cks_bits_equal_fraction(const cks_bits_acc *acc)
{
    return acc->n ? (double)acc->equal / (double)acc->n : NAN;
}
