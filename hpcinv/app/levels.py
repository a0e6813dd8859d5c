"""Coarse-to-fine inversion (``inversion.levels``): the same problem on coarser grids first.

Level ``l`` with coarsening factor ``f`` is the config's problem on the grid of
``ceil(n / f)`` cells per axis (same box, wells, boundaries, observation points), built by
:func:`~hpcinv.app.assembly.build` from a copy of the config with that shape. Its observations
are the *fine* run's data (values and sigma; observations are data, they do not change across
levels); the coarse "true problem" only supplies the wells and sides (a ``file`` permeability is
replaced by a constant there: the truth exists on the fine grid only). Level 0 starts from the
fine initial model restricted by averaging (:mod:`hpcinv.parallel.transfer`); each later level
from the previous level's model prolongated piecewise constant. Forward and adjoint solves of a
new level start cold (docs/performance.md measures why warm prolongated starts are not worth it).

One run directory, one ``history.jsonl`` (``level``, ``grid`` and ``work_units`` on every line;
the first evaluation of a level is a line of its own with step 0), one sequence of checkpoints:
a checkpoint records the level, the iteration its first line had and whether it has finished,
beside the level's own state, so ``--restart`` continues on any rank count, bitwise. ``J/J0`` is
relative to the run's first misfit (the initial model on the coarsest grid). The run's
``misfit_ratio`` and ``step_tol`` stop the finest level; a coarser level ends after its
``level_iterations``, below its ``level_misfit_ratio``, below ``step_tol`` or when a line search
fails. With ``level_iterations = "auto"`` (what ``levels = "auto"`` resolves to) every level
ends instead when its misfit stalls or its share of the run's fine-iteration budget is spent
(:class:`~hpcinv.app.level_plan.AutoEndings`, decided from the history, so restarts decide
alike). Every coarse level's split over the ranks is checked before the first iteration.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

from mpi4py import MPI

from ..errors import ConfigError, DecompositionError
from ..io import checkpoint as ckpt
from ..io import rundir
from ..io.history import History
from ..parallel.transfer import GridTransfer, coarse_shape
from .assembly import build
from .level_plan import AutoEndings
from .resolve import level_config
from .interrupt import Deferred, stop_message
from .run import Inversion, finish, unfinalise


def make_inversion(cfg, setup, run_dir, reporter, restart: bool = False):
    """The run of a config: :class:`LevelledInversion` when ``inversion.levels`` has more than
    one level, else :class:`~hpcinv.app.run.Inversion` (both: ``run()``, ``history``). The
    levels are the resolved config's (``setup.config``: ``"auto"`` replaced by factors)."""
    cfg = setup.config or cfg
    if len(cfg.inversion.level_factors()) > 1:
        return LevelledInversion(cfg, setup, run_dir, reporter, restart=restart)
    return Inversion(setup, run_dir, reporter, restart=restart)


class LevelledInversion:
    """Run (or continue) a coarse-to-fine inversion.

    Args:
        cfg: the validated config (``inversion.levels`` with more than one level).
        fine: the :class:`~hpcinv.app.assembly.Setup` of the finest level (its data, initial
            model, fingerprint; built by the caller as for a one-level run).
        run_dir, reporter, restart: as for :class:`~hpcinv.app.run.Inversion`.
    """

    def __init__(self, cfg, fine, run_dir, reporter, restart: bool = False):
        self.cfg, self.fine, self.dir, self.reporter = cfg, fine, run_dir, reporter
        inv = cfg.inversion
        self.factors = inv.level_factors()
        n = len(self.factors)
        self.ratios = list(inv.level_misfit_ratio or [0.0] * n)
        self.shapes = [coarse_shape(cfg.grid_shape(), f) for f in self.factors]   # ceil(n/f)
        self.fine_cells = math.prod(self.shapes[-1])
        self.comm = fine.comm
        self.auto = AutoEndings(self.shapes, inv.iterations) \
            if inv.level_iterations == "auto" else None
        self.iterations = (None if self.auto else
                           list(inv.level_iterations or [inv.iterations] * n))
        if self.auto and not self.auto.fits():
            raise ConfigError(
                f"inversion.iterations = {inv.iterations} is too few for levels "
                f"{self.factors} ending automatically (every level needs an iteration within "
                f"the budget: at least {self.auto.fewest_iterations()}); raise it or use fewer "
                f"levels")
        for level in reversed(range(n - 1)):     # every split, before the first iteration
            self._check_split(level, fine.decomp.dims)
        self.restart = restart
        self.ckpt = (ckpt.select(run_dir.path, self.comm, fine.fingerprint, reporter.warn)
                     if restart else None)

    def plan(self) -> str:
        """What the run will do, for its header: every level's grid and iterations."""
        if self.auto:
            grids = ", ".join("x".join(map(str, s)) for s in self.shapes)
            return (f"levels ({grids}) ending automatically, at most "
                    f"{self.cfg.inversion.iterations} fine-iteration equivalents")
        levels = ", ".join(f"{'x'.join(map(str, s))}: {k}"
                           for s, k in zip(self.shapes, self.iterations))
        return f"levels ({levels}) iterations"

    @property
    def total(self) -> int:
        """Lines after the first: every level's iterations plus one start line per later
        level (automatic endings: the most the budget allows)."""
        if self.auto:
            return self.auto.max_lines()
        return sum(self.iterations) + len(self.factors) - 1

    def _exhausted(self, level, iteration, first, history) -> bool:
        """Whether ``level`` (first line at ``first``) may take no more iterations."""
        if self.auto:
            return self.auto.exhausted(level, history.lines)
        return iteration - first >= self.iterations[level]

    # --- levels -----------------------------------------------------------------------------
    def _split_error(self, level, why) -> ConfigError:
        return ConfigError(
            f"inversion.levels: level {level} (factor {self.factors[level]}, grid "
            f"{'x'.join(map(str, self.shapes[level]))}) cannot be split over "
            f"{self.comm.Get_size()} ranks ({why}); use a smaller coarsening factor or "
            f"fewer ranks (e.g. inversion.levels = {self.factors[level + 1:]})")

    def _check_split(self, level, dims):
        """Raise the one-line error of a coarse level with fewer cells than ranks along an
        axis of the fine grid's process grid ``dims`` (every level splits over the same:
        ``MPI.Compute_dims`` does not look at the shape). Checked finest first, so the
        suggested levels can be split."""
        for ax, (n, p) in enumerate(zip(self.shapes[level], dims)):
            if p > n:
                raise self._split_error(level, f"{p} ranks for {n} cells along "
                                               f"{'xyz'[ax]}")

    def _inversion(self, level: int) -> Inversion:
        """The :class:`Inversion` of one level (its own Setup on the level's grid)."""
        if level == len(self.factors) - 1:
            setup = self.fine
        else:
            try:
                setup = build(level_config(self.cfg, self.factors[level]), self.comm,
                              backend=self.fine.backend, data=self.fine.observations)
            except DecompositionError as exc:
                raise self._split_error(level, exc) from None
        out = Inversion(setup, self.dir, self.reporter)
        out.fingerprint = self.fine.fingerprint          # the run's, on every level
        return out

    def _attrs(self, level, first, done) -> dict:
        return {"level": level, "level_first_iteration": first, "level_done": int(bool(done)),
                "levels": list(self.factors)}

    def _record(self, level, iteration, opt_rec, t0, wall0) -> dict:
        rec = {"iteration": iteration, "level": level, "grid": list(self.shapes[level]),
               "cells": math.prod(self.shapes[level]), **opt_rec}
        rec["work_units"] = ((rec["forward_iterations"] + rec["adjoint_iterations"]
                              + rec.get("prediction_work", 0.0))
                             * math.prod(self.shapes[level]) / self.fine_cells)
        rec["wall_time"] = wall0 + time.perf_counter() - t0
        return rec

    def _level_stop(self, inv, level, rec, first, history) -> str:
        if not math.isfinite(rec["misfit"]):
            raise ConfigError(f"misfit became {rec['misfit']} at iteration {rec['iteration']}")
        stall = self.auto.stall_reason(level, first, history.lines) if self.auto else ""
        if level == len(self.factors) - 1:
            return inv._stop_reason(rec) or stall
        if stall:
            return stall
        if "line search failed" in rec.get("note", ""):
            return rec["note"]
        r = self.ratios[level]
        if r > 0 and rec["misfit_ratio"] < r:
            return f"level {level}: misfit ratio {rec['misfit_ratio']:.3e} below {r:g}"
        tol = self.cfg.inversion.step_tol
        if tol > 0 and 0 < rec["max_dlogK"] < tol:
            return f"level {level}: max|dlogK| {rec['max_dlogK']:.3e} below {tol:g}"
        return ""

    def _unconverged_ends(self, inv, level, rec) -> str:
        """Inner solves that did not converge on a coarse level end that level (one warning
        line; the next level starts from its model: a coarse level only prepares a start, and
        its solves can stall where the fine grid's need not, e.g. at a sharper contrast than
        the fine grid would fit); on the finest level the run's policy applies
        (:class:`~hpcinv.app.convergence.InnerSolvePolicy`). Returns the reason, or ``""``."""
        n = int(rec.get("unconverged_solves", 0) or 0)
        if level == len(self.factors) - 1 or not n:
            inv.inner.check(rec)
            return ""
        reason = (f"level {level}: {n} inner solve(s) did not converge at iteration "
                  f"{rec['iteration']}")
        self.reporter.warn(f"hpcinv: warning: {reason}; the next level starts from this "
                           "level's model")
        return reason

    @staticmethod
    def _start_level(inv, logK, J0=None):
        """Start a level's optimiser at the model ``logK`` (padded host array on its grid); its
        ``J0`` becomes the run's, so every line's J/J0 has one reference."""
        with inv.model_range(0):
            rec = inv.opt.start(logK)
        if J0 is not None:
            inv.opt.scalars["J0"] = J0
            rec["misfit_ratio"] = inv.opt.ratio(rec["misfit"])
        return rec

    # --- the loop ---------------------------------------------------------------------------
    def run(self) -> dict:
        comm, t0 = self.comm, time.perf_counter()
        last = len(self.factors) - 1
        if self.restart:
            path, attrs = self.ckpt
            if "level" not in attrs:
                raise ConfigError(f"restart: {path} was written by a one-level run; "
                                  "inversion.levels may not change across a restart")
            level, first = int(attrs["level"]), int(attrs["level_first_iteration"])
            done = bool(attrs["level_done"])
            inv = self._inversion(level)
            inv.ckpt_path = path
            inv.load_checkpoint()
            iteration = inv.iteration
            history = History.resume(self.dir / "history.jsonl", comm, keep=iteration + 1,
                                     saved=inv.saved_history, say=self.reporter.warn)
            unfinalise(history)              # continue as if the final evaluation never ran
            wall0 = history.lines[-1]["wall_time"] if history.lines else 0.0
            t0 = time.perf_counter()
            self.reporter.message(f"restarting from iteration {iteration}, level {level} "
                                  f"({path})")
        else:
            fine_inv = Inversion(self.fine, self.dir, self.reporter)
            fine_inv.write_setup()
            del fine_inv
            history = History(self.dir / "history.jsonl", comm)
            wall0, level, first, iteration, done = 0.0, 0, 0, 0, False
            inv = self._inversion(0)
            rec = self._start_level(
                inv, GridTransfer(self.fine.decomp, inv.decomp).restrict(self.fine.logK0))
            rec = self._record(0, 0, rec, t0, wall0)
            history.append(rec)
            self.reporter.iteration(rec, self.total)
            done = bool(self._unconverged_ends(inv, 0, rec))
        stop = ""
        # What checkpoint.h5 holds: written once (checkpoint.prev.h5 must stay older)
        saved = ((iteration, self._attrs(level, first, done))
                 if self.restart and Path(self.ckpt[0]).name == ckpt.CHECKPOINT else None)
        with Deferred() as signals:          # SIGTERM / Ctrl-C: checkpoint, clean stop
            while True:
                if done or self._exhausted(level, iteration, first, history):
                    if level == last:
                        break
                    # next level: the model prolongated; the old level's memory released
                    x = inv.bk.to_host(inv.opt.arrays["x"])
                    J0 = inv.opt.scalars["J0"]
                    nxt = self._inversion(level + 1)
                    logK = GridTransfer(nxt.decomp, inv.decomp).prolong(x)
                    inv, x = nxt, None
                    inv.bk.release_scratch()      # the old grid's scratch fields too
                    level, iteration, done = level + 1, iteration + 1, False
                    first = iteration
                    rec = self._start_level(inv, logK, J0)
                    rec["note"] = (f"level {level}: {'x'.join(map(str, self.shapes[level]))}, "
                                   f"model prolongated" + (f"; {rec['note']}" if rec["note"]
                                                           else ""))
                else:
                    iteration += 1
                    with inv.model_range(iteration):
                        rec = inv.opt.step()
                rec = self._record(level, iteration, rec, t0, wall0)
                history.append(rec)
                self.reporter.iteration(rec, self.total)
                rundir.heartbeat()
                reason = self._unconverged_ends(inv, level, rec)
                if not reason and iteration > first:
                    reason = self._level_stop(inv, level, rec, first, history)
                if reason:
                    if level == last:
                        stop = reason
                    else:
                        done = True
                        self.reporter.message(f"ending {reason}")
                term = comm.allreduce(signals.flag, op=MPI.MAX)
                every = self.cfg.inversion.checkpoint_every
                inv.iteration, inv.history = iteration, history
                ends = level == last and (bool(stop) or self._exhausted(
                    level, iteration, first, history))   # as the final checkpoint: one write
                inv.extra_attrs = self._attrs(level, first, done or ends)
                if term or (every and iteration % every == 0):
                    inv.save_checkpoint()
                    saved = (iteration, inv.extra_attrs)
                if term:
                    self.reporter.message(stop_message(
                        term, f"iteration {iteration} (level {level})", self.dir.path))
                    return {**rec, "terminated": term}
                if stop:
                    break
            if stop:
                self.reporter.message(f"stopping: {stop}")
            inv.iteration, inv.history = iteration, history
            inv.extra_attrs = self._attrs(level, first, True)
            if saved != (iteration, inv.extra_attrs):
                inv.save_checkpoint()
        self.reporter.final_evaluation(self.dir / "model_final.h5")
        final = finish(inv.opt, history)     # the final model at the user's tolerances
        inv.write_model("model_final.h5", final)
        self.history = history
        return history.lines[-1]
