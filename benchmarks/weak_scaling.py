#!/usr/bin/env python
"""Weak scaling: a fixed local grid per rank, timed at the launched rank count.

Run under MPI at every rank count of the study (one process per rank count)::

    python benchmarks/weak_scaling.py --local 1024x1024,96x96x96 --overlap both
    mpiexec -n 2 python benchmarks/weak_scaling.py --local 1024x1024,96x96x96 --overlap both
    mpiexec -n 4 python benchmarks/weak_scaling.py --local 1024x1024,96x96x96 --overlap both
    python benchmarks/plot_scaling.py benchmarks/results/weak.jsonl -o weak.png

For every local size and overlap mode, the global grid is ``local * dims`` (``dims`` from
``MPI.Compute_dims`` or ``--dims``) and the script times ``--iters`` APT iterations
(``DarcySolver.step``: one fused APT iteration + one halo exchange of Pf, overlapped or not)

* of the **forward** solve (the problem's source, fixed-pressure values), and
* of the **adjoint** solve: the same solver after ``set_source(rhs)`` with an adjoint-like
  right-hand side (a few point sources, as ``dJ/dPf`` of point observations) and
  ``set_state(homogeneous=True)``, exactly as :class:`hpcinv.inverse.AdjointGradient` does,

after ``--warmup`` iterations, ``--repeats`` times (samples of the modes interleaved; each
sample's time is the slowest rank's), and appends one JSON line per (size, overlap) to
``--out`` (default ``benchmarks/results/weak.jsonl``; ``-`` for stdout only) with the median
and fastest time per iteration, ``T_eff`` (aggregate, ``A_eff`` of the global grid) and
``T_eff`` per rank (``A_eff = (2 (ndim + 1) + 2) n_cells_local sizeof(real)``), ranks, dims,
sizes, backend, device, threads, MPI library, CUDA-awareness, neighbours and halo bytes,
whether cores are oversubscribed (host backend: ranks per node x threads above the CPUs the
node's ranks may use together, ``machine.cores_node``), and the machine.

``--ncheck N`` also evaluates the residual every N-th iteration with one global MPI MAX, as a
real solve does (default 0: never; the APT step alone).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys

import numpy as np
from mpi4py import MPI

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import (log, machine, node_backend, node_cpus, oversubscribed,  # noqa: E402
                     parse_sizes, timed)

DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "weak.jsonl")


def a_eff_per_cell(ndim: int, itemsize: int) -> int:
    """Bytes one APT iteration moves per cell: ``(2 D_u + D_k) sizeof``, D_u = ndim+1, D_k = 2."""
    return (2 * (ndim + 1) + 2) * itemsize


def parse_overlap(text: str):
    return {"on": [True], "off": [False], "both": [True, False]}[text]


def add_common_args(p):
    p.add_argument("--dims", default=None,
                   help="ranks per dimension, e.g. 2,2 (default: MPI.Compute_dims)")
    p.add_argument("--overlap", default="both", choices=("on", "off", "both"))
    p.add_argument("--iters", type=int, default=20, help="APT iterations per sample")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--ncheck", type=int, default=0,
                   help="residual check (global MAX) every N iterations; 0: none")
    p.add_argument("--no-adjoint", action="store_true", help="time the forward only")
    p.add_argument("--dtype", default="float64", choices=("float64", "float32"))
    p.add_argument("--backend", default="host", choices=("auto", "host", "cupy"))
    p.add_argument("--threads", type=int, default=None,
                   help="host threads per rank (default: HPCINV_NUM_THREADS, OMP_NUM_THREADS, "
                        "or usable cores / ranks per node)")
    p.add_argument("--out", default=None,
                   help="JSON-lines file to append to ('-': stdout only)")
    p.add_argument("--tag", default=None, help="free text stored in every record")


def adjoint_rhs(solver, rng_seed=0):
    """A right-hand side like ``dJ/dPf`` of point observations: a few nonzero cells."""
    dec = solver.decomp
    rhs = np.zeros(dec.padded_shape, dtype=solver.dtype)
    rng = np.random.default_rng(rng_seed)
    for _ in range(8):
        g = tuple(int(rng.integers(0, n)) for n in dec.global_shape)
        loc = dec.global_to_local(g)
        if loc is not None:
            rhs[loc] = rng.standard_normal()
    return rhs


def run_case(global_shape, dims, args, backend, world, kind: str, requested_local=None):
    """Time forward (and adjoint) iterations on ``global_shape`` for each overlap mode; returns
    the records (on every rank; rank 0 writes them)."""
    from hpcinv.model.problems import geothermal2d, geothermal3d
    from hpcinv.solvers import DarcySolver, PTParams

    nd = len(global_shape)
    dtype = np.dtype(args.dtype)
    make = geothermal2d if nd == 2 else geothermal3d
    modes = parse_overlap(args.overlap)
    solvers = {}
    for ov in modes:
        s = DarcySolver(make(tuple(global_shape), comm=world, dims=dims), backend, PTParams(),
                        overlap=ov, dtype=dtype)
        solvers[ov] = s
    s0 = solvers[modes[0]]
    dec = s0.decomp
    rhs = adjoint_rhs(s0)
    comm = dec.comm
    sync = backend.synchronize

    def stepper(s, kind):
        state = {"i": 0}
        ncheck = args.ncheck

        def go():
            state["i"] += 1
            if ncheck and state["i"] % ncheck == 0:
                r = s.step(True)
                comm.allreduce(float(r), op=MPI.MAX)
            else:
                s.step(False)
        return go

    kinds = ["forward"] if args.no_adjoint else ["forward", "adjoint"]
    # Forward and adjoint use one solver object per overlap mode, as AdjointGradient does:
    # switch its source / boundary state before each sample.
    problem_Qf = {ov: solvers[ov].problem.Qf for ov in modes}

    def prepare(ov, k):
        s = solvers[ov]
        if k == "forward":
            s.set_source(problem_Qf[ov])
            s.set_state(homogeneous=False)
        else:
            s.set_source(rhs)
            s.set_state(homogeneous=True)

    steps = {(ov, k): stepper(solvers[ov], k) for ov in modes for k in kinds}
    for key, fn in steps.items():          # warm-up (compiles kernels, starts threads)
        prepare(*key)
        for _ in range(args.warmup):
            fn()
    sync()
    times = {key: [] for key in steps}
    for _ in range(args.repeats):
        for key, fn in steps.items():
            prepare(*key)
            sync()
            times[key].append(timed(fn, args.iters, comm, sync))

    ranks = world.Get_size()
    local = tuple(dec.local_shape)
    n_local = int(np.prod(local))
    n_local_max = comm.allreduce(n_local, op=MPI.MAX)
    n_global = int(np.prod(global_shape))
    ape = a_eff_per_cell(nd, dtype.itemsize)
    halo = s0.halo
    nb = halo.messages
    msg_bytes = halo.bytes_sent
    nb_max = comm.allreduce(nb, op=MPI.MAX)
    msg_max = comm.allreduce(msg_bytes, op=MPI.MAX)
    node = world.Split_type(MPI.COMM_TYPE_SHARED)
    ranks_per_node = node.Get_size()
    nodes = comm.allreduce(1 if node.Get_rank() == 0 else 0, op=MPI.SUM)
    cpus_on_node = node_cpus(node)
    node.Free()
    desc = backend.describe()
    threads = desc.get("threads")
    m = machine()
    m["cores_node"] = cpus_on_node       # CPUs of the node's ranks together (cores_usable: mine)
    aware, why = backend.cuda_aware, backend.cuda_aware_reason    # the run's one decision
    lib = MPI.Get_library_version().strip().splitlines()[0].strip()
    recs = []
    for ov in modes:
        rec = {
            "benchmark": f"{kind}_scaling", "kind": kind,
            "time": datetime.datetime.now().isoformat(timespec="seconds"),
            "ranks": ranks, "nodes": nodes, "ranks_per_node": ranks_per_node,
            "dims": list(dec.dims), "ndim": nd,
            "local_size": list(requested_local) if requested_local else list(local),
            "local_size_rank0": list(local), "local_cells_max": n_local_max,
            "global_size": list(global_shape), "global_cells": n_global,
            "dtype": dtype.name, "backend": desc.get("backend", backend.name),
            "device": desc.get("device"), "threads": threads,
            "oversubscribed": oversubscribed(backend.name, threads, ranks_per_node,
                                             cpus_on_node),
            "mpi_library": lib, "cuda_aware": bool(aware), "cuda_aware_reason": why,
            "overlap": ov, "iters": args.iters, "warmup": args.warmup,
            "repeats": args.repeats, "ncheck": args.ncheck,
            "neighbours_max": nb_max, "halo_bytes_per_rank_max": msg_max,
            "A_eff_per_rank_bytes": ape * n_local_max,
        }
        for k in kinds:
            t = times[(ov, k)]
            med, best = float(np.median(t)), float(min(t))
            rec[f"t_iter_{k}"] = med
            rec[f"t_iter_{k}_min"] = best
            rec[f"T_eff_{k}_GBs"] = ape * n_global / med / 1e9
            rec[f"T_eff_{k}_per_rank_GBs"] = ape * n_local_max / med / 1e9
        rec["t_iter"] = rec["t_iter_forward"]
        rec["T_eff_GBs"] = rec["T_eff_forward_GBs"]
        rec["T_eff_per_rank_GBs"] = rec["T_eff_forward_per_rank_GBs"]
        if args.tag:
            rec["tag"] = args.tag
        rec["argv"] = [os.path.basename(sys.argv[0])] + sys.argv[1:]
        rec["machine"] = m
        recs.append(rec)
    return recs


def write_records(recs, out):
    for r in recs:
        print(json.dumps(r), flush=True)
    if out and out != "-":
        d = os.path.dirname(os.path.abspath(out))
        os.makedirs(d, exist_ok=True)
        with open(out, "a") as f:
            for r in recs:
                f.write(json.dumps(r) + "\n")


def setup(args):
    world = MPI.COMM_WORLD
    backend = node_backend(args, world)
    dims = [int(v) for v in args.dims.split(",")] if args.dims else None
    return world, backend, dims


def scaling_main(argv, doc: str, kind: str, size_option: str, default_sizes: str,
                 size_help: str, default_out: str, global_and_local):
    """The shared driver of weak and strong scaling (``doc``: the script's docstring, whose
    first paragraph is the ``--help`` description): parse the options, and for every size of
    ``--<size_option>`` (2D/3D filtered) split it over the ranks, time it (:func:`run_case`) and
    append the records. ``global_and_local(size, dims) -> (global shape, requested local or
    None, log line)`` says what a size means for ``kind``."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(f"--{size_option}", dest="sizes", default=default_sizes,
                   help=f"{size_help} (default {default_sizes})")
    p.add_argument("--2d", dest="only2d", action="store_true", help="only the 2D sizes")
    p.add_argument("--3d", dest="only3d", action="store_true", help="only the 3D sizes")
    add_common_args(p)
    args = p.parse_args(argv)
    if args.out is None:
        args.out = default_out
    from hpcinv.parallel.launcher import RankCountError, check_rank_count
    try:                  # issue 22: a "2-rank" step as two 1-rank copies, each a 1-rank record
        check_rank_count()
    except RankCountError as exc:
        raise SystemExit(f"{kind}_scaling: error: {exc}") from None
    world, backend, dims = setup(args)
    for size in parse_sizes(args.sizes):
        nd = len(size)
        if (args.only2d and nd != 2) or (args.only3d and nd != 3):
            continue
        d = list(MPI.Compute_dims(world.Get_size(), dims if dims and len(dims) == nd
                                  else [0] * nd))
        global_shape, local, message = global_and_local(size, d)
        if world.Get_rank() == 0:
            log(f"{kind}_scaling: {message} on {world.Get_size()} rank(s)")
        recs = run_case(global_shape, d, args, backend, world, kind, requested_local=local)
        if world.Get_rank() == 0:
            write_records(recs, args.out)


def _weak_sizes(local, d):
    """A weak-scaling size is the local block: the global grid is ``local * dims``."""
    global_shape = tuple(n * k for n, k in zip(local, d))
    return global_shape, local, (f"local {'x'.join(map(str, local))} x dims {d} = global "
                                 f"{'x'.join(map(str, global_shape))}")


def main(argv=None):
    scaling_main(argv, __doc__, "weak", "local", "1024x1024,96x96x96",
                 "comma-separated local grid per rank", DEFAULT_OUT, _weak_sizes)


if __name__ == "__main__":
    main()
