/*
 * compare: descriptive results (raw cosines, moments) printed beside the tests, never evidence.
 * Part of cks_compare (compare.c); shared declarations in compare_internal.h.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ckptscope/blas.h"
#include "ckptscope/cka.h"
#include "ckptscope/lap.h"
#include "ckptscope/layers.h"
#include "ckptscope/metrics.h"
#include "ckptscope/stats.h"
#include "compare_internal.h"

/* ---- descriptive results ---- */

void cmp_describe(const cmp_model *a, const cmp_model *b, const cmp_embed_pair *emb, const cmp_family *f,
                  cks_compare_result *r)
{
    size_t la = a->n_layers > 0 ? (size_t)a->n_layers : 0, lb = b->n_layers > 0 ? (size_t)b->n_layers : 0;
    r->layers_a = a->n_layers;
    r->layers_b = b->n_layers;
    r->hidden_a = a->hidden;
    r->hidden_b = b->hidden;
    r->family_a = a->roles ? a->roles->family : "unknown";
    r->family_b = b->roles ? b->roles->family : "unknown";
    r->std_curve_corr = NAN;
    r->router_match = NAN;
    if (emb) {
        r->vocab_a = emb->vocab_a;
        r->vocab_b = emb->vocab_b;
        r->vocab_shared = emb->shared;
    }
    if (la && lb && a->layers && b->layers && a->hidden == b->hidden && la <= CKS_LAYERS_MAX_DIM &&
        lb <= CKS_LAYERS_MAX_DIM) {
        bool any = false;
        r->layer_matrix = malloc(la * lb * sizeof *r->layer_matrix);
        r->row_best = malloc(la * sizeof *r->row_best);
        r->row_margin = malloc(la * sizeof *r->row_margin);
        if (!r->layer_matrix || !r->row_best || !r->row_margin || cmp_norm_matrix(a, b, r->layer_matrix, &any) != CKS_OK ||
            !any ||
            cks_layer_margins(r->layer_matrix, la, lb, CKS_LAYER_ROWS, r->row_best, r->row_margin, NULL, NULL) !=
                CKS_OK) {
            /* no matrix, no margins: never hand out the unfilled arrays */
            free(r->layer_matrix);
            free(r->row_best);
            free(r->row_margin);
            r->layer_matrix = NULL;
            r->row_best = NULL;
            r->row_margin = NULL;
        }
    }
    if (f->map && la && lb && a->layers && b->layers) {
        /* the same matrix once B is re-indexed onto A's dimensions */
        int32_t *ia = malloc(f->map_len * sizeof *ia), *ib = malloc(f->map_len * sizeof *ib);
        int8_t *sg = malloc(f->map_len * sizeof *sg);
        size_t n = 0;
        cmp_model aa, bb;
        memset(&aa, 0, sizeof aa);
        memset(&bb, 0, sizeof bb);
        if (ia && ib && sg) {
            for (size_t i = 0; i < f->map_len; i++)
                if (f->map[i] >= 0) {
                    ia[n] = (int32_t)i;
                    ib[n] = f->map[i];
                    sg[n] = f->sign[i];
                    n++;
                }
            if (cmp_reindex_model(a, ia, NULL, n, &aa) == CKS_OK && cmp_reindex_model(b, ib, sg, n, &bb) == CKS_OK) {
                bool any = false;
                r->layer_matrix_aligned = malloc(la * lb * sizeof *r->layer_matrix_aligned);
                if (!r->layer_matrix_aligned || cmp_norm_matrix(&aa, &bb, r->layer_matrix_aligned, &any) != CKS_OK || !any) {
                    free(r->layer_matrix_aligned);
                    r->layer_matrix_aligned = NULL;
                }
            }
        }
        cmp_model_release(&aa);
        cmp_model_release(&bb);
        free(ia);
        free(ib);
        free(sg);
    }
    if (f->n_pairs) {
        r->path_a = malloc(f->n_pairs * sizeof *r->path_a);
        r->path_b = malloc(f->n_pairs * sizeof *r->path_b);
        if (r->path_a && r->path_b) {
            for (size_t p = 0; p < f->n_pairs; p++) {
                r->path_a[p] = f->pairs[p].a;
                r->path_b[p] = f->pairs[p].b;
            }
            r->n_path = f->n_pairs;
        }
    }
    /* per-layer std of the sampled k rows: supporting evidence only */
    if (la >= 4 && lb >= 4 && a->layers && b->layers) {
        r->std_curve_a = calloc(la, sizeof *r->std_curve_a);
        r->std_curve_b = calloc(lb, sizeof *r->std_curve_b);
        if (r->std_curve_a && r->std_curve_b) {
            bool ok = true;
            for (size_t l = 0; l < la; l++) {
                double m, sd;
                if (!a->layers[l].k.v)
                    ok = false;
                else {
                    cmp_matrix_moments(&a->layers[l].k, &m, &sd);
                    r->std_curve_a[l] = sd;
                }
            }
            for (size_t l = 0; l < lb; l++) {
                double m, sd;
                if (!b->layers[l].k.v)
                    ok = false;
                else {
                    cmp_matrix_moments(&b->layers[l].k, &m, &sd);
                    r->std_curve_b[l] = sd;
                }
            }
            if (!ok || cks_std_curve_correlation(r->std_curve_a, la, r->std_curve_b, lb, 1, &r->std_curve_corr, NULL) !=
                           CKS_OK)
                r->std_curve_corr = NAN;
            if (!ok) {
                free(r->std_curve_a);
                free(r->std_curve_b);
                r->std_curve_a = r->std_curve_b = NULL;
            }
        }
    }
    /* router rows of the first paired layer, matched by assignment on |cos| */
    if (f->n_pairs && a->layers && b->layers) {
        const cmp_matrix *ra = &a->layers[f->pairs[0].a].router, *rb = &b->layers[f->pairs[0].b].router;
        if (ra->v && rb->v && ra->cols == rb->cols && ra->rows && rb->rows && ra->rows <= 4096 && rb->rows <= 4096) {
            float *x = malloc(ra->rows * ra->cols * sizeof *x), *y = malloc(rb->rows * rb->cols * sizeof *y);
            float *s = malloc(ra->rows * rb->rows * sizeof *s);
            int32_t *m = malloc(ra->rows * sizeof *m);
            int8_t *sg = malloc(ra->rows * sizeof *sg);
            double total;
            if (x && y && s && m && sg) {
                /* rows as unit vectors: s = X Y^T is the cosine of every expert pair */
                for (size_t i = 0; i < ra->rows; i++) {
                    double ss = 0;
                    for (size_t c = 0; c < ra->cols; c++)
                        ss += (double)ra->v[i * ra->cols + c] * ra->v[i * ra->cols + c];
                    for (size_t c = 0; c < ra->cols; c++)
                        x[i * ra->cols + c] = ss > 0 ? (float)(ra->v[i * ra->cols + c] / sqrt(ss)) : 0;
                }
                for (size_t i = 0; i < rb->rows; i++) {
                    double ss = 0;
                    for (size_t c = 0; c < rb->cols; c++)
                        ss += (double)rb->v[i * rb->cols + c] * rb->v[i * rb->cols + c];
                    for (size_t c = 0; c < rb->cols; c++)
                        y[i * rb->cols + c] = ss > 0 ? (float)(rb->v[i * rb->cols + c] / sqrt(ss)) : 0;
                }
                cks_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)ra->rows, (int)rb->rows, (int)ra->cols, 1.0f, x,
                          (int)ra->cols, y, (int)rb->cols, 0.0f, s, (int)rb->rows);
                if (cks_lap_max_abs(s, ra->rows, rb->rows, m, sg, &total, NULL) == CKS_OK)
                    r->router_match = total / (double)(ra->rows < rb->rows ? ra->rows : rb->rows);
            }
            free(x);
            free(y);
            free(s);
            free(m);
            free(sg);
        }
    }
    /* config differences that matter for the comparison */
    if (a->roles && b->roles) {
        const cks_arch_config *x = &a->roles->cfg, *y = &b->roles->cfg;
        size_t at = 0;
        struct {
            const char *name;
            int64_t va, vb;
        } fields[] = {{"num_hidden_layers", x->num_hidden_layers, y->num_hidden_layers},
                      {"hidden_size", x->hidden_size, y->hidden_size},
                      {"num_attention_heads", x->num_attention_heads, y->num_attention_heads},
                      {"num_key_value_heads", x->num_key_value_heads, y->num_key_value_heads},
                      {"intermediate_size", x->intermediate_size, y->intermediate_size},
                      {"vocab_size", x->vocab_size, y->vocab_size},
                      {"n_routed_experts", x->n_routed_experts, y->n_routed_experts}};
        if (strcmp(x->model_type, y->model_type) != 0)
            at += (size_t)snprintf(r->config_diff + at, sizeof r->config_diff - at, "model_type %s vs %s; ",
                                   x->model_type[0] ? x->model_type : "?", y->model_type[0] ? y->model_type : "?");
        for (size_t i = 0; i < sizeof fields / sizeof fields[0] && at < sizeof r->config_diff; i++)
            if (fields[i].va != fields[i].vb)
                at += (size_t)snprintf(r->config_diff + at, sizeof r->config_diff - at, "%s %lld vs %lld; ",
                                       fields[i].name, (long long)fields[i].va, (long long)fields[i].vb);
    }
}
