"""Will the run fit? An estimate of the memory a forward solve, a gradient or an inversion needs
per rank: device memory (the backend's arrays) and host memory, checked against what is
available before any field is allocated, so that a grid too large is one line naming the sizes,
not a ``MemoryError`` traceback from NumPy or CuPy minutes into the set-up; the same estimate
prints in ``hpcinv info --grid`` and in each run's header, and each run writes it beside the
measured high-water mark into ``DIR/memory.json`` (:func:`write_summary`), so that the estimate
is checked on every run. What the machine has and what fits it: :mod:`hpcinv.app.memory_budget`.

The device part is itemised (:func:`estimate`) in fields of the solver dtype per padded cell of
the largest rank's block, each item named after what holds it, and checked against the
backend's own counter (:attr:`hpcinv.backend.Backend.memory`, high-water mark) within 10 % for
2D/3D forward, gradient, GD and L-BFGS runs with and without the warm-start subspaces
(``tests/test_memory_count.py``). Besides the per-cell fields, the halo buffers are O(surface)
(bounded explicitly, :attr:`Estimate.surface_bytes`) and the observations O(nobs) (host arrays:
not device memory). Host memory: 5 float64 fields per cell for a forward run (the problem's K
and Qf, set-up temporaries), 12 for a gradient or an inversion (the objective's copy of the
problem, log K, downloads), 13 with the coarse prediction (calibrated with ``tracemalloc``).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from mpi4py import MPI

from ..backend.host_reduce import CHUNK as REDUCE_CHUNK     # ... a leaf on the host
from ..inverse.subspace import kept_fields
from ..parallel.transfer import coarse_shape
from .resolve import adaptive

HOST_FIELDS_FORWARD = 5         # float64 host arrays per cell of a forward run
HOST_FIELDS_INVERSION = 12      # ... of a gradient or an inversion
KINDS = ("forward", "gradient", "inversion")

#: Fields the optimiser and the gradient hold besides the solver, the warm starts and the
#: regularisation, at their high-water mark (measured by the backend's counter): the gradient
#: command holds the gradient and the adjoint source; gradient descent the model, the trial
#: model, the direction, the new gradient (smoothed in place) and one more: the gradient
#: check's previous stage with adaptive tolerances, the step's ``x_t - x`` without; L-BFGS
#: ``2 (lbfgs_memory + 1)`` pair fields (the new pair before the oldest goes) and 9 (z, x,
#: trials, gradients, directions).
WORKING_SET = {"gradient": 2, "gd": 5, "gd_adaptive": 5, "lbfgs": 11}


def _fmt(nbytes: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"):
        if nbytes < 1024 or unit == "EiB":
            return f"{nbytes:.3g} {unit}" if unit != "B" else f"{int(nbytes)} B"
        nbytes /= 1024
    return ""


def _dims(shape, size: int, dims=None) -> list:
    try:
        return MPI.Compute_dims(size, [int(d) for d in dims] if dims else [0] * len(shape))
    except (MPI.Exception, ValueError, TypeError):   # bad dims: the decomposition says why
        return MPI.Compute_dims(size, [0] * len(shape))


def block_cells(shape, size: int, dims=None) -> int:
    """Padded cells of the largest rank's block of the global grid ``shape`` on ``size`` ranks
    (Python integers: no overflow however large the sizes)."""
    dims = _dims(shape, size, dims)
    return math.prod(-(-int(n) // int(p)) + 2 for n, p in zip(shape, dims))


def halo_items(shape, size: int, dims=None) -> int:
    """Upper bound of the items one halo exchange's send (or receive) buffer holds on the
    largest block: both faces of every split axis."""
    dims = _dims(shape, size, dims)
    block = [-(-int(n) // int(p)) for n, p in zip(shape, dims)]
    return sum(2 * math.prod(b for a, b in enumerate(block) if a != ax)
               for ax, p in enumerate(dims) if p > 1)


@dataclass(frozen=True)
class Estimate:
    """The memory one rank needs.

    Attributes:
        kind: ``"forward"``, ``"gradient"`` or ``"inversion"``.
        items: ``{what: solver-dtype fields per padded cell}`` of device memory.
        cells: padded cells of the largest rank's block.
        itemsize: bytes of one solver-dtype value.
        surface_bytes: the halo buffers (O(surface)), bytes.
        host_fields: float64 host fields per cell (not backend memory).
        device_memory: the backend's arrays live in device memory (else in host memory).
        note: what the memory budget chose and why (:mod:`hpcinv.app.memory_budget`).
    """
    kind: str
    items: dict
    cells: int
    itemsize: int
    surface_bytes: int
    host_fields: int
    device_memory: bool = False
    note: str = ""

    @property
    def fields(self) -> float:
        """Device fields per cell (solver dtype)."""
        return float(sum(self.items.values()))

    @property
    def device_bytes(self) -> int:
        """Bytes of backend arrays at the high-water mark."""
        return int(math.ceil(self.fields * self.cells * self.itemsize)) + self.surface_bytes

    @property
    def host_bytes(self) -> int:
        """Bytes of host memory (with the backend's arrays where they live on the host)."""
        return self.host_fields * self.cells * 8 + (0 if self.device_memory
                                                    else self.device_bytes)

    def text(self) -> str:
        """``memory per rank: 73 float64 fields x 1.2e6 cells = 700 MiB (device) ...``."""
        where = "device" if self.device_memory else "host"
        dt = {4: "float32", 8: "float64"}.get(self.itemsize, f"{self.itemsize}-byte")
        out = (f"memory estimate per rank: {self.fields:.4g} {dt} fields x {self.cells} cells"
               f" = {_fmt(self.device_bytes)} of backend arrays ({where})")
        if self.device_memory:
            out += f", {_fmt(self.host_bytes)} host"
        return out + (f"; {self.note}" if self.note else "")

    def as_dict(self) -> dict:
        return {"kind": self.kind, "fields": self.fields, "items": dict(self.items),
                "cells": self.cells, "itemsize": self.itemsize,
                "surface_bytes": self.surface_bytes, "device_bytes": self.device_bytes,
                "host_bytes": self.host_bytes, "device_memory": self.device_memory}


def estimate(cfg, shape, size: int = 1, kind: str = "inversion", adjoint_memory: int = 0,
             forward_memory: int = 0, device_memory: bool = False) -> Estimate:
    """The itemised memory of a ``kind`` run of ``cfg`` on the global grid ``shape`` over
    ``size`` ranks (the largest block), with the warm-start subspaces of ``adjoint_memory``
    and ``forward_memory`` solutions (as :mod:`hpcinv.app.assembly` chooses them)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    nd = len(shape)
    dt = np.dtype(cfg.solver.dtype)
    f64 = 8 / dt.itemsize                      # solver-dtype fields per float64 one
    kept = kept_fields(nd, f64)                # a kept warm-start solution
    cells = block_cells(shape, size, cfg.parallel.dims)
    items = {"solver (K, Qf, 2 P, 2 ndim q, R)": 5 + 2 * nd,   # max_abs/dot: a field on GPUs,
             "reduction temporary": 1 if device_memory else min(1, REDUCE_CHUNK / cells)}
    exchanges, host = 1, HOST_FIELDS_FORWARD
    if kind != "forward":
        inv, reg = cfg.inversion, cfg.regularisation
        host = HOST_FIELDS_INVERSION
        items["forward pressure (gradient)"] = 1
        if inv.warm_start:          # the kept forward and adjoint solutions (issue 20: each a
            # pressure and float32 fluxes); the adjoint subspace's newest is the adjoint one
            items["warm-start copies"] = (1 if adjoint_memory else 2) * kept
        # the backend's scratch pools (backend/scratch.py): the most fields lent at once, per
        # pool; the float64 pool is the solver-dtype one unless the solver runs in float32
        own, double = 0, 0
        if reg.smoothing_steps > 0:              # ping-pong buffers
            own = 2
            exchanges += 1
        if reg.tikhonov > 0:                     # the model with ghosts, the energies
            own = 2
            exchanges += 1
        full = kind == "inversion"                 # one gradient stores one adjoint solution
        if adjoint_memory:
            items["adjoint subspace"] = (adjoint_memory if full else 1) * kept
        if forward_memory and full:      # the solutions; r_0, a product, the sum's work (f64)
            items["forward subspace"] = forward_memory * kept
            double = 3
        if full and adaptive(cfg) and inv.warm_start:    # the misfit error's float64 sum
            double = max(double, 1)
        if (own or double) and full:    # one gradient lends them only after its adjoint
            # solve, in the place of the adjoint source and the reduction temporary
            items["scratch (shared)"] = max(own, double) if f64 == 1 else own + double * f64
        if not full:
            work = WORKING_SET["gradient"]
        elif inv.method == "lbfgs":
            work = WORKING_SET["lbfgs"] + 2 * inv.lbfgs_memory
        else:
            work = WORKING_SET["gd_adaptive" if adaptive(cfg) else "gd"]
        items[f"{'gradient' if not full else inv.method} working set"] = work
        f = inv.forward_prediction or 0          # resolved (app/resolve.py)
        if f:             # the coarse solver of the warm-start correction, the warm model (host)
            coarse = block_cells(coarse_shape(tuple(shape), f), size, cfg.parallel.dims)
            items["coarse prediction solver"] = (6 + 2 * nd) * coarse / block_cells(
                shape, size, cfg.parallel.dims)
            exchanges += 1
            host += 1
    buffers = 2 * (2 if device_memory else 1)       # send and receive (and their staging)
    surface = exchanges * buffers * halo_items(shape, size, cfg.parallel.dims) * dt.itemsize
    return Estimate(kind, items, cells, dt.itemsize, surface, host, device_memory)


def field_counts(cfg, ndim: int, inversion: bool, adjoint_memory: int = 0,
                 forward_memory: int = 0) -> tuple[int, int]:
    """``(solver-dtype fields, float64 host fields)`` per cell of a run of ``cfg`` (an
    inversion with ``inversion``, else a forward run), fields rounded up."""
    e = estimate(cfg, (64,) * ndim, 1, "inversion" if inversion else "forward",
                 adjoint_memory, forward_memory)
    return math.ceil(e.fields - 1e-9), e.host_fields


def largest_block(cfg, ndim: int, available: int, kind: str = "inversion",
                  adjoint_memory: int = 0, forward_memory: int = 0,
                  device_memory: bool = False) -> int:
    """The largest ``n`` such that a cubic (3D) or square (2D) block of ``n`` cells per axis on
    one rank needs at most ``available`` bytes (device memory where the backend's arrays live
    there, else host memory); 0 when not even 3 cells per axis fit."""
    def need(n):
        e = estimate(cfg, (n,) * ndim, 1, kind, adjoint_memory, forward_memory, device_memory)
        return e.device_bytes if device_memory else e.host_bytes
    lo, hi = 2, 4
    while need(hi) <= available:
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if need(mid) <= available else (lo, mid)
    return lo if lo >= 3 else 0


#: The summary file a run command writes into its output directory.
SUMMARY = "memory.json"


def peak_record(backend, est, comm=None) -> dict:
    """The measured high-water mark of ``backend``'s arrays (the largest over ``comm``'s
    ranks) beside the estimate ``est`` (:class:`~hpcinv.app.memory.Estimate`):
    ``memory_peak_bytes``, ``memory_peak_fields`` (its field-equivalents per cell of the
    largest block), ``memory_estimate_bytes`` and ``memory_estimate_fields``,
    ``memory_peak_by_kind``. Collective over ``comm``."""
    snap = backend.memory.snapshot()
    peak = snap["peak_bytes"]
    by_kind = {k: v["peak_bytes"] for k, v in snap["by_kind"].items()}
    if comm is not None and comm.Get_size() > 1:
        peak = comm.allreduce(peak, op=MPI.MAX)
        by_kind = {k: comm.allreduce(v, op=MPI.MAX) for k, v in by_kind.items()}
    per_field = est.cells * est.itemsize
    return {"memory_peak_bytes": int(peak), "memory_peak_fields": round(peak / per_field, 3),
            "memory_estimate_bytes": est.device_bytes,
            "memory_estimate_fields": round(est.fields, 3), "memory_peak_by_kind": by_kind}


def write_summary(out, backend, est, comm) -> dict:
    """Write ``out/memory.json`` on rank 0: :func:`peak_record` and the
    itemised estimate ``est`` (the run's :class:`~hpcinv.app.memory.Estimate`, as the build's
    memory check accepted it: ``Setup.memory``). Collective over ``comm``; returns the record."""
    rec = {**peak_record(backend, est, comm), "estimate": est.as_dict(),
           "ranks": comm.Get_size()}
    if comm.Get_rank() == 0:
        path = Path(out) / SUMMARY
        path.write_text(json.dumps(rec, indent=1) + "\n")
    return rec
