/*
 * src/cli/cli_text.c — text a person reads: names escaped for a terminal, byte counts, shapes,
 * tensor-name patterns. The bottom of the CLI's files: it uses no other of them.
 */
#include <fnmatch.h>
#include <stdlib.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "ckptscope/text.h"
#include "cli.h"

/* Length of the well-formed UTF-8 sequence at s (0: not one) and its code point. */
static size_t utf8_seq(const unsigned char *s, uint32_t *cp)
{
    uint32_t c = s[0], min;
    size_t n;
    if (c < 0x80) {
        *cp = c;
        return 1;
    }
    if (c >= 0xc2 && c <= 0xdf) {
        n = 2, c &= 0x1f, min = 0x80;
    } else if (c >= 0xe0 && c <= 0xef) {
        n = 3, c &= 0x0f, min = 0x800;
    } else if (c >= 0xf0 && c <= 0xf4) {
        n = 4, c &= 0x07, min = 0x10000;
    } else {
        return 0;
    }
    for (size_t i = 1; i < n; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0; /* also stops at the terminating NUL */
        c = (c << 6) | (s[i] & 0x3f);
    }
    if (c < min || c > 0x10ffff || (c >= 0xd800 && c <= 0xdfff))
        return 0;
    *cp = c;
    return n;
}

/* Code points a terminal acts on instead of showing: C0, DEL, C1, line/paragraph
 * separators, and the bidirectional overrides that reorder what is shown. */
static bool cp_dangerous(uint32_t c)
{
    return c < 0x20 || (c >= 0x7f && c <= 0x9f) || c == 0x200e || c == 0x200f ||
           (c >= 0x2028 && c <= 0x202e) || (c >= 0x2066 && c <= 0x2069);
}

const char *cli_esc(const char *s)
{
    static __thread char *ring[8];
    static __thread size_t ring_cap[8];
    static __thread unsigned next;
    const unsigned char *p = (const unsigned char *)(s ? s : "(null)");
    size_t need = 1;
    unsigned slot = next++ % 8;
    /* worst case: every byte becomes "\xHH" (4 bytes); a 2-byte C1 sequence "\u00HH" (6) */
    for (const unsigned char *q = p; *q; q++)
        need += 4;
    if (need > ring_cap[slot]) {
        char *grown = realloc(ring[slot], need);
        if (!grown)
            return "(out of memory)";
        ring[slot] = grown;
        ring_cap[slot] = need;
    }
    char *w = ring[slot];
    while (*p) {
        uint32_t cp = 0;
        size_t n = utf8_seq(p, &cp);
        if (n == 0) {
            w += sprintf(w, "\\x%02x", *p);
            p++;
        } else if (cp == '\\') {
            *w++ = '\\';
            *w++ = '\\';
            p++;
        } else if (!cp_dangerous(cp)) {
            memcpy(w, p, n);
            w += n;
            p += n;
        } else {
            if (cp == '\n')
                w += sprintf(w, "\\n");
            else if (cp == '\t')
                w += sprintf(w, "\\t");
            else if (cp == '\r')
                w += sprintf(w, "\\r");
            else if (cp < 0x80)
                w += sprintf(w, "\\x%02x", (unsigned)cp);
            else
                w += sprintf(w, "\\u%04x", (unsigned)cp);
            p += n;
        }
    }
    *w = '\0';
    return ring[slot];
}

const char *cli_human_bytes(uint64_t bytes, char *buf, size_t size)
{
    return cks_human_bytes(bytes, 1, buf, size);
}

const char *cli_shape_text(const cks_tensor_info *info, char *buf, size_t size)
{
    size_t at = 0;
    at += (size_t)snprintf(buf + at, size - at, "[");
    for (uint32_t d = 0; d < info->ndim && at < size; d++)
        at += (size_t)snprintf(buf + at, size - at, "%s%llu", d ? ", " : "", (unsigned long long)info->shape[d]);
    if (at < size)
        snprintf(buf + at, size - at, "]");
    return buf;
}

bool cli_glob_match(const char *glob, const char *name)
{
    if (!strpbrk(glob, "*?[\\"))
        return strcmp(glob, name) == 0;
    return fnmatch(glob, name, 0) == 0;
}
