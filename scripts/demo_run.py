#!/usr/bin/python3
"""make demo: the main job on a fake Hub, with no network and no account.

    /usr/bin/python3 scripts/demo_run.py BUILD_DIR

1. generates the synthetic model families (tests/tools/gen_family.py) once, into cache/demo/models;
2. publishes the demo pairs as repositories of a fake Hub (tests/fakehub) served on 127.0.0.1:
   real HTTP, real range requests, a CDN on a second port;
3. runs `ckptscope compare` on the cases that matter, through the Hub client and the disk cache
   (cache/ckptscope), writing one HTML report per case to cache/demo/reports/;
4. prints one line per case (verdict and why), the report paths, and what came over the wire,
   so a second run can say it was served from the cache; stops the server it started.
"""
import concurrent.futures
import json
import os
import shutil
import subprocess
import sys
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "fakehub"))

# everything under cache/ (git-ignored); CKS_DEMO_HOME moves it, so tests can run the demo in a temp dir
HOME = os.environ.get("CKS_DEMO_HOME") or os.path.join(ROOT, "cache")
DEMO = os.path.join(HOME, "demo")
MODELS = os.path.join(DEMO, "models")
STORE = os.path.join(DEMO, "hub")
REPORTS = os.path.join(DEMO, "reports")
CACHE = os.path.join(HOME, "ckptscope")

# repo ids on the fake Hub: neutral names, the story is in the case titles
REPOS = {
    "base": "lab-a/moe-base",
    "dispute": "lab-b/moe-independent",
    "finetune": "lab-c/moe-base-sft",
    "permuted": "lab-d/moe-base-shuffled",
    "reupload": "mirror/moe-base-reupload",
}
CASES = [
    ("dispute", "dispute", "the January 2026 dispute in miniature: two independent models"),
    ("finetune", "fine-tune", "a true fine-tune of A"),
    ("permuted", "permuted", "that fine-tune with its hidden dimensions permuted and signs flipped"),
    ("reupload", "re-upload", "A's weights renamed and re-sharded"),
]
TTY = sys.stdout.isatty()
COLOURS = {"identical": "34", "derived": "31", "not_derived": "32", "inconclusive": "33"}


def bold(s):
    return "\033[1m%s\033[0m" % s if TTY else s


def paint(verdict):
    text = "%-12s" % verdict
    return "\033[1;%sm%s\033[0m" % (COLOURS.get(verdict, "0"), text) if TTY else text


def human(n):
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return ("%d %s" % (n, unit)) if unit == "B" else ("%.1f %s" % (n, unit))
        n /= 1024.0
    return str(n)


def first_sentence(text):
    for end in (". ", ".\n"):
        i = text.find(end)
        if i > 0:
            return text[:i + 1]
    return text


def ensure_models():
    """Generate the families once; reruns reuse them, so the Hub serves the same bytes."""
    manifest = os.path.join(MODELS, "manifest.json")
    if not os.path.exists(manifest):
        p = subprocess.run(["/usr/bin/python3", os.path.join(ROOT, "tests", "tools", "gen_family.py"), MODELS,
                            "--style", "glm"], capture_output=True, text=True)
        if p.returncode != 0:
            sys.exit("demo: generating the synthetic models failed:\n" + p.stderr)
    with open(manifest) as f:
        return json.load(f)


def ensure_store(manifest):
    """Publish the demo models on the fake Hub once (a rerun must not make new commits)."""
    import hubrepo
    demo = manifest.get("demo") or {}
    wanted = {"base": demo.get("finetune", "glm/finetune").split("/")[0] + "/base"}
    for key in ("dispute", "finetune", "permuted", "reupload"):
        if key not in demo:
            sys.exit("demo: manifest.json has no demo.%s pair" % key)
        wanted[key] = demo[key]
    state = os.path.join(STORE, "state.json")
    manifest = os.path.join(MODELS, "manifest.json")
    if os.path.exists(state) and os.path.getmtime(manifest) > os.path.getmtime(state):
        shutil.rmtree(STORE)  # the models were regenerated: the store's hashes may be stale
    have = set()
    if os.path.exists(state):
        have = set((hubrepo.load_state(STORE).get("repos") or {}).keys())
    for key, model in wanted.items():
        repo = REPOS[key]
        if any(repo in k for k in have):
            continue
        d = os.path.join(MODELS, model)
        files = {n: os.path.join(d, n) for n in sorted(os.listdir(d))}
        hubrepo.add_repo(STORE, repo, files)


def compare(bin_path, hub_url, key):
    out = os.path.join(REPORTS, key + ".html")
    env = dict(os.environ, HF_ENDPOINT=hub_url, CKPTSCOPE_CACHE=CACHE)
    env.pop("HF_TOKEN", None)  # the demo needs no account; a real token must not go to 127.0.0.1
    t0 = time.time()
    p = subprocess.run([bin_path, "compare", REPOS["base"], REPOS[key], "--html", out, "--json", "--quiet"],
                       capture_output=True, text=True, env=env)
    if p.returncode != 0:
        sys.exit("demo: ckptscope compare %s %s failed (exit %d):\n%s" % (REPOS["base"], REPOS[key], p.returncode,
                                                                          p.stderr))
    js = json.loads(p.stdout)
    js["_seconds"] = time.time() - t0
    js["_report"] = out
    return js


def why(key, js):
    """One sentence: for the dispute, the number that misled people next to the one that does not."""
    if key == "dispute":
        t2 = next((t for t in js["tests"] if t["id"] == "T2" and t.get("ran")), None)
        raw = t2.get("raw_cosine", {}).get("value") if t2 and isinstance(t2.get("raw_cosine"), dict) else None
        if t2 and raw is not None and t2.get("p") is not None:
            rest = "no test rejects" if js["verdict"] == "not_derived" else first_sentence(js["reason"]).rstrip(".")
            return ("the norm gains' raw cosine is %.3f, which any two models reach (not evidence); their Pearson is "
                    "%.3f (p = %.2g); %s." % (raw, t2["statistic"], t2["p"], rest))
    return first_sentence(js["reason"])


def main(argv):
    build = argv[1] if len(argv) > 1 else "build"
    bin_path = os.path.join(ROOT, build, "ckptscope")
    if not os.access(bin_path, os.X_OK):
        sys.exit("demo: no binary at %s (run make first)" % bin_path)
    t_start = time.time()
    manifest = ensure_models()
    os.makedirs(REPORTS, exist_ok=True)
    ensure_store(manifest)
    import harness
    with harness.start(STORE, state_file=os.path.join(DEMO, "fakehub.json")) as hub:
        hub.clear_log()
        print(bold("ckptscope demo") + ": a fake Hub on %s (real HTTP and range requests; no network, no "
              "account)." % hub.hub_url.replace("http://", ""))
        print("A = %s; each case compares it with one B:" % REPOS["base"])
        for key, label, title in CASES:
            print("  %-10s B = %-26s %s" % (label, REPOS[key], title))
        print()
        # the four comparisons run at once (the cache is safe for several processes, and a cold
        # run waits mostly on cache writes); lines are printed in the order of CASES
        with concurrent.futures.ThreadPoolExecutor(max_workers=len(CASES)) as pool:
            futures = [pool.submit(compare, bin_path, hub.hub_url, key) for key, _, _ in CASES]
            results = []
            for (key, label, _), fut in zip(CASES, futures):
                js = fut.result()
                results.append((key, label, js))
                print("%-10s %s %s" % (label, paint(js["verdict"]), why(key, js)), flush=True)
        log = hub.log()
    cdn = [e for e in log if e.get("server") == "cdn"]
    cdn_bytes = sum(e.get("bytes_sent", 0) or 0 for e in cdn)
    print("\nreports:")
    for key, _, js in results:
        print("  " + os.path.relpath(js["_report"], os.getcwd()))
    if not cdn:
        print("\nserved from the cache (%s): no tensor bytes came over the wire; %d small metadata requests to "
              "the Hub API." % (os.path.relpath(CACHE, os.getcwd()), len(log)))
    else:
        print("\nfetched %s of tensor data in %d range requests to the CDN (%d requests in all); cached in %s, so a "
              "second run is served from the cache." % (human(cdn_bytes), len(cdn), len(log),
                                                        os.path.relpath(CACHE, os.getcwd())))
    print("demo finished in %.1f s; the fake Hub is stopped." % (time.time() - t_start))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
