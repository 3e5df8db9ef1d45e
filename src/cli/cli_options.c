/*
 * src/cli/cli_options.c — one option parser for every command: a command describes its options
 * in a table (name, kind of value, where it goes, the allowed range) and cli_parse_options does
 * the rest the same way everywhere: the common options, -h/--help, suggestions for a mistyped
 * option, and numbers checked against their range with a usage error (exit 2) that names the
 * option and the range. Before it, each command parsed numbers itself, and differently:
 * `compare --budget 1` was refused while `fingerprint --budget 1` was taken, `--seed -1` wrapped
 * to 2^64-1 (strtoull accepts a sign), and `-j 2x` was read by atoi as 2.
 */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

/* The common options (CLI_COMMON_LONGOPTS) plus a command's own: compare has the most, 9. */
#define MAX_OPTIONS 40
/* getopt_long's value for a table entry without a short name: past the common options' range */
#define TABLE_VAL_BASE 0x2000

/* "--budget" or "-j": how a message names the option */
static const char *option_label(const cli_option *o, char *buf, size_t size)
{
    if (o->name)
        snprintf(buf, size, "--%s", o->name);
    else
        snprintf(buf, size, "-%c", o->short_name);
    return buf;
}

/* A whole decimal number, digits only: no sign (strtoull would wrap "-1"), no spaces, no
 * trailing text ("2x"), no value beyond 2^64-1. */
static bool parse_whole(const char *text, uint64_t *out)
{
    char *end = NULL;
    unsigned long long v;
    if (!text || *text < '0' || *text > '9')
        return false;
    errno = 0;
    v = strtoull(text, &end, 10);
    if (errno || !end || *end)
        return false;
    *out = v;
    return true;
}

static void store_whole(const cli_option *o, uint64_t v)
{
    if (o->width == sizeof(uint32_t))
        *(uint32_t *)o->dest = (uint32_t)v; /* the range check kept v within 32 bits */
    else
        *(uint64_t *)o->dest = v;
}

/* One option's value: CLI_GO_ON, or the exit code after the usage error. */
static int take_value(const char *cmd, const cli_option *o, const char *arg)
{
    char label[72], lo[32], hi[32];
    uint64_t v = 0;
    option_label(o, label, sizeof label);
    switch (o->kind) {
    case CLI_FLAG:
        *(bool *)o->dest = true;
        return CLI_GO_ON;
    case CLI_TEXT:
        if (o->what && cli_value_missing(cmd, label + (o->name ? 2 : 1), arg, o->what))
            return EXIT_USAGE;
        *(const char **)o->dest = arg;
        return CLI_GO_ON;
    case CLI_LIST: {
        cli_list *list = o->dest;
        if (list->n == list->max)
            return cli_usage_error(cmd, "at most %zu %s %s", list->max, label, list->what);
        list->items[list->n++] = arg;
        return CLI_GO_ON;
    }
    case CLI_WHOLE: {
        uint64_t max = o->max ? o->max : (o->width == sizeof(uint32_t) ? UINT32_MAX : UINT64_MAX);
        if (!parse_whole(arg, &v) || v < o->min || v > max)
            return cli_usage_error(cmd, "%s wants a whole number from %llu to %llu, not \"%s\"", label,
                                   (unsigned long long)o->min, (unsigned long long)max, arg);
        store_whole(o, v);
        return CLI_GO_ON;
    }
    case CLI_SIZE:
        if (!cli_parse_size(arg, &v) || v < o->min || (o->max && v > o->max)) {
            if (o->max)
                return cli_usage_error(cmd, "%s wants a size from %s to %s (such as %s), not \"%s\"", label,
                                       cli_human_bytes(o->min, lo, sizeof lo), cli_human_bytes(o->max, hi, sizeof hi),
                                       o->what ? o->what : "500M or 2G", arg);
            if (o->min)
                return cli_usage_error(cmd, "%s wants a size of at least %s (such as %s), not \"%s\"", label,
                                       cli_human_bytes(o->min, lo, sizeof lo), o->what ? o->what : "500M or 2G",
                                       arg);
            return cli_usage_error(cmd, "%s wants a size such as %s, not \"%s\"", label,
                                   o->what ? o->what : "500M or 2G", arg);
        }
        store_whole(o, v);
        return CLI_GO_ON;
    case CLI_REAL: {
        char *end = NULL;
        double d;
        errno = 0;
        d = arg && *arg ? strtod(arg, &end) : NAN;
        if (errno || !end || *end || !isfinite(d) || !(d > o->lo && d < o->hi))
            return cli_usage_error(cmd, "%s wants a number between %g and %g (both excluded), not \"%s\"", label,
                                   o->lo, o->hi, arg);
        *(double *)o->dest = d;
        return CLI_GO_ON;
    }
    case CLI_CALL:
        return o->call(cmd, arg, o->dest);
    case CLI_END:
        break;
    }
    return cli_usage_error(cmd, "%s: no parser for this option (a bug)", label);
}

int cli_parse_options(const char *cmd, int argc, char **argv, const cli_option *table, cli_opts *opts,
                      const char *help)
{
    static const struct option common[] = {CLI_COMMON_LONGOPTS};
    struct option longopts[MAX_OPTIONS + 1];
    char shorts[2 * MAX_OPTIONS + 2];
    size_t n_table = 0, n_long = 0, n_short = 0;
    int opt;

    while (table && table[n_table].kind != CLI_END)
        n_table++;
    if (n_table + sizeof common / sizeof common[0] > MAX_OPTIONS)
        return cli_usage_error(cmd, "too many options in the table (a bug)");
    shorts[n_short++] = 'h';
    for (size_t i = 0; i < n_table; i++) {
        const cli_option *o = &table[i];
        int has_arg = o->kind == CLI_FLAG ? no_argument : required_argument;
        if (o->name)
            longopts[n_long++] = (struct option){o->name, has_arg, NULL,
                                                 o->short_name ? o->short_name : TABLE_VAL_BASE + (int)i};
        if (o->short_name) {
            shorts[n_short++] = (char)o->short_name;
            if (has_arg == required_argument)
                shorts[n_short++] = ':';
        }
    }
    shorts[n_short] = '\0';
    for (size_t i = 0; i < sizeof common / sizeof common[0]; i++)
        longopts[n_long++] = common[i];
    longopts[n_long] = (struct option){0};

    optind = 1;
    while ((opt = getopt_long(argc, argv, shorts, longopts, NULL)) != -1) {
        const cli_option *o = NULL;
        int common_rc = cli_common_option(opt, optarg, opts);
        if (common_rc < 0)
            return EXIT_USAGE;
        if (common_rc > 0)
            continue;
        if (opt == 'h' || opt == OPT_HELP) {
            fputs(help, stdout);
            return EXIT_OK;
        }
        for (size_t i = 0; i < n_table && !o; i++)
            if (opt == (table[i].short_name ? table[i].short_name : TABLE_VAL_BASE + (int)i))
                o = &table[i];
        if (!o) {
            /* a short option without its value ("-j" last): getopt_long says '?' with optopt */
            for (size_t i = 0; i < n_table && opt == '?' && optopt > 0; i++)
                if (table[i].short_name == optopt && table[i].kind != CLI_FLAG && !table[i].name)
                    return cli_usage_error(cmd, "-%c needs a value", optopt);
            return cli_bad_option(cmd, longopts, argv);
        }
        int rc = take_value(cmd, o, optarg);
        if (rc != CLI_GO_ON)
            return rc;
    }
    return CLI_GO_ON;
}
