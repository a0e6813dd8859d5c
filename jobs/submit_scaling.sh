#!/usr/bin/env bash
# Submit a scaling study: one job per node count, all appending to the same JSON-lines file.
#
#   jobs/submit_scaling.sh weak|strong [NODE_COUNTS...] [-- sbatch options] [--- benchmark options]
#   jobs/submit_scaling.sh weak                          # 1 2 4 8 nodes
#   jobs/submit_scaling.sh strong 1 2 4 8 16 32 -- --account=abc123 --time=00:20:00
#   jobs/submit_scaling.sh weak 1 2 4 --- --3d --iters 50
#   HPCINV_SUBMIT_DRY_RUN=1 jobs/submit_scaling.sh weak  # print the sbatch commands only
#
# Every job redraws the plot from all lines in the file, so the last one to finish shows the whole
# study (runs/scaling/KIND.png; HPCINV_OUTPUT, exported here, changes the directory). Submit from
# the repository root: the jobs find jobs/common.sh through the submission directory.
# The environment at submission (HPCINV_BACKEND, HPCINV_MPI_ENV, HPCINV_ARGS, modules, ...) goes
# with the jobs (sbatch's default --export=ALL).
#
# Without SLURM, with HPCINV_LAUNCHER set: the counts are rank counts and the study runs here,
# now, through the launcher, which must contain {n}:
#   HPCINV_LAUNCHER="mpiexec -n {n}" HPCINV_BACKEND=host jobs/submit_scaling.sh weak 1 2 4 --- --local 256x256
set -euo pipefail

usage() {
    sed -n '4,8p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
    exit 2
}
[[ $# -ge 1 ]] || usage
kind=$1
shift
case $kind in weak|strong) ;; *) usage ;; esac

counts=()
sbatch_opts=()
bench_opts=()
where=counts
for a in "$@"; do
    if [[ $a == "---" ]]; then where=bench; continue; fi
    if [[ $a == "--" && $where == counts ]]; then where=sbatch; continue; fi
    case $where in
        counts)
            [[ $a =~ ^[0-9]+$ ]] || { echo "submit_scaling.sh: not a count: $a" >&2; usage; }
            counts+=("$a") ;;
        sbatch) sbatch_opts+=("$a") ;;
        bench) bench_opts+=("$a") ;;
    esac
done
if [[ ${#counts[@]} -eq 0 ]]; then counts=(1 2 4 8); fi

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
script=$here/${kind}_scaling.sbatch
export HPCINV_OUTPUT=${HPCINV_OUTPUT:-runs/scaling}

if [[ -n "${HPCINV_LAUNCHER:-}" ]]; then
    if [[ "$HPCINV_LAUNCHER" != *"{n}"* ]]; then
        echo "submit_scaling.sh: HPCINV_LAUNCHER must contain {n} for the rank count," \
             "e.g. HPCINV_LAUNCHER=\"mpiexec -n {n}\"" >&2
        exit 2
    fi
    HPCINV_RANKS="${counts[*]}" exec bash "$script" ${bench_opts[@]+"${bench_opts[@]}"}
fi

if [[ -z "${HPCINV_SUBMIT_DRY_RUN:-}" ]] && ! command -v sbatch >/dev/null; then
    echo "submit_scaling.sh: sbatch not found; on a machine without SLURM set HPCINV_LAUNCHER" \
         "(e.g. \"mpiexec -n {n}\") to run the study locally" >&2
    exit 2
fi
for n in "${counts[@]}"; do
    cmd=(sbatch --nodes="$n" --job-name="hpcinv-$kind-$n" ${sbatch_opts[@]+"${sbatch_opts[@]}"}
         "$script" ${bench_opts[@]+"${bench_opts[@]}"})
    if [[ -n "${HPCINV_SUBMIT_DRY_RUN:-}" ]]; then
        echo "${cmd[*]}"
    else
        "${cmd[@]}"
    fi
done
