"""A bounded buffer of earlier solve solutions for warm starts (issue 12), kept compactly
(issue 20).

Both warm-start subspaces, the adjoint's (:class:`~.adjoint_warm.AdjointSubspace`: solutions
keyed by their source's observation weights) and the forward's
(:class:`~.forward_warm.ForwardSubspace`: solutions keyed by their model log K), keep the last
``m`` solutions ``(P, q)`` of a solve with a key each, drop the oldest when full (reusing its
buffers), mix them linearly into a start, and save and restore themselves for checkpoints.
:class:`SolutionSubspace` is that shared part; a subclass says how its key is stored.

A kept solution (the subspaces' and :class:`KeptSolution`, the latest one a warm-start strategy
of :mod:`.warm_start` keeps) holds its pressure in the solver dtype and its
fluxes in float32 (:data:`FLUX_DTYPE`): ``1 + ndim / 2`` float64 fields instead of ``ndim + 1``.
The pressure stays exact (the misfit error estimate reads the kept adjoint pressure, and a
start's pressure error is amplified by the operator); the fluxes only seed the next solve, whose
cost the rounding leaves unchanged (docs/performance.md, "Memory per rank": the same work units
on the demo, +0.7 % on the L-BFGS run). Rounding is deterministic, so starts stay bitwise the
same on any decomposition and across a restart. A start from the pressure alone (fluxes rebuilt
as ``-Kf grad P`` at the new K) was measured and rejected: 4.2x the work of the demo inversion
(an APT iterate's fluxes lag ``-Kf grad P``; a start without them has a residual about 100
times the tolerance its solve met), 1.6x with the float32 flux residual added back.
"""
from __future__ import annotations

import numpy as np

from .state import StateField

#: The dtype of a kept solution's fluxes (float32 whatever the solver dtype).
FLUX_DTYPE = np.dtype(np.float32)


def kept_fields(ndim: int, f64: float = 1) -> float:
    """Solver-dtype fields of one kept solution: the pressure and ``ndim`` flux fields of
    :data:`FLUX_DTYPE` (``f64``: solver-dtype fields per float64 one)."""
    return 1 + ndim * f64 * FLUX_DTYPE.itemsize / 8


def flux_copies(backend, shape, ndim: int) -> list:
    """``ndim`` zero face fields of :data:`FLUX_DTYPE` (a kept solution's fluxes)."""
    return [backend.zeros(shape, FLUX_DTYPE) for _ in range(ndim)]


class KeptSolution:
    """A copy ``(P, [q...])`` of a solver's latest solution of one kind (``"forward"`` or
    ``"adjoint"``: the checkpoint names ``{kind}_Pf``, ``{kind}_q{x}``); padded local fields,
    ``P`` of the solver dtype, ``q`` of :data:`FLUX_DTYPE` (float32)."""

    def __init__(self, solver, kind: str):
        bk, shape = solver.backend, solver.K.shape
        self.bk, self.kind = bk, kind
        self.P = bk.zeros(shape, solver.dtype)
        self.q = flux_copies(bk, shape, solver.grid.ndim)

    def keep(self, solver):
        """Copy the solver's current ``Pf``, ``q`` (the fluxes rounded to float32)."""
        self.bk.copy(self.P, solver.Pf)
        for qa, sa in zip(self.q, solver.q):
            self.bk.copy(qa, sa)

    def state(self) -> dict:
        out = {f"{self.kind}_Pf": StateField(self.P, "cell")}
        for a, qa in enumerate(self.q):
            out[f"{self.kind}_q{'xyz'[a]}"] = StateField(qa, "face", a)
        return out

    def load_state(self, fields: dict):
        self.bk.copy(self.P, fields[f"{self.kind}_Pf"])
        for a, qa in enumerate(self.q):
            self.bk.copy(qa, fields[f"{self.kind}_q{'xyz'[a]}"])


def _as(a, dtype):
    """``a`` in ``dtype`` (no copy when it is already)."""
    return a.astype(dtype, copy=False)


class SolutionSubspace:
    """The last ``m`` solutions ``(P, [q...])`` with their keys, oldest first (``q`` in
    :data:`FLUX_DTYPE`).

    Args:
        backend: the compute backend; ``shape``, ``dtype``: of the padded local fields;
        ndim: dimensions (face fields per solution); m: how many solutions to keep (>= 1).

    Subclasses set :attr:`prefix` (checkpoint names ``{prefix}{i}_Pf``, ``..._q{x}``,
    ``..._{key_name}``), :attr:`key_name`, :attr:`key_location` (a
    :class:`~.state.StateField` location) and :attr:`option` (for error messages), and may
    override :meth:`_keep_key` (default: a float64 host copy).
    """

    prefix = "basis"
    key_name = "key"
    key_location = "replicated"
    option = "memory"

    def __init__(self, backend, shape, dtype, ndim: int, m: int):
        if m < 1:
            raise ValueError(f"{self.option} must be >= 1, got {m}")
        self.bk, self.shape, self.dtype, self.ndim, self.m = backend, shape, dtype, ndim, m
        self.fields: list = []          # [(P, [q...])], oldest first
        self.keys: list = []            # the solutions' keys, same order

    def __len__(self):
        return len(self.keys)

    def _keep_key(self, key, old):
        """The stored copy of ``key`` (``old``: the dropped solution's key, or ``None``)."""
        return np.array(key, dtype=float)

    def push(self, key, P, q):
        """Keep the solution ``(P, q)`` with its ``key`` (copied, the fluxes rounded to
        :data:`FLUX_DTYPE`; the oldest of a full subspace is dropped and its buffers reused)."""
        bk = self.bk
        old = None
        if len(self.fields) == self.m:
            bufs = self.fields.pop(0)
            old = self.keys.pop(0)
        else:
            bufs = (bk.zeros(self.shape, self.dtype), flux_copies(bk, self.shape, self.ndim))
        bk.copy(bufs[0], P)
        for a, b in zip(bufs[1], q):
            bk.copy(a, b)
        self.fields.append(bufs)
        self.keys.append(self._keep_key(key, old))

    def replace_last(self, P, q):
        """Overwrite the newest solution's fields with ``(P, q)`` (the same solve continued
        to a tighter tolerance; its key stays)."""
        bufs = self.fields[-1]
        self.bk.copy(bufs[0], P)
        for a, b in zip(bufs[1], q):
            self.bk.copy(a, b)

    def mix(self, c, P, q, base=None, flux_dtype=None):
        """Write ``sum_i c_i psi_i`` into ``P``, ``q`` (``psi_i`` the kept solutions); with
        ``base = (P_b, q_b)``: ``P_b + sum_i c_i (psi_i - P_b)`` (an affine combination: it keeps
        the boundary values the solutions share). The sums are formed in the outputs' dtype
        (the solver's), the float32 fluxes converted exactly; ``flux_dtype``: the flux sums are
        rounded to that dtype instead, each partial sum as it is stored: the same values as
        outputs of that dtype would hold)."""
        bk = self.bk
        for k, out in enumerate((P, *q)):
            srcs = [f[0] if k == 0 else f[1][k - 1] for f in self.fields]
            dt = out.dtype if k == 0 or flux_dtype is None else np.dtype(flux_dtype)
            if base is None:
                bk.elementwise(lambda xp, a, c0=c[0], dt=dt: _as(_as(a, dt) * c0, dt),
                               srcs[0], out=out)
                terms = list(zip(c[1:], srcs[1:]))
            else:
                b = base[0] if k == 0 else base[1][k - 1]
                bk.copy(out, b)
                terms = list(zip(c, srcs))
            for ci, s in terms:
                if base is None:
                    bk.elementwise(lambda xp, o, s, ci=ci, dt=dt:
                                   _as(_as(o, dt) + ci * _as(s, dt), dt), out, s, out=out)
                else:
                    bk.elementwise(lambda xp, o, s, b, ci=ci, dt=dt:
                                   _as(_as(o, dt) + ci * (_as(s, dt) - _as(b, dt)), dt),
                                   out, s, b, out=out)

    def clear(self):
        self.fields, self.keys = [], []

    def state(self) -> dict:
        """Named :class:`StateField` records (oldest first, index in the name)."""
        out = {}
        for i, ((P, q), key) in enumerate(zip(self.fields, self.keys)):
            out[f"{self.prefix}{i}_Pf"] = StateField(P, "cell")
            for a, qa in enumerate(q):
                out[f"{self.prefix}{i}_q{'xyz'[a]}"] = StateField(qa, "face", a)
            out[f"{self.prefix}{i}_{self.key_name}"] = StateField(key, self.key_location)
        return out

    def load_state(self, fields: dict):
        """Restore what :meth:`state` returned (host or backend arrays; the float64 fluxes of
        checkpoints written before issue 20 are rounded as :meth:`push` rounds)."""
        self.clear()
        i = 0
        while f"{self.prefix}{i}_{self.key_name}" in fields:
            q = [fields[f"{self.prefix}{i}_q{'xyz'[a]}"] for a in range(self.ndim)]
            self.push(fields[f"{self.prefix}{i}_{self.key_name}"],
                      fields[f"{self.prefix}{i}_Pf"], q)
            i += 1
