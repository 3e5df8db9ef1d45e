"""bench/RESULTS.md for bench_scale.py: one table per scenario, the targets, the method."""
import datetime
import json
import os

import make_hub

HERE = os.path.dirname(os.path.abspath(__file__))


def fb(n):
    if n is None:
        return "–"
    n = float(n)
    for unit, k in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= k:
            return ("%.3g %s" % (n / k, unit)) if n < 100 * k else ("%.0f %s" % (n / k, unit))
    return "%d B" % n


def fs(s):
    if s is None:
        return "–"
    if s >= 120:
        return "%.0f s (%.0f min)" % (s, s / 60)
    return ("%.2f s" % s) if s < 10 else ("%.1f s" % s)


def fr(a, b):
    """a / b as 'N×' (how many times more a costs than b)."""
    if a is None or b is None or b <= 0:
        return "–"
    r = float(a) / float(b)
    if r >= 100:
        return "%.0f×" % r
    return ("%.1f×" % r) if r >= 10 else ("%.2f×" % r)


def fi(n):
    return "–" if n is None else "{:,}".format(int(round(n)))


def ck_row(label, r):
    return {"label": label, "wire": r["wire_bytes"], "requests": r["requests"], "connections": r["connections"],
            "wall": r["wall_s"], "cpu": r["cpu_s"], "rss": r["peak_rss_mib"], "how": "measured"}


def peer_ranges_row(p):
    e, m = p["estimate"], p["measured"]
    how = "measured" if not p["extrapolated"] else (
        "extrapolated from %d of %d items (per kind, linear)" % (p["sample_items"], p["full_items"]))
    return {"label": "4. peers' range reads (1 request/tensor, new connection each, headers re-read)",
            "wire": e["wire_bytes"], "requests": e["requests"], "connections": e["connections"],
            "wall": e["wall_s"], "cpu": m["cpu_s"] * (e["wall_s"] / max(m["wall_s"], 1e-9)) if p["extrapolated"] else m["cpu_s"],
            "rss": m["peak_rss_mib"], "how": how}


def peer_pool_row(p):
    r = p["result"]
    return {"label": "thread-pool peer (keep-alive pool, 16 workers, headers read once per shard)",
            "wire": p["wire_bytes"], "requests": p["requests"], "connections": p["connections"],
            "wall": p["wall_s"], "cpu": p["cpu_s"], "rss": p["peak_rss_mib"],
            "how": "measured (median of %d runs; %d shards, %d tensors)" % (len(p.get("runs_wall_s") or [1]),
                                                                        r["shards"], r["tensors"])}


def spread(xs):
    """'min a, median b' of a list of seconds."""
    xs = sorted(xs or [])
    if not xs:
        return "–"
    return "min %s, median %s over %d runs" % (fs(xs[0]), fs(xs[(len(xs) - 1) // 2]), len(xs))


def med(xs):
    xs = sorted(xs)
    return xs[(len(xs) - 1) // 2]


def peer_download_row(d, which):
    e = d["estimate"][which]
    mb = fb(d["measured_body"])
    how = ("bytes: the shards' sizes; wall: %s at the line rate (+4 RTT per shard), the faster of that and "
           "the measured rate (%s downloaded in %.0f s → %s); CPU extrapolated linearly by bytes"
           % (fs(e["line_rate_wall_s"]), mb, d["measured_s"], fs(e["measured_rate_wall_s"])))
    return {"label": "5. peers' full download (every shard holding a needed tensor: %d shards)" % e["shards"],
            "wire": e["wire_bytes"], "requests": e["requests"], "connections": e["requests"],
            "wall": e["wall_s"], "cpu": e["cpu_s"], "rss": e["peak_rss_mib"], "how": how}


def table(rows, ref=None):
    head = ("| approach | bytes on the wire | requests | connections | wall | CPU | peak RSS | "
            "bytes ÷ ckptscope | wall ÷ ckptscope | how |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---|\n")
    out = head
    for r in rows:
        out += "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n" % (
            r["label"], fb(r["wire"]), fi(r["requests"]), fi(r["connections"]), fs(r["wall"]), fs(r["cpu"]),
            "%.0f MiB" % r["rss"] if r["rss"] is not None else "–",
            fr(r["wire"], ref["wire"]) if ref and r is not ref else "1×",
            fr(r["wall"], ref["wall"]) if ref and r is not ref else "1×", r["how"])
    return out


def min_bytes_t2(summary):
    """The least a norm-only audit can read: both indexes, configs, every header of a shard
    holding a decoder layer's norm gains, and the norm vectors themselves."""
    total = 0
    detail = {}
    for repo in (make_hub.GLM["repo"], make_hub.SOLAR["repo"]):
        m = {r["repo"]: r for r in make_hub.MODELS}[repo]
        d = summary["models"][repo]["dir"]
        shards = make_hub.shard_plan(m)
        norms, headers = 0, 0
        files = set()
        for i, s in enumerate(shards):
            for t in s:
                parts = t[0].split(".")
                if (len(parts) > 3 and parts[1] == "layers" and int(parts[2]) < m["layers"]
                        and parts[3] in ("input_layernorm", "post_attention_layernorm")):
                    norms += make_hub.nbytes(t)
                    files.add(i)
        for i in files:
            headers += len(make_hub.layout(shards[i])[0])
        small = sum(os.path.getsize(os.path.join(d, f)) for f in ("model.safetensors.index.json", "config.json"))
        detail[repo] = {"norm_bytes": norms, "header_bytes": headers, "index_config_bytes": small, "shards": len(files)}
        total += norms + headers + small
    return total, detail


def net_span(args, name):
    """Seconds from the first to the last request a run made (hub arrivals, CDN completions)."""
    runs = os.path.join(os.path.abspath(args.work), "runs-quick" if args.quick else "runs")
    try:
        with open(os.path.join(runs, name + ".hub.log")) as f:
            t = [e["t"] for e in json.load(f)]
        with open(os.path.join(runs, name + ".cdn.log")) as f:
            t += [float(l.split()[0]) for l in f if l.strip()]
    except (OSError, ValueError):
        return None
    return (max(t) - min(t)) if t else 0.0


def binary_info(binary):
    import subprocess
    try:
        head = subprocess.run(["git", "-C", os.path.dirname(HERE), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True).stdout.strip()
        mtime = datetime.datetime.fromtimestamp(os.path.getmtime(binary), datetime.timezone.utc)
        return "`%s`, built %s (repository HEAD at report time: %s)" % (
            os.path.relpath(binary, os.path.dirname(os.path.dirname(HERE))), mtime.strftime("%Y-%m-%d %H:%M UTC"), head)
    except OSError:
        return binary


def render(args, rows, peers, summary, build_s, run_s, binary, machine):
    L = []
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    quick = (" (BENCH_QUICK=1: ckptscope with --permutations 99, no default compare, shorter peer samples)"
             if args.quick else "")
    L.append("# Benchmarks at true scale: auditing two 100B-class checkpoints over a %g ms, %g Gbit/s link%s\n"
             % (args.rtt_ms, args.rate_bits / 1e9, quick))
    L.append("Generated by `make bench` (`bench/scale/run.sh` → `bench/scale/bench_scale.py`) on %s. "
             "Every figure below was measured in this run, except where the *how* column says extrapolated.\n" % now)
    t2, cc, cw = rows.get("t2_cold"), rows.get("compare_cold"), rows.get("compare_warm")
    r4t2, r4c, d5 = peers.get("ranges_t2"), peers.get("ranges_compare"), peers.get("download")

    # headline
    L.append("## Headline\n")
    if cc and d5 and r4c:
        p5, p4 = peer_download_row(d5, "compare"), peer_ranges_row(r4c)
        L.append("- Default `ckptscope compare` (cold cache), GLM-4.5-Air-shaped vs Solar-Open-100B-shaped: "
                 "**%s on the wire in %s**; the full-download approach moves **%s (%s more)** and takes %s; "
                 "the per-tensor range approach takes **%s (%s slower)**."
                 % (fb(cc["wire_bytes"]), fs(cc["wall_s"]), fb(p5["wire"]), fr(p5["wire"], cc["wire_bytes"]),
                    fs(p5["wall"]), fs(p4["wall"]), fr(p4["wall"], cc["wall_s"])))
    if t2 and d5 and r4t2:
        p5, p4 = peer_download_row(d5, "norms"), peer_ranges_row(r4t2)
        L.append("- Norm gains only (T2, cold): **%s in %s** (CPU %s) against %s (%s) by full download and %s by "
                 "per-tensor ranges." % (fb(t2["wire_bytes"]), fs(t2["wall_s"]), fs(t2["cpu_s"]), fb(p5["wire"]),
                                        fs(p5["wall"]), fs(p4["wall"])))
    if cw:
        L.append("- Warm rerun: %s on the wire, %s." % (fb(cw["wire_bytes"]), fs(cw["wall_s"])))
    L.append("")

    # targets
    L.append("## Targets (issue 8)\n")
    L.append("| target | measured | met |\n|---|---|---|")
    minb, mdetail = min_bytes_t2(summary)
    if t2:
        L.append("| T2 on the two full-size models: wall < 5 s over the %g ms link | %s (CPU %s) | %s |"
                 % (args.rtt_ms, fs(t2["wall_s"]), fs(t2["cpu_s"]), "yes" if t2["wall_s"] < 5 else "**no**"))
        L.append("| T2 bytes within 1.1× of the minimum (norms + headers + index/config: %s) | %s = %s | %s |"
                 % (fb(minb), fb(t2["wire_bytes"]), fr(t2["wire_bytes"], minb),
                    "yes" if t2["wire_bytes"] <= 1.1 * minb else "**no**"))
    if cc and d5:
        p5 = peer_download_row(d5, "compare")
        r = p5["wire"] / cc["wire_bytes"]
        L.append("| default compare: ≥ 100× fewer bytes than approach 5 | %s | %s |" % (fr(p5["wire"], cc["wire_bytes"]),
                                                                                     "yes" if r >= 100 else "**no**"))
    if cc and r4c:
        p4 = peer_ranges_row(r4c)
        r = p4["wall"] / cc["wall_s"]
        L.append("| default compare: ≥ 10× faster than approach 4 | %s | %s |" % (fr(p4["wall"], cc["wall_s"]),
                                                                                "yes" if r >= 10 else "**no**"))
    if not cw and rows.get("t2_warm"):
        cw = rows["t2_warm"]
        L.append("| warm rerun (quick mode: of T2): zero bytes on the wire | %s (%s requests) | %s |" % (
            fb(cw["wire_bytes"]) if cw["wire_bytes"] else "0 B", fi(cw["requests"]), "yes" if cw["wire_bytes"] == 0 else "**no**"))
        L.append("| warm rerun (quick mode: of T2): < 0.5 s | %s (CPU %s) | %s |" % (
            fs(cw["wall_s"]), fs(cw["cpu_s"]), "yes" if cw["wall_s"] < 0.5 else "**no**"))
        cw = None
    if cw:
        L.append("| warm rerun: zero bytes on the wire | %s (%s requests) | %s |" % (
            fb(cw["wire_bytes"]) if cw["wire_bytes"] else "0 B", fi(cw["requests"]), "yes" if cw["wire_bytes"] == 0 else "**no**"))
        L.append("| warm rerun: < 0.5 s | %s (CPU %s) | %s |" % (fs(cw["wall_s"]), fs(cw["cpu_s"]),
                                                                 "yes" if cw["wall_s"] < 0.5 else "**no**"))
    pool = peers.get("pool_t2")
    if t2 and pool:
        cw_, pw_ = t2.get("runs_wall_s") or [t2["wall_s"]], pool.get("runs_wall_s") or [pool["wall_s"]]
        L.append("| issue 15: T2 wall ≤ 1.2 s over the %g ms link (ckptscope, %s) | median %s | %s |"
                 % (args.rtt_ms, spread(cw_), fs(med(cw_)), "yes" if med(cw_) <= 1.2 else "**no**"))
        L.append("| issue 15: T2 ≥ 1.5× faster than the thread-pool peer (peer %s) | median ÷ median %s, "
                 "min ÷ min %s | %s |" % (spread(pw_), fr(med(pw_), med(cw_)), fr(min(pw_), min(cw_)),
                                          "yes" if med(pw_) >= 1.5 * med(cw_) else "**no**"))
        L.append("| issue 15: T2 bytes ≤ 1.1× the minimum | %s = %s | %s |"
                 % (fb(t2["wire_bytes"]), fr(t2["wire_bytes"], minb), "yes" if t2["wire_bytes"] <= 1.1 * minb else "**no**"))
    if cc:
        # the network floor of the cold compare: its bytes at the line rate, plus the round trips
        # no client can overlap (connect, revision, index, headers, then one round each for norms
        # and routers, k/v rows and embedding rows)
        rounds = 8
        floor_s = cc["wire_bytes"] * 8 / args.rate_bits + rounds * args.rtt_ms / 1000
        w_, c_, p_ = (cc.get("runs_wall_s") or [cc["wall_s"]], cc.get("runs_cpu_s") or [cc["cpu_s"]],
                      cc.get("runs_peak_rss_mib") or [cc["peak_rss_mib"]])
        L.append("| issue 15: default compare ≤ 6 s wall cold (%s; network floor %s = %s at %g Mbit/s + %d round trips of %g ms) "
                 "| median %s = %s × the floor | %s |"
                 % (spread(w_), fs(floor_s), fb(cc["wire_bytes"]), args.rate_bits / 1e6, rounds, args.rtt_ms,
                    fs(med(w_)), "%.1f" % (med(w_) / floor_s), "yes" if med(w_) <= 6 else "**no**"))
        L.append("| issue 15: default compare ≤ 6 s CPU cold (%s) | median %s | %s |"
                 % (spread(c_), fs(med(c_)), "yes" if med(c_) <= 6 else "**no**"))
        L.append("| issue 15: default compare peak ≤ 256 MiB (%s) | max %.0f MiB | %s |"
                 % (", ".join("%.0f" % x for x in p_), max(p_), "yes" if max(p_) <= 256 else "**no**"))
    limit = 180 if args.quick else 1200
    L.append("| whole benchmark run < %s | %s | %s |" % ("3 min (quick)" if args.quick else "20 min", fs(run_s),
                                                        "yes" if run_s < limit else "**no**"))
    peak = max([r["peak_rss_mib"] for r in rows.values()] or [0])
    if rows:
        L.append("| peak memory < 512 MiB (every ckptscope run, the 4096×4096 assignment included) | %.0f MiB | %s |"
                 % (peak, "yes" if peak < 512 else "**no**"))
    L.append("")

    # scenarios
    def scen(title, ck, r4, which, note, pool=None):
        if not ck:
            return
        L.append("## %s\n" % title)
        L.append(note + "\n")
        ref = ck_row("ckptscope (this scenario)", ck)
        if ck.get("runs_wall_s"):
            ref["how"] = "measured (median of %d runs)" % len(ck["runs_wall_s"])
        items = [ref]
        if pool:
            items.append(peer_pool_row(pool))
        if r4:
            items.append(peer_ranges_row(r4))
        if d5:
            items.append(peer_download_row(d5, which))
        L.append(table(items, ref))
        tr = ck.get("transfer") or {}
        L.append("ckptscope's own account (`--json` `transfer`): %s fetched in %s requests, %.2f s of transfer, "
                 "%s ranges coalesced; exit %d; verdict `%s`.\n"
                 % (fb(tr.get("bytes_fetched")), fi(tr.get("requests")), tr.get("seconds") or 0,
                    fi(tr.get("ranges_coalesced")), ck["exit"], ck.get("verdict")))
        span = net_span(args, ck["name"])
        if span is not None:
            L.append("Time: requests spanned %s of the %s wall; the rest is computation (CPU %s: user %s, sys %s) "
                     "and process start/exit.\n" % (fs(span), fs(ck["wall_s"]), fs(ck["cpu_s"]), fs(ck["user_s"]),
                                                    fs(ck["sys_s"])))
        if ck.get("by_role"):
            L.append("Where ckptscope's CDN bytes went (from nginx's log, mapped onto the shard layouts; %d ranges "
                     "touched a tensor without generated values): %s.\n" % (ck.get("hole_ranges", 0), "; ".join(
                         "%s %s in %s ranges" % (k, fb(v["bytes"]), fi(v["ranges"]))
                         for k, v in sorted(ck["by_role"].items(), key=lambda kv: -kv[1]["bytes"]))))

    scen("Scenario 1 — T2 alone (norm gains), cold cache", t2, r4t2, "norms",
         "`ckptscope compare zai-org/GLM-4.5-Air upstage/Solar-Open-100B --tests T2 --json` with an empty cache. "
         "Peers read the same norm vectors (input and post-attention norm of every decoder layer of both models). "
         "Approach 4 is the sionic-style row (a strawman kept for history); the thread-pool peer is what a "
         "competent user writes today (`bench/scale/peers.py pool`).", pool=peers.get("pool_t2"))
    scen("Scenario 2 — default compare, cold cache", cc, r4c, "compare",
         "`ckptscope compare zai-org/GLM-4.5-Air upstage/Solar-Open-100B --json` (default budget 384 MiB per model, "
         "all tests, built-in synthetic power checks) with an empty cache. Approach 4 reads what those tests use, "
         "whole: norm gains, k and v of every layer, routers and router biases, and the embedding rows of %s shared "
         "tokens per model; approach 5 downloads every shard holding one of those tensors."
         % (fi(r4c["embed_rows"]) if r4c else "the"))
    if cw:
        scen("Scenario 3 — default compare, warm cache (the same command again)", cw, r4c, "compare",
             "Same cache directory as scenario 2. The peers have no cache across runs (sionic kept headers in a dict "
             "for one process; hf_hub_download keeps whole shards, so approach 5's rerun is free once 400+ GB of disk "
             "are spent), so their columns repeat scenario 2.")
    cs = rows.get("compare_seed")
    if cs:
        tr = cs.get("transfer") or {}
        L.append("Another seed on the same warm cache (`--seed 7`): %s on the wire (%s fetched in %s requests), "
                 "%s wall, CPU %s, exit %d, verdict `%s`. The seed chooses the sampled rows, so the rows it picks "
                 "that the first run did not are fetched; headers, norms and whole tensors come from the cache.\n"
                 % (fb(cs["wire_bytes"]), fb(tr.get("bytes_fetched")), fi(tr.get("requests")), fs(cs["wall_s"]),
                    fs(cs["cpu_s"]), cs["exit"], cs.get("verdict")))
    t2w = rows.get("t2_warm")
    if t2w:
        scen("Scenario 1b — T2 alone, warm cache (the same command again)", t2w, r4t2, "norms",
             "Same cache directory as scenario 1.")
    if args.quick and not cc:
        L.append("Quick mode (`BENCH_QUICK=1`) skips the default compare: it takes minutes of CPU with this build "
                 "(see the findings below). Run `make bench` without it for scenarios 2 and 3.\n")
    dv = rows.get("derived_cold")
    if dv:
        L.append("## Scenario 4 — a real derivative: GLM-shaped vs its fine-tune, default compare, cold\n")
        L.append(table([ck_row("ckptscope compare zai-org/GLM-4.5-Air bench/GLM-4.5-Air-finetune", dv)]))
        L.append("Verdict `%s`.\n" % dv.get("verdict"))

    # the bench hub
    L.append("## The bench Hub\n")
    L.append("| repo | shards | logical size | on disk (sparse) | tensors | tokenizer.json |\n|---|---:|---:|---:|---:|---:|")
    for repo, v in summary["models"].items():
        L.append("| `%s` | %d | %s | %s | %s | %s |" % (repo, v["shards"], fb(v["logical_bytes"]), fb(v["disk_bytes"]),
                                                      fi(v["tensors"]), fb(v["tokenizer_bytes"])))
    L.append("")
    L.append(open(os.path.join(HERE, "METHOD.md")).read().strip() + "\n")
    L.append(open(os.path.join(HERE, "FINDINGS.md")).read().strip() + "\n")
    L.append("## This run\n")
    L.append("- Machine: %s, %d cores, %.0f GiB RAM, Linux %s, Python %s, nginx %s. Load average at the end: "
             "%.2f / %.2f / %.2f (other jobs shared the machine; CPU times are the robust figures)."
             % (machine["cpu"], machine["cores"], machine["mem_gib"], machine["kernel"], machine["python"],
                machine["nginx"], *machine["load"]))
    if getattr(args, "render_only", False):
        L.append("- This file was rewritten from the run's saved results (`bench_scale.py --render-only`) after a "
                 "change to the report.")
    rc = peers.get("ranges_compare") or {}
    if rc.get("embed_rows_at_run"):
        L.append("- Approach 4's embedding-row count is the %s shared tokens ckptscope's `--json` reports; the run "
                 "itself had estimated %s from bytes, which count coalesced gaps. The measured per-row cost is "
                 "unchanged." % (fi(rc["embed_rows"]), fi(rc["embed_rows_at_run"])))
    L.append("- ckptscope: %s." % binary_info(binary))
    L.append("- Link: RTT %g ms (half each way), %g Gbit/s each direction, one bucket shared by the Hub and CDN "
             "connections (`BENCH_RTT_MS`, `BENCH_RATE_BITS` to change)." % (args.rtt_ms, args.rate_bits / 1e9))
    L.append("- Bench hub build: %s (reused when `bench/out/scale/hub/stamp.json` has the generator's version; "
             "first build %.0f s). Whole run: %s." % (fs(build_s), summary.get("build_seconds", 0), fs(run_s)))
    L.append("- Minimum bytes for T2: %s." % "; ".join(
        "%s: %d shards, headers %s + norms %s + index/config %s" % (r, d["shards"], fb(d["header_bytes"]), fb(d["norm_bytes"]),
                                                                    fb(d["index_config_bytes"])) for r, d in mdetail.items()))
    L.append("- Commands (exact):\n")
    L.append("```")
    pool_cmd = [peers["pool_t2"]] if peers.get("pool_t2") else []
    for r in list(rows.values()) + pool_cmd + [p["measured"] for p in (r4t2, r4c) if p] + (d5["measured"] if d5 else []):
        argv = [a.replace(os.getcwd() + "/", "") for a in r["argv"]]
        L.append(" ".join(argv))
    L.append("```\n")
    if d5:
        L.append("Approach 5 measured: " + "; ".join(
            "%s %s in %s (%.0f MB/s)" % (m["result"]["repo"], fb(m["result"]["body_bytes"]), fs(m["wall_s"]),
                                        m["result"]["body_bytes"] / max(m["wall_s"], 1e-9) / 1e6) for m in d5["measured"]) + ".\n")
    for key, p in (("T2", r4t2), ("compare", r4c)):
        if p:
            L.append("Approach 4 (%s) per kind, measured: %s.\n" % (key, "; ".join(
                "%s %d items, %d requests, %s, %s" % (k, v["items"], v["requests"], fb(v["body_bytes"]), fs(v["seconds"]))
                for k, v in p["result"]["kinds"].items())))
    return "\n".join(L) + "\n"
