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

/* ---- limits and constants of the container (fingerprint*.c) ---- */

#define FP_HEAD_LEN 20u              /* magic + u32 version + u64 payload length */
#define FP_MAX_FILES 100000u
#define FP_MAX_TENSORS 10000000u
#define FP_MAX_LAYERS 100000
#define FP_MAX_COLS (1u << 20)
#define FP_MAX_JSON_INT 9007199254740992.0 /* 2^53: larger integers are not exact in JSON numbers */
/* Written once, read often: spend time on the ratio, where it buys any. Measured on a 10.9 MB
 * payload of mostly 4-bit codes: level 19 takes 3.6 s for 9.165 MB, level 9 0.3 s for 9.150 MB;
 * on a 0.5 MB payload of names and bf16 values level 19 saves 2 % in 0.06 s. */
#define FP_ZSTD_LEVEL_SMALL 19
#define FP_ZSTD_LEVEL_LARGE 9
#define FP_ZSTD_LARGE (2u << 20)
#define FP_BAD CKS_ERR_INVALID_HEADER_DESERIALIZATION
/* Embedding rows a capped fingerprint aims to keep: compare's T4 needs 2,048 shared tokens on a
 * wide model, and a vocabulary of another family lacks some reference strings. */
#define FP_EMBED_TARGET 2816u
#define FP_EMBED_MAX_PERCENT 70u     /* of the room, to reach FP_EMBED_TARGET as 4-bit codes */

/* compare's defaults, which a fingerprint is built with unless told otherwise */
#define FP_COMPARE_BUDGET CKS_DEFAULT_BUDGET_BYTES
#define FP_COMPARE_SEED CKS_DEFAULT_SEED

/* ---- shared across fingerprint.c, fingerprint_format.c, fingerprint_build.c, fingerprint_encode.c, fingerprint_decode.c ---- */

void fp_attach_raw(cks_fingerprint *fp);
float fp_bits_f32(uint32_t u);
cks_err fp_ckpt_assemble(const char *name, size_t n_files, cks_st_header **headers, char **paths,
                         cks_ckpt **out, cks_diag *diag);
char *fp_dup_or_empty(const char *s);
void fp_embed_release(cks_fingerprint *fp);
uint32_t fp_f32_bits(float f);
cks_err fp_header_copy(const cks_st_header *src, cks_st_header **out, cks_diag *diag);
void fp_layers_release(cks_fingerprint *fp);
bool fp_mul_ok(uint64_t a, uint64_t b, uint64_t *out);
size_t fp_q4_bytes(size_t n);
unsigned fp_q4_code_at(const uint8_t *codes, size_t i);
float fp_q4_value(float offset, float step, unsigned code);
void fp_rows_release(cks_fp_rows *r);

#endif
