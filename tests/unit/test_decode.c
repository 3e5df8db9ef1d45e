/*
 * Decoding of every safetensors dtype, checked bit for bit against independent references:
 * hand-worked values from the format definitions, tests/ref/ref.py (numpy casts, and for
 * BF16/F8 a field-by-field Python decoder), and the real files in
 * ../shared/realdata/fluxml-safetensors-jl (headers read with Python's json module).
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "check.h"
#include "ckptscope/decode.h"
#include "ref/pyref.h"

static uint32_t bits_of_f32(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static uint64_t bits_of_f64(double d)
{
    uint64_t u;
    memcpy(&u, &d, sizeof u);
    return u;
}

/* Values worked out by hand from the format definitions (sign, exponent, bias, mantissa). */
static void hand_worked_values(void)
{
    CHECK(cks_bf16_to_f32(0x3f80) == 1.0f);
    CHECK(cks_bf16_to_f32(0xc000) == -2.0f);
    CHECK(cks_bf16_to_f32(0x3fc0) == 1.5f);
    CHECK(cks_bf16_to_f32(0x0001) == 0x1p-133f); /* smallest bf16 subnormal */
    CHECK(isinf(cks_bf16_to_f32(0x7f80)) && cks_bf16_to_f32(0x7f80) > 0);
    CHECK(isnan(cks_bf16_to_f32(0x7fc1)));

    CHECK(cks_f16_to_f32(0x3c00) == 1.0f);
    CHECK(cks_f16_to_f32(0xc400) == -4.0f);
    CHECK(cks_f16_to_f32(0x7bff) == 65504.0f);
    CHECK(cks_f16_to_f32(0x0001) == 0x1p-24f);
    CHECK(cks_f16_to_f32(0x03ff) == 1023 * 0x1p-24f);
    CHECK(cks_f16_to_f32(0x0400) == 0x1p-14f);
    CHECK(bits_of_f32(cks_f16_to_f32(0x8000)) == 0x80000000u); /* -0 */
    CHECK(isinf(cks_f16_to_f32(0x7c00)) && cks_f16_to_f32(0x7c00) > 0);
    CHECK(isinf(cks_f16_to_f32(0xfc00)) && cks_f16_to_f32(0xfc00) < 0);
    CHECK(isnan(cks_f16_to_f32(0x7e00)));

    /* e4m3fn: bias 7, S.1111.111 NaN, S.1111.110 = 1.75 * 2^8 = 448, no inf */
    CHECK(cks_f8_e4m3_to_f32(0x38) == 1.0f);
    CHECK(cks_f8_e4m3_to_f32(0x7e) == 448.0f);
    CHECK(cks_f8_e4m3_to_f32(0xfe) == -448.0f);
    CHECK(cks_f8_e4m3_to_f32(0x78) == 256.0f); /* exponent 15 is a normal number here */
    CHECK(cks_f8_e4m3_to_f32(0x01) == 0x1p-9f);
    CHECK(cks_f8_e4m3_to_f32(0x08) == 0x1p-6f);
    CHECK(isnan(cks_f8_e4m3_to_f32(0x7f)) && isnan(cks_f8_e4m3_to_f32(0xff)));

    /* e5m2: bias 15, IEEE specials */
    CHECK(cks_f8_e5m2_to_f32(0x3c) == 1.0f);
    CHECK(cks_f8_e5m2_to_f32(0x7b) == 57344.0f);
    CHECK(cks_f8_e5m2_to_f32(0x01) == 0x1p-16f);
    CHECK(isinf(cks_f8_e5m2_to_f32(0x7c)) && cks_f8_e5m2_to_f32(0xfc) < 0);
    CHECK(isnan(cks_f8_e5m2_to_f32(0x7d)));

    /* fnuz: bias + 1, 0x80 is the only NaN */
    CHECK(cks_f8_e4m3fnuz_to_f32(0x40) == 1.0f);
    CHECK(cks_f8_e4m3fnuz_to_f32(0x7f) == 240.0f);
    CHECK(isnan(cks_f8_e4m3fnuz_to_f32(0x80)));
    CHECK(cks_f8_e5m2fnuz_to_f32(0x40) == 1.0f);
    CHECK(cks_f8_e5m2fnuz_to_f32(0x7f) == 57344.0f);
    CHECK(cks_f8_e5m2fnuz_to_f32(0x01) == 0x1p-17f);
    CHECK(isnan(cks_f8_e5m2fnuz_to_f32(0x80)));

    /* e8m0: 2^(e-127) */
    CHECK(cks_f8_e8m0_to_f32(127) == 1.0f);
    CHECK(cks_f8_e8m0_to_f32(128) == 2.0f);
    CHECK(cks_f8_e8m0_to_f32(0) == 0x1p-127f);
    CHECK(cks_f8_e8m0_to_f32(254) == 0x1p127f);
    CHECK(isnan(cks_f8_e8m0_to_f32(255)));
}

/* Every code of the 8- and 16-bit float formats against tests/ref/ref.py, through the bulk API. */
static void all_codes_against_python(void)
{
    static const struct { cks_dtype dtype; const char *name; size_t codes; } formats[] = {
        {CKS_DTYPE_F8_E4M3, "F8_E4M3", 256},         {CKS_DTYPE_F8_E5M2, "F8_E5M2", 256},
        {CKS_DTYPE_F8_E4M3FNUZ, "F8_E4M3FNUZ", 256}, {CKS_DTYPE_F8_E5M2FNUZ, "F8_E5M2FNUZ", 256},
        {CKS_DTYPE_F8_E8M0, "F8_E8M0", 256},         {CKS_DTYPE_BF16, "BF16", 65536},
        {CKS_DTYPE_F16, "F16", 65536},
    };
    pyref_dir dir = {{0}};
    if (!pyref_available())
        SKIP("/usr/bin/python3 with numpy/scipy not available for the reference");
    CHECK(pyref_dir_make(&dir));
    CHECK(pyref_run(&dir, "decode_tables"));
    uint8_t *codes = malloc(2 * 65536);
    float *out32 = malloc(sizeof(float) * 65536);
    double *out64 = malloc(sizeof(double) * 65536);
    for (size_t f = 0; f < sizeof formats / sizeof formats[0]; f++) {
        char file[64];
        size_t bytes = 0;
        snprintf(file, sizeof file, "%s.u32", formats[f].name);
        uint32_t *expected = pyref_read(&dir, file, &bytes);
        CHECK_MSG(expected && bytes == 4 * formats[f].codes, "%s reference missing", file);
        if (!expected)
            continue;
        for (size_t c = 0; c < formats[f].codes; c++) {
            if (formats[f].codes == 256) {
                codes[c] = (uint8_t)c;
            } else {
                codes[2 * c] = (uint8_t)c;
                codes[2 * c + 1] = (uint8_t)(c >> 8);
            }
        }
        cks_nonfinite tally = {0, 0};
        CHECK(cks_decode_f32(formats[f].dtype, codes, formats[f].codes, out32, &tally, NULL) == CKS_OK);
        CHECK(cks_decode_f64(formats[f].dtype, codes, formats[f].codes, out64, NULL, NULL) == CKS_OK);
        size_t mismatches = 0, nan_expected = 0, inf_expected = 0;
        for (size_t c = 0; c < formats[f].codes; c++) {
            float want;
            memcpy(&want, &expected[c], sizeof want);
            nan_expected += isnan(want) != 0;
            inf_expected += isinf(want) != 0;
            if (bits_of_f32(out32[c]) != expected[c])
                mismatches++;
            /* widening float32 -> float64 is exact; NaNs compare by NaN-ness and sign */
            if (isnan(want) ? !(isnan(out64[c]) && !signbit(out64[c]) == !signbit(want))
                            : bits_of_f64(out64[c]) != bits_of_f64((double)want))
                mismatches++;
        }
        CHECK_MSG(mismatches == 0, "%s: %zu codes differ from the reference", formats[f].name, mismatches);
        CHECK_MSG(tally.nan_count == nan_expected && tally.inf_count == inf_expected,
                  "%s: tally nan %llu inf %llu, expected %zu %zu", formats[f].name,
                  (unsigned long long)tally.nan_count, (unsigned long long)tally.inf_count,
                  nan_expected, inf_expected);
        free(expected);
    }
    free(codes);
    free(out32);
    free(out64);
    pyref_dir_remove(&dir);
}

/* The same random bytes read as every dtype, against numpy's astype (float32 and float64). */
static void random_bytes_every_dtype(void)
{
    static const struct { cks_dtype dtype; const char *name; } dtypes[] = {
        {CKS_DTYPE_BOOL, "BOOL"}, {CKS_DTYPE_U8, "U8"},   {CKS_DTYPE_I8, "I8"},
        {CKS_DTYPE_I16, "I16"},   {CKS_DTYPE_U16, "U16"}, {CKS_DTYPE_F16, "F16"},
        {CKS_DTYPE_BF16, "BF16"}, {CKS_DTYPE_I32, "I32"}, {CKS_DTYPE_U32, "U32"},
        {CKS_DTYPE_F32, "F32"},   {CKS_DTYPE_I64, "I64"}, {CKS_DTYPE_U64, "U64"},
        {CKS_DTYPE_F64, "F64"},   {CKS_DTYPE_F8_E4M3, "F8_E4M3"}, {CKS_DTYPE_F8_E5M2, "F8_E5M2"},
        {CKS_DTYPE_F8_E8M0, "F8_E8M0"},
    };
    enum { RAW_BYTES = 8 * 4096 };
    pyref_dir dir = {{0}};
    if (!pyref_available())
        SKIP("/usr/bin/python3 with numpy/scipy not available for the reference");
    /* one extra leading byte so the decoder also sees an unaligned start */
    uint8_t *raw = malloc(RAW_BYTES + 1);
    uint64_t state = 0x9e3779b97f4a7c15ull;
    for (size_t i = 0; i < RAW_BYTES + 1; i++) {
        state = state * 6364136223846793005ull + 1442695040888963407ull;
        raw[i] = (uint8_t)(state >> 56);
    }
    /* plant exact specials and small integers so the interesting cases surely appear */
    memcpy(raw + 1, "\x00\x00\x80\x7f\x00\x00\xc0\x7f\x01\x00\x00\x00", 12);
    char names[512] = "";
    for (size_t d = 0; d < sizeof dtypes / sizeof dtypes[0]; d++) {
        strcat(names, dtypes[d].name);
        strcat(names, " ");
    }
    CHECK(pyref_dir_make(&dir));
    CHECK(pyref_write(&dir, "raw.bin", raw + 1, RAW_BYTES));
    CHECK(pyref_write_text(&dir, "dtypes.txt", names));
    CHECK(pyref_run(&dir, "decode_bytes"));
    float *out32 = malloc(sizeof(float) * RAW_BYTES);
    double *out64 = malloc(sizeof(double) * RAW_BYTES);
    for (size_t d = 0; d < sizeof dtypes / sizeof dtypes[0]; d++) {
        size_t count = RAW_BYTES / cks_decode_elem_size(dtypes[d].dtype), b32 = 0, b64 = 0;
        char f32name[64], f64name[64];
        snprintf(f32name, sizeof f32name, "%s.f32bits", dtypes[d].name);
        snprintf(f64name, sizeof f64name, "%s.f64bits", dtypes[d].name);
        uint32_t *want32 = pyref_read(&dir, f32name, &b32);
        uint64_t *want64 = pyref_read(&dir, f64name, &b64);
        CHECK_MSG(want32 && want64 && b32 == 4 * count && b64 == 8 * count, "%s reference missing",
                  dtypes[d].name);
        if (want32 && want64 && b32 == 4 * count && b64 == 8 * count) {
            CHECK(cks_decode_f32(dtypes[d].dtype, raw + 1, count, out32, NULL, NULL) == CKS_OK);
            CHECK(cks_decode_f64(dtypes[d].dtype, raw + 1, count, out64, NULL, NULL) == CKS_OK);
            size_t bad32 = 0, bad64 = 0;
            for (size_t i = 0; i < count; i++) {
                float w;
                memcpy(&w, &want32[i], sizeof w);
                /* F64 -> F32 narrowing of a NaN: only NaN-ness is specified */
                bool nan_only = dtypes[d].dtype == CKS_DTYPE_F64 && isnan(w);
                if (nan_only ? !isnan(out32[i]) : bits_of_f32(out32[i]) != want32[i])
                    bad32++;
                double w64;
                memcpy(&w64, &want64[i], sizeof w64);
                bool nan64_only = isnan(w64) && dtypes[d].dtype != CKS_DTYPE_F64 &&
                                  dtypes[d].dtype != CKS_DTYPE_F32 && dtypes[d].dtype != CKS_DTYPE_F16;
                if (nan64_only ? !isnan(out64[i]) : bits_of_f64(out64[i]) != want64[i])
                    bad64++;
            }
            CHECK_MSG(bad32 == 0 && bad64 == 0, "%s: %zu float32 and %zu float64 values differ",
                      dtypes[d].name, bad32, bad64);
        }
        free(want32);
        free(want64);
    }
    free(out32);
    free(out64);
    free(raw);
    pyref_dir_remove(&dir);
}

static void rejects_what_it_cannot_decode(void)
{
    uint8_t byte = 0;
    float out = 0;
    cks_diag diag = {{0}};
    CHECK(cks_decode_f32(CKS_DTYPE_F4, &byte, 1, &out, NULL, &diag) == CKS_ERR_UNSUPPORTED);
    CHECK(strstr(diag.text, "F4") != NULL);
    CHECK(cks_decode_f32(CKS_DTYPE_C64, &byte, 1, &out, NULL, NULL) == CKS_ERR_UNSUPPORTED);
    CHECK(cks_decode_f32(CKS_DTYPE_INVALID, &byte, 1, &out, NULL, NULL) == CKS_ERR_UNSUPPORTED);
    CHECK(cks_decode_f32(CKS_DTYPE_F32, NULL, 1, &out, NULL, NULL) == CKS_ERR_INVALID_ARG);
    CHECK(cks_decode_f64(CKS_DTYPE_F32, &byte, 1, NULL, NULL, NULL) == CKS_ERR_INVALID_ARG);
    CHECK(cks_decode_f32(CKS_DTYPE_F64, &byte, SIZE_MAX / 4, &out, NULL, NULL) == CKS_ERR_INVALID_ARG);
    CHECK(cks_decode_f32(CKS_DTYPE_F32, NULL, 0, NULL, NULL, NULL) == CKS_OK);
    CHECK(!cks_decode_supported(CKS_DTYPE_F6_E2M3) && cks_decode_supported(CKS_DTYPE_F8_E8M0));
}

/* The F64 -> F32 narrowing overflows to inf and is counted, never hidden. */
static void tally_counts_narrowing_overflow(void)
{
    double values[3] = {1e300, -1e300, 1.0};
    float out[3];
    cks_nonfinite tally = {0, 0};
    CHECK(cks_decode_f32(CKS_DTYPE_F64, values, 3, out, &tally, NULL) == CKS_OK);
    CHECK(tally.inf_count == 2 && tally.nan_count == 0 && out[2] == 1.0f);
}

/* Real files written by other tools (SafeTensors.jl test data: numpy- and torch-written). */
static void realdata_fluxml_files(void)
{
    const char *realdata = getenv("CKS_REALDATA");
    char base[512], files[2048];
    snprintf(base, sizeof base, "%s/fluxml-safetensors-jl", realdata && *realdata ? realdata : "../shared/realdata");
    if (access(base, R_OK) != 0)
        SKIP("%.150s absent (set CKS_REALDATA)", base);
    if (!pyref_available())
        SKIP("/usr/bin/python3 with numpy/scipy not available for the reference");
    snprintf(files, sizeof files, "%s/non_sharded/model.safetensors\n%s/non_sharded/model.numpy.safetensors\n"
             "%s/old_94850a2/torch.safetensors\n", base, base, base);
    pyref_dir dir = {{0}};
    CHECK(pyref_dir_make(&dir));
    CHECK(pyref_write_text(&dir, "files.txt", files));
    CHECK(pyref_run(&dir, "decode_realdata"));
    char *manifest = pyref_read(&dir, "manifest.txt", NULL);
    CHECK(manifest != NULL);
    size_t tensors = 0, f8_tensors = 0, bf16_tensors = 0;
    for (char *line = manifest ? strtok(manifest, "\n") : NULL; line; line = strtok(NULL, "\n")) {
        int index;
        char dtype_name[32], name[128], path[1024];
        unsigned long long offset, count;
        if (sscanf(line, "%d %31s %llu %llu %127s %1023s", &index, dtype_name, &offset, &count, name, path) != 6) {
            CHECK_MSG(0, "bad manifest line %s", line);
            continue;
        }
        cks_dtype dtype = cks_dtype_from_name(dtype_name, strlen(dtype_name));
        size_t elem = cks_decode_elem_size(dtype);
        CHECK_MSG(elem > 0, "%s: dtype %s not decodable", name, dtype_name);
        if (elem == 0 || count > 1 << 20)
            continue;
        uint8_t *bytes = malloc(count * elem + 1);
        FILE *f = fopen(path, "rb");
        CHECK(f && fseek(f, (long)offset, SEEK_SET) == 0 && fread(bytes, elem, count, f) == count);
        if (f)
            fclose(f);
        char e32[32], e64[32];
        snprintf(e32, sizeof e32, "e%d.f32bits", index);
        snprintf(e64, sizeof e64, "e%d.f64bits", index);
        uint32_t *want32 = pyref_read(&dir, e32, NULL);
        uint64_t *want64 = pyref_read(&dir, e64, NULL);
        float *out32 = malloc(sizeof(float) * count + 1);
        double *out64 = malloc(sizeof(double) * count + 1);
        CHECK(cks_decode_f32(dtype, bytes, count, out32, NULL, NULL) == CKS_OK);
        CHECK(cks_decode_f64(dtype, bytes, count, out64, NULL, NULL) == CKS_OK);
        size_t bad = 0;
        for (size_t i = 0; want32 && want64 && i < count; i++)
            bad += (bits_of_f32(out32[i]) != want32[i]) + (bits_of_f64(out64[i]) != want64[i]);
        CHECK_MSG(bad == 0, "%s %s in %s: %zu values differ", dtype_name, name, path, bad);
        tensors++;
        f8_tensors += dtype == CKS_DTYPE_F8_E4M3 || dtype == CKS_DTYPE_F8_E5M2;
        bf16_tensors += dtype == CKS_DTYPE_BF16;
        free(bytes);
        free(want32);
        free(want64);
        free(out32);
        free(out64);
    }
    CHECK_MSG(tensors >= 90 && f8_tensors >= 12 && bf16_tensors >= 6,
              "only %zu tensors (%zu F8, %zu BF16) checked", tensors, f8_tensors, bf16_tensors);
    free(manifest);
    pyref_dir_remove(&dir);
}

TEST_MAIN(T(hand_worked_values), T(all_codes_against_python), T(random_bytes_every_dtype),
          T(rejects_what_it_cannot_decode), T(tally_counts_narrowing_overflow),
          T(realdata_fluxml_files))
