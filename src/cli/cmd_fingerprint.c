/*
 * ckptscope fingerprint SOURCE -o FILE — keep what compare needs from a model in a small file;
 * ckptscope fingerprint --from LIST -j N DIR — one job per line of LIST, N at a time.
 * Also the helper that opens a fingerprint file wherever a SOURCE is accepted (compare, verify).
 */
#include <errno.h>
#include <spawn.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "ckptscope/fingerprint.h"
#include "cli.h"

extern char **environ;

static const char fingerprint_help[] =
    "usage: ckptscope fingerprint [OPTIONS] SOURCE -o FILE\n"
    "       ckptscope fingerprint [OPTIONS] --from LIST [-j N] DIR\n"
    "\n"
    "Read what `compare` reads from SOURCE (its own loader: same seed, same budget) and keep\n"
    "it in FILE, a versioned zstd-compressed fingerprint (format in the README): repo,\n"
    "revision, commit, file sizes and SHA-256s, the header summary and config.json, the\n"
    "SHA-256 of every tensor read, norm gains, routers, router biases, sampled k/v rows with\n"
    "their row ids, and embedding rows of a fixed list of reference token strings (every\n"
    "token when the whole matrix fits; as 4-bit codes per hidden dimension when a wide\n"
    "model's 2,048+ rows would not fit as bf16, so T4 still runs: T4a within 0.01 of a\n"
    "live run). `compare` and `verify` accept FILE wherever they\n"
    "accept a SOURCE.\n"
    "\n"
    "options:\n"
    "  -o, --output FILE   where to write (atomically)\n"
    "  --max-size SIZE     cap on the file (default 10M); k/v rows, routers and embedding\n"
    "                      rows are cut to fit, and the file says what was kept\n"
    "  --budget SIZE       compare's read budget (default 384M: keep compare's default so\n"
    "                      live comparisons read the same rows)\n"
    "  --seed N            compare's sampling seed (default 20260128, compare's default)\n"
    "  --format-version N  write an older format (1 or 2) for older readers (default 3)\n"
    "  --from LIST         fingerprint every SOURCE in LIST (one per line, # comments) into\n"
    "                      DIR/<name>.ckfp, one job per line\n"
    "  -j N                jobs at once with --from (default 1)\n"
    "  --json              {\"schema_version\", \"command\", \"output\", \"bytes\", ...}\n"
    "  --quiet             no progress on stderr\n"
    "  --help              this text\n"
    "\n"
    "exit status: 0 written; with --from, the first failing job's code (every job still runs).\n"
    "\n"
    "examples:\n"
    "  ckptscope fingerprint zai-org/GLM-4.5-Air -o glm-4.5-air.ckfp\n"
    "  ckptscope compare glm-4.5-air.ckfp upstage/Solar-Open-100B\n"
    "  ckptscope fingerprint --from bases.txt -j 8 known/\n";

/* Where a SOURCE's fingerprint goes in DIR: "org/name@rev" -> "org--name@rev.ckfp". */
static char *output_name(const char *dir, const char *spec)
{
    size_t n = strlen(spec), at = 0;
    char *name = malloc(3 * n + 8), *path = NULL;
    if (!name)
        return NULL;
    while (spec[0] == '.' && spec[1] == '/')
        spec += 2;
    for (const char *p = spec; *p; p++) {
        if (*p == '/') {
            if (p[1] == '\0')
                break;
            name[at++] = '-';
            name[at++] = '-';
        } else if (*p == ':' || *p == ' ' || *p == '\\') {
            name[at++] = '_';
        } else {
            name[at++] = *p;
        }
    }
    name[at] = '\0';
    if (asprintf(&path, "%s/%s.ckfp", dir, at ? name : "model") < 0)
        path = NULL;
    free(name);
    return path;
}

static const char *json_text(const cJSON *o, const char *key)
{
    const cJSON *v = o ? cJSON_GetObjectItemCaseSensitive(o, key) : NULL;
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

cks_err cli_open_fingerprint(const char *path, const char *label, cks_fingerprint **fp, cks_compare_model *model,
                             cJSON **report, cks_diag *diag)
{
    cks_err err = cks_fingerprint_load(path, fp, diag);
    if (err)
        return err;
    cks_fingerprint_model(*fp, label, model);
    if (report) {
        cJSON *src = cli_source_spec(cJSON_CreateObject(), path);
        cJSON_AddStringToObject(src, "kind", "fingerprint");
        cJSON_AddStringToObject(src, "path", path);
        cJSON_AddNumberToObject(src, "format_version", (*fp)->version);
        cJSON_AddStringToObject(src, "made_from", (*fp)->source); /* "source" is always an object */
        cJSON_AddStringToObject(src, "repo", (*fp)->repo);
        cJSON_AddStringToObject(src, "revision", (*fp)->revision);
        cJSON_AddStringToObject(src, "commit", (*fp)->commit);
        cJSON_AddStringToObject(src, "sampling", (*fp)->sampling);
        *report = src;
    }
    return CKS_OK;
}

static int run_one(const char *spec, const char *output, const cli_opts *opts, const cks_fp_build_opts *base)
{
    cks_ckpt *ckpt = NULL;
    cJSON *source = NULL;
    char *config = NULL, *tokenizer = NULL;
    size_t config_len = 0, tokenizer_len = 0;
    cks_compare_model model;
    cks_fp_build_opts bo = *base;
    cks_fingerprint *fp = NULL;
    cks_diag diag, ignored;
    cks_err err;
    uint64_t written = 0;
    int rc = EXIT_OK;

    err = cli_open_checkpoint(spec, opts, &ckpt, &source, &diag);
    if (err)
        return cli_fail("fingerprint", err, &diag);
    /* without them roles are inferred and no embedding rows can be matched by string */
    if (cks_ckpt_fetch_aux(ckpt, "config.json", &config, &config_len, &ignored) != CKS_OK) {
        config = NULL;
        config_len = 0;
    }
    if (cks_ckpt_fetch_aux(ckpt, "tokenizer.json", &tokenizer, &tokenizer_len, &ignored) != CKS_OK) {
        tokenizer = NULL;
        tokenizer_len = 0;
    }
    memset(&model, 0, sizeof model);
    model.label = spec;
    model.ckpt = ckpt;
    model.config_json = config;
    model.config_len = config_len;
    model.tokenizer_json = tokenizer;
    model.tokenizer_len = tokenizer_len;
    bo.source = spec;
    bo.repo = json_text(source, "repo");
    bo.revision = json_text(source, "revision");
    bo.commit = json_text(source, "commit");
    {
        char stage[300];
        snprintf(stage, sizeof stage, "fingerprint: reading %.270s", spec);
        cli_progress_stage(opts, stage, bo.budget ? bo.budget : (384ull << 20));
    }
    err = cks_fingerprint_build(&model, &bo, &fp, &diag);
    cli_progress_stage(opts, NULL, 0);
    if (!err)
        err = cks_fingerprint_save(fp, bo.version, output, &written, &diag);
    if (err) {
        rc = cli_fail("fingerprint", err, &diag);
        goto out;
    }
    if (opts->json) {
        cJSON *root = cli_json_new("fingerprint");
        cJSON_AddNumberToObject(source, "bytes_read", (double)fp->bytes_read);
        cJSON_AddItemToObject(root, "source", source);
        source = NULL;
        cJSON_AddStringToObject(root, "output", output);
        cJSON_AddNumberToObject(root, "format_version", bo.version ? bo.version : CKS_FP_VERSION);
        cJSON_AddNumberToObject(root, "bytes", (double)written);
        cJSON_AddNumberToObject(root, "bytes_read", (double)fp->bytes_read);
        cJSON_AddStringToObject(root, "repo", fp->repo);
        cJSON_AddStringToObject(root, "revision", fp->revision);
        cJSON_AddStringToObject(root, "commit", fp->commit);
        cJSON_AddNumberToObject(root, "tensors", (double)fp->ckpt->n_tensors);
        cJSON_AddNumberToObject(root, "tensors_hashed", (double)fp->n_hashes);
        cJSON_AddNumberToObject(root, "layers", fp->n_layers);
        cJSON_AddNumberToObject(root, "embedding_tokens", (double)fp->n_tokens);
        cJSON_AddBoolToObject(root, "all_tokens", fp->embed_all);
        cJSON_AddBoolToObject(root, "embedding_4bit", fp->embed_q4);
        cJSON_AddStringToObject(root, "sampling", fp->sampling);
        cli_json_print(root);
    } else if (!opts->quiet) {
        char h1[32], h2[32];
        printf("%s: %s fingerprint of %s (%s read; %zu tensors hashed, %zu embedding rows)\n", cli_esc(output),
               cli_human_bytes(written, h1, sizeof h1), cli_esc(spec), cli_human_bytes(fp->bytes_read, h2, sizeof h2),
               fp->n_hashes, fp->n_tokens);
    }
out:
    cks_fingerprint_free(fp);
    free(config);
    free(tokenizer);
    cJSON_Delete(source);
    cks_ckpt_free(ckpt);
    return rc;
}

/* One finished --from job for --json: what the fingerprint it wrote says about itself. */
static void list_json_job(cJSON *jobs, const char *spec, const char *out_path, int rc)
{
    cJSON *job = cJSON_CreateObject();
    cks_fingerprint *fp = NULL;
    cks_diag ignored;
    struct stat sb;
    cJSON_AddItemToObject(job, "source", cli_source_spec(cJSON_CreateObject(), spec));
    cJSON_AddStringToObject(job, "output", out_path ? out_path : "");
    cJSON_AddNumberToObject(job, "exit_code", rc);
    if (rc == EXIT_OK && out_path && stat(out_path, &sb) == 0 && cks_fingerprint_load(out_path, &fp, &ignored) == CKS_OK) {
        cJSON_AddNumberToObject(job, "bytes", (double)sb.st_size);
        cJSON_AddNumberToObject(job, "bytes_read", (double)fp->bytes_read);
        cJSON_AddStringToObject(job, "repo", fp->repo);
        cJSON_AddStringToObject(job, "commit", fp->commit);
        cks_fingerprint_free(fp);
    }
    cJSON_AddItemToArray(jobs, job);
}

/* --from: each line is one job (this binary again), so a failure stays in its own process. */
static int run_list(const char *list, const char *dir, int jobs, int argc_extra, char **extra, const cli_opts *opts)
{
    FILE *f = fopen(list, "r");
    char line[4096];
    char **specs = NULL;
    size_t n = 0, cap = 0, next = 0, done = 0;
    pid_t *pids = NULL;
    int first_rc = EXIT_OK, running = 0;
    char self[4096];
    ssize_t sl;
    cJSON *jobs_json = cJSON_CreateArray();
    bool started = false;

    if (!f) {
        cks_diag d;
        cJSON_Delete(jobs_json);
        return cli_fail("fingerprint", cks_fail(&d, errno == ENOENT ? CKS_ERR_NOT_FOUND : CKS_ERR_IO,
                                                "--from %s: %s", list, strerror(errno)),
                        &d);
    }
    while (fgets(line, sizeof line, f)) {
        char *s = line, *e;
        while (*s == ' ' || *s == '\t')
            s++;
        e = s + strlen(s);
        while (e > s && (e[-1] == '\n' || e[-1] == '\r' || e[-1] == ' ' || e[-1] == '\t'))
            *--e = '\0';
        if (!*s || *s == '#')
            continue;
        if (n == cap) {
            char **grown = realloc(specs, (cap = cap ? cap * 2 : 16) * sizeof *grown);
            if (!grown)
                break;
            specs = grown;
        }
        if (!(specs[n] = strdup(s)))
            break;
        n++;
    }
    fclose(f);
    if (mkdir(dir, 0755) != 0 && errno != EEXIST) {
        cks_diag d;
        first_rc = cli_fail("fingerprint", cks_fail(&d, CKS_ERR_IO, "%s: %s", dir, strerror(errno)), &d);
        goto out;
    }
    sl = readlink("/proc/self/exe", self, sizeof self - 1);
    if (sl <= 0) {
        fprintf(stderr, "ckptscope fingerprint: cannot find its own executable\n");
        first_rc = EXIT_INTERNAL;
        goto out;
    }
    self[sl] = '\0';
    pids = calloc(n ? n : 1, sizeof *pids);
    if (!pids) {
        first_rc = EXIT_INTERNAL;
        goto out;
    }
    started = true;
    while (done < n) {
        while (running < jobs && next < n) {
            char *out_path = output_name(dir, specs[next]);
            char **argv = calloc((size_t)argc_extra + 8, sizeof *argv);
            int a = 0;
            if (!out_path || !argv) {
                free(out_path);
                free(argv);
                first_rc = EXIT_INTERNAL;
                goto out;
            }
            argv[a++] = self;
            argv[a++] = "fingerprint";
            argv[a++] = specs[next];
            argv[a++] = "-o";
            argv[a++] = out_path;
            argv[a++] = "--quiet";
            for (int k = 0; k < argc_extra; k++)
                argv[a++] = extra[k];
            argv[a] = NULL;
            if (posix_spawn(&pids[next], self, NULL, NULL, argv, environ) != 0) {
                fprintf(stderr, "ckptscope fingerprint: cannot start a job for %s\n", cli_esc(specs[next]));
                pids[next] = 0;
                if (first_rc == EXIT_OK)
                    first_rc = EXIT_INTERNAL;
                done++;
            } else {
                running++;
            }
            free(out_path);
            free(argv);
            next++;
        }
        if (running > 0) {
            int status = 0;
            pid_t pid = wait(&status);
            int rc;
            if (pid < 0) {
                if (errno == EINTR)
                    continue;
                break;
            }
            rc = WIFEXITED(status) ? WEXITSTATUS(status) : EXIT_INTERNAL;
            for (size_t k = 0; k < n; k++)
                if (pids[k] == pid) {
                    char *out_path = output_name(dir, specs[k]);
                    if (opts->json)
                        list_json_job(jobs_json, specs[k], out_path, rc);
                    else if (!opts->quiet || rc != EXIT_OK)
                        fprintf(rc == EXIT_OK ? stdout : stderr, "%s %s -> %s (exit %d)\n",
                                rc == EXIT_OK ? "ok" : "FAILED", cli_esc(specs[k]), cli_esc(out_path ? out_path : "?"), rc);
                    free(out_path);
                    pids[k] = 0;
                }
            if (rc != EXIT_OK && first_rc == EXIT_OK)
                first_rc = rc;
            running--;
            done++;
        }
    }
out:
    while (running > 0 && wait(NULL) > 0)
        running--;
    if (opts->json && started) {
        cJSON *root = cli_json_new("fingerprint");
        cJSON_AddStringToObject(root, "from", list);
        cJSON_AddStringToObject(root, "output_dir", dir);
        cJSON_AddItemToObject(root, "jobs", jobs_json);
        jobs_json = NULL;
        cJSON_AddNumberToObject(root, "exit_code", first_rc);
        cli_json_print(root);
    }
    cJSON_Delete(jobs_json);
    for (size_t k = 0; k < n; k++)
        free(specs[k]);
    free(specs);
    free(pids);
    return first_rc;
}

int cmd_fingerprint(int argc, char **argv)
{
    static const struct option longopts[] = {{"output", required_argument, NULL, 'o'},
                                             {"max-size", required_argument, NULL, 'm'},
                                             {"budget", required_argument, NULL, 'b'},
                                             {"seed", required_argument, NULL, 's'},
                                             {"from", required_argument, NULL, 'f'},
                                             {"format-version", required_argument, NULL, 'V'},
                                             CLI_COMMON_LONGOPTS,
                                             {0}};
    cli_opts opts = {0};
    cks_fp_build_opts bo;
    const char *output = NULL, *from = NULL;
    char *extra[16];
    int n_extra = 0, jobs = 1, opt;

    memset(&bo, 0, sizeof bo);
    optind = 1;
    while ((opt = getopt_long(argc, argv, "o:j:h", longopts, NULL)) != -1) {
        int common = cli_common_option(opt, optarg, &opts);
        char *end = NULL;
        if (common < 0)
            return EXIT_USAGE;
        if (common > 0)
            continue;
        switch (opt) {
        case 'o':
            if (cli_value_missing("fingerprint", "output", optarg, "a FILE to write"))
                return EXIT_USAGE;
            output = optarg;
            break;
        case 'm':
            if (!cli_parse_size(optarg, &bo.max_bytes) || bo.max_bytes < 4096)
                return cli_usage_error("fingerprint", "--max-size needs a size of at least 4K");
            break;
        case 'b':
            if (!cli_parse_size(optarg, &bo.budget) || bo.budget == 0)
                return cli_usage_error("fingerprint", "--budget needs a size");
            break;
        case 's':
            bo.seed = strtoull(optarg, &end, 10);
            if (!end || *end || bo.seed == 0)
                return cli_usage_error("fingerprint", "--seed needs a positive integer");
            break;
        case 'V':
            bo.version = (uint32_t)strtoul(optarg, &end, 10);
            if (!end || *end || bo.version < CKS_FP_MIN_VERSION || bo.version > CKS_FP_VERSION)
                return cli_usage_error("fingerprint", "--format-version: %d to %d", CKS_FP_MIN_VERSION,
                                       CKS_FP_VERSION);
            break;
        case 'f':
            from = optarg;
            break;
        case 'j':
            jobs = atoi(optarg);
            if (jobs < 1 || jobs > 256)
                return cli_usage_error("fingerprint", "-j needs 1 to 256");
            break;
        case 'h':
        case OPT_HELP:
            fputs(fingerprint_help, stdout);
            return EXIT_OK;
        default:
            return cli_bad_option("fingerprint", longopts, argv);
        }
    }
    if (from) {
        char sbuf[3][32], *cache_arg = NULL;
        /* jobs inherit what changes what they read or where they cache it */
        if (opts.cache_dir && asprintf(&cache_arg, "--cache-dir=%s", opts.cache_dir) > 0)
            extra[n_extra++] = cache_arg;
        if (opts.offline)
            extra[n_extra++] = "--offline";
        if (argc - optind != 1 || output)
            return cli_usage_error("fingerprint", "--from LIST takes one DIR and no -o");
        if (bo.max_bytes && n_extra < 14) {
            snprintf(sbuf[0], sizeof sbuf[0], "--max-size=%llu", (unsigned long long)bo.max_bytes);
            extra[n_extra++] = sbuf[0];
        }
        if (bo.budget && n_extra < 14) {
            snprintf(sbuf[1], sizeof sbuf[1], "--budget=%llu", (unsigned long long)bo.budget);
            extra[n_extra++] = sbuf[1];
        }
        if (bo.seed && n_extra < 14) {
            snprintf(sbuf[2], sizeof sbuf[2], "--seed=%llu", (unsigned long long)bo.seed);
            extra[n_extra++] = sbuf[2];
        }
        {
            int rc = run_list(from, argv[optind], jobs, n_extra, extra, &opts);
            free(cache_arg);
            return rc;
        }
    }
    if (argc - optind != 1 || !output)
        return cli_usage_error("fingerprint", "expected SOURCE -o FILE (or --from LIST DIR)");
    return run_one(argv[optind], output, &opts, &bo);
}
