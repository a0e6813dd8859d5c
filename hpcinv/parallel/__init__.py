"""MPI parallelism: Cartesian decomposition, split-phase halo exchange, gathering.

Nothing here knows about Darcy flow; physics code never calls MPI directly.
"""
from .decomposition import Decomposition, split_extent
from .cuda_aware import cuda_aware_mpi, decide_cuda_aware
from .halo import HaloExchange

__all__ = ["Decomposition", "split_extent", "HaloExchange", "cuda_aware_mpi",
           "decide_cuda_aware"]
