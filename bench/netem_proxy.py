#!/usr/bin/python3
"""A TCP proxy that adds latency and caps bandwidth, for benchmarks on a simulated slow link.

    netem_proxy.py --target 127.0.0.1:PORT [--delay-ms 50] [--rate 12500000] [--burst BYTES]
                   [--up-delay-ms D] [--down-delay-ms D] [--up-rate R] [--down-rate R]
                   [--listen-port 0] [--state-file FILE]

Every byte is held for the one-way delay of its direction (so a request/response round trip
costs about up-delay + down-delay; the first bytes of a new connection wait one round trip more,
standing in for the TCP handshake the kernel already completed locally), and each direction of the *link* (shared by all
connections, like one access line) is a token bucket of `rate` bytes/s holding at most `burst`
bytes. "up" is client -> target, "down" is target -> client. Rates are bytes per second, 0 means
unlimited.

On start it prints one JSON line {"port": N, "pid": N, ...} on stdout and, with --state-file,
writes the same JSON there atomically. SIGTERM/SIGINT stop it cleanly.
Standard library only (asyncio); binds 127.0.0.1 unless told otherwise.
"""

import argparse
import asyncio
import json
import os
import signal
import sys

CHUNK = 16384  # bytes released per bucket step: small enough to keep the cap smooth


class TokenBucket:
    """Shared by every connection of one direction. Tokens may go negative: a sender then
    waits until the debt is repaid, which serves concurrent senders in arrival order."""

    def __init__(self, rate, burst):
        self.rate = float(rate)
        self.burst = float(burst)
        self.tokens = float(burst)
        self.stamp = None

    async def take(self, n):
        if self.rate <= 0:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self.stamp is None:
            self.stamp = now
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        self.tokens -= n
        if self.tokens < 0:
            await asyncio.sleep(-self.tokens / self.rate)


class Link:
    def __init__(self, delay_s, bucket):
        self.delay = delay_s
        self.bucket = bucket


async def pump(reader, writer, link, stats, key, first_extra=0.0):
    """Copy reader -> writer through a delay line and the link's token bucket.
    first_extra delays the first chunk more (the handshake a real link would have cost)."""
    loop = asyncio.get_running_loop()
    queue = asyncio.Queue(maxsize=256)

    async def intake():
        extra = first_extra
        try:
            while True:
                data = await reader.read(65536)
                await queue.put((loop.time() + link.delay + extra, data))
                extra = 0.0
                if not data:
                    return
        except (ConnectionError, OSError):
            await queue.put((loop.time(), None))

    async def output():
        while True:
            due, data = await queue.get()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if data is None:  # the source broke: break the other side too
                writer.transport.abort()
                return False
            if not data:
                if writer.can_write_eof():
                    try:
                        writer.write_eof()
                    except (ConnectionError, OSError):
                        pass
                return True
            for i in range(0, len(data), CHUNK):
                piece = data[i:i + CHUNK]
                await link.bucket.take(len(piece))
                writer.write(piece)
                stats[key] += len(piece)
                await writer.drain()

    feeder = asyncio.ensure_future(intake())
    try:
        return await output()
    except (ConnectionError, OSError):
        return False
    finally:
        feeder.cancel()


class Proxy:
    def __init__(self, target_host, target_port, up, down, handshake=True):
        self.target = (target_host, target_port)
        self.handshake = handshake
        self.up, self.down = up, down
        self.stats = {"connections": 0, "up_bytes": 0, "down_bytes": 0}

    async def handle(self, creader, cwriter):
        self.stats["connections"] += 1
        try:
            treader, twriter = await asyncio.open_connection(*self.target)
        except OSError:
            cwriter.transport.abort()
            return
        # The kernel completed the client's TCP handshake at once; charge its round trip to the
        # first request bytes so a new connection costs one RTT more than a reused one.
        extra = (self.up.delay + self.down.delay) if self.handshake else 0.0
        a = asyncio.ensure_future(pump(creader, twriter, self.up, self.stats, "up_bytes", extra))
        b = asyncio.ensure_future(pump(treader, cwriter, self.down, self.stats, "down_bytes"))
        done, pending = await asyncio.wait({a, b}, return_when=asyncio.FIRST_COMPLETED)
        if any(t.result() is False for t in done if not t.cancelled() and t.exception() is None):
            for t in pending:
                t.cancel()
            for w in (cwriter, twriter):
                w.transport.abort()
            return
        try:
            await asyncio.wait(pending)
        finally:
            for w in (cwriter, twriter):
                try:
                    w.close()
                except (ConnectionError, OSError):
                    pass


def parse_target(s):
    host, _, port = s.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError("target must be HOST:PORT")
    return host, int(port)


async def run(args):
    def bucket(rate):
        burst = args.burst if args.burst else max(CHUNK, int(rate * 0.01))
        return TokenBucket(rate, max(burst, CHUNK))

    up_rate = args.rate if args.up_rate is None else args.up_rate
    down_rate = args.rate if args.down_rate is None else args.down_rate
    up_delay = args.delay_ms if args.up_delay_ms is None else args.up_delay_ms
    down_delay = args.delay_ms if args.down_delay_ms is None else args.down_delay_ms
    proxy = Proxy(args.target[0], args.target[1], Link(up_delay / 1000.0, bucket(up_rate)),
                  Link(down_delay / 1000.0, bucket(down_rate)), handshake=not args.no_handshake_delay)
    server = await asyncio.start_server(proxy.handle, args.listen_host, args.listen_port)
    port = server.sockets[0].getsockname()[1]
    info = {"port": port, "host": args.listen_host, "pid": os.getpid(),
            "target": "%s:%d" % args.target, "up_delay_ms": up_delay, "down_delay_ms": down_delay,
            "up_rate": up_rate, "down_rate": down_rate}
    if args.state_file:
        tmp = "%s.tmp.%d" % (args.state_file, os.getpid())
        with open(tmp, "w") as f:
            json.dump(info, f)
            f.write("\n")
        os.replace(tmp, args.state_file)
    print(json.dumps(info), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()
    for t in asyncio.all_tasks():
        if t is not asyncio.current_task():
            t.cancel()
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(description="TCP proxy with one-way delay and a bandwidth cap")
    ap.add_argument("--target", required=True, type=parse_target, help="HOST:PORT to forward to")
    ap.add_argument("--listen-host", default="127.0.0.1")
    ap.add_argument("--listen-port", type=int, default=0)
    ap.add_argument("--delay-ms", type=float, default=0, help="one-way delay, each direction")
    ap.add_argument("--up-delay-ms", type=float, help="client->target delay (default --delay-ms)")
    ap.add_argument("--down-delay-ms", type=float, help="target->client delay (default --delay-ms)")
    ap.add_argument("--rate", type=float, default=0, help="bytes/s per direction, 0 = unlimited")
    ap.add_argument("--up-rate", type=float)
    ap.add_argument("--down-rate", type=float)
    ap.add_argument("--burst", type=int, default=0, help="bucket size in bytes (default: 10 ms of rate)")
    ap.add_argument("--no-handshake-delay", action="store_true",
                    help="do not charge one RTT for each new connection's TCP handshake")
    ap.add_argument("--state-file")
    args = ap.parse_args(argv)
    try:
        return asyncio.run(run(args))
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
