#!/usr/bin/env python3
"""A program outside the CLI opens SOURCEs through the library alone (issue 17): the workspace
(include/ckptscope/workspace.h) owns its sessions, with no cap (the CLI's registry stopped at
16), reuses a session for a second look at the same SOURCE, and says what failed per SOURCE.
tests/tools/opensource.c is the program; the fake Hub serves the repos."""
import os
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ckstest import BUILD_DIR, ROOT, exit_code, hub_env, report, st_bytes  # noqa: E402

sys.path.insert(0, os.path.join(ROOT, "tests", "fakehub"))
TOOL = os.path.join(BUILD_DIR, "tests", "opensource")
N_REPOS = 20


def run(env, *sources):
    p = subprocess.run([TOOL, *sources], env=env, capture_output=True, text=True, timeout=120)
    return p.returncode, p.stdout.splitlines(), p.stderr


def main():
    if not os.access(TOOL, os.X_OK):
        report("opensource tool built", False, f"no {TOOL}: make builds it with the tests")
        return exit_code()
    import harness
    import hubrepo
    tmp = tempfile.mkdtemp(prefix="cks-workspace-test-")
    hub = None
    try:
        store = os.path.join(tmp, "store")
        tensors = [("w%d" % i, "U8", [4096], bytes([i]) * 4096) for i in range(3)]
        data = st_bytes(tensors)
        config = b'{"model_type": "llama"}'
        for i in range(N_REPOS):
            files = {"model.safetensors": data}
            if i == 0:
                files["config.json"] = config
            hubrepo.add_repo(store, "org/m%d" % i, files)
        local = os.path.join(tmp, "local.safetensors")
        with open(local, "wb") as f:
            f.write(data)
        hub = harness.start(store, state_file=os.path.join(tmp, "hub.json"))
        env = hub_env(hub, tmp, {"CKPTSCOPE_CACHE": os.path.join(tmp, "cache")})
        sources = ["org/m%d" % i for i in range(N_REPOS)] + [local, hub.hub_url + "/org/m0/resolve/main/model.safetensors"]
        rc, out, err = run(env, *sources)
        oks = [line for line in out if line.startswith("OK ")]
        report(f"{len(sources)} SOURCEs open in one workspace (Hub repos, a local file, a URL)",
               rc == 0 and len(oks) == len(sources) and all(line.split()[1] == "3" for line in oks),
               f"exit {rc}: {out[:3]} {err[-300:]}")
        report("local paths need no session, remote ones get one each (no cap of 16)",
               [line.split()[3] for line in oks] == ["1"] * N_REPOS + ["0", "1"]
               and f"SESSIONS {N_REPOS + 1} " in (out[-1] + " "), f"{out[-2:]}")
        report("a second look at a SOURCE reuses its session", "CHECK 1 1" in out, f"{out[-2:]}")
        fetched = int(out[-1].split()[-1]) if out and out[-1].startswith("SESSIONS") else -1
        report("the counters add up over the sessions (21 headers at least)", fetched >= 21 * 64,
               f"bytes fetched {fetched}")
        rc, out, err = run(env, "org/m1", "org/does-not-exist", os.path.join(tmp, "missing.safetensors"))
        errs = [line for line in out if line.startswith("ERR ")]
        report("what failed is said per SOURCE, the rest still opens",
               rc == 1 and out[0].startswith("OK ") and len(errs) == 2 and "RepoNotFound" in errs[0]
               and "NotFound" in errs[1], f"exit {rc}: {out}")

        # the same SOURCEs side by side (cks_workspace_open_all, what compare uses for A and B)
        env_all = dict(env, CKPTSCOPE_CACHE=os.path.join(tmp, "cache-all"))
        rc, out, err = run(env_all, "--all", *sources)
        oks = [line.split() for line in out if line.startswith("OK ")]
        report(f"{len(sources)} SOURCEs open side by side, each as cks_workspace_open opens it",
               rc == 0 and len(oks) == len(sources) and all(x[1] == "3" for x in oks)
               and [x[3] for x in oks] == ["1"] * N_REPOS + ["0", "1"] and "FIRST OK " in out,
               f"exit {rc}: {out[:3]} {err[-300:]}")
        report("side by side: an optional file comes back where it exists, NULL where not",
               len(oks) == len(sources) and oks[0][4] == str(len(config)) and all(x[4] == "-1" for x in oks[1:N_REPOS]),
               f"{[x[4] for x in oks[:4]]}")
        report("side by side: one session per remote SOURCE, counters summed",
               f"SESSIONS {N_REPOS + 1} " in (out[-1] + " ") and int(out[-1].split()[-1]) >= 21 * 64, f"{out[-2:]}")
        rc, out, err = run(env_all, "--all", os.path.join(tmp, "missing.safetensors"), "org/m2", "org/does-not-exist")
        errs = [line for line in out if line.startswith("ERR ")]
        first = [line for line in out if line.startswith("FIRST ")]
        report("side by side: each SOURCE says its own failure, the call returns the first in order",
               rc == 1 and len(errs) == 2 and out[1].startswith("OK ") and "RepoNotFound" in errs[1]
               and first and "RepoNotFound" not in first[0] and "NotFound" in first[0], f"exit {rc}: {out}")
    finally:
        if hub:
            hub.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return exit_code()


if __name__ == "__main__":
    sys.exit(main())
