/*
 * ckptscope/dtype.h — the safetensors dtype table.
 *
 * Names are case-sensitive and exactly those of the reference crate (hub-protocol.md §B3).
 * Sizes are in bits because F4 and F6 are sub-byte; a tensor's byte size is
 * nelements * bits / 8 and must be a whole number (MisalignedSlice otherwise).
 * Decoding to floating point lives in ckptscope/decode.h.
 */
#ifndef CKPTSCOPE_DTYPE_H
#define CKPTSCOPE_DTYPE_H

#include <stdbool.h>
#include <stdint.h>

typedef enum cks_dtype {
    CKS_DTYPE_INVALID = 0,
    CKS_DTYPE_BOOL,
    CKS_DTYPE_F4,
    CKS_DTYPE_F6_E2M3,
    CKS_DTYPE_F6_E3M2,
    CKS_DTYPE_U8,
    CKS_DTYPE_I8,
    CKS_DTYPE_F8_E5M2,
    CKS_DTYPE_F8_E4M3,
    CKS_DTYPE_F8_E8M0,
    CKS_DTYPE_F8_E4M3FNUZ,
    CKS_DTYPE_F8_E5M2FNUZ,
    CKS_DTYPE_I16,
    CKS_DTYPE_U16,
    CKS_DTYPE_F16,
    CKS_DTYPE_BF16,
    CKS_DTYPE_I32,
    CKS_DTYPE_U32,
    CKS_DTYPE_F32,
    CKS_DTYPE_C64,
    CKS_DTYPE_F64,
    CKS_DTYPE_I64,
    CKS_DTYPE_U64,
    CKS_DTYPE__COUNT
} cks_dtype;

/* Exact, case-sensitive lookup of a name of explicit length; CKS_DTYPE_INVALID if unknown. */
cks_dtype cks_dtype_from_name(const char *name, uint64_t name_len);
const char *cks_dtype_name(cks_dtype dtype);
/* Bits per element (4, 6, 8, 16, 32 or 64); 0 for CKS_DTYPE_INVALID. */
unsigned cks_dtype_bits(cks_dtype dtype);
/* Floating-point dtypes (the ones a similarity statistic can use directly). */
bool cks_dtype_is_float(cks_dtype dtype);

#endif
