/*
 * ckptscope verify SOURCE [--against FILE_OR_DIR ...] [--full] — is a new upload well-formed,
 * complete, what the Hub says it is, and is it a silent copy or derivative of a known model?
 *
 * Validation reuses the checkpoint opener (every format rule on every shard, the index against
 * the shard headers, truncation, LFS pointers), then samples rows of every float tensor for
 * NaN/Inf and all-zero blocks, and with --full streams each file through SHA-256 against the
 * Hub's LFS hash. Provenance compares the upload against each fingerprint given (the
 * fingerprint as A), and lists the nearest known models first.
 */
#include <dirent.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "ckptscope/compare.h"
#include "ckptscope/decode.h"
#include "ckptscope/fingerprint.h"
#include "cli.h"

#define SAMPLE_BYTES (64u << 10)      /* per tensor: three blocks (start, middle, end) */
#define SAMPLE_TOTAL (256ull << 20)   /* per upload: keeps verify cheap on a 100B model */
#define HASH_CHUNK (8u << 20)
#define MAX_AGAINST 64
#define MAX_FPS 4096

static const char verify_help[] =
    "usage: ckptscope verify [OPTIONS] SOURCE [--against FILE_OR_DIR ...] [--full]\n"
    "\n"
    "Validation: every safetensors rule on every shard, the index against the shard headers,\n"
    "file sizes against what the server reports, truncated files and Git-LFS pointers, and\n"
    "NaN/Inf or all-zero values on sampled rows of every float tensor. --full also streams\n"
    "each file through SHA-256 and checks it against the Hub's LFS hash (no copy on disk\n"
    "besides the cache's).\n"
    "Provenance: with --against, compares SOURCE against each fingerprint (a file, or every\n"
    "fingerprint in a directory; see `ckptscope fingerprint`) and lists the nearest known\n"
    "models with their verdicts.\n"
    "\n"
    "options:\n"
    "  --against F      a fingerprint file or a directory of them (repeatable)\n"
    "  --full           SHA-256 of every file against the Hub's\n"
    "  --no-synthetic   skip compare's synthetic power checks (faster with many fingerprints)\n"
    "  --json           machine-readable result (README)\n"
    "  --quiet          no progress on stderr\n"
    "  --help           this text\n"
    "\n"
    "exit status: 0 valid and not related to any fingerprint given; 1 identical to or derived\n"
    "from a known model; 3 invalid upload; 4/5/6 could not check (I/O, network, access).\n"
    "\n"
    "examples:\n"
    "  ckptscope verify org/new-upload --full\n"
    "  ckptscope verify org/new-upload --against known/ --json\n";

typedef struct problem {
    char rule[48];
    char detail[512];
} problem;

typedef struct verify_state {
    problem problems[64];
    size_t n_problems;
    char warnings[16][256];
    size_t n_warnings;
    size_t sampled, nan_tensors, zero_tensors;
    uint64_t sampled_bytes;
    cJSON *files;   /* per file: path, size, sha256 (hub), computed, match */
} verify_state;

static void add_problem(verify_state *v, const char *rule, const char *fmt, const char *a, const char *b)
{
    problem *p;
    if (v->n_problems == sizeof v->problems / sizeof v->problems[0])
        return;
    p = &v->problems[v->n_problems++];
    snprintf(p->rule, sizeof p->rule, "%s", rule);
    snprintf(p->detail, sizeof p->detail, fmt, a, b);
}

static void add_warning(verify_state *v, const char *fmt, const char *a)
{
    if (v->n_warnings == sizeof v->warnings / sizeof v->warnings[0])
        return;
    snprintf(v->warnings[v->n_warnings++], sizeof v->warnings[0], fmt, a);
}

/* Three blocks of one float tensor: NaN/Inf anywhere is invalid; all zero is suspicious. */
static cks_err sample_tensor(const cks_ckpt *ckpt, const cks_ckpt_tensor *t, verify_state *v, cks_diag *diag)
{
    cks_err err = CKS_OK;
    const cks_tensor_info *info = t->info;
    size_t esize = cks_decode_elem_size(info->dtype);
    uint64_t size = info->end - info->begin, block = SAMPLE_BYTES / 3, offs[3];
    uint8_t *buf = NULL;
    float *vals = NULL;
    bool all_zero = true;
    cks_nonfinite tally = {0, 0};

    if (!esize || !cks_dtype_is_float(info->dtype) || size == 0)
        return CKS_OK;
    block -= block % esize;
    if (block == 0)
        block = esize;
    if (size <= 3 * block) {
        offs[0] = 0;
        block = size;
        offs[1] = offs[2] = UINT64_MAX;
    } else {
        offs[0] = 0;
        offs[1] = (size / 2) - (size / 2) % esize;
        offs[2] = size - block;
    }
    buf = malloc((size_t)block);
    vals = malloc((size_t)(block / esize) * sizeof *vals);
    if (!buf || !vals) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        goto out;
    }
    for (int i = 0; i < 3 && !err; i++) {
        if (offs[i] == UINT64_MAX)
            continue;
        err = cks_ckpt_read_tensor(ckpt, t, offs[i], buf, (size_t)block, diag);
        if (!err)
            err = cks_decode_f32(info->dtype, buf, (size_t)(block / esize), vals, &tally, diag);
        for (uint64_t k = 0; !err && k < block && all_zero; k++)
            all_zero = buf[k] == 0;
        v->sampled_bytes += block;
    }
    if (err)
        goto out;
    v->sampled++;
    if (tally.nan_count || tally.inf_count) {
        char counts[96];
        snprintf(counts, sizeof counts, "%llu NaN and %llu Inf values in the sampled rows",
                 (unsigned long long)tally.nan_count, (unsigned long long)tally.inf_count);
        add_problem(v, "NonFinite", "tensor \"%s\": %s", info->name, counts);
        v->nan_tensors++;
    } else if (all_zero && info->nelements >= 64) {
        /* zero-initialised biases exist: a warning, not a rejection */
        add_warning(v, "tensor \"%s\" is all zeros on the sampled rows", info->name);
        v->zero_tensors++;
    }
out:
    free(buf);
    free(vals);
    return err;
}

static cks_err sample_all(const cks_ckpt *ckpt, verify_state *v, cks_diag *diag)
{
    cks_err err = CKS_OK;
    cks_range *ranges = malloc((ckpt->n_tensors ? ckpt->n_tensors : 1) * 3 * sizeof *ranges);
    if (!ranges)
        return cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
    /* one prefetch per file so a remote source fetches every sampled block at once */
    for (size_t f = 0; f < ckpt->n_files && !err; f++) {
        size_t n = 0;
        for (size_t i = 0; i < ckpt->n_tensors; i++) {
            const cks_tensor_info *info = ckpt->tensors[i].info;
            uint64_t size = info->end - info->begin, len = size < SAMPLE_BYTES ? size : SAMPLE_BYTES / 3;
            if (ckpt->tensors[i].file != f || !cks_dtype_is_float(info->dtype) || size == 0)
                continue;
            ranges[n].offset = info->file_offset;
            ranges[n++].length = len;
            if (size > SAMPLE_BYTES) {
                ranges[n].offset = info->file_offset + size / 2 - (size / 2) % 8;
                ranges[n++].length = len;
                ranges[n].offset = info->file_offset + size - len;
                ranges[n++].length = len;
            }
        }
        if (n)
            err = cks_source_prefetch(ckpt->files[f].source, ranges, n, diag);
    }
    free(ranges);
    for (size_t i = 0; i < ckpt->n_tensors && !err && v->sampled_bytes < SAMPLE_TOTAL; i++)
        err = sample_tensor(ckpt, &ckpt->tensors[i], v, diag);
    return err;
}

/* --full: each file streamed through SHA-256 and compared with the Hub's LFS hash. */
static cks_err hash_files(const cks_ckpt *ckpt, verify_state *v, const cli_opts *opts, cks_diag *diag)
{
    cks_err err = CKS_OK;
    uint8_t *buf = malloc(HASH_CHUNK);
    if (!buf)
        return cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
    for (size_t f = 0; f < ckpt->n_files && !err; f++) {
        cks_source *src = ckpt->files[f].source;
        EVP_MD_CTX *md = EVP_MD_CTX_new();
        uint8_t digest[32];
        unsigned int dlen = 0;
        char hex[65];
        cJSON *entry = cJSON_GetArrayItem(v->files, (int)f);
        if (!md || EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1) {
            EVP_MD_CTX_free(md);
            err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
            break;
        }
        if (!opts->quiet && isatty(2))
            fprintf(stderr, "verify: hashing %s...\n", ckpt->files[f].path);
        for (uint64_t off = 0; off < src->size && !err; off += HASH_CHUNK) {
            size_t len = src->size - off < HASH_CHUNK ? (size_t)(src->size - off) : HASH_CHUNK;
            err = cks_source_read_at(src, off, buf, len, diag);
            if (!err)
                EVP_DigestUpdate(md, buf, len);
        }
        EVP_DigestFinal_ex(md, digest, &dlen);
        EVP_MD_CTX_free(md);
        if (err)
            break;
        cks_hex_encode(digest, 32, hex);
        cJSON_AddStringToObject(entry, "sha256_computed", hex);
        if (!src->sha256_hex[0]) {
            cJSON_AddNullToObject(entry, "sha256_match");
            add_warning(v, "%s: no SHA-256 from the server to check against (local file or plain URL)",
                        ckpt->files[f].path);
        } else {
            bool match = strcmp(hex, src->sha256_hex) == 0;
            cJSON_AddBoolToObject(entry, "sha256_match", match);
            if (!match)
                add_problem(v, "Sha256Mismatch", "%s: SHA-256 of the bytes is %s, not the Hub's", ckpt->files[f].path,
                            hex);
        }
    }
    free(buf);
    return err;
}

/* ---- provenance ---- */

typedef struct known {
    char *path;
    cks_verdict verdict;
    double t2, t1;
    char reason[1024];
    char source[256], repo[256], commit[64];
    int rank;
} known;

static int verdict_rank(cks_verdict v)
{
    switch (v) {
    case CKS_VERDICT_IDENTICAL:
        return 0;
    case CKS_VERDICT_DERIVED:
        return 1;
    case CKS_VERDICT_INCONCLUSIVE:
        return 2;
    default:
        return 3;
    }
}

static int known_order(const void *x, const void *y)
{
    const known *a = x, *b = y;
    double ta = isfinite(a->t2) ? a->t2 : -2, tb = isfinite(b->t2) ? b->t2 : -2;
    if (a->rank != b->rank)
        return a->rank - b->rank;
    return ta > tb ? -1 : ta < tb;
}

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

/* A file, or the fingerprints in a directory (by their magic, in name order). */
static int collect_fps(const char *arg, char **list, size_t *n)
{
    struct stat sb;
    DIR *d;
    struct dirent *e;
    size_t first = *n;
    if (stat(arg, &sb) != 0) {
        fprintf(stderr, "ckptscope verify: --against %s: no such file or directory\n", arg);
        return EXIT_USAGE;
    }
    if (!S_ISDIR(sb.st_mode)) {
        if (!cks_fingerprint_is_file(arg)) {
            fprintf(stderr, "ckptscope verify: --against %s is not a fingerprint (make one with `ckptscope "
                            "fingerprint`)\n", arg);
            return EXIT_USAGE;
        }
        return add_path(list, n, arg) ? EXIT_INTERNAL : EXIT_OK;
    }
    d = opendir(arg);
    if (!d) {
        fprintf(stderr, "ckptscope verify: --against %s: cannot read the directory\n", arg);
        return EXIT_IO;
    }
    while ((e = readdir(d))) {
        char *p = NULL;
        if (e->d_name[0] == '.')
            continue;
        if (asprintf(&p, "%s/%s", arg, e->d_name) < 0)
            continue;
        if (cks_fingerprint_is_file(p) && add_path(list, n, p)) {
            free(p);
            closedir(d);
            return EXIT_INTERNAL;
        }
        free(p);
    }
    closedir(d);
    qsort(list + first, *n - first, sizeof *list, by_string);
    return EXIT_OK;
}

static cks_err compare_against(const char *path, const cks_compare_model *live, bool no_synthetic, known *k,
                               cks_diag *diag)
{
    cks_err err;
    cks_fingerprint *fp = NULL;
    cks_compare_model a;
    cks_compare_opts copts;
    cks_compare_result *r = NULL;

    memset(&copts, 0, sizeof copts);
    copts.no_synthetic_power = no_synthetic;
    k->t1 = k->t2 = NAN;
    err = cli_open_fingerprint(path, "known", &fp, &a, NULL, diag);
    if (err)
        return err;
    snprintf(k->source, sizeof k->source, "%s", fp->source);
    snprintf(k->repo, sizeof k->repo, "%s", fp->repo);
    snprintf(k->commit, sizeof k->commit, "%s", fp->commit);
    err = cks_compare(&a, live, &copts, &r, diag);
    if (!err) {
        k->verdict = r->verdict;
        k->rank = verdict_rank(r->verdict);
        snprintf(k->reason, sizeof k->reason, "%s", r->reason);
        for (size_t i = 0; i < r->n_tests; i++) {
            if (strcmp(r->tests[i].id, "T2") == 0 && r->tests[i].ran)
                k->t2 = r->tests[i].statistic;
            if (strcmp(r->tests[i].id, "T1") == 0 && r->tests[i].ran)
                k->t1 = r->tests[i].statistic;
        }
    }
    cks_compare_result_free(r);
    cks_fingerprint_free(fp);
    return err;
}

/* ---- output ---- */

static const char *outcome_name(int rc)
{
    switch (rc) {
    case EXIT_OK:
        return "valid_unrelated";
    case EXIT_DIFFERENT:
        return "related_to_known_model";
    case EXIT_FORMAT:
        return "invalid";
    default:
        return "could_not_check";
    }
}

static void print_json(const char *spec, cJSON *source, const verify_state *v, const known *ks, size_t n_known,
                       int rc, const char *error_text)
{
    cJSON *root = cli_json_new("verify"), *probs, *warns, *prov, *checks;
    cJSON_AddStringToObject(root, "target", spec);
    if (source)
        cJSON_AddItemToObject(root, "source", source);
    cJSON_AddStringToObject(root, "outcome", outcome_name(rc));
    cJSON_AddNumberToObject(root, "exit_code", rc);
    cJSON_AddBoolToObject(root, "valid", rc != EXIT_FORMAT && v->n_problems == 0);
    if (error_text)
        cJSON_AddStringToObject(root, "error", error_text);
    probs = cJSON_AddArrayToObject(root, "problems");
    for (size_t i = 0; i < v->n_problems; i++) {
        cJSON *p = cJSON_CreateObject();
        cJSON_AddStringToObject(p, "rule", v->problems[i].rule);
        cJSON_AddStringToObject(p, "detail", v->problems[i].detail);
        cJSON_AddItemToArray(probs, p);
    }
    warns = cJSON_AddArrayToObject(root, "warnings");
    for (size_t i = 0; i < v->n_warnings; i++)
        cJSON_AddItemToArray(warns, cJSON_CreateString(v->warnings[i]));
    checks = cJSON_AddObjectToObject(root, "checks");
    cJSON_AddNumberToObject(checks, "tensors_sampled", (double)v->sampled);
    cJSON_AddNumberToObject(checks, "bytes_sampled", (double)v->sampled_bytes);
    cJSON_AddNumberToObject(checks, "non_finite_tensors", (double)v->nan_tensors);
    cJSON_AddNumberToObject(checks, "all_zero_tensors", (double)v->zero_tensors);
    if (v->files)
        cJSON_AddItemReferenceToObject(checks, "files", v->files);
    prov = cJSON_AddArrayToObject(root, "provenance");
    for (size_t i = 0; i < n_known; i++) {
        cJSON *k = cJSON_CreateObject();
        cJSON_AddStringToObject(k, "fingerprint", ks[i].path);
        cJSON_AddStringToObject(k, "source", ks[i].source);
        cJSON_AddStringToObject(k, "repo", ks[i].repo);
        cJSON_AddStringToObject(k, "commit", ks[i].commit);
        cJSON_AddStringToObject(k, "verdict", cks_verdict_name(ks[i].verdict));
        if (isfinite(ks[i].t2))
            cJSON_AddNumberToObject(k, "norm_gain_pearson", ks[i].t2);
        cJSON_AddStringToObject(k, "reason", ks[i].reason);
        cJSON_AddItemToArray(prov, k);
    }
    cli_json_print(root);
}

static void print_text(const char *spec, const verify_state *v, const known *ks, size_t n_known, int rc,
                       const char *error_text)
{
    printf("%s: %s\n", spec, outcome_name(rc));
    if (error_text)
        printf("  %s\n", error_text);
    for (size_t i = 0; i < v->n_problems; i++)
        printf("  problem %s: %s\n", v->problems[i].rule, v->problems[i].detail);
    for (size_t i = 0; i < v->n_warnings; i++)
        printf("  warning: %s\n", v->warnings[i]);
    if (v->sampled)
        printf("  %zu float tensors sampled (%llu bytes): %zu with NaN/Inf, %zu all zero\n", v->sampled,
               (unsigned long long)v->sampled_bytes, v->nan_tensors, v->zero_tensors);
    for (size_t i = 0; i < n_known; i++)
        printf("  %-12s %s%s%s (%s)\n", cks_verdict_name(ks[i].verdict), ks[i].source,
               ks[i].commit[0] ? "@" : "", ks[i].commit, ks[i].path);
}

int cmd_verify(int argc, char **argv)
{
    static const struct option longopts[] = {{"against", required_argument, NULL, 'a'},
                                             {"full", no_argument, NULL, 'F'},
                                             {"no-synthetic", no_argument, NULL, 'N'},
                                             CLI_COMMON_LONGOPTS,
                                             {0}};
    cli_opts opts = {0};
    const char *against[MAX_AGAINST];
    size_t n_against = 0, n_fps = 0, n_known = 0;
    char **fps = NULL;
    bool full = false, no_synth = false;
    int opt, rc = EXIT_OK;
    verify_state *v = NULL;
    known *ks = NULL;
    cks_ckpt *ckpt = NULL;
    cJSON *source = NULL;
    char *config = NULL, *tokenizer = NULL, error_text[CKS_DIAG_MAX + 64];
    size_t config_len = 0, tokenizer_len = 0;
    bool have_error = false;
    cks_diag diag, ignored;
    cks_err err;

    optind = 1;
    while ((opt = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        int common = cli_common_option(opt, optarg, &opts);
        if (common < 0)
            return EXIT_USAGE;
        if (common > 0)
            continue;
        if (opt == 'a') {
            if (n_against == MAX_AGAINST)
                return cli_usage_error("verify", "at most %d --against", MAX_AGAINST);
            against[n_against++] = optarg;
        } else if (opt == 'F') {
            full = true;
        } else if (opt == 'N') {
            no_synth = true;
        } else if (opt == 'h' || opt == OPT_HELP) {
            fputs(verify_help, stdout);
            return EXIT_OK;
        } else {
            return cli_usage_error("verify", "unknown option");
        }
    }
    if (argc - optind != 1)
        return cli_usage_error("verify", "expected exactly one SOURCE");
    fps = calloc(MAX_FPS, sizeof *fps);
    v = calloc(1, sizeof *v);
    if (!fps || !v) {
        rc = EXIT_INTERNAL;
        goto out;
    }
    for (size_t i = 0; i < n_against; i++) {
        rc = collect_fps(against[i], fps, &n_fps);
        if (rc != EXIT_OK)
            goto out;
    }
    /* validation happens on open: every shard's header, the index against the headers */
    err = cli_open_checkpoint(argv[optind], &opts, &ckpt, &source, &diag);
    if (err) {
        rc = cli_exit_code(err);
        snprintf(error_text, sizeof error_text, "%s: %s", cks_strerror(err), diag.text);
        have_error = true;
        if (rc == EXIT_FORMAT)
            add_problem(v, cks_strerror(err), "%.400s%s", diag.text, "");
        goto report;
    }
    v->files = cJSON_CreateArray();
    for (size_t f = 0; f < ckpt->n_files; f++) {
        cJSON *e = cJSON_CreateObject();
        cJSON_AddStringToObject(e, "path", ckpt->files[f].path);
        cJSON_AddNumberToObject(e, "size", (double)ckpt->files[f].source->size);
        cJSON_AddNumberToObject(e, "header_bytes", (double)ckpt->files[f].header->header_len);
        if (ckpt->files[f].source->sha256_hex[0])
            cJSON_AddStringToObject(e, "sha256", ckpt->files[f].source->sha256_hex);
        else
            cJSON_AddNullToObject(e, "sha256");
        cJSON_AddItemToArray(v->files, e);
    }
    err = sample_all(ckpt, v, &diag);
    if (!err && full)
        err = hash_files(ckpt, v, &opts, &diag);
    if (err) {
        rc = cli_exit_code(err);
        snprintf(error_text, sizeof error_text, "%s: %s", cks_strerror(err), diag.text);
        have_error = true;
        if (rc == EXIT_FORMAT)
            add_problem(v, cks_strerror(err), "%.400s%s", diag.text, "");
        goto report;
    }
    if (v->n_problems) {
        rc = EXIT_FORMAT;
        goto report;
    }
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
            rc = EXIT_INTERNAL;
            goto out;
        }
        for (size_t i = 0; i < n_fps; i++) {
            if (!opts.quiet && isatty(2))
                fprintf(stderr, "verify: against %s...\n", fps[i]);
            ks[n_known].path = fps[i];
            err = compare_against(fps[i], &live, no_synth, &ks[n_known], &diag);
            if (err) {
                rc = cli_exit_code(err);
                snprintf(error_text, sizeof error_text, "%s: %s: %s", fps[i], cks_strerror(err), diag.text);
                have_error = true;
                goto report;
            }
            n_known++;
        }
        qsort(ks, n_known, sizeof *ks, known_order);
        if (n_known && ks[0].rank <= 1)
            rc = EXIT_DIFFERENT;
    }
report:
    if (opts.json) {
        print_json(argv[optind], source, v, ks, n_known, rc, have_error ? error_text : NULL);
        source = NULL;
    } else {
        print_text(argv[optind], v, ks, n_known, rc, have_error ? error_text : NULL);
    }
out:
    for (size_t i = 0; fps && i < n_fps; i++)
        free(fps[i]);
    free(fps);
    free(ks);
    if (v)
        cJSON_Delete(v->files);
    free(v);
    free(config);
    free(tokenizer);
    cJSON_Delete(source);
    cks_ckpt_free(ckpt);
    return rc;
}
