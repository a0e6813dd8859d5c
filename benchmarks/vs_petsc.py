#!/usr/bin/env python
"""APT vs PETSc (KSP CG + GAMG by default): time to the same relative residual, same grid, ranks.

Both solvers stop on the same criterion, ``max|div q - Qf| / max|Qf| < tol`` (PETSc through the
convergence test of ``hpcinv.solvers.petsc``, see its module doc), from a zero initial guess,
on the same problem and decomposition. Prints one JSON line per (problem, size):

- ``apt``: setup seconds (solver construction: fields, halo buffers, kernels; compilation is
  kept out by a warm-up solver), solve seconds, iterations, the achieved residual;
- ``petsc``: setup seconds split into ``construct`` (DMDA, sparsity pattern, KSP), ``assemble``
  (matrix values) and ``pc_setup`` (GAMG hierarchy), solve seconds (the Krylov solve plus the
  flux and residual evaluation), iterations, the achieved residual;
- ``ratio_solve`` = APT solve / PETSc solve, ``ratio_total`` = (APT setup + solve) / (PETSc
  setup + solve): above 1, PETSc is faster;
- the machine, including the load average before and after (other jobs may share the cores).

Usage::

    python benchmarks/vs_petsc.py                       # the default sizes (long: ~20+ min)
    python benchmarks/vs_petsc.py --sizes2d 511x255 --sizes3d 64x64x64
    mpiexec -n 2 python benchmarks/vs_petsc.py --sizes2d 1023x511 --sizes3d ""
    python benchmarks/vs_petsc.py --skip-apt ...        # PETSc only

Defaults: geothermal2d at 511x255, 1023x511, 2047x1023 and geothermal3d at 64^3 and 128^3,
tol 1e-8, host backend with ``--threads 1`` (APT then uses as many cores as PETSc: one per
rank), APT ``ncheck`` 100 (its default).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

from mpi4py import MPI

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import emit, log, machine, parse_sizes  # noqa: E402

from hpcinv.backend import make_backend  # noqa: E402
from hpcinv.model.problems import geothermal2d, geothermal3d  # noqa: E402
from hpcinv.solvers import DarcySolver, PTParams  # noqa: E402


def _load():
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def run_apt(make, shape, args, backend, comm):
    params = PTParams(tol=args.tol, ncheck=args.ncheck)
    comm.Barrier()
    t0 = time.perf_counter()
    solver = DarcySolver(make(shape, comm=comm), backend, params)
    comm.Barrier()
    t1 = time.perf_counter()
    res = solver.solve().result
    comm.Barrier()
    t2 = time.perf_counter()
    return {"setup_s": t1 - t0, "solve_s": t2 - t1, "iterations": res.iterations,
            "residual": res.residual, "converged": res.converged, "ncheck": params.ncheck,
            "cfl": solver.params.cfl, "re": solver.params.re}


def run_petsc(make, shape, args, backend, comm):
    from hpcinv.solvers.petsc import PetscDarcySolver
    from hpcinv.solvers.petsc_setup import PetscParams
    options = dict(kv.split("=", 1) if "=" in kv else (kv, None) for kv in args.petsc_option)
    params = PetscParams(tol=args.tol, ksp_type=args.ksp_type, pc_type=args.pc_type,
                         options=options)
    comm.Barrier()
    t0 = time.perf_counter()
    solver = PetscDarcySolver(make(shape, comm=comm), backend, params)
    comm.Barrier()
    t1 = time.perf_counter()
    best = None
    for _ in range(args.repeats):
        solver._dirty = solver._pc_dirty = True    # time assembly and PC setup every time
        solver.set_state()
        comm.Barrier()
        res = solver.solve().result
        comm.Barrier()
        t = dict(solver.timings)
        if best is None or t["total"] < best[0]["total"]:
            best = (t, res)
    t, res = best
    out = {"construct_s": t1 - t0, "assemble_s": t["assemble"], "pc_setup_s": t["setup"],
           "setup_s": (t1 - t0) + t["assemble"] + t["setup"], "solve_s": t["solve"],
           "iterations": res.iterations, "residual": res.residual, "converged": res.converged,
           "repeats": args.repeats, "ksp_reason": solver.ksp_reason, **solver.describe()}
    solver.destroy()
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes2d", default="511x255,1023x511,2047x1023")
    ap.add_argument("--sizes3d", default="64x64x64,128x128x128")
    ap.add_argument("--tol", type=float, default=1e-8)
    ap.add_argument("--ncheck", type=int, default=100, help="APT residual check interval")
    ap.add_argument("--threads", type=int, default=1, help="host-backend threads per rank")
    ap.add_argument("--backend", default="host")
    ap.add_argument("--repeats", type=int, default=1, help="PETSc solves per size (best kept)")
    ap.add_argument("--ksp-type", default="cg")
    ap.add_argument("--pc-type", default="gamg")
    ap.add_argument("--petsc-option", action="append", default=[],
                    help="extra PETSc option KEY=VALUE (prefix-less), repeatable")
    ap.add_argument("--skip-apt", action="store_true")
    ap.add_argument("--skip-petsc", action="store_true")
    args = ap.parse_args(argv)
    comm = MPI.COMM_WORLD
    backend = make_backend(args.backend, threads=args.threads)
    cases = ([("geothermal2d", geothermal2d, s) for s in parse_sizes(args.sizes2d)]
             + [("geothermal3d", geothermal3d, s) for s in parse_sizes(args.sizes3d)])
    # warm-up: compile the kernels (cached on disk) and initialise PETSc outside the timings
    for name, make, _ in cases[:1] + [c for c in cases if c[0] != cases[0][0]][:1]:
        small = (15, 9) if name == "geothermal2d" else (9, 7, 7)
        if not args.skip_apt:
            run_apt(make, small, args, backend, comm)
        if not args.skip_petsc:
            run_petsc(make, small, args, backend, comm)
    for name, make, shape in cases:
        rec = {"benchmark": "vs_petsc", "problem": name, "size": list(shape),
               "cells": int(__import__("math").prod(shape)), "ranks": comm.Get_size(),
               "threads_per_rank": args.threads, "backend": backend.name, "tol": args.tol,
               "machine": machine(), "loadavg_before": _load()}
        if comm.Get_rank() == 0:
            log(f"{name} {'x'.join(map(str, shape))} on {comm.Get_size()} rank(s) ...")
        if not args.skip_petsc:
            rec["petsc"] = run_petsc(make, shape, args, backend, comm)
        if not args.skip_apt:
            rec["apt"] = run_apt(make, shape, args, backend, comm)
        if "apt" in rec and "petsc" in rec:
            a, p = rec["apt"], rec["petsc"]
            rec["ratio_solve"] = a["solve_s"] / p["solve_s"]
            rec["ratio_total"] = (a["setup_s"] + a["solve_s"]) / (p["setup_s"] + p["solve_s"])
        rec["loadavg_after"] = _load()
        if comm.Get_rank() == 0:
            emit(rec)


if __name__ == "__main__":
    main()
