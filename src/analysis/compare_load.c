/*
 * compare: which loader reads a model, chosen once (compare_internal.h, "loaders"). The one
 * place that knows the kinds of model sources: above the loaders (compare_data.c,
 * compare_fp.c), below everything that loads (compare.c, compare_embed.c).
 */
#include <string.h>

#include "ckptscope/fingerprint.h"
#include "compare_internal.h"

/* A model given with stored data is read from it; every other from its checkpoint's bytes. */
static const cmp_loader *loader_of(const cks_compare_model *m)
{
    return m->fingerprint ? &cmp_stored_loader : &cmp_live_loader;
}

cks_err cmp_model_load(const cmp_ctx *ctx, const cks_compare_model *m, cmp_model *md, cks_diag *diag)
{
    const cmp_loader *loader = loader_of(m);
    cks_err err = loader->load(ctx, m, md, diag);
    md->loader = loader; /* also after a failure: release needs nothing from it, messages may */
    return err;
}

cks_err cmp_load_role_rows(cmp_model *md, cks_role role, const uint32_t *rows, size_t n, cmp_matrix *out,
                           uint64_t *counter, cks_diag *diag)
{
    const cmp_loader *loader = md->loader ? md->loader : &cmp_live_loader;
    return loader->role_rows(md, role, rows, n, out, counter, diag);
}

cks_err cmp_model_vocab(const cmp_model *md, cks_vocab **out, char *note, size_t note_size)
{
    const cmp_loader *loader = md->loader ? md->loader : loader_of(md->m);
    return loader->vocab(md->m, out, note, note_size);
}

cks_err cmp_pair_reconcile(const cmp_ctx *ctx, cmp_model *a, cmp_model *b, cks_diag *diag)
{
    cks_err err = CKS_OK;
    if (a->loader && a->loader->reconcile)
        err = a->loader->reconcile(ctx, a, b, diag);
    else if (b->loader && b->loader->reconcile)
        err = b->loader->reconcile(ctx, a, b, diag);
    return err;
}
