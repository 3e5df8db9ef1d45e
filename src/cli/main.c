/* ckptscope — entry point: dispatch to one subcommand. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ckptscope/blas.h"
#include "cli.h"
#include "cli_remote.h" /* cmd_fetch */

int cks_cmd_cache(int argc, char **argv); /* src/cli/cmd_cache.c */

struct command {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *summary;
};

static const struct command commands[] = {
    {"ls", cmd_ls, "list tensors, shapes, dtypes, sizes and metadata"},
    {"hash", cmd_hash, "SHA-256 of each tensor's raw bytes"},
    {"fetch", cmd_fetch, "pull chosen tensors (remote: coalesced, parallel ranges)"},
    {"diff", cmd_diff, "which tensors were added, removed, renamed, reshaped or changed"},
    {"compare", cmd_compare, "was B derived from A? calibrated tests and a verdict"},
    {"fingerprint", cmd_fingerprint, "keep what compare needs from a model in a small file"},
    {"verify", cmd_verify, "check an upload: format, completeness, hashes, known relatives"},
    {"cache", cks_cmd_cache, "inspect and maintain the disk cache: ls, du, verify, prune, clear"},
};

/* Said once, whatever --quiet: the statistics are right but every analysis is much slower. */
static void warn_blas_fallback(void)
{
    const char *why = cks_blas_fallback_reason();
    if (why)
        fprintf(stderr,
                "ckptscope: warning: %s; the statistics were computed with plain loops (the same "
                "results, much slower). Install OpenBLAS (Debian: libopenblas0).\n",
                why);
}

/*
 * Transparent huge pages for the analyses. compare, fingerprint and verify fill a few hundred MB
 * of fresh matrices (decoded rows, T3's cross products, the synthetic derivatives), and each
 * 4 KiB page costs a fault when first touched: 130,000 of them, about 15 % of a cold default
 * compare's CPU on the benchmark VM. glibc backs its large allocations with huge pages when the
 * tunable glibc.malloc.hugetlb=1 is set, but reads tunables only when a program starts, so
 * these commands start themselves again, once, with it added to GLIBC_TUNABLES (faults 132k ->
 * 56k, CPU 0.93x on the bench pair: docs/performance.md). Only where the kernel gives huge pages
 * on request ("madvise" mode; "always" needs nothing, "never" gains nothing), never when the
 * user set the tunable either way, and not with CKPTSCOPE_NO_HUGE_PAGES set. If the new start
 * fails, the command runs as it is.
 */
static void restart_with_huge_pages(const char *command, char **argv)
{
#if defined(__GLIBC__) && !defined(__SANITIZE_ADDRESS__)
    static const char *const analyses[] = {"compare", "fingerprint", "verify"};
    static const char tunable[] = "glibc.malloc.hugetlb=1";
    const char *current = getenv("GLIBC_TUNABLES");
    char mode[128] = "", *value = NULL;
    bool analysis = false;
    FILE *f;

    for (size_t i = 0; i < sizeof analyses / sizeof analyses[0]; i++)
        analysis = analysis || strcmp(command, analyses[i]) == 0;
    if (!analysis || getenv("CKPTSCOPE_NO_HUGE_PAGES") || (current && strstr(current, "glibc.malloc.hugetlb")))
        return;
    f = fopen("/sys/kernel/mm/transparent_hugepage/enabled", "r");
    if (!f)
        return;
    if (!fgets(mode, sizeof mode, f))
        mode[0] = '\0';
    fclose(f);
    if (!strstr(mode, "[madvise]"))
        return;
    if (current && *current) {
        size_t n = strlen(current) + sizeof tunable + 1;
        value = malloc(n);
        if (value)
            snprintf(value, n, "%s:%s", current, tunable);
    }
    if (setenv("GLIBC_TUNABLES", value ? value : tunable, 1) == 0) {
        execv("/proc/self/exe", argv);
        /* not restarted: go on without huge pages, with the environment as it was */
        if (current)
            setenv("GLIBC_TUNABLES", current, 1);
        else
            unsetenv("GLIBC_TUNABLES");
    }
    free(value);
#else
    (void)command;
    (void)argv;
#endif
}

static void usage(FILE *out)
{
    fprintf(out,
            "ckptscope %s — audit model checkpoints where they live\n\n"
            "usage: ckptscope COMMAND [OPTIONS] SOURCE...\n\n"
            "commands:\n",
            CKS_VERSION);
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        fprintf(out, "  %-12s %s\n", commands[i].name, commands[i].summary);
    fprintf(out,
            "\nSOURCE is a Hub repo (org/name[@rev], hf://...), an https:// URL, a .safetensors file,\n"
            "a model.safetensors.index.json, or a directory.\n"
            "Every command takes --help, --json, --quiet and --verbose.\n"
            "Run `ckptscope COMMAND --help` for details; exit codes are listed in the README.\n");
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return EXIT_USAGE;
    }
    if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "help") == 0) {
        usage(stdout);
        return EXIT_OK;
    }
    if (strcmp(argv[1], "--version") == 0) {
        printf("ckptscope %s\n", CKS_VERSION);
        return EXIT_OK;
    }
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (strcmp(argv[1], commands[i].name) == 0) {
            int rc;
            restart_with_huge_pages(commands[i].name, argv);
            cli_start(commands[i].name, argc - 1, argv + 1);
            rc = commands[i].run(argc - 1, argv + 1);
            cli_remote_finish();
            warn_blas_fallback();
            return rc;
        }
    {
        const char *names[sizeof commands / sizeof commands[0]];
        const char *near;
        for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
            names[i] = commands[i].name;
        near = cli_nearest(argv[1], names, sizeof names / sizeof names[0]);
        cli_start("ckptscope", argc - 1, argv + 1);
        if (near) {
            fprintf(stderr, "ckptscope: unknown command \"%s\" (did you mean `ckptscope %s`?)\n", cli_esc(argv[1]), near);
        } else {
            fprintf(stderr, "ckptscope: unknown command \"%s\"\n\n", cli_esc(argv[1]));
            usage(stderr);
        }
        cli_json_error("UsageError", "unknown command", EXIT_USAGE);
    }
    return EXIT_USAGE;
}
