#!/usr/bin/env python
"""Cost of the halo exchange per APT iteration, and how much of it the overlap hides.

Run under MPI (2 ranks or more)::

    mpiexec -n 2 python benchmarks/overlap.py
    mpiexec -n 2 python benchmarks/overlap.py --sizes 4096x2048 --repeats 5 --threads 1

For every global grid size, prints one JSON line per mode with the time per iteration
(median over ``--repeats`` samples; the slowest rank of each sample):

* ``overlap``: ``DarcySolver(..., overlap=True)``: boundary slabs first, the halo exchange of
  Pf in flight while the interior runs (CPU: interior kernel in a worker thread);
* ``blocking``: ``overlap=False``: the whole block, then a blocking exchange;
* ``no_exchange``: every rank solves its own block of the same local size on
  ``MPI.COMM_SELF`` (no messages), all ranks running at the same time, as a lower bound.

and then one ``summary`` line: the exchange cost ``t_blocking - t_no_exchange``, the fraction
of it hidden by the overlap ``(t_blocking - t_overlap) / (t_blocking - t_no_exchange)``, and
whether overlapped and blocking runs give bitwise identical fields.

Samples of the three modes are interleaved so that all see the same machine state. Note that
on a machine with as many cores as ranks, the overlap's worker thread (and MPI's polling in the
main thread) oversubscribe the cores: the measurement is then honest but not representative of
a node with a spare core per rank (or of GPUs, where the interior runs on a second stream).
"""
from __future__ import annotations

import math
import os
import sys

import numpy as np
from mpi4py import MPI

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import (emit, kernel_bench_parser,
                     log, machine, node_backend, parse_sizes, timed)  # noqa: E402

from hpcinv.model.problems import geothermal2d, geothermal3d  # noqa: E402
from hpcinv.solvers import DarcySolver, PTParams  # noqa: E402

DEFAULT_SIZES = "2048x2048,192x192x192"
MODES = ("overlap", "blocking", "no_exchange")


def bench_size(shape, args, backend, world):
    nd = len(shape)
    dtype = np.dtype(args.dtype)
    make = geothermal2d if nd == 2 else geothermal3d
    dims = args.dims
    solvers = {
        "overlap": DarcySolver(make(shape, comm=world, dims=dims), backend, PTParams(),
                               overlap=True, dtype=dtype),
        "blocking": DarcySolver(make(shape, comm=world, dims=dims), backend, PTParams(),
                                overlap=False, dtype=dtype),
    }
    local = tuple(solvers["overlap"].decomp.local_shape)
    # the same local block size, no neighbours: every rank alone on COMM_SELF
    solvers["no_exchange"] = DarcySolver(make(local, comm=MPI.COMM_SELF), backend, PTParams(),
                                         overlap=True, dtype=dtype)
    sync = backend.synchronize

    # bitwise check: overlapped vs blocking from the same zero state
    for name in ("overlap", "blocking"):
        for _ in range(args.verify_steps):
            solvers[name].step(False)
    sync()
    a, b = solvers["overlap"], solvers["blocking"]
    same = bool(np.array_equal(backend.to_host(a.Pf), backend.to_host(b.Pf))
                and all(np.array_equal(backend.to_host(x), backend.to_host(y))
                        for x, y in zip(a.q, b.q)))
    same = bool(world.allreduce(int(same), op=MPI.MIN))

    steps = {m: (lambda s=solvers[m]: s.step(False)) for m in MODES}
    for m in MODES:                      # warm-up
        for _ in range(args.warmup):
            steps[m]()
    sync()
    if args.iters:
        n_iter = args.iters
    else:
        t1 = timed(steps["blocking"], 2, world, sync)
        n_iter = max(2, int(math.ceil(args.sample_time / max(t1, 1e-9))))
    times = {m: [] for m in MODES}
    for _ in range(args.repeats):
        for m in MODES:
            times[m].append(timed(steps[m], n_iter, world, sync))

    halo = solvers["overlap"].halo
    msg_bytes = halo.bytes_sent
    common = {
        "benchmark": "overlap",
        "machine": machine(),
        "backend": backend.name,
        "threads": getattr(backend, "threads", None),
        "ndim": nd,
        "size": list(shape),
        "local_size": list(local),
        "dims": list(solvers["overlap"].decomp.dims),
        "dtype": dtype.name,
        "ranks": world.Get_size(),
        "repeats": args.repeats,
        "iters_per_sample": n_iter,
    }
    n_cells = int(np.prod(shape))
    a_eff = (2 * (nd + 1) + 2) * n_cells * dtype.itemsize
    med = {m: float(np.median(times[m])) for m in MODES}
    recs = []
    for m in MODES:
        n = n_cells if m != "no_exchange" else int(np.prod(local)) * world.Get_size()
        recs.append(dict(common, mode=m, t_iter=med[m], t_iter_min=float(min(times[m])),
                         T_eff_GBs=(2 * (nd + 1) + 2) * n * dtype.itemsize / med[m] / 1e9,
                         send_bytes_per_rank_max=world.allreduce(msg_bytes, op=MPI.MAX)))
    cost = med["blocking"] - med["no_exchange"]
    recs.append(dict(common, mode="summary",
                     t_overlap=med["overlap"], t_blocking=med["blocking"],
                     t_no_exchange=med["no_exchange"],
                     exchange_cost=cost,
                     overlap_vs_blocking=med["overlap"] / med["blocking"],
                     overlap_vs_no_exchange=med["overlap"] / med["no_exchange"],
                     hidden_fraction=((med["blocking"] - med["overlap"]) / cost
                                      if cost > 0 else None),
                     T_eff_overlap_GBs=a_eff / med["overlap"] / 1e9,
                     overlap_blocking_bitwise_equal=same,
                     loadavg_end=machine()["loadavg"]))
    return recs


def main(argv=None):
    p = kernel_bench_parser(__doc__, DEFAULT_SIZES)
    p.add_argument("--dims", default=None,
                   help="ranks per dimension, e.g. 2,1 (default: MPI.Compute_dims)")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--iters", type=int, default=0,
                   help="iterations per sample (0: about --sample-time seconds each)")
    p.add_argument("--sample-time", type=float, default=0.3)
    p.add_argument("--verify-steps", type=int, default=5)
    args = p.parse_args(argv)
    if args.dims:
        args.dims = [int(v) for v in args.dims.split(",")]
    world = MPI.COMM_WORLD
    if world.Get_size() < 2 and world.Get_rank() == 0:
        log("overlap: warning: 1 rank, no messages; run under mpiexec -n 2 (or more)")
    backend = node_backend(args, world)
    for shape in parse_sizes(args.sizes):
        if world.Get_rank() == 0:
            log(f"overlap: {'x'.join(map(str, shape))} on {world.Get_size()} rank(s)")
        recs = bench_size(shape, args, backend, world)
        if world.Get_rank() == 0:
            for r in recs:
                emit(r)


if __name__ == "__main__":
    main()
