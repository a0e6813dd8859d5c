"""The built-in geothermal problems' facts, in one place: domain, default grids, the
low-permeability barrier, the two wells and the workshop's observation points (JuliaCon 2023
workshop, Räss & Utkin; ``geothermal3d`` extends it in z).

:mod:`hpcinv.model.problems` builds the problems from these facts; the config layer takes its
extents and default sizes from here, and the figures their barrier box.
"""
from __future__ import annotations

import numpy as np

from ..errors import ConfigError

#: Domain ``((x0, x1), (y0, y1)[, (z0, z1)])`` per problem.
EXTENTS = {"geothermal2d": ((-1.0, 1.0), (0.0, 1.0)),
           "geothermal3d": ((-1.0, 1.0), (0.0, 1.0), (0.0, 1.0))}

#: Default cells per axis.
DEFAULT_SHAPES = {"geothermal2d": (255, 127), "geothermal3d": (127, 63, 63)}

#: The barrier: cells with centre ``a < x_axis <= b`` along every axis ``{axis: (a, b)}``
#: (z only in 3D).
BARRIER = {0: (-0.04, 0.04), 1: (0.3, 0.8), 2: (0.2, 0.8)}

#: The wells: ``((x, y), rate)``, injection then extraction; in 3D each is the column of cells
#: with centre in :data:`WELL_Z_RANGE`, the rate shared equally.
WELLS = (((-0.6, 0.45), 1.0), ((0.6, 0.45), -1.0))
WELL_Z_RANGE = (0.2, 0.8)


def barrier_bounds(ndim: int) -> dict:
    """The barrier box ``{axis: (a, b)}`` of the ``ndim``-D problem."""
    return {ax: BARRIER[ax] for ax in range(ndim)}


def well_specs(ndim: int):
    """``[(position, rate, z_range)]`` of the wells for :func:`~hpcinv.model.problems.place_wells`."""
    return [(pos, rate, WELL_Z_RANGE if ndim == 3 else None) for pos, rate in WELLS]


#: The workshop's observation grid per axis: ``(first, last, number)`` of a ``linspace``.
WORKSHOP_GRID = {"x": (-1 / 3, 1 / 3, 8), "y": (0.25, 0.85, 8), "z": (0.25, 0.75, 4)}


def workshop_grid(ndim: int) -> dict:
    """:data:`WORKSHOP_GRID` for an ``ndim``-D problem (the ``observations.grid`` form)."""
    if ndim not in (2, 3):
        raise ConfigError(f"workshop_points: ndim must be 2 or 3, got {ndim}")
    return {a: WORKSHOP_GRID[a] for a in "xyz"[:ndim]}


def grid_points(spec: dict, ndim: int) -> np.ndarray:
    """Points of a grid ``{x: (a, b, n), ...}``: ``linspace`` per axis,
    ``meshgrid(..., indexing="ij")``, x slowest; shape ``(n, ndim)``."""
    axes = [np.linspace(float(spec[a][0]), float(spec[a][1]), int(spec[a][2]))
            for a in "xyz"[:ndim]]
    return np.stack([m.ravel() for m in np.meshgrid(*axes, indexing="ij")], axis=1)


def workshop_points(ndim: int) -> np.ndarray:
    """The workshop's observation grid as an ``(n, ndim)`` array.

    2D: the 8 x 8 points ``x in linspace(-1/3, 1/3, 8)``, ``y in linspace(0.25, 0.85, 8)``.
    3D: the same x and y on the 4 levels ``z in linspace(0.25, 0.75, 4)`` (inside the slab
    ``0.2 < z <= 0.8`` of the barrier and the well screens), 256 points. Ordered with x slowest
    (``meshgrid(..., "ij")``).
    """
    return grid_points(workshop_grid(ndim), ndim)
