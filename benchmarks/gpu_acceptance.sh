#!/usr/bin/env bash
# GPU acceptance run (issue 19): at most 8 minutes on one GPU; prints a table and writes
# OUT/acceptance.json (logs of every step in OUT/log). Exit status 1 if a required step failed.
#
#   bash benchmarks/gpu_acceptance.sh [OUT] [--quick] [--only STEP,...]
#
# On a GPU node (one GPU is enough; the 2-rank selftests share it), inside the job's
# environment (modules, venv with hpcinv[cuda13] or hpcinv[cuda12]):
#   HPCINV_ACCEPTANCE_LAUNCHER="srun -n {n}" bash benchmarks/gpu_acceptance.sh   # under SLURM
# Dry run on any machine, the host backend standing in for the GPU:
#   HPCINV_ACCEPTANCE_BACKEND=host bash benchmarks/gpu_acceptance.sh /tmp/acc --quick
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="acceptance-$(date +%Y%m%d-%H%M%S)"
if [[ $# -gt 0 && "$1" != --* ]]; then
    out="$1"
    shift
fi
py="${PYTHON:-python}"
exec timeout --kill-after=10 540 "$py" "$here/gpu_acceptance.py" --out "$out" --budget 480 "$@"
