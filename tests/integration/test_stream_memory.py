#!/usr/bin/python3
"""Whole-file remote reads stream with bounded memory (issue 15): `hash` of a 192 MiB Hub file
(12 tensors of 16 MiB) through the fake Hub on 127.0.0.1, with and without the disk cache, and
`verify --full` of the same file.

Each case checks the tensor hashes against hashlib, the peak RSS of the process (wait4) against
a bound the old read-ahead broke (it kept every window up to the 256 MiB memory cap: a 192 MiB
file then peaked above 192 MiB), and that the whole-file SHA-256 check still concluded: a second
run on the same cache is served from it without one request to the CDN (only a file verified
whole is served so), and a file whose bytes do not match the Hub's SHA-256 fails with exit 3.
Prints one PASS/FAIL line per case. Environment: CKS_BIN, CKS_ROOT.
"""
import hashlib
import json
import os
import random
import re
import shutil
import struct
import subprocess
import sys
import tempfile

ROOT = os.environ.get("CKS_ROOT") or os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BIN = os.environ.get("CKS_BIN") or os.path.join(ROOT, "build", "ckptscope")
sys.path.insert(0, os.path.join(ROOT, "tests", "fakehub"))
import harness  # noqa: E402
import hubrepo  # noqa: E402
import ckstest  # noqa: E402


def report(ok, name, why=""):
    ckstest.report(name, ok, why)

MiB = 1 << 20
N_TENSORS, TENSOR_MIB = 12, 16
# Two read-ahead windows, the hash buffer and the cache's merge buffer fit well under this; the
# old read-ahead held the file itself (192 MiB) before evicting anything.
PEAK_BOUND_MIB = 128
EXIT_FORMAT = 3

def make_file(path):
    """12 U8 tensors of 16 MiB: one random MiB repeated with a different first byte per MiB, so
    every tensor hashes differently. Returns ({name: sha256}, whole-file sha256)."""
    block = bytearray(random.Random(15).randbytes(MiB))
    hdr, off = {}, 0
    for i in range(N_TENSORS):
        hdr["layer.%02d.weight" % i] = {"dtype": "U8", "shape": [TENSOR_MIB * MiB], "data_offsets": [off, off + TENSOR_MIB * MiB]}
        off += TENSOR_MIB * MiB
    h = json.dumps(hdr).encode()
    h += b" " * (-len(h) % 8)
    whole = hashlib.sha256()
    want = {}
    with open(path, "wb") as f:
        head = struct.pack("<Q", len(h)) + h
        f.write(head)
        whole.update(head)
        for i in range(N_TENSORS):
            t = hashlib.sha256()
            for k in range(TENSOR_MIB):
                block[0] = (i * TENSOR_MIB + k) & 255
                f.write(block)
                t.update(block)
                whole.update(block)
            want["layer.%02d.weight" % i] = t.hexdigest()
    return want, whole.hexdigest()


def measured_run(hub, tmp, repo, cache, command=("hash",)):
    """(exit, stdout, stderr, peak RSS MiB) with the child reaped by wait4 for its rusage."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": tmp, "HF_ENDPOINT": hub.hub_url,
           "HF_HOME": os.path.join(tmp, "hf"), "XDG_CACHE_HOME": os.path.join(tmp, "xdg")}
    if os.environ.get("CKS_SANITIZED") == "1":
        # ASan keeps freed blocks in a quarantine of up to 256 MiB, which would be counted as the
        # tool's own memory; a small quarantine keeps the bound about the tool's buffers
        env["ASAN_OPTIONS"] = os.environ.get("ASAN_OPTIONS", "") + ":quarantine_size_mb=8"
        env["UBSAN_OPTIONS"] = os.environ.get("UBSAN_OPTIONS", "")
    if cache:
        env["CKPTSCOPE_CACHE"] = cache
    else:
        env["CKPTSCOPE_NO_CACHE"] = "1"
    out_path, err_path = os.path.join(tmp, "out.txt"), os.path.join(tmp, "err.txt")
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        p = subprocess.Popen([BIN, *command, repo, "--json", "--quiet"], env=env, stdout=out, stderr=err,
                             stdin=subprocess.DEVNULL)
        _, status, ru = os.wait4(p.pid, 0)
    with open(out_path, errors="replace") as f:
        stdout = f.read()
    with open(err_path, errors="replace") as f:
        stderr = f.read()
    return os.waitstatus_to_exitcode(status), stdout, stderr, ru.ru_maxrss / 1024.0


def hashes_of(stdout):
    try:
        return {t["name"]: t["sha256"] for t in json.loads(stdout)["tensors"]}
    except (ValueError, KeyError, TypeError):
        return None


def main():
    tmp = tempfile.mkdtemp(prefix="cks-stream-mem-")
    try:
        path = os.path.join(tmp, "model.safetensors")
        want, sha = make_file(path)
        store = os.path.join(tmp, "store")
        hubrepo.add_repo(store, "org/stream", {"model.safetensors": {"path": path, "sha256": sha}})
        # the same bytes under a SHA-256 they do not have: the whole-file check must catch it
        hubrepo.add_repo(store, "org/stream-bad", {"model.safetensors": {"path": path, "sha256": "0" * 64}})
        with harness.start(store) as hub:
            for name, cache in (("hash_remote_streams_bounded_no_cache", None),
                                ("hash_remote_streams_bounded_with_cache", os.path.join(tmp, "cache"))):
                rc, out, err, peak = measured_run(hub, tmp, "org/stream", cache)
                got = hashes_of(out)
                if rc != 0 or got != want:
                    report(False, name, "exit %d, hashes %s: %s" % (rc, "match" if got == want else "differ", err[-300:]))
                elif peak > PEAK_BOUND_MIB:
                    report(False, name, "peak RSS %.0f MiB for a %d MiB file (bound %d MiB)"
                           % (peak, N_TENSORS * TENSOR_MIB, PEAK_BOUND_MIB))
                else:
                    report(True, name)
            # the first cached run verified the file whole: the rerun is served from the cache
            hub.clear_log()
            rc, out, err, _ = measured_run(hub, tmp, "org/stream", os.path.join(tmp, "cache"))
            cdn = [e for e in hub.log() if e["server"] == "cdn"]
            report(rc == 0 and hashes_of(out) == want and not cdn, "hash_remote_stream_verified_whole",
                   "exit %d, %d CDN requests on the rerun: %s" % (rc, len(cdn), err[-300:]))
            # verify --full reads each file front to back through the same stream
            rc, out, err, peak = measured_run(hub, tmp, "org/stream", None, ("verify", "--full"))
            matched = re.search(r'"sha256_match":\s*true', out) is not None
            report(rc == 0 and matched and peak <= PEAK_BOUND_MIB, "verify_full_remote_streams_bounded",
                   "exit %d, sha256_match %s, peak RSS %.0f MiB (bound %d): %s"
                   % (rc, matched, peak, PEAK_BOUND_MIB, err[-300:]))
            rc, out, err, _ = measured_run(hub, tmp, "org/stream-bad", None)
            report(rc == EXIT_FORMAT and "SHA-256" in err, "hash_remote_stream_bad_sha_fails",
                   "exit %d (want %d): %s" % (rc, EXIT_FORMAT, err[-300:]))
            # with the disk cache: the windows a writer thread stores while the stream goes on
            # are all in the cache before the file is marked verified (cache verify reads them
            # back), and none of a file that fails its hash stays (the queued ones included)
            cache = os.path.join(tmp, "cache")
            env = dict(os.environ, CKPTSCOPE_CACHE=cache)
            v = subprocess.run([os.environ["CKS_BIN"], "cache", "verify"], env=env, capture_output=True, text=True)
            whole_ok = re.search(r"checked 1 whole file\(s\) against their SHA-256: 0 bad", v.stdout + v.stderr)
            extents_ok = re.search(r"extents \(192\.0 MiB\) and \d+ metadata entries: 0 bad", v.stdout + v.stderr)
            report(v.returncode == 0 and whole_ok is not None and extents_ok is not None,
                   "hash_remote_stream_cache_complete_and_verified",
                   "exit %d: %s" % (v.returncode, (v.stdout + v.stderr)[-400:]))
            bad_cache = os.path.join(tmp, "cache-bad")
            rc, out, err, _ = measured_run(hub, tmp, "org/stream-bad", bad_cache)
            keydir = os.path.join(bad_cache, "files", "00", "s-" + "0" * 64)
            left = [f for f in os.listdir(keydir) if f[:2] in ("x-", "p-")] if os.path.isdir(keydir) else []
            rc2, _, err2, _ = measured_run(hub, tmp, "org/stream-bad", bad_cache)
            report(rc == EXIT_FORMAT and not left and rc2 == EXIT_FORMAT,
                   "hash_remote_stream_bad_sha_leaves_nothing_cached",
                   "exit %d then %d (want %d both), %d extent files left: %s"
                   % (rc, rc2, EXIT_FORMAT, len(left), (err + err2)[-300:]))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return ckstest.exit_code()


if __name__ == "__main__":
    sys.exit(main())
