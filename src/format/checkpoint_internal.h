/*
 * src/format/checkpoint_internal.h — what checkpoint.c shares with checkpoint_check.c: the local
 * provider (ctx is the root directory as a C string).
 */
#ifndef CKS_CHECKPOINT_INTERNAL_H
#define CKS_CHECKPOINT_INTERNAL_H

#include "ckptscope/checkpoint.h"

cks_err cks_local_fetch_file(void *ctx, const char *relpath, char **data, size_t *len, cks_diag *diag);
cks_err cks_local_open_source(void *ctx, const char *relpath, cks_source **out, cks_diag *diag);

#endif
