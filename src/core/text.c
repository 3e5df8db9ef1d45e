/*
 * src/core/text.c — numbers as people read them (include/ckptscope/text.h).
 */
#include <inttypes.h>
#include <stdio.h>

#include "ckptscope/text.h"

const char *cks_human_bytes(uint64_t bytes, int decimals, char *buf, size_t size)
{
    static const char *const units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
    double v = (double)bytes;
    int u = 0;
    while (v >= 1024.0 && u < 5) {
        v /= 1024.0;
        u++;
    }
    if (u == 0)
        snprintf(buf, size, "%" PRIu64 " B", bytes);
    else
        snprintf(buf, size, "%.*f %s", decimals >= 0 ? decimals : v < 10 ? 2 : v < 100 ? 1 : 0, v, units[u]);
    return buf;
}
