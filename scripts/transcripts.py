#!/usr/bin/python3
"""The command transcripts in README.md and docs/*.md, generated from the demo models.

    /usr/bin/python3 scripts/transcripts.py --write [BUILD]   regenerate every transcript in place
    /usr/bin/python3 scripts/transcripts.py --check [BUILD]   regenerate in memory and compare;
                                                              one PASS/FAIL line per transcript
    make transcripts                                          the same as --write

A transcript sits in a page between two markers, and everything between them is rewritten:

    <!-- transcript compare-dispute -->
    ```console
    $ ckptscope compare lab-a/moe-base lab-b/moe-independent
    ...
    ```
    <!-- /transcript -->

Each name is defined in TRANSCRIPTS below: the command, run for real against the demo's
synthetic models served by the fake Hub on 127.0.0.1 (the same models and repository names as
`make demo`, generated in a temporary folder), one after the other, with a fresh cache.
The check ignores only what changes from run to run by nature: the fake Hub's port, commit ids
(the fake Hub mints a new one each time a repository is published), wall times, dates, temporary
paths, the demo's network totals (its four comparisons share one cache concurrently), and in two
transcripts a size that follows from those (VOLATILE_IN).
Everything else (tensor names, hashes, statistics, verdicts, sizes) must match exactly, so a
page cannot drift from what the tool prints; when an output changes on purpose, --write.
"""
import difflib
import os
import re
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "fakehub"))
PAGES = ["README.md"] + sorted("docs/" + n for n in os.listdir(os.path.join(ROOT, "docs")) if n.endswith(".md")) \
    if os.path.isdir(os.path.join(ROOT, "docs")) else ["README.md"]

A, INDEPENDENT, FINETUNE, PERMUTED, REUPLOAD = ("lab-a/moe-base", "lab-b/moe-independent", "lab-c/moe-base-sft",
                                                "lab-d/moe-base-shuffled", "mirror/moe-base-reupload")

# name -> (command line as shown, stream). Commands run in order, in one working folder with one
# cache, so a later one may use what an earlier one made (known/ after fingerprint).
TRANSCRIPTS = {
    "ls": ("ckptscope ls %s --tensor 'model.layers.0.*norm*'" % A, "stdout"),
    "ls-nomatch": ("ckptscope ls %s --tensor '*atention*'" % A, "stderr"),
    "ls-revision": ("ckptscope ls %s@mian" % A, "stderr"),
    "hash": ("ckptscope hash %s --tensor 'model.layers.1.*norm*'" % A, "stdout"),
    "diff-reupload": ("ckptscope diff %s %s --stat" % (A, REUPLOAD), "stdout"),
    "diff-finetune": ("ckptscope diff %s %s --tensor 'model.layers.0.*'" % (A, FINETUNE), "stdout"),
    "fetch": ("ckptscope fetch %s --tensor 'model.norm.weight' -o norm.safetensors" % A, "both"),
    "compare-dispute": ("ckptscope compare %s %s" % (A, INDEPENDENT), "stdout"),
    "compare-permuted": ("ckptscope compare %s %s --tests T2,T4" % (A, PERMUTED), "stdout"),
    "fingerprint": ("ckptscope fingerprint %s -o moe-base.ckfp" % A, "stdout"),
    "verify-against": ("ckptscope verify %s --against moe-base.ckfp" % FINETUNE, "stdout"),
    "verify-full": ("ckptscope verify %s --full" % A, "stdout"),
    "cache-ls": ("ckptscope cache ls", "stdout"),
    "cache-rm": ("ckptscope cache rm %s" % REUPLOAD, "stdout"),
    "json-error": ("ckptscope hash %s --tensor nomatch --json" % A, "stdout"),
}

MARK = re.compile(r"(<!-- transcript ([a-z0-9-]+) -->\n)(.*?)(<!-- /transcript -->)", re.S)

# What changes from run to run by nature; everything else must match.
VOLATILE = [
    (re.compile(r"127\.0\.0\.1:\d+"), "127.0.0.1:PORT"),
    (re.compile(r"\b[0-9a-f]{40}\b"), "<commit>"),
    (re.compile(r"@[0-9a-f]{12}\b"), "@<commit>"),
    (re.compile(r"\b\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"), "<date>"),
    (re.compile(r"\bin \d+(\.\d+)? s\b"), "in <time> s"),
    (re.compile(r"/tmp/[\w./-]+"), "<tmp>"),
    (re.compile(r"fetched [\d.]+ \w+ of tensor data in \d+ range requests to the CDN \(\d+ requests in all\)"),
     "fetched <demo network totals>"),
    (re.compile(r"served from the cache \(([^)]*)\): no tensor bytes came over the wire; \d+"),
     r"served from the cache (\1): no tensor bytes came over the wire; <n>"),
]


# Volatile in one transcript only: a fingerprint stores the commit (a new one per publication),
# so its compressed size moves by a few bytes; bytes on disk depend on how the run's ranges were
# split into extents (timing), while what they cover (LOGICAL) does not.
VOLATILE_IN = {
    "fingerprint": [(re.compile(r"^(\S+\.ckfp): [\d.]+ \w+ fingerprint", re.M), r"\1: <size> fingerprint")],
    "cache-ls": [(re.compile(r"^(\S+\s+\S+\s+\d+\s+)[\d.]+ \w+", re.M), r"\1<on disk>"),
                 (re.compile(r", [\d.]+ \w+ on disk$", re.M), ", <size> on disk")],
}


def normalise(text, name=None):
    for pattern, repl in VOLATILE + VOLATILE_IN.get(name, []):
        text = pattern.sub(repl, text)
    return "\n".join(line.rstrip() for line in text.splitlines())


def block(command, output):
    return "```console\n$ %s\n%s```\n" % (command, output if output.endswith("\n") or not output else output + "\n")


class Workspace:
    """The demo's models on a fake Hub, a working folder and a cache, for one run of every transcript."""

    def __init__(self, build):
        self.bin = os.path.join(ROOT, build, "ckptscope")
        if not os.access(self.bin, os.X_OK):
            sys.exit("transcripts: no binary at %s (run make first)" % self.bin)
        self.tmp = tempfile.mkdtemp(prefix="cks-transcripts-")
        self.work = os.path.join(self.tmp, "work")
        os.makedirs(self.work)
        self.hub = None

    def demo(self):
        """`make demo` itself, run in the working folder so its paths read as in a checkout."""
        env = dict(os.environ, CKS_DEMO_HOME=os.path.join(self.work, "cache"))
        env.pop("HF_TOKEN", None)
        p = subprocess.run(["/usr/bin/python3", os.path.join(ROOT, "scripts", "demo_run.py"), os.path.dirname(self.bin)],
                           cwd=self.work, env=env, capture_output=True, text=True, timeout=900)
        if p.returncode != 0:
            raise RuntimeError("make demo failed:\n" + p.stderr[-2000:])
        return p.stdout

    def start(self):
        import harness
        store = os.path.join(self.work, "cache", "demo", "hub")
        self.hub_ctx = harness.start(store)
        self.hub = self.hub_ctx.__enter__()
        self.env = dict(os.environ, HF_ENDPOINT=self.hub.hub_url, CKPTSCOPE_CACHE="cache/ckptscope-docs",
                        HOME=self.tmp, HF_HOME=os.path.join(self.tmp, "no-hf"))
        for k in ("HF_TOKEN", "HF_HUB_OFFLINE", "CKPTSCOPE_NO_CACHE", "XDG_CACHE_HOME"):
            self.env.pop(k, None)

    def run(self, command, stream):
        argv = [self.bin] + shlex_split(command)[1:]
        p = subprocess.run(argv, cwd=self.work, env=self.env, capture_output=True, text=True, timeout=900)
        out = {"stdout": p.stdout, "stderr": p.stderr, "both": p.stdout + p.stderr}[stream]
        if p.returncode != 0:
            if stream == "stdout" and p.stderr not in out:
                out += p.stderr  # a failing command shows why
            out += "(exit status %d)\n" % p.returncode
        return out

    def close(self):
        if self.hub:
            self.hub_ctx.__exit__(None, None, None)
        shutil.rmtree(self.tmp, ignore_errors=True)


def shlex_split(s):
    import shlex
    return shlex.split(s)


def generate(build):
    """name -> the block's new text."""
    ws = Workspace(build)
    blocks = {}
    try:
        blocks["demo"] = block("make demo", ws.demo())
        ws.start()
        for name, (command, stream) in TRANSCRIPTS.items():
            blocks[name] = block(command, ws.run(command, stream))
    finally:
        ws.close()
    return blocks


def pages():
    for rel in PAGES:
        path = os.path.join(ROOT, rel)
        with open(path) as f:
            yield rel, path, f.read()


def write(build):
    blocks = generate(build)
    used = set()
    for rel, path, text in pages():
        def repl(m):
            name = m.group(2)
            if name not in blocks:
                raise SystemExit("%s: unknown transcript %r (define it in scripts/transcripts.py)" % (rel, name))
            used.add(name)
            if normalise(blocks[name], name) == normalise(m.group(3), name):
                return m.group(0)  # only ports, commits, times changed: keep the page as it is
            return m.group(1) + blocks[name] + m.group(4)
        new = MARK.sub(repl, text)
        if new != text:
            with open(path, "w") as f:
                f.write(new)
            print("rewrote %s" % rel)
    for name in sorted(set(blocks) - used):
        print("note: transcript %s is not used by any page" % name)
    return 0


def check(build, report=None):
    """One PASS/FAIL line per transcript found in the pages; returns the number of failures."""
    def say(name, ok, why=""):
        if report:
            report(name, ok, why)
        else:
            print("PASS %s" % name if ok else "FAIL %s: %s" % (name, why))
    blocks = generate(build)
    failed = 0
    for rel, path, text in pages():
        for m in MARK.finditer(text):
            name = m.group(2)
            label = "transcript %s in %s matches what the tool prints" % (name, rel)
            if name not in blocks:
                say(label, False, "unknown transcript")
                failed += 1
                continue
            want, have = normalise(blocks[name], name), normalise(m.group(3), name)
            if want == have:
                say(label, True)
            else:
                diff = " | ".join(line for line in difflib.unified_diff(have.splitlines(), want.splitlines(), "page",
                                                                          "tool", n=0, lineterm="")
                                  if not line.startswith(("---", "+++", "@@")))
                say(label, False, "regenerate with `make transcripts`; differs: " + diff[:600])
                failed += 1
    return failed


def main(argv):
    if len(argv) < 2 or argv[1] not in ("--write", "--check"):
        sys.exit(__doc__)
    build = argv[2] if len(argv) > 2 else "build"
    if argv[1] == "--write":
        return write(build)
    return 1 if check(build) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
