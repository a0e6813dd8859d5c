#!/usr/bin/env python
"""APT iteration counts for geothermal2d at tol 1e-8: scaling with the grid and parameter choice.

Prints one JSON line per solve: grid, ``cfl``, ``Re`` (also as a multiple of pi), iterations,
``iter/nx``, converged, final residual, wall time. ``ncheck`` is small (default 10) so that the
counts are exact to within ``ncheck``.

Usage::

    python benchmarks/iterations.py                 # scaling table + parameter sweep
    python benchmarks/iterations.py --no-sweep --sizes 255x127,511x255
    python benchmarks/iterations.py --no-scaling --sweep-size 511x255

Scaling (``--sizes``, default 255x127, 511x255, 1023x511) runs two parameter sets:
``workshop`` (``cfl = 1/2.1``, ``Re = 0.8 pi``, the JuliaCon 2023 workshop) and ``default``
(``PTParams()``: ``cfl = 0.95/sqrt(2)``, ``Re = 2 pi``). The sweep (``--sweep-size``, default
255x127) tries every pair of ``--sweep-cfl`` and ``--sweep-re`` (multiples of pi); a diverging
or unconverged solve is reported as such.
"""
from __future__ import annotations

import argparse
import math
import os
import sys

from mpi4py import MPI

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import emit, log, machine, node_backend, parse_sizes  # noqa: E402

from hpcinv.errors import SolverDivergedError  # noqa: E402
from hpcinv.model.problems import geothermal2d  # noqa: E402
from hpcinv.solvers import DarcySolver, PTParams  # noqa: E402

SQRT2 = math.sqrt(2.0)
PARAM_SETS = {
    "workshop": dict(cfl=1 / 2.1, re=0.8 * math.pi),
    "default": dict(),                      # PTParams() defaults
}


def run(shape, label, args, backend, comm, **kw):
    params = PTParams(tol=args.tol, ncheck=args.ncheck, maxiter=args.maxiter or None, **kw)
    solver = DarcySolver(geothermal2d(shape, comm=comm), backend, params)
    p = solver.params
    rec = {"benchmark": "iterations", "problem": "geothermal2d", "set": label,
           "size": list(shape), "ranks": comm.Get_size(), "cfl": p.cfl,
           "cfl_times_sqrt2": p.cfl * SQRT2, "re": p.re, "re_over_pi": p.re / math.pi,
           "tol": p.tol, "ncheck": p.ncheck, "maxiter": p.maxiter}
    try:
        res = solver.solve().result
        rec.update(iterations=res.iterations, iter_per_nx=res.iterations / shape[0],
                   converged=res.converged, residual=res.residual, wall_s=res.wall_time,
                   diverged=False)
    except SolverDivergedError as exc:
        rec.update(iterations=None, iter_per_nx=None, converged=False, residual=None,
                   diverged=True, message=str(exc))
    return rec


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="255x127,511x255,1023x511")
    p.add_argument("--tol", type=float, default=1e-8)
    p.add_argument("--ncheck", type=int, default=10)
    p.add_argument("--maxiter", type=int, default=0, help="0: the solver default (200 max(n))")
    p.add_argument("--backend", default="host", choices=("auto", "host", "cupy"))
    p.add_argument("--threads", type=int, default=1,
                   help="host threads (default 1: the counts do not depend on it, and small "
                        "grids run best on one thread)")
    p.add_argument("--no-scaling", action="store_true", help="skip the grid-scaling runs")
    p.add_argument("--no-sweep", action="store_true", help="skip the cfl/Re sweep")
    p.add_argument("--sweep-size", default="255x127")
    p.add_argument("--sweep-cfl", default="0.4762,0.6,0.65,0.6718,0.7,0.7071",
                   help="comma-separated cfl values (1/2.1 = 0.4762, 0.95/sqrt2 = 0.6718, "
                        "1/sqrt2 = 0.7071)")
    p.add_argument("--sweep-re", default="0.8,1,1.5,2,2.5,3,4",
                   help="comma-separated Re values, as multiples of pi")
    args = p.parse_args(argv)
    comm = MPI.COMM_WORLD
    backend = node_backend(args, comm)
    root = comm.Get_rank() == 0

    def out(rec):
        if root:
            rec["machine"] = machine()
            emit(rec)

    if not args.no_scaling:
        for shape in parse_sizes(args.sizes):
            for label, kw in PARAM_SETS.items():
                if root:
                    log(f"iterations: {'x'.join(map(str, shape))} {label}")
                out(run(shape, label, args, backend, comm, **kw))
    if not args.no_sweep:
        (shape,) = parse_sizes(args.sweep_size)
        best = None
        for cfl_s in args.sweep_cfl.split(","):
            for re_s in args.sweep_re.split(","):
                cfl, re = float(cfl_s), float(re_s) * math.pi
                if root:
                    log(f"iterations: sweep {'x'.join(map(str, shape))} cfl={cfl} Re={re_s}pi")
                rec = run(shape, "sweep", args, backend, comm, cfl=cfl, re=re)
                out(rec)
                if rec["converged"] and (best is None or rec["iterations"] < best["iterations"]):
                    best = rec
        if best is not None:
            out({"benchmark": "iterations", "set": "sweep_best", "size": list(shape),
                 "cfl": best["cfl"], "re_over_pi": best["re_over_pi"],
                 "iterations": best["iterations"], "iter_per_nx": best["iter_per_nx"]})


if __name__ == "__main__":
    main()
