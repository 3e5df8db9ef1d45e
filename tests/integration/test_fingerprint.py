"""Fingerprints, verify and revision diff (issue 9), against the fake Hub and local copies.

Families from tests/tools/gen_family.py (seeded). Checked:
  - fingerprint -> compare gives the live verdict and, for T2-T4, the live statistics within
    TOL (a fingerprint that holds all compare read is exact: values are stored losslessly),
    with the fingerprint as A, as B, and on both sides;
  - the size cap holds (--max-size) and a capped fingerprint says what it left out;
  - fingerprint --from LIST -j 2 DIR writes one loadable fingerprint per line;
  - verify's exit codes on each corrupted upload (truncated shard, wrong index, LFS pointer,
    NaN-filled tensor) and on a renamed copy / a derivative / an unrelated model of a known one,
    --full against the Hub's SHA-256 (and a corrupted byte on the CDN), a missing repo;
  - a version-1 fingerprint (written now, and the committed fixture) still loads and compares;
  - diff of two revisions reads nothing of a shard whose LFS SHA-256 did not change.
"""
import json
import os
import shutil
import struct
import sys
import tempfile

from ckstest import ROOT, failures, generate, report, run, tests_by_id

sys.path.insert(0, os.path.join(ROOT, "tests/fakehub"))
TOL = 1e-9  # documented in the README: fingerprint vs live statistics (T2-T4) for a full fingerprint
# documented in the README: T4a from 4-bit embedding rows (a column keeps cosine 0.994 with its
# codes, Max 1960), whatever else differs between the token samples
TOL_Q4 = 0.01


def repo_id(model):
    return "fam/" + model.replace("/", "-")


def same_stats(live, fp):
    """T2-T4 statistics equal within TOL; T1 is by design computed on what the fingerprint keeps."""
    a, b = tests_by_id(live), tests_by_id(fp)
    worst, bad = 0.0, []
    for tid, t in a.items():
        if tid in ("T1", "G"):
            continue
        u = b.get(tid)
        if u is None or u["ran"] != t["ran"]:
            bad.append(f"{tid} ran {t['ran']} vs {u and u['ran']}")
            continue
        if t["ran"] and t["statistic"] is not None and u["statistic"] is not None:
            d = abs(t["statistic"] - u["statistic"])
            worst = max(worst, d)
            if d > TOL:
                bad.append(f"{tid} {t['statistic']} vs {u['statistic']}")
    return bad, worst


def copy_model(src, dst):
    shutil.copytree(src, dst)
    return dst


def st_header(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        return n, json.loads(f.read(n))


def fingerprints_and_compare(tmp, fam, manifest, hub, env):
    fps = os.path.join(tmp, "fps")
    os.makedirs(fps)
    pairs = {p["name"]: p for p in manifest["pairs"]}
    chosen = ["llama/finetune", "llama/permuted", "llama/independent", "llama/reshard", "glm/finetune",
              "glm/layers_removed", "glm/independent"]
    made = {}

    def fp_of(model):
        if model not in made:
            out = os.path.join(fps, model.replace("/", "_") + ".ckfp")
            rc, doc, err = run(env, "fingerprint", repo_id(model), "-o", out, "--json", "--quiet")
            report(f"fingerprint {model}", rc == 0 and doc and os.path.exists(out), f"exit {rc}: {err[-300:]}")
            if rc == 0 and doc:
                report(f"fingerprint {model} records the commit", len(doc.get("commit", "")) == 40
                       and doc.get("repo") == repo_id(model), json.dumps({k: doc.get(k) for k in ("repo", "commit")}))
            made[model] = out
        return made[model]

    worst = 0.0
    for name in chosen:
        pair = pairs[name]
        a, b = repo_id(pair["a"]), repo_id(pair["b"])
        rc, live, err = run(env, "compare", a, b, "--json", "--quiet")
        if rc != 0 or not live:
            report(f"live compare {name}", False, f"exit {rc}: {err[-300:]}")
            continue
        sides = {"A": (fp_of(pair["a"]), b)}
        if name in ("llama/finetune", "glm/independent", "llama/reshard"):
            sides["B"] = (a, fp_of(pair["b"]))
            sides["A+B"] = (fp_of(pair["a"]), fp_of(pair["b"]))
        for side, (x, y) in sides.items():
            rc, doc, err = run(env, "compare", x, y, "--json", "--quiet")
            if rc != 0 or not doc:
                report(f"fingerprint {side} compare {name}", False, f"exit {rc}: {err[-300:]}")
                continue
            report(f"fingerprint {side} compare {name}: verdict {live['verdict']}", doc["verdict"] == live["verdict"],
                   f"live {live['verdict']}, fingerprint {doc['verdict']}: {doc['reason']}")
            bad, w = same_stats(live, doc)
            worst = max(worst, w)
            report(f"fingerprint {side} compare {name}: T2-T4 statistics within {TOL}", not bad, "; ".join(bad))
            t1 = tests_by_id(doc).get("T1", {})
            report(f"fingerprint {side} compare {name}: T1 says what the fingerprint limits",
                   "fingerprint" in t1.get("caveats", ""), t1.get("caveats", ""))
    print(f"# largest |live - fingerprint| over T2-T4 statistics: {worst:.3g}")
    return made


def size_cap(tmp, fam, env):
    base = os.path.join(fam, "llama/base")
    out = os.path.join(tmp, "capped.ckfp")
    rc, doc, err = run(env, "fingerprint", base, "-o", out, "--max-size", "100K", "--json", "--quiet")
    ok = rc == 0 and doc and os.path.getsize(out) <= 100 * 1024
    report("fingerprint --max-size 100K stays under the cap", ok, f"exit {rc} {err[-200:]} "
           f"size {os.path.getsize(out) if os.path.exists(out) else None}")
    if ok:
        report("capped fingerprint says it kept fewer k/v rows", "size cap" in doc["sampling"], doc["sampling"])
        rc, cmp, err = run(env, "compare", out, os.path.join(fam, "llama/finetune"), "--json", "--quiet")
        report("capped fingerprint still finds the fine-tune", rc == 0 and cmp and cmp["verdict"] == "derived",
               f"exit {rc}: {cmp and cmp['verdict']} {err[-200:]}")
        t = tests_by_id(cmp)
        report("capped fingerprint keeps its embedding rows as 4-bit codes",
               doc["embedding_4bit"] is True and "4-bit" in doc["sampling"],
               doc["sampling"])
        rc, live, err = run(env, "compare", base, os.path.join(fam, "llama/finetune"), "--json", "--quiet")
        lt = tests_by_id(live) if live else {}
        report(f"capped fingerprint: T4a runs and is within {TOL_Q4} of the live statistic",
               cmp and t["T4a"]["ran"] and lt.get("T4a", {}).get("ran")
               and abs(t["T4a"]["statistic"] - lt["T4a"]["statistic"]) <= TOL_Q4,
               f"fingerprint {json.dumps(t.get('T4a'))[:200]} live {json.dumps(lt.get('T4a'))[:200]}")
    # a cap too small for T4's minimum of shared tokens: T4 says why, the verdict is still decided by T2/T3
    tiny = os.path.join(tmp, "tiny.ckfp")
    rc, doc, err = run(env, "fingerprint", base, "-o", tiny, "--max-size", "30K", "--json", "--quiet")
    report("fingerprint --max-size 30K stays under the cap", rc == 0 and os.path.getsize(tiny) <= 30 * 1024,
           f"exit {rc} {err[-200:]}")
    if rc == 0:
        rc, cmp, err = run(env, "compare", tiny, os.path.join(fam, "llama/finetune"), "--json", "--quiet")
        t = tests_by_id(cmp) if cmp else {}
        report("tiny fingerprint: T4 not run says why, fine-tune still derived",
               cmp and cmp["verdict"] == "derived" and not t["T4a"]["ran"] and "too few" in t["T4a"]["why_not"],
               json.dumps(t.get("T4a"))[:300])
    full = os.path.join(tmp, "full.ckfp")
    rc, doc, err = run(env, "fingerprint", os.path.join(fam, "glm/base"), "-o", full, "--json", "--quiet")
    report("default fingerprint under 10 MB", rc == 0 and os.path.getsize(full) <= 10_000_000,
           f"exit {rc} {err[-200:]}")
    if rc == 0:
        print(f"# sizes: llama base {os.path.getsize(os.path.join(tmp, 'fps', 'llama_base.ckfp')) if os.path.exists(os.path.join(tmp, 'fps', 'llama_base.ckfp')) else '?'} B,"
              f" glm base {os.path.getsize(full)} B, capped llama {os.path.getsize(out) if os.path.exists(out) else '?'} B")


def from_list(tmp, env):
    lst = os.path.join(tmp, "list.txt")
    with open(lst, "w") as f:
        f.write("# known bases\n" + "\n".join(repo_id(m) for m in ("llama/base", "glm/base", "llama/independent")) + "\n\n")
    out = os.path.join(tmp, "known")
    rc, _, err = run(env, "fingerprint", "--from", lst, "-j", "2", out, "--quiet")
    files = sorted(os.listdir(out)) if os.path.isdir(out) else []
    report("fingerprint --from LIST -j 2 DIR: one file per line", rc == 0 and len(files) == 3,
           f"exit {rc}, files {files}, {err[-300:]}")
    ok = all(open(os.path.join(out, f), "rb").read(8) == b"CKSFPRNT" for f in files)
    report("fingerprint --from: every file has the magic", ok and files, str(files))
    return out


def corrupt_nan(src_dir, dst_dir):
    copy_model(src_dir, dst_dir)
    path = os.path.join(dst_dir, "model.safetensors")
    n, hdr = st_header(path)
    name = next(k for k, v in hdr.items() if k != "__metadata__" and "mlp" in k and v["dtype"] == "BF16")
    b, e = hdr[name]["data_offsets"]
    with open(path, "r+b") as f:
        f.seek(8 + n + b)
        f.write(b"\xc0\x7f" * ((e - b) // 2))  # bf16 quiet NaN everywhere in the tensor
    return name


def verify_cases(tmp, fam, known, env):
    # exit codes: 0 valid and unrelated, 1 identical/derived to a known model, 3 invalid, 5/6 could not check
    cases = []
    d = os.path.join(tmp, "bad")
    os.makedirs(d)
    # truncated shard
    t = copy_model(os.path.join(fam, "glm/base"), os.path.join(d, "truncated"))
    shard = sorted(x for x in os.listdir(t) if x.endswith(".safetensors"))[-1]
    size = os.path.getsize(os.path.join(t, shard))
    with open(os.path.join(t, shard), "r+b") as f:
        f.truncate(size - 100)
    cases.append(("truncated shard", t, 3, "Truncated"))
    # wrong index: a tensor mapped to the other shard
    w = copy_model(os.path.join(fam, "glm/base"), os.path.join(d, "wrong_index"))
    idx_path = os.path.join(w, "model.safetensors.index.json")
    idx = json.load(open(idx_path))
    shards = sorted(set(idx["weight_map"].values()))
    k = next(iter(idx["weight_map"]))
    idx["weight_map"][k] = next(s for s in shards if s != idx["weight_map"][k])
    json.dump(idx, open(idx_path, "w"))
    cases.append(("wrong index", w, 3, "IndexMismatch"))
    # LFS pointer instead of weights
    p = copy_model(os.path.join(fam, "llama/base"), os.path.join(d, "lfs_pointer"))
    with open(os.path.join(p, "model.safetensors"), "w") as f:
        f.write("version https://git-lfs.github.com/spec/v1\noid sha256:" + "ab" * 32 + "\nsize 2303144\n")
    cases.append(("LFS pointer", p, 3, "GitLfsPointer"))
    # NaN-filled tensor
    nan_dir = os.path.join(d, "nan")
    corrupt_nan(os.path.join(fam, "llama/base"), nan_dir)
    cases.append(("NaN-filled tensor", nan_dir, 3, "NonFinite"))
    # relatives and strangers of the known models
    cases.append(("renamed copy of a known model", os.path.join(fam, "llama/reshard"), 1, "identical"))
    cases.append(("fine-tune of a known model", os.path.join(fam, "llama/finetune"), 1, "derived"))
    # only the alignment (T4) sees a permuted derivative: the screen must let it through
    cases.append(("permuted derivative of a known model", os.path.join(fam, "glm/permuted"), 1, "derived"))
    cases.append(("valid and unrelated", os.path.join(fam, "glm/independent"), 0, None))
    for name, src, want, what in cases:
        args = ["verify", src, "--json", "--quiet"]
        if want in (0, 1):
            args += ["--against", known]
        rc, doc, err = run(env, *args)
        why = f"exit {rc}, want {want}: {err[-200:]} {json.dumps(doc)[:600] if doc else ''}"
        ok = rc == want and doc is not None
        if ok and want == 3:
            ok = any(what in p["rule"] or what in p["detail"] for p in doc["problems"]) and not doc["valid"]
        if ok and want == 1:
            ok = doc["provenance"] and doc["provenance"][0]["verdict"] == what and not doc["provenance"][0]["screened"]
        report(f"verify {name}: exit {want}", ok, why)
    # the screen: the unrelated upload is cleared by it against the known models it is not
    # related to; --no-screen compares fully and reaches the same exit code
    src = os.path.join(fam, "glm/independent")
    rc, doc, err = run(env, "verify", src, "--against", known, "--json", "--quiet")
    prov = doc["provenance"] if doc else []
    report("verify: the screen clears unrelated known models (screened_out, no full comparison)",
           rc == 0 and prov and all(p["verdict"] in ("screened_out", "not_derived", "inconclusive") for p in prov)
           and any(p["screened"] and p["verdict"] == "screened_out" for p in prov),
           json.dumps(prov)[:600])
    rc, doc, err = run(env, "verify", src, "--against", known, "--no-screen", "--json", "--quiet")
    prov = doc["provenance"] if doc else []
    report("verify --no-screen: every known model compared fully, same exit code",
           rc == 0 and prov and not any(p["screened"] for p in prov)
           and all(p["verdict"] in ("not_derived", "inconclusive") for p in prov), json.dumps(prov)[:600])


def verify_hub(tmp, hub, known, env):
    rc, doc, err = run(env, "verify", repo_id("llama/base"), "--full", "--json", "--quiet")
    files = doc["checks"]["files"] if doc else []
    report("verify --full: every file's SHA-256 equals the Hub's", rc == 0 and files and
           all(f.get("sha256_match") is True for f in files), f"exit {rc} {err[-200:]} {files}")
    # a flipped byte in the header breaks its JSON; one in the tensor data only the SHA-256 sees
    for offset, rule in ((5000, "InvalidHeader"), (1_000_000, "Sha256Mismatch")):
        hub.faults([{"server": "cdn", "match": "model.safetensors", "kind": "corrupt", "file_offset": offset, "count": -1}])
        rc, doc, err = run(dict(env, CKPTSCOPE_CACHE=os.path.join(tmp, f"cache-corrupt-{offset}")), "verify",
                           repo_id("llama/finetune"), "--full", "--json", "--quiet")
        hub.clear_faults()
        named = [(p.get("rule"), p.get("file")) for p in (doc or {}).get("problems", [])]
        report(f"verify --full: byte {offset} corrupted on the CDN: exit 3, {rule} in model.safetensors",
               rc == 3 and doc and not doc["valid"] and doc["outcome"] == "invalid"
               and (rule, "model.safetensors") in named, f"exit {rc} {err[-300:]} {named}")
    rc, doc, err = run(env, "verify", "fam/no-such-model", "--json", "--quiet")
    report("verify: a missing repo could not be checked (exit 6)", rc == 6 and doc and doc["outcome"] == "could_not_check",
           f"exit {rc} {err[-200:]}")


def old_version(tmp, fam, env):
    v1 = os.path.join(tmp, "v1.ckfp")
    rc, _, err = run(env, "fingerprint", os.path.join(fam, "llama/base"), "-o", v1, "--format-version", "1", "--quiet")
    ok = rc == 0 and struct.unpack("<I", open(v1, "rb").read()[8:12])[0] == 1
    report("fingerprint --format-version 1 writes version 1", ok, f"exit {rc} {err[-200:]}")
    if ok:
        rc, doc, err = run(env, "compare", v1, os.path.join(fam, "llama/finetune"), "--json", "--quiet")
        report("a version-1 fingerprint loads and compares", rc == 0 and doc and doc["verdict"] == "derived"
               and doc["sources"]["a"]["format_version"] == 1, f"exit {rc} {err[-200:]}")
    fixture = os.path.join(ROOT, "tests/fixtures/fingerprint-v1-llama-base.ckfp")
    if not os.path.exists(fixture):
        report("committed version-1 fixture loads", False, "missing " + fixture)
        return
    rc, doc, err = run(env, "compare", fixture, os.path.join(fam, "llama/base"), "--json", "--quiet")
    report("committed version-1 fixture loads: identical to the regenerated base", rc == 0 and doc and
           doc["verdict"] == "identical", f"exit {rc} {err[-200:]} {doc and doc['verdict']}")


def diff_revisions(tmp, fam, store, hub, env):
    import hubrepo
    g = os.path.join(fam, "glm/base")
    files = {n: os.path.join(g, n) for n in os.listdir(g)}
    shards = sorted(n for n in files if n.endswith(".safetensors"))
    c1 = hubrepo.add_repo(store, "rev/model", files, tags=["v1"])
    changed = shards[-1]
    c2 = hubrepo.add_repo(store, "rev/model", {changed: os.path.join(fam, "glm/finetune", changed)}, inherit=True,
                          tags=["v2"])
    hubrepo.add_ref(store, "rev/model", "refs/pr/1", c2)
    env2 = dict(env, CKPTSCOPE_CACHE=os.path.join(tmp, "cache-diff"))
    hub.clear_log()
    rc, doc, err = run(env2, "diff", "rev/model@v1", "rev/model@refs/pr/1", "--json", "--quiet")
    if rc not in (0, 1) or not doc:
        report("diff two revisions", False, f"exit {rc}: {err[-300:]}")
        return
    status = {f["path"]: f["status"] for f in doc["files"]}
    report("diff revisions: files by LFS hash", status.get(changed) == "changed" and
           all(status.get(s) == "identical" for s in shards if s != changed), json.dumps(status))
    report("diff revisions: tensors of the changed shard only", rc == 1 and doc["changed"] and
           not doc["added"] and not doc["removed"], json.dumps(doc["counts"]))
    unchanged = [s for s in shards if s != changed]
    _, hdr = st_header(os.path.join(g, unchanged[0]))
    n_header = 8 + st_header(os.path.join(g, unchanged[0]))[0]
    import hashlib
    sha = hashlib.sha256(open(os.path.join(g, unchanged[0]), "rb").read()).hexdigest()
    beyond, seen = [], 0
    for e in hub.log():
        # CDN URLs name the LFS object by its SHA-256, not by the file name
        if e.get("server") != "cdn" or sha not in e.get("path", ""):
            continue
        seen += 1
        rng = {k.lower(): v for k, v in e.get("headers", {}).items()}.get("range", "")
        start = int(rng.split("=")[1].split("-")[0]) if "=" in rng else 0
        end = int(rng.split("-")[1]) if "=" in rng and rng.split("-")[1] else 1 << 60
        if end >= n_header + 4096:  # the header read may round up to 4 KiB, never into tensor data
            beyond.append(rng or "whole file")
        del start
    report("diff revisions: the unchanged shard's header was read, no tensor bytes", seen > 0 and not beyond,
           f"{seen} requests, beyond the header: {beyond[:5]}")
    report("diff revisions: only the changed shard's tensors hashed",
           doc["tensors_hashed_a"] == doc["tensors_hashed_b"] and 0 < doc["tensors_hashed_a"] < len(hdr) + 200,
           f"{doc['tensors_hashed_a']} / {doc['tensors_hashed_b']}")
    del c1


def main():
    tmp = tempfile.mkdtemp(prefix="cks-fp-")
    try:
        fam = os.path.join(tmp, "fam")
        if not generate("gen_family.py", fam, timeout=120):
            return 1
        manifest = json.load(open(os.path.join(fam, "manifest.json")))
        import harness
        import hubrepo
        store = os.path.join(tmp, "store")
        for name, model in manifest["models"].items():
            d = os.path.join(fam, model["dir"])
            hubrepo.add_repo(store, repo_id(name), {n: os.path.join(d, n) for n in os.listdir(d)})
        with harness.start(store) as hub:
            env = dict(os.environ, HF_ENDPOINT=hub.hub_url, CKPTSCOPE_CACHE=os.path.join(tmp, "cache"))
            env.pop("HF_TOKEN", None)
            fingerprints_and_compare(tmp, fam, manifest, hub, env)
            size_cap(tmp, fam, env)
            known = from_list(tmp, env)
            verify_cases(tmp, fam, known, env)
            verify_hub(tmp, hub, known, env)
            old_version(tmp, fam, env)
            diff_revisions(tmp, fam, store, hub, env)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 1 if failures() else 0


if __name__ == "__main__":
    sys.exit(main())
