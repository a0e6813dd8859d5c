# shellcheck shell=bash
# CUDA-aware Cray MPICH (HPE Cray EX: Perlmutter, Frontier-style GPU nodes with NVIDIA GPUs,
# Alps, ...). Sourced by jobs/common.sh when HPCINV_MPI_ENV=cray; or source it yourself.
#
# Modules (names differ per site; load them in the site block of jobs/common.sh or before
# sbatch -- the job inherits the submission environment):
#   module load PrgEnv-gnu            # or PrgEnv-nvidia / PrgEnv-cray
#   module load cray-mpich            # usually already loaded
#   module load cudatoolkit           # CUDA runtime matching the driver
#   module load craype-accel-nvidia80 # A100 (nvidia90: H100/GH200): links the GPU Transport
#                                     # Layer (GTL) library that MPICH_GPU_SUPPORT_ENABLED needs
# mpi4py must be built against it: MPICC="cc -shared" pip install --no-binary mpi4py mpi4py
# (with the accel module loaded, so libmpi_gtl_cuda is linked; otherwise MPI_Init aborts with
# "GPU_SUPPORT_ENABLED is requested, but GTL library is not linked").
#
# GPU support is switched on only for a GPU backend: on CPU-only nodes (HPCINV_BACKEND=host)
# MPICH_GPU_SUPPORT_ENABLED=1 without GTL aborts MPI_Init.
if [[ "${HPCINV_BACKEND:-auto}" != "host" ]]; then
    export MPICH_GPU_SUPPORT_ENABLED=${MPICH_GPU_SUPPORT_ENABLED:-1}
fi
# CUDA-aware or staged: hpcinv decides from MPICH_GPU_SUPPORT_ENABLED (1 above: MPI_Init aborts
# rather than run without GTL). Force hpcinv's choice with HPCINV_CUDA_AWARE=1 (device buffers
# to MPI) or HPCINV_CUDA_AWARE=0 (staged through host memory); this file keeps your value.
# Optional tuning (see `man intro_mpi`):
# export MPICH_GPU_IPC_ENABLED=1          # intra-node GPU peer-to-peer (default on)
# export MPICH_OFI_NIC_POLICY=GPU         # NIC closest to the rank's GPU (Slingshot)
# export MPICH_ENV_DISPLAY=1              # print MPICH's settings at start-up
