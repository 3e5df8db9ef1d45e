/*
 * The pre-screen of `verify --against` (src/analysis/verify_prescreen.c) on hand-made
 * fingerprints whose statistics are worked out by hand: which known models it clears and which
 * it must keep, at and either side of each bound; and its stored summary round trip.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "ckptscope/verify.h"

#define HID 8
#define TOKENS 64
#define COLS 4

/* A one-layer model: attn norm gains with the given ranks (1..8), no ffn norm; one hashed
 * tensor (the attn norm, raw bytes kept as F32); TOKENS tokens "t00".."t63" with COLS columns. */
typedef struct hand_fp {
    cks_fingerprint fp;
    cks_fp_layer layer;
    double gains[HID];
    float gain_bytes[HID];
    cks_tensor_info info;
    cks_ckpt_tensor tensor;
    cks_fp_hash hash;
    cks_fp_token tokens[TOKENS];
    uint8_t text[TOKENS][16];
    float embed[TOKENS * COLS];
} hand_fp;

static void hand_init(hand_fp *h, const int ranks[HID], uint8_t hash_byte, bool low_information)
{
    memset(h, 0, sizeof *h);
    h->fp.source = h->fp.repo = h->fp.commit = (char *)"";
    h->fp.hidden = HID;
    h->fp.n_layers = 1;
    h->fp.layers = &h->layer;
    for (int i = 0; i < HID; i++) {
        h->gains[i] = 1.0 + 0.01 * ranks[i]; /* the ranks are what T2 reads */
        h->gain_bytes[i] = (float)h->gains[i];
    }
    h->layer.attn_norm = h->gains;
    h->layer.n_attn_norm = HID;
    h->info.name = (char *)"model.layers.0.input_layernorm.weight";
    h->info.dtype = CKS_DTYPE_F32;
    h->info.nelements = HID;
    h->tensor.info = &h->info;
    h->layer.attn_norm_t = &h->tensor;
    memset(h->hash.sha256, hash_byte, 32);
    h->hash.low_information = low_information;
    h->hash.tensor = &h->tensor;
    h->hash.bytes = (uint8_t *)h->gain_bytes;
    h->hash.len = sizeof h->gain_bytes;
    h->fp.n_hashes = 1;
    h->fp.hashes = &h->hash;
    for (int t = 0; t < TOKENS; t++) {
        snprintf((char *)h->text[t], sizeof h->text[t], "t%02d", t);
        h->tokens[t].id = (uint32_t)t;
        h->tokens[t].len = 3;
        h->tokens[t].text = h->text[t];
    }
    h->fp.n_tokens = TOKENS;
    h->fp.tokens = h->tokens;
    h->fp.embed_cols = COLS;
    h->fp.embed = h->embed;
}

/* Column c of the upload: the indicator of token c (orthonormal columns). */
static void live_embed(hand_fp *h)
{
    for (int c = 0; c < COLS; c++)
        h->embed[c * COLS + c] = 1;
}

/* Every column of A: cos_with_live along the upload's column 2 and the rest on tokens 10..13,
 * which no column of the upload touches, so A's best |cos| in B is exactly cos_with_live. */
static void known_embed(hand_fp *h, double cos_with_live)
{
    for (int c = 0; c < COLS; c++) {
        h->embed[2 * COLS + c] = (float)cos_with_live;
        h->embed[(10 + c) * COLS + c] = (float)sqrt(1 - cos_with_live * cos_with_live);
    }
}

static const int LIVE_RANKS[HID] = {1, 2, 3, 4, 5, 6, 7, 8};

static cks_verify_prescreen_result screen(hand_fp *live_h, hand_fp *known_h)
{
    cks_verify_live *live = NULL;
    cks_verify_summary *s = NULL, *back = NULL;
    cks_verify_prescreen_result res;
    uint8_t *enc = NULL;
    size_t len = 0;
    cks_diag d;
    memset(&res, 0, sizeof res);
    CHECK(cks_verify_live_from_fingerprint(&live_h->fp, 0, &live, &d) == CKS_OK);
    CHECK(cks_verify_summary_build(&known_h->fp, 0, false, &s, &d) == CKS_OK);
    /* through the stored form, as a warm run reads it */
    CHECK(s && cks_verify_summary_encode(s, &enc, &len, &d) == CKS_OK);
    CHECK(enc && cks_verify_summary_decode(enc, len, &back, &d) == CKS_OK);
    if (live && back)
        CHECK(cks_verify_prescreen(live, back, &res, &d) == CKS_OK);
    free(enc);
    cks_verify_summary_free(s);
    cks_verify_summary_free(back);
    cks_verify_live_free(live);
    return res;
}

/*
 * Spearman of n = 8 ranks: rho = 1 - 6 sum d^2 / (n (n^2 - 1)) = 1 - 6 sum d^2 / 504.
 *   {5,1,8,3,7,2,6,4}: d^2 = 16+1+25+1+4+16+1+16 = 80, rho = 1 - 480/504 = 0.0476: under 0.135
 *   {3,6,1,8,2,7,4,5}: d^2 = 4+16+4+16+9+1+9+9 = 68,  rho = 1 - 408/504 = 0.1905: between
 *     floor/2 (0.135) and the floor (0.27): kept (a bound at the floor would clear it)
 *   {2,1,4,3,6,5,8,7}: d^2 = 8, rho = 1 - 48/504 = 0.9048: kept
 */
static void t2_bound_hand_worked(void)
{
    static hand_fp live, known;
    static const int far[HID] = {5, 1, 8, 3, 7, 2, 6, 4}, between[HID] = {3, 6, 1, 8, 2, 7, 4, 5},
                     near[HID] = {2, 1, 4, 3, 6, 5, 8, 7};
    cks_verify_prescreen_result r;

    hand_init(&live, LIVE_RANKS, 0xAA, false);
    live_embed(&live);
    hand_init(&known, far, 0xBB, false);
    known_embed(&known, 0.0);
    r = screen(&live, &known);
    CHECK_NEAR(r.t2_bound, 1 - 480.0 / 504, 1e-12);
    CHECK_MSG(r.clears, "far member kept: %s", r.reason);

    hand_init(&known, between, 0xBB, false);
    known_embed(&known, 0.0);
    r = screen(&live, &known);
    CHECK_NEAR(r.t2_bound, 1 - 408.0 / 504, 1e-12);
    CHECK_MSG(!r.clears, "a member at rho 0.19 (over T2's floor/2) was cleared: %s", r.reason);

    hand_init(&known, near, 0xBB, false);
    known_embed(&known, 0.0);
    r = screen(&live, &known);
    CHECK_NEAR(r.t2_bound, 1 - 48.0 / 504, 1e-12);
    CHECK(!r.clears);
}

/* T4a: COLS = 4 < 32, so every dimension is probed; one at |cos| >= 0.15 (4 / 8) keeps it. */
static void t4a_probe_hand_worked(void)
{
    static hand_fp live, known;
    static const int far[HID] = {5, 1, 8, 3, 7, 2, 6, 4};
    cks_verify_prescreen_result r;

    hand_init(&live, LIVE_RANKS, 0xAA, false);
    live_embed(&live);
    hand_init(&known, far, 0xBB, false);
    known_embed(&known, 0.2); /* over floor/2 (0.15), under the floor (0.30) */
    r = screen(&live, &known);
    CHECK_EQ_INT(r.shared_tokens, TOKENS);
    CHECK_EQ_INT(r.t4a_sampled, COLS);
    CHECK_EQ_INT(r.t4a_hits, COLS);
    CHECK_NEAR(r.t4a_max, 0.2, 1e-6);
    CHECK_MSG(!r.clears, "a member at |cos| 0.2 was cleared: %s", r.reason);

    known_embed(&known, 0.1); /* under floor/2 */
    r = screen(&live, &known);
    CHECK_EQ_INT(r.t4a_hits, 0);
    CHECK_NEAR(r.t4a_max, 0.1, 1e-6);
    CHECK_MSG(r.clears, "a member at |cos| 0.1 was kept: %s", r.reason);

    /* no shared token string: cannot bound T4a from the upload's reference rows, kept */
    for (int t = 0; t < TOKENS; t++)
        known.text[t][0] = 'u';
    r = screen(&live, &known);
    CHECK_EQ_INT(r.shared_tokens, 0);
    CHECK(!r.clears);
}

/* T1: a byte-identical tensor keeps the member unless it is low-information on both sides;
 * bit-identical gains in the same tensor (the same values) keep it through the bitwise excess. */
static void t1_copies_hand_worked(void)
{
    static hand_fp live, known;
    static const int far[HID] = {5, 1, 8, 3, 7, 2, 6, 4};
    cks_verify_prescreen_result r;

    hand_init(&live, LIVE_RANKS, 0xAA, false);
    live_embed(&live);
    hand_init(&known, far, 0xAA, false); /* the same SHA-256 */
    known_embed(&known, 0.0);
    r = screen(&live, &known);
    CHECK(r.copy && !r.clears);

    hand_init(&live, LIVE_RANKS, 0xAA, true);
    live_embed(&live);
    hand_init(&known, far, 0xAA, true); /* low-information on both sides: no evidence */
    known_embed(&known, 0.0);
    r = screen(&live, &known);
    CHECK(!r.copy);
    CHECK_MSG(r.clears, "%s", r.reason);

    /* same bytes under another hash: 8 of 8 elements equal; the exact shuffle null of 8
     * distinct values expects 1/8, so the excess is 7/8 */
    hand_init(&live, LIVE_RANKS, 0xAA, false);
    live_embed(&live);
    hand_init(&known, LIVE_RANKS, 0xBB, false);
    known_embed(&known, 0.0);
    r = screen(&live, &known);
    CHECK_NEAR(r.t1_excess, 7.0 / 8, 1e-12);
    CHECK(!r.clears);
}

/* One upload against members in turn, whose shared tokens differ (the columns memo of the live
 * side): each answer is the one a fresh upload side gives. */
static void one_upload_many_members(void)
{
    static hand_fp live, near, far, other;
    static const int ranks[HID] = {5, 1, 8, 3, 7, 2, 6, 4};
    cks_verify_live *l = NULL;
    cks_verify_summary *s[3] = {NULL, NULL, NULL};
    cks_verify_prescreen_result r;
    cks_diag d;
    const uint32_t want_hits[3] = {COLS, 0, 0};

    hand_init(&live, LIVE_RANKS, 0xAA, false);
    live_embed(&live);
    hand_init(&near, ranks, 0xBB, false);
    known_embed(&near, 0.2);
    hand_init(&far, ranks, 0xBB, false);
    known_embed(&far, 0.1);
    /* the same strings in the reverse order: another list of shared pairs; A's rows 2 and 10..13
     * are then the upload's tokens 61 and 50..53, which no column of the upload touches */
    hand_init(&other, ranks, 0xBB, false);
    known_embed(&other, 0.2);
    for (int t = 0; t < TOKENS; t++)
        snprintf((char *)other.text[t], sizeof other.text[t], "t%02d", TOKENS - 1 - t);
    CHECK(cks_verify_live_from_fingerprint(&live.fp, 0, &l, &d) == CKS_OK);
    CHECK(cks_verify_summary_build(&near.fp, 0, false, &s[0], &d) == CKS_OK);
    CHECK(cks_verify_summary_build(&far.fp, 0, false, &s[1], &d) == CKS_OK);
    CHECK(cks_verify_summary_build(&other.fp, 0, false, &s[2], &d) == CKS_OK);
    for (int round = 0; l && round < 12; round++) {
        int i = (round * 7) % 3;
        CHECK(cks_verify_prescreen(l, s[i], &r, &d) == CKS_OK);
        CHECK_EQ_INT(r.t4a_hits, want_hits[i]);
        CHECK_EQ_INT(r.shared_tokens, TOKENS);
        CHECK(r.clears == (i != 0));
    }
    for (int i = 0; i < 3; i++)
        cks_verify_summary_free(s[i]);
    cks_verify_live_free(l);
}

static void malformed_summary_is_refused(void)
{
    static hand_fp h;
    cks_verify_summary *s = NULL, *back = NULL;
    uint8_t *enc = NULL;
    size_t len = 0;
    cks_diag d;
    hand_init(&h, LIVE_RANKS, 0xAA, false);
    CHECK(cks_verify_summary_build(&h.fp, 0, false, &s, &d) == CKS_OK);
    CHECK(cks_verify_summary_encode(s, &enc, &len, &d) == CKS_OK);
    for (size_t cut = 0; enc && cut < len; cut += 7) { /* every truncation is refused */
        CHECK(cks_verify_summary_decode(enc, cut, &back, &d) != CKS_OK);
        CHECK(back == NULL);
    }
    free(enc);
    cks_verify_summary_free(s);
}

TEST_MAIN(T(t2_bound_hand_worked), T(t4a_probe_hand_worked), T(t1_copies_hand_worked),
          T(one_upload_many_members), T(malformed_summary_is_refused))
