/* ckptscope fetch SOURCE [--tensor GLOB]... [-o FILE] — pull chosen tensors, nothing else. */
#include <errno.h>
#include <inttypes.h>
#include <openssl/evp.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "cli_remote.h"

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

/* Tensors are fetched in batches of about this many bytes: big enough to keep many
 * requests in flight, small enough that memory does not grow with the model. */
#define BATCH_BYTES (64u * 1024u * 1024u)
#define READ_CHUNK (8u * 1024u * 1024u)

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

/* The safetensors header of the output: same dtypes and shapes, new offsets. */
static char *output_header(const cks_ckpt_tensor *const *sel, size_t n, const char *source,
                           size_t *len)
{
    cJSON *h = cJSON_CreateObject();
    cJSON *meta = cJSON_AddObjectToObject(h, "__metadata__");
    uint64_t off = 0;
    char *text, *out = NULL;
    cJSON_AddStringToObject(meta, "ckptscope_source", source);
    for (size_t i = 0; i < n; i++) {
        const cks_tensor_info *t = sel[i]->info;
        cJSON *e = cJSON_AddObjectToObject(h, t->name);
        cJSON *offs;
        uint64_t sz = t->end - t->begin;
        cJSON_AddStringToObject(e, "dtype", cks_dtype_name(t->dtype));
        cJSON_AddItemToObject(e, "shape", cli_json_shape(t));
        offs = cJSON_AddArrayToObject(e, "data_offsets");
        cJSON_AddItemToArray(offs, cJSON_CreateNumber((double)off));
        cJSON_AddItemToArray(offs, cJSON_CreateNumber((double)(off + sz)));
        off += sz;
    }
    text = cJSON_PrintUnformatted(h);
    cJSON_Delete(h);
    if (!text)
        return NULL;
    /* pad with spaces to a multiple of 8 so the data section stays aligned */
    size_t n0 = strlen(text), padded = (n0 + 7) & ~(size_t)7;
    out = malloc(8 + padded);
    if (out) {
        uint64_t hl = padded;
        for (int b = 0; b < 8; b++)
            out[b] = (char)((hl >> (8 * b)) & 0xff);
        memcpy(out + 8, text, n0);
        memset(out + 8 + n0, ' ', padded - n0);
        *len = 8 + padded;
    }
    free(text);
    return out;
}

static bool write_all(FILE *f, const void *p, size_t n)
{
    return n == 0 || fwrite(p, 1, n, f) == n;
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
    char *tmp_path = NULL, *hdr = NULL;
    int rc = EXIT_OK;
    cks_ckpt *ckpt = NULL;
    cJSON *source_report = NULL, *root = NULL, *jt = NULL;
    const cks_ckpt_tensor **sel = NULL;
    size_t n_sel = 0, hdr_len = 0;
    cks_hub_spec spec = {0};
    cks_remote *rem = NULL;
    cks_range *ranges = NULL;
    cks_source **srcs = NULL;
    uint8_t *buf = NULL;
    FILE *out = NULL;
    EVP_MD_CTX *md = NULL;
    uint64_t total = 0, all_bytes = 0;
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
    /* fetch in file order: neighbours coalesce and each shard streams front to back */
    ranges = calloc(n_sel ? n_sel : 1, sizeof *ranges);
    srcs = calloc(n_sel ? n_sel : 1, sizeof *srcs);
    buf = malloc(READ_CHUNK);
    md = EVP_MD_CTX_new();
    if (!ranges || !srcs || !buf || !md) {
        err = cks_fail(&diag, CKS_ERR_NOMEM, "out of memory");
        goto fail;
    }
    if (output) {
        hdr = output_header(sel, n_sel, argv[optind], &hdr_len);
        if (asprintf(&tmp_path, "%s.tmp-%ld", output, (long)getpid()) < 0)
            tmp_path = NULL;
        if (!hdr || !tmp_path) {
            err = cks_fail(&diag, CKS_ERR_NOMEM, "out of memory");
            goto fail;
        }
        out = fopen(tmp_path, "wb");
        if (!out || !write_all(out, hdr, hdr_len)) {
            err = cks_fail(&diag, CKS_ERR_IO, "cannot write '%s': %s", tmp_path, strerror(errno));
            goto fail;
        }
    }
    for (size_t k = 0; k < n_sel; k++)
        all_bytes += sel[k]->info->end - sel[k]->info->begin;
    cli_progress_init(&progress, &opts, "fetching");
    progress.total = all_bytes;
    root = cli_json_new("fetch");
    if (source_report) {
        cJSON_AddItemToObject(root, "source", source_report);
        source_report = NULL;
    }
    jt = cJSON_AddArrayToObject(root, "tensors");

    /* a file whose every tensor is fetched is read whole: checked first (cks_hash_tensors
     * does the same), so a damaged copy never gives its hashes as the file's */
    for (size_t f = 0; f < ckpt->n_files && !err; f++) {
        size_t picked = 0, present = 0;
        for (size_t k = 0; k < n_sel; k++)
            picked += sel[k]->file == f;
        for (size_t k = 0; k < ckpt->n_tensors; k++)
            present += ckpt->tensors[k].file == f;
        if (picked && picked == present)
            err = cks_source_check_whole(ckpt->files[f].source, &diag);
    }
    if (!err)
        err = cli_refresh_partial(ckpt, sel, n_sel, &diag);
    if (err)
        goto fail;

    size_t i = 0;
    while (i < n_sel) {
        /* one batch: prefetch all its small tensors at once, then read them in order */
        size_t j = i, m = 0;
        uint64_t batch = 0;
        while (j < n_sel) {
            uint64_t sz = sel[j]->info->end - sel[j]->info->begin;
            if (j > i && batch + sz > BATCH_BYTES)
                break;
            batch += sz;
            if (sz <= BATCH_BYTES) {
                /* larger tensors stream through read-ahead instead */
                srcs[m] = ckpt->files[sel[j]->file].source;
                ranges[m].offset = sel[j]->info->file_offset;
                ranges[m].length = sz;
                m++;
            }
            j++;
        }
        if (rem)
            err = cks_remote_prefetch(rem, srcs, ranges, m, &diag);
        if (err)
            goto fail;
        for (; i < j; i++) {
            const cks_tensor_info *t = sel[i]->info;
            uint64_t sz = t->end - t->begin;
            unsigned char d[EVP_MAX_MD_SIZE];
            unsigned dl = 0;
            char hex[65];
            EVP_DigestInit_ex(md, EVP_sha256(), NULL);
            for (uint64_t done = 0; done < sz;) {
                size_t n = sz - done < READ_CHUNK ? (size_t)(sz - done) : READ_CHUNK;
                err = cks_ckpt_read_tensor(ckpt, sel[i], done, buf, n, &diag);
                if (err)
                    goto fail;
                EVP_DigestUpdate(md, buf, n);
                cli_progress_update(&progress, total + done + n, all_bytes);
                if (out && !write_all(out, buf, n)) {
                    err = cks_fail(&diag, CKS_ERR_IO, "cannot write '%s': %s", tmp_path,
                                   strerror(errno));
                    goto fail;
                }
                done += n;
            }
            EVP_DigestFinal_ex(md, d, &dl);
            cks_hex_encode(d, 32, hex);
            total += sz;
            if (opts.json) {
                cJSON *e = cJSON_CreateObject();
                cJSON_AddStringToObject(e, "name", t->name);
                cJSON_AddStringToObject(e, "dtype", cks_dtype_name(t->dtype));
                cJSON_AddItemToObject(e, "shape", cli_json_shape(t));
                cJSON_AddStringToObject(e, "file", ckpt->files[sel[i]->file].path);
                cJSON_AddNumberToObject(e, "bytes", (double)sz);
                cJSON_AddStringToObject(e, "sha256", hex);
                cJSON_AddItemToArray(jt, e);
            } else {
                /* the hashes are the answer; --quiet only quiets stderr */
                printf("%s  %s\n", hex, cli_esc(t->name));
            }
        }
    }
    if (out) {
        if (fflush(out) != 0 || fsync(fileno(out)) != 0 || fclose(out) != 0) {
            out = NULL;
            err = cks_fail(&diag, CKS_ERR_IO, "cannot write '%s': %s", tmp_path, strerror(errno));
            goto fail;
        }
        out = NULL;
        if (rename(tmp_path, output) != 0) {
            err = cks_fail(&diag, CKS_ERR_IO, "cannot rename to '%s': %s", output, strerror(errno));
            goto fail;
        }
        free(tmp_path);
        tmp_path = NULL;
    }
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
    if (out)
        fclose(out);
    if (tmp_path) {
        unlink(tmp_path);
        free(tmp_path);
    }
    cJSON_Delete(root);
    cJSON_Delete(source_report);
    EVP_MD_CTX_free(md);
    free(hdr);
    free(buf);
    free(ranges);
    free(srcs);
    free(sel);
    free(g.v);
    free(g.from_file);
    cks_ckpt_free(ckpt);
    cks_hub_spec_release(&spec);
    /* rem belongs to the session registry (freed at exit, after the transfer report) */
    return rc;
}
