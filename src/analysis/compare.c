/*
 * compare: the test family T1-T4, controls, power checks and the verdict
 * (research/fingerprinting.md §3, §5, §7). See include/ckptscope/compare.h.
 *
 * This file holds the run over one pair and the orchestration (controls, power checks, the
 * result), at the top of the compare files. Below it, without a cycle: the tests one family
 * per file (compare_t4.c on compare_t3.c on compare_t1_t2.c, which also pairs the layers;
 * compare_generic.c, compare_lora.c), the power checks' synthetic positives (compare_synth.c),
 * the descriptive numbers (compare_describe.c), the verdict (compare_verdict.c) and, at the
 * bottom, the family's bookkeeping (compare_family.c).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ckptscope/blas.h"
#include "ckptscope/cka.h"
#include "ckptscope/defaults.h"
#include "ckptscope/lap.h"
#include "ckptscope/layers.h"
#include "ckptscope/metrics.h"
#include "ckptscope/stats.h"
#include "compare_internal.h"

#define DEFAULT_BUDGET CKS_DEFAULT_BUDGET_BYTES
#define DEFAULT_SEED CKS_DEFAULT_SEED
#define DEFAULT_ALPHA 1e-3
#define DEFAULT_PERMUTATIONS 9999u

/* ---- the family on one pair ---- */

cks_err cmp_run_family(const cmp_ctx *ctx, const cmp_model *a, const cmp_model *b, const cmp_embed_pair *emb,
                       bool with_t1, cmp_family *f, cks_diag *diag)
{
    cks_err err = CKS_OK;
    unsigned tests = ctx->tests_override ? ctx->tests_override
                     : ctx->opts && ctx->opts->tests ? ctx->opts->tests
                                                     : CKS_TEST_ALL;

    memset(f, 0, sizeof *f);
    if (with_t1 && (tests & CKS_TEST_T1))
        err = cmp_test_identity(ctx, a, b, f, diag);
    /* LoRA adapters, whatever the architecture: their updates, module by module */
    if (!err && with_t1)
        err = cmp_test_adapters(ctx, a, b, f, diag);
    if (err)
        goto out;
    if (!a->known_arch || !b->known_arch || a->n_layers <= 0 || b->n_layers <= 0) {
        if (with_t1)
            err = cmp_test_generic(ctx, a, b, f, diag);
        if (with_t1 && !err)
            err = cmp_test_generic_rows(ctx, a, b, f, diag);
        goto out;
    }
    err = cmp_choose_pairing(a, b, f, diag);
    if (!err && (tests & CKS_TEST_T2))
        err = cmp_test_norms(ctx, a, b, f, "T2", "norm gains (Spearman, joint permutation null)", diag);
    if (!err && (tests & CKS_TEST_T3))
        err = cmp_test_weights(ctx, a, b, emb, f, "T3", "index-aligned k/v/router/embedding rows", diag);
    if (!err && (tests & CKS_TEST_T4))
        err = cmp_test_t4(ctx, a, b, emb, f, diag);
out:
    /* a family that failed half-way is of no use to the caller: what it holds goes with it
     * (the callers release a family only after success; found by tests/unit/test_oom.c) */
    if (err)
        cmp_family_release(f);
    return err;
}

/* ---- orchestration ---- */

static void progress(const cmp_ctx *ctx, const char *stage)
{
    if (ctx->opts && ctx->opts->progress)
        ctx->opts->progress(ctx->opts->progress_ctx, stage);
}

/* Power from a synthetic or real positive pair: each test that flags it is powered. */
static void record_power(cmp_family *main, const cmp_family *pos, double alpha, const char *what)
{
    for (size_t i = 0; i < main->n; i++) {
        cks_test_result *t = &main->t[i];
        const cks_test_result *p = NULL;
        for (size_t j = 0; j < pos->n; j++)
            if (strcmp(pos->t[j].id, t->id) == 0)
                p = &pos->t[j];
        if (!p || !p->ran || !t->primary)
            continue;
        if (cmp_flags(p, alpha)) {
            if (t->power != 0) {
                t->power = 1;
                snprintf(t->power_note, sizeof t->power_note, "flags %.150s (statistic %.3g, z %.1f)", what, p->statistic,
                         p->z);
            }
        } else {
            t->power = 0;
            snprintf(t->power_note, sizeof t->power_note, "did not flag %.150s (statistic %.3g, p %.2g)", what,
                     p->statistic, p->p_value);
        }
    }
}

/* Negative controls: a test that flags a control pair is invalid for this run. */
static void record_control(cmp_family *main, const cmp_family *ctl, double alpha, const char *what)
{
    for (size_t i = 0; i < main->n; i++) {
        cks_test_result *t = &main->t[i];
        for (size_t j = 0; j < ctl->n; j++) {
            const cks_test_result *c = &ctl->t[j];
            if (strcmp(c->id, t->id) != 0 || !t->primary)
                continue;
            if (cmp_flags(c, alpha) && t->valid) {
                t->valid = false;
                snprintf(t->invalid_reason, sizeof t->invalid_reason,
                         "invalidated by the negative control %.80s: it flags that independent pair too "
                         "(statistic %.3g, effect %.3g), so it cannot separate derived from independent here",
                         what, c->statistic, c->effect);
            }
        }
    }
}

static cks_err run_pair(const cmp_ctx *ctx, cmp_model *a, cmp_model *b, cmp_family *f, cks_diag *diag)
{
    cks_err err;
    cmp_embed_pair emb;
    memset(&emb, 0, sizeof emb);
    err = cmp_embed_pair_load(ctx, a, b, NULL, &emb, diag);
    if (!err)
        err = cmp_run_family(ctx, a, b, &emb, true, f, diag);
    if (!err)
        cmp_apply_holm(f, ctx->alpha);
    cmp_embed_pair_release(&emb);
    return err;
}

struct load_job {
    const cmp_ctx *ctx;
    const cks_compare_model *m;
    cmp_model *md;
    cks_err err;
    cks_diag diag;
};

static void *load_main(void *arg)
{
    struct load_job *job = arg;
    job->err = cmp_model_load(job->ctx, job->m, job->md, &job->diag);
    return NULL;
}

/*
 * The shared-token rows chosen while A and B load: the tokenizers are parsed and matched on
 * this thread while the loads wait on their first round trips, and each load fetches its side's
 * rows in its last batch. Before, the rows were a round of ~1,000 ranges per model after both
 * loads (about 2 s of a cold default compare of the bench pair over 40 ms). The choice is the
 * one cmp_embed_pair_load would make afterwards (same function, same roles), so the verdicts
 * cannot move. It needs roles of its own: the loads build theirs at the same time.
 */
static void choose_while_loading(const cmp_ctx *ctx, const cks_compare_model *a, const cks_compare_model *b,
                                 cmp_embed_early *early)
{
    cks_diag ignored;
    cmp_model sa, sb;
    memset(&sa, 0, sizeof sa);
    memset(&sb, 0, sizeof sb);
    sa.m = a;
    sb.m = b;
    sa.loader = sb.loader = &cmp_live_loader;
    if (!cmp_reads_embeddings(ctx))
        early->choice.done = true; /* no test reads embedding rows (`--tests T2`): nothing to choose */
    else if (cks_roles_build(a->ckpt, a->config_json, a->config_len, &sa.roles, &ignored) == CKS_OK &&
        cks_roles_build(b->ckpt, b->config_json, b->config_len, &sb.roles, &ignored) == CKS_OK &&
        cmp_embed_choose(ctx, &sa, &sb, &early->choice, &ignored) != CKS_OK)
        memset(&early->choice, 0, sizeof early->choice); /* not done: chosen again, error and all, later */
    cks_roles_free(sa.roles);
    cks_roles_free(sb.roles);
    pthread_mutex_lock(&early->mu);
    early->published = true;
    pthread_cond_broadcast(&early->cv);
    pthread_mutex_unlock(&early->mu);
}

/*
 * A and B loaded side by side: each model's reads wait on its own server round trips and its
 * own decoding (two 100B-class repos over a 40 ms link: the norm reads of B no longer wait for
 * A's to finish and decode). The loaders share nothing writable but the disk cache and the
 * early choice (locked). A's error comes first. When both are read from their checkpoints, the
 * shared-token rows are chosen meanwhile (choose_while_loading) and handed out in *choice.
 */
static cks_err load_pair(const cmp_ctx *ctx, const cks_compare_model *a, const cks_compare_model *b, cmp_model *ma,
                         cmp_model *mb, cmp_embed_choice *choice, cks_diag *diag)
{
    cmp_ctx lctx = *ctx;
    cmp_embed_early early;
    struct load_job ja = {&lctx, a, ma, CKS_OK, {{0}}}, jb = {&lctx, b, mb, CKS_OK, {{0}}};
    pthread_t ta, tb;
    bool threaded = false;

    memset(choice, 0, sizeof *choice);
    memset(&early, 0, sizeof early);
    if (!a->fingerprint && !b->fingerprint && pthread_mutex_init(&early.mu, NULL) == 0) {
        if (pthread_cond_init(&early.cv, NULL) == 0) {
            early.model_a = a;
            early.model_b = b;
            lctx.early = &early;
            if (pthread_create(&ta, NULL, load_main, &ja) == 0) {
                if (pthread_create(&tb, NULL, load_main, &jb) == 0) {
                    choose_while_loading(ctx, a, b, &early);
                    pthread_join(tb, NULL);
                } else {
                    choose_while_loading(ctx, a, b, &early); /* A's load waits for it */
                    load_main(&jb);
                }
                pthread_join(ta, NULL);
                threaded = true;
                *choice = early.choice;
            }
            pthread_cond_destroy(&early.cv);
        }
        pthread_mutex_destroy(&early.mu);
    }
    if (!threaded) {
        lctx.early = NULL;
        cmp_both_sides(load_main, &ja, &jb);
    }
    if (diag && (ja.err || jb.err))
        *diag = ja.err ? ja.diag : jb.diag;
    return ja.err ? ja.err : jb.err;
}

cks_err cks_compare(const cks_compare_model *a, const cks_compare_model *b, const cks_compare_opts *opts,
                    cks_compare_result **out, cks_diag *diag)
{
    cks_err err = CKS_OK;
    cmp_ctx ctx;
    cmp_model ma, mb;
    cmp_embed_pair emb;
    cmp_embed_choice choice;
    cmp_family main_f;
    cks_compare_result *r = NULL;
    int blas_threads;

    *out = NULL;
    memset(&ma, 0, sizeof ma);
    memset(&mb, 0, sizeof mb);
    memset(&emb, 0, sizeof emb);
    memset(&choice, 0, sizeof choice);
    memset(&main_f, 0, sizeof main_f);
    memset(&ctx, 0, sizeof ctx);
    ctx.opts = opts;
    ctx.budget = opts && opts->budget_bytes ? opts->budget_bytes : DEFAULT_BUDGET;
    ctx.seed = opts && opts->seed ? opts->seed : DEFAULT_SEED;
    ctx.alpha = opts && opts->alpha > 0 ? opts->alpha : DEFAULT_ALPHA;
    ctx.permutations = opts && opts->permutations ? opts->permutations : DEFAULT_PERMUTATIONS;
    ctx.t4a_null_mean = ctx.t4a_null_sd = NAN;

    /* OpenBLAS's own threads: most products here are small (a 46 x 48 x 4096 dgemm per
     * permutation, 64 x 64 rotation blocks), and for those its idle workers spin in
     * sched_yield: 9-13 % of a default compare's CPU on 2 cores (issue 15). One thread does
     * the same products for less CPU; restored on the way out for the caller. */
    blas_threads = cks_blas_threads();
    cks_blas_set_threads(1);
    ctx.blas_threads = blas_threads;
    r = calloc(1, sizeof *r);
    if (!r) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        goto out;
    }
    r->seed = ctx.seed;
    progress(&ctx, "reading A and B");
    err = load_pair(&ctx, a, b, &ma, &mb, &choice, diag);
    if (err)
        goto out;
    /* what the loads let go (raw bytes, the sources' copies) sits in their threads' arenas:
     * the embedding rows took the cold bench pair's peak from 244 to 310 MB until it went back */
    cmp_return_freed_memory();
    progress(&ctx, "reading shared-token embeddings");
    err = cmp_embed_pair_load(&ctx, &ma, &mb, &choice, &emb, diag);
    cmp_embed_choice_release(&choice);
    if (err)
        goto out;
    progress(&ctx, "testing A against B");
    err = cmp_run_family(&ctx, &ma, &mb, &emb, true, &main_f, diag);
    if (err)
        goto out;
    /* B's shared-token rows are done with: the power checks read A's, the controls load their
     * own pairs, and the report wants only the counts (33.5 MB at the bench pair's peak) */
    cmp_matrix_free(&emb.b);
    cmp_return_freed_memory();

    /* power: built-in synthetic derivatives of A, then the user's positive controls */
    if (!(opts && opts->no_synthetic_power) && ma.known_arch) {
        cmp_model noisy, permuted;
        cmp_embed_pair e_noisy, e_perm;
        cmp_family fs;
        cmp_ctx pctx = ctx;
        unsigned selected = opts && opts->tests ? opts->tests : CKS_TEST_ALL;
        const cks_test_result *t4a = cmp_family_find(&main_f, "T4a");
        pctx.power_run = true;
        for (size_t i = 0; i < main_f.n && pctx.n_nulls < sizeof pctx.nulls / sizeof pctx.nulls[0]; i++)
            if (main_f.t[i].ran && isfinite(main_f.t[i].null_sd)) {
                snprintf(pctx.nulls[pctx.n_nulls].id, sizeof pctx.nulls[0].id, "%s", main_f.t[i].id);
                pctx.nulls[pctx.n_nulls].mean = main_f.t[i].null_mean;
                pctx.nulls[pctx.n_nulls].sd = main_f.t[i].null_sd;
                pctx.n_nulls++;
            }
        pctx.t4a_null_mean = t4a && t4a->ran ? t4a->null_mean : NAN;
        pctx.t4a_null_sd = t4a && t4a->ran ? t4a->null_sd : NAN;
        memset(&permuted, 0, sizeof permuted);
        memset(&e_perm, 0, sizeof e_perm);
        progress(&ctx, "power check: synthetic derivatives of A");
        err = cmp_synth_noisy(&ma, &emb, ctx.seed + 11, &noisy, &e_noisy);
        pctx.tests_override = selected & (CKS_TEST_T2 | CKS_TEST_T3);
        if (!err && pctx.tests_override)
            err = cmp_run_family(&pctx, &ma, &noisy, &e_noisy, false, &fs, diag);
        if (!err && pctx.tests_override) {
            record_power(&main_f, &fs, ctx.alpha, "a synthetic derivative of A (A plus noise, r about 0.7)");
            cmp_family_release(&fs);
        }
        /* the index-aligned tests are blind to a permutation by design: only T4 is judged on it */
        pctx.tests_override = selected & CKS_TEST_T4;
        {
            /* power matters only for tests that ran on the real pair (cmp_decide): when T4b/T4c
             * did not (T4a not beyond its null), the check runs T4a alone, without the
             * alignment T4b/T4c would read (~3 s of CPU at hidden 4096) */
            const cks_test_result *t4b = cmp_family_find(&main_f, "T4b-norms"),
                                  *t4bw = cmp_family_find(&main_f, "T4b-weights"), *t4c = cmp_family_find(&main_f, "T4c");
            pctx.alignment_only = !((t4b && t4b->ran) || (t4bw && t4bw->ran) || (t4c && t4c->ran));
        }
        if (!err && pctx.tests_override)
            err = cmp_synth_permuted(&noisy, &e_noisy, ctx.seed + 12, !pctx.alignment_only, &permuted, &e_perm);
        /* the noisy copy is not needed any more: free it before the most memory-hungry test */
        cmp_model_release(&noisy);
        e_noisy.a.v = NULL; /* borrowed */
        cmp_embed_pair_release(&e_noisy);
        cmp_return_freed_memory();
        if (!err && pctx.tests_override) {
            err = cmp_run_family(&pctx, &ma, &permuted, &e_perm, false, &fs, diag);
            if (!err) {
                record_power(&main_f, &fs, ctx.alpha,
                             "a synthetic permuted, sign-flipped derivative of A (hidden dimension shuffled)");
                cmp_family_release(&fs);
            }
        }
        cmp_model_release(&permuted);
        e_perm.a.v = NULL; /* borrowed */
        cmp_embed_pair_release(&e_perm);
        if (err)
            goto out;
    }
    for (size_t i = 0; opts && i < opts->n_positives; i++) {
        cmp_model mp;
        cmp_family fp;
        char what[160];
        progress(&ctx, "positive control");
        err = cmp_model_load(&ctx, &opts->positives[i], &mp, diag);
        if (!err)
            err = run_pair(&ctx, &ma, &mp, &fp, diag);
        if (!err) {
            snprintf(what, sizeof what, "the positive control %s", opts->positives[i].label);
            for (size_t k = 0; k < main_f.n; k++)
                main_f.t[k].power = main_f.t[k].power == 1 ? 1 : main_f.t[k].power; /* keep synthetic evidence */
            record_power(&main_f, &fp, ctx.alpha, what);
            cmp_family_release(&fp);
            r->n_positives_run++;
        }
        cmp_model_release(&mp);
        if (err)
            goto out;
    }
    for (size_t i = 0; opts && i < opts->n_controls; i++) {
        cmp_model mc;
        cmp_family fc;
        char what[200];
        progress(&ctx, "negative control");
        err = cmp_model_load(&ctx, &opts->controls[i], &mc, diag);
        for (int side = 0; side < 2 && !err; side++) {
            err = run_pair(&ctx, &mc, side == 0 ? &ma : &mb, &fc, diag);
            if (!err) {
                snprintf(what, sizeof what, "%s against %s", opts->controls[i].label, side == 0 ? "A" : "B");
                record_control(&main_f, &fc, ctx.alpha, what);
                cmp_family_release(&fc);
            }
        }
        cmp_model_release(&mc);
        if (err)
            goto out;
        r->n_controls_run++;
    }
    cmp_apply_holm(&main_f, ctx.alpha);
    cmp_describe(&ma, &mb, &emb, &main_f, r);
    cmp_decide(&ctx, &main_f, &ma, &mb, r);

    /* hand the results over */
    r->n_tests = main_f.n;
    for (size_t i = 0; i < main_f.n; i++) {
        r->tests[i] = main_f.t[i];
        main_f.t[i].items = NULL;
    }
    main_f.n = 0;
    r->hash_matches = main_f.matches;
    r->n_hash_matches = main_f.n_matches;
    main_f.matches = NULL;
    r->tensors_hashed_a = ma.n_raw;
    r->tensors_hashed_b = mb.n_raw;
    r->full_coverage = ma.full_coverage && mb.full_coverage;
    /* bytes of tensor data read per model: everything for a model read whole, else what was sampled */
    r->bytes_a = ma.full_coverage ? ma.bytes_other
                                  : ma.bytes_norms + ma.bytes_weights + ma.bytes_router + ma.bytes_other + emb.bytes / 2;
    r->bytes_b = mb.full_coverage ? mb.bytes_other
                                  : mb.bytes_norms + mb.bytes_weights + mb.bytes_router + mb.bytes_other + emb.bytes / 2;
    {
        size_t krows = 0, kt = 0;
        for (int l = 0; l < ma.n_layers && ma.layers; l++)
            if (ma.layers[l].k.v) {
                krows = ma.layers[l].k.rows;
                kt = ma.layers[l].k_total_rows;
                break;
            }
        snprintf(r->sampling, sizeof r->sampling,
                 "%s; k and v: %zu of %zu rows per layer in blocks of 8 consecutive rows (the same rows in both "
                 "models, chosen from seed %llu); norms and routers read whole; embedding rows of %zu shared tokens",
                 r->full_coverage ? "both checkpoints read whole (within the budget)" : "sampled within the budget",
                 krows, kt, (unsigned long long)ctx.seed, emb.a.rows);
    }
    *out = r;
    r = NULL;
out:
    cmp_family_release(&main_f);
    cmp_embed_choice_release(&choice);
    cmp_embed_pair_release(&emb);
    cmp_model_release(&ma);
    cmp_model_release(&mb);
    cks_compare_result_free(r);
    cks_blas_set_threads(blas_threads);
    return err;
}

void cks_compare_result_free(cks_compare_result *r)
{
    if (!r)
        return;
    for (size_t i = 0; i < r->n_tests; i++)
        free(r->tests[i].items);
    free(r->hash_matches);
    free(r->layer_matrix);
    free(r->layer_matrix_aligned);
    free(r->row_best);
    free(r->row_margin);
    free(r->path_a);
    free(r->path_b);
    free(r->std_curve_a);
    free(r->std_curve_b);
    free(r);
}
