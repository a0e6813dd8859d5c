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

import numpy as np

from ..physics.residuals import flux_residual_adjoint_kernel, pressure_residual_adjoint_kernel
from ..solvers import make_darcy_solver
from ..errors import PermeabilityRangeError
from ..solvers.apt import PTParams, PTResult
from ..solvers.fields import log_range, owned_range
from .adjoint_warm import AdjointSubspace
from .forward_warm import ForwardSubspace
from .misfit_error import MisfitEstimates
from .state import ForwardSolution, LifecycleError, StateField

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


class AdjointGradient(MisfitEstimates):
    """Misfit and gradient w.r.t. log K for a problem and its observations.

    It is the objective the optimisers use (:class:`~hpcinv.inverse.optimise.Objective`:
    :meth:`value`, :meth:`value_and_gradient`, :attr:`backend`, :attr:`decomp`, :attr:`dtype`),
    and, through :class:`~.misfit_error.MisfitEstimates`, the adaptive optimisers' misfits with
    error estimates.

    Args:
        problem: the :class:`~hpcinv.model.problems.Problem`; its ``K`` is replaced per
            evaluation, so give it a copy (``problem.copy()``) of a problem you keep.
        observations: :class:`~hpcinv.inverse.Observations` with values.
        backend: compute backend (default: auto).
        params, adjoint_params: :class:`PTParams` of the forward and adjoint solves.
        tikhonov: optional :class:`~hpcinv.inverse.regularisation.Tikhonov` term added to J and
            its gradient.
        warm_start: start each forward and adjoint solve from the previous call's solution
            (the model changes little between outer iterations); costs ``2 (ndim + 1)`` fields.
        adjoint_memory: with warm starts, start each adjoint solve from the least-squares mix
            of the last ``adjoint_memory`` adjoint solutions
            (:class:`~hpcinv.inverse.adjoint_warm.AdjointSubspace`; ``adjoint_memory (ndim + 1)``
            fields more); 0: the previous solution rescaled to the new source.
        predictor: with warm starts, a
            :class:`~hpcinv.inverse.forward_prediction.CoarsePrediction` that corrects each
            forward warm start by the coarse-grid change of the pressure (``None``: none).
        forward_memory: with warm starts, start each forward solve from the previous solution
            plus the Galerkin mix of its differences to the last ``forward_memory`` earlier
            solutions (:class:`~hpcinv.inverse.forward_warm.ForwardSubspace`, guarded by the
            energy; ``forward_memory (ndim + 1) + 1`` fields and 3 float64 fields more);
            0: the previous solution.
        solver_kwargs: passed to :func:`~hpcinv.solvers.make_darcy_solver` (``method`` "apt"
            or "petsc", ``overlap``, ``dtype``).
    """

    def __init__(self, problem, observations, backend=None, params=None, adjoint_params=None,
                 tikhonov=None, warm_start: bool = False, adjoint_memory: int = 0,
                 predictor=None, forward_memory: int = 0, **solver_kwargs):
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
        self.warm = None
        if warm_start:   # the last forward and adjoint solutions: (Pf, q...) each
            self.warm = {k: (bk.zeros(shape, dt), [bk.zeros(shape, dt) for _ in range(nd)])
                         for k in ("forward", "adjoint")}
        self._warm_valid = False
        self.subspace = (AdjointSubspace(bk, shape, dt, nd, adjoint_memory)
                         if warm_start and adjoint_memory > 0 else None)
        if predictor is not None and forward_memory > 0:
            from ..errors import ConfigError
            raise ConfigError("forward_prediction and forward_memory are alternatives (together "
                              "they make the misfit error estimates unreliable: "
                              "docs/performance.md); set one of them to 0")
        self.predictor = predictor if warm_start else None
        self._warm_token, self._warm_logK = 0, None     # the forward warm start's model
        self.forward_subspace = (ForwardSubspace(self.solver, forward_memory)
                                 if warm_start and forward_memory > 0 else None)
        self._holds = None       # "forward" while the solver holds the latest forward solve
        self._stage = None       # (J, residual, psi . rho) of the latest forward solve
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

    def state(self) -> dict:
        """What a checkpoint must keep to continue bitwise: the warm-start fields (the last
        forward and adjoint solutions) and the last adjoint source weights, as named
        :class:`~hpcinv.inverse.state.StateField` records; empty when warm starts are off or nothing
        was solved yet."""
        if self.warm is None or not self._warm_valid:
            return {}
        out = {}
        for kind, (P, q) in self.warm.items():
            out[f"{kind}_Pf"] = StateField(P, "cell")
            for a, qa in enumerate(q):
                out[f"{kind}_q{'xyz'[a]}"] = StateField(qa, "face", a)
        for key, w in (("adjoint_source_weights", getattr(self, "_w_old", None)),
                       ("adjoint_weights", self._psi_w)):
            if w is not None:
                out[key] = StateField(w, "replicated")
        if self.predictor is not None and self._warm_logK is not None:
            out["forward_warm_logK"] = StateField(self._warm_logK, "cell")
            out["forward_warm_cached"] = StateField(
                np.array([float(self.predictor.cached(self._warm_token))]), "replicated")
        for sub in (self.subspace, self.forward_subspace):
            if sub is not None:
                out.update(sub.state())
        return out

    def reset(self):
        """Forget every solution kept between calls (the warm-start fields, both subspaces, the
        coarse prediction's cache, the adjoint source weights, the latest forward solution), so
        that the next call behaves as the first call of a new objective: a probe such as
        ``value_and_gradient(logK0)`` before :meth:`Inversion.run` then leaves the run's
        results as they would be without it. The tolerances set by :meth:`set_tolerances` stay
        (the optimiser sets its own when it starts)."""
        self._warm_valid = False
        self._w_old = self._psi_w = None
        self._latest = self._holds = self._stage = self._adjoint_of = None
        self._warm_logK = None
        self._warm_token = 0
        self._serial = 0
        if self.subspace is not None:
            self.subspace.clear()
        if self.forward_subspace is not None:
            self.forward_subspace.clear()
            self.forward_subspace.serial = 0
        if self.predictor is not None:
            self.predictor.forget()
            self.predictor.take_work()

    def load_state(self, fields: dict):
        """Restore what :meth:`state` returned (arrays on the host or the backend)."""
        if self.warm is None or not fields:
            return
        bk = self.backend
        for kind, (P, q) in self.warm.items():
            bk.copy(P, fields[f"{kind}_Pf"])
            for a, qa in enumerate(q):
                bk.copy(qa, fields[f"{kind}_q{'xyz'[a]}"])
        if "adjoint_source_weights" in fields:
            self._w_old = np.array(fields["adjoint_source_weights"], dtype=float)
        if "adjoint_weights" in fields:
            self._psi_w = np.array(fields["adjoint_weights"], dtype=float)
        if "forward_warm_logK" in fields:
            w = fields["forward_warm_logK"]
            self._warm_logK = np.array(w if isinstance(w, np.ndarray) else bk.to_host(w),
                                       dtype=float)
            self._warm_token += 1
            if self.predictor is not None:
                cached = np.asarray(fields.get("forward_warm_cached", [0.0]), dtype=float)
                self.predictor.forget(was_cached=bool(cached[0]))
        for sub in (self.subspace, self.forward_subspace):
            if sub is not None:
                sub.load_state(fields)
        self._warm_valid = True

    def _solve(self, kind: str, progress, cold: bool = False):
        """Forward or adjoint solve in the shared solver, warm-started when enabled (and not
        ``cold``)."""
        s = self.solver
        homogeneous = kind == "adjoint"
        s.set_params(self.adjoint_params if homogeneous else self.forward_params)
        fsub = self.forward_subspace if kind == "forward" else None
        if self.warm is not None and self._warm_valid and not cold:
            P, q = self.warm[kind]
            if fsub is not None:
                fsub.start(P, q)
            else:
                if kind == "forward" and self.predictor is not None and \
                        self._warm_logK is not None:
                    P0 = self.predictor.predict(self.logK, self._warm_token, self._warm_logK,
                                                P)
                    P = P if P0 is None else P0
                s.set_state(P, q, homogeneous=homogeneous)
        else:
            s.set_state(homogeneous=homogeneous)
        result = s.solve(progress).result
        self._holds = kind
        if fsub is not None:
            fsub.solved(*self.warm["forward"])
        self._keep_warm(kind)
        if kind == "forward" and self.predictor is not None:   # the warm start's model
            self._warm_token += 1
            self._warm_logK = self.logK.copy()
            self.predictor.commit(self._warm_token)
        return result

    def take_prediction_work(self) -> float:
        """The coarse-grid corrections' cost since the last call, in fine PT iterations (0
        without a predictor)."""
        return self.predictor.take_work() if self.predictor is not None else 0.0

    def _keep_warm(self, kind):
        if self.warm is not None:
            P, q = self.warm[kind]
            self.backend.copy(P, self.solver.Pf)
            for qa, sa in zip(q, self.solver.q):
                self.backend.copy(qa, sa)

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
        J_reg = self.tikhonov.value_and_gradient(bk.upload(self.logK, dtype=self.dtype), out=g,
                                                 accumulate=True)[0]
        bk.sync()
        return J_reg

    def _rescale_adjoint_warm_start(self, w):
        """Scale the previous adjoint solution to the new source.

        The adjoint solution is linear in its source ``S^T w``; the best multiple of the old
        source, ``alpha = <w, w_old> / <w_old, w_old>``, makes ``alpha psi_old`` the best start
        along it (without it the warm start can be worse than a cold one, as the source shrinks
        while the misfit falls). ``w`` is replicated on every rank, so alpha is bitwise the same
        for any decomposition and costs no reduction."""
        w_old, self._w_old = getattr(self, "_w_old", None), np.array(w, dtype=float)
        if self.warm is None or not self._warm_valid or w_old is None:
            return
        den = float(w_old @ w_old)
        alpha = float(w @ w_old) / den if den > 0 else 0.0
        P, q = self.warm["adjoint"]
        for a in (P, *q):
            self.backend.elementwise(lambda xp, v, alpha=alpha: v * alpha, a, out=a)

    def misfit(self, logK=None, progress=None):
        """``(J, info)``: the misfit alone (one forward solve), e.g. for line-search trials."""
        fwd = self.forward_solve(logK, progress).result
        J = self._sampled_misfit()
        self._stage = (J, fwd.residual, None)
        return J, {"forward_iterations": fwd.iterations, "adjoint_iterations": 0,
                   "forward_converged": fwd.converged, "adjoint_converged": True}

    def forward_solve(self, logK=None, progress=None) -> ForwardSolution:
        """Forward solve at ``logK`` (default: the current model); the pressure is kept in
        :attr:`Pf_forward` (padded local backend array, ghosts valid). Returns the
        :class:`ForwardSolution` that :meth:`adjoint_gradient` differentiates."""
        if logK is not None:
            self.set_logK(logK)
        s = self.solver
        s.set_source(self.problem.Qf)
        fwd = self._solve("forward", progress)
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
        cold = w is None
        if self.subspace is not None:
            cold = cold or self.subspace.start(w, *self.warm["adjoint"]) is None
        elif w is not None:
            self._rescale_adjoint_warm_start(w)
        else:                    # a source of unknown shape: no basis for the next rescale
            self._w_old = None
        adj = self._solve("adjoint", progress, cold=cold)
        if self.subspace is not None:
            if w is None:
                self.subspace.clear()
            else:
                self.subspace.push(w, s.Pf, s.q)
        self._warm_valid = self.warm is not None
        self._psi_w = None if w is None else np.array(w, dtype=float)   # the kept psi's weights
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
        if self.warm is not None:
            s.set_state(*self.warm["adjoint"], homogeneous=True)
        else:
            s.set_state(homogeneous=True)
        adj = s.solve(progress).result
        self._keep_warm("adjoint")
        if self.subspace is not None and len(self.subspace) and self._psi_w is not None:
            self.subspace.replace_last(s.Pf, s.q)
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
