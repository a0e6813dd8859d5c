"""Optimisers for log K: max-norm gradient descent (the production method) and L-BFGS.

Gradient descent needs one global reduction per outer iteration besides the misfit's own: the
max-norm of the (smoothed) gradient, ``logK <- logK - dgamma * d / max|d|`` with ``d = S g``.
A step that increases the misfit is rejected and ``dgamma`` halved: the history line keeps the
accepted model's misfit and records the trial's as ``trial_misfit(_ratio)`` and in the
``note``. With ``line_search`` the step is first backtracked on the misfit alone (forward
solves only, one scalar per trial) before the gradient is evaluated at the accepted point.

L-BFGS (small runs) optimises ``z`` with ``logK = S z`` when preconditioned by the smoothing
``S`` (gradient ``S^T g``), with a backtracking Armijo line search; each outer iteration adds
``2 m + 4`` scalar SUM reductions (dot products) for memory ``m``, negligible beside the
thousands of PT iterations of a gradient.

All state lives in :attr:`Optimiser.arrays` (padded local arrays, saved as global datasets in
checkpoints) and :attr:`Optimiser.scalars`, so a restart (on any rank count) continues exactly.

Each optimiser is written once; how it evaluates the objective is its evaluator's business:
:class:`~.objective.FixedTolerance` (every solve to the objective's tolerances) or
:class:`~.adaptive.AdaptiveTolerance` (loose solves, trials by their misfit with error
estimates, the gradient at accepted points only). The optimisers see the objective through the
:class:`~.objective.Objective` protocol (in the spirit of pyadjoint's ReducedFunctional); the
adaptive evaluator needs the extended :class:`~.objective.AdaptiveObjective`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from mpi4py import MPI

from ..errors import ConfigError
from .objective import AdaptiveObjective, FixedTolerance, Objective

__all__ = ["Objective", "AdaptiveObjective", "FixedTolerance", "OptimiserSettings",
           "GradientDescent", "LBFGS", "make_optimiser", "logK_of"]

#: Optimisation methods.
METHODS = ("gd", "lbfgs")
#: The note of an L-BFGS iteration whose line search found no decrease (the run stops).
LINE_SEARCH_FAILED = "line search failed: no decrease (last trial J/J0 {trial}); stopping"


def halved_note(line_search: bool) -> str:
    """The note of a gradient-descent step halved within its iteration: by the line search
    (``line_search = true``), else by the adaptive optimiser's own trials (a trial costs one
    forward solve; the history said "line search" for both, issue 22)."""
    return ("line search halved the step" if line_search
            else "step halved within the iteration (the trial's misfit rose)")


def rejected_note(gamma) -> str:
    """The note of a rejected gradient-descent step (the trial's J/J0 filled in by
    :meth:`Optimiser.reject`), with the halved step."""
    return f"rejected trial J/J0 {{trial}} (misfit increased), dgamma halved to {gamma:.4g}"


@dataclass
class OptimiserSettings:
    """Settings of :class:`GradientDescent` / :class:`LBFGS` (see ``[inversion]`` in the docs)."""
    method: str = "gd"
    dgamma: float = 0.2
    line_search: bool = False
    logK_min: float = -math.inf
    logK_max: float = math.inf
    lbfgs_memory: int = 5
    max_trials: int = 10
    max_step: float = 1.0       # L-BFGS: largest max|dlogK| of a trial step

    def validate(self):
        """Range checks; messages name the setting (the config layer maps them to its
        ``inversion.*`` keys)."""
        if self.method not in METHODS:
            import difflib
            close = difflib.get_close_matches(str(self.method), METHODS, n=1, cutoff=0.5)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"method must be 'gd' or 'lbfgs', got {self.method!r}{hint}")
        if not (self.dgamma > 0 and math.isfinite(self.dgamma)):
            raise ConfigError(f"dgamma must be > 0 and finite, got {self.dgamma}")
        for key in ("logK_min", "logK_max"):
            if math.isnan(getattr(self, key)):
                raise ConfigError(f"{key} must be a number or +-inf, got nan")
        if not self.logK_min < self.logK_max:
            raise ConfigError(f"logK_min must be < logK_max, got "
                              f"{self.logK_min} >= {self.logK_max}")
        if self.lbfgs_memory < 1:
            raise ConfigError(f"lbfgs_memory must be >= 1, got {self.lbfgs_memory}")


class Optimiser:
    """Common machinery: owned-cell reductions, bounds, evaluation bookkeeping.

    Args:
        objective: an :class:`Objective` (:class:`~hpcinv.inverse.AdjointGradient`).
        smoother: :class:`~hpcinv.inverse.regularisation.GradientSmoother` or ``None``.
        settings: :class:`OptimiserSettings`.
        progress: optional PT progress callback passed to the solves.
        evaluator: how the objective is evaluated (:class:`FixedTolerance`, the default, or
            :class:`~.adaptive.AdaptiveTolerance`).
    """

    def __init__(self, objective, smoother, settings: OptimiserSettings, progress=None,
                 evaluator=None):
        settings.validate()
        self.f, self.S, self.settings, self.progress = objective, smoother, settings, progress
        self.evaluator = evaluator if evaluator is not None else FixedTolerance()
        self.evaluator.bind(self)
        self._checked = None     # (g, preconditioned g) computed by the evaluator's check
        self.bk = objective.backend
        self.decomp = objective.decomp
        self.own = self.decomp.owned()
        self.arrays: dict = {}
        self.scalars: dict = {"J0": None, "J": None, "evaluations": 0}
        self.unconverged = 0     # solves of the current iteration that missed their tolerance

    # --- state (checkpoints) ------------------------------------------------------------------
    def state(self) -> dict:
        """The arrays of the optimiser's state as named cell fields (the scalars are in
        :attr:`scalars`)."""
        from .state import StateField
        return {k: StateField(v, "cell") for k, v in self.arrays.items()}

    def load_state(self, fields: dict, scalars: dict):
        """Restore :meth:`state`'s arrays (host or backend) and the scalars."""
        self.arrays = {k: self.bk.upload(v, dtype=self.f.dtype) for k, v in fields.items()}
        self.scalars = dict(scalars)

    # --- distributed helpers ----------------------------------------------------------------
    # Arithmetic on the padded local arrays goes through the backend (``bk.elementwise`` on its
    # compute stream); scalars are bound as default arguments, so a queued operation uses the
    # value of the moment it was issued.
    def max_abs(self, a) -> float:
        """Global max-norm over owned cells (one MPI MAX)."""
        return self.decomp.comm.allreduce(self.bk.max_abs(a, region=self.own), op=MPI.MAX)

    def dot(self, a, b) -> float:
        """Global inner product over owned cells (one MPI SUM)."""
        local = self.bk.dot(a, b, region=self.own)
        return self.decomp.comm.allreduce(local, op=MPI.SUM)

    def clip(self, x):
        s = self.settings
        if math.isfinite(s.logK_min) or math.isfinite(s.logK_max):
            self.bk.elementwise(lambda xp, x, lo=s.logK_min, hi=s.logK_max: xp.clip(x, lo, hi),
                                x, out=x)
        return x

    def axpy(self, x, alpha, y):
        """A new array ``x + alpha * y``."""
        return self.bk.elementwise(lambda xp, x, y, alpha=alpha: x + alpha * y, x, y)

    def sub(self, x, y, out=None):
        """``x - y``: a new array, or into ``out`` (which may be ``x``)."""
        return self.bk.elementwise(lambda xp, x, y: x - y, x, y, out=out)

    def neg(self, x):
        """A new array ``-x``."""
        return self.bk.elementwise(lambda xp, x: -x, x)

    def evaluate(self, x, with_gradient=True):
        """``(J, g, info)`` (``g`` is ``None`` for a misfit-only trial)."""
        self.scalars["evaluations"] += 1
        if with_gradient:
            J, g, info = self.f.value_and_gradient(x, self.progress)
        else:
            (J, info), g = self.f.value(x, self.progress), None
        self.unconverged += (not info.get("forward_converged", True)) + \
            (not info.get("adjoint_converged", True))
        return J, g, info

    def ratio(self, J) -> float:
        """``J / J0`` (1 before the first misfit is known)."""
        J0 = self.scalars["J0"]
        return J / J0 if J0 else 1.0

    def record(self, J, step, max_grad, max_dlogK, pts, note="") -> dict:
        unconverged, self.unconverged = self.unconverged, 0
        rec = {"misfit": J, "misfit_ratio": self.ratio(J), "step": step,
               "max_grad": max_grad, "max_dlogK": max_dlogK, "forward_iterations": pts[0],
               "adjoint_iterations": pts[1], "evaluations": self.scalars["evaluations"],
               "unconverged_solves": unconverged, "note": note}
        work = self.f.take_prediction_work()
        if work is not None:                                   # coarse-grid warm starts
            rec["prediction_work"] = work
        self.evaluator.annotate(rec)
        return rec

    def finish(self) -> dict | None:
        """The evaluator's final evaluation (:meth:`FixedTolerance.finish`)."""
        return self.evaluator.finish()

    def preconditioned(self, g):
        """The gradient as the step uses it (a new array, or the one the evaluator's gradient
        check computed for this ``g``: a smoothing is ``smoothing_steps`` halo exchanges)."""
        checked, self._checked = self._checked, None
        if checked is not None and checked[0] is g:
            return checked[1]
        return self.precondition(g)

    def precondition(self, g):
        """The gradient as the step uses it (a new array, or ``g`` itself, overwritten, where
        the optimiser reads nothing else of ``g``)."""
        raise NotImplementedError

    def reject(self, J_trial, step, max_grad, pts, note) -> dict:
        """The record of an iteration whose trial was rejected: ``misfit``/``misfit_ratio`` stay
        the accepted model's (the model did not change), the trial's are ``trial_misfit`` and
        ``trial_misfit_ratio``, with ``rejected: true``; ``note`` may quote ``{trial}``, the
        trial's J/J0."""
        rec = self.record(self.scalars["J"], step, max_grad, 0.0, pts,
                          note.format(trial=f"{self.ratio(J_trial):.4e}"))
        rec.update(trial_misfit=J_trial, trial_misfit_ratio=self.ratio(J_trial), rejected=True)
        return rec


class GradientDescent(Optimiser):
    """``logK <- clip(logK - dgamma * S g / max|S g|)``; an increase halves ``dgamma``.

    State: ``x`` (accepted logK), ``d`` (normalised search direction at ``x``); scalars ``J``
    (misfit at ``x``), ``gamma`` (current step), ``max_grad``.
    """

    def start(self, logK0) -> dict:
        self.evaluator.begin()
        pts = [0, 0]
        x = self.clip(self.bk.upload(logK0, dtype=self.f.dtype))
        J, g = self.evaluator.first(x, pts)
        self.scalars.update(J0=J, J=J, gamma=self.settings.dgamma)
        self.arrays = {"x": x, "d": self._direction(g)}
        return self.record(J, 0.0, self.scalars["max_grad"], 0.0, pts)

    def precondition(self, g):
        """The gradient as the step uses it: smoothed, in place (the step reads only the
        smoothed gradient and its max-norm, so ``g`` itself need not survive: one field less at
        the run's high-water mark, where the gradient check holds two smoothed stages)."""
        return self.S.apply(g, out=g) if self.S is not None else g

    def _direction(self, g):
        d = self.preconditioned(g)
        m = self.max_abs(d)
        self.scalars["max_grad"] = m
        if m > 0:
            self.bk.elementwise(lambda xp, d, m=m: d / m, d, out=d)
        return d

    def _trial(self, gamma):
        return self.clip(self.bk.elementwise(lambda xp, x, d, gamma=gamma: x - gamma * d,
                                             self.arrays["x"], self.arrays["d"]))

    def step(self) -> dict:
        E, sc = self.evaluator, self.scalars
        E.begin()
        x_old, gamma, note, pts, x_t = self.arrays["x"], sc["gamma"], "", [0, 0], None
        if E.by_misfit(self.settings.line_search):      # trials by their misfit alone
            for _ in range(self.settings.max_trials):
                x_t = self._trial(gamma)
                J = E.misfit(x_t, sc["J"], pts)
                if J <= sc["J"]:
                    break
                gamma *= 0.5
                E.backtracked(tighten=True)
                note = halved_note(self.settings.line_search)
            else:
                x_t = None
                if E.decided:        # the misfits were decided: the step is too long
                    sc["gamma"] = gamma
                    return self.reject(J, gamma * 2, sc["max_grad"], pts, rejected_note(gamma))
        if x_t is None:
            x_t = self._trial(gamma)
            J, g = E.value_and_gradient(x_t, pts)
        else:
            J, g = E.gradient_after(x_t, J, sc["J"], pts)
        if not E.decided and J > sc["J"]:
            sc["gamma"] = gamma * 0.5
            return self.reject(J, gamma, sc["max_grad"], pts, rejected_note(sc["gamma"]))
        dlogK = self.max_abs(self.sub(x_t, x_old))
        sc.update(J=J, gamma=gamma)
        self.arrays = {"x": x_t, "d": self._direction(g)}
        return self.record(J, gamma, sc["max_grad"], dlogK, pts, note)


class LBFGS(Optimiser):
    """Limited-memory BFGS over ``z`` (``logK = S z`` with smoothing preconditioning, else
    ``z = logK``), two-loop recursion, backtracking Armijo line search (c1 = 1e-4).

    State: ``z``, ``x`` (= S z), ``gz`` (gradient w.r.t. z) and the pairs ``s_i, y_i``;
    scalars ``J``, ``npairs``. The first step is scaled so that ``max|dlogK| = dgamma``; later
    unit steps are capped at ``max|dlogK| = max_step``.
    """

    def _x_of(self, z):
        return self.clip(self.S.apply(z) if self.S is not None else self.bk.clone(z))

    def precondition(self, g):
        """The gradient as the step uses it: with respect to ``z``."""
        return self.S.apply_transpose(g) if self.S is not None else g

    def start(self, logK0) -> dict:
        self.evaluator.begin()
        pts = [0, 0]
        z = self.bk.upload(logK0, dtype=self.f.dtype)    # S preserves constants
        x = self._x_of(z)
        J, g = self.evaluator.first(x, pts)
        self.scalars.update(J0=J, J=J, npairs=0)
        self.arrays = {"z": z, "x": x, "gz": self.preconditioned(g)}
        return self.record(J, 0.0, self.max_abs(g), 0.0, pts)

    def _pairs(self):
        n = self.scalars["npairs"]
        return [(self.arrays[f"s{i}"], self.arrays[f"y{i}"]) for i in range(n)]

    def _direction(self):
        """``-H gz`` by the two-loop recursion (``H0 = gamma I``, gamma = s'y / y'y)."""
        bk = self.bk
        q = bk.clone(self.arrays["gz"])
        pairs = self._pairs()
        alphas = []
        for s, y in reversed(pairs):
            rho = 1.0 / self.dot(y, s)
            a = rho * self.dot(s, q)
            bk.elementwise(lambda xp, q, y, a=a: q - a * y, q, y, out=q)       # q -= a * y
            alphas.append((rho, a))
        if pairs:
            s, y = pairs[-1]
            c = self.dot(s, y) / self.dot(y, y)
            bk.elementwise(lambda xp, q, c=c: q * c, q, out=q)                 # q *= c
        for (s, y), (rho, a) in zip(pairs, reversed(alphas)):
            b = rho * self.dot(y, q)
            bk.elementwise(lambda xp, q, s, ab=a - b: q + ab * s, q, s, out=q)  # q += (a-b) s
        return self.neg(q)

    def _accept(self, z_t, x_t, J, g, t, pts, note) -> dict:
        """Take the trial ``z_t`` (``x_t = S z_t``, misfit ``J``, gradient ``g``): the new
        curvature pair (if it satisfies the curvature condition) and the history record."""
        sc, A = self.scalars, self.arrays
        gz = self.preconditioned(g)
        s, y = self.sub(z_t, A["z"]), self.sub(gz, A["gz"])
        dlogK = self.max_abs(self.sub(x_t, A["x"]))
        pairs = self._pairs()
        if self.dot(s, y) > 0:                 # curvature condition, else skip the update
            pairs = (pairs + [(s, y)])[-self.settings.lbfgs_memory:]
        new = {"z": z_t, "x": x_t, "gz": gz}
        for i, (si, yi) in enumerate(pairs):
            new[f"s{i}"], new[f"y{i}"] = si, yi
        self.arrays = new
        sc.update(J=J, npairs=len(pairs))
        return self.record(J, t, self.max_abs(g), dlogK, pts, note)

    def _search_direction(self):
        """``(p, slope, t, note)``: the quasi-Newton direction (memory reset to steepest descent
        when it does not descend), its slope ``<gz, p>`` and the first trial step ``t``."""
        sc, A = self.scalars, self.arrays
        p = self._direction()
        slope = self.dot(A["gz"], p)
        note = ""
        if not slope < 0:                      # not a descent direction: restart memory
            p, sc["npairs"], note = self.neg(A["gz"]), 0, \
                "L-BFGS memory reset (not a descent direction)"
            slope = self.dot(A["gz"], p)
        # Unit step, capped so a trial changes logK by at most max_step (a wild first quasi-
        # Newton step would otherwise create contrasts that take the PT solver ages); the very
        # first step changes it by dgamma.
        Sp = self.S.apply(p) if self.S is not None else p
        size = max(self.max_abs(Sp), 1e-300)
        t = self.settings.dgamma / size if sc["npairs"] == 0 else \
            min(1.0, self.settings.max_step / size)
        return p, slope, t, note

    def step(self) -> dict:
        E, sc, A = self.evaluator, self.scalars, self.arrays
        E.begin()
        p, slope, t, note = self._search_direction()
        pts, by_misfit = [0, 0], E.by_misfit(False)      # else each trial with its gradient
        for trial in range(self.settings.max_trials):
            z_t = self.axpy(A["z"], t, p)
            x_t = self._x_of(z_t)
            target = sc["J"] + 1e-4 * t * slope
            if by_misfit:
                J, g = E.misfit(x_t, target, pts), None
            else:
                J, g = E.value_and_gradient(x_t, pts)
            if J <= target:
                break
            t *= 0.5
            E.backtracked(tighten=False)
            note = f"Armijo backtracking ({trial + 1})"
        else:
            again = E.reevaluate(A["x"], pts)
            if again is not None:                # tighter tolerances at the accepted model
                J_old, g = again
                sc.update(J=J_old, npairs=0)
                A["gz"] = self.preconditioned(g)
                return self.record(J_old, t, self.max_abs(g), 0.0, pts, "no Armijo decrease "
                                   "with loose solves: tolerances tightened, gradient "
                                   "re-evaluated, memory reset")
            return self.reject(J, t, self.max_abs(A["gz"]), pts, LINE_SEARCH_FAILED)
        if g is None:
            J, g = E.gradient_after(x_t, J, sc["J"], pts)
        return self._accept(z_t, x_t, J, g, t, pts, note)


def make_optimiser(objective, smoother, settings: OptimiserSettings, progress=None,
                   evaluator=None):
    """The optimiser named by ``settings.method`` with ``evaluator`` (default
    :class:`FixedTolerance`)."""
    cls = {"gd": GradientDescent, "lbfgs": LBFGS}.get(settings.method)
    if cls is None:
        settings.validate()
    return cls(objective, smoother, settings, progress, evaluator)


def logK_of(opt) -> object:
    """The current accepted model of an optimiser (padded local backend array)."""
    return opt.arrays["x"]


