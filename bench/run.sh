#!/bin/bash
# make bench: every benchmark of the project, each writing its RESULTS.md beside it.
# Never part of make test. BENCH_QUICK=1 asks each benchmark for a short run.
# bench/scale/run.sh (issue 8: full-size GLM-4.5-Air / Solar-Open-100B audit against the peers'
# approaches) writes bench/RESULTS.md and installs nginx for itself (scripts/deps.sh nginx).
set -u
BUILD=${1:-build}
cd "$(dirname "$0")/.."
status=0
if [ "${BENCH_QUICK:-0}" = 1 ]; then export BENCH_GIB=1; fi
/usr/bin/python3 bench/hash/bench_hash.py --bin "$BUILD/ckptscope" || status=1
for script in bench/*/run.sh; do
    [ -f "$script" ] || continue
    echo "== $script"
    bash "$script" "$BUILD" || status=1
done
exit $status
