"""The typed TOML config: every key round-trips, type and value errors are one line with hints,
the shipped examples load, and docs/configuration.md documents every key."""
from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path

import pytest

try:
    import tomllib
except ImportError:  # Python < 3.11
    import tomli as tomllib

from hpcinv import config as config_mod
from hpcinv.config import Config, dumps, from_dict, load, schema, validate_config
from hpcinv.errors import ConfigError, HpcinvError

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.toml"))


def all_keys():
    """``[(section, key), ...]`` for every field of every section of :class:`Config`
    (``wells``: the keys of one ``[[wells]]`` table)."""
    out = []
    for s in dataclasses.fields(Config):
        sec = config_mod.WellConfig() if s.name == "wells" else getattr(Config(), s.name)
        out += [(s.name, k.name) for k in dataclasses.fields(sec)]
    return out


def non_default_dicts():
    """Config dicts that together set every key to a valid, non-default value (some keys
    exclude each other: a permeability type, a points kind, initial_logK vs initial_file)."""
    a = {
        "problem": {"name": "geothermal3d", "k_background": 2.5, "k_barrier": 3e-5},
        "grid": {"nx": 11, "ny": 7, "nz": 5},
        "solver": {"method": "petsc", "cfl": 0.5, "re": 2.5, "tol": 1e-6, "maxiter": 1234,
                   "ncheck": 7, "first_check": 3, "dtype": "float32"},
        "adjoint": {"cfl": 0.45, "re": 3.5, "tol": 1e-7, "maxiter": 4321, "ncheck": 9,
                    "first_check": 5},
        # every side fixed (the problem is 3D); an integer pressure stays an integer
        "boundary": {"x_lo": 1.5, "x_hi": -2.0, "y_lo": 0.0, "y_hi": 3.25, "z_lo": 1e-3,
                     "z_hi": 7},
        "permeability": {"type": "file", "file": "K dir/K.h5", "dataset": "logK10",
                         "log10": True},
        # fixed sides: the rates need not sum to 0
        "wells": [{"position": [-0.5, 0.5], "rate": 2.0, "z_range": [0.1, 0.9]},
                  {"position": [0.5, 0.5, 0.5], "rate": -0.5}],
        "observations": {"method": "linear", "sigma": 0.5, "points": "file",
                         "file": "obs.h5"},
        "regularisation": {"smoothing_steps": 5, "smoothing_coefficient": 0.125,
                           "tikhonov": 1e-3},
        "inversion": {"method": "lbfgs", "iterations": 7, "dgamma": 0.05,
                      "line_search": True, "misfit_ratio": 1e-3, "step_tol": 1e-4,
                      "logK_min": -30.0, "logK_max": 3.0, "warm_start": False,
                      "lbfgs_memory": 3, "precondition": "none",
                      "initial_file": "init.h5", "initial_dataset": "m",
                      "checkpoint_every": 0, "levels": [2, 1], "level_iterations": [5, 2],
                      "level_misfit_ratio": [0.5, 0.0], "level_smoothing": "same",
                      "adaptive_tolerance": False, "tolerance_loose": 1e-4,
                      "adjoint_memory": 3, "forward_prediction": 2,
                      "forward_memory": 2, "gradient_accuracy": 0.2, "memory": "30GB"},
        "parallel": {"backend": "host", "dims": [2, 0, 1], "overlap": False,
                     "cuda_aware": True, "threads": 3},
        "output": {"dir": 'out dir/with "quotes" and \\ backslash', "figures": False,
                   "overwrite": True},
    }
    b = {
        "problem": {"name": "custom"},
        "grid": {"nx": 20, "ny": 10, "extent": [[0, 2.0], [-1.0, 1]]},
        "permeability": {"type": "barrier", "value": 2.0,
                         "barrier": {"x": [0.5, 1.0], "y": [-0.5, 0], "value": 1e-4}},
        "wells": [{"position": [0.2, 0.0], "rate": 1.0}, {"position": [1.8, 0.0], "rate": -1}],
        "observations": {"points": "grid", "grid": {"x": [0.1, 1.9, 4], "y": [-0.5, 0.5, 3]}},
        "inversion": {"initial_logK": -1.5},
    }
    c = {
        "problem": {"name": "custom"},
        "grid": {"nx": 4, "ny": 5, "nz": 6, "extent": [[0, 1], [0, 1], [0, 2]]},
        "permeability": {"type": "layered",
                         "layers": [{"axis": "z", "range": [0.0, 0.5], "value": 0.1},
                                    {"axis": "x", "range": [0.2, 0.4], "value": 3}]},
        "wells": [{"position": [0.5, 0.5, 1.0], "rate": 1.0}],
        "boundary": {"z_hi": 0.0},
    }
    return [a, b, c]


def non_default_dict():
    return non_default_dicts()[0]


def _keys_of(d):
    out = set()
    for s, keys in d.items():
        for entry in (keys if s == "wells" else [keys]):
            out |= {(s, k) for k in entry}
    return out


def reload(cfg: Config) -> Config:
    return from_dict(tomllib.loads(dumps(cfg)))


def test_fixture_covers_every_key():
    covered = set().union(*(_keys_of(d) for d in non_default_dicts()))
    assert sorted(covered) == sorted(all_keys())
    default = Config()
    for d in non_default_dicts():
        for s, keys in d.items():
            if s == "wells":
                continue
            for k, v in keys.items():
                assert getattr(getattr(default, s), k) != v, f"{s}.{k} equals its default"


def test_defaults():
    cfg = validate_config(Config())
    assert cfg.problem.name == "geothermal2d"
    assert (cfg.problem.k_background, cfg.problem.k_barrier) == (1.0, 1e-6)
    assert (cfg.grid.nx, cfg.grid.ny, cfg.grid.nz) == (None, None, None)
    assert cfg.solver.cfl is None and cfg.solver.maxiter is None
    assert cfg.solver.re == pytest.approx(2 * math.pi)
    assert (cfg.solver.tol, cfg.solver.ncheck, cfg.solver.dtype) == (1e-8, 100, "float64")
    a = cfg.adjoint
    assert a.cfl is None and a.maxiter is None and a.re == pytest.approx(2 * math.pi)
    assert (a.tol, a.ncheck) == (1e-8, 100)
    assert all(getattr(cfg.boundary, s) == "no-flux" for s in schema.SIDES)
    assert cfg.boundary.fixed_pressure(2) == {} and cfg.boundary.fixed_pressure(3) == {}
    assert (cfg.observations.method, cfg.observations.sigma) == ("nearest", 1.0)
    r = cfg.regularisation
    assert r.smoothing_steps == 49 and r.tikhonov == 0.0
    assert r.smoothing_coefficient in (None, 0.2)    # None: 0.8/(2 ndim), 0.2 in 2D
    assert cfg.parallel.backend == "auto" and cfg.parallel.dims is None
    assert cfg.parallel.overlap == "auto" and cfg.parallel.cuda_aware == "auto"
    assert cfg.parallel.threads == 0
    assert cfg.output.dir == "runs/forward"
    assert from_dict({}) == cfg
    assert reload(cfg) == cfg


@pytest.mark.parametrize("which", range(3))
def test_every_key_round_trips(which):
    data = non_default_dicts()[which]
    cfg = from_dict(data)
    text = dumps(cfg)
    for s, k in all_keys():
        if s != "wells":
            assert f"[{s}]" in text
    again = reload(cfg)
    assert again == cfg
    for s, keys in data.items():
        if s == "wells":
            assert [dataclasses.asdict(w) for w in again.wells] == [
                {**{"z_range": None}, **w} for w in keys]
            continue
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
    ("inversion", "forward_memory", 1.5, "int"), ("inversion", "forward_memory", "3", "int"),
    ("inversion", "gradient_accuracy", "0.1", "float"),
])
def test_type_errors(section, key, value, kind):
    with pytest.raises(ConfigError, match=rf"^{section}\.{key} must be of type {kind}, got "):
        from_dict({section: {key: value}})


@pytest.mark.parametrize("value", [1, "yes", "on", None])
def test_overlap_is_auto_or_bool(value):
    with pytest.raises(ConfigError, match=r'^parallel\.overlap must be "auto", true or false'):
        from_dict({"parallel": {"overlap": value}})


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
    ("adjoint", "first_check", 0, "adjoint.first_check"),
    ("solver", "dtype", "float16", "solver.dtype"), ("solver", "method", "cg", "solver.method"),
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
    ("inversion", "forward_memory", -1, "inversion.forward_memory must be in [0, 64]"),
    ("inversion", "forward_memory", 65, "inversion.forward_memory must be in [0, 64]"),
    ("inversion", "adjoint_memory", -1, "inversion.adjoint_memory must be in [0, 64]"),
    ("inversion", "gradient_accuracy", 1.0, "inversion.gradient_accuracy must be in [0, 1)"),
    ("inversion", "gradient_accuracy", -0.1, "inversion.gradient_accuracy must be in [0, 1)"),
    ("inversion", "gradient_accuracy", math.nan, "inversion.gradient_accuracy must be in [0, 1)"),
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
    from hpcinv.config.library import pt_params
    cfg = from_dict({"solver": {"cfl": 0.4, "re": 3.0, "tol": 1e-5, "maxiter": 9,
                                "ncheck": 3}})
    p = pt_params(cfg.solver)
    assert (p.cfl, p.re, p.tol, p.maxiter, p.ncheck) == (0.4, 3.0, 1e-5, 9, 3)


def test_adjoint_pt_params():
    from hpcinv.config.library import pt_params
    cfg = from_dict({"solver": {"cfl": 0.4, "tol": 1e-5},
                     "adjoint": {"cfl": 0.3, "re": 4.0, "tol": 1e-9, "maxiter": 11,
                                 "ncheck": 5}})
    a = pt_params(cfg.adjoint)
    assert (a.cfl, a.re, a.tol, a.maxiter, a.ncheck) == (0.3, 4.0, 1e-9, 11, 5)
    p = pt_params(cfg.solver)                # independent of [solver]
    assert (p.cfl, p.tol) == (0.4, 1e-5)
    d = pt_params(Config().adjoint)          # defaults as the forward's
    f = pt_params(Config().solver)
    assert (d.cfl, d.re, d.tol, d.maxiter, d.ncheck) == (f.cfl, f.re, f.tol, f.maxiter, f.ncheck)


# --------------------------------------------------------------------------- examples, docs

def test_examples_exist():
    names = {p.name for p in EXAMPLES}
    assert {"forward2d.toml", "forward3d.toml", "gradient2d.toml", "custom2d.toml",
            "field_data2d.toml", "invert2d.toml"} <= names
    assert (ROOT / "examples" / "data" / "obs_example.csv").is_file()


#: sections an example may leave out (the problem's own true model and wells)
OPTIONAL_SECTIONS = {"permeability", "wells"}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_load(path):
    cfg = load(path)
    data = tomllib.loads(path.read_text())
    # the examples show every section (the true-model sections where they change it)
    assert set(data) >= {f.name for f in dataclasses.fields(Config)} - OPTIONAL_SECTIONS
    assert set(data) <= {f.name for f in dataclasses.fields(Config)}
    shape = cfg.grid_shape()
    assert len(shape) == (3 if "3d" in path.name else 2)
    cfg.boundary.fixed_pressure(len(shape))      # no z side in a 2D example
    assert reload(cfg) == cfg
    p2 = path.parent / ("_roundtrip_" + path.name)
    try:                                         # written next to it: same relative paths
        p2.write_text(dumps(cfg))
        assert load(p2) == cfg
    finally:
        p2.unlink(missing_ok=True)
    for sname, key in schema.PATH_KEYS:      # data files resolved against the example
        v = getattr(getattr(cfg, sname), key)
        assert v is None or Path(v).is_absolute()


def test_examples_mention_every_key():
    """Every key (and every inline-table key) appears in an example, set or commented."""
    text = "\n".join(p.read_text() for p in EXAMPLES)
    keys = {k for _, k in all_keys()} | set(NESTED_KEYS)
    missing = [k for k in sorted(keys) if not re.search(rf"\b{k}\s*=", text)]
    assert not missing, f"no example shows {missing}"
    for section in ("[permeability]", "[[wells]]"):
        assert section in text


def test_example_data_files_exist():
    cfg = load(ROOT / "examples" / "field_data2d.toml")
    assert cfg.observations.points == "file" and Path(cfg.observations.file).is_file()


def test_gradient_example_fixes_a_side():
    cfg = load(ROOT / "examples" / "gradient2d.toml")
    assert cfg.boundary.fixed_pressure(2)         # the plain (not demeaned) misfit


#: keys of the inline tables (permeability.barrier, permeability.layers, observations.grid)
NESTED_KEYS = ("x", "y", "z", "value", "axis", "range")


def test_docs_name_every_key():
    doc = (ROOT / "docs" / "configuration.md").read_text()
    missing = [f"{s}.{k}" for s, k in all_keys() if f"`{k}`" not in doc or f"[{s}]" not in doc]
    assert not missing, f"docs/configuration.md does not document {missing}"
    assert "[[wells]]" in doc
    for k in NESTED_KEYS:
        assert f"`{k}`" in doc, k


def test_module_docstring_mentions_every_section():
    for s in (f.name for f in dataclasses.fields(Config)):
        assert f"[{s}]" in config_mod.__doc__


# --------------------------------------------------------------------------- new sections

CUSTOM = {"problem": {"name": "custom"},
          "grid": {"nx": 20, "ny": 10, "extent": [[0.0, 2.0], [0.0, 1.0]]},
          "permeability": {"type": "constant", "value": 1.0},
          "wells": [{"position": [0.5, 0.5], "rate": 1.0},
                    {"position": [1.5, 0.5], "rate": -1.0}]}


def _with(base, **sections):
    import copy
    d = copy.deepcopy(base)
    for s, v in sections.items():
        if v is None:
            d.pop(s, None)
        elif isinstance(v, dict) and isinstance(d.get(s), dict):
            d[s] = {k: x for k, x in {**d[s], **v}.items() if x is not None}
        else:
            d[s] = v
    return d


def test_new_defaults():
    cfg = Config()
    p = cfg.permeability
    assert (p.type, p.value, p.barrier, p.layers, p.file, p.dataset, p.log10) == (
        None, None, None, None, None, "K", False)
    assert cfg.wells == [] and cfg.grid.extent is None
    assert (cfg.observations.points, cfg.observations.grid, cfg.observations.file) == (
        "workshop", None, None)
    v = cfg.inversion
    assert (v.method, v.iterations, v.dgamma, v.line_search, v.misfit_ratio, v.step_tol) == (
        "gd", 50, 0.2, False, 0.0, 0.0)
    assert v.logK_min == -math.inf and v.logK_max == math.inf
    assert (v.warm_start, v.lbfgs_memory, v.precondition, v.initial_logK, v.initial_file,
            v.initial_dataset, v.checkpoint_every) == (True, 5, "smoothing", None, None,
                                                       "logK", 10)
    assert cfg.output.figures is True and cfg.output.overwrite is False


def test_custom_geometry():
    cfg = from_dict(CUSTOM)
    assert cfg.ndim() == 2 and cfg.extent() == ((0.0, 2.0), (0.0, 1.0))
    assert cfg.grid_shape() == (20, 10)
    c3 = from_dict(_with(CUSTOM, grid={"nz": 4, "extent": [[0, 2], [0, 1], [0, 3]]},
                         wells=[{"position": [1, 0.5], "rate": 1.0, "z_range": [0, 3]},
                                {"position": [1.5, 0.5, 1.0], "rate": -1.0}]))
    assert c3.ndim() == 3 and c3.grid_shape() == (20, 10, 4)
    assert Config().extent() == ((-1.0, 1.0), (0.0, 1.0))
    assert Config().gauge_free() and not from_dict({"boundary": {"y_hi": 0}}).gauge_free()
    # a z side does not fix the pressure of a 2D problem
    assert from_dict({"boundary": {"z_hi": "no-flux"}}).gauge_free()


def test_inline_tables_and_wells_toml(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('''
[problem]
name = "custom"
[grid]
extent = [[0, 2], [0, 1]]
nx = 8
ny = 4
[permeability]
type = "layered"
layers = [{axis = "y", range = [0.0, 0.3], value = 1e-2}, {axis = "x", range = [1, 2], value = 3}]
[[wells]]
position = [0.5, 0.5]
rate = 2
[[wells]]
position = [1.5, 0.5]
rate = -2.0
[observations]
points = "grid"
grid = {x = [0.1, 1.9, 3], y = [0.2, 0.8, 2]}
[inversion]
logK_min = -inf
logK_max = 4
''')
    cfg = load(p)
    assert cfg.permeability.layers[1] == {"axis": "x", "range": [1, 2], "value": 3}
    assert [w.rate for w in cfg.wells] == [2.0, -2.0]
    assert cfg.inversion.logK_max == 4.0
    q = tmp_path / "again.toml"
    q.write_text(dumps(cfg))
    assert "[[wells]]" in q.read_text()
    assert load(q) == cfg


def test_load_resolves_data_paths(tmp_path):
    sub = tmp_path / "cfgdir"
    sub.mkdir()
    p = sub / "c.toml"
    p.write_text('[observations]\npoints = "file"\nfile = "data/obs.csv"\n'
                 '[inversion]\ninitial_file = "/abs/init.h5"\n'
                 '[permeability]\ntype = "file"\nfile = "../K.h5"\n')
    cfg = load(p)
    assert cfg.observations.file == str(sub / "data" / "obs.csv")
    assert cfg.inversion.initial_file == "/abs/init.h5"
    assert cfg.permeability.file == str(tmp_path / "K.h5")
    # from_dict leaves them as written (relative to the working directory)
    assert from_dict({"observations": {"points": "file", "file": "o.csv"}}).observations.file \
        == "o.csv"
    # the resolved config reloads to the same config from any directory
    other = tmp_path / "elsewhere"
    other.mkdir()
    (other / "config.toml").write_text(dumps(cfg))
    assert load(other / "config.toml") == cfg


@pytest.mark.parametrize("data, needle", [
    # [problem] / [grid]
    ({"problem": {"name": "custon"}}, "did you mean 'custom'"),
    (_with(CUSTOM, grid={"extent": None}), "grid.extent is required"),
    (_with(CUSTOM, grid={"extent": [[0, 1]]}), "grid.extent must be"),
    (_with(CUSTOM, grid={"extent": [[0, 1], [1, 1]]}), "grid.extent along y"),
    (_with(CUSTOM, grid={"extent": [[0, 1], [0, "a"]]}), "grid.extent must be"),
    (_with(CUSTOM, grid={"extent": [[0, 2], [0, 1]], "nx": None}), "grid.nx is required"),
    (_with(CUSTOM, grid={"nz": 5}), "grid.nz given for a 2D problem"),
    ({"grid": {"extent": [[0, 1], [0, 1]]}}, "grid.extent is only for problem.name"),
    # [permeability]
    (_with(CUSTOM, permeability=None), "permeability.type is required for problem.name"),
    ({"permeability": {"value": 2.0}}, "permeability.type is required with permeability.value"),
    ({"permeability": {"type": "constnat"}}, "did you mean 'constant'"),
    ({"permeability": {"type": "constant", "value": 0.0}}, "permeability.value must be"),
    ({"permeability": {"type": "constant", "value": math.nan}}, "permeability.value must be"),
    ({"permeability": {"type": "constant", "layers": []}},
     "permeability.layers is only used with type = \"layered\""),
    ({"permeability": {"type": "barrier", "file": "K.h5"}},
     "permeability.file is only used with type = \"file\""),
    ({"permeability": {"type": "barrier", "log10": True}},
     "permeability.log10 is only used with type = \"file\""),
    ({"permeability": {"type": "file"}}, "permeability.file is required"),
    ({"permeability": {"type": "file", "file": "K.h5", "value": 1.0}},
     "permeability.value is not used with type = \"file\""),
    (_with(CUSTOM, permeability={"type": "barrier", "value": None}),
     "permeability.barrier is required"),
    ({"permeability": {"type": "barrier", "barrier": {"x": [0, 1], "valu": 1}}},
     "unknown key permeability.barrier.valu (did you mean 'value'?)"),
    ({"permeability": {"type": "barrier", "barrier": {"value": 1e-3}}}, "at least one of"),
    ({"permeability": {"type": "barrier", "barrier": {"x": [1, 0]}}},
     "permeability.barrier.x must have finite a < b"),
    ({"permeability": {"type": "barrier", "barrier": {"x": [0]}}},
     "permeability.barrier.x must be [a, b]"),
    ({"permeability": {"type": "barrier", "barrier": {"z": [0, 1]}}},
     "permeability.barrier.z given for a 2D problem"),
    ({"permeability": {"type": "barrier", "barrier": {"x": [0, 1], "value": -1}}},
     "permeability.barrier.value must be a finite permeability"),
    ({"permeability": {"type": "layered"}}, "permeability.layers is required"),
    ({"permeability": {"type": "layered", "layers": []}}, "non-empty list"),
    ({"permeability": {"type": "layered", "layers": [{"axis": "y", "range": [0, 1]}]}},
     "permeability.layers[0].value is required"),
    ({"permeability": {"type": "layered",
                       "layers": [{"axis": "z", "range": [0, 1], "value": 1}]}},
     "permeability.layers[0].axis must be one of"),
    ({"permeability": {"type": "layered",
                       "layers": [{"axis": "y", "rang": [0, 1], "value": 1}]}},
     "unknown key permeability.layers[0].rang (did you mean 'range'?)"),
    ({"permeability": {"type": "layered", "layers": [{"axis": "y", "range": [0, 1],
                                                      "value": 0}]}},
     "permeability.layers[0].value must be a finite permeability"),
    ({"permeability": {"type": "layered", "layers": [3]}},
     "permeability.layers[0] must be a table"),
    # [[wells]]
    (_with(CUSTOM, wells=[]), "needs at least one [[wells]]"),
    ({"wells": [{"rate": 1.0}]}, "wells[0].position is required"),
    ({"wells": [{"position": [0, 0.5]}]}, "wells[0].rate is required"),
    ({"wells": [{"position": [0, 0.5, 0.5], "rate": 0}]}, "wells[0].position must be 2 numbers"),
    ({"wells": [{"position": [0, 0.5], "rate": 1.0}, {"position": [5, 0.5], "rate": -1.0}]},
     "wells[1].position (5, 0.5) lies outside the domain [-1, 1] x [0, 1]"),
    ({"wells": [{"position": [0, 0.5], "rate": 1.0, "z_range": [0, 1]}]},
     "wells[0].z_range is only for 3D problems"),
    ({"problem": {"name": "geothermal3d"},
      "wells": [{"position": [0, 0.5, 0.9], "rate": 0.0, "z_range": [0.1, 0.5]}]},
     "wells[0].position z = 0.9 lies outside its z_range"),
    ({"problem": {"name": "geothermal3d"},
      "wells": [{"position": [0, 0.5], "rate": 0.0}]}, "wells[0].position must be 3 numbers"),
    ({"wells": [{"position": [0, 0.5], "rate": 1.0}, {"position": [0.5, 0.5], "rate": -0.5}]},
     "wells: the rates sum to 0.5, but every side is no-flux"),
    ({"wells": [{"position": [0, 0.5], "rate": math.inf}]}, "wells[0].rate must be a finite"),
    # [observations]
    ({"observations": {"points": "grids"}}, "did you mean 'grid'"),
    ({"observations": {"points": "grid"}}, "observations.grid is required"),
    ({"observations": {"grid": {"x": [0, 1, 2], "y": [0, 1, 2]}}},
     "observations.grid is only used with points = \"grid\""),
    ({"observations": {"file": "o.csv"}}, "observations.file is only used with points"),
    ({"observations": {"points": "file"}}, "observations.file is required"),
    ({"observations": {"points": "file", "file": "o.txt"}}, "must end in .csv, .h5 or .hdf5"),
    ({"observations": {"points": "grid", "grid": {"x": [0, 1, 2]}}},
     "observations.grid.y is required"),
    ({"observations": {"points": "grid", "grid": {"x": [0, 1, 2], "y": [0, 1, 2],
                                                  "z": [0, 1, 2]}}},
     "observations.grid.z given for a 2D problem"),
    ({"observations": {"points": "grid", "grid": {"x": [0, 1, 2.0], "y": [0, 1, 2]}}},
     "observations.grid.x must be [x0, x1, n]"),
    ({"observations": {"points": "grid", "grid": {"x": [0, 1, 0], "y": [0, 1, 2]}}},
     "number of points must be >= 1"),
    ({"observations": {"points": "grid", "grid": {"x": [1, 0, 2], "y": [0, 1, 2]}}},
     "observations.grid.x must have finite x0 <= x1"),
    ({"observations": {"points": "grid", "grid": {"x": [0, 3, 2], "y": [0, 1, 2]}}},
     "reaches outside the domain x in [-1, 1]"),
    ({"observations": {"points": "grid", "grid": {"xx": [0, 1, 2], "y": [0, 1, 2]}}},
     "unknown key observations.grid.xx (did you mean 'x'?)"),
    # [inversion]
    ({"inversion": {"method": "bfgs"}}, "did you mean 'lbfgs'"),
    ({"inversion": {"iterations": 0}}, "inversion.iterations must be >= 1"),
    ({"inversion": {"dgamma": 0.0}}, "inversion.dgamma must be > 0"),
    ({"inversion": {"dgamma": math.inf}}, "inversion.dgamma must be > 0"),
    ({"inversion": {"misfit_ratio": -0.1}}, "inversion.misfit_ratio must be in [0, 1)"),
    ({"inversion": {"misfit_ratio": 1.0}}, "inversion.misfit_ratio must be in [0, 1)"),
    ({"inversion": {"step_tol": -1.0}}, "inversion.step_tol must be >= 0"),
    ({"inversion": {"logK_min": 1.0, "logK_max": 1.0}},
     "inversion.logK_min must be < inversion.logK_max"),
    ({"inversion": {"logK_min": math.nan}}, "inversion.logK_min must be a number"),
    ({"inversion": {"lbfgs_memory": 0}}, "inversion.lbfgs_memory must be >= 1"),
    ({"inversion": {"precondition": "smooth"}}, "did you mean 'smoothing'"),
    ({"inversion": {"initial_logK": math.nan}}, "inversion.initial_logK must be finite"),
    ({"inversion": {"initial_logK": 0.0, "initial_file": "m.h5"}}, "exclusive"),
    ({"inversion": {"initial_dataset": "m"}},
     "inversion.initial_dataset is only used with inversion.initial_file"),
    ({"inversion": {"checkpoint_every": -1}}, "inversion.checkpoint_every must be >= 0"),
])
def test_new_value_errors(data, needle):
    with pytest.raises(ConfigError) as exc:
        from_dict(data)
    msg = str(exc.value)
    assert needle in msg, msg
    assert "\n" not in msg


def test_wells_rates_may_differ_with_a_fixed_side():
    from_dict({"boundary": {"y_hi": 0.0}, "wells": [{"position": [0, 0.5], "rate": 1.0}]})


@pytest.mark.parametrize("data, needle", [
    ({"wells": {"position": [0, 0.5], "rate": 1.0}}, "write [[wells]]"),
    ({"wells": [1, 2]}, "wells must be an array of tables"),
    ({"wells": [{"position": [0, 0.5], "rat": 1.0}]},
     "unknown key wells[0].rat (did you mean 'rate'?)"),
    ({"wells": [{"position": 3, "rate": 1.0}]}, "wells[0].position must be of type list"),
    ({"wells": [{"position": [0, 0.5], "rate": "1"}]}, "wells[0].rate must be of type float"),
    ({"permeability": {"barrier": [0, 1]}}, "permeability.barrier must be of type table"),
    ({"permeability": {"layers": {"axis": "x"}}}, "permeability.layers must be of type list"),
    ({"observations": {"grid": [0, 1]}}, "observations.grid must be of type table"),
    ({"inversion": {"line_search": 1}}, "inversion.line_search must be of type bool"),
    ({"inversion": {"iterations": 5.0}}, "inversion.iterations must be of type int"),
    ({"output": {"figures": "yes"}}, "output.figures must be of type bool"),
    ({"grid": {"extent": "box"}}, "grid.extent must be of type list"),
])
def test_new_type_and_key_errors(data, needle):
    with pytest.raises(ConfigError) as exc:
        from_dict(data, source="run.toml")
    assert needle in str(exc.value), str(exc.value)


@pytest.mark.parametrize("section, key, hint", [
    ("permeability", "typ", "type"), ("permeability", "layer", "layers"),
    ("inversion", "iteration", "iterations"), ("inversion", "dgama", "dgamma"),
    ("inversion", "logk_min", "logK_min"), ("output", "figure", "figures"),
    ("observations", "point", "points"), ("grid", "extents", "extent"),
])
def test_new_unknown_keys_name_closest(section, key, hint):
    with pytest.raises(ConfigError, match=rf"did you mean '{hint}'"):
        from_dict({section: {key: 1}})


def test_new_unknown_sections_name_closest():
    for section, hint in (("well", "wells"), ("inversions", "inversion"),
                          ("permeabilty", "permeability")):
        with pytest.raises(ConfigError, match=rf"did you mean '{hint}'"):
            from_dict({section: {}})
