"""Helpers shared by the benchmark scripts: machine description, size parsing, JSON output."""
from __future__ import annotations

import json
import os
import platform
import socket
import sys


def cpu_model() -> str:
    """The CPU model name (``/proc/cpuinfo``; ``platform.processor()`` elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict:
    """Hostname, CPU model, logical cores, cores usable by this process, load average."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    return {"hostname": socket.gethostname(), "cpu": cpu_model(), "cores": os.cpu_count(),
            "cores_usable": usable, "loadavg": load, "python": platform.python_version()}


def node_cpus(node_comm) -> int:
    """CPUs the ranks of one node may run on together: the union of their affinity masks
    (``node_comm``: the node's ranks, ``Split_type(COMM_TYPE_SHARED)``; collective).

    This, not one process's own mask, is what ranks x threads on the node must not exceed: under
    ``srun --cpu-bind=cores`` each rank sees only its own cores, so its mask alone would call
    every multi-rank run oversubscribed; ranks that all share one small mask are, correctly.
    Falls back to ``SLURM_CPUS_ON_NODE`` or ``os.cpu_count()`` where affinity is unknown."""
    if hasattr(os, "sched_getaffinity"):
        mine = sorted(os.sched_getaffinity(0))
        return len(set().union(*node_comm.allgather(mine)))
    env = os.environ.get("SLURM_CPUS_ON_NODE", "")
    return int(env) if env.isdigit() and int(env) > 0 else (os.cpu_count() or 1)


def oversubscribed(backend_name: str, threads, ranks_per_node: int, cpus_on_node: int) -> bool:
    """Whether host-backend ranks x threads exceed the node's CPUs (never for GPU backends)."""
    return bool(backend_name == "host" and threads and ranks_per_node * threads > cpus_on_node)


def parse_sizes(text: str):
    """``"2048x2048,192x192x192"`` -> ``[(2048, 2048), (192, 192, 192)]``."""
    sizes = []
    for item in text.split(","):
        item = item.strip().lower()
        if not item:
            continue
        try:
            shape = tuple(int(v) for v in item.split("x"))
        except ValueError:
            raise SystemExit(f"error: bad size {item!r} (expected NXxNY or NXxNYxNZ)")
        if len(shape) not in (2, 3) or min(shape) < 3:
            raise SystemExit(f"error: bad size {item!r} (2 or 3 extents, each >= 3)")
        sizes.append(shape)
    return sizes


def emit(record: dict, out: str | None = None):
    """Print one measurement as one JSON line (flushed at once); with ``out``, append the line
    to that file too."""
    line = json.dumps(record, sort_keys=False)
    print(line, flush=True)
    if out:
        with open(out, "a") as f:
            f.write(line + "\n")


def log(msg: str):
    print(msg, file=sys.stderr, flush=True)


def timed(fn, n, comm, sync):
    """Seconds per call of ``fn`` over ``n`` calls; the slowest rank's time (one MPI MAX)."""
    import time

    from mpi4py import MPI
    comm.Barrier()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    sync()
    dt = (time.perf_counter() - t0) / n
    return comm.allreduce(dt, op=MPI.MAX)


# --- memory of this process (KiB, Linux /proc) ----------------------------------------------
def status_kib(field: str) -> int | None:
    """A field of ``/proc/self/status`` in KiB (``VmRSS``, ``VmHWM``), ``None`` if unreadable."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))
    except (OSError, StopIteration):
        return None


def reset_peak() -> bool:
    """Reset VmHWM to the current RSS (``clear_refs`` 5, Linux >= 4.0); False if not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def kernel_bench_parser(doc: str, default_sizes: str):
    """An ``argparse`` parser (description: the first paragraph of ``doc``) with the options of
    the kernel benchmarks: ``--sizes``, ``--dtype``, ``--backend``, ``--threads``."""
    import argparse
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default=default_sizes,
                   help=f"comma-separated global grid sizes (default {default_sizes})")
    p.add_argument("--dtype", default="float64", choices=("float64", "float32"))
    p.add_argument("--backend", default="host", choices=("auto", "host", "cupy"))
    p.add_argument("--threads", type=int, default=None,
                   help="host threads per rank (default: usable cores / ranks per node)")
    return p


def node_backend(args, comm=None):
    """The compute backend of this rank from ``args.backend`` and ``args.threads``, told its
    node-local rank and rank count (GPU choice, threads per rank)."""
    from mpi4py import MPI

    from hpcinv.backend import make_backend
    return make_backend(args.backend, comm=comm or MPI.COMM_WORLD, threads=args.threads)
