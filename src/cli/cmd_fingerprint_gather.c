/*
 * ckptscope fingerprint gather INPUT... -o LIBRARY — collect what many fingerprint jobs wrote
 * (their output folders, single files, earlier libraries) into one library for
 * `verify --against`, and say what failed and why. The work is the library's
 * (cks_fplib_gather); this file reads the options and the list and talks to people.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ckptscope/fingerprint_library.h"
#include "cli.h"

static const char gather_help[] =
    "usage: ckptscope fingerprint gather [OPTIONS] INPUT... [-o LIBRARY]\n"
    "\n"
    "Collect fingerprints into one library file that `verify --against LIBRARY` reads. An\n"
    "INPUT is a folder that fingerprint jobs wrote into (its *.ckfp files and any library in\n"
    "it; job logs and other files are ignored), a fingerprint file, or a library (so a new\n"
    "batch can be added to an old library). Every fingerprint is decoded and checked in full;\n"
    "byte-identical copies are kept once. What fails is left out and reported with the\n"
    "reason: missing (LIST names it, nothing holds it), truncated, not_a_fingerprint,\n"
    "wrong_version, corrupt, unreadable, wrong_source (the file named for a SOURCE holds\n"
    "another), duplicate_differing_commits (one repo and revision at two commits: the\n"
    "revision moved between jobs), duplicate_differing_content (one commit, different bytes),\n"
    "name_collision. Temporary files of killed jobs (*.ckfp.tmp.*) are listed.\n"
    "\n"
    "The library holds each fingerprint byte for byte, behind an index of what each one is\n"
    "(repo, commit, architecture, widths, vocabulary, options, offset, SHA-256); it holds no\n"
    "time or host, so the same fingerprints always give the same bytes. It is written\n"
    "atomically (a reader sees the old library or the new one).\n"
    "\n"
    "options:\n"
    "  -o, --output LIBRARY  the library to write; without it, only check and report\n"
    "  --list LIST           the list the jobs ran: each SOURCE of it must be there\n"
    "  --summary FILE        also write the summary as JSON to FILE (atomically)\n"
    "  --json                print the summary as JSON: {\"complete\", \"members\", \"failed\",\n"
    "                        \"failures\": [{\"problem\", \"path\", \"source\", \"detail\"}], ...}\n"
    "  --quiet               print only the failures\n"
    "  --help                this text\n"
    "\n"
    "exit status: 0 complete (every fingerprint valid, every SOURCE of LIST there); 1 the\n"
    "library was written (or checked) but something failed; 2 usage; 4 it could not be\n"
    "written; 6 an INPUT does not exist.\n"
    "\n"
    "examples:\n"
    "  ckptscope fingerprint gather known/ --list bases.txt -o known.ckfl --summary known.json\n"
    "  ckptscope fingerprint gather known.ckfl new/ -o known.ckfl     # add a batch\n"
    "  ckptscope verify org/new-upload --against known.ckfl\n";

static cJSON *summary_json(const cks_gather_report *r, const char *output, const char *list, size_t n_expected,
                           char *const *inputs, size_t n_inputs)
{
    cJSON *root = cli_json_new("fingerprint gather"), *arr, *by;
    size_t counts[CKS_GATHER__COUNT] = {0};
    cJSON_AddStringToObject(root, "output", output ? output : "");
    cJSON_AddBoolToObject(root, "written", output != NULL);
    cJSON_AddBoolToObject(root, "complete", r->n_failures == 0);
    arr = cJSON_AddArrayToObject(root, "inputs");
    for (size_t i = 0; i < n_inputs; i++)
        cJSON_AddItemToArray(arr, cJSON_CreateString(inputs[i]));
    if (list) {
        cJSON_AddStringToObject(root, "list", list);
        cJSON_AddNumberToObject(root, "expected", (double)n_expected);
    } else {
        cJSON_AddNullToObject(root, "list");
        cJSON_AddNullToObject(root, "expected");
    }
    cJSON_AddNumberToObject(root, "candidates", (double)r->n_candidates);
    cJSON_AddNumberToObject(root, "members", (double)r->n_entries);
    cJSON_AddNumberToObject(root, "duplicates_dropped", (double)r->n_duplicates);
    cJSON_AddNumberToObject(root, "library_bytes", (double)r->library_bytes);
    cJSON_AddNumberToObject(root, "fingerprint_bytes", (double)r->fingerprint_bytes);
    cJSON_AddNumberToObject(root, "bytes_read", (double)r->bytes_read);
    cJSON_AddNumberToObject(root, "failed", (double)r->n_failures);
    arr = cJSON_AddArrayToObject(root, "failures");
    for (size_t i = 0; i < r->n_failures; i++) {
        const cks_gather_failure *f = &r->failures[i];
        cJSON *o = cJSON_CreateObject();
        counts[f->problem]++;
        cJSON_AddStringToObject(o, "problem", cks_gather_problem_name(f->problem));
        if (f->path)
            cJSON_AddStringToObject(o, "path", f->path);
        else
            cJSON_AddNullToObject(o, "path");
        if (f->source)
            cJSON_AddItemToObject(o, "source", cli_source_spec(cJSON_CreateObject(), f->source));
        else
            cJSON_AddNullToObject(o, "source");
        cJSON_AddStringToObject(o, "detail", f->detail ? f->detail : "");
        cJSON_AddItemToArray(arr, o);
    }
    by = cJSON_AddObjectToObject(root, "by_problem");
    for (int p = 0; p < CKS_GATHER__COUNT; p++)
        if (counts[p])
            cJSON_AddNumberToObject(by, cks_gather_problem_name((cks_gather_problem)p), (double)counts[p]);
    arr = cJSON_AddArrayToObject(root, "temporaries");
    for (size_t i = 0; i < r->n_temporaries; i++)
        cJSON_AddItemToArray(arr, cJSON_CreateString(r->temporaries[i]));
    arr = cJSON_AddArrayToObject(root, "entries");
    for (size_t i = 0; i < r->n_entries; i++) {
        const cks_fplib_entry *e = &r->entries[i];
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "name", e->name);
        cJSON_AddStringToObject(o, "source", e->source);
        cJSON_AddStringToObject(o, "repo", e->repo);
        cJSON_AddStringToObject(o, "revision", e->revision);
        cJSON_AddStringToObject(o, "commit", e->commit);
        cJSON_AddStringToObject(o, "model_type", e->model_type);
        cJSON_AddNumberToObject(o, "hidden", (double)e->hidden);
        cJSON_AddNumberToObject(o, "n_layers", (double)e->n_layers);
        cJSON_AddNumberToObject(o, "vocab_size", (double)e->vocab_size);
        cJSON_AddNumberToObject(o, "bytes", (double)e->length);
        cJSON_AddNumberToObject(o, "bytes_read", (double)e->bytes_read);
        cJSON_AddStringToObject(o, "sha256", e->sha256);
        if (output)
            cJSON_AddNumberToObject(o, "offset", (double)e->offset);
        cJSON_AddItemToArray(arr, o);
    }
    return root;
}

/* The summary file: temporary, fsync, rename, like every file the jobs write. */
static int write_summary(const char *path, const char *text)
{
    char *tmp = NULL;
    size_t len = strlen(text), done = 0;
    int fd, rc = EXIT_OK;
    if (asprintf(&tmp, "%s.tmp.%ld", path, (long)getpid()) < 0)
        return EXIT_INTERNAL;
    fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        rc = EXIT_IO;
    while (rc == EXIT_OK && done < len) {
        ssize_t n = write(fd, text + done, len - done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            rc = EXIT_IO;
        else
            done += (size_t)n;
    }
    if (fd >= 0 && ((rc == EXIT_OK && fsync(fd) != 0) | (close(fd) != 0)))
        rc = EXIT_IO;
    if (rc == EXIT_OK && rename(tmp, path) != 0)
        rc = EXIT_IO;
    if (rc != EXIT_OK) {
        fprintf(stderr, "ckptscope fingerprint gather: %s: %s\n", path, strerror(errno));
        unlink(tmp);
    }
    free(tmp);
    return rc;
}

static void print_text(const cks_gather_report *r, const char *output, size_t n_expected, bool quiet)
{
    char h1[32], h2[32];
    for (size_t i = 0; i < r->n_failures; i++) {
        const cks_gather_failure *f = &r->failures[i];
        fprintf(stderr, "%-28s %s: %s\n", cks_gather_problem_name(f->problem),
                f->path ? f->path : f->source ? f->source : "?", f->detail ? f->detail : "");
    }
    if (quiet)
        return;
    if (r->n_temporaries)
        printf("%zu temporary file%s of stopped jobs (safe to delete once no job runs): %s%s\n", r->n_temporaries,
               r->n_temporaries == 1 ? "" : "s", r->temporaries[0], r->n_temporaries > 1 ? ", ..." : "");
    printf("%s %zu fingerprint%s%s%s (%s; %s read from the models)", output ? "gathered" : "checked", r->n_entries,
           r->n_entries == 1 ? "" : "s", output ? " into " : "", output ? output : "",
           cli_human_bytes(output ? r->library_bytes : r->fingerprint_bytes, h1, sizeof h1),
           cli_human_bytes(r->bytes_read, h2, sizeof h2));
    if (n_expected)
        printf(" of the %zu the list names", n_expected);
    if (r->n_duplicates)
        printf("; %zu identical cop%s left out", r->n_duplicates, r->n_duplicates == 1 ? "y" : "ies");
    printf("; %zu failed%s\n", r->n_failures, r->n_failures ? " (above)" : "");
}

int cmd_fingerprint_gather(int argc, char **argv)
{
    cli_opts opts = {0};
    const char *output = NULL, *list = NULL, *summary = NULL;
    char **expected = NULL, *text = NULL;
    size_t n_expected = 0;
    cks_gather_opts go;
    cks_gather_report *r = NULL;
    cks_diag diag;
    cks_err err;
    cJSON *doc;
    int rc = EXIT_OK;
    const cli_option table[] = {{.name = "output", .short_name = 'o', .kind = CLI_TEXT, .dest = &output, .what = "a FILE to write"},
                                {.name = "list", .kind = CLI_TEXT, .dest = &list, .what = "a LIST file"},
                                {.name = "summary", .kind = CLI_TEXT, .dest = &summary, .what = "a FILE to write"},
                                {.kind = CLI_END}};

    rc = cli_parse_options("fingerprint gather", argc, argv, table, &opts, gather_help);
    if (rc != CLI_GO_ON)
        return rc;
    rc = EXIT_OK;
    if (optind >= argc)
        return cli_usage_error("fingerprint gather", "expected at least one INPUT (a folder, fingerprint or library)");
    if (list) {
        err = cks_fplib_read_list(list, &expected, &n_expected, &diag);
        if (err)
            return cli_fail("fingerprint gather", err, &diag);
    }
    memset(&go, 0, sizeof go);
    go.inputs = (const char *const *)(argv + optind);
    go.n_inputs = (size_t)(argc - optind);
    go.expected = (const char *const *)expected;
    go.n_expected = n_expected;
    go.output = output;
    err = cks_fplib_gather(&go, &r, &diag);
    if (err) {
        rc = cli_fail("fingerprint gather", err, &diag);
        goto out;
    }
    doc = summary_json(r, output, list, n_expected, argv + optind, go.n_inputs);
    if (summary) {
        text = cJSON_Print(doc);
        rc = text ? write_summary(summary, text) : EXIT_INTERNAL;
    }
    if (opts.json)
        cli_json_print(doc);
    else {
        cJSON_Delete(doc);
        print_text(r, output, n_expected, opts.quiet);
    }
    if (rc == EXIT_OK && r->n_failures)
        rc = EXIT_DIFFERENT;
out:
    free(text);
    cks_gather_report_free(r);
    cks_fplib_list_free(expected, n_expected);
    return rc;
}
