/*
 * ckptscope verify SOURCE [--against FILE_OR_DIR ...] [--full] — is a new upload well-formed,
 * complete, what the Hub says it is, and is it a silent copy or derivative of a known model?
 *
 * Validation reuses the checkpoint opener (every format rule on every shard, the index against
 * the shard headers, truncation, LFS pointers); when it fails, the library's file-by-file
 * check (cks_ckpt_check_*) finds every problem instead of the first. Each file's size is
 * compared three ways (the Hub's listing, the CDN's Content-Range total, the header). Then
 * rows of every float tensor are sampled for NaN/Inf and all-zero blocks, and with --full each
 * file is streamed through SHA-256 against the Hub's LFS hash. Provenance compares the upload
 * against each fingerprint given (the fingerprint as A), and lists the nearest known models
 * first.
 */
#include <dirent.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "ckptscope/compare.h"
#include "ckptscope/decode.h"
#include "ckptscope/fingerprint.h"
#include "ckptscope/fingerprint_library.h"
#include "ckptscope/hub.h"
#include "ckptscope/verify.h"
#include "cli.h"
#include "cli_remote.h"

/* The report is the library's (include/ckptscope/verify.h); the names this file prints it by. */
#define MAX_PROBLEMS 2000
#define MAX_WARNINGS 256
typedef cks_verify_report verify_state;
typedef cks_verify_findings findings;
typedef cks_verify_finding finding;
typedef cks_verify_values value_check;

/* `verify --full`'s progress line over the library's read */
static void on_read_progress(void *ctx, uint64_t done, uint64_t total)
{
    cli_progress *p = ctx;
    cli_progress_update(p, done, total);
}

static cks_err read_checks(const cks_ckpt *ckpt, verify_state *v, bool full, const cli_opts *opts, cks_diag *diag)
{
    cli_progress progress;
    cks_err err;
    cli_progress_init(&progress, opts, "verify: hashing and checking every value");
    err = cks_verify_read(ckpt, v, full, on_read_progress, &progress, diag);
    cli_progress_done(&progress);
    return err;
}

static cJSON *size_json(bool known, uint64_t value)
{
    return known ? cJSON_CreateNumber((double)value) : cJSON_CreateNull();
}

/* checks.files: one object per file (path, sizes, hashes), in the keys of schema 2 */
static cJSON *files_json(const verify_state *v)
{
    cJSON *files = cJSON_CreateArray();
    for (size_t i = 0; i < v->n_files; i++) {
        const cks_verify_file *f = &v->files[i];
        cJSON *e = cJSON_CreateObject();
        cJSON_AddStringToObject(e, "path", f->path);
        cJSON_AddItemToObject(e, "size", size_json(f->size_known, f->size));
        cJSON_AddItemToObject(e, "served_size", size_json(f->served_known, f->served_size));
        cJSON_AddItemToObject(e, "header_implied_size", size_json(f->implied_known, f->implied_size));
        cJSON_AddItemToObject(e, "header_bytes", size_json(f->header_known, f->header_bytes));
        cJSON_AddBoolToObject(e, "header_valid", f->header_valid);
        if (f->sha256[0])
            cJSON_AddStringToObject(e, "sha256", f->sha256);
        else
            cJSON_AddNullToObject(e, "sha256");
        if (f->error)
            cJSON_AddStringToObject(e, "error", f->error);
        if (f->sha256_computed[0]) {
            cJSON_AddStringToObject(e, "sha256_computed", f->sha256_computed);
            if (f->sha256_match < 0)
                cJSON_AddNullToObject(e, "sha256_match");
            else
                cJSON_AddBoolToObject(e, "sha256_match", f->sha256_match == 1);
        }
        cJSON_AddItemToArray(files, e);
    }
    return files;
}

#define TEXT_WARNINGS_MAX 20
#define MAX_AGAINST 64
#define MAX_FPS 4096
#define PRESCREEN_MIN_FPS 8

static const char verify_help[] =
    "usage: ckptscope verify [OPTIONS] SOURCE [--against FILE_OR_DIR ...] [--full]\n"
    "\n"
    "Validation: every safetensors rule on every shard, the index against the shard headers,\n"
    "each file's size as the Hub lists it, as its CDN serves it (Content-Range) and as its\n"
    "header implies, truncated files and Git-LFS pointers, and NaN/Inf or all-zero values on\n"
    "sampled rows of every float tensor. When the checkpoint does not open, each file is\n"
    "checked on its own so that every problem is reported. --full also streams each file\n"
    "through SHA-256 and checks it against the Hub's LFS hash (no copy on disk besides the\n"
    "cache's), and checks every value of every float tensor for NaN/Inf as it streams past.\n"
    "The output says what was checked and what was not (sampled blocks without --full).\n"
    "Provenance: with --against, compares SOURCE against each fingerprint (a file, or every\n"
    "fingerprint in a directory; see `ckptscope fingerprint`) and lists the nearest known\n"
    "models with their verdicts.\n"
    "\n"
    "options:\n"
    "  --against F      a fingerprint file, a directory of them, or a library made by\n"
    "                   `fingerprint gather` (repeatable)\n"
    "  --full           SHA-256 of every file against the Hub's, and every value of every\n"
    "                   float tensor checked for NaN/Inf on the way\n"
    "  --no-synthetic   skip compare's synthetic power checks in full comparisons\n"
    "  --prescreen      pre-screen every fingerprint from its summary in the cache (default:\n"
    "                   with 8 or more fingerprints; see docs/verify.md)\n"
    "  --no-prescreen   never pre-screen (each fingerprint is opened and screened)\n"
    "  --no-screen      compare fully against every fingerprint (default: a quick screen\n"
    "                   first, 99 permutations and no power checks; a fingerprint the\n"
    "                   screen sees nothing of is listed as screened_out, the others are\n"
    "                   compared fully)\n"
    "  --json           machine-readable result (docs/json.md)\n"
    "  --quiet          no progress on stderr\n"
    "  --help           this text\n"
    "\n"
    "Without --against the outcome is \"valid\" (provenance not checked), never \"unrelated\";\n"
    "an --against directory holding no fingerprint is an error (exit 2).\n"
    "\n"
    "exit status: 0 valid and not related to any fingerprint given (warnings allowed); 1\n"
    "identical to or derived from a known model; 3 invalid upload (every problem is listed\n"
    "with its rule and file); 4/5/6 could not check (I/O, network, access).\n"
    "\n"
    "examples:\n"
    "  ckptscope verify org/new-upload --full\n"
    "  ckptscope verify org/new-upload --against known/ --json\n";

/* ---- provenance ---- */

typedef cks_verify_known known; /* the library's (include/ckptscope/verify.h) */

static int add_path(char **list, size_t *n, const char *path)
{
    if (*n == MAX_FPS)
        return -1;
    list[*n] = strdup(path);
    if (!list[*n])
        return -1;
    (*n)++;
    return 0;
}

static int by_string(const void *x, const void *y)
{
    return strcmp(*(char *const *)x, *(char *const *)y);
}

/* A file, or the fingerprints in a directory (by their magic, in name order). A directory
 * without any is an error, not an empty list: a CI job pointed at the wrong folder (or one a
 * failed step left empty) would otherwise pass every upload as unrelated to nothing. */
static int collect_fps(const char *arg, char **list, size_t *n)
{
    struct stat sb;
    DIR *d;
    struct dirent *e;
    size_t first = *n, others = 0;
    if (stat(arg, &sb) != 0)
        return cli_usage_error("verify", "--against %s: no such file or directory", arg);
    if (!S_ISDIR(sb.st_mode) && cks_fplib_is_file(arg)) { /* a library: each member (docs/scale-out.md) */
        char **refs = NULL;
        size_t n_refs = 0;
        int rc = cli_fingerprint_library_refs(arg, &refs, &n_refs);
        for (size_t i = 0; i < n_refs; i++) {
            if (rc == EXIT_OK && add_path(list, n, refs[i]))
                rc = cli_usage_error("verify", "more than %d fingerprints", MAX_FPS);
            free(refs[i]);
        }
        free(refs);
        return rc;
    }
    if (!S_ISDIR(sb.st_mode)) {
        if (!cks_fingerprint_is_file(arg))
            return cli_usage_error("verify", "--against %s is not a fingerprint (make one with `ckptscope "
                                             "fingerprint SOURCE -o FILE`)",
                                   arg);
        return add_path(list, n, arg) ? cli_usage_error("verify", "more than %d fingerprints", MAX_FPS) : EXIT_OK;
    }
    d = opendir(arg);
    if (!d) {
        cks_diag diag;
        return cli_fail("verify", cks_fail(&diag, CKS_ERR_IO, "--against %s: cannot read the directory", arg), &diag);
    }
    while ((e = readdir(d))) {
        char *p = NULL;
        if (e->d_name[0] == '.')
            continue;
        if (asprintf(&p, "%s/%s", arg, e->d_name) < 0)
            continue;
        if (!cks_fingerprint_is_file(p))
            others++;
        else if (add_path(list, n, p)) {
            free(p);
            closedir(d);
            return cli_usage_error("verify", "more than %d fingerprints", MAX_FPS);
        }
        free(p);
    }
    closedir(d);
    if (*n == first)
        return cli_usage_error("verify",
                               "--against %s holds no fingerprint (%zu other file%s): nothing to compare the upload "
                               "with. Make them with `ckptscope fingerprint SOURCE -o %s/NAME.ckfp` (or --from LIST "
                               "%s), or drop --against to check only the upload",
                               arg, others, others == 1 ? "" : "s", arg, arg);
    qsort(list + first, *n - first, sizeof *list, by_string);
    return EXIT_OK;
}

/* The progress line of cks_verify_against. */
static void against_progress(void *ctx, const char *path, size_t i, size_t n)
{
    char stage[600];
    if (!path) {
        cli_progress_stage(ctx, NULL, 0);
        return;
    }
    snprintf(stage, sizeof stage, "verify: against %s (%zu of %zu)", path, i + 1, n);
    cli_progress_stage(ctx, stage, 0);
}

/* ---- output ---- */

static const char *outcome_name(int rc, bool against)
{
    switch (rc) {
    case EXIT_OK:
        /* without --against nothing was compared: "unrelated" would claim what was not checked */
        return against ? "valid_unrelated" : "valid";
    case EXIT_DIFFERENT:
        return "related_to_known_model";
    case EXIT_FORMAT:
        return "invalid";
    default:
        return "could_not_check";
    }
}

static cJSON *findings_json(const findings *fs)
{
    cJSON *arr = cJSON_CreateArray();
    for (size_t i = 0; i < fs->n; i++) {
        const finding *f = &fs->items[i];
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "rule", f->rule);
        if (f->file)
            cJSON_AddStringToObject(o, "file", f->file);
        else
            cJSON_AddNullToObject(o, "file");
        if (f->tensor)
            cJSON_AddStringToObject(o, "tensor", f->tensor);
        else
            cJSON_AddNullToObject(o, "tensor");
        cJSON_AddStringToObject(o, "detail", f->detail);
        cJSON_AddItemToArray(arr, o);
    }
    return arr;
}

/* "rule (file, tensor "x")" for the text output. */
static void finding_head(const finding *f, char *out, size_t cap)
{
    if (f->file && f->tensor)
        snprintf(out, cap, "%s (%s, tensor \"%s\")", f->rule, f->file, f->tensor);
    else if (f->file)
        snprintf(out, cap, "%s (%s)", f->rule, f->file);
    else
        snprintf(out, cap, "%s", f->rule);
}

static cJSON *values_json(const value_check *vc, const verify_state *v)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "mode", vc->full ? "every_value" : "sampled");
    cJSON_AddNumberToObject(o, "float_tensors", (double)vc->float_tensors);
    cJSON_AddNumberToObject(o, "float_bytes", (double)vc->float_bytes);
    cJSON_AddNumberToObject(o, "tensors_checked", (double)(vc->full ? vc->tensors_checked : v->sampled));
    cJSON_AddNumberToObject(o, "bytes_checked", (double)(vc->full ? vc->bytes_checked : v->sampled_bytes));
    if (vc->full)
        cJSON_AddNumberToObject(o, "values_checked", (double)vc->values_checked);
    cJSON_AddNumberToObject(o, "tensors_without_nan_or_inf_encoding", (double)vc->no_encoding);
    cJSON_AddNumberToObject(o, "tensors_unread", (double)vc->unread);
    return o;
}

static void print_json(const char *spec, cJSON *source, const verify_state *v, const known *ks, size_t n_known,
                       int rc)
{
    cJSON *root = cli_json_new("verify"), *warns, *prov, *checks;
    if (!source)
        source = cJSON_CreateObject(); /* the source did not open: what was asked for */
    cJSON_AddNumberToObject(source, "bytes_read", (double)(v->sampled_bytes + v->hashed_bytes));
    cJSON_AddItemToObject(root, "source", cli_source_spec(source, spec));
    cJSON_AddStringToObject(root, "outcome", outcome_name(rc, v->against));
    cJSON_AddNumberToObject(root, "exit_code", rc);
    /* valid: every check ran and none found a problem (not merely "no problem found") */
    cJSON_AddBoolToObject(root, "valid", rc != EXIT_FORMAT && v->problems.n == 0 && !v->have_error);
    cJSON_AddBoolToObject(root, "provenance_checked", v->against && rc != EXIT_FORMAT && !v->have_error);
    cJSON_AddNumberToObject(root, "bytes_read", (double)(v->sampled_bytes + v->hashed_bytes));
    if (v->have_error) {
        cJSON *error = cJSON_AddObjectToObject(root, "error");
        cJSON_AddStringToObject(error, "rule", cks_strerror(v->error));
        cJSON_AddStringToObject(error, "message", v->error_text);
        cJSON_AddNumberToObject(error, "exit_code", cli_exit_code(v->error));
        if (v->error_file[0])
            cJSON_AddStringToObject(error, "file", v->error_file);
        else
            cJSON_AddNullToObject(error, "file");
    }
    cJSON_AddItemToObject(root, "problems", findings_json(&v->problems));
    warns = cJSON_AddArrayToObject(root, "warnings");
    for (size_t i = 0; i < v->warnings.n; i++) {
        char text[1200];
        const finding *f = &v->warnings.items[i];
        snprintf(text, sizeof text, "%s%s%s", f->file && !f->tensor ? f->file : "", f->file && !f->tensor ? ": " : "",
                 f->detail);
        cJSON_AddItemToArray(warns, cJSON_CreateString(text));
    }
    cJSON_AddItemToObject(root, "warning_items", findings_json(&v->warnings));
    checks = cJSON_AddObjectToObject(root, "checks");
    cJSON_AddBoolToObject(checks, "file_by_file", v->file_by_file);
    cJSON_AddNumberToObject(checks, "problems_omitted", (double)v->problems.omitted);
    cJSON_AddNumberToObject(checks, "index_entries_unchecked", (double)v->unchecked_entries);
    cJSON_AddNumberToObject(checks, "tensors_sampled", (double)v->sampled);
    cJSON_AddNumberToObject(checks, "bytes_sampled", (double)v->sampled_bytes);
    cJSON_AddNumberToObject(checks, "non_finite_tensors", (double)v->nan_tensors);
    cJSON_AddNumberToObject(checks, "all_zero_tensors", (double)v->zero_tensors);
    cJSON_AddItemToObject(checks, "values", values_json(&v->values, v));
    cJSON_AddItemToObject(checks, "files", files_json(v));
    prov = cJSON_AddArrayToObject(root, "provenance");
    for (size_t i = 0; i < n_known; i++) {
        cJSON *k = cJSON_CreateObject();
        cJSON_AddStringToObject(k, "fingerprint", ks[i].path);
        cJSON_AddStringToObject(k, "made_from", ks[i].source);
        cJSON_AddStringToObject(k, "repo", ks[i].repo);
        cJSON_AddStringToObject(k, "commit", ks[i].commit);
        cJSON_AddStringToObject(k, "verdict", ks[i].screened ? "screened_out" : cks_verdict_name(ks[i].verdict));
        cJSON_AddBoolToObject(k, "screened", ks[i].screened);
        cJSON_AddBoolToObject(k, "prescreened", ks[i].prescreened);
        if (isfinite(ks[i].t2))
            cJSON_AddNumberToObject(k, "norm_gain_pearson", ks[i].t2);
        cJSON_AddStringToObject(k, "reason", ks[i].reason);
        cJSON_AddItemToArray(prov, k);
    }
    cli_json_print(root);
}

/* What the value check covered, and what it did not. */
static void print_values(const verify_state *v)
{
    const value_check *vc = &v->values;
    char a[32], b[32];
    if (!vc->float_tensors)
        return;
    if (vc->full) {
        printf("  values: every value of %zu float tensors checked for NaN/Inf while hashing (%s, %llu values): "
               "%zu with NaN/Inf",
               vc->tensors_checked, cli_human_bytes(vc->bytes_checked, a, sizeof a),
               (unsigned long long)vc->values_checked, v->nan_tensors);
        if (vc->unread)
            printf("; not checked: %zu in files that could not be read", vc->unread);
        if (vc->no_encoding)
            printf("; %zu F4/F6 tensors hold no NaN or Inf encoding", vc->no_encoding);
        printf("\n");
    } else if (v->sampled) {
        printf("  values: NaN/Inf checked on sampled blocks of %zu float tensors (%s of %s, %.2g%%): %zu with "
               "NaN/Inf, %zu all zero; the rest was not read (--full checks every value)\n",
               v->sampled, cli_human_bytes(v->sampled_bytes, a, sizeof a), cli_human_bytes(vc->float_bytes, b, sizeof b),
               vc->float_bytes ? 100.0 * (double)v->sampled_bytes / (double)vc->float_bytes : 0.0, v->nan_tensors,
               v->zero_tensors);
    }
}

static void print_text(const char *spec, const verify_state *v, const known *ks, size_t n_known, int rc)
{
    char head[1024];
    printf("%s: %s%s\n", cli_esc(spec), outcome_name(rc, v->against),
           v->file_by_file ? " (checked file by file: the checkpoint does not open)" : "");
    if (v->have_error)
        printf("  could not check: %s\n", cli_esc(v->error_text));
    for (size_t i = 0; i < v->problems.n; i++) {
        finding_head(&v->problems.items[i], head, sizeof head);
        printf("  problem %s: %s\n", cli_esc(head), cli_esc(v->problems.items[i].detail));
    }
    if (v->problems.omitted)
        printf("  ... and %zu more problems\n", v->problems.omitted);
    /* warnings can number thousands (a sparse or zero-initialised MoE): the first few here,
     * every one in --json */
    for (size_t i = 0; i < v->warnings.n && i < TEXT_WARNINGS_MAX; i++) {
        finding_head(&v->warnings.items[i], head, sizeof head);
        printf("  warning %s: %s\n", cli_esc(head), cli_esc(v->warnings.items[i].detail));
    }
    if (v->warnings.n > TEXT_WARNINGS_MAX)
        printf("  ... and %zu more warnings (--json lists every one)\n", v->warnings.n - TEXT_WARNINGS_MAX);
    print_values(v);
    if (!v->against && rc == EXIT_OK)
        printf("  provenance: not checked (no --against: compare it with fingerprints of known models, "
               "`ckptscope fingerprint`)\n");
    for (size_t i = 0; i < n_known; i++)
        printf("  %-12s %s%s%s (%s)\n", ks[i].screened ? "screened_out" : cks_verdict_name(ks[i].verdict), cli_esc(ks[i].source),
               ks[i].commit[0] ? "@" : "", cli_esc(ks[i].commit), cli_esc(ks[i].path));
}

/* Opening failed for a reason the file-by-file check can say more about. */
static bool worth_checking_files(cks_err err)
{
    return cks_err_class_of(err) == CKS_CLASS_FORMAT || err == CKS_ERR_NOT_FOUND || err == CKS_ERR_FILE_NOT_FOUND;
}

/*
 * Opening the checkpoint failed with `first`: check it file by file so that every problem
 * is reported, and read (sample, hash) the files that are valid on their own. The open
 * error itself is a problem when the check finds none (a checkpoint that does not open is
 * never valid).
 */
static cks_err verify_file_by_file(const char *spec, const cli_opts *opts, bool full, cks_err first,
                                   const cks_diag *first_diag, verify_state *v, cJSON **source, cks_diag *diag)
{
    cks_err err = CKS_OK, e;
    cks_ckpt_check *check = NULL;
    cks_diag d;

    e = cli_check_checkpoint(spec, opts, &check, source, &d);
    if (e) {
        cks_verify_set_error(v, e, NULL, d.text);
        goto done;
    }
    v->file_by_file = true;
    if (!cks_verify_take_check(v, check)) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        goto out;
    }
    if (check->valid_part) {
        e = read_checks(check->valid_part, v, full, opts, &d);
        if (e == CKS_ERR_NOMEM) {
            err = cks_fail(diag, e, "%s", d.text);
            goto out;
        }
        if (e)
            cks_verify_set_error(v, e, NULL, d.text);
    }
done:
    if (v->problems.n == 0 && cks_err_class_of(first) == CKS_CLASS_FORMAT) {
        if (!cks_verify_add_finding(&v->problems, cks_strerror(first), NULL, NULL, "%s", first_diag->text))
            err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
    } else if (v->problems.n == 0) {
        cks_verify_set_error(v, first, NULL, first_diag->text);
    }
out:
    cks_ckpt_check_free(check);
    return err;
}

int cmd_verify(int argc, char **argv)
{
    cli_opts opts = {0};
    const char *against[MAX_AGAINST];
    size_t n_against = 0, n_fps = 0, n_known = 0;
    char **fps = NULL;
    bool full = false, no_synth = false, screen = true;
    int rc = EXIT_OK;
    verify_state *v = NULL;
    known *ks = NULL;
    cks_verify_against_opts aopts;
    size_t failed = SIZE_MAX;
    cks_ckpt *ckpt = NULL;
    cks_ckpt_check *sizes = NULL;
    cJSON *source = NULL;
    char *config = NULL, *tokenizer = NULL;
    size_t config_len = 0, tokenizer_len = 0;
    cks_diag diag, ignored;
    cks_err err;

    cli_list against_list = {against, 0, MAX_AGAINST, "fingerprints, libraries or folders"};
    bool no_screen = false, force_prescreen = false, no_prescreen = false;
    const cli_option table[] = {{.name = "against", .kind = CLI_LIST, .dest = &against_list},
                                {.name = "full", .kind = CLI_FLAG, .dest = &full},
                                {.name = "no-synthetic", .kind = CLI_FLAG, .dest = &no_synth},
                                {.name = "no-screen", .kind = CLI_FLAG, .dest = &no_screen},
                                {.name = "prescreen", .kind = CLI_FLAG, .dest = &force_prescreen},
                                {.name = "no-prescreen", .kind = CLI_FLAG, .dest = &no_prescreen},
                                {.kind = CLI_END}};
    rc = cli_parse_options("verify", argc, argv, table, &opts, verify_help);
    if (rc != CLI_GO_ON)
        return rc;
    rc = EXIT_OK;
    n_against = against_list.n;
    screen = !no_screen;
    if (argc - optind != 1)
        return cli_usage_error("verify", "expected exactly one SOURCE");
    fps = calloc(MAX_FPS, sizeof *fps);
    v = calloc(1, sizeof *v);
    if (v)
        cks_verify_report_init(v, MAX_PROBLEMS, MAX_WARNINGS);
    if (!fps || !v) {
        rc = cli_fail("verify", cks_fail(&diag, CKS_ERR_NOMEM, "out of memory"), &diag);
        goto out;
    }
    v->against = n_against > 0;
    for (size_t i = 0; i < n_against; i++) {
        rc = collect_fps(against[i], fps, &n_fps);
        if (rc != EXIT_OK)
            goto out;
    }
    /* provenance reads config.json (the model's shape) right after the headers */
    opts.reads_config = n_fps > 0;
    /* every shard's header and the index against the headers are checked on open */
    err = cli_open_checkpoint(argv[optind], &opts, &ckpt, &source, &diag);
    if (err && worth_checking_files(err)) {
        cks_diag first = diag;
        err = verify_file_by_file(argv[optind], &opts, full, err, &first, v, &source, &diag);
        if (err) {
            rc = cli_fail("verify", err, &diag);
            goto out;
        }
        goto report;
    }
    if (err) {
        cks_verify_set_error(v, err, NULL, diag.text);
        goto report;
    }
    /* the sizes: what the Hub lists, what its data server serves, what each header implies */
    err = cks_ckpt_check_sizes(ckpt, &sizes, &diag);
    if (!err && !cks_verify_take_check(v, sizes))
        err = cks_fail(&diag, CKS_ERR_NOMEM, "out of memory");
    if (!err)
        err = read_checks(ckpt, v, full, &opts, &diag);
    if (err == CKS_ERR_NOMEM) {
        rc = cli_fail("verify", err, &diag);
        goto out;
    }
    if (err)
        cks_verify_set_error(v, err, NULL, diag.text);
    if (v->problems.n || v->have_error)
        goto report;
    if (n_fps) {
        cks_compare_model live;
        if (cks_ckpt_fetch_aux(ckpt, "config.json", &config, &config_len, &ignored) != CKS_OK) {
            config = NULL;
            config_len = 0;
        }
        if (cks_ckpt_fetch_aux(ckpt, "tokenizer.json", &tokenizer, &tokenizer_len, &ignored) != CKS_OK) {
            tokenizer = NULL;
            tokenizer_len = 0;
        }
        memset(&live, 0, sizeof live);
        live.label = "upload";
        live.ckpt = ckpt;
        live.config_json = config;
        live.config_len = config_len;
        live.tokenizer_json = tokenizer;
        live.tokenizer_len = tokenizer_len;
        ks = calloc(n_fps, sizeof *ks);
        if (!ks) {
            rc = cli_fail("verify", cks_fail(&diag, CKS_ERR_NOMEM, "out of memory"), &diag);
            goto out;
        }
        memset(&aopts, 0, sizeof aopts);
        aopts.no_screen = !screen;
        aopts.no_synthetic = no_synth;
        aopts.prescreen = no_prescreen ? CKS_PRESCREEN_NEVER : force_prescreen ? CKS_PRESCREEN_ALWAYS : CKS_PRESCREEN_AUTO;
        aopts.cache = cli_remote_cache(&opts);
        aopts.progress = against_progress;
        aopts.progress_ctx = &opts;
        err = cks_verify_against(&live, (const char *const *)fps, n_fps, &aopts, ks, &n_known, &failed, &diag);
        if (err == CKS_ERR_NOMEM && failed == SIZE_MAX) {
            rc = cli_fail("verify", err, &diag);
            goto out;
        }
        if (err) {
            cks_verify_set_error(v, err, failed == SIZE_MAX ? NULL : fps[failed], diag.text);
            goto report;
        }
        if (n_known && ks[0].rank <= 1)
            rc = EXIT_DIFFERENT;
    }
report:
    /* an invalid upload says so whatever else could not be checked; then could-not-check */
    if (v->problems.n)
        rc = EXIT_FORMAT;
    else if (v->have_error)
        rc = cli_exit_code(v->error);
    if (opts.json) {
        print_json(argv[optind], source, v, ks, n_known, rc);
        source = NULL;
    } else {
        print_text(argv[optind], v, ks, n_known, rc);
    }
out:
    for (size_t i = 0; fps && i < n_fps; i++)
        free(fps[i]);
    free(fps);
    free(ks);
    if (v)
        cks_verify_report_release(v);
    free(v);
    free(config);
    free(tokenizer);
    cJSON_Delete(source);
    cks_ckpt_check_free(sizes);
    cks_ckpt_free(ckpt);
    return rc;
}
