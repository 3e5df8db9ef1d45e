#!/bin/bash
# bench/compare/run.sh [BUILD] — the default compare of the GLM/Solar-shaped pair, cold and compute
# only, and the verdict on the bench Hub's fine-tune (issue 15 item 3, issue 13); writes
# bench/compare/RESULTS.md. BENCH_BASELINE=path/to/ckptscope times another binary in the same run.
set -eu
BUILD=${1:-build}
cd "$(dirname "$0")/../.."
runs=3
[ "${BENCH_QUICK:-0}" = 1 ] && runs=1
exec /usr/bin/python3 bench/compare/bench_compare.py --bin "$BUILD/ckptscope" --runs "$runs" \
    ${BENCH_BASELINE:+--baseline "$BENCH_BASELINE"}
