#!/bin/bash
# bench/verify: `verify --against DIR` with 1,000 fingerprints of 100B-class models (issue 15),
# the new path against today's (--no-prescreen) on a subset, extrapolated. Needs the bench/scale
# models (bench/out/scale/hub/models: bench/scale makes them; skipped when absent). BUILD = first
# argument. BENCH_QUICK=1: 200 fingerprints, one run (written to bench/out/verify-quick.md).
set -eu
BUILD=${1:-build-o3}
cd "$(dirname "$0")/../.."
if [ "${BENCH_QUICK:-0}" = 1 ]; then
    exec /usr/bin/python3 bench/verify/bench_verify.py --bin "$BUILD/ckptscope" --quick --out bench/out/verify-quick.md
fi
exec /usr/bin/python3 bench/verify/bench_verify.py --bin "$BUILD/ckptscope"
