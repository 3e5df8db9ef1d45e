/*
 * Exact element decoding. Values are built from their bit fields by exact arithmetic
 * (a power-of-two scaling of a small integer is exact in binary floating point), so there is
 * no table copied from anywhere and no rounding except the documented float32 narrowing.
 * Formats: IEEE 754-2008 binary16; bfloat16 = upper half of binary32; OCP 8-bit floating
 * point specification (OFP8, 2023) for E4M3/E5M2; the FNUZ variants as defined by
 * GraphCore/AMD (bias + 1, single NaN at 0x80); OCP Microscaling spec v1.0 for E8M0.
 */
#include "ckptscope/decode.h"

#include <math.h>
#include <string.h>

static inline uint16_t load_u16le(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }

static inline uint32_t load_u32le(const uint8_t *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

static inline uint64_t load_u64le(const uint8_t *p)
{
    return (uint64_t)load_u32le(p) | ((uint64_t)load_u32le(p + 4) << 32);
}

static inline float f32_from_bits(uint32_t bits)
{
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

static inline double f64_from_bits(uint64_t bits)
{
    double d;
    memcpy(&d, &bits, sizeof d);
    return d;
}

float cks_bf16_to_f32(uint16_t bits) { return f32_from_bits((uint32_t)bits << 16); }

float cks_f16_to_f32(uint16_t bits)
{
    uint32_t sign = (uint32_t)(bits >> 15) << 31;
    uint32_t exponent = (bits >> 10) & 0x1f;
    uint32_t mantissa = bits & 0x3ff;
    if (exponent == 0) {
        /* zero or subnormal: mantissa * 2^-24, exact in float32 */
        float magnitude = (float)mantissa * 0x1p-24f;
        return sign ? -magnitude : magnitude;
    }
    if (exponent == 31) /* inf (mantissa 0) or NaN with the payload moved up like numpy */
        return f32_from_bits(sign | 0x7f800000u | (mantissa << 13));
    /* rebias 15 -> 127 */
    return f32_from_bits(sign | ((exponent + 112) << 23) | (mantissa << 13));
}

/*
 * A generic small float: 1 sign bit (when has_sign), exp_bits, man_bits, bias. The special
 * encodings differ per variant, so callers handle NaN/inf before calling this.
 */
/* A quiet NaN carrying the sign bit of the encoding (the 8-bit formats have no payload). */
static inline float signed_nan(unsigned sign)
{
    return f32_from_bits(((uint32_t)sign << 31) | 0x7fc00000u);
}

static float minifloat_value(unsigned sign, unsigned exponent, unsigned mantissa,
                             unsigned man_bits, int bias)
{
    float magnitude;
    if (exponent == 0) /* subnormal: mantissa * 2^(1 - bias - man_bits) */
        magnitude = ldexpf((float)mantissa, 1 - bias - (int)man_bits);
    else
        magnitude = ldexpf((float)((1u << man_bits) | mantissa), (int)exponent - bias - (int)man_bits);
    return sign ? -magnitude : magnitude;
}

float cks_f8_e4m3_to_f32(uint8_t bits)
{
    if ((bits & 0x7f) == 0x7f) /* S.1111.111: the only NaN of e4m3fn; no infinities */
        return signed_nan(bits >> 7);
    return minifloat_value(bits >> 7, (bits >> 3) & 0xf, bits & 0x7, 3, 7);
}

float cks_f8_e5m2_to_f32(uint8_t bits)
{
    unsigned sign = bits >> 7, exponent = (bits >> 2) & 0x1f, mantissa = bits & 0x3;
    if (exponent == 31)
        return mantissa ? signed_nan(sign) : (sign ? -INFINITY : INFINITY);
    return minifloat_value(sign, exponent, mantissa, 2, 15);
}

float cks_f8_e4m3fnuz_to_f32(uint8_t bits)
{
    if (bits == 0x80) /* "negative zero" is the single NaN; no infinities */
        return signed_nan(0);
    return minifloat_value(bits >> 7, (bits >> 3) & 0xf, bits & 0x7, 3, 8);
}

float cks_f8_e5m2fnuz_to_f32(uint8_t bits)
{
    if (bits == 0x80)
        return signed_nan(0);
    return minifloat_value(bits >> 7, (bits >> 2) & 0x1f, bits & 0x3, 2, 16);
}

float cks_f8_e8m0_to_f32(uint8_t bits)
{
    if (bits == 0xff)
        return signed_nan(0);
    /* 2^(e-127); e = 0 gives 2^-127, a float32 subnormal, still exact */
    return ldexpf(1.0f, (int)bits - 127);
}

bool cks_decode_supported(cks_dtype dtype) { return cks_decode_elem_size(dtype) != 0; }

size_t cks_decode_elem_size(cks_dtype dtype)
{
    switch (dtype) {
    case CKS_DTYPE_BOOL: case CKS_DTYPE_U8: case CKS_DTYPE_I8:
    case CKS_DTYPE_F8_E5M2: case CKS_DTYPE_F8_E4M3: case CKS_DTYPE_F8_E8M0:
    case CKS_DTYPE_F8_E4M3FNUZ: case CKS_DTYPE_F8_E5M2FNUZ:
        return 1;
    case CKS_DTYPE_I16: case CKS_DTYPE_U16: case CKS_DTYPE_F16: case CKS_DTYPE_BF16:
        return 2;
    case CKS_DTYPE_I32: case CKS_DTYPE_U32: case CKS_DTYPE_F32:
        return 4;
    case CKS_DTYPE_F64: case CKS_DTYPE_I64: case CKS_DTYPE_U64:
        return 8;
    default:
        return 0;
    }
}

/* The 256 values of an 8-bit dtype, computed once per call (cheap next to any real tensor). */
static void fill_byte_table(cks_dtype dtype, float table[256])
{
    for (unsigned b = 0; b < 256; b++) {
        uint8_t byte = (uint8_t)b;
        switch (dtype) {
        case CKS_DTYPE_F8_E5M2: table[b] = cks_f8_e5m2_to_f32(byte); break;
        case CKS_DTYPE_F8_E4M3: table[b] = cks_f8_e4m3_to_f32(byte); break;
        case CKS_DTYPE_F8_E8M0: table[b] = cks_f8_e8m0_to_f32(byte); break;
        case CKS_DTYPE_F8_E4M3FNUZ: table[b] = cks_f8_e4m3fnuz_to_f32(byte); break;
        case CKS_DTYPE_F8_E5M2FNUZ: table[b] = cks_f8_e5m2fnuz_to_f32(byte); break;
        case CKS_DTYPE_BOOL: table[b] = byte ? 1.0f : 0.0f; break;
        case CKS_DTYPE_I8: table[b] = (float)(int8_t)byte; break;
        default: table[b] = (float)byte; break; /* U8 */
        }
    }
}

/*
 * One loop body per source dtype, instantiated for both destination types. DST_T is float
 * or double; CONVERT_F64 turns an exact double/int64 into DST_T (a cast either way).
 */
#define DECODE_ALL(DST_T)                                                                     \
    do {                                                                                      \
        const uint8_t *in = src;                                                              \
        switch (dtype) {                                                                      \
        case CKS_DTYPE_BOOL: case CKS_DTYPE_U8: case CKS_DTYPE_I8:                            \
        case CKS_DTYPE_F8_E5M2: case CKS_DTYPE_F8_E4M3: case CKS_DTYPE_F8_E8M0:              \
        case CKS_DTYPE_F8_E4M3FNUZ: case CKS_DTYPE_F8_E5M2FNUZ: {                              \
            float table[256];                                                                 \
            fill_byte_table(dtype, table);                                                    \
            for (size_t i = 0; i < count; i++)                                                \
                dst[i] = (DST_T)table[in[i]];                                                 \
            break;                                                                            \
        }                                                                                     \
        case CKS_DTYPE_BF16:                                                                  \
            for (size_t i = 0; i < count; i++)                                                \
                dst[i] = (DST_T)cks_bf16_to_f32(load_u16le(in + 2 * i));                      \
            break;                                                                            \
        case CKS_DTYPE_F16:                                                                   \
            for (size_t i = 0; i < count; i++)                                                \
                dst[i] = (DST_T)cks_f16_to_f32(load_u16le(in + 2 * i));                       \
            break;                                                                            \
        case CKS_DTYPE_I16:                                                                   \
            for (size_t i = 0; i < count; i++)                                                \
                dst[i] = (DST_T)(int16_t)load_u16le(in + 2 * i);                              \
            break;                                                                            \
        case CKS_DTYPE_U16:                                                                   \
            for (size_t i = 0; i < count; i++)                                                \
                dst[i] = (DST_T)load_u16le(in + 2 * i);                                       \
            break;                                                                            \
        case CKS_DTYPE_F32:                                                                   \
            for (size_t i = 0; i < count; i++)                                                \
                dst[i] = (DST_T)f32_from_bits(load_u32le(in + 4 * i));                        \
            break;                                                                            \
        case CKS_DTYPE_I32:                                                                   \
            for (size_t i = 0; i < count; i++)                                                \
                dst[i] = (DST_T)(int32_t)load_u32le(in + 4 * i);                              \
            break;                                                                            \
        case CKS_DTYPE_U32:                                                                   \
            for (size_t i = 0; i < count; i++)                                                \
                dst[i] = (DST_T)load_u32le(in + 4 * i);                                       \
            break;                                                                            \
        case CKS_DTYPE_F64:                                                                   \
            for (size_t i = 0; i < count; i++)                                                \
                dst[i] = (DST_T)f64_from_bits(load_u64le(in + 8 * i));                        \
            break;                                                                            \
        case CKS_DTYPE_I64:                                                                   \
            for (size_t i = 0; i < count; i++)                                                \
                dst[i] = (DST_T)(int64_t)load_u64le(in + 8 * i);                              \
            break;                                                                            \
        case CKS_DTYPE_U64:                                                                   \
            for (size_t i = 0; i < count; i++)                                                \
                dst[i] = (DST_T)load_u64le(in + 8 * i);                                       \
            break;                                                                            \
        default:                                                                              \
            break;                                                                            \
        }                                                                                     \
    } while (0)

static bool dtype_can_be_nonfinite(cks_dtype dtype)
{
    return cks_dtype_is_float(dtype);
}

static cks_err check_decode_args(cks_dtype dtype, const void *src, size_t count, const void *dst,
                                 cks_diag *diag)
{
    size_t elem = cks_decode_elem_size(dtype);
    cks_err err = CKS_OK;
    if (elem == 0)
        err = cks_fail(diag, CKS_ERR_UNSUPPORTED, "cannot decode dtype %s to floating point",
                       cks_dtype_name(dtype));
    else if (count > 0 && (src == NULL || dst == NULL))
        err = cks_fail(diag, CKS_ERR_INVALID_ARG, "decode of %zu elements with a NULL buffer", count);
    else if (count > SIZE_MAX / elem)
        err = cks_fail(diag, CKS_ERR_INVALID_ARG, "decode of %zu %s elements overflows size_t",
                       count, cks_dtype_name(dtype));
    return err;
}

cks_err cks_decode_f32(cks_dtype dtype, const void *src, size_t count, float *dst,
                       cks_nonfinite *tally, cks_diag *diag)
{
    cks_err err = check_decode_args(dtype, src, count, dst, diag);
    if (err != CKS_OK)
        goto out;
    DECODE_ALL(float);
    if (tally && dtype_can_be_nonfinite(dtype)) {
        for (size_t i = 0; i < count; i++) {
            if (isnan(dst[i]))
                tally->nan_count++;
            else if (isinf(dst[i]))
                tally->inf_count++;
        }
    }
out:
    return err;
}

cks_err cks_decode_f64(cks_dtype dtype, const void *src, size_t count, double *dst,
                       cks_nonfinite *tally, cks_diag *diag)
{
    cks_err err = check_decode_args(dtype, src, count, dst, diag);
    if (err != CKS_OK)
        goto out;
    DECODE_ALL(double);
    if (tally && dtype_can_be_nonfinite(dtype)) {
        for (size_t i = 0; i < count; i++) {
            if (isnan(dst[i]))
                tally->nan_count++;
            else if (isinf(dst[i]))
                tally->inf_count++;
        }
    }
out:
    return err;
}
