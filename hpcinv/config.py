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
    [parallel]  backend = "auto" | "host" | "cupy", dims = [0, 0], overlap = "auto",
                cuda_aware = "auto" | true | false, threads = 0 (0: cores / ranks per node)
    [output]    dir = "runs/forward", figures = true, overwrite = false

Unknown sections or keys (also inside inline tables and ``[[wells]]``) are errors naming the
closest valid one. Relative data-file paths (``permeability.file``, ``observations.file``,
``inversion.initial_file``) are relative to the config file when it is :func:`load`-ed (stored
absolute, so the resolved config written to a run directory still finds them), and relative to
the working directory for :func:`from_dict`.

Layout: :mod:`hpcinv.config_schema` (the section dataclasses and constants),
:mod:`hpcinv.config_validate` (value checks), :mod:`hpcinv.config_toml` (path resolution and
:func:`dumps`); this module is the entry point and re-exports their public names.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, fields
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python < 3.11
    import tomli as tomllib

from .config_schema import (  # noqa: F401  (re-exported: hpcinv.config is the entry point)
    AXES, INVERSION_METHODS, OBS_FILE_SUFFIXES, PATH_KEYS, PERMEABILITY_TYPES, POINT_KINDS,
    PRECONDITIONERS, PROBLEM_EXTENTS, SIDES, AdjointConfig, BoundaryConfig, GridConfig,
    InversionConfig, ObservationsConfig, OutputConfig, ParallelConfig, PermeabilityConfig,
    ProblemConfig, RegularisationConfig, SolverConfig, WellConfig)
from .config_toml import _BARE_KEY, _toml_key, _toml_value, dumps, resolve_paths  # noqa: F401
from .config_validate import (  # noqa: F401
    _box, _check_interval, _check_k, _check_table, _check_type, _fmt, _hint, _is_int, _is_num)
from .config_validate import validate as _validate
from .errors import ConfigError  # noqa: F401


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

    # --- validation (in hpcinv.config_validate) --------------------------------------------
    def validate(self) -> "Config":
        """Check value ranges and combinations; raises :class:`ConfigError`."""
        return _validate(self)

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
