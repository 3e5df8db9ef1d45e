"""Scale-out on a real Slurm cluster (issue 18): the recipe of docs/scale-out.md, run as written.

A single-node cluster from Debian's packages (slurmcluster.py: munged, slurmctld, slurmd in the
foreground on 127.0.0.1; SKIP with the reason when they cannot start) runs
docs/scale-out/slurm-submit.sh: an array of 4 tasks fingerprints the dozen repositories of
scaleout_hub.py from the fake Hub into one output folder with one shared cache, and a dependent
job gathers them into a library. Checked:
  - one array task is cancelled (scancel: SIGTERM, SIGKILL 2 s later) while it fetches its
    second source (whose requests the fake Hub holds 20 s, so none can finish first): the gather job fails and its summary names exactly the two sources of that
    task that are missing (and no other problem); the folder holds no partial fingerprint;
  - the same command again: every other task skips all of its sources, the killed task's share
    makes only the two missing ones, the gather job succeeds, and the library is byte for byte
    the library gathered from a plain `fingerprint --from` run on one machine with its own cache
    (fingerprints and library are deterministic: no time, host or order in them);
  - the shared cache, written by two tasks at once (a mirror repository holds the same files as
    another, in another share), passes `cache verify`;
  - `verify --against LIBRARY`: a derivative of a listed model exits 1 (derived), an unrelated
    upload exits 0.
Prints what the cluster run measured (tasks, seconds, bytes over the wire) as "#" lines.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from ckstest import BIN, ROOT, failures, report, run
import scaleout_hub
from slurmcluster import SlurmCluster, Unavailable

sys.path.insert(0, os.path.join(ROOT, "tests/fakehub"))
import harness  # noqa: E402

SUBMIT = os.path.join(ROOT, "docs", "scale-out", "slurm-submit.sh")
TASKS = 4
SLOW = scaleout_hub.LIST[5]           # in share 2 (array task 1), after the mirror
KILLED_TASK = 1
MISSING = {scaleout_hub.LIST[5], scaleout_hub.LIST[9]}


def submit(cl, env, lst, out, lib):
    p = subprocess.run(["bash", SUBMIT, lst, out, lib, str(TASKS)], env=cl.env(env), capture_output=True,
                       text=True, timeout=60)
    ids = p.stdout.split()
    if p.returncode != 0 or len(ids) != 2:
        report("slurm-submit.sh submits the array and the gather job", False, p.stderr[-400:])
        return None, None
    return ids


def task_reports(out, array):
    """{task: the JSON report of fingerprint-array.sbatch} of one array job."""
    reports = {}
    for t in range(TASKS):
        path = os.path.join(out, "logs", "fingerprint-%s_%d.json" % (array, t))
        try:
            with open(path) as f:
                reports[t] = json.load(f)
        except (OSError, ValueError):
            reports[t] = None
    return reports


def served_bytes(hub):
    return sum(e.get("bytes_sent", 0) for e in hub.log())


def reference_library(tmp, env, lst):
    """The same list on one machine, no scheduler, its own cache: what the cluster must equal."""
    out = os.path.join(tmp, "ref-out")
    lib = os.path.join(tmp, "ref.ckfl")
    e = dict(env, CKPTSCOPE_CACHE=os.path.join(tmp, "ref-cache"))
    rc, _, err = run(e, "fingerprint", "--from", lst, "-j", "2", "--quiet", out)
    rc2, doc, err2 = run(e, "fingerprint", "gather", out, "--list", lst, "-o", lib, "--json")
    ok = rc == 0 and rc2 == 0 and doc and doc["members"] == len(scaleout_hub.LIST)
    report("reference library on one machine (fingerprint --from, gather)", ok, (err + err2)[-400:])
    return lib if ok else None


def first_run(cl, hub, env, lst, out, lib, measured):
    """Submit, kill task 1 while it fetches SLOW, let the gather job run on what is there."""
    # Every request for SLOW is held long enough that no part of it can finish before the kill:
    # the test waits for one to arrive (the fault counts it then; the log has it only once it is
    # answered), so the task is inside its second source however fast it fetches.
    hub.faults([{"server": "any", "match": SLOW, "kind": "delay", "seconds": 20.0, "count": -1}])
    hub.clear_log()
    started = time.time()
    array, gather = submit(cl, env, lst, out, lib)
    if not array:
        return None
    mirror_fp = os.path.join(out, "mirror--llama-base.ckfp")
    seen_slow = False
    deadline = time.time() + 120
    while time.time() < deadline and not seen_slow:
        seen_slow = any(f.get("taken", 0) > 0 for f in hub.armed_faults())
        time.sleep(0.1)
    report("the killed task was fetching its second source (its first written)",
           seen_slow and os.path.exists(mirror_fp), "slow source seen %s, %s %s" % (
               seen_slow, mirror_fp, os.path.exists(mirror_fp)))
    p = cl.run("scancel", "%s_%d" % (array, KILLED_TASK))
    report("scancel the task", p.returncode == 0, p.stderr[-300:])
    hub.clear_faults()
    done = cl.wait_jobs([array, gather], timeout=240)
    measured["run1_seconds"] = time.time() - started
    measured["run1_served"] = served_bytes(hub)
    report("the first array and its gather job end", done, cl.logs()[-1500:])
    states = cl.job_states(array)
    killed = states.get("%s_%d" % (array, KILLED_TASK), ("?", "?"))
    others = [states.get("%s_%d" % (array, t), ("?", "?")) for t in range(TASKS) if t != KILLED_TASK]
    report("the killed task failed, the others completed",
           killed[0] == "CANCELLED" and all(s == ("COMPLETED", "0:0") for s in others),
           "%s" % states)
    g = cl.job_states(gather).get(gather, ("?", "?"))
    report("the gather job fails when a source is missing (exit 1)", g == ("FAILED", "1:0"), str(g))
    try:
        with open(lib + ".summary.json") as f:
            summary = json.load(f)
    except (OSError, ValueError) as e:
        report("gather summary written", False, str(e))
        return None
    missing = {f["source"]["spec"] for f in summary["failures"] if f["problem"] == "missing"}
    report("the summary names exactly the killed task's unfinished sources as missing",
           missing == MISSING and summary["failed"] == len(MISSING) and not summary["complete"],
           json.dumps(summary["failures"])[:600])
    report("the library holds the other ten", summary["members"] == len(scaleout_hub.LIST) - len(MISSING),
           str(summary["members"]))
    partial = [n for n in os.listdir(out) if n.endswith(".ckfp") and n[:-5].replace("--", "/") in MISSING]
    report("no fingerprint of a missing source is in the folder (writes are atomic)", not partial, str(partial))
    return array


def second_run(cl, hub, env, lst, out, lib, first_array, measured):
    hub.clear_log()
    started = time.time()
    array, gather = submit(cl, env, lst, out, lib)
    if not array:
        return False
    done = cl.wait_jobs([array, gather], timeout=240)
    measured["run2_seconds"] = time.time() - started
    measured["run2_served"] = served_bytes(hub)
    report("the resubmitted array and its gather job end", done, cl.logs()[-1500:])
    states = cl.job_states(array)
    report("every resubmitted task completed",
           all(states.get("%s_%d" % (array, t)) == ("COMPLETED", "0:0") for t in range(TASKS)), str(states))
    g = cl.job_states(gather).get(gather, ("?", "?"))
    report("the gather job succeeds", g == ("COMPLETED", "0:0"), str(g))
    reps = task_reports(out, array)
    made = {i["source"]["spec"] for r in reps.values() if r for i in r["items"] if i["status"] == "made"}
    skipped = sum(r["skipped"] for r in reps.values() if r)
    report("the resubmitted array makes only the missing sources and skips the rest",
           made == MISSING and skipped == len(scaleout_hub.LIST) - len(MISSING), "made %s, skipped %d" % (made, skipped))
    first = task_reports(out, first_array)
    measured["tasks"] = TASKS
    measured["task_seconds_run1"] = [round(r["seconds"], 2) if r else None for r in first.values()]
    measured["task_seconds_run2"] = [round(r["seconds"], 2) if r else None for r in reps.values()]
    measured["item_seconds"] = sorted(round(i["seconds"], 2) for r in list(first.values()) + list(reps.values())
                                      if r for i in r["items"] if i["status"] == "made")
    return True


def main():
    tmp = tempfile.mkdtemp(prefix="cks-slurm-")
    measured = {}
    t0 = time.time()
    try:
        try:
            cl = SlurmCluster(os.path.join(tmp, "cluster"))
            cl.start()
        except Unavailable as e:
            print("SKIP slurm cluster: %s" % e)
            cl.stop()
            return 0
        measured["cluster_start_seconds"] = time.time() - t0
        with cl:
            report("a single-node Slurm cluster starts (munged, slurmctld, slurmd)", True)
            store = scaleout_hub.build(tmp)
            if not store:
                return 1
            lst = scaleout_hub.write_list(os.path.join(tmp, "bases.txt"))
            out = os.path.join(tmp, "shared", "known")
            lib = os.path.join(tmp, "shared", "known.ckfl")
            cache = os.path.join(tmp, "shared", "cache")
            with harness.start(store) as hub:
                env = dict(os.environ, HF_ENDPOINT=hub.hub_url, CKPTSCOPE=BIN, CKPTSCOPE_CACHE=cache)
                env.pop("HF_TOKEN", None)
                ref = reference_library(tmp, env, lst)
                first = first_run(cl, hub, env, lst, out, lib, measured)
                if first and second_run(cl, hub, env, lst, out, lib, first, measured) and ref:
                    same = open(lib, "rb").read() == open(ref, "rb").read()
                    report("the library equals the one-machine reference byte for byte", same,
                           "%d vs %d bytes" % (os.path.getsize(lib), os.path.getsize(ref)))
                    measured["library_bytes"] = os.path.getsize(lib)
                rc, _, err = run(env, "cache", "verify", "--cache-dir", cache, "--json")
                report("the cache the tasks shared verifies clean", rc == 0, err[-300:])
                if os.path.exists(lib):
                    t = time.time()
                    rc, doc, err = run(env, "verify", scaleout_hub.DERIVATIVE, "--against", lib, "--json")
                    near = doc["provenance"][0] if doc and doc.get("provenance") else {}
                    report("verify --against the library: a derivative exits 1 (derived)",
                           rc == 1 and near.get("verdict") == "derived", "exit %d %s %s" % (rc, near, err[-300:]))
                    rc, doc, err = run(env, "verify", scaleout_hub.UNRELATED, "--against", lib, "--json")
                    report("verify --against the library: an unrelated upload exits 0",
                           rc == 0 and doc and len(doc["provenance"]) == len(scaleout_hub.LIST),
                           "exit %d %s" % (rc, err[-300:]))
                    measured["verify_seconds"] = (time.time() - t) / 2
    finally:
        measured["test_seconds"] = time.time() - t0
        for k, v in measured.items():
            print("# %s: %s" % (k, round(v, 2) if isinstance(v, float) else v))
        if os.environ.get("CKS_KEEP_TMP"):
            print("# kept %s" % tmp)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 1 if failures() else 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    sys.exit(main())
