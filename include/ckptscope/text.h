/*
 * include/ckptscope/text.h — numbers as people read them, written once for the CLI and the
 * HTML report.
 */
#ifndef CKS_TEXT_H
#define CKS_TEXT_H

#include <stddef.h>
#include <stdint.h>

/*
 * Bytes in binary units: "512 B", "1.5 GiB". decimals >= 0 fixes the digits after the point (the
 * CLI uses 1); decimals < 0 keeps three significant digits ("1.46 GiB", "14.6 GiB", "146 GiB"),
 * as the report's tables do. Returns buf; size >= 32 always holds the answer.
 */
const char *cks_human_bytes(uint64_t bytes, int decimals, char *buf, size_t size);

#endif
