"""The adaptive evaluator: solve tolerances from the optimiser's progress (:mod:`.tolerance`).

:class:`AdaptiveTolerance` is what :class:`~.optimise.GradientDescent` and
:class:`~.optimise.LBFGS` call instead of :class:`~.objective.FixedTolerance`, with three
differences: a trial is evaluated by its misfit alone (forward solve with an error estimate)
and the gradient is computed only at an accepted point; every misfit comparison is refined until
it is decided (or the user's tolerance is reached); a rejection with loose solves first tightens
the tolerances (gradient descent: for its next trial; L-BFGS: after a failed search, the
gradient re-evaluated at the accepted model). :meth:`AdaptiveTolerance.finish` evaluates the
final model at the user's tolerances. The objective is an
:class:`~.objective.AdaptiveObjective` (:class:`~.gradient.AdjointGradient`).
"""
from __future__ import annotations

from .objective import FixedTolerance


class AdaptiveTolerance(FixedTolerance):
    """Evaluations with tolerances from ``policy`` (a :class:`~.tolerance.TolerancePolicy`) and
    their state in the optimiser's ``scalars["tolerance"]`` (checkpointed with them)."""

    decided = True       # a trial's misfit is refined until its comparison is decided

    def __init__(self, policy):
        self.policy = policy
        self._extra = {}          # this iteration's keys for the history record
        self._trial = None        # (error, tolerance) of the latest trial's misfit

    @property
    def tol_state(self) -> dict:
        return self.opt.scalars["tolerance"]

    def begin(self):
        self._extra = {}
        self._trial = None
        self.opt.scalars.setdefault("tolerance", self.policy.initial())

    def by_misfit(self, line_search: bool) -> bool:
        return True

    def first(self, x, pts):
        """``J0`` (refined to ``J0_accuracy`` relative error: every reported ratio J/J0 rests
        on it) and the gradient at ``x``."""
        st, P = self.tol_state, self.policy
        J, e = self._misfit(x, P.forward_tol(st), pts)
        tol = self._extra["forward_tol"]
        while e > P.s.J0_accuracy * abs(J) and not P.at_floor(tol):
            J, e, tol = self._refine(tol, pts)
        st["J_error"] = e
        return J, self._gradient(pts)

    def misfit(self, x, target, pts) -> float:
        """The trial's misfit, refined until its comparison with ``target`` is decided (or at
        the floor); a trial after a shortened step without tightening (L-BFGS) starts at the
        tolerance its predecessor reached."""
        tol = self._trial[1] if self._trial is not None else \
            self.policy.forward_tol(self.tol_state)
        J, e = self._misfit(x, tol, pts)
        J, e, tol = self._decide(J, e, target, self._extra["forward_tol"], pts)
        self._trial = (e, tol)
        return J

    def backtracked(self, tighten: bool):
        if tighten:
            # The increase is decided (refined until the errors are below half of it); the
            # direction is a descent one for any gradient error below 100 %, so the step is too
            # long: it is halved (a trial costs a forward solve: the gradient comes at accepted
            # points only, so an outer iteration is one gradient, as with line_search), and
            # the next gradients are computed a little more accurately.
            st = self.tol_state
            self.policy.tighten(st)
            st["forward_tol"] = max(st["forward_tol"], self._trial[1])   # keep the refined one
            self._trial = None

    def gradient_after(self, x, J, reference, pts):
        """Refine the accepted misfit until its error is ``eta`` times its decrease, then the
        gradient (checked); the tolerances for the next iteration follow."""
        (e, tol), decided = self._trial, reference - J
        while not self.policy.accurate_enough(e, decided) and not self.policy.at_floor(tol):
            J, e, tol = self._refine(tol, pts)
        decrease = reference - J
        g = self._gradient(pts)
        st = self.tol_state
        st.update(J_error=e, retried=False, decrease=decrease,
                  forward_tol=self.policy.next_forward_tol(tol, e, decrease))
        self.policy.relax_adjoint(st)
        return J, g

    def reevaluate(self, x, pts):
        """Once per accepted model: both tolerances tightened, the misfit and gradient at ``x``
        evaluated again (``None`` when already retried or at the adjoint floor)."""
        P, st = self.policy, self.tol_state
        if st["retried"] or P.adjoint_at_floor(st):
            return None
        P.tighten(st)
        J, e = self._misfit(x, P.forward_tol(st), pts)
        g = self._gradient(pts)
        st.update(J_error=e, retried=True)
        return J, g

    def annotate(self, rec: dict):
        rec.update({"misfit_error": self.tol_state["J_error"], "refinements": 0,
                    **self._extra})
        rec.setdefault("forward_tol", None)
        rec.setdefault("adjoint_tol", None)

    def finish(self) -> dict:
        """Evaluate the final model at the user's tolerances: ``{misfit, misfit_ratio, ...}``
        for the history's last line (the loose values kept as ``misfit_loose``,
        ``misfit_ratio_loose``)."""
        opt, s = self.opt, self.policy.s
        opt.f.set_tolerances(forward=s.forward_tol, adjoint=s.adjoint_tol)
        J, g, info = opt.f.value_and_gradient(opt.arrays["x"], opt.progress)
        out = {"misfit": J, "misfit_ratio": opt.ratio(J), "final_max_grad": opt.max_abs(g),
               "final_forward_iterations": info["forward_iterations"],
               "final_adjoint_iterations": info["adjoint_iterations"],
               "final_forward_tol": s.forward_tol, "final_adjoint_tol": s.adjoint_tol}
        work = opt.f.take_prediction_work()
        if work is not None:
            out["final_prediction_work"] = work
        opt.scalars["J"] = J
        return out

    # --- the stages -----------------------------------------------------------------------
    def _misfit(self, x, tol, pts):
        """``(J, error)`` at ``x`` from a forward solve to ``tol`` (two stages)."""
        opt = self.opt
        opt.scalars["evaluations"] += 1
        J, e, info = opt.f.misfit_estimate(x, tol, self.policy.s.refine, opt.progress)
        pts[0] += info["forward_iterations"]
        opt.unconverged += not info.get("forward_converged", True)
        self._extra.update(forward_tol=tol)
        return J, self.policy.error(e)

    def _refine(self, tol, pts):
        opt = self.opt
        tol = self.policy.tighter(tol)
        J, e, info = opt.f.refine_misfit(tol, opt.progress)
        pts[0] += info["forward_iterations"]
        opt.unconverged += not info.get("forward_converged", True)
        self._extra["refinements"] = self._extra.get("refinements", 0) + 1
        self._extra.update(forward_tol=tol)
        return J, self.policy.error(e), tol

    def _decide(self, J, e, ref, tol, pts):
        """Refine ``J`` until its comparison with ``ref`` is decided (or at the floor)."""
        P, e_ref = self.policy, self.tol_state["J_error"]
        while not P.decided(J, e, ref, e_ref) and not P.at_floor(tol):
            J, e, tol = self._refine(tol, pts)
        return J, e, tol

    def _adjoint_stage(self, g_info, pts):
        g, info = g_info
        pts[1] += info["adjoint_iterations"]
        self.opt.unconverged += not info.get("adjoint_converged", True)
        return g

    def _gradient(self, pts):
        """The gradient at the latest forward solution: an adjoint solve to the policy's
        tolerance, checked in stages (``refine`` times looser first) while the estimated error
        of the preconditioned gradient is above ``gradient_accuracy`` (the policy's
        :meth:`~.tolerance.TolerancePolicy.gradient_error`); the tolerance reached is the
        next gradient's start. The checked preconditioned gradient is handed to the optimiser
        (not computed again)."""
        opt, P, st = self.opt, self.policy, self.tol_state
        tol = P.adjoint_tol(st)
        if not P.s.gradient_accuracy:                      # the check is off: one stage
            opt.f.set_tolerances(adjoint=tol)
            self._extra.update(adjoint_tol=tol)
            return self._adjoint_stage(opt.f.gradient(opt.progress), pts)
        opt.f.set_tolerances(adjoint=min(tol * P.s.refine, 0.5))
        # only the preconditioned stages are compared: no gradient is held while the next is
        # computed, and their difference overwrites the older (fields at the high-water mark)
        a = opt.precondition(self._adjoint_stage(opt.f.gradient(opt.progress), pts))
        while True:
            g = self._adjoint_stage(opt.f.refine_gradient(tol, opt.progress), pts)
            a_next = opt.precondition(g)
            err = P.gradient_error(opt.max_abs(opt.sub(a, a_next, out=a)),   # a: done with
                                   opt.max_abs(a_next))
            if P.gradient_accurate(err) or P.adjoint_at_tol_floor(tol):
                break
            a, tol, g = a_next, P.tighter_adjoint(tol), None
        st["adjoint_tol"] = tol
        self._extra.update(adjoint_tol=tol, gradient_error=err)
        opt._checked = (g, a_next)
        return g
