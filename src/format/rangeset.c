/*
 * A set of byte ranges, sorted and merged (include/ckptscope/rangeset.h).
 */
#include "ckptscope/rangeset.h"

#include <stdlib.h>
#include <string.h>

/* The first range whose end reaches `at` (end >= at), or s->n. */
static size_t first_reaching(const cks_rangeset *s, uint64_t at)
{
    size_t lo = 0, hi = s->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (s->r[mid].offset + s->r[mid].length < at)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

cks_err cks_rangeset_add(cks_rangeset *s, uint64_t offset, uint64_t length)
{
    cks_err err = CKS_OK;
    uint64_t a = offset, b;
    size_t i, j;
    if (length == 0)
        goto out;
    b = length > UINT64_MAX - offset ? UINT64_MAX : offset + length;
    i = first_reaching(s, a); /* ranges before i end before a: untouched */
    for (j = i; j < s->n && s->r[j].offset <= b; j++) {
        uint64_t end = s->r[j].offset + s->r[j].length;
        if (s->r[j].offset < a)
            a = s->r[j].offset;
        if (end > b)
            b = end;
    }
    if (j == i) { /* touches nothing: insert at i */
        if (s->n == s->cap) {
            size_t cap = s->cap ? 2 * s->cap : 16;
            cks_range *grown = cap > SIZE_MAX / sizeof *grown ? NULL : realloc(s->r, cap * sizeof *grown);
            if (!grown) {
                err = CKS_ERR_NOMEM;
                goto out;
            }
            s->r = grown;
            s->cap = cap;
        }
        memmove(&s->r[i + 1], &s->r[i], (s->n - i) * sizeof *s->r);
        s->n++;
    } else { /* [i, j) merge into i */
        memmove(&s->r[i + 1], &s->r[j], (s->n - j) * sizeof *s->r);
        s->n -= j - i - 1;
    }
    s->r[i].offset = a;
    s->r[i].length = b - a;
out:
    return err;
}

bool cks_rangeset_covers(const cks_rangeset *s, uint64_t a, uint64_t b)
{
    size_t i;
    if (a >= b)
        return true;
    i = first_reaching(s, a + 1); /* the first range ending past a */
    return i < s->n && s->r[i].offset <= a && b <= s->r[i].offset + s->r[i].length;
}

uint64_t cks_rangeset_bytes(const cks_rangeset *s)
{
    uint64_t total = 0;
    for (size_t i = 0; i < s->n; i++)
        total += s->r[i].length;
    return total;
}

void cks_rangeset_free(cks_rangeset *s)
{
    free(s->r);
    memset(s, 0, sizeof *s);
}

static int by_offset(const void *x, const void *y)
{
    const cks_range *p = x, *q = y;
    return p->offset < q->offset ? -1 : p->offset > q->offset;
}

bool cks_ranges_cover(cks_range *ranges, size_t n, uint64_t a, uint64_t b)
{
    uint64_t pos = a;
    if (a >= b)
        return true;
    qsort(ranges, n, sizeof *ranges, by_offset);
    for (size_t i = 0; i < n && ranges[i].offset <= pos && pos < b; i++)
        if (ranges[i].length && ranges[i].offset + ranges[i].length > pos)
            pos = ranges[i].offset + ranges[i].length;
    return pos >= b;
}
