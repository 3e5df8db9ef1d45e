#!/bin/bash
# bench/verify: `verify --against DIR` with 1,000 fingerprints (issue 15). BUILD = first argument.
set -eu
BUILD=${1:-build-o3}
cd "$(dirname "$0")/../.."
exec /usr/bin/python3 bench/verify/bench_verify.py --bin "$BUILD/ckptscope"
