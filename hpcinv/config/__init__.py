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

Layout: :mod:`hpcinv.config.schema` (the section dataclasses, :class:`Config` and constants),
:mod:`hpcinv.config.validate` (value checks); this module the TOML side, both ways: :func:`load`
and :func:`from_dict` (the entry points), data-file path resolution, and :func:`dumps`/:func:`save`
(a config as TOML text).
Library packages never import this one: the application layer (:mod:`hpcinv.app`) turns a
config into library objects, and maps library parameter names to TOML keys in messages.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import fields
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python < 3.11
    import tomli as tomllib

from ..errors import ConfigError, plain
from .schema import (AdjointConfig, BoundaryConfig, Config, GridConfig, InversionConfig,
                     ObservationsConfig, OutputConfig, ParallelConfig, PermeabilityConfig,
                     PATH_KEYS, ProblemConfig, RegularisationConfig, SolverConfig, WellConfig)
from .validate import check_type, hint, validate_config

__all__ = ["Config", "ConfigError", "dumps", "from_dict", "from_toml", "load", "read_toml", "save",
           "validate_config",
           "AdjointConfig", "BoundaryConfig", "GridConfig", "InversionConfig",
           "ObservationsConfig", "OutputConfig", "ParallelConfig", "PermeabilityConfig",
           "ProblemConfig", "RegularisationConfig", "SolverConfig", "WellConfig"]


# --------------------------------------------------------------------------- helpers

def _fill(obj, values: dict, where: str, source: str):
    keys = {f.name: f for f in fields(obj)}
    for key, value in values.items():
        if key not in keys:
            raise ConfigError(f"{source}: unknown key {where}.{key}{hint(key, keys)}")
        setattr(obj, key, check_type(f"{where}.{key}", plain(value), str(keys[key].type)))
    return obj


def from_dict(data: dict, source: str = "config") -> Config:
    """Build and validate a :class:`Config` from nested dicts (parsed TOML)."""
    cfg = Config()
    sections = {f.name: f for f in fields(Config)}
    for sname, sval in data.items():
        if sname not in sections:
            raise ConfigError(f"{source}: unknown section [{sname}]{hint(sname, sections)}")
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
    return validate_config(cfg)


def read_toml(path) -> dict:
    """The parsed TOML file ``path``; every way it can fail is a one-line :class:`ConfigError`
    (missing, a directory, unreadable, not UTF-8 text, invalid TOML). A UTF-8 byte-order mark
    (written by some Windows editors) is accepted."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a directory; give a TOML file") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path} is not a TOML text file: byte {exc.start} is not UTF-8 "
                          f"(a binary file, or another encoding: save it as UTF-8)") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None


def load(path) -> Config:
    """Load and validate a TOML config file. Relative data-file paths are taken relative to
    the file's directory and stored absolute."""
    return from_toml(read_toml(path), path)


def from_toml(data: dict, path) -> Config:
    """:func:`from_dict` of ``data``, the parsed TOML of the file ``path`` (:func:`read_toml`):
    relative data-file paths taken relative to the file's directory and stored absolute."""
    path = Path(path)
    return resolve_paths(from_dict(data, str(path)), path.parent)


# --------------------------------------------------------------------------- writing

def resolve_paths(cfg: Config, base) -> Config:
    """Make the relative data-file paths of ``cfg`` absolute, relative to directory ``base``."""
    for sname, key in PATH_KEYS:
        sec = getattr(cfg, sname)
        v = getattr(sec, key)
        if v:
            v = os.path.expanduser(v)
            setattr(sec, key, v if os.path.isabs(v) else os.path.abspath(os.path.join(base, v)))
    return cfg


def save(cfg: Config, path) -> None:
    """Write ``cfg`` as UTF-8 TOML to ``path`` (the config a run directory records)."""
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(dumps(cfg))


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


_ESCAPES = {"\\": "\\\\", '"': '\\"', "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f",
            "\r": "\\r"}


def _escape(c: str) -> str:
    """One character of a TOML basic string: quote, backslash and every control character
    (U+0000-U+001F, U+007F, which TOML forbids raw) escaped, so a path holding them reloads."""
    if c in _ESCAPES:
        return _ESCAPES[c]
    return f"\\u{ord(c):04x}" if ord(c) < 0x20 or ord(c) == 0x7F else c


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + "".join(_escape(c) for c in v) + '"'
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else ("inf" if v > 0 else "-inf" if v < 0 else "nan")
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(x)}" for k, x in v.items()
                               if x is not None) + "}"
    return str(v)
