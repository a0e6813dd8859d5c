# shellcheck shell=bash
# CUDA-aware MVAPICH2 / MVAPICH2-GDR / MVAPICH-Plus. Sourced by jobs/common.sh when
# HPCINV_MPI_ENV=mvapich.
#
# Modules (names differ per site):
#   module load gcc cuda mvapich2-gdr   # or mvapich2 built --enable-cuda, or mvapich-plus
# mpi4py must be built against it: MPICC=$(which mpicc) pip install --no-binary mpi4py mpi4py
# srun needs the PMI MVAPICH was built for: export SLURM_MPI_TYPE=pmi2 (or pmix) before sbatch.
#
# CUDA-aware or staged: hpcinv decides from MV2_USE_CUDA (set to 1 here for GPU runs unless you
# set it; MV2_USE_CUDA=0 stages through host memory). Force hpcinv's choice with
# HPCINV_CUDA_AWARE=1 (device buffers to MPI) or 0 (staged); this file keeps your value.
if [[ "${HPCINV_BACKEND:-auto}" != "host" ]]; then
    export MV2_USE_CUDA=${MV2_USE_CUDA:-1} # device buffers in MPI calls (hpcinv detects this)
    export MV2_USE_GDRCOPY=${MV2_USE_GDRCOPY:-1}
    # export MV2_GPUDIRECT_GDRCOPY_LIB=/path/to/libgdrapi.so   # GDR builds: where gdrcopy is
    # export MV2_CUDA_BLOCK_SIZE=524288   # pipelining block for large device messages
fi
# MVAPICH binds ranks to cores itself, which fights srun's --cpu-bind and OpenMP threads:
export MV2_ENABLE_AFFINITY=${MV2_ENABLE_AFFINITY:-0}
# export MV2_SHOW_ENV_INFO=2             # print MVAPICH's settings at start-up
