/*
 * ckptscope fingerprint SOURCE -o FILE — keep what compare needs from a model in a small file;
 * ckptscope fingerprint --from LIST -j N DIR — one job per line of LIST, N at a time.
 * Also the helper that opens a fingerprint file wherever a SOURCE is accepted (compare, verify).
 */
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <spawn.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "ckptscope/fingerprint.h"
#include "ckptscope/fingerprint_library.h"
#include "cli.h"

extern char **environ;

static const char fingerprint_help[] =
    "usage: ckptscope fingerprint [OPTIONS] SOURCE -o FILE\n"
    "       ckptscope fingerprint [OPTIONS] --from LIST [-j N] [--shard K/N] DIR\n"
    "       ckptscope fingerprint gather [OPTIONS] INPUT... -o LIBRARY   (--help for its own)\n"
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
    "With --from, every SOURCE of LIST (one per line, # comments) goes to DIR/<name>.ckfp\n"
    "(org/name@rev -> org--name@rev.ckfp), one process per SOURCE, N at a time. A SOURCE\n"
    "whose valid fingerprint is already there is skipped, and every file is written\n"
    "atomically, so running the same command again finishes only what is missing. Inside a\n"
    "scheduler it takes its share of LIST: the i-th SOURCE (from 0) belongs to share i mod\n"
    "count, from --shard K/N, else a Slurm array task (SLURM_ARRAY_TASK_ID and\n"
    "SLURM_ARRAY_TASK_COUNT, counted from SLURM_ARRAY_TASK_MIN), else a Kubernetes Indexed\n"
    "Job (JOB_COMPLETION_INDEX of --shard-count or CKPTSCOPE_SHARD_COUNT). Jobs may share one\n"
    "cache (--cache-dir) and one DIR; `fingerprint gather` then builds the library that\n"
    "`verify --against` reads (docs/scale-out.md).\n"
    "\n"
    "options:\n"
    "  -o, --output FILE   where to write (atomically)\n"
    "  --max-size SIZE     cap on the file (default 10M); k/v rows, routers and embedding\n"
    "                      rows are cut to fit, and the file says what was kept\n"
    "  --budget SIZE       compare's read budget (default 384M: keep compare's default so\n"
    "                      live comparisons read the same rows)\n"
    "  --seed N            compare's sampling seed (default 20260128, compare's default)\n"
    "  --format-version N  write an older format (1 or 2) for older readers (default 3)\n"
    "  --from LIST         fingerprint every SOURCE in LIST (of this job's share) into DIR\n"
    "  -j N                jobs at once with --from (default 1)\n"
    "  --shard K/N         take share K of N (1 <= K <= N) whatever the environment says\n"
    "  --shard-count N     how many shares with JOB_COMPLETION_INDEX (the Job's completions)\n"
    "  --force             make every fingerprint of the share again, even valid ones\n"
    "  --plan              print what this job would do (to_make, to_remake, done) and stop\n"
    "  --json              {\"schema_version\", \"command\", \"output\", \"bytes\", ...}; with\n"
    "                      --from: {\"share\", \"items\": [{\"source\", \"output\", \"status\",\n"
    "                      \"seconds\"}], \"made\", \"skipped\", \"failed\", \"seconds\"}\n"
    "  --quiet             no progress on stderr\n"
    "  --help              this text\n"
    "\n"
    "exit status: 0 written (with --from: every SOURCE of the share is there); with --from,\n"
    "the first failing job's code (every job still runs); 2 a usage error, including a\n"
    "scheduler index that does not fit its count.\n"
    "\n"
    "examples:\n"
    "  ckptscope fingerprint zai-org/GLM-4.5-Air -o glm-4.5-air.ckfp\n"
    "  ckptscope compare glm-4.5-air.ckfp upstage/Solar-Open-100B\n"
    "  ckptscope fingerprint --from bases.txt -j 8 known/\n"
    "  sbatch --array=0-15 --wrap 'ckptscope fingerprint --from bases.txt known/'\n"
    "  ckptscope fingerprint --from bases.txt --shard 3/16 --plan known/\n"
    "  ckptscope fingerprint gather known/ --list bases.txt -o known.ckfl\n";

/* Where a SOURCE's fingerprint goes in DIR: "org/name@rev" -> DIR/org--name@rev.ckfp. */
static char *output_name(const char *dir, const char *spec)
{
    char *name = cks_fplib_member_name(spec), *path = NULL;
    if (name && asprintf(&path, "%s/%s", dir, name) < 0)
        path = NULL;
    free(name);
    return path;
}

static const char *json_text(const cJSON *o, const char *key)
{
    const cJSON *v = o ? cJSON_GetObjectItemCaseSensitive(o, key) : NULL;
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* "LIBRARY#member" names one fingerprint of a library (what verify lists for --against LIBRARY);
 * an existing file of that name wins. */
static cks_err load_fingerprint(const char *path, cks_fingerprint **fp, cks_diag *diag)
{
    return cks_fingerprint_load_ref(path, fp, diag);
}

int cli_fingerprint_library_refs(const char *path, char ***refs, size_t *n)
{
    cks_fplib *lib = NULL;
    cks_diag diag;
    cks_err err = cks_fplib_open(path, &lib, &diag);
    *refs = NULL;
    *n = 0;
    if (err)
        return cli_fail("verify", err, &diag);
    *refs = calloc(lib->n + 1, sizeof **refs);
    for (size_t i = 0; *refs && i < lib->n; i++) {
        if (asprintf(&(*refs)[i], "%s#%s", path, lib->entries[i].name) < 0)
            break;
        (*n)++;
    }
    if (!*refs || *n != lib->n) {
        for (size_t i = 0; *refs && i < *n; i++)
            free((*refs)[i]);
        free(*refs);
        *refs = NULL;
        *n = 0;
        cks_fplib_close(lib);
        return EXIT_INTERNAL;
    }
    cks_fplib_close(lib);
    return EXIT_OK;
}

cks_err cli_open_fingerprint(const char *path, const char *label, cks_fingerprint **fp, cks_compare_model *model,
                             cJSON **report, cks_diag *diag)
{
    cks_err err = load_fingerprint(path, fp, diag);
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
        cli_progress_stage(opts, stage, bo.budget ? bo.budget : CKS_DEFAULT_BUDGET_BYTES);
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

/* ---- --from LIST: this job's share of the list ---- */

typedef struct share {
    size_t index, count;       /* 0-based share of count */
    char from[160];            /* what chose it, for the log and --json */
} share;

static bool parse_count(const char *text, unsigned long long max, unsigned long long *out)
{
    char *end = NULL;
    unsigned long long v;
    if (!text || !*text || *text == '-' || *text == '+')
        return false;
    errno = 0;
    v = strtoull(text, &end, 10);
    if (errno || !end || *end || v > max)
        return false;
    *out = v;
    return true;
}

#define MAX_SHARES 1000000ull

/*
 * Which share of the list this job takes: --shard K/N (1-based, like split -n and test runners'
 * K/N), else a Slurm array task (SLURM_ARRAY_TASK_ID of SLURM_ARRAY_TASK_COUNT, counted from
 * SLURM_ARRAY_TASK_MIN in steps of SLURM_ARRAY_TASK_STEP), else a Kubernetes Indexed Job
 * (JOB_COMPLETION_INDEX of --shard-count or CKPTSCOPE_SHARD_COUNT), else the whole list.
 * A misconfigured scheduler is a usage error rather than a silent run of the whole list in
 * every task.
 */
static int pick_share(const char *shard_arg, const char *shard_count_arg, share *sh)
{
    unsigned long long k, n, id, min = 0, step = 1, count_given = 0;
    const char *slurm_id = getenv("SLURM_ARRAY_TASK_ID"), *k8s = getenv("JOB_COMPLETION_INDEX");
    const char *count_text = shard_count_arg ? shard_count_arg : getenv("CKPTSCOPE_SHARD_COUNT");

    if (shard_count_arg && !parse_count(shard_count_arg, MAX_SHARES, &count_given))
        return cli_usage_error("fingerprint", "--shard-count needs a number of shares from 1 to %llu", MAX_SHARES);
    if (shard_count_arg && count_given == 0)
        return cli_usage_error("fingerprint", "--shard-count needs a number of shares from 1 to %llu", MAX_SHARES);
    if (shard_arg) {
        const char *slash = strchr(shard_arg, '/');
        char kbuf[32];
        if (!slash || (size_t)(slash - shard_arg) >= sizeof kbuf)
            return cli_usage_error("fingerprint", "--shard K/N: K of N shares, 1 <= K <= N (e.g. --shard 3/8)");
        memcpy(kbuf, shard_arg, (size_t)(slash - shard_arg));
        kbuf[slash - shard_arg] = '\0';
        if (!parse_count(kbuf, MAX_SHARES, &k) || !parse_count(slash + 1, MAX_SHARES, &n) || k < 1 || k > n)
            return cli_usage_error("fingerprint", "--shard K/N: K of N shares, 1 <= K <= N (e.g. --shard 3/8)");
        sh->index = (size_t)(k - 1);
        sh->count = (size_t)n;
        snprintf(sh->from, sizeof sh->from, "--shard %llu/%llu", k, n);
        return EXIT_OK;
    }
    if (slurm_id) {
        const char *min_text = getenv("SLURM_ARRAY_TASK_MIN"), *step_text = getenv("SLURM_ARRAY_TASK_STEP");
        if (!parse_count(slurm_id, ULLONG_MAX, &id) || !parse_count(getenv("SLURM_ARRAY_TASK_COUNT"), MAX_SHARES, &n) ||
            n == 0 || (min_text && !parse_count(min_text, ULLONG_MAX, &min)) ||
            (step_text && (!parse_count(step_text, ULLONG_MAX, &step) || step == 0)))
            return cli_usage_error("fingerprint", "a Slurm array task without a usable SLURM_ARRAY_TASK_ID, "
                                                  "SLURM_ARRAY_TASK_COUNT, _MIN or _STEP; pass --shard K/N");
        if (id < min || (id - min) % step != 0 || (id - min) / step >= n)
            return cli_usage_error("fingerprint",
                                   "Slurm array task %llu is not one of %llu tasks numbered from %llu in steps of "
                                   "%llu: submit with --array=0-%llu (a %%LIMIT suffix is fine), or pass --shard K/N",
                                   id, n, min, step, n - 1);
        if (shard_count_arg && count_given != n)
            return cli_usage_error("fingerprint", "--shard-count %llu but the Slurm array has %llu tasks", count_given,
                                   n);
        sh->index = (size_t)((id - min) / step);
        sh->count = (size_t)n;
        snprintf(sh->from, sizeof sh->from, "SLURM_ARRAY_TASK_ID %llu of %llu from %llu", id, n, min);
        return EXIT_OK;
    }
    if (k8s) {
        if (!count_text)
            return cli_usage_error("fingerprint", "JOB_COMPLETION_INDEX is set (a Kubernetes Indexed Job) but not how "
                                                  "many shares: pass --shard-count N (the Job's completions) or set "
                                                  "CKPTSCOPE_SHARD_COUNT");
        if (!parse_count(count_text, MAX_SHARES, &n) || n == 0)
            return cli_usage_error("fingerprint", "CKPTSCOPE_SHARD_COUNT needs a number of shares from 1 to %llu",
                                   MAX_SHARES);
        if (!parse_count(k8s, ULLONG_MAX, &id) || id >= n)
            return cli_usage_error("fingerprint", "JOB_COMPLETION_INDEX %s is not an index below the %llu shares", k8s,
                                   n);
        sh->index = (size_t)id;
        sh->count = (size_t)n;
        snprintf(sh->from, sizeof sh->from, "JOB_COMPLETION_INDEX %llu of %llu", id, n);
        return EXIT_OK;
    }
    if (shard_count_arg)
        return cli_usage_error("fingerprint", "--shard-count goes with JOB_COMPLETION_INDEX (a Kubernetes Indexed "
                                              "Job); elsewhere pass --shard K/N");
    sh->index = 0;
    sh->count = 1;
    snprintf(sh->from, sizeof sh->from, "the whole list");
    return EXIT_OK;
}

enum item_status { ITEM_TODO, ITEM_REDO, ITEM_DONE, ITEM_MADE, ITEM_FAILED };

typedef struct item {
    const char *spec;
    char *output;
    enum item_status status;
    char why[256];             /* why an existing file is made again */
    int rc;
    pid_t pid;
    double started, seconds;
} item;

static const char *status_name(enum item_status s, bool plan)
{
    switch (s) {
    case ITEM_TODO:
        return plan ? "to_make" : "not_run";
    case ITEM_REDO:
        return plan ? "to_remake" : "not_run";
    case ITEM_DONE:
        return plan ? "done" : "skipped";
    case ITEM_MADE:
        return "made";
    default:
        return "failed";
    }
}

/* A finished job left a valid fingerprint of this SOURCE (made with the seed and budget asked
 * for, when asked): then it is skipped. Anything else is made (again). */
static enum item_status existing_status(const char *path, const char *spec, const cks_fp_build_opts *bo, char *why,
                                        size_t why_len)
{
    cks_fingerprint *fp = NULL;
    cks_diag diag;
    enum item_status st = ITEM_REDO;
    struct stat sb;

    why[0] = '\0';
    if (stat(path, &sb) != 0)
        return ITEM_TODO;
    if (cks_fingerprint_load(path, &fp, &diag) != CKS_OK)
        snprintf(why, why_len, "the file there is not a valid fingerprint (%.200s)", diag.text);
    else if (strcmp(fp->source, spec) != 0)
        snprintf(why, why_len, "the file there is a fingerprint of %.200s", fp->source);
    else if (bo->seed && fp->seed != bo->seed)
        snprintf(why, why_len, "the file there was made with seed %llu", (unsigned long long)fp->seed);
    else if (bo->budget && fp->budget != bo->budget)
        snprintf(why, why_len, "the file there was made with budget %llu", (unsigned long long)fp->budget);
    else
        st = ITEM_DONE;
    cks_fingerprint_free(fp);
    return st;
}

/* What a fingerprint on disk says about itself, for --json: what it was made from and its size. */
static void describe_output(cJSON *o, const char *path)
{
    cks_fingerprint *fp = NULL;
    cks_diag ignored;
    struct stat sb;
    if (stat(path, &sb) != 0 || cks_fingerprint_load(path, &fp, &ignored) != CKS_OK)
        return;
    cJSON_AddNumberToObject(o, "bytes", (double)sb.st_size);
    cJSON_AddNumberToObject(o, "bytes_read", (double)fp->bytes_read);
    cJSON_AddStringToObject(o, "repo", fp->repo ? fp->repo : "");
    cJSON_AddStringToObject(o, "commit", fp->commit ? fp->commit : "");
    cks_fingerprint_free(fp);
}

static void print_run_json(const char *list, const char *dir, const share *sh, size_t n_list, const item *items,
                           size_t n, bool plan, double seconds, int exit_code)
{
    cJSON *root = cli_json_new("fingerprint");
    cJSON *s = cJSON_AddObjectToObject(root, "share"), *arr;
    size_t counts[ITEM_FAILED + 1] = {0};
    cJSON_AddStringToObject(root, "list", list);
    cJSON_AddStringToObject(root, "output_dir", dir);
    cJSON_AddBoolToObject(root, "plan", plan);
    cJSON_AddNumberToObject(s, "index", (double)sh->index + 1);
    cJSON_AddNumberToObject(s, "count", (double)sh->count);
    cJSON_AddStringToObject(s, "from", sh->from);
    cJSON_AddNumberToObject(root, "sources_in_list", (double)n_list);
    cJSON_AddNumberToObject(root, "sources_in_share", (double)n);
    arr = cJSON_AddArrayToObject(root, "items");
    for (size_t i = 0; i < n; i++) {
        cJSON *o = cJSON_CreateObject();
        counts[items[i].status]++;
        cJSON_AddItemToObject(o, "source", cli_source_spec(cJSON_CreateObject(), items[i].spec));
        cJSON_AddStringToObject(o, "output", items[i].output);
        cJSON_AddStringToObject(o, "status", status_name(items[i].status, plan));
        if (items[i].why[0])
            cJSON_AddStringToObject(o, "why", items[i].why);
        if (!plan && (items[i].status == ITEM_MADE || items[i].status == ITEM_FAILED)) {
            cJSON_AddNumberToObject(o, "exit_code", items[i].rc);
            cJSON_AddNumberToObject(o, "seconds", items[i].seconds);
        }
        if (!plan && (items[i].status == ITEM_MADE || items[i].status == ITEM_DONE))
            describe_output(o, items[i].output);
        cJSON_AddItemToArray(arr, o);
    }
    if (plan) {
        cJSON_AddNumberToObject(root, "to_make", (double)(counts[ITEM_TODO] + counts[ITEM_REDO]));
        cJSON_AddNumberToObject(root, "done", (double)counts[ITEM_DONE]);
    } else {
        cJSON_AddNumberToObject(root, "made", (double)counts[ITEM_MADE]);
        cJSON_AddNumberToObject(root, "skipped", (double)counts[ITEM_DONE]);
        cJSON_AddNumberToObject(root, "failed", (double)(counts[ITEM_FAILED] + counts[ITEM_TODO] + counts[ITEM_REDO]));
        cJSON_AddNumberToObject(root, "seconds", seconds);
    }
    cJSON_AddNumberToObject(root, "exit_code", exit_code);
    cli_json_print(root);
}

typedef struct run_opts {
    const char *list, *dir, *shard, *shard_count;
    int jobs;
    bool force, plan;
    int n_extra;
    char **extra;
} run_opts;

/* Start one job: this binary again, so a failure or a crash stays in its own process. */
static int start_job(const char *self, item *it, const run_opts *ro)
{
    char **argv = calloc((size_t)ro->n_extra + 8, sizeof *argv);
    int a = 0;
    if (!argv)
        return -1;
    argv[a++] = (char *)self;
    argv[a++] = "fingerprint";
    argv[a++] = (char *)it->spec;
    argv[a++] = "-o";
    argv[a++] = it->output;
    argv[a++] = "--quiet";
    for (int k = 0; k < ro->n_extra; k++)
        argv[a++] = ro->extra[k];
    argv[a] = NULL;
    it->started = cli_now();
    if (posix_spawn(&it->pid, self, NULL, NULL, argv, environ) != 0)
        it->pid = 0;
    free(argv);
    return it->pid ? 0 : -1;
}

/* A scheduler stops a job with SIGTERM (Slurm's scancel, Kubernetes' pod deletion) before it
 * sends SIGKILL: start nothing new, pass the signal on to the running jobs, and end. Without
 * this, a job started in the moment between the signal reaching its parent and the parent
 * dying would outlive the task it belongs to. */
static volatile sig_atomic_t stop_signal;

static void on_stop_signal(int sig)
{
    stop_signal = sig;
}

static void catch_stop_signals(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0; /* no SA_RESTART: wait() returns EINTR, so the loop sees the signal */
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
}

static void stop_jobs(const item *items, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (items[i].pid > 0)
            kill(items[i].pid, SIGTERM);
}

/* mkdir -p: many jobs may create the same folders at once, so EEXIST is success. */
static int make_dirs(const char *dir)
{
    char *path = strdup(dir);
    int rc = 0;
    if (!path)
        return -1;
    for (char *p = path + 1; *p && rc == 0; p++)
        if (*p == '/') {
            *p = '\0';
            if (mkdir(path, 0755) != 0 && errno != EEXIST)
                rc = -1;
            *p = '/';
        }
    if (rc == 0 && mkdir(path, 0755) != 0 && errno != EEXIST)
        rc = -1;
    free(path);
    return rc;
}

/* --from: the share's SOURCEs not yet done, one job each, ro->jobs at a time. */
static int run_list(const run_opts *ro, const cks_fp_build_opts *bo, const cli_opts *opts)
{
    char **specs = NULL, self[4096];
    size_t n_specs = 0, n = 0, next = 0;
    item *items = NULL;
    share sh;
    cks_diag diag;
    cks_err err;
    int first_rc = EXIT_OK, running = 0, rc;
    ssize_t sl;
    double started = cli_now();

    rc = pick_share(ro->shard, ro->shard_count, &sh);
    if (rc != EXIT_OK)
        return rc;
    err = cks_fplib_read_list(ro->list, &specs, &n_specs, &diag);
    if (err)
        return cli_fail("fingerprint", err, &diag);
    items = calloc(n_specs + 1, sizeof *items);
    if (!items) {
        first_rc = EXIT_INTERNAL;
        goto out;
    }
    if (!ro->plan && make_dirs(ro->dir) != 0) {
        fprintf(stderr, "ckptscope fingerprint: %s: %s\n", cli_esc(ro->dir), strerror(errno));
        first_rc = EXIT_IO;
        goto out;
    }
    for (size_t i = 0; i < n_specs; i++) {
        item *it;
        if (!cks_fplib_in_share(i, sh.index, sh.count))
            continue;
        it = &items[n++];
        it->spec = specs[i];
        it->output = output_name(ro->dir, specs[i]);
        if (!it->output) {
            first_rc = EXIT_INTERNAL;
            goto out;
        }
        it->status = ro->force ? ITEM_TODO : existing_status(it->output, it->spec, bo, it->why, sizeof it->why);
    }
    if (!opts->quiet && !opts->json)
        fprintf(stderr, "fingerprint: share %zu of %zu (%s): %zu of the %zu sources in %s\n", sh.index + 1, sh.count,
                sh.from, n, n_specs, ro->list);
    if (ro->plan) {
        if (opts->json)
            print_run_json(ro->list, ro->dir, &sh, n_specs, items, n, true, 0, EXIT_OK);
        else
            for (size_t i = 0; i < n; i++)
                printf("%-9s %s -> %s%s%s\n", status_name(items[i].status, true), cli_esc(items[i].spec),
                       cli_esc(items[i].output), items[i].why[0] ? ": " : "", cli_esc(items[i].why));
        goto out;
    }
    sl = readlink("/proc/self/exe", self, sizeof self - 1);
    if (sl <= 0) {
        fprintf(stderr, "ckptscope fingerprint: cannot find its own executable\n");
        first_rc = EXIT_INTERNAL;
        goto out;
    }
    self[sl] = '\0';
    catch_stop_signals();
    for (;;) {
        while (running < ro->jobs && next < n && !stop_signal) {
            item *it = &items[next++];
            if (it->status == ITEM_DONE) {
                if (!opts->quiet && !opts->json)
                    printf("done %s -> %s (already there)\n", cli_esc(it->spec), cli_esc(it->output));
                continue;
            }
            if (it->status == ITEM_REDO && !opts->quiet)
                fprintf(stderr, "fingerprint: making %s again: %s\n", cli_esc(it->output), cli_esc(it->why));
            if (start_job(self, it, ro) != 0) {
                fprintf(stderr, "ckptscope fingerprint: cannot start a job for %s\n", cli_esc(it->spec));
                it->status = ITEM_FAILED;
                it->rc = EXIT_INTERNAL;
                if (first_rc == EXIT_OK)
                    first_rc = EXIT_INTERNAL;
                continue;
            }
            running++;
        }
        if (running == 0)
            break;
        {
            int status = 0;
            pid_t pid = wait(&status);
            /* A job ended by the stop signals is being stopped with us: a scheduler that signals
             * process by process (Slurm's proctrack/linuxproc) may reach it before this one, and
             * a job started in between would run on, unsignalled, until the SIGKILL. */
            if (pid > 0 && WIFSIGNALED(status) && !stop_signal &&
                (WTERMSIG(status) == SIGTERM || WTERMSIG(status) == SIGINT || WTERMSIG(status) == SIGHUP))
                stop_signal = WTERMSIG(status);
            if (stop_signal)
                stop_jobs(items, n);
            if (pid < 0) {
                if (errno == EINTR)
                    continue;
                break;
            }
            for (size_t k = 0; k < n; k++) {
                item *it = &items[k];
                if (it->pid != pid)
                    continue;
                it->pid = 0;
                it->rc = WIFEXITED(status) ? WEXITSTATUS(status) : WIFSIGNALED(status) ? 128 + WTERMSIG(status)
                                                                                       : EXIT_INTERNAL;
                it->seconds = cli_now() - it->started;
                it->status = it->rc == EXIT_OK ? ITEM_MADE : ITEM_FAILED;
                if (!opts->json && (!opts->quiet || it->rc != EXIT_OK))
                    fprintf(it->rc == EXIT_OK ? stdout : stderr, "%s %s -> %s (exit %d)\n",
                            it->rc == EXIT_OK ? "ok" : "FAILED", cli_esc(it->spec), cli_esc(it->output), it->rc);
                if (it->rc != EXIT_OK && first_rc == EXIT_OK)
                    first_rc = it->rc;
                running--;
            }
        }
    }
    if (stop_signal) {
        fprintf(stderr, "ckptscope fingerprint: stopped by signal %d; what is not written yet is made by the next "
                        "run\n", (int)stop_signal);
        first_rc = 128 + (int)stop_signal;
    }
    if (opts->json) {
        print_run_json(ro->list, ro->dir, &sh, n_specs, items, n, false, cli_now() - started, first_rc);
    } else if (!opts->quiet) {
        size_t made = 0, done = 0, failed = 0;
        for (size_t i = 0; i < n; i++) {
            made += items[i].status == ITEM_MADE;
            done += items[i].status == ITEM_DONE;
            failed += items[i].status == ITEM_FAILED;
        }
        printf("share %zu of %zu: %zu made, %zu already there, %zu failed (%.1f s)\n", sh.index + 1, sh.count, made,
               done, failed, cli_now() - started);
    }
out:
    while (running > 0 && wait(NULL) > 0)
        running--;
    for (size_t i = 0; items && i < n; i++)
        free(items[i].output);
    free(items);
    cks_fplib_list_free(specs, n_specs);
    return first_rc;
}

int cmd_fingerprint(int argc, char **argv)
{
    cli_opts opts = {.reads_config = true}; /* the fingerprint keeps config.json */
    cks_fp_build_opts bo;
    run_opts ro = {0};
    const char *output = NULL;
    char *extra[16];
    int n_extra = 0, rc;
    const cli_option table[] = {
        {.name = "output", .short_name = 'o', .kind = CLI_TEXT, .dest = &output, .what = "a FILE to write"},
        {.name = "max-size", .kind = CLI_SIZE, CLI_DEST(bo.max_bytes), .min = 4096, .what = "10M or 500K"},
        {.name = "budget", .kind = CLI_SIZE, CLI_DEST(bo.budget), .min = CKS_MIN_BUDGET_BYTES, .what = "384M or 1G"},
        {.name = "seed", .kind = CLI_WHOLE, CLI_DEST(bo.seed), .min = 1},
        {.name = "from", .kind = CLI_TEXT, .dest = &ro.list},
        {.name = "format-version", .kind = CLI_WHOLE, CLI_DEST(bo.version), .min = CKS_FP_MIN_VERSION, .max = CKS_FP_VERSION},
        {.short_name = 'j', .kind = CLI_WHOLE, CLI_DEST(ro.jobs), .min = 1, .max = 256},
        {.name = "shard", .kind = CLI_TEXT, .dest = &ro.shard},
        {.name = "shard-count", .kind = CLI_TEXT, .dest = &ro.shard_count},
        {.name = "force", .kind = CLI_FLAG, .dest = &ro.force},
        {.name = "plan", .kind = CLI_FLAG, .dest = &ro.plan},
        {.kind = CLI_END}};

    if (argc > 1 && strcmp(argv[1], "gather") == 0)
        return cmd_fingerprint_gather(argc - 1, argv + 1);
    memset(&bo, 0, sizeof bo);
    ro.jobs = 1;
    rc = cli_parse_options("fingerprint", argc, argv, table, &opts, fingerprint_help);
    if (rc != CLI_GO_ON)
        return rc;
    if (ro.list) {
        char sbuf[4][32], *cache_arg = NULL;
        if (argc - optind != 1 || output)
            return cli_usage_error("fingerprint", "--from LIST takes one DIR and no -o");
        /* jobs inherit what changes what they read or where they cache it */
        if (opts.cache_dir && asprintf(&cache_arg, "--cache-dir=%s", opts.cache_dir) > 0)
            extra[n_extra++] = cache_arg;
        if (opts.offline)
            extra[n_extra++] = "--offline";
        if (bo.max_bytes) {
            snprintf(sbuf[0], sizeof sbuf[0], "--max-size=%llu", (unsigned long long)bo.max_bytes);
            extra[n_extra++] = sbuf[0];
        }
        if (bo.budget) {
            snprintf(sbuf[1], sizeof sbuf[1], "--budget=%llu", (unsigned long long)bo.budget);
            extra[n_extra++] = sbuf[1];
        }
        if (bo.seed) {
            snprintf(sbuf[2], sizeof sbuf[2], "--seed=%llu", (unsigned long long)bo.seed);
            extra[n_extra++] = sbuf[2];
        }
        if (bo.version) {
            snprintf(sbuf[3], sizeof sbuf[3], "--format-version=%u", bo.version);
            extra[n_extra++] = sbuf[3];
        }
        ro.dir = argv[optind];
        ro.extra = extra;
        ro.n_extra = n_extra;
        rc = run_list(&ro, &bo, &opts);
        free(cache_arg);
        return rc;
    }
    if (ro.shard || ro.shard_count || ro.force || ro.plan || ro.jobs != 1)
        return cli_usage_error("fingerprint", "-j, --shard, --shard-count, --force and --plan go with --from LIST");
    if (argc - optind != 1 || !output)
        return cli_usage_error("fingerprint", "expected SOURCE -o FILE (or --from LIST DIR)");
    return run_one(argv[optind], output, &opts, &bo);
}
