"""Point observations of pressure and the gauge-invariant (demeaned) misfit.

Each observation at physical coordinates ``x_k`` samples the cell
``floor((x_k - xc_0) / d)`` per dimension (``xc_0`` the first cell centre), clamped to the grid:
the workshop's rule. Only the rank owning that cell evaluates it.

With no-flux walls on every side the pressure is defined up to a constant (which the APT
iteration fixes through K), so the misfit compares pressure *differences*: simulated and observed
values are each demeaned over the observations,

    J = 1/2 sum_k (r_k)^2,   r_k = (P_k - mean(P)) - (Pobs_k - mean(Pobs)),   dJ/dP_k = r_k,

which is invariant to the constant and gives an adjoint source that sums to zero. The mean adds
one scalar sum reduction (MPI SUM) per misfit evaluation.
"""
from __future__ import annotations

import numpy as np
from mpi4py import MPI

from ..errors import ConfigError


class Observations:
    """Observation points on a grid, and the demeaned least-squares misfit.

    Args:
        grid: the :class:`~hpcinv.grid.Grid`.
        points: array ``(nobs, ndim)`` of physical coordinates.
        values: observed pressures ``(nobs,)`` (``None``: to be set with :meth:`record`).
    """

    def __init__(self, grid, points, values=None):
        pts = np.asarray(points, dtype=float)
        if pts.ndim != 2 or pts.shape[1] != grid.ndim or len(pts) == 0:
            raise ConfigError(f"observation points must have shape (n, {grid.ndim}), "
                              f"got {pts.shape}")
        self.grid, self.points = grid, pts
        idx = []
        for a in range(grid.ndim):
            xc0 = grid.extent[a][0] + 0.5 * grid.spacing[a]
            i = np.floor((pts[:, a] - xc0) / grid.spacing[a]).astype(int)
            idx.append(np.clip(i, 0, grid.shape[a] - 1))
        self.cells = np.stack(idx, axis=1)            # global cell index per observation
        local = [grid.decomp.global_to_local(c) for c in self.cells]
        self._mine = np.array([k for k, l in enumerate(local) if l is not None], dtype=int)
        self._local = tuple(np.array([local[k][a] for k in self._mine], dtype=int)
                            for a in range(grid.ndim))
        self.values = None if values is None else np.asarray(values, dtype=float)

    def __len__(self):
        return len(self.points)

    def sample(self, Pf, to_host=np.asarray) -> np.ndarray:
        """Simulated values at every observation, on every rank (one SUM reduction)."""
        out = np.zeros(len(self))
        if len(self._mine):
            out[self._mine] = to_host(Pf[self._local])
        return self.grid.comm.allreduce(out, op=MPI.SUM)

    def record(self, Pf, to_host=np.asarray):
        """Set the observed values from a (true-model) pressure field."""
        self.values = self.sample(Pf, to_host)

    def residuals(self, Pf, to_host=np.asarray) -> np.ndarray:
        """Demeaned residuals ``r_k`` (see module doc)."""
        if self.values is None:
            raise ConfigError("observations have no values: record() or give values")
        sim = self.sample(Pf, to_host)
        return (sim - sim.mean()) - (self.values - self.values.mean())

    def misfit_and_source(self, Pf, xp=np, to_host=np.asarray):
        """``(J, dJ/dPf)``: the misfit and the adjoint source as a padded local array."""
        r = self.residuals(Pf, to_host)
        rhs = np.zeros(self.grid.decomp.padded_shape)
        np.add.at(rhs, self._local, r[self._mine])   # two observations may share a cell
        return 0.5 * float(r @ r), xp.asarray(rhs)
