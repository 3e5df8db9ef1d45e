/*
 * compare: effect floors, Holm, and the verdict (research/fingerprinting.md §7 with the
 * correction of DESIGN.md §8: shared structure is not derivation).
 *
 * A test rejects only when it is beyond its null AND its effect reaches a floor that
 * independent models with shared structure do not reach. The floors were calibrated on a
 * labelled corpus (bench/verdicts: the real pairs of ../shared/realdata/TRUTH.md, trap
 * generators for every kind of shared structure, derivative generators), chosen between the
 * strongest independent pair and the weakest true derivative, never keyed to a file; the
 * margins are in PLAN.md and bench/verdicts/RESULTS.md.
 *
 * Then "derived" needs evidence in what training changed (cks_evidence): tensors trained from
 * a constant, an adapter's update, byte copies, or agreement that appears only through a
 * recovered permutation. Agreement in what initialisation fixes is reported as a shared
 * initialisation; weak agreement below the floors as shared structure. Neither is derivation.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "ckptscope/stats.h"
#include "compare_internal.h"

#define Z_RULE 6.0 /* fingerprinting.md §7.3: an approximate z decides only far out */

typedef struct floor_def {
    const char *id;
    double floor;
    const char *basis; /* what the number is, for reports */
} floor_def;

/*
 * The floors, on each test's effect scale. A floor that decides (T2, T4b-norms, L, T4a's gate)
 * sits at the midpoint between the strongest independent pair and the weakest true derivative
 * of bench/verdicts (3 corpus seeds and the real pairs of TRUTH.md; 2026-12-04):
 *   T2 / T4b-norms  independent <= 0.194 (a full-model seed twin), derivatives >= 0.353 (noise
 *                   at half the values' spread) -> 0.27
 *   L               independent <= 0.507 (a LoRA seed twin), derivatives >= 0.594 (real mlx-lm
 *                   iterations 100 and 600) -> 0.55
 *   T4a             independent <= 0.174, permuted derivatives >= 0.450 -> 0.30
 * The others only separate a shared initialisation (at or above) from shared structure (below)
 * and never decide alone; 0.30 on a correlation scale, 0.05 of excess bit-identical elements.
 * PLAN.md, "Verdict floors", keeps the table and its margins.
 */
static const floor_def FLOORS[] = {
    {"T1", 0.05, "excess of bit-identical elements over the shuffle null, in trained-from-constant tensors"},
    {"T2", 0.27, "mean Spearman of norm gains"},
    {"T3", 0.30, "mean winsorised Pearson of index-aligned weights"},
    {"T4a", 0.30, "median best |corr| of a hidden dimension, above the rotation null's mean"},
    {"T4b-norms", 0.27, "mean Spearman of aligned norm gains"},
    {"T4b-weights", 0.30, "mean winsorised Pearson of aligned weights"},
    {"T4c", 0.30, "mean debiased CKA of aligned k"},
    {"L", 0.55, "lower quartile over modules of the Spearman of the adapters' updates"},
    {"L-init", 0.50, "median Spearman of the adapters' down factors"},
    {"G", 0.30, "median Spearman of name-matched tensors trained from a constant"},
    {"G-init", 0.30, "median Spearman of name-matched tensors fixed by initialisation"},
    {"G-rows", 0.30, "matched |cos| of units above the unit-rotation null's mean"},
};

static const floor_def *floor_of(const char *id)
{
    for (size_t i = 0; i < sizeof FLOORS / sizeof FLOORS[0]; i++)
        if (strcmp(FLOORS[i].id, id) == 0)
            return &FLOORS[i];
    return NULL;
}

const char *cks_evidence_name(cks_evidence e)
{
    switch (e) {
    case CKS_EVIDENCE_TRAINED:
        return "trained";
    case CKS_EVIDENCE_INIT:
        return "initialisation";
    case CKS_EVIDENCE_ALIGNMENT:
        return "alignment";
    case CKS_EVIDENCE_COPY:
        return "copy";
    default:
        return "none";
    }
}

double cmp_floor_value(const char *id)
{
    const floor_def *fd = floor_of(id);
    return fd ? fd->floor : NAN;
}

void cmp_apply_floor(cks_test_result *t)
{
    const floor_def *fd = floor_of(t->id);
    if (!fd) {
        t->floor = NAN;
        t->effect_ok = true;
        return;
    }
    t->floor = fd->floor;
    t->effect_ok = isfinite(t->effect) && t->effect >= fd->floor;
    if (!t->floor_note[0])
        snprintf(t->floor_note, sizeof t->floor_note, "floor %.2f on the %s (calibrated on bench/verdicts)",
                 fd->floor, fd->basis);
}

/* Beyond its null on its own, before any correction. */
static bool significant_alone(const cks_test_result *t, double alpha)
{
    if (!t || !t->ran)
        return false;
    if (t->decided_by_z)
        return isfinite(t->z) && t->z >= Z_RULE && t->null_at_least == 0;
    return isfinite(t->p_value) && t->p_value <= alpha;
}

bool cmp_flags(const cks_test_result *t, double alpha)
{
    cks_test_result copy;
    if (!significant_alone(t, alpha))
        return false;
    copy = *t;
    if (!isfinite(copy.floor))
        cmp_apply_floor(&copy);
    return copy.effect_ok;
}

void cmp_apply_holm(cmp_family *f, double alpha)
{
    double p[CMP_MAX_TESTS], adj[CMP_MAX_TESTS];
    size_t idx[CMP_MAX_TESTS], k = 0;
    for (size_t i = 0; i < f->n; i++) {
        cks_test_result *t = &f->t[i];
        t->rejects = false;
        t->significant = false;
        t->p_holm = NAN;
        if (!t->ran)
            continue;
        if (!isfinite(t->floor))
            cmp_apply_floor(t);
        if (!t->primary || !t->valid)
            continue;
        if (t->decided_by_z) {
            t->significant = significant_alone(t, alpha);
            continue;
        }
        if (!isfinite(t->p_value))
            continue;
        idx[k] = i;
        p[k] = fmin(1.0, fmax(0.0, t->p_value));
        k++;
    }
    if (k > 0 && cks_holm(p, k, adj, NULL) == CKS_OK)
        for (size_t j = 0; j < k; j++) {
            f->t[idx[j]].p_holm = adj[j];
            f->t[idx[j]].significant = adj[j] <= alpha;
        }
    for (size_t i = 0; i < f->n; i++) {
        cks_test_result *t = &f->t[i];
        t->rejects = t->ran && t->primary && t->valid && t->significant && t->effect_ok;
    }
}

const char *cmp_short_p(const cks_test_result *t, double p, char *buf, size_t size)
{
    if (!isfinite(p))
        snprintf(buf, size, "n/a");
    else if (t && t->p_exact && t->permutations > 0 && p <= 1.0 / (t->permutations + 1.0) + 1e-15)
        snprintf(buf, size, "<= %.2g (%u draws)", 1.0 / (t->permutations + 1.0), t->permutations);
    else if (p < 1e-12)
        snprintf(buf, size, "< 1e-12");
    else
        snprintf(buf, size, "%.2g", p);
    return buf;
}

/* Which test a person should read first: the most interpretable evidence. */
static int lead_rank(const cks_test_result *t)
{
    static const char *const order[] = {"L",  "T2", "T4b-norms", "G",     "T1",  "T4b-weights", "T4c",
                                        "T4a", "G-rows", "T3", "L-init", "G-init"};
    for (int i = 0; i < (int)(sizeof order / sizeof order[0]); i++)
        if (strcmp(t->id, order[i]) == 0)
            return i;
    return 99;
}

/* A T4 test counts as derivation evidence only when the alignment it stands on is real. */
static bool alignment_real(cmp_family *f)
{
    const cks_test_result *t4a = cmp_family_find(f, "T4a");
    return t4a && t4a->ran && t4a->valid && t4a->significant && t4a->effect_ok;
}

static bool is_derivation_evidence(cmp_family *f, const cks_test_result *t)
{
    if (!t->rejects)
        return false;
    switch (t->evidence) {
    case CKS_EVIDENCE_TRAINED:
    case CKS_EVIDENCE_COPY:
        return strncmp(t->id, "T4b", 3) != 0 || alignment_real(f);
    case CKS_EVIDENCE_ALIGNMENT:
        /* T4a alone never decides: it says a correspondence exists, not what agrees through it */
        if (strcmp(t->id, "T4a") == 0)
            return false;
        return strncmp(t->id, "T4", 2) != 0 || alignment_real(f);
    default:
        return false;
    }
}

static bool can_show_derivation(const cks_test_result *t)
{
    return t->primary && t->ran && t->valid &&
           (t->evidence == CKS_EVIDENCE_TRAINED || t->evidence == CKS_EVIDENCE_ALIGNMENT ||
            t->evidence == CKS_EVIDENCE_COPY) &&
           strcmp(t->id, "T4a") != 0;
}

static bool coverage_only(const cks_test_result *t)
{
    return strcmp(t->id, "G") == 0 || strcmp(t->id, "G-rows") == 0 || strcmp(t->id, "T1") == 0;
}

static const char *operation_class(cmp_family *f, const cmp_model *a, const cmp_model *b, const cks_test_result *lead)
{
    const cks_test_result *t2 = cmp_family_find(f, "T2");
    bool index_aligned = t2 && t2->rejects;
    if (strcmp(lead->id, "L") == 0)
        return "the adapters' updates agree module by module, as two saves of one training run do";
    if (lead->evidence == CKS_EVIDENCE_COPY)
        return "tensors of A are byte for byte in B (a copy, possibly with additions or renames)";
    if (a->n_layers != b->n_layers && a->n_layers > 0 && b->n_layers > 0)
        return index_aligned ? "fine-tuned with layers inserted or removed (monotone layer path)"
                             : "permuted, with layers inserted or removed (alignment and monotone layer path)";
    if (!index_aligned && alignment_real(f))
        return "permuted or sign-flipped in its hidden dimension (found by alignment)";
    if (strcmp(lead->id, "G-rows") == 0)
        return "with its units (neurons) permuted";
    return "fine-tuning-like: what training changed in A is still in B";
}

static void append_text(char *buf, size_t size, const char *text)
{
    size_t at = strlen(buf);
    if (at < size)
        snprintf(buf + at, size - at, "%s", text);
}

static void append(char *buf, size_t size, const char *fmt, const char *a, double x, double y)
{
    size_t at = strlen(buf);
    if (at < size)
        snprintf(buf + at, size - at, fmt, a, x, y);
}

void cmp_decide(const cmp_ctx *ctx, cmp_family *f, const cmp_model *a, const cmp_model *b, cks_compare_result *r)
{
    size_t n_ran = 0, unpowered = 0, unchecked = 0, capable = 0, n_evidence = 0, powered = 0;
    const cks_test_result *uncovered_generic = NULL;
    bool corroborated = false, t4_ran = false, init_agree = false, structure = false;
    const cks_test_result *lead = NULL, *evidence[CMP_MAX_TESTS], *init_lead = NULL, *structure_lead = NULL;
    const cks_test_result *unchecked_test = NULL, *invalidated = NULL;
    char pbuf[48], list[256] = "";
    size_t at = 0;
    (void)ctx;

    r->findings = 0;
    r->relation[0] = 0;
    for (size_t i = 0; i < f->n; i++) {
        const cks_test_result *t = &f->t[i];
        if (t->primary && t->ran && !t->valid && !invalidated)
            invalidated = t;
        if (!t->primary || !t->ran || !t->valid)
            continue;
        n_ran++;
        if (strcmp(t->id, "T4a") == 0)
            t4_ran = true;
        if (can_show_derivation(t)) {
            capable++;
            /* The generic tests only add coverage: when they cannot show power on these
             * tensors, what they would cover is listed as not covered instead of blocking a
             * negative verdict that the other tests support. */
            if (t->power > 0)
                powered++;
            else if (coverage_only(t))
                uncovered_generic = uncovered_generic ? uncovered_generic : t;
            else if (t->power == 0)
                unpowered++;
            else if (!unchecked_test) {
                unchecked++;
                unchecked_test = t;
            }
        }
        if (is_derivation_evidence(f, t)) {
            evidence[n_evidence++] = t;
            corroborated = corroborated || t->corroborated;
            if (!lead || lead_rank(t) < lead_rank(lead))
                lead = t;
            at += (size_t)snprintf(list + at, at < sizeof list ? sizeof list - at : 0, "%s%s", at ? ", " : "", t->id);
        } else if (t->significant && t->effect_ok && t->evidence == CKS_EVIDENCE_INIT) {
            init_agree = true;
            if (!init_lead || lead_rank(t) < lead_rank(init_lead))
                init_lead = t;
        } else if (t->significant && !t->effect_ok && strcmp(t->id, "T4a") != 0) {
            structure = true;
            if (!structure_lead || fabs(t->effect) > fabs(structure_lead->effect))
                structure_lead = t;
        }
    }
    /* two tests corroborate each other only when they read different vectors */
    for (size_t i = 0; i < n_evidence && !corroborated; i++)
        for (size_t j = i + 1; j < n_evidence && !corroborated; j++)
            corroborated = strcmp(evidence[i]->sources, evidence[j]->sources) != 0;

    snprintf(r->covered, sizeof r->covered, "byte copies under any names or sharding%s%s%s%s",
             (a->known_arch && b->known_arch) ? "; fine-tuning that keeps the residual basis (norm gains and "
                                                "index-aligned weights)"
                                              : "; name- and shape-matched tensors, index-aligned and with their rows "
                                                "(neurons) permuted",
             cmp_family_find(f, "L") && cmp_family_find(f, "L")->ran
                 ? "; LoRA adapters under any key style (their updates compared module by module)"
                 : "",
             t4_ran ? "; residual permutations and sign flips (alignment from shared-token embeddings)" : "",
             (a->known_arch && b->known_arch) ? "; layers inserted or removed (monotone layer alignment)" : "");
    snprintf(r->not_covered, sizeof r->not_covered,
             "general residual rotations (e.g. QuaRot with norm folding)%s; re-initialised embeddings and attention; "
             "distillation; data-level reuse",
             t4_ran ? "" : "; residual permutations and sign flips (no alignment could be run)");

    if (init_lead)
        append(r->relation, sizeof r->relation,
               "Shared initialisation: %s (tensors a random initialisation fixes) agrees at %.3f, above its floor "
               "%.2f; ",
               init_lead->id, init_lead->statistic, init_lead->floor);
    if (structure_lead)
        append(r->relation, sizeof r->relation,
               "Shared structure: %s is beyond its null but weak (effect %.3f, below the floor %.2f that independent "
               "models with a common base, task or recipe stay under); ",
               structure_lead->id, structure_lead->effect, structure_lead->floor);

    if (f->identical) {
        r->verdict = CKS_VERDICT_IDENTICAL;
        snprintf(r->headline, sizeof r->headline,
                 "B is a byte-for-byte copy of A: every tensor has an identical twin, whatever the names and shards.");
        snprintf(r->reason, sizeof r->reason,
                 "Every tensor of both checkpoints was read and each one of A has a byte-identical counterpart in B "
                 "(%zu tensors, SHA-256), whatever their names and shards. B is a copy of A.",
                 f->n_matches);
        snprintf(r->relation, sizeof r->relation, "Copy: identical tensors.");
        return;
    }
    if (lead && corroborated) {
        r->verdict = CKS_VERDICT_DERIVED;
        snprintf(r->headline, sizeof r->headline,
                 "B comes from A: what training wrote into A is still in B, far beyond what independent models "
                 "share (%s %.3f against a floor of %.2f).",
                 lead->id, lead->statistic, isfinite(lead->floor) ? lead->floor : 0.0);
        snprintf(r->reason, sizeof r->reason,
                 "B is derived from A, %s. %s: %s %.4g against a null mean of %.3g (p %s%s), effect above its "
                 "floor; corroborated across %s; rejecting tests: %s.",
                 operation_class(f, a, b, lead), lead->id, lead->statistic_name, lead->statistic, lead->null_mean,
                 cmp_short_p(lead, isfinite(lead->p_holm) ? lead->p_holm : lead->p_value, pbuf, sizeof pbuf),
                 isfinite(lead->p_holm) ? ", Holm" : lead->decided_by_z ? ", decided on z" : "",
                 n_evidence >= 2 ? "tests on different tensors" : "layers or tensors", list);
        snprintf(r->relation, sizeof r->relation, "Derivation: %s.", operation_class(f, a, b, lead));
        return;
    }
    if (lead) {
        r->verdict = CKS_VERDICT_INCONCLUSIVE;
        snprintf(r->headline, sizeof r->headline,
                 "Cannot tell: one piece of evidence points to derivation, but it stands alone.");
        snprintf(r->reason, sizeof r->reason,
                 "Only %s rejects, and its evidence comes from a single tensor type or layer (%s); one task-shaped "
                 "tensor cannot decide derivation.",
                 lead->id, lead->tensors);
        return;
    }
    if (n_ran == 0) {
        r->verdict = CKS_VERDICT_INCONCLUSIVE;
        snprintf(r->headline, sizeof r->headline, "Cannot tell: the two checkpoints share nothing that can be compared.");
        snprintf(r->reason, sizeof r->reason,
                 "No primary test could run: the checkpoints share no comparable tensors (different architectures, "
                 "or nothing read).");
        return;
    }
    if (capable == 0 && invalidated) {
        /* a negative control tripped what could decide: say so, naming it */
        r->verdict = CKS_VERDICT_INCONCLUSIVE;
        snprintf(r->headline, sizeof r->headline,
                 "Cannot tell: a negative control agrees with these models as much as they agree with each other, so "
                 "the tests cannot separate derived from independent here.");
        snprintf(r->reason, sizeof r->reason, "Invalidated by a control: %s %s.", invalidated->id,
                 invalidated->invalid_reason);
        return;
    }
    if (init_agree && (capable == 0 || powered == 0)) {
        r->verdict = CKS_VERDICT_INCONCLUSIVE;
        r->findings |= CKS_FINDING_INIT_OR_DERIVATION;
        snprintf(r->headline, sizeof r->headline,
                 "Cannot tell: the two share their random initialisation or one comes from the other; with no "
                 "tensor trained from a constant to compare, both look the same here.");
        snprintf(r->reason, sizeof r->reason,
                 "%s agrees beyond its null and its floor (%.3f), but it reads tensors a random initialisation fixes, "
                 "and no tensor that training writes from a constant (norm gains, zero-initialised biases, adapter "
                 "updates) could be compared.",
                 init_lead->id, init_lead->statistic);
        append_text(r->relation, sizeof r->relation, "a shared initialisation and a derivation cannot be told apart here.");
        return;
    }
    if (capable == 0) {
        const cks_test_result *g = cmp_family_find(f, "G-init");
        r->verdict = CKS_VERDICT_INCONCLUSIVE;
        snprintf(r->headline, sizeof r->headline,
                 "Cannot tell: nothing that could show a derivation could be compared.");
        snprintf(r->reason, sizeof r->reason,
                 "No test that reads what training changed could run (%s), so derivation can be neither shown nor "
                 "excluded.",
                 g && g->why_not[0] ? g->why_not : "no comparable tensors trained from a constant, no adapter updates");
        return;
    }
    if (a->known_arch && b->known_arch && !t4_ran) {
        const cks_test_result *t4a = cmp_family_find(f, "T4a");
        r->verdict = CKS_VERDICT_INCONCLUSIVE;
        snprintf(r->headline, sizeof r->headline,
                 "Cannot tell: no index-aligned evidence, and a permuted copy could not be ruled out.");
        snprintf(r->reason, sizeof r->reason,
                 "No test rejects, but the hidden-dimension alignment could not run (%s), so a permuted or "
                 "sign-flipped derivative cannot be excluded.",
                 t4a && t4a->why_not[0] ? t4a->why_not : "not run");
        return;
    }
    if (uncovered_generic) {
        size_t at2 = strlen(r->not_covered);
        snprintf(r->not_covered + at2, sizeof r->not_covered - at2, "; %s (%s could not show power on these tensors)",
                 strcmp(uncovered_generic->id, "G-rows") == 0 ? "copies with their units (neurons) permuted"
                                                              : "tensors trained from a constant",
                 uncovered_generic->id);
    }
    if (unpowered > 0 || unchecked > 0 || powered == 0) {
        r->verdict = CKS_VERDICT_INCONCLUSIVE;
        snprintf(r->headline, sizeof r->headline,
                 "Cannot tell: nothing points to derivation, but the tests could not show they would have seen one.");
        if (unpowered == 0 && unchecked == 0)
            snprintf(r->reason, sizeof r->reason,
                     "No test rejects, but none of the tests that could show a derivation showed the power to detect "
                     "one here, so silence is not evidence.");
        else if (unpowered > 0)
            snprintf(r->reason, sizeof r->reason,
                     "No test rejects, but %zu test(s) did not show the power to detect a derivative here (see power "
                     "notes), so silence is not evidence.",
                     unpowered);
        else
            snprintf(r->reason, sizeof r->reason,
                     "No test rejects, but %s has no power check (no positive control, synthetic checks off), so "
                     "silence is not evidence.",
                     unchecked_test->id);
        return;
    }
    r->verdict = CKS_VERDICT_NOT_DERIVED;
    if (init_agree) {
        r->findings |= CKS_FINDING_SHARED_INIT;
        snprintf(r->headline, sizeof r->headline,
                 "B was not derived from A, but both started from the same random initialisation (a shared seed): "
                 "what initialisation fixed agrees, what training changed does not.");
    } else if (structure) {
        snprintf(r->headline, sizeof r->headline,
                 "No sign that B was derived from A; they share only the weak structure that a common base model, "
                 "task or recipe imposes.");
    } else {
        snprintf(r->headline, sizeof r->headline,
                 "No sign that B was derived from A: nothing training changed agrees beyond chance, and these tests "
                 "would have caught a derivative.");
    }
    if (structure)
        r->findings |= CKS_FINDING_SHARED_STRUCTURE;
    {
        const cks_test_result *t2 = cmp_family_find(f, "T2");
        if (t2 && t2->ran && isfinite(t2->raw_cosine))
            snprintf(r->reason, sizeof r->reason,
                     "No evidence of weight-level derivation under the tested transformations: nothing training "
                     "changed agrees beyond its null and floor (norm-gain Spearman %.3f, p %s) and each test flags a "
                     "synthetic derivative. The raw cosine of the norm gains is %.3f, which any two models reach: it "
                     "is not evidence.",
                     t2->statistic, cmp_short_p(t2, t2->p_value, pbuf, sizeof pbuf), t2->raw_cosine);
        else
            snprintf(r->reason, sizeof r->reason,
                     "No evidence of weight-level derivation under the tested transformations: nothing training "
                     "changed agrees beyond its null and floor, and each test has shown the power to flag a "
                     "derivative.");
    }
    if (!r->relation[0])
        snprintf(r->relation, sizeof r->relation, "None found: no shared initialisation, structure or weights beyond chance.");
    else
        append_text(r->relation, sizeof r->relation, "neither is derivation.");
}
