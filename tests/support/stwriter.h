/*
 * tests/support/stwriter.h — the project's own safetensors writer, for fixtures.
 *
 * Writes files the way the reference writer does (header JSON with __metadata__ first,
 * tensors packed back to back in the order added, header padded with spaces to a multiple
 * of 8), and also lets a test write a raw header string verbatim so that every corrupt
 * case can be built byte for byte.
 */
#ifndef CKS_TEST_STWRITER_H
#define CKS_TEST_STWRITER_H

#include <stddef.h>
#include <stdint.h>

#include "ckptscope/dtype.h"
#include "ckptscope/error.h"

typedef struct st_buf {
    uint8_t *data;
    size_t len, cap;
} st_buf;

void st_buf_free(st_buf *b);
void st_buf_append(st_buf *b, const void *data, size_t len);
void st_buf_printf(st_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

typedef struct st_writer st_writer;
st_writer *st_writer_new(void);
void st_writer_meta(st_writer *w, const char *key, const char *value);
/* data may be NULL: deterministic filler bytes of the right size are written. */
void st_writer_add(st_writer *w, const char *name, cks_dtype dtype, const uint64_t *shape, unsigned ndim,
                   const void *data);
/* The whole file. */
void st_writer_finish(st_writer *w, st_buf *out);
void st_writer_free(st_writer *w);
/* Bytes a tensor of that dtype and shape occupies. */
uint64_t st_tensor_bytes(cks_dtype dtype, const uint64_t *shape, unsigned ndim);

/* A file from a raw header (written verbatim after the length) and `data_len` data bytes. */
void st_raw_file(const char *header, size_t header_len, size_t data_len, st_buf *out);
/* Same, but the 8-byte length field says `declared_len` (for length-field errors). */
void st_raw_file_declared(uint64_t declared_len, const char *header, size_t header_len, size_t data_len,
                          st_buf *out);

/* ---- the fixture table: one valid file per dtype and one corrupt file per rule ---- */

typedef struct st_fixture {
    const char *name;        /* file name stem */
    cks_err expect;          /* CKS_OK for a valid file */
    const char *mention;     /* a substring the error must contain (tensor, offset), or NULL */
    void (*build)(st_buf *out);
} st_fixture;

extern const st_fixture st_fixtures[];
extern const size_t st_n_fixtures;

/* Index fixtures: an index JSON and the expected error of cks_st_index_parse. */
typedef struct st_index_fixture {
    const char *name;
    const char *json;
    cks_err expect;
    const char *mention;
} st_index_fixture;

extern const st_index_fixture st_index_fixtures[];
extern const size_t st_n_index_fixtures;

/* Write every fixture into dir (created): <name>.safetensors, plus a sharded checkpoint
 * in dir/sharded/ and a broken one in dir/sharded-mismatch/. Returns 0 on success. */
int st_write_fixture_dir(const char *dir);
int st_write_file(const char *path, const void *data, size_t len);

#endif
