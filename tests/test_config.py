"""The typed TOML config: every key round-trips, type and value errors are one line with hints,
the shipped examples load, and docs/configuration.md documents every key."""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest

try:
    import tomllib
except ImportError:  # Python < 3.11
    import tomli as tomllib

from hpcinv import config as config_mod
from hpcinv.config import Config, dumps, from_dict, load
from hpcinv.errors import ConfigError, HpcinvError

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.toml"))


def all_keys():
    """``[(section, key), ...]`` for every field of every section of :class:`Config`."""
    return [(s.name, k.name) for s in dataclasses.fields(Config)
            for k in dataclasses.fields(getattr(Config(), s.name))]


def non_default_dict():
    """A config dict that sets every key to a valid, non-default value."""
    return {
        "problem": {"name": "geothermal3d", "k_background": 2.5, "k_barrier": 3e-5},
        "grid": {"nx": 11, "ny": 7, "nz": 5},
        "solver": {"cfl": 0.5, "re": 2.5, "tol": 1e-6, "maxiter": 1234, "ncheck": 7,
                   "dtype": "float32"},
        "adjoint": {"cfl": 0.45, "re": 3.5, "tol": 1e-7, "maxiter": 4321, "ncheck": 9},
        # every side fixed (the problem is 3D); an integer pressure stays an integer
        "boundary": {"x_lo": 1.5, "x_hi": -2.0, "y_lo": 0.0, "y_hi": 3.25, "z_lo": 1e-3,
                     "z_hi": 7},
        "observations": {"method": "linear", "sigma": 0.5},
        "regularisation": {"smoothing_steps": 5, "smoothing_coefficient": 0.125,
                           "tikhonov": 1e-3},
        "parallel": {"backend": "host", "dims": [2, 0, 1], "overlap": False,
                     "cuda_aware": True, "threads": 3},
        "output": {"dir": 'out dir/with "quotes" and \\ backslash'},
    }


def reload(cfg: Config) -> Config:
    return from_dict(tomllib.loads(dumps(cfg)))


def test_fixture_covers_every_key():
    data = non_default_dict()
    assert sorted((s, k) for s, keys in data.items() for k in keys) == sorted(all_keys())
    default = Config()
    for s, keys in data.items():
        for k, v in keys.items():
            assert getattr(getattr(default, s), k) != v, f"{s}.{k} equals its default"


def test_defaults():
    cfg = Config().validate()
    assert cfg.problem.name == "geothermal2d"
    assert (cfg.problem.k_background, cfg.problem.k_barrier) == (1.0, 1e-6)
    assert (cfg.grid.nx, cfg.grid.ny, cfg.grid.nz) == (None, None, None)
    assert cfg.solver.cfl is None and cfg.solver.maxiter is None
    assert cfg.solver.re == pytest.approx(2 * math.pi)
    assert (cfg.solver.tol, cfg.solver.ncheck, cfg.solver.dtype) == (1e-8, 100, "float64")
    a = cfg.adjoint
    assert a.cfl is None and a.maxiter is None and a.re == pytest.approx(2 * math.pi)
    assert (a.tol, a.ncheck) == (1e-8, 100)
    assert all(getattr(cfg.boundary, s) == "no-flux" for s in config_mod.SIDES)
    assert cfg.boundary.fixed_pressure(2) == {} and cfg.boundary.fixed_pressure(3) == {}
    assert (cfg.observations.method, cfg.observations.sigma) == ("nearest", 1.0)
    r = cfg.regularisation
    assert r.smoothing_steps == 49 and r.tikhonov == 0.0
    assert r.smoothing_coefficient in (None, 0.2)    # None: 0.8/(2 ndim), 0.2 in 2D
    assert cfg.parallel.backend == "auto" and cfg.parallel.dims is None
    assert cfg.parallel.overlap is True and cfg.parallel.cuda_aware == "auto"
    assert cfg.parallel.threads == 0
    assert cfg.output.dir == "runs/forward"
    assert from_dict({}) == cfg
    assert reload(cfg) == cfg


def test_every_key_round_trips():
    cfg = from_dict(non_default_dict())
    text = dumps(cfg)
    for s, k in all_keys():
        assert f"[{s}]" in text
    again = reload(cfg)
    assert again == cfg
    for s, keys in non_default_dict().items():
        for k, v in keys.items():
            got = getattr(getattr(again, s), k)
            assert got == v and type(got) is type(v), (s, k, got, v)


@pytest.mark.parametrize("section, key, value", [
    ("parallel", "cuda_aware", False), ("parallel", "cuda_aware", "auto"),
    ("parallel", "overlap", True), ("parallel", "dims", [0, 0]), ("parallel", "dims", [4, 1]),
    ("solver", "dtype", "float64"), ("problem", "k_barrier", 1.0), ("solver", "re", 1e-3),
    ("output", "dir", "/abs/path"), ("output", "dir", "ünïcode"),
    ("boundary", "x_lo", "no-flux"), ("boundary", "x_hi", 0), ("boundary", "y_lo", -1.5),
    ("boundary", "y_hi", 1e300), ("observations", "method", "linear"),
    ("observations", "sigma", 1e-6), ("regularisation", "smoothing_steps", 0),
    ("regularisation", "smoothing_coefficient", 0.25), ("regularisation", "tikhonov", 0.0),
    ("adjoint", "maxiter", 1), ("adjoint", "cfl", 1.0),
])
def test_single_values_round_trip(tmp_path, section, key, value):
    cfg = from_dict({section: {key: value}})
    p = tmp_path / "c.toml"
    p.write_text(dumps(cfg))
    assert load(p) == cfg
    assert getattr(getattr(load(p), section), key) == value


def test_float_keys_accept_integers():
    cfg = from_dict({"problem": {"k_barrier": 1, "k_background": 3}, "solver": {"cfl": 1}})
    assert cfg.problem.k_barrier == 1.0 and isinstance(cfg.problem.k_barrier, float)
    assert isinstance(cfg.solver.cfl, float)


@pytest.mark.parametrize("section, key, value, kind", [
    ("grid", "nx", "10", "int"), ("grid", "nx", 10.0, "int"), ("grid", "nx", True, "int"),
    ("solver", "tol", "small", "float"), ("solver", "cfl", True, "float"),
    ("solver", "maxiter", 1.5, "int"), ("solver", "dtype", 64, "str"),
    ("problem", "name", 3, "str"), ("problem", "k_barrier", "1e-6", "float"),
    ("parallel", "overlap", 1, "bool"), ("parallel", "overlap", "yes", "bool"),
    ("parallel", "dims", 2, "list"), ("parallel", "threads", 2.0, "int"),
    ("output", "dir", 5, "str"),
    ("adjoint", "maxiter", 1.5, "int"), ("adjoint", "tol", "1e-8", "float"),
    ("adjoint", "ncheck", True, "int"),
    ("observations", "method", 3, "str"), ("observations", "sigma", "1", "float"),
    ("observations", "sigma", False, "float"),
    ("regularisation", "smoothing_steps", 1.5, "int"),
    ("regularisation", "smoothing_steps", True, "int"),
    ("regularisation", "smoothing_coefficient", "0.2", "float"),
    ("regularisation", "tikhonov", True, "float"),
])
def test_type_errors(section, key, value, kind):
    with pytest.raises(ConfigError, match=rf"^{section}\.{key} must be of type {kind}, got "):
        from_dict({section: {key: value}})


@pytest.mark.parametrize("section, key, hint", [
    ("solver", "ncheks", "ncheck"), ("solver", "tolerance", "tol"), ("solver", "Re", "re"),
    ("problem", "k_barier", "k_barrier"), ("parallel", "dim", "dims"),
    ("parallel", "cuda-aware", "cuda_aware"), ("grid", "nxx", "nx"), ("output", "dirs", "dir"),
    ("adjoint", "ncheks", "ncheck"), ("boundary", "xlo", "x_lo"), ("boundary", "z_high", "z_hi"),
    ("observations", "methods", "method"), ("observations", "sigmas", "sigma"),
    ("regularisation", "smoothing", "smoothing_steps"),
    ("regularisation", "smoothing_coef", "smoothing_coefficient"),
    ("regularisation", "tikhonow", "tikhonov"),
])
def test_unknown_key_names_closest(section, key, hint):
    with pytest.raises(ConfigError) as exc:
        from_dict({section: {key: 1}}, source="run.toml")
    msg = str(exc.value)
    assert msg.startswith(f"run.toml: unknown key {section}.{key}")
    assert f"(did you mean '{hint}'?)" in msg


@pytest.mark.parametrize("section, hint", [("solvr", "solver"), ("grids", "grid"),
                                           ("paralel", "parallel"), ("problems", "problem"),
                                           ("outputs", "output"), ("adjiont", "adjoint"),
                                           ("boundaries", "boundary"),
                                           ("observation", "observations"),
                                           ("regularization", "regularisation")])
def test_unknown_section_names_closest(section, hint):
    with pytest.raises(ConfigError, match=rf"unknown section \[{section}\] "
                                          rf"\(did you mean '{hint}'\?\)"):
        from_dict({section: {}})


def test_unknown_key_without_close_match():
    with pytest.raises(ConfigError) as exc:
        from_dict({"solver": {"zzzzzz": 1}})
    assert "unknown key solver.zzzzzz" in str(exc.value)
    assert "did you mean" not in str(exc.value)


def test_section_must_be_a_table():
    with pytest.raises(ConfigError, match=r"\[solver\] must be a table"):
        from_dict({"solver": 3})


@pytest.mark.parametrize("section, key, value, needle", [
    ("problem", "name", "geothermal2", "did you mean 'geothermal2d'"),
    ("problem", "k_barrier", math.nan, "problem.k_barrier"),
    ("problem", "k_barrier", -1.0, "problem.k_barrier"),
    ("problem", "k_barrier", 0.0, "problem.k_barrier"),
    ("problem", "k_background", math.inf, "problem.k_background"),
    ("solver", "cfl", 0.0, "solver.cfl"), ("solver", "cfl", 1.01, "solver.cfl"),
    ("solver", "re", -1.0, "solver.re"), ("solver", "re", math.inf, "solver.re"),
    ("solver", "tol", 0.0, "solver.tol"), ("solver", "tol", 1.0, "solver.tol"),
    ("solver", "maxiter", 0, "solver.maxiter"), ("solver", "ncheck", 0, "solver.ncheck"),
    ("solver", "dtype", "float16", "solver.dtype"),
    ("parallel", "backend", "cuda", "parallel.backend"),
    ("parallel", "backend", "hots", "did you mean 'host'"),
    ("parallel", "cuda_aware", "yes", "parallel.cuda_aware"),
    ("parallel", "cuda_aware", 1, "parallel.cuda_aware"),   # 1 == True, but not a bool
    ("parallel", "threads", -1, "parallel.threads"),
    ("parallel", "dims", [2, -1], "parallel.dims"),
    ("parallel", "dims", [True, 1], "parallel.dims"),
    ("parallel", "dims", [1.5, 1], "parallel.dims"),
    ("adjoint", "cfl", 0.0, "cfl"), ("adjoint", "cfl", 1.01, "cfl"),
    ("adjoint", "re", -1.0, ".re"), ("adjoint", "re", math.nan, ".re"),
    ("adjoint", "tol", 0.0, "tol"), ("adjoint", "tol", 1.0, "tol"),
    ("adjoint", "maxiter", 0, "maxiter"), ("adjoint", "ncheck", 0, "ncheck"),
    ("boundary", "x_lo", "wall", "boundary.x_lo"),
    ("boundary", "x_lo", "No-Flux", "boundary.x_lo"),
    ("boundary", "x_lo", math.nan, "boundary.x_lo"),
    ("boundary", "x_lo", math.inf, "boundary.x_lo"),
    ("boundary", "x_lo", True, "boundary.x_lo"),
    ("boundary", "x_lo", [0.0], "boundary.x_lo"),
    ("boundary", "y_hi", -math.inf, "boundary.y_hi"),
    ("boundary", "z_hi", "open", "boundary.z_hi"),
    ("observations", "method", "cubic", "observations.method"),
    ("observations", "method", "Nearest", "observations.method"),
    ("observations", "sigma", 0.0, "observations.sigma"),
    ("observations", "sigma", -1.0, "observations.sigma"),
    ("observations", "sigma", math.nan, "observations.sigma"),
    ("observations", "sigma", math.inf, "observations.sigma"),
    ("regularisation", "smoothing_steps", -1, "regularisation.smoothing_steps"),
    ("regularisation", "smoothing_coefficient", 0.3, "regularisation.smoothing_coefficient"),
    ("regularisation", "smoothing_coefficient", 0.0, "regularisation.smoothing_coefficient"),
    ("regularisation", "smoothing_coefficient", -0.1, "regularisation.smoothing_coefficient"),
    ("regularisation", "smoothing_coefficient", math.nan,
     "regularisation.smoothing_coefficient"),
    ("regularisation", "tikhonov", -1.0, "regularisation.tikhonov"),
    ("regularisation", "tikhonov", math.inf, "regularisation.tikhonov"),
    ("regularisation", "tikhonov", math.nan, "regularisation.tikhonov"),
])
def test_value_errors(section, key, value, needle):
    with pytest.raises(ConfigError) as exc:
        from_dict({section: {key: value}})
    msg = str(exc.value)
    assert needle in msg
    assert "\n" not in msg


@pytest.mark.parametrize("key, value", [("cfl", 2.0), ("re", -1.0), ("tol", 0.0),
                                        ("maxiter", 0), ("ncheck", 0)])
def test_adjoint_errors_name_adjoint(key, value):
    with pytest.raises(ConfigError, match=rf"^adjoint\.{key} "):
        from_dict({"adjoint": {key: value}})


def test_smoothing_coefficient_limit_depends_on_dimension():
    from_dict({"regularisation": {"smoothing_coefficient": 0.25}})          # 2D: <= 1/4
    with pytest.raises(ConfigError, match="regularisation.smoothing_coefficient"):
        from_dict({"problem": {"name": "geothermal3d"},
                   "regularisation": {"smoothing_coefficient": 0.2}})     # 3D: <= 1/6


def test_errors_are_hpcinv_errors():
    assert issubclass(ConfigError, HpcinvError)


def test_load_errors(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[solver]\ntol = \n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load(bad)
    bad.write_text("[problem]\nk_barrier = nan\n")
    with pytest.raises(ConfigError, match="k_barrier"):
        load(bad)


def test_grid_shape():
    g = from_dict({"grid": {"nx": 9}}).grid
    assert g.shape((255, 127)) == (9, 127)
    assert from_dict({"grid": {"nz": 4}}).grid.shape((3, 4, 5)) == (3, 4, 4)
    with pytest.raises(ConfigError, match="nz"):
        from_dict({"grid": {"nz": 4}}).grid.shape((255, 127))


def test_boundary_fixed_pressure():
    b = from_dict({"boundary": {"x_lo": 2, "y_hi": -0.5}}).boundary
    fp = b.fixed_pressure(2)
    assert fp == {(0, 0): 2.0, (1, 1): -0.5}
    assert all(type(v) is float for v in fp.values())
    assert b.fixed_pressure(3) == fp
    b = from_dict({"boundary": {"z_lo": 1.0, "z_hi": "no-flux", "x_hi": 0.0}}).boundary
    assert b.fixed_pressure(3) == {(0, 1): 0.0, (2, 0): 1.0}
    # a z side is accepted by the config (the problem is not known yet) but is an error as
    # soon as a 2D problem asks for its sides
    with pytest.raises(ConfigError, match=r"boundary\.z_lo given for a 2D problem"):
        b.fixed_pressure(2)
    b = from_dict({"boundary": {"z_hi": 0}}).boundary
    with pytest.raises(ConfigError, match=r"boundary\.z_hi given for a 2D problem"):
        b.fixed_pressure(2)
    # "no-flux" on a z side is harmless in 2D
    assert from_dict({"boundary": {"z_lo": "no-flux"}}).boundary.fixed_pressure(2) == {}


def test_boundary_from_toml(tmp_path):
    p = tmp_path / "b.toml"
    p.write_text('[boundary]\nx_lo = "no-flux"\ny_hi = 0.0\nx_hi = -3\n')
    assert load(p).boundary.fixed_pressure(2) == {(1, 1): 0.0, (0, 1): -3.0}
    p.write_text("[boundary]\nx_lo = nan\n")
    with pytest.raises(ConfigError, match=r"boundary\.x_lo"):
        load(p)
    p.write_text("[boundary]\nx_lo = true\n")
    with pytest.raises(ConfigError, match=r"boundary\.x_lo"):
        load(p)


def test_pt_params():
    cfg = from_dict({"solver": {"cfl": 0.4, "re": 3.0, "tol": 1e-5, "maxiter": 9,
                                "ncheck": 3}})
    p = cfg.pt_params()
    assert (p.cfl, p.re, p.tol, p.maxiter, p.ncheck) == (0.4, 3.0, 1e-5, 9, 3)


def test_adjoint_pt_params():
    cfg = from_dict({"solver": {"cfl": 0.4, "tol": 1e-5},
                     "adjoint": {"cfl": 0.3, "re": 4.0, "tol": 1e-9, "maxiter": 11,
                                 "ncheck": 5}})
    a = cfg.adjoint_pt_params()
    assert (a.cfl, a.re, a.tol, a.maxiter, a.ncheck) == (0.3, 4.0, 1e-9, 11, 5)
    p = cfg.pt_params()                      # independent of [solver]
    assert (p.cfl, p.tol) == (0.4, 1e-5)
    d = Config().adjoint_pt_params()         # defaults as the forward's
    f = Config().pt_params()
    assert (d.cfl, d.re, d.tol, d.maxiter, d.ncheck) == (f.cfl, f.re, f.tol, f.maxiter, f.ncheck)


# --------------------------------------------------------------------------- examples, docs

def test_examples_exist():
    names = {p.name for p in EXAMPLES}
    assert {"forward2d.toml", "forward3d.toml", "gradient2d.toml"} <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_load(path):
    cfg = load(path)
    data = tomllib.loads(path.read_text())
    # the examples show every section
    assert set(data) == {f.name for f in dataclasses.fields(Config)}
    shape = cfg.grid.shape({"geothermal2d": (255, 127),
                            "geothermal3d": (127, 63, 63)}[cfg.problem.name])
    assert len(shape) == (3 if "3d" in path.name else 2)
    cfg.boundary.fixed_pressure(len(shape))      # no z side in a 2D example
    assert reload(cfg) == cfg


def test_gradient_example_fixes_a_side():
    cfg = load(ROOT / "examples" / "gradient2d.toml")
    assert cfg.boundary.fixed_pressure(2)         # the plain (not demeaned) misfit


def test_docs_name_every_key():
    doc = (ROOT / "docs" / "configuration.md").read_text()
    missing = [f"{s}.{k}" for s, k in all_keys() if f"`{k}`" not in doc or f"[{s}]" not in doc]
    assert not missing, f"docs/configuration.md does not document {missing}"


def test_module_docstring_mentions_every_section():
    for s in (f.name for f in dataclasses.fields(Config)):
        assert f"[{s}]" in config_mod.__doc__
