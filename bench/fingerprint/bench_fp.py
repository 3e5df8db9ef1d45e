#!/usr/bin/python3
"""Fingerprints of 100B-class models (issue 9): size, cost, and what a comparison against one
saves, on the scale benchmark's bench Hub (bench/scale: sparse GLM-4.5-Air- and
Solar-Open-100B-shaped repos and a GLM fine-tune, nginx as the CDN, one 40 ms / 1 Gbit/s link).

    /usr/bin/python3 bench/fingerprint/bench_fp.py --bin BUILD/ckptscope [--out bench/fingerprint/RESULTS.md]

Baseline, in the same run: the live default `compare GLM Solar` from a cold cache. Then, each
from its own cold cache: `fingerprint GLM`, `compare GLM.ckfp Solar`, `compare GLM.ckfp
GLM-finetune`, `verify GLM-finetune --against GLM.ckfp`. The table gives each run's wall time,
bytes on the wire, requests, peak RSS and verdict, and the ratios against the baseline.
Reuses bench/scale's hub (built on first use, ~8 GB sparse) and its servers; needs nginx.
"""
import argparse
import json
import os
import shutil
import signal
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "bench", "scale"))
import bench_scale as bs  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=os.path.join(ROOT, "build", "ckptscope"))
    ap.add_argument("--work", default=os.path.join(ROOT, "bench", "out", "scale"))
    ap.add_argument("--out", default=os.path.join(HERE, "RESULTS.md"))
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, bs.on_term)
    work = os.path.abspath(args.work)
    binary = os.path.abspath(args.bin)
    hubdir = os.path.join(work, "hub")
    bs.HUBDIR[0], bs.STORE[0] = hubdir, os.path.join(hubdir, "store")
    bs.make_hub.build(hubdir, max(1, min(4, os.cpu_count() or 1)))
    runs = os.path.join(work, "runs-fingerprint")
    shutil.rmtree(runs, ignore_errors=True)
    os.makedirs(os.path.join(runs, "home"))
    rows = {}
    fp = os.path.join(runs, "glm.ckfp")
    with bs.harness.start(bs.STORE[0], stderr=open(os.path.join(runs, "fakehub.stderr"), "w")) as hub:
        nginx = link = None
        try:
            nginx, nginx_port = bs.start_nginx(runs, bs.STORE[0])
            link = bs.Link(runs, hub.hub_port, nginx_port, 40, 1e9)
            hub.config(cdn_public_url="http://127.0.0.1:%d" % link.cdn_port,
                       hub_public_url="http://127.0.0.1:%d" % link.hub_port)
            bench = bs.Bench(runs, hub, link, os.path.join(runs, "nginx-access.log"))

            def ck(key, cache, *argv):
                env = bs.ck_env(os.path.join(runs, cache), os.path.join(runs, "home"))
                env["HF_ENDPOINT"] = "http://127.0.0.1:%d" % link.hub_port
                row = bench.measure(key, [binary, *argv, "--json", "--quiet"], env=env)
                try:
                    with open(os.path.join(runs, key + ".stdout")) as f:
                        row["json"] = json.load(f)
                except (OSError, ValueError):
                    row["json"] = {}
                rows[key] = row

            ck("live-compare", "cache-live", "compare", bs.A, bs.B)
            ck("fingerprint", "cache-fp", "fingerprint", bs.A, "-o", fp)
            ck("fp-compare-solar", "cache-solar", "compare", fp, bs.B)
            ck("fp-compare-finetune", "cache-ft", "compare", fp, bs.DERIVED)
            ck("verify-finetune", "cache-verify", "verify", bs.DERIVED, "--against", fp)
        finally:
            bs.stop(link.proc if link else None)
            bs.stop(nginx, signal.SIGQUIT)
            bs.stop(nginx)
    write(args.out, rows, fp, binary)
    return 0 if all(r["exit"] in (0, 1) for r in rows.values()) else 1


def t4(row):
    for t in row["json"].get("tests", []):
        if t.get("id") == "T4a":
            return ("%.4f (z %.0f, %s)" % (t["statistic"], t["z"], t["tensors"].split(" (")[0])) if t.get("ran") \
                else "not run: " + t.get("why_not", "")
    return "-"


def write(out, rows, fp, binary):
    base = rows["live-compare"]
    size = os.path.getsize(fp) if os.path.exists(fp) else 0
    lines = ["# Fingerprints of 100B-class models", "",
             "`/usr/bin/python3 bench/fingerprint/bench_fp.py --bin %s` on %s; bench Hub of bench/scale "
             "(GLM-4.5-Air- and Solar-Open-100B-shaped, 40 ms RTT, 1 Gbit/s). Each run from its own cold cache. "
             "Ratios are against the live compare of the same run." % (os.path.relpath(binary, ROOT),
                                                                       time.strftime("%Y-%m-%d %H:%M")), "",
             "| run | exit | verdict | wall | bytes on the wire | requests | peak RSS | T4a | wall / live | bytes / live |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for key, r in rows.items():
        j = r["json"]
        verdict = j.get("verdict") or j.get("outcome") or ("%d B written" % j.get("bytes", 0) if key == "fingerprint" else "-")
        lines.append("| %s | %d | %s | %s | %s | %d | %.0f MiB | %s | %.2f | %.3f |" % (
            key, r["exit"], verdict, bs.fmt_s(r["wall_s"]), bs.fmt_bytes(r["wire_bytes"]), r["requests"],
            r["peak_rss_mib"], t4(r) if "compare" in key else "-", r["wall_s"] / base["wall_s"],
            r["wire_bytes"] / max(1, base["wire_bytes"])))
    fpj = rows["fingerprint"]["json"]
    lines += ["", "Fingerprint of %s: %d bytes (cap 10,000,000); %s." % (bs.A, size, fpj.get("sampling", "?")), ""]
    with open(out, "w") as f:
        f.write("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
