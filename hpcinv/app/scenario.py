"""From a validated :class:`~hpcinv.config.Config` to the objects of a run: the true problem
(permeability model and wells), the initial model of an inversion, and the observations.

Every rank builds its own block from global cell-centre coordinates, or reads its own block
of a global HDF5 array with an h5py hyperslab (plain h5py, no MPI-IO); small inputs (the
observation points) are read by every rank. File problems are one-line
:class:`~hpcinv.errors.ConfigError` messages naming the key and the file, raised on *every*
rank together (the ranks agree on the outcome with one collective), so no rank is left waiting.

    cfg = config.load("run.toml")
    true = true_problem(cfg)                     # K, Qf, wells, fixed-pressure sides
    logK0 = initial_logK(cfg, true)              # padded local array (natural log of K)
    obs = make_observations(cfg, true.grid, backend, true_Pf=state.Pf)
"""
from __future__ import annotations

import os

import numpy as np
from mpi4py import MPI

from ..model import problems
from ..errors import ConfigError, HpcinvError
from ..model.grid import Grid
from ..inverse.observations import Observations
from ..model.geothermal import barrier_bounds, grid_points, workshop_points
from ..model.problems import Problem

#: the built-in barrier of the geothermal problems (cells with centre a < x <= b per axis)


# --------------------------------------------------------------------------- collective errors

def _agree(comm, fn, *args):
    """Run ``fn(*args)`` on every rank; if it fails with a user error (ConfigError, OSError,
    KeyError, ValueError) on any rank, raise the first failing rank's message on all ranks."""
    result, msg = None, None
    try:
        result = fn(*args)
    except (HpcinvError, OSError, KeyError, ValueError, TypeError) as exc:
        msg = str(exc) if isinstance(exc, HpcinvError) else f"{type(exc).__name__}: {exc}"
    if comm is not None and comm.Get_size() > 1:
        msgs = comm.allgather(msg)
        msg = next((m for m in msgs if m is not None), None)
    if msg is not None:
        raise ConfigError(msg)
    return result


def _h5py():
    import h5py
    return h5py


def _open_h5(key: str, path: str):
    if not os.path.exists(path):
        raise ConfigError(f"{key}: file not found: {path}")
    try:
        return _h5py().File(path, "r")
    except OSError as exc:
        raise ConfigError(f"{key}: cannot read {path} as HDF5 ({str(exc).splitlines()[0]})") \
            from None


def _numeric_dataset(f, name: str, key: str, path: str):
    """The numeric dataset ``name`` of the open HDF5 file ``f``; a group or a dataset of
    strings (or any non-numeric type) is a one-line error naming ``key`` and the file."""
    obj = f[name]
    if not isinstance(obj, _h5py().Dataset):
        raise ConfigError(f"{key}: {name!r} in {path} is a group, not a dataset "
                          f"(expected a numeric dataset)")
    _check_numeric(obj, key, path)
    return obj


def _check_numeric(ds, key: str, path: str):
    if ds.dtype.kind not in "fiu":
        raise ConfigError(f"{key}: dataset {ds.name.lstrip('/')!r} in {path} is not numeric "
                          f"(dtype {ds.dtype})")


def read_global_block(key: str, path: str, dataset: str, grid: Grid) -> np.ndarray:
    """This rank's owned block of the global ``(nx, ny[, nz])`` dataset ``dataset`` of the HDF5
    file ``path`` (float64). Not collective; errors name ``key`` and the file."""
    with _open_h5(key, path) as f:
        if dataset not in f or not isinstance(f[dataset], _h5py().Dataset):
            have = [k for k in f if isinstance(f[k], _h5py().Dataset)]
            raise ConfigError(f"{key}: {path} has no dataset {dataset!r} (datasets: "
                              f"{', '.join(have) or 'none'})")
        ds = f[dataset]
        if tuple(ds.shape) != tuple(grid.shape):
            raise ConfigError(f"{key}: dataset {dataset!r} in {path} has shape "
                              f"{tuple(ds.shape)}, expected the grid's {tuple(grid.shape)} "
                              f"(indexed [ix, iy{', iz' if grid.ndim == 3 else ''}])")
        _check_numeric(ds, key, path)
        d = grid.decomp
        sl = tuple(slice(o, o + n) for o, n in zip(d.offset, d.local_shape))
        return np.asarray(ds[sl], dtype=np.float64)


def _bad_count(comm, bad_local: int) -> int:
    return comm.allreduce(int(bad_local), op=MPI.SUM) if comm.Get_size() > 1 else int(bad_local)


# --------------------------------------------------------------------------- permeability

def permeability(cfg, grid: Grid) -> np.ndarray:
    """The true K of ``cfg.permeability`` as a padded local array (ghosts zero). Collective
    when ``type = "file"``. Returns ``None`` when ``[permeability]`` is not given."""
    p, prob = cfg.permeability, cfg.problem
    if p.type is None:
        return None
    d = grid.decomp
    K = np.full(d.padded_shape, p.background(prob))
    if p.type == "barrier":
        if p.barrier is None:         # the geothermal problems' own barrier geometry
            bounds = barrier_bounds(grid.ndim)
            value = prob.k_barrier
        else:
            bounds = {"xyz".index(a): tuple(float(v) for v in r)
                      for a, r in p.barrier.items() if a in "xyz"}
            value = p.barrier.get("value", prob.k_barrier)
        K[problems.box_mask(grid, bounds)] = float(value)
    elif p.type == "layered":
        for layer in p.layers:         # later layers override earlier ones
            bounds = {"xyz".index(layer["axis"]): tuple(float(v) for v in layer["range"])}
            K[problems.box_mask(grid, bounds)] = float(layer["value"])
    elif p.type == "file":
        block = _agree(grid.comm, read_global_block, "permeability.file", p.file, p.dataset,
                       grid)
        with np.errstate(over="ignore", invalid="ignore"):
            k = 10.0 ** block if p.log10 else block
        bad = ~(np.isfinite(k) & (k > 0))
        nbad = _bad_count(grid.comm, bad.sum())
        if nbad:
            what = "log10 K not finite or K overflowing" if p.log10 else "K <= 0 or NaN/inf"
            raise ConfigError(f"permeability.file: dataset {p.dataset!r} in {p.file} has "
                              f"{nbad} cell(s) with {what}; K must be finite and > 0")
        K[d.owned()] = k
    problems._zero_ghosts(K, d)
    return K


def wells(cfg, grid: Grid):
    """``(Qf, wells)`` of ``cfg.wells``, or ``None`` when no ``[[wells]]`` are given."""
    if not cfg.wells:
        return None
    specs = [(w.position, w.rate, w.z_range) for w in cfg.wells]
    return problems.place_wells(grid, specs, "wells")


# --------------------------------------------------------------------------- the true problem

def true_problem(cfg, comm=None, k_background=None, k_barrier=None) -> Problem:
    """The true problem of a validated config (collective over ``comm``, default
    ``MPI.COMM_WORLD``).

    ``geothermal2d``/``geothermal3d``: exactly :func:`hpcinv.model.problems.build` with the config's
    grid, ``k_background``/``k_barrier`` and dims; ``[permeability]`` replaces K and
    ``[[wells]]`` replace the wells when given. ``custom``: the grid of ``grid.extent`` and
    ``nx, ny[, nz]``, K from ``[permeability]``, wells from ``[[wells]]``. The fixed-pressure
    sides come from ``[boundary]``; K is checked to be finite and > 0 everywhere.

    ``k_background``/``k_barrier`` (overrides, e.g. ``1.0, 1.0`` for a K = 1 starting model)
    replace the ``[problem]`` values and drop ``[permeability]``: the geothermal barrier model
    with these values, or for ``custom`` the constant ``k_background``.
    """
    comm = MPI.COMM_WORLD if comm is None else comm
    overridden = k_background is not None or k_barrier is not None
    kb = cfg.problem.k_background if k_background is None else float(k_background)
    kr = cfg.problem.k_barrier if k_barrier is None else float(k_barrier)
    name = cfg.problem.name
    shape = cfg.grid_shape()
    if name == "custom":
        grid = Grid(shape, cfg.extent(), comm, cfg.parallel.dims)
        if overridden:
            K = np.full(grid.decomp.padded_shape, kb)
            problems._zero_ghosts(K, grid.decomp)
        else:
            K = permeability(cfg, grid)
        Qf, ws = wells(cfg, grid)
        problem = Problem("custom", grid, K, Qf, ws)
    else:
        problem = problems.build(name, shape, comm=comm, dims=cfg.parallel.dims,
                                 k_background=kb, k_barrier=kr)
        if not overridden and cfg.permeability.type is not None:
            problem.K = permeability(cfg, problem.grid)
        if cfg.wells:
            problem.Qf, problem.wells = wells(cfg, problem.grid)
    problem.fixed_pressure = cfg.boundary.fixed_pressure(problem.grid.ndim)
    problem.validate()
    return problem


# --------------------------------------------------------------------------- initial model

def initial_logK(cfg, problem) -> np.ndarray:
    """The inversion's starting model ``log K`` (natural log) as a padded local array (owned
    cells set, ghosts zero): the constant ``inversion.initial_logK`` (default 0: K = 1), or this
    rank's block of ``inversion.initial_dataset`` in ``inversion.initial_file``."""
    inv, grid = cfg.inversion, problem.grid
    d = grid.decomp
    out = np.zeros(d.padded_shape)
    if inv.initial_file is None:
        out[d.owned()] = 0.0 if inv.initial_logK is None else float(inv.initial_logK)
        return out
    block = _agree(grid.comm, read_global_block, "inversion.initial_file", inv.initial_file,
                   inv.initial_dataset, grid)
    nbad = _bad_count(grid.comm, (~np.isfinite(block)).sum())
    if nbad:
        raise ConfigError(f"inversion.initial_file: dataset {inv.initial_dataset!r} in "
                          f"{inv.initial_file} has {nbad} non-finite value(s)")
    out[d.owned()] = block
    return out


# --------------------------------------------------------------------------- observations

def _read_csv(path: str, ndim: int):
    key = "observations.file"
    if not os.path.exists(path):
        raise ConfigError(f"{key}: file not found: {path}")
    try:
        with open(path, encoding="utf-8-sig") as fh:
            text = fh.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{key}: cannot read {path} ({exc})") from None
    header, rows = None, []
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        cells = [c.strip() for c in line.split(",")]
        if header is None:
            header = [c.lower() for c in cells]
            valid = ("x", "y", "z", "value", "sigma")
            for c in header:
                if c not in valid:
                    import difflib
                    close = difflib.get_close_matches(c, valid, n=1, cutoff=0.5)
                    hint = f" (did you mean {close[0]!r}?)" if close else ""
                    raise ConfigError(f"{key}: {path} line {lineno}: unknown column {c!r}{hint}; "
                                      f"the header names x, y[, z], value[, sigma]")
            if len(set(header)) != len(header):
                raise ConfigError(f"{key}: {path} line {lineno}: a column is named twice: "
                                  f"{', '.join(header)}")
            need = list("xyz"[:ndim])
            missing = [c for c in need if c not in header]
            if missing:
                raise ConfigError(f"{key}: {path} has no column {', '.join(missing)} (header "
                                  f"{', '.join(header)}; a {ndim}D problem needs "
                                  f"{', '.join(need)})")
            if ndim == 2 and "z" in header:
                raise ConfigError(f"{key}: {path} has a z column but the problem is 2D")
            continue
        if len(cells) != len(header):
            raise ConfigError(f"{key}: {path} line {lineno}: {len(cells)} fields, the header "
                              f"has {len(header)}")
        try:
            rows.append([float(c) for c in cells])
        except ValueError:
            raise ConfigError(f"{key}: {path} line {lineno}: not a number in {line!r}") from None
        bad = [h for h, v in zip(header, rows[-1]) if not np.isfinite(v)]
        if bad:
            raise ConfigError(f"{key}: {path} line {lineno}: {bad[0]} is not finite "
                              f"({cells[header.index(bad[0])]})")
    if header is None or not rows:
        raise ConfigError(f"{key}: {path} holds no observations (a header row x, y[, z], "
                          f"value[, sigma], then one row per point)")
    data = np.array(rows, dtype=float)
    col = {h: data[:, i] for i, h in enumerate(header)}
    points = np.stack([col[a] for a in "xyz"[:ndim]], axis=1)
    return points, col.get("value"), col.get("sigma")


def _read_h5(path: str, ndim: int):
    key = "observations.file"
    with _open_h5(key, path) as f:
        if "points" not in f:
            raise ConfigError(f"{key}: {path} has no dataset 'points' (shape (n, {ndim}))")
        pts = np.asarray(_numeric_dataset(f, "points", key, path)[()], dtype=float)
        if pts.ndim != 2 or pts.shape[1] != ndim or len(pts) == 0:
            raise ConfigError(f"{key}: dataset 'points' in {path} has shape {pts.shape}, "
                              f"expected (n, {ndim}) with n >= 1")
        out = [pts]
        for name in ("values", "sigma"):
            if name in f:
                v = np.asarray(_numeric_dataset(f, name, key, path)[()], dtype=float)
                if v.shape != (len(pts),):
                    raise ConfigError(f"{key}: dataset {name!r} in {path} has shape {v.shape}, "
                                      f"expected ({len(pts)},) (one per point)")
                out.append(v)
            else:
                out.append(None)
    for name, v in zip(("points", "values", "sigma"), out):
        if v is not None and not np.all(np.isfinite(v)):
            k = int(np.argwhere(~np.isfinite(v))[0][0])
            raise ConfigError(f"{key}: dataset {name!r} in {path} has a NaN or inf value "
                              f"(entry {k})")
    return tuple(out)


def observation_points(cfg, grid: Grid):
    """``(points, values or None, sigma or None)`` of ``[observations]`` (the same on every
    rank; a file is read by every rank, its errors raised on all of them together).

    ``points = "workshop"``: the workshop's points; ``"grid"``: ``observations.grid``;
    ``"file"``: a CSV (header row naming x, y[, z], value[, sigma]; '#' comments) or an HDF5
    file (datasets ``points`` (n, ndim), optional ``values`` (n,), ``sigma`` (n,)).
    """
    o, nd = cfg.observations, grid.ndim
    if o.points == "workshop":
        return workshop_points(nd), None, None
    if o.points == "grid":
        return grid_points(o.grid, nd), None, None
    reader = _read_csv if o.file.lower().endswith(".csv") else _read_h5
    return _agree(grid.comm, reader, o.file, nd)


def _file_has_values(path: str) -> bool:
    if path.lower().endswith(".csv"):
        if not os.path.exists(path):
            raise ConfigError(f"observations.file: file not found: {path}")
        try:
            with open(path, encoding="utf-8-sig") as fh:
                for line in fh:
                    line = line.split("#", 1)[0].strip()
                    if line:
                        return "value" in [c.strip().lower() for c in line.split(",")]
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"observations.file: cannot read {path} ({exc})") from None
        return False
    with _open_h5("observations.file", path) as f:
        return "values" in f


def needs_synthetic_values(cfg, comm=None) -> bool:
    """True when the observed values must be synthesised from the true model (no file, or a
    file without values): the caller then solves the true forward problem and passes its
    ``Pf`` to :func:`make_observations`. Collective over ``comm`` (default COMM_WORLD) when
    ``observations.points = "file"``."""
    o = cfg.observations
    if o.points != "file":
        return True
    comm = MPI.COMM_WORLD if comm is None else comm
    return not _agree(comm, _file_has_values, o.file)


def make_observations(cfg, grid: Grid, backend=None, true_Pf=None, demean=None) -> Observations:
    """The :class:`~hpcinv.inverse.Observations` of ``[observations]``.

    Values: from the file when it has them (real field data; ``true_Pf`` is then not used),
    else recorded from ``true_Pf`` (the true model's pressure, a padded local backend array),
    else left unset (call ``obs.record`` later). Sigma: the file's column/dataset when present,
    else ``observations.sigma``. ``demean`` defaults to the gauge of ``[boundary]`` (True when
    every side is no-flux: ``Problem.gauge_free``).
    """
    o = cfg.observations
    points, values, sigma = observation_points(cfg, grid)
    if demean is None:
        demean = not cfg.boundary.fixed_pressure(grid.ndim)
    source = {"workshop": "observations.points = \"workshop\"",
              "grid": "observations.grid", "file": f"observations.file {o.file}"}[o.points]
    try:
        obs = Observations(grid, points, values=values,
                           sigma=sigma if sigma is not None else o.sigma, method=o.method,
                           demean=demean)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    if values is None and true_Pf is not None:
        obs.record(true_Pf, backend)
    return obs
