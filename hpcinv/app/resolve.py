"""The fully resolved config of a run (issue 13), and every rule that fills in a default the
config leaves open (issue 21: here only). Resolving writes into the config every default the
run takes from elsewhere -- the built-in problem's grid, domain, permeability model and wells,
the workshop's observation points, ``inversion.levels = "auto"``'s factors, the PT solvers'
``cfl`` and ``maxiter``, the smoothing
coefficient, the initial model, the warm starts' memories and coarse prediction, the gradient
check -- so that a run directory's ``config.toml`` is the complete problem and ``hpcinv invert
RUN/config.toml -o OTHER`` reruns the same run bitwise; :func:`~hpcinv.app.assembly.build`
reads the resolved values.

:func:`level_config` derives the same problem on a coarser grid: the config of a coarse-to-fine
level (:mod:`hpcinv.app.levels`) and of the coarse grid that corrects forward warm starts
(:mod:`hpcinv.inverse.forward_prediction`).

Left as given: ``[parallel]`` (the machine's: backend, dims, threads, overlap), ``[output]``, and
``solver.maxiter``/``adjoint.maxiter`` of a coarse-to-fine run (unset, each level's budget is
1000 x its own largest size; a level's automatic ``forward_prediction`` is chosen on its own grid
by :func:`prediction_factor`). Resolving is idempotent.
"""
from __future__ import annotations

import copy

from ..config.schema import PermeabilityConfig, WellConfig
from ..config.validate import validate_config
from ..inverse.regularisation import default_smoothing_coefficient
from ..model import geothermal
from ..parallel.transfer import coarse_shape
from ..solvers import PTParams
from .level_plan import resolve_factors

#: Adjoint solutions kept by default for the adjoint warm start (adaptive runs).
ADJOINT_MEMORY = 6
#: Earlier forward solutions kept by default for the forward warm start (adaptive runs):
#: measured in docs/performance.md, section "Inversion cost".
FORWARD_MEMORY = 3
#: Default of ``inversion.gradient_accuracy`` per method (0: no check).
GRADIENT_ACCURACY = {"gd": 0.1, "lbfgs": 0.0}
#: The automatic forward-prediction factor keeps at least this many coarse cells per axis.
PREDICTION_MIN_CELLS = 8
#: Factors tried, in order, by the automatic choice.
PREDICTION_FACTORS = (4, 2)


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
    if c.inversion.levels == "auto":        # the factors, once (app/level_plan.py)
        c.inversion.levels = resolve_factors(c)
        c.inversion.level_iterations = "auto" if len(c.inversion.levels) > 1 else None
    if c.solver.method == "apt":
        levels = len(c.inversion.level_factors()) > 1
        for section in (c.solver, c.adjoint):
            p = PTParams(cfl=section.cfl, maxiter=section.maxiter).resolved(shape)
            section.cfl = p.cfl
            if not levels:
                section.maxiter = p.maxiter
    r = c.regularisation
    if r.smoothing_coefficient is None:
        r.smoothing_coefficient = default_smoothing_coefficient(nd)
    _resolve_inversion(c.inversion, cfg, shape)
    return validate_config(c)


def _resolve_permeability(p, problem, nd):
    """The background and barrier values from ``[problem]``, the barrier box of the
    geothermal problems when none is given."""
    if p.type in ("constant", "barrier", "layered") and p.value is None:
        p.value = p.background(problem)
    if p.type == "barrier":
        bounds = geothermal.barrier_bounds(nd).items()
        box = p.barrier if p.barrier is not None else {
            "xyz"[ax]: [float(a), float(b)] for ax, (a, b) in bounds}
        p.barrier = {**box, "value": float(box.get("value", problem.k_barrier))}


def _resolve_inversion(i, cfg, shape):
    """``[inversion]`` ``i`` (of the copy) from ``cfg`` (as given, on the grid ``shape``): the
    initial model and the warm starts' defaults. Without warm starts the memories and the prediction are 0."""
    if i.initial_file is None and i.initial_logK is None:
        i.initial_logK = 0.0
    auto = adaptive(cfg) and i.warm_start      # adaptive: APT solves only
    if i.adjoint_memory is None or not i.warm_start:
        i.adjoint_memory = ADJOINT_MEMORY if auto else 0
    fm = i.forward_memory
    if fm is None:
        fm = FORWARD_MEMORY if auto else 0
    if not (i.warm_start and cfg.solver.method == "apt"):
        fm = 0          # the forward subspace starts from the APT solver's fields
    i.forward_prediction = prediction_factor(cfg, shape, fm)
    i.forward_memory = fm
    if i.gradient_accuracy is None:
        i.gradient_accuracy = GRADIENT_ACCURACY[i.method]


def adaptive(cfg) -> bool:
    """Whether the inversion adapts its solve tolerances (APT solves only)."""
    return cfg.inversion.adaptive_tolerance and cfg.solver.method == "apt"


def prediction_factor(cfg, shape, forward_memory: int = 0) -> int:
    """The coarsening factor of the forward warm-start correction
    (``inversion.forward_prediction``; 0: off) of a run of ``cfg`` on the grid ``shape`` whose
    forward subspace keeps ``forward_memory`` solutions. Unset: off when the subspace is on (the two are alternatives:
    docs/performance.md); else, with adaptive tolerances, warm starts and APT solves, the first
    of :data:`PREDICTION_FACTORS` that leaves at least :data:`PREDICTION_MIN_CELLS` cells on
    every axis, else off; off otherwise (so ``adaptive_tolerance = false`` stays today's run).
    Off without warm starts."""
    inv = cfg.inversion
    if not inv.warm_start:
        return 0
    f = inv.forward_prediction
    if f is not None:
        return f
    if forward_memory > 0 or not adaptive(cfg):
        return 0
    for f in PREDICTION_FACTORS:
        if min(coarse_shape(shape, f)) >= PREDICTION_MIN_CELLS:
            return f
    return 0


def level_config(cfg, factor: int):
    """A copy of ``cfg`` whose grid is coarsened by ``factor`` (everything else the same; a
    ``file`` permeability and initial model are dropped: the truth exists on the fine grid
    only; the smoothing keeps its physical length unless ``level_smoothing = "same"``; a
    ``forward_prediction`` factor other than 0 is the fine grid's, so the coarse level chooses
    its own automatically); a config of one grid, without ``levels``, which
    :func:`resolved` completes on that grid."""
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
    i = c.inversion          # one grid: the levels are the caller's (app/levels.py)
    i.levels = i.level_iterations = i.level_misfit_ratio = i.level_smoothing = None
    return c

