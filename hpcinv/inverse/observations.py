"""Point observations of pressure: the observation operator, its transpose and the misfit.

Observation operator ``S`` (``Pf`` -> simulated values at the points ``x_k``), two rules:

* ``method="nearest"`` (default, the JuliaCon 2023 workshop's rule): the value of the cell
  ``i_a = floor((x_a - xc_0) / d_a)`` per dimension (``xc_0`` the first cell centre), clamped to
  ``[0, n_a - 1]``. (Strictly the cell whose centre is the nearest one *below* ``x``.)
* ``method="linear"``: bilinear (2D) / trilinear (3D) interpolation between the ``2**ndim``
  cell centres around ``x``. Per axis ``t = (x_a - xc_0) / d_a``, ``i0 = clip(floor(t), 0,
  n_a - 2)``, weight ``w = clip(t - i0, 0, 1)`` on centre ``i0 + 1`` and ``1 - w`` on ``i0``:
  between a wall and the first (last) centre the value of that centre is used (constant
  extrapolation over the boundary half-cells). The weights of a point sum to 1.

Both are stored the same way: ``nobs x ncorner`` global cell indices and weights
(``ncorner = 1`` or ``2**ndim``). The transpose ``S^T`` spreads a value per observation onto the
corner cells with the same weights (:meth:`Observations.spread`).

**Bitwise decomposition invariance.** :meth:`Observations.sample` never adds partial sums of
different ranks: each rank writes the corner values it owns into an ``(nobs, ncorner)`` array
(zeros elsewhere), one MPI SUM allreduce fills it (every entry has exactly one non-zero
contributor, so the sum is exact), and every rank combines the corners with the weights in the
same fixed order. The misfit is then computed redundantly on every rank from full-length
arrays. Values, misfit and adjoint source are therefore bitwise identical for any number of
ranks. That allreduce (``nobs * ncorner`` doubles) is the only reduction a misfit evaluation
adds; the means below cost none.

**Misfit.** With raw differences ``d_k = P_k - Pobs_k``, standard deviations ``sigma_k``
(default 1) and weights ``W_k = 1 / sigma_k**2``::

    demean=False:  J = 1/2 sum_k W_k d_k**2
    demean=True:   J = min_c 1/2 sum_k W_k (d_k - c)**2

``demean=True`` (default) is the gauge-invariant misfit for problems whose pressure is defined
up to a constant (no-flux on every side): a constant added to ``P`` shifts every ``d_k`` and
the optimal ``c`` alike. Derivation: ``dJ/dc = -sum_k W_k (d_k - c) = 0`` gives the *weighted*
mean ``c* = sum_k W_k d_k / sum_k W_k`` (``= mean(P) - mean(Pobs)`` for equal sigmas: the
previous rule ``r_k = (P_k - mean P) - (Pobs_k - mean Pobs)``). With normalised residuals
``r_k = (d_k - c*) / sigma_k``, ``J = 1/2 sum_k r_k**2``, and since ``dJ/dc = 0`` at ``c*``
(envelope theorem; explicitly ``dJ/dP_k = W_k (d_k - c*) - (dc*/dP_k) sum_j W_j (d_j - c*)``
and the last sum vanishes)::

    dJ/dP_k = W_k (d_k - c*) = r_k / sigma_k,     sum_k dJ/dP_k = 0.

The adjoint source ``S^T (dJ/dP)`` therefore sums to zero over the cells (the interpolation
weights of each point sum to 1): the solvability condition of the singular adjoint system.
``demean=False`` is the plain weighted least-squares misfit (``c* = 0``), for problems with a
fixed-pressure side. ``tests/test_observations.py`` checks ``dJ/dP`` by finite differences.
"""
from __future__ import annotations

import numpy as np
from mpi4py import MPI

from ..errors import ConfigError

METHODS = ("nearest", "linear")


def _fmt(p) -> str:
    return "(" + ", ".join(f"{v:g}" for v in p) + ")"


class Observations:
    """Observation points on a grid, the observation operator and the least-squares misfit.

    Args:
        grid: the :class:`~hpcinv.model.grid.Grid`.
        points: array ``(nobs, ndim)`` of physical coordinates, inside the domain (walls
            included).
        values: observed pressures ``(nobs,)``, finite (``None``: set later with :meth:`record`
            or by assigning :attr:`values`).
        sigma: standard deviations, a positive finite scalar or ``(nobs,)`` array (``None``: 1).
        method: ``"nearest"`` (workshop rule) or ``"linear"`` (bi/trilinear).
        demean: ``True`` for the gauge-invariant misfit (all-no-flux problems), ``False`` for
            the plain misfit (a fixed-pressure side). See the module docstring.

    Attributes:
        cells: ``(nobs, ncorner, ndim)`` global cell indices of the corners of each point.
        weights: ``(nobs, ncorner)`` interpolation weights (rows sum to 1).

    Raises:
        ConfigError: wrong shapes, a point outside the domain or not finite, non-finite values,
            a non-positive or non-finite sigma, an unknown method.
    """

    def __init__(self, grid, points, values=None, sigma=None, method: str = "nearest",
                 demean: bool = True):
        nd = grid.ndim
        try:
            pts = np.array(points, dtype=float)
        except (TypeError, ValueError):
            raise ConfigError("observation points must be a numeric array of shape "
                              f"(n, {nd})") from None
        if pts.ndim != 2 or pts.shape[1] != nd or len(pts) == 0:
            raise ConfigError(f"observation points must have shape (n, {nd}) with n >= 1, "
                              f"got {pts.shape}")
        if method not in METHODS:
            raise ConfigError(f"unknown observation method {method!r}; choose one of "
                              f"{', '.join(METHODS)}")
        for k, p in enumerate(pts):
            if not np.all(np.isfinite(p)):
                raise ConfigError(f"observation point {k} {_fmt(p)} is not finite")
            for a in range(nd):
                x0, x1 = grid.extent[a]
                if not x0 <= p[a] <= x1:
                    box = " x ".join(f"[{lo:g}, {hi:g}]" for lo, hi in grid.extent)
                    raise ConfigError(f"observation point {k} {_fmt(p)} lies outside the "
                                      f"domain {box}")
        self.grid, self.points, self.method = grid, pts, method
        self.demean = bool(demean)
        self.cells, self.weights = self._stencil(grid, pts, method)
        self._build_local()
        self.sigma = sigma
        self._values = None
        self.values = values

    # --- geometry ------------------------------------------------------------------------
    @staticmethod
    def _stencil(grid, pts, method):
        nd, nobs = grid.ndim, len(pts)
        if method == "nearest":
            idx = []
            for a in range(nd):
                xc0 = grid.extent[a][0] + 0.5 * grid.spacing[a]
                i = np.floor((pts[:, a] - xc0) / grid.spacing[a]).astype(np.int64)
                idx.append(np.clip(i, 0, grid.shape[a] - 1))
            return np.stack(idx, axis=1)[:, None, :], np.ones((nobs, 1))
        i0, w = [], []
        for a in range(nd):
            xc0 = grid.extent[a][0] + 0.5 * grid.spacing[a]
            t = (pts[:, a] - xc0) / grid.spacing[a]
            i = np.clip(np.floor(t), 0, grid.shape[a] - 2)
            i0.append(i.astype(np.int64))
            w.append(np.clip(t - i, 0.0, 1.0))
        nc = 2 ** nd
        cells = np.empty((nobs, nc, nd), dtype=np.int64)
        weights = np.ones((nobs, nc))
        for c in range(nc):                  # corner bits: axis a offset = (c >> (nd-1-a)) & 1
            for a in range(nd):
                b = (c >> (nd - 1 - a)) & 1
                cells[:, c, a] = i0[a] + b
                weights[:, c] *= w[a] if b else 1.0 - w[a]
        return cells, weights

    def _build_local(self):
        """Corners owned by this rank, in the fixed (observation, corner) order."""
        d = self.grid.decomp
        mine, local = [], []
        nobs, nc = self.weights.shape
        for k in range(nobs):
            for c in range(nc):
                loc = d.global_to_local(self.cells[k, c])
                if loc is not None:
                    mine.append((k, c))
                    local.append(loc)
        self._mine = tuple(np.array([m[j] for m in mine], dtype=np.int64) for j in range(2))
        self._local = tuple(np.array([l[a] for l in local], dtype=np.int64)
                            for a in range(self.grid.ndim))

    def __len__(self):
        return len(self.points)

    # --- values and sigma ----------------------------------------------------------------
    @property
    def values(self):
        """Observed values ``(nobs,)`` or ``None``."""
        return self._values

    @values.setter
    def values(self, v):
        if v is None:
            self._values = None
            return
        v = np.array(v, dtype=float)
        if v.shape != (len(self),):
            raise ConfigError(f"observation values must have shape ({len(self)},), got {v.shape}")
        bad = np.nonzero(~np.isfinite(v))[0]
        if len(bad):
            k = int(bad[0])
            raise ConfigError(f"observation value {k} at {_fmt(self.points[k])} is not finite "
                              f"({v[k]}); {len(bad)} non-finite value(s) in all")
        self._values = v

    @property
    def sigma(self) -> np.ndarray:
        """Standard deviations ``(nobs,)`` (ones by default)."""
        return self._sigma

    @sigma.setter
    def sigma(self, s):
        if s is None:
            s = 1.0
        s = np.array(s, dtype=float)
        if s.ndim == 0:
            s = np.full(len(self), float(s))
        if s.shape != (len(self),):
            raise ConfigError(f"observation sigma must be a scalar or have shape ({len(self)},), "
                              f"got {s.shape}")
        bad = np.nonzero(~(np.isfinite(s) & (s > 0)))[0]
        if len(bad):
            k = int(bad[0])
            raise ConfigError(f"observation sigma {k} must be positive and finite, got {s[k]}")
        self._sigma = s

    # --- the observation operator S and its transpose -------------------------------------
    def sample(self, Pf, backend=None) -> np.ndarray:
        """``S Pf``: simulated values ``(nobs,)``, identical on every rank (one SUM allreduce of
        an ``(nobs, ncorner)`` array whose entries each have a single contributor).

        ``Pf``: padded local array, a backend array of ``backend`` (read with one
        ``backend.gather``), or a host NumPy array when ``backend`` is ``None``."""
        corners = np.zeros(self.weights.shape)
        if len(self._mine[0]):
            corners[self._mine] = (Pf[self._local] if backend is None
                                   else backend.gather(Pf, self._local))
        corners += 0.0                       # -0.0 -> +0.0: same bits as a multi-rank sum
        corners = self.grid.comm.allreduce(corners, op=MPI.SUM)
        out = corners[:, 0] * self.weights[:, 0]
        for c in range(1, self.weights.shape[1]):   # fixed order on every rank
            out = out + corners[:, c] * self.weights[:, c]
        return out

    def spread(self, r, backend=None, dtype=None):
        """``S^T r``: a padded local array (owned cells) with ``w_kc r_k`` added at the corner
        cells of each observation; ``r`` is the full-length ``(nobs,)`` array (same on every
        rank). Contributions to one cell are added in (observation, corner) order.

        Returns a new array of ``backend`` (uploaded), or a NumPy array when ``backend`` is
        ``None``; of ``dtype`` (default float64)."""
        r = np.asarray(r, dtype=float)
        if r.shape != (len(self),):
            raise ConfigError(f"spread: expected {len(self)} values, got shape {r.shape}")
        out = np.zeros(self.grid.decomp.padded_shape)
        k, c = self._mine
        np.add.at(out, self._local, self.weights[k, c] * r[k])   # corners may share a cell
        if backend is not None:
            return backend.upload(out, dtype)
        return np.asarray(out, dtype=dtype) if dtype is not None else out

    # --- misfit ------------------------------------------------------------------------------
    def record(self, Pf, backend=None):
        """Set the observed values from a (true-model) pressure field (``backend``: as for
        :meth:`sample`)."""
        self.values = self.sample(Pf, backend)

    def _need_values(self):
        if self._values is None:
            raise ConfigError("observations have no values: record() or give values")

    def misfit_from_values(self, sim):
        """``(J, r, dJ/dP)`` from simulated values ``sim`` (``(nobs,)``), with the normalised
        residuals ``r_k = (d_k - c*) / sigma_k`` and ``dJ/dP_k = r_k / sigma_k``."""
        self._need_values()
        d = np.asarray(sim, dtype=float) - self._values
        if self.demean:
            W = 1.0 / self._sigma**2
            d = d - np.sum(W * d) / np.sum(W)
        r = d / self._sigma
        return 0.5 * float(r @ r), r, r / self._sigma

    def residuals(self, Pf, backend=None) -> np.ndarray:
        """Normalised residuals ``r_k`` (demeaned when ``demean``; see the module docstring)."""
        self._need_values()
        return self.misfit_from_values(self.sample(Pf, backend))[1]

    def misfit(self, Pf, backend=None) -> float:
        """``J`` (identical on every rank)."""
        self._need_values()
        return self.misfit_from_values(self.sample(Pf, backend))[0]

    def misfit_and_source(self, Pf, backend=None):
        """``(J, dJ/dPf)``: the misfit and the adjoint source ``S^T dJ/dP`` as a padded local
        array of ``backend`` (a NumPy array when ``None``), of the dtype of ``Pf``."""
        self._need_values()
        J, _, dJdP = self.misfit_from_values(self.sample(Pf, backend))
        return J, self.spread(dJdP, backend, dtype=getattr(Pf, "dtype", None))
