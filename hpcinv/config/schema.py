"""The run configuration's schema: one dataclass per TOML section (defaults, small
helpers), and the constants naming the valid choices. :mod:`hpcinv.config` builds on it."""
from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field, fields

from ..errors import ConfigError
from ..model import geothermal

PROBLEM_EXTENTS = geothermal.EXTENTS      # the built-in problems' domains
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
    first_check: int = 8
    dtype: str = "float64"


@dataclass
class AdjointConfig:
    """PT parameters of the adjoint solve (its own damping; defaults as the forward's)."""
    cfl: float | None = None
    re: float = 2 * math.pi
    tol: float = 1e-8
    maxiter: int | None = None
    ncheck: int = 100
    first_check: int = 8


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
    adaptive_tolerance: bool = True
    tolerance_loose: float = 1e-3
    gradient_accuracy: float | None = None   # None: 0.1 for gd, 0 (no check) for lbfgs
    adjoint_memory: int | None = None    # None: 6 with adaptive_tolerance, else 0
    forward_prediction: int | None = None    # coarse-grid warm-start factor; None: auto, 0: off
    forward_memory: int | None = None    # None: 3 with adaptive_tolerance (APT), else 0
    memory: object = None    # the budget per rank choosing the two memories: None ("auto"),
                             # "off", a size ("30GB", "512MiB") or a fraction (0.8)
    # coarse-to-fine (docs/configuration.md, "Coarse-to-fine levels"); None: one level, the grid
    levels: object = None              # coarsening factors, e.g. [4, 2, 1], or "auto"
    level_iterations: object = None    # outer iterations per level, e.g. [30, 15, 5], or "auto"
    level_misfit_ratio: list | None = None   # a level ends when J/J0 falls below (0: off)
    level_smoothing: str | None = None       # "physical" (default): steps / f^2, or "same"

    def level_factors(self) -> list:
        """The coarsening factors of the run (``[1]``: today's single grid; ``"auto"`` is
        replaced by the factors when the config is resolved: app/level_plan.py)."""
        if self.levels == "auto":
            raise ConfigError("inversion.levels = \"auto\" is chosen when the config is "
                              "resolved (hpcinv.app.resolve.resolved)")
        return [int(f) for f in self.levels] if self.levels else [1]


@dataclass
class ParallelConfig:
    backend: str = "auto"
    dims: list | None = None
    overlap: object = "auto"
    cuda_aware: object = "auto"
    threads: int = 0


@dataclass
class OutputConfig:
    dir: str = "runs/forward"
    figures: bool = True
    overwrite: bool = False


#: Bytes per unit of a memory size (``inversion.memory``, ``hpcinv info --memory``).
SIZE_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
              "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_size(text) -> int | None:
    """Bytes of ``"40GB"``, ``"80 GiB"``, ``"1.5TB"``, ``"123456"`` (``None``: not a size)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][0-9]+)?)\s*([A-Za-z]*)\s*", text) \
        if isinstance(text, str) else None
    unit = m.group(2).upper() if m else None
    return int(float(m.group(1)) * SIZE_UNITS[unit]) if unit in SIZE_UNITS else None


def memory_budget(value) -> tuple[str, float | None]:
    """``inversion.memory`` as ``(kind, amount)``: ``("auto", None)`` (unset or ``"auto"``),
    ``("off", None)``, ``("bytes", n)`` per rank, ``("fraction", f)`` of the memory available
    per rank (``0 < f <= 1``); a one-line :class:`ConfigError` for anything else."""
    if value is None or value == "auto":
        return "auto", None
    if value == "off":
        return "off", None
    if is_number(value) and 0 < value <= 1:
        return "fraction", float(value)
    n = int(value) if is_number(value) and float(value).is_integer() else parse_size(value)
    if n is not None and n > 0:
        return "bytes", n
    raise ConfigError(f"inversion.memory must be \"auto\", \"off\", a size per rank such as "
                      f"\"30GB\" or \"512MiB\", or a fraction in (0, 1] of the free memory "
                      f"such as 0.8, got {value!r}")


def is_number(v) -> bool:
    """An int or float, not a bool (TOML booleans are not numbers)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool)


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
                or not all(isinstance(r, list) and len(r) == 2 and all(is_number(v) for v in r)
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
        if self.problem.name in geothermal.DEFAULT_SHAPES:
            return self.grid.shape(geothermal.DEFAULT_SHAPES[self.problem.name])
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


def _drop_none(d: dict) -> dict:
    return {k: v for k, v in d.items() if v is not None}
