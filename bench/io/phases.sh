#!/bin/bash
# Where the time of a cold scattered fetch goes, phase by phase (docs/performance.md).
#
#   /usr/bin/python3 bench/io/bench_io.py --bin build-o3/ckptscope --only scattered \
#       --serve 3000 --work /tmp/iow > /tmp/serve.json &     # the servers, kept up
#   sudo bash bench/io/phases.sh build-o3/ckptscope /tmp/serve.json 15
#
# Needs perf with uprobes (root) and a binary with symbols. Each run uses a fresh cache
# folder; the medians of the gaps between the probes are printed.
set -euo pipefail
bin=$(realpath "$1")
serve=$2
runs=${3:-15}
work=$(mktemp -d /tmp/cks-phases.XXXXXX)
group=cksphase
probes=(main cks_remote_open cks_hub_open_repo_ahead cks_st_read_header cks_fetch hash_batch_helper)
cleanup() {
    perf probe -q -d "$group:*" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT
for f in "${probes[@]}"; do
    perf probe -q -x "$bin" --add "$group:$f=$f" >/dev/null
done
perf probe -q -x "$bin" --add "$group:fetch_done=cks_fetch%return" >/dev/null
eval "$(/usr/bin/python3 -c '
import json, sys
d = json.load(open(sys.argv[1]))
print("export HF_ENDPOINT=%s HF_HOME=%s/hfhome TLIST=%s" % (d["endpoint"], sys.argv[2], d["tensors"]))
' "$serve" "$work")"
for i in $(seq "$runs"); do
    CKPTSCOPE_CACHE="$work/cache-$i" perf record -q -k CLOCK_MONOTONIC -o "$work/perf.data" \
        -e "$group:*" -e syscalls:sys_enter_execve -e syscalls:sys_enter_exit_group -- \
        /usr/bin/python3 -c 'import os, sys; os.execv(sys.argv[1], sys.argv[1:])' \
        "$bin" fetch bench/scattered-77m --tensors-from "$TLIST" --quiet >/dev/null
    perf script -i "$work/perf.data" -F time,event 2>/dev/null | awk '/execve/ {n++} n >= 1'
    echo END
    rm -rf "$work/cache-$i"
done | /usr/bin/python3 -c '
import statistics, sys
order = ["execve", "main", "cks_remote_open", "cks_hub_open_repo_ahead", "cks_st_read_header",
         "cks_fetch", "hash_batch_helper", "fetch_done", "exit_group"]
label = {"execve": "process start", "main": "local setup", "cks_remote_open": "session",
         "cks_hub_open_repo_ahead": "Hub stages and header transfer", "cks_st_read_header": "header parse",
         "cks_fetch": "range transfer", "hash_batch_helper": "batch hash", "fetch_done": "exit"}
gaps, totals = {}, []
for run in sys.stdin.read().split("END"):
    seen = {}
    for line in run.split("\n"):
        parts = line.replace("__return", "").split()
        if len(parts) < 2:
            continue
        name = next((o for o in order if parts[1].rstrip(":").endswith(":" + o) or parts[1].endswith(o + ":")), None)
        if name and name not in seen:
            seen[name] = float(parts[0].rstrip(":"))
    for a, b in zip(order, order[1:]):
        if a in seen and b in seen:
            gaps.setdefault(a, []).append((seen[b] - seen[a]) * 1000)
    if "execve" in seen and "exit_group" in seen:
        totals.append((seen["exit_group"] - seen["execve"]) * 1000)
for a in order[:-1]:
    if a in gaps:
        print("%-32s median %6.1f ms  min %6.1f ms  (%d runs)" % (label[a], statistics.median(gaps[a]), min(gaps[a]), len(gaps[a])))
if totals:
    print("%-32s median %6.1f ms  min %6.1f ms" % ("total", statistics.median(totals), min(totals)))
'
