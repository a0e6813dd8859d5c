"""Checks ``speed`` (time per APT iteration, T_eff and the exchange's share per rank) and,
with ``--full``, ``launch-cost``, ``teff`` (T_eff / T_copy) and ``pool-memory``."""
from __future__ import annotations

import math
import statistics
import time

from .correctness import _make
from .runner import Result, _fmt_shape, _fmt_time, _polite_wait


def _time_loop(fn, n, sync) -> float:
    sync()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    sync()
    return (time.perf_counter() - t0) / n


def _calibrate(fn, sync, target, comm) -> int:
    """Calls per sample so that a sample lasts about ``target`` seconds on the slowest rank
    (collective over ``comm``)."""
    from mpi4py import MPI
    t = comm.allreduce(_time_loop(fn, 2, sync), op=MPI.MAX)
    return max(3, min(100000, int(math.ceil(target / max(t, 1e-9)))))


def speed_block_shape(sizes, comm):
    from mpi4py import MPI
    block = sizes.speed_block
    dims = MPI.Compute_dims(comm.Get_size(), [0] * len(block))
    return tuple(b * p for b, p in zip(block, dims))


def check_speed(ctx) -> Result:
    import numpy as np
    from mpi4py import MPI
    from ...solvers import DarcySolver, PTParams
    comm, bk, sizes = ctx["comm"], ctx["backend"], ctx["sizes"]
    shape = speed_block_shape(sizes, comm)
    nd = len(shape)
    dtype = np.dtype(np.float64)
    params = PTParams(tol=1e-30, maxiter=10**9)
    s = DarcySolver(_make(nd)(shape, comm=comm), bk, params, overlap="auto", dtype=dtype)
    sync = bk.synchronize
    for _ in range(3):
        s.step(False)
    n = _calibrate(lambda: s.step(False), sync, sizes.sample_time, comm)
    samples = []
    for _ in range(3):
        _polite_wait(comm)
        samples.append(_time_loop(lambda: s.step(False), n, sync))
    t_iter = statistics.median(samples)
    t_halo = None
    if s.halo.active:
        _polite_wait(comm)
        t_halo = _time_loop(lambda: s.halo.exchange(s.Pf), n, sync)
    local = s.decomp.local_shape
    t_alone = t_iter
    if comm.Get_size() > 1:         # the same step on this rank's block alone (no messages)
        alone = DarcySolver(_make(nd)(local, comm=MPI.COMM_SELF), bk, params, overlap=False,
                            dtype=dtype)
        for _ in range(3):
            alone.step(False)
        _polite_wait(comm)
        t_alone = statistics.median(_time_loop(lambda: alone.step(False), n, sync)
                                    for _ in range(3))
    cells = int(np.prod(local))
    a_eff = (2 * (nd + 1) + 2) * cells * dtype.itemsize
    data = {"rank": comm.Get_rank(), "global_shape": list(shape), "local_shape": list(local),
            "overlap": bool(s.overlap), "iters_per_sample": n, "t_iter": t_iter,
            "t_alone": t_alone, "t_halo": t_halo, "T_eff_GBs": a_eff / t_iter / 1e9,
            "T_eff_alone_GBs": a_eff / t_alone / 1e9,
            "exchange_share": max(0.0, 1.0 - t_alone / t_iter) if comm.Get_size() > 1 else 0.0}
    return Result("PASS", "", data)


def speed_summary(datas) -> tuple[str, str]:
    """``(status, detail)`` from every rank's speed data."""
    t = [d["t_iter"] for d in datas]
    alone = [d["t_alone"] for d in datas]
    teff = [d["T_eff_GBs"] for d in datas]
    med = statistics.median(alone)
    slow = max(range(len(alone)), key=lambda r: alone[r])
    ratio = alone[slow] / med if med > 0 else 1.0
    d0 = datas[0]
    text = (f"{_fmt_shape(d0['global_shape'])} float64 (block {_fmt_shape(d0['local_shape'])}"
            f"/rank, overlap {'on' if d0['overlap'] else 'off'}): t_iter "
            f"{_fmt_time(statistics.median(t))}, T_eff {statistics.median(teff):.2f} GB/s/rank")
    if len(datas) > 1:
        share = statistics.median(d["exchange_share"] for d in datas)
        halo = [d["t_halo"] for d in datas if d["t_halo"] is not None]
        text += (f", exchange {100 * share:.0f}% of t_iter (halo.exchange alone "
                 f"{_fmt_time(statistics.median(halo)) if halo else '-'}), slowest rank {slow} "
                 f"({ratio:.1f}x median alone)")
    if len(datas) > 1 and ratio > 10:
        return "WARN", f"rank {slow} is {ratio:.0f}x slower than the median rank alone " \
                       f"(shared cores or device?); " + text
    return "PASS", text


def check_launch_cost(ctx) -> Result:
    import numpy as np
    from ...model import problems
    from ...physics.darcy import apt_step_kernel
    from ...solvers import DarcySolver, PTParams
    bk = ctx["backend"]
    s = DarcySolver(problems.periodic_block((8, 8)), bk, PTParams(tol=1e-12))
    k = bk.kernel(apt_step_kernel(2), 2, np.float64)
    bound = k.bind(Pf=s.Pf, q=s.q, Pf_new=s.Pf_new, q_new=s.q_new, K=s.K, Qf=s.Qf, R=s.R,
                   damp=s.damp, beta=s.beta, **s.geometry)
    box = ((1, 1), (2, 2))
    n = 200 if bk.describe().get("stream_check") else 2000
    samples = []
    for _ in range(3):
        bk.synchronize()
        t0 = time.perf_counter()
        for _ in range(n):
            bk.launch(bound, box)
        samples.append((time.perf_counter() - t0) / n)
    bk.synchronize()
    return Result("PASS", "", {"us_per_launch": 1e6 * statistics.median(samples),
                               "us_per_launch_min": 1e6 * min(samples)})


def _launch_summary(datas):
    us = [d["us_per_launch"] for d in datas]
    return (f"host time per kernel launch {statistics.median(us):.1f} us (median over ranks; "
            f"max {max(us):.1f} us)")


COPY_KERNEL = None


def copy_kernel():
    global COPY_KERNEL
    if COPY_KERNEL is None:
        from ...backend.kernel import Kernel
        COPY_KERNEL = Kernel("selftest_copy", ("dst", "src"), (), "dst[idx] = src[idx];",
                             writes=("dst",), reach=0)
    return COPY_KERNEL


def check_teff(ctx) -> Result:
    """T_eff / T_copy per rank on its own device, cubes of ``sizes.teff_sizes``."""
    import numpy as np
    bk, sizes = ctx["backend"], ctx["sizes"]
    gpu = bk.name == "cupy"
    rows, skipped = [], []
    target = 0.2 if gpu else 0.05
    for n in sizes.teff_sizes:
        for dtype in (np.float32, np.float64):
            dt = np.dtype(dtype)
            try:
                rows.append(_teff_one(bk, (n, n, n), dt, target))
            except Exception as exc:
                if "OutOfMemory" in type(exc).__name__ or "out of memory" in str(exc).lower():
                    skipped.append(f"{n}^3 {dt.name}: out of device memory")
                    _free_pool(bk)
                else:
                    raise
            _free_pool(bk)
    return Result("PASS", "", {"rows": rows, "skipped": skipped, "gpu": gpu})


def _teff_one(bk, shape, dt, target):
    import numpy as np
    from mpi4py import MPI
    from ...solvers import DarcySolver, PTParams
    s = DarcySolver(_make(3)(shape, comm=MPI.COMM_SELF), bk, PTParams(tol=1e-30, maxiter=10**9),
                    overlap=False, dtype=dt)
    pshape = s.decomp.padded_shape
    src = bk.upload(np.ones(pshape), dtype=dt)
    dst = bk.zeros(pshape, dt)
    cb = bk.kernel(copy_kernel(), 3, dt).bind(dst=dst, src=src)
    box = ((1, 1, 1), tuple(m - 1 for m in pshape))
    sync = bk.synchronize
    step = lambda: s.step(False)           # noqa: E731
    copy = lambda: bk.launch(cb, box)      # noqa: E731
    for _ in range(3):
        step(), copy()
    n_step = _calibrate(step, sync, target, MPI.COMM_SELF)
    n_copy = _calibrate(copy, sync, target, MPI.COMM_SELF)
    ts = statistics.median(_time_loop(step, n_step, sync) for _ in range(3))
    tc = statistics.median(_time_loop(copy, n_copy, sync) for _ in range(3))
    cells = int(np.prod(shape))
    teff = (2 * 4 + 2) * cells * dt.itemsize / ts / 1e9
    tcopy = 2 * cells * dt.itemsize / tc / 1e9
    return {"size": list(shape), "dtype": dt.name, "t_iter": ts, "T_eff_GBs": teff,
            "T_copy_GBs": tcopy, "ratio": teff / tcopy}


def _free_pool(bk):
    if bk.name == "cupy":
        bk.synchronize()
        bk.xp.get_default_memory_pool().free_all_blocks()


def _teff_summary(datas):
    d0 = datas[0]
    parts = [f"{r['size'][0]}^3 f{r['dtype'][5:]}: {r['T_eff_GBs']:.1f}/{r['T_copy_GBs']:.1f} "
             f"GB/s = {100 * r['ratio']:.0f}%" for r in d0["rows"]]
    text = "T_eff/T_copy rank 0: " + ", ".join(parts)
    if d0["skipped"]:
        text += "; skipped " + ", ".join(d0["skipped"])
    if not d0["gpu"]:
        text += " (host: one small cube; the 64^3-512^3 series runs on GPUs)"
    return text


def check_pool_memory(ctx) -> Result:
    """Peak CuPy pool bytes of a gradient (forward + adjoint + smoothing), in full fields."""
    import numpy as np
    from mpi4py import MPI
    from ...inverse import AdjointGradient, Observations
    from ...model.geothermal import workshop_points
    from ...inverse.regularisation import GradientSmoother
    bk, sizes = ctx["backend"], ctx["sizes"]
    if bk.name != "cupy":
        return Result("SKIP", f"device-only (CuPy memory pool); backend {bk.name}")
    pool = bk.xp.get_default_memory_pool()
    _free_pool(bk)
    used0, total0 = pool.used_bytes(), pool.total_bytes()
    shape = sizes.pool_shape
    model = _make(3)(shape, comm=MPI.COMM_SELF, k_background=1.0, k_barrier=1.0)
    obs = Observations(model.grid, workshop_points(3), values=np.zeros(256),
                       demean=model.gauge_free)
    G = AdjointGradient(model, obs, bk)
    J, g, _ = G()
    GradientSmoother(model.grid, bk, ctx["sizes"].smoothing_steps).apply(g)
    bk.synchronize()
    field = int(np.prod(model.grid.decomp.padded_shape)) * 8
    peak = (pool.total_bytes() - total0) / field
    used = (pool.used_bytes() - used0) / field
    del G, g
    _free_pool(bk)
    return Result("PASS", f"gradient at {_fmt_shape(shape)} float64: pool peak {peak:.1f} "
                  f"full fields, {used:.1f} in use after", {"peak_fields": peak,
                                                            "used_fields": used})
