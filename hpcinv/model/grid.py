"""A distributed Cartesian grid of cells: global geometry plus this rank's block of it."""
from __future__ import annotations

import numpy as np

from ..errors import ConfigError, plain
from ..parallel import Decomposition

MIN_CELLS = 3


class Grid:
    """Global cell grid over a box, split over MPI ranks.

    Args:
        shape: global cells per dimension ``(nx, ny[, nz])``, each >= 3.
        extent: ``((x0, x1), (y0, y1)[, (z0, z1)])`` physical bounds (default unit box).
        comm: MPI communicator (default ``MPI.COMM_WORLD``).
        dims: ranks per dimension (``None``/0 entries: chosen by ``MPI.Compute_dims``).

    Attributes:
        spacing: cell size per dimension ``(dx, dy[, dz])``.
        decomp: the :class:`~hpcinv.parallel.Decomposition` (local shape, offsets, neighbours).
    """

    def __init__(self, shape, extent=None, comm=None, dims=None):
        shape = tuple(shape)
        if len(shape) not in (2, 3):
            raise ConfigError(f"grid must have 2 or 3 dimensions, got {len(shape)}: {shape}")
        for ax, n in enumerate(shape):
            if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < MIN_CELLS:
                raise ConfigError(f"grid size n{'xyz'[ax]} must be an integer >= {MIN_CELLS}, "
                                  f"got {plain(n)!r}")
        if extent is None:
            extent = tuple((0.0, 1.0) for _ in shape)
        extent = tuple((float(a), float(b)) for a, b in extent)
        if len(extent) != len(shape):
            raise ConfigError(f"extent has {len(extent)} intervals for a {len(shape)}D grid")
        for ax, (a, b) in enumerate(extent):
            if not np.isfinite(a) or not np.isfinite(b) or b <= a:
                raise ConfigError(f"extent along {'xyz'[ax]} must be finite with x1 > x0, "
                                  f"got ({a}, {b})")
        self.shape = tuple(int(n) for n in shape)
        self.extent = extent
        self.ndim = len(shape)
        self.decomp = Decomposition(self.shape, comm=comm, dims=dims)
        self.spacing = tuple((b - a) / n for (a, b), n in zip(extent, self.shape))
        self.lengths = tuple(b - a for a, b in extent)

    @property
    def comm(self):
        return self.decomp.comm

    def centres(self, axis: int) -> np.ndarray:
        """Cell-centre coordinates of the padded local block along ``axis`` (ghosts included)."""
        d = self.decomp
        j = np.arange(d.padded_shape[axis]) - 1 + d.offset[axis]
        return self.extent[axis][0] + (j + 0.5) * self.spacing[axis]

    def global_centres(self, axis: int) -> np.ndarray:
        """Cell-centre coordinates of the whole grid along ``axis``."""
        return self.extent[axis][0] + (np.arange(self.shape[axis]) + 0.5) * self.spacing[axis]

    def mesh(self):
        """Broadcastable padded local centre coordinates ``(X, Y[, Z])`` (``np.ix_`` style)."""
        return np.ix_(*[self.centres(a) for a in range(self.ndim)])

    def describe(self) -> dict:
        return {"shape": list(self.shape), "extent": [list(e) for e in self.extent],
                "spacing": list(self.spacing), **self.decomp.describe()}
