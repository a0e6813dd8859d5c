"""``inversion.levels = "auto"`` (issue 23, item 1): the factors chosen from the grid and the
observation spacing, the automatic endings (stall, budget) on synthetic histories, inversions
with automatic levels (the resolved config, the budget, a restart inside a coarse level, 1 vs 2
ranks) and the one-line errors.

Serial: ``pytest tests/test_levels_auto.py`` (a restart on another rank count: the levels'
own test in tests/test_levels.py; the endings read only the history); MPI: ``mpiexec -n 2
python -m pytest --with-mpi -m mpi tests/test_levels_auto.py``.
"""
from __future__ import annotations

import json
import math
import signal
import types
from pathlib import Path

import h5py
import numpy as np
import pytest
from mpi4py import MPI

from hpcinv.app import level_plan as lp
from hpcinv.app.level_plan import AutoEndings, auto_factors, observation_spacing

from test_inversion import run_cli as _run
from test_levels import _final, _history, _strip
from test_one_line_errors import assert_one_line

BOX2 = ((-1.0, 1.0), (0.0, 1.0))       # geothermal2d's domain
WORKSHOP_SPACING = 0.6 / 7              # y spacing of the workshop's 8 x 8 points


@pytest.mark.parametrize("shape,extent,spacing,factors", [
    ((255, 127), BOX2, WORKSHOP_SPACING, [4, 2, 1]),     # the demo: 64x32 cells of 0.031
    ((1023, 511), BOX2, WORKSHOP_SPACING, [16, 8, 4, 2, 1]),
    ((1023, 511), BOX2, 0.05, [8, 4, 2, 1]),              # denser data: fewer levels
    ((63, 31), BOX2, WORKSHOP_SPACING, [1]),              # 32x16 cells would be too wide
    ((63, 31), BOX2, 0.6, [4, 2, 1]),                     # 16x8: the 8-cell floor
    ((20, 300), ((0, 1), (0, 15)), math.inf, [2, 1]),     # 10 cells along x at factor 2
    ((4096, 4096), ((0, 1), (0, 1)), math.inf, [16, 8, 4, 2, 1]),    # MAX_FACTOR
    ((32, 32, 32), ((0, 1),) * 3, math.inf, [4, 2, 1]),
    ((14, 15), ((0, 1), (0, 1)), math.inf, [1]),          # 7 cells at factor 2: one level
])
def test_auto_factors(shape, extent, spacing, factors):
    assert auto_factors(shape, extent, spacing) == factors


def test_observation_spacing():
    from hpcinv.model.geothermal import workshop_points
    assert observation_spacing(workshop_points(2)) == pytest.approx(WORKSHOP_SPACING)
    assert observation_spacing([[0.0, 0.0], [0.0, 0.0]]) == math.inf     # one distinct point
    pts = np.random.default_rng(1).random((700, 3))                     # several row blocks
    d = np.sqrt(((pts[:, None] - pts[None]) ** 2).sum(-1)) + np.eye(700) * 9
    assert observation_spacing(pts) == pytest.approx(d.min(), rel=1e-12)


def test_auto_is_resolved_into_explicit_levels():
    from hpcinv import config
    from hpcinv.app.resolve import resolved
    c = resolved(config.from_dict({"inversion": {"levels": "auto"}}))
    assert c.inversion.levels == [4, 2, 1] and c.inversion.level_iterations == "auto"
    again = resolved(c)                                   # idempotent
    assert again.inversion.levels == [4, 2, 1] and again.inversion.level_iterations == "auto"
    one = resolved(config.from_dict({"grid": {"nx": 63, "ny": 31},
                                     "inversion": {"levels": "auto"}}))
    assert one.inversion.levels == [1] and one.inversion.level_iterations is None


@pytest.mark.parametrize("iterations,factors", [(50, [4, 2, 1]), (6, [4, 2, 1]),
                                                (5, [2, 1]), (3, [2, 1]), (2, [1]), (1, [1])])
def test_auto_drops_the_levels_the_budget_cannot_pay_for(iterations, factors):
    """The demo's grid: [4, 2, 1] needs 6 fine-iteration equivalents to give every level an
    iteration, [2, 1] 3; fewer: one level."""
    from hpcinv import config
    from hpcinv.app.resolve import resolved
    c = resolved(config.from_dict({"inversion": {"levels": "auto",
                                                 "iterations": iterations}}))
    assert c.inversion.levels == factors


def _lines(levels, misfits, first=0):
    return [{"iteration": first + k, "level": lv, "misfit": J}
            for k, (lv, J) in enumerate(zip(levels, misfits))]


def test_stall_on_a_synthetic_history():
    e = AutoEndings([(16, 8), (32, 16), (63, 31)], 50)
    w = lp.STALL_WINDOW
    # level 0: 20 % less misfit an iteration (8 lines), then 1 %: it ends on the first line
    # whose window holds only 1 % steps
    J = [0.8 ** k for k in range(8)] + [0.8 ** 7 * 0.99 ** k for k in range(1, 8)]
    lines = _lines([0] * len(J), J)
    ends = [k for k in range(1, len(J) + 1) if e.stall_reason(0, 0, lines[:k])]
    assert ends[0] == 8 + w
    assert "level 0: misfit fell" in e.stall_reason(0, 0, lines)
    # only the level's own lines count: a later level starting high is measured alone
    J1 = [5.0, 4.0, 3.0, 2.5, 2.2, 2.0, 1.9]
    lines1 = lines + _lines([1] * len(J1), J1, first=len(J))
    assert e.stall_reason(1, len(J), lines1) == ""           # 4.0 -> 1.9 over 5: -52 %
    assert e.stall_reason(1, len(J), lines1 + _lines([1] * 5, [1.85] * 5, 99))
    # the finest level: its own window and decrease
    Jf = [1.0, 0.9, 0.85, 0.83, 0.82]
    fine = _lines([2] * 5, Jf, first=100)
    wf, df = lp.FINE_STALL_WINDOW, lp.FINE_STALL_DECREASE
    assert Jf[-1] > (1 - df) * Jf[-1 - wf]
    assert "level 2" in e.stall_reason(2, 100, fine)
    assert e.stall_reason(2, 100, fine[:wf]) == ""               # too few lines yet


@pytest.mark.parametrize("shapes", [[(16, 8), (32, 16), (63, 31)],
                                    [(8, 8, 8), (16, 16, 16), (32, 32, 32)]])
@pytest.mark.parametrize("n", [1, 2, 3, 6, 8, 50])
def test_budget_never_passes_the_fine_iterations(shapes, n):
    """A run that never stalls: every level takes iterations while its share allows. Where the
    budget fits the levels, the coarse levels spend at most COARSE_SHARE of it, the run at most
    all of it, every level iterates, and the plan is that run; else the run is refused."""
    e = AutoEndings(shapes, n)
    lines = [{"iteration": 0, "level": 0, "misfit": 1.0}]
    taken = []
    for level in range(3):
        if level:                                                 # the level's start line
            lines.append({"iteration": len(lines), "level": level, "misfit": 1.0})
        k = 0
        while not e.exhausted(level, lines):
            lines.append({"iteration": len(lines), "level": level, "misfit": 1.0})
            k += 1
        taken.append(k)
        if level == 1:
            coarse = e.spent(lines)
    assert taken == e.plan() and len(lines) - 1 == e.max_lines()
    assert e.fits() == (min(taken) >= 1) == (n >= e.fewest_iterations())
    if e.fits():
        assert coarse <= n * lp.COARSE_SHARE + 1e-9 and e.spent(lines) <= n + 1e-9


def _config(tmp_path, name="auto.toml", iterations=8, extra="", **inversion):
    """63 x 31 with 3 x 3 observations 0.6 apart: levels "auto" gives [4, 2, 1]."""
    inv = {"levels": "auto", "iterations": iterations, **inversion}
    text = ("[grid]\nnx = 63\nny = 31\n[observations]\npoints = \"grid\"\n"
            "grid = {x = [-0.6, 0.6, 3], y = [0.2, 0.8, 3]}\n[output]\nfigures = false\n"
            "[inversion]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in inv.items()
                                      if v is not None) + extra)
    path = tmp_path / name
    path.write_text(text)
    return path


def test_auto_run_writes_explicit_levels_and_keeps_the_budget(tmp_path):
    """The run's config.toml holds the chosen factors and level_iterations = "auto" (reread, it
    resolves to itself: the same run); the history's fine-iteration equivalents stay within
    iterations = 8."""
    from hpcinv import config as config_mod
    from hpcinv.app.cli import main
    from hpcinv.app.resolve import resolved
    from hpcinv.config import tomllib
    run = tmp_path / "r"
    assert main(["invert", str(_config(tmp_path)), "-q", "-o", str(run)]) == 0
    written = tomllib.loads((run / "config.toml").read_text())["inversion"]
    assert written["levels"] == [4, 2, 1] and written["level_iterations"] == "auto"
    h = _history(run)
    assert [r["grid"] for r in (h[0], h[-1])] == [[16, 8], [63, 31]]
    levels = [r["level"] for r in h]
    assert levels == sorted(levels) and set(levels) == {0, 1, 2}
    weight = {r["level"]: math.prod(r["grid"]) / (63 * 31) for r in h}
    assert sum(weight[r["level"]] for r in h[1:]) <= 8 + 1e-9      # <= 8 fine iterations
    assert sum(r["level"] == 0 for r in h) > 2                    # not ended at once
    assert sum(r["level"] == 2 for r in h) > 1                    # the fine level iterated
    assert _final(run).shape == (63, 31)
    again = resolved(config_mod.load(run / "config.toml"))      # what a rerun would run
    again.output.dir = str(run)
    assert config_mod.dumps(again) == (run / "config.toml").read_text()


# ------------------------------------------------------------------ in-process runs (API)

class _StopAfter:
    """A quiet reporter that raises SIGTERM in this process after ``lines`` history lines (the
    run's deferred handler checkpoints and stops, as for a signal from outside)."""

    def __init__(self, lines=None):
        from hpcinv.app.run import Reporter
        self.base, self.left = Reporter(quiet=True), lines

    def __getattr__(self, name):
        return getattr(self.base, name)

    def iteration(self, rec, total):
        if self.left is not None:
            self.left -= 1
            if self.left == 0:
                signal.raise_signal(signal.SIGTERM)


def _api_run(path, out, comm, stop_after=None, restart=False):
    """The inversion of the config file ``path`` into ``out`` on ``comm`` through the Python
    API; ``(history without wall times, final logK or None, the run's last record)``."""
    from hpcinv import config as config_mod
    from hpcinv.app.assembly import build
    from hpcinv.app.levels import make_inversion
    from hpcinv.app.resolve import resolved
    from hpcinv.app.run import RunDirectory
    cfg = resolved(config_mod.load(path))
    setup = build(cfg, comm)
    run = make_inversion(cfg, setup, RunDirectory(out, comm, restart=restart),
                         _StopAfter(stop_after), restart=restart)
    last = run.run()
    if last.get("terminated"):
        return _strip(_history(out)), None, last
    return _strip(_history(out)), _final(out), last


def test_auto_restart_inside_a_coarse_level_is_bitwise(tmp_path):
    """SIGTERM inside level 0 (before any budget or stall ended it); the restart decides the
    stalls and the budget from the resumed history exactly as the uninterrupted run."""
    cfg = _config(tmp_path, iterations=12, checkpoint_every=0)
    ref, ref_final, _ = _api_run(cfg, tmp_path / "ref", MPI.COMM_SELF)
    h, final, last = _api_run(cfg, tmp_path / "run", MPI.COMM_SELF, stop_after=6)
    assert last["terminated"] == signal.SIGTERM and final is None
    with h5py.File(tmp_path / "run" / "checkpoint.h5") as f:
        level, it = int(f.attrs["level"]), int(f.attrs["iteration"])
    assert level == 0 and it == 5 and ref[it]["level"] == 0 and h == ref[:it + 1]
    assert {r["level"] for r in ref} == {0, 1, 2}
    h, final, _ = _api_run(cfg, tmp_path / "run", MPI.COMM_SELF, restart=True)
    assert h == ref and np.array_equal(final, ref_final)


@pytest.mark.mpi(min_size=2)
def test_auto_levels_bitwise_on_1_and_all_ranks(tmp_path):
    """The run on every rank of COMM_WORLD equals, bit for bit, the run on rank 0 alone: the
    same factors, the same level endings, the same models."""
    world = MPI.COMM_WORLD
    base = Path(world.bcast(str(tmp_path) if world.rank == 0 else None, root=0))
    cfg = _config(base) if world.rank == 0 else base / "auto.toml"
    world.Barrier()
    h, final, _ = _api_run(cfg, base / "world", world)
    h1, final1, _ = _api_run(cfg, base / f"self{world.rank}", MPI.COMM_SELF)  # each rank alone
    assert {r["level"] for r in h} == {0, 1, 2}
    assert h == h1 and final.tobytes() == final1.tobytes()
    world.Barrier()


# --------------------------------------------------------------------------- one-line errors

@pytest.mark.parametrize("inv,msg", [
    ({"level_iterations": [3, 2, 1]}, 'takes level_iterations = "auto"'),
    ({"level_misfit_ratio": [0.1, 0.1, 0]}, "no level_misfit_ratio"),
    ({"levels": "fast"}, 'or "auto", got \'fast\''),
    ({"levels": 4}, 'or "auto", got 4'),
    ({"levels": [4, 2, 1], "level_iterations": "some"}, 'or "auto", got \'some\''),
    ({"levels": None, "level_iterations": "auto"}, "needs inversion.levels"),
    ({"levels": [4, 2, 1], "level_iterations": "auto", "iterations": 3},
     "inversion.iterations = 3 is too few for levels [4, 2, 1] ending automatically"),
])
def test_auto_keys_are_checked_in_one_line(tmp_path, inv, msg):
    """``hpcinv invert CONFIG``: exit 2, one line ``hpcinv: error: ...`` (the last case from
    the run's construction, before its first iteration)."""
    p = _run("invert", _config(tmp_path, **inv), "-q", "-o", tmp_path / "r")
    assert_one_line(p, 2, msg)


def test_a_coarse_level_the_ranks_cannot_split_is_refused_before_the_run():
    """The check :class:`LevelledInversion` makes for every coarse level at construction:
    one line naming the finest level that cannot be split, its grid and the remedy."""
    from hpcinv.app.levels import LevelledInversion
    from hpcinv.errors import ConfigError
    lv = LevelledInversion.__new__(LevelledInversion)
    lv.factors, lv.shapes = [4, 2, 1], [(16, 8), (32, 16), (63, 31)]
    lv.comm = types.SimpleNamespace(Get_size=lambda: 9)
    lv._check_split(0, (1, 8))                                  # 8 ranks for 8 cells: fine
    with pytest.raises(ConfigError) as err:
        lv._check_split(0, (1, 9))
    text = str(err.value)
    assert "\n" not in text and "level 0 (factor 4, grid 16x8)" in text
    assert "9 ranks for 8 cells along y" in text
    assert "fewer ranks (e.g. inversion.levels = [2, 1])" in text
