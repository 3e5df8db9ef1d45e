#include "ckptscope/error.h"

#include <stdarg.h>
#include <stdio.h>

static const char *const error_names[CKS_ERR__COUNT] = {
    [CKS_OK] = "OK",
    [CKS_ERR_NOMEM] = "OutOfMemory",
    [CKS_ERR_INVALID_ARG] = "InvalidArgument",
    [CKS_ERR_IO] = "IoError",
    [CKS_ERR_NOT_FOUND] = "NotFound",
    [CKS_ERR_UNSUPPORTED] = "Unsupported",
    [CKS_ERR_NEED_MORE] = "NeedMoreBytes",
    [CKS_ERR_HEADER_TOO_SMALL] = "HeaderTooSmall",
    [CKS_ERR_HEADER_TOO_LARGE] = "HeaderTooLarge",
    [CKS_ERR_INVALID_HEADER_LENGTH] = "InvalidHeaderLength",
    [CKS_ERR_INVALID_HEADER] = "InvalidHeader",
    [CKS_ERR_INVALID_HEADER_DESERIALIZATION] = "InvalidHeaderDeserialization",
    [CKS_ERR_DUPLICATE_KEY] = "DuplicateKey",
    [CKS_ERR_INVALID_OFFSET] = "InvalidOffset",
    [CKS_ERR_VALIDATION_OVERFLOW] = "ValidationOverflow",
    [CKS_ERR_MISALIGNED_SLICE] = "MisalignedSlice",
    [CKS_ERR_TENSOR_INVALID_INFO] = "TensorInvalidInfo",
    [CKS_ERR_METADATA_INCOMPLETE_BUFFER] = "MetadataIncompleteBuffer",
    [CKS_ERR_LFS_POINTER] = "GitLfsPointer",
    [CKS_ERR_HTML_PAGE] = "HtmlPage",
    [CKS_ERR_TEXT_FILE] = "TextFile",
    [CKS_ERR_TRUNCATED] = "Truncated",
    [CKS_ERR_INDEX_INVALID] = "IndexInvalid",
    [CKS_ERR_UNSAFE_PATH] = "UnsafeShardPath",
    [CKS_ERR_INDEX_MISMATCH] = "IndexMismatch",
    [CKS_ERR_NETWORK] = "NetworkError",
    [CKS_ERR_TLS] = "TlsError",
    [CKS_ERR_HTTP] = "HttpError",
    [CKS_ERR_RANGE_IGNORED] = "RangeNotHonoured",
    [CKS_ERR_REPO_NOT_FOUND] = "RepoNotFound",
    [CKS_ERR_FILE_NOT_FOUND] = "EntryNotFound",
    [CKS_ERR_REVISION_NOT_FOUND] = "RevisionNotFound",
    [CKS_ERR_GATED] = "GatedRepo",
    [CKS_ERR_AUTH] = "InvalidToken",
    [CKS_ERR_RATE_LIMITED] = "RateLimited",
    [CKS_ERR_INTEGRITY] = "IntegrityError",
    [CKS_ERR_SERVED_SIZE] = "ServedSizeMismatch",
    [CKS_ERR_SERVED_HEADER_SIZE] = "HeaderServedSizeMismatch",
    [CKS_ERR_DENIED] = "AccessDenied",
    [CKS_ERR_CACHE] = "CacheError",
    [CKS_ERR_NO_SPACE] = "NoSpace",
    [CKS_ERR_OFFLINE_MISS] = "OfflineMiss",
    [CKS_ERR_NUMERIC] = "NumericError",
};

const char *cks_strerror(cks_err err)
{
    if ((unsigned)err >= CKS_ERR__COUNT || !error_names[err])
        return "UnknownError";
    return error_names[err];
}

cks_err_class cks_err_class_of(cks_err err)
{
    switch (err) {
    case CKS_OK:
        return CKS_CLASS_OK;
    case CKS_ERR_INVALID_ARG:
        return CKS_CLASS_USAGE;
    case CKS_ERR_IO:
    case CKS_ERR_CACHE:
    case CKS_ERR_NO_SPACE:
    case CKS_ERR_OFFLINE_MISS:
        return CKS_CLASS_IO;
    case CKS_ERR_NETWORK:
    case CKS_ERR_TLS:
    case CKS_ERR_HTTP:
    case CKS_ERR_RANGE_IGNORED:
    case CKS_ERR_RATE_LIMITED:
        return CKS_CLASS_NETWORK;
    case CKS_ERR_NOT_FOUND:
    case CKS_ERR_REPO_NOT_FOUND:
    case CKS_ERR_FILE_NOT_FOUND:
    case CKS_ERR_REVISION_NOT_FOUND:
    case CKS_ERR_GATED:
    case CKS_ERR_AUTH:
    case CKS_ERR_DENIED:
        return CKS_CLASS_ACCESS;
    case CKS_ERR_NOMEM:
    case CKS_ERR_NUMERIC:
    case CKS_ERR_NEED_MORE:
    case CKS_ERR__COUNT:
        return CKS_CLASS_INTERNAL;
    default:
        /* every remaining error is a property of the input bytes */
        return CKS_CLASS_FORMAT;
    }
}

cks_err cks_fail(cks_diag *diag, cks_err err, const char *fmt, ...)
{
    if (diag) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(diag->text, sizeof diag->text, fmt, ap);
        va_end(ap);
    }
    return err;
}
