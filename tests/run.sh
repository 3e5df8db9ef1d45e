#!/bin/bash
# Run the tests of the project and print one closing line "N passed, N failed, N skipped".
# Every test program (C unit tests, fuzz-corpus replays, integration scripts) prints one
# line per case: "PASS name", "FAIL name: why" or "SKIP name: why". A program that exits
# non-zero without a FAIL line, crashes, or runs past its time limit counts as one failure
# (with its name), so nothing fails quietly and nothing hangs CI.
#
#   tests/run.sh [BUILD] [TIER]
#     TIER all    every program (make test, CI)                                    [default]
#          check  everything but the long tier below (make check: under a minute alone)
#          long   only the long tier
#   CKS_TEST_JOBS     programs run at once (default: nproc)
#   CKS_TEST_TIMEOUT  seconds one program may run before it is killed and failed (default 1200,
#                     doubled when CKS_SANITIZED=1: the slowest program, test_fingerprint_wide.py,
#                     took 187 s alone and 692 s next to other helpers' test-san runs at a load of 9)
#   CKS_TEST_ONLY     run only programs whose label contains this string
#
# Programs run in parallel, the long ones first (so the short ones fill the other cores while they
# run); each program's lines are printed together when it ends, so the order of the blocks is the
# order in which programs finished. Every program is safe to run next to any other: each one makes
# its own temporary folders, and each fake Hub picks its own free ports.
set -u
BUILD=${1:-build}
TIER=${2:-all}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
export CKS_BIN="$ROOT/$BUILD/ckptscope" CKS_BUILD="$ROOT/$BUILD" CKS_ROOT="$ROOT"
export CKS_REALDATA="${CKS_REALDATA:-$ROOT/../shared/realdata}"
JOBS=${CKS_TEST_JOBS:-$(nproc 2>/dev/null || echo 2)}
LIMIT=${CKS_TEST_TIMEOUT:-$([ "${CKS_SANITIZED:-0}" = 1 ] && echo 2400 || echo 1200)}
ONLY=${CKS_TEST_ONLY:-}
case "$TIER" in all|check|long) ;; *) echo "tests/run.sh: unknown tier '$TIER' (all, check or long)" >&2; exit 2 ;; esac
case "$JOBS" in ''|*[!0-9]*|0) echo "tests/run.sh: CKS_TEST_JOBS must be a whole number >= 1, not '$JOBS'" >&2; exit 2 ;; esac
case "$LIMIT" in ''|*[!0-9]*|0) echo "tests/run.sh: CKS_TEST_TIMEOUT must be seconds >= 1, not '$LIMIT'" >&2; exit 2 ;; esac

# The long tier: every program that takes 11 s or more alone, slowest first (measured 2026-12-04,
# make test on the 2-core machine under a load of ~4: fingerprint_wide 187 s, verdicts 70,
# scaleout 60, slurm 51, fingerprint 45, compare 31, report 30, remote 21, cache_hub 19, docs 17,
# fakehub 14, verify 12, cache_cli 11; everything else 95 s together), and the real tokenizers
# (21 s: five multi-MB tokenizer.json files read by the binary and by Python; session 4, when it
# alone kept make check at 58 s). make check leaves them out; make test and CI run them, and
# start them first so the short ones fill the other cores.
LONG_TIER="test_fingerprint_wide.py test_verdicts.py test_scaleout.py test_slurm.py test_fingerprint.py
           test_compare.py test_report.py test_tokenizers_real.py test_remote.py test_cache_hub.py test_docs.py
           test_fakehub.py test_verify.py test_verify_prescreen.py test_cache_cli.sh"

in_long_tier() { case " $(echo $LONG_TIER) " in *" $1 "*) return 0 ;; esac; return 1; }

labels=() kinds=() paths=()
add() {  # kind, path: queue one program if the tier and CKS_TEST_ONLY select it
    local label
    label=$(basename "$2")
    [ -n "$ONLY" ] && [[ "$label" != *"$ONLY"* ]] && return
    if in_long_tier "$label"; then
        [ "$TIER" = check ] && return
    else
        [ "$TIER" = long ] && return
    fi
    labels+=("$label") kinds+=("$1") paths+=("$2")
}
# long programs first, in the order of LONG_TIER (slowest first)
for name in $LONG_TIER; do
    [ -f "tests/integration/$name" ] && add "${name##*.}" "tests/integration/$name"
done
for t in "$BUILD"/tests/test_*; do [ -x "$t" ] && add bin "$t"; done
for t in "$BUILD"/tests/replay_*; do [ -x "$t" ] && add replay "$t"; done
for t in tests/integration/test_*.sh tests/integration/test_*.py; do
    [ -f "$t" ] && ! in_long_tier "$(basename "$t")" && add "${t##*.}" "$t"
done

LOG=$(mktemp -d)
trap 'rm -rf "$LOG"' EXIT

start_one() {  # index: run program number index in the background, its results in $LOG/index.*
    local i=$1 path=${paths[$1]}
    local cmd
    case "${kinds[$i]}" in
        bin) cmd=("$path") ;;
        replay) local target; target=$(basename "$path"); cmd=("$path" "tests/fuzz/corpus/${target#replay_}") ;;
        sh) cmd=(bash "$path") ;;
        py) cmd=(/usr/bin/python3 "$path") ;;
    esac
    (
        started=$SECONDS
        # timeout puts the program in its own process group and signals the whole group, so a
        # fake Hub or a Slurm daemon the program started goes too; KILL 10 s after TERM
        timeout --kill-after=10 "$LIMIT" "${cmd[@]}" >"$LOG/$i.out" 2>"$LOG/$i.err" </dev/null &
        group=$!
        wait "$group"
        rc=$?
        # what the program left running in its group (a fake Hub it did not stop) goes too, so
        # it cannot hold a port or a core while the next programs run
        # (zombies do not count: a process substitution's sed is left defunct for init to reap)
        alive() { local p; for p in $(pgrep -g "$group"); do ps -o stat= -p "$p" | grep -qv '^Z' && return 0; done; return 1; }
        alive && sleep 0.5
        if alive; then
            pgrep -g "$group" -a | sed 's/^/    left running: /' >>"$LOG/$i.err"
            echo "note: it left processes running; they were killed" >>"$LOG/$i.note"
            kill -KILL -- "-$group" 2>/dev/null
        fi
        echo $((SECONDS - started)) >"$LOG/$i.took"
        echo $rc >"$LOG/$i.rc.part" && mv "$LOG/$i.rc.part" "$LOG/$i.rc"  # whole, or not there
    ) &
}

passed=0 failed=0 skipped=0
declare -A reported=()
report_one() {  # index: print the block of a finished program and add its counts
    local i=$1 label=${labels[$1]} out="$LOG/$1.out" err="$LOG/$1.err"
    local rc took p f s
    rc=$(cat "$LOG/$i.rc") took=$(cat "$LOG/$i.took")
    p=$(grep -c '^PASS ' "$out"); f=$(grep -c '^FAIL ' "$out"); s=$(grep -c '^SKIP ' "$out")
    grep -E '^(FAIL|SKIP) ' "$out" | sed "s|^|[$label] |"
    [ -f "$LOG/$i.note" ] && sed "s|^|[$label] |" "$LOG/$i.note"
    if [ "$f" -gt 0 ] || [ "$rc" -ne 0 ]; then
        sed 's/^/    /' "$err" | tail -n 40
    fi
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        echo "[$label] FAIL: timed out: still running after ${LIMIT}s, killed (CKS_TEST_TIMEOUT)"
        f=$((f + 1))
    elif [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
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
report_finished() {
    local i
    for i in "${!labels[@]}"; do
        if [ -z "${reported[$i]:-}" ] && [ -f "$LOG/$i.rc" ]; then
            reported[$i]=1
            report_one "$i"
        fi
    done
}

running=0
for i in "${!labels[@]}"; do
    while [ "$running" -ge "$JOBS" ]; do
        wait -n; running=$((running - 1))
        report_finished
    done
    start_one "$i"; running=$((running + 1))
done
while [ "$running" -gt 0 ]; do
    wait -n; running=$((running - 1))
    report_finished
done
wait
report_finished
if [ "${#labels[@]}" -eq 0 ]; then
    echo "[run.sh] FAIL: no test program selected (tier $TIER${ONLY:+, CKS_TEST_ONLY=$ONLY}; is $BUILD built?)"
    failed=1
fi
# CI shows only the end of the log: name the failures again right above the closing line
if [ "$failed" -gt 0 ]; then
    echo "== failures (their blocks, with stderr, are above):"
    for i in "${!labels[@]}"; do
        grep -E '^FAIL ' "$LOG/$i.out" 2>/dev/null | head -n 20 | sed "s|^|[${labels[$i]}] |"
        rc=$(cat "$LOG/$i.rc" 2>/dev/null || echo 0)
        [ "$rc" -ne 0 ] && echo "[${labels[$i]}] exit status $rc"
    done
fi
echo "$passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]
