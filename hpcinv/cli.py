"""Command line: ``hpcinv forward|info`` (also ``python -m hpcinv``).

Runs plainly or under ``mpiexec``/``srun``; only rank 0 prints. Bad input (config, grid, ranks,
backend) ends with a one-line ``hpcinv: error: ...`` on stderr and exit status 2.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .errors import HpcinvError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hpcinv", description="Distributed APT Darcy solver and "
                                "adjoint-based permeability inversion.")
    sub = p.add_subparsers(dest="command", required=True)
    f = sub.add_parser("forward", help="solve steady Darcy flow and write DIR/fields.h5")
    f.add_argument("config", nargs="?", help="TOML config file (optional)")
    f.add_argument("--problem", help="built-in problem: geothermal2d (default), geothermal3d")
    for ax in "xyz":
        f.add_argument(f"--n{ax}", type=int, help=f"global cells along {ax}")
    f.add_argument("--backend", help="auto (GPU if available), host, cupy")
    f.add_argument("--dims", help="ranks per dimension, e.g. 2,2 (0 = automatic)")
    f.add_argument("--tol", type=float, help="residual tolerance (max|RPf|/max|Qf|)")
    f.add_argument("--maxiter", type=int, help="iteration budget")
    f.add_argument("--cfl", type=float, help="Courant number of the APT iteration")
    f.add_argument("--re", type=float, help="numerical Reynolds number of the APT iteration")
    f.add_argument("--ncheck", type=int, help="check the residual every N iterations")
    f.add_argument("--no-overlap", action="store_true", help="blocking halo exchange")
    f.add_argument("--output", "-o", help="output directory (default: the config's output.dir)")
    f.add_argument("--quiet", "-q", action="store_true", help="no progress lines")
    i = sub.add_parser("info", help="backend, device, MPI library, CUDA-awareness, rank layout")
    i.add_argument("--backend", default="auto")
    i.add_argument("--problem", default="geothermal2d", help="problem whose rank layout to show")
    return p


def _rank0():
    from mpi4py import MPI
    return MPI.COMM_WORLD.Get_rank() == 0


def say(*args, **kw):
    """Print on rank 0 only (flushed: progress must show up under srun)."""
    if _rank0():
        print(*args, **kw, flush=True)


def _apply_overrides(cfg, args):
    if args.problem:
        cfg.problem.name = args.problem
    for ax in "xyz":
        v = getattr(args, f"n{ax}")
        if v is not None:
            setattr(cfg.grid, f"n{ax}", v)
    if args.backend:
        cfg.parallel.backend = args.backend
    if args.dims:
        try:
            cfg.parallel.dims = [int(d) for d in args.dims.split(",")]
        except ValueError:
            raise HpcinvError(f"--dims must be comma-separated integers, got {args.dims!r}")
    for key in ("tol", "maxiter", "cfl", "re", "ncheck"):
        v = getattr(args, key)
        if v is not None:
            setattr(cfg.solver, key, v)
    if args.no_overlap:
        cfg.parallel.overlap = False
    if args.output:
        cfg.output.dir = args.output
    return cfg.validate()


def make_solver(cfg):
    """Problem, backend and :class:`~hpcinv.solvers.DarcySolver` for a validated config."""
    from mpi4py import MPI

    from . import problems
    from .backend import make_backend
    from .solvers import DarcySolver
    world = MPI.COMM_WORLD
    node = world.Split_type(MPI.COMM_TYPE_SHARED)
    backend = make_backend(cfg.parallel.backend, local_rank=node.Get_rank(),
                           local_size=node.Get_size(), threads=cfg.parallel.threads or None)
    node.Free()
    shape = cfg.grid.shape(problems.DEFAULT_SHAPES[cfg.problem.name])
    problem = problems.build(cfg.problem.name, shape, comm=world, dims=cfg.parallel.dims,
                             k_background=cfg.problem.k_background,
                             k_barrier=cfg.problem.k_barrier)
    aware = None if cfg.parallel.cuda_aware == "auto" else cfg.parallel.cuda_aware
    return DarcySolver(problem, backend, cfg.pt_params(), overlap=cfg.parallel.overlap,
                       dtype=cfg.solver.dtype, cuda_aware=aware)


class Progress:
    """Rank-0 progress lines, at most one per ``every`` seconds (plus the last)."""

    def __init__(self, what: str, maxiter: int, quiet: bool, every: float = 1.0):
        self.what, self.maxiter, self.quiet, self.every = what, maxiter, quiet, every
        self._last = -1e30

    def __call__(self, it, err, elapsed):
        now = time.perf_counter()
        if self.quiet or now - self._last < self.every:
            return
        self._last = now
        say(f"{self.what:8s} iter {it:8d}  residual {err:.3e}  elapsed {elapsed:8.2f} s")


def cmd_forward(args) -> int:
    from . import config as config_mod
    from .io import write_fields
    cfg = config_mod.load(args.config) if args.config else config_mod.Config()
    cfg = _apply_overrides(cfg, args)
    solver = make_solver(cfg)
    d, g = solver.decomp, solver.grid
    say(f"hpcinv forward: {cfg.problem.name} {'x'.join(map(str, g.shape))} cells on {d.size} "
        f"rank(s) {'x'.join(map(str, d.dims))}, backend {solver.backend.name}, "
        f"cfl {solver.params.cfl:.4g}, Re {solver.params.re:.4g}, tol {solver.params.tol:g}")
    t0 = time.perf_counter()
    state = solver.solve(progress=Progress("forward", solver.params.maxiter, args.quiet))
    wall = time.perf_counter() - t0
    out = Path(cfg.output.dir)
    _record_resolved(cfg, solver)
    path = write_fields(out / "fields.h5", solver, state, {"wall_time": wall})
    if d.rank == 0:
        (out / "config.toml").write_text(config_mod.dumps(cfg))
    r = state.result
    say(f"{'converged' if r.converged else 'NOT converged'} after {r.iterations} iterations "
        f"(iter/nx {r.iterations / g.shape[0]:.2f}), residual {r.residual:.3e}, "
        f"{wall:.2f} s; wrote {path}")
    if not r.converged:
        say(f"hpcinv: warning: residual {r.residual:.3e} above tol {solver.params.tol:g}; "
            "raise solver.maxiter", file=sys.stderr)
        return 1
    return 0


def _record_resolved(cfg, solver):
    """Write the grid and solver values the run used (defaults resolved) into the config;
    dims stay as given so the config also runs on another rank count."""
    for a, n in zip("xyz", solver.grid.shape):
        setattr(cfg.grid, f"n{a}", n)
    cfg.solver.cfl, cfg.solver.maxiter = solver.params.cfl, solver.params.maxiter


def cmd_info(args) -> int:
    from mpi4py import MPI

    from . import problems
    from .backend import make_backend
    from .parallel import Decomposition, cuda_aware_mpi
    world = MPI.COMM_WORLD
    node = world.Split_type(MPI.COMM_TYPE_SHARED)
    backend = make_backend(args.backend, local_rank=node.Get_rank(), local_size=node.Get_size())
    aware, why = cuda_aware_mpi()
    shape = problems.DEFAULT_SHAPES.get(args.problem)
    if shape is None:
        problems.build(args.problem)   # raises the one-line error with a hint
    decomp = Decomposition(shape, world)
    mine = {"rank": world.Get_rank(), "node_rank": node.Get_rank(),
            "host": MPI.Get_processor_name(), **backend.describe(),
            "coords": list(decomp.coords), "local_shape": list(decomp.local_shape)}
    everyone = world.gather(mine, root=0)
    if world.Get_rank() == 0:
        import mpi4py
        import numpy
        lib = MPI.Get_library_version().strip().splitlines()[0]
        summary = {"hpcinv": _version(), "python": sys.version.split()[0],
                   "numpy": numpy.__version__, "mpi4py": mpi4py.__version__,
                   "mpi_library": lib, "mpi_standard": "%d.%d" % MPI.Get_version(),
                   "cuda_aware_mpi": aware, "cuda_aware_reason": why,
                   "ranks": world.Get_size(), "dims": list(decomp.dims),
                   "example_problem": args.problem, "example_shape": list(shape)}
        for k, v in summary.items():
            print(f"{k:18s} {v}")
        print("per rank:")
        for r in everyone:
            print("  " + json.dumps(r))
    node.Free()
    return 0


def _version():
    try:
        from importlib.metadata import version
        return version("hpcinv")
    except Exception:
        return "unknown"


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        code = {"forward": cmd_forward, "info": cmd_info}[args.command](args)
    except HpcinvError as exc:
        if _rank0():
            print(f"hpcinv: error: {exc}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception:
        from mpi4py import MPI
        if MPI.COMM_WORLD.Get_size() > 1:     # an error on one rank must not hang the others
            import traceback
            traceback.print_exc()
            sys.stderr.flush()
            MPI.COMM_WORLD.Abort(1)
        raise
    return code


if __name__ == "__main__":
    sys.exit(main())
