"""The distributed APT forward solver for steady Darcy flow."""
from __future__ import annotations

import numpy as np

from ..backend import Backend
from ..physics.darcy import apt_step_kernel
from .apt import PTParams, pt_coefficients, pt_iterate
from .fields import DarcyFields, ForwardState
from .overlap import OverlappedUpdate, resolve_overlap


class DarcySolver(DarcyFields):
    """APT solver for ``q = -K grad Pf``, ``div q = Qf`` on a problem's grid; each side of the
    box is no-flux or fixed-pressure (``problem.fixed_pressure``).

    Args:
        problem: a :class:`~hpcinv.model.problems.Problem` (grid, K, Qf).
        backend: a :class:`~hpcinv.backend.Backend` (default: ``make_backend("auto")``).
        params: :class:`PTParams` (defaults: ``cfl = 0.95/sqrt(ndim)``, ``Re = 2 pi``).
        overlap: hide the halo exchange behind the interior update: ``True``, ``False`` or
            ``"auto"`` (GPUs; the host where a core is spare, see :func:`resolve_overlap`).
        dtype: ``float64`` (default) or ``float32``.
        cuda_aware: force CUDA-aware MPI on or off (``None``: detect).
    """

    def __init__(self, problem, backend: Backend | None = None, params: PTParams | None = None,
                 overlap=True, dtype=np.float64, cuda_aware: bool | None = None):
        super().__init__(problem, backend, dtype, cuda_aware)
        ndim, shape, bk = self.grid.ndim, self.decomp.padded_shape, self.backend
        self.overlap, self.overlap_reason = resolve_overlap(overlap, bk,
                                                            self.decomp.node_ranks)
        self.update = OverlappedUpdate(shape, bk, self.halo, overlap=self.overlap)
        self._step = bk.kernel(apt_step_kernel(ndim, False), ndim, self.dtype)
        self._step_res = bk.kernel(apt_step_kernel(ndim, True), ndim, self.dtype)
        self._bindings = {}                 # (damp, beta) -> the step's bindings
        self.set_params(params if params is not None else PTParams())

    def set_params(self, params: PTParams):
        """Use other PT parameters (e.g. the adjoint's) from the next solve on."""
        params.validate()
        self.params = params.resolved(self.grid.shape)
        self.damp, self.beta = pt_coefficients(self.grid.spacing, self.grid.lengths,
                                               self.params.cfl, self.params.re)
        self._bind_steps()

    def _bind_steps(self):
        """The step kernel bound by name for both ping-pong parities, with and without the
        residual (made once per parameter set and kept, so a step costs only its launches and
        switching between the forward's and the adjoint's parameters makes no new launch
        plans: on GPUs each would upload its geometry, a host sync)."""
        key = (float(self.damp), float(self.beta))
        self._bound = self._bindings.get(key)
        if self._bound is not None:
            return
        if len(self._bindings) >= 4:        # parameters keep changing: keep the latest few
            self._bindings.clear()
        self._bound = self._bindings[key] = {}
        for check, k in ((False, self._step), (True, self._step_res)):
            for cur in (0, 1):
                self._bound[check, cur] = k.bind(
                    Pf=self._P[cur], q=self._Q[cur], Pf_new=self._P[1 - cur],
                    q_new=self._Q[1 - cur], K=self.K, Qf=self.Qf, R=self.R,
                    damp=self.damp, beta=self.beta, **self.geometry)

    def step(self, check: bool = False):
        """One APT iteration (fused kernel + one overlapped halo exchange of Pf).

        Returns the local max-norm of ``div q - Qf`` when ``check`` is true, else ``None``.
        """
        self.update(self._bound[check, self._cur], self.Pf_new)
        self._cur = 1 - self._cur
        return self.backend.max_abs(self.R) if check else None

    def solve(self, progress=None) -> ForwardState:
        """Iterate from the current state until converged (or ``maxiter``). The returned state
        is borrowed (see :class:`~hpcinv.solvers.fields.ForwardState`)."""
        self.next_generation()
        res = pt_iterate(self.step, self.decomp.comm, self.params, self.scale,
                         "adjoint" if self.homogeneous else "forward", progress,
                         cold=self.cold)
        # no sync here: the last iteration was a check, whose max_abs synchronised ``compute``
        # after it had waited for the other streams (one host sync per solve fewer)
        return ForwardState(self.Pf, self.q, res, owner=self)


def solve_forward(problem, backend=None, params=None, **kwargs) -> ForwardState:
    """Solve a problem's forward Darcy flow from zero initial fields."""
    return DarcySolver(problem, backend, params, **kwargs).solve()
