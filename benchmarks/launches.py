"""Launches, host syncs and host time per APT iteration, and the host cost of one launch.

Three measurements, one JSON line each:

* ``counts``: what one APT iteration issues on a block with a neighbour on every side (a
  periodic single-rank block: 4 neighbours in 2D, 6 in 3D, the layout of an interior rank),
  2D and 3D, overlap on and off, with and without a residual check, for host memory (MPI reads
  the arrays directly, as with CUDA-aware MPI) and for staged device memory (the stream
  checker's emulation of a GPU without CUDA-aware MPI). Counts are exact, not timed.
* ``launch``: host time of one launch of a bound kernel over a one-cell box (the Python and
  ctypes cost a GPU launch would add to the kernel's own time), median of ``--repeats``.
* ``iteration``: host time per APT iteration on a tiny grid (``--sizes``, default 32x16 and
  16x16x16), overlap on and off, under however many ranks it is launched with
  (``mpiexec -n 2 python benchmarks/launches.py --only iteration``).

    python benchmarks/launches.py
    mpiexec -n 2 python benchmarks/launches.py --only iteration
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from mpi4py import MPI

from _common import emit, machine, parse_sizes
from hpcinv import problems
from hpcinv.backend import make_backend
from hpcinv.backend.checker import CheckedHostBackend
from hpcinv.physics.darcy import apt_step_kernel
from hpcinv.solvers import DarcySolver, PTParams


def counts(bk, shape, overlap, check):
    s = DarcySolver(problems.periodic_block(shape), bk, PTParams(tol=1e-12), overlap=overlap)
    s.step(check)
    bk.synchronize()
    bk.reset_counters()
    s.step(check)
    c = bk.reset_counters()
    bk.synchronize()
    return c


def launch_cost(bk, repeats):
    s = DarcySolver(problems.periodic_block((8, 8)), bk, PTParams(tol=1e-12))
    k = bk.kernel(apt_step_kernel(2), 2, np.float64)
    bound = k.bind(Pf=s.Pf, q=s.q, Pf_new=s.Pf_new, q_new=s.q_new, K=s.K, Qf=s.Qf, R=s.R,
                   damp=s.damp, beta=s.beta, **s.geometry)
    box = ((1, 1), (2, 2))
    samples = []
    for _ in range(repeats):
        n = 20000
        t = time.perf_counter()
        for _ in range(n):
            bk.launch(bound, box)
        bk.synchronize()                  # a GPU's queue drained: issue rate, not queue fill
        samples.append((time.perf_counter() - t) / n)
    return statistics.median(samples), min(samples)


def iteration_cost(shape, overlap, repeats, comm):
    name = "geothermal2d" if len(shape) == 2 else "geothermal3d"
    p = getattr(problems, name)(shape, comm=comm)
    bk = make_backend("host", threads=1)
    s = DarcySolver(p, bk, PTParams(tol=1e-30, maxiter=10**9), overlap=overlap)
    for _ in range(200):
        s.step(False)
    samples = []
    for _ in range(repeats):
        comm.Barrier()
        n = 2000
        t = time.perf_counter()
        for _ in range(n):
            s.step(False)
        samples.append((time.perf_counter() - t) / n)
    return statistics.median(samples), min(samples)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", choices=("counts", "launch", "iteration"), default=None)
    ap.add_argument("--sizes", default="32x16,16x16x16", help="grids of the iteration timing")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--backend", default="host", choices=("host", "cupy", "auto"),
                    help="backend of the launch measurement (counts: always the host's)")
    args = ap.parse_args()
    comm = MPI.COMM_WORLD
    mach = machine()
    if args.only in (None, "counts") and comm.rank == 0:
        for memory, make in (("host", lambda: make_backend("host", threads=1)),
                             ("staged device (checker)", lambda: CheckedHostBackend(threads=1))):
            for shape in ((32, 16), (16, 16, 16)):
                for overlap in (True, False):
                    for check in (False, True):
                        emit({"bench": "counts", "memory": memory, "ndim": len(shape),
                              "neighbours": 2 * len(shape), "overlap": overlap,
                              "residual_check": check,
                              **counts(make(), shape, overlap, check)})
    if args.only in (None, "launch") and comm.rank == 0:
        bk = make_backend(args.backend, threads=1)
        med, best = launch_cost(bk, args.repeats)
        emit({"bench": "launch", "backend": bk.name, "us_per_launch": round(1e6 * med, 2),
              "us_per_launch_min": round(1e6 * best, 2), "machine": mach})
    if args.only in (None, "iteration"):
        for shape in parse_sizes(args.sizes):
            for overlap in (False, True):
                med, best = iteration_cost(shape, overlap, args.repeats, comm)
                if comm.rank == 0:
                    emit({"bench": "iteration", "shape": list(shape), "ranks": comm.size,
                          "overlap": overlap, "us_per_iter": round(1e6 * med, 1),
                          "us_per_iter_min": round(1e6 * best, 1), "machine": mach})


if __name__ == "__main__":
    main()
