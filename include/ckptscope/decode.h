/*
 * ckptscope/decode.h — exact decoding of safetensors element bytes to float32 / float64.
 *
 * Input is the raw little-endian element bytes of a tensor (or of any whole-element slice of
 * one), exactly as they sit in the file. Every value of every supported dtype is decoded
 * exactly when the destination can represent it; the only rounding is the documented
 * narrowing of F64, I32/U32 (> 2^24), I64/U64 to float32 (IEEE round-to-nearest-even, the
 * same as a C cast or numpy's astype).
 *
 *   BF16      top 16 bits of a float32: exact, NaN payload kept.
 *   F16       IEEE binary16: subnormals, ±inf and NaN (payload shifted like numpy).
 *   F8_E4M3   the OCP "e4m3fn" variant: bias 7, no infinities, S.1111.111 is NaN, max 448.
 *   F8_E5M2   bias 15, IEEE-like: exponent 31 is inf (mantissa 0) or NaN.
 *   F8_E4M3FNUZ / F8_E5M2FNUZ  bias 8 / 16, no inf, no negative zero: 0x80 is the only NaN.
 *   F8_E8M0   unsigned power of two 2^(e-127) (MX scale), 0xFF is NaN, no zero.
 *   BOOL, U8, I8, I16, U16, I32, U32, I64, U64: their integer value (BOOL: byte != 0 -> 1).
 *   F32, F64: themselves.
 * Not decodable here (CKS_ERR_UNSUPPORTED): the sub-byte F4/F6 types and C64 (complex).
 *
 * Non-finite values are decoded faithfully AND counted: every decode call adds to a
 * cks_nonfinite tally of the DECODED values (so an F64 beyond float32 range counts as inf in
 * cks_decode_f32), and a caller can refuse to turn NaN/Inf into a similarity (the metric
 * accumulators in metrics.h skip such pairs and report how many they skipped).
 *
 * Thread-safe, no global state, no allocation.
 */
#ifndef CKPTSCOPE_DECODE_H
#define CKPTSCOPE_DECODE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ckptscope/dtype.h"
#include "ckptscope/error.h"

typedef struct cks_nonfinite {
    uint64_t nan_count;
    uint64_t inf_count; /* +inf and -inf together */
} cks_nonfinite;

/* True for every dtype the functions below accept. */
bool cks_decode_supported(cks_dtype dtype);

/* Bytes per element of a decodable dtype (1, 2, 4 or 8); 0 when not decodable. */
size_t cks_decode_elem_size(cks_dtype dtype);

/*
 * Decode `count` elements starting at `src` (count * elem_size bytes, any alignment) into
 * dst. `tally` (may be NULL) is ADDED to, not reset, so one tally can cover a whole streamed
 * tensor. Returns CKS_ERR_UNSUPPORTED for a dtype that is not decodable, CKS_ERR_INVALID_ARG
 * for NULL buffers with count > 0 or a byte size that overflows size_t.
 */
cks_err cks_decode_f32(cks_dtype dtype, const void *src, size_t count, float *dst,
                       cks_nonfinite *tally, cks_diag *diag);
cks_err cks_decode_f64(cks_dtype dtype, const void *src, size_t count, double *dst,
                       cks_nonfinite *tally, cks_diag *diag);

/* Single-value conversions (exact; used by the bulk decoders and handy in tests). */
float cks_bf16_to_f32(uint16_t bits);
float cks_f16_to_f32(uint16_t bits);
float cks_f8_e4m3_to_f32(uint8_t bits);
float cks_f8_e5m2_to_f32(uint8_t bits);
float cks_f8_e4m3fnuz_to_f32(uint8_t bits);
float cks_f8_e5m2fnuz_to_f32(uint8_t bits);
float cks_f8_e8m0_to_f32(uint8_t bits);

#endif
