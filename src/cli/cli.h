/*
 * src/cli/cli.h — what the subcommands share: options every command takes, opening a
 * SOURCE, turning library errors into messages and exit codes, JSON output, progress.
 * Only the CLI talks to people; it uses the library through its public headers.
 */
#ifndef CKS_CLI_H
#define CKS_CLI_H

#include <cjson/cJSON.h>
#include <getopt.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "ckptscope/checkpoint.h"
#include "ckptscope/workspace.h"
#include "ckptscope/defaults.h"
#include "ckptscope/error.h"
#include "ckptscope/hash.h"

#define CKS_VERSION "0.1.0"
/* 2: one naming for sources ("source", or "sources": {"a", "b"}, each with "spec"), bytes_read
 * always a number, and {"error": {rule, message, exit_code}} on failure (docs/json.md). */
#define CKS_SCHEMA_VERSION 2

/* Exit codes (README "Exit codes"): stable, a script may branch on them. */
enum {
    EXIT_OK = 0,
    EXIT_DIFFERENT = 1,   /* diff: contents differ; verify: related to a known model */
    EXIT_USAGE = 2,
    EXIT_FORMAT = 3,      /* not a valid checkpoint */
    EXIT_IO = 4,          /* local I/O, cache, disk full, offline miss */
    EXIT_NETWORK = 5,     /* network, HTTP, TLS, rate limit */
    EXIT_ACCESS = 6,      /* not found, gated, private, bad token */
    EXIT_INTERNAL = 7     /* out of memory, numeric failure */
};

typedef struct cli_opts {
    bool json;
    bool quiet;
    bool verbose;
    bool offline;
    const char *cache_dir;
    uint64_t cache_max;
    bool reads_config;    /* set by compare, verify, fingerprint: they read config.json */
} cli_opts;

/* Long options every subcommand accepts; values >= 0x1000 are reserved for them. */
enum {
    OPT_JSON = 0x1000,
    OPT_QUIET,
    OPT_VERBOSE,
    OPT_OFFLINE,
    OPT_CACHE_DIR,
    OPT_CACHE_MAX,
    OPT_HELP,
};
#define CLI_COMMON_LONGOPTS                                          \
    {"json", no_argument, NULL, OPT_JSON},                           \
        {"quiet", no_argument, NULL, OPT_QUIET},                     \
        {"verbose", no_argument, NULL, OPT_VERBOSE},                 \
        {"offline", no_argument, NULL, OPT_OFFLINE},                 \
        {"cache-dir", required_argument, NULL, OPT_CACHE_DIR},       \
        {"cache-max", required_argument, NULL, OPT_CACHE_MAX},       \
        {"help", no_argument, NULL, OPT_HELP}

/*
 * Called by main() before a subcommand runs: remembers the command's name and whether --json
 * appears anywhere on its command line (before "--"), so that an error met before or while the
 * options are parsed still comes out as a JSON document; silences getopt's own messages
 * (cli_bad_option says more).
 */
void cli_start(const char *command, int argc, char **argv);

/* True when HF_HUB_OFFLINE is set to a true value (1, ON, YES, TRUE: huggingface_hub's
 * reading) or --offline was given: then every command answers from the cache alone. */
bool cli_offline(const cli_opts *opts);

/*
 * getopt_long returned '?': say which argument was wrong and what was probably meant
 * ("unknown option --jsn (did you mean --json?)", "--html needs a FILE ..."); EXIT_USAGE.
 */
int cli_bad_option(const char *cmd, const struct option *longopts, char **argv);

/* An option's value that is another option ("--html --json"): the value was forgotten.
 * Prints the usage error and returns true. */
bool cli_value_missing(const char *cmd, const char *option, const char *value, const char *what);

/* The candidate nearest to `word` (edit distance with transpositions, or a prefix), or NULL
 * when none is close enough to suggest. */
const char *cli_nearest(const char *word, const char *const *candidates, size_t n);

/*
 * Handle a common option; returns 1 if handled, 0 if not common, -1 on a bad value
 * (after printing why). OPT_HELP is not handled here: each command prints its own help.
 */
int cli_common_option(int opt, const char *arg, cli_opts *opts);

/*
 * One option parser for every command (cli_options.c). A command lists its own options in a
 * table ending with {.kind = CLI_END}; cli_parse_options adds the common options above and
 * -h/--help (printing `help`), runs getopt_long, checks and stores every value, and returns
 * CLI_GO_ON with optind at the first operand, or the exit code to return at once (EXIT_OK after
 * --help, EXIT_USAGE after a message that names the option and, for numbers, the allowed range).
 */
typedef enum cli_kind {
    CLI_END = 0,
    CLI_FLAG,   /* bool *dest = true */
    CLI_TEXT,   /* const char **dest = the value; with `what`, a value that is an option is refused */
    CLI_LIST,   /* cli_list *dest gets the value appended (repeatable, at most list->max) */
    CLI_WHOLE,  /* a whole number of digits only, min..max (max 0: the type's largest) */
    CLI_SIZE,   /* a size ("384M", "1G", cli_parse_size), min..max bytes (max 0: none); `what`: examples */
    CLI_REAL,   /* double *dest, strictly between lo and hi */
    CLI_CALL,   /* call(cmd, value, dest): CLI_GO_ON, or the exit code after its own message */
} cli_kind;
#define CLI_GO_ON (-1)

typedef struct cli_list {
    const char **items;
    size_t n, max;
    const char *what; /* "models": "at most 8 --control models" */
} cli_list;

typedef struct cli_option {
    const char *name;    /* long name without "--"; NULL for a short-only option (-j) */
    int short_name;      /* 'o' for -o, or 0 */
    cli_kind kind;
    void *dest;
    size_t width;        /* CLI_WHOLE, CLI_SIZE: sizeof *dest, 4 or 8 (CLI_DEST sets it) */
    uint64_t min, max;   /* CLI_WHOLE, CLI_SIZE */
    double lo, hi;       /* CLI_REAL */
    const char *what;
    int (*call)(const char *cmd, const char *value, void *dest);
} cli_option;
#define CLI_DEST(lvalue) .dest = &(lvalue), .width = sizeof(lvalue)

int cli_parse_options(const char *cmd, int argc, char **argv, const cli_option *table, cli_opts *opts,
                      const char *help);

/* At most this many --tensor GLOB patterns (a cli_list of them). */
#define CLI_MAX_GLOBS 64

/* "2G", "512M", "1.5GiB", "1000000" → bytes; false on nonsense. */
bool cli_parse_size(const char *text, uint64_t *out);

/* Print "ckptscope CMD: <Name>: <detail>" (and a hint) to stderr; return the exit code.
 * With --json, stdout also gets {"schema_version", "command", "error": {rule, message,
 * exit_code}} unless a document was printed already. */
int cli_fail(const char *cmd, cks_err err, const cks_diag *diag);
int cli_exit_code(cks_err err);
int cli_usage_error(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* The JSON error document alone (for callers that printed their own message). */
void cli_json_error(const char *rule, const char *message, int exit_code);
/* Whether --json was asked for (cli_start), and the note that a document went out. */
bool cli_json_wanted(void);
void cli_json_mark_printed(void);

/*
 * Open SOURCE (a local file, index, or directory; remote forms are added by the Hub client)
 * as a checkpoint. `report` (may be NULL) receives a JSON "source" object for --json.
 */
cks_err cli_open_checkpoint(const char *spec, const cli_opts *opts, cks_ckpt **out, cJSON **report,
                            cks_diag *diag);
/* cli_open_checkpoint for several SOURCEs side by side (cks_workspace_open_all): the caller
 * sets items[i].source and aux_names; reports[i] as cli_open_checkpoint's report. */
cks_err cli_open_checkpoints(cks_workspace_item *items, size_t n, const cli_opts *opts, cJSON **reports,
                             cks_diag *diag);

/*
 * The same SOURCE checked file by file (cks_ckpt_check_local / cks_remote_check_ckpt): what
 * verify falls back to when opening it fails, so every problem is reported. `report` (may
 * be NULL) receives the "source" object, without files.
 */
cks_err cli_check_checkpoint(const char *spec, const cli_opts *opts, cks_ckpt_check **out, cJSON **report,
                             cks_diag *diag);

/* After a command read `ckpt`: name on stderr (once per file) the files whose bytes came
 * from a copy nobody checked against the Hub's hash (a file in HF_HOME read only in part),
 * and, when root is given, list them in its "unverified_files" (always present there).
 * Called where the answer is the bytes themselves (hash, fetch, diff); ls lists them in
 * --json only (cmd NULL: nothing on stderr; a header that does not parse is replaced anyway). */
void cli_note_unverified(const char *cmd, const cks_ckpt *ckpt, cJSON *root);

/* A JSON object with "schema_version" first, and the printer that frees it. */
cJSON *cli_json_new(const char *command);
/* Add "spec" (what the user typed) first to a "source" object; returns it. */
cJSON *cli_source_spec(cJSON *source, const char *spec);
void cli_json_print(cJSON *root);
cJSON *cli_json_shape(const cks_tensor_info *info);

/*
 * Untrusted text (tensor names, metadata, Hub file names, messages quoting them) made safe
 * for a terminal: C0 controls, DEL, C1 controls, Unicode line separators and bidi overrides,
 * bytes that are not UTF-8, and the backslash itself are written as \n \t \r \\ \xHH or
 * \uHHHH, so a name can neither forge an output line nor send an escape sequence. Called at
 * every print site of human output (JSON keeps the text; cJSON escapes it). The result
 * lives in one of 8 per-thread buffers: valid until the 8th next call in the same thread,
 * enough for one printf. NULL prints as "(null)".
 */
const char *cli_esc(const char *s);

/* Bytes as "1.5 GiB". buf >= 32. */
const char *cli_human_bytes(uint64_t bytes, char *buf, size_t size);
/* Shape as "[4096, 1024]". */
const char *cli_shape_text(const cks_tensor_info *info, char *buf, size_t size);

/*
 * Progress: one line on stderr, only when it is a terminal and not --quiet, redrawn at most
 * ten times a second and cleared before anything else is printed (src/cli/cli_progress.c).
 * What it shows, by phase: "resolving org/name@rev" while a Hub repo is resolved and its
 * headers are read; a known total with rate and ETA while tensors are hashed or fetched
 * (cli_progress_init/update); the stage and bytes fetched against the budget during compare
 * (cli_progress_stage); the network's own counters when nothing else is active.
 */
typedef struct cli_progress {
    bool enabled;
    const char *what;
    double started;
    uint64_t done, total;     /* set total before the first update when it is known */
    uint64_t wire_start;      /* the network counter when this phase began */
} cli_progress;
void cli_progress_init(cli_progress *p, const cli_opts *opts, const char *what);
void cli_progress_update(void *ctx, uint64_t done, uint64_t total);
void cli_progress_done(cli_progress *p);
/* A named phase without a known total ("resolving lab-a/moe-base", "compare: T3 ...");
 * budget > 0 adds "of a <budget> budget per model". NULL stage ends it. */
void cli_progress_stage(const cli_opts *opts, const char *stage, uint64_t budget);
/* The network's counters (from the range engine's callback). */
void cli_progress_wire(uint64_t bytes_fetched, uint64_t bytes_planned, uint64_t requests, double seconds);
/* Erase the line (before printing anything else on stderr). */
void cli_progress_clear(void);
double cli_now(void);

/*
 * Every --tensor GLOB must select something: the first that matches no tensor of any of the
 * n checkpoints is CKS_ERR_NOT_FOUND, naming the pattern and the nearest existing names.
 */
cks_err cli_check_globs(const cks_ckpt *const *ckpts, size_t n, char *const *globs, size_t n_globs,
                        cks_diag *diag);

/* fnmatch(glob, name, 0) == 0, with a plain name (no * ? [ \\) compared as a string: a
 * --tensors-from list of 500 names against 2,000 tensors spent 60 ms in fnmatch. */
bool cli_glob_match(const char *glob, const char *name);

/*
 * The tensors of `ckpt` whose names match any glob (all when n_globs == 0), in natural
 * name order ("layers.9" before "layers.10"). *out is malloc'd; *n may be 0.
 */
cks_err cli_select_tensors(const cks_ckpt *ckpt, char *const *globs, size_t n_globs,
                           const cks_ckpt_tensor ***out, size_t *n, cks_diag *diag);

/* Hash the selected tensors with progress on stderr; *out is malloc'd (n entries). */
cks_err cli_hash_selection(const cks_ckpt *ckpt, const cks_ckpt_tensor *const *sel, size_t n,
                           const cli_opts *opts, const char *what, cks_tensor_hash **out,
                           cks_diag *diag);

/* Subcommands (one file each). */
int cmd_ls(int argc, char **argv);
int cmd_hash(int argc, char **argv);
int cmd_diff(int argc, char **argv);
int cmd_compare(int argc, char **argv);
int cmd_fingerprint(int argc, char **argv);
int cmd_verify(int argc, char **argv);

/* Open a fingerprint file (cmd_fingerprint.c) as a compare model; report may be NULL. */
struct cks_fingerprint;
struct cks_compare_model;
cks_err cli_open_fingerprint(const char *path, const char *label, struct cks_fingerprint **fp,
                             struct cks_compare_model *model, cJSON **report, cks_diag *diag);
/* A fingerprint library's members as "LIBRARY#member" paths that cli_open_fingerprint opens
 * (*refs malloc'd, each entry too); the exit code after a message when it does not open. */
int cli_fingerprint_library_refs(const char *path, char ***refs, size_t *n);
/* ckptscope fingerprint gather (cmd_fingerprint_gather.c) */
int cmd_fingerprint_gather(int argc, char **argv);

#endif
