"""The distributed APT forward solver for steady Darcy flow."""
from __future__ import annotations

import numpy as np

from ..backend import Backend
from ..physics.darcy import apt_step_kernel
from .apt import PTParams, pt_coefficients, pt_iterate
from .fields import DarcyFields, ForwardState, boundary_bits  # noqa: F401 (re-exported)
from .overlap import OverlappedUpdate


class DarcySolver(DarcyFields):
    """APT solver for ``q = -K grad Pf``, ``div q = Qf`` on a problem's grid; each side of the
    box is no-flux or fixed-pressure (``problem.fixed_pressure``).

    Args:
        problem: a :class:`~hpcinv.problems.Problem` (grid, K, Qf).
        backend: a :class:`~hpcinv.backend.Backend` (default: ``make_backend("auto")``).
        params: :class:`PTParams` (defaults: ``cfl = 0.95/sqrt(ndim)``, ``Re = 2 pi``).
        overlap: hide the halo exchange behind the interior update.
        dtype: ``float64`` (default) or ``float32``.
        cuda_aware: force CUDA-aware MPI on or off (``None``: detect).
    """

    def __init__(self, problem, backend: Backend | None = None, params: PTParams | None = None,
                 overlap: bool = True, dtype=np.float64, cuda_aware: bool | None = None):
        super().__init__(problem, backend, dtype, cuda_aware)
        ndim, shape, bk = self.grid.ndim, self.decomp.padded_shape, self.backend
        self.update = OverlappedUpdate(shape, bk, self.halo, overlap=overlap)
        self._step = bk.kernel(apt_step_kernel(ndim, False), ndim, self.dtype)
        self._step_res = bk.kernel(apt_step_kernel(ndim, True), ndim, self.dtype)
        self.set_params(params if params is not None else PTParams())

    def set_params(self, params: PTParams):
        """Use other PT parameters (e.g. the adjoint's) from the next solve on."""
        params.validate()
        self.params = params.resolved(self.grid.shape)
        self.damp, self.beta = pt_coefficients(self.grid.spacing, self.grid.lengths,
                                               self.params.cfl, self.params.re)

    def step(self, check: bool = False):
        """One APT iteration (fused kernel + one overlapped halo exchange of Pf).

        Returns the local max-norm of ``div q - Qf`` when ``check`` is true, else ``None``.
        """
        k = self._step_res if check else self._step
        args = (self.Pf, *self.q, self.Pf_new, *self.q_new, self.K, self.Qf, self.R,
                *self.inv_d, self.damp, self.beta, *self.last, self.wall, self.fixed)
        self.update(lambda lo, hi: k(lo, hi, *args), self.Pf_new)
        self.Pf, self.Pf_new = self.Pf_new, self.Pf
        self.q, self.q_new = self.q_new, self.q
        return self.backend.max_abs(self.R) if check else None

    def solve(self, progress=None) -> ForwardState:
        """Iterate from the current state until converged (or ``maxiter``)."""
        self.backend.synchronize()
        res = pt_iterate(self.step, self.decomp.comm, self.params, self.scale,
                         "adjoint" if self.homogeneous else "forward", progress,
                         cold=self.cold)
        self.backend.synchronize()
        return ForwardState(self.Pf, list(self.q), res)


def solve_forward(problem, backend=None, params=None, **kwargs) -> ForwardState:
    """Solve a problem's forward Darcy flow from zero initial fields."""
    return DarcySolver(problem, backend, params, **kwargs).solve()
