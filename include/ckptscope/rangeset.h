/*
 * include/ckptscope/rangeset.h — a set of byte ranges, kept sorted and merged.
 *
 * The one implementation the library uses wherever it remembers which bytes of a file it has
 * (what a run fetched from the network, whether a batch of reads covers a whole file): adding
 * and asking are O(log n) searches plus one move, so verify's ~18,000 sampled blocks of a 100B
 * model cost milliseconds, not the quadratic rescans of a list.
 */
#ifndef CKPTSCOPE_RANGESET_H
#define CKPTSCOPE_RANGESET_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ckptscope/error.h"
#include "ckptscope/source.h" /* cks_range */

#ifdef __cplusplus
extern "C" {
#endif

typedef struct cks_rangeset {
    cks_range *r; /* sorted by offset; no two touch or overlap; no empty range */
    size_t n, cap;
} cks_rangeset;

/* Add [offset, offset+length), merging with every range it touches or overlaps. A range that
 * would pass 2^64 is clipped at the top. CKS_ERR_NOMEM leaves the set as it was. */
cks_err cks_rangeset_add(cks_rangeset *s, uint64_t offset, uint64_t length);
/* True when [a, b) lies inside the set (an empty interval always does). */
bool cks_rangeset_covers(const cks_rangeset *s, uint64_t a, uint64_t b);
/* Bytes in the set. */
uint64_t cks_rangeset_bytes(const cks_rangeset *s);
void cks_rangeset_free(cks_rangeset *s);

/* True when the ranges (any order, overlaps allowed) together cover [a, b); sorts `ranges`. */
bool cks_ranges_cover(cks_range *ranges, size_t n, uint64_t a, uint64_t b);

#ifdef __cplusplus
}
#endif

#endif
