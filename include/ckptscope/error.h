/*
 * ckptscope/error.h — the one error enum of the library, and the detail buffer.
 *
 * Contract: every fallible library function returns a cks_err and, on failure, writes a
 * human-readable sentence into a caller-owned cks_diag (which may be NULL when the caller
 * does not care). The sentence says what is wrong and where (file, tensor, byte offset,
 * HTTP status); cks_strerror() gives the rule's stable name. The library never prints and
 * never exits: the CLI decides what people see and which exit code a script gets
 * (cks_err_class()).
 *
 * The safetensors validation errors carry the names the reference implementation
 * (huggingface/safetensors, tensor.rs) uses, so a user can look them up there.
 */
#ifndef CKPTSCOPE_ERROR_H
#define CKPTSCOPE_ERROR_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum cks_err {
    CKS_OK = 0,

    /* generic */
    CKS_ERR_NOMEM,            /* allocation failed */
    CKS_ERR_INVALID_ARG,      /* caller passed something the API does not accept */
    CKS_ERR_IO,               /* open/read/write/fsync failed on a local file */
    CKS_ERR_NOT_FOUND,        /* local file or tensor not found */
    CKS_ERR_UNSUPPORTED,      /* a valid input this version cannot handle */
    CKS_ERR_NEED_MORE,        /* not a failure: the parser needs more bytes (see *need) */

    /* safetensors rules, named as in the reference implementation */
    CKS_ERR_HEADER_TOO_SMALL,              /* HeaderTooSmall: file shorter than 8 bytes */
    CKS_ERR_HEADER_TOO_LARGE,              /* HeaderTooLarge: N > 100,000,000 */
    CKS_ERR_INVALID_HEADER_LENGTH,         /* InvalidHeaderLength: 8 + N beyond the file */
    CKS_ERR_INVALID_HEADER,                /* InvalidHeader: header bytes not UTF-8 */
    CKS_ERR_INVALID_HEADER_DESERIALIZATION,/* InvalidHeaderDeserialization: not the JSON shape */
    CKS_ERR_DUPLICATE_KEY,                 /* a key appears twice (reference: "disallowed") */
    CKS_ERR_INVALID_OFFSET,                /* InvalidOffset: hole, overlap, not from 0 */
    CKS_ERR_VALIDATION_OVERFLOW,           /* ValidationOverflow: shape product overflows */
    CKS_ERR_MISALIGNED_SLICE,              /* MisalignedSlice: sub-byte dtype, odd bits */
    CKS_ERR_TENSOR_INVALID_INFO,           /* TensorInvalidInfo: byte size != shape * dtype */
    CKS_ERR_METADATA_INCOMPLETE_BUFFER,    /* MetadataIncompleteBuffer: last end != EOF */
    /* what users actually download instead of weights */
    CKS_ERR_LFS_POINTER,      /* a Git-LFS pointer text file */
    CKS_ERR_HTML_PAGE,        /* an HTML page (login wall, error page) */
    CKS_ERR_TEXT_FILE,        /* some other short text (e.g. a symlink target path) */
    CKS_ERR_TRUNCATED,        /* file ends before the data it declares */
    /* sharded checkpoints */
    CKS_ERR_INDEX_INVALID,    /* model.safetensors.index.json malformed */
    CKS_ERR_UNSAFE_PATH,      /* shard path with .., absolute, or a URL */
    CKS_ERR_INDEX_MISMATCH,   /* index disagrees with the shard headers */

    /* network and the Hub */
    CKS_ERR_NETWORK,          /* connection failed, reset, timed out */
    CKS_ERR_TLS,              /* certificate or handshake failure */
    CKS_ERR_HTTP,             /* unexpected HTTP status */
    CKS_ERR_RANGE_IGNORED,    /* server answered a ranged request with 200 / bad Content-Range */
    CKS_ERR_REPO_NOT_FOUND,   /* repo missing or private without access */
    CKS_ERR_FILE_NOT_FOUND,   /* file missing at that revision */
    CKS_ERR_REVISION_NOT_FOUND,
    CKS_ERR_GATED,            /* gated repo, access not granted */
    CKS_ERR_AUTH,             /* invalid or expired token */
    CKS_ERR_RATE_LIMITED,     /* 429 after retries */
    CKS_ERR_INTEGRITY,        /* bytes do not match the expected SHA-256 */
    CKS_ERR_SERVED_SIZE,      /* ServedSizeMismatch: the server holding a file's bytes reports
                                 another size (Content-Range total) than the Hub lists */
    CKS_ERR_SERVED_HEADER_SIZE, /* HeaderServedSizeMismatch: the size served differs from the
                                   size the file's safetensors header implies */
    CKS_ERR_DENIED,           /* AccessDenied: a server we send no token to (the CDN) refuses */

    /* cache */
    CKS_ERR_CACHE,            /* cache unusable (permissions, layout version) */
    CKS_ERR_NO_SPACE,         /* disk full while writing */
    CKS_ERR_OFFLINE_MISS,     /* --offline and the bytes are not cached */

    /* numerics */
    CKS_ERR_NUMERIC,          /* NaN/Inf or degenerate input where a statistic needs values */

    CKS_ERR__COUNT
} cks_err;

/* The stable name of an error ("InvalidOffset", "HeaderTooLarge", "RepoNotFound", ...). */
const char *cks_strerror(cks_err err);

/* Coarse classes the CLI maps to exit codes (README "Exit codes"). */
typedef enum cks_err_class {
    CKS_CLASS_OK = 0,
    CKS_CLASS_USAGE,      /* invalid argument */
    CKS_CLASS_FORMAT,     /* the input is not a valid checkpoint */
    CKS_CLASS_IO,         /* local I/O, cache, disk full */
    CKS_CLASS_NETWORK,    /* network, HTTP, TLS, rate limits */
    CKS_CLASS_ACCESS,     /* not found, gated, auth */
    CKS_CLASS_INTERNAL    /* out of memory, numeric trouble */
} cks_err_class;

cks_err_class cks_err_class_of(cks_err err);

/*
 * The caller-owned detail buffer. Functions overwrite it only when they fail (or when they
 * return CKS_ERR_NEED_MORE), so a caller can pass one buffer through a sequence of calls.
 */
#define CKS_DIAG_MAX 1024
typedef struct cks_diag {
    char text[CKS_DIAG_MAX];
} cks_diag;

/* printf-style; a NULL diag is allowed and ignored. Returns err for `return cks_fail(...)`. */
cks_err cks_fail(cks_diag *diag, cks_err err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#ifdef __cplusplus
}
#endif
#endif
