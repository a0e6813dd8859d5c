# shellcheck shell=bash
# CUDA-aware Open MPI over UCX. Sourced by jobs/common.sh when HPCINV_MPI_ENV=openmpi.
#
# Modules (names differ per site):
#   module load gcc cuda openmpi      # an Open MPI built --with-cuda and UCX built with CUDA
#   module load ucx                   # where UCX is a separate module
# Check: `ompi_info --parsable --all | grep mpi_built_with_cuda_support:value` says true, and
# `ucx_info -d | grep cuda` lists the cuda_copy / cuda_ipc / gdr_copy transports.
# mpi4py must be built against it: MPICC=$(which mpicc) pip install --no-binary mpi4py mpi4py
#
# CUDA-aware or staged: hpcinv decides (OMPI_MCA_opal_cuda_support / OMPI_MCA_accelerator
# where set, else Open MPI's MPIX_Query_cuda_support(), asked after the rank's GPU was selected
# and CUDA initialised, as Open MPI 5 needs), so an Open MPI built without CUDA stages through
# host memory instead of crashing. Force it with HPCINV_CUDA_AWARE=1 (device buffers to MPI) or
# HPCINV_CUDA_AWARE=0 (staged) in the environment you submit from; this file keeps your value.
export OMPI_MCA_pml=${OMPI_MCA_pml:-ucx}             # UCX point-to-point (device buffers)
export OMPI_MCA_osc=${OMPI_MCA_osc:-ucx}
# export OMPI_MCA_btl=^smcuda,openib    # where a CUDA-unaware BTL gets picked for device buffers
if [[ "${HPCINV_BACKEND:-auto}" != "host" ]]; then
    # Transports: shared memory, the network (rc/ud/dc on InfiniBand), and the CUDA ones
    # (cuda_copy: staging; cuda_ipc: GPU peer-to-peer on a node; gdr_copy: GPUDirect RDMA;
    # UCX warns about, and skips, those the node lacks). Slingshot/EFA: see the site's docs.
    export UCX_TLS=${UCX_TLS:-rc,sm,cuda_copy,cuda_ipc,gdr_copy}
    export UCX_MEMTYPE_CACHE=${UCX_MEMTYPE_CACHE:-n} # safe with CuPy's memory pool
fi
# export UCX_NET_DEVICES=mlx5_0:1        # pin the HCA (closest to the GPU) where needed
# export UCX_RNDV_THRESH=8192            # zero-copy rendezvous from this message size on
# export UCX_LOG_LEVEL=info              # show the chosen transports
# With Open MPI's own launcher instead of srun (HPCINV_LAUNCHER="mpirun -n 8 --map-by
# ppr:4:node"), mpirun forwards these variables with -x, e.g. "mpirun -x UCX_TLS ...".
