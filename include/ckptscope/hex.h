/*
 * include/ckptscope/hex.h — the one hex helper of the library (src/core/hex.c): encoding, checking,
 * and a buffer's SHA-256 as hex. It needs only OpenSSL, so the cache builds without the rest of
 * the library (bench/cache links the cache alone).
 */
#ifndef CKS_HEX_H
#define CKS_HEX_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* n bytes as 2n lowercase digits and a NUL. */
void cks_hex_encode(const uint8_t *bytes, size_t n, char *hex_out);
/* SHA-256 of a buffer as lowercase hex (65 bytes with the NUL). */
void cks_sha256_hex(const void *data, size_t len, char hex[65]);
/* s is exactly n lowercase hex digits (a SHA-256 is 64, a git commit 40); NULL is not. */
bool cks_is_lower_hex(const char *s, size_t n);
/* The first n characters of s are hex digits, lowercase only unless any_case (what follows is
 * not looked at: a key with a hash inside it). */
bool cks_hex_span(const char *s, size_t n, bool any_case);

#endif
