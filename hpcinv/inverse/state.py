"""Named state of the inversion's stateful components, for checkpoints.

Each component (the objective's warm starts, the optimiser's arrays) exposes ``state()`` ->
``{name: StateField}`` and ``load_state({name: array})``; a checkpoint writes every field where
it lives and records the layout, so reading it back needs no parsing of names.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..solvers.apt import PTResult

LOCATIONS = ("cell", "face", "replicated")


@dataclass(frozen=True)
class StateField:
    """One array of a component's state.

    Attributes:
        array: a padded local array (``cell``, ``face``; backend or host) or a small host array
            that is the same on every rank (``replicated``).
        location: ``"cell"`` (cell centres), ``"face"`` (faces normal to ``axis``) or
            ``"replicated"``.
        axis: the face axis (``face`` only).
    """
    array: object
    location: str
    axis: int | None = None

    def __post_init__(self):
        if self.location not in LOCATIONS:
            raise ValueError(f"location must be one of {LOCATIONS}, got {self.location!r}")
        if (self.location == "face") != (self.axis is not None):
            raise ValueError("a face field needs its axis, and only a face field has one")


class LifecycleError(RuntimeError):
    """A call made out of order (an adjoint gradient of a forward solution that is not the
    objective's latest)."""


@dataclass(frozen=True)
class ForwardSolution:
    """The forward solve an adjoint gradient differentiates: a handle returned by
    :meth:`AdjointGradient.forward_solve` and taken by :meth:`AdjointGradient.adjoint_gradient`.

    Attributes:
        Pf: the pressure (the objective's kept copy, padded local backend array, ghosts valid);
            valid while this is the objective's latest forward solution.
        result: the forward solve's :class:`~hpcinv.solvers.apt.PTResult`.
        serial: which forward solution of the objective this is.
    """
    Pf: object
    result: PTResult
    serial: int
