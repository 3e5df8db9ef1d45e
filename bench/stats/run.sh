#!/bin/bash
# bench/stats/run.sh [K] [N] [T] — the T2 joint-permutation null against the plain loop, one
# process (bench_joint.c says what is compared). Compiled from the library sources with -O3,
# as `make bench` builds the binary.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
# bench/run.sh (make bench) passes every script the build folder first: not a size here
if [ $# -gt 0 ] && [ -n "${1//[0-9]/}" ]; then shift; fi
SCRATCH=$(mktemp -d "${TMPDIR:-/tmp}/cks-bench-stats-XXXXXX")
trap 'rm -rf "$SCRATCH"' EXIT
cd "$ROOT"
gcc -O3 -g -std=c17 -D_GNU_SOURCE -Wall -Wextra -Werror -Wno-unused-parameter -Iinclude \
    $(pkg-config --cflags openblas) bench/stats/bench_joint.c src/statistics/stats.c src/statistics/blas.c src/core/decode.c src/core/error.c src/core/dtype.c \
    -o "$SCRATCH/bench_joint" $(pkg-config --libs openblas) -lm -pthread
"$SCRATCH/bench_joint" "$@"
