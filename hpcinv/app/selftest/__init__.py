"""``hpcinv selftest``: is this machine, under this launcher, ready for hpcinv runs?

Run it first on a new machine, with the launcher and rank layout of your real runs::

    srun -n 8 hpcinv selftest                 # or: mpiexec -n 4 hpcinv selftest
    hpcinv selftest --quick                   # a few seconds
    hpcinv selftest --full --backend cupy     # GPU acceptance run (a few minutes)
    hpcinv selftest --json                    # one JSON object instead of the table

Checks (one table row each; every rank takes part in every check):

``environment``
    per rank: backend (and why ``auto`` did not pick the GPU), device (and PCI bus id on GPUs),
    CuPy/NVRTC/driver versions, MPI library, the CUDA-aware decision and its reason, threads,
    host, node-local rank; the HDF5 output mode a run would use and why (``HPCINV_H5_MODE``,
    parallel h5py). WARN where a GPU is there but CuPy cannot compile or run a kernel on it
    (NVRTC missing: the run falls back to the host backend).
``device-binding``
    GPUs: every rank on its own device (two ranks on one device FAIL unless
    ``--allow-shared-device``); host: SKIP.
``exchange`` (host memory) / ``exchange-staged`` and ``exchange-device`` (device memory)
    a real :class:`~hpcinv.parallel.HaloExchange` of backend buffers on the run's
    decomposition of small 2D and 3D grids (non-periodic, and periodic so that every face of
    every rank, including a 1-rank run, exchanges), float64 and float32: owned cells hold
    ``1 + global linear index``, and every ghost that has a neighbour must hold its
    neighbour's value afterwards. Device buffers are tested where the backend says MPI is
    CUDA-aware, staging through host buffers always.
``forward-2d/3d``, ``gradient-2d/3d``, ``descent-2d/3d``
    the built-in geothermal problems at small sizes: a forward solve (its pressure becomes the
    synthetic observations at the workshop points), the adjoint gradient at K = 1 with
    smoothing, and 3 gradient-descent steps, on all ranks, each BITWISE equal to the same
    computation by rank 0 alone on ``MPI.COMM_SELF`` (gathered global arrays and the misfit
    history compared exactly).
``speed``
    time per APT iteration on a block per rank, ``T_eff = A_eff / t_iter`` per rank
    (``A_eff = (2 D_u + D_k) n_cells sizeof(real)``, ``D_u = ndim + 1``, ``D_k = 2``), the
    exchange's share (the same step on each rank alone, and ``halo.exchange`` alone) and the
    slowest rank. Reported, not judged, except WARN for a rank 10x slower than the median.

``--full`` adds the GPU acceptance checks (host backends run them too, with device-only parts
SKIPped, so CI covers them): ``halo-ordering`` (a deliberately slow kernel writes the field
right before each exchange, on the exchange's stream and on another one; the ghosts must hold
the final values), ``overlap-bitwise`` (forward solves with overlap on and off, bitwise equal
to 1 rank; overlap on/off on a periodic block per rank), ``launch-cost`` (host time per
launch), ``teff`` (T_eff / T_copy at 64^3 to 512^3 in float32 and float64 on GPUs; 64^3 on
the host) and ``pool-memory`` (peak CuPy pool memory of a gradient, in full fields; SKIP on the
host).

Exit status 0 when no check FAILs (WARN and SKIP pass), 1 otherwise. A check that raises is a
FAIL with the one-line reason. Rank 0 prints.

Testing aid: ``HPCINV_SELFTEST_FAULT=<check>`` injects a fault into the checks whose name is
``<check>`` or starts with ``<check>-`` (``exchange`` corrupts one received ghost value on the
last rank before verification; ``forward``, ``gradient``, ``descent`` and ``overlap``
perturb one value of the parallel result before the comparison; any other check raises on the
last rank at its end), so that tests see exit status 1 and the failing check named.
"""
from __future__ import annotations

import os
import time

from .correctness import Chain, check_descent, check_forward, check_gradient
from .environment import check_device_binding, check_environment
from .exchange import _exchange_summary, check_exchange
from .ordering import check_halo_ordering, check_overlap_bitwise
from .report import _jsonable, print_environment, print_speed, print_table, report
from .runner import FAULT_ENV, Result, Runner, Sizes, one_line
from .speed import (_launch_summary, _teff_summary, check_launch_cost, check_pool_memory,
                    check_speed, check_teff, speed_summary)


def add_arguments(p):
    """The options of ``hpcinv selftest`` (argparse subparser ``p``)."""
    p.add_argument("--backend", default="auto", help="auto (GPU if available), host, cupy")
    p.add_argument("--json", action="store_true", help="print one JSON object, not the table")
    p.add_argument("--quick", action="store_true", help="tiny sizes: a few seconds")
    p.add_argument("--full", action="store_true", help="also the GPU acceptance checks "
                   "(halo ordering, overlap, launch cost, T_eff/T_copy, pool memory); with "
                   "--quick at the quick sizes")
    p.add_argument("--allow-shared-device", action="store_true",
                   help="do not FAIL when several ranks share one GPU")


def run_selftest(args) -> int:
    """``hpcinv selftest``: run the checks, print the table (or JSON) on rank 0; exit 0 if
    no check failed, else 1."""
    from mpi4py import MPI

    from ...backend import make_backend
    from ...parallel import decide_cuda_aware
    comm = MPI.COMM_WORLD
    t_start = time.perf_counter()
    bk = make_backend(args.backend, comm=comm)
    decide_cuda_aware(bk)
    if comm.Get_rank() == 0 and bk.fallback_warning:       # stderr: also with --json
        import sys
        print(f"hpcinv: warning: GPU not used, running on the host backend: "
              f"{bk.fallback_reason}", file=sys.stderr, flush=True)
    node = comm.Split_type(MPI.COMM_TYPE_SHARED)      # for the binding report (hosts, devices)
    hosts = comm.allgather(MPI.Get_processor_name())
    mode = "+".join(m for m, on in (("quick", args.quick), ("full", args.full)) if on) \
        or "default"
    sizes = Sizes(args.quick, bk.name == "cupy", comm.Get_size())
    runner = Runner(comm, os.environ.get(FAULT_ENV))
    ctx = {"comm": comm, "backend": bk, "node": node, "sizes": sizes, "args": args,
           "runner": runner, "nodes": len(set(hosts)), "done": set()}
    say = (lambda *a: print(*a, flush=True)) if comm.Get_rank() == 0 and not args.json \
        else (lambda *a: None)
    say(f"hpcinv selftest ({mode}): {comm.Get_size()} rank(s) on {len(set(hosts))} node(s), "
        f"backend {bk.name}")

    runner.run("environment", check_environment, ctx)
    envs = runner.per_rank["environment"]
    if comm.Get_rank() == 0 and not args.json:
        print_environment(envs)
    runner.run("device-binding", check_device_binding, ctx, envs)
    if bk.device_memory:
        runner.run("exchange-staged", check_exchange, ctx, "exchange-staged", False,
                   merge=_exchange_summary("staged via host buffers"))
        if bk.cuda_aware:
            runner.run("exchange-device", check_exchange, ctx, "exchange-device", True,
                       merge=_exchange_summary("device buffers to MPI"))
        else:
            runner.run("exchange-device", lambda: Result(
                "SKIP", f"MPI not CUDA-aware for this run ({bk.cuda_aware_reason})"))
    else:
        runner.run("exchange", check_exchange, ctx, "exchange", None,
                   merge=_exchange_summary("host memory straight to MPI"))

    overlap = "auto"
    ctx["chains"] = {len(s): (Chain(len(s), s, comm, bk, overlap, sizes.smoothing_steps),
                              Chain(len(s), s, MPI.COMM_SELF, bk, False,
                                    sizes.smoothing_steps))
                     for s in sizes.corr}
    for nd in (2, 3):
        runner.run(f"forward-{nd}d", check_forward, ctx, nd)
    for nd in (2, 3):
        runner.run(f"gradient-{nd}d", check_gradient, ctx, nd)
    for nd in (2, 3):
        runner.run(f"descent-{nd}d", check_descent, ctx, nd)
    del ctx["chains"]

    speed = runner.run("speed", check_speed, ctx)
    if speed["status"] == "PASS":
        status, detail = speed_summary(runner.per_rank["speed"])
        speed.update(status=status, detail=one_line(detail))
    if comm.Get_rank() == 0 and not args.json and speed["status"] in ("PASS", "WARN"):
        print_speed(runner.per_rank["speed"])

    if args.full:
        runner.run("halo-ordering", check_halo_ordering, ctx)
        runner.run("overlap-bitwise", check_overlap_bitwise, ctx)
        runner.run("launch-cost", check_launch_cost, ctx, merge=_launch_summary)
        runner.run("teff", check_teff, ctx, merge=_teff_summary)
        runner.run("pool-memory", check_pool_memory, ctx)

    ok = runner.ok()
    wall = time.perf_counter() - t_start
    if comm.Get_rank() == 0:
        if args.json:
            import json
            print(json.dumps(report(runner, envs, mode, bk, ok, wall), default=_jsonable),
                  flush=True)
        else:
            print_table(runner.rows, ok, wall)
    node.Free()
    return 0 if ok else 1
