/* ckptscope fetch SOURCE [--tensor GLOB]... [-o FILE] — pull chosen tensors, nothing else. */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "cli_remote.h"
#include "ckptscope/fetch.h"

static const char fetch_help[] =
    "usage: ckptscope fetch [OPTIONS] SOURCE\n"
    "\n"
    "Fetch the bytes of the chosen tensors (all when no --tensor is given) with as few round\n"
    "trips as possible: ranges are coalesced and fetched in parallel, across shards. Each\n"
    "tensor's SHA-256 is printed; with -o the tensors are written as a new safetensors file.\n"
    "Fetched bytes go to the cache, so later commands on them cost no network.\n"
    "\n"
    "SOURCE: org/name[@rev], hf://[datasets/]org/name[@rev][/path], https://host/x.safetensors,\n"
    "or a local file, index or directory.\n"
    "\n"
    "options:\n"
    "  --tensor GLOB        only tensors whose name matches GLOB (repeatable)\n"
    "  --tensors-from FILE  more globs, one per line\n"
    "  -o, --output FILE    write the chosen tensors as FILE (safetensors)\n"
    "  --json               {\"schema_version\", \"source\", \"tensors\", \"transfer\", ...}\n"
    "  --quiet, --verbose   less / more on stderr\n"
    "  --help               this text\n"
    "\n"
    "environment: HF_ENDPOINT, HF_TOKEN (or the token file), CKPTSCOPE_CA_BUNDLE,\n"
    "CKPTSCOPE_MAX_PARALLEL, CKPTSCOPE_COALESCE_GAP, CKPTSCOPE_NO_CACHE=1.\n"
    "\n"
    "examples:\n"
    "  ckptscope fetch org/model --tensor 'model.layers.0.*' -o layer0.safetensors\n"
    "  ckptscope fetch hf://org/model@refs/pr/3 --tensor '*norm*' --json\n";

struct globs {
    char **v;
    size_t n, cap;
    char *from_file; /* storage for --tensors-from lines */
};

static bool globs_add(struct globs *g, char *s)
{
    if (g->n == g->cap) {
        size_t nc = g->cap ? g->cap * 2 : 16;
        char **nv = realloc(g->v, nc * sizeof *nv);
        if (!nv)
            return false;
        g->v = nv;
        g->cap = nc;
    }
    g->v[g->n++] = s;
    return true;
}

static bool globs_from_file(struct globs *g, const char *path)
{
    FILE *f = fopen(path, "r");
    long size;
    if (!f)
        return false;
    if (fseek(f, 0, SEEK_END) != 0 || (size = ftell(f)) < 0 || size > (64L << 20) ||
        fseek(f, 0, SEEK_SET) != 0) {
        fclose(f);
        return false;
    }
    free(g->from_file);
    g->from_file = malloc((size_t)size + 1);
    if (!g->from_file || fread(g->from_file, 1, (size_t)size, f) != (size_t)size) {
        fclose(f);
        return false;
    }
    fclose(f);
    g->from_file[size] = '\0';
    for (char *line = strtok(g->from_file, "\r\n"); line; line = strtok(NULL, "\r\n"))
        if (*line && *line != '#' && !globs_add(g, line))
            return false;
    return true;
}

/* What the library says while it fetches: progress, and each tensor's hash. */
struct fetch_ui {
    cli_progress *progress;
    const cks_ckpt *ckpt;
    const cks_ckpt_tensor **sel;
    cJSON *json_tensors; /* --json: the "tensors" array, else NULL (hashes to stdout) */
};

static void on_progress(void *ctx, uint64_t done, uint64_t total)
{
    struct fetch_ui *ui = ctx;
    cli_progress_update(ui->progress, done, total);
}

static void on_tensor(void *ctx, size_t i, const char hex[65])
{
    struct fetch_ui *ui = ctx;
    const cks_tensor_info *t = ui->sel[i]->info;
    if (ui->json_tensors) {
        cJSON *e = cJSON_CreateObject();
        cJSON_AddStringToObject(e, "name", t->name);
        cJSON_AddStringToObject(e, "dtype", cks_dtype_name(t->dtype));
        cJSON_AddItemToObject(e, "shape", cli_json_shape(t));
        cJSON_AddStringToObject(e, "file", ui->ckpt->files[ui->sel[i]->file].path);
        cJSON_AddNumberToObject(e, "bytes", (double)(t->end - t->begin));
        cJSON_AddStringToObject(e, "sha256", hex);
        cJSON_AddItemToArray(ui->json_tensors, e);
    } else {
        /* the hashes are the answer; --quiet only quiets stderr */
        printf("%s  %s\n", hex, cli_esc(t->name));
    }
}

/* --tensor NAME and --tensors-from FILE for cli_parse_options */
static int take_tensor(const char *cmd, const char *value, void *dest)
{
    cks_diag diag;
    if (!globs_add(dest, (char *)value))
        return cli_fail(cmd, cks_fail(&diag, CKS_ERR_NOMEM, "out of memory"), &diag);
    return CLI_GO_ON;
}

static int take_tensors_from(const char *cmd, const char *value, void *dest)
{
    if (!globs_from_file(dest, value))
        return cli_usage_error(cmd, "cannot read tensor names from '%s'", value);
    return CLI_GO_ON;
}

int cmd_fetch(int argc, char **argv)
{
    cli_opts opts = {0};
    struct globs g = {0};
    const char *output = NULL;
    const cli_option table[] = {{.name = "tensor", .short_name = 't', .kind = CLI_CALL, .dest = &g, .call = take_tensor},
                                {.name = "tensors-from", .kind = CLI_CALL, .dest = &g, .call = take_tensors_from},
                                {.name = "output", .short_name = 'o', .kind = CLI_TEXT, .dest = &output, .what = "a FILE to write"},
                                {.kind = CLI_END}};
    int rc = EXIT_OK;
    cks_ckpt *ckpt = NULL;
    cJSON *source_report = NULL, *root = NULL;
    const cks_ckpt_tensor **sel = NULL;
    size_t n_sel = 0;
    cks_hub_spec spec = {0};
    cks_remote *rem = NULL;
    uint64_t total = 0, all_bytes = 0;
    size_t hashed_on_arrival = 0;
    cli_progress progress = {0};
    cks_diag diag;
    cks_err err = CKS_OK;
    double t0 = cli_now();

    rc = cli_parse_options("fetch", argc, argv, table, &opts, fetch_help);
    if (rc != CLI_GO_ON)
        goto out;
    rc = EXIT_OK;
    if (argc - optind != 1) {
        rc = cli_usage_error("fetch", "expected exactly one SOURCE");
        goto out;
    }

    /* Remote sources are opened here rather than through cli_open_checkpoint so that the
     * prefetch can span every shard in one batch. */
    err = cks_hub_parse_spec(argv[optind], &spec, &diag);
    if (err)
        goto fail;
    if (spec.kind == CKS_SPEC_LOCAL) {
        err = cli_open_checkpoint(argv[optind], &opts, &ckpt, opts.json ? &source_report : NULL,
                                  &diag);
    } else {
        err = cli_remote_session(&spec, &opts, &rem, &diag);
        if (!err)
            err = cks_remote_open_ckpt(rem, &ckpt, &diag);
        if (!err && opts.json)
            source_report = cli_source_spec(cli_remote_source_json(rem, ckpt), argv[optind]);
    }
    if (err)
        goto fail;
    err = cli_check_globs((const cks_ckpt *const *)&ckpt, 1, g.v, g.n, &diag);
    if (!err)
        err = cli_select_tensors(ckpt, g.v, g.n, &sel, &n_sel, &diag);
    if (err)
        goto fail;
    for (size_t k = 0; k < n_sel; k++)
        all_bytes += sel[k]->info->end - sel[k]->info->begin;
    cli_progress_init(&progress, &opts, "fetching");
    progress.total = all_bytes;
    root = cli_json_new("fetch");
    if (source_report) {
        cJSON_AddItemToObject(root, "source", source_report);
        source_report = NULL;
    }
    {
        struct fetch_ui ui = {&progress, ckpt, sel, opts.json ? cJSON_AddArrayToObject(root, "tensors") : NULL};
        cks_fetch_opts fo = {.remote = rem, .output = output, .source_name = argv[optind],
                             .progress = on_progress, .tensor_done = on_tensor, .ctx = &ui,
                             .hashed_on_arrival = &hashed_on_arrival};
        err = cks_fetch(ckpt, sel, n_sel, &fo, &total, &diag);
    }
    if (err)
        goto fail;
    cli_progress_done(&progress);
    cks_http_stats st;
    cli_remote_totals(&st);
    cli_note_unverified("fetch", ckpt, opts.json ? root : NULL);
    if (opts.json) {
        uint64_t read = total;
        for (size_t f = 0; f < ckpt->n_files; f++)
            read += 8 + ckpt->files[f].header->header_len;
        cJSON_AddNumberToObject(cJSON_GetObjectItemCaseSensitive(root, "source"), "bytes_read", (double)read);
        cJSON_AddNumberToObject(root, "tensor_count", (double)n_sel);
        cJSON_AddNumberToObject(root, "tensor_bytes", (double)total);
        cJSON_AddNumberToObject(root, "hashed_on_arrival", (double)hashed_on_arrival);
        cJSON_AddNumberToObject(root, "bytes_read", (double)read);
        if (output)
            cJSON_AddStringToObject(root, "output", output);
        else
            cJSON_AddNullToObject(root, "output");
        cli_json_print(root);
        root = NULL;
    } else if (!opts.quiet) {
        char a[32], b[32];
        fprintf(stderr, "fetched %zu tensor%s, %s (%s on the wire in %llu requests) in %.2f s%s%s\n",
                n_sel, n_sel == 1 ? "" : "s", cli_human_bytes(total, a, sizeof a),
                cli_human_bytes(st.bytes_fetched, b, sizeof b),
                (unsigned long long)st.requests, cli_now() - t0, output ? "; wrote " : "",
                output ? cli_esc(output) : "");
    }
    goto out;
fail:
    cli_progress_done(&progress);
    rc = cli_fail("fetch", err, &diag);
out:
    cJSON_Delete(root);
    cJSON_Delete(source_report);
    free(sel);
    free(g.v);
    free(g.from_file);
    cks_ckpt_free(ckpt);
    cks_hub_spec_release(&spec);
    /* rem belongs to the session registry (freed at exit, after the transfer report) */
    return rc;
}
