#!/usr/bin/python3
"""A local emulator of the Hugging Face Hub and its CDN, for tests (Python standard library only).

    fakehub.py --root DIR --state-file FILE [--tls-dir DIR] [--url-ttl S] [--rate-limit N]
               [--rate-window S] [--no-retry-after] [--hub-port P] [--cdn-port P]

Two listeners on 127.0.0.1 (different ports, so a client treats them as different hosts):
the *hub* (resolve, API, control endpoints) and the *cdn* (LFS content by sha256, signed URLs).
Repositories are read from DIR/state.json (written by hubrepo.py) whenever it changes.
See README.md next to this file for the protocol details and the fault-injection API.
"""

import argparse
import base64
import calendar
import gzip
import hashlib
import hmac
import http.server
import json
import math
import os
import select
import signal
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hubrepo  # noqa: E402

KEYWORDS = ("revision", "tree", "paths-info", "refs", "commits", "resolve", "raw", "xet-read-token")
KIND_PLURAL = {"model": "models", "dataset": "datasets"}
PLURAL_KIND = {"models": "model", "datasets": "dataset"}
STATUS_FAULTS = {"status", "416", "429", "500", "502", "503", "504", "expired", "denied"}
BODY_FAULTS = {"short_body", "reset", "stall", "drip"}
RANGE_FAULTS = {"ignore_range", "wrong_content_range"}
OTHER_FAULTS = {"no_content_length", "delay", "corrupt", "served_size", "extra_body", "listing", "cork",
                "nagle"}
ALL_FAULTS = STATUS_FAULTS | BODY_FAULTS | RANGE_FAULTS | OTHER_FAULTS
REASONS = {416: "Range Not Satisfiable", 429: "Too Many Requests"}

STOP = threading.Event()


def iso(t):
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + ".000Z"


def quote_path(p):
    return urllib.parse.quote(p, safe="/")


# --------------------------------------------------------------------------- store

class Store:
    """The repos of state.json, reloaded when the file changes."""

    def __init__(self, root):
        self.root = os.path.abspath(root)
        self.path = os.path.join(self.root, "state.json")
        self.lock = threading.Lock()
        self.sig = None
        self.state = hubrepo.empty_state()
        self.by_sha256 = {}
        self.valid_tokens = set()

    def get(self):
        try:
            st = os.stat(self.path)
            sig = (st.st_mtime_ns, st.st_size, st.st_ino)
        except FileNotFoundError:
            sig = None
        with self.lock:
            if sig != self.sig:
                self._reload(sig)
            return self

    def _reload(self, sig):
        state = hubrepo.load_state(self.root) if sig else hubrepo.empty_state()
        by_sha = {}
        tokens = set(state.get("tokens", []))
        for repo in state["repos"].values():
            tokens |= set(repo.get("tokens", []))
            for commit in repo["commits"].values():
                for p, e in commit["files"].items():
                    ent = by_sha.setdefault(e["sha256"], {"local": e["local"], "size": e["size"],
                                                          "names": set()})
                    ent["names"].add("%s/%s" % (repo["id"], p))
        self.state, self.by_sha256, self.valid_tokens, self.sig = state, by_sha, tokens, sig

    def repo(self, kind, repo_id):
        return self.state["repos"].get(hubrepo.repo_key(kind, repo_id))

    def renamed(self, kind, repo_id):
        return self.state["renames"].get(hubrepo.repo_key(kind, repo_id))


# --------------------------------------------------------------------------- faults, log, rate limits

class Faults:
    def __init__(self):
        self.lock = threading.Lock()
        self.items = []

    def add(self, items):
        if isinstance(items, dict):
            items = [items]
        clean = []
        for f in items:
            if not isinstance(f, dict):
                raise ValueError("a fault must be an object")
            kind = str(f.get("kind", ""))
            if kind not in ALL_FAULTS:
                raise ValueError("unknown fault kind %r (known: %s)" % (kind, ", ".join(sorted(ALL_FAULTS))))
            server = f.get("server", "any")
            if server not in ("hub", "cdn", "any"):
                raise ValueError("fault server must be hub, cdn or any")
            if kind == "served_size" and not (isinstance(f.get("size"), int) and f["size"] >= 0):
                raise ValueError("a served_size fault needs \"size\": the byte count the CDN pretends the file has")
            if kind == "corrupt" and "file_offset" in f and not (isinstance(f["file_offset"], int) and f["file_offset"] >= 0):
                raise ValueError("corrupt: file_offset must be a byte offset (>= 0)")
            if kind == "drip" and not (isinstance(f.get("bytes_per_second", 2), (int, float)) and
                                       f.get("bytes_per_second", 2) > 0):
                raise ValueError("drip: bytes_per_second must be > 0")
            if kind == "extra_body" and f.get("content_length", "body") not in ("body", "none"):
                raise ValueError("extra_body: content_length is body or none")
            if kind == "listing" and not (isinstance(f.get("sizes", {}), dict) and isinstance(f.get("add", []), list)
                                          and isinstance(f.get("sha", ""), str)):
                raise ValueError("listing: sizes is an object {path: size}, add a list of siblings, sha a commit")
            g = dict(f)
            g["kind"], g["server"] = kind, server
            g.setdefault("match", "")
            g.setdefault("count", 1)
            clean.append(g)
        with self.lock:
            self.items.extend(clean)
        return len(clean)

    def clear(self):
        with self.lock:
            self.items = []

    def list(self):
        with self.lock:
            return [dict(f) for f in self.items]

    def take(self, server, subject, method, has_range):
        """First armed fault matching this request (its count is consumed), or None."""
        with self.lock:
            for f in self.items:
                if f["server"] not in ("any", server):
                    continue
                if f.get("method") and f["method"].upper() != method:
                    continue
                if f["match"] not in subject:
                    continue
                k = f["kind"]
                if k in RANGE_FAULTS and not has_range:
                    continue
                if k in BODY_FAULTS and method != "GET":
                    continue
                if f["count"] == 0:
                    continue
                if f["count"] is not None and f["count"] > 0:
                    f["count"] -= 1
                # counted as the request arrives (the log has it only once answered, after any delay)
                f["taken"] = f.get("taken", 0) + 1
                return dict(f)
        return None


class RequestLog:
    def __init__(self, path):
        self.path = path
        self.lock = threading.Lock()
        self.f = open(path, "a", encoding="utf-8")
        self.cond = threading.Condition()
        self.pending = 0

    def write(self, entry):
        line = json.dumps(entry, sort_keys=True)
        with self.lock:
            self.f.write(line + "\n")
            self.f.flush()

    def begin(self):
        with self.cond:
            self.pending += 1

    def end(self):
        with self.cond:
            self.pending -= 1
            self.cond.notify_all()

    def settle(self, timeout=2.0):
        with self.cond:
            self.cond.wait_for(lambda: self.pending <= 0, timeout)

    def clear(self):
        self.settle()
        with self.lock:
            self.f.truncate(0)
            self.f.seek(0)
            self.f.flush()

    def read(self):
        self.settle()
        with self.lock:
            self.f.flush()
            out = []
            with open(self.path, "r", encoding="utf-8") as f:
                for line in f:
                    line = line.strip()
                    if line:
                        out.append(json.loads(line))
            # The file is in completion order; readers want arrival order ("t").
            out.sort(key=lambda e: e["t"])
            return out


class RateLimiter:
    """Fixed windows per bucket, like the Hub's "api" and "resolvers" buckets."""

    UNLIMITED = 1000000

    def __init__(self):
        self.lock = threading.Lock()
        self.limit = None
        self.window = 300
        self.retry_after = True
        self.buckets = ("api", "resolvers")
        self.reset()

    def reset(self):
        self.start = time.time()
        self.used = {}

    def hit(self, bucket, consume=True):
        """-> (allowed, remaining, seconds_to_reset, quota)."""
        with self.lock:
            now = time.time()
            if now >= self.start + self.window:
                self.start = now - ((now - self.start) % self.window)
                self.used = {}
            quota = self.limit if (self.limit and bucket in self.buckets) else self.UNLIMITED
            used = self.used.get(bucket, 0)
            allowed = used < quota
            if allowed and consume:
                used += 1
                self.used[bucket] = used
            t = max(1, int(math.ceil(self.start + self.window - now)))
            return allowed, max(0, quota - used), t, quota


# --------------------------------------------------------------------------- responses

class Resp:
    def __init__(self, status, headers=None, body=b"", file=None, total=None):
        self.status = status
        self.headers = list(headers or [])
        self.body = body          # bytes
        self.file = file          # (local path, offset, length) instead of body
        self.total = total        # size of the underlying file, when there is one

    def length(self):
        return self.file[2] if self.file else len(self.body)

    def header(self, name):
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None

    def set(self, name, value):
        self.headers = [(k, v) for k, v in self.headers if k.lower() != name.lower()]
        if value is not None:
            self.headers.append((name, value))


def json_resp(status, obj, headers=()):
    return Resp(status, [("Content-Type", "application/json; charset=utf-8")] + list(headers),
                json.dumps(obj).encode())


def error_resp(status, code, message, headers=()):
    h = [("Content-Type", "application/json; charset=utf-8")]
    if code:
        h.append(("X-Error-Code", code))
    h.append(("X-Error-Message", message))
    return Resp(status, h + list(headers), json.dumps({"error": message}).encode())


def text_resp(status, text, headers=()):
    return Resp(status, [("Content-Type", "text/plain; charset=utf-8")] + list(headers), text.encode())


def parse_range(value, size):
    """Parse a Range header for a file of `size` bytes.

    -> None (absent/unparseable: serve 200), "416", ("multi", [(a, b), ...]) or (a, b) inclusive.
    """
    if not value:
        return None
    value = value.strip()
    if not value.lower().startswith("bytes="):
        return None
    specs = [s.strip() for s in value[6:].split(",")]
    out = []
    for s in specs:
        if "-" not in s:
            return None
        a, b = s.split("-", 1)
        a, b = a.strip(), b.strip()
        try:
            if a == "":
                if not b.isdigit():
                    return None
                n = int(b)
                if n == 0 or size == 0:
                    out.append(None)
                    continue
                out.append((max(0, size - n), size - 1))
            else:
                if not a.isdigit() or (b and not b.isdigit()):
                    return None
                first = int(a)
                if b and int(b) < first:
                    return None
                if first >= size:
                    out.append(None)
                    continue
                last = int(b) if b else size - 1
                out.append((first, min(last, size - 1)))
        except ValueError:
            return None
    good = [r for r in out if r is not None]
    if not good:
        return "416"
    if len(specs) > 1:
        return ("multi", good)
    return good[0]


def serve_content(local, size, range_value, base_headers, fault, multipart=True, data=None):
    """200/206/416 for a whole file on disk, honouring one Range (a-b, a-, -n). With `data`, the
    content is those bytes instead (size = len(data)): a file served as another size."""
    try:
        actual = os.stat(local).st_size if data is None else size
    except OSError:
        actual = -1
    if actual != size:
        # A file added by path was deleted or changed after hubrepo hashed it: a test bug.
        sys.stderr.write("fakehub: %s is gone or changed size (%d, expected %d)\n" % (local, actual, size))
        return error_resp(500, None, "fakehub: backing file %s missing or changed" % local)
    rng = parse_range(range_value, size)
    h = list(base_headers) + [("Accept-Ranges", "bytes")]
    if fault and fault["kind"] == "ignore_range":
        rng = None
    if rng == "416":
        return Resp(416, h + [("Content-Range", "bytes */%d" % size), ("Content-Type", "text/plain")],
                    b"Requested Range Not Satisfiable", total=size)
    if isinstance(rng, tuple) and rng[0] == "multi":
        ranges = rng[1]
        want = sum(b - a + 1 for a, b in ranges)
        if not multipart or want > (16 << 20):
            if data is not None:
                return Resp(200, h + [("Content-Type", "application/octet-stream")], data, total=size)
            return Resp(200, h + [("Content-Type", "application/octet-stream")], file=(local, 0, size),
                        total=size)
        boundary = "fakehub" + os.urandom(8).hex()
        parts = []
        with open(local, "rb") as f:
            for a, b in ranges:
                f.seek(a)
                chunk = f.read(b - a + 1) if data is None else data[a:b + 1]
                parts.append(("--%s\r\nContent-Type: application/octet-stream\r\n"
                              "Content-Range: bytes %d-%d/%d\r\n\r\n" % (boundary, a, b, size)).encode()
                             + chunk + b"\r\n")
        body = b"".join(parts) + ("--%s--\r\n" % boundary).encode()
        return Resp(206, h + [("Content-Type", "multipart/byteranges; boundary=" + boundary)], body,
                    total=size)
    h.append(("Content-Type", "application/octet-stream"))
    if data is not None:
        if rng is None:
            return Resp(200, h, data, total=size)
        a, b = rng
        return Resp(206, h + [("Content-Range", "bytes %d-%d/%d" % (a, b, size))], data[a:b + 1], total=size)
    if rng is None:
        return Resp(200, h, file=(local, 0, size), total=size)
    a, b = rng
    cr = "bytes %d-%d/%d" % (a, b, size)
    if fault and fault["kind"] == "wrong_content_range":
        cr = fault.get("content_range") or "bytes %d-%d/%d" % (a + 1, b + 1, size)
    return Resp(206, h + [("Content-Range", cr)], file=(local, a, b - a + 1), total=size)


# --------------------------------------------------------------------------- the application

class App:
    def __init__(self, args):
        self.root = os.path.abspath(args.root)
        self.store = Store(self.root)
        self.faults = Faults()
        self.log = RequestLog(os.path.join(self.root, "requests.log"))
        self.rate = RateLimiter()
        self.rate.limit = args.rate_limit or None
        self.rate.window = args.rate_window
        self.rate.retry_after = not args.no_retry_after
        self.url_ttl = args.url_ttl
        self.tree_page_size = None
        self.multipart = True
        self.cdn_gzip = False
        self.secret = os.urandom(32)
        self.hub_url = self.cdn_url = None
        # URLs put into Location / Link headers, when clients reach the servers through a proxy
        # (bench/netem_proxy.py): the signed path does not include the host, so any works.
        self.cdn_public_url = getattr(args, "cdn_public_url", None)
        self.hub_public_url = getattr(args, "hub_public_url", None)

    def config(self, obj):
        if "url_ttl" in obj:
            self.url_ttl = int(obj["url_ttl"])
        if "rate_limit" in obj:
            self.rate.limit = int(obj["rate_limit"]) if obj["rate_limit"] else None
        if "rate_window" in obj:
            self.rate.window = float(obj["rate_window"])
        if "rate_retry_after" in obj:
            self.rate.retry_after = bool(obj["rate_retry_after"])
        if "rate_buckets" in obj:
            self.rate.buckets = tuple(obj["rate_buckets"])
        if "tree_page_size" in obj:
            self.tree_page_size = int(obj["tree_page_size"]) if obj["tree_page_size"] else None
        if "multipart" in obj:
            self.multipart = bool(obj["multipart"])
        if "cdn_gzip" in obj:
            self.cdn_gzip = bool(obj["cdn_gzip"])
        if "cdn_public_url" in obj:
            self.cdn_public_url = (obj["cdn_public_url"] or "").rstrip("/") or None
        if "hub_public_url" in obj:
            self.hub_public_url = (obj["hub_public_url"] or "").rstrip("/") or None
        self.rate.reset()
        return self.current_config()

    def current_config(self):
        return {"url_ttl": self.url_ttl, "rate_limit": self.rate.limit, "rate_window": self.rate.window,
                "rate_retry_after": self.rate.retry_after, "rate_buckets": list(self.rate.buckets),
                "tree_page_size": self.tree_page_size, "multipart": self.multipart, "cdn_gzip": self.cdn_gzip,
                "cdn_public_url": self.cdn_public_url, "hub_public_url": self.hub_public_url}

    def public_hub(self):
        return self.hub_public_url or self.hub_url

    # signed CDN URLs ------------------------------------------------------------

    def sign(self, path, amz_date, expires):
        msg = ("%s\n%s\n%s" % (path, amz_date, expires)).encode()
        return hmac.new(self.secret, msg, hashlib.sha256).hexdigest()

    def cdn_location(self, repo, sha256, filename):
        path = "/xet-bridge-us/%s/%s" % (repo["oid"], sha256)
        # Round the signing time up: a URL then lives at least url_ttl seconds (at most one more).
        amz_date = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(math.ceil(time.time())))
        expires = str(int(self.url_ttl))
        base = os.path.basename(filename)
        q = [("X-Amz-Algorithm", "AWS4-HMAC-SHA256"),
             ("X-Amz-Content-Sha256", "UNSIGNED-PAYLOAD"),
             ("X-Amz-Credential", "FAKEHUBKEY/%s/us-east-1/s3/aws4_request" % amz_date[:8]),
             ("X-Amz-Date", amz_date),
             ("X-Amz-Expires", expires),
             ("X-Amz-Signature", self.sign(path, amz_date, expires)),
             ("X-Amz-SignedHeaders", "host"),
             ("response-content-disposition",
              "inline; filename*=UTF-8''%s; filename=\"%s\";" % (urllib.parse.quote(base), base)),
             ("x-id", "GetObject")]
        return "%s%s?%s" % (self.cdn_public_url or self.cdn_url, path, urllib.parse.urlencode(q))


# --------------------------------------------------------------------------- HTTP handling

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fakehub"
    sys_version = ""
    timeout = 120

    def setup(self):
        if isinstance(self.request, ssl.SSLSocket):
            self.request.settimeout(10)
            self.request.do_handshake()
        super().setup()

    def log_message(self, fmt, *args):
        pass

    def do_GET(self):
        self.dispatch()

    def do_HEAD(self):
        self.dispatch()

    def do_POST(self):
        self.dispatch()

    def do_DELETE(self):
        self.dispatch()

    def do_PUT(self):
        self.dispatch()

    # ----------------------------------------------------------------------

    def dispatch(self):
        self.t_arrival = time.time()
        app = self.server.app
        kind = self.server.kind
        self.req_body = b""
        n = self.headers.get("Content-Length")
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            self.close_connection = True  # chunked request bodies are not supported: never desync
        elif n and n.isdigit() and int(n) > 0:
            self.req_body = self.rfile.read(min(int(n), 64 << 20))
        raw_path, _, query = self.path.partition("?")
        self.raw_path, self.query = raw_path, query
        self.qs = urllib.parse.parse_qs(query, keep_blank_values=True)
        if kind == "hub" and raw_path.startswith("/_fake/"):
            try:
                self.send(self.control(app), None, log=False)
            except (ValueError, TypeError, KeyError) as e:
                self.send(json_resp(400, {"error": str(e)}), None, log=False)
            return
        flags = []
        fault = None
        try:
            store = app.store.get()
            subject = urllib.parse.unquote(raw_path) + "?" + urllib.parse.unquote_plus(query)
            if kind == "cdn":
                ent = store.by_sha256.get(raw_path.rsplit("/", 1)[-1])
                if ent:
                    subject += " " + " ".join(sorted(ent["names"]))
            fault = app.faults.take(kind, subject, self.command, self.headers.get("Range") is not None)
            if fault and fault["kind"] == "delay":
                STOP.wait(float(fault.get("seconds", 1)))
            if kind == "cdn":
                resp = self.cdn(app, store, fault, flags)
            else:
                resp = self.hub(app, store, fault)
            if fault and fault["kind"] == "listing":
                resp = patch_listing(resp, fault)
            if fault and fault["kind"] in STATUS_FAULTS:
                injected = self.fault_status(app, fault, resp)
                keep = {"ratelimit", "ratelimit-policy", "x-request-id"}
                names = {k.lower() for k, _ in injected.headers}
                injected.headers += [(k, v) for k, v in resp.headers if k.lower() in keep - names]
                resp = injected
        except Exception as e:  # a bug in the emulator must show up as a 500, not a hung client
            import traceback
            traceback.print_exc()
            resp = error_resp(500, None, "fakehub internal error: %s" % e)
        self.send(resp, fault, flags=flags)

    def fault_status(self, app, fault, resp):
        k = fault["kind"]
        if k == "expired":
            return s3_error(403, "AccessDenied", "Request has expired")
        if k == "denied":
            return s3_error(403, "AccessDenied", "Access Denied")
        status = int(fault.get("status") or (k if k.isdigit() else 500))
        h = []
        if status == 416:
            h.append(("Content-Range", "bytes */%s" % (resp.total if resp.total is not None else "*")))
        if fault.get("retry_after") is not None:
            h.append(("Retry-After", str(fault["retry_after"])))
        if status == 429:
            msg = "429 Too Many Requests: you have reached your 'resolvers' rate limit."
            h.append(("RateLimit", '"resolvers";r=0;t=%s' % (fault.get("retry_after") or 1)))
            return error_resp(429, None, msg, h)
        return error_resp(status, None, "fakehub injected %d" % status, h)

    # ---------------------------------------------------------------- sending

    def send(self, resp, fault, log=True, flags=()):
        method = self.command
        length = resp.length()
        kind = fault["kind"] if fault else None
        extra = int(fault.get("extra", 16)) if kind == "extra_body" and resp.status in (200, 206) else 0
        no_cl = kind == "no_content_length" or (extra and fault.get("content_length", "body") == "none")
        body_fault = kind in BODY_FAULTS
        if kind == "corrupt" and "file_offset" in fault:
            # the stored copy is corrupt at one byte of the file: every response covering it shows it
            fo = int(fault["file_offset"])
            start = resp.file[1] if resp.file else None
            if (start is not None and start <= fo < start + length and method != "HEAD"
                    and length <= (256 << 20)):
                data = bytearray(self.materialize(resp))
                data[fo - start] ^= 0xFF
                resp.file, resp.body = None, bytes(data)
        elif kind == "corrupt" and length > 0 and method != "HEAD" and length <= (256 << 20):
            data = bytearray(self.materialize(resp))
            at = int(fault.get("offset", 0))
            at = min(max(at, 0), len(data) - 1)
            data[at] ^= 0xFF
            resp.file, resp.body = None, bytes(data)
        self.body_sent = 0
        # Until this response is logged, readers of the log wait (bounded) for it: a client that
        # has its answer must find it in the log. A stall only counts once it is over.
        pending = log and kind != "stall"
        if pending:
            self.server.app.log.begin()
        corked = kind == "cork" and hasattr(socket, "TCP_CORK") and not isinstance(self.connection, ssl.SSLSocket)
        nagled = kind == "nagle" and not isinstance(self.connection, ssl.SSLSocket)
        try:
            if nagled:
                # headers and body in two writes under Nagle's rule: a body shorter than a
                # segment waits until the client acknowledges the headers
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 0)
            if corked:
                # nginx's sendfile with tcp_nopush: headers and body leave in full segments,
                # and the short last one is pushed on uncork, but under Nagle's rule
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 0)
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
            self.send_response_only(resp.status, REASONS.get(resp.status))
            self.send_header("Date", self.date_time_string())
            self.send_header("Server", "fakehub")
            for k, v in resp.headers:
                self.send_header(k, v)
            if resp.status == 304:
                pass
            elif no_cl:
                self.send_header("Connection", "close")
                self.close_connection = True
            else:
                announced = length + extra if extra and fault.get("content_length", "body") == "body" else length
                self.send_header("Content-Length", str(announced))
            self.end_headers()
            if nagled:
                self.wfile.flush()
            if method != "HEAD" and resp.status != 304:
                if body_fault:
                    cut = int(fault.get("after_bytes", length // 2))
                    cut = max(0, min(cut, length))
                    self.write_body(resp, 0, cut)
                    if kind == "reset":
                        self.reset_connection()
                    elif kind == "short_body":
                        self.close_connection = True
                    elif kind == "drip":
                        if not self.drip(resp, cut, length - cut, float(fault.get("bytes_per_second", 2)),
                                         float(fault.get("seconds", 60))):
                            self.close_connection = True
                    elif kind == "stall":
                        ok = self.stall(float(fault.get("seconds", 5)))
                        pending = log
                        if pending:
                            self.server.app.log.begin()
                        if not ok:
                            self.close_connection = True
                        elif fault.get("close"):
                            self.close_connection = True
                        else:
                            self.write_body(resp, cut, length - cut)
                else:
                    self.write_body(resp, 0, length)
                    if extra:
                        # bytes past what the Content-Range announces (and, with content_length
                        # "body", what Content-Length announces too); with "pause", the asked-for
                        # bytes leave first and the excess after that many seconds, so a client
                        # has all it asked for before the excess arrives
                        if fault.get("pause"):
                            self.wfile.flush()
                            time.sleep(float(fault["pause"]))
                        self.wfile.write(b"\xa5" * extra)
                        self.body_sent += extra
                        if fault.get("content_length", "body") == "none":
                            self.close_connection = True
            if corked:
                self.wfile.flush()
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 0)
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError, socket.timeout, OSError):
            self.close_connection = True
        sent = self.body_sent
        if log:
            self.write_log(resp, sent, kind, flags)
        if pending:
            self.server.app.log.end()

    @staticmethod
    def materialize(resp):
        if resp.file is None:
            return resp.body
        local, off, n = resp.file
        with open(local, "rb") as f:
            f.seek(off)
            return f.read(n)

    def drip(self, resp, start, n, rate, seconds):
        """Send n body bytes from `start`, one at a time at `rate` bytes/s, for at most
        `seconds`; False when it stopped early (time up, the client hung up, server stopping)."""
        deadline = time.time() + seconds
        data = self.materialize(resp)[start:start + n] if n > 0 else b""
        sock = self.connection
        for i in range(len(data)):
            if STOP.is_set() or time.time() > deadline:
                return False
            try:
                self.wfile.write(data[i:i + 1])
                self.wfile.flush()
            except OSError:
                return False
            self.body_sent += 1
            wait_until = time.time() + 1.0 / rate
            while time.time() < wait_until:
                try:
                    readable, _, _ = select.select([sock], [], [], min(wait_until - time.time(), 0.05))
                    if readable:
                        return False  # EOF: the client gave up
                except (OSError, ValueError):
                    return False
        return True

    def stall(self, seconds):
        """Sleep, but stop early (-> False) when the client hangs up or the server stops."""
        deadline = time.time() + seconds
        sock = self.connection
        while not STOP.is_set():
            left = deadline - time.time()
            if left <= 0:
                return True
            try:
                readable, _, _ = select.select([sock], [], [], min(left, 0.05))
                if readable:
                    # The client sends nothing while it waits for a body: readable means EOF
                    # (or a TLS close_notify), so it has given up.
                    return False
            except (OSError, ValueError):
                return False
        return False

    def write_body(self, resp, start, n):
        """Send n body bytes from `start`; self.body_sent counts what actually went out."""
        if n <= 0:
            return
        if resp.file is None:
            self.wfile.write(resp.body[start:start + n])
            self.body_sent += n
            return
        local, off, _ = resp.file
        with open(local, "rb") as f:
            if not isinstance(self.connection, ssl.SSLSocket):
                # Zero-copy for plain HTTP, so benchmarks measure the client, not this server.
                done = 0
                while done < n:
                    k = self.connection.sendfile(f, off + start + done, min(4 << 20, n - done))
                    if k <= 0:
                        return  # file shrank under us: the client sees a short body
                    done += k
                    self.body_sent += k
                return
            f.seek(off + start)
            done = 0
            while done < n:
                chunk = f.read(min(1 << 18, n - done))
                if not chunk:
                    return
                self.wfile.write(chunk)
                done += len(chunk)
                self.body_sent += len(chunk)

    def reset_connection(self):
        """Abort with a TCP RST (SO_LINGER 0), not a FIN."""
        self.close_connection = True
        try:
            self.wfile.flush()
        except OSError:
            pass
        sock = self.connection
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        try:
            self.rfile.close()
        except OSError:
            pass
        try:
            if isinstance(sock, ssl.SSLSocket):
                # Close the fd under the TLS layer so no close_notify is sent.
                socket.socket.close(sock)
            else:
                sock.close()
        except OSError:
            pass

    def write_log(self, resp, sent, fault_kind, flags):
        headers = {}
        for k, v in self.headers.items():
            k = k.lower()
            headers[k] = "<present>" if k == "authorization" else v
        entry = {"t": self.t_arrival, "server": self.server.kind, "method": self.command,
                 "path": self.raw_path, "query": self.query, "headers": headers,
                 "status": resp.status, "range": self.headers.get("Range"), "bytes_sent": sent,
                 "fault": fault_kind}
        if flags:
            entry["flags"] = list(flags)
        self.server.app.log.write(entry)

    # ---------------------------------------------------------------- control

    def control(self, app):
        p, m = self.raw_path, self.command

        def body_json():
            return json.loads(self.req_body.decode() or "null")

        if p == "/_fake/faults":
            if m == "POST":
                n = app.faults.add(body_json())
                return json_resp(200, {"added": n, "faults": app.faults.list()})
            if m == "DELETE":
                app.faults.clear()
                return json_resp(200, {"faults": []})
            if m == "GET":
                return json_resp(200, app.faults.list())
        if p == "/_fake/log" and m == "GET":
            entries = app.log.read()
            server = self.qs.get("server", [None])[0]
            if server:
                entries = [e for e in entries if e["server"] == server]
            return json_resp(200, entries)
        if p in ("/_fake/log/clear", "/_fake/log") and m in ("POST", "DELETE"):
            app.log.clear()
            return json_resp(200, {"cleared": True})
        if p == "/_fake/config":
            if m == "POST":
                return json_resp(200, app.config(body_json() or {}))
            return json_resp(200, app.current_config())
        if p == "/_fake/health":
            return json_resp(200, {"ok": True, "hub_url": app.hub_url, "cdn_url": app.cdn_url})
        return json_resp(404, {"error": "unknown control endpoint %s %s" % (m, p)})

    # ---------------------------------------------------------------- CDN

    def cdn(self, app, store, fault, flags):
        if self.headers.get("Authorization") is not None:
            flags.append("authorization_on_cdn")
            sys.stderr.write("fakehub: FLAG: Authorization header sent to the CDN: %s %s\n"
                             % (self.command, self.raw_path))
            return s3_error(400, "InvalidArgument",
                            "Only one auth mechanism allowed; Authorization header must not be sent "
                            "to a pre-signed URL (fakehub flags this as a client bug)")
        if self.command not in ("GET", "HEAD"):
            return s3_error(405, "MethodNotAllowed", "The specified method is not allowed")
        parts = self.raw_path.split("/")
        if len(parts) != 4 or parts[1] != "xet-bridge-us":
            return s3_error(404, "NoSuchKey", "The specified key does not exist.")
        sha = parts[3]
        q = {k: v[0] for k, v in self.qs.items()}
        amz_date, expires, sig = q.get("X-Amz-Date"), q.get("X-Amz-Expires"), q.get("X-Amz-Signature")
        if not (amz_date and expires and sig):
            return s3_error(403, "AccessDenied", "Query-string authentication requires the Signature, "
                            "Expires and Date parameters")
        if not hmac.compare_digest(sig, app.sign(self.raw_path, amz_date, expires)):
            return s3_error(403, "SignatureDoesNotMatch", "The request signature we calculated does not "
                            "match the signature you provided.")
        try:
            t0 = calendar.timegm(time.strptime(amz_date, "%Y%m%dT%H%M%SZ"))
            ttl = int(expires)
        except ValueError:
            return s3_error(403, "AccessDenied", "Invalid date or expiry")
        if time.time() >= t0 + ttl:
            return s3_error(403, "AccessDenied", "Request has expired")
        ent = store.by_sha256.get(sha)
        if ent is None:
            return s3_error(404, "NoSuchKey", "The specified key does not exist.")
        h = [("ETag", '"%s"' % sha), ("Cache-Control", "public, max-age=31536000"),
             ("Last-Modified", self.date_time_string(t0))]
        if q.get("response-content-disposition"):
            h.append(("Content-Disposition", q["response-content-disposition"]))
        if app.cdn_gzip and accepts_gzip(self.headers) and ent["size"] <= GZIP_MAX:
            # CloudFront pitfall (huggingface_hub file_download.py): with Accept-Encoding: gzip a
            # ranged request may come back 200, compressed, whole file.
            resp = serve_content(ent["local"], ent["size"], None, h, None, False)
            gzip_resp(resp)
            return resp
        if fault and fault["kind"] == "served_size":
            # the CDN's copy is another size than the Hub lists: cut short, or padded with zeros
            want = int(fault["size"])
            with open(ent["local"], "rb") as f:
                data = f.read(want)
            data += b"\0" * (want - len(data))
            return serve_content(ent["local"], want, self.headers.get("Range"), h, fault, app.multipart, data)
        return serve_content(ent["local"], ent["size"], self.headers.get("Range"), h, fault, app.multipart)

    # ---------------------------------------------------------------- hub

    def hub(self, app, store, fault):
        segs = self.raw_path.split("/")[1:]
        if segs and segs[0] == "api":
            bucket = "api"
        elif "resolve" in segs[:4] or "raw" in segs[:4]:
            bucket = "resolvers"
        else:
            bucket = "pages"
        is_cache = segs[:2] == ["api", "resolve-cache"]
        allowed, remaining, reset, quota = app.rate.hit(bucket, consume=not is_cache)
        rl = [("RateLimit", '"%s";r=%d;t=%d' % (bucket, remaining, reset)),
              ("RateLimit-Policy", '"fixed window";"%s";q=%d;w=%d' % (bucket, quota, app.rate.window)),
              ("X-Request-Id", "Root=1-%08x-%s" % (int(time.time()), os.urandom(12).hex()))]
        if not allowed:
            msg = ("429 Too Many Requests: you have reached your '%s' rate limit.\nRetry after %d seconds "
                   "(0/%d requests remaining in current %ds window)." % (bucket, reset, quota, app.rate.window))
            extra = [("Retry-After", str(reset))] if app.rate.retry_after else []
            resp = error_resp(429, None, msg.replace("\n", " "), extra)
            resp.body = json.dumps({"error": msg}).encode()
        else:
            resp = self.hub_route(app, store, segs, fault)
        resp.headers.extend(rl)
        return resp

    def token(self):
        a = self.headers.get("Authorization")
        if a is None:
            return None
        a = a.strip()
        if a.lower().startswith("bearer "):
            return a[7:].strip()
        return a

    def check_token(self, store):
        """None if no token or a valid one; else the 401 response."""
        tok = self.token()
        if tok is not None and tok not in store.valid_tokens:
            return error_resp(401, None, "Invalid credentials in Authorization header")
        return None

    def check_access(self, store, kind, repo_id, repo, content):
        tok = self.token()
        label = kind
        if repo is None or (repo["visibility"] == "private" and tok not in repo["tokens"]):
            # Anonymous: 401 (the Hub will not say whether a private repo exists).
            if tok is None:
                return error_resp(401, "RepoNotFound", "Invalid username or password.")
            return error_resp(404, "RepoNotFound", "Repository not found")
        if repo["visibility"] == "gated" and content and tok not in repo["tokens"]:
            if tok is None:
                return error_resp(401, "GatedRepo",
                                  "Access to %s %s is restricted. You must have access to it and be "
                                  "authenticated to access it. Please log in." % (label, repo_id))
            return error_resp(403, "GatedRepo",
                              "Access to %s %s is restricted and you are not in the authorized list. "
                              "Visit %s/%s to ask for access." % (label, repo_id, self.server.app.public_hub(),
                                                                   repo_id))
        return None

    def hub_route(self, app, store, segs, fault):
        if segs and segs[0] == "api":
            return self.api(app, store, segs[1:], fault)
        kind = "model"
        prefix = []
        if segs and segs[0] in ("datasets", "spaces"):
            if segs[0] == "spaces":
                return error_resp(404, "RepoNotFound", "Repository not found")
            kind, prefix, segs = "dataset", segs[:1], segs[1:]
        if len(segs) >= 4 and segs[2] in ("resolve", "raw"):
            n = 2
        elif len(segs) >= 3 and segs[1] in ("resolve", "raw"):
            n = 1
        else:
            return text_resp(404, "Not Found")
        if self.command not in ("GET", "HEAD"):
            return text_resp(405, "Method Not Allowed")
        bad = self.check_token(store)
        if bad:
            return bad
        repo_id = "/".join(urllib.parse.unquote(s) for s in segs[:n])
        action = segs[n]
        rest = segs[n + 1:]
        rev = urllib.parse.unquote(rest[0])
        rest = rest[1:]
        if rev == "refs" and len(rest) >= 2 and rest[0] in ("pr", "convert", "heads", "tags"):
            rev, rest = "refs/%s/%s" % (rest[0], urllib.parse.unquote(rest[1])), rest[2:]
        path = urllib.parse.unquote("/".join(rest))
        repo = store.repo(kind, repo_id)
        if repo is None:
            new = store.renamed(kind, repo_id)
            if new:
                loc = "/" + "/".join(prefix + [quote_path(new)] + segs[n:])
                if self.query:
                    loc += "?" + self.query
                return text_resp(307, "Temporary Redirect. Redirecting to %s" % loc, [("Location", loc)])
        bad = self.check_access(store, kind, repo_id, repo, content=True)
        if bad:
            return bad
        commit = hubrepo.resolve_rev(repo, rev)
        if commit is None:
            return error_resp(404, "RevisionNotFound", "Invalid rev id: %s" % rev)
        rc = [("X-Repo-Commit", commit)]
        entry = repo["commits"][commit]["files"].get(path)
        if entry is None:
            return error_resp(404, "EntryNotFound", "Entry not found", rc)
        if action == "raw":
            if entry["lfs"]:
                body = hubrepo.lfs_pointer(entry["sha256"], entry["size"])
                return Resp(200, rc + [("ETag", '"%s"' % entry["blob_id"]),
                                       ("Content-Type", "text/plain; charset=utf-8")], body)
            return serve_content(entry["local"], entry["size"], self.headers.get("Range"),
                                 rc + [("ETag", '"%s"' % entry["blob_id"])], fault, False)
        etag = '"%s"' % (entry["sha256"] if entry["lfs"] else entry["blob_id"])
        inm = self.headers.get("If-None-Match")
        if inm is not None:
            tags = [t.strip() for t in inm.split(",")]
            tags = [t[2:] if t.startswith("W/") else t for t in tags]
            if "*" in tags or etag in tags:
                h = rc + ([("X-Linked-Etag", etag), ("X-Linked-Size", str(entry["size"]))]
                          if entry["lfs"] else [("ETag", etag)])
                return Resp(304, h)
        if entry["lfs"]:
            loc = app.cdn_location(repo, entry["sha256"], path)
            return Resp(302, rc + [("Location", loc), ("X-Linked-Etag", etag),
                                   ("X-Linked-Size", str(entry["size"])),
                                   ("Content-Type", "text/plain; charset=utf-8"),
                                   ("Vary", "Origin, Accept"),
                                   ("Access-Control-Expose-Headers",
                                    "X-Repo-Commit,X-Request-Id,X-Error-Code,X-Error-Message,"
                                    "X-Total-Count,ETag,Link,Accept-Ranges,Content-Range,"
                                    "X-Linked-Size,X-Linked-ETag,X-Xet-Hash")],
                        ("Found. Redirecting to %s" % loc).encode())
        orig = urllib.parse.quote(self.raw_path, safe="")
        loc = "/api/resolve-cache/%s/%s/%s/%s?%s=&etag=%s" % (
            KIND_PLURAL[kind], quote_path(repo_id), commit, quote_path(path), orig,
            urllib.parse.quote(etag, safe=""))
        return text_resp(307, "Temporary Redirect. Redirecting to %s" % loc,
                         [("Location", loc), ("Vary", "Origin, Accept")])

    # ---------------------------------------------------------------- API

    def split_repo(self, segs):
        """segs after /api/{type}/ -> (repo_id, rest) with namespaced or legacy ids."""
        if len(segs) >= 3 and segs[2] in KEYWORDS:
            n = 2
        elif len(segs) == 2 and segs[1] not in KEYWORDS:
            n = 2
        elif len(segs) >= 2 and segs[1] in KEYWORDS:
            n = 1
        elif len(segs) == 1:
            n = 1
        else:
            n = 2
        return "/".join(urllib.parse.unquote(s) for s in segs[:n]), segs[n:], n

    def api(self, app, store, segs, fault):
        if not segs:
            return text_resp(404, "Not Found")
        bad = self.check_token(store)
        if bad:
            return bad
        if segs[0] == "whoami-v2":
            tok = self.token()
            if tok is None:
                return error_resp(401, None, "Invalid credentials in Authorization header")
            return json_resp(200, {"type": "user", "name": "fakeuser-" + hashlib.sha1(tok.encode()).hexdigest()[:8],
                                   "auth": {"type": "access_token"}})
        if segs[0] == "resolve-cache":
            return self.resolve_cache(app, store, segs[1:], fault)
        if segs[0] not in PLURAL_KIND:
            return text_resp(404, "Not Found")
        kind = PLURAL_KIND[segs[0]]
        repo_id, rest, n = self.split_repo(segs[1:])
        if not repo_id:
            return text_resp(404, "Not Found")
        repo = store.repo(kind, repo_id)
        if repo is None:
            new = store.renamed(kind, repo_id)
            if new:
                loc = "/api/%s/%s" % (segs[0], quote_path(new))
                if rest:
                    loc += "/" + "/".join(rest)
                if self.query:
                    loc += "?" + self.query
                return text_resp(307, "Temporary Redirect. Redirecting to %s" % loc, [("Location", loc)])
        bad = self.check_access(store, kind, repo_id, repo, content=False)
        if bad:
            return bad
        op = rest[0] if rest else ""
        if op == "" and self.command in ("GET", "HEAD"):
            return self.api_info(app, repo, "main")
        if op == "revision" and len(rest) >= 2 and self.command in ("GET", "HEAD"):
            return self.api_info(app, repo, urllib.parse.unquote("/".join(rest[1:])))
        if op == "refs" and len(rest) == 1:
            return self.api_refs(repo)
        if op == "tree" and len(rest) >= 2:
            return self.api_tree(app, repo, kind, rest[1], rest[2:])
        if op == "paths-info" and len(rest) >= 2 and self.command == "POST":
            return self.api_paths_info(repo, urllib.parse.unquote("/".join(rest[1:])))
        if op == "commits" and len(rest) >= 2:
            return self.api_commits(repo, urllib.parse.unquote("/".join(rest[1:])))
        return text_resp(404, "Not Found")

    def rev_or_error(self, repo, rev):
        commit = hubrepo.resolve_rev(repo, rev)
        if commit is None:
            return None, error_resp(404, "RevisionNotFound", "Invalid rev id: %s" % rev)
        return commit, None

    def api_info(self, app, repo, rev):
        commit, err = self.rev_or_error(repo, rev)
        if err:
            return err
        c = repo["commits"][commit]
        blobs = self.qs.get("blobs", [""])[0] in ("true", "1", "True")
        siblings = []
        used = 0
        for p in sorted(c["files"]):
            e = c["files"][p]
            used += e["size"]
            s = {"rfilename": p}
            if blobs:
                s["blobId"] = e["blob_id"]
                s["size"] = e["size"]
                if e["lfs"]:
                    s["lfs"] = {"sha256": e["sha256"], "size": e["size"], "pointerSize": e["pointer_size"]}
            siblings.append(s)
        info = {"_id": repo["oid"], "id": repo["id"], "author": repo["id"].split("/")[0] if "/" in repo["id"] else None,
                "sha": commit, "lastModified": iso(c["date"]), "createdAt": iso(repo["created"]),
                "private": repo["visibility"] == "private", "gated": repo.get("gated") or False,
                "disabled": False, "downloads": 0, "likes": 0, "tags": [], "siblings": siblings,
                "usedStorage": used}
        if repo["kind"] == "model":
            info["modelId"] = repo["id"]
            st = safetensors_params(c["files"])
            if st:
                info["safetensors"] = st
        expand = self.qs.get("expand") or self.qs.get("expand[]")
        if expand:
            info = {k: v for k, v in info.items() if k in expand or k in ("_id", "id")}
        return json_resp(200, info)

    def api_refs(self, repo):
        out = {"branches": [], "tags": [], "converts": []}
        prs = []
        for ref, commit in sorted(repo["refs"].items()):
            if ref.startswith("refs/heads/"):
                out["branches"].append({"name": ref[11:], "ref": ref, "targetCommit": commit})
            elif ref.startswith("refs/tags/"):
                out["tags"].append({"name": ref[10:], "ref": ref, "targetCommit": commit})
            elif ref.startswith("refs/convert/"):
                out["converts"].append({"name": ref[13:], "ref": ref, "targetCommit": commit})
            elif ref.startswith("refs/pr/"):
                prs.append({"name": ref, "ref": ref, "targetCommit": commit})
        if self.qs.get("include_prs", [""])[0] in ("1", "true", "True"):
            out["pullRequests"] = prs
        return json_resp(200, out)

    def api_commits(self, repo, rev):
        commit, err = self.rev_or_error(repo, rev)
        if err:
            return err
        out = []
        while commit:
            c = repo["commits"][commit]
            out.append({"id": commit, "title": c["title"], "message": "", "date": iso(c["date"]),
                        "authors": [{"user": "fakehub"}]})
            commit = c["parent"]
        return json_resp(200, out)

    def entries(self, repo, commit, expand):
        """Every file and directory of a commit: {path: entry json}."""
        files = repo["commits"][commit]["files"]
        out = {}
        dirs = {}
        for p, e in files.items():
            j = {"type": "file", "oid": e["blob_id"], "size": e["size"], "path": p}
            if e["lfs"]:
                j["lfs"] = {"oid": e["sha256"], "size": e["size"], "pointerSize": e["pointer_size"]}
            if expand:
                j["lastCommit"] = last_commit(repo, commit, p)
                j["securityFileStatus"] = {"status": "safe"}
            out[p] = j
            parts = p.split("/")
            for i in range(1, len(parts)):
                dirs.setdefault("/".join(parts[:i]), []).append(e["blob_id"] + p)
        for d, members in dirs.items():
            oid = hashlib.sha1(("tree\0" + "\0".join(sorted(members))).encode()).hexdigest()
            j = {"type": "directory", "oid": oid, "size": 0, "path": d}
            if expand:
                j["lastCommit"] = last_commit(repo, commit, None)
            out[d] = j
        return out

    def api_tree(self, app, repo, kind, rev_seg, path_segs):
        rev = urllib.parse.unquote(rev_seg)
        if rev == "refs" and len(path_segs) >= 2 and path_segs[0] in ("pr", "convert", "heads", "tags"):
            rev, path_segs = "refs/%s/%s" % (path_segs[0], urllib.parse.unquote(path_segs[1])), path_segs[2:]
        path = urllib.parse.unquote("/".join(path_segs)).strip("/")
        recursive = self.qs.get("recursive", [""])[0] in ("1", "true", "True")
        expand = self.qs.get("expand", [""])[0] in ("1", "true", "True")
        cursor = self.qs.get("cursor", [None])[0]
        offset = 0
        commit = None
        if cursor:
            try:
                cur = json.loads(base64.urlsafe_b64decode(cursor.encode() + b"==").decode())
                commit, offset = cur["c"], int(cur["o"])
                if commit not in repo["commits"]:
                    raise ValueError
            except (ValueError, KeyError, TypeError):
                return error_resp(400, None, "Invalid cursor")
        else:
            commit, err = self.rev_or_error(repo, rev)
            if err:
                return err
        rc = [("X-Repo-Commit", commit)]
        allents = self.entries(repo, commit, expand)
        if path:
            if path not in allents:
                return error_resp(404, "EntryNotFound", '%s does not exist on "%s"' % (path, rev), rc)
            if allents[path]["type"] == "file":
                return error_resp(404, "EntryNotFound", '%s is not a directory on "%s"' % (path, rev), rc)
        pre = path + "/" if path else ""
        sel = []
        for p in sorted(allents):
            if not p.startswith(pre):
                continue
            if not recursive and "/" in p[len(pre):]:
                continue
            sel.append(allents[p])
        # directories first, like the Hub, then files; each group by path
        sel.sort(key=lambda j: (j["type"] != "directory", j["path"]))
        page = app.tree_page_size or (50 if expand else 1000)
        lim = self.qs.get("limit", [None])[0]
        if lim and lim.isdigit() and int(lim) > 0:
            page = min(page, int(lim)) if app.tree_page_size else int(lim)
        chunk = sel[offset:offset + page]
        h = rc
        if offset + page < len(sel):
            nxt = base64.urlsafe_b64encode(json.dumps({"c": commit, "o": offset + page}).encode()).decode().rstrip("=")
            q = [(k, v) for k, v in urllib.parse.parse_qsl(self.query, keep_blank_values=True) if k != "cursor"]
            q.append(("cursor", nxt))
            url = "%s%s?%s" % (app.public_hub(), self.raw_path, urllib.parse.urlencode(q))
            h = h + [("Link", '<%s>; rel="next"' % url)]
        return json_resp(200, chunk, h)

    def api_paths_info(self, repo, rev):
        commit, err = self.rev_or_error(repo, rev)
        if err:
            return err
        ctype = (self.headers.get("Content-Type") or "").lower()
        body = self.req_body.decode("utf-8", "replace")
        paths, expand = [], False
        if "json" in ctype or body.lstrip().startswith("{"):
            try:
                obj = json.loads(body or "{}")
            except ValueError:
                return error_resp(400, None, "Invalid JSON body")
            paths = obj.get("paths") or []
            expand = bool(obj.get("expand"))
        else:
            form = urllib.parse.parse_qs(body, keep_blank_values=True)
            paths = form.get("paths", []) + form.get("paths[]", [])
            expand = (form.get("expand", ["false"])[0]).lower() in ("1", "true")
        if isinstance(paths, str):
            paths = [paths]
        allents = self.entries(repo, commit, expand)
        out = [allents[p.strip("/")] for p in paths if isinstance(p, str) and p.strip("/") in allents]
        return json_resp(200, out, [("X-Repo-Commit", commit)])

    def resolve_cache(self, app, store, segs, fault):
        # /api/resolve-cache/{models|datasets}/{repo...}/{commit}/{path}
        if not segs or segs[0] not in PLURAL_KIND:
            return text_resp(404, "Not Found")
        kind = PLURAL_KIND[segs[0]]
        segs = segs[1:]
        if len(segs) >= 4 and hubrepo.is_commit_sha(segs[2]):
            n = 2
        elif len(segs) >= 3 and hubrepo.is_commit_sha(segs[1]):
            n = 1
        else:
            return text_resp(404, "Not Found")
        repo_id = "/".join(urllib.parse.unquote(s) for s in segs[:n])
        commit = segs[n]
        path = urllib.parse.unquote("/".join(segs[n + 1:]))
        repo = store.repo(kind, repo_id)
        bad = self.check_access(store, kind, repo_id, repo, content=True)
        if bad:
            return bad
        if commit not in repo["commits"]:
            return error_resp(404, "RevisionNotFound", "Invalid rev id: %s" % commit)
        rc = [("X-Repo-Commit", commit)]
        entry = repo["commits"][commit]["files"].get(path)
        if entry is None:
            return error_resp(404, "EntryNotFound", "Entry not found", rc)
        etag = '"%s"' % entry["blob_id"]
        inm = self.headers.get("If-None-Match")
        if inm and etag in [t.strip().lstrip("W/") for t in inm.split(",")]:
            return Resp(304, rc + [("ETag", etag)])
        resp = serve_content(entry["local"], entry["size"], self.headers.get("Range"),
                             rc + [("ETag", etag)], fault, False)
        if path.endswith(".json"):
            resp.set("Content-Type", "application/json; charset=utf-8")
        elif resp.status == 200 and not entry["lfs"]:
            resp.set("Content-Type", "text/plain; charset=utf-8")
        if resp.status == 200 and accepts_gzip(self.headers) and entry["size"] <= GZIP_MAX:
            # The Hub compresses text files for clients that allow it (then Content-Length is
            # the compressed size, not the file size).
            gzip_resp(resp)
        return resp


GZIP_MAX = 10 * 1000 * 1000


def accepts_gzip(headers):
    for part in (headers.get("Accept-Encoding") or "").lower().split(","):
        name, _, params = part.strip().partition(";")
        if name.strip() in ("gzip", "*") and params.replace(" ", "") not in ("q=0", "q=0.0"):
            return True
    return False


def gzip_resp(resp):
    if resp.file:
        local, off, n = resp.file
        with open(local, "rb") as f:
            f.seek(off)
            data = f.read(n)
    else:
        data = resp.body
    resp.file = None
    resp.body = gzip.compress(data, mtime=0)
    resp.set("Content-Encoding", "gzip")
    resp.set("Content-Range", None)
    resp.headers.append(("Vary", "Accept-Encoding"))


def patch_listing(resp, fault):
    """The `listing` fault: the Hub's repository listing (/api/{models,datasets}/{repo}
    [/revision/{rev}]) reports other sizes for some files ("sizes": {path: n}, LFS size too),
    lists extra siblings ("add": [{"rfilename": ..., ...}]), e.g. a "../x" name, and/or names
    another commit ("sha": a commit of the repo; as if the branch moved between the listing and
    a request that names the branch)."""
    if resp.status != 200 or resp.file is not None:
        return resp
    try:
        info = json.loads(resp.body)
    except ValueError:
        return resp
    if not isinstance(info, dict) or not isinstance(info.get("siblings"), list):
        return resp
    sizes = fault.get("sizes") or {}
    for s in info["siblings"]:
        if s.get("rfilename") in sizes:
            n = int(sizes[s["rfilename"]])
            if "size" in s:
                s["size"] = n
            if isinstance(s.get("lfs"), dict):
                s["lfs"]["size"] = n
    info["siblings"].extend(fault.get("add") or [])
    if fault.get("sha"):
        info["sha"] = fault["sha"]
    resp.body = json.dumps(info).encode()
    return resp


def s3_error(status, code, message):
    body = ('<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>%s</Code><Message>%s</Message>'
            '<RequestId>FAKEHUB</RequestId></Error>' % (code, message)).encode()
    return Resp(status, [("Content-Type", "application/xml"), ("X-Error-Code", code),
                         ("X-Error-Message", message)], body)


def last_commit(repo, commit, path):
    """The oldest ancestor since which `path` is unchanged (the commit itself for directories)."""
    cur = commit
    if path is not None:
        blob = repo["commits"][commit]["files"][path]["blob_id"]
        while True:
            parent = repo["commits"][cur]["parent"]
            if not parent or parent not in repo["commits"]:
                break
            pe = repo["commits"][parent]["files"].get(path)
            if pe is None or pe["blob_id"] != blob:
                break
            cur = parent
    c = repo["commits"][cur]
    return {"id": cur, "title": c["title"], "date": iso(c["date"])}


_ST_CACHE = {}
_ST_BITS = {"BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8, "I16": 16, "U16": 16,
            "F16": 16, "BF16": 16, "I32": 32, "U32": 32, "F32": 32, "F64": 64, "I64": 64, "U64": 64}


def safetensors_params(files):
    """Hub-style {"parameters": {dtype: n}, "total": n} from the headers, or None (best effort)."""
    params = {}
    found = False
    for p, e in files.items():
        if not p.endswith(".safetensors"):
            continue
        key = e["sha256"]
        if key not in _ST_CACHE:
            _ST_CACHE[key] = None
            try:
                with open(e["local"], "rb") as f:
                    n = struct.unpack("<Q", f.read(8))[0]
                    if n > 100_000_000:
                        raise ValueError
                    hdr = json.loads(f.read(n))
                counts = {}
                for name, t in hdr.items():
                    if name == "__metadata__":
                        continue
                    cnt = 1
                    for d in t["shape"]:
                        cnt *= int(d)
                    counts[t["dtype"]] = counts.get(t["dtype"], 0) + cnt
                _ST_CACHE[key] = counts
            except (OSError, ValueError, KeyError, TypeError, AttributeError, struct.error):
                pass
        if _ST_CACHE[key] is not None:
            found = True
            for d, c in _ST_CACHE[key].items():
                params[d] = params.get(d, 0) + c
    if not found:
        return None
    return {"parameters": params, "total": sum(params.values())}


# --------------------------------------------------------------------------- servers

class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # never wait for a stalled handler on shutdown
    allow_reuse_address = True
    request_queue_size = 128  # listen backlog: clients open many connections at once

    def __init__(self, addr, kind, app, ssl_ctx):
        self.kind, self.app, self.ssl_ctx = kind, app, ssl_ctx
        super().__init__(addr, Handler)

    def get_request(self):
        sock, addr = self.socket.accept()
        if self.ssl_ctx is not None:
            sock = self.ssl_ctx.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, addr

    def handle_error(self, request, client_address):
        et, ev, _ = sys.exc_info()
        if isinstance(ev, (ConnectionError, ssl.SSLError, socket.timeout, OSError)):
            return
        sys.stderr.write("fakehub: %s: error handling a request: %r\n" % (self.kind, ev))


def make_tls(tls_dir):
    """CA + server certificate for 127.0.0.1/localhost, generated with the openssl CLI."""
    os.makedirs(tls_dir, exist_ok=True)
    ca_key, ca = os.path.join(tls_dir, "ca.key"), os.path.join(tls_dir, "ca.pem")
    key, crt = os.path.join(tls_dir, "server.key"), os.path.join(tls_dir, "server.pem")
    csr, ext = os.path.join(tls_dir, "server.csr"), os.path.join(tls_dir, "server.ext")
    if not all(os.path.exists(p) for p in (ca_key, ca, key, crt)):
        def run(*cmd):
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=60)
        run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key, "-out", ca,
            "-days", "3650", "-subj", "/CN=ckptscope fakehub test CA",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
        run("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr,
            "-subj", "/CN=127.0.0.1")
        with open(ext, "w") as f:
            f.write("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
                    "extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n")
        run("openssl", "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
            "-out", crt, "-days", "825", "-sha256", "-extfile", ext)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(crt, key)
    return ctx, ca


def write_atomic(path, obj):
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    tmp = "%s.tmp.%d" % (path, os.getpid())
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)


def main(argv=None):
    ap = argparse.ArgumentParser(description="fake Hugging Face Hub + CDN on 127.0.0.1")
    ap.add_argument("--root", required=True, help="repo store written by hubrepo.py; the log goes here too")
    ap.add_argument("--state-file", required=True, help="written atomically (JSON) once the ports listen")
    ap.add_argument("--tls-dir", help="generate a CA + cert here and serve HTTPS on both ports")
    ap.add_argument("--url-ttl", type=int, default=3600, help="lifetime of signed CDN URLs (seconds)")
    ap.add_argument("--rate-limit", type=int, default=0, help="requests per window per bucket (0: none)")
    ap.add_argument("--rate-window", type=float, default=300, help="rate-limit window (seconds)")
    ap.add_argument("--no-retry-after", action="store_true", help="answer 429 without Retry-After")
    ap.add_argument("--cdn-public-url", help="CDN base URL to put in redirects (e.g. a proxy in front of it)")
    ap.add_argument("--hub-public-url", help="hub base URL to put in Link headers")
    ap.add_argument("--hub-port", type=int, default=0)
    ap.add_argument("--cdn-port", type=int, default=0)
    args = ap.parse_args(argv)

    os.makedirs(args.root, exist_ok=True)
    app = App(args)
    ssl_ctx, ca = (None, None)
    if args.tls_dir:
        ssl_ctx, ca = make_tls(args.tls_dir)
    hub = Server(("127.0.0.1", args.hub_port), "hub", app, ssl_ctx)
    cdn = Server(("127.0.0.1", args.cdn_port), "cdn", app, ssl_ctx)
    scheme = "https" if ssl_ctx else "http"
    app.hub_url = "%s://127.0.0.1:%d" % (scheme, hub.server_address[1])
    app.cdn_url = "%s://127.0.0.1:%d" % (scheme, cdn.server_address[1])

    done = threading.Event()

    def on_signal(signum, frame):
        STOP.set()
        done.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    threads = [threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True)
               for s in (hub, cdn)]
    for t in threads:
        t.start()
    write_atomic(args.state_file, {"hub_url": app.hub_url, "cdn_url": app.cdn_url,
                                   "hub_port": hub.server_address[1], "cdn_port": cdn.server_address[1],
                                   "pid": os.getpid(), "log": app.log.path,
                                   "ca_bundle": os.path.abspath(ca) if ca else None,
                                   "root": app.root})
    while not done.wait(1.0):
        pass
    # shutdown() waits for serve_forever to notice; do it off the main thread with a bound.
    stopper = threading.Thread(target=lambda: [s.shutdown() for s in (hub, cdn)], daemon=True)
    stopper.start()
    stopper.join(5)
    for s in (hub, cdn):
        try:
            s.server_close()
        except OSError:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
