/*
 * src/core/hex.c — the one hex helper (include/ckptscope/hex.h).
 */
#include <openssl/evp.h>

#include "ckptscope/hex.h"

void cks_hex_encode(const uint8_t *bytes, size_t n, char *hex_out)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        hex_out[2 * i] = digits[bytes[i] >> 4];
        hex_out[2 * i + 1] = digits[bytes[i] & 15];
    }
    hex_out[2 * n] = '\0';
}

bool cks_hex_span(const char *s, size_t n, bool any_case)
{
    for (size_t i = 0; i < n; i++) {
        char ch = s[i];
        bool digit = (ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'f') || (any_case && ch >= 'A' && ch <= 'F');
        if (!digit) /* also stops at the NUL of a shorter string */
            return false;
    }
    return true;
}

bool cks_is_lower_hex(const char *s, size_t n)
{
    return s && cks_hex_span(s, n, false) && s[n] == '\0';
}

void cks_sha256_hex(const void *data, size_t len, char hex[65])
{
    uint8_t digest[32];
    unsigned int dlen = 0;
    EVP_Digest(data, len, digest, &dlen, EVP_sha256(), NULL);
    cks_hex_encode(digest, 32, hex);
}
