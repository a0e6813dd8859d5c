"""Forward warm starts corrected by a coarse grid (issue 12: cheaper accurate forward solves).

After a step ``logK_ref -> logK``, the warm start of the forward solve is the pressure of
``logK_ref``; its error is the change ``P(logK) - P(logK_ref)``, a smooth field that APT damps
at its slowest rate. :class:`CoarsePrediction` estimates that change on a coarser grid (the
same problem, ``factor`` times fewer cells per axis; ``logK`` restricted by averaging) and
adds it, prolongated multilinearly, to the warm start::

    P0 = P_ref + prolong(Pc(restrict logK) - Pc(restrict logK_ref))

Measured on the demo (255 x 127, iteration 30): the plain warm start needs 1 400 PT iterations
to 1e-8, the corrected one 700 (a 4x coarser grid captures 99 % of the change); the coarse
solves cost ``1/16`` of a fine iteration each (docs/performance.md).

Coarse solves always start from zero and run to a tight tolerance, so a coarse pressure is a
function of the model alone: a restart recomputes the reference's bitwise (only the model of
the warm-start fields is checkpointed), and every decomposition gets the same bits (the APT
solve, the restriction and the prolongation are decomposition-independent). Only the pressure
is corrected; the fluxes stay the warm start's (measured: recomputing them from the corrected
pressure starts worse).
"""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
from mpi4py import MPI

from ..parallel.transfer import GridTransfer
from ..solvers import make_darcy_solver

#: Coarse solves run to this relative residual (or the fine floor / 100, whichever is tighter;
#: no tighter than :data:`EPS_FACTOR` times the dtype's epsilon).
COARSE_TOL = 1e-10
EPS_FACTOR = 100


def coarse_tolerance(fine_tol: float, dtype) -> float:
    """The coarse solves' tolerance for a run whose tightest forward tolerance is
    ``fine_tol``."""
    return max(min(COARSE_TOL, fine_tol * 1e-2), EPS_FACTOR * float(np.finfo(dtype).eps))


class CoarsePrediction:
    """The coarse-grid correction of forward warm starts (see the module doc).

    Args:
        fine_decomp: the :class:`~hpcinv.parallel.Decomposition` of the inversion's grid.
        coarse_problem: the same problem on the coarse grid (its ``K`` is replaced per solve).
        backend: the compute backend; params: :class:`~hpcinv.solvers.apt.PTParams` of the
            coarse solves (their ``tol`` is replaced by :func:`coarse_tolerance`).
        fine_tol: the tightest forward tolerance of the run (the user's).
        solver_kwargs: as for :func:`~hpcinv.solvers.make_darcy_solver`.

    Memory: one coarse solver (``1 / factor**ndim`` of a fine one) and two host copies of a
    coarse pressure.
    """

    def __init__(self, fine_decomp, coarse_problem, backend, params, fine_tol: float,
                 **solver_kwargs):
        self.problem = coarse_problem
        tol = coarse_tolerance(fine_tol, np.dtype(solver_kwargs.get("dtype", np.float64)))
        self.solver = make_darcy_solver(coarse_problem, backend, replace(params, tol=tol),
                                        **solver_kwargs)
        self.backend = self.solver.backend
        self.transfer = GridTransfer(fine_decomp, coarse_problem.grid.decomp)
        self.cell_ratio = (math.prod(coarse_problem.grid.shape)
                           / math.prod(fine_decomp.global_shape))
        self.work = 0.0                 # fine-equivalent PT iterations, see take_work
        self.iterations = 0             # coarse PT iterations in all
        self._last = None               # (token, coarse pressure) of the latest prediction
        self._pending = None
        self._free = False              # see forget

    def pressure(self, logK) -> np.ndarray | None:
        """The coarse pressure (padded local host array) of the fine model ``logK`` (padded
        local host array), solved from zero; ``None`` when it is not finite on some rank."""
        own = self.problem.grid.decomp.owned()
        logKc = self.transfer.restrict(logK)
        self.problem.K[own] = np.exp(logKc[own])
        self.solver.set_permeability(self.problem.K)
        self.solver.set_state()
        res = self.solver.solve().result
        self.iterations += res.iterations
        self.work += res.iterations * self.cell_ratio
        P = self.backend.to_host(self.solver.Pf)
        bad = self.problem.grid.comm.allreduce(int(not np.all(np.isfinite(P[own]))),
                                               op=MPI.MAX)
        return None if bad else P

    def predict(self, logK, ref_token, ref_logK, P_ref) -> np.ndarray | None:
        """The corrected start for ``logK`` from the warm start ``P_ref`` (backend array) of
        the model ``ref_logK``, known by ``ref_token`` (the coarse pressure of the latest
        prediction is reused when its token matches). Returns a padded local host array, or
        ``None`` (use the plain warm start) when a coarse pressure is not finite. Collective."""
        new = self.pressure(logK)
        ref = self._last[1] if self.cached(ref_token) else None
        if ref is None and new is not None:
            work = self.work
            ref = self.pressure(ref_logK)
            if self._free:              # a restart recomputing what the run had cached
                self.work = work
        self._free = False
        self._pending = new
        if new is None or ref is None:
            return None
        return self.backend.to_host(P_ref) + self.transfer.prolong_linear(new - ref)

    def commit(self, token) -> None:
        """The latest prediction's model now has the warm-start fields known by ``token``."""
        self._last = (token, self._pending) if self._pending is not None else None
        self._pending = None

    def cached(self, token) -> bool:
        """Whether the coarse pressure of the warm start known by ``token`` is cached."""
        return self._last is not None and self._last[0] == token

    def forget(self, was_cached: bool = False) -> None:
        """Drop the cached coarse pressure (the warm-start fields were replaced otherwise, e.g.
        by a restart). ``was_cached``: the run that wrote the checkpoint had it cached; its
        recomputation is then not counted in :meth:`take_work`, so a restarted run's history
        shows the cost of the uninterrupted one."""
        self._last = self._pending = None
        self._free = was_cached

    def take_work(self) -> float:
        """The coarse solves' cost since the last call, in fine-grid PT iterations (coarse
        iterations times the cell ratio)."""
        w, self.work = self.work, 0.0
        return w
