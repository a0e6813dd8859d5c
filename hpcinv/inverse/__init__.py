"""Inverse problem: observations, misfit, regularisation and the adjoint-state gradient."""
from .gradient import AdjointGradient, ForwardSolution, LifecycleError
from .observations import Observations

__all__ = ["AdjointGradient", "ForwardSolution", "LifecycleError", "Observations"]
