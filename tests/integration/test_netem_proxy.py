#!/usr/bin/python3
"""Test of bench/netem_proxy.py: bytes pass unchanged, a round trip costs at least the configured
RTT, throughput stays under the cap. Lower bounds only (with slack): these are properties of the
proxy, not performance claims. Prints PASS/FAIL/SKIP lines; exits 1 on failure.
"""

import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
PROXY = os.path.join(ROOT, "bench", "netem_proxy.py")
PY = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
failed = 0


def case(fn):
    global failed
    name = fn.__name__[2:]
    try:
        fn()
    except Exception as e:  # noqa: BLE001
        failed += 1
        tb = traceback.extract_tb(e.__traceback__)
        print("FAIL %s: %s (line %d)" % (name, ("%s: %s" % (type(e).__name__, e)).replace("\n", " "),
                                         tb[-1].lineno if tb else 0), flush=True)
    else:
        print("PASS %s" % name, flush=True)


def check(cond, msg):
    if not cond:
        raise AssertionError(msg)


class Backend:
    """127.0.0.1 TCP server: 'echo' mode echoes until EOF; 'source' mode sends N bytes then closes."""

    def __init__(self, mode, payload=b""):
        self.mode, self.payload = mode, payload
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.thread.start()

    def loop(self):
        while not self.stop.is_set():
            try:
                c, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            threading.Thread(target=self.serve, args=(c,), daemon=True).start()

    def serve(self, c):
        c.settimeout(10)
        try:
            if self.mode == "echo":
                while True:
                    d = c.recv(65536)
                    if not d:
                        break
                    c.sendall(d)
                c.shutdown(socket.SHUT_WR)
            else:
                c.sendall(self.payload)
                c.shutdown(socket.SHUT_WR)
                c.recv(1)
        except OSError:
            pass
        finally:
            c.close()

    def close(self):
        self.stop.set()
        self.sock.close()


class Proxy:
    def __init__(self, target_port, *args):
        self.state = os.path.join(tempfile.mkdtemp(prefix="netem-"), "state.json")
        self.proc = subprocess.Popen([PY, PROXY, "--target", "127.0.0.1:%d" % target_port,
                                      "--state-file", self.state] + list(args),
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("proxy did not start: %s" % self.proc.stderr.read().decode()[-500:])
        self.info = json.loads(line)
        self.port = self.info["port"]

    def close(self):
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.proc.stdout.close()
        err = self.proc.stderr.read()
        self.proc.stderr.close()
        return self.proc.returncode, err


def recv_exactly(s, n):
    buf = bytearray()
    while len(buf) < n:
        d = s.recv(min(65536, n - len(buf)))
        if not d:
            break
        buf += d
    return bytes(buf)


def t_rtt_at_least_twice_the_delay():
    be = Backend("echo")
    px = Proxy(be.port, "--delay-ms", "40")
    try:
        with open(px.state) as f:
            check(json.load(f)["port"] == px.port, "state file")
        s = socket.create_connection(("127.0.0.1", px.port), timeout=10)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        recv_exactly(s, 0)
        times = []
        for i in range(5):
            t0 = time.monotonic()
            s.sendall(b"ping%d" % i)
            got = recv_exactly(s, 5)
            times.append(time.monotonic() - t0)
            check(got == b"ping%d" % i, "echo through the proxy: %r" % got)
        s.close()
        check(min(times) >= 0.080 * 0.95, "round trip %.1f ms < 80 ms" % (min(times) * 1000))
        check(times[0] >= 0.160 * 0.95, "first exchange on a new connection %.1f ms < 2 RTT" % (times[0] * 1000))
    finally:
        rc, err = px.close()
        be.close()
    check(rc == 0 and b"Traceback" not in err, "clean exit (rc %s, %r)" % (rc, err[-300:]))


def t_asymmetric_delay():
    be = Backend("echo")
    px = Proxy(be.port, "--up-delay-ms", "10", "--down-delay-ms", "70")
    try:
        s = socket.create_connection(("127.0.0.1", px.port), timeout=10)
        t0 = time.monotonic()
        s.sendall(b"x")
        check(recv_exactly(s, 1) == b"x", "echo")
        dt = time.monotonic() - t0
        s.close()
        check(dt >= 0.080 * 0.95, "round trip %.1f ms < 10 + 70 ms" % (dt * 1000))
    finally:
        px.close()
        be.close()


def t_throughput_capped_and_bytes_intact():
    payload = os.urandom(600_000)
    be = Backend("source", payload)
    rate, burst = 1_000_000, 16384
    px = Proxy(be.port, "--rate", str(rate), "--burst", str(burst))
    try:
        s = socket.create_connection(("127.0.0.1", px.port), timeout=15)
        t0 = time.monotonic()
        got = recv_exactly(s, len(payload))
        dt = time.monotonic() - t0
        s.close()
        check(got == payload, "payload intact (%d of %d bytes)" % (len(got), len(payload)))
        floor = (len(payload) - burst) / rate
        check(dt >= floor * 0.9, "600 kB at 1 MB/s took %.3f s, less than %.3f s" % (dt, floor * 0.9))
    finally:
        px.close()
        be.close()


def t_cap_is_shared_by_connections():
    payload = os.urandom(300_000)
    be = Backend("source", payload)
    rate = 1_000_000
    px = Proxy(be.port, "--rate", str(rate), "--burst", "16384")
    try:
        out = [None, None]

        def fetch(i):
            s = socket.create_connection(("127.0.0.1", px.port), timeout=15)
            out[i] = recv_exactly(s, len(payload))
            s.close()
        t0 = time.monotonic()
        ths = [threading.Thread(target=fetch, args=(i,)) for i in range(2)]
        for t in ths:
            t.start()
        for t in ths:
            t.join(20)
        dt = time.monotonic() - t0
        check(out == [payload, payload], "both payloads intact")
        floor = (2 * len(payload) - 16384) / rate
        check(dt >= floor * 0.9, "2 x 300 kB at 1 MB/s took %.3f s, less than %.3f s" % (dt, floor * 0.9))
    finally:
        px.close()
        be.close()


def t_upload_direction_and_half_close():
    be = Backend("echo")
    px = Proxy(be.port, "--up-rate", "500000", "--down-rate", "0", "--burst", "16384")
    try:
        data = os.urandom(200_000)
        s = socket.create_connection(("127.0.0.1", px.port), timeout=15)
        t0 = time.monotonic()
        threading.Thread(target=lambda: (s.sendall(data), s.shutdown(socket.SHUT_WR)), daemon=True).start()
        got = recv_exactly(s, len(data) + 1)  # +1: must see EOF after the echo, not hang
        dt = time.monotonic() - t0
        s.close()
        check(got == data, "echo intact through half-close (%d bytes)" % len(got))
        floor = (len(data) - 16384) / 500000
        check(dt >= floor * 0.9, "upload cap: %.3f s < %.3f s" % (dt, floor * 0.9))
    finally:
        px.close()
        be.close()


def t_fakehub_behind_two_proxies():
    # The benchmark set-up: hub and CDN each behind a proxy, redirects pointing at the CDN proxy.
    sys.path.insert(0, os.path.join(ROOT, "tests", "fakehub"))
    import harness
    import hubrepo
    root = tempfile.mkdtemp(prefix="netem-fakehub-")
    data = os.urandom(100_000)
    hubrepo.add_repo(root, "org/m", {"model.safetensors": data})
    with harness.start(root) as hub:
        ph = Proxy(hub.hub_port, "--delay-ms", "20")
        pc = Proxy(hub.cdn_port, "--delay-ms", "20")
        try:
            hub.config(cdn_public_url="http://127.0.0.1:%d" % pc.port)
            t0 = time.monotonic()
            p = subprocess.run(["curl", "-sS", "--max-time", "15", "--noproxy", "*", "-L", "-r", "0-99",
                                "http://127.0.0.1:%d/org/m/resolve/main/model.safetensors" % ph.port],
                               capture_output=True, timeout=20)
            dt = time.monotonic() - t0
            check(p.returncode == 0 and p.stdout == data[:100], "range through both proxies (%s)" % p.stderr)
            # two connections (hub, cdn), each: handshake + request/response = 2 RTTs of 40 ms
            check(dt >= 0.160 * 0.9, "two round trips on two connections took %.3f s" % dt)
            cdn_hits = [e for e in hub.log() if e["server"] == "cdn"]
            check(len(cdn_hits) == 1, "the CDN was reached through its proxy")
        finally:
            ph.close()
            pc.close()


def main():
    t0 = time.time()
    for fn in (t_rtt_at_least_twice_the_delay, t_asymmetric_delay, t_throughput_capped_and_bytes_intact,
               t_cap_is_shared_by_connections, t_upload_direction_and_half_close, t_fakehub_behind_two_proxies):
        case(fn)
    sys.stderr.write("test_netem_proxy: %.1f s\n" % (time.time() - t0))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
