#!/usr/bin/python3
"""Remote reads on a slow link: ckptscope's range engine against a sequential baseline.

Setup (all on 127.0.0.1): the fake Hub (tests/fakehub) with a 40-shard checkpoint and a
large single-file one, each of the Hub and the CDN behind bench/netem_proxy.py (one-way
delay RTT/2 in each direction, a bandwidth cap per direction).

Workloads, run in one invocation:
  scattered  500 tensors picked at random across the 40 shards (a fixed seed):
             - baseline: what a careful script does with one range per request, sequentially,
               a new connection per request (Python stdlib, http.client): listing, index,
               per shard resolve + bytes 0-7 + header, then one GET per tensor;
             - ckptscope fetch --tensors-from (default settings, and with coalescing off).
  large      every tensor of a 96 MiB single-file checkpoint (hash): link utilisation.

Both sides must return the same tensor bytes (SHA-256 compared). Results go to
bench/remote/RESULTS.md (or --out).
"""
import argparse
import hashlib
import http.client
import json
import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "fakehub"))
import harness  # noqa: E402
import hubrepo  # noqa: E402

PROXY = os.path.join(ROOT, "bench", "netem_proxy.py")


def st_bytes(tensors):
    hdr, off = {}, 0
    for name, dt, shape, data in tensors:
        hdr[name] = {"dtype": dt, "shape": shape, "data_offsets": [off, off + len(data)]}
        off += len(data)
    h = json.dumps(hdr).encode()
    return struct.pack("<Q", len(h)) + h + b"".join(t[3] for t in tensors)


def make_fixture(root, n_shards, per_shard, large_mib, seed):
    rnd = random.Random(seed)
    files, wm, names = {}, {}, []
    for s in range(n_shards):
        shard = "model-%05d-of-%05d.safetensors" % (s + 1, n_shards)
        ts = []
        for i in range(per_shard):
            n = rnd.choice([16, 24, 32, 48, 64]) * 1024
            name = "model.layers.%d.t%d" % (s, i)
            ts.append((name, "U8", [n], os.urandom(n)))
            wm[name] = shard
            names.append(name)
        files[shard] = st_bytes(ts)
    files["model.safetensors.index.json"] = json.dumps({"metadata": {}, "weight_map": wm}).encode()
    hubrepo.add_repo(root, "bench/sharded", files)
    big = [("big.%d" % i, "U8", [1 << 20], os.urandom(1 << 20)) for i in range(large_mib)]
    hubrepo.add_repo(root, "bench/large", {"model.safetensors": st_bytes(big)})
    return names, files


def start_proxy(target_port, delay_ms, rate, tmp, tag):
    state = os.path.join(tmp, "proxy-%s.json" % tag)
    if os.path.exists(state):
        os.unlink(state)
    p = subprocess.Popen(["/usr/bin/python3", PROXY, "--target", "127.0.0.1:%d" % target_port,
                          "--delay-ms", str(delay_ms), "--rate", str(rate), "--state-file", state],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 10
    while time.time() < deadline:
        if os.path.exists(state):
            try:
                with open(state) as f:
                    return p, json.load(f)["port"]
            except ValueError:
                pass
        time.sleep(0.02)
    p.kill()
    raise RuntimeError("netem proxy did not start")


# ------------------------------------------------------------------ the baseline client

class Baseline:
    """One range per request, sequential, a fresh connection every time, no coalescing."""

    def __init__(self):
        self.requests = 0
        self.bytes = 0

    def request(self, method, url, headers=None):
        u = urllib.parse.urlsplit(url)
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
        path = u.path + ("?" + u.query if u.query else "")
        conn.request(method, path, headers=dict(headers or {}, Connection="close"))
        r = conn.getresponse()
        body = r.read()
        conn.close()
        self.requests += 1
        self.bytes += len(body)
        return r.status, r.getheaders(), body

    def get_range(self, url, a, b):
        status, hdrs, body = self.request("GET", url, {"Range": "bytes=%d-%d" % (a, b)})
        cr = dict((k.lower(), v) for k, v in hdrs).get("content-range", "")
        if status != 206 or not cr.startswith("bytes %d-%d/" % (a, b)) or len(body) != b - a + 1:
            raise RuntimeError("bad range reply %d %s" % (status, cr))
        return body

    def resolve(self, endpoint, url):
        for _ in range(5):
            status, hdrs, _ = self.request("HEAD", url)
            h = dict((k.lower(), v) for k, v in hdrs)
            if status in (301, 302, 307, 308):
                loc = h["location"]
                url = endpoint + loc.split("?")[0] if loc.startswith("/") else loc
                continue
            return url
        raise RuntimeError("too many redirects")

    def run(self, endpoint, repo, wanted):
        status, _, body = self.request("GET", "%s/api/models/%s/revision/main" % (endpoint, repo))
        commit = json.loads(body)["sha"]
        base = "%s/%s/resolve/%s/" % (endpoint, repo, commit)
        idx_url = self.resolve(endpoint, base + "model.safetensors.index.json")
        _, _, body = self.request("GET", idx_url)
        wm = json.loads(body)["weight_map"]
        shards = sorted(set(wm[n] for n in wanted))
        where, headers = {}, {}
        for s in shards:
            where[s] = self.resolve(endpoint, base + s)
            n = struct.unpack("<Q", self.get_range(where[s], 0, 7))[0]
            headers[s] = (8 + n, json.loads(self.get_range(where[s], 8, 8 + n - 1)))
        out = {}
        for name in wanted:
            s = wm[name]
            start, hdr = headers[s]
            a, b = hdr[name]["data_offsets"]
            out[name] = hashlib.sha256(self.get_range(where[s], start + a, start + b - 1)).hexdigest()
        return out


NOTES = [
    "## Notes",
    "",
    "- Round trips are counted as (wall time − the run's own bytes at line rate) / RTT. That credits",
    "  the client for every byte it moves, gap bytes included, so the table also gives the variant",
    "  that subtracts only the needed bytes, and the wall time against the floor.",
    "- The baseline opens a new connection for every request, as the issue specifies (one range per",
    "  request, sequential, no reuse). A keep-alive baseline would save about one RTT per request.",
    "- HTTP/2 multiplexing is configured (CURL_HTTP_VERSION_2TLS, CURLPIPE_MULTIPLEX, PIPEWAIT) but not",
    "  measured here: the fake servers speak HTTP/1.1, so ckptscope uses up to 64 connections per host.",
    "- Coalescing is chosen per batch by a cost model (round trips vs gap bytes, with the RTT and",
    "  bandwidth measured during the run). On this link, with 64 connections, separate exact ranges",
    "  win, which is why the default and the coalescing-off rows agree; with fewer connections or",
    "  more latency it merges (tests/integration/test_remote.py, case fetch_coalesces_gaps).",
    "- Large reads go through a read-ahead window (8 MiB doubling to 64 MiB) fetched in 8 MiB",
    "  parallel parts by a worker thread while the hash threads work on the previous window.",
    "",
]


# ------------------------------------------------------------------ ckptscope

CKS_ENV = {}


def run_ckptscope(binary, args, endpoint, extra_env=None):
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": tempfile.gettempdir(),
           "HF_ENDPOINT": endpoint, "CKPTSCOPE_NO_CACHE": "1"}
    env.update(CKS_ENV)
    env.update(extra_env or {})
    t0 = time.time()
    p = subprocess.run([binary] + args + ["--json", "--quiet"], env=env, capture_output=True, timeout=900)
    dt = time.time() - t0
    if p.returncode != 0:
        raise RuntimeError("ckptscope %s failed (%d): %s" % (" ".join(args), p.returncode, p.stderr.decode()))
    return dt, json.loads(p.stdout)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=os.path.join(ROOT, "build", "ckptscope"))
    ap.add_argument("--rtt-ms", type=float, default=50)
    ap.add_argument("--rate", type=float, default=12.5e6, help="bytes/s per direction (default 100 Mbit/s)")
    ap.add_argument("--shards", type=int, default=40)
    ap.add_argument("--per-shard", type=int, default=50)
    ap.add_argument("--tensors", type=int, default=500)
    ap.add_argument("--large-mib", type=int, default=96)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", default=os.path.join(HERE, "RESULTS.md"))
    ap.add_argument("--env", action="append", default=[], help="KEY=VALUE for ckptscope runs")
    ap.add_argument("--skip-baseline", action="store_true", help="for quick tuning runs only")
    args = ap.parse_args()
    for kv in args.env:
        k, _, v = kv.partition("=")
        CKS_ENV[k] = v
    binary = os.path.abspath(args.bin)
    tmp = tempfile.mkdtemp(prefix="cks-bench-remote-")
    procs = []
    hub = None
    try:
        root = os.path.join(tmp, "hub")
        names, files = make_fixture(root, args.shards, args.per_shard, args.large_mib, args.seed)
        wanted = random.Random(args.seed).sample(names, args.tensors)
        wanted_file = os.path.join(tmp, "wanted.txt")
        with open(wanted_file, "w") as f:
            f.write("\n".join(wanted) + "\n")
        hub = harness.start(root, state_file=os.path.join(tmp, "state.json"))
        hp, hub_port = start_proxy(hub.hub_port, args.rtt_ms / 2, args.rate, tmp, "hub")
        cp, cdn_port = start_proxy(hub.cdn_port, args.rtt_ms / 2, args.rate, tmp, "cdn")
        procs += [hp, cp]
        endpoint = "http://127.0.0.1:%d" % hub_port
        hub.config(cdn_public_url="http://127.0.0.1:%d" % cdn_port, hub_public_url=endpoint)
        rtt = args.rtt_ms / 1000.0

        # correctness reference from the fixture itself
        ref = {}
        for shard, data in files.items():
            if not shard.endswith(".safetensors"):
                continue
            n = struct.unpack("<Q", data[:8])[0]
            hdr = json.loads(data[8:8 + n])
            for name, e in hdr.items():
                a, b = e["data_offsets"]
                ref[name] = hashlib.sha256(data[8 + n + a:8 + n + b]).hexdigest()
        want_ref = {n: ref[n] for n in wanted}
        needed = 0
        for shard, data in files.items():
            if shard.endswith(".safetensors"):
                n = struct.unpack("<Q", data[:8])[0]
                hdr = json.loads(data[8:8 + n])
                needed += sum(e["data_offsets"][1] - e["data_offsets"][0] for k, e in hdr.items() if k in want_ref)

        # --- scattered: baseline
        base = Baseline()
        t0 = time.time()
        if not args.skip_baseline:
            got = base.run(endpoint, "bench/sharded", wanted)
            assert got == want_ref, "baseline read wrong bytes"
        t_base = time.time() - t0

        # --- scattered: ckptscope, default and without coalescing
        fetch = ["fetch", "bench/sharded", "--tensors-from", wanted_file]
        t_cks, j = run_ckptscope(binary, fetch, endpoint)
        assert {t["name"]: t["sha256"] for t in j["tensors"]} == want_ref, "ckptscope read wrong bytes"
        t_nc, jn = run_ckptscope(binary, fetch, endpoint, {"CKPTSCOPE_COALESCE_GAP": "0"})
        assert {t["name"]: t["sha256"] for t in jn["tensors"]} == want_ref

        # --- large: hash every tensor of the 96 MiB file
        t_large, jl = run_ckptscope(binary, ["hash", "bench/large"], endpoint)
        # utilisation counts the file's bytes, not the bytes on the wire: a byte fetched twice
        # is link time wasted, not used
        large_bytes = jl["transfer"]["bytes_fetched"]
        large_size = jl["source"]["files"][0]["size"]
        util_wall = large_size / t_large / args.rate
        util_xfer = large_size / jl["transfer"]["seconds"] / args.rate

        # Minimum dependent round trips of the scattered job: listing (revision -> commit, sizes,
        # hashes), index resolve, index GET, shard resolves, shard headers, tensor data = 6,
        # plus one handshake round trip on each of the two hosts = 8. (A client that takes the
        # commit from its first resolve's X-Repo-Commit and skips the listing needs 7.) No
        # client can finish before those round trips plus the needed bytes at line rate.
        min_rt = 8
        t_floor = min_rt * rtt + needed / args.rate
        rt_cks = t_cks / rtt
        # round trips the run spent beyond moving its bytes at line rate
        rt_excess = (t_cks - j["transfer"]["bytes_fetched"] / args.rate) / rtt
        rt_excess_needed = (t_cks - needed / args.rate) / rtt
        speedup = t_base / t_cks
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        cmd = ("/usr/bin/python3 bench/remote/bench_remote.py --bin %s --rtt-ms %g --rate %g --shards %d "
               "--per-shard %d --tensors %d --large-mib %d --seed %d"
               % (os.path.relpath(binary, ROOT), args.rtt_ms, args.rate, args.shards, args.per_shard,
                  args.tensors, args.large_mib, args.seed)) + "".join(" --env " + kv for kv in args.env)
        lines = [
            "# Remote reads on a slow link — ckptscope vs a sequential one-range-per-request client",
            "",
            "Command (run from the repository root; `make bench` runs it through bench/remote/run.sh):",
            "",
            "    " + cmd,
            "",
            "Link: fake Hub and fake CDN on 127.0.0.1, each behind bench/netem_proxy.py with %g ms RTT "
            "(%g ms each way) and a cap of %.1f MB/s (%.0f Mbit/s) per direction; HTTP/1.1 (the fake "
            "servers do not speak HTTP/2, so ckptscope runs several connections instead of multiplexing)."
            % (args.rtt_ms, args.rtt_ms / 2, args.rate / 1e6, args.rate * 8 / 1e6),
            "Measured %s UTC on this machine (%d cores)." % (time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
                                                             os.cpu_count() or 0),
            "",
            "## %d scattered tensors across %d shards (%d tensors in the checkpoint, %.1f MiB of tensor data needed)"
            % (args.tensors, args.shards, len(names), needed / 2**20),
            "",
            "| client | wall time | HTTP requests | bytes on the wire | wall time / RTT |",
            "| --- | ---: | ---: | ---: | ---: |",
            "| baseline (sequential, 1 range/request, new connection each) | %.2f s | %d | %.1f MiB | %.0f |"
            % (t_base, base.requests, base.bytes / 2**20, t_base / rtt),
            "| ckptscope fetch (default: coalescing chosen by the cost model) | %.2f s | %d | %.1f MiB | %.1f |"
            % (t_cks, j["transfer"]["requests"], j["transfer"]["bytes_fetched"] / 2**20, rt_cks),
            "| ckptscope fetch, coalescing off (`CKPTSCOPE_COALESCE_GAP=0`) | %.2f s | %d | %.1f MiB | %.1f |"
            % (t_nc, jn["transfer"]["requests"], jn["transfer"]["bytes_fetched"] / 2**20, t_nc / rtt),
            "",
            "- speed-up over the baseline: **%.1f×** (default), %.1f× (coalescing off); target ≥ 10×: %s"
            % (speedup, t_base / t_nc, "met" if speedup >= 10 else "NOT met"),
            "- round trips: the job has a dependency chain of at least %d round trips (listing, index resolve, "
            "index, shard resolves, shard headers, data, plus a handshake per host; 7 for a client that skips "
            "the listing), and no client "
            "can beat %d RTTs plus the %.1f MiB it needs at line rate = %.2f s. ckptscope's whole run "
            "(process start included) took %.2f s = **%.2f×** that floor."
            % (min_rt, min_rt, needed / 2**20, t_floor, t_cks, t_cks / t_floor),
            "- counted as round trips: the run minus its own bytes at line rate is %.1f RTTs = **%.2f×** the "
            "%d-RTT minimum (target ≤ 2×: %s); minus only the needed bytes it is %.1f RTTs = %.2f× (the "
            "difference is the first 4 KiB chunk read per shard header and any coalesced gaps)."
            % (rt_excess, rt_excess / min_rt, min_rt, "met" if rt_excess / min_rt <= 2 else "NOT met",
               rt_excess_needed, rt_excess_needed / min_rt),
            "",
            "## Large read: every tensor of a %d MiB file (`ckptscope hash`)" % args.large_mib,
            "",
            "| measure | value |",
            "| --- | ---: |",
            "| wall time (whole command, incl. listing, resolve, header) | %.2f s |" % t_large,
            "| file size | %.1f MiB |" % (large_size / 2**20),
            "| bytes on the wire | %.1f MiB |" % (large_bytes / 2**20),
            "| link utilisation over the wall time | **%.1f %%** |" % (100 * util_wall),
            "| link utilisation over the transfer time (engine) | %.1f %% |" % (100 * util_xfer),
            "| requests | %d |" % jl["transfer"]["requests"],
            "",
            "Target ≥ 90 %% of the cap: %s." % ("met" if util_wall >= 0.9 else "NOT met over the wall time"
                                                if util_xfer < 0.9 else "met over the transfer time, not the wall time"),
            "",
            "Load average during the run: %.2f %.2f %.2f (the proxies are Python: a busy machine "
            "shows up as lost link time)." % os.getloadavg(),
            "",
        ] + NOTES
        with open(args.out, "w") as f:
            f.write("\n".join(lines))
        print("\n".join(lines))
        return 0
    finally:
        for p in procs:
            p.terminate()
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
        if hub:
            hub.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
