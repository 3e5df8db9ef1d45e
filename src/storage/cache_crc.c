/*
 * Chunk checksums for the cache.
 *
 * A warm-cache run must hash tensors almost as fast as from a plain file (DESIGN.md §11),
 * so verifying a chunk has to cost a small fraction of the SHA-256 the analysis computes
 * anyway. SHA-256 itself would double the cost; CRC32C has a one-cycle-throughput x86
 * instruction whose three-cycle latency a single dependency chain cannot hide. Four
 * independent lanes over interleaved 8-byte words keep the unit busy. Every single-bit
 * flip lands in exactly one lane, and CRC32C detects all of those (and all bursts up to
 * 32 bits), which is the failure we guard against: disks and copies, not adversaries.
 *
 * Definition (the portable code is the specification, the SSE4.2 code an equivalent):
 *   lane k, k = 0..3, is CRC32C (Castagnoli, reflected, init and final xor 0xFFFFFFFF) of
 *   the concatenation of bytes [32*i + 8*k, 32*i + 8*k + 8) for every full 32-byte block i;
 *   lane 0 then continues over the len % 32 trailing bytes.
 */
#include "ckptscope/cache.h"
#include "cache_internal.h"

#include <string.h>

#if defined(__x86_64__)
#include <nmmintrin.h>
#endif

static uint32_t crc_table[256];
static int crc_table_ready;

static void crc_table_init(void)
{
    /* A benign race: every thread computes the same table. */
    if (__atomic_load_n(&crc_table_ready, __ATOMIC_ACQUIRE))
        return;
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int b = 0; b < 8; b++)
            c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
        crc_table[i] = c;
    }
    __atomic_store_n(&crc_table_ready, 1, __ATOMIC_RELEASE);
}

/* Raw update without the init/final inversion. */
static uint32_t crc_update_sw(uint32_t crc, const unsigned char *p, size_t len)
{
    for (size_t i = 0; i < len; i++)
        crc = crc_table[(crc ^ p[i]) & 0xFF] ^ (crc >> 8);
    return crc;
}

void cks_cache_checksum_portable(const void *data, size_t len, uint32_t out[4])
{
    const unsigned char *p = data;
    uint32_t lane[4] = {0xFFFFFFFFu, 0xFFFFFFFFu, 0xFFFFFFFFu, 0xFFFFFFFFu};
    size_t blocks = len / 32;

    crc_table_init();
    for (size_t i = 0; i < blocks; i++)
        for (int k = 0; k < 4; k++)
            lane[k] = crc_update_sw(lane[k], p + 32 * i + 8 * (size_t)k, 8);
    lane[0] = crc_update_sw(lane[0], p + 32 * blocks, len % 32);
    for (int k = 0; k < 4; k++)
        out[k] = ~lane[k];
}

#if defined(__x86_64__)
__attribute__((target("sse4.2"))) static void checksum_sse42(const void *data, size_t len,
                                                            uint32_t out[4])
{
    const unsigned char *p = data;
    uint64_t l0 = 0xFFFFFFFFu, l1 = 0xFFFFFFFFu, l2 = 0xFFFFFFFFu, l3 = 0xFFFFFFFFu;
    size_t blocks = len / 32;

    for (size_t i = 0; i < blocks; i++, p += 32) {
        uint64_t w0, w1, w2, w3;
        /* memcpy: the buffer has no alignment guarantee */
        memcpy(&w0, p, 8);
        memcpy(&w1, p + 8, 8);
        memcpy(&w2, p + 16, 8);
        memcpy(&w3, p + 24, 8);
        l0 = _mm_crc32_u64(l0, w0);
        l1 = _mm_crc32_u64(l1, w1);
        l2 = _mm_crc32_u64(l2, w2);
        l3 = _mm_crc32_u64(l3, w3);
    }
    uint32_t c0 = (uint32_t)l0;
    for (size_t i = 0; i < len % 32; i++)
        c0 = _mm_crc32_u8(c0, p[i]);
    out[0] = ~c0;
    out[1] = ~(uint32_t)l1;
    out[2] = ~(uint32_t)l2;
    out[3] = ~(uint32_t)l3;
}
#endif

void cks_cache_checksum(const void *data, size_t len, uint32_t out[4])
{
#if defined(__x86_64__)
    if (__builtin_cpu_supports("sse4.2")) {
        checksum_sse42(data, len, out);
        return;
    }
#endif
    cks_cache_checksum_portable(data, len, out);
}

uint32_t cks_crc32c(uint32_t crc, const void *data, size_t len)
{
    crc_table_init();
    return ~crc_update_sw(~crc, data, len);
}
