#!/bin/bash
# Header parsing: the flat path against cJSON's tree, cold (one parse in a fresh process, what a
# command pays per header it opens) and warm (best of 50 in one process). Writes RESULTS.md.
#   bash bench/header/run.sh [BUILD]      (BUILD holds libckptscope.a; make bench uses build-o3)
set -eu
cd "$(dirname "$0")/../.."
BUILD=${1:-build-o3}
RUNS=${HEADER_BENCH_RUNS:-21}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/cks-bench-header-XXXXXX")
trap 'rm -rf "$WORK"' EXIT
PKGS="libcurl libcjson libcrypto libzstd openblas"
# shellcheck disable=SC2046,SC2086
gcc -O3 -g -std=c17 -D_GNU_SOURCE -Iinclude -Isrc bench/header/bench_header.c "$BUILD/libckptscope.a" \
    $(pkg-config --cflags --libs $PKGS) -lm -pthread -o "$WORK/bench_header"
LOAD=$(cut -d' ' -f1-3 /proc/loadavg)
rows=""
for n in 400 2000 18000; do
    "$WORK/bench_header" make "$WORK/h$n.safetensors" "$n"
    : >"$WORK/flat" && : >"$WORK/tree"
    for _ in $(seq "$RUNS"); do # alternating, so a busy moment slows both alike
        "$WORK/bench_header" cold "$WORK/h$n.safetensors" flat >>"$WORK/flat"
        "$WORK/bench_header" cold "$WORK/h$n.safetensors" tree >>"$WORK/tree"
    done
    wf=$("$WORK/bench_header" warm "$WORK/h$n.safetensors" flat)
    wt=$("$WORK/bench_header" warm "$WORK/h$n.safetensors" tree)
    rows="$rows$(/usr/bin/python3 - "$WORK/flat" "$WORK/tree" "$n" "$wf" "$wt" <<'PY'
import statistics, sys
def load(p):
    xs = [tuple(map(float, l.split())) for l in open(p) if l.strip()]
    return [x[0] for x in xs], [x[1] for x in xs]
ft, ff = load(sys.argv[1])
tt, tf = load(sys.argv[2])
n, wf, wt = int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
print("| %s | %.2f / %.2f ms | %.2f / %.2f ms | **%.2fx** | %d / %d | %.2f / %.2f ms |" % (
    format(n, ","), statistics.median(ft), min(ft), statistics.median(tt), min(tt),
    statistics.median(ft) / statistics.median(tt), statistics.median(ff), statistics.median(tf), wf, wt))
PY
)
"
done
{
    echo "# Header parsing benchmark"
    echo
    echo "Command: \`bash bench/header/run.sh ${1:-build-o3}\` (or \`make bench\`; \`HEADER_BENCH_RUNS=N\` cold runs per row)."
    echo "Run: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'),"
    echo "$(nproc) CPUs, load average before the run: $LOAD."
    echo
    echo "A header of N transformer-like tensors (BF16, one or two dimensions, a \`__metadata__\`)"
    echo "parsed by \`cks_st_parse\` (its flat path: the table filled straight from the bytes) and by"
    echo "\`cks_st_parse_tree_only\` (every header through cJSON's tree, as before session 9), each"
    echo "once in a fresh process, $RUNS processes each, alternating. Cold is that one parse (the"
    echo "first touch of its memory included, as a command meets it); warm is the best of 50 parses"
    echo "in one process. Page faults are the process's minor faults during the parse."
    echo
    echo "| tensors | flat cold, median / min | tree cold, median / min | flat / tree | page faults, flat / tree | warm, flat / tree |"
    echo "|---|---|---|---|---|---|"
    printf '%s' "$rows"
} >bench/header/RESULTS.md
cat bench/header/RESULTS.md
