"""Real safetensors files written by other people's tools (../shared/realdata).

Every valid file must list, hash and diff correctly: the header is read here independently
(json + struct) and each tensor's SHA-256 computed with hashlib over its byte range, then
compared with `ckptscope ls --json` and `ckptscope hash --json`. Every malformed file must
be rejected with its specific error and exit code 3. Skips when the folder is absent.
"""
import hashlib
import json
import os
import struct
import subprocess
import sys
import ckstest  # noqa: E402
from ckstest import report  # noqa: E402

BIN = os.environ.get("CKS_BIN", "build/ckptscope")
REAL = os.environ.get("CKS_REALDATA", "../shared/realdata")

def run(*args):
    p = subprocess.run([BIN, *args], capture_output=True, text=True, timeout=120)
    return p.returncode, p.stdout, p.stderr


def independent_tensors(path):
    with open(path, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + n].decode("utf-8"))
    header.pop("__metadata__", None)
    out = {}
    for name, t in header.items():
        b, e = t["data_offsets"]
        out[name] = {
            "dtype": t["dtype"],
            "shape": t["shape"],
            "sha256": hashlib.sha256(blob[8 + n + b : 8 + n + e]).hexdigest(),
        }
    return out


MALFORMED = {
    "malformed-realworld/crlf_2byte_hirvita6_lora_weights.safetensors": "HeaderTooSmall",
    "malformed-realworld/lfs_pointer_observer18_checkpoint-100_adapter_model.safetensors": "GitLfsPointer",
    "malformed-realworld/symlink_target_text_johnscheuer_model.safetensors": "TextFile",
    "syoyo-safetensors-cpp/safetensors_abuse_attempt_1.safetensors": "InvalidHeaderLength",
}


def main():
    if not os.path.isdir(REAL):
        print(f"SKIP realdata: {REAL} is absent (it is only on the developers' machines)")
        return 0
    files = []
    for root, _, names in os.walk(REAL):
        for nm in sorted(names):
            if nm.endswith(".safetensors"):
                files.append(os.path.join(root, nm))
    files.sort()
    valid = [f for f in files if os.path.relpath(f, REAL) not in MALFORMED]
    for path in valid:
        rel = os.path.relpath(path, REAL)
        ref = independent_tensors(path)
        rc, out, err = run("ls", "--json", path)
        if rc != 0:
            report(f"ls {rel}", False, f"exit {rc}: {err.strip()}")
            continue
        doc = json.loads(out)
        got = {t["name"]: t for t in doc["tensors"]}
        ok = list(doc.keys())[0] == "schema_version" and set(got) == set(ref) and all(
            got[k]["dtype"] == ref[k]["dtype"] and got[k]["shape"] == ref[k]["shape"] for k in ref
        )
        report(f"ls {rel}", ok, "tensor list differs from an independent parse")
        rc, out, err = run("hash", "--json", path)
        if rc != 0:
            report(f"hash {rel}", False, f"exit {rc}: {err.strip()}")
            continue
        got = {t["name"]: t["sha256"] for t in json.loads(out)["tensors"]}
        bad = [k for k in ref if got.get(k) != ref[k]["sha256"]]
        report(f"hash {rel}", not bad and len(got) == len(ref), f"hash mismatch for {bad[:3]}")
    # a file diffed with itself is identical (exit 0); each pair in a folder is compared
    # against hashlib's view of which names are identical / changed.
    by_dir = {}
    for path in valid:
        by_dir.setdefault(os.path.dirname(path), []).append(path)
    for d, paths in sorted(by_dir.items()):
        if os.path.basename(d) == "sharded":
            continue
        a = paths[0]
        rc, out, err = run("diff", "--json", a, a)
        report(f"diff-self {os.path.relpath(a, REAL)}", rc == 0 and json.loads(out)["same_contents"], f"exit {rc}")
        for b in paths[1:]:
            ra, rb = independent_tensors(a), independent_tensors(b)
            rc, out, err = run("diff", "--json", a, b)
            name = f"diff {os.path.relpath(a, REAL)} {os.path.basename(b)}"
            if rc not in (0, 1):
                report(name, False, f"exit {rc}: {err.strip()}")
                continue
            doc = json.loads(out)
            common = set(ra) & set(rb)
            same = {k for k in common if ra[k]["sha256"] == rb[k]["sha256"] and ra[k]["shape"] == rb[k]["shape"]
                    and ra[k]["dtype"] == rb[k]["dtype"]}
            changed = {k for k in common if ra[k]["sha256"] != rb[k]["sha256"]}
            ok = set(doc["identical"]) == same and set(doc["changed"]) == changed
            expect_rc = 0 if doc["same_contents"] else 1
            report(name, ok and rc == expect_rc, f"identical/changed sets or exit code differ (rc {rc})")
    # the sharded copy holds the same tensors as the single file
    sharded = os.path.join(REAL, "fluxml-safetensors-jl/sharded")
    single = os.path.join(REAL, "fluxml-safetensors-jl/non_sharded/model.safetensors")
    if os.path.isdir(sharded) and os.path.exists(single):
        rc, out, err = run("diff", "--json", single, sharded)
        doc = json.loads(out) if out else {}
        report("diff single vs 6-shard copy", rc in (0, 1) and "identical" in doc, f"exit {rc}: {err.strip()}")
        rc, out, err = run("ls", "--json", os.path.join(sharded, "model.safetensors.index.json"))
        report("ls sharded via index", rc == 0 and len(json.loads(out)["source"]["files"]) == 6, f"exit {rc}")
    for rel, rule in MALFORMED.items():
        path = os.path.join(REAL, rel)
        if not os.path.exists(path):
            continue
        rc, out, err = run("ls", path)
        report(f"reject {rel}", rc == 3 and rule in err, f"exit {rc}, stderr: {err.strip()}")
    return ckstest.exit_code()


if __name__ == "__main__":
    sys.exit(main())
