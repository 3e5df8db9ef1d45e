#!/usr/bin/python3
"""Verdict calibration benchmark (issue 13): how often `ckptscope compare` is right on pairs whose
relation is known.

    /usr/bin/python3 bench/verdicts/verdicts.py --bin build/ckptscope [--seeds 1,2,3] [--quick]
        [--realdata ../shared/realdata] [--out bench/verdicts/RESULTS.md] [--raw FILE] [--strict]

For every seed it generates the labelled corpus (tests/tools/gen_corpus.py: independent pairs that
share structure, derivatives of every kind, renames), runs `compare --json` on each pair, and adds
the real third-party pairs of ../shared/realdata whose relation TRUTH.md records (skipped when the
folder is absent). It prints and writes:
  - the confusion matrix truth x verdict, and the false-`derived` count (the goal is 0);
  - every failure: pair, seed, verdict, the tests that rejected, the reason;
  - per test id: the weakest true derivative's effect against the strongest independent pair's
    effect (the margin; > 0 means that test's effect alone separates them), how often the test
    rejected on each side, and any per-test `floor` the JSON carries;
  - the verdict counts per generated pair over the seeds.
Reads from the JSON only `verdict`, `reason` and `tests[]` fields `id`, `ran`, `rejects`, `effect`,
`statistic`, `z`, `p_value` (or `p`), `floor`; anything else may change. Exit 0 when every
comparison ran (the benchmark measures; --strict also fails on any wrong verdict), 1 otherwise.
--quick: one seed, the pairs the generator marks quick (and the real pairs).
"""
import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
GEN = os.path.join(ROOT, "tests", "tools", "gen_corpus.py")
VERDICTS = ["identical", "derived", "not_derived", "inconclusive", "error"]
ACCEPT = {"derived": {"derived"}, "identical": {"identical"}, "independent": {"not_derived", "inconclusive"},
          "unknown": {"inconclusive"}}

# The real pairs, labelled from ../shared/realdata/TRUTH.md ("What is known about the real pairs in this
# folder": how each pair is related, from the source repositories' histories and training scripts,
# not from any similarity score). (a, b, truth, accepted verdicts or None for the default, what TRUTH.md says)
REAL_PAIRS = [
    ("roberta-lora-subro608/checkpoint-500_adapter_model.safetensors",
     "roberta-lora-subro608/checkpoint-2000_adapter_model.safetensors", "derived", None,
     "one HF Trainer run, one output dir, later steps"),
    ("roberta-lora-subro608/checkpoint-500_adapter_model.safetensors",
     "roberta-lora-subro608/checkpoint-2400_adapter_model.safetensors", "derived", None,
     "one HF Trainer run, one output dir, later steps"),
    ("minilm-lora-souravt/results_checkpoint-100_adapter_model.safetensors",
     "minilm-lora-souravt/results_checkpoint-700_adapter_model.safetensors", "derived", None, "one run, steps 100 and 700"),
    ("minilm-lora-souravt/results_checkpoint-700_adapter_model.safetensors",
     "minilm-lora-souravt/peft_model_adapter_model.safetensors", "derived", None,
     "the same run's later save (identical adapter config)"),
    ("minilm-lora-souravt/fine_tuned_model_adapter_model.safetensors",
     "minilm-lora-souravt/results_checkpoint-100_adapter_model.safetensors", "independent", None,
     "a later, different training script: a separate LoRA run with its own random init on the same frozen base"),
    ("minilm-lora-souravt/fine_tuned_model_adapter_model.safetensors",
     "minilm-lora-souravt/results_checkpoint-700_adapter_model.safetensors", "independent", None,
     "a later, different training script: a separate LoRA run with its own random init on the same frozen base"),
    ("minilm-lora-souravt/fine_tuned_model_adapter_model.safetensors",
     "minilm-lora-souravt/peft_model_adapter_model.safetensors", "independent", None,
     "a later, different training script: a separate LoRA run with its own random init on the same frozen base"),
    ("mlx-lora-gemma2b-arjun254/0000100_adapters.safetensors", "mlx-lora-gemma2b-arjun254/0000600_adapters.safetensors",
     "derived", None, "one mlx-lm LoRA run saving every 100 iterations"),
    ("gpt2-lora-seqcls/stathopoan_adapter_model.safetensors", "gpt2-lora-seqcls/anirudh-ak_adapter_model.safetensors",
     "independent", None, "two people, separate LoRA inits on the same base (gpt2) and the same 6-class task"),
    ("distilbert-lora-seqcls/tashu014_adapter_model.safetensors",
     "distilbert-lora-seqcls/dayanidhi04_adapter_model.safetensors", "independent", None,
     "two people, two tasks (2 vs 6 classes), separate inits on the same base"),
    ("sd15-unet-lora/catundchat_pytorch_lora_weights.safetensors",
     "sd15-unet-lora/hirvita6_pytorch_lora_weights.safetensors", "independent", None,
     "two people, two datasets, bases SD 1.5 vs SD 1.4; different key-naming styles"),
    ("mnist-tinygrad/model_v1_4bc2046.safetensors", "mnist-tinygrad/model_v2_4fe0665.safetensors", "independent", None,
     "each commit retrains a fresh random TinyNet() from scratch"),
    ("mnist-tinygrad/model_v2_4fe0665.safetensors", "mnist-tinygrad/model_v3_6682ba5.safetensors", "independent", None,
     "each commit retrains a fresh random TinyNet() from scratch"),
    ("mnist-tinygrad/model_v1_4bc2046.safetensors", "mnist-tinygrad/model_v3_6682ba5.safetensors", "independent", None,
     "each commit retrains a fresh random TinyNet() from scratch"),
    ("candle-mlp-saf59/R_100_40_10_B260_ST_1_v6c1da4e.safetensors",
     "candle-mlp-saf59/R_100_40_10_B260_ST_1_v89a676a.safetensors", "derived", None,
     "identical weights, 2 tensors added (a copy: derived; not identical, B has tensors A lacks)"),
    ("fluxml-safetensors-jl/non_sharded/model.safetensors", "fluxml-safetensors-jl/sharded", "identical", None,
     "the same state dict re-sharded"),
    ("fluxml-safetensors-jl/non_sharded/model.safetensors",
     "fluxml-safetensors-jl/non_sharded/model.with_metadata.safetensors", "identical", None,
     "same tensors, other __metadata__"),
    ("fluxml-safetensors-jl/non_sharded/model.safetensors", "fluxml-safetensors-jl/old_94850a2/torch.safetensors",
     "independent", None, "an unseeded re-run of a random generator; only three all-zero tensors coincide"),
    ("candle-examples/jfk-codes_0c49e95.safetensors", "candle-examples/jfk-codes_bc33df7.safetensors", "identical",
     ["identical", "derived"], "identical bytes, other shape (a reshape between commits)"),
    ("mlx-kan/kan_784-64-10_models_model_828c727.safetensors",
     "mlx-kan/kan_784-64-10_trained_kan_model_cb0ca3d_ALLNAN.safetensors", "unknown", None,
     "B is all NaN: nothing can be compared, inconclusive"),
]


def finite(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def compare(binary, a, b, timeout):
    """One `compare --json` run: {verdict, reason, tests, seconds, error}."""
    t0 = time.time()
    try:
        p = subprocess.run([binary, "compare", "--json", "--quiet", a, b], capture_output=True, text=True,
                           timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"verdict": "error", "error": f"timed out after {timeout} s", "tests": [], "seconds": timeout}
    took = round(time.time() - t0, 2)
    doc = None
    if p.stdout.strip():
        try:
            doc = json.loads(p.stdout)
        except ValueError:
            pass
    if p.returncode != 0 or not isinstance(doc, dict) or doc.get("verdict") not in VERDICTS[:4]:
        return {"verdict": "error", "error": f"exit {p.returncode}: {p.stderr.strip()[-300:]}", "tests": [],
                "seconds": took}
    tests = []
    for t in doc.get("tests") or []:
        if not isinstance(t, dict):
            continue
        keep = {k: t.get(k) for k in ("id", "ran", "rejects", "effect", "statistic", "z", "floor", "valid")}
        keep["p_value"] = t.get("p_value", t.get("p"))
        tests.append(keep)
    return {"verdict": doc["verdict"], "reason": doc.get("reason", ""), "findings": doc.get("findings") or [],
            "tests": tests, "seconds": took}


def generate(out, seed, timeout):
    t0 = time.time()
    p = subprocess.run(["/usr/bin/python3", GEN, out, "--seed", str(seed)], capture_output=True, text=True,
                       timeout=timeout)
    if p.returncode != 0:
        raise RuntimeError(f"gen_corpus.py --seed {seed} failed: {p.stderr[-800:]}")
    with open(os.path.join(out, "manifest.json")) as f:
        return json.load(f), round(time.time() - t0, 1)


def run_all(args):
    """Every row: {source, seed, name, kind, truth, accept, a, b, result}."""
    rows, timings = [], {"generate": {}, "compare_seconds": 0.0}
    scratch = tempfile.mkdtemp(prefix="cks-verdicts-")
    try:
        for seed in args.seeds:
            d = os.path.join(scratch, f"seed-{seed}")
            manifest, took = generate(d, seed, args.timeout)
            timings["generate"][seed] = took
            pairs = [p for p in manifest["pairs"] if p.get("quick") or not args.quick]
            if args.only:
                pairs = [p for p in pairs if any(s in p["name"] for s in args.only)]
            jobs = [(p, os.path.join(d, manifest["models"][p["a"]]["dir"]),
                     os.path.join(d, manifest["models"][p["b"]]["dir"])) for p in pairs]
            print(f"seed {seed}: corpus generated in {took} s, {len(jobs)} pairs", file=sys.stderr)
            with ThreadPoolExecutor(max_workers=args.jobs) as ex:
                results = list(ex.map(lambda j: compare(args.bin, j[1], j[2], args.timeout), jobs))
            for (p, _, _), r in zip(jobs, results):
                rows.append({"source": "corpus", "seed": seed, "name": p["name"], "kind": p["kind"],
                             "truth": p["truth"], "accept": sorted(p.get("accept") or ACCEPT[p["truth"]]),
                             "a": p["a"], "b": p["b"], "params": p.get("params", {}), "result": r})
                mark = "ok " if r["verdict"] in (p.get("accept") or ACCEPT[p["truth"]]) else "BAD"
                print(f"  {mark} {p['name']:<34} truth {p['truth']:<11} -> {r['verdict']:<12} {r['seconds']:>5} s",
                      file=sys.stderr)
            if not args.keep:
                shutil.rmtree(d, ignore_errors=True)
    finally:
        if args.keep:
            print(f"corpus kept in {scratch}", file=sys.stderr)
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    if args.realdata and os.path.isdir(args.realdata):
        for a, b, truth, accept, why in REAL_PAIRS:
            pa, pb = os.path.join(args.realdata, a), os.path.join(args.realdata, b)
            if not (os.path.exists(pa) and os.path.exists(pb)):
                print(f"  skip real {a} vs {b}: missing", file=sys.stderr)
                continue
            r = compare(args.bin, pa, pb, args.timeout)
            acc = sorted(accept or ACCEPT[truth])
            rows.append({"source": "real", "seed": "-", "name": f"real/{short(a)} vs {short(b)}", "kind": why,
                         "truth": truth, "accept": acc, "a": a, "b": b, "params": {}, "result": r})
            mark = "ok " if r["verdict"] in acc else "BAD"
            print(f"  {mark} real {short(a)} vs {short(b)}: truth {truth} -> {r['verdict']}", file=sys.stderr)
    elif args.realdata:
        print(f"real pairs skipped: {args.realdata} is absent", file=sys.stderr)
    timings["compare_seconds"] = round(sum(r["result"]["seconds"] for r in rows), 1)
    return rows, timings


def short(path):
    base = path.rstrip("/").split("/")
    name = base[-1].replace("_adapter_model.safetensors", "").replace(".safetensors", "")
    return f"{base[0]}:{name}" if len(base) > 1 else name


# ---------------------------------------------------------------- tables

def confusion(rows):
    truths = [t for t in ("independent", "derived", "identical", "unknown") if any(r["truth"] == t for r in rows)]
    m = {t: {v: 0 for v in VERDICTS} for t in truths}
    for r in rows:
        m[r["truth"]][r["result"]["verdict"]] += 1
    return truths, m


def rejecting(r):
    return [t["id"] for t in r["result"]["tests"] if t.get("ran") and t.get("rejects")]


def margins(rows):
    """Per test id: the weakest effect over true derivatives and the strongest over independent pairs."""
    out = {}
    for r in rows:
        if r["truth"] not in ("derived", "independent"):
            continue
        for t in r["result"]["tests"]:
            if not t.get("ran") or not t.get("id"):
                continue
            s = out.setdefault(t["id"], {"der": [], "ind": [], "der_rej": 0, "ind_rej": 0, "der_n": 0, "ind_n": 0,
                                         "floors": set()})
            side = "der" if r["truth"] == "derived" else "ind"
            s[side + "_n"] += 1
            s[side + "_rej"] += bool(t.get("rejects"))
            if finite(t.get("effect")):
                s[side].append((t["effect"], label(r), t.get("z"), t.get("p_value")))
            if finite(t.get("floor")):
                s["floors"].add(t["floor"])
    return out


def label(r):
    return f"{r['name']} (seed {r['seed']})" if r["source"] == "corpus" else r["name"]


def fmt(x, digits=3):
    if not finite(x):
        return "-"
    if x != 0 and (abs(x) < 10 ** -digits or abs(x) >= 1e5):
        return f"{x:.2e}"
    return f"{x:.{digits}f}"


def report(rows, timings, args, wall):
    L = []
    add = L.append
    seeds = ",".join(str(s) for s in args.seeds)
    n_real = sum(r["source"] == "real" for r in rows)
    add("# Verdict calibration (issue 13)" + (" — quick run" if args.quick else ""))
    add("")
    add(f"`bench/verdicts/verdicts.py --bin {os.path.relpath(args.bin, ROOT)} --seeds {seeds}"
        + (" --quick" if args.quick else "") + "`, " + time.strftime("%Y-%m-%d %H:%M", time.localtime())
        + f", binary `{version(args.bin)}`, commit `{commit()}`.")
    add("")
    add(f"{len(rows) - n_real} generated pairs (tests/tools/gen_corpus.py, seeds {seeds}) and {n_real} real pairs "
        "(../shared/realdata, labels from its TRUTH.md"
        + ("" if n_real else "; absent or not asked for") + "). "
        f"Wall time {wall:.0f} s: generation {sum(timings['generate'].values()):.0f} s, "
        f"compare {timings['compare_seconds']:.0f} s in total "
        f"(mean {timings['compare_seconds'] / max(len(rows), 1):.2f} s, "
        f"max {max((r['result']['seconds'] for r in rows), default=0):.2f} s per pair).")
    add("")
    false_derived = [r for r in rows if r["truth"] in ("independent", "unknown") and r["result"]["verdict"] == "derived"]
    false_identical = [r for r in rows if r["truth"] != "identical" and r["result"]["verdict"] == "identical"]
    missed = [r for r in rows if r["truth"] == "derived" and r["result"]["verdict"] not in r["accept"]]
    wrong = [r for r in rows if r["result"]["verdict"] not in r["accept"]]
    add(f"**False `derived`: {len(false_derived)}** of {sum(r['truth'] in ('independent', 'unknown') for r in rows)} "
        f"pairs that are not derivations (the goal is 0). False `identical`: {len(false_identical)}. "
        f"Derivations missed: {len(missed)} of {sum(r['truth'] == 'derived' for r in rows)}. "
        f"Wrong verdicts in all: {len(wrong)} of {len(rows)}. "
        f"Errors: {sum(r['result']['verdict'] == 'error' for r in rows)}.")
    init_only = [r for r in missed if r["result"]["verdict"] == "inconclusive"
                 and "shared_initialisation_or_derivation" in r["result"].get("findings", [])]
    if init_only:
        add("")
        add(f"Of the missed derivations, {len(init_only)} ("
            + ", ".join(sorted({r['name'] for r in init_only}))
            + ") hold only tensors a random initialisation fixes: the tool says `inconclusive` with the finding "
              "`shared_initialisation_or_derivation`, because a seed twin agrees there just as well (DESIGN.md §8); "
              "the known limit, not a wrong answer.")
    add("")
    add("## Confusion matrix (rows: truth, columns: verdict)")
    add("")
    truths, m = confusion(rows)
    add("| truth \\ verdict | " + " | ".join(VERDICTS) + " | right |")
    add("|---|" + "---|" * (len(VERDICTS) + 1))
    for t in truths:
        right = sum(m[t][v] for v in ACCEPT[t])
        add(f"| {t} | " + " | ".join(str(m[t][v]) for v in VERDICTS) + f" | {right}/{sum(m[t].values())} |")
    add("")
    add("Right means: independent -> not_derived or inconclusive; derived -> derived; identical -> identical; "
        "unknown -> inconclusive (a pair may list other verdicts it accepts in the manifest).")
    add("")
    add("## Failures")
    add("")
    if not wrong:
        add("None.")
    else:
        add("| pair | seed | truth | verdict | rejecting tests | reason |")
        add("|---|---|---|---|---|---|")
        for r in sorted(wrong, key=lambda r: (r["truth"] != "independent", r["name"], str(r["seed"]))):
            why = r["result"].get("error") or r["result"].get("reason", "")
            add(f"| {r['name']} | {r['seed']} | {r['truth']} | {r['result']['verdict']} | "
                f"{', '.join(rejecting(r)) or '-'} | {why[:220].replace('|', '/')} |")
    add("")
    add("## Per test: weakest true derivative against strongest independent pair")
    add("")
    add("Effect as the JSON reports it (larger = more like a derivation). Margin = weakest derivative's effect - "
        "strongest independent's; > 0 means the test's effect alone separates every labelled pair seen here. "
        "Rejections: how often the test rejected its null on each side.")
    add("")
    add("| test | weakest derivative (effect, z, p, pair) | strongest independent (effect, z, p, pair) | margin | "
        "rejects on derived | rejects on independent | floor |")
    add("|---|---|---|---|---|---|---|")
    for tid, s in sorted(margins(rows).items()):
        lo = min(s["der"], key=lambda e: e[0]) if s["der"] else None
        hi = max(s["ind"], key=lambda e: e[0]) if s["ind"] else None
        margin = lo[0] - hi[0] if lo and hi else None
        cell = (lambda e: f"{fmt(e[0])}, z {fmt(e[2], 1)}, p {fmt(e[3], 4)}, {e[1]}" if e else "-")
        floors = ", ".join(fmt(f) for f in sorted(s["floors"])) or "-"
        add(f"| {tid} | {cell(lo)} | {cell(hi)} | {fmt(margin)} | {s['der_rej']}/{s['der_n']} | "
            f"{s['ind_rej']}/{s['ind_n']} | {floors} |")
    add("")
    add("## Verdicts per generated pair, over the seeds")
    add("")
    add("| truth | pair | kind | " + " | ".join(VERDICTS) + " |")
    add("|---|---|---|" + "---|" * len(VERDICTS))
    per = {}
    for r in rows:
        if r["source"] != "corpus":
            continue
        k = per.setdefault((r["truth"], r["name"], r["kind"]), {v: 0 for v in VERDICTS})
        k[r["result"]["verdict"]] += 1
    for (t, name, kind), cnt in sorted(per.items()):
        add(f"| {t} | {name} | {kind} | " + " | ".join(str(cnt[v]) if cnt[v] else "." for v in VERDICTS) + " |")
    reals = [r for r in rows if r["source"] == "real"]
    if reals:
        add("")
        add("## Real pairs (../shared/realdata, labels from TRUTH.md)")
        add("")
        add("| pair | truth | verdict | right | rejecting tests | TRUTH.md |")
        add("|---|---|---|---|---|---|")
        for r in reals:
            ok = "yes" if r["result"]["verdict"] in r["accept"] else "**no**"
            add(f"| {r['name'][5:]} | {r['truth']} | {r['result']['verdict']} | {ok} | "
                f"{', '.join(rejecting(r)) or '-'} | {r['kind']} |")
    add("")
    return "\n".join(L), len(false_derived), len(wrong)


def version(binary):
    try:
        return subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "?"


def commit():
    try:
        p = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return p.stdout.strip() + ("+changes" if dirty else "")
    except (OSError, subprocess.TimeoutExpired):
        return "?"


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", default=os.path.join(ROOT, "build", "ckptscope"))
    ap.add_argument("--seeds", default=None, help="comma-separated corpus seeds (default 1,2,3; --quick: 1)")
    ap.add_argument("--quick", action="store_true", help="one seed, the generator's quick subset")
    ap.add_argument("--realdata", default=None,
                    help="folder of the real pairs (default ../shared/realdata beside the tree)")
    ap.add_argument("--only", action="append", help="only corpus pairs whose name contains this (repeatable)")
    ap.add_argument("--jobs", type=int, default=1, help="comparisons run at once")
    ap.add_argument("--timeout", type=int, default=300)
    ap.add_argument("--out", default=None, help="markdown report (default bench/verdicts/RESULTS.md; "
                                                "--quick: bench/out/verdicts-quick.md)")
    ap.add_argument("--raw", default=None, help="also write every row, with its tests, as JSON here")
    ap.add_argument("--keep", action="store_true", help="keep the generated corpus (its path is printed)")
    ap.add_argument("--strict", action="store_true", help="exit 1 on any wrong verdict")
    args = ap.parse_args(argv)
    args.bin = os.path.abspath(args.bin)
    args.seeds = [int(s) for s in (args.seeds or ("1" if args.quick else "1,2,3")).split(",") if s]
    if args.realdata is None:
        args.realdata = os.path.abspath(os.path.join(ROOT, "..", "shared", "realdata"))
    if args.out is None:
        args.out = os.path.join(ROOT, "bench", "out", "verdicts-quick.md") if args.quick else \
            os.path.join(ROOT, "bench", "verdicts", "RESULTS.md")
    if not os.access(args.bin, os.X_OK):
        print(f"verdicts: {args.bin} is not an executable; build first (make -j2)", file=sys.stderr)
        return 1
    t0 = time.time()
    rows, timings = run_all(args)
    text, n_false, n_wrong = report(rows, timings, args, time.time() - t0)
    print(text)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(text)
    if args.raw:
        with open(args.raw, "w") as f:
            json.dump({"timings": timings, "rows": rows}, f, indent=1, default=str)
    print(f"wrote {os.path.relpath(args.out, ROOT)}", file=sys.stderr)
    errors = sum(r["result"]["verdict"] == "error" for r in rows)
    if errors or (args.strict and n_wrong):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
