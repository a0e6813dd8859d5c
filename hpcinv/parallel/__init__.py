"""MPI parallelism: Cartesian decomposition, split-phase halo exchange, gathering.

Nothing here knows about Darcy flow; physics code never calls MPI directly.
"""
from .decomposition import Decomposition, split_extent
from .halo import HaloExchange, cuda_aware_mpi

__all__ = ["Decomposition", "split_extent", "HaloExchange", "cuda_aware_mpi"]
