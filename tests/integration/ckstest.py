"""What the Python integration tests share: where the binary and the tree are, one
"PASS name" / "FAIL name: why" line per case (tests/run.sh counts them), and running the CLI
with its --json output parsed."""
import json
import os
import subprocess

ROOT = os.environ.get("CKS_ROOT", os.getcwd())
BIN = os.environ.get("CKS_BIN", os.path.join(ROOT, "build/ckptscope"))
BUILD_DIR = os.environ.get("CKS_BUILD", os.path.join(ROOT, "build"))
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


# ---- the case runner the fake-Hub tests share (PASS / FAIL / SKIP lines, one per case) ----

# The CLI's exit codes (docs/json.md): what the tests assert on.
EXIT_FORMAT, EXIT_IO, EXIT_NETWORK, EXIT_ACCESS = 3, 4, 5, 6


class Fail(Exception):
    pass


class Skip(Exception):
    pass


def check(cond, why):
    if not cond:
        raise Fail(why)


def status(state, name, why=""):
    """One "PASS name" / "FAIL name: why" / "SKIP name: why" line; FAIL lines are counted."""
    if state == "FAIL":
        _failed[0] += 1
    print("%s %s%s" % (state, name, (": " + why) if why else ""), flush=True)


def run_cases(cases, *args, only=None, prefix="case_", after=None):
    """Run each case(*args): PASS when it returns, SKIP on Skip, FAIL on Fail or any other
    exception (with its last traceback line, so a crash names where it happened; the whole
    traceback goes to stderr). `after()` runs after every case, whatever happened."""
    import sys
    import traceback
    for case in cases:
        name = case.__name__[len(prefix):] if case.__name__.startswith(prefix) else case.__name__
        if only and only not in name:
            continue
        try:
            case(*args)
            status("PASS", name)
        except Skip as e:
            status("SKIP", name, str(e))
        except Fail as e:
            status("FAIL", name, str(e))
        except Exception:
            status("FAIL", name, traceback.format_exc().strip().splitlines()[-1])
            traceback.print_exc(file=sys.stderr)
        finally:
            if after:
                after()


def exit_code():
    return 1 if _failed[0] else 0


def st_bytes(tensors, meta=None, pad=True):
    """A safetensors file from [(name, dtype, shape, data)]: data back to back in the given
    order; the header padded with spaces to 8 bytes as the reference writer does (pad=False
    keeps it unpadded, which readers must accept too)."""
    import struct
    hdr, off = {}, 0
    if meta:
        hdr["__metadata__"] = meta
    for name, dt, shape, data in tensors:
        hdr[name] = {"dtype": dt, "shape": shape, "data_offsets": [off, off + len(data)]}
        off += len(data)
    h = json.dumps(hdr).encode()
    if pad:
        h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + b"".join(t[3] for t in tensors)


def hub_env(hub, home, extra=None):
    """The environment of one CLI run against the fake Hub: nothing from the caller's
    environment but PATH, HOME and the caches in `home`, HF_HOME pointing nowhere (so a
    developer's own Hugging Face cache never answers), short back-offs; `extra` entries
    override, a None value removes the variable."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": home,
           "HF_ENDPOINT": hub.hub_url, "CKPTSCOPE_BACKOFF_BASE": "0.05",
           "XDG_CACHE_HOME": os.path.join(home, "xdg"), "HF_HOME": os.path.join(home, "no-hf")}
    if getattr(hub, "ca_bundle", None):
        env["CKPTSCOPE_CA_BUNDLE"] = hub.ca_bundle
    env.update(extra or {})
    return {k: v for k, v in env.items() if v is not None}
