/* Fuzz target: the model.safetensors.index.json parser. */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "ckptscope/safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    cks_st_index *index = NULL;
    cks_diag diag;
    if (cks_st_index_parse((const char *)data, size, &index, &diag) == CKS_OK && index) {
        for (size_t i = 0; i < index->n_entries; i++) {
            const char *shard = index->shards[index->entries[i].shard];
            size_t len = strlen(shard);
            bool dotdot = strncmp(shard, "../", 3) == 0 || strcmp(shard, "..") == 0 || strstr(shard, "/../") ||
                          (len >= 3 && strcmp(shard + len - 3, "/..") == 0);
            if (shard[0] == '/' || dotdot || strstr(shard, "://"))
                __builtin_trap(); /* an unsafe path got through */
        }
    }
    cks_st_index_free(index);
    return 0;
}
