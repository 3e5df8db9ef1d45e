#!/bin/bash
# make demo — the main job out of the box: `ckptscope compare` through a fake Hub on 127.0.0.1
# (real HTTP, real range requests, the real cache) on synthetic models, with HTML reports.
# Everything lives under cache/ (models, the fake Hub's store, the cache, the reports); a rerun
# reuses them and is served from the cache. See scripts/demo_run.py.
set -u
BUILD=${1:-build}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT" || exit 1
exec /usr/bin/python3 scripts/demo_run.py "$BUILD"
