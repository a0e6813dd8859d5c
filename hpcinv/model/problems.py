"""Built-in problems: permeability K and source Qf on a distributed grid.

``geothermal2d`` is the JuliaCon 2023 workshop setup (Räss & Utkin): a low-permeability
barrier between an injection and an extraction well. ``geothermal3d`` extends it in z.
Fields are evaluated from global cell-centre coordinates on each rank's own block, so no rank
ever holds a global array.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from mpi4py import MPI

from ..errors import ConfigError
from . import geothermal
from .grid import Grid



@dataclass
class Well:
    """A source: global cell indices it occupies and its total rate (volume/time)."""
    position: tuple[float, ...]
    rate: float
    cells: list[tuple[int, ...]] = field(default_factory=list)


@dataclass
class Problem:
    """A steady Darcy problem on a distributed grid.

    Attributes:
        name: problem name.
        grid: the :class:`~hpcinv.model.grid.Grid`.
        K: permeability (over viscosity), padded local array, shape ``grid.decomp.padded_shape``;
           owned cells set, ghosts filled by the solver.
        Qf: source term (1/time), padded local array of the same shape, ghosts zero.
        wells: the wells, for output and figures.
        fixed_pressure: fixed-pressure sides ``{(axis, side): pressure}`` (side 0 = lower,
            1 = upper); every other side is no-flux.
    """
    name: str
    grid: Grid
    K: np.ndarray
    Qf: np.ndarray
    wells: list[Well] = field(default_factory=list)
    fixed_pressure: dict = field(default_factory=dict)

    def copy(self, qf: bool = True) -> "Problem":
        """An independent copy (own ``K`` and ``Qf`` arrays; grid and wells shared, immutable):
        what an objective may modify while the true problem stays as it was. ``qf=False``
        shares ``Qf`` instead (one host field less), for a user that changes ``K`` only:
        nothing writes a problem's ``Qf`` once it is built (solvers upload their own copy)."""
        return Problem(self.name, self.grid, self.K.copy(), self.Qf.copy() if qf else self.Qf,
                       list(self.wells), dict(self.fixed_pressure))

    @property
    def gauge_free(self) -> bool:
        """True when no side fixes the pressure: Pf is defined up to a constant."""
        return not self.fixed_pressure

    def validate(self):
        """Collective check that K is finite and positive on every rank, and that the
        fixed-pressure sides are well formed."""
        for key, value in self.fixed_pressure.items():
            if (not isinstance(key, tuple) or len(key) != 2 or key[0] not in range(self.grid.ndim)
                    or key[1] not in (0, 1)):
                raise ConfigError(f"fixed-pressure side {key!r} must be (axis, 0|1) with axis "
                                  f"< {self.grid.ndim}")
            if not np.isfinite(value):
                raise ConfigError(f"fixed pressure on side {key} must be finite, got {value}")
        own = self.grid.decomp.owned()
        k = self.K[own]
        bad = int(k.size and not (np.all(np.isfinite(k)) and np.all(k > 0)))
        kmin = float(np.nanmin(k)) if k.size and not np.all(np.isnan(k)) else float("nan")
        nbad = self.grid.comm.allreduce(bad, op=MPI.SUM)
        if nbad:
            nan = self.grid.comm.allreduce(int(np.isnan(k).any()), op=MPI.SUM)
            what = "NaN" if nan else f"min {self.grid.comm.allreduce(kmin, op=MPI.MIN):g}"
            raise ConfigError(f"permeability K must be finite and > 0 everywhere ({what} found)")


def _first_centre_above(centres: np.ndarray, x: float, clamp: bool = False) -> int:
    """Index of the cell whose centre lies in ``(x, x + d]``: the first centre above ``x``.

    ``clamp``: a point in the last half cell (above the last centre, still inside the domain)
    gets the last cell instead of an error."""
    i = int(np.searchsorted(centres, x, side="right"))
    if i >= len(centres):
        if clamp:
            return len(centres) - 1
        raise ConfigError(f"well position {x} lies outside the grid")
    return i


def box_mask(grid: Grid, bounds: dict) -> np.ndarray:
    """Boolean padded local array: cells whose centre satisfies ``a < x_axis <= b`` for every
    ``{axis: (a, b)}`` in ``bounds`` (axes left out are unbounded)."""
    coords = grid.mesh()
    mask = np.ones(grid.decomp.padded_shape, dtype=bool)
    for axis, (a, b) in bounds.items():
        mask &= (coords[axis] > a) & (coords[axis] <= b)
    return mask


def place_wells(grid: Grid, specs, what: str = "wells"):
    """Sources of point (or column) wells: ``(Qf, wells)``.

    ``specs``: ``[(position, rate, z_range), ...]``. Along every axis the well occupies the cell
    whose centre lies in ``(x_w, x_w + d]`` (the geothermal rule; a point in the last half cell
    gets the last cell). In 3D with ``z_range = (z0, z1)`` the well is the column of cells at
    ``(x_w, y_w)`` with centre ``z0 < z <= z1``, the rate shared equally. Each cell of a well
    gets ``rate / (cell volume * number of cells)``; wells sharing a cell add up. Errors name
    ``{what}[i]``.
    """
    d = grid.decomp
    Qf = np.zeros(d.padded_shape)
    wells = []
    vol = float(np.prod(grid.spacing))
    for i, (position, rate, z_range) in enumerate(specs):
        pos = tuple(float(v) for v in position)
        naxes = 2 if (grid.ndim == 3 and z_range is not None) else grid.ndim
        if len(pos) < naxes or len(pos) > grid.ndim:
            raise ConfigError(f"{what}[{i}].position must have {grid.ndim} coordinates"
                              f"{' (or 2 with z_range)' if grid.ndim == 3 else ''}, got {pos}")
        for ax in range(naxes):
            lo, hi = grid.extent[ax]
            if not (np.isfinite(pos[ax]) and lo <= pos[ax] <= hi):
                box = " x ".join(f"[{a:g}, {b:g}]" for a, b in grid.extent)
                raise ConfigError(f"{what}[{i}].position "
                                  f"({', '.join(f'{v:g}' for v in pos)}) lies outside the "
                                  f"domain {box}")
        idx = [_first_centre_above(grid.global_centres(ax), pos[ax], clamp=True)
               for ax in range(naxes)]
        if naxes == grid.ndim:
            cells = [tuple(idx)]
        else:
            z0, z1 = (float(v) for v in z_range)
            zc = grid.global_centres(2)
            cells = [(idx[0], idx[1], int(iz)) for iz in np.nonzero((zc > z0) & (zc <= z1))[0]]
            if not cells:
                raise ConfigError(f"{what}[{i}].z_range: no cell centre in {z0:g} < z <= {z1:g};"
                                  f" refine nz or widen the range")
            if len(pos) == 2:
                pos = pos + (0.5 * (z0 + z1),)
        value = float(rate) / (vol * len(cells))
        for c in cells:
            loc = d.global_to_local(c)
            if loc is not None:
                Qf[loc] += value
        wells.append(Well(pos, float(rate), [tuple(int(v) for v in c) for c in cells]))
    return Qf, wells


def _geothermal(grid: Grid, k_background: float, k_barrier: float, name: str) -> Problem:
    """A geothermal problem on ``grid`` from the facts in :mod:`hpcinv.model.geothermal`."""
    K = np.full(grid.decomp.padded_shape, float(k_background))
    K[box_mask(grid, geothermal.barrier_bounds(grid.ndim))] = float(k_barrier)
    Qf, wells = place_wells(grid, geothermal.well_specs(grid.ndim), f"{name} wells")
    _zero_ghosts(K, grid.decomp)
    return Problem(name, grid, K, Qf, wells)


def _zero_ghosts(a: np.ndarray, decomp):
    own = np.zeros(a.shape, dtype=bool)
    own[decomp.owned()] = True
    a[~own] = 0.0


def geothermal2d(shape=None, comm=None, dims=None, k_background=1.0, k_barrier=1e-6) -> Problem:
    """The workshop's 2D problem on x in [-1, 1], y in [0, 1] (default 255 x 127 cells).

    K = ``k_background``, except ``k_barrier`` on cells with centre -0.04 < x <= 0.04 and
    0.3 < y <= 0.8. Injection well +1/(dx dy) in the cell whose centre lies in
    (-0.6, -0.6 + dx] x (0.45, 0.45 + dy], extraction -1/(dx dy) likewise at (0.6, 0.45).
    """
    grid = Grid(shape or geothermal.DEFAULT_SHAPES["geothermal2d"],
                geothermal.EXTENTS["geothermal2d"], comm, dims)
    if grid.ndim != 2:
        raise ConfigError("geothermal2d needs a 2D grid (nx, ny)")
    return _geothermal(grid, k_background, k_barrier, "geothermal2d")


def geothermal3d(shape=None, comm=None, dims=None, k_background=1.0, k_barrier=1e-6) -> Problem:
    """The 2D problem extended in z in [0, 1]: the barrier spans 0.2 < z <= 0.8 and each well is
    the column of cells with centre 0.2 < z <= 0.8 at the 2D well position, total rate +-1."""
    grid = Grid(shape or geothermal.DEFAULT_SHAPES["geothermal3d"],
                geothermal.EXTENTS["geothermal3d"], comm, dims)
    if grid.ndim != 3:
        raise ConfigError("geothermal3d needs a 3D grid (nx, ny, nz)")
    return _geothermal(grid, k_background, k_barrier, "geothermal3d")


PROBLEMS = {"geothermal2d": geothermal2d, "geothermal3d": geothermal3d}


def periodic_block(shape, seed: int = 0) -> Problem:
    """A random problem on one rank (``COMM_SELF``) whose block is periodic along every axis, so
    it has a neighbour (itself) on every side: the layout of an interior rank of a large run, for
    launch counts, overlap and stream-checker tests. K = exp(N(0, 1)), Qf ~ N(0, 1) with zero
    mean (the periodic problem is solvable only then)."""
    from ..parallel import Decomposition
    grid = Grid(shape, comm=MPI.COMM_SELF)
    grid.decomp = Decomposition(grid.shape, comm=MPI.COMM_SELF, periods=(True,) * grid.ndim)
    rng = np.random.default_rng(seed)
    own = grid.decomp.owned()
    K = np.ones(grid.decomp.padded_shape)
    Qf = np.zeros(grid.decomp.padded_shape)
    K[own] = np.exp(rng.standard_normal(grid.shape))
    Qf[own] = rng.standard_normal(grid.shape)
    Qf[own] -= Qf[own].mean()
    return Problem("periodic", grid, K, Qf)


def build(name: str, shape=None, comm=None, dims=None, **kwargs) -> Problem:
    """A built-in problem by name."""
    if name == "custom":
        raise ConfigError("problem 'custom' is defined by a config ([grid] extent, "
                          "[permeability], [[wells]]): use hpcinv.app.scenario.true_problem(cfg)")
    if name not in PROBLEMS:
        import difflib
        close = difflib.get_close_matches(name, PROBLEMS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"unknown problem {name!r}{hint}; built-in: {', '.join(PROBLEMS)}")
    return PROBLEMS[name](shape, comm=comm, dims=dims, **kwargs)
