"""Regularisation of the inversion: gradient smoothing and a Tikhonov term (distributed).

Fields are padded local backend arrays (``grid.decomp.padded_shape``, one ghost layer); only
owned cells are read from inputs, and ghost layers are refreshed internally (inputs are copied,
never modified). Kernels: :mod:`hpcinv.physics.regularisation`.

* :class:`GradientSmoother`: ``n`` explicit diffusion steps, the workshop's ``smooth_d!``
  (cells on the global boundary unchanged), one halo exchange per step, ping-pong buffers.
  Bitwise identical for any decomposition. :meth:`~GradientSmoother.apply_transpose` applies
  the transpose (the operator is not symmetric at the boundary), e.g. for preconditioning.
* :class:`Tikhonov`: ``J_reg = alpha/2 V sum_{interior faces} ((m_r - m_l)/d_a)**2`` and its
  gradient ``alpha V (-Lap_N m)`` (zero-gradient boundary). One halo exchange of ``m``; the
  gradient is bitwise identical for any decomposition. ``J_reg`` needs one MPI SUM reduction
  (allreduce of the ranks' partial sums), so it is reproducible only to rounding (a few ulp)
  across decompositions, not bitwise.
"""
from __future__ import annotations

import math

import numpy as np
from mpi4py import MPI

from ..errors import ConfigError
from ..parallel import HaloExchange
from ..physics.regularisation import smooth_kernel, smooth_transpose_kernel, tikhonov_kernel


class _Base:
    def __init__(self, grid, backend, dtype):
        self.grid, self.backend, self.dtype = grid, backend, np.dtype(dtype)
        d = grid.decomp
        self.decomp = d
        self.halo = HaloExchange(d, backend, self.dtype)
        self.box = ((1,) * grid.ndim, tuple(n + 1 for n in d.local_shape))
        # the kernels' ints: go* (rank offset - 1) and gn* (global sizes)
        self.ints = {"go": tuple(int(o) - 1 for o in d.offset),
                     "gn": tuple(int(n) for n in grid.shape)}

    def _kernel(self, k):
        return self.backend.kernel(k, self.grid.ndim, self.dtype)

    def _check(self, a, what):
        if tuple(a.shape) != tuple(self.decomp.padded_shape):
            raise ConfigError(f"{what} must have the padded local shape "
                              f"{self.decomp.padded_shape}, got {tuple(a.shape)}")

    def _load(self, buf, a, what):
        """``a`` (backend or host array) into ``buf``, whole: its owned cells are what counts
        (the caller then refreshes the ghosts facing other ranks, and the kernels read a
        physical side's ghosts only behind a select). One contiguous copy; a host ``a`` goes to
        the device in one transfer, so a caller need not upload it into a field of its own."""
        self._check(a, what)
        self.backend.copy(buf, a)


def default_smoothing_coefficient(ndim: int) -> float:
    """0.8 of the explicit stability limit ``1/(2 ndim)``: 0.2 in 2D (the workshop's value)."""
    return 0.8 * (1.0 / (2 * ndim))


class GradientSmoother:
    """``n`` explicit diffusion steps ``A <- A + coef * sum_a d2_a(A)`` on interior cells.

    Args:
        grid: the :class:`~hpcinv.model.grid.Grid`.
        backend: compute backend.
        steps: number of steps ``n >= 0`` (0: identity).
        coef: diffusion coefficient, ``0 <= coef <= 1/(2 ndim)`` (explicit stability limit);
            default ``0.8 / (2 ndim)``: 0.2 in 2D (the workshop's value), 2/15 in 3D.
        dtype: field dtype.
    """

    def __init__(self, grid, backend, steps: int = 1, coef: float | None = None, dtype=np.float64):
        if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 0:
            raise ConfigError(f"smoothing steps must be an integer >= 0, got {steps!r}")
        limit = 1.0 / (2 * grid.ndim)
        if coef is None:
            coef = default_smoothing_coefficient(grid.ndim)
        try:
            coef = float(coef)
        except (TypeError, ValueError):
            raise ConfigError(f"smoothing coefficient must be a number, got {coef!r}") from None
        if not (math.isfinite(coef) and 0.0 <= coef <= limit):
            raise ConfigError(f"smoothing coefficient must be in [0, 1/(2 ndim)] = [0, {limit:g}] "
                              f"in {grid.ndim}D for stability, got {coef}")
        self.steps, self.coef = int(steps), coef
        self._b = _Base(grid, backend, dtype)
        self._fwd = self._b._kernel(smooth_kernel(grid.ndim))
        self._adj = self._b._kernel(smooth_transpose_kernel(grid.ndim))
        self._bound = {}              # (kernel, buffer pair) -> the kernel bound to it

    def _step(self, kernel, names, src, dst):
        """``kernel`` bound with ``names = (src, dst)`` (bound once per scratch pair)."""
        key = (names, id(src), id(dst))
        if key not in self._bound:
            self._bound[key] = kernel.bind(**{names[0]: src, names[1]: dst}, coef=self.coef,
                                           **self._b.ints)
        return self._bound[key]

    def _run(self, kernel, names, a, out):
        b = self._b
        bk = b.backend
        with bk.scratch(b.decomp.padded_shape, b.dtype, 2) as buf:   # ping-pong, lent
            cur = 0                           # the buffer holding the current iterate
            b._load(buf[cur], a, "field to smooth")
            for _ in range(self.steps):
                b.halo.exchange(buf[cur])     # one exchange per step
                bk.launch(self._step(kernel, names, buf[cur], buf[1 - cur]), b.box)
                cur = 1 - cur
            if out is None:
                out = bk.zeros(b.decomp.padded_shape, b.dtype)
            else:
                b._check(out, "out")
            bk.copy(out, buf[cur], region=b.decomp.owned())
        return out

    def apply(self, a, out=None):
        """``S^n a`` (owned cells of a new array, or of ``out``; ``out`` may be ``a``)."""
        return self._run(self._fwd, ("A", "A2"), a, out)

    __call__ = apply

    def apply_transpose(self, a, out=None):
        """``(S^n)^T a = (S^T)^n a``."""
        return self._run(self._adj, ("y", "y2"), a, out)


class Tikhonov:
    """``J_reg = alpha/2 * V * sum_{interior faces} ((m_r - m_l) / d_a)**2`` and its gradient.

    Args:
        grid: the :class:`~hpcinv.model.grid.Grid`.
        backend: compute backend.
        alpha: weight ``>= 0``.
        dtype: field dtype.
    """

    def __init__(self, grid, backend, alpha: float, dtype=np.float64):
        try:
            alpha = float(alpha)
        except (TypeError, ValueError):
            raise ConfigError(f"Tikhonov alpha must be a number, got {alpha!r}") from None
        if not (math.isfinite(alpha) and alpha >= 0):
            raise ConfigError(f"Tikhonov alpha must be finite and >= 0, got {alpha}")
        self.alpha = alpha
        self._b = _Base(grid, backend, dtype)
        self._k = self._b._kernel(tikhonov_kernel(grid.ndim))
        self.volume = float(np.prod(grid.spacing))
        self._inv_d2 = tuple(1.0 / h**2 for h in grid.spacing)
    def value_and_gradient(self, m, out=None, accumulate: bool = False):
        """``(J_reg, g)``: ``g = alpha V (-Lap_N m)`` on owned cells. With ``accumulate`` the
        gradient is added to ``out`` (e.g. the misfit gradient), else ``out`` (or a new array) is
        overwritten. ``J_reg`` is the same on every rank (one MPI SUM allreduce). The copy of
        ``m`` (with ghosts) and the per-cell energies are two lent scratch fields."""
        b = self._b
        bk = b.backend
        with bk.scratch(b.decomp.padded_shape, b.dtype, 2) as (mg, E):
            b._load(mg, m, "logK")
            b.halo.exchange(mg)
            if out is None:
                out = bk.zeros(b.decomp.padded_shape, b.dtype)
            else:
                b._check(out, "out")
                if not accumulate:
                    bk.fill(out, 0)
            # bound for this call only: a kept binding would keep the caller's ``out`` (a
            # gradient) alive after the caller let it go
            bk.launch(self._k.bind(m=mg, G=out, E=E, inv_d2=self._inv_d2,
                                   scale=self.alpha * self.volume, **b.ints), b.box)
            local = bk.sum(E, region=b.decomp.owned())
        scale = self.alpha * self.volume
        J = 0.5 * scale * b.decomp.comm.allreduce(local, op=MPI.SUM)
        return J, out

    def value(self, m) -> float:
        """``J_reg`` alone."""
        return self.value_and_gradient(m)[0]

    def gradient(self, m, out=None, accumulate: bool = False):
        """The gradient alone (see :meth:`value_and_gradient`)."""
        return self.value_and_gradient(m, out, accumulate)[1]
