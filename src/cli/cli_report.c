/* src/cli/cli_report.c — compare --html; see cli_report.h. */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "ckptscope/report.h"
#include "cli_remote.h"
#include "cli_report.h"

#define MAX_COMMAND_LINE 4096

static const char *json_str(const cJSON *obj, const char *key)
{
    const cJSON *v = obj ? cJSON_GetObjectItemCaseSensitive(obj, key) : NULL;
    return cJSON_IsString(v) && v->valuestring ? v->valuestring : NULL;
}

/* Fill one model's provenance; `files` must hold ckpt->n_files entries. Strings stay borrowed
 * from the JSON and the checkpoint, which outlive the report. */
static void gather_model(const cli_report_model *in, cks_report_model *m, cks_report_file *files)
{
    const cJSON *jfiles = in->source ? cJSON_GetObjectItemCaseSensitive(in->source, "files") : NULL;
    memset(m, 0, sizeof *m);
    m->spec = in->spec;
    m->kind = json_str(in->source, "kind");
    m->endpoint = json_str(in->source, "endpoint");
    m->repo = json_str(in->source, "repo");
    m->revision = json_str(in->source, "revision");
    m->commit = json_str(in->source, "commit");
    m->url = json_str(in->source, "url");
    m->index = in->ckpt->index_path;
    m->n_files = in->ckpt->n_files;
    m->files = files;
    for (size_t f = 0; f < in->ckpt->n_files; f++) {
        const cks_ckpt_file *cf = &in->ckpt->files[f];
        const cJSON *jf = cJSON_GetArrayItem(jfiles, (int)f);
        cks_report_file *rf = &files[f];
        memset(rf, 0, sizeof *rf);
        rf->path = cf->path;
        rf->size = cf->source->size;
        rf->sha256 = cf->source->sha256_hex[0] ? cf->source->sha256_hex : json_str(jf, "sha256");
        rf->header_bytes = cf->header ? 8 + cf->header->header_len : 0;
        if (!cks_report_reads(cf->source, &rf->ranges, &rf->n_ranges, &rf->bytes_read, &rf->ranges_approximate)) {
            rf->ranges = NULL;
            rf->n_ranges = 0;
        }
    }
}

/* The command as a shell would take it back (getopt has moved the options first). */
static void command_line(int argc, char **argv, char *buf, size_t size)
{
    size_t used = 0;
    buf[0] = '\0';
    for (int i = -1; i < argc && used + 8 < size; i++) {
        const char *arg = i < 0 ? "ckptscope" : argv[i];
        bool plain = *arg != '\0';
        for (const char *c = arg; *c; c++)
            if (!isalnum((unsigned char)*c) && !strchr("_./:@=,+-%", *c))
                plain = false;
        if (used)
            buf[used++] = ' ';
        if (!plain)
            buf[used++] = '\'';
        for (const char *c = arg; *c && used + 6 < size; c++) {
            if (*c == '\'') { /* close, escaped quote, reopen */
                memcpy(buf + used, "'\\''", 4);
                used += 4;
            } else {
                buf[used++] = *c;
            }
        }
        if (!plain)
            buf[used++] = '\'';
        buf[used] = '\0';
    }
}

/* The provenance of each --control/--positive: one cks_report_model and its files each. */
struct extra_models {
    cks_report_model *models;
    cks_report_file **files;
    size_t n;
};

static bool gather_extras(const cli_report_model *in, size_t n, struct extra_models *out)
{
    out->n = 0;
    out->models = calloc(n ? n : 1, sizeof *out->models);
    out->files = calloc(n ? n : 1, sizeof *out->files);
    if (!out->models || !out->files)
        return false;
    for (size_t i = 0; i < n; i++) {
        out->files[i] = calloc(in[i].ckpt->n_files ? in[i].ckpt->n_files : 1, sizeof **out->files);
        if (!out->files[i])
            return false;
        out->n = i + 1;
        gather_model(&in[i], &out->models[i], out->files[i]);
    }
    return true;
}

static void release_extras(struct extra_models *e)
{
    for (size_t i = 0; e->files && i < e->n; i++)
        free(e->files[i]);
    free(e->files);
    free(e->models);
}

int cli_write_html_report(const char *path, const cks_compare_result *r, const cli_report_model *a,
                          const cli_report_model *b, const cli_report_model *controls, size_t n_controls,
                          const cli_report_model *positives, size_t n_positives, const cks_compare_opts *copts,
                          int argc, char **argv, const cli_opts *opts)
{
    cks_report_meta meta;
    cks_report_file *files_a = NULL, *files_b = NULL;
    struct extra_models ctl = {0}, pos = {0};
    char *tmp = NULL, when[64], cmd[MAX_COMMAND_LINE];
    FILE *f = NULL;
    int fd = -1, rc = EXIT_OK;
    cks_diag diag;
    cks_err err;
    struct tm tm;
    time_t now = time(NULL);
    size_t len = strlen(path);

    memset(&meta, 0, sizeof meta);
    files_a = calloc(a->ckpt->n_files ? a->ckpt->n_files : 1, sizeof *files_a);
    files_b = calloc(b->ckpt->n_files ? b->ckpt->n_files : 1, sizeof *files_b);
    tmp = malloc(len + 16);
    if (!files_a || !files_b || !tmp || !gather_extras(controls, n_controls, &ctl) ||
        !gather_extras(positives, n_positives, &pos)) {
        rc = cli_fail("compare", CKS_ERR_NOMEM, NULL);
        goto out;
    }
    gather_model(a, &meta.a, files_a);
    gather_model(b, &meta.b, files_b);
    meta.controls = ctl.models;
    meta.n_controls = ctl.n;
    meta.positives = pos.models;
    meta.n_positives = pos.n;
    meta.tool_version = CKS_VERSION;
    if (gmtime_r(&now, &tm) && strftime(when, sizeof when, "%Y-%m-%d %H:%M:%S UTC", &tm))
        meta.generated_at = when;
    command_line(argc, argv, cmd, sizeof cmd);
    meta.command_line = cmd;
    meta.permutations = copts->permutations;
    meta.alpha = copts->alpha;
    if ((meta.a.kind && strcmp(meta.a.kind, "local") != 0) || (meta.b.kind && strcmp(meta.b.kind, "local") != 0)) {
        cks_http_stats st;
        cli_remote_totals(&st);
        meta.have_transfer = true;
        meta.transfer_bytes = st.bytes_fetched;
        meta.transfer_requests = st.requests;
        meta.transfer_seconds = st.seconds;
    }

    /* the temp file sits beside the target so that rename() is atomic (same file system) */
    snprintf(tmp, len + 16, "%s.tmp.XXXXXX", path);
    fd = mkstemp(tmp);
    if (fd < 0) {
        tmp[0] = '\0';
        fprintf(stderr, "ckptscope compare: cannot write the report %s: %s\n", cli_esc(path), strerror(errno));
        rc = EXIT_IO;
        goto out;
    }
    fchmod(fd, 0644); /* mkstemp makes 0600; a report is meant to be shared */
    f = fdopen(fd, "w");
    if (!f) {
        fprintf(stderr, "ckptscope compare: cannot write the report %s: %s\n", cli_esc(path), strerror(errno));
        rc = EXIT_IO;
        goto out;
    }
    fd = -1;
    err = cks_report_html(r, &meta, f, &diag);
    if (!err && (fflush(f) != 0 || fsync(fileno(f)) != 0))
        err = cks_fail(&diag, CKS_ERR_IO, "writing %s: %s", path, strerror(errno));
    if (fclose(f) != 0 && !err)
        err = cks_fail(&diag, CKS_ERR_IO, "writing %s: %s", path, strerror(errno));
    f = NULL;
    if (!err && rename(tmp, path) != 0)
        err = cks_fail(&diag, CKS_ERR_IO, "cannot move the report into place at %s: %s", path, strerror(errno));
    if (err) {
        rc = cli_fail("compare", err, &diag);
        goto out;
    }
    tmp[0] = '\0'; /* renamed: nothing to clean up */
    if (!opts->quiet)
        fprintf(stderr, "report: %s\n", cli_esc(path));
out:
    if (f)
        fclose(f);
    if (fd >= 0)
        close(fd);
    if (tmp && tmp[0] && rc != EXIT_OK)
        unlink(tmp);
    free(tmp);
    free(files_a);
    free(files_b);
    release_extras(&ctl);
    release_extras(&pos);
    return rc;
}
