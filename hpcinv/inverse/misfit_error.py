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
import numpy as np

from ..parallel.reduce import reproducible_sum
from ..physics.residuals import weighted_reduced_residual_kernel


class WeightedResidual:
    """``psi . (Qf - A Pf)`` over the grid for a solver's current pressure ``Pf`` (its source
    ``Qf`` and permeability ``K``): one launch of the weighted reduced residual kernel into the
    solver's residual scratch ``R`` (free between solves: the next check step overwrites it) and
    a reproducible sum (its terms rounded in a float64 field lent by the backend's scratch pool,
    :mod:`hpcinv.backend.scratch`). Reads the solver's iteration fields only; every rank gets
    the same bits."""

    def __init__(self, solver):
        bk, nd, dt = solver.backend, solver.grid.ndim, solver.dtype
        self.solver, self.backend = solver, bk
        self._kernel = bk.kernel(weighted_reduced_residual_kernel(nd), nd, dt)
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
        with self.backend.scratch(s.R.shape, np.float64, 1) as (work,):
            return reproducible_sum(self.backend, s.decomp.comm, s.R, self._n, s.decomp.owned(),
                                    work)


class MisfitError:
    """The error estimate of a misfit solved in two stages (see the module doc), a component of
    :class:`~.gradient.AdjointGradient`: it records each forward solve's stages and estimates
    the error of the latest from the stages and, when one is held, the last gradient's adjoint.

    Args:
        solver: the objective's :class:`~hpcinv.solvers.DarcySolver` (its current pressure,
            K and source are read; its residual field is scratch between solves).

    Each ``adjoint`` argument is ``(psi_P, w_psi)``: the last gradient's adjoint pressure
    (padded local backend array) and its source's observation weights (``(nobs,)``,
    replicated), or ``None`` (not held: the estimate falls back to the residuals' max-norms);
    each ``w`` the observation weights ``dJ/dP_k`` of the stage's misfit.
    """

    def __init__(self, solver):
        self.solver = solver
        self._dwr = None          # the WeightedResidual, made on first use
        self._stage = None        # (J, residual, weighted residual) of the latest stage
        self._previous = None
        #: The latest dual-weighted estimate with its sign: ``J(P*) - J(P_h)`` to first order.
        self.dwr_signed = None

    def forget(self):
        """No stage is known (a new objective, or the forward solve was replaced)."""
        self._stage = None

    def first_stage(self, J, residual):
        """A forward solve's first stage: misfit ``J`` at its final ``residual``."""
        self._stage = (J, residual, None)

    def before_refining(self, adjoint, w):
        """The solver still holds the latest stage's pressure (``w``: its misfit's weights),
        which is about to be continued: its weighted residual, if not yet known. Collective."""
        previous = self._stage
        if previous is not None and previous[2] is None and adjoint is not None:
            previous = self._stage_error(None, *previous[:2], adjoint, w)[1]
        self._previous = previous

    def refined(self, J, residual, adjoint, w) -> float:
        """The estimated error of the stage just solved (misfit ``J``, weights ``w``, at
        ``residual``), after the one :meth:`before_refining` saw. Collective."""
        err, self._stage = self._stage_error(self._previous, J, residual, adjoint, w)
        self._previous = None
        return err

    def _weighted_residual(self, adjoint, w) -> tuple[float, float]:
        """``(psi . (Qf - A P_h), alpha)`` for the solver's current (forward) pressure ``P_h``,
        ``psi`` the adjoint and ``alpha`` its scale to the weights ``w``: ``alpha`` times the
        first is the first-order error (module doc). Collective."""
        if self._dwr is None:
            self._dwr = WeightedResidual(self.solver)
        psi, w_psi = adjoint
        den = float(w_psi @ w_psi)
        alpha = float(w @ w_psi) / den if den > 0 else 0.0
        return self._dwr(psi), alpha

    @staticmethod
    def error(J1, r1, J2, r2) -> float:
        """``|J1 - J2| r2 / (r1 - r2)``: the error of ``J2`` if it falls like ``r`` (module
        doc)."""
        if not (r1 > r2 > 0) or r1 < 1.05 * r2:      # no measurable progress: be pessimistic
            return abs(J1 - J2)
        return abs(J1 - J2) * r2 / (r1 - r2)

    def _stage_error(self, previous, J, residual, adjoint, w):
        """The error estimate of the stage ``(J, residual)`` after ``previous`` (``(J, residual,
        weighted residual)`` or ``None``); returns it and this stage's record."""
        J1, r1, d1 = previous if previous is not None else (None, None, None)
        if adjoint is None:
            err = self.error(J1, r1, J, residual) if J1 is not None else math.inf
            return err, (J, residual, None)
        d, alpha = self._weighted_residual(adjoint, w)
        self.dwr_signed = alpha * d
        err = abs(self.dwr_signed)
        if d1 is not None:
            err = max(err, self.error(J1, abs(d1), J, abs(d)))
        return err, (J, residual, d)
