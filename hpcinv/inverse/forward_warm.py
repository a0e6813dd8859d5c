"""Forward warm starts from a small subspace of earlier forward solutions (issue 12).

After a step ``log K -> log K + d`` the forward solution changes by ``dP ~ (dP/dlogK) d``; the
plain warm start (the latest solution ``P_0``) ignores that change, and late in an inversion,
where the forward solves run to the user's tolerance, it costs about as many PT iterations as
the step moves the solution by decades. The last ``m`` earlier solutions ``P_i`` (of other
models: earlier iterates and rejected line-search trials) span the recent responses
``D_i = P_i - P_0``; the solve starts from::

    P = P_0 + sum_i c_i D_i              (the same c for the fluxes q)

with ``c`` the Galerkin (Ritz) choice for the new model's operator ``A = -div(Kf grad .)``::

    (D_i . A D_j) c = D_i . r_0,         r_0 = f - A P_0

which minimises the energy error ``|P - P*|_A`` over that affine span (``P*`` the new model's
solution). ``A D_j = r_0 - r_j`` (``r_j = f - A P_j``: one reduced-residual launch per kept
solution, at the new K), so the system costs ``m + 1`` launches and ``m (m + 3) / 2``
:func:`~hpcinv.parallel.reduce.reproducible_sum` dot products over the owned cells; it is solved
by a replicated, pivot-dropping Cholesky in plain Python: ``c`` is bitwise the same on every
rank and for any decomposition, and so is the start.

The cheaper fit of the model offsets (``logK - logK_0`` by ``logK_i - logK_0``, no operator
applied) was measured first: it pays less (the step's response is not linear over the kept
steps' range) and needed a guard that a max-norm residual comparison got wrong half of the time
(docs/performance.md, "Inversion cost").

Guard: the energy changes by ``Phi(P) - Phi(P_0) = -1/2 delta . (r_0 + r)`` (``Phi(P) = 1/2
P.A P - f.P``, ``delta = P - P_0``, zero on fixed-pressure sides: an affine combination keeps the
boundary values). The Galerkin choice makes that ``-1/2 c.G c <= 0`` in exact arithmetic; it is
checked after the fact (one more launch and sum), and the plain start is used where rounding or
dropped columns made the fitted start worse. Memory: ``m`` cell fields of the solver dtype and
``m ndim`` float32 face fields (the kept solutions, :mod:`.subspace`); the residuals go into the
solver's residual field (free between solves), and ``r_0``, a product and the reproducible
sum's work array are three float64 fields lent by the backend's scratch pool for the start
(:mod:`hpcinv.backend.scratch`).
"""
from __future__ import annotations

import math

import numpy as np

from ..parallel.reduce import reproducible_sum
from ..physics.residuals import reduced_residual_kernel
from .subspace import SolutionSubspace

#: A Gram pivot below this fraction of its column's diagonal drops the column (its direction is
#: within about 1e-6 of the span of the columns kept before it, in the energy norm).
DEPENDENT = 1e-12


def gram_solve(G, b) -> list[float]:
    """``c`` solving ``G c = b`` for a symmetric positive semidefinite ``G`` (a Gram matrix,
    replicated): Cholesky in plain Python with exactly rounded sums (deterministic on every
    rank), columns in the given order; a column whose pivot falls below :data:`DEPENDENT` times
    its diagonal is dropped (``c_i = 0``)."""
    n = len(b)
    L = [[0.0] * n for _ in range(n)]
    keep = []
    for j in range(n):
        d = G[j][j] - math.fsum(L[j][k] ** 2 for k in keep)
        if not G[j][j] > 0 or not d > DEPENDENT * G[j][j]:
            continue
        L[j][j] = math.sqrt(d)
        for i in range(j + 1, n):
            L[i][j] = (G[i][j] - math.fsum(L[i][k] * L[j][k] for k in keep)) / L[j][j]
        keep.append(j)
    y = [0.0] * n
    for j in keep:                                   # L y = b
        y[j] = (b[j] - math.fsum(L[j][k] * y[k] for k in keep if k < j)) / L[j][j]
    c = [0.0] * n
    for j in reversed(keep):                         # L^T c = y
        c[j] = (y[j] - math.fsum(L[k][j] * c[k] for k in keep if k > j)) / L[j][j]
    return c


class ForwardSubspace(SolutionSubspace):
    """The last ``m`` forward solutions before the latest (whose solution is the objective's
    plain warm start); warm starts by their Galerkin mix at the new permeability.

    Args:
        solver: the objective's :class:`~hpcinv.solvers.DarcySolver` (backend, grid, fields);
        m: how many earlier solutions to keep (>= 1).

    A solution's key is the serial number of its forward solve (for the checkpoint's names).
    """

    prefix, key_name, key_location, option = "forward_basis", "serial", "replicated", \
        "forward_memory"

    def __init__(self, solver, m: int):
        bk, nd = solver.backend, solver.grid.ndim
        super().__init__(bk, solver.K.shape, solver.dtype, nd, m)
        self.solver = solver
        self.has_last = False     # a forward solution is the plain warm start
        self.serial = 0           # forward solves seen
        self._n = math.prod(solver.grid.shape)
        self._res = bk.kernel(reduced_residual_kernel(nd), nd, solver.dtype)
        self._box = ((1,) * nd, tuple(n + 1 for n in solver.last))
        self._bound = {}
        #: Fits tried, fitted starts used, starts the guard replaced by the plain one.
        self.counts = {"fits": 0, "used": 0, "guarded": 0}

    def _residual(self, P=None):
        """``f - A P`` (the solver's K and Qf) into the solver's residual field ``R`` (free
        between solves; returned); ``P`` (default: the
        solver's current pressure) is first made the solver's state, so that its ghosts are
        valid whatever their source (kept solutions read back from a checkpoint written on
        another decomposition have stale ghost layers)."""
        s = self.solver
        if P is not None:
            s.set_state(P)
        bound = self._bound.get(id(s.Pf))
        if bound is None:                          # one binding per ping-pong parity
            bound = self._bound[id(s.Pf)] = self._res.bind(Pf=s.Pf, K=s.K, Qf=s.Qf, E=s.R,
                                                           **s.geometry)
        self.bk.launch(bound, self._box)
        return s.R

    def _dot(self, work, fn, *arrays) -> float:
        """The reproducible sum of ``fn(xp, *arrays)`` over the owned cells; ``work``: two
        float64 scratch fields."""
        s = self.solver
        self.bk.elementwise(fn, *arrays, out=work[0])
        return reproducible_sum(self.bk, s.decomp.comm, work[0], self._n, s.decomp.owned(),
                                work[1])

    def coefficients(self, P0, r0, work) -> list[float]:
        """The Galerkin ``c`` for the start ``P0 + sum_i c_i (P_i - P0)`` at the solver's
        current K and source (collective; ``[]`` when nothing is kept). ``r0``: a float64
        scratch field (``f - A P0`` on return), ``work``: two more."""
        n = len(self)
        if n == 0:
            return []
        bk = self.bk
        bk.elementwise(lambda xp, r: r.astype(xp.float64), self._residual(P0), out=r0)
        Ps = [f[0] for f in self.fields]
        G = [[0.0] * n for _ in range(n)]
        b = [0.0] * n
        for j in range(n):
            rj = self._residual(Ps[j])                          # A D_j = r_0 - r_j
            for i in range(j + 1):
                G[i][j] = G[j][i] = self._dot(
                    work, lambda xp, pi, p0, r0, rj: (pi.astype(xp.float64) - p0) * (r0 - rj),
                    Ps[i], P0, r0, rj)
            b[j] = self._dot(work, lambda xp, pj, p0, r0: (pj.astype(xp.float64) - p0) * r0,
                             Ps[j], P0, r0)
        order = list(range(n - 1, -1, -1))      # newest first: kept when others depend on it
        c = gram_solve([[G[i][j] for j in order] for i in order], [b[i] for i in order])
        out = [0.0] * n
        for pos, i in enumerate(order):
            out[i] = c[pos]
        return out

    def start(self, P0, q0) -> list[float] | None:
        """Set the solver's state for its next solve (its K and source set): the fitted start,
        or the plain warm start ``(P0, q0)`` when nothing is kept, every ``c_i`` is 0 or the
        guard rejects it. Returns ``c`` when the fitted start is used. Collective."""
        with self.bk.scratch(self.shape, np.float64, 3) as (r0, *work):
            return self._start(P0, q0, r0, work)

    def _start(self, P0, q0, r0, work):
        s = self.solver
        c = self.coefficients(P0, r0, work)
        s.set_state(P0, q0)
        if not any(c):
            return None
        self.counts["fits"] += 1
        P, q = s.Pf_new, s.q_new                      # free until the solve
        self.mix(c, P, q, base=(P0, q0))
        s.set_state(P, q)
        # energy change -1/2 delta . (r_0 + r): the fitted start must lower it
        gain = self._dot(work, lambda xp, p, p0, r0, r: (p.astype(xp.float64) - p0) * (r0 + r),
                         s.Pf, P0, r0, self._residual())
        if not gain > 0:
            self.counts["guarded"] += 1
            s.set_state(P0, q0)
            return None
        self.counts["used"] += 1
        return c

    def solved(self, P0, q0):
        """After a forward solve, before its solution replaces the plain warm start ``(P0,
        q0)``: keep that one (when there is one)."""
        if self.has_last:
            self.push(np.array([float(self.serial)]), P0, q0)
        self.serial += 1
        self.has_last = True

    def clear(self):
        super().clear()
        self.has_last = False

    def load_state(self, fields: dict):
        """Restore what :meth:`state` returned; the plain warm start is then the checkpoint's
        (the objective saves state only once it holds one)."""
        super().load_state(fields)
        self.has_last = True
        if self.keys:
            self.serial = int(self.keys[-1][0]) + 1
