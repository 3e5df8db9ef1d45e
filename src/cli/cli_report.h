/*
 * src/cli/cli_report.h — `compare --html FILE`: gather the provenance of both models (the
 * "source" JSON that cli_open_checkpoint made, plus the byte ranges the tracking sources
 * recorded) and write the report atomically (temp file in the same directory, fsync, rename),
 * so a reader never sees half a report and an old report survives a failed run.
 */
#ifndef CKS_CLI_REPORT_H
#define CKS_CLI_REPORT_H

#include <cjson/cJSON.h>

#include "ckptscope/compare.h"
#include "cli.h"

typedef struct cli_report_model {
    const char *spec;          /* what the user typed */
    const cks_ckpt *ckpt;      /* opened and tracked (cks_report_track_reads) */
    const cJSON *source;       /* the "source" JSON object of the model; may be NULL */
} cli_report_model;

/* Returns EXIT_OK or an exit code after printing why on stderr. */
int cli_write_html_report(const char *path, const cks_compare_result *r, const cli_report_model *a,
                          const cli_report_model *b, const cli_report_model *controls, size_t n_controls,
                          const cli_report_model *positives, size_t n_positives, const cks_compare_opts *copts,
                          int argc, char **argv, const cli_opts *opts);

#endif
