#!/bin/bash
# make demo — the local analysis on checkpoints the project generates. (The network demo
# with the fake Hub and `compare` replaces this once those land; see PLAN.md.)
set -u
BUILD=${1:-build}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
BIN="$BUILD/ckptscope"
DEMO=cache/demo-local
rm -rf "$DEMO"
mkdir -p "$DEMO"
/usr/bin/python3 scripts/demo_local.py "$DEMO" || exit 1
step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; "$@"; echo "(exit $?)"; }
step "$BIN" ls "$DEMO/base/model.safetensors" --tensor 'model.layers.0.*'
step "$BIN" hash "$DEMO/base/model.safetensors" --tensor '*norm*'
echo
echo "A re-upload, re-sharded and with tensors renamed: same contents, so diff exits 0."
step "$BIN" diff "$DEMO/base/model.safetensors" "$DEMO/resharded"
echo
echo "A fine-tune: most tensors changed, a deep norm bit-identical; diff exits 1."
step "$BIN" diff "$DEMO/base/model.safetensors" "$DEMO/finetune/model.safetensors" --all
echo
echo "Demo checkpoints are in $DEMO/."
