#!/usr/bin/env bash
# One GPU per MPI rank: set CUDA_VISIBLE_DEVICES from the node-local rank, then exec the command.
#
#   srun jobs/gpu_bind.sh hpcinv forward run.toml
#   mpiexec -n 8 jobs/gpu_bind.sh python -m hpcinv forward run.toml
#
# The node-local rank comes from whichever launcher started us: SLURM (SLURM_LOCALID), Open MPI
# (OMPI_COMM_WORLD_LOCAL_RANK), MPICH/Hydra and Intel MPI (MPI_LOCALRANKID), PMI/PALS on Cray
# (PMI_LOCAL_RANK, PALS_LOCAL_RANKID), MVAPICH2 (MV2_COMM_WORLD_LOCAL_RANK), PMIx
# (PMIX_LOCAL_RANK). The rank takes entry (local rank mod count) of the first list found of:
#   GPU_LIST (e.g. "0,1,2,3", or "3,2,1,0" to match a node's NUMA layout),
#   CUDA_VISIBLE_DEVICES as the launcher left it (SLURM sets it to the job's GPUs; a single
#     entry, e.g. from --gpus-per-task=1, is kept as it is),
#   0..HPCINV_GPUS_PER_NODE-1,
#   the GPUs nvidia-smi lists.
# Ranks share GPUs round-robin when they outnumber them. Nothing is changed when no local rank
# is found, no GPU list is found, HPCINV_GPU_BIND=0, or HPCINV_BACKEND=host (CPU runs: no
# nvidia-smi call on CPU nodes). HPCINV_GPU_BIND_VERBOSE=1 prints the binding of every rank on
# stderr. The jobs/*.sbatch scripts put this wrapper after their launcher (srun or
# HPCINV_LAUNCHER) unless HPCINV_GPU_BIND=0.
#
# hpcinv then uses device 0 of what it sees (local rank % visible devices), so binding here and
# selection in hpcinv agree.
set -euo pipefail

if [[ $# -eq 0 ]]; then
    echo "usage: $0 COMMAND [ARGS...]" >&2
    exit 2
fi

local_rank=${SLURM_LOCALID:-${OMPI_COMM_WORLD_LOCAL_RANK:-${MPI_LOCALRANKID:-${PMI_LOCAL_RANK:-${PALS_LOCAL_RANKID:-${MV2_COMM_WORLD_LOCAL_RANK:-${PMIX_LOCAL_RANK:-}}}}}}}

if [[ "${HPCINV_GPU_BIND:-1}" != "0" && "${HPCINV_BACKEND:-}" != "host" && -n "$local_rank" ]]; then
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
        echo "gpu_bind: host $(hostname) local rank $local_rank -> CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-unset}" >&2
    fi
fi

exec "$@"
