"""The physical model: the distributed grid and the problems (permeability, sources, wells,
fixed-pressure sides), with the built-in geothermal problems in one place
(:mod:`hpcinv.model.geothermal`). Nothing here reads a config."""
from . import problems
from .grid import Grid
from .problems import Problem, Well

__all__ = ["Grid", "Problem", "Well", "problems"]
