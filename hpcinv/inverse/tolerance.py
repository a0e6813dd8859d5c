"""Adaptive solve tolerances of an inversion (issue 12, item 1): the rule and its safeguards.

Every outer iteration of an inversion needs the misfit ``J`` only accurately enough to take its
decisions (accept a step, or not) and the gradient only accurately enough to descend. Solving
every forward and adjoint solve to the user's tolerance (``1e-8``) is far more than that early
on, where ``J`` falls by 10-20 % per step. The rule (see ``docs/theory.md``):

* **error estimate** -- a forward solve to ``tau * refine`` is continued to ``tau`` (warm);
  the error of ``J`` at the second stage (:mod:`.misfit_error`) is the larger of the
  dual-weighted residual ``|psi . (Qf - A P_h)|`` (``psi`` the last gradient's adjoint) and the
  two-stage extrapolation ``|J1 - J2| d2 / (d1 - d2)`` with ``d`` those weighted residuals;
  before the first adjoint the residuals' max-norms stand in for ``d``. Multiplied by
  ``safety``;
* **forcing term** -- after an accepted step with decrease ``dJ`` and error ``e`` at tolerance
  ``tau``, the next forward tolerance is the one whose predicted error is ``eta dJ``:
  ``tau_next = tau eta dJ / e``, clamped to ``[user tol, loose]`` and loosened by at most
  ``refine`` per iteration. Early (large decreases) solves are loose, they tighten as ``J``
  stalls;
* **decisions** -- a comparison of ``J`` with a reference ``R`` (the accepted misfit, or the
  Armijo line) is taken only when ``|J - R| >= kappa (e_J + e_R)``; otherwise the warm forward
  solve is continued a decade further (cheap) until it is, or the user's tolerance is reached
  (then the decision is today's exact one). With ``kappa >= 1`` an accepted step cannot
  increase the accurate misfit while the error estimates hold;
* **accepted values** -- an accepted misfit is refined until ``e <= eta dJ``, so the next
  comparison starts from an accurate reference;
* **rejections** -- a gradient-descent trial with a decided increase halves the step, tightens
  both tolerances a decade and is tried again within the iteration; an L-BFGS line search that
  fails while the adjoint tolerance is above the user's first tightens both tolerances a decade
  and re-evaluates the gradient at the accepted model;
* **gradients** -- the adjoint starts at the cap and loosens by ``adjoint_recover`` after each
  accepted step; with ``gradient_accuracy`` every adjoint solve is checked in two stages
  (``refine`` times looser, then the tolerance) and continued a decade at a time while
  :meth:`TolerancePolicy.gradient_error` of the preconditioned gradient is above the bound;
* **the end** -- the final model's misfit and gradient are evaluated at the user's tolerances.

The state is a small dict of JSON scalars (``Optimiser.scalars["tolerance"]``), checkpointed with
the optimiser's scalars, so a restart continues bitwise. Every rank takes the same decisions: the
misfits and residuals they use are identical on every rank.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import ConfigError


def check_gradient_accuracy(value):
    """Raise :class:`ConfigError` unless ``value`` is in ``[0, 1)`` (0: no check)."""
    if isinstance(value, bool) or not 0 <= value < 1:
        raise ConfigError(f"gradient_accuracy must be in [0, 1) (0: no check), got {value}")


@dataclass
class ToleranceSettings:
    """Parameters of :class:`TolerancePolicy`.

    Attributes:
        forward_tol, adjoint_tol: the user's tolerances: the tightest used, and the final
            evaluation's.
        loose: the loosest tolerance used (cap).
        eta: a misfit's error may be ``eta`` times the decrease expected of the next step.
        kappa: a comparison is decided when the difference is ``kappa`` times the errors' sum.
        refine: factor of one tightening (a forward solve is continued by this factor).
        safety: the misfit error estimate is multiplied by this.
        J0_accuracy: the initial misfit (the denominator of every reported J/J0) is refined to
            this relative error.
        adjoint_recover: after an accepted step the adjoint tolerance loosens by this factor
            (up to ``loose``) again; a rejection tightens it by ``refine``.
        gradient_accuracy: the largest estimated relative error (max-norm) of the
            preconditioned gradient; every adjoint solve is checked in two stages and continued
            a decade at a time while the estimate is above it. 0: no check (one stage).
    """
    forward_tol: float = 1e-8
    adjoint_tol: float = 1e-8
    loose: float = 1e-3
    eta: float = 0.2
    kappa: float = 2.0
    refine: float = 10.0
    safety: float = 2.0
    adjoint_recover: float = 10.0 ** 0.5
    J0_accuracy: float = 1e-3
    gradient_accuracy: float = 0.1

    def validate(self):
        if not 0 < self.loose < 1:
            raise ConfigError(f"loose tolerance must be in (0, 1), got {self.loose}")
        if self.loose < max(self.forward_tol, self.adjoint_tol):
            raise ConfigError(f"loose tolerance {self.loose:g} must be >= the solve "
                              f"tolerances ({self.forward_tol:g}, {self.adjoint_tol:g})")
        for key in ("eta", "kappa", "safety"):
            v = getattr(self, key)
            if not (v > 0 and math.isfinite(v)):
                raise ConfigError(f"{key} must be > 0 and finite, got {v}")
        check_gradient_accuracy(self.gradient_accuracy)
        for key in ("refine", "adjoint_recover"):
            if not getattr(self, key) > 1:
                raise ConfigError(f"{key} must be > 1, got {getattr(self, key)}")


class TolerancePolicy:
    """The rule of the module doc; pure functions of a JSON state dict."""

    def __init__(self, settings: ToleranceSettings):
        settings.validate()
        self.s = settings

    def initial(self) -> dict:
        s = self.s
        return {"forward_tol": s.loose, "adjoint_tol": s.loose, "J_error": None,
                "decrease": None, "retried": False}

    # --- tolerances -------------------------------------------------------------------------
    def forward_tol(self, st) -> float:
        return st["forward_tol"]

    def adjoint_tol(self, st) -> float:
        return st["adjoint_tol"]

    def at_floor(self, tol) -> bool:
        return tol <= self.s.forward_tol * (1 + 1e-12)

    def adjoint_at_floor(self, st) -> bool:
        return self.adjoint_at_tol_floor(self.adjoint_tol(st))

    def adjoint_at_tol_floor(self, tol) -> bool:
        return tol <= self.s.adjoint_tol * (1 + 1e-12)

    def tighter_adjoint(self, tol) -> float:
        return max(tol / self.s.refine, self.s.adjoint_tol)

    def tighter(self, tol) -> float:
        return max(tol / self.s.refine, self.s.forward_tol)

    def tighten(self, st):
        """A rejection with loose solves: both tolerances ``refine`` times tighter."""
        st["forward_tol"] = self.tighter(st["forward_tol"])
        st["adjoint_tol"] = self.tighter_adjoint(st["adjoint_tol"])

    def relax_adjoint(self, st):
        """After an accepted step: the adjoint tolerance ``adjoint_recover`` times looser (at
        most ``loose``)."""
        st["adjoint_tol"] = max(min(st["adjoint_tol"] * self.s.adjoint_recover, self.s.loose),
                                self.s.adjoint_tol)

    def next_forward_tol(self, tol, error, decrease) -> float:
        """The forcing term: the tolerance whose predicted misfit error is ``eta * decrease``
        (error proportional to the tolerance), clamped, loosened at most ``refine``-fold."""
        s = self.s
        if error > 0 and decrease > 0:
            target = tol * s.eta * decrease / error
        else:                              # exact agreement or no decrease: keep
            target = tol
        target = min(target, tol * s.refine, s.loose)
        return max(target, s.forward_tol)

    # --- estimates and decisions -------------------------------------------------------------
    def error(self, raw) -> float:
        return self.s.safety * raw

    def decided(self, J, e, ref, e_ref) -> bool:
        """Whether ``J`` vs ``ref`` is decided by values of errors ``e``, ``e_ref``."""
        return abs(J - ref) >= self.s.kappa * (e + (e_ref or 0.0))

    def gradient_error(self, change, size) -> float:
        """The relative error estimate of a preconditioned gradient from its last stage:
        ``safety * change / size``, ``change`` the max-norm of the difference to the stage
        ``refine`` times looser and ``size`` the gradient's max-norm (if the error falls by at
        least half per decade of tolerance, it is at most the change)."""
        if size > 0:
            return self.s.safety * change / size
        return 0.0 if change == 0 else math.inf

    def gradient_accurate(self, err) -> bool:
        return err <= self.s.gradient_accuracy

    def accurate_enough(self, e, decrease) -> bool:
        return e <= self.s.eta * decrease
