"""Compute backends: array allocation, kernel compilation and device work on named streams.

``make_backend("auto" | "host" | "cupy")`` returns a :class:`Backend`. ``auto`` picks CuPy when
it imports, sees a GPU and compiles and runs a test kernel on it, else the host (C++/OpenMP)
backend (``backend.fallback_reason`` says why). Physics code allocates arrays and
compiles kernels only through the backend, so the same code runs on both. The device-work
model (streams, events, host syncs) is described in :mod:`hpcinv.backend.base`.
"""
from __future__ import annotations

from ..errors import BackendError, GpuUnusableError
from .base import Backend, Stream
from .binding import KernelArgumentError
from .checker import CheckedHostBackend, StreamRaceError, stream_check_enabled
from .host_backend import HostBackend
from .kernel import Kernel

BACKENDS = ("auto", "host", "cupy")

__all__ = ["BACKENDS", "Backend", "BackendError", "CheckedHostBackend", "HostBackend", "Kernel",
           "KernelArgumentError", "Stream", "StreamRaceError", "make_backend"]


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else the machine type."""
    import platform
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cupy_available() -> bool:
    """True when CuPy imports, sees a GPU, and compiles (NVRTC) and runs a kernel on it."""
    try:
        from .cuda import check_cupy_usable
        check_cupy_usable()
        return True
    except BackendError:
        return False


def make_backend(name: str = "auto", *, comm=None, local_rank: int | None = None,
                 local_size: int | None = None, threads: int | None = None,
                 cuda_aware: bool | None = None) -> Backend:
    """Backend by name: ``auto`` (GPU if CuPy finds one, else host), ``host`` or ``cupy``.

    The GPU backend is used only once CuPy has compiled (NVRTC) and run a test kernel on the
    rank's device (:func:`~hpcinv.backend.cuda.check_cupy_usable`). ``cupy`` raises a one-line
    :class:`~hpcinv.errors.BackendError` naming the fix where it cannot; ``auto`` then returns
    the host backend and records why in ``backend.fallback_reason`` (``""`` when nothing fell
    back) and ``backend.fallback_warning`` (True when a GPU is there but unusable, e.g. NVRTC
    missing: callers should warn; False for the ordinary "no CuPy / no GPU"). The library
    prints nothing: ``hpcinv`` commands print the warning once, on rank 0.

    ``comm``: the run's communicator; the node-local rank and rank count (GPU choice, threads
    per rank) are taken from it once, here (``MPI_Comm_split_type(COMM_TYPE_SHARED)``,
    collective). Without it, ``local_rank``/``local_size`` (default 0 and 1) are used.
    ``HPCINV_STREAM_CHECK=1`` gives the host backend with checked asynchronous streams
    (:mod:`hpcinv.backend.checker`). ``cuda_aware`` (``None``: decide) is the run's one
    CUDA-aware-MPI decision for backends whose arrays live in device memory, kept as
    ``backend.cuda_aware`` (and ``backend.cuda_aware_reason``) for every halo exchange.
    """
    if name not in BACKENDS:
        import difflib
        close = difflib.get_close_matches(name, BACKENDS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise BackendError(f"unknown backend {name!r}{hint}; choose one of {', '.join(BACKENDS)}")
    if comm is not None:
        from mpi4py import MPI
        node = comm.Split_type(MPI.COMM_TYPE_SHARED)
        local_rank, local_size = node.Get_rank(), node.Get_size()
        node.Free()
    local_rank = 0 if local_rank is None else local_rank
    local_size = 1 if local_size is None else local_size
    bk, reason, warn = None, "", False
    if name in ("cupy", "auto"):
        from .cupy_backend import CupyBackend
        try:
            bk = CupyBackend(local_rank=local_rank)
        except BackendError as exc:
            if name == "cupy":
                raise
            reason = str(exc).removeprefix("backend 'cupy': ")
            warn = isinstance(exc, GpuUnusableError)
    if bk is None:
        host = CheckedHostBackend if stream_check_enabled() else HostBackend
        bk = host(threads=threads, local_size=local_size)
    bk.local_rank, bk.local_size = local_rank, local_size
    bk.fallback_reason, bk.fallback_warning = reason, warn
    decide_cuda_aware(bk, cuda_aware)
    return bk


def decide_cuda_aware(bk: Backend, setting: bool | None = None):
    """Set ``bk.cuda_aware`` and ``bk.cuda_aware_reason`` once for the run (after the device
    was selected and CUDA initialised, which Open MPI 5's query needs)."""
    if not bk.device_memory:
        bk.cuda_aware, bk.cuda_aware_reason = True, "host memory: MPI reads the arrays directly"
        return
    from ..parallel.cuda_aware import cuda_aware_mpi
    if setting is None and bk.name == "host":    # the stream checker: staged unless told
        import os
        env = os.environ.get("HPCINV_CUDA_AWARE", "").strip()
        if not env:
            bk.cuda_aware, bk.cuda_aware_reason = False, CheckedHostBackend.cuda_aware_reason
            return
    bk.cuda_aware, bk.cuda_aware_reason = cuda_aware_mpi(setting, gpu=bk.name != "host")
