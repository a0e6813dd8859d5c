"""Named state of the inversion's stateful components, for checkpoints.

Each component (the objective's warm starts, the optimiser's arrays) exposes ``state()`` ->
``{name: StateField}`` and ``load_state({name: array})``; a checkpoint writes every field where
it lives and records the layout, so reading it back needs no parsing of names.
"""
from __future__ import annotations

from dataclasses import dataclass

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
