#!/usr/bin/env python
"""Effective memory throughput of the fused APT Darcy iteration (DESIGN.md section 6).

For every grid size, prints one JSON line with

* ``t_iter`` (median over ``--repeats`` samples after warm-up) of one APT iteration
  (``DarcySolver.step``: the fused kernel, plus the overlapped halo exchange when run on
  several ranks) and ``T_eff = A_eff / t_iter``, ``A_eff = (2 D_u + D_k) n_cells sizeof(real)``
  with ``D_u = ndim + 1`` (Pf and the ndim flux components, read and written) and ``D_k = 2``
  (K, Qf; read only);
* ``T_copy``: the bandwidth of a copy kernel ``dst[idx] = src[idx]`` compiled through the SAME
  backend over the same padded shape, with the same threads, timed in the same run (samples
  interleaved with the APT samples), counting 2 arrays; and the ratio ``T_eff / T_copy``;
  also ``T_copy_samebytes``: the same copy kernel over two arrays of ``ndim + 2`` times the
  cells, so that it moves as many bytes as one APT iteration (when two arrays of the grid fit
  in the last-level cache but the APT working set does not, ``T_copy`` measures the cache);
* the same iteration written with plain numpy slicing (vectorised, as a user would write it;
  same arithmetic in the same order) as the baseline: its time per iteration, and the speed-up
  of the kernel over it. The baseline is checked against the solver from the same zero state
  (``numpy_max_abs_diff``; it is bitwise equal on the host backend).

Usage::

    python benchmarks/teff.py                                  # 2048^2, 4096^2, 192^3, float64
    python benchmarks/teff.py --sizes 1024x1024 --repeats 5 --dtype float32 --threads 1
    mpiexec -n 2 python benchmarks/teff.py --sizes 4096x4096 --no-numpy   # several ranks

GB/s are 1e9 bytes per second. ``*_best`` fields use the fastest sample instead of the median
(useful on a shared machine). On several ranks, times are the maximum over ranks of each sample,
sizes are global, and the copy bandwidth is the aggregate of all ranks.
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

from hpcinv.backend.kernel import Kernel  # noqa: E402
from hpcinv.model.problems import geothermal2d, geothermal3d  # noqa: E402
from hpcinv.solvers import DarcySolver, PTParams  # noqa: E402

DEFAULT_SIZES = "2048x2048,4096x4096,192x192x192"
COPY_KERNEL = Kernel("bench_copy", ("dst", "src"), (), "dst[idx] = src[idx];",
                     writes=("dst",))


# --------------------------------------------------------------------------------------------
# numpy baseline: the same APT iteration with plain slicing on unpadded arrays
# --------------------------------------------------------------------------------------------
def _sl(ndim, axis, s):
    """Index with slice ``s`` along ``axis`` and everything along the other axes."""
    return tuple(s if b == axis else slice(None) for b in range(ndim))


class NumpyAPT:
    """The APT step as a numpy user writes it: fluxes on faces, then the pressure update.

    ``q[a]`` has one more entry than the cells along axis ``a`` (faces, walls included, which
    stay zero: no flux). ``Kf`` (face permeability) and ``beta / Kmax_loc`` are precomputed
    once, as they are constant. The arithmetic is that of the fused kernel, in the same order.
    """

    def __init__(self, K, Qf, inv_d, damp, beta, dtype):
        dt = np.dtype(dtype)
        self.dt = dt
        self.ndim = nd = K.ndim
        K = np.ascontiguousarray(K, dtype=dt)
        self.Qf = np.ascontiguousarray(Qf, dtype=dt)
        self.inv_d = [dt.type(v) for v in inv_d]
        self.damp = dt.type(damp)
        self.Kf = [dt.type(0.5) * (K[_sl(nd, a, slice(None, -1))] + K[_sl(nd, a, slice(1, None))])
                   for a in range(nd)]
        Kp = np.pad(K, 1, mode="edge")      # the solver mirrors K into the wall ghosts
        Kmax = K.copy()
        for a in range(nd):
            lo = tuple(slice(0, -2) if b == a else slice(1, -1) for b in range(nd))
            hi = tuple(slice(2, None) if b == a else slice(1, -1) for b in range(nd))
            Kmax = np.maximum(Kmax, np.maximum(Kp[lo], Kp[hi]))
        del Kp
        self.bK = dt.type(beta) / Kmax
        self.Pf = np.zeros(K.shape, dt)
        self.q = []
        for a in range(nd):
            shp = list(K.shape)
            shp[a] += 1
            self.q.append(np.zeros(shp, dt))

    def step(self):
        nd, Pf, q = self.ndim, self.Pf, self.q
        for a in range(nd):
            inner = _sl(nd, a, slice(1, -1))
            dP = Pf[_sl(nd, a, slice(1, None))] - Pf[_sl(nd, a, slice(None, -1))]
            q[a][inner] -= (q[a][inner] + self.Kf[a] * dP * self.inv_d[a]) * self.damp
        div = (q[0][1:] - q[0][:-1]) * self.inv_d[0]
        for a in range(1, nd):
            div += (q[a][_sl(nd, a, slice(1, None))] - q[a][_sl(nd, a, slice(None, -1))]) \
                * self.inv_d[a]
        Pf -= (div - self.Qf) * self.bK


def owned_views(solver):
    """The solver's fields on owned cells / faces, shaped like :class:`NumpyAPT`'s arrays."""
    nd = solver.grid.ndim
    own = tuple(slice(1, -1) for _ in range(nd))
    Pf = solver.backend.to_host(solver.Pf, region=own)
    q = []
    for a in range(nd):
        n = solver.decomp.local_shape[a]
        sl = tuple(slice(1, n + 2) if b == a else slice(1, -1) for b in range(nd))
        q.append(solver.backend.to_host(solver.q[a], region=sl))
    return Pf, q


# --------------------------------------------------------------------------------------------
def auto_iters(fn, comm, sync, target):
    """Calls per sample so that one sample lasts about ``target`` seconds (at least 2)."""
    t = timed(fn, 1, comm, sync)
    return max(2, int(math.ceil(target / max(t, 1e-9))))


def bench_size(shape, args, backend, comm):
    nd = len(shape)
    dtype = np.dtype(args.dtype)
    ranks = comm.Get_size()
    make = geothermal2d if nd == 2 else geothermal3d
    solver = DarcySolver(make(shape, comm=comm), backend, PTParams(), overlap=not args.blocking,
                         dtype=dtype)
    n_cells = int(np.prod(shape))
    n_local = int(np.prod(solver.decomp.local_shape))
    isz = dtype.itemsize
    a_eff = (2 * (nd + 1) + 2) * n_cells * isz
    sync = backend.synchronize

    # --- copy kernel through the same backend, over the same padded local shape ------------
    copy = backend.kernel(COPY_KERNEL, nd, dtype)
    pshape = solver.decomp.padded_shape
    src = backend.upload(np.random.default_rng(0).random(pshape), dtype=dtype)
    dst = backend.zeros(pshape, dtype)
    backend.fill(dst, 1)                               # first touch before timing
    lo, hi = tuple(1 for _ in pshape), tuple(n - 1 for n in pshape)
    copy_bound = copy.bind(dst=dst, src=src)

    def do_copy():
        backend.launch(copy_bound, (lo, hi))

    # the same copy kernel over arrays holding as many bytes as one APT iteration moves
    # (2 arrays of (ndim + 2) x the cells): a copy of the same-shape arrays may run from the
    # last-level cache when the APT working set (2 D_u + D_k arrays) does not fit there
    bshape = ((nd + 2) * solver.decomp.local_shape[0] + 2,) + tuple(pshape[1:])
    bsrc = backend.upload(np.random.default_rng(1).random(bshape), dtype=dtype)
    bdst = backend.zeros(bshape, dtype)
    backend.fill(bdst, 1)
    blo, bhi = tuple(1 for _ in bshape), tuple(n - 1 for n in bshape)
    big_bound = copy.bind(dst=bdst, src=bsrc)

    def do_big_copy():
        backend.launch(big_bound, (blo, bhi))

    def do_step():
        solver.step(False)

    # --- warm-up (compilation, page faults, thread pools) ----------------------------------
    for _ in range(args.warmup):
        do_copy()
        do_big_copy()
        do_step()
    sync()
    n_step = args.iters or auto_iters(do_step, comm, sync, args.sample_time)
    n_copy = args.iters or auto_iters(do_copy, comm, sync, args.sample_time)
    n_big = args.iters or auto_iters(do_big_copy, comm, sync, args.sample_time)

    t_step, t_copy, t_big = [], [], []
    for _ in range(args.repeats):           # interleaved: all see the same machine state
        t_copy.append(timed(do_copy, n_copy, comm, sync))
        t_big.append(timed(do_big_copy, n_big, comm, sync))
        t_step.append(timed(do_step, n_step, comm, sync))
    if not np.isfinite(backend.max_abs(solver.Pf)):
        raise SystemExit(f"error: the APT iteration produced non-finite values at {shape}")
    t_iter, t_iter_min = float(np.median(t_step)), float(min(t_step))
    tc, tc_min = float(np.median(t_copy)), float(min(t_copy))
    copy_bytes = 2 * n_local * isz * ranks     # aggregate over ranks (equal-ish local sizes)
    tb = float(np.median(t_big))
    big_bytes = 2 * (nd + 2) * n_local * isz * ranks
    rec = {
        "benchmark": "teff",
        "machine": machine(),
        "backend": backend.name,
        "device": backend.describe().get("device"),
        "threads": getattr(backend, "threads", None),
        "ndim": nd,
        "size": list(shape),
        "local_size": list(solver.decomp.local_shape),
        "dtype": dtype.name,
        "ranks": ranks,
        "dims": list(solver.decomp.dims),
        "overlap": not args.blocking,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "iters_per_sample": n_step,
        "A_eff_bytes": a_eff,
        "t_iter": t_iter,
        "t_iter_min": t_iter_min,
        "T_eff_GBs": a_eff / t_iter / 1e9,
        "T_eff_best_GBs": a_eff / t_iter_min / 1e9,
        "copy_iters_per_sample": n_copy,
        "t_copy": tc,
        "T_copy_GBs": copy_bytes / tc / 1e9,
        "T_copy_best_GBs": copy_bytes / tc_min / 1e9,
        "ratio_Teff_Tcopy": (a_eff / t_iter) / (copy_bytes / tc),
        "ratio_best": (a_eff / t_iter_min) / (copy_bytes / tc_min),
        "copy_samebytes_shape": list(bshape),
        "T_copy_samebytes_GBs": big_bytes / tb / 1e9,
        "ratio_Teff_Tcopy_samebytes": (a_eff / t_iter) / (big_bytes / tb),
    }
    del src, dst, bsrc, bdst, copy_bound, big_bound

    # --- numpy baseline (one rank, host arrays) ---------------------------------------------
    if not args.no_numpy and ranks == 1:
        own = tuple(slice(1, -1) for _ in range(nd))
        K = backend.to_host(solver.K, region=own)
        Qf = backend.to_host(solver.Qf, region=own)
        ref = NumpyAPT(K, Qf, solver.inv_d, solver.damp, solver.beta, dtype)
        # correctness: the same number of steps from the same zero state
        solver.set_state()
        for _ in range(args.verify_steps):
            solver.step(False)
            ref.step()
        sync()
        Pf, q = owned_views(solver)
        diffs = [np.max(np.abs(Pf - ref.Pf))] + [np.max(np.abs(a - b)) for a, b in zip(q, ref.q)]
        scale = max(np.max(np.abs(ref.Pf)), 1e-300)
        bitwise = bool(np.array_equal(Pf, ref.Pf) and all(np.array_equal(a, b)
                                                          for a, b in zip(q, ref.q)))
        ref.step()
        n_np = max(1, args.numpy_iters or auto_iters(ref.step, MPI.COMM_SELF, lambda: None,
                                                     args.sample_time))
        t_np = [timed(ref.step, n_np, MPI.COMM_SELF, lambda: None)
                for _ in range(args.numpy_repeats)]
        tn = float(np.median(t_np))
        rec.update({
            "numpy_iters_per_sample": n_np,
            "numpy_repeats": args.numpy_repeats,
            "numpy_t_iter": tn,
            "numpy_T_eff_GBs": a_eff / tn / 1e9,
            "numpy_speedup": tn / t_iter,
            "numpy_speedup_best": float(min(t_np)) / t_iter_min,
            "numpy_verify_steps": args.verify_steps,
            "numpy_bitwise_equal": bitwise,
            "numpy_max_abs_diff": float(max(diffs)),
            "numpy_max_rel_diff": float(max(diffs) / scale),
        })
        del ref
    else:
        rec.update({"numpy_t_iter": None, "numpy_speedup": None})
    rec["loadavg_end"] = machine()["loadavg"]
    return rec


def main(argv=None):
    p = kernel_bench_parser(__doc__, DEFAULT_SIZES)
    p.add_argument("--repeats", type=int, default=10, help="timed samples (median reported)")
    p.add_argument("--warmup", type=int, default=3, help="untimed iterations first")
    p.add_argument("--iters", type=int, default=0,
                   help="iterations per sample (0: about --sample-time seconds each)")
    p.add_argument("--sample-time", type=float, default=0.25, help="seconds per sample (auto)")
    p.add_argument("--blocking", action="store_true",
                   help="blocking halo exchange instead of overlapped (several ranks)")
    p.add_argument("--no-numpy", action="store_true", help="skip the numpy baseline")
    p.add_argument("--numpy-repeats", type=int, default=3)
    p.add_argument("--numpy-iters", type=int, default=0,
                   help="numpy iterations per sample (0: about --sample-time seconds)")
    p.add_argument("--verify-steps", type=int, default=5,
                   help="steps from zero compared between the solver and the numpy baseline")
    args = p.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0 or args.numpy_repeats < 1:
        p.error("--repeats and --numpy-repeats must be >= 1, --warmup >= 0")
    comm = MPI.COMM_WORLD
    backend = node_backend(args, comm)
    for shape in parse_sizes(args.sizes):
        if comm.Get_rank() == 0:
            log(f"teff: {'x'.join(map(str, shape))} {args.dtype} on {comm.Get_size()} rank(s)")
        rec = bench_size(shape, args, backend, comm)
        if comm.Get_rank() == 0:
            emit(rec)


if __name__ == "__main__":
    main()
