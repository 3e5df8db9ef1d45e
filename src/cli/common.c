#include <ctype.h>
#include <fnmatch.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "ckptscope/text.h"
#include "cli.h"
#include "cli_remote.h"

bool cli_parse_size(const char *text, uint64_t *out)
{
    char *end = NULL;
    double value, mult = 1;
    if (!text || !*text || !isdigit((unsigned char)text[0]))
        return false;
    value = strtod(text, &end);
    if (end == text || !isfinite(value) || value < 0)
        return false;
    while (*end == ' ')
        end++;
    switch (toupper((unsigned char)*end)) {
    case '\0':
        break;
    case 'K':
        mult = 1024.0;
        break;
    case 'M':
        mult = 1024.0 * 1024.0;
        break;
    case 'G':
        mult = 1024.0 * 1024.0 * 1024.0;
        break;
    case 'T':
        mult = 1024.0 * 1024.0 * 1024.0 * 1024.0;
        break;
    case 'B':
        break;
    default:
        return false;
    }
    if (*end) {
        end++;
        if (*end == 'i' || *end == 'I')
            end++;
        if (*end == 'b' || *end == 'B')
            end++;
        if (*end)
            return false;
    }
    value *= mult;
    if (value >= 18446744073709551615.0)
        return false;
    *out = (uint64_t)value;
    return true;
}

int cli_common_option(int opt, const char *arg, cli_opts *opts)
{
    switch (opt) {
    case OPT_JSON:
        opts->json = true;
        return 1;
    case OPT_QUIET:
        opts->quiet = true;
        return 1;
    case OPT_VERBOSE:
        opts->verbose = true;
        return 1;
    case OPT_OFFLINE:
        opts->offline = true;
        return 1;
    case OPT_CACHE_DIR:
        opts->cache_dir = arg;
        return 1;
    case OPT_CACHE_MAX:
        if (!cli_parse_size(arg, &opts->cache_max)) {
            cli_usage_error("ckptscope", "--cache-max wants a size such as 20G or 500M, not \"%s\"", arg);
            return -1;
        }
        return 1;
    default:
        return 0;
    }
}

/* What a local SOURCE's report says about it: its files, sizes and header lengths. */
static cJSON *local_source_json(const char *spec, const cks_ckpt *ckpt)
{
    cJSON *src = cli_source_spec(cJSON_CreateObject(), spec);
    cJSON *files;
    cJSON_AddStringToObject(src, "kind", "local");
    cJSON_AddStringToObject(src, "path", spec);
    files = cJSON_AddArrayToObject(src, "files");
    for (size_t f = 0; f < ckpt->n_files; f++) {
        cJSON *file = cJSON_CreateObject();
        cJSON_AddStringToObject(file, "path", ckpt->files[f].path);
        cJSON_AddNumberToObject(file, "size", (double)ckpt->files[f].source->size);
        cJSON_AddNumberToObject(file, "header_bytes", (double)ckpt->files[f].header->header_len);
        cJSON_AddItemToArray(files, file);
    }
    return src;
}

cks_err cli_open_checkpoint(const char *spec, const cli_opts *opts, cks_ckpt **out, cJSON **report,
                            cks_diag *diag)
{
    cks_err err;
    (void)opts;
    *out = NULL;
    if (report)
        *report = NULL;
    if (cli_remote_open(spec, opts, out, report, &err, diag)) { /* Hub repos and URLs */
        if (!err && report && *report)
            cli_source_spec(*report, spec);
        return err;
    }
    err = cks_ckpt_open_local(spec, out, diag);
    if (err)
        return err;
    if (report)
        *report = local_source_json(spec, *out);
    return CKS_OK;
}

cks_err cli_open_checkpoints(cks_workspace_item *items, size_t n, const cli_opts *opts, cJSON **reports,
                             cks_diag *diag)
{
    cks_err err = cli_remote_open_all(items, n, opts, reports, diag);
    for (size_t i = 0; i < n; i++) {
        if (items[i].err)
            continue;
        if (reports[i])
            cli_source_spec(reports[i], items[i].source);
        else if (!items[i].session)
            reports[i] = local_source_json(items[i].source, items[i].ckpt);
    }
    return err;
}

cks_err cli_check_checkpoint(const char *spec, const cli_opts *opts, cks_ckpt_check **out, cJSON **report,
                             cks_diag *diag)
{
    cks_err err;
    *out = NULL;
    if (report)
        *report = NULL;
    if (cli_remote_check(spec, opts, out, report, &err, diag)) {
        if (!err && report && *report)
            cli_source_spec(*report, spec);
        return err;
    }
    err = cks_ckpt_check_local(spec, out, diag);
    if (!err && report) {
        *report = cli_source_spec(cJSON_CreateObject(), spec);
        cJSON_AddStringToObject(*report, "kind", "local");
        cJSON_AddStringToObject(*report, "path", spec);
    }
    return err;
}

void cli_note_unverified(const char *cmd, const cks_ckpt *ckpt, cJSON *root)
{
    cJSON *list = root ? cJSON_AddArrayToObject(root, "unverified_files") : NULL;
    for (size_t f = 0; ckpt && f < ckpt->n_files; f++) {
        if (!cks_source_unverified(ckpt->files[f].source))
            continue;
        if (list)
            cJSON_AddItemToArray(list, cJSON_CreateString(ckpt->files[f].path));
        if (cmd)
            fprintf(stderr,
                    "ckptscope %s: note: %s was read from the Hugging Face cache (HF_HOME) and "
                    "only in part, so it was not checked against the Hub's hash: what is shown "
                    "comes from that copy (a command that reads the whole file checks it)\n",
                    cmd, cli_esc(ckpt->files[f].source->name));
    }
}

cJSON *cli_source_spec(cJSON *source, const char *spec)
{
    cJSON *value;
    if (!source || cJSON_GetObjectItemCaseSensitive(source, "spec"))
        return source;
    value = cJSON_CreateString(spec);
    if (!value)
        return source;
    value->string = strdup("spec"); /* cJSON frees an item's key with free() */
    /* first, so a reader sees what was asked for before what it resolved to */
    if (!value->string || !cJSON_InsertItemInArray(source, 0, value))
        cJSON_Delete(value);
    return source;
}

cJSON *cli_json_shape(const cks_tensor_info *info)
{
    cJSON *shape = cJSON_CreateArray();
    for (uint32_t d = 0; d < info->ndim; d++)
        cJSON_AddItemToArray(shape, cJSON_CreateNumber((double)info->shape[d]));
    return shape;
}

static int natural_order(const void *a, const void *b)
{
    const cks_ckpt_tensor *x = *(const cks_ckpt_tensor *const *)a, *y = *(const cks_ckpt_tensor *const *)b;
    return strverscmp(x->info->name, y->info->name);
}

static int by_string(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

cks_err cli_select_tensors(const cks_ckpt *ckpt, char *const *globs, size_t n_globs,
                           const cks_ckpt_tensor ***out, size_t *n, cks_diag *diag)
{
    const cks_ckpt_tensor **sel = calloc(ckpt->n_tensors ? ckpt->n_tensors : 1, sizeof *sel);
    size_t count = 0;
    *out = NULL;
    *n = 0;
    if (!sel)
        return cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
    /* plain names are looked up in a sorted copy, patterns tried one by one: 500 names of a
     * --tensors-from list against 2,000 tensors were a million fnmatch calls (60 ms) */
    char **plain = malloc((n_globs ? n_globs : 1) * sizeof *plain);
    char **pattern = malloc((n_globs ? n_globs : 1) * sizeof *pattern);
    size_t n_plain = 0, n_pattern = 0;
    if (!plain || !pattern) {
        free(plain);
        free(pattern);
        free(sel);
        return cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
    }
    for (size_t g = 0; g < n_globs; g++) {
        if (strpbrk(globs[g], "*?[\\"))
            pattern[n_pattern++] = globs[g];
        else
            plain[n_plain++] = globs[g];
    }
    qsort(plain, n_plain, sizeof *plain, by_string);
    for (size_t i = 0; i < ckpt->n_tensors; i++) {
        const char *name = ckpt->tensors[i].info->name;
        bool keep = n_globs == 0 ||
                    (n_plain && bsearch(&name, plain, n_plain, sizeof *plain, by_string));
        for (size_t g = 0; g < n_pattern && !keep; g++)
            keep = fnmatch(pattern[g], name, 0) == 0;
        if (keep)
            sel[count++] = &ckpt->tensors[i];
    }
    free(plain);
    free(pattern);
    qsort(sel, count, sizeof *sel, natural_order);
    *out = sel;
    *n = count;
    return CKS_OK;
}

cks_err cli_hash_selection(const cks_ckpt *ckpt, const cks_ckpt_tensor *const *sel, size_t n,
                           const cli_opts *opts, const char *what, cks_tensor_hash **out, cks_diag *diag)
{
    cks_err err;
    cli_progress progress;
    cks_hash_opts hopts = {0};
    cks_tensor_hash *hashes = calloc(n ? n : 1, sizeof *hashes);

    *out = NULL;
    if (!hashes)
        return cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
    cli_progress_init(&progress, opts, what);
    for (size_t i = 0; i < n; i++)
        progress.total += sel[i]->info->end - sel[i]->info->begin;
    hopts.progress = cli_progress_update;
    hopts.progress_ctx = &progress;
    err = cks_hash_tensors(ckpt, sel, n, &hopts, hashes, diag);
    cli_progress_done(&progress);
    if (err) {
        free(hashes);
        return err;
    }
    *out = hashes;
    return CKS_OK;
}
