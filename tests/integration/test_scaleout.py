"""Scale-out without a cluster (issue 18): shares, idempotent jobs, gather, and the other recipes.

Checked against the fake Hub and the dozen repositories of scaleout_hub.py:
  - shares: for --shard K/N, Slurm array variables (ids from 0, from 1, in steps) and a Kubernetes
    index, the sources each share plans (--plan) are exactly those with i mod N == share (computed
    here), so every source lands in exactly one share; misconfigured schedulers are usage errors;
  - jobs are idempotent: a second run skips every source and leaves the files untouched; a
    truncated file or a fingerprint of another source under a source's name is made again;
  - three processes fingerprinting the same list at once into one fresh cache all succeed,
    write the same bytes as a lone run, and leave a cache that verifies clean;
  - gather reports each failure kind (missing with the temporary of a stopped job, truncated,
    not_a_fingerprint, wrong_version, wrong_source, duplicate_differing_commits), drops identical
    copies, gives the same bytes whatever the input order or when re-gathering a library, and
    verify --against reads the library (and still a plain folder); a damaged member is refused;
  - the GNU parallel line and the Kubernetes manifests of docs/scale-out.md, run as written (the
    manifests' commands run locally once per index), give the same library byte for byte; the
    doc holds the Slurm scripts verbatim.
"""
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time

from ckstest import BIN, ROOT, failures, report, run
import scaleout_hub

sys.path.insert(0, os.path.join(ROOT, "tests/fakehub"))
import harness  # noqa: E402
import hubrepo  # noqa: E402

DOC = os.path.join(ROOT, "docs", "scale-out.md")
LIST = scaleout_hub.LIST


def name_of(src):
    return src.replace("/", "--") + ".ckfp"


def plan(env, lst, *args):
    rc, doc, err = run(env, "fingerprint", "--from", lst, "--plan", "--json", *args, "/nonexistent-out")
    return rc, doc, err


def shares(tmp, env, lst):
    clean = {k: v for k, v in env.items() if not k.startswith(("SLURM_", "JOB_COMPLETION", "CKPTSCOPE_SHARD"))}
    bad = []
    for n in (1, 3, 4, 5, 12, 13):
        seen = []
        for k in range(n):
            expect = [s for i, s in enumerate(LIST) if i % n == k]
            variants = [("--shard", dict(clean), ("--shard", "%d/%d" % (k + 1, n))),
                        ("slurm from 0", dict(clean, SLURM_ARRAY_TASK_ID=str(k), SLURM_ARRAY_TASK_COUNT=str(n),
                                              SLURM_ARRAY_TASK_MIN="0", SLURM_ARRAY_TASK_STEP="1"), ()),
                        ("slurm from 1 step 3", dict(clean, SLURM_ARRAY_TASK_ID=str(1 + 3 * k),
                                                     SLURM_ARRAY_TASK_COUNT=str(n), SLURM_ARRAY_TASK_MIN="1",
                                                     SLURM_ARRAY_TASK_STEP="3"), ()),
                        ("k8s --shard-count", dict(clean, JOB_COMPLETION_INDEX=str(k)), ("--shard-count", str(n))),
                        ("k8s CKPTSCOPE_SHARD_COUNT", dict(clean, JOB_COMPLETION_INDEX=str(k),
                                                           CKPTSCOPE_SHARD_COUNT=str(n)), ()),
                        ("--shard beats the environment", dict(clean, SLURM_ARRAY_TASK_ID="0",
                                                               SLURM_ARRAY_TASK_COUNT="2"),
                         ("--shard", "%d/%d" % (k + 1, n)))]
            for what, e, args in variants:
                rc, doc, err = plan(e, lst, *args)
                got = [i["source"]["spec"] for i in doc["items"]] if doc else None
                if rc != 0 or got != expect or doc["share"]["index"] != k + 1 or doc["share"]["count"] != n:
                    bad.append("%s %d/%d: rc %d got %s want %s %s" % (what, k + 1, n, rc, got, expect, err[-200:]))
            seen += expect
        if sorted(seen) != sorted(LIST):
            bad.append("N=%d: the shares do not cover the list once" % n)
    report("every source in exactly one share: i mod N, from --shard, Slurm and Kubernetes", not bad,
           "; ".join(bad[:3]))
    rc, doc, _ = plan(clean, lst)
    report("outside a scheduler: the whole list", rc == 0 and doc and len(doc["items"]) == len(LIST), str(rc))
    errors = [("JOB_COMPLETION_INDEX without a count", dict(clean, JOB_COMPLETION_INDEX="0"), ()),
              ("an index at the count", dict(clean, JOB_COMPLETION_INDEX="4"), ("--shard-count", "4")),
              ("a Slurm task beyond the array", dict(clean, SLURM_ARRAY_TASK_ID="4", SLURM_ARRAY_TASK_COUNT="4",
                                                     SLURM_ARRAY_TASK_MIN="0"), ()),
              ("a Slurm task off the step", dict(clean, SLURM_ARRAY_TASK_ID="2", SLURM_ARRAY_TASK_COUNT="4",
                                                 SLURM_ARRAY_TASK_MIN="0", SLURM_ARRAY_TASK_STEP="3"), ()),
              ("--shard-count unlike the Slurm array", dict(clean, SLURM_ARRAY_TASK_ID="0",
                                                            SLURM_ARRAY_TASK_COUNT="4"), ("--shard-count", "3")),
              ("--shard-count outside Kubernetes", dict(clean), ("--shard-count", "3")),
              ("--shard 0/3", dict(clean), ("--shard", "0/3")),
              ("--shard 4/3", dict(clean), ("--shard", "4/3")),
              ("--shard x", dict(clean), ("--shard", "x"))]
    bad = []
    for what, e, args in errors:
        rc, _, err = plan(e, lst, *args)
        if rc != 2 or "fingerprint" not in err or len(err.strip()) < 30:
            bad.append("%s: exit %d %s" % (what, rc, err.strip()[:150]))
    report("a misconfigured share is a usage error (exit 2) that says what to do", not bad, "; ".join(bad))


def run_list(env, lst, out, *args):
    return run(env, "fingerprint", "--from", lst, "--json", *args, out)


def idempotent(tmp, env, lst):
    out = os.path.join(tmp, "known")
    rc, doc, err = run_list(env, lst, out, "-j", "2")
    report("fingerprint --from: every source made", rc == 0 and doc and doc["made"] == len(LIST), err[-300:])
    stamp = {n: (os.stat(os.path.join(out, n)).st_mtime_ns, open(os.path.join(out, n), "rb").read())
             for n in os.listdir(out)}
    rc, doc, err = run_list(env, lst, out, "-j", "2")
    same = all((os.stat(os.path.join(out, n)).st_mtime_ns, open(os.path.join(out, n), "rb").read()) == v
               for n, v in stamp.items())
    report("the same run again skips every source and touches no file",
           rc == 0 and doc and doc["skipped"] == len(LIST) and doc["made"] == 0 and same, err[-300:])
    victim = os.path.join(out, name_of(LIST[2]))
    with open(victim, "r+b") as f:
        f.truncate(os.path.getsize(victim) // 2)
    shutil.copy(os.path.join(out, name_of(LIST[3])), os.path.join(out, name_of(LIST[4])))
    rc, doc, err = run_list(env, lst, out, "--plan")
    st = {i["source"]["spec"]: i for i in doc["items"]} if doc else {}
    report("--plan: a truncated file and another source's fingerprint are to be remade",
           rc == 0 and st[LIST[2]]["status"] == "to_remake" and "not a valid fingerprint" in st[LIST[2]]["why"] and
           st[LIST[4]]["status"] == "to_remake" and LIST[3] in st[LIST[4]]["why"] and
           sum(i["status"] == "done" for i in st.values()) == len(LIST) - 2, json.dumps(doc)[:500])
    rc, doc, err = run_list(env, lst, out)
    made = sorted(i["source"]["spec"] for i in doc["items"] if i["status"] == "made") if doc else None
    report("the next run makes exactly those two again", rc == 0 and made == sorted([LIST[2], LIST[4]]),
           "%s %s" % (made, err[-300:]))
    report("and they are the same bytes as before", all(open(os.path.join(out, n), "rb").read() == v[1]
                                                        for n, v in stamp.items()), "")
    return out


def stopped_job(tmp, env, hub):
    """A job of `fingerprint --from` ended by SIGTERM stops its run: a scheduler that signals
    process by process (Slurm's proctrack/linuxproc) may reach the job before the run, and a
    source started in between would run on unsignalled. The first source's requests are held,
    its job is sent SIGTERM, the hold is lifted: nothing after it may start."""
    import signal
    sub = scaleout_hub.write_list(os.path.join(tmp, "stop.txt"), LIST[:3])
    out = os.path.join(tmp, "stopped")
    e = dict(env, CKPTSCOPE_CACHE=os.path.join(tmp, "c-stop"))
    hub.faults([{"server": "hub", "match": LIST[0], "kind": "delay", "seconds": 30.0, "count": -1}])
    p = subprocess.Popen([BIN, "fingerprint", "--from", sub, "-j", "1", "--json", out], env=e,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    child = None
    deadline = time.time() + 60
    while time.time() < deadline and child is None:
        held = any(f.get("taken", 0) > 0 for f in hub.armed_faults())
        try:
            with open("/proc/%d/task/%d/children" % (p.pid, p.pid)) as f:
                kids = [int(x) for x in f.read().split()]
        except OSError:
            kids = []
        if held and kids:
            child = kids[0]
        else:
            time.sleep(0.05)
    report("the first source's job is fetching (held by the fake Hub)", child is not None, "")
    if child is not None:
        os.kill(child, signal.SIGTERM)
    hub.clear_faults()  # a source started now would finish at once
    o, err = p.communicate(timeout=120)
    try:
        doc = json.loads(o.decode())
    except ValueError:
        doc = None
    st = {i["source"]["spec"]: i for i in doc["items"]} if doc else {}
    made = [n for n in os.listdir(out) if n.endswith(".ckfp")] if os.path.isdir(out) else []
    report("a job ended by SIGTERM stops the run: nothing after it starts, exit 143",
           p.returncode == 128 + signal.SIGTERM and st and st[LIST[0]]["status"] == "failed" and
           st[LIST[0]].get("exit_code") == 128 + signal.SIGTERM and
           all(st[s]["status"] == "not_run" for s in LIST[1:3]) and not made,
           "exit %d, %s, files %s, %s" % (p.returncode, json.dumps(doc)[:400], made, err.decode()[-300:]))


def concurrent_cache(tmp, env, lst, ref_out):
    """Three processes, one fresh cache, the same sources at once: same keys written concurrently."""
    cache = os.path.join(tmp, "c-conc")
    e = dict(env, CKPTSCOPE_CACHE=cache)
    sub = scaleout_hub.write_list(os.path.join(tmp, "four.txt"), LIST[:4])
    procs = [subprocess.Popen([BIN, "fingerprint", "--from", sub, "--quiet", os.path.join(tmp, "conc%d" % k)],
                              env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for k in range(3)]
    bad = []
    for k, p in enumerate(procs):
        _, err = p.communicate(timeout=300)
        if p.returncode != 0:
            bad.append("process %d exit %d: %s" % (k, p.returncode, err.decode()[-200:]))
        for s in LIST[:4]:
            a = os.path.join(tmp, "conc%d" % k, name_of(s))
            if not os.path.exists(a) or open(a, "rb").read() != open(os.path.join(ref_out, name_of(s)), "rb").read():
                bad.append("process %d: %s differs from a lone run" % (k, s))
    report("three processes on one fresh cache at once: all succeed, same bytes as a lone run", not bad,
           "; ".join(bad[:3]))
    rc, doc, err = run(e, "cache", "verify", "--json")
    report("the cache written concurrently verifies clean", rc == 0, err[-300:] + json.dumps(doc)[:300])


def gather_cases(tmp, env, store, lst, out):
    lib = os.path.join(tmp, "known.ckfl")
    rc, doc, err = run(env, "fingerprint", "gather", out, "--list", lst, "-o", lib, "--json")
    report("gather: complete, twelve members", rc == 0 and doc and doc["complete"] and doc["members"] == len(LIST),
           err[-300:])
    ref = open(lib, "rb").read()
    rc, doc2, err = run(env, "fingerprint", "gather", lib, "-o", lib + "2", "--json")
    report("re-gathering a library gives the same bytes", rc == 0 and open(lib + "2", "rb").read() == ref, err[-200:])
    # members are the fingerprint files byte for byte, where the index says
    with open(lib, "rb") as f:
        head = f.read(64)
        idx = json.loads(f.read(struct.unpack("<Q", head[16:24])[0]))
    ok = head[:8] == b"CKSFPLIB" and len(idx["members"]) == len(LIST)
    for m in idx["members"]:
        ok = ok and ref[m["offset"]:m["offset"] + m["length"]] == open(os.path.join(out, m["name"]), "rb").read()
        ok = ok and m["offset"] % 4096 == 0 and m["hidden"] == 128 and m["model_type"] in ("llama", "glm4_moe")
    report("the index says where each fingerprint is, byte for byte, with its widths and architecture", ok,
           json.dumps(idx["members"][0])[:300])

    # a folder with one of each problem
    bad_dir = os.path.join(tmp, "bad")
    shutil.copytree(out, bad_dir)
    with open(os.path.join(bad_dir, name_of(LIST[0])), "r+b") as f:
        f.truncate(os.path.getsize(f.name) - 100)
    data = bytearray(open(os.path.join(out, name_of(LIST[1])), "rb").read())
    data[8:12] = struct.pack("<I", 9)
    open(os.path.join(bad_dir, name_of(LIST[1])), "wb").write(data)
    open(os.path.join(bad_dir, "notes.ckfp"), "w").write("not a fingerprint\n")
    shutil.copy(os.path.join(out, name_of(LIST[3])), os.path.join(bad_dir, name_of(LIST[2])))
    os.rename(os.path.join(bad_dir, name_of(LIST[6])), os.path.join(bad_dir, name_of(LIST[6]) + ".tmp.node7.4242"))
    open(os.path.join(bad_dir, "slurm-123_4.out"), "w").write("a job log, ignored\n")
    # the same repo and revision at another commit: the branch moved between two jobs (a repo
    # outside the list, so the other recipes below still see the list's commits)
    moved = os.path.join(tmp, "moved")
    os.makedirs(moved)
    other = scaleout_hub.UNRELATED
    fam = os.path.join(tmp, "fam12", "llama", "base")
    rc, _, err = run(env, "fingerprint", other, "-o", os.path.join(bad_dir, name_of(other)), "--quiet")
    hubrepo.add_repo(store, other, {n: os.path.join(fam, n) for n in os.listdir(fam)})
    rc2, _, err2 = run(env, "fingerprint", other, "-o", os.path.join(moved, name_of(other)), "--quiet",
                       "--cache-dir", os.path.join(tmp, "c-moved"))  # a fresh cache sees the branch move
    report("a fingerprint of a repository before and after its branch moved", rc == 0 and rc2 == 0,
           (err + err2)[-200:])
    shutil.copy(os.path.join(out, name_of(LIST[5])), os.path.join(moved, "copy-of-5.ckfp"))
    rc, doc, err = run(env, "fingerprint", "gather", bad_dir, moved, "--list", lst, "-o", os.path.join(tmp, "bad.ckfl"),
                       "--json", "--summary", os.path.join(tmp, "bad.json"))
    got = {}
    for f in (doc or {}).get("failures", []):
        got.setdefault(f["problem"], []).append(f)
    want = {"truncated": 1, "wrong_version": 1, "not_a_fingerprint": 1, "wrong_source": 1, "missing": 1,
            "duplicate_differing_commits": 2}
    counts = {k: len(v) for k, v in got.items()}
    report("gather: each failure kind reported once, with its reason (exit 1)", rc == 1 and counts == want,
           "exit %d %s" % (rc, counts))
    miss = got.get("missing", [{}])[0]
    report("missing names the source and the temporary a stopped job left",
           (miss.get("source") or {}).get("spec") == LIST[6] and ".tmp.node7.4242" in miss.get("detail", ""), str(miss))
    dup = got.get("duplicate_differing_commits", [{}])
    report("duplicate commits: both copies left out, both commits named",
           len(dup) == 2 and all((d.get("source") or {}).get("spec") == other and "different commits" in d.get("detail", "") for d in dup), str(dup)[:300])
    report("an identical copy is kept once, job logs ignored",
           doc and doc["duplicates_dropped"] == 1 and doc["members"] == len(LIST) - 4 and
           doc["temporaries"] and not any("slurm-" in json.dumps(f) for f in doc["failures"]), str(doc)[:300])
    report("the summary file holds the same JSON", json.load(open(os.path.join(tmp, "bad.json")))["failures"] ==
           doc["failures"], "")
    rc, _, err = run(env, "fingerprint", "gather", os.path.join(tmp, "no-such-dir"), "-o", os.path.join(tmp, "x.ckfl"))
    report("gather: an input that does not exist is an error, nothing written",
           rc not in (0, 1) and not os.path.exists(os.path.join(tmp, "x.ckfl")) and "no-such-dir" in err, err[-200:])

    # verify reads the library, and still a plain folder
    rc, doc, err = run(env, "verify", scaleout_hub.DERIVATIVE, "--against", lib, "--json")
    base = [p for p in (doc or {}).get("provenance", []) if p.get("repo") == "s11/llama-base"]
    near = base[0] if base else {}
    report("verify --against LIBRARY: the derivative is derived from its base (exit 1)",
           rc == 1 and near.get("verdict") == "derived" and
           near.get("fingerprint") == lib + "#" + name_of("s11/llama-base"), "exit %d %s" % (rc, near))
    two = os.path.join(tmp, "two")
    os.makedirs(two)
    for s in (LIST[0], LIST[3]):
        shutil.copy(os.path.join(out, name_of(s)), two)
    rc, doc, err = run(env, "verify", scaleout_hub.DERIVATIVE, "--against", two, "--json")
    report("verify --against a plain folder of .ckfp still works", rc == 1 and doc and len(doc["provenance"]) == 2,
           "exit %d %s" % (rc, err[-200:]))
    damaged = bytearray(ref)
    damaged[idx["members"][0]["offset"] + 40] ^= 0x01
    open(os.path.join(tmp, "damaged.ckfl"), "wb").write(damaged)
    rc, doc, err = run(env, "verify", scaleout_hub.DERIVATIVE, "--against", os.path.join(tmp, "damaged.ckfl"),
                       "--json")
    report("verify --against a library with a damaged member: not a clean pass, the damage named",
           rc not in (0,) and "SHA-256" in json.dumps(doc) + err, "exit %d %s" % (rc, (err + json.dumps(doc))[-300:]))
    return ref


def doc_recipes(tmp, env, lst, ref_lib):
    text = open(DOC).read()
    for script in ("fingerprint-array.sbatch", "slurm-submit.sh", "fingerprint-job.yaml", "gather-job.yaml"):
        body = open(os.path.join(ROOT, "docs", "scale-out", script)).read()
        report("docs/scale-out.md holds %s verbatim" % script, body.strip() in text, "")
    # GNU parallel, the doc's line as written
    lines = [l for l in text.splitlines() if l.startswith("parallel ")]
    if not shutil.which("parallel"):
        print("SKIP GNU parallel recipe: parallel is not installed (scripts/deps.sh installs it)")
    elif len(lines) != 1:
        report("docs/scale-out.md has one `parallel` line", False, str(lines))
    else:
        bindir = os.path.join(tmp, "bin")
        os.makedirs(bindir, exist_ok=True)
        os.symlink(BIN, os.path.join(bindir, "ckptscope"))
        e = dict(env, PATH=bindir + ":" + env["PATH"], LIST=lst, OUT=os.path.join(tmp, "par-out"),
                 CACHE=os.path.join(tmp, "par-cache"), N="3")
        p = subprocess.run(["bash", "-c", lines[0]], env=e, capture_output=True, text=True, timeout=300)
        rc, doc, err = run(env, "fingerprint", "gather", e["OUT"], "--list", lst, "-o", os.path.join(tmp, "par.ckfl"),
                           "--json")
        report("the doc's GNU parallel line makes the same library", p.returncode == 0 and rc == 0 and
               open(os.path.join(tmp, "par.ckfl"), "rb").read() == ref_lib, (p.stderr + err)[-300:])
    # Kubernetes: the manifests' commands, run here once per index with the Job's environment
    try:
        import yaml
    except ImportError:
        print("SKIP Kubernetes manifests: python3-yaml is not installed (scripts/deps.sh installs it)")
        return
    job = yaml.safe_load(open(os.path.join(ROOT, "docs", "scale-out", "fingerprint-job.yaml")))
    gather = yaml.safe_load(open(os.path.join(ROOT, "docs", "scale-out", "gather-job.yaml")))
    c = job["spec"]["template"]["spec"]["containers"][0]
    cmd = c["command"]
    n = job["spec"]["completions"]
    report("the Indexed Job's --shard-count is its completions",
           job["spec"]["completionMode"] == "Indexed" and cmd[cmd.index("--shard-count") + 1] == str(n), str(cmd))
    shared, config = os.path.join(tmp, "k8s-shared"), os.path.join(tmp, "k8s-config")
    os.makedirs(config)
    shutil.copy(lst, os.path.join(config, "bases.txt"))

    def local(argv):
        return [BIN if a == "ckptscope" else a.replace("/shared", shared).replace("/config", config) for a in argv]
    e = dict(env)
    for v in c.get("env", []):
        if "value" in v:
            e[v["name"]] = v["value"].replace("/shared", shared)
    bad = []
    for k in range(n):
        p = subprocess.run(local(cmd), env=dict(e, JOB_COMPLETION_INDEX=str(k)), capture_output=True, text=True,
                           timeout=300)
        if p.returncode != 0:
            bad.append("index %d: exit %d %s" % (k, p.returncode, p.stderr[-200:]))
    g = subprocess.run(local(gather["spec"]["template"]["spec"]["containers"][0]["command"]), env=e,
                       capture_output=True, text=True, timeout=300)
    lib = os.path.join(shared, "known.ckfl")
    report("the Kubernetes manifests' commands, once per index, make the same library",
           not bad and g.returncode == 0 and os.path.exists(lib) and open(lib, "rb").read() == ref_lib,
           "; ".join(bad[:2]) + g.stderr[-300:])


def main():
    tmp = tempfile.mkdtemp(prefix="cks-scaleout-")
    try:
        store = scaleout_hub.build(tmp)
        if not store:
            return 1
        lst = scaleout_hub.write_list(os.path.join(tmp, "bases.txt"))
        with harness.start(store) as hub:
            env = dict(os.environ, HF_ENDPOINT=hub.hub_url, CKPTSCOPE_CACHE=os.path.join(tmp, "cache"))
            env.pop("HF_TOKEN", None)
            shares(tmp, env, lst)
            out = idempotent(tmp, env, lst)
            stopped_job(tmp, env, hub)
            concurrent_cache(tmp, env, lst, out)
            ref_lib = gather_cases(tmp, env, store, lst, out)
            doc_recipes(tmp, env, lst, ref_lib)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 1 if failures() else 0


if __name__ == "__main__":
    sys.exit(main())
