#!/usr/bin/env python
"""Cost of an inversion: today's settings against the new defaults (issue 12).

Runs, in one process, each case (``--cases``) under each setting (``--settings``):

* ``demo``: ``hpcinv demo`` (geothermal2d 255 x 127, gradient descent, 50 iterations);
* ``lbfgs``: the same workshop problem with L-BFGS, 25 iterations;

* ``today``: ``inversion.adaptive_tolerance = false`` (every solve to the user's tolerance,
  the previous adjoint solution rescaled as the adjoint warm start);
* ``new``: the defaults (adaptive tolerances, adjoint subspace warm starts).

``--set KEY=VALUE`` (repeatable; VALUE in TOML syntax, e.g. ``--set inversion.levels=[4,2,1]``)
overrides any config key in every run; ``--set-new`` only in the ``new`` runs.

One JSON line per run (stdout, and appended to ``--out``): work units (sum over outer
iterations of PT iterations x cells of that iteration's level / cells of the finest grid; a
history record's ``cells`` field gives its level's cells, absent: the finest, so with one
level work units = PT iterations, including the final evaluation of an adaptive run), the
forward/adjoint split, wall time (and this process's CPU time: with one thread the figure to
trust on a shared machine), the final J/J0 recomputed by a separate cold evaluation of the
final and the initial model at tol 1e-8, the run's own last J/J0, the barrier mean log10 K
(cells of ``geothermal.barrier_bounds``) and the far-field mean log10 K (cells farther than 0.2
from the barrier and the wells).

Usage::

    OMP_NUM_THREADS=1 python benchmarks/inversion_cost.py --out benchmarks/results/inversion_cost.jsonl
    python benchmarks/inversion_cost.py --cases demo --settings new --set inversion.levels=[4,2,1]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, machine  # noqa: E402

CASES = {"demo": {"inversion": {"method": "gd", "iterations": 50}},
         "lbfgs": {"inversion": {"method": "lbfgs", "iterations": 25}}}
SETTINGS = {"today": {"inversion": {"adaptive_tolerance": False}}, "new": {}}


def parse_set(items) -> dict:
    """``["a.b=VALUE", ...]`` -> nested dict (VALUE parsed as TOML, else a string)."""
    from hpcinv.config import tomllib
    out: dict = {}
    for item in items or []:
        key, _, text = item.partition("=")
        try:
            value = tomllib.loads(f"v = {text}")["v"]
        except Exception:
            value = text
        *path, last = key.strip().split(".")
        d = out
        for p in path:
            d = d.setdefault(p, {})
        d[last] = value
    return out


def merge(*dicts) -> dict:
    out: dict = {}
    for d in dicts:
        for k, v in d.items():
            out[k] = merge(out.get(k, {}), v) if isinstance(v, dict) else v
    return out


def region_means(grid, logK):
    """Barrier mean and far-field mean of log10 K over owned cells (global, via allreduce)."""
    from mpi4py import MPI

    from hpcinv.model import geothermal
    from hpcinv.model.problems import box_mask
    own = grid.decomp.owned()
    log10 = np.asarray(logK) / np.log(10)
    barrier = box_mask(grid, geothermal.barrier_bounds(grid.ndim))
    coords = grid.mesh()
    bounds = geothermal.barrier_bounds(grid.ndim)
    d2 = np.zeros(grid.decomp.padded_shape)
    for ax, (a, b) in bounds.items():
        d2 += np.maximum(np.maximum(a - coords[ax], coords[ax] - b), 0) ** 2
    far = np.sqrt(d2) > 0.2
    for pos, _ in geothermal.WELLS:
        far &= np.hypot(coords[0] - pos[0], coords[1] - pos[1]) > 0.1
    comm = grid.decomp.comm
    out = []
    for mask in (barrier, far):
        m = np.zeros(mask.shape, bool)
        m[own] = mask[own]
        s = comm.allreduce(float(log10[m].sum()), op=MPI.SUM)
        n = comm.allreduce(int(m.sum()), op=MPI.SUM)
        out.append(s / n if n else float("nan"))
    return out


def tight_ratio(setup, logK, tol=1e-8):
    """J(final) / J(initial), both from cold forward solves at ``tol``."""
    from hpcinv.inverse.gradient import AdjointGradient
    from hpcinv.solvers import PTParams
    p = PTParams(cfl=setup.forward_params.cfl, re=setup.forward_params.re, tol=tol,
                 ncheck=setup.forward_params.ncheck)
    f = AdjointGradient(setup.true.copy(), setup.observations, setup.backend, p, p,
                        setup.tikhonov, warm_start=False, **setup.solver_options)
    J = f.misfit(logK)[0]
    J0 = f.misfit(setup.logK0)[0]
    return J / J0, J


def work_units(hist, fine_cells):
    """``(work units, forward PT its, adjoint PT its, prediction work units)`` of the history
    records ``hist``: each record's PT iterations (its final evaluation's and its coarse
    prediction solves' included) weighted by its ``cells`` (absent: ``fine_cells``) over
    ``fine_cells``; the forward and adjoint counts are not weighted."""
    fwd = adj = 0
    units = coarse = 0.0
    for r in hist:
        cells = r.get("cells", fine_cells)
        f = r["forward_iterations"] + r.get("final_forward_iterations", 0)
        a = r["adjoint_iterations"] + r.get("final_adjoint_iterations", 0)
        c = r.get("prediction_work", 0.0) + r.get("final_prediction_work", 0.0)  # coarse solves
        fwd, adj, coarse = fwd + f, adj + a, coarse + c * cells / fine_cells
        units += (f + a + c) * cells / fine_cells
    return units, fwd, adj, coarse


def run_one(case, setting, overrides, new_overrides, threads, workdir):
    from mpi4py import MPI

    from hpcinv import config as config_mod
    from hpcinv.app.assembly import build
    from hpcinv.app.levels import make_inversion
    from hpcinv.app.run import Reporter, RunDirectory
    data = merge({"parallel": {"threads": threads}, "output": {"figures": False}},
                 CASES[case], SETTINGS[setting], overrides,
                 new_overrides if setting == "new" else {})
    cfg = config_mod.from_dict(data)
    comm = MPI.COMM_WORLD
    run_dir = RunDirectory(Path(workdir) / f"{case}-{setting}", comm, overwrite=True)
    t0, c0 = time.perf_counter(), time.process_time()
    setup = build(cfg, comm)
    inv = make_inversion(cfg, setup, run_dir, Reporter(quiet=True))
    last = inv.run()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    hist = inv.history.lines
    units, fwd, adj, coarse = work_units(hist, int(np.prod(setup.grid.shape)))
    logK = setup.backend.to_host(setup.optimiser.arrays["x"])
    ratio, J = tight_ratio(setup, logK)
    barrier, far = region_means(setup.grid, logK)
    return {"case": case, "setting": setting, "overrides": data, "iterations": len(hist) - 1,
            "work_units": units, "forward_iterations": fwd, "adjoint_iterations": adj,
            "prediction_work_units": coarse,
            "wall_time": wall, "cpu_time": cpu, "misfit_ratio_tight": ratio, "misfit_tight": J,
            "misfit_ratio_reported": last["misfit_ratio"], "barrier_mean_log10K": barrier,
            "far_field_mean_log10K": far, "ranks": comm.size, "threads": threads,
            "machine": machine()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", default="demo,lbfgs")
    ap.add_argument("--settings", default="today,new")
    ap.add_argument("--set", action="append", dest="sets", metavar="KEY=VALUE",
                    help="config override for every run (TOML value)")
    ap.add_argument("--set-new", action="append", dest="sets_new", metavar="KEY=VALUE",
                    help="config override for the 'new' runs only")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", 1)))
    ap.add_argument("--out", help="append the JSON lines to this file too")
    ap.add_argument("--workdir", help="run directories (default: a temporary one)")
    a = ap.parse_args(argv)
    overrides, new_overrides = parse_set(a.sets), parse_set(a.sets_new)
    from mpi4py import MPI
    with tempfile.TemporaryDirectory() as tmp:
        work = a.workdir or tmp
        for case in a.cases.split(","):
            for setting in a.settings.split(","):
                rec = run_one(case, setting, overrides, new_overrides, a.threads, work)
                if MPI.COMM_WORLD.rank == 0:
                    emit(rec, a.out)


if __name__ == "__main__":
    main()
