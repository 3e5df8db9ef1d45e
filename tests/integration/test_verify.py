"""`ckptscope verify` (issue 9) on corrupted uploads served by the fake Hub (127.0.0.1 only).

Each case publishes one upload as a Hub repository and asserts the exact exit code and, from
--json, the named problem: its rule and the file it is in (and the tensor where there is
one). Cases: a valid upload (sizes agree three ways), a truncated shard, a wrong index, an
LFS pointer, a NaN-filled tensor, an all-zero tensor (a warning: exit 0), a size
disagreement between the Hub's listing and what its CDN serves (cold and warm cache), a
renamed copy of a known model (--against a fingerprint: exit 1, identical), a corrupted CDN
under --full (exit 3, Sha256Mismatch), two broken shards and a wrong index entry at once
(every one reported, on the Hub and locally), an unreadable index beside a truncated shard,
and a shard the index names that the repository lacks.
"""
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile

from ckstest import BIN, ROOT, failures, generate, report

sys.path.insert(0, os.path.join(ROOT, "tests/fakehub"))


def run(env, *args, timeout=300):
    p = subprocess.run([BIN, *args, "--json", "--quiet"], env=env, capture_output=True, text=True, timeout=timeout)
    try:
        doc = json.loads(p.stdout) if p.stdout.strip() else None
    except ValueError:
        doc = None
    return p.returncode, doc, p.stderr


def named(doc, key="problems"):
    return [(p.get("rule"), p.get("file"), p.get("tensor")) for p in (doc or {}).get(key, [])]


def checks(doc, key, default=None):
    return ((doc or {}).get("checks") or {}).get(key, default)


def file_entry(doc, path):
    return next((x for x in checks(doc, "files", []) if x.get("path") == path), None)


def has(doc, rule, file, tensor=None, key="problems"):
    return any(r == rule and f == file and (tensor is None or t == tensor) for r, f, t in named(doc, key))


def why(rc, doc, err):
    return f"exit {rc}; {json.dumps(named(doc))}; {err[-300:]}; {json.dumps(doc)[:700] if doc else ''}"


def st_header(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        return n, json.loads(f.read(n))


def shards(d):
    return sorted(x for x in os.listdir(d) if x.endswith(".safetensors"))


def fill_tensor(d, pattern, pick):
    """Overwrite a whole BF16 tensor of d/model.safetensors with `pattern` (2 bytes); returns its name."""
    path = os.path.join(d, "model.safetensors")
    n, hdr = st_header(path)
    name = next(k for k, v in sorted(hdr.items()) if k != "__metadata__" and pick(k) and v["dtype"] == "BF16")
    b, e = hdr[name]["data_offsets"]
    with open(path, "r+b") as f:
        f.seek(8 + n + b)
        f.write(pattern * ((e - b) // 2))
    return name


def break_header(path):
    """Make one dtype of the header unknown (same length): InvalidHeaderDeserialization."""
    with open(path, "r+b") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        raw = f.read(n)
        for old, new in ((b'"BF16"', b'"BX16"'), (b'"F32"', b'"X32"')):
            if old in raw:
                f.seek(8 + raw.index(old))
                f.write(new)
                return
    raise RuntimeError("no dtype to break in " + path)


def truncate(path, by):
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(size - by)
    return size


def build_uploads(fam, d):
    """Local copies of the corrupted uploads: name -> (dir, facts for the assertions)."""
    up = {}

    def copy(src, name):
        dst = os.path.join(d, name)
        shutil.copytree(os.path.join(fam, src), dst)
        return dst

    up["llama-base"] = (copy("llama/base", "llama-base"), {})
    up["llama-reshard"] = (copy("llama/reshard", "llama-reshard"), {})
    t = copy("glm/base", "truncated")
    last = shards(t)[-1]
    truncate(os.path.join(t, last), 100)
    up["truncated"] = (t, {"shard": last})
    w = copy("glm/base", "wrong-index")
    idx_path = os.path.join(w, "model.safetensors.index.json")
    idx = json.load(open(idx_path))
    names = sorted(set(idx["weight_map"].values()))
    k = sorted(idx["weight_map"])[0]
    idx["weight_map"][k] = next(s for s in names if s != idx["weight_map"][k])
    json.dump(idx, open(idx_path, "w"))
    up["wrong-index"] = (w, {"shard": idx["weight_map"][k], "tensor": k})
    p = copy("llama/base", "lfs-pointer")
    with open(os.path.join(p, "model.safetensors"), "w") as f:
        f.write("version https://git-lfs.github.com/spec/v1\noid sha256:" + "ab" * 32 + "\nsize 2303144\n")
    up["lfs-pointer"] = (p, {})
    nan = copy("llama/base", "nan")
    up["nan"] = (nan, {"tensor": fill_tensor(nan, b"\xc0\x7f", lambda k: "mlp" in k)})  # bf16 quiet NaN
    zero = copy("llama/base", "zero")
    up["zero"] = (zero, {"tensor": fill_tensor(zero, b"\x00\x00", lambda k: "mlp" in k)})
    up["sizes"] = (copy("glm/base", "sizes"), {"shard": shards(os.path.join(fam, "glm/base"))[-1]})
    up["cdn"] = (copy("llama/base", "cdn"), {})
    two = copy("llama/reshard", "two-broken")
    s = shards(two)
    truncate(os.path.join(two, s[1]), 100)
    break_header(os.path.join(two, s[2]))
    idx_path = os.path.join(two, "model.safetensors.index.json")
    idx = json.load(open(idx_path))
    idx["weight_map"]["ghost.weight"] = s[0]
    json.dump(idx, open(idx_path, "w"))
    up["two-broken"] = (two, {"shards": s})
    bi = copy("glm/base", "bad-index")
    with open(os.path.join(bi, "model.safetensors.index.json"), "w") as f:
        f.write("{not json")
    truncate(os.path.join(bi, shards(bi)[-1]), 100)
    up["bad-index"] = (bi, {"shard": shards(bi)[-1]})
    ms = copy("glm/base", "missing-shard")
    gone = shards(ms)[-1]
    os.unlink(os.path.join(ms, gone))
    up["missing-shard"] = (ms, {"shard": gone})
    return up


def case_valid(env, up):
    rc, doc, err = run(env, "verify", "v/llama-base")
    files = checks(doc, "files", [])
    # without --against nothing was compared with a known model: "valid", never "valid_unrelated"
    ok = rc == 0 and doc and doc["outcome"] == "valid" and doc["exit_code"] == 0 and not doc["problems"]
    ok = ok and doc["provenance_checked"] is False
    ok = ok and files and all(f.get("size") == f.get("served_size") == f.get("header_implied_size") for f in files)
    report("verify valid upload: exit 0, no problem, Hub listing = CDN Content-Range = header size", ok,
           why(rc, doc, err))


def case_truncated(env, up):
    shard = up["truncated"][1]["shard"]
    rc, doc, err = run(env, "verify", "v/truncated")
    ok = rc == 3 and doc and doc["exit_code"] == 3 and not doc["valid"] and has(doc, "Truncated", shard)
    f = file_entry(doc, shard)
    ok = ok and f and (f.get("header_implied_size") or 0) - f["size"] == 100
    report(f"verify truncated shard: exit 3, Truncated in {shard}", ok, why(rc, doc, err))


def case_wrong_index(env, up):
    facts = up["wrong-index"][1]
    rc, doc, err = run(env, "verify", "v/wrong-index")
    ok = rc == 3 and doc and has(doc, "IndexMismatch", facts["shard"], facts["tensor"]) and len(doc["problems"]) == 1
    report(f"verify wrong index: exit 3, IndexMismatch in {facts['shard']} for {facts['tensor']}", ok,
           why(rc, doc, err))


def case_lfs_pointer(env, up):
    rc, doc, err = run(env, "verify", "v/lfs-pointer")
    ok = rc == 3 and doc and has(doc, "GitLfsPointer", "model.safetensors") and doc["outcome"] == "invalid"
    report("verify LFS pointer: exit 3, GitLfsPointer in model.safetensors", ok, why(rc, doc, err))


def case_nan(env, up):
    tensor = up["nan"][1]["tensor"]
    rc, doc, err = run(env, "verify", "v/nan")
    ok = rc == 3 and doc and has(doc, "NonFinite", "model.safetensors", tensor) and \
        checks(doc, "non_finite_tensors") == 1
    report(f"verify NaN-filled tensor: exit 3, NonFinite in model.safetensors ({tensor})", ok, why(rc, doc, err))


def case_zero(env, up):
    tensor = up["zero"][1]["tensor"]
    rc, doc, err = run(env, "verify", "v/zero")
    ok = rc == 0 and doc and doc["valid"] and not doc["problems"] and \
        has(doc, "AllZero", "model.safetensors", tensor, key="warning_items") and checks(doc, "all_zero_tensors", 0) >= 1
    report(f"verify all-zero tensor: exit 0, AllZero warning in model.safetensors ({tensor})", ok,
           why(rc, doc, err) + " warnings " + json.dumps(doc and doc.get("warning_items"))[:300])


def case_sizes(env, hub, up, tmp):
    shard = up["sizes"][1]["shard"]
    real = os.path.getsize(os.path.join(up["sizes"][0], shard))
    fault = [{"server": "cdn", "match": "v/sizes/" + shard, "kind": "served_size", "size": real - 100, "count": -1}]
    # cold cache: the shard's header cannot be read as listed; it is read as served
    cold = dict(env, CKPTSCOPE_CACHE=os.path.join(tmp, "cache-sizes-cold"))
    hub.faults(fault)
    rc, doc, err = run(cold, "verify", "v/sizes")
    hub.clear_faults()
    f = file_entry(doc, shard)
    ok = rc == 3 and doc and has(doc, "ServedSizeMismatch", shard) and has(doc, "HeaderServedSizeMismatch", shard)
    ok = ok and f and f.get("size") == real and f.get("served_size") == real - 100 and \
        f.get("header_implied_size") == real
    ok = ok and all(p[1] == shard for p in named(doc))
    report(f"verify size disagreement with the Hub: exit 3, ServedSizeMismatch and HeaderServedSizeMismatch in {shard}",
           ok, why(rc, doc, err))
    # warm cache: the checkpoint opens from cached headers; the CDN is still asked its size
    warm = dict(env, CKPTSCOPE_CACHE=os.path.join(tmp, "cache-sizes-warm"))
    rc0, _, err0 = run(warm, "verify", "v/sizes")
    hub.faults(fault)
    rc, doc, err = run(warm, "verify", "v/sizes")
    hub.clear_faults()
    ok = rc0 == 0 and rc == 3 and doc and checks(doc, "file_by_file") is False and has(doc, "ServedSizeMismatch", shard)
    report(f"verify size disagreement with the Hub, headers cached: exit 3, ServedSizeMismatch in {shard}", ok,
           f"first run exit {rc0} {err0[-200:]}; " + why(rc, doc, err))


def case_renamed_copy(env, known):
    rc, doc, err = run(env, "verify", "v/llama-reshard", "--against", known)
    prov = doc["provenance"] if doc else []
    ok = rc == 1 and doc and doc["outcome"] == "related_to_known_model" and not doc["problems"] and prov and \
        prov[0]["verdict"] == "identical" and prov[0]["repo"] == "v/llama-base"
    report("verify renamed copy of a known model --against: exit 1, identical to v/llama-base", ok,
           why(rc, doc, err) + " provenance " + json.dumps(prov)[:300])


def case_corrupt_cdn(env, hub, up, tmp):
    path = os.path.join(up["cdn"][0], "model.safetensors")
    n, hdr = st_header(path)
    name, info = max(((k, v) for k, v in hdr.items() if k != "__metadata__"),
                     key=lambda kv: kv[1]["data_offsets"][1] - kv[1]["data_offsets"][0])
    b, e = info["data_offsets"]
    at = 8 + n + b + (e - b) // 4  # inside the largest tensor, away from its sampled blocks
    hub.faults([{"server": "cdn", "match": "v/cdn/model.safetensors", "kind": "corrupt", "file_offset": at,
                 "count": -1}])
    cenv = dict(env, CKPTSCOPE_CACHE=os.path.join(tmp, "cache-cdn"))
    rc, doc, err = run(cenv, "verify", "v/cdn", "--full")
    hub.clear_faults()
    f = file_entry(doc, "model.safetensors") or {}
    ok = rc == 3 and doc and named(doc) == [("Sha256Mismatch", "model.safetensors", None)] and \
        f.get("sha256_match") is False and f.get("sha256_computed") not in (None, f.get("sha256"))
    report("verify --full corrupted CDN: exit 3, Sha256Mismatch in model.safetensors", ok, why(rc, doc, err))
    # the corrupt bytes did not stay in the cache: once the CDN serves the file right, it verifies
    rc, doc, err = run(cenv, "verify", "v/cdn", "--full")
    f = file_entry(doc, "model.safetensors") or {}
    report("verify --full after the CDN is repaired, same cache: exit 0 (corrupt bytes were not kept)",
           rc == 0 and doc and doc["valid"] and f.get("sha256_match") is True, why(rc, doc, err))


def two_broken_ok(rc, doc, s):
    return rc == 3 and doc and checks(doc, "file_by_file") is True and has(doc, "Truncated", s[1]) and \
        has(doc, "InvalidHeaderDeserialization", s[2]) and has(doc, "IndexMismatch", s[0], "ghost.weight") and \
        len(doc["problems"]) == 3 and checks(doc, "tensors_sampled", 0) > 0


def case_two_broken(env, up):
    d, facts = up["two-broken"]
    s = facts["shards"]
    rc, doc, err = run(env, "verify", "v/two-broken")
    report(f"verify two broken shards at once: exit 3, Truncated in {s[1]} and InvalidHeaderDeserialization in {s[2]}"
           f" and IndexMismatch in {s[0]}, all reported", two_broken_ok(rc, doc, s), why(rc, doc, err))
    rc, doc, err = run(env, "verify", d)
    report("verify two broken shards at once, local copy: the same three problems", two_broken_ok(rc, doc, s),
           why(rc, doc, err))


def case_bad_index(env, up):
    shard = up["bad-index"][1]["shard"]
    rc, doc, err = run(env, "verify", "v/bad-index")
    ok = rc == 3 and doc and has(doc, "IndexInvalid", "model.safetensors.index.json") and has(doc, "Truncated", shard)
    report(f"verify unreadable index and a truncated shard: exit 3, IndexInvalid and Truncated in {shard}", ok,
           why(rc, doc, err))


def case_missing_shard(env, up):
    shard = up["missing-shard"][1]["shard"]
    rc, doc, err = run(env, "verify", "v/missing-shard")
    ok = rc == 3 and doc and has(doc, "IndexMismatch", shard) and len(doc["problems"]) == 1
    report(f"verify shard named by the index but missing: exit 3, IndexMismatch in {shard}", ok, why(rc, doc, err))


def main():
    tmp = tempfile.mkdtemp(prefix="cks-verify-")
    try:
        fam = os.path.join(tmp, "fam")
        if not generate("gen_family.py", fam, timeout=120):
            return 1
        up = build_uploads(fam, os.path.join(tmp, "uploads"))
        import harness
        import hubrepo
        store = os.path.join(tmp, "store")
        for name, (d, _) in up.items():
            hubrepo.add_repo(store, "v/" + name, {n: os.path.join(d, n) for n in os.listdir(d)})
        with harness.start(store) as hub:
            env = dict(os.environ, HF_ENDPOINT=hub.hub_url, CKPTSCOPE_CACHE=os.path.join(tmp, "cache"))
            env.pop("HF_TOKEN", None)
            env.pop("CKPTSCOPE_NO_CACHE", None)
            known = os.path.join(tmp, "known")
            os.makedirs(known)
            p = subprocess.run([BIN, "fingerprint", "v/llama-base", "-o", os.path.join(known, "llama-base.ckfp"),
                                "--quiet"], env=env, capture_output=True, text=True, timeout=300)
            report("fingerprint of the known model", p.returncode == 0, f"exit {p.returncode}: {p.stderr[-300:]}")
            for fn, args in ((case_valid, (env, up)), (case_truncated, (env, up)), (case_wrong_index, (env, up)),
                             (case_lfs_pointer, (env, up)), (case_nan, (env, up)), (case_zero, (env, up)),
                             (case_sizes, (env, hub, up, tmp)), (case_renamed_copy, (env, known)),
                             (case_corrupt_cdn, (env, hub, up, tmp)), (case_two_broken, (env, up)),
                             (case_bad_index, (env, up)), (case_missing_shard, (env, up))):
                try:
                    fn(*args)
                except Exception as e:  # a malformed answer fails its case, not the others
                    hub.clear_faults()
                    report(fn.__name__.replace("case_", "verify "), False, "%s: %s" % (type(e).__name__, e))
            bad = [e for e in hub.log() if e.get("server") == "cdn" and "authorization" in e.get("headers", {})]
            report("verify never sends the token to the CDN", not bad, str(bad[:2]))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 1 if failures() else 0


if __name__ == "__main__":
    sys.exit(main())
