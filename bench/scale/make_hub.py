#!/usr/bin/python3
"""Full-size synthetic checkpoints with the layout of zai-org/GLM-4.5-Air and
upstage/Solar-Open-100B (research/peers.md §5), plus a fine-tuned derivative of the
GLM-shaped one, registered in a fake Hub store.

    /usr/bin/python3 bench/scale/make_hub.py OUT_DIR [--jobs N]

Every shard is a sparse file of its real size: a real safetensors header (every tensor of the
real model, with its name, dtype and shape, data laid out as the reference writer does:
larger dtype alignment first, then by name) and a data section of the real length, in which
only the tensors an audit reads hold generated values (norm gains, attention k/v and their
biases, routers, router biases, embeddings, the MTP block's norms). Experts, q/o, the dense
MLP, eh_proj and lm_head are holes (zeros that cost no disk). Logical size ≈ 220 + 205 + 220 GB;
on disk ≈ 7 GB.

Shard layout: GLM-shaped, one decoder layer per shard (layer 0 with the embedding in shard 1,
layer L in shard L+1, the MTP block `model.layers.46` with the final norm and lm_head in shard
47) — the mapping the sionic CSV records (peers_data/sionic_layerwise_similarity_aligned.csv).
Solar-shaped: tensors in model order, a new shard when the next tensor would pass the shard
size (as transformers' max_shard_size does), the size chosen so that there are 42 shards.

The LFS sha256 of each shard is a stand-in (sha256 of repo, path and generator version), given
to the fake Hub as trusted: hashing 650 GB of zeros would take longer than the benchmark.
Nothing in the benchmark reads a whole shard and checks it.

OUT_DIR/stamp.json records the generator version; an existing, complete OUT_DIR with the same
version is reused.
"""
import argparse
import hashlib
import json
import os
import struct
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tests", "fakehub"))
import hubrepo  # noqa: E402

VERSION = "scale-hub/3"
D = 4096
DSIZE = {"BF16": 2, "F32": 4}

GLM = dict(repo="zai-org/GLM-4.5-Air", kind="glm", layers=46, heads=96, kv_heads=8, head_dim=128,
           vocab=151552, tok_vocab=151329, experts=128, moe_inter=1408, inter=10944, first_dense=1,
           nextn=1, shards=47, seed=101)
SOLAR = dict(repo="upstage/Solar-Open-100B", kind="solar", layers=48, heads=64, kv_heads=8, head_dim=128,
             vocab=196608, tok_vocab=196608, experts=128, moe_inter=1280, inter=10240, first_dense=0,
             nextn=0, shards=42, seed=202)
DERIV = dict(GLM, repo="bench/GLM-4.5-Air-finetune", seed=101, derived_seed=303)
MODELS = [GLM, SOLAR, DERIV]
SHARED_TOKENS = 80339  # GLM ∩ Solar token strings (peers_data/sionic_01_tokenizer_compare.json)


# ---------------------------------------------------------------- tensor lists

def layer_tensors(m, l, moe, mtp=False):
    """(name, dtype, shape, fill) of one decoder layer; fill says whether it gets values."""
    p = "model.layers.%d." % l
    q, kv = m["heads"] * m["head_dim"], m["kv_heads"] * m["head_dim"]
    out = [(p + "input_layernorm.weight", "BF16", [D], "norm"),
           (p + "post_attention_layernorm.weight", "BF16", [D], "norm"),
           (p + "self_attn.q_proj.weight", "BF16", [q, D], None),
           (p + "self_attn.k_proj.weight", "BF16", [kv, D], "mat"),
           (p + "self_attn.v_proj.weight", "BF16", [kv, D], "mat"),
           (p + "self_attn.o_proj.weight", "BF16", [D, q], None)]
    if m["kind"] == "glm":  # attention_bias: true
        out += [(p + "self_attn.q_proj.bias", "BF16", [q], "vec"),
                (p + "self_attn.k_proj.bias", "BF16", [kv], "vec"),
                (p + "self_attn.v_proj.bias", "BF16", [kv], "vec")]
    if not moe:
        i = m["inter"]
        out += [(p + "mlp.gate_proj.weight", "BF16", [i, D], None),
                (p + "mlp.up_proj.weight", "BF16", [i, D], None),
                (p + "mlp.down_proj.weight", "BF16", [D, i], None)]
    else:
        mi = m["moe_inter"]
        out += [(p + "mlp.gate.weight", "BF16", [m["experts"], D], "mat"),
                (p + "mlp.gate.e_score_correction_bias", "F32", [m["experts"]], "bias")]
        for e in range(m["experts"]):
            out += [(p + "mlp.experts.%d.gate_proj.weight" % e, "BF16", [mi, D], None),
                    (p + "mlp.experts.%d.up_proj.weight" % e, "BF16", [mi, D], None),
                    (p + "mlp.experts.%d.down_proj.weight" % e, "BF16", [D, mi], None)]
        out += [(p + "mlp.shared_experts.gate_proj.weight", "BF16", [mi, D], None),
                (p + "mlp.shared_experts.up_proj.weight", "BF16", [mi, D], None),
                (p + "mlp.shared_experts.down_proj.weight", "BF16", [D, mi], None)]
    if mtp:
        out += [(p + "enorm.weight", "BF16", [D], "norm"), (p + "hnorm.weight", "BF16", [D], "norm"),
                (p + "eh_proj.weight", "BF16", [D, 2 * D], None),
                (p + "shared_head.norm.weight", "BF16", [D], "norm")]
    return out


def shard_plan(m):
    """[[tensor, ...] per shard] in the real model's order."""
    V = m["vocab"]
    embed = ("model.embed_tokens.weight", "BF16", [V, D], "embed")
    tail = [("model.norm.weight", "BF16", [D], "norm"), ("lm_head.weight", "BF16", [V, D], None)]
    layers = [layer_tensors(m, l, l >= m["first_dense"]) for l in range(m["layers"])]
    if m["kind"] == "glm":
        shards = [[embed] + layers[0]] + layers[1:]
        shards.append(layer_tensors(m, m["layers"], True, mtp=True) + tail)
        assert len(shards) == m["shards"]
        return shards
    flat = [embed] + [t for L in layers for t in L] + tail
    total = sum(nbytes(t) for t in flat)
    lo, hi = total // m["shards"], total // (m["shards"] - 1) + 1
    while lo < hi:  # the smallest shard size that gives the real shard count
        mid = (lo + hi) // 2
        if len(pack(flat, mid)) <= m["shards"]:
            hi = mid
        else:
            lo = mid + 1
    shards = pack(flat, lo)
    assert len(shards) == m["shards"], len(shards)
    return shards


def pack(flat, cap):
    shards, cur, size = [], [], 0
    for t in flat:
        n = nbytes(t)
        if cur and size + n > cap:
            shards.append(cur)
            cur, size = [], 0
        cur.append(t)
        size += n
    shards.append(cur)
    return shards


def nbytes(t):
    n = DSIZE[t[1]]
    for s in t[2]:
        n *= s
    return n


def layout(tensors):
    """Header bytes and data offsets, ordered as the reference writer orders them."""
    order = sorted(tensors, key=lambda t: (-DSIZE[t[1]], t[0]))
    hdr, pos, placed = {"__metadata__": {"format": "pt"}}, 0, []
    for t in order:
        n = nbytes(t)
        hdr[t[0]] = {"dtype": t[1], "shape": t[2], "data_offsets": [pos, pos + n]}
        placed.append((t, pos))
        pos += n
    js = json.dumps(hdr, separators=(",", ":")).encode()
    js += b" " * ((8 - len(js) % 8) % 8)
    return struct.pack("<Q", len(js)) + js, placed, pos


# ---------------------------------------------------------------- values

def seed_of(*parts):
    return int.from_bytes(hashlib.sha256("|".join(map(str, parts)).encode()).digest()[:8], "little")


def to_bf16(x):
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)  # round to nearest even


def layer_of(name):
    parts = name.split(".")
    return int(parts[2]) if len(parts) > 2 and parts[1] == "layers" else -1


def values(m, t):
    """The generated bytes of one tensor of model m (deterministic)."""
    name, dt, shape, fill = t
    n = int(np.prod(shape))
    rng = np.random.default_rng(seed_of(m["seed"], name))
    l = layer_of(name)
    depth = l / max(m["layers"] - 1, 1) if l >= 0 else 1.0
    if fill == "norm":  # positive gains around a per-layer offset (GLM ~0.5-2.3, Solar ~0.3)
        off = (0.5 + 1.8 * depth) if m["kind"] == "glm" else (0.25 + 0.1 * depth)
        if l == 0 and "input" in name:
            off = 0.015
        x = off * (1 + 0.15 * rng.standard_normal(n, dtype=np.float32))
    elif fill == "bias":
        x = 0.01 + 1e-3 * rng.standard_normal(n, dtype=np.float32)
    elif fill == "vec":
        x = 0.05 * rng.standard_normal(n, dtype=np.float32)
    elif fill == "embed":
        x = None  # written by rows (write_embed)
    else:
        x = (0.02 + 0.01 * depth) * rng.standard_normal(n, dtype=np.float32)
    if "derived_seed" in m and x is not None:
        x = derive(m, name, fill, x, depth)
    if dt == "F32":
        return np.ascontiguousarray(x, dtype=np.float32).tobytes()
    return to_bf16(x).tobytes()


def derive(m, name, fill, x, depth):
    """A fine-tune: norm gains move by whole bf16 steps in a fraction of elements that falls
    with depth (as GLM-4.5-Air -> INTELLECT-3, peers.md §0.3); weights drift by ~1 %."""
    rng = np.random.default_rng(seed_of(m["derived_seed"], name))
    if fill == "norm":
        frac = 0.9 * np.exp(-4.0 * depth) + 0.02
        u = to_bf16(x).astype(np.int64)
        pick = rng.random(x.size) < frac
        u = np.where(pick, u + rng.choice(np.array([-2, -1, 1, 2]), x.size), u)
        return (u.astype(np.uint32) << 16).view(np.float32)
    rel = 0.04 * (1 - depth) ** 2 + 0.003
    return x + np.float32(rel * float(np.std(x))) * rng.standard_normal(x.size, dtype=np.float32)


def write_embed(fd, m, base, V):
    rows = 8192
    for r0 in range(0, V, rows):
        r1 = min(V, r0 + rows)
        rng = np.random.default_rng(seed_of(m["seed"], "embed", r0))
        scale = np.float32(0.02)
        x = rng.standard_normal((r1 - r0) * D, dtype=np.float32) * scale
        if "derived_seed" in m:
            nrng = np.random.default_rng(seed_of(m["derived_seed"], "embed", r0))
            x += np.float32(0.01 * 0.02) * nrng.standard_normal(x.size, dtype=np.float32)
        os.pwrite(fd, to_bf16(x).tobytes(), base + r0 * D * 2)


def write_shard(job):
    m, path, tensors = job
    head, placed, data_len = layout(tensors)
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, head)
        os.ftruncate(fd, len(head) + data_len)
        for t, off in placed:
            if not t[3]:
                continue
            if t[3] == "embed":
                write_embed(fd, m, len(head) + off, t[2][0])
                continue
            b = values(m, t)
            assert len(b) == nbytes(t)
            os.pwrite(fd, b, len(head) + off)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return path, len(head) + data_len, os.stat(path).st_blocks * 512


# ---------------------------------------------------------------- tokenizers and configs

def word(i, alphabet="abcdefghijklmnopqrstuvwxyz"):
    s = ""
    i += 1
    while i:
        i, r = divmod(i - 1, len(alphabet))
        s += alphabet[r]
    return s


def tokenizer(m):
    """Byte-level BPE with SHARED_TOKENS strings common to both models under other ids."""
    n = m["tok_vocab"]
    tag = "g" if m["kind"] == "glm" else "s"
    strings = ["Ġ" + word(i) for i in range(SHARED_TOKENS)]
    strings += ["%s%s" % (tag.upper(), word(i)) for i in range(n - SHARED_TOKENS)]
    ids = np.random.default_rng(seed_of(m["kind"], "ids")).permutation(n)
    vocab = {s: int(i) for s, i in zip(strings, ids)}
    n_merges = 318088 if m["kind"] == "glm" else 192256  # the real merge counts
    merges = ["%s %s" % (strings[i % n], word(i)) for i in range(n_merges)]
    return json.dumps({
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [{"id": n + k, "content": "<|bench_special_%d|>" % k, "single_word": False,
                          "lstrip": False, "rstrip": False, "normalized": False, "special": True}
                         for k in range(4)],
        "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                          "use_regex": True},
        "post_processor": None, "decoder": {"type": "ByteLevel"},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                  "vocab": vocab, "merges": merges}}, ensure_ascii=False).encode()


def config(m):
    if m["kind"] == "glm":
        return {"architectures": ["Glm4MoeForCausalLM"], "model_type": "glm4_moe", "hidden_size": D,
                "intermediate_size": m["inter"], "moe_intermediate_size": m["moe_inter"],
                "num_hidden_layers": m["layers"], "num_attention_heads": m["heads"],
                "num_key_value_heads": m["kv_heads"], "head_dim": m["head_dim"], "vocab_size": m["vocab"],
                "n_routed_experts": m["experts"], "n_shared_experts": 1, "num_experts_per_tok": 8,
                "first_k_dense_replace": 1, "num_nextn_predict_layers": 1, "n_group": 1, "topk_group": 1,
                "norm_topk_prob": True, "routed_scaling_factor": 1.0, "attention_bias": True,
                "use_qk_norm": False, "partial_rotary_factor": 0.5, "rms_norm_eps": 1e-5,
                "rope_theta": 1000000, "max_position_embeddings": 131072, "tie_word_embeddings": False,
                "hidden_act": "silu", "pad_token_id": 151329, "eos_token_id": [151329, 151336, 151338],
                "torch_dtype": "bfloat16", "transformers_version": "4.54.0"}
    return {"architectures": ["SolarOpenForCausalLM"], "model_type": "solar_open", "hidden_size": D,
            "intermediate_size": m["inter"], "moe_intermediate_size": m["moe_inter"],
            "num_hidden_layers": m["layers"], "num_attention_heads": m["heads"],
            "num_key_value_heads": m["kv_heads"], "head_dim": m["head_dim"], "vocab_size": m["vocab"],
            "n_routed_experts": m["experts"], "n_shared_experts": 1, "num_experts_per_tok": 8,
            "first_k_dense_replace": 0, "n_group": 1, "topk_group": 1, "norm_topk_prob": True,
            "routed_scaling_factor": 1.0, "attention_bias": False, "partial_rotary_factor": 1.0,
            "rms_norm_eps": 1e-5, "rope_theta": 1000000, "max_position_embeddings": 131072,
            "tie_word_embeddings": False, "hidden_act": "silu", "pad_token_id": 2, "bos_token_id": 1,
            "eos_token_id": 2, "torch_dtype": "bfloat16", "transformers_version": "4.57.1"}


# ---------------------------------------------------------------- main

def build(out, jobs):
    stamp_path = os.path.join(out, "stamp.json")
    if os.path.exists(stamp_path):
        with open(stamp_path) as f:
            stamp = json.load(f)
        if stamp.get("version") == VERSION:
            return stamp
    t0 = time.time()
    store = os.path.join(out, "store")
    os.makedirs(store, exist_ok=True)
    work, plans = [], {}
    for m in MODELS:
        d = os.path.join(out, "models", m["repo"].replace("/", "__"))
        os.makedirs(d, exist_ok=True)
        shards = shard_plan(m)
        names = ["model-%05d-of-%05d.safetensors" % (i + 1, len(shards)) for i in range(len(shards))]
        plans[m["repo"]] = (d, shards, names)
        work += [(m, os.path.join(d, n), s) for n, s in zip(names, shards)]
    work.sort(key=lambda w: -sum(nbytes(t) for t in w[2] if t[3]))  # biggest writes first
    sizes = {}
    with ProcessPoolExecutor(max_workers=jobs) as ex:
        for path, size, disk in ex.map(write_shard, work):
            sizes[path] = (size, disk)
    toks = {}
    summary = {"version": VERSION, "models": {}}
    for m in MODELS:
        d, shards, names = plans[m["repo"]]
        weight_map = {t[0]: n for n, s in zip(names, shards) for t in s}
        total = sum(nbytes(t) for s in shards for t in s)
        files = {}
        for rel, body in (("config.json", json.dumps(config(m), indent=2).encode()),
                          ("model.safetensors.index.json",
                           json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map},
                                      indent=2).encode())):
            with open(os.path.join(d, rel), "wb") as f:
                f.write(body)
            files[rel] = os.path.join(d, rel)
        kind = m["kind"]
        if kind not in toks:
            toks[kind] = tokenizer(m)
        with open(os.path.join(d, "tokenizer.json"), "wb") as f:
            f.write(toks[kind])
        files["tokenizer.json"] = os.path.join(d, "tokenizer.json")
        for n in names:
            p = os.path.join(d, n)
            files[n] = {"path": p, "sha256": hashlib.sha256(
                ("%s|%s|%s|%d" % (VERSION, m["repo"], n, sizes[p][0])).encode()).hexdigest()}
        commit = hubrepo.add_repo(store, m["repo"], files)
        summary["models"][m["repo"]] = {
            "dir": d, "commit": commit, "shards": len(names), "logical_bytes": sum(sizes[os.path.join(d, n)][0] for n in names),
            "disk_bytes": sum(sizes[os.path.join(d, n)][1] for n in names), "tensors": len(weight_map),
            "tokenizer_bytes": len(toks[kind])}
    summary["build_seconds"] = round(time.time() - t0, 1)
    with open(stamp_path + ".tmp", "w") as f:
        json.dump(summary, f, indent=1)
    os.replace(stamp_path + ".tmp", stamp_path)
    return summary


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--jobs", type=int, default=max(1, min(4, os.cpu_count() or 1)))
    args = ap.parse_args()
    print(json.dumps(build(os.path.abspath(args.out), args.jobs), indent=1))


if __name__ == "__main__":
    main()
