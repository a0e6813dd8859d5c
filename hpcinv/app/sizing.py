"""``hpcinv info --grid NX,NY[,NZ]``: size a job before submitting it. The per-rank memory a
run of that grid needs at the defaults (or a config's settings), itemised, and the largest cubic
(3D) or square (2D) block per rank that fits the device memory (or the host memory with the
host backend; ``--memory 80GB`` for a GPU that is not here), by :mod:`hpcinv.app.memory`'s
estimate, which the backend's counter checks (``tests/test_memory_count.py``)."""
from __future__ import annotations

from ..config import schema
from ..errors import HpcinvError
from .memory import _fmt, estimate, largest_block
from .memory_budget import host_available


def add_arguments(p):
    """The sizing options of ``hpcinv info``."""
    p.add_argument("--grid", metavar="NX,NY[,NZ]", help="global grid to size: the memory per "
                   "rank at the defaults and the largest block per rank that fits")
    p.add_argument("--memory", metavar="SIZE", help="memory per GPU to size for (e.g. 40GB, "
                   "80GB: 10^9 bytes; 40GiB: 2^30), instead of this machine's")
    p.add_argument("--method", choices=("gd", "lbfgs"), help="optimiser (default: gd)")
    p.add_argument("--dtype", choices=("float64", "float32"), help="solver dtype")
    p.add_argument("--config", metavar="TOML", help="size the run of this config file")


def parse_size(text: str) -> int:
    """Bytes of ``"40GB"``, ``"80 GiB"``, ``"1.5TB"``, ``"123456"``."""
    n = schema.parse_size(text)
    if n is None:
        raise HpcinvError(f"--memory must be a size such as 40GB or 80GiB, got {text!r}")
    return n


def parse_grid(text: str) -> tuple:
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        shape = ()
    if len(shape) not in (2, 3) or min(shape) < 3:
        raise HpcinvError(f"--grid must be NX,NY or NX,NY,NZ (at least 3 cells each), "
                          f"got {text!r}")
    return shape


def sizing_config(args, shape):
    """The resolved config of the sized run: ``--config`` (else the built-in problem of the
    grid's dimension) with the grid, ``--method`` and ``--dtype``."""
    from .. import config as config_mod
    from .resolve import resolved
    data = config_mod.read_toml(args.config) if args.config else {}
    if not args.config:
        data["problem"] = {"name": f"geothermal{len(shape)}d"}
    data["grid"] = {**data.get("grid", {}), **dict(zip(("nx", "ny", "nz"), shape))}
    if args.method:
        data["inversion"] = {**data.get("inversion", {}), "method": args.method}
    if args.dtype:
        data["solver"] = {**data.get("solver", {}), "dtype": args.dtype}
    cfg = config_mod.from_toml(data, args.config) if args.config else \
        config_mod.from_dict(data)
    return resolved(cfg)


def sizing_lines(args, backend, ranks: int, node_ranks: int = 1) -> list[str]:
    """The lines ``hpcinv info --grid`` prints: the need per rank, the memory sized for, the
    largest block per rank that fits."""
    shape = parse_grid(args.grid)
    cfg = sizing_config(args, shape)
    am, fm = cfg.inversion.adjoint_memory, cfg.inversion.forward_memory
    device = args.memory is not None or bool(backend.device_memory)
    if args.memory is not None:
        avail, where = parse_size(args.memory), f"{args.memory} per GPU (--memory)"
    elif backend.device_memory:
        free = backend.free_memory()
        avail = None if free is None else free // max(1, backend.ranks_per_device())
        where = f"free memory of this rank's GPU ({backend.ranks_per_device()} rank(s) on it)"
    else:
        host = host_available()
        avail = None if host is None else host // max(1, node_ranks)
        where = f"available host memory / {node_ranks} rank(s) on this node"
    est = estimate(cfg, shape, ranks, "inversion", am, fm, device)
    need = est.device_bytes if device else est.host_bytes
    nd, method = len(shape), cfg.inversion.method
    what = (f"{method}, {cfg.solver.dtype}, adjoint_memory {am}, forward_memory {fm}"
            + (f", lbfgs_memory {cfg.inversion.lbfgs_memory}" if method == "lbfgs" else ""))
    items = ", ".join(f"{k} {v:.3g}" for k, v in est.items.items())
    lines = [f"sizing             {'x'.join(map(str, shape))} on {ranks} rank(s): {what}",
             f"need per rank      {est.fields:.4g} {cfg.solver.dtype} fields per cell x "
             f"{est.cells} cells = {_fmt(est.device_bytes)} of backend arrays"
             + (f" (device memory); host {_fmt(est.host_bytes)}" if device
                else f"; with {est.host_fields} float64 host fields per cell, "
                     f"{_fmt(need)} of host memory in all"),
             f"fields per cell    {items}"]
    if avail is None:
        lines.append(f"largest block      unknown ({where} unknown; say --memory SIZE)")
        return lines
    n = largest_block(cfg, nd, avail, "inversion", am, fm, device)
    side = "x".join([str(n)] * nd)
    lines += [f"memory per rank    {_fmt(avail)}: {where}",
              f"largest block      {side} cells per rank ({'cubic' if nd == 3 else 'square'}"
              f"; {'fits' if need <= avail else 'the grid above does NOT fit'} at "
              f"{ranks} rank(s))"]
    return lines
