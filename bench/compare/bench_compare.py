#!/usr/bin/python3
"""Issue 15, item 3: the default compare of the GLM/Solar-shaped bench pair, cold and warm, against
a baseline binary in the same run.

    /usr/bin/python3 bench/compare/bench_compare.py --bin build/ckptscope [--baseline OTHER/ckptscope]
            [--runs 3] [--out bench/compare/RESULTS.md] [--work bench/out/scale]

Uses the scale benchmark's bench Hub, fake Hub, nginx CDN and 40 ms / 1 Gbit/s link
(bench/scale/bench_scale.py; the hub is built on first use, ~3 min, ~6.5 GB sparse). Every
measurement is a fresh child process (wall from monotonic(), CPU and peak RSS from wait4(), bytes
through the link):
  - cold: empty CKPTSCOPE_CACHE and HF_HOME, `compare A B --json --quiet` (the default compare);
  - compute: the same cache again with the compare memo removed (meta/compare-result), so every
    byte comes from the cache and every test is recomputed: what compare's own work costs.
Baseline and candidate runs alternate, so load on a shared machine hits both alike. The network
floor is the candidate's bytes on the wire at the link rate plus the round trips no client can
avoid (see floor()).
"""
import argparse
import datetime
import json
import os
import shutil
import signal
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "bench", "scale"))
import bench_scale as bs  # noqa: E402

MEMO_NS = "compare-result"


def floor(wire_bytes, rtt_s, rate_bits):
    """Bytes at the link rate plus the dependent round trips of any client: the Hub API (model
    info), the index and config, a shard header's length and then its body, the tensor ranges,
    and the tokenizer before the embedding rows it selects: 6 RTTs (both models in parallel)."""
    return wire_bytes * 8.0 / rate_bits + 6 * rtt_s


def one(bench, name, binary, cache, runs_dir, endpoint, memo_off=False, pair=None):
    if memo_off:
        shutil.rmtree(os.path.join(cache, "meta", MEMO_NS), ignore_errors=True)
    env = bs.ck_env(cache, os.path.join(runs_dir, "home"))
    env["HF_ENDPOINT"] = endpoint
    a, b = pair or (bs.A, bs.B)
    row = bench.measure(name, [binary, "compare", a, b, "--json", "--quiet"], env=env)
    try:
        with open(os.path.join(runs_dir, name + ".stdout")) as f:
            js = json.load(f)
        row["verdict"] = js.get("verdict")
        row["tests"] = {t["id"]: {"ran": t.get("ran"), "rejects": t.get("rejects"), "statistic": t.get("statistic"),
                                  "p": t.get("p_value", t.get("p")), "z": t.get("z")} for t in js.get("tests", [])}
        row["transfer"] = js.get("transfer")
        row["from_cache"] = js.get("from_cache", False)
    except (OSError, ValueError):
        row["verdict"] = None
    return row


def summary(rows, key):
    v = [r[key] for r in rows]
    return min(v), statistics.median(v)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=os.path.join(ROOT, "build", "ckptscope"))
    ap.add_argument("--baseline", default=None, help="another ckptscope to time in the same run (e.g. main's)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--work", default=os.path.join(ROOT, "bench", "out", "scale"))
    ap.add_argument("--out", default=os.path.join(HERE, "RESULTS.md"))
    ap.add_argument("--rtt-ms", type=float, default=float(os.environ.get("BENCH_RTT_MS", 40)))
    ap.add_argument("--rate-bits", type=float, default=float(os.environ.get("BENCH_RATE_BITS", 1e9)))
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, bs.on_term)
    work = os.path.abspath(args.work)
    hubdir = os.path.join(work, "hub")
    bs.HUBDIR[0] = hubdir
    bs.STORE[0] = os.path.join(hubdir, "store")
    bs.make_hub.build(hubdir, max(1, min(4, os.cpu_count() or 1)))
    runs = os.path.join(work, "runs-compare")
    shutil.rmtree(runs, ignore_errors=True)
    os.makedirs(os.path.join(runs, "home"))
    bins = [("candidate", os.path.abspath(args.bin))]
    if args.baseline:
        bins.append(("baseline", os.path.abspath(args.baseline)))
    res = {k: {"cold": [], "compute": []} for k, _ in bins}
    res["finetune"] = None
    nginx = link = None
    t_run = time.time()
    with bs.harness.start(bs.STORE[0], stderr=open(os.path.join(runs, "fakehub.stderr"), "w")) as hub:
        try:
            nginx, nginx_port = bs.start_nginx(runs, bs.STORE[0])
            link = bs.Link(runs, hub.hub_port, nginx_port, args.rtt_ms, args.rate_bits)
            hub.config(cdn_public_url="http://127.0.0.1:%d" % link.cdn_port,
                       hub_public_url="http://127.0.0.1:%d" % link.hub_port)
            endpoint = "http://127.0.0.1:%d" % link.hub_port
            bench = bs.Bench(runs, hub, link, os.path.join(runs, "nginx-access.log"))
            for i in range(args.runs):
                for key, binary in bins:
                    cache = os.path.join(runs, "cache-%s-%d" % (key, i))
                    shutil.rmtree(cache, ignore_errors=True)
                    res[key]["cold"].append(one(bench, "%s-cold-%d" % (key, i), binary, cache, runs, endpoint))
                    res[key]["compute"].append(one(bench, "%s-compute-%d" % (key, i), binary, cache, runs, endpoint,
                                                   memo_off=True))
                    shutil.rmtree(cache, ignore_errors=True)
            # issue 13: the same method must still find the bench Hub's fine-tune of A
            cache = os.path.join(runs, "cache-finetune")
            res["finetune"] = one(bench, "candidate-finetune", bins[0][1], cache, runs, endpoint,
                                  pair=(bs.A, bs.DERIVED))
            shutil.rmtree(cache, ignore_errors=True)
        finally:
            bs.stop(link.proc if link else None)
            bs.stop(nginx, signal.SIGQUIT)
            bs.stop(nginx)
    ft = res.pop("finetune")
    write(args, bins, res, time.time() - t_run, ft)
    bad = [r for k in res for kind in res[k] for r in res[k][kind] if r["exit"] != 0 or r.get("from_cache")]
    return 1 if bad or not ft or ft["exit"] != 0 else 0


def write(args, bins, res, run_s, ft=None):
    rtt = args.rtt_ms / 1000.0
    lines = ["# Default compare of the GLM/Solar-shaped pair: compute against the network (issue 15, item 3)", "",
             "Generated by `bench/compare/bench_compare.py` on %s UTC, %d runs of each binary, alternating "
             "(whole run %.0f s). Link: RTT %.0f ms, %.3g bit/s, the scale benchmark's bench Hub "
             "(bench/scale/METHOD.md). Load average at the end: %s (2 cores, shared: CPU times are the robust "
             "figures)." % (datetime.datetime.utcnow().strftime("%Y-%m-%d %H:%M"), args.runs, run_s, args.rtt_ms,
                           args.rate_bits, " / ".join("%.2f" % x for x in os.getloadavg())), "",
             "| binary | scenario | wall min | wall median | CPU min | CPU median | peak RSS max | bytes on the wire "
             "| network floor | verdict |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for key, binary in bins:
        for kind in ("cold", "compute"):
            rows = res[key][kind]
            wmin, wmed = summary(rows, "wall_s")
            cmin, cmed = summary(rows, "cpu_s")
            rss = max(r["peak_rss_mib"] for r in rows)
            wire = statistics.median(r["wire_bytes"] for r in rows)
            fl = floor(wire, rtt, args.rate_bits) if kind == "cold" else 0.0
            verdicts = sorted({str(r.get("verdict")) for r in rows})
            lines.append("| %s (`%s`) | %s | %.2f s | %.2f s | %.2f s | %.2f s | %.0f MiB | %s | %s | %s |" % (
                key, os.path.relpath(binary, ROOT), kind, wmin, wmed, cmin, cmed, rss, bs.fmt_bytes(wire),
                "%.2f s" % fl if kind == "cold" else "–", ", ".join(verdicts)))
    if len(bins) == 2:
        lines += ["", "Ratios baseline ÷ candidate (medians):", ""]
        for kind in ("cold", "compute"):
            c, b = res["candidate"][kind], res["baseline"][kind]
            lines.append("- %s: wall %.2f×, CPU %.2f×" % (
                kind, statistics.median(r["wall_s"] for r in b) / statistics.median(r["wall_s"] for r in c),
                statistics.median(r["cpu_s"] for r in b) / statistics.median(r["cpu_s"] for r in c)))
        same = all(json.dumps({t: (v["ran"], v["rejects"]) for t, v in r["tests"].items()}, sort_keys=True) ==
                   json.dumps({t: (v["ran"], v["rejects"]) for t, v in res["baseline"]["cold"][0]["tests"].items()},
                              sort_keys=True) and r["verdict"] == res["baseline"]["cold"][0]["verdict"]
                   for k in res for kind in res[k] for r in res[k][kind] if r.get("tests"))
        lines.append("- verdict and the tests that ran and rejected: %s in every run of both binaries" %
                     ("the same" if same else "NOT the same"))
    lines += ["", "Per test, candidate's first cold run: " + "; ".join(
        "%s %s" % (t, "not run" if not v["ran"] else "statistic %.4g, p %s, z %s" % (
            v["statistic"], "%.3g" % v["p"] if v["p"] is not None else "–", "%.2f" % v["z"] if v["z"] is not None
            else "–")) for t, v in res["candidate"]["cold"][0].get("tests", {}).items()), "",
              "Verdicts (issue 13): %s vs %s `%s` in every run (independent: want `not_derived`); %s vs %s `%s` "
              "(its fine-tune: want `derived`), cold, %.1f s CPU." % (
                  bs.A, bs.B, ", ".join(sorted({str(r.get("verdict")) for k in res for kind in res[k]
                                                for r in res[k][kind]})),
                  bs.A, bs.DERIVED, ft.get("verdict") if ft else "not run", ft["cpu_s"] if ft else 0.0), "",
              "Commands: `%s compare %s %s --json --quiet` with an empty cache (cold), then again with "
              "`meta/%s` removed from the cache (compute)." % ("BIN", bs.A, bs.B, MEMO_NS), ""]
    with open(args.out, "w") as f:
        f.write("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
