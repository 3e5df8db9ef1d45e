/*
 * src/cli/cli_output.c — how a command answers: the run's output mode (--json), errors with
 * their exit codes, usage errors, and JSON documents (with the transfer counters of the
 * remote sources read). Above cli_remote.c, below the option helpers and the commands.
 */
#include <getopt.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "cli_remote.h"

static struct {
    const char *command;
    bool json;
    bool json_printed;
} g;

void cli_start(const char *command, int argc, char **argv)
{
    g.command = command;
    g.json = false;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--") == 0)
            break;
        if (strcmp(argv[i], "--json") == 0)
            g.json = true;
    }
    opterr = 0; /* cli_bad_option explains instead of getopt's one-liner */
}

bool cli_json_wanted(void)
{
    return g.json;
}

void cli_json_mark_printed(void)
{
    g.json_printed = true;
}

void cli_json_error(const char *rule, const char *message, int exit_code)
{
    cJSON *root, *error;
    if (!g.json || g.json_printed)
        return;
    root = cli_json_new(g.command ? g.command : "ckptscope");
    error = cJSON_AddObjectToObject(root, "error");
    cJSON_AddStringToObject(error, "rule", rule);
    cJSON_AddStringToObject(error, "message", message);
    cJSON_AddNumberToObject(error, "exit_code", exit_code);
    cJSON_AddNumberToObject(root, "exit_code", exit_code);
    cli_json_print(root);
}

int cli_exit_code(cks_err err)
{
    switch (cks_err_class_of(err)) {
    case CKS_CLASS_OK:
        return EXIT_OK;
    case CKS_CLASS_USAGE:
        return EXIT_USAGE;
    case CKS_CLASS_FORMAT:
        return EXIT_FORMAT;
    case CKS_CLASS_IO:
        return EXIT_IO;
    case CKS_CLASS_NETWORK:
        return EXIT_NETWORK;
    case CKS_CLASS_ACCESS:
        return EXIT_ACCESS;
    default:
        return EXIT_INTERNAL;
    }
}

int cli_fail(const char *cmd, cks_err err, const cks_diag *diag)
{
    const char *text = diag && diag->text[0] ? diag->text : "";
    const char *name = cks_strerror(err);
    cli_progress_clear();
    /* the detail usually starts with the rule's name already; do not say it twice */
    if (strstr(text, name))
        fprintf(stderr, "ckptscope %s: %s\n", cmd, cli_esc(text));
    else
        fprintf(stderr, "ckptscope %s: %s: %s\n", cmd, name, cli_esc(text));
    cli_json_error(name, text, cli_exit_code(err));
    return cli_exit_code(err);
}

int cli_usage_error(const char *cmd, const char *fmt, ...)
{
    va_list ap;
    char message[1024];
    va_start(ap, fmt);
    vsnprintf(message, sizeof message, fmt, ap);
    va_end(ap);
    cli_progress_clear();
    fprintf(stderr, "ckptscope %s: %s\n(run `ckptscope %s --help` for usage)\n", cmd, cli_esc(message), cmd);
    cli_json_error("UsageError", message, EXIT_USAGE);
    return EXIT_USAGE;
}

cJSON *cli_json_new(const char *command)
{
    cJSON *root = cJSON_CreateObject();
    cJSON_AddNumberToObject(root, "schema_version", CKS_SCHEMA_VERSION);
    cJSON_AddStringToObject(root, "command", command);
    cJSON_AddStringToObject(root, "ckptscope_version", CKS_VERSION);
    return root;
}

/* The document, with the transfer counters when remote sources were read (cli_remote.c). */
void cli_json_print(cJSON *root)
{
    cli_remote_json_finish(root); /* "transfer" when remote sources were read */
    cli_progress_clear();
    cli_json_mark_printed();
    char *text = cJSON_Print(root);
    if (text) {
        fputs(text, stdout);
        fputc('\n', stdout);
        free(text);
    }
    cJSON_Delete(root);
}
