#!/usr/bin/python3
"""The labelled verdict calibration corpus for `ckptscope compare` (issue 13).

    /usr/bin/python3 tests/tools/gen_corpus.py OUT_DIR [--seed N] [--families llm,lora,head,mlp,sd]

Writes pairs of local checkpoints whose relation is known by construction, and OUT_DIR/manifest.json
with each pair's truth ("derived" | "independent" | "identical"), the verdicts that count as right,
the kind of relation and its parameters. Relations that arise from training are made by training
(tests/tools/tinylm.py: a Llama-style transformer with hand-written backward passes, AdamW, a
synthetic language with classes, topics and Zipfian frequencies), never by hand-set correlations:
later checkpoints, fine-tunes, re-runs, seed twins, LoRA adapters, classification heads, distilled
students, upcycled experts. What is hand-set is said so (massive-activation dimensions, a rotated
copy of token geometry, recipe norm offsets, noise, quantisation, renames).

Families (each model is a folder: config.json and tokenizer.json where the family has them,
model.safetensors, or adapter_model.safetensors + adapter_config.json for PEFT adapters):
  llm   Llama-style models, hidden 64, 4 layers, GQA, SwiGLU, vocab 1024 (byte-level BPE), BF16.
        The released base carries 4 "massive activation" dimensions (tiny norm gains, large
        embedding-mean entries), as real Llama-style models do; its derivatives keep them.
  lora  PEFT LoRA adapters (q_proj/v_proj, F32) trained on the frozen llm base: causal-LM
        adapters and sequence-classification adapters with a `score` head.
  head  linear probes (`classifier.weight` + bias) trained on the frozen base's features.
  mlp   a small MLP classifier with generic names (no config), F32: re-runs, twins, checkpoints.
  sd    UNet-style attention LoRAs (diffusers old / new / PEFT, kohya naming), each module trained
        on its frozen base matrix for a "concept" data set.

Everything is seeded and deterministic (single-threaded BLAS); the safetensors writer and the
tokenizer are this file's own, independent of the project's C code and of gen_family.py.

manifest.json:
  {"schema": "ckptscope-corpus/1", "seed": N,
   "models": {key: {"dir", "family", "files", "dtype", "n_tensors", "note"}},
   "pairs": [{"name", "family", "a", "b", "truth", "accept" (verdicts that count as right),
              "kind", "quick" (in the --quick subset of the bench), "params": {...}}]}
"""
import argparse
import json
import os
import struct
import sys
import time
import zlib

os.environ["OPENBLAS_NUM_THREADS"] = "1"  # one thread: the same floats (and bytes) on every run
os.environ["OMP_NUM_THREADS"] = "1"
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tinylm as tl  # noqa: E402

SCHEMA = "ckptscope-corpus/1"
FAMILIES = ("llm", "lora", "head", "mlp", "sd")
ACCEPT = {"derived": ["derived"], "identical": ["identical"], "independent": ["not_derived", "inconclusive"]}
T_SEQ = 16       # tokens per training sequence (+1 for the next-token target)
BATCH = 16


def stream(seed, name):
    """A named random stream: the same name gives the same numbers whatever else runs (a shared
    initialisation is two runs drawing from one name)."""
    return np.random.default_rng(np.random.SeedSequence([seed, zlib.crc32(name.encode())]))


# ---------------------------------------------------------------- safetensors

def bf16_round(a):
    """float32 -> nearest bf16 (ties to even), kept as float32."""
    u = np.ascontiguousarray(a, np.float32).view(np.uint32).astype(np.uint64)
    u = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint32) << 16
    return u.view(np.float32).reshape(np.shape(a))


def encode(arr, dtype):
    a = np.asarray(arr, np.float32)
    if dtype == "BF16":
        return (bf16_round(a).view(np.uint32) >> 16).astype("<u2").tobytes()
    if dtype == "F16":
        if np.any(np.abs(a) > 65504):
            raise ValueError("value beyond float16 range")
        return a.astype("<f2").tobytes()
    if dtype == "F32":
        return a.astype("<f4").tobytes()
    raise ValueError(dtype)


def write_safetensors(path, tensors, metadata=None):
    """tensors: [(name, array, dtype)] in file order; returns the data size."""
    header, blobs, off = {}, [], 0
    if metadata:
        header["__metadata__"] = metadata
    for name, arr, dtype in tensors:
        raw = encode(arr, dtype)
        header[name] = {"dtype": dtype, "shape": list(np.shape(arr)), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h)
        for b in blobs:
            f.write(b)
    return off


# ---------------------------------------------------------------- tokenizer (byte-level BPE)

def byte_chars():
    """GPT-2's printable stand-in for each byte: printable Latin-1 bytes stand for themselves,
    the other 68 take code points 256.. in byte order."""
    printable = set(range(0x21, 0x7F)) | set(range(0xA1, 0xAD)) | set(range(0xAE, 0x100))
    out, nxt = [], 256
    for b in range(256):
        if b in printable:
            out.append(chr(b))
        else:
            out.append(chr(nxt))
            nxt += 1
    return out


BYTES = byte_chars()
SPACE = BYTES[0x20]


def make_vocab(rng, size, specials):
    """256 byte tokens, then tokens grown one letter at a time from syllable words (each merge joins
    an existing token and one byte), then the specials: (tokens by id, merges)."""
    syll_c, syll_v = "bdfgklmnprstvz", "aeiou"
    tokens, merges = list(BYTES), []
    have = set(tokens)
    target = size - len(specials)
    while len(tokens) < target:
        word = "".join(syll_c[rng.integers(len(syll_c))] + syll_v[rng.integers(len(syll_v))]
                       for _ in range(int(rng.integers(1, 4))))
        text = SPACE + word if rng.random() < 0.6 else word
        for j in range(2, len(text) + 1):
            if len(tokens) >= target:
                break
            if text[:j] not in have:
                tokens.append(text[:j])
                have.add(text[:j])
                merges.append(f"{text[:j - 1]} {text[j - 1]}")
    return tokens + list(specials), merges


def tokenizer_json(tokens, merges, specials, added=()):
    vocab = {t: i for i, t in enumerate(tokens)}
    added_tokens = [{"id": vocab[s], "content": s, "single_word": False, "lstrip": False, "rstrip": False,
                     "normalized": False, "special": True} for s in specials]
    for i, t in added:
        added_tokens.append({"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
                             "normalized": True, "special": False})
    return {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added_tokens,
            "normalizer": None,
            "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                              "use_regex": True},
            "post_processor": None,
            "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
            "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                      "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                      "ignore_merges": False, "vocab": vocab, "merges": merges}}


# ---------------------------------------------------------------- the corpus being written

class Corpus:
    def __init__(self, out, seed):
        self.out, self.seed = out, seed
        self.models, self.pairs = {}, []

    def rng(self, name):
        return stream(self.seed, name)

    def model(self, key, tensors, note, config=None, tokenizer=None, adapter_config=None, shards=1,
              file_name=None, metadata=None):
        """tensors: [(name, array, dtype)] in file order."""
        d = os.path.join(self.out, key)
        os.makedirs(d, exist_ok=True)
        files = []
        meta = metadata if metadata is not None else {"format": "pt"}
        if shards == 1:
            fname = file_name or ("adapter_model.safetensors" if adapter_config else "model.safetensors")
            write_safetensors(os.path.join(d, fname), tensors, meta)
            files.append(fname)
        else:
            per = -(-len(tensors) // shards)
            wmap, total = {}, 0
            for s in range(shards):
                fname = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
                part = tensors[s * per:(s + 1) * per]
                total += write_safetensors(os.path.join(d, fname), part, meta)
                wmap.update({n: fname for n, _, _ in part})
                files.append(fname)
            with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
                json.dump({"metadata": {"total_size": total}, "weight_map": dict(sorted(wmap.items()))}, f, indent=2)
            files.append("model.safetensors.index.json")
        for name, obj in (("config.json", config), ("tokenizer.json", tokenizer),
                          ("adapter_config.json", adapter_config)):
            if obj is not None:
                with open(os.path.join(d, name), "w", encoding="utf-8") as f:
                    json.dump(obj, f, ensure_ascii=False, indent=None if name == "tokenizer.json" else 2)
                files.append(name)
        self.models[key] = {"dir": key, "family": key.split("/")[0], "files": files,
                            "dtype": sorted({dt for _, _, dt in tensors}), "n_tensors": len(tensors),
                            "note": note}

    def pair(self, name, a, b, truth, kind, params=None, quick=False, accept=None):
        assert a in self.models and b in self.models, (a, b)
        self.pairs.append({"name": name, "family": name.split("/")[0], "a": a, "b": b, "truth": truth,
                           "accept": accept or ACCEPT[truth], "kind": kind, "quick": quick,
                           "params": params or {}})


# ---------------------------------------------------------------- measurements recorded in the manifest

def pearson(x, y):
    x, y = np.ravel(x).astype(np.float64), np.ravel(y).astype(np.float64)
    x, y = x - x.mean(), y - y.mean()
    den = np.sqrt((x * x).sum() * (y * y).sum())
    return round(float((x * y).sum() / den), 4) if den > 0 else None


def rel_move(new, old):
    return round(float(np.linalg.norm(new - old) / (np.linalg.norm(old) + 1e-12)), 4)


def summary_corr(pa, pb, names):
    """Median index-aligned Pearson over the named tensors present in both with one shape."""
    rs = [pearson(pa[n], pb[n]) for n in names if n in pa and n in pb and pa[n].shape == pb[n].shape]
    rs = [r for r in rs if r is not None]
    return round(float(np.median(rs)), 4) if rs else None


# ---------------------------------------------------------------- LLM family

CFG = tl.Config(vocab=1024, hidden=64, layers=4, heads=4, kv_heads=2, head_dim=16, inter=128)
SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>"]


def llama_config(cfg, model_type="llama", **extra):
    c = {"architectures": [{"llama": "LlamaForCausalLM", "mixtral": "MixtralForCausalLM",
                            "phi3": "Phi3ForCausalLM"}[model_type]],
         "model_type": model_type, "hidden_size": cfg.hidden, "intermediate_size": cfg.inter,
         "num_hidden_layers": cfg.layers, "num_attention_heads": cfg.heads, "num_key_value_heads": cfg.kv_heads,
         "vocab_size": cfg.vocab, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "max_position_embeddings": 256,
         "tie_word_embeddings": False, "hidden_act": "silu", "initializer_range": 0.02, "torch_dtype": "bfloat16"}
    if model_type != "phi3":
        c["head_dim"] = cfg.head_dim
    if cfg.experts:
        c["num_local_experts"] = cfg.experts
        c["num_experts_per_tok"] = cfg.top_k
    c.update(extra)
    return c


def tensor_kind(name):
    """How the residual (hidden) basis enters a tensor: "norm" [d], "embed" [V, d] (columns),
    "read" [out, d] (columns), "write" [d, in] (rows)."""
    if name.endswith("layernorm.weight") or name == "model.norm.weight":
        return "norm"
    if name == "model.embed_tokens.weight":
        return "embed"
    if any(k in name for k in ("o_proj", "down_proj", ".w2.")):
        return "write"
    return "read"


def ordered(p):
    """Checkpoint order: embedding, layers, final norm, lm_head."""
    def key(n):
        if n.startswith("model.embed"):
            return (0, 0, n)
        if n.startswith("model.layers."):
            return (1, int(n.split(".")[2]), n)
        return (2 if n == "model.norm.weight" else 3, 0, n)
    return sorted(p, key=key)


def as_tensors(p, dtype="BF16"):
    return [(n, p[n], dtype) for n in ordered(p)]


class Massive:
    """A few "massive activation" dimensions as Llama-style models have them (Sun et al. 2024,
    "Massive Activations in Large Language Models"): at those residual dims the norm gains are tiny
    and the token embeddings carry a large common mean. Hand-set (a few hundred numpy steps do not
    grow them), applied at release; a derivative released with the same Massive keeps them."""

    def __init__(self, rng, d, k=4, dims=None):
        self.dims = np.sort(rng.choice(d, k, replace=False)) if dims is None else np.asarray(dims)
        self.gain = rng.uniform(0.01, 0.05, len(self.dims))           # factor on the trained gain
        self.layer_jitter = rng.uniform(0.7, 1.3, (64, len(self.dims)))  # per norm vector
        self.offset = rng.choice([-1.0, 1.0], len(self.dims)) * rng.uniform(15, 30, len(self.dims))

    def release(self, p):
        q = dict(p)
        norms = [n for n in ordered(p) if tensor_kind(n) == "norm"]
        for i, n in enumerate(norms):
            g = q[n].copy()
            g[self.dims] = g[self.dims] * self.gain * self.layer_jitter[i % 64]
            q[n] = g
        e = q["model.embed_tokens.weight"].copy()
        sd = float(e.std())
        e[:, self.dims] += (self.offset * sd).astype(np.float32)
        q["model.embed_tokens.weight"] = e
        return q

    def describe(self):
        return {"dims": [int(x) for x in self.dims], "gain_factor": [round(float(x), 4) for x in self.gain],
                "embedding_mean_in_sd": [round(float(x), 2) for x in self.offset]}


def recipe_norm_offsets(p, n_layers):
    """A recipe's per-layer gain level (real models' gains sit at depth-dependent levels, e.g.
    ~0.1-0.5 in some GLM layers): the same schedule on two independent models, each keeping its own
    trained deviations."""
    q = dict(p)
    for l in range(n_layers):
        t = l / max(n_layers - 1, 1)
        for nm, level in (("input_layernorm.weight", 0.3 + 0.9 * t), ("post_attention_layernorm.weight", 0.5 + 0.6 * t)):
            n = tl.L(l, nm)
            q[n] = (level * p[n]).astype(np.float32)
    q["model.norm.weight"] = (1.6 * p["model.norm.weight"]).astype(np.float32)
    return q


def permute_hidden(p, perm, sign):
    """new[i] = sign[i] * old[perm[i]] on every residual axis; gains are permuted without signs
    (RMSNorm: the gain multiplies x_i / rms, and the sign passes through to the next read matrix)."""
    s = sign.astype(np.float32)
    q = {}
    for n, a in p.items():
        k = tensor_kind(n)
        if k == "norm":
            q[n] = a[perm]
        elif k in ("embed", "read"):
            q[n] = a[:, perm] * s[None, :]
        else:
            q[n] = a[perm, :] * s[:, None]
    return q


def int4_roundtrip(a, group=32):
    """Round-to-nearest asymmetric 4-bit quantisation per group of `group` inputs (as GPTQ/AWQ
    checkpoints store linear weights), dequantised."""
    out_dim, in_dim = a.shape
    g = a.reshape(out_dim, in_dim // group, group)
    lo, hi = g.min(2, keepdims=True), g.max(2, keepdims=True)
    scale = np.maximum(hi - lo, 1e-8) / 15.0
    qv = np.clip(np.round((g - lo) / scale), 0, 15)
    return (qv * scale + lo).reshape(out_dim, in_dim).astype(np.float32)


def noisy(p, rng, level):
    return {n: (a + rng.standard_normal(a.shape).astype(np.float32) * np.float32(level * a.std())).astype(np.float32)
            for n, a in p.items()}


def merged_lora(p, lora, scale):
    q = dict(p)
    for t in sorted({k.rsplit(":", 1)[0] for k in lora}):
        q[t] = (p[t] + np.float32(scale) * (lora[t + ":B"] @ lora[t + ":A"])).astype(np.float32)
    return q


def fuse_phi3(p, cfg):
    """Phi-3's layout: qkv_proj = [q; k; v] rows, gate_up_proj = [gate; up] rows."""
    q = {}
    for n, a in p.items():
        if ".self_attn.k_proj." in n or ".self_attn.v_proj." in n or ".mlp.up_proj." in n:
            continue
        if ".self_attn.q_proj." in n:
            pre = n.replace("q_proj.weight", "")
            q[pre + "qkv_proj.weight"] = np.concatenate([a, p[pre + "k_proj.weight"], p[pre + "v_proj.weight"]])
        elif ".mlp.gate_proj." in n:
            pre = n.replace("gate_proj.weight", "")
            q[pre + "gate_up_proj.weight"] = np.concatenate([a, p[pre + "up_proj.weight"]])
        else:
            q[n] = a
    return q


META = {"input_layernorm.weight": "attention_norm.weight", "post_attention_layernorm.weight": "ffn_norm.weight",
        "self_attn.q_proj.weight": "attention.wq.weight", "self_attn.k_proj.weight": "attention.wk.weight",
        "self_attn.v_proj.weight": "attention.wv.weight", "self_attn.o_proj.weight": "attention.wo.weight",
        "mlp.gate_proj.weight": "feed_forward.w1.weight", "mlp.up_proj.weight": "feed_forward.w3.weight",
        "mlp.down_proj.weight": "feed_forward.w2.weight"}


def meta_name(n):
    top = {"model.embed_tokens.weight": "tok_embeddings.weight", "model.norm.weight": "norm.weight",
           "lm_head.weight": "output.weight"}
    if n in top:
        return top[n]
    _, _, l, rest = n.split(".", 3)
    return f"layers.{l}.{META[rest]}"


PRETRAIN_STEPS, PRETRAIN_LR = 400, 3e-3
STUDENT_STEPS = 200


class World:
    """What the llm, lora and head families train on: the tokenizer, the language, its domains and
    data sets, the classification tasks; and the results of every training run (self.runs)."""

    def __init__(self, corpus):
        c = corpus
        self.c = c
        tokens, merges = make_vocab(c.rng("tok/vocab"), CFG.vocab, SPECIALS)
        self.tokens, self.merges = tokens, merges
        self.tokenizer = tokenizer_json(tokens, merges, SPECIALS)
        ids = np.arange(CFG.vocab - len(SPECIALS))
        self.lang = tl.Language(c.rng("lang/pretrain"), ids)
        dom_x = self.lang.domain(c.rng("lang/domain-x"), 0.6)
        dom_y = self.lang.domain(c.rng("lang/domain-y"), 0.6)
        self.data = {"p": self.lang.sample(c.rng("data/pretrain"), 3000, T_SEQ + 1)[0],
                     "x": dom_x.sample(c.rng("data/x"), 1200, T_SEQ + 1)[0],
                     "y": dom_y.sample(c.rng("data/y"), 1200, T_SEQ + 1)[0]}
        self.held_p = self.lang.sample(c.rng("data/held"), 64, T_SEQ + 1)[0]
        self.held_x = dom_x.sample(c.rng("data/held-x"), 64, T_SEQ + 1)[0]
        # classification tasks: the label is a task-specific map of the last token's latent class
        # (readable from the frozen base's last hidden state, so a head has something to learn)
        rl = c.rng("task/labels")
        self.label_maps = {"A": rl.integers(0, 4, self.lang.n_classes), "B": rl.integers(0, 4, self.lang.n_classes),
                           "C": rl.integers(0, 2, self.lang.n_classes)}
        for k, n in (("A", 4), ("B", 4), ("C", 2)):  # every label used
            self.label_maps[k][:n] = rl.permutation(n)
        self.tasks = {}
        for k in ("A", "B", "C"):
            toks, _ = self.lang.sample(c.rng(f"task/data/{k}"), 1024, T_SEQ)
            self.tasks[k] = (toks, self.label_maps[k][self.lang.cls[toks[:, -1]]])
        self.runs = {}


W = None  # the World, inherited by worker processes (fork)


def job_pretrain(init, order, data, steps=PRETRAIN_STEPS, ckpt=None):
    """A from-scratch run: Hugging Face init from stream `init`, batches in the order of `order`."""
    p = tl.init_params(CFG, W.c.rng(init))
    saved = {}

    def keep(step, params, _):
        if ckpt and step == ckpt:
            saved["ckpt"] = {k: v.copy() for k, v in params.items()}
    tl.train(p, CFG, tl.batcher(W.data[data], W.c.rng(order), BATCH), steps, PRETRAIN_LR, tl.lm_objective,
             warmup=20, wd=0.1, on_step=keep)
    return p, saved.get("ckpt")


def job_finetune(p, cfg, data, order, steps, lr):
    q = {k: v.copy() for k, v in p.items()}
    tl.train(q, cfg, tl.batcher(W.data[data], W.c.rng(order), BATCH), steps, lr, tl.lm_objective,
             warmup=min(10, steps // 5), wd=0.0)
    return q


def job_student(teacher, init, order, geometry):
    """Distillation from a fresh init: the teacher's next-token distributions (and, with geometry > 0,
    the token x token cosine matrix of its final hidden states, which fixes no basis)."""
    s = tl.init_params(CFG, W.c.rng(init))
    get = tl.batcher(W.data["p"], W.c.rng(order), BATCH)

    def batches(step):
        b = get(step)
        nf, _ = tl.forward(teacher, CFG, b["tokens"][:, :-1])
        h = nf.reshape(-1, CFG.hidden)
        b["teacher_probs"] = tl.softmax(h @ teacher["lm_head.weight"].T)
        b["teacher_hidden"] = h
        return b
    tl.train(s, CFG, batches, STUDENT_STEPS, PRETRAIN_LR, lambda p, cfg, b: tl.kd_objective(p, cfg, b, geometry),
             warmup=20, wd=0.1)
    return s


def job_lora_lm(base, init, data, order, ckpt=None):
    """A PEFT LoRA (q/v) trained for causal LM on the frozen base: (final, init, checkpoint)."""
    lora = tl.lora_init(CFG, tl.lora_targets(CFG), base, LORA_R, W.c.rng(init))
    a0 = {k: v.copy() for k, v in lora.items()}
    saved = {}

    def keep(step, _, lo):
        if ckpt and step == ckpt:
            saved["ckpt"] = {k: v.copy() for k, v in lo.items()}
    tl.train(base, CFG, tl.batcher(W.data[data], W.c.rng(order), BATCH), LORA_STEPS, LORA_LR, tl.lm_objective,
             trainable=[], lora=lora, lora_scale=LORA_ALPHA / LORA_R, on_step=keep)
    return lora, a0, saved.get("ckpt")


def job_cls(base, task, init, order, ckpt=None):
    """A sequence-classification LoRA (r 4, q/v) with a `score` head (HF init, normal 0.02), trained
    together on the frozen base: (lora, head, head at init, checkpoint, held-out accuracy)."""
    toks, labels = W.tasks[task]
    n_labels = int(labels.max()) + 1
    ri = W.c.rng(init)
    lora = tl.lora_init(CFG, tl.lora_targets(CFG), base, 4, ri)
    head = (ri.standard_normal((n_labels, CFG.hidden)) * 0.02).astype(np.float32)
    h0 = head.copy()
    p = dict(base)
    p["score.weight"] = head
    saved = {}

    def keep(step, params, lo):
        if ckpt and step == ckpt:
            saved["ckpt"] = ({k: v.copy() for k, v in lo.items()}, params["score.weight"].copy())
    tl.train(p, CFG, tl.batcher(toks[:-256], W.c.rng(order), BATCH, labels=labels[:-256]), LORA_STEPS, CLS_LR,
             lambda q, cfg, b: tl.cls_objective(q, cfg, b, ("score.weight", None)), trainable=["score.weight"],
             lora=lora, lora_scale=2.0, on_step=keep)
    acc = cls_accuracy(p, lora, 2.0, toks[-256:], labels[-256:])
    return lora, p["score.weight"], h0, saved.get("ckpt"), acc


def _run_job(job):
    fn, kw = job
    t0 = time.process_time()
    out = fn(**kw)
    return out, round(time.process_time() - t0, 2)


def run_jobs(jobs, workers):
    """{name: result} of {name: (function, kwargs)}, on `workers` forked processes. Every job draws
    only from named streams, so the results do not depend on how many workers there are."""
    names = list(jobs)
    if workers > 1 and len(names) > 1:
        import multiprocessing
        with multiprocessing.get_context("fork").Pool(min(workers, len(names))) as pool:
            out = pool.map(_run_job, [jobs[n] for n in names], chunksize=1)
    else:
        out = [_run_job(jobs[n]) for n in names]
    JOB_CPU.update({n: o[1] for n, o in zip(names, out)})
    return {n: o[0] for n, o in zip(names, out)}


JOB_CPU = {}  # CPU seconds of each training job, for the manifest


def train_all(w, fams, workers):
    """Every training run the llm, lora and head families need, in two waves of parallel jobs."""
    wave = {"base": (job_pretrain, dict(init="llm/init/base", order="llm/order/base", data="p", ckpt=PRETRAIN_STEPS // 2))}
    if "llm" in fams:
        wave.update({
            "rerun": (job_pretrain, dict(init="llm/init/rerun", order="llm/order/rerun", data="p")),
            "rerun_order": (job_pretrain, dict(init="llm/init/rerun-order", order="llm/order/base", data="p")),
            "twin": (job_pretrain, dict(init="llm/init/base", order="llm/order/twin", data="x")),
        })
    w.runs.update(run_jobs(wave, workers))
    base = w.runs["base"][0]
    wave = {}
    if "llm" in fams:
        w.prep = {"pruned": pruned_start(base), "moe": moe_start(base, w.c.rng("llm/moe/router")),
                  "ext": ext_start(base, w.c.rng("llm/vocab-ext"))}
        wave.update({
            "ft_light": (job_finetune, dict(p=base, cfg=CFG, data="x", order="llm/order/ft-light", steps=40, lr=3e-4)),
            "ft_heavy": (job_finetune, dict(p=base, cfg=CFG, data="x", order="llm/order/ft-heavy", steps=200, lr=1e-3)),
            "ft_y": (job_finetune, dict(p=base, cfg=CFG, data="y", order="llm/order/ft-y", steps=120, lr=5e-4)),
            "pruned": (job_finetune, dict(p=w.prep["pruned"], cfg=CFG.copy(layers=CFG.layers - 1), data="p",
                                          order="llm/order/heal", steps=30, lr=3e-4)),
            "moe": (job_finetune, dict(p=w.prep["moe"], cfg=CFG.copy(experts=4, top_k=2), data="x",
                                       order="llm/order/moe", steps=40, lr=3e-4)),
            "ext": (job_finetune, dict(p=w.prep["ext"][0], cfg=CFG.copy(vocab=CFG.vocab + EXT_TOKENS), data="x",
                                       order="llm/order/ext", steps=40, lr=3e-4)),
            "student_kd": (job_student, dict(teacher=base, init="llm/init/student-kd", order="llm/order/student-kd",
                                             geometry=0.0)),
            "student_geom": (job_student, dict(teacher=base, init="llm/init/student-geom",
                                               order="llm/order/student-geom", geometry=1.0)),
        })
    if "lora" in fams:
        wave.update({
            "lora_x1": (job_lora_lm, dict(base=base, init="lora/init/x1", data="x", order="lora/order/x1", ckpt=50)),
            "lora_x2": (job_lora_lm, dict(base=base, init="lora/init/x2", data="x", order="lora/order/x2")),
            "lora_y": (job_lora_lm, dict(base=base, init="lora/init/y", data="y", order="lora/order/y")),
            "lora_twin": (job_lora_lm, dict(base=base, init="lora/init/x1", data="y", order="lora/order/twin")),
            "cls_a1": (job_cls, dict(base=base, task="A", init="lora/cls-init/a1", order="lora/cls-order/a1", ckpt=50)),
            "cls_a2": (job_cls, dict(base=base, task="A", init="lora/cls-init/a2", order="lora/cls-order/a2")),
            "cls_b": (job_cls, dict(base=base, task="B", init="lora/cls-init/b", order="lora/cls-order/b")),
            "cls_twin": (job_cls, dict(base=base, task="B", init="lora/cls-init/a1", order="lora/cls-order/twin")),
            "cls_c": (job_cls, dict(base=base, task="C", init="lora/cls-init/c", order="lora/cls-order/c")),
        })
    # longest first, so two workers finish together
    cost = {"ft_heavy": 200, "student_kd": 260, "student_geom": 280}
    order = sorted(wave, key=lambda n: -cost.get(n, 100 if n.startswith(("lora", "cls")) else 40))
    w.runs.update(run_jobs({n: wave[n] for n in order}, workers))


def pruned_start(base, drop=2):
    """Layer `drop` removed, the later layers renumbered."""
    out = {}
    for n, a in base.items():
        if n.startswith("model.layers."):
            l = int(n.split(".")[2])
            if l == drop:
                continue
            n = tl.L(l - (l > drop), n.split(".", 3)[3])
        out[n] = a.copy()
    return out


def moe_start(base, rng, experts=4):
    """Sparse upcycling: every expert a copy of the layer's dense MLP, a new router (normal 0.02)."""
    out = {}
    for n, a in base.items():
        if ".mlp." in n:
            l = int(n.split(".")[2])
            which = {"gate_proj": "gate", "up_proj": "up", "down_proj": "down"}[n.split(".")[4]]
            for e in range(experts):
                out[tl.expert_name(l, e, which)] = a.copy()
            out[tl.L(l, "block_sparse_moe.gate.weight")] = (rng.standard_normal((experts, CFG.hidden)) * 0.02).astype(np.float32)
        else:
            out[n] = a.copy()
    return out


EXT_TOKENS = 64


def ext_start(base, rng):
    """EXT_TOKENS new tokens: new embedding and lm_head rows = the mean row plus small noise (the usual
    resize_token_embeddings recipe); returns (params, new token strings)."""
    new = []
    while len(new) < EXT_TOKENS:
        t = SPACE + "".join("xyqj"[rng.integers(4)] + "aeiou"[rng.integers(5)] for _ in range(3))
        if t not in new:
            new.append(t)
    out = dict(base)
    for n in ("model.embed_tokens.weight", "lm_head.weight"):
        a = base[n]
        rows = a.mean(0) + rng.standard_normal((EXT_TOKENS, CFG.hidden)).astype(np.float32) * a.std() * 0.1
        out[n] = np.concatenate([a, rows.astype(np.float32)])
    return out, new


def loss_of(p, cfg, held):
    return round(tl.lm_loss(p, cfg, held), 4)


def llm_family(c, w):
    R = w.runs
    base, base_ckpt = R["base"]
    rerun, rerun_order, twin = R["rerun"][0], R["rerun_order"][0], R["twin"][0]
    ft_light, ft_heavy, ft_y = R["ft_light"], R["ft_heavy"], R["ft_y"]
    tok = w.tokenizer
    mass_a = Massive(c.rng("llm/massive/a"), CFG.hidden)
    mass_b = Massive(c.rng("llm/massive/b"), CFG.hidden)
    mass_same = Massive(c.rng("llm/massive/same"), CFG.hidden, dims=mass_a.dims)
    body = [n for n in base if tensor_kind(n) in ("read", "write")]
    norms = [n for n in base if tensor_kind(n) == "norm"]

    def emit(key, p, note, cfg=CFG, dtype="BF16", tokenizer=tok, config=None, **kw):
        c.model(key, as_tensors(p, dtype), note, config=config or llama_config(cfg), tokenizer=tokenizer, **kw)

    rel = mass_a.release
    emit("llm/base", rel(base), f"pretrained {PRETRAIN_STEPS} steps (AdamW {PRETRAIN_LR}, cosine), released with "
         f"massive dims {mass_a.describe()['dims']}")
    emit("llm/base_plain", base, "the same weights without massive dims")
    base_loss = loss_of(base, CFG, w.held_p)

    # ---- derived
    half = PRETRAIN_STEPS // 2
    emit(f"llm/base_step{half}", rel(base_ckpt), f"step {half} of the base run")
    c.pair("llm/later_checkpoint", f"llm/base_step{half}", "llm/base", "derived", "later_checkpoint",
           {"steps": [half, PRETRAIN_STEPS], "body_corr": summary_corr(base_ckpt, base, body)}, quick=True)

    emit("llm/ft_light", rel(ft_light), "fine-tuned on domain X, 40 steps AdamW 3e-4")
    emit("llm/ft_heavy", rel(ft_heavy), "fine-tuned on domain X, 200 steps AdamW 1e-3")
    emit("llm/ft_y", rel(ft_y), "fine-tuned on domain Y, 120 steps AdamW 5e-4")
    emit("llm/ft_light_plain", ft_light, "ft_light without massive dims")
    for name, q, steps, lr in (("light", ft_light, 40, 3e-4), ("heavy", ft_heavy, 200, 1e-3)):
        c.pair(f"llm/finetune_{name}", "llm/base", f"llm/ft_{name}", "derived", "finetune",
               {"steps": steps, "lr": lr, "domain_x_loss": [loss_of(base, CFG, w.held_x), loss_of(q, CFG, w.held_x)],
                "body_rel_move": summary_rel(q, base, body), "body_corr": summary_corr(q, base, body),
                "norm_corr": summary_corr(q, base, norms)}, quick=name == "heavy")
    c.pair("llm/finetune_plain", "llm/base_plain", "llm/ft_light_plain", "derived", "finetune",
           {"steps": 40, "lr": 3e-4, "massive_dims": False})
    c.pair("llm/common_ancestor", "llm/ft_light", "llm/ft_y", "derived", "two_finetunes_of_one_base",
           {"a": "domain X, 40 steps", "b": "domain Y, 120 steps", "body_corr": summary_corr(ft_light, ft_y, body)},
           quick=True)

    rp = c.rng("llm/perm")
    perm = rp.permutation(CFG.hidden)
    sign = np.where(rp.random(CFG.hidden) < 0.5, -1, 1)
    emit("llm/permuted", permute_hidden(rel(ft_light), perm, sign),
         "ft_light with one hidden permutation and sign flips (function-preserving for RMSNorm)")
    c.pair("llm/permuted", "llm/base", "llm/permuted", "derived", "hidden_permutation_signs",
           {"of": "llm/ft_light", "convention": "new[i] = sign[i] * old[perm[i]]; gains permuted without signs",
            "perm": [int(x) for x in perm], "sign": [int(x) for x in sign]}, quick=True)

    emit("llm/pruned", rel(R["pruned"]), "layer 2 of 4 dropped, healed 30 steps", cfg=CFG.copy(layers=CFG.layers - 1))
    c.pair("llm/depth_pruned", "llm/base", "llm/pruned", "derived", "depth_pruned",
           {"dropped_layer": 2, "heal_steps": 30, "layer_map": [0, 1, 3]}, quick=True)

    moe_cfg = CFG.copy(experts=4, top_k=2)
    moe = R["moe"]
    emit("llm/moe_upcycled", rel(moe), "dense MLPs copied into 4 experts (top-2, new router), trained 40 steps",
         cfg=moe_cfg, config=llama_config(moe_cfg, "mixtral"))
    spread = [pearson(moe[tl.expert_name(1, 0, "up")], moe[tl.expert_name(1, e, "up")]) for e in range(1, 4)]
    c.pair("llm/moe_upcycled", "llm/base", "llm/moe_upcycled", "derived", "dense_to_moe_upcycling",
           {"experts": 4, "top_k": 2, "steps": 40, "expert_up_corr_layer1": spread}, quick=True)

    new_tokens = w.prep["ext"][1]
    ext_tok = tokenizer_json(w.tokens, w.merges, SPECIALS, added=[(CFG.vocab + i, t) for i, t in enumerate(new_tokens)])
    emit("llm/vocab_extended", rel(R["ext"]), f"{EXT_TOKENS} tokens added (rows = mean + noise), trained 40 steps",
         cfg=CFG.copy(vocab=CFG.vocab + EXT_TOKENS), tokenizer=ext_tok)
    c.pair("llm/vocab_extended", "llm/base", "llm/vocab_extended", "derived", "vocabulary_extension",
           {"new_tokens": EXT_TOKENS, "steps": 40})

    def q4(p):
        return {n: (int4_roundtrip(a) if tensor_kind(n) in ("read", "write") and n != "lm_head.weight" else a)
                for n, a in p.items()}
    emit("llm/int4_bf16", q4(rel(base)), "linear weights through int4 (RTN, group 32, asymmetric) and back, saved BF16")
    c.pair("llm/int4_roundtrip", "llm/base", "llm/int4_bf16", "derived", "int4_roundtrip_bf16",
           {"group": 32, "scheme": "asymmetric round-to-nearest", "loss": [base_loss, loss_of(q4(base), CFG, w.held_p)]},
           quick=True)

    other = mass_b.release(rerun)
    for wt in (0.5, 0.7):
        tag = f"merge_{int(wt * 10)}"
        emit(f"llm/{tag}", {n: (wt * a + (1 - wt) * other[n]).astype(np.float32) for n, a in rel(ft_light).items()},
             f"{wt} x ft_light + {1 - wt:.1f} x an independent model (llm/rerun)")
        c.pair(f"llm/{tag}", "llm/base", f"llm/{tag}", "derived", "merge_with_independent",
               {"weight_of_derivative": wt, "other": "llm/rerun"}, quick=wt == 0.5)

    for level in (0.05, 0.2, 0.5):
        tag = f"noise_{int(level * 100):02d}"
        emit(f"llm/{tag}", noisy(rel(base), c.rng(f"llm/noise/{level}"), level),
             f"Gaussian noise of {level} x each tensor's sd")
        c.pair(f"llm/{tag}", "llm/base", f"llm/{tag}", "derived", "noise_added",
               {"level_in_tensor_sd": level,
                "loss_plain_model": [base_loss, loss_of(noisy(base, c.rng(f"llm/noise/{level}"), level), CFG, w.held_p)]},
               quick=level == 0.5)

    for dt in ("F16", "F32"):
        emit(f"llm/base_{dt.lower()}", rel(base), f"the base converted BF16 -> {dt}", dtype=dt,
             config=llama_config(CFG, torch_dtype={"F16": "float16", "F32": "float32"}[dt]))
        c.pair(f"llm/dtype_{dt.lower()}", "llm/base", f"llm/base_{dt.lower()}", "derived", "dtype_conversion",
               {"from": "BF16", "to": dt}, quick=dt == "F16")

    emit("llm/fused_phi3", fuse_phi3(rel(ft_light), CFG), "ft_light in Phi-3's fused qkv_proj / gate_up_proj layout",
         config=llama_config(CFG, "phi3"))
    c.pair("llm/fused_layout", "llm/base", "llm/fused_phi3", "derived", "fused_qkv_gate_up",
           {"of": "llm/ft_light"}, quick=True)

    flat = as_tensors(rel(base))
    order = c.rng("llm/reshard").permutation(len(flat))
    c.model("llm/reshard_meta", [(meta_name(flat[i][0]), flat[i][1], flat[i][2]) for i in order],
            "the base's exact tensors under Meta's names, in another order, in 3 shards",
            config=llama_config(CFG), tokenizer=tok, shards=3)
    c.pair("llm/reshard_rename", "llm/base", "llm/reshard_meta", "identical", "reshard_rename",
           {"shards": 3, "names": "Meta consolidated style"}, quick=True)

    # ---- independent: re-runs, massive dims, token geometry, distillation, norm offsets, twins
    emit("llm/rerun_plain", rerun, "the base's script and data, other init and data-order seeds")
    emit("llm/rerun_order_plain", rerun_order, "the base's script, data and data order, another init seed")
    c.pair("llm/rerun", "llm/base_plain", "llm/rerun_plain", "independent", "from_scratch_rerun",
           {"same": ["script", "data"], "differs": ["init seed", "data order"],
            "body_corr": summary_corr(base, rerun, body), "norm_corr": summary_corr(base, rerun, norms)}, quick=True)
    c.pair("llm/rerun_same_order", "llm/base_plain", "llm/rerun_order_plain", "independent", "from_scratch_rerun",
           {"same": ["script", "data", "data order"], "differs": ["init seed"],
            "norm_corr": summary_corr(base, rerun_order, norms)})

    emit("llm/rerun", other, f"rerun released with its own massive dims {mass_b.describe()['dims']}")
    emit("llm/rerun_order_same_dims", mass_same.release(rerun_order),
         "rerun_order released with massive dims at the base's indices (own gains and means)")
    c.pair("llm/massive_own_dims", "llm/base", "llm/rerun", "independent", "massive_dims_own",
           {"a": mass_a.describe(), "b": mass_b.describe()}, quick=True)
    c.pair("llm/massive_same_dims", "llm/base", "llm/rerun_order_same_dims", "independent",
           "massive_dims_same_indices", {"a": mass_a.describe(), "b": mass_same.describe()}, quick=True)

    rq = c.rng("llm/geometry")
    Q, Rm = np.linalg.qr(rq.standard_normal((CFG.hidden, CFG.hidden)))
    Q = (Q * np.sign(np.diag(Rm))).astype(np.float32)
    E = base["model.embed_tokens.weight"]
    geo = dict(rerun)
    geo["model.embed_tokens.weight"] = (E @ Q + rq.standard_normal(E.shape).astype(np.float32) * 0.3 * E.std()).astype(np.float32)
    emit("llm/geometry_rotated", geo, "an independent model whose embedding is the base's under a random "
         "orthogonal change of basis plus noise (0.3 sd)")
    c.pair("llm/shared_geometry_rotated", "llm/base_plain", "llm/geometry_rotated", "independent",
           "token_geometry_random_basis", {"noise_in_sd": 0.3, "other_tensors": "llm/rerun_plain"}, quick=True)

    for tag in ("kd", "geom"):
        s = R[f"student_{tag}"]
        emit(f"llm/student_{tag}", s, "trained from a fresh init to reproduce the base's next-token distributions"
             + (" and the token x token cosine geometry of its final hidden states" if tag == "geom" else ""))
        c.pair(f"llm/distilled_{tag}", "llm/base_plain", f"llm/student_{tag}", "independent",
               "teacher_student" if tag == "kd" else "teacher_student_hidden_geometry",
               {"steps": STUDENT_STEPS, "loss": {"teacher": base_loss, "student": loss_of(s, CFG, w.held_p)},
                "body_corr": summary_corr(base, s, body)}, quick=tag == "kd")

    oa, ob = recipe_norm_offsets(base, CFG.layers), recipe_norm_offsets(rerun, CFG.layers)
    emit("llm/offset_a", oa, "base with the recipe's per-layer gain levels")
    emit("llm/offset_b", ob, "rerun with the same recipe's gain levels")
    raw_cos = [round(float(oa[n] @ ob[n] / np.linalg.norm(oa[n]) / np.linalg.norm(ob[n])), 4) for n in norms]
    c.pair("llm/norm_offset", "llm/offset_a", "llm/offset_b", "independent", "shared_norm_offset",
           {"raw_cosine_of_gains_min": min(raw_cos), "gain_pearson_median": summary_corr(oa, ob, norms)})

    emit("llm/seed_twin", twin, "the base's initialisation (same seed), trained on domain X data in another order")
    c.pair("llm/seed_twin", "llm/base_plain", "llm/seed_twin", "independent", "seed_twin_full_model",
           {"shared": "init seed", "differs": ["data (domain X)", "data order"],
            "body_corr": summary_corr(base, twin, body)}, quick=True)


def summary_rel(pa, pb, names):
    return round(float(np.median([rel_move(pa[n], pb[n]) for n in names if n in pa and n in pb])), 4)


# ---------------------------------------------------------------- LoRA adapters on the frozen base

# LoRA training on the frozen base: A stays init-dominated, as in real adapters (issue 13 measured
# seed twins' A matrices agreeing at r ~ 0.999); the manifest records A's correlation with its init.
LORA_R, LORA_ALPHA, LORA_STEPS, LORA_LR, CLS_LR = 8, 16, 150, 3e-4, 1e-3


def peft_config(r, alpha, targets, task, save=None):
    return {"peft_type": "LORA", "base_model_name_or_path": "corpus/llm-base", "r": r, "lora_alpha": alpha,
            "lora_dropout": 0.05, "target_modules": targets, "bias": "none", "task_type": task,
            "modules_to_save": save, "init_lora_weights": True, "fan_in_fan_out": False}


def peft_tensors(lora, extra=(), dtype="F32"):
    out = []
    for t in sorted({k.rsplit(":", 1)[0] for k in lora}, key=lambda n: (int(n.split(".")[2]), n)):
        mod = "base_model.model." + t[:-len(".weight")]
        out.append((mod + ".lora_A.weight", lora[t + ":A"], dtype))
        out.append((mod + ".lora_B.weight", lora[t + ":B"], dtype))
    for n, a in extra:
        out.append(("base_model.model." + n, a, dtype))
    return out


def mlx_tensors(lora, dtype="F32"):
    """mlx-lm's layout: <module>.lora_a [in, r], lora_b [r, out] (the transposes of PEFT's)."""
    out = []
    for t in sorted({k.rsplit(":", 1)[0] for k in lora}, key=lambda n: (int(n.split(".")[2]), n)):
        mod = t[:-len(".weight")]
        out.append((mod + ".lora_a", np.ascontiguousarray(lora[t + ":A"].T), dtype))
        out.append((mod + ".lora_b", np.ascontiguousarray(lora[t + ":B"].T), dtype))
    return out


def lora_family(c, w):
    R = w.runs
    base = R["base"][0]
    targets = tl.lora_targets(CFG)
    scale = LORA_ALPHA / LORA_R
    runs = {tag: R[f"lora_{tag}"] for tag in ("x1", "x2", "y", "twin")}
    cfg_lm = peft_config(LORA_R, LORA_ALPHA, ["q_proj", "v_proj"], "CAUSAL_LM")

    def a_init_corr(tag):
        lora, a0, _ = runs[tag]
        return summary_corr(lora, a0, [k for k in a0 if k.endswith(":A")])

    def ab_corr(t1, t2, part):
        l1, l2 = runs[t1][0], runs[t2][0]
        return summary_corr(l1, l2, [k for k in l1 if k.endswith(":" + part)])

    data_note = {"x1": "domain X", "x2": "domain X", "y": "domain Y", "twin": "domain Y, the init of x1"}
    for tag in runs:
        c.model(f"lora/lm_{tag}", peft_tensors(runs[tag][0]),
                f"LoRA r={LORA_R} on q/v, causal LM on {data_note[tag]}, {LORA_STEPS} steps AdamW {LORA_LR}",
                adapter_config=cfg_lm)
    c.model("lora/lm_x1_step50", peft_tensors(runs["x1"][2]), "run x1 at step 50", adapter_config=cfg_lm)
    info = {"r": LORA_R, "alpha": LORA_ALPHA, "steps": LORA_STEPS, "lr": LORA_LR,
            "A_corr_with_own_init": a_init_corr("x1")}
    c.pair("lora/same_task", "lora/lm_x1", "lora/lm_x2", "independent", "lora_same_base_same_task",
           dict(info, A_corr=ab_corr("x1", "x2", "A"), B_corr=ab_corr("x1", "x2", "B")), quick=True)
    c.pair("lora/other_task", "lora/lm_x1", "lora/lm_y", "independent", "lora_same_base_other_task",
           dict(info, B_corr=ab_corr("x1", "y", "B")))
    c.pair("lora/seed_twin", "lora/lm_x1", "lora/lm_twin", "independent", "seed_twin_adapter",
           dict(info, shared="LoRA init seed", A_corr=ab_corr("x1", "twin", "A"), B_corr=ab_corr("x1", "twin", "B")),
           quick=True)
    c.pair("lora/later_checkpoint", "lora/lm_x1_step50", "lora/lm_x1", "derived", "later_checkpoint",
           {"steps": [50, LORA_STEPS], "B_corr": summary_corr(runs["x1"][0], runs["x1"][2],
                                                               [k for k in runs["x1"][0] if k.endswith(":B")])},
           quick=True)
    c.model("lora/lm_x1_mlx", mlx_tensors(runs["x1"][0]), "run x1 renamed to mlx-lm's transposed lora_a/lora_b")
    c.pair("lora/renamed_mlx", "lora/lm_x1", "lora/lm_x1_mlx", "derived", "adapter_key_style_rename",
           {"from": "PEFT", "to": "mlx-lm (transposed)"})
    c.model("lora/lm_x1_bf16", peft_tensors(runs["x1"][0], dtype="BF16"), "run x1 saved in BF16",
            adapter_config=cfg_lm)
    c.pair("lora/dtype_bf16", "lora/lm_x1", "lora/lm_x1_bf16", "derived", "dtype_conversion",
           {"from": "F32", "to": "BF16"})

    # the base with run x1 merged into q/v, against the base (both without massive dims)
    mp = merged_lora(base, runs["x1"][0], scale)
    c.model("llm/base_lora_merged", as_tensors(mp), "base_plain with lora/lm_x1 merged into q_proj/v_proj",
            config=llama_config(CFG), tokenizer=w.tokenizer)
    if "llm/base_plain" not in c.models:
        c.model("llm/base_plain", as_tensors(base), "the base without massive dims",
                config=llama_config(CFG), tokenizer=w.tokenizer)
    c.pair("llm/lora_merged", "llm/base_plain", "llm/base_lora_merged", "derived", "lora_merged_into_base",
           {"adapter": "lora/lm_x1", "scale": scale, "q_rel_change": rel_move(mp[targets[0]], base[targets[0]])},
           quick=True)

    # ---- sequence classification: LoRA + a `score` head (modules_to_save)
    cls = {tag: R[f"cls_{tag}"] for tag in ("a1", "a2", "b", "twin", "c")}
    cfg_cls = peft_config(4, 8, ["q_proj", "v_proj"], "SEQ_CLS", save=["score"])
    task_of = {"a1": "A", "a2": "A", "b": "B", "twin": "B (the init of a1)", "c": "C (2 labels)"}
    for tag, (lora, head, _, _, acc) in cls.items():
        c.model(f"lora/cls_{tag}", peft_tensors(lora, [("score.weight", head)]),
                f"sequence classification LoRA r=4 + score head, task {task_of[tag]}, {LORA_STEPS} steps "
                f"AdamW {CLS_LR}, held-out accuracy {acc}", adapter_config=cfg_cls)
    lo, hd = cls["a1"][3]
    c.model("lora/cls_a1_step50", peft_tensors(lo, [("score.weight", hd)]), "cls run a1 at step 50",
            adapter_config=cfg_cls)

    def head_info(t1, t2):
        h1, h2 = cls[t1][1], cls[t2][1]
        return {"score_corr": pearson(h1, h2) if h1.shape == h2.shape else None,
                "accuracy": [cls[t1][4], cls[t2][4]], "score_corr_with_own_init": pearson(h1, cls[t1][2])}
    c.pair("lora/cls_same_task", "lora/cls_a1", "lora/cls_a2", "independent", "seqcls_adapter_same_task",
           head_info("a1", "a2"), quick=True)
    c.pair("lora/cls_other_task", "lora/cls_a1", "lora/cls_b", "independent", "seqcls_adapter_other_task",
           head_info("a1", "b"))
    c.pair("lora/cls_seed_twin", "lora/cls_a1", "lora/cls_twin", "independent", "seed_twin_adapter",
           dict(head_info("a1", "twin"), shared="LoRA and head init seed"))
    c.pair("lora/cls_labels_4_vs_2", "lora/cls_a1", "lora/cls_c", "independent", "seqcls_adapter_other_task",
           dict(head_info("a1", "c"), labels=[4, 2]))
    c.pair("lora/cls_later_checkpoint", "lora/cls_a1_step50", "lora/cls_a1", "derived", "later_checkpoint",
           {"steps": [50, LORA_STEPS], "score_corr": pearson(hd, cls["a1"][1])})


def cls_accuracy(p, lora, scale, toks, labels):
    q = dict(p)
    if lora:
        q = merged_lora(p, lora, scale)
    nf, _ = tl.forward(q, CFG, toks)
    z = nf[:, -1, :] @ q["score.weight"].T
    return round(float((z.argmax(1) == labels).mean()), 3)


# ---------------------------------------------------------------- linear probes on frozen features

def head_family(c, w):
    base = w.runs["base"][0]
    feats = {}
    for k in ("A", "B"):
        toks, labels = w.tasks[k]
        nf = np.concatenate([tl.forward(base, CFG, toks[i:i + 128])[0][:, -1, :] for i in range(0, len(toks), 128)])
        feats[k] = (nf, labels)
    runs = {}

    def run(tag, task, init, order, steps=200, lr=1e-3, ckpt=None):
        X, y = feats[task]
        n_labels = int(y.max()) + 1
        W, b = tl.linear_init(n_labels, CFG.hidden, c.rng(init))
        W0 = W.copy()
        p = {"classifier.weight": W, "classifier.bias": b}
        opt = tl.AdamW(lr)
        ro = c.rng(order)
        saved = None
        for s in range(steps):
            idx = ro.integers(0, len(X) - 256, 32)
            z = X[idx] @ p["classifier.weight"].T + p["classifier.bias"]
            pr = tl.softmax(z)
            pr[np.arange(32), y[idx]] -= 1
            pr /= 32
            opt.step(p, {"classifier.weight": pr.T @ X[idx], "classifier.bias": pr.sum(0)},
                     ["classifier.weight", "classifier.bias"])
            if ckpt and s + 1 == ckpt:
                saved = {k: v.copy() for k, v in p.items()}
        acc = round(float(((X[-256:] @ p["classifier.weight"].T + p["classifier.bias"]).argmax(1) == y[-256:]).mean()), 3)
        runs[tag] = (p, W0, saved, acc)

    run("a1", "A", "head/init/a1", "head/order/a1", ckpt=60)
    run("a2", "A", "head/init/a2", "head/order/a2")
    run("b", "B", "head/init/b", "head/order/b")
    run("twin", "B", "head/init/a1", "head/order/twin")

    def tensors(p):
        return [("classifier.weight", p["classifier.weight"], "F32"), ("classifier.bias", p["classifier.bias"], "F32")]
    for tag, (p, _, _, acc) in runs.items():
        c.model(f"head/probe_{tag}", tensors(p), f"linear probe on the frozen base's last-token features "
                f"(torch Linear init, AdamW 1e-3, 200 steps), held-out accuracy {acc}")
    c.model("head/probe_a1_step60", tensors(runs["a1"][2]), "probe a1 at step 60")

    def info(t1, t2):
        return {"weight_corr": pearson(runs[t1][0]["classifier.weight"], runs[t2][0]["classifier.weight"]),
                "corr_with_own_init": pearson(runs[t1][0]["classifier.weight"], runs[t1][1]),
                "accuracy": [runs[t1][3], runs[t2][3]]}
    c.pair("head/same_task", "head/probe_a1", "head/probe_a2", "independent", "head_same_base_same_task",
           info("a1", "a2"), quick=True)
    c.pair("head/other_task", "head/probe_a1", "head/probe_b", "independent", "head_same_base_other_task", info("a1", "b"))
    c.pair("head/seed_twin", "head/probe_a1", "head/probe_twin", "independent", "seed_twin_head",
           dict(info("a1", "twin"), shared="init seed"), quick=True)
    c.pair("head/later_checkpoint", "head/probe_a1_step60", "head/probe_a1", "derived", "later_checkpoint",
           {"steps": [60, 200]})


# ---------------------------------------------------------------- a small MLP with generic names

def mlp_family(c):
    d_in, h1, h2, k = 64, 128, 64, 10

    def dataset(name, n=4000):
        r = c.rng(name)
        protos = r.standard_normal((k, d_in)) * 1.5
        mix = r.standard_normal((d_in, d_in)) / np.sqrt(d_in)
        y = r.integers(0, k, n)
        X = (protos[y] + r.standard_normal((n, d_in))) @ mix
        return X.astype(np.float32), y

    def init(name):
        r = c.rng(name)
        p = {}
        for i, (o, inp) in enumerate(((h1, d_in), (h2, h1), (k, h2)), 1):
            p[f"l{i}.weight"], p[f"l{i}.bias"] = tl.linear_init(o, inp, r)
        return p

    def train(p, data, order, steps, lr=0.05, ckpt=None):
        X, y = data
        r = c.rng(order)
        vel = {n: np.zeros_like(a) for n, a in p.items()}
        saved = None
        for s in range(steps):
            idx = r.integers(0, len(X), 64)
            x0 = X[idx]
            a1 = x0 @ p["l1.weight"].T + p["l1.bias"]
            z1 = np.maximum(a1, 0)
            a2 = z1 @ p["l2.weight"].T + p["l2.bias"]
            z2 = np.maximum(a2, 0)
            pr = tl.softmax(z2 @ p["l3.weight"].T + p["l3.bias"])
            pr[np.arange(64), y[idx]] -= 1
            pr /= 64
            g = {"l3.weight": pr.T @ z2, "l3.bias": pr.sum(0)}
            d2 = (pr @ p["l3.weight"]) * (a2 > 0)
            g["l2.weight"], g["l2.bias"] = d2.T @ z1, d2.sum(0)
            d1 = (d2 @ p["l2.weight"]) * (a1 > 0)
            g["l1.weight"], g["l1.bias"] = d1.T @ x0, d1.sum(0)
            for n in p:  # SGD with momentum 0.9
                vel[n] = 0.9 * vel[n] + g[n]
                p[n] = (p[n] - lr * vel[n]).astype(np.float32)
            if ckpt and s + 1 == ckpt:
                saved = {n: a.copy() for n, a in p.items()}
        return saved

    def acc(p, data):
        X, y = data
        z = np.maximum(np.maximum(X @ p["l1.weight"].T + p["l1.bias"], 0) @ p["l2.weight"].T + p["l2.bias"], 0)
        return round(float(((z @ p["l3.weight"].T + p["l3.bias"]).argmax(1) == y).mean()), 3)

    d1, d2 = dataset("mlp/data/1"), dataset("mlp/data/2")
    runs = {}
    for tag, ini, data, order in (("a", "mlp/init/a", d1, "mlp/order/a"), ("rerun", "mlp/init/rerun", d1, "mlp/order/rerun"),
                                  ("rerun_order", "mlp/init/rerun-order", d1, "mlp/order/a"),
                                  ("twin", "mlp/init/a", d2, "mlp/order/twin")):
        p = init(ini)
        p0 = {n: a.copy() for n, a in p.items()}
        saved = train(p, data, order, 600, ckpt=150 if tag == "a" else None)
        runs[tag] = (p, p0, saved, acc(p, data))
    ft = {n: a.copy() for n, a in runs["a"][0].items()}
    train(ft, d2, "mlp/order/ft", 200, lr=0.01)

    def tensors(p):
        return [(n, p[n], "F32") for n in ("l1.weight", "l1.bias", "l2.weight", "l2.bias", "l3.weight", "l3.bias")]
    for tag, (p, _, _, a) in runs.items():
        c.model(f"mlp/{tag}", tensors(p), f"MLP 64-128-64-10, SGD momentum 600 steps, accuracy {a}")
    c.model("mlp/a_step150", tensors(runs["a"][2]), "run a at step 150")
    c.model("mlp/a_finetuned", tensors(ft), f"run a fine-tuned 200 steps on data set 2, accuracy {acc(ft, d2)}")
    ws = ["l1.weight", "l2.weight", "l3.weight"]

    def info(t1, t2):
        return {"weight_corr": summary_corr(runs[t1][0], runs[t2][0], ws),
                "corr_with_own_init": summary_corr(runs[t1][0], runs[t1][1], ws)}
    c.pair("mlp/rerun", "mlp/a", "mlp/rerun", "independent", "from_scratch_rerun", info("a", "rerun"), quick=True)
    c.pair("mlp/rerun_same_order", "mlp/a", "mlp/rerun_order", "independent", "from_scratch_rerun",
           dict(info("a", "rerun_order"), same=["data", "data order"]))
    c.pair("mlp/seed_twin", "mlp/a", "mlp/twin", "independent", "seed_twin_full_model",
           dict(info("a", "twin"), differs=["data set", "order"]), quick=True)
    c.pair("mlp/later_checkpoint", "mlp/a_step150", "mlp/a", "derived", "later_checkpoint", {"steps": [150, 600]},
           quick=True)
    c.pair("mlp/finetune", "mlp/a", "mlp/a_finetuned", "derived", "finetune",
           {"steps": 200, "weight_corr": summary_corr(runs["a"][0], ft, ws)})


# ---------------------------------------------------------------- UNet-style attention LoRAs and key styles

def sd_modules():
    """(module path, projection, in, out) of a small UNet's attention layers: channels 32/64,
    cross-attention context width 48 (attn2's to_k / to_v)."""
    mods = []
    blocks = [("down_blocks.0", 32, 2), ("down_blocks.1", 64, 2), ("mid_block", 64, 1), ("up_blocks.1", 64, 3),
              ("up_blocks.2", 32, 3)]
    for blk, ch, n in blocks:
        for a in range(n):
            for attn in ("attn1", "attn2"):
                path = f"{blk}.attentions.{a}.transformer_blocks.0.{attn}"
                for proj in ("to_q", "to_k", "to_v", "to_out.0"):
                    cin = 48 if attn == "attn2" and proj in ("to_k", "to_v") else ch
                    mods.append((path, proj, cin, ch))
    return mods


def sd_names(style, path, proj):
    """(down name, up name) of one module's LoRA in a key style."""
    if style == "diffusers_old":
        p = proj.replace(".0", "")
        return f"{path}.processor.{p}_lora.down.weight", f"{path}.processor.{p}_lora.up.weight"
    if style == "diffusers_new":
        return f"unet.{path}.{proj}.lora.down.weight", f"unet.{path}.{proj}.lora.up.weight"
    if style == "diffusers_peft":
        return f"unet.{path}.{proj}.lora_A.weight", f"unet.{path}.{proj}.lora_B.weight"
    if style == "peft":
        return f"base_model.model.{path}.{proj}.lora_A.weight", f"base_model.model.{path}.{proj}.lora_B.weight"
    if style == "kohya":
        k = "lora_unet_" + f"{path}.{proj}".replace(".", "_")
        return f"{k}.lora_down.weight", f"{k}.lora_up.weight"
    raise ValueError(style)


def sd_tensors(lora, style, dtype="F32"):
    out = []
    for (path, proj), (A, B) in lora.items():
        down, up = sd_names(style, path, proj)
        out.append((down, A, dtype))
        out.append((up, B, dtype))
        if style == "kohya":  # network alpha = rank: the same scale as diffusers' default
            out.append((down.rsplit(".lora_down", 1)[0] + ".alpha", np.float32(A.shape[0]), "F32"))
    return out


SD_STEPS, SD_LR, SD_BATCH, SD_NOISE = 400, 1e-4, 8, 5.0


def sd_family(c):
    mods = sd_modules()
    rb = c.rng("sd/base")
    base, inputs = {}, {}
    for path, proj, cin, cout in mods:
        # a frozen base matrix with a decaying spectrum, and the anisotropic inputs a trained base
        # feeds that layer (both shared by every adapter of this base)
        U, _ = np.linalg.qr(rb.standard_normal((cout, cout)))
        V, _ = np.linalg.qr(rb.standard_normal((cin, cin)))
        k = min(cin, cout)
        base[(path, proj)] = ((U[:, :k] * (np.exp(-np.arange(k) / 8.0))) @ V[:, :k].T).astype(np.float32)
        inputs[(path, proj)] = (V * np.exp(-np.arange(cin) / 12.0)).astype(np.float32)

    def concept(name):
        """A data set's target change of each module: rank 4, mostly in the inputs' strong directions."""
        r = c.rng(name)
        out = {}
        for path, proj, cin, cout in mods:
            out[(path, proj)] = ((r.standard_normal((cout, 4)) @ r.standard_normal((4, cin)) @ inputs[(path, proj)].T)
                                 * 0.05).astype(np.float32)
        return out

    groups = {}
    for path, proj, cin, cout in mods:
        groups.setdefault((cin, cout), []).append((path, proj))

    def train(init, data, order, steps=SD_STEPS, rank=4, lr=SD_LR, ckpt=None):
        """AdamW on ||(W0 + B A) X - Y||^2 / n for mini-batches X of the module's inputs and targets
        Y = (W0 + delta) X + noise: a diffusion loss is dominated by the noise it predicts, SD_NOISE
        times the signal here, and that gradient noise is what keeps A near its init.
        Modules of one shape are stacked (the same maths, one matmul per step)."""
        ri, ro = c.rng(init), c.rng(order)
        lora, saved = {}, {}
        for (cin, cout), keys in sorted(groups.items()):
            bound = 1.0 / np.sqrt(cin)  # PEFT / diffusers: A kaiming-uniform, B zero
            p = {"A": ri.uniform(-bound, bound, (len(keys), rank, cin)).astype(np.float32),
                 "B": np.zeros((len(keys), cout, rank), np.float32)}
            S = np.stack([inputs[k] for k in keys])
            D = np.stack([data[k] for k in keys])
            sigma = SD_NOISE * np.sqrt(((D @ S) ** 2).mean((1, 2)) / 1.0)[:, None, None].astype(np.float32)
            opt = tl.AdamW(lr)
            for s in range(steps):
                X = S @ ro.standard_normal((len(keys), cin, SD_BATCH)).astype(np.float32)
                noise = sigma * ro.standard_normal((len(keys), cout, SD_BATCH)).astype(np.float32)
                E = (p["B"] @ (p["A"] @ X) - D @ X - noise) / SD_BATCH
                gW = E @ X.transpose(0, 2, 1)
                opt.step(p, {"A": p["B"].transpose(0, 2, 1) @ gW, "B": gW @ p["A"].transpose(0, 2, 1)}, ["A", "B"])
                if ckpt and s + 1 == ckpt:
                    for i, k in enumerate(keys):
                        saved[k] = (p["A"][i].copy(), p["B"][i].copy())
            for i, k in enumerate(keys):
                lora[k] = (p["A"][i], p["B"][i])
        order = [(path, proj) for path, proj, _, _ in mods]
        return {k: lora[k] for k in order}, {k: saved[k] for k in order if k in saved}

    dx, dy = concept("sd/concept/x"), concept("sd/concept/y")
    x1, x1_early = train("sd/init/x1", dx, "sd/order/x1", ckpt=SD_STEPS // 4)
    x2, _ = train("sd/init/x2", dx, "sd/order/x2")
    y, _ = train("sd/init/y", dy, "sd/order/y")
    twin, _ = train("sd/init/x1", dy, "sd/order/twin")

    def fit(lora, data):
        """Median over modules of ||(BA - delta) S|| / ||delta S||: the error on the inputs."""
        e = [np.linalg.norm((B @ A - data[k]) @ inputs[k]) / np.linalg.norm(data[k] @ inputs[k])
             for k, (A, B) in lora.items()]
        return round(float(np.median(e)), 3)

    c.model("sd/x1_old", sd_tensors(x1, "diffusers_old"), f"concept X, init x1; relative error {fit(x1, dx)}",
            file_name="pytorch_lora_weights.safetensors", metadata={})
    c.model("sd/x1_step40_old", sd_tensors(x1_early, "diffusers_old"), f"run x1 at step {SD_STEPS // 4}",
            file_name="pytorch_lora_weights.safetensors", metadata={})
    c.model("sd/x2_old", sd_tensors(x2, "diffusers_old"), "concept X, init x2",
            file_name="pytorch_lora_weights.safetensors", metadata={})
    c.model("sd/x2_kohya", sd_tensors(x2, "kohya", "F16"), "run x2 in kohya naming, F16",
            metadata={"ss_network_dim": "4", "ss_network_alpha": "4"})
    c.model("sd/y_new", sd_tensors(y, "diffusers_new"), "concept Y, init y (diffusers new naming)",
            file_name="pytorch_lora_weights.safetensors", metadata={})
    c.model("sd/twin_old", sd_tensors(twin, "diffusers_old"), "concept Y, the init of x1",
            file_name="pytorch_lora_weights.safetensors", metadata={})
    for style in ("diffusers_new", "diffusers_peft", "kohya"):
        c.model(f"sd/x1_{style}", sd_tensors(x1, style), f"run x1 renamed to {style}",
                file_name="pytorch_lora_weights.safetensors", metadata={})
    c.model("sd/x1_kohya_f16", sd_tensors(x1, "kohya", "F16"), "run x1 in kohya naming, F16")
    c.model("sd/x1_new_bf16", sd_tensors(x1, "diffusers_new", "BF16"), "run x1 in diffusers new naming, BF16",
            file_name="pytorch_lora_weights.safetensors", metadata={})
    c.model("sd/x1_peft_f16", sd_tensors(x1, "peft", "F16"), "run x1 in PEFT naming (base_model.model.), F16",
            adapter_config={"peft_type": "LORA", "r": 4, "lora_alpha": 4, "target_modules": ["to_q", "to_k", "to_v",
                                                                                              "to_out.0"]})

    def corr(l1, l2, part):
        i = 1 if part == "B" else 0
        return round(float(np.median([pearson(l1[k][i], l2[k][i]) for k in l1])), 4)

    c.pair("sd/same_concept", "sd/x1_old", "sd/x2_old", "independent", "lora_same_base_same_task",
           {"A_corr": corr(x1, x2, "A"), "B_corr": corr(x1, x2, "B")}, quick=True)
    c.pair("sd/same_concept_kohya", "sd/x1_old", "sd/x2_kohya", "independent", "lora_same_base_same_task",
           {"styles": ["diffusers_old", "kohya F16"]})
    c.pair("sd/other_concept_styles", "sd/x1_old", "sd/y_new", "independent", "lora_same_base_other_task",
           {"styles": ["diffusers_old", "diffusers_new"], "B_corr": corr(x1, y, "B")}, quick=True)
    c.pair("sd/seed_twin", "sd/x1_old", "sd/twin_old", "independent", "seed_twin_adapter",
           {"A_corr": corr(x1, twin, "A"), "B_corr": corr(x1, twin, "B")}, quick=True)
    c.pair("sd/later_checkpoint", "sd/x1_step40_old", "sd/x1_old", "derived", "later_checkpoint",
           {"steps": [SD_STEPS // 4, SD_STEPS]})
    c.pair("sd/renamed_new", "sd/x1_old", "sd/x1_diffusers_new", "identical", "adapter_key_style_rename",
           {"from": "diffusers_old", "to": "diffusers_new", "bytes": "identical tensors"})
    c.pair("sd/renamed_peft", "sd/x1_old", "sd/x1_diffusers_peft", "identical", "adapter_key_style_rename",
           {"from": "diffusers_old", "to": "diffusers_peft", "bytes": "identical tensors"}, quick=True)
    c.pair("sd/renamed_kohya", "sd/x1_old", "sd/x1_kohya", "derived", "adapter_key_style_rename",
           {"from": "diffusers_old", "to": "kohya", "added": ".alpha scalars"}, quick=True)
    c.pair("sd/renamed_kohya_f16", "sd/x1_old", "sd/x1_kohya_f16", "derived", "adapter_key_style_rename_dtype",
           {"from": "diffusers_old F32", "to": "kohya F16"})
    c.pair("sd/renamed_new_bf16", "sd/x1_old", "sd/x1_new_bf16", "derived", "adapter_key_style_rename_dtype",
           {"from": "diffusers_old F32", "to": "diffusers_new BF16"}, quick=True)
    c.pair("sd/renamed_peft_f16", "sd/x1_kohya", "sd/x1_peft_f16", "derived", "adapter_key_style_rename_dtype",
           {"from": "kohya F32 (with .alpha)", "to": "PEFT F16"})


# ---------------------------------------------------------------- main

def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--families", default=",".join(FAMILIES),
                    help="comma-separated subset of " + ",".join(FAMILIES))
    ap.add_argument("--jobs", type=int, default=2, help="training processes (results do not depend on it)")
    args = ap.parse_args(argv)
    fams = [f for f in args.families.split(",") if f]
    bad = [f for f in fams if f not in FAMILIES]
    if bad:
        ap.error(f"unknown families {bad}; choose from {','.join(FAMILIES)}")
    os.makedirs(args.out, exist_ok=True)
    c = Corpus(args.out, args.seed)
    started = time.time()
    timings = {}
    global W
    if {"llm", "lora", "head"} & set(fams):
        W = World(c)
        t0 = time.time()
        train_all(W, fams, args.jobs)
        timings["training"] = round(time.time() - t0, 1)
    for fam in FAMILIES:
        if fam not in fams:
            continue
        t0 = time.time()
        if fam == "llm":
            llm_family(c, W)
        elif fam == "lora":
            lora_family(c, W)
        elif fam == "head":
            head_family(c, W)
        elif fam == "mlp":
            mlp_family(c)
        elif fam == "sd":
            sd_family(c)
        timings[fam] = round(time.time() - t0, 1)
    manifest = {"schema": SCHEMA, "seed": args.seed, "families": fams, "generator_seconds": timings,
                "training_cpu_seconds": JOB_CPU,
                "models": c.models, "pairs": c.pairs}
    with open(os.path.join(args.out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    print(f"{len(c.pairs)} pairs, {len(c.models)} models in {time.time() - started:.1f} s {timings}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
