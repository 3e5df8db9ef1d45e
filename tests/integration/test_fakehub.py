#!/usr/bin/python3
"""Integration test of the fake Hub (tests/fakehub): protocol, errors, auth, faults, TLS, harness.

Prints one line per case ("PASS name", "FAIL name: why", "SKIP name: why"); exits 1 on any failure.
Only 127.0.0.1 and ephemeral ports; every server is stopped in a finally block.
"""

import hashlib
import http.client
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tests", "fakehub"))
import harness  # noqa: E402
import hubrepo  # noqa: E402

PY = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
CURL = shutil.which("curl")
TIMEOUT = 10
results = {"pass": 0, "fail": 0, "skip": 0}


class Skip(Exception):
    pass


def case(fn):
    name = fn.__name__[2:] if fn.__name__.startswith("t_") else fn.__name__
    try:
        fn()
    except Skip as e:
        results["skip"] += 1
        print("SKIP %s: %s" % (name, e), flush=True)
    except Exception as e:  # noqa: BLE001 - a case failing must not stop the others
        results["fail"] += 1
        detail = "".join(traceback.format_exception_only(type(e), e)).strip().replace("\n", " | ")
        tb = traceback.extract_tb(e.__traceback__)
        where = "line %d" % tb[-1].lineno if tb else ""
        print("FAIL %s: %s (%s)" % (name, detail, where), flush=True)
    else:
        results["pass"] += 1
        print("PASS %s" % name, flush=True)


def check(cond, msg="check failed"):
    if not cond:
        raise AssertionError(msg)


def eq(a, b, what=""):
    if a != b:
        raise AssertionError("%s: expected %r, got %r" % (what, b, a))


# ------------------------------------------------------------------ HTTP helpers

class R:
    def __init__(self, status, headers, body):
        self.status, self.body = status, body
        self.headers = {}
        for k, v in headers:
            self.headers[k.lower()] = v

    def h(self, name):
        return self.headers.get(name.lower())


def split(url):
    u = urllib.parse.urlsplit(url)
    return u.scheme, u.hostname, u.port, (u.path or "/") + ("?" + u.query if u.query else "")


def conn_for(url, ctx=None):
    scheme, host, port, _ = split(url)
    if scheme == "https":
        return http.client.HTTPSConnection(host, port, timeout=TIMEOUT, context=ctx)
    return http.client.HTTPConnection(host, port, timeout=TIMEOUT)


def req(method, url, headers=None, body=None, ctx=None, conn=None):
    own = conn is None
    c = conn or conn_for(url, ctx)
    try:
        c.request(method, split(url)[3], body=body, headers=headers or {})
        r = c.getresponse()
        data = r.read()
        return R(r.status, r.getheaders(), data)
    finally:
        if own:
            c.close()


def curl(*args, timeout=20):
    if not CURL:
        raise Skip("curl not installed")
    p = subprocess.run([CURL, "-sS", "--max-time", "15", "--noproxy", "*"] + list(args),
                       capture_output=True, timeout=timeout)
    return p


def error_of(r):
    return r.h("x-error-code"), r.h("x-error-message"), json.loads(r.body.decode() or "{}").get("error")


# ------------------------------------------------------------------ fixtures

TMP = tempfile.mkdtemp(prefix="fakehub-test-")
STORE = os.path.join(TMP, "store")
rand = os.urandom
CONFIG1 = b'{"model_type": "llama", "v": 1}\n'
CONFIG2 = b'{"model_type": "llama", "v": 2}\n'
WEIGHTS = rand(300_000)
SHARD2 = rand(50_000)
README = b"# test repo\n"
BIG = os.path.join(TMP, "big.txt")  # sparse, > 10 MB, so LFS by size
BIG_SIZE = 12 * 1000 * 1000 + 7
with open(BIG, "wb") as f:
    f.truncate(BIG_SIZE - 5)
    f.seek(BIG_SIZE - 5)
    f.write(b"TAIL!")

C1 = hubrepo.add_repo(STORE, "org/public", {"config.json": CONFIG1, "model.safetensors": WEIGHTS,
                                           "sub/dir/a.txt": b"a\n", "sub/b.txt": b"b\n",
                                           "model-00002-of-00002.safetensors": SHARD2,
                                           "README.md": README}, tags=("v1",))
C2 = hubrepo.add_repo(STORE, "org/public", {"config.json": CONFIG2, "big.txt": BIG}, inherit=True)
PR = hubrepo.add_repo(STORE, "org/public", {"config.json": b'{"pr": true}'}, branch="pr-branch",
                      parent=C2, inherit=True)
hubrepo.add_ref(STORE, "org/public", "refs/pr/1", PR)
CP = hubrepo.add_repo(STORE, "org/private", {"config.json": b"{}", "model.safetensors": rand(1000)},
                      visibility="private", tokens=["hf_private_owner"])
CG = hubrepo.add_repo(STORE, "org/gated", {"config.json": b"{}", "model.safetensors": rand(1000)},
                      visibility="gated", tokens=["hf_gate_ok"])
hubrepo.add_token(STORE, "hf_someone_else")
CD = hubrepo.add_repo(STORE, "org/ds", {"data/train.parquet": rand(2000), "data.bin": rand(3000)},
                      kind="dataset")
CN = hubrepo.add_repo(STORE, "org/new-name", {"config.json": b"{}"}, renamed_from="org/old-name")
CL = hubrepo.add_repo(STORE, "gpt2", {"config.json": b'{"legacy": 1}'})
ODD_PATH = "sub dir/naïve file+x.json"
CO = hubrepo.add_repo(STORE, "org/odd-names", {ODD_PATH: b'{"odd": true}', "w/model 1.safetensors": SHARD2})
MANY = {"f%02d.txt" % i: b"%d" % i for i in range(23)}
MANY.update({"d/x%02d.txt" % i: b"x" for i in range(7)})
CM = hubrepo.add_repo(STORE, "org/many", MANY)
SHA_W = hashlib.sha256(WEIGHTS).hexdigest()


def git_sha1(b):
    return hashlib.sha1(b"blob %d\0" % len(b) + b).hexdigest()


# ------------------------------------------------------------------ the server under test

ERR_PATH = os.path.join(TMP, "fakehub.err")
ERR = open(ERR_PATH, "wb")
try:
    HUB = harness.start(STORE, stderr=ERR)
except Exception as e:  # noqa: BLE001 - say why instead of a bare traceback
    print("FAIL start_server: %s" % e, flush=True)
    ERR.close()
    with open(ERR_PATH, "rb") as f:
        sys.stderr.write(f.read().decode(errors="replace")[-2000:])
    shutil.rmtree(TMP, ignore_errors=True)
    sys.exit(1)
H, CDN = HUB.hub_url, HUB.cdn_url


def resolve(repo, rev, path, method="HEAD", headers=None, prefix=""):
    url = "%s/%s%s/resolve/%s/%s" % (H, prefix, repo, urllib.parse.quote(rev, safe=""), urllib.parse.quote(path))
    return req(method, url, headers)


def cdn_url_for(repo="org/public", path="model.safetensors", headers=None):
    r = resolve(repo, "main", path, headers=headers)
    eq(r.status, 302, "resolve status")
    return r.h("location")


# ------------------------------------------------------------------ cases

def t_state_file_and_log_path():
    st = HUB.state
    for k in ("hub_url", "cdn_url", "hub_port", "cdn_port", "pid", "log", "ca_bundle"):
        check(k in st, "state file lacks %s" % k)
    check(st["hub_port"] != st["cdn_port"], "hub and cdn share a port")
    check(H.startswith("http://127.0.0.1:") and CDN.startswith("http://127.0.0.1:"), "not 127.0.0.1")
    eq(st["log"], os.path.join(os.path.abspath(STORE), "requests.log"), "log path")


def t_resolve_regular_file_307_then_200():
    r = resolve("org/public", "main", "config.json")
    eq(r.status, 307, "status")
    loc = r.h("location")
    check(loc.startswith("/api/resolve-cache/models/org/public/%s/config.json?" % C2), loc)
    check("etag=%22" + git_sha1(CONFIG2) + "%22" in loc, "etag in query: " + loc)
    check(r.h("etag") is None, "no ETag on the 307")
    check(r.h("ratelimit", ) and r.h("ratelimit-policy"), "RateLimit headers")
    for target in (loc, loc.split("?")[0]):  # clients may drop the query
        g = req("GET", H + target)
        eq(g.status, 200, "resolve-cache status")
        eq(g.body, CONFIG2, "body")
        eq(g.h("etag"), '"%s"' % git_sha1(CONFIG2), "ETag = git blob sha1")
        eq(g.h("x-repo-commit"), C2, "X-Repo-Commit")
        eq(g.h("content-length"), str(len(CONFIG2)), "Content-Length")
        eq(g.h("accept-ranges"), "bytes", "Accept-Ranges")
    g = req("GET", H + loc, {"Range": "bytes=2-5"})
    eq(g.status, 206, "ranged resolve-cache")
    eq(g.body, CONFIG2[2:6], "ranged body")
    eq(g.h("content-range"), "bytes 2-5/%d" % len(CONFIG2), "Content-Range")


def t_resolve_lfs_file_302_to_cdn():
    for method in ("HEAD", "GET"):
        r = resolve("org/public", "main", "model.safetensors", method=method, headers={"Range": "bytes=0-7"})
        eq(r.status, 302, "status")
        loc = r.h("location")
        check(loc.startswith(CDN + "/xet-bridge-us/"), "absolute CDN Location: " + loc)
        check(SHA_W in loc, "sha256 in CDN path")
        q = urllib.parse.parse_qs(urllib.parse.urlsplit(loc).query)
        for k in ("X-Amz-Expires", "X-Amz-Date", "X-Amz-Signature"):
            check(k in q, "%s in signed query" % k)
        eq(q["X-Amz-Expires"], ["3600"], "default ttl")
        eq(r.h("x-linked-etag"), '"%s"' % SHA_W, "X-Linked-Etag")
        eq(r.h("x-linked-size"), str(len(WEIGHTS)), "X-Linked-Size")
        eq(r.h("x-repo-commit"), C2, "X-Repo-Commit")
        check(r.h("etag") is None, "no ETag on LFS 302")
        check(r.h("content-type").startswith("text/plain"), "content-type")
        if method == "GET":
            check(r.body.startswith(b"Found. Redirecting to"), "small body")
        g = req("GET", loc)
        eq(g.status, 200, "cdn status")
        eq(g.body, WEIGHTS, "cdn body")
        eq(g.h("etag"), '"%s"' % SHA_W, "cdn ETag = sha256")
        eq(g.h("accept-ranges"), "bytes", "Accept-Ranges")
        check("max-age=31536000" in g.h("cache-control"), "Cache-Control")


def t_resolve_revision_flavours():
    want = {"main": C2, C1: C1, C2: C2, "v1": C1, "refs/pr/1": PR, "pr-branch": PR, C1[:10]: C1}
    for rev, commit in want.items():
        r = resolve("org/public", rev, "model.safetensors")
        eq(r.status, 302, "status for %s" % rev)
        eq(r.h("x-repo-commit"), commit, "commit for %s" % rev)
    # refs/pr/1 sent unencoded is accepted too
    r = req("HEAD", H + "/org/public/resolve/refs/pr/1/model.safetensors")
    eq((r.status, r.h("x-repo-commit")), (302, PR), "unencoded refs/pr/1")
    r = resolve("org/public", "refs/pr/1", "config.json")
    g = req("GET", H + r.h("location"))
    eq(g.body, b'{"pr": true}', "pr content")
    # old revision keeps the old content
    r = resolve("org/public", C1, "config.json")
    eq(req("GET", H + r.h("location")).body, CONFIG1, "old commit content")


def t_resolve_dataset_and_legacy_id():
    r = resolve("org/ds", "main", "data/train.parquet", prefix="datasets/")
    eq(r.status, 307, "dataset regular file (not LFS: small, .parquet)")
    check(r.h("location").startswith("/api/resolve-cache/datasets/org/ds/%s/data/train.parquet" % CD), r.h("location"))
    eq(req("GET", H + r.h("location")).status, 200, "dataset resolve-cache")
    r = resolve("org/ds", "main", "data.bin", prefix="datasets/")
    eq(r.status, 302, "dataset LFS")
    r = resolve("org/ds", "main", "data.bin")
    eq((r.status, error_of(r)[0]), (401, "RepoNotFound"), "dataset is not a model")
    r = resolve("gpt2", "main", "config.json")
    eq(r.status, 307, "legacy un-namespaced id")
    eq(req("GET", H + r.h("location")).body, b'{"legacy": 1}', "legacy content")


def t_resolve_big_sparse_file_is_lfs():
    r = resolve("org/public", "main", "big.txt")
    eq(r.status, 302, "> 10 MB is LFS")
    eq(r.h("x-linked-size"), str(BIG_SIZE), "size")
    g = req("GET", r.h("location"), {"Range": "bytes=-5"})
    eq((g.status, g.body), (206, b"TAIL!"), "suffix range of sparse file")
    eq(g.h("content-range"), "bytes %d-%d/%d" % (BIG_SIZE - 5, BIG_SIZE - 1, BIG_SIZE), "Content-Range")


def t_odd_file_names():
    r = resolve("org/odd-names", "main", ODD_PATH, method="GET")
    eq(r.status, 307, "status")
    check("/sub%20dir/na%C3%AFve%20file%2Bx.json?" in r.h("location"), r.h("location"))
    eq(req("GET", H + r.h("location")).body, b'{"odd": true}', "content")
    r = resolve("org/odd-names", "main", "w/model 1.safetensors")
    eq(r.status, 302, "LFS in a subfolder with a space")
    eq(req("GET", r.h("location")).body, SHARD2, "CDN content")
    p = curl("-L", H + "/org/odd-names/resolve/main/" + urllib.parse.quote(ODD_PATH))
    eq(p.stdout, b'{"odd": true}', "curl")
    r = req("POST", H + "/api/models/org/odd-names/paths-info/main", {"Content-Type": "application/json"},
            json.dumps({"paths": [ODD_PATH]}))
    eq([e["path"] for e in json.loads(r.body)], [ODD_PATH], "paths-info with odd name")


def t_full_read_of_big_sparse_file_matches_sha256():
    r = resolve("org/public", "main", "big.txt")
    g = req("GET", r.h("location"))
    eq(len(g.body), BIG_SIZE, "size")
    eq('"%s"' % hashlib.sha256(g.body).hexdigest(), r.h("x-linked-etag"), "sha256 of the body = X-Linked-Etag")


def t_parallel_ranges_on_many_connections():
    import threading
    loc = cdn_url_for()
    errors = []
    n = len(WEIGHTS)

    def worker(seed):
        c = conn_for(loc)
        try:
            for i in range(25):
                a = (seed * 7919 + i * 104729) % n
                b = min(n - 1, a + (i * 997) % 20000)
                r = req("GET", loc, {"Range": "bytes=%d-%d" % (a, b)}, conn=c)
                if r.status != 206 or r.body != WEIGHTS[a:b + 1] or \
                        r.h("content-range") != "bytes %d-%d/%d" % (a, b, n):
                    errors.append((seed, i, r.status))
        except Exception as e:  # noqa: BLE001
            errors.append((seed, repr(e)))
        finally:
            c.close()
    ths = [threading.Thread(target=worker, args=(k,)) for k in range(16)]
    for t in ths:
        t.start()
    for t in ths:
        t.join(30)
    eq(errors, [], "16 connections x 25 keep-alive ranges")


def t_hubrepo_cli_ref_token_and_attach():
    hr = os.path.join(ROOT, "tests/fakehub/hubrepo.py")
    p = subprocess.run([PY, hr, "ref", "--root", STORE, "--repo", "org/many", "--ref", "refs/pr/7", "--commit", CM[:12]],
                       capture_output=True, timeout=30)
    eq((p.returncode, p.stdout.decode().strip()), (0, CM), "ref (short sha accepted)")
    eq(resolve("org/many", "refs/pr/7", "f00.txt").h("location").split("/")[6], CM, "refs/pr/7 resolves")
    p = subprocess.run([PY, hr, "token", "--root", STORE, "--token", "hf_cli_user"], capture_output=True, timeout=30)
    eq(p.returncode, 0, "token")
    r = resolve("org/private", "main", "config.json", headers={"Authorization": "Bearer hf_cli_user"})
    eq(r.status, 404, "registered token is valid but not allowed")
    p = subprocess.run([PY, hr, "ref", "--root", STORE, "--repo", "org/public", "--ref", "x", "--commit", "f" * 40],
                       capture_output=True, timeout=30)
    check(p.returncode != 0 and b"not in" in p.stderr, "unknown commit refused")
    a = harness.attach(HUB.state_file)
    eq(a.hub_url, H, "attach")
    check(isinstance(a.log(), list), "attach log")


def t_gzip_only_when_asked():
    import gzip
    r = resolve("org/public", "main", "config.json")
    g = req("GET", H + r.h("location"), {"Accept-Encoding": "gzip"})
    eq((g.status, g.h("content-encoding")), (200, "gzip"), "hub gzips text for gzip clients")
    eq(gzip.decompress(g.body), CONFIG2, "gzip body")
    eq(g.h("content-length"), str(len(g.body)), "Content-Length is the compressed size")
    g = req("GET", H + r.h("location"), {"Accept-Encoding": "gzip", "Range": "bytes=0-3"})
    eq((g.status, g.h("content-encoding"), g.body), (206, None, CONFIG2[:4]), "ranges are never encoded")
    g = req("GET", H + r.h("location"), {"Accept-Encoding": "identity"})
    eq((g.h("content-encoding"), g.body), (None, CONFIG2), "identity")
    loc = cdn_url_for()
    g = req("GET", loc, {"Accept-Encoding": "gzip", "Range": "bytes=0-9"})
    eq(g.status, 206, "CDN ignores gzip by default")
    HUB.config(cdn_gzip=True)
    try:
        g = req("GET", loc, {"Accept-Encoding": "gzip", "Range": "bytes=0-9"})
        eq((g.status, g.h("content-encoding")), (200, "gzip"), "CloudFront pitfall: 200 gzip for a range")
        eq(gzip.decompress(g.body), WEIGHTS, "whole file")
        eq(req("GET", loc, {"Range": "bytes=0-9"}).status, 206, "no gzip without Accept-Encoding")
    finally:
        HUB.config(cdn_gzip=False)


def t_cdn_ranges():
    loc = cdn_url_for()
    n = len(WEIGHTS)
    cases = [("bytes=0-7", 206, 0, 7), ("bytes=100-", 206, 100, n - 1), ("bytes=-10", 206, n - 10, n - 1),
             ("bytes=%d-%d" % (n - 3, n + 1000), 206, n - 3, n - 1), ("bytes=0-0", 206, 0, 0),
             ("bytes=-%d" % (n + 5), 206, 0, n - 1)]
    for rng, st, a, b in cases:
        g = req("GET", loc, {"Range": rng})
        eq(g.status, st, rng)
        eq(g.h("content-range"), "bytes %d-%d/%d" % (a, b, n), rng)
        eq(g.body, WEIGHTS[a:b + 1], rng + " body")
        eq(g.h("content-length"), str(b - a + 1), rng + " length")
    for rng in ("bytes=%d-" % n, "bytes=%d-%d" % (n + 10, n + 20), "bytes=-0"):
        g = req("GET", loc, {"Range": rng})
        eq(g.status, 416, rng)
        eq(g.h("content-range"), "bytes */%d" % n, rng + " Content-Range")
    g = req("GET", loc, {"Range": "bytes=5-2"})  # unsatisfiable syntax -> ignored
    eq(g.status, 200, "invalid range ignored")
    g = req("HEAD", loc, {"Range": "bytes=10-19"})
    eq((g.status, g.h("content-length"), g.body), (206, "10", b""), "HEAD with range")
    g = req("GET", loc, {"Range": "bytes=0-1,10-11"})
    check(g.status in (200, 206), "multi-range status")
    if g.status == 206:
        check(g.h("content-type").startswith("multipart/byteranges"), "multipart")
        check(g.h("content-range") is None, "no top-level Content-Range on multipart")
        check(WEIGHTS[10:12] in g.body, "parts present")


def t_cdn_signature_and_expiry():
    loc = cdn_url_for()
    bad = loc.replace("X-Amz-Signature=", "X-Amz-Signature=0")
    eq(req("GET", bad).status, 403, "tampered signature")
    u = urllib.parse.urlsplit(loc)
    eq(req("GET", CDN + u.path).status, 403, "unsigned URL")
    other = loc.replace("X-Amz-Expires=3600", "X-Amz-Expires=999999")
    eq(req("GET", other).status, 403, "expiry not part of the signature?")
    HUB.config(url_ttl=1)
    try:
        loc1 = cdn_url_for()
        check("X-Amz-Expires=1&" in loc1, "ttl in query")
        eq(req("GET", loc1).status, 200, "fresh URL")
        time.sleep(2.05)  # signed at the next whole second, valid for 1 s
        g = req("GET", loc1)
        eq(g.status, 403, "expired URL")
        check(b"expired" in g.body, "says expired")
        eq(req("GET", cdn_url_for()).status, 200, "re-resolved URL works")
    finally:
        HUB.config(url_ttl=3600)


def t_cdn_flags_authorization():
    loc = cdn_url_for()
    HUB.clear_log()
    g = req("GET", loc, {"Authorization": "Bearer hf_private_owner", "Range": "bytes=0-1"})
    eq(g.status, 400, "Authorization on CDN rejected")
    log = HUB.log(server="cdn")
    eq(len(log), 1, "one cdn entry")
    eq(log[0]["headers"].get("authorization"), "<present>", "authorization value hidden")
    check("authorization_on_cdn" in log[0].get("flags", []), "flagged")
    eq(log[0]["status"], 400, "logged status")


def t_curl_drops_auth_on_cross_port_redirect():
    HUB.clear_log()
    out = os.path.join(TMP, "curl-private.bin")
    p = curl("-L", "-o", out, "-w", "%{http_code} %{num_redirects}", "-H", "Authorization: Bearer hf_private_owner",
             H + "/org/private/resolve/main/model.safetensors")
    eq(p.returncode, 0, "curl rc (%s)" % p.stderr.decode())
    eq(p.stdout.decode(), "200 1", "final status and redirects")
    log = HUB.log()
    eq([e["server"] for e in log], ["hub", "cdn"], "hub then cdn")
    eq(log[0]["headers"].get("authorization"), "<present>", "hub got the token")
    check("authorization" not in log[1]["headers"], "CDN must not get Authorization")
    # --location-trusted forwards it: the CDN must flag and reject that
    p = curl("-L", "--location-trusted", "-o", "/dev/null", "-w", "%{http_code}",
             "-H", "Authorization: Bearer hf_private_owner", H + "/org/private/resolve/main/model.safetensors")
    eq(p.stdout.decode(), "400", "flagged by CDN")
    check("authorization_on_cdn" in HUB.log(server="cdn")[-1].get("flags", []), "flag logged")


def t_curl_relative_redirect_and_range():
    p = curl("-L", "-r", "0-9", "-D", "-", "-o", os.path.join(TMP, "c.bin"),
             H + "/org/public/resolve/main/config.json")
    eq(p.returncode, 0, p.stderr.decode())
    hdrs = p.stdout.decode().lower()
    check("307 temporary redirect" in hdrs and "206 partial content" in hdrs, hdrs)
    with open(os.path.join(TMP, "c.bin"), "rb") as f:
        eq(f.read(), CONFIG2[:10], "curl range through relative redirect")


def t_errors():
    r = resolve("org/nope", "main", "config.json", method="GET")
    eq(r.status, 401, "missing repo, anonymous")
    code, msg, body = error_of(r)
    eq(code, "RepoNotFound", "code")
    eq(body, msg, "JSON body repeats X-Error-Message")
    r = resolve("org/nope", "main", "config.json", headers={"Authorization": "Bearer hf_someone_else"})
    eq((r.status, error_of(r)[0]), (404, "RepoNotFound"), "missing repo, authenticated")
    r = resolve("org/public", "main", "nope.json", method="GET")
    eq((r.status, error_of(r)[0]), (404, "EntryNotFound"), "missing file")
    eq(r.h("x-repo-commit"), C2, "EntryNotFound carries X-Repo-Commit")
    r = resolve("org/public", "no-such-branch", "config.json")
    eq((r.status, error_of(r)[0]), (404, "RevisionNotFound"), "missing revision")
    check("no-such-branch" in error_of(r)[1], "message names the revision")
    r = resolve("org/public", "0" * 40, "config.json")
    eq((r.status, error_of(r)[0]), (404, "RevisionNotFound"), "unknown commit")
    r = req("GET", H + "/api/models/org/nope")
    eq((r.status, error_of(r)[0]), (401, "RepoNotFound"), "api missing repo")
    r = req("GET", H + "/api/models/org/public/revision/nope")
    eq((r.status, error_of(r)[0]), (404, "RevisionNotFound"), "api missing revision")
    r = req("GET", H + "/api/models/org/public/tree/main/nowhere")
    eq((r.status, error_of(r)[0]), (404, "EntryNotFound"), "tree missing path")
    eq(error_of(r)[1], 'nowhere does not exist on "main"', "tree message")


def t_auth_modes():
    tok = lambda t: {"Authorization": "Bearer " + t}  # noqa: E731
    r = resolve("org/public", "main", "config.json", headers=tok("hf_invalid_xyz"))
    eq(r.status, 401, "invalid token on public repo")
    eq(error_of(r)[1], "Invalid credentials in Authorization header", "message")
    eq(error_of(r)[0], None, "no X-Error-Code for invalid credentials")
    eq(req("GET", H + "/api/models/org/public", tok("hf_invalid_xyz")).status, 401, "invalid token on api")
    eq(resolve("org/public", "main", "config.json", headers=tok("hf_someone_else")).status, 307, "valid token")
    # private
    r = resolve("org/private", "main", "config.json")
    eq((r.status, error_of(r)[0]), (401, "RepoNotFound"), "private anonymous")
    r = resolve("org/private", "main", "config.json", headers=tok("hf_someone_else"))
    eq((r.status, error_of(r)[0]), (404, "RepoNotFound"), "private other user")
    r = resolve("org/private", "main", "config.json", headers=tok("hf_private_owner"))
    eq(r.status, 307, "private owner")
    eq(req("GET", H + r.h("location")).status, 401, "resolve-cache also needs the token")
    eq(req("GET", H + r.h("location"), tok("hf_private_owner")).status, 200, "resolve-cache with token")
    r = req("GET", H + "/api/models/org/private", tok("hf_private_owner"))
    eq((r.status, json.loads(r.body)["private"]), (200, True), "private api with token")
    eq(req("GET", H + "/api/models/org/private").status, 401, "private api anonymous")
    # gated
    r = resolve("org/gated", "main", "model.safetensors")
    eq((r.status, error_of(r)[0]), (401, "GatedRepo"), "gated anonymous")
    check("Please log in" in error_of(r)[1], "gated anonymous message")
    r = resolve("org/gated", "main", "model.safetensors", headers=tok("hf_someone_else"))
    eq((r.status, error_of(r)[0]), (403, "GatedRepo"), "gated not approved")
    check("not in the authorized list" in error_of(r)[1], "gated 403 message")
    eq(resolve("org/gated", "main", "model.safetensors", headers=tok("hf_gate_ok")).status, 302, "gated approved")
    r = req("GET", H + "/api/models/org/gated")
    eq(r.status, 200, "gated metadata readable anonymously")
    eq(json.loads(r.body)["gated"], "auto", "gated field")
    r = req("GET", H + "/api/whoami-v2", tok("hf_gate_ok"))
    eq(r.status, 200, "whoami")


def t_renamed_repo_redirect():
    r = resolve("org/old-name", "main", "config.json", method="GET")
    eq(r.status, 307, "rename")
    eq(r.h("location"), "/org/new-name/resolve/main/config.json", "relative Location")
    check(r.body.startswith(b"Temporary Redirect. Redirecting to /org/new-name/"), "body")
    r2 = req("HEAD", H + r.h("location"))
    eq(r2.status, 307, "then the resolve-cache redirect")
    eq(req("GET", H + r2.h("location")).body, b"{}", "content")
    r = req("GET", H + "/api/models/org/old-name?blobs=true")
    eq((r.status, r.h("location")), (307, "/api/models/org/new-name?blobs=true"), "api rename")


def t_if_none_match_304():
    r = resolve("org/public", "main", "model.safetensors", headers={"If-None-Match": '"%s"' % SHA_W})
    eq(r.status, 304, "LFS etag matches")
    eq(r.h("x-repo-commit"), C2, "commit on 304")
    r = resolve("org/public", "main", "config.json", method="GET",
                headers={"If-None-Match": '"%s"' % git_sha1(CONFIG2)})
    eq((r.status, r.body), (304, b""), "regular etag matches")
    eq(resolve("org/public", "main", "model.safetensors", headers={"If-None-Match": '"abc"'}).status, 302,
       "non-matching etag")


def t_api_model_info():
    r = req("GET", H + "/api/models/org/public?blobs=true")
    eq(r.status, 200, "status")
    info = json.loads(r.body)
    eq((info["id"], info["sha"], info["private"], info["gated"]), ("org/public", C2, False, False), "fields")
    sib = {s["rfilename"]: s for s in info["siblings"]}
    eq(sib["model.safetensors"]["lfs"]["sha256"], SHA_W, "lfs.sha256")
    eq(sib["model.safetensors"]["lfs"]["size"], len(WEIGHTS), "lfs.size")
    eq(sib["model.safetensors"]["size"], len(WEIGHTS), "size")
    eq(sib["config.json"]["blobId"], git_sha1(CONFIG2), "blobId")
    check("lfs" not in sib["config.json"], "no lfs for a regular file")
    r = req("GET", H + "/api/models/org/public/revision/v1")
    info = json.loads(r.body)
    eq(info["sha"], C1, "revision sha")
    check("big.txt" not in [s["rfilename"] for s in info["siblings"]], "old tree")
    check("lfs" not in info["siblings"][0], "no blobs without blobs=true")
    r = req("GET", H + "/api/models/org/public/revision/refs%2Fpr%2F1")
    eq(json.loads(r.body)["sha"], PR, "revision refs/pr/1")
    r = req("GET", H + "/api/datasets/org/ds")
    eq(json.loads(r.body)["sha"], CD, "dataset info")


def t_api_tree_and_pagination():
    r = req("GET", H + "/api/models/org/public/tree/main")
    eq(r.status, 200, "status")
    top = json.loads(r.body)
    paths = [e["path"] for e in top]
    check("sub" in paths and "sub/b.txt" not in paths, "non-recursive: %s" % paths)
    eq([e for e in top if e["path"] == "sub"][0]["type"], "directory", "directory entry")
    w = [e for e in top if e["path"] == "model.safetensors"][0]
    eq(w["lfs"]["oid"], SHA_W, "lfs.oid")
    check("pointerSize" in w["lfs"], "pointerSize")
    r = req("GET", H + "/api/models/org/public/tree/main/sub?recursive=true")
    eq(sorted(e["path"] for e in json.loads(r.body)), ["sub/b.txt", "sub/dir", "sub/dir/a.txt"], "recursive subdir")
    r = req("GET", H + "/api/models/org/public/tree/main/sub%2Fdir")
    eq([e["path"] for e in json.loads(r.body)], ["sub/dir/a.txt"], "%2F in tree path")
    r = req("GET", H + "/api/models/org/public/tree/main?recursive=true&expand=true")
    ent = [e for e in json.loads(r.body) if e["path"] == "README.md"][0]
    eq(ent["lastCommit"]["id"], C1, "lastCommit of an unchanged file")
    # pagination with an opaque cursor
    full = json.loads(req("GET", H + "/api/models/org/many/tree/main?recursive=true").body)
    eq(len(full), 31, "30 files + 1 directory")
    HUB.config(tree_page_size=7)
    try:
        url = H + "/api/models/org/many/tree/main?recursive=true"
        got, pages = [], 0
        while url:
            r = req("GET", url)
            eq(r.status, 200, "page status")
            page = json.loads(r.body)
            check(len(page) <= 7, "page size")
            got += page
            pages += 1
            link = r.h("link")
            url = None
            if link:
                check(link.endswith('>; rel="next"') and link.startswith("<" + H), link)
                url = link[1:link.index(">")]
                check("cursor=" in url, "cursor in next link")
            check(pages < 20, "pagination terminates")
        eq(pages, 5, "pages")
        eq(got, full, "pages concatenate to the full listing")
        eq(req("GET", H + "/api/models/org/many/tree/main?cursor=garbage!").status, 400, "bad cursor")
    finally:
        HUB.config(tree_page_size=0)


def t_api_paths_info_and_refs():
    url = H + "/api/models/org/public/paths-info/main"
    r = req("POST", url, {"Content-Type": "application/x-www-form-urlencoded"},
            "paths=config.json&paths=model.safetensors&paths=nope&paths=sub&expand=false")
    got = {e["path"]: e for e in json.loads(r.body)}
    eq(sorted(got), ["config.json", "model.safetensors", "sub"], "form paths")
    eq(got["model.safetensors"]["lfs"]["oid"], SHA_W, "lfs oid")
    eq(got["sub"]["type"], "directory", "dir")
    r = req("POST", url, {"Content-Type": "application/json"},
            json.dumps({"paths": ["config.json"], "expand": True}))
    e = json.loads(r.body)
    eq((len(e), e[0]["oid"]), (1, git_sha1(CONFIG2)), "json paths")
    check("lastCommit" in e[0], "expand")
    r = req("GET", H + "/api/models/org/public/refs")
    refs = json.loads(r.body)
    eq(sorted(b["name"] for b in refs["branches"]), ["main", "pr-branch"], "branches")
    eq([(t["name"], t["ref"], t["targetCommit"]) for t in refs["tags"]], [("v1", "refs/tags/v1", C1)], "tags")
    check("pullRequests" not in refs, "no PRs without include_prs")
    refs = json.loads(req("GET", H + "/api/models/org/public/refs?include_prs=1").body)
    eq([p["ref"] for p in refs["pullRequests"]], ["refs/pr/1"], "PRs")
    r = req("GET", H + "/api/models/org/public/commits/main")
    eq([c["id"] for c in json.loads(r.body)], [C2, C1], "commits")


def t_rate_limit_with_and_without_retry_after():
    HUB.config(rate_limit=3, rate_window=60, rate_retry_after=True)
    try:
        for i in range(3):
            r = resolve("org/public", "main", "model.safetensors")
            eq(r.status, 302, "within quota %d" % i)
            eq(r.h("ratelimit-policy"), '"fixed window";"resolvers";q=3;w=60', "policy")
        check(r.h("ratelimit").startswith('"resolvers";r=0;t='), r.h("ratelimit"))
        r = resolve("org/public", "main", "model.safetensors", method="GET")
        eq(r.status, 429, "over quota")
        check(r.h("retry-after") and int(r.h("retry-after")) > 0, "Retry-After")
        check(b"rate limit" in r.body, "message")
        eq(req("GET", H + "/api/models/org/public").status, 200, "api bucket is separate")
        HUB.config(rate_limit=1, rate_window=60, rate_retry_after=False)
        resolve("org/public", "main", "config.json")
        r = resolve("org/public", "main", "config.json")
        eq(r.status, 429, "over quota again")
        eq(r.h("retry-after"), None, "no Retry-After")
        check(r.h("ratelimit"), "RateLimit still sent")
    finally:
        HUB.config(rate_limit=0, rate_retry_after=True)
    eq(resolve("org/public", "main", "config.json").status, 307, "limit lifted")


def with_fault(spec, fn):
    HUB.clear_faults()
    HUB.faults([spec])
    try:
        return fn()
    finally:
        HUB.clear_faults()


def t_fault_ignore_range():
    loc = cdn_url_for()
    g = with_fault({"server": "cdn", "match": "model.safetensors", "kind": "ignore_range"},
                   lambda: req("GET", loc, {"Range": "bytes=0-9"}))
    eq((g.status, len(g.body), g.h("content-range")), (200, len(WEIGHTS), None), "full body")
    eq(req("GET", loc, {"Range": "bytes=0-9"}).status, 206, "count=1: next request is normal")
    log = HUB.log(server="cdn")
    eq(log[-2]["fault"], "ignore_range", "fault logged")
    eq(log[-1]["fault"], None, "no fault logged")


def t_fault_wrong_content_range():
    loc = cdn_url_for()
    g = with_fault({"server": "cdn", "match": "model.safetensors", "kind": "wrong_content_range"},
                   lambda: req("GET", loc, {"Range": "bytes=0-9"}))
    eq(g.status, 206, "status")
    check(g.h("content-range") != "bytes 0-9/%d" % len(WEIGHTS), "Content-Range is wrong")
    g = with_fault({"server": "cdn", "match": "model.safetensors", "kind": "wrong_content_range",
                    "content_range": "bytes 0-9/1"}, lambda: req("GET", loc, {"Range": "bytes=0-9"}))
    eq(g.h("content-range"), "bytes 0-9/1", "literal Content-Range")


def t_fault_short_body():
    loc = cdn_url_for()

    def go():
        c = conn_for(loc)
        try:
            c.request("GET", split(loc)[3], headers={"Range": "bytes=0-9999"})
            r = c.getresponse()
            eq(r.getheader("content-length"), "10000", "declared length")
            try:
                r.read()
            except http.client.IncompleteRead as e:
                return len(e.partial)
            raise AssertionError("body was complete")
        finally:
            c.close()
    n = with_fault({"server": "cdn", "match": "model.safetensors", "kind": "short_body", "after_bytes": 1234}, go)
    eq(n, 1234, "bytes before close")
    eq(HUB.log(server="cdn")[-1]["bytes_sent"], 1234, "bytes_sent logged")


def t_fault_reset_mid_body():
    loc = cdn_url_for()

    def go():
        c = conn_for(loc)
        try:
            c.request("GET", split(loc)[3])
            r = c.getresponse()
            try:
                r.read()
            except (ConnectionResetError, http.client.IncompleteRead):
                return "reset"
            return "complete"
        finally:
            c.close()
    eq(with_fault({"server": "cdn", "match": "model.safetensors", "kind": "reset", "after_bytes": 1000}, go),
       "reset", "python client")
    p = with_fault({"server": "cdn", "match": "model.safetensors", "kind": "reset", "after_bytes": 1000},
                   lambda: curl("-o", "/dev/null", loc))
    check(p.returncode in (18, 56), "curl sees a broken transfer (rc %d: %s)" % (p.returncode, p.stderr.decode()))
    e = HUB.log(server="cdn")[-1]
    eq((e["fault"], e["bytes_sent"]), ("reset", 1000), "logged")


def t_fault_stall():
    loc = cdn_url_for()

    def go():
        t0 = time.time()
        g = req("GET", loc, {"Range": "bytes=0-99999"})
        return time.time() - t0, g
    dt, g = with_fault({"server": "cdn", "match": "model.safetensors", "kind": "stall", "after_bytes": 100,
                        "seconds": 0.6}, go)
    check(dt >= 0.55, "stalled %.2f s" % dt)
    eq((g.status, g.body), (206, WEIGHTS[:100000]), "body completes after the stall")
    # curl's low-speed limit detects the stall
    p = with_fault({"server": "cdn", "match": "model.safetensors", "kind": "stall", "after_bytes": 100,
                    "seconds": 5}, lambda: curl("-o", "/dev/null", "-y", "1", "-Y", "1000", loc))
    eq(p.returncode, 28, "curl low-speed timeout")


def t_fault_statuses():
    loc = cdn_url_for()
    for st in (500, 502, 503, 504):
        g = with_fault({"server": "cdn", "match": "model.safetensors", "kind": "status", "status": st},
                       lambda: req("GET", loc, {"Range": "bytes=0-9"}))
        eq(g.status, st, "injected status")
        eq(HUB.log(server="cdn")[-1]["fault"], "status", "fault name")
    g = with_fault({"server": "cdn", "match": "model.safetensors", "kind": "416"},
                   lambda: req("GET", loc, {"Range": "bytes=0-9"}))
    eq((g.status, g.h("content-range")), (416, "bytes */%d" % len(WEIGHTS)), "flaky 416")
    g = with_fault({"server": "hub", "match": "/resolve/", "kind": "429", "retry_after": 2},
                   lambda: resolve("org/public", "main", "config.json"))
    eq((g.status, g.h("retry-after")), (429, "2"), "429 with Retry-After")
    check(g.h("ratelimit") and g.h("ratelimit-policy"), "an injected 429 on the hub keeps the RateLimit headers")
    g = with_fault({"server": "hub", "match": "/resolve/", "kind": "status", "status": 429},
                   lambda: resolve("org/public", "main", "config.json"))
    eq((g.status, g.h("retry-after")), (429, None), "429 without Retry-After")
    g = with_fault({"server": "cdn", "match": "", "kind": "expired"}, lambda: req("GET", loc))
    eq((g.status, b"expired" in g.body), (403, True), "expired fault")
    # server filter: a cdn fault never fires on the hub, count=2 fires twice
    HUB.faults([{"server": "cdn", "match": "", "kind": "503", "count": 2}])
    try:
        eq(resolve("org/public", "main", "model.safetensors").status, 302, "hub unaffected")
        eq([req("GET", loc).status for _ in range(3)], [503, 503, 200], "count")
    finally:
        HUB.clear_faults()


def t_fault_missing_content_length():
    loc = cdn_url_for()

    def go():
        c = conn_for(loc)
        try:
            c.request("GET", split(loc)[3], headers={"Range": "bytes=0-4999"})
            r = c.getresponse()
            return r.getheader("content-length"), r.getheader("connection"), r.read()
        finally:
            c.close()
    cl, connh, body = with_fault({"server": "cdn", "match": "model.safetensors", "kind": "no_content_length"}, go)
    eq((cl, connh), (None, "close"), "no Content-Length, Connection: close")
    eq(body, WEIGHTS[:5000], "body read to EOF")


def t_fault_corrupt_body():
    loc = cdn_url_for()
    g = with_fault({"server": "cdn", "match": "model.safetensors", "kind": "corrupt", "offset": 5},
                   lambda: req("GET", loc, {"Range": "bytes=0-99"}))
    eq((g.status, len(g.body), g.h("content-range")), (206, 100, "bytes 0-99/%d" % len(WEIGHTS)), "framing intact")
    eq(g.body[:5] + g.body[6:], WEIGHTS[:5] + WEIGHTS[6:100], "other bytes intact")
    eq(g.body[5], WEIGHTS[5] ^ 0xFF, "byte 5 flipped")
    eq(req("GET", loc, {"Range": "bytes=0-99"}).body, WEIGHTS[:100], "then intact")


def t_fault_corrupt_file_offset():
    loc = cdn_url_for()

    def go():
        return [req("GET", loc, {"Range": r}) for r in ("bytes=0-99", "bytes=1000-1999", "bytes=1500-1500")]
    spec = {"server": "cdn", "match": "model.safetensors", "kind": "corrupt", "file_offset": 1500, "count": -1}
    a, b, c = with_fault(spec, go)
    eq(a.body, WEIGHTS[:100], "a response not covering the byte is intact")
    eq((b.status, len(b.body), b.h("content-range")), (206, 1000, "bytes 1000-1999/%d" % len(WEIGHTS)), "framing")
    eq(b.body[:500] + b.body[501:], WEIGHTS[1000:1500] + WEIGHTS[1501:2000], "other bytes intact")
    eq(b.body[500], WEIGHTS[1500] ^ 0xFF, "file byte 1500 flipped")
    eq(c.body[0], WEIGHTS[1500] ^ 0xFF, "in every response that covers it")
    check(HUB.log(server="cdn")[-1]["fault"] == "corrupt", "fault logged")


def t_fault_served_size():
    loc = cdn_url_for()
    n = len(WEIGHTS)

    def go():
        return [req("GET", loc, {"Range": r}) for r in ("bytes=0-9", "bytes=%d-%d" % (n - 200, n - 1),
                                                        "bytes=%d-%d" % (n - 50, n - 1))] + [req("GET", loc)]
    short = with_fault({"server": "cdn", "match": "org/public/model.safetensors", "kind": "served_size",
                        "size": n - 100, "count": -1}, go)
    eq((short[0].status, short[0].h("content-range"), short[0].body), (206, "bytes 0-9/%d" % (n - 100), WEIGHTS[:10]),
       "total is the served size")
    eq((short[1].status, short[1].h("content-range")), (206, "bytes %d-%d/%d" % (n - 200, n - 101, n - 100)),
       "end clamped to the served size")
    eq(short[1].body, WEIGHTS[n - 200:n - 100], "the real bytes, cut short")
    eq((short[2].status, short[2].h("content-range")), (416, "bytes */%d" % (n - 100)), "416 past the served end")
    eq((short[3].status, len(short[3].body)), (200, n - 100), "whole file: the served size")
    longer = with_fault({"server": "cdn", "match": "model.safetensors", "kind": "served_size", "size": n + 8,
                         "count": -1}, lambda: req("GET", loc, {"Range": "bytes=%d-%d" % (n - 2, n + 7)}))
    eq((longer.status, longer.h("content-range"), longer.body), (206, "bytes %d-%d/%d" % (n - 2, n + 7, n + 8),
                                                                 WEIGHTS[-2:] + b"\0" * 8), "padded with zeros")
    # the Hub itself still lists and redirects with the real size
    r = resolve("org/public", "main", "model.safetensors")
    eq(r.h("x-linked-size"), str(n), "X-Linked-Size unchanged")
    eq(req("GET", loc, {"Range": "bytes=0-9"}).h("content-range"), "bytes 0-9/%d" % n, "cleared: real size")
    bad = req("POST", H + "/_fake/faults", body=json.dumps({"server": "cdn", "kind": "served_size"}).encode())
    eq(bad.status, 400, "served_size without size is refused")


def t_fault_denied():
    loc = cdn_url_for()
    g = with_fault({"server": "cdn", "match": "model.safetensors", "kind": "denied"},
                   lambda: req("GET", loc, {"Range": "bytes=0-9"}))
    eq((g.status, g.h("x-error-code")), (403, "AccessDenied"), "denied")
    check(b"<Code>AccessDenied</Code><Message>Access Denied</Message>" in g.body, "S3-style body: %r" % g.body)
    check(b"expired" not in g.body, "not the expiry message")
    eq(req("GET", loc, {"Range": "bytes=0-9"}).status, 206, "then served")


def t_fault_drip():
    loc = cdn_url_for()

    def go():
        t0 = time.time()
        g = req("GET", loc, {"Range": "bytes=0-19"})
        return time.time() - t0, g
    dt, g = with_fault({"server": "cdn", "match": "model.safetensors", "kind": "drip", "after_bytes": 10,
                        "bytes_per_second": 20}, go)
    eq((g.status, g.body), (206, WEIGHTS[:20]), "the right bytes, slowly")
    check(0.4 <= dt < 3, "10 bytes at 20 bytes/s took %.2f s" % dt)
    eq(HUB.log(server="cdn")[-1]["fault"], "drip", "fault logged")
    # a client with a minimum rate gives up on it (curl: 100 bytes/s over 1 s)
    p = with_fault({"server": "cdn", "match": "model.safetensors", "kind": "drip", "after_bytes": 0,
                    "bytes_per_second": 2, "seconds": 10}, lambda: curl("-o", "/dev/null", "-y", "1", "-Y", "100", loc))
    eq(p.returncode, 28, "curl low-speed timeout")
    bad = req("POST", H + "/_fake/faults", body=json.dumps({"kind": "drip", "bytes_per_second": 0}).encode())
    eq(bad.status, 400, "a zero rate is refused")


def t_fault_extra_body():
    loc = cdn_url_for()

    def raw(spec):
        def go():
            c = conn_for(loc)
            try:
                c.request("GET", split(loc)[3], headers={"Range": "bytes=0-99"})
                r = c.getresponse()
                return r.status, r.getheader("content-length"), r.getheader("content-range"), r.read()
            finally:
                c.close()
        return with_fault(spec, go)
    st, cl, cr, body = raw({"server": "cdn", "match": "model.safetensors", "kind": "extra_body", "extra": 7})
    eq((st, cr, cl), (206, "bytes 0-99/%d" % len(WEIGHTS), "107"), "Content-Length counts the extra bytes")
    eq(body, WEIGHTS[:100] + b"\xa5" * 7, "the range, then 7 bytes more")
    st, cl, cr, body = raw({"server": "cdn", "match": "model.safetensors", "kind": "extra_body", "extra": 5,
                            "content_length": "none"})
    eq((st, cr, cl), (206, "bytes 0-99/%d" % len(WEIGHTS), None), "no Content-Length")
    eq(body, WEIGHTS[:100] + b"\xa5" * 5, "the body runs past its Content-Range")


def t_fault_listing():
    url = H + "/api/models/org/public/revision/main?blobs=true"
    spec = {"server": "hub", "match": "/api/models/org/public/revision", "kind": "listing",
            "sizes": {"model.safetensors": 12345}, "add": [{"rfilename": "../evil.safetensors", "size": 1}]}
    r = with_fault(spec, lambda: req("GET", url))
    sib = {s["rfilename"]: s for s in json.loads(r.body)["siblings"]}
    eq((sib["model.safetensors"]["size"], sib["model.safetensors"]["lfs"]["size"]), (12345, 12345),
       "listed size replaced (LFS size too)")
    check("../evil.safetensors" in sib, "extra sibling listed")
    eq(sib["config.json"]["size"], len(CONFIG2), "other files untouched")
    # only the listing lies: the resolve and the CDN keep the real size
    eq(resolve("org/public", "main", "model.safetensors").h("x-linked-size"), str(len(WEIGHTS)), "X-Linked-Size")
    sib = {s["rfilename"]: s for s in json.loads(req("GET", url).body)["siblings"]}
    eq(sib["model.safetensors"]["size"], len(WEIGHTS), "cleared: the real size")
    check("../evil.safetensors" not in sib, "cleared: no extra sibling")


def t_fault_match_by_shard_name_and_any():
    # the contract's example: match a shard by file name on the CDN (its path is only a sha256)
    loc = cdn_url_for(path="model-00002-of-00002.safetensors")
    HUB.faults([{"server": "cdn", "match": "model-00002", "kind": "reset", "count": 1, "after_bytes": 10}])
    try:
        eq(req("GET", cdn_url_for()).status, 200, "other shard untouched")
        try:
            g = req("GET", loc)
            raise AssertionError("no reset (%d)" % g.status)
        except (ConnectionResetError, http.client.IncompleteRead):
            pass
        eq(req("GET", loc).body, SHARD2, "then fine")
    finally:
        HUB.clear_faults()
    g = with_fault({"server": "any", "match": "config.json", "kind": "502"},
                   lambda: resolve("org/public", "main", "config.json"))
    eq(g.status, 502, "server any")
    g = with_fault({"server": "hub", "match": "config.json", "kind": "delay", "seconds": 0.3},
                   lambda: (time.time(), resolve("org/public", "main", "config.json"), time.time()))
    check(g[2] - g[0] >= 0.28 and g[1].status == 307, "delay")
    r = req("POST", H + "/_fake/faults", {"Content-Type": "application/json"}, json.dumps([{"kind": "bogus"}]))
    eq(r.status, 400, "unknown fault kind rejected")


def t_keep_alive_reuse():
    scheme, host, port, _ = split(H)
    c = http.client.HTTPConnection(host, port, timeout=TIMEOUT)
    try:
        for i in range(5):
            c.request("HEAD", "/org/public/resolve/main/model.safetensors")
            r = c.getresponse()
            r.read()
            eq(r.status, 302, "status")
            if i == 0:
                sock = c.sock
            check(c.sock is sock and sock is not None, "connection reused")
        c.request("GET", "/api/models/org/public")
        r = c.getresponse()
        r.read()
        check(c.sock is sock, "reused after a JSON body")
        c.request("GET", "/org/nope/resolve/main/x")
        r = c.getresponse()
        r.read()
        eq(r.status, 401, "error")
        check(c.sock is sock, "reused after an error")
    finally:
        c.close()
    loc = cdn_url_for()
    p = curl("-v", "-o", "/dev/null", "-o", "/dev/null", "-r", "0-9", loc, loc)
    check(b"Re-using existing connection" in p.stderr or b"Reusing existing connection" in p.stderr,
          "curl reused the CDN connection")


def t_live_reload():
    c = hubrepo.add_repo(STORE, "org/added-later", {"config.json": b'{"late": 1}'})
    r = resolve("org/added-later", "main", "config.json")
    eq(r.status, 307, "new repo visible without restart")
    c2 = hubrepo.add_repo(STORE, "org/added-later", {"config.json": b'{"late": 2}'})
    eq(resolve("org/added-later", "main", "config.json").h("location").split("/")[6], c2, "new head")
    eq(req("GET", H + resolve("org/added-later", c, "config.json").h("location")).body, b'{"late": 1}',
       "old commit still reachable")
    p = subprocess.run([PY, os.path.join(ROOT, "tests/fakehub/hubrepo.py"), "add", "--root", STORE,
                        "--repo", "org/cli", "--tag", "t1", "--visibility", "private", "--token", "hf_cli",
                        "model.safetensors=" + BIG], capture_output=True, timeout=30)
    eq(p.returncode, 0, p.stderr.decode())
    sha = p.stdout.decode().strip()
    check(hubrepo.is_commit_sha(sha), "CLI prints a commit")
    r = resolve("org/cli", "t1", "model.safetensors", headers={"Authorization": "Bearer hf_cli"})
    eq((r.status, r.h("x-repo-commit")), (302, sha), "CLI repo")


def t_request_log_format():
    HUB.clear_log()
    resolve("org/private", "main", "model.safetensors", headers={"Authorization": "Bearer hf_private_owner",
                                                                 "Range": "bytes=0-3"})
    HUB.faults([])
    log = HUB.log()
    eq(len(log), 1, "control endpoints are not logged: %s" % [(e["server"], e["path"]) for e in log])
    e = log[0]
    for k in ("t", "server", "method", "path", "query", "headers", "status", "range", "bytes_sent", "fault"):
        check(k in e, "log field %s" % k)
    eq((e["server"], e["method"], e["path"], e["status"], e["range"], e["fault"]),
       ("hub", "HEAD", "/org/private/resolve/main/model.safetensors", 302, "bytes=0-3", None), "entry")
    eq(e["headers"]["authorization"], "<present>", "authorization hidden")
    with open(HUB.log_path) as f:
        check("hf_private_owner" not in f.read(), "token never written to the log")
        f.seek(0)
        eq(len([json.loads(line) for line in f if line.strip()]), 1, "file holds JSON lines")


def t_tls_with_generated_ca():
    root = os.path.join(TMP, "tls-store")
    hubrepo.add_repo(root, "org/tls", {"config.json": b'{"tls": 1}', "model.safetensors": WEIGHTS[:1000]})
    with harness.start(root, tls=True) as hub:
        check(hub.hub_url.startswith("https://127.0.0.1:") and hub.cdn_url.startswith("https://"), "https urls")
        ca = hub.ca_bundle
        check(ca and os.path.exists(ca), "ca bundle")
        ctx = ssl.create_default_context(cafile=ca)
        r = req("HEAD", hub.hub_url + "/org/tls/resolve/main/model.safetensors", ctx=ctx)
        eq(r.status, 302, "resolve over TLS")
        check(r.h("location").startswith(hub.cdn_url), "https CDN location")
        g = req("GET", r.h("location"), {"Range": "bytes=0-9"}, ctx=ctx)
        eq((g.status, g.body), (206, WEIGHTS[:10]), "CDN range over TLS")
        p = curl("--cacert", ca, "-L", hub.hub_url + "/org/tls/resolve/main/config.json")
        eq((p.returncode, p.stdout), (0, b'{"tls": 1}'), "curl with the CA (%s)" % p.stderr.decode())
        p = curl("--cacert", ca, "-L", "-r", "0-9", "-o", "-", hub.hub_url + "/org/tls/resolve/main/model.safetensors")
        eq((p.returncode, p.stdout), (0, WEIGHTS[:10]), "curl LFS over TLS")
        p = curl("--cacert", ca, "https://localhost:%d/_fake/health" % hub.hub_port)
        eq(p.returncode, 0, "cert valid for localhost")
        p = curl("-o", "/dev/null", hub.hub_url + "/_fake/health")
        eq(p.returncode, 60, "unknown CA rejected by curl")
        hub.faults([{"server": "cdn", "match": "model.safetensors", "kind": "reset", "after_bytes": 100}])
        p = curl("--cacert", ca, "-L", "-o", "/dev/null", hub.hub_url + "/org/tls/resolve/main/model.safetensors")
        check(p.returncode in (18, 56), "reset over TLS: curl rc %d (%s)" % (p.returncode, p.stderr.decode()))
        hub.faults([{"server": "cdn", "match": "model.safetensors", "kind": "short_body", "after_bytes": 100}])
        p = curl("--cacert", ca, "-L", "-o", "/dev/null", hub.hub_url + "/org/tls/resolve/main/model.safetensors")
        check(p.returncode in (18, 56), "short body over TLS: curl rc %d (%s)" % (p.returncode, p.stderr.decode()))
        hub.clear_log()
        req("HEAD", hub.hub_url + "/org/tls/resolve/main/model.safetensors", ctx=ctx)
        eq(len(hub.log()), 1, "log over TLS")


def t_harness_shell_entry_and_clean_shutdown():
    root = os.path.join(TMP, "shell-store")
    sf = os.path.join(TMP, "shell-state.json")
    h = os.path.join(ROOT, "tests/fakehub/harness.py")
    p = subprocess.run([PY, h, "start", "--root", root, "--state-file", sf], capture_output=True, timeout=30)
    eq(p.returncode, 0, p.stderr.decode())
    st = json.loads(p.stdout)
    with open(sf) as f:
        eq(json.load(f), st, "state file")
    try:
        r = req("GET", st["hub_url"] + "/_fake/health")
        eq(r.status, 200, "served")
        # a stalled response must not delay shutdown
        req("POST", st["hub_url"] + "/_fake/faults", {}, json.dumps([{"server": "hub", "kind": "stall",
                                                                      "seconds": 60, "after_bytes": 1}]))
        s = socket.create_connection(("127.0.0.1", st["hub_port"]), timeout=5)
        s.sendall(b"GET /api/models/x/y HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.2)
    finally:
        t0 = time.time()
        p = subprocess.run([PY, h, "stop", "--state-file", sf], capture_output=True, timeout=30)
    eq(p.returncode, 0, "stop rc")
    check(time.time() - t0 < 4, "stopped in %.1f s despite a stalled response" % (time.time() - t0))
    check(not harness._alive(st["pid"]), "process gone")
    s.close()
    with open(os.path.join(root, "fakehub.out"), "rb") as f:
        out = f.read()
    check(b"Traceback" not in out, "no traceback: %r" % out[-300:])


def t_sigint_clean_exit():
    import signal
    root = os.path.join(TMP, "sigint-store")
    errp = os.path.join(TMP, "sigint.err")
    with open(errp, "wb") as err:
        hub = harness.start(root, stderr=err)
        try:
            eq(req("GET", hub.hub_url + "/_fake/health").status, 200, "up")
            hub.proc.send_signal(signal.SIGINT)
            hub.proc.wait(5)
        finally:
            hub.stop()
    eq(hub.proc.returncode, 0, "exit status after SIGINT")
    with open(errp, "rb") as f:
        e = f.read()
    check(b"Traceback" not in e and b"KeyboardInterrupt" not in e, "clean stderr: %r" % e[-300:])


def t_main_server_clean_exit():
    HUB.stop()
    eq(HUB.proc.returncode, 0, "exit status after SIGTERM")
    ERR.flush()
    with open(ERR_PATH, "rb") as f:
        err = f.read()
    check(b"Traceback" not in err, "stderr has a traceback: %r" % err[-500:])


def main():
    t0 = time.time()
    try:
        for fn in [t_state_file_and_log_path, t_resolve_regular_file_307_then_200, t_resolve_lfs_file_302_to_cdn,
                   t_resolve_revision_flavours, t_resolve_dataset_and_legacy_id, t_resolve_big_sparse_file_is_lfs,
                   t_odd_file_names, t_full_read_of_big_sparse_file_matches_sha256,
                   t_parallel_ranges_on_many_connections, t_hubrepo_cli_ref_token_and_attach,
                   t_gzip_only_when_asked, t_cdn_ranges, t_cdn_signature_and_expiry, t_cdn_flags_authorization,
                   t_curl_drops_auth_on_cross_port_redirect, t_curl_relative_redirect_and_range, t_errors,
                   t_auth_modes, t_renamed_repo_redirect, t_if_none_match_304, t_api_model_info,
                   t_api_tree_and_pagination, t_api_paths_info_and_refs, t_rate_limit_with_and_without_retry_after,
                   t_fault_ignore_range, t_fault_wrong_content_range, t_fault_short_body, t_fault_reset_mid_body,
                   t_fault_stall, t_fault_statuses, t_fault_missing_content_length,
                   t_fault_corrupt_body, t_fault_corrupt_file_offset, t_fault_served_size,
                   t_fault_denied, t_fault_drip, t_fault_extra_body, t_fault_listing,
                   t_fault_match_by_shard_name_and_any, t_keep_alive_reuse, t_live_reload, t_request_log_format,
                   t_tls_with_generated_ca, t_harness_shell_entry_and_clean_shutdown, t_sigint_clean_exit,
                   t_main_server_clean_exit]:
            case(fn)
    finally:
        HUB.stop()
        ERR.close()
        shutil.rmtree(TMP, ignore_errors=True)
    sys.stderr.write("test_fakehub: %.1f s\n" % (time.time() - t0))
    return 1 if results["fail"] else 0


if __name__ == "__main__":
    sys.exit(main())
