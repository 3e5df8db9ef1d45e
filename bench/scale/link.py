#!/usr/bin/python3
"""One simulated access link in front of the bench Hub: two listeners (Hub API, CDN) that share
the same delay lines and bandwidth buckets, built from bench/netem_proxy.py's pieces, with byte
and connection counters a benchmark can read.

    link.py --hub-target 127.0.0.1:P --cdn-target 127.0.0.1:Q --rtt-ms 40 --rate-bits 1e9
            --state-file F

Writes F atomically: {"hub_port", "cdn_port", "pid", "rtt_ms", "rate_bytes"}. On SIGUSR1 it
writes F.stats: {"seq": n, "hub": {connections, up_bytes, down_bytes}, "cdn": {...}}, the
counters since start (bytes are TCP payload through the link, both directions, so HTTP headers
count). SIGTERM/SIGINT stop it. Binds 127.0.0.1 only.
"""
import argparse
import asyncio
import json
import os
import signal
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
import netem_proxy as netem  # noqa: E402  (bench/netem_proxy.py)


def write_json(path, obj):
    tmp = "%s.tmp.%d" % (path, os.getpid())
    with open(tmp, "w") as f:
        json.dump(obj, f)
    os.replace(tmp, path)


async def run(args):
    half = args.rtt_ms / 2000.0
    rate = args.rate_bits / 8.0

    def bucket():
        return netem.TokenBucket(rate, max(netem.CHUNK, int(rate * 0.01)))

    up, down = netem.Link(half, bucket()), netem.Link(half, bucket())
    proxies = {"hub": netem.Proxy(*args.hub_target, up, down), "cdn": netem.Proxy(*args.cdn_target, up, down)}
    servers = {k: await asyncio.start_server(p.handle, "127.0.0.1", 0, backlog=512) for k, p in proxies.items()}
    info = {"hub_port": servers["hub"].sockets[0].getsockname()[1],
            "cdn_port": servers["cdn"].sockets[0].getsockname()[1], "pid": os.getpid(),
            "rtt_ms": args.rtt_ms, "rate_bytes": rate}
    write_json(args.state_file, info)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    seq = [0]

    def dump():
        seq[0] += 1
        write_json(args.state_file + ".stats",
                   {"seq": seq[0], **{k: dict(p.stats) for k, p in proxies.items()}})

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, dump)
    await stop.wait()
    for s in servers.values():
        s.close()
    for t in asyncio.all_tasks():
        if t is not asyncio.current_task():
            t.cancel()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--hub-target", required=True, type=netem.parse_target)
    ap.add_argument("--cdn-target", required=True, type=netem.parse_target)
    ap.add_argument("--rtt-ms", type=float, default=40)
    ap.add_argument("--rate-bits", type=float, default=1e9, help="bits/s each direction, 0 = unlimited")
    ap.add_argument("--state-file", required=True)
    args = ap.parse_args()
    try:
        asyncio.run(run(args))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
