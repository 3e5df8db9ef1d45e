#include "stwriter.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static void die_oom(void)
{
    fprintf(stderr, "stwriter: out of memory\n");
    abort();
}

void st_buf_free(st_buf *b)
{
    free(b->data);
    memset(b, 0, sizeof *b);
}

void st_buf_append(st_buf *b, const void *data, size_t len)
{
    if (b->len + len + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + len + 1)
            cap *= 2;
        b->data = realloc(b->data, cap);
        if (!b->data)
            die_oom();
        b->cap = cap;
    }
    if (len)
        memcpy(b->data + b->len, data, len);
    b->len += len;
    b->data[b->len] = 0; /* keeps text buffers NUL-terminated; not part of len */
}

void st_buf_printf(st_buf *b, const char *fmt, ...)
{
    char small[512];
    va_list ap;
    int n;
    va_start(ap, fmt);
    n = vsnprintf(small, sizeof small, fmt, ap);
    va_end(ap);
    if (n < (int)sizeof small) {
        st_buf_append(b, small, (size_t)n);
        return;
    }
    char *big = malloc((size_t)n + 1);
    if (!big)
        die_oom();
    va_start(ap, fmt);
    vsnprintf(big, (size_t)n + 1, fmt, ap);
    va_end(ap);
    st_buf_append(b, big, (size_t)n);
    free(big);
}

struct st_tensor {
    char *name;
    cks_dtype dtype;
    uint64_t shape[8];
    unsigned ndim;
    uint8_t *data;
    uint64_t bytes;
};

struct st_writer {
    struct st_tensor *tensors;
    size_t n, cap;
    st_buf meta;
};

st_writer *st_writer_new(void)
{
    st_writer *w = calloc(1, sizeof *w);
    if (!w)
        die_oom();
    return w;
}

static void json_string(st_buf *b, const char *s)
{
    st_buf_append(b, "\"", 1);
    for (; *s; s++) {
        if (*s == '"' || *s == '\\')
            st_buf_printf(b, "\\%c", *s);
        else
            st_buf_append(b, s, 1);
    }
    st_buf_append(b, "\"", 1);
}

void st_writer_meta(st_writer *w, const char *key, const char *value)
{
    if (w->meta.len)
        st_buf_append(&w->meta, ",", 1);
    json_string(&w->meta, key);
    st_buf_append(&w->meta, ":", 1);
    json_string(&w->meta, value);
}

uint64_t st_tensor_bytes(cks_dtype dtype, const uint64_t *shape, unsigned ndim)
{
    uint64_t n = 1;
    for (unsigned d = 0; d < ndim; d++)
        n *= shape[d];
    return n * cks_dtype_bits(dtype) / 8;
}

void st_writer_add(st_writer *w, const char *name, cks_dtype dtype, const uint64_t *shape, unsigned ndim,
                   const void *data)
{
    struct st_tensor *t;
    if (w->n == w->cap) {
        w->cap = w->cap ? w->cap * 2 : 16;
        w->tensors = realloc(w->tensors, w->cap * sizeof *w->tensors);
        if (!w->tensors)
            die_oom();
    }
    t = &w->tensors[w->n++];
    memset(t, 0, sizeof *t);
    t->name = strdup(name);
    t->dtype = dtype;
    t->ndim = ndim;
    if (ndim)
        memcpy(t->shape, shape, ndim * sizeof *shape);
    t->bytes = st_tensor_bytes(dtype, shape, ndim);
    t->data = malloc(t->bytes ? t->bytes : 1);
    if (!t->name || !t->data)
        die_oom();
    if (data) {
        memcpy(t->data, data, t->bytes);
    } else {
        /* filler that differs between tensors, so hashes differ */
        uint32_t x = 2166136261u;
        for (const char *c = name; *c; c++)
            x = (x ^ (uint8_t)*c) * 16777619u;
        for (uint64_t i = 0; i < t->bytes; i++) {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            t->data[i] = (uint8_t)x;
        }
    }
}

void st_writer_finish(st_writer *w, st_buf *out)
{
    st_buf header = {0};
    uint64_t offset = 0, n;
    st_buf_append(&header, "{", 1);
    if (w->meta.len) {
        st_buf_append(&header, "\"__metadata__\":{", 16);
        st_buf_append(&header, w->meta.data, w->meta.len);
        st_buf_append(&header, "}", 1);
    }
    for (size_t i = 0; i < w->n; i++) {
        struct st_tensor *t = &w->tensors[i];
        if (i > 0 || w->meta.len)
            st_buf_append(&header, ",", 1);
        json_string(&header, t->name);
        st_buf_printf(&header, ":{\"dtype\":\"%s\",\"shape\":[", cks_dtype_name(t->dtype));
        for (unsigned d = 0; d < t->ndim; d++)
            st_buf_printf(&header, "%s%llu", d ? "," : "", (unsigned long long)t->shape[d]);
        st_buf_printf(&header, "],\"data_offsets\":[%llu,%llu]}", (unsigned long long)offset,
                      (unsigned long long)(offset + t->bytes));
        offset += t->bytes;
    }
    st_buf_append(&header, "}", 1);
    while (header.len % 8)
        st_buf_append(&header, " ", 1);
    memset(out, 0, sizeof *out);
    n = header.len;
    for (int k = 0; k < 8; k++) {
        uint8_t byte = (uint8_t)(n >> (8 * k));
        st_buf_append(out, &byte, 1);
    }
    st_buf_append(out, header.data, header.len);
    for (size_t i = 0; i < w->n; i++)
        st_buf_append(out, w->tensors[i].data, w->tensors[i].bytes);
    st_buf_free(&header);
}

void st_writer_free(st_writer *w)
{
    if (!w)
        return;
    for (size_t i = 0; i < w->n; i++) {
        free(w->tensors[i].name);
        free(w->tensors[i].data);
    }
    free(w->tensors);
    st_buf_free(&w->meta);
    free(w);
}

void st_raw_file_declared(uint64_t declared_len, const char *header, size_t header_len, size_t data_len,
                          st_buf *out)
{
    memset(out, 0, sizeof *out);
    for (int k = 0; k < 8; k++) {
        uint8_t byte = (uint8_t)(declared_len >> (8 * k));
        st_buf_append(out, &byte, 1);
    }
    st_buf_append(out, header, header_len);
    for (size_t i = 0; i < data_len; i++) {
        uint8_t byte = (uint8_t)(i * 7 + 1);
        st_buf_append(out, &byte, 1);
    }
}

void st_raw_file(const char *header, size_t header_len, size_t data_len, st_buf *out)
{
    st_raw_file_declared(header_len, header, header_len, data_len, out);
}

int st_write_file(const char *path, const void *data, size_t len)
{
    FILE *f = fopen(path, "wb");
    if (!f)
        return -1;
    if (len && fwrite(data, 1, len, f) != len) {
        fclose(f);
        return -1;
    }
    return fclose(f) == 0 ? 0 : -1;
}
