"""--offline names what is missing: after `ls` (headers only), `hash --offline` and
`compare --offline` fail with the I/O exit code and list, per file, the tensors not cached;
`--verbose` shows what the cache did (a flipped byte dropped and refetched)."""
import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.environ.get("CKS_ROOT", os.getcwd())
BIN = os.environ.get("CKS_BIN", os.path.join(ROOT, "build/ckptscope"))
sys.path.insert(0, os.path.join(ROOT, "tests/fakehub"))
import ckstest  # noqa: E402
from ckstest import report  # noqa: E402

def run(env, *args):
    p = subprocess.run([BIN, *args], env=env, capture_output=True, text=True, timeout=120)
    return p.returncode, p.stdout, p.stderr


def main():
    import harness
    import hubrepo
    tmp = tempfile.mkdtemp(prefix="cks-offline-")
    try:
        fam = os.path.join(tmp, "fam")
        subprocess.run(["/usr/bin/python3", os.path.join(ROOT, "tests/tools/gen_family.py"), fam, "--style", "llama"],
                       check=True, capture_output=True, timeout=120)
        store = os.path.join(tmp, "store")
        for tag in ("base", "finetune"):
            d = os.path.join(fam, "llama", tag)
            hubrepo.add_repo(store, f"org/{tag}", {n: os.path.join(d, n) for n in os.listdir(d)})
        with harness.start(store) as hub:
            env = dict(os.environ, HF_ENDPOINT=hub.hub_url, CKPTSCOPE_CACHE=os.path.join(tmp, "cache"))
            rc, out, err = run(env, "ls", "--quiet", "org/base")
            report("ls caches the headers", rc == 0, err[-300:])
            rc, out, err = run(env, "hash", "--offline", "--quiet", "org/base", "--tensor", "*layers.0.*")
            ok = rc == 4 and "OfflineMiss" in err and "model.layers.0." in err and "not cached" in err
            report("hash --offline names the missing tensors", ok, f"exit {rc}: {err[-600:]}")
            rc, out, err = run(env, "compare", "--offline", "--quiet", "org/base", "org/finetune")
            report("compare --offline fails clearly", rc == 4 and "OfflineMiss" in err, f"exit {rc}: {err[-400:]}")
            rc, out, err = run(env, "hash", "--quiet", "org/base")
            report("online hash fills the cache", rc == 0, err[-300:])
            rc, out2, err = run(env, "hash", "--offline", "--quiet", "org/base")
            report("hash --offline after that: same output", rc == 0 and out2 == out, f"exit {rc}: {err[-300:]}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return ckstest.exit_code()


if __name__ == "__main__":
    sys.exit(main())
