"""The inversion run: run directory, history, checkpoints, restart, SIGTERM, final output.

A run directory holds ``config.toml`` (as resolved), ``setup.h5`` (true model if known,
observations, wells), ``history.jsonl`` (one line per outer iteration), ``checkpoint.h5``
(everything needed to continue bitwise: the optimiser's arrays and scalars, the warm-start
fields and the iteration), ``model_final.h5`` (``logK``, ``Pf``) and ``figures/``. All HDF5
files hold global arrays (written without gathering, see :mod:`hpcinv.io.h5write`), so a run can
be restarted on any number of ranks.
"""
from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
from mpi4py import MPI

from ..errors import ConfigError, PermeabilityRangeError, plain
from ..io.fields import grid_attrs
from ..io import checkpoint as ckpt
from ..io import read_attrs, read_cells, read_faces, read_replicated, rundir, write_viewable
from ..io.checkpoint import checked_write_h5 as write_h5   # failures: OutputIOError, all ranks
from ..io.history import History
from .convergence import InnerSolvePolicy
from .interrupt import Deferred, stop_message

CHECKPOINT = "checkpoint.h5"


class RunDirectory:
    """Paths of a run directory and the rules for (re)using one (for the Python API; the CLI
    decides with :mod:`hpcinv.app.ownership` and passes ``checked=True``)."""

    def __init__(self, path, comm, restart: bool = False, overwrite: bool = False,
                 checked: bool = False):
        self.path, self.comm = Path(path), comm
        exists = self.path.exists() and any(p.name != rundir.LOCK_NAME   # issue 13: the lock
                                            for p in self.path.iterdir())
        if checked:
            pass
        elif restart:
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


def write_setup_file(path, grid, obs, wells, true_logK) -> Path:
    """A run directory's ``setup.h5`` (collective): the true model ``logK_true`` (padded local
    array), the observations (points, values, sigma) and the wells, with the grid attributes."""
    replicated = {"obs_points": obs.points, "obs_values": np.asarray(obs.values),
                  "obs_sigma": np.asarray(obs.sigma),
                  "well_positions": np.array([w.position for w in wells], float)
                  .reshape(-1, grid.ndim),
                  "well_rates": np.array([w.rate for w in wells], float)}
    return write_viewable(path, grid, {"logK_true": true_logK}, attrs=grid_attrs(grid),
                          writer=write_h5, replicated=replicated)


def write_model_file(path, grid, logK, Pf, attrs, to_host=None) -> Path:
    """A model file of a run directory (``model_final.h5``, ``model_latest.h5``; collective):
    ``logK`` and its pressure ``Pf`` (padded local arrays), ``attrs`` (e.g. iteration, misfit)
    plus the grid attributes, their XDMF views and sidecar (:func:`~hpcinv.io.write_viewable`).
    ``to_host(a, region)``: as for :func:`~hpcinv.io.h5write.write_h5` (``backend.to_host``
    for backend arrays)."""
    return write_viewable(Path(path), grid, {"logK": logK, "Pf": Pf},
                          attrs={**attrs, **grid_attrs(grid)}, to_host=to_host, writer=write_h5)


class Reporter:
    """Progress of a run, printed by rank 0: one line per outer iteration (with ETA) and the
    run's other lines (header, compiling, final evaluation, end); with ``json_log`` every
    line is a JSON object with an ``event`` key instead (``--json``: stdout is JSON only);
    ``quiet`` silences the iterations and :meth:`progress` lines. Warnings go to stderr."""

    def __init__(self, say=print, quiet: bool = False, json_log: bool = False):
        self.say, self.quiet, self.json_log = say, quiet, json_log
        self._paused = 0.0        # seconds kept out of the ETA (kernels compiled late)

    def iteration(self, rec, total):
        if self.quiet:
            return
        if self.json_log:
            self.say(json.dumps({"event": "iteration", **rec}))
            return
        k, el = rec["iteration"], rec["wall_time"]
        eta = self.eta(k, el, total)
        eta_text = f"{eta:7.1f} s" if eta is not None else "      -  "
        note = f"  [{rec['note']}]" if rec.get("note") else ""
        lvl = (f"L{rec['level']} {'x'.join(map(str, rec['grid']))}  " if "level" in rec
               else "")                                   # coarse-to-fine (app/levels.py)
        self.say(f"{lvl}iter {k:4d}/{total}  J/J0 {rec['misfit_ratio']:.4e}  max|dlogK| "
                 f"{rec['max_dlogK']:.3e}  PT {rec['forward_iterations']}+"
                 f"{rec['adjoint_iterations']}  elapsed {el:8.1f} s  ETA {eta_text}{note}")

    def pause(self, seconds: float):
        """Keep ``seconds`` (e.g. a kernel compiled during an iteration) out of the ETA."""
        self._paused += seconds

    def eta(self, k, elapsed, total):
        """Seconds left after iteration ``k`` of ``total`` (``None`` while unknown): the time per
        iteration since the first line this reporter printed (iteration 0 ends after the
        one-off setup, compilation and first gradient, which are not iterations), less the
        :meth:`pause` seconds since; on a restart's first line, the run's average so far."""
        if not hasattr(self, "_first"):
            self._first = (k, elapsed - self._paused)
        k0, el0 = self._first
        if k > k0:
            return (elapsed - self._paused - el0) / (k - k0) * (total - k)
        return elapsed / k * (total - k) if k > 0 else None

    def event(self, kind: str, text: str, **fields):
        """A line other than an iteration: ``text``, or with ``json_log`` the JSON object
        ``{"event": kind, **fields, "message": text}``. Printed also with ``quiet``."""
        if self.json_log:
            self.say(json.dumps({"event": kind, **fields, "message": text}, default=str))
        else:
            self.say(text)

    def progress(self, kind: str, text: str, **fields):
        """An :meth:`event` that says what takes time now; silenced by ``quiet``."""
        if not self.quiet:
            self.event(kind, text, **fields)

    def message(self, text):
        self.event("message", text)

    def final_evaluation(self, path):
        """The line before the final model's evaluation and ``path`` (``model_final.h5``)."""
        self.progress("final", f"final evaluation: writing {path} ...", path=str(path))

    def warn(self, text):
        """A warning line on stderr (also with ``quiet``)."""
        self.say(text, file=sys.stderr)


def finish(opt, history) -> dict | None:
    """Adaptive tolerances (issue 12): evaluate the final model at the user's tolerances
    (``opt.finish()``) and amend the history's last line with that accurate misfit (the loose
    values are kept under ``before_final``). Runs after the final checkpoint, so a restart
    continues from the state before it (:func:`unfinalise`). ``None`` for other optimisers."""
    if not history.lines:
        return None
    final = opt.finish()
    if final is None:
        return None
    last = history.lines[-1]
    before = {k: last.get(k) for k in final}
    history.lines[-1] = {**last, **final, "before_final": before}
    history.rewrite()
    return final


def unfinalise(history):
    """Undo :func:`finish`'s amendment of the last line (a restart continues from the
    checkpoint written before the final evaluation)."""
    last = history.lines[-1] if history.lines else {}
    if "before_final" in last:
        rec = {k: v for k, v in last.items() if k != "before_final"}
        for k, v in last["before_final"].items():
            if v is None:
                rec.pop(k, None)
            else:
                rec[k] = v
        history.lines[-1] = rec
        history.rewrite()


class Inversion:
    """Run (or continue) an inversion that :func:`~hpcinv.app.assembly.build` assembled.

    It builds nothing: the objective, optimiser, observations and backend come in the
    :class:`~hpcinv.app.assembly.Setup`, the communicator is the setup's.

    Args:
        setup: the assembled run.
        run_dir: the :class:`RunDirectory` (checked and created by the caller).
        reporter: a :class:`Reporter`.
        restart: continue from ``run_dir/checkpoint.h5``.
    """

    def __init__(self, setup, run_dir, reporter=None, restart: bool = False):
        self.setup, self.dir = setup, run_dir
        self.reporter = reporter if reporter is not None else Reporter()
        self.bk, self.settings = setup.backend, setup.run
        self.grid, self.decomp = setup.grid, setup.grid.decomp
        self.obs, self.G, self.opt = setup.observations, setup.objective, setup.optimiser
        comm = self.decomp.comm
        self.warn = self.reporter.warn
        # Verify the checkpoint of a restart (or fall back to the previous one) before any work;
        # the config fingerprint guards what must not change across a restart.
        self.fingerprint = setup.fingerprint
        self.ckpt_path = (ckpt.select(self.dir.path, comm, self.fingerprint, self.warn)[0]
                          if restart else None)
        self.inner = InnerSolvePolicy(setup.forward_params, setup.adjoint_params,
                                      self.dir.path, self.warn)
        self.logK0 = setup.logK0
        self.restart = restart
        self.iteration = 0
        self.wells = setup.true.wells
        self.extra_attrs = {}     # more checkpoint attributes (the level of app/levels.py)

    def plan(self) -> str:
        """What the run will do, for its header: ``"50 iterations"``."""
        return f"{self.settings.iterations} iterations"

    # --- checkpoints ------------------------------------------------------------------------
    def _components(self) -> dict:
        """The stateful components a checkpoint saves, by name."""
        return {"optimiser": self.opt, "objective": self.G}

    def save_checkpoint(self):
        """Every component's named state where it lives (cells, faces along their axis,
        replicated), with the layout recorded, the optimiser's scalars and the iteration."""
        cells, faces, replicated, layout = {}, {}, {}, {}
        for comp, obj in self._components().items():
            layout[comp] = {}
            for name, f in obj.state().items():
                key = f"{comp}.{name}"
                layout[comp][name] = [key, f.location, f.axis]
                if f.location == "cell":
                    cells[key] = f.array
                elif f.location == "face":
                    faces[key] = (f.array, f.axis)
                else:
                    replicated[key] = f.array
        attrs = {"iteration": self.iteration, "scalars": json.dumps(self.opt.scalars),
                 "state_layout": json.dumps(layout), "method": self.settings.method,
                 **grid_attrs(self.grid), **self.extra_attrs}
        history = getattr(self, "history", None)          # copied into the checkpoint
        ckpt.save(self.dir.path, self.decomp, cells, faces, attrs, self.bk.to_host,
                  replicated=replicated,
                  history=history.lines if history is not None else None,
                  fingerprint=self.fingerprint)
        # For `hpcinv plot` on a running run: the current model and its pressure, when the
        # latest forward solve was of that model. No extra solve here (it would change the
        # warm starts, and so the run, by checkpointing): otherwise (a restart at its last
        # iteration, a step ending on a rejected trial) the previous model_latest.h5 stays, a
        # consistent pair of an earlier iteration.
        x = self.opt.arrays["x"]
        Pf = self.G.pressure_at(x)
        if Pf is not None:
            # its solve's tolerance is the run's current (loose) one: the file says how loose
            write_model_file(self.dir / "model_latest.h5", self.grid, x, Pf,
                             {"iteration": self.iteration, "pressure_of": "logK (this file)",
                              "pressure_residual": self.G.latest_forward_residual()},
                             self.bk.to_host)

    def load_checkpoint(self):
        path = self.ckpt_path or self.dir / CHECKPOINT      # the verified one
        attrs = read_attrs(path)
        shape = tuple(plain(attrs["shape"]))
        if shape != tuple(self.grid.shape):
            raise ConfigError(f"restart: the checkpoint's grid {shape} differs from the "
                              f"config's {tuple(self.grid.shape)}")
        if attrs["method"] != self.settings.method:
            raise ConfigError(f"restart: the checkpoint was written by method "
                              f"{attrs['method']!r}, the config asks for "
                              f"{self.settings.method!r}")
        if "state_layout" not in attrs:
            raise ConfigError(f"restart: {path} has no state layout (written by an older "
                              "hpcinv); start the run again")
        layout = json.loads(attrs["state_layout"])
        state = {}
        for comp, fields in layout.items():
            state[comp] = {}
            for name, (key, location, axis) in fields.items():
                state[comp][name] = (read_cells(path, key, self.decomp) if location == "cell"
                                     else read_faces(path, key, axis, self.decomp)
                                     if location == "face" else read_replicated(path, key))
        self.opt.load_state(state.get("optimiser", {}), json.loads(attrs["scalars"]))
        self.G.load_state(state.get("objective", {}))
        self.iteration = int(attrs["iteration"])
        self.saved_history = ckpt.saved_history(path)      # rebuilds a lost history

    # --- output -----------------------------------------------------------------------------
    def write_setup(self):
        """``setup.h5``: the true model's log K is made here, not held through the run (one
        host field less at the run's peak)."""
        K, own = self.setup.true.K, self.decomp.owned()
        true_logK = np.zeros(K.shape)
        true_logK[own] = np.log(K[own])
        write_setup_file(self.dir / "setup.h5", self.grid, self.obs, self.wells, true_logK)

    def write_model(self, name, final=None):
        """The accepted model, its pressure and its misfit: the optimiser's accepted ``J``, the
        value on the history's last line (issue 13: one final misfit everywhere). The pressure
        is the forward solution at that model (:meth:`AdjointGradient.pressure_at`), solved
        afresh when the latest forward solve was of another model; never the solver's ``Pf``,
        which after a gradient holds the adjoint state. ``final``: the record of
        :func:`finish` (unused: kept for callers)."""
        x = self.opt.arrays["x"]
        Pf = self.G.pressure_at(x)         # the solver's Pf may be the adjoint state
        if Pf is None:
            self.G.misfit(x)                 # the pressure of the accepted model
            Pf = self.G.Pf_forward
        write_model_file(self.dir / name, self.grid, x, Pf,
                         {"iteration": self.iteration, "misfit": self.opt.scalars["J"]},
                         self.bk.to_host)

    @contextlib.contextmanager
    def model_range(self, iteration: int):
        """Around the optimiser's ``start`` (iteration 0) or ``step``: a model whose
        ``K = exp(log K)`` leaves the solver dtype's range is one line naming what to change
        (the initial model, ``dgamma`` or the bounds), not a diverging solve."""
        try:
            yield
        except PermeabilityRangeError as exc:
            if not exc.log:
                raise
            if iteration == 0:
                raise ConfigError(f"the initial model (inversion.initial_logK or "
                                  f"inversion.initial_file): {exc}") from None
            s = self.setup.optimiser_settings
            raise ConfigError(
                f"iteration {iteration}: {exc}; lower inversion.dgamma (now {s.dgamma:g}) or "
                f"bound the model inside that range with inversion.logK_min/logK_max (now "
                f"{s.logK_min:g}/{s.logK_max:g})") from None

    # --- the loop ---------------------------------------------------------------------------
    def run(self) -> dict:
        """Run (or continue) the inversion; returns the last history record."""
        inv, comm = self.settings, self.decomp.comm
        t0 = time.perf_counter()
        if self.restart:
            self.load_checkpoint()
            history = History.resume(self.dir / "history.jsonl", comm, keep=self.iteration + 1,
                                     saved=self.saved_history, say=self.warn)
            wall0 = history.lines[-1]["wall_time"] if history.lines else 0.0
            unfinalise(history)                         # see finish(): continue as if not
            self.reporter.message(f"restarting from iteration {self.iteration} "
                                  f"({self.ckpt_path or self.dir / CHECKPOINT})")
        else:
            self.write_setup()
            self.G.reset()          # a probe call before run() must not change the run
            history = History(self.dir / "history.jsonl", comm)
            wall0 = 0.0
            with self.model_range(0):
                rec = {"iteration": 0, **self.opt.start(self.logK0),
                       "wall_time": time.perf_counter() - t0}
            history.append(rec)
            self.reporter.iteration(rec, inv.iterations)
            self.inner.check(rec)                       # unconverged inner solves
        self.history = history                          # copied into checkpoints
        stop = ""
        # The iteration checkpoint.h5 holds: written once (checkpoint.prev.h5 must stay older)
        saved = self.iteration if self.restart and self._latest_loaded() else None
        # SIGTERM (SLURM's warning before the time limit) / Ctrl-C: checkpoint, clean stop
        with Deferred() as signals:
            while self.iteration < inv.iterations and not stop:
                self.iteration += 1
                with self.model_range(self.iteration):
                    rec = {"iteration": self.iteration, **self.opt.step(),
                           "wall_time": wall0 + time.perf_counter() - t0}
                history.append(rec)
                self.reporter.iteration(rec, inv.iterations)
                rundir.heartbeat()                      # the run-directory lock
                self.inner.check(rec)                   # warn; stop after 3 in a row
                stop = self._stop_reason(rec)
                term = comm.allreduce(signals.flag, op=MPI.MAX)
                every = inv.checkpoint_every
                if term or (every and self.iteration % every == 0):
                    self.save_checkpoint()
                    saved = self.iteration
                if term:
                    self.reporter.message(stop_message(term, f"iteration {self.iteration}",
                                                       self.dir.path))
                    return {**rec, "terminated": term}
            if stop:
                self.reporter.message(f"stopping: {stop}")
            if saved != self.iteration:
                self.save_checkpoint()
        self.reporter.final_evaluation(self.dir / "model_final.h5")
        final = finish(self.opt, history)
        self.write_model("model_final.h5", final)
        return history.lines[-1]

    def _latest_loaded(self) -> bool:
        """Whether a restart loaded ``checkpoint.h5`` (not the fallback ``checkpoint.prev.h5``,
        after which ``checkpoint.h5`` must be written again)."""
        return Path(self.ckpt_path or CHECKPOINT).name == CHECKPOINT

    def _stop_reason(self, rec) -> str:
        inv = self.settings
        if "line search failed" in rec.get("note", ""):
            return rec["note"]
        if inv.misfit_ratio > 0 and rec["misfit_ratio"] < inv.misfit_ratio:
            return f"misfit ratio {rec['misfit_ratio']:.3e} below {inv.misfit_ratio:g}"
        if inv.step_tol > 0 and 0 < rec["max_dlogK"] < inv.step_tol:
            return f"max|dlogK| {rec['max_dlogK']:.3e} below {inv.step_tol:g}"
        if not math.isfinite(rec["misfit"]):
            raise ConfigError(f"misfit became {rec['misfit']} at iteration {rec['iteration']}")
        return ""
