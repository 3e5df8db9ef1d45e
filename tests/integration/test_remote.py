#!/usr/bin/python3
"""End-to-end tests of remote sources: the real binary against the fake Hub on 127.0.0.1.

Each case prints "PASS name", "FAIL name: why" or "SKIP name: why". Cases assert on what the
binary printed AND on what it sent (the fake Hub's request log): ranges, headers, hosts.
Environment: CKS_BIN (binary), CKS_ROOT (repo root).
"""
import hashlib
import json
import os
import random
import re
import resource
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import traceback

ROOT = os.environ.get("CKS_ROOT") or os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BIN = os.environ.get("CKS_BIN") or os.path.join(ROOT, "build", "ckptscope")
sys.path.insert(0, os.path.join(ROOT, "tests", "fakehub"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ckstest  # noqa: E402
from ckstest import EXIT_ACCESS, EXIT_NETWORK, Fail, check, st_bytes, status as report  # noqa: E402

TOKEN_OK = "hf_fakeAllowedToken0123456789abcdefghij"
TOKEN_OTHER = "hf_fakeOtherUserToken0123456789abcdefgh"
TOKEN_BAD = "hf_fakeRevokedToken0123456789abcdefghij"


# ------------------------------------------------------------------ fixtures

def rbytes(rnd, n):
    return rnd.getrandbits(8 * n).to_bytes(n, "little") if n else b""


class Fixture:
    def __init__(self, root):
        rnd = random.Random(7)
        import hubrepo
        self.hubrepo = hubrepo
        self.root = root
        # single file, tags, a PR, a second commit on main
        self.single_t = [("a.weight", "F32", [16, 16], rbytes(rnd, 1024)),
                         ("b.bias", "F16", [64], rbytes(rnd, 128))]
        self.single = st_bytes(self.single_t)
        self.c_single_v1 = hubrepo.add_repo(root, "org/single", {"model.safetensors": self.single,
                                                                  "config.json": b'{"model_type":"llama"}'},
                                             tags=("v1.0",))
        single2_t = [("a.weight", "F32", [16, 16], rbytes(rnd, 1024))]
        self.single2 = st_bytes(single2_t)
        self.c_pr = hubrepo.add_repo(root, "org/single", {"model.safetensors": st_bytes(single2_t)},
                                     branch="pr-branch", parent=self.c_single_v1)
        hubrepo.add_ref(root, "org/single", "refs/pr/1", self.c_pr)
        self.c_single = hubrepo.add_repo(root, "org/single", {"model.safetensors": self.single2,
                                                               "config.json": b"{}"})
        # sharded: 4 shards of 8 tensors, 96 KiB each (bigger than the 64 KiB header chunk)
        self.shards = {}
        wm = {}
        self.shard_t = {}
        for s in range(4):
            name = "model-%05d-of-00004.safetensors" % (s + 1)
            ts = [("model.layers.%d.w%d" % (s, i), "BF16", [96, 64], rbytes(rnd, 96 * 64 * 2)) for i in range(8)]
            self.shards[name] = st_bytes(ts, {"format": "pt"})
            self.shard_t[name] = ts
            for t in ts:
                wm[t[0]] = name
        idx = json.dumps({"metadata": {"total_size": sum(len(t[3]) for ts in self.shard_t.values() for t in ts)},
                          "weight_map": wm}).encode()
        files = dict(self.shards)
        files["model.safetensors.index.json"] = idx
        self.index = idx
        self.c_sharded = hubrepo.add_repo(root, "org/sharded", files)
        # the same files in another commit: a listing that names it stands for a branch that
        # moved between the listing and a resolve by the branch's name
        self.c_sharded_twin = hubrepo.add_repo(root, "org/sharded", {}, branch="twin", inherit=True,
                                               parent=self.c_sharded)
        # a header larger than the first chunk
        big_hdr_t = [("t.%05d.some_long_tensor_name_to_make_the_header_big" % i, "U8", [4], rbytes(rnd, 4))
                     for i in range(1200)]
        self.bighdr = st_bytes(big_hdr_t)
        self.c_bighdr = hubrepo.add_repo(root, "org/bighdr", {"model.safetensors": self.bighdr})
        # shards whose headers are far larger than the 4 KiB first chunk, behind an index: the
        # index's tensor names say how long each header is, so one request per shard does
        self.bigshards = {}
        wm = {}
        for s_ in range(3):
            name = "model-%05d-of-00003.safetensors" % (s_ + 1)
            ts = [("model.layers.%d.mlp.experts.%d.down_proj.weight" % (s_, i), "BF16", [4, 2], rbytes(rnd, 16))
                  for i in range(300)]
            self.bigshards[name] = st_bytes(ts, {"format": "pt"})
            for t in ts:
                wm[t[0]] = name
        files = dict(self.bigshards)
        self.bigshards_config = b'{"model_type": "llama", "hidden_size": 8}'
        files["config.json"] = self.bigshards_config
        files["model.safetensors.index.json"] = json.dumps({"metadata": {"total_size": 3 * 300 * 16},
                                                            "weight_map": wm}).encode()
        self.c_bigshards = hubrepo.add_repo(root, "org/bigshards", files)
        # a big single file for streaming, resume, stall
        self.big_t = [("big.%d" % i, "U8", [1 << 20], rbytes(rnd, 1 << 20)) for i in range(6)]
        self.big = st_bytes(self.big_t)
        self.c_big = hubrepo.add_repo(root, "org/big", {"model.safetensors": self.big})
        # ranges longer than one loopback segment (64 KiB): a server that holds back a short
        # last segment until the first is acknowledged (the fake Hub keeps Nagle's rule on)
        self.tails_t = [("tail.%02d" % i, "U8", [100000], rbytes(rnd, 100000)) for i in range(64)]
        self.c_tails = hubrepo.add_repo(root, "org/tails", {"model.safetensors": st_bytes(self.tails_t)})
        self.tiny_t = [("tiny.%02d" % i, "U8", [200], rbytes(rnd, 200)) for i in range(64)]
        self.c_tiny = hubrepo.add_repo(root, "org/tiny", {"model.safetensors": st_bytes(self.tiny_t)})
        # auth
        hubrepo.add_token(root, TOKEN_OTHER)
        self.c_private = hubrepo.add_repo(root, "org/private", {"model.safetensors": self.single},
                                          visibility="private", tokens=(TOKEN_OK,))
        self.c_gated = hubrepo.add_repo(root, "org/gated", {"model.safetensors": self.single},
                                        visibility="gated", tokens=(TOKEN_OK,), gated="manual")
        # dataset and a component folder
        self.c_ds = hubrepo.add_repo(root, "org/ds", {"weights/model.safetensors": self.single}, kind="dataset")
        self.c_renamed = hubrepo.add_repo(root, "neworg/moved", {"model.safetensors": self.single},
                                          renamed_from="oldorg/moved")
        self.c_diff = hubrepo.add_repo(root, "org/diffusers", {"transformer/diffusion_pytorch_model.safetensors": self.single,
                                                                "model_index.json": b"{}"})


# ------------------------------------------------------------------ running the binary

class Env:
    def __init__(self, hub, tmp):
        self.hub = hub
        self.tmp = tmp

    def run(self, args, token=None, extra_env=None, timeout=60):
        env = ckstest.hub_env(self.hub, self.tmp, {"CKPTSCOPE_NO_CACHE": "1", "HF_HOME": None,
                                                   "HF_TOKEN": token, **(extra_env or {})})
        t0 = time.time()
        p = subprocess.run([BIN] + args, env=env, capture_output=True, timeout=timeout)
        self.last_seconds = time.time() - t0
        out, err = p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace")
        for t in (TOKEN_OK, TOKEN_OTHER, TOKEN_BAD):
            check(t not in out and t not in err, "the token appeared in the output")
        return p.returncode, out, err

    def json(self, args, **kw):
        rc, out, err = self.run(args + ["--json"], **kw)
        check(rc == 0, "exit %d: %s" % (rc, err.strip()[:400]))
        try:
            return json.loads(out)
        except ValueError:
            raise Fail("not JSON: %r" % out[:300])


def cdn_gets(log, match=None):
    return [e for e in log if e["server"] == "cdn" and e["method"] == "GET" and (match is None or match in e["path"])]


def parse_range(r):
    m = re.fullmatch(r"bytes=(\d+)-(\d+)", r or "")
    check(m, "request without a single closed range: %r" % r)
    return int(m.group(1)), int(m.group(2))


def no_auth_on_cdn(log):
    for e in log:
        if e["server"] == "cdn":
            check("authorization" not in e["headers"], "Authorization sent to the CDN: %s" % e["path"])
            check("authorization_on_cdn" not in (e.get("flags") or []), "fakehub flagged auth on CDN")


def token_redirects_to_cdn(log):
    """How many Hub redirects answered to a request with a token were followed by a CDN request."""
    followed = 0
    for i, e in enumerate(log):
        if (e["server"] == "hub" and "authorization" in e["headers"] and e["status"] in (301, 302, 307, 308)
                and any(later["server"] == "cdn" for later in log[i + 1:])):
            followed += 1
    return followed


def entry_guesses(log, repo, rev="main"):
    """The resolves by the revision's name: the file a session opens first, asked for beside the
    listing (its answer is used only when it names the listing's commit)."""
    return [e for e in log if e["path"].startswith("/%s/resolve/%s/" % (repo, rev))]


def pinned_apart_from_the_guess(log, repo, commit, rev="main"):
    """Every resolve names the commit, except at most one guess of the entry file by the
    revision's name (a HEAD); returns the guess (or None)."""
    guesses = entry_guesses(log, repo, rev)
    check(len(guesses) <= 1, "%d resolves by the revision's name: %r" % (len(guesses), [g["path"] for g in guesses]))
    for e in log:
        if "/resolve/" in e["path"] and e not in guesses:
            check("/resolve/%s/" % commit in e["path"], "resolve not pinned: %s" % e["path"])
        if "/resolve/" in e["path"]:
            check(e["method"] == "HEAD", "resolve with %s" % e["method"])
    return guesses[0] if guesses else None


def tensor_hashes(tensors):
    return {n: hashlib.sha256(d).hexdigest() for n, _, _, d in tensors}


# ------------------------------------------------------------------ cases

def case_ls_single(env, fx):
    env.hub.clear_log()
    j = env.json(["ls", "org/single"])
    src = j["source"]
    check(src["kind"] == "hub" and src["repo"] == "org/single", "source %r" % src)
    check(src["revision"] == "main" and src["commit"] == fx.c_single, "commit %r" % src.get("commit"))
    f = src["files"][0]
    check(f["size"] == len(fx.single2) and f["sha256"] == hashlib.sha256(fx.single2).hexdigest(), "file %r" % f)
    t = j["transfer"]
    check(t["requests"] >= 1 and t["bytes_fetched"] >= len(fx.single2) and t["seconds"] >= 0, "transfer %r" % t)
    log = env.hub.log()
    gets = cdn_gets(log)
    check(len(gets) == 1 and gets[0]["status"] == 206, "CDN GETs %r" % [(g["range"], g["status"]) for g in gets])
    check(parse_range(gets[0]["range"]) == (0, len(fx.single2) - 1), "range %r" % gets[0]["range"])
    # pinned: every resolve names the commit, not the branch, but the guess beside the listing
    # (a repo without an index answers it 404, and the file is then resolved pinned)
    guess = pinned_apart_from_the_guess(log, "org/single", fx.c_single)
    check(guess and guess["path"].endswith("/model.safetensors.index.json") and guess["status"] == 404,
          "guess %r" % guess)
    no_auth_on_cdn(log)


def case_ls_sharded_reads_headers_only(env, fx):
    env.hub.clear_log()
    j = env.json(["ls", "org/sharded"])
    check(j["source"]["commit"] == fx.c_sharded, "commit")
    check(len(j["source"]["files"]) == 4, "files %r" % j["source"]["files"])
    log = env.hub.log()
    gets = cdn_gets(log)
    check(len(gets) == 4, "%d CDN GETs, want one per shard" % len(gets))
    # each shard: one range from byte 0 covering its header, at most a 4 KiB first chunk
    # beyond it (the parser's first read), never tensor data past that
    total = 0
    for g in gets:
        a, b = parse_range(g["range"])
        name = [n for n in fx.shards if hashlib.sha256(fx.shards[n]).hexdigest() in g["path"]][0]
        hl = 8 + struct.unpack("<Q", fx.shards[name][:8])[0]
        check(a == 0 and hl - 1 <= b < max(hl, 4096), "shard read %r for a %d-byte header" % (g["range"], hl))
        total += g["bytes_sent"]
    hdr_total = sum(max(4096, 8 + struct.unpack("<Q", d[:8])[0]) for d in fx.shards.values())
    check(total <= hdr_total, "CDN bytes %d > %d" % (total, hdr_total))
    check(j["transfer"]["bytes_fetched"] <= hdr_total + len(fx.index),
          "bytes_fetched %d (headers %d, index %d)" % (j["transfer"]["bytes_fetched"], hdr_total, len(fx.index)))
    # each file resolved exactly once
    heads = [e["path"] for e in log if e["server"] == "hub" and e["method"] == "HEAD" and "/resolve/" in e["path"]]
    check(len(heads) == len(set(heads)) == 5, "resolves %r" % heads)
    no_auth_on_cdn(log)


def case_entry_resolved_beside_the_listing(env, fx):
    # A cold open of a sharded repo: the index is resolved by the branch's name in the listing's
    # round trip, and its body is read in the round trip that resolves the shards (two round
    # trips before the headers, not three). The fake Hub logs when a request arrived: with the
    # listing, the guess and the shards' resolves answered 0.3 s late, a request sent only after
    # one of them was answered arrives 0.3 s after it.
    cache = os.path.join(env.tmp, "cache-entry-%d" % time.time_ns())
    with_cache = {"CKPTSCOPE_NO_CACHE": None, "CKPTSCOPE_CACHE": cache}
    env.hub.clear_log()
    env.hub.faults([{"server": "hub", "match": "/api/models/org/sharded/revision/main", "kind": "delay",
                     "seconds": 0.3},
                    {"server": "hub", "match": "/org/sharded/resolve/main/", "kind": "delay", "seconds": 0.3},
                    {"server": "hub", "match": "/org/sharded/resolve/%s/model-0" % fx.c_sharded, "kind": "delay",
                     "seconds": 0.3, "count": -1}])
    try:
        j = env.json(["ls", "org/sharded"], extra_env=with_cache)
    finally:
        env.hub.clear_faults()
    check(j["source"]["commit"] == fx.c_sharded and len(j["tensors"]) == 32, "ls %r" % j["source"])
    log = env.hub.log()
    guess = pinned_apart_from_the_guess(log, "org/sharded", fx.c_sharded)
    check(guess and guess["path"] == "/org/sharded/resolve/main/model.safetensors.index.json" and
          guess["status"] == 307, "guess %r" % guess)
    listing = [e for e in log if e["path"] == "/api/models/org/sharded/revision/main"]
    check(len(listing) == 1 and abs(guess["t"] - listing[0]["t"]) < 0.15, "the guess and the listing took turns")
    # the index is not resolved again, and its body comes whole, once
    check(not any(e["path"].endswith("/resolve/%s/model.safetensors.index.json" % fx.c_sharded) for e in log),
          "the index resolved twice")
    idx = [e for e in log if e["method"] == "GET" and e["path"].endswith("/model.safetensors.index.json")]
    check(len(idx) == 1 and idx[0]["status"] == 200 and idx[0]["range"] is None and
          "/%s/" % fx.c_sharded in idx[0]["path"] and idx[0]["bytes_sent"] == len(fx.index),
          "index GETs %r" % [(e["path"], e["status"], e["range"]) for e in idx])
    shard_heads = [e for e in log if e["method"] == "HEAD" and "/resolve/%s/model-0" % fx.c_sharded in e["path"]]
    check(len(shard_heads) == 4, "%d shard resolves" % len(shard_heads))
    check(idx[0]["t"] < min(e["t"] for e in shard_heads) + 0.15, "the index body waited for the shards' resolves")
    check(min(e["t"] for e in shard_heads) > listing[0]["t"] + 0.25, "the shards were resolved before the listing came")
    check(len(cdn_gets(log)) == 4, "CDN GETs %d" % len(cdn_gets(log)))
    # without a disk cache the body is kept in memory the same way
    env.hub.clear_log()
    j2 = env.json(["ls", "org/sharded"])
    check(j2["tensors"] == j["tensors"], "without a cache: the tensors differ")
    idx = [e for e in env.hub.log() if e["method"] == "GET" and e["path"].endswith("/model.safetensors.index.json")]
    check(len(idx) == 1 and idx[0]["range"] is None, "without a cache: index GETs %r" % [(e["status"], e["range"]) for e in idx])
    # a rerun with the cache reads it all from there
    env.hub.clear_log()
    j2 = env.json(["ls", "org/sharded"], extra_env=with_cache)
    check(j2["tensors"] == j["tensors"], "rerun differs")
    check(not any("index.json" in e["path"] for e in env.hub.log()), "the rerun asked for the index again: %r" % [(e["method"], e["path"], e["status"]) for e in env.hub.log()])


def case_entry_guess_for_another_commit(env, fx):
    # The branch moved between the listing and the guess: the listing names the twin commit
    # (the same files), the guess by the branch's name answers for main's head. The guess's
    # answer is dropped, and the index and shards are resolved pinned to the listed commit.
    twin = fx.c_sharded_twin
    for spec, entry in [("org/sharded", "model.safetensors.index.json"),
                        ("hf://org/sharded/model-00002-of-00004.safetensors", "model-00002-of-00004.safetensors")]:
        env.hub.clear_log()
        env.hub.faults([{"server": "hub", "match": "/api/models/org/sharded/revision/main", "kind": "listing",
                         "sha": twin}])
        try:
            j = env.json(["ls", spec])
        finally:
            env.hub.clear_faults()
        check(j["source"]["commit"] == twin, "%s: commit %s" % (spec, j["source"]["commit"]))
        log = env.hub.log()
        guess = pinned_apart_from_the_guess(log, "org/sharded", twin)
        check(guess and guess["path"] == "/org/sharded/resolve/main/" + entry, "%s: guess %r" % (spec, guess))
        check(any(e["path"] == "/org/sharded/resolve/%s/%s" % (twin, entry) for e in log),
              "%s: the entry was not resolved again at the listed commit" % spec)
        for e in log:
            if "resolve-cache" in e["path"]:
                check("/%s/" % twin in e["path"], "%s: read at another commit: %s" % (spec, e["path"]))
        check(cdn_gets(log), "%s: no CDN read" % spec)


def case_ls_big_header(env, fx):
    env.hub.clear_log()
    j = env.json(["ls", "org/bighdr"])
    check(len(j["tensors"]) == 1200, "tensors %d" % len(j["tensors"]))
    gets = cdn_gets(env.hub.log())
    ranges = sorted(parse_range(g["range"]) for g in gets)
    n = struct.unpack("<Q", fx.bighdr[:8])[0]
    # a first chunk, then exactly the rest of the header: contiguous, nothing past it
    check(len(ranges) == 2 and ranges[0][0] == 0 and ranges[1][0] == ranges[0][1] + 1 and
          ranges[1][1] == 8 + n - 1, "ranges %r (header ends at %d)" % (ranges, 8 + n))


def case_ls_index_sizes_the_header_reads(env, fx):
    env.hub.clear_log()
    j = env.json(["ls", "org/bigshards"])
    check(len(j["tensors"]) == 900, "tensors %d" % len(j["tensors"]))
    gets = cdn_gets(env.hub.log())
    check(len(gets) == 3, "%d CDN GETs, want one per shard (the index sizes the first read)" % len(gets))
    for g in gets:
        a, b = parse_range(g["range"])
        name = [n for n in fx.bigshards if hashlib.sha256(fx.bigshards[n]).hexdigest() in g["path"]][0]
        hl = 8 + struct.unpack("<Q", fx.bigshards[name][:8])[0]
        # the whole header at once, and not much more than it (the guess errs long by ~5 %)
        check(hl > 4096 and a == 0 and hl - 1 <= b < 1.25 * hl, "shard read %r for a %d-byte header" % (g["range"], hl))


def case_config_rides_with_the_headers(env, fx):
    # compare reads config.json right after the headers: with a disk cache it is read in the
    # headers' batch, once, and a later compare finds it in the cache. ls (like fetch and hash)
    # never reads it, so its header batch does not wait for it, with a cache or without.
    cache = os.path.join(env.tmp, "cache-ride-%d" % time.time_ns())
    with_cache = {"CKPTSCOPE_NO_CACHE": None, "CKPTSCOPE_CACHE": cache}

    def config_gets():
        return [e for e in env.hub.log() if e["method"] == "GET" and e["path"].split("?")[0].endswith("/config.json")]

    for extra in (with_cache, {}):
        env.hub.clear_log()
        env.json(["ls", "org/bigshards"], extra_env=extra)
        # not even resolved beside the shards
        got = [e["method"] + " " + e["path"] for e in env.hub.log()
               if e["path"].split("?")[0].endswith(("/config.json", "/tokenizer.json"))]
        check(not got, "ls (%s) asked for %r" % ("cache" if extra else "no cache", got))
    # T1: A and B open side by side, one session each: each reads it at most once, and the
    # second may find the first one's copy already in the cache (a race: 1 or 2). T2 after it:
    # the cache has it.
    for tests, least, most in (("T1", 1, 2), ("T2", 0, 0)):
        env.hub.clear_log()
        rc, out, err = env.run(["compare", "org/bigshards", "org/bigshards", "--tests", tests, "--json"],
                               extra_env=with_cache)
        check(rc == 0, "compare exit %d: %s" % (rc, err[-300:]))
        got = config_gets()
        check(least <= len(got) <= most, "compare --tests %s read config.json %d times, want %d to %d"
              % (tests, len(got), least, most))


def case_hash_matches(env, fx):
    j = env.json(["hash", "org/sharded"])
    want = {}
    for ts in fx.shard_t.values():
        want.update(tensor_hashes(ts))
    got = {t["name"]: t["sha256"] for t in j["tensors"]}
    check(got == want, "hashes differ")
    check("transfer" in j, "no transfer object")


def case_hash_big_streams_and_verifies(env, fx):
    env.hub.clear_log()
    j = env.json(["hash", "org/big"])
    got = {t["name"]: t["sha256"] for t in j["tensors"]}
    check(got == tensor_hashes(fx.big_t), "hashes differ")
    log = env.hub.log()
    gets = cdn_gets(log)
    covered = sum(g["bytes_sent"] for g in gets)
    check(covered <= len(fx.big) + 65536, "read %d bytes of a %d-byte file" % (covered, len(fx.big)))
    check(all(g["status"] == 206 for g in gets), "non-206 %r" % [g["status"] for g in gets])
    heads = [e for e in log if e["method"] == "HEAD" and "/resolve/" in e["path"] and e["status"] != 404]
    check(len(heads) == 1, "%d resolves for one file" % len(heads))
    check(len(entry_guesses(log, "org/big")) <= 1, "more than one guess")


def case_revisions(env, fx):
    for spec, commit in [("org/single@v1.0", fx.c_single_v1), ("org/single@" + fx.c_single_v1, fx.c_single_v1),
                         ("org/single@refs/pr/1", fx.c_pr), ("hf://org/single@refs/pr/1", fx.c_pr),
                         ("hf://org/single@pr-branch/model.safetensors", fx.c_pr),
                         ("hf://models/org/single", fx.c_single)]:
        env.hub.clear_log()
        j = env.json(["ls", spec])
        check(j["source"]["commit"] == commit, "%s resolved to %s, want %s" % (spec, j["source"]["commit"], commit))
        log = env.hub.log()
        guesses = [e for e in log if "/resolve/" in e["path"] and "/resolve/%s/" % commit not in e["path"]]
        # the one by the revision's name beside the listing, never used for another commit
        check(len(guesses) <= 1, "%s: unpinned %r" % (spec, [e["path"] for e in guesses]))
        for e in log:
            if e["server"] == "cdn":
                check(e["status"] in (200, 206), "%s: CDN %s" % (spec, e["status"]))
            if e["path"].startswith("/api/models/org/single/revision/") and "refs" in spec:
                check("refs%2Fpr%2F1" in e["path"] or "refs%2fpr%2f1" in e["path"].lower(),
                      "revision not percent-encoded: %s" % e["path"])


def case_dataset_and_folder(env, fx):
    env.hub.clear_log()
    j = env.json(["ls", "hf://datasets/org/ds/weights"])
    check(j["source"]["repo_type"] == "dataset" and j["source"]["commit"] == fx.c_ds, "source %r" % j["source"])
    check(any(e["path"].startswith("/datasets/org/ds/resolve/") for e in env.hub.log()), "no dataset resolve")
    j = env.json(["ls", "hf://org/diffusers/transformer"])
    check(j["source"]["files"][0]["path"] == "transformer/diffusion_pytorch_model.safetensors", "%r" % j["source"])


def case_renamed_repo(env, fx):
    env.hub.clear_log()
    j = env.json(["ls", "oldorg/moved"])
    check(j["source"]["commit"] == fx.c_renamed and j["source"]["repo"] == "neworg/moved", "%r" % j["source"])
    check(any(e["status"] == 307 for e in env.hub.log()), "no redirect followed")


def case_url_source(env, fx):
    # a file URL of the Hub itself (HF_ENDPOINT's host) is the Hub repo it names: revision pinned
    env.hub.clear_log()
    url = "%s/org/single/resolve/%s/model.safetensors" % (env.hub.hub_url, fx.c_single)
    j = env.json(["ls", url], token=TOKEN_OTHER)
    check(j["source"]["kind"] == "hub" and j["source"]["repo"] == "org/single" and
          j["source"]["commit"] == fx.c_single, "kind %r" % j["source"])
    check(len(j["tensors"]) == 1, "tensors")
    log = env.hub.log()
    no_auth_on_cdn(log)
    check(any(e["server"] == "hub" and "authorization" in e["headers"] for e in log), "token not sent to the endpoint")
    # the same file under another host name is a plain URL: no token goes there
    env.hub.clear_log()
    plain = url.replace("127.0.0.1", "localhost")
    j = env.json(["ls", plain], token=TOKEN_OTHER)
    check(j["source"]["kind"] == "url" and len(j["tensors"]) == 1, "plain url %r" % j["source"])
    check(not any("authorization" in e["headers"] for e in env.hub.log()), "token sent to a plain URL's host")


def case_private(env, fx):
    rc, out, err = env.run(["ls", "org/private"])
    check(rc == EXIT_ACCESS and "RepoNotFound" in err and "private" in err, "anonymous: %d %s" % (rc, err))
    rc, out, err = env.run(["ls", "org/private"], token=TOKEN_OTHER)
    check(rc == EXIT_ACCESS and "RepoNotFound" in err and "no access" in err, "other user: %d %s" % (rc, err))
    env.hub.clear_log()
    j = env.json(["ls", "org/private"], token=TOKEN_OK)
    check(j["source"]["commit"] == fx.c_private, "commit")
    log = env.hub.log()
    check(all("authorization" in e["headers"] for e in log if e["server"] == "hub"), "hub request without token")
    no_auth_on_cdn(log)


def case_verbose_never_shows_token(env, fx):
    rc, out, err = env.run(["ls", "org/private", "--verbose"], token=TOKEN_OK)
    check(rc == 0 and "token from HF_TOKEN" in err and fx.c_private in err, "verbose: %d %s" % (rc, err[:300]))
    # Env.run already fails the case if the token appears anywhere in stdout or stderr


def case_progress_on_a_terminal(env, fx):
    import pty
    import select
    master, slave = pty.openpty()
    # each CDN answer sends half its body, pauses, then the rest: bytes arrive over seconds, so a
    # rate and an ETA exist while the hash waits (a plain delay delivers everything at once)
    env.hub.faults([{"server": "cdn", "kind": "stall", "seconds": 1.0, "count": 4}])
    try:
        e = dict(os.environ, HF_ENDPOINT=env.hub.hub_url, HOME=env.tmp, CKPTSCOPE_NO_CACHE="1",
                 XDG_CACHE_HOME=os.path.join(env.tmp, "xdg"))
        e.pop("HF_TOKEN", None)
        p = subprocess.Popen([BIN, "hash", "org/big"], env=e, stdout=subprocess.PIPE, stderr=slave)
        os.close(slave)
        seen = b""
        while True:
            r, _, _ = select.select([master], [], [], 30)
            if not r:
                break
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
        p.wait(30)
    finally:
        os.close(master)
        env.hub.clear_faults()
    check(p.returncode == 0, "exit %s" % p.returncode)
    # one line, phase by phase: resolving, headers, then a known total with an ETA
    lines = [x for x in seen.split(b"\r\x1b[K") if x]
    check(lines and lines[0].startswith(b"resolving org/big"), "no resolving phase: %r" % seen[:200])
    check(b"0 B of 0 B" not in seen, "an empty plan drawn: %r" % seen[:300])
    hashing = [x for x in lines if x.startswith(b"hashing: ")]
    check(hashing and any(b" / " in x and b"ETA" in x for x in hashing), "no known total with an ETA: %r" % lines[-6:])
    check(all(b"\n" not in x for x in lines), "progress spans lines: %r" % seen[:300])
    # and none when stderr is not a terminal
    rc, out, err = env.run(["hash", "org/single"])
    check("fetching:" not in err, "progress on a pipe")


def case_token_files(env, fx):
    tf = os.path.join(env.tmp, "tokfile")
    with open(tf, "w") as f:
        f.write("  %s\r\n" % TOKEN_OK)
    j = env.json(["ls", "org/private"], extra_env={"HF_TOKEN_PATH": tf})
    check(j["source"]["commit"] == fx.c_private, "HF_TOKEN_PATH")
    hf_home = os.path.join(env.tmp, "hfhome")
    os.makedirs(hf_home, exist_ok=True)
    with open(os.path.join(hf_home, "token"), "w") as f:
        f.write(TOKEN_OK + "\n")
    j = env.json(["ls", "org/private"], extra_env={"HF_HOME": hf_home})
    check(j["source"]["commit"] == fx.c_private, "HF_HOME/token")
    # without HF_HOME: $XDG_CACHE_HOME/huggingface/token, else ~/.cache/huggingface/token
    for xdg in (os.path.join(env.tmp, "xdg"), None):
        std = os.path.join(xdg or os.path.join(env.tmp, ".cache"), "huggingface")
        os.makedirs(std, exist_ok=True)
        with open(os.path.join(std, "token"), "w") as f:
            f.write(TOKEN_OK)
        try:
            j = env.json(["ls", "org/private"], extra_env={"XDG_CACHE_HOME": xdg})
            check(j["source"]["commit"] == fx.c_private, "token file under %s" % std)
        finally:
            os.unlink(os.path.join(std, "token"))
    # HF_HUB_DISABLE_IMPLICIT_TOKEN=1: the file is not used
    rc, out, err = env.run(["ls", "org/private"], extra_env={"HF_TOKEN_PATH": tf,
                                                            "HF_HUB_DISABLE_IMPLICIT_TOKEN": "1"})
    check(rc == EXIT_ACCESS, "implicit token used despite HF_HUB_DISABLE_IMPLICIT_TOKEN")


def case_invalid_token(env, fx):
    rc, out, err = env.run(["ls", "org/single"], token=TOKEN_BAD)
    check(rc == EXIT_ACCESS and "InvalidToken" in err, "%d %s" % (rc, err))
    check("HF_TOKEN" in err, "no hint: %s" % err)


def case_gated(env, fx):
    rc, out, err = env.run(["ls", "org/gated"])
    check(rc == EXIT_ACCESS and "GatedRepo" in err and "Request access" in err and "HF_TOKEN" in err,
          "anonymous: %d %s" % (rc, err))
    rc, out, err = env.run(["ls", "org/gated"], token=TOKEN_OTHER)
    check(rc == EXIT_ACCESS and "GatedRepo" in err and "not been granted" in err, "not approved: %d %s" % (rc, err))
    check(err != env.run(["ls", "org/gated"])[2], "same message with and without token")
    j = env.json(["ls", "org/gated"], token=TOKEN_OK)
    check(j["source"]["commit"] == fx.c_gated, "approved")


def case_missing(env, fx):
    seen = {}
    for spec, name in [("org/nope", "RepoNotFound"), ("org/single@nope", "RevisionNotFound"),
                       ("hf://org/single/nope.safetensors", "EntryNotFound"),
                       ("org/single@" + "0" * 40, "RevisionNotFound")]:
        rc, out, err = env.run(["ls", spec])
        check(rc == EXIT_ACCESS and name in err, "%s: %d %s" % (spec, rc, err))
        seen[name] = err
    rc, out, err = env.run(["ls", "hf://org"])
    check(rc == 2, "bad spec exit %d" % rc)


def fault_case(env, fx, fault, spec="org/big", cmd="hash", expect_rc=0, extra_env=None):
    env.hub.clear_log()
    env.hub.clear_faults()
    env.hub.faults(fault if isinstance(fault, list) else [fault])
    try:
        rc, out, err = env.run([cmd, spec, "--json"], extra_env=extra_env)
    finally:
        env.hub.clear_faults()
    log = env.hub.log()
    no_auth_on_cdn(log)
    if expect_rc == 0:
        check(rc == 0, "exit %d: %s" % (rc, err.strip()[:300]))
        j = json.loads(out)
        if spec == "org/big" and cmd == "hash":
            got = {t["name"]: t["sha256"] for t in j["tensors"]}
            check(got == tensor_hashes(fx.big_t), "wrong hashes after recovery")
        return j, log, err
    check(rc == expect_rc, "exit %d, want %d: %s" % (rc, expect_rc, err.strip()[:300]))
    return None, log, err


def case_fault_ignore_range(env, fx):
    _, log, err = fault_case(env, fx, {"server": "cdn", "kind": "ignore_range", "count": -1}, expect_rc=EXIT_NETWORK)
    check("RangeNotHonoured" in err and "ignored the Range" in err, err)
    check(any(g["status"] == 200 for g in cdn_gets(log)), "no 200 in the log")


def case_whole_file_200_accepted(env, fx):
    # a server that ignores Range on a small regular file: asking for all of it, the 200 body
    # of exactly the announced size is the range; a partial range answered with 200 is not
    # (the guess beside the listing fails, so the index is resolved pinned and read by range;
    # case_entry_resolved_beside_the_listing reads it whole in the shards' round trip)
    env.hub.faults([{"server": "hub", "match": "model.safetensors.index.json", "kind": "ignore_range",
                     "count": -1},
                    {"server": "hub", "match": "/org/sharded/resolve/main/", "kind": "status", "status": 404,
                     "count": 1}])
    try:
        env.hub.clear_log()
        j = env.json(["ls", "org/sharded"])
        check(len(j["tensors"]) == 32, "tensors")
        idx = [e for e in env.hub.log() if e["method"] == "GET" and "index.json" in e["path"]]
        check(idx and idx[0]["status"] == 200 and idx[0]["range"] == "bytes=0-%d" % (len(fx.index) - 1),
              "index GET %r" % [(e["status"], e["range"]) for e in idx])
    finally:
        env.hub.clear_faults()


def case_fault_wrong_content_range(env, fx):
    _, log, err = fault_case(env, fx, {"server": "cdn", "kind": "wrong_content_range", "count": -1},
                             expect_rc=EXIT_NETWORK)
    check("RangeNotHonoured" in err and "Content-Range" in err, err)


def resumed(log, after):
    """The CDN log shows a range that starts where a broken one stopped."""
    gets = cdn_gets(log)
    broken = [g for g in gets if g.get("fault")]
    check(broken, "the fault never fired")
    b = broken[0]
    a, e = parse_range(b["range"])
    want = a + b["bytes_sent"]
    later = [parse_range(g["range"]) for g in gets if g is not b]
    check(any(x == want and y == e for x, y in later),
          "no resume at %d-%d after %d bytes of %s (later %r)" % (want, e, b["bytes_sent"], b["range"], later[:8]))


def case_fault_reset_resumes(env, fx):
    _, log, _ = fault_case(env, fx, {"server": "cdn", "kind": "reset", "after_bytes": 2000, "count": 1})
    resumed(log, 2000)


def case_fault_short_body_resumes(env, fx):
    _, log, _ = fault_case(env, fx, {"server": "cdn", "kind": "short_body", "after_bytes": 1500, "count": 1})
    resumed(log, 1500)


def case_fault_stall_times_out(env, fx):
    t0 = time.time()
    _, log, _ = fault_case(env, fx, {"server": "cdn", "kind": "stall", "after_bytes": 1000, "seconds": 60, "count": 1},
                           extra_env={"CKPTSCOPE_STALL_TIMEOUT": "1"})
    check(time.time() - t0 < 30, "stall not cut off")
    resumed(log, 1000)


def case_fault_5xx_retried(env, fx):
    for kind in ("500", "502", "503", "504"):
        j, log, _ = fault_case(env, fx, {"server": "cdn", "kind": kind, "count": 2})
        statuses = [g["status"] for g in cdn_gets(log)]
        check(statuses.count(int(kind)) == 2, "%s: statuses %r" % (kind, statuses))
        check(j["transfer"]["retries"] >= 2, "%s: retries %r" % (kind, j["transfer"]))


def case_fault_hub_5xx_retried(env, fx):
    j, log, _ = fault_case(env, fx, {"server": "hub", "match": "/api/models/org/big", "kind": "503", "count": 1})
    api = [e["status"] for e in log if e["path"].startswith("/api/models/org/big")]
    check(api == [503, 200], "api statuses %r" % api)


def case_fault_429_retry_after(env, fx):
    t0 = time.time()
    j, log, _ = fault_case(env, fx, {"server": "cdn", "kind": "429", "retry_after": 1, "count": 1})
    check(time.time() - t0 >= 0.9, "did not wait for Retry-After")
    check(429 in [g["status"] for g in cdn_gets(log)], "no 429 in log")


def case_fault_429_without_retry_after(env, fx):
    # no Retry-After: the RateLimit header's t= (reset time when r=0) or backoff decides
    j, log, _ = fault_case(env, fx, {"server": "cdn", "kind": "429", "count": 2})
    check([g["status"] for g in cdn_gets(log)].count(429) == 2, "429s not retried")
    check(j["transfer"]["retries"] >= 2, "transfer %r" % j["transfer"])


def case_fault_429_gives_up_with_time(env, fx):
    t0 = time.time()
    _, log, err = fault_case(env, fx, {"server": "cdn", "kind": "429", "retry_after": 3600, "count": -1},
                             expect_rc=EXIT_NETWORK)
    check("RateLimited" in err and re.search(r"retry after 3600 s \(at \d\d:\d\d:\d\d UTC\)", err), err)
    check(time.time() - t0 < 20, "waited for an hour-long Retry-After")


def case_fault_hub_429(env, fx):
    _, log, err = fault_case(env, fx, {"server": "hub", "match": "/api/", "kind": "429", "retry_after": 7200,
                                       "count": -1}, expect_rc=EXIT_NETWORK)
    check("RateLimited" in err and "UTC" in err, err)


def case_fault_416(env, fx):
    _, log, err = fault_case(env, fx, {"server": "cdn", "kind": "416", "count": -1}, expect_rc=EXIT_NETWORK)
    check("416" in err, err)


def case_fault_expired_reresolves(env, fx):
    j, log, _ = fault_case(env, fx, {"server": "cdn", "kind": "expired", "count": 1})
    heads = [e for e in log if e["method"] == "HEAD" and "/resolve/" in e["path"] and e["status"] != 404]
    check(len(heads) == 2, "%d resolves, want 2 (initial + after 403)" % len(heads))
    check(403 in [g["status"] for g in cdn_gets(log)], "no 403")


def case_fault_no_content_length(env, fx):
    fault_case(env, fx, {"server": "cdn", "kind": "no_content_length", "count": -1})


def case_short_url_ttl_reresolves(env, fx):
    env.hub.config(url_ttl=2)
    try:
        env.hub.clear_log()
        rc, out, err = env.run(["hash", "org/big", "--json"])
        check(rc == 0, "exit %d: %s" % (rc, err))
        log = env.hub.log()
        check(all(g["status"] == 206 for g in cdn_gets(log)), "a request hit an expired URL")
    finally:
        env.hub.config(url_ttl=3600)


def case_integrity(env, fx):
    # corrupt the bytes the CDN serves for org/big's file (same size, one byte flipped)
    import hubrepo
    state = hubrepo.load_state(env.hub_root)
    sha = hashlib.sha256(fx.big).hexdigest()
    path = None
    for repo in state["repos"].values() if isinstance(state.get("repos"), dict) else []:
        for c in repo["commits"].values():
            for e in c["files"].values():
                if e.get("sha256") == sha:
                    path = e["local"]
    if path is None:
        raise Fail("cannot find the blob of org/big in the fake Hub state")
    with open(path, "r+b") as f:
        f.seek(len(fx.big) - 10)
        b = f.read(1)
        f.seek(len(fx.big) - 10)
        f.write(bytes([b[0] ^ 0xFF]))
    try:
        rc, out, err = env.run(["hash", "org/big"])
        check(rc != 0 and "IntegrityError" in err and sha in err, "%d %s" % (rc, err))
    finally:
        with open(path, "r+b") as f:
            f.seek(len(fx.big) - 10)
            f.write(b)


def case_fetch(env, fx):
    env.hub.clear_log()
    out = os.path.join(env.tmp, "fetched.safetensors")
    j = env.json(["fetch", "org/sharded", "--tensor", "model.layers.1.*", "--tensor", "model.layers.3.w0", "-o", out])
    want = tensor_hashes(fx.shard_t["model-00002-of-00004.safetensors"])
    want.update({k: v for k, v in tensor_hashes(fx.shard_t["model-00004-of-00004.safetensors"]).items()
                 if k == "model.layers.3.w0"})
    got = {t["name"]: t["sha256"] for t in j["tensors"]}
    check(got == want, "fetched hashes differ")
    # the output is a valid checkpoint holding exactly those tensors
    rc, o2, e2 = env.run(["hash", out, "--json"])
    check(rc == 0, "output not readable: %s" % e2)
    check({t["name"]: t["sha256"] for t in json.loads(o2)["tensors"]} == want, "output hashes differ")
    # adjacent tensors were coalesced: shard 2 read in one ranged request after its header
    gets = cdn_gets(env.hub.log())
    check(all(g["status"] == 206 for g in gets), "non-206")
    check(len(gets) <= 6, "%d CDN requests for 2 shards" % len(gets))


def case_fetch_hashes_a_batch_in_order(env, fx):
    # without -o the tensors of a batch are hashed on two threads; every hash must still be
    # the tensor's own and the report must keep the selection's order (by name), in the JSON
    # and in the plain lines
    want = {}
    for ts in fx.shard_t.values():
        want.update(tensor_hashes(ts))
    names = sorted(want)
    check(len(names) >= 8, "fixture too small: %d tensors" % len(names))
    j = env.json(["fetch", "org/sharded", "--tensor", "model.*"])
    got = [(t["name"], t["sha256"]) for t in j["tensors"]]
    check([n for n, _ in got] == names, "order %r" % [n for n, _ in got][:6])
    check(all(h == want[n] for n, h in got), "a hash differs from hashlib's")
    rc, out, err = env.run(["fetch", "org/sharded", "--tensor", "model.*", "--quiet"])
    lines = [l.split() for l in out.splitlines()]
    check(rc == 0 and lines == [[want[n], n] for n in names], "plain output %r" % out[:300])


def case_fetch_hashes_tensors_as_they_arrive(env, fx):
    # without -o, a tensor that one fetched piece holds whole is hashed on another thread as
    # that piece arrives (src/transport/fetch.c, "early"); the hashes must be hashlib's, in the
    # selection's order, whichever path the bytes took: without the cache (a prefetch), with a
    # cold cache and a warm one (partial reads come from the network again: a refresh)
    names = ["tail.%02d" % i for i in range(1, 64, 2)]  # apart: one piece each, past the header
    want = {n: hashlib.sha256(d).hexdigest() for n, _, _, d in fx.tails_t if n in names}
    pats = [a for n in names for a in ("--tensor", n)]
    cache = os.path.join(env.tmp, "c-arrival")
    with_cache = {"CKPTSCOPE_NO_CACHE": None, "CKPTSCOPE_CACHE": cache}
    for label, extra in (("no cache", {}), ("cold cache", with_cache), ("warm cache", with_cache)):
        j = env.json(["fetch", "org/tails"] + pats, extra_env=extra)
        got = [(t["name"], t["sha256"]) for t in j["tensors"]]
        check([n for n, _ in got] == names, "%s: order %r" % (label, [n for n, _ in got][:6]))
        check(all(h == want[n] for n, h in got), "%s: a hash differs from hashlib's" % label)
        check(j.get("hashed_on_arrival") == len(names), "%s: %r of %d tensors hashed as they arrived"
              % (label, j.get("hashed_on_arrival"), len(names)))
    # with -o each tensor is read back to be written in order: none hashed early, same hashes
    out = os.path.join(env.tmp, "arrival.safetensors")
    j = env.json(["fetch", "org/tails", "-o", out] + pats)
    check(j.get("hashed_on_arrival") == 0, "-o: %r hashed on arrival" % j.get("hashed_on_arrival"))
    check({t["name"]: t["sha256"] for t in j["tensors"]} == want, "-o: hashes differ")
    # a tensor already in memory with the header's first chunk is read back, not lost
    first = fx.tails_t[0]
    j = env.json(["fetch", "org/tails", "--tensor", first[0], "--tensor", names[0]])
    check({t["name"]: t["sha256"] for t in j["tensors"]} ==
          {first[0]: hashlib.sha256(first[3]).hexdigest(), names[0]: want[names[0]]}, "header chunk: hashes")


def case_fetch_coalesces_gaps(env, fx):
    sel = ["model.layers.0.w0", "model.layers.0.w2", "model.layers.0.w4", "model.layers.0.w6"]
    shard = fx.shards["model-00001-of-00004.safetensors"]
    hl = 8 + struct.unpack("<Q", shard[:8])[0]
    hdr = json.loads(shard[8:hl])
    spans = [(hl + hdr[n]["data_offsets"][0], hl + hdr[n]["data_offsets"][1] - 1) for n in sel]

    def data_reads(extra):
        env.hub.clear_log()
        j = env.json(["fetch", "org/sharded", "--tensor", "model.layers.0.w[0246]"], extra_env=extra)
        check(len(j["tensors"]) == 4, "tensors")
        gets = [g for g in cdn_gets(env.hub.log()) if fx.c_sharded and
                hashlib.sha256(shard).hexdigest() in g["path"]]
        rs = sorted(parse_range(g["range"]) for g in gets)
        check(rs and rs[0][0] == 0, "no header read")
        # bytes of the first (header) chunk are in memory already and never fetched twice
        c = rs[0][1] + 1
        want = [(max(a, c), b) for a, b in spans if b >= c]
        return rs[1:], want, j

    # enough connections: four exact ranges side by side, no gap bytes
    reads, want, j = data_reads({})
    check(reads == want, "parallel reads %r, want %r" % (reads, want))
    # one connection and 50 ms per request: round trips are dear and the 12 KiB gaps cheap,
    # so the cost model merges the four into one request
    env.hub.faults([{"server": "cdn", "kind": "delay", "seconds": 0.05, "count": -1}])
    try:
        reads, want, j = data_reads({"CKPTSCOPE_MAX_PARALLEL": "1", "CKPTSCOPE_MAX_HOST_CONNS": "1"})
    finally:
        env.hub.clear_faults()
    check(reads == [(want[0][0], want[-1][1])], "one connection: %r" % reads)
    check(j["transfer"]["ranges_coalesced"] >= 3, "transfer %r" % j["transfer"])
    # coalescing switched off: four requests even on one connection
    reads, want, j = data_reads({"CKPTSCOPE_MAX_PARALLEL": "1", "CKPTSCOPE_MAX_HOST_CONNS": "1",
                                 "CKPTSCOPE_COALESCE_GAP": "0"})
    check(reads == want and j["transfer"]["ranges_coalesced"] == 0, "gap 0: %r %r" % (reads, j["transfer"]))


def case_short_tails_do_not_wait_for_delayed_acks(env, fx):
    """32 separate ranges of 100,000 bytes, one after another on one connection. Each reply is a
    full 64 KiB loopback segment and a short tail the fake Hub (fault `cork`, what nginx's
    sendfile with tcp_nopush does) sends only once the first segment is acknowledged. A client that lets the
    kernel delay its ACKs (40 ms, as it does for request/reply traffic) waits that long per range:
    32 ranges would take more than a second; acknowledged at once, they take a few ms each."""
    names = ["tail.%02d" % i for i in range(0, 64, 2)]
    extra = {"CKPTSCOPE_MAX_PARALLEL": "1", "CKPTSCOPE_MAX_HOST_CONNS": "1", "CKPTSCOPE_COALESCE_GAP": "0"}
    env.hub.clear_log()
    env.hub.faults([{"server": "cdn", "kind": "cork", "count": -1}])
    try:
        t0 = time.time()
        j = env.json(["fetch", "org/tails"] + [a for n in names for a in ("--tensor", n)], extra_env=extra)
        took = time.time() - t0
    finally:
        env.hub.clear_faults()
    want = {n: hashlib.sha256(d).hexdigest() for n, _, _, d in fx.tails_t if n in names}
    check({t["name"]: t["sha256"] for t in j["tensors"]} == want, "tensor hashes")
    gets = [g for g in cdn_gets(env.hub.log()) if g.get("range")]
    check(len(gets) >= len(names), "%d range requests for %d tensors" % (len(gets), len(names)))
    print("short tails: %d ranges in %.3f s" % (len(names), took), file=sys.stderr)
    check(took < 0.8, "%d ranges took %.2f s: the client waits for its own delayed ACKs" % (len(names), took))


def case_range_parallelism_follows_the_round_trip(env, fx):
    """32 separate ranges (coalescing off). From a data server that answers in 0.3 s (fault
    `delay`), all 32 are in flight at once: 32 round trips one after another would take ~10 s.
    From the fake Hub's own CDN on loopback, whose first reply takes a millisecond or so,
    fewer connections than ranges carry them: more parallel requests than fit in a round trip
    only add connections (cks_http_range_parallel; the rule's numbers are tests/unit/test_http.c's)."""
    names = ["tail.%02d" % i for i in range(1, 64, 2)]
    want = {n: hashlib.sha256(d).hexdigest() for n, _, _, d in fx.tails_t if n in names}
    extra = {"CKPTSCOPE_COALESCE_GAP": "0"}

    def fetch():
        env.hub.clear_log()
        t0 = time.time()
        j = env.json(["fetch", "org/tails"] + [a for n in names for a in ("--tensor", n)], extra_env=extra)
        took = time.time() - t0
        check({t["name"]: t["sha256"] for t in j["tensors"]} == want, "tensor hashes")
        gets = [g for g in cdn_gets(env.hub.log()) if g.get("range") and parse_range(g["range"])[0] > 0]
        check(len(gets) >= len(names), "%d range requests for %d tensors" % (len(gets), len(names)))
        return j["transfer"]["connections"], sorted(g["t"] for g in gets[-len(names):]), took

    env.hub.faults([{"server": "cdn", "match": "", "kind": "delay", "seconds": 0.3, "count": -1}])
    try:
        slow_conns, arrivals, took = fetch()
    finally:
        env.hub.clear_faults()
    print("range parallelism: slow server %d connections, the 32 ranges sent within %.3f s, %.2f s in all"
          % (slow_conns, arrivals[-1] - arrivals[0], took), file=sys.stderr)
    check(arrivals[-1] - arrivals[0] < 0.25, "the 32 ranges were sent over %.2f s: not all in one round trip"
          % (arrivals[-1] - arrivals[0]))
    check(slow_conns >= len(names), "%d connections for 32 ranges in flight at once" % slow_conns)
    quick_conns, _, _ = fetch()
    print("range parallelism: quick server %d connections" % quick_conns, file=sys.stderr)
    check(quick_conns < len(names), "%d connections for 32 ranges from a server answering in ~1 ms: one per "
          "range, as many as on a slow link" % quick_conns)


def case_warm_reads_fault_per_block_not_per_page(env, fx):
    """32 tensors of 100,000 bytes read back from the disk cache get slots of huge-page blocks,
    as fetched bytes do: a malloc each grew the heap a 4 KiB page fault at a time (500
    scattered tensors, 17.5 MB: 5,750 faults, and the warm fetch slower than the cold one).
    The faults of the warm fetch are counted against an `ls` of the same repo, which opens it
    the same way from the cache and reads no tensor."""
    try:
        thp = open("/sys/kernel/mm/transparent_hugepage/enabled").read()
    except OSError:
        thp = ""
    if "[never]" in thp or not thp:
        raise ckstest.Skip("no transparent huge pages here (%r)" % thp.strip())
    if os.environ.get("CKS_SANITIZED") == "1":
        # ASan checks every byte the hash reads against shadow memory of its own: its faults
        # are not the build's
        raise ckstest.Skip("page faults under AddressSanitizer are the sanitizer's")
    names = ["tail.%02d" % i for i in range(0, 64, 2)]
    cache = os.path.join(env.tmp, "cache-warm-faults")
    shutil.rmtree(cache, ignore_errors=True)
    extra = {"CKPTSCOPE_NO_CACHE": None, "CKPTSCOPE_CACHE": cache, "CKPTSCOPE_COALESCE_GAP": "0"}
    sel = [a for n in names for a in ("--tensor", n)]
    cold = env.json(["fetch", "org/tails"] + sel, extra_env=extra)
    want = {n: hashlib.sha256(d).hexdigest() for n, _, _, d in fx.tails_t if n in names}
    check({t["name"]: t["sha256"] for t in cold["tensors"]} == want, "cold tensor hashes")

    def faults(args):
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_minflt
        j = env.json(args + ["--offline"], extra_env=extra)
        return resource.getrusage(resource.RUSAGE_CHILDREN).ru_minflt - before, j

    base = min(faults(["ls", "org/tails"])[0] for _ in range(3))
    runs = [faults(["fetch", "org/tails"] + sel) for _ in range(3)]
    for _, j in runs:
        check({t["name"]: t["sha256"] for t in j["tensors"]} == want, "warm tensor hashes")
        check(j["transfer"]["bytes_fetched"] == 0, "the warm fetch went to the network: %r" % j["transfer"])
    extra_faults = min(f for f, _ in runs) - base
    pages = len(names) * 100000 // 4096
    print("warm reads: %d faults beyond ls's %d for %d pages of tensors" % (extra_faults, base, pages),
          file=sys.stderr)
    check(extra_faults < pages // 2, "%d page faults beyond ls's for %d pages of cached tensors: about one per "
          "4 KiB page" % (extra_faults, pages))


def case_small_replies_do_not_wait_for_delayed_acks(env, fx):
    """32 ranges of 200 bytes, one after another on one connection, from a server that writes
    each reply's headers and body separately under Nagle's rule (fault `nagle`): the body
    leaves only once the client acknowledges the headers. A client that lets the kernel
    delay that ACK (40 ms) waits that long per reply, 32 of them more than a second; one that
    acknowledges a header block at once gets each reply in well under a millisecond."""
    names = ["tiny.%02d" % i for i in range(0, 64, 2)]
    extra = {"CKPTSCOPE_MAX_PARALLEL": "1", "CKPTSCOPE_MAX_HOST_CONNS": "1", "CKPTSCOPE_COALESCE_GAP": "0"}
    env.hub.clear_log()
    env.hub.faults([{"server": "cdn", "kind": "nagle", "count": -1}])
    try:
        t0 = time.time()
        j = env.json(["fetch", "org/tiny"] + [a for n in names for a in ("--tensor", n)], extra_env=extra)
        took = time.time() - t0
    finally:
        env.hub.clear_faults()
    want = {n: hashlib.sha256(d).hexdigest() for n, _, _, d in fx.tiny_t if n in names}
    check({t["name"]: t["sha256"] for t in j["tensors"]} == want, "tensor hashes")
    gets = [g for g in cdn_gets(env.hub.log()) if g.get("range")]
    check(len(gets) >= len(names), "%d range requests for %d tensors" % (len(gets), len(names)))
    print("small replies: %d ranges in %.3f s" % (len(names), took), file=sys.stderr)
    check(took < 0.8, "%d ranges took %.2f s: the client waits for its own delayed ACKs" % (len(names), took))


def case_arrived_ranges_are_cached_while_others_are_fetched(env, fx):
    """One batch of ranges from two shards, the second served 1.5 s late (fault `delay`): the
    first shard's tensor is in the disk cache while the second is still on its way, not only
    once the whole batch is in (the cache files were written after the last byte; 500
    scattered tensors spent 60-100 ms creating them then)."""
    cache = os.path.join(env.tmp, "cache-arrivals")
    shutil.rmtree(cache, ignore_errors=True)
    first, late = "model-00001-of-00004.safetensors", "model-00003-of-00004.safetensors"
    keydir = os.path.join(cache, "files", hashlib.sha256(fx.shards[first]).hexdigest()[:2],
                          "s-" + hashlib.sha256(fx.shards[first]).hexdigest())
    e = ckstest.hub_env(env.hub, env.tmp, {"CKPTSCOPE_NO_CACHE": None, "HF_HOME": None, "HF_TOKEN": None,
                                          "CKPTSCOPE_CACHE": cache})
    env.hub.faults([{"server": "cdn", "match": late.split(".")[0], "kind": "delay", "seconds": 1.5, "count": -1}])
    try:
        t0 = time.time()
        p = subprocess.Popen([BIN, "fetch", "org/sharded", "--tensor", "model.layers.0.w1", "--tensor",
                              "model.layers.2.w1", "--json", "--quiet"], env=e,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        seen = None
        while p.poll() is None:
            try:
                names = os.listdir(keydir)
            except OSError:
                names = []
            # the header is extent 0; the tensor's bytes come after it
            if seen is None and any(n[:2] in ("x-", "p-") and int(n.split("-")[1], 16) > 0 for n in names):
                seen = time.time() - t0
            time.sleep(0.005)
        out, err = p.communicate()
        ended = time.time() - t0
    finally:
        env.hub.clear_faults()
    check(p.returncode == 0, "exit %d: %s" % (p.returncode, err.decode()[-300:]))
    want = {n: hashlib.sha256(d).hexdigest() for s_ in (first, late) for n, _, _, d in fx.shard_t[s_]}
    got = {t["name"]: t["sha256"] for t in json.loads(out)["tensors"]}
    check(got == {n: want[n] for n in ("model.layers.0.w1", "model.layers.2.w1")}, "tensor hashes %r" % got)
    print("arrivals: first shard's tensor cached at %s s, run ended at %.2f s" % (
        "never" if seen is None else "%.2f" % seen, ended), file=sys.stderr)
    check(seen is not None and ended - seen >= 1.0,
          "the first shard's tensor reached the cache %s s before the end: stored only after the late shard's"
          % ("never" if seen is None else "%.2f" % (ended - seen)))


def case_diff_remote(env, fx):
    rc, out, err = env.run(["diff", "org/single@v1.0", "org/single", "--json"])
    check(rc in (0, 1), "exit %d: %s" % (rc, err))
    j = json.loads(out)
    check("transfer" in j, "no transfer in diff --json")


def case_cache_rerun_no_network(env, fx):
    cache = os.path.join(env.tmp, "cache")
    e = {"CKPTSCOPE_NO_CACHE": None}
    env.json(["hash", "org/single", "--cache-dir", cache], extra_env=e)
    env.hub.clear_log()
    env.json(["hash", "org/single", "--cache-dir", cache], extra_env=e)
    gets = cdn_gets(env.hub.log())
    check(gets == [], "second run fetched %r" % [g["range"] for g in gets])
    # --offline: answered from the cache alone, or a clear miss
    env.hub.clear_log()
    j = env.json(["hash", "org/single", "--cache-dir", cache, "--offline"], extra_env=e)
    check(len(j["tensors"]) == 1, "offline hash")
    check(env.hub.log() == [], "--offline touched the network: %r" % [x["path"] for x in env.hub.log()])
    rc, out, err = env.run(["ls", "org/sharded", "--cache-dir", cache, "--offline"], extra_env=e)
    check(rc == 4 and "OfflineMiss" in err, "offline miss: %d %s" % (rc, err))


def case_tls(env, fx):
    import harness
    with harness.start(env.hub_root, tls=True, state_file=os.path.join(env.tmp, "tls-state.json")) as th:
        check(th.ca_bundle and th.hub_url.startswith("https://"), "fake hub did not start with TLS")
        tenv = Env(th, env.tmp)
        j = tenv.json(["ls", "org/single"])
        check(j["source"]["commit"] == fx.c_single, "TLS ls")
        log = th.log()
        no_auth_on_cdn(log)
        rc, out, err = tenv.run(["ls", "org/single"], extra_env={"CKPTSCOPE_CA_BUNDLE": None,
                                                                "CURL_CA_BUNDLE": "/nonexistent-ca.pem"})
        check(rc == EXIT_NETWORK and "TlsError" in err, "untrusted CA: %d %s" % (rc, err))
        rc, out, err = tenv.run(["ls", "org/single"], extra_env={"CKPTSCOPE_CA_BUNDLE": None})
        check(rc == EXIT_NETWORK and "TlsError" in err, "system CA: %d %s" % (rc, err))


CASES = [case_arrived_ranges_are_cached_while_others_are_fetched, case_short_tails_do_not_wait_for_delayed_acks, case_range_parallelism_follows_the_round_trip, case_warm_reads_fault_per_block_not_per_page, case_small_replies_do_not_wait_for_delayed_acks, case_ls_single, case_ls_sharded_reads_headers_only, case_entry_resolved_beside_the_listing, case_entry_guess_for_another_commit, case_ls_big_header, case_ls_index_sizes_the_header_reads, case_config_rides_with_the_headers, case_hash_matches,
         case_hash_big_streams_and_verifies, case_revisions, case_dataset_and_folder, case_renamed_repo, case_url_source,
         case_private, case_verbose_never_shows_token, case_progress_on_a_terminal, case_token_files, case_invalid_token, case_gated, case_missing,
         case_fault_ignore_range, case_whole_file_200_accepted, case_fault_wrong_content_range, case_fault_reset_resumes,
         case_fault_short_body_resumes, case_fault_stall_times_out, case_fault_5xx_retried,
         case_fault_hub_5xx_retried, case_fault_429_retry_after, case_fault_429_without_retry_after, case_fault_429_gives_up_with_time,
         case_fault_hub_429, case_fault_416, case_fault_expired_reresolves, case_fault_no_content_length,
         case_short_url_ttl_reresolves, case_integrity, case_fetch, case_fetch_hashes_a_batch_in_order, case_fetch_hashes_tensors_as_they_arrive,
         case_fetch_coalesces_gaps, case_diff_remote,
         case_cache_rerun_no_network, case_tls]


def main():
    only = sys.argv[1] if len(sys.argv) > 1 else None
    if not os.access(BIN, os.X_OK):
        report("FAIL", "remote_setup", "no binary at %s" % BIN)
        return 1
    tmp = tempfile.mkdtemp(prefix="cks-remote-test-")
    hub = None
    try:
        import harness
        root = os.path.join(tmp, "hub")
        fx = Fixture(root)
        hub = harness.start(root, state_file=os.path.join(tmp, "state.json"))
        env = Env(hub, tmp)
        env.hub_root = root
        # every request of every case is checked for a token on the CDN before a case clears
        # the log, so the final verdict covers the whole run
        # ... and the verdict only means something if a request that carried a token to the Hub
        # was redirected and followed to the CDN at all: count those (an authorised Hub 302 with a
        # CDN request after it in the same log window)
        auth_leaks = []
        token_redirects_followed = [0]
        orig_clear = hub.clear_log

        def clear_and_check():
            log = hub.log()
            try:
                no_auth_on_cdn(log)
            except Fail as e:
                auth_leaks.append(str(e))
            token_redirects_followed[0] += token_redirects_to_cdn(log)
            orig_clear()
        hub.clear_log = clear_and_check
        for c in CASES:
            name = c.__name__[5:]
            if only and only not in name:
                continue
            try:
                c(env, fx)
                report("PASS", name)
            except ckstest.Skip as e:
                report("SKIP", name, str(e))
            except Fail as e:
                report("FAIL", name, str(e))
            except Exception as e:
                report("FAIL", name, "%s: %s" % (type(e).__name__, e))
                traceback.print_exc(file=sys.stderr)
            finally:
                try:
                    hub.clear_faults()
                except Exception:
                    pass
        hub.clear_log()
        if auth_leaks:
            report("FAIL", "never_authorization_on_cdn", auth_leaks[0])
        elif not token_redirects_followed[0]:
            report("FAIL", "never_authorization_on_cdn",
                   "no token-bearing Hub request was redirected to the CDN: the check saw nothing to check")
        else:
            report("PASS", "never_authorization_on_cdn")
    finally:
        if hub:
            hub.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return ckstest.exit_code()


if __name__ == "__main__":
    sys.exit(main())
