"""Whether the MPI library can take GPU device buffers (CUDA-aware MPI), and why.

One decision per run: :func:`cuda_aware_mpi` is called once (by the assembly, or by the first
halo exchange of a GPU backend when nothing was decided), and the answer is passed to every
exchange.
"""
from __future__ import annotations

import os

from mpi4py import MPI


def cuda_aware_mpi() -> tuple[bool, str]:
    """Whether MPI can take device buffers, and how that was decided.

    ``HPCINV_CUDA_AWARE=0|1`` overrides. Otherwise MPICH-derived libraries (Cray MPICH, MPICH,
    MVAPICH) answer ``MPIX_Query_cuda_support`` through mpi4py where it exposes it, and Open MPI
    builds say so in ``MPI.Get_library_version()``. When nothing can tell, the answer is no
    (staging through host memory is always correct, only slower).
    """
    env = os.environ.get("HPCINV_CUDA_AWARE")
    if env is not None and env.strip() != "":
        if env.strip() not in ("0", "1"):
            from ..errors import ConfigError
            raise ConfigError(f"HPCINV_CUDA_AWARE must be 0 or 1, got {env!r}")
        return env.strip() == "1", "HPCINV_CUDA_AWARE"
    answer = _mpix_query_cuda_support()
    if answer is not None:
        return answer, "MPIX_Query_cuda_support"
    if os.environ.get("MPICH_GPU_SUPPORT_ENABLED") == "1":
        return True, "MPICH_GPU_SUPPORT_ENABLED=1 (Cray MPICH)"
    if os.environ.get("MV2_USE_CUDA") == "1":
        return True, "MV2_USE_CUDA=1 (MVAPICH2)"
    lib = MPI.Get_library_version()
    if "Open MPI" in lib and "cuda" in lib.lower():
        return True, "Open MPI library version string mentions CUDA"
    return False, "no evidence of CUDA support (staging through host)"


def _mpix_query_cuda_support():
    """``MPIX_Query_cuda_support()`` of the MPI library mpi4py is linked to, or ``None``.

    Open MPI and MPICH-derived libraries export it; mpi4py does not wrap it, so it is looked up
    through the mpi4py extension module's dynamic dependencies.
    """
    import ctypes
    try:
        fn = ctypes.CDLL(MPI.__file__).MPIX_Query_cuda_support
    except (OSError, AttributeError):
        return None
    fn.restype, fn.argtypes = ctypes.c_int, []
    return bool(fn())
