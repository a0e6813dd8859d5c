"""Figures of an inversion run directory (``hpcinv plot DIR``).

:func:`plot_run` reads what the run has written so far and draws, into ``DIR/figures/``:

- ``model.png``: true (if known) and inverted log10 K side by side, each with its own colour
  range, and their difference (inverted - true), with the wells (triangles up: injection,
  rate > 0; down: extraction) and the observation points;
- ``pressure.png``: the pressure field ``Pf`` of the current model, with the wells;
- ``misfit.png``: J/J0 of the accepted models against the outer iteration on a log scale;
  rejected trials are separate red crosses, never joined into the curve; iterations whose
  history line carries another ``note`` (e.g. a line search) are marked and listed in the
  legend.

The problem is nondimensional (x, y, K, Pf carry no units): the figures say so. The HDF5 files
hold ``logK`` as the natural logarithm ln K; the figures show log10 K (the colour bars say
which). A ``forward`` or ``gradient`` directory gets the figures of its own fields instead
(:mod:`hpcinv.app.plot_fields`).

It works on a finished run (``model_final.h5``) and on a running one (``model_latest.h5``, or only
``history.jsonl``): a figure whose input is missing or unreadable is skipped with a one-line
message on stderr. 3D fields are shown as the x-y slice through the wells (or the middle z).

matplotlib is imported inside the functions (object-oriented API with the Agg canvas, no pyplot,
no global backend change), so ``import hpcinv`` does not pull it in.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from ..inverse.optimise import halved_note
from .plot_draw import (NONDIMENSIONAL, _figure, _legend, _mark_wells, _plane, _read_h5, _save,
                        _say, _show, _Skip, finite_range, panels_figure, symmetric_range)

RUN_FILES = ("config.toml", "setup.h5", "model_final.h5", "model_latest.h5", "history.jsonl",
             "fields.h5", "gradient.h5")
INVERSION_FILES = RUN_FILES[1:5]
LOG10_K = "log10 K  (HDF5 logK = ln K)"


# ----------------------------------------------------------------------------------- reading
def _config(run: Path) -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:         # Python < 3.11
        import tomli as tomllib
    try:
        return tomllib.loads((run / "config.toml").read_text())
    except (OSError, ValueError):
        return {}


def _section(cfg: dict, name: str) -> dict:
    sec = cfg.get(name)
    return sec if isinstance(sec, dict) else {}


def _setup(run: Path) -> dict:
    """Wells, observations and grid attributes of setup.h5 ({} if missing or unreadable)."""
    path = run / "setup.h5"
    if not path.exists():
        return {}
    try:
        return _read_h5(path, ("obs_points", "well_positions", "well_rates"),
                        ("extent", "spacing", "shape"))
    except (OSError, KeyError) as exc:
        _say(f"cannot read {path}: {exc}; drawing without wells and observations")
        return {}


def _true_model(run: Path, plane) -> dict:
    """``logK_true`` (its x-y plane in 3D) from setup.h5; {} for field data."""
    path = run / "setup.h5"
    try:
        return _read_h5(path, ("logK_true",), plane=plane) if path.exists() else {}
    except (OSError, KeyError) as exc:
        _say(f"cannot read logK_true from {path}: {exc}")
        return {}


def _model(run: Path, plane) -> tuple[dict, str]:
    """The current model (``logK``, ``Pf``, ``iteration``) and a label saying which file."""
    for name, label in (("model_final.h5", "final"), ("model_latest.h5", "latest")):
        path = run / name
        if path.exists():
            try:
                return _read_h5(path, ("logK", "Pf"), ("iteration",), plane), label
            except (OSError, KeyError) as exc:   # e.g. being replaced by a running inversion
                raise _Skip(f"cannot read {path}: {exc}") from None
    raise _Skip(f"no model_final.h5 or model_latest.h5 in {run} yet")


def read_history(path: Path) -> list[dict]:
    """The records of ``history.jsonl``; an unparsable line (one being written) is skipped."""
    records = []
    for line in Path(path).read_text().splitlines():
        if line.strip():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict) and "iteration" in rec:
                records.append(rec)
    return records


def _extent(setup: dict, cfg: dict, shape) -> np.ndarray:
    """Flat [x0, x1, y0, y1(, z0, z1)]: setup.h5, else config [grid] extent, else cell indices."""
    ndim = len(shape)
    for ext in (setup.get("extent"), _section(cfg, "grid").get("extent")):
        if ext is not None:
            ext = np.asarray(ext, dtype=float).ravel()
            if ext.size == 2 * ndim:
                return ext
    return np.ravel([(0.0, float(n)) for n in shape])


# -------------------------------------------------------------------------------- figures
FIGURES = ("model.png", "pressure.png", "misfit.png")   # what plot_run writes into figures/


def _iteration(model: dict) -> str:
    it = model.get("iteration")
    return f", iteration {int(it)}" if it is not None else ""


def model_panels(true_log10, inv_log10, inv_title: str) -> list[tuple]:
    """The panels of ``model.png`` (log10 K arrays; ``true_log10`` ``None`` for field data):
    ``(title, field, colour map, (vmin, vmax), colour bar label)``. The inverted model has its
    own range (a recovered barrier at -1.7 would look faint on the true model's -6..0) and the
    difference panel shows what the true model's range would hide."""
    panels = []
    if true_log10 is not None:
        panels.append(("true model", true_log10, "viridis", finite_range(true_log10),
                       LOG10_K))
    panels.append((inv_title, inv_log10, "viridis", finite_range(inv_log10),
                   LOG10_K + ("; its own range" if true_log10 is not None else "")))
    if true_log10 is not None:
        diff = inv_log10 - true_log10
        panels.append(("difference: inverted - true", diff, "RdBu_r", symmetric_range(diff),
                       "log10 K inverted - log10 K true"))
    return panels


def plot_model(out: Path, title: str, ext, setup: dict, model: dict, which: str,
               true: dict) -> Path:
    """``model.png``: true and inverted log10 K and their difference (or the inverted model
    alone for field data)."""
    if "logK" not in model:
        raise _Skip(f"no logK dataset in the {which} model file")
    true_log10 = None
    if "logK_true" in true:
        if true["logK_true_shape"] != model["logK_shape"]:
            _say(f"logK_true shape {true['logK_true_shape']} differs from logK "
                 f"{model['logK_shape']}; showing the inverted model only")
        else:
            true_log10 = true["logK_true"] / math.log(10.0)
    panels = model_panels(true_log10, model["logK"] / math.log(10.0),
                          f"inverted ({which}{_iteration(model)})")
    return panels_figure(out / "model.png", f"{title}: permeability log10 K", ext, panels,
                         setup, model.get("where", ""))


def plot_pressure(out: Path, title: str, ext, setup: dict, model: dict, which: str) -> Path:
    """``pressure.png``: the pressure of the current model, with contours and the wells."""
    if "Pf" not in model:
        raise _Skip(f"no Pf dataset in the {which} model file")
    field, where = model["Pf"], model.get("where", "")
    aspect = (ext[3] - ext[2]) / (ext[1] - ext[0])
    fig = _figure(1, 7.0, 7.0 * aspect + 1.4)
    ax = fig.subplots()
    finite = np.isfinite(field)
    # symmetric limits about 0 (Pf has zero-sum gauge)
    fig.colorbar(_show(ax, field, ext, "RdBu_r", *symmetric_range(field)), ax=ax,
                 label="Pf (dimensionless)", shrink=0.75)
    nx, ny = field.shape
    xc = ext[0] + (np.arange(nx) + 0.5) * (ext[1] - ext[0]) / nx
    yc = ext[2] + (np.arange(ny) + 0.5) * (ext[3] - ext[2]) / ny
    if finite.all() and np.ptp(field) > 0 and min(nx, ny) > 1:
        ax.contour(xc, yc, field.T, levels=15, colors="k", linewidths=0.5, alpha=0.6)
    _mark_wells(ax, setup)
    _legend(fig, ax)
    ax.set_title(f"{title}: pressure Pf ({which} model{_iteration(model)})"
                 + (f"\n{where}" if where else "") + f"\n({NONDIMENSIONAL})",
                 fontsize="medium")
    return _save(fig, out / "pressure.png")


def _is_rejected(r) -> bool:
    """A line whose trial was rejected (older histories: only their note says so, and their
    misfit is the trial's)."""
    return bool(r.get("rejected")) or "rejected" in (r.get("note") or "")


def misfit_series(recs) -> dict:
    """What ``misfit.png`` draws from history records: ``accepted`` ``(iterations, J/J0,
    notes)`` of the accepted models (the curve), ``trials`` ``(iterations, J/J0)`` of rejected
    trials (markers, never joined into the curve), ``levels`` ``[(first iteration, level,
    grid)]`` of a coarse-to-fine run. Notes of rejections and level starts are left out (the
    markers and level lines show them)."""
    j0 = next((r["misfit"] for r in recs if r.get("iteration") == 0 and "misfit" in r), None)

    def ratio(r, key="misfit"):
        q = r.get(f"{key}_ratio")
        if q is None and j0 and r.get(key) is not None:
            q = r[key] / j0
        return float(q) if q is not None and np.isfinite(q) and q > 0 else None

    it, acc, notes, t_it, t_q, starts = [], [], [], [], [], []
    for r in recs:
        if "level" in r and (not starts or starts[-1][1] != r["level"]):   # coarse-to-fine
            starts.append((int(r["iteration"]), r["level"], r.get("grid")))
        rejected = _is_rejected(r)
        old_style = rejected and "trial_misfit" not in r    # its misfit is the trial's
        trial = ratio(r) if old_style else ratio(r, "trial_misfit") if rejected else None
        if trial is not None:
            t_it.append(int(r["iteration"]))
            t_q.append(trial)
        q = ratio(r)
        if q is not None and not old_style:
            note = r.get("note")
            it.append(int(r["iteration"]))
            acc.append(q)
            notes.append(None if rejected or (note and note.startswith("level ")) else note)
    return {"accepted": (it, acc, notes), "trials": (t_it, t_q), "levels": starts}


LINE_SEARCH_NOTE = halved_note(True)


def note_label(note, line_search) -> str:
    """A history note as the misfit plot's legend shows it: histories written before the
    optimiser told the two apart noted the adaptive optimiser's own halving (``line_search =
    false``, the run's resolved config) as a line search; it is called what it is."""
    if note == LINE_SEARCH_NOTE and line_search is False:
        return halved_note(False)
    return note


def plot_misfit(run: Path, out: Path, title: str, line_search=None) -> Path:
    """``misfit.png``: J/J0 of the accepted models against the iteration (log scale), rejected
    trials as separate markers, noted iterations marked (labelled by :func:`note_label`;
    ``line_search``: the run's ``inversion.line_search``), the start of every level of a
    coarse-to-fine run (``level``, ``grid`` in the history) a dotted line."""
    path = run / "history.jsonl"
    if not path.exists():
        raise _Skip(f"no history.jsonl in {run} yet")
    try:
        recs = read_history(path)
    except (OSError, ValueError) as exc:
        raise _Skip(f"cannot read {path}: {exc}") from None
    series = misfit_series(recs)
    it, ratio, notes = series["accepted"]
    notes = [note_label(n, line_search) for n in notes]
    if not it:
        raise _Skip(f"{path} holds no iteration with a positive misfit ratio yet")
    fig = _figure(1, 7.0, 4.5)
    ax = fig.subplots()
    ax.semilogy(it, ratio, "o-", ms=3, lw=1.2, color="tab:blue", label="J / J0 (accepted)")
    if series["trials"][0]:                              # not joined into the curve
        ax.scatter(*series["trials"], marker="x", s=40, zorder=3, color="tab:red",
                   label="rejected trial")
    for k, note in enumerate(dict.fromkeys(n for n in notes if n)):   # distinct notes in order
        sel = [i for i, n in enumerate(notes) if n == note]
        ax.scatter([it[i] for i in sel], [ratio[i] for i in sel], marker="X", s=60, zorder=3,
                   color=f"C{(k + 2) % 10}", label=note)
    starts = series["levels"]
    for k, (i0, level, grid) in enumerate(starts):
        shape = "x".join(map(str, grid)) if grid else "?"
        ax.axvline(i0, color="0.5", ls=":", lw=1, label="levels (grid)" if k == 0 else None)
        ax.annotate(f"L{level} {shape}", (i0, 1), xycoords=("data", "axes fraction"),
                    xytext=(2, -10), textcoords="offset points", fontsize="x-small")
    ax.set_xlabel("iteration")
    ax.set_ylabel("misfit ratio J / J0")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")
    ax.set_title(f"{title}: misfit history (last: {ratio[-1]:.3g} at "
                 f"iteration {it[-1]})")
    return _save(fig, out / "misfit.png")


# ------------------------------------------------------------------------------------ API
def plot_run(run_dir, out_dir=None) -> list[Path]:
    """Draw the figures of the run directory ``run_dir`` into ``out_dir`` (default
    ``run_dir/figures``, created); returns the paths written. A figure whose input is missing
    (e.g. no model file yet) is skipped with a message on stderr. Raises ConfigError if
    ``run_dir`` does not exist or holds none of the run files."""
    run = Path(run_dir)
    if not run.is_dir():
        raise ConfigError(f"run directory {run} does not exist")
    if not any((run / f).exists() for f in RUN_FILES):
        raise ConfigError(f"{run} is not an hpcinv run directory (none of {', '.join(RUN_FILES)})")
    out = Path(out_dir) if out_dir is not None else run / "figures"
    out.mkdir(parents=True, exist_ok=True)
    cfg, setup = _config(run), _setup(run)
    title = str(_section(cfg, "problem").get("name") or run.name)
    if not any((run / f).exists() for f in INVERSION_FILES) and \
            any((run / f).exists() for f in ("fields.h5", "gradient.h5")):   # forward, gradient
        from .plot_fields import plot_field_files
        return plot_field_files(run, out, title, _extent, cfg)
    written = []

    def plane(shape):
        return _plane(shape, _extent(setup, cfg, shape), setup)

    try:
        model, which = _model(run, plane)
    except _Skip as why:
        _say(f"skipped model.png and pressure.png: {why}")
    else:
        shape = next((model[k + "_shape"] for k in ("logK", "Pf") if k in model), None)
        ext = _extent(setup, cfg, shape) if shape else None
        for name, draw in (
                ("model.png", lambda: plot_model(out, title, ext, setup, model, which,
                                                 _true_model(run, plane))),
                ("pressure.png", lambda: plot_pressure(out, title, ext, setup, model, which))):
            try:
                if ext is None:
                    raise _Skip(f"the {which} model file holds neither logK nor Pf")
                written.append(draw())
            except _Skip as why:
                _say(f"skipped {name}: {why}")
    try:
        written.append(plot_misfit(run, out, title,
                                   _section(cfg, "inversion").get("line_search")))
    except _Skip as why:
        _say(f"skipped misfit.png: {why}")
    return written


def cmd_plot(run_dir) -> int:
    """``hpcinv plot DIR``: draw the figures and print their paths; 1 if none could be drawn
    (an inversion without any result yet)."""
    written = plot_run(run_dir)
    for p in written:
        print(p)
    return 0 if written else 1
