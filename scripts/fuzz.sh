#!/bin/bash
# Short libFuzzer runs of every fuzz target (clang), each for SECONDS seconds, starting
# from the committed corpus. New crashers are left in build-fuzz/ for triage; add them
# to tests/fuzz/corpus/<target>/ once fixed so make test replays them forever.
set -eu
SECONDS_EACH=${1:-30}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
OUT=build-fuzz
mkdir -p "$OUT"
PKGS="libcurl libcjson libcrypto libzstd openblas"
FLAGS="-std=c17 -D_GNU_SOURCE -g -O1 -fsanitize=fuzzer,address,undefined -Iinclude -Isrc $(pkg-config --cflags $PKGS)"
LIBS="$(pkg-config --libs $PKGS) -lm -pthread"
status=0
for target in tests/fuzz/fuzz_*.c; do
    name=$(basename "$target" .c)
    case $name in
    fuzz_fingerprint) srcs=$(ls src/*.c) ;;  # the reader rebuilds a header-only checkpoint
    fuzz_http_response | fuzz_hub_listing | fuzz_cache_extent) srcs=$(ls src/*.c) ;;
    *) srcs="src/safetensors.c src/dtype.c src/error.c src/source.c" ;;
    esac
    # shellcheck disable=SC2086
    clang $FLAGS -o "$OUT/$name" "$target" $srcs $LIBS
    mkdir -p "$OUT/corpus-$name"
    echo "fuzzing $name for ${SECONDS_EACH}s"
    if ! (cd "$OUT" && "./$name" -max_total_time="$SECONDS_EACH" -max_len=65536 -artifact_prefix="./crash-$name-" \
            "corpus-$name" "$ROOT/tests/fuzz/corpus/$name" >"fuzz-$name.log" 2>&1); then
        echo "FAIL: $name found a crash; see $OUT/fuzz-$name.log and $OUT/crash-$name-*"
        tail -n 30 "$OUT/fuzz-$name.log"
        status=1
    else
        grep -E '^#[0-9]+.*DONE|stat::number_of_executed_units' "$OUT/fuzz-$name.log" | tail -n 1 || true
    fi
done
exit $status
