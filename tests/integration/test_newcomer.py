#!/usr/bin/python3
"""The newcomer's first hour (issue 16): outputs that cannot mislead, and the conventions users
bring from hf / huggingface_hub, git and curl. Local files are written here by a few lines of
independent Python; remote cases run the real binary against the fake Hub on 127.0.0.1.

Expected values come from the files written here (names, NaN positions counted with numpy),
never from an earlier run of the tool.
"""
import json
import os
import pty
import select
import shutil
import struct
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ckstest import BIN, ROOT, failures, report  # noqa: E402

sys.path.insert(0, os.path.join(ROOT, "tests", "fakehub"))
import harness  # noqa: E402
import hubrepo  # noqa: E402

EXIT_USAGE, EXIT_FORMAT, EXIT_IO, EXIT_NETWORK, EXIT_ACCESS = 2, 3, 4, 5, 6


def write_st(path, tensors, pad=True):
    """tensors: [(name, dtype, shape, raw bytes)]; pad=False keeps an odd header length, so the
    data section starts at an odd offset and elements straddle any power-of-two chunk boundary."""
    header, offset, chunks = {}, 0, []
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
        chunks.append(raw)
    h = json.dumps(header).encode()
    if pad:
        h += b" " * (-len(h) % 8)
    elif len(h) % 2 == 0:
        h += b" "
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h)
        for c in chunks:
            f.write(c)


def f32(*values):
    return struct.pack("<%df" % len(values), *values)


def cli(args, env=None, stdin=subprocess.DEVNULL, timeout=300):
    p = subprocess.run([BIN, *args], env=env, capture_output=True, text=True, timeout=timeout, stdin=stdin)
    return p.returncode, p.stdout, p.stderr


def on_a_terminal(args, env, answer=None, timeout=120):
    """Run with stdin and stderr on a pseudo-terminal; (exit code, stdout, what the terminal saw)."""
    master, slave = pty.openpty()
    p = subprocess.Popen([BIN, *args], env=env, stdin=slave, stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    seen, answered, deadline = b"", False, time.time() + timeout
    while time.time() < deadline:
        r, _, _ = select.select([master], [], [], 0.2)
        if r:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
        if answer is not None and not answered and b"[y/N]" in seen:
            os.write(master, answer.encode() + b"\n")
            answered = True
        if p.poll() is not None and not r:
            break
    out = p.stdout.read().decode()
    p.wait(timeout)
    os.close(master)
    return p.returncode, out, seen.decode(errors="replace")


def json_error_ok(out, rc, command):
    """--json on failure: one document on stdout naming the error and the exit code."""
    try:
        doc = json.loads(out)
    except ValueError:
        return False, "not JSON: %r" % out[:200]
    err = doc.get("error")
    ok = (list(doc)[:2] == ["schema_version", "command"] and doc["command"] == command and isinstance(err, dict)
          and set(err) >= {"rule", "message", "exit_code"} and err["exit_code"] == rc and rc != 0 and err["message"])
    return ok, json.dumps(doc)[:300]


def bad_values(doc, key, good, where="$"):
    """Paths of every `key` anywhere in a document whose value fails `good`."""
    bad = []
    if isinstance(doc, dict):
        for k, v in doc.items():
            if k == key and not good(v):
                bad.append("%s.%s" % (where, k))
            bad += bad_values(v, key, good, "%s.%s" % (where, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            bad += bad_values(v, key, good, "%s[%d]" % (where, i))
    return bad


def bytes_read_numbers(doc):
    """Every "bytes_read" must be a number (not an object, not a bool)."""
    return bad_values(doc, "bytes_read", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool))


def string_sources(doc):
    """"source" is always an object, never a string (schema 2)."""
    return bad_values(doc, "source", lambda v: isinstance(v, dict))


# ---- local: globs, verify, JSON --------------------------------------------------------------

def local_cases(tmp):
    names = ["model.layers.%d.%s" % (i, n) for i in range(3) for n in ("input_layernorm.weight", "self_attn.q_proj.weight")]
    a = os.path.join(tmp, "a.safetensors")
    b = os.path.join(tmp, "b.safetensors")
    write_st(a, [(n, "F32", [2], f32(i, 1)) for i, n in enumerate(names)])
    write_st(b, [("backbone." + n, "F32", [2], f32(i, 1)) for i, n in enumerate(names)])

    # a glob that selects nothing: the same error and exit code everywhere, naming the pattern and names
    for cmd, args in (("ls", [a]), ("hash", [a]), ("fetch", [a]), ("diff", [a, b])):
        rc, out, err = cli([cmd, *args, "--tensor", "*atention*"])
        ok = rc == EXIT_ACCESS and "'*atention*'" in err and "self_attn.q_proj.weight" in err and out == ""
        report("%s: a --tensor glob that selects nothing is exit 6, naming the pattern and near names" % cmd, ok,
               "exit %d: %s" % (rc, err.strip()))
        rc, out, err = cli([cmd, *args, "--tensor", "nomatch", "--json"])
        ok, why = json_error_ok(out, rc, cmd)
        report("%s --json: the glob error is a JSON document" % cmd, ok and rc == EXIT_ACCESS, why)
    # one of two patterns selecting nothing is still an error (a typo must not shrink the selection)
    rc, out, err = cli(["ls", a, "--tensor", "*layernorm*", "--tensor", "*typo*"])
    report("ls: one dead pattern among good ones is an error", rc == EXIT_ACCESS and "'*typo*'" in err, err.strip())
    # diff never calls two empty sets identical
    rc, out, err = cli(["diff", a, a, "--tensor", "nomatch", "--json"])
    doc = json.loads(out) if out.strip() else {}
    report("diff: an empty selection is never same_contents", rc == EXIT_ACCESS and doc.get("same_contents") is None
           and "error" in doc, "exit %d %s" % (rc, out[:200]))
    empty = os.path.join(tmp, "empty.safetensors")
    write_st(empty, [])
    rc, out, err = cli(["diff", empty, empty])
    report("diff of two checkpoints without tensors is an error, not identical", rc == EXIT_ACCESS and
           "nothing to compare" in err, "exit %d %s" % (rc, err))

    # diff leads with a summary, names the rename pattern, prints bytes read, --stat
    rc, out, err = cli(["diff", a, b])
    lines = out.splitlines()
    ok = rc == 0 and lines[0] == "same contents: yes; 6 renamed (prefix `backbone.` added)"
    header_a = 8 + struct.unpack("<Q", open(a, "rb").read(8))[0]
    header_b = 8 + struct.unpack("<Q", open(b, "rb").read(8))[0]
    want = "read %d B of A and %d B of B (headers, and 6 + 6 tensors hashed)" % (header_a + 48, header_b + 48)
    ok = ok and lines[-1] == want
    report("diff: the first line is the answer, the last the bytes read", ok, out)
    rc, out, err = cli(["diff", a, b, "--stat"])
    ok = rc == 0 and out.splitlines()[0].startswith("same contents: yes") and "renamed" in out and \
        "backbone.model" not in out and "48 B" in out
    report("diff --stat: counts and bytes per category, no tensor list", ok, out)
    rc, out, err = cli(["diff", a, b, "--json"])
    doc = json.loads(out)
    ok = doc.get("summary", "").startswith("same contents: yes") and doc.get("bytes_read") == header_a + header_b + 96
    srcs = doc.get("sources", {})
    ok = ok and srcs.get("a", {}).get("spec") == a and srcs.get("b", {}).get("bytes_read") == header_b + 48
    report("diff --json: summary, sources.a/b with spec, bytes_read numbers", ok and not bytes_read_numbers(doc),
           json.dumps(doc)[:300])

    # unknown commands and options suggest the nearest; --html without a file says so
    rc, out, err = cli(["comapre", a, b])
    report("an unknown command suggests the nearest", rc == EXIT_USAGE and "did you mean `ckptscope compare`" in err, err)
    rc, out, err = cli(["ls", a, "--jsn"])
    report("an unknown option suggests the nearest", rc == EXIT_USAGE and "did you mean --json?" in err, err)
    rc, out, err = cli(["diff", a, b, "--stats"])
    report("diff --stats suggests --stat", rc == EXIT_USAGE and "did you mean --stat?" in err, err)
    rc, out, err = cli(["compare", a, b, "--html"])
    report("compare --html without a FILE says so", rc == EXIT_USAGE and "--html needs a FILE" in err, err)
    rc, out, err = cli(["compare", a, b, "--html", "--json"])
    ok, why = json_error_ok(out, rc, "compare")
    report("compare --html --json: the forgotten FILE is named, as JSON", ok and "--html needs a FILE" in out, why)
    rc, out, err = cli(["compare", "--html", a, b])
    report("compare --html A B: the report took A", rc == EXIT_USAGE and "--html report.html A B" in err, err)
    rc, out, err = cli(["cache", "lss", "--cache-dir", os.path.join(tmp, "c")])
    report("cache: an unknown action suggests the nearest", rc == EXIT_USAGE and "cache ls" in err, err)

    # --json failures: a document on stdout for every command
    missing = os.path.join(tmp, "absent.safetensors")
    for cmd, args in (("ls", [missing]), ("hash", [missing]), ("fetch", [missing]), ("diff", [missing, a]),
                      ("compare", [missing, a]), ("fingerprint", [missing, "-o", os.path.join(tmp, "x.ckfp")]),
                      ("ls", [a, "--no-such-option"]), ("compare", [a])):
        rc, out, err = cli([cmd, *args, "--json"])
        ok, why = json_error_ok(out, rc, cmd)
        report("%s --json %s: failure as a JSON document" % (cmd, args[-1]), ok, "exit %d %s" % (rc, why))
    rc, out, err = cli(["verify", missing, "--json"])
    doc = json.loads(out) if out.strip() else {}
    error = doc.get("error") if isinstance(doc.get("error"), dict) else {}
    ok = rc == EXIT_ACCESS and doc.get("outcome") == "could_not_check" and error.get("exit_code") == rc and \
        error.get("rule") and doc.get("source", {}).get("spec") == missing
    report("verify --json: what could not be checked is an error object", ok, out[:300])

    # one naming for sources: "source" for one SOURCE, "sources" {a, b} for two; bytes_read numbers
    for cmd, args, key in (("ls", [a], "source"), ("hash", [a], "source"), ("fetch", [a], "source"),
                           ("verify", [a], "source"), ("compare", [a, b, "--tests", "T1,T2"], "sources")):
        rc, out, err = cli([cmd, *args, "--json"])
        doc = json.loads(out) if out.strip() else {}
        if key == "source":
            ok = doc.get("source", {}).get("spec") == a and isinstance(doc["source"].get("bytes_read"), int)
        else:
            ok = doc.get("sources", {}).get("a", {}).get("spec") == a and doc["sources"]["b"]["spec"] == b
            ok = ok and isinstance(doc.get("bytes_read"), (int, float))
        bad = bytes_read_numbers(doc) + string_sources(doc)
        ok = ok and not bad and "models" not in doc and "target" not in doc and doc.get("schema_version") == 2
        report("%s --json: %s with spec, every bytes_read a number" % (cmd, key), ok,
               "%s %s" % (bad, " ".join(out.split())[:300]))

    # fingerprint: the source is an object too, and a fingerprint as a SOURCE says what it was made from
    fp = os.path.join(tmp, "a.ckfp")
    rc, out, err = cli(["fingerprint", a, "-o", fp, "--json"])
    doc = json.loads(out) if out.strip() else {}
    ok = rc == 0 and doc.get("source", {}).get("spec") == a and not string_sources(doc) and \
        not bytes_read_numbers(doc)
    rc, out, err = cli(["compare", fp, b, "--tests", "T1,T2", "--json"])
    doc2 = json.loads(out) if out.strip() else {}
    fa = doc2.get("sources", {}).get("a", {})
    ok = ok and rc == 0 and fa.get("kind") == "fingerprint" and fa.get("made_from") == a and not string_sources(doc2)
    report("fingerprint --json and a fingerprint SOURCE: source objects, made_from", ok, "%s %s" % (out[:200], err))

    verify_cases(tmp, a)


def verify_cases(tmp, small):
    # without --against: valid, and the output says provenance was not checked
    rc, out, err = cli(["verify", small])
    report("verify without --against is 'valid', never 'valid_unrelated'", rc == 0 and
           out.startswith(small + ": valid\n") and "valid_unrelated" not in out and
           "provenance: not checked" in out, out)
    rc, out, err = cli(["verify", small, "--json"])
    doc = json.loads(out)
    report("verify --json without --against: outcome valid, provenance_checked false",
           doc.get("outcome") == "valid" and doc.get("provenance_checked") is False, out[:300])
    # an --against directory without fingerprints is an error (decided: exit 2, saying what to do)
    empty = os.path.join(tmp, "known")
    os.makedirs(empty)
    with open(os.path.join(empty, "notes.txt"), "w") as f:
        f.write("not a fingerprint\n")
    rc, out, err = cli(["verify", small, "--against", empty])
    report("verify --against a folder without fingerprints is exit 2", rc == EXIT_USAGE and "holds no fingerprint" in err
           and "ckptscope fingerprint" in err, "exit %d %s" % (rc, err))

    # --full checks every value: one NaN in the middle of a 64 MiB tensor, an Inf in a BF16 tensor
    # whose elements straddle the hashing chunks (odd header length), and F64 values beyond float's
    # range that are finite
    rng = np.random.default_rng(16)
    big = rng.standard_normal(16 * 1024 * 1024).astype(np.float32)  # 64 MiB
    big[len(big) // 2 + 12345] = np.nan
    bf = (rng.standard_normal(3 * 1024 * 1024 + 1).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
    bf[2 * 1024 * 1024 + 7] = 0x7F80   # +inf
    bf[2 * 1024 * 1024 + 9] = 0xFF80   # -inf
    bf[100] = 0x7FC1                   # NaN
    wide = np.array([1e300, -1e300, 3.0], dtype=np.float64)
    path = os.path.join(tmp, "nan.safetensors")
    write_st(path, [("big", "F32", [len(big)], big.tobytes()), ("odd", "BF16", [len(bf)], bf.tobytes()),
                    ("wide", "F64", [3], wide.tobytes()), ("ids", "I64", [2], struct.pack("<2q", 1, 2))], pad=False)
    f32_bits = big.view(np.uint32)
    want_big_nan = int(np.isnan(big).sum())
    exp = (bf >> 7) & 0xFF
    want_odd_nan = int(((exp == 0xFF) & ((bf & 0x7F) != 0)).sum())
    want_odd_inf = int(((exp == 0xFF) & ((bf & 0x7F) == 0)).sum())
    assert want_big_nan == 1 and (want_odd_nan, want_odd_inf) == (1, 2) and f32_bits.size == len(big)
    rc, out, err = cli(["verify", path])
    report("verify without --full: the mid-tensor NaN is not claimed checked (sampled, and it says so)",
           "sampled blocks" in out and "--full checks every value" in out and "big" not in out.split("values:")[0],
           "exit %d %s" % (rc, out))
    rc, out, err = cli(["verify", path, "--full", "--json"])
    doc = json.loads(out)
    problems = {p["tensor"]: p["detail"] for p in doc.get("problems", []) if p["rule"] == "NonFinite"}
    values = doc.get("checks", {}).get("values", {})
    float_bytes = 4 * len(big) + 2 * len(bf) + 8 * len(wide)
    ok = rc == EXIT_FORMAT and set(problems) == {"big", "odd"} and "big" in problems and "odd" in problems
    ok = ok and "%d NaN and 0 Inf" % want_big_nan in problems["big"]
    ok = ok and "%d NaN and %d Inf" % (want_odd_nan, want_odd_inf) in problems["odd"]
    ok = ok and values.get("mode") == "every_value" and values.get("tensors_checked") == 3
    ok = ok and values.get("float_tensors") == 3 and values.get("values_checked") == len(big) + len(bf) + len(wide)
    ok = ok and values.get("bytes_checked") == float_bytes
    report("verify --full: every value checked, NaN/Inf counted exactly (numpy's count), 1e300 in F64 is finite", ok,
           json.dumps({"problems": problems, "values": values}))
    rc, out, err = cli(["verify", path, "--full"])
    report("verify --full (text): says every value was checked", "every value of 3 float tensors" in out, out)


# ---- remote: the fake Hub ------------------------------------------------------------------

def remote_cases(tmp):
    store = os.path.join(tmp, "store")
    model = os.path.join(tmp, "model")
    os.makedirs(model)
    names = ["model.layers.0.input_layernorm.weight", "model.layers.0.self_attn.q_proj.weight", "model.norm.weight"]
    # 64 KiB per tensor: more than the 4 KiB a header read takes, so tensor bytes are fetched apart
    rows = [np.full(16384, i, dtype=np.float32).tobytes() for i in range(3)]
    write_st(os.path.join(model, "model.safetensors"), [(n, "F32", [16384], rows[i]) for i, n in enumerate(names)])
    with open(os.path.join(model, "config.json"), "w") as f:
        f.write('{"model_type": "llama"}')
    files = {n: os.path.join(model, n) for n in os.listdir(model)}
    c_main = hubrepo.add_repo(store, "org/model", files, tags=["v1.0"])
    hubrepo.add_ref(store, "org/model", "refs/heads/dev", c_main)
    ds = os.path.join(tmp, "ds")
    os.makedirs(ds)
    for k in (1, 2):
        write_st(os.path.join(ds, "part%d.safetensors" % k), [("x", "F32", [1], f32(k))])
    hubrepo.add_repo(store, "org/data", {n: os.path.join(ds, n) for n in os.listdir(ds)}, kind="dataset")
    # two unrelated repos for diff's question
    other = os.path.join(tmp, "other")
    os.makedirs(other)
    write_st(os.path.join(other, "model.safetensors"),
             [(n, "F32", [16384], np.full(16384, 9 + i, dtype=np.float32).tobytes()) for i, n in enumerate(names)])
    hubrepo.add_repo(store, "org/other", {"model.safetensors": os.path.join(other, "model.safetensors")})

    with harness.start(store) as hub:
        base = dict(os.environ, HF_ENDPOINT=hub.hub_url, HOME=tmp, XDG_CACHE_HOME=os.path.join(tmp, "xdg"),
                    HF_HOME=os.path.join(tmp, "no-hf"))
        for k in ("HF_TOKEN", "HF_HUB_OFFLINE", "CKPTSCOPE_CACHE", "CKPTSCOPE_NO_CACHE"):
            base.pop(k, None)
        cache = os.path.join(tmp, "cache")
        env = dict(base, CKPTSCOPE_CACHE=cache)

        # fetch with a dead glob, remote
        rc, out, err = cli(["fetch", "org/model", "--tensor", "*nrom*"], env)
        report("fetch (Hub): a glob that selects nothing is exit 6 with near names",
               rc == EXIT_ACCESS and "model.norm.weight" in err, "exit %d %s" % (rc, err))

        # HF_HUB_OFFLINE=1 is --offline: from the cache, no request at all. The cache keeps a
        # branch's listing 0 s here, so online the same command must ask the Hub again (the control)
        ttl_cache = os.path.join(tmp, "ttl-cache")
        os.makedirs(ttl_cache)
        with open(os.path.join(ttl_cache, "config"), "w") as f:
            f.write("revision_ttl = 0\n")
        ttl_env = dict(env, CKPTSCOPE_CACHE=ttl_cache)
        rc, out, err = cli(["hash", "org/model"], ttl_env)
        time.sleep(1.1)
        hub.clear_log()
        rc, out, err = cli(["hash", "org/model"], dict(ttl_env, HF_HUB_OFFLINE="1"))
        offline_log = hub.log()
        hub.clear_log()
        rc2, out2, err2 = cli(["hash", "org/model"], ttl_env)
        report("HF_HUB_OFFLINE=1 answers from the cache without a request (online, the same asks the Hub)",
               rc == 0 and len(out.splitlines()) == 3 and offline_log == [] and rc2 == 0 and out2 == out and
               len(hub.log()) > 0, "exit %d %s %r" % (rc, err, [e["path"] for e in offline_log]))
        cli(["hash", "org/model"], env)
        hub.clear_log()
        rc, out, err = cli(["ls", "org/other"], dict(env, HF_HUB_OFFLINE="yes"))
        report("HF_HUB_OFFLINE=yes: a miss is OfflineMiss (exit 4), no network", rc == EXIT_IO and
               "OfflineMiss" in err and "HF_HUB_OFFLINE" in err and hub.log() == [], "exit %d %s" % (rc, err))

        # offline with only a Hugging Face cache: refs/ resolve the revision, the snapshot is listed
        hf_home = os.path.join(tmp, "hf")
        make_hf_cache(hf_home, "org/model", c_main, model, refs={"main": c_main, "v1.0": c_main})
        hf_env = dict(base, HF_HOME=hf_home, CKPTSCOPE_CACHE=os.path.join(tmp, "empty-cache"), HF_HUB_OFFLINE="1")
        hub.clear_log()
        rc, out, err = cli(["ls", "org/model", "--json"], hf_env)
        doc = json.loads(out) if rc == 0 else {}
        ok = rc == 0 and doc["source"]["commit"] == c_main and len(doc["tensors"]) == 3
        rc2, out2, err2 = cli(["hash", "org/model@v1.0"], hf_env)
        want = subprocess.run([BIN, "hash", os.path.join(model, "model.safetensors")], capture_output=True,
                              text=True).stdout
        ok = ok and rc2 == 0 and out2 == want and hub.log() == []
        report("offline: a complete Hugging Face cache answers (refs/ -> commit, snapshots/ listed)", ok,
               "exit %d/%d %s %s" % (rc, rc2, err, err2))
        rc, out, err = cli(["ls", "org/model@nope"], hf_env)
        report("offline: a revision the Hugging Face cache lacks is OfflineMiss", rc == EXIT_IO and "OfflineMiss" in err,
               "exit %d %s" % (rc, err))

        # a DNS failure fails fast and suggests --offline
        t0 = time.time()
        rc, out, err = cli(["ls", "org/model"], dict(env, HF_ENDPOINT="http://no-such-host.invalid",
                                                      CKPTSCOPE_CACHE=os.path.join(tmp, "dns-cache")))
        took = time.time() - t0
        report("a DNS failure fails at once (no retries) and suggests --offline", rc == EXIT_NETWORK and took < 5 and
               "--offline" in err and "HF_HUB_OFFLINE" in err, "exit %d in %.1f s: %s" % (rc, took, err))

        # a pasted Hub web URL is a Hub source (pinned commit, LFS SHA-256), on HF_ENDPOINT's host and huggingface.co
        for url in ("%s/org/model" % hub.hub_url, "%s/org/model/blob/main/model.safetensors" % hub.hub_url,
                    "%s/org/model/tree/v1.0" % hub.hub_url, "https://huggingface.co/org/model/resolve/dev/model.safetensors",
                    "https://huggingface.co/org/model/tree/refs%2Fheads%2Fdev?foo=1"):
            rc, out, err = cli(["ls", url, "--json"], env)
            doc = json.loads(out) if rc == 0 else {}
            src = doc.get("source", {})
            ok = rc == 0 and src.get("kind") == "hub" and src.get("repo") == "org/model" and src.get("commit") == c_main
            ok = ok and src.get("files", [{}])[0].get("sha256")
            report("a pasted Hub URL is a Hub source: %s" % url.replace(hub.hub_url, "HF_ENDPOINT"), ok,
                   "exit %d %s %s" % (rc, err, src))
        rc, out, err = cli(["ls", "https://huggingface.co/datasets/org/data/tree/main"], env)
        report("a pasted dataset URL keeps datasets/ in the hint", rc == EXIT_ACCESS and "hf://datasets/org/data@" in err,
               "exit %d %s" % (rc, err))
        rc, out, err = cli(["ls", "hf://datasets/org/data"], env)
        report("hf://datasets/...: the hint for naming one file keeps datasets/",
               rc == EXIT_ACCESS and "hf://datasets/org/data@main/FILE" in err, err)

        # RevisionNotFound lists the branches and tags
        rc, out, err = cli(["ls", "org/model@mian"], env)
        report("RevisionNotFound lists the repo's branches and tags", rc == EXIT_ACCESS and "RevisionNotFound" in err
               and "branches: " in err and "main" in err and "dev" in err and "tags: v1.0" in err, err)

        # cache ls grouped by repository with sizes; cache rm org/name
        cli(["ls", "org/other"], env)
        rc, out, err = cli(["cache", "ls"], env)
        lines = out.splitlines()
        rows = {ln.split()[0]: ln for ln in lines[1:] if ln.strip() and not ln.startswith(" ")}
        report("cache ls: one line per repository with its size", rc == 0 and lines[0].startswith("REPOSITORY") and
               "org/model" in rows and "org/other" in rows and "repositories in" in out, out)
        rc, out, err = cli(["cache", "ls", "--json"], env)
        repos = {r["repo"]: r for r in json.loads(out).get("repos", []) if r["repo"]}
        stored = sum(e["stored_bytes"] for e in json.loads(out)["entries"] if e["kind"] == "file")
        m = repos.get("org/model", {})
        want_size = os.path.getsize(os.path.join(model, "model.safetensors"))
        # hash read model.safetensors whole; config.json was never needed
        ok = m.get("files") == 1 and m.get("logical_bytes") == want_size and \
            sum(r["stored_bytes"] for r in repos.values()) >= stored and set(m.get("revisions", [])) >= {"main", "v1.0"}
        report("cache ls --json: repos with files, bytes, revisions", ok, json.dumps(repos["org/model"])[:600])
        rc, out, err = cli(["cache", "rm", "org/other"], env)
        rc2, out2, err2 = cli(["cache", "ls", "--json"], env)
        left = {r["repo"] for r in json.loads(out2).get("repos", [])}
        hub.clear_log()
        rc3, out3, err3 = cli(["ls", "org/model"], dict(env, HF_HUB_OFFLINE="1"))
        report("cache rm org/name removes that repository only", rc == 0 and out.startswith("removed org/other") and
               "org/other" not in left and "org/model" in left and rc3 == 0, out + err + err3)
        rc, out, err = cli(["cache", "rm", "org/modle"], env)
        report("cache rm of an unknown repo is exit 6 and suggests the nearest", rc == EXIT_ACCESS and
               "did you mean org/model" in err, err)

        # diff asks before a large network read; refuses when stdin is not a terminal unless --yes
        ask_env = dict(env, CKPTSCOPE_CACHE=os.path.join(tmp, "ask-cache"))
        rc, out, err = cli(["diff", "org/model", "org/other", "--ask-above", "100K"], ask_env)
        report("diff: a large read with stdin not a terminal is refused, saying --yes", rc == EXIT_USAGE and
               "--yes" in err and out == "", "exit %d %s" % (rc, err))
        rc, out, err = cli(["diff", "org/model", "org/other", "--ask-above", "100K", "--yes"], ask_env)
        report("diff --yes reads without asking", rc == 1 and out.startswith("same contents: no"), "exit %d %s" % (rc, err))
        rc, out, seen = on_a_terminal(["diff", "org/model", "org/other", "--ask-above", "100K"],
                                      dict(env, CKPTSCOPE_CACHE=os.path.join(tmp, "ask2")), answer="n")
        report("diff on a terminal asks, and 'n' reads nothing", rc == EXIT_USAGE and "Continue? [y/N]" in seen and
               out == "", "exit %d %r" % (rc, seen[-300:]))
        rc, out, seen = on_a_terminal(["diff", "org/model", "org/other", "--ask-above", "100K"],
                                      dict(env, CKPTSCOPE_CACHE=os.path.join(tmp, "ask3")), answer="y")
        report("diff on a terminal asks, and 'y' goes on", rc == 1 and "Continue? [y/N]" in seen and
               out.startswith("same contents: no"), "exit %d %r" % (rc, seen[-300:]))
        rc, out, seen = on_a_terminal(["diff", "org/model", "org/model@v1.0", "--ask-above", "100K"],
                                      dict(env, CKPTSCOPE_CACHE=os.path.join(tmp, "ask4")))
        report("diff of two revisions sharing every file does not ask", rc == 0 and "[y/N]" not in seen,
               "exit %d %r" % (rc, seen[-300:]))

        # progress: compare's stages on one line, with bytes against the budget
        rc, out, seen = on_a_terminal(["compare", "org/model", "org/other", "--budget", "1M"],
                                      dict(env, CKPTSCOPE_CACHE=os.path.join(tmp, "prog")))
        lines = [x for x in seen.replace("\r\x1b[K", "\n").splitlines() if x.strip()]
        stages = [x for x in lines if x.startswith("compare: ")]
        report("progress: compare's stages on one line with bytes against the budget", rc == 0 and stages and
               all("of a 1.0 MiB budget per model" in x for x in stages) and
               any(x.startswith("resolving org/model") for x in lines), "exit %d %r" % (rc, lines[:8]))

        # fingerprint --from --json gives one JSON document
        lst = os.path.join(tmp, "bases.txt")
        with open(lst, "w") as f:
            f.write("# known bases\norg/model\norg/nope\n")
        rc, out, err = cli(["fingerprint", "--from", lst, os.path.join(tmp, "known"), "--json", "--quiet"], env)
        try:
            doc = json.loads(out)
        except ValueError:
            doc = {}
        jobs = {j["source"]["spec"]: j for j in doc.get("items", [])}
        ok = doc.get("command") == "fingerprint" and set(jobs) == {"org/model", "org/nope"}
        ok = ok and jobs["org/model"]["exit_code"] == 0 and jobs["org/model"]["commit"] == c_main
        ok = ok and jobs["org/nope"]["exit_code"] == EXIT_ACCESS and doc["exit_code"] == rc == EXIT_ACCESS
        ok = ok and jobs["org/model"]["status"] == "made" and jobs["org/nope"]["status"] == "failed"
        report("fingerprint --from --json: one document, one entry per job", ok, "exit %d %s" % (rc, out[:300]))


def make_hf_cache(hf_home, repo_id, commit, folder, refs):
    """The layout huggingface_hub writes (research/hub-protocol.md §A5): blobs named by etag,
    snapshots/<commit>/<path> symlinks to them, refs/<name> holding the commit."""
    import hashlib
    repo = os.path.join(hf_home, "hub", "models--" + repo_id.replace("/", "--"))
    os.makedirs(os.path.join(repo, "blobs"), exist_ok=True)
    snap = os.path.join(repo, "snapshots", commit)
    os.makedirs(snap, exist_ok=True)
    for name in os.listdir(folder):
        data = open(os.path.join(folder, name), "rb").read()
        if hubrepo.is_lfs(name, len(data)):
            etag = hashlib.sha256(data).hexdigest()
        else:
            etag = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        with open(os.path.join(repo, "blobs", etag), "wb") as f:
            f.write(data)
        os.symlink(os.path.join("..", "..", "blobs", etag), os.path.join(snap, name))
    for ref, c in refs.items():
        p = os.path.join(repo, "refs", ref)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "w") as f:
            f.write(c)


def main():
    tmp = tempfile.mkdtemp(prefix="cks-newcomer-")
    try:
        for part in (local_cases, remote_cases):
            try:
                part(tmp)
            except Exception as e:  # a broken contract is a FAIL line, not a traceback
                import traceback
                report(part.__name__, False, "%s: %s" % (type(e).__name__, traceback.format_exc()[-600:]))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 1 if failures() else 0


if __name__ == "__main__":
    sys.exit(main())
