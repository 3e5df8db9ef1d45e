"""The command line on local files: exit codes, --help, --json contracts, diff categories.

Files are written here by a few lines of independent Python (json + struct), and by the
project's fixture writer (build/tests/mkfixtures) for the one-corrupt-file-per-rule table.
"""
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import ckstest  # noqa: E402
from ckstest import report  # noqa: E402

BIN = os.environ.get("CKS_BIN", "build/ckptscope")
BUILD = os.environ.get("CKS_BUILD", "build")

def run(*args):
    p = subprocess.run([BIN, *args], capture_output=True, text=True, timeout=60)
    return p.returncode, p.stdout, p.stderr


def write_st(path, tensors, metadata=None):
    """tensors: list of (name, dtype, shape, raw bytes)."""
    header, offset, data = {}, 0, b""
    if metadata:
        header["__metadata__"] = metadata
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
        data += raw
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + data)


def f32(*values):
    return struct.pack(f"<{len(values)}f", *values)


EXPECTED_RULES = {
    "bad_header_too_small": "HeaderTooSmall", "bad_header_too_large": "HeaderTooLarge",
    "bad_invalid_header_length": "InvalidHeaderLength", "bad_not_utf8": "InvalidHeader",
    "bad_not_json": "InvalidHeaderDeserialization", "bad_unknown_dtype": "InvalidHeaderDeserialization",
    "bad_duplicate_tensor": "DuplicateKey", "bad_offset_gap": "InvalidOffset",
    "bad_validation_overflow": "ValidationOverflow", "bad_misaligned_slice": "MisalignedSlice",
    "bad_tensor_invalid_info": "TensorInvalidInfo", "bad_trailing_bytes": "MetadataIncompleteBuffer",
    "bad_truncated": "Truncated", "bad_lfs_pointer": "GitLfsPointer", "bad_html_page": "HtmlPage",
    "bad_text_file": "TextFile",
}


COMMANDS = ("ls", "hash", "diff", "compare", "fingerprint", "fingerprint gather", "verify", "fetch", "cache")


def option_cases(a, tmp):
    """One option parser for every command (issue 17): --help, suggestions, and numbers
    checked against their range with a usage error (exit 2) naming the option and the range."""
    for cmd in COMMANDS:
        words = cmd.split()
        rc, out, err = run(*words, "--help")
        report(f"{cmd} --help exits 0 with its usage", rc == 0 and out.startswith("usage: ckptscope " + cmd) and
               err == "", f"exit {rc}: {out[:80]!r} {err[:200]!r}")
        rc, out, err = run(*words, "--jsno", "x")
        report(f"{cmd}: a mistyped common option is named with the nearest", rc == 2 and
               "unknown option --jsno (did you mean --json?)" in err and out == "", f"exit {rc}: {err[:200]!r}")
        rc, out, err = run(*words, "--json", "--cache-max", "lots", "x")
        doc = json.loads(out) if out.strip().startswith("{") else {}
        report(f"{cmd} --cache-max lots: a usage error, as JSON too", rc == 2 and "--cache-max" in err and
               doc.get("error", {}).get("rule") == "UsageError", f"exit {rc}: {err[:200]!r} {out[:200]!r}")
    out_file = os.path.join(tmp, "never-written.ckfp")
    refused = [
        # (what, argv, the words the message must hold)
        ("compare --budget 1", ["compare", "--budget", "1", a, a], ["--budget", "at least 4.0 KiB", '"1"']),
        ("fingerprint --budget 1 (accepted before)", ["fingerprint", "--budget", "1", a, "-o", out_file],
         ["--budget", "at least 4.0 KiB"]),
        ("compare --budget 4095", ["compare", "--budget", "4095", a, a], ["--budget", "at least 4.0 KiB"]),
        ("compare --seed -1 (wrapped to 2^64-1 before)", ["compare", "--seed", "-1", a, a],
         ["--seed", "from 1 to 18446744073709551615", '"-1"']),
        ("fingerprint --seed -1", ["fingerprint", "--seed", "-1", a, "-o", out_file], ["--seed", "from 1 to"]),
        ("compare --seed 0", ["compare", "--seed", "0", a, a], ["--seed", "from 1 to"]),
        ("compare --seed 2^64", ["compare", "--seed", "18446744073709551616", a, a], ["--seed", "from 1 to"]),
        ("compare --seed ' 5'", ["compare", "--seed", " 5", a, a], ["--seed"]),
        ("fingerprint -j 2x (atoi read 2 before)", ["fingerprint", "-j", "2x", "--from", a, tmp],
         ["-j", "from 1 to 256", '"2x"']),
        ("fingerprint -j 0", ["fingerprint", "-j", "0", "--from", a, tmp], ["-j", "from 1 to 256"]),
        ("fingerprint -j 257", ["fingerprint", "-j", "257", "--from", a, tmp], ["-j", "from 1 to 256"]),
        ("fingerprint -j without a value", ["fingerprint", "--from", a, tmp, "-j"], ["-j needs a value"]),
        ("fingerprint --max-size 1K", ["fingerprint", "--max-size", "1K", a, "-o", out_file],
         ["--max-size", "at least 4.0 KiB"]),
        ("fingerprint --format-version 99", ["fingerprint", "--format-version", "99", a, "-o", out_file],
         ["--format-version", "from 1 to"]),
        ("compare --alpha 0.5", ["compare", "--alpha", "0.5", a, a], ["--alpha", "between 0 and 0.5"]),
        ("compare --alpha nan", ["compare", "--alpha", "nan", a, a], ["--alpha", "between 0 and 0.5"]),
        ("compare --permutations 18", ["compare", "--permutations", "18", a, a],
         ["--permutations", "from 19 to 1000000"]),
        ("compare --permutations 4294967297 (past 32 bits)", ["compare", "--permutations", "4294967297", a, a],
         ["--permutations", "from 19 to 1000000"]),
        ("diff --ask-above much", ["diff", "--ask-above", "much", a, a], ["--ask-above", '"much"']),
        ("cache --max -5", ["cache", "--max", "-5", "du"], ["--max", '"-5"']),
        ("fingerprint gather --lst (unknown, suggested)", ["fingerprint", "gather", "--lst", "x", tmp],
         ["unknown option --lst (did you mean --list?)"]),
    ]
    for what, argv, words in refused:
        rc, out, err = run(*argv)
        first = err.splitlines()[0] if err else ""
        report(f"refused with a usage error: {what}", rc == 2 and all(w in first for w in words) and out == "",
               f"exit {rc}: {err[:300]!r}")
    report("a refused value wrote nothing", not os.path.exists(out_file), out_file)
    # the values at the ends of each range are taken: the command gets past its options
    accepted = [
        ("compare --budget 4K --seed 1 --permutations 19 --alpha 0.001",
         ["compare", "--budget", "4K", "--seed", "1", "--permutations", "19", "--alpha", "0.001", a, a]),
        ("compare --seed 2^64-1 --permutations 1000000",
         ["compare", "--seed", "18446744073709551615", "--permutations", "1000000", "--tests", "T1", a, a]),
        ("fingerprint --budget 4K --seed 7 --format-version 1", ["fingerprint", "--budget", "4K", "--seed", "7",
                                                                  "--format-version", "1", a, "-o",
                                                                  os.path.join(tmp, "ok.ckfp")]),
    ]
    for what, argv in accepted:
        rc, out, err = run(*argv)
        report(f"accepted at the ends of the range: {what}", rc != 2 and "wants" not in err, f"exit {rc}: {err[:300]!r}")


def huge_pages(a, b, tmp):
    """compare, fingerprint and verify start themselves again once with glibc.malloc.hugetlb=1
    when the kernel gives huge pages on request (src/cli/main.c); other commands, a user's own
    tunable and CKPTSCOPE_NO_HUGE_PAGES never; either way the answer is the same."""
    strace = shutil.which("strace")
    mode = ""
    try:
        mode = open("/sys/kernel/mm/transparent_hugepage/enabled").read()
    except OSError:
        pass
    if os.environ.get("CKS_SANITIZED") == "1":
        # LeakSanitizer refuses to run under ptrace; a sanitized build never restarts anyway
        ckstest.status("SKIP", "restart with huge pages", "the sanitized build cannot run under strace")
        return
    if not strace or subprocess.run([strace, "-o", os.devnull, "true"], capture_output=True).returncode != 0:
        ckstest.status("SKIP", "restart with huge pages", "strace is missing or cannot trace here")
        return
    base = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "CKPTSCOPE_NO_HUGE_PAGES")}

    def execs(args, **env):
        log = os.path.join(tmp, "execve.log")
        p = subprocess.run([strace, "-f", "-qq", "-v", "-s", "256", "-e", "trace=execve", "-o", log, BIN, *args],
                           capture_output=True, text=True, timeout=120, env=dict(base, **env))
        calls = [x for x in open(log).read().splitlines() if "execve(" in x and "= 0" in x]
        return p.returncode, p.stdout, calls

    restarts = "[madvise]" in mode
    rc, out_thp, calls = execs(["compare", a, b, "--json", "--quiet"])
    report("compare restarts once with huge pages" if restarts else "compare runs once (no [madvise] THP here)",
           rc in (0, 1) and len(calls) == (2 if restarts else 1) and
           (not restarts or "GLIBC_TUNABLES=glibc.malloc.hugetlb=1" in calls[1]),
           f"exit {rc}, THP {mode.strip()!r}, execve {[c[:200] for c in calls]}")
    rc2, out_plain, calls = execs(["compare", a, b, "--json", "--quiet"], CKPTSCOPE_NO_HUGE_PAGES="1")
    report("CKPTSCOPE_NO_HUGE_PAGES: no restart", len(calls) == 1, f"execve {calls}")
    strip = lambda o: {k: v for k, v in json.loads(o or "{}").items() if k not in ("seconds", "transfer")}
    report("huge pages or not, the same answer", rc2 == rc and strip(out_plain) == strip(out_thp) and strip(out_thp),
           f"{out_plain[:200]} | {out_thp[:200]}")
    rc, _, calls = execs(["compare", a, b, "--json", "--quiet"], GLIBC_TUNABLES="glibc.malloc.hugetlb=0")
    report("a user's own hugetlb tunable is left alone", len(calls) == 1, f"execve {calls}")
    rc, _, calls = execs(["ls", a])
    report("ls never restarts", rc == 0 and len(calls) == 1, f"execve {calls}")


def main():
    tmp = tempfile.mkdtemp(prefix="cks-cli-")
    try:
        fx = os.path.join(tmp, "fx")
        subprocess.run([os.path.join(BUILD, "tests/mkfixtures"), fx], check=True)
        names = sorted(n[:-12] for n in os.listdir(fx) if n.endswith(".safetensors"))
        report("fixtures written", len(names) >= 30, f"only {len(names)} fixtures")
        for stem in names:
            rc, out, err = run("ls", os.path.join(fx, stem + ".safetensors"))
            if stem.startswith("valid_"):
                report(f"ls {stem}", rc == 0, f"exit {rc}: {err.strip()}")
            else:
                rule = EXPECTED_RULES.get(stem)
                ok = rc == 3 and err.startswith("ckptscope ls: ") and (rule is None or rule in err)
                ok = ok and "Traceback" not in err and out == ""
                report(f"reject {stem}", ok, f"exit {rc}, stderr {err.strip()!r}")
        rc, out, err = run("ls", "--json", os.path.join(fx, "sharded"))
        doc = json.loads(out) if rc == 0 else {}
        ok = rc == 0 and list(doc)[0] == "schema_version" and len(doc["tensors"]) == 4
        ok = ok and all(set(t) >= {"name", "dtype", "shape", "data_offsets", "file"} for t in doc["tensors"])
        report("ls --json sharded contract", ok, f"exit {rc}: {err.strip()}")
        rc, out, err = run("ls", os.path.join(fx, "sharded-mismatch"))
        report("sharded index mismatch rejected", rc == 3 and "IndexMismatch" in err, f"exit {rc}: {err.strip()}")

        # usage, help, missing files
        for cmd in ("ls", "hash", "diff"):
            rc, out, err = run(cmd, "--help")
            report(f"{cmd} --help", rc == 0 and "usage: ckptscope " + cmd in out and "example" in out, f"exit {rc}")
            rc, out, err = run(cmd, "--no-such-option", "x")
            report(f"{cmd} bad option exits 2", rc == 2, f"exit {rc}")
        rc, out, err = run("frobnicate")
        report("unknown command exits 2", rc == 2 and "unknown command" in err, f"exit {rc}")
        rc, out, err = run("ls", os.path.join(tmp, "absent.safetensors"))
        report("missing file exits 6", rc == 6 and "absent.safetensors" in err, f"exit {rc}: {err.strip()}")
        rc, out, err = run("ls", tmp + "/fx/sharded/model.safetensors.index.json", "--tensor", "*norm*", "--json")
        doc = json.loads(out) if rc == 0 else {"tensors": []}
        report("ls --tensor filters", sorted(t["name"] for t in doc["tensors"]) ==
               ["model.layers.0.input_layernorm.weight", "model.norm.weight"], out[:200])

        # diff categories, checked against what was written
        a, b = os.path.join(tmp, "a.safetensors"), os.path.join(tmp, "b.safetensors")
        write_st(a, [("same", "F32", [2], f32(1, 2)), ("changed", "F32", [2], f32(1, 2)),
                     ("old_name", "F32", [3], f32(7, 8, 9)), ("reshaped", "F32", [2, 2], f32(1, 2, 3, 4)),
                     ("gone", "F32", [1], f32(5))])
        write_st(b, [("same", "F32", [2], f32(1, 2)), ("changed", "F32", [2], f32(1, 2.5)),
                     ("new_name", "F32", [3], f32(7, 8, 9)), ("reshaped", "F32", [4], f32(1, 2, 3, 4)),
                     ("fresh", "F32", [1], f32(6))])
        rc, out, err = run("diff", "--json", a, b)
        doc = json.loads(out) if out else {}
        ok = rc == 1 and list(doc)[0] == "schema_version" and doc.get("identical") == ["same"]
        ok = ok and doc["changed"] == ["changed"] and doc["added"] == ["fresh"] and doc["removed"] == ["gone"]
        ok = ok and doc["renamed"] == [{"from": "old_name", "to": "new_name", "sha256": doc["renamed"][0]["sha256"]}]
        ok = ok and [r["name"] for r in doc["reshaped"]] == ["reshaped"] and doc["same_contents"] is False
        report("diff categories", ok, f"exit {rc}: {out[:400]}")
        # a copy stored under other names and in another order is the same contents: exit 0
        c = os.path.join(tmp, "c.safetensors")
        write_st(c, [("gone", "F32", [1], f32(5)), ("x.changed", "F32", [2], f32(1, 2)),
                     ("x.same", "F32", [2], f32(1, 2)), ("reshaped", "F32", [2, 2], f32(1, 2, 3, 4)),
                     ("old_name", "F32", [3], f32(7, 8, 9))])
        rc, out, err = run("diff", "--json", a, c)
        doc = json.loads(out) if out else {}
        report("diff renamed-only copy exits 0", rc == 0 and doc.get("same_contents") is True and
               len(doc["renamed"]) == 2, f"exit {rc}: {out[:300]}")
        rc, out, err = run("diff", a, a)
        report("diff identical exits 0", rc == 0 and "5 identical" in out, f"exit {rc}: {out}")
        rc, out, err = run("hash", a, "--tensor", "nomatch*")
        report("hash --tensor with no match fails clearly", rc == 6 and "no tensor matches" in err, f"exit {rc}")
        option_cases(a, tmp)
        huge_pages(a, c, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return ckstest.exit_code()


if __name__ == "__main__":
    sys.exit(main())
