#!/usr/bin/env python
"""Adaptive defaults against fixed tolerances on truths of another character (issue 12).

The demo's truth is one low-permeability barrier. This script runs other truths at small
sizes, each under today's fixed tolerances (``inversion.adaptive_tolerance = false``) and
under the defaults, 1 rank, 1 thread:

* ``blobs2d``: five Gaussian blobs of log10 K of either sign (amplitudes -1.5..-0.9 and
  0.6..1.0), 127 x 63, 72 observations;
* ``layered2d``: two horizontal layers (K 0.1 and 1e-3), 127 x 63, 72 observations;
* ``blobs3d``: five blobs, 32^3, 80 observations.

One JSON line per run (stdout, and appended to ``--out``): work units (PT iterations, the final
evaluation included), CPU time and the final J/J0 recomputed by cold solves at 1e-8.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/other_truths.py --out benchmarks/results/other_truths.jsonl
    python benchmarks/other_truths.py --runs blobs2d:lbfgs:25 --set inversion.gradient_accuracy=0.1
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit  # noqa: E402
from inversion_cost import merge, parse_set, tight_ratio  # noqa: E402

RUNS = "blobs2d:gd:50,layered2d:gd:50,blobs2d:lbfgs:25,blobs3d:gd:30"


def blobs(shape, extent, seed) -> np.ndarray:
    """K of five Gaussian blobs of log10 K of either sign (cell centres of ``shape``)."""
    rng = np.random.default_rng(seed)
    axes = [np.linspace(a + (b - a) / (2 * n), b - (b - a) / (2 * n), n)
            for (a, b), n in zip(extent, shape)]
    X = np.meshgrid(*axes, indexing="ij")
    log10 = np.zeros(shape)
    for _ in range(5):
        c = [rng.uniform(a + 0.2 * (b - a), b - 0.2 * (b - a)) for a, b in extent]
        r = rng.uniform(0.08, 0.18)
        amp = rng.choice([-1.5, 1.0]) * rng.uniform(0.6, 1.0)
        log10 += amp * np.exp(-sum((x - ci) ** 2 for x, ci in zip(X, c)) / (2 * r * r))
    return 10.0 ** log10


def truth(name, workdir) -> dict:
    """The config sections of truth ``name`` (a blob field is written to ``workdir``)."""
    import h5py
    if name == "layered2d":
        perm = {"type": "layered", "value": 1.0, "layers": [
            {"axis": "y", "range": [0.0, 0.3], "value": 0.1},
            {"axis": "y", "range": [0.6, 0.7], "value": 1e-3}]}
    else:
        shape = (127, 63) if name == "blobs2d" else (32, 32, 32)
        extent = [[0.0, 2.0], [0.0, 1.0]] if name == "blobs2d" else [[0.0, 1.0]] * 3
        path = Path(workdir) / f"{name}.h5"
        with h5py.File(path, "w") as f:
            f["K"] = blobs(shape, extent, 3 if name == "blobs2d" else 5)
        perm = {"type": "file", "file": str(path)}
    if name == "blobs3d":
        return {"problem": {"name": "custom"}, "permeability": perm,
                "grid": {"extent": [[0.0, 1.0]] * 3, "nx": 32, "ny": 32, "nz": 32},
                "wells": [{"position": [0.3, 0.5, 0.5], "rate": 1.0},
                          {"position": [0.7, 0.5, 0.5], "rate": -1.0}],
                "observations": {"points": "grid", "method": "linear", "grid": {
                    "x": [0.15, 0.85, 5], "y": [0.15, 0.85, 4], "z": [0.15, 0.85, 4]}}}
    y = [0.1, 0.9, 6] if name == "blobs2d" else [0.35, 0.95, 6]
    x = [0.1, 1.9, 12] if name == "blobs2d" else [0.2, 1.8, 12]
    wx = (0.5, 1.5) if name == "blobs2d" else (0.4, 1.6)
    wy = 0.5 if name == "blobs2d" else 0.45
    return {"problem": {"name": "custom"}, "permeability": perm,
            "grid": {"extent": [[0.0, 2.0], [0.0, 1.0]], "nx": 127, "ny": 63},
            "wells": [{"position": [wx[0], wy], "rate": 1.0},
                      {"position": [wx[1], wy], "rate": -1.0}],
            "observations": {"points": "grid", "method": "linear", "grid": {"x": x, "y": y}}}


def run(name, method, iterations, adaptive, overrides, workdir) -> dict:
    from mpi4py import MPI

    from hpcinv import config as config_mod
    from hpcinv.app.assembly import build
    from hpcinv.app.levels import make_inversion
    from hpcinv.app.run import Reporter, RunDirectory
    data = merge({"parallel": {"threads": 1}, "output": {"figures": False}},
                 truth(name, workdir), overrides,
                 {"inversion": {"method": method, "iterations": iterations,
                                "adaptive_tolerance": adaptive}})
    cfg = config_mod.from_dict(data)
    comm = MPI.COMM_WORLD
    setting = "new" if adaptive else "today"
    run_dir = RunDirectory(Path(workdir) / f"{name}-{method}-{setting}", comm, overwrite=True)
    c0 = time.process_time()
    setup = build(cfg, comm)
    inv = make_inversion(cfg, setup, run_dir, Reporter(quiet=True))
    inv.run()
    cpu = time.process_time() - c0
    units = sum(r["forward_iterations"] + r["adjoint_iterations"]
                + r.get("final_forward_iterations", 0) + r.get("final_adjoint_iterations", 0)
                for r in inv.history.lines)
    ratio, _ = tight_ratio(setup, setup.backend.to_host(setup.optimiser.arrays["x"]))
    return {"truth": name, "method": method, "iterations": iterations, "setting": setting,
            "overrides": overrides, "work_units": units, "cpu_time": cpu,
            "misfit_ratio_tight": ratio}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", default=RUNS, help="truth:method:iterations, comma-separated")
    ap.add_argument("--settings", default="today,new")
    ap.add_argument("--set", action="append", dest="sets", metavar="KEY=VALUE",
                    help="config override of the 'new' runs (TOML value)")
    ap.add_argument("--out")
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as work:
        for spec in a.runs.split(","):
            name, method, iterations = spec.split(":")
            for setting in a.settings.split(","):
                adaptive = setting == "new"
                rec = run(name, method, int(iterations), adaptive,
                          parse_set(a.sets) if adaptive else {}, work)
                emit(rec, a.out)


if __name__ == "__main__":
    main()
