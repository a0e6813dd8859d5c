"""What the optimisers call: the objective's interfaces and the fixed-tolerance evaluator.

:class:`Objective` is what every optimiser needs of the function it minimises over log K;
:class:`AdaptiveObjective` what the adaptive evaluator (:mod:`.adaptive`) needs besides;
:class:`~.gradient.AdjointGradient` is both. An optimiser (:mod:`.optimise`) evaluates the
objective only through its evaluator: :class:`FixedTolerance` here, or
:class:`~.adaptive.AdaptiveTolerance`; both have the methods of :class:`FixedTolerance`.
"""
from __future__ import annotations

from typing import Protocol


class Objective(Protocol):
    """What an optimiser needs of the function it minimises over log K (padded local arrays)."""

    backend: object        # the compute backend of the model arrays
    decomp: object         # the decomposition (owned cells, communicator)
    dtype: object          # the model arrays' dtype

    def value(self, logK, progress=None):
        """``(J, info)``."""

    def value_and_gradient(self, logK, progress=None):
        """``(J, dJ/dlogK, info)``; ``info`` has ``forward_iterations``/``adjoint_iterations``."""

    def take_prediction_work(self) -> float | None:
        """Extra work of the solves' warm starts since the last call, in fine PT iterations
        (``None``: they do none; the history then has no ``prediction_work``)."""


class AdaptiveObjective(Objective, Protocol):
    """What :class:`~.adaptive.AdaptiveTolerance` needs besides :class:`Objective` (see
    :class:`~.gradient.AdjointGradient` for the meaning of each)."""

    forward_params: object     # the forward solves' PTParams (``tol``)

    def set_tolerances(self, forward=None, adjoint=None):
        """Solve the next forward / adjoint solves to these tolerances."""

    def misfit_estimate(self, logK, tol, refine, progress=None):
        """``(J, error, info)``: a two-stage misfit with its error estimate."""

    def refine_misfit(self, tol, progress=None):
        """``(J, error, info)``: the latest forward solve continued to ``tol``."""

    def gradient(self, progress=None):
        """``(dJ/dlogK, info)`` at the latest forward solution (an adjoint solve)."""

    def refine_gradient(self, tol, progress=None):
        """``(dJ/dlogK, info)``: the latest gradient's adjoint solve continued to ``tol``."""


class FixedTolerance:
    """The plain evaluator: every solve to the objective's own tolerances; a trial is judged by
    its misfit alone only in a gradient-descent line search, and a step is taken only if the
    misfit evaluated with its gradient decreased (:attr:`decided` is ``False``)."""

    decided = False      # whether a trial's misfit, once compared, is final

    def bind(self, opt):
        """The optimiser whose evaluations (counts, progress) this is."""
        self.opt = opt

    def begin(self):
        """An iteration (or the start) begins."""

    def by_misfit(self, line_search: bool) -> bool:
        """Whether trials are judged by their misfit alone (``line_search``: the optimiser's
        wish)."""
        return line_search

    def first(self, x, pts):
        """``(J, g)`` at the initial model ``x``; PT iterations added to ``pts``."""
        return self.value_and_gradient(x, pts)

    def misfit(self, x, target, pts) -> float:
        """A trial's misfit (to be compared with ``target``)."""
        J, _, info = self.opt.evaluate(x, with_gradient=False)
        pts[0] += info["forward_iterations"]
        return J

    def value_and_gradient(self, x, pts):
        """``(J, g)`` at ``x``."""
        J, g, info = self.opt.evaluate(x)
        pts[0] += info["forward_iterations"]
        pts[1] += info["adjoint_iterations"]
        return J, g

    def gradient_after(self, x, J, reference, pts):
        """``(J, g)`` at the trial ``x`` whose misfit ``J`` was found below ``reference``: here
        a new evaluation with the gradient."""
        return self.value_and_gradient(x, pts)

    def backtracked(self, tighten: bool):
        """A trial was rejected and the step shortened (``tighten``: solve more accurately)."""

    def reevaluate(self, x, pts):
        """``(J, g)`` at ``x`` with tighter tolerances after a failed search, or ``None``."""
        return None

    def annotate(self, rec: dict):
        """Add the evaluator's keys to a history record."""

    def finish(self) -> dict | None:
        """The final model's evaluation for the history's last line (``None``: the last line
        is already at the final tolerances)."""
        return None
