"""The framework-neutral observation map and its vector-Jacobian product (VJP).

On each rank, with ``m`` the rank's owned block of log K (shape ``grid.decomp.local_shape``)::

    F(m) = d = S Pf(m) - c 1            simulated observations, (nobs,), replicated
    [optionally  P = Pf(m)|owned - c    the pressure on the owned block]

``Pf(m)`` is the steady Darcy pressure (APT forward solve), ``S`` the observation operator of
:class:`~hpcinv.inverse.Observations`. When a side fixes the pressure ``c = 0``. Without one,
``Pf`` is only defined up to a constant, and so would ``d`` be: the map is then *gauge-fixed*
with ``c = sum_k W_k (S Pf)_k / sum_k W_k`` (``W_k = 1/sigma_k**2``, the observations' sigma),
the same weighted mean the demeaned misfit removes. So the loss
``1/2 sum_k W_k (d_k - demean_W(obs)_k)**2`` equals hpcinv's misfit and has the same gradient.

The VJP for cotangents ``v_d`` (nobs,) and ``v_P`` (owned block) is one adjoint APT solve
(:meth:`~hpcinv.inverse.AdjointGradient.adjoint_gradient`) with the source
``S^T v_p + v_P``, where ``v_p = v_d + W / sum(W) * cbar`` and ``cbar = -(sum v_d + sum v_P)``
is the cotangent of ``c`` (so the source sums to zero, as the singular adjoint system needs);
``cbar = 0`` with a fixed side. Never differentiated: the thousands of PT iterations.

**MPI.** ``d`` is replicated: every rank gets the same ``(nobs,)`` values (one allreduce inside
the sampling, as in the inversion). Its cotangent must therefore be replicated too, as it is
when the loss is computed redundantly on every rank from ``d`` (checked: one allreduce of
``2 nobs`` numbers per VJP). ``m``, ``P`` and their cotangents are per-rank blocks.

**Memory.** Each forward call keeps a *tape* of one padded pressure field (plus its log K) for
its VJP, independent of the iteration count; the solver's buffers are shared by all calls.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
from mpi4py import MPI

from ..errors import ConfigError, HpcinvError
from ..inverse.gradient import AdjointGradient


class SolveNotConvergedError(HpcinvError):
    """A forward or adjoint solve inside the differentiable map hit its iteration budget."""


@dataclass
class Tape:
    """What the VJP of one forward call needs.

    Attributes:
        logK: padded local host array of log K (owned cells valid).
        Pf: the forward pressure, padded local array (backend or host), ghosts valid.
        call: the forward call's number (``None``: unknown, always reload the model).
    """
    logK: np.ndarray
    Pf: object
    call: int | None = None


class ObservationMap:
    """``log K -> simulated observations`` (and optionally the pressure) with an adjoint VJP.

    Args:
        problem: the :class:`~hpcinv.model.problems.Problem` (grid, source, wells, fixed sides); its K
            is replaced by each call's model.
        observations: :class:`~hpcinv.inverse.Observations` (points, sigma; values not needed).
        backend, params, adjoint_params, **solver_kwargs: as for
            :class:`~hpcinv.inverse.AdjointGradient` (``params``: forward
            :class:`~hpcinv.solvers.PTParams`, ``dtype``, ``method``, ``overlap``...).
        warm_start: start each forward solve from the previous one, and each adjoint solve
            from the previous adjoint solution rescaled to the new observation cotangent (a
            pressure cotangent starts the adjoint cold). Results then differ from cold ones at
            the solver tolerance, not bitwise.
        return_pressure: also return the owned block of the (gauge-fixed) pressure.

    Raises:
        ConfigError: bad inputs (see :meth:`check_logK`).
        SolveNotConvergedError: a solve did not reach its tolerance within ``maxiter``.
    """

    def __init__(self, problem, observations, backend=None, params=None, adjoint_params=None,
                 warm_start: bool = False, return_pressure: bool = False, **solver_kwargs):
        if problem.gauge_free and not observations.demean:
            raise ConfigError("no side fixes the pressure: use Observations(..., demean=True)")
        self.engine = AdjointGradient(problem, observations, backend, params, adjoint_params,
                                      None, warm_start, **solver_kwargs)
        self.problem, self.obs, self.backend = problem, observations, self.engine.backend
        self.decomp = problem.grid.decomp
        self.comm = problem.grid.comm
        self.local_shape = tuple(self.decomp.local_shape)
        self.nobs = len(observations)
        self.dtype = np.dtype(self.engine.solver.dtype)
        self.return_pressure = bool(return_pressure)
        self.gauge_free = problem.gauge_free
        W = 1.0 / observations.sigma**2
        self._gauge_weights = W / np.sum(W)            # dc/d(S Pf): (nobs,), sums to 1
        self._calls = itertools.count()
        self._loaded = None                             # the call whose model the solver holds
        self._forward = None                            # its ForwardSolution
        self.info = {}                                  # iterations of the last solves

    # --- input checks -------------------------------------------------------------------
    def check_logK(self, shape, dtype, what: str = "logK"):
        """Raise :class:`ConfigError` unless ``shape`` is this rank's owned block and ``dtype``
        the solver's (names the rank, the expected shape and the fix)."""
        if tuple(shape) != self.local_shape:
            where = f" on rank {self.comm.rank}" if self.comm.size > 1 else ""
            raise ConfigError(f"{what} has shape {tuple(shape)}{where}, expected this rank's "
                              f"owned block {self.local_shape} (grid {tuple(self.problem.grid.shape)}"
                              f", no ghost layer)")
        if np.dtype(dtype) != self.dtype:
            raise ConfigError(f"{what} has dtype {np.dtype(dtype)}, but the solver computes in "
                              f"{self.dtype}: convert the input, or build the map with "
                              f"dtype={np.dtype(dtype).name} (float32 or float64)")

    def _check_cotangent(self, v, shape, what):
        v = np.asarray(v, dtype=float)
        if v.shape != shape:
            raise ConfigError(f"cotangent of {what} has shape {v.shape}, expected {shape}")
        if not np.all(np.isfinite(v)):
            raise ConfigError(f"cotangent of {what} is not finite")
        return v

    # --- forward -------------------------------------------------------------------------
    def forward(self, logK):
        """``(d, P, tape)``: observations ``(nobs,)``, the owned pressure block (or ``None``
        without ``return_pressure``), both in the solver dtype, and the :class:`Tape` for
        :meth:`vjp`. ``logK``: host array of this rank's owned block."""
        logK = np.asarray(logK)
        self.check_logK(logK.shape, logK.dtype)
        padded = np.zeros(self.decomp.padded_shape)
        padded[self.decomp.owned()] = logK
        e, bk = self.engine, self.backend
        forward = e.forward_solve(padded)
        fwd = forward.result
        self._require_converged(fwd, "forward")
        call = next(self._calls)
        self._loaded, self._forward = call, forward
        self.info = {"forward_iterations": fwd.iterations}
        p = self.obs.sample(forward.Pf, bk)
        c = float(self._gauge_weights @ p) if self.gauge_free else 0.0
        d = (p - c).astype(self.dtype)
        P = None
        if self.return_pressure:
            P = (bk.to_host(forward.Pf, region=self.decomp.owned()) - c).astype(self.dtype)
        return d, P, Tape(padded, bk.clone(forward.Pf), call)

    def _require_converged(self, result, what):
        if not result.converged:
            raise SolveNotConvergedError(
                f"the {what} solve did not converge in {result.iterations} iterations "
                f"(scaled residual {result.residual:.3e}); raise maxiter or loosen tol of the "
                f"{'adjoint_params' if what == 'adjoint' else 'params'}")

    # --- VJP -----------------------------------------------------------------------------
    def _check_replicated(self, v):
        """The observation cotangent must be the same on every rank (see module doc)."""
        if self.comm.size == 1:
            return
        hi = np.empty(2 * self.nobs)
        self.comm.Allreduce(np.concatenate([v, -v]), hi, op=MPI.MAX)
        spread = np.max(hi[:self.nobs] + hi[self.nobs:]) if self.nobs else 0.0
        if spread > 0:
            raise ConfigError(
                "the cotangent of the observations differs between MPI ranks (max difference "
                f"{spread:.3e}): the observations are replicated, so compute the loss from them "
                "identically on every rank")

    def vjp(self, tape: Tape, v_d=None, v_P=None) -> np.ndarray:
        """``(dF/dm)^T (v_d, v_P)``: host array of this rank's owned block (solver dtype).

        ``v_d``: ``(nobs,)`` (replicated) or ``None`` (zero); ``v_P``: owned block or ``None``.
        """
        v_d = (np.zeros(self.nobs) if v_d is None
               else self._check_cotangent(v_d, (self.nobs,), "the observations"))
        self._check_replicated(v_d)
        if v_P is not None:
            if not self.return_pressure:
                raise ConfigError("a pressure cotangent was given, but the map was built "
                                  "without return_pressure=True")
            v_P = self._check_cotangent(v_P, self.local_shape, "the pressure")
        v_p = v_d
        if self.gauge_free:
            sum_P = self.comm.allreduce(float(np.sum(v_P)), op=MPI.SUM) if v_P is not None else 0
            v_p = v_d - self._gauge_weights * (np.sum(v_d) + sum_P)
        e, bk = self.engine, self.backend
        source = self.obs.spread(v_p)
        if v_P is not None:
            source[self.decomp.owned()] += v_P
        if tape.call is None or tape.call != self._loaded:
            self._forward = e.restore_forward(tape.logK, tape.Pf)   # the tape's model again
            self._loaded = tape.call
        g, adj = e.adjoint_gradient(self._forward, bk.upload(source, dtype=self.dtype),
                                    w=v_p if v_P is None else None)
        self._require_converged(adj, "adjoint")
        self.info["adjoint_iterations"] = adj.iterations
        return np.asarray(bk.to_host(g, region=self.decomp.owned()), dtype=self.dtype)
