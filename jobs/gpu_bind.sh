#!/usr/bin/env bash
# One GPU per MPI rank: set CUDA_VISIBLE_DEVICES from the node-local rank, then exec the command.
#
#   srun jobs/gpu_bind.sh hpcinv forward run.toml
#   mpiexec -n 8 jobs/gpu_bind.sh python -m hpcinv forward run.toml
#
# The node-local rank comes from the launcher that started this process, first found of:
#   Open MPI mpirun / prterun          OMPI_COMM_WORLD_LOCAL_RANK
#   MPICH Hydra mpiexec, Intel MPI     MPI_LOCALRANKID
#   PMI launchers (Hydra, Cray PALS)   PMI_LOCAL_RANK
#   Cray PALS mpiexec                  PALS_LOCAL_RANKID
#   MVAPICH mpirun_rsh                 MV2_COMM_WORLD_LOCAL_RANK
#   PMIx launchers                     PMIX_LOCAL_RANK
#   srun                               SLURM_LOCALID, only if srun started this very process
# SLURM_LOCALID counts only inside an srun task: SLURM_STEP_ID must name a real step (not the
# batch, extern or interactive step) and SLURM_PROCID must agree with any global rank another
# launcher set (PMI_RANK, PMIX_RANK, OMPI_COMM_WORLD_RANK). Under mpirun or Hydra's mpiexec
# inside an allocation every rank inherits SLURM_LOCALID=0 (from the batch shell, or from the
# srun step that started the launcher's per-node daemons or proxies): trusting it put every
# rank on GPU 0.
#
# The rank takes entry (local rank mod count) of the first list found of:
#   GPU_LIST (e.g. "0,1,2,3", or "3,2,1,0" to match a node's NUMA layout),
#   CUDA_VISIBLE_DEVICES as the launcher left it (SLURM sets it to the job's GPUs; a single
#     entry, e.g. from --gpus-per-task=1, is kept as it is),
#   0..HPCINV_GPUS_PER_NODE-1,
#   the GPUs nvidia-smi lists.
# Ranks share GPUs round-robin when they outnumber them. Nothing is changed when no local rank
# is found (a warning says so when SLURM_LOCALID was ignored), no GPU list is found,
# HPCINV_GPU_BIND=0, or HPCINV_BACKEND=host (CPU runs: no nvidia-smi call on CPU nodes).
# HPCINV_GPU_BIND_VERBOSE=1 prints the binding of every rank, and where its local rank came
# from, on stderr. The jobs/*.sbatch scripts put this wrapper after their launcher (srun or
# HPCINV_LAUNCHER) unless HPCINV_GPU_BIND=0.
#
# hpcinv then uses device 0 of what it sees (local rank % visible devices), so binding here and
# selection in hpcinv agree.
set -euo pipefail

if [[ $# -eq 0 ]]; then
    echo "usage: $0 COMMAND [ARGS...]" >&2
    exit 2
fi

# srun_task: true when srun started this process itself.
srun_task() {
    local step=${SLURM_STEP_ID:-${SLURM_STEPID:-}} r
    [[ "$step" =~ ^[0-9]+$ ]] || return 1
    # 4294967290 and up: the extern, batch, interactive and pending "steps", not srun tasks
    [[ ${#step} -lt 10 || "$step" -lt 4294967290 ]] || return 1
    [[ "${SLURM_LOCALID:-}" =~ ^[0-9]+$ ]] || return 1
    for r in "${PMI_RANK:-}" "${PMIX_RANK:-}" "${OMPI_COMM_WORLD_RANK:-}"; do
        if [[ -n "$r" && "$r" != "${SLURM_PROCID:-}" ]]; then return 1; fi
    done
    return 0
}

local_rank= local_rank_from=
for v in OMPI_COMM_WORLD_LOCAL_RANK MPI_LOCALRANKID PMI_LOCAL_RANK PALS_LOCAL_RANKID \
         MV2_COMM_WORLD_LOCAL_RANK PMIX_LOCAL_RANK; do
    if [[ "${!v:-}" =~ ^[0-9]+$ ]]; then
        local_rank=${!v} local_rank_from=$v
        break
    fi
done
if [[ -z "$local_rank" ]] && srun_task; then
    local_rank=$SLURM_LOCALID local_rank_from=SLURM_LOCALID
fi

if [[ "${HPCINV_GPU_BIND:-1}" == "0" || "${HPCINV_BACKEND:-}" == "host" ]]; then
    :
elif [[ -n "$local_rank" ]]; then
    if [[ -n "${GPU_LIST:-}" ]]; then
        read -r -a gpus <<< "${GPU_LIST//,/ }"
    elif [[ -n "${CUDA_VISIBLE_DEVICES:-}" ]]; then
        read -r -a gpus <<< "${CUDA_VISIBLE_DEVICES//,/ }"
    elif [[ -n "${HPCINV_GPUS_PER_NODE:-}" ]]; then
        mapfile -t gpus < <(seq 0 $((HPCINV_GPUS_PER_NODE - 1)))
    elif command -v nvidia-smi >/dev/null 2>&1 \
            && mapfile -t gpus < <(nvidia-smi --query-gpu=index --format=csv,noheader 2>/dev/null) \
            && [[ ${#gpus[@]} -gt 0 ]]; then
        :
    else
        gpus=()
    fi
    if [[ ${#gpus[@]} -gt 0 ]]; then
        export CUDA_VISIBLE_DEVICES=${gpus[$((local_rank % ${#gpus[@]}))]}
    fi
    if [[ -n "${HPCINV_GPU_BIND_VERBOSE:-}" ]]; then
        echo "gpu_bind: host $(hostname) local rank $local_rank ($local_rank_from) ->" \
             "CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-unset}" >&2
    fi
elif [[ -n "${SLURM_LOCALID:-}" || -n "${HPCINV_GPU_BIND_VERBOSE:-}" ]]; then
    echo "gpu_bind: host $(hostname): no node-local rank from the launcher" \
         "(SLURM_LOCALID=${SLURM_LOCALID:-unset} not used: not an srun task);" \
         "CUDA_VISIBLE_DEVICES left as ${CUDA_VISIBLE_DEVICES:-unset}" >&2
fi

exec "$@"
