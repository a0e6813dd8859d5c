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


def cupy_available() -> bool:
    """True when CuPy imports, sees a GPU, and compiles (NVRTC) and runs a kernel on it."""
    try:
        from .cuda_compile import check_cupy_usable
        check_cupy_usable()
        return True
    except BackendError:
        return False


def make_backend(name: str = "auto", *, comm=None, local_rank: int | None = None,
                 local_size: int | None = None, threads: int | None = None) -> Backend:
    """Backend by name: ``auto`` (GPU if CuPy finds one, else host), ``host`` or ``cupy``.

    The GPU backend is used only once CuPy has compiled (NVRTC) and run a test kernel on the
    rank's device (:func:`~hpcinv.backend.cuda_compile.check_cupy_usable`). ``cupy`` raises a
    one-line :class:`~hpcinv.errors.BackendError` naming the fix where it cannot; ``auto`` then
    returns the host backend and records why in ``backend.fallback_reason`` (``""`` when
    nothing fell back) and ``backend.fallback_warning`` (True when a GPU is there but
    unusable, e.g. NVRTC missing: callers should warn; False for the ordinary "no CuPy / no
    GPU"). The library prints nothing: ``hpcinv`` commands print the warning once, on rank 0.
    With ``comm`` the choice is collective (:func:`agree_on_gpu`): if any rank cannot use its
    GPU, ``cupy`` raises the same error on every rank and ``auto`` falls back on every rank,
    the reason naming the ranks that could not.

    ``comm``: the run's communicator; the node-local rank and rank count (GPU choice, threads
    per rank) are taken from it once, here (``MPI_Comm_split_type(COMM_TYPE_SHARED)``,
    collective), and the node's ranks on each GPU are counted by PCI bus id
    (``backend.ranks_per_device()``, for the memory check). Without it,
    ``local_rank``/``local_size`` (default 0 and 1) are used.
    ``HPCINV_STREAM_CHECK=1`` gives the host backend with checked asynchronous streams
    (:mod:`hpcinv.backend.checker`). Whether MPI takes this backend's arrays is not decided
    here: host memory is handed over directly (``backend.cuda_aware`` True); for arrays in
    device memory ``backend.cuda_aware`` is ``None`` until the run's one CUDA-aware-MPI
    decision (:func:`hpcinv.parallel.decide_cuda_aware`, by the caller or by the first halo
    exchange), which the parallel layer makes from MPI's abilities.
    """
    if name not in BACKENDS:
        import difflib
        close = difflib.get_close_matches(name, BACKENDS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise BackendError(f"unknown backend {name!r}{hint}; choose one of {', '.join(BACKENDS)}")
    node = None
    if comm is not None:
        from mpi4py import MPI
        node = comm.Split_type(MPI.COMM_TYPE_SHARED)
        local_rank, local_size = node.Get_rank(), node.Get_size()
    local_rank = 0 if local_rank is None else local_rank
    local_size = 1 if local_size is None else local_size
    bk, reason, warn = None, "", False
    if name in ("cupy", "auto"):
        bk, error = _try_gpu(local_rank)
        error = agree_on_gpu(error, comm)
        if error is not None:
            bk = None
            if name == "cupy":
                raise error
            reason = str(error).removeprefix("backend 'cupy': ")
            warn = isinstance(error, GpuUnusableError)
    if bk is None:
        host = CheckedHostBackend if stream_check_enabled() else HostBackend
        bk = host(threads=threads, local_size=local_size)
    bk.local_rank, bk.local_size = local_rank, local_size
    if node is not None:    # collective, every rank: the node's ranks on my GPU, by PCI bus id
        from .device_sharing import ranks_sharing
        bus = bk.pci_bus_id() if hasattr(bk, "pci_bus_id") else None
        bk.device_sharing = ranks_sharing(node, bus)
        node.Free()
    bk.fallback_reason, bk.fallback_warning = reason, warn
    if bk.device_memory:            # decided by the parallel layer (decide_cuda_aware)
        bk.cuda_aware, bk.cuda_aware_reason = None, "not decided yet"
    return bk


def _try_gpu(local_rank: int):
    """``(CupyBackend, None)``, or ``(None, BackendError)`` saying why this rank cannot use
    its GPU. Any other exception from CuPy at construction (an ``AttributeError`` of an API
    CuPy lacks, a CUDA runtime error) becomes a one-line
    :class:`~hpcinv.errors.GpuUnusableError` naming it, so ``auto`` falls back."""
    from . import cupy_backend
    try:
        return cupy_backend.CupyBackend(local_rank=local_rank), None
    except BackendError as exc:
        return None, _detached(exc)
    except Exception as exc:            # noqa: BLE001 - CuPy's errors, whatever their type
        from .cuda_compile import _why
        return None, GpuUnusableError(f"backend 'cupy': CuPy failed while setting up the GPU "
                                      f"backend ({_why(exc)})")


def _detached(exc: BaseException) -> BaseException:
    """``exc`` with no traceback, nor its causes': a kept exception's traceback holds the
    frames of the whole call stack, and with them every local of the callers (a synthetic-data
    solver's fields, say) until the cyclic garbage collector happens to run."""
    seen, e = set(), exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        e.__traceback__ = None
        e = e.__cause__ or e.__context__
    return exc


def agree_on_gpu(error, comm):
    """The run's one GPU decision: ``None`` (every rank of ``comm`` has its GPU backend) or
    the error every rank acts on (collective: one allgather of ``(ok, reason)``).

    Where some ranks failed, every rank gets the same one-line :class:`BackendError` (a
    :class:`GpuUnusableError` if any rank's was one) naming the ranks that failed and the
    first one's reason, so ``cupy`` stops on every rank with one exit status (no rank left
    waiting in a collective) and ``auto`` falls back on every rank (never a mix of host and
    GPU ranks). Without ``comm`` (or on one rank) the rank's own error is returned.
    """
    if comm is None or comm.Get_size() == 1:
        return error
    why = "" if error is None else str(error).removeprefix("backend 'cupy': ")
    outcome = comm.allgather((error is None, why, isinstance(error, GpuUnusableError)))
    failed = [r for r, (ok, _, _) in enumerate(outcome) if not ok]
    if not failed:
        return None
    if len(failed) == len(outcome) and len({o[1:] for o in outcome}) == 1:
        return error                    # every rank failed alike: its own words
    first = outcome[failed[0]][1]
    # a GPU is left unused (warn) where a rank had one that CuPy could not use, or where
    # some ranks could use theirs
    unusable = any(o[2] for o in outcome) or len(failed) < len(outcome)
    kind = GpuUnusableError if unusable else BackendError
    ranks = _ranks(failed)
    return kind(f"backend 'cupy': {len(failed)} of {len(outcome)} ranks cannot use their GPU "
                f"(rank{'s' if len(failed) > 1 else ''} {ranks}; rank {failed[0]}: {first})")


def _ranks(ranks, limit: int = 8) -> str:
    """``0, 3, 5`` (the first ``limit``, then ``...``)."""
    text = ", ".join(map(str, ranks[:limit]))
    return text + (", ..." if len(ranks) > limit else "")
