"""Write a small demo family of local checkpoints (stdlib only) for `make demo`:
base/            a tiny Llama-shaped model in one file
resharded/       the same bytes in two shards, some tensors under other names
finetune/        base with every layer's weights nudged (a few norms left bit-identical)
"""
import json
import os
import random
import struct
import sys


def write_st(path, tensors):
    header, off, blobs = {"__metadata__": {"format": "pt"}}, 0, []
    for name, shape, raw in tensors:
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [off, off + len(raw)]}
        off += len(raw)
        blobs.append(raw)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def pack(values):
    return struct.pack(f"<{len(values)}f", *values)


def model(rng, hidden=64, layers=4, vocab=128):
    t = [("model.embed_tokens.weight", [vocab, hidden], [rng.gauss(0, 0.02) for _ in range(vocab * hidden)])]
    for i in range(layers):
        p = f"model.layers.{i}."
        t.append((p + "input_layernorm.weight", [hidden], [1 + rng.gauss(0, 0.05) for _ in range(hidden)]))
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            t.append((p + f"self_attn.{proj}.weight", [hidden, hidden],
                      [rng.gauss(0, 0.02) for _ in range(hidden * hidden)]))
        t.append((p + "post_attention_layernorm.weight", [hidden], [1 + rng.gauss(0, 0.05) for _ in range(hidden)]))
    t.append(("model.norm.weight", [hidden], [1 + rng.gauss(0, 0.05) for _ in range(hidden)]))
    return t


def main(root):
    rng = random.Random(2026)
    base = model(rng)
    for d in ("base", "resharded", "finetune"):
        os.makedirs(os.path.join(root, d), exist_ok=True)
    write_st(os.path.join(root, "base/model.safetensors"), [(n, s, pack(v)) for n, s, v in base])
    renamed = [(n.replace("self_attn", "attention"), s, pack(v)) for n, s, v in base]
    half = len(renamed) // 2
    shards = {"model-00001-of-00002.safetensors": renamed[:half], "model-00002-of-00002.safetensors": renamed[half:]}
    weight_map = {}
    for fname, tensors in shards.items():
        write_st(os.path.join(root, "resharded", fname), tensors)
        weight_map.update({n: fname for n, _, _ in tensors})
    with open(os.path.join(root, "resharded/model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f, indent=1)
    tuned = []
    for n, s, v in base:
        if n.endswith("layernorm.weight") and "layers.3." in n:
            tuned.append((n, s, pack(v)))  # a deep norm left bit-identical, as fine-tunes often do
        else:
            tuned.append((n, s, pack([x + rng.gauss(0, 0.001) for x in v])))
    write_st(os.path.join(root, "finetune/model.safetensors"), tuned)


if __name__ == "__main__":
    main(sys.argv[1])
