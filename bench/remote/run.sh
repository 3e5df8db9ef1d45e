#!/bin/bash
# Remote-read benchmark (bench/remote/bench_remote.py): ckptscope against a sequential
# one-range-per-request client through a latency/bandwidth-capping proxy. Writes
# bench/remote/RESULTS.md. BENCH_QUICK=1: 10 shards, 100 tensors, 32 MiB large file.
set -eu
BUILD=${1:-build}
cd "$(dirname "$0")/../.."
if [ "${BENCH_QUICK:-0}" = 1 ]; then
    exec /usr/bin/python3 bench/remote/bench_remote.py --bin "$BUILD/ckptscope" \
        --shards 10 --tensors 100 --large-mib 32 --out bench/out/remote-quick.md
fi
exec /usr/bin/python3 bench/remote/bench_remote.py --bin "$BUILD/ckptscope"
