#!/usr/bin/env python
"""Fixed tolerances, the defaults and ``levels = "auto"`` on truths of many characters (issues 12
and 23).

The demo's truth is one low-permeability barrier. This script runs other truths at small
sizes (2D: 127 x 63 over [0, 2] x [0, 1]; 3D: 32^3 over the unit cube), 1 rank, 1 thread, each
under the settings of ``--settings``:

* ``today``: fixed tolerances (``inversion.adaptive_tolerance = false``);
* ``new``: the defaults;
* ``auto``: the defaults and ``inversion.levels = "auto"``.

The truths (:data:`TRUTHS`; log10 K, the initial model is K = 1; fixed before the table of
issue 23 was run, none tuned on):

* ``blobs2d``, ``blobs2d_s17``, ``blobs3d``, ``blobs3d_s23``: five Gaussian blobs of either sign
  (amplitudes -1.5..-0.9 and 0.6..1.0; seeds 3, 17, 5, 23);
* ``layered2d``: two horizontal layers (K 0.1 and 1e-3);
* ``channel2d``, ``channel3d``: a sinuous high-K channel (+1), 0.12 / 0.16 wide;
* ``lens2d``, ``lens3d``: a tilted low-K lens (-1.5), 30 / 25 degrees;
* ``trend2d``, ``trend3d``: a linear trend (about -1.1..0.5 and -0.9..0.9).

Two wells (+1, -1) and a grid of observation points (2D: 12 x 6, 3D: 5 x 4 x 4). One JSON line
per run (stdout, and appended to ``--out``): work units
(:func:`inversion_cost.work_units`: PT iterations weighted by their level's cells, the final
evaluation and coarse prediction solves included), the levels and history lines per level, CPU
time and the final J/J0 recomputed by cold solves at 1e-8 (:func:`inversion_cost.tight_ratio`).
``--table FILE`` prints the markdown table of docs/performance.md from such a file.

Usage::

    OMP_NUM_THREADS=1 HPCINV_NUM_THREADS=1 python benchmarks/other_truths.py \\
        --out benchmarks/results/other_truths_checks.jsonl
    python benchmarks/other_truths.py --runs blobs2d:lbfgs:25 --settings new \\
        --set inversion.gradient_accuracy=0.1
    python benchmarks/other_truths.py --table benchmarks/results/other_truths_checks.jsonl
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, machine  # noqa: E402
from inversion_cost import merge, parse_set, tight_ratio, work_units  # noqa: E402

TRUTHS = ("blobs2d", "blobs2d_s17", "layered2d", "channel2d", "lens2d", "trend2d",
          "blobs3d", "blobs3d_s23", "channel3d", "lens3d", "trend3d")
#: Outer iterations per method: 2D, 3D.
ITERATIONS = {"gd": (50, 30), "lbfgs": (25, 25)}
RUNS = ",".join(f"{t}:{m}:{ITERATIONS[m]['3d' in t]}"
                for t in TRUTHS for m in ("gd", "lbfgs"))
SETTINGS = {"today": {"inversion": {"adaptive_tolerance": False}}, "new": {},
            "auto": {"inversion": {"levels": "auto"}}}


def centres(shape, extent):
    """Cell-centre coordinates (``np.meshgrid``, ``indexing="ij"``) of ``shape`` over
    ``extent``."""
    axes = [np.linspace(a + (b - a) / (2 * n), b - (b - a) / (2 * n), n)
            for (a, b), n in zip(extent, shape)]
    return np.meshgrid(*axes, indexing="ij")


def blobs(X, extent, seed) -> np.ndarray:
    """log10 K of five Gaussian blobs of either sign at the cell centres ``X``."""
    rng = np.random.default_rng(seed)
    log10 = np.zeros(X[0].shape)
    for _ in range(5):
        c = [rng.uniform(a + 0.2 * (b - a), b - 0.2 * (b - a)) for a, b in extent]
        r = rng.uniform(0.08, 0.18)
        amp = rng.choice([-1.5, 1.0]) * rng.uniform(0.6, 1.0)
        log10 += amp * np.exp(-sum((x - ci) ** 2 for x, ci in zip(X, c)) / (2 * r * r))
    return log10


def inside(distance, edge=0.015) -> np.ndarray:
    """A smooth indicator (1 inside, 0 outside) of the signed ``distance`` to a boundary."""
    return 0.5 * (1.0 - np.tanh(distance / edge))


def log10_field(name, X) -> np.ndarray:
    """log10 K of truth ``name`` (not ``layered2d``) at the cell centres ``X``."""
    if name.startswith("blobs"):
        seed = {"blobs2d": 3, "blobs2d_s17": 17, "blobs3d": 5, "blobs3d_s23": 23}[name]
        return blobs(X, [(0.0, 2.0), (0.0, 1.0)] if len(X) == 2 else [(0.0, 1.0)] * 3, seed)
    if name == "channel2d":
        x, y = X
        return 1.0 * inside(np.abs(y - 0.5 - 0.15 * np.sin(2 * np.pi * x / 1.3 + 0.4)) - 0.06)
    if name == "channel3d":
        x, y, z = X
        yc = 0.5 + 0.15 * np.sin(2 * np.pi * x / 0.9)
        zc = 0.5 + 0.1 * np.cos(2 * np.pi * x / 1.1)
        return 1.0 * inside(np.hypot(y - yc, z - zc) - 0.08)
    if name in ("lens2d", "lens3d"):
        if name == "lens2d":
            (x, y), c, semi, deg = X, (1.05, 0.45), (0.45, 0.07), 30.0
            u, v = x - c[0], y - c[1]
            w, sw = 0.0, 1.0
        else:
            (x, y, z), c, semi, deg = X, (0.5, 0.5, 0.45), (0.3, 0.06), 25.0
            u, v, w = x - c[0], z - c[2], y - c[1]
            sw = 0.25
        t = np.radians(deg)
        a, b = u * np.cos(t) + v * np.sin(t), -u * np.sin(t) + v * np.cos(t)
        r = np.sqrt((a / semi[0]) ** 2 + (b / semi[1]) ** 2 + (w / sw) ** 2)
        return -1.5 * inside(r - 1.0, 0.15)
    if name == "trend2d":
        return -0.5 + 0.5 * X[0] - 0.6 * X[1]
    if name == "trend3d":
        return 0.8 * (X[0] - 0.5) + 0.3 * (X[1] - 0.5) - 0.5 * (X[2] - 0.5)
    raise ValueError(f"unknown truth {name!r}")


#: Cells per axis of the 3D truths (``--cells3d``).
CELLS_3D = 32


def truth(name, workdir, cells3d=CELLS_3D) -> dict:
    """The config sections of truth ``name`` (a field is written to ``workdir``; the 3D truths
    on ``cells3d`` cells per axis)."""
    import h5py
    three = "3d" in name
    shape = (cells3d,) * 3 if three else (127, 63)
    extent = [[0.0, 1.0]] * 3 if three else [[0.0, 2.0], [0.0, 1.0]]
    if name == "layered2d":
        perm = {"type": "layered", "value": 1.0, "layers": [
            {"axis": "y", "range": [0.0, 0.3], "value": 0.1},
            {"axis": "y", "range": [0.6, 0.7], "value": 1e-3}]}
    else:
        path = Path(workdir) / f"{name}.h5"
        with h5py.File(path, "w") as f:
            f["K"] = 10.0 ** log10_field(name, centres(shape, extent))
        perm = {"type": "file", "file": str(path)}
    grid = dict(zip(("nx", "ny", "nz"), shape), extent=extent)
    if three:
        return {"problem": {"name": "custom"}, "permeability": perm, "grid": grid,
                "wells": [{"position": [0.3, 0.5, 0.5], "rate": 1.0},
                          {"position": [0.7, 0.5, 0.5], "rate": -1.0}],
                "observations": {"points": "grid", "method": "linear", "grid": {
                    "x": [0.15, 0.85, 5], "y": [0.15, 0.85, 4], "z": [0.15, 0.85, 4]}}}
    layered = name == "layered2d"
    y = [0.35, 0.95, 6] if layered else [0.1, 0.9, 6]
    x = [0.2, 1.8, 12] if layered else [0.1, 1.9, 12]
    wx, wy = ((0.4, 1.6), 0.45) if layered else ((0.5, 1.5), 0.5)
    return {"problem": {"name": "custom"}, "permeability": perm, "grid": grid,
            "wells": [{"position": [wx[0], wy], "rate": 1.0},
                      {"position": [wx[1], wy], "rate": -1.0}],
            "observations": {"points": "grid", "method": "linear", "grid": {"x": x, "y": y}}}


def run(name, method, iterations, setting, overrides, workdir, cells3d=CELLS_3D) -> dict:
    """One inversion of truth ``name`` under ``setting`` (a key of :data:`SETTINGS`)."""
    from mpi4py import MPI

    from hpcinv import config as config_mod
    from hpcinv.app.assembly import build
    from hpcinv.app.levels import make_inversion
    from hpcinv.app.run import Reporter, RunDirectory
    data = merge({"parallel": {"threads": 1}, "output": {"figures": False}},
                 truth(name, workdir, cells3d), SETTINGS[setting], overrides,
                 {"inversion": {"method": method, "iterations": iterations}})
    cfg = config_mod.from_dict(data)
    comm = MPI.COMM_WORLD
    run_dir = RunDirectory(Path(workdir) / f"{name}-{method}-{setting}", comm, overwrite=True)
    c0 = time.process_time()
    setup = build(cfg, comm)
    inv = make_inversion(cfg, setup, run_dir, Reporter(quiet=True))
    inv.run()
    cpu = time.process_time() - c0
    hist = inv.history.lines
    units = work_units(hist, int(np.prod(setup.grid.shape)))[0]
    ratio, _ = tight_ratio(setup, setup.backend.to_host(setup.optimiser.arrays["x"]))
    levels = (getattr(setup, "config", None) or cfg).inversion.level_factors()
    per_level = [sum(1 for r in hist if r.get("level", 0) == k) for k in range(len(levels))]
    return {"truth": name, "method": method, "iterations": iterations, "setting": setting,
            "overrides": overrides, "grid": list(setup.grid.shape), "work_units": units,
            "cpu_time": cpu,
            "misfit_ratio_tight": ratio, "levels": list(levels), "lines_per_level": per_level,
            "machine": machine()}


def table(path) -> str:
    """The markdown table (one row per truth and method; a J/J0 more than 1.1x the fixed
    tolerances' in bold) and the ratios' median and minimum of the JSON lines in ``path`` (the
    last line of each truth, method, setting wins; lines of runs with ``--set`` overrides are
    experiments beside the table and left out)."""
    recs = {}
    for line in Path(path).read_text().splitlines():
        r = json.loads(line)
        if not r.get("overrides"):
            recs[r["truth"], r["method"], r["setting"]] = r
    rows = ["| truth | dim | method | iterations | work units: fixed / defaults / auto | "
            "ratio vs fixed: defaults / auto | auto levels (lines per level) | "
            "J/J0 at 1e-8: fixed / defaults / auto |", "|---" * 8 + "|"]
    ratios = {"new": [], "auto": []}
    for name in TRUTHS:
        for method in ITERATIONS:
            got = {s: recs.get((name, method, s)) for s in SETTINGS}
            if not any(got.values()):
                continue
            failed = {s for s, r in got.items() if r and "error" in r}
            got = {s: (None if s in failed else r) for s, r in got.items()}
            w = {s: (f"{r['work_units']:,.0f}" if r else "failed" if s in failed else "-")
                 for s, r in got.items()}
            q = {s: (f"{r['misfit_ratio_tight']:.2e}".replace("e-0", "e-") if r
                     else "failed" if s in failed else "-") for s, r in got.items()}
            x = {}
            for s in ("new", "auto"):
                if got[s] and got["today"]:
                    ratio = got["today"]["work_units"] / got[s]["work_units"]
                    ratios[s].append((ratio, "3d" in name))
                    x[s] = f"{ratio:.1f}x"
                    worse = got[s]["misfit_ratio_tight"] > 1.1 * got["today"]["misfit_ratio_tight"]
                    q[s] = f"**{q[s]}**" if worse else q[s]
                else:
                    x[s] = "failed" if s in failed else "-"
            a = got["auto"]
            lv = f"{a['levels']} ({a['lines_per_level']})" if a else "-"
            rows.append(f"| {name} | {'3D' if '3d' in name else '2D'} | {method} | "
                        f"{ITERATIONS[method]['3d' in name]} | {w['today']} / {w['new']} / "
                        f"{w['auto']} | {x['new']} / {x['auto']} | {lv} | "
                        f"{q['today']} / {q['new']} / {q['auto']} |")
    for s, label in (("new", "defaults"), ("auto", "auto")):
        all_ = [r for r, _ in ratios[s]]
        d3 = [r for r, three in ratios[s] if three]
        if all_:
            rows.append(f"\n{label}: median {np.median(all_):.2f}x, min {min(all_):.2f}x over "
                        f"{len(all_)} runs; 3D min {min(d3, default=float('nan')):.2f}x")
    return "\n".join(rows)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", default=RUNS, help="truth:method:iterations, comma-separated")
    ap.add_argument("--settings", default="today,new,auto", help="of today, new, auto")
    ap.add_argument("--set", action="append", dest="sets", metavar="KEY=VALUE",
                    help="config override of the 'new' and 'auto' runs (TOML value)")
    ap.add_argument("--out")
    ap.add_argument("--workdir", help="keep the run directories here (default: a temporary one)")
    ap.add_argument("--cells3d", type=int, default=CELLS_3D,
                    help="cells per axis of the 3D truths (default %(default)s: the table's)")
    ap.add_argument("--table", metavar="FILE", help="print the markdown table of FILE, run none")
    a = ap.parse_args(argv)
    from hpcinv.errors import HpcinvError
    if a.table:
        print(table(a.table))
        return
    with tempfile.TemporaryDirectory() as tmp:
        work = a.workdir or tmp
        try:
            Path(work).mkdir(parents=True, exist_ok=True)     # a new --workdir is made
        except OSError as exc:
            raise SystemExit(f"error: --workdir {work}: {exc.strerror or exc}") from None
        for spec in a.runs.split(","):
            name, method, iterations = spec.split(":")
            for setting in a.settings.split(","):
                over = parse_set(a.sets) if setting != "today" else {}
                try:
                    rec = run(name, method, int(iterations), setting, over, work, a.cells3d)
                except HpcinvError as exc:     # a run that fails is a row of the table too
                    rec = {"truth": name, "method": method, "iterations": int(iterations),
                           "setting": setting, "overrides": over,
                           "error": f"{type(exc).__name__}: {exc}", "machine": machine()}
                emit(rec, a.out)


if __name__ == "__main__":
    main()
