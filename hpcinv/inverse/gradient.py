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
from ..solvers.apt import PTParams
from ..solvers.forward import DarcySolver


class AdjointGradient:
    """Misfit and gradient w.r.t. log K for a problem and its observations.

    Args:
        problem: the :class:`~hpcinv.problems.Problem`; its ``K`` is replaced per evaluation.
        observations: :class:`~hpcinv.inverse.Observations` with values.
        backend: compute backend (default: auto).
        params, adjoint_params: :class:`PTParams` of the forward and adjoint solves.
        tikhonov: optional :class:`~hpcinv.inverse.regularisation.Tikhonov` term added to J and
            its gradient.
        solver_kwargs: passed to :class:`~hpcinv.solvers.DarcySolver` (``overlap``, ``dtype``).
    """

    def __init__(self, problem, observations, backend=None, params=None, adjoint_params=None,
                 tikhonov=None, **solver_kwargs):
        self.problem, self.obs, self.tikhonov = problem, observations, tikhonov
        self.solver = DarcySolver(problem, backend, params, **solver_kwargs)
        self.forward_params = self.solver.params
        self.adjoint_params = adjoint_params if adjoint_params is not None else PTParams()
        self.backend = bk = self.solver.backend
        nd, dt = problem.grid.ndim, self.solver.dtype
        self._D_T = bk.kernel(pressure_residual_adjoint_kernel(nd), nd, dt)
        self._dRq_dK_T = bk.kernel(flux_residual_adjoint_kernel(nd), nd, dt)
        self.Pf_forward = bk.zeros(self.solver.K.shape, dt)
        own = problem.grid.decomp.owned()
        self.logK = np.zeros(problem.K.shape)
        self.logK[own] = np.log(problem.K[own])

    def set_logK(self, logK):
        """Set the model from a padded local array of log K (owned cells are read)."""
        from ..errors import ConfigError
        logK = np.asarray(self.backend.to_host(logK), dtype=float)
        own = self.problem.grid.decomp.owned()
        bad = self.problem.grid.comm.allreduce(int(not np.all(np.isfinite(logK[own]))))
        if bad:
            raise ConfigError("logK must be finite everywhere (NaN or inf found)")
        self.logK = logK
        self.problem.K[own] = np.exp(logK[own])
        self.problem.validate()
        self.solver.set_permeability(self.problem.K)

    def __call__(self, logK=None, progress=None):
        """``(J, dJ/dlogK, info)``; ``dJ/dlogK`` is a padded local backend array (owned cells
        valid, ghosts zero)."""
        if logK is not None:
            self.set_logK(logK)
        s, bk, xp = self.solver, self.backend, self.backend.xp
        s.set_source(self.problem.Qf)
        s.set_params(self.forward_params)
        s.set_state()
        fwd = s.solve(progress).result
        xp.copyto(self.Pf_forward, s.Pf)
        J, rhs = self.obs.misfit_and_source(s.Pf, xp, bk.to_host)
        s.set_source(rhs)
        s.set_params(self.adjoint_params)
        s.set_state(homogeneous=True)
        adj = s.solve(progress).result
        psi_P = s.Pf
        # Scratch from the solver's buffers, free once the adjoint solve is done.
        minus_psi_q, q_bar, K_bar, P_bar = s.q_new, s.q, s.R, s.Pf_new
        for a in (*minus_psi_q, *q_bar, K_bar, P_bar):
            a[...] = 0
        box = ((1,) * len(s.last), tuple(n + 1 for n in s.last))
        self._D_T(*box, psi_P, *minus_psi_q, *s.geometry)                 # -psi_q = D^T psi_P
        self._dRq_dK_T(*box, self.Pf_forward, s.K, P_bar, K_bar, *minus_psi_q, *q_bar,
                       *s.geometry)                                       # dJ/dK
        g = K_bar * s.K
        g *= _owned_mask(s)
        if self.tikhonov is not None:
            J += self.tikhonov.value_and_gradient(bk.asarray(self.logK, dtype=s.dtype), out=g,
                                                  accumulate=True)[0]
        bk.synchronize()
        info = {"forward_iterations": fwd.iterations, "adjoint_iterations": adj.iterations,
                "forward_converged": fwd.converged, "adjoint_converged": adj.converged,
                "forward_residual": fwd.residual, "adjoint_residual": adj.residual}
        return J, g, info


def _owned_mask(solver):
    if not hasattr(solver, "_owned_mask"):
        m = np.zeros(solver.K.shape)
        m[solver.decomp.owned()] = 1.0
        solver._owned_mask = solver.backend.asarray(m, dtype=solver.dtype)
    return solver._owned_mask
