"""Command line: ``hpcinv forward|gradient|invert|demo|plot|info|selftest`` (also
``python -m hpcinv``).

Runs plainly or under ``mpiexec``/``srun``; only rank 0 prints. Bad input (config, grid, ranks,
backend, an unusable output directory) ends with a one-line ``hpcinv: error: ...`` on stderr and
exit status 2; the other exit statuses (1 not converged, 3 SIGTERM, 4 I/O error, 5 output
directory locked by another run, 130 SIGINT) are listed in the README. The run commands handle
SIGTERM/SIGINT from their first line on (:mod:`hpcinv.app.interrupt`) and claim their output
directory before any work (:mod:`hpcinv.app.ownership`).
"""
from __future__ import annotations

import contextlib
import re
import sys
import time
from pathlib import Path

from ..errors import HpcinvError, Interrupted, OutputDirError
from ..solvers import make_darcy_solver
from .assembly import build, build_forward
from .cli_args import UsageError, apply_overrides, parser
from .console import backend_text, rank0, say, warn_fallback
from .info import cmd_info
from .memory import write_summary
from .progress import CompileNotice, Progress
from .resolve import resolved
from .run import Reporter
from . import interrupt

RUN_COMMANDS = ("forward", "gradient", "invert", "demo")
#: Where a run command writes when neither ``--output`` nor the config file's ``output.dir``
#: says.
DEFAULT_OUTPUT = {"forward": "runs/forward", "gradient": "runs/gradient",
                  "invert": "runs/invert", "demo": "runs/demo"}


def prepare_run(args, command: str):
    """What every run command (``forward``, ``gradient``, ``invert``, ``demo``) does first:
    its config (the file read once, else the defaults, with the command's default output
    directory where the file names none; ``--restart``: the run directory's), the command
    line's overrides, every default resolved (:mod:`hpcinv.app.resolve`; a restart's
    config.toml stays as its run wrote it, the fingerprint's), then the output directory
    claimed for the command before any work (an inversion records its config.toml there now).
    Returns ``(cfg, claim)``; the lock ``DIR/.hpcinv.lock`` is held for the rest of the run
    (released by :func:`main`), the claim (:mod:`hpcinv.app.ownership`) refuses a directory
    that holds another command's or a finished run."""
    from mpi4py import MPI

    from .. import config as config_mod
    from ..io.rundir import acquire_world
    from .ownership import claim
    restart = bool(getattr(args, "restart", None))
    cfg = _config(args, command)                  # the file (or the defaults), read once
    cfg = apply_overrides(cfg, args)              # then the command line's options
    if not restart:
        cfg = resolved(cfg)           # config.toml: the complete problem, rerunnable bitwise
    kind = "invert" if command == "demo" else command
    text = config_mod.dumps(cfg) if kind == "invert" and not restart else None
    acquire_world(cfg.output.dir, force=args.force_unlock, create=not restart)
    return cfg, claim(cfg.output.dir, kind, cfg, MPI.COMM_WORLD, restart=restart,
                      overwrite=args.overwrite or cfg.output.overwrite, config_text=text)


def _config(args, command: str):
    """The config of the run ``args`` asks for, the file parsed once: ``--restart DIR``'s
    ``config.toml`` (checked: one line each for a CONFIG file or another ``--output`` given too,
    and for a directory it cannot continue), else the CONFIG file or the defaults, its
    ``output.dir`` the command's default (:data:`DEFAULT_OUTPUT`) where the file gives none."""
    from .. import config as config_mod
    restart = getattr(args, "restart", None)
    if restart:
        _check_restart_args(args)
        path = Path(restart) / "config.toml"
    elif command == "invert" and not args.config:
        raise UsageError("hpcinv invert needs a CONFIG file (e.g. examples/invert2d.toml) or "
                         "--restart DIR; 'hpcinv demo' runs the built-in demo inversion "
                         "without one")
    else:
        path = args.config
    data = config_mod.read_toml(path) if path else {}
    output = data.get("output", {})
    if not restart and isinstance(output, dict) and "dir" not in output:   # else: one line
        data["output"] = {**output, "dir": DEFAULT_OUTPUT[command]}
    cfg = config_mod.from_toml(data, path) if path else config_mod.from_dict(data)
    if restart:
        cfg.output.dir = restart
    return cfg


def _check_restart_args(args):
    """``--restart DIR`` continues the run in DIR with DIR's config: no CONFIG file, no other
    ``--output``, a directory it can continue."""
    if args.config:
        raise HpcinvError("--restart takes its config from the run directory; "
                          "give no CONFIG file")
    if args.output and Path(args.output).resolve() != Path(args.restart).resolve():
        raise HpcinvError(f"--restart {args.restart} continues that run in its own "
                          f"directory; give no --output {args.output} (to continue "
                          f"elsewhere, copy the directory first and restart the copy)")
    _check_restart_dir(Path(args.restart))


def cmd_forward(args) -> int:
    from .. import config as config_mod
    from ..io import write_fields
    cfg, claim = prepare_run(args, "forward")
    with claim.setup(), CompileNotice(Reporter(say, args.quiet)) as compiling:
        setup = build_forward(cfg)
        warn_fallback(setup.backend)
        solver = make_darcy_solver(setup.true, setup.backend, setup.forward_params,
                                   **setup.solver_options)
        compiling.summary()
    d, g, est = solver.decomp, solver.grid, setup.memory
    say(f"hpcinv forward: {cfg.problem.name} {'x'.join(map(str, g.shape))} cells on {d.size} "
        f"rank(s) {'x'.join(map(str, d.dims))}, backend {backend_text(solver.backend)}, "
        f"{_describe_method(cfg, solver.params)}; {describe_parallel(solver)}; {est.text()}")
    t0 = time.perf_counter()
    state = solver.solve(progress=Progress(say, args.quiet))
    wall = time.perf_counter() - t0
    out = Path(cfg.output.dir)
    path = write_fields(out / "fields.h5", solver, state, {"wall_time": wall})
    write_summary(out, solver.backend, est, d.comm)
    if d.rank == 0:
        config_mod.save(cfg, out / "config.toml")
    r = state.result
    say(f"{'converged' if r.converged else 'NOT converged'} after {r.iterations} iterations "
        f"(iter/nx {r.iterations / g.shape[0]:.2f}), residual {r.residual:.3e}, "
        f"{wall:.2f} s; wrote {path}")
    if not r.converged:
        say(f"hpcinv: warning: residual {r.residual:.3e} above tol {solver.params.tol:g}; "
            "raise solver.maxiter", file=sys.stderr)
        return 1
    return 0


def describe_parallel(solver) -> str:
    """The run header's part on the halo exchange: overlap and CUDA-aware decisions, and why."""
    bk = solver.backend
    text = f"overlap {'on' if getattr(solver, 'overlap', False) else 'off'}"
    why = getattr(solver, "overlap_reason", "")
    if why:
        text += f" ({why})"
    if bk.device_memory:
        text += (f", halos {'device buffers to MPI' if bk.cuda_aware else 'staged via host'}"
                 f" ({bk.cuda_aware_reason})")
    return text


def _describe_method(cfg, params) -> str:
    if cfg.solver.method == "apt":
        return f"APT cfl {params.cfl:.4g}, Re {params.re:.4g}, tol {params.tol:g}"
    return f"PETSc {params.ksp_type}+{params.pc_type}, tol {params.tol:g}"


def cmd_gradient(args) -> int:
    """Observations (from a file, or synthetic from the true model), then J and dJ/dlogK at
    K = 1 everywhere (logK = 0)."""
    import numpy as np

    from .. import config as config_mod
    from ..io.fields import grid_attrs, write_viewable
    cfg, claim = prepare_run(args, "gradient")
    progress = Progress(say, args.quiet, label="synthetic observations (true model)")
    with claim.setup(), CompileNotice(Reporter(say, args.quiet)) as compiling:
        base = build_forward(cfg, kind="gradient")
        backend, est, g = base.backend, base.memory, base.grid
        warn_fallback(backend)
        say(f"hpcinv gradient: {cfg.problem.name} {'x'.join(map(str, g.shape))} cells on "
            f"{g.decomp.size} rank(s), backend {backend_text(backend)}; {est.text()}")
        setup = build(cfg, progress=progress, kind="gradient", base=base)
        compiling.summary()
    grid, obs = setup.grid, setup.observations
    progress.label = "gradient at logK = 0"
    t0 = time.perf_counter()
    J, g, info = setup.objective(np.zeros(grid.decomp.padded_shape), progress=progress)
    wall = time.perf_counter() - t0
    smoothed = setup.smoother.apply(g) if setup.smoother is not None else backend.clone(g)
    out = Path(cfg.output.dir)
    attrs = {"J": J, **{k: v for k, v in info.items()}, "wall_time": wall,
             "observations": len(obs), "problem": cfg.problem.name, **grid_attrs(grid)}
    path = write_viewable(out / "gradient.h5", grid,
                          {"dJ_dlogK": g, "dJ_dlogK_smoothed": smoothed}, attrs=attrs,
                          to_host=backend.to_host)
    write_summary(out, backend, est, grid.decomp.comm)
    if grid.decomp.rank == 0:
        config_mod.save(cfg, out / "config.toml")
    say(f"J = {J:.6e}; forward {info['forward_iterations']} and adjoint "
        f"{info['adjoint_iterations']} iterations, {wall:.2f} s; wrote {path}")
    if not (info["forward_converged"] and info["adjoint_converged"]):
        say("hpcinv: warning: a solve did not converge; raise solver.maxiter/adjoint.maxiter",
            file=sys.stderr)
        return 1
    return 0


def cmd_invert(args, demo=False) -> int:
    """``hpcinv invert`` / ``hpcinv demo``: run or continue an inversion."""
    from mpi4py import MPI

    from .run import RunDirectory
    cfg, claim = prepare_run(args, "demo" if demo else "invert")
    run_dir = RunDirectory(cfg.output.dir, MPI.COMM_WORLD, checked=True)
    reporter = Reporter(say, args.quiet, args.json)
    with CompileNotice(reporter) as compiling:       # to the end: kernels compiled late too
        return _run_inversion(cfg, claim, run_dir, reporter, compiling, demo)


def _run_inversion(cfg, claim, run_dir, reporter, compiling, demo) -> int:
    """:func:`cmd_invert` once the directory is claimed: build, the header, the run, figures,
    the end."""
    from .levels import make_inversion
    with claim.setup():
        setup = build(cfg)
        warn_fallback(setup.backend)
        inv = make_inversion(cfg, setup, run_dir, reporter, restart=claim.mode == "continue")
    compiling.summary()
    command = "demo" if demo else "invert"
    out, g, est = Path(cfg.output.dir), setup.grid, setup.memory
    reporter.event("start", f"hpcinv {command}: {cfg.problem.name} "
                   f"{'x'.join(map(str, g.shape))} cells on {g.decomp.size} rank(s), backend "
                   f"{backend_text(setup.backend)}, {cfg.inversion.method}, {inv.plan()}, "
                   f"{len(setup.observations)} observations -> {out}; "
                   f"{describe_parallel(setup.objective.solver)}; {est.text()}", command=command,
                   problem=cfg.problem.name, shape=list(g.shape), ranks=g.decomp.size,
                   backend=setup.backend.name, method=cfg.inversion.method,
                   iterations=cfg.inversion.iterations, output=str(out))
    last = inv.run()
    write_summary(out, setup.backend, est, g.decomp.comm)
    if last.get("terminated"):                  # the signal number; checkpoint written
        return Interrupted(last["terminated"]).exit_code
    if g.decomp.rank == 0 and setup.run.figures:
        from .plot import plot_run
        reporter.progress("figures", f"writing figures into {out / 'figures'} ...")
        plot_run(out)
    reporter.event("done", f"done: J/J0 = {last['misfit_ratio']:.4e} after "
                   f"{last['iteration']} iterations; results in {out}",
                   misfit_ratio=last["misfit_ratio"], iteration=last["iteration"],
                   output=str(out))
    return 0


def _check_restart_dir(path: Path):
    if not path.is_dir():
        raise OutputDirError(f"--restart {path}: no such directory")
    if not (path / "config.toml").is_file():
        raise OutputDirError(f"--restart {path}: no config.toml there (not a run directory "
                             f"of hpcinv invert)")
    from ..io import checkpoint as ckpt
    if (path / "model_final.h5").exists() and not ckpt.exists(path):
        # a finished run whose checkpoints were deleted: "no checkpoint yet" would start it
        # from iteration 0 and replace its results
        raise OutputDirError(f"--restart {path}: that run finished ({_last_iteration(path)}"
                             f"model_final.h5) and has no checkpoint left to continue from; "
                             f"its results stay as they are (to compute it again: hpcinv "
                             f"invert {path / 'config.toml'} -o NEWDIR)")


def _last_iteration(path: Path) -> str:
    """``"iteration N, "`` from the last readable line of ``path/history.jsonl`` (or "")."""
    from .plot import read_history
    try:
        recs = read_history(path / "history.jsonl")
    except (OSError, ValueError):
        return ""
    return f"iteration {recs[-1]['iteration']}, " if recs else ""


def cmd_plot(args) -> int:
    from .plot import cmd_plot as plot
    return plot(args.run_dir)


def cmd_selftest(args) -> int:
    from .selftest import run_selftest
    return run_selftest(args)


def config_words(message: str) -> str:
    """A library message in the config's words: the solvers name ``cfl for the forward
    solve``, the user sets ``solver.cfl`` (``adjoint.cfl`` for the adjoint solve); ``use float64
    fields`` is ``solver.dtype``."""
    message = re.sub(r"\bcfl for the forward solve\b", "solver.cfl", message)
    message = re.sub(r"\buse float64 fields\b", 'set solver.dtype = "float64"', message)
    return re.sub(r"\bcfl for the adjoint solve\b", "adjoint.cfl", message)


_BREAKS = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029]")


def one_line(message: str) -> str:
    """``message`` on one line: control characters (a newline or tab in a path the message
    names, a multi-line library text) written as escapes (``\\n``, ``\\x01``)."""
    return _BREAKS.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), message)


def main(argv=None) -> int:
    try:
        args = parser().parse_args(argv)
    except UsageError as exc:           # argparse: one line, exit 2, on rank 0 only
        if rank0():
            print(f"hpcinv: error: {one_line(str(exc))}", file=sys.stderr, flush=True)
        return exc.exit_code
    run = args.command in RUN_COMMANDS            # SIGTERM/SIGINT handled from here on
    if run:
        from .heap import fix_mmap_threshold
        fix_mmap_threshold()           # freed host fields go back to the kernel (issue 20)
    with interrupt.installed() if run else contextlib.nullcontext():
        return _main(args)


def _main(args) -> int:
    try:
        if args.command != "info":       # info is the diagnosis: it shows ranks, mpi_library
            from ..parallel.launcher import check_rank_count
            check_rank_count()   # srun --mpi=none -n N: N 1-rank copies, each writing the output
        code = {"forward": cmd_forward, "gradient": cmd_gradient, "invert": cmd_invert,
                "demo": lambda a: cmd_invert(a, demo=True), "plot": cmd_plot,
                "info": cmd_info, "selftest": cmd_selftest}[args.command](args)
    except Interrupted as exc:
        return _interrupted(exc)
    except HpcinvError as exc:
        if rank0() and getattr(exc, "first", True):     # one line, not one per copy
            print(f"hpcinv: error: {one_line(config_words(str(exc)))}", file=sys.stderr,
                  flush=True)
        return exc.exit_code          # 2 bad input; 1, 4, 5: see errors.py and the README
    except KeyboardInterrupt:
        return 130
    except OSError as exc:            # issue 13: an I/O error on some rank (not collective)
        from mpi4py import MPI
        print(f"hpcinv: error: I/O error: {one_line(str(exc))}", file=sys.stderr, flush=True)
        if MPI.COMM_WORLD.Get_size() > 1:
            _release_locks()
            MPI.COMM_WORLD.Abort(4)
        return 4
    except Exception:
        from mpi4py import MPI
        if MPI.COMM_WORLD.Get_size() > 1:     # an error on one rank must not hang the others
            import traceback
            traceback.print_exc()
            sys.stderr.flush()
            _release_locks()
            MPI.COMM_WORLD.Abort(1)
        raise
    finally:
        _release_locks()
    return code


def _interrupted(exc) -> int:
    """SIGTERM/SIGINT outside the inversion loop: the stop recorded in the run directory, one
    line saying what works now, the lock released, exit 3/130. Under several ranks every rank
    exits on its own once all have stopped, else the job is aborted
    (:func:`~hpcinv.app.interrupt.stop_ranks`)."""
    mpi = sys.modules.get("mpi4py.MPI")            # not initialised yet: a single process
    comm = mpi.COMM_WORLD if mpi is not None else None
    rank = comm.Get_rank() if comm is not None else 0
    interrupt.record_stop(exc.signum, rank)        # jobs/invert.sbatch requeues on it
    line = f"hpcinv: error: interrupted by {exc}; {interrupt.advice()}"
    if rank == 0:
        print(line, file=sys.stderr, flush=True)
    _release_locks()
    if comm is not None and comm.Get_size() > 1:
        interrupt.stop_ranks(comm, exc.exit_code, line)
    return exc.exit_code


def _release_locks():
    """Issue 13: release the run-directory lock on every exit path (if one was taken)."""
    mod = sys.modules.get("hpcinv.io.rundir")
    if mod is not None:
        mod.release_all()


if __name__ == "__main__":
    sys.exit(main())
