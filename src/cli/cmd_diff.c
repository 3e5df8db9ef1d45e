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
#include <unistd.h>

#include "ckptscope/cache.h"
#include "ckptscope/fetch.h"
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
    "The first line is the answer (\"same contents: yes; 57 renamed (prefix `backbone.` added)\"),\n"
    "then one line per tensor that is not identical, the counts, and how many bytes were read.\n"
    "Hashing reads every selected tensor: before fetching more than --ask-above over the\n"
    "network (two unrelated repos share no file), diff asks; when stdin is not a terminal it\n"
    "refuses instead, unless --yes.\n"
    "\n"
    "Exit status: 0 when the tensor contents are identical (every tensor has a byte-identical\n"
    "counterpart with the same dtype and shape; names may differ), 1 when they differ, and\n"
    "the error codes of the README otherwise. A --tensor pattern that selects nothing on\n"
    "either side is an error (exit 6), never \"identical\".\n"
    "\n"
    "options:\n"
    "  --tensor GLOB     only tensors whose name matches GLOB, on both sides (repeatable)\n"
    "  --stat            the summary and a count (and bytes) per category, no tensor list\n"
    "  --all             also list identical tensors in the text output\n"
    "  --yes             do not ask before a large read\n"
    "  --ask-above SIZE  ask before fetching more than SIZE over the network (default 4G)\n"
    "  --json            every category as a list of tensor names (docs/json.md)\n"
    "  --quiet           no progress on stderr\n"
    "  --help            this text\n"
    "\n"
    "examples:\n"
    "  ckptscope diff base/model.safetensors finetuned/model.safetensors\n"
    "  ckptscope diff org/model@main org/model@refs/pr/3 --stat\n"
    "  ckptscope diff ./ckpt-a/ ./ckpt-b/ --json | jq '.changed'\n";

/* Hashing two unrelated 70B checkpoints fetches ~280 GB; below this it takes minutes at most. */
#define DEFAULT_ASK_ABOVE (4ull << 30)

enum category { CAT_IDENTICAL, CAT_CHANGED, CAT_RESHAPED, CAT_RENAMED, CAT_REMOVED, CAT_ADDED, CAT__COUNT };
static const char *const category_names[CAT__COUNT] = {"identical", "changed", "reshaped",
                                                       "renamed",   "removed", "added"};

struct side {
    cks_ckpt *ckpt;
    const cks_ckpt_tensor **sel;
    size_t n;
    cks_tensor_hash *hashes;
    const cks_ckpt_tensor **todo; /* the tensors to read and hash (not in an identical file) */
    size_t hashed;
    uint64_t *file_bytes;    /* per file: bytes read (header, and the tensors hashed) */
    uint64_t bytes_read;
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
 * Which selected tensors of s must be read: all but those in a file whose SHA-256 the other
 * side also has (identical files need no bytes). Those get a stand-in hash made of the file's
 * SHA-256, the name and the offsets, the same on both sides, so they pair as identical without
 * a read (a real SHA-256 cannot collide with it). Headers are always read.
 */
static cks_err plan_side(struct side *s, const struct side *other, cks_diag *diag)
{
    cks_err err = CKS_OK;
    s->todo = calloc(s->n ? s->n : 1, sizeof *s->todo);
    s->hashes = calloc(s->n ? s->n : 1, sizeof *s->hashes);
    s->file_bytes = calloc(s->ckpt->n_files ? s->ckpt->n_files : 1, sizeof *s->file_bytes);
    if (!s->todo || !s->hashes || !s->file_bytes) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "out of memory");
        goto out;
    }
    for (size_t f = 0; f < s->ckpt->n_files; f++) {
        s->file_bytes[f] = 8 + s->ckpt->files[f].header->header_len;
        s->bytes_read += s->file_bytes[f];
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
            s->todo[s->hashed++] = t;
            s->file_bytes[t->file] += t->info->end - t->info->begin;
            s->bytes_read += t->info->end - t->info->begin;
        }
    }
out:
    return err;
}

static cks_err hash_planned(struct side *s, const cli_opts *opts, const char *label, cks_diag *diag)
{
    cks_err err = CKS_OK;
    cks_tensor_hash *got = NULL;
    if (!s->hashed)
        goto out;
    err = cks_refresh_partial(s->ckpt, s->todo, s->hashed, diag);
    if (!err)
        err = cli_hash_selection(s->ckpt, s->todo, s->hashed, opts, label, &got, diag);
    if (err)
        goto out;
    for (size_t i = 0, k = 0; i < s->n && k < s->hashed; i++)
        if (s->sel[i] == s->todo[k])
            s->hashes[i] = got[k++];
out:
    free(got);
    return err;
}

/* Bytes of the planned reads that would come over the network: remote files only, less
 * what the cache already holds. */
static uint64_t network_bytes(const struct side *s, const cli_opts *opts)
{
    uint64_t total = 0;
    cks_cache *cache = cli_remote_cache(opts);
    for (size_t i = 0; i < s->hashed; i++) {
        const cks_ckpt_tensor *t = s->todo[i];
        const cks_source *src = s->ckpt->files[t->file].source;
        uint64_t size = t->info->end - t->info->begin;
        bool verified = false;
        char key[80];
        cks_range want = {t->info->file_offset, size}, *missing = NULL;
        size_t n_missing = 0;
        cks_diag d;
        if (!cks_remote_source_verified(src, &verified) || cks_cache_source_is(src))
            continue; /* local, the Hugging Face cache, or whole in our cache */
        if (!cache || !src->sha256_hex[0]) {
            total += size;
            continue;
        }
        snprintf(key, sizeof key, "sha256:%s", src->sha256_hex);
        if (cks_cache_missing(cache, key, &want, 1, &missing, &n_missing, &d) != CKS_OK) {
            total += size;
            continue;
        }
        for (size_t m = 0; m < n_missing; m++)
            total += missing[m].length;
        free(missing);
    }
    return total;
}

/* Ask before a large read: on a terminal, the user answers; otherwise refuse unless --yes. */
static bool confirm_read(uint64_t a, uint64_t b, uint64_t ask_above, bool yes)
{
    char ha[32], hb[32], ht[32], answer[16];
    if (yes || a + b <= ask_above)
        return true;
    cli_human_bytes(a, ha, sizeof ha);
    cli_human_bytes(b, hb, sizeof hb);
    cli_human_bytes(a + b, ht, sizeof ht);
    if (!isatty(STDIN_FILENO)) {
        cli_usage_error("diff",
                        "hashing every selected tensor would fetch %s over the network (A %s, B %s: no file is the "
                        "same on both sides); pass --yes to go ahead, or narrow it with --tensor (diff asks only "
                        "when stdin is a terminal)",
                        ht, ha, hb);
        return false;
    }
    cli_progress_clear();
    fprintf(stderr,
            "ckptscope diff: hashing every selected tensor fetches %s over the network (A %s, B %s: no file is the "
            "same on both sides). Continue? [y/N] ",
            ht, ha, hb);
    fflush(stderr);
    if (!fgets(answer, sizeof answer, stdin) || (answer[0] != 'y' && answer[0] != 'Y')) {
        fprintf(stderr, "ckptscope diff: not read (--yes skips this question; --tensor narrows the read)\n");
        cli_json_error("Cancelled", "the user declined a large read", EXIT_USAGE);
        return false;
    }
    return true;
}

/* "files": each file of either side by path, with its server SHA-256 on both sides and the
 * bytes read from it (both sides together; headers always, tensors unless the file is the same
 * on both sides). */
static cJSON *files_json(const struct side *a, const struct side *b)
{
    cJSON *files = cJSON_CreateArray();
    for (int side = 0; side < 2; side++) {
        const struct side *s = side ? b : a, *o = side ? a : b;
        for (size_t f = 0; f < s->ckpt->n_files; f++) {
            const cks_ckpt_file *cf = &s->ckpt->files[f];
            const cks_ckpt_file *of = NULL;
            size_t of_index = 0;
            const char *status;
            uint64_t bytes = s->file_bytes[f];
            cJSON *e;
            for (size_t g = 0; g < o->ckpt->n_files && !of; g++)
                if (strcmp(o->ckpt->files[g].path, cf->path) == 0) {
                    of = &o->ckpt->files[g];
                    of_index = g;
                }
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
            if (of)
                bytes += o->file_bytes[of_index];
            cJSON_AddNumberToObject(e, "bytes_read", (double)bytes);
            cJSON_AddBoolToObject(e, "tensors_read", !(cf->source->sha256_hex[0] && same_file(s, f, o) >= 0));
            cJSON_AddItemToArray(files, e);
        }
    }
    return files;
}

static void free_side(struct side *s)
{
    free(s->hashes);
    free((void *)s->todo);
    free(s->file_bytes);
    free((void *)s->sel);
    cks_ckpt_free(s->ckpt);
    cJSON_Delete(s->report);
}

/* What most renames have in common: the part of the name that changed once the longest
 * common suffix (or, failing that, prefix) is set aside. "model.x" -> "backbone.model.x" is
 * the prefix "backbone." added. *share is how many renames it explains. */
struct rename_rule {
    char from[96], to[96];
    bool prefix; /* else a suffix */
    size_t share;
};

static void rename_edit(const char *a, const char *b, bool prefix, char *from, char *to, size_t cap)
{
    size_t la = strlen(a), lb = strlen(b), k = 0;
    if (prefix) { /* strip the common suffix: what differs is at the front */
        while (k < la && k < lb && a[la - 1 - k] == b[lb - 1 - k])
            k++;
        snprintf(from, cap, "%.*s", (int)(la - k), a);
        snprintf(to, cap, "%.*s", (int)(lb - k), b);
    } else {
        while (k < la && k < lb && a[k] == b[k])
            k++;
        snprintf(from, cap, "%s", a + k);
        snprintf(to, cap, "%s", b + k);
    }
}

static bool common_rename(const struct side *a, const struct side *b, const struct pair *pairs, size_t n,
                          struct rename_rule *best)
{
    size_t renames = 0;
    memset(best, 0, sizeof *best);
    for (int prefix = 1; prefix >= 0; prefix--) {
        /* the candidate rule is the first rename's; count how many others follow it */
        struct rename_rule rule = {.prefix = prefix};
        bool have = false;
        renames = 0;
        for (size_t k = 0; k < n; k++) {
            char from[96], to[96];
            if (pairs[k].cat != CAT_RENAMED)
                continue;
            renames++;
            rename_edit(a->sel[pairs[k].a]->info->name, b->sel[pairs[k].b]->info->name, prefix, from, to,
                        sizeof from);
            if (!have) {
                snprintf(rule.from, sizeof rule.from, "%s", from);
                snprintf(rule.to, sizeof rule.to, "%s", to);
                have = true;
            }
            rule.share += strcmp(from, rule.from) == 0 && strcmp(to, rule.to) == 0;
        }
        if (have && rule.share > best->share)
            *best = rule;
    }
    /* a pattern needs at least two renames, and must explain most of them */
    return best->share >= 2 && 2 * best->share > renames;
}

/* "same contents: yes; 57 renamed (prefix `backbone.` added)" */
static void summary_line(const struct side *a, const struct side *b, const struct pair *pairs, size_t n,
                         const size_t counts[CAT__COUNT], bool same, char *out, size_t cap)
{
    static const enum category order[] = {CAT_CHANGED, CAT_RESHAPED, CAT_REMOVED, CAT_ADDED, CAT_RENAMED};
    size_t at = (size_t)snprintf(out, cap, "same contents: %s", same ? "yes" : "no");
    bool first = true;
    struct rename_rule rule;
    for (size_t i = 0; i < sizeof order / sizeof order[0] && at < cap; i++) {
        if (!counts[order[i]])
            continue;
        at += (size_t)snprintf(out + at, cap - at, "%s%zu %s", first ? "; " : ", ", counts[order[i]],
                               category_names[order[i]]);
        first = false;
    }
    if (counts[CAT_RENAMED] && at < cap && common_rename(a, b, pairs, n, &rule)) {
        const char *part = rule.prefix ? "prefix" : "suffix";
        const char *of = rule.share == counts[CAT_RENAMED] ? "" : " in most";
        if (!rule.from[0])
            at += (size_t)snprintf(out + at, cap - at, " (%s `%s` added%s)", part, rule.to, of);
        else if (!rule.to[0])
            at += (size_t)snprintf(out + at, cap - at, " (%s `%s` removed%s)", part, rule.from, of);
        else
            at += (size_t)snprintf(out + at, cap - at, " (%s `%s` -> `%s`%s)", part, rule.from, rule.to, of);
    }
    if (first && at < cap)
        snprintf(out + at, cap - at, "; %zu identical", counts[CAT_IDENTICAL]);
}

/* "read 1.2 GiB of A and 1.2 GiB of B (headers, and 120 + 120 tensors hashed)" */
static void read_line(const struct side *a, const struct side *b, char *out, size_t cap)
{
    char ha[32], hb[32];
    size_t skipped = 0, at;
    for (size_t f = 0; f < a->ckpt->n_files; f++)
        skipped += a->ckpt->files[f].source->sha256_hex[0] && same_file(a, f, b) >= 0;
    at = (size_t)snprintf(out, cap, "read %s of A and %s of B (headers, and %zu + %zu tensors hashed)",
                          cli_human_bytes(a->bytes_read, ha, sizeof ha), cli_human_bytes(b->bytes_read, hb, sizeof hb),
                          a->hashed, b->hashed);
    if (skipped && at < cap)
        snprintf(out + at, cap - at, "; %zu file%s with the same SHA-256 on both sides %s not read", skipped,
                 skipped == 1 ? "" : "s", skipped == 1 ? "was" : "were");
}

static void print_text(const struct side *a, const struct side *b, const struct pair *pairs, size_t n,
                       const size_t counts[CAT__COUNT], bool same, bool all, bool stat)
{
    char sa[128], sb[128], line[1024];
    summary_line(a, b, pairs, n, counts, same, line, sizeof line);
    printf("%s\n", line);
    if (stat) {
        uint64_t bytes[CAT__COUNT] = {0};
        for (size_t k = 0; k < n; k++) {
            const cks_tensor_info *t = pairs[k].a >= 0 ? a->sel[pairs[k].a]->info : b->sel[pairs[k].b]->info;
            bytes[pairs[k].cat] += t->end - t->begin;
        }
        for (int c = 0; c < CAT__COUNT; c++)
            printf("  %-10s %8zu tensor%s  %10s\n", category_names[c], counts[c], counts[c] == 1 ? " " : "s",
                   cli_human_bytes(bytes[c], sa, sizeof sa));
    } else {
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
    read_line(a, b, line, sizeof line);
    printf("%s\n", line);
}

static void print_json(struct side *a, struct side *b, const struct pair *pairs, size_t n,
                       const size_t counts[CAT__COUNT], bool same, cJSON *files)
{
    cJSON *root = cli_json_new("diff");
    cJSON *lists[CAT__COUNT], *summary, *sources;
    char line[1024];
    summary_line(a, b, pairs, n, counts, same, line, sizeof line);
    sources = cJSON_AddObjectToObject(root, "sources");
    cJSON_AddNumberToObject(a->report, "bytes_read", (double)a->bytes_read);
    cJSON_AddNumberToObject(b->report, "bytes_read", (double)b->bytes_read);
    cJSON_AddItemToObject(sources, "a", a->report);
    cJSON_AddItemToObject(sources, "b", b->report);
    a->report = b->report = NULL;
    cJSON_AddBoolToObject(root, "same_contents", same);
    cJSON_AddStringToObject(root, "summary", line);
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
    cJSON_AddNumberToObject(root, "bytes_read", (double)(a->bytes_read + b->bytes_read));
    cli_json_print(root);
}

int cmd_diff(int argc, char **argv)
{
    cli_opts opts = {0};
    char *globs[CLI_MAX_GLOBS];
    size_t n_globs = 0, n_pairs, counts[CAT__COUNT] = {0};
    bool all = false, same, stat = false, yes = false;
    uint64_t ask_above = DEFAULT_ASK_ABOVE;
    cli_list tensor_list = {(const char **)globs, 0, CLI_MAX_GLOBS, "patterns"};
    const cli_option table[] = {{.name = "tensor", .short_name = 't', .kind = CLI_LIST, .dest = &tensor_list},
                                {.name = "all", .short_name = 'a', .kind = CLI_FLAG, .dest = &all},
                                {.name = "stat", .kind = CLI_FLAG, .dest = &stat},
                                {.name = "yes", .kind = CLI_FLAG, .dest = &yes},
                                {.name = "ask-above", .kind = CLI_SIZE, CLI_DEST(ask_above), .what = "4G or 500M"},
                                {.kind = CLI_END}};
    int rc = EXIT_OK;
    struct side a = {0}, b = {0};
    struct pair *pairs = NULL;
    cks_diag diag;
    cks_err err;

    rc = cli_parse_options("diff", argc, argv, table, &opts, diff_help);
    if (rc != CLI_GO_ON)
        return rc;
    rc = EXIT_OK;
    n_globs = tensor_list.n;
    if (argc - optind != 2)
        return cli_usage_error("diff", "expected two SOURCEs, A and B");

    err = load_side(argv[optind], &opts, globs, n_globs, &a, &diag);
    if (!err)
        err = load_side(argv[optind + 1], &opts, globs, n_globs, &b, &diag);
    if (!err) {
        const cks_ckpt *both[2] = {a.ckpt, b.ckpt};
        err = cli_check_globs(both, 2, globs, n_globs, &diag);
    }
    if (!err && a.n == 0 && b.n == 0) /* two empty sets are not "the same contents" */
        err = cks_fail(&diag, CKS_ERR_NOT_FOUND, "neither checkpoint holds a tensor: nothing to compare");
    /* headers first, then only the tensors of files whose SHA-256 differs get read */
    if (!err)
        err = plan_side(&a, &b, &diag);
    if (!err)
        err = plan_side(&b, &a, &diag);
    if (err) {
        rc = cli_fail("diff", err, &diag);
        goto out;
    }
    if (!confirm_read(network_bytes(&a, &opts), network_bytes(&b, &opts), ask_above, yes)) {
        rc = EXIT_USAGE;
        goto out;
    }
    err = hash_planned(&a, &opts, "hashing A", &diag);
    if (!err)
        err = hash_planned(&b, &opts, "hashing B", &diag);
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
           counts[CAT_ADDED] == 0 && n_pairs > 0;
    if (opts.json)
        print_json(&a, &b, pairs, n_pairs, counts, same, files_json(&a, &b));
    else
        print_text(&a, &b, pairs, n_pairs, counts, same, all, stat);
    cli_note_unverified("diff", a.ckpt, NULL);
    cli_note_unverified("diff", b.ckpt, NULL);
    rc = same ? EXIT_OK : EXIT_DIFFERENT;
out:
    free(pairs);
    free_side(&a);
    free_side(&b);
    return rc;
}
