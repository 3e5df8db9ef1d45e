/*
 * src/cli/cli_remote.h — the CLI side of remote sources (Hub repos and URLs).
 *
 * cli_open_checkpoint() asks cli_remote_open() first; it handles every remote SOURCE form
 * and leaves local paths alone. Sessions stay registered until exit so that the JSON
 * printer can add the "transfer" object (bytes_fetched, requests, seconds) of the run.
 */
#ifndef CKS_CLI_REMOTE_H
#define CKS_CLI_REMOTE_H

#include <cjson/cJSON.h>
#include <stdbool.h>

#include "ckptscope/checkpoint.h"
#include "ckptscope/hub.h"
#include "cli.h"
#include "ckptscope/workspace.h"

/* true when `spec` is remote: then *err is the outcome, and out and report are set on success. */
bool cli_remote_open(const char *spec, const cli_opts *opts, cks_ckpt **out, cJSON **report,
                     cks_err *err, cks_diag *diag);

/* The same SOURCE checked file by file (cks_remote_check_ckpt), reusing the session a
 * failed cli_remote_open left; false for a local path. */
bool cli_remote_check(const char *spec, const cli_opts *opts, cks_ckpt_check **out, cJSON **report,
                      cks_err *err, cks_diag *diag);

/* Open a remote session (for commands that need more than a checkpoint, e.g. fetch).
 * The session is registered for the transfer report and freed at exit. */
/* Open several SOURCEs side by side through the command's workspace
 * (cks_workspace_open_all); reports[i] gets a remote item's source JSON (NULL for a local
 * one or on failure). Returns the first failure in order. */
cks_err cli_remote_open_all(cks_workspace_item *items, size_t n, const cli_opts *opts, cJSON **reports,
                            cks_diag *diag);
cks_err cli_remote_session(const cks_hub_spec *spec, const cli_opts *opts, cks_remote **out,
                           cks_diag *diag);

/* The "source" JSON object of a remote checkpoint (ckpt NULL: the repository only). */
cJSON *cli_remote_source_json(cks_remote *r, const cks_ckpt *ckpt);

/* Add "transfer" to a report when any remote session was used. */
void cli_remote_json_finish(cJSON *root);

/* Totals over every session of this run. */
void cli_remote_totals(cks_http_stats *out);

/* After an --offline miss: name, per file, the tensors of `sel` (all when NULL) that are not
 * cached. Prints nothing for local checkpoints. */
void cli_explain_offline(const cks_ckpt *ckpt, const cks_ckpt_tensor *const *sel, size_t n_sel);

/* The disk cache of this run (opened on first use; NULL when unusable or disabled). */
struct cks_cache *cli_remote_cache(const cli_opts *opts);

/* Said and freed when the command returns (main): cache and session warnings, then the
 * workspace with every session. */
void cli_remote_finish(void);

int cmd_fetch(int argc, char **argv);

#endif
