"""The memory budget that chooses the warm starts (issue 20, ``inversion.memory``).

An inversion's warm starts keep earlier solutions: the adjoint subspace (``adjoint_memory``
vectors), the forward subspace (``forward_memory``) and the two kept solutions (the plain warm
starts). They save most of the inner iterations, and the adjoint subspace saves more than the
forward one (docs/performance.md), but each vector is a field per cell. Given the bytes one
rank may use (:func:`budget_bytes`: a size, a fraction of the memory available per rank, or
``"auto"``, :data:`AUTO_FRACTION` of it; the device's free memory with a GPU backend, the
node's available host memory per rank with the host backend), :func:`choose` keeps the
largest warm starts that fit by :mod:`hpcinv.app.memory`'s itemised estimate, giving up the
forward subspace first, then the adjoint subspace (down to one solution: the plain warm
starts' memory, :func:`ladder`),
then the warm-start copies themselves (``warm_start = false``), so that a run at the edge of
the memory completes; when not even that fits, one line (:class:`~hpcinv.errors.ConfigError`,
exit 2, as the memory check says it). A size the user gave (a value other than the default of
:mod:`hpcinv.app.resolve`) is kept: if it does not fit the budget, the header says so.

:func:`checked` is the assembly's one call: the choice, then the memory check
(:func:`check_memory`: the run against what the node and the GPU have free) with it; the choice and its reason end the run header's memory line.
The choice is recorded in the checkpoints (the config fingerprint is that of the config the
run was built with, the chosen sizes in it), and a restart re-uses it (:func:`recorded`) rather than deciding again
from the free memory of the machine it restarts on, so restarts stay bitwise.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
from dataclasses import dataclass

from mpi4py import MPI

from ..config.schema import memory_budget
from ..errors import ConfigError
from ..io import checkpoint as ckpt
from .memory import _fmt, estimate
from .resolve import ADJOINT_MEMORY, FORWARD_MEMORY, adaptive

#: The share of the memory available per rank that ``inversion.memory = "auto"`` uses: the
#: estimate is within 10 % of the measured high-water mark, and the CuPy pool fragments.
AUTO_FRACTION = 0.85
#: The ``[inversion]`` keys a choice sets.
KEYS = ("adjoint_memory", "forward_memory", "warm_start", "forward_prediction")


@dataclass(frozen=True)
class Choice:
    """The warm starts of a run and why. ``need``: bytes per rank of the choice (estimate);
    ``budget``: bytes per rank allowed (``None``: no budget); ``reason``: the header's text."""
    adjoint_memory: int
    forward_memory: int
    warm_start: bool
    need: int
    budget: int | None
    reason: str

    def text(self) -> str:
        what = (f"adjoint_memory {self.adjoint_memory}, forward_memory {self.forward_memory}"
                if self.warm_start else "no warm starts (warm_start = false)")
        return f"memory budget: {what} ({self.reason})"


def defaults(cfg) -> tuple[int, int]:
    """``(adjoint_memory, forward_memory)`` that :mod:`hpcinv.app.resolve` gives when unset."""
    auto = adaptive(cfg) and cfg.inversion.warm_start
    return (ADJOINT_MEMORY if auto else 0,
            FORWARD_MEMORY if auto and cfg.solver.method == "apt" else 0)


def with_sizes(cfg, adjoint_memory: int, forward_memory: int, warm_start: bool = True):
    """A copy of the resolved ``cfg`` with these warm starts (no warm starts: no prediction)."""
    out = copy.deepcopy(cfg)
    i = out.inversion
    i.adjoint_memory, i.forward_memory = int(adjoint_memory), int(forward_memory)
    if not warm_start:
        i.warm_start, i.forward_prediction = False, 0
    return out


def ladder(cfg) -> list[tuple[int, int, bool]]:
    """The candidates ``(adjoint_memory, forward_memory, warm_start)``, most memory first: the
    forward subspace shrinks first, then the adjoint one, then the warm starts go; sizes the
    user set (other than :func:`defaults`) stay. The adjoint subspace stops at one solution:
    that is the kept adjoint solution (its newest is), so it costs what the rescaled previous
    solution (``adjoint_memory = 0``) costs, and its fit of one solution is that rescaling."""
    i = cfg.inversion
    am, fm = i.adjoint_memory, i.forward_memory
    if not i.warm_start:
        return [(0, 0, False)]
    da, df = defaults(cfg)
    fixed_a, fixed_f = am != da, fm != df
    out = [(am, f, True) for f in range(fm, (fm if fixed_f else 0) - 1, -1)]
    f_min = out[-1][1]
    out += [(a, f_min, True) for a in range(am - 1, (am if fixed_a else 1) - 1, -1)]
    if not (fixed_a or fixed_f):
        out.append((0, 0, False))
    return out


def need_bytes(cfg, shape, size: int, device_memory: bool) -> int:
    """Bytes per rank of an inversion of ``cfg`` (device memory where the backend's arrays
    live there, else host memory), by :func:`hpcinv.app.memory.estimate`."""
    i = cfg.inversion
    e = estimate(cfg, shape, size, "inversion", i.adjoint_memory, i.forward_memory,
                 device_memory)
    return e.device_bytes if device_memory else e.host_bytes


def budget_bytes(value, available: int | None) -> tuple[int | None, str]:
    """``(bytes per rank, what they are)`` of ``inversion.memory = value`` given the bytes
    ``available`` per rank (``None``: unknown); ``None`` bytes: no budget."""
    kind, amount = memory_budget(value)
    if kind == "off":
        return None, "inversion.memory = \"off\""
    if kind == "bytes":
        return int(amount), f"inversion.memory = {value!r}: {_fmt(amount)} per rank"
    if available is None:
        return None, "the memory available is unknown"
    share = AUTO_FRACTION if kind == "auto" else amount
    label = "auto" if kind == "auto" else f"{amount:g}"
    return int(available * share), (f"inversion.memory = {label}: {share:.0%} of "
                                    f"{_fmt(available)} available per rank")


def choose(cfg, shape, size: int, device_memory: bool, budget: int | None,
           what: str = "") -> Choice:
    """The first candidate of :func:`ladder` whose need fits ``budget`` bytes per rank
    (``None``: the first). Raises a one-line :class:`ConfigError` when not even the smallest
    fits, unless the user's sizes are what does not fit (they win; the reason says so)."""
    cands = ladder(cfg)
    for am, fm, ws in cands:
        need = need_bytes(with_sizes(cfg, am, fm, ws), shape, size, device_memory)
        if budget is None or need <= budget:
            kept = (am, fm, ws) == cands[0]
            why = (what + ("" if budget is None else f"; needs {_fmt(need)}")
                   + ("" if kept or budget is None else ", the largest warm starts that fit"))
            return Choice(am, fm, ws, need, budget, why)
    am, fm, ws = cands[-1]
    if ws:                              # the user's sizes: they win over the budget
        return Choice(am, fm, ws, need, budget, f"{what}; the sizes set in [inversion] need "
                      f"{_fmt(need)} and do NOT fit the budget: kept as set")
    grid = "x".join(map(str, shape))
    raise ConfigError(f"the {grid} grid needs {_fmt(need)} per rank without any warm start, "
                      f"more than the memory budget ({what}); use {smaller_grid(shape)}, more "
                      f"ranks or a larger inversion.memory")


def smaller_grid(shape) -> str:
    """The advice's words for a grid too large: the config keys that set it."""
    return f"a smaller grid ({', '.join(f'grid.n{a}' for a in 'xyz'[:len(shape)])})"


def available_per_rank(backend, comm) -> int | None:
    """Bytes one rank may use, the smallest over ``comm``'s ranks: the free memory of its GPU
    over the ranks sharing it, or the node's available host memory over the node's ranks
    (``None``: unknown on some rank). Collective."""
    if backend.device_memory:
        free = backend.free_memory()
        mine = None if free is None else free // max(1, backend.ranks_per_device())
    else:
        node = comm.Split_type(MPI.COMM_TYPE_SHARED)
        ranks = node.Get_size()
        node.Free()
        host = host_available()
        mine = None if host is None else host // ranks
    every = comm.allgather(mine)
    return None if any(v is None for v in every) else min(every)


def recorded(directory, comm) -> dict | None:
    """The warm-start sizes a checkpoint of ``directory`` was written with (``{key: value}`` of
    :data:`KEYS`; ``None``: no checkpoint, or one from before the budget). Collective."""
    def read():
        for name in (ckpt.CHECKPOINT, ckpt.PREVIOUS):
            try:
                with ckpt._h5py().File(f"{directory}/{name}", "r") as f:
                    saved = json.loads(ckpt.canonical(f.attrs["config_canonical"]))
                return {k: saved[f"inversion.{k}"] for k in KEYS if f"inversion.{k}" in saved}
            except (OSError, KeyError, ValueError):
                continue
        return None
    found = read() if comm.Get_rank() == 0 and ckpt.exists(directory) else None
    found = comm.bcast(found, root=0)
    return found if found and {"adjoint_memory", "forward_memory"} <= set(found) else None


def decide(cfg, shape, comm, backend) -> Choice:
    """The choice of an inversion of the resolved ``cfg`` on its grid ``shape``, on ``comm``
    with ``backend``: the one recorded in the run directory's checkpoint, else by the budget.
    Collective."""
    size, dev = comm.Get_size(), bool(backend.device_memory)
    rec = recorded(cfg.output.dir, comm)
    if rec is not None:
        ws = bool(rec.get("warm_start", True))
        am, fm = int(rec["adjoint_memory"]), int(rec["forward_memory"])
        need = need_bytes(with_sizes(cfg, am, fm, ws), shape, size, dev)
        return Choice(am, fm, ws, need, None, "recorded in the checkpoint, re-used")
    kind, _ = memory_budget(cfg.inversion.memory)
    avail = None if kind in ("off", "bytes") else available_per_rank(backend, comm)
    budget, what = budget_bytes(cfg.inversion.memory, avail)
    return choose(cfg, shape, size, dev, budget, what)


def checked(cfg, shape, comm, backend, kind: str):
    """``(cfg, estimate)``: the resolved ``cfg`` (on its grid ``shape``) with the warm starts
    the budget chose (an inversion; a forward run or one gradient has none to choose), then the
    memory check of :func:`check_memory` with them; the estimate's note is the choice."""
    note = ""
    if kind == "inversion":
        choice = decide(cfg, shape, comm, backend)
        cfg = with_sizes(cfg, choice.adjoint_memory, choice.forward_memory, choice.warm_start)
        note = choice.text()
    i = cfg.inversion
    est = check_memory(cfg, shape, comm, backend, kind, i.adjoint_memory, i.forward_memory)
    return cfg, dataclasses.replace(est, note=note) if note else est


def host_available() -> int | None:
    """Bytes of host memory available to this process's node: ``MemAvailable`` of
    ``/proc/meminfo``, capped by a cgroup v2 memory limit (a batch job's); ``None``: unknown."""
    found = []
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    try:
        with open("/proc/self/cgroup") as fh:
            path = next((ln.strip()[3:] for ln in fh if ln.startswith("0::")), None)
        if path is not None:
            base = os.path.join("/sys/fs/cgroup", path.lstrip("/"))
            with open(os.path.join(base, "memory.max")) as fh:
                limit = fh.read().strip()
            if limit != "max":
                with open(os.path.join(base, "memory.current")) as fh:
                    found.append(max(int(limit) - int(fh.read()), 0))
    except (OSError, ValueError):
        pass
    return min(found) if found else None


def check_memory(cfg, shape, comm, backend, kind: str, adjoint_memory: int = 0,
                 forward_memory: int = 0):
    """Raise a one-line :class:`ConfigError` (on every rank of ``comm``) when the run of ``cfg``
    on the grid ``shape`` needs more memory than the node (host) or the GPU (device) has free;
    else return the estimate (:class:`Estimate`). Collective; nothing is allocated."""
    size = comm.Get_size()
    est = estimate(cfg, shape, size, kind, adjoint_memory, forward_memory,
                   bool(backend.device_memory))
    nd = math.ceil(est.fields - 1e-9)
    dev_bytes, host_bytes = est.device_bytes, est.host_bytes
    node = comm.Split_type(MPI.COMM_TYPE_SHARED)
    node_ranks = node.Get_size()
    node.Free()
    grid = "x".join(map(str, shape))
    smaller = smaller_grid(shape)
    msg = None
    avail = host_available()
    if avail is not None and host_bytes * node_ranks > avail:
        msg = (f"the {grid} grid needs about {_fmt(host_bytes * node_ranks)} of host memory on "
               f"this node ({node_ranks} rank(s) x {_fmt(host_bytes)}), {_fmt(avail)} available"
               f"; use {smaller} or spread the run over more nodes")
    free = backend.free_memory() if backend.device_memory else None
    if msg is None and free is not None:
        sharing = backend.ranks_per_device()
        if dev_bytes * sharing > free:
            msg = (f"the {grid} grid needs about {_fmt(dev_bytes * sharing)} of GPU memory "
                   f"({sharing} rank(s) on this GPU x {_fmt(dev_bytes)}: {nd} {cfg.solver.dtype} "
                   f"fields per cell), {_fmt(free)} free; use {smaller} or more GPUs")
    if size > 1:
        msg = next((m for m in comm.allgather(msg) if m is not None), None)
    if msg is not None:
        raise ConfigError(msg)
    return est
