"""What an inversion does when its inner (forward/adjoint PT) solves do not converge.

Each history record carries ``unconverged_solves``: how many of the iteration's solves stopped
at ``maxiter`` above the tolerance (a misfit or gradient from such a solve is inaccurate, and
gradient descent then typically rejects every step). Policy: every such iteration prints one
warning line (also with ``--quiet``); after :data:`MAX_CONSECUTIVE` such iterations in a row the
run stops with :class:`~hpcinv.errors.InnerSolveError` (exit status 1), naming the keys to raise.
The last periodic checkpoint is kept, so the run continues with ``--restart DIR --maxiter N``
(``solver.maxiter``/``adjoint.maxiter`` may change across a restart).
"""
from __future__ import annotations

from ..errors import InnerSolveError

MAX_CONSECUTIVE = 3


def _fmt(v) -> str:
    return "default (1000 x the largest grid size)" if v is None else str(v)


class InnerSolvePolicy:
    """Count consecutive iterations with unconverged inner solves; warn, then stop."""

    def __init__(self, forward_params, adjoint_params, run_dir, warn,
                 limit: int = MAX_CONSECUTIVE):
        self.solver, self.adjoint = forward_params, adjoint_params
        self.run_dir, self.warn, self.limit = run_dir, warn, limit
        self.streak = 0

    def check(self, rec: dict) -> None:
        n = int(rec.get("unconverged_solves", 0) or 0)
        if n == 0:
            self.streak = 0
            return
        self.streak += 1
        s, a = self.solver, self.adjoint
        hint = (f"raise solver.maxiter (now {_fmt(s.maxiter)}) / adjoint.maxiter "
                f"(now {_fmt(a.maxiter)})")
        self.warn(f"hpcinv: warning: iteration {rec['iteration']}: {n} inner solve(s) did not "
                  f"converge (tol {s.tol:g}/{a.tol:g}); {hint}")
        if self.streak >= self.limit:
            raise InnerSolveError(
                f"inner solves did not converge in {self.streak} consecutive iterations "
                f"(last: {rec['iteration']}); {hint}, e.g. hpcinv invert --restart "
                f"{self.run_dir} --maxiter N (continues from the last checkpoint)")
