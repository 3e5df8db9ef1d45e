/*
 * Fuzz target: the fingerprint reader (cks_fingerprint_decode). A fingerprint is untrusted
 * input (a shared directory of known models), and its payload sits inside a zstd frame that
 * random bytes almost never get through, so the first byte chooses what the rest is:
 * 0 = a whole file; 1, 2, 3 = the decompressed payload of that format version, which this
 * target compresses and frames itself so mutations reach the JSON and array readers.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <zstd.h>

#include "ckptscope/fingerprint.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void decode_and_free(const uint8_t *buf, size_t len)
{
    cks_fingerprint *fp = NULL;
    cks_diag diag;
    if (cks_fingerprint_decode(buf, len, &fp, &diag) == CKS_OK) {
        /* a decoded fingerprint must be internally consistent: touch what compare reads */
        volatile float sink = 0;
        if (!fp)
            __builtin_trap();
        for (size_t i = 0; fp->embed && i < fp->n_tokens * fp->embed_cols; i++)
            sink += fp->embed[i];
        for (size_t i = 0; i < fp->n_tokens; i++)
            if (fp->tokens[i].len && !fp->tokens[i].text)
                __builtin_trap();
        (void)sink;
    }
    cks_fingerprint_free(fp);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint8_t *file;
    size_t bound, zlen;
    if (size < 1)
        return 0;
    if (data[0] % 4 == 0) {
        decode_and_free(data + 1, size - 1);
        return 0;
    }
    bound = ZSTD_compressBound(size - 1);
    file = malloc(20 + bound);
    if (!file)
        return 0;
    memcpy(file, CKS_FP_MAGIC, 8);
    for (int i = 0; i < 4; i++)
        file[8 + i] = (uint8_t)((data[0] % 4) >> (8 * i));
    for (int i = 0; i < 8; i++)
        file[12 + i] = (uint8_t)((uint64_t)(size - 1) >> (8 * i));
    zlen = ZSTD_compress(file + 20, bound, data + 1, size - 1, 1);
    if (!ZSTD_isError(zlen))
        decode_and_free(file, 20 + zlen);
    free(file);
    return 0;
}
