#!/usr/bin/python3
"""End-to-end half of the cache benchmark: `ckptscope hash` of a Hub checkpoint from a warm
cache against `ckptscope hash` of the same file on local disk, same binary, same run.

    bench_cli.py --bin BUILD/ckptscope --mib 1024 --work DIR

Prints markdown table rows. The warm runs must send no request (checked from the fake Hub's
log) and print the same hashes as the local run.
"""
import argparse
import hashlib
import json
import os
import struct
import subprocess
import sys
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "fakehub"))


def make_file(path, mib):
    """bf16 N(0, 0.02) matrices of 64 MiB plus a small norm after each."""
    try:
        import numpy as np
        rng = np.random.default_rng(1)

        def matrix(n):
            a = (rng.standard_normal(n // 2).astype(np.float32) * 0.02).view(np.uint32)
            return (a >> 16).astype(np.uint16).tobytes()
    except ImportError:
        matrix = os.urandom
    n_mat = max(1, mib // 64)
    hdr, off = {}, 0
    for i in range(n_mat):
        hdr["layers.%d.weight" % i] = {"dtype": "BF16", "shape": [32 << 20], "data_offsets": [off, off + (64 << 20)]}
        off += 64 << 20
        hdr["layers.%d.norm" % i] = {"dtype": "BF16", "shape": [4096], "data_offsets": [off, off + 8192]}
        off += 8192
    h = json.dumps(hdr).encode()
    h += b" " * (-len(h) % 8)
    sha = hashlib.sha256()
    with open(path, "wb") as f:
        for chunk in (struct.pack("<Q", len(h)), h):
            f.write(chunk)
            sha.update(chunk)
        for i in range(n_mat):
            for chunk in (matrix(64 << 20), b"\x80\x3f" * 4096):
                f.write(chunk)
                sha.update(chunk)
    return sha.hexdigest()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--mib", type=int, default=1024)
    ap.add_argument("--work", required=True)
    ap.add_argument("--rounds", type=int, default=6)
    a = ap.parse_args()
    import harness
    import hubrepo
    model = os.path.join(a.work, "model.safetensors")
    sha = make_file(model, a.mib)
    store = os.path.join(a.work, "store")
    hubrepo.add_repo(store, "org/bench", {"model.safetensors": {"path": model, "sha256": sha}})
    cache = os.path.join(a.work, "clicache")
    with harness.start(store, state_file=os.path.join(a.work, "hub.json")) as hub:
        env = dict(os.environ, HF_ENDPOINT=hub.hub_url, HF_HOME=os.path.join(a.work, "no-hf"),
                   HOME=a.work)
        env.pop("CKPTSCOPE_NO_CACHE", None)

        def run(args):
            t0 = time.perf_counter()
            p = subprocess.run([a.bin] + args + ["--quiet"], env=env, capture_output=True, check=True)
            return time.perf_counter() - t0, p.stdout.decode()

        cold, _ = run(["hash", "org/bench", "--cache-dir", cache])
        warm, local = [], []
        out_w = out_l = None
        hub.clear_log()
        for _ in range(a.rounds):
            t, out_w = run(["hash", "org/bench", "--cache-dir", cache])
            warm.append(t)
            t, out_l = run(["hash", model])
            local.append(t)
        requests = len(hub.log())
    hashes = lambda s: [l.split()[-1] for l in s.splitlines() if l.strip()]
    if hashes(out_w) != hashes(out_l):
        print("| **ERROR** | warm-cache and local hashes differ |")
        return 1
    mb = os.path.getsize(model) / 1e6
    print("| `ckptscope hash org/bench`, cold (fake Hub on 127.0.0.1, fills the cache) | %.2f s |" % cold)
    print("| `ckptscope hash org/bench`, warm cache, best of %d | %.3f s (%.0f MB/s) |" % (a.rounds, min(warm), mb / min(warm)))
    print("| `ckptscope hash model.safetensors` (local file), best of %d | %.3f s (%.0f MB/s) |" % (a.rounds, min(local), mb / min(local)))
    print("| **CLI: warm cache / local file** | **%.3fx** (bound: 1.2x) |" % (min(warm) / min(local)))
    print("| requests sent by the %d warm runs | %d |" % (a.rounds, requests))
    return 0


if __name__ == "__main__":
    sys.exit(main())
