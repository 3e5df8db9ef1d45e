/*
 * Fuzz target: the cache's extent reader. The input is the content of one extent file of a
 * shared cache (which anyone with write access could have planted or damaged), read through
 * the public API (cks_cache_read, cks_cache_read_some, cks_cache_missing): header, chunk
 * table, stored offsets and lengths, raw and zstd chunks, checksums, and the salvage of a
 * damaged extent's good chunks.
 *
 * So that mutations get past what they could never guess, the target writes the key's
 * fingerprint into the header, fixes the header checksum, and fixes the checksum of every
 * raw chunk that lies inside the file; what the chunks hold, how the table points at them
 * and zstd payloads stay as the fuzzer made them. The file is named from the offset and
 * length its header states. Invariants: a read that hits returns the same bytes twice; a
 * read that reports no gap really holds every byte of the range.
 */
#include <dirent.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fuzz_cache_files.h"
#include "storage/cache_internal.h"
#include "ckptscope/cache.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define KEY "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
#define KEY_HEX (&KEY[7])
#define HEADER 64u
#define MAX_READ (1u << 20)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint8_t *img = NULL;
    cks_cache *c = NULL;
    const char *root = fuzz_cache_root("extent");
    if (size < HEADER || size > (8u << 20))
        return 0;
    img = malloc(size);
    memcpy(img, data, size);
    fuzz_fix_extent_image(img, size, 0, KEY);
    uint64_t off = get64(img + 8), len = get64(img + 16);
    /* the cache holds just this extent */
    c = fuzz_cache_with(root, KEY, 'x', off, len, img, size);
    if (!c)
        goto out;
    /* what the name claims, bounded: a window at the start of the extent */
    uint64_t want = len < MAX_READ ? len : MAX_READ;
    if (want == 0 || off > UINT64_MAX - want)
        goto out;
    fuzz_check_range(c, KEY, off, want);
out:
    free(img);
    cks_cache_free(c);
    return 0;
}
