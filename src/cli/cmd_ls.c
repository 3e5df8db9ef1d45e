/* ckptscope ls SOURCE — tensors, totals by dtype, metadata. Reads headers only. */
#include <stdlib.h>
#include <string.h>

#include "cli.h"

static const char ls_help[] =
    "usage: ckptscope ls [OPTIONS] SOURCE\n"
    "\n"
    "List the tensors of a checkpoint: name, dtype, shape, parameters, bytes and the file\n"
    "that holds each one, then totals by dtype and the __metadata__ of each file. Only the\n"
    "headers are read (and the index of a sharded checkpoint), never the weights.\n"
    "\n"
    "SOURCE  a .safetensors file, a model.safetensors.index.json, or a directory\n"
    "\n"
    "options:\n"
    "  --tensor GLOB   only tensors whose name matches GLOB (repeatable)\n"
    "  --json          machine-readable output (docs/json.md)\n"
    "  --quiet         no progress on stderr\n"
    "  --help          this text\n"
    "\n"
    "examples:\n"
    "  ckptscope ls model.safetensors\n"
    "  ckptscope ls ./Llama-3-8B/ --tensor '*layers.0.*'\n"
    "  ckptscope ls model.safetensors.index.json --json | jq '.totals'\n";

struct dtype_total {
    uint64_t tensors, parameters, bytes;
};

int cmd_ls(int argc, char **argv)
{
    cli_opts opts = {0};
    char *globs[CLI_MAX_GLOBS];
    cli_list tensor_list = {(const char **)globs, 0, CLI_MAX_GLOBS, "patterns"};
    const cli_option table[] = {{.name = "tensor", .short_name = 't', .kind = CLI_LIST, .dest = &tensor_list}, {.kind = CLI_END}};
    size_t n_globs = 0, n_sel = 0;
    int rc = EXIT_OK;
    cks_ckpt *ckpt = NULL;
    cJSON *source_report = NULL;
    const cks_ckpt_tensor **sel = NULL;
    struct dtype_total totals[CKS_DTYPE__COUNT] = {{0}};
    uint64_t all_params = 0, all_bytes = 0;
    cks_diag diag;
    cks_err err;

    rc = cli_parse_options("ls", argc, argv, table, &opts, ls_help);
    if (rc != CLI_GO_ON)
        return rc;
    rc = EXIT_OK;
    n_globs = tensor_list.n;
    if (argc - optind != 1)
        return cli_usage_error("ls", "expected exactly one SOURCE");

    err = cli_open_checkpoint(argv[optind], &opts, &ckpt, opts.json ? &source_report : NULL, &diag);
    if (err) {
        rc = cli_fail("ls", err, &diag);
        goto out;
    }
    err = cli_check_globs((const cks_ckpt *const *)&ckpt, 1, globs, n_globs, &diag);
    if (!err)
        err = cli_select_tensors(ckpt, globs, n_globs, &sel, &n_sel, &diag);
    if (err) {
        rc = cli_fail("ls", err, &diag);
        goto out;
    }
    for (size_t i = 0; i < n_sel; i++) {
        const cks_tensor_info *info = sel[i]->info;
        struct dtype_total *t = &totals[info->dtype];
        t->tensors++;
        t->parameters += info->nelements;
        t->bytes += info->end - info->begin;
        all_params += info->nelements;
        all_bytes += info->end - info->begin;
    }

    if (opts.json) {
        cJSON *root = cli_json_new("ls");
        cJSON *tensors, *by_dtype, *total, *meta;
        uint64_t header_bytes = 0;
        for (size_t f = 0; f < ckpt->n_files; f++)
            header_bytes += 8 + ckpt->files[f].header->header_len;
        /* ls reads headers only: that is what it read */
        cJSON_AddNumberToObject(source_report, "bytes_read", (double)header_bytes);
        cJSON_AddItemToObject(root, "source", source_report);
        source_report = NULL;
        tensors = cJSON_AddArrayToObject(root, "tensors");
        for (size_t i = 0; i < n_sel; i++) {
            const cks_tensor_info *info = sel[i]->info;
            cJSON *t = cJSON_CreateObject();
            cJSON *offsets = cJSON_CreateArray();
            cJSON_AddStringToObject(t, "name", info->name);
            cJSON_AddStringToObject(t, "dtype", cks_dtype_name(info->dtype));
            cJSON_AddItemToObject(t, "shape", cli_json_shape(info));
            cJSON_AddItemToArray(offsets, cJSON_CreateNumber((double)info->begin));
            cJSON_AddItemToArray(offsets, cJSON_CreateNumber((double)info->end));
            cJSON_AddItemToObject(t, "data_offsets", offsets);
            cJSON_AddStringToObject(t, "file", ckpt->files[sel[i]->file].path);
            cJSON_AddNumberToObject(t, "parameters", (double)info->nelements);
            cJSON_AddNumberToObject(t, "bytes", (double)(info->end - info->begin));
            cJSON_AddItemToArray(tensors, t);
        }
        total = cJSON_AddObjectToObject(root, "totals");
        cJSON_AddNumberToObject(total, "tensors", (double)n_sel);
        cJSON_AddNumberToObject(total, "parameters", (double)all_params);
        cJSON_AddNumberToObject(total, "bytes", (double)all_bytes);
        by_dtype = cJSON_AddObjectToObject(total, "by_dtype");
        for (int d = 0; d < CKS_DTYPE__COUNT; d++) {
            if (!totals[d].tensors)
                continue;
            cJSON *entry = cJSON_AddObjectToObject(by_dtype, cks_dtype_name((cks_dtype)d));
            cJSON_AddNumberToObject(entry, "tensors", (double)totals[d].tensors);
            cJSON_AddNumberToObject(entry, "parameters", (double)totals[d].parameters);
            cJSON_AddNumberToObject(entry, "bytes", (double)totals[d].bytes);
        }
        meta = cJSON_AddObjectToObject(root, "metadata");
        for (size_t f = 0; f < ckpt->n_files; f++) {
            const cks_st_header *h = ckpt->files[f].header;
            cJSON *m = cJSON_AddObjectToObject(meta, ckpt->files[f].path);
            for (size_t k = 0; k < h->n_metadata; k++)
                cJSON_AddStringToObject(m, h->metadata_keys[k], h->metadata_values[k]);
        }
        cli_note_unverified(NULL, ckpt, root);
        cli_json_print(root);
        goto out;
    }

    {
        int name_w = 4;
        bool sharded = ckpt->n_files > 1;
        char shape[256], bytes[32];
        for (size_t i = 0; i < n_sel; i++) {
            int len = (int)strlen(cli_esc(sel[i]->info->name));
            if (len > name_w)
                name_w = len > 72 ? 72 : len;
        }
        printf("%-*s  %-8s  %-22s  %14s  %10s%s\n", name_w, "name", "dtype", "shape", "parameters", "bytes",
               sharded ? "  file" : "");
        for (size_t i = 0; i < n_sel; i++) {
            const cks_tensor_info *info = sel[i]->info;
            printf("%-*s  %-8s  %-22s  %14llu  %10s%s%s\n", name_w, cli_esc(info->name), cks_dtype_name(info->dtype),
                   cli_shape_text(info, shape, sizeof shape), (unsigned long long)info->nelements,
                   cli_human_bytes(info->end - info->begin, bytes, sizeof bytes), sharded ? "  " : "",
                   sharded ? cli_esc(ckpt->files[sel[i]->file].path) : "");
        }
        printf("\n%zu tensors, %llu parameters, %s in %zu file%s\n", n_sel, (unsigned long long)all_params,
               cli_human_bytes(all_bytes, bytes, sizeof bytes), ckpt->n_files, ckpt->n_files == 1 ? "" : "s");
        for (int d = 0; d < CKS_DTYPE__COUNT; d++) {
            if (!totals[d].tensors)
                continue;
            printf("  %-8s %6llu tensors  %14llu parameters  %10s\n", cks_dtype_name((cks_dtype)d),
                   (unsigned long long)totals[d].tensors, (unsigned long long)totals[d].parameters,
                   cli_human_bytes(totals[d].bytes, bytes, sizeof bytes));
        }
        for (size_t f = 0; f < ckpt->n_files; f++) {
            const cks_st_header *h = ckpt->files[f].header;
            if (!h->n_metadata)
                continue;
            printf("\nmetadata (%s):\n", cli_esc(ckpt->files[f].path));
            for (size_t k = 0; k < h->n_metadata; k++)
                printf("  %s = %s\n", cli_esc(h->metadata_keys[k]), cli_esc(h->metadata_values[k]));
        }
    }
out:
    cJSON_Delete(source_report);
    free((void *)sel);
    cks_ckpt_free(ckpt);
    return rc;
}
