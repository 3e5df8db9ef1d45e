/*
 * T3's permutation test (cmp_test_weights) against a plain reference written here: every
 * item's winsorised rows, the statistic of each drawn column permutation summed directly in
 * double, the same draws and the same stopping rule. Pairs of independent blocks take the
 * table path (draws computed a chunk at a time); correlated ones the whole cross matrix.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "ckptscope/stats.h"
#include "analysis/compare_internal.h"

#define D 48
#define LAYERS 3
#define ROWS 8

struct side {
    float k[LAYERS][ROWS * D], v[LAYERS][ROWS * D];
};

/* One winsorised item of the reference: clipped values in double, moments, weight. */
struct ref_item {
    double ca[ROWS * D], cb[ROWS * D];
    double ma, mb, sa, sb, r;
};

static void ref_moments(const float *x, size_t n, double *mean, double *sd)
{
    double s = 0, ss = 0;
    for (size_t i = 0; i < n; i++)
        s += x[i];
    *mean = s / (double)n;
    for (size_t i = 0; i < n; i++)
        ss += (x[i] - *mean) * (x[i] - *mean);
    *sd = sqrt(ss / (double)n);
}

static void ref_clip(const float *x, size_t n, double *out)
{
    double mean, sd;
    ref_moments(x, n, &mean, &sd);
    for (size_t i = 0; i < n; i++) {
        double v = x[i];
        v = v > mean + 3 * sd ? mean + 3 * sd : v < mean - 3 * sd ? mean - 3 * sd : v;
        out[i] = (double)(float)v; /* the clipped block is stored as float */
    }
}

static void ref_item_make(struct ref_item *it, const float *a, const float *b)
{
    size_t n = ROWS * D;
    double s = 0;
    ref_clip(a, n, it->ca);
    ref_clip(b, n, it->cb);
    it->ma = it->mb = 0;
    for (size_t i = 0; i < n; i++) {
        it->ma += it->ca[i] / (double)n;
        it->mb += it->cb[i] / (double)n;
    }
    it->sa = it->sb = 0;
    for (size_t i = 0; i < n; i++) {
        it->sa += (it->ca[i] - it->ma) * (it->ca[i] - it->ma);
        it->sb += (it->cb[i] - it->mb) * (it->cb[i] - it->mb);
        s += (it->ca[i] - it->ma) * (it->cb[i] - it->mb);
    }
    it->sa = sqrt(it->sa / (double)n);
    it->sb = sqrt(it->sb / (double)n);
    it->r = s / ((double)n * it->sa * it->sb);
}

/* The mean over items of the Pearson r of A's rows with B's columns permuted (NULL: none). */
static double ref_statistic(const struct ref_item *items, size_t n_items, const uint32_t *perm)
{
    double total = 0;
    for (size_t i = 0; i < n_items; i++) {
        const struct ref_item *it = &items[i];
        double s = 0;
        for (size_t r = 0; r < ROWS; r++)
            for (size_t j = 0; j < D; j++)
                s += it->ca[r * D + j] * it->cb[r * D + (perm ? perm[j] : j)];
        total += (s / (double)(ROWS * D) - it->ma * it->mb) / (it->sa * it->sb);
    }
    return total / (double)n_items;
}

struct ref_result {
    double observed, p;
    uint32_t drawn;
};

static struct ref_result ref_test(const struct ref_item *items, size_t n_items, uint64_t seed, uint32_t permutations,
                                  double alpha)
{
    struct ref_result out = {0};
    uint32_t perm[D], extreme = 0, stop = cks_perm_stop_after(alpha, permutations);
    cks_rng rng;
    bool stopped = false;
    out.observed = ref_statistic(items, n_items, NULL);
    cks_rng_seed(&rng, seed);
    for (uint32_t t = 0; t < permutations && !stopped; t++) {
        cks_rng_permutation(&rng, perm, D);
        extreme += ref_statistic(items, n_items, perm) >= out.observed - 1e-12 * fabs(out.observed);
        out.drawn = t + 1;
        stopped = stop > 0 && extreme >= stop && out.drawn < permutations;
    }
    out.p = stopped ? (double)extreme / out.drawn : (1.0 + extreme) / (1.0 + out.drawn);
    return out;
}

static float gaussian(cks_rng *rng)
{
    return (float)cks_rng_normal(rng);
}

/* B = mix * A + noise: mix 0 makes independent blocks */
static void make_pair(struct side *a, struct side *b, uint64_t seed, double mix)
{
    cks_rng rng;
    cks_rng_seed(&rng, seed);
    for (int l = 0; l < LAYERS; l++)
        for (size_t i = 0; i < ROWS * D; i++) {
            a->k[l][i] = gaussian(&rng);
            a->v[l][i] = gaussian(&rng);
            b->k[l][i] = (float)(mix * a->k[l][i]) + gaussian(&rng);
            b->v[l][i] = (float)(mix * a->v[l][i]) + gaussian(&rng);
        }
    /* one outlier column, as real k/v blocks have: the winsorising must bite */
    a->k[0][3] = 40.0f;
    b->v[1][D + 5] = -35.0f;
}

static void model_of(struct side *s, cmp_layer *layers, cmp_model *m)
{
    memset(m, 0, sizeof *m);
    memset(layers, 0, LAYERS * sizeof *layers);
    for (int l = 0; l < LAYERS; l++) {
        layers[l].k = (cmp_matrix){s->k[l], ROWS, D};
        layers[l].v = (cmp_matrix){s->v[l], ROWS, D};
        layers[l].k_total_rows = layers[l].v_total_rows = 4 * ROWS;
    }
    m->hidden = D;
    m->n_layers = LAYERS;
    m->layers = layers;
    m->known_arch = true;
}

/* T3 of one pair by the code and by the reference; how many draws the code's test took. */
static uint32_t check_pair(uint64_t seed, double mix)
{
    static struct side a, b;
    cmp_layer la[LAYERS], lb[LAYERS];
    cmp_model ma, mb;
    cmp_family f;
    cmp_ctx ctx;
    cks_diag diag;
    struct ref_item items[2 * LAYERS];
    make_pair(&a, &b, seed, mix);
    model_of(&a, la, &ma);
    model_of(&b, lb, &mb);
    memset(&f, 0, sizeof f);
    f.n_pairs = LAYERS;
    for (int l = 0; l < LAYERS; l++)
        f.pairs[l] = (cks_layer_pair){l, l};
    memset(&ctx, 0, sizeof ctx);
    ctx.seed = seed * 7 + 1;
    ctx.alpha = 1e-3;
    ctx.permutations = 9999;
    ctx.blas_threads = 1;
    ctx.t4a_null_mean = ctx.t4a_null_sd = NAN;
    CHECK(cmp_test_weights(&ctx, &ma, &mb, NULL, &f, "T3", "index-aligned weights", &diag) == CKS_OK);
    const cks_test_result *t = cmp_family_find(&f, "T3");
    CHECK(t && t->ran);
    for (int l = 0; l < LAYERS; l++) {
        ref_item_make(&items[2 * l], a.k[l], b.k[l]);
        ref_item_make(&items[2 * l + 1], a.v[l], b.v[l]);
    }
    /* the code's test draws with seed + 1 (its null is its own, not T2's) */
    struct ref_result ref = ref_test(items, 2 * LAYERS, ctx.seed + 1, ctx.permutations, ctx.alpha);
    uint32_t drawn = t ? t->permutations : 0;
    if (t) {
        CHECK_MSG(fabs(t->statistic - ref.observed) <= 1e-5 * fabs(ref.observed) + 1e-7,
                  "seed %llu: statistic %.9g, reference %.9g", (unsigned long long)seed, t->statistic, ref.observed);
        CHECK_MSG(t->permutations == ref.drawn, "seed %llu: %u draws, reference %u", (unsigned long long)seed,
                  t->permutations, ref.drawn);
        CHECK_MSG(fabs(t->p_value - ref.p) <= 1e-12, "seed %llu: p %.6g, reference %.6g", (unsigned long long)seed,
                  t->p_value, ref.p);
    }
    cmp_family_release(&f);
    return drawn;
}

static void independent_pairs_match_the_reference(void)
{
    /* p of independent pairs is uniform: across these some tests stop within the first chunk
     * of 128 draws and some need the chunks after it (the table grows by doubling) */
    uint32_t most = 0, least = UINT32_MAX;
    for (uint64_t seed = 1; seed <= 24; seed++) {
        uint32_t drawn = check_pair(seed, 0.0);
        most = drawn > most ? drawn : most;
        least = drawn < least ? drawn : least;
    }
    CHECK_MSG(least <= 128, "no test stopped in the first chunk (fewest draws %u)", least);
    CHECK_MSG(most > 256, "no test needed a third chunk (most draws %u)", most);
}

static void correlated_pairs_match_the_reference(void)
{
    /* a derivative (r near 0.7): the whole cross matrix, all 9,999 draws, p = 1/10,000 */
    CHECK_EQ_INT(check_pair(101, 1.0), 9999);
    /* weakly related (r about 0.04, below the table cut): the table path with a small p, many chunks */
    (void)check_pair(102, 0.04);
}

TEST_MAIN(T(independent_pairs_match_the_reference), T(correlated_pairs_match_the_reference))
