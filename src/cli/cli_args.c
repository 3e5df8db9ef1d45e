/*
 * src/cli/cli_args.c — the conventions a user brings: HF_HUB_OFFLINE, suggestions for a
 * mistyped command, option or tensor pattern, and errors that say which argument was wrong.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "cli.h"

/* Names longer than this are not compared letter by letter (a tensor name is ~60). */
#define NEAREST_MAX_LEN 256
#define GLOB_EXAMPLES 4

/* Optimal string alignment distance (Levenshtein plus adjacent transpositions: "comapre"
 * is one edit from "compare"), capped at `cap` + 1 for speed. */
static size_t edit_distance(const char *a, const char *b, size_t cap)
{
    size_t la = strlen(a), lb = strlen(b), result;
    size_t *rows, *prev2, *prev, *cur;
    if (la > NEAREST_MAX_LEN || lb > NEAREST_MAX_LEN)
        return cap + 1;
    if ((la > lb ? la - lb : lb - la) > cap)
        return cap + 1;
    rows = calloc(3 * (lb + 1), sizeof *rows);
    if (!rows)
        return cap + 1;
    prev2 = rows;
    prev = prev2 + lb + 1;
    cur = prev + lb + 1;
    for (size_t j = 0; j <= lb; j++)
        prev[j] = j;
    for (size_t i = 1; i <= la; i++) {
        cur[0] = i;
        for (size_t j = 1; j <= lb; j++) {
            size_t cost = a[i - 1] != b[j - 1];
            size_t best = prev[j - 1] + cost;
            if (prev[j] + 1 < best)
                best = prev[j] + 1;
            if (cur[j - 1] + 1 < best)
                best = cur[j - 1] + 1;
            if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] && prev2[j - 2] + 1 < best)
                best = prev2[j - 2] + 1;
            cur[j] = best;
        }
        size_t *t = prev2;
        prev2 = prev;
        prev = cur;
        cur = t;
    }
    result = prev[lb];
    free(rows);
    return result;
}

const char *cli_nearest(const char *word, const char *const *candidates, size_t n)
{
    const char *best = NULL;
    size_t best_d = (size_t)-1, len = strlen(word);
    /* one edit per three letters, at least one and at most three: "jsn" -> "json" */
    size_t cap = len / 3 < 1 ? 1 : len / 3 > 3 ? 3 : len / 3;
    for (size_t i = 0; i < n; i++) {
        size_t d = edit_distance(word, candidates[i], cap);
        if (len >= 2 && strncmp(candidates[i], word, len) == 0 && d > 1)
            d = 1; /* a prefix: "fing" -> "fingerprint" */
        if (d <= cap && d < best_d) {
            best = candidates[i];
            best_d = d;
        }
    }
    return best;
}

int cli_bad_option(const char *cmd, const struct option *longopts, char **argv)
{
    const char *names[96] = {0};
    size_t n = 0;
    const char *arg = optind > 1 ? argv[optind - 1] : NULL;
    char name[128];
    /* getopt moves optind past the argument it rejected; a missing value at the very end
     * leaves it on the option itself */
    if (arg && strncmp(arg, "--", 2) == 0) {
        size_t len = strcspn(arg + 2, "=");
        snprintf(name, sizeof name, "%.*s", (int)(len < sizeof name ? len : sizeof name - 1), arg + 2);
        for (const struct option *o = longopts; o->name && n < sizeof names / sizeof names[0]; o++) {
            if (strcmp(o->name, name) == 0) {
                if (o->has_arg == required_argument)
                    return strcmp(name, "html") == 0
                               ? cli_usage_error(cmd, "--html needs a FILE to write the report to, e.g. --html "
                                                      "report.html")
                               : cli_usage_error(cmd, "--%s needs a value", name);
                return cli_usage_error(cmd, "--%s takes no value", name);
            }
            names[n++] = o->name;
        }
        const char *near = cli_nearest(name, names, n);
        /* getopt_long also rejects an abbreviation that fits several options */
        size_t fits = 0;
        for (size_t i = 0; i < n; i++)
            fits += strncmp(names[i], name, strlen(name)) == 0;
        if (fits > 1)
            return cli_usage_error(cmd, "--%s is ambiguous%s%s%s", name, near ? " (did you mean --" : "",
                                   near ? near : "", near ? "?)" : "");
        if (near)
            return cli_usage_error(cmd, "unknown option --%s (did you mean --%s?)", name, near);
        return cli_usage_error(cmd, "unknown option --%s", name);
    }
    if (optopt > 0 && optopt < 0x100) {
        for (const struct option *o = longopts; o->name; o++)
            if (o->val == optopt && o->has_arg == required_argument)
                return cli_usage_error(cmd, "-%c (--%s) needs a value", optopt, o->name);
        return cli_usage_error(cmd, "unknown option -%c", optopt);
    }
    for (const struct option *o = longopts; o->name; o++)
        if (o->val == optopt && o->has_arg == required_argument)
            return cli_usage_error(cmd, "--%s needs a value", o->name);
    return cli_usage_error(cmd, "unknown option %s", arg ? arg : "");
}

bool cli_value_missing(const char *cmd, const char *option, const char *value, const char *what)
{
    if (!value || strncmp(value, "--", 2) != 0)
        return false;
    cli_usage_error(cmd, "--%s needs %s, but the next argument is the option %s", option, what, value);
    return true;
}

/* ---- --tensor patterns that select nothing ---- */

/* The fewest edits that turn `pattern` (wildcards removed) into some substring of `name`
 * (approximate substring matching): "*atention*" is 1 from every "...attention..." name. */
static size_t substring_distance(const char *pattern, const char *name)
{
    size_t lp = strlen(pattern), ln = strlen(name), best;
    size_t *rows, *prev, *cur;
    if (lp > NEAREST_MAX_LEN || ln > 4 * NEAREST_MAX_LEN)
        return (size_t)-1;
    rows = calloc(2 * (lp + 1), sizeof *rows);
    if (!rows)
        return (size_t)-1;
    prev = rows;
    cur = prev + lp + 1;
    for (size_t i = 0; i <= lp; i++)
        prev[i] = i;
    best = prev[lp];
    for (size_t j = 1; j <= ln; j++) {
        cur[0] = 0; /* a match may start anywhere in the name */
        for (size_t i = 1; i <= lp; i++) {
            size_t c = prev[i - 1] + (pattern[i - 1] != name[j - 1]);
            if (prev[i] + 1 < c)
                c = prev[i] + 1;
            if (cur[i - 1] + 1 < c)
                c = cur[i - 1] + 1;
            cur[i] = c;
        }
        if (cur[lp] < best)
            best = cur[lp];
        size_t *t = prev;
        prev = cur;
        cur = t;
    }
    free(rows);
    return best;
}

static bool glob_matches_any(const cks_ckpt *ckpt, const char *glob)
{
    /* a plain name is looked up (the tensors are sorted): 500 names of a --tensors-from list
     * scanned 2,000 tensors each */
    if (!strpbrk(glob, "*?[\\"))
        return cks_ckpt_find(ckpt, glob) != NULL;
    for (size_t i = 0; i < ckpt->n_tensors; i++)
        if (cli_glob_match(glob, ckpt->tensors[i].info->name))
            return true;
    return false;
}

cks_err cli_check_globs(const cks_ckpt *const *ckpts, size_t n, char *const *globs, size_t n_globs, cks_diag *diag)
{
    cks_err err = CKS_OK;
    for (size_t g_i = 0; g_i < n_globs && !err; g_i++) {
        const char *glob = globs[g_i];
        bool found = false;
        char core[NEAREST_MAX_LEN + 1];
        size_t at = 0, total = 0;
        const char *example[GLOB_EXAMPLES] = {0};
        size_t example_d[GLOB_EXAMPLES];
        char list[1024];
        size_t used = 0;
        for (size_t c = 0; c < n && !found; c++)
            found = glob_matches_any(ckpts[c], glob);
        if (found)
            continue;
        /* the pattern without its wildcards is what the user meant to find */
        for (const char *p = glob; *p && at < NEAREST_MAX_LEN; p++)
            if (*p != '*' && *p != '?' && *p != '[' && *p != ']')
                core[at++] = *p;
        core[at] = '\0';
        for (size_t c = 0; c < n; c++) {
            for (size_t i = 0; i < ckpts[c]->n_tensors; i++) {
                const char *name = ckpts[c]->tensors[i].info->name;
                size_t d = substring_distance(core, name), slot = GLOB_EXAMPLES;
                bool seen = false;
                total++;
                for (size_t k = 0; k < GLOB_EXAMPLES && example[k] && !seen; k++)
                    seen = strcmp(example[k], name) == 0;
                if (seen)
                    continue;
                /* keep the closest few; ties go to the name that sorts first */
                for (size_t k = 0; k < GLOB_EXAMPLES && slot == GLOB_EXAMPLES; k++)
                    if (!example[k] || d < example_d[k] ||
                        (d == example_d[k] && strverscmp(name, example[k]) < 0))
                        slot = k;
                if (slot == GLOB_EXAMPLES)
                    continue;
                memmove(&example[slot + 1], &example[slot], (GLOB_EXAMPLES - slot - 1) * sizeof *example);
                memmove(&example_d[slot + 1], &example_d[slot], (GLOB_EXAMPLES - slot - 1) * sizeof *example_d);
                example[slot] = name;
                example_d[slot] = d;
            }
        }
        list[0] = '\0';
        for (size_t k = 0; k < GLOB_EXAMPLES && example[k] && used < sizeof list; k++)
            used += (size_t)snprintf(list + used, sizeof list - used, "%s%s", k ? ", " : "", example[k]);
        size_t glen = strlen(glob);
        bool anywhere = glen >= 2 && glob[0] == '*' && glob[glen - 1] == '*';
        if (total == 0)
            err = cks_fail(diag, CKS_ERR_NOT_FOUND, "no tensor matches --tensor '%s': the checkpoint%s no tensors",
                           glob, n > 1 ? "s hold" : " holds");
        else if (anywhere)
            err = cks_fail(diag, CKS_ERR_NOT_FOUND, "no tensor matches --tensor '%s' (%zu tensor%s; nearest: %s)", glob,
                           total, total == 1 ? "" : "s", list);
        else
            err = cks_fail(diag, CKS_ERR_NOT_FOUND,
                           "no tensor matches --tensor '%s' (%zu tensor%s; nearest: %s). A pattern is a shell glob "
                           "matched against the whole name: '%s%s%s' finds it anywhere in a name",
                           glob, total, total == 1 ? "" : "s", list, glob[0] == '*' ? "" : "*", glob,
                           glen && glob[glen - 1] == '*' ? "" : "*");
    }
    return err;
}
