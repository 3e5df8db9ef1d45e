/*
 * Randomness and nulls. xoshiro256** and splitmix64 are implemented from their published
 * definitions (Blackman & Vigna, "Scrambled linear pseudorandom number generators", 2018);
 * bounded integers use Lemire's multiply-and-reject ("Fast random integer generation in an
 * interval", 2019); the equality-fraction variance is derived in the comment of
 * equality_moments().
 */
#include "ckptscope/stats.h"

#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ckptscope/blas.h"
#include "ckptscope/decode.h"

/* ---------------- PRNG ---------------- */

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

void cks_rng_seed(cks_rng *rng, uint64_t seed)
{
    uint64_t x = seed;
    for (int i = 0; i < 4; i++)
        rng->state[i] = splitmix64(&x);
    rng->seed = seed;
}

static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t cks_rng_next(cks_rng *rng)
{
    uint64_t *s = rng->state;
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

double cks_rng_uniform(cks_rng *rng) { return (double)(cks_rng_next(rng) >> 11) * 0x1p-53; }

uint64_t cks_rng_below(cks_rng *rng, uint64_t bound)
{
    if (bound == 0)
        return 0;
    unsigned __int128 product = (unsigned __int128)cks_rng_next(rng) * bound;
    uint64_t low = (uint64_t)product;
    if (low < bound) {
        /* reject the few low words that would make some results more likely */
        uint64_t threshold = (0 - bound) % bound;
        while (low < threshold) {
            product = (unsigned __int128)cks_rng_next(rng) * bound;
            low = (uint64_t)product;
        }
    }
    return (uint64_t)(product >> 64);
}

double cks_rng_normal(cks_rng *rng)
{
    double u, v, s;
    do {
        u = 2.0 * cks_rng_uniform(rng) - 1.0;
        v = 2.0 * cks_rng_uniform(rng) - 1.0;
        s = u * u + v * v;
    } while (s >= 1.0 || s == 0.0);
    /* the second variate is discarded: keeps the generator state simple to reason about */
    return u * sqrt(-2.0 * log(s) / s);
}

void cks_rng_permutation(cks_rng *rng, uint32_t *perm, size_t n)
{
    for (size_t i = 0; i < n; i++)
        perm[i] = (uint32_t)i;
    for (size_t i = n; i > 1; i--) {
        size_t j = (size_t)cks_rng_below(rng, i);
        uint32_t t = perm[i - 1];
        perm[i - 1] = perm[j];
        perm[j] = t;
    }
}

cks_err cks_rng_orthogonal(cks_rng *rng, size_t n, double *q, cks_diag *diag)
{
    cks_err err = CKS_OK;
    double *a = NULL, *v = NULL, *w = NULL, *diag_sign = NULL, *qt = NULL, *dots = NULL;
    if (n == 0 || n > 4096 || !q) {
        err = cks_fail(diag, CKS_ERR_INVALID_ARG, "a random orthogonal matrix needs 1 <= n <= 4096 (got %zu)", n);
        goto out;
    }
    a = malloc(n * n * sizeof *a);
    v = malloc(n * sizeof *v);
    w = malloc(n * sizeof *w);
    diag_sign = malloc(n * sizeof *diag_sign);
    qt = malloc(n * n * sizeof *qt);
    dots = malloc(n * sizeof *dots);
    if (!a || !v || !w || !diag_sign || !qt || !dots) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory for a %zu x %zu rotation", n, n);
        goto out;
    }
    for (size_t i = 0; i < n * n; i++)
        a[i] = cks_rng_normal(rng);
    /* Q starts as the identity and accumulates the reflections: Q = H_0 H_1 ... H_{n-2}. It is
     * kept transposed (qt[j * n + i] = Q[i][j]) so that the update walks rows of qt: every
     * row's dot still sums over j in the same order, so Q is bit for bit what a walk of Q's
     * rows gave, and the loops over i vectorise (a third of the rotation null's time) */
    for (size_t i = 0; i < n * n; i++)
        qt[i] = 0.0;
    for (size_t i = 0; i < n; i++)
        qt[i * n + i] = 1.0;
    for (size_t k = 0; k < n; k++) {
        double norm = 0, alpha, vnorm = 0;
        for (size_t i = k; i < n; i++)
            norm += a[i * n + k] * a[i * n + k];
        norm = sqrt(norm);
        /* R's diagonal entry is -sign(a_kk) * norm: its sign is what Mezzadri's correction removes */
        alpha = a[k * n + k] >= 0 ? -norm : norm;
        diag_sign[k] = alpha >= 0 ? 1.0 : -1.0;
        if (k == n - 1 || norm == 0)
            continue;
        for (size_t i = k; i < n; i++)
            v[i] = a[i * n + k];
        v[k] -= alpha;
        for (size_t i = k; i < n; i++)
            vnorm += v[i] * v[i];
        if (vnorm == 0)
            continue;
        /* A <- (I - 2 v v^T / v^T v) A on columns k.. ; Q <- Q (I - 2 v v^T / v^T v).
         * A is walked row by row with one dot per column (w): the same sums in the same
         * order as a column walk, without its stride of a row (8 rows apart share a cache
         * set at n = 64): T4a draws 128 of these per rotation */
        for (size_t j = k; j < n; j++)
            w[j] = 0;
        for (size_t i = k; i < n; i++)
            for (size_t j = k; j < n; j++)
                w[j] += v[i] * a[i * n + j];
        for (size_t j = k; j < n; j++)
            w[j] *= 2.0 / vnorm;
        for (size_t i = k; i < n; i++)
            for (size_t j = k; j < n; j++)
                a[i * n + j] -= w[j] * v[i];
        for (size_t i = 0; i < n; i++)
            dots[i] = 0;
        for (size_t j = k; j < n; j++)
            for (size_t i = 0; i < n; i++)
                dots[i] += qt[j * n + i] * v[j];
        for (size_t i = 0; i < n; i++)
            dots[i] *= 2.0 / vnorm;
        for (size_t j = k; j < n; j++)
            for (size_t i = 0; i < n; i++)
                qt[j * n + i] -= dots[i] * v[j];
    }
    /* the last diagonal entry of R is a_nn itself (no reflection) */
    diag_sign[n - 1] = a[(n - 1) * n + (n - 1)] >= 0 ? 1.0 : -1.0;
    /* Q diag(sign(R_kk)): the Haar measure (Mezzadri 2007, eq. 5.3) */
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < n; j++)
            q[i * n + j] = qt[j * n + i] * diag_sign[j];
out:
    free(a);
    free(v);
    free(w);
    free(diag_sign);
    free(qt);
    free(dots);
    return err;
}

static size_t block_size(const cks_rotation *rot, size_t b)
{
    size_t start = b * CKS_ROTATION_BLOCK;
    return rot->n - start < CKS_ROTATION_BLOCK ? rot->n - start : CKS_ROTATION_BLOCK;
}

cks_err cks_rotation_draw(cks_rng *rng, size_t n, cks_rotation *out, cks_diag *diag)
{
    cks_err err = CKS_OK;
    double *q = NULL;
    memset(out, 0, sizeof *out);
    if (n == 0 || n > (1u << 24)) {
        err = cks_fail(diag, CKS_ERR_INVALID_ARG, "a random rotation needs 1 <= n <= 2^24 (got %zu)", n);
        goto out;
    }
    out->n = n;
    out->n_blocks = (n + CKS_ROTATION_BLOCK - 1) / CKS_ROTATION_BLOCK;
    /* two rounds mix BLOCK^2 coordinates; a third covers up to BLOCK^3 */
    out->rounds = n <= CKS_ROTATION_BLOCK ? 1 : n <= CKS_ROTATION_BLOCK * CKS_ROTATION_BLOCK ? 2 : 3;
    out->perm = malloc(out->rounds * n * sizeof *out->perm);
    out->blocks = malloc(out->rounds * out->n_blocks * CKS_ROTATION_BLOCK * CKS_ROTATION_BLOCK * sizeof *out->blocks);
    q = malloc(CKS_ROTATION_BLOCK * CKS_ROTATION_BLOCK * sizeof *q);
    if (!out->perm || !out->blocks || !q) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory for a rotation of %zu coordinates", n);
        goto out;
    }
    for (size_t r = 0; r < out->rounds && !err; r++) {
        cks_rng_permutation(rng, out->perm + r * n, n);
        for (size_t b = 0; b < out->n_blocks && !err; b++) {
            size_t m = block_size(out, b);
            float *dst = out->blocks + (r * out->n_blocks + b) * CKS_ROTATION_BLOCK * CKS_ROTATION_BLOCK;
            err = cks_rng_orthogonal(rng, m, q, diag);
            for (size_t i = 0; i < m * m && !err; i++)
                dst[i] = (float)q[i];
        }
    }
out:
    free(q);
    if (err)
        cks_rotation_release(out);
    return err;
}

/* Grow the rotation's scratch to count vectors. */
static cks_err rotation_scratch(cks_rotation *rot, size_t count, cks_diag *diag)
{
    size_t n = rot->n;
    if (count > SIZE_MAX / n / sizeof(float))
        return cks_fail(diag, CKS_ERR_INVALID_ARG, "rotation: %zu vectors of %zu is too many", count, n);
    if (rot->scratch_len < count * n) {
        float *grown = realloc(rot->scratch, count * n * sizeof *grown);
        if (!grown)
            return cks_fail(diag, CKS_ERR_NOMEM, "out of memory rotating %zu vectors", count);
        rot->scratch = grown;
        rot->scratch_len = count * n;
    }
    return CKS_OK;
}

/* Rounds [0, rounds) of the rotation applied to count vectors of x in place. */
static void rotation_rounds(cks_rotation *rot, float *x, size_t count, size_t rounds)
{
    size_t n = rot->n;
    for (size_t r = 0; r < rounds; r++) {
        const uint32_t *perm = rot->perm + r * n;
        /* scratch = x with coordinates permuted */
        for (size_t v = 0; v < count; v++)
            for (size_t i = 0; i < n; i++)
                rot->scratch[v * n + i] = x[v * n + perm[i]];
        /* x[:, block] = scratch[:, block] Q_b^T: one sgemm per block over every vector */
        for (size_t b = 0; b < rot->n_blocks; b++) {
            size_t m = block_size(rot, b), off = b * CKS_ROTATION_BLOCK;
            const float *qb = rot->blocks + (r * rot->n_blocks + b) * CKS_ROTATION_BLOCK * CKS_ROTATION_BLOCK;
            cks_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)count, (int)m, (int)m, 1.0f, rot->scratch + off,
                      (int)n, qb, (int)m, 0.0f, x + off, (int)n);
        }
    }
}

#define NORMS_BATCH 256u

/* Rows are rotated independently: a batch at a time, so the scratch holds NORMS_BATCH rows
 * (4 MiB at n = 4096) instead of a copy of all of them (32 MiB for T4a's 2048 embedding rows,
 * at the peak of a default compare). */
cks_err cks_rotation_apply(cks_rotation *rot, float *x, size_t count, cks_diag *diag)
{
    cks_err err;
    if (count == 0)
        return CKS_OK;
    err = rotation_scratch(rot, count < NORMS_BATCH ? count : NORMS_BATCH, diag);
    for (size_t v0 = 0; v0 < count && !err; v0 += NORMS_BATCH)
        rotation_rounds(rot, x + v0 * rot->n, count - v0 < NORMS_BATCH ? count - v0 : NORMS_BATCH, rot->rounds);
    return err;
}

cks_err cks_rotation_column_norms2(cks_rotation *rot, const float *x, size_t count, double *colsq, cks_diag *diag)
{
    const size_t n = rot->n, B = CKS_ROTATION_BLOCK, last = rot->rounds - 1;
    const uint32_t *perm = rot->perm + last * n;
    float *batch = NULL, *gram = NULL, *qg = NULL;
    cks_err err = CKS_OK;
    for (size_t j = 0; j < n; j++)
        colsq[j] = 0;
    if (count == 0)
        return CKS_OK;
    batch = malloc(NORMS_BATCH * n * sizeof *batch);
    gram = calloc(rot->n_blocks * B * B, sizeof *gram);
    qg = malloc(B * B * sizeof *qg);
    if (!batch || !gram || !qg) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory for the norms of %zu rotated vectors", count);
        goto out;
    }
    err = rotation_scratch(rot, NORMS_BATCH, diag);
    for (size_t v0 = 0; v0 < count && !err; v0 += NORMS_BATCH) {
        size_t rows = count - v0 < NORMS_BATCH ? count - v0 : NORMS_BATCH;
        memcpy(batch, x + v0 * n, rows * n * sizeof *batch);
        rotation_rounds(rot, batch, rows, last);
        /* the last round's permutation, then each block's Gram: gram_b += Z_b^T Z_b */
        for (size_t v = 0; v < rows; v++)
            for (size_t i = 0; i < n; i++)
                rot->scratch[v * n + i] = batch[v * n + perm[i]];
        for (size_t b = 0; b < rot->n_blocks; b++) {
            size_t m = block_size(rot, b), off = b * B;
            cks_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)m, (int)m, (int)rows, 1.0f, rot->scratch + off,
                      (int)n, rot->scratch + off, (int)n, 1.0f, gram + b * B * B, (int)m);
        }
    }
    /* column off + c of block b is Z_b q_c with q_c = row c of Q_b: |.|^2 = q_c^T G_b q_c */
    for (size_t b = 0; b < rot->n_blocks && !err; b++) {
        size_t m = block_size(rot, b), off = b * B;
        const float *qb = rot->blocks + (last * rot->n_blocks + b) * B * B;
        cks_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)m, (int)m, (int)m, 1.0f, qb, (int)m, gram + b * B * B,
                  (int)m, 0.0f, qg, (int)m);
        for (size_t c = 0; c < m; c++) {
            double sum = 0;
            for (size_t k = 0; k < m; k++)
                sum += (double)qg[c * m + k] * qb[c * m + k];
            colsq[off + c] = sum;
        }
    }
out:
    free(batch);
    free(gram);
    free(qg);
    return err;
}

void cks_rotation_release(cks_rotation *rot)
{
    if (!rot)
        return;
    free(rot->perm);
    free(rot->blocks);
    free(rot->scratch);
    memset(rot, 0, sizeof *rot);
}

/* ---------------- permutation tests ---------------- */

static bool at_least_as_extreme(double permuted, double observed, cks_alternative alternative)
{
    double slack = 1e-12 * fabs(observed);
    switch (alternative) {
    case CKS_ALT_LESS: return permuted <= observed + slack;
    case CKS_ALT_TWO_SIDED: return fabs(permuted) >= fabs(observed) - slack;
    default: return permuted >= observed - slack;
    }
}

uint32_t cks_perm_stop_after(double alpha, uint32_t permutations)
{
    double h;
    if (!(alpha > 0 && alpha < 1))
        return 0;
    h = ceil(alpha * ((double)permutations + 1.0));
    /* never before CKS_PERM_MIN_STOP draws as extreme: the null's mean and sd, reported and
     * reused by compare's power checks, then rest on 2 x 32 draws or more (sd within ~9 %) */
    if (h < CKS_PERM_MIN_STOP)
        h = CKS_PERM_MIN_STOP;
    return h >= (double)permutations ? 0 : (uint32_t)h; /* a stop that could never happen */
}

cks_err cks_perm_test(size_t n, cks_perm_statistic statistic, void *ctx, uint64_t seed,
                      uint32_t permutations, cks_alternative alternative, cks_perm_result *out,
                      cks_diag *diag)
{
    return cks_perm_test_curtailed(n, statistic, ctx, seed, permutations, 0, alternative, out, diag);
}

cks_err cks_perm_test_curtailed(size_t n, cks_perm_statistic statistic, void *ctx, uint64_t seed,
                                uint32_t permutations, uint32_t stop_after, cks_alternative alternative,
                                cks_perm_result *out, cks_diag *diag)
{
    void *const one[1] = {ctx};
    return cks_perm_test_curtailed_mt(n, statistic, one, 1, seed, permutations, stop_after, alternative, out, diag);
}

unsigned cks_perm_threads(void)
{
    /* the CPUs this process may run on (a Slurm job's or a container's cpuset, taskset), not
     * every CPU of the machine */
    long cpus = 0;
#ifdef CPU_COUNT
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0)
        cpus = CPU_COUNT(&set);
#endif
    if (cpus < 1)
        cpus = sysconf(_SC_NPROCESSORS_ONLN);
    if (cpus < 1)
        cpus = 1;
    return cpus > CKS_PERM_MAX_THREADS ? CKS_PERM_MAX_THREADS : (unsigned)cpus;
}

/*
 * The draws of a threaded test go in rounds: the caller's thread draws the permutations of a
 * round in the serial order, every evaluator takes its slots (slot s: evaluator s % count),
 * and the caller's thread then judges the slots in order, exactly as the serial loop would.
 * PERM_ROUND slots per evaluator and round keep the hand-over (a wake-up and a wait each
 * round) small against a statistic of ~0.1-1 ms, and the draws evaluated past a stop few.
 */
#define PERM_ROUND 2u

struct perm_pool {
    pthread_mutex_t mu;
    pthread_cond_t go, done;
    uint64_t round;            /* bumped to start a round */
    unsigned pending;          /* helpers still evaluating this round */
    bool quit;
    cks_perm_statistic statistic;
    void *const *ctxs;
    unsigned evaluators;       /* the caller's thread and its helpers */
    size_t n;
    uint32_t *perms;           /* slots x n */
    double *values;
    cks_err *errs;
    cks_diag *diags;
    uint32_t slots;            /* filled this round */
};

struct perm_helper {
    struct perm_pool *pool;
    unsigned index;            /* evaluator index, 1.. */
};

static void perm_evaluate(struct perm_pool *p, unsigned w)
{
    for (uint32_t s = w; s < p->slots; s += p->evaluators)
        p->errs[s] = p->statistic(p->ctxs[w], p->perms + (size_t)s * p->n, p->n, &p->values[s], &p->diags[s]);
}

static void *perm_helper_main(void *arg)
{
    struct perm_helper *h = arg;
    struct perm_pool *p = h->pool;
    uint64_t seen = 0;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (p->round == seen && !p->quit)
            pthread_cond_wait(&p->go, &p->mu);
        if (p->quit)
            break;
        seen = p->round;
        pthread_mutex_unlock(&p->mu);
        perm_evaluate(p, h->index);
        pthread_mutex_lock(&p->mu);
        if (--p->pending == 0)
            pthread_cond_signal(&p->done);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

/* One round: every evaluator takes its slots; back when all are done. */
static void perm_round(struct perm_pool *p)
{
    unsigned helpers = p->evaluators - 1;
    if (helpers) {
        pthread_mutex_lock(&p->mu);
        p->round++;
        p->pending = helpers;
        pthread_cond_broadcast(&p->go);
        pthread_mutex_unlock(&p->mu);
    }
    perm_evaluate(p, 0);
    if (helpers) {
        pthread_mutex_lock(&p->mu);
        while (p->pending)
            pthread_cond_wait(&p->done, &p->mu);
        pthread_mutex_unlock(&p->mu);
    }
}

cks_err cks_perm_test_curtailed_mt(size_t n, cks_perm_statistic statistic, void *const *ctxs, unsigned n_ctx,
                                   uint64_t seed, uint32_t permutations, uint32_t stop_after,
                                   cks_alternative alternative, cks_perm_result *out, cks_diag *diag)
{
    cks_err err = CKS_OK;
    cks_rng rng;
    struct perm_pool pool;
    pthread_t threads[CKS_PERM_MAX_THREADS];
    struct perm_helper helpers[CKS_PERM_MAX_THREADS];
    unsigned started = 0;
    bool sync_ready = false;
    memset(&pool, 0, sizeof pool);
    if (!out) {
        err = cks_fail(diag, CKS_ERR_INVALID_ARG, "permutation test without a result");
        goto out;
    }
    memset(out, 0, sizeof *out);
    if (n == 0 || n > UINT32_MAX || permutations == 0 || statistic == NULL || !ctxs || n_ctx == 0 ||
        (unsigned)alternative > CKS_ALT_TWO_SIDED) {
        err = cks_fail(diag, CKS_ERR_INVALID_ARG,
                       "permutation test needs 1 <= n <= 2^32-1 (got %zu), T >= 1 (got %u) and a statistic",
                       n, permutations);
        goto out;
    }
    if (n_ctx > CKS_PERM_MAX_THREADS)
        n_ctx = CKS_PERM_MAX_THREADS;
    if (n_ctx > permutations)
        n_ctx = permutations;
    uint32_t cap = n_ctx * PERM_ROUND;
    if (cap > permutations)
        cap = permutations;
    pool.statistic = statistic;
    pool.ctxs = ctxs;
    pool.n = n;
    pool.evaluators = 1;
    if (n > SIZE_MAX / sizeof *pool.perms / cap) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "permutations of %zu indices", n);
        goto out;
    }
    pool.perms = malloc((size_t)cap * n * sizeof *pool.perms);
    pool.values = malloc(cap * sizeof *pool.values);
    pool.errs = malloc(cap * sizeof *pool.errs);
    pool.diags = malloc(cap * sizeof *pool.diags);
    if (!pool.perms || !pool.values || !pool.errs || !pool.diags) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "permutations of %zu indices", n);
        goto out;
    }
    double observed;
    if ((err = statistic(ctxs[0], NULL, n, &observed, diag)) != CKS_OK)
        goto out;
    if (n_ctx > 1) {
        if (pthread_mutex_init(&pool.mu, NULL) == 0) {
            if (pthread_cond_init(&pool.go, NULL) == 0) {
                if (pthread_cond_init(&pool.done, NULL) == 0)
                    sync_ready = true;
                else
                    pthread_cond_destroy(&pool.go);
            }
            if (!sync_ready)
                pthread_mutex_destroy(&pool.mu);
        }
        /* helpers that cannot be started are done without: the caller's thread evaluates
         * their share (the result does not depend on how many there are) */
        for (unsigned w = 1; sync_ready && w < n_ctx; w++) {
            helpers[started] = (struct perm_helper){&pool, started + 1};
            if (pthread_create(&threads[started], NULL, perm_helper_main, &helpers[started]) != 0)
                break;
            started++;
        }
        pool.evaluators = started + 1;
    }
    cks_rng_seed(&rng, seed);
    uint32_t extreme = 0, drawn = 0;
    double mean = 0, m2 = 0;
    bool stopped = false;
    uint32_t round_slots = pool.evaluators * PERM_ROUND < cap ? pool.evaluators * PERM_ROUND : cap;
    for (uint32_t t = 0; t < permutations && !stopped && !err;) {
        pool.slots = permutations - t < round_slots ? permutations - t : round_slots;
        for (uint32_t s = 0; s < pool.slots; s++)
            cks_rng_permutation(&rng, pool.perms + (size_t)s * n, n);
        perm_round(&pool);
        for (uint32_t s = 0; s < pool.slots && !stopped; s++, t++) {
            if (pool.errs[s] != CKS_OK) {
                err = pool.errs[s];
                if (diag)
                    *diag = pool.diags[s];
                break;
            }
            double value = pool.values[s];
            extreme += at_least_as_extreme(value, observed, alternative);
            drawn = t + 1;
            double delta = value - mean; /* Welford */
            mean += delta / (double)(t + 1);
            m2 += delta * (value - mean);
            stopped = stop_after > 0 && extreme >= stop_after && drawn < permutations;
        }
    }
    if (err)
        goto out;
    out->observed = observed;
    out->seed = seed;
    out->permutations = drawn;
    out->planned = permutations;
    out->curtailed = stopped;
    out->at_least_as_extreme = extreme;
    out->p_value = stopped ? (double)extreme / (double)drawn : (1.0 + extreme) / (1.0 + drawn);
    out->null_mean = mean;
    out->null_sd = drawn > 1 ? sqrt(m2 / (drawn - 1)) : NAN;
    out->z = cks_zscore(observed, mean, out->null_sd);
    out->alternative = alternative;
out:
    if (started) {
        pthread_mutex_lock(&pool.mu);
        pool.quit = true;
        pthread_cond_broadcast(&pool.go);
        pthread_mutex_unlock(&pool.mu);
        for (unsigned w = 0; w < started; w++)
            pthread_join(threads[w], NULL);
    }
    if (sync_ready) {
        pthread_cond_destroy(&pool.done);
        pthread_cond_destroy(&pool.go);
        pthread_mutex_destroy(&pool.mu);
    }
    if (err != CKS_OK && out)
        memset(out, 0, sizeof *out);
    free(pool.perms);
    free(pool.values);
    free(pool.errs);
    free(pool.diags);
    return err;
}

typedef struct joint_pearson_ctx {
    size_t k;
    /* centred, unit-norm copies, stored coordinate-major (n rows of k): a permutation moves
     * whole rows, so each of its n steps reads two contiguous runs of k instead of k
     * scattered values (3.5 s -> about 1 s for 92 vectors of 4096 and 9,999 permutations) */
    double *za, *zb;
} joint_pearson_ctx;

static cks_err joint_pearson_statistic(void *opaque, const uint32_t *perm, size_t n, double *value,
                                       cks_diag *diag)
{
    const joint_pearson_ctx *ctx = opaque;
    size_t k = ctx->k;
    double acc[4] = {0, 0, 0, 0};
    for (size_t i = 0; i < n; i++) {
        const double *x = ctx->za + i * k, *y = ctx->zb + (perm ? perm[i] : i) * k;
        size_t j = 0;
        for (; j + 4 <= k; j += 4) { /* four sums: independent chains the CPU overlaps */
            acc[0] += x[j] * y[j];
            acc[1] += x[j + 1] * y[j + 1];
            acc[2] += x[j + 2] * y[j + 2];
            acc[3] += x[j + 3] * y[j + 3];
        }
        for (; j < k; j++)
            acc[0] += x[j] * y[j];
    }
    *value = (acc[0] + acc[1] + acc[2] + acc[3]) / (double)k;
    return CKS_OK;
}

/* dst = (src - mean) / |src - mean|, two passes in double. */
static cks_err standardise(const double *src, size_t n, double *dst, size_t which, cks_diag *diag)
{
    double sum = 0, ss = 0;
    cks_err err = CKS_OK;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(src[i])) {
            err = cks_fail(diag, CKS_ERR_NUMERIC, "vector %zu: element %zu is not finite", which, i);
            goto out;
        }
        sum += src[i];
    }
    double mean = sum / (double)n;
    for (size_t i = 0; i < n; i++)
        ss += (src[i] - mean) * (src[i] - mean);
    if (!(ss > 0)) {
        err = cks_fail(diag, CKS_ERR_NUMERIC, "vector %zu is constant: Pearson undefined", which);
        goto out;
    }
    double scale = 1.0 / sqrt(ss);
    for (size_t i = 0; i < n; i++)
        dst[i] = (src[i] - mean) * scale;
out:
    return err;
}

cks_err cks_joint_pearson_perm_test(const double *const *a, const double *const *b, size_t k,
                                    size_t n, uint64_t seed, uint32_t permutations,
                                    cks_alternative alternative, cks_perm_result *out,
                                    cks_diag *diag)
{
    return cks_joint_pearson_perm_test_curtailed(a, b, k, n, seed, permutations, 0, alternative, out, diag);
}

cks_err cks_joint_pearson_perm_test_curtailed(const double *const *a, const double *const *b, size_t k,
                                              size_t n, uint64_t seed, uint32_t permutations,
                                              uint32_t stop_after, cks_alternative alternative,
                                              cks_perm_result *out, cks_diag *diag)
{
    joint_pearson_ctx ctx = {k, NULL, NULL};
    double *row = NULL;
    cks_err err = CKS_OK;
    if (out)
        memset(out, 0, sizeof *out);
    if (!out || k == 0 || n < 2 || !a || !b || k > SIZE_MAX / n / sizeof(double)) {
        err = cks_fail(diag, CKS_ERR_INVALID_ARG, "joint Pearson test needs k >= 1 vectors of n >= 2");
        goto out;
    }
    ctx.za = malloc(k * n * sizeof(double));
    ctx.zb = malloc(k * n * sizeof(double));
    row = malloc(2 * n * sizeof(double));
    if (!ctx.za || !ctx.zb || !row) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "joint Pearson test of %zu x %zu", k, n);
        goto out;
    }
    for (size_t j = 0; j < k; j++) {
        if ((err = standardise(a[j], n, row, j, diag)) != CKS_OK ||
            (err = standardise(b[j], n, row + n, j, diag)) != CKS_OK)
            goto out;
        for (size_t i = 0; i < n; i++) {
            ctx.za[i * k + j] = row[i];
            ctx.zb[i * k + j] = row[n + i];
        }
    }
    {
        /* the statistic only reads ctx: every evaluator shares it */
        void *ctxs[CKS_PERM_MAX_THREADS];
        unsigned threads = cks_perm_threads();
        for (unsigned w = 0; w < threads; w++)
            ctxs[w] = &ctx;
        err = cks_perm_test_curtailed_mt(n, joint_pearson_statistic, ctxs, threads, seed, permutations, stop_after,
                                         alternative, out, diag);
    }
out:
    free(ctx.za);
    free(ctx.zb);
    free(row);
    return err;
}

enum { JOINT_COLUMNS_MAX_N = 16384 };

typedef struct cross_matrix_ctx {
    const double *m; /* n x n */
} cross_matrix_ctx;

static cks_err cross_matrix_statistic(void *opaque, const uint32_t *perm, size_t n, double *value,
                                      cks_diag *diag)
{
    const cross_matrix_ctx *ctx = opaque;
    double total = 0;
    for (size_t i = 0; i < n; i++)
        total += ctx->m[i * n + (perm ? perm[i] : i)];
    *value = total;
    return CKS_OK;
}

cks_err cks_joint_column_pearson_perm_test(const double *const *a, const double *const *b,
                                           const size_t *rows, size_t k, size_t n, uint64_t seed,
                                           uint32_t permutations, cks_alternative alternative,
                                           cks_perm_result *out, cks_diag *diag)
{
    double *cross = NULL, *za = NULL, *zb = NULL;
    cks_err err = CKS_OK;
    if (out)
        memset(out, 0, sizeof *out);
    if (!out || !a || !b || !rows || k == 0 || n < 2 || n > JOINT_COLUMNS_MAX_N) {
        err = cks_fail(diag, CKS_ERR_INVALID_ARG,
                       "joint column test needs k >= 1 matrix pairs with 2 <= n <= %d columns",
                       JOINT_COLUMNS_MAX_N);
        goto out;
    }
    size_t max_rows = 0;
    for (size_t j = 0; j < k; j++) {
        if (rows[j] == 0 || rows[j] > INT32_MAX / n || !a[j] || !b[j]) {
            err = cks_fail(diag, CKS_ERR_INVALID_ARG, "matrix pair %zu: %zu rows of %zu columns", j, rows[j], n);
            goto out;
        }
        max_rows = rows[j] > max_rows ? rows[j] : max_rows;
    }
    cross = calloc(n * n, sizeof *cross);
    za = malloc(max_rows * n * sizeof *za);
    zb = malloc(max_rows * n * sizeof *zb);
    if (!cross || !za || !zb) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "joint column test: %zu x %zu cross matrix", n, n);
        goto out;
    }
    for (size_t j = 0; j < k; j++) {
        size_t len = rows[j] * n;
        if ((err = standardise(a[j], len, za, j, diag)) != CKS_OK ||
            (err = standardise(b[j], len, zb, j, diag)) != CKS_OK)
            goto out;
        /* cross += (1/k) Za^T Zb */
        cks_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (blasint)n, (blasint)n, (blasint)rows[j],
                  1.0 / (double)k, za, (blasint)n, zb, (blasint)n, 1.0, cross, (blasint)n);
    }
    cross_matrix_ctx ctx = {cross};
    err = cks_perm_test(n, cross_matrix_statistic, &ctx, seed, permutations, alternative, out, diag);
out:
    free(cross);
    free(za);
    free(zb);
    return err;
}

/* ---------------- equality null ---------------- */

static int compare_u64(const void *x, const void *y)
{
    uint64_t p = *(const uint64_t *)x, q = *(const uint64_t *)y;
    return (p > q) - (p < q);
}

static uint64_t load_bits(const uint8_t *p, size_t width)
{
    uint64_t v = 0;
    for (size_t k = 0; k < width; k++)
        v |= (uint64_t)p[k] << (8 * k);
    return v;
}

/*
 * X = number of i with a_i == b_pi(i) for a uniform permutation pi. With cA, cB the value
 * counts, S1 = sum cA cB, S2 = sum cA cB^2, S3 = sum cA^2 cB:
 *   E[X]   = sum_i cB(a_i)/n = S1/n
 *   E[X^2] = E[X] + sum_{i != j} P(both match)
 *          = S1/n + (S1^2 - S3 - S2 + S1) / (n (n-1)),
 * because P(a_i = b_pi(i), a_j = b_pi(j)) = cB(a_i) (cB(a_j) - [a_i = a_j]) / (n (n-1)) and
 * summing that over all (i, j) gives S1^2 - S3, from which the i = j terms S2 - S1 go.
 */
static void equality_moments(long double s1, long double s2, long double s3, uint64_t n,
                             cks_equality_null *out)
{
    long double nn = (long double)n;
    long double mean = s1 / nn;
    long double second = mean;
    if (n > 1)
        second += (s1 * s1 - s3 - s2 + s1) / (nn * (nn - 1));
    long double var = second - mean * mean;
    if (var < 0)
        var = 0; /* rounding */
    out->expected_fraction = (double)(mean / nn);
    out->null_sd = (double)(sqrtl(var) / nn);
}

cks_err cks_equality_null_from_counts(const uint64_t *counts_a, const uint64_t *counts_b,
                                      size_t n_values, uint64_t equal, cks_equality_null *out,
                                      cks_diag *diag)
{
    cks_err err = CKS_OK;
    uint64_t n_a = 0, n_b = 0;
    long double s1 = 0, s2 = 0, s3 = 0;
    if (!out || !counts_a || !counts_b || n_values == 0) {
        err = cks_fail(diag, CKS_ERR_INVALID_ARG, "equality null needs two histograms and a result");
        goto out;
    }
    memset(out, 0, sizeof *out);
    for (size_t v = 0; v < n_values; v++) {
        long double ca = counts_a[v], cb = counts_b[v];
        n_a += counts_a[v];
        n_b += counts_b[v];
        out->distinct_a += counts_a[v] > 0;
        out->distinct_b += counts_b[v] > 0;
        s1 += ca * cb;
        s2 += ca * cb * cb;
        s3 += ca * ca * cb;
    }
    if (n_a != n_b || n_a == 0 || equal > n_a) {
        err = cks_fail(diag, CKS_ERR_INVALID_ARG,
                       "equality null: histograms hold %llu and %llu elements, %llu equal",
                       (unsigned long long)n_a, (unsigned long long)n_b, (unsigned long long)equal);
        goto out;
    }
    out->n = n_a;
    out->equal = equal;
    out->observed_fraction = (double)equal / (double)n_a;
    equality_moments(s1, s2, s3, n_a, out);
    out->z = cks_zscore(out->observed_fraction, out->expected_fraction, out->null_sd);
out:
    if (err != CKS_OK && out)
        memset(out, 0, sizeof *out);
    return err;
}

cks_err cks_equality_null_compute(cks_dtype dtype, const void *a, const void *b, size_t n,
                                  cks_equality_null *out, cks_diag *diag)
{
    size_t width = cks_decode_elem_size(dtype);
    uint64_t *sorted_a = NULL, *sorted_b = NULL, *table = NULL;
    const uint8_t *pa = a, *pb = b;
    cks_err err = CKS_OK;
    if (!out) {
        err = cks_fail(diag, CKS_ERR_INVALID_ARG, "equality null without a result");
        goto out;
    }
    memset(out, 0, sizeof *out);
    if (width == 0) {
        err = cks_fail(diag, CKS_ERR_UNSUPPORTED, "equality null of dtype %s", cks_dtype_name(dtype));
        goto out;
    }
    if (n == 0 || !a || !b || n > SIZE_MAX / sizeof(uint64_t)) {
        err = cks_fail(diag, CKS_ERR_INVALID_ARG, "equality null needs two non-empty tensors");
        goto out;
    }
    long double s1 = 0, s2 = 0, s3 = 0;
    uint64_t equal = 0;
    for (size_t i = 0; i < n; i++)
        equal += load_bits(pa + i * width, width) == load_bits(pb + i * width, width);
    if (width <= 2) {
        /* one count table per side: 2 x 65536 counters */
        size_t values = (size_t)1 << (8 * width);
        table = calloc(2 * values, sizeof *table);
        if (!table) {
            err = cks_fail(diag, CKS_ERR_NOMEM, "equality null histogram");
            goto out;
        }
        for (size_t i = 0; i < n; i++) {
            table[load_bits(pa + i * width, width)]++;
            table[values + load_bits(pb + i * width, width)]++;
        }
        err = cks_equality_null_from_counts(table, table + values, values, equal, out, diag);
        goto out;
    } else {
        sorted_a = malloc(n * sizeof *sorted_a);
        sorted_b = malloc(n * sizeof *sorted_b);
        if (!sorted_a || !sorted_b) {
            err = cks_fail(diag, CKS_ERR_NOMEM, "equality null of %zu elements", n);
            goto out;
        }
        for (size_t i = 0; i < n; i++) {
            sorted_a[i] = load_bits(pa + i * width, width);
            sorted_b[i] = load_bits(pb + i * width, width);
        }
        qsort(sorted_a, n, sizeof *sorted_a, compare_u64);
        qsort(sorted_b, n, sizeof *sorted_b, compare_u64);
        /* walk both sorted runs in step */
        size_t i = 0, j = 0;
        while (i < n || j < n) {
            uint64_t value = i < n && (j >= n || sorted_a[i] <= sorted_b[j]) ? sorted_a[i] : sorted_b[j];
            long double ca = 0, cb = 0;
            while (i < n && sorted_a[i] == value) {
                ca++;
                i++;
            }
            while (j < n && sorted_b[j] == value) {
                cb++;
                j++;
            }
            out->distinct_a += ca > 0;
            out->distinct_b += cb > 0;
            s1 += ca * cb;
            s2 += ca * cb * cb;
            s3 += ca * ca * cb;
        }
    }
    out->n = n;
    out->equal = equal;
    out->observed_fraction = (double)equal / (double)n;
    equality_moments(s1, s2, s3, n, out);
    out->z = cks_zscore(out->observed_fraction, out->expected_fraction, out->null_sd);
out:
    free(sorted_a);
    free(sorted_b);
    free(table);
    return err;
}

/* ---------------- helpers ---------------- */

double cks_zscore(double x, double mean, double sd)
{
    if (!(sd > 0) || !isfinite(sd))
        return NAN;
    return (x - mean) / sd;
}

static int compare_double(const void *x, const void *y)
{
    double a = *(const double *)x, b = *(const double *)y;
    return (a > b) - (a < b);
}

/*
 * The k-th smallest of v (0-based), v reordered so that v[k] holds it, everything before it
 * is <= and everything after >= (a quickselect with a median-of-three pivot and a three-way
 * partition, since decoded bf16 weights repeat values a lot): O(n) where sorting was
 * O(n log n) with a callback per comparison (the synthetic power checks take two medians of
 * 65,536 values per matrix: ~6 % of a default compare's CPU). No NaN in v (callers check).
 */
static double select_kth(double *v, size_t n, size_t k)
{
    size_t lo = 0, hi = n; /* the k-th lies in v[lo, hi) */
    while (hi - lo > 1) {
        double a = v[lo], b = v[lo + (hi - lo) / 2], c = v[hi - 1];
        double pivot = a < b ? (b < c ? b : (a < c ? c : a)) : (a < c ? a : (b < c ? c : b));
        size_t lt = lo, i = lo, gt = hi; /* [lo,lt) < pivot, [lt,i) == pivot, [gt,hi) > pivot */
        while (i < gt) {
            double x = v[i];
            if (x < pivot) {
                v[i++] = v[lt];
                v[lt++] = x;
            } else if (x > pivot) {
                v[i] = v[--gt];
                v[gt] = x;
            } else {
                i++;
            }
        }
        if (k < lt)
            hi = lt;
        else if (k >= gt)
            lo = gt;
        else
            return pivot;
    }
    return v[k];
}

/* The smallest of v[from, n): after select_kth(k), the (k+1)-th smallest overall. */
static double min_from(const double *v, size_t from, size_t n)
{
    double m = v[from];
    for (size_t i = from + 1; i < n; i++)
        if (v[i] < m)
            m = v[i];
    return m;
}

static bool any_nan(const double *v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (isnan(v[i]))
            return true;
    return false;
}

/* The k-th and (k+1)-th smallest of v (next: v[k] when k is the last), v reordered: by
 * selection, or by a sort when v holds NaN (which has no place in an order: the sort keeps the
 * answer the callers always had). */
static double order_statistics(double *v, size_t n, size_t k, double *next)
{
    double at;
    if (any_nan(v, n)) {
        qsort(v, n, sizeof *v, compare_double);
        *next = k + 1 < n ? v[k + 1] : v[k];
        return v[k];
    }
    at = select_kth(v, n, k);
    *next = k + 1 < n ? min_from(v, k + 1, n) : at;
    return at;
}

double cks_median_inplace(double *v, size_t n)
{
    double lower, upper;
    if (n == 0)
        return NAN;
    if (n % 2)
        return order_statistics(v, n, n / 2, &upper);
    lower = order_statistics(v, n, n / 2 - 1, &upper);
    return 0.5 * (lower + upper);
}

double cks_quantile_inplace(double *v, size_t n, double q)
{
    double h, at, next;
    size_t lo;
    if (n == 0 || !(q >= 0 && q <= 1))
        return NAN;
    h = q * (double)(n - 1);
    lo = (size_t)h;
    at = order_statistics(v, n, lo, &next);
    return lo + 1 < n ? at + (h - (double)lo) * (next - at) : at;
}

double cks_normal_sf(double z) { return 0.5 * erfc(z / sqrt(2.0)); }

typedef struct indexed_p {
    double p;
    size_t index;
} indexed_p;

static int compare_indexed_p(const void *x, const void *y)
{
    const indexed_p *u = x, *v = y;
    if (u->p != v->p)
        return u->p < v->p ? -1 : 1;
    return (u->index > v->index) - (u->index < v->index);
}

cks_err cks_holm(const double *p, size_t k, double *adjusted, cks_diag *diag)
{
    indexed_p *order = NULL;
    cks_err err = CKS_OK;
    if (k == 0 || !p || !adjusted || k > SIZE_MAX / sizeof *order) {
        err = cks_fail(diag, CKS_ERR_INVALID_ARG, "Holm correction of an empty family");
        goto out;
    }
    for (size_t i = 0; i < k; i++) {
        if (!(p[i] >= 0 && p[i] <= 1)) {
            err = cks_fail(diag, CKS_ERR_INVALID_ARG, "Holm: p-value %zu is %g, not in [0, 1]", i, p[i]);
            goto out;
        }
    }
    order = malloc(k * sizeof *order);
    if (!order) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "Holm correction of %zu p-values", k);
        goto out;
    }
    for (size_t i = 0; i < k; i++)
        order[i] = (indexed_p){p[i], i};
    qsort(order, k, sizeof *order, compare_indexed_p);
    /* adjusted p_(i) = max over j <= i of min(1, (k - j + 1) p_(j)), 1-based ranks */
    double running = 0;
    for (size_t r = 0; r < k; r++) {
        double scaled = fmin(1.0, (double)(k - r) * order[r].p);
        running = fmax(running, scaled);
        adjusted[order[r].index] = running;
    }
out:
    free(order);
    return err;
}
