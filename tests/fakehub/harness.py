#!/usr/bin/python3
"""Start/stop the fake Hub from Python tests or shell scripts.

Python:
    sys.path.insert(0, "tests/fakehub"); import harness, hubrepo
    hubrepo.add_repo(root, "org/name", {"config.json": b"{}"})
    with harness.start(root, tls=False, url_ttl=3600) as hub:
        hub.hub_url, hub.cdn_url, hub.ca_bundle
        hub.faults([{"server": "cdn", "match": "model-00002", "kind": "reset", "after_bytes": 1000}])
        hub.log(); hub.clear_log(); hub.clear_faults(); hub.config(url_ttl=1)

Shell:
    python3 tests/fakehub/harness.py start --root DIR --state-file F [--tls] [--url-ttl S] [--rate-limit N]
    python3 tests/fakehub/harness.py stop --state-file F
`start` daemonises the server, waits until F exists, prints F's JSON and exits 0.
"""

import argparse
import json
import os
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
SERVER = os.path.join(HERE, "fakehub.py")
PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable

_OPT_FLAGS = {"url_ttl": "--url-ttl", "rate_limit": "--rate-limit", "rate_window": "--rate-window",
              "hub_port": "--hub-port", "cdn_port": "--cdn-port", "tls_dir": "--tls-dir",
              "cdn_public_url": "--cdn-public-url", "hub_public_url": "--hub-public-url"}


def _command(root, state_file, tls, opts):
    cmd = [PYTHON, SERVER, "--root", os.path.abspath(root), "--state-file", state_file]
    opts = dict(opts)
    if tls and not opts.get("tls_dir"):
        opts["tls_dir"] = os.path.join(os.path.abspath(root), "tls")
    if opts.pop("retry_after", True) is False:
        cmd.append("--no-retry-after")
    for k, v in opts.items():
        if k not in _OPT_FLAGS:
            raise TypeError("unknown fakehub option %r" % k)
        if v is not None:
            cmd += [_OPT_FLAGS[k], str(v)]
    return cmd


def _wait_state(state_file, proc, timeout):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if os.path.exists(state_file):
            try:
                with open(state_file) as f:
                    return json.load(f)
            except ValueError:
                pass
        if proc is not None and proc.poll() is not None:
            raise RuntimeError("fakehub exited with status %s before it was ready" % proc.returncode)
        time.sleep(0.02)
    raise TimeoutError("fakehub did not write %s within %.0f s" % (state_file, timeout))


class Hub:
    def __init__(self, proc, state, state_file):
        self.proc = proc
        self.state = state
        self.state_file = state_file
        self.hub_url = state["hub_url"]
        self.cdn_url = state["cdn_url"]
        self.hub_port = state["hub_port"]
        self.cdn_port = state["cdn_port"]
        self.pid = state["pid"]
        self.log_path = state["log"]
        self.ca_bundle = state.get("ca_bundle")
        self._ctx = ssl.create_default_context(cafile=self.ca_bundle) if self.ca_bundle else None

    def _call(self, method, path, obj=None):
        data = None if obj is None else json.dumps(obj).encode()
        req = urllib.request.Request(self.hub_url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10, context=self._ctx) as r:
            return json.loads(r.read().decode() or "null")

    def log(self, server=None):
        """Every logged request so far (control endpoints excluded), oldest first."""
        return self._call("GET", "/_fake/log" + ("?server=" + server if server else ""))

    def clear_log(self):
        self._call("POST", "/_fake/log/clear", {})

    def faults(self, items):
        return self._call("POST", "/_fake/faults", items)

    def armed_faults(self):
        """The armed faults, each with its remaining "count" and "taken": requests it has met so far."""
        return self._call("GET", "/_fake/faults")

    def clear_faults(self):
        self._call("DELETE", "/_fake/faults")

    def config(self, **kw):
        return self._call("POST", "/_fake/config", kw)

    def stop(self, timeout=5):
        if self.proc is None:
            stop_pid(self.pid, timeout)
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
        return False


def _die_with_parent():
    """preexec_fn: SIGTERM the server when the process (thread) that started it dies, so a killed
    test run leaves no server behind. Best effort (Linux prctl via ctypes)."""
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def start(root, tls=False, timeout=15, state_file=None, stderr=None, die_with_parent=True, **opts):
    """Start fakehub.py as a child process and return a Hub once it listens.

    die_with_parent: the server gets SIGTERM if the *thread* that called start() exits (Linux
    PDEATHSIG) — pass False when starting it from a short-lived thread."""
    os.makedirs(root, exist_ok=True)
    if state_file is None:
        fd, state_file = tempfile.mkstemp(prefix="fakehub-state-", suffix=".json", dir=root)
        os.close(fd)
        os.unlink(state_file)
    elif os.path.exists(state_file):
        os.unlink(state_file)
    proc = subprocess.Popen(_command(root, state_file, tls, opts), stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=stderr,
                            preexec_fn=_die_with_parent if die_with_parent else None)
    try:
        state = _wait_state(state_file, proc, timeout)
    except BaseException:
        proc.kill()
        proc.wait(5)
        raise
    return Hub(proc, state, state_file)


def attach(state_file):
    """A Hub for a server started elsewhere (e.g. by `harness.py start`)."""
    with open(state_file) as f:
        state = json.load(f)
    return Hub(None, state, state_file)


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def stop_pid(pid, timeout=5):
    if not _alive(pid):
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.time() + timeout
    while time.time() < deadline:
        if not _alive(pid):
            return
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def main(argv=None):
    ap = argparse.ArgumentParser(description="start/stop the fake Hub for shell tests")
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("start")
    s.add_argument("--root", required=True)
    s.add_argument("--state-file", required=True)
    s.add_argument("--tls", action="store_true")
    s.add_argument("--tls-dir")
    s.add_argument("--url-ttl", type=int)
    s.add_argument("--rate-limit", type=int)
    s.add_argument("--rate-window", type=float)
    s.add_argument("--no-retry-after", action="store_true")
    s.add_argument("--hub-port", type=int)
    s.add_argument("--cdn-port", type=int)
    s.add_argument("--timeout", type=float, default=15)
    t = sub.add_parser("stop")
    t.add_argument("--state-file", required=True)
    t.add_argument("--timeout", type=float, default=5)
    args = ap.parse_args(argv)
    if args.cmd == "start":
        os.makedirs(args.root, exist_ok=True)
        state_file = os.path.abspath(args.state_file)
        if os.path.exists(state_file):
            os.unlink(state_file)
        opts = {"url_ttl": args.url_ttl, "rate_limit": args.rate_limit, "rate_window": args.rate_window,
                "hub_port": args.hub_port, "cdn_port": args.cdn_port, "tls_dir": args.tls_dir}
        if args.no_retry_after:
            opts["retry_after"] = False
        cmd = _command(args.root, state_file, args.tls, opts)
        out = open(os.path.join(os.path.abspath(args.root), "fakehub.out"), "ab")
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                start_new_session=True, close_fds=True)
        try:
            state = _wait_state(state_file, proc, args.timeout)
        except (RuntimeError, TimeoutError) as e:
            if proc.poll() is None:
                proc.kill()
            print("harness: %s (see %s)" % (e, out.name), file=sys.stderr)
            return 1
        print(json.dumps(state))
        return 0
    if args.cmd == "stop":
        try:
            with open(args.state_file) as f:
                pid = json.load(f)["pid"]
        except (OSError, ValueError, KeyError) as e:
            print("harness: cannot read %s: %s" % (args.state_file, e), file=sys.stderr)
            return 1
        stop_pid(pid, args.timeout)
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
