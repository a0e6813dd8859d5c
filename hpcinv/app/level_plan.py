"""Automatic coarse-to-fine levels (``inversion.levels = "auto"``, ``level_iterations =
"auto"``): which levels, and when each ends.

Which levels (decided once, by :func:`~hpcinv.app.resolve.resolved`, and written into the run's
``config.toml`` as the explicit list, so reruns and restarts see the same levels): factors 2
apart, ``[F, ..., 4, 2, 1]``, with ``F`` the largest power of 2 (at most :data:`MAX_FACTOR`)
whose grid ``ceil(n / F)`` keeps at least :data:`MIN_CELLS` cells on every axis and whose
cells are no wider than the observation spacing over :data:`CELLS_PER_SPACING` (a level
coarser than that cannot tell neighbouring observations apart: its iterations fit data it does
not resolve). A grid that allows no coarsening gets ``[1]``: one level, today's run.

When each level ends (``level_iterations = "auto"``), all measured on the history the run
writes (so a restart, which resumes the history, decides exactly as the uninterrupted run):

* *budget*: one iteration on a level costs its cells over the finest grid's cells in
  fine-iteration equivalents (every history line after the run's first); the coarse levels
  together may spend :data:`COARSE_SHARE` of ``inversion.iterations`` (level ``l`` of ``L``
  coarse ones up to ``(l + 1) / L`` of that share, the later levels' first evaluations
  included), the whole run ``inversion.iterations``: a run asked for N iterations does no more
  than N fine iterations' cells. The budget must give every level an iteration
  (:meth:`AutoEndings.fits`): ``"auto"`` drops the coarsest levels until it does, explicit
  levels that it does not fit are a one-line error before the run.
  Solves also take fewer PT iterations on coarse grids, so in work units the coarse levels
  cost less still (docs/performance.md measures them);
* *stall*: a coarse level ends when its misfit fell by less than :data:`STALL_DECREASE`
  (relative) over its last :data:`STALL_WINDOW` iterations (about 2 % an iteration). The finest
  level ends when its misfit fell by less than :data:`FINE_STALL_DECREASE` over
  :data:`FINE_STALL_WINDOW` (about 7 % an iteration), or by the run's ``misfit_ratio`` and
  ``step_tol``: its iterations cost 2^ndim to 2^(ndim+1) times the next coarser level's, and it
  starts from a model the coarse levels have fitted (docs/performance.md measures the demo).
"""
from __future__ import annotations

import math

import numpy as np

from ..model import geothermal
from ..parallel.transfer import coarse_shape

#: Fewest cells per axis on the coarsest automatic level.
MIN_CELLS = 8
#: Coarse cells per observation spacing (nearest-neighbour distance) at least.
CELLS_PER_SPACING = 2
#: Largest automatic coarsening factor.
MAX_FACTOR = 16
#: Iterations over which a level's relative misfit decrease is measured.
STALL_WINDOW = 5
#: A coarse level ends when its misfit fell by less than this fraction over the window.
STALL_DECREASE = 0.1
#: The same two for the finest level.
FINE_STALL_WINDOW, FINE_STALL_DECREASE = 3, 0.2
#: Share of ``inversion.iterations`` (fine-iteration equivalents) the coarse levels may spend.
COARSE_SHARE = 0.5


def observation_spacing(points) -> float:
    """The smallest distance between two distinct observation points (``points``: ``(n,
    ndim)``, domain units); ``inf`` with fewer than two distinct points."""
    p = np.unique(np.asarray(points, dtype=float).reshape(len(points), -1), axis=0)
    if len(p) < 2:
        return math.inf
    best = math.inf
    for i in range(0, len(p) - 1, 256):              # blocks of rows: memory 256 n
        d = ((p[i:i + 256, None, :] - p[None, :, :]) ** 2).sum(-1)
        d[np.arange(len(d)), np.arange(i, i + len(d))] = math.inf
        best = min(best, float(d.min()))
    return math.sqrt(best)


def auto_factors(shape, extent, spacing: float) -> list:
    """The coarsening factors ``[F, ..., 2, 1]`` of a grid ``shape`` over ``extent`` (``[(lo,
    hi)]`` per axis) observed at points ``spacing`` apart (see the module doc)."""
    f = 1
    while 2 * f <= MAX_FACTOR:
        cs = coarse_shape(shape, 2 * f)
        width = max((hi - lo) / n for (lo, hi), n in zip(extent, cs))
        if min(cs) < MIN_CELLS or width * CELLS_PER_SPACING > spacing:
            break
        f *= 2
    return [f >> k for k in range(int(math.log2(f)) + 1)]


def config_points(cfg, ndim: int):
    """The observation points of ``[observations]`` (``(n, ndim)``), read as the run reads
    them (a file by this process alone: resolving needs no communicator)."""
    from .scenario import _read_csv, _read_h5
    o = cfg.observations
    if o.points == "workshop":
        return geothermal.workshop_points(ndim)
    if o.points == "grid":
        return geothermal.grid_points(o.grid, ndim)
    reader = _read_csv if o.file.lower().endswith(".csv") else _read_h5
    return reader(o.file, ndim)[0]


def resolve_factors(cfg) -> list:
    """``inversion.levels`` of a config whose levels are ``"auto"``: the explicit factors of
    :func:`auto_factors`, the coarsest dropped while ``inversion.iterations`` cannot give every
    level an iteration (:meth:`AutoEndings.fits`; ``[1]`` when none can)."""
    shape = cfg.grid_shape()
    factors = auto_factors(shape, cfg.extent(),
                           observation_spacing(config_points(cfg, len(shape))))
    while len(factors) > 1 and not AutoEndings(
            [coarse_shape(shape, f) for f in factors], cfg.inversion.iterations).fits():
        factors = factors[1:]
    return factors


class AutoEndings:
    """The ending rules of ``level_iterations = "auto"`` for a run over the level grids
    ``shapes`` (coarsest first) asked for ``iterations`` (fine-iteration equivalents)."""

    def __init__(self, shapes, iterations: int):
        fine = math.prod(shapes[-1])
        self.weights = [math.prod(s) / fine for s in shapes]
        n = len(shapes) - 1
        self.caps = [iterations * COARSE_SHARE * (l + 1) / n for l in range(n)] + [iterations]
        self.shapes, self.iterations = [tuple(s) for s in shapes], iterations

    def spent(self, lines) -> float:
        """Fine-iteration equivalents of the history ``lines`` (every line after the first)."""
        return sum(self.weights[r["level"]] for r in lines[1:])

    def exhausted(self, level: int, lines) -> bool:
        """Whether one more iteration on ``level`` would pass the level's share (a coarse
        level's share keeps the start lines of the later levels: one evaluation each)."""
        later = sum(self.weights[level + 1:])
        return self.spent(lines) + self.weights[level] + later > self.caps[level] + 1e-9

    @staticmethod
    def stalled(misfits, window: int, decrease: float) -> bool:
        """Whether the misfits of one level (its start line first) fell by less than the
        fraction ``decrease`` over the last ``window`` iterations."""
        return len(misfits) > window and misfits[-1] > (1.0 - decrease) * misfits[-1 - window]

    def stall_reason(self, level: int, first: int, lines) -> str:
        """A one-line reason when ``level`` (first line at iteration ``first``) stalled."""
        w, dec = ((FINE_STALL_WINDOW, FINE_STALL_DECREASE) if level == len(self.weights) - 1
                  else (STALL_WINDOW, STALL_DECREASE))
        J = [r["misfit"] for r in lines if r["iteration"] >= first and r["level"] == level]
        if not self.stalled(J, w, dec):
            return ""
        return (f"level {level}: misfit fell {1 - J[-1] / J[-1 - w]:.1%} over {w} iterations "
                f"(< {dec:.0%})")

    def plan(self) -> list:
        """Iterations per level of the run that never stalls (each level while its share
        allows; every later level's start line costs its weight)."""
        out, spent = [], 0.0
        for level, (w, cap) in enumerate(zip(self.weights, self.caps)):
            later = sum(self.weights[level + 1:])
            spent += w if level else 0.0
            k = 0
            while spent + w + later <= cap + 1e-9:
                k, spent = k + 1, spent + w
            out.append(k)
        return out

    def fits(self) -> bool:
        """Whether the budget gives every level at least one iteration (then the start lines
        fit in it too, whenever levels stall: the run costs at most ``iterations``)."""
        return min(self.plan()) >= 1

    def max_lines(self) -> int:
        """An upper bound on the history lines after the first (for progress lines)."""
        return sum(self.plan()) + len(self.weights) - 1

    def fewest_iterations(self) -> int:
        """The smallest ``iterations`` that :meth:`fits` these levels (for the error of a run
        asked for fewer)."""
        n = 1
        while not AutoEndings(self.shapes, n).fits():
            n += 1
        return n
