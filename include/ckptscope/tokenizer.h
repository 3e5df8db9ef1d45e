/*
 * ckptscope/tokenizer.h — tokenizer.json vocabularies, normalised so that the same token text
 * matches across tokenizer styles, and the matcher that pairs tokens of two models by string.
 *
 * Why: embedding and lm_head rows can only be compared between two models through tokens
 * both vocabularies hold (research/fingerprinting.md §3.7: the hidden-dimension alignment is
 * recovered from the embedding rows of shared tokens). Two tokenizers spell the same text
 * differently, so every piece is first turned back into the bytes it stands for:
 *   - byte-level BPE (GPT-2, Llama-3, Qwen, GLM-4): each character is one byte through GPT-2's
 *     byte-to-unicode table ("Ġ" = space, "Ċ" = newline; openai/gpt-2 src/encoder.py,
 *     bytes_to_unicode). Detected from a ByteLevel pre-tokenizer or decoder. A character
 *     outside the table keeps its UTF-8 bytes and is counted in n_undecodable.
 *   - SentencePiece (Unigram, and BPE converted from SentencePiece): U+2581 "▁" is a space;
 *     with byte fallback (model.byte_fallback, or any Unigram model) a piece "<0xNN>" is the
 *     single byte NN.
 *   - WordPiece (BERT): a piece starting with the continuing-subword prefix ("##") continues
 *     a word and loses the prefix; any other piece starts a word and gets a leading space,
 *     which is how byte-level and SentencePiece vocabularies spell a word start.
 *   - added_tokens keep their content verbatim (they are matched before any normalisation by
 *     the tokenizer itself) and override model.vocab at the same id. Except a non-special added
 *     token whose content is the model.vocab piece at its id: it is that model token, also
 *     matched literally, and is read as the piece (Gemma 3's "▁▁" at id 138 is two spaces).
 * Normalised strings are byte strings (they may hold any byte, NUL included).
 *
 * Bounds: a tokenizer.json of at most CKS_TOK_MAX_JSON bytes, at most CKS_TOK_MAX_VOCAB
 * entries, ids below CKS_TOK_MAX_ID, pieces of at most CKS_TOK_MAX_PIECE bytes (longer ones
 * are an error: no real vocabulary has them). Library only: never prints, never exits.
 */
#ifndef CKPTSCOPE_TOKENIZER_H
#define CKPTSCOPE_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ckptscope/checkpoint.h"
#include "ckptscope/error.h"

#define CKS_TOK_MAX_JSON (64u << 20)   /* real files: up to ~30 MB */
#define CKS_TOK_MAX_VOCAB 4000000u
#define CKS_TOK_MAX_ID 0x7fffffffu
#define CKS_TOK_MAX_PIECE 65536u

typedef enum cks_tok_model {
    CKS_TOK_UNKNOWN = 0,
    CKS_TOK_BPE,
    CKS_TOK_UNIGRAM,
    CKS_TOK_WORDPIECE,
    CKS_TOK_WORDLEVEL,
} cks_tok_model;

enum {
    CKS_TOKEN_ADDED = 1u << 0,        /* from added_tokens */
    CKS_TOKEN_SPECIAL = 1u << 1,      /* added_tokens with "special": true */
    CKS_TOKEN_CONTINUATION = 1u << 2, /* a WordPiece "##" piece */
    CKS_TOKEN_BYTE = 1u << 3,         /* a byte-fallback piece "<0xNN>" */
};

typedef struct cks_token {
    uint32_t id;
    uint32_t len;            /* bytes of text */
    const uint8_t *text;     /* normalised bytes, not NUL-terminated (points into the vocab) */
    uint32_t flags;          /* CKS_TOKEN_* */
} cks_token;

typedef struct cks_vocab {
    cks_tok_model model;
    bool byte_level;         /* pieces decoded through the GPT-2 byte table */
    bool metaspace;          /* U+2581 read as a space */
    bool byte_fallback;      /* "<0xNN>" read as a byte */
    size_t n;
    cks_token *tokens;       /* sorted by id, ids unique */
    size_t n_undecodable;    /* byte-level pieces with characters outside the table */
    size_t n_duplicate_ids;  /* model.vocab entries whose id was already taken (first kept) */
    uint8_t *pool;           /* storage of every text */
} cks_vocab;

/* Parse tokenizer.json (explicit length). */
cks_err cks_vocab_parse(const char *json, size_t len, cks_vocab **out, cks_diag *diag);


/* Read and parse a local tokenizer.json (a path to the file). */
cks_err cks_vocab_load_file(const char *path, cks_vocab **out, cks_diag *diag);

/* The token with this id, or NULL. */
const cks_token *cks_vocab_find_id(const cks_vocab *vocab, uint32_t id);

void cks_vocab_free(cks_vocab *vocab);

typedef struct cks_token_pair {
    uint32_t id_a, id_b;
} cks_token_pair;

typedef struct cks_vocab_match_opts {
    bool skip_special;       /* leave special added tokens out of pairs and counts */
} cks_vocab_match_opts;

typedef struct cks_vocab_match {
    size_t n_pairs;          /* == n_shared */
    cks_token_pair *pairs;   /* one pair per shared string, sorted by id_a */
    size_t n_a, n_b;         /* distinct normalised strings in each vocabulary */
    size_t n_shared;
    double jaccard;          /* n_shared / (n_a + n_b - n_shared); 0 when both are empty */
    size_t n_same_id;        /* pairs with id_a == id_b (1.0 of n_shared for a shared tokenizer) */
    size_t n_dup_a, n_dup_b; /* tokens whose string another token of the same vocabulary has:
                                the lowest id stands for the string */
} cks_vocab_match;

/* Pair the tokens of a and b whose normalised strings are identical. opts may be NULL. */
cks_err cks_vocab_match_run(const cks_vocab *a, const cks_vocab *b, const cks_vocab_match_opts *opts,
                            cks_vocab_match **out, cks_diag *diag);

void cks_vocab_match_free(cks_vocab_match *match);

#endif
