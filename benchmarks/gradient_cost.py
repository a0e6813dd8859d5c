#!/usr/bin/env python
"""Cost of one adjoint-state gradient relative to one forward solve: time and peak memory.

For each size (``--sizes``, default ``1023x511,128x128x128``: ``geothermal2d`` for 2D sizes,
``geothermal3d`` for 3D) the setup is that of ``hpcinv gradient``: observations at the workshop's
8 x 8 grid (x in linspace(-1/3, 1/3, 8), y in linspace(0.25, 0.85, 8); in 3D on the 4 levels
z in linspace(0.25, 0.75, 4)), recorded from a forward solve of the problem's true K, and the
model evaluated is the initial one, log K = 0 (K = 1 everywhere). Default ``PTParams`` for the
forward and the adjoint solves.

Time: ``forward`` is one ``DarcySolver.solve()`` from zero fields at K = 1 (the forward solve
every gradient contains), ``gradient`` one ``AdjointGradient`` call (forward solve, misfit,
adjoint solve, transpose kernels). They are interleaved ``--repeats`` times after a warm-up,
and the medians are compared: ``time_ratio = t_gradient / t_forward`` (target <= 2.2); also
``time_ratio_min`` (fastest over fastest: the figure to trust on a shared, loaded machine) and
the median of the per-pair ratios. The iteration counts are reported too, because the ratio is
essentially ``iteration_ratio = (forward_iterations + adjoint_iterations) / forward_iterations``
(the misfit and the two transpose kernels cost about one iteration). On a loaded machine use
``--threads 1``: an OpenMP team whose threads get descheduled makes timings erratic.

Memory: each operation runs in its own fresh subprocess (``--memory-repeats`` times, median), which
first builds everything a caller holds anyway (problem, observations with their values, the
log K array), then resets the kernel's peak-RSS counter (``echo 5 > /proc/self/clear_refs``,
Linux >= 4.0), records the current RSS and runs the operation; the cost is
``VmHWM - VmRSS_before`` (peak resident set during the operation minus resident set before it).
That is what a node's memory actually has to hold, including any temporary, the compiled
kernels and the halo buffers, and it is not fooled by transients of the setup (a plain
``ru_maxrss`` minus an import-only baseline would be: building the problem allocates coordinate
arrays that are freed again). Where ``clear_refs`` is not writable the script falls back to
``ru_maxrss`` minus the ``ru_maxrss`` of a baseline child that does the setup only (reported as
``memory_method``). The same children also report the ``tracemalloc`` peak of the operation,
which counts numpy's array allocations exactly (numpy registers them with tracemalloc) but
nothing allocated outside Python's allocators; ``mem_ratio`` is the RSS figure (target <= 2.0),
``mem_ratio_tracemalloc`` the other. Host backend only for memory (a GPU's memory is not in
the RSS; use the CuPy memory pool there).

Usage::

    python benchmarks/gradient_cost.py                              # the target sizes
    python benchmarks/gradient_cost.py --sizes 511x255,64x64x64 --repeats 5
    python benchmarks/gradient_cost.py --no-memory --threads 2

One JSON line per size on stdout (progress on stderr).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc

import numpy as np
from mpi4py import MPI

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import emit, log, machine, parse_sizes, reset_peak, status_kib  # noqa: E402

from hpcinv.backend import make_backend  # noqa: E402
from hpcinv.inverse import AdjointGradient, Observations  # noqa: E402
from hpcinv.model.geothermal import workshop_points  # noqa: E402
from hpcinv.model.problems import geothermal2d, geothermal3d  # noqa: E402
from hpcinv.solvers import DarcySolver, PTParams  # noqa: E402


def make_problem(shape, comm=MPI.COMM_SELF):
    return (geothermal2d if len(shape) == 2 else geothermal3d)(shape, comm=comm)


def problem_name(shape) -> str:
    return "geothermal2d" if len(shape) == 2 else "geothermal3d"


def setup(shape, values):
    """``(problem at K = 1, observations with values, logK = 0)``: what a caller holds."""
    prob = make_problem(shape)
    d = prob.grid.decomp
    prob.K[d.owned()] = 1.0
    obs = Observations(prob.grid, workshop_points(len(shape)))
    obs.values = values
    logK = np.zeros(d.padded_shape)
    return prob, obs, logK


# --- memory: one operation in a fresh process ---------------------------------------------------
def child(args):
    """Run one operation (``base``, ``forward`` or ``gradient``) and print its memory."""
    shape = tuple(args.size)
    values = np.load(args.values)
    backend = make_backend("host", threads=args.threads)
    prob, obs, logK = setup(shape, values)
    params = PTParams(maxiter=args.maxiter or None)
    gc.collect()
    reset = reset_peak()
    rss0 = status_kib("VmRSS")
    tracemalloc.start()
    tracemalloc.reset_peak()
    info = {}
    if args._child == "forward":
        res = DarcySolver(prob, backend, params).solve().result
        info = {"iterations": res.iterations, "converged": res.converged}
    elif args._child == "gradient":
        _, _, i = AdjointGradient(prob, obs, backend, params, params)(logK)
        info = {"iterations": i["forward_iterations"] + i["adjoint_iterations"],
                "converged": i["forward_converged"] and i["adjoint_converged"]}
    _, tm_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(json.dumps({"op": args._child, "hwm_reset": reset, "rss_before_kib": rss0,
                      "hwm_kib": status_kib("VmHWM"),
                      "maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                      "tracemalloc_peak_bytes": tm_peak, **info}), flush=True)


def run_child(op, shape, values_file, args) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--_child", op,
           "--size", *map(str, shape), "--values", values_file, "--threads", str(args.threads),
           "--maxiter", str(args.memory_maxiter)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"error: memory child {op} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def memory(shape, values, args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        vf = os.path.join(tmp, "values.npy")
        np.save(vf, values)
        runs = {op: [] for op in ("base", "forward", "gradient")}
        for r in range(args.memory_repeats):
            for op in runs:
                log(f"gradient_cost: memory {'x'.join(map(str, shape))} {op} ({r + 1})")
                runs[op].append(run_child(op, shape, vf, args))
    reset = all(x["hwm_reset"] and x["hwm_kib"] is not None for v in runs.values() for x in v)
    med = statistics.median
    if reset:
        method = "VmHWM - VmRSS before (peak counter reset)"
        cost = {op: med([(x["hwm_kib"] - x["rss_before_kib"]) * 1024 for x in v])
                for op, v in runs.items()}
    else:
        method = "ru_maxrss - ru_maxrss of a setup-only child"
        base = med([x["maxrss_kib"] for x in runs["base"]])
        cost = {op: med([(x["maxrss_kib"] - base) * 1024 for x in v]) for op, v in runs.items()}
    tm = {op: med([x["tracemalloc_peak_bytes"] for x in v]) for op, v in runs.items()}
    field = int(np.prod([n + 2 for n in shape])) * 8        # one padded float64 cell field
    return {"memory_method": method,
            "mem_forward_bytes": cost["forward"], "mem_gradient_bytes": cost["gradient"],
            "mem_ratio": cost["gradient"] / cost["forward"],
            "mem_forward_fields": cost["forward"] / field,
            "mem_gradient_fields": cost["gradient"] / field,
            "mem_base_rss_bytes": cost["base"],
            "mem_forward_tracemalloc_bytes": tm["forward"],
            "mem_gradient_tracemalloc_bytes": tm["gradient"],
            "mem_ratio_tracemalloc": tm["gradient"] / tm["forward"],
            "memory_maxiter": args.memory_maxiter or None,
            "memory_iterations": {op: [x.get("iterations") for x in v]
                                  for op, v in runs.items() if op != "base"}}


# --- time -------------------------------------------------------------------------------------
def timing(shape, args, backend):
    comm = MPI.COMM_SELF
    true = make_problem(shape, comm)
    log(f"gradient_cost: {'x'.join(map(str, shape))} true-model forward solve")
    t0 = time.perf_counter()
    s_true = DarcySolver(true, backend, PTParams()).solve()
    t_true = time.perf_counter() - t0
    obs = Observations(true.grid, workshop_points(len(shape)))
    obs.record(s_true.Pf, backend)
    values = np.array(obs.values)
    del s_true, true
    gc.collect()
    prob, obs, logK = setup(shape, values)
    fwd = DarcySolver(make_problem(shape, comm), backend, PTParams())
    fwd.set_permeability(prob.K)
    G = AdjointGradient(prob, obs, backend, PTParams(), PTParams())

    def forward():
        fwd.set_state()
        t = time.perf_counter()
        res = fwd.solve().result
        return time.perf_counter() - t, res

    def gradient():
        t = time.perf_counter()
        J, g, info = G(logK)
        backend.synchronize()
        return time.perf_counter() - t, (J, info)

    log(f"gradient_cost: {'x'.join(map(str, shape))} warm-up")
    forward()
    gradient()
    tf, tg = [], []
    for r in range(args.repeats):
        log(f"gradient_cost: {'x'.join(map(str, shape))} repeat {r + 1}/{args.repeats}")
        t, res = forward()
        tf.append(t)
        t, (J, info) = gradient()
        tg.append(t)
    fi, ai = info["forward_iterations"], info["adjoint_iterations"]
    return values, {
        "t_forward_s": statistics.median(tf), "t_gradient_s": statistics.median(tg),
        "time_ratio": statistics.median(tg) / statistics.median(tf),
        "time_ratio_min": min(tg) / min(tf),
        "time_ratio_pairs_median": statistics.median(g / f for g, f in zip(tg, tf)),
        "t_forward_samples": tf, "t_gradient_samples": tg,
        "forward_iterations": res.iterations, "gradient_forward_iterations": fi,
        "gradient_adjoint_iterations": ai, "iteration_ratio": (fi + ai) / res.iterations,
        "forward_converged": res.converged,
        "gradient_converged": info["forward_converged"] and info["adjoint_converged"],
        "J": J, "t_true_forward_s": t_true}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="1023x511,128x128x128")
    p.add_argument("--repeats", type=int, default=3, help="timed forward/gradient pairs")
    p.add_argument("--memory-repeats", type=int, default=1,
                   help="fresh processes per operation for the memory figures")
    p.add_argument("--memory-maxiter", type=int, default=0,
                   help="iteration cap of the memory runs (0: converge; memory does not depend "
                        "on the iteration count, so a cap only saves time)")
    p.add_argument("--no-memory", action="store_true")
    p.add_argument("--no-time", action="store_true")
    p.add_argument("--threads", type=int, default=0, help="host threads (0: usable cores)")
    p.add_argument("--_child", choices=("base", "forward", "gradient"), help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, nargs="+", help=argparse.SUPPRESS)
    p.add_argument("--values", help=argparse.SUPPRESS)
    p.add_argument("--maxiter", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if not args.threads:
        args.threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
    if args._child:
        return child(args)
    if MPI.COMM_WORLD.Get_size() > 1:
        raise SystemExit("error: gradient_cost.py runs on one rank (memory is per process)")
    backend = make_backend("host", threads=args.threads)
    for shape in parse_sizes(args.sizes):
        rec = {"benchmark": "gradient_cost", "problem": problem_name(shape), "size": list(shape),
               "ranks": 1, "backend": "host", "threads": args.threads, "dtype": "float64",
               "params": "PTParams() defaults",
               "observations": len(workshop_points(len(shape)))}
        if not args.no_time or not args.no_memory:
            values, t = timing(shape, args, backend) if not args.no_time else (None, {})
            rec.update(t)
        if not args.no_memory:
            if values is None:            # memory only: observations from the true model
                true = make_problem(shape)
                obs = Observations(true.grid, workshop_points(len(shape)))
                obs.record(DarcySolver(true, backend, PTParams()).solve().Pf, backend)
                values = np.array(obs.values)
            rec.update(memory(shape, values, args))
        rec["targets"] = {"time_ratio": 2.2, "mem_ratio": 2.0}
        rec["machine"] = machine()
        emit(rec)


if __name__ == "__main__":
    main()
