/* ckptscope cache ls|du|verify|prune|clear — look after the disk cache. */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ckptscope/cache.h"
#include "ckptscope/cache_hub.h"
#include "cli.h"

int cks_cmd_cache(int argc, char **argv);

static const char cache_help[] =
    "usage: ckptscope cache ACTION [OPTIONS]\n"
    "       ckptscope cache rm ORG/NAME...\n"
    "\n"
    "Inspect and maintain the disk cache that holds every byte ckptscope fetched, keyed by\n"
    "content (an LFS file's SHA-256, or commit + path for small files), so a second run\n"
    "costs no network. Layout and guarantees: cache/README.md.\n"
    "\n"
    "actions:\n"
    "  ls       one line per repository (like `hf cache scan`): revisions, files, size on\n"
    "           disk, last use; --entries lists every cached file and metadata entry\n"
    "  rm       remove what the cache holds for ORG/NAME (datasets/ORG/NAME for a dataset):\n"
    "           its listings and every file no other cached repository also lists\n"
    "  du       totals: logical bytes (what the cached ranges hold) versus stored bytes\n"
    "           (what they take on disk after compression)\n"
    "  verify   read every stored chunk and metadata entry and check its checksum;\n"
    "           exit 4 if any is bad (with --repair, bad entries are deleted and the exit is 0)\n"
    "  prune    evict least-recently-used extents until the cache fits in --max SIZE\n"
    "           (default: --cache-max, $CKPTSCOPE_CACHE_MAX, or max_size in the cache's\n"
    "           config file); data a running ckptscope is using is never evicted\n"
    "  clear    delete every entry no running ckptscope is using\n"
    "\n"
    "options:\n"
    "  --max SIZE        prune target, e.g. 20G, 500M\n"
    "  --repair          verify: delete bad entries and leftover temporary files\n"
    "  --entries         ls: every cached file and metadata entry instead of repositories\n"
    "  --cache-dir DIR   the cache to use (default $CKPTSCOPE_CACHE, else\n"
    "                    ${XDG_CACHE_HOME:-~/.cache}/ckptscope)\n"
    "  --cache-max SIZE  size cap (prune's default target)\n"
    "  --json            machine-readable output\n"
    "  --verbose         verify: name every bad entry (always listed in --json)\n"
    "  --help            this text\n"
    "\n"
    "examples:\n"
    "  ckptscope cache ls\n"
    "  ckptscope cache rm lab-a/moe-base\n"
    "  ckptscope cache du\n"
    "  ckptscope cache verify --repair\n"
    "  ckptscope cache prune --max 50G\n"
    "  ckptscope cache ls --json | jq '.entries[] | select(.kind == \"file\")'\n";


static void iso_time(int64_t t, char *buf, size_t n)
{
    time_t tt = (time_t)t;
    struct tm tm;
    if (t <= 0 || !gmtime_r(&tt, &tm) || strftime(buf, n, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
        snprintf(buf, n, "-");
}

static const char *type_prefix(cks_repo_type t)
{
    return t == CKS_REPO_DATASET ? "datasets/" : t == CKS_REPO_SPACE ? "spaces/" : "";
}

static cJSON *repos_json(const cks_cache_repo_usage *u, size_t n)
{
    cJSON *arr = cJSON_CreateArray();
    for (size_t i = 0; i < n; i++) {
        cJSON *e = cJSON_CreateObject(), *revs;
        char when[32];
        iso_time(u[i].last_used, when, sizeof when);
        if (u[i].repo_id) {
            cJSON_AddStringToObject(e, "repo", u[i].repo_id);
            cJSON_AddStringToObject(e, "repo_type", u[i].type == CKS_REPO_DATASET ? "dataset"
                                                    : u[i].type == CKS_REPO_SPACE ? "space"
                                                                                   : "model");
        } else {
            cJSON_AddNullToObject(e, "repo"); /* files no cached listing names */
            cJSON_AddNullToObject(e, "repo_type");
        }
        revs = cJSON_AddArrayToObject(e, "revisions");
        for (size_t r = 0; r < u[i].n_revisions; r++)
            cJSON_AddItemToArray(revs, cJSON_CreateString(u[i].revisions[r]));
        cJSON_AddNumberToObject(e, "commits", (double)u[i].n_commits);
        cJSON_AddNumberToObject(e, "files", (double)u[i].n_files);
        cJSON_AddNumberToObject(e, "files_shared", (double)u[i].n_shared);
        cJSON_AddNumberToObject(e, "logical_bytes", (double)u[i].logical_bytes);
        cJSON_AddNumberToObject(e, "stored_bytes", (double)u[i].stored_bytes);
        cJSON_AddStringToObject(e, "last_used", when);
        cJSON_AddItemToArray(arr, e);
    }
    return arr;
}

/* `cache ls`: one line per repository, as `hf cache scan` shows a Hugging Face cache. */
static void print_repos(const cks_cache *c, const cks_cache_repo_usage *u, size_t n, uint64_t total_stored)
{
    char a[32], b[32], when[32], name[160], revs[64];
    int width = 10;
    for (size_t i = 0; i < n; i++) {
        int len = u[i].repo_id ? (int)(strlen(type_prefix(u[i].type)) + strlen(u[i].repo_id)) : 24;
        if (len > width)
            width = len > 60 ? 60 : len;
    }
    printf("%-*s  %-20s %6s  %12s  %12s  %s\n", width, "REPOSITORY", "REVISIONS", "FILES", "SIZE ON DISK", "LOGICAL",
           "LAST USED");
    for (size_t i = 0; i < n; i++) {
        size_t at = 0;
        iso_time(u[i].last_used, when, sizeof when);
        if (u[i].repo_id)
            snprintf(name, sizeof name, "%s%s", type_prefix(u[i].type), u[i].repo_id);
        else
            snprintf(name, sizeof name, "(no cached listing)");
        revs[0] = '\0';
        for (size_t r = 0; r < u[i].n_revisions && at < sizeof revs; r++) {
            const char *rev = u[i].revisions[r];
            /* the commits a branch resolved to are kept too; the branch says more */
            if (strlen(rev) == 40 && u[i].n_revisions > 1)
                continue;
            at += (size_t)snprintf(revs + at, sizeof revs - at, "%s%.12s", at ? "," : "", rev);
        }
        printf("%-*s  %-20s %6zu  %12s  %12s  %s%s\n", width, name, revs[0] ? revs : "-", u[i].n_files,
               cli_human_bytes(u[i].stored_bytes, a, sizeof a), cli_human_bytes(u[i].logical_bytes, b, sizeof b), when,
               u[i].n_shared ? "  (some files shared with another repository)" : "");
    }
    printf("\n%zu repositor%s in %s, %s on disk\n", n && !u[n - 1].repo_id ? n - 1 : n,
           (n && !u[n - 1].repo_id ? n - 1 : n) == 1 ? "y" : "ies", cks_cache_dir(c),
           cli_human_bytes(total_stored, a, sizeof a));
}

static int do_ls(cks_cache *c, const cli_opts *o, bool entries)
{
    cks_cache_entry *v = NULL;
    cks_cache_repo_usage *u = NULL;
    size_t n = 0, n_u = 0;
    uint64_t stored = 0;
    cks_diag d;
    cks_err err = cks_cache_list(c, &v, &n, &d);
    if (!err)
        err = cks_cache_repo_usage_list(c, &u, &n_u, &d);
    if (err) {
        cks_cache_entries_free(v, n);
        return cli_fail("cache", err, &d);
    }
    for (size_t i = 0; i < n; i++)
        stored += v[i].stored_bytes;
    if (o->json) {
        cJSON *root = cli_json_new("cache");
        cJSON_AddStringToObject(root, "action", "ls");
        cJSON_AddStringToObject(root, "cache_dir", cks_cache_dir(c));
        cJSON_AddNumberToObject(root, "stored_bytes", (double)stored);
        cJSON_AddItemToObject(root, "repos", repos_json(u, n_u));
        cJSON *arr = cJSON_AddArrayToObject(root, "entries");
        for (size_t i = 0; i < n; i++) {
            cJSON *e = cJSON_CreateObject();
            char when[32];
            bool file = v[i].kind == CKS_CACHE_ENTRY_FILE;
            iso_time(v[i].last_used, when, sizeof when);
            cJSON_AddStringToObject(e, "kind", file ? "file" : "meta");
            if (!file)
                cJSON_AddStringToObject(e, "namespace", v[i].ns);
            cJSON_AddStringToObject(e, "key", v[i].key);
            if (file) {
                cJSON_AddNumberToObject(e, "extents", (double)v[i].n_extents);
                cJSON_AddBoolToObject(e, "sha256_verified", v[i].verified);
            }
            cJSON_AddNumberToObject(e, "logical_bytes", (double)v[i].logical_bytes);
            cJSON_AddNumberToObject(e, "stored_bytes", (double)v[i].stored_bytes);
            cJSON_AddStringToObject(e, file ? "last_used" : "created", when);
            cJSON_AddItemToArray(arr, e);
        }
        cli_json_print(root);
    } else if (n == 0) {
        if (!o->quiet)
            printf("cache %s is empty\n", cli_esc(cks_cache_dir(c)));
    } else if (!entries) {
        print_repos(c, u, n_u, stored);
    } else {
        printf("%-6s %10s %10s %7s  %-20s  %s\n", "KIND", "LOGICAL", "STORED", "EXTENTS",
               "LAST USED", "KEY");
        for (size_t i = 0; i < n; i++) {
            char a[32], b[32], when[32], ext[24];
            bool file = v[i].kind == CKS_CACHE_ENTRY_FILE;
            iso_time(v[i].last_used, when, sizeof when);
            snprintf(ext, sizeof ext, "%" PRIu64, v[i].n_extents);
            printf("%-6s %10s %10s %7s  %-20s  %s%s%s%s\n", file ? "file" : "meta",
                   cli_human_bytes(v[i].logical_bytes, a, sizeof a),
                   cli_human_bytes(v[i].stored_bytes, b, sizeof b), file ? ext : "-", when,
                   file ? "" : cli_esc(v[i].ns), file ? "" : " ", cli_esc(v[i].key),
                   file && v[i].verified ? "  (sha256 verified)" : "");
        }
    }
    cks_cache_entries_free(v, n);
    cks_cache_repo_usage_free(u, n_u);
    return EXIT_OK;
}

/* "org/name", "datasets/org/name", "hf://[datasets/]org/name" */
static int do_rm(cks_cache *c, const cli_opts *o, char **ids, int n_ids)
{
    int rc = EXIT_OK;
    cJSON *removed = cJSON_CreateArray();
    for (int i = 0; i < n_ids && rc == EXIT_OK; i++) {
        const char *id = ids[i];
        cks_repo_type type = CKS_REPO_MODEL;
        cks_cache_rm_report rep;
        cks_diag d;
        cks_err err;
        if (strncmp(id, "hf://", 5) == 0)
            id += 5;
        if (strncmp(id, "datasets/", 9) == 0) {
            type = CKS_REPO_DATASET;
            id += 9;
        } else if (strncmp(id, "models/", 7) == 0) {
            id += 7;
        }
        if (strchr(id, '@')) {
            rc = cli_usage_error("cache", "cache rm removes a whole repository: write %.*s without @REVISION",
                                 (int)strcspn(ids[i], "@"), ids[i]);
            break;
        }
        err = cks_cache_remove_repo(c, type, id, &rep, &d);
        if (err == CKS_ERR_NOT_FOUND) {
            /* name the repositories it could have meant */
            cks_cache_repo_usage *u = NULL;
            size_t n = 0;
            const char *names[256];
            size_t k = 0;
            const char *near = NULL;
            if (cks_cache_repo_usage_list(c, &u, &n, NULL) == CKS_OK) {
                for (size_t j = 0; j < n && k < 256; j++)
                    if (u[j].repo_id)
                        names[k++] = u[j].repo_id;
                near = cli_nearest(id, names, k);
            }
            if (near) {
                size_t len = strlen(d.text);
                snprintf(d.text + len, sizeof d.text - len, " (did you mean %s? `ckptscope cache ls` lists them)", near);
            } else {
                size_t len = strlen(d.text);
                snprintf(d.text + len, sizeof d.text - len, " (`ckptscope cache ls` lists what it holds)");
            }
            cks_cache_repo_usage_free(u, n);
        }
        if (err) {
            rc = cli_fail("cache", err, &d);
            break;
        }
        if (o->json) {
            cJSON *e = cJSON_CreateObject();
            cJSON_AddStringToObject(e, "repo", id);
            cJSON_AddStringToObject(e, "repo_type", type == CKS_REPO_DATASET ? "dataset" : "model");
            cJSON_AddNumberToObject(e, "files_removed", (double)rep.files_removed);
            cJSON_AddNumberToObject(e, "files_shared_kept", (double)rep.files_shared_kept);
            cJSON_AddNumberToObject(e, "files_in_use", (double)rep.files_in_use);
            cJSON_AddNumberToObject(e, "listings_removed", (double)rep.listings_removed);
            cJSON_AddNumberToObject(e, "removed_bytes", (double)rep.bytes_removed);
            cJSON_AddItemToArray(removed, e);
        } else if (!o->quiet) {
            char a[32];
            printf("removed %s%s: %zu file%s, %s", type_prefix(type), id, rep.files_removed,
                   rep.files_removed == 1 ? "" : "s", cli_human_bytes(rep.bytes_removed, a, sizeof a));
            if (rep.files_shared_kept)
                printf("; kept %zu shared with another cached repository", rep.files_shared_kept);
            if (rep.files_in_use)
                printf("; %zu in use by a running ckptscope were kept", rep.files_in_use);
            printf("\n");
        }
    }
    if (o->json && rc == EXIT_OK) {
        cJSON *root = cli_json_new("cache");
        cJSON_AddStringToObject(root, "action", "rm");
        cJSON_AddStringToObject(root, "cache_dir", cks_cache_dir(c));
        cJSON_AddItemToObject(root, "removed", removed);
        removed = NULL;
        cli_json_print(root);
    }
    cJSON_Delete(removed);
    return rc;
}

static int do_du(cks_cache *c, const cli_opts *o)
{
    cks_cache_stat st;
    cks_diag d;
    cks_err err = cks_cache_stat_get(c, &st, &d);
    if (err)
        return cli_fail("cache", err, &d);
    double ratio = st.logical_bytes ? (double)st.stored_bytes / (double)st.logical_bytes : 0;
    if (o->json) {
        cJSON *root = cli_json_new("cache");
        cJSON_AddStringToObject(root, "action", "du");
        cJSON_AddStringToObject(root, "cache_dir", cks_cache_dir(c));
        cJSON_AddNumberToObject(root, "files", (double)st.n_keys);
        cJSON_AddNumberToObject(root, "extents", (double)st.n_extents);
        cJSON_AddNumberToObject(root, "metadata_entries", (double)st.n_meta);
        cJSON_AddNumberToObject(root, "logical_bytes", (double)st.logical_bytes);
        cJSON_AddNumberToObject(root, "stored_bytes", (double)st.stored_bytes);
        cJSON_AddNumberToObject(root, "metadata_stored_bytes", (double)st.meta_bytes);
        cJSON_AddNumberToObject(root, "stored_over_logical", ratio);
        cJSON_AddNumberToObject(root, "stale_temporaries", (double)st.n_temp);
        cli_json_print(root);
    } else {
        char a[32], b[32], m[32];
        printf("cache      %s\n", cli_esc(cks_cache_dir(c)));
        printf("files      %" PRIu64 " (%" PRIu64 " extents), %" PRIu64 " metadata entries\n",
               st.n_keys, st.n_extents, st.n_meta);
        printf("logical    %s (%" PRIu64 " bytes)\n", cli_human_bytes(st.logical_bytes, a, sizeof a),
               st.logical_bytes);
        printf("stored     %s (%" PRIu64 " bytes, %.1f%% of logical; metadata %s)\n",
               cli_human_bytes(st.stored_bytes, b, sizeof b), st.stored_bytes, 100.0 * ratio,
               cli_human_bytes(st.meta_bytes, m, sizeof m));
    }
    return EXIT_OK;
}

static int do_verify(cks_cache *c, const cli_opts *o, bool repair)
{
    cks_cache_verify_report rep;
    cks_diag d;
    cks_err err = cks_cache_verify(c, repair, &rep, &d);
    if (!err)
        err = cks_cache_verify_listed(c, repair, &rep, &d);
    if (err) {
        cks_cache_verify_report_release(&rep);
        return cli_fail("cache", err, &d);
    }
    uint64_t bad = rep.bad_extents + rep.bad_meta + rep.bad_files;
    if (o->json) {
        cJSON *root = cli_json_new("cache");
        cJSON_AddStringToObject(root, "action", "verify");
        cJSON_AddStringToObject(root, "cache_dir", cks_cache_dir(c));
        cJSON_AddBoolToObject(root, "ok", bad == 0);
        cJSON_AddNumberToObject(root, "checked_extents", (double)rep.checked_extents);
        cJSON_AddNumberToObject(root, "checked_metadata", (double)rep.checked_meta);
        cJSON_AddNumberToObject(root, "checked_bytes", (double)rep.checked_bytes);
        cJSON_AddNumberToObject(root, "bad_extents", (double)rep.bad_extents);
        cJSON_AddNumberToObject(root, "bad_metadata", (double)rep.bad_meta);
        cJSON_AddNumberToObject(root, "stale_temporaries", (double)rep.stale_temp);
        cJSON_AddNumberToObject(root, "checked_files", (double)rep.checked_files);
        cJSON_AddNumberToObject(root, "bad_files", (double)rep.bad_files);
        cJSON_AddNumberToObject(root, "partial_files", (double)rep.partial_files);
        cJSON_AddBoolToObject(root, "repaired", repair);
        cJSON *arr = cJSON_AddArrayToObject(root, "bad");
        for (size_t i = 0; i < rep.n_bad; i++)
            cJSON_AddItemToArray(arr, cJSON_CreateString(rep.bad[i]));
        cli_json_print(root);
    } else {
        char a[32];
        if (bad || o->verbose)
            for (size_t i = 0; i < rep.n_bad; i++)
                printf("bad %s%s\n", cli_esc(rep.bad[i]), repair ? " (deleted)" : "");
        printf("checked %" PRIu64 " extents (%s) and %" PRIu64 " metadata entries: %" PRIu64
               " bad%s\n",
               rep.checked_extents, cli_human_bytes(rep.checked_bytes, a, sizeof a),
               rep.checked_meta, bad, bad && repair ? ", deleted" : "");
        printf("checked %" PRIu64 " whole file(s) against their SHA-256: %" PRIu64 " bad%s; %" PRIu64
               " file(s) held only in part (checked when a command reads them whole)\n",
               rep.checked_files, rep.bad_files, rep.bad_files && repair ? ", deleted" : "",
               rep.partial_files);
        if (rep.stale_temp)
            printf("%" PRIu64 " temporary file(s) left by interrupted runs%s\n", rep.stale_temp,
                   repair ? ", deleted" : " (harmless; --repair deletes them)");
    }
    cks_cache_verify_report_release(&rep);
    return bad && !repair ? EXIT_IO : EXIT_OK;
}

static int do_prune(cks_cache *c, const cli_opts *o, uint64_t max)
{
    uint64_t n = 0, bytes = 0;
    cks_diag d;
    cks_err err = cks_cache_prune(c, max, &n, &bytes, &d);
    if (err)
        return cli_fail("cache", err, &d);
    if (o->json) {
        cJSON *root = cli_json_new("cache");
        cJSON_AddStringToObject(root, "action", "prune");
        cJSON_AddStringToObject(root, "cache_dir", cks_cache_dir(c));
        cJSON_AddNumberToObject(root, "max_bytes", (double)max);
        cJSON_AddNumberToObject(root, "evicted_extents", (double)n);
        cJSON_AddNumberToObject(root, "evicted_bytes", (double)bytes);
        cli_json_print(root);
    } else { /* the answer goes to stdout; --quiet only quiets stderr */
        char a[32], b[32];
        printf("evicted %" PRIu64 " extents (%s) to fit in %s\n", n,
               cli_human_bytes(bytes, a, sizeof a), cli_human_bytes(max, b, sizeof b));
    }
    return EXIT_OK;
}

static int do_clear(cks_cache *c, const cli_opts *o)
{
    uint64_t bytes = 0;
    cks_diag d;
    cks_err err = cks_cache_clear(c, &bytes, &d);
    if (err)
        return cli_fail("cache", err, &d);
    if (o->json) {
        cJSON *root = cli_json_new("cache");
        cJSON_AddStringToObject(root, "action", "clear");
        cJSON_AddStringToObject(root, "cache_dir", cks_cache_dir(c));
        cJSON_AddNumberToObject(root, "removed_bytes", (double)bytes);
        cli_json_print(root);
    } else { /* the answer goes to stdout; --quiet only quiets stderr */
        char a[32];
        printf("removed %s from %s\n", cli_human_bytes(bytes, a, sizeof a), cli_esc(cks_cache_dir(c)));
    }
    return EXIT_OK;
}

int cks_cmd_cache(int argc, char **argv)
{
    cli_opts opts = {0};
    uint64_t max = UINT64_MAX; /* not given */
    bool have_max = false, repair = false, entries = false;
    const cli_option table[] = {{.name = "max", .kind = CLI_SIZE, CLI_DEST(max), .what = "20G or 500M"},
                                {.name = "repair", .kind = CLI_FLAG, .dest = &repair},
                                {.name = "entries", .kind = CLI_FLAG, .dest = &entries},
                                {.kind = CLI_END}};
    int rc = EXIT_OK;
    cks_cache *c = NULL;
    cks_diag d;

    rc = cli_parse_options("cache", argc, argv, table, &opts, cache_help);
    if (rc != CLI_GO_ON)
        return rc;
    rc = EXIT_OK;
    /* cli_parse_size refuses 2^64-1 itself, so UINT64_MAX still means "no --max" */
    have_max = max != UINT64_MAX;
    if (!have_max)
        max = 0;
    if (argc - optind < 1)
        return cli_usage_error("cache", "expected one action: ls, rm, du, verify, prune or clear");
    const char *action = argv[optind];
    static const char *const actions[] = {"ls", "rm", "du", "verify", "prune", "clear"};
    bool known = false;
    for (size_t i = 0; i < sizeof actions / sizeof actions[0]; i++)
        known = known || strcmp(action, actions[i]) == 0;
    if (!known) {
        const char *near = cli_nearest(action, actions, sizeof actions / sizeof actions[0]);
        if (near)
            return cli_usage_error("cache", "unknown action \"%s\" (did you mean `cache %s`?)", action, near);
        return cli_usage_error("cache", "unknown action \"%s\" (ls, rm, du, verify, prune, clear)", action);
    }
    if (strcmp(action, "rm") == 0 ? argc - optind < 2 : argc - optind != 1)
        return strcmp(action, "rm") == 0
                   ? cli_usage_error("cache", "rm needs a repository, e.g. `cache rm org/name`")
                   : cli_usage_error("cache", "%s takes no argument", action);
    cks_cache_opts co = {.dir = opts.cache_dir, .max_bytes = opts.cache_max,
                         .offline = opts.offline, .revision_ttl_seconds = -1};
    cks_err err = cks_cache_open(&co, &c, &d);
    if (err) {
        rc = cli_fail("cache", err, &d);
        goto out;
    }
    if (strcmp(action, "prune") == 0 && !have_max) {
        /* --cache-max, else $CKPTSCOPE_CACHE_MAX, else max_size in the cache's config */
        max = cks_cache_max_bytes(c);
        if (!max) {
            rc = cli_usage_error("cache", "prune needs a target: --max SIZE, --cache-max SIZE, "
                                          "CKPTSCOPE_CACHE_MAX or max_size in %s/config",
                                 cks_cache_dir(c));
            goto out;
        }
    }
    if (strcmp(action, "ls") == 0)
        rc = do_ls(c, &opts, entries);
    else if (strcmp(action, "rm") == 0)
        rc = do_rm(c, &opts, argv + optind + 1, argc - optind - 1);
    else if (strcmp(action, "du") == 0)
        rc = do_du(c, &opts);
    else if (strcmp(action, "verify") == 0)
        rc = do_verify(c, &opts, repair);
    else if (strcmp(action, "prune") == 0)
        rc = do_prune(c, &opts, max);
    else
        rc = do_clear(c, &opts);
    if (opts.verbose) {
        char **notes = NULL;
        size_t n = cks_cache_take_notes(c, &notes);
        for (size_t i = 0; i < n; i++)
            fprintf(stderr, "ckptscope: %s\n", cli_esc(notes[i]));
        cks_cache_free_notes(notes, n);
    }
out:
    cks_cache_free(c);
    return rc;
}
