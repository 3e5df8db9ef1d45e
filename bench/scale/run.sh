#!/bin/bash
# Scale benchmark (issue 8): ckptscope compare on full-size sparse GLM-4.5-Air- and
# Solar-Open-100B-shaped repos served by nginx behind a 40 ms / 1 Gbit/s link, against the
# peers' two approaches. Writes bench/RESULTS.md (quick mode: bench/out/scale-quick.md). Needs nginx (installed here as root via
# scripts/deps.sh, never by make test). BENCH_QUICK=1: shorter peer samples (< 3 min once the
# bench hub exists). BENCH_RTT_MS / BENCH_RATE_BITS change the link.
set -eu
BUILD=${1:-build}
cd "$(dirname "$0")/../.."
scripts/deps.sh nginx time
avail=$(df -Pk bench | awk 'NR==2 {print $4}')
if [ ! -f bench/out/scale/hub/stamp.json ] && [ "$avail" -lt $((16 * 1024 * 1024)) ]; then
    echo "bench/scale: needs ~8 GB free for the sparse bench hub (+ one shard for the download test)" >&2
    exit 1
fi
if [ "${BENCH_QUICK:-0}" = 1 ]; then
    exec /usr/bin/python3 bench/scale/bench_scale.py --bin "$BUILD/ckptscope" --quick --out bench/out/scale-quick.md
fi
exec /usr/bin/python3 bench/scale/bench_scale.py --bin "$BUILD/ckptscope" --out bench/RESULTS.md
