"""What the Python integration tests share: where the binary and the tree are, one
"PASS name" / "FAIL name: why" line per case (tests/run.sh counts them), and running the CLI
with its --json output parsed."""
import json
import os
import subprocess

ROOT = os.environ.get("CKS_ROOT", os.getcwd())
BIN = os.environ.get("CKS_BIN", os.path.join(ROOT, "build/ckptscope"))
_failed = [0]


def report(name, ok, why=""):
    if ok:
        print(f"PASS {name}")
    else:
        _failed[0] += 1
        print(f"FAIL {name}: {why}")


def failures():
    return _failed[0]


def run(env, *args, timeout=300):
    """(exit code, the --json document or None, stderr) of one CLI run."""
    p = subprocess.run([BIN, *args], env=env, capture_output=True, text=True, timeout=timeout)
    doc = None
    if "--json" in args and p.stdout.strip():
        try:
            doc = json.loads(p.stdout)
        except ValueError:
            doc = None
    return p.returncode, doc, p.stderr


def generate(tool, out, *args, timeout=None):
    """Run a generator of tests/tools into out; False, with a FAIL line, when it fails."""
    p = subprocess.run(["/usr/bin/python3", os.path.join(ROOT, "tests", "tools", tool), out, *args],
                       capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        report(f"generate {tool}", False, p.stderr[-500:])
    return p.returncode == 0


def tests_by_id(doc):
    return {t["id"]: t for t in doc["tests"]} if doc else {}
