#!/bin/bash
# The layers, read from the #include lines (issue 17): the library (src/*.c, src/*.h) includes
# only the public headers (include/ckptscope/) and its own internal headers next to it, never a
# CLI header (src/cli/) or a test header (tests/); the CLI includes the public headers and its
# own headers, never the library's internal ones or a test header. The Makefile compiles the
# library without -Itests for the same reason; this catches what an include path cannot
# (relative paths such as "cli/cli.h" or "../../tests/check.h").
set -u
cd "${CKS_ROOT:-$(dirname "$0")/../..}" || exit 1
pass() { echo "PASS $1"; }
fail() { echo "FAIL $1: $2"; }

# check_layer NAME DIR: every quoted include of DIR/*.c and DIR/*.h names a header in DIR itself
# (no folder in the name) or one under include/
check_layer() {
    local name=$1 dir=$2 bad="" n=0 file inc
    for file in "$dir"/*.c "$dir"/*.h; do
        [ -f "$file" ] || continue
        while IFS= read -r inc; do
            n=$((n + 1))
            if [[ "$inc" == ckptscope/* ]] && [ -f "include/$inc" ]; then
                continue
            fi
            if [[ "$inc" != */* ]] && [ -f "$dir/$inc" ]; then
                continue
            fi
            bad+="${bad:+; }$file includes \"$inc\""
        done < <(sed -n 's/^[[:space:]]*#[[:space:]]*include[[:space:]]*"\([^"]*\)".*/\1/p' "$file")
    done
    if [ "$n" -eq 0 ]; then
        fail "$name" "found no #include line in $dir: the check read nothing"
    elif [ -n "$bad" ]; then
        fail "$name" "$bad"
    else
        pass "$name ($n includes)"
    fi
}

check_layer "the library includes only public headers and its own" src
check_layer "the CLI includes only public headers and its own" src/cli

# the checker itself: a library file that includes a CLI header is caught
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/src"
printf '#include "ckptscope/error.h"\n#include "cli/cli.h"\n' >"$tmp/src/planted.c"
out=$(check_layer "planted" "$tmp/src")
case "$out" in
    "FAIL planted: $tmp/src/planted.c includes \"cli/cli.h\"") pass "a library file including cli/cli.h is reported" ;;
    *) fail "the check catches a planted CLI include" "got: $out" ;;
esac
