/*
 * ckptscope diff A B — what changed between two checkpoints, by content as well as by name.
 *
 * Every tensor of both sides is hashed. A name on both sides is identical (same bytes,
 * dtype and shape), reshaped (same bytes, other dtype or shape) or changed. A name on one
 * side only is renamed when a tensor on the other side's only-names has the same bytes,
 * else removed (only in A) or added (only in B). Exit 0 when every tensor has a
 * byte-identical counterpart with the same dtype and shape (names may differ), else 1.
 * Files with the same server SHA-256 on both sides (two revisions of a Hub repo) are not read.
 */
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "cli_remote.h"

static const char diff_help[] =
    "usage: ckptscope diff [OPTIONS] A B\n"
    "\n"
    "Compare two checkpoints tensor by tensor, by SHA-256 of the raw bytes as well as by\n"
    "name: identical, changed, reshaped (same bytes, other shape or dtype), renamed (same\n"
    "bytes, other name), added (only in B) and removed (only in A).\n"
    "\n"
    "A and B may be two revisions of one Hub repo (org/name@rev1 org/name@refs/pr/1): files\n"
    "whose LFS SHA-256 is the same on both sides are not read at all; only the tensors of\n"
    "changed files are hashed. --json adds \"files\" (path, status, sizes, SHA-256s).\n"
    "\n"
    "Exit status: 0 when the tensor contents are identical (every tensor has a byte-identical\n"
    "counterpart with the same dtype and shape; names may differ), 1 when they differ, and\n"
    "the error codes of the README otherwise.\n"
    "\n"
    "options:\n"
    "  --tensor GLOB   only tensors whose name matches GLOB, on both sides (repeatable)\n"
    "  --all           also list identical tensors in the text output\n"
    "  --json          every category as a list of tensor names (schema in the README)\n"
    "  --quiet         no progress on stderr\n"
    "  --help          this text\n"
    "\n"
    "examples:\n"
    "  ckptscope diff base/model.safetensors finetuned/model.safetensors\n"
    "  ckptscope diff ./ckpt-a/ ./ckpt-b/ --json | jq '.changed'\n";

enum category { CAT_IDENTICAL, CAT_CHANGED, CAT_RESHAPED, CAT_RENAMED, CAT_REMOVED, CAT_ADDED, CAT__COUNT };
static const char *const category_names[CAT__COUNT] = {"identical", "changed", "reshaped",
                                                       "renamed",   "removed", "added"};

struct side {
    cks_ckpt *ckpt;
    const cks_ckpt_tensor **sel;
    size_t n;
    cks_tensor_hash *hashes;
    size_t hashed;           /* tensors actually read and hashed (not in an identical file) */
    cJSON *report;
};

struct pair {
    enum category cat;
    ssize_t a, b; /* indices into the sides' selections, -1 when absent */
};

static bool same_layout(const cks_tensor_info *x, const cks_tensor_info *y)
{
    if (x->dtype != y->dtype || x->ndim != y->ndim)
        return false;
    for (uint32_t d = 0; d < x->ndim; d++)
        if (x->shape[d] != y->shape[d])
            return false;
    return true;
}

static ssize_t find_by_name(const struct side *s, const char *name)
{
    for (size_t i = 0; i < s->n; i++)
        if (strcmp(s->sel[i]->info->name, name) == 0)
            return (ssize_t)i;
    return -1;
}

/* Pair the tensors of both sides; *pairs has room for a.n + b.n entries. */
static size_t classify(const struct side *a, const struct side *b, struct pair *pairs)
{
    size_t n = 0;
    bool *b_used = calloc(b->n ? b->n : 1, sizeof *b_used);
    bool *a_only = calloc(a->n ? a->n : 1, sizeof *a_only);
    if (!b_used || !a_only) {
        free(b_used);
        free(a_only);
        return (size_t)-1;
    }
    for (size_t i = 0; i < a->n; i++) {
        ssize_t j = find_by_name(b, a->sel[i]->info->name);
        if (j < 0) {
            a_only[i] = true;
            continue;
        }
        b_used[j] = true;
        pairs[n].a = (ssize_t)i;
        pairs[n].b = j;
        if (memcmp(a->hashes[i].sha256, b->hashes[j].sha256, 32) != 0)
            pairs[n].cat = CAT_CHANGED;
        else
            pairs[n].cat = same_layout(a->sel[i]->info, b->sel[j]->info) ? CAT_IDENTICAL : CAT_RESHAPED;
        n++;
    }
    for (size_t i = 0; i < a->n; i++) {
        ssize_t match = -1;
        if (!a_only[i])
            continue;
        /* a name only in A: the same bytes under a name only in B is a rename */
        for (size_t j = 0; j < b->n && match < 0; j++)
            if (!b_used[j] && find_by_name(a, b->sel[j]->info->name) < 0 &&
                memcmp(a->hashes[i].sha256, b->hashes[j].sha256, 32) == 0)
                match = (ssize_t)j;
        pairs[n].a = (ssize_t)i;
        pairs[n].b = match;
        pairs[n].cat = match >= 0 ? CAT_RENAMED : CAT_REMOVED;
        if (match >= 0)
            b_used[match] = true;
        n++;
    }
    for (size_t j = 0; j < b->n; j++) {
        if (b_used[j])
            continue;
        pairs[n].a = -1;
        pairs[n].b = (ssize_t)j;
        pairs[n].cat = CAT_ADDED;
        n++;
    }
    free(b_used);
    free(a_only);
    return n;
}

static cks_err load_side(const char *spec, const cli_opts *opts, char *const *globs, size_t n_globs,
                         struct side *s, cks_diag *diag)
{
    cks_err err = cli_open_checkpoint(spec, opts, &s->ckpt, opts->json ? &s->report : NULL, diag);
    if (!err)
        err = cli_select_tensors(s->ckpt, globs, n_globs, &s->sel, &s->n, diag);
    return err;
}

/* The file of the other side with the same server SHA-256 (the Hub's LFS hash), or -1. */
static ssize_t same_file(const struct side *s, size_t f, const struct side *other)
{
    const char *sha = s->ckpt->files[f].source->sha256_hex;
    if (!sha[0])
        return -1;
    for (size_t g = 0; g < other->ckpt->n_files; g++)
        if (strcmp(other->ckpt->files[g].source->sha256_hex, sha) == 0)
            return (ssize_t)g;
    return -1;
}

/*
 * Hash the selected tensors of s, except those in a file whose SHA-256 the other side also
 * has: identical files need no bytes. Their tensors get a stand-in hash made of the file's
 * SHA-256, the name and the offsets, the same on both sides, so they pair as identical
 * without a read (a real SHA-256 cannot collide with it).
 */
static cks_err hash_side(struct side *s, const struct side *other, const cli_opts *opts, const char *label,
                         cks_diag *diag)
{
    cks_err err = CKS_OK;
    const cks_ckpt_tensor **todo = calloc(s->n ? s->n : 1, sizeof *todo);
    cks_tensor_hash *got = NULL;
    size_t n_todo = 0;

    s->hashes = calloc(s->n ? s->n : 1, sizeof *s->hashes);
    if (!todo || !s->hashes) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < s->n; i++) {
        const cks_ckpt_tensor *t = s->sel[i];
        if (same_file(s, t->file, other) >= 0) {
            char key[1024];
            int len = snprintf(key, sizeof key, "same-file:%s:%s:%llu:%llu", s->ckpt->files[t->file].source->sha256_hex,
                               t->info->name, (unsigned long long)t->info->begin, (unsigned long long)t->info->end);
            s->hashes[i].tensor = t;
            cks_sha256_hex(key, len > 0 ? (size_t)len : 0, s->hashes[i].hex);
            for (int k = 0; k < 32; k++) {
                unsigned byte = 0;
                sscanf(s->hashes[i].hex + 2 * k, "%2x", &byte);
                s->hashes[i].sha256[k] = (uint8_t)byte;
            }
        } else {
            todo[n_todo++] = t;
        }
    }
    if (n_todo) {
        err = cli_refresh_partial(s->ckpt, todo, n_todo, diag);
        if (!err)
            err = cli_hash_selection(s->ckpt, todo, n_todo, opts, label, &got, diag);
        if (err)
            goto out;
        for (size_t i = 0, k = 0; i < s->n && k < n_todo; i++)
            if (s->sel[i] == todo[k])
                s->hashes[i] = got[k++];
    }
    s->hashed = n_todo;
out:
    free(todo);
    free(got);
    return err;
}

/* "files": each file of either side by path, with its server SHA-256 on both sides. */
static cJSON *files_json(const struct side *a, const struct side *b)
{
    cJSON *files = cJSON_CreateArray();
    for (int side = 0; side < 2; side++) {
        const struct side *s = side ? b : a, *o = side ? a : b;
        for (size_t f = 0; f < s->ckpt->n_files; f++) {
            const cks_ckpt_file *cf = &s->ckpt->files[f];
            const cks_ckpt_file *of = NULL;
            const char *status;
            cJSON *e;
            for (size_t g = 0; g < o->ckpt->n_files && !of; g++)
                if (strcmp(o->ckpt->files[g].path, cf->path) == 0)
                    of = &o->ckpt->files[g];
            if (side == 1 && of)
                continue; /* listed with A's file */
            e = cJSON_CreateObject();
            cJSON_AddStringToObject(e, "path", cf->path);
            if (!of)
                status = side ? "added" : "removed";
            else if (cf->source->sha256_hex[0] && of->source->sha256_hex[0])
                status = strcmp(cf->source->sha256_hex, of->source->sha256_hex) == 0 ? "identical" : "changed";
            else
                status = "unverified"; /* no server hash: the tensors were hashed instead */
            cJSON_AddStringToObject(e, "status", status);
            if (side == 0 || !of) {
                const cks_ckpt_file *fa = side ? NULL : cf, *fb = side ? cf : of;
                if (fa) {
                    cJSON_AddNumberToObject(e, "size_a", (double)fa->source->size);
                    cJSON_AddStringToObject(e, "sha256_a", fa->source->sha256_hex);
                }
                if (fb) {
                    cJSON_AddNumberToObject(e, "size_b", (double)fb->source->size);
                    cJSON_AddStringToObject(e, "sha256_b", fb->source->sha256_hex);
                }
            }
            cJSON_AddBoolToObject(e, "bytes_read", !(cf->source->sha256_hex[0] && same_file(s, f, o) >= 0));
            cJSON_AddItemToArray(files, e);
        }
    }
    return files;
}

static void free_side(struct side *s)
{
    free(s->hashes);
    free((void *)s->sel);
    cks_ckpt_free(s->ckpt);
    cJSON_Delete(s->report);
}

static void print_text(const struct side *a, const struct side *b, const struct pair *pairs, size_t n,
                       const size_t counts[CAT__COUNT], bool all)
{
    char sa[128], sb[128];
    for (size_t k = 0; k < n; k++) {
        const struct pair *p = &pairs[k];
        const cks_tensor_info *ia = p->a >= 0 ? a->sel[p->a]->info : NULL;
        const cks_tensor_info *ib = p->b >= 0 ? b->sel[p->b]->info : NULL;
        switch (p->cat) {
        case CAT_IDENTICAL:
            if (all)
                printf("  identical  %s\n", cli_esc(ia->name));
            break;
        case CAT_CHANGED:
            printf("  changed    %s\n", cli_esc(ia->name));
            break;
        case CAT_RESHAPED:
            printf("  reshaped   %s  %s %s -> %s %s\n", cli_esc(ia->name), cks_dtype_name(ia->dtype),
                   cli_shape_text(ia, sa, sizeof sa), cks_dtype_name(ib->dtype), cli_shape_text(ib, sb, sizeof sb));
            break;
        case CAT_RENAMED:
            printf("  renamed    %s -> %s\n", cli_esc(ia->name), cli_esc(ib->name));
            break;
        case CAT_REMOVED:
            printf("  removed    %s\n", cli_esc(ia->name));
            break;
        case CAT_ADDED:
            printf("  added      %s\n", cli_esc(ib->name));
            break;
        default:
            break;
        }
    }
    printf("%zu identical, %zu changed, %zu reshaped, %zu renamed, %zu removed, %zu added\n", counts[CAT_IDENTICAL],
           counts[CAT_CHANGED], counts[CAT_RESHAPED], counts[CAT_RENAMED], counts[CAT_REMOVED], counts[CAT_ADDED]);
}

static void print_json(struct side *a, struct side *b, const struct pair *pairs, size_t n,
                       const size_t counts[CAT__COUNT], bool same, cJSON *files)
{
    cJSON *root = cli_json_new("diff");
    cJSON *lists[CAT__COUNT], *summary;
    cJSON_AddItemToObject(root, "a", a->report);
    cJSON_AddItemToObject(root, "b", b->report);
    a->report = b->report = NULL;
    cJSON_AddBoolToObject(root, "same_contents", same);
    summary = cJSON_AddObjectToObject(root, "counts");
    for (int c = 0; c < CAT__COUNT; c++) {
        cJSON_AddNumberToObject(summary, category_names[c], (double)counts[c]);
        lists[c] = cJSON_AddArrayToObject(root, category_names[c]);
    }
    for (size_t k = 0; k < n; k++) {
        const struct pair *p = &pairs[k];
        const cks_tensor_info *ia = p->a >= 0 ? a->sel[p->a]->info : NULL;
        const cks_tensor_info *ib = p->b >= 0 ? b->sel[p->b]->info : NULL;
        cJSON *item;
        switch (p->cat) {
        case CAT_RENAMED:
            item = cJSON_CreateObject();
            cJSON_AddStringToObject(item, "from", ia->name);
            cJSON_AddStringToObject(item, "to", ib->name);
            cJSON_AddStringToObject(item, "sha256", a->hashes[p->a].hex);
            break;
        case CAT_RESHAPED:
            item = cJSON_CreateObject();
            cJSON_AddStringToObject(item, "name", ia->name);
            cJSON_AddStringToObject(item, "dtype_a", cks_dtype_name(ia->dtype));
            cJSON_AddItemToObject(item, "shape_a", cli_json_shape(ia));
            cJSON_AddStringToObject(item, "dtype_b", cks_dtype_name(ib->dtype));
            cJSON_AddItemToObject(item, "shape_b", cli_json_shape(ib));
            break;
        default:
            item = cJSON_CreateString(ia ? ia->name : ib->name);
            break;
        }
        cJSON_AddItemToArray(lists[p->cat], item);
    }
    cJSON_AddItemToObject(root, "files", files);
    cJSON_AddNumberToObject(root, "tensors_hashed_a", (double)a->hashed);
    cJSON_AddNumberToObject(root, "tensors_hashed_b", (double)b->hashed);
    cli_json_print(root);
}

int cmd_diff(int argc, char **argv)
{
    static const struct option longopts[] = {{"tensor", required_argument, NULL, 't'},
                                             {"all", no_argument, NULL, 'a'},
                                             CLI_COMMON_LONGOPTS,
                                             {0}};
    cli_opts opts = {0};
    char *globs[CLI_MAX_GLOBS];
    size_t n_globs = 0, n_pairs, counts[CAT__COUNT] = {0};
    bool all = false, same;
    int opt, rc = EXIT_OK;
    struct side a = {0}, b = {0};
    struct pair *pairs = NULL;
    cks_diag diag;
    cks_err err;

    optind = 1;
    while ((opt = getopt_long(argc, argv, "t:ah", longopts, NULL)) != -1) {
        int common = cli_common_option(opt, optarg, &opts);
        if (common < 0)
            return EXIT_USAGE;
        if (common > 0)
            continue;
        if (opt == 't') {
            if (!cli_add_glob("diff", globs, &n_globs, optarg))
                return EXIT_USAGE;
        } else if (opt == 'a') {
            all = true;
        } else if (opt == OPT_HELP || opt == 'h') {
            fputs(diff_help, stdout);
            return EXIT_OK;
        } else {
            return cli_usage_error("diff", "unknown option");
        }
    }
    if (argc - optind != 2)
        return cli_usage_error("diff", "expected two SOURCEs, A and B");

    err = load_side(argv[optind], &opts, globs, n_globs, &a, &diag);
    if (!err)
        err = load_side(argv[optind + 1], &opts, globs, n_globs, &b, &diag);
    /* headers first, then only the tensors of files whose SHA-256 differs get read */
    if (!err)
        err = hash_side(&a, &b, &opts, "hashing A", &diag);
    if (!err)
        err = hash_side(&b, &a, &opts, "hashing B", &diag);
    if (err) {
        rc = cli_fail("diff", err, &diag);
        if (err == CKS_ERR_OFFLINE_MISS) {
            cli_explain_offline(a.ckpt, a.sel, a.n);
            cli_explain_offline(b.ckpt, b.sel, b.n);
        }
        goto out;
    }
    pairs = calloc(a.n + b.n + 1, sizeof *pairs);
    if (!pairs || (n_pairs = classify(&a, &b, pairs)) == (size_t)-1) {
        rc = cli_fail("diff", CKS_ERR_NOMEM, NULL);
        goto out;
    }
    for (size_t k = 0; k < n_pairs; k++)
        counts[pairs[k].cat]++;
    same = counts[CAT_CHANGED] == 0 && counts[CAT_RESHAPED] == 0 && counts[CAT_REMOVED] == 0 &&
           counts[CAT_ADDED] == 0;
    if (opts.json)
        print_json(&a, &b, pairs, n_pairs, counts, same, files_json(&a, &b));
    else
        print_text(&a, &b, pairs, n_pairs, counts, all);
    cli_note_unverified("diff", a.ckpt, NULL);
    cli_note_unverified("diff", b.ckpt, NULL);
    rc = same ? EXIT_OK : EXIT_DIFFERENT;
out:
    free(pairs);
    free_side(&a);
    free_side(&b);
    return rc;
}
