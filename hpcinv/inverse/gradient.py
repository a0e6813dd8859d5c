"""The adjoint-state gradient dJ/dlogK: one forward and one adjoint APT solve.

With ``R(u, m) = 0`` the discrete Darcy residual (``hpcinv.physics.residuals``), the adjoint
``psi = (psi_q, psi_P)`` solves ``(dR/du)^T psi = dJ/du``. Written out, the q-rows give
``psi_q = grad psi_P`` and the Pf-rows ``-div(Kf grad psi_P) = dJ/dPf``: the forward operator
again (it is symmetric), so the adjoint solve is the forward APT loop with the source replaced
by ``dJ/dPf`` and its own PT parameters. Then ``dJ/dK = -psi_q^T dRq/dK``, assembled by the
hand-derived transpose kernel, and ``dJ/dlogK = K dJ/dK``. Memory is a few cell fields,
independent of the iteration count. See ``docs/theory.md``.
"""
from __future__ import annotations

import numpy as np

from ..physics.residuals import flux_residual_adjoint_kernel, flux_residual_kernel
from ..solvers.apt import PTParams
from ..solvers.forward import DarcySolver


class AdjointGradient:
    """Misfit and gradient w.r.t. log K for a problem and its observations.

    Args:
        problem: the :class:`~hpcinv.problems.Problem` (its K is replaced per evaluation).
        observations: :class:`~hpcinv.inverse.Observations` with values.
        backend: compute backend.
        params, adjoint_params: :class:`PTParams` of the forward and adjoint solves.
    """

    def __init__(self, problem, observations, backend=None, params=None, adjoint_params=None,
                 **solver_kwargs):
        self.problem, self.obs = problem, observations
        self.forward = DarcySolver(problem, backend, params, **solver_kwargs)
        self.backend = self.forward.backend
        self.adjoint = DarcySolver(problem, self.backend, adjoint_params or PTParams(),
                                   **solver_kwargs)
        nd, bk, dt = problem.grid.ndim, self.backend, self.forward.dtype
        self._grad_psi = bk.kernel(flux_residual_kernel(nd), nd, dt)
        self._k_bar = bk.kernel(flux_residual_adjoint_kernel(nd), nd, dt)
        shape = problem.grid.decomp.padded_shape
        self._ones = bk.asarray(np.ones(shape), dtype=dt)
        self._zero_q = [bk.zeros(shape, dt) for _ in range(nd)]
        self._psi_q = [bk.zeros(shape, dt) for _ in range(nd)]
        self._scratch_q = [bk.zeros(shape, dt) for _ in range(nd)]

    def set_logK(self, logK):
        """Set the model (padded local array of log K; owned cells are read)."""
        K = np.exp(np.asarray(self.backend.to_host(logK), dtype=float))
        own = self.problem.grid.decomp.owned()
        self.problem.K[own] = K[own]
        for s in (self.forward, self.adjoint):
            s.set_permeability(self.problem.K)

    def __call__(self, logK=None):
        """``(J, dJ/dlogK, info)``; ``dJ/dlogK`` is a padded local backend array (owned cells)."""
        if logK is not None:
            self.set_logK(logK)
        fwd, adj, bk = self.forward, self.adjoint, self.backend
        fwd.set_state()
        state = fwd.solve()
        J, rhs = self.obs.misfit_and_source(state.Pf, bk.xp, bk.to_host)
        adj.set_source(rhs)
        adj.set_state()
        astate = adj.solve()
        geo = (*fwd.inv_d, *fwd.last, fwd.wall)
        box = ((1,) * len(fwd.last), tuple(n + 1 for n in fwd.last))
        # psi_q = grad psi_P: the flux residual with q = 0 and K = 1 (so Kf = 1)
        bk.synchronize()
        self._grad_psi(*box, astate.Pf, self._ones, *self._zero_q, *self._psi_q, *geo)
        K_bar = bk.zeros(fwd.K.shape, fwd.dtype)
        P_bar = bk.zeros(fwd.K.shape, fwd.dtype)
        for q in self._scratch_q:
            q[...] = 0
        self._k_bar(*box, state.Pf, fwd.K, P_bar, K_bar, *self._psi_q, *self._scratch_q, *geo)
        g = -K_bar * fwd.K
        info = {"forward_iterations": state.result.iterations,
                "adjoint_iterations": astate.result.iterations,
                "forward_converged": state.result.converged,
                "adjoint_converged": astate.result.converged}
        return J, g, info
