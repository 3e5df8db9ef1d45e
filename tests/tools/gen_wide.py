#!/usr/bin/python3
"""A wide model family for fingerprint tests at the real width of 100B-class models.

    /usr/bin/python3 tests/tools/gen_wide.py OUT_DIR [--seed N] [--vocab V] [--layers L]

Why: the acceptance families of gen_family.py are 128 wide, so a fingerprint holds all their
embedding rows and T4 is exact. At hidden 4096 (GLM-4.5-Air, Solar-Open-100B) the rows T4 needs
(2,048 shared tokens) are 16.8 MB as bf16, more than the 10 MB fingerprint cap, which is the
case this family exercises. Everything else is kept small so the test stays fast: L decoder
layers (default 2), 8 heads of 128 (k/v 1024 x 4096, as GLM-4.5-Air's), a 128-wide MLP, tied
embeddings (no lm_head).

The vocabulary is byte-level BPE grown from every two- and three-letter lowercase piece (with
and without a leading space) and some longer words, so that, as in real vocabularies, a few
thousand of its tokens are the short pieces a fingerprint's reference list names. The
independent model's vocabulary keeps ~88 % of those strings under other ids.

Writes OUT_DIR/wide/{base,finetune,permuted,independent}/ (config.json, tokenizer.json,
model.safetensors) and OUT_DIR/manifest.json in gen_family's schema, with the pairs
wide/permuted (derived: only T4 sees it), wide/finetune (derived) and wide/independent
(not_derived).
"""
import argparse
import itertools
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gen_family as gf  # noqa: E402

CFG = dict(model_type="llama", hidden=4096, layers=2, heads=8, kv_heads=8, head_dim=128, inter=128,
           vocab=6144, tok_size=6144)
SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>"]


def pieces(rng):
    """Every 2- and 3-letter lowercase piece, then 4-7 letter words, in a seeded order."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    short = ["".join(p) for k in (2, 3) for p in itertools.product(letters, repeat=k)]
    short = [short[i] for i in rng.permutation(len(short))]
    return short + gf.word_pool(rng, 4000)


def tokenizers(rng_a, rng_b, size):
    byte_tokens = [gf.BYTE_CHARS[b] for b in range(256)]
    n_learned = size - 256 - len(SPECIALS)
    tok_a, merges_a = gf.grow_vocab(rng_a, 256 + n_learned, byte_tokens, pieces(rng_a))
    learned = tok_a[256:]
    kept = set(learned)
    for t in reversed(learned):  # drop ~12 % of the leaves, so every kept token's prefix stays
        if rng_b.random() < 0.12 and not any(o != t and o.startswith(t) for o in kept):
            kept.discard(t)
    kept_list = [t for t in learned if t in kept]
    tok_b, _ = gf.grow_vocab(rng_b, 256 + n_learned, byte_tokens + kept_list, gf.word_pool(rng_b, n_learned))
    rest = tok_b[256:]
    rest = [rest[i] for i in rng_b.permutation(len(rest))]
    indep = list(SPECIALS[::-1]) + rest + byte_tokens
    have = set(indep)
    merges_b = [f"{t[:-1]} {t[-1]}" for t in rest if len(t) > 1 and t[:-1] in have]
    return (gf.bpe_tokenizer(tok_a + SPECIALS, merges_a, SPECIALS),
            gf.bpe_tokenizer(indep, merges_b, SPECIALS))


def emit(out, tag, model, tokenizer, cfg):
    d = os.path.join(out, "wide", tag)
    tensors = [(nm, a, dt) for nm, a, dt, _ in gf.flatten(model) if nm != "lm_head.weight"]
    config = gf.config_json("llama", cfg, cfg["layers"])
    config["tie_word_embeddings"] = True
    files = gf.write_checkpoint(d, tensors, config, tokenizer)
    return {"dir": f"wide/{tag}", "style": "llama", "model_type": "llama", "num_hidden_layers": cfg["layers"],
            "mtp_layers": 0, "hidden_size": cfg["hidden"], "vocab_size": cfg["vocab"], "tokenizer": "bpe-byte-level",
            "tokenizer_size": len(tokenizer["model"]["vocab"]), "files": files, "sharded": False,
            "n_tensors": len(tensors)}


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out")
    ap.add_argument("--seed", type=int, default=20261128)
    ap.add_argument("--vocab", type=int, default=CFG["vocab"])
    ap.add_argument("--layers", type=int, default=CFG["layers"])
    args = ap.parse_args(argv)
    cfg = dict(CFG, vocab=args.vocab, tok_size=args.vocab, layers=args.layers)
    ss = np.random.SeedSequence([args.seed, 4096])
    r_base, r_indep, r_ft, r_perm, r_tok_a, r_tok_b = [np.random.default_rng(s) for s in ss.spawn(6)]
    tok_a, tok_b = tokenizers(r_tok_a, r_tok_b, cfg["tok_size"])
    base, _ = gf.make_model(r_base, cfg)
    indep, _ = gf.make_model(r_indep, cfg)
    ft, ft_info = gf.finetune(base, r_ft, cfg)
    perm = r_perm.permutation(cfg["hidden"])
    sign = np.where(r_perm.random(cfg["hidden"]) < 0.5, -1, 1)
    permuted = gf.permute_hidden(ft, perm, sign)
    permuted.pop("extra")
    os.makedirs(args.out, exist_ok=True)
    models = {"wide/base": emit(args.out, "base", base, tok_a, cfg),
              "wide/finetune": emit(args.out, "finetune", ft, tok_a, cfg),
              "wide/permuted": emit(args.out, "permuted", permuted, tok_a, cfg),
              "wide/independent": emit(args.out, "independent", indep, tok_b, cfg)}
    manifest = {"schema": gf.SCHEMA, "seed": args.seed, "models": models, "pairs": [
        {"name": "wide/finetune", "family": 1, "a": "wide/base", "b": "wide/finetune", "expect": "derived",
         "transform": {"kind": "finetune", "of": "wide/base", **ft_info}},
        {"name": "wide/permuted", "family": 2, "a": "wide/base", "b": "wide/permuted", "expect": "derived",
         "expect_tests": {"T2": "null", "T3": "null", "T4": "reject"},
         "transform": {"kind": "hidden_permutation", "of": "wide/finetune",
                       "perm": [int(x) for x in perm], "sign": [int(x) for x in sign]}},
        {"name": "wide/independent", "family": 3, "a": "wide/base", "b": "wide/independent",
         "expect": "not_derived", "expect_tests": {"T4": "null"},
         "transform": {"kind": "independent"}},
    ]}
    with open(os.path.join(args.out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
