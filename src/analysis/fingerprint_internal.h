/*
 * Internals shared by fingerprint.c (build, encode, decode), fingerprint_refs.c (the reference
 * strings) and compare_fp.c (compare's loaders reading from a fingerprint instead of a model).
 */
#ifndef CKS_FINGERPRINT_INTERNAL_H
#define CKS_FINGERPRINT_INTERNAL_H

#include "core/byteorder.h"

#include <stddef.h>
#include <stdint.h>

#include "ckptscope/defaults.h"
#include "ckptscope/fingerprint.h"
#include "ckptscope/tokenizer.h"
#include "compare_internal.h"

#define FP_MAX_REFS 40960u
#define FP_REF_POOL (256u << 10)

typedef struct fp_refs {
    size_t n, used;
    const char *text[FP_MAX_REFS];
    uint32_t len[FP_MAX_REFS];
    char pool[FP_REF_POOL];
} fp_refs;

/* The reference strings of a format version in priority order (constant; part of the format). */
void fp_refs_build(fp_refs *r, uint32_t version);

/* Replace fp's n_tokens x embed_cols embedding rows by 4-bit codes, one uniform quantiser per
 * column (centred on the column's mean, step FP_Q4_STEP standard deviations); fp->embed then
 * holds exactly the values a reader decodes. CKS_ERR_NOMEM leaves the rows exact. */
cks_err fp_embed_quantise(cks_fingerprint *fp);

/* fsync the folder holding path, so a rename into it survives a crash (fingerprint and library files) */
void fp_sync_parent(const char *path);

/* compare's defaults, which a fingerprint is built with unless told otherwise */
#define FP_COMPARE_BUDGET CKS_DEFAULT_BUDGET_BYTES
#define FP_COMPARE_SEED CKS_DEFAULT_SEED

#endif
