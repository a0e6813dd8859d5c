"""The one assembly: a validated config to everything a forward run, a gradient or an inversion
needs, as a frozen :class:`Setup`.

``build(cfg, comm)`` is, apart from :mod:`hpcinv.config`, the only code that reads a
:class:`~hpcinv.config.Config`: the CLI's ``forward``, ``gradient``, ``invert`` and ``demo``, the
self-test, the examples and the benchmarks call it and hand the library objects on. The flow is
one way::

    config -> backend (device from the node-local rank, one CUDA-aware decision)
           -> true problem (scenario) -> synthetic data (one forward solve, if needed)
           -> observations -> initial model -> objective (on a copy of the true problem)
           -> regularisation -> optimiser
"""
from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np
from mpi4py import MPI

from ..backend import Backend, make_backend
from ..config.library import pt_params
from ..errors import ConfigError
from ..inverse.gradient import AdjointGradient
from ..inverse.observations import Observations
from ..inverse.adaptive import AdaptiveTolerance
from ..inverse.optimise import OptimiserSettings, make_optimiser
from ..inverse.tolerance import TolerancePolicy, ToleranceSettings
from ..inverse.regularisation import GradientSmoother, Tikhonov
from ..inverse.warm_start import warm_starts
from ..model.grid import Grid
from ..model.problems import Problem
from ..parallel import decide_cuda_aware
from ..solvers import PTParams, make_darcy_solver
from . import scenario
from .fingerprint import config_fingerprint
from . import memory_budget
from .resolve import adaptive, level_config, resolved


@dataclass(frozen=True)
class RunSettings:
    """What the inversion run needs to know besides the objects it runs (from ``[inversion]``
    and ``[output]``)."""
    method: str
    iterations: int
    checkpoint_every: int
    misfit_ratio: float
    step_tol: float
    figures: bool


@dataclass(frozen=True)
class Setup:
    """Everything built from a config, ready to run.

    Attributes:
        comm: the communicator of the run.
        backend: the compute backend (device, threads, CUDA-aware decision).
        grid: the distributed grid.
        true: the true problem; nothing modifies it (the objective works on a copy).
        observations: the observations, with values (synthetic or from a file), or ``None``
            for :func:`build_forward`.
        logK0: the initial model, padded local host array (owned cells set).
        objective: the misfit and its adjoint gradient (:class:`AdjointGradient`).
        smoother: the gradient smoother of ``[regularisation]`` (``None``: no smoothing).
        tikhonov: the Tikhonov term (``None``: none).
        optimiser: the optimiser of ``[inversion]``, not started.
        optimiser_settings: its settings.
        forward_params, adjoint_params: the PT parameters of the two solves.
        solver_options: ``method``, ``overlap``, ``dtype`` of every Darcy solver of the run.
        run: the run's own settings (:class:`RunSettings`).
        fingerprint: ``(sha256, canonical JSON)`` of what a restart must not change
            (:mod:`hpcinv.app.fingerprint`; ``None`` for :func:`build_forward`).
        memory: the memory estimate per rank (:class:`~hpcinv.app.memory.Estimate`) that the
            memory check accepted, for the run header and ``memory.json``.
        config: the resolved config everything was built from (:mod:`hpcinv.app.resolve`).
    """
    comm: object
    backend: Backend
    grid: Grid
    true: Problem
    observations: Observations | None
    logK0: np.ndarray | None
    objective: AdjointGradient | None
    smoother: GradientSmoother | None
    tikhonov: Tikhonov | None
    optimiser: object
    optimiser_settings: OptimiserSettings | None
    forward_params: PTParams
    adjoint_params: PTParams
    solver_options: dict
    run: RunSettings
    fingerprint: tuple | None = None
    memory: object = None
    config: object = None

    @property
    def decomp(self):
        return self.grid.decomp


def backend_of(cfg, comm=None) -> Backend:
    """The backend of a validated config on ``comm`` (device from the node-local rank)."""
    p = cfg.parallel
    bk = make_backend(p.backend, comm=comm if comm is not None else MPI.COMM_WORLD,
                      threads=p.threads or None)
    decide_cuda_aware(bk, None if p.cuda_aware == "auto" else p.cuda_aware)
    return bk


def solver_options(cfg) -> dict:
    """Keyword arguments of :func:`~hpcinv.solvers.make_darcy_solver` from a config."""
    return dict(method=cfg.solver.method, overlap=cfg.parallel.overlap, dtype=cfg.solver.dtype)


def optimiser_settings(cfg) -> OptimiserSettings:
    i = cfg.inversion
    return OptimiserSettings(method=i.method, dgamma=i.dgamma, line_search=i.line_search,
                             logK_min=i.logK_min, logK_max=i.logK_max,
                             lbfgs_memory=i.lbfgs_memory)


def run_settings(cfg) -> RunSettings:
    i = cfg.inversion
    return RunSettings(i.method, i.iterations, i.checkpoint_every, i.misfit_ratio, i.step_tol,
                       cfg.output.figures)


def make_predictor(cfg, f, fine_grid, comm, backend, params, opts):
    """The coarse-grid correction of forward warm starts on an ``f`` times coarser grid
    (``inversion.forward_prediction`` as resolved by ``prediction_factor``;
    :class:`~hpcinv.inverse.forward_prediction.CoarsePrediction`), or ``None`` when off. A
    coarse grid that cannot be split over the ranks: a one-line error when the factor was
    asked for; off (with this reason on rank 0's stderr) when it was chosen automatically."""
    if f == 0:
        return None
    from ..errors import DecompositionError
    from ..inverse.forward_prediction import CoarsePrediction
    coarse_cfg = level_config(cfg, f)
    shape = coarse_cfg.grid_shape()
    if min(shape) < 3:
        raise ConfigError(f"inversion.forward_prediction = {f} leaves a coarse grid of "
                          f"{'x'.join(map(str, shape))} cells (at least 3 per axis); use a "
                          f"smaller factor or 0 (off)")
    try:
        coarse = scenario.true_problem(coarse_cfg, comm)
    except DecompositionError as exc:
        msg = (f"inversion.forward_prediction: the {f}x coarser grid "
               f"{'x'.join(map(str, coarse_cfg.grid_shape()))} cannot be split over "
               f"{comm.Get_size()} ranks ({exc})")
        if cfg.inversion.forward_prediction is not None:
            raise ConfigError(f"{msg}; use a smaller factor or 0 (off)") from None
        if comm.Get_rank() == 0:
            print(f"hpcinv: note: {msg}; forward warm starts are not corrected",
                  file=sys.stderr, flush=True)
        return None
    return CoarsePrediction(fine_grid.decomp, coarse, backend, params, cfg.solver.tol, **opts)


def tolerance_policy(cfg) -> TolerancePolicy | None:
    """The adaptive-tolerance policy of ``[inversion]`` (``None``: fixed tolerances)."""
    if not adaptive(cfg):
        return None
    i = cfg.inversion
    # L-BFGS builds curvature pairs from differences of gradients and its line search compares
    # small decreases: its cap is 10x tighter (measured: docs/performance.md)
    loose = i.tolerance_loose / (10 if i.method == "lbfgs" else 1)
    loose = max(loose, cfg.solver.tol, cfg.adjoint.tol)
    return TolerancePolicy(ToleranceSettings(forward_tol=cfg.solver.tol,
                                             adjoint_tol=cfg.adjoint.tol, loose=loose,
                                             gradient_accuracy=i.gradient_accuracy))


def build_forward(cfg, comm=None, backend: Backend | None = None,
                  kind: str = "forward") -> Setup:
    """The part of :func:`build` a forward solve needs, from ``cfg`` resolved
    (:func:`~hpcinv.app.resolve.resolved`; idempotent: the CLI's configs are resolved already):
    backend, the memory check (:mod:`hpcinv.app.memory`) of the run ``kind`` (``"forward"``,
    ``"gradient"``, ``"inversion"``), grid, true problem."""
    comm = comm if comm is not None else MPI.COMM_WORLD
    opts, run = solver_options(cfg), run_settings(cfg)      # (no defaults to resolve there,
    backend = backend if backend is not None else backend_of(cfg, comm)    # nor in [parallel])
    cfg = resolved(cfg)
    fwd, adj = pt_params(cfg.solver), pt_params(cfg.adjoint)
    cfg, memory = memory_budget.checked(cfg, cfg.grid_shape(), comm, backend, kind)
    true = scenario.true_problem(cfg, comm)
    return Setup(comm, backend, true.grid, true, None, None, None, None, None, None, None,
                 fwd, adj, opts, run, memory=memory, config=cfg)


def build(cfg, comm=None, backend: Backend | None = None, progress=None,
          data: Observations | None = None, kind: str = "inversion",
          base: Setup | None = None) -> Setup:
    """Everything an inversion (or a gradient) needs from a validated config (collective over
    ``comm``, default ``MPI.COMM_WORLD``). ``progress`` is passed to the synthetic-data solve.
    ``data``: observations whose values and sigma are used instead of the config's (a coarse
    level of :mod:`hpcinv.app.levels` fits the fine grid's data; no synthetic solve).
    ``kind``: ``"inversion"`` or ``"gradient"`` (one gradient: the memory estimate).
    ``base``: the :func:`build_forward` of ``cfg`` and ``kind`` when the caller made it already
    (``hpcinv gradient`` prints its header in between)."""
    base = base if base is not None else build_forward(cfg, comm, backend, kind)
    cfg, bk, true, grid = base.config, base.backend, base.true, base.grid
    opts, fwd, adj = base.solver_options, base.forward_params, base.adjoint_params
    true_Pf = None
    if data is None and scenario.needs_synthetic_values(cfg):
        solver = make_darcy_solver(true, bk, fwd, **opts)
        true_Pf = solver.solve(progress).Pf
        del solver              # its fields go before the objective's solver allocates its own
    obs = scenario.make_observations(cfg, grid, bk, true_Pf, demean=true.gauge_free)
    if data is not None:
        obs.values, obs.sigma = np.array(data.values), np.array(data.sigma)
    del true_Pf
    logK0 = scenario.initial_logK(cfg, true)
    reg, dt = cfg.regularisation, np.dtype(cfg.solver.dtype)
    tikhonov = Tikhonov(grid, bk, reg.tikhonov, dt) if reg.tikhonov > 0 else None
    smoother = (GradientSmoother(grid, bk, reg.smoothing_steps, reg.smoothing_coefficient, dt)
                if reg.smoothing_steps > 0 else None)
    i = cfg.inversion
    f = i.forward_prediction
    forward_start, adjoint_start = warm_starts(
        i.warm_start, i.adjoint_memory, i.forward_memory, f,
        lambda: make_predictor(cfg, f, grid, base.comm, bk, fwd, opts))
    objective = AdjointGradient(true.copy(qf=False), obs, bk, fwd, adj, tikhonov,  # K only
                                forward_start=forward_start, adjoint_start=adjoint_start, **opts)
    settings = optimiser_settings(cfg)
    precondition = smoother
    if cfg.inversion.method == "lbfgs" and cfg.inversion.precondition == "none":
        precondition = None          # L-BFGS directly on logK with the raw gradient
    try:
        policy = tolerance_policy(cfg)
        optimiser = make_optimiser(objective, precondition, settings, evaluator=(
            AdaptiveTolerance(policy) if policy is not None else None))
    except ConfigError as exc:
        raise ConfigError(f"inversion.{exc}") from None
    return Setup(base.comm, bk, grid, true, obs, logK0, objective, smoother, tikhonov,
                 optimiser, settings, fwd, adj, opts, base.run,
                 config_fingerprint(cfg, base.comm), base.memory, cfg)
