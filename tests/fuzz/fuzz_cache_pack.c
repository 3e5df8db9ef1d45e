/*
 * Fuzz target: the cache's pack reader. The input is the content of one pack file of a
 * shared cache (several extent images behind a directory; layout in cache/README.md), read
 * through the public API: the directory, each member's header, chunk table and chunks, the
 * salvage that rewrites a damaged pack's good members, a write that merges with members,
 * and `cache verify`.
 *
 * So that mutations get past what they could never guess, the target fixes the directory's
 * checksum, and in every member image the directory points at: the key's fingerprint, the
 * header checksum, and the checksum of every raw chunk inside the file. The file is named
 * from the offset and tag its header states. Invariants: a read that hits returns the same
 * bytes twice; a read that reports no gap holds every byte; a gap lies inside the range asked.
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

#define KEY "sha256:89abcdef0123456789abcdef0123456789abcdef0123456789abcdef01234567"
#define KEY_HEX (&KEY[7])
#define PACK_HEADER 64u
#define PACK_ENTRY 24u
#define MAX_READ (1u << 20)
#define MAX_MEMBERS 64u

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint8_t *img = NULL;
    cks_cache *c = NULL;
    uint64_t offs[MAX_MEMBERS], lens[MAX_MEMBERS];
    uint32_t n = 0;
    const char *root = fuzz_cache_root("pack");
    if (size < PACK_HEADER || size > (8u << 20))
        return 0;
    img = malloc(size);
    memcpy(img, data, size);
    uint32_t n_dir = get32(img + 8);
    size_t dir_len = (size_t)n_dir * PACK_ENTRY;
    if (n_dir <= MAX_MEMBERS && PACK_HEADER + dir_len <= size) {
        n = n_dir;
        for (uint32_t i = 0; i < n; i++) {
            const uint8_t *ent = img + PACK_HEADER + (size_t)i * PACK_ENTRY;
            offs[i] = get64(ent);
            lens[i] = get64(ent + 8);
            fuzz_fix_extent_image(img, size, get64(ent + 16), KEY);
        }
        uint32_t crc = cks_crc32c(0, img, 60);
        crc = cks_crc32c(crc, img + PACK_HEADER, dir_len);
        put32(img + 60, crc);
    }
    uint64_t pack_off = get64(img + 16), tag = get64(img + 24);
    /* the cache holds just this pack */
    c = fuzz_cache_with(root, KEY, 'p', pack_off, tag, img, size);
    if (!c)
        goto out;
    /* every member the directory claims, bounded: a window at its start */
    for (uint32_t i = 0; i < n; i++) {
        uint64_t want = lens[i] < MAX_READ ? lens[i] : MAX_READ;
        if (want > 0 && offs[i] <= UINT64_MAX - want)
            fuzz_check_range(c, KEY, offs[i], want);
    }
    /* a write next to the first member merges with it (or stores around it), then reads back */
    if (n > 0 && lens[0] > 0 && lens[0] <= MAX_READ && offs[0] <= UINT64_MAX - lens[0] - 4096) {
        uint8_t fill[4096];
        memset(fill, 0x5a, sizeof fill);
        cks_range w = {offs[0] + lens[0], sizeof fill};
        const void *wd[] = {fill};
        /* (what reads back is not compared with `fill`: another member may claim those
         * offsets with other bytes that pass their checksums, which no real writer makes) */
        (void)cks_cache_write_many(c, KEY, &w, wd, 1, NULL);
        fuzz_check_range(c, KEY, offs[0], lens[0] + 4096);
    }
    cks_cache_verify_report rep;
    if (cks_cache_verify(c, false, &rep, NULL) == CKS_OK)
        cks_cache_verify_report_release(&rep);
out:
    free(img);
    cks_cache_free(c);
    return 0;
}
