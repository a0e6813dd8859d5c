"""The adjoint-state gradient dJ/dlogK: one forward and one adjoint APT solve.

With ``R(u, m) = 0`` the discrete Darcy residual (``hpcinv.physics.residuals``), the adjoint
``psi = (psi_q, psi_P)`` solves ``(dR/du)^T psi = dJ/du``. Written out, the q-rows give
``psi_q = -D^T psi_P`` (``D`` the divergence) and the Pf-rows ``-div(Kf grad psi_P) = dJ/dPf``
with homogeneous fixed-pressure sides: the forward operator again (it is symmetric), so the
adjoint solve is the forward APT loop with the source replaced by ``dJ/dPf`` and its own PT
parameters. Then ``dJ/dK = -psi_q^T dRq/dK``; both products are hand-derived transpose kernels
(``D^T``: the pressure-residual adjoint; ``(dRq/dK)^T``: the flux-residual adjoint), and
``dJ/dlogK = K dJ/dK``. See ``docs/theory.md``.

Memory: the forward and adjoint solves share one solver's buffers; the gradient keeps one extra
cell field (the forward pressure) and the result, so a gradient needs about 1.3x the memory of a
forward solve, independent of the iteration count.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..physics.residuals import flux_residual_adjoint_kernel, pressure_residual_adjoint_kernel
from ..solvers import make_darcy_solver
from ..errors import PermeabilityRangeError
from ..solvers.apt import PTParams, PTResult
from ..solvers.fields import log_range, owned_range
from .misfit_error import MisfitError
from .state import ForwardSolution, LifecycleError
from .warm_start import attached

__all__ = ["AdjointGradient", "ForwardSolution", "LifecycleError", "check_logK_range"]


def check_logK_range(logK, dtype, decomp):
    """Raise :class:`~hpcinv.errors.PermeabilityRangeError` (``log=True``, on every rank) when
    ``K = exp(log K)`` of an owned cell is not a normal number of ``dtype`` (before computing
    it: no overflow warning). Collective."""
    name = np.dtype(dtype).name
    lo, hi = owned_range(logK, decomp)
    low, high = log_range(dtype)
    if lo < low or hi > high:
        over = hi > high
        raise PermeabilityRangeError(
            f"the model log K = {hi if over else lo:.4g} makes K = exp(log K) "
            f"{'overflow' if over else 'underflow'} {name} (log K must lie in "
            f"[{low:.4g}, {high:.4g}])", lo, hi, name, log=True, overflow=over)


class AdjointGradient:
    """Misfit and gradient w.r.t. log K for a problem and its observations.

    It is the objective the optimisers use (:class:`~hpcinv.inverse.optimise.Objective`:
    :meth:`value`, :meth:`value_and_gradient`, :attr:`backend`, :attr:`decomp`, :attr:`dtype`),
    and the adaptive evaluator's (:class:`~.objective.AdaptiveObjective`: misfits with error
    estimates by its :class:`~.misfit_error.MisfitError`, refinements, tolerances).

    Args:
        problem: the :class:`~hpcinv.model.problems.Problem`; its ``K`` is replaced per
            evaluation, so give it a copy (``problem.copy()``) of a problem you keep.
        observations: :class:`~hpcinv.inverse.Observations` with values.
        backend: compute backend (default: auto).
        params, adjoint_params: :class:`PTParams` of the forward and adjoint solves.
        tikhonov: optional :class:`~hpcinv.inverse.regularisation.Tikhonov` term added to J and
            its gradient.
        warm_start, adjoint_memory: shorthand for the strategies of
            :func:`~.warm_start.warm_starts` (``warm_start``: each forward and adjoint solve
            starts from the previous call's solution, ``2 (1 + ndim / 2)`` fields; with
            ``adjoint_memory`` > 0 the adjoint's from the mix of that many earlier solutions).
        forward_start, adjoint_start: the warm-start strategies
            (:mod:`~hpcinv.inverse.warm_start`, not yet attached; they replace the shorthand's).
        solver_kwargs: passed to :func:`~hpcinv.solvers.make_darcy_solver` (``method`` "apt"
            or "petsc", ``overlap``, ``dtype``).
    """

    def __init__(self, problem, observations, backend=None, params=None, adjoint_params=None,
                 tikhonov=None, warm_start: bool = False, adjoint_memory: int = 0,
                 forward_start=None, adjoint_start=None, **solver_kwargs):
        self.problem, self.obs, self.tikhonov = problem, observations, tikhonov
        if problem.gauge_free and not getattr(observations, "demean", True):
            from ..errors import ConfigError
            raise ConfigError("no side fixes the pressure, so Pf is defined up to a constant: "
                              "the misfit must be demeaned (Observations(..., demean=True))")
        self.solver = make_darcy_solver(problem, backend, params, **solver_kwargs)
        self.forward_params = self.solver.params
        self.adjoint_params = adjoint_params if adjoint_params is not None else PTParams()
        self.backend = bk = self.solver.backend
        nd, dt = problem.grid.ndim, self.solver.dtype
        self._D_T = bk.kernel(pressure_residual_adjoint_kernel(nd), nd, dt)
        self._dRq_dK_T = bk.kernel(flux_residual_adjoint_kernel(nd), nd, dt)
        self._bound = {}         # bound transposes per buffer set (see _transposes)
        shape = self.solver.K.shape
        self.Pf_forward = bk.zeros(shape, dt)
        self.forward_start, self.adjoint_start = attached(self.solver, forward_start,
                                                          adjoint_start, warm_start,
                                                          adjoint_memory)
        self._holds = None       # "forward" while the solver holds the latest forward solve
        self.misfit_error = MisfitError(self.solver)   # the stages of the latest forward solve
        self._w = None           # observation weights dJ/dP_k of the latest sampled misfit
        self._adjoint_of = None  # the forward solution of the latest gradient's adjoint
        own = problem.grid.decomp.owned()
        self.logK = np.zeros(problem.K.shape)
        self.logK[own] = np.log(problem.K[own])
        self._serial, self._latest = 0, None

    # --- the objective protocol ---------------------------------------------------------------
    @property
    def decomp(self):
        return self.problem.grid.decomp

    @property
    def dtype(self):
        return self.solver.dtype

    def value(self, logK=None, progress=None):
        """``(J, info)``: the misfit alone (one forward solve)."""
        return self.misfit(logK, progress)

    def value_and_gradient(self, logK=None, progress=None):
        """``(J, dJ/dlogK, info)`` (see :meth:`__call__`)."""
        return self(logK, progress)

    def set_logK(self, logK):
        """Set the model from a padded local array of log K (owned cells are read)."""
        from ..errors import ConfigError
        logK = np.asarray(self.backend.to_host(logK), dtype=float)   # host or backend array
        own = self.problem.grid.decomp.owned()
        bad = self.problem.grid.comm.allreduce(int(not np.all(np.isfinite(logK[own]))))
        if bad:
            raise ConfigError("logK must be finite everywhere (NaN or inf found)")
        check_logK_range(logK, self.dtype, self.decomp)
        self.logK = logK
        self._latest = None                # no forward solution of this model yet
        self._holds = None
        self.problem.K[own] = np.exp(logK[own])
        self.problem.validate()
        self.solver.set_permeability(self.problem.K)

    def use_warm_starts(self, forward_start, adjoint_start):
        """Solve with these warm-start strategies (:mod:`~hpcinv.inverse.warm_start`, not yet
        attached) from the next call on; their fields are allocated here."""
        self.forward_start, self.adjoint_start = attached(self.solver, forward_start,
                                                          adjoint_start)

    @property
    def predictor(self):
        """The forward warm starts' :class:`~.forward_prediction.CoarsePrediction` (``None``:
        the forward strategy is another)."""
        return getattr(self.forward_start, "predictor", None)

    def state(self) -> dict:
        """What a checkpoint must keep to continue bitwise: the warm-start strategies' named
        :class:`~hpcinv.inverse.state.StateField` records (the last forward and adjoint
        solutions, the adjoint source weights, the subspaces); empty when warm starts are off or
        nothing was solved yet."""
        return {**self.forward_start.state(), **self.adjoint_start.state()}

    def reset(self):
        """Forget every solution kept between calls (every warm-start strategy's fields and
        weights, the coarse prediction's cache, the latest forward solution), so that the next
        call behaves as the first call of a new objective: a probe such as
        ``value_and_gradient(logK0)`` before :meth:`Inversion.run` then leaves the run's
        results as they would be without it. The tolerances set by :meth:`set_tolerances` stay
        (the optimiser sets its own when it starts)."""
        self._latest = self._holds = self._adjoint_of = None
        self.misfit_error.forget()
        self._serial = 0
        self.forward_start.reset()
        self.adjoint_start.reset()

    def load_state(self, fields: dict):
        """Restore what :meth:`state` returned (arrays on the host or the backend)."""
        self.forward_start.load_state(fields)
        self.adjoint_start.load_state(fields)

    def take_prediction_work(self) -> float | None:
        """The forward warm start's extra cost since the last call, in fine PT iterations
        (``None``: it does no extra work)."""
        return self.forward_start.take_work()

    def gradient(self, progress=None):
        """``(dJ/dlogK, info)`` at the latest forward solution (an adjoint solve only)."""
        _, _, g, adj = self._adjoint_part(self._latest, progress)
        return g, {"forward_iterations": 0, "adjoint_iterations": adj.iterations,
                   "forward_converged": True, "adjoint_converged": adj.converged,
                   "adjoint_residual": adj.residual}

    def _adjoint_part(self, forward, progress):
        """``(J misfit, J_reg or None, dJ/dlogK, adjoint PTResult)`` at ``forward``: sample,
        spread the misfit's derivative, adjoint solve, transposes, plus the Tikhonov term."""
        s, bk = self.solver, self.backend
        J, _, w = self.obs.misfit_from_values(self.obs.sample(forward.Pf, bk))
        g, adj = self.adjoint_gradient(forward, self.obs.spread(w, bk, dtype=s.dtype), w,
                                       progress)
        return J, self._add_tikhonov(g), g, adj

    def _add_tikhonov(self, g):
        """Add the Tikhonov term's gradient to ``g`` (in place); returns the term's value
        (``None`` without a Tikhonov term)."""
        if self.tikhonov is None:
            return None
        bk = self.backend
        J_reg = self.tikhonov.value_and_gradient(self.logK, out=g, accumulate=True)[0]
        bk.sync()
        return J_reg

    def misfit(self, logK=None, progress=None):
        """``(J, info)``: the misfit alone (one forward solve), e.g. for line-search trials."""
        fwd = self.forward_solve(logK, progress).result
        J = self._sampled_misfit()
        self.misfit_error.first_stage(J, fwd.residual)
        return J, {"forward_iterations": fwd.iterations, "adjoint_iterations": 0,
                   "forward_converged": fwd.converged, "adjoint_converged": True}

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
            J += self.tikhonov.value(self.logK)         # the host model: no field uploaded
        return J

    @property
    def has_adjoint(self) -> bool:
        """Whether a dual-weighted residual error estimate is possible: the last gradient's
        adjoint solution and its source's weights are kept (by the adjoint warm start)."""
        return self.adjoint_start.kept() is not None

    @property
    def dwr_signed(self):
        """The latest dual-weighted error estimate with its sign (:class:`MisfitError`)."""
        return self.misfit_error.dwr_signed

    def misfit_estimate(self, logK=None, tol: float | None = None, refine: float = 10.0,
                        progress=None):
        """``(J, error, info)``: the misfit at ``logK`` from a forward solve to ``tol * refine``
        continued to ``tol``, and an estimate of its solve error from the two stages
        (:mod:`.misfit_error`: with the dual-weighted residual when an adjoint is held,
        :attr:`has_adjoint`). ``info`` as :meth:`misfit`'s plus ``forward_residual`` and
        ``forward_tol``."""
        tol = self.forward_params.tol if tol is None else tol
        self.set_tolerances(forward=min(tol * refine, 0.5))
        J1, info = self.misfit(logK, progress)
        J2, err, more = self.refine_misfit(tol, progress)
        info["forward_iterations"] += more["forward_iterations"]
        info["forward_converged"] = more["forward_converged"]
        info.update(forward_residual=more["forward_residual"], forward_tol=tol)
        return J2, err, info

    def refine_misfit(self, tol: float, progress=None):
        """``(J, error, info)``: continue the latest forward solve (which the solver must
        still hold: no adjoint solve since) to ``tol``; ``error`` as in :meth:`misfit_estimate`
        (two stages: this one and the previous). The forward solution handle stays the
        latest."""
        if self._holds != "forward" or self._latest is None:
            raise LifecycleError("refine_misfit: the solver no longer holds the latest forward "
                                 "solve (an adjoint solve came after it)")
        adjoint = self.adjoint_start.kept()
        self.misfit_error.before_refining(adjoint, self._w)
        s = self.solver
        self.set_tolerances(forward=tol)
        s.set_params(self.forward_params)
        s.cold = False                                    # continue from the current fields
        res = s.solve(progress).result
        self.forward_start.continued(s)
        self.backend.copy(self.Pf_forward, s.Pf)
        J = self._sampled_misfit()
        prev = self._latest.result
        total = PTResult(prev.iterations + res.iterations, res.residual, res.converged,
                         prev.history + res.history, prev.wall_time + res.wall_time)
        self._latest = ForwardSolution(self.Pf_forward, total, self._latest.serial)
        err = self.misfit_error.refined(J, res.residual, adjoint, self._w)
        return J, err, {"forward_iterations": res.iterations, "forward_converged": res.converged,
                        "forward_residual": res.residual}

    def forward_solve(self, logK=None, progress=None) -> ForwardSolution:
        """Forward solve at ``logK`` (default: the current model); the pressure is kept in
        :attr:`Pf_forward` (padded local backend array, ghosts valid). Returns the
        :class:`ForwardSolution` that :meth:`adjoint_gradient` differentiates."""
        if logK is not None:
            self.set_logK(logK)
        s = self.solver
        s.set_source(self.problem.Qf)
        s.set_params(self.forward_params)
        self.forward_start.start(s, self.logK)
        fwd = s.solve(progress).result
        self._holds = "forward"
        self.forward_start.solved(s, self.logK)
        self.backend.copy(self.Pf_forward, s.Pf)
        return self._new_forward(fwd)

    def pressure_at(self, logK):
        """The forward pressure :attr:`Pf_forward` (padded local backend array) when the latest
        forward solution is of the model ``logK`` (padded local array, owned cells compared),
        else ``None``: the solver's own ``Pf`` may hold an adjoint state or a rejected trial's
        pressure, so output files take the pressure from here. Collective (one MPI MIN)."""
        own = self.decomp.owned()
        here = self._latest is not None and np.array_equal(
            self.logK[own], np.asarray(self.backend.to_host(logK), dtype=float)[own])
        from mpi4py import MPI
        same = self.problem.grid.comm.allreduce(int(here), op=MPI.MIN)
        return self.Pf_forward if same else None

    def latest_forward_residual(self) -> float | None:
        """The scaled residual (``max|RPf| / max|Qf|``) at which the latest forward solve
        stopped (at most its tolerance when converged), ``None`` before the first."""
        return None if self._latest is None else float(self._latest.result.residual)

    def restore_forward(self, logK, Pf, result: PTResult | None = None) -> ForwardSolution:
        """Make an earlier forward solution current again (its model ``logK`` and pressure
        ``Pf``, e.g. kept by a tape) without solving; returns its new handle."""
        self.set_logK(logK)
        self._holds = None                 # the solver's fields are not this solution's
        self.backend.copy(self.Pf_forward, Pf)
        return self._new_forward(result if result is not None else PTResult(0, 0.0, True))

    def _new_forward(self, result) -> ForwardSolution:
        self._serial += 1
        self._latest = ForwardSolution(self.Pf_forward, result, self._serial)
        return self._latest

    def adjoint_gradient(self, forward: ForwardSolution, source, w=None, progress=None):
        """``(dJ/dlogK, PTResult)`` for an adjoint source ``dJ/dPf`` at the forward solution
        ``forward`` (which must be the objective's latest: its model and pressure are the ones
        the objective holds).

        Args:
            forward: the :class:`ForwardSolution` of :meth:`forward_solve` (or
                :meth:`restore_forward`).
            source: ``dJ/dPf``, padded local array (owned cells read). Without a fixed-pressure
                side it must sum to zero over the grid (solvability of the adjoint system).
            w: the replicated observation weights ``dJ/dP`` ``(nobs,)`` the source was spread
                from, used to rescale the adjoint warm start; ``None`` starts the adjoint cold.
        Returns ``dJ/dlogK`` as a new padded local backend array (owned cells, ghosts zero).
        """
        if forward is None or forward is not self._latest:
            raise LifecycleError(
                "adjoint_gradient: the forward solution given is not the objective's latest "
                "(the model changed or another forward solve came after it); call "
                "forward_solve (or restore_forward) first and pass its result")
        s = self.solver
        s.set_source(source)
        s.set_params(self.adjoint_params)
        self.adjoint_start.start(s, w)
        adj = s.solve(progress).result
        self._holds = "adjoint"
        self.adjoint_start.solved(s, w)
        for st in (self.forward_start, self.adjoint_start):   # both start warm from now on
            st.arm()
        self._adjoint_of = forward
        return self._assemble_gradient(), adj

    def refine_gradient(self, tol: float, progress=None):
        """``(dJ/dlogK, info)``: the latest gradient's adjoint solve continued to ``tol``
        (no forward or adjoint solve since :meth:`gradient`), e.g. when the optimiser finds the
        gradient too inaccurate (:mod:`.adaptive`). The solve continues from the kept adjoint
        solution (the warm start's copy: the gradient's transposes used the solver's buffers as
        scratch; without warm starts it starts again from zero). ``info`` as :meth:`gradient`'s,
        with this stage's iterations."""
        if self._holds != "adjoint" or self._latest is None or \
                self._adjoint_of is not self._latest:
            raise LifecycleError("refine_gradient: the solver no longer holds the latest "
                                 "gradient's adjoint solve (a solve came after it)")
        s = self.solver
        self.set_tolerances(adjoint=tol)
        s.set_params(self.adjoint_params)
        self.adjoint_start.resume(s)
        adj = s.solve(progress).result
        self.adjoint_start.continued(s)
        g = self._assemble_gradient()
        self._add_tikhonov(g)
        return g, {"forward_iterations": 0, "adjoint_iterations": adj.iterations,
                   "forward_converged": True, "adjoint_converged": adj.converged,
                   "adjoint_residual": adj.residual}

    def _assemble_gradient(self):
        """``dJ/dlogK`` from the adjoint solution the solver holds and the latest forward
        pressure: the two transpose kernels and ``K dJ/dK`` (a new padded local array; owned
        cells valid, ghosts zero). The solver's other buffers serve as scratch."""
        s, bk = self.solver, self.backend
        psi_P = s.Pf
        scratch = s.scratch()            # the solver's other buffers, free until its next solve
        (K_bar, P_bar), (minus_psi_q, q_bar) = scratch["cells"], scratch["faces"]
        for a in (*minus_psi_q, *q_bar, K_bar, P_bar):
            bk.fill(a, 0)
        box = ((1,) * len(s.last), tuple(n + 1 for n in s.last))
        D_T, dRq_dK_T = self._transposes(psi_P, minus_psi_q, q_bar, K_bar, P_bar)
        bk.launch(D_T, box)                                               # -psi_q = D^T psi_P
        bk.launch(dRq_dK_T, box)                                          # dJ/dK
        # K_bar was zeroed and is written on owned cells: ghosts stay 0
        g = bk.elementwise(lambda xp, K_bar, K: K_bar * K, K_bar, s.K)
        bk.sync()
        return g

    def _transposes(self, psi_P, minus_psi_q, q_bar, K_bar, P_bar):
        """The transpose kernels bound by name to these buffers (the solver's ping-pong
        buffers: one binding per parity, made on first use)."""
        s = self.solver
        key = tuple(id(a) for a in (psi_P, *minus_psi_q, *q_bar, K_bar, P_bar, s.K))
        bound = self._bound.get(key)
        if bound is None:
            geom = s.geometry
            bound = self._bound[key] = (
                self._D_T.bind(RPf_bar=psi_P, q_bar=minus_psi_q, **geom),
                self._dRq_dK_T.bind(Pf=self.Pf_forward, K=s.K, Pf_bar=P_bar, K_bar=K_bar,
                                    Rq_bar=minus_psi_q, q_bar=q_bar, **geom))
        return bound

    def __call__(self, logK=None, progress=None):
        """``(J, dJ/dlogK, info)``; ``dJ/dlogK`` is a padded local backend array (owned cells
        valid, ghosts zero)."""
        forward = self.forward_solve(logK, progress)
        fwd = forward.result
        J, J_reg, g, adj = self._adjoint_part(forward, progress)
        if J_reg is not None:
            J += J_reg
        info = {"forward_iterations": fwd.iterations, "adjoint_iterations": adj.iterations,
                "forward_converged": fwd.converged, "adjoint_converged": adj.converged,
                "forward_residual": fwd.residual, "adjoint_residual": adj.residual}
        return J, g, info
