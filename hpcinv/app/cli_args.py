"""The command line's arguments: the ``hpcinv`` parser with its subcommands and options, its
errors as one line (:class:`UsageError`), and the options' overrides of a config
(:func:`apply_overrides`). :mod:`hpcinv.app.cli` runs the commands."""
from __future__ import annotations

import argparse

from ..config import validate_config
from ..errors import HpcinvError
from .sizing import add_arguments as add_sizing_arguments


class UsageError(HpcinvError):
    """A command line argparse rejects (exit status 2, one line like every input error)."""


class _Parser(argparse.ArgumentParser):
    """argparse with its errors as one ``hpcinv: error: ...`` line (no usage block; the
    subcommands' parsers are of this class too)."""

    def error(self, message):
        raise UsageError(f"{message} (see {self.prog} --help)")


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="hpcinv", description="Distributed APT Darcy solver and "
                "adjoint-based permeability inversion.")
    sub = p.add_subparsers(dest="command", required=True)
    f = sub.add_parser("forward", help="solve steady Darcy flow and write DIR/fields.h5")
    _common_run_options(f)
    g = sub.add_parser("gradient", help="misfit gradient dJ/dlogK at K = 1 for synthetic "
                       "observations of the true model; writes DIR/gradient.h5")
    _common_run_options(g)
    v = sub.add_parser("invert", help="invert log K from observations; writes a run directory")
    _common_run_options(v)
    _inversion_options(v)
    d = sub.add_parser("demo", help="the JuliaCon 2023 workshop inversion (geothermal2d, 50 "
                       "gradient-descent iterations, smoothing); no file needed")
    _common_run_options(d)
    _inversion_options(d)
    pl = sub.add_parser("plot", help="(re)draw the figures of a finished or running run")
    pl.add_argument("run_dir", help="run directory")
    i = sub.add_parser("info", help="backend, device, MPI library, CUDA-awareness, rank layout")
    i.add_argument("--backend", default="auto")
    i.add_argument("--problem", default="geothermal2d", help="problem whose rank layout to show")
    add_sizing_arguments(i)          # --grid, --memory, ...: app/sizing.py
    st = sub.add_parser("selftest", help="check this machine under your launcher (environment, "
                        "halo exchange, bitwise parallel results, speed): a PASS/FAIL table")
    from .selftest import add_arguments
    add_arguments(st)
    return p


def _common_run_options(p):
    p.add_argument("config", nargs="?", help="TOML config file (optional)")
    p.add_argument("--problem", help="built-in problem: geothermal2d (default), geothermal3d")
    for ax in "xyz":
        p.add_argument(f"--n{ax}", type=int, help=f"global cells along {ax}")
    p.add_argument("--backend", help="auto (GPU if available), host, cupy")
    p.add_argument("--dims", help="ranks per dimension, e.g. 2,2 (0 = automatic)")
    p.add_argument("--tol", type=float, help="residual tolerance (max|RPf|/max|Qf|)")
    p.add_argument("--maxiter", type=int, help="iteration budget")
    p.add_argument("--cfl", type=float, help="Courant number of the APT iteration")
    p.add_argument("--re", type=float, help="numerical Reynolds number of the APT iteration")
    p.add_argument("--ncheck", type=int, help="check the residual every N iterations")
    p.add_argument("--no-overlap", action="store_true", help="blocking halo exchange")
    p.add_argument("--output", "-o", help="output directory (default: the config's output.dir)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress lines")
    p.add_argument("--force-unlock", action="store_true", help="take over the output "
                   "directory's lock (DIR/.hpcinv.lock) even if its run looks alive")
    p.add_argument("--overwrite", action="store_true", help="replace the previous run of the "
                   "same command in the output directory (removes only the files it wrote)")


def _inversion_options(p):
    p.add_argument("--restart", metavar="DIR", help="continue the run in DIR from its checkpoint "
                   "(its config.toml is used; on any number of ranks)")
    p.add_argument("--iterations", type=int, help="outer iterations (inversion.iterations)")
    p.add_argument("--method", help="gd (gradient descent) or lbfgs")
    p.add_argument("--json", action="store_true", help="progress as JSON lines")


def apply_overrides(cfg, args):
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
    for key in ("iterations", "method"):          # invert and demo only
        if getattr(args, key, None) is not None:
            setattr(cfg.inversion, key, getattr(args, key))
    return validate_config(cfg)
