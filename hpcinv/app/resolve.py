"""The fully resolved config of a run (issue 13): every default the run takes from elsewhere --
the built-in problem's grid, domain, permeability model and wells, the workshop's observation
points, the PT solvers' ``cfl`` and ``maxiter``, the smoothing coefficient, the initial model,
the adjoint memory, the gradient check -- written into the config, so that a run directory's
``config.toml`` is the complete problem and ``hpcinv invert RUN/config.toml -o OTHER`` reruns
the same run bitwise.

Left as given: ``[parallel]`` (the machine's: backend, dims, threads, overlap), ``[output]``, and
``solver.maxiter``/``adjoint.maxiter`` of a coarse-to-fine run (unset, each level's budget is
1000 x its own largest size). Resolving is idempotent.
"""
from __future__ import annotations

import copy

from ..config.schema import PermeabilityConfig, WellConfig
from ..config.validate import validate_config
from ..inverse.regularisation import default_smoothing_coefficient
from ..model import geothermal
from .coarsening import prediction_factor
from .assembly import adjoint_memory, forward_memory, gradient_accuracy, pt_params


def resolved(cfg):
    """A validated copy of the validated ``cfg`` with every default filled in (see the module
    doc); the run it describes is bitwise the run of ``cfg``."""
    c = copy.deepcopy(cfg)
    shape, extent = cfg.grid_shape(), cfg.extent()
    nd = len(shape)
    for axis, n in zip("xyz", shape):
        setattr(c.grid, f"n{axis}", int(n))
    c.grid.extent = [[float(a), float(b)] for a, b in extent]
    if c.problem.name in geothermal.DEFAULT_SHAPES:       # the built-in problem's own model
        if c.permeability.type is None:
            c.permeability = PermeabilityConfig(type="barrier")
        if not c.wells:
            c.wells = [WellConfig(position=[float(v) for v in pos], rate=float(rate),
                                  z_range=None if z is None else [float(v) for v in z])
                       for pos, rate, z in geothermal.well_specs(nd)]
    _resolve_permeability(c.permeability, c.problem, nd)
    o = c.observations
    if o.points == "workshop":
        o.points = "grid"
        o.grid = {a: [float(lo), float(hi), int(n)]
                  for a, (lo, hi, n) in geothermal.workshop_grid(nd).items()}
    if c.solver.method == "apt":
        levels = len(c.inversion.level_factors()) > 1
        for section in (c.solver, c.adjoint):
            p = pt_params(section).resolved(shape)
            section.cfl = p.cfl
            if not levels:
                section.maxiter = p.maxiter
    r = c.regularisation
    if r.smoothing_coefficient is None:
        r.smoothing_coefficient = default_smoothing_coefficient(nd)
    i = c.inversion
    if i.initial_file is None and i.initial_logK is None:
        i.initial_logK = 0.0
    if i.adjoint_memory is None:
        i.adjoint_memory = adjoint_memory(cfg)
    if i.forward_prediction is None:
        i.forward_prediction = prediction_factor(cfg, forward_memory(cfg))
    if i.forward_memory is None:
        i.forward_memory = forward_memory(cfg)
    if i.gradient_accuracy is None:
        i.gradient_accuracy = gradient_accuracy(cfg)
    return validate_config(c)


def _resolve_permeability(p, problem, nd):
    """The background and barrier values from ``[problem]``, the barrier box of the
    geothermal problems when none is given."""
    if p.type in ("constant", "barrier", "layered") and p.value is None:
        p.value = p.background(problem)
    if p.type == "barrier":
        box = p.barrier if p.barrier is not None else {
            "xyz"[ax]: [float(a), float(b)] for ax, (a, b) in geothermal.barrier_bounds(nd).items()}
        p.barrier = {**box, "value": float(box.get("value", problem.k_barrier))}
