"""Coarse-to-fine inversion (issue 12 item 3): the grid transfer operators (restriction by
averaging, piecewise-constant prolongation), their bitwise independence of the decompositions,
and inversions with ``inversion.levels`` (1 vs 2 ranks, restart, config errors).

Serial: ``pytest tests/test_levels.py``; MPI: ``mpiexec -n N python -m pytest --with-mpi -m mpi
tests/test_levels.py`` (N = 2, 3, 4).
"""
from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from mpi4py import MPI

from hpcinv.io import gather_cells
from hpcinv.parallel import Decomposition
from hpcinv.parallel.transfer import GridTransfer, coarse_index, coarse_shape

from test_inversion import run_cli as _run, sigterm_after


def _field(decomp, seed=0):
    """A random global field, this rank's padded block of it (the same global field for any
    split)."""
    g = np.random.default_rng(seed).standard_normal(decomp.global_shape)
    out = np.zeros(decomp.padded_shape)
    sl = tuple(slice(o, o + n) for o, n in zip(decomp.offset, decomp.local_shape))
    out[decomp.owned()] = g[sl]
    return out, g


def _reference_restrict(g, cshape):
    """Numpy reference: mean of the fine cells whose centre lies in each coarse cell."""
    maps = [coarse_index(n, c) for n, c in zip(g.shape, cshape)]
    total, count = np.zeros(cshape), np.zeros(cshape)
    for idx in np.ndindex(*g.shape):
        c = tuple(int(m[i]) for m, i in zip(maps, idx))
        total[c] += g[idx]
        count[c] += 1
    return total / count


SHAPES = [((23, 13), 2), ((23, 13), 4), ((255, 127), 4), ((13, 7, 9), 2), ((12, 9, 7), 3),
          ((10, 6), 1)]


def test_coarse_shape_and_index():
    assert coarse_shape((255, 127), 4) == (64, 32)
    assert coarse_shape((255, 127), 4, "floor") == (63, 31)
    m = coarse_index(255, 64)
    assert m[0] == 0 and m[-1] == 63 and np.all(np.diff(m) >= 0)
    assert set(m.tolist()) == set(range(64))          # every coarse cell holds a fine centre
    with pytest.raises(ValueError):
        coarse_index(5, 6)


@pytest.mark.parametrize("shape,f", SHAPES)
def test_restriction_matches_numpy_and_keeps_constants(shape, f):
    comm = MPI.COMM_SELF
    fine = Decomposition(shape, comm)
    coarse = Decomposition(coarse_shape(shape, f), comm)
    T = GridTransfer(fine, coarse)
    a, g = _field(fine)
    r = T.restrict(a)
    own = coarse.owned()
    np.testing.assert_allclose(r[own], _reference_restrict(g, coarse.global_shape), rtol=1e-13,
                               atol=1e-14)
    ghosts = np.ones(r.shape, bool)
    ghosts[own] = False
    assert np.all(r[ghosts] == 0)
    for c in (0.0, 1.0, -2.5, np.log(1e-6)):
        const = np.zeros(fine.padded_shape)
        const[fine.owned()] = c
        rc = T.restrict(const)[own]
        np.testing.assert_allclose(rc, c, rtol=4e-16 * f ** len(shape), atol=0)
    zero = T.restrict(np.zeros(fine.padded_shape))
    assert np.all(zero == 0)


@pytest.mark.parametrize("shape,f", SHAPES)
def test_prolongation_then_restriction_is_the_identity(shape, f):
    """Piecewise constant: restricting the prolongation of a coarse field gives it back (each
    coarse average is of equal values; exact up to the division, here checked to 1 ulp)."""
    comm = MPI.COMM_SELF
    fine = Decomposition(shape, comm)
    coarse = Decomposition(coarse_shape(shape, f), comm)
    T = GridTransfer(fine, coarse)
    a, g = _field(coarse, seed=3)
    p = T.prolong(a)
    maps = [coarse_index(n, c) for n, c in zip(shape, coarse.global_shape)]
    np.testing.assert_array_equal(p[fine.owned()], g[np.ix_(*maps)])
    back = T.restrict(p)[coarse.owned()]
    np.testing.assert_allclose(back, g, rtol=1e-15 * np.prod([f] * len(shape)), atol=0)
    # powers of two: the average of equal values is exact
    a2 = np.zeros(coarse.padded_shape)
    a2[coarse.owned()] = np.round(g * 8) / 8
    if all(n % f == 0 for n in shape) and f in (1, 2, 4):
        np.testing.assert_array_equal(T.restrict(T.prolong(a2))[coarse.owned()],
                                      a2[coarse.owned()])


# --------------------------------------------------------------------------- MPI: bitwise

MPI_CASES = [((23, 13), (9, 5), None, None), ((64, 32), (16, 8), [1, 0], [0, 1]),
             ((13, 7, 9), (7, 4, 5), None, [1, 1, 0]), ((255, 127), (64, 32), [0, 1], None)]


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("fshape,cshape,fdims,cdims", MPI_CASES)
def test_transfer_bitwise_on_any_decomposition(fshape, cshape, fdims, cdims):
    """Restriction and prolongation on this run's ranks (two different splits for the fine and
    the coarse grid) equal, bit for bit, the single-rank result (rank 0 on COMM_SELF)."""
    world = MPI.COMM_WORLD
    size = world.Get_size()
    fd = None if fdims is None else [size if d == 0 else d for d in fdims]
    cd = None if cdims is None else [size if d == 0 else d for d in cdims]
    fd = fd if fd is None or int(np.prod(fd)) == size else None
    cd = cd if cd is None or int(np.prod(cd)) == size else None
    fine, coarse = Decomposition(fshape, world, fd), Decomposition(cshape, world, cd)
    T = GridTransfer(fine, coarse)
    a, _ = _field(fine, 1)
    b, _ = _field(coarse, 2)
    r = gather_cells(coarse, T.restrict(a))
    p = gather_cells(fine, T.prolong(b))
    if world.rank == 0:
        f1, c1 = Decomposition(fshape, MPI.COMM_SELF), Decomposition(cshape, MPI.COMM_SELF)
        T1 = GridTransfer(f1, c1)
        r1 = T1.restrict(_field(f1, 1)[0])[c1.owned()]
        p1 = T1.prolong(_field(c1, 2)[0])[f1.owned()]
        assert r.tobytes() == r1.tobytes()
        assert p.tobytes() == p1.tobytes()


# --------------------------------------------------------------------------- inversions


def _history(run):
    return [json.loads(s) for s in (Path(run) / "history.jsonl").read_text().splitlines()]


def _strip(h):
    return [{k: v for k, v in r.items() if k != "wall_time"} for r in h]


def _final(run):
    with h5py.File(Path(run) / "model_final.h5") as f:
        return f["logK"][...]


def _config(tmp_path, name="lv.toml", grid=(63, 31), problem=None, extra="", **inversion):
    inversion = {"levels": [4, 2, 1], "level_iterations": [4, 3, 2], **inversion}
    lines = [f"[problem]\nname = {json.dumps(problem)}" if problem else "",
             "[grid]"] + [f"n{a} = {n}" for a, n in zip("xyz", grid)] + ["[inversion]"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in inversion.items()]
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n" + extra)
    return path


def test_levels_history_records_level_grid_and_work(tmp_path):
    from hpcinv.app.cli import main
    run = tmp_path / "r"
    assert main(["invert", str(_config(tmp_path)), "-q", "-o", str(run)]) == 0
    h = _history(run)
    assert [r["iteration"] for r in h] == list(range(12))     # 1 + 4, 1 + 3, 1 + 2 lines
    assert [r["level"] for r in h] == [0] * 5 + [1] * 4 + [2] * 3
    assert h[0]["grid"] == [16, 8] and h[5]["grid"] == [32, 16] and h[-1]["grid"] == [63, 31]
    assert h[5]["step"] == 0 and "prolongated" in h[5]["note"]
    for r in h:
        cells = np.prod(r["grid"])
        assert r["work_units"] == pytest.approx(
            (r["forward_iterations"] + r["adjoint_iterations"] + r.get("prediction_work", 0))
            * cells / (63 * 31))
    assert _final(run).shape == (63, 31)
    with h5py.File(run / "checkpoint.h5") as f:
        assert f.attrs["level"] == 2 and list(f.attrs["levels"]) == [4, 2, 1]
    assert (run / "figures" / "misfit.png").stat().st_size > 1000


def test_one_level_is_todays_run(tmp_path):
    """levels = [1] (or left out): the one-level path, history without level keys, bitwise the
    same as without the key."""
    from hpcinv.app.cli import main
    a = _config(tmp_path, "a.toml", levels=[1], level_iterations=None)
    a.write_text(a.read_text().replace("level_iterations = null\n", "") + "iterations = 3\n")
    b = tmp_path / "b.toml"
    b.write_text("[grid]\nnx = 63\nny = 31\n[inversion]\niterations = 3\n")
    assert main(["invert", str(a), "-q", "-o", str(tmp_path / "ra")]) == 0
    assert main(["invert", str(b), "-q", "-o", str(tmp_path / "rb")]) == 0
    ha, hb = _history(tmp_path / "ra"), _history(tmp_path / "rb")
    assert "level" not in ha[0] and _strip(ha) == _strip(hb)
    assert np.array_equal(_final(tmp_path / "ra"), _final(tmp_path / "rb"))


@pytest.mark.parametrize("inv,msg", [
    ({"levels": [4, 2]}, "ending with 1"),
    ({"levels": [2, 4, 1]}, "strictly decreasing"),
    ({"levels": [4, 2, 1], "level_iterations": None}, "level_iterations is required"),
    ({"level_iterations": [3, 2]}, "one integer >= 0 per level"),
    ({"level_misfit_ratio": [0.5, 1.5, 0]}, "level_misfit_ratio"),
    ({"levels": [32, 1], "level_iterations": [3, 2]}, "level 0 (factor 32)"),
])
def test_level_keys_are_checked(tmp_path, inv, msg):
    from hpcinv import config as config_mod
    from hpcinv.errors import ConfigError
    path = _config(tmp_path, **inv)
    path.write_text(path.read_text().replace("level_iterations = null\n", ""))
    with pytest.raises(ConfigError, match=msg.replace("(", r"\(").replace(")", r"\)")):
        config_mod.load(path)                 # load validates


def test_levels_bitwise_on_1_and_2_ranks(tmp_path):
    cfg = _config(tmp_path)
    p1 = _run("invert", cfg, "-q", "-o", tmp_path / "r1")
    p2 = _run("invert", cfg, "-q", "-o", tmp_path / "r2", ranks=2)
    assert p1.returncode == 0 and p2.returncode == 0, p1.stderr + p2.stderr
    assert _strip(_history(tmp_path / "r1")) == _strip(_history(tmp_path / "r2"))
    assert np.array_equal(_final(tmp_path / "r1"), _final(tmp_path / "r2"))


def test_restart_with_levels_is_bitwise(tmp_path):
    """SIGTERM inside a coarse level writes a checkpoint with the level; restarting on 2 ranks
    continues through the later levels exactly as the uninterrupted run."""
    cfg = _config(tmp_path, level_iterations=[10, 8, 4], checkpoint_every=0)
    assert _run("invert", cfg, "-q", "-o", tmp_path / "ref").returncode == 0
    run = tmp_path / "run"
    rc, out = sigterm_after(cfg, run, lines=6)
    assert rc == 3 and "SIGTERM" in out
    with h5py.File(run / "checkpoint.h5") as f:
        level = int(f.attrs["level"])
    assert level < 2, "stopped too late to test a level transition after the restart"
    p = _run("invert", "--restart", run, "-q", ranks=2)
    assert p.returncode == 0, p.stderr
    assert _strip(_history(run)) == _strip(_history(tmp_path / "ref"))
    assert np.array_equal(_final(run), _final(tmp_path / "ref"))


def test_coarse_level_with_too_few_cells_for_the_ranks(tmp_path):
    cfg = _config(tmp_path, grid=(24, 12), levels=[4, 1], level_iterations=[2, 1],
                  extra="[parallel]\ndims = [1, 4]\n")
    p = _run("invert", cfg, "-q", "-o", tmp_path / "r", ranks=4)
    assert p.returncode == 2, p.stderr
    assert "inversion.levels: level 0 (factor 4, grid 6x3)" in p.stderr
    assert "smaller coarsening factor or fewer ranks" in p.stderr


def _blobs_file(tmp_path, shape):
    """log10 K with a high (+1) and a low (-2) blob between the wells (2D or 3D)."""
    axes = [(np.arange(n) + 0.5) / n for n in shape]
    X = np.meshgrid(*axes, indexing="ij")
    x = -1 + 2 * X[0]
    r1 = (x + 0.2) ** 2 + (X[1] - 0.5) ** 2
    r2 = (x - 0.2) ** 2 + (X[1] - 0.5) ** 2
    v = 1.0 * (r1 < 0.15 ** 2) - 2.0 * (r2 < 0.15 ** 2)
    path = tmp_path / "blobs.h5"
    with h5py.File(path, "w") as f:
        f["K"] = v
    return path


TRUTHS = {
    "layered2d": ("geothermal2d", (48, 24), '[permeability]\ntype = "layered"\nlayers = ['
                  '{axis = "y", range = [0.35, 0.5], value = 0.01}, '
                  '{axis = "y", range = [0.6, 0.7], value = 10.0}]\n'),
    "blobs2d": ("geothermal2d", (48, 24), None),
    "layered3d": ("geothermal3d", (24, 12, 12), '[permeability]\ntype = "layered"\nlayers = ['
                  '{axis = "y", range = [0.35, 0.5], value = 0.01}]\n'),
}


@pytest.mark.parametrize("truth", sorted(TRUTHS))
def test_levels_are_not_tuned_to_the_barrier(tmp_path, truth):
    """Truths of another character (layers, blobs of either sign; 2D and 3D): levels [2, 1]
    reach a fine-grid misfit and a model error similar to one level with the same fine
    iterations plus cheap coarse ones."""
    from hpcinv.app.cli import main
    problem, grid, extra = TRUTHS[truth]
    if extra is None:
        extra = (f'[permeability]\ntype = "file"\nfile = "{_blobs_file(tmp_path, grid)}"\n'
                 'log10 = true\n')
    single = _config(tmp_path, "one.toml", grid, problem, extra, levels=[1],
                     level_iterations=None)
    single.write_text(single.read_text().replace("level_iterations = null\n", "iterations = 12\n"))
    multi = _config(tmp_path, "two.toml", grid, problem, extra, levels=[2, 1],
                    level_iterations=[12, 6])
    for cfg, out in ((single, "one"), (multi, "two")):
        assert main(["invert", str(cfg), "-q", "-o", str(tmp_path / out)]) == 0
    J1, J2 = (_history(tmp_path / r)[-1]["misfit"] for r in ("one", "two"))
    with h5py.File(tmp_path / "one" / "setup.h5") as f:
        true = f["logK_true"][...]
    e1, e2 = (np.abs(_final(tmp_path / r) - true).mean() for r in ("one", "two"))
    assert J2 <= 1.5 * J1, (J1, J2)
    assert e2 <= 1.1 * e1, (e1, e2)


def test_unconverged_solves_end_a_coarse_level_not_the_run(tmp_path):
    """A coarse level whose inner solves stop at maxiter ends (the next level starts from its
    model); on the finest level the run's policy stops after three such iterations in a row."""
    cfg = _config(tmp_path, levels=[2, 1], level_iterations=[4, 4],
                  extra="[adjoint]\nmaxiter = 30\n")
    p = _run("invert", cfg, "-q", "-o", tmp_path / "r")
    assert p.returncode == 1, p.stderr
    h = _history(tmp_path / "r")
    assert [r["level"] for r in h] == [0, 1, 1, 1], [r["level"] for r in h]
    assert all(r["unconverged_solves"] > 0 for r in h)
    assert "warning: level 0: 3 inner solve(s) did not converge at iteration 0" in p.stderr
    assert "did not converge in 3 consecutive iterations" in p.stderr


def test_a_finished_levels_scratch_fields_are_released(tmp_path, monkeypatch):
    """The backend's scratch pools (smoother, Tikhonov, Galerkin sums, misfit error) are per
    grid shape: a level's go when the next level starts, not at the end of the run."""
    from hpcinv.app.cli import main
    from hpcinv.backend.base import Backend
    seen = []
    release = Backend.release_scratch

    def recording(self):
        before = {k[0] for k in self.scratch_pools}
        release(self)
        seen.append((before, {k[0] for k in self.scratch_pools}))
    monkeypatch.setattr(Backend, "release_scratch", recording)
    path = _config(tmp_path, extra="[regularisation]\ntikhonov = 1e-3\n")
    assert main(["invert", str(path), "-q", "-o", str(tmp_path / "r")]) == 0
    assert len(seen) == 2                                  # two level changes
    assert {(18, 10)} <= seen[0][0] and {(34, 18)} <= seen[1][0]   # the padded coarse grids
    assert all(after == set() for _, after in seen)
