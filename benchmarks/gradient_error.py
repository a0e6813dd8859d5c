#!/usr/bin/env python
"""Audit of the adaptive gradient check (``inversion.gradient_accuracy``, issue 12).

Runs an adaptive inversion (default: the demo, geothermal2d 255 x 127, gradient descent, 50
iterations; ``--set`` overrides config keys) and, at every accepted iterate, compares the
optimiser's preconditioned gradient (the normalised smoothed gradient of gradient descent, the
gradient with respect to ``z`` of L-BFGS) with the one of a cold forward and adjoint solve at
``--tol`` (1e-10). One JSON line per accepted iterate (stdout, and appended to ``--out``):

* ``true_error``: ``max|a - a_ref| / max|a_ref|``, the relative max-norm error (both solves'
  shares: the loose forward solve's as well as the adjoint's);
* ``estimate``: the history's ``gradient_error`` (the two-stage estimate with its safety factor;
  absent with ``gradient_accuracy = 0``);
* ``decrease_ratio``: ``<g_ref, d> / <g_ref, d_ref>``, the first-order decrease of the step
  taken relative to the exact direction's (gradient descent only);
* the adjoint and forward tolerances the iterate used.

A last line summarises: how many estimates were below the true error, the largest true error.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/gradient_error.py --out benchmarks/results/gradient_error.jsonl
    python benchmarks/gradient_error.py --set inversion.gradient_accuracy=0
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit  # noqa: E402
from inversion_cost import CASES, merge, parse_set  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--case", default="demo", choices=sorted(CASES))
    ap.add_argument("--set", action="append", dest="sets", metavar="KEY=VALUE")
    ap.add_argument("--tol", type=float, default=1e-10)
    ap.add_argument("--out")
    a = ap.parse_args(argv)
    from mpi4py import MPI

    from hpcinv import config as config_mod
    from hpcinv.app.assembly import build
    from hpcinv.inverse.gradient import AdjointGradient
    from hpcinv.solvers import PTParams
    cfg = config_mod.from_dict(merge({"parallel": {"threads": 1}, "output": {"figures": False}},
                                     CASES[a.case], parse_set(a.sets)))
    if MPI.COMM_WORLD.size != 1:
        sys.exit("gradient_error.py runs on one rank")
    s = build(cfg, MPI.COMM_WORLD)
    opt, bk = s.optimiser, s.backend
    fp = s.forward_params
    p = PTParams(cfl=fp.cfl, re=fp.re, tol=a.tol, ncheck=fp.ncheck)
    ref = AdjointGradient(s.true.copy(), s.observations, bk, p, p, s.tikhonov,
                          warm_start=False, **s.solver_options)
    own = s.grid.decomp.owned()
    gd = cfg.inversion.method == "gd"

    def current():                 # the optimiser's preconditioned gradient at its iterate
        return bk.to_host(opt.arrays["d"] if gd else opt.arrays["gz"])[own]

    rows, rec = [], opt.start(s.logK0)
    for k in range(cfg.inversion.iterations + 1):
        if k > 0:
            rec = opt.step()
            if rec.get("rejected") or "stopping" in rec["note"]:
                continue
        _, g, _ = ref.value_and_gradient(bk.clone(opt.arrays["x"]))
        a_ref = bk.to_host(opt._preconditioned(g))[own]
        a_opt = current()
        if gd:
            a_ref = a_ref / np.abs(a_ref).max()
        g_h = bk.to_host(g)[own]
        row = {"case": a.case, "iteration": k, "misfit_ratio": rec["misfit_ratio"],
               "true_error": float(np.abs(a_opt - a_ref).max() / np.abs(a_ref).max()),
               "estimate": rec.get("gradient_error"),
               "adjoint_tol": rec.get("adjoint_tol"), "forward_tol": rec.get("forward_tol")}
        if gd:
            row["decrease_ratio"] = float((g_h * a_opt).sum() / (g_h * a_ref).sum())
        rows.append(row)
        emit(row, a.out)
    est = [r for r in rows if r["estimate"] is not None]
    emit({"case": a.case, "summary": True, "overrides": parse_set(a.sets),
          "gradients": len(rows), "estimated": len(est),
          "below_true": sum(r["estimate"] < r["true_error"] for r in est),
          "max_true_error": max(r["true_error"] for r in rows),
          "median_true_error": float(np.median([r["true_error"] for r in rows]))}, a.out)


if __name__ == "__main__":
    main()
