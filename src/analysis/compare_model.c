/*
 * compare: the model and matrix types every loader and test shares, at the bottom of the
 * loaders (compare_data.c reads a live checkpoint, compare_fp.c a stored fingerprint; both
 * build on this file, compare_load.c picks one per model): releasing them, the rows sampled
 * from a tensor (the same rows for the same shape, whatever the source), and what
 * initialisation does to a tensor.
 */
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#ifdef __GLIBC__
#include <malloc.h> /* malloc_trim */
#endif

#include "ckptscope/adapter.h"
#include "ckptscope/stats.h"
#include "compare_internal.h"

void cmp_matrix_free(cmp_matrix *m)
{
    free(m->v);
    memset(m, 0, sizeof *m);
}

void cmp_normalise_columns(cmp_matrix *m)
{
    /* row by row, with one sum per column: the same sums in the same order as the column walk
     * below, without its stride of a whole row (0.4 s -> ~10 ms for 2048 x 4096 rows) */
    double *col_ss = m->v && m->cols ? calloc(m->cols, sizeof *col_ss) : NULL;
    if (col_ss) {
        for (size_t r = 0; r < m->rows; r++) {
            const float *row = m->v + r * m->cols;
            for (size_t c = 0; c < m->cols; c++)
                col_ss[c] += (double)row[c] * row[c];
        }
        for (size_t c = 0; c < m->cols; c++)
            col_ss[c] = col_ss[c] > 0 ? (double)(float)(1.0 / sqrt(col_ss[c])) : 1.0;
        for (size_t r = 0; r < m->rows; r++) {
            float *row = m->v + r * m->cols;
            for (size_t c = 0; c < m->cols; c++)
                row[c] *= (float)col_ss[c];
        }
        free(col_ss);
        return;
    }
    for (size_t c = 0; c < m->cols && m->v; c++) {
        double ss = 0;
        for (size_t r = 0; r < m->rows; r++)
            ss += (double)m->v[r * m->cols + c] * m->v[r * m->cols + c];
        if (ss > 0) {
            float inv = (float)(1.0 / sqrt(ss));
            for (size_t r = 0; r < m->rows; r++)
                m->v[r * m->cols + c] *= inv;
        }
    }
}

void cmp_model_release(cmp_model *md)
{
    if (!md)
        return;
    for (int l = 0; l < md->n_layers && md->layers; l++) {
        cmp_layer *L = &md->layers[l];
        free(L->attn_norm);
        free(L->ffn_norm);
        cmp_matrix_free(&L->k);
        cmp_matrix_free(&L->v);
        cmp_matrix_free(&L->router);
        free(L->router_bias);
    }
    free(md->layers);
    for (size_t i = 0; i < md->n_raw; i++)
        free(md->raw[i].bytes);
    free(md->raw);
    cks_roles_free(md->roles);
    memset(md, 0, sizeof *md);
}

void cmp_embed_pair_release(cmp_embed_pair *e)
{
    cmp_matrix_free(&e->a);
    cmp_matrix_free(&e->b);
}

size_t cmp_sample_rows(uint64_t seed, size_t total, size_t want, uint32_t *rows)
{
    size_t n_blocks = (total + CMP_ROW_BLOCK - 1) / CMP_ROW_BLOCK, take, n = 0;
    uint32_t *blocks;
    cks_rng rng;
    if (want >= total) {
        for (size_t r = 0; r < total; r++)
            rows[r] = (uint32_t)r;
        return total;
    }
    take = (want + CMP_ROW_BLOCK - 1) / CMP_ROW_BLOCK;
    if (take > n_blocks)
        take = n_blocks;
    blocks = malloc(n_blocks * sizeof *blocks);
    if (!blocks)
        return 0;
    cks_rng_seed(&rng, seed ^ (0x9E3779B97F4A7C15ull * (uint64_t)total));
    cks_rng_permutation(&rng, blocks, n_blocks);
    /* the first `take` blocks of a random permutation, in file order */
    for (size_t i = 1; i < take; i++) {
        uint32_t key = blocks[i];
        size_t j = i;
        while (j > 0 && blocks[j - 1] > key) {
            blocks[j] = blocks[j - 1];
            j--;
        }
        blocks[j] = key;
    }
    for (size_t b = 0; b < take && n < want; b++)
        for (size_t r = (size_t)blocks[b] * CMP_ROW_BLOCK; r < total && r < ((size_t)blocks[b] + 1) * CMP_ROW_BLOCK && n < want; r++)
            rows[n++] = (uint32_t)r;
    free(blocks);
    return n;
}

/* ---- what initialisation does to a tensor ---- */

bool cmp_is_lora_factor(const cmp_raw *r)
{
    char key[CKS_ADAPTER_KEY_MAX];
    bool transposed;
    cks_adapter_factor f = cks_adapter_key(r->tensor->info->name, key, sizeof key, &transposed);
    return f == CKS_ADAPTER_DOWN || f == CKS_ADAPTER_UP;
}

/* Case-insensitive substring. */
static bool name_has(const char *name, const char *needle)
{
    size_t n = strlen(needle);
    for (const char *p = name; *p; p++)
        if (strncasecmp(p, needle, n) == 0)
            return true;
    return false;
}

/*
 * Norm gains start at one and norm biases, HF-initialised linear biases, router score biases
 * and LoRA up factors at zero: what they hold, training wrote. Everything else (weights,
 * embeddings, LoRA down factors, heads) starts from a random draw, which two runs can share
 * through a seed. Plain PyTorch modules initialise biases randomly, so a bias of an unknown
 * architecture counts as fixed by initialisation (the conservative side).
 */
cks_evidence cmp_init_class(const cmp_raw *r)
{
    char key[CKS_ADAPTER_KEY_MAX];
    bool transposed;
    const char *name = r->tensor->info->name;
    switch (cks_adapter_key(name, key, sizeof key, &transposed)) {
    case CKS_ADAPTER_UP:
        return CKS_EVIDENCE_TRAINED;
    case CKS_ADAPTER_DOWN:
        return CKS_EVIDENCE_INIT;
    default:
        break;
    }
    switch (r->role) {
    case CKS_ROLE_EMBED_NORM:
    case CKS_ROLE_FINAL_NORM:
    case CKS_ROLE_ATTN_NORM:
    case CKS_ROLE_FFN_NORM:
    case CKS_ROLE_POST_ATTN_NORM:
    case CKS_ROLE_POST_FFN_NORM:
    case CKS_ROLE_Q_NORM:
    case CKS_ROLE_K_NORM:
    case CKS_ROLE_Q_A_NORM:
    case CKS_ROLE_KV_A_NORM:
    case CKS_ROLE_ROUTER_BIAS:
        return CKS_EVIDENCE_TRAINED;
    case CKS_ROLE_OTHER:
        break;
    default:
        return r->part == CKS_PART_BIAS ? CKS_EVIDENCE_TRAINED : CKS_EVIDENCE_INIT;
    }
    if (r->tensor->info->ndim <= 1 &&
        (name_has(name, "norm") || name_has(name, "ln_") || name_has(name, ".ln") || name_has(name, "running_mean") ||
         name_has(name, "running_var")))
        return CKS_EVIDENCE_TRAINED;
    return CKS_EVIDENCE_INIT;
}

const uint32_t *cmp_embed_early_rows(const cmp_ctx *ctx, const cks_compare_model *m, size_t *n)
{
    cmp_embed_early *e = ctx->early;
    const uint32_t *rows = NULL;
    *n = 0;
    if (!e || (m != e->model_a && m != e->model_b))
        return NULL;
    pthread_mutex_lock(&e->mu);
    while (!e->published)
        pthread_cond_wait(&e->cv, &e->mu);
    pthread_mutex_unlock(&e->mu);
    if (e->choice.rows_chosen && e->choice.n) {
        rows = m == e->model_a ? e->choice.rows_a : e->choice.rows_b;
        *n = e->choice.n;
    }
    return rows;
}

void cmp_both_sides(void *(*fn)(void *), void *a_job, void *b_job)
{
    pthread_t t;
    bool threaded = pthread_create(&t, NULL, fn, b_job) == 0;
    fn(a_job);
    if (threaded)
        pthread_join(t, NULL);
    else
        fn(b_job);
}

void cmp_return_freed_memory(void)
{
#ifdef __GLIBC__
    malloc_trim(0);
#endif
}
