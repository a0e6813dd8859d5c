"""Warm starts of the gradient's forward and adjoint solves, as strategies (issue 21).

The model changes little between outer iterations, so each solve can start from what the
previous ones found instead of from zero. :class:`~.gradient.AdjointGradient` asks two
strategies, one per solve kind, chosen once (by :func:`warm_starts`, or by the assembly from the
resolved config) and handed to it:

=====================  ================================================================
forward                ``ForwardStart`` (off: from zero), ``PreviousSolution``,
                       ``SubspaceForwardStart`` (:mod:`.forward_warm`),
                       ``PredictedForwardStart`` (:mod:`.forward_prediction`)
adjoint                ``AdjointStart`` (off: from zero), ``RescaledAdjointStart``,
                       ``SubspaceAdjointStart`` (:mod:`.adjoint_warm`)
=====================  ================================================================

Each strategy has one job: set the solver's state before a solve (:meth:`start`) and keep what
the next start needs after it (:meth:`solved`); it saves and restores its own checkpoint state
(the dataset names are those of the checkpoints written before the strategies existed, so they
keep restarting), reports its memory in fields (:meth:`memory_fields`) and can be switched off
(:meth:`off`: the plain strategy of its kind). The warm starts begin after the first gradient
(:meth:`arm`): the forward solves of the first misfit evaluations start from zero.

Every kept solution (the latest of each kind, the subspaces') holds its pressure in the solver
dtype and its fluxes in float32 (issue 20, :mod:`.subspace`): ``1 + ndim / 2`` float64 fields
instead of ``ndim + 1`` (:func:`~.subspace.kept_fields`). Checkpoints keep the dataset names;
older ones (float64 fluxes) restart, their fluxes rounded on reading.

One forward strategy at a time: the forward subspace and the coarse correction exclude each
other by construction (:func:`warm_starts` checks the two config keys once).
"""
from __future__ import annotations

import math

import numpy as np

from ..errors import ConfigError
from .adjoint_warm import AdjointSubspace
from .forward_warm import ForwardSubspace
from .state import StateField
from .subspace import FLUX_DTYPE, KeptSolution, kept_fields

__all__ = ["ForwardStart", "PreviousSolution", "SubspaceForwardStart", "PredictedForwardStart",
           "AdjointStart", "RescaledAdjointStart", "SubspaceAdjointStart", "warm_starts",
           "attached"]


class _Strategy:
    """What both kinds share: the kept solution (none when off), readiness, checkpoint."""

    kind = ""
    solution: KeptSolution | None = None
    subspace = None       # earlier solutions (a SolutionSubspace) the start mixes
    ready = False         # a kept solution is a valid start (after the first gradient)

    def attach(self, solver):
        """Allocate the strategy's fields for ``solver`` (the objective's; called once)."""

    def arm(self):
        """The kept solution is a valid start from now on (a gradient was computed)."""
        self.ready = self.solution is not None

    def memory_fields(self, ndim: int, f64: int = 1) -> float:
        """Padded local fields of the solver dtype the strategy keeps (``f64``: such fields per
        float64 one); 0 when off."""
        return 0

    def state(self) -> dict:
        """Named :class:`~.state.StateField` records (empty when off or not ready)."""
        if not self.ready:
            return {}
        return {**self.solution.state(),
                **(self.subspace.state() if self.subspace is not None else {})}

    def load_state(self, fields: dict):
        """Restore what :meth:`state` returned (an empty dict: nothing was saved)."""
        if self.solution is not None and fields:
            self.solution.load_state(fields)
            if self.subspace is not None:
                self.subspace.load_state(fields)
            self.ready = True

    def reset(self):
        """Forget every kept solution: the next solve starts as the first one did."""
        self.ready = False
        if self.subspace is not None:
            self.subspace.clear()


class ForwardStart(_Strategy):
    """No forward warm start: every forward solve from zero (the strategy switched off)."""

    kind = "forward"

    def start(self, solver, logK):
        """Set ``solver``'s state for a forward solve of the model ``logK`` (padded local host
        array; the solver's K and source are set)."""
        if self.ready:
            self._start_warm(solver, logK)
        else:
            solver.set_state(homogeneous=False)

    def _start_warm(self, solver, logK):
        solver.set_state(self.solution.P, self.solution.q, homogeneous=False)

    def solved(self, solver, logK):
        """After a forward solve of ``logK``: keep what the next start needs."""
        if self.solution is not None:
            self.solution.keep(solver)

    def continued(self, solver):
        """After the latest forward solve was continued to a tighter tolerance."""
        if self.solution is not None:
            self.solution.keep(solver)

    def take_work(self) -> float | None:
        """Extra work since the last call in fine PT iterations (``None``: none is done)."""
        return None

    def off(self) -> ForwardStart:
        return ForwardStart()


class PreviousSolution(ForwardStart):
    """Each forward solve starts from the previous forward solution (``1 + ndim / 2`` float64
    fields: :func:`~.subspace.kept_fields`)."""

    def attach(self, solver):
        self.solution = KeptSolution(solver, "forward")

    def memory_fields(self, ndim: int, f64: int = 1) -> float:
        return kept_fields(ndim, f64)


class SubspaceForwardStart(PreviousSolution):
    """The previous solution plus the Galerkin mix of its differences to the ``m`` earlier
    ones (:class:`~.forward_warm.ForwardSubspace`; APT solvers only)."""

    def __init__(self, m: int):
        self.m = m

    def attach(self, solver):
        super().attach(solver)
        self.subspace = ForwardSubspace(solver, self.m)

    def memory_fields(self, ndim: int, f64: int = 1) -> float:
        return (self.m + 1) * kept_fields(ndim, f64)      # its sums' fields are lent scratch

    def _start_warm(self, solver, logK):
        self.subspace.start(self.solution.P, self.solution.q)

    def solved(self, solver, logK):
        self.subspace.solved(self.solution.P, self.solution.q)
        super().solved(solver, logK)

    def reset(self):
        super().reset()
        self.subspace.serial = 0


class PredictedForwardStart(PreviousSolution):
    """The previous solution corrected by the coarse-grid change of the pressure
    (:class:`~.forward_prediction.CoarsePrediction` ``predictor``); checkpoints keep the warm
    start's model (``forward_warm_logK``) and whether its coarse pressure was cached."""

    def __init__(self, predictor):
        self.predictor = predictor
        self._token, self._logK = 0, None      # the warm start's model and its token

    def _start_warm(self, solver, logK):
        P = self.solution.P
        if self._logK is not None:
            P0 = self.predictor.predict(logK, self._token, self._logK, P)
            P = P if P0 is None else P0
        solver.set_state(P, self.solution.q, homogeneous=False)

    def solved(self, solver, logK):
        super().solved(solver, logK)
        self._token += 1
        self._logK = logK.copy()
        self.predictor.commit(self._token)

    def take_work(self) -> float:
        return self.predictor.take_work()

    def memory_fields(self, ndim: int, f64: int = 1) -> float:
        """The previous solution and the coarse solver (``1 / factor**ndim`` of a fine one;
        the warm start's model is a host array)."""
        return kept_fields(ndim, f64) + math.ceil((6 + 2 * ndim) * self.predictor.cell_ratio)

    def state(self) -> dict:
        out = super().state()
        if self.ready and self._logK is not None:
            out["forward_warm_logK"] = StateField(self._logK, "cell")
            out["forward_warm_cached"] = StateField(
                np.array([float(self.predictor.cached(self._token))]), "replicated")
        return out

    def load_state(self, fields: dict):
        super().load_state(fields)
        if "forward_warm_logK" in fields:
            w = fields["forward_warm_logK"]
            self._logK = np.array(w if isinstance(w, np.ndarray) else
                                  self.solution.bk.to_host(w), dtype=float)
            self._token += 1
            cached = np.asarray(fields.get("forward_warm_cached", [0.0]), dtype=float)
            self.predictor.forget(was_cached=bool(cached[0]))

    def reset(self):
        super().reset()
        self._logK, self._token = None, 0
        self.predictor.forget()
        self.predictor.take_work()


class AdjointStart(_Strategy):
    """No adjoint warm start: every adjoint solve from zero (the strategy switched off)."""

    kind = "adjoint"
    psi_w = None          # the kept solution's source weights dJ/dP (nobs,), replicated

    def start(self, solver, w):
        """Set ``solver``'s state for an adjoint solve of the source spread from the weights
        ``w`` (``None``: a source of unknown shape; the solve starts from zero)."""
        if self.ready and not self._prepare(w):
            solver.set_state(self.solution.P, self.solution.q, homogeneous=True)
        else:
            solver.set_state(homogeneous=True)

    def _prepare(self, w) -> bool:
        """Make the kept solution the start for ``w``; ``True``: start from zero instead."""
        return True

    def solved(self, solver, w):
        """After an adjoint solve of the weights ``w``: keep it (and ``w``)."""
        if self.solution is not None:
            self.solution.keep(solver)
        self.psi_w = None if w is None else np.array(w, dtype=float)

    def resume(self, solver):
        """Set ``solver``'s state to continue the latest adjoint solve (the kept copy: the
        gradient's transposes used the solver's buffers as scratch; from zero when off)."""
        if self.solution is not None:
            solver.set_state(self.solution.P, self.solution.q, homogeneous=True)
        else:
            solver.set_state(homogeneous=True)

    def continued(self, solver):
        """After the latest adjoint solve was continued to a tighter tolerance."""
        if self.solution is not None:
            self.solution.keep(solver)

    def kept(self):
        """``(psi_P, w_psi)``: the kept adjoint pressure and its source's weights, or ``None``
        (off, not ready or of an unknown source); what the misfit error estimate needs."""
        if self.ready and self.psi_w is not None:
            return self.solution.P, self.psi_w
        return None

    #: The replicated weights a checkpoint keeps: attribute -> dataset name.
    weight_names = {"psi_w": "adjoint_weights"}

    def state(self) -> dict:
        out = super().state()
        for attr, name in self.weight_names.items():
            if self.ready and getattr(self, attr) is not None:
                out[name] = StateField(getattr(self, attr), "replicated")
        return out

    def load_state(self, fields: dict):
        super().load_state(fields)
        for attr, name in self.weight_names.items():
            if self.solution is not None and name in fields:
                setattr(self, attr, np.array(fields[name], dtype=float))

    def reset(self):
        super().reset()
        self.psi_w = None

    def off(self) -> AdjointStart:
        return AdjointStart()


class RescaledAdjointStart(AdjointStart):
    """The previous adjoint solution scaled to the new source: the solution is linear in its
    source ``S^T w``, and ``alpha = <w, w_old> / <w_old, w_old>`` makes ``alpha psi_old`` the
    best start along the old source (without it the start can be worse than zero, as the source
    shrinks while the misfit falls). ``w`` is replicated: alpha is bitwise the same on every
    rank and costs no reduction."""

    w_old = None          # the weights of the previous adjoint source
    weight_names = {"w_old": "adjoint_source_weights", **AdjointStart.weight_names}

    def attach(self, solver):
        self.solution = KeptSolution(solver, "adjoint")

    def memory_fields(self, ndim: int, f64: int = 1) -> float:
        return kept_fields(ndim, f64)

    def start(self, solver, w):
        w_old = self.w_old
        self.w_old = None if w is None else np.array(w, dtype=float)
        if w is not None and self.ready and w_old is not None:
            den = float(w_old @ w_old)
            alpha = float(w @ w_old) / den if den > 0 else 0.0
            for a in (self.solution.P, *self.solution.q):
                self.solution.bk.elementwise(lambda xp, v, alpha=alpha: v * alpha, a, out=a)
        super().start(solver, w)

    def _prepare(self, w) -> bool:
        return w is None

    def reset(self):
        super().reset()
        self.w_old = None


class NewestSolution:
    """The newest solution of an :class:`~.adjoint_warm.AdjointSubspace`, standing in for a
    :class:`KeptSolution` (the same ``P``, ``q``, checkpoint names and loading): the subspace
    keeps the latest adjoint solution anyway, so a second copy would be ``1 + ndim / 2`` fields
    of nothing new (issue 20). A solve of a source without weights is kept as the subspace's
    only solution, under an empty key (:data:`NO_WEIGHTS`), which no start mixes."""

    def __init__(self, subspace, kind: str = "adjoint"):
        self.subspace, self.kind, self.bk = subspace, kind, subspace.bk

    P = property(lambda self: self.subspace.fields[-1][0])
    q = property(lambda self: self.subspace.fields[-1][1])

    def keep(self, solver):
        """Nothing to copy: the strategy pushes the solve into the subspace."""

    state = KeptSolution.state

    def load_state(self, fields: dict):
        """Nothing to load: the strategy restores the subspace (:meth:`SubspaceAdjointStart.
        load_state`)."""


#: The key of an adjoint solution whose source came without observation weights.
NO_WEIGHTS = np.zeros(0)


class SubspaceAdjointStart(AdjointStart):
    """The least-squares mix of the last ``m`` adjoint solutions
    (:class:`~.adjoint_warm.AdjointSubspace`), the newest of which is also the kept solution
    (:class:`NewestSolution`: ``m`` kept solutions in all)."""

    def __init__(self, m: int):
        self.m = m

    def attach(self, solver):
        self.subspace = AdjointSubspace(solver.backend, solver.K.shape, solver.dtype,
                                        solver.grid.ndim, self.m)
        self.solution = NewestSolution(self.subspace)

    def memory_fields(self, ndim: int, f64: int = 1) -> float:
        return self.m * kept_fields(ndim, f64)

    def start(self, solver, w):
        """The mix of the kept solutions fitting ``w``, written into the solver's free
        ping-pong buffers (the fluxes summed in :data:`~.subspace.FLUX_DTYPE`, as their copies
        hold them), or zero (no weights, no fit)."""
        sub = self.subspace
        if (self.ready and w is not None and
                sub.start(w, solver.Pf_new, solver.q_new, FLUX_DTYPE) is not None):
            solver.set_state(solver.Pf_new, solver.q_new, homogeneous=True)
        else:
            solver.set_state(homogeneous=True)

    def solved(self, solver, w):
        super().solved(solver, w)
        sub = self.subspace
        if w is None or (len(sub) and sub.keys[-1].size == 0):
            sub.clear()                         # no fit mixes a solve without weights
        sub.push(NO_WEIGHTS if w is None else w, solver.Pf, solver.q)

    def continued(self, solver):
        if len(self.subspace):
            self.subspace.replace_last(solver.Pf, solver.q)

    def state(self) -> dict:
        out = super().state()
        if self.ready and self.subspace.keys[-1].size == 0:    # a cleared subspace: its
            out = {k: v for k, v in out.items()                  # solution is adjoint_Pf's
                   if not k.startswith(self.subspace.prefix)}
        return out

    def load_state(self, fields: dict):
        super().load_state(fields)
        if fields and not len(self.subspace):     # the last source had no weights
            q = [fields[f"adjoint_q{'xyz'[a]}"] for a in range(self.subspace.ndim)]
            self.subspace.push(NO_WEIGHTS, fields["adjoint_Pf"], q)


def warm_starts(warm_start: bool, adjoint_memory: int = 0, forward_memory: int = 0,
                prediction: int = 0, predictor=None) -> tuple[ForwardStart, AdjointStart]:
    """``(forward strategy, adjoint strategy)``, not yet attached: off without ``warm_start``;
    else the adjoint subspace of ``adjoint_memory`` solutions (0: the rescaled previous one),
    and the forward subspace of ``forward_memory`` solutions, or the correction on a
    ``prediction`` times coarser grid (``predictor()`` makes the
    :class:`~.forward_prediction.CoarsePrediction`, or returns ``None``: not possible), or the
    previous solution. The arguments are the ``[inversion]`` keys of the same names; the
    forward subspace and the correction are alternatives (together the misfit error estimates
    become unreliable: docs/performance.md), checked here and nowhere else."""
    if not warm_start:
        return ForwardStart(), AdjointStart()
    if forward_memory > 0 and prediction:
        raise ConfigError(f"inversion.forward_prediction = {prediction} and "
                          f"inversion.forward_memory = {forward_memory} are alternatives "
                          f"(together the misfit error estimates become unreliable); set one "
                          f"of them to 0")
    adj = SubspaceAdjointStart(adjoint_memory) if adjoint_memory > 0 else RescaledAdjointStart()
    if forward_memory > 0:
        return SubspaceForwardStart(forward_memory), adj
    coarse = predictor() if prediction and predictor is not None else None
    return (PredictedForwardStart(coarse) if coarse is not None else PreviousSolution()), adj


def attached(solver, forward_start=None, adjoint_start=None, warm_start: bool = False,
             adjoint_memory: int = 0) -> tuple[ForwardStart, AdjointStart]:
    """The strategies ``forward_start``, ``adjoint_start`` (``None``: the one of
    ``warm_starts(warm_start, adjoint_memory)``) with their fields allocated for ``solver``."""
    if forward_start is None or adjoint_start is None:
        fs, ad = warm_starts(warm_start, adjoint_memory)
        forward_start, adjoint_start = forward_start or fs, adjoint_start or ad
    for st in (forward_start, adjoint_start):
        st.attach(solver)
    return forward_start, adjoint_start
