/*
 * ckptscope/safetensors.h — parse and validate safetensors headers and sharded indexes.
 *
 * Validation follows the reference crate (huggingface/safetensors, tensor.rs,
 * research notes hub-protocol.md §B) rule for rule, and errors carry its names:
 *   HeaderTooSmall, HeaderTooLarge (N > 100,000,000), InvalidHeaderLength, InvalidHeader
 *   (not UTF-8), InvalidHeaderDeserialization (not the JSON shape: bad dtype, negative or
 *   fractional dims, control bytes, a BOM, __metadata__ values not strings, ...),
 *   InvalidOffset (tensors sorted by offset must be contiguous from 0), ValidationOverflow
 *   (checked shape products), MisalignedSlice (sub-byte dtypes), TensorInvalidInfo (byte
 *   size != shape x dtype), MetadataIncompleteBuffer (last tensor must end at end of file).
 * Stricter than the reference, on purpose: duplicate keys are rejected (the reference keeps
 * the last one silently), as is an escaped NUL in a key (a C string would truncate it).
 * Recognised before any of that: a Git-LFS pointer, an HTML page, other text, and a file
 * too short for the header it declares (Truncated, with how many bytes are missing).
 *
 * The parser never needs the data section: the caller passes the bytes it has from the
 * start of the file and the total file size (from stat, Content-Range or X-Linked-Size).
 * With too few bytes it returns CKS_ERR_NEED_MORE and sets *need to the byte count it
 * needs, so a remote reader can fetch 0-7 (or a generous first chunk) and then the header.
 */
#ifndef CKPTSCOPE_SAFETENSORS_H
#define CKPTSCOPE_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "ckptscope/dtype.h"
#include "ckptscope/error.h"
#include "ckptscope/source.h"

#define CKS_ST_MAX_HEADER 100000000ULL /* the reference crate's MAX_HEADER_SIZE */
#define CKS_ST_MAX_NDIM 64              /* no real tensor has more; bounds the shape arrays */
/* The first read of a header (cks_st_read_header, and a remote reader's header prefetch):
 * small, so at most this much is read past a short header; a longer header costs one more
 * read of exactly its length. Both sides use this one value so the parser finds in memory
 * exactly what was prefetched. */
#define CKS_ST_FIRST_READ (4u * 1024u)

typedef struct cks_tensor_info {
    char *name;
    cks_dtype dtype;
    uint32_t ndim;
    uint64_t *shape;       /* ndim entries (NULL when ndim == 0: a scalar) */
    uint64_t nelements;    /* product of shape; 1 for a scalar */
    uint64_t begin, end;   /* data_offsets, relative to the data section */
    uint64_t file_offset;  /* absolute offset of the first byte in the file (8 + N + begin) */
} cks_tensor_info;

typedef struct cks_st_header {
    uint64_t header_len;   /* N */
    uint64_t data_start;   /* 8 + N */
    uint64_t file_size;
    size_t n_tensors;
    cks_tensor_info *tensors;  /* sorted by data_offsets, as the reference validates them */
    size_t n_metadata;
    char **metadata_keys;      /* __metadata__, in file order */
    char **metadata_values;
} cks_st_header;

/*
 * Parse the header from `buf` (the first `buf_len` bytes of a file of `file_size` bytes).
 * On CKS_ERR_NEED_MORE, *need holds the total number of leading bytes required.
 * `need` may be NULL when the caller always passes the whole header.
 */
cks_err cks_st_parse(const uint8_t *buf, size_t buf_len, uint64_t file_size,
                     cks_st_header **out, uint64_t *need, cks_diag *diag);

/*
 * Parse a header without knowing the file's size: every rule but the reference's last one
 * (the last tensor ends at the end of the file). The returned hdr->file_size is the size
 * the header implies, 8 + N + the end of the last tensor's data. For reporting a size
 * disagreement (a truncated file, a server that serves another size) next to the header
 * it contradicts; cks_st_parse is the validation.
 */
cks_err cks_st_parse_layout(const uint8_t *buf, size_t buf_len, cks_st_header **out, uint64_t *need,
                            cks_diag *diag);

/* Read and parse the header of a source: first chunk, then the rest if needed. */
cks_err cks_st_read_header(cks_source *src, cks_st_header **out, cks_diag *diag);

/* Linear search by exact name; NULL when absent. */
const cks_tensor_info *cks_st_find(const cks_st_header *hdr, const char *name);

void cks_st_header_free(cks_st_header *hdr);

/*
 * Recognise what users download instead of a safetensors file, from its first bytes:
 * CKS_ERR_LFS_POINTER, CKS_ERR_HTML_PAGE, CKS_ERR_TEXT_FILE, or CKS_OK when it does not
 * look like any of them. Used by cks_st_parse; public for the range engine.
 */
cks_err cks_st_sniff(const uint8_t *buf, size_t buf_len, uint64_t file_size, cks_diag *diag);

/* ---- sharded checkpoints: model.safetensors.index.json ---- */

typedef struct cks_st_index_entry {
    char *tensor;
    size_t shard;          /* index into shards[] */
} cks_st_index_entry;

typedef struct cks_st_index {
    size_t n_entries;
    cks_st_index_entry *entries;  /* sorted by tensor name */
    size_t n_shards;
    char **shards;                /* distinct shard paths, sorted; each checked safe */
    int64_t total_size;           /* metadata.total_size, -1 when absent */
} cks_st_index;

/* Parse an index (explicit length, case-sensitive, duplicate keys rejected, shard paths
 * with "..", a leading "/", a backslash or "://" rejected as CKS_ERR_UNSAFE_PATH). */
cks_err cks_st_index_parse(const char *json, size_t len, cks_st_index **out, cks_diag *diag);

/* The JSON parser (cJSON) refuses arrays and objects nested deeper than this; the parsers
 * name the depth instead of saying "not valid JSON". */
#define CKS_JSON_MAX_DEPTH 1000
/* Offset of the first '[' or '{' (outside strings) that opens level CKS_JSON_MAX_DEPTH + 1,
 * or len when the text never nests that deep. */
size_t cks_json_too_deep_at(const char *json, size_t len);
void cks_st_index_free(cks_st_index *index);

#endif
