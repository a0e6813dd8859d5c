"""Gradient descent and L-BFGS with adaptive solve tolerances (:mod:`.tolerance`).

The same steps as :class:`~.optimise.GradientDescent` and :class:`~.optimise.LBFGS`, with three
differences: a trial is first evaluated by its misfit alone (forward solve with an error
estimate) and the gradient is computed only at an accepted point; every misfit comparison is
refined until it is decided (or the user's tolerance is reached); a rejection with loose solves
first tightens and re-evaluates the gradient. :meth:`finish` evaluates the final model at the
user's tolerances. The objective needs ``misfit_estimate``, ``refine_misfit``, ``gradient``,
``set_tolerances`` and ``value_and_gradient`` (:class:`~.gradient.AdjointGradient`).
"""
from __future__ import annotations

from .optimise import LBFGS, LINE_SEARCH_FAILED, GradientDescent, rejected_note


class AdaptiveMixin:
    """Evaluation with tolerances from :attr:`policy` and state in ``scalars["tolerance"]``."""

    policy = None          # a TolerancePolicy, set by make_adaptive

    @property
    def tol_state(self) -> dict:
        return self.scalars["tolerance"]

    def _misfit(self, x, tol, pts):
        """``(J, error)`` at ``x`` from a forward solve to ``tol`` (two stages)."""
        self.scalars["evaluations"] += 1
        J, e, info = self.f.misfit_estimate(x, tol, self.policy.s.refine, self.progress)
        pts[0] += info["forward_iterations"]
        self.unconverged += not info.get("forward_converged", True)
        self._extra.update(forward_tol=tol)
        return J, self.policy.error(e)

    def _refine(self, tol, pts):
        tol = self.policy.tighter(tol)
        J, e, info = self.f.refine_misfit(tol, self.progress)
        pts[0] += info["forward_iterations"]
        self.unconverged += not info.get("forward_converged", True)
        self._extra["refinements"] = self._extra.get("refinements", 0) + 1
        self._extra.update(forward_tol=tol)
        return J, self.policy.error(e), tol

    def _decide(self, J, e, ref, tol, pts):
        """Refine ``J`` until its comparison with ``ref`` is decided (or at the floor)."""
        P, e_ref = self.policy, self.tol_state["J_error"]
        while not P.decided(J, e, ref, e_ref) and not P.at_floor(tol):
            J, e, tol = self._refine(tol, pts)
        return J, e, tol

    def _settle(self, J, e, decrease, tol, pts):
        """Refine an accepted misfit until its error is ``eta`` times its decrease."""
        while not self.policy.accurate_enough(e, decrease) and not self.policy.at_floor(tol):
            J, e, tol = self._refine(tol, pts)
        return J, e, tol

    def _adjoint_stage(self, g_info, pts):
        g, info = g_info
        pts[1] += info["adjoint_iterations"]
        self.unconverged += not info.get("adjoint_converged", True)
        return g

    _checked = None        # (g, preconditioned g) of the last checked gradient

    def _preconditioned(self, g):
        """The optimiser's preconditioned gradient, the one the check computed for ``g``
        taken once instead of computed again (a smoothing is ``smoothing_steps`` halo
        exchanges)."""
        checked, self._checked = self._checked, None
        if checked is not None and checked[0] is g:
            return checked[1]
        return super()._preconditioned(g)

    def _gradient(self, pts):
        """The gradient at the latest forward solution: an adjoint solve to the policy's
        tolerance, checked in stages (``refine`` times looser first) while the estimated error
        of the preconditioned gradient is above ``gradient_accuracy`` (the policy's
        :meth:`~.tolerance.TolerancePolicy.gradient_error`); the tolerance reached is the
        next gradient's start."""
        P, st = self.policy, self.tol_state
        tol = P.adjoint_tol(st)
        if not P.s.gradient_accuracy:                      # the check is off: one stage
            self.f.set_tolerances(adjoint=tol)
            self._extra.update(adjoint_tol=tol)
            return self._adjoint_stage(self.f.gradient(self.progress), pts)
        self.f.set_tolerances(adjoint=min(tol * P.s.refine, 0.5))
        g = self._adjoint_stage(self.f.gradient(self.progress), pts)
        a = super()._preconditioned(g)
        while True:
            g = self._adjoint_stage(self.f.refine_gradient(tol, self.progress), pts)
            a_next = super()._preconditioned(g)
            err = P.gradient_error(self.max_abs(self.sub(a, a_next)), self.max_abs(a_next))
            if P.gradient_accurate(err) or P.adjoint_at_tol_floor(tol):
                break
            a, tol = a_next, P.tighter_adjoint(tol)
        st["adjoint_tol"] = tol
        self._extra.update(adjoint_tol=tol, gradient_error=err)
        self._checked = (g, a_next)
        return g

    def _initial(self, x, pts):
        """``J0`` (refined to ``J0_accuracy`` relative error: every reported ratio J/J0 rests
        on it) and the gradient at ``x``."""
        st, P = self.tol_state, self.policy
        J, e = self._misfit(x, P.forward_tol(st), pts)
        tol = self._extra["forward_tol"]
        while e > P.s.J0_accuracy * abs(J) and not P.at_floor(tol):
            J, e, tol = self._refine(tol, pts)
        st["J_error"] = e
        return J, self._gradient(pts)

    def _accepted(self, J, e, decrease, tol):
        st = self.tol_state
        st.update(J_error=e, retried=False, decrease=decrease,
                  forward_tol=self.policy.next_forward_tol(tol, e, decrease))
        self.policy.relax_adjoint(st)

    def _begin(self):
        self._extra = {}
        self.scalars.setdefault("tolerance", self.policy.initial())

    def record(self, J, step, max_grad, max_dlogK, pts, note="") -> dict:
        rec = super().record(J, step, max_grad, max_dlogK, pts, note)
        rec.update({"misfit_error": self.tol_state["J_error"], "refinements": 0, **self._extra})
        rec.setdefault("forward_tol", None)
        rec.setdefault("adjoint_tol", None)
        return rec

    def finish(self) -> dict:
        """Evaluate the final model at the user's tolerances: ``{misfit, misfit_ratio, ...}``
        for the history's last line (the loose values kept as ``misfit_loose``,
        ``misfit_ratio_loose``)."""
        s, sc = self.policy.s, self.scalars
        self.f.set_tolerances(forward=s.forward_tol, adjoint=s.adjoint_tol)
        J, g, info = self.f.value_and_gradient(self.arrays["x"], self.progress)
        out = {"misfit": J, "misfit_ratio": self.ratio(J), "final_max_grad":
               self.max_abs(g), "final_forward_iterations": info["forward_iterations"],
               "final_adjoint_iterations": info["adjoint_iterations"],
               "final_forward_tol": s.forward_tol, "final_adjoint_tol": s.adjoint_tol}
        if getattr(self.f, "predictor", None) is not None:
            out["final_prediction_work"] = self.f.take_prediction_work()
        sc["J"] = J
        return out


class AdaptiveGradientDescent(AdaptiveMixin, GradientDescent):
    """:class:`GradientDescent` with adaptive tolerances (see the module doc)."""

    def start(self, logK0) -> dict:
        self._begin()
        pts = [0, 0]
        x = self.clip(self.bk.upload(logK0, dtype=self.f.dtype))
        J, g = self._initial(x, pts)
        self.scalars.update(J0=J, J=J, gamma=self.settings.dgamma)
        self.arrays = {"x": x, "d": self._direction(g)}
        return self.record(J, 0.0, self.scalars["max_grad"], 0.0, pts)

    def step(self) -> dict:
        self._begin()
        sc, st, P = self.scalars, self.tol_state, self.policy
        x_old, gamma, pts, note = self.arrays["x"], sc["gamma"], [0, 0], ""
        for _ in range(self.settings.max_trials):
            x_t = self._trial(gamma)
            J, e = self._misfit(x_t, P.forward_tol(st), pts)
            J, e, tol = self._decide(J, e, sc["J"], self._extra["forward_tol"], pts)
            if J <= sc["J"]:
                break
            # The increase is decided (refined until the errors are below half of it); the
            # direction is a descent one for any gradient error below 100 %, so the step is too
            # long: halve it and try again (a trial costs a forward solve: the gradient comes
            # at accepted points only, so an outer iteration is one gradient, as with
            # line_search), and compute the next gradients a little more accurately.
            gamma *= 0.5
            P.tighten(st)
            st["forward_tol"] = max(st["forward_tol"], tol)       # keep the refined one
            note = "line search halved the step"
        else:
            sc["gamma"] = gamma
            return self.reject(J, gamma * 2, sc["max_grad"], pts, rejected_note(gamma))
        J, e, tol = self._settle(J, e, sc["J"] - J, tol, pts)
        decrease = sc["J"] - J
        g = self._gradient(pts)
        self._accepted(J, e, decrease, tol)
        dlogK = self.max_abs(self.sub(x_t, x_old))
        sc.update(J=J, gamma=gamma)
        self.arrays = {"x": x_t, "d": self._direction(g)}
        return self.record(J, gamma, sc["max_grad"], dlogK, pts, note)


class AdaptiveLBFGS(AdaptiveMixin, LBFGS):
    """:class:`LBFGS` with adaptive tolerances: trials by their misfit (with error estimates),
    the gradient at the accepted point only."""

    def start(self, logK0) -> dict:
        self._begin()
        pts = [0, 0]
        z = self.bk.upload(logK0, dtype=self.f.dtype)
        x = self._x_of(z)
        J, g = self._initial(x, pts)
        self.scalars.update(J0=J, J=J, npairs=0)
        self.arrays = {"z": z, "x": x, "gz": self._preconditioned(g)}
        return self.record(J, 0.0, self.max_abs(g), 0.0, pts)

    def step(self) -> dict:
        self._begin()
        sc, A, st, P = self.scalars, self.arrays, self.tol_state, self.policy
        p, slope, t, note = self._search_direction()
        pts = [0, 0]
        tol = P.forward_tol(st)
        for trial in range(self.settings.max_trials):
            z_t = self.axpy(A["z"], t, p)
            x_t = self._x_of(z_t)
            J, e = self._misfit(x_t, tol, pts)
            target = sc["J"] + 1e-4 * t * slope
            J, e, tol = self._decide(J, e, target, self._extra["forward_tol"], pts)
            if J <= target:
                break
            t *= 0.5
            note = f"Armijo backtracking ({trial + 1})"
        else:
            if not st["retried"] and not P.adjoint_at_floor(st):
                P.tighten(st)
                J_old, e_old = self._misfit(A["x"], P.forward_tol(st), pts)
                g = self._gradient(pts)
                st.update(J_error=e_old, retried=True)
                sc.update(J=J_old, npairs=0)
                A["gz"] = self._preconditioned(g)
                return self.record(J_old, t, self.max_abs(g), 0.0, pts, "no Armijo decrease "
                                   "with loose solves: tolerances tightened, gradient "
                                   "re-evaluated, memory reset")
            return self.reject(J, t, self.max_abs(A["gz"]), pts, LINE_SEARCH_FAILED)
        J, e, tol = self._settle(J, e, sc["J"] - J, tol, pts)
        decrease = sc["J"] - J
        g = self._gradient(pts)
        self._accepted(J, e, decrease, tol)
        return self._accept(z_t, x_t, J, g, t, pts, note)


def make_adaptive(objective, smoother, settings, policy, progress=None):
    """The adaptive optimiser of ``settings.method`` with the :class:`TolerancePolicy`
    ``policy``."""
    cls = {"gd": AdaptiveGradientDescent, "lbfgs": AdaptiveLBFGS}.get(settings.method)
    if cls is None:
        settings.validate()
    opt = cls(objective, smoother, settings, progress)
    opt.policy = policy
    return opt
