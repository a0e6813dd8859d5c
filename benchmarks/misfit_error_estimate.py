#!/usr/bin/env python
"""How reliable is the adaptive inversion's error estimate of a loose misfit? (issue 12)

Adaptive tolerances (``hpcinv.inverse.tolerance``) decide every step from misfits ``J`` of
loose forward solves (two stages, ``tol * 10`` continued to ``tol``) and their error estimates
``e``, then multiplied by ``safety`` (``hpcinv.inverse.misfit_error``): ``dwr``, the larger of
the dual-weighted residual ``|psi . (Qf - A P_h)|`` (``psi`` the last gradient's adjoint) and
``|J1 - J2| d2 / (d1 - d2)`` (``d`` the stages' weighted residuals); ``two_stage``, before the
first adjoint (``J0``), ``|J1 - J2| r2 / (r1 - r2)`` (``r`` the residuals). This script runs an
inversion exactly as the CLI would (same path: the run's own solver is not touched) and, for
every misfit the optimiser computes (``misfit_estimate`` and ``refine_misfit``), re-evaluates
the same model with a separate objective at ``--tight`` (default 1e-11). It reports the ratio
of the true error ``|J - J_tight|`` to the raw estimate and to the estimate with the policy's
safety factor: a ratio above 1 is an estimate that flattered the solve; overall and per
estimator (``by_estimator``: ``dwr``, ``two_stage``). Rows of ``dwr`` evaluations also carry
``signed_estimate``, the first-order term with its sign; ``--diagnose`` adds the first-order
term with the trial's own adjoint solved tightly, and the second-order remainder.

One JSON line per evaluation with ``--verbose``; always one summary line::

    OMP_NUM_THREADS=1 python benchmarks/misfit_error_estimate.py --case demo
    OMP_NUM_THREADS=1 python benchmarks/misfit_error_estimate.py --case lbfgs
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine  # noqa: E402
from inversion_cost import CASES, merge, parse_set  # noqa: E402


class AuditedObjective:
    """Forwards everything to the run's objective; after each misfit estimate, solves the same
    model to ``tight`` with its own objective and records ``(tol, J, raw error, J_tight)``."""

    def __init__(self, objective, reference):
        self._f, self._ref, self._x, self.rows = objective, reference, None, []

    def __getattr__(self, name):
        return getattr(self._f, name)

    diagnose = False

    def _audit(self, J, e, tol, kind, dwr):
        J_tight = self._ref.misfit(self._x)[0]
        row = {"kind": kind, "estimator": "dwr" if dwr else "two_stage", "tol": tol, "J": J,
               "raw_error": e, "J_tight": J_tight, "true_error": abs(J - J_tight)}
        if dwr:
            row["signed_estimate"] = self._f.dwr_signed
        if self.diagnose:
            row.update(self._diagnose(J_tight - J))
        self.rows.append(row)

    def _diagnose(self, signed_true):
        """The first-order estimate with the exact adjoint of the trial (tight, at the trial's
        model and weights): what the kept adjoint's inaccuracy costs; ``signed_true`` minus it
        is the second-order term."""
        from hpcinv.inverse.misfit_error import WeightedResidual
        f, ref = self._f, self._ref
        bk = f.backend
        ref.adjoint_gradient(ref._latest, f.obs.spread(f._w, bk, dtype=f.dtype))
        if getattr(self, "_wr", None) is None:
            self._wr = WeightedResidual(f.solver)
        exact = self._wr(ref.adjoint_start.solution.P)
        return {"signed_true": signed_true, "first_order_exact_psi": exact,
                "second_order": signed_true - exact}

    def misfit_estimate(self, logK=None, tol=None, refine=10.0, progress=None):
        dwr = getattr(self._f, "has_adjoint", False)
        J, e, info = self._f.misfit_estimate(logK, tol, refine, progress)
        self._x = logK
        self._audit(J, e, tol, "estimate", dwr)
        return J, e, info

    def refine_misfit(self, tol, progress=None):
        dwr = getattr(self._f, "has_adjoint", False)
        J, e, info = self._f.refine_misfit(tol, progress)
        self._audit(J, e, tol, "refine", dwr)
        return J, e, info


def summary(rows, safety, by_estimator=True) -> dict:
    """Ratios true / estimate (raw and with ``safety``): median, p90, max, fraction above 1;
    with ``by_estimator`` also per estimator. Also the median estimate / true (how pessimistic
    the estimate is: the cost of its reliability)."""
    true = np.array([r["true_error"] for r in rows])
    raw = np.maximum(np.array([r["raw_error"] for r in rows]), 1e-300)
    out = {"evaluations": len(rows)}
    if not rows:
        return out
    for name, est in (("raw", raw), ("with_safety", safety * raw)):
        ratio = true / est
        out[name] = {"median_true_over_estimate": float(np.median(ratio)),
                     "p90": float(np.percentile(ratio, 90)), "max": float(ratio.max()),
                     "fraction_underestimated": float((ratio > 1).mean())}
    out["median_estimate_over_true"] = float(np.median(raw / np.maximum(true, 1e-300)))
    if by_estimator:
        out["by_estimator"] = {
            k: summary([r for r in rows if r["estimator"] == k], safety, False)
            for k in sorted({r["estimator"] for r in rows})}
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--case", choices=sorted(CASES), default="demo")
    ap.add_argument("--iterations", type=int, help="outer iterations (default: the case's)")
    ap.add_argument("--tight", type=float, default=1e-11)
    ap.add_argument("--set", action="append", dest="sets", metavar="KEY=VALUE")
    ap.add_argument("--verbose", action="store_true", help="one JSON line per evaluation")
    ap.add_argument("--diagnose", action="store_true", help="per evaluation also the "
                    "first-order estimate with the trial's exact adjoint (one tight adjoint "
                    "solve more per evaluation)")
    a = ap.parse_args(argv)
    from mpi4py import MPI

    from hpcinv import config as config_mod
    from hpcinv.app.assembly import build
    from hpcinv.app.levels import make_inversion
    from hpcinv.app.run import Reporter, RunDirectory
    from hpcinv.inverse.gradient import AdjointGradient
    data = merge({"output": {"figures": False}}, CASES[a.case], parse_set(a.sets))
    if a.iterations:
        data["inversion"]["iterations"] = a.iterations
    cfg = config_mod.from_dict(data)
    comm = MPI.COMM_WORLD
    setup = build(cfg, comm)
    opt = setup.optimiser
    if getattr(opt.evaluator, "policy", None) is None:
        sys.exit("misfit_error_estimate: the run has no adaptive tolerances to audit")
    tight = replace(setup.forward_params, tol=a.tight)
    reference = AdjointGradient(setup.true.copy(), setup.observations, setup.backend, tight,
                                tight, setup.tikhonov, warm_start=True, **setup.solver_options)
    audited = opt.f = AuditedObjective(opt.f, reference)
    audited.diagnose = a.diagnose
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = RunDirectory(Path(tmp) / "run", comm, overwrite=True)
        make_inversion(cfg, setup, run_dir, Reporter(quiet=True)).run()
    if comm.rank == 0:
        if a.verbose:
            for r in audited.rows:
                print(json.dumps(r))
        safety = opt.evaluator.policy.s.safety
        print(json.dumps({"case": a.case, "tight": a.tight, "safety": safety,
                          **summary(audited.rows, safety), "machine": machine()}))


if __name__ == "__main__":
    main()
