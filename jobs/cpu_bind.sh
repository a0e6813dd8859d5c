#!/usr/bin/env bash
# OpenMP thread placement for one MPI rank, decided inside the rank, then exec the command.
#
#   srun --cpus-per-task=8 --cpu-bind=cores jobs/cpu_bind.sh python -m hpcinv forward run.toml
#
# OMP_PROC_BIND=close OMP_PLACES=cores is right only when the rank has its own set of CPUs. If
# every rank may run on the same CPUs (no task affinity on the site, --cpu-bind=none, mpirun
# without binding, a cgroup holding the whole job), "close" puts thread 0 of every rank on the
# first core of that shared set: all ranks on one core. So this wrapper looks at the CPUs this
# process may run on (its affinity mask) and binds only when the mask is no larger than the
# CPUs one task was given (SLURM_CPUS_PER_TASK, or HPCINV_CPUS_PER_TASK): that is, when the
# launcher gave each task its own CPUs. Otherwise it leaves the threads unbound (the kernel then
# spreads them over the mask). Values already in OMP_PROC_BIND / OMP_PLACES are kept.
#
# It also warns when OMP_NUM_THREADS exceeds the CPUs in the mask (threads share CPUs: e.g. srun
# without --cpus-per-task, which since Slurm 22.05 is not inherited from sbatch).
#
#   HPCINV_CPU_BIND=0          leave OMP_PROC_BIND / OMP_PLACES alone (no wrapper logic)
#   HPCINV_CPU_BIND=1          bind even when the mask does not look like the task's own
#   HPCINV_CPU_BIND_VERBOSE=1  print the decision of every rank on stderr
#   HPCINV_AFFINITY_CPUS       (tests) the mask size to assume instead of measuring it
set -euo pipefail

if [[ $# -eq 0 ]]; then
    echo "usage: $0 COMMAND [ARGS...]" >&2
    exit 2
fi

# Number of CPUs this process may run on. GNU nproc honours OMP_NUM_THREADS and
# OMP_THREAD_LIMIT, so those are removed for the question.
mask_cpus() {
    if [[ -n "${HPCINV_AFFINITY_CPUS:-}" ]]; then echo "$HPCINV_AFFINITY_CPUS"; return; fi
    env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc 2>/dev/null \
        || getconf _NPROCESSORS_ONLN 2>/dev/null || echo 0
}

mode=${HPCINV_CPU_BIND:-auto}
if [[ "$mode" != 0 ]]; then
    mask=$(mask_cpus)
    per_task=${HPCINV_CPUS_PER_TASK:-${SLURM_CPUS_PER_TASK:-}}
    threads=${OMP_NUM_THREADS:-}
    why=
    if [[ "$mode" == 1 ]]; then
        bind=1 why="HPCINV_CPU_BIND=1"
    elif [[ -z "$per_task" ]]; then
        bind=0 why="CPUs per task unknown (no SLURM_CPUS_PER_TASK)"
    elif [[ "$mask" -ge 1 && "$mask" -le "$per_task" ]]; then
        bind=1 why="own CPU set: $mask CPU(s) in the mask, $per_task per task"
    else
        bind=0 why="$mask CPU(s) in the mask for $per_task per task: shared with other ranks"
    fi
    if [[ $bind == 1 ]]; then
        export OMP_PROC_BIND=${OMP_PROC_BIND:-close}
        export OMP_PLACES=${OMP_PLACES:-cores}
    fi
    if [[ "$threads" =~ ^[0-9]+$ && "$mask" -ge 1 && "$threads" -gt "$mask" ]]; then
        echo "cpu_bind: $(hostname): OMP_NUM_THREADS=$threads but this rank may use only" \
             "$mask CPU(s): threads share CPUs (give srun --cpus-per-task=$threads)" >&2
    fi
    if [[ -n "${HPCINV_CPU_BIND_VERBOSE:-}" ]]; then
        echo "cpu_bind: $(hostname) bind=$bind ($why);" \
             "OMP_PROC_BIND=${OMP_PROC_BIND:-unset} OMP_PLACES=${OMP_PLACES:-unset}" \
             "OMP_NUM_THREADS=${threads:-unset}" >&2
    fi
fi

exec "$@"
