/*
 * src/storage/cache_internal.h — pieces of the cache shared between src/storage/cache*.c and the unit tests.
 * Not part of the public API.
 */
#ifndef CKPTSCOPE_CACHE_INTERNAL_H
#define CKPTSCOPE_CACHE_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

/* The table-driven definition of cks_cache_checksum; the hardware path must agree. */
void cks_cache_checksum_portable(const void *data, size_t len, uint32_t out[4]);

/* Plain CRC32C of a buffer (headers and metadata use one lane; they are small). */
uint32_t cks_crc32c(uint32_t crc, const void *data, size_t len);

#endif
