/* src/core/byteorder.h — little-endian integers in the library's file formats (cache index and
 * extents, fingerprints, fingerprint libraries): one definition instead of a copy per format. */
#ifndef CKS_BYTEORDER_H
#define CKS_BYTEORDER_H

#include <stdint.h>

static inline void cks_put_le32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static inline void cks_put_le64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static inline uint32_t cks_get_le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static inline uint64_t cks_get_le64(const uint8_t *p)
{
    return (uint64_t)cks_get_le32(p) | (uint64_t)cks_get_le32(p + 4) << 32;
}

#endif
