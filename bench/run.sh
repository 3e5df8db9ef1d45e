#!/bin/bash
# make bench: every benchmark of the project, each writing its RESULTS.md beside it.
# Never part of make test. BENCH_QUICK=1 asks each benchmark for a short run.
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
