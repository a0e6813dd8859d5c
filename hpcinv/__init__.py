"""hpcinv: adjoint-based inversion of permeability on GPU supercomputers.

Distributed accelerated pseudo-transient (APT) solvers for steady Darcy flow on staggered
Cartesian grids, with one kernel source for GPUs (CuPy) and CPUs (C++/OpenMP).
"""
from .model import problems
from .api import forward, gradient
from .errors import HpcinvError
from .model.grid import Grid

__all__ = ["Grid", "HpcinvError", "problems", "forward", "gradient"]
__version__ = "0.1.0"
