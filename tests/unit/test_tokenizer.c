/*
 * tokenizer.json vocabularies: byte-level BPE, SentencePiece (Unigram, and BPE with byte
 * fallback), WordPiece and added tokens, each normalised to the bytes of text it stands for,
 * and the matcher across styles. Expectations are worked out by hand from GPT-2's byte table:
 * bytes 0x00-0x20 are U+0100-U+0120 (so "Ġ" U+0120 is a space, "Ċ" U+010A a newline, "Ā"
 * U+0100 the NUL byte), bytes 0x7F-0xA0 are U+0121-U+0142, byte 0xAD is U+0143; every other
 * byte is the Latin-1 character of the same value.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "ckptscope/tokenizer.h"

static cks_vocab *parse(const char *json)
{
    cks_vocab *v = NULL;
    cks_diag diag = {{0}};
    cks_err err = cks_vocab_parse(json, strlen(json), &v, &diag);
    if (err)
        fprintf(stderr, "  parse: %s: %s\n", cks_strerror(err), diag.text);
    return v;
}

/* Token `id` has exactly these bytes and flags. */
static void expect_token(const cks_vocab *v, uint32_t id, const char *bytes, size_t len, uint32_t flags)
{
    const cks_token *t = cks_vocab_find_id(v, id);
    CHECK_MSG(t != NULL, "id %u missing", id);
    if (!t)
        return;
    CHECK_MSG(t->len == len && memcmp(t->text, bytes, len) == 0, "id %u: got %u bytes \"%.*s\", want \"%.*s\"", id,
              t->len, (int)t->len, (const char *)t->text, (int)len, bytes);
    CHECK_MSG(t->flags == flags, "id %u: flags %u, want %u", id, t->flags, flags);
}
#define EXPECT_TOKEN(v, id, lit, flags) expect_token(v, id, lit, sizeof lit - 1, flags)

/* GPT-2 / Llama-3 style. "Ã©" is the byte-level spelling of UTF-8 é (C3 A9). */
static const char bpe_byte_level[] =
    "{\"version\":\"1.0\",\"added_tokens\":["
    "{\"id\":6,\"content\":\"<|endoftext|>\",\"special\":true,\"normalized\":false},"
    "{\"id\":7,\"content\":\"\\u0120raw\",\"special\":false,\"normalized\":false}],"
    "\"normalizer\":null,"
    "\"pre_tokenizer\":{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":\"Split\",\"pattern\":{\"Regex\":\"x\"},"
    "\"behavior\":\"Isolated\",\"invert\":false},{\"type\":\"ByteLevel\",\"add_prefix_space\":false}]},"
    "\"decoder\":{\"type\":\"ByteLevel\"},"
    "\"model\":{\"type\":\"BPE\",\"byte_fallback\":false,\"vocab\":{"
    "\"hello\":0,\"\\u0120world\":1,\"\\u010a\":2,\"\\u0120\\u0120\":3,\"\\u00c3\\u00a9\":4,\"\\u0100\":5,"
    "\"\\u0121\\u0143\":8,\"\\u65e5\\u672c\":9},"
    "\"merges\":[\"\\u0120 w\"]}}";

static void byte_level_bpe(void)
{
    cks_vocab *v = parse(bpe_byte_level);
    CHECK(v != NULL);
    if (!v)
        return;
    CHECK_EQ_INT(v->model, CKS_TOK_BPE);
    CHECK(v->byte_level && !v->metaspace && !v->byte_fallback);
    CHECK_EQ_INT(v->n, 10);
    EXPECT_TOKEN(v, 0, "hello", 0);
    EXPECT_TOKEN(v, 1, " world", 0);
    EXPECT_TOKEN(v, 2, "\n", 0);
    EXPECT_TOKEN(v, 3, "  ", 0);
    EXPECT_TOKEN(v, 4, "\xc3\xa9", 0);
    EXPECT_TOKEN(v, 5, "\0", 0);
    EXPECT_TOKEN(v, 6, "<|endoftext|>", CKS_TOKEN_ADDED | CKS_TOKEN_SPECIAL);
    /* added tokens are text as written, never byte-level decoded */
    EXPECT_TOKEN(v, 7, "\xc4\xa0raw", CKS_TOKEN_ADDED);
    EXPECT_TOKEN(v, 8, "\x7f\xad", 0);
    /* CJK characters are outside the byte table: kept as UTF-8 and counted */
    EXPECT_TOKEN(v, 9, "\xe6\x97\xa5\xe6\x9c\xac", 0);
    CHECK_EQ_INT(v->n_undecodable, 1);
    CHECK(cks_vocab_find_id(v, 10) == NULL);
    cks_vocab_free(v);

    /* the decoder alone also marks a byte-level vocabulary */
    v = parse("{\"decoder\":{\"type\":\"ByteLevel\"},\"model\":{\"type\":\"BPE\",\"vocab\":{\"\\u0120a\":0},"
              "\"merges\":[]}}");
    CHECK(v && v->byte_level);
    if (v)
        EXPECT_TOKEN(v, 0, " a", 0);
    cks_vocab_free(v);
}

/* SentencePiece exported as Unigram: ids are positions, U+2581 is a space, <0xNN> a byte. */
static const char unigram[] =
    "{\"added_tokens\":[{\"id\":0,\"content\":\"<unk>\",\"special\":true}],"
    "\"pre_tokenizer\":{\"type\":\"Metaspace\",\"replacement\":\"\\u2581\"},"
    "\"model\":{\"type\":\"Unigram\",\"unk_id\":0,\"vocab\":[[\"<unk>\",0.0],[\"\\u2581world\",-1.5],"
    "[\"<0x0A>\",0.0],[\"\\u2581\\u2581\",-3.0],[\"\\u00e9\",-2.0],[\"hello\",-1.0],[\"<0x00>\",0.0],"
    "[\"\\u2581\",-0.5],[\"<0x20>\",0.0],[\"<0x0g>\",-9.0]]}}";

static void sentencepiece_unigram(void)
{
    cks_vocab *v = parse(unigram);
    CHECK(v != NULL);
    if (!v)
        return;
    CHECK_EQ_INT(v->model, CKS_TOK_UNIGRAM);
    CHECK(!v->byte_level && v->metaspace && v->byte_fallback);
    CHECK_EQ_INT(v->n, 10);
    EXPECT_TOKEN(v, 0, "<unk>", CKS_TOKEN_ADDED | CKS_TOKEN_SPECIAL);
    EXPECT_TOKEN(v, 1, " world", 0);
    EXPECT_TOKEN(v, 2, "\n", CKS_TOKEN_BYTE);
    EXPECT_TOKEN(v, 3, "  ", 0);
    EXPECT_TOKEN(v, 4, "\xc3\xa9", 0);
    EXPECT_TOKEN(v, 5, "hello", 0);
    EXPECT_TOKEN(v, 6, "\0", CKS_TOKEN_BYTE);
    EXPECT_TOKEN(v, 7, " ", 0);
    EXPECT_TOKEN(v, 8, " ", CKS_TOKEN_BYTE);
    EXPECT_TOKEN(v, 9, "<0x0g>", 0); /* not hex: an ordinary piece */
    CHECK_EQ_INT(v->n_duplicate_ids, 0);
    cks_vocab_free(v);
}

/* Llama-2 style: BPE converted from SentencePiece, with byte fallback. */
static void sentencepiece_bpe(void)
{
    cks_vocab *v = parse(
        "{\"added_tokens\":[{\"id\":0,\"content\":\"<unk>\",\"special\":true},"
        "{\"id\":1,\"content\":\"<s>\",\"special\":true},{\"id\":2,\"content\":\"</s>\",\"special\":true}],"
        "\"normalizer\":{\"type\":\"Sequence\",\"normalizers\":[{\"type\":\"Prepend\",\"prepend\":\"\\u2581\"},"
        "{\"type\":\"Replace\",\"pattern\":{\"String\":\" \"},\"content\":\"\\u2581\"}]},"
        "\"pre_tokenizer\":null,\"decoder\":{\"type\":\"Sequence\",\"decoders\":[{\"type\":\"ByteFallback\"}]},"
        "\"model\":{\"type\":\"BPE\",\"byte_fallback\":true,\"vocab\":{\"<unk>\":0,\"<s>\":1,\"</s>\":2,"
        "\"<0x0A>\":3,\"\\u2581world\":4,\"hello\":5},\"merges\":[\"\\u2581 world\"]}}");
    CHECK(v != NULL);
    if (!v)
        return;
    CHECK(!v->byte_level && v->metaspace && v->byte_fallback);
    CHECK_EQ_INT(v->n, 6);
    CHECK_EQ_INT(v->n_duplicate_ids, 0); /* added tokens restating their vocab entry */
    EXPECT_TOKEN(v, 1, "<s>", CKS_TOKEN_ADDED | CKS_TOKEN_SPECIAL);
    EXPECT_TOKEN(v, 3, "\n", CKS_TOKEN_BYTE);
    EXPECT_TOKEN(v, 4, " world", 0);
    cks_vocab_free(v);

    /* without byte fallback "<0x0A>" is just text */
    v = parse("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"<0x0A>\":0},\"merges\":[]}}");
    CHECK(v && !v->byte_fallback);
    if (v)
        EXPECT_TOKEN(v, 0, "<0x0A>", 0);
    cks_vocab_free(v);
}

/* BERT: word-initial pieces gain a leading space, "##" pieces lose the prefix. */
static const char wordpiece[] =
    "{\"added_tokens\":[{\"id\":0,\"content\":\"[PAD]\",\"special\":true},"
    "{\"id\":1,\"content\":\"[UNK]\",\"special\":true},{\"id\":2,\"content\":\"[CLS]\",\"special\":true}],"
    "\"pre_tokenizer\":{\"type\":\"BertPreTokenizer\"},"
    "\"model\":{\"type\":\"WordPiece\",\"unk_token\":\"[UNK]\",\"continuing_subword_prefix\":\"##\","
    "\"max_input_chars_per_word\":100,\"vocab\":{\"[PAD]\":0,\"[UNK]\":1,\"[CLS]\":2,\"world\":3,\"##ld\":4,"
    "\"hello\":5,\"##\":6}}}";

static void wordpiece_vocab(void)
{
    cks_vocab *v = parse(wordpiece);
    CHECK(v != NULL);
    if (!v)
        return;
    CHECK_EQ_INT(v->model, CKS_TOK_WORDPIECE);
    CHECK_EQ_INT(v->n, 7);
    EXPECT_TOKEN(v, 0, "[PAD]", CKS_TOKEN_ADDED | CKS_TOKEN_SPECIAL);
    EXPECT_TOKEN(v, 3, " world", 0);
    EXPECT_TOKEN(v, 4, "ld", CKS_TOKEN_CONTINUATION);
    EXPECT_TOKEN(v, 5, " hello", 0);
    EXPECT_TOKEN(v, 6, " ##", 0); /* the bare prefix is a word of its own */
    cks_vocab_free(v);

    /* another prefix, and a WordLevel vocabulary taken as written */
    v = parse("{\"model\":{\"type\":\"WordPiece\",\"continuing_subword_prefix\":\"@@\",\"vocab\":{\"@@x\":0}}}");
    CHECK(v != NULL);
    if (v)
        EXPECT_TOKEN(v, 0, "x", CKS_TOKEN_CONTINUATION);
    cks_vocab_free(v);
    v = parse("{\"model\":{\"type\":\"WordLevel\",\"vocab\":{\"a b\":0,\"\\u2581c\":1}}}");
    CHECK(v && v->model == CKS_TOK_WORDLEVEL);
    if (v) {
        EXPECT_TOKEN(v, 0, "a b", 0);
        EXPECT_TOKEN(v, 1, " c", 0);
    }
    cks_vocab_free(v);
}

static cks_vocab_match *match(const cks_vocab *a, const cks_vocab *b, bool skip_special)
{
    cks_vocab_match *m = NULL;
    cks_vocab_match_opts opts = {.skip_special = skip_special};
    cks_diag diag;
    if (a && b && cks_vocab_match_run(a, b, &opts, &m, &diag) != CKS_OK)
        fprintf(stderr, "  match: %s\n", diag.text);
    return m;
}

/*
 * Gemma 3 style: a BPE over "▁"-spelt text with byte fallback, whose added_tokens restate some
 * vocab pieces (runs of spaces, "\n", "<mask>"). A non-special added token whose content is
 * the piece at its id is that model token and reads as the piece: "▁▁" is two spaces, as
 * byte-level "ĠĠ" is (before, it stayed "▁▁" and matched nothing across families). A special
 * one, or one whose content differs from the piece at its id or has no piece, stays verbatim.
 */
static void added_restating_vocab(void)
{
    cks_vocab *v = parse(
        "{\"added_tokens\":["
        "{\"id\":0,\"content\":\"<pad>\",\"special\":true,\"normalized\":false},"
        "{\"id\":3,\"content\":\"\\u2581\\u2581\",\"special\":false,\"normalized\":false},"
        "{\"id\":4,\"content\":\"\\n\",\"special\":false,\"normalized\":false},"
        "{\"id\":5,\"content\":\"\\u2581\\u2581\\u2581\",\"special\":true,\"normalized\":false},"
        "{\"id\":6,\"content\":\"\\u2581x\",\"special\":false,\"normalized\":false},"
        "{\"id\":7,\"content\":\"<0x41>\",\"special\":false,\"normalized\":false},"
        "{\"id\":9,\"content\":\"\\u2581new\",\"special\":false,\"normalized\":false}],"
        "\"normalizer\":{\"type\":\"Replace\",\"pattern\":{\"String\":\" \"},\"content\":\"\\u2581\"},"
        "\"decoder\":{\"type\":\"Sequence\",\"decoders\":[{\"type\":\"Replace\",\"pattern\":"
        "{\"String\":\"\\u2581\"},\"content\":\" \"},{\"type\":\"ByteFallback\"},{\"type\":\"Fuse\"}]},"
        "\"model\":{\"type\":\"BPE\",\"byte_fallback\":true,\"vocab\":{\"<pad>\":0,\"\\u2581the\":1,"
        "\"the\":2,\"\\u2581\\u2581\":3,\"\\n\":4,\"\\u2581\\u2581\\u2581\":5,\"\\u2581y\":6,"
        "\"<0x41>\":7,\"\\u2581\\u2581\\u2581\\u2581\":8},\"merges\":[]}}");
    CHECK(v != NULL);
    if (!v)
        return;
    CHECK(!v->byte_level && v->metaspace && v->byte_fallback);
    CHECK_EQ_INT(v->n, 10);
    CHECK_EQ_INT(v->n_duplicate_ids, 0);
    EXPECT_TOKEN(v, 0, "<pad>", CKS_TOKEN_ADDED | CKS_TOKEN_SPECIAL);
    EXPECT_TOKEN(v, 1, " the", 0);
    EXPECT_TOKEN(v, 3, "  ", CKS_TOKEN_ADDED);                 /* restates its piece: the model's reading */
    EXPECT_TOKEN(v, 4, "\n", CKS_TOKEN_ADDED);
    EXPECT_TOKEN(v, 5, "\xe2\x96\x81\xe2\x96\x81\xe2\x96\x81", CKS_TOKEN_ADDED | CKS_TOKEN_SPECIAL); /* special */
    EXPECT_TOKEN(v, 6, "\xe2\x96\x81x", CKS_TOKEN_ADDED);    /* the piece at id 6 is another string */
    EXPECT_TOKEN(v, 7, "A", CKS_TOKEN_ADDED | CKS_TOKEN_BYTE); /* the model reads "<0x41>" as the byte */
    EXPECT_TOKEN(v, 8, "    ", 0);
    EXPECT_TOKEN(v, 9, "\xe2\x96\x81new", CKS_TOKEN_ADDED);  /* no piece at id 9 */
    /* so the run of two spaces meets byte-level BPE's "ĠĠ" */
    cks_vocab *b = parse(bpe_byte_level);
    cks_vocab_match *m = match(v, b, true);
    CHECK(m != NULL);
    if (m) {
        bool paired = false;
        for (size_t i = 0; i < m->n_pairs; i++)
            paired |= m->pairs[i].id_a == 3 && m->pairs[i].id_b == 3;
        CHECK_MSG(paired, "\"  \" (id 3) not paired with byte-level \"ĠĠ\" (id 3)");
    }
    cks_vocab_match_free(m);
    cks_vocab_free(b);
    cks_vocab_free(v);
}

static void match_across_styles(void)
{
    cks_vocab *a = parse(bpe_byte_level), *b = parse(unigram), *w = parse(wordpiece);
    cks_vocab_match *m = match(a, b, false);
    CHECK(m != NULL);
    if (m) {
        /*
         * A: hello, " world", "\n", "  ", é, NUL, <|endoftext|>, "Ġraw", 7F AD, 日本  (10 distinct)
         * B: <unk>, " world", "\n", "  ", é, hello, NUL, " " (ids 7 and 8: one duplicate), <0x0g>  (9 distinct)
         * shared: hello, " world", "\n", "  ", é, NUL = 6; Jaccard 6 / (10 + 9 - 6) = 6/13.
         */
        static const cks_token_pair want[] = {{0, 5}, {1, 1}, {2, 2}, {3, 3}, {4, 4}, {5, 6}};
        CHECK_EQ_INT(m->n_a, 10);
        CHECK_EQ_INT(m->n_b, 9);
        CHECK_EQ_INT(m->n_dup_a, 0);
        CHECK_EQ_INT(m->n_dup_b, 1);
        CHECK_EQ_INT(m->n_shared, 6);
        CHECK_EQ_INT(m->n_pairs, 6);
        CHECK_NEAR(m->jaccard, 6.0 / 13.0, 1e-12);
        CHECK_EQ_INT(m->n_same_id, 4);
        for (size_t i = 0; i < 6 && i < m->n_pairs; i++)
            CHECK_MSG(m->pairs[i].id_a == want[i].id_a && m->pairs[i].id_b == want[i].id_b,
                      "pair %zu: (%u,%u) want (%u,%u)", i, m->pairs[i].id_a, m->pairs[i].id_b, want[i].id_a,
                      want[i].id_b);
    }
    cks_vocab_match_free(m);

    /* the duplicate " " in B is represented by its lowest id (7) */
    m = match(b, b, false);
    CHECK(m && m->n_shared == 9 && m->n_same_id == 9 && m->n_dup_a == 1 && m->jaccard == 1.0);
    if (m)
        for (size_t i = 0; i < m->n_pairs; i++)
            CHECK(m->pairs[i].id_a != 8);
    cks_vocab_match_free(m);

    /* WordPiece: "world" (word start) is " world"; "hello" is " hello", which A does not hold */
    m = match(a, w, true);
    CHECK(m != NULL);
    if (m) {
        /* specials skipped: A has 9 distinct, W has world, ld, hello, ## = 4 */
        CHECK_EQ_INT(m->n_a, 9);
        CHECK_EQ_INT(m->n_b, 4);
        CHECK_EQ_INT(m->n_shared, 1);
        CHECK(m->n_pairs == 1 && m->pairs[0].id_a == 1 && m->pairs[0].id_b == 3);
        CHECK_NEAR(m->jaccard, 1.0 / 12.0, 1e-12);
    }
    cks_vocab_match_free(m);
    /* specials match by their exact text when kept */
    m = match(w, w, false);
    CHECK(m && m->n_shared == 7);
    cks_vocab_match_free(m);
    /* empty vocabularies */
    cks_vocab *e = parse("{\"model\":{\"type\":\"BPE\",\"vocab\":{},\"merges\":[]}}");
    m = match(e, a, false);
    CHECK(m && m->n_shared == 0 && m->jaccard == 0.0);
    cks_vocab_match_free(m);
    m = match(e, e, false);
    CHECK(m && m->n_shared == 0 && m->jaccard == 0.0);
    cks_vocab_match_free(m);
    cks_vocab_free(e);
    cks_vocab_free(a);
    cks_vocab_free(b);
    cks_vocab_free(w);
}

/* A vocabulary of many tokens in a shuffled order against the same one in another order. */
static void large_shuffled(void)
{
    enum { N = 20000 };
    size_t cap = (size_t)N * 40 + 256;
    char *ja = malloc(cap), *jb = malloc(cap);
    size_t ka = 0, kb = 0;
    cks_vocab *a = NULL, *b = NULL;
    cks_vocab_match *m = NULL;
    if (!ja || !jb)
        goto out;
    ka += (size_t)snprintf(ja + ka, cap - ka, "{\"pre_tokenizer\":{\"type\":\"ByteLevel\"},\"model\":{\"type\":"
                                              "\"BPE\",\"merges\":[],\"vocab\":{");
    kb += (size_t)snprintf(jb + kb, cap - kb, "{\"model\":{\"type\":\"Unigram\",\"vocab\":[");
    for (unsigned i = 0; i < N; i++) {
        /* A: "Ġt<i>" at id i; B: "▁t<j>" at position i with j = (i * 7919) mod N (a bijection) */
        unsigned j = (unsigned)(((unsigned long)i * 7919u) % N);
        ka += (size_t)snprintf(ja + ka, cap - ka, "%s\"\\u0120t%u\":%u", i ? "," : "", i, i);
        kb += (size_t)snprintf(jb + kb, cap - kb, "%s[\"\\u2581t%u\",-1.0]", i ? "," : "", j);
    }
    ka += (size_t)snprintf(ja + ka, cap - ka, "}}}");
    kb += (size_t)snprintf(jb + kb, cap - kb, "]}}");
    a = parse(ja);
    b = parse(jb);
    m = match(a, b, false);
    CHECK(m && m->n_shared == N && m->n_pairs == N);
    if (m && m->n_pairs == N) {
        size_t bad = 0;
        for (unsigned k = 0; k < N; k++) {
            /* pairs sorted by id_a; B holds t<i> at the position p with p * 7919 = i (mod N) */
            const cks_token *tb = cks_vocab_find_id(b, m->pairs[k].id_b);
            char want[32];
            int len = snprintf(want, sizeof want, " t%u", k);
            bad += m->pairs[k].id_a != k || !tb || tb->len != (uint32_t)len || memcmp(tb->text, want, (size_t)len) != 0;
        }
        CHECK_EQ_INT(bad, 0);
    }
out:
    cks_vocab_match_free(m);
    cks_vocab_free(a);
    cks_vocab_free(b);
    free(ja);
    free(jb);
}

static void malformed(void)
{
    static const struct {
        const char *json;
        cks_err want;
    } cases[] = {
        {"not json", CKS_ERR_INVALID_ARG},
        {"{\"version\":\"1.0\"}", CKS_ERR_INVALID_ARG},
        {"{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":-1}}}", CKS_ERR_INVALID_ARG},
        {"{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":1.5}}}", CKS_ERR_INVALID_ARG},
        {"{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":\"1\"}}}", CKS_ERR_INVALID_ARG},
        {"{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":4294967296}}}", CKS_ERR_INVALID_ARG},
        {"{\"model\":{\"type\":\"Unigram\",\"vocab\":[[1,2]]}}", CKS_ERR_INVALID_ARG},
        {"{\"model\":{\"type\":\"Unigram\",\"vocab\":{\"a\":0}}}", CKS_ERR_INVALID_ARG},
        {"{\"model\":{\"type\":\"BPE\",\"vocab\":[[\"a\",0]]}}", CKS_ERR_INVALID_ARG},
        {"{\"model\":{\"type\":\"BPE\",\"vocab\":{}},\"added_tokens\":[{\"id\":1}]}", CKS_ERR_INVALID_ARG},
        {"{\"model\":{\"type\":\"BPE\",\"vocab\":{}},\"added_tokens\":[{\"content\":\"x\"}]}", CKS_ERR_INVALID_ARG},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        cks_vocab *v = (cks_vocab *)1;
        cks_diag diag = {{0}};
        cks_err err = cks_vocab_parse(cases[i].json, strlen(cases[i].json), &v, &diag);
        CHECK_MSG(err == cases[i].want && v == NULL && diag.text[0], "case %zu: %s", i, cks_strerror(err));
    }
    /* too large is refused before anything is read */
    cks_vocab *v = (cks_vocab *)1;
    CHECK_EQ_INT(cks_vocab_parse("{}", (size_t)CKS_TOK_MAX_JSON + 1, &v, NULL), CKS_ERR_UNSUPPORTED);
    CHECK(v == NULL);
    /* a piece longer than the bound */
    size_t big = CKS_TOK_MAX_PIECE + 64;
    char *json = malloc(big + 128);
    if (json) {
        int k = snprintf(json, 128, "{\"model\":{\"type\":\"WordLevel\",\"vocab\":{\"");
        memset(json + k, 'a', CKS_TOK_MAX_PIECE + 1);
        strcpy(json + k + CKS_TOK_MAX_PIECE + 1, "\":0}}}");
        CHECK_EQ_INT(cks_vocab_parse(json, strlen(json), &v, NULL), CKS_ERR_UNSUPPORTED);
        free(json);
    }
    /* duplicate ids: the first entry in the file is kept, the other counted */
    v = parse("{\"model\":{\"type\":\"WordLevel\",\"vocab\":{\"a\":0,\"b\":0,\"c\":1}}}");
    CHECK(v && v->n == 2 && v->n_duplicate_ids == 1);
    if (v)
        EXPECT_TOKEN(v, 0, "a", 0);
    cks_vocab_free(v);
    /* an added token beyond the vocab extends it; one replacing a different string wins */
    v = parse("{\"model\":{\"type\":\"WordLevel\",\"vocab\":{\"a\":0}},\"added_tokens\":[{\"id\":0,\"content\":"
              "\"<pad>\",\"special\":true},{\"id\":5,\"content\":\"<x>\"}]}");
    CHECK(v && v->n == 2 && v->n_duplicate_ids == 0);
    if (v) {
        EXPECT_TOKEN(v, 0, "<pad>", CKS_TOKEN_ADDED | CKS_TOKEN_SPECIAL);
        EXPECT_TOKEN(v, 5, "<x>", CKS_TOKEN_ADDED);
    }
    cks_vocab_free(v);
    cks_vocab_free(NULL);
    cks_vocab_match_free(NULL);
    CHECK_EQ_INT(cks_vocab_load_file("/nonexistent/tokenizer.json", &v, NULL), CKS_ERR_NOT_FOUND);
}

/*
 * The synthetic families' tokenizers (tests/tools/gen_family.py): the GLM-style base is
 * byte-level BPE, the independent model's is SentencePiece Unigram with most strings shared
 * under other ids. Generated here (glm style only, well under a second) when python3 with
 * numpy is available; CKS_FAMILY_DIR points at an existing output instead.
 */
static void family_tokenizers(void)
{
    const char *dir = getenv("CKS_FAMILY_DIR"), *root = getenv("CKS_ROOT");
    char tmpl[] = "/tmp/cks-tok-XXXXXX", cmd[8192], pa[4096], pb[4096];
    bool made = false;
    cks_vocab *a = NULL, *b = NULL;
    cks_vocab_match *m = NULL;
    cks_diag diag;
    if (!dir) {
        if (access("/usr/bin/python3", X_OK) != 0 || system("/usr/bin/python3 -c 'import numpy' 2>/dev/null") != 0)
            SKIP("/usr/bin/python3 with numpy not available to run gen_family.py");
        if (!mkdtemp(tmpl))
            SKIP("no temporary directory");
        snprintf(cmd, sizeof cmd, "/usr/bin/python3 %s/tests/tools/gen_family.py %s --style glm >/dev/null",
                 root ? root : ".", tmpl);
        made = true;
        dir = tmpl;
        CHECK_MSG(system(cmd) == 0, "%s failed", cmd);
    }
    snprintf(pa, sizeof pa, "%s/glm/base/tokenizer.json", dir);
    snprintf(pb, sizeof pb, "%s/glm/independent/tokenizer.json", dir);
    CHECK_EQ_INT(cks_vocab_load_file(pa, &a, &diag), CKS_OK);
    CHECK_EQ_INT(cks_vocab_load_file(pb, &b, &diag), CKS_OK);
    m = match(a, b, true);
    CHECK(a && b && m && a->byte_level && b->model == CKS_TOK_UNIGRAM);
    if (a && b && m) {
        /* the 256 byte tokens are spelt "Ā".."ÿ" in one and "<0xNN>"/letters in the other: all shared */
        size_t bytes_shared = 0;
        for (size_t i = 0; i < m->n_pairs; i++) {
            const cks_token *t = cks_vocab_find_id(a, m->pairs[i].id_a);
            bytes_shared += t && t->len == 1;
        }
        CHECK_EQ_INT(bytes_shared, 256);
        CHECK(m->n_shared >= 0.8 * (double)m->n_a);
        CHECK(m->n_same_id < m->n_shared / 10);
        CHECK(m->jaccard > 0.7 && m->jaccard < 1.0);
    }
    cks_vocab_match_free(m);
    cks_vocab_free(a);
    cks_vocab_free(b);
    if (made) {
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpl);
        CHECK(system(cmd) == 0);
    }
}

/*
 * Truncations and byte mutations of every sample: each parse either fails with a message or
 * yields a consistent vocabulary (ids strictly increasing, texts inside the pool). Run under
 * the sanitizer build this is a small deterministic fuzz of the parser.
 */
/* True when two vocabularies hold the same tokens (ids, bytes, flags) and settings. */
static bool same_vocab(const cks_vocab *a, const cks_vocab *b)
{
    if (!a || !b || a->n != b->n || a->model != b->model || a->byte_level != b->byte_level ||
        a->byte_fallback != b->byte_fallback)
        return false;
    for (size_t i = 0; i < a->n; i++) {
        const cks_token *x = &a->tokens[i], *y = &b->tokens[i];
        if (x->id != y->id || x->len != y->len || x->flags != y->flags || memcmp(x->text, y->text, x->len) != 0)
            return false;
    }
    return true;
}

/*
 * model.merges is emptied by a plain scan before cJSON parses the text (it is most of a real
 * file and never read). Whatever the merges hold (quotes, brackets and backslashes inside
 * strings, nested arrays, odd spacing), and wherever "merges" or "model" also appear as names
 * elsewhere, the vocabulary must be the one read from the same file without any merges.
 */
static void merges_skipped(void)
{
    static const char *const merges[] = {
        "[\"a \\\"]\\\" b\", \"\\\\\\\\\", \"x\\\\\\\"y\", \"}{\"]",
        "[[\"{\", \"}\"], [\"[\", \"]\"], [\"\\\\\", \"\\\"\"]]",
        "  [ \"\\u0120 w\" ,\n\t\"e r\" ]  ",
        "[]",
    };
    char with[1024], without[1024];
    for (size_t i = 0; i < sizeof merges / sizeof merges[0]; i++) {
        /* a top-level "merges", a nested "model" before the real one, a token named "merges" */
        snprintf(with, sizeof with,
                 "{\"merges\":[1,2],\"post_processor\":{\"model\":{\"vocab\":{\"zz\":0},\"merges\":[]}},"
                 "\"decoder\":{\"type\":\"ByteLevel\"},\"model\" : {\"type\":\"BPE\",\"merges\" :%s,"
                 "\"vocab\":{\"merges\":0,\"\\u0120x\":1,\"a]\\\"\":2}},"
                 "\"added_tokens\":[{\"id\":3,\"content\":\"<s>\",\"special\":true}]}",
                 merges[i]);
        snprintf(without, sizeof without,
                 "{\"post_processor\":null,\"decoder\":{\"type\":\"ByteLevel\"},\"model\":{\"type\":\"BPE\","
                 "\"vocab\":{\"merges\":0,\"\\u0120x\":1,\"a]\\\"\":2}},"
                 "\"added_tokens\":[{\"id\":3,\"content\":\"<s>\",\"special\":true}]}");
        cks_vocab *a = parse(with), *b = parse(without);
        CHECK_MSG(a && b && same_vocab(a, b) && a->n == 4, "merges case %zu", i);
        if (a)
            EXPECT_TOKEN(a, 1, " x", 0);
        cks_vocab_free(a);
        cks_vocab_free(b);
    }
    /* without "type", merges that are there make the model BPE, emptied or not */
    cks_vocab *v = parse("{\"model\":{\"vocab\":{\"a\":0},\"merges\":[\"a a\"]}}");
    CHECK(v && v->model == CKS_TOK_BPE);
    cks_vocab_free(v);
    /* merges the scan cannot close leave the text to cJSON, which refuses it */
    static const char *const broken[] = {
        "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[\"a]}}",
        "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[[\"a\"]}}",
        "{\"model\":{\"type\":\"BPE\",\"merges\":[\"a\\\"]}, \"vocab\":{\"a\":0}}}",
    };
    for (size_t i = 0; i < sizeof broken / sizeof broken[0]; i++) {
        cks_diag diag = {{0}};
        v = (cks_vocab *)1;
        CHECK_MSG(cks_vocab_parse(broken[i], strlen(broken[i]), &v, &diag) == CKS_ERR_INVALID_ARG && v == NULL,
                  "broken case %zu", i);
    }
}

static void mutations(void)
{
    const char *const samples[] = {bpe_byte_level, unigram, wordpiece};
    uint64_t state = 0x9e3779b97f4a7c15u;
    size_t parsed_ok = 0, failed = 0;
    for (size_t s = 0; s < sizeof samples / sizeof samples[0]; s++) {
        size_t len = strlen(samples[s]);
        char *buf = malloc(len + 1);
        if (!buf)
            return;
        for (size_t round = 0; round < len + 1500; round++) {
            size_t use = len;
            memcpy(buf, samples[s], len + 1);
            if (round <= len) {
                use = round; /* every truncation */
            } else {
                for (int k = 0; k < 3; k++) { /* xorshift64: a few random byte changes */
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    buf[state % len] = (char)(state >> 32);
                }
            }
            cks_vocab *v = NULL;
            cks_diag diag = {{0}};
            if (cks_vocab_parse(buf, use, &v, &diag) != CKS_OK) {
                CHECK(v == NULL && diag.text[0]);
                failed++;
                continue;
            }
            parsed_ok++;
            for (size_t i = 0; v && i < v->n; i++) {
                const cks_token *t = &v->tokens[i];
                CHECK(i == 0 || t->id > v->tokens[i - 1].id);
                CHECK(t->text >= v->pool && t->len <= CKS_TOK_MAX_PIECE + 1);
                CHECK(cks_vocab_find_id(v, t->id) == t);
            }
            cks_vocab_match *m = match(v, v, false);
            CHECK(m && m->n_shared == m->n_a && m->n_same_id == m->n_shared);
            cks_vocab_match_free(m);
            cks_vocab_free(v);
        }
        free(buf);
    }
    /* both outcomes occurred: the mutations reached the parser's checks and its success path */
    CHECK(parsed_ok > 100 && failed > 100);
}

TEST_MAIN(T(byte_level_bpe), T(sentencepiece_unigram), T(sentencepiece_bpe), T(wordpiece_vocab),
          T(added_restating_vocab), T(match_across_styles), T(large_shuffled), T(malformed), T(merges_skipped), T(family_tokenizers),
          T(mutations))
