"""Typed run configuration, loaded from TOML, validated with one-line errors.

Sections and keys (all optional; see ``docs/configuration.md``)::

    [problem]   name = "geothermal2d" | "geothermal3d", k_background = 1.0, k_barrier = 1e-6
    [grid]      nx, ny[, nz]  (cells; default: the problem's own size)
    [solver]    cfl, re, tol = 1e-8, maxiter, ncheck = 100, dtype = "float64" | "float32"
    [adjoint]   cfl, re, tol, maxiter, ncheck (PT parameters of the adjoint solve)
    [boundary]  x_lo, x_hi, y_lo, y_hi[, z_lo, z_hi] = "no-flux" | fixed pressure (number)
    [observations] method = "nearest" | "linear", sigma = 1.0
    [regularisation] smoothing_steps = 49, smoothing_coefficient (0.2 in 2D), tikhonov = 0.0
    [parallel]  backend = "auto" | "host" | "cupy", dims = [0, 0], overlap = true,
                cuda_aware = "auto" | true | false, threads = 0 (0: cores / ranks per node)
    [output]    dir = "runs/forward"

Unknown sections or keys are errors naming the closest valid one.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass, field, fields
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python < 3.11
    import tomli as tomllib

from .errors import ConfigError


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

    def shape(self, default):
        """The grid shape: given sizes override the problem's ``default`` shape."""
        given = (self.nx, self.ny, self.nz)
        if self.nz is not None and len(default) == 2:
            raise ConfigError("grid.nz given for a 2D problem")
        return tuple(g if g is not None else d for g, d in zip(given, default))


@dataclass
class SolverConfig:
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
class ObservationsConfig:
    """Synthetic observations from the true model at the workshop's points."""
    method: str = "nearest"
    sigma: float = 1.0


@dataclass
class RegularisationConfig:
    smoothing_steps: int = 49
    smoothing_coefficient: float | None = None     # None: 0.8/(2 ndim), 0.2 in 2D
    tikhonov: float = 0.0


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


@dataclass
class Config:
    problem: ProblemConfig = field(default_factory=ProblemConfig)
    grid: GridConfig = field(default_factory=GridConfig)
    solver: SolverConfig = field(default_factory=SolverConfig)
    adjoint: AdjointConfig = field(default_factory=AdjointConfig)
    boundary: BoundaryConfig = field(default_factory=BoundaryConfig)
    observations: ObservationsConfig = field(default_factory=ObservationsConfig)
    regularisation: RegularisationConfig = field(default_factory=RegularisationConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    def validate(self) -> "Config":
        """Check value ranges and combinations; raises :class:`ConfigError`."""
        from .backend import BACKENDS
        from .problems import DEFAULT_SHAPES as PROBLEMS_NDIM
        from .problems import PROBLEMS
        if self.problem.name not in PROBLEMS:
            raise ConfigError(f"problem.name: unknown problem {self.problem.name!r}"
                              f"{_hint(self.problem.name, PROBLEMS)}; built-in: "
                              f"{', '.join(PROBLEMS)}")
        for key in ("k_background", "k_barrier"):
            v = getattr(self.problem, key)
            if not (v > 0 and math.isfinite(v)):
                raise ConfigError(f"problem.{key} must be a finite permeability > 0, got {v}")
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
        if self.observations.method not in ("nearest", "linear"):
            raise ConfigError(f"observations.method must be 'nearest' or 'linear', got "
                              f"{self.observations.method!r}")
        if not (self.observations.sigma > 0 and math.isfinite(self.observations.sigma)):
            raise ConfigError(f"observations.sigma must be > 0, got {self.observations.sigma}")
        r = self.regularisation
        if r.smoothing_steps < 0:
            raise ConfigError(f"regularisation.smoothing_steps must be >= 0, got "
                              f"{r.smoothing_steps}")
        if r.smoothing_coefficient is not None and not 0 < r.smoothing_coefficient <= 0.25:
            raise ConfigError(f"regularisation.smoothing_coefficient must be in (0, 0.25] "
                              f"(explicit stability: <= 1/(2 ndim)), got "
                              f"{r.smoothing_coefficient}")
        ndim = len(PROBLEMS_NDIM.get(self.problem.name, (0, 0)))
        if r.smoothing_coefficient is not None and r.smoothing_coefficient > 1 / (2 * ndim):
            raise ConfigError(f"regularisation.smoothing_coefficient must be <= 1/(2 ndim) = "
                              f"{1 / (2 * ndim):.4g} for the {ndim}D problem (explicit "
                              f"stability), got {r.smoothing_coefficient}")
        if not (r.tikhonov >= 0 and math.isfinite(r.tikhonov)):
            raise ConfigError(f"regularisation.tikhonov must be >= 0, got {r.tikhonov}")
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

    def pt_params(self):
        from .solvers import PTParams
        s = self.solver
        return PTParams(cfl=s.cfl, re=s.re, tol=s.tol, maxiter=s.maxiter, ncheck=s.ncheck)

    def adjoint_pt_params(self):
        from .solvers import PTParams
        a = self.adjoint
        return PTParams(cfl=a.cfl, re=a.re, tol=a.tol, maxiter=a.maxiter, ncheck=a.ncheck)

    def to_dict(self) -> dict:
        return {f.name: {k: v for k, v in dataclasses.asdict(getattr(self, f.name)).items()
                         if v is not None} for f in fields(self)}


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
    elif annotation == "str":
        ok = isinstance(value, str)
    elif annotation == "bool":
        ok = isinstance(value, bool)
    elif annotation.startswith("list"):
        ok = isinstance(value, list)
    if not ok:
        kind = annotation.split(" ")[0]
        raise ConfigError(f"{where} must be of type {kind}, got {value!r}")
    return value


def from_dict(data: dict, source: str = "config") -> Config:
    """Build and validate a :class:`Config` from nested dicts (parsed TOML)."""
    cfg = Config()
    sections = {f.name: f for f in fields(Config)}
    for sname, sval in data.items():
        if sname not in sections:
            raise ConfigError(f"{source}: unknown section [{sname}]{_hint(sname, sections)}")
        if not isinstance(sval, dict):
            raise ConfigError(f"{source}: [{sname}] must be a table of keys")
        sec = getattr(cfg, sname)
        keys = {f.name: f for f in fields(sec)}
        for key, value in sval.items():
            if key not in keys:
                raise ConfigError(f"{source}: unknown key {sname}.{key}"
                                  f"{_hint(key, keys)}")
            setattr(sec, key, _check_type(f"{sname}.{key}", value, str(keys[key].type)))
    return cfg.validate()


def load(path) -> Config:
    """Load and validate a TOML config file."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    return from_dict(data, str(path))


def dumps(cfg: Config) -> str:
    """The config as TOML text (the resolved config written next to the results)."""
    lines = []
    for sname, sec in cfg.to_dict().items():
        lines.append(f"[{sname}]")
        for k, v in sec.items():
            lines.append(f"{k} = {_toml_value(v)}")
        lines.append("")
    return "\n".join(lines)


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else ("inf" if v > 0 else "-inf" if v < 0 else "nan")
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return str(v)
