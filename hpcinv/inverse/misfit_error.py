"""Error estimates of a loosely solved misfit (adaptive tolerances, issue 12).

An adaptive inversion (:mod:`.adaptive`) decides each step from misfits ``J(P_h)`` of forward
solves stopped at a loose tolerance, and needs an estimate of ``J(P*) - J(P_h)`` (``P*`` the
converged pressure). Two estimates:

**Dual-weighted residual (goal-oriented; used whenever an adjoint solution is at hand).**
Eliminating the fluxes, the forward solve inverts ``A P = Qf`` with ``A = -div(Kf grad .)``
(symmetric, homogeneous on fixed-pressure sides: ``P*`` and ``P_h`` share the boundary values).
The pressure's error ``P* - P_h = A^-1 rho`` follows from its reduced residual
``rho = Qf - A P_h = Qf + div(Kf grad P_h)``, computable from ``P_h`` alone (the solver's flux
iterate plays no part: ``J`` depends on the pressure only). The misfit is quadratic in ``P``::

    J(P*) - J(P_h) = g . A^-1 rho + 1/2 |S (P* - P_h)|^2_W  = psi . rho + (second order)

with ``g = dJ/dP`` at ``P_h`` and ``psi = A^-1 g``: the adjoint, which the gradient solves with
the same operator. Demeaned misfits (no fixed side, ``A`` singular): ``g`` and ``rho`` both sum
to zero, so ``psi`` and ``P* - P_h`` may carry any constant. The trial's adjoint is not solved:
``g = S^T w`` (``w`` the observation weights ``dJ/dP_k``, replicated) and the adjoint is linear
in ``w``, so the last gradient's adjoint (at the accepted model, where the trial's step
started; kept as the adjoint warm start) stands in, scaled by ``alpha = <w, w_psi> / <w_psi,
w_psi>`` (``w_psi`` its source's weights; no reduction). Its inaccuracy (another ``K``, the part
of ``w`` off ``w_psi``, its own loose solve) perturbs the estimate by a factor of order one.
(The adjoint subspace's least-squares mix of the last solutions, tried instead, was worse: its
coefficients amplify the older solutions' differences; measured in ``docs/theory.md``.)
The second-order term is positive; late in an inversion, where the misfit's residuals are
small and nearly orthogonal to the smooth solve error at the observations, it can dominate (the
audit found the first-order term then of the opposite sign): the two stages below account for
it. The sum over the cells is :func:`~hpcinv.parallel.reduce.reproducible_sum`: the estimate, like
every decision taken from it, is bitwise the same for any decomposition.
Cost per estimate: one kernel launch, two element-wise maps, three backend reductions, one MPI
MAX and one MPI SUM; memory: one float64 cell field.

**Two stages.** Every misfit is a solve to ``tau * refine`` continued to ``tau``: with
``(J1, d1)``, ``(J2, d2)`` the stages' misfits and weighted residuals ``d = psi . rho``, the
extrapolation ``|J1 - J2| d2 / (d1 - d2)`` assumes only that ``J``'s error falls like ``d``
between the stages, and so captures what the first-order term misses: the second-order term,
and a ``psi`` off by a factor (the audit, ``benchmarks/misfit_error_estimate.py``, found both:
on the L-BFGS case the first-order term alone was below the true error in 45 % of the
evaluations even with the safety factor 2). The estimate is the larger of the two. Before the
first adjoint (``J0``), or with warm starts off, ``d`` is replaced by the residuals' max-norms
``r`` (the rule before the dual-weighted residual existed); that rate is wrong for the misfit
(the residual is dominated by the cells next to the wells, the misfit's error by smooth modes
that decay at APT's slowest rate), so that estimate is often low (``docs/theory.md``).
"""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from ..parallel.reduce import reproducible_sum
from ..physics.residuals import weighted_reduced_residual_kernel
from ..solvers.apt import PTResult
from .state import ForwardSolution, LifecycleError


class WeightedResidual:
    """``psi . (Qf - A Pf)`` over the grid for a solver's current pressure ``Pf`` (its source
    ``Qf`` and permeability ``K``): one launch of the weighted reduced residual kernel into the
    solver's residual scratch ``R`` (free between solves: the next check step overwrites it) and
    a reproducible sum (its terms rounded in a float64 cell field of this object's). Reads the
    solver's iteration fields only; every rank gets the same bits."""

    def __init__(self, solver):
        bk, nd, dt = solver.backend, solver.grid.ndim, solver.dtype
        self.solver, self.backend = solver, bk
        self._kernel = bk.kernel(weighted_reduced_residual_kernel(nd), nd, dt)
        self._work = bk.zeros(solver.K.shape, np.float64)
        self._n = math.prod(solver.grid.shape)
        self._box = ((1,) * nd, tuple(n + 1 for n in solver.last))
        self._bound = {}

    def __call__(self, psi) -> float:
        s = self.solver
        key = (id(s.Pf), id(psi))
        bound = self._bound.get(key)
        if bound is None:                         # one binding per ping-pong parity
            bound = self._bound[key] = self._kernel.bind(Pf=s.Pf, K=s.K, Qf=s.Qf, psi=psi,
                                                         E=s.R, **s.geometry)
        self.backend.launch(bound, self._box)
        return reproducible_sum(self.backend, s.decomp.comm, s.R, self._n, s.decomp.owned(),
                                self._work)


class MisfitEstimates:
    """Misfits with error estimates for :class:`~.gradient.AdjointGradient` (mixed in): the
    protocol of :mod:`.adaptive` (``set_tolerances``, ``misfit_estimate``, ``refine_misfit``).
    Uses its ``solver``, ``obs``, ``warm`` (the last adjoint solution) and forward-solve state."""

    _dwr = None           # the WeightedResidual, made on first use
    _psi_w = None         # observation weights of the kept adjoint solution's source
    _w = None             # observation weights dJ/dP_k of the latest sampled misfit
    #: The latest dual-weighted estimate with its sign: ``J(P*) - J(P_h)`` to first order.
    dwr_signed = None

    def set_tolerances(self, forward: float | None = None, adjoint: float | None = None):
        """Solve the next forward / adjoint solves to these tolerances (``None``: unchanged);
        the other PT parameters stay."""
        if forward is not None:
            self.forward_params = replace(self.forward_params, tol=float(forward))
        if adjoint is not None:
            self.adjoint_params = replace(self.adjoint_params, tol=float(adjoint))

    def _sampled_misfit(self):
        s, bk = self.solver, self.backend
        J, _, self._w = self.obs.misfit_from_values(self.obs.sample(s.Pf, bk))
        if self.tikhonov is not None:
            J += self.tikhonov.value(bk.upload(self.logK, dtype=s.dtype))
        return J

    @property
    def has_adjoint(self) -> bool:
        """Whether a dual-weighted residual estimate is possible: the last gradient's adjoint
        solution (kept as the adjoint warm start) and its source's weights are held."""
        return self.warm is not None and self._warm_valid and self._psi_w is not None

    def _weighted_residual(self) -> tuple[float, float]:
        """``(psi . (Qf - A P_h), alpha)`` for the solver's current (forward) pressure ``P_h``,
        ``psi`` the last gradient's adjoint and ``alpha`` its scale to the latest misfit's
        weights: ``alpha`` times the first is the first-order error (module doc). Collective."""
        if self._dwr is None:
            self._dwr = WeightedResidual(self.solver)
        w_psi = self._psi_w
        den = float(w_psi @ w_psi)
        alpha = float(self._w @ w_psi) / den if den > 0 else 0.0
        return self._dwr(self.warm["adjoint"][0]), alpha

    def misfit_estimate(self, logK=None, tol: float | None = None, refine: float = 10.0,
                        progress=None):
        """``(J, error, info)``: the misfit at ``logK`` from a forward solve to ``tol * refine``
        continued to ``tol``, and an estimate of its solve error from the two stages (module
        doc: with the dual-weighted residual when an adjoint is held, :attr:`has_adjoint`).
        ``info`` as :meth:`misfit`'s plus ``forward_residual`` and ``forward_tol``."""
        tol = self.forward_params.tol if tol is None else tol
        self.set_tolerances(forward=min(tol * refine, 0.5))
        J1, info = self.misfit(logK, progress)
        J2, err, more = self.refine_misfit(tol, progress)
        info["forward_iterations"] += more["forward_iterations"]
        info["forward_converged"] = more["forward_converged"]
        info.update(forward_residual=more["forward_residual"], forward_tol=tol)
        return J2, err, info

    @staticmethod
    def _error(J1, r1, J2, r2) -> float:
        """``|J1 - J2| r2 / (r1 - r2)``: the error of ``J2`` if it falls like ``r`` (module
        doc)."""
        if not (r1 > r2 > 0) or r1 < 1.05 * r2:      # no measurable progress: be pessimistic
            return abs(J1 - J2)
        return abs(J1 - J2) * r2 / (r1 - r2)

    def _stage_error(self, previous, J, residual):
        """The error estimate of the stage ``(J, residual)`` after ``previous`` (``(J, residual,
        weighted residual)`` or ``None``); returns it and this stage's record."""
        J1, r1, d1 = previous if previous is not None else (None, None, None)
        if not self.has_adjoint:
            err = self._error(J1, r1, J, residual) if J1 is not None else math.inf
            return err, (J, residual, None)
        d, alpha = self._weighted_residual()
        self.dwr_signed = alpha * d
        err = abs(self.dwr_signed)
        if d1 is not None:
            err = max(err, self._error(J1, abs(d1), J, abs(d)))
        return err, (J, residual, d)

    def refine_misfit(self, tol: float, progress=None):
        """``(J, error, info)``: continue the latest forward solve (which the solver must
        still hold: no adjoint solve since) to ``tol``; ``error`` as in :meth:`misfit_estimate`
        (two stages: this one and the previous). The forward solution handle stays the
        latest."""
        if self._holds != "forward" or self._latest is None:
            raise LifecycleError("refine_misfit: the solver no longer holds the latest forward "
                                 "solve (an adjoint solve came after it)")
        previous = self._stage
        if previous is not None and previous[2] is None and self.has_adjoint:
            previous = self._stage_error(None, *previous[:2])[1]   # the first stage's psi . rho
        s = self.solver
        self.set_tolerances(forward=tol)
        s.set_params(self.forward_params)
        s.cold = False                                    # continue from the current fields
        res = s.solve(progress).result
        self._keep_warm("forward")
        self.backend.copy(self.Pf_forward, s.Pf)
        J = self._sampled_misfit()
        prev = self._latest.result
        total = PTResult(prev.iterations + res.iterations, res.residual, res.converged,
                         prev.history + res.history, prev.wall_time + res.wall_time)
        self._latest = ForwardSolution(self.Pf_forward, total, self._latest.serial)
        err, self._stage = self._stage_error(previous, J, res.residual)
        return J, err, {"forward_iterations": res.iterations, "forward_converged": res.converged,
                        "forward_residual": res.residual}
