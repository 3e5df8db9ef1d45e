/*
 * compare: the embedding rows of the tokens two models share, matched by normalised string
 * (tokenizer.h). They feed T3 (index-aligned rows) and T4's hidden-dimension alignment.
 *
 * Tokens are taken in blocks of consecutive shared pairs (in A's id order) at seeded random
 * positions, so that A's rows come in runs a range request can cover, and the choice is the
 * same on every run with the same seed.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ckptscope/stats.h"
#include "ckptscope/tokenizer.h"
#include "compare_internal.h"

#define TOKEN_BLOCK 64u
#define MAX_TOKENS 16384u
#define EMBED_FLOAT_CAP (32ull << 20) /* decoded rows per side: part of the 512 MiB peak bound */

/*
 * B's half of the pair's reading, on a second thread while A's runs on the caller's: fetching a
 * few thousand embedding rows is independent per model, and over a 40 ms link the rows of B no
 * longer wait for A's.
 */
struct side_job {
    cmp_model *m;
    const uint32_t *rows;
    size_t n;
    cmp_matrix *out;
    uint64_t bytes;
    cks_err err;
    cks_diag diag;
};

static void *rows_side(void *arg)
{
    struct side_job *j = arg;
    j->err = cmp_load_role_rows(j->m, CKS_ROLE_EMBED, j->rows, j->n, j->out, &j->bytes, &j->diag);
    return NULL;
}

void cmp_embed_choice_release(cmp_embed_choice *c)
{
    if (!c)
        return;
    free(c->rows_a);
    free(c->rows_b);
    memset(c, 0, sizeof *c);
}

bool cmp_reads_embeddings(const cmp_ctx *ctx)
{
    return !ctx->opts || !ctx->opts->tests || (ctx->opts->tests & (CKS_TEST_T3 | CKS_TEST_T4));
}

cks_err cmp_embed_choose(const cmp_ctx *ctx, const cmp_model *a, const cmp_model *b, cmp_embed_choice *out,
                         cks_diag *diag)
{
    cks_err err = CKS_OK;
    cks_vocab *va = NULL, *vb = NULL;
    cks_vocab_match *match = NULL;
    cks_vocab_match_opts mopts = {true};
    size_t ra, ca, ea, rb, cb, eb, usable = 0, want, n = 0;
    cks_token_pair *pairs = NULL;

    memset(out, 0, sizeof *out);
    if (!cmp_reads_embeddings(ctx))
        goto out;
    /* one after the other: a tokenizer.json's parse tree is tens of MB while it lasts, and two
     * at once were the peak of a cold default compare (276 MB against 243 MB) */
    if (cmp_model_vocab(a, &va, out->note, sizeof out->note) != CKS_OK ||
        cmp_model_vocab(b, &vb, out->note, sizeof out->note) != CKS_OK)
        goto out; /* not an error: T4 reports why it could not run */
    out->vocab_a = va->n;
    out->vocab_b = vb->n;
    err = cks_vocab_match_run(va, vb, &mopts, &match, diag);
    if (err)
        goto out;
    out->shared = match->n_shared;
    cmp_role_dims(a, CKS_ROLE_EMBED, &ra, &ca, &ea);
    cmp_role_dims(b, CKS_ROLE_EMBED, &rb, &cb, &eb);
    if (!ra || !rb) {
        snprintf(out->note, sizeof out->note, "%s has no decodable token embedding matrix", !ra ? "A" : "B");
        goto out;
    }
    /* only pairs whose ids fall inside both embedding matrices */
    pairs = malloc((match->n_pairs ? match->n_pairs : 1) * sizeof *pairs);
    if (!pairs) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < match->n_pairs; i++)
        if (match->pairs[i].id_a < ra && match->pairs[i].id_b < rb)
            pairs[usable++] = match->pairs[i];
    want = cmp_budget_embed_tokens(ctx->budget, (uint64_t)ca * ea, (uint64_t)cb * eb);
    if (want > MAX_TOKENS)
        want = MAX_TOKENS;
    {
        size_t widest = ca > cb ? ca : cb;
        size_t cap = (size_t)(EMBED_FLOAT_CAP / ((uint64_t)(widest ? widest : 1) * sizeof(float)));
        if (want > cap)
            want = cap;
    }
    if (want > usable)
        want = usable;
    out->rows_a = malloc((want ? want : 1) * sizeof *out->rows_a);
    out->rows_b = malloc((want ? want : 1) * sizeof *out->rows_b);
    if (!out->rows_a || !out->rows_b) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        goto out;
    }
    if (want == usable) {
        for (size_t i = 0; i < usable; i++) {
            out->rows_a[n] = pairs[i].id_a;
            out->rows_b[n] = pairs[i].id_b;
            n++;
        }
    } else {
        size_t n_blocks = (usable + TOKEN_BLOCK - 1) / TOKEN_BLOCK;
        uint32_t *order = malloc(n_blocks * sizeof *order);
        cks_rng rng;
        if (!order) {
            err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
            goto out;
        }
        cks_rng_seed(&rng, ctx->seed ^ 0x70CE5EEDull);
        cks_rng_permutation(&rng, order, n_blocks);
        for (size_t k = 0; k < n_blocks && n < want; k++)
            for (size_t i = (size_t)order[k] * TOKEN_BLOCK; i < usable && i < ((size_t)order[k] + 1) * TOKEN_BLOCK && n < want;
                 i++) {
                out->rows_a[n] = pairs[i].id_a;
                out->rows_b[n] = pairs[i].id_b;
                n++;
            }
        free(order);
    }
    out->n = n;
    out->usable = usable;
    out->rows_chosen = true;
out:
    out->done = err == CKS_OK;
    if (err) {
        free(out->rows_a);
        free(out->rows_b);
        out->rows_a = out->rows_b = NULL;
    }
    free(pairs);
    /* the vocabularies and their match (tens of MB for two 150k-token tokenizers) go before
     * the rows come, not after */
    cks_vocab_match_free(match);
    cks_vocab_free(va);
    cks_vocab_free(vb);
    cmp_return_freed_memory();
    return err;
}

cks_err cmp_embed_pair_load(const cmp_ctx *ctx, cmp_model *a, cmp_model *b, const cmp_embed_choice *chosen,
                            cmp_embed_pair *out, cks_diag *diag)
{
    cks_err err = CKS_OK;
    cmp_embed_choice own;
    const cmp_embed_choice *c = chosen;

    memset(out, 0, sizeof *out);
    memset(&own, 0, sizeof own);
    /* a model read from a store may hold fewer k/v rows: both sides keep only the rows both hold */
    if ((err = cmp_pair_reconcile(ctx, a, b, diag)) != CKS_OK)
        goto out;
    if (!c || !c->done) {
        err = cmp_embed_choose(ctx, a, b, &own, diag);
        if (err)
            goto out;
        c = &own;
    }
    out->vocab_a = c->vocab_a;
    out->vocab_b = c->vocab_b;
    out->shared = c->shared;
    snprintf(out->note, sizeof out->note, "%s", c->note);
    if (!c->rows_chosen)
        goto out;
    {
        struct side_job ja = {.m = a, .rows = c->rows_a, .n = c->n, .out = &out->a},
                        jb = {.m = b, .rows = c->rows_b, .n = c->n, .out = &out->b};
        cmp_both_sides(rows_side, &ja, &jb);
        out->bytes += ja.bytes + jb.bytes;
        err = ja.err ? ja.err : jb.err;
        if (err) {
            if (diag)
                *diag = ja.err ? ja.diag : jb.diag;
            goto out;
        }
    }
    cmp_normalise_columns(&out->a);
    cmp_normalise_columns(&out->b);
    if (c->n < c->usable)
        snprintf(out->note, sizeof out->note, "%zu of %zu shared tokens read (budget)", c->n, c->usable);
out:
    if (err)
        cmp_embed_pair_release(out);
    cmp_embed_choice_release(&own);
    for (size_t f = 0; f < a->m->ckpt->n_files; f++)
        cks_source_trim(a->m->ckpt->files[f].source);
    for (size_t f = 0; f < b->m->ckpt->n_files; f++)
        cks_source_trim(b->m->ckpt->files[f].source);
    /* the rows' source copies went just above: their pages go back before T3/T4's matrices */
    cmp_return_freed_memory();
    return err;
}
