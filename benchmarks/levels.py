"""Coarse-to-fine vs one level on the demo (issue 12 item 3): work units, wall time and an honest
final misfit.

    PYTHONPATH=$PWD python benchmarks/levels.py RUN_DIR [RUN_DIR ...]

For each finished run directory (``hpcinv invert``/``demo``), one JSON line:

* ``pt_iterations``: sum of forward + adjoint PT iterations over ``history.jsonl``;
* ``work_units``: the same, each weighted by its level's cells / the finest grid's cells;
* ``wall_s``: the last line's wall time;
* ``J_J0_tol1e-8``: the final model's misfit RE-EVALUATED on the fine grid with forward
  tol = 1e-8, over the misfit of the initial model (K = 1) on the fine grid with the same
  tolerance (a loose or coarse misfit flatters itself);
* ``barrier_mean_log10K``: mean log10 K over the barrier box (model/geothermal.barrier_bounds);
  ``far_mean_log10K``: over cells further than 0.2 from it (as tests/test_inversion.py).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import h5py
import numpy as np
from mpi4py import MPI

from hpcinv import config as config_mod
from hpcinv.app.assembly import build
from hpcinv.model.geothermal import barrier_bounds
from hpcinv.model.problems import box_mask


def evaluate(run: Path) -> dict:
    cfg = config_mod.load(run / "config.toml")
    cfg.solver.tol = 1e-8
    cfg.inversion.levels = cfg.inversion.level_iterations = None
    cfg.inversion.level_misfit_ratio = None
    setup = build(cfg, MPI.COMM_SELF)
    G, d = setup.objective, setup.decomp
    with h5py.File(run / "model_final.h5") as f:
        final = np.zeros(d.padded_shape)
        final[d.owned()] = f["logK"][...]
    J0, _ = G.misfit(setup.logK0)
    J, info = G.misfit(final)
    hist = [json.loads(s) for s in (run / "history.jsonl").read_text().splitlines()]
    pts = sum(r["forward_iterations"] + r["adjoint_iterations"] for r in hist)
    work = sum(r.get("work_units", r["forward_iterations"] + r["adjoint_iterations"])
               for r in hist)
    log10 = final[d.owned()] / np.log(10)
    grid = setup.grid
    barrier = box_mask(grid, barrier_bounds(grid.ndim))[d.owned()]
    X, Y = (np.meshgrid(grid.global_centres(0), grid.global_centres(1), indexing="ij")
            if grid.ndim == 2 else (None, None))
    out = {"run": str(run), "grid": list(grid.shape), "levels": hist[-1].get("level", 0) + 1,
           "lines": len(hist), "pt_iterations": pts, "work_units": round(work, 1),
           "wall_s": round(hist[-1]["wall_time"], 1),
           "J_J0_history": hist[-1]["misfit_ratio"], "J_J0_tol1e-8": J / J0,
           "barrier_mean_log10K": float(log10[barrier].mean())}
    if grid.ndim == 2:
        (a0, a1), (b0, b1) = barrier_bounds(2)[0], barrier_bounds(2)[1]
        dist = np.hypot(np.maximum(np.abs(X) - a1, 0), np.maximum(np.maximum(b0 - Y, Y - b1), 0))
        out["far_mean_log10K"] = float(log10[dist > 0.2].mean())
    return out


if __name__ == "__main__":
    for path in sys.argv[1:]:
        print(json.dumps(evaluate(Path(path))), flush=True)
