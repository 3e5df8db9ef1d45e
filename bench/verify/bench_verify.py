#!/usr/bin/python3
"""`verify --against DIR` with 1,000 fingerprints of 100B-class models (issue 15).

    /usr/bin/python3 bench/verify/bench_verify.py --bin build-o3/ckptscope [--hub DIR] [--n 1000]
        [--baseline-n 16] [--runs 3] [--quick] [--out bench/verify/RESULTS.md]

The known models: `ckptscope fingerprint` of the three bench/scale models (GLM-4.5-Air-shaped, its
fine-tune, Solar-Open-100B-shaped; bench/out/scale/hub/models, made by bench/scale), then variants
of those fingerprints, each a distinct file unrelated to every model: its norm gains, router
biases, k/v rows and embedding rows rolled by random offsets (so no index or token correspondence
survives), its tensor hashes redrawn (those of the rolled norm gains recomputed). One planted
member is the SOURCE's own fingerprint unchanged: it must come out `derived`.

SOURCE is the Solar-shaped model (local path). Warm: the SOURCE's bytes and every fingerprint in
the page cache and CKPTSCOPE_CACHE (farm-bench's uncounted warm-up run makes the summaries). The
baseline is the same binary with --no-prescreen (today's path: open each fingerprint, screen at 99
permutations) on the first --baseline-n unrelated members, extrapolated to n (labelled as such);
both are timed by farm-bench, alternating A B A B.
"""
import argparse
import hashlib
import json
import multiprocessing
import os
import random
import re
import shutil
import struct
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
BASES = ["upstage__Solar-Open-100B", "zai-org__GLM-4.5-Air", "bench__GLM-4.5-Air-finetune"]
SOURCE = "upstage__Solar-Open-100B"
MAGIC = b"CKSFPRNT"


def run(cmd, env=None, **kw):
    return subprocess.run(cmd, env=env, check=True, **kw)


_BASE = {}


def read_fp(path):
    """(version, JSON text, parsed JSON, binary section) of a fingerprint; cached per base."""
    if path in _BASE:
        return _BASE[path]
    raw = open(path, "rb").read()
    if raw[:8] != MAGIC:
        raise SystemExit(f"{path}: not a fingerprint")
    version, = struct.unpack("<I", raw[8:12])
    payload = subprocess.run(["zstd", "-dcq"], input=raw[20:], capture_output=True, check=True).stdout
    n, = struct.unpack("<I", payload[:4])
    text = payload[4:4 + n].decode()
    _BASE[path] = (version, text, json.loads(text), bytes(payload[4 + n:]))
    return _BASE[path]


def write_fp(path, version, text, binary):
    js = text.encode()
    payload = struct.pack("<I", len(js)) + js + bytes(binary)
    frame = subprocess.run(["zstd", "-q", "-1", "-c"], input=payload, capture_output=True, check=True).stdout
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(MAGIC + struct.pack("<IQ", version, len(payload)) + frame)
    os.replace(tmp, path)


ELEM = {"bf16": 2, "f32": 4, "f16": 2, "u32": 4, "u8": 1}


def roll(binary, ref, rng, unit=None):
    """Roll an array in place by a random number of elements (or of `unit` bytes)."""
    if not ref or ref.get("enc") not in ELEM:
        return
    size = ELEM[ref["enc"]]
    off, n = ref["off"], ref["n"] * size
    unit = unit or size
    if n < 2 * unit:
        return
    k = rng.randrange(1, n // unit) * unit
    seg = binary[off:off + n]
    binary[off:off + n] = seg[k:] + seg[:k]


def variant(base, out, index, seed):
    """A distinct fingerprint unrelated to every model: the JSON is edited as text (hashes are
    64 hex digits in place, so nothing else moves), the binary arrays rolled."""
    rng = random.Random(seed)
    version, text, meta, frozen = read_fp(base)
    binary = bytearray(frozen)
    new_hash = {}
    for layer in meta.get("layers") or []:
        for key in ("attn_norm", "ffn_norm", "router_bias"):
            item = layer.get(key)
            if item and item.get("data") and item["data"].get("enc") in ELEM:
                roll(binary, item["data"], rng)
                d = item["data"]
                new_hash[item["tensor"]] = hashlib.sha256(bytes(binary[d["off"]:d["off"] + d["n"] * ELEM[d["enc"]]])
                                                          ).hexdigest()
        for key in ("k", "v", "router"):
            item = layer.get(key)
            if item and item.get("data") and item["data"].get("enc") in ELEM:
                roll(binary, item["data"], rng)
    swap = {}
    for h in meta.get("hashes") or []:
        swap[h[1]] = new_hash.get(h[0]) or "%064x" % rng.getrandbits(256)
    emb = meta.get("embed")
    if emb and emb.get("data"):
        d = emb["data"]
        if d["enc"] == "q4":
            row = emb["cols"] // 2
            nbytes = d["n"] // 2
            k = rng.randrange(1, emb["ids"]["n"]) * row
            seg = binary[d["off"]:d["off"] + nbytes]
            binary[d["off"]:d["off"] + nbytes] = seg[k:] + seg[:k]
        else:
            roll(binary, d, rng, unit=emb["cols"] * ELEM[d["enc"]])
    text = re.sub(r'"([0-9a-f]{64})"', lambda m: '"%s"' % swap.get(m.group(1), m.group(1)), text)
    name = f"bench/variant-{index:04d}-of-{meta['source'].rsplit('/', 1)[-1]}"
    text = text.replace('"source":' + json.dumps(meta["source"]), '"source":' + json.dumps(name), 1)
    text = text.replace('"source": ' + json.dumps(meta["source"]), '"source": ' + json.dumps(name), 1)
    write_fp(out, version, text, binary)


def _variant_job(job):
    variant(*job)
    return job[1]


def make_members(binary, hub, work, n, env):
    base_dir = os.path.join(work, "base")
    fps = os.path.join(work, f"fps-{n}")
    os.makedirs(base_dir, exist_ok=True)
    stamp = os.path.join(fps, "stamp.json")
    if os.path.exists(stamp):
        return fps
    for m in BASES:
        p = os.path.join(base_dir, m + ".ckfp")
        if not os.path.exists(p):
            run([binary, "fingerprint", os.path.join(hub, m), "-o", p], env=env, stdout=subprocess.DEVNULL)
    shutil.rmtree(fps, ignore_errors=True)
    os.makedirs(fps)
    t0 = time.time()
    jobs = []
    # the planted derivative: the SOURCE's own fingerprint, in the middle of the name order
    shutil.copy(os.path.join(base_dir, SOURCE + ".ckfp"), os.path.join(fps, "m0500-planted.ckfp"))
    for i in range(n):
        if i == 500 or (n <= 500 and i == n // 2):
            continue
        jobs.append((os.path.join(base_dir, BASES[i % 3] + ".ckfp"), os.path.join(fps, f"m{i:04d}.ckfp"), i,
                     20261204 + i))
    with multiprocessing.Pool(2) as pool:
        for _ in pool.imap_unordered(_variant_job, jobs, chunksize=8):
            pass
    if n <= 500:
        os.rename(os.path.join(fps, "m0500-planted.ckfp"), os.path.join(fps, f"m{n // 2:04d}-planted.ckfp"))
    json.dump({"n": n, "made_s": round(time.time() - t0, 1)}, open(stamp, "w"))
    return fps


def corpus_check(binary, seeds):
    """The pre-screen on the verdict calibration corpus (tests/integration/test_verify_prescreen.py):
    (exit code, PASS count, FAIL lines, its summary line)."""
    env = dict(os.environ, CKS_BIN=binary, CKS_BUILD=os.path.dirname(binary), CKS_ROOT=ROOT,
               CKS_PRESCREEN_SEEDS=seeds,
               CKS_REALDATA=os.environ.get("CKS_REALDATA", os.path.join(ROOT, "..", "shared", "realdata")))
    p = subprocess.run(["/usr/bin/python3", os.path.join(ROOT, "tests", "integration", "test_verify_prescreen.py")],
                       env=env, capture_output=True, text=True)
    lines = p.stdout.splitlines()
    return (p.returncode, sum(ln.startswith("PASS") for ln in lines), [ln for ln in lines if ln.startswith("FAIL")],
            next((ln for ln in lines if ln.startswith("# ")), ""))


def farm(a, b, runs, timeout, env):
    cmd = ["farm-bench", "-n", str(runs), "--warmup", "1", "--timeout", str(timeout), "--vs", b, "--"] + a
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    return p.returncode, p.stdout + p.stderr


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=os.path.join(ROOT, "build", "ckptscope"))
    ap.add_argument("--hub", default=os.path.join(ROOT, "bench", "out", "scale", "hub", "models"))
    ap.add_argument("--work", default=os.path.join(ROOT, "bench", "out", "verify"))
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--baseline-n", type=int, default=16)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=os.path.join(HERE, "RESULTS.md"))
    args = ap.parse_args()
    if args.quick:
        args.n, args.baseline_n, args.runs = 200, 8, 1
    binary = os.path.abspath(args.bin)
    if not all(os.path.isdir(os.path.join(args.hub, m)) for m in BASES):
        print(f"bench/verify: SKIP: the bench/scale models are not in {args.hub} (run bench/scale first)")
        return 0
    env = dict(os.environ, CKPTSCOPE_CACHE=os.path.join(args.work, "cache"))
    fps = make_members(binary, args.hub, args.work, args.n, env)
    source = os.path.join(args.hub, SOURCE)
    sub = os.path.join(args.work, f"baseline-{args.baseline_n}")
    if not os.path.isdir(sub):
        os.makedirs(sub)
        for name in sorted(os.listdir(fps))[:args.baseline_n]:
            if name.endswith(".ckfp") and "planted" not in name:
                os.symlink(os.path.join(fps, name), os.path.join(sub, name))
    out_json = os.path.join(args.work, "new.json")
    # correctness of the run that is timed: every member listed, the planted one derived
    p = subprocess.run([binary, "verify", source, "--against", fps, "--json"], env=env, capture_output=True,
                       text=True)
    doc = json.loads(p.stdout)
    open(out_json, "w").write(p.stdout)
    prov = doc["provenance"]
    planted = [k for k in prov if "planted" in k["fingerprint"]]
    counts = {}
    for k in prov:
        key = "prescreened" if k.get("prescreened") else k["verdict"]
        counts[key] = counts.get(key, 0) + 1
    ok = p.returncode == 1 and len(prov) == args.n and planted and planted[0]["verdict"] in ("derived", "identical")
    new = [binary, "verify", source, "--against", fps, "--json"]
    base = f"{binary} verify {source} --against {sub} --no-prescreen --json"
    none = [binary, "verify", source, "--json"]
    t = time.time()
    load0 = os.getloadavg()
    rc_f, text = farm(new, base, args.runs, 3600, env)
    rc_n, text_none = farm(none, " ".join(none), 1 if args.quick else 3, 600, env)
    elapsed = time.time() - t
    load1 = os.getloadavg()

    def medians(report, what="wall"):
        """[[min, median, max] of A, of B] for one figure of farm-bench's table."""
        rows = [ln for ln in report.splitlines() if re.match(r"\s*(A|B)?\s*%s s" % what, ln)]
        return [[float(x) for x in re.findall(r"(\d+\.\d+)", ln)[:3]] for ln in rows]

    w = medians(text)
    w0 = medians(text_none)
    c = medians(text, "cpu")
    lines = ["# verify --against at 1,000 fingerprints (issue 15)", "",
             f"`/usr/bin/python3 bench/verify/bench_verify.py --bin {os.path.relpath(binary, ROOT)}"
             f"{' --quick' if args.quick else ''}` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: "
             f"SOURCE the Solar-Open-100B-shaped bench model (local), --against a folder of {args.n} fingerprints "
             f"(variants of the three bench/scale models' fingerprints, ~8.6 MiB each, and the SOURCE's own "
             f"fingerprint planted). Warm: farm-bench's uncounted warm-up run reads the SOURCE and makes the "
             f"summaries; {args.runs} counted runs, A and B alternating.", "",
             f"- A (new): `verify SOURCE --against fps-{args.n}/ --json` (pre-screen on: {args.n} >= 8 fingerprints)",
             f"- B (baseline, today's path): `verify SOURCE --against baseline-{args.baseline_n}/ --no-prescreen --json`, "
             f"{args.baseline_n} unrelated members, **extrapolated** to {args.n}: "
             f"no-against time + (B - no-against) x {args.n}/{args.baseline_n}",
             f"- verify without --against (validation only): the fixed part of both", "",
             "farm-bench (A vs B):", "", "```", text.strip(), "```", "", "farm-bench (validation only):", "", "```",
             text_none.strip(), "```", ""]
    try:
        a_min, a_med = w[0][0], w[0][1]
        b_min, b_med = w[1][0], w[1][1]
        z_med = w0[0][1]
        per = (b_med - z_med) / args.baseline_n
        extrap = z_med + per * args.n
        lines += ["| figure | min | median |", "|---|---|---|",
                  f"| A: new path, {args.n} fingerprints | {a_min:.1f} s | {a_med:.1f} s |",
                  f"| B: today's path, {args.baseline_n} fingerprints | {b_min:.1f} s | {b_med:.1f} s |",
                  f"| validation only | {w0[0][0]:.1f} s | {z_med:.1f} s |",
                  f"| B per fingerprint | | {per:.2f} s |",
                  f"| B extrapolated to {args.n} (anchor) | | {extrap:.0f} s |",
                  f"| ratio anchor / A | | {extrap / a_med:.0f}x |",
                  f"| A cpu (user + sys) | {c[0][0]:.1f} s | {c[0][1]:.1f} s |",
                  f"| B cpu (user + sys) | {c[1][0]:.1f} s | {c[1][1]:.1f} s |", "",
                  f"Load average (1 min) of the 2-core machine, shared with other benchmarks: {load0[0]:.1f} at the "
                  f"start, {load1[0]:.1f} at the end.", "",
                  f"Goal: A under 60 s warm with {args.n} fingerprints: "
                  f"**{'met' if a_med < 60 and args.n >= 1000 else 'not met' if args.n >= 1000 else 'quick run'}** "
                  f"(median {a_med:.1f} s)."]
    except (IndexError, ValueError):
        lines += ["(could not read farm-bench's figures: see its output above)"]
    seeds = "1" if args.quick else "1,2,3"
    t = time.time()
    rc_c, n_pass, fails, summary = corpus_check(binary, seeds)
    lines += ["", f"Calibration corpus, seeds {seeds} and the real pairs of bench/verdicts "
              f"(`CKS_PRESCREEN_SEEDS={seeds} tests/integration/test_verify_prescreen.py`, {time.time() - t:.0f} s): "
              f"every derived or identical pair kept by the pre-screen and verify's verdict equal to compare's: "
              f"**{n_pass} PASS, {len(fails)} FAIL**; {summary.lstrip('# ')}."] + [f"- {f}" for f in fails[:20]]
    ok = ok and rc_c == 0
    lines += ["", f"Outcome of A: exit {p.returncode}, {len(prov)} members listed: {json.dumps(counts)}; planted "
              f"member: {planted[0]['verdict'] if planted else 'missing'}" + ("" if ok else " **(WRONG)**"),
              f"Bench wall time {elapsed:.0f} s."]
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    open(args.out, "w").write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if ok and rc_f == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
