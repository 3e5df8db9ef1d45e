#!/usr/bin/python3
"""Synthetic model families for `ckptscope compare` tests and the demo.

    /usr/bin/python3 tests/tools/gen_family.py OUT_DIR [--seed N] [--style llama|glm|all]

Writes small checkpoints with real structure (Llama-style dense naming, and GLM-4.5-style
MoE naming: glm4_moe with a dense first layer, routers, e_score_correction_bias in F32,
shared experts and a multi-token-prediction block stored as model.layers.<num_hidden_layers>)
and OUT_DIR/manifest.json, which names each pair, the transformation applied and the
expected verdict. The six acceptance families (issue 6):

  1 finetune        small drifts, larger in early layers; most deep norm elements
                    bit-identical (as GLM-4.5-Air -> INTELLECT-3, research/peers.md §0.3)
  2 permuted        family 1 with one hidden-dimension permutation and sign flips applied
                    consistently (function-preserving for RMSNorm models): only an alignment
                    from shared-token embedding rows (T4) can see it
  3 independent     another initialisation of the same architecture whose norm gains share
                    the positive offset, so raw cosine is >= 0.98 while Pearson is ~0
                    (the January 2026 dispute in miniature)
  4 layers_inserted / layers_removed   family 1 with a fresh layer inserted or one dropped
  5 reshard         byte-identical tensors under other names, in other shards
  6 task_head       independent models that share only one correlated classification tensor

Layout: OUT_DIR/<style>/<tag>/ with tag in base, finetune, permuted, independent,
layers_inserted, layers_removed, reshard, base_cls, independent_cls; each holds config.json,
tokenizer.json and model.safetensors (llama style) or two shards plus
model.safetensors.index.json (glm style; the reshard always has three shards). Tensors are
BF16, router biases F32. The base tokenizer is byte-level BPE; the independent models' share
~88 % of its strings under other ids (byte-level BPE for llama, SentencePiece Unigram with
byte fallback for glm).

manifest.json:
  {"schema": "ckptscope-families/1", "seed": N,
   "models": {"<style>/<tag>": {"dir", "style", "model_type", "num_hidden_layers", "mtp_layers",
              "hidden_size", "vocab_size", "tokenizer", "tokenizer_size", "files", "sharded",
              "n_tensors"}},
   "pairs": [{"name", "family" (1-6), "a", "b" (model keys), "expect" ("derived" |
              "not_derived" | "identical"), "expect_tests" (optional: test -> "reject" when
              that test must reject its null, "null" when it must not), "transform": {"kind",
              ... finetune: per-layer norm_changed_fraction and weight_rel_drift;
              hidden_permutation: perm, sign, convention; layers_*: layer_map (for each layer of
              B the layer of A it came from, null for a new one); reshard_rename: rename
              (B name -> A name); shared_task_head: tensor, correlation}}],
   "demo": {"dispute", "finetune", "permuted", "reupload"} -> pair names}

Everything is seeded and deterministic; the safetensors writer below is independent of the
project's C writer on purpose (a bug in one should not hide in both).
"""
import argparse
import json
import os
import struct
import sys

import numpy as np

SCHEMA = "ckptscope-families/1"

STYLES = {
    "llama": dict(model_type="llama", hidden=128, layers=6, heads=4, kv_heads=2, head_dim=32,
                  inter=256, vocab=1024, tok_size=1024),
    "glm": dict(model_type="glm4_moe", hidden=128, layers=4, heads=4, kv_heads=2, head_dim=32,
                inter=256, moe_inter=64, experts=8, shared=1, first_dense=1, nextn=1, vocab=1024,
                tok_size=1000),
}


# ---------------------------------------------------------------- safetensors + bf16

def bf16_round(a):
    """Round float32 to the nearest bf16 (ties to even), returned as float32 holding it."""
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32).astype(np.uint64)
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint32) << 16
    return r.view(np.float32)


def to_bytes(arr, dtype):
    if dtype == "BF16":
        u = np.ascontiguousarray(arr, dtype=np.float32).view(np.uint32)
        if np.any(u & 0xFFFF):
            raise ValueError("BF16 tensor holds values bf16 cannot represent")
        return (u >> 16).astype("<u2").tobytes()
    if dtype == "F32":
        return np.ascontiguousarray(arr, dtype="<f4").tobytes()
    raise ValueError(dtype)


def write_safetensors(path, tensors):
    """tensors: list of (name, array, dtype) in file order."""
    header, blobs, offset = {"__metadata__": {"format": "pt"}}, [], 0
    for name, arr, dtype in tensors:
        raw = to_bytes(arr, dtype)
        header[name] = {"dtype": dtype, "shape": list(arr.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)
    return offset


def write_checkpoint(d, tensors, config, tokenizer, shards=1):
    """tensors: list of (name, array, dtype); shards > 1 writes an index."""
    os.makedirs(d, exist_ok=True)
    files = []
    if shards == 1:
        write_safetensors(os.path.join(d, "model.safetensors"), tensors)
        files.append("model.safetensors")
    else:
        per = -(-len(tensors) // shards)
        weight_map, total = {}, 0
        for s in range(shards):
            fname = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
            part = tensors[s * per:(s + 1) * per]
            total += write_safetensors(os.path.join(d, fname), part)
            for name, _, _ in part:
                weight_map[name] = fname
            files.append(fname)
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
            json.dump(index, f, indent=2)
        files.append("model.safetensors.index.json")
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    with open(os.path.join(d, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(tokenizer, f, ensure_ascii=False)
    return files


# ---------------------------------------------------------------- tokenizers

def byte_level_alphabet():
    """GPT-2's byte -> printable character map (openai/gpt-2 src/encoder.py, bytes_to_unicode):
    bytes that are printable Latin-1 map to themselves, the others to 256, 257, ... in byte order."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    out, extra = {}, 0
    for b in range(256):
        if b in keep:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + extra)
            extra += 1
    return out


BYTE_CHARS = byte_level_alphabet()
SPACE = BYTE_CHARS[ord(" ")]  # "Ġ"

CONSONANTS = "bcdfghjklmnprstvwz"
VOWELS = "aeiou"


def word_pool(rng, n):
    words = set()
    while len(words) < n:
        k = rng.integers(1, 4)
        w = "".join(CONSONANTS[rng.integers(len(CONSONANTS))] + VOWELS[rng.integers(len(VOWELS))]
                    for _ in range(k))
        if rng.random() < 0.3:
            w += CONSONANTS[rng.integers(len(CONSONANTS))]
        words.add(w)
    return sorted(words)


def grow_vocab(rng, size, existing, pool=None):
    """Byte-level BPE tokens grown one character at a time from a word pool, so that every
    merge joins two tokens already present: returns (tokens in creation order, merges)."""
    tokens, merges = list(existing), []
    have = set(tokens)
    pools = [pool] if pool is not None else []
    while len(tokens) < size:
        words = pools.pop(0) if pools else word_pool(rng, size)
        for i in rng.permutation(len(words)):
            w = words[i]
            text = (SPACE + w) if rng.random() < 0.6 else w
            for j in range(2, len(text) + 1):
                if len(tokens) >= size:
                    return tokens, merges
                piece = text[:j]
                if piece not in have:
                    tokens.append(piece)
                    have.add(piece)
                    merges.append(f"{text[:j - 1]} {text[j - 1]}")
    return tokens, merges


def bpe_tokenizer(ids_tokens, merges, specials):
    """tokenizer.json for a byte-level BPE (the GPT-2 / Llama-3 / GLM-4 style)."""
    vocab = {t: i for i, t in enumerate(ids_tokens)}
    added = [{"id": vocab[s], "content": s, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True} for s in specials]
    return {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                  "ignore_merges": False, "vocab": vocab, "merges": merges},
    }


def unigram_tokenizer(pieces):
    """tokenizer.json for a SentencePiece Unigram model with byte fallback."""
    vocab = [[p, 0.0 if i < 3 else -float(i) / 100.0] for i, p in enumerate(pieces)]
    added = [{"id": i, "content": p, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True} for i, p in enumerate(pieces[:3])]
    return {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "\u2581"}, {"type": "Replace", "pattern": {"String": " "},
                                                       "content": "\u2581"}]},
        "pre_tokenizer": None, "post_processor": None,
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "}, {"type": "ByteFallback"},
            {"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
        "model": {"type": "Unigram", "unk_id": 0, "vocab": vocab, "byte_fallback": True},
    }


def byte_level_to_text(token):
    """Raw bytes a byte-level token stands for (the inverse of BYTE_CHARS)."""
    inv = {c: b for b, c in BYTE_CHARS.items()}
    return bytes(inv[c] for c in token)


def to_sentencepiece(token):
    """The same text as a SentencePiece piece: spaces as U+2581, lone non-printable bytes as <0xNN>."""
    raw = byte_level_to_text(token)
    if len(raw) == 1 and not (0x21 <= raw[0] <= 0x7E):
        return f"<0x{raw[0]:02X}>"
    return raw.decode("latin-1").replace(" ", "\u2581")


def make_tokenizers(rng_base, rng_indep, size, specials):
    """The base tokenizer, and an independent one sharing most token strings under other ids."""
    byte_tokens = [BYTE_CHARS[b] for b in range(256)]
    n_learned = size - 256 - len(specials)
    base_tokens, base_merges = grow_vocab(rng_base, 256 + n_learned, byte_tokens)
    base = base_tokens + list(specials)
    # independent: keep ~88 % of the learned tokens (only leaves, so merges stay valid), grow the
    # rest from another word pool, and lay everything out in another order
    learned = base_tokens[256:]
    kept = set(learned)
    for t in reversed(learned):
        if rng_indep.random() < 0.12 and not any(o != t and o.startswith(t) for o in kept):
            kept.discard(t)
    kept_list = [t for t in learned if t in kept]
    indep_tokens, _ = grow_vocab(rng_indep, 256 + n_learned, byte_tokens + kept_list,
                                 word_pool(rng_indep, n_learned))
    rest = indep_tokens[256:]
    rest = [rest[i] for i in rng_indep.permutation(len(rest))]
    rot = int(rng_indep.integers(1, 255))
    bytes_order = byte_tokens[rot:] + byte_tokens[:rot]
    indep = list(specials[::-1]) + rest + bytes_order
    # merges of the independent vocabulary, regenerated from its own token set
    have = set(indep)
    indep_merges = [f"{t[:-1]} {t[-1]}" for t in rest if len(t) > 1 and t[:-1] in have]
    return (base, base_merges), (indep, indep_merges)


# ---------------------------------------------------------------- weights

class Gen:
    """One model's random structure: a per-dimension norm pattern shared across layers
    (real gains are strongly correlated between layers of one model, fingerprinting.md §0.1)
    and per-dimension embedding scales."""

    def __init__(self, rng, cfg):
        self.rng, self.cfg = rng, cfg
        d = cfg["hidden"]
        self.pattern = rng.standard_normal(d)
        self.col_scale = np.exp(0.3 * rng.standard_normal(d))

    def norm(self, offset, spread, rho=0.7):
        d = self.cfg["hidden"]
        g = offset + spread * (rho * self.pattern + np.sqrt(1 - rho * rho) * self.rng.standard_normal(d))
        return bf16_round(g.astype(np.float32))

    def mat(self, rows, cols, std):
        row_scale = np.exp(0.15 * self.rng.standard_normal((rows, 1)))
        return bf16_round((self.rng.standard_normal((rows, cols)) * std * row_scale).astype(np.float32))

    def vec(self, n, std, dtype=np.float32):
        return (self.rng.standard_normal(n) * std).astype(dtype)


# A tensor: (array, dtype, kind). Kinds say how the hidden (residual) basis enters the tensor,
# which is what a hidden permutation has to act on: "norm" (a [d] gain), "read" ([out, d]: columns
# in the residual basis), "write" ([d, in]: rows), "embed" ([V, d]: rows are residual vectors),
# "eh" (MTP's [d, 2d]: rows write, both column halves read) and "local" (not in the basis).

def layer_stats(l, n):
    t = l / max(n - 1, 1)
    return dict(attn_off=0.85 + 0.3 * t, ffn_off=0.95 + 0.2 * t, std=0.02 * (1 + 0.5 * t))


def make_layer(g, l, n_layers, moe):
    c, d = g.cfg, g.cfg["hidden"]
    s = layer_stats(l, n_layers)
    q_out, kv_out = c["heads"] * c["head_dim"], c["kv_heads"] * c["head_dim"]
    out_std = s["std"] / np.sqrt(2 * n_layers)
    L = {
        "input_layernorm.weight": (g.norm(s["attn_off"], 0.08), "BF16", "norm"),
        "post_attention_layernorm.weight": (g.norm(s["ffn_off"], 0.07), "BF16", "norm"),
        "self_attn.q_proj.weight": (g.mat(q_out, d, s["std"]), "BF16", "read"),
        "self_attn.k_proj.weight": (g.mat(kv_out, d, s["std"]), "BF16", "read"),
        "self_attn.v_proj.weight": (g.mat(kv_out, d, 0.8 * s["std"]), "BF16", "read"),
        "self_attn.o_proj.weight": (g.mat(d, q_out, out_std), "BF16", "write"),
    }
    if c["model_type"] == "glm4_moe":  # attention_bias: true
        L["self_attn.q_proj.bias"] = (bf16_round(g.vec(q_out, 0.05)), "BF16", "local")
        L["self_attn.k_proj.bias"] = (bf16_round(g.vec(kv_out, 0.05)), "BF16", "local")
        L["self_attn.v_proj.bias"] = (bf16_round(g.vec(kv_out, 0.02)), "BF16", "local")
    if not moe:
        L["mlp.gate_proj.weight"] = (g.mat(c["inter"], d, s["std"]), "BF16", "read")
        L["mlp.up_proj.weight"] = (g.mat(c["inter"], d, s["std"]), "BF16", "read")
        L["mlp.down_proj.weight"] = (g.mat(d, c["inter"], out_std), "BF16", "write")
        return L
    E, mi = c["experts"], c["moe_inter"]
    L["mlp.gate.weight"] = (g.mat(E, d, 0.02), "BF16", "read")
    # the selection-only bias is stored in F32 in GLM-4.5 and Solar (peers.md §5)
    L["mlp.gate.e_score_correction_bias"] = (g.vec(E, 1e-3) + np.float32(0.01), "F32", "local")
    for e in range(E):
        L[f"mlp.experts.{e}.gate_proj.weight"] = (g.mat(mi, d, s["std"]), "BF16", "read")
        L[f"mlp.experts.{e}.up_proj.weight"] = (g.mat(mi, d, s["std"]), "BF16", "read")
        L[f"mlp.experts.{e}.down_proj.weight"] = (g.mat(d, mi, out_std), "BF16", "write")
    si = mi * c["shared"]
    L["mlp.shared_experts.gate_proj.weight"] = (g.mat(si, d, s["std"]), "BF16", "read")
    L["mlp.shared_experts.up_proj.weight"] = (g.mat(si, d, s["std"]), "BF16", "read")
    L["mlp.shared_experts.down_proj.weight"] = (g.mat(d, si, out_std), "BF16", "write")
    return L


def make_mtp(g, n_layers):
    d = g.cfg["hidden"]
    L = make_layer(g, n_layers - 1, n_layers, moe=True)
    L["enorm.weight"] = (g.norm(1.0, 0.06), "BF16", "norm")
    L["hnorm.weight"] = (g.norm(1.0, 0.06), "BF16", "norm")
    L["eh_proj.weight"] = (g.mat(d, 2 * d, 0.02), "BF16", "eh")
    L["shared_head.norm.weight"] = (g.norm(1.5, 0.1), "BF16", "norm")
    return L


def make_model(rng, cfg):
    g = Gen(rng, cfg)
    d, V, n = cfg["hidden"], cfg["vocab"], cfg["layers"]
    row_scale = (1 + 0.5 * np.exp(-np.arange(V) / 200.0))[:, None]
    emb = rng.standard_normal((V, d)) * g.col_scale[None, :] * row_scale * 0.02
    moe = cfg["model_type"] == "glm4_moe"
    model = {
        "top": {
            "model.embed_tokens.weight": (bf16_round(emb.astype(np.float32)), "BF16", "embed"),
            "model.norm.weight": (g.norm(1.6, 0.1), "BF16", "norm"),
            "lm_head.weight": (g.mat(V, d, 0.02), "BF16", "read"),
        },
        "layers": [make_layer(g, l, n, moe and l >= cfg.get("first_dense", 0)) for l in range(n)],
        "mtp": [make_mtp(g, n)] if moe else [],
    }
    return model, g


def flatten(model):
    """(name, array, dtype, kind) in the order a checkpoint lists them."""
    out = [(k, *v) for k, v in model["top"].items() if k != "lm_head.weight"]
    for i, L in enumerate(model["layers"] + model["mtp"]):
        out += [(f"model.layers.{i}.{k}", *v) for k, v in L.items()]
    out.append(("lm_head.weight", *model["top"]["lm_head.weight"]))
    out += [(k, *v) for k, v in model.get("extra", {}).items()]
    return out


def bf16_step(arr, rng, fraction, max_ulps=2):
    """Move `fraction` of the elements by 1..max_ulps bf16 steps; the rest stay bit-identical."""
    u = np.ascontiguousarray(arr, dtype=np.float32).view(np.uint32) >> 16
    pick = rng.random(arr.shape) < fraction
    steps = rng.integers(1, max_ulps + 1, arr.shape) * np.where(rng.random(arr.shape) < 0.5, -1, 1)
    u = np.where(pick, u.astype(np.int64) + steps, u).astype(np.uint32)
    return (u << 16).view(np.float32), float(pick.mean())


def finetune(model, rng, cfg):
    """Small drifts, larger in early layers; norm gains move by whole bf16 steps in a fraction
    of elements that falls from ~90 % (layer 0) to ~4 % (last layer)."""
    n = len(model["layers"])
    info = {"norm_changed_fraction": [], "weight_rel_drift": []}

    def drift(T, frac, rel):
        arr, dt, kind = T
        if kind == "norm":
            return (bf16_step(arr, rng, frac)[0], dt, kind)
        if dt == "F32":
            return ((arr + rng.standard_normal(arr.shape).astype(np.float32) * np.float32(1e-4)), dt, kind)
        std = float(np.std(arr)) or 1e-3
        return (bf16_round(arr + (rng.standard_normal(arr.shape) * std * rel).astype(np.float32)), dt, kind)

    out = {"top": {}, "layers": [], "mtp": []}
    for k, T in model["top"].items():
        out["top"][k] = drift(T, 0.5, 0.01)
    for l, L in enumerate(model["layers"]):
        t = l / max(n - 1, 1)
        frac = 0.9 * np.exp(-4.0 * t) + 0.02
        rel = 0.04 * (1 - t) ** 2 + 0.003
        info["norm_changed_fraction"].append(round(float(frac), 4))
        info["weight_rel_drift"].append(round(float(rel), 4))
        out["layers"].append({k: drift(T, frac, rel) for k, T in L.items()})
    for L in model["mtp"]:
        out["mtp"].append({k: drift(T, 0.3, 0.01) for k, T in L.items()})
    return out, info


def permute_hidden(model, perm, sign):
    """new[i] = sign[i] * old[perm[i]] for every residual vector; exact on bf16 values."""
    s = sign.astype(np.float32)

    def apply(T):
        arr, dt, kind = T
        if kind == "norm":
            arr = arr[perm]
        elif kind in ("read", "embed"):
            arr = arr[:, perm] * s[None, :]
        elif kind == "write":
            arr = arr[perm, :] * s[:, None]
        elif kind == "eh":
            d = len(perm)
            arr = arr[perm, :] * s[:, None]
            arr = np.concatenate([arr[:, :d][:, perm] * s[None, :], arr[:, d:][:, perm] * s[None, :]], axis=1)
        return (np.ascontiguousarray(arr, dtype=np.float32), dt, kind)

    out = {"top": {k: apply(T) for k, T in model["top"].items()},
           "layers": [{k: apply(T) for k, T in L.items()} for L in model["layers"]],
           "mtp": [{k: apply(T) for k, T in L.items()} for L in model["mtp"]]}
    out["extra"] = {k: apply(T) for k, T in model.get("extra", {}).items()}
    return out


def with_layers(model, layers):
    out = dict(model)
    out["layers"] = layers
    return out


def config_json(style, cfg, n_layers):
    if style == "llama":
        return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": cfg["hidden"],
                "intermediate_size": cfg["inter"], "num_hidden_layers": n_layers,
                "num_attention_heads": cfg["heads"], "num_key_value_heads": cfg["kv_heads"],
                "head_dim": cfg["head_dim"], "vocab_size": cfg["vocab"], "rms_norm_eps": 1e-5,
                "rope_theta": 500000.0, "max_position_embeddings": 4096, "tie_word_embeddings": False,
                "hidden_act": "silu", "torch_dtype": "bfloat16"}
    return {"architectures": ["Glm4MoeForCausalLM"], "model_type": "glm4_moe", "hidden_size": cfg["hidden"],
            "intermediate_size": cfg["inter"], "moe_intermediate_size": cfg["moe_inter"],
            "num_hidden_layers": n_layers, "num_attention_heads": cfg["heads"],
            "num_key_value_heads": cfg["kv_heads"], "head_dim": cfg["head_dim"], "vocab_size": cfg["vocab"],
            "n_routed_experts": cfg["experts"], "n_shared_experts": cfg["shared"], "num_experts_per_tok": 2,
            "first_k_dense_replace": cfg["first_dense"], "num_nextn_predict_layers": cfg["nextn"],
            "n_group": 1, "topk_group": 1, "norm_topk_prob": True, "routed_scaling_factor": 1.0,
            "attention_bias": True, "use_qk_norm": False, "partial_rotary_factor": 0.5,
            "rms_norm_eps": 1e-5, "rope_theta": 1000000.0, "max_position_embeddings": 4096,
            "tie_word_embeddings": False, "hidden_act": "silu", "torch_dtype": "bfloat16"}


META_NAMES = {  # Meta's original Llama layout, for the renamed re-upload
    "input_layernorm.weight": "attention_norm.weight", "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_proj.weight": "attention.wq.weight", "self_attn.k_proj.weight": "attention.wk.weight",
    "self_attn.v_proj.weight": "attention.wv.weight", "self_attn.o_proj.weight": "attention.wo.weight",
    "mlp.gate_proj.weight": "feed_forward.w1.weight", "mlp.up_proj.weight": "feed_forward.w3.weight",
    "mlp.down_proj.weight": "feed_forward.w2.weight",
}


def rename_for_reshard(style, name):
    if style == "llama":
        top = {"model.embed_tokens.weight": "tok_embeddings.weight", "model.norm.weight": "norm.weight",
               "lm_head.weight": "output.weight"}
        if name in top:
            return top[name]
        parts = name.split(".", 3)  # model, layers, N, rest
        return f"layers.{parts[2]}.{META_NAMES[parts[3]]}"
    # GLM: as a multimodal wrapper would nest it
    return "language_model." + name


# ---------------------------------------------------------------- families

def generate_style(out, style, seed, manifest):
    cfg = dict(STYLES[style])
    n = cfg["layers"]
    ss = np.random.SeedSequence([seed, 1 if style == "llama" else 2])
    r_base, r_indep, r_ft, r_perm, r_ins, r_tok_a, r_tok_b, r_head = [np.random.default_rng(s) for s in ss.spawn(8)]
    specials = ["<|begin_of_text|>", "<|end_of_text|>"] if style == "llama" else ["[gMASK]", "<|endoftext|>"]
    (tok_a, merges_a), (tok_b, merges_b) = make_tokenizers(r_tok_a, r_tok_b, cfg["tok_size"], specials)
    tokenizer_a = bpe_tokenizer(tok_a, merges_a, specials)
    if style == "llama":
        tokenizer_b, tok_b_kind = bpe_tokenizer(tok_b, merges_b, specials), "bpe-byte-level"
    else:
        pieces = ["<unk>", "<s>", "</s>"] + [to_sentencepiece(t) for t in tok_b if t not in specials]
        tokenizer_b, tok_b_kind = unigram_tokenizer(pieces), "unigram-sentencepiece"

    base, _ = make_model(r_base, cfg)
    indep, _ = make_model(r_indep, cfg)
    ft, ft_info = finetune(base, r_ft, cfg)
    perm = r_perm.permutation(cfg["hidden"])
    sign = np.where(r_perm.random(cfg["hidden"]) < 0.5, -1, 1)
    permuted = permute_hidden(ft, perm, sign)
    permuted.pop("extra")

    # family 4: a fresh layer in the middle (like depth up-scaling with a new block), and one dropped
    at = n // 2
    fresh_g = Gen(r_ins, cfg)
    fresh = make_layer(fresh_g, at, n + 1, style == "glm" and at >= cfg.get("first_dense", 0))
    inserted = with_layers(ft, ft["layers"][:at] + [fresh] + ft["layers"][at:])
    drop = n // 2
    removed = with_layers(ft, ft["layers"][:drop] + ft["layers"][drop + 1:])

    # family 6: one correlated classification head on top of independent models
    labels = 4
    head_a = bf16_round((r_head.standard_normal((labels, cfg["hidden"])) * 0.02).astype(np.float32))
    noise = (r_head.standard_normal((labels, cfg["hidden"])) * 0.02).astype(np.float32)
    head_b = bf16_round(0.95 * head_a + np.sqrt(1 - 0.95 ** 2) * noise)
    base_cls = dict(base, extra={"score.weight": (head_a, "BF16", "read")})
    indep_cls = dict(indep, extra={"score.weight": (head_b, "BF16", "read")})

    shards = 2 if style == "glm" else 1
    models = {}

    def emit(tag, model, tokenizer, tok_kind, n_layers, shards_=shards, tensors=None):
        d = os.path.join(out, style, tag)
        ts = tensors if tensors is not None else [(nm, a, dt) for nm, a, dt, _ in flatten(model)]
        files = write_checkpoint(d, ts, config_json(style, cfg, n_layers), tokenizer, shards_)
        models[f"{style}/{tag}"] = {
            "dir": f"{style}/{tag}", "style": style, "model_type": cfg["model_type"], "num_hidden_layers": n_layers,
            "mtp_layers": cfg.get("nextn", 0), "hidden_size": cfg["hidden"], "vocab_size": cfg["vocab"],
            "tokenizer": tok_kind, "tokenizer_size": len(tokenizer["model"]["vocab"]), "files": files,
            "sharded": shards_ > 1, "n_tensors": len(ts)}

    emit("base", base, tokenizer_a, "bpe-byte-level", n)
    emit("finetune", ft, tokenizer_a, "bpe-byte-level", n)
    emit("permuted", permuted, tokenizer_a, "bpe-byte-level", n)
    emit("independent", indep, tokenizer_b, tok_b_kind, n)
    emit("layers_inserted", inserted, tokenizer_a, "bpe-byte-level", n + 1)
    emit("layers_removed", removed, tokenizer_a, "bpe-byte-level", n - 1)
    emit("base_cls", base_cls, tokenizer_a, "bpe-byte-level", n)
    emit("independent_cls", indep_cls, tokenizer_b, tok_b_kind, n)
    # family 5: the base's exact bytes, renamed, re-sharded into 3 files in another order
    flat = [(nm, a, dt) for nm, a, dt, _ in flatten(base)]
    rename = {rename_for_reshard(style, nm): nm for nm, _, _ in flat}
    inv = {v: k for k, v in rename.items()}
    order = r_perm.permutation(len(flat))
    resharded = [(inv[flat[i][0]], flat[i][1], flat[i][2]) for i in order]
    emit("reshard", None, tokenizer_a, "bpe-byte-level", n, shards_=3, tensors=resharded)

    p = f"{style}/"
    ft_transform = {"kind": "finetune", "of": p + "base", **ft_info,
                    "note": "norm gains move by whole bf16 steps in the listed fraction of elements per layer; "
                            "other tensors get Gaussian drift of the listed size relative to their std"}
    manifest["models"].update(models)
    manifest["pairs"] += [
        {"name": p + "finetune", "family": 1, "a": p + "base", "b": p + "finetune", "expect": "derived",
         "expect_tests": {"T1": "reject", "T2": "reject", "T3": "reject"}, "transform": ft_transform},
        {"name": p + "permuted", "family": 2, "a": p + "base", "b": p + "permuted", "expect": "derived",
         "expect_tests": {"T2": "null", "T3": "null", "T4": "reject"},
         "transform": {"kind": "hidden_permutation", "of": p + "finetune",
                       "convention": "new[i] = sign[i] * old[perm[i]] on every residual-basis axis; "
                                     "norm gains are permuted without signs",
                       "perm": [int(x) for x in perm], "sign": [int(x) for x in sign]}},
        {"name": p + "independent", "family": 3, "a": p + "base", "b": p + "independent", "expect": "not_derived",
         "expect_tests": {"T1": "null", "T2": "null", "T3": "null", "T4": "null"},
         "transform": {"kind": "independent", "note": "separate initialisation; norm gains share the positive "
                       "offset schedule (raw cosine >= 0.98, Pearson ~ 0); tokenizer shares most strings "
                       "under other ids"}},
        {"name": p + "layers_inserted", "family": 4, "a": p + "base", "b": p + "layers_inserted",
         "expect": "derived", "transform": {"kind": "layers_inserted", "of": p + "finetune", "inserted_at": [at],
                                            "layer_map": list(range(at)) + [None] + list(range(at, n))}},
        {"name": p + "layers_removed", "family": 4, "a": p + "base", "b": p + "layers_removed",
         "expect": "derived", "transform": {"kind": "layers_removed", "of": p + "finetune", "removed": [drop],
                                            "layer_map": list(range(drop)) + list(range(drop + 1, n))}},
        {"name": p + "reshard", "family": 5, "a": p + "base", "b": p + "reshard", "expect": "identical",
         "transform": {"kind": "reshard_rename", "shards": 3, "rename": rename}},
        {"name": p + "task_head", "family": 6, "a": p + "base_cls", "b": p + "independent_cls",
         "expect": "not_derived", "transform": {"kind": "shared_task_head", "tensor": "score.weight",
                                                "correlation": 0.95,
                                                "note": "everything else is the independent model"}},
    ]


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out")
    ap.add_argument("--seed", type=int, default=20260101)
    ap.add_argument("--style", choices=["llama", "glm", "all"], default="all")
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    manifest = {"schema": SCHEMA, "seed": args.seed, "models": {}, "pairs": [],
                "demo": {"dispute": "glm/independent", "finetune": "glm/finetune",
                         "permuted": "glm/permuted", "reupload": "glm/reshard"}}
    for style in (["llama", "glm"] if args.style == "all" else [args.style]):
        generate_style(args.out, style, args.seed, manifest)
    if args.style == "llama":
        manifest["demo"] = {k: v.replace("glm/", "llama/") for k, v in manifest["demo"].items()}
    with open(os.path.join(args.out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
