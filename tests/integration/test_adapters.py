"""LoRA adapters in `ckptscope compare` (issue 13): compared as the updates they apply.

Checked against an independent reference written here (numpy + scipy.stats.spearmanr):
  - L's statistic (to 1e-6: ranks are kept as float32) is the lower quartile over modules of the Spearman correlation of the two updates
    up @ down (every entry: the modules are small enough that none is sampled), and L-init's
    the median Spearman of the down factors;
  - the same adapter saved in another key style (kohya, in F16; mlx-lm, transposed) is found
    by content: derived, with L ~ 1, though no tensor is byte-identical;
  - a later checkpoint of one run is derived;
  - a seed twin (same down factors, independently trained up factors) is not derived and is
    reported as a shared initialisation;
  - an independent adapter is not derived and shares nothing.
"""
import json
import os
import struct
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ckstest import failures, report, run, tests_by_id  # noqa: E402


def write(path, tensors):
    import numpy as np
    header, blobs, off = {}, [], 0
    for name, arr, dtype in tensors:
        raw = np.ascontiguousarray(arr, {"F32": "<f4", "F16": "<f2"}[dtype]).tobytes()
        header[name] = {"dtype": dtype, "shape": list(arr.shape), "data_offsets": [off, off + len(raw)]}
        off += len(raw)
        blobs.append(raw)
    hb = json.dumps(header).encode()
    hb += b" " * (-len(hb) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hb)) + hb + b"".join(blobs))


def compare(a, b):
    rc, doc, err = run(dict(os.environ), "compare", "--json", "--quiet", a, b)
    return doc, f"exit {rc}: {err[-300:]}"


def test_of(doc, tid):
    return tests_by_id(doc).get(tid, {"ran": False, "rejects": False, "significant": False})


MODULES = [(layer, kind) for layer in range(6) for kind in ("q_proj", "v_proj")]
OUT, IN, R = 48, 40, 4


def peft_name(layer, kind, factor):
    return f"base_model.model.model.layers.{layer}.self_attn.{kind}.lora_{factor}.weight"


def kohya_name(layer, kind, factor):
    return f"lora_unet_model_layers_{layer}_self_attn_{kind}.lora_{'down' if factor == 'A' else 'up'}.weight"


def mlx_name(layer, kind, factor):
    return f"model.layers.{layer}.self_attn.{kind}.lora_{factor.lower()}"


def main():
    try:
        import numpy as np
        from scipy.stats import spearmanr
    except ImportError:
        print("SKIP adapters: /usr/bin/python3 without numpy/scipy")
        return 0
    rng = np.random.default_rng(2026)
    bound = 1 / np.sqrt(IN)

    def adapter(down=None, up_scale=0.05):
        down = down if down is not None else {m: rng.uniform(-bound, bound, (R, IN)) for m in MODULES}
        up = {m: up_scale * rng.standard_normal((OUT, R)) for m in MODULES}
        return down, up

    down_a, up_a = adapter()
    later_down = {m: down_a[m] + 0.02 * bound * rng.standard_normal((R, IN)) for m in MODULES}
    later_up = {m: up_a[m] + 0.01 * rng.standard_normal((OUT, R)) for m in MODULES}
    twin_down, twin_up = adapter(down=dict(down_a))
    ind_down, ind_up = adapter()

    tmp = tempfile.mkdtemp(prefix="cks-adapters-")
    paths = {}

    def save(tag, down, up, style="peft", dtype="F32"):
        tensors = []
        for m in MODULES:
            if style == "peft":
                tensors += [(peft_name(*m, "A"), down[m], dtype), (peft_name(*m, "B"), up[m], dtype)]
            elif style == "kohya":
                tensors += [(kohya_name(*m, "A"), down[m], dtype), (kohya_name(*m, "B"), up[m], dtype)]
            else:  # mlx-lm stores the transposes
                tensors += [(mlx_name(*m, "A"), down[m].T, dtype), (mlx_name(*m, "B"), up[m].T, dtype)]
        paths[tag] = os.path.join(tmp, tag + ".safetensors")
        write(paths[tag], tensors)

    save("a", down_a, up_a)
    save("later", later_down, later_up)
    save("kohya_f16", down_a, up_a, "kohya", "F16")
    save("mlx", down_a, up_a, "mlx")
    save("twin", twin_down, twin_up)
    save("independent", ind_down, ind_up)

    # the reference statistics, from the files' own values (F32 as written)
    def updates(down, up):
        return {m: up[m].astype(np.float32).astype(np.float64) @ down[m].astype(np.float32).astype(np.float64)
                for m in MODULES}

    ua = updates(down_a, up_a)
    ref_l = float(np.percentile([spearmanr(ua[m].ravel(), updates(later_down, later_up)[m].ravel())[0]
                                 for m in MODULES], 25))
    ref_init = float(np.median([spearmanr(down_a[m].astype(np.float32).ravel(),
                                          later_down[m].astype(np.float32).ravel())[0] for m in MODULES]))

    doc, err = compare(paths["a"], paths["later"])
    if doc is None:
        report("later checkpoint compared", False, err)
        return 1
    tl, ti = test_of(doc, "L"), test_of(doc, "L-init")
    report("L statistic = lower quartile over modules of the updates' Spearman (scipy reference)",
           tl["ran"] and abs(tl["statistic"] - ref_l) < 1e-6, f"{tl.get('statistic')} vs {ref_l}")
    report("L-init statistic = median Spearman of the down factors (scipy reference)",
           ti["ran"] and abs(ti["statistic"] - ref_init) < 1e-6, f"{ti.get('statistic')} vs {ref_init}")
    report("later checkpoint of one run -> derived by L", doc["verdict"] == "derived" and tl["rejects"],
           f"{doc['verdict']}: {doc['reason']}")
    report("L's null exchanges modules of one shape (p exact, 9999 draws)",
           tl["permutations"] == 9999 and "matched strata" in tl["null"], tl.get("null"))

    for tag, what in (("kohya_f16", "kohya key style in F16"), ("mlx", "mlx-lm key style, transposed factors")):
        doc, err = compare(paths["a"], paths[tag])
        tl = test_of(doc, "L") if doc else {}
        ok = doc and doc["verdict"] == "derived" and tl.get("statistic", 0) > 0.999 and tl.get("rejects")
        report(f"the same adapter in the {what} -> derived by content", bool(ok),
               f"{doc and doc['verdict']}: {doc and doc['reason']} {err[-200:]}")
        if doc:
            report(f"{what}: no tensor byte-identical (the match is by content, not bytes)",
                   not any(not m["low_information"] for m in doc["identical_tensors"]), str(doc["identical_tensors"][:3]))

    doc, err = compare(paths["a"], paths["twin"])
    tl, ti = test_of(doc, "L"), test_of(doc, "L-init")
    report("seed twin (same down factors, own up factors) -> not derived",
           doc["verdict"] in ("not_derived", "inconclusive") and not tl["rejects"], f"{doc['verdict']}: {doc['reason']}")
    report("seed twin: reported as a shared initialisation",
           ti["rejects"] and "shared_initialisation" in doc.get("findings", []),
           f"L-init {ti.get('statistic')} findings {doc.get('findings')}")

    doc, err = compare(paths["a"], paths["independent"])
    report("independent adapter -> not derived, nothing shared",
           doc["verdict"] == "not_derived" and not doc.get("findings"),
           f"{doc['verdict']} {doc.get('findings')}: {doc['reason']}")
    return 1 if failures() else 0


if __name__ == "__main__":
    sys.exit(main())
