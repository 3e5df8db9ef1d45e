#!/bin/bash
# bench/verdicts/run.sh [BUILD] — verdict calibration (issue 13): every labelled pair of the generated
# corpus (tests/tools/gen_corpus.py) over seeds 1,2,3 and the real pairs of ../shared/realdata that
# TRUTH.md labels, through BUILD/ckptscope compare --json. Writes bench/verdicts/RESULTS.md.
# BENCH_QUICK=1: one seed, the generator's quick subset (about a minute on an idle machine),
# written to bench/out/verdicts-quick.md. Exit 0 when every comparison ran, whatever the verdicts.
set -eu
BUILD=${1:-build}
cd "$(dirname "$0")/../.."
if [ "${BENCH_QUICK:-0}" = 1 ]; then
    exec /usr/bin/python3 bench/verdicts/verdicts.py --bin "$BUILD/ckptscope" --quick
fi
exec /usr/bin/python3 bench/verdicts/verdicts.py --bin "$BUILD/ckptscope"
