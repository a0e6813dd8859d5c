"""Inverse problem: observations, misfit, regularisation and the adjoint-state gradient."""
from .gradient import AdjointGradient
from .observations import Observations

__all__ = ["AdjointGradient", "Observations"]
