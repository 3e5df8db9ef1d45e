#!/usr/bin/python3
"""Issue 8: the headline audit at true scale, side by side with the ways people do it today.

    /usr/bin/python3 bench/scale/bench_scale.py --bin build/ckptscope [--quick] [--rtt-ms 40]
            [--rate-bits 1e9] [--out bench/RESULTS.md] [--work bench/out/scale]

The bench Hub (make_hub.py): full-size sparse checkpoints shaped like zai-org/GLM-4.5-Air
(47 shards), upstage/Solar-Open-100B (42 shards) and a fine-tune of the GLM-shaped one. The fake
Hub (tests/fakehub) answers the API and the resolve redirects; nginx serves the shard bytes by
sha256 as the CDN; link.py puts one simulated access line (RTT, bandwidth cap, shared by the Hub
and the CDN) in front of both and counts the bytes through it.

Each measurement is a fresh child process: wall time, CPU time (user + sys) and peak RSS from
wait4(); bytes and connections from the link's counters; requests from the fake Hub's and nginx's
logs (ckptscope's own --json "transfer" is recorded beside them).
"""
import argparse
import datetime
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tests", "fakehub"))
sys.path.insert(0, HERE)
import harness  # noqa: E402
import hubrepo  # noqa: E402
import make_hub  # noqa: E402

PY = "/usr/bin/python3"
A, B, DERIVED = make_hub.GLM["repo"], make_hub.SOLAR["repo"], make_hub.DERIV["repo"]
MiB = 1 << 20


# ---------------------------------------------------------------- servers

def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port, proc, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("server exited with %s" % proc.returncode)
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError("port %d not ready" % port)


def nginx_binary():
    for p in ("/usr/sbin/nginx", shutil.which("nginx") or ""):
        if p and os.path.exists(p):
            return p
    raise SystemExit("nginx is not installed: run scripts/deps.sh nginx (as root) or apt-get install nginx")


def start_nginx(work, store, nopush=True):
    """nginx as the CDN. `nopush` sets tcp_nopush (with sendfile: a reply's last short segment
    waits until the rest is acknowledged); nginx's own default is off."""
    """nginx serving every LFS blob of the store at /xet-bridge-us/<oid>/<sha256>, as the CDN."""
    blobs = os.path.join(work, "blobs")
    shutil.rmtree(blobs, ignore_errors=True)
    os.makedirs(blobs)
    state = hubrepo.load_state(store)
    for repo in state["repos"].values():
        for commit in repo["commits"].values():
            for entry in commit["files"].values():
                if entry.get("lfs") and not os.path.exists(os.path.join(blobs, entry["sha256"])):
                    os.symlink(os.path.abspath(entry["local"]), os.path.join(blobs, entry["sha256"]))
    for d in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        os.makedirs(os.path.join(work, "nginx-tmp", d), exist_ok=True)
    port = free_port()
    conf = os.path.join(work, "nginx.conf")
    user = "user root root;\n" if os.getuid() == 0 else ""
    with open(conf, "w") as f:
        f.write(f"""{user}worker_processes 2;
daemon off;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    log_format bench '$msec $status $request_length $bytes_sent $connection $connection_requests "$http_range" $uri';
    access_log {work}/nginx-access.log bench;
    client_body_temp_path {work}/nginx-tmp/body;
    proxy_temp_path {work}/nginx-tmp/proxy;
    fastcgi_temp_path {work}/nginx-tmp/fastcgi;
    uwsgi_temp_path {work}/nginx-tmp/uwsgi;
    scgi_temp_path {work}/nginx-tmp/scgi;
    sendfile on;
    tcp_nopush {"on" if nopush else "off"};
    keepalive_timeout 120s;
    keepalive_requests 1000000;
    max_ranges 1;
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{port};
        location ~ "^/xet-bridge-us/[0-9a-f]+/(?<sha>[0-9a-f]{{64}})$" {{
            alias {blobs}/$sha;
            etag off;
            add_header ETag "\\"$sha\\"" always;
            add_header Cache-Control "public, max-age=31536000" always;
        }}
    }}
}}
""")
    open(os.path.join(work, "nginx-access.log"), "w").close()
    proc = subprocess.Popen([nginx_binary(), "-p", work, "-c", conf, "-e", os.path.join(work, "nginx-error.log")],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, "nginx.stderr"), "w"),
                            preexec_fn=die_with_parent)
    wait_port(port, proc)
    return proc, port


def die_with_parent():
    try:
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)
    except OSError:
        pass


def stop(proc, sig=signal.SIGTERM, timeout=10):
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class Link:
    def __init__(self, work, hub_port, cdn_port, rtt_ms, rate_bits):
        self.state = os.path.join(work, "link.json")
        for p in (self.state, self.state + ".stats"):
            if os.path.exists(p):
                os.unlink(p)
        self.proc = subprocess.Popen([PY, os.path.join(HERE, "link.py"), "--hub-target", "127.0.0.1:%d" % hub_port,
                                      "--cdn-target", "127.0.0.1:%d" % cdn_port, "--rtt-ms", str(rtt_ms),
                                      "--rate-bits", str(rate_bits), "--state-file", self.state],
                                     stdin=subprocess.DEVNULL, preexec_fn=die_with_parent)
        deadline = time.time() + 10
        while not os.path.exists(self.state):
            if time.time() > deadline or self.proc.poll() is not None:
                raise RuntimeError("link proxy did not start")
            time.sleep(0.02)
        with open(self.state) as f:
            info = json.load(f)
        self.hub_port, self.cdn_port = info["hub_port"], info["cdn_port"]
        self.seq = 0

    def stats(self):
        self.proc.send_signal(signal.SIGUSR1)
        deadline = time.time() + 5
        while time.time() < deadline:
            try:
                with open(self.state + ".stats") as f:
                    s = json.load(f)
                if s["seq"] > self.seq:
                    self.seq = s["seq"]
                    return s
            except (OSError, ValueError):
                pass
            time.sleep(0.01)
        raise RuntimeError("link stats timed out")


class Bench:
    def __init__(self, work, hub, link, nginx_log):
        self.work, self.hub, self.link, self.nginx_log = work, hub, link, nginx_log

    def measure(self, name, argv, env=None, cwd=None):
        """Run argv as a fresh child; everything a row of the tables needs."""
        self.hub.clear_log()
        s0 = self.link.stats()
        n0 = os.path.getsize(self.nginx_log)
        stdout = open(os.path.join(self.work, name + ".stdout"), "wb")
        stderr = open(os.path.join(self.work, name + ".stderr"), "wb")
        # Peak RSS from GNU time: Linux keeps the high-water RSS of the process that spawned a
        # child across its exec, so wait4 here reported at least this Python process's size.
        rss_file = os.path.join(self.work, name + ".rss")
        t0 = time.monotonic()
        proc = subprocess.Popen(["/usr/bin/time", "-f", "%M", "-o", rss_file, *argv], env=env, cwd=cwd or ROOT,
                                stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr)
        _, status, ru = os.wait4(proc.pid, 0)
        wall = time.monotonic() - t0
        try:
            with open(rss_file) as f:
                peak_kib = int(f.read().split()[-1])
        except (OSError, ValueError, IndexError):
            peak_kib = ru.ru_maxrss
        proc.returncode = os.waitstatus_to_exitcode(status)
        stdout.close()
        stderr.close()
        time.sleep(0.2)  # let the servers finish their log lines
        s1 = self.link.stats()
        hub_log = self.hub.log()
        with open(self.nginx_log) as f:
            f.seek(n0)
            cdn_lines = [l.split() for l in f.read().splitlines() if l.strip()]
        wire = {k: {f: s1[k][f] - s0[k][f] for f in ("connections", "up_bytes", "down_bytes")} for k in ("hub", "cdn")}
        row = {"name": name, "argv": argv, "exit": proc.returncode, "wall_s": wall,
               "cpu_s": ru.ru_utime + ru.ru_stime, "user_s": ru.ru_utime, "sys_s": ru.ru_stime,
               "peak_rss_mib": peak_kib / 1024.0,
               "wire_bytes": sum(wire[k]["up_bytes"] + wire[k]["down_bytes"] for k in wire),
               "down_bytes": sum(wire[k]["down_bytes"] for k in wire),
               "connections": sum(wire[k]["connections"] for k in wire),
               "hub_requests": len(hub_log), "cdn_requests": len(cdn_lines),
               "cdn_body_bytes": sum(int(l[3]) for l in cdn_lines),
               "requests": len(hub_log) + len(cdn_lines), "wire": wire}
        self.last_cdn = cdn_lines
        with open(os.path.join(self.work, name + ".cdn.log"), "w") as f:
            f.write("\n".join(" ".join(l) for l in cdn_lines) + "\n")
        with open(os.path.join(self.work, name + ".hub.log"), "w") as f:
            json.dump(hub_log, f)
        if proc.returncode != 0:
            with open(os.path.join(self.work, name + ".stderr"), errors="replace") as f:
                tail = f.read()[-2000:]
            print("%s: exit %d\n%s" % (name, proc.returncode, tail), file=sys.stderr)
        row.setdefault("by_role", None)
        print("%-28s %7.2f s wall %7.2f s cpu %8.1f MiB rss %14d wire B %6d req %5d conn" %
              (name, wall, row["cpu_s"], row["peak_rss_mib"], row["wire_bytes"], row["requests"], row["connections"]),
              file=sys.stderr, flush=True)
        return row


# ---------------------------------------------------------------- what the analyses need

def model_tensors(repo):
    """{name: (shard, dtype, shape, nbytes)} from the generator's plan (the same as the files)."""
    m = {r["repo"]: r for r in make_hub.MODELS}[repo]
    shards = make_hub.shard_plan(m)
    out = {}
    for i, s in enumerate(shards):
        f = "model-%05d-of-%05d.safetensors" % (i + 1, len(shards))
        for t in s:
            out[t[0]] = (f, t[1], t[2], make_hub.nbytes(t))
    return out


def decoder_layers(repo):
    m = {r["repo"]: r for r in make_hub.MODELS}[repo]
    return m["layers"], m["first_dense"]


def needed(repo, which):
    """The tensors an analysis reads, by kind: 'norms' (T2) or 'compare' (T2 + T3/T4 inputs)."""
    n, first_dense = decoder_layers(repo)
    items = []
    for l in range(n):
        p = "model.layers.%d." % l
        items += [(p + "input_layernorm.weight", "norm gains"), (p + "post_attention_layernorm.weight", "norm gains")]
        if which == "compare":
            items += [(p + "self_attn.k_proj.weight", "attention k/v"), (p + "self_attn.v_proj.weight", "attention k/v")]
            if l >= first_dense:
                items += [(p + "mlp.gate.weight", "routers"), (p + "mlp.gate.e_score_correction_bias", "router biases")]
    return items


def shard_sizes(repo):
    d = os.path.join(HUBDIR[0], "models", repo.replace("/", "__"))
    return {f: os.path.getsize(os.path.join(d, f)) for f in os.listdir(d) if f.endswith(".safetensors")}


HUBDIR = [None]
STORE = [None]


# ---------------------------------------------------------------- report

def fmt_bytes(n):
    if n is None:
        return "–"
    for unit, k in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= k:
            return "%.3g %s" % (n / k, unit) if n < 100 * k else "%.0f %s" % (n / k, unit)
    return "%d B" % n


def fmt_s(s):
    if s is None:
        return "–"
    if s >= 120:
        return "%.0f s (%.1f min)" % (s, s / 60)
    return "%.3g s" % s if s < 10 else "%.1f s" % s


def ratio(a, b):
    if not a or not b:
        return "–"
    r = a / b
    return "%.0f×" % r if r >= 100 else ("%.1f×" % r if r >= 1 else "%.2f×" % r)


def machine():
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal"):
                mem = int(line.split()[1]) * 1024
    nginx = subprocess.run([nginx_binary(), "-v"], capture_output=True, text=True).stderr.strip()
    return {"cpu": cpu, "cores": os.cpu_count(), "mem_gib": mem / 2**30, "kernel": platform.release(),
            "python": platform.python_version(), "nginx": nginx.replace("nginx version: ", ""),
            "load": os.getloadavg()}


# ---------------------------------------------------------------- main

def runs_name(args):
    return "runs-quick" if args.quick else "runs"


def results_name(args):
    return "results-quick.json" if args.quick else "results.json"


def on_term(signum, frame):
    raise SystemExit(128 + signum)  # run the finally blocks: stop nginx, the link, the fake Hub


def main():
    signal.signal(signal.SIGTERM, on_term)
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=os.path.join(ROOT, "build", "ckptscope"))
    ap.add_argument("--work", default=os.path.join(ROOT, "bench", "out", "scale"))
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "RESULTS.md"))
    ap.add_argument("--rtt-ms", type=float, default=float(os.environ.get("BENCH_RTT_MS", 40)))
    ap.add_argument("--rate-bits", type=float, default=float(os.environ.get("BENCH_RATE_BITS", 1e9)))
    ap.add_argument("--quick", action="store_true", default=os.environ.get("BENCH_QUICK") == "1")
    ap.add_argument("--download-shards", type=int, default=None,
                    help="shards downloaded whole per model for approach 5 (default 0, i.e. 1 GB of one)")
    ap.add_argument("--serve", type=float, default=0, help="start the servers and wait this long (debugging)")
    ap.add_argument("--derived", action="store_true", default=os.environ.get("BENCH_DERIVED") == "1",
                    help="also compare the GLM-shaped model with its fine-tune (BENCH_DERIVED=1)")
    ap.add_argument("--render-only", action="store_true",
                    help="rewrite the report from the last run's results.json (after a report change)")
    ap.add_argument("--only", default="", help="comma list of scenario keys to run (debugging)")
    ap.add_argument("--compare-runs", type=int, default=int(os.environ.get("BENCH_COMPARE_RUNS", 3)),
                    help="cold default compares (issue 15: min and median)")
    ap.add_argument("--t2-runs", type=int, default=int(os.environ.get("BENCH_T2_RUNS", 3)),
                    help="cold T2 runs of ckptscope and of the thread-pool peer, taking turns (min and median)")
    args = ap.parse_args()
    if args.render_only:
        return render_only(args)
    t_run = time.time()
    work = os.path.abspath(args.work)
    os.makedirs(work, exist_ok=True)
    binary = os.path.abspath(args.bin)
    hubdir = os.path.join(work, "hub")
    HUBDIR[0] = hubdir
    STORE[0] = os.path.join(hubdir, "store")
    t0 = time.time()
    summary = make_hub.build(hubdir, max(1, min(4, os.cpu_count() or 1)))
    build_s = time.time() - t0
    print("bench hub ready (%.0f s): %s" % (build_s, ", ".join("%s %d shards %.0f GB" % (
        r, v["shards"], v["logical_bytes"] / 1e9) for r, v in summary["models"].items())), file=sys.stderr)

    runs = os.path.join(work, runs_name(args))
    shutil.rmtree(runs, ignore_errors=True)
    os.makedirs(runs)
    nginx = link = None
    rows, peers = {}, {}
    with harness.start(os.path.join(hubdir, "store"), stderr=open(os.path.join(runs, "fakehub.stderr"), "w")) as hub:
        try:
            nginx, nginx_port = start_nginx(runs, os.path.join(hubdir, "store"))
            link = Link(runs, hub.hub_port, nginx_port, args.rtt_ms, args.rate_bits)
            hub.config(cdn_public_url="http://127.0.0.1:%d" % link.cdn_port,
                       hub_public_url="http://127.0.0.1:%d" % link.hub_port)
            endpoint = "http://127.0.0.1:%d" % link.hub_port
            bench = Bench(runs, hub, link, os.path.join(runs, "nginx-access.log"))
            if args.serve:  # debugging: keep the servers up
                print(json.dumps({"endpoint": endpoint, "hub_direct": hub.hub_url}), flush=True)
                time.sleep(args.serve)
                return 0
            rows, peers = run_all(args, bench, binary, endpoint, runs)
        finally:
            stop(link.proc if link else None)
            stop(nginx, signal.SIGQUIT)
            stop(nginx)
    write_report(args, rows, peers, summary, build_s, time.time() - t_run, binary)
    return 0 if all(r["exit"] == 0 for r in rows.values()) else 1


def ck_env(cache, home):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "CKPTSCOPE_", "XDG_CACHE"))}
    env.update(CKPTSCOPE_CACHE=cache, HF_HOME=home, HOME=home)
    return env


def run_all(args, bench, binary, endpoint, runs):
    only = set(filter(None, args.only.split(",")))
    want = lambda k: not only or k in only  # noqa: E731
    rows, peers = {}, {}

    def ck(name, cache, *extra, pair=(A, B)):
        if args.quick:  # the permutation nulls dominate ckptscope's time; quick mode uses fewer
            extra = extra + ("--permutations", "99")
        env = ck_env(cache, os.path.join(runs, "home"))
        env["HF_ENDPOINT"] = endpoint
        row = bench.measure(name, [binary, "compare", pair[0], pair[1], "--json", "--quiet", *extra], env=env)
        row["by_role"], row["hole_ranges"] = by_role(bench.last_cdn, STORE[0])
        try:
            with open(os.path.join(runs, name + ".stdout")) as f:
                js = json.load(f)
            row["transfer"] = js.get("transfer")
            row["verdict"] = js.get("verdict")
            row["sampling"] = js.get("sampling")
            row["tests"] = {t.get("name", t.get("test", "?")): {k: t.get(k) for k in ("statistic", "p", "rejects", "valid", "bytes_read")}
                            for t in js.get("tests", [])}
        except (OSError, ValueError):
            pass
        return row

    os.makedirs(os.path.join(runs, "home"), exist_ok=True)
    # 3. T2 alone, cold: ckptscope and the thread-pool peer taking turns, several runs each
    # (issue 15 asks for min and median); the median run is the row the tables show
    if want("t2"):
        t2_runs, pool_runs = [], []
        for i in range(args.t2_runs):
            t2_runs.append(ck("ckptscope-T2-cold-%d" % i, os.path.join(runs, "cache-t2-%d" % i), "--tests", "T2"))
            pool_runs.append(peer_pool(bench, endpoint, runs, "norms", "%d" % i))
        rows["t2_cold"] = median_row(t2_runs)
        rows["t2_cold"]["runs_wall_s"] = [r["wall_s"] for r in t2_runs]
        peers["pool_t2"] = median_row(pool_runs)
        peers["pool_t2"]["runs_wall_s"] = [r["wall_s"] for r in pool_runs]
        if args.quick:
            rows["t2_warm"] = ck("ckptscope-T2-warm", os.path.join(runs, "cache-t2-0"), "--tests", "T2")
    # 1, 2. default compare, cold then warm (minutes of CPU today: not in quick mode)
    if want("compare") and (not args.quick or "compare" in only):
        # issue 15 asks for min and median: the cold run is repeated (each on an empty cache),
        # the median run is the row the tables show and its cache serves the warm rows
        cold = [ck("ckptscope-compare-cold-%d" % i, os.path.join(runs, "cache-compare-%d" % i))
                for i in range(args.compare_runs)]
        rows["compare_cold"] = median_row(cold)
        for key in ("wall_s", "cpu_s", "peak_rss_mib"):
            rows["compare_cold"]["runs_" + key] = [r[key] for r in cold]
        warm_cache = os.path.join(runs, "cache-compare-%d" % cold.index(min(cold, key=lambda r: abs(r["wall_s"] - rows["compare_cold"]["wall_s"]))))
        rows["compare_warm"] = ck("ckptscope-compare-warm", warm_cache)
        # another --seed on the warm cache: the seed picks which rows are sampled, so the rows it
        # picks anew are fetched (docs/performance.md quotes this row)
        rows["compare_seed"] = ck("ckptscope-compare-warm-seed7", warm_cache, "--seed", "7")
    if want("derived") and args.derived:
        rows["derived_cold"] = ck("ckptscope-compare-derivative-cold", os.path.join(runs, "cache-derived"), pair=(A, DERIVED))

    # 4. one request per tensor, sequential, new connection each, headers re-read per tensor
    if want("ranges"):
        peers["ranges_t2"] = peer_ranges(args, bench, endpoint, runs, "norms")
        peers["ranges_compare"] = peer_ranges(args, bench, endpoint, runs, "compare",
                                              embed_rows=embed_rows_of(rows.get("compare_cold")))
    # 5. whole shards
    if want("download"):
        peers["download"] = peer_download(args, bench, endpoint, runs)
    return rows, peers


def median_row(rs):
    """The run with the median wall time (the lower middle of an even count)."""
    return dict(sorted(rs, key=lambda r: r["wall_s"])[(len(rs) - 1) // 2])


def peer_pool(bench, endpoint, runs, which, tag):
    """The competent peer (peers.py pool): the same tensors as approach 4, over keep-alive
    connections and 16 workers, each shard's header read once."""
    items = {"tensors": [{"repo": r, "tensor": n, "kind": k} for r in (A, B) for n, k in needed(r, which)]}
    path = os.path.join(runs, "peer-pool-%s.items.json" % which)
    with open(path, "w") as f:
        json.dump(items, f)
    out = os.path.join(runs, "peer-pool-%s-%s.json" % (which, tag))
    row = bench.measure("peer-pool-%s-%s" % (which, tag), [PY, os.path.join(HERE, "peers.py"), "pool", "--endpoint",
                                                          endpoint, "--items", path, "--out", out])
    with open(out) as f:
        row["result"] = json.load(f)
    return row


EMBED_ROWS_DEFAULT = 6143  # what the default compare reported on this bench hub (2026-11-28)


def embed_rows_of(row):
    """How many shared-token embedding rows ckptscope's default compare read per model (its
    --json "sampling" says "embedding rows of N shared tokens")."""
    import re
    m = re.search(r"embedding rows of (\d+) shared tokens", (row or {}).get("sampling") or "")
    return int(m.group(1)) if m else EMBED_ROWS_DEFAULT


def ranges_estimate(res, full_count):
    """Approach 4's totals: per kind, the measured cost per item times the full item count."""
    est = {"seconds": 0.0, "body_bytes": 0.0, "requests": 0.0, "connections": 0.0}
    for kind, k in res["kinds"].items():
        f = full_count.get(kind, k["items"]) / k["items"]
        for key in est:
            est[key] += k[key] * f
    return est


LAYOUT = {}


def by_role(cdn_log, store):
    """Bytes and ranges of a run's CDN requests by what they hit: headers, or a tensor role.
    Also counts ranges that touched a hole (a tensor without generated values): there should
    be none, or the benchmark is measuring reads of zeros."""
    if not LAYOUT:
        sha = {}
        for repo in hubrepo.load_state(store)["repos"].values():
            for c in repo["commits"].values():
                for path, e in c["files"].items():
                    if e.get("lfs"):
                        sha[e["sha256"]] = (repo["id"], path)
        LAYOUT["sha"] = sha
        for m in make_hub.MODELS:
            shards = make_hub.shard_plan(m)
            for i, s in enumerate(shards):
                f = "model-%05d-of-%05d.safetensors" % (i + 1, len(shards))
                head, placed, _ = make_hub.layout(s)
                LAYOUT[(m["repo"], f)] = (len(head), [(len(head) + off, len(head) + off + make_hub.nbytes(t), t[0], t[3])
                                                      for t, off in placed])
    out, holes = {}, 0

    def add(role, n):
        r = out.setdefault(role, {"bytes": 0, "ranges": 0})
        r["bytes"] += n
        r["ranges"] += 1

    for p in cdn_log:
        key = LAYOUT["sha"].get(p[7].rsplit("/", 1)[-1])
        if key not in LAYOUT:
            add("other files", int(p[3]))
            continue
        if "=" not in p[6]:
            add("whole shards", int(p[3]))
            continue
        a, b = (int(x) for x in p[6].strip('"').split("=", 1)[1].split("-"))
        hlen, tensors = LAYOUT[key]
        if a < hlen:
            add("headers", min(b + 1, hlen) - a)
        for s0, s1, name, fill in tensors:
            if s1 > a and s0 <= b:
                leaf = name.split(".")
                role = {"input_layernorm": "norm gains", "post_attention_layernorm": "norm gains",
                        "k_proj": "attention k/v", "v_proj": "attention k/v", "gate": "routers and router biases",
                        "embed_tokens": "embedding rows"}.get(leaf[-2] if leaf[-1] != "e_score_correction_bias" else "gate",
                                                               name if not fill else "other (%s)" % leaf[-2])
                add(role, min(b + 1, s1) - max(a, s0))
                holes += 0 if fill else 1
    return out, holes


def peer_ranges(args, bench, endpoint, runs, which, embed_rows=0):
    """Approach 4 on the full list, or on a deterministic subsample (every k-th item of each
    kind) extrapolated per kind when the full list would take too long."""
    full = [(repo, name, kind) for repo in (A, B) for name, kind in needed(repo, which)]
    by_kind = {}
    for it in full:
        by_kind.setdefault(it[2], []).append(it)
    # every k-th item, extrapolated per kind (make bench stays near 10 minutes: the full T2 list
    # alone took 95 s, and a per-item cost does not change with the sample)
    if which == "norms":
        stride = 8 if args.quick else 4
    else:
        stride = 24 if args.quick else 8
    row_stride = 512 if args.quick else 128
    sample = [it for kind, lst in by_kind.items() for it in lst[::stride]]
    n_rows_measured = (embed_rows + row_stride - 1) // row_stride if embed_rows else 0
    items = {"tensors": [{"repo": r, "tensor": n, "kind": k} for r, n, k in sample],
             "embed_rows": n_rows_measured, "embed_pair": [A, B] if embed_rows else []}
    path = os.path.join(runs, "peer-ranges-%s.items.json" % which)
    with open(path, "w") as f:
        json.dump(items, f)
    out = os.path.join(runs, "peer-ranges-%s.json" % which)
    row = bench.measure("peer-ranges-" + which, [PY, os.path.join(HERE, "peers.py"), "ranges", "--endpoint", endpoint,
                                                  "--items", path, "--out", out])
    with open(out) as f:
        res = json.load(f)
    # extrapolate per kind: measured seconds and bytes per item x the full count
    full_count = {k: len(v) for k, v in by_kind.items()}
    full_count["metadata files"] = res["kinds"].get("metadata files", {}).get("items", 0)
    if embed_rows:
        full_count["embedding rows"] = 2 * embed_rows
        full_count["embedding headers"] = 2
    est = ranges_estimate(res, full_count)
    wire_per_body = row["wire_bytes"] / max(res["body_bytes"], 1)
    return {"measured": row, "result": res, "sample_items": len(sample) + 2 * n_rows_measured,
            "full_items": len(full) + 2 * embed_rows, "stride": stride, "row_stride": row_stride,
            "embed_rows": embed_rows, "full_count": full_count,
            "estimate": {"wall_s": est["seconds"], "body_bytes": est["body_bytes"],
                         "wire_bytes": est["body_bytes"] * wire_per_body, "requests": est["requests"],
                         "connections": est["connections"]},
            "extrapolated": stride > 1 or (embed_rows and row_stride > 1)}


def peer_download(args, bench, endpoint, runs):
    """Approach 5: whole shards, a few measured, extrapolated linearly by bytes."""
    tmp = os.path.join(runs, "download-tmp")
    os.makedirs(tmp, exist_ok=True)
    need = {}
    for which in ("norms", "compare"):
        shards = {}
        for repo in (A, B):
            tensors = model_tensors(repo)
            files = sorted({tensors[n][0] for n, _ in needed(repo, which)})
            sizes = shard_sizes(repo)
            shards[repo] = {f: sizes[f] for f in files}
        need[which] = shards
    measured = []
    # 1 GB of one shard per model by default (a whole shard took 78 s; the rate is what counts)
    n = args.download_shards if args.download_shards is not None else 0
    for repo in (A, B):
        files = sorted(need["compare"][repo])[1:1 + max(n, 1)]  # a middle-of-model shard, not the embedding one
        extra = ["--max-bytes", str(1 << 30)] if n == 0 else []
        name = "peer-download-" + repo.split("/")[1]
        out = os.path.join(runs, name + ".json")
        row = bench.measure(name, [PY, os.path.join(HERE, "peers.py"), "download", "--endpoint", endpoint, "--repo", repo,
                                   *sum((["--file", f] for f in files), []), "--tmp", tmp, *extra, "--out", out])
        with open(out) as f:
            row["result"] = json.load(f)
        measured.append(row)
    body = sum(r["result"]["body_bytes"] for r in measured)
    secs = sum(r["wall_s"] for r in measured)
    wire = sum(r["wire_bytes"] for r in measured)
    est = {}
    rate = args.rate_bits / 8.0 if args.rate_bits > 0 else None
    for which, shards in need.items():
        total = sum(sum(s.values()) for s in shards.values())
        n_shards = sum(len(s) for s in shards.values())
        measured_wall = secs / body * total
        # The Python link proxy may not reach the nominal rate on a loaded machine: the peers
        # are charged the faster of the measured rate and the line rate (+ 4 RTT per shard).
        line_wall = total / rate + n_shards * 4 * args.rtt_ms / 1000.0 if rate else measured_wall
        est[which] = {"shards": n_shards, "body_bytes": total, "measured_rate_wall_s": measured_wall,
                      "line_rate_wall_s": line_wall,
                      "wire_bytes": wire / body * total, "wall_s": min(measured_wall, line_wall),
                      "requests": 2 * sum(len(s) for s in shards.values()),
                      "cpu_s": sum(r["cpu_s"] for r in measured) / body * total,
                      "peak_rss_mib": max(r["peak_rss_mib"] for r in measured),
                      "disk_bytes": total}
    return {"measured": measured, "measured_body": body, "measured_s": secs, "estimate": est,
            "partial": n == 0}


def render_only(args):
    work = os.path.abspath(args.work)
    with open(os.path.join(work, results_name(args))) as f:
        saved = json.load(f)
    rows, peers = saved["rows"], saved["peers"]
    for name, row in rows.items():  # fields added to the report after the run
        if "sampling" not in row:
            try:
                with open(os.path.join(work, runs_name(args), row["name"] + ".stdout")) as f:
                    row["sampling"] = json.load(f).get("sampling")
            except (OSError, ValueError):
                pass
    p = peers.get("ranges_compare")
    if p and rows.get("compare_cold"):
        n = embed_rows_of(rows["compare_cold"])
        if n != p["embed_rows"]:  # the row count ckptscope reported, not one guessed from bytes
            p["embed_rows_at_run"] = p["embed_rows"]
            p["full_items"] += 2 * (n - p["embed_rows"])
            p["embed_rows"] = n
            p["full_count"]["embedding rows"] = 2 * n
            est = ranges_estimate(p["result"], p["full_count"])
            wire_per_body = p["measured"]["wire_bytes"] / max(p["result"]["body_bytes"], 1)
            p["estimate"] = {"wall_s": est["seconds"], "body_bytes": est["body_bytes"],
                             "wire_bytes": est["body_bytes"] * wire_per_body, "requests": est["requests"],
                             "connections": est["connections"]}
    meta = saved.get("meta") or {}
    if "run_s" not in meta:  # an older results.json: from the run directory's first and last files
        meta["run_s"] = (os.path.getmtime(os.path.join(work, results_name(args))) -
                         os.path.getmtime(os.path.join(work, runs_name(args), "nginx.conf")))
    write_report(args, rows, peers, saved["summary"], meta.get("build_s", 0), meta.get("run_s", 0),
                 meta.get("binary", os.path.abspath(args.bin)))
    return 0


def write_report(args, rows, peers, summary, build_s, run_s, binary):
    from report import render  # bench/scale/report.py
    text = render(args, rows, peers, summary, build_s, run_s, binary, machine())
    with open(args.out + ".tmp", "w") as f:  # replaced whole: never a truncated report
        f.write(text)
    os.replace(args.out + ".tmp", args.out)
    with open(os.path.join(os.path.abspath(args.work), results_name(args)), "w") as f:
        json.dump({"rows": rows, "peers": peers, "summary": summary,
                   "meta": {"build_s": build_s, "run_s": run_s, "binary": binary, "quick": args.quick,
                            "rtt_ms": args.rtt_ms, "rate_bits": args.rate_bits}}, f, indent=1, default=str)
    print("wrote %s" % args.out, file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
