/* Fuzz target: the safetensors header parser, given the bytes as a whole file and as a
 * prefix of a larger remote file (the range-engine path), and the layout-only parse; and
 * the flat path against the tree path it stands in for (same code, same message, same
 * table). */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "ckptscope/safetensors.h"
#include "format/safetensors_internal.h"

/* The two parsers agree on these bytes taken as a whole file. */
static void flat_matches_tree(const uint8_t *data, size_t size)
{
    cks_st_header *a = NULL, *b = NULL;
    cks_diag da, db;
    cks_err ea = cks_st_parse(data, size, size, &a, NULL, &da);
    cks_err eb = cks_st_parse_tree_only(data, size, size, &b, &db);
    if (ea != eb || (ea != CKS_OK && strcmp(da.text, db.text) != 0))
        __builtin_trap();
    if (ea == CKS_OK) {
        if (a->n_tensors != b->n_tensors || a->n_metadata != b->n_metadata)
            __builtin_trap();
        for (size_t i = 0; i < a->n_tensors; i++) {
            const cks_tensor_info *x = &a->tensors[i], *y = &b->tensors[i];
            if (strcmp(x->name, y->name) != 0 || x->dtype != y->dtype || x->ndim != y->ndim || x->begin != y->begin ||
                x->end != y->end || (x->ndim && memcmp(x->shape, y->shape, x->ndim * sizeof *x->shape) != 0))
                __builtin_trap();
        }
        for (size_t i = 0; i < a->n_metadata; i++)
            if (strcmp(a->metadata_keys[i], b->metadata_keys[i]) != 0 ||
                strcmp(a->metadata_values[i], b->metadata_values[i]) != 0)
                __builtin_trap();
    }
    cks_st_header_free(a);
    cks_st_header_free(b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    cks_st_header *hdr = NULL;
    cks_diag diag;
    uint64_t need = 0;
    cks_err err;
    flat_matches_tree(data, size);
    err = cks_st_parse(data, size, size, &hdr, &need, &diag);
    if (err == CKS_OK && hdr) {
        /* invariants of an accepted header */
        uint64_t at = 0;
        for (size_t i = 0; i < hdr->n_tensors; i++) {
            if (hdr->tensors[i].begin != at)
                __builtin_trap();
            at = hdr->tensors[i].end;
        }
        if (hdr->data_start + at != size)
            __builtin_trap();
    }
    cks_st_header_free(hdr);
    hdr = NULL;
    /* the same bytes as the start of a file twice as long */
    err = cks_st_parse(data, size, (uint64_t)size * 2 + 8, &hdr, &need, &diag);
    if (err == CKS_ERR_NEED_MORE && need <= size)
        __builtin_trap(); /* asked for bytes it already had */
    cks_st_header_free(hdr);
    hdr = NULL;
    /* without the end-of-file rule (verify's size report): it accepts whatever the full parse
     * accepts, with the same implied size, and then the size it implies is the file's */
    {
        cks_err full = cks_st_parse(data, size, size, &hdr, NULL, &diag);
        cks_st_header *lay = NULL;
        cks_st_header_free(hdr);
        hdr = NULL;
        err = cks_st_parse_layout(data, size, &lay, &need, &diag);
        if (full == CKS_OK && (err != CKS_OK || !lay || lay->file_size != size))
            __builtin_trap();
        if (err == CKS_OK && lay && lay->file_size == size && full != CKS_OK)
            __builtin_trap(); /* implies exactly this size, yet the full parse refused it */
        if (err == CKS_ERR_NEED_MORE && need <= size)
            __builtin_trap();
        cks_st_header_free(lay);
    }
    return 0;
}
