"""Validation of a :class:`~hpcinv.config.Config`: value ranges and combinations, with
one-line :class:`ConfigError` messages naming the closest valid choice."""
from __future__ import annotations

import difflib
import math
from typing import TYPE_CHECKING

from ..errors import ConfigError
from ..solvers.fields import log_range
from .library import PT_KEYS, check_optimiser_settings, library_names, pt_params
from .schema import (AXES, OBS_FILE_SUFFIXES, PATH_KEYS, PERMEABILITY_TYPES, memory_budget,
                     POINT_KINDS, PRECONDITIONERS, PROBLEM_EXTENTS, SIDES, WellConfig, is_number)

if TYPE_CHECKING:
    from .schema import Config


def validate_config(cfg: Config) -> Config:
    """Check value ranges and combinations of ``cfg`` (returned); raises :class:`ConfigError`."""
    from ..backend import BACKENDS
    names = (*PROBLEM_EXTENTS, "custom")
    if cfg.problem.name not in names:
        raise ConfigError(f"problem.name: unknown problem {cfg.problem.name!r}"
                          f"{hint(cfg.problem.name, names)}; choose one of "
                          f"{', '.join(names)}")
    for key in ("k_background", "k_barrier"):
        v = getattr(cfg.problem, key)
        if not (v > 0 and math.isfinite(v)):
            raise ConfigError(f"problem.{key} must be a finite permeability > 0, got {v}")
    _validate_grid(cfg)
    if not str(cfg.output.dir).strip():
        raise ConfigError("output.dir must name a directory, got an empty string (the run "
                          "would write into the working directory)")
    _validate_path_text(cfg)
    ndim = cfg.ndim()
    if cfg.solver.method not in ("apt", "petsc"):
        raise ConfigError(f"solver.method must be 'apt' or 'petsc', got "
                          f"{cfg.solver.method!r}{hint(cfg.solver.method, ('apt', 'petsc'))}")
    if cfg.solver.dtype not in ("float64", "float32"):
        raise ConfigError(f"solver.dtype must be 'float64' or 'float32', "
                          f"got {cfg.solver.dtype!r}")
    for section in ("solver", "adjoint"):
        with library_names(section, PT_KEYS):
            pt_params(getattr(cfg, section)).validate()
    for name in SIDES:
        v = getattr(cfg.boundary, name)
        if not (v == "no-flux" or (isinstance(v, (int, float)) and not isinstance(v, bool)
                                   and math.isfinite(v))):
            raise ConfigError(f"boundary.{name} must be \"no-flux\" or a finite pressure, "
                              f"got {v!r}")
    _validate_permeability(cfg, ndim)
    _validate_wells(cfg, ndim)
    _validate_observations(cfg, ndim)
    r = cfg.regularisation
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
    _validate_inversion(cfg)
    _validate_levels(cfg)
    if cfg.parallel.backend not in BACKENDS:
        raise ConfigError(f"parallel.backend: unknown backend {cfg.parallel.backend!r}"
                          f"{hint(cfg.parallel.backend, BACKENDS)}; choose one of "
                          f"{', '.join(BACKENDS)}")
    aware = cfg.parallel.cuda_aware
    if not (isinstance(aware, bool) or aware == "auto"):
        raise ConfigError(f"parallel.cuda_aware must be \"auto\", true or false, "
                          f"got {cfg.parallel.cuda_aware!r}")
    overlap = cfg.parallel.overlap
    if not (isinstance(overlap, bool) or overlap == "auto"):
        raise ConfigError(f"parallel.overlap must be \"auto\", true or false, "
                          f"got {overlap!r}")
    if cfg.parallel.threads < 0:
        raise ConfigError(f"parallel.threads must be >= 0, got {cfg.parallel.threads}")
    if cfg.parallel.dims is not None and (
            not isinstance(cfg.parallel.dims, list)
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                       for d in cfg.parallel.dims)):
        raise ConfigError(f"parallel.dims must be a list of integers >= 0 (0: automatic), "
                          f"got {cfg.parallel.dims!r}")
    return cfg


def _validate_path_text(cfg):
    """Paths must be text the run directory's UTF-8 config.toml can record (a file name of
    bytes that are not UTF-8 arrives as lone surrogates, which no TOML string can hold)."""
    for sname, key in (("output", "dir"), *PATH_KEYS):
        v = getattr(getattr(cfg, sname), key)
        if isinstance(v, str) and any("\ud800" <= c <= "\udfff" for c in v):
            raw = v.encode("utf-8", "surrogateescape")
            raise ConfigError(f"{sname}.{key}: the path {raw!r} is not valid UTF-8, so the "
                              f"run's config.toml could not record it; rename it")


def _validate_grid(cfg):
    g = cfg.grid
    if cfg.problem.name == "custom":
        cfg.grid_shape()             # extent well formed, every size given
    elif g.extent is not None and not _same_box(g.extent, PROBLEM_EXTENTS[cfg.problem.name]):
        # a resolved config (hpcinv.app.resolve) states the built-in domain; any other is wrong
        raise ConfigError(f"grid.extent is only for problem.name = \"custom\"; "
                          f"{cfg.problem.name} has its own domain "
                          f"{_box(PROBLEM_EXTENTS[cfg.problem.name])}")


def _same_box(given, box) -> bool:
    """``given`` (TOML) is exactly the domain ``box``."""
    try:
        return [[float(v) for v in r] for r in given] == [[float(v) for v in r] for r in box]
    except (TypeError, ValueError):
        return False


def _validate_permeability(cfg, ndim):
    p, where = cfg.permeability, "permeability"
    if p.type is None:
        given = [k for k in ("value", "barrier", "layers", "file")
                 if getattr(p, k) is not None]
        given += [k for k, d in (("dataset", "K"), ("log10", False)) if getattr(p, k) != d]
        if given:
            raise ConfigError(f"permeability.type is required with permeability.{given[0]} "
                              f"(one of {', '.join(PERMEABILITY_TYPES)})")
        if cfg.problem.name == "custom":
            raise ConfigError("permeability.type is required for problem.name = \"custom\" "
                              f"(the true model: {', '.join(PERMEABILITY_TYPES)})")
        return
    if p.type not in PERMEABILITY_TYPES:
        raise ConfigError(f"permeability.type must be one of "
                          f"{', '.join(PERMEABILITY_TYPES)}, got {p.type!r}"
                          f"{hint(p.type, PERMEABILITY_TYPES)}")
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
            if cfg.problem.name == "custom":
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


def _validate_wells(cfg, ndim):
    ext = cfg.extent()
    if cfg.problem.name == "custom" and not cfg.wells:
        raise ConfigError("a custom problem needs at least one [[wells]] entry (position, "
                          "rate)")
    rates = []
    for i, w in enumerate(cfg.wells):
        where = f"wells[{i}]"
        if not isinstance(w, WellConfig):
            raise ConfigError(f"{where} must be a table (position, rate, z_range)")
        if w.position is None:
            raise ConfigError(f"{where}.position is required: [x, y] or [x, y, z]")
        if w.rate is None:
            raise ConfigError(f"{where}.rate is required (total volume rate: > 0 injection, "
                              f"< 0 extraction)")
        if not (is_number(w.rate) and math.isfinite(w.rate)):
            raise ConfigError(f"{where}.rate must be a finite number, got {w.rate!r}")
        rates.append(float(w.rate))
        pos = w.position
        lens = (ndim,) if w.z_range is None or ndim == 2 else (2, 3)
        if (not isinstance(pos, list) or len(pos) not in lens
                or not all(is_number(v) and math.isfinite(v) for v in pos)):
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
    if cfg.wells and cfg.gauge_free():
        total, scale = math.fsum(rates), math.fsum(abs(r) for r in rates)
        if abs(total) > 1e-12 * max(scale, 1e-300):
            raise ConfigError(f"wells: the rates sum to {total:g}, but every side is no-flux, "
                              "so no steady solution exists; make the rates sum to 0 or fix "
                              "the pressure on a side in [boundary]")


def _validate_observations(cfg, ndim):
    o = cfg.observations
    if o.method not in ("nearest", "linear"):
        raise ConfigError(f"observations.method must be 'nearest' or 'linear', got "
                          f"{o.method!r}")
    if not (o.sigma > 0 and math.isfinite(o.sigma)):
        raise ConfigError(f"observations.sigma must be > 0, got {o.sigma}")
    if o.points not in POINT_KINDS:
        raise ConfigError(f"observations.points must be one of "
                          f"{', '.join(repr(k) for k in POINT_KINDS)}, got {o.points!r}"
                          f"{hint(o.points, POINT_KINDS)}")
    for key in ("grid", "file"):
        if getattr(o, key) is not None and o.points != key:
            raise ConfigError(f"observations.{key} is only used with points = \"{key}\" "
                              f"(points is \"{o.points}\")")
    if o.points == "grid":
        if o.grid is None:
            raise ConfigError("observations.grid is required with points = \"grid\": "
                              "{x = [x0, x1, nx], y = [y0, y1, ny]}")
        g = _check_table("observations.grid", o.grid, AXES)
        ext = cfg.extent()
        for ax, a in enumerate(AXES):
            w = f"observations.grid.{a}"
            if ax >= ndim:
                if a in g:
                    raise ConfigError(f"{w} given for a {ndim}D problem")
                continue
            if a not in g:
                raise ConfigError(f"{w} is required: [{a}0, {a}1, n{a}]")
            s = g[a]
            if (not isinstance(s, list) or len(s) != 3 or not is_number(s[0])
                    or not is_number(s[1]) or not _is_int(s[2])):
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


def _validate_inversion(cfg):
    v = cfg.inversion
    if not 0 < v.tolerance_loose < 1:
        raise ConfigError(f"inversion.tolerance_loose must be in (0, 1), got "
                          f"{v.tolerance_loose}")
    for key, ok, allowed in (      # the warm starts' sizes (None: chosen by app/assembly.py)
            ("adjoint_memory", range(65), "in [0, 64] (0: the rescaled last adjoint solution)"),
            ("forward_memory", range(65), "in [0, 64] (0: the previous forward solution)"),
            ("forward_prediction", (0, *range(2, 17)), "0 (off) or a factor in [2, 16]")):
        if getattr(v, key) is not None and getattr(v, key) not in ok:
            raise ConfigError(f"inversion.{key} must be {allowed}, got {getattr(v, key)}")
    memory_budget(v.memory)                      # one line unless a budget (config/schema.py)
    check_optimiser_settings(v)
    if v.iterations < 1:
        raise ConfigError(f"inversion.iterations must be >= 1, got {v.iterations}")
    if not 0 <= v.misfit_ratio < 1:
        raise ConfigError(f"inversion.misfit_ratio must be in [0, 1) (0: off), "
                          f"got {v.misfit_ratio}")
    if not (v.step_tol >= 0 and math.isfinite(v.step_tol)):
        raise ConfigError(f"inversion.step_tol must be >= 0 and finite (0: off), "
                          f"got {v.step_tol}")
    if v.precondition not in PRECONDITIONERS:
        raise ConfigError(f"inversion.precondition must be 'smoothing' or 'none', got "
                          f"{v.precondition!r}{hint(v.precondition, PRECONDITIONERS)}")
    if v.initial_logK is not None and not math.isfinite(v.initial_logK):
        raise ConfigError(f"inversion.initial_logK must be finite, got {v.initial_logK}")
    lo, hi = log_range(cfg.solver.dtype)
    if v.initial_logK is not None and not lo <= v.initial_logK <= hi:
        raise ConfigError(f"inversion.initial_logK = {v.initial_logK:g} makes K = exp(log K) "
                          f"{'overflow' if v.initial_logK > hi else 'underflow'} "
                          f"{cfg.solver.dtype} (log K must lie in [{lo:.4g}, {hi:.4g}])")
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


def _validate_levels(cfg):
    """``inversion.levels``, ``level_iterations``, ``level_misfit_ratio`` (coarse-to-fine)."""
    v = cfg.inversion
    if v.level_smoothing not in (None, "same", "physical"):
        raise ConfigError(f"inversion.level_smoothing must be \"same\" or \"physical\", got "
                          f"{v.level_smoothing!r}")
    if v.levels is None:
        for key in ("level_iterations", "level_misfit_ratio", "level_smoothing"):
            if getattr(v, key) is not None:
                raise ConfigError(f"inversion.{key} needs inversion.levels (e.g. [4, 2, 1])")
        return
    lv, it = v.levels, v.level_iterations
    if lv == "auto":                 # factors chosen when resolved (app/level_plan.py)
        if it in (None, "auto") and v.level_misfit_ratio is None:
            return
        raise ConfigError("inversion.levels = \"auto\" takes level_iterations = \"auto\" (or "
                          "none) and no level_misfit_ratio: the levels end by rule")
    if (not isinstance(lv, list) or not lv or not all(_is_int(f) and f >= 1 for f in lv)
            or any(a <= b for a, b in zip(lv, lv[1:])) or lv[-1] != 1):
        raise ConfigError(f"inversion.levels must be strictly decreasing integer coarsening "
                          f"factors ending with 1 (e.g. [4, 2, 1]) or \"auto\", got {lv!r}")
    n = len(lv)
    if n == 1 and it is not None:
        raise ConfigError("inversion.level_iterations with a single level: use "
                          "inversion.iterations")
    if it is None and n > 1:
        raise ConfigError(f"inversion.level_iterations is required with inversion.levels "
                          f"= {lv}: the outer iterations of each level, e.g. "
                          f"{[30, 15, 5][-n:] if n <= 3 else [10] * n}, or \"auto\"")
    if it not in (None, "auto") and (not isinstance(it, list) or len(it) != n or not all(
            _is_int(k) and k >= 0 for k in it) or it[-1] < 1):
        raise ConfigError(f"inversion.level_iterations must have one integer >= 0 per level "
                          f"({n}), the last >= 1, or \"auto\", got {it!r}")
    r = v.level_misfit_ratio
    if r is not None and (len(r) != n or not all(is_number(x) and 0 <= x < 1 for x in r)):
        raise ConfigError(f"inversion.level_misfit_ratio must have one number in [0, 1) per "
                          f"level ({n}; 0: off), got {r!r}")
    for i, f in enumerate(lv):
        if min(cs := tuple(-(-s // f) for s in cfg.grid_shape())) < 3:
            raise ConfigError(f"inversion.levels: level {i} (factor {f}) would have "
                              f"{'x'.join(map(str, cs))} cells, < 3 on an axis: use a smaller one")


# --------------------------------------------------------------------------- helpers

def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _fmt(p) -> str:
    return "(" + ", ".join(f"{v:g}" for v in p) + ")"


def _box(ext) -> str:
    return " x ".join(f"[{a:g}, {b:g}]" for a, b in ext)


def _check_k(where, v):
    if not (is_number(v) and math.isfinite(v) and v > 0):
        raise ConfigError(f"{where} must be a finite permeability > 0, got {v!r}")


def _check_interval(where, v):
    if not (isinstance(v, list) and len(v) == 2 and all(is_number(x) for x in v)):
        raise ConfigError(f"{where} must be [a, b] (two numbers), got {v!r}")
    if not (math.isfinite(v[0]) and math.isfinite(v[1]) and v[0] < v[1]):
        raise ConfigError(f"{where} must have finite a < b, got {v!r}")


def _check_table(where, t, valid, required=False) -> dict:
    """An inline table: a dict with keys from ``valid`` (all of them when ``required``)."""
    if not isinstance(t, dict):
        raise ConfigError(f"{where} must be a table {{{', '.join(valid)}}}, got {t!r}")
    for k in t:
        if k not in valid:
            raise ConfigError(f"unknown key {where}.{k}{hint(k, valid)}; valid: "
                              f"{', '.join(valid)}")
    if required:
        for k in valid:
            if k not in t:
                raise ConfigError(f"{where}.{k} is required ({{{', '.join(valid)}}})")
    return t


def hint(name, valid) -> str:
    close = difflib.get_close_matches(str(name), list(valid), n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_type(where: str, value, annotation: str):
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
