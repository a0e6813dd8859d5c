"""hpcinv.scenario: the true model (every permeability type), wells, observation files and the
initial model, against numpy-computed global expectations; decomposition invariance under MPI
(``mpiexec -n 2|3|4 python -m pytest --with-mpi -m mpi tests/test_scenario.py``); and every
file error as a one-line ConfigError."""
from __future__ import annotations

import copy
import math
import tempfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from mpi4py import MPI

from hpcinv.app import scenario
from hpcinv.model import problems
from hpcinv.config import from_dict, load
from hpcinv.errors import ConfigError
from hpcinv.model.geothermal import workshop_points
from hpcinv.io import gather_cells

ROOT = Path(__file__).resolve().parents[1]
SELF = MPI.COMM_SELF
WORLD = MPI.COMM_WORLD

CUSTOM2D = {"problem": {"name": "custom"},
            "grid": {"nx": 20, "ny": 11, "extent": [[0.0, 2.0], [-1.0, 0.5]]},
            "permeability": {"type": "constant", "value": 2.5},
            "wells": [{"position": [0.3, -0.2], "rate": 1.0},
                      {"position": [1.7, 0.1], "rate": -1.0}]}
CUSTOM3D = {"problem": {"name": "custom"},
            "grid": {"nx": 9, "ny": 8, "nz": 7, "extent": [[0.0, 1.0], [0.0, 2.0], [0.0, 1.4]]},
            "permeability": {"type": "constant", "value": 1.0},
            "wells": [{"position": [0.25, 0.5], "rate": 3.0, "z_range": [0.3, 1.0]},
                      {"position": [0.75, 1.5, 0.7], "rate": -3.0}]}


def cfg_of(base, **sections):
    d = copy.deepcopy(base)
    for k, v in sections.items():
        if v is None:
            d.pop(k, None)
        else:
            d[k] = v
    return from_dict(d)


def centres(extent, n):
    (a, b) = extent
    return a + (np.arange(n) + 0.5) * ((b - a) / n)


def global_mesh(cfg):
    ext, shape = cfg.extent(), cfg.grid_shape()
    return np.meshgrid(*[centres(e, n) for e, n in zip(ext, shape)], indexing="ij")


def K_global(cfg, comm=SELF):
    """The true K as a global array (gathered on rank 0 of ``comm``; ``None`` elsewhere)."""
    p = scenario.true_problem(cfg, comm)
    return gather_cells(p.grid.decomp, p.K)


def owned(a):
    return a[tuple(slice(1, -1) for _ in range(a.ndim))]


@pytest.fixture
def shared_dir():
    """A directory every rank sees (rank 0 creates it)."""
    path = tempfile.mkdtemp(prefix="hpcinv-scn-") if WORLD.Get_rank() == 0 else None
    path = Path(WORLD.bcast(path, root=0))
    yield path
    WORLD.Barrier()
    if WORLD.Get_rank() == 0:
        import shutil
        shutil.rmtree(path, ignore_errors=True)


def write_h5(path, **datasets):
    if WORLD.Get_rank() == 0:
        with h5py.File(path, "w") as f:
            for k, v in datasets.items():
                f[k] = v
    WORLD.Barrier()
    return str(path)


# --------------------------------------------------------------------------- permeability models

def expected_models(tmp):
    """``[(name, cfg, global K expected)]`` for every permeability type (2D and 3D)."""
    out = []
    cfg = from_dict(CUSTOM2D)
    X, Y = global_mesh(cfg)
    out.append(("constant", cfg, np.full(X.shape, 2.5)))

    c = cfg_of(CUSTOM2D, permeability={"type": "barrier", "value": 3.0, "barrier": {
        "x": [0.5, 1.2], "y": [-0.5, 0.2], "value": 1e-4}})
    e = np.full(X.shape, 3.0)
    e[(X > 0.5) & (X <= 1.2) & (Y > -0.5) & (Y <= 0.2)] = 1e-4
    out.append(("barrier", c, e))

    c = cfg_of(CUSTOM2D, permeability={"type": "barrier", "barrier": {"x": [0.5, 1.2]}})
    e = np.full(X.shape, 1.0)                      # defaults: k_background, k_barrier
    e[(X > 0.5) & (X <= 1.2)] = 1e-6
    out.append(("barrier-x-only", c, e))

    c = cfg_of(CUSTOM2D, permeability={"type": "layered", "value": 0.5, "layers": [
        {"axis": "y", "range": [-1.0, -0.4], "value": 1e-2},
        {"axis": "x", "range": [0.9, 1.3], "value": 7.0},
        {"axis": "y", "range": [0.2, 0.35], "value": 1e-3}]})
    e = np.full(X.shape, 0.5)
    e[(Y > -1.0) & (Y <= -0.4)] = 1e-2
    e[(X > 0.9) & (X <= 1.3)] = 7.0
    e[(Y > 0.2) & (Y <= 0.35)] = 1e-3
    out.append(("layered", c, e))

    rng = np.random.default_rng(7)
    Kf = 10.0 ** rng.uniform(-3, 1, X.shape)
    f = write_h5(tmp / "K2.h5", K=Kf, log10K=np.log10(Kf), group_K=Kf)
    c = cfg_of(CUSTOM2D, permeability={"type": "file", "file": f})
    out.append(("file", c, Kf))
    c = cfg_of(CUSTOM2D, permeability={"type": "file", "file": f, "dataset": "log10K",
                                       "log10": True})
    out.append(("file-log10", c, 10.0 ** np.log10(Kf)))

    cfg3 = from_dict(CUSTOM3D)
    X, Y, Z = global_mesh(cfg3)
    c = cfg_of(CUSTOM3D, permeability={"type": "barrier", "value": 2.0, "barrier": {
        "x": [0.2, 0.6], "z": [0.4, 1.0], "value": 1e-3}})
    e = np.full(X.shape, 2.0)
    e[(X > 0.2) & (X <= 0.6) & (Z > 0.4) & (Z <= 1.0)] = 1e-3
    out.append(("barrier3d", c, e))
    c = cfg_of(CUSTOM3D, permeability={"type": "layered", "layers": [
        {"axis": "z", "range": [0.0, 0.5], "value": 0.1},
        {"axis": "y", "range": [1.0, 1.5], "value": 4.0}]})
    e = np.full(X.shape, 1.0)
    e[Z <= 0.5] = 0.1
    e[(Y > 1.0) & (Y <= 1.5)] = 4.0
    out.append(("layered3d", c, e))
    K3 = rng.uniform(0.1, 2.0, X.shape)
    f3 = write_h5(tmp / "K3.h5", K=K3)
    out.append(("file3d", cfg_of(CUSTOM3D, permeability={"type": "file", "file": f3}), K3))
    return out


def test_every_permeability_type_matches_numpy(shared_dir):
    for name, cfg, expected in expected_models(shared_dir):
        K = K_global(cfg)
        assert K.shape == expected.shape, name
        np.testing.assert_array_equal(K, expected, err_msg=name)


def test_ghosts_are_zero_and_padded_shape():
    p = scenario.true_problem(from_dict(CUSTOM2D), SELF)
    assert p.K.shape == p.grid.decomp.padded_shape
    own = np.zeros(p.K.shape, bool)
    own[p.grid.decomp.owned()] = True
    assert np.all(p.K[~own] == 0) and np.all(p.K[own] == 2.5)


@pytest.mark.parametrize("name", ["geothermal2d", "geothermal3d"])
def test_geothermal_default_is_problems_build(name):
    shape = {"geothermal2d": (31, 17), "geothermal3d": (13, 11, 9)}[name]
    g = dict(zip(("nx", "ny", "nz"), shape))
    cfg = from_dict({"problem": {"name": name, "k_barrier": 1e-3}, "grid": g})
    a = scenario.true_problem(cfg, SELF)
    b = problems.build(name, shape, comm=SELF, k_barrier=1e-3)
    assert a.K.tobytes() == b.K.tobytes() and a.Qf.tobytes() == b.Qf.tobytes()
    assert [(w.position, w.rate, w.cells) for w in a.wells] == \
        [(w.position, w.rate, w.cells) for w in b.wells]
    # type = "barrier" without a table: the built-in geometry again
    c = from_dict({"problem": {"name": name, "k_barrier": 1e-3}, "grid": g,
                   "permeability": {"type": "barrier"}})
    assert scenario.true_problem(c, SELF).K.tobytes() == b.K.tobytes()
    # ... and the wells spelled out give the same sources
    ws = [{"position": [-0.6, 0.45], "rate": 1.0}, {"position": [0.6, 0.45], "rate": -1.0}]
    if name == "geothermal3d":
        for w in ws:
            w["z_range"] = [0.2, 0.8]
    d = from_dict({"problem": {"name": name, "k_barrier": 1e-3}, "grid": g, "wells": ws})
    pd = scenario.true_problem(d, SELF)
    assert pd.Qf.tobytes() == b.Qf.tobytes()
    assert [w.cells for w in pd.wells] == [w.cells for w in b.wells]
    assert [w.position for w in pd.wells] == [w.position for w in b.wells]


def test_geothermal_permeability_override():
    cfg = from_dict({"grid": {"nx": 31, "ny": 17},
                     "permeability": {"type": "constant", "value": 3.0}})
    p = scenario.true_problem(cfg, SELF)
    assert np.all(owned(p.K) == 3.0)
    ref = problems.geothermal2d((31, 17), comm=SELF)
    assert p.Qf.tobytes() == ref.Qf.tobytes()          # the built-in wells stay


def test_overrides_give_a_constant_model():
    cfg = from_dict({"grid": {"nx": 31, "ny": 17},
                     "permeability": {"type": "constant", "value": 3.0}})
    p = scenario.true_problem(cfg, SELF, k_background=1.0, k_barrier=1.0)
    assert np.all(owned(p.K) == 1.0)
    p = scenario.true_problem(from_dict(CUSTOM2D), SELF, k_background=1.0, k_barrier=1.0)
    assert np.all(owned(p.K) == 1.0)


def test_fixed_pressure_from_boundary():
    cfg = from_dict({**CUSTOM2D, "boundary": {"y_hi": 2.0},
                     "wells": [{"position": [1.0, 0.0], "rate": 1.0}]})
    p = scenario.true_problem(cfg, SELF)
    assert p.fixed_pressure == {(1, 1): 2.0} and not p.gauge_free


# --------------------------------------------------------------------------- wells

def test_wells_2d_cells_and_rates():
    cfg = from_dict({**CUSTOM2D, "wells": [
        {"position": [0.3, -0.2], "rate": 1.0}, {"position": [1.7, 0.1], "rate": -0.75},
        {"position": [0.3, -0.2], "rate": 0.5},          # same cell: rates add
        {"position": [2.0, 0.5], "rate": -0.75}]})        # top corner: the last cell
    p = scenario.true_problem(cfg, SELF)
    xc, yc = centres((0.0, 2.0), 20), centres((-1.0, 0.5), 11)
    dx, dy = 0.1, 1.5 / 11
    expect = []
    for x, y in ((0.3, -0.2), (1.7, 0.1), (0.3, -0.2)):
        ix = int(np.nonzero((xc > x) & (xc <= x + dx))[0][0])
        iy = int(np.nonzero((yc > y) & (yc <= y + dy))[0][0])
        expect.append([(ix, iy)])
    expect.append([(19, 10)])
    assert [w.cells for w in p.wells] == expect
    Q = owned(p.Qf)
    assert Q[expect[0][0]] == pytest.approx(1.5 / (dx * dy))
    assert Q[expect[1][0]] == pytest.approx(-0.75 / (dx * dy))
    assert np.count_nonzero(Q) == 3
    assert Q.sum() * dx * dy == pytest.approx(0.0, abs=1e-12)


def test_wells_3d_column_and_point():
    cfg = from_dict(CUSTOM3D)
    p = scenario.true_problem(cfg, SELF)
    xc, yc, zc = (centres(e, n) for e, n in zip(cfg.extent(), cfg.grid_shape()))
    vol = (1 / 9) * (2 / 8) * (1.4 / 7)
    col, pt = p.wells
    iz = np.nonzero((zc > 0.3) & (zc <= 1.0))[0]
    assert len(iz) == 3
    ix, iy = int(np.searchsorted(xc, 0.25, "right")), int(np.searchsorted(yc, 0.5, "right"))
    assert col.cells == [(ix, iy, int(k)) for k in iz]
    assert col.position == (0.25, 0.5, 0.65)               # marked at the middle of z_range
    Q = owned(p.Qf)
    for c in col.cells:
        assert Q[c] == pytest.approx(3.0 / (vol * 3))
    assert len(pt.cells) == 1 and Q[pt.cells[0]] == pytest.approx(-3.0 / vol)
    assert pt.position == (0.75, 1.5, 0.7)
    assert Q.sum() * vol == pytest.approx(0.0, abs=1e-12)


def test_well_errors():
    cfg = cfg_of(CUSTOM3D, wells=[{"position": [0.5, 0.5], "rate": 1.0,
                                   "z_range": [0.01, 0.05]},
                                  {"position": [0.5, 1.0], "rate": -1.0, "z_range": [0, 1]}])
    with pytest.raises(ConfigError, match=r"^wells\[0\]\.z_range: no cell centre in 0\.01 < z"):
        scenario.true_problem(cfg, SELF)
    # the builder repeats the domain check (configs edited after validation)
    cfg = from_dict(CUSTOM2D)
    cfg.wells[1].position = [2.5, 0.0]
    with pytest.raises(ConfigError, match=r"^wells\[1\]\.position \(2\.5, 0\) lies outside"):
        scenario.true_problem(cfg, SELF)


# --------------------------------------------------------------------------- permeability files

def _file_cfg(path, **kw):
    return cfg_of(CUSTOM2D, permeability={"type": "file", "file": str(path), **kw})


def test_permeability_file_errors(shared_dir):
    good = np.ones((20, 11))
    write_h5(shared_dir / "ok.h5", K=good, wrong=np.ones((11, 20)), neg=-good,
             text=np.array([b"a"] * 3))
    nan = good.copy()
    nan[3, 4] = np.nan
    write_h5(shared_dir / "nan.h5", K=nan, big=np.full((20, 11), 400.0))
    if WORLD.Get_rank() == 0:
        (shared_dir / "junk.h5").write_text("not hdf5")
    WORLD.Barrier()
    cases = [
        (_file_cfg(shared_dir / "missing.h5"), r"permeability\.file: file not found: .*missing"),
        (_file_cfg(shared_dir / "junk.h5"), r"permeability\.file: cannot read .*junk\.h5 as HDF5"),
        (_file_cfg(shared_dir / "ok.h5", dataset="Kx"),
         r"permeability\.file: .*ok\.h5 has no dataset 'Kx' \(datasets: K, neg, text, wrong\)"),
        (_file_cfg(shared_dir / "ok.h5", dataset="wrong"),
         r"dataset 'wrong' in .*ok\.h5 has shape \(11, 20\), expected the grid's \(20, 11\)"),
        (_file_cfg(shared_dir / "ok.h5", dataset="neg"),
         r"dataset 'neg' in .*ok\.h5 has 220 cell\(s\) with K <= 0"),
        (_file_cfg(shared_dir / "ok.h5", dataset="text"), r"has shape|not numeric"),
        (_file_cfg(shared_dir / "nan.h5"), r"dataset 'K' in .*nan\.h5 has 1 cell\(s\)"),
        (_file_cfg(shared_dir / "nan.h5", dataset="big", log10=True),
         r"has 220 cell\(s\) with log10 K not finite"),
    ]
    for cfg, pattern in cases:
        with pytest.raises(ConfigError, match=pattern) as exc:
            scenario.true_problem(cfg, WORLD)
        assert "\n" not in str(exc.value)


# --------------------------------------------------------------------------- initial model

def test_initial_logK_constant_and_file(shared_dir):
    cfg = from_dict(CUSTOM2D)
    p = scenario.true_problem(cfg, WORLD)
    m = scenario.initial_logK(cfg, p)
    assert m.shape == p.K.shape and np.all(owned(m) == 0.0)
    cfg = cfg_of(CUSTOM2D, inversion={"initial_logK": -2.0})
    m = scenario.initial_logK(cfg, p)
    assert np.all(m[p.grid.decomp.owned()] == -2.0)
    rng = np.random.default_rng(1)
    glob = rng.normal(size=(20, 11))
    f = write_h5(shared_dir / "m.h5", logK=glob, model=glob * 2, bad=np.full((20, 11), np.inf))
    cfg = cfg_of(CUSTOM2D, inversion={"initial_file": f})
    m = gather_cells(p.grid.decomp, scenario.initial_logK(cfg, p))
    if WORLD.Get_rank() == 0:
        np.testing.assert_array_equal(m, glob)
    cfg = cfg_of(CUSTOM2D, inversion={"initial_file": f, "initial_dataset": "model"})
    m = gather_cells(p.grid.decomp, scenario.initial_logK(cfg, p))
    if WORLD.Get_rank() == 0:
        np.testing.assert_array_equal(m, glob * 2)
    with pytest.raises(ConfigError, match=r"inversion\.initial_file: .*has 220 non-finite"):
        scenario.initial_logK(cfg_of(CUSTOM2D, inversion={"initial_file": f,
                                                          "initial_dataset": "bad"}), p)
    with pytest.raises(ConfigError, match=r"^inversion\.initial_file: file not found"):
        scenario.initial_logK(cfg_of(CUSTOM2D, inversion={
            "initial_file": str(shared_dir / "nope.h5")}), p)


# --------------------------------------------------------------------------- observations

def obs_cfg(**o):
    return from_dict({"grid": {"nx": 31, "ny": 17}, "observations": o})


def grid_of(cfg, comm=SELF):
    return scenario.true_problem(cfg, comm).grid


def test_workshop_and_grid_points():
    cfg = obs_cfg()
    pts, v, s = scenario.observation_points(cfg, grid_of(cfg))
    np.testing.assert_array_equal(pts, workshop_points(2))
    assert v is None and s is None
    cfg = obs_cfg(points="grid", grid={"x": [-0.5, 0.5, 3], "y": [0.2, 0.8, 4]})
    pts, _, _ = scenario.observation_points(cfg, grid_of(cfg))
    X, Y = np.meshgrid(np.linspace(-0.5, 0.5, 3), np.linspace(0.2, 0.8, 4), indexing="ij")
    np.testing.assert_array_equal(pts, np.stack([X.ravel(), Y.ravel()], axis=1))
    assert pts[1].tolist() == [-0.5, 0.4]                     # x slowest
    c3 = from_dict({**CUSTOM3D, "observations": {"points": "grid", "grid": {
        "x": [0.1, 0.9, 2], "y": [0.5, 1.5, 3], "z": [0.7, 0.7, 1]}}})
    pts, _, _ = scenario.observation_points(c3, grid_of(c3))
    assert pts.shape == (6, 3) and np.all(pts[:, 2] == 0.7)


def _write(path, text):
    if WORLD.Get_rank() == 0:
        Path(path).write_text(text)
    WORLD.Barrier()
    return str(path)


def test_csv_with_values_and_sigma(shared_dir):
    f = _write(shared_dir / "o.csv", "# field data\n\n sigma, value , y, x  # any order\n"
               "0.5, 1.25, 0.3, -0.2\n# a comment line\n0.25, -1e-3, 0.9, 0.7 # trailing\n")
    cfg = obs_cfg(points="file", file=f, method="linear", sigma=3.0)
    grid = grid_of(cfg, WORLD)
    pts, v, s = scenario.observation_points(cfg, grid)
    np.testing.assert_array_equal(pts, [[-0.2, 0.3], [0.7, 0.9]])
    np.testing.assert_array_equal(v, [1.25, -1e-3])
    np.testing.assert_array_equal(s, [0.5, 0.25])
    assert not scenario.needs_synthetic_values(cfg, WORLD)
    obs = scenario.make_observations(cfg, grid, true_Pf=np.ones(grid.decomp.padded_shape))
    np.testing.assert_array_equal(obs.values, [1.25, -1e-3])    # the file's values win
    np.testing.assert_array_equal(obs.sigma, [0.5, 0.25])
    assert obs.method == "linear" and obs.demean


def test_csv_points_only_synthesises_values(shared_dir):
    f = _write(shared_dir / "p.csv", "x,y\n-0.2,0.3\n0.7,0.9\n0.0,0.5\n")
    cfg = from_dict({"grid": {"nx": 31, "ny": 17}, "boundary": {"y_hi": 0.0},
                     "observations": {"points": "file", "file": f, "sigma": 2.0}})
    true = scenario.true_problem(cfg, WORLD)
    assert scenario.needs_synthetic_values(cfg, WORLD)
    X, Y = true.grid.mesh()
    Pf = np.asarray(X + 10 * Y, dtype=float) * np.ones(true.grid.decomp.padded_shape)
    obs = scenario.make_observations(cfg, true.grid, true_Pf=Pf)
    assert not obs.demean                                       # a fixed side
    np.testing.assert_array_equal(obs.sigma, [2.0, 2.0, 2.0])
    ref = scenario.Observations(true.grid, [[-0.2, 0.3], [0.7, 0.9], [0.0, 0.5]])
    ref.record(Pf)
    np.testing.assert_array_equal(obs.values, ref.values)
    # no true_Pf: the values are left to the caller
    assert scenario.make_observations(cfg, true.grid).values is None


def test_hdf5_observations(shared_dir):
    pts = np.array([[-0.5, 0.2], [0.5, 0.8], [0.0, 0.5]])
    f1 = write_h5(shared_dir / "o1.h5", points=pts)
    f2 = write_h5(shared_dir / "o2.hdf5", points=pts, values=[1.0, 2.0, 3.0],
                  sigma=[0.1, 0.2, 0.3])
    f3 = write_h5(shared_dir / "o3.h5", points=pts, sigma=[0.1, 0.2, 0.3])
    for f, has_v, has_s in ((f1, False, False), (f2, True, True), (f3, False, True)):
        cfg = obs_cfg(points="file", file=f)
        grid = grid_of(cfg, WORLD)
        p, v, s = scenario.observation_points(cfg, grid)
        np.testing.assert_array_equal(p, pts)
        assert (v is not None, s is not None) == (has_v, has_s)
        assert scenario.needs_synthetic_values(cfg, WORLD) == (not has_v)
        obs = scenario.make_observations(cfg, grid)
        np.testing.assert_array_equal(obs.sigma, s if has_s else np.ones(3))
        if has_v:
            np.testing.assert_array_equal(obs.values, [1.0, 2.0, 3.0])


def test_observation_file_errors(shared_dir):
    d = shared_dir
    pts = np.array([[-0.5, 0.2], [0.5, 0.8]])
    cases = [
        ("missing.csv", None, r"observations\.file: file not found: .*missing\.csv"),
        ("missing.h5", None, r"observations\.file: file not found"),
        ("junk.h5", "text", r"observations\.file: cannot read .*junk\.h5 as HDF5"),
        ("empty.csv", "# nothing\n", r"holds no observations"),
        ("header.csv", "x,y,value\n", r"holds no observations"),
        ("noy.csv", "x,value\n0,1\n", r"has no column y"),
        ("typo.csv", "x,y,vlaue\n0,0.5,1\n", r"line 1: unknown column 'vlaue' \(did you mean "
                                              r"'value'\?\)"),
        ("twice.csv", "x,y,x\n0,0.5,1\n", r"a column is named twice"),
        ("z.csv", "x,y,z\n0,0.5,1\n", r"has a z column but the problem is 2D"),
        ("short.csv", "x,y,value\n0,0.5\n", r"line 2: 2 fields, the header has 3"),
        ("nan.csv", "x,y,value\n0,0.5,1\n0,0.6,nan\n", r"line 3: value is not finite \(nan\)"),
        ("word.csv", "x,y\n0,abc\n", r"line 2: not a number"),
        ("out.csv", "x,y\n0,0.5\n1.5,0.2\n", r"^observations\.file .*out\.csv: observation "
                                             r"point 1 \(1\.5, 0\.2\) lies outside the domain"),
        ("sig.csv", "x,y,sigma\n0,0.5,0\n", r"observation sigma 0 must be positive"),
        ("nopts.h5", {"values": [1.0]}, r"has no dataset 'points'"),
        ("shape.h5", {"points": np.ones((2, 3))}, r"dataset 'points' .* has shape \(2, 3\)"),
        ("vshape.h5", {"points": pts, "values": [1.0]}, r"dataset 'values' .* has shape \(1,\)"),
        ("vnan.h5", {"points": pts, "values": [1.0, np.nan]},
         r"dataset 'values' in .*vnan\.h5 has a NaN or inf value \(entry 1\)"),
        ("pout.h5", {"points": pts * 3}, r"observation point 0 .* lies outside the domain"),
    ]
    for name, content, pattern in cases:
        path = d / name
        if isinstance(content, dict):
            write_h5(path, **content)
        elif content is not None:
            _write(path, content)
        cfg = obs_cfg(points="file", file=str(path))
        grid = grid_of(cfg, WORLD)
        with pytest.raises(ConfigError, match=pattern) as exc:
            scenario.make_observations(cfg, grid)
        assert "\n" not in str(exc.value), name


def test_workshop_points_outside_a_custom_domain():
    cfg = cfg_of(CUSTOM2D, observations={"points": "workshop"})
    grid = grid_of(cfg)
    with pytest.raises(ConfigError, match=r'^observations\.points = "workshop": observation '
                                          r'point 0 .* lies outside the domain'):
        scenario.make_observations(cfg, grid)


# --------------------------------------------------------------------------- examples

def test_custom_example_builds():
    cfg = load(ROOT / "examples" / "custom2d.toml")
    p = scenario.true_problem(cfg, SELF)
    assert p.name == "custom" and len(p.wells) == 2 and p.gauge_free
    K = owned(p.K)
    assert set(np.unique(K)) == {1.0, 0.1, 1e-3}
    obs = scenario.make_observations(cfg, p.grid)
    assert len(obs) == 45 and obs.method == "linear"


def test_field_data_example_builds():
    cfg = load(ROOT / "examples" / "field_data2d.toml")
    grid = grid_of(cfg)
    assert not scenario.needs_synthetic_values(cfg, SELF)
    obs = scenario.make_observations(cfg, grid)
    assert len(obs) == 48 and obs.values is not None
    assert set(np.unique(obs.sigma)) == {0.01, 0.02}


# --------------------------------------------------------------------------- MPI invariance

@pytest.mark.mpi(min_size=2)
def test_models_gathered_equal_one_rank(shared_dir):
    """Every permeability model and the wells' sources, built on all ranks and gathered, are
    bitwise the 1-rank arrays."""
    for name, cfg, expected in expected_models(shared_dir):
        par = scenario.true_problem(cfg, WORLD)
        Kp = gather_cells(par.grid.decomp, par.K)
        Qp = gather_cells(par.grid.decomp, par.Qf)
        if WORLD.Get_rank() == 0:
            one = scenario.true_problem(cfg, SELF)
            assert Kp.tobytes() == owned(one.K).tobytes(), name
            assert Qp.tobytes() == owned(one.Qf).tobytes(), name
            np.testing.assert_array_equal(Kp, expected, err_msg=name)
            assert [w.cells for w in par.wells] == [w.cells for w in one.wells]


@pytest.mark.mpi(min_size=2)
def test_file_error_raised_on_every_rank(shared_dir):
    """A file only some ranks fail on (bad values in one rank's block) raises everywhere."""
    K = np.ones((20, 11))
    K[0, 0] = -1.0                                  # in rank 0's block only
    f = write_h5(shared_dir / "partial.h5", K=K)
    with pytest.raises(ConfigError, match=r"has 1 cell\(s\) with K <= 0"):
        scenario.true_problem(_file_cfg(f), WORLD)


@pytest.mark.mpi(min_size=2)
def test_observations_identical_on_every_rank(shared_dir):
    f = _write(shared_dir / "o.csv", "x,y,value\n-0.2,0.3,1\n0.7,0.9,2\n")
    cfg = obs_cfg(points="file", file=f)
    obs = scenario.make_observations(cfg, grid_of(cfg, WORLD))
    allv = WORLD.allgather((obs.points.tobytes(), obs.values.tobytes(), obs.sigma.tobytes()))
    assert all(a == allv[0] for a in allv)
