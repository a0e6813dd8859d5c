"""The inversion run: run directory, history, checkpoints, restart, SIGTERM, final output.

A run directory holds ``config.toml`` (as resolved), ``setup.h5`` (true model if known,
observations, wells), ``history.jsonl`` (one line per outer iteration), ``checkpoint.h5``
(everything needed to continue bitwise: the optimiser's arrays and scalars, the warm-start
fields and the iteration), ``model_final.h5`` (``logK``, ``Pf``) and ``figures/``. All HDF5
files hold global arrays (written without gathering, see :mod:`hpcinv.io.h5io`), so a run can
be restarted on any number of ranks.
"""
from __future__ import annotations

import json
import math
import signal
import sys
import time
from pathlib import Path

import numpy as np
from mpi4py import MPI

from ..errors import ConfigError
from ..io.fields import grid_attrs
from ..io.h5io import read_attrs, read_cells, read_faces, read_replicated, write_xdmf
# --- issue 13 (run integrity): verified checkpoints, checked writes, lock, history ---------
from ..io import checkpoint as ckpt
from ..io import rundir
from ..io.checkpoint import checked_write_h5 as write_h5   # failures: OutputIOError, all ranks
from ..io.history import History
from .convergence import InnerSolvePolicy
# --------------------------------------------------------------------------------------------
from .gradient import AdjointGradient
from .optimise import OptimiserSettings, make_optimiser
from .regularisation import GradientSmoother, Tikhonov

CHECKPOINT = "checkpoint.h5"


class RunDirectory:
    """Paths of a run directory and the rules for (re)using one."""

    def __init__(self, path, comm, restart: bool = False, overwrite: bool = False):
        self.path, self.comm = Path(path), comm
        exists = self.path.exists() and any(p.name != rundir.LOCK_NAME   # issue 13: the lock
                                            for p in self.path.iterdir())
        if restart:
            if not ckpt.exists(self.path):                                 # or checkpoint.prev.h5
                raise ConfigError(f"--restart {self.path}: no {CHECKPOINT} there")
        elif exists and not overwrite:
            raise ConfigError(f"output directory {self.path} exists and is not empty; use "
                              "--overwrite to replace it or --restart to continue it")
        comm.Barrier()
        if comm.rank == 0:
            self.path.mkdir(parents=True, exist_ok=True)
        comm.Barrier()

    def __truediv__(self, name):
        return self.path / name


class _Signals:
    """SIGTERM (SLURM's warning before the time limit) asks for a checkpoint and a clean stop."""

    def __init__(self):
        self.flag = 0
        try:
            self._old = signal.signal(signal.SIGTERM, self._handler)
        except ValueError:          # not the main thread
            self._old = None

    def _handler(self, signum, frame):
        self.flag = 1

    def restore(self):
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)


def write_setup_file(path, grid, obs, wells, true_logK) -> Path:
    """A run directory's ``setup.h5`` (collective): the true model ``logK_true`` (padded local
    array), the observations (points, values, sigma) and the wells, with the grid attributes."""
    replicated = {"obs_points": obs.points, "obs_values": np.asarray(obs.values),
                  "obs_sigma": np.asarray(obs.sigma),
                  "well_positions": np.array([w.position for w in wells], float)
                  .reshape(-1, grid.ndim),
                  "well_rates": np.array([w.rate for w in wells], float)}
    return write_h5(path, grid.decomp, {"logK_true": true_logK}, attrs=grid_attrs(grid),
                    replicated=replicated)


def write_model_file(path, grid, logK, Pf, attrs, to_host=None) -> Path:
    """A model file of a run directory (``model_final.h5``; collective): ``logK`` and its
    pressure ``Pf`` (padded local arrays), ``attrs`` (e.g. iteration, misfit) plus the grid
    attributes, and the XDMF sidecar (written by rank 0). ``to_host(a, region)``: as for
    :func:`~hpcinv.io.h5io.write_h5` (``backend.to_host`` for backend arrays)."""
    path = Path(path)
    write_h5(path, grid.decomp, {"logK": logK, "Pf": Pf},
             attrs={**attrs, **grid_attrs(grid)}, to_host=to_host)
    if grid.decomp.rank == 0:
        write_xdmf(path, grid, ["logK", "Pf"])
    return path


def optimiser_settings(cfg) -> OptimiserSettings:
    i = cfg.inversion
    return OptimiserSettings(method=i.method, dgamma=i.dgamma, line_search=i.line_search,
                             logK_min=i.logK_min, logK_max=i.logK_max,
                             lbfgs_memory=i.lbfgs_memory)


class Inversion:
    """Build everything an inversion needs from a validated config and run it.

    Args:
        cfg: :class:`~hpcinv.config.Config`.
        backend: compute backend.
        run_dir: output directory.
        restart: continue from ``run_dir/checkpoint.h5``.
        say: rank-0 print function; ``quiet``/``json_log`` select the progress format.
    """

    def __init__(self, cfg, backend, run_dir, restart=False, overwrite=False, say=print,
                 quiet=False, json_log=False, solver_kwargs=None):
        from .. import scenario
        self.cfg, self.bk, self.say = cfg, backend, say
        self.quiet, self.json_log = quiet, json_log
        comm = MPI.COMM_WORLD
        self.dir = RunDirectory(run_dir, comm, restart, overwrite or cfg.output.overwrite)
        # issue 13: config fingerprint; on restart verify the checkpoint (or fall back to the
        # previous one) before any work
        self.warn = lambda msg: say(msg, file=sys.stderr)
        self.fingerprint = ckpt.config_fingerprint(cfg, comm)
        self.ckpt_path = (ckpt.select(self.dir.path, comm, self.fingerprint, self.warn)[0]
                          if restart else None)
        self.inner = InnerSolvePolicy(cfg, self.dir.path, self.warn)
        kw = solver_kwargs or {}
        true = scenario.true_problem(cfg, comm)
        self.grid, self.decomp = true.grid, true.grid.decomp
        true_Pf = None
        if scenario.needs_synthetic_values(cfg):
            from ..solvers import make_darcy_solver
            true_Pf = make_darcy_solver(true, backend, cfg.pt_params(), **kw).solve().Pf
        self.obs = scenario.make_observations(cfg, self.grid, backend, true_Pf,
                                              demean=true.gauge_free)
        self.true_logK = np.zeros(true.K.shape)
        own = self.decomp.owned()
        self.true_logK[own] = np.log(true.K[own])
        self.logK0 = scenario.initial_logK(cfg, true)
        reg = cfg.regularisation
        dt = np.dtype(cfg.solver.dtype)
        tik = Tikhonov(self.grid, backend, reg.tikhonov, dt) if reg.tikhonov > 0 else None
        self.G = AdjointGradient(true, self.obs, backend, cfg.pt_params(),
                                 cfg.adjoint_pt_params(), tik,
                                 warm_start=cfg.inversion.warm_start, **kw)
        smoother = (GradientSmoother(self.grid, backend, reg.smoothing_steps,
                                     reg.smoothing_coefficient, dt)
                    if reg.smoothing_steps > 0 else None)
        if cfg.inversion.method == "lbfgs" and cfg.inversion.precondition == "none":
            smoother = None          # L-BFGS directly on logK with the raw gradient
        self.opt = make_optimiser(self.G, smoother, optimiser_settings(cfg))
        self.restart = restart
        self.iteration = 0
        self.wells = true.wells

    # --- checkpoints ------------------------------------------------------------------------
    def save_checkpoint(self):
        cells = {f"opt_{k}": v for k, v in self.opt.arrays.items()}
        faces = {}
        for name, (arr, axis) in self.G.warm_state().items():
            if axis is None:
                cells[f"warm_{name}"] = arr
            else:
                faces[f"warm_{name}"] = (arr, axis)
        attrs = {"iteration": self.iteration, "scalars": json.dumps(self.opt.scalars),
                 "method": self.cfg.inversion.method, **grid_attrs(self.grid)}
        history = getattr(self, "history", None)                  # issue 13: verified write
        ckpt.save(self.dir.path, self.decomp, cells, faces, attrs, self.bk.to_host,
                  replicated=self.G.warm_replicated(),
                  history=history.lines if history is not None else None,
                  fingerprint=self.fingerprint)
        # For `hpcinv plot` on a running run: the current model and the pressure of the last
        # evaluated model (no extra solve).
        write_h5(self.dir / "model_latest.h5", self.decomp,
                 {"logK": self.opt.arrays["x"], "Pf": self.G.Pf_forward},
                 attrs={"iteration": self.iteration, "pressure_of": "last evaluated model",
                        **grid_attrs(self.grid)}, to_host=self.bk.to_host)

    def load_checkpoint(self):
        path = self.ckpt_path or self.dir / CHECKPOINT      # issue 13: the verified one
        attrs = read_attrs(path)
        if tuple(attrs["shape"]) != tuple(self.grid.shape):
            raise ConfigError(f"restart: the checkpoint's grid {tuple(attrs['shape'])} differs "
                              f"from the config's {tuple(self.grid.shape)}")
        if attrs["method"] != self.cfg.inversion.method:
            raise ConfigError(f"restart: the checkpoint was written by method "
                              f"{attrs['method']!r}, the config asks for "
                              f"{self.cfg.inversion.method!r}")
        import h5py
        with h5py.File(path, "r") as f:
            names = list(f.keys())
        dt = self.G.solver.dtype
        self.opt.arrays = {n[4:]: self.bk.upload(read_cells(path, n, self.decomp), dtype=dt)
                           for n in names if n.startswith("opt_")}
        self.opt.scalars = json.loads(attrs["scalars"])
        warm, replicated = {}, [n for n in names if n in self.G.warm_replicated_names]
        for n in names:
            if n.startswith("warm_") and n not in replicated:
                key = n[5:]
                axis = "xyz".index(key[-1]) if "_q" in key else None
                warm[key] = (read_cells(path, n, self.decomp) if axis is None
                             else read_faces(path, n, axis, self.decomp))
        self.G.set_warm_state(warm)
        self.G.set_warm_replicated({n: read_replicated(path, n) for n in replicated})
        self.iteration = int(attrs["iteration"])
        self.saved_history = ckpt.saved_history(path)      # issue 13: rebuilds a lost history

    # --- output -----------------------------------------------------------------------------
    def write_setup(self):
        write_setup_file(self.dir / "setup.h5", self.grid, self.obs, self.wells, self.true_logK)

    def write_model(self, name):
        x = self.opt.arrays["x"]
        J, _ = self.G.misfit(x)              # the pressure of the accepted model
        write_model_file(self.dir / name, self.grid, x, self.G.solver.Pf,
                         {"iteration": self.iteration, "misfit": J}, self.bk.to_host)

    def progress(self, rec, t0, total):
        if self.quiet:
            return
        if self.json_log:
            self.say(json.dumps(rec))
            return
        k, el = rec["iteration"], rec["wall_time"]
        eta = el / k * (total - k) if k else float("nan")
        note = f"  [{rec['note']}]" if rec.get("note") else ""
        self.say(f"iter {k:4d}/{total}  J/J0 {rec['misfit_ratio']:.4e}  max|dlogK| "
                 f"{rec['max_dlogK']:.3e}  PT {rec['forward_iterations']}+"
                 f"{rec['adjoint_iterations']}  elapsed {el:8.1f} s  ETA {eta:7.1f} s{note}")

    # --- the loop ---------------------------------------------------------------------------
    def run(self) -> dict:
        """Run (or continue) the inversion; returns the last history record."""
        inv, comm = self.cfg.inversion, self.decomp.comm
        t0 = time.perf_counter()
        if self.restart:
            self.load_checkpoint()
            history = History.resume(self.dir / "history.jsonl", comm, keep=self.iteration + 1,
                                     saved=self.saved_history, say=self.warn)
            wall0 = history.lines[-1]["wall_time"] if history.lines else 0.0
            self.say(f"restarting from iteration {self.iteration} "
                     f"({self.ckpt_path or self.dir / CHECKPOINT})")   # issue 13: may be .prev
        else:
            self.write_setup()
            history = History(self.dir / "history.jsonl", comm)
            wall0 = 0.0
            rec = {"iteration": 0, **self.opt.start(self.logK0),
                   "wall_time": time.perf_counter() - t0}
            history.append(rec)
            self.progress(rec, t0, inv.iterations)
            self.inner.check(rec)                       # issue 13: unconverged inner solves
        self.history = history                          # issue 13: copied into checkpoints
        signals = _Signals()
        stop = ""
        try:
            while self.iteration < inv.iterations and not stop:
                self.iteration += 1
                rec = {"iteration": self.iteration, **self.opt.step(),
                       "wall_time": wall0 + time.perf_counter() - t0}
                history.append(rec)
                self.progress(rec, t0, inv.iterations)
                rundir.heartbeat()                      # issue 13: the run-directory lock
                self.inner.check(rec)                   # issue 13: warn; stop after 3 in a row
                stop = self._stop_reason(rec)
                term = comm.allreduce(signals.flag, op=MPI.MAX)
                every = inv.checkpoint_every
                if term or (every and self.iteration % every == 0):
                    self.save_checkpoint()
                if term:
                    self.say(f"SIGTERM: checkpoint written at iteration {self.iteration}; "
                             f"continue with: hpcinv invert --restart {self.dir.path}")
                    return {**rec, "terminated": True}
        finally:
            signals.restore()
        if stop:
            self.say(f"stopping: {stop}")
        self.save_checkpoint()
        self.write_model("model_final.h5")
        return history.lines[-1]

    def _stop_reason(self, rec) -> str:
        inv = self.cfg.inversion
        if "line search failed" in rec.get("note", ""):
            return rec["note"]
        if inv.misfit_ratio > 0 and rec["misfit_ratio"] < inv.misfit_ratio:
            return f"misfit ratio {rec['misfit_ratio']:.3e} below {inv.misfit_ratio:g}"
        if inv.step_tol > 0 and 0 < rec["max_dlogK"] < inv.step_tol:
            return f"max|dlogK| {rec['max_dlogK']:.3e} below {inv.step_tol:g}"
        if not math.isfinite(rec["misfit"]):
            raise ConfigError(f"misfit became {rec['misfit']} at iteration {rec['iteration']}")
        return ""
