#!/usr/bin/python3
"""The two ways the public analyses of the Solar-Open-100B / GLM-4.5-Air dispute read weights
(research/peers.md §2.1, §2.5, §3.1), as small standard-library clients, for the scale benchmark.

  ranges    approach 4 (sionic's original probes): for every tensor, resolve its shard on the Hub
            and follow the redirect, read the 8-byte header length, then the JSON header, then
            the tensor's bytes: three ranged GETs per tensor, each a resolve plus a CDN request,
            sequential, a new connection for every request (bare `requests.get`, no session).
            Headers are not kept between tensors (the issue's definition; sionic kept them in a
            dict for the run). Embedding rows of tokens matched by string are one request each
            after one header read per table, as sionic's compare_embeddings did. config.json,
            model.safetensors.index.json and (with rows) tokenizer.json are downloaded whole
            first, as hf_hub_download did.
  pool      the competent peer (issue 15): the same tensors through a keep-alive connection
            pool and 16 worker threads, each shard's redirect followed and its header read once
            (what HfFileSystem, or a requests.Session shared by 16 workers, does).
  download  approach 5 (sionic's "Revisited" and hyunwoongko): download whole shards; with
            --max-bytes, stop each shard after that many bytes (the driver extrapolates).

    peers.py ranges --endpoint URL --items ITEMS.json --out OUT.json
    peers.py pool --endpoint URL --items ITEMS.json [--workers 16] --out OUT.json
    peers.py download --endpoint URL --repo R --file F [--file F...] --tmp DIR [--max-bytes N] --out OUT.json

ITEMS.json: {"tensors": [{"repo", "tensor", "kind"}...], "embed_rows": N, "embed_pair": [A, B]}
OUT.json: per kind: items, requests, connections, body bytes, seconds; plus totals.
"""
import argparse
import http.client
import json
import os
import struct
import sys
import time
import urllib.parse


class Counter:
    def __init__(self):
        self.requests = 0
        self.connections = 0
        self.body = 0


def get(url, ctr, rng=None, max_redirects=5, sink=None, max_bytes=None):
    """One GET on a fresh connection, following redirects (each on a fresh connection, as
    requests does without a session). Returns the body (or the byte count with a sink)."""
    for _ in range(max_redirects + 1):
        u = urllib.parse.urlsplit(url)
        conn = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=180)
        ctr.connections += 1
        ctr.requests += 1
        headers = {"Accept-Encoding": "identity", "Connection": "close", "User-Agent": "peer-probe/1"}
        if rng:
            headers["Range"] = "bytes=%d-%d" % rng
        try:
            conn.request("GET", u.path + ("?" + u.query if u.query else ""), headers=headers)
            r = conn.getresponse()
            if r.status in (301, 302, 303, 307, 308):
                r.read()
                url = urllib.parse.urljoin(url, r.getheader("Location"))
                continue
            if r.status not in (200, 206):
                raise RuntimeError("GET %s: HTTP %d" % (url, r.status))
            if sink is None:
                body = r.read()
                ctr.body += len(body)
                return body
            n, buf = 0, bytearray(1 << 20)
            view = memoryview(buf)
            while max_bytes is None or n < max_bytes:
                k = r.readinto(view)
                if not k:
                    break
                sink.write(view[:k])
                n += k
            ctr.body += n
            return n
        finally:
            conn.close()
    raise RuntimeError("too many redirects for %s" % url)


def resolve_url(endpoint, repo, path):
    return "%s/%s/resolve/main/%s" % (endpoint.rstrip("/"), repo, urllib.parse.quote(path))


def shared_rows(tok_a, tok_b, n):
    va, vb = tok_a["model"]["vocab"], tok_b["model"]["vocab"]
    common = sorted(set(va) & set(vb))
    step = max(1, len(common) // max(n, 1))
    pick = common[::step][:n]
    return [(va[s], vb[s]) for s in pick]


def cmd_ranges(args):
    with open(args.items) as f:
        items = json.load(f)
    kinds = {}
    ctr_total = Counter()

    def account(kind, ctr, dt):
        k = kinds.setdefault(kind, {"items": 0, "requests": 0, "connections": 0, "body_bytes": 0, "seconds": 0.0})
        k["items"] += 1
        k["requests"] += ctr.requests
        k["connections"] += ctr.connections
        k["body_bytes"] += ctr.body
        k["seconds"] += dt
        ctr_total.requests += ctr.requests
        ctr_total.connections += ctr.connections
        ctr_total.body += ctr.body

    t_start = time.time()
    repos = sorted({t["repo"] for t in items["tensors"]} | set(items.get("embed_pair") or []))
    index, toks = {}, {}
    for repo in repos:  # hf_hub_download of the small files, whole
        c, t0 = Counter(), time.time()
        get(resolve_url(args.endpoint, repo, "config.json"), c)
        index[repo] = json.loads(get(resolve_url(args.endpoint, repo, "model.safetensors.index.json"), c))["weight_map"]
        if items.get("embed_rows") and repo in (items.get("embed_pair") or []):
            toks[repo] = json.loads(get(resolve_url(args.endpoint, repo, "tokenizer.json"), c))
        account("metadata files", c, time.time() - t0)

    def header(url, c):
        n = struct.unpack("<Q", get(url, c, (0, 7)))[0]
        if n > 64 << 20:
            raise RuntimeError("header too large")
        return 8 + n, json.loads(get(url, c, (8, 8 + n - 1)))

    for t in items["tensors"]:
        c, t0 = Counter(), time.time()
        url = resolve_url(args.endpoint, t["repo"], index[t["repo"]][t["tensor"]])
        base, hdr = header(url, c)
        a, b = hdr[t["tensor"]]["data_offsets"]
        body = get(url, c, (base + a, base + b - 1))
        if len(body) != b - a:
            raise RuntimeError("short read for %s" % t["tensor"])
        account(t["kind"], c, time.time() - t0)

    n_rows = items.get("embed_rows") or 0
    if n_rows:
        A, B = items["embed_pair"]
        pairs = shared_rows(toks[A], toks[B], n_rows)
        for side, repo in enumerate((A, B)):
            name = "model.embed_tokens.weight"
            url = resolve_url(args.endpoint, repo, index[repo][name])
            c, t0 = Counter(), time.time()
            base, hdr = header(url, c)
            account("embedding headers", c, time.time() - t0)
            a, _ = hdr[name]["data_offsets"]
            width = hdr[name]["shape"][1] * 2
            for p in pairs:
                c, t0 = Counter(), time.time()
                off = base + a + p[side] * width
                if len(get(url, c, (off, off + width - 1))) != width:
                    raise RuntimeError("short row")
                account("embedding rows", c, time.time() - t0)

    out = {"approach": "ranges", "kinds": kinds, "seconds": time.time() - t_start,
           "requests": ctr_total.requests, "connections": ctr_total.connections, "body_bytes": ctr_total.body}
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
    return 0


class Pool:
    """A competent stdlib client: keep-alive connections, one per (thread, host), reused for
    every request the thread makes (what a requests.Session per worker or HfFileSystem's
    aiohttp pool gives), a redirect followed once per file and its target kept, and 16 workers
    (concurrent.futures) issuing the ranges in parallel."""

    def __init__(self, workers):
        import concurrent.futures
        import threading
        self.local = threading.local()
        self.lock = threading.Lock()
        self.ctr = Counter()
        self.exe = concurrent.futures.ThreadPoolExecutor(workers)

    def conn(self, u, fresh=False):
        conns = self.local.__dict__.setdefault("conns", {})
        key = (u.hostname, u.port or 80)
        if fresh or key not in conns:
            if key in conns:
                conns[key].close()
            conns[key] = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=180)
            with self.lock:
                self.ctr.connections += 1
        return conns[key]

    def request(self, url, rng=None):
        """(status, headers, body) of one GET on this thread's keep-alive connection; a
        connection the server closed meanwhile is reopened once."""
        u = urllib.parse.urlsplit(url)
        headers = {"Accept-Encoding": "identity", "User-Agent": "peer-pool/1"}
        if rng:
            headers["Range"] = "bytes=%d-%d" % rng
        for attempt in (0, 1):
            c = self.conn(u, fresh=attempt == 1)
            try:
                c.request("GET", u.path + ("?" + u.query if u.query else ""), headers=headers)
                r = c.getresponse()
                body = r.read()
                break
            except (http.client.HTTPException, ConnectionError):
                if attempt:
                    raise
        with self.lock:
            self.ctr.requests += 1
            self.ctr.body += len(body)
        return r.status, r, body

    def get(self, url, rng=None):
        """GET following redirects; returns (final url, body)."""
        for _ in range(6):
            status, r, body = self.request(url, rng)
            if status in (301, 302, 303, 307, 308):
                url = urllib.parse.urljoin(url, r.getheader("Location"))
                continue
            if status not in (200, 206):
                raise RuntimeError("GET %s: HTTP %d" % (url, status))
            return url, body
        raise RuntimeError("too many redirects for %s" % url)

    def map(self, fn, items):
        return list(self.exe.map(fn, items))


def cmd_pool(args):
    """The thread-pool peer on the same items as `ranges`: small files, then one resolve and
    one header read per shard (8 bytes, then the header), then every tensor's bytes, each
    stage spread over the workers."""
    with open(args.items) as f:
        items = json.load(f)
    pool = Pool(args.workers)
    t_start = time.time()
    repos = sorted({t["repo"] for t in items["tensors"]})

    def small(job):
        repo, name = job
        return json.loads(pool.get(resolve_url(args.endpoint, repo, name))[1])

    got = pool.map(small, [(r, n) for r in repos for n in ("config.json", "model.safetensors.index.json")])
    index = {r: got[2 * i + 1]["weight_map"] for i, r in enumerate(repos)}
    shards = sorted({(t["repo"], index[t["repo"]][t["tensor"]]) for t in items["tensors"]})

    def head(job):
        repo, f = job
        url, raw = pool.get(resolve_url(args.endpoint, repo, f), (0, 7))  # the redirect, once
        n = struct.unpack("<Q", raw)[0]
        if n > 64 << 20:
            raise RuntimeError("header too large")
        return url, 8 + n, json.loads(pool.get(url, (8, 8 + n - 1))[1])

    heads = dict(zip(shards, pool.map(head, shards)))

    def tensor(t):
        url, base, hdr = heads[(t["repo"], index[t["repo"]][t["tensor"]])]
        a, b = hdr[t["tensor"]]["data_offsets"]
        if len(pool.get(url, (base + a, base + b - 1))[1]) != b - a:
            raise RuntimeError("short read for %s" % t["tensor"])
        return b - a

    tensor_bytes = sum(pool.map(tensor, items["tensors"]))
    pool.exe.shutdown()
    out = {"approach": "pool", "workers": args.workers, "seconds": time.time() - t_start,
           "requests": pool.ctr.requests, "connections": pool.ctr.connections, "body_bytes": pool.ctr.body,
           "tensor_bytes": tensor_bytes, "shards": len(shards), "tensors": len(items["tensors"])}
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
    return 0


def cmd_download(args):
    files = []
    t_start = time.time()
    for name in args.file:
        c, t0 = Counter(), time.time()
        path = os.path.join(args.tmp, "peer-download.%d.part" % os.getpid())
        try:
            with open(path, "wb") as sink:
                n = get(resolve_url(args.endpoint, args.repo, name), c, sink=sink, max_bytes=args.max_bytes)
                sink.flush()
        finally:
            if os.path.exists(path):
                os.unlink(path)
        files.append({"file": name, "bytes": n, "seconds": time.time() - t0, "requests": c.requests,
                      "connections": c.connections})
    out = {"approach": "download", "repo": args.repo, "files": files, "seconds": time.time() - t_start,
           "body_bytes": sum(f["bytes"] for f in files), "requests": sum(f["requests"] for f in files)}
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
    return 0


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("ranges")
    r.add_argument("--endpoint", required=True)
    r.add_argument("--items", required=True)
    r.add_argument("--out", required=True)
    p = sub.add_parser("pool")
    p.add_argument("--endpoint", required=True)
    p.add_argument("--items", required=True)
    p.add_argument("--workers", type=int, default=16)
    p.add_argument("--out", required=True)
    d = sub.add_parser("download")
    d.add_argument("--endpoint", required=True)
    d.add_argument("--repo", required=True)
    d.add_argument("--file", action="append", required=True)
    d.add_argument("--tmp", required=True)
    d.add_argument("--max-bytes", type=int)
    d.add_argument("--out", required=True)
    args = ap.parse_args()
    return {"ranges": cmd_ranges, "pool": cmd_pool, "download": cmd_download}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
