"""Will the run fit? An estimate of the memory a forward solve, a gradient or an inversion needs
per node (host) and per GPU (device), checked against what is available before any field is
allocated, so that a grid too large is one line naming the sizes, not a ``MemoryError``
traceback from NumPy or CuPy minutes into the set-up.

The field counts are calibrated with ``tracemalloc`` on the host backend (2D and 3D, float64
and float32; the counts of the largest rank's padded block): a forward solve holds about
``6 + 2 ndim`` fields of the solver dtype and 5 of float64 on the host (the problem's K and
Qf, set-up temporaries); a gradient or an inversion adds the warm-start copies
(``2 (ndim + 1)``), the adjoint subspace (``adjoint_memory (ndim + 1)``), the forward subspace
(``forward_memory (ndim + 1) + 1`` and 3 float64 fields), the L-BFGS pairs
(``2 lbfgs_memory``), two scratch fields, with adaptive tolerances one float64 field (the misfit
error estimate's reproducible sum, ``inverse/misfit_error.py``) and 7 more host fields (the
objective's copy of the problem, log K, the optimiser's arrays). The estimate is a floor: runs refused by it cannot fit.
"""
from __future__ import annotations

import math
import os

import numpy as np
from mpi4py import MPI

from ..errors import ConfigError
from .resolve import prediction_factor

HOST_FIELDS_FORWARD = 5         # float64 host arrays per cell of a forward run
HOST_FIELDS_INVERSION = 12      # ... of a gradient or an inversion


def _fmt(nbytes: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"):
        if nbytes < 1024 or unit == "EiB":
            return f"{nbytes:.3g} {unit}" if unit != "B" else f"{int(nbytes)} B"
        nbytes /= 1024
    return ""


def block_cells(shape, size: int, dims=None) -> int:
    """Padded cells of the largest rank's block of the global grid ``shape`` on ``size`` ranks
    (Python integers: no overflow however large the sizes)."""
    try:
        dims = MPI.Compute_dims(size, [int(d) for d in dims] if dims else [0] * len(shape))
    except (MPI.Exception, ValueError, TypeError):   # bad dims: the decomposition says why
        dims = MPI.Compute_dims(size, [0] * len(shape))
    return math.prod(-(-int(n) // int(p)) + 2 for n, p in zip(shape, dims))


def field_counts(cfg, ndim: int, inversion: bool, adjoint_memory: int = 0,
                 forward_memory: int = 0) -> tuple[int, int]:
    """``(solver-dtype fields, float64 host fields)`` per cell of a run of ``cfg``."""
    fields = 6 + 2 * ndim
    if not inversion:
        return fields, HOST_FIELDS_FORWARD
    inv = cfg.inversion
    fields += 2 + (2 * (ndim + 1) if inv.warm_start else 0) + adjoint_memory * (ndim + 1)
    f64 = 2 if cfg.solver.dtype == "float32" else 1      # solver-dtype fields per float64 one
    if inv.adaptive_tolerance and inv.warm_start:     # the misfit error estimate's float64 sum
        fields += f64
    if forward_memory > 0:                 # its solutions, a residual, the Galerkin sums' arrays
        fields += forward_memory * (ndim + 1) + 1 + 3 * f64
    if inv.method == "lbfgs":
        fields += 2 * inv.lbfgs_memory
    f = prediction_factor(cfg, forward_memory)
    if f:             # the coarse solver of the warm-start correction, the warm model (host)
        fields += -(-(6 + 2 * ndim) // f ** ndim)
        return fields, HOST_FIELDS_INVERSION + 1
    return fields, HOST_FIELDS_INVERSION


def host_available() -> int | None:
    """Bytes of host memory available to this process's node: ``MemAvailable`` of
    ``/proc/meminfo``, capped by a cgroup v2 memory limit (a batch job's); ``None``: unknown."""
    found = []
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    try:
        with open("/proc/self/cgroup") as fh:
            path = next((ln.strip()[3:] for ln in fh if ln.startswith("0::")), None)
        if path is not None:
            base = os.path.join("/sys/fs/cgroup", path.lstrip("/"))
            with open(os.path.join(base, "memory.max")) as fh:
                limit = fh.read().strip()
            if limit != "max":
                with open(os.path.join(base, "memory.current")) as fh:
                    found.append(max(int(limit) - int(fh.read()), 0))
    except (OSError, ValueError):
        pass
    return min(found) if found else None


def check_memory(cfg, shape, comm, backend, inversion: bool, adjoint_memory: int = 0,
                 forward_memory: int = 0):
    """Raise a one-line :class:`ConfigError` (on every rank of ``comm``) when the run of ``cfg``
    on the grid ``shape`` needs more memory than the node (host) or the GPU (device) has free.
    Collective; nothing is allocated."""
    size = comm.Get_size()
    cells = block_cells(shape, size, cfg.parallel.dims)
    nd, nh = field_counts(cfg, len(shape), inversion, adjoint_memory, forward_memory)
    dev_bytes = nd * cells * np.dtype(cfg.solver.dtype).itemsize
    host_bytes = nh * cells * 8 + (0 if backend.device_memory else dev_bytes)
    node = comm.Split_type(MPI.COMM_TYPE_SHARED)
    node_ranks = node.Get_size()
    node.Free()
    grid = "x".join(map(str, shape))
    smaller = f"a smaller grid ({', '.join(f'grid.n{a}' for a in 'xyz'[:len(shape)])})"
    msg = None
    avail = host_available()
    if avail is not None and host_bytes * node_ranks > avail:
        msg = (f"the {grid} grid needs about {_fmt(host_bytes * node_ranks)} of host memory on "
               f"this node ({node_ranks} rank(s) x {_fmt(host_bytes)}), {_fmt(avail)} available"
               f"; use {smaller} or spread the run over more nodes")
    free = backend.free_memory() if backend.device_memory else None
    if msg is None and free is not None:
        sharing = backend.ranks_per_device()
        if dev_bytes * sharing > free:
            msg = (f"the {grid} grid needs about {_fmt(dev_bytes * sharing)} of GPU memory "
                   f"({sharing} rank(s) on this GPU x {_fmt(dev_bytes)}: {nd} {cfg.solver.dtype} "
                   f"fields per cell), {_fmt(free)} free; use {smaller} or more GPUs")
    if size > 1:
        msg = next((m for m in comm.allgather(msg) if m is not None), None)
    if msg is not None:
        raise ConfigError(msg)
