/*
 * LoRA adapters as modules under one canonical key per module, whatever wrote them.
 * See include/ckptscope/adapter.h for the styles and why the key drops separators.
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ckptscope/adapter.h"

#define MAX_SEGS 64

typedef struct seg {
    const char *s;
    size_t len;
} seg;

static size_t split(const char *name, seg *out, size_t cap)
{
    size_t n = 0;
    const char *p = name;
    while (n < cap) {
        const char *dot = strchr(p, '.');
        size_t len = dot ? (size_t)(dot - p) : strlen(p);
        out[n].s = p;
        out[n].len = len;
        n++;
        if (!dot)
            break;
        p = dot + 1;
    }
    return n;
}

static bool seg_is(seg s, const char *lit)
{
    return s.len == strlen(lit) && memcmp(s.s, lit, s.len) == 0;
}

static bool seg_prefix(seg s, const char *lit)
{
    size_t n = strlen(lit);
    return s.len > n && memcmp(s.s, lit, n) == 0;
}

static bool seg_suffix(seg s, const char *lit)
{
    size_t n = strlen(lit);
    return s.len > n && memcmp(s.s + s.len - n, lit, n) == 0;
}

/* Append the separator-free, lower-case spelling of `text` (len bytes) to key. */
static bool append_canonical(char *key, size_t size, size_t *at, const char *text, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        char c = text[i];
        if (c == '.' || c == '_') {
            /* keep digit groups apart: "1.10" and "11.0" must not meet */
            char prev = *at > 0 ? key[*at - 1] : 0;
            char next = i + 1 < len ? text[i + 1] : 0;
            if (!(isdigit((unsigned char)prev) && isdigit((unsigned char)next)))
                continue;
            c = '#';
        }
        if (*at + 1 >= size)
            return false;
        key[(*at)++] = (char)tolower((unsigned char)c);
    }
    key[*at] = 0;
    return true;
}

/* The module segments [first, end) plus an optional trailing piece, as a canonical key. */
static bool build_key(seg *segs, size_t first, size_t end, const char *extra, size_t extra_len, char *key,
                      size_t size)
{
    const char *component = "";
    size_t at = 0;
    /* PEFT wraps every path in base_model.model. */
    if (end - first >= 2 && seg_is(segs[first], "base_model") && seg_is(segs[first + 1], "model"))
        first += 2;
    /* the UNet is the default component: diffusers' old style saves it without a prefix */
    if (first < end && seg_is(segs[first], "unet")) {
        first++;
    } else if (first < end && seg_is(segs[first], "text_encoder")) {
        component = "te";
        first++;
    } else if (first < end && seg_is(segs[first], "text_encoder_2")) {
        component = "te2";
        first++;
    } else if (first < end && seg_prefix(segs[first], "lora_unet_")) {
        segs[first].s += 10;
        segs[first].len -= 10;
    } else if (first < end && (seg_prefix(segs[first], "lora_te1_") || seg_prefix(segs[first], "lora_te2_"))) {
        component = segs[first].s[7] == '1' ? "te" : "te2";
        segs[first].s += 9;
        segs[first].len -= 9;
    } else if (first < end && seg_prefix(segs[first], "lora_te_")) {
        component = "te";
        segs[first].s += 8;
        segs[first].len -= 8;
    }
    if (first >= end && extra_len == 0)
        return false;
    at = (size_t)snprintf(key, size, "%s:", component);
    if (at >= size)
        return false;
    for (size_t i = first; i < end; i++) {
        if (seg_is(segs[i], "processor")) /* diffusers' old attention processors */
            continue;
        if (at > 0 && key[at - 1] != ':' && isdigit((unsigned char)key[at - 1]) && isdigit((unsigned char)segs[i].s[0])) {
            if (at + 1 >= size)
                return false;
            key[at++] = '#';
            key[at] = 0;
        }
        if (!append_canonical(key, size, &at, segs[i].s, segs[i].len))
            return false;
    }
    if (extra_len) {
        if (at > 0 && isdigit((unsigned char)key[at - 1]) && isdigit((unsigned char)extra[0])) {
            if (at + 1 >= size)
                return false;
            key[at++] = '#';
            key[at] = 0;
        }
        if (!append_canonical(key, size, &at, extra, extra_len))
            return false;
    }
    /* the old "to_out_lora" is the module the new styles call "to_out.0" */
    if (at >= 6 && strcmp(key + at - 6, "toout0") == 0)
        key[--at] = 0;
    return true;
}

cks_adapter_factor cks_adapter_key(const char *name, char *key, size_t key_size, bool *transposed)
{
    seg segs[MAX_SEGS];
    size_t n;
    cks_adapter_factor factor = CKS_ADAPTER_NONE;
    size_t end = 0;
    const char *extra = NULL;
    size_t extra_len = 0;

    if (key_size)
        key[0] = 0;
    *transposed = false;
    if (!name || key_size < 8)
        return CKS_ADAPTER_NONE;
    n = split(name, segs, MAX_SEGS);
    if (n < 2)
        return CKS_ADAPTER_NONE;
    if (seg_is(segs[n - 1], "alpha")) { /* kohya */
        factor = CKS_ADAPTER_ALPHA;
        end = n - 1;
    } else if (seg_is(segs[n - 1], "lora_a") || seg_is(segs[n - 1], "lora_b")) { /* mlx-lm */
        factor = segs[n - 1].s[5] == 'a' ? CKS_ADAPTER_DOWN : CKS_ADAPTER_UP;
        *transposed = true;
        end = n - 1;
    } else if (seg_is(segs[n - 1], "weight") && n >= 3) {
        seg last = segs[n - 2], before = segs[n - 3];
        if (seg_is(last, "lora_A") || seg_is(last, "lora_embedding_A") || seg_is(last, "lora_B") ||
            seg_is(last, "lora_embedding_B")) { /* PEFT, no adapter name */
            factor = last.s[last.len - 1] == 'A' ? CKS_ADAPTER_DOWN : CKS_ADAPTER_UP;
            end = n - 2;
        } else if (seg_is(before, "lora_A") || seg_is(before, "lora_B") || seg_is(before, "lora_embedding_A") ||
                   seg_is(before, "lora_embedding_B")) { /* PEFT: <module>.lora_A.<adapter name>.weight */
            factor = before.s[before.len - 1] == 'A' ? CKS_ADAPTER_DOWN : CKS_ADAPTER_UP;
            end = n - 3;
        } else if (seg_is(last, "lora_down") || seg_is(last, "lora_up")) { /* kohya */
            factor = seg_is(last, "lora_down") ? CKS_ADAPTER_DOWN : CKS_ADAPTER_UP;
            end = n - 2;
        } else if ((seg_is(last, "down") || seg_is(last, "up")) && seg_is(before, "lora")) { /* diffusers */
            factor = seg_is(last, "down") ? CKS_ADAPTER_DOWN : CKS_ADAPTER_UP;
            end = n - 3;
        } else if ((seg_is(last, "down") || seg_is(last, "up")) && seg_suffix(before, "_lora")) {
            /* diffusers' old processors: <path>.processor.to_q_lora.down.weight */
            factor = seg_is(last, "down") ? CKS_ADAPTER_DOWN : CKS_ADAPTER_UP;
            end = n - 3;
            extra = before.s;
            extra_len = before.len - 5;
        }
    }
    if (factor == CKS_ADAPTER_NONE)
        return CKS_ADAPTER_NONE;
    if (!build_key(segs, 0, end, extra, extra_len, key, key_size)) {
        key[0] = 0;
        return CKS_ADAPTER_NONE;
    }
    return factor;
}

typedef struct entry {
    char key[CKS_ADAPTER_KEY_MAX];
    cks_adapter_factor factor;
    bool transposed;
    const cks_ckpt_tensor *tensor;
} entry;

static int entry_cmp(const void *x, const void *y)
{
    const entry *a = x, *b = y;
    int c = strcmp(a->key, b->key);
    return c ? c : (int)a->factor - (int)b->factor;
}

/* [rows, cols] of a factor as a matrix: trailing conv dims fold into the columns. */
static bool factor_dims(const cks_tensor_info *info, size_t *rows, size_t *cols)
{
    uint64_t r, c = 1;
    if (info->ndim < 2 || info->ndim > 4)
        return false;
    r = info->shape[0];
    for (uint32_t i = 1; i < info->ndim; i++) {
        if (info->shape[i] != 0 && c > UINT64_MAX / info->shape[i])
            return false;
        c *= info->shape[i];
    }
    if (r == 0 || c == 0 || r > SIZE_MAX || c > SIZE_MAX)
        return false;
    *rows = (size_t)r;
    *cols = (size_t)c;
    return true;
}

cks_err cks_adapter_scan(const cks_ckpt *ckpt, cks_adapter **out, cks_diag *diag)
{
    cks_err err = CKS_OK;
    entry *entries = NULL;
    size_t n = 0;
    cks_adapter *a = NULL;

    *out = NULL;
    a = calloc(1, sizeof *a);
    entries = malloc((ckpt->n_tensors ? ckpt->n_tensors : 1) * sizeof *entries);
    if (!a || !entries) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory scanning adapter modules");
        goto out;
    }
    for (size_t i = 0; i < ckpt->n_tensors; i++) {
        entry *e = &entries[n];
        e->factor = cks_adapter_key(ckpt->tensors[i].info->name, e->key, sizeof e->key, &e->transposed);
        if (e->factor == CKS_ADAPTER_NONE)
            continue;
        e->tensor = &ckpt->tensors[i];
        a->n_factor_tensors++;
        n++;
    }
    qsort(entries, n, sizeof *entries, entry_cmp);
    a->modules = malloc((n ? n : 1) * sizeof *a->modules);
    if (!a->modules) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory scanning adapter modules");
        goto out;
    }
    for (size_t i = 0; i < n;) {
        size_t j = i;
        const entry *down = NULL, *up = NULL;
        bool ambiguous = false;
        while (j < n && strcmp(entries[j].key, entries[i].key) == 0) {
            const entry **slot = entries[j].factor == CKS_ADAPTER_DOWN ? &down
                                 : entries[j].factor == CKS_ADAPTER_UP ? &up
                                                                        : NULL;
            if (slot && *slot)
                ambiguous = true;
            else if (slot)
                *slot = &entries[j];
            j++;
        }
        if (ambiguous) {
            a->n_ambiguous++;
        } else if (down && up) {
            size_t dr, dc, ur, uc, rank, in, outd, up_rank;
            bool ok = factor_dims(down->tensor->info, &dr, &dc) && factor_dims(up->tensor->info, &ur, &uc);
            if (ok) {
                /* down: [r, in] (mlx [in, r]); up: [out, r] (mlx [r, out]) */
                rank = down->transposed ? dc : dr;
                in = down->transposed ? dr : dc;
                outd = up->transposed ? uc : ur;
                up_rank = up->transposed ? ur : uc;
                ok = rank == up_rank && rank > 0 && (!down->transposed || down->tensor->info->ndim == 2) &&
                     (!up->transposed || up->tensor->info->ndim == 2);
                if (ok) {
                    cks_adapter_module *m = &a->modules[a->n++];
                    memset(m, 0, sizeof *m);
                    snprintf(m->key, sizeof m->key, "%s", down->key);
                    m->down = down->tensor;
                    m->up = up->tensor;
                    m->down_transposed = down->transposed;
                    m->up_transposed = up->transposed;
                    m->rank = rank;
                    m->in = in;
                    m->out = outd;
                }
            }
            if (!ok)
                a->n_unpaired++;
        } else if (down || up) {
            a->n_unpaired++;
        }
        i = j;
    }
    *out = a;
    a = NULL;
out:
    free(entries);
    cks_adapter_free(a);
    return err;
}

const cks_adapter_module *cks_adapter_find(const cks_adapter *a, const char *key)
{
    size_t lo = 0, hi = a ? a->n : 0;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(a->modules[mid].key, key);
        if (c == 0)
            return &a->modules[mid];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

void cks_adapter_free(cks_adapter *a)
{
    if (!a)
        return;
    free(a->modules);
    free(a);
}
