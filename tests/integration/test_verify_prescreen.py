"""The pre-screen of `verify --against` misses no derivative of the calibration corpus (issue 15).

One seed of tests/tools/gen_corpus.py (CKS_PRESCREEN_SEEDS, default "1"; bench/verify runs more),
and the real pairs of bench/verdicts (REAL_PAIRS, when ../shared/realdata is there). For every pair
(A, B): a fingerprint of A, then `verify B --against FP_A --prescreen --json`. Cases:
  - a pair whose truth is derived or identical survives the pre-screen (not `prescreened`), and
    verify's verdict for it is the verdict of a plain `compare FP_A B` (the same inputs, no screen);
  - over the independent pairs, how many the pre-screen cleared is printed (information: the
    pre-screen is not a rule that keeps everything, so the first case can fail).
"""
import json
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ckstest  # noqa: E402

SEEDS = os.environ.get("CKS_PRESCREEN_SEEDS", "1").split(",")
REAL = os.environ.get("CKS_REALDATA", os.path.join(ckstest.ROOT, "../shared/realdata"))
sys.path.insert(0, os.path.join(ckstest.ROOT, "bench", "verdicts"))
import verdicts  # noqa: E402


def one_pair(env, tmp, name, a, b, truth, tally):
    fp = os.path.join(tmp, "fp", name.replace("/", "_") + ".ckfp")
    os.makedirs(os.path.dirname(fp), exist_ok=True)
    rc, _, err = ckstest.run(env, "fingerprint", "--quiet", a, "-o", fp)
    if rc != 0:
        ckstest.report(f"fingerprint {name}", False, f"exit {rc}: {err.strip()[-300:]}")
        return
    rc, doc, err = ckstest.run(env, "verify", "--json", "--quiet", "--prescreen", b, "--against", fp)
    if not doc or not doc.get("provenance"):
        if truth in ("derived", "identical"):
            ckstest.report(f"pre-screen {name} ({truth})", False, f"verify exit {rc}: {err.strip()[-300:]}")
        return
    k = doc["provenance"][0]
    if truth not in ("derived", "identical"):
        tally["independent"] += 1
        tally["cleared"] += bool(k.get("prescreened"))
        return
    ckstest.report(f"pre-screen keeps {name} ({truth})", not k.get("prescreened"), k.get("reason", "")[:300])
    if k.get("prescreened"):
        return
    rc, cdoc, err = ckstest.run(env, "compare", "--json", "--quiet", fp, b)
    if not cdoc:
        ckstest.report(f"verify and compare agree on {name}", False, f"compare exit {rc}: {err.strip()[-300:]}")
        return
    want = cdoc.get("verdict")
    got = k.get("verdict")
    ckstest.report(f"verify and compare agree on {name} ({truth})", got == want,
                   f"verify {got}, compare {want}; {k.get('reason', '')[:200]}")


def main():
    tmp = tempfile.mkdtemp(prefix="cks-prescreen-")
    env = dict(os.environ, CKPTSCOPE_CACHE=os.path.join(tmp, "cache"))
    tally = {"independent": 0, "cleared": 0}
    try:
        for seed in SEEDS:
            out = os.path.join(tmp, f"corpus-{seed}")
            if not ckstest.generate("gen_corpus.py", out, "--seed", seed, timeout=900):
                return 1
            manifest = json.load(open(os.path.join(out, "manifest.json")))
            # under the sanitizers (make test-san: every run several times slower) the generator's
            # quick subset, which keeps a pair of every kind; make test runs them all
            pairs = [p for p in manifest["pairs"] if p.get("quick") or os.environ.get("CKS_SANITIZED") != "1"]
            for p in pairs:
                a = os.path.join(out, manifest["models"][p["a"]]["dir"])
                b = os.path.join(out, manifest["models"][p["b"]]["dir"])
                one_pair(env, tmp, f"seed {seed} {p['name']}", a, b, p["truth"], tally)
            shutil.rmtree(out, ignore_errors=True)
        if os.path.isdir(REAL):
            for a, b, truth, _accept, _why in verdicts.REAL_PAIRS:
                pa, pb = os.path.join(REAL, a), os.path.join(REAL, b)
                if os.path.exists(pa) and os.path.exists(pb):
                    one_pair(env, tmp, f"real {a} vs {os.path.basename(b)}", pa, pb, truth, tally)
        else:
            print(f"SKIP real pairs: {REAL} is absent")
        print(f"# pre-screen cleared {tally['cleared']} of {tally['independent']} pairs not derived")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 1 if ckstest.failures() else 0


if __name__ == "__main__":
    sys.exit(main())
