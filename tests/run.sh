#!/bin/bash
# Run every test of the project and print one closing line "N passed, N failed, N skipped".
# Every test program (C unit tests, fuzz-corpus replays, integration scripts) prints one
# line per case: "PASS name", "FAIL name: why" or "SKIP name: why". A program that exits
# non-zero without a FAIL line, or crashes, counts as one failure, so nothing fails quietly.
set -u
BUILD=${1:-build}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
export CKS_BIN="$ROOT/$BUILD/ckptscope" CKS_BUILD="$ROOT/$BUILD" CKS_ROOT="$ROOT"
export CKS_REALDATA="${CKS_REALDATA:-$ROOT/../shared/realdata}"
passed=0 failed=0 skipped=0
LOG=$(mktemp -d)
trap 'rm -rf "$LOG"' EXIT

run_one() {  # label, command...
    local label=$1; shift
    local out="$LOG/out" rc started=$SECONDS
    "$@" >"$out" 2>"$LOG/err"; rc=$?
    local took=$((SECONDS - started))
    local p f s
    p=$(grep -c '^PASS ' "$out"); f=$(grep -c '^FAIL ' "$out"); s=$(grep -c '^SKIP ' "$out")
    grep -E '^(FAIL|SKIP) ' "$out" | sed "s|^|[$label] |"
    if [ "$f" -gt 0 ] || { [ $rc -ne 0 ] && [ "$f" -eq 0 ]; }; then
        sed 's/^/    /' "$LOG/err" | tail -n 40
    fi
    if [ $rc -ne 0 ] && [ "$f" -eq 0 ]; then
        echo "[$label] FAIL: exited with status $rc without reporting a failing case"
        f=1
    fi
    if [ $((p + f + s)) -eq 0 ]; then
        echo "[$label] FAIL: ran no case"
        f=1
    fi
    echo "[$label] $p passed, $f failed, $s skipped (${took}s)"
    passed=$((passed + p)); failed=$((failed + f)); skipped=$((skipped + s))
}

for t in "$BUILD"/tests/test_*; do
    [ -x "$t" ] && run_one "$(basename "$t")" "$t"
done
for t in "$BUILD"/tests/replay_*; do
    name=$(basename "$t"); target=${name#replay_}
    [ -x "$t" ] && run_one "$name" "$t" "tests/fuzz/corpus/$target"
done
for t in tests/integration/test_*.sh; do
    [ -f "$t" ] && run_one "$(basename "$t")" bash "$t"
done
for t in tests/integration/test_*.py; do
    [ -f "$t" ] && run_one "$(basename "$t")" /usr/bin/python3 "$t"
done
echo "$passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]
