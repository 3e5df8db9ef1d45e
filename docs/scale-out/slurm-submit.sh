#!/bin/bash
# Fingerprint every SOURCE of LIST on a Slurm cluster, then gather them into one library:
#   docs/scale-out/slurm-submit.sh LIST OUT_DIR LIBRARY [TASKS]
# Submits an array of TASKS tasks (default: one per 8 sources) running fingerprint-array.sbatch,
# and a gather job that starts when every task has ended, however it ended; it writes LIBRARY
# (what `verify --against` reads) and LIBRARY.summary.json (what failed and why), and fails
# when something is missing. Task reports go to OUT_DIR/logs/. Prints the two job ids.
# Running the same command again after a failure or a cancelled task makes only what is
# missing. Set CKPTSCOPE and CKPTSCOPE_CACHE as for fingerprint-array.sbatch; OUT_DIR and the
# cache must be on a filesystem every node mounts.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
list=$(realpath "${1:?usage: slurm-submit.sh LIST OUT_DIR LIBRARY [TASKS]}")
out=$(realpath -m "${2:?usage: slurm-submit.sh LIST OUT_DIR LIBRARY [TASKS]}")
library=$(realpath -m "${3:?usage: slurm-submit.sh LIST OUT_DIR LIBRARY [TASKS]}")
sources=$(grep -cv -e '^[[:space:]]*#' -e '^[[:space:]]*$' "$list" || true)
tasks=${4:-$(( (sources + 7) / 8 ))}
[ "$tasks" -ge 1 ] || { echo "slurm-submit.sh: $list names no source" >&2; exit 2; }
mkdir -p "$out/logs"
array=$(sbatch --parsable --array="0-$((tasks - 1))" --output="$out/logs/fingerprint-%A_%a.json" \
    "$here/fingerprint-array.sbatch" "$list" "$out")
gather=$(sbatch --parsable --dependency="afterany:$array" --job-name=ckptscope-gather \
    --output="$out/logs/gather-%j.out" \
    --wrap="$(printf '%q ' "${CKPTSCOPE:-ckptscope}" fingerprint gather "$out" --list "$list" \
        -o "$library" --summary "$library.summary.json")")
echo "$array $gather"
