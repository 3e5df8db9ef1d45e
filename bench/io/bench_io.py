#!/usr/bin/python3
"""Issue 15's I/O goals, each a ratio against a baseline run in this same invocation.

    /usr/bin/python3 bench/io/bench_io.py --bin build-o3/ckptscope [--runs 5] [--big-mib 2048]
            [--out bench/io/RESULTS.md] [--work bench/out/io]

Setup (all on 127.0.0.1): the fake Hub (tests/fakehub) answers the API and the resolve
redirects; nginx serves the LFS blobs (sendfile, keep-alive, ranges) as the CDN, as bench/scale
does but with tcp_nopush at nginx's default, off (see the call); for the 40 ms rows bench/scale/link.py (one simulated access line, 40 ms RTT,
1 Gbit/s) sits in front of both.

  whole     `ckptscope hash` of a remote 2 GiB single-file checkpoint (16 BF16 tensors of
            128 MiB, incompressible bytes), cold cache, against `curl -s URL | openssl dgst
            -sha256` of the same blob: throughput ratio and ckptscope's peak RSS (GNU time).
  scattered 500 tensors picked at random (fixed seed) from one 77 MB file of 2,000 tensors:
            `ckptscope fetch --tensors-from` (cold cache) on loopback against one `curl -K`
            process doing the same 502 ranges (the 8-byte length, the header, the 500 tensors)
            one after another on one keep-alive connection; and over the 40 ms link against the
            thread-pool peer (bench/scale/peers.py pool: 16 workers, keep-alive, header once).

Runs take turns (A B A B ...) so a busy machine slows both alike; min and median are reported.
Every generated file is deleted at the end (the 2 GiB blob and the caches).
"""
import argparse
import hashlib
import json
import os
import random
import shutil
import struct
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tests", "fakehub"))
sys.path.insert(0, os.path.join(ROOT, "bench", "scale"))
import harness  # noqa: E402
import hubrepo  # noqa: E402
import bench_scale  # noqa: E402  (nginx, the link, the process measurement)

PY = "/usr/bin/python3"
MiB = 1 << 20
BIG_REPO, SCAT_REPO = "bench/whole-2g", "bench/scattered-77m"
SCATTERED_RUNS = 15  # rounds of the loopback scattered rows (at least --runs)
SCAT_FILE = "model-00001-of-00001.safetensors"


def header_bytes(tensors):
    hdr, off = {}, 0
    for name, dt, shape, n in tensors:
        hdr[name] = {"dtype": dt, "shape": shape, "data_offsets": [off, off + n]}
        off += n
    h = json.dumps(hdr, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h, off


def make_big(path, mib):
    """A single-file checkpoint of 16 BF16 tensors filling `mib` MiB: a 64 MiB random block
    repeated (zstd finds nothing to compress within a 256 KiB cache chunk). Returns sha256."""
    per = mib * MiB // 16
    cols = 4096
    tensors = [("model.layers.%d.mlp.weight" % i, "BF16", [per // (2 * cols), cols], per) for i in range(16)]
    head, total = header_bytes(tensors)
    block = random.Random(15).randbytes(64 * MiB)
    sha = hashlib.sha256(head)
    with open(path, "wb") as f:
        f.write(head)
        left = total
        while left:
            n = min(left, len(block))
            f.write(block[:n])
            sha.update(block[:n])
            left -= n
    return sha.hexdigest()


def make_scattered(path, n_tensors, seed):
    """One ~77 MB file of n_tensors F32 tensors of 4-72 KiB (sizes and names fixed by seed)."""
    rnd = random.Random(seed)
    tensors = []
    for i in range(n_tensors):
        n = rnd.choice([1, 2, 4, 8, 12, 16, 18]) * 4096
        tensors.append(("model.layers.%d.t%d.weight" % (i // 20, i % 20), "F32", [n // 4], n))
    head, total = header_bytes(tensors)
    data = rnd.randbytes(total)
    with open(path, "wb") as f:
        f.write(head + data)
    return [(t[0], len(head)) for t in tensors], head, hashlib.sha256(head + data).hexdigest()


def med(xs):
    xs = sorted(xs)
    return xs[(len(xs) - 1) // 2]


def sh(cmd):
    """Time a shell pipeline (the baselines): wall seconds."""
    t0 = time.monotonic()
    subprocess.run(["/bin/sh", "-c", cmd], check=True, stdout=subprocess.DEVNULL)
    return time.monotonic() - t0


def ck_env(cache, home, endpoint):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "CKPTSCOPE_", "XDG_CACHE"))}
    env.update(CKPTSCOPE_CACHE=cache, HF_HOME=home, HOME=home, HF_ENDPOINT=endpoint)
    return env


def run_ck(argv, env, out=None):
    """One ckptscope run: (wall, peak RSS MiB, cpu s); raises on a non-zero exit.
    Peak RSS and CPU come from GNU time, not from this process's wait4: Linux carries the
    high-water RSS across exec, so a child spawned by this (large) Python process would report
    at least this process's size (180 MiB here, whatever ckptscope used)."""
    rfile = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "out", "io-time.%d" % os.getpid())
    t0 = time.monotonic()
    p = subprocess.run(["/usr/bin/time", "-f", "%M %U %S", "-o", rfile, *argv], env=env, stdin=subprocess.DEVNULL,
                       stdout=open(out or os.devnull, "wb"), stderr=subprocess.PIPE)
    wall = time.monotonic() - t0
    if p.returncode != 0:
        raise RuntimeError("%s: exit %d\n%s" % (" ".join(argv), p.returncode, p.stderr.decode(errors="replace")[-2000:]))
    with open(rfile) as f:
        kib, user, sys_s = f.read().split()[-3:]
    os.unlink(rfile)
    return wall, int(kib) / 1024.0, float(user) + float(sys_s)


def blob_url(store, repo, path, base):
    for r in hubrepo.load_state(store)["repos"].values():
        if r["id"] != repo:
            continue
        for c in r["commits"].values():
            e = c["files"].get(path)
            if e and e.get("lfs"):
                return "%s/xet-bridge-us/%s/%s" % (base, "00", e["sha256"])
    raise KeyError(path)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=os.path.join(ROOT, "build-o3", "ckptscope"))
    ap.add_argument("--work", default=os.path.join(ROOT, "bench", "out", "io"))
    ap.add_argument("--out", default=os.path.join(HERE, "RESULTS.md"))
    ap.add_argument("--runs", type=int, default=int(os.environ.get("BENCH_IO_RUNS", 3)))
    ap.add_argument("--big-mib", type=int, default=int(os.environ.get("BENCH_IO_BIG_MIB", 2048)))
    ap.add_argument("--rtt-ms", type=float, default=40)
    ap.add_argument("--rate-bits", type=float, default=1e9)
    ap.add_argument("--only", default="", help="whole,scattered,scattered40 (debugging)")
    ap.add_argument("--serve", type=float, default=0, help="start the servers and wait this long (debugging)")
    args = ap.parse_args()
    only = set(filter(None, args.only.split(",")))
    want = lambda k: not only or k in only  # noqa: E731
    binary = os.path.abspath(args.bin)
    work = os.path.abspath(args.work)
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    store = os.path.join(work, "store")
    files = os.path.join(work, "files")
    os.makedirs(files)
    t_run = time.monotonic()
    res = {"runs": args.runs, "big_mib": args.big_mib}
    nginx = link = None
    try:
        big = os.path.join(files, "big.safetensors")
        if want("whole"):
            sha = make_big(big, args.big_mib)
            hubrepo.add_repo(store, BIG_REPO, {"model.safetensors": {"path": big, "sha256": sha}})
        scat = os.path.join(files, "scattered.safetensors")
        names, head, ssha = make_scattered(scat, 2000, 15)
        index = {"metadata": {"total_size": os.path.getsize(scat)},
                 "weight_map": {n: SCAT_FILE for n, _ in names}}
        hubrepo.add_repo(store, SCAT_REPO, {SCAT_FILE: {"path": scat, "sha256": ssha},
                                            "model.safetensors.index.json": json.dumps(index).encode(),
                                            "config.json": b'{"model_type": "bench"}'})
        pick = random.Random(1).sample([n for n, _ in names], 500)
        tlist = os.path.join(work, "tensors.txt")
        with open(tlist, "w") as f:
            f.write("\n".join(pick) + "\n")
        hdr = json.loads(head[8:])
        base = len(head)
        with harness.start(store, stderr=open(os.path.join(work, "fakehub.stderr"), "w")) as hub:
            # nginx's default tcp_nopush (off): with it on, a reply's last short segment waits
            # for the client's ACK of the rest, which a keep-alive client delays 40 ms, and the
            # baseline `curl -K` took 5.5 s for the 502 ranges (ckptscope acknowledges such
            # tails at once: test_remote short_tails_do_not_wait_for_delayed_acks)
            nginx, nginx_port = bench_scale.start_nginx(work, store, nopush=False)
            cdn = "http://127.0.0.1:%d" % nginx_port
            hub.config(cdn_public_url=cdn)
            home = os.path.join(work, "home")
            os.makedirs(home)
            if args.serve:  # debugging: keep the servers up
                print(json.dumps({"endpoint": hub.hub_url, "cdn": cdn,
                                  "big": blob_url(store, BIG_REPO, "model.safetensors", cdn) if want("whole") else None,
                                  "scattered": blob_url(store, SCAT_REPO, SCAT_FILE, cdn), "tensors": tlist}), flush=True)
                time.sleep(args.serve)
                return 0
            # the fixtures just written go to disk before anything is timed (see bench_whole)
            os.sync()
            scat_url = blob_url(store, SCAT_REPO, SCAT_FILE, cdn)
            if want("scattered"):
                res["scattered"] = bench_scattered(args, binary, hub.hub_url, scat_url, work, home, tlist, pick,
                                                   hdr, base)
            if want("whole"):
                res["whole"] = bench_whole(args, binary, hub.hub_url, blob_url(store, BIG_REPO, "model.safetensors", cdn),
                                           work, home)
                os.unlink(big)
            if want("scattered40"):
                link = bench_scale.Link(work, hub.hub_port, nginx_port, args.rtt_ms, args.rate_bits)
                hub.config(cdn_public_url="http://127.0.0.1:%d" % link.cdn_port,
                           hub_public_url="http://127.0.0.1:%d" % link.hub_port)
                res["scattered40"] = bench_scattered40(args, binary, "http://127.0.0.1:%d" % link.hub_port, work, home,
                                                       tlist, pick)
    finally:
        bench_scale.stop(link.proc if link else None)
        bench_scale.stop(nginx)
        shutil.rmtree(files, ignore_errors=True)
        for d in os.listdir(work) if os.path.isdir(work) else []:
            if d.startswith("cache"):
                shutil.rmtree(os.path.join(work, d), ignore_errors=True)
    res["seconds"] = time.monotonic() - t_run
    with open(os.path.join(work, "results.json"), "w") as f:
        json.dump(res, f, indent=1)
    text = render(args, res)
    with open(args.out + ".tmp", "w") as f:
        f.write(text)
    os.replace(args.out + ".tmp", args.out)
    print(text)
    return 0


def bench_whole(args, binary, endpoint, url, work, home):
    size = args.big_mib * MiB
    curl = "curl -s %s | openssl dgst -sha256" % url
    ck, rss, cpu, base, nc, nc_rss, nc_cpu = [], [], [], [], [], [], []
    sh(curl)  # warm the page cache for both
    # The 2 GiB file was just written: until the kernel has written it back, every run that
    # writes (ckptscope's cache) is throttled behind it and the anchor is not (make bench of
    # 2026-12-05 01:37: 3.6-4.1 s against 2.6-2.8 s once written back). Measure the stream,
    # not this script's own writeback (docs/performance.md shows the cost of such pressure).
    os.sync()
    for i in range(args.runs):
        cache = os.path.join(work, "cache-whole")
        shutil.rmtree(cache, ignore_errors=True)
        w, m, c = run_ck([binary, "hash", BIG_REPO, "--quiet"], ck_env(cache, home, endpoint))
        shutil.rmtree(cache, ignore_errors=True)
        ck.append(w)
        rss.append(m)
        cpu.append(c)
        base.append(sh(curl))
        # the same without the disk cache: what the stream itself costs
        env = ck_env(cache, home, endpoint)
        env["CKPTSCOPE_NO_CACHE"] = "1"
        w2, m2, c2 = run_ck([binary, "hash", BIG_REPO, "--quiet"], env)
        nc.append(w2)
        nc_rss.append(m2)
        nc_cpu.append(c2)
        print("whole %d: ckptscope %.2f s %.0f MiB (no cache %.2f s %.0f MiB), curl|openssl %.2f s"
              % (i, w, m, w2, m2, base[-1]), file=sys.stderr)
    return {"size": size, "ck_s": ck, "ck_rss_mib": rss, "ck_cpu_s": cpu, "base_s": base, "baseline": curl,
            "nocache_s": nc, "nocache_rss_mib": nc_rss, "nocache_cpu_s": nc_cpu,
            "command": "ckptscope hash %s (cold cache)" % BIG_REPO}


def curl_config(path, url, pick, hdr, base):
    """A curl -K file: the 8-byte length, the header, then every picked tensor, one range each.
    `next` between them: a config's `range` (like `output` and `write-out`) is one setting for
    every URL unless `next` starts a new set, and without it all 502 requests asked for the
    last tensor's range. Each transfer writes its size, so the caller can check the bytes.
    Returns the number of ranges and their total bytes."""
    with open(path, "w") as f:
        ranges = [(0, 7), (8, base - 1)] + [(base + hdr[n]["data_offsets"][0], base + hdr[n]["data_offsets"][1] - 1)
                                            for n in pick]
        f.write("\nnext\n".join('url = "%s"\nrange = "%d-%d"\noutput = "/dev/null"\nwrite-out = "%%{size_download}\\n"'
                                 % (url, a, b) for a, b in ranges) + "\n")
    return len(ranges), sum(b - a + 1 for a, b in ranges)


def bench_scattered(args, binary, endpoint, url, work, home, tlist, pick, hdr, base):
    conf = os.path.join(work, "curl-ranges.conf")
    n_ranges, n_bytes = curl_config(conf, url, pick, hdr, base)
    curl = "curl -s -K %s" % conf
    ck, base_s, rss, direct, cpu, direct_cpu, nocache, nocache_cpu = [], [], [], [], [], [], [], []
    sizes = subprocess.run(curl.split(), stdout=subprocess.PIPE, check=True).stdout.split()
    if len(sizes) != n_ranges or sum(int(x) for x in sizes) != n_bytes:
        sys.exit("bench_io: the baseline curl -K got %d transfers of %d bytes, not %d ranges of %d bytes"
                 % (len(sizes), sum(int(x) for x in sizes), n_ranges, n_bytes))
    # cheap (~0.4 s a round), and with 5 rounds the median moved by a quarter between runs
    for i in range(max(args.runs, SCATTERED_RUNS)):
        cache = os.path.join(work, "cache-scat")
        shutil.rmtree(cache, ignore_errors=True)
        w, m, c = run_ck([binary, "fetch", SCAT_REPO, "--tensors-from", tlist, "--quiet"],
                         ck_env(cache, home, endpoint))
        ck.append(w)
        rss.append(m)
        cpu.append(c)
        base_s.append(sh(curl))
        # the file's URL on the same server curl reads, without the Hub (listing, resolve)
        shutil.rmtree(cache, ignore_errors=True)
        w2, _, c2 = run_ck([binary, "fetch", url, "--tensors-from", tlist, "--quiet"], ck_env(cache, home, endpoint))
        direct.append(w2)
        direct_cpu.append(c2)
        # the same Hub run without the disk cache: what storing 500 extents costs
        env = ck_env(cache, home, endpoint)
        env["CKPTSCOPE_NO_CACHE"] = "1"
        w3, _, c3 = run_ck([binary, "fetch", SCAT_REPO, "--tensors-from", tlist, "--quiet"], env)
        nocache.append(w3)
        nocache_cpu.append(c3)
        print("scattered %d: ckptscope %.3f s (URL %.3f s, no cache %.3f s), curl -K %.3f s"
              % (i, w, w2, w3, base_s[-1]), file=sys.stderr)
    shutil.rmtree(os.path.join(work, "cache-scat"), ignore_errors=True)
    return {"ck_s": ck, "base_s": base_s, "ck_rss_mib": rss, "ck_cpu_s": cpu, "direct_s": direct,
            "direct_cpu_s": direct_cpu, "nocache_s": nocache, "nocache_cpu_s": nocache_cpu, "baseline": "curl -s -K CONF (%d ranges)" % n_ranges,
            "command": "ckptscope fetch %s --tensors-from LIST (500 names, cold cache)" % SCAT_REPO}


def bench_scattered40(args, binary, endpoint, work, home, tlist, pick):
    items = os.path.join(work, "pool-items.json")
    with open(items, "w") as f:
        json.dump({"tensors": [{"repo": SCAT_REPO, "tensor": n, "kind": "scattered"} for n in pick]}, f)
    ck, peer = [], []
    for i in range(args.runs):
        cache = os.path.join(work, "cache-scat40")
        shutil.rmtree(cache, ignore_errors=True)
        w, _, _ = run_ck([binary, "fetch", SCAT_REPO, "--tensors-from", tlist, "--quiet"],
                         ck_env(cache, home, endpoint))
        ck.append(w)
        t0 = time.monotonic()
        subprocess.run([PY, os.path.join(ROOT, "bench", "scale", "peers.py"), "pool", "--endpoint", endpoint,
                        "--items", items, "--out", os.path.join(work, "pool-out.json")], check=True)
        peer.append(time.monotonic() - t0)
        print("scattered 40 ms %d: ckptscope %.3f s, pool peer %.3f s" % (i, w, peer[-1]), file=sys.stderr)
    return {"ck_s": ck, "base_s": peer, "baseline": "bench/scale/peers.py pool (16 workers, keep-alive)",
            "command": "ckptscope fetch %s --tensors-from LIST over %g ms" % (SCAT_REPO, args.rtt_ms)}


def fs(s):
    return "%.3f s" % s if s < 10 else "%.1f s" % s


def render(args, res):
    L = ["# I/O goals of issue 15 (bench/io)\n",
         "Written by `bash bench/io/run.sh BUILD` (`make bench`) on %s UTC; every ratio compares runs of this "
         "invocation, taking turns (%d each). Servers: the fake Hub on 127.0.0.1 for the API and the resolve "
         "redirects, nginx for the file bytes (sendfile, keep-alive, tcp_nopush off: nginx's default), as bench/scale "
         "sets them up otherwise; the 40 ms rows "
         "go through bench/scale/link.py (40 ms RTT, 1 Gbit/s). Load average at the end: %.2f %.2f %.2f (2 cores, "
         "shared).\n" % (time.strftime("%Y-%m-%d %H:%M", time.gmtime()), args.runs, *os.getloadavg()),
         "| goal | ckptscope (min / median) | anchor (min / median) | ratio (median; min) | target | met |",
         "|---|---|---|---|---|---|"]
    w = res.get("whole")
    if w:
        gb = w["size"] / 1e9
        r_med, r_min = med(w["base_s"]) / med(w["ck_s"]), min(w["base_s"]) / min(w["ck_s"])
        peak = max(w["ck_rss_mib"])
        L.append("| `hash` of a remote %.2f GB file: throughput | %s / %s (%.2f GB/s median) | `%s`: %s / %s | %.2f×; "
                 "%.2f× | ≥ 0.9× | %s |" % (gb, fs(min(w["ck_s"])), fs(med(w["ck_s"])), gb / med(w["ck_s"]),
                                             w["baseline"].replace(w["baseline"].split()[2], "URL"), fs(min(w["base_s"])),
                                             fs(med(w["base_s"])), r_med, r_min, "yes" if r_med >= 0.9 else "**no**"))
        L.append("| same run: peak RSS (largest of %d) | %.0f MiB (CPU median %s) | – | – | ≤ 64 MiB | %s |"
                 % (len(w["ck_rss_mib"]), peak, fs(med(w["ck_cpu_s"])), "yes" if peak <= 64 else "**no**"))
        if w.get("nocache_s"):
            r2 = med(w["base_s"]) / med(w["nocache_s"])
            p2 = max(w["nocache_rss_mib"])
            L.append("| (diagnostic) the same with `CKPTSCOPE_NO_CACHE=1`: throughput, peak RSS | %s / %s, peak %.0f MiB "
                     "(CPU median %s) | as above | %.2f×; %.2f× | ≥ 0.9×, ≤ 64 MiB | %s |"
                     % (fs(min(w["nocache_s"])), fs(med(w["nocache_s"])), p2, fs(med(w["nocache_cpu_s"])), r2,
                        min(w["base_s"]) / min(w["nocache_s"]), "yes" if r2 >= 0.9 and p2 <= 64 else "**no**"))
    s = res.get("scattered")
    if s:
        r_med, r_min = med(s["base_s"]) / med(s["ck_s"]), min(s["base_s"]) / min(s["ck_s"])
        L.append("| 500 scattered tensors of a 77 MB file, loopback (%d rounds) | %s / %s | `%s`: %s / %s | %.2f×; %.2f× | ≥ 1× | %s |"
                 % (len(s["ck_s"]), fs(min(s["ck_s"])), fs(med(s["ck_s"])), s["baseline"], fs(min(s["base_s"])), fs(med(s["base_s"])),
                    r_med, r_min, "yes" if r_med >= 1 else "**no**"))
        if s.get("direct_s"):
            r2 = med(s["base_s"]) / med(s["direct_s"])
            L.append("| (diagnostic) the same by the file's URL on nginx (no Hub API) | %s / %s (CPU median %s) | "
                     "as above | %.2f×; %.2f× | ≥ 1× | %s |"
                     % (fs(min(s["direct_s"])), fs(med(s["direct_s"])), fs(med(s["direct_cpu_s"])), r2,
                        min(s["base_s"]) / min(s["direct_s"]), "yes" if r2 >= 1 else "**no**"))
        if s.get("nocache_s"):
            r3 = med(s["base_s"]) / med(s["nocache_s"])
            L.append("| (diagnostic) the same from the Hub with `CKPTSCOPE_NO_CACHE=1` | %s / %s (CPU median %s) | "
                     "as above | %.2f×; %.2f× | ≥ 1× | %s |"
                     % (fs(min(s["nocache_s"])), fs(med(s["nocache_s"])), fs(med(s["nocache_cpu_s"])), r3,
                        min(s["base_s"]) / min(s["nocache_s"]), "yes" if r3 >= 1 else "**no**"))
    s = res.get("scattered40")
    if s:
        r_med, r_min = med(s["base_s"]) / med(s["ck_s"]), min(s["base_s"]) / min(s["ck_s"])
        L.append("| the same 500 over the %g ms link | %s / %s | thread-pool peer: %s / %s | %.2f×; %.2f× | ≥ 2× | %s |"
                 % (args.rtt_ms, fs(min(s["ck_s"])), fs(med(s["ck_s"])), fs(min(s["base_s"])), fs(med(s["base_s"])),
                    r_med, r_min, "yes" if r_med >= 2 else "**no**"))
    L.append("")
    L.append("Ratios are anchor time ÷ ckptscope time (above 1: ckptscope is faster). Each ckptscope run is a fresh "
             "process with an empty cache (`CKPTSCOPE_CACHE` in a scratch folder), so it includes the listing, the "
             "resolve redirect, the header and writing the bytes to its disk cache; the anchors write nothing. "
             "Peak RSS and CPU are GNU time's (`/usr/bin/time -f %M`). The `curl -K` file separates its 502 "
             "transfers with `next` (without it, a config's one `range` applied to every URL: all 502 asked for the "
             "last tensor's range, as the runs before 2026-12-06 16:11 did) and the bench checks, before timing, "
             "that they bring the ranges' bytes.\n")
    L.append("Commands (from the repository root):\n")
    L.append("```")
    L.append("/usr/bin/python3 bench/io/bench_io.py --bin %s --runs %d --big-mib %d" % (
        os.path.relpath(os.path.abspath(args.bin), ROOT), args.runs, args.big_mib))
    for k in ("whole", "scattered", "scattered40"):
        if res.get(k):
            L.append("# %s: %s   vs   %s" % (k, res[k]["command"], res[k]["baseline"]))
    L.append("```\n")
    L.append("Whole run: %.0f s.\n" % res["seconds"])
    return "\n".join(L) + "\n"


if __name__ == "__main__":
    sys.exit(main())
