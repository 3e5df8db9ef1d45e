#!/bin/bash
# I/O goals of issue 15 (bench/io/bench_io.py): a remote 2 GiB hash against curl | openssl,
# 500 scattered ranges against one keep-alive curl -K (loopback) and the thread-pool peer
# (40 ms link). Writes bench/io/RESULTS.md; needs nginx and GNU time (scripts/deps.sh, as root).
# BENCH_QUICK=1: 3 runs each and a 512 MiB file, written to bench/out/io-quick.md.
set -eu
BUILD=${1:-build-o3}
cd "$(dirname "$0")/../.."
scripts/deps.sh nginx time
if [ "${BENCH_QUICK:-0}" = 1 ]; then
    exec /usr/bin/python3 bench/io/bench_io.py --bin "$BUILD/ckptscope" --runs 3 --big-mib 512 \
        --out bench/out/io-quick.md
fi
exec /usr/bin/python3 bench/io/bench_io.py --bin "$BUILD/ckptscope"
