#!/bin/bash
# `ckptscope cache ls|du|verify|prune|clear` on caches filled through the C API
# ($CKS_BUILD/tests/test_cache_tool), plus crash consistency: kill -9 a writer at many
# points of a large fetch, then `cache verify` must report no bad entry and a rerun must
# complete with exact bytes. One line per case: PASS/FAIL/SKIP.
set -u
BIN=${CKS_BIN:?CKS_BIN not set}
TOOL=${CKS_BUILD:?CKS_BUILD not set}/tests/test_cache_tool
failed=0
pass() { echo "PASS $1"; }
fail() { echo "FAIL $1: $2"; failed=1; }
if [ ! -x "$TOOL" ] || [ ! -x "$BIN" ]; then
    echo "FAIL cache_cli_setup: missing $TOOL or $BIN"
    exit 1
fi
W=$(mktemp -d /tmp/cks-cache-cli-XXXXXX)
trap 'rm -rf "$W"' EXIT
C="$W/cache"
json() { /usr/bin/python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }

# --- ls / du on a populated cache -------------------------------------------------------
"$TOOL" populate "$C" || fail populate "test_cache_tool populate failed"
out=$("$BIN" cache ls --json --cache-dir "$C")
first=$(printf '%s' "$out" | json 'list(d.keys())[0]')
nfile=$(printf '%s' "$out" | json 'sum(1 for e in d["entries"] if e["kind"]=="file")')
nmeta=$(printf '%s' "$out" | json 'sum(1 for e in d["entries"] if e["kind"]=="meta")')
ext=$(printf '%s' "$out" | json '[e["extents"] for e in d["entries"] if e["key"].startswith("sha256:1111")][0]')
if [ "$first" = schema_version ] && [ "$nfile" = 2 ] && [ "$nmeta" = 2 ] && [ "$ext" = 2 ]; then
    pass cache_ls_json
else
    fail cache_ls_json "first=$first files=$nfile meta=$nmeta extents=$ext"
fi
"$BIN" cache ls --entries --cache-dir "$C" | grep -q 'meta .*revision model/org/name@main' \
    && pass cache_ls_entries_text || fail cache_ls_entries_text "no revision line"
# by repository (the default): these keys belong to no cached repository listing
"$BIN" cache ls --cache-dir "$C" | grep -q '^(no cached listing) .* 2 ' \
    && pass cache_ls_by_repository || fail cache_ls_by_repository "$("$BIN" cache ls --cache-dir "$C")"

out=$("$BIN" cache du --json --cache-dir "$C")
logical=$(printf '%s' "$out" | json 'd["logical_bytes"]')
stored=$(printf '%s' "$out" | json 'd["stored_bytes"]')
# 2 MiB random (stored raw) + 4 MiB that compress to almost nothing
if [ "$logical" -ge $((6 * 1048576 + 62)) ] && [ "$stored" -lt $((3 * 1048576)) ] && [ "$stored" -gt $((2 * 1048576)) ]; then
    pass cache_du_stored_vs_logical
else
    fail cache_du_stored_vs_logical "logical=$logical stored=$stored"
fi

# --- verify finds a flipped byte; --repair removes it -----------------------------------
"$BIN" cache verify --cache-dir "$C" >/dev/null && pass cache_verify_clean || fail cache_verify_clean "exit $?"
f=$(ls "$C"/files/11/s-*/x-* | head -1)
/usr/bin/python3 - "$f" <<'PY'
import sys
p = sys.argv[1]
with open(p, "r+b") as fh:
    fh.seek(5000); b = fh.read(1); fh.seek(5000); fh.write(bytes([b[0] ^ 0x40]))
PY
"$BIN" cache verify --cache-dir "$C" --json >"$W/v.json"; rc=$?
bad=$(json 'd["bad_extents"]' <"$W/v.json")
[ $rc -eq 4 ] && [ "$bad" = 1 ] && pass cache_verify_detects_flip || fail cache_verify_detects_flip "rc=$rc bad=$bad"
"$BIN" cache verify --repair --cache-dir "$C" >/dev/null; rc=$?
"$BIN" cache verify --cache-dir "$C" >/dev/null; rc2=$?
[ $rc -eq 0 ] && [ $rc2 -eq 0 ] && [ ! -e "$f" ] && pass cache_verify_repair || fail cache_verify_repair "rc=$rc then $rc2"

# --- prune to a cap, clear ---------------------------------------------------------------
"$BIN" cache prune --max 600K --cache-dir "$C" >/dev/null || fail cache_prune "exit $?"
stored=$("$BIN" cache du --json --cache-dir "$C" | json 'd["stored_bytes"]')
[ "$stored" -le $((600 * 1024)) ] && pass cache_prune_under_cap || fail cache_prune_under_cap "stored=$stored"
"$BIN" cache clear --cache-dir "$C" >/dev/null || fail cache_clear "exit $?"
n=$("$BIN" cache ls --json --cache-dir "$C" | json 'len(d["entries"])')
[ "$n" = 0 ] && pass cache_clear || fail cache_clear "$n entries left"

# --- the cap from the environment and from the cache's config file ----------------------
"$TOOL" populate "$C" || fail populate_again "populate failed"
CKPTSCOPE_CACHE_MAX=1M "$BIN" cache prune --cache-dir "$C" >/dev/null; r1=$?
s1=$("$BIN" cache du --json --cache-dir "$C" | json 'd["stored_bytes"]')
printf '# size cap\nmax_size = 300K\n' >"$C/config"
"$BIN" cache prune --cache-dir "$C" >/dev/null; r2=$?
s2=$("$BIN" cache du --json --cache-dir "$C" | json 'd["stored_bytes"]')
if [ $r1 -eq 0 ] && [ "$s1" -le 1048576 ] && [ $r2 -eq 0 ] && [ "$s2" -le 307200 ]; then
    pass cache_cap_from_env_and_config
else
    fail cache_cap_from_env_and_config "rc=$r1/$r2 stored=$s1/$s2"
fi
rm -f "$C/config"

# --- usage errors --------------------------------------------------------------------------
"$BIN" cache frobnicate --cache-dir "$C" 2>/dev/null; r1=$?
"$BIN" cache prune --cache-dir "$C" 2>/dev/null; r2=$?
"$BIN" cache --help | grep -q '^usage: ckptscope cache'; r3=$?
[ $r1 -eq 2 ] && [ $r2 -eq 2 ] && [ $r3 -eq 0 ] && pass cache_usage || fail cache_usage "rc $r1 $r2 $r3"
mkdir -p "$W/bad" && printf 'not a cache\n' >"$W/bad/layout"
"$BIN" cache du --cache-dir "$W/bad" 2>"$W/err"; rc=$?
[ $rc -eq 4 ] && grep -q 'unknown layout' "$W/err" && pass cache_refuses_foreign_dir || fail cache_refuses_foreign_dir "rc=$rc"

# --- kill -9 during a large fetch, many times -------------------------------------------
K="$W/kill"
# each round fetches fresh bytes (a new 8 MiB region), so every kill lands mid-fetch
total=$((8 * 1048576)); piece=$((1048576 + 12345)); rounds=20
killed=0 orphans=0
for i in $(seq 1 $rounds); do
    "$TOOL" write "$K" $total $piece $(( (i - 1) * total )) &
    pid=$!
    sleep "0.$(printf %03d $(( (i * 37) % 60 + 3 )))"
    kill -9 $pid 2>/dev/null && killed=$((killed + 1))
    wait $pid 2>/dev/null
    orphans=$((orphans + $(ls -A "$K/tmp" 2>/dev/null | wc -l)))
done
echo "# kill -9 landed $killed times; $orphans interrupted temporaries seen" >&2
"$BIN" cache verify --json --cache-dir "$K" >"$W/k.json"; rc=$?
bad=$(json 'd["bad_extents"] + d["bad_metadata"]' <"$W/k.json")
[ $rc -eq 0 ] && [ "$bad" = 0 ] && pass cache_kill9_verify_clean || fail cache_kill9_verify_clean "rc=$rc bad=$bad"
"$TOOL" check "$K" $((rounds * total)) >/dev/null && pass cache_kill9_rerun_exact || fail cache_kill9_rerun_exact "check failed"
left=$(ls -A "$K/tmp" | wc -l)
[ "$left" = 0 ] && pass cache_kill9_no_temporaries || fail cache_kill9_no_temporaries "$left left"

exit $failed
