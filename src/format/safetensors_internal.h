/* The safetensors parser's internals that tests reach (src/format/safetensors.c). */
#ifndef CKPTSCOPE_SAFETENSORS_INTERNAL_H
#define CKPTSCOPE_SAFETENSORS_INTERNAL_H

#include "ckptscope/safetensors.h"

/*
 * cks_st_parse with the whole header given, through cJSON's tree only: the parser that
 * decides every header the flat path declines. The differential test holds the two to
 * the same answers.
 */
cks_err cks_st_parse_tree_only(const uint8_t *buf, size_t buf_len, uint64_t file_size, cks_st_header **out,
                               cks_diag *diag);

/* True when the flat path alone takes the header of this file (no tree needed). */
bool cks_st_flat_accepts(const uint8_t *buf, size_t buf_len);

/* The same pair for model.safetensors.index.json: cks_st_index_parse through cJSON's tree
 * only, and whether the flat path alone takes an index. */
cks_err cks_st_index_parse_tree_only(const char *json, size_t len, cks_st_index **out, cks_diag *diag);
bool cks_st_index_flat_accepts(const char *json, size_t len);

#endif
