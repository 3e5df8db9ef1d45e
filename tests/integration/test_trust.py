#!/usr/bin/python3
"""Never a wrong byte (issue 14): the real binary against a fake Hub that lies in every way it
can, and against damaged copies on disk. Each case asserts the exact outcome: the right hashes
(from hashlib over the true bytes), or a named error with its exit code; never a wrong value
with exit 0, and never damaged bytes kept for the next run.

  1. a damaged copy in HF_HOME: whole-file reads use the Hub instead; partial reads say the
     bytes are unverified
  2. bytes and listings that fail a check leave the cache in the same run; a rerun against a
     healthy server succeeds the first time
  3. a symlink planted in the cache never makes the tool write outside it
  4. control characters in names and metadata never reach the terminal raw
  5. fetch --quiet still prints the hashes
  6. a CDN dripping 2 bytes/s ends in a clear error
  7. an unusable cache is said once on stderr and the run goes on
  8. messages name the real problem

Each case prints "PASS name", "FAIL name: why" or "SKIP name: why".
Environment: CKS_BIN (binary), CKS_ROOT (repo root).
"""
import hashlib
import json
import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile
import time

ROOT = os.environ.get("CKS_ROOT") or os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BIN = os.environ.get("CKS_BIN") or os.path.join(ROOT, "build", "ckptscope")
sys.path.insert(0, os.path.join(ROOT, "tests", "fakehub"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ckstest  # noqa: E402
from ckstest import EXIT_ACCESS, EXIT_FORMAT, EXIT_NETWORK, Skip, check, st_bytes, status as report  # noqa: E402


def hashes_of(tensors):
    return {n: hashlib.sha256(d).hexdigest() for n, _, _, d in tensors}


def text_hashes(out):
    got = {}
    for line in out.splitlines():
        if line.strip():
            h, _, name = line.partition("  ")
            got[name] = h
    return got


def flip(data, at):
    b = bytearray(data)
    b[at] ^= 0xFF
    return bytes(b)


def raw_controls(s):
    """Bytes a terminal would act on: C0 except newline, DEL, C1 (UTF-8), bidi overrides."""
    bad = [c for c in s if (ord(c) < 0x20 and c != "\n") or 0x7F <= ord(c) <= 0x9F or c in "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u2028\u2029"]
    return bad


class Fixture:
    def __init__(self, root):
        import hubrepo
        rnd = random.Random(14)
        self.t = [("w%d" % i, "U8", [65536], rnd.getrandbits(8 * 65536).to_bytes(65536, "little")) for i in range(4)]
        self.m = st_bytes(self.t)
        self.sha_m = hashlib.sha256(self.m).hexdigest()
        self.hl = 8 + struct.unpack("<Q", self.m[:8])[0]         # where w0's data starts
        self.c_m = hubrepo.add_repo(root, "org/m", {"model.safetensors": self.m,
                                                    "config.json": b'{"model_type": "none"}'})
        # the same bytes under another repo, for the HF_HOME cases (its own lookup path)
        self.c_hf = hubrepo.add_repo(root, "org/hf", {"model.safetensors": self.m})
        s1, s2 = st_bytes(self.t[:2]), st_bytes(self.t[2:])
        self.index = json.dumps({"metadata": {"total_size": 4 * 65536},
                                 "weight_map": {"w0": "model-00001-of-00002.safetensors",
                                                "w1": "model-00001-of-00002.safetensors",
                                                "w2": "model-00002-of-00002.safetensors",
                                                "w3": "model-00002-of-00002.safetensors"}}).encode()
        self.c_sharded = hubrepo.add_repo(root, "org/sharded", {"model.safetensors.index.json": self.index,
                                                                "model-00001-of-00002.safetensors": s1,
                                                                "model-00002-of-00002.safetensors": s2})
        self.c_empty = hubrepo.add_repo(root, "org/nockpt", {"config.json": b"{}"})


class Env:
    def __init__(self, hub, tmp, fx):
        self.hub, self.tmp, self.fx = hub, tmp, fx
        self.n = 0

    def cache(self):
        self.n += 1
        return os.path.join(self.tmp, "cache-%d" % self.n)

    def run(self, args, cache=None, extra_env=None, timeout=120):
        env = ckstest.hub_env(self.hub, self.tmp, extra_env)
        argv = [BIN] + args + (["--cache-dir", cache] if cache else [])
        p = subprocess.run(argv, env=env, capture_output=True, timeout=timeout)
        return p.returncode, p.stdout.decode("utf-8", "surrogateescape"), p.stderr.decode("utf-8", "surrogateescape")

    def faults(self, *fs):
        self.hub.clear_faults()
        self.hub.faults(list(fs))

    def cdn_gets(self):
        return [e for e in self.hub.log() if e["server"] == "cdn" and e["method"] == "GET"]


def verify_clean(env, cache):
    rc, out, err = env.run(["cache", "verify", "--json"], cache)
    check(rc == 0, "cache verify exit %d: %s %s" % (rc, out[:300], err[:300]))
    j = json.loads(out)
    check(j["bad_extents"] == 0 and j["bad_metadata"] == 0 and j["bad_files"] == 0, "cache verify: %r" % j)
    return j


def hf_home(env, repo, commit, blob, sha):
    """A Hugging Face cache holding `blob` as repo's model.safetensors at commit."""
    hf = os.path.join(env.tmp, "hf-%d" % env.n)
    env.n += 1
    d = os.path.join(hf, "hub", "models--" + repo.replace("/", "--"))
    os.makedirs(os.path.join(d, "blobs"))
    os.makedirs(os.path.join(d, "refs"))
    os.makedirs(os.path.join(d, "snapshots", commit))
    with open(os.path.join(d, "blobs", sha), "wb") as f:
        f.write(blob)
    os.symlink("../../blobs/" + sha, os.path.join(d, "snapshots", commit, "model.safetensors"))
    with open(os.path.join(d, "refs", "main"), "w") as f:
        f.write(commit)
    return hf


def tree(d):
    return sorted((os.path.relpath(os.path.join(p, n), d), os.lstat(os.path.join(p, n)).st_mtime_ns)
                  for p, _, names in os.walk(d) for n in names)


# ------------------------------------------------------------------ 1. HF_HOME

def case_hf_damaged_copy_whole_reads_use_the_hub(env, fx):
    want = hashes_of(fx.t)
    bad = flip(fx.m, fx.hl + 2 * 65536 + 100)         # one byte of w2
    hf = hf_home(env, "org/hf", fx.c_hf, bad, fx.sha_m)
    before = tree(hf)
    e = {"HF_HOME": hf}
    pristine = os.path.join(env.tmp, "pristine.safetensors")
    with open(pristine, "wb") as f:
        f.write(fx.m)
    env.hub.clear_log()
    rc, out, err = env.run(["hash", "org/hf"], env.cache(), e)
    check(rc == 0 and text_hashes(out) == want, "hash: exit %d, %r %s" % (rc, text_hashes(out), err[-300:]))
    check("Hugging Face cache" in err and "read from the Hub instead" in err, "no warning: %s" % err)
    check(env.cdn_gets(), "the damaged copy was used: nothing came from the CDN")
    rc, out, err = env.run(["diff", "org/hf", pristine], env.cache(), e)
    check(rc == 0, "diff against the pristine file: exit %d %s %s" % (rc, out[-300:], err[-300:]))
    rc, out, err = env.run(["compare", "org/hf", pristine, "--tests", "T1", "--json"], env.cache(), e)
    check(rc == 0 and json.loads(out)["verdict"] == "identical",
          "compare --tests T1: exit %d %s %s" % (rc, out[:200], err[-300:]))
    rc, out, err = env.run(["verify", "org/hf", "--full", "--json"], env.cache(), e)
    j = json.loads(out) if out.strip() else {}
    check(rc == 0 and j.get("outcome") == "valid" and not j.get("problems"),
          "verify --full blamed the upload: exit %d %s %s" % (rc, out[:400], err[-300:]))
    check(tree(hf) == before, "ckptscope wrote into HF_HOME")


def case_hf_pristine_copy_needs_no_network(env, fx):
    hf = hf_home(env, "org/hf", fx.c_hf, fx.m, fx.sha_m)
    env.hub.clear_log()
    rc, out, err = env.run(["verify", "org/hf", "--full", "--json"], env.cache(), {"HF_HOME": hf})
    check(rc == 0 and json.loads(out)["outcome"] == "valid", "exit %d %s" % (rc, err[-300:]))
    # verify asks the CDN for one byte, to learn the size it serves (README "Sizes, three ways")
    data = [g["range"] for g in env.cdn_gets() if g["range"] != "bytes=0-0"]
    check(data == [], "a copy that checks out was fetched again: %r" % data)


def case_hf_partial_read_is_unverified(env, fx):
    want = hashes_of(fx.t)
    hf = hf_home(env, "org/hf", fx.c_hf, fx.m, fx.sha_m)
    rc, out, err = env.run(["hash", "org/hf", "--tensor", "w1", "--json"], env.cache(), {"HF_HOME": hf})
    j = json.loads(out)
    check(rc == 0 and j["tensors"][0]["sha256"] == want["w1"], "exit %d %s" % (rc, err[-300:]))
    check(j["unverified_files"] == ["model.safetensors"], "unverified_files %r" % j.get("unverified_files"))
    check("not checked against the Hub" in err, "no note on stderr: %r" % err)
    rc, out, err = env.run(["hash", "org/hf", "--json"], env.cache(), {"HF_HOME": hf})
    j = json.loads(out)
    check(rc == 0 and j["unverified_files"] == [] and "not checked" not in err,
          "a whole read (checked) still says unverified: %r %s" % (j.get("unverified_files"), err))
    # a damaged copy read in part: the value is of that copy, and labelled as such
    bad = flip(fx.m, fx.hl + 2 * 65536 + 100)
    hf2 = hf_home(env, "org/hf", fx.c_hf, bad, fx.sha_m)
    rc, out, err = env.run(["hash", "org/hf", "--tensor", "w2", "--json"], env.cache(), {"HF_HOME": hf2})
    j = json.loads(out)
    check(rc == 0 and j["unverified_files"] == ["model.safetensors"],
          "a value from an unchecked copy is not labelled: %r" % j)


def case_hf_damaged_header_falls_back(env, fx):
    bad = flip(fx.m, 20)                              # inside the JSON header
    hf = hf_home(env, "org/hf", fx.c_hf, bad, fx.sha_m)
    rc, out, err = env.run(["ls", "org/hf", "--json"], env.cache(), {"HF_HOME": hf})
    check(rc == 0, "exit %d: %s" % (rc, err[-300:]))
    check([t["name"] for t in json.loads(out)["tensors"]] == ["w0", "w1", "w2", "w3"], "names")
    check("read from the Hub instead" in err, "no warning: %s" % err)


# ------------------------------------------------------------------ 2. nothing unverified kept

def case_damaged_header_not_kept(env, fx):
    cache = env.cache()
    env.faults({"server": "cdn", "match": "org/m/model", "kind": "corrupt", "file_offset": 20, "count": -1})
    try:
        rc, out, err = env.run(["ls", "org/m"], cache)
    finally:
        env.hub.clear_faults()
    check(rc == EXIT_FORMAT and "InvalidHeader" in err, "a corrupt header served: exit %d %s" % (rc, err[-300:]))
    rc, out, err = env.run(["ls", "org/m", "--json"], cache)
    check(rc == 0 and len(json.loads(out)["tensors"]) == 4, "rerun against a healthy server: exit %d %s"
          % (rc, err[-300:]))
    verify_clean(env, cache)
    # damaged once only: the header is read again within the same run
    cache = env.cache()
    env.faults({"server": "cdn", "match": "org/m/model", "kind": "corrupt", "file_offset": 20, "count": 1})
    env.hub.clear_log()
    try:
        rc, out, err = env.run(["ls", "org/m", "--json"], cache)
    finally:
        env.hub.clear_faults()
    check(rc == 0 and len(json.loads(out)["tensors"]) == 4, "one damaged transfer: exit %d %s" % (rc, err[-300:]))
    check(len(env.cdn_gets()) == 2, "header GETs %r" % [g["range"] for g in env.cdn_gets()])


def case_damaged_index_not_kept(env, fx):
    cache = env.cache()
    env.faults({"server": "hub", "match": "model.safetensors.index.json", "kind": "corrupt", "file_offset": 10,
                "count": -1})
    try:
        rc, out, err = env.run(["ls", "org/sharded"], cache)
    finally:
        env.hub.clear_faults()
    check(rc == EXIT_FORMAT and "IntegrityError" in err and "git blob" in err,
          "a corrupt index: exit %d %s" % (rc, err[-300:]))
    rc, out, err = env.run(["ls", "org/sharded", "--json"], cache)
    check(rc == 0 and len(json.loads(out)["tensors"]) == 4, "rerun: exit %d %s" % (rc, err[-300:]))
    verify_clean(env, cache)


def case_damaged_partial_transfer_replaced(env, fx):
    want = hashes_of(fx.t)
    w2_byte = fx.hl + 2 * 65536 + 100

    def damaged_fetch(cache):
        env.faults({"server": "cdn", "match": "org/m/model", "kind": "corrupt", "file_offset": w2_byte,
                    "count": -1})
        try:
            rc, out, err = env.run(["fetch", "org/m", "--tensor", "w2"], cache)
        finally:
            env.hub.clear_faults()
        # no check can catch it: the CDN served those bytes, and only the whole file has a hash
        check(rc == 0 and text_hashes(out)["w2"] != want["w2"], "the fault did not fire: %s" % out)
    cache = env.cache()
    damaged_fetch(cache)
    rc, out, err = env.run(["fetch", "org/m", "--tensor", "w2"], cache)
    check(rc == 0 and text_hashes(out) == {"w2": want["w2"]}, "rerun printed %r (exit %d)" % (out, rc))
    check("differ from what the server sends now" in err, "no warning: %s" % err)
    rc, out, err = env.run(["hash", "org/m", "--tensor", "w2"], cache)
    check(rc == 0 and text_hashes(out) == {"w2": want["w2"]} and "differ" not in err, "third run: %r %s" % (out, err))
    # whole-file reads after a damaged partial one succeed the first time
    cache = env.cache()
    damaged_fetch(cache)
    rc, out, err = env.run(["hash", "org/m"], cache)
    check(rc == 0 and text_hashes(out) == want, "hash after a damaged fetch: exit %d %s" % (rc, err[-300:]))
    verify_clean(env, cache)
    cache = env.cache()
    damaged_fetch(cache)
    rc, out, err = env.run(["verify", "org/m", "--full", "--json"], cache)
    check(rc == 0 and json.loads(out)["outcome"] == "valid",
          "verify --full after a damaged fetch: exit %d %s %s" % (rc, out[:300], err[-300:]))


def case_damaged_whole_transfer_not_kept(env, fx):
    want = hashes_of(fx.t)
    cache = env.cache()
    env.faults({"server": "cdn", "match": "org/m/model", "kind": "corrupt", "file_offset": fx.hl + 7, "count": -1})
    try:
        rc, out, err = env.run(["hash", "org/m"], cache)
    finally:
        env.hub.clear_faults()
    check(rc == EXIT_FORMAT and "IntegrityError" in err and fx.sha_m in err and "all from the network" in err,
          "exit %d %s" % (rc, err[-400:]))
    j = verify_clean(env, cache)
    check(j["checked_files"] == 0, "a whole copy of a file that failed its hash stayed: %r" % j)
    rc, out, err = env.run(["hash", "org/m"], cache)
    check(rc == 0 and text_hashes(out) == want, "rerun: exit %d %s" % (rc, err[-300:]))
    j = verify_clean(env, cache)
    check(j["checked_files"] == 1, "the verified file is not counted: %r" % j)


def case_listing_with_wrong_size_forgotten(env, fx):
    cache = env.cache()
    spec = "org/m@" + fx.c_m   # a commit: its listing would otherwise never expire
    env.faults({"server": "hub", "match": "/api/models/org/m/revision", "kind": "listing",
                "sizes": {"model.safetensors": len(fx.m) + 64}, "count": -1})
    try:
        rc, out, err = env.run(["ls", spec], cache)
    finally:
        env.hub.clear_faults()
    check(rc == EXIT_FORMAT, "a listing with a wrong size: exit %d %s" % (rc, err[-300:]))
    rc, out, err = env.run(["ls", spec, "--json"], cache)
    check(rc == 0 and json.loads(out)["source"]["files"][0]["size"] == len(fx.m),
          "rerun against a healthy Hub: exit %d %s" % (rc, err[-300:]))


# ------------------------------------------------------------------ 3. symlinks in the cache

def case_planted_lock_link_never_followed(env, fx):
    want = hashes_of(fx.t)
    cache = env.cache()
    rc, _, err = env.run(["ls", "org/m"], cache)
    check(rc == 0, "ls: %s" % err)
    outside = os.path.join(env.tmp, "outside")
    os.makedirs(outside)
    victim = os.path.join(outside, "victim")
    with open(victim, "wb") as f:
        f.write(b"precious bytes")
    kd = os.path.join(cache, "files", fx.sha_m[:2], "s-" + fx.sha_m)
    os.unlink(os.path.join(kd, "lock"))
    os.symlink(victim, os.path.join(kd, "lock"))
    os.unlink(os.path.join(kd, "pin"))
    os.symlink(os.path.join(outside, "made-by-pin"), os.path.join(kd, "pin"))
    rc, out, err = env.run(["hash", "org/m"], cache)
    check(rc == 0 and text_hashes(out) == want, "hash with a planted lock: exit %d %s" % (rc, err[-300:]))
    with open(victim, "rb") as f:
        check(f.read() == b"precious bytes", "the file the lock pointed to was overwritten")
    check(os.listdir(outside) == ["victim"], "files created outside the cache: %r" % os.listdir(outside))
    check(err.count("stopped keeping") == 1, "the cache trouble is not said once: %r" % err)


# ------------------------------------------------------------------ 4. control characters

NASTY = ["a\nb  0000000000000000000000000000000000000000000000000000000000000000  forged",
         "title\x1b]0;pwned\x07", "clear\x1b[2J\x1b[H", "c1\u009b31m", "bidi\u202egnp.exe", "del\x7f", "back\\slash"]


def case_control_characters_escaped(env, fx):
    rnd = random.Random(4)
    t = [(n, "U8", [16], rnd.getrandbits(128).to_bytes(16, "little")) for n in NASTY]
    path = os.path.join(env.tmp, "nasty.safetensors")
    with open(path, "wb") as f:
        f.write(st_bytes(t, meta={"note\x1b[31m": "red\x1b]2;x\x07"}))
    outputs = []
    for args in (["ls", path], ["hash", path], ["diff", path, path, "--all"], ["fetch", path],
                 ["verify", path]):
        rc, out, err = env.run(args)
        check(rc == 0, "%s: exit %d %s" % (args[0], rc, err[-300:]))
        outputs.append((args[0], out, err))
    for cmd, out, err in outputs:
        check(raw_controls(out) == [] and raw_controls(err) == [],
              "%s printed raw control characters: %r" % (cmd, sorted(set(raw_controls(out + err)))))
    ls_out = outputs[0][1]
    for esc in ("a\\nb", "title\\x1b]0;pwned\\x07", "clear\\x1b[2J\\x1b[H", "c1\\u009b31m", "bidi\\u202egnp.exe",
                "del\\x7f", "back\\\\slash", "note\\x1b[31m = red\\x1b]2;x\\x07"):
        check(esc in ls_out, "ls does not show %r: %r" % (esc, ls_out[:600]))
    hash_lines = [l for l in outputs[1][1].splitlines() if l]
    check(len(hash_lines) == len(NASTY), "hash printed %d lines for %d tensors (a forged line?)"
          % (len(hash_lines), len(NASTY)))
    # JSON keeps the names exactly (cJSON escapes them)
    rc, out, err = env.run(["hash", path, "--json"])
    check(rc == 0 and sorted(x["name"] for x in json.loads(out)["tensors"]) == sorted(NASTY), "JSON names")
    # an error message quoting a name
    bad = st_bytes(t)
    hdr = json.loads(bad[8:8 + struct.unpack("<Q", bad[:8])[0]])
    hdr[NASTY[1]]["data_offsets"] = [1, 17]
    h = json.dumps(hdr).encode()
    h += b" " * (-len(h) % 8)
    with open(os.path.join(env.tmp, "nasty-bad.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + bad[8 + struct.unpack("<Q", bad[:8])[0]:])
    rc, out, err = env.run(["ls", os.path.join(env.tmp, "nasty-bad.safetensors")])
    check(rc == EXIT_FORMAT and raw_controls(err) == [] and "\\x1b" in err, "error message: %r" % err)
    # a Hub file name with control characters (refused, and quoted escaped)
    env.faults({"server": "hub", "match": "/api/models/org/nockpt/revision", "kind": "listing",
                "add": [{"rfilename": "evil\x1b[2J.safetensors", "size": 10}], "count": -1})
    try:
        rc, out, err = env.run(["ls", "org/nockpt"], env.cache())
    finally:
        env.hub.clear_faults()
    check(rc == EXIT_ACCESS and raw_controls(err) == [] and "evil\\x1b[2J.safetensors" in err,
          "Hub file name: exit %d %r" % (rc, err))


# ------------------------------------------------------------------ 5. fetch --quiet

def case_fetch_quiet_prints_hashes(env, fx):
    rc, out, err = env.run(["fetch", "org/m", "--tensor", "w1", "--quiet"], env.cache())
    check(rc == 0 and text_hashes(out) == {"w1": hashes_of(fx.t)["w1"]}, "stdout %r (exit %d)" % (out, rc))
    check(err == "", "--quiet still wrote to stderr: %r" % err)


# ------------------------------------------------------------------ 6. a dripping CDN

def case_dripping_cdn_gives_up(env, fx):
    quick = {"CKPTSCOPE_STALL_TIMEOUT": "1", "CKPTSCOPE_MAX_ATTEMPTS": "2", "CKPTSCOPE_NO_CACHE": "1"}
    env.faults({"server": "cdn", "match": "org/m/model", "kind": "drip", "after_bytes": 0, "bytes_per_second": 2,
                "count": -1})
    t0 = time.time()
    try:
        rc, out, err = env.run(["hash", "org/m"], None, quick)
    finally:
        env.hub.clear_faults()
    took = time.time() - t0
    check(rc == EXIT_NETWORK and "NetworkError" in err and "bytes/s" in err and "gave up after 2 attempts" in err,
          "exit %d %s" % (rc, err[-400:]))
    check(took < 30, "waited %.0f s on a dripping CDN" % took)
    # one slow transfer: cut, resumed, right
    env.faults({"server": "cdn", "match": "org/m/model", "kind": "drip", "after_bytes": 100, "bytes_per_second": 2,
                "count": 1})
    try:
        rc, out, err = env.run(["hash", "org/m"], None, quick)
    finally:
        env.hub.clear_faults()
    check(rc == 0 and text_hashes(out) == hashes_of(fx.t), "after one slow transfer: exit %d %s" % (rc, err[-300:]))


# ------------------------------------------------------------------ 7. the cache unusable

def mount_tmpfs(path, size):
    os.makedirs(path, exist_ok=True)
    if os.geteuid() != 0:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%s" % size, "tmpfs", path],
                          capture_output=True).returncode == 0


def case_unusable_cache_dir_said_once(env, fx):
    afile = os.path.join(env.tmp, "not-a-dir")
    with open(afile, "w") as f:
        f.write("x")
    rc, out, err = env.run(["hash", "org/m"], afile)
    check(rc == 0 and text_hashes(out) == hashes_of(fx.t), "exit %d %s" % (rc, err[-300:]))
    check(err.count("cache unavailable, going on without it") == 1 and "Not a directory" in err, "stderr %r" % err)


def case_read_only_cache_said_once(env, fx):
    d = os.path.join(env.tmp, "ro")
    if not mount_tmpfs(d, "4m"):
        raise Skip("cannot mount a tmpfs here (needs root and mount rights)")
    try:
        cache = os.path.join(d, "c")
        rc, _, err = env.run(["ls", "org/m"], cache)
        check(rc == 0, "ls: %s" % err)
        check(subprocess.run(["mount", "-o", "remount,ro", d], capture_output=True).returncode == 0, "remount ro")
        rc, out, err = env.run(["hash", "org/m"], cache)
        check(rc == 0 and text_hashes(out) == hashes_of(fx.t), "exit %d %s" % (rc, err[-300:]))
        check(err.count("stopped keeping what this run fetched") == 1 and "Read-only" in err, "stderr %r" % err)
        # a read-only cache still answers what it holds: the listing and the header
        env.hub.clear_log()
        rc, out, err = env.run(["ls", "org/m"], cache)
        check(rc == 0 and [e for e in env.hub.log()] == [], "a read-only cache was not read from")
    finally:
        subprocess.run(["umount", "-l", d], capture_output=True)


def case_full_cache_disk_said_once(env, fx):
    d = os.path.join(env.tmp, "full")
    if not mount_tmpfs(d, "160k"):
        raise Skip("cannot mount a tmpfs here (needs root and mount rights)")
    try:
        rc, out, err = env.run(["hash", "org/m"], os.path.join(d, "c"))
        check(rc == 0 and text_hashes(out) == hashes_of(fx.t), "exit %d %s" % (rc, err[-300:]))
        check(err.count("stopped keeping what this run fetched") == 1 and "NoSpace" in err, "stderr %r" % err)
    finally:
        subprocess.run(["umount", "-l", d], capture_output=True)


# ------------------------------------------------------------------ 8. messages

def case_cdn_403_is_not_an_invalid_token(env, fx):
    env.faults({"server": "cdn", "match": "org/m/model", "kind": "denied", "count": -1})
    try:
        rc, out, err = env.run(["hash", "org/m"], None, {"CKPTSCOPE_NO_CACHE": "1", "HF_TOKEN": None})
    finally:
        env.hub.clear_faults()
    check(rc == EXIT_ACCESS and "AccessDenied" in err and "InvalidToken" not in err and "not about your token" in err
          and "Access Denied" in err, "exit %d %s" % (rc, err[-400:]))


def case_body_longer_than_its_content_range(env, fx):
    # with a pause the excess comes after every byte asked for, in a read of its own: a reply
    # that had all its bytes once slipped through then, depending on how the reads fell
    for cl, pause, says in (("none", 0, "a body running past them"), ("none", 0.3, "a body running past them"),
                            ("body", 0, "a Content-Length of")):
        env.faults({"server": "cdn", "match": "org/m/model", "kind": "extra_body", "extra": 9,
                    "content_length": cl, "pause": pause, "count": -1})
        try:
            rc, out, err = env.run(["hash", "org/m"], None, {"CKPTSCOPE_NO_CACHE": "1"})
        finally:
            env.hub.clear_faults()
        check(rc == EXIT_NETWORK and says in err and "right 'Content-Range" in err,
              "%s, pause %s: exit %d %s" % (cl, pause, rc, err[-400:]))


def case_deep_json_names_the_depth(env, fx):
    depth = 200000
    h = ('{"__metadata__": {"x": "y"}, "a": ' + "[" * depth + "]" * depth + "}").encode()
    h += b" " * (-len(h) % 8)
    path = os.path.join(env.tmp, "deep.safetensors")
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h)
    rc, out, err = env.run(["ls", path])
    check(rc == EXIT_FORMAT and "InvalidHeaderDeserialization" in err and "1000 levels" in err,
          "header: exit %d %s" % (rc, err[-300:]))
    d = os.path.join(env.tmp, "deep-index")
    os.makedirs(d)
    with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
        f.write('{"weight_map": ' + "[" * depth + "]" * depth + "}")
    rc, out, err = env.run(["ls", d])
    check(rc == EXIT_FORMAT and "IndexInvalid" in err and "1000 levels" in err, "index: exit %d %s" % (rc, err[-300:]))


def case_unsafe_listing_name_said(env, fx):
    env.faults({"server": "hub", "match": "/api/models/org/nockpt/revision", "kind": "listing",
                "add": [{"rfilename": "../model.safetensors", "size": 10}], "count": -1})
    try:
        rc, out, err = env.run(["ls", "org/nockpt"], env.cache())
    finally:
        env.hub.clear_faults()
    check(rc == EXIT_ACCESS and "refused as unsafe" in err and "'../model.safetensors'" in err,
          "exit %d %s" % (rc, err[-400:]))


CASES = [case_hf_damaged_copy_whole_reads_use_the_hub, case_hf_pristine_copy_needs_no_network,
         case_hf_partial_read_is_unverified, case_hf_damaged_header_falls_back,
         case_damaged_header_not_kept, case_damaged_index_not_kept, case_damaged_partial_transfer_replaced,
         case_damaged_whole_transfer_not_kept, case_listing_with_wrong_size_forgotten,
         case_planted_lock_link_never_followed, case_control_characters_escaped, case_fetch_quiet_prints_hashes,
         case_dripping_cdn_gives_up, case_unusable_cache_dir_said_once, case_read_only_cache_said_once,
         case_full_cache_disk_said_once, case_cdn_403_is_not_an_invalid_token,
         case_body_longer_than_its_content_range, case_deep_json_names_the_depth, case_unsafe_listing_name_said]


def main():
    only = sys.argv[1] if len(sys.argv) > 1 else None
    if not os.access(BIN, os.X_OK):
        report("FAIL", "trust_setup", "no binary at %s" % BIN)
        return 1
    tmp = tempfile.mkdtemp(prefix="cks-trust-test-")
    hub = None
    try:
        import harness
        store = os.path.join(tmp, "store")
        fx = Fixture(store)
        hub = harness.start(store, state_file=os.path.join(tmp, "hub.json"))
        env = Env(hub, tmp, fx)
        ckstest.run_cases(CASES, env, fx, only=only, after=hub.clear_faults)
    finally:
        if hub:
            hub.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return ckstest.exit_code()


if __name__ == "__main__":
    sys.exit(main())
