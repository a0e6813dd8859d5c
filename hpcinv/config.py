"""Typed run configuration, loaded from TOML, validated with one-line errors.

Sections and keys (all optional; see ``docs/configuration.md``)::

    [problem]   name = "geothermal2d" | "geothermal3d" | "custom", k_background = 1.0,
                k_barrier = 1e-6
    [grid]      nx, ny[, nz]  (cells; default: the problem's own size),
                extent = [[x0, x1], [y0, y1](, [z0, z1])]  (custom problems only; required)
    [solver]    cfl, re, tol = 1e-8, maxiter, ncheck = 100, dtype = "float64" | "float32"
    [adjoint]   cfl, re, tol, maxiter, ncheck (PT parameters of the adjoint solve)
    [boundary]  x_lo, x_hi, y_lo, y_hi[, z_lo, z_hi] = "no-flux" | fixed pressure (number)
    [permeability] the true model: type = "constant" | "barrier" | "layered" | "file",
                value, barrier = {x = [a, b], y = [c, d], value = 1e-6}, layers = [{axis = "y",
                range = [a, b], value = 1e-2}, ...], file = "K.h5", dataset = "K", log10 = false
    [[wells]]   position = [x, y(, z)], rate, z_range = [z0, z1] (one table per well)
    [observations] method = "nearest" | "linear", sigma = 1.0,
                points = "workshop" | "grid" | "file", grid = {x = [a, b, n], ...},
                file = "obs.csv" | "obs.h5"
    [regularisation] smoothing_steps = 49, smoothing_coefficient (0.2 in 2D), tikhonov = 0.0
    [inversion] method = "gd" | "lbfgs", iterations = 50, dgamma = 0.2, line_search = false,
                misfit_ratio = 0.0, step_tol = 0.0, logK_min = -inf, logK_max = inf,
                warm_start = true, lbfgs_memory = 5, precondition = "smoothing" | "none",
                initial_logK = 0.0 | initial_file + initial_dataset = "logK",
                checkpoint_every = 10
    [parallel]  backend = "auto" | "host" | "cupy", dims = [0, 0], overlap = true,
                cuda_aware = "auto" | true | false, threads = 0 (0: cores / ranks per node)
    [output]    dir = "runs/forward", figures = true, overwrite = false

Unknown sections or keys (also inside inline tables and ``[[wells]]``) are errors naming the
closest valid one. Relative data-file paths (``permeability.file``, ``observations.file``,
``inversion.initial_file``) are relative to the config file when it is :func:`load`-ed (stored
absolute, so the resolved config written to a run directory still finds them), and relative to
the working directory for :func:`from_dict`.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python < 3.11
    import tomli as tomllib

from .errors import ConfigError

PROBLEM_EXTENTS = {"geothermal2d": ((-1.0, 1.0), (0.0, 1.0)),
                   "geothermal3d": ((-1.0, 1.0), (0.0, 1.0), (0.0, 1.0))}
PERMEABILITY_TYPES = ("constant", "barrier", "layered", "file")
POINT_KINDS = ("workshop", "grid", "file")
OBS_FILE_SUFFIXES = (".csv", ".h5", ".hdf5")
INVERSION_METHODS = ("gd", "lbfgs")
PRECONDITIONERS = ("smoothing", "none")
AXES = "xyz"
#: keys holding data-file paths: resolved against the config file's directory by :func:`load`
PATH_KEYS = (("permeability", "file"), ("observations", "file"), ("inversion", "initial_file"))


@dataclass
class ProblemConfig:
    name: str = "geothermal2d"
    k_background: float = 1.0
    k_barrier: float = 1e-6


@dataclass
class GridConfig:
    nx: int | None = None
    ny: int | None = None
    nz: int | None = None
    extent: list | None = None

    def shape(self, default):
        """The grid shape: given sizes override the problem's ``default`` shape."""
        given = (self.nx, self.ny, self.nz)
        if self.nz is not None and len(default) == 2:
            raise ConfigError("grid.nz given for a 2D problem")
        return tuple(g if g is not None else d for g, d in zip(given, default))


@dataclass
class SolverConfig:
    method: str = "apt"
    cfl: float | None = None
    re: float = 2 * math.pi
    tol: float = 1e-8
    maxiter: int | None = None
    ncheck: int = 100
    dtype: str = "float64"


@dataclass
class AdjointConfig:
    """PT parameters of the adjoint solve (its own damping; defaults as the forward's)."""
    cfl: float | None = None
    re: float = 2 * math.pi
    tol: float = 1e-8
    maxiter: int | None = None
    ncheck: int = 100


SIDES = ("x_lo", "x_hi", "y_lo", "y_hi", "z_lo", "z_hi")


@dataclass
class BoundaryConfig:
    """Each side: "no-flux" or a fixed pressure (a number)."""
    x_lo: object = "no-flux"
    x_hi: object = "no-flux"
    y_lo: object = "no-flux"
    y_hi: object = "no-flux"
    z_lo: object = "no-flux"
    z_hi: object = "no-flux"

    def fixed_pressure(self, ndim: int) -> dict:
        """``{(axis, side): pressure}`` of the fixed-pressure sides."""
        out = {}
        for name in SIDES:
            v = getattr(self, name)
            axis, side = "xyz".index(name[0]), int(name.endswith("hi"))
            if v != "no-flux":
                if axis >= ndim:
                    raise ConfigError(f"boundary.{name} given for a {ndim}D problem")
                out[(axis, side)] = float(v)
        return out


@dataclass
class PermeabilityConfig:
    """The true permeability model. ``type = None`` (section left out): the problem's own
    model (geothermal: the built-in barrier from ``[problem]``; an error for ``custom``)."""
    type: str | None = None
    value: float | None = None       # constant / background K; None: problem.k_background
    barrier: dict | None = None      # {x = [a, b], y = [c, d], z = [e, f], value = K}
    layers: list | None = None       # [{axis = "y", range = [a, b], value = K}, ...]
    file: str | None = None          # HDF5 file with a global (nx, ny[, nz]) array
    dataset: str = "K"
    log10: bool = False

    def background(self, problem: ProblemConfig) -> float:
        return float(self.value) if self.value is not None else float(problem.k_background)


@dataclass
class WellConfig:
    """One ``[[wells]]`` entry: a point (or, with ``z_range``, a column) source."""
    position: list | None = None
    rate: float | None = None
    z_range: list | None = None


@dataclass
class ObservationsConfig:
    """Observation points and the misfit (values synthesised from the true model unless a file
    gives them)."""
    method: str = "nearest"
    sigma: float = 1.0
    points: str = "workshop"
    grid: dict | None = None         # {x = [a, b, n], y = [c, d, m](, z = [e, f, k])}
    file: str | None = None          # .csv or .h5/.hdf5


@dataclass
class RegularisationConfig:
    smoothing_steps: int = 49
    smoothing_coefficient: float | None = None     # None: 0.8/(2 ndim), 0.2 in 2D
    tikhonov: float = 0.0


@dataclass
class InversionConfig:
    """Optimiser parameters (``hpcinv invert``)."""
    method: str = "gd"
    iterations: int = 50
    dgamma: float = 0.2
    line_search: bool = False
    misfit_ratio: float = 0.0
    step_tol: float = 0.0
    logK_min: float = -math.inf
    logK_max: float = math.inf
    warm_start: bool = True
    lbfgs_memory: int = 5
    precondition: str = "smoothing"
    initial_logK: float | None = None    # None: 0.0 (K = 1), unless initial_file is given
    initial_file: str | None = None
    initial_dataset: str = "logK"
    checkpoint_every: int = 10


@dataclass
class ParallelConfig:
    backend: str = "auto"
    dims: list | None = None
    overlap: bool = True
    cuda_aware: object = "auto"
    threads: int = 0


@dataclass
class OutputConfig:
    dir: str = "runs/forward"
    figures: bool = True
    overwrite: bool = False


@dataclass
class Config:
    problem: ProblemConfig = field(default_factory=ProblemConfig)
    grid: GridConfig = field(default_factory=GridConfig)
    solver: SolverConfig = field(default_factory=SolverConfig)
    adjoint: AdjointConfig = field(default_factory=AdjointConfig)
    boundary: BoundaryConfig = field(default_factory=BoundaryConfig)
    permeability: PermeabilityConfig = field(default_factory=PermeabilityConfig)
    wells: list = field(default_factory=list)          # list[WellConfig]: [[wells]]
    observations: ObservationsConfig = field(default_factory=ObservationsConfig)
    regularisation: RegularisationConfig = field(default_factory=RegularisationConfig)
    inversion: InversionConfig = field(default_factory=InversionConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    # --- derived geometry --------------------------------------------------------------
    def ndim(self) -> int:
        """2 or 3: from the built-in problem, or from ``grid.extent`` for ``custom``."""
        if self.problem.name in PROBLEM_EXTENTS:
            return len(PROBLEM_EXTENTS[self.problem.name])
        if self.problem.name == "custom":
            return len(self.extent())
        raise ConfigError(f"problem.name: unknown problem {self.problem.name!r}")

    def extent(self) -> tuple:
        """The domain ``((x0, x1), (y0, y1)[, (z0, z1)])``."""
        if self.problem.name in PROBLEM_EXTENTS:
            return PROBLEM_EXTENTS[self.problem.name]
        ext = self.grid.extent
        if ext is None:
            raise ConfigError("grid.extent is required for problem.name = \"custom\": "
                              "[[x0, x1], [y0, y1]] or [[x0, x1], [y0, y1], [z0, z1]]")
        if (not isinstance(ext, list) or len(ext) not in (2, 3)
                or not all(isinstance(r, list) and len(r) == 2 and all(_is_num(v) for v in r)
                           for r in ext)):
            raise ConfigError(f"grid.extent must be [[x0, x1], [y0, y1]] or "
                              f"[[x0, x1], [y0, y1], [z0, z1]] (numbers), got {ext!r}")
        for ax, (a, b) in enumerate(ext):
            if not (math.isfinite(a) and math.isfinite(b) and a < b):
                raise ConfigError(f"grid.extent along {AXES[ax]} must be finite with x0 < x1, "
                                  f"got [{a}, {b}]")
        return tuple((float(a), float(b)) for a, b in ext)

    def grid_shape(self) -> tuple:
        """Global cells per dimension (the built-in problem's defaults filled in; ``custom``
        problems must give every size)."""
        from .problems import DEFAULT_SHAPES
        if self.problem.name in DEFAULT_SHAPES:
            return self.grid.shape(DEFAULT_SHAPES[self.problem.name])
        nd = self.ndim()
        if nd == 2 and self.grid.nz is not None:
            raise ConfigError("grid.nz given for a 2D problem (grid.extent has 2 intervals)")
        sizes = (self.grid.nx, self.grid.ny, self.grid.nz)[:nd]
        for ax, n in enumerate(sizes):
            if n is None:
                raise ConfigError(f"grid.n{AXES[ax]} is required for problem.name = \"custom\"")
        return tuple(sizes)

    def gauge_free(self) -> bool:
        """True when no side (among the problem's dimensions) fixes the pressure."""
        nd = self.ndim()
        return not any(getattr(self.boundary, s) != "no-flux" for s in SIDES[:2 * nd])

    # --- validation ----------------------------------------------------------------------
    def validate(self) -> "Config":
        """Check value ranges and combinations; raises :class:`ConfigError`."""
        from .backend import BACKENDS
        names = (*PROBLEM_EXTENTS, "custom")
        if self.problem.name not in names:
            raise ConfigError(f"problem.name: unknown problem {self.problem.name!r}"
                              f"{_hint(self.problem.name, names)}; choose one of "
                              f"{', '.join(names)}")
        for key in ("k_background", "k_barrier"):
            v = getattr(self.problem, key)
            if not (v > 0 and math.isfinite(v)):
                raise ConfigError(f"problem.{key} must be a finite permeability > 0, got {v}")
        self._validate_grid()
        ndim = self.ndim()
        if self.solver.method not in ("apt", "petsc"):
            raise ConfigError(f"solver.method must be 'apt' or 'petsc', got "
                              f"{self.solver.method!r}{_hint(self.solver.method, ('apt', 'petsc'))}")
        if self.solver.dtype not in ("float64", "float32"):
            raise ConfigError(f"solver.dtype must be 'float64' or 'float32', "
                              f"got {self.solver.dtype!r}")
        self.pt_params().validate()
        self.adjoint_pt_params().validate("adjoint")
        for name in SIDES:
            v = getattr(self.boundary, name)
            if not (v == "no-flux" or (isinstance(v, (int, float)) and not isinstance(v, bool)
                                       and math.isfinite(v))):
                raise ConfigError(f"boundary.{name} must be \"no-flux\" or a finite pressure, "
                                  f"got {v!r}")
        self._validate_permeability(ndim)
        self._validate_wells(ndim)
        self._validate_observations(ndim)
        r = self.regularisation
        if r.smoothing_steps < 0:
            raise ConfigError(f"regularisation.smoothing_steps must be >= 0, got "
                              f"{r.smoothing_steps}")
        if r.smoothing_coefficient is not None and not 0 < r.smoothing_coefficient <= 0.25:
            raise ConfigError(f"regularisation.smoothing_coefficient must be in (0, 0.25] "
                              f"(explicit stability: <= 1/(2 ndim)), got "
                              f"{r.smoothing_coefficient}")
        if r.smoothing_coefficient is not None and r.smoothing_coefficient > 1 / (2 * ndim):
            raise ConfigError(f"regularisation.smoothing_coefficient must be <= 1/(2 ndim) = "
                              f"{1 / (2 * ndim):.4g} for the {ndim}D problem (explicit "
                              f"stability), got {r.smoothing_coefficient}")
        if not (r.tikhonov >= 0 and math.isfinite(r.tikhonov)):
            raise ConfigError(f"regularisation.tikhonov must be >= 0, got {r.tikhonov}")
        self._validate_inversion()
        if self.parallel.backend not in BACKENDS:
            raise ConfigError(f"parallel.backend: unknown backend {self.parallel.backend!r}"
                              f"{_hint(self.parallel.backend, BACKENDS)}; choose one of "
                              f"{', '.join(BACKENDS)}")
        aware = self.parallel.cuda_aware
        if not (isinstance(aware, bool) or aware == "auto"):
            raise ConfigError(f"parallel.cuda_aware must be \"auto\", true or false, "
                              f"got {self.parallel.cuda_aware!r}")
        if self.parallel.threads < 0:
            raise ConfigError(f"parallel.threads must be >= 0, got {self.parallel.threads}")
        if self.parallel.dims is not None and (
                not isinstance(self.parallel.dims, list)
                or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                           for d in self.parallel.dims)):
            raise ConfigError(f"parallel.dims must be a list of integers >= 0 (0: automatic), "
                              f"got {self.parallel.dims!r}")
        return self

    def _validate_grid(self):
        g = self.grid
        if self.problem.name == "custom":
            self.grid_shape()             # extent well formed, every size given
        elif g.extent is not None:
            raise ConfigError(f"grid.extent is only for problem.name = \"custom\"; "
                              f"{self.problem.name} has its own domain "
                              f"{_box(PROBLEM_EXTENTS[self.problem.name])}")

    def _validate_permeability(self, ndim):
        p, where = self.permeability, "permeability"
        if p.type is None:
            given = [k for k in ("value", "barrier", "layers", "file")
                     if getattr(p, k) is not None]
            given += [k for k, d in (("dataset", "K"), ("log10", False)) if getattr(p, k) != d]
            if given:
                raise ConfigError(f"permeability.type is required with permeability.{given[0]} "
                                  f"(one of {', '.join(PERMEABILITY_TYPES)})")
            if self.problem.name == "custom":
                raise ConfigError("permeability.type is required for problem.name = \"custom\" "
                                  f"(the true model: {', '.join(PERMEABILITY_TYPES)})")
            return
        if p.type not in PERMEABILITY_TYPES:
            raise ConfigError(f"permeability.type must be one of "
                              f"{', '.join(PERMEABILITY_TYPES)}, got {p.type!r}"
                              f"{_hint(p.type, PERMEABILITY_TYPES)}")
        users = {"barrier": "barrier", "layers": "layered", "file": "file"}
        for key, kind in users.items():
            if getattr(p, key) is not None and p.type != kind:
                raise ConfigError(f"permeability.{key} is only used with type = \"{kind}\" "
                                  f"(type is \"{p.type}\")")
        for key, default in (("dataset", "K"), ("log10", False)):
            if getattr(p, key) != default and p.type != "file":
                raise ConfigError(f"permeability.{key} is only used with type = \"file\" "
                                  f"(type is \"{p.type}\")")
        if p.value is not None:
            if p.type == "file":
                raise ConfigError("permeability.value is not used with type = \"file\" "
                                  "(the file holds every cell's K)")
            _check_k("permeability.value", p.value)
        if p.type == "barrier":
            if p.barrier is None:
                if self.problem.name == "custom":
                    raise ConfigError("permeability.barrier is required with type = \"barrier\" "
                                      "for a custom problem: {x = [a, b], y = [c, d], "
                                      "value = 1e-6}")
            else:
                b = _check_table(f"{where}.barrier", p.barrier, (*AXES[:3], "value"))
                axes = [a for a in AXES if a in b]
                if not axes:
                    raise ConfigError("permeability.barrier needs at least one of "
                                      f"{', '.join(AXES[:ndim])}: the cells with centre a < x "
                                      "<= b (every given axis)")
                for a in axes:
                    if AXES.index(a) >= ndim:
                        raise ConfigError(f"permeability.barrier.{a} given for a {ndim}D problem")
                    _check_interval(f"permeability.barrier.{a}", b[a])
                if "value" in b:
                    _check_k("permeability.barrier.value", b["value"])
        elif p.type == "layered":
            if p.layers is None:
                raise ConfigError("permeability.layers is required with type = \"layered\": "
                                  "[{axis = \"y\", range = [a, b], value = 1e-2}, ...]")
            if not isinstance(p.layers, list) or not p.layers:
                raise ConfigError(f"permeability.layers must be a non-empty list of tables "
                                  f"{{axis, range, value}}, got {p.layers!r}")
            for i, layer in enumerate(p.layers):
                w = f"permeability.layers[{i}]"
                _check_table(w, layer, ("axis", "range", "value"), required=True)
                if layer["axis"] not in AXES[:ndim]:
                    raise ConfigError(f"{w}.axis must be one of "
                                      f"{', '.join(repr(a) for a in AXES[:ndim])}, "
                                      f"got {layer['axis']!r}")
                _check_interval(f"{w}.range", layer["range"])
                _check_k(f"{w}.value", layer["value"])
        elif p.type == "file":
            if p.file is None:
                raise ConfigError("permeability.file is required with type = \"file\" "
                                  "(an HDF5 file holding the global K array)")
            if not p.file:
                raise ConfigError("permeability.file must not be empty")
            if not p.dataset:
                raise ConfigError("permeability.dataset must not be empty")

    def _validate_wells(self, ndim):
        ext = self.extent()
        if self.problem.name == "custom" and not self.wells:
            raise ConfigError("a custom problem needs at least one [[wells]] entry (position, "
                              "rate)")
        rates = []
        for i, w in enumerate(self.wells):
            where = f"wells[{i}]"
            if not isinstance(w, WellConfig):
                raise ConfigError(f"{where} must be a table (position, rate, z_range)")
            if w.position is None:
                raise ConfigError(f"{where}.position is required: [x, y] or [x, y, z]")
            if w.rate is None:
                raise ConfigError(f"{where}.rate is required (total volume rate: > 0 injection, "
                                  f"< 0 extraction)")
            if not (_is_num(w.rate) and math.isfinite(w.rate)):
                raise ConfigError(f"{where}.rate must be a finite number, got {w.rate!r}")
            rates.append(float(w.rate))
            pos = w.position
            lens = (ndim,) if w.z_range is None or ndim == 2 else (2, 3)
            if (not isinstance(pos, list) or len(pos) not in lens
                    or not all(_is_num(v) and math.isfinite(v) for v in pos)):
                want = " or ".join(f"{n} numbers" for n in lens)
                raise ConfigError(f"{where}.position must be {want} for a {ndim}D problem, "
                                  f"got {pos!r}")
            if w.z_range is not None:
                if ndim != 3:
                    raise ConfigError(f"{where}.z_range is only for 3D problems")
                _check_interval(f"{where}.z_range", w.z_range)
                if len(pos) == 3 and not w.z_range[0] <= pos[2] <= w.z_range[1]:
                    raise ConfigError(f"{where}.position z = {pos[2]} lies outside its z_range "
                                      f"{w.z_range}")
            for ax, v in enumerate(pos[:2] if w.z_range is not None else pos):
                lo, hi = ext[ax]
                if not lo <= v <= hi:
                    raise ConfigError(f"{where}.position {_fmt(pos)} lies outside the domain "
                                      f"{_box(ext)}")
        if self.wells and self.gauge_free():
            total, scale = math.fsum(rates), math.fsum(abs(r) for r in rates)
            if abs(total) > 1e-12 * max(scale, 1e-300):
                raise ConfigError(f"wells: the rates sum to {total:g}, but every side is no-flux, "
                                  "so no steady solution exists; make the rates sum to 0 or fix "
                                  "the pressure on a side in [boundary]")

    def _validate_observations(self, ndim):
        o = self.observations
        if o.method not in ("nearest", "linear"):
            raise ConfigError(f"observations.method must be 'nearest' or 'linear', got "
                              f"{o.method!r}")
        if not (o.sigma > 0 and math.isfinite(o.sigma)):
            raise ConfigError(f"observations.sigma must be > 0, got {o.sigma}")
        if o.points not in POINT_KINDS:
            raise ConfigError(f"observations.points must be one of "
                              f"{', '.join(repr(k) for k in POINT_KINDS)}, got {o.points!r}"
                              f"{_hint(o.points, POINT_KINDS)}")
        for key in ("grid", "file"):
            if getattr(o, key) is not None and o.points != key:
                raise ConfigError(f"observations.{key} is only used with points = \"{key}\" "
                                  f"(points is \"{o.points}\")")
        if o.points == "grid":
            if o.grid is None:
                raise ConfigError("observations.grid is required with points = \"grid\": "
                                  "{x = [x0, x1, nx], y = [y0, y1, ny]}")
            g = _check_table("observations.grid", o.grid, AXES)
            ext = self.extent()
            for ax, a in enumerate(AXES):
                w = f"observations.grid.{a}"
                if ax >= ndim:
                    if a in g:
                        raise ConfigError(f"{w} given for a {ndim}D problem")
                    continue
                if a not in g:
                    raise ConfigError(f"{w} is required: [{a}0, {a}1, n{a}]")
                s = g[a]
                if (not isinstance(s, list) or len(s) != 3 or not _is_num(s[0])
                        or not _is_num(s[1]) or not _is_int(s[2])):
                    raise ConfigError(f"{w} must be [{a}0, {a}1, n] (two numbers and an "
                                      f"integer), got {s!r}")
                if not (math.isfinite(s[0]) and math.isfinite(s[1]) and s[0] <= s[1]):
                    raise ConfigError(f"{w} must have finite {a}0 <= {a}1, got {s!r}")
                if s[2] < 1:
                    raise ConfigError(f"{w}: the number of points must be >= 1, got {s[2]}")
                lo, hi = ext[ax]
                if s[0] < lo or s[1] > hi:
                    raise ConfigError(f"{w} = {s!r} reaches outside the domain "
                                      f"{a} in [{lo:g}, {hi:g}]")
        elif o.points == "file":
            if not o.file:
                raise ConfigError("observations.file is required with points = \"file\" "
                                  "(a .csv or .h5 file of points and optional values, sigma)")
            if not o.file.lower().endswith(OBS_FILE_SUFFIXES):
                raise ConfigError(f"observations.file must end in .csv, .h5 or .hdf5, "
                                  f"got {o.file!r}")

    def _validate_inversion(self):
        v = self.inversion
        if v.method not in INVERSION_METHODS:
            raise ConfigError(f"inversion.method must be 'gd' or 'lbfgs', got {v.method!r}"
                              f"{_hint(v.method, INVERSION_METHODS)}")
        if v.iterations < 1:
            raise ConfigError(f"inversion.iterations must be >= 1, got {v.iterations}")
        if not (v.dgamma > 0 and math.isfinite(v.dgamma)):
            raise ConfigError(f"inversion.dgamma must be > 0 and finite, got {v.dgamma}")
        if not 0 <= v.misfit_ratio < 1:
            raise ConfigError(f"inversion.misfit_ratio must be in [0, 1) (0: off), "
                              f"got {v.misfit_ratio}")
        if not (v.step_tol >= 0 and math.isfinite(v.step_tol)):
            raise ConfigError(f"inversion.step_tol must be >= 0 and finite (0: off), "
                              f"got {v.step_tol}")
        for key in ("logK_min", "logK_max"):
            if math.isnan(getattr(v, key)):
                raise ConfigError(f"inversion.{key} must be a number or +-inf, got nan")
        if not v.logK_min < v.logK_max:
            raise ConfigError(f"inversion.logK_min must be < inversion.logK_max, got "
                              f"{v.logK_min} >= {v.logK_max}")
        if v.lbfgs_memory < 1:
            raise ConfigError(f"inversion.lbfgs_memory must be >= 1, got {v.lbfgs_memory}")
        if v.precondition not in PRECONDITIONERS:
            raise ConfigError(f"inversion.precondition must be 'smoothing' or 'none', got "
                              f"{v.precondition!r}{_hint(v.precondition, PRECONDITIONERS)}")
        if v.initial_logK is not None and not math.isfinite(v.initial_logK):
            raise ConfigError(f"inversion.initial_logK must be finite, got {v.initial_logK}")
        if v.initial_logK is not None and v.initial_file is not None:
            raise ConfigError("inversion.initial_logK and inversion.initial_file are exclusive: "
                              "give a constant initial model or a file, not both")
        if v.initial_file is not None and not v.initial_file:
            raise ConfigError("inversion.initial_file must not be empty")
        if v.initial_file is None and v.initial_dataset != "logK":
            raise ConfigError("inversion.initial_dataset is only used with inversion.initial_file")
        if not v.initial_dataset:
            raise ConfigError("inversion.initial_dataset must not be empty")
        if v.checkpoint_every < 0:
            raise ConfigError(f"inversion.checkpoint_every must be >= 0 (0: only at the end and "
                              f"on SIGTERM), got {v.checkpoint_every}")

    def pt_params(self):
        from .solvers import PTParams
        s = self.solver
        return PTParams(cfl=s.cfl, re=s.re, tol=s.tol, maxiter=s.maxiter, ncheck=s.ncheck)

    def adjoint_pt_params(self):
        from .solvers import PTParams
        a = self.adjoint
        return PTParams(cfl=a.cfl, re=a.re, tol=a.tol, maxiter=a.maxiter, ncheck=a.ncheck)

    def to_dict(self) -> dict:
        """Nested dicts (``None`` values left out); ``wells`` is a list of dicts."""
        out = {}
        for f in fields(self):
            val = getattr(self, f.name)
            if f.name == "wells":
                out["wells"] = [_drop_none(dataclasses.asdict(w)) for w in val]
            else:
                out[f.name] = _drop_none(dataclasses.asdict(val))
        return out


# --------------------------------------------------------------------------- helpers

def _drop_none(d: dict) -> dict:
    return {k: v for k, v in d.items() if v is not None}


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _fmt(p) -> str:
    return "(" + ", ".join(f"{v:g}" for v in p) + ")"


def _box(ext) -> str:
    return " x ".join(f"[{a:g}, {b:g}]" for a, b in ext)


def _check_k(where, v):
    if not (_is_num(v) and math.isfinite(v) and v > 0):
        raise ConfigError(f"{where} must be a finite permeability > 0, got {v!r}")


def _check_interval(where, v):
    if not (isinstance(v, list) and len(v) == 2 and all(_is_num(x) for x in v)):
        raise ConfigError(f"{where} must be [a, b] (two numbers), got {v!r}")
    if not (math.isfinite(v[0]) and math.isfinite(v[1]) and v[0] < v[1]):
        raise ConfigError(f"{where} must have finite a < b, got {v!r}")


def _check_table(where, t, valid, required=False) -> dict:
    """An inline table: a dict with keys from ``valid`` (all of them when ``required``)."""
    if not isinstance(t, dict):
        raise ConfigError(f"{where} must be a table {{{', '.join(valid)}}}, got {t!r}")
    for k in t:
        if k not in valid:
            raise ConfigError(f"unknown key {where}.{k}{_hint(k, valid)}; valid: "
                              f"{', '.join(valid)}")
    if required:
        for k in valid:
            if k not in t:
                raise ConfigError(f"{where}.{k} is required ({{{', '.join(valid)}}})")
    return t


def _hint(name, valid) -> str:
    close = difflib.get_close_matches(str(name), list(valid), n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _check_type(where: str, value, annotation: str):
    """Check a TOML value against a dataclass field annotation (as a string)."""
    ok = True
    if annotation.startswith("int"):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif annotation.startswith("float"):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif annotation.startswith("str"):
        ok = isinstance(value, str)
    elif annotation.startswith("bool"):
        ok = isinstance(value, bool)
    elif annotation.startswith("list"):
        ok = isinstance(value, list)
    elif annotation.startswith("dict"):
        ok = isinstance(value, dict)
    if not ok:
        kind = annotation.split(" ")[0]
        kind = "table" if kind == "dict" else kind
        raise ConfigError(f"{where} must be of type {kind}, got {value!r}")
    return value


def _fill(obj, values: dict, where: str, source: str):
    keys = {f.name: f for f in fields(obj)}
    for key, value in values.items():
        if key not in keys:
            raise ConfigError(f"{source}: unknown key {where}.{key}{_hint(key, keys)}")
        setattr(obj, key, _check_type(f"{where}.{key}", value, str(keys[key].type)))
    return obj


def from_dict(data: dict, source: str = "config") -> Config:
    """Build and validate a :class:`Config` from nested dicts (parsed TOML)."""
    cfg = Config()
    sections = {f.name: f for f in fields(Config)}
    for sname, sval in data.items():
        if sname not in sections:
            raise ConfigError(f"{source}: unknown section [{sname}]{_hint(sname, sections)}")
        if sname == "wells":
            if isinstance(sval, dict):
                raise ConfigError(f"{source}: wells must be an array of tables: write [[wells]] "
                                  "(one per well), not [wells]")
            if not isinstance(sval, list) or not all(isinstance(w, dict) for w in sval):
                raise ConfigError(f"{source}: wells must be an array of tables [[wells]], "
                                  f"got {sval!r}")
            cfg.wells = [_fill(WellConfig(), w, f"wells[{i}]", source)
                         for i, w in enumerate(sval)]
            continue
        if not isinstance(sval, dict):
            raise ConfigError(f"{source}: [{sname}] must be a table of keys")
        _fill(getattr(cfg, sname), sval, sname, source)
    return cfg.validate()


def resolve_paths(cfg: Config, base) -> Config:
    """Make the relative data-file paths of ``cfg`` absolute, relative to directory ``base``."""
    for sname, key in PATH_KEYS:
        sec = getattr(cfg, sname)
        v = getattr(sec, key)
        if v:
            v = os.path.expanduser(v)
            setattr(sec, key, v if os.path.isabs(v) else os.path.abspath(os.path.join(base, v)))
    return cfg


def load(path) -> Config:
    """Load and validate a TOML config file. Relative data-file paths are taken relative to
    the file's directory and stored absolute."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    return resolve_paths(from_dict(data, str(path)), path.parent)


def dumps(cfg: Config) -> str:
    """The config as TOML text (the resolved config written next to the results)."""
    lines = []
    for sname, sec in cfg.to_dict().items():
        if sname == "wells":
            for w in sec:
                lines.append("[[wells]]")
                lines += [f"{k} = {_toml_value(v)}" for k, v in w.items()]
                lines.append("")
            continue
        lines.append(f"[{sname}]")
        for k, v in sec.items():
            lines.append(f"{k} = {_toml_value(v)}")
        lines.append("")
    return "\n".join(lines)


_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _toml_key(k) -> str:
    k = str(k)
    return k if _BARE_KEY.match(k) else _toml_value(k)


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + (v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
                      .replace("\t", "\\t").replace("\r", "\\r")) + '"'
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else ("inf" if v > 0 else "-inf" if v < 0 else "nan")
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(x)}" for k, x in v.items()
                               if x is not None) + "}"
    return str(v)
