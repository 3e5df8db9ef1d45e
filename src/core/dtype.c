#include "ckptscope/dtype.h"

#include <string.h>

struct dtype_entry {
    const char *name;
    unsigned bits;
    bool is_float;
};

static const struct dtype_entry dtype_table[CKS_DTYPE__COUNT] = {
    [CKS_DTYPE_INVALID] = {"INVALID", 0, false},
    [CKS_DTYPE_BOOL] = {"BOOL", 8, false},
    [CKS_DTYPE_F4] = {"F4", 4, true},
    [CKS_DTYPE_F6_E2M3] = {"F6_E2M3", 6, true},
    [CKS_DTYPE_F6_E3M2] = {"F6_E3M2", 6, true},
    [CKS_DTYPE_U8] = {"U8", 8, false},
    [CKS_DTYPE_I8] = {"I8", 8, false},
    [CKS_DTYPE_F8_E5M2] = {"F8_E5M2", 8, true},
    [CKS_DTYPE_F8_E4M3] = {"F8_E4M3", 8, true},
    [CKS_DTYPE_F8_E8M0] = {"F8_E8M0", 8, true},
    [CKS_DTYPE_F8_E4M3FNUZ] = {"F8_E4M3FNUZ", 8, true},
    [CKS_DTYPE_F8_E5M2FNUZ] = {"F8_E5M2FNUZ", 8, true},
    [CKS_DTYPE_I16] = {"I16", 16, false},
    [CKS_DTYPE_U16] = {"U16", 16, false},
    [CKS_DTYPE_F16] = {"F16", 16, true},
    [CKS_DTYPE_BF16] = {"BF16", 16, true},
    [CKS_DTYPE_I32] = {"I32", 32, false},
    [CKS_DTYPE_U32] = {"U32", 32, false},
    [CKS_DTYPE_F32] = {"F32", 32, true},
    [CKS_DTYPE_C64] = {"C64", 64, false},
    [CKS_DTYPE_F64] = {"F64", 64, true},
    [CKS_DTYPE_I64] = {"I64", 64, false},
    [CKS_DTYPE_U64] = {"U64", 64, false},
};

cks_dtype cks_dtype_from_name(const char *name, uint64_t name_len)
{
    for (int d = CKS_DTYPE_INVALID + 1; d < CKS_DTYPE__COUNT; d++) {
        const char *candidate = dtype_table[d].name;
        if (strlen(candidate) == name_len && memcmp(candidate, name, name_len) == 0)
            return (cks_dtype)d;
    }
    return CKS_DTYPE_INVALID;
}

const char *cks_dtype_name(cks_dtype dtype)
{
    if ((unsigned)dtype >= CKS_DTYPE__COUNT)
        return "INVALID";
    return dtype_table[dtype].name;
}

unsigned cks_dtype_bits(cks_dtype dtype)
{
    if ((unsigned)dtype >= CKS_DTYPE__COUNT)
        return 0;
    return dtype_table[dtype].bits;
}

bool cks_dtype_is_float(cks_dtype dtype)
{
    if ((unsigned)dtype >= CKS_DTYPE__COUNT)
        return false;
    return dtype_table[dtype].is_float;
}
