/*
 * fingerprint: the fixed list of reference token strings whose embedding rows a fingerprint
 * keeps when the whole embedding matrix does not fit its size cap.
 *
 * Why a fixed list: two fingerprints made independently can only be aligned (T4) through
 * tokens both kept, so every fingerprint must pick from the same strings, in the same order
 * of priority. The strings are normalised token texts (tokenizer.h): a word start is spelled
 * with a leading space, as byte-level BPE ("Ġ") and SentencePiece ("▁") both decode to.
 * Order: common English words (with a leading space, bare, capitalised), digits and numbers,
 * printable ASCII, code pieces (versions 1-2 stop here: 3,382 strings); then (version 3)
 * every two-letter lowercase piece, bare and with a leading space, and every three-letter one
 * in a fixed scattered order. Modern vocabularies split numbers into digits, so the first
 * part alone leaves ~1,500 tokens in a 150k vocabulary, fewer than T4's 2,048; nearly every
 * BPE or SentencePiece vocabulary holds most two- and three-letter pieces. Appending keeps
 * older fingerprints' tokens a prefix of the new order. The list is part of the format:
 * changing it needs a new format version, so it is built from constant tables here and never
 * from data.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fingerprint_internal.h"

static const char *const words[] = {
    "the", "of", "and", "to", "in", "a", "is", "that", "for", "it", "as", "was", "with", "be", "by", "on", "not",
    "he", "this", "are", "or", "his", "from", "at", "which", "but", "have", "an", "had", "they", "you", "were",
    "their", "one", "all", "we", "can", "her", "has", "there", "been", "if", "more", "when", "will", "would", "who",
    "so", "no", "she", "other", "its", "may", "these", "what", "them", "than", "some", "him", "time", "into",
    "only", "do", "two", "first", "new", "could", "also", "any", "my", "like", "then", "our", "over", "such",
    "me", "out", "most", "made", "after", "should", "very", "between", "world", "many", "before", "must", "used",
    "through", "each", "where", "how", "people", "work", "year", "years", "well", "because", "good", "life",
    "same", "state", "three", "being", "still", "under", "day", "way", "long", "just", "here", "make", "while",
    "number", "water", "part", "little", "system", "place", "great", "during", "against", "without", "might",
    "around", "however", "both", "those", "own", "last", "back", "down", "those", "take", "right", "house",
    "school", "family", "country", "city", "government", "group", "high", "small", "large", "human", "power",
    "name", "home", "second", "end", "point", "line", "case", "hand", "area", "form", "data", "model", "value",
    "order", "level", "order", "public", "local", "general", "result", "information", "important", "different",
    "following", "example", "process", "history", "company", "science", "music", "light", "water", "food",
    "money", "health", "language", "body", "study", "book", "word", "words", "question", "answer", "problem",
    "children", "men", "women", "man", "woman", "war", "love", "death", "north", "south", "east", "west",
    "red", "black", "white", "green", "blue", "old", "young", "early", "late", "best", "better", "less", "much",
    "say", "said", "see", "know", "get", "go", "come", "think", "look", "want", "give", "use", "find", "tell",
    "ask", "seem", "feel", "try", "leave", "call", "keep", "begin", "help", "show", "play", "run", "move",
    "live", "believe", "bring", "happen", "write", "provide", "sit", "stand", "lose", "pay", "meet", "include",
    "continue", "set", "learn", "change", "lead", "understand", "watch", "follow", "stop", "create", "speak",
    "read", "allow", "add", "spend", "grow", "open", "walk", "win", "offer", "remember", "consider", "appear",
    "buy", "wait", "serve", "die", "send", "expect", "build", "stay", "fall", "cut", "reach", "kill", "remain",
    "january", "march", "april", "june", "july", "august", "october", "december", "monday", "friday",
    "zero", "four", "five", "six", "seven", "eight", "nine", "ten", "hundred", "thousand", "million",
};

static const char *const code[] = {
    "\n", "\n\n", "\t", " ", "  ", "   ", "    ", "        ", "def", "return", "import", "from", "class",
    "self", "print", "None", "True", "False", "null", "true", "false", "function", "const", "let", "var",
    "if", "else", "elif", "for", "while", "in", "not", "and", "or", "try", "except", "raise", "with", "as",
    "lambda", "yield", "int", "float", "str", "list", "dict", "void", "char", "struct", "static", "include",
    "public", "private", "new", "this", "std", "namespace", "using", "string", "main", "args", "len", "range",
    "()", "():", "):", "(self", "self.", "{", "}", "[", "]", "(", ")", ";", ":", ",", ".", "=", "==", "!=",
    "+=", "-=", "->", "=>", "::", "...", "//", "/*", "*/", "#", "##", "###", "**", "__", "''", "\"\"", "`",
    "```", "</", "/>", "<", ">", "<=", ">=", "&&", "||", "http", "https", "://", "www", ".com", ".org", "html",
    "div", "span", "href", "src", "json", "the", "ing", "ed", "ly", "tion", "er", "es", "s", "ment", "ness",
};

static cks_err push(fp_refs *r, const char *s, size_t len)
{
    if (r->n == FP_MAX_REFS)
        return CKS_OK;
    if (len == 0 || len > 64 || len > FP_REF_POOL - r->used)
        return CKS_OK;
    memcpy(r->pool + r->used, s, len);
    r->text[r->n] = r->pool + r->used;
    r->len[r->n] = (uint32_t)len;
    r->used += len;
    r->n++;
    return CKS_OK;
}

void fp_refs_build(fp_refs *r, uint32_t version)
{
    char buf[80];
    memset(r, 0, sizeof *r);
    for (size_t i = 0; i < sizeof words / sizeof words[0]; i++) {
        const char *w = words[i];
        int n = snprintf(buf, sizeof buf, " %s", w);
        push(r, buf, (size_t)n);
        push(r, w, strlen(w));
        n = snprintf(buf, sizeof buf, " %s", w);
        if (buf[1] >= 'a' && buf[1] <= 'z')
            buf[1] = (char)(buf[1] - 'a' + 'A');
        push(r, buf, (size_t)n);
    }
    for (int v = 0; v < 1000; v++) {
        int n = snprintf(buf, sizeof buf, "%d", v);
        push(r, buf, (size_t)n);
        n = snprintf(buf, sizeof buf, " %d", v);
        push(r, buf, (size_t)n);
    }
    for (int c = 33; c < 127; c++) {
        buf[0] = (char)c;
        push(r, buf, 1);
        buf[0] = ' ';
        buf[1] = (char)c;
        push(r, buf, 2);
    }
    for (size_t i = 0; i < sizeof code / sizeof code[0]; i++) {
        int n = snprintf(buf, sizeof buf, " %s", code[i]);
        push(r, code[i], strlen(code[i]));
        push(r, buf, (size_t)n);
    }
    if (version < 3)
        return;
    /* version 3: letter pieces */
    for (int i = 0; i < 26 * 26; i++) {
        buf[0] = ' ';
        buf[1] = (char)('a' + i / 26);
        buf[2] = (char)('a' + i % 26);
        push(r, buf + 1, 2);
        push(r, buf, 3);
    }
    /* 7919 is prime and 26^3 = 2^3 * 13^3, so i * 7919 mod 26^3 visits every piece once, spread
     * over the alphabet rather than in dictionary order (a capped list then holds all letters) */
    for (uint32_t i = 0; i < 26u * 26u * 26u; i++) {
        uint32_t k = (uint32_t)((uint64_t)i * 7919u % (26u * 26u * 26u));
        buf[0] = ' ';
        buf[1] = (char)('a' + k / 676);
        buf[2] = (char)('a' + k / 26 % 26);
        buf[3] = (char)('a' + k % 26);
        push(r, buf + 1, 3);
        push(r, buf, 4);
    }
}
