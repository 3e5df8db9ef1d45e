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
  download  approach 5 (sionic's "Revisited" and hyunwoongko): download whole shards; with
            --max-bytes, stop each shard after that many bytes (the driver extrapolates).

    peers.py ranges --endpoint URL --items ITEMS.json --out OUT.json
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
    d = sub.add_parser("download")
    d.add_argument("--endpoint", required=True)
    d.add_argument("--repo", required=True)
    d.add_argument("--file", action="append", required=True)
    d.add_argument("--tmp", required=True)
    d.add_argument("--max-bytes", type=int)
    d.add_argument("--out", required=True)
    args = ap.parse_args()
    return cmd_ranges(args) if args.cmd == "ranges" else cmd_download(args)


if __name__ == "__main__":
    sys.exit(main())
