#!/usr/bin/python3
"""The disk cache end to end: the real binary against the fake Hub on 127.0.0.1.

A second run of ls, hash and fetch sends no request at all (asserted from the fake Hub's
request log) and prints the same thing; the same bytes reached through another repo are a
hit; a flipped byte in a stored extent is detected and refetched; several processes share
one cache; the size cap evicts least-recently-used data; --offline answers from the cache;
complete files in a hand-built HF_HOME are read from there and never written to.

Each case prints "PASS name", "FAIL name: why" or "SKIP name: why".
Environment: CKS_BIN (binary), CKS_ROOT (repo root).
"""
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile

ROOT = os.environ.get("CKS_ROOT") or os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BIN = os.environ.get("CKS_BIN") or os.path.join(ROOT, "build", "ckptscope")
sys.path.insert(0, os.path.join(ROOT, "tests", "fakehub"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ckstest  # noqa: E402
from ckstest import EXIT_IO, Skip, check, st_bytes, status as report  # noqa: E402


def model_tensors(seed, layers):
    """bf16-like random matrices (incompressible) and constant norms (compress well)."""
    rnd = random.Random(seed)
    out = []
    for i in range(layers):
        n = 128 * 1024
        out.append(("model.layers.%d.mlp.weight" % i, "BF16", [n // 2],
                    rnd.getrandbits(8 * n).to_bytes(n, "little")))
        out.append(("model.layers.%d.norm.weight" % i, "BF16", [2048], b"\x80\x3f" * 2048))
    return out


class Env:
    def __init__(self, hub, tmp):
        self.hub, self.tmp = hub, tmp

    def run(self, args, cache, extra_env=None, timeout=60):
        env = ckstest.hub_env(self.hub, self.tmp, extra_env)
        p = subprocess.run([BIN] + args + ["--cache-dir", cache], env=env, capture_output=True,
                           timeout=timeout)
        return p.returncode, p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace")

    def ok(self, args, cache, **kw):
        rc, out, err = self.run(args, cache, **kw)
        check(rc == 0, "%s: exit %d: %s" % (" ".join(args), rc, err.strip()[:300]))
        return out

    def popen(self, args, cache):
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": self.tmp,
               "HF_ENDPOINT": self.hub.hub_url, "HF_HOME": os.path.join(self.tmp, "no-hf")}
        return subprocess.Popen([BIN] + args + ["--cache-dir", cache], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def extent_files(cache, sha):
    d = os.path.join(cache, "files", sha[:2], "s-" + sha)
    return sorted(os.path.join(d, f) for f in os.listdir(d) if f[:2] in ("x-", "p-")) if os.path.isdir(d) else []


def cdn_gets(log):
    return [e for e in log if e["server"] == "cdn" and e["method"] == "GET"]


def verify_clean(env, cache):
    rc, out, err = env.run(["cache", "verify", "--json"], cache)
    check(rc == 0, "cache verify exit %d: %s %s" % (rc, out[:300], err[:200]))
    j = json.loads(out)
    check(j["bad_extents"] == 0 and j["bad_metadata"] == 0, "cache verify: %r" % j)


# ------------------------------------------------------------------ cases

def case_rerun_sends_no_request(env, fx):
    cache = os.path.join(env.tmp, "c-rerun")
    for args in (["ls", "org/cached"], ["hash", "org/cached"], ["fetch", "org/cached"],
                 ["ls", "org/sharded"], ["hash", "org/sharded"]):
        first = env.ok(args + ["--quiet"], cache)
        env.hub.clear_log()
        second = env.ok(args + ["--quiet"], cache)
        log = env.hub.log()
        check(log == [], "second `%s` sent %d request(s): %r" % (" ".join(args), len(log),
                                                                 [(e["method"], e["path"][:60]) for e in log][:5]))
        check(first == second, "second `%s` printed something else" % " ".join(args))
    verify_clean(env, cache)


def case_same_bytes_other_repo_is_a_hit(env, fx):
    cache = os.path.join(env.tmp, "c-mirror")
    a = env.ok(["hash", "org/cached", "--quiet"], cache)
    env.hub.clear_log()
    b = env.ok(["hash", "org/mirror", "--quiet"], cache)
    gets = cdn_gets(env.hub.log())
    check(gets == [], "the mirror's identical bytes were fetched again: %r" % [g["range"] for g in gets])
    strip = lambda s: [l.split()[-1] for l in s.splitlines() if l.strip()]
    check(strip(a) == strip(b), "hashes differ between the repo and its mirror")


def case_flipped_byte_is_refetched(env, fx):
    cache = os.path.join(env.tmp, "c-flip")
    ref = env.ok(["hash", "org/cached", "--quiet"], cache)
    files = extent_files(cache, fx.sha_cached)
    check(files, "no extent stored for the model")
    with open(files[0], "r+b") as f:
        f.seek(os.path.getsize(files[0]) - 1000)
        b = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([b[0] ^ 0x01]))
    env.hub.clear_log()
    out = env.ok(["hash", "org/cached", "--quiet", "--verbose"], cache)
    check(out == ref, "hashes changed after a flipped cache byte")
    check(cdn_gets(env.hub.log()), "the damaged bytes were not refetched")
    verify_clean(env, cache)
    env.hub.clear_log()
    check(env.ok(["hash", "org/cached", "--quiet"], cache) == ref, "third run differs")
    check(cdn_gets(env.hub.log()) == [], "the repaired cache was not used")


def case_concurrent_processes_share_a_cache(env, fx):
    cache = os.path.join(env.tmp, "c-conc")
    ref = env.ok(["hash", "org/other", "--quiet"], os.path.join(env.tmp, "c-conc-ref"))
    procs = [env.popen(["hash", "org/other", "--quiet"], cache) for _ in range(5)]
    for p in procs:
        out, err = p.communicate(timeout=120)
        check(p.returncode == 0, "a concurrent run failed: %s" % err.decode()[:300])
        check(out.decode() == ref, "a concurrent run printed other hashes")
    verify_clean(env, cache)
    env.hub.clear_log()
    check(env.ok(["hash", "org/other", "--quiet"], cache) == ref, "rerun differs")
    check(cdn_gets(env.hub.log()) == [], "the shared cache is incomplete")


def case_cap_evicts_least_recently_used(env, fx):
    probe = os.path.join(env.tmp, "c-probe")
    env.ok(["hash", "org/cached", "--quiet"], probe)
    need = json.loads(env.ok(["cache", "du", "--json"], probe))["stored_bytes"]
    cache = os.path.join(env.tmp, "c-cap")
    env.ok(["hash", "org/other", "--quiet"], cache)
    check(extent_files(cache, fx.sha_other), "org/other not cached")
    cap = str(int(need * 1.25))
    env.ok(["hash", "org/cached", "--quiet", "--cache-max", cap], cache)
    du = json.loads(env.ok(["cache", "du", "--json"], cache))
    check(du["stored_bytes"] <= int(cap), "stored %d > cap %s" % (du["stored_bytes"], cap))
    check(not extent_files(cache, fx.sha_other), "the older model was not evicted")
    env.hub.clear_log()
    env.ok(["hash", "org/cached", "--quiet", "--cache-max", cap], cache)
    check(cdn_gets(env.hub.log()) == [], "what the last command used was evicted")


def case_offline(env, fx):
    cache = os.path.join(env.tmp, "c-offline")
    rc, out, err = env.run(["hash", "org/cached", "--offline"], cache)
    check(rc == EXIT_IO, "cold --offline: exit %d (%s)" % (rc, err.strip()[:200]))
    if "cannot answer that from the cache" in err:
        raise Skip("the CLI refuses --offline for remote sources before asking the cache "
                   "(src/cli/cli_remote.c); the cache side is in place")
    check("org/cached" in err, "cold --offline does not say what is missing: %s" % err.strip()[:300])
    ref = env.ok(["hash", "org/cached", "--quiet"], cache)
    env.hub.clear_log()
    out = env.ok(["hash", "org/cached", "--quiet", "--offline"], cache)
    check(out == ref and env.hub.log() == [], "warm --offline differs or used the network")


def case_hf_home_reuse(env, fx):
    hf = os.path.join(env.tmp, "hf-home")
    repo = os.path.join(hf, "hub", "models--org--cached")
    os.makedirs(os.path.join(repo, "blobs"))
    os.makedirs(os.path.join(repo, "refs"))
    snap = os.path.join(repo, "snapshots", fx.c_cached)
    os.makedirs(snap)
    with open(os.path.join(repo, "blobs", fx.sha_cached), "wb") as f:
        f.write(fx.cached)
    os.symlink("../../blobs/" + fx.sha_cached, os.path.join(snap, "model.safetensors"))
    with open(os.path.join(repo, "refs", "main"), "w") as f:
        f.write(fx.c_cached)

    def tree():
        return sorted((os.path.relpath(os.path.join(d, n), hf), os.lstat(os.path.join(d, n)).st_mtime_ns)
                      for d, _, names in os.walk(hf) for n in names)
    before = tree()
    ref = env.ok(["hash", "org/cached", "--quiet"], os.path.join(env.tmp, "c-hf-ref"))
    env.hub.clear_log()
    out = env.ok(["hash", "org/cached", "--quiet"], os.path.join(env.tmp, "c-hf"),
                 extra_env={"HF_HOME": hf})
    check(out == ref, "hashes from HF_HOME differ")
    gets = cdn_gets(env.hub.log())
    check(gets == [], "fetched %d range(s) although HF_HOME holds the file" % len(gets))
    check(tree() == before, "ckptscope wrote into HF_HOME")


def case_kill9_during_fetch(env, fx):
    """kill -9 `ckptscope fetch` at many points of a large fetch over a 20 MB/s link
    (bench/netem_proxy.py in front of the CDN): afterwards `cache verify` finds no bad
    entry and a rerun completes with the right bytes."""
    import time
    ref = env.ok(["hash", "org/big", "--quiet"], os.path.join(env.tmp, "c-big-ref"))
    cache = os.path.join(env.tmp, "c-kill")
    state = os.path.join(env.tmp, "proxy.json")
    proxy = subprocess.Popen(["/usr/bin/python3", os.path.join(ROOT, "bench", "netem_proxy.py"),
                              "--target", "127.0.0.1:%d" % env.hub.cdn_port, "--delay-ms", "2",
                              "--rate", "20000000", "--state-file", state],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rnd = random.Random(11)
    killed = 0
    try:
        for _ in range(100):
            if os.path.exists(state):
                break
            time.sleep(0.05)
        with open(state) as f:
            port = json.load(f)["port"]
        env.hub.config(cdn_public_url="http://127.0.0.1:%d" % port)
        for i in range(7):
            p = env.popen(["fetch", "org/big", "--quiet"], cache)
            time.sleep(0.1 + rnd.random() * 0.7)
            if p.poll() is None:
                p.kill()
                killed += 1
            p.communicate()
    finally:
        env.hub.config(cdn_public_url=env.hub.cdn_url)
        proxy.terminate()
        proxy.wait(10)
    check(killed >= 4, "only %d of 7 runs were still fetching when killed" % killed)
    verify_clean(env, cache)
    out = env.ok(["hash", "org/big", "--quiet"], cache)
    check(out == ref, "the rerun after %d kills printed other hashes" % killed)
    verify_clean(env, cache)

def case_disk_full(env, fx):
    """The cache on a 3 MiB tmpfs: a run whose bytes do not fit still answers correctly,
    the cache stays consistent, and what it held before is still there."""
    cache = os.path.join(env.tmp, "c-full")
    os.makedirs(cache)
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", cache],
                                           capture_output=True).returncode != 0:
        raise Skip("cannot mount a small tmpfs here")
    try:
        small = env.ok(["hash", "org/cached", "--quiet"], cache)
        ref = env.ok(["hash", "org/big", "--quiet"], os.path.join(env.tmp, "c-full-ref"))
        rc, out, err = env.run(["hash", "org/big", "--quiet", "--verbose"], cache)
        check(rc == 0 and out == ref, "a full cache disk broke the run: exit %d %s" % (rc, err.strip()[-300:]))
        verify_clean(env, cache)
        env.hub.clear_log()
        check(env.ok(["hash", "org/cached", "--quiet"], cache) == small, "earlier entry changed")
        check(cdn_gets(env.hub.log()) == [], "what was cached before the disk filled was lost")
        left = os.listdir(os.path.join(cache, "tmp"))
        check(left == [], "temporaries left behind: %r" % left)
    finally:
        subprocess.run(["umount", "-l", cache], capture_output=True)


def case_partly_cached_range_fetches_only_the_rest(env, fx):
    """One tensor cached by a first run; the next run over the whole file fetches only the
    bytes around it (cks_cache_read_some in the remote source)."""
    cache = os.path.join(env.tmp, "c-partial")
    env.ok(["hash", "org/big", "--quiet", "--tensor", "layers.5.weight"], cache)
    j = json.loads(env.ok(["ls", "org/big", "--json"], cache))
    t5 = [t for t in j["tensors"] if t["name"] == "layers.5.weight"]
    check(t5, "no layers.5.weight in ls --json")
    env.hub.clear_log()
    ref = env.ok(["hash", "org/big", "--quiet"], os.path.join(env.tmp, "c-partial-ref"))
    env.hub.clear_log()
    out = env.ok(["hash", "org/big", "--quiet"], cache)
    check(out == ref, "hashes differ")
    size = len(fx.big)
    begin = size - sum(2 << 20 for _ in range(12)) + 5 * (2 << 20)
    end = begin + (2 << 20)
    for g in cdn_gets(env.hub.log()):
        a, b = (int(x) for x in g["range"][len("bytes="):].split("-"))
        check(b < begin or a >= end, "refetched the cached tensor's bytes: %s" % g["range"])
    sent = sum(g["bytes_sent"] for g in cdn_gets(env.hub.log()))
    check(sent <= size - (2 << 20), "fetched %d bytes of a %d-byte file whose %d bytes were cached"
          % (sent, size, 2 << 20))


CASES = [case_rerun_sends_no_request, case_same_bytes_other_repo_is_a_hit, case_flipped_byte_is_refetched,
         case_concurrent_processes_share_a_cache, case_cap_evicts_least_recently_used, case_offline,
         case_hf_home_reuse, case_kill9_during_fetch, case_disk_full,
         case_partly_cached_range_fetches_only_the_rest]


class Fixture:
    def __init__(self, root):
        import hubrepo
        self.cached = st_bytes(model_tensors(1, 6))
        self.sha_cached = hashlib.sha256(self.cached).hexdigest()
        self.c_cached = hubrepo.add_repo(root, "org/cached", {
            "model.safetensors": self.cached, "config.json": b'{"model_type": "llama"}'})
        hubrepo.add_repo(root, "org/mirror", {"model.safetensors": self.cached})
        self.other = st_bytes(model_tensors(2, 6))
        self.sha_other = hashlib.sha256(self.other).hexdigest()
        hubrepo.add_repo(root, "org/other", {"model.safetensors": self.other})
        rnd = random.Random(5)
        big = [("layers.%d.weight" % i, "BF16", [1 << 20], rnd.getrandbits(8 << 21).to_bytes(2 << 20, "little"))
               for i in range(12)]
        self.big = st_bytes(big)
        hubrepo.add_repo(root, "org/big", {"model.safetensors": self.big})
        t = model_tensors(3, 4)
        s1, s2 = st_bytes(t[:4]), st_bytes(t[4:])
        index = {"metadata": {"total_size": len(s1) + len(s2) - 16},
                 "weight_map": dict([(n, "model-00001-of-00002.safetensors") for n, *_ in t[:4]] +
                                    [(n, "model-00002-of-00002.safetensors") for n, *_ in t[4:]])}
        hubrepo.add_repo(root, "org/sharded", {
            "model.safetensors.index.json": json.dumps(index).encode(),
            "model-00001-of-00002.safetensors": s1, "model-00002-of-00002.safetensors": s2})


def main():
    only = sys.argv[1] if len(sys.argv) > 1 else None
    if not os.access(BIN, os.X_OK):
        report("FAIL", "cache_hub_setup", "no binary at %s" % BIN)
        return 1
    tmp = tempfile.mkdtemp(prefix="cks-cache-hub-test-")
    hub = None
    try:
        import harness
        store = os.path.join(tmp, "store")
        fx = Fixture(store)
        hub = harness.start(store, state_file=os.path.join(tmp, "hub.json"))
        env = Env(hub, tmp)
        ckstest.run_cases(CASES, env, fx, only=only)
    finally:
        if hub:
            hub.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return ckstest.exit_code()


if __name__ == "__main__":
    sys.exit(main())
