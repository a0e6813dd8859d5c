"""The same problem on a coarser grid: the configs of coarse-to-fine levels
(:mod:`hpcinv.app.levels`) and of the coarse grid that corrects forward warm starts
(:mod:`hpcinv.inverse.forward_prediction`; its automatic factor is a default, chosen in
:func:`hpcinv.app.resolve.prediction_factor`)."""
from __future__ import annotations

import copy

from ..parallel.transfer import coarse_shape


def level_shapes(cfg) -> list[tuple]:
    """The grid shape of every level (``ceil(n / f)`` per axis)."""
    return [coarse_shape(cfg.grid_shape(), f) for f in cfg.inversion.level_factors()]


def level_config(cfg, factor: int):
    """A copy of ``cfg`` whose grid is coarsened by ``factor`` (everything else the same; a
    ``file`` permeability and initial model are dropped: the truth exists on the fine grid
    only; the smoothing keeps its physical length unless ``level_smoothing = "same"``; a
    ``forward_prediction`` factor other than 0 is the fine grid's, so the coarse level chooses
    its own automatically)."""
    c = copy.deepcopy(cfg)
    shape = coarse_shape(cfg.grid_shape(), factor)
    c.grid.nx, c.grid.ny = shape[0], shape[1]
    if len(shape) == 3:
        c.grid.nz = shape[2]
    if factor != 1:
        if cfg.inversion.level_smoothing != "same":   # default: the same smoothing length
            c.regularisation.smoothing_steps = max(1, round(
                cfg.regularisation.smoothing_steps / factor ** 2)) \
                if cfg.regularisation.smoothing_steps else 0
        if c.permeability.type == "file":
            c.permeability = type(c.permeability)(type="constant")
        c.inversion.initial_file, c.inversion.initial_logK = None, None
        c.inversion.initial_dataset = "logK"
        if c.inversion.forward_prediction != 0:   # the factor was the fine grid's: per level
            c.inversion.forward_prediction = None
    return c

