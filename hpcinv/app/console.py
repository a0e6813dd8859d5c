"""Rank 0's console lines, shared by the commands (``hpcinv forward|gradient|invert|info``):
a flushed ``print`` on rank 0 only, the backend's name for run headers, and the one warning
where ``--backend auto`` left a GPU unused."""
from __future__ import annotations

import sys


def rank0() -> bool:
    from mpi4py import MPI
    return MPI.COMM_WORLD.Get_rank() == 0


def say(*args, **kw):
    """Print on rank 0 only (flushed: progress must show up under srun)."""
    if rank0():
        print(*args, **kw, flush=True)


def backend_text(bk) -> str:
    """The backend's name for run headers, with why ``auto`` fell back where a GPU is unusable."""
    if getattr(bk, "fallback_warning", False):
        return f"{bk.name} (GPU unusable: {bk.fallback_reason})"
    return bk.name


def warn_fallback(bk):
    """One line on stderr (rank 0) where ``--backend auto`` left a GPU unused because CuPy
    cannot compile or run kernels on it; the library itself stays quiet."""
    if getattr(bk, "fallback_warning", False):
        say(f"hpcinv: warning: GPU not used, running on the host backend: "
            f"{bk.fallback_reason}", file=sys.stderr)
