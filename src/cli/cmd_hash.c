/* ckptscope hash SOURCE [--tensor GLOB] — SHA-256 of each tensor's raw bytes. */
#include <stdlib.h>
#include <string.h>

#include "ckptscope/fetch.h"
#include "cli.h"
#include "cli_remote.h"

static const char hash_help[] =
    "usage: ckptscope hash [OPTIONS] SOURCE\n"
    "\n"
    "Print the SHA-256 of each tensor's raw bytes (exactly its data_offsets range, no header),\n"
    "so the same weights hash the same under any name, shard or file order. Tensors are\n"
    "hashed on all cores, streamed through a small buffer.\n"
    "\n"
    "options:\n"
    "  --tensor GLOB   only tensors whose name matches GLOB (repeatable)\n"
    "  --json          {\"schema_version\", \"tensors\": [{\"name\", \"sha256\", ...}]}\n"
    "  --quiet         no progress on stderr\n"
    "  --help          this text\n"
    "\n"
    "examples:\n"
    "  ckptscope hash model.safetensors\n"
    "  ckptscope hash ./ckpt/ --tensor '*norm*' --json\n"
    "  sha256sum-style: ckptscope hash model.safetensors | sort > before.txt\n";

int cmd_hash(int argc, char **argv)
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
    cks_tensor_hash *hashes = NULL;
    cks_diag diag;
    cks_err err;

    rc = cli_parse_options("hash", argc, argv, table, &opts, hash_help);
    if (rc != CLI_GO_ON)
        return rc;
    rc = EXIT_OK;
    n_globs = tensor_list.n;
    if (argc - optind != 1)
        return cli_usage_error("hash", "expected exactly one SOURCE");

    err = cli_open_checkpoint(argv[optind], &opts, &ckpt, opts.json ? &source_report : NULL, &diag);
    if (!err)
        err = cli_check_globs((const cks_ckpt *const *)&ckpt, 1, globs, n_globs, &diag);
    if (!err)
        err = cli_select_tensors(ckpt, globs, n_globs, &sel, &n_sel, &diag);
    if (!err)
        err = cks_refresh_partial(ckpt, sel, n_sel, &diag);
    if (!err)
        err = cli_hash_selection(ckpt, sel, n_sel, &opts, "hashing", &hashes, &diag);
    if (err) {
        rc = cli_fail("hash", err, &diag);
        if (err == CKS_ERR_OFFLINE_MISS)
            cli_explain_offline(ckpt, sel, n_sel);
        goto out;
    }
    if (opts.json) {
        cJSON *root = cli_json_new("hash");
        cJSON *tensors;
        uint64_t bytes = 0;
        for (size_t f = 0; f < ckpt->n_files; f++)
            bytes += 8 + ckpt->files[f].header->header_len;
        for (size_t i = 0; i < n_sel; i++)
            bytes += sel[i]->info->end - sel[i]->info->begin;
        cJSON_AddNumberToObject(source_report, "bytes_read", (double)bytes);
        cJSON_AddItemToObject(root, "source", source_report);
        source_report = NULL;
        tensors = cJSON_AddArrayToObject(root, "tensors");
        for (size_t i = 0; i < n_sel; i++) {
            const cks_tensor_info *info = sel[i]->info;
            cJSON *t = cJSON_CreateObject();
            cJSON_AddStringToObject(t, "name", info->name);
            cJSON_AddStringToObject(t, "sha256", hashes[i].hex);
            cJSON_AddStringToObject(t, "dtype", cks_dtype_name(info->dtype));
            cJSON_AddItemToObject(t, "shape", cli_json_shape(info));
            cJSON_AddNumberToObject(t, "bytes", (double)(info->end - info->begin));
            cJSON_AddStringToObject(t, "file", ckpt->files[sel[i]->file].path);
            cJSON_AddItemToArray(tensors, t);
        }
        cli_note_unverified("hash", ckpt, root);
        cli_json_print(root);
    } else {
        for (size_t i = 0; i < n_sel; i++)
            printf("%s  %s\n", hashes[i].hex, cli_esc(sel[i]->info->name));
        cli_note_unverified("hash", ckpt, NULL);
    }
out:
    cJSON_Delete(source_report);
    free(hashes);
    free((void *)sel);
    cks_ckpt_free(ckpt);
    return rc;
}
