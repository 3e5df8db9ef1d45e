/*
 * The fixture table: valid files of every dtype and shape edge case, and one corrupt file
 * per validation rule, each with the error the reference rules demand.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "stwriter.h"

#define S(x) x, sizeof(x) - 1

/* ---- valid files ---- */

static void build_every_dtype(st_buf *out)
{
    st_writer *w = st_writer_new();
    st_writer_meta(w, "format", "pt");
    for (int d = CKS_DTYPE_INVALID + 1; d < CKS_DTYPE__COUNT; d++) {
        /* 12 elements is a whole number of bytes even for F4 (4 bits) and F6 (6 bits) */
        uint64_t shape[2] = {3, 4};
        char name[64];
        snprintf(name, sizeof name, "tensor.%s", cks_dtype_name((cks_dtype)d));
        st_writer_add(w, name, (cks_dtype)d, shape, 2, NULL);
    }
    st_writer_finish(w, out);
    st_writer_free(w);
}

static void build_edge_shapes(st_buf *out)
{
    st_writer *w = st_writer_new();
    uint64_t zero[2] = {2, 0}, one[1] = {1}, big[3] = {2, 3, 5};
    st_writer_add(w, "scalar", CKS_DTYPE_I32, NULL, 0, NULL);  /* shape [] is one element */
    st_writer_add(w, "empty_a", CKS_DTYPE_F32, zero, 2, NULL); /* zero-size tensors share an offset */
    st_writer_add(w, "empty_b", CKS_DTYPE_BF16, zero, 2, NULL);
    st_writer_add(w, "one", CKS_DTYPE_F64, one, 1, NULL);
    st_writer_add(w, "cube", CKS_DTYPE_F16, big, 3, NULL);
    st_writer_finish(w, out);
    st_writer_free(w);
}

#define RAW(fn, header, data_len)                                                                  \
    static void fn(st_buf *out) { st_raw_file(S(header), data_len, out); }

/* The reference accepts {} as a whole file, padded with spaces. */
RAW(build_empty, "{}      ", 0)
/* JSON whitespace other than spaces after the object; leading whitespace; keys out of offset order. */
RAW(build_whitespace, "\n\t {\"b\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[2,4]},"
                      "\"a\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2]}} \r\n\t",
    4)
RAW(build_metadata_null, "{\"__metadata__\":null,\"x\":{\"dtype\":\"I8\",\"shape\":[3],\"data_offsets\":[0,3]}}", 3)
/* An unknown field inside a tensor object: serde ignores it, so must we. */
RAW(build_extra_field, "{\"x\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1],\"extra\":[1.5]}}", 1)

/* ---- corrupt files, one per rule ---- */

static void build_header_too_small(st_buf *out)
{
    memset(out, 0, sizeof *out);
    st_buf_append(out, "\x05\x00\x00", 3);
}

static void build_header_too_large(st_buf *out)
{
    st_raw_file_declared(100000001ULL, S("{}"), 64, out);
}

static void build_invalid_header_length(st_buf *out)
{
    st_raw_file_declared(1000, S("{\"x\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}"), 1, out);
}

RAW(build_not_utf8, "{\"bad\xff\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1)
RAW(build_overlong_utf8, "{\"bad\xc0\xaf\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1)
RAW(build_not_json, "{\"x\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}", 1)
RAW(build_json_array, "[{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}]", 1)
RAW(build_unknown_dtype, "{\"weight\":{\"dtype\":\"f32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4)
RAW(build_negative_dim, "{\"weight\":{\"dtype\":\"U8\",\"shape\":[-1],\"data_offsets\":[0,1]}}", 1)
RAW(build_fractional_dim, "{\"weight\":{\"dtype\":\"U8\",\"shape\":[1.5],\"data_offsets\":[0,1]}}", 1)
RAW(build_three_offsets, "{\"weight\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1,2]}}", 1)
RAW(build_missing_dtype, "{\"weight\":{\"shape\":[1],\"data_offsets\":[0,1]}}", 1)
RAW(build_string_dim, "{\"weight\":{\"dtype\":\"U8\",\"shape\":[\"1\"],\"data_offsets\":[0,1]}}", 1)
RAW(build_metadata_not_string, "{\"__metadata__\":{\"epoch\":3},\"w\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1)
RAW(build_trailing_garbage, "{\"w\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}} x", 1)
RAW(build_nul_padding, "{\"w\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}\0\0\0", 1)
RAW(build_bom, "\xef\xbb\xbf{\"w\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1)
RAW(build_escaped_nul, "{\"w\\u0000x\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1)
RAW(build_duplicate_tensor, "{\"w\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
                            "\"w\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,2]}}",
    2)
RAW(build_duplicate_metadata, "{\"__metadata__\":{\"a\":\"1\"},\"__metadata__\":{\"a\":\"2\"}}", 0)
RAW(build_offset_not_zero, "{\"late\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[1,3]}}", 3)
RAW(build_offset_gap, "{\"a\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2]},"
                      "\"gap_after\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[3,5]}}",
    5)
RAW(build_offset_overlap, "{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]},"
                          "\"overlapping\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[2,6]}}",
    6)
RAW(build_offset_inverted, "{\"inverted\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[0,0]},"
                           "\"b\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[2,1]}}",
    1)
RAW(build_overflow, "{\"huge\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,4]}}", 4)
RAW(build_misaligned, "{\"odd_fp4\":{\"dtype\":\"F4\",\"shape\":[3],\"data_offsets\":[0,2]}}", 2)
RAW(build_size_mismatch, "{\"short\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,12]}}", 12)
RAW(build_trailing_bytes, "{\"w\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]}}", 9)
RAW(build_truncated, "{\"w\":{\"dtype\":\"F32\",\"shape\":[256],\"data_offsets\":[0,1024]}}", 700)

static void build_lfs_pointer(st_buf *out)
{
    memset(out, 0, sizeof *out);
    st_buf_printf(out, "version https://git-lfs.github.com/spec/v1\n"
                       "oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\n"
                       "size 20236472\n");
}

static void build_html_page(st_buf *out)
{
    memset(out, 0, sizeof *out);
    st_buf_printf(out, "<!DOCTYPE html>\n<html><head><title>Sign in</title></head><body>Access to this "
                       "model is restricted.</body></html>\n");
}

static void build_text_file(st_buf *out)
{
    memset(out, 0, sizeof *out);
    st_buf_printf(out, "../../blobs/5f2c3a8d1e0b7c4a9f6e2d1c0b9a8f7e6d5c4b3a\n");
}

const st_fixture st_fixtures[] = {
    {"valid_every_dtype", CKS_OK, NULL, build_every_dtype},
    {"valid_edge_shapes", CKS_OK, NULL, build_edge_shapes},
    {"valid_empty", CKS_OK, NULL, build_empty},
    {"valid_whitespace_unordered", CKS_OK, NULL, build_whitespace},
    {"valid_metadata_null", CKS_OK, NULL, build_metadata_null},
    {"valid_extra_field", CKS_OK, NULL, build_extra_field},
    {"bad_header_too_small", CKS_ERR_HEADER_TOO_SMALL, "3 bytes", build_header_too_small},
    {"bad_header_too_large", CKS_ERR_HEADER_TOO_LARGE, "100000001", build_header_too_large},
    {"bad_invalid_header_length", CKS_ERR_INVALID_HEADER_LENGTH, "1000", build_invalid_header_length},
    {"bad_not_utf8", CKS_ERR_INVALID_HEADER, "offset 13", build_not_utf8},
    {"bad_overlong_utf8", CKS_ERR_INVALID_HEADER, "offset 13", build_overlong_utf8},
    {"bad_not_json", CKS_ERR_INVALID_HEADER_DESERIALIZATION, "not valid JSON", build_not_json},
    {"bad_json_array", CKS_ERR_INVALID_HEADER_DESERIALIZATION, "not an object", build_json_array},
    {"bad_unknown_dtype", CKS_ERR_INVALID_HEADER_DESERIALIZATION, "\"f32\"", build_unknown_dtype},
    {"bad_negative_dim", CKS_ERR_INVALID_HEADER_DESERIALIZATION, "weight", build_negative_dim},
    {"bad_fractional_dim", CKS_ERR_INVALID_HEADER_DESERIALIZATION, "1.5", build_fractional_dim},
    {"bad_three_offsets", CKS_ERR_INVALID_HEADER_DESERIALIZATION, "exactly two", build_three_offsets},
    {"bad_missing_dtype", CKS_ERR_INVALID_HEADER_DESERIALIZATION, "lacks \"dtype\"", build_missing_dtype},
    {"bad_string_dim", CKS_ERR_INVALID_HEADER_DESERIALIZATION, "non-number", build_string_dim},
    {"bad_metadata_not_string", CKS_ERR_INVALID_HEADER_DESERIALIZATION, "epoch", build_metadata_not_string},
    {"bad_trailing_garbage", CKS_ERR_INVALID_HEADER_DESERIALIZATION, "trailing", build_trailing_garbage},
    {"bad_nul_padding", CKS_ERR_INVALID_HEADER_DESERIALIZATION, "control byte", build_nul_padding},
    {"bad_bom", CKS_ERR_INVALID_HEADER_DESERIALIZATION, "byte-order mark", build_bom},
    {"bad_escaped_nul", CKS_ERR_INVALID_HEADER_DESERIALIZATION, "NUL", build_escaped_nul},
    {"bad_duplicate_tensor", CKS_ERR_DUPLICATE_KEY, "\"w\"", build_duplicate_tensor},
    {"bad_duplicate_metadata", CKS_ERR_DUPLICATE_KEY, "__metadata__", build_duplicate_metadata},
    {"bad_offset_not_zero", CKS_ERR_INVALID_OFFSET, "late", build_offset_not_zero},
    {"bad_offset_gap", CKS_ERR_INVALID_OFFSET, "gap_after", build_offset_gap},
    {"bad_offset_overlap", CKS_ERR_INVALID_OFFSET, "overlapping", build_offset_overlap},
    {"bad_offset_inverted", CKS_ERR_INVALID_OFFSET, "end before", build_offset_inverted},
    {"bad_validation_overflow", CKS_ERR_VALIDATION_OVERFLOW, "huge", build_overflow},
    {"bad_misaligned_slice", CKS_ERR_MISALIGNED_SLICE, "odd_fp4", build_misaligned},
    {"bad_tensor_invalid_info", CKS_ERR_TENSOR_INVALID_INFO, "short", build_size_mismatch},
    {"bad_trailing_bytes", CKS_ERR_METADATA_INCOMPLETE_BUFFER, "5 trailing bytes", build_trailing_bytes},
    {"bad_truncated", CKS_ERR_TRUNCATED, "324 bytes are missing", build_truncated},
    {"bad_lfs_pointer", CKS_ERR_LFS_POINTER, "git lfs", build_lfs_pointer},
    {"bad_html_page", CKS_ERR_HTML_PAGE, "HTML", build_html_page},
    {"bad_text_file", CKS_ERR_TEXT_FILE, "../../blobs", build_text_file},
};
const size_t st_n_fixtures = sizeof st_fixtures / sizeof st_fixtures[0];

const st_index_fixture st_index_fixtures[] = {
    {"valid", "{\"metadata\":{\"total_size\":12},\"weight_map\":{\"b\":\"s2.safetensors\",\"a\":\"s1.safetensors\","
              "\"c\":\"sub/s3.safetensors\"}}",
     CKS_OK, NULL},
    {"dotdot", "{\"weight_map\":{\"a\":\"../outside.safetensors\"}}", CKS_ERR_UNSAFE_PATH, ".."},
    {"dotdot_inner", "{\"weight_map\":{\"a\":\"x/../../y.safetensors\"}}", CKS_ERR_UNSAFE_PATH, ".."},
    {"absolute", "{\"weight_map\":{\"a\":\"/etc/passwd\"}}", CKS_ERR_UNSAFE_PATH, "absolute"},
    {"url", "{\"weight_map\":{\"a\":\"https://evil.example/x.safetensors\"}}", CKS_ERR_UNSAFE_PATH, "URL"},
    {"backslash", "{\"weight_map\":{\"a\":\"..\\\\x.safetensors\"}}", CKS_ERR_UNSAFE_PATH, "backslash"},
    {"empty_path", "{\"weight_map\":{\"a\":\"\"}}", CKS_ERR_UNSAFE_PATH, "empty"},
    {"not_json", "{\"weight_map\":", CKS_ERR_INDEX_INVALID, "JSON"},
    {"no_weight_map", "{\"metadata\":{}}", CKS_ERR_INDEX_INVALID, "weight_map"},
    {"value_not_string", "{\"weight_map\":{\"a\":3}}", CKS_ERR_INDEX_INVALID, "\"a\""},
    {"duplicate_tensor", "{\"weight_map\":{\"a\":\"s1.safetensors\",\"a\":\"s2.safetensors\"}}", CKS_ERR_INDEX_INVALID,
     "\"a\""},
};
const size_t st_n_index_fixtures = sizeof st_index_fixtures / sizeof st_index_fixtures[0];

/* ---- a sharded checkpoint on disk ---- */

static int write_buf(const char *dir, const char *name, const st_buf *b)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    return st_write_file(path, b->data, b->len);
}

static int write_text(const char *dir, const char *name, const char *text)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    return st_write_file(path, text, strlen(text));
}

static int write_sharded(const char *dir, bool mismatch)
{
    st_buf b = {0};
    st_writer *w;
    uint64_t vec[1] = {8}, mat[2] = {4, 8};
    int rc = 0;

    if (mkdir(dir, 0755) != 0 && errno != EEXIST)
        return -1;
    w = st_writer_new();
    st_writer_meta(w, "format", "pt");
    st_writer_add(w, "model.embed_tokens.weight", CKS_DTYPE_BF16, mat, 2, NULL);
    st_writer_add(w, "model.layers.0.input_layernorm.weight", CKS_DTYPE_BF16, vec, 1, NULL);
    st_writer_finish(w, &b);
    rc |= write_buf(dir, "model-00001-of-00002.safetensors", &b);
    st_buf_free(&b);
    st_writer_free(w);
    w = st_writer_new();
    st_writer_meta(w, "format", "pt");
    st_writer_add(w, "model.layers.0.self_attn.k_proj.weight", CKS_DTYPE_BF16, mat, 2, NULL);
    st_writer_add(w, "model.norm.weight", CKS_DTYPE_F32, vec, 1, NULL);
    st_writer_finish(w, &b);
    rc |= write_buf(dir, "model-00002-of-00002.safetensors", &b);
    st_buf_free(&b);
    st_writer_free(w);
    rc |= write_text(dir, "model.safetensors.index.json",
                     mismatch ? "{\"metadata\":{\"total_size\":176},\"weight_map\":{"
                                "\"model.embed_tokens.weight\":\"model-00001-of-00002.safetensors\","
                                "\"model.layers.0.input_layernorm.weight\":\"model-00002-of-00002.safetensors\","
                                "\"model.layers.0.self_attn.k_proj.weight\":\"model-00002-of-00002.safetensors\","
                                "\"model.norm.weight\":\"model-00002-of-00002.safetensors\"}}\n"
                              : "{\"metadata\":{\"total_size\":176},\"weight_map\":{"
                                "\"model.embed_tokens.weight\":\"model-00001-of-00002.safetensors\","
                                "\"model.layers.0.input_layernorm.weight\":\"model-00001-of-00002.safetensors\","
                                "\"model.layers.0.self_attn.k_proj.weight\":\"model-00002-of-00002.safetensors\","
                                "\"model.norm.weight\":\"model-00002-of-00002.safetensors\"}}\n");
    return rc;
}

int st_write_fixture_dir(const char *dir)
{
    char sub[4096];
    int rc = 0;
    if (mkdir(dir, 0755) != 0 && errno != EEXIST)
        return -1;
    for (size_t i = 0; i < st_n_fixtures; i++) {
        st_buf b = {0};
        char name[256];
        st_fixtures[i].build(&b);
        snprintf(name, sizeof name, "%s.safetensors", st_fixtures[i].name);
        rc |= write_buf(dir, name, &b);
        st_buf_free(&b);
    }
    snprintf(sub, sizeof sub, "%s/sharded", dir);
    rc |= write_sharded(sub, false);
    snprintf(sub, sizeof sub, "%s/sharded-mismatch", dir);
    rc |= write_sharded(sub, true);
    return rc;
}
