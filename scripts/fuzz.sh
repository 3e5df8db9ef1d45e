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
# The library is compiled once (instrumented, in parallel) into an archive every target links
# against; the linker takes only the objects a target needs. It was compiled once per target
# (four of six built all of the library), most of the stage's compile time.
OBJ="$OUT/obj"
mkdir -p "$OBJ"
rm -f "$OBJ"/*.o "$OUT/libckptscope-fuzz.a"
export OBJ LIBFLAGS="${FLAGS/-fsanitize=fuzzer,/-fsanitize=fuzzer-no-link,}"
# shellcheck disable=SC2016
printf '%s\n' src/*/*.c | grep -v '^src/cli/' | xargs -P "$(nproc 2>/dev/null || echo 2)" -n 1 \
    sh -c 'clang $LIBFLAGS -c "$1" -o "$OBJ/$(basename "$1" .c).o"' _
ar rcs "$OUT/libckptscope-fuzz.a" "$OBJ"/*.o
status=0
for target in tests/fuzz/fuzz_*.c; do
    name=$(basename "$target" .c)
    # shellcheck disable=SC2086
    clang $FLAGS -o "$OUT/$name" "$target" "$OUT/libckptscope-fuzz.a" $LIBS
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
