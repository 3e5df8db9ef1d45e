/*
 * ckptscope compare A B — was B derived from A? Text for people, --json as the contract.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ckptscope/cache.h"
#include "ckptscope/compare.h"
#include "ckptscope/defaults.h"
#include "ckptscope/fingerprint.h"
#include "ckptscope/report.h"
#include "cli.h"
#include "cli_remote.h"
#include "cli_report.h"

static const char compare_help[] =
    "usage: ckptscope compare [OPTIONS] A B\n"
    "\n"
    "Decide whether checkpoint B was derived from A (or both from a common ancestor) from\n"
    "the fewest bytes, with calibrated statistics:\n"
    "  T1  byte identity of every tensor read, and bit-identical elements vs. their exact null\n"
    "  T2  norm-gain Pearson along the layer pairing, joint hidden-dimension permutation null\n"
    "  T3  index-aligned k/v/router/embedding rows, joint residual permutation null\n"
    "  T4  hidden-dimension alignment from shared-token embeddings, then T2/T3 and debiased\n"
    "      CKA of k on the aligned model\n"
    "Verdict: identical, derived, not_derived (with the transformations covered) or\n"
    "inconclusive (with why). Raw cosine is shown and labelled: it is not evidence.\n"
    "\n"
    "options:\n"
    "  --control M      a model known to be independent of A and B (repeatable); a test that\n"
    "                   flags a control is invalid for this run\n"
    "  --positive M     a known derivative of A (repeatable); proves each test's power\n"
    "  --budget SIZE    bytes read per model (default 384M); large matrices are sampled by\n"
    "                   row blocks, the same rows in both models\n"
    "  --tests LIST     which tests to run: T1,T2,T3,T4 (default all)\n"
    "  --seed N         seed of every sample and permutation (default 20260128)\n"
    "  --alpha X        family-wise error level for Holm (default 0.001)\n"
    "  --permutations N permutations of the cheap tests (default 9999)\n"
    "  --no-synthetic   skip the built-in synthetic power checks\n"
    "  --html FILE      also write a self-contained HTML report (verdict, tests, heatmaps,\n"
    "                   provenance of every number) to FILE\n"
    "  --json           machine-readable result (docs/json.md)\n"
    "  --quiet          no progress on stderr\n"
    "  --help           this text\n"
    "\n"
    "exit status: 0 when the comparison ran (whatever the verdict), error codes otherwise.\n"
    "\n"
    "examples:\n"
    "  ckptscope compare ./base ./finetune\n"
    "  ckptscope compare zai-org/GLM-4.5-Air upstage/Solar-Open-100B \\\n"
    "      --control microsoft/Phi-3.5-MoE-instruct --positive PrimeIntellect/INTELLECT-3\n"
    "  ckptscope compare A B --tests T2 --json | jq '.tests[0]'\n"
    "  ckptscope compare ./base ./finetune --html report.html\n";

#define MAX_EXTRA 16

struct opened {
    cks_ckpt *ckpt;
    char *config, *tokenizer;
    size_t config_len, tokenizer_len;
    cJSON *report;
    cks_compare_model model;
    cks_fingerprint *fp; /* when the SOURCE is a fingerprint file */
};

/* A SOURCE once open: the checkpoint with its optional config.json and tokenizer.json (or a
 * fingerprint standing for the model it was made from), as the library's compare wants it. */
static void take_opened(struct opened *o, const char *label, cks_workspace_item *it, cJSON *report)
{
    o->ckpt = it->ckpt;
    o->report = report;
    /* config.json and tokenizer.json are optional: without them roles are inferred and T4 cannot run */
    o->config = it->aux[0];
    o->config_len = it->aux_len[0];
    o->tokenizer = it->aux[1];
    o->tokenizer_len = it->aux_len[1];
    o->model.label = label;
    o->model.ckpt = o->ckpt;
    o->model.config_json = o->config;
    o->model.config_len = o->config_len;
    o->model.tokenizer_json = o->tokenizer;
    o->model.tokenizer_len = o->tokenizer_len;
}

/*
 * Open every SOURCE (A, B, the controls, the positives): fingerprint files directly, the rest
 * side by side through the workspace (a remote pair's round trips overlap instead of adding
 * up). Every slot that opened is filled, so close_model frees it whatever failed.
 */
static cks_err open_models(const char *const *specs, const char *const *labels, struct opened *const *slots,
                           size_t n, const cli_opts *opts, bool want_tokenizer, cks_diag *diag)
{
    cks_err err = CKS_OK;
    cks_workspace_item items[2 + 2 * MAX_EXTRA];
    cJSON *reports[2 + 2 * MAX_EXTRA];
    size_t slot_of[2 + 2 * MAX_EXTRA], m = 0;
    for (size_t i = 0; i < n; i++)
        memset(slots[i], 0, sizeof *slots[i]);
    for (size_t i = 0; i < n; i++) {
        if (cks_fingerprint_is_file(specs[i])) { /* a fingerprint stands for the model it was made from */
            err = cli_open_fingerprint(specs[i], labels[i], &slots[i]->fp, &slots[i]->model, &slots[i]->report, diag);
            if (err)
                return err;
            continue;
        }
        memset(&items[m], 0, sizeof items[m]);
        items[m].source = specs[i];
        items[m].aux_names[0] = "config.json";
        /* tokenizer.json can be megabytes: fetch it only for the tests that match tokens (T3, T4) */
        items[m].aux_names[1] = want_tokenizer ? "tokenizer.json" : NULL;
        slot_of[m++] = i;
    }
    if (m == 0)
        return CKS_OK;
    /* the first failure in order comes back; an item that failed holds nothing to free */
    err = cli_open_checkpoints(items, m, opts, reports, diag);
    for (size_t k = 0; k < m; k++)
        if (!items[k].err)
            take_opened(slots[slot_of[k]], labels[slot_of[k]], &items[k], reports[k]);
    return err;
}

static void close_model(struct opened *o)
{
    cks_ckpt_free(o->ckpt);
    cks_fingerprint_free(o->fp);
    free(o->config);
    free(o->tokenizer);
    cJSON_Delete(o->report);
    memset(o, 0, sizeof *o);
}

static bool parse_tests(const char *text, unsigned *bits)
{
    char buf[128];
    char *save = NULL, *tok;
    *bits = 0;
    snprintf(buf, sizeof buf, "%s", text);
    for (tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        if (strcasecmp(tok, "T1") == 0)
            *bits |= CKS_TEST_T1;
        else if (strcasecmp(tok, "T2") == 0)
            *bits |= CKS_TEST_T2;
        else if (strcasecmp(tok, "T3") == 0)
            *bits |= CKS_TEST_T3;
        else if (strcasecmp(tok, "T4") == 0)
            *bits |= CKS_TEST_T4;
        else if (strcasecmp(tok, "all") == 0)
            *bits |= CKS_TEST_ALL;
        else
            return false;
    }
    return *bits != 0;
}

struct stage_ctx {
    const cli_opts *opts;
    uint64_t budget;
};

/* compare's stages on the one progress line, with the bytes fetched against the budget */
static void progress_stage(void *ctx, const char *stage)
{
    const struct stage_ctx *s = ctx;
    char line[128];
    snprintf(line, sizeof line, "compare: %s", stage);
    cli_progress_stage(s->opts, line, s->budget);
}

static cJSON *number_or_null(double v)
{
    return isfinite(v) ? cJSON_CreateNumber(v) : cJSON_CreateNull();
}

static cJSON *test_json(const cks_test_result *t)
{
    cJSON *o = cJSON_CreateObject(), *items;
    cJSON_AddStringToObject(o, "id", t->id);
    cJSON_AddStringToObject(o, "name", t->name);
    cJSON_AddBoolToObject(o, "primary", t->primary);
    cJSON_AddBoolToObject(o, "ran", t->ran);
    if (!t->ran) {
        cJSON_AddStringToObject(o, "why_not", t->why_not);
        cJSON_AddStringToObject(o, "evidence", cks_evidence_name(t->evidence));
        cJSON_AddBoolToObject(o, "significant", false);
        cJSON_AddBoolToObject(o, "rejects", false);
        return o;
    }
    cJSON_AddStringToObject(o, "statistic_name", t->statistic_name);
    cJSON_AddItemToObject(o, "statistic", number_or_null(t->statistic));
    if (isfinite(t->raw_cosine)) {
        cJSON *raw = cJSON_AddObjectToObject(o, "raw_cosine");
        cJSON_AddNumberToObject(raw, "value", t->raw_cosine);
        cJSON_AddBoolToObject(raw, "evidence", false);
        cJSON_AddStringToObject(raw, "note", "positive-offset vectors give raw cosine near 1 for any two models");
    }
    cJSON_AddStringToObject(o, "null", t->null_kind);
    cJSON_AddItemToObject(o, "null_mean", number_or_null(t->null_mean));
    cJSON_AddItemToObject(o, "null_sd", number_or_null(t->null_sd));
    cJSON_AddNumberToObject(o, "permutations", t->permutations);
    cJSON_AddNumberToObject(o, "seed", (double)t->seed);
    cJSON_AddItemToObject(o, "p", number_or_null(t->p_value));
    cJSON_AddBoolToObject(o, "p_exact", t->p_exact);
    cJSON_AddStringToObject(o, "p_method", t->p_method);
    cJSON_AddBoolToObject(o, "decided_by_z", t->decided_by_z);
    cJSON_AddNumberToObject(o, "null_at_least", t->null_at_least);
    cJSON_AddItemToObject(o, "p_holm", number_or_null(t->p_holm));
    cJSON_AddItemToObject(o, "z", number_or_null(t->z));
    cJSON_AddItemToObject(o, "effect", number_or_null(t->effect));
    cJSON_AddItemToObject(o, "floor", number_or_null(t->floor));
    cJSON_AddBoolToObject(o, "effect_ok", t->effect_ok);
    cJSON_AddStringToObject(o, "floor_note", t->floor_note);
    cJSON_AddStringToObject(o, "evidence", cks_evidence_name(t->evidence));
    cJSON_AddStringToObject(o, "sources", t->sources);
    cJSON_AddBoolToObject(o, "significant", t->significant);
    cJSON_AddBoolToObject(o, "rejects", t->rejects);
    cJSON_AddBoolToObject(o, "valid", t->valid);
    if (!t->valid)
        cJSON_AddStringToObject(o, "invalid_reason", t->invalid_reason);
    cJSON_AddStringToObject(o, "power", t->power > 0 ? "shown" : t->power == 0 ? "not_shown" : "not_checked");
    if (t->power_note[0])
        cJSON_AddStringToObject(o, "power_note", t->power_note);
    cJSON_AddBoolToObject(o, "corroborated", t->corroborated);
    cJSON_AddStringToObject(o, "tensors", t->tensors);
    cJSON_AddNumberToObject(o, "layers", (double)t->n_layers);
    cJSON_AddNumberToObject(o, "bytes_read", (double)t->bytes_read);
    cJSON_AddStringToObject(o, "caveats", t->caveats);
    items = cJSON_AddArrayToObject(o, "items");
    for (size_t i = 0; i < t->n_items; i++) {
        cJSON *it = cJSON_CreateObject();
        cJSON_AddStringToObject(it, "label", t->items[i].label);
        cJSON_AddItemToObject(it, "value", number_or_null(t->items[i].value));
        if (isfinite(t->items[i].raw_cosine))
            cJSON_AddNumberToObject(it, "raw_cosine", t->items[i].raw_cosine);
        cJSON_AddItemToArray(items, it);
    }
    return o;
}

static cJSON *matrix_json(const double *m, int rows, int cols)
{
    cJSON *arr = cJSON_CreateArray();
    for (int i = 0; i < rows; i++) {
        cJSON *row = cJSON_CreateArray();
        for (int j = 0; j < cols; j++)
            cJSON_AddItemToArray(row, cJSON_CreateNumber(round(m[(size_t)i * cols + j] * 1e4) / 1e4));
        cJSON_AddItemToArray(arr, row);
    }
    return arr;
}

static cJSON *build_json(const cks_compare_result *r, struct opened *a, struct opened *b, struct opened *ctl,
                         size_t n_ctl, struct opened *pos, size_t n_pos)
{
    cJSON *root = cli_json_new("compare"), *tests, *desc, *sources, *matches;
    cJSON_AddStringToObject(root, "verdict", cks_verdict_name(r->verdict));
    cJSON_AddStringToObject(root, "headline", r->headline);
    cJSON_AddStringToObject(root, "reason", r->reason);
    {
        cJSON *findings = cJSON_AddArrayToObject(root, "findings");
        if (r->findings & CKS_FINDING_SHARED_INIT)
            cJSON_AddItemToArray(findings, cJSON_CreateString("shared_initialisation"));
        if (r->findings & CKS_FINDING_SHARED_STRUCTURE)
            cJSON_AddItemToArray(findings, cJSON_CreateString("shared_structure"));
        if (r->findings & CKS_FINDING_INIT_OR_DERIVATION)
            cJSON_AddItemToArray(findings, cJSON_CreateString("shared_initialisation_or_derivation"));
        cJSON_AddStringToObject(root, "relation", r->relation);
    }
    cJSON_AddStringToObject(root, "covers", r->covered);
    cJSON_AddStringToObject(root, "does_not_cover", r->not_covered);
    sources = cJSON_AddObjectToObject(root, "sources");
    cJSON_AddNumberToObject(a->report, "bytes_read", (double)r->bytes_a);
    cJSON_AddNumberToObject(b->report, "bytes_read", (double)r->bytes_b);
    cJSON_AddItemToObject(sources, "a", a->report);
    cJSON_AddItemToObject(sources, "b", b->report);
    a->report = b->report = NULL;
    {
        /* the models that gated and powered the verdict, pinned like A and B */
        cJSON *arr = cJSON_AddArrayToObject(sources, "controls");
        for (size_t i = 0; i < n_ctl; i++)
            cJSON_AddItemToArray(arr, ctl[i].report ? cJSON_Duplicate(ctl[i].report, true) : cJSON_CreateNull());
        arr = cJSON_AddArrayToObject(sources, "positives");
        for (size_t i = 0; i < n_pos; i++)
            cJSON_AddItemToArray(arr, pos[i].report ? cJSON_Duplicate(pos[i].report, true) : cJSON_CreateNull());
    }
    tests = cJSON_AddArrayToObject(root, "tests");
    for (size_t i = 0; i < r->n_tests; i++)
        cJSON_AddItemToArray(tests, test_json(&r->tests[i]));
    matches = cJSON_AddArrayToObject(root, "identical_tensors");
    for (size_t i = 0; i < r->n_hash_matches; i++) {
        cJSON *m = cJSON_CreateObject();
        cJSON_AddStringToObject(m, "a", r->hash_matches[i].name_a);
        cJSON_AddStringToObject(m, "b", r->hash_matches[i].name_b);
        cJSON_AddBoolToObject(m, "low_information", r->hash_matches[i].low_information);
        cJSON_AddItemToArray(matches, m);
    }
    desc = cJSON_AddObjectToObject(root, "descriptive");
    cJSON_AddStringToObject(desc, "family_a", r->family_a ? r->family_a : "unknown");
    cJSON_AddStringToObject(desc, "family_b", r->family_b ? r->family_b : "unknown");
    cJSON_AddNumberToObject(desc, "layers_a", r->layers_a);
    cJSON_AddNumberToObject(desc, "layers_b", r->layers_b);
    cJSON_AddNumberToObject(desc, "hidden_a", (double)r->hidden_a);
    cJSON_AddNumberToObject(desc, "hidden_b", (double)r->hidden_b);
    if (r->layer_matrix)
        cJSON_AddItemToObject(desc, "layer_matrix_norm_pearson", matrix_json(r->layer_matrix, r->layers_a, r->layers_b));
    if (r->layer_matrix_aligned)
        cJSON_AddItemToObject(desc, "layer_matrix_norm_pearson_aligned",
                              matrix_json(r->layer_matrix_aligned, r->layers_a, r->layers_b));
    if (r->row_margin) {
        cJSON *margins = cJSON_AddArrayToObject(desc, "row_margins");
        for (int i = 0; i < r->layers_a; i++)
            cJSON_AddItemToArray(margins, number_or_null(r->row_margin[i]));
    }
    {
        cJSON *path = cJSON_AddArrayToObject(desc, "layer_pairing");
        for (size_t p = 0; p < r->n_path; p++) {
            cJSON *pair = cJSON_CreateArray();
            cJSON_AddItemToArray(pair, cJSON_CreateNumber(r->path_a[p]));
            cJSON_AddItemToArray(pair, cJSON_CreateNumber(r->path_b[p]));
            cJSON_AddItemToArray(path, pair);
        }
    }
    cJSON_AddItemToObject(desc, "std_curve_detrended_correlation", number_or_null(r->std_curve_corr));
    cJSON_AddItemToObject(desc, "router_expert_match_mean_abs_cos", number_or_null(r->router_match));
    cJSON_AddNumberToObject(desc, "vocab_a", (double)r->vocab_a);
    cJSON_AddNumberToObject(desc, "vocab_b", (double)r->vocab_b);
    cJSON_AddNumberToObject(desc, "vocab_shared", (double)r->vocab_shared);
    cJSON_AddStringToObject(desc, "config_diff", r->config_diff);
    cJSON_AddStringToObject(root, "sampling", r->sampling);
    cJSON_AddNumberToObject(root, "seed", (double)r->seed);
    cJSON_AddNumberToObject(root, "bytes_read", (double)(r->bytes_a + r->bytes_b));
    cJSON_AddNumberToObject(root, "negative_controls", (double)r->n_controls_run);
    cJSON_AddNumberToObject(root, "positive_controls", (double)r->n_positives_run);
    return root;
}

/* What a test's row says, in a word a person can act on. */
static const char *result_word(const cks_test_result *t)
{
    if (!t->valid)
        return "INVALID";
    if (t->rejects)
        return t->evidence == CKS_EVIDENCE_INIT ? "SHARED-INIT" : "EVIDENCE";
    if (t->significant)
        return "weak"; /* beyond its null, below its floor: shared structure */
    return "null";
}

static void print_text(FILE *out, const cks_compare_result *r, const char *a, const char *b)
{
    char pbuf[32], bytes_a[32], bytes_b[32];
    fprintf(out, "verdict: %s\n%s\n\n%s\n", cks_verdict_name(r->verdict), cli_esc(r->headline), cli_esc(r->reason));
    if (r->relation[0])
        fprintf(out, "relation: %s\n", cli_esc(r->relation));
    fprintf(out, "\nA: %s (%s, %d layers, hidden %zu)\nB: %s (%s, %d layers, hidden %zu)\n\n", cli_esc(a),
           cli_esc(r->family_a ? r->family_a : "?"), r->layers_a, r->hidden_a, cli_esc(b),
           cli_esc(r->family_b ? r->family_b : "?"), r->layers_b,
           r->hidden_b);
    fprintf(out, "%-12s %-10s %-10s %-15s %-16s %-7s %-11s %s\n", "test", "statistic", "null mean", "effect / floor",
            "p", "z", "result", "what");
    for (size_t i = 0; i < r->n_tests; i++) {
        const cks_test_result *t = &r->tests[i];
        if (!t->ran) {
            fprintf(out, "%-12s %-10s %-10s %-15s %-16s %-7s %-11s %s: not run (%s)\n", t->id, "-", "-", "-", "-", "-",
                    "-", t->name, cli_esc(t->why_not));
            continue;
        }
        {
            double p = isfinite(t->p_holm) ? t->p_holm : t->p_value;
            if (!isfinite(p))
                snprintf(pbuf, sizeof pbuf, "-");
            else if (t->p_exact && t->permutations > 0 && p <= 1.0 / (t->permutations + 1.0) + 1e-15)
                snprintf(pbuf, sizeof pbuf, "<=%.1g (T=%u)", 1.0 / (t->permutations + 1.0), t->permutations);
            else if (p < 1e-12)
                snprintf(pbuf, sizeof pbuf, "<1e-12");
            else
                snprintf(pbuf, sizeof pbuf, "%.2g%s", p, isfinite(t->p_holm) ? " Holm" : "");
        }
        {
            char st[24] = "-", nm[24] = "-", zb[24] = "-", ef[32] = "-";
            if (isfinite(t->statistic))
                snprintf(st, sizeof st, "%.4g", t->statistic);
            if (isfinite(t->null_mean))
                snprintf(nm, sizeof nm, "%.3g", t->null_mean);
            if (isfinite(t->z))
                snprintf(zb, sizeof zb, "%.1f", t->z);
            if (isfinite(t->effect) && isfinite(t->floor))
                snprintf(ef, sizeof ef, "%.3g / %.2g", t->effect, t->floor);
            else if (isfinite(t->effect))
                snprintf(ef, sizeof ef, "%.3g", t->effect);
            fprintf(out, "%-12s %-10s %-10s %-15s %-16s %-7s %-11s %s\n", t->id, st, nm, ef, pbuf, zb, result_word(t),
                    t->name);
        }
        if (isfinite(t->raw_cosine))
            fprintf(out, "%-12s raw cosine %.4f  <- not evidence: norm gains of any two models score near 1\n", "",
                   t->raw_cosine);
        if (!t->valid)
            fprintf(out, "%-12s invalid: %s\n", "", cli_esc(t->invalid_reason));
        if (t->decided_by_z)
            fprintf(out, "%-12s p: %s\n", "", t->p_method);
        if (t->power_note[0])
            fprintf(out, "%-12s power: %s\n", "", cli_esc(t->power_note));
    }
    if (r->n_hash_matches) {
        size_t informative = 0;
        for (size_t i = 0; i < r->n_hash_matches; i++)
            informative += !r->hash_matches[i].low_information;
        fprintf(out, "\nbyte-identical tensors: %zu (%zu high-entropy)\n", r->n_hash_matches, informative);
    }
    if (r->layer_matrix && r->n_path) {
        fprintf(out, "\nlayer pairing (A->B, norm-gain Pearson):");
        for (size_t p = 0; p < r->n_path && p < 64; p++)
            fprintf(out, " %d->%d:%.2f", r->path_a[p], r->path_b[p],
                   r->layer_matrix[(size_t)r->path_a[p] * (size_t)r->layers_b + (size_t)r->path_b[p]]);
        fprintf(out, "\n");
    }
    if (r->vocab_a || r->vocab_b)
        fprintf(out, "vocabularies: %zu and %zu tokens, %zu shared\n", r->vocab_a, r->vocab_b, r->vocab_shared);
    if (isfinite(r->std_curve_corr))
        fprintf(out, "detrended std-curve correlation (descriptive only): %.3f\n", r->std_curve_corr);
    if (r->config_diff[0])
        fprintf(out, "config differences: %s\n", cli_esc(r->config_diff));
    fprintf(out, "\ncovers: %s\ndoes not cover: %s\n", cli_esc(r->covered), cli_esc(r->not_covered));
    fprintf(out, "sampling: %s\nbytes read: A %s, B %s\n", cli_esc(r->sampling), cli_human_bytes(r->bytes_a, bytes_a, sizeof bytes_a),
           cli_human_bytes(r->bytes_b, bytes_b, sizeof bytes_b));
}

/*
 * Results are memoised by the library (cks_compare_memo_*) when every model is pinned to a Hub
 * commit: its source report (commit, files, SHA-256) is its identity. Local paths and
 * fingerprints are never memoised: a file can change under the same name.
 */
static bool memo_key(struct opened *const *models, size_t n, const cks_compare_opts *copts, char hex[65])
{
    char **ids = calloc(n ? n : 1, sizeof *ids);
    bool ok = ids != NULL;
    for (size_t i = 0; ok && i < n; i++) {
        const cJSON *commit = models[i]->report ? cJSON_GetObjectItemCaseSensitive(models[i]->report, "commit") : NULL;
        if (cJSON_IsString(commit) && !models[i]->fp)
            ids[i] = cJSON_PrintUnformatted(models[i]->report);
        ok = ids[i] != NULL;
    }
    ok = ok && cks_compare_memo_key((const char *const *)ids, n, copts, "ckptscope " CKS_VERSION, hex);
    for (size_t i = 0; ids && i < n; i++)
        free(ids[i]);
    free(ids);
    return ok;
}

/* Print a memoised result; false when there is none. */
static bool memo_replay(const cli_opts *opts, const char *key)
{
    cks_cache *cache = cli_remote_cache(opts);
    char *json = NULL, *text = NULL;
    bool hit = false, printed = false;
    cks_diag d;
    cJSON *doc = NULL;
    if (!cache || cks_compare_memo_get(cache, key, &json, &text, &hit, &d) != CKS_OK || !hit)
        goto out;
    if (opts->json) {
        doc = cJSON_Parse(json);
        if (!cJSON_IsObject(doc))
            goto out;
        cJSON_AddBoolToObject(doc, "from_cache", true);
        cli_json_print(doc);
        doc = NULL; /* printed and freed */
    } else {
        fputs(text, stdout);
        printf("\n(the same inputs and options were compared before: result from the cache)\n");
    }
    printed = true;
out:
    cJSON_Delete(doc);
    free(json);
    free(text);
    return printed;
}

static void memo_store(const cli_opts *opts, const char *key, const cJSON *json, const char *text)
{
    cks_cache *cache = cli_remote_cache(opts);
    char *data = cache ? cJSON_PrintUnformatted(json) : NULL;
    cks_diag d;
    if (data)
        (void)cks_compare_memo_put(cache, key, data, text, &d); /* best effort */
    free(data);
}

/* --tests T1,T2,T4 for cli_parse_options */
static int take_tests(const char *cmd, const char *value, void *dest)
{
    if (!parse_tests(value, dest))
        return cli_usage_error(cmd, "--tests wants a list such as T1,T2,T4, not \"%s\"", value);
    return CLI_GO_ON;
}

int cmd_compare(int argc, char **argv)
{
    cli_opts opts = {.reads_config = true}; /* the roles come from config.json */
    cks_compare_opts copts;
    const char *controls[MAX_EXTRA], *positives[MAX_EXTRA];
    size_t n_controls = 0, n_positives = 0;
    struct opened a, b, ctl[MAX_EXTRA], pos[MAX_EXTRA];
    cks_compare_model ctl_models[MAX_EXTRA], pos_models[MAX_EXTRA];
    char labels[2 * MAX_EXTRA][64];
    cks_compare_result *result = NULL;
    cks_diag diag;
    cks_err err = CKS_OK;
    int rc = EXIT_OK;
    size_t opened_ctl = 0, opened_pos = 0;
    bool want_tokenizer, memo_ok = false;
    char memo[65];
    const char *html_path = NULL;
    struct stage_ctx stage;

    memset(&copts, 0, sizeof copts);
    memset(&a, 0, sizeof a);
    memset(&b, 0, sizeof b);
    cli_list control_list = {controls, 0, MAX_EXTRA, "models"}, positive_list = {positives, 0, MAX_EXTRA, "models"};
    const cli_option table[] = {
        {.name = "control", .kind = CLI_LIST, .dest = &control_list},
        {.name = "positive", .kind = CLI_LIST, .dest = &positive_list},
        {.name = "budget", .kind = CLI_SIZE, CLI_DEST(copts.budget_bytes), .min = CKS_MIN_BUDGET_BYTES, .what = "384M or 1G"},
        {.name = "tests", .kind = CLI_CALL, .dest = &copts.tests, .call = take_tests},
        {.name = "seed", .kind = CLI_WHOLE, CLI_DEST(copts.seed), .min = 1},
        {.name = "alpha", .kind = CLI_REAL, .dest = &copts.alpha, .lo = 0, .hi = 0.5},
        {.name = "permutations", .kind = CLI_WHOLE, CLI_DEST(copts.permutations), .min = 19, .max = 1000000},
        {.name = "no-synthetic", .kind = CLI_FLAG, .dest = &copts.no_synthetic_power},
        {.name = "html", .kind = CLI_TEXT, .dest = &html_path, .what = "a FILE to write the report to (--html report.html)"},
        {.kind = CLI_END}};
    rc = cli_parse_options("compare", argc, argv, table, &opts, compare_help);
    if (rc != CLI_GO_ON)
        return rc;
    rc = EXIT_OK;
    n_controls = control_list.n;
    n_positives = positive_list.n;
    if (argc - optind == 1 && html_path && !strstr(html_path, ".htm"))
        return cli_usage_error("compare", "--html took \"%s\" as the report's FILE, which leaves one SOURCE; write "
                                          "--html report.html A B",
                               html_path);
    if (argc - optind != 2)
        return cli_usage_error("compare", "expected two SOURCEs, A and B");

    want_tokenizer = !copts.tests || (copts.tests & (CKS_TEST_T3 | CKS_TEST_T4));
    {
        const char *specs[2 + 2 * MAX_EXTRA], *names[2 + 2 * MAX_EXTRA];
        struct opened *slots[2 + 2 * MAX_EXTRA];
        size_t n_specs = 0;
        specs[n_specs] = argv[optind];
        names[n_specs] = "A";
        slots[n_specs++] = &a;
        specs[n_specs] = argv[optind + 1];
        names[n_specs] = "B";
        slots[n_specs++] = &b;
        for (size_t i = 0; i < n_controls; i++) {
            snprintf(labels[i], sizeof labels[0], "%.60s", controls[i]);
            specs[n_specs] = controls[i];
            names[n_specs] = labels[i];
            slots[n_specs++] = &ctl[i];
        }
        for (size_t i = 0; i < n_positives; i++) {
            snprintf(labels[MAX_EXTRA + i], sizeof labels[0], "%.60s", positives[i]);
            specs[n_specs] = positives[i];
            names[n_specs] = labels[MAX_EXTRA + i];
            slots[n_specs++] = &pos[i];
        }
        err = open_models(specs, names, slots, n_specs, &opts, want_tokenizer, &diag);
        opened_ctl = n_controls;
        opened_pos = n_positives;
        /* the report lists the byte ranges each file gave the analysis */
        for (size_t i = 0; !err && html_path && i < n_specs; i++)
            if (slots[i]->ckpt)
                err = cks_report_track_reads(slots[i]->ckpt, &diag);
        for (size_t i = 0; i < n_controls; i++)
            ctl_models[i] = ctl[i].model;
        for (size_t i = 0; i < n_positives; i++)
            pos_models[i] = pos[i].model;
    }
    if (err) {
        rc = cli_fail("compare", err, &diag);
        goto out;
    }
    {
        struct opened *all[2 + 2 * MAX_EXTRA];
        size_t n_all = 0;
        all[n_all++] = &a;
        all[n_all++] = &b;
        for (size_t i = 0; i < n_controls; i++)
            all[n_all++] = &ctl[i];
        for (size_t i = 0; i < n_positives; i++)
            all[n_all++] = &pos[i];
        memo_ok = !html_path && memo_key(all, n_all, &copts, memo);
        if (memo_ok && memo_replay(&opts, memo))
            goto out;
    }
    copts.controls = ctl_models;
    copts.n_controls = n_controls;
    copts.positives = pos_models;
    copts.n_positives = n_positives;
    stage.opts = &opts;
    stage.budget = copts.budget_bytes ? copts.budget_bytes : CKS_DEFAULT_BUDGET_BYTES;
    copts.progress = progress_stage;
    copts.progress_ctx = &stage;
    err = cks_compare(&a.model, &b.model, &copts, &result, &diag);
    if (!err && (a.fp || b.fp)) /* what the fingerprint could not support, said per test */
        cks_fingerprint_annotate(result, a.fp, b.fp, copts.seed ? copts.seed : CKS_DEFAULT_SEED);
    cli_progress_stage(&opts, NULL, 0);
    if (err) {
        rc = cli_fail("compare", err, &diag);
        if (err == CKS_ERR_OFFLINE_MISS) {
            cli_explain_offline(a.model.ckpt, NULL, 0);
            cli_explain_offline(b.model.ckpt, NULL, 0);
        }
        goto out;
    }
    if (html_path) {
        cli_report_model ra = {argv[optind], a.model.ckpt, a.report}, rb = {argv[optind + 1], b.model.ckpt, b.report};
        cli_report_model rc_ctl[MAX_EXTRA], rc_pos[MAX_EXTRA];
        size_t n_rc_ctl = 0, n_rc_pos = 0;
        for (size_t i = 0; i < n_controls; i++)
            if (ctl[i].model.ckpt) /* a fingerprint SOURCE has no files to list */
                rc_ctl[n_rc_ctl++] = (cli_report_model){controls[i], ctl[i].model.ckpt, ctl[i].report};
        for (size_t i = 0; i < n_positives; i++)
            if (pos[i].model.ckpt)
                rc_pos[n_rc_pos++] = (cli_report_model){positives[i], pos[i].model.ckpt, pos[i].report};
        rc = cli_write_html_report(html_path, result, &ra, &rb, rc_ctl, n_rc_ctl, rc_pos, n_rc_pos, &copts, argc, argv,
                                   &opts);
        if (rc != EXIT_OK)
            goto out;
    }
    {
        char *text = NULL;
        size_t text_len = 0;
        FILE *mem = open_memstream(&text, &text_len);
        cJSON *root;
        if (mem) {
            print_text(mem, result, argv[optind], argv[optind + 1]);
            fclose(mem);
        }
        root = build_json(result, &a, &b, ctl, n_controls, pos, n_positives);
        if (memo_ok && text && root)
            memo_store(&opts, memo, root, text);
        if (opts.json)
            cli_json_print(root);
        else {
            cJSON_Delete(root);
            if (text)
                fputs(text, stdout);
            else
                print_text(stdout, result, argv[optind], argv[optind + 1]);
        }
        free(text);
    }
out:
    cks_compare_result_free(result);
    close_model(&a);
    close_model(&b);
    for (size_t i = 0; i < opened_ctl; i++)
        close_model(&ctl[i]);
    for (size_t i = 0; i < opened_pos; i++)
        close_model(&pos[i]);
    return rc;
}
