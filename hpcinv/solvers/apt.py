"""The accelerated pseudo-transient (APT) iteration loop, shared by forward and adjoint solves.

Pseudo-time parameters (Räss et al. 2022, GMD 15:5757), for grid spacing ``d`` and the largest
domain length ``L``::

    vdtau = cfl * min(d)            pseudo-time wave speed x step
    theta = L / (Re * vdtau)        flux damping:  q  <- q - Rq / (1 + theta)
    beta  = vdtau * L / Re          pressure step: Pf <- Pf - RPf * beta / Kmax_loc

so that ``beta * Kmax / theta = vdtau**2`` (stable for ``cfl <= 1/sqrt(ndim)``) and ``Re``
sets the damping (``Re = 2 pi`` is optimal for steady diffusion).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from mpi4py import MPI

from ..errors import ConfigError, SolverDivergedError

#: A residual this many times above the smallest one seen so far means divergence.
DIVERGENCE_FACTOR = 1e4
#: After a check at iteration ``c`` the next comes ``c // CHECK_GROWTH`` iterations later (at
#: least ``first_check``, at most ``ncheck``): a solve that converges before ``ncheck *
#: CHECK_GROWTH`` iterations runs at most ``1 / CHECK_GROWTH`` more than it needs.
CHECK_GROWTH = 4


def next_check(last: int, ncheck: int, first_check: int = 8) -> int:
    """The iteration of the residual check after one at iteration ``last`` (0: the solve's
    start).

    Warm-started solves at loose tolerances converge in tens of iterations, fewer the smaller
    the grid, while a check every ``ncheck`` iterations made each of them cost at least
    ``ncheck`` (at 32^3 most of an inversion's work). The gaps therefore grow with the
    iterations done: ``first_check`` first, then a quarter of the iterations done, up to
    ``ncheck``. A solve overshoots its convergence by at most a quarter (or ``first_check``
    iterations); at ``ncheck = 100``, ``first_check = 8`` a solve of 1000 iterations makes 21
    checks instead of 10 (each one reduction and one host sync). ``first_check >= ncheck``
    gives a check every ``ncheck`` iterations.
    """
    return last + min(ncheck, max(first_check, last // CHECK_GROWTH))


def default_cfl(ndim: int) -> float:
    """Default Courant number: just inside the stability limit ``1/sqrt(ndim)``."""
    return 0.95 / math.sqrt(ndim)


@dataclass
class PTParams:
    """APT solver parameters.

    Attributes:
        cfl: Courant number (``None``: ``0.95/sqrt(ndim)``).
        re: numerical Reynolds number (``2 pi`` optimal; the workshop used ``0.8 pi``).
        tol: stop when ``max|RPf| / max|Qf|`` falls below this.
        maxiter: iteration budget (``None``: ``1000 * max(grid shape)``).
        ncheck: the longest gap between residual checks (one MPI MAX each).
        first_check: iterations before the first check; the gaps then grow to ``ncheck``
            (:func:`next_check`; ``first_check >= ncheck``: every ``ncheck`` iterations).
    """
    cfl: float | None = None
    re: float = 2 * math.pi
    tol: float = 1e-8
    maxiter: int | None = None
    ncheck: int = 100
    first_check: int = 8

    def validate(self):
        """Range checks; messages name the parameter (``cfl``, ``re``, ...), which the config
        layer maps to its TOML key (``solver.cfl`` or ``adjoint.cfl``)."""
        if self.cfl is not None and not (0 < self.cfl <= 1):
            raise ConfigError(f"cfl must be in (0, 1], got {self.cfl}")
        if not (self.re > 0 and math.isfinite(self.re)):
            raise ConfigError(f"re must be > 0, got {self.re}")
        if not (0 < self.tol < 1):
            raise ConfigError(f"tol must be in (0, 1), got {self.tol}")
        if self.maxiter is not None and self.maxiter < 1:
            raise ConfigError(f"maxiter must be >= 1, got {self.maxiter}")
        if self.ncheck < 1:
            raise ConfigError(f"ncheck must be >= 1, got {self.ncheck}")
        if self.first_check < 1:
            raise ConfigError(f"first_check must be >= 1, got {self.first_check}")

    def resolved(self, shape) -> "PTParams":
        """A copy with ``cfl`` and ``maxiter`` defaults filled in for a grid ``shape``."""
        return PTParams(self.cfl if self.cfl is not None else default_cfl(len(shape)), self.re,
                        self.tol, self.maxiter if self.maxiter is not None else 1000 * max(shape),
                        self.ncheck, self.first_check)


def pt_coefficients(spacing, lengths, cfl: float, re: float):
    """``(damp, beta)`` of the APT step: ``damp = 1/(1+theta)`` and ``beta`` (see module doc)."""
    vdtau = cfl * min(spacing)
    L = max(lengths)
    theta = L / (re * vdtau)
    return 1.0 / (1.0 + theta), vdtau * L / re


@dataclass
class PTResult:
    """Outcome of a pseudo-transient solve.

    Attributes:
        iterations: iterations performed.
        residual: last checked scaled residual.
        converged: ``residual < tol``.
        history: ``[(iteration, residual), ...]`` at every check.
        wall_time: seconds spent in the loop.
    """
    iterations: int
    residual: float
    converged: bool
    history: list = field(default_factory=list)
    wall_time: float = 0.0


def pt_iterate(step, comm, params: PTParams, scale: float, what: str = "forward",
               progress=None, cold: bool = True) -> PTResult:
    """Run ``step(check)`` until the scaled residual drops below ``params.tol``.

    Args:
        step: ``step(check: bool) -> float | None``; performs one iteration and, when ``check``
            is true, returns the local max-norm of the residual.
        comm: communicator of the reduction (one ``MPI.MAX`` per check, nothing else).
        params: resolved :class:`PTParams`.
        scale: the residual is divided by this (e.g. ``max|Qf|``).
        what: name used in messages.
        progress: optional ``progress(iteration, residual, elapsed, what)`` called at every
            check.
        cold: the iteration starts from zero fields, whose scaled residual is 1: growth far
            above that is divergence. A warm start's first residual can exceed 1 (a new source
            much smaller than the old one); divergence is then judged from the first check on.
    """
    history = []
    best = 1.0 if cold else math.inf
    t0 = time.perf_counter()
    err = math.inf
    it = 0
    due = next_check(0, params.ncheck, params.first_check)
    for it in range(1, params.maxiter + 1):
        check = it == due or it == params.maxiter
        local = step(check)
        if not check:
            continue
        due = next_check(it, params.ncheck, params.first_check)
        err = comm.allreduce(local, op=MPI.MAX) / scale
        history.append((it, err))
        if progress is not None:
            progress(it, err, time.perf_counter() - t0, what)
        if not math.isfinite(err) or err > DIVERGENCE_FACTOR * best:
            raise SolverDivergedError(
                f"{what} solve diverged at iteration {it} (scaled residual {err:.3e}, best "
                f"{best:.3e}); try a smaller cfl for the {what} solve (now {params.cfl:.4g})")
        best = min(best, err)
        if err < params.tol:
            break
    return PTResult(it, err, err < params.tol, history, time.perf_counter() - t0)
