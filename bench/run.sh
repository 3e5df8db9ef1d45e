#!/bin/bash
# make bench: every benchmark of the project, each writing its RESULTS.md beside it (bench/RESULTS.md
# for the scale benchmark). Never part of make test. BUILD (first argument) is the -O3 build folder
# the Makefile made (build-o3). BENCH_QUICK=1 asks each benchmark for a short run.
# The issue-15 goals run first (bench/io, then bench/scale), so a failure later cannot cost them.
# The verdict calibration (bench/verdicts, ~6 min, issue 13) runs too (BENCH_VERDICTS=0 skips it):
# a change that makes the tool faster must show that its verdicts did not move.
# A benchmark that fails is reported and the others still run; the exit status is then 1.
set -u
BUILD=${1:-build-o3}
cd "$(dirname "$0")/.."
status=0
failed=""
if [ "${BENCH_QUICK:-0}" = 1 ]; then export BENCH_GIB=1; fi
t_all=$(date +%s)
run() {
    local t0 rc
    t0=$(date +%s)
    echo "== $*"
    "$@"
    rc=$?
    echo "== $* : exit $rc, $(( $(date +%s) - t0 )) s"
    if [ $rc -ne 0 ]; then status=1; failed="$failed $1"; fi
}
run bash bench/io/run.sh "$BUILD"
run bash bench/scale/run.sh "$BUILD"
run /usr/bin/python3 bench/hash/bench_hash.py --bin "$BUILD/ckptscope"
for script in bench/*/run.sh; do
    case "$script" in
        bench/io/run.sh|bench/scale/run.sh) continue ;;
        bench/verdicts/run.sh) [ "${BENCH_VERDICTS:-1}" = 1 ] || { echo "== $script skipped (BENCH_VERDICTS=0)"; continue; } ;;
    esac
    run bash "$script" "$BUILD"
done
# the issue-15 goal rows of every report above, in one table at the top of bench/RESULTS.md
run /usr/bin/python3 bench/goals.py
echo "make bench: $(( $(date +%s) - t_all )) s in all${failed:+; failed:$failed}"
exit $status
